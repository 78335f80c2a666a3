//! The HTTP side of every service, on `--http-listen`: `/healthz` answers while the process
//! serves (Kubernetes' liveness probe), `/readyz` only while the service's dependencies answer
//! too (readiness: a replica that lost its broker gets no traffic and is not counted ready by
//! `deploy/stack`), `/metrics` the process's registry in Prometheus text.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::registry::Registry;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The flag every service flattens into its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Where /healthz, /readyz and /metrics are served (not served when omitted).
    #[arg(long, env = "DROVER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{url} names no host and port to check: {reason}")]
    Url { url: String, reason: String },
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;
type Text = Arc<dyn Fn() -> String + Send + Sync>;

/// One process's readiness checks and metrics, built during set-up, then served.
pub struct HttpSide {
    checks: Vec<(String, Check)>,
    registry: Registry,
    texts: Vec<Text>,
}

impl HttpSide {
    /// Metrics registered here are named `drover_<service>_…`.
    pub fn new(service: &str) -> Self {
        HttpSide {
            checks: Vec::new(),
            registry: Registry::with_prefix(format!("drover_{service}")),
            texts: Vec::new(),
        }
    }

    /// The process's registry: a service registers its counters and gauges here at set-up.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Metrics a service already renders in the text format itself (the monitor's).
    pub fn with_text(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.texts.push(Arc::new(render));
        self
    }

    /// A readiness check: `/readyz` is 200 only while every check returns `Ok` within 2 s.
    pub fn with_check<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.to_owned(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// A readiness check that a TCP connection to `url`'s host and port opens (a broker, an
    /// OpenSearch node, another service): the dependency answers, without speaking its protocol.
    pub fn with_reachable(self, name: &str, url: &str) -> Result<Self, Error> {
        let target = host_port(url)?;
        Ok(self.with_check(name, move || {
            let target = target.clone();
            async move {
                tokio::net::TcpStream::connect(&target)
                    .await
                    .map(drop)
                    .map_err(|e| format!("{target}: {e}"))
            }
        }))
    }

    /// Binds `addr` (nothing when `None`) and serves in a task of its own; returns the address
    /// bound, which tells the port when `addr` asked for port 0.
    pub async fn spawn(self, addr: Option<SocketAddr>) -> Result<Option<SocketAddr>, Error> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let side = Arc::new(self);
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get({
                    let side = side.clone();
                    move || {
                        let side = side.clone();
                        async move { side.ready().await }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let side = side.clone();
                    async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], side.render()) }
                }),
            );
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the HTTP side stopped");
            }
        });
        tracing::info!(listen = %local, "serving /healthz, /readyz and /metrics");
        Ok(Some(local))
    }

    async fn ready(&self) -> (StatusCode, String) {
        let mut failures = String::new();
        for (name, check) in &self.checks {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
            if let Err(reason) = outcome {
                failures.push_str(&format!("{name}: {reason}\n"));
            }
        }
        if failures.is_empty() {
            (StatusCode::OK, "ready\n".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{failures}"),
            )
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        for text in &self.texts {
            out.push_str(&text());
        }
        out.push_str(&process_metrics());
        out
    }
}

/// Resident and peak resident memory (VmRSS, VmHWM): the figures the scale test reports for
/// each service, readable by Prometheus too.
fn process_metrics() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    let mut out = String::new();
    for (name, help, field) in [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "VmRSS:",
        ),
        (
            "process_resident_memory_peak_bytes",
            "Peak resident memory size in bytes.",
            "VmHWM:",
        ),
    ] {
        if let Some(value) = kib(field) {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n",
                value * 1024
            ));
        }
    }
    out
}

/// `host:port` of a URL, with the scheme's usual port when it names none (amqp 5672, http 80,
/// https 443).
fn host_port(url: &str) -> Result<String, Error> {
    let error = |reason: &str| Error::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| error(&e.to_string()))?;
    let host = parsed.host_str().ok_or_else(|| error("no host"))?;
    let port = parsed
        .port_or_known_default()
        .or(match parsed.scheme() {
            "amqp" => Some(5672),
            "amqps" => Some(5671),
            _ => None,
        })
        .ok_or_else(|| error("no port"))?;
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    fn any_port() -> Option<SocketAddr> {
        Some("127.0.0.1:0".parse().unwrap())
    }

    #[tokio::test]
    async fn healthz_metrics_and_a_passing_readiness() {
        let mut side = HttpSide::new("test").with_check("always", || async { Ok(()) });
        let counter = Counter::<u64>::default();
        side.registry()
            .register("things", "Things done", counter.clone());
        counter.inc_by(3);
        let side = side.with_text(|| "# TYPE hand_made gauge\nhand_made 7\n".into());
        let addr = side.spawn(any_port()).await.unwrap().unwrap();
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        let (status, metrics) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("drover_test_things_total 3"), "{metrics}");
        assert!(metrics.contains("hand_made 7"), "{metrics}");
        assert!(
            metrics.contains("process_resident_memory_bytes "),
            "{metrics}"
        );
        assert!(!metrics.contains("# EOF"), "{metrics}");
    }

    #[tokio::test]
    async fn an_unreachable_dependency_is_not_ready_and_named() {
        // A port bound then released: nothing listens there.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let side = HttpSide::new("test")
            .with_reachable(
                "rabbitmq",
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            )
            .unwrap()
            .with_check("slow", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            });
        let addr = side.spawn(any_port()).await.unwrap().unwrap();
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("rabbitmq: 127.0.0.1:"), "{body}");
        assert!(body.contains("slow: no answer within"), "{body}");
        // Liveness does not depend on the dependencies.
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn a_reachable_dependency_is_ready() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listening.local_addr().unwrap());
        let side = HttpSide::new("test")
            .with_reachable("opensearch", &url)
            .unwrap();
        let addr = side.spawn(any_port()).await.unwrap().unwrap();
        assert_eq!(get(addr, "/readyz").await.0, 200);
    }

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("amqp://u:p@rabbit/%2f").unwrap(), "rabbit:5672");
        assert_eq!(
            host_port("http://opensearch:9200?prefix=x").unwrap(),
            "opensearch:9200"
        );
        assert_eq!(host_port("https://os").unwrap(), "os:443");
        assert!(host_port("file:.drover/state").is_err());
        assert!(host_port("not a url").is_err());
    }

    #[tokio::test]
    async fn no_address_serves_nothing() {
        assert_eq!(HttpSide::new("test").spawn(None).await.unwrap(), None);
    }
}
