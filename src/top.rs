//! `tracepipe top`: a live view of a running graph, read from its Prometheus endpoint (as
//! `vector top` reads Vector's API): per component, spans per second in and out, spans refused
//! (receivers) and failed (sinks) per second, and the bytes it holds (its input channel and what
//! it keeps inside).
//!
//! Rates are the difference of two scrapes over the time between them. The counters read are
//! the generic `tracepipe_component_received_spans_total` / `…_sent_spans_total` (processors and
//! sinks in, receivers and processors out), a receiver's `accepted` for its in, a sink's `sent`
//! for its out.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracepipe_pipeline::telemetry::names;

/// The most bytes one scrape may bring.
pub const MAX_SCRAPE_BYTES: usize = 16 << 20;

/// One scrape: (metric name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// What a scrape failed on.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("invalid metrics URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot scrape {0}: {1}")]
    Scrape(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
}

/// Parses the Prometheus text exposition (what tracepipe's `/metrics` serves): one sample per
/// line, `name{label="value",…} value`; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.find('{') {
            Some(i) if series.ends_with('}') => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            Some(_) => continue,
            None => (series, BTreeMap::new()),
        };
        out.insert((name.to_owned(), labels), value);
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        match end {
            Some(e) => rest = &rest[e..],
            None => break,
        }
    }
    labels
}

/// The sum of `name` over the series whose label `key` is `value`.
fn sum(s: &Samples, name: &str, key: &str, value: &str) -> f64 {
    // (+ 0.0: an empty f64 sum is -0.0)
    s.iter().filter(|((n, l), _)| n == name && l.get(key).map(String::as_str) == Some(value)).map(|(_, v)| v).sum::<f64>() + 0.0
}

/// One component's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub component: String,
    pub kind: String,
    pub in_per_s: f64,
    pub out_per_s: f64,
    pub refused_per_s: f64,
    pub failed_per_s: f64,
    pub held_bytes: f64,
}

/// The components a scrape names, with their kinds.
fn components(s: &Samples) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, l) in s.keys() {
        let (component, kind) = if n == names::COMPONENT_RECEIVED_SPANS || n == names::COMPONENT_SENT_SPANS {
            (l.get("component"), l.get("kind").map(String::as_str))
        } else if n == names::RECEIVER_ACCEPTED_SPANS {
            (l.get("receiver"), Some("receiver"))
        } else if n == names::SINK_SENT_SPANS {
            (l.get("sink"), Some("sink"))
        } else {
            continue;
        };
        if let (Some(c), Some(k)) = (component, kind) {
            out.insert(c.clone(), k.to_owned());
        }
    }
    out
}

/// The rows for two scrapes `secs` apart (receivers first, then processors, then sinks).
pub fn rows(before: &Samples, after: &Samples, secs: f64) -> Vec<Row> {
    let rate = |name: &str, key: &str, c: &str| ((sum(after, name, key, c) - sum(before, name, key, c)) / secs.max(1e-9)).max(0.0);
    let mut rows: Vec<Row> = components(after)
        .into_iter()
        .map(|(c, kind)| {
            let generic_in = rate(names::COMPONENT_RECEIVED_SPANS, "component", &c);
            let generic_out = rate(names::COMPONENT_SENT_SPANS, "component", &c);
            let (in_per_s, out_per_s) = match kind.as_str() {
                "receiver" => (rate(names::RECEIVER_ACCEPTED_SPANS, "receiver", &c), generic_out),
                "sink" => (generic_in, rate(names::SINK_SENT_SPANS, "sink", &c)),
                _ => (generic_in, generic_out),
            };
            Row {
                in_per_s,
                out_per_s,
                refused_per_s: rate(names::RECEIVER_REFUSED_SPANS, "receiver", &c),
                failed_per_s: rate(names::SINK_FAILED_SPANS, "sink", &c),
                held_bytes: sum(after, names::MEMORY_HELD, "component", &c),
                component: c,
                kind,
            }
        })
        .collect();
    let order = |k: &str| match k {
        "receiver" => 0,
        "processor" => 1,
        _ => 2,
    };
    rows.sort_by(|a, b| order(&a.kind).cmp(&order(&b.kind)).then_with(|| a.component.cmp(&b.component)));
    rows
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn human_bytes(n: f64) -> String {
    if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// The table as text.
pub fn render(url: &str, rows: &[Row]) -> String {
    let mut out = format!("tracepipe top — {url}\n\n");
    out.push_str(&format!("{:<24} {:<10} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "COMPONENT", "KIND", "IN/S", "OUT/S", "REFUSED/S", "FAILED/S", "HELD"));
    for r in rows {
        out.push_str(&format!(
            "{:<24} {:<10} {:>12} {:>12} {:>12} {:>12} {:>12}\n",
            r.component,
            r.kind,
            human(r.in_per_s),
            human(r.out_per_s),
            human(r.refused_per_s),
            human(r.failed_per_s),
            human_bytes(r.held_bytes)
        ));
    }
    if rows.is_empty() {
        out.push_str("(no components in the scrape: is this a tracepipe metrics endpoint?)\n");
    }
    out
}

async fn scrape(client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>, url: &hyper::Uri) -> Result<Samples, TopError> {
    let res = client.get(url.clone()).await.map_err(|e| TopError::Scrape(url.to_string(), e.to_string()))?;
    if !res.status().is_success() {
        return Err(TopError::Status(url.to_string(), res.status().as_u16()));
    }
    // Bounded: a scrape of tracepipe is tens of KB; whatever answers at the URL cannot make
    // `top` hold more than this.
    let body = http_body_util::Limited::new(res.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| TopError::Scrape(url.to_string(), format!("{e} (at most {MAX_SCRAPE_BYTES} bytes are read)")))?
        .to_bytes();
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// Scrapes `url` every `interval` and redraws the table until interrupted; with `once`, prints
/// one table (two scrapes `interval` apart) and returns.
pub async fn run(url: &str, interval: Duration, once: bool) -> Result<(), TopError> {
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| TopError::Url(url.to_owned(), e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(TopError::Url(url.to_owned(), "only http:// endpoints are read".into()));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut before = scrape(&client, &uri).await?;
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let after = match scrape(&client, &uri).await {
            Ok(s) => s,
            Err(e) if !once => {
                print!("\x1b[2J\x1b[H{e}\n(retrying every {interval:?})\n");
                let _ = std::io::stdout().flush();
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let table = render(url, &rows(&before, &after, now.duration_since(at).as_secs_f64()));
        if once {
            print!("{table}");
            return Ok(());
        }
        print!("\x1b[2J\x1b[H{table}\n(every {interval:?}; Ctrl-C to quit)\n");
        let _ = std::io::stdout().flush();
        before = after;
        at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE tracepipe_receiver_accepted_spans_total counter
tracepipe_receiver_accepted_spans_total{receiver="otlp",transport="grpc"} 100
tracepipe_receiver_accepted_spans_total{receiver="otlp",transport="http"} 50
tracepipe_component_sent_spans_total{component="otlp",kind="receiver"} 150
tracepipe_component_received_spans_total{component="sample",kind="processor"} 150
tracepipe_component_sent_spans_total{component="sample",kind="processor"} 10
tracepipe_component_received_spans_total{component="out",kind="sink"} 10
tracepipe_sink_sent_spans_total{sink="out"} 10
tracepipe_memory_held_bytes{component="sample"} 2048
"#;

    const AFTER: &str = r#"tracepipe_receiver_accepted_spans_total{receiver="otlp",transport="grpc"} 2100
tracepipe_receiver_accepted_spans_total{receiver="otlp",transport="http"} 1050
tracepipe_receiver_refused_spans_total{receiver="otlp",transport="grpc",reason="memory"} 400
tracepipe_component_sent_spans_total{component="otlp",kind="receiver"} 3150
tracepipe_component_received_spans_total{component="sample",kind="processor"} 3150
tracepipe_component_sent_spans_total{component="sample",kind="processor"} 610
tracepipe_component_received_spans_total{component="out",kind="sink"} 610
tracepipe_sink_sent_spans_total{sink="out"} 410
tracepipe_sink_failed_spans_total{sink="out",reason="rejected"} 200
tracepipe_memory_held_bytes{component="sample"} 4194304
a line that is not a sample
tracepipe_x{a="with \"quote\", and comma"} 1
"#;

    #[test]
    fn parses_the_exposition_with_escaped_labels() {
        let s = parse(AFTER);
        let quoted: Vec<_> = s.keys().filter(|(n, _)| n == "tracepipe_x").collect();
        assert_eq!(quoted.len(), 1);
        assert_eq!(quoted[0].1.get("a").map(String::as_str), Some(r#"with "quote", and comma"#));
        assert_eq!(sum(&s, names::RECEIVER_ACCEPTED_SPANS, "receiver", "otlp"), 3150.0);
    }

    #[test]
    fn rows_are_rates_between_two_scrapes_in_graph_order() {
        let rows = rows(&parse(BEFORE), &parse(AFTER), 2.0);
        let r = |c: &str| rows.iter().find(|r| r.component == c).cloned().expect(c);
        assert_eq!(rows.iter().map(|r| r.component.as_str()).collect::<Vec<_>>(), ["otlp", "sample", "out"]);
        let otlp = r("otlp");
        assert_eq!((otlp.kind.as_str(), otlp.in_per_s, otlp.out_per_s, otlp.refused_per_s), ("receiver", 1500.0, 1500.0, 200.0));
        let sample = r("sample");
        assert_eq!((sample.in_per_s, sample.out_per_s, sample.held_bytes), (1500.0, 300.0, 4194304.0));
        let out = r("out");
        assert_eq!((out.in_per_s, out.out_per_s, out.failed_per_s), (300.0, 200.0, 100.0));
        let table = render("u", &rows);
        assert!(table.contains("4.0 MiB") && table.contains("1500") && !table.contains("-0"), "{table}");
    }
}
