//! The `postgres` DLQ against a real server (`WEIR_PG_URL`): in the `postgres` sink's lane
//! transaction its letters commit with the rows and the checkpoint (and are replayed with
//! them when the connection is lost); on its own it inserts at `prepare`, one row per id;
//! replay marks; every field reads back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use weir_connectors::postgres::dlq::read_dead_letters;
use weir_connectors::postgres::{
    CheckpointRole, PostgresDlq, PostgresDlqConfig, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
use weir_connectors::DeadLetterRecord;
use weir_runtime::arrow::array::{Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{
    Checkpoint, Counters, DeadLetter, DlqWriter, ErrorClass, ErrorKind, Lane, OperatorState,
    SinkWriter, Stage,
};

fn url() -> String {
    std::env::var("WEIR_PG_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .expect("WEIR_PG_URL is not set: start PostgreSQL with `export \"$(scripts/postgres.sh start)\"`")
}

fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "weir_{what}_{}_{:x}_{}",
        std::process::id(),
        nanos % 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sink_config(schema: &str) -> PostgresSinkConfig {
    PostgresSinkConfig {
        url: PostgresUrl::new(url()),
        table: "t".into(),
        key_columns: vec!["k".into()],
        create_table: true,
        schema: Some(schema.to_string()),
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    }
}

fn dlq_config(schema: &str) -> PostgresDlqConfig {
    PostgresDlqConfig {
        schema: Some(schema.to_string()),
        ..PostgresDlqConfig::new(url(), "dead")
    }
}

fn lane() -> Lane {
    Lane::new("orders", 0)
}

fn kv(rows: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn checkpoint(pipeline: &str, epoch: u64, next_offset: i64, generation: u64) -> Checkpoint {
    Checkpoint {
        pipeline: pipeline.to_string(),
        topic: "orders".into(),
        partition: 0,
        epoch,
        next_offset,
        counters: Counters::default(),
        operators: Vec::new(),
        reset: false,
        generation,
        parked: OperatorState::default(),
    }
}

fn letter(pipeline: &str, offset: i64, time_ms: i64) -> DeadLetter {
    DeadLetter {
        pipeline: Arc::from(pipeline),
        topic: Arc::from("orders"),
        partition: 0,
        offset,
        key: Some(vec![0xff, 0, b'k']),
        payload: Some(format!("{{\"bad\": {offset}").into_bytes()),
        kind: ErrorKind::InvalidJson,
        message: format!("expected `}}` at {offset}"),
        stage: Stage::Decode,
        attempts: 1,
        time_ms,
        first_failure_ms: time_ms,
    }
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn kill(c: &mut Client, app: &str) {
    let n: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one session named {app:?}");
}

#[test]
fn in_the_sinks_transaction_dead_letters_commit_with_the_rows_and_checkpoint_or_not_at_all() {
    let schema = unique("dlq_shared");
    let pipeline = schema.clone();
    let mut c = Client::connect(&url(), NoTls).unwrap();
    let mut store = PostgresStore::connect_as(
        "pg",
        &sink_config(&schema),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    let checkpoints = store.checkpoint_store().unwrap();
    let mut dlq = PostgresDlq::connect(&dlq_config(&schema), &pipeline, Some(&store)).unwrap();
    assert!(dlq.shares_the_sink_transaction());
    let dead = format!("SELECT count(*) FROM \"{schema}\".dead");
    let rows = format!("SELECT count(*) FROM \"{schema}\".t");

    // Epoch 1: a row and a dead letter, then a crash before the commit: neither is there.
    let generation = checkpoints.claim("orders", 0).unwrap();
    store.write(&lane(), &kv(&[("a", 1)])).unwrap();
    dlq.write(&lane(), &[letter(&pipeline, 1, 10)]).unwrap();
    store.prepare(&lane(), 1).unwrap();
    dlq.prepare(&lane(), 1).unwrap();
    checkpoints
        .save(&checkpoint(&pipeline, 1, 2, generation))
        .unwrap();
    assert_eq!(count(&mut c, &dead), 0, "not visible before the commit");
    drop((store, checkpoints, dlq));
    assert_eq!((count(&mut c, &rows), count(&mut c, &dead)), (0, 0));

    // Again, and the lane's connection is killed between the checkpoint and the commit: the
    // commit's retry replays rows, letter and checkpoint in a new transaction.
    let mut store = PostgresStore::connect_as(
        "pg",
        &sink_config(&schema),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    let checkpoints = store.checkpoint_store().unwrap();
    let mut dlq = PostgresDlq::connect(&dlq_config(&schema), &pipeline, Some(&store)).unwrap();
    let generation = checkpoints.claim("orders", 0).unwrap();
    store.recover(&lane(), None).unwrap();
    dlq.recover(&lane(), None).unwrap();
    store.write(&lane(), &kv(&[("a", 1)])).unwrap();
    dlq.write(&lane(), &[letter(&pipeline, 1, 10)]).unwrap();
    store.prepare(&lane(), 1).unwrap();
    dlq.prepare(&lane(), 1).unwrap();
    checkpoints
        .save(&checkpoint(&pipeline, 1, 2, generation))
        .unwrap();
    kill(&mut c, &format!("weir {pipeline}/pg p0"));
    let e = store.commit(&lane(), 1).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    store.commit(&lane(), 1).unwrap();
    dlq.commit(&lane(), 1).unwrap();
    assert_eq!((count(&mut c, &rows), count(&mut c, &dead)), (1, 1));

    // A replay mark is in the lane's transaction too.
    let id = letter(&pipeline, 1, 10).id();
    dlq.mark_replayed(&lane(), std::slice::from_ref(&id))
        .unwrap();
    let replayed = format!("SELECT count(*) FROM \"{schema}\".dead WHERE replayed_at IS NOT NULL");
    assert_eq!(count(&mut c, &replayed), 0);
    store.prepare(&lane(), 2).unwrap();
    checkpoints
        .save(&checkpoint(&pipeline, 2, 2, generation))
        .unwrap();
    store.commit(&lane(), 2).unwrap();
    assert_eq!(count(&mut c, &replayed), 1);
    let back = read_dead_letters(&dlq_config(&schema), &pipeline).unwrap();
    assert_eq!(back.len(), 1);
    assert!(back[0].replayed_ms.is_some());
}

#[test]
fn on_its_own_it_inserts_at_prepare_one_row_per_id_and_marks_at_commit() {
    let schema = unique("dlq_own");
    let pipeline = schema.clone();
    let mut c = Client::connect(&url(), NoTls).unwrap();
    let mut dlq = PostgresDlq::connect(&dlq_config(&schema), &pipeline, None).unwrap();
    assert!(!dlq.shares_the_sink_transaction());
    let first = letter(&pipeline, 3, 1_700_000_000_123);
    let mut other = letter(&pipeline, 4, 1_700_000_000_200);
    other.key = None;
    other.payload = None;
    other.stage = Stage::Sink("sinks[0]".into());
    other.kind = ErrorKind::SinkRejected;
    dlq.write(&lane(), &[first.clone(), other.clone()]).unwrap();
    let dead = format!("SELECT count(*) FROM \"{schema}\".dead");
    assert_eq!(count(&mut c, &dead), 0, "written at prepare");
    dlq.prepare(&lane(), 1).unwrap();
    assert_eq!(count(&mut c, &dead), 2);
    dlq.commit(&lane(), 1).unwrap();

    // Every field reads back, to the millisecond.
    let back = read_dead_letters(&dlq_config(&schema), &pipeline).unwrap();
    assert_eq!(
        back,
        vec![
            DeadLetterRecord::of_letter(&first),
            DeadLetterRecord::of_letter(&other)
        ]
    );
    assert!(read_dead_letters(&dlq_config(&schema), "another pipeline")
        .unwrap()
        .is_empty());

    // Written again under the same id (a rerun, a replay that failed again): one row, the
    // first failure kept, the rest the newer letter's.
    let mut again = first.clone();
    again.attempts = 2;
    again.time_ms += 1000;
    again.message = "still bad".into();
    dlq.mark_replayed(&lane(), std::slice::from_ref(&other.id()))
        .unwrap();
    dlq.write(&lane(), std::slice::from_ref(&again)).unwrap();
    dlq.prepare(&lane(), 2).unwrap();
    let replayed = format!("SELECT count(*) FROM \"{schema}\".dead WHERE replayed_at IS NOT NULL");
    assert_eq!(count(&mut c, &replayed), 0, "marks wait for the commit");
    dlq.commit(&lane(), 2).unwrap();
    let back = read_dead_letters(&dlq_config(&schema), &pipeline).unwrap();
    assert_eq!(back.len(), 2);
    let a = back.iter().find(|r| r.id == first.id()).unwrap();
    assert_eq!(
        (
            a.letter.attempts,
            a.letter.first_failure_ms,
            a.letter.time_ms,
            a.letter.message.as_str()
        ),
        (2, first.first_failure_ms, again.time_ms, "still bad")
    );
    let o = back.iter().find(|r| r.id == other.id()).unwrap();
    assert!(o.replayed_ms.is_some() && a.replayed_ms.is_none());

    // A crash before prepare: recover forgets the unwritten letters.
    dlq.write(&lane(), &[letter(&pipeline, 9, 5)]).unwrap();
    dlq.recover(&lane(), Some(2)).unwrap();
    dlq.prepare(&lane(), 3).unwrap();
    assert_eq!(count(&mut c, &dead), 2);
}
