//! A gateway in this process (memory store, file event index, in-process dry-run engine) and
//! helpers to call it through its warp filter.
#![allow(dead_code)] // each test binary uses part of it

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use drover_gateway::{Config, FileRegistry, Gateway, LocalWorkflows, auth::Credentials};
use serde_json::Value;
use warp::Filter;

pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
}

pub fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:pw")
    )
}

impl TestGateway {
    pub fn new() -> TestGateway {
        Self::with(|_| {})
    }

    pub fn with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn drover_store::StateStore> = Arc::new(drover_store::MemoryStore::new());
        let events: Arc<dyn drover_store::EventIndex> =
            Arc::new(drover_store::FileEventIndex::open(dir.path().join("events")).unwrap());
        let workflows = Arc::new(LocalWorkflows::new(store.clone(), events.clone()));
        let registry = Arc::new(FileRegistry::open(&dir.path().join("data")).unwrap());
        let mut config = Config::new(
            dir.path().join("data"),
            Credentials {
                username: "admin".into(),
                password: "pw".into(),
            },
        );
        adjust(&mut config);
        let gateway = Gateway::new(store, events, workflows, registry, config);
        TestGateway { gateway, dir }
    }

    pub fn filter(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + 'static
    {
        drover_gateway::filter(self.gateway.clone())
    }

    /// Sends a request as admin in `tenant`; returns the status and the JSON body (Null when
    /// empty).
    pub async fn call(
        &self,
        tenant: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = warp::test::request()
            .method(method)
            .path(path)
            .header("authorization", basic())
            .header("tenant", tenant)
            .header("content-type", "application/json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let res = req.reply(&self.filter()).await;
        let text = res
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"text/"));
        let body = if text {
            Value::String(String::from_utf8_lossy(res.body()).into_owned())
        } else {
            json_of(res.body())
        };
        (res.status().as_u16(), body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("default_tenant", "GET", path, None).await
    }

    /// Uploads an archive as client 7.x does (multipart `params` + `blueprint_archive`).
    pub async fn upload(&self, tenant: &str, id: &str, archive: &[u8], main: &str) -> (u16, Value) {
        let boundary = "b0undary";
        let mut body = Vec::new();
        body.extend_from_slice(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n\
             {{\"visibility\": \"tenant\", \"async_upload\": false, \"skip_execution\": false, \"application_file_name\": \"{main}\"}}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"blueprint_archive\"; filename=\"filename\"\r\n\
             Content-Type: text/plain\r\n\r\n").as_bytes());
        body.extend_from_slice(archive);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let res = warp::test::request()
            .method("PUT")
            .path(&format!("/api/v3.1/blueprints/{id}"))
            .header("authorization", basic())
            .header("tenant", tenant)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .reply(&self.filter())
            .await;
        (res.status().as_u16(), json_of(res.body()))
    }

    /// Polls an execution until it ends; returns it.
    pub async fn wait_execution(&self, tenant: &str, id: &str) -> Value {
        for _ in 0..600 {
            let (status, e) = self
                .call(tenant, "GET", &format!("/api/v3.1/executions/{id}"), None)
                .await;
            assert_eq!(status, 200, "{e}");
            if matches!(
                e["status"].as_str(),
                Some("terminated" | "failed" | "cancelled")
            ) {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("execution {id} did not end");
    }
}

pub fn json_of(body: &[u8]) -> Value {
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
    }
}

/// A tar.gz of a directory under one top-level directory `top`, as the client makes it.
pub fn tar_gz_dir(dir: &Path, top: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(top, dir).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// The bundled hello example, packed.
pub fn hello_archive() -> Vec<u8> {
    tar_gz_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello"),
        "hello",
    )
}

/// A tar.gz of in-memory entries: (path, content) files, written with raw headers so paths
/// tar::Builder would refuse (`..`, absolute) can be made.
pub fn tar_gz_raw(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, kind, content, link) in entries {
        let mut header = tar::Header::new_gnu();
        {
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        tar.append(&header, *content).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

pub const MINIMAL: &str = "tosca_definitions_version: cloudify_dsl_1_4\n\
imports:\n  - cloudify/types/types.yaml\n\
node_templates:\n  vm:\n    type: cloudify.nodes.Compute\n    properties:\n      agent_config:\n        install_method: none\n";
