//! Fencing of the transactional Kafka sink and checkpoint store on a real broker (Apache
//! Kafka: `WEIR_KAFKA_BROKERS`, from `scripts/kafka.sh start`; without it these tests fail):
//! once a new owner claimed a lane, the old owner's late transaction is refused as fenced
//! and none of it becomes visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::block_on;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_connectors::kafka::{KafkaSinkConfig, KafkaTxnOptions, KafkaTxnStore};
use weir_runtime::arrow::array::StringArray;
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::{
    Checkpoint, CheckpointStore, Counters, EpochParticipant, ErrorClass, Lane, SinkWriter,
    WeirError,
};

fn brokers() -> String {
    match std::env::var("WEIR_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "WEIR_KAFKA_BROKERS is not set: these tests need a Kafka broker. Start one with \
             `scripts/kafka.sh start` from the workspace root (it prints \
             WEIR_KAFKA_BROKERS=127.0.0.1:PORT), run the tests, then `scripts/kafka.sh stop`."
        ),
    }
}

fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "weir-fence-{what}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn create_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in block_on(admin.create_topics(&topics, &options)).expect("create topics") {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// One worker's store: the same sink config (transactional id, topics, group) as every other.
fn store(output: &str, checkpoints: &str, group: &str) -> KafkaTxnStore {
    let mut sink = KafkaSinkConfig::new(brokers(), output);
    sink.key_column = Some("id".into());
    sink.transactional_id = Some(format!("{output}-txn"));
    sink.checkpoint_topic = Some(checkpoints.into());
    sink.connect_timeout_ms = 20_000;
    KafkaTxnStore::connect(
        "out",
        &sink,
        KafkaTxnOptions {
            group_id: group.into(),
            pipeline: "fence".into(),
        },
    )
    .unwrap()
}

fn rows(ids: &[&str]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap()
}

fn checkpoint(input: &str, epoch: u64, next_offset: i64, generation: u64) -> Checkpoint {
    Checkpoint {
        pipeline: "fence".into(),
        topic: Arc::from(input),
        partition: 0,
        epoch,
        next_offset,
        counters: Counters::default(),
        operators: Vec::new(),
        parked: Default::default(),
        reset: false,
        generation,
    }
}

/// One epoch of `store` in `lane`: write, prepare, save, commit; the first error.
fn epoch(
    store: &mut KafkaTxnStore,
    lane: &Lane,
    ids: &[&str],
    c: &Checkpoint,
) -> weir_runtime::error::Result<()> {
    store.write(lane, &rows(ids))?;
    store.prepare(lane, c.epoch)?;
    CheckpointStore::save(store, c)?;
    store.commit(lane, c.epoch)
}

/// The `id` of every message of `topic` that a `read_committed` reader sees.
fn committed_ids(topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{topic} not read to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let row: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                ids.push(row["id"].as_str().unwrap().to_string());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return ids,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
}

#[test]
fn a_late_owners_transaction_is_refused_as_fenced_and_stays_invisible() {
    let (input, output, checkpoints) = (unique("in"), unique("out"), unique("ckpt"));
    create_topics(&[&input, &output, &checkpoints]);
    let group = unique("group");
    let lane = Lane::new(input.as_str(), 0);
    let (mut a, mut b) = (
        store(&output, &checkpoints, &group),
        store(&output, &checkpoints, &group),
    );

    let generation_a = CheckpointStore::claim(&a, &input, 0).unwrap();
    let first = checkpoint(&input, 1, 10, generation_a);
    epoch(&mut a, &lane, &["a1"], &first).unwrap();

    // A goes on with epoch 2 while B takes the lane over.
    a.write(&lane, &rows(&["a2 late"])).unwrap();
    a.prepare(&lane, 2).unwrap();
    let generation_b = CheckpointStore::claim(&b, &input, 0).unwrap();
    assert_ne!(generation_b, generation_a);
    assert_eq!(CheckpointStore::load(&b, &input, 0).unwrap(), Some(first));

    // A's late checkpoint or its commit is refused as fenced: not a fatal error.
    let late = checkpoint(&input, 2, 20, generation_a);
    let err = CheckpointStore::save(&a, &late)
        .and_then(|()| a.commit(&lane, 2))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fenced, "{err}");
    assert!(matches!(err, WeirError::Fenced { .. }), "{err}");

    // B's epoch 2 commits; A's changed nothing.
    let taken_over = checkpoint(&input, 2, 15, generation_b);
    epoch(&mut b, &lane, &["b2"], &taken_over).unwrap();
    assert_eq!(committed_ids(&output), ["a1", "b2"]);
    assert_eq!(
        CheckpointStore::load(&b, &input, 0).unwrap(),
        Some(taken_over.clone())
    );

    // A retries its epoch: refused again, and still nothing of it is visible.
    let err = epoch(&mut a, &lane, &["a2 retried"], &late).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fenced, "{err}");
    assert_eq!(committed_ids(&output), ["a1", "b2"]);
    assert_eq!(
        CheckpointStore::load(&b, &input, 0).unwrap(),
        Some(taken_over)
    );
}
