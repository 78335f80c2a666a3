//! The monitor's events, in Cloudify's event shape, for the `ingest` queue: `agent_failed`,
//! `agent_recovered`, `heal_started`, on the node instance the agent serves (as its heartbeats
//! say, or the one named like the agent).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_model::{Event, EventContext, EventMessage, EventRecord};
use serde_json::json;

/// Something the monitor tells the rest of drover.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    AgentFailed {
        deployment: String,
        instance: String,
        agent: String,
        shard: u32,
        /// How long the agent had been silent when the failure was confirmed.
        silent: Duration,
        phi: f64,
    },
    AgentRecovered {
        deployment: String,
        instance: String,
        agent: String,
        down: Duration,
    },
    HealStarted {
        deployment: String,
        instance: String,
        execution_id: String,
    },
    /// A threshold policy scaled `group` out.
    ScaleStarted {
        deployment: String,
        policy: String,
        group: String,
        delta: u32,
        value: f64,
        execution_id: String,
    },
}

impl MonitorEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            MonitorEvent::AgentFailed { .. } => "agent_failed",
            MonitorEvent::AgentRecovered { .. } => "agent_recovered",
            MonitorEvent::HealStarted { .. } => "heal_started",
            MonitorEvent::ScaleStarted { .. } => "scale_started",
        }
    }

    /// The record ingest indexes, with an id unique to this event.
    pub fn record(&self, at: SystemTime) -> EventRecord {
        let millis = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let (deployment, instance, execution_id, text, arguments) = match self {
            MonitorEvent::AgentFailed {
                deployment,
                instance,
                agent,
                shard,
                silent,
                phi,
            } => (
                deployment,
                instance,
                String::new(),
                format!("agent {agent} failed: silent for {} ms", silent.as_millis()),
                json!({"agent": agent, "shard": shard, "silent_ms": silent.as_millis() as u64,
                       "phi": phi, "detected_at_ms": millis as u64}),
            ),
            MonitorEvent::AgentRecovered {
                deployment,
                instance,
                agent,
                down,
            } => (
                deployment,
                instance,
                String::new(),
                format!("agent {agent} recovered after {} ms", down.as_millis()),
                json!({"agent": agent, "down_ms": down.as_millis() as u64}),
            ),
            MonitorEvent::HealStarted {
                deployment,
                instance,
                execution_id,
            } => (
                deployment,
                instance,
                execution_id.clone(),
                format!("heal of {instance} started: execution {execution_id}"),
                json!({"instance": instance, "execution_id": execution_id}),
            ),
            MonitorEvent::ScaleStarted {
                deployment,
                policy,
                group,
                delta,
                value,
                execution_id,
            } => (
                deployment,
                group,
                execution_id.clone(),
                format!(
                    "policy {policy} scales {group} by {delta} (value {value}): execution {execution_id}"
                ),
                json!({"policy": policy, "group": group, "delta": delta, "value": value,
                       "execution_id": execution_id}),
            ),
        };
        // The subject of a scale is a group, not an instance.
        let node_id = match self {
            MonitorEvent::ScaleStarted { .. } => None,
            _ => Some(instance.clone()),
        };
        let event_type = self.event_type();
        EventRecord {
            id: format!("monitor-{event_type}-{instance}-{millis}"),
            level: None,
            logger: None,
            event: Event {
                event_type: event_type.to_owned(),
                context: EventContext {
                    deployment_id: deployment.clone(),
                    execution_id,
                    workflow_id: String::new(),
                    node_id,
                    ..EventContext::default()
                },
                message: EventMessage { text, arguments },
                timestamp: humantime::format_rfc3339_millis(at).to_string(),
                kind: "cloudify_event".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_a_cloudify_event_on_the_agents_instance() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let record = MonitorEvent::AgentFailed {
            deployment: "d1".into(),
            instance: "web_1".into(),
            agent: "agent-3".into(),
            shard: 2,
            silent: Duration::from_millis(640),
            phi: 9.5,
        }
        .record(at);
        assert_eq!(record.id, "monitor-agent_failed-web_1-1700000000123");
        assert_eq!(record.event.event_type, "agent_failed");
        assert_eq!(record.event.kind, "cloudify_event");
        assert_eq!(record.event.timestamp, "2023-11-14T22:13:20.123Z");
        assert_eq!(record.event.context.deployment_id, "d1");
        assert_eq!(record.event.context.node_id.as_deref(), Some("web_1"));
        assert_eq!(record.event.message.arguments["agent"], "agent-3");
        assert_eq!(record.event.message.arguments["silent_ms"], 640);
        assert_eq!(
            record.event.message.arguments["detected_at_ms"],
            1_700_000_000_123u64
        );
    }
}
