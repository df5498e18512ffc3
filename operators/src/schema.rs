//! The declared schema of a pipeline's input events.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use weir_runtime::Partitioning;

use crate::two_phase::check_two_phase_kind;
use crate::window::WindowKind;

/// `[schema]` of a pipeline: the fields of each JSON event and which one is event time.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
}

/// `[schema] partition_key_check`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// JSON key and column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether the field may be absent or null (default false: absent is a poison message).
    #[serde(default)]
    pub nullable: bool,
}

/// Column types a JSON field can be decoded to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Int32,
    Int64,
    Float32,
    Float64,
    Bool,
    /// Epoch milliseconds (a JSON number) or an RFC 3339 string, stored as milliseconds.
    Timestamp,
}

impl FieldType {
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int32 => DataType::Int32,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float32 => DataType::Float32,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
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
            if !seen.insert(f.name.as_str()) {
                errors.push(format!(
                    "{prefix}.fields[{i}].name: duplicate field `{}`",
                    f.name
                ));
            }
        }
        if let Some(k) = &self.partition_key {
            if !self.fields.iter().any(|f| &f.name == k) {
                errors.push(format!(
                    "{prefix}.partition_key: `{k}` is not one of the declared fields"
                ));
            }
        }
        match self.fields.iter().find(|f| f.name == self.event_time) {
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

    /// The Arrow schema of decoded events (without the offset column).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| Field::new(&f.name, f.field_type.data_type(), f.nullable))
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
            Colocation::Unknown(_) => true,
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
