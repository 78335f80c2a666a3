//! Deployment inputs from the command line: `--inputs FILE` (YAML or JSON) and `--inputs K=V`.

use std::path::Path;

use anyhow::{Context, bail};
use drover_model::Map;
use serde_json::Value;

/// Merges every `--inputs` argument, later ones winning. An argument is a file when a file of
/// that name exists, else `K=V[;K=V…]` whose values are read as YAML scalars (`n=3` is a number).
pub fn parse(args: &[String]) -> anyhow::Result<Map> {
    let mut inputs = Map::new();
    for arg in args {
        if Path::new(arg).is_file() {
            let text = std::fs::read_to_string(arg)
                .with_context(|| format!("reading inputs file {arg}"))?;
            match drover_dsl::yaml_to_json(&text).with_context(|| format!("inputs file {arg}"))? {
                Value::Object(map) => inputs.extend(map),
                Value::Null => {}
                _ => bail!("inputs file {arg}: expected a mapping of input names to values"),
            }
            continue;
        }
        for pair in arg.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--inputs {arg:?}: not a file, and {pair:?} is not KEY=VALUE");
            };
            let value = drover_dsl::yaml_to_json(value)
                .unwrap_or_else(|_| Value::String(value.to_string()));
            inputs.insert(key.trim().to_string(), value);
        }
    }
    Ok(inputs)
}
