//! The PostgreSQL store driven by the runtime's executor, as sink *and* checkpoint store:
//! generator → (a minimal JSON decoder) → PostgreSQL, poison → JSONL DLQ, with a crash in the
//! middle and a restart from the checkpoints stored in PostgreSQL. A trigger records every
//! row the table receives: each event must have been applied exactly once over both runs
//! (with rows committed apart from the offsets, the restart would apply some twice), and the
//! stored offsets must be the end of the input.
//!
//! Needs `WEIR_PG_URL`: `export "$(scripts/postgres.sh start)"`, then `scripts/postgres.sh stop`.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use support::tasks;
use weir_connectors::postgres::{CheckpointRole, PostgresSinkConfig, PostgresStore, PostgresUrl};
use weir_connectors::{
    read_dlq_dir, EventGenerator, GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig,
};
use weir_runtime::error::Result;
use weir_runtime::testkit::MemorySink;
use weir_runtime::{Executor, ExecutorConfig, Shutdown, SinkWriter};

fn url() -> String {
    match std::env::var("WEIR_PG_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "WEIR_PG_URL is not set: this test needs a PostgreSQL server. Start one with \
             `export \"$(scripts/postgres.sh start)\"` from the workspace root, run the tests, \
             then `scripts/postgres.sh stop`."
        ),
    }
}

fn run(
    generator: &GeneratorConfig,
    sink: &PostgresSinkConfig,
    pipeline: &str,
    dlq_dir: &std::path::Path,
    fail_after_writes: Option<usize>,
) -> Result<()> {
    let mut config = ExecutorConfig::new(pipeline);
    config.cpu_threads = 2;
    config.max_rows = 37;
    config.linger = Duration::from_millis(5);
    config.checkpoint_interval = Duration::from_millis(1);
    let store = PostgresStore::connect_as("pg", sink, pipeline, CheckpointRole::Store)?;
    let checkpoints = store.checkpoint_store()?;
    let mut sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(store)];
    if let Some(n) = fail_after_writes {
        sinks.push(Box::new(MemorySink {
            fail_after_writes: Some(n),
            ..Default::default()
        }));
    }
    let dlq = JsonlDlq::new(&JsonlDlqConfig {
        path: dlq_dir.to_path_buf(),
    })?;
    let executor = Executor::new(
        config,
        Box::new(GeneratorSource::new(generator.clone())?),
        tasks(),
        sinks,
        Box::new(dlq),
        checkpoints,
    );
    executor.run(Shutdown::new()).map(|_| ())
}

#[test]
fn a_crash_and_restart_apply_every_event_exactly_once_and_store_the_end_offsets() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("weir_e2e_{}_{:x}", std::process::id(), nanos % 0xffff_ffff);
    let mut c = Client::connect(&url(), NoTls).unwrap();
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".events (event_id text PRIMARY KEY, sensor_id text, event_time int8);
         CREATE TABLE \"{schema}\".audit (event_id text);
         CREATE FUNCTION \"{schema}\".audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO \"{schema}\".audit VALUES (NEW.event_id); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON \"{schema}\".events
           FOR EACH ROW EXECUTE FUNCTION \"{schema}\".audit();"
    ))
    .unwrap();
    let sink = PostgresSinkConfig {
        url: PostgresUrl::new(url()),
        table: "events".into(),
        key_columns: vec!["event_id".into()],
        create_table: false,
        schema: Some(schema.clone()),
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    };
    let generator = GeneratorConfig {
        sensors: 40,
        partitions: 3,
        events: Some(3000),
        disorder_ms: 200,
        poison_ratio: 0.05,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        run(&generator, &sink, &schema, tmp.path(), Some(25)).is_err(),
        "the injected crash stops the run"
    );
    let count = |c: &mut Client, table: &str| -> i64 {
        c.query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
            .unwrap()
            .get(0)
    };
    let partial = count(&mut c, "events");
    assert!(
        partial > 0 && partial < 3000,
        "the crash came after some checkpoints and before the end: {partial} rows"
    );
    run(&generator, &sink, &schema, tmp.path(), None).unwrap();

    let g = EventGenerator::new(&generator);
    let mut expected_rows = BTreeMap::new();
    let mut expected_dead = BTreeMap::new();
    for p in 0..3 {
        for o in 0..g.events_in_partition(p).unwrap() as i64 {
            let e = g.event(p, o).unwrap();
            match e.poison {
                None => {
                    expected_rows.insert(format!("{p}-{o}"), e.sensor_id());
                }
                Some(kind) => {
                    expected_dead.insert((p, o), kind.error_kind());
                }
            }
        }
    }
    let rows: BTreeMap<String, String> = c
        .query(
            &format!("SELECT event_id, sensor_id FROM \"{schema}\".events"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, expected_rows);
    let applied_twice: Vec<(String, i64)> = c
        .query(
            &format!(
                "SELECT event_id, count(*) FROM \"{schema}\".audit GROUP BY 1 HAVING count(*) > 1"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(applied_twice, [], "rows applied more than once");
    assert_eq!(count(&mut c, "audit"), expected_rows.len() as i64);

    for p in 0..3i32 {
        let next: i64 = c
            .query_one(
                &format!(
                    "SELECT next_offset FROM \"{schema}\".weir_checkpoints \
                     WHERE pipeline = $1 AND partition = $2"
                ),
                &[&schema, &p],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            next,
            g.events_in_partition(p).unwrap() as i64,
            "partition {p}"
        );
    }

    let mut dead = BTreeMap::new();
    for record in read_dlq_dir(tmp.path()).unwrap() {
        let at = (record.letter.partition, record.letter.offset);
        assert!(
            dead.insert(at, record.letter.kind).is_none(),
            "{at:?} dead-lettered twice"
        );
    }
    assert_eq!(dead, expected_dead);
}
