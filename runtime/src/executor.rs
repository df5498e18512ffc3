//! The executor: readers, partition tasks on a fixed CPU pool, and the sink stage, joined by
//! bounded channels.
//!
//! ```text
//! reader thread (p) --bounded--> CPU worker (owns tasks p, p+n, ...) --bounded--> sink stage
//! ```
//! - one reader thread per partition does the (blocking) I/O of reading;
//! - `cpu_threads` workers each own a fixed set of partition tasks (no task moves, so no
//!   `Mutex` on the hot path): decode and operators run there;
//! - the sink stage (the calling thread) writes outputs and dead letters, and runs the epoch
//!   protocol of [`crate::sink`] for each checkpoint a task sends.
//!
//! When a sink is slow the channels fill, workers block on send, readers block on send: the
//! source stops reading (backpressure). On shutdown readers stop, workers drain what was read,
//! checkpoint every partition, and the sink stage commits those checkpoints before returning.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Select, SendTimeoutError, Sender};
use tracing::{debug, info, warn};

use crate::arrow::record_batch::RecordBatch;
use crate::batch::RawBatch;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::dlq::{DeadLetter, DlqWriter, ErrorKind, Stage};
use crate::error::{ErrorClass, Result, WeirError};
use crate::metrics::{Counters, Metrics};
use crate::shutdown::Shutdown;
use crate::sink::SinkWriter;
use crate::source::{ReadResult, Source};
use crate::task::{PartitionTask, TaskOutput};

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
}

enum ReaderMsg {
    Batch(RawBatch),
    End,
}

enum SinkMsg {
    Output(i32, TaskOutput),
    Barrier(Checkpoint),
    Finished {
        partition: i32,
        ended: bool,
        lifetime: Counters,
    },
    Failed(WeirError),
}

pub struct Executor {
    config: ExecutorConfig,
    source: Box<dyn Source>,
    tasks: TaskFactory,
    sinks: Vec<Box<dyn SinkWriter>>,
    dlq: Box<dyn DlqWriter>,
    store: Arc<dyn CheckpointStore>,
    metrics: Arc<Metrics>,
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
        }
    }

    /// Live counters of this run, for a progress display.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Run until every partition ends or `shutdown` is triggered, then drain and checkpoint.
    pub fn run(mut self, shutdown: Shutdown) -> Result<RunSummary> {
        let started = Instant::now();
        let partitions = self.source.partitions()?;
        let cpu_threads = self.config.cpu_threads.max(1).min(partitions.len().max(1));

        // Restore every partition before any reading starts.
        let mut lanes: Vec<Vec<(PartitionTask, Receiver<ReaderMsg>)>> =
            (0..cpu_threads).map(|_| Vec::new()).collect();
        let mut readers = Vec::new();
        for (i, (topic, partition)) in partitions.iter().enumerate() {
            let mut task = (self.tasks)(topic, *partition)?;
            let checkpoint = self.store.load(topic, *partition)?;
            let committed = checkpoint.as_ref().map(|c| c.epoch);
            self.dlq.recover(*partition, committed)?;
            for sink in &mut self.sinks {
                sink.recover(*partition, committed)?;
            }
            if let Some(c) = checkpoint {
                info!(topic = %topic, partition, epoch = c.epoch, next_offset = c.next_offset, "restored checkpoint");
                task.restore(c)?;
            }
            let mut reader = self.source.open(topic, *partition, task.next_offset())?;
            let (tx, rx) = bounded(self.config.channel_capacity.max(1));
            let stop = shutdown.clone();
            let (max_rows, linger) = (self.config.max_rows, self.config.linger);
            let name = format!("weir-read-{partition}");
            let handle = thread::Builder::new()
                .name(name)
                .spawn(move || -> Result<()> {
                    while !stop.is_triggered() {
                        let msg = match reader.read(max_rows, linger)? {
                            ReadResult::Batch(b) if b.is_empty() => continue,
                            ReadResult::Batch(b) => ReaderMsg::Batch(b),
                            ReadResult::Idle => continue,
                            ReadResult::End => ReaderMsg::End,
                        };
                        let end = matches!(msg, ReaderMsg::End);
                        if !send_until_stopped(&tx, msg, &stop) || end {
                            break;
                        }
                    }
                    Ok(())
                })
                .map_err(|e| WeirError::Internal(format!("spawn reader: {e}")))?;
            readers.push(handle);
            lanes[i % cpu_threads].push((task, rx));
        }

        let (sink_tx, sink_rx) =
            bounded::<SinkMsg>(self.config.channel_capacity.max(1) * cpu_threads);
        let mut workers = Vec::new();
        for (n, lane) in lanes.into_iter().enumerate() {
            let tx = sink_tx.clone();
            let interval = self.config.checkpoint_interval;
            let handle = thread::Builder::new()
                .name(format!("weir-cpu-{n}"))
                .spawn(move || run_worker(lane, tx, interval))
                .map_err(|e| WeirError::Internal(format!("spawn worker: {e}")))?;
            workers.push(handle);
        }
        drop(sink_tx);

        let result = self.run_sink_stage(&sink_rx, &shutdown, partitions.len());
        if result.is_err() {
            shutdown.trigger();
            // Let blocked workers and readers finish; their output is discarded.
            while sink_rx.recv().is_ok() {}
        }
        for w in workers {
            let _ = w.join();
        }
        for r in readers {
            match r.join() {
                Ok(Err(e)) if result.is_ok() => return Err(e),
                Ok(_) => {}
                Err(_) => return Err(WeirError::Internal("a reader thread panicked".into())),
            }
        }
        let (lifetime, finished) = result?;
        Ok(RunSummary {
            counters: self.metrics.snapshot(),
            lifetime,
            elapsed: started.elapsed(),
            checkpoints: self.metrics.checkpoints(),
            partitions: partitions.len(),
            finished,
        })
    }

    fn run_sink_stage(
        &mut self,
        rx: &Receiver<SinkMsg>,
        shutdown: &Shutdown,
        partitions: usize,
    ) -> Result<(Counters, bool)> {
        let mut lifetime = Counters::default();
        let mut all_ended = true;
        let mut finished = 0;
        while finished < partitions {
            let msg = rx.recv().map_err(|_| {
                WeirError::Internal("a CPU worker stopped without finishing".into())
            })?;
            match msg {
                SinkMsg::Output(partition, out) => self.write_output(partition, out, shutdown)?,
                SinkMsg::Barrier(checkpoint) => self.commit_checkpoint(&checkpoint, shutdown)?,
                SinkMsg::Finished {
                    ended,
                    lifetime: l,
                    partition,
                } => {
                    debug!(partition, ended, "partition finished");
                    finished += 1;
                    all_ended &= ended;
                    lifetime.add(&l);
                }
                SinkMsg::Failed(e) => return Err(e),
            }
        }
        Ok((lifetime, all_ended))
    }

    fn write_output(&mut self, partition: i32, out: TaskOutput, shutdown: &Shutdown) -> Result<()> {
        let mut letters = out.dead_letters;
        for batch in &out.batches {
            for sink in &mut self.sinks {
                let outcome = retry(shutdown, sink.name().to_string(), || {
                    sink.write(partition, batch)
                })?;
                if !outcome.rejected.is_empty() {
                    letters.extend(sink_rejects(
                        &self.config.pipeline,
                        sink.name(),
                        partition,
                        batch,
                        &outcome.rejected,
                    ));
                }
            }
        }
        if !letters.is_empty() {
            let dlq = &mut self.dlq;
            retry(shutdown, "dlq".into(), || dlq.write(&letters))?;
        }
        self.metrics.add(&out.delta);
        Ok(())
    }

    fn commit_checkpoint(&mut self, c: &Checkpoint, shutdown: &Shutdown) -> Result<()> {
        let started = Instant::now();
        let (p, e) = (c.partition, c.epoch);
        for sink in &mut self.sinks {
            retry(shutdown, sink.name().to_string(), || sink.prepare(p, e))?;
        }
        let dlq = &mut self.dlq;
        retry(shutdown, "dlq".into(), || dlq.prepare(p, e))?;
        let store = &self.store;
        retry(shutdown, "checkpoint".into(), || store.save(c))?;
        for sink in &mut self.sinks {
            retry(shutdown, sink.name().to_string(), || sink.commit(p, e))?;
        }
        let dlq = &mut self.dlq;
        retry(shutdown, "dlq".into(), || dlq.commit(p, e))?;
        // The checkpoint is the truth; an upstream commit that fails is retried with the next
        // checkpoint and is corrected on restart (the checkpoint's offset wins).
        if let Err(err) = self.source.acknowledge(&c.topic, p, c.next_offset) {
            warn!(partition = p, next_offset = c.next_offset, error = %err, "source did not acknowledge a durable checkpoint");
        }
        self.metrics.checkpoint_stored();
        debug!(
            partition = p,
            epoch = e,
            next_offset = c.next_offset,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint committed"
        );
        Ok(())
    }
}

/// Retry transient errors with exponential backoff (input pauses meanwhile, because the
/// channels fill). Gives up when shutdown is requested.
fn retry<T>(shutdown: &Shutdown, what: String, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 1u32;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.class() == ErrorClass::Transient && !shutdown.is_triggered() => {
                warn!(component = %what, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "transient error, retrying");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn sink_rejects(
    pipeline: &Arc<str>,
    sink: &str,
    partition: i32,
    batch: &RecordBatch,
    rejected: &[(usize, String)],
) -> Vec<DeadLetter> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    rejected
        .iter()
        .map(|(row, reason)| {
            let row_batch = batch.slice(*row, 1);
            let mut buf = Vec::new();
            let mut w = crate::arrow::json::LineDelimitedWriter::new(&mut buf);
            let payload = w
                .write(&row_batch)
                .and_then(|_| w.finish())
                .ok()
                .map(|_| buf);
            DeadLetter {
                pipeline: pipeline.clone(),
                topic: Arc::from(""),
                partition,
                offset: -1,
                key: None,
                payload,
                kind: ErrorKind::SinkRejected,
                message: reason.clone(),
                stage: Stage::Sink(sink.to_string()),
                attempts: 1,
                time_ms: now,
            }
        })
        .collect()
}

/// Send, but give up when shutdown is requested (the receiver may be gone or stuck).
fn send_until_stopped<T>(tx: &Sender<T>, mut msg: T, stop: &Shutdown) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(m)) => {
                if stop.is_triggered() {
                    return false;
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

struct Lane {
    task: PartitionTask,
    rx: Receiver<ReaderMsg>,
    last_checkpoint: Instant,
    dirty: bool,
}

fn run_worker(
    lane: Vec<(PartitionTask, Receiver<ReaderMsg>)>,
    tx: Sender<SinkMsg>,
    interval: Duration,
) {
    let mut lanes: Vec<Lane> = lane
        .into_iter()
        .map(|(task, rx)| Lane {
            task,
            rx,
            last_checkpoint: Instant::now(),
            dirty: false,
        })
        .collect();
    let fail = |tx: &Sender<SinkMsg>, e: WeirError| {
        let _ = tx.send(SinkMsg::Failed(e));
    };
    while !lanes.is_empty() {
        let mut sel = Select::new();
        for lane in &lanes {
            sel.recv(&lane.rx);
        }
        let tick = interval.min(Duration::from_millis(200));
        let (idx, msg) = match sel.select_timeout(tick) {
            Ok(op) => {
                let idx = op.index();
                (idx, Some(op.recv(&lanes[idx].rx)))
            }
            Err(_) => (usize::MAX, None),
        };
        if let Some(msg) = msg {
            let lane = &mut lanes[idx];
            let partition = lane.task.partition();
            let (out, finished) = match msg {
                Ok(ReaderMsg::Batch(raw)) => (lane.task.process(&raw), None),
                Ok(ReaderMsg::End) => (lane.task.end_of_input(), Some(true)),
                Err(_) => (Ok(TaskOutput::default()), Some(false)), // reader stopped: shutdown
            };
            match out {
                Ok(out) => {
                    lane.dirty = true;
                    if tx.send(SinkMsg::Output(partition, out)).is_err() {
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
                        if tx.send(SinkMsg::Barrier(c)).is_err()
                            || tx
                                .send(SinkMsg::Finished {
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
