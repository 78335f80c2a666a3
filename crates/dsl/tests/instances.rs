//! Node instances from hand-made plan nodes: contained_in multiplication, connection types and
//! scaling groups. The scaling-group cases are those of Cloudify's own
//! `dsl_parser/tests/scaling/test_groups.py` (deployment creation), with the same expectations,
//! checked the same way: instances per node, group instances and their members, and each
//! relationship's connected components (how many, sources and targets in each).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_dsl::instances::node_instances;
use drover_model::{PlanNode, PlanNodeInstance, PlanRelationship, ScalingGroup};
use serde_json::json;

const CONTAINED_IN: &str = "cloudify.relationships.contained_in";
const CONNECTED_TO: &str = "cloudify.relationships.connected_to";
const DEPENDS_ON: &str = "cloudify.relationships.depends_on";

// ---- building plan nodes ----

fn node(id: &str) -> PlanNode {
    let mut node = PlanNode {
        id: id.into(),
        name: id.into(),
        type_name: "cloudify.nodes.Root".into(),
        ..PlanNode::default()
    };
    node.capabilities.scalable.properties.planned_instances = 1;
    node
}

fn compute(id: &str) -> PlanNode {
    let mut node = node(id);
    node.type_name = "cloudify.nodes.Compute".into();
    node.host_id = Some(id.into());
    node
}

fn instances(mut node: PlanNode, planned: u64) -> PlanNode {
    node.capabilities.scalable.properties.planned_instances = planned;
    node
}

fn relationship(node: &mut PlanNode, type_name: &str, target: &str, connection: Option<&str>) {
    let mut type_hierarchy = vec![DEPENDS_ON.to_string()];
    if type_name != DEPENDS_ON {
        type_hierarchy.push(type_name.to_string());
    }
    let mut properties = drover_model::Map::new();
    if let Some(connection) = connection {
        properties.insert("connection_type".into(), json!(connection));
    }
    node.relationships.push(PlanRelationship {
        type_name: type_name.into(),
        target_id: target.into(),
        type_hierarchy,
        properties,
        ..PlanRelationship::default()
    });
}

fn contained_in(mut node: PlanNode, target: &str) -> PlanNode {
    relationship(&mut node, CONTAINED_IN, target, None);
    node
}

fn connected_to(mut node: PlanNode, target: &str) -> PlanNode {
    relationship(&mut node, CONNECTED_TO, target, Some("all_to_all"));
    node
}

fn all_to_one(mut node: PlanNode, target: &str) -> PlanNode {
    relationship(&mut node, CONNECTED_TO, target, Some("all_to_one"));
    node
}

fn groups(specs: &[(&str, u64, &[&str])]) -> BTreeMap<String, ScalingGroup> {
    specs
        .iter()
        .map(|(name, planned, members)| {
            let mut group = ScalingGroup {
                members: members.iter().map(|m| m.to_string()).collect(),
                ..ScalingGroup::default()
            };
            group.properties.planned_instances = *planned;
            (name.to_string(), group)
        })
        .collect()
}

fn plan(nodes: &[PlanNode], groups: &BTreeMap<String, ScalingGroup>) -> Vec<PlanNodeInstance> {
    let instances = node_instances(nodes, groups).expect("node instances");
    assert_valid(&instances);
    instances
}

// ---- checking instances ----

/// Ids are `<node>_<6 of [a-z0-9]>` and unique; every target and host id is an instance.
fn assert_valid(instances: &[PlanNodeInstance]) {
    let ids: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), instances.len(), "instance ids are unique");
    for instance in instances {
        let suffix = instance
            .id
            .strip_prefix(&format!("{}_", instance.node_id))
            .expect("id starts with the node id");
        assert_eq!(suffix.len(), 6, "{}", instance.id);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{}",
            instance.id
        );
        for r in &instance.relationships {
            assert!(ids.contains(r.target_id.as_str()), "{r:?}");
            assert!(r.target_id.starts_with(&format!("{}_", r.target_name)));
        }
        if let Some(host) = &instance.host_id {
            assert!(ids.contains(host.as_str()), "host {host}");
        }
    }
}

fn count_of(instances: &[PlanNodeInstance], node: &str) -> usize {
    instances.iter().filter(|i| i.node_id == node).count()
}

fn by_id(instances: &[PlanNodeInstance]) -> HashMap<&str, &PlanNodeInstance> {
    instances.iter().map(|i| (i.id.as_str(), i)).collect()
}

/// The normal form of `conformance/plan_norm.py`: (node, host node, [(type, target node) →
/// count]) → number of instances of that shape.
type Shape = (String, Option<String>, Vec<((String, String), usize)>);

fn shapes(instances: &[PlanNodeInstance]) -> BTreeMap<Shape, usize> {
    let ids = by_id(instances);
    let mut shapes = BTreeMap::new();
    for i in instances {
        let host = i
            .host_id
            .as_deref()
            .and_then(|h| ids.get(h))
            .map(|h| h.node_id.clone());
        let mut reach: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in &i.relationships {
            *reach
                .entry((short(&r.type_name), r.target_name.clone()))
                .or_default() += 1;
        }
        *shapes
            .entry((i.node_id.clone(), host, reach.into_iter().collect()))
            .or_default() += 1;
    }
    shapes
}

fn short(type_name: &str) -> String {
    type_name
        .trim_start_matches("cloudify.relationships.")
        .into()
}

fn shape(
    node: &str,
    host: Option<&str>,
    reach: &[(&str, &str, usize)],
    count: usize,
) -> (Shape, usize) {
    let mut reach: Vec<((String, String), usize)> = reach
        .iter()
        .map(|(t, n, c)| ((t.to_string(), n.to_string()), *c))
        .collect();
    reach.sort();
    ((node.into(), host.map(Into::into), reach), count)
}

/// Every group instance an instance is in: its own `scaling_groups` and its container's, up.
fn group_instances_of(instances: &[PlanNodeInstance]) -> HashMap<String, BTreeSet<String>> {
    let ids = by_id(instances);
    let mut result = HashMap::new();
    for i in instances {
        let mut set = BTreeSet::new();
        let mut current = Some(i);
        while let Some(instance) = current {
            set.extend(instance.scaling_groups.iter().map(|g| g.id.clone()));
            current = instance
                .relationships
                .iter()
                .find(|r| r.type_name == CONTAINED_IN)
                .and_then(|r| ids.get(r.target_id.as_str()).copied());
        }
        result.insert(i.id.clone(), set);
    }
    result
}

/// Cloudify's `_assert_groups`: the number of instances of each group, and in each one, the
/// number of instances of each member node (members of subgroups and contained nodes included).
/// (group, instances of the group, [(member node, instances in each group instance)]).
type ExpectedGroup<'a> = (&'a str, usize, &'a [(&'a str, usize)]);

fn assert_groups(instances: &[PlanNodeInstance], expected: &[ExpectedGroup]) {
    let in_groups = group_instances_of(instances);
    for (group, count, members) in expected {
        let group_ids: BTreeSet<&str> = instances
            .iter()
            .flat_map(|i| &i.scaling_groups)
            .filter(|g| g.name == *group)
            .map(|g| g.id.as_str())
            .collect();
        assert_eq!(group_ids.len(), *count, "instances of group {group}");
        for group_id in group_ids {
            let mut found: BTreeMap<&str, usize> = BTreeMap::new();
            for i in instances
                .iter()
                .filter(|i| in_groups[&i.id].contains(group_id))
            {
                *found.entry(i.node_id.as_str()).or_default() += 1;
            }
            let expected: BTreeMap<&str, usize> = members.iter().copied().collect();
            assert_eq!(found, expected, "members of {group_id}");
        }
    }
}

/// Cloudify's `_assert_relationships`: the instances of `source` and the `target` instances they
/// reach form `components` connected components; each has `sources` source instances, each
/// connected to all of the component's `targets` target instances, all in one instance of each
/// of `groups`.
fn assert_relationship(
    instances: &[PlanNodeInstance],
    source: &str,
    target: &str,
    (components, sources, targets): (usize, usize, usize),
    groups: &[&str],
) {
    let mut union = UnionFind::default();
    let mut out_degree: HashMap<&str, usize> = HashMap::new();
    for i in instances.iter().filter(|i| i.node_id == source) {
        union.add(&i.id);
        for r in i.relationships.iter().filter(|r| r.target_name == target) {
            union.add(&r.target_id);
            union.join(&i.id, &r.target_id);
            *out_degree.entry(&i.id).or_default() += 1;
        }
    }
    let is_source = |id: &str| instances.iter().any(|i| i.id == id && i.node_id == source);
    let mut by_root: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for id in union.members() {
        let entry = by_root.entry(union.root(&id)).or_default();
        if is_source(&id) {
            entry.0.push(id);
        } else {
            entry.1.push(id);
        }
    }
    assert_eq!(
        by_root.len(),
        components,
        "{source} -> {target}: components"
    );
    let in_groups = group_instances_of(instances);
    for (component_sources, component_targets) in by_root.values() {
        assert_eq!(
            component_sources.len(),
            sources,
            "{source} -> {target}: sources"
        );
        assert_eq!(
            component_targets.len(),
            targets,
            "{source} -> {target}: targets"
        );
        for s in component_sources {
            assert_eq!(out_degree.get(s.as_str()).copied().unwrap_or(0), targets);
        }
        for group in groups {
            let shared = component_sources
                .iter()
                .chain(component_targets)
                .map(|id| {
                    in_groups[id]
                        .iter()
                        .filter(|g| g.starts_with(&format!("{group}_")))
                        .cloned()
                        .collect::<BTreeSet<_>>()
                })
                .reduce(|a, b| a.intersection(&b).cloned().collect())
                .unwrap_or_default();
            assert_eq!(
                shared.len(),
                1,
                "{source} -> {target}: one instance of {group}"
            );
        }
    }
}

#[derive(Default)]
struct UnionFind {
    parent: HashMap<String, String>,
}

impl UnionFind {
    fn add(&mut self, id: &str) {
        self.parent.entry(id.into()).or_insert_with(|| id.into());
    }
    fn root(&self, id: &str) -> String {
        let mut id = id.to_string();
        while self.parent[&id] != id {
            id = self.parent[&id].clone();
        }
        id
    }
    fn join(&mut self, a: &str, b: &str) {
        let (a, b) = (self.root(a), self.root(b));
        self.parent.insert(a, b);
    }
    fn members(&self) -> Vec<String> {
        self.parent.keys().cloned().collect()
    }
}

fn no_groups() -> BTreeMap<String, ScalingGroup> {
    BTreeMap::new()
}

// ---- without scaling groups ----

#[test]
fn single_compute_is_its_own_host() {
    let instances = plan(&[instances(compute("host"), 2)], &no_groups());
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert_eq!(i.host_id.as_deref(), Some(i.id.as_str()));
        assert!(i.relationships.is_empty() && i.scaling_groups.is_empty());
    }
}

#[test]
fn unhosted_node_has_no_host_id() {
    let instances = plan(&[node("network")], &no_groups());
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].host_id, None);
}

#[test]
fn zero_planned_instances_make_none_below_either() {
    let nodes = [
        instances(compute("vm"), 0),
        contained_in(node("app"), "vm"),
        connected_to(node("client"), "app"),
    ];
    let instances = plan(&nodes, &no_groups());
    assert_eq!(count_of(&instances, "vm"), 0);
    assert_eq!(count_of(&instances, "app"), 0);
    assert_eq!(count_of(&instances, "client"), 1);
    assert!(instances[0].relationships.is_empty());
}

#[test]
fn contained_in_multiplies_along_the_host_chain() {
    let nodes = [
        instances(compute("vm"), 3),
        instances(contained_in(node("server"), "vm"), 2),
        instances(contained_in(node("app"), "server"), 4),
    ];
    let instances = plan(&nodes, &no_groups());
    assert_eq!(count_of(&instances, "vm"), 3);
    assert_eq!(count_of(&instances, "server"), 6);
    assert_eq!(count_of(&instances, "app"), 24);
    let ids = by_id(&instances);
    for app in instances.iter().filter(|i| i.node_id == "app") {
        let server = ids[app.relationships[0].target_id.as_str()];
        assert_eq!(server.node_id, "server");
        // Every instance is hosted on the vm its chain of containers ends at.
        assert_eq!(app.host_id, server.host_id);
        assert_eq!(
            server.host_id.as_deref(),
            Some(server.relationships[0].target_id.as_str())
        );
    }
    // Each server instance holds exactly 4 apps.
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for app in instances.iter().filter(|i| i.node_id == "app") {
        *per_server
            .entry(&app.relationships[0].target_id)
            .or_default() += 1;
    }
    assert_eq!(per_server.len(), 6);
    assert!(per_server.values().all(|&n| n == 4));
}

#[test]
fn compute_in_compute_is_hosted_on_the_outer_one() {
    let nodes = [compute("vm"), contained_in(compute("container"), "vm")];
    let instances = plan(&nodes, &no_groups());
    let vm = instances.iter().find(|i| i.node_id == "vm").unwrap();
    let container = instances.iter().find(|i| i.node_id == "container").unwrap();
    assert_eq!(container.host_id, Some(vm.id.clone()));
}

/// Cloudify's test_connected_to_and_contained_in_with_and_without_host_id.
#[test]
fn connection_types_all_to_all_and_all_to_one() {
    let mut webserver2 = contained_in(node("webserver2"), "host2");
    relationship(&mut webserver2, DEPENDS_ON, "db", Some("all_to_all"));
    let nodes = [
        instances(compute("host1"), 2),
        instances(compute("host2"), 2),
        instances(compute("host3"), 2),
        node("network"),
        instances(contained_in(node("db"), "host1"), 2),
        all_to_one(contained_in(node("webserver1"), "host2"), "db"),
        webserver2,
        contained_in(node("db_dependent"), "db"),
    ];
    let instances = plan(&nodes, &no_groups());
    assert_eq!(instances.len(), 19);
    let expected: BTreeMap<Shape, usize> = [
        shape("host1", Some("host1"), &[], 2),
        shape("host2", Some("host2"), &[], 2),
        shape("host3", Some("host3"), &[], 2),
        shape("network", None, &[], 1),
        shape("db", Some("host1"), &[("contained_in", "host1", 1)], 4),
        shape(
            "db_dependent",
            Some("host1"),
            &[("contained_in", "db", 1)],
            4,
        ),
        shape(
            "webserver1",
            Some("host2"),
            &[("contained_in", "host2", 1), ("connected_to", "db", 1)],
            2,
        ),
        shape(
            "webserver2",
            Some("host2"),
            &[("contained_in", "host2", 1), ("depends_on", "db", 4)],
            2,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(shapes(&instances), expected);
    // all_to_one: every source reaches the same instance, the one with the smallest id.
    let targets: BTreeSet<&str> = instances
        .iter()
        .filter(|i| i.node_id == "webserver1")
        .map(|i| i.relationships[1].target_id.as_str())
        .collect();
    let smallest_db = instances
        .iter()
        .filter(|i| i.node_id == "db")
        .map(|i| i.id.as_str())
        .min()
        .unwrap();
    assert_eq!(targets, BTreeSet::from([smallest_db]));
    // Each db_dependent is hosted where its db is.
    let ids = by_id(&instances);
    for dependent in instances.iter().filter(|i| i.node_id == "db_dependent") {
        let db = ids[dependent.relationships[0].target_id.as_str()];
        assert_eq!(dependent.host_id, db.host_id);
    }
}

#[test]
fn connected_to_reaches_every_target_instance_across_hosts() {
    let nodes = [
        instances(compute("host"), 3),
        instances(contained_in(node("app"), "host"), 2),
        connected_to(contained_in(node("sidecar"), "host"), "app"),
    ];
    let instances = plan(&nodes, &no_groups());
    for sidecar in instances.iter().filter(|i| i.node_id == "sidecar") {
        assert_eq!(sidecar.relationships.len(), 1 + 6);
    }
}

#[test]
fn relationships_keep_the_node_order() {
    let mut app = connected_to(node("app"), "db");
    relationship(&mut app, CONTAINED_IN, "vm", None);
    app = connected_to(app, "cache");
    let nodes = [compute("vm"), node("db"), node("cache"), app];
    let instances = plan(&nodes, &no_groups());
    let app = instances.iter().find(|i| i.node_id == "app").unwrap();
    let order: Vec<&str> = app
        .relationships
        .iter()
        .map(|r| r.target_name.as_str())
        .collect();
    assert_eq!(order, ["db", "vm", "cache"]);
}

/// Cloudify's graph holds one edge per pair of nodes: of two relationships to one target, the
/// last one is the one instantiated.
#[test]
fn of_two_relationships_to_one_target_the_last_wins() {
    let mut app = connected_to(node("app"), "db");
    relationship(&mut app, DEPENDS_ON, "db", None);
    let instances = plan(&[instances(node("db"), 2), app], &no_groups());
    let app = instances.iter().find(|i| i.node_id == "app").unwrap();
    assert_eq!(app.relationships.len(), 2);
    assert!(app.relationships.iter().all(|r| r.type_name == DEPENDS_ON));
}

#[test]
fn connection_type_defaults_to_all_to_all() {
    let mut app = node("app");
    relationship(&mut app, CONNECTED_TO, "db", None);
    let instances = plan(&[instances(node("db"), 3), app], &no_groups());
    assert_eq!(
        instances
            .iter()
            .find(|i| i.node_id == "app")
            .unwrap()
            .relationships
            .len(),
        3
    );
}

/// The benchmark's shape (gen_blueprint.py 100 1000): 100,101 instances, each app contained in
/// its host and connected to the db.
#[test]
fn benchmark_shape_is_fast() {
    let nodes = [
        node("db"),
        instances(compute("host"), 100),
        instances(connected_to(contained_in(node("app"), "host"), "db"), 1000),
    ];
    let started = std::time::Instant::now();
    let instances = plan(&nodes, &no_groups());
    let elapsed = started.elapsed();
    assert_eq!(instances.len(), 100_101);
    let expected: BTreeMap<Shape, usize> = [
        shape("db", None, &[], 1),
        shape("host", Some("host"), &[], 100),
        shape(
            "app",
            Some("host"),
            &[("contained_in", "host", 1), ("connected_to", "db", 1)],
            100_000,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(shapes(&instances), expected);
    // Generous even for a debug build; the release figure is a few tens of milliseconds.
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
}

// ---- errors ----

fn error(nodes: &[PlanNode], groups: &BTreeMap<String, ScalingGroup>) -> String {
    node_instances(nodes, groups)
        .expect_err("an error")
        .to_string()
}

#[test]
fn contained_in_cycle_is_an_error() {
    let nodes = [contained_in(node("a"), "b"), contained_in(node("b"), "a")];
    assert!(error(&nodes, &no_groups()).contains("contained in itself"));
    let nodes = [contained_in(node("a"), "a")];
    assert!(error(&nodes, &no_groups()).contains("contained in itself"));
}

#[test]
fn relationship_to_unknown_node_is_an_error() {
    let nodes = [connected_to(node("a"), "nowhere")];
    assert!(error(&nodes, &no_groups()).contains("'nowhere', which is not a node"));
    // A group is not a relationship target either.
    let nodes = [node("a"), connected_to(node("b"), "g")];
    assert!(error(&nodes, &groups(&[("g", 1, &["a"])])).contains("not a node"));
}

#[test]
fn unknown_group_member_is_an_error() {
    let message = error(&[node("a")], &groups(&[("g", 1, &["a", "ghost"])]));
    assert!(
        message.contains("member 'ghost' of scaling group 'g'"),
        "{message}"
    );
}

#[test]
fn group_cycle_and_member_of_two_groups_are_errors() {
    let message = error(
        &[node("a")],
        &groups(&[("g1", 1, &["g2", "a"]), ("g2", 1, &["g1"])]),
    );
    assert!(message.contains("inside itself"), "{message}");
    let message = error(
        &[node("a")],
        &groups(&[("g1", 1, &["a"]), ("g2", 1, &["a"])]),
    );
    assert!(message.contains("two scaling groups"), "{message}");
}

#[test]
fn two_containers_are_an_error() {
    let nodes = [
        node("a"),
        node("b"),
        contained_in(contained_in(node("c"), "a"), "b"),
    ];
    assert!(error(&nodes, &no_groups()).contains("contained in two nodes"));
}

#[test]
fn unsupported_relationship_and_connection_type_are_errors() {
    let mut app = node("app");
    app.relationships.push(PlanRelationship {
        type_name: "my.relationship".into(),
        target_id: "db".into(),
        type_hierarchy: vec!["my.relationship".into()],
        ..PlanRelationship::default()
    });
    assert!(error(&[node("db"), app], &no_groups()).contains("cannot be instantiated"));
    let mut app = node("app");
    relationship(&mut app, CONNECTED_TO, "db", Some("some_to_some"));
    assert!(error(&[node("db"), app], &no_groups()).contains("connection_type"));
}

#[test]
fn all_to_one_inside_a_group_is_an_error() {
    let nodes = [node("db"), all_to_one(node("app"), "db")];
    let message = error(&nodes, &groups(&[("g", 2, &["db", "app"])]));
    assert!(message.contains("not supported within groups"), "{message}");
}

#[test]
fn members_contained_in_different_nodes_is_an_error() {
    let nodes = [
        compute("h1"),
        compute("h2"),
        contained_in(node("a"), "h1"),
        contained_in(node("b"), "h2"),
    ];
    let message = error(&nodes, &groups(&[("g", 1, &["a", "b"])]));
    assert!(message.contains("different nodes"), "{message}");
}

#[test]
fn huge_counts_are_errors_not_exhausted_memory() {
    let nodes = [instances(compute("vm"), 1 << 40)];
    assert!(error(&nodes, &no_groups()).contains("more than"));
    let nodes = [
        instances(compute("vm"), 1 << 20),
        instances(contained_in(node("app"), "vm"), 1 << 20),
    ];
    assert!(error(&nodes, &no_groups()).contains("more than"));
    let nodes = [
        instances(node("a"), 3_000),
        instances(connected_to(node("b"), "a"), 3_000),
    ];
    assert!(error(&nodes, &no_groups()).contains("instance relationships"));
}

// ---- scaling groups: Cloudify's test_groups.py ----

#[test]
fn group_with_single_node() {
    let instances = plan(&[compute("host")], &groups(&[("group", 2, &["host"])]));
    assert_eq!(count_of(&instances, "host"), 2);
    assert_groups(&instances, &[("group", 2, &[("host", 1)])]);
    for i in &instances {
        assert_eq!(i.scaling_groups.len(), 1);
        assert!(i.scaling_groups[0].id.starts_with("group_"));
    }
}

#[test]
fn group_with_two_nodes() {
    let nodes = [compute("host1"), compute("host2")];
    let instances = plan(&nodes, &groups(&[("group", 2, &["host1", "host2"])]));
    assert_groups(&instances, &[("group", 2, &[("host1", 1), ("host2", 1)])]);
}

#[test]
fn group_with_host_and_node_contained_in_it() {
    let nodes = [compute("host"), contained_in(node("db"), "host")];
    let instances = plan(&nodes, &groups(&[("group", 2, &["host"])]));
    assert_eq!(count_of(&instances, "db"), 2);
    assert_groups(&instances, &[("group", 2, &[("host", 1), ("db", 1)])]);
    assert_relationship(&instances, "db", "host", (2, 1, 1), &["group"]);
    // The contained node is in the group through its host; only the host lists the group.
    for db in instances.iter().filter(|i| i.node_id == "db") {
        assert!(db.scaling_groups.is_empty());
    }
}

#[test]
fn group_with_host_and_node_contained_in_it_in_its_own_group() {
    let nodes = [compute("host"), contained_in(node("db"), "host")];
    let groups = groups(&[("host_group", 2, &["host"]), ("db_group", 1, &["db"])]);
    let instances = plan(&nodes, &groups);
    assert_eq!(count_of(&instances, "db"), 2);
    assert_groups(
        &instances,
        &[
            ("host_group", 2, &[("host", 1), ("db", 1)]),
            ("db_group", 2, &[("db", 1)]),
        ],
    );
    assert_relationship(&instances, "db", "host", (2, 1, 1), &["host_group"]);
    // The replaced contained_in relationship still targets the host instance.
    let ids = by_id(&instances);
    for db in instances.iter().filter(|i| i.node_id == "db") {
        let host = ids[db.relationships[0].target_id.as_str()];
        assert_eq!(db.relationships[0].type_name, CONTAINED_IN);
        assert_eq!(host.node_id, "host");
        assert_eq!(db.host_id.as_deref(), Some(host.id.as_str()));
        assert_eq!(db.scaling_groups.len(), 1);
        assert_eq!(db.scaling_groups[0].name, "db_group");
    }
}

#[test]
fn group_with_host_and_ip() {
    let nodes = [connected_to(compute("host"), "ip"), node("ip")];
    let instances = plan(
        &nodes,
        &groups(&[("vm_with_resources", 2, &["host", "ip"])]),
    );
    assert_groups(
        &instances,
        &[("vm_with_resources", 2, &[("host", 1), ("ip", 1)])],
    );
    assert_relationship(&instances, "host", "ip", (2, 1, 1), &["vm_with_resources"]);
}

#[test]
fn group_with_host_ip_and_volume() {
    let nodes = [
        connected_to(compute("host"), "ip"),
        node("ip"),
        instances(connected_to(node("volume"), "host"), 2),
    ];
    let groups = groups(&[("vm_with_resources", 2, &["host", "ip", "volume"])]);
    let instances = plan(&nodes, &groups);
    assert_eq!(count_of(&instances, "volume"), 4);
    assert_groups(
        &instances,
        &[(
            "vm_with_resources",
            2,
            &[("host", 1), ("ip", 1), ("volume", 2)],
        )],
    );
    assert_relationship(&instances, "host", "ip", (2, 1, 1), &["vm_with_resources"]);
    assert_relationship(
        &instances,
        "volume",
        "host",
        (2, 2, 1),
        &["vm_with_resources"],
    );
}

#[test]
fn group_with_host_db_contained_in_it_ip_and_volume() {
    let nodes = [
        connected_to(compute("host"), "ip"),
        contained_in(node("db"), "host"),
        node("ip"),
        instances(connected_to(node("volume"), "host"), 2),
    ];
    let groups = groups(&[("vm_with_resources", 2, &["host", "ip", "volume"])]);
    let instances = plan(&nodes, &groups);
    assert_groups(
        &instances,
        &[(
            "vm_with_resources",
            2,
            &[("host", 1), ("db", 1), ("ip", 1), ("volume", 2)],
        )],
    );
    assert_relationship(&instances, "host", "ip", (2, 1, 1), &["vm_with_resources"]);
    assert_relationship(&instances, "db", "host", (2, 1, 1), &["vm_with_resources"]);
    assert_relationship(
        &instances,
        "volume",
        "host",
        (2, 2, 1),
        &["vm_with_resources"],
    );
}

fn nested_volume_nodes() -> Vec<PlanNode> {
    vec![
        connected_to(compute("host"), "ip"),
        instances(connected_to(contained_in(node("db"), "host"), "volume"), 3),
        node("ip"),
        connected_to(node("volume"), "host"),
        connected_to(node("volume_c"), "volume"),
    ]
}

#[test]
fn nested_group() {
    let nodes = &nested_volume_nodes()[..4];
    let groups = groups(&[
        (
            "vm_with_resources",
            2,
            &["host", "ip", "volume_scale_group"],
        ),
        ("volume_scale_group", 5, &["volume"]),
    ]);
    let instances = plan(nodes, &groups);
    assert_eq!(count_of(&instances, "db"), 6);
    assert_eq!(count_of(&instances, "volume"), 10);
    assert_groups(
        &instances,
        &[
            (
                "vm_with_resources",
                2,
                &[("host", 1), ("db", 3), ("ip", 1), ("volume", 5)],
            ),
            ("volume_scale_group", 10, &[("volume", 1)]),
        ],
    );
    assert_relationship(&instances, "host", "ip", (2, 1, 1), &["vm_with_resources"]);
    assert_relationship(&instances, "db", "host", (2, 3, 1), &["vm_with_resources"]);
    assert_relationship(
        &instances,
        "db",
        "volume",
        (2, 3, 5),
        &["vm_with_resources"],
    );
    assert_relationship(
        &instances,
        "volume",
        "host",
        (2, 5, 1),
        &["vm_with_resources"],
    );
    // A volume lists its group instance and the enclosing one.
    for volume in instances.iter().filter(|i| i.node_id == "volume") {
        let names: Vec<&str> = volume
            .scaling_groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(names, ["volume_scale_group", "vm_with_resources"]);
    }
}

#[test]
fn twice_nested_group() {
    let groups = groups(&[
        ("container", 1, &["vm_with_resources"]),
        (
            "vm_with_resources",
            2,
            &["host", "ip", "volume_scale_group"],
        ),
        ("volume_scale_group", 5, &["volume", "volume_c"]),
    ]);
    let instances = plan(&nested_volume_nodes(), &groups);
    assert_groups(
        &instances,
        &[
            (
                "container",
                1,
                &[
                    ("host", 2),
                    ("db", 6),
                    ("ip", 2),
                    ("volume", 10),
                    ("volume_c", 10),
                ],
            ),
            (
                "vm_with_resources",
                2,
                &[
                    ("host", 1),
                    ("db", 3),
                    ("ip", 1),
                    ("volume", 5),
                    ("volume_c", 5),
                ],
            ),
            ("volume_scale_group", 10, &[("volume", 1), ("volume_c", 1)]),
        ],
    );
    let both = &["vm_with_resources", "container"];
    assert_relationship(&instances, "host", "ip", (2, 1, 1), both);
    assert_relationship(&instances, "db", "host", (2, 3, 1), both);
    assert_relationship(&instances, "db", "volume", (2, 3, 5), both);
    assert_relationship(&instances, "volume", "host", (2, 5, 1), both);
    assert_relationship(
        &instances,
        "volume_c",
        "volume",
        (10, 1, 1),
        &["volume_scale_group", "vm_with_resources", "container"],
    );
}

#[test]
fn group_with_some_random_connections() {
    let nodes = [
        instances(compute("host1"), 2),
        instances(compute("host2"), 2),
        instances(contained_in(node("db"), "host1"), 2),
        instances(connected_to(contained_in(node("db_c"), "host1"), "db"), 2),
    ];
    let groups = groups(&[
        ("group1", 2, &["group2", "group3", "host2"]),
        ("group2", 2, &["host1"]),
        ("group3", 2, &["db", "db_c"]),
    ]);
    let instances = plan(&nodes, &groups);
    assert_eq!(count_of(&instances, "host1"), 8);
    assert_eq!(count_of(&instances, "host2"), 4);
    assert_eq!(count_of(&instances, "db"), 32);
    assert_eq!(count_of(&instances, "db_c"), 32);
    assert_groups(
        &instances,
        &[
            (
                "group1",
                2,
                &[("host1", 4), ("host2", 2), ("db", 16), ("db_c", 16)],
            ),
            ("group2", 4, &[("host1", 2), ("db", 8), ("db_c", 8)]),
            ("group3", 16, &[("db", 2), ("db_c", 2)]),
        ],
    );
    assert_relationship(&instances, "db", "host1", (8, 4, 1), &["group1", "group2"]);
    assert_relationship(
        &instances,
        "db_c",
        "host1",
        (8, 4, 1),
        &["group1", "group2"],
    );
    assert_relationship(
        &instances,
        "db_c",
        "db",
        (16, 2, 2),
        &["group1", "group2", "group3"],
    );
}

#[test]
fn group_with_external_nodes_not_in_any_group() {
    let nodes = [
        compute("host1"),
        compute("host2"),
        contained_in(node("db"), "host1"),
        connected_to(contained_in(node("webserver"), "host2"), "db"),
        connected_to(node("volume"), "host1"),
    ];
    let instances = plan(&nodes, &groups(&[("host1_group", 2, &["host1", "volume"])]));
    assert_eq!(count_of(&instances, "webserver"), 1);
    assert_groups(
        &instances,
        &[("host1_group", 2, &[("host1", 1), ("volume", 1), ("db", 1)])],
    );
    assert_relationship(&instances, "db", "host1", (2, 1, 1), &["host1_group"]);
    assert_relationship(&instances, "webserver", "host2", (1, 1, 1), &[]);
    assert_relationship(&instances, "webserver", "db", (1, 1, 2), &[]);
    assert_relationship(&instances, "volume", "host1", (2, 1, 1), &["host1_group"]);
}

#[test]
fn group_with_external_nodes_not_in_any_group_reversed() {
    let nodes = [
        compute("host1"),
        compute("host2"),
        connected_to(contained_in(node("db"), "host1"), "webserver"),
        contained_in(node("webserver"), "host2"),
        connected_to(node("volume"), "host1"),
    ];
    let instances = plan(&nodes, &groups(&[("host1_group", 2, &["host1", "volume"])]));
    assert_relationship(&instances, "db", "host1", (2, 1, 1), &["host1_group"]);
    assert_relationship(&instances, "db", "webserver", (1, 2, 1), &[]);
    assert_relationship(&instances, "webserver", "host2", (1, 1, 1), &[]);
}

#[test]
fn group_intertwined() {
    let nodes = [
        node("node1"),
        contained_in(node("node2"), "node1"),
        contained_in(node("node3"), "node1"),
    ];
    let groups = groups(&[
        ("group1", 2, &["node1", "group2"]),
        ("group2", 1, &["node2", "group3"]),
        ("group3", 1, &["group4"]),
        ("group4", 1, &["node3"]),
    ]);
    let instances = plan(&nodes, &groups);
    assert_eq!(count_of(&instances, "node2"), 2);
    assert_eq!(count_of(&instances, "node3"), 2);
    assert_groups(
        &instances,
        &[
            ("group1", 2, &[("node1", 1), ("node2", 1), ("node3", 1)]),
            ("group2", 2, &[("node2", 1), ("node3", 1)]),
            ("group3", 2, &[("node3", 1)]),
            ("group4", 2, &[("node3", 1)]),
        ],
    );
    assert_relationship(&instances, "node2", "node1", (2, 1, 1), &["group1"]);
    assert_relationship(&instances, "node3", "node1", (2, 1, 1), &["group1"]);
}

#[test]
fn group_of_node_contained_in_another() {
    for planned in [1, 3] {
        let nodes = [
            node("node1"),
            instances(contained_in(node("node2"), "node1"), planned),
        ];
        let instances = plan(&nodes, &groups(&[("group", 1, &["node2"])]));
        assert_eq!(count_of(&instances, "node1"), 1);
        assert_eq!(count_of(&instances, "node2"), planned as usize);
        assert_groups(&instances, &[("group", 1, &[("node2", planned as usize)])]);
        assert_relationship(&instances, "node2", "node1", (1, planned as usize, 1), &[]);
    }
}

// ---- scaling groups as the blueprint wrote them ----

/// A group listing a host and nodes contained in it: the contained nodes are in the group
/// through their host (Cloudify's parser removes them from the members; either way, the
/// instances are the same).
#[test]
fn group_listing_a_node_and_its_contained_node() {
    let nodes = [
        compute("vm"),
        contained_in(node("app"), "vm"),
        contained_in(node("agent"), "app"),
    ];
    let written = groups(&[("g", 3, &["vm", "app", "agent"])]);
    let instances = plan(&nodes, &written);
    assert_groups(
        &instances,
        &[("g", 3, &[("vm", 1), ("app", 1), ("agent", 1)])],
    );
    assert_relationship(&instances, "agent", "app", (3, 1, 1), &["g"]);

    let normalized = groups(&[("g", 3, &["vm"])]);
    assert_eq!(shapes(&plan(&nodes, &normalized)), shapes(&instances));
}

/// A node in a subgroup, contained in a node of the enclosing group: the subgroup leaves the
/// enclosing group (as Cloudify's parser does) and hangs under the container instead.
#[test]
fn subgroup_of_a_contained_node_leaves_the_shared_group() {
    let nodes = [compute("vm"), instances(contained_in(node("app"), "vm"), 2)];
    let written = groups(&[("outer", 2, &["vm", "inner"]), ("inner", 3, &["app"])]);
    let normalized = groups(&[("outer", 2, &["vm"]), ("inner", 3, &["app"])]);
    let instances = plan(&nodes, &written);
    assert_eq!(count_of(&instances, "app"), 2 * 3 * 2);
    assert_groups(
        &instances,
        &[
            ("outer", 2, &[("vm", 1), ("app", 6)]),
            ("inner", 6, &[("app", 2)]),
        ],
    );
    assert_eq!(shapes(&plan(&nodes, &normalized)), shapes(&instances));
}

#[test]
fn group_instances_count_planned_instances_of_the_group() {
    let nodes = [instances(compute("vm"), 2), contained_in(node("app"), "vm")];
    let instances = plan(&nodes, &groups(&[("g", 0, &["vm"])]));
    assert!(instances.is_empty());
}
