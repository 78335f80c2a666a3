//! Set-up shared by drover's service binaries, so that every service logs and answers probes
//! alike: one place to change the format, add a layer or a metric, instead of a copy in each
//! `main.rs`.

mod bus;
mod http;

pub use bus::BusArgs;

pub use http::{Error, HttpArgs, HttpSide};
/// The metrics library the registry is of, so services register metrics of the same version.
pub use prometheus_client;

use tracing_subscriber::EnvFilter;

/// Logs to stderr (stdout stays free for a command's output), filtered by `RUST_LOG`, or by
/// `default_filter` (e.g. `"info"`) when `RUST_LOG` is unset or invalid.
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}
