//! The partition task: the one owner of a partition's decoder, operator chain and offset.
//!
//! # Retries before the DLQ (ARCHITECTURE.md, "Retries before the DLQ")
//!
//! An operator that fails on an event with a retryable error ([`Emit::fail`]) hands it back
//! to the task, which *parks* it (`crate::parked`): the event's row (as that operator's
//! input), its source message, its attempts and when the next one is due, by the
//! [`RetrySchedule`]. The key the operator named is then *held*: the operator's later rows of
//! that key are handed back too ([`Emit::is_held`], [`Emit::hold`]) and wait behind it, in
//! order, while other keys go on. A stateless operator may name no key: the task then holds
//! the message key itself. Parked events are in every checkpoint, so the offsets go on past
//! them and a restart resumes their timers. [`PartitionTask::retry_due`] (called by the
//! worker when [`PartitionTask::next_retry_ms`] passes, input or not) feeds each due key's
//! queue back to its operator, head first: an event that succeeds goes on through the rest of
//! the chain and its key's waiting events follow it; one that fails again waits for its next
//! attempt, and after the last one goes to the DLQ with the real attempt count and the last
//! error, after which its key's waiting events go on in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::arrow::array::BooleanArray;
use crate::arrow::compute::{concat_batches, filter_record_batch};
use crate::arrow::datatypes::SchemaRef;
use crate::arrow::record_batch::RecordBatch;
use crate::batch::{RawBatch, RawMessage};
use crate::checkpoint::Checkpoint;
use crate::dlq::{DeadLetter, ErrorKind, Stage};
use crate::error::{Result, WeirError};
use crate::fingerprint::{self, Fit};
use crate::metrics::{now_ms, Counters};
use crate::operator::{offset_column, Decoder, Emit, Operator, RetryRequest, RowReject};
use crate::parked::{one_row, Lot, Parked, RetryKey};
use crate::retry_schedule::RetrySchedule;
use crate::OFFSET_COLUMN;
use tracing::{info, warn};

/// The attempts so far of the events a retry feeds back (offset → (failed attempts, first
/// failure ms)), at the operator they wait at.
type Refed = HashMap<i64, (u32, i64)>;

/// What one step of a partition task produced for the sink stage.
#[derive(Debug, Default)]
pub struct TaskOutput {
    pub batches: Vec<RecordBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// Accounting of this step alone.
    pub delta: Counters,
    /// The watermark an operator reported ([`Emit::report_watermark`]) in this step.
    pub watermark: Option<i64>,
    /// The messages of this step, kept when `batches` still carry the [`OFFSET_COLUMN`]
    /// (a chain without a stateful operator): a row a sink refuses is then dead-lettered
    /// with its source message (executor `sink_rejects`).
    ///
    /// [`OFFSET_COLUMN`]: crate::OFFSET_COLUMN
    pub source: Option<Arc<RawBatch>>,
    /// The newest source timestamp (epoch ms) of the step's messages, when the source has
    /// timestamps: the end-to-end latency is measured from it when the output is written.
    pub source_time_ms: Option<i64>,
    /// The lowest event-time watermark of the chain's operators after this step
    /// ([`crate::Operator::watermark`]), for the metrics.
    pub event_watermark: Option<i64>,
    /// Events of the partition waiting for a retry after this step.
    pub in_retry: u64,
}

/// What a step of the chain is besides its input batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    None,
    /// The partition has been idle for the idle timeout; it has had no input for this long.
    Idle(Duration),
    /// The input ended.
    End,
}

/// The error of a checkpoint whose state no longer fits the pipeline: what changed and the
/// two ways out.
pub fn state_mismatch(place: &str, changes: &[String]) -> WeirError {
    WeirError::Config(format!(
        "the checkpoint of {place} does not fit the pipeline any more: {}. Its state \
         would give wrong results, so the run stops. Either give the pipeline a new `name` \
         (it starts from empty state and its own offsets; the old checkpoints stay), or \
         discard the old state with `weir reset <pipeline file>` (see `weir reset --help`)",
        changes.join("; ")
    ))
}

/// Processes one partition in offset order: decode, then each operator in turn.
pub struct PartitionTask {
    pipeline: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    decoder: Box<dyn Decoder>,
    operators: Vec<Box<dyn Operator>>,
    next_offset: i64,
    /// `next_offset` was given ([`PartitionTask::set_next_offset`]), not left at 0.
    start_given: bool,
    epoch: u64,
    /// The claim on the lane's checkpoints this task runs under (its checkpoints carry it).
    generation: u64,
    counters: Counters,
    schedule: RetrySchedule,
    /// Events waiting for a retry (see the module docs).
    lot: Lot,
}

impl PartitionTask {
    pub fn new(
        pipeline: Arc<str>,
        topic: Arc<str>,
        partition: i32,
        decoder: Box<dyn Decoder>,
        operators: Vec<Box<dyn Operator>>,
    ) -> Self {
        let lot = Lot::new(operators.len());
        Self {
            pipeline,
            topic,
            partition,
            decoder,
            operators,
            next_offset: 0,
            start_given: false,
            epoch: 0,
            generation: 0,
            counters: Counters::default(),
            schedule: RetrySchedule::default(),
            lot,
        }
    }

    /// Retry the events operators fail on with a retryable error on `schedule` (default
    /// [`RetrySchedule::default`]; [`RetrySchedule::none`]: every failure to the DLQ at once).
    pub fn with_retry_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Events waiting for a retry.
    pub fn in_retry(&self) -> usize {
        self.lot.len()
    }

    /// When the next retry is due (epoch ms), if any event waits.
    pub fn next_retry_ms(&self) -> Option<i64> {
        self.lot.next_due()
    }

    /// The input schema of operator `i`.
    fn input_schema(&self, i: usize) -> SchemaRef {
        match i {
            0 => self.decoder.schema(),
            _ => self.operators[i - 1].output_schema(),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Run under `generation`, the executor's claim on the lane
    /// ([`crate::CheckpointStore::claim`]): every checkpoint carries it.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Start reading at `offset` (when there is no checkpoint).
    pub fn set_next_offset(&mut self, offset: i64) {
        self.next_offset = offset;
        self.start_given = true;
    }

    /// The start was given with [`PartitionTask::set_next_offset`] (else the source's own
    /// start applies when there is no checkpoint).
    pub fn start_given(&self) -> bool {
        self.start_given
    }

    /// Resume from a stored checkpoint. A [`Checkpoint::reset`] marker keeps only its epoch.
    /// State whose operator configuration changed since it was stored is refused, naming
    /// what changed and the two ways out ([`crate::fingerprint`]); a checkpoint from before
    /// fingerprints is restored with a warning (nothing to compare; the next checkpoint
    /// records them).
    pub fn restore(&mut self, checkpoint: Checkpoint) -> Result<()> {
        if checkpoint.reset {
            self.epoch = checkpoint.epoch;
            return Ok(());
        }
        let place = format!(
            "partition {}/{} of pipeline `{}`",
            self.topic, self.partition, self.pipeline
        );
        if checkpoint.operators.len() != self.operators.len() {
            return Err(state_mismatch(
                &place,
                &[format!(
                    "the checkpoint holds the state of {} operators, the pipeline has {}",
                    checkpoint.operators.len(),
                    self.operators.len()
                )],
            ));
        }
        let mut changed = Vec::new();
        let mut unchecked = false;
        for (op, state) in self.operators.iter().zip(&checkpoint.operators) {
            let current = op.fingerprint().unwrap_or_default();
            match fingerprint::fit(op.name(), state.config.as_ref(), &current) {
                Fit::Fits => {}
                Fit::Unchecked => unchecked = true,
                Fit::Changed(why) => changed.push(why),
            }
        }
        if !changed.is_empty() {
            return Err(state_mismatch(&place, &changed));
        }
        if unchecked {
            warn!(
                pipeline = %self.pipeline,
                topic = %self.topic,
                partition = self.partition,
                "the checkpoint was written before weir stored operator configuration \
                 fingerprints: its state is restored without checking that the operators' \
                 configuration is unchanged (the next checkpoint records it)"
            );
        }
        for (op, state) in self.operators.iter_mut().zip(checkpoint.operators) {
            op.restore(state)?;
        }
        let inputs: Vec<SchemaRef> = (0..self.operators.len())
            .map(|i| self.input_schema(i))
            .collect();
        let names: Vec<&str> = self.operators.iter().map(|o| o.name()).collect();
        self.lot = Lot::restore(checkpoint.parked, &inputs, &names)
            .map_err(|e| state_mismatch(&place, &[e]))?;
        if !self.lot.is_empty() {
            info!(
                pipeline = %self.pipeline,
                topic = %self.topic,
                partition = self.partition,
                events = self.lot.len(),
                next_retry_in_ms = self.lot.next_due().map_or(0, |d| (d - now_ms()).max(0)),
                "events waiting for a retry restored from the checkpoint"
            );
        }
        self.next_offset = checkpoint.next_offset;
        self.epoch = checkpoint.epoch;
        self.counters = checkpoint.counters;
        Ok(())
    }

    /// Process one batch. Messages below the next offset (a source replaying what the
    /// checkpoint already holds) are skipped.
    pub fn process(&mut self, raw: &RawBatch) -> Result<TaskOutput> {
        let start = raw
            .messages
            .partition_point(|m| m.offset < self.next_offset);
        if start == raw.messages.len() {
            return Ok(TaskOutput::default());
        }
        let owned;
        let raw = if start > 0 {
            owned = RawBatch::new(
                raw.topic.clone(),
                raw.partition,
                raw.messages[start..].to_vec(),
            );
            &owned
        } else {
            raw
        };
        let mut out = TaskOutput::default();
        out.delta.consumed = raw.len() as u64;
        let decoded = self.decoder.decode(raw)?;
        self.dead_letter(raw, Stage::Decode, decoded.rejects, &mut out, &Refed::new());
        let input = decoded.batch.into_iter().collect();
        self.run_chain(raw, input, Flush::None, &mut out)?;
        self.next_offset = raw.messages.last().expect("invariant: non-empty").offset + 1;
        self.counters.add(&out.delta);
        out.in_retry = self.lot.len() as u64;
        Ok(out)
    }

    /// The input ended: every operator emits what it still holds.
    pub fn end_of_input(&mut self) -> Result<TaskOutput> {
        let mut out = TaskOutput::default();
        let empty = RawBatch::new(self.topic.clone(), self.partition, Vec::new());
        self.run_chain(&empty, Vec::new(), Flush::End, &mut out)?;
        self.counters.add(&out.delta);
        out.in_retry = self.lot.len() as u64;
        Ok(out)
    }

    /// The partition has had no input for `idle_for` (at least the idle timeout): operators
    /// that follow event time may advance it ([`Operator::on_idle`]).
    pub fn idle(&mut self, idle_for: Duration) -> Result<TaskOutput> {
        let mut out = TaskOutput::default();
        let empty = RawBatch::new(self.topic.clone(), self.partition, Vec::new());
        self.run_chain(&empty, Vec::new(), Flush::Idle(idle_for), &mut out)?;
        self.counters.add(&out.delta);
        out.in_retry = self.lot.len() as u64;
        Ok(out)
    }

    /// Try again the events whose next attempt is due at `now_ms` (epoch ms; see the module
    /// docs), and let on the events that waited behind the ones that succeed or are
    /// dead-lettered.
    pub fn retry_due(&mut self, now_ms: i64) -> Result<TaskOutput> {
        let mut out = TaskOutput::default();
        let mut messages: BTreeMap<i64, RawMessage> = BTreeMap::new();
        loop {
            let mut ran = false;
            for level in 0..self.operators.len() {
                let runnable = self.lot.take_runnable(level, now_ms);
                if runnable.is_empty() {
                    continue;
                }
                ran = true;
                let schema = self.input_schema(level);
                let mut rows = Vec::new();
                let mut msgs = Vec::new();
                let mut refed = Refed::new();
                for (_, queue) in runnable {
                    out.delta.unparked += queue.len() as u64;
                    for (j, p) in queue.into_iter().enumerate() {
                        if j == 0 && p.attempts > 0 {
                            refed.insert(p.message.offset, (p.attempts, p.first_failure_ms));
                            out.delta.retries += 1;
                        }
                        // In the operator's input schema as it is now (restored rows are).
                        let row = RecordBatch::try_new(schema.clone(), p.row.columns().to_vec())
                            .unwrap_or(p.row);
                        rows.push(row);
                        msgs.push(p.message);
                    }
                }
                let input = concat_batches(&schema, &rows)
                    .map_err(|e| WeirError::Internal(format!("events waiting for a retry: {e}")))?;
                msgs.sort_by_key(|m| m.offset);
                let raw = RawBatch::new(self.topic.clone(), self.partition, msgs);
                let at = (&refed, now_ms);
                self.run_from(level, &raw, vec![input], Flush::None, &mut out, at)?;
                messages.extend(raw.messages.into_iter().map(|m| (m.offset, m)));
            }
            if !ran {
                break;
            }
        }
        if !out.batches.is_empty() {
            out.source_time_ms = messages.values().filter_map(|m| m.timestamp_ms).max();
        }
        if out
            .batches
            .iter()
            .any(|b| b.schema().index_of(OFFSET_COLUMN).is_ok())
        {
            let messages = messages.into_values().collect();
            out.source = Some(Arc::new(RawBatch::new(
                self.topic.clone(),
                self.partition,
                messages,
            )));
        }
        self.counters.add(&out.delta);
        out.in_retry = self.lot.len() as u64;
        Ok(out)
    }

    /// Take a checkpoint of the state as of the last processed batch.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        let operators = self
            .operators
            .iter_mut()
            .map(|op| {
                let mut state = op.snapshot()?;
                state.config = Some(op.fingerprint().unwrap_or_default());
                Ok(state)
            })
            .collect::<Result<Vec<_>>>()?;
        let parked = self.lot.snapshot()?;
        self.epoch += 1;
        Ok(Checkpoint {
            pipeline: self.pipeline.to_string(),
            topic: self.topic.clone(),
            partition: self.partition,
            epoch: self.epoch,
            next_offset: self.next_offset,
            counters: self.counters,
            operators,
            parked,
            reset: false,
            generation: self.generation,
        })
    }

    /// Lifetime accounting of this partition (restored from the checkpoint).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn run_chain(
        &mut self,
        raw: &RawBatch,
        input: Vec<RecordBatch>,
        flush: Flush,
        out: &mut TaskOutput,
    ) -> Result<()> {
        self.run_from(0, raw, input, flush, out, (&Refed::new(), now_ms()))
    }

    /// Run `input` through the operators from `start` on. `raw` holds the messages of its
    /// rows; `refed`, the attempts so far of the events a retry feeds back to `start`; `now`,
    /// the time (epoch ms) next attempts are scheduled from.
    fn run_from(
        &mut self,
        start: usize,
        raw: &RawBatch,
        mut input: Vec<RecordBatch>,
        flush: Flush,
        out: &mut TaskOutput,
        (refed, now): (&Refed, i64),
    ) -> Result<()> {
        // rows are still events, not results of a stateful operator
        let mut events = !self.operators[..start].iter().any(|o| o.is_stateful());
        let mut absorbed_any = !events;
        let none = Refed::new();
        for i in start..self.operators.len() {
            let refed = if i == start { refed } else { &none };
            // Retries need the rows' offsets to find them again.
            let retrying = events
                && self.schedule.retries()
                && self.input_schema(i).index_of(OFFSET_COLUMN).is_ok();
            let mut emit = if retrying {
                if self.lot.holds_at(i) {
                    input = self.hold_message_keys(i, raw, input, out)?;
                }
                Emit::with_retries(self.lot.operator_keys(i), self.schedule.retry_panics)
            } else {
                Emit::default()
            };
            let kept: Vec<RecordBatch> = if retrying { input.clone() } else { Vec::new() };
            {
                let op = &mut self.operators[i];
                for batch in input.drain(..) {
                    op.process(batch, &mut emit)?;
                }
                match flush {
                    Flush::None => {}
                    Flush::Idle(idle_for) => op.on_idle(idle_for, &mut emit)?,
                    Flush::End => op.on_end_of_input(&mut emit)?,
                }
            }
            if let Some(w) = emit.watermark() {
                out.watermark = Some(w);
            }
            if let Some(w) = self.operators[i].watermark() {
                out.event_watermark = Some(out.event_watermark.map_or(w, |o: i64| o.min(w)));
            }
            if events {
                out.delta.filtered += emit.filtered();
                out.delta.deduplicated += emit.deduplicated();
                out.delta.late_dropped += emit.late_dropped();
                out.delta.late += emit.late_dropped();
                out.delta.aggregated += emit.absorbed();
                out.delta.late += emit
                    .rejects()
                    .iter()
                    .filter(|r| r.kind == crate::dlq::ErrorKind::Late)
                    .count() as u64;
            }
            let mut rejects = emit.take_rejects();
            let mut batches = emit.take_batches();
            let mut failed_again = HashSet::new();
            let requests = emit.take_retry_requests();
            if !requests.is_empty() {
                self.park(
                    i,
                    raw,
                    &kept,
                    requests,
                    (&mut batches, &mut rejects),
                    (refed, now),
                    &mut failed_again,
                    out,
                )?;
            }
            if !refed.is_empty() {
                failed_again.extend(rejects.iter().map(|r| r.offset));
                out.delta.retry_successes +=
                    refed.keys().filter(|o| !failed_again.contains(*o)).count() as u64;
            }
            let stage = Stage::Operator(self.operators[i].name().to_string());
            if events {
                self.dead_letter(raw, stage, rejects, out, refed);
            } else if !rejects.is_empty() {
                return Err(WeirError::operator(
                    self.operators[i].name(),
                    "rejected result rows, which have no source message to dead-letter",
                ));
            }
            if self.operators[i].is_stateful() {
                events = false;
                absorbed_any = true;
            }
            input = batches;
        }
        let rows: u64 = input.iter().map(|b| b.num_rows() as u64).sum();
        if !absorbed_any {
            out.delta.aggregated += rows;
        }
        out.delta.rows_out += rows;
        out.batches.extend(input);
        Ok(())
    }

    /// Before operator `level` runs: its input rows whose message key has an event waiting
    /// there wait behind it (they are parked, in order, and taken out of the input).
    fn hold_message_keys(
        &mut self,
        level: usize,
        raw: &RawBatch,
        input: Vec<RecordBatch>,
        out: &mut TaskOutput,
    ) -> Result<Vec<RecordBatch>> {
        let keys = self.lot.message_keys(level);
        if keys.is_empty() {
            return Ok(input);
        }
        let mut kept = Vec::with_capacity(input.len());
        for batch in input {
            let Some(offsets) = offset_column(&batch, batch.schema().index_of(OFFSET_COLUMN).ok())
            else {
                kept.push(batch);
                continue;
            };
            let mut pass = Vec::with_capacity(batch.num_rows());
            for r in 0..batch.num_rows() {
                let message = message_at(raw, offsets.value(r));
                if keys.contains(&message.key) {
                    let key = RetryKey::Message(message.key.clone());
                    self.lot
                        .push(level, key, Parked::waiting(one_row(&batch, r)?, message));
                    out.delta.parked += 1;
                    pass.push(false);
                } else {
                    pass.push(true);
                }
            }
            if pass.iter().all(|p| *p) {
                kept.push(batch);
            } else {
                let passing = filter_record_batch(&batch, &BooleanArray::from(pass))
                    .map_err(|e| WeirError::Internal(format!("holding events: {e}")))?;
                kept.push(passing);
            }
        }
        Ok(kept)
    }

    /// Park what operator `level` handed back ([`Emit::fail`], [`Emit::hold`]): failed
    /// events wait for their next attempt (or, after the last, become dead letters), held
    /// ones behind their key's. For failures without a key (the message key), the key's
    /// later rows this operator passed or refused are taken back out of `outputs` and wait
    /// too. `failed_again`: the offsets that failed, for the count of retry successes.
    #[allow(clippy::too_many_arguments)]
    fn park(
        &mut self,
        level: usize,
        raw: &RawBatch,
        kept: &[RecordBatch],
        requests: Vec<RetryRequest>,
        outputs: (&mut Vec<RecordBatch>, &mut Vec<RowReject>),
        (refed, now): (&Refed, i64),
        failed_again: &mut HashSet<i64>,
        out: &mut TaskOutput,
    ) -> Result<()> {
        let (batches, rejects) = outputs;
        // Waits count from when the attempt failed (now, after the operator ran), and never
        // from before the step's own time.
        let now = now.max(now_ms());
        // Where each input row is: offset → (batch, row, position in the input).
        let mut at: HashMap<i64, (usize, usize, usize)> = HashMap::new();
        let mut position = 0;
        for (b, batch) in kept.iter().enumerate() {
            if let Some(offsets) = offset_column(batch, batch.schema().index_of(OFFSET_COLUMN).ok())
            {
                for r in 0..batch.num_rows() {
                    at.insert(offsets.value(r), (b, r, position));
                    position += 1;
                }
            }
        }
        let stateful = self.operators[level].is_stateful();
        let mut by_message: Vec<(usize, RetryRequest)> = Vec::new();
        for req in requests {
            let (place, failed) = (at.get(&req.offset).copied(), req.failed);
            let Some((b, r, p)) = place.filter(|_| req.key.is_some() || !stateful) else {
                // Not a row of the input, or a stateful operator that named no key (it
                // cannot be held): dead-lettered at once.
                if let Some((kind, message)) = failed {
                    rejects.push(RowReject {
                        offset: req.offset,
                        kind,
                        message,
                    });
                }
                continue;
            };
            match req.key {
                Some(k) => {
                    let row = one_row(&kept[b], r)?;
                    let message = message_at(raw, req.offset);
                    let key = RetryKey::Operator(k);
                    self.park_one(
                        level,
                        key,
                        (row, message),
                        failed,
                        now,
                        refed,
                        failed_again,
                        out,
                    );
                }
                None => by_message.push((
                    p,
                    RetryRequest {
                        offset: req.offset,
                        key: None,
                        failed,
                    },
                )),
            }
        }
        if by_message.is_empty() {
            return Ok(());
        }
        // Message keys: in input order, a key's first failure waits for its retry, and
        // everything of the key after it (failed, passed or refused) waits behind it.
        by_message.sort_by_key(|(p, _)| *p);
        let mut heads: HashMap<Option<Vec<u8>>, usize> = HashMap::new();
        let mut behind: Vec<(usize, i64)> = Vec::new();
        for (p, req) in by_message {
            let message = message_at(raw, req.offset);
            if heads.contains_key(&message.key) {
                behind.push((p, req.offset));
                failed_again.insert(req.offset);
                continue;
            }
            let (b, r, _) = at[&req.offset];
            let row = one_row(&kept[b], r)?;
            let key = RetryKey::Message(message.key.clone());
            let waits = self.park_one(
                level,
                key,
                (row, message.clone()),
                req.failed,
                now,
                refed,
                failed_again,
                out,
            );
            if waits {
                heads.insert(message.key, p);
            }
        }
        if heads.is_empty() {
            return Ok(());
        }
        let is_behind = |offset: i64| -> Option<usize> {
            let (_, _, p) = at.get(&offset)?;
            let head = heads.get(&raw.find(offset)?.key)?;
            (p > head).then_some(*p)
        };
        rejects.retain(|r| match is_behind(r.offset) {
            Some(p) => {
                behind.push((p, r.offset));
                false
            }
            None => true,
        });
        for batch in batches.iter_mut() {
            let Some(offsets) = offset_column(batch, batch.schema().index_of(OFFSET_COLUMN).ok())
            else {
                continue;
            };
            let pass: Vec<bool> = (0..batch.num_rows())
                .map(|r| match is_behind(offsets.value(r)) {
                    Some(p) => {
                        behind.push((p, offsets.value(r)));
                        false
                    }
                    None => true,
                })
                .collect();
            if pass.iter().all(|p| *p) {
                continue;
            }
            *batch = filter_record_batch(batch, &BooleanArray::from(pass))
                .map_err(|e| WeirError::Internal(format!("holding events: {e}")))?;
        }
        batches.retain(|b| b.num_rows() > 0);
        behind.sort_unstable();
        for (_, offset) in behind {
            let (b, r, _) = at[&offset];
            let message = message_at(raw, offset);
            let key = RetryKey::Message(message.key.clone());
            self.lot
                .push(level, key, Parked::waiting(one_row(&kept[b], r)?, message));
            out.delta.parked += 1;
        }
        Ok(())
    }

    /// Park one event of `key` at `level`: `failed` says it failed (with what), else it was
    /// held. A failure waits for its next attempt, unless it was the last one: then it is a
    /// dead letter with its attempts and first failure time, and `false` is returned (the
    /// key does not wait). A failure of a key that already waits waits behind it.
    #[allow(clippy::too_many_arguments)]
    fn park_one(
        &mut self,
        level: usize,
        key: RetryKey,
        (row, message): (RecordBatch, RawMessage),
        failed: Option<(ErrorKind, String)>,
        now: i64,
        refed: &Refed,
        failed_again: &mut HashSet<i64>,
        out: &mut TaskOutput,
    ) -> bool {
        let offset = message.offset;
        let Some((kind, error)) = failed else {
            self.lot.push(level, key, Parked::waiting(row, message));
            out.delta.parked += 1;
            return true;
        };
        failed_again.insert(offset);
        if self.lot.contains(level, &key) {
            self.lot.push(level, key, Parked::waiting(row, message));
            out.delta.parked += 1;
            return true;
        }
        let (before, first_failure_ms) = refed.get(&offset).copied().unwrap_or((0, now));
        let attempts = before + 1;
        match self.schedule.wait_after(attempts) {
            Some(wait) => {
                let parked = Parked {
                    row,
                    message,
                    attempts,
                    first_failure_ms,
                    due_ms: now.saturating_add(wait.as_millis() as i64),
                    kind,
                    error,
                };
                self.lot.push(level, key, parked);
                out.delta.parked += 1;
                out.delta.retries_scheduled += 1;
                true
            }
            None => {
                let one = RawBatch::new(self.topic.clone(), self.partition, vec![message]);
                let stage = Stage::Operator(self.operators[level].name().to_string());
                let mut letter =
                    DeadLetter::of_message(&self.pipeline, &one, offset, kind, error, stage);
                letter.attempts = attempts;
                letter.first_failure_ms = first_failure_ms;
                out.dead_letters.push(letter);
                out.delta.dlq += 1;
                false
            }
        }
    }

    /// Dead letters of `rejects`; one of an event a retry fed back (`refed`) carries its
    /// attempts (this one included) and the time of its first failure.
    fn dead_letter(
        &self,
        raw: &RawBatch,
        stage: Stage,
        rejects: Vec<RowReject>,
        out: &mut TaskOutput,
        refed: &Refed,
    ) {
        if rejects.is_empty() {
            return;
        }
        out.delta.dlq += rejects.len() as u64;
        for r in rejects {
            let before = refed.get(&r.offset).copied();
            let mut letter = DeadLetter::of_message(
                &self.pipeline,
                raw,
                r.offset,
                r.kind,
                r.message,
                stage.clone(),
            );
            if let Some((attempts, first)) = before {
                letter.attempts = attempts + 1;
                letter.first_failure_ms = first;
            }
            out.dead_letters.push(letter);
        }
    }
}

/// The message at `offset` of `raw`, without its headers (an empty one when `raw` does not
/// hold it).
fn message_at(raw: &RawBatch, offset: i64) -> RawMessage {
    match raw.find(offset) {
        Some(m) => RawMessage {
            offset,
            key: m.key.clone(),
            payload: m.payload.clone(),
            timestamp_ms: m.timestamp_ms,
            headers: Vec::new(),
        },
        None => RawMessage {
            offset,
            key: None,
            payload: None,
            timestamp_ms: None,
            headers: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::{Int64Array, StringArray};
    use crate::arrow::datatypes::{DataType, Field, Schema};
    use crate::checkpoint::OperatorState;
    use crate::operator::{Decoded, Failure};
    use std::collections::BTreeMap;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    /// The payload is the key.
    struct KeyDecoder;

    impl Decoder for KeyDecoder {
        fn schema(&self) -> SchemaRef {
            schema()
        }

        fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
            let keys: Vec<String> = raw
                .messages
                .iter()
                .map(|m| String::from_utf8(m.payload.clone().unwrap()).unwrap())
                .collect();
            let offsets: Vec<i64> = raw.messages.iter().map(|m| m.offset).collect();
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from(keys)),
                    Arc::new(Int64Array::from(offsets)),
                ],
            )?;
            Ok(Decoded {
                batch: Some(batch),
                rejects: Vec::new(),
            })
        }
    }

    /// Records, per key, the offsets it applied, in order. The event at an offset of
    /// `fails` fails retryably that many more times (`u32::MAX`: always); `stateful: false`
    /// makes it a pass-through that names no key (the message key keeps the order).
    struct Recorder {
        stateful: bool,
        applied: BTreeMap<String, Vec<i64>>,
        fails: BTreeMap<i64, u32>,
    }

    impl Recorder {
        fn new(stateful: bool, fails: &[(i64, u32)]) -> Self {
            Self {
                stateful,
                applied: BTreeMap::new(),
                fails: fails.iter().copied().collect(),
            }
        }
    }

    impl Operator for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        fn output_schema(&self) -> SchemaRef {
            schema()
        }

        fn is_stateful(&self) -> bool {
            self.stateful
        }

        fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
            let keys = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let offsets = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let mut pass = Vec::new();
            for i in 0..batch.num_rows() {
                let (key, offset) = (keys.value(i), offsets.value(i));
                if self.stateful && emit.is_held(key) {
                    emit.hold(offset, key);
                    continue;
                }
                if let Some(n) = self.fails.get_mut(&offset).filter(|n| **n > 0) {
                    *n = n.saturating_sub(u32::from(*n != u32::MAX));
                    let named = self.stateful.then_some(key);
                    emit.fail(
                        offset,
                        named,
                        Failure::Retryable,
                        ErrorKind::OperatorError,
                        format!("{offset} failed"),
                    );
                    continue;
                }
                self.applied
                    .entry(key.to_string())
                    .or_default()
                    .push(offset);
                pass.push(i as u32);
                if self.stateful {
                    emit.count_absorbed(1);
                }
            }
            if !self.stateful {
                let idx = crate::arrow::array::UInt32Array::from(pass);
                emit.emit(crate::arrow::compute::take_record_batch(&batch, &idx)?);
            }
            Ok(())
        }

        fn snapshot(&mut self) -> Result<OperatorState> {
            Ok(OperatorState {
                meta: serde_json::json!({"applied": self.applied, "fails": self.fails}),
                ..Default::default()
            })
        }

        fn restore(&mut self, state: OperatorState) -> Result<()> {
            self.applied = serde_json::from_value(state.meta["applied"].clone()).unwrap();
            self.fails = serde_json::from_value(state.meta["fails"].clone()).unwrap();
            Ok(())
        }
    }

    fn task(op: Recorder, schedule: RetrySchedule) -> PartitionTask {
        PartitionTask::new(
            "p".into(),
            "t".into(),
            0,
            Box::new(KeyDecoder),
            vec![Box::new(op)],
        )
        .with_retry_schedule(schedule)
    }

    fn raw(keys: &[(i64, &str)]) -> RawBatch {
        let messages = keys
            .iter()
            .map(|(o, k)| RawMessage {
                offset: *o,
                key: Some(k.as_bytes().to_vec()),
                payload: Some(k.as_bytes().to_vec()),
                timestamp_ms: None,
                headers: Vec::new(),
            })
            .collect();
        RawBatch::new("t".into(), 0, messages)
    }

    fn applied(task: &mut PartitionTask) -> BTreeMap<String, Vec<i64>> {
        let state = task.operators[0].snapshot().unwrap();
        serde_json::from_value(state.meta["applied"].clone()).unwrap()
    }

    fn output_offsets(out: &TaskOutput) -> Vec<i64> {
        out.batches
            .iter()
            .flat_map(|b| {
                let o = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                o.values().to_vec()
            })
            .collect()
    }

    fn waits(ms: &[u64]) -> RetrySchedule {
        RetrySchedule::fixed(
            &ms.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_key_waits_behind_its_retried_event_and_other_keys_go_on() {
        let mut t = task(Recorder::new(true, &[(2, 2)]), waits(&[60_000, 60_000]));
        let out = t
            .process(&raw(&[(0, "a"), (1, "b"), (2, "a"), (3, "b"), (4, "a")]))
            .unwrap();
        assert!(out.dead_letters.is_empty());
        assert_eq!(out.in_retry, 2);
        // A later batch: the key still waits, the other goes on.
        t.process(&raw(&[(5, "a"), (6, "b")])).unwrap();
        let want = |a: &[i64], b: &[i64]| {
            BTreeMap::from([("a".to_string(), a.to_vec()), ("b".to_string(), b.to_vec())])
        };
        assert_eq!(applied(&mut t), want(&[0], &[1, 3, 6]));
        assert_eq!(t.in_retry(), 3);
        let due = t.next_retry_ms().unwrap();
        assert!(due >= now_ms() + 59_000, "the first wait is the schedule's");
        // Not due yet: nothing happens.
        let out = t.retry_due(due - 1).unwrap();
        assert_eq!(out.delta, Counters::default());
        // The second attempt fails too; the third succeeds and the key's events follow.
        t.retry_due(due).unwrap();
        assert_eq!(applied(&mut t), want(&[0], &[1, 3, 6]));
        let out = t.retry_due(i64::MAX).unwrap();
        assert_eq!(applied(&mut t), want(&[0, 2, 4, 5], &[1, 3, 6]));
        assert_eq!(out.in_retry, 0);
        assert_eq!(t.next_retry_ms(), None);
        let c = t.counters();
        assert_eq!(
            (c.retries_scheduled, c.retries, c.retry_successes),
            (2, 2, 1)
        );
        assert_eq!((c.parked, c.unparked), (c.unparked, 3 + 3));
        assert!(c.balanced(), "{c:?}");
        assert_eq!(c.aggregated, 7);
    }

    #[test]
    fn after_the_last_attempt_the_event_is_dead_lettered_with_its_attempts_and_its_key_goes_on() {
        let mut t = task(
            Recorder::new(true, &[(1, u32::MAX)]),
            waits(&[10, 10]).retry_panics(false),
        );
        let first = t
            .process(&raw(&[(0, "a"), (1, "a"), (2, "a"), (3, "b")]))
            .unwrap();
        assert!(first.dead_letters.is_empty());
        let started = now_ms();
        let second = t.retry_due(t.next_retry_ms().unwrap()).unwrap();
        assert!(second.dead_letters.is_empty());
        let out = t.retry_due(t.next_retry_ms().unwrap()).unwrap();
        assert_eq!(out.dead_letters.len(), 1);
        let letter = &out.dead_letters[0];
        assert_eq!((letter.offset, letter.attempts), (1, 3));
        assert_eq!(letter.message, "1 failed");
        assert_eq!(letter.payload.as_deref(), Some(b"a".as_slice()));
        assert!(letter.first_failure_ms <= started && letter.first_failure_ms <= letter.time_ms);
        assert_eq!(
            applied(&mut t),
            BTreeMap::from([("a".into(), vec![0, 2]), ("b".into(), vec![3])])
        );
        let c = t.counters();
        assert_eq!((c.dlq, c.retries, c.retry_successes), (1, 2, 0));
        assert!(c.balanced(), "{c:?}");
    }

    #[test]
    fn without_retries_a_retryable_failure_is_dead_lettered_at_once() {
        let mut t = task(Recorder::new(true, &[(1, 5)]), RetrySchedule::none());
        let out = t.process(&raw(&[(0, "a"), (1, "a"), (2, "a")])).unwrap();
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].attempts, 1);
        assert_eq!(applied(&mut t)["a"], [0, 2]);
        assert_eq!(t.in_retry(), 0);
    }

    #[test]
    fn waiting_events_and_their_timers_are_in_the_checkpoint() {
        let schedule = waits(&[60_000, 60_000]);
        let mut t = task(Recorder::new(true, &[(1, 1)]), schedule.clone());
        t.process(&raw(&[(0, "a"), (1, "a"), (2, "a"), (3, "b")]))
            .unwrap();
        let due = t.next_retry_ms().unwrap();
        let c = t.checkpoint().unwrap();
        assert_eq!(
            c.next_offset, 4,
            "the offsets go on past the waiting events"
        );
        let bytes = crate::checkpoint::encode(&c).unwrap();
        let c = crate::checkpoint::decode(&bytes, std::path::Path::new("x")).unwrap();
        // A restart: the waiting events come back from the checkpoint, not from the source.
        let mut t = task(Recorder::new(true, &[]), schedule);
        t.restore(c).unwrap();
        assert_eq!(t.in_retry(), 2);
        assert_eq!(t.next_retry_ms(), Some(due));
        t.retry_due(due).unwrap();
        assert_eq!(
            applied(&mut t),
            BTreeMap::from([("a".into(), vec![0, 1, 2]), ("b".into(), vec![3])])
        );
        assert!(t.counters().balanced(), "{:?}", t.counters());
    }

    #[test]
    fn a_stateless_operator_keeps_the_message_keys_order() {
        let mut t = task(Recorder::new(false, &[(1, 1)]), waits(&[60_000]));
        let out = t
            .process(&raw(&[(0, "a"), (1, "a"), (2, "b"), (3, "a")]))
            .unwrap();
        // 3 passed the operator but waits behind 1, its message key's failed event.
        assert_eq!(output_offsets(&out), [0, 2]);
        let out = t.process(&raw(&[(4, "a"), (5, "b")])).unwrap();
        assert_eq!(output_offsets(&out), [5]);
        assert_eq!(t.in_retry(), 3);
        let out = t.retry_due(i64::MAX).unwrap();
        assert_eq!(output_offsets(&out), [1, 3, 4]);
        assert!(out.source.is_some(), "retried rows keep their messages");
        assert_eq!(out.delta.retry_successes, 1);
        assert!(t.counters().balanced(), "{:?}", t.counters());
        assert_eq!(t.counters().aggregated, 6);
    }
}
