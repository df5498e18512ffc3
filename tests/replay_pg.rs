//! `weir replay` against a real Kafka broker (`WEIR_KAFKA_BROKERS`) and a real
//! PostgreSQL (`WEIR_PG_URL`), both started by `scripts/test.sh`:
//! - a window pipeline run live over part of a topic, more events produced, then a replay
//!   from `earliest`: the table equals what a live run over the same offsets produces, the old
//!   table (with a row tampered in) is renamed away, the checkpoints are the live pipeline's at
//!   the recorded ends, and a `weir run` over newly produced events ends with the reference
//!   table computed from the generator (no gap, no duplicate at the hand-over);
//! - a replay SIGKILLed midway leaves the live table and checkpoints as they were (and a
//!   `weir run` started during the replay refuses, as a replay does while a worker runs); the
//!   next replay starts over and swaps;
//! - `--from <time>` starts every partition at the first offset at or after the time;
//! - on Apache Kafka, a replay ends at the true end of each partition even when the last
//!   record batch holds many messages (tansu reports that batch's base offset + 1);
//! - bad input: non-postgres sink, bad `--from`, unknown key, unreachable source or database.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::weir;
use common::kafka::{broker_is_apache_kafka, brokers, create_topic, produce_part, unique};
use common::{pg_url, IOT_SCHEMA};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir::connectors::postgres::{LockMode, PipelineLock, ReplayTarget};
use weir::connectors::{
    read_dlq_dir, CheckpointRole, EventGenerator, GeneratorConfig, PostgresSinkConfig,
    PostgresStore, PostgresUrl,
};
use weir_runtime::{Checkpoint, CheckpointStore, Counters, EpochParticipant, Lane};

const PARTITIONS: i32 = 4;

fn generator(events: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed: 91,
        sensors: 300,
        partitions: PARTITIONS as u32,
        events: Some(events),
        disorder_ms: 2_000,
        poison_ratio: 0.001,
        ..Default::default()
    }
}

const WINDOW_SQL: &str = "SELECT sensor_id, window_start, count(*) AS readings, max(temperature) AS max_temp FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND) HAVING sensor_id <> '__flush'";

fn pipeline(name: &str, topic: &str, table: &str, sql: &str, max_rows: usize) -> String {
    format!(
        r#"
name = "{name}"
sql = "{sql}"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{name}"
connect_timeout_ms = 5000
options = {{ "session.timeout.ms" = "3000", "heartbeat.interval.ms" = "500" }}

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
max_rows = {max_rows}
linger_ms = 5
"#,
        brokers = brokers(),
        url = pg_url()
    )
}

fn spawn(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(cwd)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn client() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap()
}

/// The next offsets stored for `pipeline`, per partition.
fn stored(client: &mut postgres::Client, pipeline: &str) -> BTreeMap<i32, i64> {
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

type Windows = BTreeMap<(String, i64), (i64, f64)>;

fn windows(client: &mut postgres::Client, table: &str) -> Windows {
    client
        .query(
            &format!(
                "SELECT sensor_id, (extract(epoch from window_start) * 1000)::bigint, readings, max_temp FROM \"{table}\""
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect()
}

fn table_exists(client: &mut postgres::Client, table: &str) -> bool {
    client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("\"{table}\"")],
        )
        .unwrap()
        .get(0)
}

/// `weir run` until the stored offsets of `name` are `ends`, then SIGTERM (exit 0).
fn run_until(dir: &Path, client: &mut postgres::Client, name: &str, ends: &BTreeMap<i32, i64>) {
    let mut child = spawn(&["run", "p.toml"], dir);
    let deadline = Instant::now() + Duration::from_secs(120);
    while &stored(client, name) != ends {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("weir run exited ({status}): {}", text(&out.stderr));
        }
        assert!(Instant::now() < deadline, "weir run did not reach {ends:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "weir run: {}", text(&out.stderr));
}

/// A topic and how many messages each partition holds.
struct Topic {
    name: String,
    counts: BTreeMap<i32, i64>,
}

impl Topic {
    fn new() -> Self {
        Self {
            name: create_topic(PARTITIONS),
            counts: (0..PARTITIONS).map(|p| (p, 0)).collect(),
        }
    }

    /// Slice `part.0` of `part.1` of every partition's events (and the flush event after the
    /// last slice when `flush`), then an end marker.
    fn produce(&mut self, truth: &EventGenerator, part: (usize, usize), flush: bool) {
        produce_part(&self.name, truth, PARTITIONS, part, flush);
        for p in 0..PARTITIONS {
            let n = truth.events_in_partition(p).unwrap() as usize;
            let (from, to) = (n * part.0 / part.1, n * (part.0 + 1) / part.1);
            *self.counts.get_mut(&p).unwrap() += (to - from) as i64 + i64::from(flush && to == n);
        }
        self.mark_end(None);
    }

    /// One message per partition in a record batch of its own (a poison message: it goes to
    /// the DLQ). tansu reports the high watermark as the last record batch's base offset + 1,
    /// so the end a replay records is the real end only when the last batch holds one message.
    fn mark_end(&mut self, timestamp_ms: Option<i64>) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        for p in 0..PARTITIONS {
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.name)
                .partition(p)
                .key(b"end-marker".as_slice())
                .payload(b"end of this part".as_slice());
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
            *self.counts.get_mut(&p).unwrap() += 1;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Every valid event in its sensor's 10-second window.
fn reference(truth: &EventGenerator) -> Windows {
    let mut want = Windows::new();
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
    want
}

fn names(what: &str) -> (String, String) {
    let name = unique(what).replace('-', "_");
    let table = format!("t_{}", &name[name.len().saturating_sub(40)..]);
    (name, table)
}

#[test]
fn a_replay_rebuilds_the_table_swaps_it_in_and_the_live_run_goes_on_without_gap_or_duplicate() {
    let truth = EventGenerator::new(&generator(24_000));
    let mut topic = Topic::new();
    let mut db = client();
    let (name, table) = names("replay");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline(&name, &topic.name, &table, WINDOW_SQL, 500),
    )
    .unwrap();

    // Live run over the first third.
    topic.produce(&truth, (0, 3), false);
    run_until(dir.path(), &mut db, &name, &topic.counts);
    // More events arrive while the live pipeline is stopped.
    topic.produce(&truth, (1, 3), false);
    let ends = topic.counts.clone();
    // Something the replay must not carry over: a row that no event produced.
    db.execute(
        &format!("INSERT INTO \"{table}\" (sensor_id, window_start, readings, max_temp) VALUES ('tampered', now(), 1, 1.0)"),
        &[],
    )
    .unwrap();

    // A reader queries the table all along the replay: every query succeeds and sees the
    // old table (with the tampered row) or the new one.
    let stop_reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, query) = (
            stop_reading.clone(),
            format!("SELECT count(*), coalesce(bool_or(sensor_id = 'tampered'), false) FROM \"{table}\""),
        );
        std::thread::spawn(move || {
            let mut db = client();
            let mut seen = Vec::new();
            loop {
                // The last query starts after the replay has exited.
                let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                let row = db.query_one(&query, &[]).expect("a reader's query failed");
                let (rows, tampered): (i64, bool) = (row.get(0), row.get(1));
                if seen.last() != Some(&(rows, tampered)) {
                    seen.push((rows, tampered));
                }
                if last {
                    break;
                }
            }
            seen
        })
    };
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().expect("the reader saw an error");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "replay failed: {stderr}");
    // Old table first (one state), then the new one (one state, without the tampered row).
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].1 && !seen[1].1, "{seen:?}");
    assert!(
        stdout.contains(&format!(
            "table {table} swapped in; the previous one is now {table}__replaced"
        )),
        "{stdout}"
    );
    // Not a terminal: plain progress lines with offsets and events/s, then the summary.
    assert!(stderr.contains(&format!("replay {name}: ")), "{stderr}");
    assert!(
        stderr.contains("offsets,") && stderr.contains("events/s, ETA"),
        "{stderr}"
    );
    let total: i64 = ends.values().sum();
    assert!(stdout.contains(&format!(": {total} events in")), "{stdout}");

    // The checkpoints are the live pipeline's, at the recorded ends; the replay's are gone.
    assert_eq!(stored(&mut db, &name), ends);
    assert!(stored(&mut db, &format!("{name}__replay")).is_empty());
    // The old table (with the tampered row) is renamed away; the new one has no such row.
    let replaced = windows(&mut db, &format!("{table}__replaced"));
    assert!(replaced.keys().any(|(s, _)| s == "tampered"));
    let replayed = windows(&mut db, &table);
    assert!(!replayed.keys().any(|(s, _)| s == "tampered"));
    assert_eq!(seen[1].0, replayed.len() as i64);
    assert!(!table_exists(&mut db, &format!("{table}__replay")));

    // What a live run over the same offsets produces: another pipeline, same topic.
    let (other, other_table) = names("replay-ref");
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        other_dir.path().join("p.toml"),
        pipeline(&other, &topic.name, &other_table, WINDOW_SQL, 500),
    )
    .unwrap();
    run_until(other_dir.path(), &mut db, &other, &ends);
    let live = windows(&mut db, &other_table);
    assert!(!live.is_empty());
    assert_eq!(
        replayed, live,
        "replayed table vs a live run over the same offsets"
    );

    // The live pipeline goes on from the replay's checkpoints (window state included).
    topic.produce(&truth, (2, 3), true);
    run_until(dir.path(), &mut db, &name, &topic.counts);
    let want = reference(&truth);
    let got = windows(&mut db, &table);
    assert_eq!(got.len(), want.len(), "rows after replay + run");
    assert_eq!(got, want, "table after replay + run");

    // Dead letters (poison events and the end markers), by Kafka offset: the live DLQ holds
    // those of the live runs (slices 0 and 2) once each: after the swap the live pipeline's
    // DLQ files go on from its own epochs, so none was overwritten. The replay's DLQ holds
    // those of what it read (slices 0 and 1).
    let poison_of = |slices: &[usize]| -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            let n = truth.events_in_partition(p).unwrap() as usize;
            for &k in slices {
                let (from, to) = (n * k / 3, n * (k + 1) / 3);
                // k end markers precede slice k; slice 2 also ends with the flush event.
                let shift = k as i64;
                for o in from..to {
                    if truth.event(p, o as i64).unwrap().poison.is_some() {
                        out.push((p, o as i64 + shift));
                    }
                }
                out.push((p, to as i64 + shift + i64::from(k == 2)));
            }
        }
        out.sort();
        out
    };
    let dead = |dir: &Path| -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = read_dlq_dir(dir)
            .unwrap()
            .iter()
            .map(|r| (r.letter.partition, r.letter.offset))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        dead(&dir.path().join("dlq")),
        poison_of(&[0, 2]),
        "live DLQ"
    );
    assert_eq!(
        dead(&dir.path().join("dlq__replay")),
        poison_of(&[0, 1]),
        "replay DLQ"
    );
}

/// The end a replay records is each partition's high watermark, which Apache Kafka reports
/// exactly: no end marker here, every partition's last record batch holds many messages, and
/// the replay still reads every one of them (on tansu this would stop short of the last
/// batch, which is why the other tests end each part with a one-message batch).
#[test]
fn a_replay_ends_at_the_true_end_of_each_partition_on_apache_kafka() {
    assert!(
        broker_is_apache_kafka(),
        "needs a broker whose high watermark is exact (WEIR_TEST_BROKER=kafka)"
    );
    let truth = EventGenerator::new(&generator(8_000));
    let topic = create_topic(PARTITIONS);
    produce_part(&topic, &truth, PARTITIONS, (0, 1), true);
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, truth.events_in_partition(p).unwrap() as i64 + 1))
        .collect();
    let mut db = client();
    let (name, table) = names("replay-end");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline(&name, &topic, &table, WINDOW_SQL, 500),
    )
    .unwrap();
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "replay failed: {stderr}");
    let total: i64 = ends.values().sum();
    assert!(stdout.contains(&format!(": {total} events in")), "{stdout}");
    assert_eq!(stored(&mut db, &name), ends, "the replay's checkpoints");
    // The flush event is each partition's last message: every window closed, so all are in.
    assert_eq!(windows(&mut db, &table), reference(&truth));
}

/// Starts a replay and holds it midway: once every partition has a checkpoint, the test
/// locks those rows (FOR UPDATE), so the replay can store no further checkpoint, and
/// therefore neither catch up nor swap, until the returned transaction ends.
fn held<'a>(
    db: &mut postgres::Client,
    locker: &'a mut postgres::Client,
    dir: &Path,
    replay_name: &str,
    total: i64,
) -> (Child, postgres::Transaction<'a>) {
    db.execute(
        "DELETE FROM weir_checkpoints WHERE pipeline = $1",
        &[&replay_name],
    )
    .unwrap();
    let mut replay = spawn(&["replay", "p.toml", "--from", "earliest"], dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(db, replay_name).len() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "the replay made no progress");
        if let Some(status) = replay.try_wait().unwrap() {
            let out = replay.wait_with_output().unwrap();
            panic!(
                "the replay ended before it was stopped ({status}): {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut tx = locker.transaction().unwrap();
    let at: Vec<i64> = tx
        .query(
            "SELECT next_offset FROM weir_checkpoints WHERE pipeline = $1 FOR UPDATE",
            &[&replay_name],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        at.len(),
        PARTITIONS as usize,
        "the replay swapped before it was held"
    );
    assert!(
        at.iter().sum::<i64>() < total,
        "the replay caught up before it was held"
    );
    (replay, tx)
}

#[test]
fn a_replay_killed_midway_leaves_the_live_table_and_checkpoints_untouched() {
    let truth = EventGenerator::new(&generator(60_000));
    let mut topic = Topic::new();
    let mut db = client();
    let (name, table) = names("replay-kill");
    let dir = tempfile::tempdir().unwrap();
    // Small batches: the replay takes long enough to be killed midway.
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline(&name, &topic.name, &table, WINDOW_SQL, 100),
    )
    .unwrap();
    topic.produce(&truth, (0, 1), false);
    let ends = topic.counts.clone();
    run_until(dir.path(), &mut db, &name, &ends);
    let before = windows(&mut db, &table);
    let epochs = |db: &mut postgres::Client| -> Vec<(i32, i64, i64)> {
        db.query(
            "SELECT partition, epoch, next_offset FROM weir_checkpoints WHERE pipeline = $1 ORDER BY partition",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let checkpoints = epochs(&mut db);

    // A worker running: the replay refuses.
    let mut worker = spawn(&["run", "p.toml"], dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(worker.try_wait().unwrap().is_none(), "the worker exited");
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("pipeline {name:?} looks like it is running"))
            && err.contains("weir run"),
        "{err}"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();

    // A replay that has made progress, then is stopped before it caught up: by SIGTERM
    // (drains, then refuses to swap, exit 1), then by SIGKILL.
    let replay_name = format!("{name}__replay");
    let total: i64 = ends.values().sum();
    let untouched = |db: &mut postgres::Client, how: &str| {
        assert!(
            stored(db, &replay_name).values().sum::<i64>() < total,
            "the replay caught up before {how}"
        );
        assert_eq!(windows(db, &table), before, "live table after {how}");
        assert_eq!(epochs(db), checkpoints, "live checkpoints after {how}");
        assert!(!table_exists(db, &format!("{table}__replaced")), "{how}");
    };

    let mut locker = client();
    let (replay, hold) = held(&mut db, &mut locker, dir.path(), &replay_name, total);
    // Meanwhile a worker refuses to start.
    let out = weir(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("a `weir replay` of this pipeline is rebuilding its table"),
        "{err}"
    );
    // SIGTERM: the replay drains (its last checkpoints wait for the held rows), then refuses
    // to swap.
    Command::new("kill")
        .args(["-TERM", &replay.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    hold.commit().unwrap();
    let out = replay.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: replay interrupted before the swap: the live table")
            && err.contains("are untouched"),
        "{err}"
    );
    untouched(&mut db, "SIGTERM");

    let (mut replay, hold) = held(&mut db, &mut locker, dir.path(), &replay_name, total);
    replay.kill().unwrap();
    replay.wait().unwrap();
    hold.commit().unwrap();
    untouched(&mut db, "SIGKILL");

    // The next replay starts over and swaps in the same table a live run produced.
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(windows(&mut db, &table), before);
    assert_eq!(stored(&mut db, &name), ends);
    assert!(stored(&mut db, &replay_name).is_empty());
}

#[test]
fn replay_from_a_time_starts_every_partition_at_the_first_offset_at_or_after_it() {
    // Per partition, message o has Kafka timestamp T0 + o seconds.
    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let truth = EventGenerator::new(&GeneratorConfig {
        poison_ratio: 0.0,
        ..generator(800)
    });
    let mut topic = Topic::new();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        let n = truth.events_in_partition(p).unwrap() as usize;
        for m in truth.messages(p, 0, n) {
            let record = BaseRecord::<[u8], [u8]>::to(&topic.name)
                .partition(p)
                .key(m.key.as_deref().unwrap())
                .payload(m.payload.as_deref().unwrap())
                .timestamp(T0 + m.offset * 1000);
            producer.send(record).map_err(|(e, _)| e).unwrap();
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    for p in 0..PARTITIONS {
        *topic.counts.get_mut(&p).unwrap() += truth.events_in_partition(p).unwrap() as i64;
    }
    // After every event: 2026-01-01T00:16:40Z.
    topic.mark_end(Some(T0 + 1_000_000));

    let mut db = client();
    let (name, table) = names("replay-from");
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT sensor_id, count(*) AS n FROM sensors GROUP BY sensor_id";
    let toml = pipeline(&name, &topic.name, &table, sql, 500).replace(
        r#"key_columns = ["sensor_id", "window_start"]"#,
        r#"key_columns = ["sensor_id"]"#,
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    // 2026-01-01T00:00:50.5Z: offsets 0..=50 are before it, so every partition starts at 51.
    let out = weir(
        &[
            "replay",
            "p.toml",
            "--from",
            "2026-01-01T01:00:50.500+01:00",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    // The end markers (dead-lettered) are read too.
    let mut events = PARTITIONS as usize;
    for p in 0..PARTITIONS {
        for o in 51..truth.events_in_partition(p).unwrap() as i64 {
            *want
                .entry(truth.event(p, o).unwrap().sensor_id())
                .or_default() += 1;
            events += 1;
        }
    }
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(": {events} events in")),
        "{stdout}"
    );
    let got: BTreeMap<String, i64> = db
        .query(&format!("SELECT sensor_id, n FROM \"{table}\""), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(stored(&mut db, &name), topic.counts);
    // After the last message: nothing to read, every partition starts (and ends) at its end.
    let out = weir(
        &["replay", "p.toml", "--from", "2030-01-01T00:00:00Z"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": 0 events in"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(stored(&mut db, &name), topic.counts);
}

#[test]
fn replay_refuses_bad_input_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (name, table) = names("replay-bad");
    let good = pipeline(&name, "no-such-topic", &table, WINDOW_SQL, 500);
    let write = |text: &str| std::fs::write(dir.path().join("p.toml"), text).unwrap();

    // A sink that is not postgres.
    write(&good.replace(
        &format!("type = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\nkey_columns = [\"sensor_id\", \"window_start\"]", pg_url()),
        "type = \"jsonl\"\npath = \"out\"",
    ).replace("[checkpoint]\n", "[checkpoint]\ndir = \"ckpt\"\n"));
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("p.toml: sinks[0].type: replay rebuilds a PostgreSQL read model: the pipeline's only sink must be `postgres`, found `jsonl`"),
        "{err}"
    );

    // An unknown key, in the config loader's words.
    write(&format!("colour = \"blue\"\n{good}"));
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("p.toml: colour: unknown key (expected one of"),
        "{err}"
    );

    // A bad --from.
    write(&good);
    for (from, why) in [
        ("yesterday", "neither `earliest` nor an RFC 3339 time"),
        ("2026-01-01T00:00:00", "the offset is missing"),
    ] {
        let out = weir(&["replay", "p.toml", "--from", from], dir.path());
        assert_eq!(out.status.code(), Some(2), "{from}");
        let err = text(&out.stderr);
        assert!(err.contains("--from") && err.contains(why), "{from}: {err}");
    }
    let out = weir(&["replay", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--from"));

    // Unreachable source: no broker listens on port 1.
    write(
        &good
            .replace(
                &format!("brokers = \"{}\"", brokers()),
                "brokers = \"127.0.0.1:1\"",
            )
            .replace("connect_timeout_ms = 5000", "connect_timeout_ms = 1000"),
    );
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: ") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    // A topic that does not exist.
    write(&good);
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no-such-topic"), "{err}");
    // Unreachable database.
    write(&good.replace(&pg_url(), "postgres://postgres@127.0.0.1:1/postgres"));
    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot connect to postgres://postgres@127.0.0.1:1/postgres"),
        "{err}"
    );
    // A time with a source that has no timestamps.
    let jsonl = good.replace(
        &format!("type = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"no-such-topic\"]\ngroup_id = \"{name}\"\nconnect_timeout_ms = 5000\noptions = {{ \"session.timeout.ms\" = \"3000\", \"heartbeat.interval.ms\" = \"500\" }}", brokers()),
        "type = \"jsonl\"\npath = \"in.jsonl\"",
    );
    assert_ne!(jsonl, good);
    write(&jsonl);
    let out = weir(
        &["replay", "p.toml", "--from", "2026-01-01T00:00:00Z"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--from: a time needs a `kafka` source"),
        "{err}"
    );
}

fn sink_config(table: &str) -> PostgresSinkConfig {
    PostgresSinkConfig {
        url: PostgresUrl::new(pg_url()),
        table: table.into(),
        key_columns: vec!["k".into()],
        create_table: true,
        schema: None,
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    }
}

fn save(store: &mut PostgresStore, pipeline: &str, partition: i32, epoch: u64, next_offset: i64) {
    let c = Checkpoint {
        pipeline: pipeline.into(),
        topic: "t".into(),
        partition,
        epoch,
        next_offset,
        counters: Counters::default(),
        operators: Vec::new(),
        parked: Default::default(),
        reset: false,
        generation: 0,
    };
    CheckpointStore::save(store, &c).unwrap();
    EpochParticipant::commit(store, &Lane::new("t", partition), epoch).unwrap();
}

#[test]
fn the_swap_hands_the_replay_checkpoints_to_the_live_pipeline_under_its_name_and_epochs() {
    let (name, table) = names("replay-swap");
    let config = sink_config(&table);
    // Live: partitions 0 and 1 at epochs 50 and 7.
    let mut live = PostgresStore::connect_as("pg", &config, &name, CheckpointRole::Store).unwrap();
    save(&mut live, &name, 0, 50, 100);
    save(&mut live, &name, 1, 7, 10);
    drop(live);

    let mut target = ReplayTarget::open(&config, &name).unwrap();
    target.reset_shadow().unwrap();
    let replay_name = target.replay_pipeline().to_string();
    let mut replay = PostgresStore::connect_as(
        "pg",
        &target.shadow_config(),
        &replay_name,
        CheckpointRole::Store,
    )
    .unwrap();
    // The replay went further with fewer epochs on 0, more on 1, and has a partition 2.
    save(&mut replay, &replay_name, 0, 3, 200);
    save(&mut replay, &replay_name, 1, 9, 20);
    save(&mut replay, &replay_name, 2, 4, 30);
    drop(replay);
    let summary = target.swap().unwrap();
    assert_eq!(summary.replaced, None, "no live table existed");
    drop(target);

    let live = PostgresStore::connect_as("pg", &config, &name, CheckpointRole::Store).unwrap();
    let loaded: Vec<(String, u64, i64)> = (0..3)
        .map(|p| {
            let c = CheckpointStore::load(&live, "t", p).unwrap().unwrap();
            (c.pipeline, c.epoch, c.next_offset)
        })
        .collect();
    // Offsets are the replay's; epochs never go back for a partition the live pipeline had
    // (its epoch-numbered DLQ files go on after its own), and the name is the live one.
    assert_eq!(
        loaded,
        [
            (name.clone(), 50, 200),
            (name.clone(), 7, 20),
            (name.clone(), 4, 30)
        ]
    );
    let mut db = client();
    assert!(stored(&mut db, &replay_name).is_empty());
}

#[test]
fn workers_share_the_pipeline_lock_and_a_replay_takes_it_alone() {
    let (name, table) = names("replay-lock");
    let config = sink_config(&table);
    let a = PipelineLock::acquire(&config, &name, LockMode::Shared).unwrap();
    let b = PipelineLock::acquire(&config, &name, LockMode::Shared).unwrap();
    let err = ReplayTarget::open(&config, &name).unwrap_err().to_string();
    assert!(
        err.contains(&format!("pipeline {name:?} looks like it is running"))
            && err.contains("weir run"),
        "{err}"
    );
    // Another pipeline name is another lock.
    let other = ReplayTarget::open(&config, &format!("{name}_other")).unwrap();
    drop(other);
    drop((a, b));
    let replay = ReplayTarget::open(&config, &name).unwrap();
    let err = PipelineLock::acquire(&config, &name, LockMode::Shared)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a `weir replay` of this pipeline is rebuilding its table")
            && err.contains(&format!("\"weir replay {name}\"")),
        "{err}"
    );
    drop(replay);
    PipelineLock::acquire(&config, &name, LockMode::Shared).unwrap();

    // A sink of the pipeline connected without the lock (a pipeline built in Rust).
    let store = PostgresStore::connect("pg", &config, &name).unwrap();
    let err = ReplayTarget::open(&config, &name).unwrap_err().to_string();
    assert!(
        err.contains(&format!("pipeline {name:?} looks like it is running: its sink is connected to PostgreSQL (\"weir {name}/pg control\" (pid ")),
        "{err}"
    );
    drop(store);
    ReplayTarget::open(&config, &name).unwrap();
}

/// A file source and a `tumble` operator (not SQL) into PostgreSQL.
fn jsonl_pipeline(name: &str, table: &str) -> String {
    format!(
        r#"
name = "{name}"
[source]
type = "jsonl"
path = "in.jsonl"
partitions = 3
key_field = "sensor_id"

[schema]
event_time = "event_time"
partition_key = "sensor_id"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "sensor_id", type = "string" }},
  {{ name = "temperature", type = "float64" }},
  {{ name = "humidity", type = "float64", nullable = true }},
  {{ name = "event_time", type = "timestamp" }},
]

[[operators]]
type = "tumble"
size_ms = 10000
keys = ["sensor_id"]
max_out_of_orderness_ms = 2000
aggregates = [
  {{ function = "count", alias = "readings" }},
  {{ function = "max", column = "temperature", alias = "max_temp" }},
]

[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["sensor_id", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 20

[batch]
max_rows = 500
linger_ms = 5
"#,
        url = pg_url()
    )
}

#[test]
fn a_bounded_file_source_replays_to_its_end_and_a_terminal_gets_a_redrawn_progress_line() {
    let dir = tempfile::tempdir().unwrap();
    let truth = EventGenerator::new(&generator(6_000));
    let mut lines = String::new();
    for p in 0..PARTITIONS {
        let n = truth.events_in_partition(p).unwrap() as usize;
        for m in truth.messages(p, 0, n) {
            let payload = m.payload.unwrap_or_default();
            let line = String::from_utf8_lossy(&payload).replace('\n', " ");
            lines.push_str(&line);
            lines.push('\n');
        }
    }
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let (name, table) = names("replay-file");
    std::fs::write(dir.path().join("p.toml"), jsonl_pipeline(&name, &table)).unwrap();
    let mut db = client();

    // The live run reads the file to its end (and emits every window there).
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let live = windows(&mut db, &table);
    assert!(!live.is_empty());
    let offsets = stored(&mut db, &name);
    db.execute(&format!("DELETE FROM \"{table}\""), &[])
        .unwrap();

    let out = weir(&["replay", "p.toml", "--from", "earliest"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(bounded input: no ETA)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(windows(&mut db, &table), live);
    assert_eq!(stored(&mut db, &name), offsets);
    assert!(windows(&mut db, &format!("{table}__replaced")).is_empty());

    // On a terminal (`script` gives the replay one) the line is redrawn in place.
    let command = format!(
        "{} replay p.toml --from earliest",
        env!("CARGO_BIN_EXE_weir")
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .output()
        .expect("run script(1)");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("\r\x1b[2Kreplay {name}: ")),
        "{shown:?}"
    );
    assert!(shown.contains("swapped in"), "{shown}");
    assert_eq!(windows(&mut db, &table), live);

    // A worker started afterwards has nothing left to read.
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": 0 events in"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(windows(&mut db, &table), live);
}
