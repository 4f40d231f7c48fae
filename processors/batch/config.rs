//! Configuration of the batch processor.

use serde::Deserialize;
use tracepipe_config::{ByteSize, ConfigError, Duration, Node};

/// `type: batch` settings (names and defaults as in the OTel Collector).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Send when this many spans are pending (default 8192).
    pub send_batch_size: usize,
    /// Split batches larger than this; 0 = no limit (default 0).
    pub send_batch_max_size: usize,
    /// Send a non-empty batch this long after its first span (default 200ms).
    pub timeout: Duration,
    /// Send when this many bytes are pending (encoded size; default 8MiB), however few spans:
    /// what the processor holds is bounded in bytes as well as in spans.
    pub send_batch_max_bytes: ByteSize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { send_batch_size: 8192, send_batch_max_size: 0, timeout: Duration::from_millis(200), send_batch_max_bytes: ByteSize::mib(8) }
    }
}

impl BatchConfig {
    /// Reads and checks the settings.
    pub fn from_node(node: &Node, file: &str) -> Result<BatchConfig, Vec<ConfigError>> {
        let c: BatchConfig = node.deserialize_into(file).map_err(|e| vec![e])?;
        if c.send_batch_max_size > 0 && c.send_batch_max_size < c.send_batch_size {
            let pos = node.get("send_batch_max_size").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(
                file,
                pos,
                format!("send_batch_max_size ({}) must be 0 or at least send_batch_size ({})", c.send_batch_max_size, c.send_batch_size),
            )]);
        }
        if c.send_batch_max_bytes.get() < 1024 {
            let pos = node.get("send_batch_max_bytes").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(file, pos, "send_batch_max_bytes must be at least 1KiB")]);
        }
        if c.send_batch_size == 0 {
            let pos = node.get("send_batch_size").map(|n| n.pos).unwrap_or(node.pos);
            return Err(vec![ConfigError::new(file, pos, "send_batch_size must be above 0")]);
        }
        Ok(c)
    }
}
