//! Tests of the OTLP receiver.
