//! The `drover-agent` binary: `run-task`, and acting as `ctx` when started under that name.

use std::io::Write;
use std::process::{Command, Stdio};

use drover_model::{OperationTask, TaskNode, TaskOutcome, TaskResult};
use serde_json::json;

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");

#[test]
fn run_task_runs_one_task_from_stdin() {
    let blueprint = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        blueprint.path().join("create.sh"),
        "echo \"hi $who\"\nctx instance runtime-properties greeted \"$who\"\n",
    )
    .unwrap();
    let task = OperationTask {
        task_id: "t1".into(),
        execution_id: "e1".into(),
        plugin: "script".into(),
        implementation: "create.sh".into(),
        inputs: json!({"who": "you"}).as_object().cloned().unwrap(),
        blueprint_dir: Some(blueprint.path().display().to_string()),
        node: TaskNode {
            node_instance_id: "vm_1".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut child = Command::new(AGENT)
        .args(["run-task", "--work-dir"])
        .arg(work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(&task).unwrap().as_bytes())
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let result: TaskResult = serde_json::from_slice(&output.stdout).unwrap();
    assert!(matches!(result.outcome, TaskOutcome::Succeeded { .. }));
    assert_eq!(result.runtime_properties["vm_1"]["greeted"], json!("you"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("hi you"));
}

#[test]
fn as_ctx_outside_an_operation_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::os::unix::fs::symlink(AGENT, &ctx).unwrap();
    let output = Command::new(&ctx)
        .args(["instance", "id"])
        .env_remove("CTX_SOCKET_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CTX_SOCKET_URL is not set"));
}
