//! The HTTP side of the `nova` driver: Keystone v3 password auth, the compute endpoint from
//! the catalog, and every request paced (governor), timed out, and retried (backon) as far as
//! it is safe to retry.

use std::num::NonZeroU32;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::driver::CloudError;

/// Where and who: the fields of an OpenStack RC file (`OS_AUTH_URL`, `OS_USERNAME`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NovaAccount {
    /// Keystone's v3 URL, e.g. `https://keystone.example:5000/v3`.
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project_name: String,
    #[serde(default = "default_domain")]
    pub user_domain_name: String,
    #[serde(default = "default_domain")]
    pub project_domain_name: String,
    /// The catalog region to use (the first compute endpoint when unset).
    #[serde(default)]
    pub region_name: Option<String>,
    /// The endpoint interface: `public` (default), `internal` or `admin`.
    #[serde(default = "default_interface")]
    pub interface: String,
}

fn default_domain() -> String {
    "Default".into()
}

fn default_interface() -> String {
    "public".into()
}

impl NovaAccount {
    /// The account described by the `OS_*` variables of an OpenStack RC file; the error names the
    /// first missing required variable.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| name.to_owned());
        Ok(NovaAccount {
            auth_url: var("OS_AUTH_URL")?,
            username: var("OS_USERNAME")?,
            password: var("OS_PASSWORD")?,
            project_name: var("OS_PROJECT_NAME")?,
            user_domain_name: var("OS_USER_DOMAIN_NAME").unwrap_or_else(|_| default_domain()),
            project_domain_name: var("OS_PROJECT_DOMAIN_NAME").unwrap_or_else(|_| default_domain()),
            region_name: var("OS_REGION_NAME").ok(),
            interface: var("OS_INTERFACE").unwrap_or_else(|_| default_interface()),
        })
    }
}

/// Request pacing and retries of one account.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Requests per second, sustained, every compute request counted (governor).
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    /// How long one HTTP request may take.
    pub timeout: Duration,
    /// Tries of one request that failed retryably (429 always; 5xx and timeouts only for
    /// requests that are safe to repeat).
    pub max_attempts: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// A compute API answer: the status (2xx or 404) and the body (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

struct Session {
    token: String,
    compute_url: String,
}

/// An authenticated, paced compute API client.
pub struct Api {
    http: reqwest::Client,
    account: NovaAccount,
    policy: RequestPolicy,
    limiter: DefaultDirectRateLimiter,
    session: Mutex<Option<Session>>,
}

impl Api {
    pub fn new(account: NovaAccount, policy: RequestPolicy) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .map_err(|e| CloudError::Permanent(format!("building the HTTP client: {e}")))?;
        let quota = Quota::per_second(policy.requests_per_second).allow_burst(policy.burst);
        Ok(Api {
            http,
            account,
            limiter: RateLimiter::direct(quota),
            policy,
            session: Mutex::new(None),
        })
    }

    /// Sends a compute request, retrying what is safe: a 429 (the cloud did nothing) always,
    /// 5xx and transport errors only when `idempotent` (a POST that failed so may have
    /// created its server; the caller finds out).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<Answer, CloudError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_backoff)
            .with_max_delay(self.policy.max_backoff)
            .with_max_times(self.policy.max_attempts.saturating_sub(1))
            .with_jitter();
        (|| self.once(method.clone(), path, body))
            .retry(backoff)
            .when(|e| match e {
                CloudError::RateLimited { .. } => true,
                CloudError::Transient(_) => idempotent,
                CloudError::Permanent(_) => false,
            })
            .adjust(|error, delay| delay.map(|d| error.retry_after().unwrap_or(d)))
            .await
    }

    /// One paced try; a 401 renews the token and tries once more.
    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CloudError> {
        for renewed in [false, true] {
            let (token, url) = self.session(renewed).await?;
            self.limiter.until_ready().await;
            let mut request = self
                .http
                .request(method.clone(), format!("{url}{path}"))
                .header("x-auth-token", token)
                .header("accept", "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !renewed {
                continue;
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let text = response.text().await.map_err(transport)?;
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            return classify(status, retry_after, body, &method, path);
        }
        Err(CloudError::Permanent(
            "the cloud refused a freshly issued token (401)".into(),
        ))
    }

    /// The token and compute URL, from Keystone when there is none yet or `renew`.
    async fn session(&self, renew: bool) -> Result<(String, String), CloudError> {
        let mut session = self.session.lock().await;
        if renew || session.is_none() {
            *session = Some(self.authenticate().await?);
        }
        let session = session
            .as_ref()
            .ok_or_else(|| CloudError::Transient("no session after authenticating".into()))?;
        Ok((session.token.clone(), session.compute_url.clone()))
    }

    async fn authenticate(&self) -> Result<Session, CloudError> {
        let a = &self.account;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": a.username, "password": a.password, "domain": {"name": a.user_domain_name},
            }}},
            "scope": {"project": {"name": a.project_name, "domain": {"name": a.project_domain_name}}},
        }});
        let url = format!("{}/auth/tokens", a.auth_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            let error = format!("Keystone at {url} answered {status}: {}", text.trim());
            return Err(if status.is_server_error() {
                CloudError::Transient(error)
            } else {
                CloudError::Permanent(error)
            });
        }
        let token = token.ok_or_else(|| {
            CloudError::Permanent(format!("Keystone at {url} returned no X-Subject-Token"))
        })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let compute_url = compute_endpoint(&body, a.region_name.as_deref(), &a.interface)
            .ok_or_else(|| {
                CloudError::Permanent(format!(
                    "Keystone's catalog has no {} compute endpoint{}",
                    a.interface,
                    a.region_name
                        .as_deref()
                        .map(|r| format!(" in region {r}"))
                        .unwrap_or_default()
                ))
            })?;
        Ok(Session { token, compute_url })
    }
}

/// The compute endpoint's URL (without a trailing slash) in a Keystone v3 token body.
fn compute_endpoint(token: &Value, region: Option<&str>, interface: &str) -> Option<String> {
    let catalog = token.pointer("/token/catalog")?.as_array()?;
    let service = catalog
        .iter()
        .find(|s| s.get("type").and_then(Value::as_str) == Some("compute"))?;
    service
        .get("endpoints")?
        .as_array()?
        .iter()
        .filter(|e| e.get("interface").and_then(Value::as_str) == Some(interface))
        .find(|e| {
            region.is_none_or(|r| {
                e.get("region_id").and_then(Value::as_str) == Some(r)
                    || e.get("region").and_then(Value::as_str) == Some(r)
            })
        })
        .and_then(|e| e.get("url")?.as_str())
        .map(|url| url.trim_end_matches('/').to_owned())
}

fn transport(error: reqwest::Error) -> CloudError {
    CloudError::Transient(format!("cloud request failed: {error}"))
}

/// Types an answer by what the caller should do about it.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Value,
    method: &Method,
    path: &str,
) -> Result<Answer, CloudError> {
    if status.is_success() || status == StatusCode::NOT_FOUND {
        return Ok(Answer { status, body });
    }
    let message = nova_message(&body).unwrap_or_else(|| body.to_string());
    let error = format!("{method} {path}: {status}: {message}");
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS => CloudError::RateLimited { retry_after },
        s if s.is_server_error() || s == StatusCode::CONFLICT => CloudError::Transient(error),
        // Quota exhaustion (403, or 413 from older Nova) and every other refusal: retrying
        // the same request will not help.
        _ => CloudError::Permanent(error),
    })
}

/// The message of Nova's error body `{"<kind>": {"code": …, "message": …}}`.
fn nova_message(body: &Value) -> Option<String> {
    body.as_object()?
        .values()
        .find_map(|v| v.get("message")?.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compute_endpoint_is_picked_by_interface_and_region() {
        let token = json!({"token": {"catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "url": "http://k/v3"}]},
            {"type": "compute", "endpoints": [
                {"interface": "internal", "region_id": "R1", "url": "http://internal/v2.1"},
                {"interface": "public", "region_id": "R1", "url": "http://r1/v2.1/"},
                {"interface": "public", "region_id": "R2", "url": "http://r2/v2.1"},
            ]},
        ]}});
        assert_eq!(
            compute_endpoint(&token, None, "public").as_deref(),
            Some("http://r1/v2.1")
        );
        assert_eq!(
            compute_endpoint(&token, Some("R2"), "public").as_deref(),
            Some("http://r2/v2.1")
        );
        assert_eq!(compute_endpoint(&token, Some("R3"), "public"), None);
    }

    #[test]
    fn quota_exhaustion_is_permanent_and_names_the_quota() {
        let body = json!({"forbidden": {"code": 403, "message": "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"}});
        let error = classify(StatusCode::FORBIDDEN, None, body, &Method::POST, "/servers")
            .err()
            .unwrap();
        assert!(
            matches!(&error, CloudError::Permanent(m) if m.contains("Quota exceeded for instances")),
            "{error}"
        );
        let limited = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(1)),
            Value::Null,
            &Method::GET,
            "/servers/x",
        );
        assert_eq!(
            limited.err().unwrap().retry_after(),
            Some(Duration::from_secs(1))
        );
    }
}
