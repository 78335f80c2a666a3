//! The monitor's policies, from a blueprint's `groups` (Cloudify's `policies` inside a group,
//! each with `triggers`):
//!
//! - `cloudify.policies.types.host_failure` with an `execute_workflow` trigger of `heal`: the
//!   group's members are healed when their agent fails. A plan without any such policy gets the
//!   default auto-heal policy: every instance is healed.
//! - `cloudify.policies.types.threshold` with an `execute_workflow` trigger of `scale`: scale a
//!   group out when a heartbeat metric's average over the group's members stays above a
//!   threshold for a while, then wait out a cooldown before deciding again ([`ScalePolicy`],
//!   pure: time and values are arguments).
//!
//! Other policy types and triggers are reported as unsupported, not guessed at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use drover_model::{Map, Plan};
use serde_json::Value;

/// Cloudify's policy types and trigger this module reads.
pub const HOST_FAILURE: &str = "cloudify.policies.types.host_failure";
pub const THRESHOLD: &str = "cloudify.policies.types.threshold";
pub const EXECUTE_WORKFLOW: &str = "cloudify.policies.triggers.execute_workflow";

/// A threshold policy's cooldown when its properties give none (Cloudify's threshold type has
/// no such property; without one a sustained load would scale every `stability_time`).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);

/// Which instances are healed when their agent fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealScope {
    /// The default auto-heal policy: every instance.
    All,
    /// Only instances of these nodes (the members of `host_failure` policies' groups).
    Nodes(BTreeSet<String>),
}

/// A threshold policy: `policy` decides on the average of `metric` over the live agents
/// serving instances of `nodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRule {
    /// Where it came from, `<group>.<policy>`, for logs and events.
    pub name: String,
    /// The heartbeat metric (the policy's `service` property).
    pub metric: String,
    pub nodes: BTreeSet<String>,
    pub policy: ScalePolicy,
}

/// What the monitor does for one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentPolicies {
    pub heal: HealScope,
    pub scale: Vec<ScaleRule>,
    /// Policies read but not acted on, each with why (`<group>.<policy>: reason`).
    pub unsupported: Vec<String>,
}

impl Default for DeploymentPolicies {
    /// The default auto-heal policy and nothing else.
    fn default() -> Self {
        Self {
            heal: HealScope::All,
            scale: Vec::new(),
            unsupported: Vec::new(),
        }
    }
}

impl DeploymentPolicies {
    /// Reads the plan's groups; the default auto-heal policy when none has a `host_failure`
    /// policy that heals.
    pub fn from_plan(plan: &Plan) -> Self {
        let mut heal: Option<BTreeSet<String>> = None;
        let mut scale = Vec::new();
        let mut unsupported = Vec::new();
        for (group, definition) in &plan.groups {
            let Some(policies) = definition.get("policies").and_then(Value::as_object) else {
                continue;
            };
            let nodes = members(&plan.groups, group, &mut BTreeSet::new());
            for (name, policy) in policies {
                let name = format!("{group}.{name}");
                let kind = policy
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let workflows = trigger_workflows(policy);
                let result = match kind {
                    HOST_FAILURE => match workflows.iter().find(|(w, _)| w == "heal") {
                        Some(_) => {
                            heal.get_or_insert_default().extend(nodes.iter().cloned());
                            Ok(())
                        }
                        None => Err(format!(
                            "no execute_workflow trigger of heal ({workflows:?})"
                        )),
                    },
                    THRESHOLD => match workflows.iter().find(|(w, _)| w == "scale") {
                        Some((_, parameters)) => {
                            threshold(&name, group, policy, parameters, &nodes).map(|rule| {
                                scale.push(rule);
                            })
                        }
                        None => Err(format!(
                            "no execute_workflow trigger of scale ({workflows:?})"
                        )),
                    },
                    other => Err(format!("policy type {other:?} is not supported")),
                };
                if let Err(reason) = result {
                    unsupported.push(format!("{name}: {reason}"));
                }
            }
        }
        Self {
            heal: heal.map_or(HealScope::All, HealScope::Nodes),
            scale,
            unsupported,
        }
    }

    /// Whether an instance of `node` is healed when its agent fails (an unknown node only
    /// under the default policy).
    pub fn heals(&self, node: Option<&str>) -> bool {
        match (&self.heal, node) {
            (HealScope::All, _) => true,
            (HealScope::Nodes(nodes), Some(node)) => nodes.contains(node),
            (HealScope::Nodes(_), None) => false,
        }
    }
}

/// A deployment's policies and the node of each of its instances.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub policies: DeploymentPolicies,
    /// Instance id → node id.
    pub nodes: BTreeMap<String, String>,
}

impl Loaded {
    /// The node of `instance`, if known.
    pub fn node(&self, instance: &str) -> Option<&str> {
        self.nodes.get(instance).map(String::as_str)
    }
}

/// Where the monitor reads a deployment's policies from. Synchronous, like the state store;
/// the service calls it off the async threads.
pub trait PolicySource: Send + Sync {
    fn load(&self, deployment: &str) -> Result<Loaded, String>;
}

/// No blueprint to read: the default auto-heal policy for every deployment.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicies;

impl PolicySource for DefaultPolicies {
    fn load(&self, _: &str) -> Result<Loaded, String> {
        Ok(Loaded::default())
    }
}

/// Policies from the deployments' plans in the state store, and their instances' nodes (as
/// they are now: a scale adds instances). A deployment the store does not hold gets the
/// default policy.
pub struct StorePolicies(pub std::sync::Arc<dyn drover_store::StateStore>);

impl PolicySource for StorePolicies {
    fn load(&self, deployment: &str) -> Result<Loaded, String> {
        let failed = |e: drover_store::StoreError| format!("deployment {deployment}: {e}");
        let Some(stored) = self.0.deployment(deployment).map_err(failed)? else {
            return Ok(Loaded::default());
        };
        let nodes = self
            .0
            .node_instances(deployment)
            .map_err(failed)?
            .into_iter()
            .map(|i| (i.id, i.node_id))
            .collect();
        Ok(Loaded {
            policies: DeploymentPolicies::from_plan(&stored.plan),
            nodes,
        })
    }
}

/// The nodes of `group`, its member groups expanded (a cycle is cut, not followed).
fn members(groups: &Map, group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    if !seen.insert(group.to_owned()) {
        return nodes;
    }
    let listed = groups
        .get(group)
        .and_then(|g| g.get("members"))
        .and_then(Value::as_array);
    for member in listed.into_iter().flatten().filter_map(Value::as_str) {
        if groups.contains_key(member) {
            nodes.extend(members(groups, member, seen));
        } else {
            nodes.insert(member.to_owned());
        }
    }
    nodes
}

/// The policy's `execute_workflow` triggers: (workflow, workflow_parameters).
fn trigger_workflows(policy: &Value) -> Vec<(String, Map)> {
    let triggers = policy.get("triggers").and_then(Value::as_object);
    triggers
        .into_iter()
        .flat_map(|t| t.values())
        .filter(|t| t.get("type").and_then(Value::as_str) == Some(EXECUTE_WORKFLOW))
        .filter_map(|t| {
            let parameters = t.get("parameters")?;
            let workflow = parameters.get("workflow")?.as_str()?.to_owned();
            let arguments = parameters
                .get("workflow_parameters")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Some((workflow, arguments))
        })
        .collect()
}

/// A `threshold` policy's rule: `service` names the metric, `threshold` the value,
/// `stability_time` (seconds) how long it must hold, `cooldown` (seconds, drover's) the wait
/// after a decision; the trigger's `delta` (default 1) and `scalable_entity_name` (default the
/// group) what to scale. Only upper bounds (`upper_bound`, default true) are supported.
fn threshold(
    name: &str,
    group: &str,
    policy: &Value,
    trigger: &Map,
    nodes: &BTreeSet<String>,
) -> Result<ScaleRule, String> {
    let properties = policy.get("properties").cloned().unwrap_or(Value::Null);
    let number = |key: &str| properties.get(key).and_then(Value::as_f64);
    let seconds = |key: &str, default: Duration| match properties.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or(format!("{key} is not a number of seconds: {value}")),
    };
    let metric = match properties.get("service") {
        Some(Value::String(metric)) => metric.clone(),
        Some(Value::Array(list)) if list.len() == 1 && list[0].is_string() => {
            list[0].as_str().unwrap_or_default().to_owned()
        }
        other => return Err(format!("service must name one metric, not {other:?}")),
    };
    if properties.get("upper_bound").and_then(Value::as_bool) == Some(false) {
        return Err("lower bounds (upper_bound: false) are not supported".into());
    }
    let threshold = number("threshold").ok_or("threshold must be a number")?;
    let delta = match trigger.get("delta") {
        None => 1,
        Some(value) => value
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d > 0)
            .ok_or(format!("delta must be a positive integer, not {value}"))?,
    };
    let target = trigger
        .get("scalable_entity_name")
        .and_then(Value::as_str)
        .unwrap_or(group);
    Ok(ScaleRule {
        name: name.to_owned(),
        metric,
        nodes: nodes.clone(),
        policy: ScalePolicy {
            group: target.to_owned(),
            threshold,
            sustained: seconds("stability_time", Duration::ZERO)?,
            cooldown: seconds("cooldown", DEFAULT_COOLDOWN)?,
            delta,
        },
    })
}

/// One group's rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// The scaling group (the blueprint's `groups`) to scale.
    pub group: String,
    /// The value above which the group is overloaded.
    pub threshold: f64,
    /// How long the value must stay above the threshold: a spike does not scale.
    pub sustained: Duration,
    /// After a decision, how long before the next: the new instances need time to take load.
    pub cooldown: Duration,
    /// Instances added per decision.
    pub delta: u32,
}

/// A decision to scale `group` by `delta` instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    pub group: String,
    pub delta: u32,
}

/// What a [`ScalePolicy`] remembers between observations.
#[derive(Debug, Clone, Default)]
pub struct ScaleState {
    above_since: Option<Instant>,
    last_decision: Option<Instant>,
}

impl ScalePolicy {
    /// The group's average `value` at `now`: a decision when it has been above the threshold
    /// for `sustained` and the cooldown since the last decision has passed.
    pub fn observe(
        &self,
        state: &mut ScaleState,
        value: f64,
        now: Instant,
    ) -> Option<ScaleDecision> {
        if value.is_nan() || value <= self.threshold {
            state.above_since = None;
            return None;
        }
        let since = *state.above_since.get_or_insert(now);
        let cooling = state
            .last_decision
            .is_some_and(|last| now.saturating_duration_since(last) < self.cooldown);
        if cooling || now.saturating_duration_since(since) < self.sustained {
            return None;
        }
        state.last_decision = Some(now);
        // The load must build up again (or stay up) for a full period before the next one.
        state.above_since = None;
        Some(ScaleDecision {
            group: self.group.clone(),
            delta: self.delta,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(groups: Value) -> Plan {
        Plan {
            groups: groups.as_object().cloned().unwrap(),
            ..Plan::default()
        }
    }

    fn trigger(workflow: &str, parameters: Value) -> Value {
        json!({"type": EXECUTE_WORKFLOW,
               "parameters": {"workflow": workflow, "workflow_parameters": parameters}})
    }

    #[test]
    fn without_a_host_failure_policy_every_instance_is_healed() {
        let policies = DeploymentPolicies::from_plan(&Plan::default());
        assert_eq!(policies, DeploymentPolicies::default());
        assert!(policies.heals(Some("anything")) && policies.heals(None));
    }

    #[test]
    fn host_failure_policies_heal_their_groups_members_and_nested_groups() {
        let policies = DeploymentPolicies::from_plan(&plan(json!({
            "inner": {"members": ["db"]},
            "outer": {"members": ["web", "inner"], "policies": {
                "autoheal": {"type": HOST_FAILURE, "properties": {},
                             "triggers": {"t": trigger("heal", json!({}))}}}},
            "loop_a": {"members": ["loop_b", "cache"]},
            "loop_b": {"members": ["loop_a"], "policies": {
                "autoheal": {"type": HOST_FAILURE,
                             "triggers": {"t": trigger("heal", json!({}))}}}},
        })));
        let nodes = ["cache", "db", "web"].map(String::from).into();
        assert_eq!(policies.heal, HealScope::Nodes(nodes));
        assert!(policies.heals(Some("web")) && policies.heals(Some("db")));
        assert!(!policies.heals(Some("lb")) && !policies.heals(None));
        assert!(
            policies.unsupported.is_empty(),
            "{:?}",
            policies.unsupported
        );
    }

    #[test]
    fn a_threshold_policy_with_a_scale_trigger_is_a_scale_rule() {
        let policies = DeploymentPolicies::from_plan(&plan(json!({
            "webs": {"members": ["web"], "policies": {
                "up": {"type": THRESHOLD,
                       "properties": {"service": "load", "threshold": 0.8,
                                      "stability_time": 30, "cooldown": 120},
                       "triggers": {"t": trigger("scale",
                           json!({"delta": 2, "scalable_entity_name": "web_tier"}))}},
                "down": {"type": THRESHOLD,
                         "properties": {"service": "load", "threshold": 0.1,
                                        "upper_bound": false},
                         "triggers": {"t": trigger("scale", json!({"delta": 1}))}},
                "custom": {"type": "acme.policies.magic"}}},
        })));
        assert_eq!(
            policies.scale,
            [ScaleRule {
                name: "webs.up".into(),
                metric: "load".into(),
                nodes: ["web".to_owned()].into(),
                policy: ScalePolicy {
                    group: "web_tier".into(),
                    threshold: 0.8,
                    sustained: Duration::from_secs(30),
                    cooldown: Duration::from_secs(120),
                    delta: 2,
                },
            }]
        );
        // No host_failure policy: the default auto-heal policy still holds.
        assert_eq!(policies.heal, HealScope::All);
        let mut unsupported = policies.unsupported.clone();
        unsupported.sort();
        assert_eq!(unsupported.len(), 2, "{unsupported:?}");
        assert!(unsupported[0].starts_with("webs.custom: policy type"));
        assert!(unsupported[1].starts_with("webs.down: lower bounds"));
    }

    #[test]
    fn bad_threshold_properties_are_reported_not_guessed() {
        let bad = |properties: Value, parameters: Value| {
            let policies = DeploymentPolicies::from_plan(&plan(json!({
                "g": {"members": ["web"], "policies": {"p": {"type": THRESHOLD,
                    "properties": properties,
                    "triggers": {"t": trigger("scale", parameters)}}}}})));
            assert!(policies.scale.is_empty());
            policies.unsupported.join("; ")
        };
        let ok = json!({"service": "load", "threshold": 1});
        assert!(bad(json!({"threshold": 1}), json!({})).contains("service must name one metric"));
        assert!(bad(json!({"service": "load"}), json!({})).contains("threshold must be"));
        assert!(bad(ok.clone(), json!({"delta": -1})).contains("delta must be"));
        let slow = json!({"service": "load", "threshold": 1, "stability_time": "soon"});
        assert!(bad(slow, json!({})).contains("stability_time is not"));
        // The group itself is scaled by default, by one.
        let policies = DeploymentPolicies::from_plan(&plan(json!({
            "g": {"members": ["web"], "policies": {"p": {"type": THRESHOLD,
                "properties": ok, "triggers": {"t": trigger("scale", json!({}))}}}}})));
        let rule = &policies.scale[0].policy;
        assert_eq!((rule.group.as_str(), rule.delta), ("g", 1));
        assert_eq!(rule.cooldown, DEFAULT_COOLDOWN);
        // A host_failure policy that would run another workflow is unsupported: the default
        // auto-heal policy holds.
        let other = DeploymentPolicies::from_plan(&plan(json!({
            "g": {"members": ["web"], "policies": {"p": {"type": HOST_FAILURE,
                "triggers": {"t": trigger("auto_heal_workflow", json!({}))}}}}})));
        assert_eq!(other.heal, HealScope::All);
        assert_eq!(other.unsupported.len(), 1);
    }

    fn policy() -> ScalePolicy {
        ScalePolicy {
            group: "web".into(),
            threshold: 0.8,
            sustained: Duration::from_secs(30),
            cooldown: Duration::from_secs(120),
            delta: 2,
        }
    }

    /// Feeds `value(t)` every second for `seconds`; the seconds at which it decided.
    fn decisions(value: impl Fn(u64) -> f64, seconds: u64) -> Vec<u64> {
        let policy = policy();
        let mut state = ScaleState::default();
        let start = Instant::now();
        (0..seconds)
            .filter(|&t| {
                let now = start + Duration::from_secs(t);
                policy.observe(&mut state, value(t), now).is_some()
            })
            .collect()
    }

    #[test]
    fn sustained_load_scales_once_then_waits_out_the_cooldown() {
        assert_eq!(decisions(|_| 0.95, 200), [30, 150]);
    }

    #[test]
    fn spikes_shorter_than_the_period_never_scale() {
        // 20 s above, 5 s below, over and over.
        assert!(decisions(|t| if t % 25 < 20 { 0.95 } else { 0.5 }, 300).is_empty());
    }

    #[test]
    fn at_the_threshold_or_unknown_is_not_above() {
        assert!(decisions(|_| 0.8, 100).is_empty());
        assert!(decisions(|_| f64::NAN, 100).is_empty());
    }

    #[test]
    fn a_decision_names_the_group_and_delta() {
        let policy = policy();
        let mut state = ScaleState::default();
        let start = Instant::now();
        assert_eq!(policy.observe(&mut state, 0.9, start), None);
        assert_eq!(
            policy.observe(&mut state, 0.9, start + Duration::from_secs(31)),
            Some(ScaleDecision {
                group: "web".into(),
                delta: 2
            })
        );
    }
}
