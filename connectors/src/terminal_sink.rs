//! The `terminal` sink: each batch printed as a table on standard output, for trying
//! pipelines out. At-least-once: output printed before a crash is printed again on replay.

use std::io::Write;

use serde::Deserialize;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::arrow::util::pretty::pretty_format_batches;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{Guarantee, Lane, SinkWriter, WriteOutcome};

use crate::without_offset_column;

fn default_max_rows() -> usize {
    20
}

/// Configuration of the `terminal` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalSinkConfig {
    /// Rows printed per batch at most; the rest is summed up as "... N more rows".
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

impl Default for TerminalSinkConfig {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
        }
    }
}

impl TerminalSinkConfig {
    /// Every impossible value, as `"<key>: <problem>"` lines (any `max_rows` is possible:
    /// 0 prints only the row counts).
    pub fn validate(&self, _key_prefix: &str) -> Vec<String> {
        Vec::new()
    }
}

/// The `terminal` sink. See the module docs.
pub struct TerminalSink {
    name: String,
    max_rows: usize,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for TerminalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSink")
            .field("name", &self.name)
            .field("max_rows", &self.max_rows)
            .finish()
    }
}

impl TerminalSink {
    /// Prints to standard output.
    pub fn new(name: impl Into<String>, config: &TerminalSinkConfig) -> Self {
        Self::with_writer(name, config, Box::new(std::io::stdout()))
    }

    /// Prints to `out` instead (tests, or standard error).
    pub fn with_writer(
        name: impl Into<String>,
        config: &TerminalSinkConfig,
        out: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            name: name.into(),
            max_rows: config.max_rows,
            out,
        }
    }

    fn io_error(&self, e: std::io::Error) -> WeirError {
        WeirError::sink(&self.name, format!("print: {e}"))
    }
}

impl EpochParticipant for TerminalSink {
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        self.out.flush().map_err(|e| self.io_error(e))
    }
}

impl SinkWriter for TerminalSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(WriteOutcome::default());
        }
        let shown = without_offset_column(batch)?.slice(0, rows.min(self.max_rows));
        // Rows of a partition are headed by its number (a terminal shows one topic's output
        // at a time), the global stage's by `global`.
        let from = match lane.partition() {
            Some(p) => format!("partition {p}"),
            None => "global".to_string(),
        };
        let mut text = format!(
            "{} {from}: {rows} row{}\n",
            self.name,
            if rows == 1 { "" } else { "s" }
        );
        if shown.num_rows() > 0 {
            let table = pretty_format_batches(&[shown])
                .map_err(|e| WeirError::sink(&self.name, format!("format rows: {e}")))?;
            text.push_str(&table.to_string());
            text.push('\n');
        }
        if rows > self.max_rows {
            text.push_str(&format!("... {} more rows\n", rows - self.max_rows));
        }
        self.out
            .write_all(text.as_bytes())
            .map_err(|e| self.io_error(e))?;
        Ok(WriteOutcome {
            accepted: rows,
            rejected: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition `p` of topic `t`.
    fn l(p: i32) -> Lane {
        Lane::new("t", p)
    }
    use std::sync::{Arc, Mutex};
    use weir_runtime::arrow::array::{Int64Array, StringArray};
    use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
    use weir_runtime::OFFSET_COLUMN;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    (0..n).map(|i| format!("sensor-{i}")).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn prints_at_most_max_rows_and_counts_the_rest_without_the_offset_column() {
        let out = Shared::default();
        let mut sink = TerminalSink::with_writer(
            "term",
            &TerminalSinkConfig { max_rows: 3 },
            Box::new(out.clone()),
        );
        assert_eq!(sink.guarantee(), Guarantee::AtLeastOnce);
        assert_eq!(sink.write(&l(2), &batch(5)).unwrap().accepted, 5);
        sink.prepare(&l(2), 1).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("term partition 2: 5 rows\n"), "{text}");
        assert!(text.contains("sensor-2"));
        assert!(!text.contains("sensor-3"));
        assert!(!text.contains(OFFSET_COLUMN));
        assert!(text.ends_with("... 2 more rows\n"), "{text}");
    }

    #[test]
    fn a_small_batch_is_printed_whole() {
        let out = Shared::default();
        let mut sink = TerminalSink::with_writer(
            "term",
            &TerminalSinkConfig::default(),
            Box::new(out.clone()),
        );
        sink.write(&l(0), &batch(1)).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("sensor-0") && !text.contains("more rows"),
            "{text}"
        );
        assert!(text.starts_with("term partition 0: 1 row\n"));
    }
}
