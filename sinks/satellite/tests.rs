//! Tests of the satellite sink: settings, and the Report mapping read back by the LightStep
//! receiver's own translation.

use super::{SatelliteConfig, SatelliteProtocol};
use crate::otlp::Protocol;

fn parse(body: &str) -> Result<SatelliteConfig, Vec<String>> {
    let yaml = format!("receivers:\n  r: {{ type: otlp }}\nsinks:\n  ls:\n    type: satellite\n    inputs: [r]\n{body}");
    let (file, errs) = tracepipe_config::load("t.yaml", &yaml, &|v| (v == "LS_TOKEN").then(|| "env-token".to_owned()));
    assert!(errs.is_empty(), "{errs}");
    SatelliteConfig::from_node(&file.sinks[0].body, "t.yaml").map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

#[test]
fn endpoints_become_the_otlp_sinks_urls_with_the_token_header() {
    let c = parse("    access_token: ${env:LS_TOKEN}\n").unwrap();
    let o = c.to_otlp(&c.access_token).unwrap();
    assert_eq!((o.endpoint.as_str(), o.protocol), ("https://ingest.lightstep.com:443", Protocol::Grpc));
    assert_eq!(o.headers.get("lightstep-access-token").map(String::as_str), Some("env-token"));
    let c = parse("    access_token: t\n    endpoint: sat.lightstep:9292\n    protocol: otlp_http\n    tls: { insecure: true }\n").unwrap();
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "http://sat.lightstep:9292/traces/otlp/v0.9");
    let c = parse("    access_token: t\n    endpoint: sat:8181\n    protocol: report_http\n").unwrap();
    assert_eq!(c.protocol, SatelliteProtocol::ReportHttp);
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "https://sat:8181/api/v2/reports");
    let c = parse("    access_token: t\n    endpoint: http://sat:8181/custom\n    protocol: report_http\n").unwrap();
    assert_eq!(c.to_otlp("t").unwrap().endpoint, "http://sat:8181/custom");
}

#[test]
fn bad_settings_are_reported_all_at_once_at_their_keys() {
    let errs = parse("    endpoint: \"://x\"\n    access_tokens_by_service: { checkout: \"\" }\n    protocol: report_grpc\n    compression: zstd\n    tls: { insecure: true, ca_file: ca.pem }\n").unwrap_err();
    let joined = errs.join("\n");
    for want in ["access_token is required", "access_tokens_by_service.checkout: the token is empty", "insecure (plaintext) cannot be combined", "zstd is not spoken", "invalid endpoint"] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(errs.iter().all(|e| e.starts_with("t.yaml:")), "{joined}");
    let errs = parse("    access_token: t\n    protocol: thrift\n").unwrap_err();
    assert!(errs[0].contains("protocol") || errs[0].contains("thrift"), "{errs:?}");
}
