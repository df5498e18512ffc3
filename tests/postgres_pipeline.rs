//! `weir run` into a real PostgreSQL (started by `scripts/postgres.sh`): rows, offsets and
//! window state commit in one transaction per partition, so a worker SIGKILLed at random
//! points and restarted ends with exactly the table of an uninterrupted run, and the offsets
//! stored in PostgreSQL are the end of the input. Also for a window whose groups span the
//! partitions (two phases: its rows commit with the global stage's frontier, under
//! `GLOBAL_PARTITION`).

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pg_url, IOT_SCHEMA};

/// Per sensor (the partition key) as SQL, or per temperature band (spanning partitions) as
/// operators: SQL can only group by columns.
fn pipeline(name: &str, table: &str, two_phase: bool) -> String {
    let (query, operators, key) = if two_phase {
        (
            "",
            r#"
[[operators]]
type = "project"
columns = [
  { expr = "CASE WHEN temperature > 20 THEN 'warm' ELSE 'cold' END", name = "band" },
  { expr = "temperature", name = "temperature" },
  { expr = "event_time", name = "event_time" },
]

[[operators]]
type = "tumble"
size_ms = 10000
keys = ["band"]
max_out_of_orderness_ms = 2000
aggregates = [
  { function = "avg", column = "temperature", alias = "avg_temp" },
  { function = "count", alias = "readings" },
]
"#,
            "band",
        )
    } else {
        (
            r#"sql = "SELECT sensor_id, window_start, avg(temperature) AS avg_temp, count(*) AS readings FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND)""#,
            "[watermark]\nmax_out_of_orderness_ms = 2000\n",
            "sensor_id",
        )
    };
    format!(
        r#"
name = "{name}"
{query}
[source]
type = "generator"
sensors = 300
partitions = 3
events = 600000
disorder_ms = 2000
poison_ratio = 0.001
late_ratio = 0.001

{IOT_SCHEMA}
{operators}
[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["{key}", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 30

[batch]
max_rows = 500
linger_ms = 5
"#,
        url = pg_url()
    )
}

fn run(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap()
}

fn rows(client: &mut postgres::Client, table: &str) -> Vec<(String, String, i64)> {
    client
        .query(
            &format!(
                "SELECT * FROM (SELECT {}, window_start::text, readings FROM \"{table}\") t ORDER BY 1, 2",
                if table.contains("2p") { "band" } else { "sensor_id" }
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn a_worker_killed_at_random_points_ends_with_the_uninterrupted_table_and_offsets() {
    killed_and_restarted(false);
}

#[test]
fn a_two_phase_window_killed_at_random_points_ends_with_the_uninterrupted_table_and_offsets() {
    killed_and_restarted(true);
}

fn killed_and_restarted(two_phase: bool) {
    let url = pg_url();
    let suffix = format!(
        "{}{}",
        std::process::id(),
        if two_phase { "_2p" } else { "" }
    );
    let (straight_t, crashed_t) = (format!("straight_{suffix}"), format!("crashed_{suffix}"));
    let base = tempfile::tempdir().unwrap();
    let dir = |n: &str, pipeline_name: &str, table: &str| {
        let d = base.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("p.toml"), pipeline(pipeline_name, table, two_phase)).unwrap();
        d
    };
    let straight = dir("straight", &format!("pg-straight-{suffix}"), &straight_t);
    let started = Instant::now();
    let out = run(&straight);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = started.elapsed();

    let crashed = dir("crashed", &format!("pg-crashed-{suffix}"), &crashed_t);
    let mut kills = 0;
    let mut rng = 0x9e37_79b9_u64 ^ u64::from(std::process::id()) ^ u64::from(two_phase);
    for _ in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "p.toml"])
            .current_dir(&crashed)
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(
            Duration::from_millis(50) + full.mul_f64(0.05 + ((rng >> 33) % 300) as f64 / 1000.0),
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 2, "only {kills} kills landed");
    let out = run(&crashed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let want = rows(&mut client, &straight_t);
    assert!(!want.is_empty());
    assert_eq!(
        rows(&mut client, &crashed_t),
        want,
        "after {kills} SIGKILLs"
    );
    // The offsets stored in PostgreSQL are the end of each partition's input (200000 each);
    // a two-phase window's global stage has its own checkpoint row.
    let mut offsets: Vec<(i32, i64)> = client
        .query("SELECT partition, next_offset FROM weir_checkpoints WHERE pipeline = $1 ORDER BY partition", &[&format!("pg-crashed-{suffix}")])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if two_phase {
        assert_eq!(offsets.pop(), Some((weir_runtime::GLOBAL_PARTITION, 0)));
    }
    assert_eq!(offsets, vec![(0, 200_000), (1, 200_000), (2, 200_000)]);
}
