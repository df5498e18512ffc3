//! The global stage of a two-phase aggregation: one instance per worker, on the sink stage,
//! merging the partial results that every partition task sends.
//!
//! A window whose groups span partitions (GROUP BY region over a topic keyed by sensor) is
//! computed in two phases. Each partition task aggregates its own events into partial
//! states and, when its own watermark closes a window, sends that window's partial state on
//! with its watermark. The global stage keeps the partials per window and per partition, and
//! emits a window once the *minimum* watermark over all partitions has passed it: every
//! partition has then sent its part, so the merged row is final.
//!
//! Checkpoints stay per partition, with no barrier alignment. A partition keeps the partials
//! it sent in its own checkpoint until the global stage's output of that window is durable;
//! the global stage checkpoints only its *frontier* (the watermark up to which it emitted)
//! in its own lane, [`Lane::Global`], by the same epoch protocol as a partition, so its rows
//! and its frontier become durable together. After a restart each partition re-sends the
//! partials it still keeps, the frontier tells which windows were already emitted, and the
//! replayed input rebuilds the rest: the output equals an uninterrupted run's.

use crate::arrow::record_batch::RecordBatch;
use crate::checkpoint::OperatorState;
use crate::error::Result;
use crate::lane::Lane;
use crate::operator::Emit;

/// The partition number under which checkpoint stores (keyed by topic and partition) keep the
/// checkpoint of [`Lane::Global`], with [`GLOBAL_TOPIC`]; only [`Lane::checkpoint_key`] uses
/// it. Sinks and the DLQ see the global lane itself.
pub const GLOBAL_PARTITION: i32 = i32::MAX;

/// The topic name under which checkpoint stores keep the global stage's checkpoint.
pub const GLOBAL_TOPIC: &str = "__weir_global";

/// The second phase of an aggregation whose groups span partitions. See the module docs.
pub trait GlobalStage: Send {
    fn name(&self) -> &str;

    /// The lanes (source partitions) whose partials this stage merges: it emits nothing
    /// before each of them reported a watermark. Called once, after [`GlobalStage::restore`],
    /// before any input.
    fn start(&mut self, lanes: &[Lane]);

    /// Partial rows a lane's task sent (the output of its last operator), then its watermark
    /// after them, if it reported one (`i64::MAX` once its input ended). Final rows of the
    /// windows this closed go to `emit`.
    fn absorb(
        &mut self,
        lane: &Lane,
        partials: Vec<RecordBatch>,
        watermark: Option<i64>,
        emit: &mut Emit,
    ) -> Result<()>;

    /// State of the global checkpoint: everything emitted so far is covered by it.
    fn snapshot(&mut self) -> Result<OperatorState>;

    fn restore(&mut self, state: OperatorState) -> Result<()>;

    /// The checkpoint of the last [`GlobalStage::snapshot`] is stored and the rows emitted
    /// before it are committed: partitions may now forget the partials it covers.
    fn committed(&mut self);
}
