//! Version, status, config, the OpenAPI document, health and metrics.

use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;

use crate::error::{ApiError, ApiResult};
use crate::{Gateway, Reply, Request};

pub async fn healthz(_gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    Ok(Reply::Json(StatusCode::OK, json!({"status": "OK"})))
}

/// Ready when the state store answers.
pub async fn readyz(gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    match gw.blocking(|gw| Ok(gw.store.blueprints()?)).await {
        Ok(_) => Ok(Reply::Json(StatusCode::OK, json!({"status": "OK"}))),
        Err(e) => Err(ApiError::unavailable(format!("not ready: {}", e.message))),
    }
}

pub async fn metrics(gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    Ok(Reply::Text(
        "text/plain; version=0.0.4",
        gw.metrics.render(),
    ))
}

pub async fn version(_gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    Ok(Reply::Json(
        StatusCode::OK,
        json!({
            "version": "7.0.5",
            "edition": "community",
            "build": null,
            "date": null,
            "commit": null,
            "distribution": "drover",
            "distro_release": env!("CARGO_PKG_VERSION"),
        }),
    ))
}

pub async fn status(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let store_ok = gw.blocking(|gw| Ok(gw.store.blueprints()?)).await.is_ok();
    let summary = req.query.flag("summary")?;
    let service = |ok: bool| json!({"status": if ok { "Active" } else { "Inactive" }, "is_remote": false, "extra_info": {}});
    let services = if summary {
        json!({})
    } else {
        json!({"State store": service(store_ok), "REST gateway": service(true)})
    };
    Ok(Reply::Json(
        StatusCode::OK,
        json!({"status": if store_ok { "OK" } else { "Fail" }, "services": services}),
    ))
}

/// The limits the client checks a blueprint folder against before uploading it.
pub async fn config(gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    let c = &gw.config;
    Ok(Reply::Json(
        StatusCode::OK,
        json!({
            "blueprint_folder_max_size_mb": {"value": c.archive_limits.max_unpacked_bytes / 1_000_000},
            "blueprint_folder_max_files": {"value": c.archive_limits.max_entries},
        }),
    ))
}

pub async fn openapi(_gw: Arc<Gateway>, _req: Request) -> ApiResult<Reply> {
    let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI)
        .map_err(|e| ApiError::internal(format!("openapi.json: {e}")))?;
    Ok(Reply::Json(StatusCode::OK, doc))
}
