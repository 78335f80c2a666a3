//! drover's REST gateway: Cloudify's REST API v3.1, closely enough that Cloudify's own Python
//! REST client works against it.
//!
//! [`Gateway`] holds the backends: the state store and the event index (read directly), the
//! workflow service behind the [`Workflows`] trait (gRPC, or an in-process engine), and the
//! gateway's own [`Registry`] (which tenant owns what, tokens). Secrets are in the state store,
//! where the engine's `get_secret` reads them. [`filter`] is the warp
//! filter that serves it; `routes::ROUTES` is the one table of what it serves, which the
//! OpenAPI document (`openapi.json`, served at `/api/v3.1/openapi.json`) must match.
//!
//! Replicas: the gateway keeps no request state in memory, but the registry is a file under
//! the data directory (shared by the processes under a file lock, reloaded when another one
//! changed it), as are uploaded blueprints, so replicas on one machine share that directory;
//! replicas on several machines need ownership and tokens in the state store too (not done).

mod api;
pub mod archive;
pub mod auth;
pub mod error;
mod metrics;
pub mod query;
pub mod registry;
pub mod routes;
pub mod workflows;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use drover_store::{EventIndex, StateStore};
use futures_util::{Stream, StreamExt};
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode};

pub use error::{ApiError, ApiResult};
pub use registry::{FileRegistry, Registry};
pub use workflows::{GrpcWorkflows, LocalWorkflows, WorkflowError, Workflows};

/// The OpenAPI document of what the gateway serves.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Settings of a gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: auth::Credentials,
    /// Where uploaded blueprints are unpacked (`blueprints/<id>/`) and the registry
    /// (ownership, tokens) lives.
    pub data_dir: PathBuf,
    /// Largest request body (a blueprint archive), in bytes.
    pub max_archive_bytes: u64,
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: u64,
    pub archive_limits: archive::Limits,
    /// How blueprints are read (spec mirror, resolver rules); inputs are per deployment.
    pub dsl: drover_dsl::Options,
}

impl Config {
    pub fn new(data_dir: PathBuf, admin: auth::Credentials) -> Config {
        Config {
            admin,
            data_dir,
            max_archive_bytes: 64 << 20,
            max_json_bytes: 1 << 20,
            archive_limits: archive::Limits::default(),
            dsl: drover_dsl::Options::default(),
        }
    }
}

/// The gateway's backends and settings.
pub struct Gateway {
    pub store: Arc<dyn StateStore>,
    pub events: Arc<dyn EventIndex>,
    pub workflows: Arc<dyn Workflows>,
    pub registry: Arc<dyn Registry>,
    pub config: Config,
    metrics: metrics::Metrics,
}

impl Gateway {
    pub fn new(
        store: Arc<dyn StateStore>,
        events: Arc<dyn EventIndex>,
        workflows: Arc<dyn Workflows>,
        registry: Arc<dyn Registry>,
        config: Config,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            store,
            events,
            workflows,
            registry,
            config,
            metrics: metrics::Metrics::default(),
        })
    }

    /// Runs synchronous backend calls (store, registry, files) off the async workers.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Gateway) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let gw = self.clone();
        tokio::task::spawn_blocking(move || f(&gw))
            .await
            .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
    }
}

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    Json(StatusCode, serde_json::Value),
    Text(&'static str, String),
    Empty(StatusCode),
}

/// A request as handlers see it.
pub struct Request {
    /// The path's `{…}` parameters, in order.
    pub params: Vec<String>,
    pub query: query::Query,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set on authenticated routes.
    pub caller: Option<auth::Caller>,
}

impl Request {
    /// The caller of an authenticated route.
    pub fn caller(&self) -> &auth::Caller {
        self.caller
            .as_ref()
            .expect("the router authenticates before calling a handler of an authenticated route")
    }

    /// The JSON body as `T`; a missing body is `{}`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> ApiResult<T> {
        let body: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// The warp filter serving the gateway: every failure is a reply in Cloudify's shape (it
/// rejects only when the connection's body cannot be read at all).
pub fn filter(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query, headers, body| {
                let gateway = gateway.clone();
                let body: BodyStream =
                    Box::pin(StreamExt::map(body, |chunk: Result<_, warp::Error>| {
                        chunk.map(|mut buf| {
                            let n = bytes::Buf::remaining(&buf);
                            bytes::Buf::copy_to_bytes(&mut buf, n)
                        })
                    }));
                async move {
                    let path = path.as_str().to_owned();
                    handle(gateway, method, path, query, headers, body).await
                }
            },
        )
}

async fn handle(
    gw: Arc<Gateway>,
    method: Method,
    path: String,
    raw_query: String,
    headers: HeaderMap,
    body: BodyStream,
) -> warp::reply::Response {
    let started = std::time::Instant::now();
    let (pattern, result) = match routes::find(&method, &path) {
        Ok((route, params)) => (
            route.path,
            dispatch(&gw, route, params, &raw_query, headers, body).await,
        ),
        Err(e) => ("(unrouted)", Err(e)),
    };
    let response = match result {
        Ok(reply) => into_response(reply),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(%method, path = pattern, error = %e, "request failed");
            } else {
                tracing::debug!(%method, path = pattern, error = %e, "request refused");
            }
            into_response(Reply::Json(e.status, e.body()))
        }
    };
    gw.metrics
        .observe(&method, pattern, response.status(), started.elapsed());
    response
}

async fn dispatch(
    gw: &Arc<Gateway>,
    route: &routes::Route,
    params: Vec<String>,
    raw_query: &str,
    headers: HeaderMap,
    body: BodyStream,
) -> ApiResult<Reply> {
    let query = query::Query::parse(raw_query)?;
    let caller = if route.auth {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let registry = gw.registry.clone();
        let admin = gw.config.admin.clone();
        let headers = headers.clone();
        Some(
            tokio::task::spawn_blocking(move || {
                auth::authenticate(&headers, &admin, registry.as_ref(), &now)
            })
            .await
            .map_err(|e| ApiError::internal(format!("auth task failed: {e}")))??,
        )
    } else {
        None
    };
    let limit = if route.archive {
        gw.config.max_archive_bytes
    } else {
        gw.config.max_json_bytes
    };
    let body = read_body(&headers, body, limit).await?;
    let request = Request {
        params,
        query,
        headers,
        body,
        caller,
    };
    (route.handler)(gw.clone(), request).await
}

/// Reads a body, refusing it as soon as it passes `limit` (whether or not it said its length).
async fn read_body(headers: &HeaderMap, mut body: BodyStream, limit: u64) -> ApiResult<Bytes> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large_error",
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn into_response(reply: Reply) -> warp::reply::Response {
    use warp::Reply as _;
    match reply {
        Reply::Json(status, value) => {
            warp::reply::with_status(warp::reply::json(&value), status).into_response()
        }
        Reply::Text(content_type, text) => {
            warp::reply::with_header(text, "content-type", content_type).into_response()
        }
        Reply::Empty(status) => status.into_response(),
    }
}
