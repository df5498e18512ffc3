//! The PostgreSQL sink and checkpoint store against a real server.
//!
//! The server's URL comes from `WEIR_PG_URL`; start one with
//! `export "$(scripts/postgres.sh start)"` (and `scripts/postgres.sh stop` afterwards). Without
//! it these tests fail: a skipped test would look like a passing one. Every test works in its
//! own schema (tables and checkpoint table included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use weir_connectors::postgres::{CheckpointRole, PostgresSinkConfig, PostgresStore, PostgresUrl};
use weir_runtime::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, LargeStringArray, StringArray, StringViewArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, UInt16Array, UInt32Array, UInt64Array,
    UInt8Array,
};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{
    Checkpoint, CheckpointStore, Counters, ErrorClass, Guarantee, OperatorState, SinkWriter,
    WeirError, DELETED_COLUMN, OFFSET_COLUMN,
};

// ---------------------------------------------------------------------------------------------
// Support

fn url() -> String {
    match std::env::var("WEIR_PG_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "WEIR_PG_URL is not set: these tests need a PostgreSQL server. Start one with \
             `export \"$(scripts/postgres.sh start)\"` from the workspace root (it prints \
             WEIR_PG_URL=postgres://..., also in .services/postgres.env), run the tests, then \
             `scripts/postgres.sh stop`."
        ),
    }
}

/// A schema name no other test (or earlier run against the same server) uses.
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

fn client() -> Client {
    let mut c = Client::connect(&url(), NoTls).unwrap();
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    c
}

fn config(schema: &str, keys: &[&str]) -> PostgresSinkConfig {
    PostgresSinkConfig {
        url: PostgresUrl::new(url()),
        table: "t".into(),
        key_columns: keys.iter().map(|k| k.to_string()).collect(),
        create_table: true,
        schema: Some(schema.to_string()),
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    }
}

/// (k, v, note) rows plus the decoder's offset column, which the sink must not write.
fn batch(rows: &[(Option<&str>, Option<i64>, Option<&str>)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("note", DataType::Utf8, true),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from((0..rows.len() as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn kv(rows: &[(&str, i64)]) -> RecordBatch {
    batch(
        &rows
            .iter()
            .map(|(k, v)| (Some(*k), Some(*v), Some("n")))
            .collect::<Vec<_>>(),
    )
}

/// (k, v) upserts and deletes: `(k, Some(v))` upserts, `(k, None)` deletes `k` (its other
/// columns null, as a delete needs only the key).
fn changes(rows: &[(&str, Option<i64>)]) -> RecordBatch {
    let b = batch(
        &rows
            .iter()
            .map(|(k, v)| (Some(*k), *v, v.map(|_| "n")))
            .collect::<Vec<_>>(),
    );
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
    let mut columns = b.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from(
        rows.iter().map(|(_, v)| v.is_none()).collect::<Vec<_>>(),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// Partition `p` of the checkpoints' topic.
fn lane(p: i32) -> weir_runtime::Lane {
    weir_runtime::Lane::new("orders", p)
}

fn checkpoint(pipeline: &str, partition: i32, epoch: u64, next_offset: i64) -> Checkpoint {
    let state = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("sum", DataType::Float64, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(Float64Array::from(vec![Some(1.5), None])),
        ],
    )
    .unwrap();
    Checkpoint {
        pipeline: pipeline.to_string(),
        topic: "orders".into(),
        partition,
        epoch,
        next_offset,
        counters: Counters {
            consumed: next_offset as u64,
            rows_out: 3,
            ..Default::default()
        },
        operators: vec![
            OperatorState::default(),
            OperatorState {
                meta: serde_json::json!({"max_event_time": 1234}),
                batches: vec![state],
                config: None,
            },
        ],
        parked: OperatorState::default(),
        reset: false,
        generation: 0,
    }
}

/// `(k, v)` of every committed row of `schema.t`, as another connection sees them.
fn rows(c: &mut Client, schema: &str) -> Vec<(String, i64)> {
    c.query(&format!("SELECT k, v FROM \"{schema}\".t ORDER BY k"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The stored (epoch, next_offset) of a partition, as another connection sees it.
fn stored(c: &mut Client, schema: &str, pipeline: &str, partition: i32) -> Option<(i64, i64)> {
    c.query_opt(
        &format!(
            "SELECT epoch, next_offset FROM \"{schema}\".weir_checkpoints \
             WHERE pipeline = $1 AND topic = 'orders' AND partition = $2"
        ),
        &[&pipeline, &partition],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// Ends the session of lane `partition` from another connection, and waits until it is gone.
fn kill_lane(c: &mut Client, pipeline: &str, partition: i32) {
    let app = format!("weir {pipeline}/pg p{partition}");
    let killed: Vec<bool> = c
        .query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(killed, [true], "one session named {app:?}");
}

/// `f` fails once with a transient error (the lost connection), then succeeds when retried,
/// as the executor's retry would.
fn transient_then_ok<T>(what: &str, mut f: impl FnMut() -> weir_runtime::error::Result<T>) -> T {
    match f() {
        Err(e) => assert_eq!(e.class(), ErrorClass::Transient, "{what}: {e}"),
        Ok(_) => panic!("{what}: succeeded on a killed connection"),
    }
    f().unwrap_or_else(|e| panic!("{what} retried: {e}"))
}

/// A table made by the test, with a trigger that records every row applied to it in `audit`,
/// so that an application repeated inside a committed transaction shows.
fn audited_table(c: &mut Client, schema: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".t (k text PRIMARY KEY, v int8, note text);
         CREATE TABLE \"{schema}\".audit (k text, v int8);
         CREATE FUNCTION \"{schema}\".audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO \"{schema}\".audit VALUES (NEW.k, NEW.v); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON \"{schema}\".t
           FOR EACH ROW EXECUTE FUNCTION \"{schema}\".audit();"
    ))
    .unwrap();
}

fn audit(c: &mut Client, schema: &str) -> Vec<(String, i64)> {
    c.query(
        &format!("SELECT k, v FROM \"{schema}\".audit ORDER BY k, v"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_supported_type_round_trips_and_a_second_write_updates_by_key() {
    let schema = unique("types");
    let mut sink = PostgresStore::connect("pg", &config(&schema, &["id"]), "types").unwrap();
    assert_eq!(sink.guarantee(), Guarantee::IdempotentUpsert);
    let fields = vec![
        Field::new("id", DataType::Int32, false),
        Field::new("i16", DataType::Int16, true),
        Field::new("i64", DataType::Int64, true),
        Field::new("u8", DataType::UInt8, true),
        Field::new("u16", DataType::UInt16, true),
        Field::new("u32", DataType::UInt32, true),
        Field::new("u64", DataType::UInt64, true),
        Field::new("f32", DataType::Float32, true),
        Field::new("f64", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ls", DataType::LargeUtf8, true),
        Field::new("sv", DataType::Utf8View, true),
        Field::new("b", DataType::Boolean, true),
        Field::new(
            "tstz",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("d", DataType::Date32, true),
        Field::new("bin", DataType::Binary, true),
        Field::new("dec", DataType::Decimal128(38, 4), true),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![1, 2, 3])),
        Arc::new(Int16Array::from(vec![Some(-7), None, Some(i16::MAX)])),
        Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(42)])),
        Arc::new(UInt8Array::from(vec![Some(255), None, Some(0)])),
        Arc::new(UInt16Array::from(vec![Some(65_535), None, Some(1)])),
        Arc::new(UInt32Array::from(vec![Some(u32::MAX), None, Some(2)])),
        Arc::new(UInt64Array::from(vec![
            Some(i64::MAX as u64),
            None,
            Some(u64::MAX),
        ])),
        Arc::new(Float32Array::from(vec![Some(0.5), None, Some(-1.25)])),
        Arc::new(Float64Array::from(vec![Some(1e300), None, Some(f64::NAN)])),
        Arc::new(StringArray::from(vec![
            Some("héllo \"q\" 'x'"),
            None,
            Some(""),
        ])),
        Arc::new(LargeStringArray::from(vec![Some("large"), None, Some("l")])),
        Arc::new(StringViewArray::from(vec![
            Some("a view longer than twelve bytes"),
            None,
            Some("v"),
        ])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None, Some(0)])
                .with_timezone("UTC"),
        ),
        Arc::new(TimestampMillisecondArray::from(vec![
            Some(-86_400_000),
            None,
            Some(1_700_000_000_123),
        ])),
        Arc::new(Date32Array::from(vec![Some(19_723), None, Some(-1)])),
        Arc::new(BinaryArray::from(vec![
            Some(&[0u8, 1, 255][..]),
            None,
            Some(&b""[..]),
        ])),
        Arc::new(
            // Beyond float8: every digit must arrive.
            Decimal128Array::from(vec![Some(-(10i128.pow(37) + 1)), None, Some(1)])
                .with_precision_and_scale(38, 4)
                .unwrap(),
        ),
    ];
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields.clone())), columns).unwrap();
    let outcome = sink.write(&lane(0), &b).unwrap();
    assert_eq!(outcome.accepted, 2);
    assert_eq!(outcome.rejected.len(), 1, "{:?}", outcome.rejected);
    assert_eq!(outcome.rejected[0].0, 2, "u64::MAX does not fit int8");
    assert!(
        outcome.rejected[0].1.contains("\"u64\""),
        "{:?}",
        outcome.rejected
    );
    sink.prepare(&lane(0), 1).unwrap();
    sink.commit(&lane(0), 1).unwrap();

    let mut c = client();
    let types: Vec<(String, String)> = c
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 't' ORDER BY ordinal_position",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected_types = [
        ("id", "int4"),
        ("i16", "int2"),
        ("i64", "int8"),
        ("u8", "int2"),
        ("u16", "int4"),
        ("u32", "int8"),
        ("u64", "int8"),
        ("f32", "float4"),
        ("f64", "float8"),
        ("s", "text"),
        ("ls", "text"),
        ("sv", "text"),
        ("b", "bool"),
        ("tstz", "timestamptz"),
        ("ts", "timestamp"),
        ("d", "date"),
        ("bin", "bytea"),
        ("dec", "numeric"),
    ];
    assert_eq!(
        types,
        expected_types
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(
        !types.iter().any(|(name, _)| name == OFFSET_COLUMN),
        "the offset column is never written"
    );

    let text_of_all = format!(
        "SELECT {} FROM \"{schema}\".t ORDER BY id",
        fields
            .iter()
            .map(|f| format!("coalesce(\"{}\"::text, 'NULL')", f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let read = |c: &mut Client| -> Vec<Vec<String>> {
        c.query(&text_of_all, &[])
            .unwrap()
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect())
            .collect()
    };
    let row = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    assert_eq!(
        read(&mut c),
        [
            row(&[
                "1",
                "-7",
                "-9223372036854775808",
                "255",
                "65535",
                "4294967295",
                "9223372036854775807",
                "0.5",
                "1e+300",
                "héllo \"q\" 'x'",
                "large",
                "a view longer than twelve bytes",
                "true",
                "2023-11-14 22:13:20.123456+00",
                "1969-12-31 00:00:00",
                "2024-01-01",
                "\\x0001ff",
                "-1000000000000000000000000000000000.0001",
            ]),
            row(&["2"; 1]
                .iter()
                .copied()
                .chain(std::iter::repeat_n("NULL", 17))
                .collect::<Vec<_>>()),
        ]
    );

    // The same key again: the non-key columns of the batch are replaced.
    let update = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("s", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![2, 2])),
            Arc::new(StringArray::from(vec![Some("first"), Some("second")])),
        ],
    )
    .unwrap();
    let outcome = sink.write(&lane(0), &update).unwrap();
    assert_eq!(outcome.accepted, 2, "{outcome:?}");
    sink.prepare(&lane(0), 2).unwrap();
    sink.commit(&lane(0), 2).unwrap();
    let s: Vec<(i32, Option<String>)> = c
        .query(
            &format!("SELECT id, s FROM \"{schema}\".t ORDER BY id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        s,
        [
            (1, Some("héllo \"q\" 'x'".to_string())),
            (2, Some("second".to_string()))
        ],
        "the last row of a key in a batch wins"
    );

    // A type PostgreSQL has no mapping for here is an error naming the column and the type.
    let decimal = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("price", DataType::Decimal128(10, -2), true),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![1])),
            Arc::new(
                Decimal128Array::from(vec![Some(1234)])
                    .with_precision_and_scale(10, -2)
                    .unwrap(),
            ),
        ],
    )
    .unwrap();
    let err = sink.write(&lane(0), &decimal).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    let text = err.to_string();
    assert!(
        text.contains("\"price\"") && text.contains("Decimal128(10, -2)"),
        "{text}"
    );
}

#[test]
fn rows_and_checkpoint_of_a_partition_commit_together_and_alone() {
    let schema = unique("together");
    let pipeline = schema.clone();
    let mut store = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    let checkpoints = store.checkpoint_store().unwrap();
    assert_eq!(store.guarantee(), Guarantee::ExactlyOnce);
    assert_eq!(checkpoints.load("orders", 0).unwrap(), None);
    let mut c = client();

    store.write(&lane(0), &kv(&[("a", 1), ("b", 2)])).unwrap();
    store.write(&lane(1), &kv(&[("q", 9)])).unwrap();
    store.write(&lane(0), &kv(&[("a", 3)])).unwrap();
    store.prepare(&lane(0), 1).unwrap();
    let c0 = checkpoint(&pipeline, 0, 1, 3);
    checkpoints.save(&c0).unwrap();
    assert_eq!(
        rows(&mut c, &schema),
        [],
        "nothing is visible before commit"
    );
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), None);

    store.commit(&lane(0), 1).unwrap();
    assert_eq!(
        rows(&mut c, &schema),
        [("a".to_string(), 3), ("b".to_string(), 2)],
        "partition 0's rows, and only them (partition 1 has no checkpoint yet)"
    );
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((1, 3)));
    assert_eq!(stored(&mut c, &schema, &pipeline, 1), None);

    store.prepare(&lane(1), 1).unwrap();
    let c1 = checkpoint(&pipeline, 1, 1, 1);
    checkpoints.save(&c1).unwrap();
    store.commit(&lane(1), 1).unwrap();
    assert_eq!(rows(&mut c, &schema).len(), 3);
    assert_eq!(stored(&mut c, &schema, &pipeline, 1), Some((1, 1)));

    // A checkpoint with no new rows still commits.
    let c0b = checkpoint(&pipeline, 0, 2, 5);
    store.prepare(&lane(0), 2).unwrap();
    checkpoints.save(&c0b).unwrap();
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((1, 3)));
    store.commit(&lane(0), 2).unwrap();
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 5)));

    // What was saved loads back equal, also through another connection (a restarted worker),
    // and other pipelines do not see it.
    assert_eq!(checkpoints.load("orders", 0).unwrap(), Some(c0b.clone()));
    let restarted = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    assert_eq!(restarted.load("orders", 0).unwrap(), Some(c0b));
    assert_eq!(restarted.load("orders", 1).unwrap(), Some(c1));
    assert_eq!(restarted.load("orders", 2).unwrap(), None);
    assert_eq!(restarted.load("payments", 0).unwrap(), None);
    let other = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        "other",
        CheckpointRole::Store,
    )
    .unwrap();
    assert_eq!(other.load("orders", 0).unwrap(), None);
}

#[test]
fn uncommitted_work_is_gone_after_a_crash_and_recover() {
    let schema = unique("crash");
    let pipeline = schema.clone();
    let mut store = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    store.load("orders", 0).unwrap();
    store.write(&lane(0), &kv(&[("a", 1)])).unwrap();
    store.prepare(&lane(0), 1).unwrap();
    store.save(&checkpoint(&pipeline, 0, 1, 1)).unwrap();
    store.commit(&lane(0), 1).unwrap();
    store.write(&lane(0), &kv(&[("b", 2)])).unwrap();
    store.prepare(&lane(0), 2).unwrap();
    store.save(&checkpoint(&pipeline, 0, 2, 2)).unwrap();
    drop(store); // a crash before commit

    let mut c = client();
    assert_eq!(rows(&mut c, &schema), [("a".to_string(), 1)]);
    let mut store = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    let restored = store.load("orders", 0).unwrap().unwrap();
    assert_eq!(restored.epoch, 1);
    store.recover(&lane(0), Some(1)).unwrap();
    store.write(&lane(0), &kv(&[("b", 2)])).unwrap();
    store.prepare(&lane(0), 2).unwrap();
    store.save(&checkpoint(&pipeline, 0, 2, 2)).unwrap();
    store.commit(&lane(0), 2).unwrap();
    assert_eq!(rows(&mut c, &schema).len(), 2);
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 2)));
}

#[test]
fn a_connection_killed_mid_transaction_is_retried_and_nothing_is_applied_twice() {
    let schema = unique("kill");
    let pipeline = schema.clone();
    let mut c = client();
    audited_table(&mut c, &schema);
    let mut store = PostgresStore::connect_as(
        "pg",
        &config(&schema, &["k"]),
        &pipeline,
        CheckpointRole::Store,
    )
    .unwrap();
    let checkpoints = store.checkpoint_store().unwrap();

    // Killed after prepare: save fails, its retry replays the rows and saves.
    store.write(&lane(0), &kv(&[("a", 1), ("b", 1)])).unwrap();
    store.prepare(&lane(0), 1).unwrap();
    kill_lane(&mut c, &pipeline, 0);
    transient_then_ok("save", || checkpoints.save(&checkpoint(&pipeline, 0, 1, 2)));
    store.commit(&lane(0), 1).unwrap();
    assert_eq!(rows(&mut c, &schema), [("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(audit(&mut c, &schema), [("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((1, 2)));

    // Killed between save and commit: the commit fails, the stored epoch says it did not
    // land, and its retry replays rows and checkpoint, then commits.
    store.write(&lane(0), &kv(&[("c", 2)])).unwrap();
    store.write(&lane(0), &kv(&[("a", 2)])).unwrap();
    store.prepare(&lane(0), 2).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 2, 4)).unwrap();
    kill_lane(&mut c, &pipeline, 0);
    transient_then_ok("commit", || store.commit(&lane(0), 2));
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 4)));

    // Killed between two writes: the second write fails, its retry replays the first.
    store.write(&lane(0), &kv(&[("d", 3)])).unwrap();
    kill_lane(&mut c, &pipeline, 0);
    let e = kv(&[("e", 3)]);
    transient_then_ok("write", || store.write(&lane(0), &e));
    store.prepare(&lane(0), 3).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 3, 6)).unwrap();
    store.commit(&lane(0), 3).unwrap();

    assert_eq!(
        rows(&mut c, &schema),
        [
            ("a".into(), 2),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3),
            ("e".into(), 3)
        ]
    );
    assert_eq!(
        audit(&mut c, &schema),
        [
            ("a".into(), 1),
            ("a".into(), 2),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3),
            ("e".into(), 3)
        ],
        "every row was applied once, in committed transactions"
    );
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((3, 6)));
}

#[test]
fn deletes_commit_with_the_upserts_and_the_checkpoint_and_survive_a_killed_connection() {
    let schema = unique("deletes");
    let pipeline = schema.clone();
    let mut c = client();
    // `note` NOT NULL: a delete row (whose non-key columns are null) is never inserted.
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".t (k text PRIMARY KEY, v int8, note text NOT NULL)"
    ))
    .unwrap();
    let cfg = PostgresSinkConfig {
        create_table: false,
        ..config(&schema, &["k"])
    };
    let mut store =
        PostgresStore::connect_as("pg", &cfg, &pipeline, CheckpointRole::Store).unwrap();
    let checkpoints = store.checkpoint_store().unwrap();
    store
        .write(&lane(0), &kv(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]))
        .unwrap();
    store.prepare(&lane(0), 1).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 1, 4)).unwrap();
    store.commit(&lane(0), 1).unwrap();

    // a deleted; b deleted then upserted; c upserted then deleted; x never existed.
    let outcome = store
        .write(
            &lane(0),
            &changes(&[
                ("a", None),
                ("b", None),
                ("b", Some(2)),
                ("c", Some(2)),
                ("c", None),
                ("x", None),
            ]),
        )
        .unwrap();
    assert_eq!(
        (outcome.accepted, outcome.rejected.len()),
        (6, 0),
        "{outcome:?}"
    );
    // Killed before the checkpoint: the retry replays upserts and deletes in a new transaction.
    kill_lane(&mut c, &pipeline, 0);
    store.write(&lane(0), &kv(&[("e", 2)])).unwrap_err();
    store.write(&lane(0), &kv(&[("e", 2)])).unwrap();
    store.prepare(&lane(0), 2).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 2, 11)).unwrap();
    assert_eq!(
        rows(&mut c, &schema).len(),
        4,
        "deletes are invisible before the commit, like upserts"
    );
    store.commit(&lane(0), 2).unwrap();
    assert_eq!(
        rows(&mut c, &schema),
        [("b".into(), 2), ("d".into(), 1), ("e".into(), 2)]
    );
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 11)));

    // A crash before commit: the deletes of the lost transaction are not applied.
    store.write(&lane(0), &changes(&[("d", None)])).unwrap();
    store.prepare(&lane(0), 3).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 3, 12)).unwrap();
    drop(checkpoints);
    drop(store);
    assert_eq!(rows(&mut c, &schema).len(), 3);
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 11)));
}

#[test]
fn a_refused_row_is_rejected_with_its_sqlstate_and_the_others_are_written() {
    let schema = unique("reject");
    let pipeline = schema.clone();
    let mut c = client();
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".t (
           k text PRIMARY KEY, v int8 CHECK (v >= 0), note text NOT NULL)"
    ))
    .unwrap();
    let cfg = PostgresSinkConfig {
        create_table: false,
        ..config(&schema, &["k"])
    };
    let mut store =
        PostgresStore::connect_as("pg", &cfg, &pipeline, CheckpointRole::Store).unwrap();
    let checkpoints = store.checkpoint_store().unwrap();

    // A clean batch first: it must survive the rollback that finding the bad rows takes.
    store.write(&lane(0), &kv(&[("before", 0)])).unwrap();
    let b = batch(&[
        (Some("a"), Some(1), Some("ok")),
        (Some("b"), Some(-1), Some("check")),
        (Some("c"), Some(2), None),
        (None, Some(3), Some("null key")),
        (Some("d"), Some(4), Some("ok")),
        (Some("e"), Some(5), Some("nul \0 in text")),
        (None, Some(6), Some("null key")),
        (Some("f"), Some(6), Some("ok")),
    ]);
    let outcome = store.write(&lane(0), &b).unwrap();
    assert_eq!(outcome.accepted, 3, "{outcome:?}");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.0).collect();
    assert_eq!(rejected, [1, 2, 3, 5, 6], "{outcome:?}");
    let reason = |row: usize| {
        outcome
            .rejected
            .iter()
            .find(|r| r.0 == row)
            .unwrap()
            .1
            .clone()
    };
    assert!(reason(1).starts_with("SQLSTATE 23514:"), "{}", reason(1));
    assert!(reason(1).contains("check constraint"), "{}", reason(1));
    assert!(reason(2).starts_with("SQLSTATE 23502:"), "{}", reason(2));
    assert!(reason(2).contains("\"note\""), "{}", reason(2));
    assert!(reason(3).starts_with("SQLSTATE 23502:"), "{}", reason(3));
    assert!(reason(5).starts_with("SQLSTATE 22021:"), "{}", reason(5));
    assert!(reason(6).starts_with("SQLSTATE 23502:"), "{}", reason(6));

    // Later batches of the same transaction (now isolated with savepoints) and of the next.
    let outcome = store
        .write(
            &lane(0),
            &batch(&[
                (Some("g"), Some(-5), Some("x")),
                (Some("h"), Some(7), Some("x")),
            ]),
        )
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected.len()), (1, 1));
    store.prepare(&lane(0), 1).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 1, 10)).unwrap();
    store.commit(&lane(0), 1).unwrap();
    let outcome = store.write(&lane(0), &kv(&[("i", 8)])).unwrap();
    assert_eq!(outcome.accepted, 1);
    store.prepare(&lane(0), 2).unwrap();
    checkpoints.save(&checkpoint(&pipeline, 0, 2, 11)).unwrap();
    store.commit(&lane(0), 2).unwrap();

    let keys: Vec<String> = rows(&mut c, &schema).into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["a", "before", "d", "f", "h", "i"]);
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((2, 11)));
}

#[test]
fn two_partitions_writing_one_key_is_a_fatal_error_not_a_hang() {
    let schema = unique("samekey");
    let cfg = PostgresSinkConfig {
        lock_timeout_ms: 200,
        fillfactor: 30,
        ..config(&schema, &["k"])
    };
    let mut store = PostgresStore::connect_as("pg", &cfg, &schema, CheckpointRole::Store).unwrap();
    store.checkpoint_store().unwrap();
    store.write(&lane(0), &kv(&[("a", 1)])).unwrap();
    let err = store.write(&lane(1), &kv(&[("a", 2)])).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("key_columns") && text.contains("55P03"),
        "{text}"
    );
}

#[test]
fn a_missing_table_or_key_column_is_a_fatal_error_naming_it() {
    let schema = unique("missing");
    let cfg = PostgresSinkConfig {
        create_table: false,
        ..config(&schema, &["k"])
    };
    let mut store = PostgresStore::connect("pg", &cfg, &schema).unwrap();
    let err = store.write(&lane(0), &kv(&[("a", 1)])).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("does not exist"), "{err}");

    let mut store =
        PostgresStore::connect("pg", &config(&schema, &["k", "window_end"]), &schema).unwrap();
    let err = store.write(&lane(0), &kv(&[("a", 1)])).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    let text = err.to_string();
    assert!(
        text.contains("\"window_end\"") && text.contains("k, v, note"),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_is_transient_and_a_bad_config_fatal() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = PostgresSinkConfig {
        url: PostgresUrl::new(format!("postgres://weir:s3cret@127.0.0.1:{port}/db")),
        ..config("s", &["k"])
    };
    let err = PostgresStore::connect("pg", &cfg, "p").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let cfg = PostgresSinkConfig {
        key_columns: vec![],
        ..config("s", &["k"])
    };
    let err = PostgresStore::connect("pg", &cfg, "p").unwrap_err();
    assert!(matches!(err, WeirError::Sink { .. }));
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("key_columns"), "{err}");
}

fn store_of(schema: &str, pipeline: &str) -> PostgresStore {
    PostgresStore::connect_as(
        "pg",
        &config(schema, &["k"]),
        pipeline,
        CheckpointRole::Store,
    )
    .unwrap()
}

#[test]
fn a_late_owners_checkpoint_and_rows_are_refused_after_a_new_claim() {
    let schema = unique("fence");
    let pipeline = schema.clone();
    let (mut a, mut b) = (store_of(&schema, &pipeline), store_of(&schema, &pipeline));
    let mut c = client();

    let generation_a = CheckpointStore::claim(&a, "orders", 0).unwrap();
    let mut first = checkpoint(&pipeline, 0, 1, 10);
    first.generation = generation_a;
    a.write(&lane(0), &kv(&[("a", 1)])).unwrap();
    a.prepare(&lane(0), 1).unwrap();
    CheckpointStore::save(&a, &first).unwrap();
    a.commit(&lane(0), 1).unwrap();

    // A goes on writing epoch 2 while B takes the lane over.
    a.write(&lane(0), &kv(&[("a", 2), ("late", 2)])).unwrap();
    a.prepare(&lane(0), 2).unwrap();
    let generation_b = CheckpointStore::claim(&b, "orders", 0).unwrap();
    assert!(generation_b > generation_a);
    assert_eq!(CheckpointStore::load(&b, "orders", 0).unwrap(), Some(first));

    // A's checkpoint is refused, as the fenced outcome; its transaction rolls back.
    let mut late = checkpoint(&pipeline, 0, 2, 20);
    late.generation = generation_a;
    let err = CheckpointStore::save(&a, &late).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fenced, "{err}");
    assert!(matches!(err, WeirError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("orders/0"), "{err}");
    a.commit(&lane(0), 2).unwrap(); // nothing left to commit
    assert_eq!(rows(&mut c, &schema), [("a".to_string(), 1)]);
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((1, 10)));

    // B's own epoch 2 is accepted (its writes were not held back by A's row locks).
    let mut taken_over = checkpoint(&pipeline, 0, 2, 15);
    taken_over.generation = generation_b;
    b.recover(&lane(0), Some(1)).unwrap();
    b.write(&lane(0), &kv(&[("a", 20), ("b", 5)])).unwrap();
    b.prepare(&lane(0), 2).unwrap();
    CheckpointStore::save(&b, &taken_over).unwrap();
    b.commit(&lane(0), 2).unwrap();
    assert_eq!(
        rows(&mut c, &schema),
        [("a".to_string(), 20), ("b".to_string(), 5)]
    );
    assert_eq!(
        CheckpointStore::load(&a, "orders", 0).unwrap(),
        Some(taken_over.clone())
    );

    // A's retry of its late checkpoint is refused again and changes nothing.
    a.write(&lane(0), &kv(&[("late", 3)])).unwrap();
    a.prepare(&lane(0), 2).unwrap();
    let err = CheckpointStore::save(&a, &late).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fenced, "{err}");
    assert_eq!(
        rows(&mut c, &schema),
        [("a".to_string(), 20), ("b".to_string(), 5)]
    );
    assert_eq!(
        CheckpointStore::load(&b, "orders", 0).unwrap(),
        Some(taken_over)
    );
}

#[test]
fn a_checkpoint_table_from_before_fencing_gains_the_owners_table() {
    let schema = unique("premigration");
    let pipeline = schema.clone();
    let mut c = client();
    // The checkpoint table as weir created it before fencing, with one checkpoint.
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".weir_checkpoints (\
         pipeline text NOT NULL, topic text NOT NULL, partition int4 NOT NULL, \
         epoch int8 NOT NULL, next_offset int8 NOT NULL, state bytea NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, topic, partition))"
    ))
    .unwrap();
    let old = checkpoint(&pipeline, 0, 4, 40);
    let state = weir_runtime::checkpoint::encode(&old).unwrap();
    c.execute(
        &format!(
            "INSERT INTO \"{schema}\".weir_checkpoints \
             (pipeline, topic, partition, epoch, next_offset, state) \
             VALUES ($1, 'orders', 0, 4, 40, $2)"
        ),
        &[&pipeline, &state],
    )
    .unwrap();

    let mut store = store_of(&schema, &pipeline);
    assert_eq!(
        CheckpointStore::load(&store, "orders", 0).unwrap(),
        Some(old)
    );
    let generation = CheckpointStore::claim(&store, "orders", 0).unwrap();
    assert_eq!(generation, 1, "the first claim of a lane");
    let mut next = checkpoint(&pipeline, 0, 5, 50);
    store.prepare(&lane(0), 5).unwrap();
    let err = CheckpointStore::save(&store, &next).unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Fenced,
        "generation 0 after a claim: {err}"
    );
    next.generation = generation;
    store.prepare(&lane(0), 5).unwrap();
    CheckpointStore::save(&store, &next).unwrap();
    store.commit(&lane(0), 5).unwrap();
    assert_eq!(stored(&mut c, &schema, &pipeline, 0), Some((5, 50)));
}

#[test]
fn a_claim_waits_for_the_old_owners_accepted_checkpoint_and_then_loads_it() {
    let schema = unique("claimwait");
    let pipeline = schema.clone();
    let mut a = store_of(&schema, &pipeline);
    let b = store_of(&schema, &pipeline);
    let mut c = client();
    let generation_a = CheckpointStore::claim(&a, "orders", 0).unwrap();

    // A's checkpoint is accepted into its open transaction, not committed yet.
    let mut saved = checkpoint(&pipeline, 0, 1, 10);
    saved.generation = generation_a;
    a.write(&lane(0), &kv(&[("a", 1)])).unwrap();
    a.prepare(&lane(0), 1).unwrap();
    CheckpointStore::save(&a, &saved).unwrap();

    // B's claim waits on the lane's row until A's transaction ends...
    let claimer = std::thread::spawn(move || {
        let generation = CheckpointStore::claim(&b, "orders", 0).unwrap();
        (generation, CheckpointStore::load(&b, "orders", 0).unwrap())
    });
    let control = format!("weir {pipeline}/pg control");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&control],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            !claimer.is_finished(),
            "the claim did not wait for A's commit"
        );
        assert!(std::time::Instant::now() < deadline, "no claim waits");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // ...and then loads what A committed.
    a.commit(&lane(0), 1).unwrap();
    let (generation_b, loaded) = claimer.join().unwrap();
    assert!(generation_b > generation_a);
    assert_eq!(loaded, Some(saved));
    assert_eq!(rows(&mut c, &schema), [("a".to_string(), 1)]);
}
