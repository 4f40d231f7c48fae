//! The OTLP protobuf scanner never panics, and whatever it accepts prost decodes with the same
//! span count.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = tracepipe_pipeline::wire::scan_traces(data) {
        let decoded = opentelemetry_proto::tonic::trace::v1::TracesData::decode(data).expect("scanner accepted what prost rejects");
        assert_eq!(tracepipe_pipeline::batch::count_spans(&decoded.resource_spans), report.spans);
    }
});
