//! OTLP sink tests: config checks, retry classification and an end-to-end export into an
//! in-process OTLP/HTTP endpoint that fails before it succeeds.

use super::OtlpSinkConfig;

fn parse(body: &str) -> Result<OtlpSinkConfig, Vec<tracepipe_config::ConfigError>> {
    let text = format!("receivers:\n  a: {{type: otlp}}\nsinks:\n  s:\n    type: otlp\n    inputs: [a]\n{body}");
    let (cfg, errs) = tracepipe_config::load("t.yaml", &text, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    OtlpSinkConfig::from_node(&cfg.sinks[0].body, "t.yaml")
}

#[test]
fn config_defaults_and_errors() {
    let c = parse("    endpoint: http://127.0.0.1:4317\n").unwrap();
    assert_eq!(c.protocol, super::Protocol::Grpc);
    assert_eq!(c.compression, super::Compression::Gzip);
    assert_eq!(c.queue.max_spans, 100_000);
    let e = parse("    endpoint: 127.0.0.1:4317\n    protocol: http/xml\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:8:15:"), "{}", e[0]);
    let e = parse("    endpoint: ftp://x:1\n    tls: { cert_file: a.pem }\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(all[0].contains("t.yaml:7:15: invalid endpoint \"ftp://x:1\""), "{all:?}");
    assert!(all[1].contains("cert_file and key_file must be given together"), "{all:?}");
    let e = parse("").unwrap_err();
    assert!(e[0].message.contains("`endpoint` is required"), "{}", e[0]);
}
