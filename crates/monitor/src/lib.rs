//! drover's monitor service: consumes agents' heartbeats from the `monitor.<n>` shards of the
//! consistent-hash `heartbeats` exchange, detects failed agents with a phi-accrual failure
//! detector per agent, and heals them through the workflow service.
//!
//! - [`phi`]: the detector, a pure function of arrival times.
//! - [`tracker`]: every agent's detector, and the guards against monitor stalls and
//!   shard-wide hiccups that turn suspicions into confirmed failures.
//! - [`heal`]: the [`heal::Healer`] seam to the workflow service and the queue that starts one
//!   heal per failed instance, never during an install, uninstall or scale.
//! - [`policy`]: threshold auto-scaling with a cooldown (a pure rule; heartbeats carry no
//!   metric yet, so nothing feeds it).
//! - [`service`]: a replica — shard claiming, consumers, checks, events, heals.
//! - [`grpc`], [`metrics`]: `GetHealth`/`ListAgents`, and Prometheus text on `/metrics`.

pub mod codec;
#[cfg(feature = "drill")]
pub mod drill;
pub mod events;
pub mod grpc;
pub mod heal;
pub mod metrics;
pub mod phi;
pub mod policy;
pub mod service;
pub mod tracker;
pub mod workflow_healer;

pub use heal::{Healer, MemoryHealer};
pub use service::{Health, Monitor, MonitorConfig};
