//! `drover-ingest`: logs and events from RabbitMQ's `ingest` queue into OpenSearch, in bulk.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_bus::{AmqpBus, AmqpOptions, Topology};
use drover_ingest::{Ingest, IngestConfig};
use drover_store::OpenSearchOptions;
use drover_store::opensearch::Client;

#[derive(Parser)]
#[command(
    name = "drover-ingest",
    version,
    about = "Indexes drover's logs and events"
)]
struct Cli {
    /// RabbitMQ's URL.
    #[arg(long, env = "DROVER_AMQP_URL")]
    amqp_url: String,
    /// The bus topology's name prefix (tests share a broker under different prefixes).
    #[arg(long, default_value = "")]
    bus_prefix: String,
    /// OpenSearch: http(s)://HOST:PORT[?prefix=P&retention_days=N].
    #[arg(long, env = "DROVER_OPENSEARCH_URL")]
    opensearch_url: String,
    /// Records per bulk request, at most.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// A batch goes out at most this many milliseconds after its first record.
    #[arg(long, default_value_t = 200)]
    batch_wait_ms: u64,
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
    let topology = Topology::new().with_prefix(cli.bus_prefix);
    let bus = AmqpBus::connect(AmqpOptions::new(cli.amqp_url, topology))
        .await
        .context("connecting to RabbitMQ")?;
    let config = IngestConfig {
        batch_size: cli.batch_size,
        batch_wait: Duration::from_millis(cli.batch_wait_ms),
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
