//! OpenTelemetry's consistent probability sampling in the W3C `tracestate` (the `ot` member:
//! `ot=th:<threshold>;rv:<randomness>`).
//!
//! A span carries a 56-bit rejection threshold T as up to 14 hex digits (trailing zeros dropped;
//! `th:0` = everything kept); it was kept because its trace's randomness R (the `rv` sub-key,
//! else the low 56 bits of the trace id) is at least T, so it stands for 2^56 / (2^56 − T)
//! spans. Samplers that keep by the same rule compose: a later stage with threshold T' keeps what
//! has R ≥ max(T, T') and writes that maximum.

/// 2^56: thresholds and randomness are 56-bit.
pub const MAX: u64 = 1 << 56;

/// The `ot` member's value, if any.
fn ot_member(ts: &str) -> Option<&str> {
    ts.split(',').map(str::trim).find_map(|m| m.strip_prefix("ot="))
}

/// A sub-key's value in the `ot` member.
fn ot_value<'a>(ts: &'a str, key: &str) -> Option<&'a str> {
    ot_member(ts)?.split(';').find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
}

/// The threshold `th` carries, if valid (1–14 lowercase hex digits).
pub fn threshold(ts: &str) -> Option<u64> {
    let v = ot_value(ts, "th")?;
    if v.is_empty() || v.len() > 14 || !v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let n = u64::from_str_radix(v, 16).ok()?;
    Some(n << (4 * (14 - v.len())))
}

/// The explicit randomness `rv` carries, if valid (exactly 14 lowercase hex digits).
pub fn randomness(ts: &str) -> Option<u64> {
    let v = ot_value(ts, "rv")?;
    if v.len() != 14 || !v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u64::from_str_radix(v, 16).ok()
}

/// The randomness of a trace id: its low 56 bits (the last 7 bytes, big-endian), which W3C trace
/// context level 2 makes random.
pub fn id_randomness(id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b[1..].copy_from_slice(&id[9..]);
    u64::from_be_bytes(b)
}

/// The threshold for a keep probability `p` (0 < p ≤ 1).
pub fn threshold_for(p: f64) -> u64 {
    (((1.0 - p.clamp(0.0, 1.0)) * MAX as f64).round() as u64).min(MAX - 1)
}

/// The keep probability a threshold stands for.
pub fn probability_of(t: u64) -> f64 {
    (MAX - t.min(MAX - 1)) as f64 / MAX as f64
}

/// `th`'s encoding of a threshold: 14 hex digits, trailing zeros dropped (`0` for zero).
pub fn encode_threshold(t: u64) -> String {
    if t == 0 {
        return "0".into();
    }
    let s = format!("{:014x}", t.min(MAX - 1));
    s.trim_end_matches('0').to_owned()
}

/// `ts` with the `ot` member's `th` set to `t` (or removed when `None`), the `ot` member first
/// (W3C: a modified member moves to the front), every other member and sub-key kept.
pub fn with_threshold(ts: &str, t: Option<u64>) -> String {
    let mut subs: Vec<String> = ot_member(ts).map(|m| m.split(';').filter(|kv| !kv.is_empty() && !kv.starts_with("th:")).map(str::to_owned).collect()).unwrap_or_default();
    if let Some(t) = t {
        subs.insert(0, format!("th:{}", encode_threshold(t)));
    }
    let others = ts.split(',').map(str::trim).filter(|m| !m.is_empty() && !m.starts_with("ot="));
    let mut out: Vec<String> = Vec::new();
    if !subs.is_empty() {
        out.push(format!("ot={}", subs.join(";")));
    }
    out.extend(others.map(str::to_owned));
    out.join(",")
}
