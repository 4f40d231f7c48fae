//! Configuration of the debug sink.

use std::path::PathBuf;

use serde::Deserialize;
use tracepipe_config::{ConfigError, Node};

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    /// Nothing is logged (the file, if any, is still written).
    None,
    /// One line per batch with its span count.
    #[default]
    Basic,
    /// One line per span.
    Detailed,
}

/// `type: debug` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// `none`, `basic` (default) or `detailed`.
    pub verbosity: Verbosity,
    /// Optional file to append OTLP/JSON lines to.
    pub path: Option<PathBuf>,
}

impl DebugConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<DebugConfig, Vec<ConfigError>> {
        let c: DebugConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        if c.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            let pos = node.get("path").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(file, pos, "path must not be empty")]);
        }
        Ok(c)
    }
}
