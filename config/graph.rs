//! The top-level document (`receivers`, `processors`, `sinks`, `telemetry`) and the checks on the
//! graph they form: every input exists, no cycles, every component is reached from a receiver and
//! every processor is read by someone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::error::{ConfigError, ConfigErrors, Pos};
use crate::node::{Node, Value};
use crate::types::Endpoint;

/// Which section a component is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    /// `receivers:` — produce batches.
    Receiver,
    /// `processors:` — consume and produce batches.
    Processor,
    /// `sinks:` — consume batches.
    Sink,
}

impl ComponentKind {
    /// The singular name used in messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receiver",
            ComponentKind::Processor => "processor",
            ComponentKind::Sink => "sink",
        }
    }
}

/// One component as declared: its name, `type`, `inputs` and the rest of its settings.
#[derive(Debug, Clone)]
pub struct ComponentDecl {
    /// Receiver, processor or sink.
    pub kind: ComponentKind,
    /// The user's name for it (the mapping key).
    pub name: String,
    /// Where the name is.
    pub pos: Pos,
    /// The `type:` value.
    pub type_name: String,
    /// Where the type is (or the name, if `type` is missing).
    pub type_pos: Pos,
    /// The `inputs:` names with their positions (empty for receivers).
    pub inputs: Vec<(String, Pos)>,
    /// The component's own settings: its mapping without `type` and `inputs`.
    pub body: Node,
}

/// `telemetry.metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz` (default true).
    pub enabled: bool,
    /// Listen address of the telemetry server (default `0.0.0.0:8888`, as the OTel Collector).
    pub endpoint: Endpoint,
    /// Serve the telemetry endpoint over TLS.
    pub tls: Option<crate::ServerTlsConfig>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, endpoint: Endpoint::new("0.0.0.0", 8888), tls: None }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `telemetry.logs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a `tracing` filter directive (default `info`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// The `telemetry:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Prometheus metrics and health endpoints.
    pub metrics: MetricsConfig,
    /// Process logs.
    pub logs: LogsConfig,
}

/// The `memory:` section: the process-wide memory limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The limit on the process's resident memory. Unset: 80% of the cgroup's `memory.max` when
    /// the process runs under one with a limit, otherwise no limit.
    pub limit: Option<crate::types::ByteSize>,
    /// Above `limit × soft_ratio` receivers refuse new data with retryable errors (gRPC
    /// `UNAVAILABLE`, HTTP 503 + `Retry-After`), UDP datagrams are dropped and counted, Kafka
    /// receivers pause, and `/readyz` says why (default 0.85).
    pub soft_ratio: f64,
    /// How often resident memory is read (default 100ms).
    pub check_interval: crate::types::Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { limit: None, soft_ratio: 0.85, check_interval: crate::types::Duration::from_millis(100) }
    }
}

/// A whole configuration file, structurally valid (component settings are checked by their crates).
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    /// The file name used in messages.
    pub file: String,
    /// Declared receivers, in file order.
    pub receivers: Vec<ComponentDecl>,
    /// Declared processors, in file order.
    pub processors: Vec<ComponentDecl>,
    /// Declared sinks, in file order.
    pub sinks: Vec<ComponentDecl>,
    /// Telemetry settings.
    pub telemetry: TelemetryConfig,
    /// The process-wide memory limit.
    pub memory: MemoryConfig,
}

impl ConfigFile {
    /// Every component, receivers first.
    pub fn components(&self) -> impl Iterator<Item = &ComponentDecl> {
        self.receivers.iter().chain(&self.processors).chain(&self.sinks)
    }

    /// The component of that name.
    pub fn component(&self, name: &str) -> Option<&ComponentDecl> {
        self.components().find(|c| c.name == name)
    }

    /// Names of the components that list `name` among their inputs, in file order.
    pub fn consumers_of(&self, name: &str) -> Vec<&str> {
        self.processors
            .iter()
            .chain(&self.sinks)
            .filter(|c| c.inputs.iter().any(|(i, _)| i == name))
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Components in topological order (receivers, then processors so that every processor
    /// comes after its inputs, then sinks). Components in a cycle are left out.
    pub fn topological_order(&self) -> Vec<&ComponentDecl> {
        let mut done: BTreeSet<&str> = self.receivers.iter().map(|r| r.name.as_str()).collect();
        let mut order: Vec<&ComponentDecl> = self.receivers.iter().collect();
        let mut pending: Vec<&ComponentDecl> = self.processors.iter().collect();
        loop {
            let before = pending.len();
            pending.retain(|p| {
                if p.inputs.iter().all(|(i, _)| done.contains(i.as_str()) || self.component(i).is_none()) {
                    order.push(p);
                    done.insert(p.name.as_str());
                    false
                } else {
                    true
                }
            });
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        // Processors on a cycle have no topological place; they are listed anyway (the cycle is
        // a reported error, so the graph never runs) so that their own settings are checked too.
        order.extend(pending);
        order.extend(self.sinks.iter());
        order
    }
}

/// Parses and checks a configuration. On YAML syntax errors the returned file is empty; on other
/// errors it holds everything that could be read, so that component settings can still be checked
/// and all errors reported together.
pub fn load(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> (ConfigFile, ConfigErrors) {
    let mut errors = ConfigErrors::default();
    let mut cfg = ConfigFile { file: file.to_owned(), ..Default::default() };
    let mut root = match Node::parse(file, text) {
        Ok(n) => n,
        Err(e) => {
            errors.push(e);
            return (cfg, errors);
        }
    };
    let mut env_errors = Vec::new();
    root.expand_env(file, env, &mut env_errors);
    errors.0.extend(env_errors);

    match &root.value {
        Value::Map(_) => {}
        Value::Null => {}
        _ => {
            errors.push(ConfigError::new(file, root.pos, format!("expected a mapping at the top level, found {}", root.type_name())));
            return (cfg, errors);
        }
    }
    for (key, value) in root.entries() {
        match key.name.as_str() {
            "receivers" => cfg.receivers = read_section(file, ComponentKind::Receiver, value, &mut errors),
            "processors" => cfg.processors = read_section(file, ComponentKind::Processor, value, &mut errors),
            "sinks" => cfg.sinks = read_section(file, ComponentKind::Sink, value, &mut errors),
            "telemetry" => match value.deserialize_into::<TelemetryConfig>(file) {
                Ok(t) => {
                    if let Some(tls) = &t.metrics.tls {
                        let pos = value.get("metrics").and_then(|m| m.get("tls")).map(|n| n.pos).unwrap_or(value.pos);
                        for p in tls.problems() {
                            errors.push(ConfigError::new(file, pos, format!("telemetry.metrics: {p}")));
                        }
                    }
                    cfg.telemetry = t
                }
                Err(e) => errors.push(e),
            },
            "memory" => match value.deserialize_into::<MemoryConfig>(file) {
                Ok(m) => {
                    if !(m.soft_ratio > 0.0 && m.soft_ratio <= 1.0) {
                        errors.push(ConfigError::new(file, value.get("soft_ratio").map(|n| n.pos).unwrap_or(value.pos), "memory.soft_ratio must be above 0 and at most 1"));
                    }
                    if m.limit.is_some_and(|l| l.get() < 16 << 20) {
                        errors.push(ConfigError::new(file, value.get("limit").map(|n| n.pos).unwrap_or(value.pos), "memory.limit must be at least 16MiB"));
                    }
                    if m.check_interval.get().is_zero() {
                        errors.push(ConfigError::new(file, value.get("check_interval").map(|n| n.pos).unwrap_or(value.pos), "memory.check_interval must be above 0"));
                    }
                    cfg.memory = m;
                }
                Err(e) => errors.push(e),
            },
            other => errors.push(ConfigError::new(
                file,
                key.pos,
                format!("unknown top-level key `{other}`; expected one of receivers, processors, sinks, telemetry, memory"),
            )),
        }
    }
    check_graph(&cfg, &mut errors);
    (cfg, errors)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn read_section(file: &str, kind: ComponentKind, node: &Node, errors: &mut ConfigErrors) -> Vec<ComponentDecl> {
    let mut out = Vec::new();
    match &node.value {
        Value::Map(_) | Value::Null => {}
        _ => {
            errors.push(ConfigError::new(file, node.pos, format!("expected a mapping of {} names to settings, found {}", kind.as_str(), node.type_name())));
            return out;
        }
    }
    for (key, body) in node.entries() {
        if !valid_name(&key.name) {
            errors.push(ConfigError::new(file, key.pos, format!("invalid {} name {:?}: use letters, digits, `_`, `-`, `.` or `/`", kind.as_str(), key.name)));
        }
        if !matches!(body.value, Value::Map(_)) {
            errors.push(ConfigError::new(file, body.pos, format!("{} `{}`: expected a mapping with at least `type`, found {}", kind.as_str(), key.name, body.type_name())));
            continue;
        }
        let (type_name, type_pos) = match body.get("type") {
            Some(Node { value: Value::Str(s), pos }) => (s.clone(), *pos),
            Some(other) => {
                errors.push(ConfigError::new(file, other.pos, format!("{} `{}`: `type` must be a string", kind.as_str(), key.name)));
                (String::new(), other.pos)
            }
            None => {
                errors.push(ConfigError::new(file, key.pos, format!("{} `{}` has no `type`", kind.as_str(), key.name)));
                (String::new(), key.pos)
            }
        };
        let mut inputs = Vec::new();
        match (kind, body.get("inputs")) {
            (ComponentKind::Receiver, Some(n)) => {
                errors.push(ConfigError::new(file, n.pos, format!("receiver `{}`: receivers take no `inputs`", key.name)));
            }
            (ComponentKind::Receiver, None) => {}
            (_, None) => errors.push(ConfigError::new(
                file,
                key.pos,
                format!("{} `{}` has no `inputs`; list the receivers or processors it reads", kind.as_str(), key.name),
            )),
            (_, Some(n)) => match &n.value {
                Value::Seq(items) => {
                    for item in items {
                        match &item.value {
                            Value::Str(s) => inputs.push((s.clone(), item.pos)),
                            _ => errors.push(ConfigError::new(file, item.pos, "an input must be a component name")),
                        }
                    }
                    if items.is_empty() {
                        errors.push(ConfigError::new(file, n.pos, format!("{} `{}`: `inputs` is empty", kind.as_str(), key.name)));
                    }
                }
                Value::Str(s) => inputs.push((s.clone(), n.pos)),
                _ => errors.push(ConfigError::new(file, n.pos, "`inputs` must be a list of component names")),
            },
        }
        out.push(ComponentDecl {
            kind,
            name: key.name.clone(),
            pos: key.pos,
            type_name,
            type_pos,
            inputs,
            body: body.without_keys(&["type", "inputs"]),
        });
    }
    out
}

fn check_graph(cfg: &ConfigFile, errors: &mut ConfigErrors) {
    let file = cfg.file.as_str();
    // Names are unique across sections: inputs refer to them.
    let mut seen: BTreeMap<&str, &ComponentDecl> = BTreeMap::new();
    for c in cfg.components() {
        if let Some(first) = seen.get(c.name.as_str()) {
            errors.push(ConfigError::new(
                file,
                c.pos,
                format!("the name `{}` is used by a {} (line {}) and a {}; component names must be unique", c.name, first.kind.as_str(), first.pos.line, c.kind.as_str()),
            ));
        } else {
            seen.insert(&c.name, c);
        }
    }
    if cfg.receivers.is_empty() {
        errors.push(ConfigError::new(file, Pos { line: 1, column: 1 }, "no receivers are configured; a graph needs at least one receiver"));
    }
    if cfg.sinks.is_empty() {
        errors.push(ConfigError::new(file, Pos { line: 1, column: 1 }, "no sinks are configured; a graph needs at least one sink"));
    }
    for c in cfg.processors.iter().chain(&cfg.sinks) {
        for (input, pos) in &c.inputs {
            match seen.get(input.as_str()) {
                None => errors.push(ConfigError::new(
                    file,
                    *pos,
                    format!("{} `{}` reads from `{input}`, which is not a receiver or processor", c.kind.as_str(), c.name),
                )),
                Some(src) if src.kind == ComponentKind::Sink => errors.push(ConfigError::new(
                    file,
                    *pos,
                    format!("{} `{}` reads from `{input}`, which is a sink; sinks have no output", c.kind.as_str(), c.name),
                )),
                Some(_) if input == &c.name => errors.push(ConfigError::new(
                    file,
                    *pos,
                    format!("{} `{}` lists itself as an input", c.kind.as_str(), c.name),
                )),
                _ => {}
            }
        }
        let mut dup = BTreeSet::new();
        for (input, pos) in &c.inputs {
            if !dup.insert(input) {
                errors.push(ConfigError::new(file, *pos, format!("{} `{}` lists `{input}` twice", c.kind.as_str(), c.name)));
            }
        }
    }
    for cycle in find_cycles(cfg) {
        let first = cfg.component(&cycle[0]).map(|c| c.pos).unwrap_or_default();
        let mut names = cycle.clone();
        names.push(cycle[0].clone());
        errors.push(ConfigError::new(file, first, format!("processors form a cycle: {}", names.join(" -> "))));
    }
    // Reachability from receivers.
    let mut reached: BTreeSet<&str> = cfg.receivers.iter().map(|r| r.name.as_str()).collect();
    loop {
        let before = reached.len();
        for c in cfg.processors.iter().chain(&cfg.sinks) {
            if c.inputs.iter().any(|(i, _)| reached.contains(i.as_str())) {
                reached.insert(&c.name);
            }
        }
        if reached.len() == before {
            break;
        }
    }
    for c in cfg.processors.iter().chain(&cfg.sinks) {
        if !reached.contains(c.name.as_str()) && !c.inputs.is_empty() {
            errors.push(ConfigError::new(file, c.pos, format!("{} `{}` is not reached by any receiver", c.kind.as_str(), c.name)));
        }
    }
    for c in cfg.receivers.iter().chain(&cfg.processors) {
        if cfg.consumers_of(&c.name).is_empty() {
            errors.push(ConfigError::new(
                file,
                c.pos,
                format!("{} `{}` is not an input of any processor or sink; its output would go nowhere", c.kind.as_str(), c.name),
            ));
        }
    }
}

/// Strongly connected components of size > 1 (or self-loops) among processors.
fn find_cycles(cfg: &ConfigFile) -> Vec<Vec<String>> {
    // Tarjan's algorithm over processors; edges input -> consumer.
    let names: Vec<&str> = cfg.processors.iter().map(|p| p.name.as_str()).collect();
    let succ: Vec<Vec<usize>> = names
        .iter()
        .map(|n| cfg.processors.iter().enumerate().filter(|(_, p)| p.inputs.iter().any(|(i, _)| i == n)).map(|(j, _)| j).collect())
        .collect();
    struct St {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, succ: &[Vec<usize>], st: &mut St) {
        st.index[v] = Some(st.next);
        st.low[v] = st.next;
        st.next += 1;
        st.stack.push(v);
        st.on[v] = true;
        for &w in &succ[v] {
            match st.index[w] {
                None => {
                    visit(w, succ, st);
                    st.low[v] = st.low[v].min(st.low[w]);
                }
                Some(iw) if st.on[w] => st.low[v] = st.low[v].min(iw),
                _ => {}
            }
        }
        if Some(st.low[v]) == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 || succ[v].contains(&v) {
                comp.reverse();
                st.out.push(comp);
            }
        }
    }
    let n = names.len();
    let mut st = St { index: vec![None; n], low: vec![0; n], on: vec![false; n], stack: Vec::new(), next: 0, out: Vec::new() };
    for v in 0..n {
        if st.index[v].is_none() {
            visit(v, &succ, &mut st);
        }
    }
    st.out.into_iter().map(|c| c.into_iter().map(|i| names[i].to_owned()).collect()).collect()
}
