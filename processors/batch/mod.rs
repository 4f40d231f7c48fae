//! `type: batch` — groups spans into larger batches before they reach sinks, with the OTel
//! Collector batch processor's semantics:
//! - a batch is sent as soon as it holds `send_batch_size` spans (size trigger);
//! - otherwise `timeout` after its first span arrived (timeout trigger; `0` sends every input
//!   batch at once);
//! - with `send_batch_max_size > 0`, larger batches are split so none exceeds it.
//!
//! Encoded batches merge without decoding (buffer handles are appended); only a split decodes.
//! On shutdown the pending batch is flushed before the processor returns.

mod config;
mod processor;

#[cfg(test)]
mod tests;

pub use config::BatchConfig;
pub use processor::build;
