//! A RabbitMQ restart in the middle of an install run by the workflow service: the bus
//! reconnects, the replica resumes its execution when the ticket comes again (or goes on, if the
//! new copy reached it before it saw the old one lost), the agents answer the tasks delivered
//! again with their first results, and the install finishes with nothing run twice.
//!
//! It restarts the broker (`scripts/rabbitmq restart`, with the caller's DROVER_RABBITMQ_*
//! environment), so it lives in a test binary of its own: no other broker test runs meanwhile.

mod cluster;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cluster::*;
use drover_store::{FileStore, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and restarts it: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn an_install_survives_a_broker_restart() {
    drover_telemetry::init_tracing("warn");
    let bus = rabbitmq(drover_bus::suite::topology("workflow-restart")).await;
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(state.path()).unwrap());
    let plan = plan(6);
    let agents = agents(bus.clone(), &plan, Duration::from_millis(300)).await;
    let service = in_process(bus, store.clone(), "wf-restart").await;
    let mut client = client(service.addr).await;
    create_deployment(&mut client, "d1", &plan).await;
    let install = start(&mut client, "d1", "install").await;
    wait_runs(&agents.runs, 5, Duration::from_secs(60)).await;
    // Operations in flight stay unanswered across the restart: the install is in the middle.
    agents.gate.send_replace(false);
    let ran_before = agents.runs.total();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/rabbitmq");
    let restart = tokio::task::spawn_blocking(move || Command::new(script).arg("restart").status());
    let status = restart
        .await
        .unwrap()
        .expect("running scripts/rabbitmq restart");
    assert!(status.success(), "scripts/rabbitmq restart: {status}");
    agents.gate.send_replace(true);

    let ended = wait_end(&mut client, &install.id, Duration::from_secs(300)).await;
    assert_eq!(ended.status, "terminated", "{}", ended.error);
    assert!(
        agents.runs.total() > ran_before,
        "operations ran after the restart"
    );
    assert!(
        agents.runs.repeated().is_empty(),
        "operations run twice: {:?}",
        agents.runs.repeated()
    );
    let instances = store.node_instances("d1").unwrap();
    assert_eq!(instances.len(), 19);
    assert!(
        instances.iter().all(|i| i.state == "started"),
        "{instances:?}"
    );
}
