//! Takeover: two `drover-workflow` processes share a state directory and a broker; the one
//! running an install is killed with SIGKILL, the broker hands the execution's ticket to the
//! other, which resumes from the journal and finishes, and no operation runs twice.

mod cluster;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::*;
use drover_store::{FileStore, StateStore};

/// A `drover-workflow` child, killed when dropped.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn replica(name: &str, port: u16, prefix: &str, state: &std::path::Path) -> Replica {
    let child = Command::new(env!("CARGO_BIN_EXE_drover-workflow"))
        .args(["--amqp-url", &amqp_url(), "--prefix", prefix])
        .args(["--queue-expiry-s", "300", "--name", name])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state)
        .args(["--capacity", "2", "--parallelism", "4"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting drover-workflow");
    Replica(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn the_other_replica_resumes_a_killed_replicas_execution() {
    let topology = drover_bus::suite::topology("workflow-takeover");
    let prefix = topology.prefix().to_owned();
    let bus = rabbitmq(topology).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan(4);
    // Slow enough operations that the install is in the middle when the replica dies.
    let agents = agents(bus.clone(), &plan, Duration::from_millis(400)).await;

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = replica("wf-a", port_a, &prefix, state.path());
    let mut client_a = client(format!("127.0.0.1:{port_a}").parse().unwrap()).await;
    create_deployment(&mut client_a, "d1", &plan).await;
    let install = start(&mut client_a, "d1", "install").await;
    // Only A consumes the executions queue yet: it runs the install.
    wait_runs(&agents.runs, 6, Duration::from_secs(60)).await;
    let b = replica("wf-b", port_b, &prefix, state.path());
    let mut client_b = client(format!("127.0.0.1:{port_b}").parse().unwrap()).await;
    assert_eq!(get(&mut client_b, &install.id).await.status, "started");
    a.0.kill().expect("SIGKILL to replica A");
    a.0.wait().unwrap();
    let ran_by_a = agents.runs.total();

    let ended = wait_end(&mut client_b, &install.id, Duration::from_secs(180)).await;
    assert_eq!(ended.status, "terminated", "{}", ended.error);
    assert!(agents.runs.total() > ran_by_a, "B ran the rest");
    assert!(
        agents.runs.repeated().is_empty(),
        "operations run twice: {:?}",
        agents.runs.repeated()
    );
    drop(b);
    let store = FileStore::open(state.path()).unwrap();
    let instances = store.node_instances("d1").unwrap();
    assert_eq!(instances.len(), 13);
    assert!(
        instances.iter().all(|i| i.state == "started"),
        "{instances:?}"
    );
}
