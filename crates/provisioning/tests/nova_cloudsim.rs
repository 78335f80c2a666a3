//! The nova driver against a real `drover-cloudsim` process with its faults switched on.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{provisioner, specs};
use drover_provisioning::testing::{Cloudsim, EVERY_FAULT, policy};
use drover_provisioning::{CloudError, Journal, ServerSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs drover-cloudsim built (scripts/test runs it)"]
async fn a_thousand_servers_through_every_fault_without_duplicates_or_leaks() {
    let cloud =
        Cloudsim::start(&[EVERY_FAULT, &["--rate-limit-rps", "150", "--seed", "5"]].concat());
    // Paced above the cloud's limit, so it answers some 429s too.
    let provisioner = provisioner(
        cloud.account(),
        policy(200, 400),
        Arc::new(Journal::in_memory()),
    );
    let results = provisioner.provision(specs("dep", 1000)).await;
    common::assert_all_succeeded(&results);
    let ids: HashSet<_> = results.iter().flatten().map(|s| s.id.clone()).collect();
    assert_eq!(ids.len(), 1000);
    let stats = cloud.stats().await;
    assert_eq!(stats["alive"], 1000, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    for fault in [
        "rate_limited",
        "injected_errors",
        "lost_responses",
        "errored",
        "stuck",
    ] {
        assert!(stats[fault].as_u64() > Some(0), "no {fault}: {stats}");
    }
    // Every server the provisioner reported is one the cloud lists, asked at once: the cloud
    // shows a new server in lists only after --list-delay-ms (300 ms), and the last servers of
    // the batch are younger than that when it returns, so the driver waits out its journal's
    // consistency window (400 ms) before it trusts a list — a reconcile must not miss them.
    let listed: HashSet<_> = provisioner
        .orphans(Some("dep"), &HashSet::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ids);

    let keys = specs("dep", 1000)
        .iter()
        .map(ServerSpec::server_key)
        .collect();
    let results = provisioner.deprovision(keys).await;
    common::assert_all_succeeded(&results);
    let stats = cloud.stats().await;
    assert_eq!(stats["alive"], 0, "leaked: {stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs drover-cloudsim built (scripts/test runs it)"]
async fn quota_exhaustion_fails_the_instances_beyond_it_and_leaks_nothing() {
    let cloud = Cloudsim::start(&[
        "--quota-instances",
        "50",
        "--error-rate",
        "0.05",
        "--lost-response-rate",
        "0.05",
        "--build-ms",
        "100",
        "--list-delay-ms",
        "200",
        "--seed",
        "9",
    ]);
    let provisioner = provisioner(
        cloud.account(),
        policy(500, 300),
        Arc::new(Journal::in_memory()),
    );
    let results = provisioner.provision(specs("dep", 80)).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 50);
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(&error.error, CloudError::Permanent(m) if m.contains("Quota exceeded for instances")),
            "{error}"
        );
    }
    let stats = cloud.stats().await;
    assert_eq!(stats["alive"], 50, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert!(stats["quota_refused"].as_u64() >= Some(30), "{stats}");

    let keys = specs("dep", 80)
        .iter()
        .map(ServerSpec::server_key)
        .collect();
    let results = provisioner.deprovision(keys).await;
    common::assert_all_succeeded(&results);
    assert_eq!(cloud.stats().await["alive"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs drover-cloudsim built (scripts/test runs it)"]
async fn deprovisioning_a_deployment_leaves_another_deployments_servers_of_the_same_ids() {
    let cloud = Cloudsim::start(&[
        "--error-rate",
        "0.05",
        "--lost-response-rate",
        "0.05",
        "--list-delay-ms",
        "200",
        "--seed",
        "11",
    ]);
    let provisioner = provisioner(
        cloud.account(),
        policy(500, 300),
        Arc::new(Journal::in_memory()),
    );
    // Two deployments of one blueprint: the same node instance ids, in one batch.
    let both: Vec<ServerSpec> = specs("d1", 20).into_iter().chain(specs("d2", 20)).collect();
    let results = provisioner.provision(both).await;
    common::assert_all_succeeded(&results);
    let stats = cloud.stats().await;
    assert_eq!(stats["alive"], 40, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    let d2: HashSet<String> = results[20..]
        .iter()
        .flatten()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(d2.len(), 20);

    let keys = specs("d1", 20).iter().map(ServerSpec::server_key).collect();
    common::assert_all_succeeded(&provisioner.deprovision(keys).await);
    assert_eq!(cloud.stats().await["alive"], 20);
    let left: HashSet<String> = provisioner
        .servers(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, d2, "d2's servers are the ones left");
}
