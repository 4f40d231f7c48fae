//! The archive schema, version 2: one Arrow row per span, every OTLP field kept.
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
//! | `attributes` … `attributes_order` | an attribute set (below) | span attributes |
//! | `dropped_attributes_count` | uint32 | |
//! | `events` | list<struct<time: timestamp(ns, UTC), name: utf8, attributes…: an attribute set, dropped_attributes_count: uint32>> | |
//! | `dropped_events_count` | uint32 | |
//! | `links` | list<struct<trace_id, span_id, trace_state, attributes…: an attribute set, dropped_attributes_count, flags>> | |
//! | `dropped_links_count` | uint32 | |
//! | `resource_attributes` … `resource_attributes_order` | an attribute set | |
//! | `resource_dropped_attributes_count` | uint32 | |
//! | `resource_schema_url` | utf8 | |
//! | `resource_entity_refs` | utf8, null | the resource's entity refs as OTLP/JSON, null when none |
//! | `scope_name`, `scope_version` | utf8 | |
//! | `scope_attributes` … `scope_attributes_order` | an attribute set | |
//! | `scope_dropped_attributes_count` | uint32 | |
//! | `scope_schema_url` | utf8 | |
//!
//! An attribute set `X` is seven columns, one map per value type, so that SQL reads a value
//! with its own type and Parquet stores two leaf columns (key, value) per attribute:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `X` | map<utf8, utf8> | string values: `attributes['http.method']` |
//! | `X_int` | map<utf8, int64> | int values: `attributes_int['http.status_code']` |
//! | `X_double` | map<utf8, float64> | double values |
//! | `X_bool` | map<utf8, bool> | bool values |
//! | `X_bytes` | map<utf8, binary> | bytes values |
//! | `X_json` | map<utf8, utf8> | everything else as the OTLP/JSON `AnyValue`: arrays, maps (any depth), string-table indexes, empty values (`{}`) |
//! | `X_order` | utf8, null | the original order of the attributes, one letter per attribute (`s` string, `i` int, `d` double, `b` bool, `y` bytes, `j` json); null when they were already grouped in that order |
//!
//! Replay reads `X_order` to give the attributes back in the order they came.
//!
//! Ids of the wrong length (only possible from a malformed sender) are zero-padded or cut.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, DictionaryArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder,
    Float64Array, Float64Builder, Int32Array, Int64Array, Int64Builder, ListArray, MapArray, StringArray, StringBuilder,
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

/// The key of each file's key-value metadata that holds [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "tracepipe.schema_version";

/// Stored in each file's key-value metadata under [`SCHEMA_VERSION_KEY`].
pub const SCHEMA_VERSION: &str = "2";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The attribute value types, each kept in its own map column (`<set>`, `<set>_int`, …), with
/// the letter `<set>_order` uses for it. Replay puts attributes back in this order when a row
/// has no `_order` (its attributes were already grouped by type in this order).
pub const ATTRIBUTE_TYPES: [(&str, u8); 6] = [("", b's'), ("_int", b'i'), ("_double", b'd'), ("_bool", b'b'), ("_bytes", b'y'), ("_json", b'j')];

fn map_type(value: DataType) -> DataType {
    let entries = Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", value, false)]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false)
}

fn attr_value_types() -> [DataType; 6] {
    [DataType::Utf8, DataType::Int64, DataType::Float64, DataType::Boolean, DataType::Binary, DataType::Utf8]
}

/// The seven columns of one attribute set named `set` (`attributes`, `resource_attributes`, …).
fn attr_fields(set: &str) -> Vec<Field> {
    let mut f: Vec<Field> = ATTRIBUTE_TYPES.iter().zip(attr_value_types()).map(|((suffix, _), t)| Field::new(format!("{set}{suffix}"), map_type(t), false)).collect();
    f.push(Field::new(format!("{set}_order"), DataType::Utf8, true));
    f
}

fn event_fields() -> Fields {
    let mut f = vec![Field::new("time", ts_type(), false), Field::new("name", DataType::Utf8, false)];
    f.extend(attr_fields("attributes"));
    f.push(Field::new("dropped_attributes_count", DataType::UInt32, false));
    Fields::from(f)
}

fn link_fields() -> Fields {
    let mut f = vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("trace_state", DataType::Utf8, false),
    ];
    f.extend(attr_fields("attributes"));
    f.push(Field::new("dropped_attributes_count", DataType::UInt32, false));
    f.push(Field::new("flags", DataType::UInt32, false));
    Fields::from(f)
}

fn list_item(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(fields), false))
}

/// The schema every archive file has.
pub fn schema() -> SchemaRef {
    let u32f = |n: &str| Field::new(n, DataType::UInt32, false);
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
    let mut f = vec![
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
    ];
    f.extend(attr_fields("attributes"));
    f.extend([
        u32f("dropped_attributes_count"),
        Field::new("events", DataType::List(list_item(event_fields())), false),
        u32f("dropped_events_count"),
        Field::new("links", DataType::List(list_item(link_fields())), false),
        u32f("dropped_links_count"),
    ]);
    f.extend(attr_fields("resource_attributes"));
    f.extend([u32f("resource_dropped_attributes_count"), utf8("resource_schema_url"), Field::new("resource_entity_refs", DataType::Utf8, true), utf8("scope_name"), utf8("scope_version")]);
    f.extend(attr_fields("scope_attributes"));
    f.extend([u32f("scope_dropped_attributes_count"), utf8("scope_schema_url")]);
    Arc::new(Schema::new(f))
}

/// Columns whose every value is (nearly) unique: a dictionary would only cost hashing until the
/// writer gives up on it at 1 MiB.
const UNIQUE: &[&str] = &["trace_id", "span_id", "parent_span_id", "start_time", "end_time", "duration_ns"];

/// Top-level columns whose statistics a query can prune with (times, durations, who, what,
/// outcome); the others (random ids, trace state, messages, counts, URLs, `*_order`) get none —
/// their min/max prune nothing and cost a comparison per value.
const STATISTICS: &[&str] = &["start_time", "end_time", "duration_ns", "service_name", "name", "kind", "status_code", "scope_name"];

/// Whether the Parquet leaf column at `path` (its `ColumnPath` parts: `["links", "list", "item",
/// "trace_id"]`) is written with a dictionary: not unique ids and times.
pub fn dictionary(path: &[String]) -> bool {
    let (top, leaf) = (path[0].as_str(), path[path.len() - 1].as_str());
    !(UNIQUE.contains(&top) || (top == "links" && (leaf == "trace_id" || leaf == "span_id")) || (top == "events" && leaf == "time"))
}

/// Whether the Parquet leaf column at `path` keeps min/max statistics: only the [`STATISTICS`]
/// columns — never inside maps and lists, where min/max mix every key's or event's values.
pub fn statistics(path: &[String]) -> bool {
    path.len() == 1 && STATISTICS.contains(&path[0].as_str())
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

/// The archive's `status_code` text for an OTLP status code.
pub fn status_name(c: i32) -> &'static str {
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

pub(crate) fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[N - n..].copy_from_slice(&b[b.len() - n..]);
    out
}

/// One `map<utf8, T>` column being built.
struct MapCol<B> {
    offsets: Vec<i32>,
    keys: StringBuilder,
    values: B,
}

impl<B: ArrayBuilder> MapCol<B> {
    fn new(rows: usize, entries: usize, key_bytes: usize, values: B) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        MapCol { offsets, keys: StringBuilder::with_capacity(entries, key_bytes), values }
    }

    #[inline]
    fn key(&mut self, key: &str) -> &mut B {
        self.keys.append_value(key);
        &mut self.values
    }

    fn end_row(&mut self) {
        self.offsets.push(ArrayBuilder::len(&self.keys) as i32);
    }

    fn finish(mut self, value: DataType) -> ArrayRef {
        let DataType::Map(entries_field, _) = map_type(value) else { unreachable!("map_type gives a map") };
        let DataType::Struct(fields) = entries_field.data_type().clone() else { unreachable!("map entries are structs") };
        let entries = StructArray::new(fields, vec![Arc::new(self.keys.finish()), self.values.finish()], None);
        Arc::new(MapArray::new(entries_field, OffsetBuffer::new(self.offsets.into()), entries, None, false))
    }
}

/// Builds the seven columns of one attribute set: a map per value type and the `_order` column.
pub(crate) struct AttrCols {
    s: MapCol<StringBuilder>,
    i: MapCol<Int64Builder>,
    d: MapCol<Float64Builder>,
    b: MapCol<BooleanBuilder>,
    y: MapCol<BinaryBuilder>,
    j: MapCol<StringBuilder>,
    order: StringBuilder,
    /// The current row's type letters, and whether they are still in [`ATTRIBUTE_TYPES`] order.
    row: Vec<u8>,
    grouped: bool,
    last: u8,
}

/// An attribute value that is not an array or map, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(&'a [u8]),
    Strindex(i32),
    Empty,
}

impl<'a> Scalar<'a> {
    /// The value of `kv` when it is not kept as OTLP/JSON (arrays, maps, string-table indexes).
    pub(crate) fn of(kv: &'a KeyValue) -> Option<Self> {
        Some(match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(x)) => Scalar::Str(x),
            Some(Value::IntValue(x)) => Scalar::Int(*x),
            Some(Value::DoubleValue(x)) => Scalar::Double(*x),
            Some(Value::BoolValue(x)) => Scalar::Bool(*x),
            Some(Value::BytesValue(x)) => Scalar::Bytes(x),
            Some(Value::StringValueStrindex(_) | Value::ArrayValue(_) | Value::KvlistValue(_)) => return None,
            None => Scalar::Empty,
        })
    }
}

/// How much the columns of one batch will hold, counted first so no builder has to grow.
#[derive(Default)]
pub(crate) struct Sizes {
    /// String-valued attributes, their key bytes and value bytes.
    pub(crate) strings: usize,
    pub(crate) key_bytes: usize,
    pub(crate) str_bytes: usize,
    /// Int-valued attributes (the other types are rare and start empty).
    pub(crate) ints: usize,
}

impl Sizes {
    fn add(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(v)) => {
                    self.strings += 1;
                    self.key_bytes += kv.key.len();
                    self.str_bytes += v.len();
                }
                Some(Value::IntValue(_)) => self.ints += 1,
                _ => {}
            }
        }
    }
}

/// The OTLP/JSON `AnyValue` kept in `_json` (arrays, maps, string-table indexes, empty values).
pub(crate) fn json_value(v: Option<&AnyValue>) -> String {
    serde_json::to_string(v.unwrap_or(&AnyValue { value: None })).unwrap_or_else(|_| "{}".to_owned())
}

impl AttrCols {
    fn new(maps: usize, n: &Sizes) -> Self {
        AttrCols {
            s: MapCol::new(maps, n.strings, n.key_bytes, StringBuilder::with_capacity(n.strings, n.str_bytes)),
            i: MapCol::new(maps, n.ints, n.ints * 16, Int64Builder::with_capacity(n.ints)),
            d: MapCol::new(maps, 0, 0, Float64Builder::new()),
            b: MapCol::new(maps, 0, 0, BooleanBuilder::new()),
            y: MapCol::new(maps, 0, 0, BinaryBuilder::new()),
            j: MapCol::new(maps, 0, 0, StringBuilder::new()),
            order: StringBuilder::with_capacity(maps, 0),
            row: Vec::new(),
            grouped: true,
            last: 0,
        }
    }

    pub(crate) fn push(&mut self, kvs: &[KeyValue]) {
        kvs.iter().for_each(|kv| self.push_entry(kv));
        self.end_row();
    }

    /// Ends one row (a span's, event's, link's, resource's or scope's attributes).
    pub(crate) fn end_row(&mut self) {
        self.s.end_row();
        self.i.end_row();
        self.d.end_row();
        self.b.end_row();
        self.y.end_row();
        self.j.end_row();
        if self.grouped {
            self.order.append_null();
        } else {
            self.order.append_value(std::str::from_utf8(&self.row).expect("type letters are ASCII"));
        }
        self.row.clear();
        self.grouped = true;
        self.last = 0;
    }

    #[inline]
    fn note(&mut self, rank: u8) {
        self.row.push(ATTRIBUTE_TYPES[rank as usize].1);
        self.grouped &= rank >= self.last;
        self.last = rank;
    }

    /// Adds one entry to the current row.
    pub(crate) fn push_entry(&mut self, kv: &KeyValue) {
        match Scalar::of(kv) {
            Some(v) => self.push_scalar(&kv.key, v),
            None => {
                self.j.key(&kv.key).append_value(json_value(kv.value.as_ref()));
                self.note(5);
            }
        }
    }

    /// Adds one entry whose value is not an array or map.
    #[inline]
    pub(crate) fn push_scalar(&mut self, key: &str, v: Scalar<'_>) {
        let rank = match v {
            Scalar::Str(x) => {
                self.s.key(key).append_value(x);
                0
            }
            Scalar::Int(x) => {
                self.i.key(key).append_value(x);
                1
            }
            Scalar::Double(x) => {
                self.d.key(key).append_value(x);
                2
            }
            Scalar::Bool(x) => {
                self.b.key(key).append_value(x);
                3
            }
            Scalar::Bytes(x) => {
                self.y.key(key).append_value(x);
                4
            }
            Scalar::Strindex(x) => {
                self.j.key(key).append_value(json_value(Some(&AnyValue { value: Some(Value::StringValueStrindex(x)) })));
                5
            }
            Scalar::Empty => {
                self.j.key(key).append_value(json_value(None));
                5
            }
        };
        self.note(rank);
    }

    /// The seven columns, in [`attr_fields`] order.
    fn finish(self) -> Vec<ArrayRef> {
        let [ts, ti, td, tb, ty, tj] = attr_value_types();
        let mut order = self.order;
        vec![self.s.finish(ts), self.i.finish(ti), self.d.finish(td), self.b.finish(tb), self.y.finish(ty), self.j.finish(tj), Arc::new(order.finish())]
    }
}

fn ts_builder(n: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC")
}

/// A u64 nanosecond time as the archive's i64 (saturating).
pub fn nanos(t: u64) -> i64 {
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

/// Capacities for [`Columns`]; estimates are fine (builders grow), exact ones avoid regrowth.
#[derive(Default)]
pub(crate) struct Capacity {
    pub(crate) spans: usize,
    pub(crate) names: usize,
    pub(crate) contexts: usize,
    pub(crate) events: usize,
    pub(crate) links: usize,
    pub(crate) attrs: Sizes,
    pub(crate) ev_attrs: Sizes,
    pub(crate) lk_attrs: Sizes,
    pub(crate) res_attrs: Sizes,
    pub(crate) scope_attrs: Sizes,
}

/// Builds one archive record batch row by row: spans ([`Columns::push_span`]) and the resource and
/// scope they belong to ([`Columns::push_context`], once per `ScopeSpans`, in any order relative to
/// its spans). Used from decoded spans here and straight from protobuf in [`super::wire`].
pub(crate) struct Columns {
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    name: StringBuilder,
    kind: StringBuilder,
    start: TimestampNanosecondBuilder,
    end: TimestampNanosecondBuilder,
    duration: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    pub(crate) attrs: AttrCols,
    dropped_attrs: UInt32Builder,
    ev_offsets: Vec<i32>,
    ev_time: TimestampNanosecondBuilder,
    ev_name: StringBuilder,
    ev_attrs: AttrCols,
    ev_dropped: UInt32Builder,
    dropped_events: UInt32Builder,
    lk_offsets: Vec<i32>,
    lk_trace: FixedSizeBinaryBuilder,
    lk_span: FixedSizeBinaryBuilder,
    lk_state: StringBuilder,
    lk_attrs: AttrCols,
    lk_dropped: UInt32Builder,
    lk_flags: UInt32Builder,
    dropped_links: UInt32Builder,
    ctx: ContextCols,
    ctx_row: UInt32Builder,
}

/// Span fields that are plain values, as [`Columns::push_span_fields`] takes them.
pub(crate) struct SpanFields<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub trace_state: &'a str,
    pub parent_span_id: &'a [u8],
    pub flags: u32,
    pub name: &'a str,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub dropped_attributes_count: u32,
    pub dropped_events_count: u32,
    pub dropped_links_count: u32,
    pub status_code: i32,
    pub status_message: &'a str,
}

impl<'a> SpanFields<'a> {
    /// The plain fields of a decoded span.
    pub(crate) fn of(s: &'a Span) -> Self {
        let (status_code, status_message) = s.status.as_ref().map_or((0, ""), |st| (st.code, st.message.as_str()));
        SpanFields {
            trace_id: &s.trace_id,
            span_id: &s.span_id,
            trace_state: &s.trace_state,
            parent_span_id: &s.parent_span_id,
            flags: s.flags,
            name: &s.name,
            kind: s.kind,
            start: s.start_time_unix_nano,
            end: s.end_time_unix_nano,
            dropped_attributes_count: s.dropped_attributes_count,
            dropped_events_count: s.dropped_events_count,
            dropped_links_count: s.dropped_links_count,
            status_code,
            status_message,
        }
    }
}

impl Columns {
    pub(crate) fn new(c: &Capacity) -> Self {
        let n = c.spans;
        let mut ev_offsets = Vec::with_capacity(n + 1);
        ev_offsets.push(0);
        let mut lk_offsets = Vec::with_capacity(n + 1);
        lk_offsets.push(0);
        Columns {
            trace_id: FixedSizeBinaryBuilder::with_capacity(n, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent: FixedSizeBinaryBuilder::with_capacity(n, 8),
            trace_state: StringBuilder::with_capacity(n, 0),
            flags: UInt32Builder::with_capacity(n),
            name: StringBuilder::with_capacity(n, c.names),
            kind: StringBuilder::with_capacity(n, n * 6),
            start: ts_builder(n),
            end: ts_builder(n),
            duration: Int64Builder::with_capacity(n),
            status_code: StringBuilder::with_capacity(n, n * 5),
            status_message: StringBuilder::with_capacity(n, 0),
            attrs: AttrCols::new(n, &c.attrs),
            dropped_attrs: UInt32Builder::with_capacity(n),
            ev_offsets,
            ev_time: ts_builder(c.events),
            ev_name: StringBuilder::with_capacity(c.events, 0),
            ev_attrs: AttrCols::new(c.events, &c.ev_attrs),
            ev_dropped: UInt32Builder::with_capacity(c.events),
            dropped_events: UInt32Builder::with_capacity(n),
            lk_offsets,
            lk_trace: FixedSizeBinaryBuilder::with_capacity(c.links, 16),
            lk_span: FixedSizeBinaryBuilder::with_capacity(c.links, 8),
            lk_state: StringBuilder::with_capacity(c.links, 0),
            lk_attrs: AttrCols::new(c.links, &c.lk_attrs),
            lk_dropped: UInt32Builder::with_capacity(c.links),
            lk_flags: UInt32Builder::with_capacity(c.links),
            dropped_links: UInt32Builder::with_capacity(n),
            ctx: ContextCols {
                service: StringBuilder::with_capacity(c.contexts, 0),
                res_attrs: AttrCols::new(c.contexts, &c.res_attrs),
                res_dropped: UInt32Builder::with_capacity(c.contexts),
                res_schema: StringBuilder::with_capacity(c.contexts, 0),
                res_entities: StringBuilder::with_capacity(c.contexts, 0),
                scope_name: StringBuilder::with_capacity(c.contexts, 0),
                scope_version: StringBuilder::with_capacity(c.contexts, 0),
                scope_attrs: AttrCols::new(c.contexts, &c.scope_attrs),
                scope_dropped: UInt32Builder::with_capacity(c.contexts),
                scope_schema: StringBuilder::with_capacity(c.contexts, 0),
            },
            ctx_row: UInt32Builder::with_capacity(n),
        }
    }

    /// Contexts (resource and scope rows) added so far: the next one's number.
    pub(crate) fn contexts(&self) -> u32 {
        ArrayBuilder::len(&self.ctx.service) as u32
    }

    /// Adds the resource and scope of one `ScopeSpans`; returns its context number for
    /// [`Columns::push_span`].
    pub(crate) fn push_context(&mut self, res: &Resource, res_schema_url: &str, scope: &InstrumentationScope, scope_schema_url: &str) -> u32 {
        let svc = res.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        let c = &mut self.ctx;
        c.service.append_option(svc);
        c.res_attrs.push(&res.attributes);
        c.res_dropped.append_value(res.dropped_attributes_count);
        c.res_schema.append_value(res_schema_url);
        if res.entity_refs.is_empty() {
            c.res_entities.append_null();
        } else {
            c.res_entities.append_value(serde_json::to_string(&res.entity_refs).unwrap_or_default());
        }
        c.scope_name.append_value(&scope.name);
        c.scope_version.append_value(&scope.version);
        c.scope_attrs.push(&scope.attributes);
        c.scope_dropped.append_value(scope.dropped_attributes_count);
        c.scope_schema.append_value(scope_schema_url);
        (ArrayBuilder::len(&c.service) - 1) as u32
    }

    /// Adds a decoded span of context `ctx`.
    pub(crate) fn push_span(&mut self, s: &Span, ctx: u32) -> Result<(), ArrowError> {
        self.attrs.push(&s.attributes);
        s.events.iter().for_each(|e| self.push_event(e));
        s.links.iter().try_for_each(|l| self.push_link(l))?;
        self.push_span_fields(&SpanFields::of(s), ctx)
    }

    /// Adds one event of the span being built (before its [`Columns::push_span_fields`]).
    pub(crate) fn push_event(&mut self, e: &span::Event) {
        self.ev_time.append_value(nanos(e.time_unix_nano));
        self.ev_name.append_value(&e.name);
        self.ev_attrs.push(&e.attributes);
        self.ev_dropped.append_value(e.dropped_attributes_count);
    }

    /// Adds one link of the span being built (before its [`Columns::push_span_fields`]).
    pub(crate) fn push_link(&mut self, l: &span::Link) -> Result<(), ArrowError> {
        self.lk_trace.append_value(fixed::<16>(&l.trace_id))?;
        self.lk_span.append_value(fixed::<8>(&l.span_id))?;
        self.lk_state.append_value(&l.trace_state);
        self.lk_attrs.push(&l.attributes);
        self.lk_dropped.append_value(l.dropped_attributes_count);
        self.lk_flags.append_value(l.flags);
        Ok(())
    }

    /// Ends a span row: its plain fields; its attributes (one map row), events and links must
    /// have been added before.
    pub(crate) fn push_span_fields(&mut self, s: &SpanFields<'_>, ctx: u32) -> Result<(), ArrowError> {
        self.ctx_row.append_value(ctx);
        self.trace_id.append_value(fixed::<16>(s.trace_id))?;
        self.span_id.append_value(fixed::<8>(s.span_id))?;
        if s.parent_span_id.is_empty() {
            self.parent.append_null();
        } else {
            self.parent.append_value(fixed::<8>(s.parent_span_id))?;
        }
        self.trace_state.append_value(s.trace_state);
        self.flags.append_value(s.flags);
        self.name.append_value(s.name);
        self.kind.append_value(kind_name(s.kind).as_ref());
        self.start.append_value(nanos(s.start));
        self.end.append_value(nanos(s.end));
        self.duration.append_value(nanos(s.end).saturating_sub(nanos(s.start)));
        self.status_code.append_value(status_name(s.status_code));
        self.status_message.append_value(s.status_message);
        self.dropped_attrs.append_value(s.dropped_attributes_count);
        self.ev_offsets.push(ArrayBuilder::len(&self.ev_time) as i32);
        self.dropped_events.append_value(s.dropped_events_count);
        self.lk_offsets.push(ArrayBuilder::len(&self.lk_flags) as i32);
        self.dropped_links.append_value(s.dropped_links_count);
        Ok(())
    }

    /// The record batch of every row added.
    pub(crate) fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let mut ev: Vec<ArrayRef> = vec![Arc::new(self.ev_time.finish()), Arc::new(self.ev_name.finish())];
        ev.extend(self.ev_attrs.finish());
        ev.push(Arc::new(self.ev_dropped.finish()));
        let events = StructArray::try_new(event_fields(), ev, None)?;
        let mut lk: Vec<ArrayRef> = vec![Arc::new(self.lk_trace.finish()), Arc::new(self.lk_span.finish()), Arc::new(self.lk_state.finish())];
        lk.extend(self.lk_attrs.finish());
        lk.push(Arc::new(self.lk_dropped.finish()));
        lk.push(Arc::new(self.lk_flags.finish()));
        let links = StructArray::try_new(link_fields(), lk, None)?;
        let ctx_row = self.ctx_row.finish();
        let per_span = |a: ArrayRef| match a.data_type() {
            DataType::Map(..) => repeat_map(a, &ctx_row),
            _ => take(a.as_ref(), &ctx_row, None),
        };
        let mut c = self.ctx;
        // The dictionary's values are the per-ScopeSpans names (repeats allowed); keys point at them.
        let names = c.service.finish();
        let keys: Int32Array = ctx_row.values().iter().map(|&r| names.is_valid(r as usize).then_some(r as i32)).collect();
        let service = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(names))?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(service),
        ];
        columns.extend(self.attrs.finish());
        columns.extend([
            Arc::new(self.dropped_attrs.finish()) as ArrayRef,
            Arc::new(ListArray::new(list_item(event_fields()), OffsetBuffer::new(self.ev_offsets.into()), Arc::new(events), None)),
            Arc::new(self.dropped_events.finish()),
            Arc::new(ListArray::new(list_item(link_fields()), OffsetBuffer::new(self.lk_offsets.into()), Arc::new(links), None)),
            Arc::new(self.dropped_links.finish()),
        ]);
        for a in c.res_attrs.finish() {
            columns.push(per_span(a)?);
        }
        columns.push(per_span(Arc::new(c.res_dropped.finish()))?);
        columns.push(per_span(Arc::new(c.res_schema.finish()))?);
        columns.push(per_span(Arc::new(c.res_entities.finish()))?);
        columns.push(per_span(Arc::new(c.scope_name.finish()))?);
        columns.push(per_span(Arc::new(c.scope_version.finish()))?);
        for a in c.scope_attrs.finish() {
            columns.push(per_span(a)?);
        }
        columns.push(per_span(Arc::new(c.scope_dropped.finish()))?);
        columns.push(per_span(Arc::new(c.scope_schema.finish()))?);
        RecordBatch::try_new(schema(), columns)
    }
}

/// `take` for a map column, done as one `take` of the entries: arrow's own `take` on maps copies
/// each row's entries through `MutableArrayData`, which costs more than building them again.
fn repeat_map(a: ArrayRef, rows: &UInt32Array) -> Result<ArrayRef, ArrowError> {
    let map = a.as_any().downcast_ref::<MapArray>().expect("attribute columns are maps");
    let DataType::Map(entries_field, sorted) = map.data_type() else { unreachable!("a MapArray has a map type") };
    let o = map.value_offsets();
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let mut entries = Vec::new();
    for &r in rows.values() {
        let (from, to) = (o[r as usize] as u32, o[r as usize + 1] as u32);
        entries.extend(from..to);
        offsets.push(entries.len() as i32);
    }
    let entries = take(map.entries(), &UInt32Array::from(entries), None)?;
    let entries = entries.as_any().downcast_ref::<StructArray>().expect("map entries are structs").clone();
    Ok(Arc::new(MapArray::try_new(entries_field.clone(), OffsetBuffer::new(offsets.into()), entries, None, *sorted)?))
}

/// Converts spans to one record batch in the archive schema.
pub fn to_record_batch(rs: &[ResourceSpans]) -> Result<RecordBatch, ArrowError> {
    to_record_batch_counted(rs).map(|(b, _)| b)
}

/// [`to_record_batch`], and how many resource and scope attributes the context budget cut
/// ([`super::budget`]).
pub fn to_record_batch_counted(rs: &[ResourceSpans]) -> Result<(RecordBatch, u64), ArrowError> {
    let empty_resource = Resource::default();
    let empty_scope = InstrumentationScope::default();
    // Each context as it will be written (cut to the batch's budget when it would replay more).
    let bytes: u64 = rs.iter().map(|r| prost::encoding::message::encoded_len(1, r) as u64).sum();
    let mut budget = super::budget::ContextBudget::new(bytes);
    let mut contexts = Vec::new();
    for r in rs {
        let res = r.resource.as_ref().unwrap_or(&empty_resource);
        let res_bytes = super::budget::attr_bytes(&res.attributes);
        for ss in r.scope_spans.iter().filter(|ss| !ss.spans.is_empty()) {
            contexts.push(budget.fit(res, res_bytes, ss.scope.as_ref().unwrap_or(&empty_scope), ss.spans.len() as u64));
        }
    }
    let mut c = Capacity::default();
    let mut k = 0;
    for r in rs {
        for ss in r.scope_spans.iter().filter(|ss| !ss.spans.is_empty()) {
            let (res, scope) = &contexts[k];
            k += 1;
            c.contexts += 1;
            c.res_attrs.add(&res.attributes);
            c.scope_attrs.add(&scope.attributes);
            for s in &ss.spans {
                c.spans += 1;
                c.names += s.name.len();
                c.attrs.add(&s.attributes);
                c.events += s.events.len();
                c.links += s.links.len();
                s.events.iter().for_each(|e| c.ev_attrs.add(&e.attributes));
                s.links.iter().for_each(|l| c.lk_attrs.add(&l.attributes));
            }
        }
    }
    let mut cols = Columns::new(&c);
    let mut k = 0;
    for r in rs {
        for ss in r.scope_spans.iter().filter(|ss| !ss.spans.is_empty()) {
            let (res, scope) = &contexts[k];
            k += 1;
            let ctx = cols.push_context(res, &r.schema_url, scope, &ss.schema_url);
            for s in &ss.spans {
                cols.push_span(s, ctx)?;
            }
        }
    }
    Ok((cols.finish()?, budget.truncated))
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

/// One `map<utf8, T>` column read back: its offsets, keys and values.
struct MapRead<'a, T> {
    map: &'a MapArray,
    keys: &'a StringArray,
    values: &'a T,
}

impl<'a, T: 'static> MapRead<'a, T> {
    fn new(get: &impl Fn(&str) -> Option<&'a ArrayRef>, name: &str) -> Result<Self, ArrowError> {
        let map = get(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("archive column `{name}` missing")))?
            .as_any()
            .downcast_ref::<MapArray>()
            .ok_or_else(|| ArrowError::SchemaError(format!("archive column `{name}` is not a map")))?;
        let keys = map.keys().as_any().downcast_ref::<StringArray>().ok_or_else(|| ArrowError::SchemaError(format!("`{name}` keys are not strings")))?;
        let values = map.values().as_any().downcast_ref::<T>().ok_or_else(|| ArrowError::SchemaError(format!("`{name}` values have an unexpected type")))?;
        Ok(MapRead { map, keys, values })
    }

    fn range(&self, row: usize) -> std::ops::Range<usize> {
        let o = self.map.value_offsets();
        o[row] as usize..o[row + 1] as usize
    }
}

/// Reads one attribute set (its seven columns) back into `KeyValue`s, in the original order.
struct AttrReader<'a> {
    s: MapRead<'a, StringArray>,
    i: MapRead<'a, Int64Array>,
    d: MapRead<'a, Float64Array>,
    b: MapRead<'a, BooleanArray>,
    y: MapRead<'a, BinaryArray>,
    j: MapRead<'a, StringArray>,
    order: &'a StringArray,
}

impl<'a> AttrReader<'a> {
    /// The set `set`, its columns looked up with `get` (a record batch's or an event struct's).
    fn new(get: impl Fn(&str) -> Option<&'a ArrayRef>, set: &str) -> Result<Self, ArrowError> {
        let name = |suffix: &str| format!("{set}{suffix}");
        let order = get(&name("_order"))
            .and_then(|a| a.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| ArrowError::SchemaError(format!("archive column `{set}_order` missing or not utf8")))?;
        Ok(AttrReader {
            s: MapRead::new(&get, set)?,
            i: MapRead::new(&get, &name("_int"))?,
            d: MapRead::new(&get, &name("_double"))?,
            b: MapRead::new(&get, &name("_bool"))?,
            y: MapRead::new(&get, &name("_bytes"))?,
            j: MapRead::new(&get, &name("_json"))?,
            order,
        })
    }

    /// Entry `k` of the map of type rank `t`.
    fn entry(&self, t: usize, k: usize) -> KeyValue {
        let (key, value) = match t {
            0 => (self.s.keys.value(k), Some(Value::StringValue(self.s.values.value(k).to_owned()))),
            1 => (self.i.keys.value(k), Some(Value::IntValue(self.i.values.value(k)))),
            2 => (self.d.keys.value(k), Some(Value::DoubleValue(self.d.values.value(k)))),
            3 => (self.b.keys.value(k), Some(Value::BoolValue(self.b.values.value(k)))),
            4 => (self.y.keys.value(k), Some(Value::BytesValue(self.y.values.value(k).to_vec()))),
            _ => (self.j.keys.value(k), serde_json::from_str::<AnyValue>(self.j.values.value(k)).ok().and_then(|v| v.value)),
        };
        KeyValue { key: key.to_owned(), value: value.map(|v| AnyValue { value: Some(v) }), key_strindex: 0 }
    }

    fn row(&self, row: usize) -> Vec<KeyValue> {
        let mut ranges = [self.s.range(row), self.i.range(row), self.d.range(row), self.b.range(row), self.y.range(row), self.j.range(row)];
        let mut out = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
        if self.order.is_valid(row) {
            for letter in self.order.value(row).bytes() {
                let Some(t) = ATTRIBUTE_TYPES.iter().position(|(_, l)| *l == letter) else { continue };
                if let Some(k) = ranges[t].next() {
                    out.push(self.entry(t, k));
                }
            }
        }
        // Grouped rows, and whatever a damaged `_order` did not name: in type order.
        for (t, r) in ranges.iter_mut().enumerate() {
            for k in r {
                out.push(self.entry(t, k));
            }
        }
        out
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
    let by_name = |n: &str| b.column_by_name(n);
    let attrs = AttrReader::new(by_name, "attributes")?;
    let dropped_attrs = col::<UInt32Array>(b, "dropped_attributes_count")?;
    let (events, ev) = list_struct(b, "events")?;
    let (ev_time, ev_name, ev_attrs, ev_dropped) = (
        field::<TimestampNanosecondArray>(ev, "time")?,
        field::<StringArray>(ev, "name")?,
        AttrReader::new(|n| ev.column_by_name(n), "attributes")?,
        field::<UInt32Array>(ev, "dropped_attributes_count")?,
    );
    let dropped_events = col::<UInt32Array>(b, "dropped_events_count")?;
    let (links, lk) = list_struct(b, "links")?;
    let (lk_trace, lk_span, lk_state, lk_attrs, lk_dropped, lk_flags) = (
        field::<FixedSizeBinaryArray>(lk, "trace_id")?,
        field::<FixedSizeBinaryArray>(lk, "span_id")?,
        field::<StringArray>(lk, "trace_state")?,
        AttrReader::new(|n| lk.column_by_name(n), "attributes")?,
        field::<UInt32Array>(lk, "dropped_attributes_count")?,
        field::<UInt32Array>(lk, "flags")?,
    );
    let dropped_links = col::<UInt32Array>(b, "dropped_links_count")?;
    let res_attrs = AttrReader::new(by_name, "resource_attributes")?;
    let res_dropped = col::<UInt32Array>(b, "resource_dropped_attributes_count")?;
    let res_schema = col::<StringArray>(b, "resource_schema_url")?;
    let res_entities = col::<StringArray>(b, "resource_entity_refs")?;
    let scope_name = col::<StringArray>(b, "scope_name")?;
    let scope_version = col::<StringArray>(b, "scope_version")?;
    let scope_attrs = AttrReader::new(by_name, "scope_attributes")?;
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

#[cfg(test)]
mod tests;
