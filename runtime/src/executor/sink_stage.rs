//! The sink stage (the calling thread): writes outputs and dead letters, runs the epoch
//! protocol of each checkpoint once for partitions and the global stage, acknowledges
//! durable checkpoints upstream.

use super::*;

impl Executor {
    pub(super) fn run_sink_stage(
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

    pub(super) fn on_sink_msg(
        &mut self,
        msg: SinkMsg,
        running: &mut Running,
        shutdown: &Shutdown,
    ) -> Result<()> {
        match msg {
            SinkMsg::Output(lane, out) => {
                let Lane::Partition { topic, partition } = &lane else {
                    return self.write_output(lane, out, shutdown);
                };
                let tp = (topic.clone(), *partition);
                if running.owned.get(&tp).is_some_and(|o| o.lost) {
                    // Never committed: writing it would only hold resources (a database
                    // transaction's row locks) the new owner may need.
                    self.metrics.add(&out.delta);
                    return Ok(());
                }
                // With a global stage the rows are written in the global lane, whose fencing
                // ends the run.
                let partition_lane = self.global.is_none();
                match self.write_output(lane, out, shutdown) {
                    Err(e) if e.class() == ErrorClass::Fenced && partition_lane => {
                        self.fence(&tp, None, &e, running);
                        Ok(())
                    }
                    other => other,
                }
            }
            SinkMsg::Barrier(checkpoint) => {
                let tp = (checkpoint.topic.clone(), checkpoint.partition);
                if running.owned.get(&tp).is_some_and(|o| o.lost) {
                    debug!(topic = %tp.0, partition = tp.1, epoch = checkpoint.epoch, "checkpoint of a lost partition dropped");
                    return Ok(());
                }
                let committed = self.commit_checkpoint(
                    &Lane::new(checkpoint.topic.clone(), checkpoint.partition),
                    &checkpoint,
                    shutdown,
                );
                match committed {
                    Err(e) if e.class() == ErrorClass::Fenced => {
                        self.fence(&tp, Some(checkpoint.epoch), &e, running);
                        return Ok(());
                    }
                    other => other?,
                }
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
                running.lifetime.insert(tp.clone(), lifetime);
                running.all_ended &= ended;
                self.lane_metrics.remove(&Lane::of(&tp));
                self.metrics.untrack_partition(&tp.0, partition);
                if let Some(owned) = running.owned.remove(&tp) {
                    running.load[owned.worker] = running.load[owned.worker].saturating_sub(1);
                    if owned.fenced {
                        debug!(topic = %tp.0, partition, "fenced partition released");
                    }
                    events::PartitionFinished {
                        topic: &tp.0,
                        partition,
                        ended,
                        revoked: owned.revoking,
                    }
                    .emit(&self.metrics);
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

    /// A newer owner claimed `tp` (the store refused its checkpoint of `epoch`, or a sink its
    /// write or transaction): drop the partition like one revoked as lost. Its reader stops, the
    /// worker drains it, and its output and checkpoints from now on are discarded; nothing
    /// of it is committed or acknowledged again.
    pub(super) fn fence(
        &mut self,
        tp: &TopicPartition,
        epoch: Option<u64>,
        error: &WeirError,
        running: &mut Running,
    ) {
        events::PartitionFenced {
            topic: &tp.0,
            partition: tp.1,
            epoch,
            error,
        }
        .emit(&self.metrics);
        if let Some(owned) = running.owned.get_mut(tp) {
            owned.lost = true;
            owned.fenced = true;
            owned.stop.trigger();
        }
        running.final_acks.remove(tp);
    }

    pub(super) fn write_output(
        &mut self,
        lane: Lane,
        mut out: TaskOutput,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let letters = std::mem::take(&mut out.dead_letters);
        let watermark = out.event_watermark.or(out.watermark);
        if let Some(live) = self.lane_metrics.get(&lane) {
            if let Some(w) = watermark {
                live.set_watermark(w);
            }
            live.set_in_retry(out.in_retry);
        }
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
            for (i, sink) in self.sinks.iter_mut().enumerate() {
                let outcome = retry(
                    &self.config.retry,
                    shutdown,
                    &self.metrics,
                    sink.name().to_string(),
                    || sink.write(&out_lane, batch),
                )?;
                self.metrics.sink_wrote(
                    i,
                    batch.num_rows().saturating_sub(outcome.rejected.len()) as u64,
                );
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
            retry(
                &self.config.retry,
                shutdown,
                &self.metrics,
                "dlq".into(),
                || dlq.write(lane, letters),
            )?;
            self.metrics.dead_lettered(letters);
        }
        if let (Some(t), false) = (out.source_time_ms, batches.is_empty()) {
            let latency = now_ms().saturating_sub(t).max(0) as u64;
            self.metrics.written_after(Duration::from_millis(latency));
        }
        self.metrics.add(&out.delta);
        Ok(())
    }

    /// Restore the global stage from its checkpoint and recover the sinks' staged epochs of
    /// its output, before any partition starts.
    pub(super) fn restore_global(&mut self, lanes: &[Lane], shutdown: &Shutdown) -> Result<()> {
        if self.global.is_none() {
            return Ok(());
        }
        let (topic, partition) = Lane::Global.checkpoint_key();
        let generation = self.claim(&Lane::Global, shutdown)?;
        let checkpoint = self.store.load(topic, partition)?;
        self.recover(&Lane::Global, generation, checkpoint.as_ref())?;
        let g = self.global.as_mut().expect("invariant: checked above");
        g.generation = generation;
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
    pub(super) fn checkpoint_global(&mut self, shutdown: &Shutdown) -> Result<()> {
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
            parked: Default::default(),
            reset: false,
            generation: g.generation,
        };
        self.commit_checkpoint(&Lane::Global, &c, shutdown)?;
        let g = self
            .global
            .as_mut()
            .expect("invariant: the global stage checkpointed above");
        g.stage.committed();
        g.dirty = false;
        Ok(())
    }

    /// The epoch protocol of one checkpoint of `lane` (a partition or the global stage), the
    /// one place it exists: sinks and DLQ prepare, the store saves, sinks and DLQ commit.
    /// Acknowledging it upstream is the caller's.
    pub(super) fn commit_checkpoint(
        &mut self,
        lane: &Lane,
        c: &Checkpoint,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let started = Instant::now();
        let e = c.epoch;
        let (budget, metrics) = (&self.config.retry, &*self.metrics);
        for sink in &mut self.sinks {
            retry(budget, shutdown, metrics, sink.name().to_string(), || {
                sink.prepare(lane, e)
            })?;
        }
        let dlq = &mut self.dlq;
        retry(budget, shutdown, metrics, "dlq".into(), || {
            dlq.prepare(lane, e)
        })?;
        let store = &self.store;
        retry(budget, shutdown, metrics, "checkpoint".into(), || {
            store.save(c)
        })?;
        for sink in &mut self.sinks {
            retry(budget, shutdown, metrics, sink.name().to_string(), || {
                sink.commit(lane, e)
            })?;
        }
        let dlq = &mut self.dlq;
        retry(budget, shutdown, metrics, "dlq".into(), || {
            dlq.commit(lane, e)
        })?;
        if let Some(live) = self.lane_metrics.get(lane) {
            live.checkpointed(c.next_offset, now_ms());
        }
        events::CheckpointCommitted {
            lane,
            epoch: e,
            next_offset: (*lane != Lane::Global).then_some(c.next_offset),
            took: started.elapsed(),
        }
        .emit(metrics);
        Ok(())
    }

    /// Acknowledge a durable checkpoint upstream. The checkpoint is the truth; an upstream
    /// commit that fails is retried with the next checkpoint and is corrected on restart
    /// (the checkpoint's offset wins). Whether it succeeded.
    pub(super) fn acknowledge(&mut self, tp: &TopicPartition, next_offset: i64) -> bool {
        match self.source.acknowledge(&tp.0, tp.1, next_offset) {
            Ok(()) => true,
            Err(err) => {
                events::AcknowledgeFailed {
                    topic: &tp.0,
                    partition: tp.1,
                    next_offset,
                    error: &err,
                }
                .emit(&self.metrics);
                false
            }
        }
    }

    /// Acknowledge the checkpoints stored while stopping, together, within the source's bound.
    /// When that fails the run still succeeds (the checkpoints are the truth) and a warning
    /// names what lags; the lagging partitions are returned.
    pub(super) fn acknowledge_final(
        &mut self,
        running: &mut Running,
    ) -> Vec<(TopicPartition, i64)> {
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
}

/// Dead letters for the rows a sink refused for good. A row that carries its source offset
/// (rows of a chain without a stateful operator are source events) gets its message: offset,
/// key and original payload, like a decode reject. A row of a window or projection derives
/// from many messages: it has no offset (-1) and its payload is the row as JSON.
pub fn sink_rejects(
    pipeline: &Arc<str>,
    sink: &str,
    lane: &Lane,
    batch: &RecordBatch,
    rejected: &[(usize, String)],
    source: Option<&RawBatch>,
) -> Vec<DeadLetter> {
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
    let stage = || Stage::Sink(sink.to_string());
    rejected
        .iter()
        .map(|(row, reason)| {
            let message = offsets
                .as_ref()
                .filter(|o| *row < o.len() && crate::arrow::array::Array::is_valid(*o, *row))
                .and_then(|o| Some((source?, o.value(*row))))
                .filter(|(raw, offset)| raw.find(*offset).is_some());
            match message {
                Some((raw, offset)) => DeadLetter::of_message(
                    pipeline,
                    raw,
                    offset,
                    ErrorKind::SinkRejected,
                    reason.clone(),
                    stage(),
                ),
                // A row merged by the global stage was read from no one partition.
                None => DeadLetter::of_row(
                    pipeline,
                    lane.partition().unwrap_or(-1),
                    batch,
                    *row,
                    ErrorKind::SinkRejected,
                    reason.clone(),
                    stage(),
                ),
            }
        })
        .collect()
}
