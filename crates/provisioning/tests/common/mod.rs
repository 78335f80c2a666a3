//! A nova driver and a `drover-provisioner` process pointed at a cloudsim
//! (`drover_provisioning::testing`), and what the tests share besides.

#![allow(dead_code)] // each test file uses part of it

use std::num::NonZeroU32;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use drover_provisioning::testing::{Cloudsim, spawn_listening};
use drover_provisioning::{
    Journal, NovaAccount, NovaDriver, NovaPolicy, Provisioner, ProvisionerConfig, ServerSpec,
};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// A provisioner over a nova driver: the driver paces requests, the provisioner only batches
/// and retries whole calls.
pub fn provisioner(account: NovaAccount, policy: NovaPolicy, journal: Arc<Journal>) -> Provisioner {
    let driver = NovaDriver::new(account, policy, journal).expect("nova driver");
    Provisioner::new(
        Arc::new(driver),
        ProvisionerConfig {
            batch_size: 50,
            requests_per_second: nz(10_000),
            burst: nz(1_000),
            concurrent_requests: 20,
            max_attempts: 5,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        },
    )
}

pub fn specs(deployment: &str, n: usize) -> Vec<ServerSpec> {
    (0..n)
        .map(|i| ServerSpec {
            key: format!("vm_{i:04}"),
            deployment_id: deployment.into(),
            properties: Default::default(),
        })
        .collect()
}

/// A `drover-provisioner --cloud nova` child process pointed at a cloudsim.
pub struct ProvisionerProcess {
    child: Child,
    /// The gRPC endpoint (`http://127.0.0.1:PORT`).
    pub endpoint: String,
}

impl ProvisionerProcess {
    pub fn start(cloud: &Cloudsim, state_dir: &std::path::Path, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover-provisioner"));
        command
            .args(["--cloud", "nova", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("OS_AUTH_URL", &cloud.auth_url)
            .env("OS_USERNAME", "admin")
            .env("OS_PASSWORD", "secret")
            .env("OS_PROJECT_NAME", "drover");
        let (child, endpoint) = spawn_listening(&mut command, "drover-provisioner");
        ProvisionerProcess { child, endpoint }
    }

    /// SIGKILL: no chance to clean up or flush anything.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaping");
    }
}

impl Drop for ProvisionerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that every result of a batch succeeded, naming how many failed and the first error.
pub fn assert_all_succeeded<T, E: std::fmt::Display>(results: &[Result<T, E>]) {
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {}",
        failed.len(),
        failed[0]
    );
}
