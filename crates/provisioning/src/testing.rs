//! A real `drover-cloudsim` process for tests: started on a free port, its Keystone account,
//! its `/_sim/stats`, and nova policies fast enough for a test (used by this crate's tests and
//! by the workflow engine's). Test support, like `drover_workflow::testing`.

use std::io::{BufRead, BufReader};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::nova::{NovaAccount, NovaPolicy, RequestPolicy};

/// cloudsim's flags for every fault but the rate limit (a test sets `--rate-limit-rps` and
/// `--seed`): latency, 5% 5xx, 5% lost responses, 200 ms builds of which 3% end in ERROR and 2%
/// stay in BUILD, and lists 300 ms behind.
pub const EVERY_FAULT: &[&str] = &[
    "--latency-ms",
    "2",
    "--error-rate",
    "0.05",
    "--lost-response-rate",
    "0.05",
    "--build-ms",
    "200",
    "--build-error-rate",
    "0.03",
    "--stuck-rate",
    "0.02",
    "--list-delay-ms",
    "300",
];

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
        "{} is missing: build it first (cargo build -p {name}), or set {env_var}",
        path.display()
    );
    path
}

/// Spawns `command`, a server that prints `listening on ADDRESS` as its first line (cloudsim,
/// the provisioner), and returns it with that address; its stderr goes to the caller's.
pub fn spawn_listening(command: &mut Command, name: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading {name}'s first line: {e}"));
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from {name}: {line:?}"))
        .to_owned();
    (child, address)
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
        let mut command = Command::new(sibling_binary("drover-cloudsim", "DROVER_CLOUDSIM_BIN"));
        command.args(args);
        let (child, auth_url) = spawn_listening(&mut command, "drover-cloudsim");
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
