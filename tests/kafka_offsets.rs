//! The group's committed offsets never move backwards (issue 10, point 2), against the real
//! test broker (tansu, `scripts/kafka.sh`): the `weir` binary runs a pipeline file in group
//! mode with a fresh checkpoint directory over a group that already has committed offsets.
//! Every run also says, per partition, where it resumed from.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{brokers, create_topic, produce, unique};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir::connectors::{
    read_jsonl_dir, EventGenerator, GeneratorConfig, KafkaOffsetCommitter, KafkaSourceConfig,
};

const PARTITIONS: i32 = 4;

/// 4 partitions of generated readings (no poison), each followed by one flush event.
fn topic_with_events(seed: u64) -> (String, EventGenerator) {
    let truth = EventGenerator::new(&GeneratorConfig {
        seed,
        sensors: 40,
        partitions: PARTITIONS as u32,
        events: Some(2_000),
        disorder_ms: 1_000,
        poison_ratio: 0.0,
        ..Default::default()
    });
    let topic = create_topic(PARTITIONS);
    produce(&topic, &truth, PARTITIONS);
    (topic, truth)
}

/// Messages in partition `p`: its events and the flush event.
fn end(truth: &EventGenerator, p: i32) -> i64 {
    truth.events_in_partition(p).unwrap() as i64 + 1
}

/// Commit `offsets` (partition, next offset) to `group` with a plain rdkafka consumer, as
/// another tool (or an earlier weir) would have.
fn commit_with_plain_consumer(topic: &str, group: &str, offsets: &[(i32, i64)]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, n) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*n))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

fn committed(topic: &str, group: &str) -> Vec<Option<i64>> {
    let committer =
        KafkaOffsetCommitter::new(&KafkaSourceConfig::new(brokers(), &[topic], group)).unwrap();
    (0..PARTITIONS)
        .map(|p| committer.committed(topic, p).unwrap())
        .collect()
}

/// A passthrough pipeline in group mode: every reading to a JSONL directory `out`.
fn pipeline_toml(topic: &str, group: &str, checkpoints: &str, out: &str) -> String {
    format!(
        r#"
name = "offsets"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
options = {{ "session.timeout.ms" = "3000", "heartbeat.interval.ms" = "500" }}

[schema]
event_time = "event_time"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "sensor_id", type = "string" }},
  {{ name = "temperature", type = "float64" }},
  {{ name = "humidity", type = "float64" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[operators]]
type = "filter"
predicate = "sensor_id <> '__flush'"

[[sinks]]
type = "jsonl"
path = "{out}"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "{checkpoints}"
interval_ms = 100

[batch]
max_rows = 500
linger_ms = 5
"#,
        brokers = brokers()
    )
}

/// A `weir run` whose stderr lines are collected as they come.
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

fn start(dir: &Path, toml: &str) -> Run {
    std::fs::write(dir.join("p.toml"), toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    Run {
        child,
        lines,
        reader,
    }
}

impl Run {
    fn resumed(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("resuming topic"))
            .cloned()
            .collect()
    }

    /// Wait (bounded) until every partition said where it resumed.
    fn wait_until_every_partition_resumed(&mut self) {
        let started = Instant::now();
        while self.resumed().len() < PARTITIONS as usize {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "weir ended early ({status}):\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not every partition resumed:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for the drained exit; its stderr.
    fn stop(mut self) -> String {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("weir did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reader.join().unwrap();
        let text = self.lines.lock().unwrap().join("\n");
        assert_eq!(status.code(), Some(0), "a drained stop exits 0:\n{text}");
        text
    }
}

/// The event ids in a JSONL output directory (empty when the run wrote nothing).
fn event_ids(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    read_jsonl_dir(dir)
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Wait (bounded) until `dir` holds at least `n` events.
fn wait_for_output(dir: &Path, n: usize) {
    let started = Instant::now();
    while event_ids(dir).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} holds {} of {n} events",
            dir.display(),
            event_ids(dir).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fresh_run_that_reads_nothing_new_leaves_the_groups_offsets_where_they_were() {
    let (topic, truth) = topic_with_events(31);
    let group = unique("weir-offsets");
    let ends: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, end(&truth, p))).collect();
    commit_with_plain_consumer(&topic, &group, &ends);
    let before = committed(&topic, &group);
    assert_eq!(before, ends.iter().map(|e| Some(e.1)).collect::<Vec<_>>());

    let dir = tempfile::tempdir().unwrap();
    let mut run = start(
        dir.path(),
        &pipeline_toml(&topic, &group, "fresh-checkpoints", "out"),
    );
    run.wait_until_every_partition_resumed();
    std::thread::sleep(Duration::from_millis(1_000));
    let log = run.stop();

    assert_eq!(
        committed(&topic, &group),
        before,
        "a run that read nothing moved the group's offsets:\n{log}"
    );
    assert!(event_ids(&dir.path().join("out")).is_empty());
}

#[test]
fn runs_without_checkpoints_resume_from_the_group_offsets_and_process_exactly_the_rest() {
    let (topic, truth) = topic_with_events(32);
    let group = unique("weir-offsets");
    // Partitions 0-2 are half done; partition 3 is done.
    let starts: Vec<(i32, i64)> = (0..PARTITIONS)
        .map(|p| match p {
            3 => (p, end(&truth, p)),
            _ => (p, end(&truth, p) / 2),
        })
        .collect();
    commit_with_plain_consumer(&topic, &group, &starts);
    let expected: usize = starts
        .iter()
        .map(|(p, from)| (end(&truth, *p) - 1 - from).max(0) as usize)
        .sum();
    assert!(expected > 0);

    // Two runs, each with a fresh checkpoint directory (the user deleted it) and its own
    // output directory: together they hold every remaining event exactly once.
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (n, wait_for) in [(1, expected), (2, 0)] {
        let out = format!("out-{n}");
        let mut run = start(
            dir.path(),
            &pipeline_toml(&topic, &group, &format!("checkpoints-{n}"), &out),
        );
        run.wait_until_every_partition_resumed();
        wait_for_output(&dir.path().join(&out), wait_for);
        std::thread::sleep(Duration::from_millis(1_000));
        run.stop();
        outputs.extend(event_ids(&dir.path().join(&out)));
    }

    let mut want: Vec<String> = starts
        .iter()
        .flat_map(|(p, from)| (*from..end(&truth, *p) - 1).map(move |o| format!("{p}-{o}")))
        .collect();
    want.sort();
    outputs.sort();
    let n = outputs.len();
    outputs.dedup();
    assert_eq!(n, outputs.len(), "an event was processed twice");
    assert_eq!(
        outputs, want,
        "exactly the events after the group's offsets"
    );
    assert_eq!(
        committed(&topic, &group),
        (0..PARTITIONS)
            .map(|p| Some(end(&truth, p)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_run_says_for_each_partition_where_it_resumed_from() {
    let (topic, truth) = topic_with_events(33);
    let group = unique("weir-offsets");
    // Partitions 0-2 have a committed offset, partition 3 has none.
    let starts: Vec<(i32, i64)> = (0..3).map(|p| (p, end(&truth, p) / 2)).collect();
    commit_with_plain_consumer(&topic, &group, &starts);
    let dir = tempfile::tempdir().unwrap();
    let toml = pipeline_toml(&topic, &group, "checkpoints", "out");

    let mut first = start(dir.path(), &toml);
    first.wait_until_every_partition_resumed();
    let rest: usize = (0..PARTITIONS)
        .map(|p| {
            let from = starts.iter().find(|s| s.0 == p).map_or(0, |s| s.1);
            (end(&truth, p) - 1 - from) as usize
        })
        .sum();
    wait_for_output(&dir.path().join("out"), rest);
    let resumed = first.resumed();
    let log = first.stop();
    for (p, at) in &starts {
        let line = format!(
            "resuming topic {topic} partition {p} from the group's committed offset {at} (no checkpoint)"
        );
        assert!(resumed.iter().any(|l| l.contains(&line)), "{line}\n{log}");
    }
    let line = format!(
        "resuming topic {topic} partition 3 from the earliest offset 0 (no checkpoint, no committed offset)"
    );
    assert!(resumed.iter().any(|l| l.contains(&line)), "{line}\n{log}");

    // The second run resumes from the checkpoints the first one's stop stored.
    let mut second = start(dir.path(), &toml);
    second.wait_until_every_partition_resumed();
    let resumed = second.resumed();
    let log = second.stop();
    for p in 0..PARTITIONS {
        let prefix = format!("resuming topic {topic} partition {p} from checkpoint epoch ");
        let line = resumed
            .iter()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| panic!("{prefix}\n{log}"));
        assert!(
            line.contains(&format!(" at offset {}", end(&truth, p))),
            "{line}"
        );
    }
}
