//! The declared schema of a pipeline's input events.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

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
    /// The field the input is partitioned by (the message key). When set, a window whose
    /// keys do not include it is refused: its groups span partitions and would need a
    /// two-phase aggregation, which weir does not do yet.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// The fields of an event, in column order.
    pub fields: Vec<FieldConfig>,
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
    /// Whether groups over `keys` span partitions: a partition key is declared and the keys
    /// leave it out, so the window runs in two phases ([`crate::two_phase`]).
    pub fn spans_partitions(&self, keys: &[String]) -> bool {
        self.partition_key
            .as_ref()
            .is_some_and(|pk| !keys.iter().any(|k| k == pk))
    }

    /// Refuse window keys that leave out the partition key when the window kind cannot run
    /// in two phases (sessions, GROUP BY without a window).
    pub fn check_window_keys(&self, keys: &[String], kind: &WindowKind) -> Result<(), String> {
        match &self.partition_key {
            Some(pk) if self.spans_partitions(keys) => {
                check_two_phase_kind(kind).map_err(|reason| {
                    format!(
                        "GROUP BY [{}] does not include the partition key `{pk}`: {reason}; add `{pk}` to the keys",
                        keys.join(", ")
                    )
                })
            }
            _ => Ok(()),
        }
    }
}
