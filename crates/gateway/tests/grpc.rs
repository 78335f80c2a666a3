//! The gateway over the real workflow service: `drover-workflow`'s gRPC server and an
//! executions-queue replica (on MemoryBus, in this process), reached through `GrpcWorkflows`
//! on a TCP port, and one agent on the `central` queue. Executions run in dry-run: the agent
//! acknowledges every task without running it.

mod common;

use std::sync::Arc;

use drover_agent::{AgentQueue, AgentService, OperationRunner, PluginRegistry, RunnerConfig};
use drover_bus::{Bus, MemoryBus, Topology};
use drover_gateway::{Config, FileRegistry, Gateway, GrpcWorkflows, auth::Credentials};
use drover_workflow::{BusDispatcher, Engine, Replica, ReplicaConfig, WorkflowService};
use serde_json::json;

const T: &str = "default_tenant";

async fn start_workflow_service(
    store: Arc<dyn drover_store::StateStore>,
    work: &std::path::Path,
) -> String {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Topology::new()));
    let runner = OperationRunner::new(
        RunnerConfig::new(work),
        PluginRegistry::empty(),
        drover_agent::discard_logs(),
    )
    .unwrap();
    tokio::spawn(AgentService::new(bus.clone(), Arc::new(runner), AgentQueue::Central).run());
    let dispatcher = BusDispatcher::start(bus.clone(), "wf-test").await.unwrap();
    let engine = Arc::new(Engine::new(store, dispatcher));
    let service = WorkflowService::new(engine.clone(), bus.clone()).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    tokio::spawn(Replica::new(engine, bus, ReplicaConfig::default()).run());
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_and_uninstall_through_the_workflow_service() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn drover_store::StateStore> = Arc::new(drover_store::MemoryStore::new());
    let url = start_workflow_service(store.clone(), dir.path()).await;
    let events: Arc<dyn drover_store::EventIndex> =
        Arc::new(drover_store::FileEventIndex::open(dir.path().join("events")).unwrap());
    let gateway = Gateway::new(
        store,
        events,
        Arc::new(GrpcWorkflows::connect_lazy(&url).unwrap()),
        Arc::new(FileRegistry::open(&dir.path().join("data")).unwrap()),
        Config::new(
            dir.path().join("data"),
            Credentials {
                username: "admin".into(),
                password: "pw".into(),
            },
        ),
    );
    let gw = common::TestGateway { gateway, dir };

    let (s, v) = gw
        .upload(T, "hello", &common::hello_archive(), "blueprint.yaml")
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, d) = gw
        .call(
            T,
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "hello"})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    for (workflow, state) in [("install", "started"), ("uninstall", "deleted")] {
        let (s, e) = gw
            .call(
                T,
                "POST",
                "/api/v3.1/executions",
                Some(json!({
                    "deployment_id": "d", "workflow_id": workflow, "dry_run": "true"
                })),
            )
            .await;
        assert_eq!(s, 201, "{e}");
        let e = gw.wait_execution(T, e["id"].as_str().unwrap()).await;
        assert_eq!(
            (e["status"].as_str(), e["is_dry_run"].as_bool()),
            (Some("terminated"), Some(true)),
            "{e}"
        );
        let (_, instances) = gw.get("/api/v3.1/node-instances?deployment_id=d").await;
        let items = instances["items"].as_array().unwrap();
        assert!(
            !items.is_empty() && items.iter().all(|i| i["state"] == state),
            "{instances}"
        );
        if workflow == "install" {
            let (s, outputs) = gw.get("/api/v3.1/deployments/d/outputs").await;
            assert_eq!(
                (s, &outputs["outputs"]["web_port"]),
                (200, &json!(8080)),
                "{outputs}"
            );
            let path = format!("/api/v3.1/executions/{}", e["id"].as_str().unwrap());
            let (s, refused) = gw
                .call(T, "POST", &path, Some(json!({"action": "cancel"})))
                .await;
            assert!(
                (400..500).contains(&s),
                "cancelling an ended execution: {s} {refused}"
            );
        }
    }
    let (s, v) = gw.call(T, "DELETE", "/api/v3.1/deployments/d", None).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(gw.get("/api/v3.1/deployments/d").await.0, 404);
}
