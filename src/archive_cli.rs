//! `tracepipe query` and `tracepipe replay`: the trace archive from the command line.
//!
//! `query` runs one SQL statement over the archive's `spans` table (DataFusion) and prints the
//! result as a table, CSV or JSON lines. `replay` builds a two-component graph — an `archive`
//! receiver and a sink chosen by the destination URL's scheme — runs it like `tracepipe run`,
//! and shows progress (a bar on a terminal, plain lines otherwise).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;

use crate::{QueryFormat, SampleFormat};
use datafusion::arrow::util::pretty::pretty_format_batches;

/// Runs `sql` over the archive at `archive` and prints the result.
pub async fn query(archive: &Path, sql: &str, format: QueryFormat) -> Result<(), String> {
    let ctx = tracepipe_receivers::archive::session(archive, 8192).await?;
    let df = ctx.sql(sql).await.map_err(|e| one_line(&e.to_string()))?;
    let batches: Vec<RecordBatch> = df.collect().await.map_err(|e| one_line(&e.to_string()))?;
    let mut out = std::io::stdout().lock();
    match format {
        QueryFormat::Table => {
            let t = pretty_format_batches(&batches).map_err(|e| e.to_string())?;
            writeln!(out, "{t}").map_err(|e| e.to_string())?;
        }
        QueryFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for b in &batches {
                w.write(b).map_err(|e| one_line(&e.to_string()))?;
            }
        }
        QueryFormat::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &batches {
                w.write(b).map_err(|e| one_line(&e.to_string()))?;
            }
            w.finish().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The `tail_sampling` processor named `name` (or the only one) of a validated graph.
pub fn sampling_processor(g: &crate::graph::ValidGraph, name: Option<&str>) -> Result<tracepipe_processors::tail_sampling::TailSamplingConfig, String> {
    use tracepipe_processors::ProcessorConfig;
    let found: Vec<(&String, &tracepipe_processors::tail_sampling::TailSamplingConfig)> = g
        .components
        .iter()
        .filter_map(|(n, _, _, v)| match v {
            crate::graph::Validated::Processor(ProcessorConfig::TailSampling(c)) => Some((n, c)),
            _ => None,
        })
        .collect();
    match (name, found.as_slice()) {
        (Some(n), _) => found.iter().find(|(m, _)| m.as_str() == n).map(|(_, c)| (*c).clone()).ok_or_else(|| format!("no tail_sampling processor named `{n}`")),
        (None, [(_, c)]) => Ok((*c).clone()),
        (None, []) => Err("the configuration has no tail_sampling processor".into()),
        (None, _) => Err(format!(
            "the configuration has several tail_sampling processors ({}); name one with --processor",
            found.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn timestamp(s: &str) -> Result<String, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("invalid time {s:?}: {e} (use RFC 3339, e.g. 2026-12-03T10:00:00Z)"))?;
    Ok(s.to_owned())
}

/// Runs a processor's policies over the archive's traces and prints the report.
pub async fn sample(
    archive: &Path,
    cfg: tracepipe_processors::tail_sampling::TailSamplingConfig,
    from: Option<&str>,
    to: Option<&str>,
    format: SampleFormat,
    list_kept: bool,
) -> Result<(), String> {
    use datafusion::arrow::array::{Array, FixedSizeBinaryArray};
    use futures::StreamExt;
    use prost::Message;
    let mut conds = Vec::new();
    if let Some(f) = from {
        conds.push(format!("start_time >= TIMESTAMP '{}'", timestamp(f)?));
    }
    if let Some(t) = to {
        conds.push(format!("start_time < TIMESTAMP '{}'", timestamp(t)?));
    }
    let filter = if conds.is_empty() { String::new() } else { format!(" WHERE trace_id IN (SELECT trace_id FROM spans WHERE {})", conds.join(" AND ")) };
    let ctx = tracepipe_receivers::archive::session(archive, 8192).await?;
    let df = ctx.sql(&format!("SELECT * FROM spans{filter} ORDER BY trace_id")).await.map_err(|e| one_line(&e.to_string()))?;
    let mut stream = df.execute_stream().await.map_err(|e| one_line(&e.to_string()))?;
    let mut sim = tracepipe_processors::tail_sampling::simulate::Simulation::new(cfg, list_kept);
    while let Some(rb) = stream.next().await {
        let rb = rb.map_err(|e| one_line(&e.to_string()))?;
        if rb.num_rows() == 0 {
            continue;
        }
        let rs = tracepipe_pipeline::archive::schema::from_record_batch(&rb).map_err(|e| e.to_string())?;
        let bytes = opentelemetry_proto::tonic::trace::v1::TracesData { resource_spans: rs }.encode_to_vec();
        sim.feed(&bytes).map_err(|e| e.to_string())?;
        // Rows come ordered by trace id: every trace but the last one is complete.
        let ids = rb.column_by_name("trace_id").and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>()).ok_or("archive without trace_id")?;
        let last: Option<[u8; 16]> = ids.value(ids.len() - 1).try_into().ok();
        sim.decide_all_but(last.as_ref());
    }
    let r = sim.finish();
    let mut out = std::io::stdout().lock();
    match format {
        SampleFormat::Json => writeln!(out, "{}", serde_json::to_string(&r).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?,
        SampleFormat::Table => {
            let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
            let w = r.policies.iter().map(|p| p.name.len()).max().unwrap_or(6).max(6);
            let mut t = format!("{:w$}  {:>12}  {:>12}\n", "policy", "traces", "spans");
            for p in &r.policies {
                t += &format!("{:w$}  {:>12}  {:>12}\n", p.name, p.traces, p.spans);
            }
            t += &format!(
                "\n{} traces, {} spans read; kept {} traces ({:.2}%), {} spans ({:.2}%)\n",
                r.traces, r.spans, r.kept_traces, pct(r.kept_traces, r.traces), r.kept_spans, pct(r.kept_spans, r.spans)
            );
            t += &format!("adjusted span total {:.0} against {} read (ratio {:.3})", r.adjusted_spans, r.spans, if r.spans == 0 { 0.0 } else { r.adjusted_spans / r.spans as f64 });
            if r.unknown_adjusted_spans > 0 {
                t += &format!("; {} kept spans have no known adjusted count (kept by a rate-based policy)", r.unknown_adjusted_spans);
            }
            writeln!(out, "{t}").map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What `tracepipe replay` was asked.
pub struct ReplayArgs {
    pub archive: PathBuf,
    pub filter: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub speed: String,
    pub shift_to_now: bool,
    pub whole_traces: bool,
    /// CA certificates (PEM) to trust for a TLS destination instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// The LightStep access token for `satellite://` (else `LIGHTSTEP_ACCESS_TOKEN`).
    pub access_token: Option<String>,
}

/// The schemes `--to` takes, for error messages.
const SCHEMES: &str = "grpc://, grpcs://, http://, https://, satellite://, satellite+insecure:// or kafka://";

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The sink for a destination URL, as YAML. `satellite://host:port` is the satellite sink (a
/// LightStep satellite or the public endpoint; OTLP/gRPC over TLS, `?protocol=report_grpc` and
/// the other protocols of that sink select them); `satellite+insecure://` the same in
/// plaintext, for a satellite inside the cluster.
fn sink_for(url: &str, a: &ReplayArgs) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{url}` is not a URL (want {SCHEMES})"))?;
    let (protocol, endpoint) = match scheme {
        "grpc" | "otlp" => ("grpc", format!("http://{rest}")),
        "grpcs" => ("grpc", format!("https://{rest}")),
        "http" | "https" => ("http/protobuf", url.to_owned()),
        "satellite" | "satellite+insecure" => return satellite_sink(scheme, rest, a),
        "kafka" => return kafka_sink(rest, a),
        other => return Err(format!("unknown destination scheme `{other}://` (want {SCHEMES})")),
    };
    let tls = match &a.ca_file {
        Some(ca) if endpoint.starts_with("https://") => format!(", tls: {{ ca_file: {} }}", json(&ca.display().to_string())),
        Some(_) => return Err(format!("--ca-file needs a TLS destination (grpcs://, https:// or satellite://), not `{scheme}://`")),
        None => String::new(),
    };
    Ok(format!("{{ type: otlp, inputs: [archive], endpoint: {}, protocol: {protocol}{tls} }}", json(&endpoint)))
}

/// `satellite[+insecure]://host:port[?protocol=otlp_grpc|otlp_http|report_grpc|report_http]`.
fn satellite_sink(scheme: &str, rest: &str, a: &ReplayArgs) -> Result<String, String> {
    let token = a.access_token.clone().or_else(|| std::env::var("LIGHTSTEP_ACCESS_TOKEN").ok()).filter(|t| !t.is_empty());
    let token = token.ok_or("`satellite://` needs an access token: --access-token TOKEN or LIGHTSTEP_ACCESS_TOKEN")?;
    let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut extra = String::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("protocol", v @ ("otlp_grpc" | "otlp_http" | "report_grpc" | "report_http"))) => extra += &format!(", protocol: {v}"),
            _ => return Err(format!("unknown `satellite://` option `{kv}` (known: protocol=otlp_grpc|otlp_http|report_grpc|report_http)")),
        }
    }
    let tls = match (scheme, &a.ca_file) {
        ("satellite+insecure", Some(_)) => return Err("--ca-file needs a TLS destination; `satellite+insecure://` is plaintext".into()),
        ("satellite+insecure", None) => ", tls: { insecure: true }".to_owned(),
        (_, Some(ca)) => format!(", tls: {{ ca_file: {} }}", json(&ca.display().to_string())),
        (_, None) => String::new(),
    };
    Ok(format!("{{ type: satellite, inputs: [archive], endpoint: {}, access_token: {}{extra}{tls} }}", json(host), json(&token)))
}

/// `kafka://broker:9092[,broker:9092...][/topic][?encoding=otlp_json]`: the Kafka sink, one
/// record per trace keyed by trace id (topic `otlp_spans` when none is given).
fn kafka_sink(rest: &str, a: &ReplayArgs) -> Result<String, String> {
    if a.ca_file.is_some() {
        return Err("--ca-file needs a TLS destination (grpcs://, https:// or satellite://), not `kafka://`".into());
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (brokers, topic) = rest.split_once('/').unwrap_or((rest, ""));
    let topic = if topic.is_empty() { "otlp_spans" } else { topic };
    if brokers.is_empty() {
        return Err("`kafka://` needs at least one broker: kafka://host:9092/topic".into());
    }
    let brokers: Vec<String> = brokers.split(',').map(json).collect();
    let mut extra = String::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("encoding", v)) => extra += &format!(", encoding: {}", json(v)),
            _ => return Err(format!("unknown `kafka://` option `{kv}` (known: encoding=otlp_proto|otlp_json)")),
        }
    }
    Ok(format!("{{ type: kafka, inputs: [archive], brokers: [{}], topic: {}{extra} }}", brokers.join(", "), json(topic)))
}

/// Builds the replay graph's YAML; `--to` takes both the window end (an RFC 3339 time) and the
/// destination (a URL), told apart by their form.
pub fn replay_config(a: &ReplayArgs) -> Result<String, String> {
    let mut until = None;
    let mut dest = None;
    for t in &a.to {
        if t.contains("://") {
            if dest.replace(t.clone()).is_some() {
                return Err("give one destination URL with --to".into());
            }
        } else if until.replace(t.clone()).is_some() {
            return Err("give one end time with --to".into());
        }
    }
    let dest = dest.ok_or("missing destination: --to URL (grpc://host:4317, http://host:4318/v1/traces, satellite://host:port, ...)")?;
    let mut r = format!("type: archive, path: {}, speed: {}, shift_to_now: {}, whole_traces: {}", json(&a.archive.display().to_string()), json(&a.speed), a.shift_to_now, a.whole_traces);
    if let Some(w) = &a.filter {
        r += &format!(", where: {}", json(w));
    }
    if let Some(f) = &a.from {
        r += &format!(", from: {}", json(f));
    }
    if let Some(u) = &until {
        r += &format!(", to: {}", json(u));
    }
    Ok(format!("receivers:\n  archive: {{ {r} }}\nsinks:\n  out: {}\ntelemetry:\n  metrics: {{ enabled: false }}\n", sink_for(&dest, a)?))
}

/// Counts the spans a replay will send (for the progress bar's length and ETA).
pub async fn replay_total(cfg: &tracepipe_receivers::archive::ArchiveConfig) -> Result<u64, String> {
    let ctx = tracepipe_receivers::archive::session(&cfg.path, 8192).await?;
    let sql = format!("SELECT count(*) AS n FROM ({})", tracepipe_receivers::archive::query_sql(cfg));
    let b = ctx.sql(&sql).await.map_err(|e| one_line(&e.to_string()))?.collect().await.map_err(|e| one_line(&e.to_string()))?;
    let n = b
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().map(|a| a.value(0)))
        .unwrap_or(0);
    Ok(n.max(0) as u64)
}

/// Shows replay progress until `done` fires: a bar (spans, spans/s, ETA) on a terminal, a
/// plain line every 5 s otherwise, and a last line with the totals.
pub async fn progress(total: u64, done: tokio_util::sync::CancellationToken) {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} spans, {per_sec}, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut tick = tokio::time::interval(if tty { Duration::from_millis(100) } else { Duration::from_secs(5) });
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        let n = tracepipe_receivers::archive::progress();
        match &bar {
            Some(b) => b.set_position(n),
            None => eprintln!("replay: {n}/{total} spans, {:.0} spans/s", n as f64 / start.elapsed().as_secs_f64().max(1e-3)),
        }
    }
    let n = tracepipe_receivers::archive::progress();
    if let Some(b) = bar {
        b.set_position(n);
        b.finish();
    }
    eprintln!("replay: {n}/{total} spans sent in {:.1} s ({:.0} spans/s)", start.elapsed().as_secs_f64(), n as f64 / start.elapsed().as_secs_f64().max(1e-3));
}
