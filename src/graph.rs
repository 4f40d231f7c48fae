//! Assembles a runnable graph from a configuration: the one place that knows every component
//! crate. Validation collects every error from the loader, every component and the graph-wide
//! checks (two listeners on one address) before anything starts.

use tracepipe_config::{ComponentKind, ConfigError, ConfigErrors, ConfigFile};
use tracepipe_pipeline::topology::Planned;
use tracepipe_processors::ProcessorConfig;
use tracepipe_receivers::ReceiverConfig;
use tracepipe_sinks::SinkConfig;

/// A component's validated settings.
pub enum Validated {
    Receiver(ReceiverConfig),
    Processor(ProcessorConfig),
    Sink(SinkConfig),
}

/// A configuration whose every part is valid.
pub struct ValidGraph {
    pub file: ConfigFile,
    /// In topological order.
    pub components: Vec<(String, ComponentKind, Vec<String>, Validated)>,
}

/// Loads and checks everything; returns every error at once.
pub fn validate(file: &str, text: &str) -> Result<ValidGraph, ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    let (cfg, mut errors) = tracepipe_config::load(file, text, &env);
    let mut components = Vec::new();
    let mut listeners: Vec<(tracepipe_config::Endpoint, &'static str, String, tracepipe_config::Pos)> = Vec::new();
    for decl in cfg.topological_order() {
        let result = match decl.kind {
            ComponentKind::Receiver => tracepipe_receivers::validate(decl, file).map(|r| {
                for (ep, transport) in r.listen_addresses() {
                    listeners.push((ep, transport, decl.name.clone(), decl.pos));
                }
                Validated::Receiver(r)
            }),
            ComponentKind::Processor => tracepipe_processors::validate(decl, file).map(Validated::Processor),
            ComponentKind::Sink => tracepipe_sinks::validate(decl, file).map(Validated::Sink),
        };
        match result {
            Ok(v) => components.push((decl.name.clone(), decl.kind, decl.inputs.iter().map(|(n, _)| n.clone()).collect(), v)),
            Err(es) => {
                // Its listeners still take part in the conflict check (every error at once).
                if decl.kind == ComponentKind::Receiver {
                    for (ep, transport) in tracepipe_receivers::declared_listen_addresses(decl, file) {
                        listeners.push((ep, transport, decl.name.clone(), decl.pos));
                    }
                }
                errors.0.extend(es)
            }
        }
    }
    if let Some(m) = Some(&cfg.telemetry.metrics).filter(|m| m.enabled) {
        listeners.push((m.endpoint.clone(), "tcp", "telemetry.metrics".into(), tracepipe_config::Pos { line: 1, column: 1 }));
    }
    for (i, (a, ta, na, pa)) in listeners.iter().enumerate() {
        for (b, tb, nb, _) in &listeners[..i] {
            if ta == tb && a.conflicts_with(b) && na != nb {
                errors.push(ConfigError::new(file, *pa, format!("`{na}` listens on {a}, which `{nb}` already uses ({ta})")));
            }
        }
    }
    errors.into_result(ValidGraph { file: cfg, components })
}

/// Channel capacity of each processor and sink input, in batches.
const CHANNEL_CAPACITY: usize = 64;

/// And in bytes of encoded spans: 64 batches of 8192 spans of ~500 bytes would be 256 MiB; the
/// channel holds at most this much (a batch larger than it passes alone).
const CHANNEL_BYTES: usize = 32 << 20;

/// Turns a valid graph into planned components for the runtime.
pub fn plan(graph: ValidGraph) -> Vec<Planned> {
    graph
        .components
        .into_iter()
        .map(|(name, kind, inputs, v)| Planned {
            name,
            kind,
            inputs,
            channel_capacity: CHANNEL_CAPACITY,
            channel_bytes: CHANNEL_BYTES,
            build: match v {
                Validated::Receiver(r) => Box::new(move |ctx| r.build(ctx)),
                Validated::Processor(p) => Box::new(move |ctx| p.build(ctx)),
                Validated::Sink(s) => Box::new(move |ctx| s.build(ctx)),
            },
        })
        .collect()
}

/// Draws the graph as Graphviz dot or a Mermaid flowchart.
pub fn draw(cfg: &ConfigFile, mermaid: bool) -> String {
    let mut out = String::new();
    let id = |n: &str| n.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    if mermaid {
        out.push_str("flowchart LR\n");
        for c in cfg.components() {
            let (open, close) = match c.kind {
                ComponentKind::Receiver => ("([", "])"),
                ComponentKind::Processor => ("[", "]"),
                ComponentKind::Sink => ("[(", ")]"),
            };
            out.push_str(&format!("    {}{}\"{}<br/>{}\"{}\n", id(&c.name), open, c.name, c.type_name, close));
        }
        for c in cfg.components() {
            for (i, _) in &c.inputs {
                out.push_str(&format!("    {} --> {}\n", id(i), id(&c.name)));
            }
        }
    } else {
        out.push_str("digraph tracepipe {\n    rankdir=LR;\n");
        for c in cfg.components() {
            let shape = match c.kind {
                ComponentKind::Receiver => "invhouse",
                ComponentKind::Processor => "box",
                ComponentKind::Sink => "house",
            };
            out.push_str(&format!("    \"{}\" [shape={shape}, label=\"{}\\n({} {})\"];\n", c.name, c.name, c.kind.as_str(), c.type_name));
        }
        for c in cfg.components() {
            for (i, _) in &c.inputs {
                out.push_str(&format!("    \"{}\" -> \"{}\";\n", i, c.name));
            }
        }
        out.push_str("}\n");
    }
    out
}
