//! A real `drover-cloudsim` process for the tests, and a nova driver pointed at it.

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drover_provisioning::{
    Journal, NovaAccount, NovaDriver, NovaPolicy, Provisioner, ProvisionerConfig, RequestPolicy,
    ServerSpec,
};
use serde_json::Value;

/// A binary built beside this test's (`target/<profile>/NAME`), or the path in `env_var`.
pub fn sibling_binary(name: &str, env_var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p drover-cloudsim, or cargo test \
         -p drover-cloudsim -p drover-provisioning), or set {env_var}",
        path.display()
    );
    path
}

/// A `drover-cloudsim` child process, killed on drop.
pub struct Cloudsim {
    child: Child,
    /// Keystone's URL (`http://127.0.0.1:PORT/v3`).
    pub auth_url: String,
}

impl Cloudsim {
    /// Starts cloudsim with `args` (its flags) on a free port.
    pub fn start(args: &[&str]) -> Cloudsim {
        let mut child = Command::new(sibling_binary("drover-cloudsim", "DROVER_CLOUDSIM_BIN"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting drover-cloudsim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading cloudsim's first line");
        let auth_url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from cloudsim: {line:?}"))
            .to_owned();
        Cloudsim { child, auth_url }
    }

    pub fn account(&self) -> NovaAccount {
        NovaAccount {
            auth_url: self.auth_url.clone(),
            username: "admin".into(),
            password: "secret".into(),
            project_name: "drover".into(),
            user_domain_name: "Default".into(),
            project_domain_name: "Default".into(),
            region_name: None,
            interface: "public".into(),
        }
    }

    /// `GET /_sim/stats`.
    pub async fn stats(&self) -> Value {
        let url = self.auth_url.trim_end_matches("/v3").to_owned() + "/_sim/stats";
        reqwest::get(&url)
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for Cloudsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// Policies for a fast, finicky test cloud: `rps` requests per second, short build timeout and
/// consistency window (cloudsim's list delay must be shorter than `list_consistency_ms`).
pub fn policy(rps: u32, list_consistency_ms: u64) -> NovaPolicy {
    NovaPolicy {
        requests: RequestPolicy {
            requests_per_second: nz(rps),
            burst: nz(rps.div_ceil(10)),
            timeout: Duration::from_secs(10),
            max_attempts: 10,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
        batch_size: 50,
        concurrent_creations: 200,
        build_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        rebuilds: 6,
        list_consistency: Duration::from_millis(list_consistency_ms),
        default_image: "cirros".into(),
        default_flavor: "m1.tiny".into(),
        networks: Vec::new(),
    }
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_drover-provisioner"))
            .args(["--cloud", "nova", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("OS_AUTH_URL", &cloud.auth_url)
            .env("OS_USERNAME", "admin")
            .env("OS_PASSWORD", "secret")
            .env("OS_PROJECT_NAME", "drover")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting drover-provisioner");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the provisioner's first line");
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from drover-provisioner: {line:?}"))
            .to_owned();
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
