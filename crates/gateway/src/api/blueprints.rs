//! `/blueprints`: upload (multipart `params` + `blueprint_archive`, as client 7.x sends it, or
//! the legacy raw archive with query parameters), list, get, delete. An upload is parsed before
//! the answer: 201 `uploaded`, or 400 `invalid_blueprint_error`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use drover_store::Blueprint;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::{now, owns, tenant_fields};
use crate::archive::{self, safe_relative};
use crate::error::{ApiError, ApiResult};
use crate::query::{ListParams, parse_bool};
use crate::registry::Kind;
use crate::{Gateway, Reply, Request};

/// The upload's parameters (the multipart `params` JSON). Those drover does not act on are
/// accepted (the client sends them) and ignored: uploads are always synchronous, labels unused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    application_file_name: Option<String>,
    #[serde(default)]
    blueprint_archive_url: Option<String>,
    #[serde(default, rename = "async_upload")]
    _async_upload: Option<bool>,
    #[serde(default, rename = "skip_execution")]
    _skip_execution: Option<bool>,
    #[serde(default, rename = "labels")]
    _labels: Option<Vec<Value>>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<String>,
    #[serde(default, rename = "created_by")]
    _created_by: Option<String>,
    #[serde(default, rename = "state")]
    _state: Option<String>,
    #[serde(default, rename = "requirements")]
    _requirements: Option<Value>,
}

fn blueprint_json(b: &Blueprint, tenant: &str) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("id".into(), json!(b.id));
    o.insert("created_at".into(), json!(b.created_at));
    o.insert("updated_at".into(), json!(b.created_at));
    o.insert("main_file_name".into(), json!(b.main_file_name));
    o.insert("description".into(), json!(b.description));
    o.insert("plan".into(), b.plan.clone());
    o.insert("state".into(), json!("uploaded"));
    o.insert("labels".into(), json!([]));
    o.insert("upload_execution".into(), Value::Null);
    o.insert("requirements".into(), Value::Null);
    o.insert("error".into(), Value::Null);
    o.insert("error_traceback".into(), Value::Null);
    o.insert("is_hidden".into(), json!(false));
    tenant_fields(&mut o, tenant);
    Value::Object(o)
}

fn owned(gw: &Gateway, tenant: &str, id: &str) -> ApiResult<Blueprint> {
    if !owns(gw, Kind::Blueprint, id, tenant)? {
        return Err(ApiError::not_found("Blueprint", id));
    }
    gw.store
        .blueprint(id)?
        .ok_or_else(|| ApiError::not_found("Blueprint", id))
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let params = ListParams::from_query(&req.query, &[])?;
    let items = gw
        .blocking(move |gw| {
            let mut items = Vec::new();
            for id in gw.registry.owned(Kind::Blueprint, &tenant)? {
                if let Some(b) = gw.store.blueprint(&id)? {
                    items.push(blueprint_json(&b, &tenant));
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
    let b = gw
        .blocking(move |gw| owned(gw, &tenant, &id).map(|b| blueprint_json(&b, &tenant)))
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.project(b)))
}

pub async fn delete(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    req.query.flag("force")?;
    gw.blocking(move |gw| {
        owned(gw, &tenant, &id)?;
        for d in gw.store.deployments()? {
            if gw.store.deployment(&d)?.is_some_and(|d| d.blueprint_id == id) {
                return Err(ApiError::invalid(
                    "dependent_exists_error",
                    format!("Can't delete blueprint {id} - There exist deployments for this blueprint; deployment ids: {d}"),
                ));
            }
        }
        gw.store.delete_blueprint(&id)?;
        let dir = blueprint_dir(gw, &id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ApiError::internal(format!("removing {}: {e}", dir.display())))?;
        }
        gw.registry.release(Kind::Blueprint, &id)?;
        Ok(())
    })
    .await?;
    Ok(Reply::Empty(StatusCode::NO_CONTENT))
}

/// Where a blueprint's files are kept.
pub fn blueprint_dir(gw: &Gateway, id: &str) -> PathBuf {
    gw.config.data_dir.join("blueprints").join(id)
}

pub async fn upload(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let tenant = req.caller().tenant.clone();
    let id = req.params[0].clone();
    let (params, archive) = read_upload(&req).await?;
    if params.blueprint_archive_url.is_some() {
        return Err(ApiError::bad_request(
            "blueprint_archive_url is not supported: upload the archive itself",
        ));
    }
    if let Some(v) = params.visibility.as_deref()
        && !matches!(v, "private" | "tenant" | "global")
    {
        return Err(ApiError::bad_request(format!(
            "visibility {v:?}: expected private, tenant or global"
        )));
    }
    let main = params
        .application_file_name
        .clone()
        .unwrap_or_else(|| "blueprint.yaml".to_owned());
    let main_rel = safe_relative(&main).ok_or_else(|| {
        ApiError::bad_request(format!(
            "application_file_name {main:?} is not a relative path"
        ))
    })?;
    let archive =
        archive.ok_or_else(|| ApiError::bad_request("no blueprint_archive in the request"))?;
    let blueprint = gw
        .blocking(move |gw| {
            if let Some(owner) = gw.registry.claim(Kind::Blueprint, &id, &tenant)? {
                return Err(exists(&id, &owner));
            }
            let made = install(gw, &id, &main, &main_rel, &archive);
            if made.is_err() {
                gw.registry.release(Kind::Blueprint, &id)?;
            }
            made
        })
        .await?;
    tracing::info!(blueprint = %blueprint.id, "blueprint uploaded");
    let tenant = req.caller().tenant.clone();
    Ok(Reply::Json(
        StatusCode::CREATED,
        blueprint_json(&blueprint, &tenant),
    ))
}

fn exists(id: &str, owner: &str) -> ApiError {
    ApiError::conflict(format!(
        "blueprint with id={id} already exists on tenant {owner} or with global visibility"
    ))
}

/// Unpacks, checks and stores a blueprint whose id the caller has claimed.
fn install(
    gw: &Gateway,
    id: &str,
    main: &str,
    main_rel: &Path,
    bytes: &[u8],
) -> ApiResult<Blueprint> {
    if gw.store.blueprint(id)?.is_some() {
        return Err(exists(id, "another"));
    }
    let root = gw.config.data_dir.join("blueprints");
    let staging = root.join(format!(".upload-{id}-{:08x}", fastrand::u32(..)));
    let result = unpack_and_check(gw, &staging, id, main, main_rel, bytes);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn unpack_and_check(
    gw: &Gateway,
    staging: &Path,
    id: &str,
    main: &str,
    main_rel: &Path,
    bytes: &[u8],
) -> ApiResult<Blueprint> {
    let top = archive::unpack(bytes, staging, gw.config.archive_limits).map_err(|e| match e {
        archive::ArchiveError::Io(..) => ApiError::internal(e.to_string()),
        other => ApiError::bad_request(format!("blueprint archive: {other}")),
    })?;
    let main_path = top.join(main_rel);
    if !main_path.is_file() {
        return Err(ApiError::invalid(
            "invalid_blueprint_error",
            format!(
                "Blueprint `{id}` is invalid. Error: the archive has no {main} in its top-level directory"
            ),
        ));
    }
    let invalid = |e: drover_dsl::Error| {
        ApiError::invalid(
            "invalid_blueprint_error",
            format!("Blueprint `{id}` is invalid. Error: {e}"),
        )
    };
    match drover_dsl::plan_file(&main_path, &gw.config.dsl) {
        Ok(_) => {}
        // Inputs come with each deployment: a blueprint that needs them is still valid.
        Err(e) if e.message.starts_with("required inputs have no value") => {}
        Err(e) => return Err(invalid(e)),
    }
    let text = std::fs::read_to_string(&main_path)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", main_path.display())))?;
    let plan = drover_dsl::yaml_to_json(&text).map_err(invalid)?;
    let description = plan
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let dest = blueprint_dir(gw, id);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .map_err(|e| ApiError::internal(format!("removing {}: {e}", dest.display())))?;
    }
    std::fs::rename(&top, &dest).map_err(|e| {
        ApiError::internal(format!("moving the blueprint into {}: {e}", dest.display()))
    })?;
    let blueprint = Blueprint {
        id: id.to_owned(),
        created_at: now(),
        main_file_name: main.to_owned(),
        description,
        plan,
    };
    gw.store.put_blueprint(&blueprint)?;
    Ok(blueprint)
}

/// The parameters and the archive of an upload request.
async fn read_upload(req: &Request) -> ApiResult<(UploadParams, Option<Bytes>)> {
    let content_type = req
        .headers
        .get(warp::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
        let body = req.body.clone();
        let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let mut params = None;
        let mut archive = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart field {name}: {e}")))?;
            match name.as_str() {
                "params" => {
                    params = Some(
                        serde_json::from_slice::<UploadParams>(&data)
                            .map_err(|e| ApiError::bad_request(format!("params: {e}")))?,
                    )
                }
                "blueprint_archive" => archive = Some(data),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown multipart field {other:?}: expected params and blueprint_archive"
                    )));
                }
            }
        }
        return Ok((params.unwrap_or_default(), archive));
    }
    // Pre-7.0 clients: the raw archive as the body, parameters in the query string.
    let mut params = UploadParams::default();
    for (k, v) in &req.query.0 {
        let flag = || {
            parse_bool(v)
                .ok_or_else(|| ApiError::bad_request(format!("{k}: expected a boolean, got {v:?}")))
        };
        match k.as_str() {
            "visibility" => params.visibility = Some(v.clone()),
            "application_file_name" => params.application_file_name = Some(v.clone()),
            "async_upload" => params._async_upload = Some(flag()?),
            "skip_execution" => params._skip_execution = Some(flag()?),
            "blueprint_archive_url" => params.blueprint_archive_url = Some(v.clone()),
            other if other.starts_with('_') => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let archive = (!req.body.is_empty()).then(|| req.body.clone());
    Ok((params, archive))
}
