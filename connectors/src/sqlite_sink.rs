//! The `sqlite` sink: result rows upserted into a table by key (idempotent: a replay after a
//! crash overwrites rows with the same values, so at-least-once delivery is effectively once).
//!
//! Writes go through one prepared `INSERT ... ON CONFLICT(keys) DO UPDATE` statement, values
//! bound as parameters; a row marked as a delete ([`DELETED_COLUMN`](weir_runtime::DELETED_COLUMN)
//! is `true`) goes through `DELETE ... WHERE <keys> = ?` instead, in row order, in the same
//! transaction; inside a transaction that stays open across writes and is committed
//! by `prepare` (WAL journal, `synchronous=FULL`: durable once committed). The table is
//! created on the first write when absent, from the batch schema:
//!
//! | Arrow type | SQLite |
//! |---|---|
//! | Int8..Int64, UInt8..UInt64 | INTEGER (a UInt64 above i64::MAX rejects the row) |
//! | Float32, Float64 | REAL |
//! | Utf8, LargeUtf8, Utf8View | TEXT |
//! | Boolean | INTEGER (0 or 1) |
//! | Timestamp (any unit and zone) | INTEGER, epoch milliseconds |
//! | Date32 | TEXT, ISO date |
//! | Decimal128(p, s) | TEXT, the exact decimal with its s fraction digits (`178.5500`) |
//! | Struct, List, Map | TEXT, JSON (as the JSONL sink writes it; `json_extract` reads it) |
//!
//! The transaction takes the write lock when it begins (`BEGIN IMMEDIATE`): once a write has
//! started, nothing another connection commits can make it fail, so a retried write always
//! lands in the same transaction. Other writers of the database wait until `prepare`.
//!
//! Key columns are declared NOT NULL: a row with a null key is rejected (to the DLQ), like any
//! row that violates a constraint. SQLITE_BUSY and SQLITE_LOCKED are transient errors; other
//! SQLite errors are fatal and carry SQLite's message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};
use serde::Deserialize;
use weir_runtime::arrow::array::{Array, ArrayRef, AsArray};
use weir_runtime::arrow::compute::kernels::cast::{cast_with_options, CastOptions};
use weir_runtime::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, UInt64Type,
};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::{ErrorClass, Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{Guarantee, Lane, SinkWriter, WriteOutcome, DELETED_COLUMN, OFFSET_COLUMN};

use crate::{config_key, sink_rows};

fn yes() -> bool {
    true
}

/// Configuration of the `sqlite` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// The database file (created if absent).
    pub path: PathBuf,
    /// The table to upsert into.
    pub table: String,
    /// The upsert key: rows with equal values in these columns replace each other, e.g.
    /// `["sensor_id", "window_start"]`.
    pub key_columns: Vec<String>,
    /// Create the table from the first batch's schema when it does not exist.
    #[serde(default = "yes")]
    pub create_table: bool,
}

impl SqliteSinkConfig {
    /// What this sink cannot store of rows with `schema` (the pipeline's output), as
    /// `"<key>: <problem>"` lines: `weir run --check` reports them before any output exists.
    pub fn check_columns(&self, schema: &Schema, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        let written: Vec<&Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref())
            .filter(|f| f.name() != OFFSET_COLUMN && f.name() != DELETED_COLUMN)
            .collect();
        for f in &written {
            if sql_type(f.data_type()).is_none() {
                errors.push(format!(
                    "{key_prefix}: column `{}` has type {}, which the SQLite sink cannot store \
                     (cast it to DOUBLE, BIGINT or VARCHAR)",
                    f.name(),
                    f.data_type()
                ));
            }
        }
        for (i, column) in self.key_columns.iter().enumerate() {
            if !written.iter().any(|f| f.name() == column) {
                let names: Vec<&str> = written.iter().map(|f| f.name().as_str()).collect();
                errors.push(format!(
                    "{}[{i}]: `{column}` is not a column of the pipeline's output ({})",
                    key("key_columns"),
                    names.join(", ")
                ));
            }
        }
        errors
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(format!("{}: must not be empty", key("path")));
        }
        if self.table.is_empty() {
            errors.push(format!("{}: must not be empty", key("table")));
        }
        if self.key_columns.is_empty() {
            errors.push(format!(
                "{}: must name at least one column (the upsert key)",
                key("key_columns")
            ));
        }
        for (i, column) in self.key_columns.iter().enumerate() {
            if column.is_empty() {
                errors.push(format!("{}[{i}]: must not be empty", key("key_columns")));
            } else if column == OFFSET_COLUMN {
                errors.push(format!(
                    "{}[{i}]: {OFFSET_COLUMN} is internal and never written",
                    key("key_columns")
                ));
            } else if self.key_columns[..i].contains(column) {
                errors.push(format!(
                    "{}[{i}]: {column:?} is listed twice",
                    key("key_columns")
                ));
            }
        }
        errors
    }
}

/// `"name"` with embedded quotes doubled: an SQL identifier, whatever the name.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The SQLite column type of an Arrow type, `None` when the sink cannot store it.
fn sql_type(data_type: &DataType) -> Option<&'static str> {
    use DataType::*;
    match data_type {
        Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Boolean
        | Timestamp(_, _) => Some("INTEGER"),
        Float16 | Float32 | Float64 => Some("REAL"),
        // A decimal is its exact text (`178.5500`): REAL would round it.
        Utf8 | LargeUtf8 | Utf8View | Date32 | Decimal128(_, _) => Some("TEXT"),
        // A struct, list or map is its JSON text (SQLite's JSON functions read it).
        t if crate::is_nested(t) => Some("TEXT"),
        _ => None,
    }
}

/// One column of a batch, converted to what SQLite binds.
enum Column {
    Int(ArrayRef),
    UInt64(ArrayRef),
    Real(ArrayRef),
    Text(ArrayRef),
    Bool(ArrayRef),
}

/// What the sink knows of the batch schema it last wrote.
struct Plan {
    schema: SchemaRef,
    /// Indices (in the batch) of the written columns: all but the offset column.
    columns: Vec<usize>,
    sql: String,
    /// Positions in `columns` of the key columns, in `delete_sql`'s parameter order.
    keys: Vec<usize>,
    /// `DELETE ... WHERE` every key column equals its parameter.
    delete_sql: String,
}

/// The `sqlite` sink. See the module docs.
pub struct SqliteSink {
    name: String,
    config: SqliteSinkConfig,
    conn: Connection,
    plan: Option<Plan>,
    in_transaction: bool,
}

impl std::fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSink")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("in_transaction", &self.in_transaction)
            .finish()
    }
}

impl SqliteSink {
    /// Opens (or creates) the database in WAL mode with full synchronous commits.
    pub fn new(name: impl Into<String>, config: &SqliteSinkConfig) -> Result<Self> {
        let name = name.into();
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(WeirError::sink(name, errors.join("; ")));
        }
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| WeirError::io(dir, e))?;
        }
        let conn = Connection::open(&config.path)
            .map_err(|e| sql_error(&name, &format!("open {}", config.path.display()), e))?;
        conn.busy_timeout(Duration::from_secs(1))
            .map_err(|e| sql_error(&name, "set busy timeout", e))?;
        // journal_mode returns a row, so it is a query.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(|e| sql_error(&name, "enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(WeirError::sink(
                name,
                format!(
                    "{}: could not enable WAL (journal mode is {mode})",
                    config.path.display()
                ),
            ));
        }
        conn.execute_batch("PRAGMA synchronous=FULL")
            .map_err(|e| sql_error(&name, "set synchronous", e))?;
        Ok(Self {
            name,
            config: config.clone(),
            conn,
            plan: None,
            in_transaction: false,
        })
    }

    fn table_exists(&self) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&self.config.table],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| sql_error(&self.name, "look up the table", e))
    }

    /// Checks the schema, creates the table if needed, and builds the upsert statement.
    fn plan(&self, schema: &SchemaRef) -> Result<Plan> {
        let bad = |message: String| WeirError::sink(&self.name, message);
        for key in &self.config.key_columns {
            if schema.index_of(key).is_err() {
                return Err(bad(format!(
                    "key column {key:?} is not in the output (columns: {})",
                    schema
                        .fields()
                        .iter()
                        .filter(|f| f.name() != OFFSET_COLUMN)
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut columns = Vec::new();
        let mut defs = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if field.name() == OFFSET_COLUMN {
                continue;
            }
            let ty = sql_type(field.data_type()).ok_or_else(|| {
                bad(format!(
                    "column {:?} has type {}, which SQLite cannot store (supported: integers, \
                     floats, strings, booleans, timestamps, Date32)",
                    field.name(),
                    field.data_type()
                ))
            })?;
            let not_null = if self.config.key_columns.contains(field.name()) {
                " NOT NULL"
            } else {
                ""
            };
            defs.push(format!("{} {ty}{not_null}", quote(field.name())));
            columns.push(i);
        }
        let table = quote(&self.config.table);
        let keys: Vec<String> = self.config.key_columns.iter().map(|k| quote(k)).collect();
        if !self.table_exists()? {
            if !self.config.create_table {
                return Err(bad(format!(
                    "table {table} does not exist in {} and create_table is false",
                    self.config.path.display()
                )));
            }
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({}))",
                defs.join(", "),
                keys.join(", ")
            );
            self.conn
                .execute_batch(&ddl)
                .map_err(|e| sql_error(&self.name, "create table", e))?;
        }
        let names: Vec<String> = columns
            .iter()
            .map(|i| quote(schema.field(*i).name()))
            .collect();
        let updates: Vec<String> = columns
            .iter()
            .map(|i| schema.field(*i).name())
            .filter(|n| !self.config.key_columns.contains(n))
            .map(|n| format!("{0} = excluded.{0}", quote(n)))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO {action}",
            names.join(", "),
            vec!["?"; names.len()].join(", "),
            keys.join(", ")
        );
        let key_positions = self
            .config
            .key_columns
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|i| schema.field(*i).name() == k)
                    .expect("invariant: key columns are checked above")
            })
            .collect();
        let delete_sql = format!(
            "DELETE FROM {table} WHERE {}",
            keys.iter()
                .enumerate()
                .map(|(i, k)| format!("{k} = ?{}", i + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        Ok(Plan {
            schema: schema.clone(),
            columns,
            sql,
            keys: key_positions,
            delete_sql,
        })
    }

    /// The batch's written columns in bindable form.
    fn convert(&self, batch: &RecordBatch, plan: &Plan) -> Result<Vec<Column>> {
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let cast = |array: &ArrayRef, to: &DataType| {
            cast_with_options(array, to, &strict).map_err(|e| {
                WeirError::sink(&self.name, format!("convert a column for SQLite: {e}"))
            })
        };
        plan.columns
            .iter()
            .map(|i| {
                let array = batch.column(*i);
                Ok(match array.data_type() {
                    DataType::UInt64 => Column::UInt64(array.clone()),
                    DataType::Int64 => Column::Int(array.clone()),
                    DataType::Float64 => Column::Real(array.clone()),
                    DataType::Utf8 => Column::Text(array.clone()),
                    DataType::Boolean => Column::Bool(array.clone()),
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32 => Column::Int(cast(array, &DataType::Int64)?),
                    DataType::Float16 | DataType::Float32 => {
                        Column::Real(cast(array, &DataType::Float64)?)
                    }
                    DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Date32
                    | DataType::Decimal128(_, _) => Column::Text(cast(array, &DataType::Utf8)?),
                    DataType::Timestamp(_, tz) => {
                        let millis = cast(
                            array,
                            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
                        )?;
                        Column::Int(cast(&millis, &DataType::Int64)?)
                    }
                    t if crate::is_nested(t) => Column::Text(
                        crate::json_texts(array).map_err(|e| WeirError::sink(&self.name, e))?,
                    ),
                    other => {
                        return Err(WeirError::sink(
                            &self.name,
                            format!("column type {other} is not supported"),
                        ))
                    }
                })
            })
            .collect()
    }

    fn begin(&mut self) -> Result<()> {
        if !self.in_transaction {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| sql_error(&self.name, "begin", e))?;
            self.in_transaction = true;
        }
        Ok(())
    }
}

/// A rusqlite error as a sink error of the right class.
fn sql_error(sink: &str, doing: &str, e: rusqlite::Error) -> WeirError {
    let class = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    };
    WeirError::Sink {
        sink: sink.to_string(),
        message: format!("{doing}: {e}"),
        class,
    }
}

impl EpochParticipant for SqliteSink {
    /// Commits the open transaction: every row written so far is durable.
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        if self.in_transaction {
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| sql_error(&self.name, "commit", e))?;
            self.in_transaction = false;
        }
        Ok(())
    }
}

impl SinkWriter for SqliteSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::IdempotentUpsert
    }

    fn write(&mut self, _lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        if batch.num_rows() == 0 {
            return Ok(WriteOutcome::default());
        }
        let split = sink_rows(&self.name, batch)?;
        let batch = &split.rows;
        let schema = batch.schema();
        let plan = match self.plan.take() {
            Some(plan) if Arc::ptr_eq(&plan.schema, &schema) || *plan.schema == *schema => plan,
            _ => self.plan(&schema)?,
        };
        let columns = match self.convert(batch, &plan) {
            Ok(columns) => columns,
            Err(e) => {
                self.plan = Some(plan);
                return Err(e);
            }
        };
        let all: Vec<usize> = (0..columns.len()).collect();
        let result = self.begin().and_then(|_| {
            let mut upsert = self
                .conn
                .prepare_cached(&plan.sql)
                .map_err(|e| sql_error(&self.name, "prepare the upsert", e))?;
            let mut delete = self
                .conn
                .prepare_cached(&plan.delete_sql)
                .map_err(|e| sql_error(&self.name, "prepare the delete", e))?;
            let mut outcome = WriteOutcome::default();
            'rows: for row in 0..batch.num_rows() {
                let (stmt, bound_columns) = if split.is_delete(row) {
                    (&mut delete, &plan.keys)
                } else {
                    (&mut upsert, &all)
                };
                for (param, c) in bound_columns.iter().enumerate() {
                    let column = &columns[*c];
                    let bound = match column {
                        _ if column_is_null(column, row) => {
                            stmt.raw_bind_parameter(param + 1, rusqlite::types::Null)
                        }
                        Column::Int(a) => stmt
                            .raw_bind_parameter(param + 1, a.as_primitive::<Int64Type>().value(row)),
                        Column::UInt64(a) => {
                            let v = a.as_primitive::<UInt64Type>().value(row);
                            match i64::try_from(v) {
                                Ok(v) => stmt.raw_bind_parameter(param + 1, v),
                                Err(_) => {
                                    let name = plan.schema.field(plan.columns[*c]).name();
                                    outcome.rejected.push((
                                        row,
                                        format!("column {name:?}: {v} does not fit SQLite's 64-bit signed INTEGER"),
                                    ));
                                    continue 'rows;
                                }
                            }
                        }
                        Column::Real(a) => stmt.raw_bind_parameter(
                            param + 1,
                            a.as_primitive::<Float64Type>().value(row),
                        ),
                        Column::Text(a) => {
                            stmt.raw_bind_parameter(param + 1, a.as_string::<i32>().value(row))
                        }
                        Column::Bool(a) => {
                            stmt.raw_bind_parameter(param + 1, a.as_boolean().value(row))
                        }
                    };
                    bound.map_err(|e| sql_error(&self.name, "bind a value", e))?;
                }
                match stmt.raw_execute() {
                    Ok(_) => outcome.accepted += 1,
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        outcome.rejected.push((row, format!("constraint violated: {e}")));
                    }
                    Err(e) => return Err(sql_error(&self.name, "upsert", e)),
                }
            }
            Ok(outcome)
        });
        self.plan = Some(plan);
        result
    }
}

fn column_is_null(column: &Column, row: usize) -> bool {
    match column {
        Column::Int(a)
        | Column::UInt64(a)
        | Column::Real(a)
        | Column::Text(a)
        | Column::Bool(a) => a.is_null(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition `p` of topic `t`.
    fn l(p: i32) -> Lane {
        Lane::new("t", p)
    }
    use weir_runtime::arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Float32Array, Int32Array, Int64Array,
        StringArray, TimestampMicrosecondArray, UInt64Array,
    };
    use weir_runtime::arrow::datatypes::{Field, Schema};

    fn config(dir: &std::path::Path) -> SqliteSinkConfig {
        SqliteSinkConfig {
            path: dir.join("out.db"),
            table: "avg \"temp\"".into(),
            key_columns: vec!["sensor_id".into(), "window_start".into()],
            create_table: true,
        }
    }

    fn batch(rows: &[(&str, i64, Option<f64>)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, true),
            Field::new("window_start", DataType::Int64, false),
            Field::new("avg", DataType::Float64, true),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(
                    rows.iter()
                        .map(|r| r.2)
                        .collect::<weir_runtime::arrow::array::Float64Array>(),
                ),
                Arc::new(Int64Array::from((0..rows.len() as i64).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn rows(path: &std::path::Path) -> Vec<(String, i64, Option<f64>)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT sensor_id, window_start, avg FROM \"avg \"\"temp\"\"\" ORDER BY 1, 2")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn writing_the_same_batch_twice_keeps_one_row_per_key_with_the_latest_values() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        let first = batch(&[("a", 0, Some(1.0)), ("b", 0, Some(2.0)), ("a", 60, None)]);
        assert_eq!(sink.write(&l(0), &first).unwrap().accepted, 3);
        assert_eq!(sink.write(&l(0), &first).unwrap().accepted, 3);
        let update = batch(&[("a", 0, Some(9.5))]);
        sink.write(&l(1), &update).unwrap();
        sink.prepare(&l(0), 1).unwrap();
        assert_eq!(
            rows(&cfg.path),
            [
                ("a".to_string(), 0, Some(9.5)),
                ("a".to_string(), 60, None),
                ("b".to_string(), 0, Some(2.0))
            ]
        );
        // A restart replays the same output: nothing changes.
        drop(sink);
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        sink.write(&l(0), &first).unwrap();
        sink.write(&l(1), &update).unwrap();
        sink.prepare(&l(0), 2).unwrap();
        assert_eq!(rows(&cfg.path).len(), 3);
    }

    /// `batch` plus the delete flags.
    fn with_deletes(rows: &[(&str, i64, Option<f64>)], deleted: &[bool]) -> RecordBatch {
        let b = batch(rows);
        let mut fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            weir_runtime::DELETED_COLUMN,
            DataType::Boolean,
            false,
        ));
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(deleted.to_vec())));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn rows_marked_deleted_remove_their_key_in_row_order() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        sink.write(
            &l(0),
            &batch(&[
                ("a", 0, Some(1.0)),
                ("b", 0, Some(2.0)),
                ("c", 0, Some(3.0)),
            ]),
        )
        .unwrap();
        sink.prepare(&l(0), 1).unwrap();
        // a: deleted; b: deleted then upserted again; c: upserted then deleted; d: a delete
        // of a key that is not there.
        let changes = with_deletes(
            &[
                ("a", 0, None),
                ("b", 0, None),
                ("b", 0, Some(20.0)),
                ("c", 0, Some(30.0)),
                ("c", 0, None),
                ("d", 0, None),
            ],
            &[true, true, false, false, true, true],
        );
        let outcome = sink.write(&l(0), &changes).unwrap();
        assert_eq!((outcome.accepted, outcome.rejected.len()), (6, 0));
        sink.prepare(&l(0), 2).unwrap();
        assert_eq!(rows(&cfg.path), [("b".to_string(), 0, Some(20.0))]);
        // Replaying the same changes after a restart leaves the same table.
        drop(sink);
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        sink.write(&l(0), &changes).unwrap();
        sink.prepare(&l(0), 3).unwrap();
        assert_eq!(rows(&cfg.path), [("b".to_string(), 0, Some(20.0))]);
        // The flag is never a column of the table.
        let conn = Connection::open(&cfg.path).unwrap();
        let columns: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('avg \"temp\"') WHERE name = '__deleted'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0);
    }

    #[test]
    fn rows_become_visible_to_other_connections_at_prepare() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        sink.write(&l(0), &batch(&[("a", 0, Some(1.0))])).unwrap();
        sink.prepare(&l(0), 1).unwrap();
        sink.write(&l(0), &batch(&[("b", 0, Some(1.0))])).unwrap();
        assert_eq!(
            rows(&cfg.path).len(),
            1,
            "the open transaction is not visible"
        );
        sink.prepare(&l(0), 2).unwrap();
        assert_eq!(rows(&cfg.path).len(), 2);
    }

    #[test]
    fn a_key_column_missing_from_the_output_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.key_columns = vec!["sensor_id".into(), "window_end".into()];
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        let err = sink.write(&l(0), &batch(&[("a", 0, None)])).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Fatal);
        let text = err.to_string();
        assert!(text.contains("\"window_end\""), "{text}");
        assert!(text.contains("sensor_id, window_start, avg"), "{text}");
    }

    #[test]
    fn a_null_key_rejects_only_that_row() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, true),
            Field::new("window_start", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let outcome = sink.write(&l(0), &b).unwrap();
        assert_eq!(outcome.accepted, 2);
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].0, 1);
        assert!(
            outcome.rejected[0].1.contains("NOT NULL"),
            "{:?}",
            outcome.rejected
        );
    }

    #[test]
    fn every_supported_type_is_stored_and_others_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SqliteSinkConfig {
            path: tmp.path().join("types.db"),
            table: "t".into(),
            key_columns: vec!["k".into()],
            create_table: true,
        };
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("f", DataType::Float32, true),
            Field::new("b", DataType::Boolean, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("m", DataType::Decimal128(38, 4), true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(Float32Array::from(vec![0.5, 1.5])),
                Arc::new(BooleanArray::from(vec![true, false])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_700_000_000_123_456, 0])
                        .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from(vec![19_723, 0])),
                Arc::new(UInt64Array::from(vec![7, u64::MAX])),
                Arc::new(
                    Decimal128Array::from(vec![-(10i128.pow(37) + 1), 0])
                        .with_precision_and_scale(38, 4)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let outcome = sink.write(&l(0), &b).unwrap();
        assert_eq!(outcome.accepted, 1);
        assert_eq!(outcome.rejected[0].0, 1, "u64::MAX does not fit");
        sink.prepare(&l(0), 1).unwrap();
        let conn = Connection::open(&cfg.path).unwrap();
        let row: (i64, f64, i64, i64, String, i64, String) = conn
            .query_row("SELECT k, f, b, ts, d, u, m FROM t", [], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap();
        assert_eq!(
            row,
            (
                1,
                0.5,
                1,
                1_700_000_000_123,
                "2024-01-01".into(),
                7,
                // Beyond what REAL holds exactly.
                "-1000000000000000000000000000000000.0001".into()
            )
        );

        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("blob", DataType::Binary, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1])),
                Arc::new(weir_runtime::arrow::array::BinaryArray::from(vec![
                    &b"x"[..],
                ])),
            ],
        )
        .unwrap();
        let err = sink.write(&l(0), &b).unwrap_err().to_string();
        assert!(err.contains("\"blob\"") && err.contains("Binary"), "{err}");
    }

    #[test]
    fn a_missing_table_is_an_error_when_creation_is_off() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SqliteSinkConfig {
            create_table: false,
            ..config(tmp.path())
        };
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        let err = sink
            .write(&l(0), &batch(&[("a", 0, None)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_locked_database_is_a_transient_error() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let mut sink = SqliteSink::new("db", &cfg).unwrap();
        sink.write(&l(0), &batch(&[("a", 0, None)])).unwrap();
        sink.prepare(&l(0), 1).unwrap();
        let other = Connection::open(&cfg.path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        sink.conn.busy_timeout(Duration::from_millis(10)).unwrap();
        let err = sink
            .write(&l(0), &batch(&[("b", 0, None)]))
            .and_then(|_| sink.prepare(&l(0), 2));
        assert_eq!(err.unwrap_err().class(), ErrorClass::Transient);
        other.execute_batch("ROLLBACK").unwrap();
        sink.write(&l(0), &batch(&[("b", 0, None)])).unwrap();
        sink.prepare(&l(0), 2).unwrap();
        assert_eq!(rows(&cfg.path).len(), 2);
    }

    #[test]
    fn impossible_values_are_all_reported() {
        let cfg = SqliteSinkConfig {
            path: PathBuf::new(),
            table: String::new(),
            key_columns: vec!["a".into(), "a".into(), OFFSET_COLUMN.into()],
            create_table: true,
        };
        assert_eq!(
            cfg.validate("sinks.db"),
            [
                "sinks.db.path: must not be empty",
                "sinks.db.table: must not be empty",
                "sinks.db.key_columns[1]: \"a\" is listed twice",
                "sinks.db.key_columns[2]: __offset is internal and never written",
            ]
        );
        let none = SqliteSinkConfig {
            key_columns: vec![],
            ..config(std::path::Path::new("/tmp"))
        };
        assert_eq!(
            none.validate(""),
            ["key_columns: must name at least one column (the upsert key)"]
        );
    }

    #[test]
    fn identifiers_are_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("select"), "\"select\"");
    }
}
