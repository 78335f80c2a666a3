//! Bus bodies: drover-model's types to and from `drover.bus.v1` protobuf ([`pb`]), wrapped in
//! an [`pb::Envelope`] whose version is checked first.
//!
//! Encoding cannot fail. Decoding fails with a [`CodecError`] that says what is wrong, meant as
//! the dead-letter reason: the bytes are not protobuf, the version is unknown, the envelope
//! holds another kind of body, or a `*_json` field is not the JSON it must be.

use std::collections::BTreeMap;

use drover_model::{
    Event, EventContext, EventMessage, EventRecord, Heartbeat, Map, OperationTask, TaskNode,
    TaskOutcome, TaskRelationship, TaskResult,
};
use prost::Message;
use serde_json::Value;

pub use crate::drover::bus::v1 as pb;
use pb::envelope::Body;

/// The version this build writes and the only one it reads.
pub const VERSION: u32 = 1;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a drover bus body: {0}")]
    NotProtobuf(#[from] prost::DecodeError),
    #[error("body version {found} is unknown (this build reads version {VERSION})")]
    UnknownVersion { found: u32 },
    #[error("expected a {expected} body, got {found}")]
    WrongBody {
        expected: &'static str,
        found: &'static str,
    },
    #[error("field {field}: {detail}")]
    Field { field: &'static str, detail: String },
}

fn envelope(body: Body) -> Vec<u8> {
    pb::Envelope {
        version: VERSION,
        body: Some(body),
    }
    .encode_to_vec()
}

fn open(bytes: &[u8]) -> Result<Body, CodecError> {
    let envelope = pb::Envelope::decode(bytes)?;
    if envelope.version != VERSION {
        return Err(CodecError::UnknownVersion {
            found: envelope.version,
        });
    }
    envelope.body.ok_or(CodecError::WrongBody {
        expected: "known",
        found: "no body",
    })
}

fn kind(body: &Body) -> &'static str {
    match body {
        Body::Task(_) => "task",
        Body::Result(_) => "result",
        Body::Heartbeat(_) => "heartbeat",
        Body::Record(_) => "record",
    }
}

fn wrong(expected: &'static str, body: &Body) -> CodecError {
    CodecError::WrongBody {
        expected,
        found: kind(body),
    }
}

fn json_object(field: &'static str, text: &str) -> Result<Map, CodecError> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CodecError::Field {
            field,
            detail: format!("a JSON object was expected, not {other}"),
        }),
        Err(e) => Err(CodecError::Field {
            field,
            detail: format!("invalid JSON: {e}"),
        }),
    }
}

fn json_value(field: &'static str, text: &str) -> Result<Value, CodecError> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|e| CodecError::Field {
        field,
        detail: format!("invalid JSON: {e}"),
    })
}

fn object_text(map: &Map) -> String {
    if map.is_empty() {
        String::new()
    } else {
        Value::Object(map.clone()).to_string()
    }
}

fn value_text(value: &Value) -> String {
    if value.is_null() {
        String::new()
    } else {
        value.to_string()
    }
}

pub fn encode_task(task: &OperationTask) -> Vec<u8> {
    envelope(Body::Task(pb::OperationTask {
        task_id: task.task_id.clone(),
        execution_id: task.execution_id.clone(),
        workflow_id: task.workflow_id.clone(),
        deployment_id: task.deployment_id.clone(),
        operation: task.operation.clone(),
        plugin: task.plugin.clone(),
        implementation: task.implementation.clone(),
        executor: task.executor.clone(),
        inputs_json: object_text(&task.inputs),
        dry_run: task.dry_run,
        attempt: task.attempt,
        timeout_s: task.timeout_s,
        blueprint_dir: task.blueprint_dir.clone(),
        node: Some(node_to_pb(&task.node)),
        relationship: task.relationship.as_ref().map(|r| pb::TaskRelationship {
            r#type: r.type_name.clone(),
            side: r.side.clone(),
            source: Some(node_to_pb(&r.source)),
            target: Some(node_to_pb(&r.target)),
        }),
    }))
}

pub fn decode_task(bytes: &[u8]) -> Result<OperationTask, CodecError> {
    let task = match open(bytes)? {
        Body::Task(task) => task,
        other => return Err(wrong("task", &other)),
    };
    Ok(OperationTask {
        task_id: task.task_id,
        execution_id: task.execution_id,
        workflow_id: task.workflow_id,
        deployment_id: task.deployment_id,
        operation: task.operation,
        plugin: task.plugin,
        implementation: task.implementation,
        executor: task.executor,
        inputs: json_object("inputs_json", &task.inputs_json)?,
        dry_run: task.dry_run,
        attempt: task.attempt,
        timeout_s: task.timeout_s,
        blueprint_dir: task.blueprint_dir,
        node: node_from_pb(task.node.unwrap_or_default())?,
        relationship: task
            .relationship
            .map(|r| -> Result<_, CodecError> {
                Ok(TaskRelationship {
                    type_name: r.r#type,
                    side: r.side,
                    source: node_from_pb(r.source.unwrap_or_default())?,
                    target: node_from_pb(r.target.unwrap_or_default())?,
                })
            })
            .transpose()?,
    })
}

fn node_to_pb(node: &TaskNode) -> pb::TaskNode {
    pb::TaskNode {
        node_instance_id: node.node_instance_id.clone(),
        node_id: node.node_id.clone(),
        node_type: node.node_type.clone(),
        properties_json: object_text(&node.properties),
        runtime_properties_json: object_text(&node.runtime_properties),
    }
}

fn node_from_pb(node: pb::TaskNode) -> Result<TaskNode, CodecError> {
    Ok(TaskNode {
        node_instance_id: node.node_instance_id,
        node_id: node.node_id,
        node_type: node.node_type,
        properties: json_object("properties_json", &node.properties_json)?,
        runtime_properties: json_object("runtime_properties_json", &node.runtime_properties_json)?,
    })
}

pub fn encode_result(result: &TaskResult) -> Vec<u8> {
    let outcome = match &result.outcome {
        TaskOutcome::Succeeded { result } => pb::task_result::Outcome::Succeeded(pb::Succeeded {
            result_json: value_text(result),
        }),
        TaskOutcome::Failed {
            error,
            recoverable,
            retry_after_s,
        } => pb::task_result::Outcome::Failed(pb::Failed {
            error: error.clone(),
            recoverable: *recoverable,
            retry_after_s: *retry_after_s,
        }),
    };
    envelope(Body::Result(pb::TaskResult {
        task_id: result.task_id.clone(),
        execution_id: result.execution_id.clone(),
        outcome: Some(outcome),
        runtime_properties_json: result
            .runtime_properties
            .iter()
            .map(|(id, properties)| (id.clone(), Value::Object(properties.clone()).to_string()))
            .collect(),
    }))
}

pub fn decode_result(bytes: &[u8]) -> Result<TaskResult, CodecError> {
    let result = match open(bytes)? {
        Body::Result(result) => result,
        other => return Err(wrong("result", &other)),
    };
    let outcome = match result.outcome {
        Some(pb::task_result::Outcome::Succeeded(s)) => TaskOutcome::Succeeded {
            result: json_value("result_json", &s.result_json)?,
        },
        Some(pb::task_result::Outcome::Failed(f)) => TaskOutcome::Failed {
            error: f.error,
            recoverable: f.recoverable,
            retry_after_s: f.retry_after_s,
        },
        None => {
            return Err(CodecError::Field {
                field: "outcome",
                detail: "missing".into(),
            });
        }
    };
    let runtime_properties = result
        .runtime_properties_json
        .into_iter()
        .map(|(id, text)| Ok((id, json_object("runtime_properties_json", &text)?)))
        .collect::<Result<BTreeMap<_, _>, CodecError>>()?;
    Ok(TaskResult {
        task_id: result.task_id,
        execution_id: result.execution_id,
        outcome,
        runtime_properties,
    })
}

pub fn encode_heartbeat(beat: &Heartbeat) -> Vec<u8> {
    envelope(Body::Heartbeat(pb::Heartbeat {
        agent: beat.agent.clone(),
        sequence: beat.sequence,
        sent_at_ms: beat.sent_at_ms,
    }))
}

pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, CodecError> {
    match open(bytes)? {
        Body::Heartbeat(beat) => Ok(Heartbeat {
            agent: beat.agent,
            sequence: beat.sequence,
            sent_at_ms: beat.sent_at_ms,
        }),
        other => Err(wrong("heartbeat", &other)),
    }
}

pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    let event = &record.event;
    let c = &event.context;
    envelope(Body::Record(pb::EventRecord {
        id: record.id.clone(),
        r#type: event.kind.clone(),
        event_type: event.event_type.clone(),
        level: record.level.clone(),
        logger: record.logger.clone(),
        timestamp: event.timestamp.clone(),
        message: event.message.text.clone(),
        arguments_json: value_text(&event.message.arguments),
        context: Some(pb::EventContext {
            deployment_id: c.deployment_id.clone(),
            execution_id: c.execution_id.clone(),
            workflow_id: c.workflow_id.clone(),
            task_id: c.task_id.clone(),
            operation: c.operation.clone(),
            plugin: c.plugin.clone(),
            task_current_retries: c.task_current_retries,
            task_total_retries: c.task_total_retries,
            node_id: c.node_id.clone(),
            node_name: c.node_name.clone(),
            source_id: c.source_id.clone(),
            source_name: c.source_name.clone(),
            target_id: c.target_id.clone(),
            target_name: c.target_name.clone(),
        }),
    }))
}

pub fn decode_record(bytes: &[u8]) -> Result<EventRecord, CodecError> {
    let record = match open(bytes)? {
        Body::Record(record) => record,
        other => return Err(wrong("record", &other)),
    };
    let c = record.context.unwrap_or_default();
    Ok(EventRecord {
        id: record.id,
        level: record.level,
        logger: record.logger,
        event: Event {
            event_type: record.event_type,
            context: EventContext {
                deployment_id: c.deployment_id,
                execution_id: c.execution_id,
                workflow_id: c.workflow_id,
                task_id: c.task_id,
                operation: c.operation,
                plugin: c.plugin,
                task_current_retries: c.task_current_retries,
                task_total_retries: c.task_total_retries,
                node_id: c.node_id,
                node_name: c.node_name,
                source_id: c.source_id,
                source_name: c.source_name,
                target_id: c.target_id,
                target_name: c.target_name,
            },
            message: EventMessage {
                text: record.message,
                arguments: json_value("arguments_json", &record.arguments_json)?,
            },
            timestamp: record.timestamp,
            kind: record.r#type,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map {
        value.as_object().cloned().unwrap()
    }

    fn node(id: &str) -> TaskNode {
        TaskNode {
            node_instance_id: id.into(),
            node_id: "web".into(),
            node_type: "cloudify.nodes.WebServer".into(),
            properties: object(json!({"port": 80, "tags": ["a", {"b": null}]})),
            runtime_properties: object(json!({"ip": "10.0.0.1"})),
        }
    }

    #[test]
    fn tasks_round_trip() {
        let task = OperationTask {
            task_id: "e1-0-3-1".into(),
            execution_id: "e1".into(),
            workflow_id: "install".into(),
            deployment_id: "d1".into(),
            operation: "cloudify.interfaces.relationship_lifecycle.preconfigure".into(),
            plugin: "script".into(),
            implementation: "scripts/x.sh".into(),
            executor: Some("host_agent".into()),
            inputs: object(json!({"z": 1, "a": {"nested": [1.5, true]}})),
            dry_run: true,
            attempt: 1,
            timeout_s: Some(2.5),
            blueprint_dir: Some("/bp".into()),
            node: node("web_1"),
            relationship: Some(TaskRelationship {
                type_name: "cloudify.relationships.connected_to".into(),
                side: "source".into(),
                source: node("web_1"),
                target: TaskNode::default(),
            }),
        };
        assert_eq!(decode_task(&encode_task(&task)).unwrap(), task);
        let plain = OperationTask::default();
        assert_eq!(decode_task(&encode_task(&plain)).unwrap(), plain);
    }

    #[test]
    fn results_round_trip() {
        let mut result = TaskResult {
            task_id: "t".into(),
            execution_id: "e".into(),
            outcome: TaskOutcome::Succeeded {
                result: json!({"k": [1, "x"]}),
            },
            runtime_properties: BTreeMap::from([("web_1".into(), object(json!({"a": 1})))]),
        };
        assert_eq!(decode_result(&encode_result(&result)).unwrap(), result);
        result.outcome = TaskOutcome::Failed {
            error: "boom".into(),
            recoverable: true,
            retry_after_s: Some(3.0),
        };
        result.runtime_properties.clear();
        assert_eq!(decode_result(&encode_result(&result)).unwrap(), result);
    }

    #[test]
    fn heartbeats_and_records_round_trip() {
        let beat = Heartbeat {
            agent: "hollow-7".into(),
            sequence: 42,
            sent_at_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_heartbeat(&encode_heartbeat(&beat)).unwrap(), beat);
        let record = EventRecord {
            id: "a-1".into(),
            level: Some("info".into()),
            logger: Some("stdout".into()),
            event: Event {
                event_type: String::new(),
                context: EventContext {
                    deployment_id: "d".into(),
                    execution_id: "e".into(),
                    task_id: Some("t".into()),
                    task_current_retries: Some(2),
                    ..EventContext::default()
                },
                message: EventMessage {
                    text: "hello".into(),
                    arguments: json!(["x"]),
                },
                timestamp: "2026-11-26T20:00:00.000Z".into(),
                kind: "cloudify_log".into(),
            },
        };
        assert_eq!(decode_record(&encode_record(&record)).unwrap(), record);
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        let err = |bytes: &[u8]| decode_task(bytes).unwrap_err().to_string();
        assert!(err(b"{\"task_id\": \"json\"}").starts_with("not a drover bus body"));
        let v2 = pb::Envelope {
            version: 2,
            body: None,
        }
        .encode_to_vec();
        assert_eq!(
            err(&v2),
            "body version 2 is unknown (this build reads version 1)"
        );
        assert_eq!(
            err(&[]),
            "body version 0 is unknown (this build reads version 1)"
        );
        let beat = encode_heartbeat(&Heartbeat {
            agent: "a".into(),
            sequence: 0,
            sent_at_ms: 0,
        });
        assert_eq!(err(&beat), "expected a task body, got heartbeat");
        let bad_json = envelope(Body::Task(pb::OperationTask {
            inputs_json: "[1]".into(),
            ..Default::default()
        }));
        assert_eq!(
            err(&bad_json),
            "field inputs_json: a JSON object was expected, not [1]"
        );
    }
}
