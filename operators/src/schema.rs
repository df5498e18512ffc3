//! The declared schema of a pipeline's input events.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use weir_runtime::Partitioning;

use crate::two_phase::check_two_phase_kind;
use crate::window::WindowKind;

/// `[schema]` of a pipeline: the fields of each JSON event and which one is event time.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Name of the input as a SQL table (default `events`).
    #[serde(default = "default_table")]
    pub table: String,
    /// The field holding event time; its type must be `timestamp` and it must be required.
    pub event_time: String,
    /// The field the input is partitioned by (the Kafka message key's field). A window, GROUP
    /// BY or projection is complete inside one partition only when its keys include it:
    /// otherwise a window runs in two phases and a session, a GROUP BY without a window or a
    /// projection is refused. Without it (and a source that does not route by a field
    /// itself), no key is assumed co-located. Checked at run time: a value seen in two
    /// partitions of one topic is reported (`partition_key_check`).
    #[serde(default)]
    pub partition_key: Option<String>,
    /// What a `partition_key` value seen in more than one partition of a topic does: `warn`
    /// (default: counted, and logged once per key with the partitions) or `strict` (the run
    /// fails).
    #[serde(default)]
    pub partition_key_check: PartitionKeyCheck,
    /// The fields of an event, in column order.
    pub fields: Vec<FieldConfig>,
    /// `[schema.metadata]`: the message's own key, timestamp, topic, partition, offset and
    /// headers as columns, after the fields.
    #[serde(default)]
    pub metadata: MetadataConfig,
}

/// `[schema.metadata]`: which of a message's own attributes become columns, and their names.
/// They follow the declared fields, in this order: key, timestamp, topic, partition, offset,
/// then the headers by column name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Column of the message key, as a string (null when the message has none; a key that is
    /// not UTF-8 sends the message to the DLQ).
    #[serde(default)]
    pub key: Option<String>,
    /// Column of the broker (or producer) timestamp, a `timestamp`; it may be the
    /// `event_time` (a message without one then goes to the DLQ).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Column of the topic the message was read from (string).
    #[serde(default)]
    pub topic: Option<String>,
    /// Column of its partition (int32).
    #[serde(default)]
    pub partition: Option<String>,
    /// Column of its offset (int64).
    #[serde(default)]
    pub offset: Option<String>,
    /// Columns of headers: column name → header name (`correlation_id = "correlation-id"`),
    /// each a string (null when the message has no such header; the first one wins when it
    /// has several; a value that is not UTF-8 sends the message to the DLQ), or a table
    /// `{ header = "trace-bin", type = "binary" }` for a column of the value's bytes as they
    /// are.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, HeaderColumn>,
}

/// One header column: the header's name and the column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderColumn {
    /// The header's name in the message.
    pub header: String,
    /// `string` (the value must be UTF-8) or `binary` (its bytes).
    pub binary: bool,
}

impl From<&str> for HeaderColumn {
    /// A string column of header `header`.
    fn from(header: &str) -> Self {
        Self {
            header: header.into(),
            binary: false,
        }
    }
}

/// A header column is written as the header's name or as a table; its schema says so for
/// `weir config reference`.
impl schemars::JsonSchema for HeaderColumn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HeaderColumn".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "object"],
            "description": "The header's name (a string column; the value must be UTF-8), or \
                `{ header = \"<name>\", type = \"string\" | \"binary\" }` (binary: its bytes).",
        })
    }
}

impl<'de> Deserialize<'de> for HeaderColumn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            header: String,
            #[serde(rename = "type", default)]
            kind: HeaderType,
        }
        #[derive(Deserialize, Default, PartialEq)]
        #[serde(rename_all = "snake_case")]
        enum HeaderType {
            #[default]
            String,
            Binary,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HeaderColumn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a header name, or a table `{ header = \"<name>\", type = \"string\" | \"binary\" }`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HeaderColumn, E> {
                Ok(HeaderColumn::from(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HeaderColumn, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HeaderColumn {
                    header: t.header,
                    binary: t.kind == HeaderType::Binary,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A message attribute that a metadata column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataSource {
    Key,
    Timestamp,
    Topic,
    Partition,
    Offset,
    /// The header of this name (the index into [`MetadataConfig::header_names`]).
    Header(usize),
}

impl MetadataConfig {
    /// The metadata columns in column order: (column name, what it holds, its type).
    pub fn columns(&self) -> Vec<(String, MetadataSource, FieldType)> {
        let mut out = Vec::new();
        let mut add = |c: &Option<String>, s: MetadataSource, t: FieldType| {
            if let Some(c) = c {
                out.push((c.clone(), s, t));
            }
        };
        add(&self.key, MetadataSource::Key, FieldType::String);
        add(
            &self.timestamp,
            MetadataSource::Timestamp,
            FieldType::Timestamp,
        );
        add(&self.topic, MetadataSource::Topic, FieldType::String);
        add(&self.partition, MetadataSource::Partition, FieldType::Int32);
        add(&self.offset, MetadataSource::Offset, FieldType::Int64);
        for (i, (column, h)) in self.headers.iter().enumerate() {
            let t = if h.binary {
                FieldType::Binary
            } else {
                FieldType::String
            };
            out.push((column.clone(), MetadataSource::Header(i), t));
        }
        out
    }

    /// The header names the columns read, in the order of [`MetadataSource::Header`].
    pub fn header_names(&self) -> Vec<String> {
        self.headers.values().map(|h| h.header.clone()).collect()
    }
}

/// `[schema] partition_key_check`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKeyCheck {
    /// Count such keys and log each once.
    #[default]
    Warn,
    /// Fail the run at the first such key.
    Strict,
}

fn default_table() -> String {
    "events".into()
}

/// One field of the input schema.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Column name, and the JSON key it is read from unless `path` says otherwise.
    pub name: String,
    /// Where in the event the value is, when it is not the top-level key `name`: keys joined
    /// by `.`, array elements as `[i]` (`payload.amount`, `items[0].sku`). A null or absent
    /// object or array on the way makes the field absent. See ARCHITECTURE.md, "Decode rules".
    #[serde(default)]
    pub path: Option<String>,
    /// Column type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether the field may be absent or null (default false: absent is a poison message).
    #[serde(default)]
    pub nullable: bool,
    /// Whether a JSON string holding the value is accepted too (default false): `"12.5"` for
    /// a number field, `"true"` for a bool, `"1767624000"` for an epoch timestamp. The value
    /// inside the string follows the same rules as an unquoted one. Not for `string` fields.
    #[serde(default)]
    pub coerce: bool,
    /// For a `timestamp` field: the unit of an epoch number, `s`, `ms`, `us` or `ns`
    /// (default `ms`). RFC 3339 strings are accepted whatever the unit. Only for `timestamp`
    /// fields. See ARCHITECTURE.md, "Decode rules", for the plausible range of each unit.
    #[serde(default)]
    pub unit: Option<EpochUnit>,
    /// For a `timestamp` field: accept every epoch number of the unit (default false: only
    /// those in the plausible range, 1973 to 2286, so that a number in the wrong unit is
    /// dead-lettered instead of read as a date in 1970 or in the year 50000). For times
    /// outside that range, such as synthetic test data near the epoch.
    #[serde(default)]
    pub any_epoch: bool,
    /// For a `struct` field: its fields, read from the object by name (each with its own
    /// type and nullability, no `path`). Undeclared keys of the object are ignored.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// For a `list` field: the type of its elements (`item = "string"` or a table with `type`
    /// and the keys a field has, except `name` and `path`).
    #[serde(default, deserialize_with = "de_item")]
    pub item: Option<Box<FieldConfig>>,
    /// For a `map` field (an object with any keys, read as string keys): the type of its
    /// values, written as `item` is.
    #[serde(default, deserialize_with = "de_value")]
    pub value: Option<Box<FieldConfig>>,
}

/// The element type of a list or the value type of a map, as a pipeline file writes it: a
/// type name, or a table of a field's keys without `name` and `path`.
enum ElementConfig {
    Name(FieldType),
    Table(ElementTable),
}

impl<'de> Deserialize<'de> for ElementConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ElementConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a type name or a table with `type`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ElementConfig, E> {
                match FieldType::parse(v) {
                    Ok(Some(t)) => Ok(ElementConfig::Name(t)),
                    Ok(None) => Err(E::unknown_variant(v, FieldType::NAMES)),
                    Err(e) => Err(E::custom(e)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ElementConfig, A::Error> {
                ElementTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ElementConfig::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElementTable {
    #[serde(rename = "type")]
    field_type: FieldType,
    #[serde(default)]
    nullable: bool,
    #[serde(default)]
    coerce: bool,
    #[serde(default)]
    unit: Option<EpochUnit>,
    #[serde(default)]
    any_epoch: bool,
    #[serde(default)]
    fields: Vec<FieldConfig>,
    #[serde(default, deserialize_with = "de_item")]
    item: Option<Box<FieldConfig>>,
    #[serde(default, deserialize_with = "de_value")]
    value: Option<Box<FieldConfig>>,
}

impl ElementConfig {
    fn into_field(self, name: &str) -> FieldConfig {
        match self {
            ElementConfig::Name(t) => FieldConfig::new(name, t),
            ElementConfig::Table(t) => FieldConfig {
                nullable: t.nullable,
                coerce: t.coerce,
                unit: t.unit,
                any_epoch: t.any_epoch,
                fields: t.fields,
                item: t.item,
                value: t.value,
                ..FieldConfig::new(name, t.field_type)
            },
        }
    }
}

/// The entries of a map column: a struct of a `keys` string and `value` (Arrow's layout).
pub fn map_entries(value: Field) -> Field {
    Field::new(
        "entries",
        DataType::Struct(vec![Field::new("keys", DataType::Utf8, false), value].into()),
        false,
    )
}

/// The name of a list's element field (Arrow's).
pub const LIST_ITEM: &str = "item";
/// The name of a map's value field (Arrow's).
pub const MAP_VALUE: &str = "values";

fn de_item<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<FieldConfig>>, D::Error> {
    Ok(Some(Box::new(
        ElementConfig::deserialize(d)?.into_field(LIST_ITEM),
    )))
}

fn de_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<FieldConfig>>, D::Error> {
    Ok(Some(Box::new(
        ElementConfig::deserialize(d)?.into_field(MAP_VALUE),
    )))
}

impl FieldConfig {
    /// A required field of `field_type` with the default rules (no coercion, epoch millis).
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            path: None,
            field_type,
            nullable: false,
            coerce: false,
            unit: None,
            any_epoch: false,
            fields: Vec::new(),
            item: None,
            value: None,
        }
    }

    /// A `struct` field of `fields`.
    pub fn new_struct(name: impl Into<String>, fields: Vec<FieldConfig>) -> Self {
        Self {
            fields,
            ..Self::new(name, FieldType::Struct)
        }
    }

    /// A `list` field of `item` (its name is replaced by [`LIST_ITEM`]).
    pub fn new_list(name: impl Into<String>, item: FieldConfig) -> Self {
        Self {
            item: Some(Box::new(FieldConfig {
                name: LIST_ITEM.into(),
                ..item
            })),
            ..Self::new(name, FieldType::List)
        }
    }

    /// A `map` field with string keys and `value` (its name is replaced by [`MAP_VALUE`]).
    pub fn new_map(name: impl Into<String>, value: FieldConfig) -> Self {
        Self {
            value: Some(Box::new(FieldConfig {
                name: MAP_VALUE.into(),
                ..value
            })),
            ..Self::new(name, FieldType::Map)
        }
    }

    /// The Arrow type of the column: Struct, List and Map for the nested types, with their
    /// children's types and nullability.
    pub fn data_type(&self) -> DataType {
        match self.field_type {
            FieldType::Struct => {
                DataType::Struct(self.fields.iter().map(FieldConfig::arrow_field).collect())
            }
            FieldType::List => DataType::List(Arc::new(self.element(&self.item).arrow_field())),
            FieldType::Map => DataType::Map(
                Arc::new(map_entries(self.element(&self.value).arrow_field())),
                false,
            ),
            t => t.scalar_data_type(),
        }
    }

    /// The Arrow field of the column.
    pub fn arrow_field(&self) -> Field {
        Field::new(&self.name, self.data_type(), self.nullable)
    }

    /// A list's item or a map's value; a nullable string when it was not declared (which
    /// `validate` refuses).
    fn element<'a>(&'a self, e: &'a Option<Box<FieldConfig>>) -> std::borrow::Cow<'a, FieldConfig> {
        match e {
            Some(f) => std::borrow::Cow::Borrowed(f),
            None => std::borrow::Cow::Owned(FieldConfig {
                nullable: true,
                ..FieldConfig::new(LIST_ITEM, FieldType::String)
            }),
        }
    }

    /// Whether the column is a struct, a list or a map.
    pub fn is_nested(&self) -> bool {
        self.field_type.is_nested()
    }

    /// The type as messages and `--check` name it: `list<decimal(18, 4)>`,
    /// `struct<sku: string, qty: int32>`, `map<string, int64>`.
    pub fn type_text(&self) -> String {
        match self.field_type {
            FieldType::Struct => format!(
                "struct<{}>",
                self.fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name, f.type_text()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            FieldType::List => format!("list<{}>", self.element(&self.item).type_text()),
            FieldType::Map => format!("map<string, {}>", self.element(&self.value).type_text()),
            t => t.to_string(),
        }
    }

    /// The steps from the event to the value: the parsed `path`, or the key `name`.
    pub fn steps(&self) -> Result<Vec<PathStep>, String> {
        match &self.path {
            None => Ok(vec![PathStep::Key(self.name.clone())]),
            Some(p) => parse_path(p),
        }
    }

    /// The unit of this field's epoch numbers (`ms` unless declared).
    pub fn epoch_unit(&self) -> EpochUnit {
        self.unit.unwrap_or_default()
    }

    /// Every problem with this field's keys, each as "`<at>.<key>`: reason" (`at` is the
    /// field's own key, e.g. `schema.fields[2]`).
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.steps() {
            errors.push(format!("{at}.path: {e}"));
        }
        if self.unit.is_some() && self.field_type != FieldType::Timestamp {
            errors.push(format!(
                "{at}.unit: only a `timestamp` field has a unit; `{}` is {:?}",
                self.name, self.field_type
            ));
        }
        if self.any_epoch && self.field_type != FieldType::Timestamp {
            errors.push(format!(
                "{at}.any_epoch: only a `timestamp` field has epoch numbers; `{}` is {:?}",
                self.name, self.field_type
            ));
        }
        if self.coerce && self.field_type == FieldType::String {
            errors.push(format!(
                "{at}.coerce: `{}` is a string field: coerce reads numbers and booleans \
                 written as strings, it does not turn other values into text",
                self.name
            ));
        }
        if self.coerce && matches!(self.field_type, FieldType::Binary | FieldType::Date) {
            errors.push(format!(
                "{at}.coerce: `{}` is a {} field, which is always written as a string: coerce \
                 reads numbers and booleans written as strings",
                self.name, self.field_type
            ));
        }
        if let FieldType::Decimal { precision, scale } = self.field_type {
            if let Err(e) = FieldType::decimal(precision, scale) {
                errors.push(format!("{at}.type: {e}"));
            }
        }
        errors.extend(self.validate_nested(at));
        errors
    }

    /// The rules of `fields`, `item` and `value`: each only on its type, required there, and
    /// valid itself.
    fn validate_nested(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let t = self.field_type;
        let misplaced = |key: &str, wants: &str| {
            format!(
                "{at}.{key}: only a `{wants}` field has `{key}`; `{}` is {t}",
                self.name
            )
        };
        if t != FieldType::Struct && !self.fields.is_empty() {
            errors.push(misplaced("fields", "struct"));
        }
        if t != FieldType::List && self.item.is_some() {
            errors.push(misplaced("item", "list"));
        }
        if t != FieldType::Map && self.value.is_some() {
            errors.push(misplaced("value", "map"));
        }
        if self.coerce && self.is_nested() {
            errors.push(format!(
                "{at}.coerce: `{}` is a {t}: coerce is a key of the scalar fields inside it",
                self.name
            ));
        }
        match t {
            FieldType::Struct => {
                if self.fields.is_empty() {
                    errors.push(format!(
                        "{at}.fields: struct `{}` needs at least one field",
                        self.name
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for (i, f) in self.fields.iter().enumerate() {
                    let at = format!("{at}.fields[{i}]");
                    if f.name.is_empty() {
                        errors.push(format!("{at}.name: must not be empty"));
                    }
                    if !seen.insert(f.name.as_str()) {
                        errors.push(format!(
                            "{at}.name: duplicate field `{}` in struct `{}`",
                            f.name, self.name
                        ));
                    }
                    if f.path.is_some() {
                        errors.push(format!(
                            "{at}.path: a struct's fields are read by their names; `path` is \
                             for top-level fields only"
                        ));
                    }
                    errors.extend(f.validate(&at));
                }
            }
            FieldType::List | FieldType::Map => {
                let (key, e) = if t == FieldType::List {
                    ("item", &self.item)
                } else {
                    ("value", &self.value)
                };
                match e {
                    None => errors.push(format!(
                        "{at}.{key}: {t} `{}` needs `{key}`, its {} type (e.g. `{key} = \"string\"`)",
                        self.name,
                        if t == FieldType::List { "element" } else { "value" }
                    )),
                    Some(e) => errors.extend(e.validate(&format!("{at}.{key}"))),
                }
            }
            _ => {}
        }
        errors
    }
}

/// One step of a field's path into the event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathStep {
    /// The value of this key of an object.
    Key(String),
    /// This element (from 0) of an array.
    Index(usize),
}

impl std::fmt::Display for PathStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathStep::Key(k) => f.write_str(k),
            PathStep::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// `steps` as a path is written (`items[0].sku`).
pub fn path_text(steps: &[PathStep]) -> String {
    let mut out = String::new();
    for s in steps {
        if matches!(s, PathStep::Key(_)) && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&s.to_string());
    }
    out
}

/// A path as a field writes it: keys joined by `.`, each followed by any number of `[i]`.
pub fn parse_path(path: &str) -> Result<Vec<PathStep>, String> {
    let bad = |why: &str| {
        Err(format!(
            "`{path}` is not a path ({why}): write keys joined by `.` and array elements as \
             `[i]`, e.g. `payload.items[0].sku`"
        ))
    };
    let mut steps = Vec::new();
    for segment in path.split('.') {
        let (key, mut rest) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        if key.is_empty() {
            return bad("a key is empty");
        }
        if key.contains(']') {
            return bad("`]` without `[`");
        }
        steps.push(PathStep::Key(key.to_string()));
        while !rest.is_empty() {
            let Some((index, after)) = rest.strip_prefix('[').and_then(|r| r.split_once(']'))
            else {
                return bad("an index is not closed by `]`");
            };
            match index.parse::<u32>() {
                Ok(i) if index.bytes().all(|b| b.is_ascii_digit()) => {
                    steps.push(PathStep::Index(i as usize))
                }
                _ => return bad("an index is not a number"),
            }
            if !after.is_empty() && !after.starts_with('[') {
                return bad("text after `]`");
            }
            rest = after;
        }
    }
    Ok(steps)
}

/// The unit of an epoch number in a `timestamp` field. Decoded times are stored as
/// milliseconds (finer units are floored to the millisecond).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub enum EpochUnit {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[serde(rename = "s")]
    Seconds,
    /// Milliseconds since the epoch: the default.
    #[default]
    #[serde(rename = "ms")]
    Millis,
    /// Microseconds since the epoch.
    #[serde(rename = "us")]
    Micros,
    /// Nanoseconds since the epoch.
    #[serde(rename = "ns")]
    Nanos,
}

impl EpochUnit {
    pub const ALL: [EpochUnit; 4] = [
        EpochUnit::Seconds,
        EpochUnit::Millis,
        EpochUnit::Micros,
        EpochUnit::Nanos,
    ];

    /// How it is written in a pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            EpochUnit::Seconds => "s",
            EpochUnit::Millis => "ms",
            EpochUnit::Micros => "us",
            EpochUnit::Nanos => "ns",
        }
    }

    /// Units of this kind in one second.
    pub fn per_second(self) -> i64 {
        match self {
            EpochUnit::Seconds => 1,
            EpochUnit::Millis => 1_000,
            EpochUnit::Micros => 1_000_000,
            EpochUnit::Nanos => 1_000_000_000,
        }
    }

    /// The epoch values this unit accepts, `[low, high)`: the times from
    /// [`PLAUSIBLE_EPOCH_SECS`]`.0` to `.1` seconds, in this unit.
    pub fn plausible_range(self) -> (i128, i128) {
        let per = i128::from(self.per_second());
        (
            i128::from(PLAUSIBLE_EPOCH_SECS.0) * per,
            i128::from(PLAUSIBLE_EPOCH_SECS.1) * per,
        )
    }
}

/// The event times an epoch number may denote, in seconds, `[low, high)`:
/// 1973-03-03T09:46:40Z (10^8 s) to 2286-11-20T17:46:40Z (10^10 s). In any unit that is
/// a band of exactly two decimal orders of magnitude (seconds have 9 or 10 digits,
/// milliseconds 12 or 13, microseconds 15 or 16, nanoseconds 18 or 19), and the bands of
/// neighbouring units (a factor of 1000 apart) never overlap: a value in the wrong unit is
/// outside the band of the declared one, so it is dead-lettered, never read as a date in
/// 1970 or in the year 50000.
pub const PLAUSIBLE_EPOCH_SECS: (i64, i64) = (100_000_000, 10_000_000_000);

/// Column types a JSON field can be decoded to, written in a pipeline file as their name
/// (`int64`, `uint8`, `date`, ...) or, for decimals, `decimal(p, s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Bool,
    /// A base64 string (RFC 4648, standard alphabet, padded), stored as its bytes.
    Binary,
    /// A calendar date written `YYYY-MM-DD`, stored as days since 1970-01-01 (Date32).
    Date,
    /// An epoch number in the field's `unit` (default milliseconds) or an RFC 3339 string,
    /// stored as milliseconds.
    Timestamp,
    /// An exact decimal of at most `precision` digits (1 to 38), `scale` of them after the
    /// point (0 to `precision`), stored as Arrow Decimal128.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// An object of declared fields (`fields`), stored as an Arrow Struct.
    Struct,
    /// An array of one element type (`item`), stored as an Arrow List.
    List,
    /// An object with any keys and one value type (`value`), stored as an Arrow Map with
    /// string keys.
    Map,
}

/// The largest precision of a `decimal(p, s)` field (what Decimal128 holds).
pub const MAX_DECIMAL_PRECISION: u8 = 38;

impl FieldType {
    /// The type names a pipeline file may write (`decimal` with its `(p, s)`).
    pub const NAMES: &'static [&'static str] = &[
        "string",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "bool",
        "binary",
        "date",
        "timestamp",
        "decimal(p, s)",
        "struct",
        "list",
        "map",
    ];

    /// A `decimal(precision, scale)` type, or why those bounds are not one.
    pub fn decimal(precision: u8, scale: i8) -> Result<Self, String> {
        if precision == 0 || precision > MAX_DECIMAL_PRECISION {
            return Err(format!(
                "decimal precision must be 1 to {MAX_DECIMAL_PRECISION}, not {precision}"
            ));
        }
        if scale < 0 || scale as u8 > precision {
            return Err(format!(
                "decimal scale must be 0 to the precision ({precision}), not {scale}"
            ));
        }
        Ok(FieldType::Decimal { precision, scale })
    }

    /// Whether the type is a struct, a list or a map (its Arrow type is the field's:
    /// [`FieldConfig::data_type`]).
    pub fn is_nested(self) -> bool {
        matches!(self, FieldType::Struct | FieldType::List | FieldType::Map)
    }

    /// The Arrow type of a scalar type; for a nested one see [`FieldConfig::data_type`].
    fn scalar_data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int8 => DataType::Int8,
            FieldType::Int16 => DataType::Int16,
            FieldType::Int32 => DataType::Int32,
            FieldType::Int64 => DataType::Int64,
            FieldType::UInt8 => DataType::UInt8,
            FieldType::UInt16 => DataType::UInt16,
            FieldType::UInt32 => DataType::UInt32,
            FieldType::UInt64 => DataType::UInt64,
            FieldType::Float32 => DataType::Float32,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Binary => DataType::Binary,
            FieldType::Date => DataType::Date32,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            FieldType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            FieldType::Struct | FieldType::List | FieldType::Map => {
                unreachable!("invariant: a nested type's Arrow type is its field's")
            }
        }
    }

    /// The Arrow type of a scalar type (none for a struct, list or map, whose type needs
    /// the field's `fields`, `item` or `value`).
    pub fn data_type(self) -> Option<DataType> {
        (!self.is_nested()).then(|| self.scalar_data_type())
    }

    /// Whether the type is a number (an integer, a float or a decimal).
    pub fn is_numeric(self) -> bool {
        !matches!(
            self,
            FieldType::String
                | FieldType::Bool
                | FieldType::Binary
                | FieldType::Date
                | FieldType::Timestamp
                | FieldType::Struct
                | FieldType::List
                | FieldType::Map
        )
    }

    /// The type read from its name in a pipeline file; `Ok(None)` for a name that is no type.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        Ok(Some(match text {
            "string" => FieldType::String,
            "int8" => FieldType::Int8,
            "int16" => FieldType::Int16,
            "int32" => FieldType::Int32,
            "int64" => FieldType::Int64,
            "uint8" => FieldType::UInt8,
            "uint16" => FieldType::UInt16,
            "uint32" => FieldType::UInt32,
            "uint64" => FieldType::UInt64,
            "float32" => FieldType::Float32,
            "float64" => FieldType::Float64,
            "bool" => FieldType::Bool,
            "binary" => FieldType::Binary,
            "date" => FieldType::Date,
            "timestamp" => FieldType::Timestamp,
            "struct" => FieldType::Struct,
            "list" => FieldType::List,
            "map" => FieldType::Map,
            _ => {
                let Some(args) = text
                    .strip_prefix("decimal")
                    .map(str::trim_start)
                    .and_then(|t| t.strip_prefix('('))
                    .and_then(|t| t.strip_suffix(')'))
                else {
                    return Ok(None);
                };
                let bad = || {
                    format!(
                        "`{text}` is not a decimal type: write `decimal(p, s)` with a precision \
                         p of 1 to {MAX_DECIMAL_PRECISION} and a scale s of 0 to p, e.g. \
                         `decimal(18, 4)`"
                    )
                };
                let (p, s) = args.split_once(',').ok_or_else(bad)?;
                let p: u8 = p.trim().parse().map_err(|_| bad())?;
                let s: i8 = s.trim().parse().map_err(|_| bad())?;
                return FieldType::decimal(p, s)
                    .map(Some)
                    .map_err(|e| format!("`{text}`: {e}"));
            }
        }))
    }
}

impl std::fmt::Display for FieldType {
    /// The type as a pipeline file writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            FieldType::String => "string",
            FieldType::Int8 => "int8",
            FieldType::Int16 => "int16",
            FieldType::Int32 => "int32",
            FieldType::Int64 => "int64",
            FieldType::UInt8 => "uint8",
            FieldType::UInt16 => "uint16",
            FieldType::UInt32 => "uint32",
            FieldType::UInt64 => "uint64",
            FieldType::Float32 => "float32",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Binary => "binary",
            FieldType::Date => "date",
            FieldType::Timestamp => "timestamp",
            FieldType::Struct => "struct",
            FieldType::List => "list",
            FieldType::Map => "map",
            FieldType::Decimal { precision, scale } => {
                return write!(f, "decimal({precision}, {scale})")
            }
        };
        f.write_str(name)
    }
}

/// A field's `type` is a string (`"int64"`, `"decimal(18, 4)"`, ...), parsed by
/// [`FieldType::parse`]; its schema says so for `weir config reference`.
impl schemars::JsonSchema for FieldType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FieldType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<String> = FieldType::NAMES.iter().map(|n| format!("`{n}`")).collect();
        schemars::json_schema!({
            "type": "string",
            "description": format!(
                "One of {}; `decimal(p, s)` is exact (Arrow Decimal128, p ≤ 38 digits of \
                 which s after the point, never through a float).",
                names.join(", ")
            ),
        })
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match FieldType::parse(&text) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(serde::de::Error::unknown_variant(&text, FieldType::NAMES)),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

impl SchemaConfig {
    /// Every problem with this schema, each as "`<prefix>.<key>`: reason".
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.fields.is_empty() {
            errors.push(format!("{prefix}.fields: at least one field is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (column, _, _) in self.metadata.columns() {
            if column.is_empty() || column == weir_runtime::OFFSET_COLUMN {
                errors.push(format!(
                    "{prefix}.metadata: column name `{column}` is empty or reserved"
                ));
            }
            if !seen.insert(column.clone()) {
                errors.push(format!(
                    "{prefix}.metadata: `{column}` names two metadata columns"
                ));
            }
        }
        for (name, h) in &self.metadata.headers {
            if h.header.is_empty() {
                errors.push(format!(
                    "{prefix}.metadata.headers.{name}: the header name must not be empty"
                ));
            }
        }
        for (i, f) in self.fields.iter().enumerate() {
            if f.name.is_empty() {
                errors.push(format!("{prefix}.fields[{i}].name: must not be empty"));
            }
            if f.name == weir_runtime::OFFSET_COLUMN {
                errors.push(format!(
                    "{prefix}.fields[{i}].name: `{}` is reserved",
                    f.name
                ));
            }
            errors.extend(f.validate(&format!("{prefix}.fields[{i}]")));
            if !seen.insert(f.name.clone()) {
                errors.push(format!(
                    "{prefix}.fields[{i}].name: duplicate field `{}` (a field or a metadata \
                     column)",
                    f.name
                ));
            }
        }
        errors.extend(path_conflicts(&self.fields, prefix));
        if let Some(k) = &self.partition_key {
            match self.columns().iter().find(|f| &f.name == k) {
                None => errors.push(format!(
                    "{prefix}.partition_key: `{k}` is not one of the declared fields"
                )),
                Some(f) if f.is_nested() => errors.push(format!(
                    "{prefix}.partition_key: `{k}` is a {}: a partition key is one value \
                     (read a scalar inside it with a field `path`)",
                    f.field_type
                )),
                Some(_) => {}
            }
        }
        let columns = self.columns();
        match columns.iter().find(|f| f.name == self.event_time) {
            None => errors.push(format!(
                "{prefix}.event_time: `{}` is not one of the declared fields",
                self.event_time
            )),
            Some(f) if f.field_type != FieldType::Timestamp => errors.push(format!(
                "{prefix}.event_time: field `{}` must have type \"timestamp\", not {:?}",
                f.name, f.field_type
            )),
            Some(f) if f.nullable => errors.push(format!(
                "{prefix}.event_time: field `{}` must not be nullable",
                f.name
            )),
            Some(_) => {}
        }
        errors
    }

    /// Every column of a decoded event: the declared fields, then the metadata columns (as
    /// fields of their type; nullable except a timestamp that is the event time).
    pub fn columns(&self) -> Vec<FieldConfig> {
        let mut out = self.fields.clone();
        for (name, source, t) in self.metadata.columns() {
            let required = source == MetadataSource::Timestamp && name == self.event_time;
            out.push(FieldConfig {
                nullable: !required,
                ..FieldConfig::new(name, t)
            });
        }
        out
    }

    /// The arrow schema of decoded events (without the offset column).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns()
                .iter()
                .map(FieldConfig::arrow_field)
                .collect::<Vec<_>>(),
        ))
    }
}

impl SchemaConfig {
    /// What the declaration alone says: the declared partition key, or nothing known.
    pub fn declared_colocation(&self) -> Colocation {
        match &self.partition_key {
            Some(k) => Colocation::Key(k.clone()),
            None => Colocation::Unknown(UNDECLARED.into()),
        }
    }

    /// The keys known to be co-located when this schema is read from a source partitioned
    /// as `partitioning`; `Err` when the declaration contradicts the source ("<why>", to be
    /// reported under `schema.partition_key`).
    pub fn colocation(&self, partitioning: &Partitioning) -> Result<Colocation, String> {
        let declared = self.partition_key.as_deref();
        match (partitioning, declared) {
            (Partitioning::Single, _) => Ok(Colocation::All),
            (Partitioning::ByField(f), Some(d)) if d != f => Err(format!(
                "`{d}` is declared, but the source routes messages to partitions by `{f}`"
            )),
            (Partitioning::ByField(f), _) => Ok(Colocation::Key(f.clone())),
            (Partitioning::ByMessageKey, _) => Ok(self.declared_colocation()),
            // A partition key holds inside each topic only: the same value may be in several.
            (Partitioning::ByMessageKeyPerTopic(topics), _) => {
                Ok(Colocation::AcrossTopics(topics.clone()))
            }
            (Partitioning::Spread, Some(d)) => Err(format!(
                "`{d}` is declared, but the source spreads messages over its partitions \
                 round-robin (it has no key_field), so no key is co-located; set the source's \
                 key_field = \"{d}\" or remove partition_key"
            )),
            (Partitioning::Spread, None) => Ok(Colocation::Unknown(
                "the source spreads messages over its partitions round-robin (no key_field)".into(),
            )),
        }
    }
}

/// Fields whose paths cannot all be read from one event: one path the same as another or
/// running through it (`payload` and `payload.amount`), or one position read as an object by
/// one field and as an array by another (`items.count`, `items[0]`).
fn path_conflicts(fields: &[FieldConfig], prefix: &str) -> Vec<String> {
    let paths: Vec<(usize, Vec<PathStep>)> = fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.steps().ok().map(|s| (i, s)))
        .collect();
    let mut errors = Vec::new();
    for (a, (i, pa)) in paths.iter().enumerate() {
        for (j, pb) in &paths[a + 1..] {
            let common = pa.iter().zip(pb).take_while(|(x, y)| x == y).count();
            let (fa, fb) = (&fields[*i].name, &fields[*j].name);
            if fa == fb {
                continue; // a duplicate field, reported as such
            }
            let at = format!("{prefix}.fields[{j}].path");
            if pa.len() == pb.len() && common == pa.len() {
                errors.push(format!(
                    "{at}: `{fb}` reads {}, as `{fa}` does: a position holds one field",
                    path_text(pb)
                ));
            } else if common == pa.len().min(pb.len()) {
                let ((outer, po), (inner, pi)) = if pa.len() < pb.len() {
                    ((fa, pa), (fb, pb))
                } else {
                    ((fb, pb), (fa, pa))
                };
                errors.push(format!(
                    "{at}: `{inner}` ({}) is within `{outer}` ({}): a value is either a field \
                     or holds fields",
                    path_text(pi),
                    path_text(po)
                ));
            } else if matches!(
                (&pa[common], &pb[common]),
                (PathStep::Key(_), PathStep::Index(_)) | (PathStep::Index(_), PathStep::Key(_))
            ) {
                errors.push(format!(
                    "{at}: `{fb}` ({}) and `{fa}` ({}) read `{}` as an object and as an array",
                    path_text(pb),
                    path_text(pa),
                    path_text(&pa[..common]),
                ));
            }
        }
    }
    errors
}

/// Why keys are not co-located over several topics.
fn across_topics(topics: &[String]) -> String {
    format!(
        "the source reads several topics ({}), and the same key may be in more than one of \
         them (a partition key holds inside one topic)",
        topics.join(", ")
    )
}

const UNDECLARED: &str =
    "no `[schema] partition_key` declares which field the input is partitioned by";

/// Which group keys are co-located: every event of such a key is read by one partition
/// task, so state keyed by it is complete there (ARCHITECTURE.md, "Co-location"). weir never
/// assumes it: it comes from the source (one partition, or routed by a field) or from
/// `[schema] partition_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Colocation {
    /// Every key: the input has one partition.
    All,
    /// Keys that include this field.
    Key(String),
    /// None: the source reads these topics (several), and a key may be in more than one of
    /// them, whatever partitions each topic by. A group is complete in no one partition.
    AcrossTopics(Vec<String>),
    /// None, and why.
    Unknown(String),
}

impl Colocation {
    /// Whether groups over `keys` may span partitions, so a window over them runs in two
    /// phases ([`crate::two_phase`]).
    pub fn spans_partitions(&self, keys: &[String]) -> bool {
        match self {
            Colocation::All => false,
            Colocation::Key(pk) => !keys.iter().any(|k| k == pk),
            Colocation::AcrossTopics(_) | Colocation::Unknown(_) => true,
        }
    }

    /// Refuse window keys that may span partitions when the window kind cannot run in two
    /// phases (sessions, GROUP BY without a window).
    pub fn check_window_keys(&self, keys: &[String], kind: &WindowKind) -> Result<(), String> {
        if !self.spans_partitions(keys) {
            return Ok(());
        }
        check_two_phase_kind(kind).map_err(|reason| match self {
            Colocation::Key(pk) => format!(
                "GROUP BY [{}] does not include the partition key `{pk}`: {reason}; add `{pk}` to the keys",
                keys.join(", ")
            ),
            Colocation::AcrossTopics(topics) => format!(
                "GROUP BY [{}] may span partitions: {}: {reason}; read one topic per pipeline",
                keys.join(", "),
                across_topics(topics)
            ),
            _ => format!(
                "GROUP BY [{}] may span partitions ({}): {reason}; declare `[schema] partition_key` \
                 (the field the input is partitioned by, e.g. the Kafka message key) and group by it",
                keys.join(", "),
                self.why()
            ),
        })
    }

    /// Refuse an operator that keeps state per key of its own choosing (a projection) when
    /// nothing says the input's keys are co-located.
    pub fn check_keyed_state(&self, operator: &str) -> Result<(), String> {
        match self {
            Colocation::Unknown(why) => Err(format!(
                "{operator} keeps state per key, which needs every event of a key in one \
                 partition, but {why}; declare `[schema] partition_key` (the field the input \
                 is partitioned by), or read one partition"
            )),
            Colocation::AcrossTopics(topics) => Err(format!(
                "{operator} keeps state per key, which needs every event of a key in one \
                 partition, but {}; read one topic per pipeline",
                across_topics(topics)
            )),
            _ => Ok(()),
        }
    }

    fn why(&self) -> &str {
        match self {
            Colocation::Unknown(why) => why,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(partition_key: Option<&str>) -> SchemaConfig {
        SchemaConfig {
            table: "events".into(),
            event_time: "ts".into(),
            partition_key: partition_key.map(str::to_string),
            partition_key_check: PartitionKeyCheck::Warn,
            metadata: Default::default(),
            fields: vec![
                FieldConfig::new("sensor_id", FieldType::String),
                FieldConfig::new("ts", FieldType::Timestamp),
            ],
        }
    }

    fn two_topics() -> Partitioning {
        Partitioning::ByMessageKeyPerTopic(vec!["ta".into(), "tb".into()])
    }

    #[test]
    fn every_type_name_reads_back_as_it_displays() {
        for name in FieldType::NAMES.iter().filter(|n| !n.contains('(')) {
            let t = FieldType::parse(name).unwrap().unwrap();
            assert_eq!(&t.to_string(), name);
        }
        for text in ["decimal(18,4)", "decimal(18, 4)", "decimal (18 , 4)"] {
            assert_eq!(
                FieldType::parse(text),
                Ok(Some(FieldType::Decimal {
                    precision: 18,
                    scale: 4
                }))
            );
        }
        assert_eq!(
            FieldType::decimal(38, 0).unwrap().data_type(),
            Some(DataType::Decimal128(38, 0))
        );
        assert_eq!(FieldType::parse("percent"), Ok(None));
    }

    #[test]
    fn a_decimal_outside_what_decimal128_holds_is_refused_with_the_bounds() {
        for (text, says) in [
            ("decimal(39, 2)", "precision must be 1 to 38, not 39"),
            ("decimal(0, 0)", "precision must be 1 to 38, not 0"),
            (
                "decimal(4, 5)",
                "scale must be 0 to the precision (4), not 5",
            ),
            (
                "decimal(4, -1)",
                "scale must be 0 to the precision (4), not -1",
            ),
            ("decimal(18)", "write `decimal(p, s)`"),
            ("decimal(a, b)", "write `decimal(p, s)`"),
        ] {
            let err = FieldType::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let f = FieldConfig::new(
            "price",
            FieldType::Decimal {
                precision: 40,
                scale: 2,
            },
        );
        let errors = f.validate("schema.fields[1]");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("schema.fields[1].type: decimal precision"),
            "{errors:?}"
        );
    }

    fn with_paths(paths: &[(&str, Option<&str>)]) -> SchemaConfig {
        let mut fields: Vec<FieldConfig> = paths
            .iter()
            .map(|(name, path)| FieldConfig {
                path: path.map(str::to_string),
                ..FieldConfig::new(*name, FieldType::Int64)
            })
            .collect();
        fields.push(FieldConfig::new("ts", FieldType::Timestamp));
        SchemaConfig {
            fields,
            ..schema(None)
        }
    }

    #[test]
    fn paths_parse_into_keys_and_indices() {
        use PathStep::*;
        assert_eq!(
            parse_path("payload.items[0][12].sku"),
            Ok(vec![
                Key("payload".into()),
                Key("items".into()),
                Index(0),
                Index(12),
                Key("sku".into())
            ])
        );
        assert_eq!(path_text(&parse_path("a.b[3].c").unwrap()), "a.b[3].c");
        for bad in [
            "", "a..b", ".a", "a.", "[0]", "a[", "a[x]", "a[-1]", "a[0]b", "a]",
        ] {
            let err = parse_path(bad).unwrap_err();
            assert!(err.contains("is not a path"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_path_is_reported_at_the_fields_path_key() {
        let errors = with_paths(&[("amount", Some("payload..amount"))]).validate("schema");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("schema.fields[0].path: `payload..amount` is not a path"),
            "{errors:?}"
        );
    }

    #[test]
    fn paths_that_cannot_all_be_read_from_one_event_are_refused() {
        for (paths, says) in [
            (
                vec![("p", Some("payload")), ("amount", Some("payload.amount"))],
                "schema.fields[1].path: `amount` (payload.amount) is within `p` (payload): a value is either a field or holds fields",
            ),
            (
                vec![("a", Some("x.y")), ("b", Some("x.y"))],
                "schema.fields[1].path: `b` reads x.y, as `a` does: a position holds one field",
            ),
            (
                vec![("a", None), ("b", Some("a"))],
                "schema.fields[1].path: `b` reads a, as `a` does: a position holds one field",
            ),
            (
                vec![("n", Some("items.count")), ("sku", Some("items[0].sku"))],
                "schema.fields[1].path: `sku` (items[0].sku) and `n` (items.count) read `items` as an object and as an array",
            ),
        ] {
            let errors = with_paths(&paths).validate("schema");
            assert_eq!(errors, vec![says.to_string()], "{paths:?}");
        }
        let fine = with_paths(&[
            ("a", Some("p.a")),
            ("b", Some("p.b")),
            ("c", Some("q[0].a")),
            ("d", Some("q[1]")),
        ]);
        assert_eq!(fine.validate("schema"), Vec::<String>::new());
    }

    #[test]
    fn a_metadata_column_may_be_the_event_time_and_the_partition_key_but_not_reuse_a_name() {
        let mut s = schema(None);
        s.metadata.timestamp = Some("broker_ts".into());
        s.metadata.key = Some("msg_key".into());
        s.event_time = "broker_ts".into();
        s.partition_key = Some("msg_key".into());
        assert_eq!(s.validate("schema"), Vec::<String>::new());
        s.metadata.topic = Some("sensor_id".into());
        s.metadata.headers.insert("msg_key".into(), "".into());
        let errors = s.validate("schema");
        assert_eq!(
            errors,
            [
                "schema.metadata: `msg_key` names two metadata columns",
                "schema.metadata.headers.msg_key: the header name must not be empty",
                "schema.fields[0].name: duplicate field `sensor_id` (a field or a metadata column)",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn coerce_is_refused_on_fields_that_are_always_strings() {
        for t in [FieldType::String, FieldType::Binary, FieldType::Date] {
            let f = FieldConfig {
                coerce: true,
                ..FieldConfig::new("x", t)
            };
            let errors = f.validate("schema.fields[0]");
            assert_eq!(errors.len(), 1, "{t}: {errors:?}");
            assert!(
                errors[0].starts_with("schema.fields[0].coerce"),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn a_partition_key_over_one_topic_co_locates_its_keys() {
        let c = schema(Some("sensor_id"))
            .colocation(&Partitioning::ByMessageKey)
            .unwrap();
        assert!(!c.spans_partitions(&["sensor_id".into()]));
    }

    #[test]
    fn over_several_topics_even_the_partition_key_spans_partitions() {
        for declared in [Some("sensor_id"), None] {
            let c = schema(declared).colocation(&two_topics()).unwrap();
            assert_eq!(c, Colocation::AcrossTopics(vec!["ta".into(), "tb".into()]));
            assert!(c.spans_partitions(&["sensor_id".into()]));
            // Tumbling and hopping windows run in two phases.
            let tumble = WindowKind::Tumble { size_ms: 1000 };
            assert_eq!(c.check_window_keys(&["sensor_id".into()], &tumble), Ok(()));
        }
    }

    #[test]
    fn a_session_over_several_topics_is_refused_naming_the_topics() {
        let c = schema(Some("sensor_id")).colocation(&two_topics()).unwrap();
        let err = c
            .check_window_keys(&["sensor_id".into()], &WindowKind::Session { gap_ms: 10 })
            .unwrap_err();
        assert!(err.contains("several topics (ta, tb)"), "{err}");
        assert!(
            err.contains("sessions are built inside one partition"),
            "{err}"
        );
        assert!(err.contains("read one topic per pipeline"), "{err}");
    }

    #[test]
    fn a_group_by_without_a_window_over_several_topics_is_refused_naming_the_topics() {
        let c = schema(Some("sensor_id")).colocation(&two_topics()).unwrap();
        let err = c
            .check_window_keys(&["sensor_id".into()], &WindowKind::Continuous)
            .unwrap_err();
        assert!(err.contains("several topics (ta, tb)"), "{err}");
        assert!(err.contains("GROUP BY without a window"), "{err}");
    }

    #[test]
    fn a_projection_over_several_topics_is_refused_naming_the_topics() {
        let c = schema(Some("sensor_id")).colocation(&two_topics()).unwrap();
        let err = c.check_keyed_state("`orders`").unwrap_err();
        assert!(err.starts_with("`orders` keeps state per key"), "{err}");
        assert!(err.contains("several topics (ta, tb)"), "{err}");
    }
}
