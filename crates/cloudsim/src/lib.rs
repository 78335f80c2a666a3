//! `drover-cloudsim`: a standalone cloud for testing drover's `nova` driver over real HTTP.
//!
//! It speaks the subset of OpenStack the driver uses — Keystone v3 password auth
//! (`POST /v3/auth/tokens`, token in `X-Subject-Token`, a catalog with the compute endpoint)
//! and Nova v2.1 under `/compute/v2.1` (`POST /servers` with metadata and
//! `min_count`/`max_count`, `GET /servers/{id}`, `GET /servers/detail`, `DELETE /servers/{id}`)
//! — and misbehaves on purpose as [`SimConfig`] says: latency, a rate limit answered with 429
//! and Retry-After, 500/503s, lost responses, servers stuck in BUILD or ending in ERROR, quota
//! exhaustion with Nova's 403 body, and lists that see new servers only after a delay.
//!
//! List filters: `GET /servers/detail?metadata.KEY=VALUE&…` returns the servers whose metadata
//! holds every such pair (exact match), in creation order, `limit` (at most 1000) a page, the
//! next page after `marker` (a server id) as in Nova. Real Nova ignores these parameters at
//! the default microversion, so clients must filter what they get again; drover's driver does.
//!
//! `GET /_sim/stats` ([`Stats`]) reports servers created, deleted and alive, faults injected,
//! and duplicates: creations of a server whose `drover_deployment_id` and
//! `drover_node_instance_id` metadata a live server already carried.

pub mod cloud;
pub mod config;
pub mod http;

pub use cloud::{Cloud, Stats};
pub use config::{ConfigError, SimConfig};
pub use http::{COMPUTE_PATH, router};

/// Serves the simulated cloud on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: SimConfig) -> std::io::Result<()> {
    let public_url = format!("http://{}", listener.local_addr()?);
    axum::serve(listener, router(config, public_url)).await
}
