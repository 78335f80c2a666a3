//! What `drover-provisioner` counts for `/metrics` (registered under `drover_provisioner_`):
//! gRPC requests by operation, and node instances finished by operation and outcome.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The service's counters; cheap to clone, all clones count together.
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    instances: Family<Labels, Counter>,
}

/// Which of the service's batch operations.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    Provision,
    Deprovision,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Provision => "provision",
            Operation::Deprovision => "deprovision",
        }
    }
}

impl Metrics {
    /// Adds the counters to `registry` (until then they count unseen).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Provision and Deprovision requests received",
            self.requests.clone(),
        );
        registry.register(
            "instances",
            "Node instances finished, by operation and outcome (ok or failed)",
            self.instances.clone(),
        );
    }

    pub(crate) fn request(&self, operation: Operation) {
        self.requests
            .get_or_create(&vec![("operation", operation.label())])
            .inc();
    }

    pub(crate) fn instance(&self, operation: Operation, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.instances
            .get_or_create(&vec![
                ("operation", operation.label()),
                ("outcome", outcome),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn counts_show_in_the_registry() {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("drover_provisioner");
        metrics.register(&mut registry);
        metrics.request(Operation::Provision);
        metrics.instance(Operation::Provision, true);
        metrics.instance(Operation::Provision, true);
        metrics.instance(Operation::Deprovision, false);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("drover_provisioner_requests_total{operation=\"provision\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "drover_provisioner_instances_total{operation=\"provision\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "drover_provisioner_instances_total{operation=\"deprovision\",outcome=\"failed\"} 1"
            ),
            "{text}"
        );
    }
}
