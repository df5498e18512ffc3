//! Reading one section of `pipeline.toml` into its config type, with every problem reported
//! at its full key path (`operators[1].late_policy`, `schema.fields[2].type`).
//!
//! serde's derived code says *what* is wrong through the constructors of `serde::de::Error`
//! (unknown field, missing field, unknown variant, anything else as text). [`DeError`], this
//! module's error type, keeps those as data, and the deserializer over a parsed
//! [`toml::Value`] adds *where* while an error travels out of the value tree, so no error
//! message is ever parsed. A tagged section (`type = "tumble"` in `[[operators]]`) is read as
//! serde's externally tagged enum, the `type` value naming the variant: the variant's fields
//! are deserialized directly (not from a buffer), so their errors keep their paths.

use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// What serde's derived code found wrong.
#[derive(Debug, Clone, PartialEq)]
enum Problem {
    UnknownField {
        expected: &'static [&'static str],
    },
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
    Other(String),
}

/// A deserialization error and the path (innermost segment first) where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    path: Vec<Segment>,
    problem: Problem,
}

impl DeError {
    fn at(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    /// The full key path under `prefix`, innermost segment last.
    fn key(&self, prefix: &str) -> String {
        let mut key = prefix.to_string();
        for s in self.path.iter().rev() {
            match s {
                Segment::Key(k) if key.is_empty() => key.push_str(k),
                Segment::Key(k) => {
                    key.push('.');
                    key.push_str(k);
                }
                Segment::Index(i) => key.push_str(&format!("[{i}]")),
            }
        }
        key
    }

    /// The problem as "`<prefix>.<key>`: reason", the way `pipeline.toml` errors read.
    fn describe(&self, prefix: &str) -> String {
        match &self.problem {
            Problem::UnknownField { expected, .. } => {
                format!(
                    "{}: unknown key ({})",
                    self.key(prefix),
                    expected_names(expected)
                )
            }
            Problem::UnknownVariant { variant, expected } => format!(
                "{}: unknown variant `{variant}`, {}",
                self.key(prefix),
                expected_names(expected)
            ),
            Problem::MissingField(field) => {
                let at = self.key(prefix);
                if at.is_empty() {
                    format!("{field}: missing")
                } else {
                    format!("{at}.{field}: missing")
                }
            }
            Problem::Other(message) => format!("{}: {message}", self.key(prefix)),
        }
    }
}

/// serde's own wording of a list of expected names.
fn expected_names(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "there are none".into(),
        [one] => format!("expected {one}"),
        [a, b] => format!("expected {a} or {b}"),
        many => format!("expected one of {}", many.join(", ")),
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(""))
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            path: Vec::new(),
            problem: Problem::Other(msg.to_string()),
        }
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        // The field is the innermost key of the path (see `Entries::next_key_seed`).
        Self {
            path: Vec::new(),
            problem: Problem::UnknownField { expected },
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self {
            path: Vec::new(),
            problem: Problem::UnknownVariant {
                variant: variant.to_string(),
                expected,
            },
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            path: Vec::new(),
            problem: Problem::MissingField(field),
        }
    }
}

/// A parsed TOML value as a serde deserializer; `Tagged` is a table whose `type` key was
/// taken out to name the variant of an externally tagged enum.
enum ValueDe {
    Plain(toml::Value),
    Tagged(String, toml::Table),
}

impl<'de> de::Deserializer<'de> for ValueDe {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Plain(toml::Value::String(s)) => visitor.visit_string(s),
            ValueDe::Plain(toml::Value::Integer(i)) => visitor.visit_i64(i),
            ValueDe::Plain(toml::Value::Float(f)) => visitor.visit_f64(f),
            ValueDe::Plain(toml::Value::Boolean(b)) => visitor.visit_bool(b),
            ValueDe::Plain(toml::Value::Datetime(d)) => visitor.visit_string(d.to_string()),
            ValueDe::Plain(toml::Value::Array(items)) => visitor.visit_seq(Items {
                items: items.into_iter().enumerate(),
            }),
            ValueDe::Plain(toml::Value::Table(table)) => visitor.visit_map(Entries {
                entries: table.into_iter(),
                value: None,
            }),
            ValueDe::Tagged(tag, rest) => {
                let mut table = toml::Table::new();
                table.insert("type".into(), toml::Value::String(tag));
                table.extend(rest);
                ValueDe::Plain(toml::Value::Table(table)).deserialize_any(visitor)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // TOML has no null: a present key is always Some.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            ValueDe::Plain(toml::Value::String(s)) => {
                let unit: StringDeserializer<DeError> = s.into_deserializer();
                visitor.visit_enum(unit)
            }
            ValueDe::Tagged(tag, rest) => visitor.visit_enum(Variant { tag, rest }),
            ValueDe::Plain(other) => Err(de::Error::custom(format!(
                "expected a string, found a {}",
                other.type_str()
            ))),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct Items {
    items: std::iter::Enumerate<std::vec::IntoIter<toml::Value>>,
}

impl<'de> de::SeqAccess<'de> for Items {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, v)) => seed
                .deserialize(ValueDe::Plain(v))
                .map(Some)
                .map_err(|e| e.at(Segment::Index(i))),
        }
    }
}

struct Entries {
    entries: toml::map::IntoIter,
    value: Option<(String, toml::Value)>,
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let name: StringDeserializer<DeError> = key.clone().into_deserializer();
        let k = seed
            .deserialize(name)
            .map_err(|e| e.at(Segment::Key(key.clone())))?;
        self.value = Some((key, value));
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, value) = self
            .value
            .take()
            .expect("invariant: serde asks for a value after its key");
        seed.deserialize(ValueDe::Plain(value))
            .map_err(|e| e.at(Segment::Key(key)))
    }
}

/// The variant named by a section's `type`, with the section's other keys as its content.
struct Variant {
    tag: String,
    rest: toml::Table,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = DeError;
    type Variant = VariantContent;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantContent), DeError> {
        let tag: StringDeserializer<DeError> = self.tag.into_deserializer();
        let variant = seed
            .deserialize(tag)
            .map_err(|e| e.at(Segment::Key("type".into())))?;
        Ok((variant, VariantContent(self.rest)))
    }
}

struct VariantContent(toml::Table);

impl<'de> de::VariantAccess<'de> for VariantContent {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(k) => Err(DeError {
                path: vec![Segment::Key(k.clone())],
                problem: Problem::UnknownField { expected: &[] },
            }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(ValueDe::Plain(toml::Value::Table(self.0)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(ValueDe::Plain(toml::Value::Table(self.0)), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(ValueDe::Plain(toml::Value::Table(self.0)), visitor)
    }
}

/// Remove the key at `path` (innermost first) from `value`; whether it was there.
fn remove_at(value: &mut toml::Value, path: &[Segment]) -> bool {
    let Some((last, outer)) = path.split_first() else {
        return false;
    };
    let mut at = value;
    for s in outer.iter().rev() {
        let next = match (s, at) {
            (Segment::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Segment::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

/// Deserialize the section at `path`, pushing "`<path>.<key>`: reason" onto `errors`: every
/// unknown key, then the first other problem.
pub fn section<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    read(value, path, errors, false)
}

/// [`section`] for a section tagged by `type` (`[source]`, `[[operators]]`, `[[sinks]]`,
/// `[dlq]`), read into an externally tagged enum whose variants are the type names.
pub fn tagged_section<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    read(value, path, errors, true)
}

fn read<T: DeserializeOwned>(
    mut value: toml::Value,
    path: &str,
    errors: &mut Vec<String>,
    tagged: bool,
) -> Option<T> {
    let mut tag = None;
    if tagged {
        let toml::Value::Table(table) = &mut value else {
            errors.push(format!(
                "{path}: expected a table, found a {}",
                value.type_str()
            ));
            return None;
        };
        match table.remove("type") {
            None => {
                errors.push(format!("{path}.type: missing"));
                return None;
            }
            Some(toml::Value::String(t)) => tag = Some(t),
            Some(other) => {
                errors.push(format!(
                    "{path}.type: expected a string, found a {}",
                    other.type_str()
                ));
                return None;
            }
        }
    }
    loop {
        let de = match (&tag, &value) {
            (Some(t), toml::Value::Table(rest)) => ValueDe::Tagged(t.clone(), rest.clone()),
            _ => ValueDe::Plain(value.clone()),
        };
        let err = match T::deserialize(de) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        errors.push(err.describe(path));
        // Another unknown key may hide behind this one: drop it and look again.
        if !matches!(err.problem, Problem::UnknownField { .. }) || !remove_at(&mut value, &err.path)
        {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Policy {
        Dlq,
        Drop,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        size_ms: u64,
        #[serde(default)]
        policy: Option<Policy>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum Op {
        Tumble(Inner),
        Filter { predicate: String },
        Null {},
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn value(text: &str) -> toml::Value {
        toml::Value::Table(text.parse().unwrap())
    }

    fn op(text: &str) -> Result<Op, Vec<String>> {
        let mut errors = Vec::new();
        tagged_section(value(text), "operators[1]", &mut errors).ok_or(errors)
    }

    #[test]
    fn a_tagged_section_reads_its_variant() {
        assert_eq!(
            op("type = \"tumble\"\nsize_ms = 5\npolicy = \"drop\""),
            Ok(Op::Tumble(Inner {
                size_ms: 5,
                policy: Some(Policy::Drop)
            }))
        );
        assert_eq!(
            op("type = \"filter\"\npredicate = \"x > 1\""),
            Ok(Op::Filter {
                predicate: "x > 1".into()
            })
        );
        assert_eq!(op("type = \"null\""), Ok(Op::Null {}));
    }

    #[test]
    fn an_unknown_variant_of_a_field_is_reported_at_that_field_not_at_type() {
        assert_eq!(
            op("type = \"tumble\"\nsize_ms = 5\npolicy = \"ignore\""),
            Err(vec![
                "operators[1].policy: unknown variant `ignore`, expected `dlq` or `drop`".into()
            ])
        );
    }

    #[test]
    fn an_unknown_type_is_reported_at_type() {
        assert_eq!(
            op("type = \"tumbel\"\nsize_ms = 5"),
            Err(vec![
                "operators[1].type: unknown variant `tumbel`, expected one of `tumble`, `filter`, `null`".into()
            ])
        );
        assert_eq!(
            op("size_ms = 5"),
            Err(vec!["operators[1].type: missing".into()])
        );
    }

    #[test]
    fn every_unknown_key_is_reported_then_the_first_other_problem() {
        assert_eq!(
            op("type = \"tumble\"\nsizems = 5\ncolour = 1"),
            Err(vec![
                "operators[1].colour: unknown key (expected `size_ms` or `policy`)".into(),
                "operators[1].sizems: unknown key (expected `size_ms` or `policy`)".into(),
                "operators[1].size_ms: missing".into(),
            ])
        );
    }

    #[test]
    fn nested_errors_name_the_index_and_key() {
        let mut errors = Vec::new();
        let out: Option<Outer> = section(
            value("items = [{ size_ms = 1 }, { size_ms = \"x\" }]"),
            "schema",
            &mut errors,
        );
        assert_eq!(out, None);
        assert_eq!(
            errors,
            vec!["schema.items[1].size_ms: invalid type: string \"x\", expected u64"]
        );
    }

    #[test]
    fn a_plain_value_of_the_wrong_type_names_its_key() {
        let mut errors = Vec::new();
        let out: Option<String> = section(toml::Value::Integer(5), "sql", &mut errors);
        assert_eq!(out, None);
        assert_eq!(
            errors,
            vec!["sql: invalid type: integer `5`, expected a string"]
        );
    }
}
