//! `drover-ingest`: logs and events from RabbitMQ's `ingest` queue into OpenSearch, in bulk.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_ingest::{Ingest, IngestConfig};
use drover_store::OpenSearchOptions;
use drover_store::opensearch::Client;
use drover_telemetry::{BusArgs, HttpArgs, HttpSide};

#[derive(Parser)]
#[command(
    name = "drover-ingest",
    version,
    about = "Indexes drover's logs and events"
)]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    /// OpenSearch: http(s)://HOST:PORT[?prefix=P&retention_days=N].
    #[arg(long, env = "DROVER_OPENSEARCH_URL")]
    opensearch_url: String,
    /// Records per bulk request, at most.
    #[arg(long, env = "DROVER_INGEST_BATCH_SIZE", default_value_t = 1000)]
    batch_size: usize,
    /// A batch goes out at most this many milliseconds after its first record.
    #[arg(long, env = "DROVER_INGEST_BATCH_WAIT_MS", default_value_t = 200)]
    batch_wait_ms: u64,
    /// Messages delivered and not yet acknowledged, at most (a message holds up to 100
    /// records): bounds the records held in memory.
    #[arg(long, env = "DROVER_INGEST_PREFETCH", default_value_t = 256)]
    prefetch: u16,
    #[command(flatten)]
    http: HttpArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("info");
    let cli = Cli::parse();
    anyhow::ensure!(cli.batch_size > 0, "--batch-size must be at least 1");
    let client = Client::new(OpenSearchOptions::from_url(&cli.opensearch_url)?)?;
    client
        .ensure_indices()
        .await
        .context("putting the index templates on OpenSearch")?;
    let bus = cli
        .bus
        .connect(cli.bus.topology(), "drover-ingest")
        .await
        .context("connecting to RabbitMQ")?;
    HttpSide::new("ingest")
        .with_reachable("rabbitmq", &cli.bus.amqp_url)?
        .with_reachable("opensearch", &cli.opensearch_url)?
        .spawn(cli.http.http_listen)
        .await?;
    let config = IngestConfig {
        batch_size: cli.batch_size,
        batch_wait: Duration::from_millis(cli.batch_wait_ms),
        prefetch: cli.prefetch,
        ..IngestConfig::default()
    };
    let ingest = Ingest::new(Arc::new(bus), Arc::new(client.clone()), config);
    let retention = tokio::spawn(async move {
        // Event indices age by the day: checking hourly deletes each within an hour of expiry.
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            let today = time::OffsetDateTime::now_utc().date();
            if let Err(error) = client.apply_retention(today).await {
                tracing::warn!(%error, "applying the event retention failed");
            }
        }
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping: finishing the batches in hand");
    };
    let result = ingest.run(shutdown).await;
    retention.abort();
    result.context("ingest stopped")
}
