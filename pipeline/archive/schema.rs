//! The archive schema, version 1: one Arrow row per span, every OTLP field kept.
//!
//! | column | type | notes |
//! |---|---|---|
//! | `trace_id` | fixed_size_binary(16) | |
//! | `span_id` | fixed_size_binary(8) | |
//! | `parent_span_id` | fixed_size_binary(8), null | null for a root |
//! | `trace_state` | utf8 | |
//! | `flags` | uint32 | |
//! | `name` | utf8 | |
//! | `kind` | utf8 | `UNSPECIFIED`, `INTERNAL`, `SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER` (other values as their number) |
//! | `start_time`, `end_time` | timestamp(ns, UTC) | |
//! | `duration_ns` | int64 | `end_time - start_time` |
//! | `status_code` | utf8 | `UNSET`, `OK`, `ERROR` |
//! | `status_message` | utf8 | |
//! | `service_name` | dictionary(int32, utf8), null | the resource's `service.name` |
//! | `attributes` | map<utf8, value> | span attributes, in order |
//! | `dropped_attributes_count` | uint32 | |
//! | `events` | list<struct<time: timestamp(ns, UTC), name: utf8, attributes: map, dropped_attributes_count: uint32>> | |
//! | `dropped_events_count` | uint32 | |
//! | `links` | list<struct<trace_id, span_id, trace_state, attributes: map, dropped_attributes_count, flags>> | |
//! | `dropped_links_count` | uint32 | |
//! | `resource_attributes` | map<utf8, value> | |
//! | `resource_dropped_attributes_count` | uint32 | |
//! | `resource_schema_url` | utf8 | |
//! | `resource_entity_refs` | utf8, null | the resource's entity refs as OTLP/JSON, null when none |
//! | `scope_name`, `scope_version` | utf8 | |
//! | `scope_attributes` | map<utf8, value> | |
//! | `scope_dropped_attributes_count` | uint32 | |
//! | `scope_schema_url` | utf8 | |
//!
//! `value` is `struct<type: utf8, str: utf8, int: int64, double: float64, bool: bool, bytes: binary,
//! json: utf8>`: `type` is `string`, `int`, `double`, `bool`, `bytes`, `array`, `map`, `empty` or
//! `strindex` (a profiles string-table index, in `int`),
//! and the column of that type holds the value; arrays and maps (any depth) are in `json` as the
//! OTLP/JSON `AnyValue`. In SQL: `attributes['http.method']['str']`.
//!
//! Ids of the wrong length (only possible from a malformed sender) are zero-padded or cut.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, DictionaryArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder,
    Float64Array, Float64Builder, Int32Builder, Int64Array, Int64Builder, ListArray, MapArray, StringArray, StringBuilder,
    StructArray, TimestampNanosecondArray, TimestampNanosecondBuilder, UInt32Array, UInt32Builder,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, Span, Status};

/// Stored in each file's key-value metadata as `tracepipe.schema_version`.
pub const SCHEMA_VERSION: &str = "1";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn value_fields() -> Fields {
    Fields::from(vec![
        Field::new("type", DataType::Utf8, false),
        Field::new("str", DataType::Utf8, true),
        Field::new("int", DataType::Int64, true),
        Field::new("double", DataType::Float64, true),
        Field::new("bool", DataType::Boolean, true),
        Field::new("bytes", DataType::Binary, true),
        Field::new("json", DataType::Utf8, true),
    ])
}

fn entry_fields() -> Fields {
    Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Struct(value_fields()), false)])
}

fn entries_field() -> Arc<Field> {
    Arc::new(Field::new("entries", DataType::Struct(entry_fields()), false))
}

fn attrs_type() -> DataType {
    DataType::Map(entries_field(), false)
}

fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", ts_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attributes", attrs_type(), false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
    ])
}

fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("trace_state", DataType::Utf8, false),
        Field::new("attributes", attrs_type(), false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
        Field::new("flags", DataType::UInt32, false),
    ])
}

fn list_item(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(fields), false))
}

/// The schema every archive file has.
pub fn schema() -> SchemaRef {
    let u32f = |n: &str| Field::new(n, DataType::UInt32, false);
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        utf8("trace_state"),
        u32f("flags"),
        utf8("name"),
        utf8("kind"),
        Field::new("start_time", ts_type(), false),
        Field::new("end_time", ts_type(), false),
        Field::new("duration_ns", DataType::Int64, false),
        utf8("status_code"),
        utf8("status_message"),
        Field::new("service_name", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
        Field::new("attributes", attrs_type(), false),
        u32f("dropped_attributes_count"),
        Field::new("events", DataType::List(list_item(event_fields())), false),
        u32f("dropped_events_count"),
        Field::new("links", DataType::List(list_item(link_fields())), false),
        u32f("dropped_links_count"),
        Field::new("resource_attributes", attrs_type(), false),
        u32f("resource_dropped_attributes_count"),
        utf8("resource_schema_url"),
        Field::new("resource_entity_refs", DataType::Utf8, true),
        utf8("scope_name"),
        utf8("scope_version"),
        Field::new("scope_attributes", attrs_type(), false),
        u32f("scope_dropped_attributes_count"),
        utf8("scope_schema_url"),
    ]))
}

/// The `kind` column's spelling of an OTLP span kind.
pub fn kind_name(k: i32) -> std::borrow::Cow<'static, str> {
    match k {
        0 => "UNSPECIFIED".into(),
        1 => "INTERNAL".into(),
        2 => "SERVER".into(),
        3 => "CLIENT".into(),
        4 => "PRODUCER".into(),
        5 => "CONSUMER".into(),
        n => n.to_string().into(),
    }
}

fn kind_value(s: &str) -> i32 {
    match s {
        "UNSPECIFIED" => 0,
        "INTERNAL" => 1,
        "SERVER" => 2,
        "CLIENT" => 3,
        "PRODUCER" => 4,
        "CONSUMER" => 5,
        n => n.parse().unwrap_or(0),
    }
}

fn status_name(c: i32) -> &'static str {
    match c {
        1 => "OK",
        2 => "ERROR",
        _ => "UNSET",
    }
}

fn status_value(s: &str) -> i32 {
    match s {
        "OK" => 1,
        "ERROR" => 2,
        _ => 0,
    }
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[N - n..].copy_from_slice(&b[b.len() - n..]);
    out
}

/// Builds the `map<utf8, value>` columns.
struct AttrCols {
    offsets: Vec<i32>,
    key: StringBuilder,
    ty: StringBuilder,
    s: StringBuilder,
    i: Int64Builder,
    d: Float64Builder,
    b: BooleanBuilder,
    bytes: BinaryBuilder,
    json: StringBuilder,
    len: i32,
}

/// How much the columns of one batch will hold, counted first so no builder has to grow.
#[derive(Default)]
struct Sizes {
    rows: usize,
    key_bytes: usize,
    str_bytes: usize,
}

impl Sizes {
    fn add(&mut self, kvs: &[KeyValue]) {
        self.rows += kvs.len();
        for kv in kvs {
            self.key_bytes += kv.key.len();
            if let Some(Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                self.str_bytes += v.len();
            }
        }
    }
}

impl AttrCols {
    fn new(maps: usize, n: &Sizes) -> Self {
        let mut offsets = Vec::with_capacity(maps + 1);
        offsets.push(0);
        AttrCols {
            offsets,
            key: StringBuilder::with_capacity(n.rows, n.key_bytes),
            ty: StringBuilder::with_capacity(n.rows, n.rows * 6),
            s: StringBuilder::with_capacity(n.rows, n.str_bytes),
            i: Int64Builder::with_capacity(n.rows),
            d: Float64Builder::with_capacity(n.rows),
            b: BooleanBuilder::with_capacity(n.rows),
            bytes: BinaryBuilder::with_capacity(n.rows, 0),
            json: StringBuilder::with_capacity(n.rows, 0),
            len: 0,
        }
    }

    fn push(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            self.key.append_value(&kv.key);
            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
            let (ty, s, i, d, b, bytes) = match v {
                Some(Value::StringValue(x)) => ("string", Some(x.as_str()), None, None, None, None),
                Some(Value::IntValue(x)) => ("int", None, Some(*x), None, None, None),
                Some(Value::DoubleValue(x)) => ("double", None, None, Some(*x), None, None),
                Some(Value::BoolValue(x)) => ("bool", None, None, None, Some(*x), None),
                Some(Value::BytesValue(x)) => ("bytes", None, None, None, None, Some(x.as_slice())),
                Some(Value::ArrayValue(_)) => ("array", None, None, None, None, None),
                Some(Value::KvlistValue(_)) => ("map", None, None, None, None, None),
                Some(Value::StringValueStrindex(x)) => ("strindex", None, Some(i64::from(*x)), None, None, None),
                None => ("empty", None, None, None, None, None),
            };
            self.ty.append_value(ty);
            self.s.append_option(s);
            self.i.append_option(i);
            self.d.append_option(d);
            self.b.append_option(b);
            self.bytes.append_option(bytes);
            match v {
                Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => {
                    self.json.append_value(serde_json::to_string(kv.value.as_ref().expect("matched")).unwrap_or_default())
                }
                _ => self.json.append_null(),
            }
            self.len += 1;
        }
        self.offsets.push(self.len);
    }

    fn finish(mut self) -> ArrayRef {
        let value = StructArray::new(
            value_fields(),
            vec![
                Arc::new(self.ty.finish()),
                Arc::new(self.s.finish()),
                Arc::new(self.i.finish()),
                Arc::new(self.d.finish()),
                Arc::new(self.b.finish()),
                Arc::new(self.bytes.finish()),
                Arc::new(self.json.finish()),
            ],
            None,
        );
        let entries = StructArray::new(entry_fields(), vec![Arc::new(self.key.finish()), Arc::new(value)], None);
        Arc::new(MapArray::new(entries_field(), OffsetBuffer::new(self.offsets.into()), entries, None, false))
    }
}

fn ts_builder(n: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC")
}

fn nanos(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

/// The resource and scope columns, one row per `ScopeSpans` (they are the same for all its
/// spans); `take` repeats them per span, which costs a copy rather than a conversion per span.
struct ContextCols {
    service: StringBuilder,
    res_attrs: AttrCols,
    res_dropped: UInt32Builder,
    res_schema: StringBuilder,
    res_entities: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attrs: AttrCols,
    scope_dropped: UInt32Builder,
    scope_schema: StringBuilder,
}

/// Converts spans to one record batch in the archive schema.
pub fn to_record_batch(rs: &[ResourceSpans]) -> Result<RecordBatch, ArrowError> {
    let empty_resource = Resource::default();
    let empty_scope = InstrumentationScope::default();
    let (mut n, mut names, mut attr_n, mut ev_n, mut lk_n, mut res_n, mut scope_n) = (0usize, 0usize, Sizes::default(), Sizes::default(), Sizes::default(), Sizes::default(), Sizes::default());
    let (mut n_ev, mut n_lk, mut n_ctx) = (0usize, 0usize, 0usize);
    for r in rs {
        for ss in r.scope_spans.iter().filter(|ss| !ss.spans.is_empty()) {
            n_ctx += 1;
            res_n.add(&r.resource.as_ref().unwrap_or(&empty_resource).attributes);
            scope_n.add(&ss.scope.as_ref().unwrap_or(&empty_scope).attributes);
            for s in &ss.spans {
                n += 1;
                names += s.name.len();
                attr_n.add(&s.attributes);
                n_ev += s.events.len();
                n_lk += s.links.len();
                s.events.iter().for_each(|e| ev_n.add(&e.attributes));
                s.links.iter().for_each(|l| lk_n.add(&l.attributes));
            }
        }
    }

    let mut trace_id = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut trace_state = StringBuilder::with_capacity(n, 0);
    let mut flags = UInt32Builder::with_capacity(n);
    let mut name = StringBuilder::with_capacity(n, names);
    let mut kind = StringBuilder::with_capacity(n, n * 6);
    let mut start = ts_builder(n);
    let mut end = ts_builder(n);
    let mut duration = Int64Builder::with_capacity(n);
    let mut status_code = StringBuilder::with_capacity(n, n * 5);
    let mut status_message = StringBuilder::with_capacity(n, 0);
    let mut service_key = Int32Builder::with_capacity(n);
    let mut attrs = AttrCols::new(n, &attr_n);
    let mut dropped_attrs = UInt32Builder::with_capacity(n);
    let (mut ev_offsets, mut ev_time, mut ev_name, mut ev_attrs, mut ev_dropped) =
        (Vec::with_capacity(n + 1), ts_builder(n_ev), StringBuilder::with_capacity(n_ev, 0), AttrCols::new(n_ev, &ev_n), UInt32Builder::with_capacity(n_ev));
    ev_offsets.push(0i32);
    let mut dropped_events = UInt32Builder::with_capacity(n);
    let mut lk_offsets = Vec::with_capacity(n + 1);
    lk_offsets.push(0i32);
    let (mut lk_trace, mut lk_span, mut lk_state, mut lk_attrs, mut lk_dropped, mut lk_flags) = (
        FixedSizeBinaryBuilder::with_capacity(n_lk, 16),
        FixedSizeBinaryBuilder::with_capacity(n_lk, 8),
        StringBuilder::with_capacity(n_lk, 0),
        AttrCols::new(n_lk, &lk_n),
        UInt32Builder::with_capacity(n_lk),
        UInt32Builder::with_capacity(n_lk),
    );
    let mut dropped_links = UInt32Builder::with_capacity(n);
    let mut ctx = ContextCols {
        service: StringBuilder::with_capacity(n_ctx, 0),
        res_attrs: AttrCols::new(n_ctx, &res_n),
        res_dropped: UInt32Builder::with_capacity(n_ctx),
        res_schema: StringBuilder::with_capacity(n_ctx, 0),
        res_entities: StringBuilder::with_capacity(n_ctx, 0),
        scope_name: StringBuilder::with_capacity(n_ctx, 0),
        scope_version: StringBuilder::with_capacity(n_ctx, 0),
        scope_attrs: AttrCols::new(n_ctx, &scope_n),
        scope_dropped: UInt32Builder::with_capacity(n_ctx),
        scope_schema: StringBuilder::with_capacity(n_ctx, 0),
    };
    let mut ctx_row = UInt32Builder::with_capacity(n);
    let (mut n_events, mut n_links, mut row_of_ctx) = (0i32, 0i32, 0u32);

    for r in rs {
        let res = r.resource.as_ref().unwrap_or(&empty_resource);
        let svc = res.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        let entities = (!res.entity_refs.is_empty()).then(|| serde_json::to_string(&res.entity_refs).unwrap_or_default());
        for ss in r.scope_spans.iter().filter(|ss| !ss.spans.is_empty()) {
            let scope = ss.scope.as_ref().unwrap_or(&empty_scope);
            ctx.service.append_option(svc);
            ctx.res_attrs.push(&res.attributes);
            ctx.res_dropped.append_value(res.dropped_attributes_count);
            ctx.res_schema.append_value(&r.schema_url);
            ctx.res_entities.append_option(entities.as_deref());
            ctx.scope_name.append_value(&scope.name);
            ctx.scope_version.append_value(&scope.version);
            ctx.scope_attrs.push(&scope.attributes);
            ctx.scope_dropped.append_value(scope.dropped_attributes_count);
            ctx.scope_schema.append_value(&ss.schema_url);
            for s in &ss.spans {
                ctx_row.append_value(row_of_ctx);
                service_key.append_option(svc.map(|_| row_of_ctx as i32));
                trace_id.append_value(fixed::<16>(&s.trace_id))?;
                span_id.append_value(fixed::<8>(&s.span_id))?;
                if s.parent_span_id.is_empty() {
                    parent.append_null();
                } else {
                    parent.append_value(fixed::<8>(&s.parent_span_id))?;
                }
                trace_state.append_value(&s.trace_state);
                flags.append_value(s.flags);
                name.append_value(&s.name);
                kind.append_value(kind_name(s.kind).as_ref());
                start.append_value(nanos(s.start_time_unix_nano));
                end.append_value(nanos(s.end_time_unix_nano));
                duration.append_value(nanos(s.end_time_unix_nano).saturating_sub(nanos(s.start_time_unix_nano)));
                let (code, message) = s.status.as_ref().map_or((0, ""), |st| (st.code, st.message.as_str()));
                status_code.append_value(status_name(code));
                status_message.append_value(message);
                attrs.push(&s.attributes);
                dropped_attrs.append_value(s.dropped_attributes_count);
                for e in &s.events {
                    ev_time.append_value(nanos(e.time_unix_nano));
                    ev_name.append_value(&e.name);
                    ev_attrs.push(&e.attributes);
                    ev_dropped.append_value(e.dropped_attributes_count);
                    n_events += 1;
                }
                ev_offsets.push(n_events);
                dropped_events.append_value(s.dropped_events_count);
                for l in &s.links {
                    lk_trace.append_value(fixed::<16>(&l.trace_id))?;
                    lk_span.append_value(fixed::<8>(&l.span_id))?;
                    lk_state.append_value(&l.trace_state);
                    lk_attrs.push(&l.attributes);
                    lk_dropped.append_value(l.dropped_attributes_count);
                    lk_flags.append_value(l.flags);
                    n_links += 1;
                }
                lk_offsets.push(n_links);
                dropped_links.append_value(s.dropped_links_count);
            }
            row_of_ctx += 1;
        }
    }
    let events = StructArray::new(
        event_fields(),
        vec![Arc::new(ev_time.finish()), Arc::new(ev_name.finish()), ev_attrs.finish(), Arc::new(ev_dropped.finish())],
        None,
    );
    let links = StructArray::new(
        link_fields(),
        vec![Arc::new(lk_trace.finish()), Arc::new(lk_span.finish()), Arc::new(lk_state.finish()), lk_attrs.finish(), Arc::new(lk_dropped.finish()), Arc::new(lk_flags.finish())],
        None,
    );
    let ctx_row = ctx_row.finish();
    let per_span = |a: ArrayRef| take(a.as_ref(), &ctx_row, None);
    // The dictionary's values are the per-ScopeSpans names (repeats allowed); keys point at them.
    let service = DictionaryArray::<Int32Type>::try_new(service_key.finish(), Arc::new(ctx.service.finish()))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent.finish()),
        Arc::new(trace_state.finish()),
        Arc::new(flags.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(duration.finish()),
        Arc::new(status_code.finish()),
        Arc::new(status_message.finish()),
        Arc::new(service),
        attrs.finish(),
        Arc::new(dropped_attrs.finish()),
        Arc::new(ListArray::new(list_item(event_fields()), OffsetBuffer::new(ev_offsets.into()), Arc::new(events), None)),
        Arc::new(dropped_events.finish()),
        Arc::new(ListArray::new(list_item(link_fields()), OffsetBuffer::new(lk_offsets.into()), Arc::new(links), None)),
        Arc::new(dropped_links.finish()),
        per_span(ctx.res_attrs.finish())?,
        per_span(Arc::new(ctx.res_dropped.finish()))?,
        per_span(Arc::new(ctx.res_schema.finish()))?,
        per_span(Arc::new(ctx.res_entities.finish()))?,
        per_span(Arc::new(ctx.scope_name.finish()))?,
        per_span(Arc::new(ctx.scope_version.finish()))?,
        per_span(ctx.scope_attrs.finish())?,
        per_span(Arc::new(ctx.scope_dropped.finish()))?,
        per_span(Arc::new(ctx.scope_schema.finish()))?,
    ];
    RecordBatch::try_new(schema(), columns)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    b.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("archive column `{name}` missing")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ArrowError::SchemaError(format!("archive column `{name}` has an unexpected type")))
}

fn field<'a, T: 'static>(s: &'a StructArray, name: &str) -> Result<&'a T, ArrowError> {
    s.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("archive field `{name}` missing")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ArrowError::SchemaError(format!("archive field `{name}` has an unexpected type")))
}

/// Reads `map<utf8, value>` rows back.
struct AttrReader<'a> {
    map: &'a MapArray,
    key: &'a StringArray,
    ty: &'a StringArray,
    s: &'a StringArray,
    i: &'a Int64Array,
    d: &'a Float64Array,
    b: &'a BooleanArray,
    bytes: &'a BinaryArray,
    json: &'a StringArray,
}

impl<'a> AttrReader<'a> {
    fn new(a: &'a dyn Array) -> Result<Self, ArrowError> {
        let map = a.as_any().downcast_ref::<MapArray>().ok_or_else(|| ArrowError::SchemaError("attributes are not a map".into()))?;
        let entries = map.entries();
        let key = field::<StringArray>(entries, "key")?;
        let value = field::<StructArray>(entries, "value")?;
        Ok(AttrReader {
            map,
            key,
            ty: field(value, "type")?,
            s: field(value, "str")?,
            i: field(value, "int")?,
            d: field(value, "double")?,
            b: field(value, "bool")?,
            bytes: field(value, "bytes")?,
            json: field(value, "json")?,
        })
    }

    fn row(&self, row: usize) -> Vec<KeyValue> {
        let o = self.map.value_offsets();
        let (from, to) = (o[row] as usize, o[row + 1] as usize);
        (from..to)
            .map(|k| {
                let value = match self.ty.value(k) {
                    "string" => Some(Value::StringValue(self.s.value(k).to_owned())),
                    "int" => Some(Value::IntValue(self.i.value(k))),
                    "strindex" => Some(Value::StringValueStrindex(self.i.value(k) as i32)),
                    "double" => Some(Value::DoubleValue(self.d.value(k))),
                    "bool" => Some(Value::BoolValue(self.b.value(k))),
                    "bytes" => Some(Value::BytesValue(self.bytes.value(k).to_vec())),
                    "array" | "map" => serde_json::from_str::<AnyValue>(self.json.value(k)).ok().and_then(|v| v.value),
                    _ => None,
                };
                KeyValue { key: self.key.value(k).to_owned(), value: value.map(|v| AnyValue { value: Some(v) }), key_strindex: 0 }
            })
            .collect()
    }
}

fn list_struct<'a>(b: &'a RecordBatch, name: &str) -> Result<(&'a ListArray, &'a StructArray), ArrowError> {
    let l = col::<ListArray>(b, name)?;
    let s = l.values().as_any().downcast_ref::<StructArray>().ok_or_else(|| ArrowError::SchemaError(format!("`{name}` items are not structs")))?;
    Ok((l, s))
}

/// Converts an archive record batch back to spans; consecutive rows with the same resource and
/// scope share one `ResourceSpans` / `ScopeSpans`.
pub fn from_record_batch(b: &RecordBatch) -> Result<Vec<ResourceSpans>, ArrowError> {
    let trace_id = col::<FixedSizeBinaryArray>(b, "trace_id")?;
    let span_id = col::<FixedSizeBinaryArray>(b, "span_id")?;
    let parent = col::<FixedSizeBinaryArray>(b, "parent_span_id")?;
    let trace_state = col::<StringArray>(b, "trace_state")?;
    let flags = col::<UInt32Array>(b, "flags")?;
    let name = col::<StringArray>(b, "name")?;
    let kind = col::<StringArray>(b, "kind")?;
    let start = col::<TimestampNanosecondArray>(b, "start_time")?;
    let end = col::<TimestampNanosecondArray>(b, "end_time")?;
    let status_code = col::<StringArray>(b, "status_code")?;
    let status_message = col::<StringArray>(b, "status_message")?;
    let attrs = AttrReader::new(col::<MapArray>(b, "attributes")?)?;
    let dropped_attrs = col::<UInt32Array>(b, "dropped_attributes_count")?;
    let (events, ev) = list_struct(b, "events")?;
    let (ev_time, ev_name, ev_attrs, ev_dropped) = (
        field::<TimestampNanosecondArray>(ev, "time")?,
        field::<StringArray>(ev, "name")?,
        AttrReader::new(ev.column_by_name("attributes").ok_or_else(|| ArrowError::SchemaError("event attributes missing".into()))?.as_ref())?,
        field::<UInt32Array>(ev, "dropped_attributes_count")?,
    );
    let dropped_events = col::<UInt32Array>(b, "dropped_events_count")?;
    let (links, lk) = list_struct(b, "links")?;
    let (lk_trace, lk_span, lk_state, lk_attrs, lk_dropped, lk_flags) = (
        field::<FixedSizeBinaryArray>(lk, "trace_id")?,
        field::<FixedSizeBinaryArray>(lk, "span_id")?,
        field::<StringArray>(lk, "trace_state")?,
        AttrReader::new(lk.column_by_name("attributes").ok_or_else(|| ArrowError::SchemaError("link attributes missing".into()))?.as_ref())?,
        field::<UInt32Array>(lk, "dropped_attributes_count")?,
        field::<UInt32Array>(lk, "flags")?,
    );
    let dropped_links = col::<UInt32Array>(b, "dropped_links_count")?;
    let res_attrs = AttrReader::new(col::<MapArray>(b, "resource_attributes")?)?;
    let res_dropped = col::<UInt32Array>(b, "resource_dropped_attributes_count")?;
    let res_schema = col::<StringArray>(b, "resource_schema_url")?;
    let res_entities = col::<StringArray>(b, "resource_entity_refs")?;
    let scope_name = col::<StringArray>(b, "scope_name")?;
    let scope_version = col::<StringArray>(b, "scope_version")?;
    let scope_attrs = AttrReader::new(col::<MapArray>(b, "scope_attributes")?)?;
    let scope_dropped = col::<UInt32Array>(b, "scope_dropped_attributes_count")?;
    let scope_schema = col::<StringArray>(b, "scope_schema_url")?;

    let mut out: Vec<ResourceSpans> = Vec::new();
    for row in 0..b.num_rows() {
        let resource = Resource { attributes: res_attrs.row(row), dropped_attributes_count: res_dropped.value(row), entity_refs: if res_entities.is_null(row) { Vec::new() } else { serde_json::from_str(res_entities.value(row)).unwrap_or_default() } };
        let scope = InstrumentationScope {
            name: scope_name.value(row).to_owned(),
            version: scope_version.value(row).to_owned(),
            attributes: scope_attrs.row(row),
            dropped_attributes_count: scope_dropped.value(row),
        };
        let eo = events.value_offsets();
        let lo = links.value_offsets();
        let span = Span {
            trace_id: trace_id.value(row).to_vec(),
            span_id: span_id.value(row).to_vec(),
            trace_state: trace_state.value(row).to_owned(),
            parent_span_id: if parent.is_null(row) { Vec::new() } else { parent.value(row).to_vec() },
            flags: flags.value(row),
            name: name.value(row).to_owned(),
            kind: kind_value(kind.value(row)),
            start_time_unix_nano: start.value(row).max(0) as u64,
            end_time_unix_nano: end.value(row).max(0) as u64,
            attributes: attrs.row(row),
            dropped_attributes_count: dropped_attrs.value(row),
            events: (eo[row] as usize..eo[row + 1] as usize)
                .map(|k| span::Event {
                    time_unix_nano: ev_time.value(k).max(0) as u64,
                    name: ev_name.value(k).to_owned(),
                    attributes: ev_attrs.row(k),
                    dropped_attributes_count: ev_dropped.value(k),
                })
                .collect(),
            dropped_events_count: dropped_events.value(row),
            links: (lo[row] as usize..lo[row + 1] as usize)
                .map(|k| span::Link {
                    trace_id: lk_trace.value(k).to_vec(),
                    span_id: lk_span.value(k).to_vec(),
                    trace_state: lk_state.value(k).to_owned(),
                    attributes: lk_attrs.row(k),
                    dropped_attributes_count: lk_dropped.value(k),
                    flags: lk_flags.value(k),
                })
                .collect(),
            dropped_links_count: dropped_links.value(row),
            status: match (status_value(status_code.value(row)), status_message.value(row)) {
                (0, "") => None,
                (code, message) => Some(Status { code, message: message.to_owned() }),
            },
        };
        crate::batch::push_span(&mut out, &Some(resource), res_schema.value(row), &Some(scope), scope_schema.value(row), span);
    }
    Ok(out)
}
