//! `drover-provisioner` (gRPC, nova driver) against a real cloudsim, killed with SIGKILL in
//! the middle of a batch and restarted on the same state directory: asking for the batch
//! again makes no second server for any instance.

mod common;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use common::{ProvisionerProcess, specs};
use drover_proto::drover::provisioning::v1 as pb;
use drover_provisioning::testing::Cloudsim;
use drover_provisioning::{Provisioner, ProvisionerConfig, RemoteCloud, ServerSpec};

/// What the engine would hold: a provisioner whose cloud is the service.
fn client(endpoint: &str) -> Provisioner {
    let remote = RemoteCloud::connect_lazy(endpoint, 100).expect("endpoint");
    Provisioner::new(
        Arc::new(remote),
        ProvisionerConfig {
            batch_size: 100,
            requests_per_second: NonZeroU32::new(1000).unwrap(),
            burst: NonZeroU32::new(100).unwrap(),
            concurrent_requests: 8,
            max_attempts: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        },
    )
}

const POLICY: &[&str] = &[
    "--requests-per-second",
    "150",
    "--burst",
    "10",
    "--batch-size",
    "50",
    "--list-consistency-s",
    "0.6",
    "--poll-interval-s",
    "0.1",
    "--build-timeout-s",
    "2",
    "--rebuilds",
    "6",
    "--max-attempts",
    "10",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs drover-cloudsim built (scripts/test runs it)"]
async fn a_batch_asked_again_after_kill_9_makes_no_duplicates() {
    let cloud = Cloudsim::start(&[
        "--latency-ms",
        "5",
        "--rate-limit-rps",
        "200",
        "--error-rate",
        "0.05",
        "--lost-response-rate",
        "0.05",
        "--build-ms",
        "300",
        "--build-error-rate",
        "0.03",
        "--stuck-rate",
        "0.02",
        "--list-delay-ms",
        "400",
        "--seed",
        "11",
    ]);
    let state = tempfile::tempdir().unwrap();
    let n = 300;

    let first = ProvisionerProcess::start(&cloud, state.path(), POLICY);
    let provisioner = client(&first.endpoint);
    let batch = tokio::spawn(async move { provisioner.provision(specs("dep", n)).await });
    // Kill it once about a third of the servers exist: creates, polls and lost answers in flight.
    while cloud.stats().await["created"].as_u64().unwrap_or(0) < n as u64 / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9();
    let interrupted = batch.await.unwrap();
    assert!(
        interrupted.iter().any(Result::is_err),
        "the kill interrupted nothing"
    );

    let second = ProvisionerProcess::start(&cloud, state.path(), POLICY);
    let provisioner = client(&second.endpoint);
    let results = provisioner.provision(specs("dep", n)).await;
    common::assert_all_succeeded(&results);
    let stats = cloud.stats().await;
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(stats["alive"], n, "{stats}");

    // The service's other calls, through its gRPC client.
    let mut grpc = pb::provisioning_client::ProvisioningClient::connect(second.endpoint.clone())
        .await
        .unwrap();
    let server = grpc
        .get_server(pb::GetServerRequest {
            node_instance_id: "vm_0007".into(),
            deployment_id: "dep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reported = results[7].as_ref().unwrap();
    assert_eq!(server.id, reported.id);
    let live: Vec<String> = specs("dep", n - 10).into_iter().map(|s| s.key).collect();
    let dry = grpc
        .reconcile(pb::ReconcileRequest {
            deployment_id: "dep".into(),
            live_node_instance_ids: live.clone(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.orphans.len(), 10);
    assert_eq!(
        cloud.stats().await["alive"],
        n,
        "a dry run deleted something"
    );
    let done = grpc
        .reconcile(pb::ReconcileRequest {
            deployment_id: "dep".into(),
            live_node_instance_ids: live.clone(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    let orphans: HashSet<_> = done
        .orphans
        .into_iter()
        .map(|s| s.node_instance_id)
        .collect();
    assert_eq!(
        orphans,
        specs("dep", n)
            .into_iter()
            .skip(n - 10)
            .map(|s| s.key)
            .collect()
    );
    assert_eq!(cloud.stats().await["alive"], n - 10);

    let live = specs("dep", n - 10)
        .iter()
        .map(ServerSpec::server_key)
        .collect();
    let results = provisioner.deprovision(live).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let stats = cloud.stats().await;
    assert_eq!(stats["alive"], 0, "leaked: {stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
}
