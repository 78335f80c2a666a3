//! `/nodes` and `/node-instances`: nodes come from the deployment's plan, node instances from
//! the state store; a PATCH replaces runtime properties under optimistic concurrency (the
//! body's `version` must be the stored one: 409 otherwise).

use std::sync::Arc;

use drover_model::{Map, NodeInstance};
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::{deployments_in_scope, object, tenant_fields};
use crate::error::{ApiError, ApiResult};
use crate::query::ListParams;
use crate::{Gateway, Reply, Request};

/// Query keys that are not filters.
const NOT_FILTERS: &[&str] = &["evaluate_functions", "force"];

fn node_json(
    node: &drover_model::PlanNode,
    d: &drover_model::Deployment,
    instances: usize,
    tenant: &str,
) -> ApiResult<Value> {
    let mut o = object(node)?;
    let scalable = node.capabilities.scalable.properties;
    for (k, v) in [
        ("deployment_id", json!(d.id)),
        ("blueprint_id", json!(d.blueprint_id)),
        ("number_of_instances", json!(instances)),
        ("planned_number_of_instances", json!(node.instances.deploy)),
        ("deploy_number_of_instances", json!(node.instances.deploy)),
        ("actual_number_of_instances", json!(instances)),
        (
            "actual_planned_number_of_instances",
            json!(node.instances.deploy),
        ),
        ("min_number_of_instances", json!(scalable.min_instances)),
        ("max_number_of_instances", json!(scalable.max_instances)),
        ("unavailable_instances", json!(0)),
        ("drifted_instances", json!(0)),
    ] {
        o.insert(k.into(), v);
    }
    tenant_fields(&mut o, tenant);
    Ok(Value::Object(o))
}

pub fn instance_json(i: &NodeInstance, tenant: &str) -> ApiResult<Value> {
    let mut o = object(i)?;
    for (k, v) in [
        ("system_properties", json!({})),
        ("scaling_groups", json!(i.scaling_groups)),
        ("is_status_check_ok", json!(true)),
        ("has_configuration_drift", json!(false)),
    ] {
        o.insert(k.into(), v);
    }
    tenant_fields(&mut o, tenant);
    Ok(Value::Object(o))
}

pub async fn list_nodes(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let mut params = ListParams::from_query(&req.query, NOT_FILTERS)?;
    // `node_id` is the deprecated name of `id`.
    for (k, _) in params.filters.iter_mut() {
        if k == "node_id" {
            *k = "id".into();
        }
    }
    let deployment = req.query.get("deployment_id").map(str::to_owned);
    let items = gw
        .blocking(move |gw| {
            let mut items = Vec::new();
            for id in deployments_in_scope(gw, &tenant, deployment.as_deref())? {
                let Some(d) = gw.store.deployment(&id)? else {
                    continue;
                };
                let instances = gw.store.node_instances(&id)?;
                for node in &d.plan.nodes {
                    let n = instances.iter().filter(|i| i.node_id == node.id).count();
                    items.push(node_json(node, &d, n, &tenant)?);
                }
            }
            Ok(items)
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.apply(items)?))
}

pub async fn list_instances(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let params = ListParams::from_query(&req.query, NOT_FILTERS)?;
    let deployment = req.query.get("deployment_id").map(str::to_owned);
    let items = gw
        .blocking(move |gw| {
            let mut items = Vec::new();
            for id in deployments_in_scope(gw, &tenant, deployment.as_deref())? {
                for i in gw.store.node_instances(&id)? {
                    items.push(instance_json(&i, &tenant)?);
                }
            }
            Ok(items)
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.apply(items)?))
}

/// The tenant's node instance with this id (one lookup per deployment of the tenant).
fn find_instance(gw: &Gateway, tenant: &str, id: &str) -> ApiResult<NodeInstance> {
    for deployment in deployments_in_scope(gw, tenant, None)? {
        if let Some(i) = gw.store.node_instance(&deployment, id)? {
            return Ok(i);
        }
    }
    Err(ApiError::not_found("NodeInstance", id))
}

pub async fn get_instance(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let params = ListParams::from_query(&req.query, NOT_FILTERS)?;
    let item = gw
        .blocking(move |gw| instance_json(&find_instance(gw, &tenant, &id)?, &tenant))
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.project(item)))
}

/// The body of `PATCH /node-instances/<id>`. Relationships and system properties are accepted
/// (the client may send them) and not changed: workflows own them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    version: u64,
    #[serde(default)]
    runtime_properties: Option<Map>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default, rename = "system_properties")]
    _system_properties: Option<Map>,
    #[serde(default, rename = "relationships")]
    _relationships: Option<Vec<Value>>,
}

/// Cloudify's node instance states.
const STATES: &[&str] = &[
    "uninitialized",
    "initializing",
    "creating",
    "created",
    "configuring",
    "configured",
    "starting",
    "started",
    "stopping",
    "stopped",
    "deleting",
    "deleted",
];

pub async fn update_instance(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let force = req.query.flag("force")?;
    let body: UpdateBody = req.json()?;
    if let Some(s) = body.state.as_deref()
        && !STATES.contains(&s)
    {
        return Err(ApiError::bad_request(format!(
            "state {s:?} is not a node instance state"
        )));
    }
    let item = gw
        .blocking(move |gw| {
            let stored = find_instance(gw, &tenant, &id)?;
            if !force && stored.version != body.version {
                return Err(ApiError::conflict(format!(
                    "Node instance {id} was modified: version {} given, {} stored",
                    body.version, stored.version
                )));
            }
            let deployment = stored.deployment_id.clone();
            let mut next = stored;
            if let Some(props) = body.runtime_properties {
                next.runtime_properties = props;
            }
            if let Some(state) = body.state {
                next.state = state;
            }
            let updated = gw.store.update_node_instance(&deployment, &next)?;
            instance_json(&updated, &tenant)
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, item))
}
