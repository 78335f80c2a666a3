//! The one table of what the gateway serves: method, path pattern (`{name}` for a parameter,
//! as OpenAPI writes it), whether it needs authentication, and the handler. The router matches
//! requests against it, and a test checks it against the OpenAPI document both ways.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use warp::http::{Method, StatusCode};

use crate::api;
use crate::error::{ApiError, ApiResult};
use crate::{Gateway, Reply, Request};

type Handler = fn(Arc<Gateway>, Request) -> BoxFuture<'static, ApiResult<Reply>>;

pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub auth: bool,
    /// Takes a blueprint archive (the larger body limit).
    pub archive: bool,
    pub handler: Handler,
}

macro_rules! route {
    ($method:ident $path:literal, $handler:path) => {
        route!(@ $method $path, $handler, true, false)
    };
    ($method:ident $path:literal, $handler:path, public) => {
        route!(@ $method $path, $handler, false, false)
    };
    ($method:ident $path:literal, $handler:path, archive) => {
        route!(@ $method $path, $handler, true, true)
    };
    (@ $method:ident $path:literal, $handler:path, $auth:expr, $archive:expr) => {
        Route {
            method: Method::$method,
            path: $path,
            auth: $auth,
            archive: $archive,
            handler: |gw, req| Box::pin($handler(gw, req)),
        }
    };
}

/// Every route.
pub fn routes() -> &'static [Route] {
    static ROUTES: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        vec![
            route!(GET "/healthz", api::manager::healthz, public),
            route!(GET "/readyz", api::manager::readyz, public),
            route!(GET "/metrics", api::manager::metrics, public),
            route!(GET "/api/version", api::manager::version),
            route!(GET "/api/v3.1/version", api::manager::version),
            route!(GET "/api/v3.1/status", api::manager::status),
            route!(GET "/api/v3.1/config", api::manager::config),
            route!(GET "/api/v3.1/openapi.json", api::manager::openapi, public),
            route!(GET "/api/v3.1/blueprints", api::blueprints::list),
            route!(GET "/api/v3.1/blueprints/{blueprint_id}", api::blueprints::get),
            route!(PUT "/api/v3.1/blueprints/{blueprint_id}", api::blueprints::upload, archive),
            route!(DELETE "/api/v3.1/blueprints/{blueprint_id}", api::blueprints::delete),
            route!(GET "/api/v3.1/deployments", api::deployments::list),
            route!(GET "/api/v3.1/deployments/{deployment_id}", api::deployments::get),
            route!(PUT "/api/v3.1/deployments/{deployment_id}", api::deployments::create),
            route!(DELETE "/api/v3.1/deployments/{deployment_id}", api::deployments::delete),
            route!(GET "/api/v3.1/deployments/{deployment_id}/outputs", api::deployments::outputs),
            route!(GET "/api/v3.1/nodes", api::nodes::list_nodes),
            route!(GET "/api/v3.1/node-instances", api::nodes::list_instances),
            route!(GET "/api/v3.1/node-instances/{node_instance_id}", api::nodes::get_instance),
            route!(PATCH "/api/v3.1/node-instances/{node_instance_id}", api::nodes::update_instance),
            route!(GET "/api/v3.1/executions", api::executions::list),
            route!(POST "/api/v3.1/executions", api::executions::start),
            route!(GET "/api/v3.1/executions/{execution_id}", api::executions::get),
            route!(POST "/api/v3.1/executions/{execution_id}", api::executions::action),
            route!(GET "/api/v3.1/events", api::events::list),
            route!(GET "/api/v3.1/secrets", api::secrets::list),
            route!(GET "/api/v3.1/secrets/{secret_key}", api::secrets::get),
            route!(PUT "/api/v3.1/secrets/{secret_key}", api::secrets::put),
            route!(DELETE "/api/v3.1/secrets/{secret_key}", api::secrets::delete),
            route!(GET "/api/v3.1/tokens", api::tokens::list),
            route!(POST "/api/v3.1/tokens", api::tokens::create),
            route!(GET "/api/v3.1/tokens/{token_id}", api::tokens::get),
            route!(DELETE "/api/v3.1/tokens/{token_id}", api::tokens::delete),
        ]
    })
}

/// The route for a request and its path parameters (percent-decoded, checked as names); 404
/// when no pattern matches the path, 405 when one does but not for this method.
pub fn find(method: &Method, path: &str) -> ApiResult<(&'static Route, Vec<String>)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_matched = false;
    for route in routes() {
        let Some(raw) = matches(route.path, &segments) else {
            continue;
        };
        path_matched = true;
        if route.method != *method {
            continue;
        }
        let params = raw
            .into_iter()
            .map(|p| {
                let p = percent_decode(p)?;
                if crate::auth::valid_name(&p) {
                    Ok(p)
                } else {
                    Err(ApiError::bad_request(format!(
                        "invalid id {p:?}: use letters, digits, '_', '-' and '.', not starting with '.'"
                    )))
                }
            })
            .collect::<ApiResult<_>>()?;
        return Ok((route, params));
    }
    Err(if path_matched {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed_error",
            format!("{method} is not allowed on {path}"),
        )
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no such resource: {path}"),
        )
    })
}

fn matches<'a>(pattern: &str, segments: &[&'a str]) -> Option<Vec<&'a str>> {
    let parts: Vec<&str> = pattern.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if part.starts_with('{') {
            if segment.is_empty() {
                return None;
            }
            params.push(*segment);
        } else if part != segment {
            return None;
        }
    }
    Some(params)
}

fn percent_decode(s: &str) -> ApiResult<String> {
    crate::query::Query::parse(&format!("x={}", s.replace('+', "%2B").replace('&', "%26")))
        .map(|q| q.get("x").unwrap_or_default().to_owned())
}
