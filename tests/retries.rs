//! Retries before the DLQ (issue 12, point 1; ARCHITECTURE.md, "Retries before the DLQ"): a
//! projection whose fold fails with a retryable error for chosen events, on a short schedule.
//! Each key's state is the sequence of its events' `seq` in the order they were folded, so
//! per-key order is visible in the read model. An event that succeeds on a retry gives the
//! read model of an uninterrupted run, its key's later events folded after it while other
//! keys went on; one that always fails ends in the DLQ with the schedule's attempts, its
//! key's later events folded in order. Over the test broker, a worker SIGKILLed while events
//! wait for a retry resumes them, timers included, from its checkpoint (not from Kafka).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{brokers, create_topic, unique};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use weir::connectors::dlq_file::read_dlq_dir;
use weir::connectors::{read_jsonl_dir, KafkaOffsetCommitter, KafkaSource, KafkaSourceConfig};
use weir::prelude::*;
use weir_runtime::metrics::now_ms;

const LIMIT: Duration = Duration::from_secs(90);

#[derive(Deserialize)]
struct Ev {
    key: String,
    seq: i64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Seqs {
    seqs: Vec<i64>,
}

/// The fold under test: appends each event's `seq` to its key's state. The events in `fails`
/// fail with a retryable error that many times (`u32::MAX`: always); their attempts are
/// counted in memory, or in `attempts_file` (one line per attempt: key, seq, epoch ms) when it
/// must outlive the process.
struct Flaky {
    fails: BTreeMap<(String, i64), u32>,
    attempts: Mutex<HashMap<(String, i64), u32>>,
    attempts_file: Option<PathBuf>,
    /// Every successful fold, in the order it happened.
    log: Mutex<Vec<(String, i64)>>,
}

impl Flaky {
    fn new(fails: &[(&str, i64, u32)], attempts_file: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            fails: fails
                .iter()
                .map(|(k, s, n)| ((k.to_string(), *s), *n))
                .collect(),
            attempts: Mutex::default(),
            attempts_file,
            log: Mutex::default(),
        })
    }

    /// This attempt's number for the event.
    fn attempt(&self, event: &(String, i64)) -> u32 {
        match &self.attempts_file {
            None => {
                let mut a = self.attempts.lock().unwrap();
                let n = a.entry(event.clone()).or_default();
                *n += 1;
                *n
            }
            Some(path) => {
                let before = attempt_times(path, &event.0, event.1).len() as u32;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                writeln!(f, "{} {} {}", event.0, event.1, now_ms()).unwrap();
                f.sync_all().unwrap();
                before + 1
            }
        }
    }
}

/// The times (epoch ms) of the recorded attempts of `key`/`seq`.
fn attempt_times(path: &Path, key: &str, seq: i64) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let (k, s, t) = (w.next()?, w.next()?, w.next()?);
            (k == key && s == seq.to_string()).then(|| t.parse().unwrap())
        })
        .collect()
}

#[derive(Clone)]
struct SeqProjection(Arc<Flaky>);

impl Projection for SeqProjection {
    type Event = Ev;
    type State = Seqs;
    type Row<'a> = serde_json::Value;

    fn key(&self, e: &Ev) -> String {
        e.key.clone()
    }

    fn apply(&self, s: &mut Seqs, e: Ev) -> Result<(), EventError> {
        let event = (e.key.clone(), e.seq);
        if let Some(fails) = self.0.fails.get(&event) {
            let attempt = self.0.attempt(&event);
            if attempt <= *fails {
                return Err(EventError::retryable(format!(
                    "{}/{}: attempt {attempt} failed",
                    e.key, e.seq
                )));
            }
        }
        s.seqs.push(e.seq);
        self.0.log.lock().unwrap().push(event);
        Ok(())
    }

    fn row<'a>(&'a self, key: &'a str, s: &'a Seqs) -> serde_json::Value {
        let seqs: Vec<String> = s.seqs.iter().map(i64::to_string).collect();
        json!({"key": key, "seqs": seqs.join(","), "n": s.seqs.len()})
    }

    fn row_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("seqs", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }
}

fn schema(partition_key: Option<&str>) -> SchemaConfig {
    let field = |name: &str, field_type| FieldConfig::new(name, field_type);
    SchemaConfig {
        table: "events".into(),
        event_time: "ts".into(),
        partition_key: partition_key.map(Into::into),
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            field("key", FieldType::String),
            field("seq", FieldType::Int64),
            FieldConfig {
                any_epoch: true,
                ..field("ts", FieldType::Timestamp)
            },
        ],
    }
}

/// `events` per key of `keys`, interleaved: `(key, seq)` in input order.
fn events(keys: &[&str], events: i64) -> Vec<(String, i64)> {
    (1..=events)
        .flat_map(|seq| keys.iter().map(move |k| (k.to_string(), seq)))
        .collect()
}

fn payload((key, seq): &(String, i64)) -> String {
    json!({"key": key, "seq": seq, "ts": 1_000 + seq}).to_string()
}

fn ms(waits: &[u64]) -> RetrySchedule {
    let waits: Vec<Duration> = waits.iter().map(|w| Duration::from_millis(*w)).collect();
    RetrySchedule::fixed(&waits)
}

/// The read model: the last row of each key in `out`, as `key → seqs`.
fn read_model(out: &Path) -> BTreeMap<String, String> {
    let mut model = BTreeMap::new();
    for row in read_jsonl_dir(out).unwrap_or_default() {
        model.insert(
            row["key"].as_str().unwrap().to_string(),
            row["seqs"].as_str().unwrap().to_string(),
        );
    }
    model
}

/// The read model `input` folds into, with the events of `skipped` left out.
fn expected(input: &[(String, i64)], skipped: &[(&str, i64)]) -> BTreeMap<String, String> {
    let mut model: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, s) in input {
        if !skipped.contains(&(k.as_str(), *s)) {
            model.entry(k.clone()).or_default().push(s.to_string());
        }
    }
    model.into_iter().map(|(k, v)| (k, v.join(","))).collect()
}

/// A JSONL file of `input` run through the projection in `dir`: its summary.
fn run_file(
    dir: &Path,
    input: &[(String, i64)],
    flaky: Arc<Flaky>,
    retry: RetrySchedule,
) -> RunSummary {
    let file = dir.join("in.jsonl");
    let text: String = input.iter().map(|e| payload(e) + "\n").collect();
    std::fs::write(&file, text).unwrap();
    let projection = SeqProjection(flaky);
    Pipeline::new("retries")
        .source(
            JsonlFileSource::new(JsonlSourceConfig {
                path: file,
                partitions: 2,
                key_field: Some("key".into()),
            })
            .unwrap(),
        )
        .schema(schema(None))
        .operator("seqs", move |input| {
            Ok(Box::new(ProjectionOperator::new("seqs", projection.clone(), input)) as _)
        })
        .retry_schedule(retry)
        .sink(
            JsonlSink::new(
                "out",
                &JsonlSinkConfig {
                    path: dir.join("out"),
                },
            )
            .unwrap(),
        )
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_millis(50))
        .run(Shutdown::new())
        .unwrap()
}

#[test]
fn an_event_that_succeeds_on_a_retry_gives_the_uninterrupted_runs_read_model() {
    let input = events(&["a", "b", "c", "d"], 20);
    let reference = tempfile::tempdir().unwrap();
    run_file(
        reference.path(),
        &input,
        Flaky::new(&[], None),
        ms(&[200, 200]),
    );
    let want = read_model(&reference.path().join("out"));
    assert_eq!(want, expected(&input, &[]));

    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::new(&[("a", 3, 2)], None);
    let started = Instant::now();
    let summary = run_file(dir.path(), &input, flaky.clone(), ms(&[200, 200]));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the input's end waits for the retries"
    );
    assert!(summary.finished);
    assert_eq!(read_model(&dir.path().join("out")), want);
    assert!(read_dlq_dir(dir.path().join("dlq")).unwrap().is_empty());
    // a/3 was folded after the other keys' later events, and a's later events after it.
    let log = flaky.log.lock().unwrap().clone();
    let at = |k: &str, s: i64| log.iter().position(|e| *e == (k.to_string(), s)).unwrap();
    for key in ["b", "c", "d"] {
        assert!(at(key, 20) < at("a", 3), "{key} waited for a: {log:?}");
    }
    let a: Vec<i64> = log.iter().filter(|e| e.0 == "a").map(|e| e.1).collect();
    assert_eq!(a, (1..=20).collect::<Vec<_>>(), "a's events in order");
    let c = summary.counters;
    assert_eq!(
        (c.retries_scheduled, c.retries, c.retry_successes, c.dlq),
        (2, 2, 1, 0),
        "{c:?}"
    );
    assert!(c.balanced(), "{c:?}");
    assert_eq!(c.in_retry(), 0);
    assert_eq!(c.aggregated, input.len() as u64);
}

#[test]
fn an_event_that_always_fails_ends_in_the_dlq_with_the_schedules_attempts_and_its_key_goes_on() {
    let input = events(&["a", "b", "c"], 10);
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::new(&[("b", 4, u32::MAX)], None);
    let summary = run_file(dir.path(), &input, flaky.clone(), ms(&[200, 200, 200]));
    assert_eq!(
        read_model(&dir.path().join("out")),
        expected(&input, &[("b", 4)])
    );
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.letter.attempts, 4, "the schedule's attempts");
    assert_eq!(d.letter.message, "b/4: attempt 4 failed", "the last error");
    let original = payload(&("b".to_string(), 4));
    assert_eq!(d.letter.payload.as_deref(), Some(original.as_bytes()));
    assert_eq!(d.letter.kind, weir_runtime::ErrorKind::OperatorError);
    assert_eq!(
        *flaky
            .attempts
            .lock()
            .unwrap()
            .get(&("b".into(), 4))
            .unwrap(),
        4
    );
    let log = flaky.log.lock().unwrap().clone();
    let b: Vec<i64> = log.iter().filter(|e| e.0 == "b").map(|e| e.1).collect();
    assert_eq!(
        b,
        [1, 2, 3, 5, 6, 7, 8, 9, 10],
        "b's later events, in order"
    );
    let c = summary.counters;
    assert_eq!(
        (c.retries_scheduled, c.retries, c.retry_successes, c.dlq),
        (3, 3, 0, 1),
        "{c:?}"
    );
    assert!(c.balanced(), "{c:?}");
}

#[test]
fn without_retries_a_retryable_error_is_dead_lettered_at_once() {
    let input = events(&["a", "b"], 5);
    let dir = tempfile::tempdir().unwrap();
    let summary = run_file(
        dir.path(),
        &input,
        Flaky::new(&[("a", 2, 1)], None),
        RetrySchedule::none(),
    );
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].letter.attempts, 1);
    assert_eq!(summary.counters.retries, 0);
    assert_eq!(
        read_model(&dir.path().join("out")),
        expected(&input, &[("a", 2)])
    );
}

// --- Across a SIGKILL, over the test broker -------------------------------------------------

/// The waits of the crash test: the second is long, so the worker is killed while the
/// events wait for their third attempt.
const CRASH_WAITS: [u64; 3] = [200, 8_000, 200];
/// a/3 fails three times then succeeds; c/2 always fails.
const CRASH_FAILS: [(&str, i64, u32); 2] = [("a", 3, 3), ("c", 2, u32::MAX)];

/// What the child worker reads from its directory.
#[derive(Serialize, Deserialize)]
struct ChildConfig {
    topic: String,
    group: String,
}

/// The worker of [`a_worker_killed_while_events_wait_resumes_their_timers_from_its_checkpoint`]:
/// runs only in the child process that test starts (with `WEIR_RETRY_CHILD` naming its
/// directory), until SIGTERM; in the suite itself it does nothing.
#[test]
fn retry_worker_child() {
    let Ok(dir) = std::env::var("WEIR_RETRY_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let c: ChildConfig =
        serde_json::from_slice(&std::fs::read(dir.join("child.json")).unwrap()).unwrap();
    let mut source = KafkaSourceConfig::new(brokers(), &[c.topic.as_str()], &c.group);
    source
        .options
        .insert("session.timeout.ms".into(), "3000".into());
    source
        .options
        .insert("heartbeat.interval.ms".into(), "500".into());
    let projection = SeqProjection(Flaky::new(&CRASH_FAILS, Some(dir.join("attempts.log"))));
    let shutdown = Shutdown::new();
    weir::install_signal_handlers(shutdown.clone()).unwrap();
    Pipeline::new("retries")
        .source(KafkaSource::new(source).unwrap())
        .schema(schema(Some("key")))
        .operator("seqs", move |input| {
            Ok(Box::new(ProjectionOperator::new("seqs", projection.clone(), input)) as _)
        })
        .retry_schedule(ms(&CRASH_WAITS))
        .sink(
            JsonlSink::new(
                "out",
                &JsonlSinkConfig {
                    path: dir.join("out"),
                },
            )
            .unwrap(),
        )
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_millis(50))
        .run(shutdown)
        .unwrap();
}

fn spawn_child(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "retries::retry_worker_child", "--nocapture"])
        .env("WEIR_RETRY_CHILD", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The attempts of each event waiting in the stored checkpoint of `topic`/0.
fn parked_attempts(dir: &Path, topic: &str) -> BTreeMap<i64, u64> {
    let path = dir.join("checkpoints/retries").join(topic).join("0.ckpt");
    let Ok(bytes) = std::fs::read(&path) else {
        return BTreeMap::new();
    };
    let Ok(c) = weir_runtime::checkpoint::decode(&bytes, &path) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for level in c.parked.meta["levels"].as_array().into_iter().flatten() {
        for e in level["entries"].as_array().into_iter().flatten() {
            out.insert(
                e["offset"].as_i64().unwrap(),
                e["attempts"].as_u64().unwrap(),
            );
        }
    }
    out
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_killed_while_events_wait_resumes_their_timers_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic(1);
    let group = unique("retries");
    std::fs::write(
        dir.path().join("child.json"),
        serde_json::to_vec(&ChildConfig {
            topic: topic.clone(),
            group: group.clone(),
        })
        .unwrap(),
    )
    .unwrap();
    let input = events(&["a", "b", "c"], 10);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for e in &input {
        let body = payload(e);
        producer
            .send(
                BaseRecord::<str, str>::to(&topic)
                    .partition(0)
                    .key(e.0.as_str())
                    .payload(body.as_str()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let offset_of =
        |k: &str, s: i64| input.iter().position(|e| *e == (k.to_string(), s)).unwrap() as i64;
    let (a3, c2) = (offset_of("a", 3), offset_of("c", 2));
    let log = dir.path().join("attempts.log");

    // First worker: both events fail twice, then wait 8 s for their third attempt; their
    // key's later events wait behind them. Killed once the checkpoint holds that.
    let mut child = spawn_child(dir.path());
    wait_for("a checkpoint with both events at attempt 2", || {
        let parked = parked_attempts(dir.path(), &topic);
        parked.get(&a3) == Some(&2) && parked.get(&c2) == Some(&2)
    });
    let parked = parked_attempts(dir.path(), &topic);
    assert_eq!(
        parked.len(),
        2 + 7 + 8,
        "a/3 and c/2 with the later events of a (7) and c (8): {parked:?}"
    );
    // The accounting holds with the events in flight: they are in state.
    let path = dir
        .path()
        .join("checkpoints/retries")
        .join(&topic)
        .join("0.ckpt");
    let stored = weir_runtime::checkpoint::decode(&std::fs::read(&path).unwrap(), &path).unwrap();
    let counters = stored.counters;
    assert!(counters.balanced(), "{counters:?}");
    assert_eq!(counters.in_retry(), 17, "{counters:?}");
    assert_eq!(counters.retries, 2, "{counters:?}");
    // The offsets went on past the waiting events: they are in the checkpoint.
    let committer = KafkaOffsetCommitter::new(&KafkaSourceConfig::new(
        brokers(),
        &[topic.as_str()],
        &group,
    ))
    .unwrap();
    wait_for("the group's offset at the end", || {
        committer.committed(&topic, 0).unwrap() == Some(input.len() as i64)
    });
    child.kill().unwrap(); // SIGKILL: no drain, no last checkpoint
    child.wait().unwrap();
    assert_eq!(attempt_times(&log, "a", 3).len(), 2);
    assert_eq!(attempt_times(&log, "c", 2).len(), 2);
    // b never waited.
    let b = read_model(&dir.path().join("out"));
    assert_eq!(b.get("b").map(String::as_str), Some("1,2,3,4,5,6,7,8,9,10"));

    // Second worker: restores the waiting events and their timers from the checkpoint.
    let mut child = spawn_child(dir.path());
    let want = expected(&input, &[("c", 2)]);
    wait_for("the read model and the dead letter", || {
        read_model(&dir.path().join("out")) == want
            && !read_dlq_dir(dir.path().join("dlq"))
                .unwrap_or_default()
                .is_empty()
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    // Each event was attempted 4 times in all, not again from the start after the restart
    // (c/2 would then have 2 + 4): the restart did not read them again from Kafka.
    let a = attempt_times(&log, "a", 3);
    let c = attempt_times(&log, "c", 2);
    assert_eq!((a.len(), c.len()), (4, 4), "a {a:?}, c {c:?}");
    // The third attempts kept the 8 s wait after the second, across the restart.
    assert!(a[2] - a[1] >= 8_000, "a's timer: {a:?}");
    assert!(c[2] - c[1] >= 8_000, "c's timer: {c:?}");
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!((d.letter.offset, d.letter.attempts), (c2, 4));
    assert_eq!(d.letter.message, "c/2: attempt 4 failed");
    assert_eq!(
        d.letter.payload.as_deref(),
        Some(payload(&("c".into(), 2)).as_bytes())
    );
    assert_eq!(read_model(&dir.path().join("out")), want);
    assert!(parked_attempts(dir.path(), &topic).is_empty());
    assert_eq!(
        committer.committed(&topic, 0).unwrap(),
        Some(input.len() as i64)
    );
}

#[test]
fn an_upcaster_step_that_fails_retryably_keeps_its_message_keys_order() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let input = events(&["a", "b"], 8);
    // Odd seqs are version 1 events, which the step upcasts; a/3's step fails once.
    let text: String = input
        .iter()
        .map(|(k, s)| {
            json!({"key": k, "seq": s, "ts": 1_000 + s, "version": 2 - s % 2}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let current = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("version", DataType::Int64, false),
    ]));
    let failed = Arc::new(AtomicU32::new(0));
    let fails = failed.clone();
    let upcasters = Upcasters::new("version", 2, current).step(1, move |e| {
        if e["key"] == "a" && e["seq"] == 3 && fails.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(EventError::retryable("the schema registry is down"));
        }
        Ok(())
    });
    let mut schema = schema(None);
    schema
        .fields
        .push(FieldConfig::new("version", FieldType::Int64));
    let flaky = Flaky::new(&[], None);
    let projection = SeqProjection(flaky.clone());
    let summary = Pipeline::new("retries")
        .source(
            JsonlFileSource::new(JsonlSourceConfig {
                path: dir.path().join("in.jsonl"),
                partitions: 1,
                key_field: Some("key".into()),
            })
            .unwrap(),
        )
        .schema(schema)
        .upcast(upcasters)
        .operator("seqs", move |input| {
            Ok(Box::new(ProjectionOperator::new("seqs", projection.clone(), input)) as _)
        })
        .retry_schedule(ms(&[200]))
        .sink(
            JsonlSink::new(
                "out",
                &JsonlSinkConfig {
                    path: dir.path().join("out"),
                },
            )
            .unwrap(),
        )
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.path().join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.path().join("checkpoints"))
        .run(Shutdown::new())
        .unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        2,
        "failed once, then succeeded"
    );
    assert_eq!(read_model(&dir.path().join("out")), expected(&input, &[]));
    let log = flaky.log.lock().unwrap().clone();
    let at = |k: &str, s: i64| log.iter().position(|e| *e == (k.to_string(), s)).unwrap();
    assert!(at("b", 8) < at("a", 3), "b went on: {log:?}");
    let c = summary.counters;
    assert_eq!((c.retries, c.retry_successes, c.dlq), (1, 1, 0), "{c:?}");
    assert!(c.balanced(), "{c:?}");
}
