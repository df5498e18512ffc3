//! The partition task: the one owner of a partition's decoder, operator chain and offset.

use std::sync::Arc;
use std::time::Duration;

use crate::arrow::record_batch::RecordBatch;
use crate::batch::RawBatch;
use crate::checkpoint::Checkpoint;
use crate::dlq::{DeadLetter, Stage};
use crate::error::{Result, WeirError};
use crate::fingerprint::{self, Fit};
use crate::metrics::Counters;
use crate::operator::{Decoder, Emit, Operator, RowReject};
use tracing::warn;

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
}

impl PartitionTask {
    pub fn new(
        pipeline: Arc<str>,
        topic: Arc<str>,
        partition: i32,
        decoder: Box<dyn Decoder>,
        operators: Vec<Box<dyn Operator>>,
    ) -> Self {
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
        self.dead_letter(raw, Stage::Decode, decoded.rejects, &mut out);
        let input = decoded.batch.into_iter().collect();
        self.run_chain(raw, input, Flush::None, &mut out)?;
        self.next_offset = raw.messages.last().expect("invariant: non-empty").offset + 1;
        self.counters.add(&out.delta);
        Ok(out)
    }

    /// The input ended: every operator emits what it still holds.
    pub fn end_of_input(&mut self) -> Result<TaskOutput> {
        let mut out = TaskOutput::default();
        let empty = RawBatch::new(self.topic.clone(), self.partition, Vec::new());
        self.run_chain(&empty, Vec::new(), Flush::End, &mut out)?;
        self.counters.add(&out.delta);
        Ok(out)
    }

    /// The partition has had no input for `idle_for` (at least the idle timeout): operators
    /// that follow event time may advance it ([`Operator::on_idle`]).
    pub fn idle(&mut self, idle_for: Duration) -> Result<TaskOutput> {
        let mut out = TaskOutput::default();
        let empty = RawBatch::new(self.topic.clone(), self.partition, Vec::new());
        self.run_chain(&empty, Vec::new(), Flush::Idle(idle_for), &mut out)?;
        self.counters.add(&out.delta);
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
        self.epoch += 1;
        Ok(Checkpoint {
            pipeline: self.pipeline.to_string(),
            topic: self.topic.clone(),
            partition: self.partition,
            epoch: self.epoch,
            next_offset: self.next_offset,
            counters: self.counters,
            operators,
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
        mut input: Vec<RecordBatch>,
        flush: Flush,
        out: &mut TaskOutput,
    ) -> Result<()> {
        let mut events = true; // rows are still events, not results of a stateful operator
        let mut absorbed_any = false;
        for i in 0..self.operators.len() {
            let mut emit = Emit::default();
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
            let rejects = emit.take_rejects();
            let stage = Stage::Operator(self.operators[i].name().to_string());
            if events {
                self.dead_letter(raw, stage, rejects, out);
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
            input = emit.take_batches();
        }
        let rows: u64 = input.iter().map(|b| b.num_rows() as u64).sum();
        if !absorbed_any {
            out.delta.aggregated += rows;
        }
        out.delta.rows_out += rows;
        out.batches = input;
        Ok(())
    }

    fn dead_letter(
        &self,
        raw: &RawBatch,
        stage: Stage,
        rejects: Vec<RowReject>,
        out: &mut TaskOutput,
    ) {
        if rejects.is_empty() {
            return;
        }
        out.delta.dlq += rejects.len() as u64;
        for r in rejects {
            out.dead_letters.push(DeadLetter::of_message(
                &self.pipeline,
                raw,
                r.offset,
                r.kind,
                r.message,
                stage.clone(),
            ));
        }
    }
}
