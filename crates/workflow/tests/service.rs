//! The workflow service on RabbitMQ: deployments and executions through gRPC, run by a replica
//! consuming the `executions` queue, operations on agents on the host queues. Ignored in a
//! plain `cargo test` (scripts/test runs it against its broker).

mod cluster;

use std::sync::Arc;
use std::time::Duration;

use cluster::*;
use drover_model::ExecutionStatus;
use drover_proto::drover::workflow::v1 as pb;
use drover_store::{FileStore, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn install_watch_uninstall_through_grpc() {
    let bus = rabbitmq(drover_bus::suite::topology("workflow-service")).await;
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(state.path()).unwrap());
    let plan = plan(2);
    let agents = agents(bus.clone(), &plan, Duration::from_millis(5)).await;
    let service = in_process(bus, store.clone(), "wf-service").await;
    let mut client = client(service.addr).await;

    let deployment = create_deployment(&mut client, "d1", &plan).await;
    assert_eq!(deployment.node_instances, 7);
    let tenant_of = |id: &str| store.deployment(id).unwrap().unwrap().tenant;
    assert_eq!(tenant_of("d1"), drover_store::DEFAULT_TENANT);
    client
        .create_deployment(pb::CreateDeploymentRequest {
            deployment_id: "in-t1".into(),
            source: Some(pb::create_deployment_request::Source::PlanJson(
                serde_json::to_string(&plan).unwrap(),
            )),
            tenant: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tenant_of("in-t1"), "t1", "get_secret reads t1's secrets");
    let missing = client
        .start_execution(pb::StartExecutionRequest {
            deployment_id: "nope".into(),
            workflow_id: "install".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let install = start(&mut client, "d1", "install").await;
    assert_eq!(install.status, "pending");
    // The watch streams the events and ends with the execution.
    let mut stream = client
        .watch_execution(pb::WatchExecutionRequest {
            execution_id: install.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    let mut statuses = Vec::new();
    let watched = async {
        while let Some(update) = stream.message().await.unwrap() {
            match update.update.unwrap() {
                pb::execution_update::Update::EventJson(json) => {
                    let event: serde_json::Value = serde_json::from_str(&json).unwrap();
                    events.push(event["event_type"].as_str().unwrap().to_owned());
                }
                pb::execution_update::Update::Execution(e) => statuses.push(e.status),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), watched)
        .await
        .expect("the watch ends with the execution");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("terminated"),
        "{statuses:?}"
    );
    assert_eq!(events.first().map(String::as_str), Some("workflow_started"));
    assert_eq!(
        events.last().map(String::as_str),
        Some("workflow_succeeded")
    );
    let succeeded = events.iter().filter(|e| *e == "task_succeeded").count();
    assert_eq!(succeeded, agents.runs.total());
    assert!(agents.runs.total() > 0);
    assert!(
        agents.runs.repeated().is_empty(),
        "{:?}",
        agents.runs.repeated()
    );
    let instances = store.node_instances("d1").unwrap();
    assert!(
        instances.iter().all(|i| i.state == "started"),
        "{instances:?}"
    );

    // An ended execution cannot be cancelled or resumed.
    let cancel = client
        .cancel_execution(pb::CancelExecutionRequest {
            execution_id: install.id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), tonic::Code::FailedPrecondition);

    let uninstall = start(&mut client, "d1", "uninstall").await;
    let ended = wait_end(&mut client, &uninstall.id, Duration::from_secs(120)).await;
    assert_eq!(ended.status, "terminated", "{}", ended.error);
    assert!(!ended.ended_at.is_empty());
    assert!(
        store
            .node_instances("d1")
            .unwrap()
            .iter()
            .all(|i| i.state == "deleted")
    );
    assert!(
        agents.runs.repeated().is_empty(),
        "{:?}",
        agents.runs.repeated()
    );

    let listed = client
        .list_executions(pb::ListExecutionsRequest {
            deployment_id: "d1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .executions;
    let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [install.id.as_str(), uninstall.id.as_str()]);
    client
        .delete_deployment(pb::DeleteDeploymentRequest {
            deployment_id: "d1".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get_deployment(pb::GetDeploymentRequest {
            deployment_id: "d1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

/// A cancel reaches the replica running the execution through the store: the run stops and
/// ends cancelled; a resume queues it again and it finishes, running nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn cancel_then_resume_through_grpc() {
    let bus = rabbitmq(drover_bus::suite::topology("workflow-cancel")).await;
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FileStore::open(state.path()).unwrap());
    let plan = plan(4);
    let agents = agents(bus.clone(), &plan, Duration::from_millis(300)).await;
    let service = in_process(bus, store.clone(), "wf-cancel").await;
    let mut client = client(service.addr).await;
    create_deployment(&mut client, "d1", &plan).await;
    let install = start(&mut client, "d1", "install").await;
    wait_runs(&agents.runs, 2, Duration::from_secs(60)).await;
    let cancelling = client
        .cancel_execution(pb::CancelExecutionRequest {
            execution_id: install.id.clone(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelling.status, "cancelling");
    let ended = wait_end(&mut client, &install.id, Duration::from_secs(60)).await;
    assert_eq!(ended.status, "cancelled", "{}", ended.error);
    let ran_before = agents.runs.total();
    let instances = store.node_instances("d1").unwrap();
    assert!(
        instances.iter().any(|i| i.state != "started"),
        "the cancel came too late"
    );

    let resumed = client
        .resume_execution(pb::ResumeExecutionRequest {
            execution_id: install.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status, "pending");
    let ended = wait_end(&mut client, &install.id, Duration::from_secs(120)).await;
    assert_eq!(ended.status, "terminated", "{}", ended.error);
    assert!(agents.runs.total() > ran_before);
    assert!(
        agents.runs.repeated().is_empty(),
        "{:?}",
        agents.runs.repeated()
    );
    let execution = store.execution(&install.id).unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Terminated);
    assert!(
        store
            .node_instances("d1")
            .unwrap()
            .iter()
            .all(|i| i.state == "started")
    );
}
