//! weir-connectors: where events come from and where results go.
//!
//! Sources: [Kafka](kafka) topics, a deterministic IoT [generator](generator) (for tests,
//! examples and `weir bench`) and a newline-delimited [JSON file](jsonl_source). Sinks:
//! [JSONL files](jsonl_sink) and [Parquet files](parquet_sink) (exactly-once by the epoch
//! protocol), [PostgreSQL](postgres) (upserts, and the checkpoint store in the same
//! transaction: exactly-once), [SQLite](sqlite_sink) (idempotent upserts), [Kafka](kafka)
//! (at-least-once, or exactly-once in transactions) and the [terminal](terminal_sink)
//! (at-least-once). Dead letters: [JSONL files](dlq_file), a [Kafka](kafka) topic or a
//! [PostgreSQL](postgres) table, read back by [`dlq_records`].
//!
//! Every config struct has a pure `validate(key_prefix)` that reports all impossible values at
//! once; constructors (`new`) do the I/O.

use std::sync::Arc;

use weir_runtime::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::json::LineDelimitedWriter;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::Result;
use weir_runtime::error::WeirError;
use weir_runtime::{DELETED_COLUMN, OFFSET_COLUMN};

pub use weir_runtime::base64;
pub mod dlq_file;
pub mod dlq_records;
pub mod epoch_files;
pub mod generator;
pub mod jsonl_sink;
pub mod jsonl_source;
pub mod kafka;
pub mod parquet_sink;
pub mod postgres;
pub mod sqlite_sink;
pub mod terminal_sink;

pub use dlq_file::{read_dlq_dir, read_dlq_entries, JsonlDlq, JsonlDlqConfig};
pub use dlq_records::{DeadLetterRecord, ReplayMark};
pub use epoch_files::EpochFiles;
pub use generator::{
    encode_events, EventGenerator, GeneratedEvent, GeneratorConfig, GeneratorSource, PoisonKind,
    GENERATOR_TOPIC,
};
pub use jsonl_sink::{read_jsonl_dir, JsonlSink, JsonlSinkConfig};
pub use jsonl_source::{JsonlFileSource, JsonlSourceConfig};
pub use kafka::{
    AssignmentMode, KafkaDlq, KafkaDlqConfig, KafkaOffsetCommitter, KafkaSink, KafkaSinkConfig,
    KafkaSource, KafkaSourceConfig, KafkaTxnOptions, KafkaTxnStore, PartitionRange,
};
pub use parquet_sink::{read_parquet_dir, ParquetSink, ParquetSinkConfig};
pub use postgres::{
    CheckpointRole, PostgresDlq, PostgresDlqConfig, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
pub use sqlite_sink::{SqliteSink, SqliteSinkConfig};
pub use terminal_sink::{TerminalSink, TerminalSinkConfig};

/// FNV-1a, 64 bit, of `bytes`: the stable hash that assigns keys to partitions.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The partition of `key` among `partitions` (FNV-1a modulo the count). Partition 0 when
/// `partitions` is 0, so that a bad count never divides by zero.
pub fn partition_for_key(key: &[u8], partitions: u32) -> i32 {
    if partitions == 0 {
        return 0;
    }
    // The remainder is below `partitions`, which validation keeps within i32.
    i32::try_from(fnv1a_64(key) % u64::from(partitions)).unwrap_or(0)
}

/// `batch` without the [`OFFSET_COLUMN`] the decoder adds: sinks never write it.
pub(crate) fn without_offset_column(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    match schema.index_of(OFFSET_COLUMN) {
        Err(_) => Ok(batch.clone()),
        Ok(i) => {
            let keep: Vec<usize> = (0..schema.fields().len()).filter(|c| *c != i).collect();
            if keep.is_empty() {
                // A batch of offsets only: keep the row count, with no columns.
                let options = weir_runtime::arrow::record_batch::RecordBatchOptions::new()
                    .with_row_count(Some(batch.num_rows()));
                return Ok(RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    Vec::new(),
                    &options,
                )?);
            }
            Ok(batch.project(&keep)?)
        }
    }
}

/// A sink batch split by the delete convention ([`weir_runtime::sink`], "Deletes").
#[derive(Debug)]
pub(crate) struct SinkRows {
    /// The columns a sink writes: neither the offset column nor the delete column.
    pub rows: RecordBatch,
    /// Present when the batch has a [`DELETED_COLUMN`]: `true` marks a delete of the row's
    /// key (a null is read as `false`, an upsert).
    pub deleted: Option<BooleanArray>,
}

impl SinkRows {
    /// Whether row `row` deletes its key.
    pub fn is_delete(&self, row: usize) -> bool {
        self.deleted
            .as_ref()
            .is_some_and(|d| d.is_valid(row) && d.value(row))
    }
}

/// `batch` as a sink sees it: without the offset column, and with the delete flags (if any)
/// taken out of the columns. A delete column that is not Boolean is an error naming it.
pub(crate) fn sink_rows(sink: &str, batch: &RecordBatch) -> Result<SinkRows> {
    let rows = without_offset_column(batch)?;
    let schema = rows.schema();
    let Ok(i) = schema.index_of(DELETED_COLUMN) else {
        return Ok(SinkRows {
            rows,
            deleted: None,
        });
    };
    let deleted = rows
        .column(i)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| {
            WeirError::sink(
                sink,
                format!(
                    "column {DELETED_COLUMN} marks deletes and must be Boolean, not {}",
                    schema.field(i).data_type()
                ),
            )
        })?;
    let keep: Vec<usize> = (0..schema.fields().len()).filter(|c| *c != i).collect();
    Ok(SinkRows {
        rows: rows.project(&keep)?,
        deleted: Some(deleted),
    })
}

/// Whether a column of this type is written as JSON text by the sinks that have no nested
/// types (PostgreSQL `jsonb`, SQLite TEXT): a struct, a list or a map.
pub(crate) fn is_nested(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::Map(_, _)
    )
}

/// Each value of a struct, list or map column as its JSON text (a string column, null where
/// the value is null), written as the JSONL and Kafka sinks write it: a struct and a map are
/// objects, a list an array, decimals exact numbers, null fields left out.
pub(crate) fn json_texts(array: &ArrayRef) -> std::result::Result<ArrayRef, String> {
    // Each row as `{"v":<value>}`, or `{}` for a null: the value is the text between.
    const OPEN: &str = "{\"v\":";
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            array.data_type().clone(),
            true,
        )])),
        vec![array.clone()],
    )
    .map_err(|e| format!("encode {} as JSON: {e}", array.data_type()))?;
    let mut buf = Vec::new();
    let mut writer = LineDelimitedWriter::new(&mut buf);
    writer
        .write(&batch)
        .and_then(|_| writer.finish())
        .map_err(|e| format!("encode {} as JSON: {e}", array.data_type()))?;
    let text = String::from_utf8(buf).map_err(|e| format!("JSON text is not UTF-8: {e}"))?;
    let values: Vec<Option<&str>> = text
        .lines()
        .map(|line| line.strip_prefix(OPEN).and_then(|v| v.strip_suffix('}')))
        .collect();
    if values.len() != array.len() {
        return Err(format!(
            "invariant: {} values were encoded as {} JSON lines",
            array.len(),
            values.len()
        ));
    }
    Ok(Arc::new(StringArray::from(values)))
}

/// `"{prefix}.{key}"`, or just `key` when the prefix is empty: where a config error is.
pub(crate) fn config_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::arrow::array::{Int64Array, StringArray};
    use weir_runtime::arrow::datatypes::{DataType, Field};

    /// Two rows with a struct holding a list of structs (one price a decimal), and a map
    /// (null in the second row).
    pub(crate) fn nested_batch() -> RecordBatch {
        use weir_runtime::arrow::datatypes::Fields;
        let item = Fields::from(vec![
            Field::new("sku", DataType::Utf8, false),
            Field::new("price", DataType::Decimal128(10, 2), true),
        ]);
        let order = Fields::from(vec![
            Field::new("status", DataType::Utf8, false),
            Field::new(
                "items",
                DataType::List(Arc::new(Field::new("item", DataType::Struct(item), false))),
                false,
            ),
        ]);
        let entries = Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ])),
            false,
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("order", DataType::Struct(order), false),
            Field::new("attrs", DataType::Map(Arc::new(entries), false), true),
        ]));
        let json = r#"{"id":"a","order":{"status":"new","items":[{"sku":"A","price":1.5},{"sku":"B"}]},"attrs":{"k":"v"}}
{"id":"b","order":{"status":"paid","items":[]},"attrs":null}
"#;
        weir_runtime::arrow::json::ReaderBuilder::new(schema)
            .build(std::io::Cursor::new(json))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn each_nested_value_becomes_its_json_text_and_a_null_stays_null() {
        let batch = nested_batch();
        assert!(is_nested(batch.column(1).data_type()) && is_nested(batch.column(2).data_type()));
        assert!(!is_nested(batch.column(0).data_type()));
        let orders = json_texts(batch.column(1)).unwrap();
        let orders = orders.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            orders.iter().collect::<Vec<_>>(),
            [
                Some(r#"{"status":"new","items":[{"sku":"A","price":1.50},{"sku":"B"}]}"#),
                Some(r#"{"status":"paid","items":[]}"#),
            ]
        );
        let attrs = json_texts(batch.column(2)).unwrap();
        let attrs = attrs.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            attrs.iter().collect::<Vec<_>>(),
            [Some(r#"{"k":"v"}"#), None]
        );
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_key_always_maps_to_one_partition_in_range() {
        for n in 0..200u32 {
            let key = format!("sensor-{n}");
            let p = partition_for_key(key.as_bytes(), 7);
            assert!((0..7).contains(&p));
            assert_eq!(p, partition_for_key(key.as_bytes(), 7));
        }
        assert_eq!(partition_for_key(b"x", 0), 0);
    }

    #[test]
    fn delete_flags_are_taken_out_of_the_columns_and_a_null_flag_is_an_upsert() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(DELETED_COLUMN, DataType::Boolean, true),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let split = sink_rows("out", &batch).unwrap();
        assert_eq!(split.rows.num_columns(), 1);
        assert_eq!(split.rows.schema().field(0).name(), "k");
        assert_eq!(
            (0..3).map(|r| split.is_delete(r)).collect::<Vec<_>>(),
            [true, false, false]
        );
        let plain = sink_rows("out", &batch.project(&[0, 2]).unwrap()).unwrap();
        assert!(plain.deleted.is_none() && !plain.is_delete(0));
    }

    #[test]
    fn a_delete_column_that_is_not_boolean_is_an_error_naming_it() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            DELETED_COLUMN,
            DataType::Int64,
            false,
        )]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let err = sink_rows("out", &batch).unwrap_err().to_string();
        assert!(
            err.contains("sink out") && err.contains("__deleted") && err.contains("Boolean"),
            "{err}"
        );
    }

    #[test]
    fn the_offset_column_is_dropped_and_other_columns_kept() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let out = without_offset_column(&batch).unwrap();
        assert_eq!(out.num_columns(), 1);
        assert_eq!(out.schema().field(0).name(), "k");
        assert_eq!(out.num_rows(), 2);
    }
}
