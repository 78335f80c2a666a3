//! The handlers, one module per resource, and what they share: ownership checks (a resource of
//! another tenant is "not found") and the fields every Cloudify resource carries.

pub mod blueprints;
pub mod deployments;
pub mod events;
pub mod executions;
pub mod manager;
pub mod nodes;
pub mod secrets;
pub mod tokens;

use drover_model::Deployment;
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::error::{ApiError, ApiResult};
use crate::registry::{Kind, RegistryError};

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "gateway registry failed");
        ApiError::internal(format!("gateway registry: {e}"))
    }
}

/// The time now, as Cloudify writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Fields every tenant resource carries.
pub fn tenant_fields(object: &mut Map<String, Value>, tenant: &str) {
    for (k, v) in [
        ("visibility", json!("tenant")),
        ("tenant_name", json!(tenant)),
        ("resource_availability", json!("tenant")),
        ("private_resource", json!(false)),
        ("created_by", json!("admin")),
    ] {
        object.entry(k).or_insert(v);
    }
}

/// Whether `tenant` owns the resource.
pub fn owns(gw: &Gateway, kind: Kind, id: &str, tenant: &str) -> ApiResult<bool> {
    Ok(gw.registry.owner(kind, id)?.as_deref() == Some(tenant))
}

/// A deployment of the tenant; another tenant's is not found.
pub fn owned_deployment(gw: &Gateway, tenant: &str, id: &str) -> ApiResult<Deployment> {
    if !owns(gw, Kind::Deployment, id, tenant)? {
        return Err(ApiError::not_found("Deployment", id));
    }
    gw.store
        .deployment(id)?
        .ok_or_else(|| ApiError::not_found("Deployment", id))
}

/// The deployments a list request covers: the one named by `deployment_id`, or all the
/// tenant's; a deployment of another tenant covers nothing.
pub fn deployments_in_scope(
    gw: &Gateway,
    tenant: &str,
    deployment_id: Option<&str>,
) -> ApiResult<Vec<String>> {
    let owned = gw.registry.owned(Kind::Deployment, tenant)?;
    Ok(match deployment_id {
        Some(id) => owned.into_iter().filter(|d| d == id).collect(),
        None => owned,
    })
}

/// Serializes a model value into a JSON object.
pub fn object<T: serde::Serialize>(value: &T) -> ApiResult<Map<String, Value>> {
    match serde_json::to_value(value) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::internal("expected a JSON object")),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
