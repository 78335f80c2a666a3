//! The REST client of the remote commands: Cloudify's REST API v3.1 as the gateway serves it,
//! with basic auth and the `Tenant` header. Errors carry the server's message and status, or
//! name the URL that could not be reached.

use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::profile::Profile;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: Cloudify's `message` and `error_code`.
    #[error("{status}: {message} ({code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: unexpected answer: {reason}")]
    Answer { url: String, reason: String },
}

pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    profile: Profile,
}

impl Client {
    pub fn new(profile: &Profile) -> anyhow::Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(Client {
            http,
            base: format!("{}/api/v3.1", profile.url.trim_end_matches('/')),
            profile: profile.clone(),
        })
    }

    fn request(&self, method: Method, path: &str, query: &[(&str, &str)]) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .basic_auth(&self.profile.username, Some(&self.profile.password))
            .header("Tenant", &self.profile.tenant)
    }

    /// A read, tried again (up to [`GET_ATTEMPTS`] times, backing off) while the manager is
    /// briefly away: a connection refused (nginx restarting) or a 502/503/504 (no gateway
    /// replica answering behind it). Reads change nothing, so a retry is always safe.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        let mut wait = FIRST_RETRY;
        for _ in 1..GET_ATTEMPTS {
            match self.request(Method::GET, path, query).send() {
                Ok(response) if !is_transient_status(response.status()) => {
                    return decode(self.base.clone(), response);
                }
                Err(e) if !e.is_connect() => return Err(self.unreachable(&e)),
                _ => std::thread::sleep(wait),
            }
            wait *= 2;
        }
        self.send(self.request(Method::GET, path, query))
    }

    pub fn delete(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.send(self.request(Method::DELETE, path, query))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.request(Method::PUT, path, &[]).json(body))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.request(Method::POST, path, &[]).json(body))
    }

    /// PUTs raw bytes (a blueprint archive) with query parameters.
    pub fn put_bytes(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Value, ClientError> {
        let request = self
            .request(Method::PUT, path, query)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        self.send(request)
    }

    /// Every item of a list endpoint, page by page.
    pub fn list(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>, ClientError> {
        const PAGE: usize = 1000;
        let mut items = Vec::new();
        loop {
            let offset = items.len().to_string();
            let size = PAGE.to_string();
            let mut q = query.to_vec();
            q.extend([("_offset", offset.as_str()), ("_size", size.as_str())]);
            let page = self.get(path, &q)?;
            let url = format!("{}{path}", self.base);
            let got = page["items"]
                .as_array()
                .ok_or_else(|| ClientError::Answer {
                    url: url.clone(),
                    reason: "no items".into(),
                })?;
            let total = page["metadata"]["pagination"]["total"]
                .as_u64()
                .unwrap_or(0) as usize;
            let last = got.len() < PAGE;
            items.extend(got.iter().cloned());
            if last || items.len() >= total {
                return Ok(items);
            }
        }
    }

    /// [`Client::list`] filtered by one field when a value is given (`-d DEPLOYMENT` …).
    pub fn list_by(
        &self,
        path: &str,
        field: &str,
        value: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        let query: Vec<(&str, &str)> = value.map(|v| (field, v)).into_iter().collect();
        self.list(path, &query)
    }

    fn send(&self, request: RequestBuilder) -> Result<Value, ClientError> {
        let response = request.send().map_err(|e| self.unreachable(&e))?;
        decode(self.base.clone(), response)
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(error),
        }
    }
}

/// Tries of one GET at most; the waits between them double from [`FIRST_RETRY`] (3 s in all).
const GET_ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The answers of a proxy with no healthy upstream, or of a manager not ready yet.
fn is_transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn decode(url: String, response: Response) -> Result<Value, ClientError> {
    let status = response.status();
    let bytes = response.bytes().map_err(|e| ClientError::Unreachable {
        url: url.clone(),
        reason: root_cause(&e),
    })?;
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned())
        })
    };
    if status.is_success() {
        return Ok(body);
    }
    let message = match &body {
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    };
    Err(ClientError::Api {
        status,
        code: body["error_code"]
            .as_str()
            .unwrap_or("no error code")
            .to_owned(),
        message,
    })
}

/// The innermost cause of a transport error ("Connection refused"), which says more than
/// reqwest's outer "error sending request".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server answering its n-th request (from 0) with `answer(n)`: (status line, body).
    fn server(answer: fn(usize) -> (&'static str, &'static str)) -> (Client, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                let (status, body) = answer(count.fetch_add(1, Ordering::SeqCst));
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        let profile = Profile {
            url,
            username: "admin".into(),
            password: "admin".into(),
            tenant: "default_tenant".into(),
        };
        (Client::new(&profile).unwrap(), served)
    }

    const UNAVAILABLE: &str = r#"{"message": "no gateway", "error_code": "unavailable"}"#;

    #[test]
    fn a_read_is_tried_again_while_the_manager_is_briefly_away() {
        let (client, served) = server(|n| match n {
            0 => ("502 Bad Gateway", UNAVAILABLE),
            1 => ("503 Service Unavailable", UNAVAILABLE),
            _ => ("200 OK", r#"{"id": "x"}"#),
        });
        let answer = client.get("/executions/x", &[]).unwrap();
        assert_eq!(answer["id"], "x");
        assert_eq!(served.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_read_gives_up_after_its_attempts_and_says_why() {
        let (client, served) = server(|_| ("503 Service Unavailable", UNAVAILABLE));
        let error = client.get("/executions/x", &[]).unwrap_err();
        assert!(error.to_string().contains("no gateway"), "{error}");
        assert_eq!(served.load(Ordering::SeqCst), GET_ATTEMPTS as usize);
    }

    #[test]
    fn an_error_of_the_request_itself_is_not_tried_again() {
        let (client, served) = server(|_| {
            (
                "404 Not Found",
                r#"{"message": "no x", "error_code": "not_found_error"}"#,
            )
        });
        let error = client.get("/executions/x", &[]).unwrap_err();
        assert!(error.to_string().contains("no x"), "{error}");
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_write_is_never_tried_again() {
        let (client, served) = server(|_| ("503 Service Unavailable", UNAVAILABLE));
        client
            .post_json("/executions", &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }
}
