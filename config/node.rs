//! A YAML value tree in which every node keeps its position, and a serde `Deserializer` over it
//! whose errors point at the offending node.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::{ConfigError, Pos};

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub value: Value,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string (after `${env:…}` expansion).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order; keys keep their positions.
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Where the key is.
    pub pos: Pos,
    /// The key text.
    pub name: String,
}

fn pos_of(loc: serde_saphyr::Location) -> Pos {
    Pos { line: loc.line(), column: loc.column() }
}

impl Node {
    /// Parses YAML text into a tree. Syntax errors carry line and column.
    pub fn parse(file: &str, text: &str) -> Result<Node, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Node { pos: Pos { line: 1, column: 1 }, value: Value::Map(Vec::new()) });
        }
        let spanned: Spanned<RawValue> = serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true }).map_err(|e| {
            let pos = e.location().map(pos_of).unwrap_or(Pos::UNKNOWN);
            let msg = e.to_string();
            // serde-saphyr appends a source snippet after the first line; keep the sentence.
            let first = msg.lines().next().unwrap_or("invalid YAML").trim().to_owned();
            ConfigError::new(file, pos, format!("invalid YAML: {first}"))
        })?;
        Ok(from_spanned(spanned))
    }

    /// Looks up a key of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The entries of a mapping node (empty for other nodes).
    pub fn entries(&self) -> &[(Key, Node)] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    /// A copy of this mapping without the given keys.
    pub fn without_keys(&self, keys: &[&str]) -> Node {
        match &self.value {
            Value::Map(entries) => Node {
                pos: self.pos,
                value: Value::Map(entries.iter().filter(|(k, _)| !keys.contains(&k.name.as_str())).cloned().collect()),
            },
            _ => self.clone(),
        }
    }

    /// Replaces a `key:` with no value by an empty mapping (`grpc:` alone means "enabled with
    /// defaults", as in the OTel Collector).
    pub fn null_to_empty_map(&mut self, key: &str) {
        if let Value::Map(entries) = &mut self.value {
            for (k, v) in entries.iter_mut() {
                if k.name == key && v.value == Value::Null {
                    v.value = Value::Map(Vec::new());
                }
            }
        }
    }

    /// A short name of the node's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }

    /// Expands `${env:NAME}` and `${env:NAME:-default}` in every string, using `lookup`.
    /// Returns one error per undefined variable without a default.
    pub fn expand_env(&mut self, file: &str, lookup: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<ConfigError>) {
        match &mut self.value {
            Value::Str(s) if s.contains("${") => match expand(s, lookup) {
                Ok(v) => *s = v,
                Err(m) => errors.push(ConfigError::new(file, self.pos, m)),
            },
            Value::Seq(items) => items.iter_mut().for_each(|n| n.expand_env(file, lookup, errors)),
            Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| n.expand_env(file, lookup, errors)),
            _ => {}
        }
    }

    /// Deserializes this node into `T`; the error points at the node (or key) at fault.
    pub fn deserialize_into<T: DeserializeOwned>(&self, file: &str) -> Result<T, ConfigError> {
        T::deserialize(NodeDe(self)).map_err(|e| ConfigError::new(file, e.pos.unwrap_or(self.pos), e.message))
    }
}

/// Expands the `${env:…}` references of one string.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in {s:?}"));
        };
        let inner = &after[..end];
        let Some(spec) = inner.strip_prefix("env:") else {
            return Err(format!("unsupported reference `${{{inner}}}`: only `${{env:NAME}}` and `${{env:NAME:-default}}` are expanded"));
        };
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set (use ${{env:{name}:-default}} for a default)")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading serde-saphyr output into the tree.

#[derive(Debug)]
enum RawValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawValue>>),
    Map(Vec<(Spanned<RawKey>, Spanned<RawValue>)>),
}

#[derive(Debug)]
struct RawKey(String);

fn from_spanned(s: Spanned<RawValue>) -> Node {
    let pos = pos_of(s.referenced);
    let value = match s.value {
        RawValue::Null => Value::Null,
        RawValue::Bool(b) => Value::Bool(b),
        RawValue::Int(i) => Value::Int(i),
        RawValue::UInt(u) => Value::UInt(u),
        RawValue::Float(f) => Value::Float(f),
        RawValue::Str(s) => Value::Str(s),
        RawValue::Seq(items) => Value::Seq(items.into_iter().map(from_spanned).collect()),
        RawValue::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Key { pos: pos_of(k.referenced), name: k.value.0 }, from_spanned(v)))
                .collect(),
        ),
    };
    Node { pos, value }
}

impl<'de> de::Deserialize<'de> for RawKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawKey, E> {
                Ok(RawKey(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKey, E> {
                Ok(RawKey(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKey, E> {
                Ok(RawKey(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawKey, E> {
                Ok(RawKey(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for RawValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_none<E>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
                <RawValue as de::Deserialize>::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
                Ok(RawValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
                Ok(RawValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
                Ok(i64::try_from(v).map(RawValue::Int).unwrap_or(RawValue::UInt(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
                Ok(RawValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
                Ok(RawValue::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<RawValue>>()? {
                    items.push(item);
                }
                Ok(RawValue::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
                let mut entries: Vec<(Spanned<RawKey>, Spanned<RawValue>)> = Vec::new();
                while let Some(k) = map.next_key::<Spanned<RawKey>>()? {
                    let v = map.next_value::<Spanned<RawValue>>()?;
                    if entries.iter().any(|(e, _)| e.value.0 == k.value.0) {
                        return Err(de::Error::custom(format!("duplicate key `{}`", k.value.0)));
                    }
                    entries.push((k, v));
                }
                Ok(RawValue::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// A serde Deserializer over the tree.

/// The error of [`NodeDe`]: a message and the innermost known position.
#[derive(Debug)]
pub struct DeError {
    message: String,
    pos: Option<Pos>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for DeError {}
impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { message: msg.to_string(), pos: None }
    }
}

trait AtPos<T> {
    fn at(self, pos: Pos) -> Result<T, DeError>;
}
impl<T> AtPos<T> for Result<T, DeError> {
    fn at(self, pos: Pos) -> Result<T, DeError> {
        self.map_err(|mut e| {
            e.pos.get_or_insert(pos);
            e
        })
    }
}

struct NodeDe<'a>(&'a Node);

impl NodeDe<'_> {
    fn invalid(&self, expected: &str) -> DeError {
        DeError { message: format!("expected {expected}, found {}", self.0.type_name()), pos: Some(self.0.pos) }
    }
    fn parse_str<T: std::str::FromStr>(&self, what: &str) -> Option<Result<T, DeError>> {
        match &self.0.value {
            Value::Str(s) => Some(s.trim().parse::<T>().map_err(|_| DeError {
                message: format!("expected {what}, found {s:?}"),
                pos: Some(self.0.pos),
            })),
            _ => None,
        }
    }
}

macro_rules! de_int {
    ($method:ident, $visit:ident, $t:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let pos = self.0.pos;
            let v: $t = match &self.0.value {
                Value::Int(i) => <$t>::try_from(*i).map_err(|_| DeError {
                    message: format!("{i} is out of range for {}", stringify!($t)),
                    pos: Some(pos),
                })?,
                Value::UInt(u) => <$t>::try_from(*u).map_err(|_| DeError {
                    message: format!("{u} is out of range for {}", stringify!($t)),
                    pos: Some(pos),
                })?,
                _ => match self.parse_str::<$t>("an integer") {
                    Some(r) => r?,
                    None => return Err(self.invalid("an integer")),
                },
            };
            visitor.$visit(v).at(pos)
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let pos = self.0.pos;
        match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe { iter: items.iter() }),
            Value::Map(entries) => visitor.visit_map(MapDe { iter: entries.iter(), value: None }),
        }
        .at(pos)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Bool(b) => visitor.visit_bool(*b).at(self.0.pos),
            _ => match self.parse_str::<bool>("a boolean (true or false)") {
                Some(r) => visitor.visit_bool(r?).at(self.0.pos),
                None => Err(self.invalid("a boolean")),
            },
        }
    }

    de_int!(deserialize_i8, visit_i8, i8);
    de_int!(deserialize_i16, visit_i16, i16);
    de_int!(deserialize_i32, visit_i32, i32);
    de_int!(deserialize_i64, visit_i64, i64);
    de_int!(deserialize_u8, visit_u8, u8);
    de_int!(deserialize_u16, visit_u16, u16);
    de_int!(deserialize_u32, visit_u32, u32);
    de_int!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let v = match &self.0.value {
            Value::Float(f) => *f,
            Value::Int(i) => *i as f64,
            Value::UInt(u) => *u as f64,
            _ => match self.parse_str::<f64>("a number") {
                Some(r) => r?,
                None => return Err(self.invalid("a number")),
            },
        };
        visitor.visit_f64(v).at(self.0.pos)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let pos = self.0.pos;
        match &self.0.value {
            Value::Str(s) => visitor.visit_str(s),
            // Scalars written without quotes are still strings where a string is expected.
            Value::Int(i) => visitor.visit_string(i.to_string()),
            Value::UInt(u) => visitor.visit_string(u.to_string()),
            Value::Float(f) => visitor.visit_string(f.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            _ => return Err(self.invalid("a string")),
        }
        .at(pos)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid("null")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Seq(items) => visitor.visit_seq(SeqDe { iter: items.iter() }).at(self.0.pos),
            _ => Err(self.invalid("a sequence")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Map(entries) => visitor.visit_map(MapDe { iter: entries.iter(), value: None }).at(self.0.pos),
            // `key:` with nothing after it is an empty mapping, as in the OTel Collector.
            Value::Null => visitor.visit_map(MapDe { iter: [].iter(), value: None }).at(self.0.pos),
            _ => Err(self.invalid("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()).at(self.0.pos),
            _ => Err(self.invalid("one of the documented names")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { bytes byte_buf unit_struct tuple tuple_struct }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Node>,
}
impl<'de, 'a> SeqAccess<'de> for SeqDe<'a> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(n) => seed.deserialize(NodeDe(n)).at(n.pos).map(Some),
            None => Ok(None),
        }
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a Node>,
}
impl<'de, 'a> MapAccess<'de> for MapDe<'a> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                let de: de::value::StrDeserializer<'_, DeError> = k.name.as_str().into_deserializer();
                seed.deserialize(de).at(k.pos).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let v = self.value.take().ok_or_else(|| <DeError as de::Error>::custom("value without a key"))?;
        seed.deserialize(NodeDe(v)).at(v.pos)
    }
}
