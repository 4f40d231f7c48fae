//! OTLP/JSON decoding never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracepipe_pipeline::otlp_json::decode_request(data);
});
