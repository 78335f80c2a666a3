//! Measures the broker's ceiling and the bus against it, on the same machine and broker.
//!
//! `bus-ceiling [--messages N] [--size BYTES] [--window N] [--rounds N]` with `DROVER_AMQP_URL`
//! set. Both cases move N persistent messages through one durable queue on one connection:
//! published with publisher confirms (at most `window` unconfirmed at once), consumed
//! concurrently with prefetch `window` and one ack per message. The rate is N over the time
//! from the first publish to the last delivery. The ceiling is a plain lapin
//! publisher/consumer pair; the bus case is `AmqpBus` with drover's topology. Prints one JSON
//! object per line: `broker_ceiling_msgs_per_s`, `bus_msgs_per_s`, `bus_fraction_of_ceiling`
//! (the best of `rounds` for each).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use drover_bus::{AmqpBus, AmqpOptions, Bus, ConsumeOptions, Message, Topology};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct Settings {
    url: String,
    messages: usize,
    size: usize,
    window: usize,
    rounds: usize,
}

fn settings() -> Result<Settings, String> {
    let url = std::env::var("DROVER_AMQP_URL")
        .map_err(|_| "DROVER_AMQP_URL is not set (scripts/rabbitmq url prints it)".to_string())?;
    let mut settings = Settings {
        url,
        messages: 50_000,
        size: 256,
        window: 1_000,
        rounds: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--messages" => settings.messages = value.max(1),
            "--size" => settings.size = value,
            "--window" => settings.window = value.clamp(1, usize::from(u16::MAX)),
            "--rounds" => settings.rounds = value.max(1),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(settings)
}

#[tokio::main]
async fn main() {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bus-ceiling: {error}");
            std::process::exit(2);
        }
    };
    let mut ceiling: f64 = 0.0;
    let mut bus: f64 = 0.0;
    for round in 0..settings.rounds {
        let c = run_or_exit("ceiling", plain_lapin(&settings, round).await);
        let b = run_or_exit("bus", amqp_bus(&settings, round).await);
        eprintln!("round {round}: ceiling {c:.0} msgs/s, bus {b:.0} msgs/s");
        ceiling = ceiling.max(c);
        bus = bus.max(b);
    }
    let reference = format!(
        "\"messages\": {}, \"size_bytes\": {}, \"window\": {}, \"rounds\": {}",
        settings.messages, settings.size, settings.window, settings.rounds
    );
    println!(
        "{{\"name\": \"broker_ceiling_msgs_per_s\", \"value\": {ceiling:.0}, \"unit\": \"msgs/s\", \
         \"what\": \"plain lapin publisher (confirms) and consumer (acks), persistent, one durable queue\", {reference}}}"
    );
    println!(
        "{{\"name\": \"bus_msgs_per_s\", \"value\": {bus:.0}, \"unit\": \"msgs/s\", \
         \"what\": \"AmqpBus publish (confirms) and consume (acks), persistent, the central queue\", {reference}}}"
    );
    println!(
        "{{\"name\": \"bus_fraction_of_ceiling\", \"value\": {:.3}, \"unit\": \"ratio\", \"target\": 0.5, {reference}}}",
        bus / ceiling
    );
}

fn run_or_exit(case: &str, result: Result<f64, String>) -> f64 {
    result.unwrap_or_else(|error| {
        eprintln!("bus-ceiling: {case}: {error}");
        std::process::exit(1);
    })
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

/// The broker's ceiling: lapin alone, nothing of drover.
async fn plain_lapin(settings: &Settings, round: usize) -> Result<f64, String> {
    let text = |e: lapin::Error| e.to_string();
    let connection = Connection::connect(&settings.url, ConnectionProperties::default())
        .await
        .map_err(text)?;
    let queue = format!("bench.ceiling.{}.{round}", std::process::id());
    let publisher = connection.create_channel().await.map_err(text)?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    publisher
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await
        .map_err(text)?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(text)?;
    let consumer_channel = connection.create_channel().await.map_err(text)?;
    let prefetch = u16::try_from(settings.window).unwrap_or(u16::MAX);
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(text)?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(text)?;
    let messages = settings.messages;
    let consuming = tokio::spawn(async move {
        for _ in 0..messages {
            let delivery = consumer
                .next()
                .await
                .ok_or("consumer ended")?
                .map_err(|e| e.to_string())?;
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(Instant::now())
    });
    let body = vec![b'x'; settings.size];
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(settings.window);
    for _ in 0..settings.messages {
        if pending.len() == settings.window
            && let Some(confirm) = pending.pop_front()
        {
            let confirm: lapin::PublisherConfirm = confirm;
            confirm.await.map_err(text)?;
        }
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(text)?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        confirm.await.map_err(text)?;
    }
    let finished = consuming.await.map_err(|e| e.to_string())??;
    let _closed = connection.close(200, "done".into()).await;
    Ok(rate(settings.messages, finished - started))
}

/// The bus: the same traffic through `AmqpBus`.
async fn amqp_bus(settings: &Settings, round: usize) -> Result<f64, String> {
    let text = |e: drover_bus::BusError| e.to_string();
    let topology = Topology::new()
        .with_prefix(format!("bench.bus.{}.{round}.", std::process::id()))
        .with_queue_expiry(Duration::from_secs(60));
    let bus = AmqpBus::connect(AmqpOptions::new(settings.url.clone(), topology.clone()))
        .await
        .map_err(text)?;
    let prefetch = u16::try_from(settings.window).unwrap_or(u16::MAX);
    let mut consumer = bus
        .consume(
            &topology.central_queue_name(),
            ConsumeOptions::default().with_prefetch(prefetch),
        )
        .await
        .map_err(text)?;
    let messages = settings.messages;
    let consuming = tokio::spawn(async move {
        for _ in 0..messages {
            consumer
                .next()
                .await
                .map_err(|e| e.to_string())?
                .ack()
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(Instant::now())
    });
    let body = bytes::Bytes::from(vec![b'x'; settings.size]);
    let route = topology.task_to_central();
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(settings.window);
    for i in 0..settings.messages {
        if pending.len() == settings.window
            && let Some(confirm) = pending.pop_front()
        {
            let confirm: drover_bus::Confirm = confirm;
            confirm.await.map_err(text)?;
        }
        let message = Message::new(body.clone()).with_id(i.to_string());
        pending.push_back(bus.publish(&route, message).await.map_err(text)?);
    }
    for confirm in pending {
        confirm.await.map_err(text)?;
    }
    let finished = consuming.await.map_err(|e| e.to_string())??;
    bus.close().await;
    Ok(rate(settings.messages, finished - started))
}
