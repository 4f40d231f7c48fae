//! The `sql` policy: a DataFusion predicate over a trace's spans, in the trace archive's schema
//! (the columns `tracepipe query` reads: `name`, `kind`, `duration_ns`, `status_code`,
//! `service_name`, `attributes['k']`, `attributes_int['k']`, `resource_attributes['k']`, …). A
//! trace is kept when any of its spans matches.
//!
//! The predicate is parsed and planned once, when the configuration is validated (a bad
//! predicate is a configuration error). Deciders evaluate it on one Arrow record batch holding
//! every trace due at that moment (converted straight from the held protobuf), never per span
//! through SQL text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// A planned predicate.
pub struct SqlPredicate {
    /// As written.
    pub text: String,
    expr: Arc<dyn PhysicalExpr>,
    /// The same predicate against only the columns it reads, when those can be built directly.
    projected: Option<Projected>,
}

impl std::fmt::Debug for SqlPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlPredicate").field("text", &self.text).finish()
    }
}

/// Why a predicate does not plan: the message, and the position DataFusion's SQL parser gave
/// (line, column inside the predicate), when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// What is wrong, on one line.
    pub message: String,
    /// (line, column) inside the SQL text.
    pub at: Option<(u64, u64)>,
}

fn position(msg: &str) -> Option<(u64, u64)> {
    let l = msg.find("Line: ")? + 6;
    let line: u64 = msg[l..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let c = msg.find("Column: ")? + 8;
    let col: u64 = msg[c..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((line, col))
}

impl SqlPredicate {
    /// Parses and plans `text` against the archive schema.
    pub fn plan(text: &str) -> Result<SqlPredicate, PlanError> {
        let err = |e: &dyn std::fmt::Display| {
            let m = e.to_string().lines().next().unwrap_or_default().to_owned();
            PlanError { at: position(&m), message: m }
        };
        let schema = tracepipe_pipeline::archive::schema::schema();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| err(&e))?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(text, &df_schema).map_err(|e| err(&e))?;
        let expr = ctx.create_physical_expr(expr, &df_schema).map_err(|e| err(&e))?;
        match expr.data_type(&schema) {
            Ok(DataType::Boolean) => {}
            Ok(other) => return Err(PlanError { message: format!("the predicate is {other}, not a boolean"), at: None }),
            Err(e) => return Err(err(&e)),
        }
        Ok(SqlPredicate { text: text.to_owned(), expr, projected: project(text, &schema) })
    }

    /// Whether the predicate reads only columns built straight from the spans.
    pub fn is_projected(&self) -> bool {
        self.projected.is_some()
    }

    /// The rows of the spans in `buf` (one `TracesData` holding `spans` spans) that match, built
    /// from just the columns the predicate reads; `None` when it reads others (use
    /// [`SqlPredicate::evaluate`] on the full conversion).
    pub fn evaluate_projected(&self, buf: &[u8], spans: usize) -> Option<Result<BooleanArray, String>> {
        let p = self.projected.as_ref()?;
        Some(p.batch(buf, spans).and_then(|b| {
            let v = p.expr.evaluate(&b).map_err(|e| e.to_string())?;
            let a = v.into_array(b.num_rows()).map_err(|e| e.to_string())?;
            a.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| "predicate did not give booleans".to_owned())
        }))
    }

    /// The rows of `batch` that match (null counts as no match).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String> {
        let v = self.expr.evaluate(batch).map_err(|e| e.to_string())?;
        let a = v.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
        a.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| "predicate did not give booleans".to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Projection: most predicates read a few columns (durations, names, some attributes). Those are
// built straight from the spans' protobuf, instead of all ~40 archive columns.

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, MapArray, StringBuilder, StringDictionaryBuilder, StructArray, TimestampNanosecondBuilder, UInt32Builder,
};
use datafusion::arrow::array::ArrayBuilder as _;
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{Int32Type, SchemaRef};
use tracepipe_pipeline::wire::{Reader, I32, I64, LEN, VARINT};

/// Which attribute set a map column reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Span,
    Resource,
}

/// Which value type a map column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Double,
    Bool,
}

/// A column the projection can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Name,
    Kind,
    Start,
    End,
    Duration,
    StatusCode,
    StatusMessage,
    ServiceName,
    TraceState,
    Flags,
    Attrs(Set, Ty),
}

fn col_of(name: &str) -> Option<Col> {
    Some(match name {
        "name" => Col::Name,
        "kind" => Col::Kind,
        "start_time" => Col::Start,
        "end_time" => Col::End,
        "duration_ns" => Col::Duration,
        "status_code" => Col::StatusCode,
        "status_message" => Col::StatusMessage,
        "service_name" => Col::ServiceName,
        "trace_state" => Col::TraceState,
        "flags" => Col::Flags,
        "attributes" => Col::Attrs(Set::Span, Ty::Str),
        "attributes_int" => Col::Attrs(Set::Span, Ty::Int),
        "attributes_double" => Col::Attrs(Set::Span, Ty::Double),
        "attributes_bool" => Col::Attrs(Set::Span, Ty::Bool),
        "resource_attributes" => Col::Attrs(Set::Resource, Ty::Str),
        "resource_attributes_int" => Col::Attrs(Set::Resource, Ty::Int),
        "resource_attributes_double" => Col::Attrs(Set::Resource, Ty::Double),
        "resource_attributes_bool" => Col::Attrs(Set::Resource, Ty::Bool),
        _ => return None,
    })
}

/// A predicate planned against only the columns it reads.
pub(crate) struct Projected {
    schema: SchemaRef,
    cols: Vec<Col>,
    expr: Arc<dyn PhysicalExpr>,
}

/// Plans `expr` against the columns it references, when the projection can build them all.
fn project(text: &str, full: &datafusion::arrow::datatypes::Schema) -> Option<Projected> {
    let ctx = SessionContext::new();
    let df_full = DFSchema::try_from(full.clone()).ok()?;
    let parsed = ctx.parse_sql_expr(text, &df_full).ok()?;
    let mut names: Vec<String> = parsed.column_refs().into_iter().map(|c| c.name.clone()).collect();
    names.sort_by_key(|n| full.index_of(n).unwrap_or(usize::MAX));
    names.dedup();
    let cols: Vec<Col> = names.iter().map(|n| col_of(n)).collect::<Option<_>>()?;
    let fields: Vec<datafusion::arrow::datatypes::Field> = names.iter().map(|n| full.field_with_name(n).ok().cloned()).collect::<Option<_>>()?;
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let df = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let expr = ctx.parse_sql_expr(text, &df).ok()?;
    let expr = ctx.create_physical_expr(expr, &df).ok()?;
    Some(Projected { schema, cols, expr })
}

/// A map column being built.
struct MapCol {
    keys: StringBuilder,
    values: Vals,
    offsets: Vec<i32>,
}

enum Vals {
    Str(StringBuilder),
    Int(Int64Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
}

/// One column being built.
enum Builder {
    Str(StringBuilder),
    Ts(TimestampNanosecondBuilder),
    I64(Int64Builder),
    U32(UInt32Builder),
    Dict(StringDictionaryBuilder<Int32Type>),
    Map(MapCol),
}

/// The fields of one span the projection may read.
#[derive(Default)]
struct SpanRow<'a> {
    name: &'a [u8],
    kind: u64,
    start: u64,
    end: u64,
    status_code: u64,
    status_message: &'a [u8],
    trace_state: &'a [u8],
    flags: u32,
    attrs: Vec<&'a [u8]>,
}

fn str_of(b: &[u8]) -> &str {
    tracepipe_pipeline::wire::str_of(b).unwrap_or("")
}

use tracepipe_pipeline::archive::schema::nanos;

/// (key, value as AnyValue bytes) of a KeyValue.
fn key_value(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = Reader::new(kv, 0);
    let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
    while !r.done() {
        let (f, w) = r.tag().ok()?;
        match (f, w) {
            (1, LEN) => k = r.len_delimited().ok()?.0,
            (2, LEN) => v = r.len_delimited().ok()?.0,
            _ => r.skip(w, "KeyValue", f).ok()?,
        }
    }
    Some((k, v))
}

/// Appends the entries of `attrs` whose value has type `ty` to a map column (one row).
fn push_map(m: &mut MapCol, attrs: &[&[u8]]) {
    for kv in attrs {
        let Some((k, v)) = key_value(kv) else { continue };
        let mut r = Reader::new(v, 0);
        while !r.done() {
            let Ok((f, w)) = r.tag() else { break };
            let pushed = match (f, w, &mut m.values) {
                (1, LEN, Vals::Str(b)) => r.len_delimited().map(|(s, _)| b.append_value(str_of(s))).is_ok(),
                (3, VARINT, Vals::Int(b)) => r.varint().map(|x| b.append_value(x as i64)).is_ok(),
                (4, I64, Vals::Double(b)) => r.take(8).map(|x| b.append_value(f64::from_le_bytes(x.try_into().expect("8 bytes")))).is_ok(),
                (2, VARINT, Vals::Bool(b)) => r.varint().map(|x| b.append_value(x != 0)).is_ok(),
                _ => {
                    if r.skip(w, "AnyValue", f).is_err() {
                        break;
                    }
                    false
                }
            };
            if pushed {
                m.keys.append_value(str_of(k));
            }
        }
    }
    m.offsets.push(m.keys.len() as i32);
}

impl Projected {
    /// Builds the projected columns of every span in a `TracesData` buffer holding `spans` spans.
    fn batch(&self, buf: &[u8], spans: usize) -> Result<RecordBatch, String> {
        let mut b: Vec<Builder> = self
            .cols
            .iter()
            .map(|c| match c {
                Col::Name | Col::Kind | Col::StatusCode | Col::StatusMessage | Col::TraceState => Builder::Str(StringBuilder::with_capacity(spans, spans * 16)),
                Col::Start | Col::End => Builder::Ts(TimestampNanosecondBuilder::with_capacity(spans).with_timezone("UTC")),
                Col::Duration => Builder::I64(Int64Builder::with_capacity(spans)),
                Col::Flags => Builder::U32(UInt32Builder::with_capacity(spans)),
                Col::ServiceName => Builder::Dict(StringDictionaryBuilder::new()),
                Col::Attrs(_, ty) => Builder::Map(MapCol {
                    keys: StringBuilder::new(),
                    values: match ty {
                        Ty::Str => Vals::Str(StringBuilder::new()),
                        Ty::Int => Vals::Int(Int64Builder::new()),
                        Ty::Double => Vals::Double(Float64Builder::new()),
                        Ty::Bool => Vals::Bool(BooleanBuilder::new()),
                    },
                    offsets: vec![0],
                }),
            })
            .collect();
        let bad = |e: tracepipe_pipeline::wire::WireError| e.to_string();
        let mut top = Reader::new(buf, 0);
        while !top.done() {
            let (f, w) = top.tag().map_err(bad)?;
            if (f, w) != (1, LEN) {
                top.skip(w, "TracesData", f).map_err(bad)?;
                continue;
            }
            let rs = top.len_delimited().map_err(bad)?.0;
            let mut res_attrs: Vec<&[u8]> = Vec::new();
            let mut scopes: Vec<&[u8]> = Vec::new();
            let mut r = Reader::new(rs, 0);
            while !r.done() {
                let (f, w) = r.tag().map_err(bad)?;
                match (f, w) {
                    (1, LEN) => {
                        let res = r.len_delimited().map_err(bad)?.0;
                        let mut rr = Reader::new(res, 0);
                        while !rr.done() {
                            let (f, w) = rr.tag().map_err(bad)?;
                            if (f, w) == (1, LEN) {
                                res_attrs.push(rr.len_delimited().map_err(bad)?.0);
                            } else {
                                rr.skip(w, "Resource", f).map_err(bad)?;
                            }
                        }
                    }
                    (2, LEN) => scopes.push(r.len_delimited().map_err(bad)?.0),
                    _ => r.skip(w, "ResourceSpans", f).map_err(bad)?,
                }
            }
            let service = res_attrs.iter().find_map(|kv| {
                let (k, v) = key_value(kv)?;
                if k != b"service.name" {
                    return None;
                }
                let mut r = Reader::new(v, 0);
                let (f, w) = r.tag().ok()?;
                ((f, w) == (1, LEN)).then(|| r.len_delimited().ok().map(|x| str_of(x.0))).flatten()
            });
            for ss in scopes {
                let mut r = Reader::new(ss, 0);
                while !r.done() {
                    let (f, w) = r.tag().map_err(bad)?;
                    if (f, w) != (2, LEN) {
                        r.skip(w, "ScopeSpans", f).map_err(bad)?;
                        continue;
                    }
                    let span = r.len_delimited().map_err(bad)?.0;
                    let mut s = SpanRow::default();
                    let mut sr = Reader::new(span, 0);
                    while !sr.done() {
                        let (f, w) = sr.tag().map_err(bad)?;
                        match (f, w) {
                            (3, LEN) => s.trace_state = sr.len_delimited().map_err(bad)?.0,
                            (5, LEN) => s.name = sr.len_delimited().map_err(bad)?.0,
                            (6, VARINT) => s.kind = sr.varint().map_err(bad)?,
                            (7, I64) => s.start = u64::from_le_bytes(sr.take(8).map_err(bad)?.try_into().expect("8 bytes")),
                            (8, I64) => s.end = u64::from_le_bytes(sr.take(8).map_err(bad)?.try_into().expect("8 bytes")),
                            (9, LEN) => s.attrs.push(sr.len_delimited().map_err(bad)?.0),
                            (15, LEN) => {
                                let st = sr.len_delimited().map_err(bad)?.0;
                                let mut x = Reader::new(st, 0);
                                while !x.done() {
                                    let (f, w) = x.tag().map_err(bad)?;
                                    match (f, w) {
                                        (2, LEN) => s.status_message = x.len_delimited().map_err(bad)?.0,
                                        (3, VARINT) => s.status_code = x.varint().map_err(bad)?,
                                        _ => x.skip(w, "Status", f).map_err(bad)?,
                                    }
                                }
                            }
                            (16, I32) => s.flags = u32::from_le_bytes(sr.take(4).map_err(bad)?.try_into().expect("4 bytes")),
                            _ => sr.skip(w, "Span", f).map_err(bad)?,
                        }
                    }
                    for (c, b) in self.cols.iter().zip(b.iter_mut()) {
                        match (c, b) {
                            (Col::Name, Builder::Str(x)) => x.append_value(str_of(s.name)),
                            (Col::Kind, Builder::Str(x)) => x.append_value(tracepipe_pipeline::archive::schema::kind_name(s.kind as i32)),
                            (Col::StatusCode, Builder::Str(x)) => x.append_value(tracepipe_pipeline::archive::schema::status_name(s.status_code as i32)),
                            (Col::StatusMessage, Builder::Str(x)) => x.append_value(str_of(s.status_message)),
                            (Col::TraceState, Builder::Str(x)) => x.append_value(str_of(s.trace_state)),
                            (Col::Start, Builder::Ts(x)) => x.append_value(nanos(s.start)),
                            (Col::End, Builder::Ts(x)) => x.append_value(nanos(s.end)),
                            (Col::Duration, Builder::I64(x)) => x.append_value(nanos(s.end).saturating_sub(nanos(s.start))),
                            (Col::Flags, Builder::U32(x)) => x.append_value(s.flags),
                            (Col::ServiceName, Builder::Dict(x)) => match service {
                                Some(v) => {
                                    x.append_value(v);
                                }
                                None => x.append_null(),
                            },
                            (Col::Attrs(Set::Span, _), Builder::Map(m)) => push_map(m, &s.attrs),
                            (Col::Attrs(Set::Resource, _), Builder::Map(m)) => push_map(m, &res_attrs),
                            _ => return Err("projection builder mismatch".into()),
                        }
                    }
                }
            }
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(b.len());
        for (i, bld) in b.into_iter().enumerate() {
            arrays.push(match bld {
                Builder::Str(mut x) => Arc::new(x.finish()),
                Builder::Ts(mut x) => Arc::new(x.finish()),
                Builder::I64(mut x) => Arc::new(x.finish()),
                Builder::U32(mut x) => Arc::new(x.finish()),
                Builder::Dict(mut x) => Arc::new(x.finish()),
                Builder::Map(mut m) => {
                    let DataType::Map(entries_field, sorted) = self.schema.field(i).data_type().clone() else { return Err("not a map column".into()) };
                    let DataType::Struct(fields) = entries_field.data_type().clone() else { return Err("map entries are not a struct".into()) };
                    let values: ArrayRef = match &mut m.values {
                        Vals::Str(x) => Arc::new(x.finish()),
                        Vals::Int(x) => Arc::new(x.finish()),
                        Vals::Double(x) => Arc::new(x.finish()),
                        Vals::Bool(x) => Arc::new(x.finish()),
                    };
                    let entries = StructArray::try_new(fields, vec![Arc::new(m.keys.finish()), values], None).map_err(|e| e.to_string())?;
                    Arc::new(MapArray::try_new(entries_field, OffsetBuffer::new(m.offsets.into()), entries, None, sorted).map_err(|e| e.to_string())?)
                }
            });
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())
    }
}
