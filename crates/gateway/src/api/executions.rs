//! `/executions`: start (through the workflow service; 201 `pending`), list, get, and the
//! actions cancel, force-cancel, kill, resume and force-resume.

use std::sync::Arc;

use drover_model::{Execution, Map};
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::deployments::workflow_error;
use super::{deployments_in_scope, object, owned_deployment, owns, tenant_fields};
use crate::error::{ApiError, ApiResult};
use crate::query::{ListParams, parse_bool};
use crate::registry::Kind;
use crate::workflows::{WorkflowError, status_name};
use crate::{Gateway, Reply, Request};

pub fn execution_json(e: &Execution, blueprint_id: Option<&str>, tenant: &str) -> ApiResult<Value> {
    let mut o = object(e)?;
    let status = status_name(e.status);
    let started = (status != "pending").then_some(&e.created_at);
    for (k, v) in [
        ("status_display", json!(status)),
        ("blueprint_id", json!(blueprint_id)),
        ("deployment_display_name", json!(e.deployment_id)),
        ("started_at", json!(started)),
        ("scheduled_for", Value::Null),
        ("is_system_workflow", json!(false)),
        ("total_operations", Value::Null),
        ("finished_operations", Value::Null),
        ("allow_custom_parameters", json!(false)),
        ("execution_group_id", Value::Null),
        ("resume", json!(false)),
    ] {
        o.insert(k.into(), v);
    }
    tenant_fields(&mut o, tenant);
    Ok(Value::Object(o))
}

/// The tenant's execution with this id.
fn owned_execution(gw: &Gateway, tenant: &str, id: &str) -> ApiResult<Execution> {
    let e = gw
        .store
        .execution(id)?
        .ok_or_else(|| ApiError::not_found("Execution", id))?;
    if !owns(gw, Kind::Deployment, &e.deployment_id, tenant)? {
        return Err(ApiError::not_found("Execution", id));
    }
    Ok(e)
}

fn json_of(gw: &Gateway, e: &Execution, tenant: &str) -> ApiResult<Value> {
    let blueprint = gw
        .store
        .deployment(&e.deployment_id)?
        .map(|d| d.blueprint_id);
    execution_json(e, blueprint.as_deref(), tenant)
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    req.query.flag("_include_system_workflows")?;
    let params = ListParams::from_query(&req.query, &[])?;
    let deployment = req.query.get("deployment_id").map(str::to_owned);
    let items = gw
        .blocking(move |gw| {
            let mut items = Vec::new();
            for id in deployments_in_scope(gw, &tenant, deployment.as_deref())? {
                let blueprint = gw.store.deployment(&id)?.map(|d| d.blueprint_id);
                for e in gw.store.executions(&id)? {
                    items.push(execution_json(&e, blueprint.as_deref(), &tenant)?);
                }
            }
            Ok(items)
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.apply(items)?))
}

pub async fn get(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let params = ListParams::from_query(&req.query, &[])?;
    let e = gw
        .blocking(move |gw| json_of(gw, &owned_execution(gw, &tenant, &id)?, &tenant))
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.project(e)))
}

/// A flag the client sends as the string `"false"`/`"true"`, or a JSON boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

impl Flag {
    fn get(flag: &Option<Flag>, name: &str) -> ApiResult<bool> {
        match flag {
            None => Ok(false),
            Some(Flag::Bool(b)) => Ok(*b),
            Some(Flag::Text(t)) => parse_bool(t).ok_or_else(|| {
                ApiError::bad_request(format!("{name}: expected a boolean, got {t:?}"))
            }),
        }
    }
}

/// The body of `POST /executions`, as client 7.x sends it. The snapshot-restore and scheduling
/// fields must be null: drover does not do those.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    deployment_id: String,
    workflow_id: String,
    #[serde(default)]
    parameters: Option<Map>,
    #[serde(default)]
    allow_custom_parameters: Option<Flag>,
    #[serde(default)]
    force: Option<Flag>,
    #[serde(default)]
    dry_run: Option<Flag>,
    #[serde(default)]
    queue: Option<Flag>,
    #[serde(default)]
    scheduled_time: Option<String>,
    #[serde(default)]
    force_status: Option<String>,
    #[serde(default, rename = "wait_after_fail")]
    _wait_after_fail: Option<u64>,
    #[serde(default, rename = "created_by")]
    _created_by: Option<String>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<String>,
    #[serde(default, rename = "started_at")]
    _started_at: Option<String>,
    #[serde(default, rename = "ended_at")]
    _ended_at: Option<String>,
    #[serde(default, rename = "id")]
    _id: Option<String>,
    #[serde(default, rename = "is_system_workflow")]
    _is_system_workflow: Option<Flag>,
    #[serde(default, rename = "error")]
    _error: Option<String>,
}

pub async fn start(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let body: StartBody = req.json()?;
    if body.scheduled_time.is_some() || body.force_status.is_some() {
        return Err(ApiError::bad_request(
            "scheduled_time and force_status are not supported",
        ));
    }
    Flag::get(&body.allow_custom_parameters, "allow_custom_parameters")?;
    let force = Flag::get(&body.force, "force")?;
    let queue = Flag::get(&body.queue, "queue")?;
    let dry_run = Flag::get(&body.dry_run, "dry_run")?;
    let (deployment_id, workflow_id) = (body.deployment_id.clone(), body.workflow_id.clone());
    let blueprint = gw
        .blocking(move |gw| {
            let d = owned_deployment(gw, &tenant, &deployment_id)?;
            if !d.plan.workflows.contains_key(&workflow_id) {
                return Err(ApiError::invalid(
                    "nonexistent_workflow_error",
                    format!("Workflow {workflow_id} does not exist in deployment {deployment_id}"),
                ));
            }
            if !force && !queue
                && let Some(e) = gw.store.executions(&deployment_id)?.iter().find(|e| !e.status.is_final())
            {
                return Err(ApiError::invalid(
                    "existing_running_execution_error",
                    format!("The following executions are currently running for this deployment: {}. To execute this workflow anyway, pass \"force=true\" as a query parameter to this request", e.id),
                ));
            }
            Ok(d.blueprint_id)
        })
        .await?;
    let execution = gw
        .workflows
        .start_execution(
            &body.deployment_id,
            &body.workflow_id,
            body.parameters.unwrap_or_default(),
            dry_run,
        )
        .await
        .map_err(|e| match e {
            WorkflowError::Invalid(m) => ApiError::invalid("illegal_execution_parameters_error", m),
            other => workflow_error(other, "Deployment", &body.deployment_id),
        })?;
    tracing::info!(execution = %execution.id, workflow = %execution.workflow_id, deployment = %execution.deployment_id, "execution started");
    let tenant = req.caller().tenant.clone();
    Ok(Reply::Json(
        StatusCode::CREATED,
        execution_json(&execution, Some(&blueprint), &tenant)?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action: String,
}

pub async fn action(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let body: ActionBody = req.json()?;
    {
        let (tenant, id) = (tenant.clone(), id.clone());
        gw.blocking(move |gw| owned_execution(gw, &tenant, &id).map(|_| ()))
            .await?;
    }
    let result = match body.action.as_str() {
        "cancel" => gw.workflows.cancel_execution(&id, false).await,
        "force-cancel" | "kill" => gw.workflows.cancel_execution(&id, true).await,
        "resume" | "force-resume" => gw.workflows.resume_execution(&id).await,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown action {other:?}: expected cancel, force-cancel, kill, resume or force-resume"
            )));
        }
    };
    let execution = result.map_err(|e| match e {
        WorkflowError::Invalid(m) => ApiError::invalid("illegal_action_error", m),
        other => workflow_error(other, "Execution", &id),
    })?;
    let e = gw
        .blocking(move |gw| json_of(gw, &execution, &tenant))
        .await?;
    Ok(Reply::Json(StatusCode::OK, e))
}
