//! Value types shared by every component's config: durations, byte sizes, listen endpoints.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as `200ms`, `5s`, `1m30s` (humantime syntax) or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    /// The std duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(Duration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 200ms, 5s or 1m"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 200ms, 5s or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v == 0 { Ok(Duration::default()) } else { Err(E::custom(format!("invalid duration {v}: give a unit, e.g. {v}s or {v}ms"))) }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(v as i64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes, written as an integer or with a unit: `512KiB`, `4MiB`, `1GB`, `100kb`.
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024, decimal ones (`KB`, `MB`, `GB`) of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// From mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size {s:?}; write it like 4194304, 512KiB, 4MiB or 1GB");
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" | "ki" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" | "mi" => 1024 * 1024,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" | "gi" => 1024 * 1024 * 1024,
            _ => return Err(bad()),
        };
        let v = n * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 4194304, 512KiB or 4MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A listen address `host:port` (`0.0.0.0:4317`, `localhost:4318`, `[::]:9411`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP/UDP port; 0 asks the OS for a free one.
    pub port: u16,
}

impl Endpoint {
    /// Builds an endpoint.
    pub fn new(host: &str, port: u16) -> Self {
        Endpoint { host: host.to_owned(), port }
    }

    /// True if two endpoints cannot both be bound (same port; same host or a wildcard).
    pub fn conflicts_with(&self, other: &Endpoint) -> bool {
        let wild = |h: &str| h == "0.0.0.0" || h == "::" || h.is_empty();
        self.port != 0
            && self.port == other.port
            && (self.host == other.host || wild(&self.host) || wild(&other.host))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') { write!(f, "[{}]:{}", self.host, self.port) } else { write!(f, "{}:{}", self.host, self.port) }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = |why: &str| format!("invalid endpoint {s:?}: {why}; write it as host:port, e.g. 0.0.0.0:4317");
        if t.contains("://") {
            return Err(bad("a listen endpoint has no scheme"));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(|| bad("missing port"))?;
            (h, p)
        } else {
            t.rsplit_once(':').ok_or_else(|| bad("missing port"))?
        };
        if host.contains(':') && !t.starts_with('[') {
            return Err(bad("IPv6 addresses need brackets"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("bad host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port must be a number from 0 to 65535"))?;
        Ok(Endpoint { host: if host.is_empty() { "0.0.0.0".into() } else { host.to_owned() }, port })
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}
