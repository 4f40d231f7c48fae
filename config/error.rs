//! Configuration errors: every one carries the file, line and column it refers to.

use std::fmt;

/// A position in the configuration source (1-based line and column; 0 means unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line number.
    pub line: u64,
    /// 1-based column (in characters).
    pub column: u64,
}

impl Pos {
    /// A position that is not known (printed without line and column).
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };
}

/// One configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}:{}: {message}", pos.line, pos.column)]
pub struct ConfigError {
    /// The file (or `<embedded>`) the error is in.
    pub file: String,
    /// Where in the file.
    pub pos: Pos,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl ConfigError {
    /// Builds an error at a position.
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_owned(), pos, message: message.into() }
    }
}

/// The error for a component (or policy) that this binary was built without: `what` names it
/// ("sink type `parquet`"). Only the trace archive is optional (the `archive` feature: DataFusion).
pub fn not_in_this_build(file: &str, pos: Pos, what: &str) -> ConfigError {
    ConfigError::new(file, pos, not_in_this_build_message(what))
}

/// The message of [`not_in_this_build`].
pub fn not_in_this_build_message(what: &str) -> String {
    format!("{what} is not in this build of tracepipe: it needs the `archive` feature (DataFusion), which `--no-default-features` leaves out; build with `cargo build --release` (default features)")
}

/// Every error found in one configuration, sorted by position.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Adds one error.
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    /// Adds many errors.
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }
    /// True when no error was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Sorts by position and removes exact duplicates.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| (a.pos, &a.message).cmp(&(b.pos, &b.message)));
        self.0.dedup();
        self
    }
    /// `Ok(value)` when empty, otherwise `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(self.sorted()) }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
