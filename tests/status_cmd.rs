//! `weir status`: on a stopped pipeline it prints each partition's checkpointed offset,
//! epoch and time and the totals of the accounting counters from the checkpoint store (a
//! local directory, PostgreSQL), without running anything. The Kafka side (end offsets, lag)
//! is in `metrics_endpoint.rs`.

use crate::common;

use common::cli::{stderr, weir};
use common::IOT_SCHEMA;
use weir::connectors::{EventGenerator, GeneratorConfig};

#[test]
fn status_of_a_stopped_pipeline_prints_the_offsets_and_totals_it_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "status"

[source]
type = "generator"
partitions = 2
sensors = 10
events = 3000
poison_ratio = 0.01

{IOT_SCHEMA}

[[sinks]]
type = "null"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#
    );
    std::fs::write(dir.path().join("p.toml"), &text).unwrap();
    let before = weir(&["status", "p.toml"], dir.path());
    assert!(before.status.success(), "{}", stderr(&before));
    assert!(
        String::from_utf8_lossy(&before.stdout).contains("no checkpoint stored"),
        "{}",
        String::from_utf8_lossy(&before.stdout)
    );
    let run = weir(&["run", "p.toml"], dir.path());
    assert!(run.status.success(), "{}", stderr(&run));

    let out = weir(&["status", "p.toml"], dir.path());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    let truth = EventGenerator::new(&GeneratorConfig {
        partitions: 2,
        sensors: 10,
        events: Some(3000),
        poison_ratio: 0.01,
        ..Default::default()
    });
    for p in 0..2 {
        let end = truth.events_in_partition(p).unwrap();
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("generator/{p}:")))
            .unwrap_or_else(|| panic!("no line for partition {p}: {report}"));
        assert!(
            line.contains(&format!(", offset {end}, written 20")),
            "{line}"
        );
    }
    let poison = (0..2)
        .flat_map(|p| (0..truth.events_in_partition(p).unwrap() as i64).map(move |o| (p, o)))
        .filter(|(p, o)| truth.event(*p, *o).is_some_and(|e| e.poison.is_some()))
        .count();
    assert!(
        report.contains(&format!(
            "totals: 3000 consumed = {} aggregated + {poison} dead-lettered + 0 late dropped + 0 filtered + 0 deduplicated;",
            3000 - poison
        )),
        "{report}"
    );
}

#[test]
fn status_reads_a_postgres_store_with_each_checkpoints_time() {
    let dir = tempfile::tempdir().unwrap();
    let name = common::kafka::unique("status-pg").replace('-', "_");
    let text = format!(
        r#"name = "{name}"

[source]
type = "generator"
partitions = 2
sensors = 10
events = 3000

{IOT_SCHEMA}

[[operators]]
type = "tumble"
size_ms = 60000
keys = ["sensor_id"]
aggregates = [{{ function = "count", alias = "n" }}]

[[sinks]]
type = "postgres"
url = "${{WEIR_PG_URL}}"
table = "{name}"
key_columns = ["sensor_id", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#
    );
    // The URL comes from the environment, as a deployment would give it.
    let url = common::pg_url();
    std::fs::write(dir.path().join("p.toml"), &text).unwrap();
    let env = [("WEIR_PG_URL", Some(url.as_str()))];
    let run = common::cli::weir_with_env(&["run", "p.toml"], dir.path(), &env);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = common::cli::weir_with_env(&["status", "p.toml"], dir.path(), &env);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        report.contains("checkpoints in PostgreSQL table"),
        "{report}"
    );
    let partitions: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_start().starts_with("generator/"))
        .collect();
    assert_eq!(partitions.len(), 2, "{report}");
    assert!(
        partitions.iter().all(|l| l.contains(", written 20")),
        "{report}"
    );
    assert!(report.contains("totals: 3000 consumed = "), "{report}");
}
