//! OTLP protobuf straight to Parquet column chunks of the archive schema, with no Arrow step.
//!
//! The archive benchmark showed where a span's write time went with protobuf → Arrow →
//! `ArrowWriter`: building Arrow arrays, then arrow-rs computing levels from them, hashing every
//! string into a dictionary (attribute keys, and the resource and scope values repeated on every
//! span), gathering values and cutting pages. Here the protobuf walk ([`super::encoded`]) writes
//! each value once into the leaf column it ends up in ([`leaf::Leaf`]): levels kept as runs,
//! attribute keys checked against the key at the same position in the previous span (one
//! comparison, no hashing), the resource and scope of a `ScopeSpans` encoded once and repeated
//! for its spans. Pages are Data Page v1, PLAIN, RLE_DICTIONARY or (byte arrays past their dictionary)
//! DELTA_LENGTH_BYTE_ARRAY, compressed as configured.
//!
//! A [`RowGroupEncoder`] holds one row group being built, across batches; the sink closes it into
//! column chunks ([`RowGroupEncoder::finish`]) and splices them into its file
//! (`SerializedRowGroupWriter::append_column`). Files read back equal to the Arrow path's (tested
//! on every OTLP field, and with pyarrow end to end).
//!
//! Every span of a batch goes in, or none: a batch whose spans fall in two partitions (an hour
//! boundary) is rewound and left to the caller ([`Pushed::OtherPartition`]).

mod delta;
mod leaf;
mod levels;

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::column::writer::ColumnCloseResult;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::schema::types::SchemaDescriptor;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span};

use super::encoded::{Rows, walk};
use super::schema::{Scalar, SpanFields, fixed, json_value, kind_name, nanos, status_name};
use leaf::{Codec, Leaf, Mark};

/// Leaves of one attribute set: key and value of each of the six maps, then `_order`.
const SET_LEAVES: usize = 13;
/// Leaves of `events`: time, name, attributes, dropped_attributes_count.
const EVENT_LEAVES: usize = 3 + SET_LEAVES;
/// Leaves of `links`: trace_id, span_id, trace_state, attributes, dropped_attributes_count, flags.
const LINK_LEAVES: usize = 5 + SET_LEAVES;

// Leaf numbers, in the schema's order (checked against the Parquet schema in `new`).
const TRACE_ID: usize = 0;
const SPAN_ID: usize = 1;
const PARENT: usize = 2;
const TRACE_STATE: usize = 3;
const FLAGS: usize = 4;
const NAME: usize = 5;
const KIND: usize = 6;
const START: usize = 7;
const END: usize = 8;
const DURATION: usize = 9;
const STATUS_CODE: usize = 10;
const STATUS_MESSAGE: usize = 11;
const SERVICE: usize = 12;
const ATTRS: usize = 13;
const DROPPED_ATTRS: usize = ATTRS + SET_LEAVES;
const EVENTS: usize = DROPPED_ATTRS + 1;
const DROPPED_EVENTS: usize = EVENTS + EVENT_LEAVES;
const LINKS: usize = DROPPED_EVENTS + 1;
const DROPPED_LINKS: usize = LINKS + LINK_LEAVES;
const RES_ATTRS: usize = DROPPED_LINKS + 1;
const RES_DROPPED: usize = RES_ATTRS + SET_LEAVES;
const RES_SCHEMA: usize = RES_DROPPED + 1;
const RES_ENTITIES: usize = RES_SCHEMA + 1;
const SCOPE_NAME: usize = RES_ENTITIES + 1;
const SCOPE_VERSION: usize = SCOPE_NAME + 1;
const SCOPE_ATTRS: usize = SCOPE_VERSION + 1;
const SCOPE_DROPPED: usize = SCOPE_ATTRS + SET_LEAVES;
const SCOPE_SCHEMA: usize = SCOPE_DROPPED + 1;
const LEAVES: usize = SCOPE_SCHEMA + 1;

/// The key leaf of every map (the value leaf follows it and shares its levels): six maps in each
/// attribute set.
const MAP_KEYS: [usize; 30] = {
    let sets = [ATTRS, EVENTS + 2, LINKS + 3, RES_ATTRS, SCOPE_ATTRS];
    let mut keys = [0; 30];
    let mut i = 0;
    while i < 30 {
        keys[i] = sets[i / 6] + 2 * (i % 6);
        i += 1;
    }
    keys
};

/// Where an attribute set sits: the repetition level of a row's first value, the level of its
/// maps' repeated entries, and the definition level at which its maps exist (empty).
#[derive(Clone, Copy)]
struct At {
    first_rep: u8,
    inner_rep: u8,
    def: u8,
}

const TOP: At = At { first_rep: 0, inner_rep: 1, def: 0 };

/// What a leaf value write goes to: the leaves, or a recording (a resource's and scope's values,
/// repeated for each of their spans).
trait Sink {
    fn null(&mut self, leaf: usize, rep: u8, def: u8);
    fn bytes(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8]);
    fn key(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8], hint: &mut u32);
    fn i64(&mut self, leaf: usize, rep: u8, def: u8, v: i64);
    fn f64(&mut self, leaf: usize, rep: u8, def: u8, v: f64);
    fn bool(&mut self, leaf: usize, rep: u8, def: u8, v: bool);
    fn i32(&mut self, leaf: usize, rep: u8, def: u8, v: i32);
}

impl Sink for [Leaf] {
    #[inline(always)]
    fn null(&mut self, leaf: usize, rep: u8, def: u8) {
        self[leaf].null(rep, def, 1);
    }
    #[inline(always)]
    fn bytes(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8]) {
        self[leaf].bytes(rep, def, v);
    }
    #[inline(always)]
    fn key(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8], hint: &mut u32) {
        self[leaf].bytes_hinted(rep, def, v, hint);
    }
    #[inline(always)]
    fn i64(&mut self, leaf: usize, rep: u8, def: u8, v: i64) {
        self[leaf].i64(rep, def, v);
    }
    #[inline(always)]
    fn f64(&mut self, leaf: usize, rep: u8, def: u8, v: f64) {
        self[leaf].f64(rep, def, v);
    }
    #[inline(always)]
    fn bool(&mut self, leaf: usize, rep: u8, def: u8, v: bool) {
        self[leaf].bool(rep, def, v);
    }
    #[inline(always)]
    fn i32(&mut self, leaf: usize, rep: u8, def: u8, v: i32) {
        self[leaf].i32(rep, def, v, 1);
    }
}

/// One recorded leaf write.
#[derive(Clone)]
enum Op {
    Null(u8, u8),
    Bytes(u8, u8, Option<u32>, Box<[u8]>),
    I64(u8, u8, i64),
    F64(u8, u8, f64),
    Bool(u8, u8, bool),
    I32(u8, u8, i32),
}

/// A resource and scope as the leaf writes of one row (per leaf), with byte values interned in
/// the leaves' dictionaries once.
struct Recorder<'l> {
    leaves: &'l mut [Leaf],
    ops: Vec<(usize, Op)>,
}

impl Sink for Recorder<'_> {
    fn null(&mut self, leaf: usize, rep: u8, def: u8) {
        self.ops.push((leaf, Op::Null(rep, def)));
    }
    fn bytes(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8]) {
        let i = self.leaves[leaf].intern(v);
        self.ops.push((leaf, Op::Bytes(rep, def, i, v.into())));
    }
    fn key(&mut self, leaf: usize, rep: u8, def: u8, v: &[u8], _: &mut u32) {
        self.bytes(leaf, rep, def, v);
    }
    fn i64(&mut self, leaf: usize, rep: u8, def: u8, v: i64) {
        self.ops.push((leaf, Op::I64(rep, def, v)));
    }
    fn f64(&mut self, leaf: usize, rep: u8, def: u8, v: f64) {
        self.ops.push((leaf, Op::F64(rep, def, v)));
    }
    fn bool(&mut self, leaf: usize, rep: u8, def: u8, v: bool) {
        self.ops.push((leaf, Op::Bool(rep, def, v)));
    }
    fn i32(&mut self, leaf: usize, rep: u8, def: u8, v: i32) {
        self.ops.push((leaf, Op::I32(rep, def, v)));
    }
}

/// One attribute set's row being written: entries per map so far, and the type letters.
#[derive(Default)]
struct AttrRow {
    counts: [u32; 6],
    letters: Vec<u8>,
    grouped: bool,
    last: u8,
    /// Per map and position in the row: the key's dictionary index last time.
    hints: [Vec<u32>; 6],
}

impl AttrRow {
    #[inline(always)]
    fn entry(&mut self, out: &mut (impl Sink + ?Sized), set: usize, at: At, key: &str, v: Scalar<'_>) {
        // The map of the value's type (a table lookup, not a branch).
        let rank = match v {
            Scalar::Str(_) => 0,
            Scalar::Int(_) => 1,
            Scalar::Double(_) => 2,
            Scalar::Bool(_) => 3,
            Scalar::Bytes(_) => 4,
            Scalar::Strindex(_) | Scalar::Empty => 5,
        };
        let (k, (rep, def)) = self.slot(set, at, rank);
        let pos = self.counts[rank] as usize - 1;
        let hints = &mut self.hints[rank];
        if hints.len() <= pos {
            hints.resize(pos + 1, u32::MAX);
        }
        out.key(k, rep, def, key.as_bytes(), &mut hints[pos]);
        match v {
            Scalar::Str(x) => out.bytes(k + 1, rep, def, x.as_bytes()),
            Scalar::Int(x) => out.i64(k + 1, rep, def, x),
            Scalar::Double(x) => out.f64(k + 1, rep, def, x),
            Scalar::Bool(x) => out.bool(k + 1, rep, def, x),
            Scalar::Bytes(x) => out.bytes(k + 1, rep, def, x),
            Scalar::Strindex(x) => {
                let any = opentelemetry_proto::tonic::common::v1::AnyValue { value: Some(Value::StringValueStrindex(x)) };
                out.bytes(k + 1, rep, def, json_value(Some(&any)).as_bytes())
            }
            Scalar::Empty => out.bytes(k + 1, rep, def, json_value(None).as_bytes()),
        }
    }

    /// An entry whose value is an array or a map: its OTLP/JSON in the `_json` map.
    fn json_entry(&mut self, out: &mut (impl Sink + ?Sized), set: usize, at: At, kv: &KeyValue) {
        let (k, (rep, def)) = self.slot(set, at, 5);
        out.bytes(k, rep, def, kv.key.as_bytes());
        out.bytes(k + 1, rep, def, json_value(kv.value.as_ref()).as_bytes());
    }

    fn any(&mut self, out: &mut (impl Sink + ?Sized), set: usize, at: At, kv: &KeyValue) {
        match Scalar::of(kv) {
            Some(v) => self.entry(out, set, at, &kv.key, v),
            None => self.json_entry(out, set, at, kv),
        }
    }

    /// The key leaf of map `rank` and the levels of its next entry; notes the type letter.
    #[inline(always)]
    fn slot(&mut self, set: usize, at: At, rank: usize) -> (usize, (u8, u8)) {
        if self.letters.is_empty() {
            self.grouped = true;
            self.last = 0;
        }
        self.letters.push(super::schema::ATTRIBUTE_TYPES[rank].1);
        self.grouped &= rank as u8 >= self.last;
        self.last = rank as u8;
        let rep = if self.counts[rank] == 0 { at.first_rep } else { at.inner_rep };
        self.counts[rank] += 1;
        (set + 2 * rank, (rep, at.def + 1))
    }

    fn end(&mut self, out: &mut (impl Sink + ?Sized), set: usize, at: At) {
        for rank in 0..6 {
            if self.counts[rank] == 0 {
                out.null(set + 2 * rank, at.first_rep, at.def);
                out.null(set + 2 * rank + 1, at.first_rep, at.def);
            }
        }
        if self.letters.is_empty() || self.grouped {
            out.null(set + 12, at.first_rep, at.def);
        } else {
            out.bytes(set + 12, at.first_rep, at.def + 1, &self.letters);
        }
        self.counts = [0; 6];
        self.letters.clear();
    }

    fn push(&mut self, out: &mut (impl Sink + ?Sized), set: usize, at: At, kvs: &[KeyValue]) {
        kvs.iter().for_each(|kv| self.any(out, set, at, kv));
        self.end(out, set, at);
    }
}

/// What [`RowGroupEncoder::push_encoded`] did with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Every span went in; this many.
    Rows(usize),
    /// A span falls in another partition than the encoder's rows (or than the batch's first
    /// span): nothing of the batch went in.
    OtherPartition,
}

/// Everything to undo a batch.
struct Checkpoint {
    marks: Vec<Mark>,
    rows: u64,
    bucket: Option<i64>,
}

/// One row group of the archive schema being built straight from OTLP protobuf.
pub struct RowGroupEncoder {
    leaves: Vec<Leaf>,
    codec: Codec,
    compression: Compression,
    rows: u64,
    /// Nanoseconds per partition (`None`: one partition), and the partition of the rows.
    bucket_ns: Option<i64>,
    bucket: Option<i64>,
    /// Start times outside `[lo, hi]` are partitioned as `fallback` (see [`RowGroupEncoder::set_window`]).
    window: Option<(i64, i64, i64)>,
    /// Spans of the last push partitioned by the fallback time.
    skewed: u64,
    /// Resource and scope attributes the last push's context budget cut.
    truncated: u64,
    /// The batch's resources and scopes, recorded; the one being repeated and how many times.
    contexts: Vec<Vec<(usize, Op)>>,
    repeat: Option<(u32, u32)>,
    /// Rows whose events / links are empty, not yet written to those leaves.
    no_events: u32,
    no_links: u32,
    /// The span being added wrote its events / links (the slow path) already.
    wrote_events: bool,
    wrote_links: bool,
    attrs: AttrRow,
    other: AttrRow,
    mismatch: bool,
}

impl RowGroupEncoder {
    /// An encoder for files with the Parquet schema `parquet` (the archive schema converted by
    /// `ArrowSchemaConverter`, as the file writer has it); rows are partitioned by start time in
    /// buckets of `bucket_ns` nanoseconds (`None`: no partitions). `dictionary` and `statistics`
    /// say, per leaf (its path's parts), whether to use a dictionary and to keep min/max (the
    /// archive's rules: [`super::schema::dictionary`], [`super::schema::statistics`]).
    pub fn new(
        parquet: &SchemaDescriptor,
        compression: Compression,
        bucket_ns: Option<i64>,
        dictionary: impl Fn(&[String]) -> bool,
        statistics: impl Fn(&[String]) -> bool,
    ) -> Result<Self, ParquetError> {
        if parquet.num_columns() != LEAVES {
            return Err(ParquetError::General(format!("archive schema has {} leaf columns, the page encoder knows {LEAVES}", parquet.num_columns())));
        }
        let mut leaves: Vec<Leaf> = parquet
            .columns()
            .iter()
            .map(|c| Leaf::new(c.clone(), dictionary(c.path().parts()), statistics(c.path().parts())))
            .collect();
        // The levels this encoder writes, against the schema's.
        let expect = [
            (TRACE_ID, 0, 0),
            (PARENT, 0, 1),
            (ATTRS, 1, 1),
            (ATTRS + 12, 0, 1),
            (EVENTS, 1, 1),
            (EVENTS + 2, 2, 2),
            (EVENTS + 14, 1, 2),
            (LINKS + 3, 2, 2),
            (RES_ATTRS, 1, 1),
            (SCOPE_SCHEMA, 0, 0),
        ];
        for (i, rep, def) in expect {
            let d = leaves[i].descr();
            if (d.max_rep_level(), d.max_def_level()) != (rep, def) {
                return Err(ParquetError::General(format!(
                    "archive leaf {} has levels ({}, {}), the page encoder writes ({rep}, {def})",
                    d.path(),
                    d.max_rep_level(),
                    d.max_def_level()
                )));
            }
        }
        // Each map's value leaf shares its key leaf's levels.
        for k in MAP_KEYS {
            let (key, value) = (leaves[k].descr(), leaves[k + 1].descr());
            let (kp, vp) = (key.path().parts(), value.path().parts());
            if kp.last().map(String::as_str) != Some("key")
                || vp.last().map(String::as_str) != Some("value")
                || kp[..kp.len() - 1] != vp[..vp.len() - 1]
                || (key.max_rep_level(), key.max_def_level()) != (value.max_rep_level(), value.max_def_level())
            {
                return Err(ParquetError::General(format!("archive leaves {} and {} are not one map's key and value", key.path(), value.path())));
            }
            leaves[k + 1].share_levels();
        }
        Ok(RowGroupEncoder {
            leaves,
            codec: Codec::new(compression)?,
            compression,
            rows: 0,
            bucket_ns,
            bucket: None,
            window: None,
            skewed: 0,
            truncated: 0,
            contexts: Vec::new(),
            repeat: None,
            no_events: 0,
            no_links: 0,
            wrote_events: false,
            wrote_links: false,
            attrs: AttrRow::default(),
            other: AttrRow::default(),
            mismatch: false,
        })
    }

    /// Rows in the row group so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The partition bucket (start time / bucket size) of the rows, if any.
    pub fn bucket(&self) -> Option<i64> {
        self.bucket
    }

    /// Spans whose start time lies outside `[lo, hi]` go to the partition of `fallback` instead
    /// (their rows keep their own start time): a sender's absurd clock cannot create a directory
    /// and a file per span. `None`: every span by its start time.
    pub fn set_window(&mut self, window: Option<(i64, i64, i64)>) {
        self.window = window;
    }

    /// Resource and scope attributes the last successful push cut to its context budget
    /// ([`super::budget`]).
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Spans of the last successful push that were partitioned by the window's fallback time.
    pub fn skewed(&self) -> u64 {
        self.skewed
    }

    /// Bytes the row group holds so far (compressed pages, raw values of unfinished pages).
    pub fn buffered_bytes(&self) -> usize {
        self.leaves.iter().map(|l| l.buffered_bytes()).sum()
    }

    /// Adds the spans of OTLP `TracesData` buffers, all or none.
    pub fn push_encoded(&mut self, bufs: &[&[u8]]) -> Result<Pushed, ArrowError> {
        let cp = Checkpoint { marks: self.leaves.iter().map(|l| l.mark()).collect(), rows: self.rows, bucket: self.bucket };
        self.contexts.clear();
        self.skewed = 0;
        self.truncated = 0;
        self.mismatch = false;
        let walked = walk(bufs.iter().copied(), self);
        let walked = walked.and_then(|truncated| self.flush_repeats().map(|()| truncated).map_err(ArrowError::from));
        if let Ok(truncated) = walked {
            self.truncated = truncated;
        }
        if let Err(e) = walked {
            for (l, m) in self.leaves.iter_mut().zip(cp.marks) {
                l.rewind(m);
            }
            (self.rows, self.bucket, self.repeat, self.no_events, self.no_links, self.skewed) = (cp.rows, cp.bucket, None, 0, 0, 0);
            (self.wrote_events, self.wrote_links) = (false, false);
            (self.attrs, self.other) = (AttrRow::default(), AttrRow::default());
            return if std::mem::take(&mut self.mismatch) { Ok(Pushed::OtherPartition) } else { Err(e) };
        }
        let mut i = 0;
        while i < LEAVES {
            if self.leaves.get(i + 1).is_some_and(Leaf::shares_levels) {
                let (key, value) = self.leaves[i..].split_at_mut(1);
                Leaf::maybe_cut_pair(&mut key[0], &mut value[0], &mut self.codec)?;
                i += 2;
            } else {
                self.leaves[i].maybe_cut(&mut self.codec)?;
                i += 1;
            }
        }
        Ok(Pushed::Rows((self.rows - cp.rows) as usize))
    }

    /// Closes the row group: one column chunk per leaf, in schema order, to splice into a
    /// row group with `append_column`. The encoder is empty afterwards.
    pub fn finish(&mut self) -> Result<Vec<(Bytes, ColumnCloseResult)>, ParquetError> {
        self.flush_repeats()?;
        for &k in MAP_KEYS.iter() {
            let (key, value) = self.leaves[k..].split_at_mut(1);
            Leaf::cut_pair(&mut key[0], &mut value[0], &mut self.codec)?;
        }
        let out = self.leaves.iter_mut().map(|l| l.close(&mut self.codec, self.compression)).collect();
        self.rows = 0;
        self.bucket = None;
        out
    }

    /// Writes the pending repeats: the current context for its spans, empty events and links.
    fn flush_repeats(&mut self) -> Result<(), ParquetError> {
        self.flush_empty_lists();
        if let Some((ctx, n)) = self.repeat.take() {
            let ops = &self.contexts[ctx as usize];
            // Leaves written once per row: each op `n` times; leaves with several writes per row
            // (attribute entries): the row's ops `n` times over.
            let mut i = 0;
            while i < ops.len() {
                let leaf = ops[i].0;
                let mut j = i + 1;
                while j < ops.len() && ops[j].0 == leaf {
                    j += 1;
                }
                let l = &mut self.leaves[leaf];
                if j == i + 1 {
                    replay(l, &ops[i].1, n);
                } else {
                    for _ in 0..n {
                        ops[i..j].iter().for_each(|(_, op)| replay(l, op, 1));
                    }
                }
                i = j;
            }
        }
        Ok(())
    }

    /// Writes the pending empty events and links (before a span's own). The pending context
    /// repeats stay: they go to other leaves, and the context may not be added yet (a
    /// `ScopeSpans`' context comes after its spans).
    fn flush_empty_lists(&mut self) {
        if self.no_events > 0 {
            self.leaves[EVENTS..EVENTS + EVENT_LEAVES].iter_mut().for_each(|l| l.null(0, 0, self.no_events));
            self.no_events = 0;
        }
        if self.no_links > 0 {
            self.leaves[LINKS..LINKS + LINK_LEAVES].iter_mut().for_each(|l| l.null(0, 0, self.no_links));
            self.no_links = 0;
        }
    }

    fn event(&mut self, first: bool, e: &span::Event) {
        let (rep, l) = (if first { 0 } else { 1 }, &mut self.leaves[..]);
        l[EVENTS].i64(rep, 1, nanos(e.time_unix_nano));
        l[EVENTS + 1].bytes(rep, 1, e.name.as_bytes());
        self.other.push(l, EVENTS + 2, At { first_rep: rep, inner_rep: 2, def: 1 }, &e.attributes);
        l[EVENTS + 2 + SET_LEAVES].i32(rep, 1, e.dropped_attributes_count as i32, 1);
    }

    fn link(&mut self, first: bool, k: &span::Link) {
        let (rep, l) = (if first { 0 } else { 1 }, &mut self.leaves[..]);
        l[LINKS].fixed(rep, 1, &fixed::<16>(&k.trace_id));
        l[LINKS + 1].fixed(rep, 1, &fixed::<8>(&k.span_id));
        l[LINKS + 2].bytes(rep, 1, k.trace_state.as_bytes());
        self.other.push(l, LINKS + 3, At { first_rep: rep, inner_rep: 2, def: 1 }, &k.attributes);
        l[LINKS + 3 + SET_LEAVES].i32(rep, 1, k.dropped_attributes_count as i32, 1);
        l[LINKS + 4 + SET_LEAVES].i32(rep, 1, k.flags as i32, 1);
    }
}

fn replay(l: &mut Leaf, op: &Op, n: u32) {
    match op {
        Op::Null(r, d) => l.null(*r, *d, n),
        Op::Bytes(r, d, i, v) => l.repeat_bytes(*r, *d, *i, v, n),
        Op::I32(r, d, v) => l.i32(*r, *d, *v, n),
        Op::I64(r, d, v) => (0..n).for_each(|_| l.i64(*r, *d, *v)),
        Op::F64(r, d, v) => (0..n).for_each(|_| l.f64(*r, *d, *v)),
        Op::Bool(r, d, v) => (0..n).for_each(|_| l.bool(*r, *d, *v)),
    }
}

impl Rows for RowGroupEncoder {
    fn next_context(&self) -> u32 {
        self.contexts.len() as u32
    }

    fn context(&mut self, res: &Resource, res_schema_url: &str, scope: &InstrumentationScope, scope_schema_url: &str) -> u32 {
        let mut r = Recorder { leaves: &mut self.leaves, ops: Vec::new() };
        let svc = res.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        match svc {
            Some(s) => r.bytes(SERVICE, 0, 1, s.as_bytes()),
            None => r.null(SERVICE, 0, 0),
        }
        let mut row = AttrRow::default();
        row.push(&mut r, RES_ATTRS, TOP, &res.attributes);
        r.i32(RES_DROPPED, 0, 0, res.dropped_attributes_count as i32);
        r.bytes(RES_SCHEMA, 0, 0, res_schema_url.as_bytes());
        if res.entity_refs.is_empty() {
            r.null(RES_ENTITIES, 0, 0);
        } else {
            r.bytes(RES_ENTITIES, 0, 1, serde_json::to_string(&res.entity_refs).unwrap_or_default().as_bytes());
        }
        r.bytes(SCOPE_NAME, 0, 0, scope.name.as_bytes());
        r.bytes(SCOPE_VERSION, 0, 0, scope.version.as_bytes());
        row.push(&mut r, SCOPE_ATTRS, TOP, &scope.attributes);
        r.i32(SCOPE_DROPPED, 0, 0, scope.dropped_attributes_count as i32);
        r.bytes(SCOPE_SCHEMA, 0, 0, scope_schema_url.as_bytes());
        // Grouped by leaf (stable: a leaf's writes keep their order), for the replay.
        let mut ops = r.ops;
        ops.sort_by_key(|(leaf, _)| *leaf);
        self.contexts.push(ops);
        (self.contexts.len() - 1) as u32
    }

    #[inline]
    fn attr(&mut self, key: &str, v: Scalar<'_>) {
        self.attrs.entry(&mut self.leaves[..], ATTRS, TOP, key, v);
    }

    fn attr_entry(&mut self, kv: &KeyValue) {
        self.attrs.any(&mut self.leaves[..], ATTRS, TOP, kv);
    }

    fn end_attrs(&mut self) {
        self.attrs.end(&mut self.leaves[..], ATTRS, TOP);
    }

    fn span_fields(&mut self, f: &SpanFields<'_>, ctx: u32) -> Result<(), ArrowError> {
        let (start, end) = (nanos(f.start), nanos(f.end));
        if let Some(ns) = self.bucket_ns {
            let t = match self.window {
                Some((lo, hi, fallback)) if start < lo || start > hi => {
                    self.skewed += 1;
                    fallback
                }
                _ => start,
            };
            let b = t.max(0) / ns;
            match self.bucket {
                None => self.bucket = Some(b),
                Some(have) if have != b => {
                    self.mismatch = true;
                    return Err(ArrowError::InvalidArgumentError("span in another partition".into()));
                }
                Some(_) => {}
            }
        }
        match &mut self.repeat {
            Some((c, n)) if *c == ctx => *n += 1,
            _ => {
                self.flush_repeats().map_err(ArrowError::from)?;
                self.repeat = Some((ctx, 1));
            }
        }
        // Empty events and links are counted, and written as one run later.
        if !std::mem::take(&mut self.wrote_events) {
            self.no_events += 1;
        }
        if !std::mem::take(&mut self.wrote_links) {
            self.no_links += 1;
        }
        let l = &mut self.leaves;
        l[TRACE_ID].fixed(0, 0, &fixed::<16>(f.trace_id));
        l[SPAN_ID].fixed(0, 0, &fixed::<8>(f.span_id));
        if f.parent_span_id.is_empty() {
            l[PARENT].null(0, 0, 1);
        } else {
            l[PARENT].fixed(0, 1, &fixed::<8>(f.parent_span_id));
        }
        l[TRACE_STATE].bytes(0, 0, f.trace_state.as_bytes());
        l[FLAGS].i32(0, 0, f.flags as i32, 1);
        l[NAME].bytes(0, 0, f.name.as_bytes());
        l[KIND].bytes(0, 0, kind_name(f.kind).as_bytes());
        l[START].i64(0, 0, start);
        l[END].i64(0, 0, end);
        l[DURATION].i64(0, 0, end.saturating_sub(start));
        l[STATUS_CODE].bytes(0, 0, status_name(f.status_code).as_bytes());
        l[STATUS_MESSAGE].bytes(0, 0, f.status_message.as_bytes());
        l[DROPPED_ATTRS].i32(0, 0, f.dropped_attributes_count as i32, 1);
        l[DROPPED_EVENTS].i32(0, 0, f.dropped_events_count as i32, 1);
        l[DROPPED_LINKS].i32(0, 0, f.dropped_links_count as i32, 1);
        self.rows += 1;
        Ok(())
    }

    fn span(&mut self, s: &Span, ctx: u32) -> Result<(), ArrowError> {
        self.attrs.push(&mut self.leaves[..], ATTRS, TOP, &s.attributes);
        if !s.events.is_empty() {
            self.flush_empty_lists();
            s.events.iter().enumerate().for_each(|(i, e)| self.event(i == 0, e));
            self.wrote_events = true;
        }
        if !s.links.is_empty() {
            self.flush_empty_lists();
            s.links.iter().enumerate().for_each(|(i, k)| self.link(i == 0, k));
            self.wrote_links = true;
        }
        self.span_fields(&SpanFields::of(s), ctx)
    }
}

/// The Parquet leaf columns of the archive schema, as the writer's file has them.
pub fn parquet_schema() -> Arc<SchemaDescriptor> {
    Arc::new(datafusion::parquet::arrow::ArrowSchemaConverter::new().convert(&super::schema::schema()).expect("the archive schema converts to Parquet"))
}

#[cfg(test)]
mod tests;
