//! `drover-agent consume` on a real RabbitMQ: a script operation sent to the agent's queue is
//! run (the binary is its own `ctx`) and answered to the owner's results queue; a malformed
//! task is dead-lettered with a reason and the agent goes on. `#[ignore]`d: run with
//! `--ignored` and `DROVER_AMQP_URL` set (scripts/test does).

use std::time::Duration;

use drover_bus::topology::{OWNER_HEADER, REASON_HEADER};
use drover_bus::{Bus, ConsumeOptions, Message};
use drover_model::{OperationTask, TaskNode, TaskOutcome};
use drover_proto::codec;
use serde_json::json;

mod common;
use common::{Owner, owner_on_rabbitmq};

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run with --ignored and DROVER_AMQP_URL set (scripts/test does)"]
async fn consume_runs_tasks_from_rabbitmq_and_dead_letters_malformed_ones() {
    let Owner {
        url,
        topology,
        bus,
        mut results,
    } = owner_on_rabbitmq("agent-consume").await;
    let mut dead = bus
        .consume(
            &topology.dead_letter_queue_name(),
            ConsumeOptions::default(),
        )
        .await
        .unwrap();

    let blueprint = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        blueprint.path().join("configure.sh"),
        "ctx instance runtime-properties consumed \"$from\"\n",
    )
    .unwrap();
    // The suite's topology lets unused queues expire; the agent must declare them alike.
    let _agent = tokio::process::Command::new(AGENT)
        .args(["consume", "--amqp-url", &url, "--queue", "web_1"])
        .args(["--prefix", topology.prefix(), "--queue-expiry-s", "300"])
        .arg("--work-dir")
        .arg(work.path())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let task = OperationTask {
        task_id: "t1".into(),
        execution_id: "e1".into(),
        plugin: "script".into(),
        implementation: "configure.sh".into(),
        inputs: json!({"from": "rabbitmq"}).as_object().cloned().unwrap(),
        blueprint_dir: Some(blueprint.path().display().to_string()),
        node: TaskNode {
            node_instance_id: "web_1".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let message = Message::new(codec::encode_task(&task))
        .with_id("t1")
        .with_header(OWNER_HEADER, "w1");
    let route = topology.task_to_agent("web_1");
    drover_bus::suite::publish_when_routable(&bus, &route, message, Duration::from_millis(100))
        .await;

    let delivery = drover_bus::suite::expect(&mut results).await;
    assert_eq!(delivery.message.id.as_deref(), Some("t1"));
    let result = codec::decode_result(&delivery.message.body).unwrap();
    assert!(
        matches!(result.outcome, TaskOutcome::Succeeded { .. }),
        "{result:?}"
    );
    assert_eq!(
        result.runtime_properties["web_1"]["consumed"],
        json!("rabbitmq")
    );
    delivery.ack().await.unwrap();

    let malformed = Message::new("not a task").with_header(OWNER_HEADER, "w1");
    bus.publish(&route, malformed).await.unwrap().await.unwrap();
    let delivery = drover_bus::suite::expect(&mut dead).await;
    assert!(
        delivery.message.headers[REASON_HEADER]
            .starts_with("malformed task: not a drover bus body"),
        "{:?}",
        delivery.message.headers
    );
    delivery.ack().await.unwrap();
    // The envelope's version field (1) set to 2: a body from a newer drover.
    let mut body = codec::encode_task(&task).to_vec();
    body[1] = 0x02;
    let future = Message::new(body).with_header(OWNER_HEADER, "w1");
    bus.publish(&route, future).await.unwrap().await.unwrap();
    let delivery = drover_bus::suite::expect(&mut dead).await;
    assert_eq!(
        delivery.message.headers[REASON_HEADER],
        "malformed task: body version 2 is unknown (this build reads version 1)"
    );
    delivery.ack().await.unwrap();

    // Still answering; the repeated task id gets the first result (the script is not run
    // again).
    let again = Message::new(codec::encode_task(&task))
        .with_id("t1")
        .with_header(OWNER_HEADER, "w1");
    bus.publish(&route, again).await.unwrap().await.unwrap();
    let delivery = drover_bus::suite::expect(&mut results).await;
    let repeat = codec::decode_result(&delivery.message.body).unwrap();
    assert_eq!(repeat, result);
    delivery.ack().await.unwrap();
}
