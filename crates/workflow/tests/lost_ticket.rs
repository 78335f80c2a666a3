//! The ticket is a replica's lease on its execution: when the ticket's channel closes (a broker
//! restart, a lost connection) the broker gives the ticket out again, maybe to another
//! replica, so the replica that held it abandons its run. Two replicas on one `MemoryBus`
//! (whose `lose_connections` does what a broker restart does): the execution is resumed once,
//! ends once, and no operation runs twice.

mod cluster;

use std::sync::Arc;
use std::time::Duration;

use cluster::*;
use drover_bus::{Bus, MemoryBus};
use drover_store::{MemoryStore, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_ticket_goes_back_to_the_broker_abandons_its_run() {
    let memory = Arc::new(MemoryBus::new(drover_bus::suite::topology("lost-ticket")));
    let bus: Arc<dyn Bus> = memory.clone();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let plan = plan(6);
    let agents = agents(bus.clone(), &plan, Duration::from_millis(20)).await;
    let first = in_process(bus.clone(), store.clone(), "wf-first").await;
    let _second = in_process(bus, store.clone(), "wf-second").await;
    let mut client = client(first.addr).await;
    // Which replica the broker hands the ticket to again is chance: the one that ran it (it
    // holds the new copy and goes on, rightly) or the other, which resumes it — the case this
    // test is about. Installs are repeated until the other one got it.
    for attempt in 0..20 {
        let deployment = format!("d{attempt}");
        create_deployment(&mut client, &deployment, &plan).await;
        let ran_before = agents.runs.total();
        let install = start(&mut client, &deployment, "install").await;
        wait_runs(&agents.runs, ran_before + 5, Duration::from_secs(60)).await;
        // The operations in flight do not end meanwhile: the install is in the middle.
        agents.gate.send_replace(false);
        memory.lose_connections();
        // Longer than a replica's check of its ticket (250 ms).
        tokio::time::sleep(Duration::from_millis(600)).await;
        agents.gate.send_replace(true);

        let ended = wait_end(&mut client, &install.id, Duration::from_secs(120)).await;
        assert_eq!(ended.status, "terminated", "{}", ended.error);
        assert!(
            agents.runs.repeated().is_empty(),
            "operations run twice: {:?}",
            agents.runs.repeated()
        );
        assert!(
            store
                .node_instances(&deployment)
                .unwrap()
                .iter()
                .all(|i| i.state == "started")
        );
        let events = store.events(&install.id).unwrap();
        let count =
            |pick: &dyn Fn(&drover_model::Event) -> bool| events.iter().filter(|e| pick(e)).count();
        // Had the first run gone on beside the resumed one, the execution would have ended
        // twice.
        assert_eq!(
            count(&|e| e.event_type == "workflow_succeeded"),
            1,
            "{deployment}"
        );
        match count(&|e| e.message.text.starts_with("Resuming")) {
            0 => continue,
            1 => return,
            n => panic!("{deployment}: resumed {n} times"),
        }
    }
    panic!("the ticket never went to the other replica in 20 installs");
}
