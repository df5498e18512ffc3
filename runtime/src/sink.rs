//! Sinks, and the epoch protocol that every durable output (sinks, the DLQ) follows.
//!
//! Output is keyed by its [`Lane`]: one (topic, partition) of the source, or the global
//! stage. For a lane `l`, a checkpoint of epoch `e` is stored like this:
//! 1. `prepare(l, e)` on every participant: all output of `l` up to now is durable
//!    (flushed, fsynced, or staged under a temporary name);
//! 2. the checkpoint (next offset + operator state) is stored atomically;
//! 3. `commit(l, e)` on every participant: staged output becomes visible.
//!
//! On start, `recover(l, committed)` receives the epoch of the stored checkpoint: staged output
//! of that epoch or older is committed (step 3 was interrupted), newer staged output is
//! discarded (its input will be replayed from the checkpoint's offset).
//!
//! Before `recover`, every participant is told the lane's [`LaneClaim`]: the generation this
//! worker owns the lane under ([`crate::CheckpointStore::claim`]) and the generation that
//! wrote the stored checkpoint. Output staged under a name (file sinks) is named by the
//! generation, so a worker that is still draining a lane a newer owner took over never
//! touches the new owner's staged output, and `recover` settles only what the stored
//! checkpoint's generation staged.
//!
//! Lanes were once keyed by the partition number alone. Before any `recover`, the executor
//! tells every participant how many topics the source reads ([`SourceTopics`]): output an
//! older weir staged under a partition number belongs to that partition's lane when the
//! source reads one topic, and is refused (naming it) when it reads several.
//!
//! # Deletes
//!
//! A sink batch is a change stream keyed by the sink's key columns. It may carry a Boolean
//! [`DELETED_COLUMN`]: a row whose value is `true` deletes the row with that key from the read
//! model (only its key columns matter); `false` or null is an upsert. A batch without the
//! column holds upserts only. Within a batch the last row of a key wins, as if the rows were
//! applied in order. Keyed sinks (PostgreSQL, SQLite) delete by key in the same transaction
//! as their upserts; log sinks (JSONL, Parquet) keep the flag on the row so a reader can
//! replay the changes. No sink writes the column into a table.

use crate::arrow::record_batch::RecordBatch;
use crate::error::Result;
use crate::lane::Lane;

/// Name of the optional Boolean column that marks a sink row as a delete of its key (see
/// the module docs). Projections emit it ([`Operator`](crate::Operator)s that never delete
/// leave it out).
pub const DELETED_COLUMN: &str = "__deleted";

/// The delivery guarantee a sink gives when driven by the epoch protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Output is staged per epoch and published with the checkpoint.
    ExactlyOnce,
    /// Replayed output overwrites itself (upserts by key): effectively once.
    IdempotentUpsert,
    /// Output may be repeated after a crash.
    AtLeastOnce,
}

/// The topics the pipeline's source reads, as far as a participant needs them: to place
/// output that an older weir staged under a partition number alone (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SourceTopics {
    /// One topic: a partition number names one lane.
    #[default]
    One,
    /// Several topics (listed): a partition number alone names one lane of each.
    Several(Vec<String>),
}

/// Who owns a lane, given to participants before its `recover` (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneClaim {
    /// This worker's generation on the lane.
    pub generation: u64,
    /// The generation of the lane's stored checkpoint (0: none, or one from before fencing).
    pub committed_generation: u64,
}

/// A component that takes part in checkpoints. See the module docs for the protocol.
pub trait EpochParticipant: Send {
    /// Called once, before any [`EpochParticipant::recover`].
    fn source_topics(&mut self, _topics: &SourceTopics) {}
    /// The executor claimed `lane`; called before its [`EpochParticipant::recover`].
    fn claimed(&mut self, _lane: &Lane, _claim: LaneClaim) {}
    fn recover(&mut self, _lane: &Lane, _committed_epoch: Option<u64>) -> Result<()> {
        Ok(())
    }
    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()>;
    fn commit(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        Ok(())
    }
}

/// What a sink did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub accepted: usize,
    /// Rows refused permanently: (row index in the batch, reason). They go to the DLQ.
    pub rejected: Vec<(usize, String)>,
}

pub trait SinkWriter: EpochParticipant {
    fn name(&self) -> &str;
    fn guarantee(&self) -> Guarantee;
    /// Write the output rows of `lane`.
    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome>;
}

/// Discards rows (benchmarks, dry runs).
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    pub rows: u64,
}

impl EpochParticipant for NullSink {
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        Ok(())
    }
}

impl SinkWriter for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn write(&mut self, _lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        self.rows += batch.num_rows() as u64;
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}
