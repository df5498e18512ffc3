//! The `parquet` sink: result rows as Parquet files, one per lane and checkpoint epoch,
//! published when the checkpoint commits (exactly-once; the same protocol and code as the
//! JSONL sink, [`crate::epoch_files`]).
//!
//! Each lane (topic, partition) has an Arrow-to-Parquet writer over an in-memory buffer; the bytes it has
//! encoded (whole row groups, flushed every `row_group_rows` rows or when the row group holds
//! `row_group_bytes` of encoded data) are appended to the partition's open staging file as
//! they come (past the writer's own 8 KiB buffer), so a partition holds at most one open row
//! group in memory. `prepare(p, e)` writes the footer, so the staged file is a complete Parquet
//! file, and makes it durable under its epoch's staging name; `commit` renames it to
//! `<path>/part-t<topic>-p<partition>-e<epoch:010>.parquet`; `recover` publishes or discards staged
//! epochs as for JSONL. An epoch with no rows produces no file.
//!
//! Columns are the batch's, without the [`OFFSET_COLUMN`](weir_runtime::OFFSET_COLUMN); the
//! delete flag ([`DELETED_COLUMN`](weir_runtime::DELETED_COLUMN)) stays a column, so the
//! files replay the read model's changes. Files are not compressed (no codec is built in).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use weir_runtime::arrow::datatypes::SchemaRef;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::{EpochParticipant, LaneClaim, SourceTopics};
use weir_runtime::{Guarantee, Lane, SinkWriter, WriteOutcome};

use crate::epoch_files::EpochFiles;
use crate::{config_key, without_offset_column};

const PREFIX: &str = "part";
const EXT: &str = ".parquet";

fn default_row_group_rows() -> usize {
    1_048_576
}

fn default_row_group_bytes() -> usize {
    64 * 1024 * 1024
}

/// Configuration of the `parquet` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Directory of the output files (created if absent).
    pub path: PathBuf,
    /// Rows per row group at most (Parquet's unit of reading).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// A row group is closed early once its encoded data reaches this many bytes, which bounds
    /// the memory a partition holds between checkpoints.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: usize,
}

impl ParquetSinkConfig {
    /// A sink config writing into `path` with the default row group limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            row_group_rows: default_row_group_rows(),
            row_group_bytes: default_row_group_bytes(),
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(format!("{}: must not be empty", key("path")));
        }
        if self.row_group_rows == 0 {
            errors.push(format!("{}: must be at least 1", key("row_group_rows")));
        }
        if self.row_group_bytes == 0 {
            errors.push(format!("{}: must be at least 1", key("row_group_bytes")));
        }
        errors
    }
}

/// One lane's file of the current epoch.
struct OpenWriter {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
    /// Encoded bytes taken from the writer but not yet appended (an append failed): appended
    /// first on the next attempt, so the file never misses bytes.
    unwritten: Vec<u8>,
    /// The footer is written (a prepare whose append failed): only `unwritten` is left.
    finished: bool,
}

/// The `parquet` sink. See the module docs.
pub struct ParquetSink {
    name: String,
    config: ParquetSinkConfig,
    files: EpochFiles,
    writers: HashMap<Lane, OpenWriter>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("open_partitions", &self.writers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ParquetSink {
    /// A sink named `name` (for errors and metrics) writing into `config.path`, which it
    /// creates.
    pub fn new(name: impl Into<String>, config: &ParquetSinkConfig) -> Result<Self> {
        let name = name.into();
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(WeirError::sink(name, errors.join("; ")));
        }
        Ok(Self {
            files: EpochFiles::with_extension(&config.path, PREFIX, EXT)?,
            config: config.clone(),
            name,
            writers: HashMap::new(),
        })
    }

    fn parquet_error(&self, doing: &str, e: impl std::fmt::Display) -> WeirError {
        WeirError::sink(&self.name, format!("{doing}: {e}"))
    }

    /// Appends the bytes the writer of `partition` has encoded so far (and any left from a
    /// failed append) to the partition's open file.
    fn drain(files: &mut EpochFiles, lane: &Lane, open: &mut OpenWriter) -> Result<()> {
        let encoded = std::mem::take(open.writer.inner_mut());
        open.unwritten.extend_from_slice(&encoded);
        files.append(lane, &open.unwritten)?;
        open.unwritten.clear();
        Ok(())
    }
}

impl EpochParticipant for ParquetSink {
    fn source_topics(&mut self, topics: &SourceTopics) {
        self.files.set_source_topics(topics);
    }

    fn claimed(&mut self, lane: &Lane, claim: LaneClaim) {
        self.files.claimed(lane, claim);
    }

    fn recover(&mut self, lane: &Lane, committed_epoch: Option<u64>) -> Result<()> {
        self.writers.remove(lane);
        self.files.recover(lane, committed_epoch)
    }

    /// Finishes the partition's file (footer included) and stages it as epoch `epoch`.
    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        if let Some(mut open) = self.writers.remove(lane) {
            if !open.finished {
                if let Err(e) = open.writer.finish() {
                    return Err(self.parquet_error("finish the Parquet file", e));
                }
                open.finished = true;
            }
            if let Err(e) = Self::drain(&mut self.files, lane, &mut open) {
                // Keep the bytes: a retried prepare appends them.
                self.writers.insert(lane.clone(), open);
                return Err(e);
            }
        }
        self.files.prepare(lane, epoch)
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.files.commit(lane, epoch)
    }
}

impl SinkWriter for ParquetSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        if batch.num_rows() == 0 {
            return Ok(WriteOutcome::default());
        }
        let rows = without_offset_column(batch)?;
        let schema = rows.schema();
        if !self.writers.contains_key(lane) {
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(self.config.row_group_rows))
                .build();
            let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                .map_err(|e| self.parquet_error("start a Parquet file", e))?;
            self.writers.insert(
                lane.clone(),
                OpenWriter {
                    writer,
                    schema: schema.clone(),
                    unwritten: Vec::new(),
                    finished: false,
                },
            );
        }
        let open = self
            .writers
            .get_mut(lane)
            .expect("invariant: inserted above");
        if open.schema != schema {
            return Err(WeirError::sink(
                &self.name,
                format!(
                    "{lane}: a batch with columns {} in a file of columns {}; one \
                     Parquet file holds one schema",
                    schema_text(&schema),
                    schema_text(&open.schema)
                ),
            ));
        }
        open.writer
            .write(&rows)
            .map_err(|e| WeirError::sink(&self.name, format!("encode rows as Parquet: {e}")))?;
        if open.writer.in_progress_size() >= self.config.row_group_bytes {
            open.writer
                .flush()
                .map_err(|e| WeirError::sink(&self.name, format!("close a row group: {e}")))?;
        }
        Self::drain(&mut self.files, lane, open)?;
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}

fn schema_text(schema: &SchemaRef) -> String {
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", fields.join(", "))
}

/// Every row of the published files in `dir`, by lane, then epoch, as Arrow batches.
pub fn read_parquet_dir(dir: impl AsRef<Path>) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for path in EpochFiles::committed_files_with_extension(dir.as_ref(), PREFIX, EXT)? {
        let file = File::open(&path).map_err(|e| WeirError::io(&path, e))?;
        let bad = |e: parquet::errors::ParquetError| {
            WeirError::Internal(format!("{}: not a Parquet file: {e}", path.display()))
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(bad)?
            .build()
            .map_err(bad)?;
        for b in reader {
            batches.push(b?);
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition `p` of topic `t`.
    fn l(p: i32) -> Lane {
        Lane::new("t", p)
    }
    use std::sync::Arc;
    use weir_runtime::arrow::array::{
        Array, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
        TimestampMillisecondArray,
    };
    use weir_runtime::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use weir_runtime::{DELETED_COLUMN, OFFSET_COLUMN};

    fn batch(keys: &[&str], first_offset: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("avg", DataType::Float64, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(DELETED_COLUMN, DataType::Boolean, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let n = keys.len() as i64;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Float64Array::from(
                    (0..n)
                        .map(|i| (i % 2 == 0).then_some(i as f64 + 0.5))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n).map(|i| 60_000 * i),
                )),
                Arc::new(BooleanArray::from(
                    keys.iter().map(|k| k.starts_with('-')).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    (first_offset..first_offset + n).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn sink(dir: &Path) -> ParquetSink {
        ParquetSink::new("out", &ParquetSinkConfig::new(dir)).unwrap()
    }

    fn ids(dir: &Path) -> Vec<String> {
        read_parquet_dir(dir)
            .unwrap()
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rows_round_trip_with_their_types_nulls_and_delete_flags_but_no_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        s.recover(&l(0), None).unwrap();
        let b = batch(&["a", "b", "-c"], 7);
        assert_eq!(s.write(&l(0), &b).unwrap().accepted, 3);
        s.write(&l(0), &batch(&["d"], 10)).unwrap();
        assert!(read_parquet_dir(tmp.path()).unwrap().is_empty());
        s.prepare(&l(0), 1).unwrap();
        assert!(read_parquet_dir(tmp.path()).unwrap().is_empty());
        s.commit(&l(0), 1).unwrap();
        assert!(tmp.path().join("part-tt-p0-e0000000001.parquet").exists());
        let read = read_parquet_dir(tmp.path()).unwrap();
        let expected = without_offset_column(&b).unwrap();
        assert_eq!(read[0].schema(), expected.schema());
        let all = weir_runtime::arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
        assert_eq!(all.slice(0, 3), expected);
        assert_eq!(all.num_rows(), 4);
        assert!(all.column(1).is_null(1));
    }

    #[test]
    fn decimals_are_stored_as_parquet_decimals_with_their_exact_values() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(38, 4), true),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let prices = weir_runtime::arrow::array::Decimal128Array::from(vec![
            Some(10i128.pow(38) - 1),
            Some(-1),
            None,
        ])
        .with_precision_and_scale(38, 4)
        .unwrap();
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(prices), Arc::new(Int64Array::from(vec![0, 1, 2]))],
        )
        .unwrap();
        s.write(&l(0), &b).unwrap();
        s.prepare(&l(0), 1).unwrap();
        s.commit(&l(0), 1).unwrap();
        let read = read_parquet_dir(tmp.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0], without_offset_column(&b).unwrap());
        assert_eq!(
            read[0].schema().field(0).data_type(),
            &DataType::Decimal128(38, 4)
        );
    }

    #[test]
    fn a_crash_between_prepare_and_commit_is_exactly_once_either_way() {
        for (committed, expected) in [(Some(2), vec!["x", "y"]), (Some(1), vec!["x"])] {
            let tmp = tempfile::tempdir().unwrap();
            let mut s = sink(tmp.path());
            s.recover(&l(0), None).unwrap();
            s.write(&l(0), &batch(&["x"], 0)).unwrap();
            s.prepare(&l(0), 1).unwrap();
            s.commit(&l(0), 1).unwrap();
            s.write(&l(0), &batch(&["y"], 1)).unwrap();
            s.prepare(&l(0), 2).unwrap();
            s.write(&l(0), &batch(&["unprepared"], 2)).unwrap();
            drop(s); // crash: the checkpoint of epoch 2 may or may not have been stored

            let mut s = sink(tmp.path());
            s.recover(&l(0), committed).unwrap();
            assert_eq!(ids(tmp.path()), expected, "committed {committed:?}");
            s.recover(&l(0), committed).unwrap();
            assert_eq!(ids(tmp.path()), expected);
        }
    }

    #[test]
    fn a_restart_replays_from_the_checkpoint_and_writes_the_epoch_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        for (epoch, key) in [(1, "e1"), (2, "e2"), (3, "e3")] {
            s.write(&l(0), &batch(&[key], 0)).unwrap();
            s.prepare(&l(0), epoch).unwrap();
        }
        s.write(&l(1), &batch(&["p1"], 0)).unwrap();
        s.prepare(&l(1), 1).unwrap();
        s.commit(&l(1), 1).unwrap();
        drop(s);
        let mut s = sink(tmp.path());
        s.recover(&l(0), Some(2)).unwrap();
        s.recover(&l(1), Some(1)).unwrap();
        assert_eq!(ids(tmp.path()), ["e1", "e2", "p1"]);
        s.write(&l(0), &batch(&["e3-again", "more"], 0)).unwrap();
        s.prepare(&l(0), 3).unwrap();
        s.commit(&l(0), 3).unwrap();
        assert_eq!(ids(tmp.path()), ["e1", "e2", "e3-again", "more", "p1"]);
    }

    #[test]
    fn row_groups_are_streamed_to_the_staging_file_and_read_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ParquetSinkConfig {
            row_group_rows: 2000,
            ..ParquetSinkConfig::new(tmp.path())
        };
        let mut s = ParquetSink::new("out", &cfg).unwrap();
        let keys: Vec<String> = (0..27_000).map(|i| format!("key-{i:06}")).collect();
        for chunk in keys.chunks(3000) {
            let refs: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
            s.write(&l(2), &batch(&refs, 0)).unwrap();
        }
        let staged = tmp.path().join(".staging/part-tt-p2-open.parquet");
        assert!(
            std::fs::metadata(&staged).unwrap().len() > 0,
            "closed row groups reach the open file before prepare"
        );
        s.prepare(&l(2), 1).unwrap();
        s.commit(&l(2), 1).unwrap();
        assert_eq!(ids(tmp.path()), keys);
        let file = File::open(tmp.path().join("part-tt-p2-e0000000001.parquet")).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(meta.metadata().num_row_groups(), 14);
    }

    #[test]
    fn a_batch_of_another_schema_is_an_error_naming_both() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        s.write(&l(0), &batch(&["a"], 0)).unwrap();
        let other = batch(&["b"], 1).project(&[0, 4]).unwrap();
        let err = s.write(&l(0), &other).unwrap_err().to_string();
        assert!(
            err.contains("(sensor_id Utf8)") && err.contains("avg Float64"),
            "{err}"
        );
    }

    #[test]
    fn impossible_values_are_all_reported() {
        let cfg = ParquetSinkConfig {
            path: PathBuf::new(),
            row_group_rows: 0,
            row_group_bytes: 0,
        };
        assert_eq!(
            cfg.validate("sinks[0]"),
            [
                "sinks[0].path: must not be empty",
                "sinks[0].row_group_rows: must be at least 1",
                "sinks[0].row_group_bytes: must be at least 1",
            ]
        );
        assert!(ParquetSink::new("out", &cfg).is_err());
    }
}
