//! Hollow agents on a real RabbitMQ: 200 agents in one process heartbeat every 200 ms for 10 s
//! while a monitor drains the `monitor.<n>` shards; every beat arrives, soon, and nothing is
//! left queued once they stop. And `drover-agent hollow` answers a task sent to each of its
//! agents and heartbeats for each. `#[ignore]`d: run with `--ignored` and `DROVER_AMQP_URL` set
//! (scripts/test does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_agent::{
    AgentService, HeartbeatMessage, HollowHost, OperationRunner, PluginRegistry, RunnerConfig,
};
use drover_bus::topology::OWNER_HEADER;
use drover_bus::{AmqpBus, AmqpOptions, Bus, ConsumeOptions, Message};
use drover_model::{OperationTask, TaskOutcome};
use drover_proto::codec;
use tokio::sync::mpsc;

mod common;
use common::{Owner, amqp_url, owner_on_rabbitmq};

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");
const AGENTS: usize = 200;
const INTERVAL: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_secs(10);

/// One heartbeat as the monitor saw it: its shard, the beat, how old it was on arrival.
type Seen = (u32, HeartbeatMessage, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn two_hundred_hollow_agents_heartbeat_without_backlog() {
    let url = amqp_url();
    let topology = drover_bus::suite::topology("agent-hollow");
    let connect = || async {
        AmqpBus::connect(AmqpOptions::new(url.clone(), topology.clone()))
            .await
            .expect("connecting to RabbitMQ")
    };
    let monitor_bus = connect().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    for shard in 0..topology.monitor_shards() {
        let options = ConsumeOptions::default().with_prefetch(1000);
        let mut monitor = monitor_bus
            .consume(&topology.monitor_queue_name(shard), options)
            .await
            .unwrap();
        let seen_tx = seen_tx.clone();
        tokio::spawn(async move {
            while let Ok(delivery) = monitor.next().await {
                let beats =
                    codec::decode_heartbeats(&delivery.message.body).expect("a heartbeat body");
                delivery.ack().await.expect("ack");
                for beat in beats {
                    let age = now_ms().saturating_sub(beat.sent_at_ms);
                    if seen_tx.send((shard, beat, age)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(seen_tx);

    let bus: Arc<dyn Bus> = Arc::new(connect().await);
    let work = tempfile::tempdir().unwrap();
    let runner = Arc::new(
        OperationRunner::new(
            RunnerConfig::new(work.path()),
            PluginRegistry::hollow(Duration::ZERO),
            drover_agent::discard_logs(),
        )
        .unwrap(),
    );
    let host = HollowHost::start(bus.clone(), AGENTS, Some(INTERVAL), |queue| {
        AgentService::new(bus.clone(), runner.clone(), queue)
    });
    let mut beats: Vec<Seen> = Vec::new();
    let stop = tokio::time::Instant::now() + RUN;
    while let Ok(Some(one)) = tokio::time::timeout_at(stop, seen.recv()).await {
        beats.push(one);
    }
    drop(host);
    let stopped = Instant::now();
    let at_stop = beats.len();
    // What was still queued or in flight when the beats stopped.
    let mut drained_in = Duration::ZERO;
    while let Ok(Some(one)) = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await {
        beats.push(one);
        drained_in = stopped.elapsed();
    }

    let mut sequences: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut shards: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (shard, beat, _) in &beats {
        sequences
            .entry(beat.agent.clone())
            .or_default()
            .insert(beat.sequence);
        shards.entry(beat.agent.clone()).or_default().insert(*shard);
    }
    // Sequences count from 0, so an agent's highest one says how many beats it sent.
    let sent: u64 = sequences
        .values()
        .map(|s| s.last().map_or(0, |last| last + 1))
        .sum();
    let distinct: usize = sequences.values().map(BTreeSet::len).sum();
    let mut ages: Vec<u64> = beats.iter().map(|(_, _, age)| *age).collect();
    ages.sort_unstable();
    let percentile = |p: usize| ages[(ages.len() * p / 100).min(ages.len() - 1)];
    eprintln!(
        "hollow heartbeats: {AGENTS} agents, {RUN:?} at {INTERVAL:?}: sent {sent}, consumed {} \
         ({} after the stop, drained in {drained_in:?}), age p50 {} ms p99 {} ms max {} ms",
        beats.len(),
        beats.len() - at_stop,
        percentile(50),
        percentile(99),
        ages.last().copied().unwrap_or_default(),
    );

    assert_eq!(sequences.len(), AGENTS, "agents heard from");
    assert_eq!(distinct, beats.len(), "a heartbeat consumed twice");
    let expected = (AGENTS as u64) * (RUN.as_millis() / INTERVAL.as_millis()) as u64;
    assert!(
        sent >= expected * 6 / 10,
        "{sent} beats sent, {expected} expected"
    );
    assert_eq!(beats.len() as u64, sent, "heartbeats lost");
    // No backlog: the monitor kept up, so little was left when the beats stopped.
    assert!(
        drained_in < Duration::from_secs(2),
        "drained in {drained_in:?}"
    );
    assert!(percentile(99) < 1000, "p99 age {} ms", percentile(99));
    for (agent, on) in &shards {
        assert_eq!(on.len(), 1, "{agent} on shards {on:?}");
    }
    let used: BTreeSet<_> = shards.values().flatten().collect();
    assert!(used.len() >= 3, "{AGENTS} agents over only shards {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn the_hollow_command_answers_each_agents_tasks_and_heartbeats_for_each() {
    let Owner {
        url,
        topology,
        bus,
        mut results,
    } = owner_on_rabbitmq("agent-hollow-cmd").await;
    let work = tempfile::tempdir().unwrap();
    // The suite's topology lets unused queues expire; the agents must declare them alike.
    let _host = tokio::process::Command::new(AGENT)
        .args(["hollow", "3", "--amqp-url", &url, "--delay-ms", "50"])
        .args(["--prefix", topology.prefix(), "--queue-expiry-s", "300"])
        .arg("--work-dir")
        .arg(work.path())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    for index in 0..3 {
        let task = OperationTask {
            task_id: format!("t{index}"),
            execution_id: "e1".into(),
            plugin: "script".into(),
            implementation: "never-run.sh".into(),
            ..Default::default()
        };
        let message = Message::new(codec::encode_task(&task))
            .with_id(task.task_id.clone())
            .with_header(OWNER_HEADER, "w1");
        let route = topology.task_to_agent(&drover_agent::hollow_agent_name(index));
        drover_bus::suite::publish_when_routable(&bus, &route, message, Duration::from_millis(100))
            .await;
        let delivery = drover_bus::suite::expect(&mut results).await;
        let result = codec::decode_result(&delivery.message.body).unwrap();
        assert_eq!(result.task_id, task.task_id);
        assert!(
            matches!(result.outcome, TaskOutcome::Succeeded { .. }),
            "{result:?}"
        );
        delivery.ack().await.unwrap();
    }

    let mut heard = BTreeSet::new();
    for shard in 0..topology.monitor_shards() {
        let mut monitor = bus
            .consume(
                &topology.monitor_queue_name(shard),
                ConsumeOptions::default().with_prefetch(1000),
            )
            .await
            .unwrap();
        let poll = Duration::from_millis(100);
        while let Ok(delivery) = tokio::time::timeout(poll, monitor.next()).await {
            let delivery = delivery.unwrap();
            let beats = codec::decode_heartbeats(&delivery.message.body).unwrap();
            heard.extend(beats.into_iter().map(|beat| beat.agent));
            delivery.ack().await.unwrap();
        }
    }
    let expected: BTreeSet<String> = (0..3).map(drover_agent::hollow_agent_name).collect();
    assert_eq!(heard, expected);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
