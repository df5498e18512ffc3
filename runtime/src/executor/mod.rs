//! The executor: readers, partition tasks on a fixed CPU pool, and the sink stage, joined by
//! bounded channels.
//!
//! ```text
//! reader thread (p) --bounded--> CPU worker (owns tasks p, q, ...) --bounded--> sink stage
//! ```
//! - one reader thread per partition does the (blocking) I/O of reading;
//! - `cpu_threads` workers each own a set of partition tasks (a task never moves while its
//!   partition is owned, so no `Mutex` on the hot path): decode and operators run there;
//! - the sink stage (the calling thread) writes outputs and dead letters, runs the epoch
//!   protocol of [`crate::sink`] for each checkpoint a task sends, and follows the source's
//!   assignment: it starts the partitions it is given and stops the ones taken away.
//!
//! The set of partitions is fixed ([`Source::partitions`]) or follows a consumer group
//! ([`Source::assignments`]). A partition is started by restoring its checkpoint (without one:
//! at the source's start, [`Source::upstream`]), recovering the sinks' staged epochs, opening
//! its reader and handing its task to the least loaded worker; the run logs where it resumed.
//! It is stopped (revoked, shutdown, or end of input) by stopping its reader: the worker
//! drains what was read, stores a last checkpoint, and the sink stage commits it and
//! acknowledges it to the source before the partition is reported as released. A checkpoint
//! is acknowledged only when its next offset is above what upstream has and above where the
//! partition started, so upstream never moves backwards. When the run stops, the last
//! checkpoints are acknowledged together at the end ([`Source::acknowledge_all`], bounded by
//! the source); if that fails the run still succeeds and warns that upstream lags.
//!
//! A partition is started under a claim on its lane ([`CheckpointStore::claim`], before its
//! checkpoint is loaded), and its checkpoints carry that generation. When the store refuses
//! one because a newer owner claimed the lane since (this worker's drain of a revoked
//! partition outlasted the group's wait), or a transactional sink refuses its commit as
//! fenced ([`crate::ErrorClass::Fenced`]), the partition is dropped like one revoked as lost:
//! its staged epoch is not committed, nothing is acknowledged, its later output and
//! checkpoints are discarded, and the worker goes on with its other partitions.
//!
//! When a sink is slow the channels fill, workers block on send, readers block on send and
//! pause their partition ([`PartitionReader::set_paused`]): the source stops fetching
//! (backpressure). On shutdown readers stop, workers drain what was read, checkpoint every
//! partition, and the sink stage commits those checkpoints before returning.

mod assignment;
mod reader;
mod sink_stage;
mod worker;

pub use sink_stage::sink_rejects;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, unbounded, Receiver, RecvTimeoutError, Select, SendTimeoutError, Sender,
};
use tracing::{debug, info, warn};

use crate::arrow::record_batch::RecordBatch;
use crate::batch::RawBatch;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::dlq::{DeadLetter, DlqWriter, ErrorKind, Stage};
use crate::error::{ErrorClass, Result, WeirError};
use crate::events;
use crate::global::GlobalStage;
use crate::lane::Lane;
use crate::metrics::{now_ms, Counters, Metrics, PartitionMetrics, RunState};
use crate::operator::Emit;
use crate::retry::{retry, RetryBudget};
use crate::shutdown::Shutdown;
use crate::sink::{LaneClaim, SinkWriter};
use crate::source::{Assignment, PartitionReader, ReadResult, ResumeFrom, Source, TopicPartition};
use crate::task::{PartitionTask, TaskOutput};

use reader::{spawn_reader, ReaderMsg};
use worker::run_worker;

/// Settings of the executor (the `[batch]`, `[checkpoint]` and worker sections of a pipeline).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub pipeline: Arc<str>,
    /// Size of the CPU pool that runs decode and operators.
    pub cpu_threads: usize,
    /// Capacity, in batches, of each channel between stages.
    pub channel_capacity: usize,
    pub max_rows: usize,
    pub linger: Duration,
    pub checkpoint_interval: Duration,
    /// A partition with no input for this long is idle: its operators may advance event
    /// time ([`crate::Operator::on_idle`]), so it does not hold back a two-phase aggregation.
    pub idle_timeout: Duration,
    /// How long the sink stage retries a step that fails with a transient error
    /// ([`crate::retry`]).
    pub retry: RetryBudget,
}

impl ExecutorConfig {
    pub fn new(pipeline: &str) -> Self {
        Self {
            pipeline: pipeline.into(),
            cpu_threads: thread::available_parallelism().map_or(1, |n| n.get()),
            channel_capacity: 4,
            max_rows: 8192,
            linger: Duration::from_millis(100),
            checkpoint_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            retry: RetryBudget::default(),
        }
    }
}

/// Builds the partition task of one partition.
pub type TaskFactory = Box<dyn Fn(&Arc<str>, i32) -> Result<PartitionTask> + Send + Sync>;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Accounting of this run.
    pub counters: Counters,
    /// Accounting since each partition was first processed (from the checkpoints).
    pub lifetime: Counters,
    pub elapsed: Duration,
    pub checkpoints: u64,
    pub partitions: usize,
    /// Every partition reached the end of a bounded input.
    pub finished: bool,
    /// Values of the declared partition key seen in more than one partition of a topic
    /// (filled in by the pipeline that checks them; 0 when nothing checks).
    pub misplaced_keys: u64,
    /// The last checkpoints of the stop that upstream did not acknowledge within the source's
    /// bound (a Kafka group commit with the broker down): (partition, checkpoint's next
    /// offset). The checkpoints are stored and the next run resumes from them; only the
    /// group's committed offsets lag.
    pub unacknowledged: Vec<(TopicPartition, i64)>,
}

enum SinkMsg {
    Output(Lane, TaskOutput),
    Barrier(Checkpoint),
    /// The partition's task is done and its last checkpoint was sent before this.
    Finished {
        topic: Arc<str>,
        partition: i32,
        ended: bool,
        lifetime: Counters,
    },
    Failed(WeirError),
}

/// A partition task, the channel its reader feeds and the lane's and run's stops, handed to
/// a CPU worker.
type NewLane = (PartitionTask, Receiver<ReaderMsg>, [Shutdown; 2]);

/// A partition being read.
struct Owned {
    /// Stops this partition's reader only (revocation).
    stop: Shutdown,
    reader: JoinHandle<Result<()>>,
    worker: usize,
    revoking: bool,
    /// Revoked as lost, or fenced: its output and checkpoints are no longer stored.
    lost: bool,
    /// A newer owner claimed it ([`Executor::fence`]).
    fenced: bool,
    /// Only a checkpoint whose next offset is above this is acknowledged upstream: the
    /// offset upstream already has, or where a partition without a checkpoint started. So
    /// an acknowledgement never moves backwards, and a partition that read nothing makes
    /// none.
    floor: i64,
}

/// A revocation waiting for its partitions to be released.
struct PendingRevoke {
    remaining: HashSet<TopicPartition>,
    done: Sender<()>,
}

/// Bookkeeping of the sink stage while the executor runs.
struct Running {
    workers: Vec<Sender<NewLane>>,
    load: Vec<usize>,
    owned: HashMap<TopicPartition, Owned>,
    revokes: Vec<PendingRevoke>,
    /// Latest lifetime accounting of every partition owned during this run.
    lifetime: HashMap<TopicPartition, Counters>,
    all_ended: bool,
    /// Acknowledgements of checkpoints stored while the run stops, made together at the end
    /// ([`Source::acknowledge_all`]): the latest next offset of each partition.
    final_acks: BTreeMap<TopicPartition, i64>,
    /// What upstream acknowledged of each partition, as far as this run knows.
    upstream_at: HashMap<TopicPartition, Option<i64>>,
}

pub struct Executor {
    config: ExecutorConfig,
    source: Box<dyn Source>,
    tasks: TaskFactory,
    sinks: Vec<Box<dyn SinkWriter>>,
    dlq: Box<dyn DlqWriter>,
    store: Arc<dyn CheckpointStore>,
    metrics: Arc<Metrics>,
    /// The live values of each partition being read (the sink stage's handles).
    lane_metrics: HashMap<Lane, Arc<PartitionMetrics>>,
    global: Option<Global>,
}

/// The global stage of a two-phase aggregation and its checkpoint bookkeeping.
struct Global {
    stage: Box<dyn GlobalStage>,
    epoch: u64,
    /// The claim on the global lane's checkpoints.
    generation: u64,
    /// Rows were emitted since the last global checkpoint.
    dirty: bool,
}

impl Executor {
    pub fn new(
        config: ExecutorConfig,
        source: Box<dyn Source>,
        tasks: TaskFactory,
        sinks: Vec<Box<dyn SinkWriter>>,
        dlq: Box<dyn DlqWriter>,
        store: Arc<dyn CheckpointStore>,
    ) -> Self {
        Self {
            config,
            source,
            tasks,
            sinks,
            dlq,
            store,
            metrics: Arc::new(Metrics::default()),
            lane_metrics: HashMap::new(),
            global: None,
        }
    }

    /// Count into `metrics` (shared with a metrics endpoint started before the run) instead
    /// of a fresh set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Merge the partitions' partial results in `stage` (a two-phase aggregation, see
    /// [`crate::global`]): the tasks' output goes to it, and its output to the sinks.
    /// Needs a fixed set of partitions (every partition in this worker).
    pub fn with_global(mut self, stage: Box<dyn GlobalStage>) -> Self {
        self.global = Some(Global {
            stage,
            epoch: 0,
            generation: 0,
            dirty: false,
        });
        self
    }

    /// Live counters of this run, for a progress display.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Run until every partition ends (a fixed, bounded input) or `shutdown` is triggered,
    /// then drain and checkpoint. With a consumer group, run until `shutdown`.
    pub fn run(mut self, shutdown: Shutdown) -> Result<RunSummary> {
        let started = Instant::now();
        self.metrics
            .set_sinks(self.sinks.iter().map(|s| s.name().to_string()));
        let result = self.run_inner(shutdown, started);
        self.metrics.set_state(match result {
            Ok(_) => RunState::Stopped,
            Err(_) => RunState::Failing,
        });
        self.metrics.set_state(RunState::Stopped);
        result
    }

    fn run_inner(&mut self, shutdown: Shutdown, started: Instant) -> Result<RunSummary> {
        let assignments = self.source.assignments()?;
        let fixed = match assignments {
            Some(_) => None,
            None => Some(self.source.partitions()?),
        };
        // Before any recovery: how sinks place output staged by an older weir (sink.rs).
        let topics = self.source.partitioning().source_topics();
        for sink in &mut self.sinks {
            sink.source_topics(&topics);
        }
        self.dlq.source_topics(&topics);
        if let Some(g) = &self.global {
            let Some(parts) = &fixed else {
                return Err(WeirError::Config(format!(
                    "{}: an aggregation whose groups span partitions needs every partition in \
                     this worker, and source `{}` follows a consumer group; read it with a fixed \
                     assignment (kafka: assignment = \"manual\") or group by the partition key",
                    g.stage.name(),
                    self.source.name()
                )));
            };
            let lanes: Vec<Lane> = parts.iter().map(Lane::of).collect();
            self.restore_global(&lanes, &shutdown)?;
        }
        let cpu_threads = match &fixed {
            Some(parts) => self.config.cpu_threads.max(1).min(parts.len().max(1)),
            None => self.config.cpu_threads.max(1),
        };

        let (sink_tx, sink_rx) =
            bounded::<SinkMsg>(self.config.channel_capacity.max(1) * cpu_threads);
        let mut running = Running {
            workers: Vec::new(),
            load: vec![0; cpu_threads],
            owned: HashMap::new(),
            revokes: Vec::new(),
            lifetime: HashMap::new(),
            all_ended: true,
            final_acks: BTreeMap::new(),
            upstream_at: HashMap::new(),
        };
        let mut worker_handles = Vec::new();
        for n in 0..cpu_threads {
            let (ctl_tx, ctl_rx) = unbounded::<NewLane>();
            let tx = sink_tx.clone();
            let timing = (self.config.checkpoint_interval, self.config.idle_timeout);
            let metrics = self.metrics.clone();
            let handle = thread::Builder::new()
                .name(format!("weir-cpu-{n}"))
                .spawn(move || run_worker(ctl_rx, tx, timing, metrics))
                .map_err(|e| WeirError::Internal(format!("spawn worker: {e}")))?;
            running.workers.push(ctl_tx);
            worker_handles.push(handle);
        }
        drop(sink_tx);

        let mut result = Ok(());
        if let Some(parts) = &fixed {
            // Restore every partition before any reading starts.
            for tp in parts {
                if let Err(e) = self.start_partition(tp, &mut running, &shutdown) {
                    // A worker that is gone failed on a partition started before this one:
                    // its error, waiting on the sink channel, is the cause to report.
                    let failed = sink_rx.try_iter().find_map(|m| match m {
                        SinkMsg::Failed(cause) => Some(cause),
                        _ => None,
                    });
                    result = Err(failed.unwrap_or(e));
                    break;
                }
            }
        }
        if result.is_ok() {
            self.metrics.set_state(RunState::Running);
            result = self.run_sink_stage(&sink_rx, assignments.as_ref(), &shutdown, &mut running);
        }
        if result.is_ok() {
            result = self.checkpoint_global(&shutdown);
        }
        let unacknowledged = self.acknowledge_final(&mut running);
        if result.is_err() {
            self.metrics.set_state(RunState::Failing);
            shutdown.trigger();
        }
        // No more partitions: workers return once their lanes are drained.
        running.workers.clear();
        if result.is_err() {
            // Let blocked workers and readers finish; their output is discarded.
            while sink_rx.recv().is_ok() {}
        }
        for w in worker_handles {
            let _ = w.join();
        }
        for (tp, owned) in running.owned.drain() {
            match owned.reader.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(_) => {
                    warn!(topic = %tp.0, partition = tp.1, "a reader thread panicked");
                    if result.is_ok() {
                        result = Err(WeirError::Internal("a reader thread panicked".into()));
                    }
                }
            }
        }
        result?;
        let mut lifetime = Counters::default();
        for l in running.lifetime.values() {
            lifetime.add(l);
        }
        Ok(RunSummary {
            counters: self.metrics.snapshot(),
            lifetime,
            elapsed: started.elapsed(),
            checkpoints: self.metrics.checkpoints(),
            partitions: running.lifetime.len(),
            finished: fixed.is_some() && running.all_ended,
            misplaced_keys: 0,
            unacknowledged,
        })
    }
}
