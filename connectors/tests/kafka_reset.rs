//! `weir reset` of a pipeline whose checkpoints live in a transactional kafka sink's
//! checkpoint topic (librdkafka's mock cluster): every checkpoint of the pipeline, and only of
//! it, is replaced by a reset marker that the store's `load` returns, epoch kept.

use std::sync::Arc;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use weir_connectors::kafka::reset::{stored_checkpoints, write_reset_markers};
use weir_connectors::kafka::{KafkaSinkConfig, KafkaTxnOptions, KafkaTxnStore};
use weir_runtime::{Checkpoint, CheckpointStore, Counters, EpochParticipant};

fn store(brokers: &str, pipeline: &str, ckpt: &str) -> (KafkaSinkConfig, KafkaTxnStore) {
    let mut sink = KafkaSinkConfig::new(brokers, "out");
    sink.transactional_id = Some(format!("{pipeline}-txn"));
    sink.checkpoint_topic = Some(ckpt.into());
    sink.connect_timeout_ms = 10_000;
    let store = KafkaTxnStore::connect(
        "out",
        &sink,
        KafkaTxnOptions {
            group_id: format!("{pipeline}-group"),
            pipeline: pipeline.into(),
        },
    )
    .unwrap();
    (sink, store)
}

fn checkpoint(pipeline: &str, partition: i32, epoch: u64) -> Checkpoint {
    Checkpoint {
        pipeline: pipeline.into(),
        topic: Arc::from("in"),
        partition,
        epoch,
        next_offset: 100 + i64::from(partition),
        counters: Counters::default(),
        operators: Vec::new(),
        parked: Default::default(),
        reset: false,
        generation: 0,
    }
}

fn save(store: &mut KafkaTxnStore, c: &Checkpoint) {
    let lane = weir_runtime::Lane::new(c.topic.clone(), c.partition);
    EpochParticipant::prepare(store, &lane, c.epoch).unwrap();
    CheckpointStore::save(store, c).unwrap();
    EpochParticipant::commit(store, &lane, c.epoch).unwrap();
}

#[test]
fn reset_markers_replace_only_the_pipelines_checkpoints_in_the_topic() {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for t in ["in", "out", "ckpt"] {
        cluster.create_topic(t, 2, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let (sink, mut a) = store(&brokers, "a", "ckpt");
    let (_, mut b) = store(&brokers, "b", "ckpt");
    for p in 0..2 {
        save(&mut a, &checkpoint("a", p, 3));
        save(&mut b, &checkpoint("b", p, 5));
    }
    let found = stored_checkpoints(&sink, "a").unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found
        .iter()
        .all(|s| s.checkpoint.epoch == 3 && !s.checkpoint.reset));

    write_reset_markers(&sink, &found).unwrap();
    for p in 0..2 {
        let c = CheckpointStore::load(&a, "in", p).unwrap().unwrap();
        assert!(c.reset, "partition {p} of a is not reset: {c:?}");
        assert_eq!(c.epoch, 3);
        let other = CheckpointStore::load(&b, "in", p).unwrap().unwrap();
        assert_eq!(other, checkpoint("b", p, 5), "pipeline b was touched");
    }
}
