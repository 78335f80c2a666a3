//! `/deployments`: create (synchronous: the blueprint is planned with the inputs and the
//! deployment with its node instances exists when this answers 201), list, get, outputs,
//! delete.

use std::sync::Arc;

use drover_model::{Deployment, Execution, ExecutionStatus, Map};
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::{deployments_in_scope, owned_deployment, owns, tenant_fields};
use crate::error::{ApiError, ApiResult};
use crate::query::ListParams;
use crate::registry::Kind;
use crate::workflows::{WorkflowError, status_name};
use crate::{Gateway, Reply, Request};

/// The body of `PUT /deployments/<id>`. Fields drover does not act on are accepted (the client
/// sends them) and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    blueprint_id: String,
    #[serde(default)]
    inputs: Option<Map>,
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default, rename = "skip_plugins_validation")]
    _skip_plugins_validation: Option<bool>,
    #[serde(default, rename = "runtime_only_evaluation")]
    _runtime_only_evaluation: Option<bool>,
    #[serde(default, rename = "site_name")]
    _site_name: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<Vec<Map>>,
}

/// Maps a workflow-service error to Cloudify's error for `kind`.
pub fn workflow_error(e: WorkflowError, kind: &str, id: &str) -> ApiError {
    match e {
        WorkflowError::NotFound(_) => ApiError::not_found(kind, id),
        WorkflowError::Invalid(m) => ApiError::bad_request(m),
        WorkflowError::Conflict(m) => ApiError::conflict(m),
        WorkflowError::Unavailable(m) => {
            tracing::error!(error = %m, "workflow service failed");
            ApiError::unavailable(m)
        }
    }
}

/// Cloudify's summary of the latest execution.
fn latest_status(e: &Execution) -> &'static str {
    match e.status {
        ExecutionStatus::Terminated => "completed",
        ExecutionStatus::Failed => "failed",
        ExecutionStatus::Cancelled => "cancelled",
        _ => "in_progress",
    }
}

pub fn deployment_json(d: &Deployment, executions: &[Execution], tenant: &str) -> Value {
    let latest = executions.last();
    // Installed after a successful install, until a successful uninstall.
    let active = executions
        .iter()
        .filter(|e| e.status == ExecutionStatus::Terminated)
        .filter_map(|e| match e.workflow_id.as_str() {
            "install" => Some(true),
            "uninstall" => Some(false),
            _ => None,
        })
        .next_back()
        .unwrap_or(false);
    let workflows: Vec<Value> = d
        .plan
        .workflows
        .iter()
        .map(|(name, w)| {
            json!({
                "name": name, "parameters": w.parameters, "plugin": w.plugin,
                "operation": w.operation, "is_available": true, "availability_rules": null,
                "is_cascading": w.is_cascading.unwrap_or(false),
            })
        })
        .collect();
    let scaling_groups: serde_json::Map<String, Value> = d
        .plan
        .scaling_groups
        .iter()
        .map(|(name, g)| {
            (
                name.clone(),
                json!({"members": g.members, "properties": g.properties}),
            )
        })
        .collect();
    let mut o = serde_json::Map::new();
    for (k, v) in [
        ("id", json!(d.id)),
        ("display_name", json!(d.id)),
        ("blueprint_id", json!(d.blueprint_id)),
        ("created_at", json!(d.created_at)),
        (
            "updated_at",
            json!(latest.map_or(&d.created_at, |e| &e.created_at)),
        ),
        ("description", json!(d.plan.description)),
        ("site_name", Value::Null),
        ("workflows", json!(workflows)),
        ("inputs", json!(d.inputs)),
        ("outputs", json!(d.plan.outputs)),
        ("capabilities", json!(d.plan.capabilities)),
        ("labels", json!([])),
        ("policy_types", json!(d.plan.policy_types)),
        ("policy_triggers", json!(d.plan.policy_triggers)),
        ("groups", json!(d.plan.groups)),
        ("scaling_groups", Value::Object(scaling_groups)),
        ("runtime_only_evaluation", json!(false)),
        ("deployment_groups", json!([])),
        (
            "installation_status",
            json!(if active { "active" } else { "inactive" }),
        ),
        (
            "deployment_status",
            json!(match latest.map(|e| e.status) {
                Some(ExecutionStatus::Failed) => "requires_attention",
                Some(s) if !s.is_final() => "in_progress",
                _ => "good",
            }),
        ),
        ("sub_services_status", Value::Null),
        ("sub_environments_status", Value::Null),
        ("sub_services_count", json!(0)),
        ("sub_environments_count", json!(0)),
        ("environment_type", json!("")),
        ("latest_execution_id", json!(latest.map(|e| &e.id))),
        (
            "latest_execution_workflow_id",
            json!(latest.map(|e| &e.workflow_id)),
        ),
        ("latest_execution_status", json!(latest.map(latest_status))),
        ("latest_execution_total_operations", Value::Null),
        ("latest_execution_finished_operations", Value::Null),
        ("unavailable_instances", json!(0)),
        ("drifted_instances", json!(0)),
    ] {
        o.insert(k.into(), v);
    }
    tenant_fields(&mut o, tenant);
    Value::Object(o)
}

fn json_of(gw: &Gateway, d: &Deployment, tenant: &str) -> ApiResult<Value> {
    Ok(deployment_json(d, &gw.store.executions(&d.id)?, tenant))
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let params = ListParams::from_query(&req.query, &[])?;
    let items = gw
        .blocking(move |gw| {
            let mut items = Vec::new();
            for id in deployments_in_scope(gw, &tenant, None)? {
                if let Some(d) = gw.store.deployment(&id)? {
                    items.push(json_of(gw, &d, &tenant)?);
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
    let params = ListParams::from_query(&req.query, &["all_sub_deployments", "include_workdir"])?;
    let d = gw
        .blocking(move |gw| json_of(gw, &owned_deployment(gw, &tenant, &id)?, &tenant))
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.project(d)))
}

pub async fn outputs(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    {
        let (tenant, id) = (tenant.clone(), id.clone());
        gw.blocking(move |gw| owned_deployment(gw, &tenant, &id).map(|_| ()))
            .await?;
    }
    let outputs = gw
        .workflows
        .outputs(&id)
        .await
        .map_err(|e| workflow_error(e, "Deployment", &id))?;
    Ok(Reply::Json(
        StatusCode::OK,
        json!({"deployment_id": id, "outputs": outputs}),
    ))
}

pub async fn create(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    req.query.flag("async_create")?;
    let body: CreateBody = req.json()?;
    if let Some(v) = body.visibility.as_deref()
        && !matches!(v, "private" | "tenant" | "global")
    {
        return Err(ApiError::bad_request(format!(
            "visibility {v:?}: expected private, tenant or global"
        )));
    }
    if body.display_name.as_deref().is_some_and(|n| n.len() > 256) {
        return Err(ApiError::bad_request(
            "display_name is longer than 256 characters",
        ));
    }
    let inputs = body.inputs.unwrap_or_default();
    let blueprint_id = body.blueprint_id;
    let (plan, main) = {
        let (tenant, id, blueprint_id, inputs) = (
            tenant.clone(),
            id.clone(),
            blueprint_id.clone(),
            inputs.clone(),
        );
        gw.blocking(move |gw| {
            if !owns(gw, Kind::Blueprint, &blueprint_id, &tenant)? {
                return Err(ApiError::not_found("Blueprint", &blueprint_id));
            }
            let blueprint = gw
                .store
                .blueprint(&blueprint_id)?
                .ok_or_else(|| ApiError::not_found("Blueprint", &blueprint_id))?;
            let main =
                super::blueprints::blueprint_dir(gw, &blueprint_id).join(&blueprint.main_file_name);
            let options = drover_dsl::Options {
                inputs,
                ..gw.config.dsl.clone()
            };
            let plan = drover_dsl::plan_file(&main, &options).map_err(|e| {
                let code = if e.message.starts_with("required inputs have no value") {
                    "missing_required_deployment_input_error"
                } else if e
                    .location
                    .as_ref()
                    .is_some_and(|l| l.path.starts_with("inputs"))
                {
                    "unknown_deployment_input_error"
                } else {
                    "deployment_creation_error"
                };
                ApiError::invalid(code, e.to_string())
            })?;
            if gw.store.deployment(&id)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "deployment with id={id} already exists"
                )));
            }
            if let Some(owner) = gw.registry.claim(Kind::Deployment, &id, &tenant)? {
                return Err(ApiError::conflict(format!(
                    "deployment with id={id} already exists on tenant {owner}"
                )));
            }
            Ok((plan, main))
        })
        .await?
    };
    if let Err(e) = gw
        .workflows
        .create_deployment(&tenant, &id, &blueprint_id, &plan, &main, &inputs)
        .await
    {
        let release = id.clone();
        gw.blocking(move |gw| Ok(gw.registry.release(Kind::Deployment, &release)?))
            .await?;
        return Err(match e {
            WorkflowError::Invalid(m) => ApiError::invalid("deployment_creation_error", m),
            other => workflow_error(other, "Deployment", &id),
        });
    }
    tracing::info!(deployment = %id, blueprint = %blueprint_id, "deployment created");
    let d = gw
        .blocking(move |gw| json_of(gw, &owned_deployment(gw, &tenant, &id)?, &tenant))
        .await?;
    Ok(Reply::Json(StatusCode::CREATED, d))
}

pub async fn delete(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let force = req.query.flag("force")?;
    req.query.flag("delete_logs")?;
    req.query.flag("recursive")?;
    {
        let id = id.clone();
        gw.blocking(move |gw| {
            owned_deployment(gw, &tenant, &id)?;
            if let Some(e) = gw.store.executions(&id)?.iter().find(|e| !e.status.is_final()) {
                return Err(ApiError::invalid(
                    "dependent_exists_error",
                    format!("Can't delete deployment {id} - There are running or queued executions for this deployment. Running executions ids: {} ({})", e.id, status_name(e.status)),
                ));
            }
            let live = gw
                .store
                .node_instances(&id)?
                .into_iter()
                .filter(|i| !matches!(i.state.as_str(), "uninitialized" | "deleted"))
                .count();
            if live > 0 && !force {
                return Err(ApiError::invalid(
                    "dependent_exists_error",
                    format!("Can't delete deployment {id} - {live} node instances are live; uninstall first, or use force"),
                ));
            }
            Ok(())
        })
        .await?;
    }
    gw.workflows
        .delete_deployment(&id)
        .await
        .map_err(|e| workflow_error(e, "Deployment", &id))?;
    gw.blocking(move |gw| Ok(gw.registry.release(Kind::Deployment, &id)?))
        .await?;
    Ok(Reply::Empty(StatusCode::NO_CONTENT))
}
