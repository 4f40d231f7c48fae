//! # tracepipe
//!
//! The command line: `run` (the default), `validate`, `print-config`, `graph`. Everything else
//! lives in the workspace crates: `tracepipe-config` (YAML → validated graph),
//! `tracepipe-pipeline` (batch model, runtime, telemetry), and the component crates
//! `tracepipe-receivers`, `tracepipe-processors`, `tracepipe-sinks`.

mod graph;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The embedded default graph.
const DEFAULT_CONFIG: &str = include_str!("default.yaml");

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
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

fn read_config(path: &Option<PathBuf>) -> Result<(String, String), String> {
    match path {
        None => Ok(("<embedded default>".into(), DEFAULT_CONFIG.into())),
        Some(p) => std::fs::read_to_string(p).map(|t| (p.display().to_string(), t)).map_err(|e| format!("cannot read {}: {e}", p.display())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::PrintConfig => {
            print!("{DEFAULT_CONFIG}");
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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(graph)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(message = "tracepipe stopped with an error.", error = %e);
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(graph: graph::ValidGraph) -> anyhow::Result<()> {
    let telemetry = graph.file.telemetry.clone();
    let handle = tracepipe_pipeline::telemetry::install_recorder().map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let health = tracepipe_pipeline::telemetry::Health::default();
    let planned = graph::plan(graph);
    let topology = tracepipe_pipeline::RunningTopology::start(planned, health.clone()).await?;
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = if telemetry.metrics.enabled {
        let addr = telemetry.metrics.endpoint.to_string();
        let (local, fut) = tracepipe_pipeline::telemetry::serve(&addr, Some(handle), health, server_stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (telemetry): {e}"))?;
        tracing::info!(message = "Telemetry listening.", address = %local, paths = "/metrics /healthz /readyz");
        Some(tokio::spawn(fut))
    } else {
        None
    };
    tracing::info!(message = "tracepipe started.", version = env!("CARGO_PKG_VERSION"));
    wait_for_signal().await;
    tracing::info!(message = "Shutting down: draining the graph.");
    let result = topology.stop(SHUTDOWN_DEADLINE).await;
    server_stop.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    tracing::info!(message = "tracepipe stopped.");
    result.map_err(Into::into)
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
