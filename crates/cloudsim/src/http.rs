//! The HTTP face of the simulated cloud: Keystone v3 password auth, the Nova v2.1 calls drover
//! uses, and `/_sim/stats`. Every API request waits `latency_ms`; compute requests then go
//! through the rate limit (429 + Retry-After), injected 500/503s and the token check, in that
//! order.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::{Cloud, CreateError, CreateRequest};
use crate::config::SimConfig;

/// The one token this cloud issues (tokens are checked, not scoped or expired).
const TOKEN: &str = "cloudsim-token";
/// The path of the compute endpoint the catalog advertises.
pub const COMPUTE_PATH: &str = "/compute/v2.1";
/// Nova's default page size.
const MAX_LIMIT: usize = 1000;

struct Sim {
    config: SimConfig,
    /// `http://host:port` as clients reach this server, for the catalog.
    public_url: String,
    cloud: Mutex<Cloud>,
    limiter: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl Sim {
    fn cloud(&self) -> MutexGuard<'_, Cloud> {
        self.cloud.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Shared = Arc<Sim>;

/// The simulated cloud's routes; `public_url` is the `http://host:port` clients use.
pub fn router(config: SimConfig, public_url: String) -> Router {
    let limiter = config
        .rate_limit_rps
        .and_then(NonZeroU32::new)
        .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
    let sim = Arc::new(Sim {
        cloud: Mutex::new(Cloud::new(config.clone())),
        config,
        public_url,
        limiter,
        clock: DefaultClock::default(),
    });
    let compute = Router::new()
        .route("/servers", post(create_server))
        .route("/servers/detail", get(list_servers))
        .route("/servers/{id}", get(show_server).delete(delete_server))
        .route_layer(middleware::from_fn_with_state(sim.clone(), compute_gate));
    Router::new()
        .route("/v3/auth/tokens", post(issue_token))
        .nest(COMPUTE_PATH, compute)
        .layer(middleware::from_fn_with_state(sim.clone(), latency))
        .route("/_sim/stats", get(stats))
        .with_state(sim)
}

async fn latency(State(sim): State<Shared>, request: Request, next: Next) -> Response {
    if sim.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.latency_ms)).await;
    }
    next.run(request).await
}

/// Rate limit, injected errors and authentication, before any compute handler.
async fn compute_gate(
    State(sim): State<Shared>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &sim.limiter
        && let Err(not_until) = limiter.check()
    {
        sim.cloud().count_rate_limited();
        let wait = not_until.wait_time_from(sim.clock.now());
        // Retry-After is whole seconds; round up so a client that obeys it is never early.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = nova_error(
            StatusCode::TOO_MANY_REQUESTS,
            "overLimit",
            "This request was rate-limited.",
        );
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
        return response;
    }
    if sim.cloud().roll_error() {
        let status = if rand::random::<bool>() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return nova_error(status, "computeFault", "Injected fault: please try again.");
    }
    if headers.get("x-auth-token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return nova_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The request you have made requires authentication.",
        );
    }
    next.run(request).await
}

/// Nova's error body: `{"<kind>": {"code": …, "message": …}}`.
fn nova_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ kind: { "code": status.as_u16(), "message": message } })),
    )
        .into_response()
}

fn lost_response() -> Response {
    nova_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "computeFault",
        "Injected fault: the response was lost.",
    )
}

#[derive(Deserialize)]
struct AuthRequest {
    auth: Auth,
}

#[derive(Deserialize)]
struct Auth {
    identity: Identity,
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    password: Option<PasswordMethod>,
}

#[derive(Deserialize)]
struct PasswordMethod {
    user: PasswordUser,
}

#[derive(Deserialize)]
struct PasswordUser {
    name: String,
    password: String,
}

async fn issue_token(State(sim): State<Shared>, body: Option<Json<AuthRequest>>) -> Response {
    let Some(Json(AuthRequest { auth })) = body else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "Expecting to find auth in the request body.",
        );
    };
    let Some(password) = auth
        .identity
        .password
        .filter(|_| auth.identity.methods.iter().any(|m| m == "password"))
    else {
        return keystone_error(
            StatusCode::UNAUTHORIZED,
            "Only the password method is supported.",
        );
    };
    if password.user.name != sim.config.user || password.user.password != sim.config.password {
        return keystone_error(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        );
    }
    let project = auth
        .scope
        .as_ref()
        .and_then(|s| s.pointer("/project/name"))
        .and_then(Value::as_str);
    if project != Some(sim.config.project.as_str()) {
        return keystone_error(
            StatusCode::UNAUTHORIZED,
            "The token must be scoped to this cloud's project.",
        );
    }
    let body = json!({"token": {
        "methods": ["password"],
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "project": {"id": sim.config.project, "name": sim.config.project, "domain": {"id": "default", "name": "Default"}},
        "user": {"id": sim.config.user, "name": sim.config.user, "domain": {"id": "default", "name": "Default"}},
        "catalog": [{
            "type": "compute",
            "name": "nova",
            "endpoints": [{
                "interface": "public",
                "region": "RegionOne",
                "region_id": "RegionOne",
                "url": format!("{}{COMPUTE_PATH}", sim.public_url),
            }],
        }],
    }});
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-subject-token", HeaderValue::from_static(TOKEN));
    response
}

fn keystone_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "title": status.canonical_reason()}}))).into_response()
}

#[derive(Deserialize)]
struct CreateBody {
    server: ServerBody,
}

#[derive(Deserialize)]
struct ServerBody {
    name: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    min_count: Option<usize>,
    max_count: Option<usize>,
}

async fn create_server(State(sim): State<Shared>, body: Option<Json<CreateBody>>) -> Response {
    let Some(Json(CreateBody { server })) = body else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Invalid input: expected {\"server\": {\"name\": …}}.",
        );
    };
    let min_count = server.min_count.unwrap_or(1);
    let request = CreateRequest {
        name: server.name,
        metadata: server.metadata,
        min_count,
        max_count: server.max_count.unwrap_or(min_count),
    };
    let mut cloud = sim.cloud();
    match cloud.create(request, Instant::now()) {
        Ok(ids) => {
            if cloud.roll_lost_response() {
                return lost_response();
            }
            let id = &ids[0];
            let body = json!({"server": {
                "id": id,
                "links": [{"rel": "self", "href": format!("{}{COMPUTE_PATH}/servers/{id}", sim.public_url)}],
                "adminPass": "cloudsim",
            }});
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(CreateError::BadRequest(message)) => {
            nova_error(StatusCode::BAD_REQUEST, "badRequest", &message)
        }
        Err(CreateError::Quota {
            requested,
            used,
            quota,
        }) => nova_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "Quota exceeded for instances: Requested {requested}, but already used {used} of {quota} instances"
            ),
        ),
    }
}

async fn show_server(State(sim): State<Shared>, Path(id): Path<String>) -> Response {
    match sim.cloud().show(&id, Instant::now()) {
        Some(server) => Json(json!({ "server": server })).into_response(),
        None => nova_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            &format!("Instance {id} could not be found."),
        ),
    }
}

async fn delete_server(State(sim): State<Shared>, Path(id): Path<String>) -> Response {
    let mut cloud = sim.cloud();
    if !cloud.delete(&id) {
        return nova_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            &format!("Instance {id} could not be found."),
        );
    }
    if cloud.roll_lost_response() {
        return lost_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Query parameters of `GET /servers/detail`: `limit`, `marker`, and `metadata.KEY=VALUE`
/// filters (every one must match).
async fn list_servers(
    State(sim): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut limit = MAX_LIMIT;
    let mut marker = None;
    let mut metadata = BTreeMap::new();
    for (name, value) in params {
        if let Some(key) = name.strip_prefix("metadata.") {
            metadata.insert(key.to_owned(), value);
        } else if name == "limit" {
            match value.parse::<usize>() {
                Ok(n) => limit = n.clamp(1, MAX_LIMIT),
                Err(_) => {
                    return nova_error(
                        StatusCode::BAD_REQUEST,
                        "badRequest",
                        &format!("limit {value:?} is not a number"),
                    );
                }
            }
        } else if name == "marker" {
            marker = Some(value);
        }
    }
    let listed = sim
        .cloud()
        .list(&metadata, marker.as_deref(), limit, Instant::now());
    match listed {
        Ok((servers, next)) => {
            let mut body = json!({ "servers": servers });
            if let Some(next) = next {
                // The link carries the page only: a client repeats its own filters.
                let href = format!(
                    "{}{COMPUTE_PATH}/servers/detail?limit={limit}&marker={next}",
                    sim.public_url
                );
                body["servers_links"] = json!([{"rel": "next", "href": href}]);
            }
            Json(body).into_response()
        }
        Err(message) => nova_error(StatusCode::BAD_REQUEST, "badRequest", &message),
    }
}

async fn stats(State(sim): State<Shared>) -> Response {
    Json(sim.cloud().stats()).into_response()
}
