//! `drover-agent consume` heartbeats with the identity the process cloud gives it (its
//! `DROVER_DEPLOYMENT_ID` and `DROVER_NODE_INSTANCE_ID`) and the host's load, so that the
//! monitor heals the right instance and its threshold policies see the load. `#[ignore]`d: run
//! with `--ignored` and `DROVER_AMQP_URL` set (scripts/test does).

use std::time::{Duration, Instant};

use drover_bus::{Bus, ConsumeOptions};
use drover_proto::codec;

mod common;
use common::{Owner, owner_on_rabbitmq};

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn consume_heartbeats_carry_the_agents_instance_and_load() {
    let Owner {
        url,
        topology,
        bus,
        results: _results,
    } = owner_on_rabbitmq("agent-identity").await;
    let work = tempfile::tempdir().unwrap();
    // The suite's topology lets unused queues expire; the agent must declare them alike.
    let _agent = tokio::process::Command::new(AGENT)
        .args(["consume", "--amqp-url", &url, "--queue", "host_1a2b"])
        .args(["--prefix", topology.prefix(), "--queue-expiry-s", "300"])
        .arg("--work-dir")
        .arg(work.path())
        .env("DROVER_DEPLOYMENT_ID", "d1")
        .env("DROVER_NODE_INSTANCE_ID", "host_1a2b")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut monitors = Vec::new();
    for shard in 0..topology.monitor_shards() {
        let queue = topology.monitor_queue_name(shard);
        let options = ConsumeOptions::default().with_prefetch(100);
        monitors.push(bus.consume(&queue, options).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let beat = 'heard: loop {
        assert!(Instant::now() < deadline, "no heartbeat within 30 s");
        for monitor in &mut monitors {
            let poll = Duration::from_millis(100);
            while let Ok(delivery) = tokio::time::timeout(poll, monitor.next()).await {
                let delivery = delivery.unwrap();
                let beat = codec::decode_heartbeat(&delivery.message.body).unwrap();
                delivery.ack().await.unwrap();
                if beat.agent == "host_1a2b" {
                    break 'heard beat;
                }
            }
        }
    };
    assert_eq!(beat.deployment_id, "d1");
    assert_eq!(beat.node_instance_id, "host_1a2b");
    let load = beat.metrics.get("load").copied();
    assert!(load.is_some_and(|load| load >= 0.0), "{:?}", beat.metrics);
}
