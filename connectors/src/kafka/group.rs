//! Following a consumer group's assignment: the rebalance callback hands each change to the
//! executor and waits for it before librdkafka goes on.
//!
//! librdkafka runs the rebalance callback on the thread that polls the consumer's main queue
//! (the source's group thread, see [`KafkaSource`](super::KafkaSource)). The callback:
//! - **assign:** sends [`Assignment::Assigned`] and waits until the executor has restored each
//!   partition and opened its reader, which splits the partition's queue off and records where
//!   it starts ([`GroupHooks::record_start`]). Only then are the partitions assigned, at those
//!   offsets, so no message of theirs can reach the main queue and the checkpoint's offset wins
//!   over the group's. A partition the executor declined (it is stopping) is assigned paused.
//! - **revoke:** sends [`Assignment::Revoked`] and waits, at most `revoke_timeout`, until the
//!   executor has stopped reading those partitions, drained them, stored their checkpoints and
//!   committed their offsets; then they are unassigned. Past the bound the partitions are given
//!   up anyway (the group would otherwise evict this worker) and a warning says so; the
//!   drain goes on, but the next owner claims the lanes in the checkpoint store, so this
//!   worker's late checkpoints are refused and the partitions dropped (ARCHITECTURE.md,
//!   "Checkpoint protocol", Fencing).
//!
//! Both the cooperative (incremental) and the eager protocols are followed; weir asks for
//! `cooperative-sticky`, so that a rebalance only moves the partitions that change owner.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};
use weir_runtime::{Assignment, TopicPartition};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The link between a consumer's rebalance callback and the executor.
#[derive(Default)]
pub(crate) struct GroupHooks {
    /// Where assignment changes go; `None` until the source follows a group.
    events: Mutex<Option<Sender<Assignment>>>,
    /// Start offsets recorded by the readers opened for a pending assignment.
    starts: Mutex<HashMap<(String, i32), Offset>>,
    revoke_timeout: Mutex<Duration>,
}

impl GroupHooks {
    /// Send assignment changes to `events` from now on.
    pub fn connect(&self, events: Sender<Assignment>, revoke_timeout: Duration) {
        *lock(&self.events) = Some(events);
        *lock(&self.revoke_timeout) = revoke_timeout;
    }

    /// A reader of `topic/partition` was opened to start at `offset`: the assignment uses it.
    pub fn record_start(&self, topic: &str, partition: i32, offset: Offset) {
        lock(&self.starts).insert((topic.to_string(), partition), offset);
    }

    fn events(&self) -> Option<Sender<Assignment>> {
        lock(&self.events).clone()
    }

    /// The rebalance callback (see the module docs).
    pub fn rebalance<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions = partitions_of(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let opened = self.assigned(&partitions);
                let mut declined = TopicPartitionList::new();
                {
                    let mut starts = lock(&self.starts);
                    for (topic, partition) in &partitions {
                        let key = (topic.to_string(), *partition);
                        let start = match starts.remove(&key) {
                            Some(offset) if opened.contains(&(topic.clone(), *partition)) => offset,
                            _ => {
                                declined.add_partition(topic, *partition);
                                Offset::Stored
                            }
                        };
                        if let Err(e) = tpl.set_partition_offset(topic, *partition, start) {
                            error!(topic = %topic, partition, error = %e, "cannot set the start offset of an assigned partition");
                        }
                    }
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    error!(error = %e, "cannot take the assigned partitions");
                }
                if declined.count() > 0 {
                    if let Err(e) = consumer.pause(&declined) {
                        warn!(error = %e, "cannot pause partitions this worker declined");
                    }
                }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    error!(error = ?other, "rebalance error: giving up the partitions");
                }
                self.revoked(&partitions, consumer.assignment_lost());
                let released = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = released {
                    error!(error = %e, "cannot give up the revoked partitions");
                }
            }
        }
    }

    /// Hand new partitions to the executor; the ones it opened.
    fn assigned(&self, partitions: &[TopicPartition]) -> Vec<TopicPartition> {
        let Some(events) = self.events() else {
            return Vec::new();
        };
        let (done, answer) = bounded(1);
        let event = Assignment::Assigned {
            partitions: partitions.to_vec(),
            done,
        };
        if events.send(event).is_err() {
            return Vec::new(); // the executor is gone
        }
        // Opening restores checkpoints: no bound here but the executor's own (a stuck
        // executor stops polling, and librdkafka's max.poll.interval.ms evicts this worker).
        let opened = answer.recv().unwrap_or_default();
        info!(assigned = ?partitions, opened = opened.len(), "partitions assigned");
        opened
    }

    /// Take partitions away from the executor, waiting at most the revoke timeout. `lost`:
    /// the group already gave them to another member (see [`Assignment::Revoked`]).
    fn revoked(&self, partitions: &[TopicPartition], lost: bool) {
        let Some(events) = self.events() else {
            return;
        };
        if partitions.is_empty() {
            return;
        }
        let (done, answer) = bounded(1);
        let event = Assignment::Revoked {
            partitions: partitions.to_vec(),
            lost,
            done,
        };
        if events.send(event).is_err() {
            return;
        }
        let timeout = *lock(&self.revoke_timeout);
        match answer.recv_timeout(timeout) {
            Ok(()) => info!(revoked = ?partitions, "partitions released"),
            Err(RecvTimeoutError::Timeout) => warn!(
                revoked = ?partitions,
                timeout_ms = timeout.as_millis() as u64,
                "the revoked partitions were not drained in time: released without their last checkpoint (the next owner resumes from the previous one, and its claim fences this worker's late checkpoints)"
            ),
            Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (std::sync::Arc::from(e.topic()), e.partition()))
        .collect()
}
