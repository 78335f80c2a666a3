//! Every route through the warp filter, on an in-process gateway: the Cloudify client's flow,
//! auth, tenancy, secrets, tokens and refused inputs.

mod common;

use common::{MINIMAL, TestGateway, basic, hello_archive, json_of, tar_gz_raw};
use serde_json::{Value, json};

const T: &str = "default_tenant";

#[tokio::test]
async fn manager_health_and_metrics() {
    let gw = TestGateway::new();
    let (s, v) = gw.get("/api/version").await;
    assert_eq!((s, v["version"].as_str()), (200, Some("7.0.5")));
    let (s, v) = gw.get("/api/v3.1/status").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("OK")));
    let (s, v) = gw.get("/api/v3.1/config?scope=rest").await;
    assert_eq!(s, 200);
    assert!(v["blueprint_folder_max_files"]["value"].as_u64().unwrap() > 0);
    let filter = gw.filter();
    for path in ["/healthz", "/readyz"] {
        let res = warp::test::request().path(path).reply(&filter).await;
        assert_eq!(res.status(), 200, "{path} needs no credentials");
    }
    let res = warp::test::request().path("/metrics").reply(&filter).await;
    let text = String::from_utf8_lossy(res.body()).into_owned();
    assert!(
        text.contains("drover_gateway_requests_total{method=\"GET\",route=\"/api/v3.1/status\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn auth_basic_and_tokens() {
    let gw = TestGateway::new();
    let filter = gw.filter();
    let res = warp::test::request()
        .path("/api/v3.1/blueprints")
        .reply(&filter)
        .await;
    assert_eq!(res.status(), 401);
    let body = json_of(res.body());
    assert_eq!(body["error_code"], "unauthorized_error");
    assert!(body["server_traceback"].is_null());
    let wrong = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:nope")
    );
    for header in [wrong.as_str(), "Basic !!!", "Bearer x"] {
        let res = warp::test::request()
            .path("/api/v3.1/blueprints")
            .header("authorization", header)
            .reply(&filter)
            .await;
        assert_eq!(res.status(), 401, "{header}");
    }

    let (s, token) = gw
        .call(
            T,
            "POST",
            "/api/v3.1/tokens",
            Some(json!({"description": "t", "expiration_date": "+1h"})),
        )
        .await;
    assert_eq!(s, 200, "{token}");
    let value = token["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with(&format!("ctok-{}-", token["id"].as_str().unwrap())));
    let with_token = |v: &str| {
        warp::test::request()
            .path("/api/v3.1/status")
            .header("authentication-token", v)
    };
    assert_eq!(with_token(&value).reply(&filter).await.status(), 200);
    for bad in ["ctok-nope-x", "garbage", &format!("{value}x")] {
        assert_eq!(with_token(bad).reply(&filter).await.status(), 401, "{bad}");
    }
    let (s, got) = gw
        .get(&format!(
            "/api/v3.1/tokens/{}",
            token["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    assert!(
        got["value"].as_str().unwrap().ends_with("********"),
        "{got}"
    );
    let (s, list) = gw.get("/api/v3.1/tokens").await;
    assert_eq!(
        (s, list["metadata"]["pagination"]["total"].as_u64()),
        (200, Some(1))
    );
    let (s, _) = gw
        .call(
            T,
            "POST",
            "/api/v3.1/tokens",
            Some(json!({"expiration_date": "tomorrow"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = gw
        .call(
            T,
            "DELETE",
            &format!("/api/v3.1/tokens/{}", token["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        with_token(&value).reply(&filter).await.status(),
        401,
        "a deleted token is refused"
    );
}

#[tokio::test]
async fn expired_token_is_refused() {
    let gw = TestGateway::new();
    let (_, token) = gw
        .call(
            T,
            "POST",
            "/api/v3.1/tokens",
            Some(json!({"expiration_date": "2001-01-01 00:00"})),
        )
        .await;
    let res = warp::test::request()
        .path("/api/v3.1/status")
        .header("authentication-token", token["value"].as_str().unwrap())
        .reply(&gw.filter())
        .await;
    assert_eq!(res.status(), 401);
    assert!(
        json_of(res.body())["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

async fn node_instances(gw: &TestGateway, dep: &str) -> Vec<Value> {
    let (s, v) = gw
        .get(&format!("/api/v3.1/node-instances?deployment_id={dep}"))
        .await;
    assert_eq!(s, 200);
    v["items"].as_array().unwrap().clone()
}

async fn run(gw: &TestGateway, dep: &str, workflow: &str) -> Value {
    let (s, e) = gw
        .call(T, "POST", "/api/v3.1/executions", Some(json!({
            "deployment_id": dep, "workflow_id": workflow, "parameters": null,
            "allow_custom_parameters": "false", "force": "false", "dry_run": "false", "queue": "false",
            "scheduled_time": null, "wait_after_fail": 600, "force_status": null, "created_by": null,
            "created_at": null, "started_at": null, "ended_at": null, "id": null,
            "is_system_workflow": null, "error": null
        })))
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["status"], "pending");
    let e = gw.wait_execution(T, e["id"].as_str().unwrap()).await;
    assert_eq!(e["status"], "terminated", "{e}");
    e
}

#[tokio::test]
async fn blueprint_deployment_install_uninstall_delete() {
    let gw = TestGateway::new();
    let (s, bp) = gw
        .upload(T, "hello", &hello_archive(), "blueprint.yaml")
        .await;
    assert_eq!(s, 201, "{bp}");
    assert_eq!(
        (bp["state"].as_str(), bp["main_file_name"].as_str()),
        (Some("uploaded"), Some("blueprint.yaml"))
    );
    let (s, again) = gw
        .upload(T, "hello", &hello_archive(), "blueprint.yaml")
        .await;
    assert_eq!(
        (s, again["error_code"].as_str()),
        (409, Some("conflict_error"))
    );
    let (s, list) = gw.get("/api/v3.1/blueprints?_include=id,state").await;
    assert_eq!(s, 200);
    assert_eq!(list["items"], json!([{"id": "hello", "state": "uploaded"}]));

    let (s, d) = gw
        .call(
            T,
            "PUT",
            "/api/v3.1/deployments/d1",
            Some(json!({
                "blueprint_id": "hello", "inputs": {"hosts": 3}, "visibility": "tenant",
                "skip_plugins_validation": false, "runtime_only_evaluation": false
            })),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["installation_status"], "inactive");
    let workflows: Vec<&str> = d["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        workflows.contains(&"install") && workflows.contains(&"uninstall"),
        "{workflows:?}"
    );
    let (s, dup) = gw
        .call(
            T,
            "PUT",
            "/api/v3.1/deployments/d1",
            Some(json!({"blueprint_id": "hello"})),
        )
        .await;
    assert_eq!(
        (s, dup["error_code"].as_str()),
        (409, Some("conflict_error"))
    );
    let (s, bad) = gw
        .call(
            T,
            "PUT",
            "/api/v3.1/deployments/d2",
            Some(json!({"blueprint_id": "hello", "inputs": {"hosts": 0}})),
        )
        .await;
    assert_eq!(s, 400, "{bad}");

    let (s, nodes) = gw
        .get("/api/v3.1/nodes?deployment_id=d1&_evaluate_functions=False")
        .await;
    assert_eq!(s, 200);
    let host = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "host")
        .unwrap();
    assert_eq!(host["number_of_instances"], 3);
    assert!(
        host["type_hierarchy"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    );
    let (_, one) = gw.get("/api/v3.1/nodes?deployment_id=d1&id=web").await;
    assert_eq!(one["metadata"]["pagination"]["total"], 1);

    let instances = node_instances(&gw, "d1").await;
    assert!(instances.len() >= 5, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|i| i["state"] == "uninitialized" && i["version"] == 1)
    );

    let install = run(&gw, "d1", "install").await;
    let instances = node_instances(&gw, "d1").await;
    assert!(
        instances.iter().all(|i| i["state"] == "started"),
        "{instances:?}"
    );
    let (_, d) = gw.get("/api/v3.1/deployments/d1").await;
    assert_eq!(
        (
            d["installation_status"].as_str(),
            d["latest_execution_status"].as_str()
        ),
        (Some("active"), Some("completed"))
    );
    let (_, listed) = gw
        .get("/api/v3.1/executions?deployment_id=d1&_include_system_workflows=False")
        .await;
    assert_eq!(listed["items"][0]["id"], install["id"]);

    let id = install["id"].as_str().unwrap();
    let (s, events) = gw
        .get(&format!("/api/v3.1/events?execution_id={id}&type=cloudify_event&type=cloudify_log&_sort=reported_timestamp&_size=5"))
        .await;
    assert_eq!(s, 200, "{events}");
    let total = events["metadata"]["pagination"]["total"].as_u64().unwrap();
    assert!(
        total > 5 && events["items"].as_array().unwrap().len() == 5,
        "{events}"
    );
    for key in [
        "deployment_id",
        "execution_id",
        "node_name",
        "operation",
        "workflow_id",
        "node_instance_id",
        "message",
        "error_causes",
        "reported_timestamp",
    ] {
        assert!(events["items"][0].get(key).is_some(), "event lacks {key}");
    }
    let (_, last) = gw
        .get(&format!(
            "/api/v3.1/events?execution_id={id}&_sort=-@timestamp&_size=1"
        ))
        .await;
    assert_eq!(
        last["items"][0]["event_type"], "workflow_succeeded",
        "{last}"
    );
    let (_, ended) = gw
        .get(&format!("/api/v3.1/events?execution_id={id}&event_type=workflow_succeeded&event_type=workflow_failed"))
        .await;
    assert_eq!(ended["metadata"]["pagination"]["total"], 1);

    let ni = &instances[0];
    let path = format!("/api/v3.1/node-instances/{}", ni["id"].as_str().unwrap());
    let (s, got) = gw.get(&format!("{path}?_evaluate_functions=False")).await;
    assert_eq!((s, &got["id"]), (200, &ni["id"]));
    let version = got["version"].as_u64().unwrap();
    let (s, updated) = gw
        .call(
            T,
            "PATCH",
            &path,
            Some(json!({"version": version, "runtime_properties": {"k": "v"}})),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(
        (updated["version"].as_u64(), &updated["runtime_properties"]),
        (Some(version + 1), &json!({"k": "v"}))
    );
    let (s, stale) = gw
        .call(
            T,
            "PATCH",
            &path,
            Some(json!({"version": version, "runtime_properties": {}})),
        )
        .await;
    assert_eq!(
        (s, stale["error_code"].as_str()),
        (409, Some("conflict_error"))
    );
    let (s, _) = gw
        .call(
            T,
            "PATCH",
            &format!("{path}?force=True"),
            Some(json!({"version": 0, "state": "started"})),
        )
        .await;
    assert_eq!(s, 200, "force skips the version check");

    let (s, outputs) = gw.get("/api/v3.1/deployments/d1/outputs").await;
    assert_eq!((s, outputs["deployment_id"].as_str()), (200, Some("d1")));
    assert!(outputs["outputs"].is_object());

    let (s, busy) = gw.call(T, "DELETE", "/api/v3.1/deployments/d1", None).await;
    assert_eq!(
        (s, busy["error_code"].as_str()),
        (400, Some("dependent_exists_error"))
    );
    run(&gw, "d1", "uninstall").await;
    assert!(
        node_instances(&gw, "d1")
            .await
            .iter()
            .all(|i| i["state"] == "deleted")
    );
    let (s, in_use) = gw
        .call(T, "DELETE", "/api/v3.1/blueprints/hello", None)
        .await;
    assert_eq!(
        (s, in_use["error_code"].as_str()),
        (400, Some("dependent_exists_error"))
    );
    let (s, _) = gw
        .call(
            T,
            "DELETE",
            "/api/v3.1/deployments/d1?force=False&delete_logs=False&recursive=False",
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(gw.get("/api/v3.1/deployments/d1").await.0, 404);
    let (s, _) = gw
        .call(T, "DELETE", "/api/v3.1/blueprints/hello?force=False", None)
        .await;
    assert_eq!(s, 204);
    let (s, gone) = gw.get("/api/v3.1/blueprints/hello").await;
    assert_eq!(
        (s, gone["message"].as_str()),
        (
            404,
            Some("Requested `Blueprint` with ID `hello` was not found")
        )
    );
}

#[tokio::test]
async fn executions_refuse_unknown_workflows_and_ended_actions() {
    let gw = TestGateway::new();
    assert_eq!(
        gw.upload(T, "bp", &hello_archive(), "blueprint.yaml")
            .await
            .0,
        201
    );
    assert_eq!(
        gw.call(
            T,
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "bp"}))
        )
        .await
        .0,
        201
    );
    let (s, e) = gw
        .call(
            T,
            "POST",
            "/api/v3.1/executions",
            Some(json!({"deployment_id": "d", "workflow_id": "nope"})),
        )
        .await;
    assert_eq!(
        (s, e["error_code"].as_str()),
        (400, Some("nonexistent_workflow_error"))
    );
    let (s, _) = gw
        .call(
            T,
            "POST",
            "/api/v3.1/executions",
            Some(json!({"deployment_id": "other", "workflow_id": "install"})),
        )
        .await;
    assert_eq!(s, 404);
    let install = run(&gw, "d", "install").await;
    let path = format!("/api/v3.1/executions/{}", install["id"].as_str().unwrap());
    let (s, e) = gw
        .call(T, "POST", &path, Some(json!({"action": "cancel"})))
        .await;
    assert_eq!(
        (s, e["error_code"].as_str()),
        (400, Some("illegal_action_error"))
    );
    let (s, e) = gw
        .call(T, "POST", &path, Some(json!({"action": "resume"})))
        .await;
    assert_eq!(
        (s, e["error_code"].as_str()),
        (400, Some("illegal_action_error")),
        "a terminated execution is not resumed"
    );
    let (s, _) = gw
        .call(T, "POST", &path, Some(json!({"action": "explode"})))
        .await;
    assert_eq!(s, 400);
    let (s, list) = gw
        .get("/api/v3.1/executions?workflow_id=install&_include=id,status")
        .await;
    assert_eq!((s, list["items"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(
        list["items"][0],
        json!({"id": install["id"], "status": "terminated"})
    );
}

#[tokio::test]
async fn tenants_do_not_see_each_other() {
    let gw = TestGateway::new();
    assert_eq!(
        gw.upload("a", "bp", &hello_archive(), "blueprint.yaml")
            .await
            .0,
        201
    );
    assert_eq!(
        gw.call(
            "a",
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "bp"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        gw.call(
            "a",
            "PUT",
            "/api/v3.1/secrets/s",
            Some(json!({"value": "x"}))
        )
        .await
        .0,
        200
    );
    for path in [
        "/api/v3.1/blueprints/bp",
        "/api/v3.1/deployments/d",
        "/api/v3.1/deployments/d/outputs",
        "/api/v3.1/secrets/s",
    ] {
        assert_eq!(
            gw.call("b", "GET", path, None).await.0,
            404,
            "{path} from tenant b"
        );
        assert_eq!(
            gw.call("a", "GET", path, None).await.0,
            200,
            "{path} from tenant a"
        );
    }
    for path in [
        "/api/v3.1/blueprints",
        "/api/v3.1/deployments",
        "/api/v3.1/nodes",
        "/api/v3.1/node-instances",
        "/api/v3.1/secrets",
        "/api/v3.1/executions",
    ] {
        let (s, v) = gw.call("b", "GET", path, None).await;
        assert_eq!(
            (s, v["metadata"]["pagination"]["total"].as_u64()),
            (200, Some(0)),
            "{path} from tenant b"
        );
    }
    let (_, instances) = gw.call("a", "GET", "/api/v3.1/node-instances", None).await;
    let ni = instances["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        gw.call("b", "GET", &format!("/api/v3.1/node-instances/{ni}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        gw.call(
            "b",
            "PATCH",
            &format!("/api/v3.1/node-instances/{ni}"),
            Some(json!({"version": 1}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        gw.call(
            "b",
            "PUT",
            "/api/v3.1/deployments/d2",
            Some(json!({"blueprint_id": "bp"}))
        )
        .await
        .0,
        404
    );
    let (s, e) = gw
        .call(
            "b",
            "POST",
            "/api/v3.1/executions",
            Some(json!({"deployment_id": "d", "workflow_id": "install"})),
        )
        .await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = gw
        .call("b", "GET", "/api/v3.1/events?deployment_id=d", None)
        .await;
    assert_eq!((s, e["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (s, taken) = gw
        .upload("b", "bp", &hello_archive(), "blueprint.yaml")
        .await;
    assert_eq!(
        (s, taken["error_code"].as_str()),
        (409, Some("conflict_error"))
    );
    assert_eq!(
        gw.call("b", "DELETE", "/api/v3.1/deployments/d", None)
            .await
            .0,
        404
    );
    assert_eq!(
        gw.call("b", "DELETE", "/api/v3.1/blueprints/bp", None)
            .await
            .0,
        404
    );
    let (s, _) = gw.call("../etc", "GET", "/api/v3.1/blueprints", None).await;
    assert_eq!(s, 403, "a tenant name is checked");
}

#[tokio::test]
async fn a_deployment_reads_the_secrets_of_its_tenant() {
    let gw = TestGateway::new();
    let yaml = format!("{MINIMAL}outputs:\n  s:\n    value: {{ get_secret: s }}\n");
    let archive = tar_gz_raw(&[
        ("bp/", tar::EntryType::Directory, b"", None),
        (
            "bp/blueprint.yaml",
            tar::EntryType::Regular,
            yaml.as_bytes(),
            None,
        ),
    ]);
    for (tenant, value) in [("a", "in-a"), (T, "in-default")] {
        let put = json!({"value": value});
        let (s, _) = gw
            .call(tenant, "PUT", "/api/v3.1/secrets/s", Some(put))
            .await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        gw.upload("a", "bp", &archive, "blueprint.yaml").await.0,
        201
    );
    let create = json!({"blueprint_id": "bp"});
    let (s, d) = gw
        .call("a", "PUT", "/api/v3.1/deployments/d", Some(create))
        .await;
    assert_eq!(s, 201, "{d}");
    let (s, outputs) = gw
        .call("a", "GET", "/api/v3.1/deployments/d/outputs", None)
        .await;
    assert_eq!(s, 200, "{outputs}");
    assert_eq!(outputs["outputs"]["s"], "in-a", "{outputs}");
}

#[tokio::test]
async fn secrets_are_stored_and_values_shown_only_by_key() {
    let gw = TestGateway::new();
    let (s, created) = gw
        .call(T, "PUT", "/api/v3.1/secrets/db", Some(json!({"value": "s3cr3t", "update_if_exists": false, "is_hidden_value": false, "visibility": "tenant"})))
        .await;
    assert_eq!(s, 200);
    assert!(created.get("value").is_none());
    let (_, got) = gw.get("/api/v3.1/secrets/db").await;
    assert_eq!(got["value"], "s3cr3t");
    let (_, list) = gw.get("/api/v3.1/secrets").await;
    assert_eq!(list["items"][0]["key"], "db");
    assert!(list["items"][0].get("value").is_none());
    let (s, dup) = gw
        .call(
            T,
            "PUT",
            "/api/v3.1/secrets/db",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(
        (s, dup["error_code"].as_str()),
        (409, Some("conflict_error"))
    );
    assert_eq!(
        gw.call(
            T,
            "PUT",
            "/api/v3.1/secrets/db",
            Some(json!({"value": "x", "update_if_exists": true}))
        )
        .await
        .0,
        200
    );
    assert_eq!(gw.get("/api/v3.1/secrets/db").await.1["value"], "x");
    assert_eq!(
        gw.call(
            T,
            "PUT",
            "/api/v3.1/secrets/h",
            Some(json!({"value": "x", "is_hidden_value": true}))
        )
        .await
        .0,
        200
    );
    assert!(gw.get("/api/v3.1/secrets/h").await.1.get("value").is_none());
    assert_eq!(
        gw.gateway.store.secret(T, "db").unwrap().map(|s| s.value),
        Some("x".into()),
        "secrets are in the state store, where get_secret reads them"
    );
    assert!(
        !std::fs::read_to_string(gw.dir.path().join("data/gateway-registry.json"))
            .unwrap_or_default()
            .contains("\"x\""),
        "and not in the gateway's registry"
    );
    let (s, _) = gw.call("other", "GET", "/api/v3.1/secrets/db", None).await;
    assert_eq!(s, 404, "another tenant's secret is not found");
    assert_eq!(
        gw.call(T, "DELETE", "/api/v3.1/secrets/db", None).await.0,
        204
    );
    assert_eq!(
        gw.call(T, "DELETE", "/api/v3.1/secrets/db", None).await.0,
        404
    );
}

#[tokio::test]
async fn bad_requests_get_cloudify_errors() {
    let gw = TestGateway::with(|c| c.max_json_bytes = 4096);
    let cases: Vec<(&str, &str, Option<Value>, u16)> = vec![
        ("GET", "/api/v3.1/nope", None, 404),
        ("DELETE", "/api/v3.1/status", None, 405),
        ("GET", "/api/v3.1/blueprints/..", None, 400),
        ("GET", "/api/v3.1/blueprints/%2e%2e%2fetc", None, 400),
        ("GET", "/api/v3.1/blueprints?_size=-1", None, 400),
        ("GET", "/api/v3.1/blueprints?_size=abc", None, 400),
        ("GET", "/api/v3.1/deployments?_sort=nonsense", None, 200),
        ("GET", "/api/v3.1/events", None, 400),
        (
            "GET",
            "/api/v3.1/events?execution_id=x&_sort=message",
            None,
            400,
        ),
        (
            "GET",
            "/api/v3.1/events?execution_id=x&type=other",
            None,
            400,
        ),
        (
            "GET",
            "/api/v3.1/events?execution_id=x&_range=@timestamp,yesterday,",
            None,
            400,
        ),
        ("GET", "/api/v3.1/events?execution_id=x&bogus=1", None, 400),
        (
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "x", "surprise": 1})),
            400,
        ),
        (
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": 7})),
            400,
        ),
        (
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "x", "inputs": [1]})),
            400,
        ),
        ("PUT", "/api/v3.1/deployments/d", Some(json!([])), 400),
        (
            "PUT",
            "/api/v3.1/deployments/d",
            Some(json!({"blueprint_id": "missing"})),
            404,
        ),
        (
            "POST",
            "/api/v3.1/executions",
            Some(json!({"deployment_id": "d"})),
            400,
        ),
        (
            "POST",
            "/api/v3.1/executions",
            Some(json!({"deployment_id": "d", "workflow_id": "install", "force": "maybe"})),
            400,
        ),
        (
            "PATCH",
            "/api/v3.1/node-instances/x",
            Some(json!({"version": "one"})),
            400,
        ),
        (
            "PATCH",
            "/api/v3.1/node-instances/x",
            Some(json!({"version": -1})),
            400,
        ),
        ("PUT", "/api/v3.1/secrets/k", Some(json!({"value": 5})), 400),
        (
            "PUT",
            "/api/v3.1/secrets/k",
            Some(json!({"value": "v", "visibility": "world"})),
            400,
        ),
        (
            "POST",
            "/api/v3.1/tokens",
            Some(json!({"description": "d", "extra": true})),
            400,
        ),
        (
            "PUT",
            "/api/v3.1/secrets/k",
            Some(json!({"value": "v".repeat(5000)})),
            413,
        ),
    ];
    for (method, path, body, want) in cases {
        let (s, v) = gw.call(T, method, path, body.clone()).await;
        assert_eq!(s, want, "{method} {path} {body:?}: {v}");
        if want != 200 {
            assert!(
                v["message"].is_string() && v["error_code"].is_string(),
                "{method} {path}: {v}"
            );
            assert!(v.get("server_traceback").is_some_and(Value::is_null));
        }
    }
    let res = warp::test::request()
        .method("PUT")
        .path("/api/v3.1/secrets/k")
        .header("authorization", basic())
        .body("{not json")
        .reply(&gw.filter())
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res.body())["error_code"], "bad_parameters_error");
}

#[tokio::test]
async fn basic_credentials_win_over_a_stale_token() {
    let gw = TestGateway::new();
    let res = warp::test::request()
        .path("/api/v3.1/status")
        .header("authorization", basic())
        .header("authentication-token", "ctok-gone-x")
        .reply(&gw.filter())
        .await;
    assert_eq!(
        res.status(),
        200,
        "the client sends both headers when given both"
    );
}

/// Events come through ingest behind the status: a list of a just-ended execution's events
/// waits until its end event is indexed, and gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_just_ended_execution_wait_for_its_end_event() {
    let gw = TestGateway::new();
    let (s, _) = gw
        .upload(T, "hello", &hello_archive(), "blueprint.yaml")
        .await;
    assert_eq!(s, 201);
    let create = json!({"blueprint_id": "hello"});
    let (s, d) = gw
        .call(T, "PUT", "/api/v3.1/deployments/d1", Some(create))
        .await;
    assert_eq!(s, 201, "{d}");
    // An execution that ended now, its events still on their way.
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let execution = drover_model::Execution {
        id: "late".into(),
        deployment_id: "d1".into(),
        workflow_id: "install".into(),
        parameters: Default::default(),
        status: drover_model::ExecutionStatus::Terminated,
        error: String::new(),
        created_at: now.clone(),
        ended_at: Some(now.clone()),
        is_dry_run: false,
    };
    gw.gateway.store.put_execution(&execution).unwrap();
    let events = gw.gateway.events.clone();
    let late = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let end = drover_model::EventRecord {
            id: "late-end".into(),
            level: None,
            logger: None,
            event: drover_model::Event {
                event_type: "workflow_succeeded".into(),
                context: drover_model::EventContext {
                    deployment_id: "d1".into(),
                    execution_id: "late".into(),
                    workflow_id: "install".into(),
                    ..Default::default()
                },
                message: Default::default(),
                timestamp: now,
                kind: "cloudify_event".into(),
            },
        };
        events.append(&[end]).unwrap();
    });
    let asked = std::time::Instant::now();
    let (s, listed) = gw.get("/api/v3.1/events?execution_id=late").await;
    assert_eq!(s, 200, "{listed}");
    assert!(asked.elapsed() >= std::time::Duration::from_millis(500));
    assert_eq!(
        listed["items"][0]["event_type"], "workflow_succeeded",
        "{listed}"
    );
    late.join().unwrap();
}
