//! Request counters and latency sums by route, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use warp::http::{Method, StatusCode};

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
}

/// Counts requests by method, route pattern and status.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, &'static str, u16), Series>>,
}

impl Metrics {
    pub fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        took: Duration,
    ) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series
            .entry((method.to_string(), route, status.as_u16()))
            .or_default();
        s.count += 1;
        s.seconds += took.as_secs_f64();
    }

    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from(
            "# HELP drover_gateway_requests_total Requests answered, by method, route and status.\n\
             # TYPE drover_gateway_requests_total counter\n",
        );
        for ((method, route, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "drover_gateway_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str(
            "# HELP drover_gateway_request_seconds_sum Time spent answering, by method, route and status.\n\
             # TYPE drover_gateway_request_seconds_sum counter\n",
        );
        for ((method, route, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "drover_gateway_request_seconds_sum{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}",
                s.seconds
            );
        }
        out
    }
}
