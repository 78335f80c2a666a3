//! The monitor's Prometheus metrics, in the text exposition format on `/metrics`. A handful of
//! atomics written by hand: counters (Prometheus derives heartbeats/s with `rate()`), gauges,
//! and one histogram of detection latency.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the detection latency buckets, in seconds: dense around the default
/// detector's 0.5–0.8 s, then coarse up to the mass-suspicion hold.
const DETECTION_BUCKETS: [f64; 11] = [0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 5.0, 10.0];

/// Counters and gauges, shared by the monitor's tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    pub heartbeats: AtomicU64,
    pub malformed: AtomicU64,
    pub failures: AtomicU64,
    pub recoveries: AtomicU64,
    pub heals_started: AtomicU64,
    /// Failures of instances no `host_failure` policy covers.
    pub heals_skipped: AtomicU64,
    pub scales_started: AtomicU64,
    pub agents_alive: AtomicU64,
    pub agents_failed: AtomicU64,
    pub shards_held: AtomicU64,
    pub heals_running: AtomicU64,
    pub heals_queued: AtomicU64,
    detection_buckets: [AtomicU64; DETECTION_BUCKETS.len()],
    detection_count: AtomicU64,
    detection_sum_micros: AtomicU64,
}

impl Metrics {
    /// One confirmed failure, `silent` after the agent's last heartbeat.
    pub fn observe_detection(&self, silent: Duration) {
        let seconds = silent.as_secs_f64();
        for (bound, bucket) in DETECTION_BUCKETS.iter().zip(&self.detection_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.detection_count.fetch_add(1, Ordering::Relaxed);
        self.detection_sum_micros.fetch_add(
            u64::try_from(silent.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "drover_monitor_heartbeats_total",
            "counter",
            "Heartbeats consumed.",
            get(&self.heartbeats),
        );
        metric(
            "drover_monitor_heartbeats_malformed_total",
            "counter",
            "Heartbeat bodies that could not be decoded (dead-lettered).",
            get(&self.malformed),
        );
        metric(
            "drover_monitor_agent_failures_total",
            "counter",
            "Confirmed agent failures.",
            get(&self.failures),
        );
        metric(
            "drover_monitor_agent_recoveries_total",
            "counter",
            "Failed agents heard from again.",
            get(&self.recoveries),
        );
        metric(
            "drover_monitor_heals_started_total",
            "counter",
            "Heal executions started.",
            get(&self.heals_started),
        );
        metric(
            "drover_monitor_heals_skipped_total",
            "counter",
            "Failed instances not healed: the blueprint's host_failure policies leave them out.",
            get(&self.heals_skipped),
        );
        metric(
            "drover_monitor_scales_started_total",
            "counter",
            "Scale executions started by threshold policies.",
            get(&self.scales_started),
        );
        metric(
            "drover_monitor_agents_alive",
            "gauge",
            "Agents tracked and alive.",
            get(&self.agents_alive),
        );
        metric(
            "drover_monitor_agents_failed",
            "gauge",
            "Agents tracked and failed.",
            get(&self.agents_failed),
        );
        metric(
            "drover_monitor_shards_held",
            "gauge",
            "Heartbeat shards this replica consumes.",
            get(&self.shards_held),
        );
        metric(
            "drover_monitor_heals_running",
            "gauge",
            "Heal executions started and not ended.",
            get(&self.heals_running),
        );
        metric(
            "drover_monitor_heals_queued",
            "gauge",
            "Confirmed failures waiting for their heal to start.",
            get(&self.heals_queued),
        );
        let name = "drover_monitor_detection_seconds";
        let _ = write!(
            out,
            "# HELP {name} Silence of an agent when its failure was confirmed.\n\
             # TYPE {name} histogram\n"
        );
        for (bound, bucket) in DETECTION_BUCKETS.iter().zip(&self.detection_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.detection_count);
        let sum = get(&self.detection_sum_micros) as f64 / 1e6;
        let _ = write!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_fill_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.observe_detection(Duration::from_millis(550));
        metrics.observe_detection(Duration::from_millis(750));
        metrics.observe_detection(Duration::from_secs(3));
        metrics.heartbeats.fetch_add(42, Ordering::Relaxed);
        let text = metrics.render();
        for line in [
            "drover_monitor_heartbeats_total 42",
            "drover_monitor_detection_seconds_bucket{le=\"0.5\"} 0",
            "drover_monitor_detection_seconds_bucket{le=\"0.6\"} 1",
            "drover_monitor_detection_seconds_bucket{le=\"0.8\"} 2",
            "drover_monitor_detection_seconds_bucket{le=\"5\"} 3",
            "drover_monitor_detection_seconds_bucket{le=\"+Inf\"} 3",
            "drover_monitor_detection_seconds_sum 4.3",
            "drover_monitor_detection_seconds_count 3",
            "# TYPE drover_monitor_agents_alive gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn served_on_slash_metrics() {
        let metrics = Arc::new(Metrics::default());
        metrics.failures.fetch_add(2, Ordering::Relaxed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, metrics));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        server.abort();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains("drover_monitor_agent_failures_total 2"),
            "{response}"
        );
    }
}
