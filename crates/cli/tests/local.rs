//! `drover local` end to end: the real binary, real script operations through the in-process
//! agent, and a kill -9 in the middle of an install followed by `drover local resume`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

/// A blueprint whose operations log "start"/"end" lines to `log` ("end ID OP EPOCH_MS"); "end"
/// is written only after a `ctx` call succeeds, so an operation orphaned by a killed drover
/// never writes it. The instance id is asked for once, first: a `ctx` call inside the "end"
/// line would not stop the script under `set -e` and, if drover died just then, would log an
/// end without an id.
fn write_blueprint(dir: &Path, log: &Path, sleep_s: f64) {
    let script = format!(
        "#!/bin/bash\nset -e\nid=$(ctx instance id)\necho \"start $id $op\" >> {log}\nsleep {sleep_s}\nctx instance runtime-properties \"${{op}}_done\" true\necho \"end $id $op $(date +%s%3N)\" >> {log}\n",
        log = log.display()
    );
    std::fs::write(dir.join("op.sh"), script).unwrap();
    let ops = |indent: &str| {
        ["create", "configure", "start"]
            .iter()
            .map(|op| {
                format!("{indent}{op}:\n{indent}  implementation: op.sh\n{indent}  inputs:\n{indent}    op: {op}\n")
            })
            .collect::<String>()
    };
    let node = |name: &str, instances: u32| {
        format!(
            "  {name}:\n    type: cloudify.nodes.Root\n    capabilities:\n      scalable:\n        \
             properties:\n          default_instances: {instances}\n    interfaces:\n      \
             cloudify.interfaces.lifecycle:\n{}",
            ops("        ")
        )
    };
    let blueprint = [
        "tosca_definitions_version: cloudify_dsl_1_4\nimports:\n  - cloudify/types/types.yaml\n".to_owned(),
        "node_templates:\n".to_owned(),
        node("a", 6),
        node("b", 3),
        "    relationships:\n      - type: cloudify.relationships.connected_to\n        target: a\n".to_owned(),
        "outputs:\n  a_started:\n    value: { get_attribute: [a, start_done] }\n".to_owned(),
    ]
    .concat();
    std::fs::write(dir.join("blueprint.yaml"), blueprint).unwrap();
}

fn drover(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(DROVER)
        .args(args)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs drover as [`drover`] does and asserts that it succeeded, showing its stderr if not.
fn drover_ok(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = drover(dir, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(log: &Path, kind: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(kind))
        .map(str::to_owned)
        .collect()
}

#[test]
fn install_outputs_instances_uninstall() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    write_blueprint(dir.path(), &log, 0.0);
    let events = dir.path().join("events.jsonl");
    drover_ok(
        dir.path(),
        &[
            "local",
            "install",
            "blueprint.yaml",
            "--events-json",
            events.to_str().unwrap(),
        ],
    );
    assert_eq!(lines(&log, "end").len(), 27);

    let out = drover(dir.path(), &["local", "instances", "--format", "json"]);
    let instances: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let instances = instances.as_array().unwrap();
    assert_eq!(instances.len(), 9);
    for i in instances {
        assert_eq!(i["state"], "started");
        assert_eq!(i["runtime_properties"]["start_done"], true);
    }
    let b = instances.iter().find(|i| i["node_id"] == "b").unwrap();
    let rels = b["relationships"].as_array().unwrap();
    assert_eq!(rels.len(), 6);
    assert_eq!(rels[0]["target_name"], "a");
    assert!(rels[0]["target_id"].as_str().unwrap().starts_with("a_"));

    let text = std::fs::read_to_string(&events).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event_type"], "workflow_started");
    assert_eq!(events.last().unwrap()["event_type"], "workflow_succeeded");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event_type"] == "task_succeeded")
            .count(),
        27
    );

    // a has six instances: the output is ambiguous, as in Cloudify, and says so.
    let out = drover(dir.path(), &["local", "outputs"]);
    assert!(out.status.success());
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(outputs["a_started"].as_str().unwrap().contains("ambiguous"));

    let out = drover(dir.path(), &["local", "install", "blueprint.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an installed deployment is not replaced"
    );

    drover_ok(dir.path(), &["local", "uninstall"]);
    let out = drover(dir.path(), &["local", "instances", "--format", "json"]);
    let instances: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "deleted")
    );
}

/// "end" lines as (instance op, epoch ms).
fn ends(log: &Path) -> Vec<(String, u128)> {
    lines(log, "end")
        .iter()
        .filter_map(|l| {
            let (op, ms) = l.strip_prefix("end ")?.rsplit_once(' ')?;
            Some((op.to_owned(), ms.parse().ok()?))
        })
        .collect()
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// An operation that finished before the kill is not run again by the resume. One that
/// finished in the last moment before it (its result not yet journaled: within `WINDOW_MS`)
/// counts as in flight and may run once more, as the issue allows for operations whose process
/// died mid-run.
#[test]
fn kill_9_during_install_then_resume_finishes_without_rerunning_finished_operations() {
    const WINDOW_MS: u128 = 500;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ops.log");
    write_blueprint(dir.path(), &log, 0.3);
    let mut child = Command::new(DROVER)
        .args([
            "local",
            "install",
            "blueprint.yaml",
            "--parallelism",
            "4",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 27 operations of 0.3 s, 4 at a time: about 2.5 s. Kill in the middle: once a few have
    // ended, and long enough after that for their results to be journaled.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ends(&log).len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(WINDOW_MS as u64 + 100));
    let killed_at = now_ms();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = ends(&log);
    let settled: Vec<&String> = before
        .iter()
        .filter(|(_, ms)| *ms + WINDOW_MS < killed_at)
        .map(|(op, _)| op)
        .collect();
    assert!(
        !settled.is_empty() && before.len() < 27,
        "{before:?} ended before the kill"
    );

    drover_ok(dir.path(), &["local", "resume"]);
    let after = ends(&log);
    let count = |op: &String| after.iter().filter(|(o, _)| o == op).count();
    let mut unique: Vec<&String> = after.iter().map(|(op, _)| op).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 27, "every operation finished: {after:#?}");
    for op in settled {
        assert_eq!(count(op), 1, "{op} finished before the kill and ran again");
    }
    assert!(unique.iter().all(|op| count(op) <= 2), "{after:#?}");

    let out = drover(dir.path(), &["local", "instances", "--format", "json"]);
    let instances: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "started")
    );
    let out = drover(dir.path(), &["local", "resume"]);
    assert_eq!(out.status.code(), Some(1), "nothing left to resume");
}

/// The scale benchmark's blueprint (`../shared/bench/gen_blueprint.py 10 10`), dry run: every
/// app instance's tasks are sent after every task of its host and of the db succeeded.
#[test]
fn the_scale_blueprint_installs_in_relationship_order() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(shared.join("gen_blueprint.py"))
        .args(["10", "10"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(shared.join("types.yaml"), dir.path().join("types.yaml")).unwrap();
    let events = dir.path().join("events.jsonl");
    drover_ok(
        dir.path(),
        &[
            "local",
            "install",
            "blueprint.yaml",
            "--dry-run",
            "--events-json",
            events.to_str().unwrap(),
        ],
    );
    let out = drover(dir.path(), &["local", "instances", "--format", "json"]);
    let instances: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(instances.len(), 111);
    let text = std::fs::read_to_string(&events).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let positions = |instance: &str, kind: &str| -> Vec<usize> {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["event_type"] == kind && e["context"]["node_id"] == instance)
            .map(|(i, _)| i)
            .collect()
    };
    let mut checked = 0;
    for app in instances.iter().filter(|i| i["node_id"] == "app") {
        let id = app["id"].as_str().unwrap();
        let first_sent = *positions(id, "sending_task").first().unwrap();
        for rel in app["relationships"].as_array().unwrap() {
            let target = rel["target_id"].as_str().unwrap();
            let last_done = *positions(target, "task_succeeded").last().unwrap();
            assert!(
                last_done < first_sent,
                "{id} started before {target} was done"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 100 * 2);
}
