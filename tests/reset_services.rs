//! `weir reset` against the real services: a Kafka source's consumer group offsets (tansu,
//! `WEIR_KAFKA_BROKERS`) and the PostgreSQL checkpoint store (`WEIR_PG_URL`).

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::cli::{stderr, weir};
use common::kafka::{brokers, create_topic, unique};
use common::{pg_url, IOT_SCHEMA};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const PER_PARTITION: i64 = 12;

/// `PER_PARTITION` messages in each partition, each in a record batch of its own (tansu
/// reports a partition's end as the start of its last batch + 1: exact only then).
fn produce_one_by_one(topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let payload = format!(
                r#"{{"event_id":"{p}-{i}","sensor_id":"s{p}","temperature":1.0,"humidity":0.5,"event_time":{}}}"#,
                1_700_000_000_000i64 + i * 1000
            );
            producer
                .send(
                    BaseRecord::<[u8], [u8]>::to(topic)
                        .partition(p)
                        .key(b"k".as_slice())
                        .payload(payload.as_bytes()),
                )
                .unwrap();
            producer.flush(Duration::from_secs(10)).unwrap();
        }
    }
}

fn group_consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn commit(group: &str, topic: &str, offsets: &[i64]) {
    let c = group_consumer(group);
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

fn committed(group: &str, topic: &str) -> Vec<Option<i64>> {
    let c = group_consumer(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| match got.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn kafka_pipeline(topic: &str, group: &str) -> String {
    format!(
        r#"
name = "{group}"
[source]
type = "kafka"
brokers = "{}"
topics = ["{topic}"]
group_id = "{group}"

{IOT_SCHEMA}

[[operators]]
type = "tumble"
size_ms = 60000
keys = ["sensor_id"]
aggregates = [{{ function = "count", alias = "n" }}]

[[sinks]]
type = "null"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#,
        brokers()
    )
}

#[test]
fn reset_of_a_kafka_source_sets_the_group_offsets_to_earliest_and_latest() {
    let topic = create_topic(PARTITIONS);
    produce_one_by_one(&topic);
    let group = unique("reset-group");
    commit(&group, &topic, &[5, 7]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), kafka_pipeline(&topic, &group)).unwrap();

    // A kafka source needs --to.
    let out = weir(&["reset", "p.toml", "--yes"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--to"), "{}", stderr(&out));

    // Without --yes: the plan, and the offsets stay.
    let out = weir(&["reset", "p.toml", "--to", "earliest"], dir.path());
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        said.contains("committed offset 5 would be set to 0"),
        "{said}"
    );
    assert_eq!(committed(&group, &topic), vec![Some(5), Some(7)]);

    let out = weir(
        &["reset", "p.toml", "--to", "earliest", "--yes"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(committed(&group, &topic), vec![Some(0), Some(0)]);

    let out = weir(&["reset", "p.toml", "--to", "latest", "--yes"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        committed(&group, &topic),
        vec![Some(PER_PARTITION), Some(PER_PARTITION)]
    );

    // A time: the first offset whose timestamp is at or after it (producer timestamps are
    // the send time, all before now + 1 h: nothing after it, so the ends).
    let out = weir(
        &["reset", "p.toml", "--to", "2100-01-01T00:00:00Z", "--yes"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        committed(&group, &topic),
        vec![Some(PER_PARTITION), Some(PER_PARTITION)]
    );
}

// ---- PostgreSQL ----

fn pg_pipeline(name: &str, table: &str) -> String {
    format!(
        r#"
name = "{name}"
sql = "SELECT sensor_id, window_start, count(*) AS readings FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND)"
[source]
type = "generator"
sensors = 20
partitions = 2
events = 3000

{IOT_SCHEMA}

[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["sensor_id", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 30
"#,
        url = pg_url()
    )
}

/// (topic, partition, next_offset, state) of every checkpoint row of `pipeline`.
fn rows(pipeline: &str) -> Vec<(String, i32, i64, Vec<u8>)> {
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    c.query(
        "SELECT topic, partition, next_offset, state FROM weir_checkpoints WHERE pipeline = $1 ORDER BY 1, 2",
        &[&pipeline],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn events_read(out: &std::process::Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains(" events in "))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}; stderr {}", stderr(out)));
    line.split(": ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn run_in(dir: &Path) -> std::process::Output {
    let out = weir(&["run", "p.toml"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[test]
fn reset_with_a_postgres_store_replaces_only_that_pipelines_checkpoints() {
    let id = std::process::id();
    let (a, b) = (format!("reset-a-{id}"), format!("reset-b-{id}"));
    let base = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("p.toml"),
            pg_pipeline(name, &format!("reset_{}", name.replace('-', "_"))),
        )
        .unwrap();
        d
    };
    let (dir_a, dir_b) = (dir(&a), dir(&b));
    assert_eq!(events_read(&run_in(&dir_a)), 3000);
    assert_eq!(events_read(&run_in(&dir_b)), 3000);
    let (before_a, before_b) = (rows(&a), rows(&b));
    assert_eq!(before_a.len(), PARTITIONS as usize);
    assert!(before_a.iter().all(|r| r.2 > 0));

    let out = weir(&["reset", "p.toml"], &dir_a);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(&a), before_a, "without --yes nothing changes");

    let out = weir(&["reset", "p.toml", "--yes"], &dir_a);
    assert!(out.status.success(), "{}", stderr(&out));
    let after_a = rows(&a);
    assert_eq!(after_a.len(), before_a.len());
    assert!(after_a.iter().all(|r| r.2 == 0), "{after_a:?}");
    assert_eq!(
        rows(&b),
        before_b,
        "another pipeline's checkpoints are untouched"
    );

    // A starts over, B resumes.
    assert_eq!(events_read(&run_in(&dir_a)), 3000);
    assert_eq!(events_read(&run_in(&dir_b)), 0);
}
