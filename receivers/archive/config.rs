//! Configuration of the archive (replay) receiver.

use std::path::PathBuf;
use std::time::SystemTime;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::{Deserialize, Deserializer};
use tracepipe_config::{ConfigError, Node};

/// Replay pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the graph accepts.
    Max,
    /// The original gaps between span starts divided by this factor (`1x`, `10x`, `0.5x`).
    Factor(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        let f: f64 = s.strip_suffix('x').unwrap_or(s).parse().map_err(|_| format!("invalid speed `{s}`: use max, or a factor such as 1x, 10x, 0.5x"))?;
        if !(f.is_finite() && f > 0.0) {
            return Err(format!("invalid speed `{s}`: the factor must be above 0"));
        }
        Ok(Speed::Factor(f))
    }
}

impl<'de> Deserialize<'de> for Speed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s).map(Some).map_err(|e| serde::de::Error::custom(format!("invalid time `{s}` ({e}); use RFC 3339, e.g. 2026-11-22T10:00:00Z")))
}

/// `type: archive` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Archive root (default `./tracepipe-data/traces`).
    pub path: PathBuf,
    /// A DataFusion SQL predicate over the `spans` table (e.g. `service_name = 'reviews'`).
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// Only spans starting at or after this time (RFC 3339).
    #[serde(deserialize_with = "time")]
    pub from: Option<SystemTime>,
    /// Only spans starting before this time (RFC 3339).
    #[serde(deserialize_with = "time")]
    pub to: Option<SystemTime>,
    /// `max` (default) or a factor of the original pace (`1x`, `10x`, `0.5x`).
    pub speed: Speed,
    /// Shift timestamps so the first replayed span starts now (default false).
    pub shift_to_now: bool,
    /// Replay every span of each trace that has a span matching `where`/`from`/`to` (default false).
    pub whole_traces: bool,
    /// Spans per batch sent into the graph (default 8192).
    pub batch_size: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            path: PathBuf::from("./tracepipe-data/traces"),
            filter: None,
            from: None,
            to: None,
            speed: Speed::Max,
            shift_to_now: false,
            whole_traces: false,
            batch_size: 8192,
        }
    }
}

impl ArchiveConfig {
    /// Reads and checks the settings; `where` is parsed as a SQL expression (no I/O).
    pub fn from_node(node: &Node, file: &str) -> Result<ArchiveConfig, Vec<ConfigError>> {
        let c: ArchiveConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        let at = |k: &str| node.get(k).map(|n| n.pos).unwrap_or(node.pos);
        let mut errors = Vec::new();
        if c.path.as_os_str().is_empty() {
            errors.push(ConfigError::new(file, at("path"), "path must not be empty"));
        }
        if let Some(w) = &c.filter
            && let Err(e) = check_predicate(w)
        {
            errors.push(ConfigError::new(file, at("where"), format!("where: {e}")));
        }
        if let (Some(f), Some(t)) = (c.from, c.to)
            && f >= t
        {
            errors.push(ConfigError::new(file, at("to"), "`to` must be after `from`"));
        }
        if c.batch_size == 0 {
            errors.push(ConfigError::new(file, at("batch_size"), "batch_size must be above 0"));
        }
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }
}

/// Parses `w` as one SQL expression (what may follow `WHERE`).
pub fn check_predicate(w: &str) -> Result<(), String> {
    let mut p = Parser::new(&GenericDialect {}).try_with_sql(w).map_err(|e| e.to_string())?;
    p.parse_expr().map_err(|e| e.to_string())?;
    if p.peek_token().token != datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(format!("unexpected `{}` after the predicate", p.peek_token().token));
    }
    Ok(())
}
