//! Zipkin decoding (v2 JSON, v1 JSON, proto3 with and without id repair) and translation never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracepipe_receivers::zipkin::{model, translate};

fuzz_target!(|data: &[u8]| {
    let _ = model::decode_v2_json(data).map(translate::to_otlp);
    let _ = model::decode_v1_json(data).map(translate::to_otlp);
    let _ = model::decode_v2_proto(data, true).map(translate::to_otlp);
    let _ = model::decode_v1_thrift(data).map(translate::to_otlp);
});
