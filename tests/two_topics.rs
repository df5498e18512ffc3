//! A kafka source reading two topics whose partition numbers overlap (4 partitions each,
//! disjoint keys), into every sink family: the output equals the truth computed here from the
//! generated events, straight and after SIGKILLs of the worker mid-run, and every poison
//! message is in the DLQ exactly once. Sinks, the DLQ and checkpoints are keyed by the lane
//! (topic, partition), never by the partition number alone (ARCHITECTURE.md, "Lanes").

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{stderr, weir};
use common::kafka::{
    broker_is_apache_kafka, brokers, create_topic, produce_tagged, tagged, unique,
};
use common::{epoch_millis, pg_url};
use weir::connectors::{
    read_dlq_dir, read_jsonl_dir, read_parquet_dir, EventGenerator, GeneratorConfig,
    KafkaOffsetCommitter, KafkaSourceConfig,
};

const PARTITIONS: i32 = 4;
const TAGS: [&str; 2] = ["a-", "b-"];

/// `events` per topic: runs killed mid-run need enough input to be killed before its end.
fn generator(seed: u64, events: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed,
        sensors: 200,
        partitions: PARTITIONS as u32,
        events: Some(events),
        poison_ratio: 0.003,
        ..Default::default()
    }
}

/// Topics of 4 partitions (two, but for the exactly-once case), each holding one generator's
/// events under its own tag.
struct Input {
    topics: Vec<String>,
    truths: Vec<EventGenerator>,
    /// Each partition ends with a flush event (the windows test).
    flush: bool,
}

impl Input {
    fn produce(flush: bool, kills: usize) -> Self {
        Self::produce_topics(2, flush, kills)
    }

    fn produce_topics(n: usize, flush: bool, kills: usize) -> Self {
        // Runs killed mid-run need input left to be killed in.
        let events = match kills {
            0 => 6_000,
            1..=5 => 40_000,
            _ => 100_000,
        };
        let topics: Vec<String> = (0..n).map(|_| create_topic(PARTITIONS)).collect();
        let truths: Vec<EventGenerator> = (0..n)
            .map(|i| EventGenerator::new(&generator(11 + i as u64, events)))
            .collect();
        for i in 0..n {
            produce_tagged(&topics[i], &truths[i], PARTITIONS, (0, 1), flush, TAGS[i]);
        }
        Self {
            topics,
            truths,
            flush,
        }
    }

    /// The next offset of every lane once all of it is read.
    fn ends(&self) -> BTreeMap<(String, i32), i64> {
        let mut ends = BTreeMap::new();
        for i in 0..self.topics.len() {
            for p in 0..PARTITIONS {
                let n = self.truths[i].events_in_partition(p).unwrap() as i64;
                ends.insert((self.topics[i].clone(), p), n + i64::from(self.flush));
            }
        }
        ends
    }

    /// Every valid event: event id → (sensor id, temperature).
    fn events(&self) -> BTreeMap<String, (String, f64)> {
        let mut out = BTreeMap::new();
        for (truth, tag) in self.truths.iter().zip(TAGS) {
            for p in 0..PARTITIONS {
                for o in 0..truth.events_in_partition(p).unwrap() as i64 {
                    let e = truth.event(p, o).unwrap();
                    if e.poison.is_none() {
                        let id = tagged(tag, &format!("{p}-{o}"));
                        out.insert(id, (tagged(tag, &e.sensor_id()), e.temperature()));
                    }
                }
            }
        }
        out
    }

    /// (topic, partition, offset) of every poison message.
    fn poison(&self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for i in 0..self.topics.len() {
            for p in 0..PARTITIONS {
                for o in 0..self.truths[i].events_in_partition(p).unwrap() as i64 {
                    if self.truths[i].event(p, o).unwrap().poison.is_some() {
                        out.push((self.topics[i].clone(), p, o));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Every 10-second window of every sensor: (sensor, start) → (count, max temperature).
    fn windows(&self) -> BTreeMap<(String, i64), (i64, f64)> {
        let mut want: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
        for (truth, tag) in self.truths.iter().zip(TAGS) {
            for p in 0..PARTITIONS {
                for o in 0..truth.events_in_partition(p).unwrap() as i64 {
                    let e = truth.event(p, o).unwrap();
                    if e.poison.is_some() {
                        continue;
                    }
                    let start = e.event_time_ms - e.event_time_ms.rem_euclid(10_000);
                    let w = want
                        .entry((tagged(tag, &e.sensor_id()), start))
                        .or_insert((0, f64::MIN));
                    w.0 += 1;
                    w.1 = w.1.max(e.temperature());
                }
            }
        }
        want
    }
}

const FIELDS: &str = r#"fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]"#;

/// Every valid event's id, sensor and temperature into `sink`; poison to the JSONL DLQ `dlq`.
fn passthrough(name: &str, input: &Input, sink: &str) -> String {
    format!(
        r#"
name = "{name}"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{ta}", "{tb}"]
group_id = "{name}"
options = {{ "session.timeout.ms" = "1000", "heartbeat.interval.ms" = "300" }}

[schema]
event_time = "event_time"
partition_key = "sensor_id"
{FIELDS}

[[operators]]
type = "project"
columns = [
  {{ expr = "event_id", name = "event_id" }},
  {{ expr = "sensor_id", name = "sensor_id" }},
  {{ expr = "temperature", name = "temperature" }},
]

{sink}

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
{ckpt_dir}interval_ms = 50

[batch]
max_rows = 300
linger_ms = 5
"#,
        brokers = brokers(),
        ta = input.topics[0],
        tb = input.topics[1],
        // A postgres or transactional kafka sink stores the checkpoints itself.
        ckpt_dir = if sink.contains("postgres") || sink.contains("transactional_id") {
            ""
        } else {
            "dir = \"ckpt\"\n"
        },
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

fn exited(child: &mut Child) -> Option<String> {
    let status = child.try_wait().unwrap()?;
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    Some(format!("the worker exited by itself ({status}): {err}"))
}

/// The group's committed next offset of every lane (they follow the stored checkpoints).
/// Read with `read_uncommitted`: a `read_committed` client asks the broker for stable offsets
/// only, and Apache Kafka holds that answer back while a transaction that commits offsets of
/// the group is open (a killed run's, until the next run fences it); the offsets it answers
/// with are the committed ones either way.
fn committed(group: &str, input: &Input) -> BTreeMap<(String, i32), i64> {
    let topics: Vec<&str> = input.topics.iter().map(String::as_str).collect();
    let mut config = KafkaSourceConfig::new(brokers(), &topics, group);
    config
        .options
        .insert("isolation.level".into(), "read_uncommitted".into());
    let committer = KafkaOffsetCommitter::new(&config).unwrap();
    let mut out = BTreeMap::new();
    for t in &input.topics {
        for p in 0..PARTITIONS {
            if let Some(n) = committer.committed(t, p).unwrap() {
                out.insert((t.clone(), p), n);
            }
        }
    }
    out
}

/// Run the pipeline in `dir` to the end of its input: first `kills` runs SIGKILLed at their
/// first progress (the first run) or a random 0-150 ms after it, then one run stopped by SIGTERM once every lane's
/// offset is committed and `settled` says the output is complete. Returns how many kills
/// landed before the input was read to its end.
fn run_to_end(
    dir: &Path,
    group: &str,
    input: &Input,
    kills: usize,
    settled: &dyn Fn() -> bool,
) -> usize {
    let ends = input.ends();
    let total: i64 = ends.values().sum();
    let progress = || committed(group, input).values().sum::<i64>();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    let started = Instant::now();
    let mut landed = 0;
    for kill in 0..kills {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "kill {kill} late"
        );
        let before = progress();
        let mut child = spawn(dir);
        let run_started = Instant::now();
        while progress() == before && run_started.elapsed() < Duration::from_secs(30) {
            if let Some(why) = exited(&mut child) {
                panic!("{why}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shown when the test fails: how long each run took to make progress.
        eprintln!(
            "run {kill}: progress {} -> {} after {:?}",
            before,
            progress(),
            run_started.elapsed()
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // The first kill lands at the first progress: an idle machine reading a fast broker
        // read all the input within 150 ms of it once (tansu, in scripts/test.sh's rerun).
        if kill > 0 {
            std::thread::sleep(Duration::from_millis(rng % 150));
        }
        if progress() >= total {
            // A fast machine read the rest before this kill: the kills that landed stand,
            // and the last run below still has to finish the input exactly once.
            child.kill().unwrap();
            child.wait().unwrap();
            assert!(kill > 0, "the first run read all the input before its kill");
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        landed += 1;
    }
    let mut child = spawn(dir);
    let last_started = Instant::now();
    let deadline = last_started + Duration::from_secs(180);
    // When the killed runs already committed everything, the condition holds at once: still
    // give the worker time to install its signal handlers (a SIGTERM before them kills it).
    while committed(group, input) != ends
        || !settled()
        || last_started.elapsed() < Duration::from_secs(2)
    {
        if Instant::now() >= deadline {
            // Never leave the worker running behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the last run did not finish");
        }
        if let Some(why) = exited(&mut child) {
            panic!("{why}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    landed
}

/// The DLQ holds every poison message of both topics exactly once.
fn assert_dlq(dir: &Path, input: &Input) {
    let mut got: Vec<(String, i32, i64)> = read_dlq_dir(dir.join("dlq"))
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.letter.topic.to_string(),
                l.letter.partition,
                l.letter.offset,
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, input.poison(), "dead letters of both topics");
}

type Rows = Vec<(String, String, f64)>;

/// Rows (event id, sensor, temperature) equal the truth, each exactly once.
fn assert_exactly_once(mut got: Rows, input: &Input, what: &str) {
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Rows = input
        .events()
        .into_iter()
        .map(|(id, (s, t))| (id, s, t))
        .collect();
    let missing = want
        .iter()
        .filter(|w| got.binary_search_by(|g| g.0.cmp(&w.0)).is_err())
        .count();
    let dups = got.windows(2).filter(|w| w[0].0 == w[1].0).count();
    assert_eq!(
        (missing, dups, got.len()),
        (0, 0, want.len()),
        "{what}: (missing, duplicated, rows)"
    );
    assert_eq!(got, want, "{what}");
}

fn json_rows(values: Vec<serde_json::Value>) -> Rows {
    values
        .iter()
        .map(|v| {
            (
                v["event_id"].as_str().unwrap().to_string(),
                v["sensor_id"].as_str().unwrap().to_string(),
                v["temperature"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn file_sink_case(kind: &str, kills: usize) {
    let input = Input::produce(false, kills);
    let name = unique(&format!("two-topics-{kind}"));
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("[[sinks]]\ntype = \"{kind}\"\npath = \"out\"");
    std::fs::write(dir.path().join("p.toml"), passthrough(&name, &input, &sink)).unwrap();
    run_to_end(dir.path(), &name, &input, kills, &|| true);
    let out = dir.path().join("out");
    let rows = match kind {
        "jsonl" => json_rows(read_jsonl_dir(&out).unwrap()),
        _ => json_rows(
            common::rows(&read_parquet_dir(&out).unwrap())
                .into_iter()
                .map(serde_json::Value::Object)
                .collect(),
        ),
    };
    assert_exactly_once(rows, &input, &format!("{kind} after {kills} SIGKILLs"));
    assert_dlq(dir.path(), &input);
}

#[test]
fn two_topics_into_jsonl_give_every_event_once() {
    file_sink_case("jsonl", 0);
}

#[test]
fn two_topics_into_jsonl_give_every_event_once_after_sigkills() {
    file_sink_case("jsonl", 3);
}

#[test]
fn two_topics_into_parquet_give_every_event_once() {
    file_sink_case("parquet", 0);
}

#[test]
fn two_topics_into_parquet_give_every_event_once_after_sigkills() {
    file_sink_case("parquet", 3);
}

fn sqlite_case(kills: usize) {
    let input = Input::produce(false, kills);
    let name = unique("two-topics-sqlite");
    let dir = tempfile::tempdir().unwrap();
    let sink = "[[sinks]]\ntype = \"sqlite\"\npath = \"out.sqlite\"\ntable = \"events\"\nkey_columns = [\"event_id\"]";
    std::fs::write(dir.path().join("p.toml"), passthrough(&name, &input, sink)).unwrap();
    run_to_end(dir.path(), &name, &input, kills, &|| true);
    let conn = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT event_id, sensor_id, temperature FROM events")
        .unwrap();
    let rows: Rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_exactly_once(rows, &input, &format!("sqlite after {kills} SIGKILLs"));
    assert_dlq(dir.path(), &input);
}

#[test]
fn two_topics_into_sqlite_give_every_event_once() {
    sqlite_case(0);
}

#[test]
fn two_topics_into_sqlite_give_every_event_once_after_sigkills() {
    sqlite_case(3);
}

fn postgres_case(kills: usize) {
    let input = Input::produce(false, kills);
    let name = unique("two-topics-pg").replace('-', "_");
    let table = format!("t_{name}");
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[sinks]]\ntype = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\nkey_columns = [\"event_id\"]",
        pg_url()
    );
    std::fs::write(dir.path().join("p.toml"), passthrough(&name, &input, &sink)).unwrap();
    run_to_end(dir.path(), &name, &input, kills, &|| true);
    let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let rows: Rows = client
        .query(
            &format!("SELECT event_id, sensor_id, temperature FROM \"{table}\""),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_exactly_once(rows, &input, &format!("postgres after {kills} SIGKILLs"));
    // The checkpoints stored with the rows: one per lane, at its end.
    let stored: BTreeMap<(String, i32), i64> = client
        .query(
            "SELECT topic, partition, next_offset FROM weir_checkpoints WHERE pipeline = $1",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(stored, input.ends(), "checkpoints stored in postgres");
    assert_dlq(dir.path(), &input);
}

#[test]
fn two_topics_into_postgres_give_every_event_once() {
    postgres_case(0);
}

#[test]
fn two_topics_into_postgres_give_every_event_once_after_sigkills() {
    postgres_case(3);
}

/// Every message of `topic` read at `isolation` (`read_committed` or `read_uncommitted`), as
/// JSON values; reads until `at_least` arrived and a second passed without one, for at most
/// `within`.
fn kafka_values(
    topic: &str,
    partitions: i32,
    at_least: usize,
    isolation: &str,
    within: Duration,
) -> Vec<serde_json::Value> {
    common::kafka::read_payloads(topic, partitions, at_least, isolation, within)
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect()
}

/// Every message of `topic` (read_committed), as rows.
fn kafka_rows(topic: &str, partitions: i32, at_least: usize) -> Rows {
    json_rows(kafka_values(
        topic,
        partitions,
        at_least,
        "read_committed",
        Duration::from_secs(60),
    ))
}

/// Needs a broker that implements transactions (Apache Kafka): on tansu, which does not hide
/// aborted records, output rows are repeated after SIGKILLs and a dead letter was seen lost.
fn kafka_case(kills: usize) {
    assert!(
        broker_is_apache_kafka(),
        "needs a broker that implements transactions (WEIR_TEST_BROKER=kafka)"
    );
    let input = Input::produce(false, kills);
    let name = unique("two-topics-kafka");
    let out_topic = create_topic(2);
    let ckpt_topic = create_topic(2);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[[sinks]]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{out_topic}\"\nkey_column = \"event_id\"\ntransactional_id = \"{name}\"\ncheckpoint_topic = \"{ckpt_topic}\"",
        brokers()
    );
    std::fs::write(dir.path().join("p.toml"), passthrough(&name, &input, &sink)).unwrap();
    run_to_end(dir.path(), &name, &input, kills, &|| true);
    let want = input.events().len();
    let rows = kafka_rows(&out_topic, 2, want);
    assert_exactly_once(rows, &input, &format!("kafka after {kills} SIGKILLs"));
    assert_dlq(dir.path(), &input);
}

#[test]
fn two_topics_into_a_transactional_kafka_sink_give_every_event_once() {
    kafka_case(0);
}

#[test]
fn two_topics_into_a_transactional_kafka_sink_give_every_event_after_sigkills() {
    kafka_case(3);
}

/// Windows per sensor over both topics into JSONL. The keys include the partition key, but the
/// same key may be in both topics, so the window runs in two phases (manual assignment).
fn windows_pipeline(name: &str, input: &Input) -> String {
    format!(
        r#"
name = "{name}"
sql = "SELECT sensor_id, window_start, count(*) AS readings, max(temperature) AS max_temp FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND) HAVING sensor_id <> '__flush'"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{ta}", "{tb}"]
group_id = "{name}"
assignment = "manual"

[schema]
event_time = "event_time"
partition_key = "sensor_id"
{FIELDS}

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "ckpt"
interval_ms = 50

[batch]
max_rows = 300
linger_ms = 5

[watermark]
idle_advance_ms = 2000
"#,
        brokers = brokers(),
        ta = input.topics[0],
        tb = input.topics[1],
    )
}

type Windows = BTreeMap<(String, i64), (i64, f64)>;

/// The windows of `rows` (the window pipeline's output), and how many were emitted twice.
fn windows_of(rows: Vec<serde_json::Value>) -> (Windows, usize) {
    let mut got = Windows::new();
    let mut repeated = 0;
    for v in rows {
        let key = (
            v["sensor_id"].as_str().unwrap().to_string(),
            epoch_millis(&v["window_start"]),
        );
        let value = (
            v["readings"].as_i64().unwrap(),
            v["max_temp"].as_f64().unwrap(),
        );
        repeated += usize::from(got.insert(key, value).is_some());
    }
    (got, repeated)
}

fn assert_windows(got: &Windows, repeated: usize, want: &Windows, what: &str) {
    let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(
        (missing, repeated, got.len()),
        (0, 0, want.len()),
        "{what}: (missing, emitted twice, windows)"
    );
    assert_eq!(got, want, "{what}");
}

/// The report's case: windows per sensor over two topics whose partition numbers overlap,
/// into JSONL; each window is emitted once.
fn windows_case(kills: usize) {
    let input = Input::produce(true, kills);
    let name = unique("two-topics-windows");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), windows_pipeline(&name, &input)).unwrap();
    let check = weir(&["run", "--check", "p.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    // A lane that a killed run read to its end reports no watermark in the next run: it
    // follows the others once idle for `idle_advance_ms` (ARCHITECTURE.md, "Two-phase
    // windows"), and only then are the last windows merged. Wait for them.
    let want = input.windows();
    let out = dir.path().join("out");
    let settled = || read_jsonl_dir(&out).map_or(0, |rows| rows.len()) >= want.len();
    run_to_end(dir.path(), &name, &input, kills, &settled);
    let (got, repeated) = windows_of(read_jsonl_dir(dir.path().join("out")).unwrap());
    assert_windows(
        &got,
        repeated,
        &want,
        &format!("windows after {kills} SIGKILLs"),
    );
    assert_dlq(dir.path(), &input);
}

#[test]
fn windows_over_two_topics_into_jsonl_are_each_emitted_once() {
    windows_case(0);
}

#[test]
fn windows_over_two_topics_into_jsonl_are_each_emitted_once_after_sigkills() {
    windows_case(3);
}

/// Exactly-once Kafka to Kafka: windows per sensor over one topic (the partition key is the
/// sensor, so each partition emits its own windows as its watermark passes them) into a
/// transactional kafka sink (checkpoints in a checkpoint topic), the worker SIGKILLed at
/// random points `kills` times. A `read_committed` reader of the output sees every window
/// exactly once; a `read_uncommitted` one sees more, so kills did land between producing an
/// epoch's rows and committing its transaction, and what they produced was aborted and hidden.
fn windows_into_kafka_case(kills: usize) {
    assert!(
        broker_is_apache_kafka(),
        "needs a broker that hides aborted transactions (WEIR_TEST_BROKER=kafka)"
    );
    let input = Input::produce_topics(1, true, kills);
    let name = unique("windows-kafka");
    let out_topic = create_topic(2);
    let ckpt_topic = create_topic(2);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
name = "{name}"
sql = "SELECT sensor_id, window_start, count(*) AS readings, max(temperature) AS max_temp FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND) HAVING sensor_id <> '__flush'"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{name}"
options = {{ "session.timeout.ms" = "1000", "heartbeat.interval.ms" = "300" }}

[schema]
event_time = "event_time"
partition_key = "sensor_id"
{FIELDS}

[[sinks]]
type = "kafka"
brokers = "{brokers}"
topic = "{out_topic}"
key_column = "sensor_id"
transactional_id = "{name}"
checkpoint_topic = "{ckpt_topic}"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 100

[batch]
max_rows = 300
linger_ms = 5
"#,
        brokers = brokers(),
        topic = input.topics[0],
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let check = weir(&["run", "--check", "p.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let want = input.windows();
    let committed_rows = |within| kafka_values(&out_topic, 2, want.len(), "read_committed", within);
    let settled = || committed_rows(Duration::from_secs(2)).len() >= want.len();
    let landed = run_to_end(dir.path(), &name, &input, kills, &settled);
    assert_eq!(landed, kills, "kills before the input was read to its end");
    let (got, repeated) = windows_of(committed_rows(Duration::from_secs(60)));
    assert_windows(
        &got,
        repeated,
        &want,
        &format!("read_committed windows after {kills} SIGKILLs"),
    );
    assert_dlq(dir.path(), &input);
    let all = kafka_values(
        &out_topic,
        2,
        want.len(),
        "read_uncommitted",
        Duration::from_secs(60),
    );
    assert!(
        all.len() > want.len(),
        "read_uncommitted saw {} rows, read_committed {}: no kill landed inside a transaction",
        all.len(),
        want.len()
    );
}

#[test]
fn windows_into_a_transactional_kafka_sink_are_exactly_once_after_10_sigkills() {
    windows_into_kafka_case(10);
}
