//! The transactional `kafka` sink: Kafka to Kafka exactly-once. It is the pipeline's sink *and*
//! its checkpoint store, like the PostgreSQL store: per lane (input topic and partition), one
//! Kafka transaction holds the epoch's output rows, the lane's checkpoint (a record in a
//! checkpoint topic) and the consumer group's offset (`send_offsets_to_transaction`). All three
//! commit together or not at all.
//!
//! - **One transactional producer per lane**, `transactional.id =
//!   "<transactional_id>-<topic>-<partition>"` (`"<transactional_id>-global"` for the global
//!   stage). Initialising it (when the partition is assigned) fences any older producer of that
//!   lane (a worker that lost it) and aborts its open transaction: a zombie cannot commit after
//!   the new owner started. Older weir named the producer by partition only
//!   (`"<transactional_id>-<partition>"`); `load` also fences that name once per partition
//!   number, so an open transaction of a weir from before the upgrade is aborted too.
//! - `write` opens the lane's transaction if needed and produces the rows (JSON, keyed by
//!   `key_column`, as the at-least-once `kafka` sink writes them).
//! - `prepare` waits until every message is delivered into the open transaction.
//! - `save` (the checkpoint store) produces the checkpoint into the checkpoint topic, in the
//!   same transaction, keyed `<pipeline>/<topic>/<partition>`, to checkpoint-topic partition
//!   `partition % <its partitions>`.
//! - `commit` adds the group offset and commits the transaction.
//! - `claim` (the executor's, when it starts the partition) initialises a new producer for the
//!   lane, which fences every older one, and returns the lane's generation: here an identity
//!   of the claim (microseconds since the Unix epoch, above any earlier claim of this
//!   process), not a counter kept by the broker, since the broker's fencing is the
//!   compare-and-set. Checkpoints carry it, so file outputs beside this store name their
//!   staged files by it (ARCHITECTURE.md, "Checkpoint protocol").
//! - `load` reads that checkpoint-topic partition with `isolation.level = read_committed` to
//!   its end and returns the last checkpoint of the lane: committed output and checkpoint
//!   always match. Without a claim before it (a tool reading checkpoints), it initialises the
//!   lane's producer first, so an open transaction of a dead owner does not hold the read
//!   back.
//!
//! Fencing: a worker whose drain of a revoked partition outlasted the group's wait still holds
//! the lane's old producer. The broker refuses its late `send`, `send_offsets_to_transaction`
//! or `commit_transaction` (`PRODUCER_FENCED`, `INVALID_PRODUCER_EPOCH`, librdkafka's
//! `_FENCED`, also read from the producer's fatal error): that failure is
//! [`WeirError::Fenced`], which the executor handles by dropping the partition like a lost one
//! (nothing committed or acknowledged) while the worker goes on; the lane's producer is
//! dropped. Any other failure inside a transaction is fatal: the run stops, the transaction is
//! aborted by the next owner's fencing, and the restart resumes from the last committed
//! checkpoint. Readers of the output topic must use `isolation.level = read_committed`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::checkpoint::{decode, encode};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{
    Checkpoint, CheckpointStore, ErrorClass, Guarantee, Lane, SinkWriter, WriteOutcome,
};

use super::client::{client_config, last_error_suffix, topic_partitions, KafkaContext};
use super::errors::{classify, classify_code};
use super::producer::send_waiting;
use super::sink::json_messages;
use super::KafkaSinkConfig;

/// What the transactional mode needs beyond the sink's config (which names the
/// `transactional_id` prefix and the `checkpoint_topic`).
#[derive(Debug, Clone)]
pub struct KafkaTxnOptions {
    /// The consumer group of the source, whose offsets commit inside the transactions.
    pub group_id: String,
    /// The pipeline's name (checkpoint keys).
    pub pipeline: String,
}

/// One lane's transactional producer.
struct TxnLane {
    producer: BaseProducer<KafkaContext>,
    /// The claim this producer was created for (0: created without one).
    generation: u64,
    in_txn: bool,
    /// The group offset to commit with the open transaction: (topic, next offset).
    offset: Option<(Arc<str>, i64)>,
}

struct Inner {
    name: String,
    config: KafkaSinkConfig,
    txn: KafkaTxnOptions,
    wait: Duration,
    checkpoint_partitions: i32,
    group: ConsumerGroupMetadata,
    /// A client of the source's group: `group` comes from it, and `load` reads the group's
    /// committed offsets through it.
    group_consumer: BaseConsumer<KafkaContext>,
    /// Reads the checkpoint topic in `load`; made once, reassigned each time (a client per
    /// partition would connect anew for every partition of an assignment).
    checkpoint_reader: BaseConsumer<KafkaContext>,
    lanes: BTreeMap<Lane, TxnLane>,
    /// Partition numbers whose producer of the old naming was fenced.
    legacy_fenced: BTreeSet<i32>,
    /// The last generation this process handed out ([`Inner::claim`]).
    last_generation: u64,
    /// Lanes a newer owner fenced: no producer is created for them again (it would fence
    /// the new owner in turn) until they are claimed again.
    fenced: BTreeSet<Lane>,
    buf: Vec<u8>,
}

/// The transactional `kafka` sink and checkpoint store. See the module docs. Clones share
/// one state (the sink and the store roles of one pipeline).
#[derive(Clone)]
pub struct KafkaTxnStore {
    name: String,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for KafkaTxnStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTxnStore")
            .field("name", &self.name)
            .finish()
    }
}

/// Whether `e`, from a call on `producer`, means a newer producer of the same
/// `transactional.id` fenced it: the error's code, or the fatal error librdkafka recorded on
/// the producer, is a fencing one ([`super::errors`]).
fn is_fenced(e: &KafkaError, producer: &BaseProducer<KafkaContext>) -> bool {
    classify(e) == ErrorClass::Fenced
        || producer
            .client()
            .fatal_error()
            .is_some_and(|(code, _)| classify_code(code) == ErrorClass::Fenced)
}

fn fatal(name: &str, message: String) -> WeirError {
    WeirError::Sink {
        sink: name.to_string(),
        message,
        class: ErrorClass::Fatal,
    }
}

impl KafkaTxnStore {
    /// Checks the config, that the brokers answer and that both topics exist (within
    /// `connect_timeout_ms`).
    pub fn connect(
        name: impl Into<String>,
        config: &KafkaSinkConfig,
        txn: KafkaTxnOptions,
    ) -> Result<Self> {
        let name = name.into();
        let mut errors = config.validate("");
        if config.transactional_id.is_none() {
            errors.push("transactional_id: missing (it names the transactional producers)".into());
        }
        if txn.group_id.trim().is_empty() {
            errors.push("the source's group_id must not be empty".into());
        }
        if !errors.is_empty() {
            return Err(WeirError::Config(format!(
                "sink {name}: {}",
                errors.join("; ")
            )));
        }
        let wait = Duration::from_millis(config.connect_timeout_ms);
        let group_consumer: BaseConsumer<KafkaContext> = client_config(
            &config.brokers,
            &config.options,
            &[("group.id", txn.group_id.trim())],
            &[],
        )
        .create_with_context(KafkaContext::default())
        .map_err(|e| fatal(&name, format!("cannot create the group client: {e}")))?;
        let group = group_consumer.group_metadata().ok_or_else(|| {
            fatal(
                &name,
                format!("no group metadata for group {:?}", txn.group_id),
            )
        })?;
        let serve = || while group_consumer.poll(Duration::ZERO).is_some() {};
        let check = |topic: &str| {
            topic_partitions(
                group_consumer.client(),
                &serve,
                config.brokers.trim(),
                topic,
                wait,
            )
            .map_err(|(message, class)| WeirError::Sink {
                sink: name.clone(),
                message,
                class,
            })
        };
        check(config.topic.trim())?;
        let checkpoint_topic = config.checkpoint_topic.clone().unwrap_or_default();
        let checkpoint_partitions = check(checkpoint_topic.trim())?.len() as i32;
        let checkpoint_reader = checkpoint_reader(&name, config)?;
        Ok(Self {
            name: name.clone(),
            inner: Arc::new(Mutex::new(Inner {
                name,
                config: config.clone(),
                txn,
                wait,
                checkpoint_partitions: checkpoint_partitions.max(1),
                group,
                group_consumer,
                checkpoint_reader,
                lanes: BTreeMap::new(),
                legacy_fenced: BTreeSet::new(),
                last_generation: 0,
                fenced: BTreeSet::new(),
                buf: Vec::new(),
            })),
        })
    }

    /// This store as the pipeline's checkpoint store (it must be: the checkpoints live in the
    /// transactions).
    pub fn checkpoint_store(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| {
            fatal(
                &self.name,
                "a previous call panicked while holding the sink; its state is unknown".into(),
            )
        })
    }
}

impl Inner {
    fn error(
        &self,
        what: &str,
        e: &KafkaError,
        producer: Option<&BaseProducer<KafkaContext>>,
    ) -> WeirError {
        let suffix = producer
            .map(|p| last_error_suffix(p.context()))
            .unwrap_or_default();
        fatal(&self.name, format!("{what}: {e}{suffix}"))
    }

    fn prefix(&self) -> &str {
        self.config
            .transactional_id
            .as_deref()
            .unwrap_or_default()
            .trim()
    }

    /// A transactional producer named `id`, initialised: every older producer of that name is
    /// fenced and its open transaction aborted.
    fn init_producer(&self, id: &str) -> Result<BaseProducer<KafkaContext>> {
        let producer: BaseProducer<KafkaContext> = client_config(
            &self.config.brokers,
            &self.config.options,
            &[("transactional.id", id), ("enable.idempotence", "true")],
            &[
                ("partitioner", "murmur2_random"),
                ("linger.ms", "5"),
                ("allow.auto.create.topics", "false"),
            ],
        )
        .create_with_context(KafkaContext::default())
        .map_err(|e| {
            fatal(
                &self.name,
                format!("cannot create the transactional producer {id:?}: {e}"),
            )
        })?;
        producer.init_transactions(self.wait).map_err(|e| {
            self.error(&format!("init transactions of {id:?}"), &e, Some(&producer))
        })?;
        Ok(producer)
    }

    /// The lane's producer, created and initialised (fencing older ones) on first use.
    fn lane(&mut self, lane: &Lane) -> Result<&mut TxnLane> {
        if !self.lanes.contains_key(lane) {
            if self.fenced.contains(lane) {
                return Err(WeirError::Fenced {
                    lane: lane.to_string(),
                    message: "a newer owner fenced this worker's producer of the lane; it is \
                              not created again until the lane is claimed again"
                        .into(),
                });
            }
            let id = match lane {
                Lane::Partition { topic, partition } => {
                    format!("{}-{topic}-{partition}", self.prefix())
                }
                Lane::Global => format!("{}-global", self.prefix()),
            };
            let started = Instant::now();
            let producer = self.init_producer(&id)?;
            info!(sink = %self.name, %lane, transactional_id = %id, took_ms = started.elapsed().as_millis() as u64, "transactional producer ready (older ones fenced)");
            self.lanes.insert(
                lane.clone(),
                TxnLane {
                    producer,
                    generation: 0,
                    in_txn: false,
                    offset: None,
                },
            );
        }
        Ok(self.lanes.get_mut(lane).expect("inserted above"))
    }

    /// Fence the producer an older weir used for this lane's partition number
    /// (`<transactional_id>-<partition>`), once: its open transaction is aborted, so it
    /// neither commits late nor holds back `read_committed` readers.
    fn fence_legacy(&mut self, partition: i32) -> Result<()> {
        if self.legacy_fenced.contains(&partition) {
            return Ok(());
        }
        let id = format!("{}-{partition}", self.prefix());
        drop(self.init_producer(&id)?);
        debug!(sink = %self.name, transactional_id = %id, "fenced the producer of the naming before lanes had topics");
        self.legacy_fenced.insert(partition);
        Ok(())
    }

    /// Claim `lane`: a new producer, initialised (fencing every older one of the lane), under
    /// a new generation (see the module docs).
    fn claim(&mut self, lane: &Lane) -> Result<u64> {
        let (_, partition) = lane.checkpoint_key();
        self.fence_legacy(partition)?;
        self.lanes.remove(lane);
        self.fenced.remove(lane);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let generation = micros.max(self.last_generation + 1);
        self.last_generation = generation;
        self.lane(lane)?.generation = generation;
        Ok(generation)
    }

    /// The error of `doing` on `lane`'s producer: [`WeirError::Fenced`] (and the producer
    /// dropped) when a newer owner fenced it, else fatal.
    fn failed(&mut self, lane: &Lane, doing: &str, e: &KafkaError) -> WeirError {
        let Some(txn) = self.lanes.get(lane) else {
            return fatal(&self.name, format!("{doing}: {e}"));
        };
        let suffix = last_error_suffix(txn.producer.context());
        if is_fenced(e, &txn.producer) {
            self.lanes.remove(lane);
            self.fenced.insert(lane.clone());
            return WeirError::Fenced {
                lane: lane.to_string(),
                message: format!(
                    "{doing}: a newer producer of the lane's transactional.id fenced this one \
                     ({e}); its transaction is aborted"
                ),
            };
        }
        fatal(&self.name, format!("{doing}: {e}{suffix}"))
    }

    fn begin(&mut self, lane: &Lane) -> Result<()> {
        let txn = self.lane(lane)?;
        if !txn.in_txn {
            if let Err(e) = txn.producer.begin_transaction() {
                return Err(self.failed(lane, &format!("begin a transaction for {lane}"), &e));
            }
            self.lane(lane)?.in_txn = true;
        }
        Ok(())
    }

    fn send(
        &mut self,
        lane: &Lane,
        topic: &str,
        target: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<()> {
        let wait = self.wait;
        let txn = self.lane(lane)?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = target {
            record = record.partition(p);
        }
        match send_waiting(&txn.producer, record, wait) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(
                lane,
                &format!("produce to {topic:?} in the transaction of {lane}"),
                &e,
            )),
        }
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        let mut buf = std::mem::take(&mut self.buf);
        let encoded = json_messages(&mut buf, batch, self.config.key_column.as_deref());
        let result = (|| {
            let (keys, lines) = encoded.map_err(|e| fatal(&self.name, e))?;
            if lines.is_empty() {
                return Ok(WriteOutcome::default());
            }
            self.begin(lane)?;
            let topic = self.config.topic.trim().to_string();
            for (line, key) in lines.iter().zip(&keys) {
                let payload = line.as_ref().map(|l| &buf[l.clone()]);
                self.send(lane, &topic, None, key.as_deref(), payload)?;
            }
            self.lane(lane)?.producer.poll(Duration::ZERO);
            Ok(WriteOutcome {
                accepted: lines.len(),
                rejected: Vec::new(),
            })
        })();
        self.buf = buf;
        result
    }

    fn prepare(&mut self, lane: &Lane) -> Result<()> {
        let wait = self.wait;
        let Some(txn) = self.lanes.get_mut(lane) else {
            return Ok(());
        };
        if let Err(e) = txn.producer.flush(wait) {
            return Err(self.failed(lane, &format!("deliver the transaction of {lane}"), &e));
        }
        let failed = txn.producer.context().take_failed();
        if let Some(f) = failed.first() {
            let doing = format!(
                "{} message(s) of the transaction of {lane} were not delivered",
                failed.len()
            );
            return Err(self.failed(lane, &doing, &f.error));
        }
        Ok(())
    }

    fn save(&mut self, c: &Checkpoint) -> Result<()> {
        let bytes = encode(c)?;
        let lane = Lane::from_checkpoint_key(&c.topic, c.partition);
        // This process's own claims: a newer one replaced the lane's producer. Other
        // processes' claims are the broker's to refuse, at the latest at commit.
        let current = self.lanes.get(&lane).map_or(0, |l| l.generation);
        if current != c.generation {
            return Err(WeirError::Fenced {
                lane: lane.to_string(),
                message: format!(
                    "checkpoint epoch {} of generation {} not saved: this worker's producer \
                     of the lane is of generation {current} (0: none, it was fenced)",
                    c.epoch, c.generation
                ),
            });
        }
        self.begin(&lane)?;
        let key = checkpoint_key(&self.txn.pipeline, &c.topic, c.partition);
        let target = c.partition.rem_euclid(self.checkpoint_partitions);
        let topic = self
            .config
            .checkpoint_topic
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_string();
        self.send(
            &lane,
            &topic,
            Some(target),
            Some(key.as_bytes()),
            Some(&bytes),
        )?;
        // The global stage reads no topic of the group: it has no offset to commit.
        let offset = (lane != Lane::Global).then(|| (c.topic.clone(), c.next_offset));
        self.lane(&lane)?.offset = offset;
        Ok(())
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let (name, wait) = (self.name.clone(), self.wait);
        let group = &self.group;
        let Some(txn) = self.lanes.get_mut(lane) else {
            return Ok(());
        };
        if !txn.in_txn {
            return Ok(());
        }
        if let (Some((topic, next)), Some(partition)) = (txn.offset.take(), lane.partition()) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(next))
                .map_err(|e| fatal(&name, format!("{topic}/{partition}: {e}")))?;
            if let Err(e) = txn.producer.send_offsets_to_transaction(&tpl, group, wait) {
                let doing =
                    format!("add the group offset of {topic}/{partition} to the transaction");
                return Err(self.failed(lane, &doing, &e));
            }
        }
        if let Err(e) = txn.producer.commit_transaction(wait) {
            let doing = format!("commit the transaction of {lane} (epoch {epoch})");
            return Err(self.failed(lane, &doing, &e));
        }
        let txn = self
            .lanes
            .get_mut(lane)
            .expect("invariant: committed above");
        txn.in_txn = false;
        debug!(sink = %name, %lane, epoch, "transaction committed");
        Ok(())
    }

    /// The last committed checkpoint of `topic/partition` (see the module docs).
    fn load(&mut self, topic: &str, partition: i32) -> Result<Option<Checkpoint>> {
        // Unless claimed (which did it), a producer for the lane, fencing every older one (of
        // another worker, or of a weir from before lanes had topics): their open transactions
        // are aborted, so the read below is not held back by them.
        let lane = Lane::from_checkpoint_key(&Arc::from(topic), partition);
        if !self.lanes.contains_key(&lane) && !self.fenced.contains(&lane) {
            self.fence_legacy(partition)?;
            self.lane(&lane)?;
        }
        let ckpt_topic = self
            .config
            .checkpoint_topic
            .as_deref()
            .unwrap_or_default()
            .trim();
        let target = partition.rem_euclid(self.checkpoint_partitions);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(ckpt_topic, target, Offset::Beginning)
            .map_err(|e| fatal(&self.name, format!("{ckpt_topic}/{target}: {e}")))?;
        let consumer = &self.checkpoint_reader;
        consumer
            .assign(&tpl)
            .map_err(|e| self.error("assign the checkpoint topic", &e, None))?;
        let key = checkpoint_key(&self.txn.pipeline, topic, partition);
        let place = format!("kafka topic {ckpt_topic} partition {target} key {key}");
        let deadline = Instant::now() + self.wait;
        // Every checkpoint record of the lane, oldest first: which one was committed is
        // decided below.
        let mut records: Vec<Vec<u8>> = Vec::new();
        loop {
            if Instant::now() > deadline {
                return Err(WeirError::Sink {
                    sink: self.name.clone(),
                    message: format!(
                        "reading checkpoints from {place} did not reach its end within {} ms{}",
                        self.wait.as_millis(),
                        last_error_suffix(consumer.context())
                    ),
                    class: ErrorClass::Transient,
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) if m.key() == Some(key.as_bytes()) => {
                    records.extend(m.payload().map(<[u8]>::to_vec));
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) if classify(&e) == ErrorClass::Transient => {}
                Some(Err(e)) => return Err(self.error(&format!("read {place}"), &e, None)),
            }
        }
        // `read_committed` hides the records of aborted transactions only when the broker
        // reports them (a test broker may not). The group offset commits in the same
        // transaction as the checkpoint, so a checkpoint past the group's committed offset
        // belongs to a transaction that never committed: the last one at or below it wins.
        let committed = match lane {
            Lane::Partition { .. } => self.group_offset(topic, partition)?,
            Lane::Global => None,
        };
        for bytes in records.iter().rev() {
            let c = decode(bytes, Path::new(&place))?;
            match committed {
                Some(offset) if c.next_offset > offset => {
                    debug!(
                        lane = %lane,
                        epoch = c.epoch,
                        next_offset = c.next_offset,
                        committed = offset,
                        "checkpoint of an aborted transaction skipped"
                    );
                }
                _ => return Ok(Some(c)),
            }
        }
        Ok(None)
    }

    /// The source group's committed offset of `topic/partition`, if it has one.
    fn group_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got = self
            .group_consumer
            .committed_offsets(tpl, self.wait)
            .map_err(|e| self.error("read the group's committed offset", &e, None))?;
        Ok(got
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }
}

/// The client that reads the checkpoint topic: `read_committed`, and a fetch at the end of a
/// partition answers at once (the broker would otherwise hold it for up to 500 ms,
/// librdkafka's default, for every partition loaded).
fn checkpoint_reader(name: &str, config: &KafkaSinkConfig) -> Result<BaseConsumer<KafkaContext>> {
    client_config(
        &config.brokers,
        &config.options,
        &[
            ("group.id", "weir-checkpoint-reader"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", "10"),
        ],
        &[],
    )
    .create_with_context(KafkaContext::default())
    .map_err(|e| fatal(name, format!("cannot create the checkpoint reader: {e}")))
}

fn checkpoint_key(pipeline: &str, topic: &str, partition: i32) -> String {
    format!("{pipeline}/{topic}/{partition}")
}

impl EpochParticipant for KafkaTxnStore {
    /// Nothing to do: `claim`, which the executor calls first for the lane, replaced its
    /// producer and so aborted whatever transaction was open. Only committed output counts.
    fn recover(&mut self, lane: &Lane, committed_epoch: Option<u64>) -> Result<()> {
        debug!(sink = %self.name, %lane, ?committed_epoch, "recovered (uncommitted transactions are aborted)");
        Ok(())
    }

    fn prepare(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        self.lock()?.prepare(lane)
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.lock()?.commit(lane, epoch)
    }
}

impl SinkWriter for KafkaTxnStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        self.lock()?.write(lane, batch)
    }
}

impl CheckpointStore for KafkaTxnStore {
    fn claim(&self, topic: &str, partition: i32) -> Result<u64> {
        self.lock()?
            .claim(&Lane::from_checkpoint_key(&Arc::from(topic), partition))
    }

    fn load(&self, topic: &str, partition: i32) -> Result<Option<Checkpoint>> {
        self.lock()?.load(topic, partition)
    }

    /// Produces the checkpoint into the partition's open transaction; `commit` commits it
    /// with the rows and the group offset.
    fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        self.lock()?.save(checkpoint)
    }
}
