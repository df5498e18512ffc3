//! The `kafka` sink: each output row as one JSON message (arrow's JSON encoding, as the
//! `jsonl` sink writes it, without the [`OFFSET_COLUMN`](weir_runtime::OFFSET_COLUMN)), keyed
//! by the value of `key_column`, through an idempotent producer.
//!
//! At-least-once: `prepare` returns once the broker acknowledged every message written so far,
//! so a stored checkpoint never covers an unwritten row; after a crash, rows written since the
//! last checkpoint are written again. A row the broker refuses for what it is (too large) is
//! rejected to the DLQ; see [`super::producer`] for failed deliveries.
//!
//! The key of a row: a string column's text, a binary column's bytes, any other type's
//! display text (`42`, `2024-01-01T00:00:00`); no key when the value is null or when there is
//! no `key_column`. Partitions are chosen by `murmur2_random` unless the options set
//! `partitioner`: the partition a Java producer would choose for the same key.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use weir_runtime::arrow::array::{Array, AsArray};
use weir_runtime::arrow::datatypes::DataType;
use weir_runtime::arrow::json::LineDelimitedWriter;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{ErrorClass, Guarantee, Lane, SinkWriter, WriteOutcome};

use super::client::{check_brokers_and_timeout, reject_owned_options, KafkaOptions};
use super::producer::{ConfirmedProducer, Refused, PRODUCER_OWNED};
use super::source::default_connect_timeout_ms;
use crate::config_key;

/// Configuration of the `kafka` sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, comma separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Topic the rows are written to; it must exist.
    pub topic: String,
    /// Output column whose value is the message key; absent: messages have no key.
    #[serde(default)]
    pub key_column: Option<String>,
    /// librdkafka producer options passed through as they are (SASL, TLS, `acks`,
    /// `compression.type`...), except the ones weir owns: `bootstrap.servers`,
    /// `enable.idempotence`, `transactional.id`.
    #[serde(default)]
    pub options: KafkaOptions,
    /// Exactly-once mode (Kafka to Kafka): the prefix of the transactional producer ids
    /// (`<transactional_id>-<topic>-<partition>`). The sink is then also the checkpoint store, see
    /// [`KafkaTxnStore`](super::KafkaTxnStore); needs `checkpoint_topic` and a `kafka` source.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Exactly-once mode: the existing topic the checkpoints are written to, inside the
    /// transactions (best compacted).
    #[serde(default)]
    pub checkpoint_topic: Option<String>,
    /// Bound on the start-up check (brokers reachable, topic exists) and on each wait for
    /// acknowledgements in `prepare` (a longer wait is a transient error, retried).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl KafkaSinkConfig {
    /// A config with no key, the default options and timeout.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            key_column: None,
            options: KafkaOptions::default(),
            transactional_id: None,
            checkpoint_topic: None,
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = check_brokers_and_timeout(
            key_prefix,
            &self.brokers,
            "connect_timeout_ms",
            self.connect_timeout_ms,
        );
        if self.topic.trim().is_empty() {
            errors.push(format!("{}: must not be empty", key("topic")));
        }
        if self.key_column.as_deref().is_some_and(|c| c.is_empty()) {
            errors.push(format!(
                "{}: must not be empty (leave it out for no key)",
                key("key_column")
            ));
        }
        match (&self.transactional_id, &self.checkpoint_topic) {
            (Some(id), _) if id.trim().is_empty() => {
                errors.push(format!("{}: must not be empty", key("transactional_id")))
            }
            (Some(_), None) => errors.push(format!(
                "{}: missing: the exactly-once mode (transactional_id) stores its checkpoints \
                 in this topic, inside its transactions",
                key("checkpoint_topic")
            )),
            (Some(_), Some(t)) if t.trim().is_empty() => {
                errors.push(format!("{}: must not be empty", key("checkpoint_topic")))
            }
            (None, Some(_)) => errors.push(format!(
                "{}: only with transactional_id (the exactly-once mode)",
                key("checkpoint_topic")
            )),
            _ => {}
        }
        errors.extend(reject_owned_options(
            key_prefix,
            &self.options,
            PRODUCER_OWNED,
        ));
        errors
    }
}

/// The `kafka` sink. See the module docs.
pub struct KafkaSink {
    name: String,
    key_column: Option<String>,
    producer: ConfirmedProducer,
    buf: Vec<u8>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("key_column", &self.key_column)
            .finish()
    }
}

impl KafkaSink {
    /// A sink named `name` (for errors and metrics). Checks within `connect_timeout_ms` that
    /// the brokers answer and the topic exists.
    pub fn new(name: impl Into<String>, config: &KafkaSinkConfig) -> Result<Self> {
        let name = name.into();
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(WeirError::Config(format!(
                "sink {name}: {}",
                errors.join("; ")
            )));
        }
        if config.transactional_id.is_some() {
            return Err(WeirError::Config(format!(
                "sink {name}: with transactional_id the sink is transactional: build it with \
                 KafkaTxnStore::connect (pipeline.toml does)"
            )));
        }
        let producer = ConfirmedProducer::connect(
            name.clone(),
            &config.brokers,
            config.topic.trim(),
            &config.options,
            Duration::from_millis(config.connect_timeout_ms),
        )?;
        Ok(Self {
            name,
            key_column: config.key_column.clone(),
            producer,
            buf: Vec::new(),
        })
    }

    fn error(&self, message: String) -> WeirError {
        WeirError::Sink {
            sink: self.name.clone(),
            message,
            class: ErrorClass::Fatal,
        }
    }
}

/// The message key of every row of `column` (see the module docs).
fn row_keys(column: &Arc<dyn Array>) -> std::result::Result<Vec<Option<Vec<u8>>>, String> {
    let n = column.len();
    let keys = match column.data_type() {
        DataType::Utf8 => (0..n)
            .map(|i| {
                column
                    .is_valid(i)
                    .then(|| column.as_string::<i32>().value(i).as_bytes().to_vec())
            })
            .collect(),
        DataType::LargeUtf8 => (0..n)
            .map(|i| {
                column
                    .is_valid(i)
                    .then(|| column.as_string::<i64>().value(i).as_bytes().to_vec())
            })
            .collect(),
        DataType::Utf8View => (0..n)
            .map(|i| {
                column
                    .is_valid(i)
                    .then(|| column.as_string_view().value(i).as_bytes().to_vec())
            })
            .collect(),
        DataType::Binary => (0..n)
            .map(|i| {
                column
                    .is_valid(i)
                    .then(|| column.as_binary::<i32>().value(i).to_vec())
            })
            .collect(),
        DataType::LargeBinary => (0..n)
            .map(|i| {
                column
                    .is_valid(i)
                    .then(|| column.as_binary::<i64>().value(i).to_vec())
            })
            .collect(),
        _ => {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
                .map_err(|e| e.to_string())?;
            (0..n)
                .map(|i| {
                    column
                        .is_valid(i)
                        .then(|| formatter.value(i).to_string().into_bytes())
                })
                .collect()
        }
    };
    Ok(keys)
}

/// The messages of a batch: per row its key, and its JSON line (a byte range of the buffer
/// the lines were written to) or `None` for a delete, which is sent as a tombstone.
pub(crate) type JsonMessages = (Vec<Option<Vec<u8>>>, Vec<Option<std::ops::Range<usize>>>);

/// Each row of `batch` (without the offset column) as one JSON line in `buf`, and its key
/// from `key_column`. A row marked deleted (the [`DELETED_COLUMN`](weir_runtime::DELETED_COLUMN)
/// convention) has no line: it becomes a tombstone of its key, which needs a `key_column`.
pub(crate) fn json_messages(
    buf: &mut Vec<u8>,
    batch: &RecordBatch,
    key_column: Option<&str>,
) -> std::result::Result<JsonMessages, String> {
    let split = crate::sink_rows("kafka", batch).map_err(|e| e.to_string())?;
    let rows = &split.rows;
    let n = rows.num_rows();
    buf.clear();
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let keys = match key_column {
        None => vec![None; n],
        Some(c) => {
            let schema = rows.schema();
            let Ok(i) = schema.index_of(c) else {
                let columns: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(format!(
                    "key_column {c:?} is not an output column; the columns are {columns:?}"
                ));
            };
            row_keys(rows.column(i)).map_err(|e| format!("key_column {c:?}: {e}"))?
        }
    };
    let mut writer = LineDelimitedWriter::new(&mut *buf);
    writer
        .write(rows)
        .and_then(|_| writer.finish())
        .map_err(|e| format!("encode rows as JSON: {e}"))?;
    // JSON text never holds a raw newline: one line per row.
    let mut lines = Vec::with_capacity(n);
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                lines.push(start..i);
            }
            start = i + 1;
        }
    }
    if start < buf.len() {
        lines.push(start..buf.len());
    }
    if lines.len() != n {
        return Err(format!(
            "invariant: {n} rows were encoded as {} JSON lines",
            lines.len()
        ));
    }
    let mut messages = Vec::with_capacity(n);
    for (row, line) in lines.into_iter().enumerate() {
        if split.is_delete(row) {
            if key_column.is_none() {
                return Err(format!(
                    "row {row} deletes its key ({} = true) but the sink has no key_column: a \
                     Kafka delete is a tombstone of the key",
                    weir_runtime::DELETED_COLUMN
                ));
            }
            messages.push(None);
        } else {
            messages.push(Some(line));
        }
    }
    Ok((keys, messages))
}

impl EpochParticipant for KafkaSink {
    /// Every row written so far is acknowledged by the broker (all partitions: one producer).
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        self.producer.confirm()
    }
}

impl SinkWriter for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    fn write(&mut self, _lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        let (keys, lines) = json_messages(&mut self.buf, batch, self.key_column.as_deref())
            .map_err(|e| self.error(e))?;
        let n = lines.len();
        let mut rejected = Vec::new();
        for (row, (line, key)) in lines.iter().zip(&keys).enumerate() {
            let payload = line.as_ref().map(|l| &self.buf[l.clone()]);
            match self.producer.send(key.as_deref(), payload, None) {
                Ok(()) => {}
                Err(Ok(Refused(e))) => rejected.push((row, format!("refused by Kafka: {e}"))),
                Err(Err(e)) => return Err(e),
            }
        }
        self.producer.poll();
        Ok(WriteOutcome {
            accepted: n - rejected.len(),
            rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::arrow::array::{BinaryArray, Int64Array, StringArray};

    #[test]
    fn decimals_are_sent_as_json_numbers_with_their_exact_digits() {
        use weir_runtime::arrow::array::Decimal128Array;
        use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
        let prices = Decimal128Array::from(vec![90_071_992_547_409_930_001i128, -1])
            .with_precision_and_scale(38, 4)
            .unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "price",
                DataType::Decimal128(38, 4),
                false,
            )])),
            vec![Arc::new(prices)],
        )
        .unwrap();
        let mut buf = Vec::new();
        let (_, lines) = json_messages(&mut buf, &batch, None).unwrap();
        let text: Vec<&[u8]> = lines.iter().map(|l| &buf[l.clone().unwrap()]).collect();
        assert_eq!(
            text,
            [
                &br#"{"price":9007199254740993.0001}"#[..],
                &br#"{"price":-0.0001}"#[..]
            ]
        );
    }

    #[test]
    fn structs_lists_and_maps_are_sent_as_nested_json() {
        let batch = crate::tests::nested_batch();
        let mut buf = Vec::new();
        let (_, lines) = json_messages(&mut buf, &batch, None).unwrap();
        let text: Vec<&str> = lines
            .iter()
            .map(|l| std::str::from_utf8(&buf[l.clone().unwrap()]).unwrap())
            .collect();
        assert_eq!(
            text,
            [
                r#"{"id":"a","order":{"status":"new","items":[{"sku":"A","price":1.50},{"sku":"B"}]},"attrs":{"k":"v"}}"#,
                r#"{"id":"b","order":{"status":"paid","items":[]}}"#,
            ]
        );
    }

    #[test]
    fn a_valid_config_has_no_errors() {
        let mut cfg = KafkaSinkConfig::new("b:1", "out");
        cfg.key_column = Some("id".into());
        cfg.options.insert("acks".into(), "all".into());
        assert!(cfg.validate("sinks[0]").is_empty());
    }

    #[test]
    fn impossible_values_and_owned_options_are_errors() {
        let mut cfg = KafkaSinkConfig::new("", " ");
        cfg.key_column = Some(String::new());
        cfg.transactional_id = Some("tx".into());
        cfg.connect_timeout_ms = 0;
        for k in [
            "enable.idempotence",
            "transactional.id",
            "bootstrap.servers",
        ] {
            cfg.options.insert(k.into(), "x".into());
        }
        assert_eq!(
            cfg.validate("sinks[0]"),
            [
                "sinks[0].brokers: must list at least one broker, e.g. \"127.0.0.1:9092\"",
                "sinks[0].connect_timeout_ms: must be at least 1",
                "sinks[0].topic: must not be empty",
                "sinks[0].key_column: must not be empty (leave it out for no key)",
                "sinks[0].checkpoint_topic: missing: the exactly-once mode (transactional_id) stores its checkpoints in this topic, inside its transactions",
                "sinks[0].options.\"bootstrap.servers\": weir owns this librdkafka option: set `brokers` instead",
                "sinks[0].options.\"enable.idempotence\": weir owns this librdkafka option: weir always enables the idempotent producer; remove it",
                "sinks[0].options.\"transactional.id\": weir owns this librdkafka option: set `transactional_id` instead",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            serde_json::from_str::<KafkaSinkConfig>(r#"{"brokers":"b:1","topic":"t","key":"id"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `key`"), "{err}");
    }

    #[test]
    fn keys_are_the_text_or_bytes_of_the_column_and_null_is_no_key() {
        let strings: Arc<dyn Array> = Arc::new(StringArray::from(vec![Some("a"), None, Some("")]));
        assert_eq!(
            row_keys(&strings).unwrap(),
            [Some(b"a".to_vec()), None, Some(Vec::new())]
        );
        let ints: Arc<dyn Array> = Arc::new(Int64Array::from(vec![Some(42), None, Some(-1)]));
        assert_eq!(
            row_keys(&ints).unwrap(),
            [Some(b"42".to_vec()), None, Some(b"-1".to_vec())]
        );
        let bytes: Arc<dyn Array> = Arc::new(BinaryArray::from(vec![Some(&[0xff_u8, 0][..])]));
        assert_eq!(row_keys(&bytes).unwrap(), [Some(vec![0xff, 0])]);
    }
}
