//! # tracepipe
//!
//! The command line: `run` (the default), `validate`, `print-config`, `graph`, `top`, and for trace
//! archives `query` and `replay` ([`archive_cli`]). Everything else
//! lives in the workspace crates: `tracepipe-config` (YAML → validated graph),
//! `tracepipe-pipeline` (batch model, runtime, telemetry), and the component crates
//! `tracepipe-receivers`, `tracepipe-processors`, `tracepipe-sinks`.

#[cfg(feature = "archive")]
mod archive_cli;
mod graph;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_e`, the same in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How soon freed memory goes back to the OS, in ms (mimalloc 3's default is 1000).
///
/// Measured (2-core machine; OTLP gRPC → batch → discard, 1M spans): 1000 ms 0.73 CPU-µs/span,
/// 10 ms 0.81, 1 ms 0.94 — each purge is a madvise and the next use of the page a fault. With a
/// tail-sampling processor, which frees decided traces in arrival order seconds after allocating
/// them, the processor's peak RSS above the same graph without it was, for `max_bytes: 64MiB`
/// (tests/e2e/test_tail_sampling.py): 1000 ms ~1.5x max_bytes, 10 ms 1.23x, 1 ms 1.09-1.12x. So
/// the default is 10 ms, and 1 ms for graphs with a tail_sampling processor, whose memory bound
/// is the point. `MIMALLOC_PURGE_DELAY` overrides both.
fn set_purge_delay(ms: i64) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it when it schedules a purge, so it may
        // change at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
    }
}

/// mimalloc 3's `allow_thp` option (its index in `mi_option_e`).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Turns transparent huge pages off for the process (unless `MIMALLOC_ALLOW_THP` says otherwise).
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and with them the
/// kernel backs and keeps memory in 2 MiB units: freed ranges inside a huge page stay resident.
/// Measured with the tail-sampling memory test (tests/e2e/test_tail_sampling.py, peak RSS above
/// the same graph without the processor, as a multiple of `max_bytes`) on a kernel in THP
/// `madvise` mode: 8-span traces 1.20-1.25x with huge pages, 1.07x without; 100k-span traces
/// 1.37-1.56x, 1.23x; a million one-span traces 1.88-1.97x, 1.53x. The idle process is 7 MiB
/// smaller too, and the tail-sampling benchmark (tests/bench/bench.py --scenarios tail, profiling
/// build) measured 1.15-1.47 CPU-µs per span with the processor instead of 2.44-2.74, and
/// 0.63-0.68 without it instead of 0.63: so it is off for every graph.
fn disable_thp() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: sets an integer option; later arena mappings read it (no madvise for huge pages).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) }
    // The arena mapped before main was already advised: PR_SET_THP_DISABLE turns huge pages off
    // for every mapping of the process (also on kernels in THP `always` mode), as mimalloc does
    // itself when MIMALLOC_ALLOW_THP=0 is set at start. A kernel without it leaves THP as it was.
    // SAFETY: prctl with integer arguments only.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn tune_allocator() {
    disable_thp();
    set_purge_delay(10);
}

/// The embedded default graph.
const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// The embedded default graph of this build: without the `archive` feature, the lines between
/// `# archive feature: begin` and `# archive feature: end` (the Parquet sink) are left out.
fn default_config() -> std::borrow::Cow<'static, str> {
    if cfg!(feature = "archive") {
        return DEFAULT_CONFIG.into();
    }
    let mut out = String::new();
    let mut skipping = false;
    for line in DEFAULT_CONFIG.lines() {
        match line.trim() {
            "# archive feature: begin" => skipping = true,
            "# archive feature: end" => skipping = false,
            _ if !skipping => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out.into()
}

/// Exit code for an invalid configuration (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// How long shutdown may take to drain and flush before components are aborted.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(name = "tracepipe", version, about = "A stream-processing trace pipeline: receivers, processors and sinks from one YAML graph.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the graph in FILE, or the embedded default graph (OTLP 4317/4318 -> batch -> debug).
    Run {
        /// The YAML configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration; prints every error with file:line:column and exits 78 if any.
    Validate {
        /// The YAML configuration (the embedded default if omitted).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    PrintConfig,
    /// Draw the graph of a configuration.
    Graph {
        /// The YAML configuration (the embedded default if omitted).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Run one SQL statement over a trace archive (table `spans`).
    Query {
        /// The archive directory (what a `parquet` sink writes).
        #[arg(long, default_value = "./tracepipe-data/traces")]
        archive: PathBuf,
        /// The SQL, e.g. "SELECT service_name, count(*) FROM spans GROUP BY 1".
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
    },
    /// Replay part of a trace archive to a destination (OTLP over gRPC or HTTP, a LightStep satellite, Kafka).
    Replay {
        /// The archive directory.
        #[arg(long, default_value = "./tracepipe-data/traces")]
        archive: PathBuf,
        /// A SQL predicate over `spans`, e.g. "service_name = 'reviews' AND duration_ns > 1000000".
        #[arg(long = "where")]
        filter: Option<String>,
        /// Only spans starting at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// The destination URL (grpc://host:4317, grpcs://…, http://host:4318/v1/traces, https://…,
        /// satellite://host:port for a LightStep satellite over OTLP with TLS,
        /// satellite+insecure://host:port without TLS, kafka://broker:9092/topic for Kafka, one
        /// record per trace keyed by trace id) and, optionally once more, the window's
        /// end time (RFC 3339).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// max, or a factor of the original pace: 1x, 10x, 0.5x.
        #[arg(long, default_value = "max")]
        speed: String,
        /// Move timestamps so the replay looks live.
        #[arg(long)]
        shift_to_now: bool,
        /// Replay whole traces of the spans that match.
        #[arg(long)]
        whole_traces: bool,
        /// CA certificates (PEM) to trust for a TLS destination instead of the built-in roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// LightStep access token for satellite:// (default: $LIGHTSTEP_ACCESS_TOKEN).
        #[arg(long)]
        access_token: Option<String>,
    },
    /// A live view of a running tracepipe from its metrics endpoint: spans/s in and out per
    /// component, refusals, failures, held bytes (as `vector top`).
    Top {
        /// The metrics endpoint of the running process (its `telemetry.metrics.endpoint`).
        #[arg(long, default_value = "http://127.0.0.1:8888/metrics")]
        url: String,
        /// Time between two scrapes, e.g. 1s, 500ms.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one table (two scrapes `--interval` apart) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Run a tail_sampling processor's policies over archived traces and report what they would keep.
    Sample {
        /// The YAML configuration holding the processor.
        #[arg(long, short)]
        config: PathBuf,
        /// The tail_sampling processor (needed when the configuration has several).
        #[arg(long)]
        processor: Option<String>,
        /// The archive directory.
        #[arg(long, default_value = "./tracepipe-data/traces")]
        archive: PathBuf,
        /// Only traces with a span starting at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Only spans starting before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = SampleFormat::Table)]
        format: SampleFormat,
        /// Also list the ids of the kept traces (JSON output).
        #[arg(long)]
        list_kept: bool,
    },
}

/// Output of `tracepipe query`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum QueryFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Output of `tracepipe sample`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SampleFormat {
    /// A text report.
    Table,
    /// One JSON object.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

fn read_config(path: &Option<PathBuf>) -> Result<(String, String), String> {
    match path {
        None => Ok(("<embedded default>".into(), default_config().into_owned())),
        Some(p) => std::fs::read_to_string(p).map(|t| (p.display().to_string(), t)).map_err(|e| format!("cannot read {}: {e}", p.display())),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::PrintConfig => {
            print!("{}", default_config());
            ExitCode::SUCCESS
        }
        Command::Validate { config } => match load(&config) {
            Ok((file, g)) => {
                println!("{file}: valid ({} receivers, {} processors, {} sinks)", g.file.receivers.len(), g.file.processors.len(), g.file.sinks.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Graph { config, format } => match load(&config) {
            Ok((_, g)) => {
                print!("{}", graph::draw(&g.file, matches!(format, GraphFormat::Mermaid)));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => run(config),
        Command::Top { url, interval, once } => block_on(top::run(&url, interval, once)),
        #[cfg(feature = "archive")]
        Command::Sample { config, processor, archive, from, to, format, list_kept } => {
            let (_, g) = match load(&Some(config)) {
                Ok(g) => g,
                Err(code) => return code,
            };
            let cfg = match archive_cli::sampling_processor(&g, processor.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            block_on(archive_cli::sample(&archive, cfg, from.as_deref(), to.as_deref(), format, list_kept))
        }
        #[cfg(feature = "archive")]
        Command::Query { archive, sql, format } => block_on(archive_cli::query(&archive, &sql, format)),
        #[cfg(feature = "archive")]
        Command::Replay { archive, filter, from, to, speed, shift_to_now, whole_traces, ca_file, access_token } => {
            let args = archive_cli::ReplayArgs { archive, filter, from, to, speed, shift_to_now, whole_traces, ca_file, access_token };
            replay(args)
        }
        #[cfg(not(feature = "archive"))]
        Command::Sample { .. } | Command::Query { .. } | Command::Replay { .. } => {
            eprintln!("error: {}", tracepipe_config::not_in_this_build_message("this command (the trace archive)"));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Runs a one-shot command's future on a runtime of its own; an error is printed, exit 1.
fn block_on<E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "archive")]
fn replay(args: archive_cli::ReplayArgs) -> ExitCode {
    let text = match archive_cli::replay_config(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let graph = match graph::validate("<replay>", &text) {
        Ok(g) => g,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logs(&tracepipe_config::LogsConfig { level: "warn".into(), ..graph.file.telemetry.logs.clone() });
    let Some(archive_cfg) = graph.components.iter().find_map(|(_, _, _, v)| match v {
        graph::Validated::Receiver(tracepipe_receivers::ReceiverConfig::Archive(c)) => Some(c.clone()),
        _ => None,
    }) else {
        eprintln!("error: the replay graph lost its archive receiver");
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let total = archive_cli::replay_total(&archive_cfg).await.map_err(|e| anyhow::anyhow!(e))?;
        let done = tokio_util::sync::CancellationToken::new();
        // The bar starts once the graph has started: a sink that cannot start (an unreadable
        // --ca-file, a bad librdkafka option) fails before any progress line is printed.
        let mut bar = None;
        let r = serve(graph, || bar = Some(tokio::spawn(archive_cli::progress(total, done.clone())))).await;
        done.cancel();
        if let Some(bar) = bar {
            let _ = bar.await;
        }
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(cfg: &tracepipe_config::LogsConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACEPIPE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cfg.format {
        tracepipe_config::LogFormat::Json => b.json().init(),
        tracepipe_config::LogFormat::Text => b.init(),
    }
}

/// Reads and validates a configuration; on failure prints every error and gives the exit code.
fn load(config: &Option<PathBuf>) -> Result<(String, graph::ValidGraph), ExitCode> {
    let (file, text) = read_config(config).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    match graph::validate(&file, &text) {
        Ok(g) => Ok((file, g)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {file}", errors.0.len());
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn run(config: Option<PathBuf>) -> ExitCode {
    let graph = match load(&config) {
        Ok((_, g)) => g,
        Err(code) => return code,
    };
    init_logs(&graph.file.telemetry.logs);
    if graph.components.iter().any(|(_, _, _, v)| matches!(v, graph::Validated::Processor(tracepipe_processors::ProcessorConfig::TailSampling(_) | tracepipe_processors::ProcessorConfig::GroupByTrace(_)))) {
        set_purge_delay(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(graph, || {})) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(message = "tracepipe stopped with an error.", error = %e);
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the graph and the telemetry server (then calls `on_started`), runs until a signal or
/// until every component has finished, and drains.
async fn serve(graph: graph::ValidGraph, on_started: impl FnOnce()) -> anyhow::Result<()> {
    let telemetry = graph.file.telemetry.clone();
    let handle = tracepipe_pipeline::telemetry::install_recorder().map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let final_handle = handle.clone();
    let upkeep = tracepipe_pipeline::telemetry::spawn_upkeep(handle.clone());
    let health = tracepipe_pipeline::telemetry::Health::default();
    if let Some(limit) = tracepipe_pipeline::memory::start(&graph.file.memory, health.clone()) {
        tracing::info!(message = "Memory limit in force.", limit_bytes = limit, soft_ratio = graph.file.memory.soft_ratio);
    }
    let planned = graph::plan(graph);
    let topology = tracepipe_pipeline::RunningTopology::start(planned, health.clone()).await?;
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = if telemetry.metrics.enabled {
        let addr = telemetry.metrics.endpoint.to_string();
        let (local, fut) = tracepipe_pipeline::telemetry::serve(&addr, telemetry.metrics.tls.as_ref(), Some(handle), health, server_stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (telemetry): {e}"))?;
        tracing::info!(message = "Telemetry listening.", address = %local, paths = "/metrics /healthz /readyz");
        Some(tokio::spawn(fut))
    } else {
        None
    };
    tracing::info!(message = "tracepipe started.", version = env!("CARGO_PKG_VERSION"));
    on_started();
    tokio::select! {
        _ = wait_for_signal() => tracing::info!(message = "Shutting down: draining the graph."),
        _ = topology.finished() => tracing::info!(message = "Every component has finished (all receivers ended); stopping."),
        // The failed component's error comes back from `stop`, so the exit code is non-zero.
        _ = topology.failed() => tracing::error!(message = "A component failed; draining the rest of the graph and exiting with an error."),
    }
    let result = topology.stop(SHUTDOWN_DEADLINE).await;
    upkeep.abort();
    server_stop.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    // The last word on every span, for whoever reads the log after the process is gone (no
    // scrape sees what the final drain counted).
    tracing::info!(message = "tracepipe stopped.", spans = %final_counts(&final_handle.render()));
    result.map_err(Into::into)
}

/// The span-accounting counters as Prometheus renders them, one `name{labels} value` per series
/// that is not zero, joined with "; ".
fn final_counts(rendered: &str) -> String {
    use tracepipe_pipeline::telemetry::names;
    let accounting = [
        names::RECEIVER_ACCEPTED_SPANS,
        names::RECEIVER_REFUSED_SPANS,
        names::RECEIVER_REJECTED_SPANS,
        names::SINK_SENT_SPANS,
        names::SINK_FAILED_SPANS,
        names::PROCESSOR_DROPPED_SPANS,
    ];
    rendered
        .lines()
        .filter(|l| accounting.iter().any(|n| l.strip_prefix(n).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v != 0.0))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
