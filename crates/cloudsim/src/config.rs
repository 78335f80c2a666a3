//! How the simulated cloud misbehaves: one JSON-serialisable struct, read from a file and
//! overridden by flags or `DROVER_CLOUDSIM_*` environment variables (see `main.rs`).

use serde::{Deserialize, Serialize};

/// Faults and limits of the simulated cloud. Rates are probabilities from 0 to 1, drawn per
/// request (or per server, for the build outcome) from one generator seeded with `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Keystone user, password and project that authenticate (domain names are not checked).
    pub user: String,
    pub password: String,
    pub project: String,
    /// Delay added to every API request before it is handled.
    pub latency_ms: u64,
    /// Compute requests per second accepted (a token bucket holding one second's worth);
    /// beyond, 429 with a Retry-After header. `None`: unlimited.
    pub rate_limit_rps: Option<u32>,
    /// Compute requests answered 500 or 503 before anything is done.
    pub error_rate: f64,
    /// Create and delete requests that are carried out but answered 500, as when a gateway
    /// loses the response: the case idempotency exists for.
    pub lost_response_rate: f64,
    /// Time a server spends in BUILD before it becomes ACTIVE (or ERROR).
    pub build_ms: u64,
    /// Servers that end in ERROR instead of ACTIVE.
    pub build_error_rate: f64,
    /// Servers that stay in BUILD for ever.
    pub stuck_rate: f64,
    /// Most servers alive at once (the project's instances quota); creations beyond are
    /// refused with Nova's 403 "Quota exceeded" body. `None`: unlimited.
    pub quota_instances: Option<usize>,
    /// A new server appears in `GET /servers/detail` only this long after its creation
    /// (`GET /servers/{id}` sees it at once).
    pub list_delay_ms: u64,
    /// Most servers one `POST /servers` may ask for (`max_count`).
    pub max_count: usize,
    pub seed: u64,
}

impl Default for SimConfig {
    /// A well-behaved cloud: no faults, no limits, servers ACTIVE at once.
    fn default() -> Self {
        SimConfig {
            user: "admin".into(),
            password: "secret".into(),
            project: "drover".into(),
            latency_ms: 0,
            rate_limit_rps: None,
            error_rate: 0.0,
            lost_response_rate: 0.0,
            build_ms: 0,
            build_error_rate: 0.0,
            stuck_rate: 0.0,
            quota_instances: None,
            list_delay_ms: 0,
            max_count: 100,
            seed: 0,
        }
    }
}

/// A configuration that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid cloudsim configuration: {0}")]
pub struct ConfigError(String);

impl SimConfig {
    /// Checks rates are probabilities and limits are positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("build_error_rate", self.build_error_rate),
            ("stuck_rate", self.stuck_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError(format!("{name} = {rate} is not within 0..=1")));
            }
        }
        if self.build_error_rate + self.stuck_rate > 1.0 {
            return Err(ConfigError(
                "build_error_rate + stuck_rate exceeds 1".into(),
            ));
        }
        if self.rate_limit_rps == Some(0) {
            return Err(ConfigError("rate_limit_rps must be at least 1".into()));
        }
        if self.max_count == 0 {
            return Err(ConfigError("max_count must be at least 1".into()));
        }
        Ok(())
    }
}
