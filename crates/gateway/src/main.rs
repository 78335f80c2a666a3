//! `drover-gateway`: the REST gateway (Cloudify REST API v3.1) over a state store, an event
//! index and the workflow service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use drover_gateway::{Config, FileRegistry, Gateway, GrpcWorkflows, LocalWorkflows, Workflows};
use drover_store::EventIndex;

#[derive(Parser)]
#[command(
    name = "drover-gateway",
    about = "drover's REST gateway (Cloudify REST API v3.1)"
)]
struct Args {
    /// Address to listen on (HTTP; nginx terminates TLS in front).
    #[arg(long, env = "DROVER_GATEWAY_LISTEN", default_value = "127.0.0.1:8100")]
    listen: SocketAddr,
    /// State store: file:DIR (or a directory), memory:, or http(s)://opensearch:9200.
    #[arg(long, env = "DROVER_STORE_URL", default_value = "file:.drover/state")]
    store: String,
    /// Event index, when not the one of --store (file:DIR or http(s)://…); with a memory:
    /// store, the default is DATA_DIR/events.
    #[arg(long, env = "DROVER_EVENTS_URL")]
    events: Option<String>,
    /// The workflow service (http://host:port). Without it, executions run in this process,
    /// in dry-run: no operation runs.
    #[arg(long, env = "DROVER_WORKFLOW_GRPC")]
    workflow_grpc: Option<String>,
    /// Where uploaded blueprints and the gateway's registry (which tenant owns what, tokens)
    /// live; secrets are in --store.
    #[arg(
        long,
        env = "DROVER_GATEWAY_DATA_DIR",
        default_value = ".drover/gateway"
    )]
    data_dir: PathBuf,
    #[arg(long, env = "DROVER_ADMIN_USER", default_value = "admin")]
    admin_user: String,
    #[arg(
        long,
        env = "DROVER_ADMIN_PASSWORD",
        default_value = "admin",
        hide_env_values = true
    )]
    admin_password: String,
    /// Largest blueprint archive accepted, in MiB.
    #[arg(long, env = "DROVER_GATEWAY_MAX_ARCHIVE_MB", default_value_t = 64)]
    max_archive_mb: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_telemetry::init_tracing("info");
    let args = Args::parse();
    let store = drover_store::open(&args.store)
        .with_context(|| format!("opening the state store {}", args.store))?;
    let events: Arc<dyn EventIndex> = match (&args.events, args.store.as_str()) {
        (Some(url), _) => drover_store::open_events(url)?,
        (None, "memory:") => Arc::new(drover_store::FileEventIndex::open(
            args.data_dir.join("events"),
        )?),
        (None, url) => drover_store::open_events(url)?,
    };
    let workflows: Arc<dyn Workflows> = match &args.workflow_grpc {
        Some(url) => Arc::new(GrpcWorkflows::connect_lazy(url)?),
        None => {
            tracing::warn!("no --workflow-grpc: executions run in this process, in dry-run");
            Arc::new(LocalWorkflows::new(store.clone(), events.clone()))
        }
    };
    let registry = Arc::new(
        FileRegistry::open(&args.data_dir)
            .with_context(|| format!("opening the registry in {}", args.data_dir.display()))?,
    );
    let mut config = Config::new(
        args.data_dir.clone(),
        drover_gateway::auth::Credentials {
            username: args.admin_user,
            password: args.admin_password,
        },
    );
    config.max_archive_bytes = args.max_archive_mb << 20;
    let gateway = Gateway::new(store, events, workflows, registry, config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "drover-gateway serving");
    warp::serve(drover_gateway::filter(gateway))
        .incoming(listener)
        .graceful(shutdown())
        .run()
        .await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM: in-flight requests finish, then the server stops.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
