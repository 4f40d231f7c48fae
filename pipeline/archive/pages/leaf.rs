//! One Parquet leaf column of a row group being built: its levels and values, cut into Data
//! Pages (v1, compressed) as they fill, and closed into a column chunk.

use bytes::Bytes;
use datafusion::parquet::basic::{Compression, Encoding, Type as Physical};
use datafusion::parquet::column::page::{CompressedPage, Page, PageWriter};
use datafusion::parquet::column::writer::ColumnCloseResult;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ColumnChunkMetaData, OffsetIndexBuilder};
use datafusion::parquet::file::statistics::Statistics;
use datafusion::parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use datafusion::parquet::schema::types::ColumnDescPtr;

use super::delta::delta_binary_packed;
use super::levels::{Hybrid, Levels, bit_width};

/// A page is cut (between batches) once its values take this many bytes or rows, as arrow-rs's
/// defaults (1 MiB data pages, 20,000 rows).
const PAGE_BYTES: usize = 1 << 20;
const PAGE_ROWS: u64 = 20_000;
/// A dictionary past this size stops growing: the rest of the chunk is written without one (arrow-rs's
/// default dictionary page limit, 1 MiB).
const DICT_BYTES: usize = 1 << 20;
/// A dictionary that filled within the first `1 / DICT_FILLED_EARLY` of its row group's rows
/// (unique values: URLs, request ids) is not started again for the next `DICT_SKIP` row groups:
/// hashing every value into a dictionary that is dropped after a few thousand rows costs more than
/// its pages save (2–2.6% of the write's CPU on the benchmark load). It is tried again after that,
/// in case the values changed.
const DICT_FILLED_EARLY: u64 = 4;
const DICT_SKIP: u8 = 7;

/// The page compressor of a row group (one per encoder, reused for every page).
pub(crate) struct Codec {
    kind: Kind,
    /// A page's raw bytes, and its compressed bytes: reused, so that page-sized buffers are not
    /// allocated (and faulted in) for every page.
    pub(crate) raw: Vec<u8>,
    out: Vec<u8>,
}

enum Kind {
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Snappy(snap::raw::Encoder),
    None,
}

impl Codec {
    pub(crate) fn new(c: Compression) -> Result<Self, ParquetError> {
        let kind = match c {
            Compression::ZSTD(level) => {
                Kind::Zstd(Box::new(zstd::bulk::Compressor::new(level.compression_level()).map_err(|e| ParquetError::General(format!("zstd: {e}")))?))
            }
            Compression::SNAPPY => Kind::Snappy(snap::raw::Encoder::new()),
            Compression::UNCOMPRESSED => Kind::None,
            other => return Err(ParquetError::NYI(format!("archive pages compressed with {other}"))),
        };
        Ok(Codec { kind, raw: Vec::new(), out: Vec::new() })
    }

    /// `raw`, compressed, as an exactly-sized buffer.
    fn compress(&mut self, raw: &[u8]) -> Result<Bytes, ParquetError> {
        let n = match &mut self.kind {
            Kind::None => return Ok(Bytes::copy_from_slice(raw)),
            Kind::Zstd(c) => {
                self.out.clear();
                self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                c.compress_to_buffer(raw, &mut self.out).map_err(|e| ParquetError::General(format!("zstd: {e}")))?
            }
            Kind::Snappy(e) => {
                self.out.resize(snap::raw::max_compress_len(raw.len()), 0);
                e.compress(raw, &mut self.out).map_err(|e| ParquetError::General(format!("snappy: {e}")))?
            }
        };
        Ok(Bytes::copy_from_slice(&self.out[..n]))
    }

    /// The page in `self.raw`, compressed.
    fn compress_raw(&mut self) -> Result<Bytes, ParquetError> {
        let raw = std::mem::take(&mut self.raw);
        let out = self.compress(&raw);
        self.raw = raw;
        out
    }
}

/// A byte-array dictionary: its entries kept as the PLAIN dictionary page itself (each a 4-byte
/// length then the bytes), where each one starts, and a hash table of entry numbers.
#[derive(Default)]
struct Dict {
    page: Vec<u8>,
    starts: Vec<u32>,
    index: hashbrown::HashTable<u32>,
}

/// Entry `i` of a dictionary page whose entries start at `starts`.
#[inline]
fn entry<'p>(page: &'p [u8], starts: &[u32], i: u32) -> Option<&'p [u8]> {
    let at = *starts.get(i as usize)? as usize;
    let n = u32::from_le_bytes(page[at - 4..at].try_into().expect("a 4-byte length")) as usize;
    Some(&page[at..at + n])
}

fn hash(v: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(v)
}

impl Dict {
    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Entry `i`'s bytes.
    #[inline]
    fn get(&self, i: u32) -> Option<&[u8]> {
        entry(&self.page, &self.starts, i)
    }

    #[inline]
    fn intern(&mut self, v: &[u8]) -> u32 {
        let h = hash(v);
        let Dict { page, starts, index } = self;
        if let Some(&i) = index.find(h, |&i| entry(page, starts, i) == Some(v)) {
            return i;
        }
        let i = starts.len() as u32;
        page.extend_from_slice(&(v.len() as u32).to_le_bytes());
        starts.push(page.len() as u32);
        page.extend_from_slice(v);
        index.insert_unique(h, i, |&j| hash(entry(page, starts, j).expect("an entry")));
        i
    }
}

/// The values of a leaf, by physical type.
enum Values {
    /// BYTE_ARRAY: dictionary indices while the dictionary is in use, then DELTA_LENGTH_BYTE_ARRAY
    /// (each value's length in `lens`, its bytes appended to `plain`).
    /// `open`: the dictionary still takes new values (once full, it is kept for the pages
    /// that index it and the rest of the chunk is DELTA_LENGTH_BYTE_ARRAY).
    Bytes {
        dict: Option<Dict>,
        open: bool,
        idx: Vec<u32>,
        lens: Vec<u32>,
        plain: Vec<u8>,
        last: Option<(u32, usize)>,
    },
    Fixed(Vec<u8>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

/// Min and max of a leaf's values, for the columns queries prune with.
#[derive(Default)]
struct Stats {
    min_i64: i64,
    max_i64: i64,
    min_b: Option<Vec<u8>>,
    max_b: Option<Vec<u8>>,
    any: bool,
}

pub(crate) struct Leaf {
    descr: ColumnDescPtr,
    max_rep: u8,
    max_def: u8,
    /// A map's value leaf: its levels are its key leaf's (pushed there only), and its pages are
    /// cut together with the key leaf's ([`Leaf::cut_pair`]).
    shares_levels: bool,
    rep: Levels,
    def: Levels,
    values: Values,
    /// Values (not levels) in the current page, and rows started in it.
    page_values: usize,
    page_rows: u64,
    /// Compressed data pages and the rows each starts (rows are whole within a page).
    pages: Vec<(CompressedPage, u64)>,
    encodings: Vec<Encoding>,
    stats: Option<Stats>,
    nulls: u64,
    levels_total: u64,
    /// A leaf without levels counts its values as rows.
    rows_total: u64,
    /// The row the dictionary filled at (this row group), and how many row groups are still to
    /// be written without one ([`DICT_SKIP`]).
    dict_full_at: Option<u64>,
    no_dict: u8,
}

/// Where a leaf was, to undo a batch that has to go another way.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    rep: u64,
    def: u64,
    values: usize,
    lens: usize,
    plain: usize,
    page_rows: u64,
    page_values: usize,
    nulls: u64,
}

impl Leaf {
    pub(crate) fn new(descr: ColumnDescPtr, dictionary: bool, statistics: bool) -> Self {
        let values = match descr.physical_type() {
            Physical::BYTE_ARRAY => Values::Bytes { dict: dictionary.then(Dict::default), open: dictionary, idx: Vec::new(), lens: Vec::new(), plain: Vec::new(), last: None },
            Physical::FIXED_LEN_BYTE_ARRAY => Values::Fixed(Vec::new()),
            Physical::INT64 => Values::I64(Vec::new()),
            Physical::INT32 => Values::I32(Vec::new()),
            Physical::DOUBLE => Values::F64(Vec::new()),
            Physical::BOOLEAN => Values::Bool(Vec::new()),
            other => unreachable!("the archive schema has no {other} column"),
        };
        Leaf {
            max_rep: descr.max_rep_level() as u8,
            max_def: descr.max_def_level() as u8,
            shares_levels: false,
            descr,
            rep: Levels::default(),
            def: Levels::default(),
            values,
            page_values: 0,
            page_rows: 0,
            pages: Vec::new(),
            encodings: Vec::new(),
            stats: statistics.then(Stats::default),
            nulls: 0,
            levels_total: 0,
            rows_total: 0,
            dict_full_at: None,
            no_dict: 0,
        }
    }

    pub(crate) fn descr(&self) -> &ColumnDescPtr {
        &self.descr
    }

    /// Levels for a slot without a value (an absent optional, an empty list or map); `n` of them.
    #[inline]
    pub(crate) fn null(&mut self, rep: u8, def: u8, n: u32) {
        self.slots(rep, def, n);
        if self.max_rep == 0 {
            self.nulls += n as u64;
        }
    }

    /// The levels of `n` slots (values or not) and the rows they start.
    #[inline(always)]
    fn slots(&mut self, rep: u8, def: u8, n: u32) {
        // Levels are kept only where the schema has them (a required top-level leaf has none),
        // and once for a map's key and value leaves.
        if !self.shares_levels {
            if self.max_rep > 0 {
                self.rep.push(rep, n);
            }
            if self.max_def > 0 {
                self.def.push(def, n);
            }
        }
        if rep == 0 {
            self.page_rows += n as u64;
        }
    }

    /// The levels of one value.
    #[inline(always)]
    fn levels(&mut self, rep: u8, def: u8) {
        self.slots(rep, def, 1);
        self.page_values += 1;
    }

    #[inline(always)]
    pub(crate) fn bytes(&mut self, rep: u8, def: u8, v: &[u8]) {
        self.levels(rep, def);
        let Values::Bytes { dict, open, idx, lens, plain, last } = &mut self.values else { unreachable!("a byte-array leaf") };
        match dict {
            Some(d) if *open => {
                // The same value as the previous one (repeated names, kinds, statuses): no hashing.
                if let Some((i, len)) = *last
                    && len == v.len()
                    && d.get(i).is_some_and(|e| same(e, v))
                {
                    idx.push(i);
                    return;
                }
                let before = d.len();
                let i = d.intern(v);
                *last = Some((i, v.len()));
                idx.push(i);
                // Min/max: a value already in the dictionary was noted when it was added.
                if d.len() > before
                    && let Some(s) = &mut self.stats
                {
                    note_bytes(s, v);
                }
            }
            _ => {
                lens.push(v.len() as u32);
                plain.extend_from_slice(v);
                if let Some(s) = &mut self.stats {
                    note_bytes(s, v);
                }
            }
        }
    }

    /// A value expected to equal the dictionary entry `hint` (an attribute key at the same
    /// position as in the previous row): checked with one comparison instead of a lookup.
    #[inline(always)]
    pub(crate) fn bytes_hinted(&mut self, rep: u8, def: u8, v: &[u8], hint: &mut u32) {
        let stats = self.stats.is_some();
        if let Values::Bytes { dict: Some(d), open: true, idx, .. } = &mut self.values
            && !stats
        {
            let i = match d.get(*hint) {
                Some(e) if same(e, v) => *hint,
                _ => d.intern(v),
            };
            *hint = i;
            idx.push(i);
            self.levels(rep, def);
            return;
        }
        self.bytes(rep, def, v);
    }

    /// The dictionary index of `v` (for values repeated many times, interned once), if this leaf
    /// has a dictionary in use.
    pub(crate) fn intern(&mut self, v: &[u8]) -> Option<u32> {
        match &mut self.values {
            Values::Bytes { dict: Some(d), open: true, .. } => Some(d.intern(v)),
            _ => None,
        }
    }

    /// `n` copies of a value interned with [`Leaf::intern`] (`i`, valid while the dictionary is
    /// in use) whose bytes are `v`.
    pub(crate) fn repeat_bytes(&mut self, rep: u8, def: u8, i: Option<u32>, v: &[u8], n: u32) {
        if n == 0 {
            return;
        }
        self.slots(rep, def, n);
        self.page_values += n as usize;
        if let Some(s) = &mut self.stats {
            note_bytes(s, v);
        }
        let Values::Bytes { dict, open, idx, lens, plain, .. } = &mut self.values else { unreachable!("a byte-array leaf") };
        match (dict, i) {
            (Some(_), Some(i)) if *open => idx.extend(std::iter::repeat_n(i, n as usize)),
            (Some(d), None) if *open => {
                let i = d.intern(v);
                idx.extend(std::iter::repeat_n(i, n as usize));
            }
            _ => {
                lens.extend(std::iter::repeat_n(v.len() as u32, n as usize));
                for _ in 0..n {
                    plain.extend_from_slice(v);
                }
            }
        }
    }

    #[inline]
    pub(crate) fn fixed(&mut self, rep: u8, def: u8, v: &[u8]) {
        self.levels(rep, def);
        let Values::Fixed(b) = &mut self.values else { unreachable!("a fixed-size leaf") };
        b.extend_from_slice(v);
    }

    #[inline(always)]
    pub(crate) fn i64(&mut self, rep: u8, def: u8, v: i64) {
        self.levels(rep, def);
        if let Some(s) = &mut self.stats {
            if !s.any {
                (s.min_i64, s.max_i64, s.any) = (v, v, true);
            }
            s.min_i64 = s.min_i64.min(v);
            s.max_i64 = s.max_i64.max(v);
        }
        let Values::I64(b) = &mut self.values else { unreachable!("an int64 leaf") };
        b.push(v);
    }

    #[inline]
    pub(crate) fn i32(&mut self, rep: u8, def: u8, v: i32, n: u32) {
        if n == 0 {
            return;
        }
        self.slots(rep, def, n);
        self.page_values += n as usize;
        let Values::I32(b) = &mut self.values else { unreachable!("an int32 leaf") };
        b.extend(std::iter::repeat_n(v, n as usize));
    }

    #[inline]
    pub(crate) fn f64(&mut self, rep: u8, def: u8, v: f64) {
        self.levels(rep, def);
        let Values::F64(b) = &mut self.values else { unreachable!("a double leaf") };
        b.push(v);
    }

    #[inline]
    pub(crate) fn bool(&mut self, rep: u8, def: u8, v: bool) {
        self.levels(rep, def);
        let Values::Bool(b) = &mut self.values else { unreachable!("a boolean leaf") };
        b.push(v);
    }

    pub(crate) fn mark(&self) -> Mark {
        let (values, lens, plain) = match &self.values {
            Values::Bytes { idx, lens, plain, .. } => (idx.len(), lens.len(), plain.len()),
            Values::Fixed(b) => (b.len(), 0, 0),
            Values::I64(b) => (b.len(), 0, 0),
            Values::I32(b) => (b.len(), 0, 0),
            Values::F64(b) => (b.len(), 0, 0),
            Values::Bool(b) => (b.len(), 0, 0),
        };
        Mark { rep: self.rep.len(), def: self.def.len(), values, lens, plain, page_rows: self.page_rows, page_values: self.page_values, nulls: self.nulls }
    }

    /// Undoes everything pushed since `m` (taken since the last page cut). Dictionary entries
    /// added since stay, unused (allowed), and may widen the statistics, which stay true bounds.
    pub(crate) fn rewind(&mut self, m: Mark) {
        self.rep.truncate(m.rep);
        self.def.truncate(m.def);
        self.page_rows = m.page_rows;
        self.nulls = m.nulls;
        self.page_values = m.page_values;
        match &mut self.values {
            Values::Bytes { idx, lens, plain, last, .. } => {
                idx.truncate(m.values);
                lens.truncate(m.lens);
                plain.truncate(m.plain);
                *last = None;
            }
            Values::Fixed(b) => b.truncate(m.values),
            Values::I64(b) => b.truncate(m.values),
            Values::I32(b) => b.truncate(m.values),
            Values::F64(b) => b.truncate(m.values),
            Values::Bool(b) => b.truncate(m.values),
        }
    }

    fn page_bytes(&self) -> usize {
        match &self.values {
            // (Counted as PLAIN would take them, a 4-byte length each.)
            Values::Bytes { idx, lens, plain, .. } => (idx.len() + lens.len()) * 4 + plain.len(),
            Values::Fixed(b) => b.len(),
            Values::I64(b) => b.len() * 8,
            Values::I32(b) => b.len() * 4,
            Values::F64(b) => b.len() * 8,
            Values::Bool(b) => b.len() / 8,
        }
    }

    /// Makes this leaf (a map's value leaf) take its levels from its key leaf.
    pub(crate) fn share_levels(&mut self) {
        self.shares_levels = true;
    }

    /// Whether this leaf takes its levels from the leaf before it (its map's key leaf).
    pub(crate) fn shares_levels(&self) -> bool {
        self.shares_levels
    }

    /// Whether the page is full, and whether the dictionary is (it then stops growing).
    fn full(&self) -> (bool, bool) {
        let dict_full = matches!(&self.values, Values::Bytes { dict: Some(d), open: true, .. } if d.page.len() >= DICT_BYTES);
        (dict_full || self.page_bytes() >= PAGE_BYTES || self.page_rows >= PAGE_ROWS, dict_full)
    }

    fn close_dict(&mut self) {
        if let Values::Bytes { open, last, .. } = &mut self.values {
            if *open {
                self.dict_full_at = Some(self.rows_total + self.page_rows);
            }
            *open = false;
            *last = None;
        }
    }

    /// Between batches: cuts the page if it is full, and stops growing a full dictionary.
    pub(crate) fn maybe_cut(&mut self, codec: &mut Codec) -> Result<(), ParquetError> {
        let (cut, dict_full) = self.full();
        if cut {
            self.cut(codec, None)?;
        }
        if dict_full {
            self.close_dict();
        }
        Ok(())
    }

    /// [`Leaf::maybe_cut`] for a map's key leaf and the value leaf that shares its levels: both
    /// pages are cut when either is full.
    pub(crate) fn maybe_cut_pair(key: &mut Leaf, value: &mut Leaf, codec: &mut Codec) -> Result<(), ParquetError> {
        let ((kc, kd), (vc, vd)) = (key.full(), value.full());
        if kc || vc {
            Leaf::cut_pair(key, value, codec)?;
        }
        if kd {
            key.close_dict();
        }
        if vd {
            value.close_dict();
        }
        Ok(())
    }

    /// Cuts the pages of a map's key leaf and of the value leaf sharing its levels.
    pub(crate) fn cut_pair(key: &mut Leaf, value: &mut Leaf, codec: &mut Codec) -> Result<(), ParquetError> {
        debug_assert!(value.shares_levels && (key.page_rows, key.page_values) == (value.page_rows, value.page_values), "a map's key and value leaves in step");
        value.cut(codec, Some((&key.rep, &key.def)))?;
        key.cut(codec, None)
    }

    /// Encodes the current page (levels and values) and compresses it.
    /// `shared`: the levels of a leaf sharing them (its key leaf's), else its own.
    fn cut(&mut self, codec: &mut Codec, shared: Option<(&Levels, &Levels)>) -> Result<(), ParquetError> {
        // A leaf without levels (required, not nested) counts its values as rows.
        let flat = self.max_rep == 0 && self.max_def == 0;
        let (rep, def) = shared.unwrap_or((&self.rep, &self.def));
        let num_values = if flat { self.page_values as u64 } else { rep.len().max(def.len()) };
        if num_values == 0 {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut codec.raw);
        buf.clear();
        if self.max_rep > 0 {
            rep.write_v1(&mut buf, self.max_rep);
        }
        if self.max_def > 0 {
            def.write_v1(&mut buf, self.max_def);
        }
        let encoding = match &mut self.values {
            Values::Bytes { dict: Some(d), idx, .. } if !idx.is_empty() => {
                let width = bit_width(d.len().saturating_sub(1) as u32);
                buf.push(width);
                let mut h = Hybrid::new(&mut buf, width);
                h.values(idx);
                h.finish();
                idx.clear();
                Encoding::RLE_DICTIONARY
            }
            Values::Bytes { lens, plain, .. } => {
                delta_binary_packed(&mut buf, lens);
                buf.extend_from_slice(plain);
                lens.clear();
                plain.clear();
                Encoding::DELTA_LENGTH_BYTE_ARRAY
            }
            Values::Fixed(b) => {
                buf.extend_from_slice(b);
                b.clear();
                Encoding::PLAIN
            }
            Values::I64(b) => plain_le(&mut buf, b, |v| v.to_le_bytes()),
            Values::I32(b) => plain_le(&mut buf, b, |v| v.to_le_bytes()),
            Values::F64(b) => plain_le(&mut buf, b, |v| v.to_le_bytes()),
            Values::Bool(b) => {
                // PLAIN booleans: bit-packed, least significant bit first.
                for chunk in b.chunks(8) {
                    buf.push(chunk.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | ((v as u8) << i)));
                }
                b.clear();
                Encoding::PLAIN
            }
        };
        if !self.encodings.contains(&encoding) {
            self.encodings.push(encoding);
        }
        let raw = buf.len();
        codec.raw = buf;
        let page = Page::DataPage {
            buf: codec.compress_raw()?,
            num_values: num_values as u32,
            encoding,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let rows = if flat { self.page_values as u64 } else { self.page_rows };
        self.pages.push((CompressedPage::new(page, raw), rows));
        self.levels_total += num_values;
        self.rows_total += rows;
        self.rep.clear();
        self.def.clear();
        self.page_values = 0;
        self.page_rows = 0;
        Ok(())
    }

    /// Bytes buffered so far (pages compressed, values not yet), for rolling files by size.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.pages.iter().map(|p| p.0.compressed_size()).sum::<usize>() + self.page_bytes()
    }

    /// The column chunk: dictionary page (if any) then the data pages, with its metadata. The
    /// leaf is empty again afterwards, ready for the next row group.
    pub(crate) fn close(&mut self, codec: &mut Codec, compression: Compression) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
        // (A leaf sharing levels had its last page cut with its key leaf's, by the caller.)
        if !self.shares_levels {
            self.cut(codec, None)?;
        }
        let mut tw = TrackedWrite::new(Vec::new());
        let (mut dict_off, mut data_off, mut unc, mut cmp) = (None, None, 0i64, 0i64);
        let mut encodings = vec![Encoding::RLE];
        // The offset index (where each page is, and its first row), as arrow-rs writes it.
        let mut offsets = OffsetIndexBuilder::new();
        {
            let mut pw = SerializedPageWriter::new(&mut tw);
            if let Values::Bytes { dict: Some(d), .. } = &self.values
                && self.encodings.contains(&Encoding::RLE_DICTIONARY)
            {
                let page = Page::DictionaryPage { buf: codec.compress(&d.page)?, num_values: d.len() as u32, encoding: Encoding::PLAIN, is_sorted: false };
                let spec = pw.write_page(CompressedPage::new(page, d.page.len()))?;
                dict_off = Some(spec.offset as i64);
                unc += spec.uncompressed_size as i64;
                cmp += spec.compressed_size as i64;
                encodings.push(Encoding::PLAIN);
            }
            for (page, rows) in self.pages.drain(..) {
                let spec = pw.write_page(page)?;
                data_off.get_or_insert(spec.offset as i64);
                offsets.append_row_count(rows as i64);
                offsets.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
                unc += spec.uncompressed_size as i64;
                cmp += spec.compressed_size as i64;
            }
        }
        for e in &self.encodings {
            if !encodings.contains(e) {
                encodings.push(*e);
            }
        }
        let stats = self.stats.as_mut().map(|s| {
            let nulls = Some(self.nulls);
            let st = match self.descr.physical_type() {
                Physical::INT64 => Statistics::int64(s.any.then_some(s.min_i64), s.any.then_some(s.max_i64), None, nulls, false),
                _ => Statistics::byte_array(s.min_b.take().map(Into::into), s.max_b.take().map(Into::into), None, nulls, false),
            };
            *s = Stats::default();
            st
        });
        let mut md = ColumnChunkMetaData::builder(self.descr.clone())
            .set_encodings(encodings)
            .set_num_values(self.levels_total as i64)
            .set_compression(compression)
            .set_total_compressed_size(cmp)
            .set_total_uncompressed_size(unc)
            .set_data_page_offset(data_off.unwrap_or(0))
            .set_dictionary_page_offset(dict_off);
        if let Some(st) = stats {
            md = md.set_statistics(st);
        }
        let result = ColumnCloseResult {
            bytes_written: cmp as u64,
            rows_written: self.rows_total,
            metadata: md.build()?,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(offsets.build()),
        };
        match self.dict_full_at.take() {
            Some(at) if at * DICT_FILLED_EARLY < self.rows_total => self.no_dict = DICT_SKIP,
            _ => self.no_dict = self.no_dict.saturating_sub(1),
        }
        let reopen = self.no_dict == 0;
        if let Values::Bytes { dict: Some(d), open, last, .. } = &mut self.values {
            (*d, *open, *last) = (Dict::default(), reopen, None);
        }
        self.encodings.clear();
        (self.nulls, self.levels_total, self.rows_total) = (0, 0, 0);
        Ok((Bytes::from(tw.into_inner()?), result))
    }
}

/// Whether two short strings (attribute keys, span names, kinds) are equal, without a `memcmp`
/// call: up to 16 bytes as two overlapping 8-byte words (or 4-byte words, or bytes) from each end.
#[inline(always)]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word8 = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let word4 = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a == b,
        4..8 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        _ => a == b,
    }
}

/// PLAIN numbers: each little-endian; `vals` is emptied.
fn plain_le<T, const N: usize>(buf: &mut Vec<u8>, vals: &mut Vec<T>, le: impl Fn(&T) -> [u8; N]) -> Encoding {
    vals.iter().for_each(|v| buf.extend_from_slice(&le(v)));
    vals.clear();
    Encoding::PLAIN
}

fn note_bytes(s: &mut Stats, v: &[u8]) {
    if s.min_b.as_deref().is_none_or(|m| v < m) {
        s.min_b = Some(v.to_vec());
    }
    if s.max_b.as_deref().is_none_or(|m| v > m) {
        s.max_b = Some(v.to_vec());
    }
}
