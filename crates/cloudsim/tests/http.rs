//! The `drover-cloudsim` binary over HTTP: Keystone auth, Nova's answers and the faults a client
//! sees.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary; returns it and its base URL.
fn start(args: &[&str]) -> (Sim, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover-cloudsim"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let keystone = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    (Sim(child), keystone.trim_end_matches("/v3").to_owned())
}

fn auth(password: &str) -> Value {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": password, "domain": {"name": "Default"}}}},
        "scope": {"project": {"name": "drover", "domain": {"name": "Default"}}},
    }})
}

#[tokio::test]
async fn keystone_nova_quota_and_rate_limit() {
    let (_sim, base) = start(&[
        "--quota-instances",
        "1",
        "--rate-limit-rps",
        "5",
        "--list-delay-ms",
        "60000",
    ]);
    let http = reqwest::Client::new();
    let refused = http
        .post(format!("{base}/v3/auth/tokens"))
        .json(&auth("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let issued = http
        .post(format!("{base}/v3/auth/tokens"))
        .json(&auth("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let token = issued.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let catalog: Value = issued.json().await.unwrap();
    let compute = catalog["token"]["catalog"][0]["endpoints"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(compute, format!("{base}/compute/v2.1"));

    let unauthenticated = http
        .get(format!("{compute}/servers/detail"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let server =
        json!({"server": {"name": "a", "imageRef": "i", "flavorRef": "f", "metadata": {"k": "v"}}});
    let created = http
        .post(format!("{compute}/servers"))
        .header("x-auth-token", &token)
        .json(&server)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.unwrap()["server"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let over = http
        .post(format!("{compute}/servers"))
        .header("x-auth-token", &token)
        .json(&server)
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 403);
    let body: Value = over.json().await.unwrap();
    assert!(
        body["forbidden"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Quota exceeded for instances"),
        "{body}"
    );
    // Shown at once, listed only after the (here one-minute) delay.
    let shown: Value = http
        .get(format!("{compute}/servers/{id}"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["server"]["metadata"]["k"], "v");
    let listed: Value = http
        .get(format!("{compute}/servers/detail?metadata.k=v"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["servers"], json!([]));

    // Five requests a second: the next ones are refused with a Retry-After.
    let mut limited = None;
    for _ in 0..10 {
        let response = http
            .get(format!("{compute}/servers/{id}"))
            .header("x-auth-token", &token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("no 429 within 10 requests at 5 requests/s");
    assert_eq!(limited.headers()["retry-after"], "1");
    let stats: Value = http
        .get(format!("{base}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats["created"].as_u64(),
            stats["alive"].as_u64(),
            stats["quota_refused"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert!(stats["rate_limited"].as_u64() >= Some(1));
}
