//! `drover blueprint validate|plan`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use drover_model::Plan;

use crate::{Failure, inputs};

#[derive(Subcommand)]
pub enum BlueprintCommand {
    /// Check a blueprint: exit 0 when valid, 1 with the error on stderr when not.
    Validate {
        blueprint: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print the deployment plan a blueprint and inputs make.
    Plan {
        blueprint: PathBuf,
        /// A YAML/JSON inputs file, or KEY=VALUE pairs (`;`-separated); may be repeated.
        #[arg(short, long = "inputs")]
        inputs: Vec<String>,
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, value_enum, default_value_t = PlanFormat::Table)]
        format: PlanFormat,
    },
}

/// Where imports come from.
#[derive(Args)]
pub struct SourceArgs {
    /// A local mirror of Cloudify's spec site (types, plugin.yaml files) for offline imports.
    #[arg(long, value_name = "DIR")]
    spec_mirror: Option<PathBuf>,
    /// Read imports starting with PREFIX from DIR instead: `PREFIX=DIR`; may be repeated.
    #[arg(long = "resolver-rule", value_name = "PREFIX=DIR")]
    resolver_rules: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlanFormat {
    Json,
    Table,
}

pub fn run(command: BlueprintCommand) -> Result<(), Failure> {
    match command {
        BlueprintCommand::Validate { blueprint, source } => {
            let options = source.options(Default::default())?;
            drover_dsl::validate_file(&blueprint, &options)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            println!("{}: valid", blueprint.display());
            Ok(())
        }
        BlueprintCommand::Plan {
            blueprint,
            inputs,
            source,
            format,
        } => {
            let options = source.options(inputs::parse(&inputs)?)?;
            let plan = drover_dsl::plan_file(&blueprint, &options)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            match format {
                PlanFormat::Json => write_json(&plan).map_err(Failure::Other)?,
                PlanFormat::Table => print!("{}", table(&plan)),
            }
            Ok(())
        }
    }
}

/// Streams the plan to stdout: a 100,000-instance plan is tens of megabytes of JSON, which need
/// not be held in memory a second time.
fn write_json(plan: &Plan) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, plan)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

impl SourceArgs {
    fn options(self, inputs: drover_model::Map) -> anyhow::Result<drover_dsl::Options> {
        let mut resolver_rules = Vec::new();
        for rule in self.resolver_rules {
            let Some((prefix, dir)) = rule.split_once('=') else {
                anyhow::bail!("--resolver-rule {rule:?}: expected PREFIX=DIR");
            };
            resolver_rules.push((prefix.to_string(), PathBuf::from(dir)));
        }
        Ok(drover_dsl::Options {
            spec_mirror: self.spec_mirror,
            resolver_rules,
            inputs,
        })
    }
}

/// A readable summary: one row a node (type, host, instances, relationships), then totals.
fn table(plan: &Plan) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in &plan.node_instances {
        *counts.entry(instance.node_id.as_str()).or_default() += 1;
    }
    let rows: Vec<[String; 5]> = plan
        .nodes
        .iter()
        .map(|node| {
            let relationships = node
                .relationships
                .iter()
                .map(|r| format!("{} {}", short_type(&r.type_name), r.target_id))
                .collect::<Vec<_>>()
                .join(", ");
            [
                node.id.clone(),
                node.type_name.clone(),
                node.host_id.clone().unwrap_or_else(|| "-".into()),
                counts
                    .get(node.id.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                if relationships.is_empty() {
                    "-".into()
                } else {
                    relationships
                },
            ]
        })
        .collect();
    let header = ["NODE", "TYPE", "HOST", "INSTANCES", "RELATIONSHIPS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{} nodes, {} node instances, {} scaling groups, {} workflows, {} outputs\n",
        plan.nodes.len(),
        plan.node_instances.len(),
        plan.scaling_groups.len(),
        plan.workflows.len(),
        plan.outputs.len()
    ));
    out
}

/// `cloudify.relationships.contained_in` reads as `contained_in` in a table.
fn short_type(name: &str) -> &str {
    name.strip_prefix("cloudify.relationships.").unwrap_or(name)
}
