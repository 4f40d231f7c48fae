//! Parquet's RLE / bit-packing hybrid encoding, for repetition and definition levels and for
//! dictionary indices, fed with runs (`value`, `count`) so that long runs cost one step.
//!
//! The format: a sequence of runs, each a ULEB128 header then data. `header = count << 1` is an
//! RLE run (the value once, in `ceil(width / 8)` bytes); `header = groups << 1 | 1` is a
//! bit-packed run of `groups * 8` values, `width` bits each, least significant bit first. Only the
//! last bit-packed run may be padded past the real values (the reader knows how many there are).

/// Appends `v` as ULEB128.
pub(crate) fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Bits needed for values up to `max`.
pub(crate) fn bit_width(max: u32) -> u8 {
    (32 - max.leading_zeros()) as u8
}

/// Runs shorter than this go into bit-packed groups (a short RLE run costs more than packing).
const MIN_RLE: u64 = 8;

/// Encodes runs with the hybrid encoding; `width` bits per value (0 allowed: every value 0).
pub(crate) struct Hybrid<'a> {
    out: &'a mut Vec<u8>,
    width: u8,
    /// Values waiting to be bit-packed (a bit-packed run is only written with a multiple of 8):
    /// their count, whole bytes packed so far, and the bits not yet a whole 32-bit word.
    pending: u64,
    packed: Vec<u8>,
    acc: u64,
    bits: u32,
}

impl<'a> Hybrid<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, width: u8) -> Self {
        Hybrid { out, width, pending: 0, packed: Vec::new(), acc: 0, bits: 0 }
    }

    #[inline]
    fn pack(&mut self, value: u32, n: u64) {
        let w = self.width as u32;
        self.pending += n;
        if w == 0 {
            return;
        }
        for _ in 0..n {
            self.acc |= (value as u64) << self.bits;
            self.bits += w;
            if self.bits >= 32 {
                self.packed.extend_from_slice(&(self.acc as u32).to_le_bytes());
                self.acc >>= 32;
                self.bits -= 32;
            }
        }
    }

    /// Adds `count` copies of `value`.
    pub(crate) fn run(&mut self, value: u32, mut count: u64) {
        if self.pending > 0 {
            // Top the pending values up to a group boundary from this run first.
            let k = ((8 - self.pending % 8) % 8).min(count);
            self.pack(value, k);
            count -= k;
            if count == 0 {
                return;
            }
            if count < MIN_RLE {
                self.pack(value, count);
                return;
            }
            self.flush_packed();
        }
        if count >= MIN_RLE {
            self.rle(value, count);
        } else {
            self.pack(value, count);
        }
    }

    /// Adds values one by one (dictionary indices): a group of 8 starting a run of 8 or more
    /// equal values goes into an RLE run, any other group is bit-packed as it is.
    pub(crate) fn values(&mut self, vals: &[u32]) {
        let mut i = 0;
        // Top pending values up to a group boundary first.
        while self.pending % 8 != 0 && i < vals.len() {
            self.pack(vals[i], 1);
            i += 1;
        }
        while let Some(group) = vals.get(i..i + 8) {
            let v = group[0];
            if group.iter().all(|&x| x == v) {
                let run = vals[i..].iter().take_while(|&&x| x == v).count();
                self.flush_packed();
                self.rle(v, run as u64);
                i += run;
            } else {
                self.pack_group(group);
                i += 8;
            }
        }
        vals[i..].iter().for_each(|&v| self.pack(v, 1));
    }

    /// Bit-packs 8 values (the pending count being a multiple of 8).
    #[inline]
    fn pack_group(&mut self, group: &[u32]) {
        let w = self.width as u32;
        if w > 16 {
            group.iter().for_each(|&v| self.pack(v, 1));
            return;
        }
        self.pending += 8;
        if w > 0 {
            // At a group boundary the bits not yet written are whole bytes: written first. Then 8
            // values of `w` bits are exactly `w` bytes, packed as one u128.
            let tail = (self.bits / 8) as usize;
            self.packed.extend_from_slice(&self.acc.to_le_bytes()[..tail]);
            (self.acc, self.bits) = (0, 0);
            let mut acc = 0u128;
            for (k, &v) in group.iter().enumerate() {
                acc |= (v as u128) << (k as u32 * w);
            }
            self.packed.extend_from_slice(&acc.to_le_bytes()[..w as usize]);
        }
    }

    /// An RLE run (nothing pending).
    fn rle(&mut self, value: u32, count: u64) {
        uleb(self.out, count << 1);
        let bytes = self.width.div_ceil(8) as usize;
        self.out.extend_from_slice(&value.to_le_bytes()[..bytes]);
    }

    fn flush_packed(&mut self) {
        if self.pending == 0 {
            return;
        }
        let groups = self.pending.div_ceil(8);
        self.pack(0, groups * 8 - self.pending);
        // groups * 8 * width bits: whole bytes.
        let tail = self.bits.div_ceil(8) as usize;
        self.packed.extend_from_slice(&self.acc.to_le_bytes()[..tail]);
        uleb(self.out, (groups << 1) | 1);
        self.out.extend_from_slice(&self.packed);
        (self.pending, self.acc, self.bits) = (0, 0, 0);
        self.packed.clear();
    }

    /// Writes what is pending; the encoding is complete.
    pub(crate) fn finish(mut self) {
        self.flush_packed();
    }
}

/// One leaf's levels as runs.
#[derive(Default)]
pub(crate) struct Levels {
    runs: Vec<(u8, u32)>,
    count: u64,
}

impl Levels {
    #[inline]
    pub(crate) fn push(&mut self, level: u8, n: u32) {
        if n == 0 {
            return;
        }
        self.count += n as u64;
        match self.runs.last_mut() {
            Some((l, c)) if *l == level && *c <= u32::MAX - n => *c += n,
            _ => self.runs.push((level, n)),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Appends the Data Page v1 form: 4-byte little-endian length, then the hybrid encoding.
    pub(crate) fn write_v1(&self, out: &mut Vec<u8>, max: u8) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut h = Hybrid::new(out, bit_width(max as u32));
        for &(l, c) in &self.runs {
            h.run(l as u32, c as u64);
        }
        h.finish();
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    pub(crate) fn clear(&mut self) {
        self.runs.clear();
        self.count = 0;
    }

    /// Keeps the first `n` levels (undoes pushes after a checkpoint).
    pub(crate) fn truncate(&mut self, n: u64) {
        while self.count > n {
            let (_, c) = self.runs.last_mut().expect("count > 0 means a run");
            let over = self.count - n;
            if (*c as u64) <= over {
                self.count -= *c as u64;
                self.runs.pop();
            } else {
                *c -= over as u32;
                self.count = n;
            }
        }
    }
}
