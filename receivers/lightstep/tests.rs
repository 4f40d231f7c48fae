//! LightStep receiver unit tests: the access token is checked on the `auth` field alone before
//! a report is decoded.

use prost::Message;
use tracepipe_pipeline::topology::{Input, Output};

use super::config::LightstepConfig;
use super::{pb, Ingest};

fn config(tokens: &[&str]) -> LightstepConfig {
    let yaml = format!("receivers:\n  ls:\n    type: lightstep\n    access_tokens: {tokens:?}\nsinks:\n  d: {{ type: debug, inputs: [ls] }}\n");
    let (file, errs) = tracepipe_config::load("t.yaml", &yaml, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    LightstepConfig::from_node(&file.receivers[0].body, "t.yaml").unwrap()
}

fn report(token: &str, spans: usize) -> Vec<u8> {
    let spans = (0..spans).map(|i| pb::Span { operation_name: format!("op-{i}-{}", "x".repeat(100)), ..Default::default() }).collect();
    pb::ReportRequest { auth: Some(pb::Auth { access_token: token.into() }), spans, ..Default::default() }.encode_to_vec()
}

#[test]
fn the_token_is_checked_before_the_report_is_decoded() {
    let (tx, _input) = Input::channel(1);
    let cfg = config(&["good"]);
    let ingest = Ingest::new(&cfg, "ls", Output::new(vec![tx]), None);
    // 50,000 spans behind a wrong token: refused from the auth field, spans skipped unread.
    assert!(ingest.check_token_early(&report("bad", 50_000), None, "http").is_err());
    assert!(ingest.check_token_early(&report("good", 10), None, "http").is_ok());
    // The header counts when the body carries no token; the body's token wins over the header.
    assert!(ingest.check_token_early(&report("", 10), Some("good"), "http").is_ok());
    assert!(ingest.check_token_early(&report("", 10), Some("bad"), "http").is_err());
    assert!(ingest.check_token_early(&report("bad", 10), Some("good"), "http").is_err());
    // A body that does not decode is left to the full decode (which reports it as malformed).
    assert!(ingest.check_token_early(b"\x12\xff\xff\xff\x0f", None, "http").is_ok());
    // No token list: anything goes.
    let (tx, _input) = Input::channel(1);
    let open = Ingest::new(&config(&[]), "ls", Output::new(vec![tx]), None);
    assert!(open.check_token_early(&report("anything", 10), None, "http").is_ok());
}
