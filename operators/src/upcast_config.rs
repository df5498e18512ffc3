//! Upcasters declared in `pipeline.toml` (`[upcast]`): the same job as [`crate::upcast`],
//! written as data and run column by column on DataFusion expressions.
//!
//! ```toml
//! [schema]                 # the current version: what every operator after decode sees
//! event_time = "time"
//! fields = [ { name = "order_id", type = "string" }, { name = "version", type = "int64" },
//!            { name = "currency", type = "string" }, { name = "amount_cents", type = "int64" },
//!            { name = "time", type = "timestamp" } ]
//!
//! [upcast]
//! version_field = "version"      # current version = highest from_version + 1 (here 3)
//!
//! [[upcast.steps]]               # v1 → v2: v1 events have no currency
//! from_version = 1
//! set = { currency = "'EUR'" }
//!
//! [[upcast.steps]]               # v2 → v3: amount (a float, in units) became amount_cents
//! from_version = 2
//! fields = [ { name = "amount", type = "float64" } ]
//! set = { amount_cents = "CAST(round(amount * 100) AS BIGINT)" }
//! drop = ["amount"]
//! ```
//!
//! A step changes an event of version `from_version` into `from_version + 1`. Its `set`
//! (column = SQL expression), `rename` (new name = old name) and `drop` (columns emptied) all
//! read the event *before* the step and apply together. `fields` declares the columns that
//! events of that version carry and the current schema does not (renamed or reshaped since),
//! so they can be decoded and read. Steps must cover every version from the lowest
//! `from_version` up to the current one.
//!
//! The decoded schema is the current one plus every step's `fields`, where every column a step
//! writes (and the version field) may be absent. After upcasting, each row must fit the
//! current schema: a required column still empty sends the row to the DLQ. So do a missing,
//! too new or too old version, and an expression that fails on that row (the batch's other
//! rows go on). The event-time column cannot be written by a step (decode needs it).
//!
//! Each version's rows are upcast together (one expression evaluation per step and version
//! present in the batch), and the rows leave in their input order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, Int64Array, UInt32Array,
};
use datafusion::arrow::compute::{
    can_cast_types, cast, concat_batches, filter, is_not_null, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use serde::Deserialize;
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator, OFFSET_COLUMN};

use crate::expr::compile_expr;
use crate::schema::{FieldConfig, SchemaConfig};

/// `[upcast]` of a pipeline file.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpcastConfig {
    /// The integer field holding each event's version (a field of `[schema]`).
    pub version_field: String,
    /// One step per old version (`[[upcast.steps]]`); the current version is the highest
    /// `from_version` + 1.
    pub steps: Vec<UpcastStepConfig>,
}

/// One `[[upcast.steps]]` entry: version `from_version` → `from_version + 1`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpcastStepConfig {
    /// The version this step upgrades.
    pub from_version: i64,
    /// Columns that events of this version carry and the current schema does not.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// Column = SQL expression over the event before this step.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// New column name = old column name (the old column is emptied).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Columns emptied by this step.
    #[serde(default)]
    pub drop: Vec<String>,
}

impl UpcastConfig {
    /// The version events are upcast to.
    pub fn current_version(&self) -> i64 {
        self.steps
            .iter()
            .map(|s| s.from_version)
            .max()
            .map_or(1, |v| v.saturating_add(1))
    }

    /// The schema of decoded events: the current one (`current`) with every column a step
    /// writes, and the version field, made optional, plus each step's old `fields`.
    pub fn decoded_schema(&self, current: &SchemaConfig) -> SchemaConfig {
        let written: HashSet<&str> = self
            .steps
            .iter()
            .flat_map(|s| {
                s.set
                    .keys()
                    .chain(s.rename.keys())
                    .chain(s.drop.iter())
                    .map(String::as_str)
            })
            .chain([self.version_field.as_str()])
            .collect();
        let mut fields: Vec<FieldConfig> = current
            .fields
            .iter()
            .map(|f| FieldConfig {
                nullable: f.nullable || written.contains(f.name.as_str()),
                ..f.clone()
            })
            .collect();
        for step in &self.steps {
            for f in &step.fields {
                if !fields.iter().any(|g| g.name == f.name) {
                    fields.push(FieldConfig {
                        nullable: true,
                        ..f.clone()
                    });
                }
            }
        }
        SchemaConfig {
            fields,
            ..current.clone()
        }
    }

    /// Every problem, as `"<prefix>.<key>: reason"` lines: versions, columns, expressions
    /// (compiled against the decoded schema), types. Pure.
    pub fn validate(&self, prefix: &str, current: &SchemaConfig) -> Vec<String> {
        let mut errors = Vec::new();
        let key = |k: &str| format!("{prefix}.{k}");
        match current.fields.iter().find(|f| f.name == self.version_field) {
            None => errors.push(format!(
                "{}: `{}` is not one of the [schema] fields",
                key("version_field"),
                self.version_field
            )),
            Some(f) if !matches!(f.data_type(), DataType::Int32 | DataType::Int64) => {
                errors.push(format!(
                    "{}: field `{}` must have type int64 or int32, not {:?}",
                    key("version_field"),
                    f.name,
                    f.field_type
                ))
            }
            Some(_) => {}
        }
        if self.steps.is_empty() {
            errors.push(format!(
                "{}: at least one step is required ([[upcast.steps]])",
                key("steps")
            ));
            return errors;
        }
        let mut versions: Vec<i64> = self.steps.iter().map(|s| s.from_version).collect();
        versions.sort_unstable();
        for (i, step) in self.steps.iter().enumerate() {
            if step.from_version < 0 {
                errors.push(format!(
                    "{}: must not be negative, got {}",
                    key(&format!("steps[{i}].from_version")),
                    step.from_version
                ));
            }
            if self.steps[..i]
                .iter()
                .any(|s| s.from_version == step.from_version)
            {
                errors.push(format!(
                    "{}: a step from version {} is already declared",
                    key(&format!("steps[{i}].from_version")),
                    step.from_version
                ));
            }
        }
        versions.dedup();
        for pair in versions.windows(2) {
            if pair[1] != pair[0] + 1 {
                errors.push(format!(
                    "{}: no step from version {} (steps must cover every version from {} to {})",
                    key("steps"),
                    pair[0] + 1,
                    versions[0],
                    self.current_version() - 1
                ));
            }
        }
        let before_fields = errors.len();
        let current_names: HashSet<&str> = current.fields.iter().map(|f| f.name.as_str()).collect();
        let mut old_types: HashMap<&str, &FieldConfig> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            for (j, f) in step.fields.iter().enumerate() {
                errors.extend(f.validate(&key(&format!("steps[{i}].fields[{j}]"))));
                let at = key(&format!("steps[{i}].fields[{j}].name"));
                if f.name.is_empty() || f.name == OFFSET_COLUMN {
                    errors.push(format!("{at}: `{}` is not a usable field name", f.name));
                } else if current_names.contains(f.name.as_str()) {
                    errors.push(format!(
                        "{at}: `{}` is already a [schema] field (list only the fields the \
                         current version no longer has)",
                        f.name
                    ));
                } else if let Some(other) = old_types.get(f.name.as_str()) {
                    if other.data_type() != f.data_type() {
                        errors.push(format!(
                            "{at}: `{}` is declared as {} by another step and {} here",
                            f.name,
                            other.type_text(),
                            f.type_text()
                        ));
                    }
                } else {
                    old_types.insert(&f.name, f);
                }
            }
        }
        if errors.len() > before_fields {
            return errors; // the decoded schema itself is ambiguous
        }
        // Columns and expressions against the decoded schema.
        let decoded = self.decoded_schema(current).arrow_schema();
        let type_of = |name: &str| decoded.field_with_name(name).ok().map(|f| f.data_type());
        let protected = [self.version_field.as_str(), current.event_time.as_str()];
        for (i, step) in self.steps.iter().enumerate() {
            let at = |k: &str| key(&format!("steps[{i}].{k}"));
            let mut targets: HashMap<String, &str> = HashMap::new();
            let mut target =
                |errors: &mut Vec<String>, name: &str, what: &'static str, at: String| {
                    if protected.contains(&name) {
                        errors.push(format!(
                            "{at}: `{name}` cannot be written by a step (it is the {})",
                            if name == self.version_field {
                                "version field"
                            } else {
                                "event time"
                            }
                        ));
                        return false;
                    }
                    if type_of(name).is_none() {
                        errors.push(format!(
                            "{at}: `{name}` is neither a [schema] field nor in this or another \
                         step's `fields`"
                        ));
                        return false;
                    }
                    if let Some(other) = targets.insert(name.to_string(), what) {
                        errors.push(format!("{at}: `{name}` is also in `{other}` of this step"));
                        return false;
                    }
                    true
                };
            for (column, sql) in &step.set {
                if !target(&mut errors, column, "set", at(&format!("set.{column}"))) {
                    continue;
                }
                match compile_expr(sql, &decoded) {
                    Err(e) => errors.push(format!("{}: {e}", at(&format!("set.{column}")))),
                    Ok(expr) => match expr.data_type(&decoded) {
                        Err(e) => {
                            errors.push(format!("{}: `{sql}`: {e}", at(&format!("set.{column}"))))
                        }
                        Ok(from) => {
                            let to = type_of(column).expect("invariant: checked above");
                            if !can_cast_types(&from, to) {
                                errors.push(format!(
                                    "{}: `{sql}` is {from}, which cannot become the column's {to}",
                                    at(&format!("set.{column}"))
                                ));
                            }
                        }
                    },
                }
            }
            for (new, old) in &step.rename {
                let here = at(&format!("rename.{new}"));
                if !target(&mut errors, new, "rename", here.clone()) {
                    continue;
                }
                match type_of(old) {
                    None => errors.push(format!(
                        "{here}: the old column `{old}` is neither a [schema] field nor in a \
                         step's `fields`"
                    )),
                    Some(_) if old == new => {
                        errors.push(format!("{here}: renames `{old}` to itself"))
                    }
                    Some(_) if protected.contains(&old.as_str()) => errors.push(format!(
                        "{here}: `{old}` cannot be renamed away (decode and upcasting need it)"
                    )),
                    Some(from) => {
                        let to = type_of(new).expect("invariant: checked above");
                        if !can_cast_types(from, to) {
                            errors.push(format!(
                                "{here}: `{old}` is {from}, which cannot become `{new}`'s {to}"
                            ));
                        }
                    }
                }
            }
            for (j, column) in step.drop.iter().enumerate() {
                target(&mut errors, column, "drop", at(&format!("drop[{j}]")));
            }
            if step.set.is_empty() && step.rename.is_empty() && step.drop.is_empty() {
                errors.push(format!(
                    "{}: the step changes nothing (give it `set`, `rename` or `drop`)",
                    at("from_version")
                ));
            }
        }
        errors
    }
}

/// One compiled step.
struct Step {
    /// (column index, expression, column type)
    set: Vec<(usize, Arc<dyn PhysicalExpr>, DataType)>,
    /// (new column index, old column index, new column type)
    rename: Vec<(usize, usize, DataType)>,
    /// Columns emptied: dropped ones and the old side of renames not written otherwise.
    empty: Vec<usize>,
}

/// The operator of an [`UpcastConfig`]. See the module docs.
pub struct ConfigUpcastOperator {
    name: String,
    version_field: String,
    version_idx: usize,
    current: i64,
    first: i64,
    /// The decoded columns the steps work on (the input without the offset column).
    work: SchemaRef,
    offset_idx: Option<usize>,
    steps: BTreeMap<i64, Step>,
    /// For each output column (current schema order): its index in `work`.
    out_columns: Vec<usize>,
    output: SchemaRef,
}

impl ConfigUpcastOperator {
    /// `input` is the decoder's schema (built from [`UpcastConfig::decoded_schema`]);
    /// `current` the schema the chain after it sees.
    pub fn new(
        name: &str,
        config: &UpcastConfig,
        current: &SchemaConfig,
        input: SchemaRef,
    ) -> std::result::Result<Self, String> {
        let errors = config.validate("upcast", current);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let offset_idx = input.index_of(OFFSET_COLUMN).ok();
        let work = Arc::new(Schema::new(
            input
                .fields()
                .iter()
                .filter(|f| f.name() != OFFSET_COLUMN)
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let idx = |name: &str| {
            work.index_of(name)
                .map_err(|_| format!("the decoded schema has no column `{name}`"))
        };
        let version_idx = idx(&config.version_field)?;
        let mut steps = BTreeMap::new();
        for s in &config.steps {
            let mut step = Step {
                set: Vec::new(),
                rename: Vec::new(),
                empty: Vec::new(),
            };
            for (column, sql) in &s.set {
                let i = idx(column)?;
                let expr = compile_expr(sql, &work)?;
                step.set.push((i, expr, work.field(i).data_type().clone()));
            }
            for (new, old) in &s.rename {
                let i = idx(new)?;
                step.rename
                    .push((i, idx(old)?, work.field(i).data_type().clone()));
            }
            let written: HashSet<usize> = step
                .set
                .iter()
                .map(|s| s.0)
                .chain(step.rename.iter().map(|r| r.0))
                .collect();
            for column in s.drop.iter().chain(s.rename.values()) {
                let i = idx(column)?;
                if !written.contains(&i) && !step.empty.contains(&i) {
                    step.empty.push(i);
                }
            }
            steps.insert(s.from_version, step);
        }
        let current_arrow = current.arrow_schema();
        let mut out_columns = Vec::new();
        let mut out_fields: Vec<Field> = Vec::new();
        for f in current_arrow.fields() {
            out_columns.push(idx(f.name())?);
            out_fields.push(f.as_ref().clone());
        }
        if offset_idx.is_some() {
            out_fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        }
        Ok(Self {
            name: name.to_string(),
            version_field: config.version_field.clone(),
            version_idx,
            current: config.current_version(),
            first: *steps.keys().next().expect("invariant: validated non-empty"),
            work,
            offset_idx,
            steps,
            out_columns,
            output: Arc::new(Schema::new(out_fields)),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    /// Applies the step from `version` to every row of `rows` (all of that version).
    fn apply(&self, version: i64, rows: &RecordBatch) -> std::result::Result<RecordBatch, String> {
        let step = self
            .steps
            .get(&version)
            .expect("invariant: versions between first and current have a step");
        let n = rows.num_rows();
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        for (i, expr, to) in &step.set {
            let value = expr
                .evaluate(rows)
                .and_then(|v| v.into_array(n))
                .map_err(|e| e.to_string())?;
            columns[*i] = cast(&value, to).map_err(|e| e.to_string())?;
        }
        for (new, old, to) in &step.rename {
            columns[*new] = cast(rows.column(*old), to).map_err(|e| e.to_string())?;
        }
        for i in &step.empty {
            columns[*i] = new_null_array(self.work.field(*i).data_type(), n);
        }
        RecordBatch::try_new(self.work.clone(), columns).map_err(|e| e.to_string())
    }

    /// Rows of one version through every step up to the current version.
    fn upcast_rows(
        &self,
        from: i64,
        mut rows: RecordBatch,
    ) -> std::result::Result<RecordBatch, String> {
        for version in from..self.current {
            rows = self
                .apply(version, &rows)
                .map_err(|e| format!("upcasting version {version}: {e}"))?;
        }
        Ok(rows)
    }
}

impl Operator for ConfigUpcastOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let offsets = weir_runtime::offset_column(&batch, self.offset_idx);
        let offset = |i: usize| offsets.as_ref().map_or(-1, |o| o.value(i));
        let work_columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.offset_idx)
            .map(|(_, c)| c.clone())
            .collect();
        let work =
            RecordBatch::try_new(self.work.clone(), work_columns).map_err(|e| self.err(e))?;
        let versions =
            cast(work.column(self.version_idx), &DataType::Int64).map_err(|e| self.err(e))?;
        let versions = versions
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("invariant: cast to Int64");
        // Row indices by version; impossible versions go to the DLQ.
        let field = &self.version_field;
        let mut by_version: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for row in 0..work.num_rows() {
            if versions.is_null(row) {
                emit.reject(
                    offset(row),
                    ErrorKind::OperatorError,
                    format!("the event has no {field:?}"),
                );
                continue;
            }
            let v = versions.value(row);
            if v > self.current {
                emit.reject(
                    offset(row),
                    ErrorKind::OperatorError,
                    format!(
                        "version {v} is newer than the current version {}",
                        self.current
                    ),
                );
            } else if v < self.first {
                emit.reject(
                    offset(row),
                    ErrorKind::OperatorError,
                    format!("no upcaster from version {v} (current is {})", self.current),
                );
            } else {
                by_version.entry(v).or_default().push(row as u32);
            }
        }
        // Each version's rows together; a failing group is retried row by row.
        let mut parts = Vec::new();
        let mut order: Vec<u32> = Vec::new();
        for (version, rows) in by_version {
            let indices = UInt32Array::from(rows.clone());
            let group = take_record_batch(&work, &indices).map_err(|e| self.err(e))?;
            match self.upcast_rows(version, group.clone()) {
                Ok(done) => {
                    parts.push(done);
                    order.extend_from_slice(&rows);
                }
                Err(_) => {
                    for (j, row) in rows.iter().enumerate() {
                        match self.upcast_rows(version, group.slice(j, 1)) {
                            Ok(done) => {
                                parts.push(done);
                                order.push(*row);
                            }
                            Err(e) => {
                                emit.reject(offset(*row as usize), ErrorKind::OperatorError, e)
                            }
                        }
                    }
                }
            }
        }
        if parts.is_empty() {
            return Ok(());
        }
        let all = concat_batches(&self.work, &parts).map_err(|e| self.err(e))?;
        // Back to input order.
        let mut positions: Vec<u32> = (0..order.len() as u32).collect();
        positions.sort_by_key(|p| order[*p as usize]);
        let all = take_record_batch(&all, &UInt32Array::from(positions.clone()))
            .map_err(|e| self.err(e))?;
        let rows: Vec<u32> = positions.iter().map(|p| order[*p as usize]).collect();
        // The current shape; a required column left empty rejects its row.
        let mut keep = vec![true; all.num_rows()];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output.fields().len());
        for (field, &i) in self.output.fields().iter().zip(&self.out_columns) {
            let column = if i == self.version_idx {
                cast(
                    &Int64Array::from(vec![self.current; all.num_rows()]),
                    field.data_type(),
                )
                .map_err(|e| self.err(e))?
            } else {
                all.column(i).clone()
            };
            if !field.is_nullable() && column.null_count() > 0 {
                let valid = is_not_null(&column).map_err(|e| self.err(e))?;
                for (r, k) in keep.iter_mut().enumerate() {
                    if *k && !valid.value(r) {
                        *k = false;
                        emit.reject(
                            offset(rows[r] as usize),
                            ErrorKind::OperatorError,
                            format!(
                                "the upcast event has no value for the required field {:?}",
                                field.name()
                            ),
                        );
                    }
                }
            }
            columns.push(column);
        }
        if self.offset_idx.is_some() {
            columns.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| offset(*r as usize)),
            )));
        }
        if !keep.iter().all(|k| *k) {
            let mask = BooleanArray::from(keep);
            columns = columns
                .iter()
                .map(|c| filter(c, &mask))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
        }
        let out = RecordBatch::try_new(self.output.clone(), columns).map_err(|e| self.err(e))?;
        emit.emit(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::JsonDecoder;
    use crate::schema::FieldType;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use weir_runtime::operator::Decoder;
    use weir_runtime::RawMessage;

    fn field(name: &str, field_type: FieldType, nullable: bool) -> FieldConfig {
        FieldConfig {
            nullable,
            ..FieldConfig::new(name, field_type)
        }
    }

    /// v3 (current): amount_cents; v2: amount in units; v1: `total`, no currency.
    fn current() -> SchemaConfig {
        SchemaConfig {
            table: "orders".into(),
            event_time: "time".into(),
            partition_key: None,
            partition_key_check: Default::default(),
            metadata: Default::default(),
            fields: vec![
                field("order_id", FieldType::String, false),
                field("version", FieldType::Int64, false),
                field("currency", FieldType::String, false),
                field("amount_cents", FieldType::Int64, false),
                // The events here are stamped a few ms after the epoch.
                FieldConfig {
                    any_epoch: true,
                    ..field("time", FieldType::Timestamp, false)
                },
            ],
        }
    }

    fn config() -> UpcastConfig {
        UpcastConfig {
            version_field: "version".into(),
            steps: vec![
                UpcastStepConfig {
                    from_version: 2,
                    fields: vec![field("amount", FieldType::Float64, true)],
                    set: [(
                        "amount_cents".to_string(),
                        "CAST(round(amount * 100) AS BIGINT)".to_string(),
                    )]
                    .into(),
                    rename: BTreeMap::new(),
                    drop: vec!["amount".into()],
                },
                UpcastStepConfig {
                    from_version: 1,
                    fields: vec![
                        field("total", FieldType::Float64, true),
                        field("code", FieldType::String, true),
                    ],
                    set: [("currency".to_string(), "coalesce(code, 'EUR')".to_string())].into(),
                    rename: [("amount".to_string(), "total".to_string())].into(),
                    drop: vec![],
                },
            ],
        }
    }

    /// Decodes JSON lines with the decoded schema and runs the operator on them.
    fn run(config: &UpcastConfig, lines: &[&str]) -> (Vec<String>, Vec<(i64, String)>) {
        let mut decoder = JsonDecoder::new(&config.decoded_schema(&current()));
        let msgs: Vec<RawMessage> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| RawMessage {
                offset: 10 + i as i64,
                key: None,
                payload: Some(l.as_bytes().to_vec()),
                timestamp_ms: None,
                headers: Vec::new(),
            })
            .collect();
        let decoded = decoder
            .decode(&weir_runtime::RawBatch::new("t".into(), 0, msgs))
            .unwrap();
        assert!(decoded.rejects.is_empty(), "{:?}", decoded.rejects);
        let mut op =
            ConfigUpcastOperator::new("upcast", config, &current(), decoder.schema()).unwrap();
        let mut emit = Emit::default();
        op.process(decoded.batch.unwrap(), &mut emit).unwrap();
        let mut rows = Vec::new();
        for b in emit.batches() {
            assert_eq!(b.schema(), op.output_schema());
            for r in 0..b.num_rows() {
                let s = |c: usize| b.column(c).as_string::<i32>().value(r).to_string();
                let i = |c: usize| b.column(c).as_primitive::<Int64Type>().value(r);
                rows.push(format!("{} v{} {} {} @{}", s(0), i(1), s(2), i(3), i(5)));
            }
        }
        let rejects = emit
            .rejects()
            .iter()
            .map(|r| (r.offset, r.message.clone()))
            .collect();
        (rows, rejects)
    }

    #[test]
    fn each_version_goes_through_its_steps_and_rows_keep_their_order() {
        let (rows, rejects) = run(
            &config(),
            &[
                r#"{"order_id":"a","version":1,"total":12.5,"time":1}"#,
                r#"{"order_id":"b","version":3,"currency":"GBP","amount_cents":700,"time":2}"#,
                r#"{"order_id":"c","version":2,"currency":"USD","amount":3.0,"time":3}"#,
                r#"{"order_id":"d","version":1,"total":1.0,"code":"CHF","time":4}"#,
            ],
        );
        assert_eq!(rejects, []);
        assert_eq!(
            rows,
            [
                "a v3 EUR 1250 @10",
                "b v3 GBP 700 @11",
                "c v3 USD 300 @12",
                "d v3 CHF 100 @13"
            ]
        );
    }

    #[test]
    fn impossible_versions_failing_expressions_and_empty_required_columns_go_to_the_dlq() {
        let mut cfg = config();
        // v1 → v2 parses the amount from text: "x" cannot be cast, only that row fails.
        cfg.steps[1].fields = vec![
            field("total", FieldType::String, true),
            field("code", FieldType::String, true),
        ];
        cfg.steps[1].rename.clear();
        cfg.steps[1]
            .set
            .insert("amount".into(), "CAST(total AS DOUBLE)".into());
        let (rows, rejects) = run(
            &cfg,
            &[
                r#"{"order_id":"a","version":1,"total":"2.5","time":1}"#,
                r#"{"order_id":"b","version":1,"total":"x","time":2}"#,
                r#"{"order_id":"c","version":9,"time":3}"#,
                r#"{"order_id":"d","version":0,"time":4}"#,
                r#"{"order_id":"e","time":5}"#,
                r#"{"order_id":"f","version":3,"amount_cents":1,"time":6}"#,
                r#"{"order_id":"g","version":2,"currency":"EUR","time":7}"#,
            ],
        );
        assert_eq!(rows, ["a v3 EUR 250 @10"]);
        let rejects: Vec<(i64, &str)> = rejects.iter().map(|(o, m)| (*o, m.as_str())).collect();
        assert_eq!(rejects.len(), 6, "{rejects:?}");
        assert_eq!(
            rejects[0],
            (12, "version 9 is newer than the current version 3")
        );
        assert_eq!(
            rejects[1],
            (13, "no upcaster from version 0 (current is 3)")
        );
        assert_eq!(rejects[2], (14, "the event has no \"version\""));
        assert_eq!(rejects[3].0, 11);
        assert!(
            rejects[3].1.starts_with("upcasting version 1: ") && rejects[3].1.contains("'x'"),
            "{}",
            rejects[3].1
        );
        assert_eq!(
            rejects[4],
            (
                15,
                "the upcast event has no value for the required field \"currency\""
            )
        );
        assert_eq!(
            rejects[5],
            (
                16,
                "the upcast event has no value for the required field \"amount_cents\""
            )
        );
    }

    #[test]
    fn the_decoded_schema_relaxes_written_columns_and_adds_old_ones() {
        let decoded = config().decoded_schema(&current());
        let shown: Vec<String> = decoded
            .fields
            .iter()
            .map(|f| format!("{}:{:?}:{}", f.name, f.field_type, f.nullable))
            .collect();
        assert_eq!(
            shown,
            [
                "order_id:String:false",
                "version:Int64:true",
                "currency:String:true",
                "amount_cents:Int64:true",
                "time:Timestamp:false",
                "amount:Float64:true",
                "total:Float64:true",
                "code:String:true",
            ]
        );
        assert_eq!(config().current_version(), 3);
    }

    #[test]
    fn every_impossible_step_is_reported_with_its_key() {
        let step = |from_version, set: &[(&str, &str)], rename: &[(&str, &str)], drop: &[&str]| {
            UpcastStepConfig {
                from_version,
                fields: vec![],
                set: set
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                rename: rename
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                drop: drop.iter().map(|s| s.to_string()).collect(),
            }
        };
        let mut cfg = UpcastConfig {
            version_field: "version".into(),
            steps: vec![
                step(
                    1,
                    &[("currency", "'EUR'"), ("nope", "1")],
                    &[],
                    &["currency"],
                ),
                step(
                    3,
                    &[("amount_cents", "make_array(1, 2)"), ("time", "now()")],
                    &[("order_id", "missing"), ("currency", "version")],
                    &[],
                ),
                step(4, &[("currency", "no_such_col")], &[], &[]),
                step(5, &[], &[], &[]),
            ],
        };
        cfg.steps[0].fields = vec![
            field("currency", FieldType::String, true),
            field("old", FieldType::Int64, true),
        ];
        cfg.steps[2].fields = vec![field("old", FieldType::String, true)];
        assert_eq!(
            cfg.validate("upcast", &current()),
            [
                "upcast.steps: no step from version 2 (steps must cover every version from 1 to 5)",
                "upcast.steps[0].fields[0].name: `currency` is already a [schema] field (list \
                 only the fields the current version no longer has)",
                "upcast.steps[2].fields[0].name: `old` is declared as int64 by another step and \
                 string here",
            ]
        );
        cfg.steps[0].fields.clear();
        cfg.steps[2].fields.clear();
        cfg.steps.push(step(2, &[("currency", "'x'")], &[], &[]));
        let mut errors = cfg.validate("upcast", &current());
        let cast = errors.remove(2);
        assert!(
            cast.starts_with("upcast.steps[1].set.amount_cents: `make_array(1, 2)` is List(")
                && cast.ends_with("which cannot become the column's Int64"),
            "{cast}"
        );
        assert_eq!(
            errors,
            [
                "upcast.steps[0].set.nope: `nope` is neither a [schema] field nor in this or \
                 another step's `fields`",
                "upcast.steps[0].drop[0]: `currency` is also in `set` of this step",
                "upcast.steps[1].set.time: `time` cannot be written by a step (it is the event \
                 time)",
                "upcast.steps[1].rename.currency: `version` cannot be renamed away (decode and \
                 upcasting need it)",
                "upcast.steps[1].rename.order_id: the old column `missing` is neither a \
                 [schema] field nor in a step's `fields`",
                "upcast.steps[2].set.currency: `no_such_col`: Schema error: No field named \
                 no_such_col.",
                "upcast.steps[3].from_version: the step changes nothing (give it `set`, \
                 `rename` or `drop`)",
            ],
        );
        let none = UpcastConfig {
            version_field: "currency".into(),
            steps: vec![],
        };
        assert_eq!(
            none.validate("upcast", &current()),
            [
                "upcast.version_field: field `currency` must have type int64 or int32, not String",
                "upcast.steps: at least one step is required ([[upcast.steps]])",
            ]
        );
    }
}
