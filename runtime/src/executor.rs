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
//! When a sink is slow the channels fill, workers block on send, readers block on send and
//! pause their partition ([`PartitionReader::set_paused`]): the source stops fetching
//! (backpressure). On shutdown readers stop, workers drain what was read, checkpoint every
//! partition, and the sink stage commits those checkpoints before returning.

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
use crate::error::{Result, WeirError};
use crate::global::GlobalStage;
use crate::lane::Lane;
use crate::metrics::{Counters, Metrics};
use crate::operator::Emit;
use crate::retry::{retry, RetryBudget};
use crate::shutdown::Shutdown;
use crate::sink::SinkWriter;
use crate::source::{Assignment, PartitionReader, ReadResult, ResumeFrom, Source, TopicPartition};
use crate::task::{PartitionTask, TaskOutput};

/// How often an idle partition's task is told it is idle.
const IDLE_EVERY: Duration = Duration::from_millis(100);

/// A reader blocked this long on a full channel pauses its partition.
const PAUSE_AFTER: Duration = Duration::from_millis(100);

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

enum ReaderMsg {
    Batch(RawBatch),
    End,
    /// The reader found nothing to read (its source said so): the partition may be idle.
    /// Sent once per stretch without input; a reader that is merely slow never sends it.
    CaughtUp,
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

/// A partition task and the channel its reader feeds, handed to a CPU worker.
type NewLane = (PartitionTask, Receiver<ReaderMsg>);

/// A partition being read.
struct Owned {
    /// Stops this partition's reader only (revocation).
    stop: Shutdown,
    reader: JoinHandle<Result<()>>,
    worker: usize,
    revoking: bool,
    /// Revoked as lost: its last checkpoints are not stored.
    lost: bool,
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
    global: Option<Global>,
}

/// The global stage of a two-phase aggregation and its checkpoint bookkeeping.
struct Global {
    stage: Box<dyn GlobalStage>,
    epoch: u64,
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
            global: None,
        }
    }

    /// Merge the partitions' partial results in `stage` (a two-phase aggregation, see
    /// [`crate::global`]): the tasks' output goes to it, and its output to the sinks.
    /// Needs a fixed set of partitions (every partition in this worker).
    pub fn with_global(mut self, stage: Box<dyn GlobalStage>) -> Self {
        self.global = Some(Global {
            stage,
            epoch: 0,
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
            self.restore_global(&lanes)?;
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
            let handle = thread::Builder::new()
                .name(format!("weir-cpu-{n}"))
                .spawn(move || run_worker(ctl_rx, tx, timing))
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
            result = self.run_sink_stage(&sink_rx, assignments.as_ref(), &shutdown, &mut running);
        }
        if result.is_ok() {
            result = self.checkpoint_global(&shutdown);
        }
        let unacknowledged = self.acknowledge_final(&mut running);
        if result.is_err() {
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

    /// Acknowledge the checkpoints stored while stopping, together, within the source's bound.
    /// When that fails the run still succeeds (the checkpoints are the truth) and a warning
    /// names what lags; the lagging partitions are returned.
    fn acknowledge_final(&mut self, running: &mut Running) -> Vec<(TopicPartition, i64)> {
        let offsets: Vec<(TopicPartition, i64)> = std::mem::take(&mut running.final_acks)
            .into_iter()
            .collect();
        if offsets.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        match self.source.acknowledge_all(&offsets) {
            Ok(()) => {
                debug!(
                    partitions = offsets.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "last checkpoints acknowledged"
                );
                Vec::new()
            }
            Err(err) => {
                self.metrics.acknowledge_failed();
                let lagging: Vec<String> = offsets
                    .iter()
                    .map(|(tp, next)| {
                        let at = match running.upstream_at.get(tp).copied().flatten() {
                            Some(n) => format!("committed {n}"),
                            None => "nothing committed".to_string(),
                        };
                        format!("{}/{} checkpoint at {next} ({at})", tp.0, tp.1)
                    })
                    .collect();
                warn!(
                    "the group's committed offsets lag the checkpoints: {}; the checkpoints are \
                     stored and the next run resumes from them ({err})",
                    lagging.join(", ")
                );
                offsets
            }
        }
    }

    /// Restore a partition from its checkpoint, recover the sinks' staged epochs of it, open
    /// its reader and hand its task to the least loaded worker.
    fn start_partition(
        &mut self,
        tp: &TopicPartition,
        running: &mut Running,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let (topic, partition) = (&tp.0, tp.1);
        let mut task = (self.tasks)(topic, partition)?;
        let checkpoint = self.store.load(topic, partition)?;
        let committed = checkpoint.as_ref().map(|c| c.epoch);
        let lane = Lane::of(tp);
        self.dlq.recover(&lane, committed)?;
        for sink in &mut self.sinks {
            sink.recover(&lane, committed)?;
        }
        let upstream = self.source.upstream(topic, partition)?;
        let resume = match checkpoint {
            Some(c) => {
                let (epoch, offset) = (c.epoch, c.next_offset);
                task.restore(c)?;
                if offset == 0 && upstream.initial.offset() > 0 {
                    // A checkpoint at 0 has processed nothing (an older weir wrote one for a
                    // partition that read nothing): the source's start is where it would be.
                    info!(topic = %topic, partition, epoch, "the checkpoint holds offset 0 (it read nothing): the source's start applies");
                    task.set_next_offset(upstream.initial.offset());
                    ResumeFrom::Source(upstream.initial)
                } else {
                    ResumeFrom::Checkpoint { epoch, offset }
                }
            }
            None if task.start_given() => ResumeFrom::Requested(task.next_offset()),
            None => {
                task.set_next_offset(upstream.initial.offset());
                ResumeFrom::Source(upstream.initial)
            }
        };
        info!("resuming topic {topic} partition {partition} from {resume}");
        let acknowledged = upstream.acknowledged.unwrap_or(-1);
        let floor = match resume {
            ResumeFrom::Checkpoint { .. } => acknowledged,
            other => other.offset().max(acknowledged),
        };
        running
            .upstream_at
            .insert(tp.clone(), upstream.acknowledged);
        let reader = self.source.open(topic, partition, task.next_offset())?;
        let (tx, rx) = bounded(self.config.channel_capacity.max(1));
        let stop = Shutdown::new();
        let handle = spawn_reader(
            reader,
            tx,
            [stop.clone(), shutdown.clone()],
            (self.config.max_rows, self.config.linger),
            self.metrics.clone(),
            partition,
        )?;
        let worker = (0..running.load.len())
            .min_by_key(|w| running.load[*w])
            .unwrap_or(0);
        running.workers[worker]
            .send((task, rx))
            .map_err(|_| WeirError::Internal("a CPU worker is gone".into()))?;
        running.load[worker] += 1;
        running.owned.insert(
            tp.clone(),
            Owned {
                stop,
                reader: handle,
                worker,
                revoking: false,
                lost: false,
                floor,
            },
        );
        self.metrics.partition_started();
        Ok(())
    }

    fn run_sink_stage(
        &mut self,
        rx: &Receiver<SinkMsg>,
        assignments: Option<&Receiver<Assignment>>,
        shutdown: &Shutdown,
        running: &mut Running,
    ) -> Result<()> {
        let follow = assignments.is_some();
        let tick = Duration::from_millis(100);
        loop {
            if running.owned.is_empty() && (!follow || shutdown.is_triggered()) {
                return Ok(());
            }
            let assignment = match assignments {
                Some(changes) if !shutdown.is_triggered() => {
                    let mut sel = Select::new();
                    sel.recv(rx);
                    sel.recv(changes);
                    match sel.select_timeout(tick) {
                        Ok(op) if op.index() == 1 => Some(op.recv(changes).map_err(|_| {
                            WeirError::Internal("the source stopped sending its assignment".into())
                        })?),
                        Ok(op) => {
                            let msg = op.recv(rx).map_err(|_| {
                                WeirError::Internal("a CPU worker stopped without finishing".into())
                            })?;
                            self.on_sink_msg(msg, running, shutdown)?;
                            None
                        }
                        Err(_) => None,
                    }
                }
                _ => {
                    match rx.recv_timeout(tick) {
                        Ok(msg) => self.on_sink_msg(msg, running, shutdown)?,
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            return Err(WeirError::Internal(
                                "a CPU worker stopped without finishing".into(),
                            ))
                        }
                    }
                    // Revocations that arrive while stopping are answered once released.
                    match assignments.map(|c| c.try_recv()) {
                        Some(Ok(a)) => Some(a),
                        _ => None,
                    }
                }
            };
            if let Some(a) = assignment {
                self.on_assignment(a, running, shutdown)?;
            }
        }
    }

    fn on_assignment(
        &mut self,
        assignment: Assignment,
        running: &mut Running,
        shutdown: &Shutdown,
    ) -> Result<()> {
        match assignment {
            Assignment::Assigned { partitions, done } => {
                let mut opened = Vec::new();
                if !shutdown.is_triggered() {
                    for tp in partitions {
                        if running.owned.contains_key(&tp) {
                            warn!(topic = %tp.0, partition = tp.1, "assigned a partition this worker already reads");
                            continue;
                        }
                        self.start_partition(&tp, running, shutdown)?;
                        info!(topic = %tp.0, partition = tp.1, "partition assigned");
                        opened.push(tp);
                    }
                }
                let _ = done.send(opened);
            }
            Assignment::Revoked {
                partitions,
                lost,
                done,
            } => {
                let mut remaining = HashSet::new();
                for tp in partitions {
                    if let Some(owned) = running.owned.get_mut(&tp) {
                        if lost {
                            warn!(topic = %tp.0, partition = tp.1, "partition lost to another worker: stopping without a checkpoint");
                        } else {
                            info!(topic = %tp.0, partition = tp.1, "partition revoked: draining");
                        }
                        owned.stop.trigger();
                        owned.revoking = true;
                        owned.lost = lost;
                        remaining.insert(tp);
                    }
                }
                if remaining.is_empty() {
                    let _ = done.send(());
                } else {
                    running.revokes.push(PendingRevoke { remaining, done });
                }
            }
            Assignment::Failed(e) => return Err(e),
        }
        Ok(())
    }

    fn on_sink_msg(
        &mut self,
        msg: SinkMsg,
        running: &mut Running,
        shutdown: &Shutdown,
    ) -> Result<()> {
        match msg {
            SinkMsg::Output(lane, out) => self.write_output(lane, out, shutdown),
            SinkMsg::Barrier(checkpoint) => {
                let tp = (checkpoint.topic.clone(), checkpoint.partition);
                if running.owned.get(&tp).is_some_and(|o| o.lost) {
                    debug!(topic = %tp.0, partition = tp.1, epoch = checkpoint.epoch, "checkpoint of a lost partition dropped");
                    return Ok(());
                }
                self.commit_checkpoint(&checkpoint, shutdown)?;
                if let Some(owned) = running.owned.get_mut(&tp) {
                    let next = checkpoint.next_offset;
                    if next > owned.floor {
                        if shutdown.is_triggered() && !owned.revoking {
                            // Stopping: acknowledged with every partition's last one, under one
                            // bound, once all are stored.
                            running.final_acks.insert(tp, next);
                        } else {
                            // The next owner of a revoked partition starts at the group's offset.
                            running.final_acks.remove(&tp);
                            if self.acknowledge(&tp, next) {
                                owned.floor = next;
                                running.upstream_at.insert(tp, Some(next));
                            }
                        }
                    }
                }
                // The global stage's rows become durable at the pace of the partitions'.
                self.checkpoint_global(shutdown)
            }
            SinkMsg::Finished {
                topic,
                partition,
                ended,
                lifetime,
            } => {
                let tp = (topic, partition);
                debug!(topic = %tp.0, partition, ended, "partition finished");
                running.lifetime.insert(tp.clone(), lifetime);
                running.all_ended &= ended;
                if let Some(owned) = running.owned.remove(&tp) {
                    running.load[owned.worker] = running.load[owned.worker].saturating_sub(1);
                    self.metrics.partition_stopped(owned.revoking);
                    // The worker saw the reader's channel close or its end: it has returned.
                    match owned.reader.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {
                            return Err(WeirError::Internal(format!(
                                "the reader of {}/{partition} panicked",
                                tp.0
                            )))
                        }
                    }
                }
                running.revokes.retain_mut(|r| {
                    r.remaining.remove(&tp);
                    if r.remaining.is_empty() {
                        let _ = r.done.send(());
                        false
                    } else {
                        true
                    }
                });
                Ok(())
            }
            SinkMsg::Failed(e) => Err(e),
        }
    }

    fn write_output(&mut self, lane: Lane, mut out: TaskOutput, shutdown: &Shutdown) -> Result<()> {
        let letters = std::mem::take(&mut out.dead_letters);
        // With a global stage the tasks' rows are partials: it merges them, and writes the
        // final rows of the windows they close in the global lane.
        let (out_lane, batches) = match &mut self.global {
            Some(g) => {
                let mut emit = Emit::default();
                g.stage.absorb(
                    &lane,
                    std::mem::take(&mut out.batches),
                    out.watermark,
                    &mut emit,
                )?;
                let batches = emit.take_batches();
                out.delta.rows_out = batches.iter().map(|b| b.num_rows() as u64).sum();
                g.dirty |= !batches.is_empty();
                (Lane::Global, batches)
            }
            None => (lane.clone(), std::mem::take(&mut out.batches)),
        };
        let mut rejects = Vec::new();
        for batch in &batches {
            for sink in &mut self.sinks {
                let outcome = retry(
                    &self.config.retry,
                    shutdown,
                    sink.name().to_string(),
                    || sink.write(&out_lane, batch),
                )?;
                if !outcome.rejected.is_empty() {
                    rejects.extend(sink_rejects(
                        &self.config.pipeline,
                        sink.name(),
                        &out_lane,
                        batch,
                        &outcome.rejected,
                        out.source.as_deref(),
                    ));
                }
            }
        }
        // The task's dead letters belong to its lane; rows a sink refused, to the lane of the
        // rows (the global stage's are its output too).
        let mut per_lane = vec![(lane, letters)];
        match per_lane.iter_mut().find(|(l, _)| *l == out_lane) {
            Some((_, letters)) => letters.extend(rejects),
            None => {
                if let Some(g) = &mut self.global {
                    g.dirty |= !rejects.is_empty();
                }
                per_lane.push((out_lane, rejects));
            }
        }
        for (lane, letters) in per_lane.iter().filter(|(_, l)| !l.is_empty()) {
            let dlq = &mut self.dlq;
            retry(&self.config.retry, shutdown, "dlq".into(), || {
                dlq.write(lane, letters)
            })?;
        }
        self.metrics.add(&out.delta);
        Ok(())
    }

    /// Restore the global stage from its checkpoint and recover the sinks' staged epochs of
    /// its output, before any partition starts.
    fn restore_global(&mut self, lanes: &[Lane]) -> Result<()> {
        let Some(g) = &mut self.global else {
            return Ok(());
        };
        let (topic, partition) = Lane::Global.checkpoint_key();
        let checkpoint = self.store.load(topic, partition)?;
        let committed = checkpoint.as_ref().map(|c| c.epoch);
        self.dlq.recover(&Lane::Global, committed)?;
        for sink in &mut self.sinks {
            sink.recover(&Lane::Global, committed)?;
        }
        if let Some(mut c) = checkpoint {
            g.epoch = c.epoch;
            // A `weir reset` marker keeps only the epoch.
            if !c.reset {
                info!(epoch = c.epoch, "restored the global stage's checkpoint");
                let state = c.operators.pop().unwrap_or_default();
                g.stage.restore(state)?;
                g.stage.committed();
            }
        }
        g.stage.start(lanes);
        Ok(())
    }

    /// Store the global stage's frontier with the rows it emitted (the epoch protocol, under
    /// [`Lane::Global`]), then let partitions forget the partials it covers.
    fn checkpoint_global(&mut self, shutdown: &Shutdown) -> Result<()> {
        let Some(g) = &mut self.global else {
            return Ok(());
        };
        if !g.dirty {
            return Ok(());
        }
        let state = g.stage.snapshot()?;
        g.epoch += 1;
        let (topic, partition) = Lane::Global.checkpoint_key();
        let c = Checkpoint {
            pipeline: self.config.pipeline.to_string(),
            topic: Arc::from(topic),
            partition,
            epoch: g.epoch,
            next_offset: 0,
            counters: Counters::default(),
            operators: vec![state],
            reset: false,
        };
        let (p, e) = (&Lane::Global, g.epoch);
        for sink in &mut self.sinks {
            retry(
                &self.config.retry,
                shutdown,
                sink.name().to_string(),
                || sink.prepare(p, e),
            )?;
        }
        let dlq = &mut self.dlq;
        retry(&self.config.retry, shutdown, "dlq".into(), || {
            dlq.prepare(p, e)
        })?;
        let store = &self.store;
        retry(&self.config.retry, shutdown, "checkpoint".into(), || {
            store.save(&c)
        })?;
        for sink in &mut self.sinks {
            retry(
                &self.config.retry,
                shutdown,
                sink.name().to_string(),
                || sink.commit(p, e),
            )?;
        }
        let dlq = &mut self.dlq;
        retry(&self.config.retry, shutdown, "dlq".into(), || {
            dlq.commit(p, e)
        })?;
        g.stage.committed();
        g.dirty = false;
        debug!(epoch = e, "global checkpoint committed");
        Ok(())
    }

    /// Acknowledge a durable checkpoint upstream. The checkpoint is the truth; an upstream
    /// commit that fails is retried with the next checkpoint and is corrected on restart
    /// (the checkpoint's offset wins). Whether it succeeded.
    fn acknowledge(&mut self, tp: &TopicPartition, next_offset: i64) -> bool {
        match self.source.acknowledge(&tp.0, tp.1, next_offset) {
            Ok(()) => true,
            Err(err) => {
                self.metrics.acknowledge_failed();
                warn!(topic = %tp.0, partition = tp.1, next_offset, error = %err, "source did not acknowledge a durable checkpoint");
                false
            }
        }
    }

    /// The epoch protocol of one checkpoint: sinks and DLQ prepare, the store saves, sinks
    /// and DLQ commit. Acknowledging it upstream is the caller's.
    fn commit_checkpoint(&mut self, c: &Checkpoint, shutdown: &Shutdown) -> Result<()> {
        let started = Instant::now();
        let lane = Lane::new(c.topic.clone(), c.partition);
        let (p, e) = (&lane, c.epoch);
        for sink in &mut self.sinks {
            retry(
                &self.config.retry,
                shutdown,
                sink.name().to_string(),
                || sink.prepare(p, e),
            )?;
        }
        let dlq = &mut self.dlq;
        retry(&self.config.retry, shutdown, "dlq".into(), || {
            dlq.prepare(p, e)
        })?;
        let store = &self.store;
        retry(&self.config.retry, shutdown, "checkpoint".into(), || {
            store.save(c)
        })?;
        for sink in &mut self.sinks {
            retry(
                &self.config.retry,
                shutdown,
                sink.name().to_string(),
                || sink.commit(p, e),
            )?;
        }
        let dlq = &mut self.dlq;
        retry(&self.config.retry, shutdown, "dlq".into(), || {
            dlq.commit(p, e)
        })?;
        self.metrics.checkpoint_stored();
        debug!(
            lane = %p,
            epoch = e,
            next_offset = c.next_offset,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint committed"
        );
        Ok(())
    }
}

/// The reader thread of one partition: reads until its end, an error, or one of `stops`.
/// When downstream stays full it pauses the partition until there is room again.
fn spawn_reader(
    mut reader: Box<dyn PartitionReader>,
    tx: Sender<ReaderMsg>,
    stops: [Shutdown; 2],
    (max_rows, linger): (usize, Duration),
    metrics: Arc<Metrics>,
    partition: i32,
) -> Result<JoinHandle<Result<()>>> {
    thread::Builder::new()
        .name(format!("weir-read-{partition}"))
        .spawn(move || -> Result<()> {
            let stopped = || stops.iter().any(Shutdown::is_triggered);
            let mut caught_up = false;
            while !stopped() {
                let msg = match reader.read(max_rows, linger)? {
                    ReadResult::Batch(b) if b.is_empty() => continue,
                    ReadResult::Batch(b) => {
                        caught_up = false;
                        ReaderMsg::Batch(b)
                    }
                    ReadResult::Idle if caught_up => continue,
                    ReadResult::Idle => {
                        // A full channel means a backlog, which is not idleness: say it
                        // on the next empty read instead.
                        caught_up = tx.try_send(ReaderMsg::CaughtUp).is_ok();
                        continue;
                    }
                    ReadResult::End => ReaderMsg::End,
                };
                let end = matches!(msg, ReaderMsg::End);
                let sent = match tx.send_timeout(msg, PAUSE_AFTER) {
                    Ok(()) => true,
                    Err(SendTimeoutError::Disconnected(_)) => false,
                    Err(SendTimeoutError::Timeout(msg)) => {
                        reader.set_paused(true)?;
                        metrics.reader_paused();
                        let sent = send_until_stopped(&tx, msg, &stopped);
                        reader.set_paused(false)?;
                        sent
                    }
                };
                if !sent || end {
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e| WeirError::Internal(format!("spawn reader: {e}")))
}

/// Keeps the step's messages with its output when its rows still carry their source offset
/// (no stateful operator), so that `sink_rejects` can dead-letter a row's message. The batch
/// is moved, not copied; it lives until the sink stage has written the output.
fn with_source(mut out: TaskOutput, raw: RawBatch) -> TaskOutput {
    if out
        .batches
        .iter()
        .any(|b| b.schema().index_of(crate::OFFSET_COLUMN).is_ok())
    {
        out.source = Some(Arc::new(raw));
    }
    out
}

/// Dead letters for the rows a sink refused for good. A row that carries its source offset
/// (rows of a chain without a stateful operator are source events) gets its message: offset,
/// key and original payload, like a decode reject. A row of a window or projection derives
/// from many messages: it has no offset (-1) and its payload is the row as JSON.
fn sink_rejects(
    pipeline: &Arc<str>,
    sink: &str,
    lane: &Lane,
    batch: &RecordBatch,
    rejected: &[(usize, String)],
    source: Option<&RawBatch>,
) -> Vec<DeadLetter> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let offsets = batch
        .schema()
        .index_of(crate::OFFSET_COLUMN)
        .ok()
        .and_then(|i| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<crate::arrow::array::Int64Array>()
                .cloned()
        });
    // A row merged by the global stage was read from no one partition.
    let partition = lane.partition().unwrap_or(-1);
    rejected
        .iter()
        .map(|(row, reason)| {
            let letter = |topic, offset, key, payload| DeadLetter {
                pipeline: pipeline.clone(),
                topic,
                partition,
                offset,
                key,
                payload,
                kind: ErrorKind::SinkRejected,
                message: reason.clone(),
                stage: Stage::Sink(sink.to_string()),
                attempts: 1,
                time_ms: now,
            };
            let message = offsets
                .as_ref()
                .filter(|o| *row < o.len() && crate::arrow::array::Array::is_valid(*o, *row))
                .and_then(|o| Some((source?, o.value(*row))))
                .and_then(|(raw, offset)| Some((raw, raw.find(offset)?)));
            if let Some((raw, m)) = message {
                return letter(
                    raw.topic.clone(),
                    m.offset,
                    m.key.clone(),
                    m.payload.clone(),
                );
            }
            let row_batch = batch.slice(*row, 1);
            let mut buf = Vec::new();
            let mut w = crate::arrow::json::LineDelimitedWriter::new(&mut buf);
            let payload = w
                .write(&row_batch)
                .and_then(|_| w.finish())
                .ok()
                .map(|_| buf);
            letter(Arc::from(""), -1, None, payload)
        })
        .collect()
}

/// Send, but give up when `stopped` says so (the receiver may be gone or stuck).
fn send_until_stopped<T>(tx: &Sender<T>, mut msg: T, stopped: &dyn Fn() -> bool) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(m)) => {
                if stopped() {
                    return false;
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

struct TaskLane {
    task: PartitionTask,
    rx: Receiver<ReaderMsg>,
    last_checkpoint: Instant,
    /// When the last batch arrived (or the lane started).
    last_input: Instant,
    /// When the task was last told it is idle.
    last_idle: Instant,
    /// Since when the reader has had nothing to read (`None` while it delivers).
    caught_up_since: Option<Instant>,
    dirty: bool,
}

/// A CPU worker: runs the tasks of the partitions it is handed on `ctl` until `ctl` closes
/// and every lane is finished. A lane finishes when its reader ends or stops (revocation,
/// shutdown): the worker drains what was read, sends a last checkpoint and `Finished`.
fn run_worker(
    ctl: Receiver<NewLane>,
    tx: Sender<SinkMsg>,
    (interval, idle_timeout): (Duration, Duration),
) {
    let mut lanes: Vec<TaskLane> = Vec::new();
    let mut ctl_open = true;
    let fail = |tx: &Sender<SinkMsg>, e: WeirError| {
        let _ = tx.send(SinkMsg::Failed(e));
    };
    while ctl_open || !lanes.is_empty() {
        let mut sel = Select::new();
        let first_lane = usize::from(ctl_open);
        if ctl_open {
            sel.recv(&ctl);
        }
        for lane in &lanes {
            sel.recv(&lane.rx);
        }
        let tick = interval.min(idle_timeout).min(Duration::from_millis(200));
        let mut new_lane = None;
        let (idx, msg) = match sel.select_timeout(tick) {
            Ok(op) if ctl_open && op.index() == 0 => {
                match op.recv(&ctl) {
                    Ok(lane) => new_lane = Some(lane),
                    Err(_) => ctl_open = false,
                }
                (usize::MAX, None)
            }
            Ok(op) => {
                let idx = op.index() - first_lane;
                (idx, Some(op.recv(&lanes[idx].rx)))
            }
            Err(_) => (usize::MAX, None),
        };
        if let Some((task, rx)) = new_lane {
            lanes.push(TaskLane {
                task,
                rx,
                last_checkpoint: Instant::now(),
                last_input: Instant::now(),
                last_idle: Instant::now(),
                caught_up_since: None,
                dirty: false,
            });
        }
        if let Some(msg) = msg {
            let lane = &mut lanes[idx];
            let partition = lane.task.partition();
            let output_lane = Lane::new(lane.task.topic().clone(), partition);
            let (out, finished) = match msg {
                Ok(ReaderMsg::CaughtUp) => {
                    lane.caught_up_since.get_or_insert_with(Instant::now);
                    continue;
                }
                Ok(ReaderMsg::Batch(raw)) => {
                    lane.last_input = Instant::now();
                    lane.caught_up_since = None;
                    (lane.task.process(&raw).map(|o| with_source(o, raw)), None)
                }
                Ok(ReaderMsg::End) => (lane.task.end_of_input(), Some(true)),
                // The reader stopped (shutdown, revocation or error) and everything it sent
                // was received: the lane is drained.
                Err(_) => (Ok(TaskOutput::default()), Some(false)),
            };
            match out {
                Ok(out) => {
                    lane.dirty = true;
                    if tx.send(SinkMsg::Output(output_lane, out)).is_err() {
                        return;
                    }
                }
                Err(e) => return fail(&tx, e),
            }
            if let Some(ended) = finished {
                let mut lane = lanes.swap_remove(idx);
                match lane.task.checkpoint() {
                    Ok(c) => {
                        let lifetime = c.counters;
                        let topic = lane.task.topic().clone();
                        if tx.send(SinkMsg::Barrier(c)).is_err()
                            || tx
                                .send(SinkMsg::Finished {
                                    topic,
                                    partition,
                                    ended,
                                    lifetime,
                                })
                                .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => return fail(&tx, e),
                }
                continue;
            }
        }
        for lane in lanes.iter_mut() {
            // Idle means the source had nothing to read for the whole timeout: not a backlog
            // the worker has not reached yet, nor a reader a loaded machine left behind.
            let caught_up_for = lane.caught_up_since.map_or(Duration::ZERO, |t| t.elapsed());
            if lane.last_input.elapsed() >= idle_timeout
                && caught_up_for >= idle_timeout
                && lane.last_idle.elapsed() >= IDLE_EVERY.min(idle_timeout)
                && lane.rx.is_empty()
            {
                lane.last_idle = Instant::now();
                match lane.task.idle(lane.last_input.elapsed()) {
                    Ok(out) if out.batches.is_empty() && out.watermark.is_none() => {}
                    Ok(out) => {
                        lane.dirty = true;
                        let output_lane =
                            Lane::new(lane.task.topic().clone(), lane.task.partition());
                        if tx.send(SinkMsg::Output(output_lane, out)).is_err() {
                            return;
                        }
                    }
                    Err(e) => return fail(&tx, e),
                }
            }
            if lane.dirty && lane.last_checkpoint.elapsed() >= interval {
                match lane.task.checkpoint() {
                    Ok(c) => {
                        if tx.send(SinkMsg::Barrier(c)).is_err() {
                            return;
                        }
                    }
                    Err(e) => return fail(&tx, e),
                }
                lane.dirty = false;
                lane.last_checkpoint = Instant::now();
            }
        }
    }
}
