//! `/secrets`: per-tenant values that blueprints read with `get_secret`, kept in the state
//! store, where the engine evaluating `get_secret` reads them. A value appears only in the
//! answer to `GET /secrets/<key>` (hidden there too when `is_hidden_value`), never in lists or
//! logs.

use std::sync::Arc;

use drover_store::Secret;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::{now, tenant_fields};
use crate::error::{ApiError, ApiResult};
use crate::query::ListParams;
use crate::{Gateway, Reply, Request};

fn secret_json(s: &Secret, tenant: &str, with_value: bool) -> Value {
    let mut o = serde_json::Map::new();
    for (k, v) in [
        ("key", json!(s.key)),
        ("created_at", json!(s.created_at)),
        ("updated_at", json!(s.updated_at)),
        ("is_hidden_value", json!(s.is_hidden_value)),
        ("schema", Value::Null),
        ("provider_name", Value::Null),
        ("provider_options", Value::Null),
    ] {
        o.insert(k.into(), v);
    }
    if with_value {
        o.insert("value".into(), json!(s.value));
    }
    tenant_fields(&mut o, tenant);
    o.insert("visibility".into(), json!(s.visibility));
    Value::Object(o)
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let params = ListParams::from_query(&req.query, &[])?;
    let items = gw
        .blocking(move |gw| {
            Ok(gw
                .store
                .secrets(&tenant)?
                .iter()
                .map(|s| secret_json(s, &tenant, false))
                .collect())
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.apply(items)?))
}

pub async fn get(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let key = req.params[0].clone();
    let s = gw
        .blocking(move |gw| {
            let s = gw
                .store
                .secret(&tenant, &key)?
                .ok_or_else(|| ApiError::not_found("Secret", &key))?;
            Ok(secret_json(&s, &tenant, !s.is_hidden_value))
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, s))
}

/// The body of `PUT /secrets/<key>`. `schema` and the provider fields must be null: drover
/// keeps values itself and does not validate them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
    #[serde(default)]
    update_if_exists: bool,
    #[serde(default)]
    is_hidden_value: bool,
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    provider_name: Option<String>,
    #[serde(default)]
    provider_options: Option<Value>,
}

pub async fn put(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let key = req.params[0].clone();
    let body: PutBody = req.json()?;
    if body.schema.is_some() || body.provider_name.is_some() || body.provider_options.is_some() {
        return Err(ApiError::bad_request(
            "secret schemas and providers are not supported",
        ));
    }
    let visibility = body.visibility.unwrap_or_else(|| "tenant".to_owned());
    if !matches!(visibility.as_str(), "private" | "tenant" | "global") {
        return Err(ApiError::bad_request(format!(
            "visibility {visibility:?}: expected private, tenant or global"
        )));
    }
    let s = gw
        .blocking(move |gw| {
            let existing = gw.store.secret(&tenant, &key)?;
            if existing.is_some() && !body.update_if_exists {
                return Err(ApiError::conflict(format!(
                    "secret with key {key} already exists on tenant {tenant}"
                )));
            }
            let time = now();
            let secret = Secret {
                key: key.clone(),
                value: body.value,
                created_at: existing.map_or_else(|| time.clone(), |e| e.created_at),
                updated_at: time,
                visibility,
                is_hidden_value: body.is_hidden_value,
            };
            gw.store.put_secret(&tenant, &secret)?;
            Ok(secret_json(&secret, &tenant, false))
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, s))
}

pub async fn delete(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let key = req.params[0].clone();
    gw.blocking(move |gw| {
        if gw.store.delete_secret(&tenant, &key)? {
            Ok(())
        } else {
            Err(ApiError::not_found("Secret", &key))
        }
    })
    .await?;
    Ok(Reply::Empty(StatusCode::NO_CONTENT))
}
