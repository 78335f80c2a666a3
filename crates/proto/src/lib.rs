//! Rust types generated from `proto/`: gRPC clients and servers for drover's services and the
//! versioned message bodies that travel on the bus.
//!
//! Modules follow the protobuf packages: `drover.workflow.v1` is [`drover::workflow::v1`].
//! The version is part of the package name so that a breaking change is a new package that can
//! live beside the old one while replicas of both versions run.
#![allow(clippy::all, missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/packages.rs"));

pub mod codec;

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn a_message_of_each_package_round_trips() {
        let execution = crate::drover::workflow::v1::Execution {
            id: "e1".into(),
            deployment_id: "d1".into(),
            workflow_id: "install".into(),
            status: "started".into(),
            ..Default::default()
        };
        let bytes = execution.encode_to_vec();
        let back = crate::drover::workflow::v1::Execution::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, execution);
    }
}
