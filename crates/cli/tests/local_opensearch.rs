//! `drover local` with its state in OpenSearch (`--store http://…`): a dry-run install of
//! examples/hello leaves a terminated execution and started instances there. `#[ignore]`d: run
//! with `--ignored` and DROVER_OPENSEARCH_URL set (scripts/test starts a node).

use std::path::Path;
use std::process::Command;

use drover_model::ExecutionStatus;
use drover_store::OpenSearchOptions;
use drover_store::opensearch::Client;

#[test]
#[ignore = "needs OpenSearch at DROVER_OPENSEARCH_URL"]
fn dry_run_install_of_hello_with_the_opensearch_store() {
    let url = std::env::var("DROVER_OPENSEARCH_URL")
        .expect("DROVER_OPENSEARCH_URL is not set: start OpenSearch with scripts/opensearch");
    let prefix = format!("t-cli-{}", std::process::id());
    let store_url = format!("{url}?prefix={prefix}");
    let dir = tempfile::tempdir().unwrap();
    let blueprint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/blueprint.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["local", "install"])
        .arg(&blueprint)
        .args(["--dry-run", "--store", &store_url, "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);

    let store = drover_store::open(&store_url).unwrap();
    let deployments = store.deployments().unwrap();
    let instances = store.node_instances("local").unwrap();
    let executions = store.executions("local").unwrap();
    let mut options = OpenSearchOptions::new(url);
    options.prefix = prefix;
    let cleanup = Client::new(options).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cleanup.delete_everything())
        .unwrap();

    assert!(out.status.success(), "{stderr}");
    assert_eq!(deployments, ["local"]);
    assert!(!instances.is_empty());
    assert!(
        instances.iter().all(|i| i.state == "started"),
        "{instances:?}"
    );
    assert_eq!(executions.len(), 1);
    assert_eq!(executions[0].status, ExecutionStatus::Terminated);
    assert!(
        !dir.path().join("deployments").exists(),
        "nothing of the state went to the state directory"
    );
}
