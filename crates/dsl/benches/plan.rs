//! Plans `../shared/bench/gen_blueprint.py` blueprints in-process through `plan_file`: the
//! parser and the instance multiplication without process start-up and JSON output (for those,
//! and for peak memory, see `scripts/bench plan`).
//!
//! The generator lives in the shared folder beside the repository; without it the benchmark
//! says so and measures nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use drover_dsl::{Options, plan_file};

/// (hosts, apps per host): 1,011 and 10,101 node instances.
const SHAPES: [(u32, u32); 2] = [(10, 100), (100, 100)];

/// `../shared/bench` relative to the repository root.
fn shared_bench() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench")
}

/// Writes `gen_blueprint.py HOSTS APPS` with `types.yaml` beside it into a directory under
/// target/, and returns the blueprint's path.
fn generate(bench: &Path, hosts: u32, apps: u32) -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-blueprints")
        .join(format!("{hosts}x{apps}"));
    let status = Command::new("python3")
        .arg(bench.join("gen_blueprint.py"))
        .args([hosts.to_string(), apps.to_string()])
        .arg(&dir)
        .status()
        .map_err(|e| format!("python3: {e}"))?;
    if !status.success() {
        return Err(format!("gen_blueprint.py {hosts} {apps}: {status}"));
    }
    std::fs::copy(bench.join("types.yaml"), dir.join("types.yaml"))
        .map_err(|e| format!("types.yaml: {e}"))?;
    Ok(dir.join("blueprint.yaml"))
}

fn plan(c: &mut Criterion) {
    let bench = shared_bench();
    if !bench.join("gen_blueprint.py").is_file() {
        eprintln!(
            "skipping the plan benchmark: {} is missing (the shared folder beside the repository)",
            bench.display()
        );
        return;
    }
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    for (hosts, apps) in SHAPES {
        let blueprint = match generate(&bench, hosts, apps) {
            Ok(blueprint) => blueprint,
            Err(e) => {
                eprintln!("skipping plan {hosts}x{apps}: {e}");
                continue;
            }
        };
        let options = Options::default();
        if let Err(e) = plan_file(&blueprint, &options) {
            eprintln!("skipping plan {hosts}x{apps}: the blueprint does not plan: {e}");
            continue;
        }
        let instances = hosts * apps + hosts + 1;
        group.bench_function(format!("{hosts}x{apps} ({instances} instances)"), |b| {
            b.iter(|| plan_file(&blueprint, &options).map(|plan| plan.node_instances.len()))
        });
    }
    group.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);
