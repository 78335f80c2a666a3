//! drover's monitor service: heartbeats from the `monitor.<n>` shards of the consistent-hash
//! `heartbeats` exchange, a phi-accrual failure detector per agent ([`phi`]), and the decision
//! that an agent failed or recovered ([`tracker`]).

pub mod phi;
pub mod tracker;
