//! The engine alone on the scale benchmark's shape (`gen_blueprint.py HOSTS APPS`: one db,
//! HOSTS Compute instances, HOSTS×APPS apps contained in them and connected to the db), dry run,
//! plan built by hand so the parser is not measured. `cargo bench -p drover-workflow --bench
//! engine [-- HOSTS APPS]`; `scripts/bench engine` measures the whole `drover local` command.

use std::sync::Arc;
use std::time::Instant;

use drover_model::{ExecutionStatus, Map};
use drover_store::{FileStore, MemoryStore, StateStore};
use drover_workflow::NewDeployment;
use drover_workflow::testing::PlanBuilder;
use drover_workflow::{Canceller, Engine, InProcessDispatcher, NoRunner, NullObserver, RunOptions};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (hosts, apps) = match args.as_slice() {
        [h, a, ..] => (*h, *a),
        _ => (100, 100),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stores: [(&str, Arc<dyn StateStore>); 2] = [
        ("memory", Arc::new(MemoryStore::new())),
        (
            "file",
            Arc::new(FileStore::open(dir.path()).expect("a file store")),
        ),
    ];
    for (name, store) in stores {
        let plan = PlanBuilder::new()
            .node("db", 1)
            .compute("host", hosts)
            .node("app", apps)
            .contained_in("host")
            .connected_to("db")
            .build();
        let instances = plan.node_instances.len();
        let engine = Engine::new(store, InProcessDispatcher::new(NoRunner));
        engine
            .create_deployment(NewDeployment::new("d", "bench", plan))
            .expect("a deployment");
        for workflow in ["install", "uninstall"] {
            let started = Instant::now();
            let execution = engine
                .create_execution("d", workflow, Map::new(), true)
                .expect("an execution");
            let (_canceller, cancel) = Canceller::new();
            // As `drover local`: events are not kept in the state store.
            let options = RunOptions {
                keep_events: false,
                ..RunOptions::default()
            };
            let done = runtime
                .block_on(engine.run(&execution.id, &options, &mut NullObserver, cancel))
                .expect("a run");
            assert_eq!(done.status, ExecutionStatus::Terminated, "{}", done.error);
            println!(
                "{name} store: {workflow} of {instances} instances, dry run: {:.3} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
