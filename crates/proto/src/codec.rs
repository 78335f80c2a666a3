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
        Body::Tasks(_) => "task batch",
        Body::Results(_) => "result batch",
        Body::Heartbeats(_) => "heartbeat batch",
        Body::Records(_) => "record batch",
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
    envelope(Body::Task(task_to_pb(task)))
}

/// One task alone, several as a [`pb::TaskBatch`].
pub fn encode_tasks(tasks: &[OperationTask]) -> Vec<u8> {
    match tasks {
        [task] => encode_task(task),
        tasks => envelope(Body::Tasks(pb::TaskBatch {
            tasks: tasks.iter().map(task_to_pb).collect(),
        })),
    }
}

pub fn decode_task(bytes: &[u8]) -> Result<OperationTask, CodecError> {
    match open(bytes)? {
        Body::Task(task) => task_from_pb(task),
        other => Err(wrong("task", &other)),
    }
}

/// The tasks of a body that holds one task or a batch of them.
pub fn decode_tasks(bytes: &[u8]) -> Result<Vec<OperationTask>, CodecError> {
    match open(bytes)? {
        Body::Task(task) => Ok(vec![task_from_pb(task)?]),
        Body::Tasks(batch) => batch.tasks.into_iter().map(task_from_pb).collect(),
        other => Err(wrong("task", &other)),
    }
}

fn task_to_pb(task: &OperationTask) -> pb::OperationTask {
    pb::OperationTask {
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
    }
}

fn task_from_pb(task: pb::OperationTask) -> Result<OperationTask, CodecError> {
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
    envelope(Body::Result(result_to_pb(result)))
}

/// One result alone, several as a [`pb::ResultBatch`].
pub fn encode_results(results: &[TaskResult]) -> Vec<u8> {
    match results {
        [result] => encode_result(result),
        results => envelope(Body::Results(pb::ResultBatch {
            results: results.iter().map(result_to_pb).collect(),
        })),
    }
}

pub fn decode_result(bytes: &[u8]) -> Result<TaskResult, CodecError> {
    match open(bytes)? {
        Body::Result(result) => result_from_pb(result),
        other => Err(wrong("result", &other)),
    }
}

/// The results of a body that holds one result or a batch of them.
pub fn decode_results(bytes: &[u8]) -> Result<Vec<TaskResult>, CodecError> {
    match open(bytes)? {
        Body::Result(result) => Ok(vec![result_from_pb(result)?]),
        Body::Results(batch) => batch.results.into_iter().map(result_from_pb).collect(),
        other => Err(wrong("result", &other)),
    }
}

fn result_to_pb(result: &TaskResult) -> pb::TaskResult {
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
    pb::TaskResult {
        task_id: result.task_id.clone(),
        execution_id: result.execution_id.clone(),
        outcome: Some(outcome),
        runtime_properties_json: result
            .runtime_properties
            .iter()
            .map(|(id, properties)| (id.clone(), Value::Object(properties.clone()).to_string()))
            .collect(),
    }
}

fn result_from_pb(result: pb::TaskResult) -> Result<TaskResult, CodecError> {
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
    envelope(Body::Heartbeat(heartbeat_to_pb(beat)))
}

/// One beat alone, several as a [`pb::HeartbeatBatch`].
pub fn encode_heartbeats(beats: &[Heartbeat]) -> Vec<u8> {
    match beats {
        [beat] => encode_heartbeat(beat),
        beats => envelope(Body::Heartbeats(pb::HeartbeatBatch {
            beats: beats.iter().map(heartbeat_to_pb).collect(),
        })),
    }
}

pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, CodecError> {
    match open(bytes)? {
        Body::Heartbeat(beat) => heartbeat_from_pb(beat),
        other => Err(wrong("heartbeat", &other)),
    }
}

/// The beats of a body that holds one heartbeat or a batch of them.
pub fn decode_heartbeats(bytes: &[u8]) -> Result<Vec<Heartbeat>, CodecError> {
    match open(bytes)? {
        Body::Heartbeat(beat) => Ok(vec![heartbeat_from_pb(beat)?]),
        Body::Heartbeats(batch) => batch.beats.into_iter().map(heartbeat_from_pb).collect(),
        other => Err(wrong("heartbeat", &other)),
    }
}

fn heartbeat_to_pb(beat: &Heartbeat) -> pb::Heartbeat {
    pb::Heartbeat {
        agent: beat.agent.clone(),
        sequence: beat.sequence,
        sent_at_ms: beat.sent_at_ms,
        deployment_id: beat.deployment_id.clone(),
        node_instance_id: beat.node_instance_id.clone(),
        metrics: beat.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

/// A beat must name its agent: one without a name cannot be told from any other.
fn heartbeat_from_pb(beat: pb::Heartbeat) -> Result<Heartbeat, CodecError> {
    if beat.agent.is_empty() {
        return Err(CodecError::Field {
            field: "agent",
            detail: "empty: a heartbeat must name its agent".into(),
        });
    }
    Ok(Heartbeat {
        agent: beat.agent,
        sequence: beat.sequence,
        sent_at_ms: beat.sent_at_ms,
        deployment_id: beat.deployment_id,
        node_instance_id: beat.node_instance_id,
        metrics: beat.metrics.into_iter().collect(),
    })
}

pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    envelope(Body::Record(record_to_pb(record)))
}

/// One record alone, several as a [`pb::RecordBatch`].
pub fn encode_records(records: &[EventRecord]) -> Vec<u8> {
    match records {
        [record] => encode_record(record),
        records => envelope(Body::Records(pb::RecordBatch {
            records: records.iter().map(record_to_pb).collect(),
        })),
    }
}

pub fn decode_record(bytes: &[u8]) -> Result<EventRecord, CodecError> {
    match open(bytes)? {
        Body::Record(record) => record_from_pb(record),
        other => Err(wrong("record", &other)),
    }
}

/// The records of a body that holds one record or a batch of them.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<EventRecord>, CodecError> {
    match open(bytes)? {
        Body::Record(record) => Ok(vec![record_from_pb(record)?]),
        Body::Records(batch) => batch.records.into_iter().map(record_from_pb).collect(),
        other => Err(wrong("record", &other)),
    }
}

fn record_to_pb(record: &EventRecord) -> pb::EventRecord {
    let event = &record.event;
    let c = &event.context;
    pb::EventRecord {
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
    }
}

fn record_from_pb(record: pb::EventRecord) -> Result<EventRecord, CodecError> {
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
        // A batch, and a lone task read as a batch of one.
        let batch = vec![task.clone(), plain.clone(), task.clone()];
        assert_eq!(decode_tasks(&encode_tasks(&batch)).unwrap(), batch);
        assert_eq!(
            encode_tasks(std::slice::from_ref(&task)),
            encode_task(&task)
        );
        assert_eq!(decode_tasks(&encode_task(&task)).unwrap(), [task]);
        let batch_body = encode_tasks(&batch);
        assert_eq!(
            decode_task(&batch_body).unwrap_err().to_string(),
            "expected a task body, got task batch"
        );
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
        let mut other = result.clone();
        other.task_id = "u".into();
        let batch = vec![result.clone(), other];
        assert_eq!(decode_results(&encode_results(&batch)).unwrap(), batch);
        assert_eq!(decode_results(&encode_result(&result)).unwrap(), [result]);
    }

    #[test]
    fn heartbeats_and_records_round_trip() {
        let mut beat = Heartbeat {
            agent: "hollow-7".into(),
            sequence: 42,
            sent_at_ms: 1_700_000_000_000,
            ..Heartbeat::default()
        };
        assert_eq!(decode_heartbeat(&encode_heartbeat(&beat)).unwrap(), beat);
        beat.deployment_id = "d1".into();
        beat.node_instance_id = "host_x1".into();
        beat.metrics.insert("load".into(), 0.75);
        assert_eq!(decode_heartbeat(&encode_heartbeat(&beat)).unwrap(), beat);
        // A batch, and a lone beat read as a batch of one (what real agents send).
        let other = Heartbeat {
            agent: "hollow-8".into(),
            sequence: 3,
            ..Heartbeat::default()
        };
        let batch = vec![beat.clone(), other];
        assert_eq!(
            decode_heartbeats(&encode_heartbeats(&batch)).unwrap(),
            batch
        );
        assert_eq!(
            encode_heartbeats(std::slice::from_ref(&beat)),
            encode_heartbeat(&beat)
        );
        assert_eq!(decode_heartbeats(&encode_heartbeat(&beat)).unwrap(), [beat]);
        assert_eq!(
            decode_heartbeat(&encode_heartbeats(&batch))
                .unwrap_err()
                .to_string(),
            "expected a heartbeat body, got heartbeat batch"
        );
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
        let mut other = record.clone();
        other.id = "a-2".into();
        let records = vec![record.clone(), other];
        assert_eq!(decode_records(&encode_records(&records)).unwrap(), records);
        assert_eq!(
            encode_records(std::slice::from_ref(&record)),
            encode_record(&record)
        );
        assert_eq!(
            decode_record(&encode_records(&records))
                .unwrap_err()
                .to_string(),
            "expected a record body, got record batch"
        );
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
            ..Heartbeat::default()
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
        // One bad task in a batch refuses the batch, saying why.
        let bad_batch = envelope(Body::Tasks(pb::TaskBatch {
            tasks: vec![
                pb::OperationTask::default(),
                pb::OperationTask {
                    inputs_json: "{".into(),
                    ..Default::default()
                },
            ],
        }));
        let error = decode_tasks(&bad_batch).unwrap_err().to_string();
        assert!(
            error.starts_with("field inputs_json: invalid JSON"),
            "{error}"
        );
        assert_eq!(
            decode_results(&encode_tasks(&[])).unwrap_err().to_string(),
            "expected a result body, got task batch"
        );
    }

    #[test]
    fn malformed_heartbeat_batches_are_refused() {
        let beat = |agent: &str| Heartbeat {
            agent: agent.into(),
            ..Heartbeat::default()
        };
        // A beat without its agent's name refuses its batch.
        let nameless = encode_heartbeats(&[beat("a"), beat("")]);
        assert_eq!(
            decode_heartbeats(&nameless).unwrap_err().to_string(),
            "field agent: empty: a heartbeat must name its agent"
        );
        // A cut-off batch is not protobuf.
        let batch = encode_heartbeats(&[beat("a"), beat("b")]);
        let cut = decode_heartbeats(&batch[..batch.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(cut.starts_with("not a drover bus body"), "{cut}");
        // Other bodies are not heartbeats.
        assert_eq!(
            decode_heartbeats(&encode_tasks(&[]))
                .unwrap_err()
                .to_string(),
            "expected a heartbeat body, got task batch"
        );
    }
}
