//! The failure drill on a real RabbitMQ, on a machine under load: 1,000 hollow agents heartbeat
//! every 200 ms while two threads spin beside them (as many as this machine has cores), 10 of
//! the agents stop at a known moment, and for two minutes the monitor is watched. Every stopped
//! agent is detected, no other agent is reported failed, and one heal is started per stopped
//! agent. Detection latency is printed, not asserted (`scripts/bench monitor` reports it).
//! `#[ignore]`d: run with `--release --ignored` and `DROVER_AMQP_URL` set, as scripts/test does
//! (a debug build cannot keep up with 5,000 heartbeats/s on 2 cores).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_monitor::drill::{self, DrillConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and a release build: cargo test --release -p drover-monitor --test hollow_amqp -- --ignored, DROVER_AMQP_URL set (scripts/test does)"]
async fn one_percent_of_a_thousand_hollow_agents_die_and_each_is_detected_and_healed_once() {
    let url = std::env::var("DROVER_AMQP_URL").expect(
        "DROVER_AMQP_URL is not set: start RabbitMQ with `scripts/rabbitmq start` and set \
         DROVER_AMQP_URL=$(scripts/rabbitmq url)",
    );
    let topology = drover_bus::suite::topology("monitor-drill");
    let config = DrillConfig {
        observe: Duration::from_secs(120),
        ..DrillConfig::new(1000, 10)
    };
    let load = Load::spin(2);
    let report = drill::run(&url, topology, config)
        .await
        .expect("the drill runs");
    drop(load);
    let latencies = report.latencies();
    eprintln!(
        "monitor drill: {} agents, {} heartbeats consumed, detection latencies {latencies:?}, \
         p50 {:?} p99 {:?}",
        report.agents,
        report.heartbeats,
        report.percentile(50.0),
        report.percentile(99.0),
    );
    assert_eq!(report.killed.len(), 10);
    assert!(
        report.missed().is_empty(),
        "not detected: {:?}",
        report.missed()
    );
    assert!(
        report.false_positives.is_empty(),
        "false positives: {:?}",
        report.false_positives
    );
    let mut healed: Vec<&str> = report.heals.iter().map(|(i, _)| i.as_str()).collect();
    healed.sort_unstable();
    let killed: Vec<&str> = report.killed.keys().map(String::as_str).collect();
    assert_eq!(healed, killed, "one heal per stopped agent");
}

/// Threads that keep a core busy each until dropped: the load the monitor must not mistake
/// for dead agents.
struct Load {
    running: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn spin(threads: usize) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let threads = (0..threads)
            .map(|_| {
                let running = running.clone();
                std::thread::spawn(move || {
                    let mut turns = 0u64;
                    while running.load(Ordering::Relaxed) {
                        turns = std::hint::black_box(turns.wrapping_add(1));
                    }
                    turns
                })
            })
            .collect();
        Load { running, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _turns = thread.join();
        }
    }
}
