//! The `jsonl` sink: result rows as JSON lines, one file per partition and checkpoint epoch,
//! published when the checkpoint commits (exactly-once; see [`crate::epoch_files`]).
//!
//! Rows are encoded by arrow's JSON writer (null fields left out, timestamps as the writer
//! formats them, decimals as JSON numbers with their exact digits: `178.5500`), without the [`OFFSET_COLUMN`](weir_runtime::OFFSET_COLUMN). Published files
//! are `<path>/part-t<topic>-p<partition>-e<epoch:010>.jsonl` (`part-global-...` for the global
//! stage; [`crate::epoch_files`] has the layout).
//!
//! Deletes ([`DELETED_COLUMN`] `true`, see [`weir_runtime::sink`]) are lines with
//! `"__deleted": true`; upserts have no `__deleted` field. Read in order, the lines replay the
//! read model's changes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use std::sync::Arc;

use weir_runtime::arrow::array::{Array, ArrayRef, BooleanArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::json::LineDelimitedWriter;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::{EpochParticipant, LaneClaim, SourceTopics};
use weir_runtime::{Guarantee, Lane, SinkWriter, WriteOutcome, DELETED_COLUMN};

use crate::epoch_files::EpochFiles;
use crate::{config_key, sink_rows, SinkRows};

const PREFIX: &str = "part";

/// Configuration of the `jsonl` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// Directory of the output files (created if absent).
    pub path: PathBuf,
}

impl JsonlSinkConfig {
    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(format!(
                "{}: must not be empty",
                config_key(key_prefix, "path")
            ));
        }
        errors
    }
}

/// The `jsonl` sink. See the module docs.
#[derive(Debug)]
pub struct JsonlSink {
    name: String,
    files: EpochFiles,
    buf: Vec<u8>,
}

impl JsonlSink {
    /// A sink named `name` (for errors and metrics) writing into `config.path`, which it
    /// creates.
    pub fn new(name: impl Into<String>, config: &JsonlSinkConfig) -> Result<Self> {
        let name = name.into();
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(WeirError::sink(name, errors.join("; ")));
        }
        Ok(Self {
            files: EpochFiles::new(&config.path, PREFIX)?,
            name,
            buf: Vec::new(),
        })
    }
}

impl EpochParticipant for JsonlSink {
    fn source_topics(&mut self, topics: &SourceTopics) {
        self.files.set_source_topics(topics);
    }

    fn claimed(&mut self, lane: &Lane, claim: LaneClaim) {
        self.files.claimed(lane, claim);
    }

    fn recover(&mut self, lane: &Lane, committed_epoch: Option<u64>) -> Result<()> {
        self.files.recover(lane, committed_epoch)
    }

    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.files.prepare(lane, epoch)
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.files.commit(lane, epoch)
    }
}

impl SinkWriter for JsonlSink {
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
        let rows = with_delete_marks(sink_rows(&self.name, batch)?)?;
        self.buf.clear();
        let mut writer = LineDelimitedWriter::new(&mut self.buf);
        writer
            .write(&rows)
            .and_then(|_| writer.finish())
            .map_err(|e| WeirError::sink(&self.name, format!("encode rows as JSON: {e}")))?;
        self.files.append(lane, &self.buf)?;
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}

/// The rows with a [`DELETED_COLUMN`] that is `true` on deletes and null on upserts (which the
/// JSON writer leaves out); without one when the batch has no delete flags.
fn with_delete_marks(split: SinkRows) -> Result<RecordBatch> {
    let Some(deleted) = split.deleted else {
        return Ok(split.rows);
    };
    let marks: BooleanArray = (0..deleted.len())
        .map(|r| (deleted.is_valid(r) && deleted.value(r)).then_some(true))
        .collect();
    let mut fields: Vec<Field> = split
        .rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, true));
    let mut columns = split.rows.columns().to_vec();
    columns.push(Arc::new(marks) as ArrayRef);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Every row of the published files in `dir`, by lane, then epoch, then line.
pub fn read_jsonl_dir(dir: impl AsRef<Path>) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for path in EpochFiles::committed_files(dir.as_ref(), PREFIX)? {
        let text = fs::read_to_string(&path).map_err(|e| WeirError::io(&path, e))?;
        for (i, line) in text.lines().enumerate() {
            let value = serde_json::from_str(line).map_err(|e| {
                WeirError::Internal(format!("{}:{}: not JSON: {e}", path.display(), i + 1))
            })?;
            rows.push(value);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_runtime::arrow::array::{Float64Array, Int64Array, StringArray};
    use weir_runtime::OFFSET_COLUMN;

    /// Partition `p` of topic `t`.
    fn l(p: i32) -> Lane {
        Lane::new("t", p)
    }

    fn batch(keys: &[&str], first_offset: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("avg", DataType::Float64, true),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let n = keys.len() as i64;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Float64Array::from(
                    (0..n).map(|i| Some(i as f64 + 0.5)).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    (first_offset..first_offset + n).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn sink(dir: &Path) -> JsonlSink {
        JsonlSink::new(
            "out",
            &JsonlSinkConfig {
                path: dir.to_path_buf(),
            },
        )
        .unwrap()
    }

    fn ids(dir: &Path) -> Vec<String> {
        read_jsonl_dir(dir)
            .unwrap()
            .iter()
            .map(|v| v["sensor_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn decimals_are_written_as_json_numbers_with_their_exact_digits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(38, 4), true),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let prices = weir_runtime::arrow::array::Decimal128Array::from(vec![
            Some(123_456_789_012_345_678_901_234),
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
        let text = fs::read_to_string(tmp.path().join("part-tt-p0-e0000000001.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"price\":12345678901234567890.1234}\n{\"price\":-0.0001}\n{}\n"
        );
    }

    #[test]
    fn staged_rows_are_invisible_until_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        s.recover(&l(0), None).unwrap();
        let outcome = s.write(&l(0), &batch(&["a", "b"], 0)).unwrap();
        assert_eq!(outcome.accepted, 2);
        assert!(read_jsonl_dir(tmp.path()).unwrap().is_empty());
        s.prepare(&l(0), 1).unwrap();
        assert!(read_jsonl_dir(tmp.path()).unwrap().is_empty());
        s.commit(&l(0), 1).unwrap();
        assert_eq!(
            read_jsonl_dir(tmp.path()).unwrap(),
            [
                json!({"sensor_id": "a", "avg": 0.5}),
                json!({"sensor_id": "b", "avg": 1.5})
            ],
            "rows without the offset column"
        );
        assert!(tmp.path().join("part-tt-p0-e0000000001.jsonl").exists());
    }

    #[test]
    fn deletes_are_lines_marked_deleted_and_upserts_carry_no_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        let b = batch(&["a", "b", "c"], 0);
        let mut fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, true));
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(vec![
            Some(false),
            Some(true),
            None,
        ])));
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        assert_eq!(s.write(&l(0), &b).unwrap().accepted, 3);
        s.prepare(&l(0), 1).unwrap();
        s.commit(&l(0), 1).unwrap();
        assert_eq!(
            read_jsonl_dir(tmp.path()).unwrap(),
            [
                json!({"sensor_id": "a", "avg": 0.5}),
                json!({"sensor_id": "b", "avg": 1.5, "__deleted": true}),
                json!({"sensor_id": "c", "avg": 2.5}),
            ]
        );
    }

    #[test]
    fn recover_commits_epochs_up_to_the_committed_one_and_deletes_newer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        for (epoch, key) in [(1, "e1"), (2, "e2"), (3, "e3")] {
            s.write(&l(0), &batch(&[key], 0)).unwrap();
            s.prepare(&l(0), epoch).unwrap();
        }
        s.write(&l(0), &batch(&["open"], 0)).unwrap();
        drop(s);
        let mut s = sink(tmp.path());
        s.recover(&l(0), Some(2)).unwrap();
        assert_eq!(ids(tmp.path()), ["e1", "e2"]);
        // Epoch 3 is replayed and written again under the same number.
        s.write(&l(0), &batch(&["e3-again"], 0)).unwrap();
        s.prepare(&l(0), 3).unwrap();
        s.commit(&l(0), 3).unwrap();
        assert_eq!(ids(tmp.path()), ["e1", "e2", "e3-again"]);
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
            drop(s); // crash: the checkpoint of epoch 2 may or may not have been stored

            let mut s = sink(tmp.path());
            s.recover(&l(0), committed).unwrap();
            assert_eq!(ids(tmp.path()), expected, "committed {committed:?}");
            // Recovering twice (a second restart) changes nothing.
            s.recover(&l(0), committed).unwrap();
            assert_eq!(ids(tmp.path()), expected);
        }
    }

    #[test]
    fn partitions_are_staged_and_published_independently() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink(tmp.path());
        s.write(&l(0), &batch(&["p0"], 0)).unwrap();
        s.write(&l(1), &batch(&["p1"], 0)).unwrap();
        s.prepare(&l(1), 1).unwrap();
        s.commit(&l(1), 1).unwrap();
        assert_eq!(ids(tmp.path()), ["p1"]);
        s.prepare(&l(0), 5).unwrap();
        s.commit(&l(0), 5).unwrap();
        assert_eq!(ids(tmp.path()), ["p0", "p1"]);
    }

    #[test]
    fn an_empty_path_is_refused() {
        let cfg = JsonlSinkConfig {
            path: PathBuf::new(),
        };
        assert_eq!(
            cfg.validate("sinks.out"),
            ["sinks.out.path: must not be empty"]
        );
        assert!(JsonlSink::new("out", &cfg).is_err());
    }
}
