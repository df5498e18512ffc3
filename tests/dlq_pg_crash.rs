//! A PostgreSQL DLQ in the transactions of a PostgreSQL sink, under SIGKILLs: the worker
//! (generated events with poison, a projection into a table keyed by event id) is killed at
//! random points six times and restarted. After every kill the committed state is one
//! consistent prefix per partition: the DLQ table holds exactly the poison messages below the
//! partition's stored checkpoint offset, and the table exactly the other events below it
//! (dead letters never commit ahead of, or behind, the rows and offsets of their epoch). At
//! the end the DLQ holds every poison message once.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pg_url, Rng, IOT_SCHEMA};
use weir::connectors::{EventGenerator, GeneratorConfig, GENERATOR_TOPIC};

const PARTITIONS: i32 = 4;

fn generator() -> GeneratorConfig {
    GeneratorConfig {
        seed: 12,
        sensors: 400,
        partitions: PARTITIONS as u32,
        events: Some(160_000),
        events_per_sec: Some(40_000),
        poison_ratio: 0.01,
        ..Default::default()
    }
}

fn pipeline(name: &str, table: &str, dead: &str) -> String {
    let g = generator();
    format!(
        r#"
name = "{name}"

[source]
type = "generator"
seed = {seed}
sensors = {sensors}
partitions = {partitions}
events = {events}
events_per_sec = {rate}
poison_ratio = {poison}

{IOT_SCHEMA}

[[operators]]
type = "project"
columns = [
  {{ expr = "event_id", name = "event_id" }},
  {{ expr = "temperature", name = "temperature" }},
]

[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["event_id"]

[dlq]
type = "postgres"
url = "{url}"
table = "{dead}"

[checkpoint]
interval_ms = 50

[batch]
max_rows = 500
linger_ms = 5
"#,
        seed = g.seed,
        sensors = g.sensors,
        partitions = g.partitions,
        events = g.events.unwrap(),
        rate = g.events_per_sec.unwrap(),
        poison = g.poison_ratio,
        url = pg_url()
    )
}

fn spawn(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn table_exists(c: &mut impl postgres::GenericClient, table: &str) -> bool {
    c.query_one(
        "SELECT to_regclass($1) IS NOT NULL",
        &[&format!("\"{table}\"")],
    )
    .unwrap()
    .get(0)
}

/// The stored next offset per partition (0 when none).
fn offsets(c: &mut impl postgres::GenericClient, name: &str) -> BTreeMap<i32, i64> {
    let mut out: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    if !table_exists(c, "weir_checkpoints") {
        return out;
    }
    for r in c
        .query(
            "SELECT partition, next_offset FROM weir_checkpoints WHERE pipeline = $1 AND topic = $2",
            &[&name, &GENERATOR_TOPIC],
        )
        .unwrap()
    {
        out.insert(r.get(0), r.get(1));
    }
    out
}

/// The committed state is the prefix of each partition up to its stored offset. Read in one
/// snapshot: a killed worker's last COMMIT may still land while this reads.
fn assert_consistent(
    client: &mut postgres::Client,
    truth: &EventGenerator,
    name: &str,
    table: &str,
    dead: &str,
) -> BTreeMap<i32, i64> {
    let mut t = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let c = &mut t;
    let next = offsets(c, name);
    let mut want_dead: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut want_rows = 0i64;
    for (p, n) in &next {
        for o in 0..*n {
            match truth.event(*p, o).unwrap().poison {
                Some(_) => {
                    want_dead.insert((*p, o));
                }
                None => want_rows += 1,
            }
        }
    }
    let got_dead: Vec<(i32, i64)> = if table_exists(c, dead) {
        c.query(
            &format!("SELECT \"partition\", \"offset\" FROM \"{dead}\" WHERE pipeline = $1"),
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    } else {
        Vec::new()
    };
    let got_dead_set: BTreeSet<(i32, i64)> = got_dead.iter().copied().collect();
    assert_eq!(
        got_dead.len(),
        got_dead_set.len(),
        "a position dead-lettered twice"
    );
    assert_eq!(
        got_dead_set, want_dead,
        "the DLQ holds exactly the poison messages below the stored offsets {next:?}"
    );
    let rows: i64 = if table_exists(c, table) {
        c.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .unwrap()
            .get(0)
    } else {
        0
    };
    assert_eq!(rows, want_rows, "rows below the stored offsets {next:?}");
    t.commit().unwrap();
    next
}

#[test]
fn dead_letters_commit_exactly_once_with_the_rows_and_offsets_across_sigkills() {
    let truth = EventGenerator::new(&generator());
    let name = common::kafka::unique("dlq_pg_crash").replace('-', "_");
    let (table, dead) = (format!("{name}_out"), format!("{name}_dead"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), pipeline(&name, &table, &dead)).unwrap();
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let mut rng = Rng(0x5eed);
    let mut progressed = 0;
    for _ in 0..6 {
        let mut child = spawn(dir.path());
        std::thread::sleep(Duration::from_millis(400 + rng.below(900)));
        let _ = child.kill();
        let _ = child.wait();
        let next = assert_consistent(&mut c, &truth, &name, &table, &dead);
        progressed = progressed.max(next.values().sum::<i64>());
    }
    assert!(progressed > 0, "no run got as far as a checkpoint");
    let mut child = spawn(dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the last run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the last run failed");
    let next = assert_consistent(&mut c, &truth, &name, &table, &dead);
    for p in 0..PARTITIONS {
        assert_eq!(
            next[&p],
            truth.events_in_partition(p).unwrap() as i64,
            "partition {p} read to its end"
        );
    }
    // `weir dlq list` sees them all.
    let out = common::cli::weir(&["dlq", "list", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", common::cli::stderr(&out));
    let poison = (0..PARTITIONS)
        .map(|p| {
            (0..next[&p])
                .filter(|o| truth.event(p, *o).unwrap().poison.is_some())
                .count()
        })
        .sum::<usize>();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        poison + 1
    );
    c.batch_execute(&format!(
        "DROP TABLE \"{table}\"; DROP TABLE \"{dead}\"; DELETE FROM weir_checkpoints WHERE pipeline = '{name}'"
    ))
    .unwrap();
}
