//! `weir run` into a real PostgreSQL (started by `scripts/postgres.sh`): rows, offsets and
//! window state commit in one transaction per partition, so a worker SIGKILLed at random
//! points and restarted ends with exactly the table of an uninterrupted run, and the offsets
//! stored in PostgreSQL are the end of the input.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg_url;

fn pipeline(name: &str, table: &str) -> String {
    format!(
        r#"
name = "{name}"
sql = "SELECT sensor_id, window_start, avg(temperature) AS avg_temp, count(*) AS readings FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '10' SECOND)"
[source]
type = "generator"
sensors = 300
partitions = 3
events = 600000
max_out_of_orderness_ms = 2000
poison_ratio = 0.001
late_ratio = 0.001

[schema]
table = "sensors"
event_time = "event_time"
partition_key = "sensor_id"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "sensor_id", type = "string" }},
  {{ name = "temperature", type = "float64" }},
  {{ name = "humidity", type = "float64" }},
  {{ name = "event_time", type = "timestamp" }},
]

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
                "SELECT sensor_id, window_start::text, readings FROM \"{table}\" ORDER BY 1, 2"
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
    let url = pg_url();
    let suffix = std::process::id();
    let (straight_t, crashed_t) = (format!("straight_{suffix}"), format!("crashed_{suffix}"));
    let base = tempfile::tempdir().unwrap();
    let dir = |n: &str, pipeline_name: &str, table: &str| {
        let d = base.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("p.toml"), pipeline(pipeline_name, table)).unwrap();
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
    let mut rng = 0x9e37_79b9_u64 ^ u64::from(suffix);
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
    // The offsets stored in PostgreSQL are the end of each partition's input (200000 each).
    let offsets: Vec<(i32, i64)> = client
        .query("SELECT partition, next_offset FROM weir_checkpoints WHERE pipeline = $1 ORDER BY partition", &[&format!("pg-crashed-{suffix}")])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(offsets, vec![(0, 200_000), (1, 200_000), (2, 200_000)]);
}
