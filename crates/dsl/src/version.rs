//! DSL versions (`tosca_definitions_version: cloudify_dsl_1_3`) and the version gates of fields.

use crate::error::Error;
use crate::yaml::{Node, Value};

/// A supported DSL version, `cloudify_dsl_1_0` to `cloudify_dsl_1_5`. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Default for Version {
    fn default() -> Self {
        Self { major: 1, minor: 4 }
    }
}

const PREFIX: &str = "cloudify_dsl_";

impl Version {
    /// The version a main blueprint declares; it must declare one.
    pub fn of_document(document: &Node) -> Result<Self, Error> {
        match document.get("tosca_definitions_version") {
            Some(node) => Self::parse(node),
            None => Err(document.mark.error(
                "tosca_definitions_version",
                "missing tosca_definitions_version (expected cloudify_dsl_1_0 to cloudify_dsl_1_5)",
            )),
        }
    }

    /// Reads a `tosca_definitions_version` value.
    pub fn parse(node: &Node) -> Result<Self, Error> {
        let bad = || {
            node.mark.error(
                "tosca_definitions_version",
                format!(
                    "unsupported DSL version {}: expected cloudify_dsl_1_0 to cloudify_dsl_1_5",
                    match &node.value {
                        Value::Str(s) => format!("{s:?}"),
                        _ => node.kind().to_string(),
                    }
                ),
            )
        };
        let text = node.as_str().ok_or_else(bad)?;
        let rest = text.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (major, minor) = rest.split_once('_').ok_or_else(bad)?;
        let version = Self {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        };
        if version.major != 1 || version.minor > 5 {
            return Err(bad());
        }
        Ok(version)
    }

    /// `cloudify_dsl_1_3`.
    pub fn name(&self) -> String {
        format!("{PREFIX}{}", self.suffix())
    }

    /// `1_3`, as in `types_1_3.yaml`.
    pub fn suffix(&self) -> String {
        format!("{}_{}", self.major, self.minor)
    }

    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        *self >= Self { major, minor }
    }

    /// Rejects `field` (at `node`, path `path`) unless this version is at least `major_minor`.
    pub fn require(
        &self,
        node: &Node,
        path: &str,
        field: &str,
        major: u8,
        minor: u8,
    ) -> Result<(), Error> {
        if self.at_least(major, minor) {
            return Ok(());
        }
        Err(node.mark.error(
            path,
            format!(
                "{field} requires cloudify_dsl_{major}_{minor} or later, but the blueprint is {}",
                self.name()
            ),
        ))
    }
}
