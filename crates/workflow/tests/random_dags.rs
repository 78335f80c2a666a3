//! Property: any random DAG of nodes installs in an order that respects every relationship,
//! and uninstalls in the reverse.

mod common;

use common::*;
use drover_workflow::testing::{PlanBuilder, RecordingRunner};
use proptest::prelude::*;

/// Node `i` depends on a random subset of nodes `0..i` (so the graph is acyclic); some are
/// contained in an earlier node, the rest connected to it.
fn dag() -> impl Strategy<Value = Vec<(u64, Vec<(usize, bool)>)>> {
    (1usize..8).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                (
                    1u64..3,
                    proptest::collection::vec((0..i.max(1), any::<bool>()), 0..=i.min(3)),
                )
            })
            .collect::<Vec<_>>()
    })
}

fn plan(spec: &[(u64, Vec<(usize, bool)>)]) -> drover_model::Plan {
    let mut b = PlanBuilder::new();
    for (i, (instances, deps)) in spec.iter().enumerate() {
        b = b.node(&format!("n{i}"), *instances);
        let mut contained = false;
        let mut seen = Vec::new();
        for &(target, containment) in deps {
            if target >= i || seen.contains(&target) {
                continue;
            }
            seen.push(target);
            if containment && !contained {
                contained = true;
                b = b.contained_in(&format!("n{target}"));
            } else {
                b = b.connected_to(&format!("n{target}"));
            }
        }
    }
    b.build()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_dags_install_and_uninstall_in_relationship_order(spec in dag()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let runner = RecordingRunner::new();
            let engine = engine(plan(&spec), runner.clone());
            install(&engine).await;
            let instances = engine.store().node_instances("d").unwrap();
            let lines = runner.record.lines();
            assert_relationship_order(&lines, &instances, true);
            assert!(instances.iter().all(|i| i.state == "started"));
            let n = lines.len();
            let (e, _) = run(&engine, "uninstall", serde_json::json!({})).await;
            assert_eq!(e.status, drover_model::ExecutionStatus::Terminated);
            assert_relationship_order(&runner.record.lines()[n..], &instances, false);
        });
    }
}
