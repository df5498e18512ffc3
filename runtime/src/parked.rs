//! The events of one partition that wait for a retry before the DLQ (ARCHITECTURE.md,
//! "Retries before the DLQ"), kept by its [`crate::PartitionTask`] and stored in its
//! checkpoints ([`crate::Checkpoint::parked`]).
//!
//! Per operator (a *level* of the chain) and per key, a queue: its head is the event that
//! failed, with its attempts so far and when the next one is due (wall-clock epoch ms, so a
//! timer survives a restart); behind it wait the key's later events, which that operator has
//! not processed yet (`attempts` 0). Each parked event keeps its row as that operator's input
//! (so nothing before it runs twice: a dedup before a projection does not see it again) and
//! its source message (key and bytes, for its dead letter and for message-key order).

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::arrow::compute::concat_batches;
use crate::arrow::datatypes::SchemaRef;
use crate::arrow::record_batch::RecordBatch;
use crate::base64;
use crate::batch::RawMessage;
use crate::checkpoint::OperatorState;
use crate::dlq::ErrorKind;
use crate::error::{Result, WeirError};

/// The key whose order a parked event keeps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RetryKey {
    /// A key the operator named ([`crate::Emit::fail`]: a projection's key).
    Operator(String),
    /// The source message's key (a stateless operator that named none).
    Message(Option<Vec<u8>>),
}

/// One event in a queue.
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    /// The event as its operator's input: one row, with the offset column.
    pub row: RecordBatch,
    /// Its source message (headers are not kept).
    pub message: RawMessage,
    /// Failed attempts so far; 0: it has not been tried yet, it waits behind its key's head.
    pub attempts: u32,
    /// When its first attempt failed (epoch ms; 0 while not tried).
    pub first_failure_ms: i64,
    /// When its next attempt is due (epoch ms; 0 while not tried).
    pub due_ms: i64,
    pub kind: ErrorKind,
    /// The last attempt's error.
    pub error: String,
}

impl Parked {
    /// An event that was not processed: it waits behind its key's failed one.
    pub fn waiting(row: RecordBatch, message: RawMessage) -> Self {
        Self {
            row,
            message,
            attempts: 0,
            first_failure_ms: 0,
            due_ms: 0,
            kind: ErrorKind::OperatorError,
            error: String::new(),
        }
    }
}

/// Every queue of a partition, per operator.
#[derive(Debug, Default)]
pub(crate) struct Lot {
    levels: Vec<BTreeMap<RetryKey, VecDeque<Parked>>>,
    len: usize,
}

impl Lot {
    pub fn new(operators: usize) -> Self {
        Self {
            levels: (0..operators).map(|_| BTreeMap::new()).collect(),
            len: 0,
        }
    }

    /// Events parked, all operators.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether anything waits at operator `level`.
    pub fn holds_at(&self, level: usize) -> bool {
        self.levels.get(level).is_some_and(|l| !l.is_empty())
    }

    /// The operator keys waiting at `level`.
    pub fn operator_keys(&self, level: usize) -> HashSet<String> {
        self.levels[level]
            .keys()
            .filter_map(|k| match k {
                RetryKey::Operator(k) => Some(k.clone()),
                RetryKey::Message(_) => None,
            })
            .collect()
    }

    /// The message keys waiting at `level`.
    pub fn message_keys(&self, level: usize) -> HashSet<Option<Vec<u8>>> {
        self.levels[level]
            .keys()
            .filter_map(|k| match k {
                RetryKey::Message(k) => Some(k.clone()),
                RetryKey::Operator(_) => None,
            })
            .collect()
    }

    pub fn contains(&self, level: usize, key: &RetryKey) -> bool {
        self.levels[level].contains_key(key)
    }

    /// Append `parked` to the queue of `key` at `level` (its head when the queue is new).
    pub fn push(&mut self, level: usize, key: RetryKey, parked: Parked) {
        self.levels[level].entry(key).or_default().push_back(parked);
        self.len += 1;
    }

    /// When the earliest head is due (epoch ms).
    pub fn next_due(&self) -> Option<i64> {
        self.levels
            .iter()
            .flat_map(|l| l.values())
            .filter_map(|q| q.front())
            .map(|p| if p.attempts == 0 { i64::MIN } else { p.due_ms })
            .min()
    }

    /// Take out the queues of `level` whose head is due at `now_ms` or was never tried.
    pub fn take_runnable(
        &mut self,
        level: usize,
        now_ms: i64,
    ) -> Vec<(RetryKey, VecDeque<Parked>)> {
        let level = &mut self.levels[level];
        let keys: Vec<RetryKey> = level
            .iter()
            .filter(|(_, q)| {
                q.front()
                    .is_some_and(|p| p.attempts == 0 || p.due_ms <= now_ms)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let taken: Vec<(RetryKey, VecDeque<Parked>)> = keys
            .into_iter()
            .filter_map(|k| level.remove(&k).map(|q| (k, q)))
            .collect();
        self.len -= taken.iter().map(|(_, q)| q.len()).sum::<usize>();
        taken
    }

    /// The lot as checkpoint state: per level, the entries in the header and their rows as
    /// one batch. Empty state when nothing waits.
    pub fn snapshot(&self) -> Result<OperatorState> {
        if self.is_empty() {
            return Ok(OperatorState::default());
        }
        let mut levels = Vec::new();
        let mut batches = Vec::new();
        for (level, queues) in self.levels.iter().enumerate() {
            if queues.is_empty() {
                continue;
            }
            let mut entries = Vec::new();
            let mut rows = Vec::new();
            for (key, queue) in queues {
                for p in queue {
                    entries.push(StoredEntry::of(key, p));
                    rows.push(p.row.clone());
                }
            }
            let schema = rows[0].schema();
            let batch = concat_batches(&schema, &rows)
                .map_err(|e| WeirError::Internal(format!("parked events: {e}")))?;
            levels.push(StoredLevel { level, entries });
            batches.push(batch);
        }
        let meta = serde_json::to_value(StoredLot { levels })
            .map_err(|e| WeirError::Internal(format!("parked events: {e}")))?;
        Ok(OperatorState {
            meta,
            batches,
            config: None,
        })
    }

    /// Restore a [`Lot::snapshot`]; `inputs[i]` is the input schema of operator `i`. A
    /// stored row that no longer fits its operator's input is an error saying so.
    pub fn restore(
        state: OperatorState,
        inputs: &[SchemaRef],
        operator_names: &[&str],
    ) -> std::result::Result<Self, String> {
        let mut lot = Lot::new(inputs.len());
        if state.meta.is_null() && state.batches.is_empty() {
            return Ok(lot);
        }
        let stored: StoredLot = serde_json::from_value(state.meta)
            .map_err(|e| format!("the events waiting for a retry cannot be read: {e}"))?;
        if stored.levels.len() != state.batches.len() {
            return Err("the events waiting for a retry have the wrong shape".into());
        }
        for (level, batch) in stored.levels.into_iter().zip(state.batches) {
            let Some(input) = inputs.get(level.level) else {
                return Err(format!(
                    "events wait for a retry at operator {} of a chain of {}",
                    level.level,
                    inputs.len()
                ));
            };
            let fits = batch.schema().fields().len() == input.fields().len()
                && batch
                    .schema()
                    .fields()
                    .iter()
                    .zip(input.fields())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !fits || batch.num_rows() != level.entries.len() {
                return Err(format!(
                    "{} event(s) wait for a retry at {}, whose input columns changed",
                    level.entries.len(),
                    operator_names.get(level.level).unwrap_or(&"an operator")
                ));
            }
            // Rows in the operator's current schema (nullability and metadata as now).
            let batch = RecordBatch::try_new(input.clone(), batch.columns().to_vec())
                .map_err(|e| format!("the events waiting for a retry: {e}"))?;
            for (i, e) in level.entries.into_iter().enumerate() {
                let (key, parked) = e.into_parked(batch.slice(i, 1))?;
                lot.push(level.level, key, parked);
            }
        }
        Ok(lot)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredLot {
    levels: Vec<StoredLevel>,
}

#[derive(Serialize, Deserialize)]
struct StoredLevel {
    level: usize,
    entries: Vec<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredKey {
    Operator(String),
    /// The message key, base64 (`None`: the message has no key).
    Message(Option<String>),
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    key: StoredKey,
    offset: i64,
    attempts: u32,
    first_failure_ms: i64,
    due_ms: i64,
    kind: ErrorKind,
    error: String,
    /// The source message's key and payload, base64.
    message_key: Option<String>,
    payload: Option<String>,
    timestamp_ms: Option<i64>,
}

impl StoredEntry {
    fn of(key: &RetryKey, p: &Parked) -> Self {
        let b64 = |b: &Option<Vec<u8>>| b.as_deref().map(base64::encode);
        Self {
            key: match key {
                RetryKey::Operator(k) => StoredKey::Operator(k.clone()),
                RetryKey::Message(k) => StoredKey::Message(b64(k)),
            },
            offset: p.message.offset,
            attempts: p.attempts,
            first_failure_ms: p.first_failure_ms,
            due_ms: p.due_ms,
            kind: p.kind,
            error: p.error.clone(),
            message_key: b64(&p.message.key),
            payload: b64(&p.message.payload),
            timestamp_ms: p.message.timestamp_ms,
        }
    }

    fn into_parked(self, row: RecordBatch) -> std::result::Result<(RetryKey, Parked), String> {
        let bytes = |b: Option<String>| -> std::result::Result<Option<Vec<u8>>, String> {
            b.map(|t| base64::decode(&t))
                .transpose()
                .map_err(|e| format!("a parked event's bytes: {e}"))
        };
        let key = match self.key {
            StoredKey::Operator(k) => RetryKey::Operator(k),
            StoredKey::Message(k) => RetryKey::Message(bytes(k)?),
        };
        let message = RawMessage {
            offset: self.offset,
            key: bytes(self.message_key)?,
            payload: bytes(self.payload)?,
            timestamp_ms: self.timestamp_ms,
            headers: Vec::new(),
        };
        Ok((
            key,
            Parked {
                row,
                message,
                attempts: self.attempts,
                first_failure_ms: self.first_failure_ms,
                due_ms: self.due_ms,
                kind: self.kind,
                error: self.error,
            },
        ))
    }
}

/// Row `row` of `batch` as a batch of its own (a copy: it does not keep `batch` alive).
pub(crate) fn one_row(batch: &RecordBatch, row: usize) -> Result<RecordBatch> {
    let idx = crate::arrow::array::UInt32Array::from(vec![row as u32]);
    crate::arrow::compute::take_record_batch(batch, &idx)
        .map_err(|e| WeirError::Internal(format!("parked event row: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::{Int64Array, StringArray};
    use crate::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(crate::OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    fn row(k: &str, offset: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec![k])),
                Arc::new(Int64Array::from(vec![offset])),
            ],
        )
        .unwrap()
    }

    fn message(offset: i64) -> RawMessage {
        RawMessage {
            offset,
            key: Some(vec![0xff, offset as u8]),
            payload: Some(format!("{{\"o\":{offset}}}").into_bytes()),
            timestamp_ms: Some(offset * 10),
            headers: Vec::new(),
        }
    }

    #[test]
    fn heads_are_due_by_their_timer_and_waiting_queues_at_once() {
        let mut lot = Lot::new(2);
        lot.push(
            1,
            RetryKey::Operator("a".into()),
            Parked {
                attempts: 1,
                first_failure_ms: 100,
                due_ms: 1_000,
                error: "down".into(),
                ..Parked::waiting(row("a", 3), message(3))
            },
        );
        lot.push(
            1,
            RetryKey::Operator("a".into()),
            Parked::waiting(row("a", 5), message(5)),
        );
        assert_eq!(lot.len(), 2);
        assert_eq!(lot.next_due(), Some(1_000));
        assert!(lot.take_runnable(1, 999).is_empty());
        let taken = lot.take_runnable(1, 1_000);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.len(), 2);
        assert!(lot.is_empty());
        assert_eq!(lot.next_due(), None);
    }

    #[test]
    fn a_snapshot_restores_every_queue_in_order_with_its_timer_and_bytes() {
        let mut lot = Lot::new(2);
        let head = Parked {
            attempts: 2,
            first_failure_ms: 100,
            due_ms: 5_000,
            error: "lookup timed out".into(),
            ..Parked::waiting(row("a", 3), message(3))
        };
        lot.push(0, RetryKey::Message(Some(vec![1, 2])), head.clone());
        lot.push(0, RetryKey::Message(None), head.clone());
        lot.push(1, RetryKey::Operator("a".into()), head);
        lot.push(
            1,
            RetryKey::Operator("a".into()),
            Parked::waiting(row("a", 9), message(9)),
        );
        let state = lot.snapshot().unwrap();
        let bytes = crate::checkpoint::encode(&crate::Checkpoint {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 0,
            epoch: 1,
            next_offset: 10,
            counters: Default::default(),
            operators: Vec::new(),
            parked: state,
            reset: false,
            generation: 0,
        })
        .unwrap();
        let back = crate::checkpoint::decode(&bytes, std::path::Path::new("x")).unwrap();
        let mut restored = Lot::restore(back.parked, &[schema(), schema()], &["a", "b"]).unwrap();
        assert_eq!(restored.len(), 4);
        assert_eq!(restored.next_due(), Some(5_000));
        assert_eq!(restored.message_keys(0).len(), 2);
        let q = restored.take_runnable(1, 5_000).pop().unwrap().1;
        let offsets: Vec<i64> = q.iter().map(|p| p.message.offset).collect();
        assert_eq!(offsets, [3, 9]);
        assert_eq!(q[0].attempts, 2);
        assert_eq!(q[0].first_failure_ms, 100);
        assert_eq!(q[0].error, "lookup timed out");
        assert_eq!(q[0].message, message(3));
        assert_eq!(q[1].row, row("a", 9));
        // A changed input schema is refused, naming the operator.
        let other = Arc::new(Schema::new(vec![Field::new("z", DataType::Int64, false)]));
        let err = Lot::restore(
            lot.snapshot().unwrap(),
            &[schema(), other],
            &["a", "operators[1]"],
        )
        .unwrap_err();
        assert!(err.contains("operators[1]"), "{err}");
    }
}
