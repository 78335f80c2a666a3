//! `ingest-bench`: events/s through ingest beside a plain `_bulk` loader on the same node, and
//! (with `--outage-s`) the events lost when OpenSearch is stopped in the middle of a run.
//! Prints one JSON object a line per figure; `scripts/bench ingest` runs it.
//!
//! Needs DROVER_AMQP_URL and DROVER_OPENSEARCH_URL. Everything it makes has a prefix of its own
//! and is deleted at the end (the queues expire).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use drover_bus::{AmqpBus, AmqpOptions, Topology};
use drover_ingest::{Ingest, IngestConfig, Stats, synthetic};
use drover_store::OpenSearchOptions;
use drover_store::opensearch::{Client, ItemOutcome, Refresh};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    /// Events per run.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Records per bulk request, for both the loader and ingest.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Also run ingest with OpenSearch stopped this many seconds in the middle (0: no such run).
    #[arg(long, default_value_t = 0)]
    outage_s: u64,
    /// The script that stops and starts the node.
    #[arg(long, default_value = "scripts/opensearch")]
    opensearch_script: PathBuf,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn emit(name: &str, value: f64, unit: &str) {
    println!(
        "{}",
        json!({"name": name, "value": (value * 1000.0).round() / 1000.0, "unit": unit})
    );
}

fn client(prefix: &str) -> anyhow::Result<Client> {
    let mut options = OpenSearchOptions::new(env("DROVER_OPENSEARCH_URL")?);
    options.prefix = prefix.to_owned();
    Ok(Client::new(options)?)
}

/// The plain loader: the same records, `_bulk` after `_bulk`, no broker. Returns docs/s.
async fn plain_bulk(cli: &Cli, run: &str) -> anyhow::Result<f64> {
    let client = client(&format!("{run}-bulk"))?;
    client.ensure_indices().await?;
    let started = Instant::now();
    let mut next = 0;
    while next < cli.events {
        let end = (next + cli.batch_size as u64).min(cli.events);
        let records: Vec<_> = (next..end).map(|i| synthetic::record(run, i)).collect();
        let outcomes = client.bulk_events(&records, Refresh::False).await?;
        if let Some(o) = outcomes.iter().find(|o| **o != ItemOutcome::Indexed) {
            bail!("the plain loader's bulk failed: {o:?}");
        }
        next = end;
    }
    let rate = cli.events as f64 / started.elapsed().as_secs_f64();
    let count = client.count_events().await?;
    client.delete_everything().await?;
    anyhow::ensure!(
        count == cli.events,
        "the plain loader indexed {count} of {}",
        cli.events
    );
    Ok(rate)
}

/// Publishes the records, then runs ingest until all are indexed (stopping OpenSearch for
/// `outage` once a third are in). Returns events/s and the records missing from the index.
async fn through_ingest(
    cli: &Cli,
    run: &str,
    outage: Option<Duration>,
) -> anyhow::Result<(f64, u64)> {
    let client = client(&format!("{run}-ingest"))?;
    client.ensure_indices().await?;
    let topology = Topology::new()
        .with_prefix(format!("{run}-"))
        .with_queue_expiry(Duration::from_secs(900));
    let bus = Arc::new(
        AmqpBus::connect(AmqpOptions::new(env("DROVER_AMQP_URL")?, topology))
            .await
            .context("connecting to RabbitMQ")?,
    );
    synthetic::publish(bus.as_ref(), run, cli.events, 5000).await?;
    eprintln!("ingest-bench: {} events published", cli.events);
    let config = IngestConfig {
        batch_size: cli.batch_size,
        ..IngestConfig::default()
    };
    let ingest = Ingest::new(bus.clone(), Arc::new(client.clone()), config);
    let stats = ingest.stats();
    let started = Instant::now();
    let (events, script) = (cli.events, cli.opensearch_script.clone());
    // Beside ingest, on a task of its own: the outage, and the signal that all is indexed.
    let (finished, all_indexed) = tokio::sync::oneshot::channel();
    let driver = tokio::spawn(async move {
        wait_for(&stats, events / 3).await;
        if let Some(outage) = outage {
            node(&script, "stop").await;
            eprintln!(
                "ingest-bench: OpenSearch stopped for {} s",
                outage.as_secs()
            );
            tokio::time::sleep(outage).await;
            node(&script, "start").await;
        }
        wait_for(&stats, events).await;
        let _ = finished.send(());
    });
    let done = async {
        let _ = all_indexed.await;
    };
    ingest.run(done).await?;
    driver.await?;
    let rate = cli.events as f64 / started.elapsed().as_secs_f64();
    let count = client.count_events().await?;
    client.delete_everything().await?;
    bus.close().await;
    Ok((rate, cli.events.saturating_sub(count)))
}

async fn wait_for(stats: &Stats, indexed: u64) {
    while stats.indexed.load(Ordering::Relaxed) < indexed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node(script: &PathBuf, command: &str) {
    match tokio::process::Command::new(script)
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        other => eprintln!("ingest-bench: {} {command}: {other:?}", script.display()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run = format!("bench-{}", std::process::id());
    let bulk = plain_bulk(&cli, &run).await?;
    let (ingest, _) = through_ingest(&cli, &format!("{run}-a"), None).await?;
    emit("ingest_events_per_s", ingest, "events/s");
    emit("bulk_loader_docs_per_s", bulk, "docs/s");
    emit("ingest_fraction_of_bulk", ingest / bulk, "ratio");
    if cli.outage_s > 0 {
        let outage = Duration::from_secs(cli.outage_s);
        let (_, lost) = through_ingest(&cli, &format!("{run}-b"), Some(outage)).await?;
        emit("ingest_lost_events", lost as f64, "events");
    }
    Ok(())
}
