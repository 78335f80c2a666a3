//! The remote commands, the real `drover` binary against a gateway in this process (memory
//! store, file event index, the gateway's in-process dry-run engine): profiles, upload, deploy,
//! install followed to its end, outputs, instances, events, delete, and the errors a user sees.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use drover_gateway::{Config, FileRegistry, Gateway, LocalWorkflows, auth::Credentials};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

/// A gateway serving on a loopback port from a thread of its own, as admin/pw.
fn gateway(dir: &Path) -> SocketAddr {
    let store: Arc<dyn drover_store::StateStore> = Arc::new(drover_store::MemoryStore::new());
    let events: Arc<dyn drover_store::EventIndex> =
        Arc::new(drover_store::FileEventIndex::open(dir.join("events")).unwrap());
    let workflows = Arc::new(LocalWorkflows::new(store.clone(), events.clone()));
    let registry = Arc::new(FileRegistry::open(&dir.join("data")).unwrap());
    let credentials = Credentials {
        username: "admin".into(),
        password: "pw".into(),
    };
    let config = Config::new(dir.join("data"), credentials);
    let gateway = Gateway::new(store, events, workflows, registry, config);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            warp::serve(drover_gateway::filter(gateway))
                .incoming(listener)
                .run()
                .await;
        })
    });
    receiver.recv().unwrap()
}

struct Cli {
    config: tempfile::TempDir,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(DROVER)
            .args(args)
            .env("DROVER_CONFIG_DIR", self.config.path())
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "drover {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail with `code`; its standard error.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "drover {args:?}");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn hello() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hello/blueprint.yaml")
        .display()
        .to_string()
}

#[test]
fn upload_deploy_install_follow_outputs_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let addr = gateway(dir.path());
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
    };
    let url = format!("http://{addr}");

    let refused = cli.fails(&["blueprints", "list"], 3);
    assert!(refused.contains("drover profiles use"), "{refused}");
    let wrong = cli.fails(&["profiles", "use", &url, "-u", "admin", "-p", "nope"], 3);
    assert!(wrong.contains("401"), "{wrong}");
    cli.ok(&["profiles", "use", &url, "-u", "admin", "-p", "pw"]);
    let profile = cli.config.path().join("profile.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&profile.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    cli.ok(&["blueprints", "upload", &hello(), "-b", "hello"]);
    assert!(cli.ok(&["blueprints", "list"]).contains("hello"));
    let again = cli.fails(&["blueprints", "upload", &hello(), "-b", "hello"], 3);
    assert!(
        again.contains("409") && again.contains("already exists"),
        "{again}"
    );

    cli.ok(&[
        "deployments",
        "create",
        "d1",
        "-b",
        "hello",
        "-i",
        "hosts=3",
    ]);
    assert!(cli.ok(&["deployments", "list"]).contains("d1"));
    let instances = cli.ok(&["node-instances", "list", "-d", "d1"]);
    let hosts: Vec<&str> = instances
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("host"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(hosts.len(), 3, "{instances}");

    let install = cli.ok(&["executions", "start", "install", "-d", "d1"]);
    assert!(install.contains("workflow_started"), "{install}");
    assert!(install.contains("workflow_succeeded"), "{install}");
    let executions = cli.ok(&["executions", "list", "-d", "d1"]);
    let id = executions
        .lines()
        .find(|l| l.contains("install"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(executions.contains("terminated"), "{executions}");
    let execution: serde_json::Value =
        serde_json::from_str(&cli.ok(&["executions", "get", &id])).unwrap();
    assert_eq!(execution["status"], "terminated");
    let events = cli.ok(&["events", "list", "-e", &id]);
    assert_eq!(events.lines().next(), install.lines().next(), "{events}");
    assert!(events.contains("task_succeeded"));
    let followed = cli.ok(&["events", "list", "-e", &id, "--follow"]);
    assert_eq!(followed.lines().count(), events.lines().count());

    let outputs: serde_json::Value =
        serde_json::from_str(&cli.ok(&["deployments", "outputs", "d1"])).unwrap();
    assert!(outputs.is_object(), "{outputs}");
    let got: serde_json::Value =
        serde_json::from_str(&cli.ok(&["node-instances", "get", hosts[0]])).unwrap();
    assert_eq!(got["state"], "started");

    let missing = cli.fails(&["executions", "start", "install", "-d", "nope"], 3);
    assert!(
        missing.contains("404") && missing.contains("nope"),
        "{missing}"
    );
    cli.ok(&["executions", "start", "uninstall", "-d", "d1"]);
    cli.ok(&["deployments", "delete", "d1"]);
    cli.ok(&["blueprints", "delete", "hello"]);
    assert!(!cli.ok(&["blueprints", "list"]).contains("hello"));
}

#[test]
fn an_unreachable_manager_is_named() {
    let cli = Cli {
        config: tempfile::tempdir().unwrap(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = cli.fails(&["profiles", "use", &url], 3);
    assert!(
        error.contains(&format!("cannot reach {url}/api/v3.1")) && error.contains("refused"),
        "{error}"
    );
}
