//! End-to-end tests of the operation runner: real scripts, the real `drover-agent` binary as
//! `ctx`, real processes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_agent::{LogLevel, LogRecord, LogStream, OperationRunner, PluginRegistry, RunnerConfig};
use drover_model::{Map, OperationTask, TaskNode, TaskOutcome, TaskRelationship, TaskResult};
use serde_json::{Value, json};
use tempfile::TempDir;

struct Fixture {
    blueprint: TempDir,
    _work: TempDir,
    runner: OperationRunner,
    logs: Arc<Mutex<Vec<LogRecord>>>,
}

impl Fixture {
    fn new() -> Self {
        let blueprint = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let mut config = RunnerConfig::new(work.path());
        config.ctx_executable = Some(env!("CARGO_BIN_EXE_drover-agent").into());
        let runner = OperationRunner::new(
            config,
            PluginRegistry::with_builtins(),
            Arc::new(move |r| sink.lock().unwrap().push(r)),
        )
        .unwrap();
        Fixture {
            blueprint,
            _work: work,
            runner,
            logs,
        }
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.blueprint.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    fn task(&self, id: &str, implementation: &str, inputs: Value) -> OperationTask {
        OperationTask {
            task_id: id.into(),
            execution_id: "exec-1".into(),
            workflow_id: "install".into(),
            deployment_id: "dep-1".into(),
            operation: "cloudify.interfaces.lifecycle.create".into(),
            plugin: "script".into(),
            implementation: implementation.into(),
            inputs: object(inputs),
            blueprint_dir: Some(self.blueprint.path().display().to_string()),
            node: node(
                "web_1",
                "web",
                json!({"port": 8080, "conf": {"name": "w"}}),
                json!({"old": 1}),
            ),
            ..Default::default()
        }
    }

    fn lines(&self, stream: LogStream) -> Vec<(LogLevel, String)> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|r| r.stream == stream)
            .map(|r| (r.level, r.message.clone()))
            .collect()
    }

    fn path(&self, name: &str) -> String {
        self.blueprint.path().join(name).display().to_string()
    }
}

fn object(value: Value) -> Map {
    value.as_object().cloned().unwrap()
}

fn node(instance: &str, node_id: &str, properties: Value, runtime: Value) -> TaskNode {
    TaskNode {
        node_instance_id: instance.into(),
        node_id: node_id.into(),
        node_type: "cloudify.nodes.WebServer".into(),
        properties: object(properties),
        runtime_properties: object(runtime),
    }
}

fn succeeded(result: &TaskResult) -> &Value {
    match &result.outcome {
        TaskOutcome::Succeeded { result } => result,
        failed => panic!("expected success, got {failed:?}"),
    }
}

fn failure(result: &TaskResult) -> (&str, bool, Option<f64>) {
    match &result.outcome {
        TaskOutcome::Failed {
            error,
            recoverable,
            retry_after_s,
        } => (error, *recoverable, *retry_after_s),
        ok => panic!("expected failure, got {ok:?}"),
    }
}

#[tokio::test]
async fn script_gets_inputs_as_environment() {
    let f = Fixture::new();
    f.script(
        "scripts/create.sh",
        "echo \"port=$port name=$name list=$list flag=$flag\"\necho to-stderr >&2\n",
    );
    let task = f.task(
        "t1",
        "scripts/create.sh",
        json!({"port": 80, "name": "web server", "list": [1, "a"], "flag": true}),
    );
    let result = f.runner.run(task).await;
    assert_eq!(result.task_id, "t1");
    assert_eq!(result.execution_id, "exec-1");
    assert_eq!(succeeded(&result), &Value::Null);
    assert!(result.runtime_properties.is_empty());
    assert_eq!(
        f.lines(LogStream::Stdout),
        [(
            LogLevel::Info,
            "port=80 name=web server list=[1,\"a\"] flag=true".into()
        )]
    );
    assert_eq!(
        f.lines(LogStream::Stderr),
        [(LogLevel::Info, "to-stderr".into())]
    );
}

#[tokio::test]
async fn script_runner_form_with_script_path_input_and_python() {
    let f = Fixture::new();
    f.script(
        "scripts/configure.py",
        "import os\nprint('hello', os.environ['who'])\n",
    );
    let task = f.task(
        "t1",
        "script_runner.tasks.run",
        json!({"script_path": "scripts/configure.py", "who": "py"}),
    );
    succeeded(&f.runner.run(task).await);
    assert_eq!(
        f.lines(LogStream::Stdout),
        [(LogLevel::Info, "hello py".into())]
    );
}

#[tokio::test]
async fn non_zero_exit_is_recoverable_with_stderr_tail() {
    let f = Fixture::new();
    f.script("fail.sh", "echo working\necho 'disk full' >&2\nexit 3\n");
    let result = f.runner.run(f.task("t1", "fail.sh", json!({}))).await;
    let (error, recoverable, retry_after) = failure(&result);
    assert!(recoverable);
    assert_eq!(retry_after, None);
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(error.contains("disk full"), "{error}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let f = Fixture::new();
    let marker = f.path("child-survived");
    // The background child would write the marker after 2 s unless its group is killed.
    f.script(
        "hang.sh",
        &format!("(sleep 2; touch '{marker}') &\necho started\nsleep 30\n"),
    );
    let mut task = f.task("t1", "hang.sh", json!({}));
    task.timeout_s = Some(1.0);
    let started = Instant::now();
    let result = f.runner.run(task).await;
    let (error, recoverable, _) = failure(&result);
    assert!(error.contains("timed out"), "{error}");
    assert!(!recoverable);
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !Path::new(&marker).exists(),
        "a process of the group outlived the timeout"
    );
    assert_eq!(
        f.lines(LogStream::Stdout),
        [(LogLevel::Info, "started".into())]
    );
}

#[tokio::test]
async fn ctx_reads_and_writes_runtime_properties() {
    let f = Fixture::new();
    f.script(
        "ctx.sh",
        r#"set -e
echo "id=$(ctx instance id) node=$(ctx node id) name=$(ctx node name) type=$(ctx node type)"
echo "port=$(ctx node properties port) conf=$(ctx node properties conf) nested=$(ctx node properties conf.name)"
echo "old=$(ctx instance runtime-properties old)"
ctx instance runtime-properties ip 10.0.0.7
ctx instance runtime_properties ports '[80, 443]'
ctx instance runtime-properties endpoint.host web
ctx instance runtime-properties endpoint.port 8080
ctx instance runtime-properties literal @'"8080"'
ctx instance runtime-properties ports[1] 8443
echo "ip=$(ctx instance runtime-properties ip) host=$(ctx instance runtime-properties endpoint.host)"
echo "dep=$(ctx deployment id) exec=$(ctx execution-id) op=$(ctx operation name) json=$(ctx -j instance id)"
if ctx instance runtime-properties missing 2>/dev/null; then exit 9; fi
ctx returns '{"ok": true}'
"#,
    );
    let result = f.runner.run(f.task("t1", "ctx.sh", json!({}))).await;
    assert_eq!(succeeded(&result), &json!({"ok": true}));
    assert_eq!(
        Value::Object(result.runtime_properties["web_1"].clone()),
        json!({"old": 1, "ip": "10.0.0.7", "ports": [80, 8443],
               "endpoint": {"host": "web", "port": 8080}, "literal": "8080"})
    );
    let stdout: Vec<String> = f
        .lines(LogStream::Stdout)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        stdout,
        [
            "id=web_1 node=web name=web type=cloudify.nodes.WebServer",
            "port=8080 conf={\"name\":\"w\"} nested=w",
            "old=1",
            "ip=10.0.0.7 host=web",
            "dep=dep-1 exec=exec-1 op=cloudify.interfaces.lifecycle.create json=\"web_1\"",
        ]
    );
}

#[tokio::test]
async fn ctx_logger_lines_are_captured() {
    let f = Fixture::new();
    f.script(
        "log.sh",
        "ctx logger info 'hello world'\nctx logger warning careful now\nctx logger error bad\nctx logger debug dbg\n",
    );
    succeeded(&f.runner.run(f.task("t1", "log.sh", json!({}))).await);
    assert_eq!(
        f.lines(LogStream::Ctx),
        [
            (LogLevel::Info, "hello world".into()),
            (LogLevel::Warning, "careful now".into()),
            (LogLevel::Error, "bad".into()),
            (LogLevel::Debug, "dbg".into()),
        ]
    );
    let record = f.logs.lock().unwrap()[0].clone();
    assert_eq!(record.task_id, "t1");
    assert_eq!(record.node_instance_id, "web_1");
}

#[tokio::test]
async fn ctx_source_and_target_in_relationship_operations() {
    let f = Fixture::new();
    f.script(
        "rel.sh",
        r#"set -e
ctx source instance runtime-properties db_host "$(ctx target instance runtime-properties ip)"
ctx target instance runtime-properties clients.web "$(ctx source instance id)"
echo "target-port=$(ctx target node properties port) source-node=$(ctx source node id)"
if ctx instance id 2>/dev/null; then exit 9; fi
"#,
    );
    let mut task = f.task("t1", "rel.sh", json!({}));
    task.operation = "cloudify.interfaces.relationship_lifecycle.preconfigure".into();
    let source = task.node.clone();
    let target = node(
        "db_1",
        "db",
        json!({"port": 5432}),
        json!({"ip": "10.0.0.9"}),
    );
    task.relationship = Some(TaskRelationship {
        type_name: "cloudify.relationships.connected_to".into(),
        side: "source".into(),
        source,
        target,
    });
    let result = f.runner.run(task).await;
    succeeded(&result);
    assert_eq!(
        result.runtime_properties["web_1"]["db_host"],
        json!("10.0.0.9")
    );
    assert_eq!(
        result.runtime_properties["db_1"]["clients"],
        json!({"web": "web_1"})
    );
    assert_eq!(result.runtime_properties["db_1"]["ip"], json!("10.0.0.9"));
    assert_eq!(
        f.lines(LogStream::Stdout),
        [(LogLevel::Info, "target-port=5432 source-node=web".into())]
    );
}

#[tokio::test]
async fn ctx_abort_and_retry_operation() {
    let f = Fixture::new();
    f.script("abort.sh", "ctx abort-operation 'no way'\nexit 0\n");
    f.script("retry.sh", "ctx retry-operation 'not yet' 7\necho after\n");
    let result = f.runner.run(f.task("t1", "abort.sh", json!({}))).await;
    assert_eq!(failure(&result), ("no way", false, None));
    let result = f.runner.run(f.task("t2", "retry.sh", json!({}))).await;
    assert_eq!(failure(&result), ("not yet", true, Some(7.0)));
}

#[tokio::test]
async fn ctx_download_resource_and_render() {
    let f = Fixture::new();
    f.script("resources/app.conf", "port={{ ctx.node.properties.port }} ip={{ctx.instance.runtime_properties.old}} x={{ extra }}\n");
    f.script(
        "dl.sh",
        r#"set -e
plain=$(ctx download-resource resources/app.conf)
rendered=$(ctx download-resource-and-render resources/app.conf @'{"template_variables": {"extra": "y"}}')
cat "$plain"
cat "$rendered"
"#,
    );
    succeeded(&f.runner.run(f.task("t1", "dl.sh", json!({}))).await);
    let stdout: Vec<String> = f
        .lines(LogStream::Stdout)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        stdout,
        [
            "port={{ ctx.node.properties.port }} ip={{ctx.instance.runtime_properties.old}} x={{ extra }}",
            "port=8080 ip=1 x=y",
        ]
    );
}

#[tokio::test]
async fn a_repeated_task_id_answers_the_first_result_without_running_again() {
    let f = Fixture::new();
    let counter = f.path("runs");
    f.script(
        "count.sh",
        &format!("echo run >> '{counter}'\nctx returns \"$(wc -l < '{counter}')\"\n"),
    );
    let task = f.task("t1", "count.sh", json!({}));
    let (first, second) = tokio::join!(f.runner.run(task.clone()), f.runner.run(task.clone()));
    let third = f.runner.run(task.clone()).await;
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(succeeded(&first), &json!(1));
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
    // A retry is a new attempt and runs.
    let mut retry = task;
    retry.attempt = 1;
    assert_eq!(succeeded(&f.runner.run(retry).await), &json!(2));
}

#[tokio::test]
async fn dry_run_does_not_run() {
    let f = Fixture::new();
    let marker = f.path("ran");
    f.script("touch.sh", &format!("touch '{marker}'\n"));
    let mut task = f.task("t1", "touch.sh", json!({}));
    task.dry_run = true;
    succeeded(&f.runner.run(task).await);
    assert!(!Path::new(&marker).exists());
}

#[tokio::test]
async fn unknown_plugin_and_missing_script_fail_for_good() {
    let f = Fixture::new();
    let mut task = f.task("t1", "mod.tasks.create", json!({}));
    task.plugin = "openstack".into();
    let result = f.runner.run(task).await;
    let (error, recoverable, _) = failure(&result);
    assert!(error.contains("no plugin named \"openstack\""), "{error}");
    assert!(!recoverable);

    let result = f.runner.run(f.task("t2", "nope.sh", json!({}))).await;
    let (error, recoverable, _) = failure(&result);
    assert!(error.contains("cannot open script"), "{error}");
    assert!(!recoverable);
}

#[tokio::test]
async fn malformed_ctx_calls_get_errors_and_the_script_goes_on() {
    let f = Fixture::new();
    f.script(
        "bad.sh",
        r#"for call in "nonsense" "instance" "instance runtime-properties a b c" "logger shout x" "node properties port 1" "source instance id"; do
  if ctx $call 2>>"$ERRS"; then echo "accepted: $call"; fi
done
ctx instance runtime-properties still works
"#,
    );
    let errs = f.path("errs");
    let result = f
        .runner
        .run(f.task("t1", "bad.sh", json!({"ERRS": errs})))
        .await;
    succeeded(&result);
    assert!(
        f.lines(LogStream::Stdout).is_empty(),
        "{:?}",
        f.lines(LogStream::Stdout)
    );
    assert_eq!(result.runtime_properties["web_1"]["still"], json!("works"));
    let errors = std::fs::read_to_string(&errs).unwrap();
    assert_eq!(errors.lines().count(), 6, "{errors}");
    assert!(errors.contains("node properties are read-only"), "{errors}");
}

/// Runs `task` until the script has appended its `n`th line to `runs`, then drops the run.
async fn cancel_once_started(f: &Fixture, task: OperationTask, runs: &str, n: usize) {
    let run = f.runner.run(task);
    tokio::pin!(run);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            result = &mut run => panic!("the script ended: {result:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let lines = std::fs::read_to_string(runs).unwrap_or_default().lines().count();
                if lines >= n {
                    return;
                }
                assert!(Instant::now() < deadline, "the script did not start");
            }
        }
    }
}

#[tokio::test]
async fn a_cancelled_run_kills_its_processes_and_may_run_again() {
    let f = Fixture::new();
    let marker = f.path("child-survived");
    let runs = f.path("runs");
    f.script(
        "slow.sh",
        &format!("(sleep 1; touch '{marker}') &\necho run >> '{runs}'\nsleep 30\n"),
    );
    let task = f.task("t1", "slow.sh", json!({}));
    cancel_once_started(&f, task.clone(), &runs, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !Path::new(&marker).exists(),
        "the script's group outlived the cancelled run"
    );
    // The first run never finished, so a re-send runs it again.
    cancel_once_started(&f, task, &runs, 2).await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
}

#[test]
fn the_run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let f = Fixture::new();
    let future = f.runner.run(OperationTask::default());
    assert_send(&future);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_keep_their_contexts_apart() {
    let f = Arc::new(Fixture::new());
    f.script(
        "own.sh",
        "ctx instance runtime-properties mine \"$(ctx instance id)-$n\"\n",
    );
    let runs = (0..40).map(|n| {
        let f = Arc::clone(&f);
        tokio::spawn(async move {
            let mut task = f.task(&format!("t{n}"), "own.sh", json!({"n": n}));
            task.node.node_instance_id = format!("vm_{n}");
            f.runner.run(task).await
        })
    });
    for (n, run) in runs.collect::<Vec<_>>().into_iter().enumerate() {
        let result = run.await.unwrap();
        succeeded(&result);
        assert_eq!(result.runtime_properties.len(), 1);
        assert_eq!(
            result.runtime_properties[&format!("vm_{n}")]["mine"],
            json!(format!("vm_{n}-{n}"))
        );
    }
}
