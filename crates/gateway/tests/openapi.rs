//! The OpenAPI document and the router's table agree both ways, and every documented route is
//! served (a request to it is not the router's "no such resource" or "method not allowed").

mod common;

use std::collections::BTreeSet;

use common::TestGateway;
use drover_gateway::routes::routes;

fn documented() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(drover_gateway::OPENAPI).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in openapi.json but not served: {unserved:?}"
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let gw = TestGateway::new();
    for (method, path) in documented() {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let (status, body) = gw.call("default_tenant", &method, &concrete, None).await;
        let unrouted = matches!(status, 404 | 405)
            && body["message"].as_str().is_some_and(|m| {
                m.starts_with("no such resource") || m.contains("is not allowed on")
            });
        assert!(!unrouted, "{method} {path}: {status} {body}");
        assert!(status < 500, "{method} {path}: {status} {body}");
    }
    let (s, doc) = gw.get("/api/v3.1/openapi.json").await;
    assert_eq!((s, doc["openapi"].as_str()), (200, Some("3.0.3")));
}
