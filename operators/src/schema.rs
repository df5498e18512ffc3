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
}

impl FieldConfig {
    /// A required field of `field_type` with the default rules (no coercion, epoch millis).
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            field_type,
            nullable: false,
            coerce: false,
            unit: None,
            any_epoch: false,
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
        errors
    }
}

/// The unit of an epoch number in a `timestamp` field. Decoded times are stored as
/// milliseconds (finer units are floored to the millisecond).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
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
    /// An epoch number in the field's `unit` (default milliseconds) or an RFC 3339 string,
    /// stored as milliseconds.
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
            errors.extend(f.validate(&format!("{prefix}.fields[{i}]")));
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
