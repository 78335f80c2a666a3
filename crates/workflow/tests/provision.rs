//! The engine provisions Compute servers through the provisioning service (real gRPC, in
//! process, over the `sim` cloud): batched, freed on uninstall and scale-in, made again on
//! heal, adopted when a task comes again, and a quota error fails just the instance it hit.

mod common;
mod provision_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{install, instances, run, run_with};
use drover_model::{
    Event, Execution, ExecutionStatus, Map, OperationTask, PROVISIONING_PLUGIN, TaskNode,
    TaskOutcome,
};
use drover_provisioning::{SimCloud, SimConfig};
use drover_store::{MemoryStore, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::testing::RecordingRunner;
use drover_workflow::{
    Canceller, Engine, NullObserver, Observer, RunOptions, TaskDispatcher, TaskReport,
};
use provision_support::{ProvisioningEngine, dispatcher, engine, hosts_with_apps, serve};
use serde_json::json;

/// A sim cloud served on a free port, whose cloud calls match the service's calls one to one
/// (its batch is larger than any the engine sends).
async fn cloud(config: SimConfig) -> (Arc<SimCloud>, String) {
    let sim = Arc::new(SimCloud::new(SimConfig {
        max_batch: 1_000,
        ..config
    }));
    let url = serve(sim.clone(), 1_000).await;
    (sim, url)
}

/// The keys (node instance ids) of the servers alive.
fn alive(sim: &SimCloud) -> BTreeSet<String> {
    sim.servers().into_iter().map(|s| s.key).collect()
}

fn host_ids(engine: &ProvisioningEngine) -> BTreeSet<String> {
    instances(engine)
        .into_values()
        .filter(|i| i.node_id == "host")
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn install_provisions_in_batches_and_uninstall_frees_every_server() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let runner = RecordingRunner::new();
    let engine = engine(hosts_with_apps(20), &url, 8, runner.clone());
    install(&engine).await;

    // 20 instances ready together: three requests of at most 8, not 20 of one.
    let batches = sim.stats().create_batch_sizes;
    assert_eq!(batches, [8, 8, 4], "batches reaching the cloud");
    assert_eq!(alive(&sim), host_ids(&engine));
    for server in sim.servers() {
        let host = &instances(&engine)[&server.key];
        assert_eq!(server.deployment_id, "d");
        assert_eq!(host.runtime_properties["ip"], json!(server.private_ip));
        assert_eq!(host.runtime_properties["external_id"], json!(server.id));
        assert_eq!(host.state, "started");
    }
    // The servers came from the provisioner, not from an agent; the rest ran on the agent.
    let lines = runner.record.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("create host_")),
        "{lines:?}"
    );
    assert!(lines.contains(&"configure host_1".to_owned()), "{lines:?}");

    let (e, _) = run(&engine, "uninstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(alive(&sim).is_empty(), "left: {:?}", alive(&sim));
    for host in instances(&engine)
        .into_values()
        .filter(|i| i.node_id == "host")
    {
        assert!(!host.runtime_properties.contains_key("ip"), "{host:?}");
    }
    assert_eq!(sim.stats().servers_created, 20);
}

#[tokio::test]
async fn scale_in_frees_the_removed_servers_and_scale_out_makes_new_ones() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let engine = engine(hosts_with_apps(3), &url, 10, RecordingRunner::new());
    install(&engine).await;
    assert_eq!(alive(&sim).len(), 3);

    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "host", "delta": -2}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(host_ids(&engine).len(), 1);
    assert_eq!(alive(&sim), host_ids(&engine));

    let (e, _) = run(
        &engine,
        "scale",
        json!({"scalable_entity_name": "host", "delta": 3}),
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(host_ids(&engine).len(), 4);
    assert_eq!(alive(&sim), host_ids(&engine));

    let (e, _) = run(&engine, "uninstall", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(alive(&sim).is_empty(), "left: {:?}", alive(&sim));
}

#[tokio::test]
async fn heal_replaces_the_server_of_the_healed_host_only() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let engine = engine(hosts_with_apps(2), &url, 10, RecordingRunner::new());
    install(&engine).await;
    let before = instances(&engine);
    let (e, _) = run(&engine, "heal", json!({"node_instance_id": "app_1"})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    let after = instances(&engine);
    let healed = after["app_1"].host_id.clone().expect("app_1's host");
    let other = if healed == "host_1" {
        "host_2"
    } else {
        "host_1"
    };
    let external_id = |all: &std::collections::HashMap<_, drover_model::NodeInstance>, id: &str| {
        all[id].runtime_properties["external_id"].clone()
    };
    assert_ne!(external_id(&before, &healed), external_id(&after, &healed));
    assert_eq!(external_id(&before, other), external_id(&after, other));
    assert_eq!(alive(&sim), host_ids(&engine));
    assert_eq!(sim.stats().servers_created, 3);
}

#[tokio::test]
async fn quota_exhaustion_fails_the_instance_it_hit_with_the_clouds_error() {
    let (sim, url) = cloud(SimConfig {
        quota: Some(2),
        ..SimConfig::default()
    })
    .await;
    let engine = engine(hosts_with_apps(3), &url, 10, RecordingRunner::new());
    let (e, events) = run(&engine, "install", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert!(e.error.contains("quota exceeded"), "{}", e.error);
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "task_failed")
        .collect();
    assert_eq!(failed.len(), 1, "one instance failed: {failed:?}");
    assert!(failed[0].message.text.contains("quota exceeded: 2 servers"));
    let provisioned: Vec<_> = instances(&engine)
        .into_values()
        .filter(|i| i.runtime_properties.contains_key("ip"))
        .map(|i| i.id)
        .collect();
    assert_eq!(provisioned.len(), 2);
    assert_eq!(alive(&sim).len(), 2);

    let (e, _) = run(&engine, "uninstall", json!({"ignore_failure": true})).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert!(alive(&sim).is_empty(), "left: {:?}", alive(&sim));
}

#[tokio::test]
async fn a_dry_run_provisions_nothing() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let engine = engine(hosts_with_apps(3), &url, 10, RecordingRunner::new());
    let (e, _) = run_with(&engine, "install", json!({}), true).await;
    assert_eq!(e.status, ExecutionStatus::Terminated, "{}", e.error);
    assert_eq!(sim.stats().calls, 0);
}

/// What a takeover does: the engine that resumes an execution sends its in-flight tasks again
/// under their ids. The second create adopts the server the first one made.
#[tokio::test]
async fn a_task_sent_again_adopts_the_server_it_made() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let dispatcher = dispatcher(&url, 10, RecordingRunner::new());
    let task = OperationTask {
        task_id: "e1-0-3-0".into(),
        execution_id: "e1".into(),
        deployment_id: "d".into(),
        plugin: PROVISIONING_PLUGIN.into(),
        implementation: "create".into(),
        node: TaskNode {
            node_instance_id: "host_1".into(),
            node_id: "host".into(),
            ..TaskNode::default()
        },
        ..OperationTask::default()
    };
    let mut external_ids = Vec::new();
    for _ in 0..2 {
        let mut reports = dispatcher.subscribe("e1").await.unwrap();
        dispatcher.send(vec![task.clone()]).await.unwrap();
        let result = loop {
            let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
                .await
                .expect("a result in time")
                .expect("the stream stays open");
            if let TaskReport::Finished(result) = report {
                break result;
            }
        };
        assert_eq!(result.task_id, task.task_id);
        assert!(
            matches!(result.outcome, TaskOutcome::Succeeded { .. }),
            "{result:?}"
        );
        external_ids.push(result.runtime_properties["host_1"]["external_id"].clone());
    }
    assert_eq!(external_ids[0], external_ids[1]);
    assert_eq!(sim.stats().servers_created, 1);
    assert_eq!(alive(&sim).len(), 1);
}

/// A takeover for real: the engine running an install dies while its servers are being made
/// (the run dropped, no final write); another engine over the same store resumes the execution,
/// sends the provisioning tasks in flight again, and adopts the servers: one per host.
#[tokio::test]
async fn an_install_resumed_after_its_engine_died_mid_provisioning_makes_no_second_server() {
    let (sim, url) = cloud(SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let first = Engine::new(store.clone(), dispatcher(&url, 10, RecordingRunner::new()));
    first
        .create_deployment(NewDeployment::new("d", "bp", hosts_with_apps(10)))
        .unwrap();
    let execution = first
        .create_execution("d", "install", Map::new(), false)
        .unwrap();
    {
        let (_canceller, cancel) = Canceller::new();
        let started = Arc::new(AtomicBool::new(false));
        let mut observer = ProvisioningStarted(started.clone());
        let options = RunOptions::default();
        let run = first.run(&execution.id, &options, &mut observer, cancel);
        // The cloud takes 300 ms a call: a task started here is still in flight.
        let provisioning = async {
            while !started.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = run => panic!("the install ended before the interruption"),
            () = provisioning => {}
        }
    }
    drop(first);

    let second = Engine::new(store, dispatcher(&url, 10, RecordingRunner::new()));
    run_to_end(&second, &execution.id).await;
    let hosts: BTreeSet<String> = second
        .store()
        .node_instances("d")
        .unwrap()
        .into_iter()
        .filter(|i| i.node_id == "host")
        .map(|i| i.id)
        .collect();
    assert_eq!(alive(&sim), hosts);
    let stats = sim.stats();
    // Both engines asked for the servers; the cloud made each once.
    assert!(stats.create_batch_sizes.len() >= 2, "{stats:?}");
    assert_eq!(stats.servers_created, 10, "{stats:?}");
}

/// Notes when a provisioning task has started.
struct ProvisioningStarted(Arc<AtomicBool>);

impl Observer for ProvisioningStarted {
    fn event(&mut self, event: &Event) {
        if event.event_type == "task_started"
            && event.context.plugin.as_deref() == Some(PROVISIONING_PLUGIN)
        {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Runs `workflow` on `deployment` of `engine` to its end.
async fn run_on(engine: &ProvisioningEngine, deployment: &str, workflow: &str) -> Execution {
    let execution = engine
        .create_execution(deployment, workflow, Map::new(), false)
        .unwrap();
    run_to_end(engine, &execution.id).await
}

/// Runs (or resumes) an execution to its end, which must be a success.
async fn run_to_end(engine: &ProvisioningEngine, execution_id: &str) -> Execution {
    let (_canceller, cancel) = Canceller::new();
    let done = engine
        .run(
            execution_id,
            &RunOptions::default(),
            &mut NullObserver,
            cancel,
        )
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Terminated, "{}", done.error);
    done
}

/// The servers alive by (deployment, node instance), with their private address.
fn servers_by_owner(sim: &SimCloud) -> BTreeSet<(String, String, String)> {
    sim.servers()
        .into_iter()
        .map(|s| (s.deployment_id, s.key, s.private_ip))
        .collect()
}

/// The same blueprint deployed twice has the same node instance ids in both deployments: each
/// gets servers of its own (also when their tasks share a batch), and uninstalling one frees
/// its own servers only.
#[tokio::test]
async fn uninstalling_a_deployment_leaves_another_deployments_servers_of_the_same_ids() {
    let (sim, url) = cloud(SimConfig::default()).await;
    let engine = engine(hosts_with_apps(3), &url, 10, RecordingRunner::new());
    engine
        .create_deployment(NewDeployment::new("d2", "bp", hosts_with_apps(3)))
        .unwrap();
    tokio::join!(
        run_on(&engine, "d", "install"),
        run_on(&engine, "d2", "install")
    );
    let hosts = host_ids(&engine);
    let servers = servers_by_owner(&sim);
    assert_eq!(servers.len(), 6, "{servers:?}");
    let d2_servers: BTreeSet<_> = servers.iter().filter(|s| s.0 == "d2").cloned().collect();
    let d2_keys: BTreeSet<String> = d2_servers.iter().map(|s| s.1.clone()).collect();
    assert_eq!(d2_keys, hosts, "d2 has a server for each of the same ids");
    for host in engine.store().node_instances("d2").unwrap() {
        if host.node_id == "host" {
            let ip = host.runtime_properties["ip"].as_str().unwrap().to_owned();
            assert!(
                d2_servers.contains(&("d2".into(), host.id.clone(), ip)),
                "{host:?} has a server of d2"
            );
        }
    }

    run_on(&engine, "d", "uninstall").await;
    assert_eq!(servers_by_owner(&sim), d2_servers, "d2's servers are left");
    run_on(&engine, "d2", "uninstall").await;
    assert!(sim.servers().is_empty(), "left: {:?}", sim.servers());
}
