//! The central agent across RabbitMQ restarts (the chaos run's stall: after a restart the
//! central agent held a full prefetch of unacknowledged tasks and answered nothing more).
//!
//! The central agent answers a stream of tasks that a test owner keeps topped up, as a workflow
//! replica does, while the broker is restarted twice at random moments. Every task must be
//! answered, and the agent must never go a reconnect's time without answering while tasks
//! wait. Two agents: an [`AgentService`] in this process set up as `drover-agent consume --queue
//! central` sets itself up (its own connection, heartbeats, task events, prefetch 16,
//! operations run through the runner, counted: none may run twice), and the binary itself as
//! deploy/stack starts it for the scale and chaos runs (`--hollow`), its log shown on failure.
//!
//! It restarts the broker with `scripts/rabbitmq restart` (DROVER_RABBITMQ_PORT and
//! DROVER_RABBITMQ_DIR must name the node DROVER_AMQP_URL points at), so it lives in a test
//! binary of its own (cargo runs test binaries one after another), and its two tests take
//! turns.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_agent::{
    AgentQueue, AgentService, Heartbeat, OperationEnv, OperationRunner, Plugin, PluginFuture,
    PluginOutput, PluginRegistry, RunnerConfig, Shipper, ShipperConfig,
};
use drover_bus::topology::OWNER_HEADER;
use drover_bus::{AmqpBus, AmqpOptions, Bus, BusError, Message};
use drover_model::{OperationTask, TaskNode, TaskOutcome};
use drover_proto::codec;
use serde_json::Value;

use common::{OWNER, Owner, owner_on_rabbitmq};

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/rabbitmq");

/// Tasks sent after the last restart, so that the stream spans every restart.
const TAIL: usize = 1000;
/// Tasks the owner keeps sent and unanswered: more than the prefetch, so some always wait in
/// the queue (the chaos run had 241 waiting).
const WINDOW: usize = 64;
/// The central agent's prefetch and concurrency (drover-agent's default).
const PREFETCH: u16 = 16;
/// Longer than the agent needs to reconnect once the broker is back: answering nothing for
/// this long while tasks wait is the stall.
const STALL: Duration = Duration::from_secs(60);
const RESTARTS: usize = 2;

/// One broker, restarted by each test: they take turns.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and restarts it: run with --ignored, DROVER_AMQP_URL, DROVER_RABBITMQ_PORT and DROVER_RABBITMQ_DIR set"]
async fn central_agent_answers_every_task_across_broker_restarts() {
    let _turn = BROKER.lock().await;
    // A hang is a failure, not a stuck CI run.
    tokio::time::timeout(Duration::from_secs(900), in_process())
        .await
        .expect("the restart test finished within 900 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and restarts it: run with --ignored, DROVER_AMQP_URL, DROVER_RABBITMQ_PORT and DROVER_RABBITMQ_DIR set"]
async fn the_central_agent_binary_answers_every_task_across_broker_restarts() {
    let _turn = BROKER.lock().await;
    tokio::time::timeout(Duration::from_secs(900), binary())
        .await
        .expect("the restart test finished within 900 s");
}

/// Counts the operations it really runs; each takes a few milliseconds.
struct Counting(Arc<Mutex<HashMap<String, u32>>>);

impl Plugin for Counting {
    fn run<'a>(&'a self, task: &'a OperationTask, _: &'a OperationEnv) -> PluginFuture<'a> {
        Box::pin(async move {
            let pause = task.task_id.len() as u64 % 4 * 3;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let mut runs = self.0.lock().unwrap();
            *runs.entry(task.task_id.clone()).or_default() += 1;
            PluginOutput::succeeded(Value::Null)
        })
    }
}

fn task(i: usize) -> Message {
    let id = format!("t{i}");
    let task = OperationTask {
        task_id: id.clone(),
        execution_id: "e1".into(),
        deployment_id: "d1".into(),
        operation: "cloudify.interfaces.lifecycle.create".into(),
        plugin: "peer".into(),
        implementation: "peer.peer_ops.noop".into(),
        node: TaskNode {
            node_instance_id: format!("app_{i}"),
            node_id: "app".into(),
            ..TaskNode::default()
        },
        ..OperationTask::default()
    };
    Message::new(codec::encode_task(&task))
        .with_id(id)
        .with_header(OWNER_HEADER, OWNER)
}

/// What the broker says of the central queue: ready, unacknowledged, consumers.
fn queue_state(script: &Path, queue: &str) -> String {
    let out = Command::new(script)
        .args([
            "ctl",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.starts_with(queue))
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("rabbitmqctl failed: {e}"),
    }
}

/// The agent under test.
enum Agent {
    InProcess(tokio::task::JoinHandle<Result<(), BusError>>),
    /// The binary, its stderr in a file.
    Binary(Box<tokio::process::Child>, std::path::PathBuf),
}

impl Agent {
    /// Why the agent is no longer running, if it is not.
    fn stopped(&mut self) -> Option<String> {
        match self {
            Agent::InProcess(task) => task.is_finished().then(|| "its task ended".to_owned()),
            Agent::Binary(child, _) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!("exited: {status}")),
                Err(e) => Some(format!("cannot tell: {e}")),
            },
        }
    }

    /// The last lines the binary logged.
    fn log(&self) -> String {
        let Agent::Binary(_, log) = self else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

async fn in_process() {
    let owner = owner_on_rabbitmq("agent-restart").await;
    // The central agent, as `drover-agent consume --queue central` sets it up.
    let agent_bus: Arc<dyn Bus> = Arc::new(
        AmqpBus::connect(
            AmqpOptions::new(owner.url.clone(), owner.topology.clone())
                .with_connection_name("central agent"),
        )
        .await
        .expect("the agent connects"),
    );
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let mut plugins = PluginRegistry::empty();
    plugins.set_fallback(Arc::new(Counting(runs.clone())));
    let work = tempfile::tempdir().unwrap();
    let _heartbeat = Heartbeat::start(agent_bus.clone(), "central", Duration::from_millis(200));
    let (shipper, _shipping) =
        Shipper::start(agent_bus.clone(), "central", ShipperConfig::default());
    let runner = OperationRunner::new(RunnerConfig::new(work.path()), plugins, shipper.log_sink())
        .expect("runner");
    let service = AgentService::new(agent_bus, Arc::new(runner), AgentQueue::Central)
        .with_concurrency(PREFETCH)
        .with_events(shipper);
    let mut agent = Agent::InProcess(tokio::spawn(service.run()));

    let tasks = restarts_mid_stream(owner, &mut agent).await;
    let runs = std::mem::take(&mut *runs.lock().unwrap());
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "operations run more than once: {twice:?}");
    assert_eq!(runs.len(), tasks);
    if let Agent::InProcess(task) = agent {
        task.abort();
    }
}

async fn binary() {
    let owner = owner_on_rabbitmq("agent-restart-bin").await;
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("agent.log");
    // As deploy/stack starts it for the scale and chaos runs; the suite's topology lets unused
    // queues expire, so the agent declares them alike.
    let child = tokio::process::Command::new(AGENT)
        .args(["consume", "--amqp-url", &owner.url, "--queue", "central"])
        .args([
            "--prefix",
            owner.topology.prefix(),
            "--queue-expiry-s",
            "300",
        ])
        .arg("--hollow")
        .arg("--work-dir")
        .arg(work.path())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut agent = Agent::Binary(Box::new(child), log);
    restarts_mid_stream(owner, &mut agent).await;
}

/// Streams tasks to the central queue while the broker restarts, until every one is answered;
/// returns how many there were.
async fn restarts_mid_stream(owner: Owner, agent: &mut Agent) -> usize {
    let Owner {
        topology,
        bus,
        mut results,
        ..
    } = owner;
    let central = topology.central_queue_name();
    // The broker restarted at random moments, and whether it is up at the moment.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let restarting = Arc::new(AtomicBool::new(false));
    let chaos = {
        let restarting = restarting.clone();
        tokio::spawn(async move {
            let mut outages = Vec::new();
            for n in 0..RESTARTS {
                let pause = Duration::from_millis(2_000 + u64::from(seed >> (n * 8)) % 6_000);
                tokio::time::sleep(pause).await;
                restarting.store(true, Ordering::Release);
                let began = Instant::now();
                let status = tokio::task::spawn_blocking(move || {
                    Command::new(SCRIPT).arg("restart").status()
                })
                .await
                .expect("restart thread");
                restarting.store(false, Ordering::Release);
                assert!(
                    status.expect("running scripts/rabbitmq").success(),
                    "scripts/rabbitmq restart failed"
                );
                outages.push((pause, began.elapsed()));
            }
            outages
        })
    };

    let route = topology.task_to_central();
    let mut sent = 0;
    // How many tasks the stream has: known once the restarts are over.
    let mut tasks = None;
    let mut answers: HashMap<String, TaskOutcome> = HashMap::new();
    let mut repeats = 0;
    let mut progress = Instant::now();
    while tasks.is_none_or(|tasks| answers.len() < tasks) {
        if tasks.is_none() && chaos.is_finished() {
            tasks = Some(sent + TAIL);
        }
        // Topped up to the window, as a replica sends tasks as results come back.
        while tasks.is_none_or(|tasks| sent < tasks) && sent - answers.len() < WINDOW {
            bus.publish(&route, task(sent))
                .await
                .expect("publish a task")
                .await
                .expect("a task's publish is confirmed, across the restarts");
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(1), results.next()).await {
            Ok(delivery) => {
                let delivery = delivery.expect("consuming results across the restarts");
                let result = codec::decode_result(&delivery.message.body).expect("a result");
                // A repeat answer to a redelivered task must be the first one.
                match answers.get(&result.task_id) {
                    Some(first) => {
                        assert_eq!(first, &result.outcome, "{}", result.task_id);
                        repeats += 1;
                    }
                    None => {
                        answers.insert(result.task_id.clone(), result.outcome);
                        progress = Instant::now();
                    }
                }
                // An ack lost with the old connection is no loss: the result comes again.
                let _stale_after_restart = delivery.ack().await;
            }
            Err(_quiet) => {
                if let Some(why) = agent.stopped() {
                    panic!("the agent stopped ({why}); its log:\n{}", agent.log());
                }
                if restarting.load(Ordering::Acquire) {
                    progress = Instant::now();
                }
                assert!(
                    progress.elapsed() < STALL,
                    "the agent answered nothing for {STALL:?} with the broker up: {} answered, \
                     {sent} sent; broker: {}; the agent's log:\n{}",
                    answers.len(),
                    queue_state(Path::new(SCRIPT), &central),
                    agent.log(),
                );
            }
        }
    }
    let outages = chaos.await.expect("the restarts");
    let tasks = answers.len();
    assert!(
        answers
            .values()
            .all(|outcome| matches!(outcome, TaskOutcome::Succeeded { .. }))
    );
    println!(
        "{tasks} tasks answered across restarts (pause before, outage) {outages:?}; \
         {repeats} repeated answers"
    );
    bus.close().await;
    tasks
}
