//! The PostgreSQL store driven by the runtime's executor, as sink *and* checkpoint store:
//! generator → (a minimal JSON decoder) → PostgreSQL, poison → JSONL DLQ, with a crash in the
//! middle and a restart from the checkpoints stored in PostgreSQL. A trigger records every
//! row the table receives: each event must have been applied exactly once over both runs
//! (with rows committed apart from the offsets, the restart would apply some twice), and the
//! stored offsets must be the end of the input.
//!
//! Needs `WEIR_PG_URL`: `export "$(scripts/postgres.sh start)"`, then `scripts/postgres.sh stop`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use weir_connectors::postgres::{PostgresSinkConfig, PostgresStore, PostgresUrl};
use weir_connectors::{
    read_dlq_dir, EventGenerator, GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig,
};
use weir_runtime::arrow::array::{Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::Result;
use weir_runtime::executor::TaskFactory;
use weir_runtime::testkit::MemorySink;
use weir_runtime::{
    Decoded, Decoder, ErrorKind, Executor, ExecutorConfig, PartitionTask, RawBatch, RowReject,
    Shutdown, SinkWriter, OFFSET_COLUMN,
};

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

/// Just enough decoding for the generator's payloads.
struct TestDecoder {
    schema: SchemaRef,
}

impl TestDecoder {
    fn new() -> Self {
        Self {
            schema: Arc::new(Schema::new(vec![
                Field::new("event_id", DataType::Utf8, false),
                Field::new("sensor_id", DataType::Utf8, false),
                Field::new("event_time", DataType::Int64, false),
                Field::new(OFFSET_COLUMN, DataType::Int64, false),
            ])),
        }
    }
}

fn classify(payload: Option<&[u8]>) -> std::result::Result<(String, String, i64), ErrorKind> {
    let bytes = payload.ok_or(ErrorKind::NullPayload)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ErrorKind::EmptyMessage);
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| ErrorKind::InvalidJson)?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let time = v
        .get("event_time")
        .ok_or(ErrorKind::MissingField)?
        .as_i64()
        .ok_or(ErrorKind::WrongType)?;
    v.get("temperature")
        .ok_or(ErrorKind::MissingField)?
        .as_f64()
        .ok_or(ErrorKind::WrongType)?;
    Ok((
        text("event_id").ok_or(ErrorKind::MissingField)?,
        text("sensor_id").ok_or(ErrorKind::MissingField)?,
        time,
    ))
}

impl Decoder for TestDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
        let (mut ids, mut sensors, mut times, mut offsets) = (vec![], vec![], vec![], vec![]);
        let mut rejects = Vec::new();
        for m in &raw.messages {
            match classify(m.payload.as_deref()) {
                Ok((id, sensor, time)) => {
                    ids.push(id);
                    sensors.push(sensor);
                    times.push(time);
                    offsets.push(m.offset);
                }
                Err(kind) => rejects.push(RowReject {
                    offset: m.offset,
                    kind,
                    message: kind.as_str().to_string(),
                }),
            }
        }
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(sensors)),
                Arc::new(Int64Array::from(times)),
                Arc::new(Int64Array::from(offsets)),
            ],
        )?;
        Ok(Decoded {
            batch: Some(batch),
            rejects,
        })
    }
}

fn tasks() -> TaskFactory {
    Box::new(|topic, partition| {
        Ok(PartitionTask::new(
            Arc::from("e2e"),
            topic.clone(),
            partition,
            Box::new(TestDecoder::new()),
            Vec::new(),
        ))
    })
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
    let store = PostgresStore::connect("pg", sink, pipeline)?;
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
    };
    let generator = GeneratorConfig {
        sensors: 40,
        partitions: 3,
        events: Some(3000),
        max_out_of_orderness_ms: 200,
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
        let at = (record.partition, record.offset);
        assert!(
            dead.insert(at, record.kind).is_none(),
            "{at:?} dead-lettered twice"
        );
    }
    assert_eq!(dead, expected_dead);
}
