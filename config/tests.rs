//! Unit tests of the loader: syntax errors, env expansion, graph checks, value types.

use crate::*;

fn env(name: &str) -> Option<String> {
    match name {
        "PORT" => Some("5317".into()),
        "HOST" => Some("127.0.0.1".into()),
        _ => None,
    }
}

fn load_ok(text: &str) -> ConfigFile {
    let (cfg, errors) = load("t.yaml", text, &env);
    assert!(errors.is_empty(), "unexpected errors: {errors}");
    cfg
}

fn load_err(text: &str) -> Vec<String> {
    let (_, errors) = load("t.yaml", text, &env);
    assert!(!errors.is_empty(), "expected errors");
    errors.sorted().0.iter().map(|e| e.to_string()).collect()
}

const GOOD: &str = "\
receivers:
  apps:
    type: otlp
    grpc: { endpoint: \"${env:HOST}:${env:PORT}\" }
processors:
  batch:
    type: batch
    inputs: [apps]
sinks:
  out:
    type: debug
    inputs: [batch, apps]
";

#[test]
fn parses_graph_and_expands_env() {
    let cfg = load_ok(GOOD);
    assert_eq!(cfg.receivers.len(), 1);
    assert_eq!(cfg.receivers[0].type_name, "otlp");
    let ep = cfg.receivers[0].body.get("grpc").unwrap().get("endpoint").unwrap();
    assert_eq!(ep.value, node_str("127.0.0.1:5317"));
    assert_eq!(cfg.sinks[0].inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["batch", "apps"]);
    assert_eq!(cfg.consumers_of("apps"), ["batch", "out"]);
    let order: Vec<_> = cfg.topological_order().iter().map(|c| c.name.clone()).collect();
    assert_eq!(order, ["apps", "batch", "out"]);
    assert_eq!(cfg.telemetry.metrics.endpoint, Endpoint::new("0.0.0.0", 8888));
}

fn node_str(s: &str) -> crate::node::Value {
    crate::node::Value::Str(s.into())
}

#[test]
fn env_default_and_missing() {
    let text = "receivers:\n  a:\n    type: \"${env:NOPE:-otlp}\"\nsinks:\n  s:\n    type: debug\n    inputs: [a]\n    path: ${env:MISSING}\n";
    let errs = load_err(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("t.yaml:8:11: environment variable MISSING is not set"), "{errs:?}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let errs = load_err("receivers:\n  a: [unclosed\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("t.yaml:"), "{errs:?}");
    assert!(!errs[0].starts_with("t.yaml:0:0"), "{errs:?}");
    assert!(errs[0].contains("invalid YAML"), "{errs:?}");
}

#[test]
fn reports_every_graph_error_at_once() {
    let text = "\
receivers:
  apps:
    type: otlp
  lonely:
    type: otlp
processors:
  p1:
    type: batch
    inputs: [p2]
  p2:
    type: batch
    inputs: [p1]
  unread:
    type: batch
    inputs: [apps]
sinks:
  s:
    type: debug
    inputs: [apps, ghost, p2]
  s2:
    inputs: [s]
bogus: 1
";
    let errs = load_err(text);
    let joined = errs.join("\n");
    assert!(joined.contains("t.yaml:4:3: receiver `lonely` is not an input"), "{joined}");
    assert!(joined.contains("t.yaml:7:3: processors form a cycle: p1 -> p2 -> p1"), "{joined}");
    assert!(joined.contains("t.yaml:7:3: processor `p1` is not reached by any receiver"), "{joined}");
    assert!(joined.contains("t.yaml:13:3: processor `unread` is not an input of any processor or sink"), "{joined}");
    assert!(joined.contains("t.yaml:19:20: sink `s` reads from `ghost`, which is not a receiver or processor"), "{joined}");
    assert!(joined.contains("t.yaml:20:3: sink `s2` has no `type`"), "{joined}");
    assert!(joined.contains("t.yaml:21:14: sink `s2` reads from `s`, which is a sink"), "{joined}");
    assert!(joined.contains("t.yaml:22:1: unknown top-level key `bogus`"), "{joined}");
}

#[test]
fn receivers_take_no_inputs_and_names_are_unique() {
    let text = "receivers:\n  a:\n    type: otlp\n    inputs: [a]\nsinks:\n  a:\n    type: debug\n    inputs: [a]\n";
    let joined = load_err(text).join("\n");
    assert!(joined.contains("t.yaml:4:13: receiver `a`: receivers take no `inputs`"), "{joined}");
    assert!(joined.contains("t.yaml:6:3: the name `a` is used by a receiver (line 2) and a sink"), "{joined}");
}

#[test]
fn telemetry_unknown_key_points_at_key() {
    let text = "receivers:\n  a:\n    type: otlp\nsinks:\n  s:\n    type: debug\n    inputs: [a]\ntelemetry:\n  metrics:\n    endpoint: 0.0.0.0:9999\n    colour: red\n  logs: { level: debug, format: xml }\n";
    let joined = load_err(text).join("\n");
    assert!(joined.contains("t.yaml:11:5: unknown field `colour`"), "{joined}");
}

#[test]
fn component_body_deserializes_with_positions() {
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct C {
        timeout: Duration,
        size: ByteSize,
        endpoint: Endpoint,
        count: u32,
    }
    let cfg = load_ok("receivers:\n  a:\n    type: x\nsinks:\n  s:\n    type: y\n    inputs: [a]\n    timeout: 200ms\n    size: 4MiB\n    endpoint: localhost:4317\n    count: \"12\"\n");
    let c: C = cfg.sinks[0].body.deserialize_into("t.yaml").unwrap();
    assert_eq!(c.timeout, Duration::from_millis(200));
    assert_eq!(c.size, ByteSize::mib(4));
    assert_eq!(c.endpoint, Endpoint::new("localhost", 4317));
    assert_eq!(c.count, 12);

    let cfg = load_ok("receivers:\n  a:\n    type: x\nsinks:\n  s:\n    type: y\n    inputs: [a]\n    timeout: 5 parsecs\n    size: 4MiB\n    endpoint: localhost:4317\n    count: 1\n");
    let e = cfg.sinks[0].body.deserialize_into::<C>("t.yaml").unwrap_err();
    assert_eq!((e.pos.line, e.pos.column), (8, 14), "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");

    let cfg = load_ok("receivers:\n  a:\n    type: x\nsinks:\n  s:\n    type: y\n    inputs: [a]\n    timeout: 1s\n    size: 4MiB\n    endpoint: localhost:99999\n    count: 1\n    extra: 2\n");
    let e = cfg.sinks[0].body.deserialize_into::<C>("t.yaml").unwrap_err();
    assert_eq!((e.pos.line, e.pos.column), (10, 15), "{e}");
    assert!(e.message.contains("port must be a number"), "{e}");
}

#[test]
fn value_types_parse() {
    assert_eq!("512KiB".parse::<ByteSize>().unwrap(), ByteSize(512 * 1024));
    assert_eq!("1GB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000_000));
    assert!("12 parsecs".parse::<ByteSize>().is_err());
    assert!("-1".parse::<ByteSize>().is_err());
    assert_eq!("1m30s".parse::<Duration>().unwrap(), Duration::from_secs(90));
    assert!("fast".parse::<Duration>().is_err());
    assert_eq!("[::1]:9411".parse::<Endpoint>().unwrap(), Endpoint::new("::1", 9411));
    assert_eq!(":4317".parse::<Endpoint>().unwrap(), Endpoint::new("0.0.0.0", 4317));
    assert!("http://x:1".parse::<Endpoint>().is_err());
    assert!("nohost".parse::<Endpoint>().is_err());
    assert!(Endpoint::new("0.0.0.0", 4317).conflicts_with(&Endpoint::new("127.0.0.1", 4317)));
    assert!(!Endpoint::new("127.0.0.1", 4317).conflicts_with(&Endpoint::new("127.0.0.2", 4317)));
    assert!(!Endpoint::new("0.0.0.0", 0).conflicts_with(&Endpoint::new("0.0.0.0", 0)));
}

#[test]
fn memory_section_defaults_and_errors_all_at_once() {
    let base = "receivers:\n  a:\n    type: otlp\nsinks:\n  s:\n    type: debug\n    inputs: [a]\n";
    let (cfg, errs) = crate::load("t.yaml", base, &|_| None);
    assert!(errs.is_empty());
    assert_eq!(cfg.memory.limit, None);
    assert_eq!(cfg.memory.soft_ratio, 0.85);
    let (cfg, errs) = crate::load("t.yaml", &format!("{base}memory: {{ limit: 512MiB, soft_ratio: 0.9 }}\n"), &|_| None);
    assert!(errs.is_empty(), "{errs}");
    assert_eq!(cfg.memory.limit, Some(ByteSize::mib(512)));
    let joined = load_err(&format!("{base}memory:\n  limit: 1MiB\n  soft_ratio: 1.5\n  check_interval: 0s\n")).join("\n");
    assert!(joined.contains("t.yaml:9:10: memory.limit must be at least 16MiB"), "{joined}");
    assert!(joined.contains("t.yaml:10:15: memory.soft_ratio must be above 0 and at most 1"), "{joined}");
    assert!(joined.contains("t.yaml:11:19: memory.check_interval must be above 0"), "{joined}");
    let joined = load_err(&format!("{base}memory: {{ limt: 1GiB }}\n")).join("\n");
    assert!(joined.contains("unknown field `limt`"), "{joined}");
}

#[test]
fn telemetry_tls_reads_versions_written_as_numbers_or_strings_and_reports_bad_ones() {
    let cfg = load_ok(&format!("{GOOD}telemetry:\n  metrics: {{ tls: {{ cert_file: c.pem, key_file: k.pem, min_version: 1.3, max_version: \"1.3\" }} }}\n"));
    let tls = cfg.telemetry.metrics.tls.expect("tls");
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::V1_3, TlsVersion::V1_3));
    assert_eq!(tls.reload_interval, Duration::from_secs(10));
    assert!(tls.client_ca_file.is_none());
    let errs = load_err(&format!("{GOOD}telemetry:\n  metrics: {{ tls: {{ cert_file: c.pem, key_file: k.pem, min_version: \"1.3\", max_version: \"1.2\" }} }}\n"));
    assert!(errs.iter().any(|e| e.starts_with("t.yaml:14:19:") && e.contains("tls.min_version 1.3 is above tls.max_version 1.2")), "{errs:?}");
    let errs = load_err(&format!("{GOOD}telemetry:\n  metrics: {{ tls: {{ cert_file: c.pem, key_file: k.pem, min_version: 1.1 }} }}\n"));
    assert!(errs.iter().any(|e| e.contains("TLS 1.1 is not supported")), "{errs:?}");
    let errs = load_err(&format!("{GOOD}telemetry:\n  metrics: {{ tls: {{ key_file: k.pem }} }}\n"));
    assert!(errs.iter().any(|e| e.contains("cert_file")), "{errs:?}");
}

#[test]
fn auth_tokens_are_redacted_in_debug_output_and_an_empty_one_is_a_problem() {
    let a = AuthConfig { bearer_tokens: vec!["s3cret".into(), "".into()] };
    let shown = format!("{a:?}");
    assert!(!shown.contains("s3cret") && shown.contains("2 redacted"), "{shown}");
    assert_eq!(a.problems().len(), 1);
    assert!(AuthConfig { bearer_tokens: vec!["x".into()] }.problems().is_empty());
}
