//! The Cloudify DSL, `cloudify_dsl_1_0` to `cloudify_dsl_1_5`: from YAML files to a deployment plan.
//!
//! The pipeline, one module a stage:
//! 1. `yaml` loads a file into a tree that remembers the line and column of every value, with
//!    caps on size, nesting and alias expansion;
//! 2. `imports` resolves and merges imports (relative paths, URLs through resolver rules and the
//!    spec mirror, `plugin:` imports, the built-in types file), with `namespace` prefixing what a
//!    `ns--` import defines;
//! 3. `parse` validates the merged document against the schema of its DSL version (`version`
//!    holds the version gates);
//! 4. `types` derives node, relationship and data types and merges them into templates;
//! 5. `plan` binds operations to plugins, finds hosts and evaluates, with `functions`, the
//!    plan-time intrinsic functions (keeping the runtime ones); `inputs` checks deployment inputs
//!    and `groups` makes the scaling groups;
//! 6. `instances` multiplies nodes into node instances (contained_in, connection types, scaling
//!    groups).
//!
//! Every error carries the file, line, column and field path it is about ([`Error`]).

pub mod error;
mod functions;
mod groups;
mod imports;
mod inputs;
pub mod instances;
mod namespace;
mod parse;
mod plan;
mod types;
mod version;
mod yaml;

use std::path::{Path, PathBuf};

use drover_model::{Map, Plan};

pub use error::{Error, Location};

/// How to read a blueprint.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A local mirror of Cloudify's spec site, laid out as `../shared/conformance/spec`. Without
    /// one, the well-known types URLs resolve to drover's built-in types file.
    pub spec_mirror: Option<PathBuf>,
    /// Resolver rules: an import starting with the prefix is read from the local directory instead.
    pub resolver_rules: Vec<(String, PathBuf)>,
    /// Deployment inputs, by name.
    pub inputs: Map,
}

/// Reads and validates a blueprint, without making a plan.
pub fn validate_file(path: &Path, options: &Options) -> Result<(), Error> {
    plan_file(path, options).map(|_| ())
}

/// Reads a blueprint and makes its deployment plan with the given inputs.
pub fn plan_file(path: &Path, options: &Options) -> Result<Plan, Error> {
    let text = yaml::read_file(path).map_err(|m| Error::new(format!("blueprint: {m}")))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    plan_text(&text, Some(path), base_dir, options)
}

/// Makes the plan of a blueprint given as text; relative imports resolve against `base_dir`.
/// The entry point of the fuzz target and of tests with inline blueprints.
pub fn plan_str(text: &str, base_dir: &Path, options: &Options) -> Result<Plan, Error> {
    plan_text(text, None, base_dir, options)
}

/// The pipeline: imports, schema, types and plan, then node instances.
fn plan_text(
    text: &str,
    file: Option<&Path>,
    base_dir: &Path,
    options: &Options,
) -> Result<Plan, Error> {
    let merged = imports::load(text, file, base_dir, options)?;
    let blueprint = parse::blueprint(&merged.document, merged.version)?;
    let resource_base = merged.resource_base.as_deref();
    let mut plan = plan::make(
        &blueprint,
        &options.inputs,
        resource_base,
        &merged.document.mark,
    )?;
    plan.node_instances = instances::node_instances(&plan.nodes, &plan.scaling_groups)?;
    Ok(plan)
}

/// Reads a YAML document (an inputs file, a `K=V` value) into JSON. Errors name line and column.
pub fn yaml_to_json(text: &str) -> Result<serde_json::Value, Error> {
    yaml::load(text, None).map(|node| node.to_json())
}
