//! State that no longer fits, `weir reset` with the local checkpoint store, `weir sql`'s state,
//! and one watermark default for `weir sql` and pipeline files (issue 10, points 4 to 6).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::cli::{stderr, weir};

const EVENTS: u64 = 2_000;

/// A generator pipeline: a tumbling window of `size_ms` and `aggregates`, JSONL out.
fn pipeline(size_ms: i64, aggregates: &str) -> String {
    format!(
        r#"
name = "state"
[source]
type = "generator"
events = {EVENTS}
sensors = 20
partitions = 2

[schema]
event_time = "event_time"
partition_key = "sensor_id"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "sensor_id", type = "string" }},
  {{ name = "temperature", type = "float64" }},
  {{ name = "humidity", type = "float64" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[operators]]
type = "tumble"
size_ms = {size_ms}
keys = ["sensor_id"]
aggregates = [{aggregates}]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50
"#
    )
}

const COUNT: &str = r#"{ function = "count", alias = "n" }"#;
const COUNT_AND_MAX: &str = r#"{ function = "count", alias = "n" }, { function = "max", column = "temperature", alias = "m" }"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The events a `weir run` read, from its summary line (`<name>: N events in ...`).
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

/// Every checkpoint file under `dir` with its bytes.
fn checkpoint_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ckpt") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn run_ok(file: &Path, dir: &Path) -> std::process::Output {
    let out = weir(&["run", file.to_str().unwrap()], dir);
    assert!(out.status.success(), "weir run failed: {}", stderr(&out));
    out
}

#[test]
fn a_changed_window_size_is_refused_naming_it_and_the_two_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    assert_eq!(events_read(&run_ok(&file, dir.path())), EVENTS);
    write(dir.path(), "p.toml", &pipeline(300_000, COUNT));
    let out = weir(&["run", "p.toml"], dir.path());
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a changed window size was accepted: {err}"
    );
    assert!(
        err.contains("operators[0] (tumble): size_ms was 60000, is now 300000"),
        "{err}"
    );
    assert!(err.contains("new `name`"), "{err}");
    assert!(err.contains("weir reset"), "{err}");
}

#[test]
fn changed_aggregates_are_refused_naming_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    run_ok(&file, dir.path());
    write(dir.path(), "p.toml", &pipeline(60_000, COUNT_AND_MAX));
    let out = weir(&["run", "p.toml"], dir.path());
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("aggregates[1] was (not set), is now max(temperature float64) AS m"),
        "{err}"
    );
    assert!(err.contains("weir reset"), "{err}");
}

#[test]
fn after_reset_the_changed_pipeline_runs_from_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    run_ok(&file, dir.path());
    let published_before = std::fs::read_dir(dir.path().join("out")).unwrap().count();
    write(dir.path(), "p.toml", &pipeline(300_000, COUNT));
    let out = weir(&["reset", "p.toml", "--yes"], dir.path());
    assert!(out.status.success(), "reset failed: {}", stderr(&out));
    let out = run_ok(&file, dir.path());
    assert_eq!(
        events_read(&out),
        EVENTS,
        "the run after a reset starts over"
    );
    // The epochs went on after the reset: no published file was replaced.
    let published_after = std::fs::read_dir(dir.path().join("out")).unwrap().count();
    assert!(
        published_after > published_before,
        "{published_before} files before, {published_after} after"
    );
    // And the run after that resumes again.
    assert_eq!(events_read(&run_ok(&file, dir.path())), 0);
}

#[test]
fn reset_without_yes_prints_the_plan_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    run_ok(&file, dir.path());
    let before = checkpoint_files(&dir.path().join("checkpoints"));
    assert!(!before.is_empty());
    let out = weir(&["reset", "p.toml"], dir.path());
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("would"), "{said}");
    assert!(said.contains("--yes"), "{said}");
    assert_eq!(checkpoint_files(&dir.path().join("checkpoints")), before);
    assert_eq!(events_read(&run_ok(&file, dir.path())), 0, "still resumes");
}

#[test]
fn reset_refuses_while_the_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        pipeline(60_000, COUNT).replace(&format!("events = {EVENTS}\n"), "events_per_sec = 200\n");
    write(dir.path(), "p.toml", &text);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its first checkpoint (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while checkpoint_files(&dir.path().join("checkpoints")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = weir(&["reset", "p.toml", "--yes"], dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "reset went ahead under a running worker"
    );
    assert!(err.contains("running"), "{err}");
}

// ---- weir sql ----

const GENERATED: &str = "generator:events=2000,sensors=20,partitions=2";

fn sql(args: &[&str], dir: &Path) -> std::process::Output {
    let mut all = vec!["sql"];
    all.extend_from_slice(args);
    weir(&all, dir)
}

/// `N events: ...` of a `weir sql` run.
fn sql_events(out: &std::process::Output) -> u64 {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.contains(" events: "))
        .unwrap_or_else(|| panic!("no summary in {err}"));
    line.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn two_sql_runs_with_different_queries_both_read_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = sql(
        &[
            "SELECT sensor_id, count(*) AS n FROM events GROUP BY sensor_id",
            "--source",
            GENERATED,
            "--sink",
            "null",
        ],
        dir.path(),
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(sql_events(&first), 2_000);
    let second = sql(
        &[
            "SELECT sensor_id, max(temperature) AS m FROM events GROUP BY sensor_id",
            "--source",
            GENERATED,
            "--sink",
            "null",
        ],
        dir.path(),
    );
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(sql_events(&second), 2_000, "{}", stderr(&second));
    assert!(!stderr(&second).contains("resuming"), "{}", stderr(&second));
    // Nothing left behind in the working directory.
    assert!(!dir.path().join("weir-sql").exists());
}

#[test]
fn sql_with_dir_twice_says_it_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let q = "SELECT sensor_id, count(*) AS n FROM events GROUP BY sensor_id";
    let args = ["--source", GENERATED, "--sink", "null", "--dir", "state"];
    let mut first_args = vec![q];
    first_args.extend_from_slice(&args);
    let first = sql(&first_args, dir.path());
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("resuming"), "{}", stderr(&first));
    let second = sql(&first_args, dir.path());
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("resuming from checkpoints in state (2 partitions)"),
        "{}",
        stderr(&second)
    );
    assert_eq!(sql_events(&second), 0);
}

// ---- one default ----

/// JSONL IoT readings whose event times go back by up to 3 s (deterministic).
fn disordered_input(path: &Path) {
    let mut lines = String::new();
    let mut x = 7u64;
    for i in 0..3_000i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let back = ((x >> 33) % 3_000) as i64;
        let ts = 1_700_000_000_000 + i * 10 - back;
        lines.push_str(&format!(
            r#"{{"event_id":"e{i}","sensor_id":"sensor-{}","temperature":20.5,"humidity":0.5,"event_time":{ts}}}"#,
            i % 7
        ));
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

const IOT_FIELDS: &str = r#"event_time = "event_time"
partition_key = "sensor_id"
fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]
"#;

#[test]
fn the_same_data_gives_the_same_late_count_through_sql_and_a_pipeline_file() {
    let dir = tempfile::tempdir().unwrap();
    disordered_input(&dir.path().join("in.jsonl"));
    let q = "SELECT sensor_id, window_start, count(*) AS n FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' SECOND)";
    write(
        dir.path(),
        "schema.toml",
        &format!("[schema]\ntable = \"events\"\n{IOT_FIELDS}"),
    );
    let out = sql(
        &[
            q,
            "--source",
            "jsonl:in.jsonl",
            "--sink",
            "null",
            "--schema",
            "schema.toml",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let sql_late: u64 = err
        .split(" late)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no late count in {err}"));
    let file = write(
        dir.path(),
        "p.toml",
        &format!(
            "name = \"late\"\nsql = \"{q}\"\n[source]\ntype = \"jsonl\"\npath = \"in.jsonl\"\n\
             [schema]\n{IOT_FIELDS}\n[[sinks]]\ntype = \"null\"\n[dlq]\ntype = \"jsonl\"\npath = \"dlq\"\n\
             [checkpoint]\ndir = \"ck\"\n"
        ),
    );
    let out = run_ok(&file, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run_late: u64 = stdout
        .split(" late,")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no late count in {stdout}"));
    assert!(
        run_late > 0,
        "the input has late events for the default watermark"
    );
    assert_eq!(
        sql_late, run_late,
        "weir sql and weir run disagree on the default watermark"
    );
}

#[test]
fn sql_names_the_default_table_like_a_pipeline_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = sql(
        &[
            "SELECT sensor_id, count(*) AS n FROM events GROUP BY sensor_id",
            "--source",
            GENERATED,
            "--sink",
            "null",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_prints_the_watermark_the_pipeline_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    let out = weir(&["run", "p.toml", "--check"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "watermark (operators[0]): max_out_of_orderness_ms = 0, allowed_lateness_ms = 0, late_policy = dlq"
        ),
        "{stdout}"
    );
    let sql_file = format!(
        "name = \"w\"\nsql = \"SELECT sensor_id, count(*) AS n FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE)\"\n\
         [watermark]\nmax_out_of_orderness_ms = 5000\n\
         [source]\ntype = \"generator\"\nevents = 10\n[schema]\n{IOT_FIELDS}\n[[sinks]]\ntype = \"null\"\n\
         [dlq]\ntype = \"jsonl\"\npath = \"dlq\"\n[checkpoint]\ndir = \"ck\"\n"
    );
    write(dir.path(), "s.toml", &sql_file);
    let out = weir(&["run", "s.toml", "--check"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "watermark: max_out_of_orderness_ms = 5000, allowed_lateness_ms = 0, late_policy = dlq"
        ),
        "{stdout}"
    );
}

#[test]
fn the_generators_old_disorder_key_is_refused_naming_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(60_000, COUNT).replace(
        "partitions = 2\n",
        "partitions = 2\nmax_out_of_orderness_ms = 500\n",
    );
    write(dir.path(), "p.toml", &text);
    let out = weir(&["run", "p.toml", "--check"], dir.path());
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("source.max_out_of_orderness_ms"), "{err}");
    assert!(err.contains("disorder_ms"), "{err}");
}

#[test]
fn an_epoch_left_staged_after_its_checkpoint_is_published_after_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", &pipeline(60_000, COUNT));
    run_ok(&file, dir.path());
    // As a crash between storing a checkpoint and publishing its files leaves it: partition
    // 0's last published file back in staging, under the generation that staged it (the
    // first run's claim: 1).
    let out = dir.path().join("out");
    let prefix = "part-tgenerator-p0-e";
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    let last = names.pop().expect("a published file of partition 0");
    let epoch: u64 = last
        .trim_start_matches(prefix)
        .trim_end_matches(".jsonl")
        .parse()
        .unwrap();
    let rows = std::fs::read_to_string(out.join(&last)).unwrap();
    std::fs::rename(
        out.join(&last),
        out.join(".staging")
            .join(format!("part-tgenerator-p0-g1-e{epoch}.jsonl")),
    )
    .unwrap();

    let reset = weir(&["reset", "p.toml", "--yes"], dir.path());
    assert!(reset.status.success(), "reset failed: {}", stderr(&reset));
    run_ok(&file, dir.path());
    assert_eq!(
        std::fs::read_to_string(out.join(&last)).ok(),
        Some(rows),
        "the staged epoch is published by the run after the reset"
    );
}
