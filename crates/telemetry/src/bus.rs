//! The broker flags of every service on RabbitMQ, declared once: the same names, the same
//! environment variable, the same connection set-up in each `main.rs`.

use std::time::Duration;

use drover_bus::{AmqpBus, AmqpOptions, BusError, Topology};

/// Where the broker is and how the names on it are spelled.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// The broker, `amqp://user:password@host:port/vhost`.
    #[arg(long, env = "DROVER_AMQP_URL")]
    pub amqp_url: String,
    /// The prefix of every exchange and queue name (tests sharing a broker); the same for every
    /// service and agent on the broker.
    #[arg(long, alias = "bus-prefix", default_value = "")]
    pub prefix: String,
    /// Let the broker delete queues unused for this many seconds (tests sharing a broker; every
    /// user of a queue must declare it alike).
    #[arg(long)]
    pub queue_expiry_s: Option<u64>,
}

impl BusArgs {
    /// The topology these flags name, for a service to adjust (e.g. its monitor shards).
    pub fn topology(&self) -> Topology {
        let topology = Topology::new().with_prefix(self.prefix.clone());
        match self.queue_expiry_s {
            Some(seconds) => topology.with_queue_expiry(Duration::from_secs(seconds)),
            None => topology,
        }
    }

    /// Connects as `connection_name` (what RabbitMQ's connection list shows).
    pub async fn connect(
        &self,
        topology: Topology,
        connection_name: &str,
    ) -> Result<AmqpBus, BusError> {
        AmqpBus::connect(
            AmqpOptions::new(self.amqp_url.clone(), topology).with_connection_name(connection_name),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bus: BusArgs,
    }

    #[test]
    fn flags_make_the_topology() {
        let cli = Cli::parse_from(["x", "--amqp-url", "amqp://h/%2f", "--bus-prefix", "t1."]);
        assert_eq!(cli.bus.amqp_url, "amqp://h/%2f");
        assert_eq!(cli.bus.topology().prefix(), "t1.");
        let cli = Cli::parse_from(["x", "--amqp-url", "u", "--prefix", "t2."]);
        assert_eq!(cli.bus.topology().prefix(), "t2.");
    }
}
