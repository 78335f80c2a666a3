//! External plugins end to end: the README's example plugin (examples/plugins/echo.py) run by
//! python3 as a long-lived process, and each way an operation can fail.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_agent::{
    ExternalConfig, ExternalPlugin, LogRecord, LogStream, OperationRunner, PluginCommand,
    PluginRegistry, PluginsDir, RunnerConfig,
};
use drover_model::{OperationTask, TaskNode, TaskOutcome, TaskResult};
use serde_json::{Value, json};
use tempfile::TempDir;

fn echo_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/echo.py")
}

struct Fixture {
    _work: TempDir,
    runner: OperationRunner,
    logs: Arc<Mutex<Vec<LogRecord>>>,
}

fn fixture(plugins: PluginRegistry) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    let runner = OperationRunner::new(
        RunnerConfig::new(work.path()),
        plugins,
        Arc::new(move |r| sink.lock().unwrap().push(r)),
    )
    .unwrap();
    Fixture {
        _work: work,
        runner,
        logs,
    }
}

fn with_echo(command: PluginCommand, config: ExternalConfig) -> Fixture {
    let mut plugins = PluginRegistry::empty();
    plugins.register(
        "echo",
        Arc::new(ExternalPlugin::new("echo", command, config)),
    );
    fixture(plugins)
}

fn python_echo() -> Fixture {
    let command = PluginCommand {
        program: "python3".into(),
        args: vec![echo_py().display().to_string()],
    };
    let config = ExternalConfig {
        default_timeout: Duration::from_secs(2),
        ..ExternalConfig::default()
    };
    with_echo(command, config)
}

fn task(id: &str, operation: &str) -> OperationTask {
    OperationTask {
        task_id: id.into(),
        execution_id: "e1".into(),
        deployment_id: "d1".into(),
        operation: "cloudify.interfaces.lifecycle.create".into(),
        plugin: "echo".into(),
        implementation: format!("echo.tasks.{operation}"),
        inputs: json!({"port": 8080}).as_object().cloned().unwrap(),
        node: TaskNode {
            node_instance_id: "web_1".into(),
            node_id: "web".into(),
            runtime_properties: json!({"kept": true}).as_object().cloned().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn error_of(result: &TaskResult) -> (String, bool) {
    match &result.outcome {
        TaskOutcome::Failed {
            error, recoverable, ..
        } => (error.clone(), *recoverable),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn pid_of(result: &TaskResult) -> u64 {
    match &result.outcome {
        TaskOutcome::Succeeded { result } => result["pid"].as_u64().unwrap(),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn an_operation_gets_its_result_logs_and_runtime_properties() {
    let f = python_echo();
    let result = f.runner.run(task("t1", "create")).await;
    let TaskOutcome::Succeeded { result: value } = &result.outcome else {
        panic!("{result:?}");
    };
    assert_eq!(value["inputs"], json!({"port": 8080}));
    assert_eq!(
        Value::Object(result.runtime_properties["web_1"].clone()),
        json!({"kept": true, "echoed": {"port": 8080}})
    );
    let logs = f.logs.lock().unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].message, "create on web_1");
    assert_eq!(logs[0].stream, LogStream::Plugin);
    assert_eq!(logs[0].task_id, "t1");
}

#[tokio::test]
async fn one_process_serves_many_operations_at_once() {
    let f = python_echo();
    // A request the plugin never answers does not hold up the others in flight with it.
    let hung = f.runner.run(task("t0", "hang"));
    let others = async {
        let mut pids = Vec::new();
        for i in 1..=5 {
            pids.push(pid_of(
                &f.runner.run(task(&format!("t{i}"), "create")).await,
            ));
        }
        pids
    };
    let (hung, pids) = tokio::join!(hung, others);
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    let (error, recoverable) = error_of(&hung);
    assert!(
        error.contains("did not answer within the 2s timeout"),
        "{error}"
    );
    assert!(!recoverable);
    // The timed-out operation did not break the process.
    assert_eq!(pid_of(&f.runner.run(task("t6", "create")).await), pids[0]);
}

#[tokio::test]
async fn a_plugin_failure_is_the_operations_failure() {
    let f = python_echo();
    let result = f.runner.run(task("t1", "fail")).await;
    assert_eq!(error_of(&result), ("asked to fail".to_owned(), false));
}

#[tokio::test]
async fn a_crash_mid_operation_fails_it_and_the_next_one_restarts_the_plugin() {
    let f = python_echo();
    let first = pid_of(&f.runner.run(task("t1", "create")).await);
    let crashed = f.runner.run(task("t2", "crash")).await;
    let (error, recoverable) = error_of(&crashed);
    assert!(
        error.contains("plugin \"echo\" exited (exit status: 3) during the operation"),
        "{error}"
    );
    assert!(recoverable);
    let second = pid_of(&f.runner.run(task("t3", "create")).await);
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_malformed_line_fails_the_operation_clearly() {
    let f = python_echo();
    let result = f.runner.run(task("t1", "garble")).await;
    let (error, recoverable) = error_of(&result);
    assert!(
        error.contains("broke the protocol: a malformed line")
            && error.contains("this is not JSON"),
        "{error}"
    );
    assert!(!recoverable);
    // A new process takes the next operation.
    assert!(matches!(
        f.runner.run(task("t2", "create")).await.outcome,
        TaskOutcome::Succeeded { .. }
    ));
}

#[tokio::test]
async fn a_line_over_the_limit_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("long.py");
    std::fs::write(
        &script,
        "import sys\nsys.stdin.readline()\nprint('x' * 5000, flush=True)\nsys.stdin.read()\n",
    )
    .unwrap();
    let command = PluginCommand {
        program: "python3".into(),
        args: vec![script.display().to_string()],
    };
    let config = ExternalConfig {
        max_line_bytes: 1000,
        default_timeout: Duration::from_secs(10),
    };
    let f = with_echo(command, config);
    let (error, _) = error_of(&f.runner.run(task("t1", "create")).await);
    assert!(error.contains("longer than the 1000-byte limit"), "{error}");
}

#[tokio::test]
async fn a_missing_plugin_is_a_clear_failure() {
    let command = PluginCommand {
        program: "/nonexistent/plugin".into(),
        args: Vec::new(),
    };
    let f = with_echo(command, ExternalConfig::default());
    let (error, recoverable) = error_of(&f.runner.run(task("t1", "create")).await);
    assert!(
        error.starts_with("cannot start plugin \"echo\" (/nonexistent/plugin)"),
        "{error}"
    );
    assert!(!recoverable);
}

#[tokio::test]
async fn a_plugins_directory_finds_plugins_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(echo_py(), dir.path().join("echo")).unwrap();
    let mut plugins = PluginRegistry::empty();
    plugins.set_fallback(Arc::new(PluginsDir::new(
        dir.path(),
        ExternalConfig::default(),
    )));
    let f = fixture(plugins);
    pid_of(&f.runner.run(task("t1", "create")).await);

    let mut missing = task("t2", "create");
    missing.plugin = "nothere".into();
    let (error, _) = error_of(&f.runner.run(missing).await);
    assert!(
        error.starts_with("no plugin named \"nothere\" on this agent"),
        "{error}"
    );
    let mut escaping = task("t3", "create");
    escaping.plugin = "../echo".into();
    let (error, _) = error_of(&f.runner.run(escaping).await);
    assert!(error.starts_with("no plugin named \"../echo\""), "{error}");
}

#[test]
fn drover_agent_run_task_takes_plugin_flags() {
    let work = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["run-task", "--work-dir"])
        .arg(work.path())
        .arg("--plugin")
        .arg(format!("echo=python3 {}", echo_py().display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&serde_json::to_vec(&task("t1", "create")).unwrap())?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let result: TaskResult = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        result.runtime_properties["web_1"]["echoed"],
        json!({"port": 8080})
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("create on web_1"));
}
