//! Parquet's DELTA_BINARY_PACKED encoding, for the lengths of DELTA_LENGTH_BYTE_ARRAY pages (the
//! byte-array pages written without a dictionary: every length delta-packed, then every value's
//! bytes back to back, so zstd sees the strings without a 4-byte length between each two).
//!
//! The format: a header (values per block, miniblocks per block, value count, first value
//! zigzag), then per block of deltas its smallest delta (zigzag ULEB128), one bit width per
//! miniblock, and each miniblock's `delta - min` bit-packed least significant bit first. A last
//! miniblock is padded to its full size; miniblocks past the last value have width 0 and no bytes.

use super::levels::{bit_width, uleb};

/// Deltas per block, and miniblocks per block (arrow-rs's writer uses the same: 128 and 4).
const BLOCK: usize = 128;
const MINIBLOCKS: usize = 4;
const MINI: usize = BLOCK / MINIBLOCKS;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Appends `vals` (read as INT32 values: each below 2^31) DELTA_BINARY_PACKED.
pub(crate) fn delta_binary_packed(out: &mut Vec<u8>, vals: &[u32]) {
    uleb(out, BLOCK as u64);
    uleb(out, MINIBLOCKS as u64);
    uleb(out, vals.len() as u64);
    uleb(out, zigzag(vals.first().copied().unwrap_or(0) as i64));
    // Block after block of the deltas between neighbours.
    let mut deltas = [0i64; BLOCK];
    for start in (1..vals.len()).step_by(BLOCK) {
        let n = BLOCK.min(vals.len() - start);
        for (k, d) in deltas[..n].iter_mut().enumerate() {
            *d = vals[start + k] as i64 - vals[start + k - 1] as i64;
        }
        let min = deltas[..n].iter().copied().min().unwrap_or(0);
        uleb(out, zigzag(min));
        let mut widths = [0u8; MINIBLOCKS];
        for (m, w) in widths.iter_mut().enumerate().take(n.div_ceil(MINI)) {
            let max = deltas[m * MINI..n.min((m + 1) * MINI)].iter().map(|&d| (d - min) as u32).max().unwrap_or(0);
            *w = bit_width(max);
        }
        out.extend_from_slice(&widths);
        for (m, &w) in widths.iter().enumerate().take(n.div_ceil(MINI)) {
            // The padding past the last value packs zeros.
            let mini = &deltas[m * MINI..(m + 1) * MINI];
            pack(out, mini.iter().enumerate().map(|(k, &d)| if m * MINI + k < n { (d - min) as u32 } else { 0 }), w);
        }
    }
}

/// Bit-packs 32 values of `w` bits (exactly `4 * w` bytes).
fn pack(out: &mut Vec<u8>, vals: impl Iterator<Item = u32>, w: u8) {
    if w == 0 {
        return;
    }
    let (mut acc, mut bits) = (0u64, 0u32);
    for v in vals {
        acc |= (v as u64) << bits;
        bits += w as u32;
        if bits >= 32 {
            out.extend_from_slice(&(acc as u32).to_le_bytes());
            acc >>= 32;
            bits -= 32;
        }
    }
    debug_assert_eq!(bits, 0, "32 values of any width are whole 32-bit words");
}
