//! Test doubles shared by every crate's tests (feature `testkit`): an in-memory source, an
//! epoch-aware in-memory sink and DLQ that keep only committed output (so a "crash" loses
//! exactly what a real crash would), and a sink that fails on purpose.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::arrow::record_batch::RecordBatch;
use crate::batch::{RawBatch, RawMessage};
use crate::dlq::{DeadLetter, DlqWriter};
use crate::error::{ErrorClass, Result, WeirError};
use crate::lane::Lane;
use crate::sink::{EpochParticipant, Guarantee, SinkWriter, WriteOutcome};
use crate::source::{PartitionReader, ReadResult, Source};

/// Partitions held in memory. Readers return `End` when exhausted, or `Idle` forever when
/// `unbounded` (to test shutdown).
#[derive(Clone)]
pub struct MemorySource {
    pub topic: Arc<str>,
    pub partitions: BTreeMap<i32, Arc<Vec<RawMessage>>>,
    pub unbounded: bool,
    /// Cap on the rows of one read, below the executor's `max_rows` (random batch sizes).
    pub read_sizes: Option<Vec<usize>>,
    /// Every `set_paused` call of the readers, in order: (partition, paused).
    pub pauses: Arc<Mutex<Vec<(i32, bool)>>>,
}

impl MemorySource {
    pub fn new(topic: &str, partitions: BTreeMap<i32, Vec<RawMessage>>) -> Self {
        Self {
            topic: topic.into(),
            partitions: partitions
                .into_iter()
                .map(|(p, m)| (p, Arc::new(m)))
                .collect(),
            unbounded: false,
            read_sizes: None,
            pauses: Arc::default(),
        }
    }
}

impl Source for MemorySource {
    fn name(&self) -> &str {
        "memory"
    }

    fn partitions(&mut self) -> Result<Vec<(Arc<str>, i32)>> {
        Ok(self
            .partitions
            .keys()
            .map(|p| (self.topic.clone(), *p))
            .collect())
    }

    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        let messages = self
            .partitions
            .get(&partition)
            .cloned()
            .ok_or_else(|| WeirError::source("memory", format!("no partition {partition}")))?;
        let pos = messages.partition_point(|m| m.offset < next_offset);
        Ok(Box::new(MemoryReader {
            topic: topic.clone(),
            partition,
            messages,
            pos,
            unbounded: self.unbounded,
            sizes: self.read_sizes.clone().unwrap_or_default(),
            reads: 0,
            pauses: self.pauses.clone(),
        }))
    }
}

struct MemoryReader {
    topic: Arc<str>,
    partition: i32,
    messages: Arc<Vec<RawMessage>>,
    pos: usize,
    unbounded: bool,
    sizes: Vec<usize>,
    reads: usize,
    pauses: Arc<Mutex<Vec<(i32, bool)>>>,
}

impl PartitionReader for MemoryReader {
    fn end_offset(&self) -> Option<i64> {
        // Offsets need not be dense: the end is after the last message.
        (!self.unbounded).then(|| self.messages.last().map_or(0, |m| m.offset + 1))
    }

    fn set_paused(&mut self, paused: bool) -> Result<()> {
        self.pauses
            .lock()
            .expect("test lock")
            .push((self.partition, paused));
        Ok(())
    }

    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult> {
        if self.pos >= self.messages.len() {
            if self.unbounded {
                std::thread::sleep(linger.min(Duration::from_millis(5)));
                return Ok(ReadResult::Idle);
            }
            return Ok(ReadResult::End);
        }
        let mut n = max_rows;
        if !self.sizes.is_empty() {
            n = n.min(self.sizes[self.reads % self.sizes.len()].max(1));
        }
        self.reads += 1;
        let end = (self.pos + n).min(self.messages.len());
        let batch = RawBatch::new(
            self.topic.clone(),
            self.partition,
            self.messages[self.pos..end].to_vec(),
        );
        self.pos = end;
        Ok(ReadResult::Batch(batch))
    }
}

/// Output of the memory sink, shared with the test.
#[derive(Default, Debug)]
pub struct MemorySinkState {
    pub staged: BTreeMap<Lane, Vec<RecordBatch>>,
    pub prepared: BTreeMap<Lane, (u64, Vec<RecordBatch>)>,
    pub committed: Vec<RecordBatch>,
    pub writes: usize,
}

/// Stages rows per lane and publishes them on commit: exactly-once under the epoch
/// protocol. `fail_after_writes` makes the Nth write a fatal error (a crash).
#[derive(Clone, Default)]
pub struct MemorySink {
    pub state: Arc<Mutex<MemorySinkState>>,
    pub fail_after_writes: Option<usize>,
    /// Fail every Nth write with a transient error once (exercises retry).
    pub transient_every: Option<usize>,
}

impl MemorySink {
    pub fn committed(&self) -> Vec<RecordBatch> {
        self.state.lock().expect("test lock").committed.clone()
    }
}

impl EpochParticipant for MemorySink {
    fn recover(&mut self, lane: &Lane, _committed: Option<u64>) -> Result<()> {
        let mut s = self.state.lock().expect("test lock");
        s.staged.remove(lane);
        s.prepared.remove(lane);
        Ok(())
    }

    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let mut s = self.state.lock().expect("test lock");
        let staged = s.staged.remove(lane).unwrap_or_default();
        s.prepared.insert(lane.clone(), (epoch, staged));
        Ok(())
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let mut s = self.state.lock().expect("test lock");
        if let Some((e, rows)) = s.prepared.remove(lane) {
            assert_eq!(e, epoch, "commit of an epoch that was not prepared");
            s.committed.extend(rows);
        }
        Ok(())
    }
}

impl SinkWriter for MemorySink {
    fn name(&self) -> &str {
        "memory"
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        let mut s = self.state.lock().expect("test lock");
        s.writes += 1;
        if let Some(n) = self.transient_every {
            if s.writes.is_multiple_of(n) {
                return Err(WeirError::Sink {
                    sink: "memory".into(),
                    message: "injected transient failure".into(),
                    class: ErrorClass::Transient,
                });
            }
        }
        if self.fail_after_writes.is_some_and(|n| s.writes >= n) {
            return Err(WeirError::sink("memory", "injected crash"));
        }
        s.staged
            .entry(lane.clone())
            .or_default()
            .push(batch.clone());
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}

/// Dead letters kept in memory with the same staging as [`MemorySink`].
#[derive(Clone, Default)]
pub struct MemoryDlq {
    pub staged: Arc<Mutex<BTreeMap<Lane, Vec<DeadLetter>>>>,
    pub committed: Arc<Mutex<Vec<DeadLetter>>>,
}

impl EpochParticipant for MemoryDlq {
    fn recover(&mut self, lane: &Lane, _committed: Option<u64>) -> Result<()> {
        self.staged.lock().expect("test lock").remove(lane);
        Ok(())
    }

    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        Ok(())
    }

    fn commit(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        let letters = self
            .staged
            .lock()
            .expect("test lock")
            .remove(lane)
            .unwrap_or_default();
        self.committed.lock().expect("test lock").extend(letters);
        Ok(())
    }
}

impl DlqWriter for MemoryDlq {
    fn write(&mut self, lane: &Lane, letters: &[DeadLetter]) -> Result<()> {
        let mut staged = self.staged.lock().expect("test lock");
        staged
            .entry(lane.clone())
            .or_default()
            .extend_from_slice(letters);
        Ok(())
    }
}

/// A plain JSON-payload message.
pub fn json_message(offset: i64, key: &str, payload: &str) -> RawMessage {
    RawMessage {
        offset,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}
