//! `/events`: an execution's or a deployment's events and logs from the event index, in
//! Cloudify's flat shape, with type, time-range and text filters, pagination and sort.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_model::Execution;
use drover_store::{EventQuery, EventRecord, SortOrder};
use drover_workflow::{END_EVENT_QUIET, END_EVENT_TYPES};
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::owns;
use crate::error::{ApiError, ApiResult};
use crate::query::{MAX_PAGE, list_body};
use crate::registry::Kind;
use crate::{Gateway, Reply, Request};

/// Cloudify's event item: every key present, null where it does not apply.
pub fn event_json(r: &EventRecord, blueprint_id: Option<&str>) -> Value {
    let e = &r.event;
    let c = &e.context;
    let is_log = e.kind == "cloudify_log";
    json!({
        "type": e.kind,
        "timestamp": e.timestamp,
        "reported_timestamp": e.timestamp,
        "message": e.message.text,
        "event_type": if is_log { None } else { Some(&e.event_type) },
        "level": r.level,
        "logger": r.logger,
        "blueprint_id": blueprint_id,
        "deployment_id": c.deployment_id,
        "deployment_display_name": c.deployment_id,
        "execution_id": c.execution_id,
        "execution_group_id": null,
        "workflow_id": c.workflow_id,
        "node_name": c.node_name,
        "node_instance_id": c.node_id,
        "operation": c.operation,
        "error_causes": e.message.arguments.get("error_causes").cloned(),
        "source_id": c.source_id,
        "target_id": c.target_id,
        "manager_name": null,
        "agent_name": null,
        "_storage_id": r.id,
    })
}

const KNOWN: &[&str] = &[
    "execution_id",
    "deployment_id",
    "node_instance_id",
    "type",
    "event_type",
    "level",
    "message.text",
    "_offset",
    "_size",
    "_sort",
    "_range",
    "_include",
];

/// How long a list of a just-ended execution's events waits for its end event, at most.
const END_EVENT_WAIT: Duration = Duration::from_secs(30);
/// Executions that ended longer ago than this are not waited for.
const RECENTLY_ENDED: Duration = Duration::from_secs(300);

/// Events reach the index through ingest, behind the execution's status. So that a client
/// that lists an execution's events once its status is final (what Cloudify's client and
/// scripts do) gets all of them, a list of a recently ended execution's events first waits
/// (up to [`END_EVENT_WAIT`]) until the workflow's end event is indexed, and, if it had to
/// wait, [`END_EVENT_QUIET`] more for what another ingest replica indexes beside it.
fn wait_for_the_end_event(gw: &Gateway, execution: &Execution) {
    let ended = execution
        .ended_at
        .as_deref()
        .filter(|_| execution.status.is_final())
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
    let Some(ended) = ended else { return };
    if ended.elapsed().unwrap_or_default() > RECENTLY_ENDED {
        return;
    }
    let end_event = EventQuery {
        execution_id: Some(execution.id.clone()),
        event_types: END_EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        ..EventQuery::default()
    };
    let started = Instant::now();
    let mut waited = false;
    while started.elapsed() < END_EVENT_WAIT {
        match gw.events.query(&end_event, SortOrder::Ascending, 0, 1) {
            Ok(page) if page.total > 0 => {
                if waited {
                    std::thread::sleep(END_EVENT_QUIET);
                }
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, execution = %execution.id, "looking for the end event");
                return;
            }
        }
        waited = true;
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let q = &req.query;
    if let Some((k, _)) = q.0.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown events parameter {k:?}"
        )));
    }
    let offset = q.usize("_offset", 0)?;
    let size = q.usize("_size", MAX_PAGE)?.min(MAX_PAGE);
    let mut order = SortOrder::Ascending;
    for sort in q.all("_sort").flat_map(|s| s.split(',')) {
        let (field, descending) = match sort.strip_prefix('-') {
            Some(f) => (f, true),
            None => (sort.trim_start_matches('+'), false),
        };
        if !matches!(field, "timestamp" | "@timestamp" | "reported_timestamp") {
            return Err(ApiError::bad_request(format!(
                "events sort by timestamp only, not {field:?}"
            )));
        }
        order = if descending {
            SortOrder::Descending
        } else {
            SortOrder::Ascending
        };
    }
    let mut kinds: Vec<&str> = q.all("type").collect();
    kinds.sort_unstable();
    kinds.dedup();
    if let Some(bad) = kinds
        .iter()
        .find(|k| !matches!(**k, "cloudify_event" | "cloudify_log"))
    {
        return Err(ApiError::bad_request(format!(
            "type {bad:?}: expected cloudify_event or cloudify_log"
        )));
    }
    let mut query = EventQuery {
        execution_id: q.get("execution_id").map(str::to_owned),
        deployment_id: q.get("deployment_id").map(str::to_owned),
        node_instance_id: q.get("node_instance_id").map(str::to_owned),
        event_types: q.all("event_type").map(str::to_owned).collect(),
        levels: q.all("level").map(str::to_owned).collect(),
        kind: match kinds.as_slice() {
            [one] => Some((*one).to_owned()),
            _ => None,
        },
        text: q
            .get("message.text")
            .map(|t| t.replace(['*', '%'], " "))
            .filter(|t| !t.trim().is_empty()),
        ..EventQuery::default()
    };
    if let Some(range) = q.get("_range") {
        let mut parts = range.splitn(3, ',');
        let field = parts.next().unwrap_or_default();
        if !matches!(field, "@timestamp" | "timestamp" | "reported_timestamp") {
            return Err(ApiError::bad_request(format!(
                "_range: events range over @timestamp only, not {field:?}"
            )));
        }
        let bound = |s: Option<&str>| -> ApiResult<Option<String>> {
            match s.map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(t) => humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                    .map(|t| Some(humantime::format_rfc3339_millis(t).to_string()))
                    .map_err(|_| ApiError::bad_request(format!("_range: {t:?} is not a time"))),
            }
        };
        query.since = bound(parts.next())?;
        query.until = bound(parts.next())?;
    }
    let include: Option<Vec<String>> = q.get("_include").map(|s| {
        s.split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let body = gw
        .blocking(move |gw| {
            // Events are listed within what the tenant owns: its execution or deployment.
            let execution = match &query.execution_id {
                Some(e) => gw.store.execution(e)?,
                None => None,
            };
            let deployment = match (&execution, &query.execution_id, &query.deployment_id) {
                (Some(e), _, _) => Some(e.deployment_id.clone()),
                (None, Some(_), _) => None,
                (None, None, Some(d)) => Some(d.clone()),
                (None, None, None) => {
                    return Err(ApiError::bad_request(
                        "list events of an execution or a deployment: give execution_id or deployment_id",
                    ));
                }
            };
            let Some(deployment) = deployment.filter(|d| owns(gw, Kind::Deployment, d, &tenant).unwrap_or(false)) else {
                return Ok(list_body(Vec::new(), 0, size, offset));
            };
            if let Some(execution) = &execution {
                wait_for_the_end_event(gw, execution);
            }
            let blueprint = gw.store.deployment(&deployment)?.map(|d| d.blueprint_id);
            let page = gw.events.query(&query, order, offset, size)?;
            let mut items = Vec::with_capacity(page.records.len());
            for r in &page.records {
                let item = event_json(r, blueprint.as_deref());
                items.push(match &include {
                    Some(fields) => {
                        let mut o = serde_json::Map::new();
                        for f in fields {
                            let v = item.get(f).cloned().ok_or_else(|| {
                                ApiError::invalid("no_such_include_field_error", format!("{f} is not a field of events"))
                            })?;
                            o.insert(f.clone(), v);
                        }
                        Value::Object(o)
                    }
                    None => item,
                });
            }
            Ok(list_body(items, page.total as usize, size, offset))
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, body))
}
