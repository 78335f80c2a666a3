//! Hostile and broken blueprint archives: each one a 4xx in Cloudify's error shape, nothing
//! written outside the data directory, never a 5xx.

mod common;

use std::io::Write;

use common::{MINIMAL, TestGateway, hello_archive, tar_gz_raw};
use tar::EntryType::{Directory, Link, Regular, Symlink};

const T: &str = "default_tenant";

fn zip_of(build: impl FnOnce(&mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    build(&mut w);
    w.finish().unwrap().into_inner()
}

fn options() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
}

async fn refused(gw: &TestGateway, archive: &[u8], what: &str) -> serde_json::Value {
    let (s, v) = gw.upload(T, "bp", archive, "blueprint.yaml").await;
    assert!((400..500).contains(&s), "{what}: status {s}: {v}");
    assert!(
        v["error_code"].is_string() && v["message"].is_string(),
        "{what}: {v}"
    );
    v
}

#[tokio::test]
async fn hostile_archives_are_refused() {
    let gw = TestGateway::with(|c| c.archive_limits.max_unpacked_bytes = 1 << 20);
    let yaml = MINIMAL.as_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "parent traversal",
            tar_gz_raw(&[
                ("bp/", Directory, b"", None),
                ("bp/../../evil", Regular, b"x", None),
            ]),
        ),
        (
            "absolute path",
            tar_gz_raw(&[("/tmp/drover-gw-evil", Regular, b"x", None)]),
        ),
        (
            "symlink",
            tar_gz_raw(&[
                ("bp/", Directory, b"", None),
                ("bp/blueprint.yaml", Symlink, b"", Some("/etc/passwd")),
            ]),
        ),
        (
            "hard link",
            tar_gz_raw(&[
                ("bp/", Directory, b"", None),
                ("bp/blueprint.yaml", Link, b"", Some("/etc/passwd")),
            ]),
        ),
        (
            "two top-level dirs",
            tar_gz_raw(&[
                ("a/blueprint.yaml", Regular, yaml, None),
                ("b/x", Regular, b"x", None),
            ]),
        ),
        (
            "no directory",
            tar_gz_raw(&[("blueprint.yaml", Regular, yaml, None)]),
        ),
        (
            "no main file",
            tar_gz_raw(&[("bp/other.yaml", Regular, yaml, None)]),
        ),
        (
            "invalid blueprint",
            tar_gz_raw(&[("bp/blueprint.yaml", Regular, b"node_templates: [", None)]),
        ),
        (
            "not a blueprint",
            tar_gz_raw(&[("bp/blueprint.yaml", Regular, b"hello: world\n", None)]),
        ),
        (
            "random bytes",
            (0..4096).map(|_| fastrand::u8(..)).collect(),
        ),
        ("empty", Vec::new()),
        ("truncated gzip", hello_archive()[..200].to_vec()),
        ("gzip of garbage", {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&[7u8; 10_000]).unwrap();
            gz.finish().unwrap()
        }),
        ("tar bomb", {
            let zeros = vec![0u8; 4 << 20];
            tar_gz_raw(&[
                ("bp/blueprint.yaml", Regular, yaml, None),
                ("bp/big", Regular, &zeros, None),
            ])
        }),
        (
            "zip bomb",
            zip_of(|w| {
                w.start_file("bp/blueprint.yaml", options()).unwrap();
                w.write_all(yaml).unwrap();
                w.start_file("bp/big", options()).unwrap();
                for _ in 0..64 {
                    w.write_all(&[0u8; 1 << 16]).unwrap();
                }
            }),
        ),
        (
            "zip traversal",
            zip_of(|w| {
                w.start_file("bp/../../evil", options()).unwrap();
                w.write_all(b"x").unwrap();
            }),
        ),
        (
            "zip absolute",
            zip_of(|w| {
                w.start_file("/tmp/drover-gw-evil", options()).unwrap();
                w.write_all(b"x").unwrap();
            }),
        ),
        (
            "zip symlink",
            zip_of(|w| {
                w.add_directory("bp/", options()).unwrap();
                w.add_symlink("bp/blueprint.yaml", "/etc/passwd", options())
                    .unwrap();
            }),
        ),
        ("zip truncated", {
            let z = zip_of(|w| {
                w.start_file("bp/blueprint.yaml", options()).unwrap();
                w.write_all(yaml).unwrap();
            });
            z[..z.len() / 2].to_vec()
        }),
    ];
    for (what, archive) in &cases {
        refused(&gw, archive, what).await;
    }
    let v = refused(&gw, &cases[7].1, "invalid blueprint").await;
    assert_eq!(v["error_code"], "invalid_blueprint_error");
    assert!(!std::path::Path::new("/tmp/drover-gw-evil").exists());
    assert!(!gw.dir.path().join("evil").exists());
    let (s, list) = gw.get("/api/v3.1/blueprints").await;
    assert_eq!(
        (s, list["metadata"]["pagination"]["total"].as_u64()),
        (200, Some(0)),
        "nothing was kept"
    );
    let (s, v) = gw
        .upload(T, "bp", &hello_archive(), "../blueprint.yaml")
        .await;
    assert_eq!(s, 400, "{v}");
    let zipped = zip_of(|w| {
        w.start_file("bp/blueprint.yaml", options()).unwrap();
        w.write_all(yaml).unwrap();
    });
    let (s, v) = gw.upload(T, "bp", &zipped, "blueprint.yaml").await;
    assert_eq!(s, 201, "a plain zip is accepted: {v}");
}

#[tokio::test]
async fn huge_bodies_are_refused_before_they_are_read() {
    let gw = TestGateway::with(|c| c.max_archive_bytes = 1 << 16);
    let (s, v) = gw
        .upload(T, "bp", &vec![0u8; 1 << 17], "blueprint.yaml")
        .await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (413, Some("payload_too_large_error"))
    );
}

/// Mutated copies of a valid archive (bytes flipped, cut short): each is uploaded or refused
/// with a 4xx, never a 5xx.
#[tokio::test]
async fn mutated_archives_never_fail_the_server() {
    let gw = TestGateway::new();
    let valid = hello_archive();
    let mut rng = fastrand::Rng::with_seed(8);
    for n in 0..150 {
        let mut a = valid.clone();
        match n % 3 {
            0 => {
                for _ in 0..rng.usize(1..8) {
                    let i = rng.usize(..a.len());
                    a[i] = rng.u8(..);
                }
            }
            1 => a.truncate(rng.usize(..a.len())),
            _ => {
                let i = rng.usize(10..a.len());
                a[i..].iter_mut().for_each(|b| *b = rng.u8(..));
            }
        }
        let id = format!("m{n}");
        let (s, v) = gw.upload(T, &id, &a, "blueprint.yaml").await;
        assert!(s == 201 || (400..500).contains(&s), "mutation {n}: {s} {v}");
    }
}
