//! The DSL end to end: small inline blueprints through `plan_str` / `plan_file`, each feature and
//! each rejection, with the error text and location checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_dsl::{Error, Options, plan_file, plan_str};
use drover_model::Plan;
use serde_json::json;

/// A fresh directory for a test's files.
fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "drover-dsl-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("dir");
    }
    std::fs::write(&path, text).expect("write");
    path
}

fn plan(text: &str) -> Plan {
    plan_in(&temp_dir(), text, &Options::default())
}

fn plan_in(dir: &Path, text: &str, options: &Options) -> Plan {
    match plan_str(text, dir, options) {
        Ok(plan) => plan,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn error(text: &str) -> Error {
    error_with(text, &Options::default())
}

fn error_with(text: &str, options: &Options) -> Error {
    match plan_str(text, &temp_dir(), options) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Line, column and field path of an error.
fn at(e: &Error) -> (usize, usize, String) {
    let l = e.location.clone().unwrap_or_default();
    (l.line, l.column, l.path)
}

fn node<'a>(plan: &'a Plan, id: &str) -> &'a drover_model::PlanNode {
    plan.nodes.iter().find(|n| n.id == id).expect("node")
}

const TYPES: &str = "imports:\n  - http://www.getcloudify.org/spec/cloudify/4.3.3/types.yaml\n";

#[test]
fn builtin_types_give_hierarchy_host_and_defaults() {
    let p = plan(&format!(
        "tosca_definitions_version: cloudify_dsl_1_3\n{TYPES}node_templates:\n  vm:\n    type: cloudify.nodes.Compute\n    properties:\n      ip: 10.0.0.1\n  web:\n    type: cloudify.nodes.WebServer\n    relationships:\n      - type: cloudify.relationships.contained_in\n        target: vm\n"
    ));
    let web = node(&p, "web");
    assert_eq!(
        web.type_hierarchy,
        [
            "cloudify.nodes.Root",
            "cloudify.nodes.SoftwareComponent",
            "cloudify.nodes.WebServer"
        ]
    );
    assert_eq!(web.host_id.as_deref(), Some("vm"));
    assert_eq!(web.properties.get("port"), Some(&json!(80)));
    assert!(
        web.relationships
            .first()
            .is_some_and(|r| r.is_contained_in())
    );
    let vm = node(&p, "vm");
    assert_eq!(vm.host_id.as_deref(), Some("vm"));
    let install = vm
        .operations
        .get("cloudify.interfaces.cloudify_agent.install_plugins")
        .expect("op");
    assert_eq!(
        (install.plugin.as_str(), install.executor.as_deref()),
        ("agent", Some("host_agent"))
    );
    assert_eq!(
        p.workflows.get("install").map(|w| w.operation.as_str()),
        Some("cloudify.plugins.workflows.install")
    );
    assert_eq!(p.node_instances.len(), 2);
}

#[test]
fn script_paths_bind_to_the_script_plugin() {
    let dir = temp_dir();
    write(&dir, "scripts/start.sh", "");
    let p = plan_in(
        &dir,
        &format!(
            "tosca_definitions_version: cloudify_dsl_1_3\n{TYPES}node_templates:\n  a:\n    type: cloudify.nodes.Root\n    interfaces:\n      cloudify.interfaces.lifecycle:\n        start: scripts/start.sh\n        stop:\n          implementation: scripts/start.sh\n          executor: central_deployment_agent\n          max_retries: 3\n"
        ),
        &Options::default(),
    );
    let start = node(&p, "a")
        .operations
        .get("cloudify.interfaces.lifecycle.start")
        .expect("op");
    assert_eq!(start.plugin, "script");
    assert_eq!(start.operation, "script_runner.tasks.run");
    assert_eq!(start.executor.as_deref(), Some("auto"));
    assert_eq!(
        start.inputs.get("script_path"),
        Some(&json!("scripts/start.sh"))
    );
    let stop = node(&p, "a")
        .operations
        .get("cloudify.interfaces.lifecycle.stop")
        .expect("op");
    assert_eq!(
        (stop.executor.as_deref(), stop.max_retries.clone()),
        (Some("central_deployment_agent"), Some(json!(3)))
    );
}

#[test]
fn a_missing_script_or_plugin_is_an_error() {
    let e = error(&format!(
        "tosca_definitions_version: cloudify_dsl_1_3\n{TYPES}node_templates:\n  a:\n    type: cloudify.nodes.Root\n    interfaces:\n      cloudify.interfaces.lifecycle:\n        start: nowhere.sh\n"
    ));
    assert!(
        e.message
            .contains("could not extract a plugin from operation mapping 'nowhere.sh'"),
        "{e}"
    );
    assert_eq!(at(&e).0, 9);
}

const PLUGIN_TYPES: &str = "tosca_definitions_version: cloudify_dsl_1_3
plugins:
  p:
    executor: central_deployment_agent
    install: false
  h:
    executor: host_agent
    install: false
node_types:
  cloudify.nodes.Compute: {}
  base:
    derived_from: cloudify.nodes.Compute
    properties:
      x: {default: 1}
    interfaces:
      i:
        op1:
          implementation: p.one
          inputs:
            a: {default: 1}
            b: {default: 2}
          max_retries: 5
        op2: p.two
        op3: p.three
  derived:
    derived_from: base
    interfaces:
      i:
        op3: {}
";

#[test]
fn operations_merge_as_cloudify_merges_them() {
    let p = plan(&format!(
        "{PLUGIN_TYPES}node_templates:\n  n:\n    type: derived\n    interfaces:\n      i:\n        op1:\n          inputs: {{b: 3}}\n        op2:\n          implementation: h.other\n        op4: p.four\n"
    ));
    let ops = &node(&p, "n").operations;
    let op1 = ops.get("i.op1").expect("op1");
    assert_eq!((op1.plugin.as_str(), op1.operation.as_str()), ("p", "one"));
    assert_eq!(
        op1.inputs,
        json!({"a": 1, "b": 3})
            .as_object()
            .cloned()
            .unwrap_or_default()
    );
    assert_eq!(op1.max_retries, Some(json!(5)));
    assert_eq!(op1.executor.as_deref(), Some("central_deployment_agent"));
    let op2 = ops.get("i.op2").expect("op2");
    assert_eq!(
        (
            op2.plugin.as_str(),
            op2.operation.as_str(),
            op2.executor.as_deref()
        ),
        ("h", "other", Some("host_agent"))
    );
    assert!(
        ops.get("i.op3").expect("op3").is_noop(),
        "an empty operation in a derived type erases the inherited one"
    );
    assert_eq!(ops.get("i.op4").map(|o| o.operation.as_str()), Some("four"));
    assert_eq!(
        node(&p, "n").type_hierarchy,
        ["cloudify.nodes.Compute", "base", "derived"]
    );
}

#[test]
fn unknown_and_missing_properties_are_errors() {
    let e = error(&format!(
        "{PLUGIN_TYPES}node_templates:\n  n:\n    type: base\n    properties:\n      y: 2\n"
    ));
    assert!(
        e.message
            .contains("has property 'y', which its type does not define"),
        "{e}"
    );
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  t:\n    properties:\n      must: {}\nnode_templates:\n  n:\n    type: t\n",
    );
    assert!(
        e.message.contains("missing the required property 'must'"),
        "{e}"
    );
    assert_eq!(at(&e).2, "node_templates.n.properties.must");
}

#[test]
fn functions_are_evaluated_at_plan_time_and_runtime_ones_kept() {
    let p = plan(&format!(
        "tosca_definitions_version: cloudify_dsl_1_3
{TYPES}inputs:
  port: {{default: 8080}}
  conf: {{default: {{hosts: [a, b]}}}}
node_templates:
  vm:
    type: cloudify.nodes.Compute
    properties:
      ip: {{get_input: [conf, hosts, 1]}}
  web:
    type: cloudify.nodes.WebServer
    properties:
      port: {{get_input: port}}
    interfaces:
      cloudify.interfaces.lifecycle:
        start:
          implementation: agent.x
          inputs:
            url: {{concat: ['http://', {{get_property: [vm, ip]}}, ':', {{get_property: [SELF, port]}}]}}
            live: {{get_attribute: [SELF, address]}}
    relationships:
      - type: cloudify.relationships.contained_in
        target: vm
outputs:
  endpoint:
    value: {{concat: [{{get_property: [web, port]}}, {{get_secret: s}}]}}
"
    ));
    assert_eq!(node(&p, "vm").properties.get("ip"), Some(&json!("b")));
    let start = node(&p, "web")
        .operations
        .get("cloudify.interfaces.lifecycle.start")
        .expect("op");
    assert_eq!(start.inputs.get("url"), Some(&json!("http://b:8080")));
    assert_eq!(
        start.inputs.get("live"),
        Some(&json!({"get_attribute": ["SELF", "address"]}))
    );
    assert!(start.has_intrinsic_functions);
    assert_eq!(
        p.outputs.get("endpoint").and_then(|o| o.get("value")),
        Some(&json!({"concat": [8080, {"get_secret": "s"}]}))
    );
}

#[test]
fn inputs_are_checked() {
    let text = "tosca_definitions_version: cloudify_dsl_1_3\ninputs:\n  n:\n    type: integer\n    constraints:\n      - greater_than: 2\n  m: {}\n";
    let e = error(text);
    assert!(
        e.message
            .contains("required inputs have no value and no default: n, m"),
        "{e}"
    );
    assert_eq!(at(&e), (3, 3, "inputs.n".into()));
    let mut options = Options::default();
    options.inputs.insert("n".into(), json!(1));
    options.inputs.insert("m".into(), json!("x"));
    let e = error_with(text, &options);
    assert!(
        e.message.contains("violates constraint greater_than: 2"),
        "{e}"
    );
    assert_eq!(at(&e).2, "inputs.n");
    options.inputs.insert("n".into(), json!("three"));
    let e = error_with(text, &options);
    assert!(e.message.contains("is of type integer"), "{e}");
    options.inputs.insert("n".into(), json!(3));
    assert!(plan_str(text, &temp_dir(), &options).is_ok());
    options.inputs.insert("zzz".into(), json!(3));
    let e = error_with(text, &options);
    assert!(e.message.contains("unknown inputs given: zzz"), "{e}");
}

#[test]
fn unknown_fields_are_rejected_with_their_location() {
    let e = error("tosca_definitions_version: cloudify_dsl_1_4\n\nfoo: bar\n");
    assert_eq!(at(&e), (3, 1, "foo".into()));
    assert!(e.message.starts_with("'foo' is not in schema"), "{e}");
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  t:\n    propertes: {}\n",
    );
    assert_eq!(at(&e), (4, 5, "node_types.t.propertes".into()));
}

#[test]
fn fields_of_later_versions_are_rejected() {
    let e = error("tosca_definitions_version: cloudify_dsl_1_0\ndsl_definitions:\n  a: &a 1\n");
    assert!(
        e.message
            .contains("'dsl_definitions' requires cloudify_dsl_1_2 or later"),
        "{e}"
    );
    assert_eq!(at(&e), (2, 1, "dsl_definitions".into()));
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_0\nplugins:\n  p: {executor: host_agent, install: false}\nnode_types:\n  t:\n    interfaces:\n      i:\n        o: {implementation: p.x, max_retries: 1}\n",
    );
    assert!(
        e.message
            .contains("'max_retries' requires cloudify_dsl_1_1"),
        "{e}"
    );
    let e = error("tosca_definitions_version: cloudify_dsl_1_7\n");
    assert!(e.message.contains("unsupported DSL version"), "{e}");
}

#[test]
fn cyclic_derivation_is_rejected() {
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  a: {derived_from: b}\n  b: {derived_from: a}\n",
    );
    assert!(e.message.contains("cyclic derivation"), "{e}");
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  a: {derived_from: nope}\n",
    );
    assert!(
        e.message
            .contains("derived from 'nope', which is not defined"),
        "{e}"
    );
}

#[test]
fn bad_yaml_names_line_and_column() {
    let e =
        error("tosca_definitions_version: cloudify_dsl_1_3\nnode_templates:\n  a: [1,\n  b: 2\n");
    let (line, column, _) = at(&e);
    assert!(e.message.starts_with("invalid YAML"), "{e}");
    assert_eq!((line, column), (4, 3));
}

#[test]
fn relative_imports_and_namespaces() {
    let dir = temp_dir();
    write(
        &dir,
        "lib/types.yaml",
        "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  p: {executor: central_deployment_agent, install: false}\nnode_types:\n  t:\n    properties:\n      v: {default: 1}\n    interfaces:\n      i:\n        o: p.task\nnode_templates:\n  inner:\n    type: t\n",
    );
    let p = plan_in(
        &dir,
        "tosca_definitions_version: cloudify_dsl_1_3\nimports:\n  - ns--lib/types.yaml\nnode_templates:\n  outer:\n    type: ns--t\n    relationships:\n      - {type: cloudify.relationships.depends_on, target: ns--inner}\nrelationships:\n  cloudify.relationships.depends_on: {}\n",
        &Options::default(),
    );
    let outer = node(&p, "outer");
    assert_eq!(outer.type_hierarchy, ["ns--t"]);
    let op = outer.operations.get("i.o").expect("op");
    assert_eq!(
        (op.plugin.as_str(), op.operation.as_str()),
        ("ns--p", "task")
    );
    assert!(p.nodes.iter().any(|n| n.id == "ns--inner"));
}

#[test]
fn self_and_cyclic_imports_end() {
    let dir = temp_dir();
    write(
        &dir,
        "a.yaml",
        "tosca_definitions_version: cloudify_dsl_1_3\nimports: [b.yaml, a.yaml]\n",
    );
    write(
        &dir,
        "b.yaml",
        "tosca_definitions_version: cloudify_dsl_1_3\nimports: [a.yaml]\nnode_types:\n  t: {}\n",
    );
    let main = write(
        &dir,
        "main.yaml",
        "tosca_definitions_version: cloudify_dsl_1_3\nimports: [a.yaml, main.yaml]\nnode_templates:\n  n: {type: t}\n",
    );
    let p = plan_file(&main, &Options::default()).expect("plan");
    assert_eq!(p.nodes.len(), 1);
}

#[test]
fn a_missing_import_names_the_import_and_where_it_is() {
    let dir = temp_dir();
    let main = write(
        &dir,
        "bp.yaml",
        "tosca_definitions_version: cloudify_dsl_1_3\nimports:\n  - other.yaml\n",
    );
    let e = plan_file(&main, &Options::default()).expect_err("error");
    assert!(
        e.to_string()
            .contains("bp.yaml:3:5 (imports): cannot resolve import \"other.yaml\""),
        "{e}"
    );
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nimports:\n  - http://example.com/x.yaml\n",
    );
    assert!(e.message.contains("no resolver rule or spec mirror"), "{e}");
}

#[test]
fn resolver_rules_and_spec_mirror_map_urls_to_directories() {
    let dir = temp_dir();
    write(
        &dir,
        "mirror/plugins/mine/plugin.yaml",
        "plugins:\n  mine: {executor: central_deployment_agent, install: false}\n",
    );
    write(&dir, "rules/x.yaml", "node_types:\n  t: {}\n");
    let options = Options {
        spec_mirror: Some(dir.join("mirror")),
        resolver_rules: vec![("http://example.com/".into(), dir.join("rules"))],
        ..Options::default()
    };
    let p = plan_in(
        &dir,
        "tosca_definitions_version: cloudify_dsl_1_3\nimports:\n  - plugin:mine?version=1.0\n  - http://example.com/x.yaml\nnode_templates:\n  n:\n    type: t\n    interfaces:\n      i:\n        o: mine.op\n",
        &options,
    );
    assert_eq!(
        node(&p, "n")
            .operations
            .get("i.o")
            .map(|o| o.plugin.as_str()),
        Some("mine")
    );
}

#[test]
fn instances_and_scaling_groups() {
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_2\nnode_types:\n  t: {}\nnode_templates:\n  a:\n    type: t\n    instances: {deploy: 3}\n",
    );
    assert_eq!(node(&p, "a").instances.deploy, 3);
    assert_eq!(
        node(&p, "a")
            .capabilities
            .scalable
            .properties
            .planned_instances,
        3
    );
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\ninputs:\n  n: {default: 2}\nnode_types:\n  t: {}\nnode_templates:\n  a:\n    type: t\n    capabilities:\n      scalable:\n        properties: {default_instances: {get_input: n}, max_instances: 5}\n  b: {type: t}\ngroups:\n  g: {members: [a, b]}\npolicies:\n  s:\n    type: cloudify.policies.scaling\n    targets: [g]\n    properties: {default_instances: 2}\n",
    );
    let scalable = node(&p, "a").capabilities.scalable.properties;
    assert_eq!((scalable.default_instances, scalable.max_instances), (2, 5));
    let group = p.scaling_groups.get("g").expect("group");
    assert_eq!(group.members, ["a", "b"]);
    assert_eq!(group.properties.planned_instances, 2);
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  t: {}\nnode_templates:\n  a:\n    type: t\n    capabilities:\n      scalable:\n        properties: {default_instances: 6, max_instances: 5}\n",
    );
    assert!(
        e.message
            .contains("min_instances <= default_instances <= max_instances"),
        "{e}"
    );
}

#[test]
fn workflows_short_and_long_forms() {
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  w: {executor: central_deployment_agent, install: false}\nworkflows:\n  short: w.flows.one\n  long:\n    mapping: w.flows.two\n    parameters:\n      x: {default: 1}\n",
    );
    let short = p.workflows.get("short").expect("short");
    assert_eq!(
        (short.plugin.as_str(), short.operation.as_str()),
        ("w", "flows.one")
    );
    let long = p.workflows.get("long").expect("long");
    assert_eq!(long.parameters.get("x"), Some(&json!({"default": 1})));
}

#[test]
fn data_types_fill_defaults() {
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\ndata_types:\n  inner:\n    properties:\n      a: {default: 1}\n      b: {required: false}\n  outer:\n    properties:\n      in: {type: inner}\n      c: {type: string, default: x}\nnode_types:\n  t:\n    properties:\n      conf: {type: outer}\nnode_templates:\n  n:\n    type: t\n    properties:\n      conf: {c: y}\n",
    );
    assert_eq!(
        node(&p, "n").properties.get("conf"),
        Some(&json!({"in": {"a": 1}, "c": "y"}))
    );
}

#[test]
fn dsl_definitions_anchors_and_merge_keys() {
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\ndsl_definitions:\n  common: &common\n    a: 1\n    b: 2\nnode_types:\n  t:\n    properties:\n      a: {}\n      b: {}\nnode_templates:\n  n:\n    type: t\n    properties:\n      <<: *common\n      b: 3\n",
    );
    assert_eq!(
        node(&p, "n").properties,
        json!({"a": 1, "b": 3})
            .as_object()
            .cloned()
            .unwrap_or_default()
    );
}

#[test]
fn abusive_input_is_an_error_not_a_crash() {
    let mut bomb = String::from(
        "tosca_definitions_version: cloudify_dsl_1_3\ndsl_definitions:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(error(&bomb).message.contains("alias bomb"));
    let deep: String = (0..400).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    assert!(
        error(&format!(
            "tosca_definitions_version: cloudify_dsl_1_3\nx:\n{deep}"
        ))
        .message
        .contains("nests deeper")
    );

    let dir = temp_dir();
    let big = dir.join("big.yaml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(&big, line.repeat(50 * 1024 * 1024 / line.len())).expect("write");
    let e = plan_file(&big, &Options::default()).expect_err("error");
    assert!(e.message.contains("more than"), "{e}");
    let _ = std::fs::remove_file(&big);
    #[cfg(unix)]
    {
        let e = plan_file(Path::new("/dev/zero"), &Options::default()).expect_err("endless file");
        assert!(e.message.contains("more than"), "{e}");
    }
}

#[test]
fn relationship_errors() {
    let base = "tosca_definitions_version: cloudify_dsl_1_3\nrelationships:\n  r: {}\nnode_types:\n  t: {}\nnode_templates:\n";
    let e = error(&format!(
        "{base}  a:\n    type: t\n    relationships:\n      - {{type: r, target: nope}}\n"
    ));
    assert!(
        e.message
            .contains("relationship target 'nope' is not a node template"),
        "{e}"
    );
    assert_eq!(at(&e).2, "node_templates.a.relationships.0.target");
    let e = error(&format!(
        "{base}  a:\n    type: t\n    relationships:\n      - {{type: q, target: a}}\n"
    ));
    assert!(
        e.message.contains("relationship type 'q' is not defined"),
        "{e}"
    );
}

#[test]
fn host_agent_plugins_need_a_host() {
    let text = "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  h: {executor: host_agent, install: false}\nnode_types:\n  t: {}\nnode_templates:\n  lonely:\n    type: t\n    interfaces:\n      i:\n        o: h.task\n";
    let e = error(text);
    assert!(e.message.contains("not contained in a host"), "{e}");
    assert_eq!(at(&e).2, "node_templates.lonely");
    // The operation's own executor wins over the plugin's.
    let central = text.replace(
        "o: h.task",
        "o: {implementation: h.task, executor: central_deployment_agent}",
    );
    let p = plan(&central);
    let plugin = node(&p, "lonely")
        .plugins
        .first()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        plugin.get("executor"),
        Some(&json!("central_deployment_agent"))
    );
}

#[test]
fn instances_deploy_and_scalable_capability_exclude_each_other() {
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  t: {}\nnode_templates:\n  a:\n    type: t\n    instances: {deploy: 2}\n    capabilities:\n      scalable:\n        properties: {default_instances: 2}\n",
    );
    assert!(
        e.message
            .contains("both instances.deploy and capabilities.scalable"),
        "{e}"
    );
    assert_eq!(at(&e), (8, 5, "node_templates.a.capabilities".into()));
}

#[test]
fn depends_on_lifecycle_operation_needs_the_targets_operation() {
    let text = |op: &str| {
        format!(
            "tosca_definitions_version: cloudify_dsl_1_4\n{TYPES}node_templates:\n  a:\n    type: cloudify.nodes.Root\n    interfaces:\n      cloudify.interfaces.lifecycle:\n        create: agent.x\n  b:\n    type: cloudify.nodes.Root\n    relationships:\n      - type: cloudify.relationships.depends_on_lifecycle_operation\n        target: a\n        properties: {{operation: {op}}}\n"
        )
    };
    assert!(plan_str(&text("create"), &temp_dir(), &Options::default()).is_ok());
    let e = error(&text("start"));
    assert!(
        e.message.contains("operation \"start\" is not defined"),
        "{e}"
    );
}

const GROUP_NODES: &str = "tosca_definitions_version: cloudify_dsl_1_3
node_types:
  cloudify.nodes.Compute: {}
  t: {}
relationships:
  cloudify.relationships.contained_in: {}
node_templates:
  vm: {type: cloudify.nodes.Compute}
  other_vm: {type: cloudify.nodes.Compute}
  app:
    type: t
    relationships: [{type: cloudify.relationships.contained_in, target: vm}]
  free: {type: t}
";

fn scaling(groups: &str) -> String {
    format!(
        "{GROUP_NODES}groups:\n{groups}policies:\n  p:\n    type: cloudify.policies.scaling\n    targets: [g]\n"
    )
}

#[test]
fn scaling_groups_drop_members_their_container_scales() {
    let p = plan(&scaling("  g: {members: [vm, app]}\n"));
    assert_eq!(
        p.scaling_groups.get("g").map(|g| g.members.clone()),
        Some(vec!["vm".to_string()])
    );
    assert_eq!(
        p.scaling_groups
            .get("g")
            .map(|g| g.properties.default_instances),
        Some(1)
    );
}

#[test]
fn scaling_group_rules() {
    let e = error(&scaling("  g: {members: [app, free]}\n"));
    assert!(e.message.contains("not contained in a shared node"), "{e}");
    let e = error(&format!(
        "{}  q:\n    type: cloudify.policies.scaling\n    targets: [h]\n",
        scaling("  g: {members: [vm]}\n  h: {members: [vm]}\n")
    ));
    assert!(e.message.contains("member of two scaling groups"), "{e}");
    let e = error(&format!(
        "{GROUP_NODES}groups:\n  g: {{members: [vm]}}\npolicies:\n  p: {{type: my.policy, targets: [g]}}\n"
    ));
    assert!(
        e.message
            .contains("'my.policy' policy type is not implemented"),
        "{e}"
    );
    let e = error(&scaling("  g: {members: [nope]}\n"));
    assert!(
        e.message.contains("neither a node template nor a group"),
        "{e}"
    );
    let e = error(&scaling("  vm: {members: [app]}\n  g: {members: [vm]}\n"));
    assert!(
        e.message
            .contains("both a group and a node template are named 'vm'"),
        "{e}"
    );
}

#[test]
fn imports_with_properties_need_dsl_1_5() {
    let e =
        error("tosca_definitions_version: cloudify_dsl_1_4\nimports:\n  - plugin:p:\n      x: 1\n");
    assert!(
        e.message
            .contains("an import with properties requires cloudify_dsl_1_5"),
        "{e}"
    );
    assert_eq!(at(&e).2, "imports.0");
}

#[test]
fn contained_in_cycles_are_rejected_and_deep_chains_are_linear() {
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  t: {}\nrelationships:\n  cloudify.relationships.contained_in: {}\nnode_templates:\n  a:\n    type: t\n    relationships: [{type: cloudify.relationships.contained_in, target: b}]\n  b:\n    type: t\n    relationships: [{type: cloudify.relationships.contained_in, target: a}]\n",
    );
    assert!(e.message.contains("contained_in cycle"), "{e}");
    let mut text = String::from(
        "tosca_definitions_version: cloudify_dsl_1_3\nnode_types:\n  cloudify.nodes.Compute: {}\n  t: {}\nrelationships:\n  cloudify.relationships.contained_in: {}\nnode_templates:\n  n0: {type: cloudify.nodes.Compute}\n",
    );
    for i in 1..3000 {
        text.push_str(&format!(
            "  n{i}:\n    type: t\n    relationships: [{{type: cloudify.relationships.contained_in, target: n{}}}]\n",
            i - 1
        ));
    }
    let p = plan(&text);
    assert_eq!(node(&p, "n2999").host_id.as_deref(), Some("n0"));
}

#[test]
fn imports_share_one_bound_on_values() {
    let dir = temp_dir();
    // 1,100 aliases of a 1,000-value list: 1.1 million values each time the file is read.
    let list = vec!["1"; 1000].join(",");
    let aliases = vec!["*x"; 1100].join(",");
    let big = format!("dsl_definitions:\n  x: &x [{list}]\n  y: [{aliases}]\n");
    write(&dir, "big.yaml", &big);
    let e = plan_str(
        "tosca_definitions_version: cloudify_dsl_1_3\nimports: [a--big.yaml, b--big.yaml]\n",
        &dir,
        &Options::default(),
    )
    .expect_err("two copies of a large file");
    assert!(e.message.contains("imports and aliases included"), "{e}");
}

#[test]
fn constraint_operators_are_checked() {
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\ninputs:\n  a:\n    default: 1\n    constraints:\n      - bigger_than: 0\n",
    );
    assert!(
        e.message
            .contains("no such constraint operator 'bigger_than'"),
        "{e}"
    );
    assert_eq!(at(&e), (6, 9, "inputs.a.constraints.0.bigger_than".into()));
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nworkflows:\n  w:\n    mapping: p.w\n    availability_rules: {available: true}\n",
    );
    assert!(
        e.message
            .contains("'availability_rules' requires cloudify_dsl_1_4"),
        "{e}"
    );
}

#[test]
fn plugins_are_checked() {
    let e = error("tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  p: {source: x}\n");
    assert!(e.message.contains("plugin 'p' needs an 'executor'"), "{e}");
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  p: {executor: somewhere, source: x}\n",
    );
    assert!(
        e.message.contains("illegal executor value 'somewhere'"),
        "{e}"
    );
    let e = error(
        "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  p: {executor: host_agent}\n",
    );
    assert!(
        e.message.contains("declares no source or package_name"),
        "{e}"
    );
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\nplugins:\n  p: {executor: host_agent, source: http://x/p.zip}\nworkflows:\n  w: p.flow\n",
    );
    assert_eq!(
        p.workflow_plugins_to_install
            .first()
            .and_then(|p| p.get("install")),
        Some(&json!(true))
    );
}

#[test]
fn redefined_data_typed_properties_keep_the_parents_default() {
    let p = plan(
        "tosca_definitions_version: cloudify_dsl_1_3\ndata_types:\n  agent:\n    properties:\n      method: {}\n      port: {default: 22}\n      user: {required: false}\nnode_types:\n  base:\n    properties:\n      agent: {type: agent, default: {method: remote}}\n  windows:\n    derived_from: base\n    properties:\n      agent: {type: agent, default: {port: 5985}}\nnode_templates:\n  vm:\n    type: windows\n    properties:\n      agent: {user: admin}\n",
    );
    assert_eq!(
        node(&p, "vm").properties.get("agent"),
        Some(&json!({"method": "remote", "port": 5985, "user": "admin"}))
    );
}
