//! Node instances: multiplying plan nodes into instances as Cloudify does.

use std::collections::BTreeMap;

use drover_model::{PlanNode, PlanNodeInstance, ScalingGroup};

use crate::Error;

/// Makes the node instances of a plan's nodes: `planned_instances` of each node per instance of
/// its host (contained_in multiplication), relationships to target instances by connection type,
/// and scaling-group membership.
pub fn node_instances(
    nodes: &[PlanNode],
    scaling_groups: &BTreeMap<String, ScalingGroup>,
) -> Result<Vec<PlanNodeInstance>, Error> {
    let _ = (nodes, scaling_groups);
    Err(Error::new("node instances are not written yet"))
}
