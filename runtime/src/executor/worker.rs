//! A CPU worker: owns the tasks of its partitions, runs decode and operators, decides when a
//! partition is idle and when it checkpoints.

use super::*;

/// How often an idle partition's task is told it is idle.
pub(super) const IDLE_EVERY: Duration = Duration::from_millis(100);

pub(super) struct TaskLane {
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
    /// The lane's stop and the run's: a lane whose input ended while events wait for a
    /// retry finishes when they are resolved, or when one of these stops it.
    stops: [Shutdown; 2],
    /// The reader sent its end; the lane waits for its retries before it ends.
    ended: bool,
}

impl TaskLane {
    fn stopped(&self) -> bool {
        self.stops.iter().any(Shutdown::is_triggered)
    }
}

/// A CPU worker: runs the tasks of the partitions it is handed on `ctl` until `ctl` closes
/// and every lane is finished. A lane finishes when its reader ends or stops (revocation,
/// shutdown): the worker drains what was read, sends a last checkpoint and `Finished`.
pub(super) fn run_worker(
    ctl: Receiver<NewLane>,
    tx: Sender<SinkMsg>,
    (interval, idle_timeout): (Duration, Duration),
    metrics: Arc<Metrics>,
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
        // Lanes whose input ended have no reader any more (their channel is closed).
        let reading: Vec<usize> = (0..lanes.len()).filter(|i| !lanes[*i].ended).collect();
        for i in &reading {
            sel.recv(&lanes[*i].rx);
        }
        let mut tick = interval.min(idle_timeout).min(Duration::from_millis(200));
        // Wake up for the next retry that is due, input or not.
        if let Some(due) = lanes.iter().filter_map(|l| l.task.next_retry_ms()).min() {
            let wait = (due - now_ms()).max(0) as u64;
            tick = tick.min(Duration::from_millis(wait));
        }
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
                let idx = reading[op.index() - first_lane];
                (idx, Some(op.recv(&lanes[idx].rx)))
            }
            Err(_) => (usize::MAX, None),
        };
        if let Some((task, rx, stops)) = new_lane {
            lanes.push(TaskLane {
                task,
                rx,
                last_checkpoint: Instant::now(),
                last_input: Instant::now(),
                last_idle: Instant::now(),
                caught_up_since: None,
                dirty: false,
                stops,
                ended: false,
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
                    let newest = raw.messages.iter().filter_map(|m| m.timestamp_ms).max();
                    let started = Instant::now();
                    let out = lane.task.process(&raw);
                    metrics.batch_processed(started.elapsed());
                    let out = out.map(|mut o| {
                        o.source_time_ms = newest;
                        with_source(o, raw)
                    });
                    (out, None)
                }
                // Events still wait for a retry: the end waits for them (below).
                Ok(ReaderMsg::End) if lane.task.in_retry() > 0 => {
                    lane.ended = true;
                    continue;
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
                let lane = lanes.swap_remove(idx);
                if !finish(lane, ended, &tx) {
                    return;
                }
                continue;
            }
        }
        let mut i = 0;
        while i < lanes.len() {
            let lane = &mut lanes[i];
            if lane.task.next_retry_ms().is_some_and(|due| due <= now_ms()) {
                let started = Instant::now();
                let out = lane.task.retry_due(now_ms());
                metrics.batch_processed(started.elapsed());
                match out {
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
            // A lane whose input ended finishes once nothing waits for a retry, or when it is
            // stopped (its waiting events are in its last checkpoint).
            if lane.ended && (lane.task.in_retry() == 0 || lane.stopped()) {
                let mut lane = lanes.swap_remove(i);
                let resolved = lane.task.in_retry() == 0;
                if resolved {
                    match lane.task.end_of_input() {
                        Ok(out) => {
                            let output_lane =
                                Lane::new(lane.task.topic().clone(), lane.task.partition());
                            if tx.send(SinkMsg::Output(output_lane, out)).is_err() {
                                return;
                            }
                        }
                        Err(e) => return fail(&tx, e),
                    }
                }
                if !finish(lane, resolved, &tx) {
                    return;
                }
                continue;
            }
            i += 1;
        }
        for lane in lanes.iter_mut() {
            // Idle means the source had nothing to read for the whole timeout: not a backlog
            // the worker has not reached yet, nor a reader a loaded machine left behind.
            let caught_up_for = lane.caught_up_since.map_or(Duration::ZERO, |t| t.elapsed());
            // (Caught up after the last batch, so the last input is at least as old.)
            if caught_up_for >= idle_timeout
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
            if checkpoint_due(lane.dirty, lane.last_checkpoint.elapsed(), interval) {
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

/// Send the last checkpoint of `lane` and its `Finished` (`ended`: its input ended and was
/// processed). False when the sink stage is gone.
fn finish(mut lane: TaskLane, ended: bool, tx: &Sender<SinkMsg>) -> bool {
    let partition = lane.task.partition();
    match lane.task.checkpoint() {
        Ok(c) => {
            let lifetime = c.counters;
            let topic = lane.task.topic().clone();
            tx.send(SinkMsg::Barrier(c)).is_ok()
                && tx
                    .send(SinkMsg::Finished {
                        topic,
                        partition,
                        ended,
                        lifetime,
                    })
                    .is_ok()
        }
        Err(e) => {
            let _ = tx.send(SinkMsg::Failed(e));
            false
        }
    }
}

/// Keeps the step's messages with its output when its rows still carry their source offset
/// (no stateful operator), so that `sink_rejects` can dead-letter a row's message. The batch
/// is moved, not copied; it lives until the sink stage has written the output.
pub(super) fn with_source(mut out: TaskOutput, raw: RawBatch) -> TaskOutput {
    if out
        .batches
        .iter()
        .any(|b| b.schema().index_of(crate::OFFSET_COLUMN).is_ok())
    {
        out.source = Some(Arc::new(raw));
    }
    out
}

/// Whether a partition checkpoints now: it changed since its last checkpoint (`dirty`) and
/// the interval has passed since then. An unchanged partition never checkpoints, so an idle
/// one writes nothing.
pub(super) fn checkpoint_due(dirty: bool, since_last: Duration, interval: Duration) -> bool {
    dirty && since_last >= interval
}

#[cfg(test)]
mod tests {
    use super::checkpoint_due;
    use std::time::Duration;

    #[test]
    fn a_partition_checkpoints_when_it_changed_and_its_interval_passed() {
        let s = Duration::from_secs;
        assert!(checkpoint_due(true, s(5), s(5)));
        assert!(checkpoint_due(true, s(9), s(5)));
        assert!(!checkpoint_due(true, s(4), s(5)), "too early");
        assert!(!checkpoint_due(false, s(60), s(5)), "nothing changed");
    }
}
