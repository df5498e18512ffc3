//! Following the source's assignment: starting a partition (restore, recover, open its reader,
//! hand its task to a worker) and stopping the ones taken away.

use super::*;

impl Executor {
    /// Restore a partition from its checkpoint, recover the sinks' staged epochs of it, open
    /// its reader and hand its task to the least loaded worker.
    pub(super) fn start_partition(
        &mut self,
        tp: &TopicPartition,
        running: &mut Running,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let (topic, partition) = (&tp.0, tp.1);
        let mut task = (self.tasks)(topic, partition)?;
        let lane = Lane::of(tp);
        // Claim, then load: a save of the previous owner that landed before the claim is in
        // the checkpoint loaded, and any later one is refused.
        let generation = self.claim(&lane, shutdown)?;
        task.set_generation(generation);
        let checkpoint = self.store.load(topic, partition)?;
        self.recover(&lane, generation, checkpoint.as_ref())?;
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
        events::PartitionStarted {
            topic,
            partition,
            from: &resume,
        }
        .emit(&self.metrics);
        let acknowledged = upstream.acknowledged.unwrap_or(-1);
        let floor = match resume {
            ResumeFrom::Checkpoint { .. } => acknowledged,
            other => other.offset().max(acknowledged),
        };
        running
            .upstream_at
            .insert(tp.clone(), upstream.acknowledged);
        let reader = self.source.open(topic, partition, task.next_offset())?;
        let live = self
            .metrics
            .track_partition(topic, partition, task.next_offset());
        // Events a checkpoint restored waiting for a retry.
        live.set_in_retry(task.in_retry() as u64);
        self.lane_metrics.insert(lane.clone(), live.clone());
        let (tx, rx) = bounded(self.config.channel_capacity.max(1));
        let stop = Shutdown::new();
        let handle = spawn_reader(
            reader,
            tx,
            [stop.clone(), shutdown.clone()],
            (self.config.max_rows, self.config.linger),
            self.metrics.clone(),
            live,
        )?;
        let worker = (0..running.load.len())
            .min_by_key(|w| running.load[*w])
            .unwrap_or(0);
        running.workers[worker]
            .send((task, rx, [stop.clone(), shutdown.clone()]))
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
                fenced: false,
                floor,
            },
        );
        // A checkpoint ahead of upstream (a stop between storing it and acknowledging it):
        // catch upstream up now, or it lags until the partition gets new input.
        if let ResumeFrom::Checkpoint { offset, .. } = resume {
            if offset > acknowledged && self.acknowledge(tp, offset) {
                if let Some(owned) = running.owned.get_mut(tp) {
                    owned.floor = offset;
                }
                running.upstream_at.insert(tp.clone(), Some(offset));
            }
        }
        Ok(())
    }

    /// Claim `lane` in the checkpoint store (retried like a checkpoint save: a database
    /// claim may wait for the previous owner's commit).
    pub(super) fn claim(&self, lane: &Lane, shutdown: &Shutdown) -> Result<u64> {
        let (topic, partition) = lane.checkpoint_key();
        let store = &self.store;
        retry(
            &self.config.retry,
            shutdown,
            &self.metrics,
            "checkpoint".into(),
            || store.claim(topic, partition),
        )
    }

    /// Tell every participant who owns `lane` now and settle their staged epochs of it
    /// against the stored checkpoint.
    pub(super) fn recover(
        &mut self,
        lane: &Lane,
        generation: u64,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<()> {
        let claim = LaneClaim {
            generation,
            committed_generation: checkpoint.map_or(0, |c| c.generation),
        };
        let committed = checkpoint.map(|c| c.epoch);
        self.dlq.claimed(lane, claim);
        self.dlq.recover(lane, committed)?;
        for sink in &mut self.sinks {
            sink.claimed(lane, claim);
            sink.recover(lane, committed)?;
        }
        Ok(())
    }

    pub(super) fn on_assignment(
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
                        let duplicate = running.owned.contains_key(&tp);
                        events::PartitionAssigned {
                            topic: &tp.0,
                            partition: tp.1,
                            duplicate,
                        }
                        .emit(&self.metrics);
                        if duplicate {
                            continue;
                        }
                        self.start_partition(&tp, running, shutdown)?;
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
                        events::PartitionRevoked {
                            topic: &tp.0,
                            partition: tp.1,
                            lost,
                        }
                        .emit(&self.metrics);
                        owned.stop.trigger();
                        owned.revoking = true;
                        // A partition fenced meanwhile stays dropped.
                        owned.lost |= lost;
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
}
