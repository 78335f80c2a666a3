//! The provisioner against the sim cloud with its faults switched on.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_provisioning::{
    CloudError, Provisioner, ProvisionerConfig, ServerKey, ServerSpec, SimCloud, SimConfig,
};
use governor::Quota;

fn specs(n: usize) -> Vec<ServerSpec> {
    (0..n)
        .map(|i| ServerSpec {
            key: format!("vm_{i}"),
            deployment_id: "dep".into(),
            properties: Default::default(),
        })
        .collect()
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A provisioner fast enough for tests: generous pace, short backoff.
fn fast() -> ProvisionerConfig {
    ProvisionerConfig {
        batch_size: 10,
        requests_per_second: nz(10_000),
        burst: nz(100),
        concurrent_requests: 4,
        max_attempts: 10,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
    }
}

fn setup(sim: SimConfig, config: ProvisionerConfig) -> (Arc<SimCloud>, Provisioner) {
    let cloud = Arc::new(SimCloud::new(sim));
    let provisioner = Provisioner::new(cloud.clone(), config);
    (cloud, provisioner)
}

/// Each key has exactly one server in the cloud.
fn assert_one_server_per_key(cloud: &SimCloud, n: usize) {
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for server in cloud.servers() {
        *per_key.entry(server.key).or_default() += 1;
    }
    assert_eq!(per_key.len(), n);
    assert!(
        per_key.values().all(|&count| count == 1),
        "duplicates: {per_key:?}"
    );
}

#[tokio::test]
async fn lost_responses_are_retried_and_adopt_the_server_already_made() {
    let (cloud, provisioner) = setup(
        SimConfig {
            lost_response_rate: 0.5,
            seed: 1,
            ..Default::default()
        },
        fast(),
    );
    let results = provisioner.provision(specs(60)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_one_server_per_key(&cloud, 60);
    let stats = cloud.stats();
    assert!(
        stats.transient_failures > 0,
        "no response was lost: {stats:?}"
    );
    assert_eq!(stats.servers_created, 60);
    // What the provisioner answered is what the cloud holds.
    let by_key: HashMap<_, _> = cloud
        .servers()
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect();
    for server in results.into_iter().map(Result::unwrap) {
        assert_eq!(by_key[&server.key], server);
        assert!(
            server.runtime_properties()["ip"]
                .as_str()
                .unwrap()
                .starts_with("10.")
        );
    }
    // Provisioning again (a resumed execution) adopts everything and creates nothing.
    let again = provisioner.provision(specs(60)).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(cloud.stats().servers_created, 60);
}

#[tokio::test]
async fn batches_are_cut_to_the_configured_size_and_the_cloud_limit() {
    let (cloud, provisioner) = setup(SimConfig::default(), fast());
    provisioner.provision(specs(25)).await;
    let mut sizes = cloud.stats().create_batch_sizes;
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10]);

    let (cloud, provisioner) = setup(
        SimConfig {
            max_batch: 4,
            ..Default::default()
        },
        fast(),
    );
    provisioner.provision(specs(10)).await;
    let mut sizes = cloud.stats().create_batch_sizes;
    sizes.sort_unstable();
    assert_eq!(sizes, [2, 4, 4]);
}

#[tokio::test]
async fn transient_errors_are_retried_permanent_ones_are_not() {
    let (cloud, provisioner) = setup(
        SimConfig {
            failure_rate: 0.3,
            seed: 3,
            ..Default::default()
        },
        fast(),
    );
    let results = provisioner.provision(specs(100)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(cloud.stats().transient_failures > 0);
    assert_one_server_per_key(&cloud, 100);

    let (cloud, provisioner) = setup(
        SimConfig {
            quota: Some(5),
            ..Default::default()
        },
        ProvisionerConfig {
            batch_size: 1,
            concurrent_requests: 1,
            ..fast()
        },
    );
    let results = provisioner.provision(specs(8)).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 3);
    for error in failed {
        assert!(
            matches!(&error.error, CloudError::Permanent(m) if m.contains("quota")),
            "{error}"
        );
        assert_eq!(error.attempts, 1, "a permanent error is not retried");
    }
    assert_eq!(cloud.stats().calls, 8);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let (cloud, provisioner) = setup(
        SimConfig {
            failure_rate: 1.0,
            ..Default::default()
        },
        ProvisionerConfig {
            max_attempts: 3,
            ..fast()
        },
    );
    let results = provisioner.provision(specs(1)).await;
    let error = results[0].as_ref().unwrap_err();
    assert_eq!(error.attempts, 3);
    assert!(error.error.is_retryable());
    // Three rounds of three tries of the call.
    assert_eq!(cloud.stats().calls, 9);
    assert!(cloud.servers().is_empty());
}

#[tokio::test]
async fn the_pace_is_honoured() {
    // 11 calls at 50/s with no burst: the first at once, then one every 20 ms.
    let (cloud, provisioner) = setup(
        SimConfig {
            rate_limit: Some(Quota::per_second(nz(50))),
            ..Default::default()
        },
        ProvisionerConfig {
            batch_size: 1,
            requests_per_second: nz(50),
            burst: nz(1),
            ..fast()
        },
    );
    let started = Instant::now();
    let results = provisioner.provision(specs(11)).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        cloud.stats().rate_limited,
        0,
        "the cloud never had to throttle us"
    );
}

#[tokio::test]
async fn the_clouds_rate_limit_and_retry_after_are_honoured() {
    // The provisioner is told a much higher rate than the cloud allows: it learns from 429s.
    let (cloud, provisioner) = setup(
        SimConfig {
            rate_limit: Some(Quota::per_second(nz(20)).allow_burst(nz(1))),
            ..Default::default()
        },
        ProvisionerConfig {
            batch_size: 1,
            max_attempts: 20,
            ..fast()
        },
    );
    let started = Instant::now();
    let results = provisioner.provision(specs(10)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(cloud.stats().rate_limited > 0);
    // Ten creations at 20/s cannot take less than 9 intervals of 50 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(440),
        "{:?}",
        started.elapsed()
    );
    assert_one_server_per_key(&cloud, 10);
}

#[tokio::test]
async fn orphans_are_listed_and_reconciled() {
    let (cloud, provisioner) = setup(SimConfig::default(), fast());
    provisioner.provision(specs(10)).await;
    // Another deployment's server under the id of one of dep's orphans stays.
    let other = ServerSpec::new("vm_8", "other");
    provisioner.provision(vec![other]).await;
    let live: HashSet<String> = (0..7).map(|i| format!("vm_{i}")).collect();

    let mut orphans: Vec<String> = provisioner
        .orphans(Some("dep"), &live)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    orphans.sort();
    assert_eq!(orphans, ["vm_7", "vm_8", "vm_9"]);

    let dry = provisioner
        .reconcile(Some("dep"), &live, true)
        .await
        .unwrap();
    assert_eq!(dry.orphans.len(), 3);
    assert_eq!(cloud.servers().len(), 11);

    let done = provisioner
        .reconcile(Some("dep"), &live, false)
        .await
        .unwrap();
    assert_eq!(done.orphans.len(), 3);
    assert!(done.failed.is_empty());
    let mut left: Vec<String> = cloud.servers().into_iter().map(|s| s.key).collect();
    left.sort();
    let mut expected: Vec<String> = live.into_iter().collect();
    expected.push("vm_8".into());
    expected.sort();
    assert_eq!(left, expected);
}

#[tokio::test]
async fn deprovision_is_idempotent() {
    let (cloud, provisioner) = setup(
        SimConfig {
            failure_rate: 0.2,
            seed: 9,
            ..Default::default()
        },
        fast(),
    );
    provisioner.provision(specs(30)).await;
    let keys: Vec<ServerKey> = (0..30)
        .map(|i| ServerKey::new(format!("vm_{i}"), "dep"))
        .collect();
    assert!(
        provisioner
            .deprovision(keys.clone())
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert!(cloud.servers().is_empty());
    assert!(
        provisioner
            .deprovision(keys)
            .await
            .iter()
            .all(Result::is_ok)
    );
}
