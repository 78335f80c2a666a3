//! `/tokens`: API tokens of the calling user. The full value (`ctok-<id>-<secret>`) is shown
//! once, when the token is made.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::StatusCode;

use super::now;
use crate::auth::expiration;
use crate::error::{ApiError, ApiResult};
use crate::query::ListParams;
use crate::registry::Token;
use crate::{Gateway, Reply, Request};

fn token_json(t: &Token, full_value: bool) -> Value {
    let value = if full_value {
        t.value()
    } else {
        format!("ctok-{}-********", t.id)
    };
    json!({
        "id": t.id, "value": value, "role": "sys_admin", "username": t.username,
        "description": t.description, "expiration_date": t.expiration_date,
        "last_used": null, "created_at": t.created_at,
    })
}

fn random(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    expiration_date: Option<String>,
}

pub async fn create(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let username = req.caller().username.clone();
    let body: CreateBody = req.json()?;
    if body.description.as_deref().is_some_and(|d| d.len() > 1024) {
        return Err(ApiError::bad_request(
            "description is longer than 1024 characters",
        ));
    }
    let expiration_date = body
        .expiration_date
        .as_deref()
        .map(|e| expiration(e, std::time::SystemTime::now()))
        .transpose()?;
    let token = Token {
        id: random(10),
        secret: random(32),
        username,
        description: body.description,
        expiration_date,
        created_at: now(),
    };
    let shown = token_json(&token, true);
    gw.blocking(move |gw| Ok(gw.registry.put_token(token)?))
        .await?;
    Ok(Reply::Json(StatusCode::OK, shown))
}

pub async fn list(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let username = req.caller().username.clone();
    let params = ListParams::from_query(&req.query, &[])?;
    let items = gw
        .blocking(move |gw| {
            Ok(gw
                .registry
                .tokens(&username)?
                .iter()
                .map(|t| token_json(t, false))
                .collect())
        })
        .await?;
    Ok(Reply::Json(StatusCode::OK, params.apply(items)?))
}

/// The caller's token with this id (another user's is not found).
fn owned(gw: &Gateway, username: &str, id: &str) -> ApiResult<Token> {
    gw.registry
        .token(id)?
        .filter(|t| t.username == username)
        .ok_or_else(|| ApiError::not_found("Token", id))
}

pub async fn get(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let username = req.caller().username.clone();
    let id = req.params[0].clone();
    let t = gw
        .blocking(move |gw| owned(gw, &username, &id).map(|t| token_json(&t, false)))
        .await?;
    Ok(Reply::Json(StatusCode::OK, t))
}

pub async fn delete(gw: Arc<Gateway>, req: Request) -> ApiResult<Reply> {
    let username = req.caller().username.clone();
    let id = req.params[0].clone();
    gw.blocking(move |gw| {
        owned(gw, &username, &id)?;
        gw.registry.delete_token(&id)?;
        Ok(())
    })
    .await?;
    Ok(Reply::Empty(StatusCode::NO_CONTENT))
}
