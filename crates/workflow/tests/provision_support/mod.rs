//! The provisioning service for the engine's provisioning tests: a real `Provisioning` gRPC
//! server on 127.0.0.1:0 in this process, over any cloud driver, and an engine whose
//! dispatcher provisions through it.

#![allow(dead_code)] // each test file uses part of it

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use drover_model::Plan;
use drover_provisioning::{CloudDriver, Provisioner, ProvisionerConfig, ProvisioningService};
use drover_store::MemoryStore;
use drover_workflow::NewDeployment;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use drover_workflow::{
    Engine, InProcessDispatcher, ProvisionConfig, ProvisioningDispatcher, remote_provisioner,
};

pub type ProvisioningEngine = Engine<ProvisioningDispatcher<InProcessDispatcher<RecordingRunner>>>;

/// Serves a provisioner over `driver` on a free port; returns its URL. `batch_size`: servers
/// per cloud call (and per progress message).
pub async fn serve(driver: Arc<dyn CloudDriver>, batch_size: usize) -> String {
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let provisioner = Provisioner::new(
        driver,
        ProvisionerConfig {
            batch_size,
            requests_per_second: nz(10_000),
            burst: nz(1_000),
            concurrent_requests: 20,
            max_attempts: 5,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
    );
    let service = ProvisioningService::new(provisioner, batch_size).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

/// `hosts` Compute instances without a create/delete of their own (so the provisioner makes
/// their servers), each with an app on it.
pub fn hosts_with_apps(hosts: u64) -> Plan {
    PlanBuilder::new()
        .compute("host", hosts)
        .noop("cloudify.interfaces.lifecycle.create")
        .noop("cloudify.interfaces.lifecycle.delete")
        .node("app", 1)
        .contained_in("host")
        .build()
}

/// An engine with deployment `d` of `plan`, provisioning through the service at `url` in
/// batches of `batch_size`, every other operation run by `runner`.
pub fn engine(
    plan: Plan,
    url: &str,
    batch_size: usize,
    runner: RecordingRunner,
) -> ProvisioningEngine {
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        dispatcher(url, batch_size, runner),
    );
    engine
        .create_deployment(NewDeployment::new("d", "bp", plan))
        .expect("deployment");
    engine
}

/// A dispatcher provisioning through the service at `url` in batches of `batch_size` (waiting
/// 50 ms for a batch to fill), every other task run by `runner`.
pub fn dispatcher(
    url: &str,
    batch_size: usize,
    runner: RecordingRunner,
) -> ProvisioningDispatcher<InProcessDispatcher<RecordingRunner>> {
    let provisioner = remote_provisioner(url, batch_size).expect("a provisioner URL");
    ProvisioningDispatcher::new(
        InProcessDispatcher::new(runner),
        Some(provisioner),
        ProvisionConfig {
            batch_size,
            window: Duration::from_millis(50),
        },
    )
}
