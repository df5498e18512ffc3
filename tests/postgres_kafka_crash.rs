//! The worker binary over a 1M-event Kafka topic (tansu) into PostgreSQL, SIGKILLed at random
//! points at least ten times and restarted each time (each restart rejoins the consumer group
//! and resumes from the checkpoints stored in PostgreSQL): the final table equals a reference
//! computed here from the generator's truth, with no duplicate and no missing row, and the
//! offsets stored in PostgreSQL are the end of the input.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{brokers, create_topic, produce, unique};
use common::{pg_url, IOT_SCHEMA};
use weir::connectors::{EventGenerator, GeneratorConfig};

const PARTITIONS: i32 = 4;

fn generator() -> GeneratorConfig {
    GeneratorConfig {
        seed: 77,
        sensors: 2_000,
        partitions: PARTITIONS as u32,
        events: Some(1_000_000),
        disorder_ms: 2_000,
        poison_ratio: 0.0005,
        ..Default::default()
    }
}

fn pipeline(name: &str, topic: &str, table: &str) -> String {
    format!(
        r#"
name = "{name}"
sql = "SELECT sensor_id, window_start, count(*) AS readings, max(temperature) AS max_temp FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND) HAVING sensor_id <> '__flush'"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{name}"
options = {{ "session.timeout.ms" = "1000", "heartbeat.interval.ms" = "300" }}

{IOT_SCHEMA}
[watermark]
max_out_of_orderness_ms = 2000

[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["sensor_id", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 50

[batch]
max_rows = 2000
linger_ms = 5
"#,
        brokers = brokers(),
        url = pg_url()
    )
}

fn spawn(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The next offsets stored in PostgreSQL for the pipeline, per partition.
fn stored_offsets(client: &mut postgres::Client, pipeline: &str) -> BTreeMap<i32, i64> {
    let exists: bool = client
        .query_one("SELECT to_regclass('weir_checkpoints') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if !exists {
        return BTreeMap::new();
    }
    client
        .query(
            "SELECT partition, next_offset FROM weir_checkpoints WHERE pipeline = $1",
            &[&pipeline],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn a_worker_over_a_topic_killed_ten_times_ends_with_the_reference_table_and_offsets() {
    let g = generator();
    let truth = EventGenerator::new(&g);
    let topic = create_topic(PARTITIONS);
    produce(&topic, &truth, PARTITIONS);
    // Each partition ends with one flush event (see `produce`).
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, truth.events_in_partition(p).unwrap() as i64 + 1))
        .collect();
    // The flush events go through the window (a WHERE would drop them before it) and move
    // the watermark past the last real window; HAVING keeps their own window out.

    let name = unique("pg-kafka-crash").replace('-', "_");
    let table = format!("t_{name}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), pipeline(&name, &topic, &table)).unwrap();
    let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let progress =
        |client: &mut postgres::Client| -> i64 { stored_offsets(client, &name).values().sum() };
    let total: i64 = ends.values().sum();

    // Kill at random points, ten times while input remains: each run is killed a random
    // 0-300 ms after its first commit (so every kill interrupts real work, whatever the load
    // on the machine), or during start-up when that takes longer than 20 s.
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    let started = Instant::now();
    while kills < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {kills} kills in time"
        );
        let before = progress(&mut client);
        let mut child = spawn(dir.path());
        let run_started = Instant::now();
        while progress(&mut client) == before && run_started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the worker exited by itself ({status}): {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 300));
        let at = progress(&mut client);
        assert!(
            at < total,
            "the input ran out after {kills} kills: make the kills come sooner"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }

    // The last run goes to the end of the input, then is stopped with SIGTERM.
    let mut child = spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored_offsets(&mut client, &name) != ends {
        assert!(Instant::now() < deadline, "the last run did not finish");
        assert!(child.try_wait().unwrap().is_none(), "the last run exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());

    // Reference: every valid event in its sensor's 10-second window (nothing is late: the
    // disorder stays within the watermark's bound).
    let mut want: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for o in 0..truth.events_in_partition(p).unwrap() as i64 {
            let e = truth.event(p, o).unwrap();
            if e.poison.is_some() {
                continue;
            }
            assert!(!e.late);
            let start = e.event_time_ms - e.event_time_ms.rem_euclid(10_000);
            let w = want.entry((e.sensor_id(), start)).or_insert((0, f64::MIN));
            w.0 += 1;
            w.1 = w.1.max(e.temperature());
        }
    }
    let got: BTreeMap<(String, i64), (i64, f64)> = client
        .query(
            &format!(
                "SELECT sensor_id, (extract(epoch from window_start) * 1000)::bigint, readings, max_temp FROM \"{table}\""
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing windows, e.g. {missing:?}");
    assert_eq!(got.len(), want.len(), "rows after {kills} SIGKILLs");
    assert_eq!(got, want, "table after {kills} SIGKILLs");
}
