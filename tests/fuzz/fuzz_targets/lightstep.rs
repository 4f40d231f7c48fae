//! LightStep reports (protobuf and JSON) decode and translate without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tracepipe_receivers::lightstep::{json, pb, to_otlp};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::ReportRequest::decode(data) {
        let _ = to_otlp(&r);
    }
    if let Ok(r) = json::decode(data) {
        let _ = to_otlp(&r);
    }
});
