//! Jaeger thrift decoding (compact, binary, bare batch) and translation never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracepipe_receivers::jaeger::{encode, model, translate};

fuzz_target!(|data: &[u8]| {
    for p in [model::Protocol::Compact, model::Protocol::Binary] {
        if let Ok(b) = model::decode_emit_batch(data, p) {
            let _ = translate::to_otlp(&b);
            let _ = encode::encode_otlp(&b);
        }
        let _ = model::peek_span_count(data, p);
    }
    if let Ok(b) = model::decode_batch_binary(data) {
        let _ = translate::to_otlp(&b);
    }
});
