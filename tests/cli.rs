//! The `weir` binary: clear errors for bad config files and flags, `weir run` end to end, and
//! a worker SIGKILLed at random points that, restarted, ends with exactly the output of an
//! uninterrupted run.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::{stderr, weir};
use weir::connectors::{
    read_dlq_dir, read_jsonl_dir, read_parquet_dir, EventGenerator, GeneratorConfig,
};

const BAD: &str = r#"
name = "iot"
colour = "blue"

[source]
type = "generator"
partitions = 0
sensorz = 5

[schema]
event_time = "event_time"
fields = [
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "event_time", type = "timestamp" },
]

[[operators]]
type = "filter"
predicate = "temprature > 3"

[[operators]]
type = "tumble"
size_ms = "one minute"
keys = ["sensor_id"]
aggregates = [{ function = "avg", column = "temperature" }]

[[sinks]]
type = "sqlite"
path = "out.sqlite"
table = "w"

[dlq]
type = "jsonl"

[checkpoint]
dir = "ckpt"
interval_ms = 0
"#;

#[test]
fn a_bad_pipeline_file_gets_every_error_with_file_and_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), BAD).unwrap();
    let out = weir(&["run", "bad.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "bad.toml has 8 errors",
        "bad.toml: colour: unknown key",
        "bad.toml: source.sensorz: unknown key (expected one of `seed`, `sensors`",
        "bad.toml: source.partitions: must be at least 1, got 0",
        "bad.toml: operators[0]: `temprature > 3`: Schema error: No field named temprature. Did you mean 'temperature'?",
        "bad.toml: operators[1].size_ms: invalid type: string \"one minute\", expected i64",
        "bad.toml: sinks[0].key_columns: missing",
        "bad.toml: dlq.path: missing",
        "bad.toml: checkpoint.interval_ms: must be positive, got 0",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn unknown_components_functions_and_columns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "x"
[source]
type = "kafkaa"
[schema]
event_time = "ts"
fields = [{ name = "k", type = "string" }, { name = "ts", type = "int64" }]
[[operators]]
type = "tumble"
size_ms = 1000
keys = ["k"]
aggregates = [{ function = "median_of_medians", column = "k" }]
[[sinks]]
type = "null"
[dlq]
type = "jsonl"
path = "dlq"
[checkpoint]
dir = "c"
"#;
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let err = stderr(&weir(&["run", "p.toml"], dir.path()));
    assert!(
        err.contains(
            "p.toml: source.type: unknown variant `kafkaa`, expected one of `generator`, `jsonl`, `kafka`"
        ),
        "{err}"
    );
    assert!(
        err.contains("p.toml: schema.event_time: field `ts` must have type \"timestamp\""),
        "{err}"
    );
    // With the schema right, the operator chain is checked: the aggregate function is named.
    let fixed = text
        .replace("type = \"int64\"", "type = \"timestamp\"")
        .replace("kafkaa", "generator");
    std::fs::write(dir.path().join("p.toml"), fixed).unwrap();
    let err = stderr(&weir(&["run", "p.toml"], dir.path()));
    assert!(
        err.contains("p.toml: operators[0]: unknown aggregate function `median_of_medians`"),
        "{err}"
    );
}

#[test]
fn a_window_spanning_partitions_needs_every_partition_in_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "x"
sql = "SELECT region, window_start, count(*) AS n FROM readings GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)"
[source]
type = "kafka"
brokers = "127.0.0.1:1"
topics = ["readings"]
group_id = "g"
[schema]
table = "readings"
event_time = "event_time"
partition_key = "sensor_id"
fields = [{ name = "sensor_id", type = "string" }, { name = "region", type = "string" }, { name = "event_time", type = "timestamp" }]
[[sinks]]
type = "null"
[dlq]
type = "jsonl"
path = "dlq"
[checkpoint]
dir = "c"
"#;
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir.path());
    let err = stderr(&out);
    assert!(
        err.contains("p.toml: source.assignment: the window's keys leave out the partition key `sensor_id`, so its groups span partitions and every partition must be read by this worker; set assignment = \"manual\""),
        "{err}"
    );
    let manual = text.replace(
        "group_id = \"g\"",
        "group_id = \"g\"\nassignment = \"manual\"",
    );
    std::fs::write(dir.path().join("p.toml"), manual).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_transactional_kafka_sink_is_checked_against_its_source_and_other_stores() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "x"
[source]
type = "generator"
[schema]
event_time = "event_time"
fields = [{ name = "sensor_id", type = "string" }, { name = "event_time", type = "timestamp" }]
[[sinks]]
type = "kafka"
brokers = "127.0.0.1:1"
topic = "out"
transactional_id = "x-eos"
[[sinks]]
type = "kafka"
brokers = "127.0.0.1:1"
topic = "out2"
checkpoint_topic = "ckpt"
[[sinks]]
type = "kafka"
brokers = "127.0.0.1:1"
topic = "out3"
transactional_id = "y-eos"
checkpoint_topic = "ckpt"
[dlq]
type = "jsonl"
path = "dlq"
[checkpoint]
interval_ms = 100
"#;
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let err = stderr(&weir(&["run", "--check", "p.toml"], dir.path()));
    for expected in [
        "p.toml: sinks[0].checkpoint_topic: missing: the exactly-once mode (transactional_id) stores its checkpoints in this topic, inside its transactions",
        "p.toml: sinks[1].checkpoint_topic: only with transactional_id (the exactly-once mode)",
        "p.toml: sinks: at most one postgres or transactional kafka sink (it is the pipeline's checkpoint store)",
        "p.toml: sinks[0].transactional_id: the exactly-once kafka sink commits the source's offsets in its transactions: it needs a kafka source",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn unreadable_and_malformed_files_are_reported_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&["run", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing.toml: cannot read the file"),
        "{}",
        stderr(&out)
    );
    std::fs::write(dir.path().join("syntax.toml"), "name = \"x\"\n[source\n").unwrap();
    let err = stderr(&weir(&["run", "syntax.toml"], dir.path()));
    assert!(
        err.contains("syntax.toml: line 2, column 8: invalid TOML"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_named_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            vec!["bench", "--events", "0"],
            "invalid value '0' for '--events <EVENTS>'",
        ),
        (
            vec!["demo", "--partitions", "x"],
            "invalid value 'x' for '--partitions <PARTITIONS>'",
        ),
        (
            vec!["demo", "--colour", "red"],
            "unexpected argument '--colour'",
        ),
        (vec!["launch"], "unrecognized subcommand 'launch'"),
        (vec!["run"], "required arguments were not provided"),
    ] {
        let out = weir(&args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A JSONL input of generator events (with poison and late events), one line a message.
fn write_input(path: &Path, events: u64) -> EventGenerator {
    let cfg = GeneratorConfig {
        seed: 5,
        sensors: 500,
        partitions: 1,
        events: Some(events),
        disorder_ms: 1_000,
        late_ratio: 0.002,
        poison_ratio: 0.002,
        ..Default::default()
    };
    let g = EventGenerator::new(&cfg);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for m in g.messages(0, 0, events as usize) {
        // A null payload cannot be a line: it is written as an empty line (dead-lettered too).
        let p = m.payload.unwrap_or_default();
        assert!(!p.contains(&b'\n'));
        f.write_all(&p).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    g
}

fn pipeline_toml(input: &Path) -> String {
    format!(
        r#"
name = "iot"
[source]
type = "jsonl"
path = "{}"
partitions = 3
key_field = "sensor_id"

[schema]
event_time = "event_time"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "sensor_id", type = "string" }},
  {{ name = "temperature", type = "float64" }},
  {{ name = "humidity", type = "float64", nullable = true }},
  {{ name = "event_time", type = "timestamp" }},
]

[[operators]]
type = "filter"
predicate = "temperature > -10"

[[operators]]
type = "tumble"
size_ms = 60000
keys = ["sensor_id"]
max_out_of_orderness_ms = 1000
aggregates = [
  {{ function = "avg", column = "temperature", alias = "avg_temp" }},
  {{ function = "max", column = "temperature", alias = "max_temp" }},
  {{ function = "count", alias = "readings" }},
]

[[sinks]]
type = "sqlite"
path = "out.sqlite"
table = "windows"
key_columns = ["sensor_id", "window_start"]

[[sinks]]
type = "jsonl"
path = "out"

[[sinks]]
type = "parquet"
path = "out-parquet"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 20

[batch]
max_rows = 500
linger_ms = 5
"#,
        input.display()
    )
}

fn table(db: &Path) -> Vec<(String, i64, String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT sensor_id, window_start, printf('%.9f', avg_temp), readings FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn sorted_json(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = read_jsonl_dir(dir)
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    v.sort();
    v
}

/// The rows of the published Parquet files, as sorted JSON lines.
fn sorted_parquet(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in read_parquet_dir(dir).unwrap() {
        let mut buf = Vec::new();
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        lines.extend(String::from_utf8(buf).unwrap().lines().map(str::to_string));
    }
    lines.sort();
    lines
}

fn sorted_dlq(dir: &Path) -> Vec<(i32, i64, String)> {
    let mut v: Vec<(i32, i64, String)> = read_dlq_dir(dir)
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.letter.partition,
                l.letter.offset,
                l.letter.kind.as_str().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn weir_run_processes_a_file_and_accounts_for_every_line() {
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("in.jsonl"), 20_000);
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline_toml(&dir.path().join("in.jsonl")),
    )
    .unwrap();
    assert!(weir(&["run", "--check", "p.toml"], dir.path())
        .status
        .success());
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("20000 events"), "{stdout}");
    assert!(stdout.contains("input finished"), "{stdout}");
    let rows = table(&dir.path().join("out.sqlite"));
    let readings: i64 = rows.iter().map(|r| r.3).sum();
    let dlq = sorted_dlq(&dir.path().join("dlq")).len() as i64;
    assert!(dlq > 0);
    // Every line is in a window, in the DLQ, or filtered; the JSONL sink has the same windows.
    let filtered = stdout
        .split(", ")
        .find_map(|s| {
            s.strip_suffix(" filtered; ")
                .or(s.strip_suffix(" filtered"))
        })
        .map(|s| s.trim().parse::<i64>().unwrap());
    let filtered = filtered.unwrap_or_else(|| {
        stdout
            .split(" filtered")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    });
    assert_eq!(readings + dlq + filtered, 20_000, "{stdout}");
    assert_eq!(sorted_json(&dir.path().join("out")).len(), rows.len());
    // The Parquet sink holds the same rows as the JSONL sink.
    let parquet = sorted_parquet(&dir.path().join("out-parquet"));
    assert_eq!(parquet.len(), rows.len());
    assert_eq!(parquet, sorted_json_lines(&dir.path().join("out")));
}

/// The JSONL sink's lines as written, sorted.
fn sorted_json_lines(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// The pipeline of [`pipeline_toml`] with its window grouped by a column that spans the
/// three partitions: it runs in two phases (partials merged by the global stage).
fn two_phase_toml(input: &Path) -> String {
    let text = pipeline_toml(input)
        .replace(
            "[schema]\n",
            "[schema]\npartition_key = \"sensor_id\"\n",
        )
        .replace(
            "[[operators]]\ntype = \"tumble\"",
            "[[operators]]\ntype = \"project\"\ncolumns = [\n  \
             { expr = \"CASE WHEN temperature > 20 THEN 'warm' ELSE 'cold' END\", name = \"band\" },\n  \
             { expr = \"temperature\", name = \"temperature\" },\n  \
             { expr = \"event_time\", name = \"event_time\" },\n]\n\n\
             [[operators]]\ntype = \"tumble\"",
        )
        .replace("keys = [\"sensor_id\"]", "keys = [\"band\"]")
        .replace("key_columns = [\"sensor_id\", ", "key_columns = [\"band\", ");
    assert!(text.contains("keys = [\"band\"]") && text.contains("partition_key"));
    text
}

/// Every row of a SQLite table, floats to 9 digits, sorted.
fn dump(db: &Path, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let n = stmt.column_count();
    let mut rows: Vec<String> = stmt
        .query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Real(f) => format!("{f:.9}"),
                    v => format!("{v:?}"),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_worker_killed_at_random_points_and_restarted_ends_with_the_uninterrupted_output() {
    kill_restart_and_compare(pipeline_toml, 0x5eed);
}

#[test]
fn a_two_phase_window_killed_at_random_points_ends_with_the_uninterrupted_output() {
    kill_restart_and_compare(two_phase_toml, 0x2fa5e);
}

/// Run the pipeline straight, and again SIGKILLed at random points and restarted until it
/// finishes: every sink and the DLQ must hold the same output.
fn kill_restart_and_compare(toml: fn(&Path) -> String, seed: u64) {
    let base = tempfile::tempdir().unwrap();
    let input = base.path().join("in.jsonl");
    write_input(&input, 300_000);
    let run_dir = |name: &str| {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("p.toml"), toml(&input)).unwrap();
        d
    };
    let straight = run_dir("straight");
    let started = std::time::Instant::now();
    assert!(weir(&["run", "p.toml"], &straight).status.success());
    let full = started.elapsed();

    let crashed = run_dir("crashed");
    let mut rng = seed;
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "p.toml"])
            .current_dir(&crashed)
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Somewhere between 5% and 30% of an uninterrupted run, after start-up: each restart
        // resumes, so at least three kills land before the input ends even when a loaded
        // machine made the uninterrupted run slow.
        let fraction = 0.05 + ((rng >> 33) % 1000) as f64 / 4000.0;
        std::thread::sleep(Duration::from_millis(30) + full.mul_f64(fraction));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL: no drain, no final checkpoint
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed: the input finished too fast"
    );
    let out = weir(&["run", "p.toml"], &crashed);
    assert!(out.status.success(), "{}", stderr(&out));

    let windows = dump(&straight.join("out.sqlite"), "windows");
    assert!(windows.len() > 10, "{windows:?}");
    assert_eq!(dump(&crashed.join("out.sqlite"), "windows"), windows);
    assert_eq!(
        sorted_json(&crashed.join("out")),
        sorted_json(&straight.join("out")),
        "JSONL sink is exactly-once"
    );
    assert_eq!(
        sorted_parquet(&crashed.join("out-parquet")),
        sorted_parquet(&straight.join("out-parquet")),
        "Parquet sink is exactly-once"
    );
    assert_eq!(
        sorted_dlq(&crashed.join("dlq")),
        sorted_dlq(&straight.join("dlq")),
        "DLQ is exactly-once"
    );
}

#[test]
fn sigterm_drains_checkpoints_and_exits_0_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "endless"
[source]
type = "generator"
sensors = 100
partitions = 2
events_per_sec = 20000

[schema]
event_time = "event_time"
fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]

[[operators]]
type = "tumble"
size_ms = 1000
keys = ["sensor_id"]
aggregates = [{ function = "count", alias = "n" }]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 60000
"#;
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let run_and_term = || {
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "p.toml"])
            .current_dir(dir.path())
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "a drained stop exits 0");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run_and_term();
    assert!(
        first.contains("stopped, resume with the same command"),
        "{first}"
    );
    // The checkpoint interval is a minute: only the drain on SIGTERM can have written these.
    for p in 0..2 {
        assert!(dir
            .path()
            .join(format!("checkpoints/endless/generator/{p}.ckpt"))
            .exists());
    }
    let windows_after_first = read_jsonl_dir(dir.path().join("out")).unwrap().len();
    assert!(
        windows_after_first > 0,
        "outputs of the drained run are committed"
    );
    run_and_term();
    // Resumed, not restarted: no window is emitted twice.
    let rows = read_jsonl_dir(dir.path().join("out")).unwrap();
    let mut keys: Vec<String> = rows
        .iter()
        .map(|r| format!("{}@{}", r["sensor_id"], r["window_start"]))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n,
        "a window was emitted twice across the restart"
    );
    assert!(n > windows_after_first);
}

#[test]
fn weir_sql_explains_runs_and_refuses_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let q =
        "SELECT sensor_id, window_start, avg(temperature) AS avg_temp, count(*) AS n FROM events \
             WHERE temperature > -50 GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE)";
    let out = weir(&["sql", q, "--explain"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("filter      temperature > -50"), "{plan}");
    assert!(
        plan.contains("tumble      size 60000 ms on `event_time`, keys [sensor_id]"),
        "{plan}"
    );
    for (window, line) in [
        (
            "HOP(event_time, INTERVAL '30' SECOND, INTERVAL '2' MINUTE)",
            "hop         size 120000 ms every 30000 ms on `event_time`, keys [sensor_id]",
        ),
        (
            "SESSION(event_time, INTERVAL '30' SECOND)",
            "session     gap 30000 ms on `event_time`, keys [sensor_id]",
        ),
    ] {
        let q = format!(
            "SELECT sensor_id, window_start, window_end, last_value(temperature ORDER BY event_time) AS last_t \
             FROM events GROUP BY sensor_id, {window}"
        );
        let out = weir(&["sql", &q, "--explain"], dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(plan.contains(line), "{plan}");
        assert!(
            plan.contains("aggregates last_value(temperature ORDER BY event_time) AS __agg0"),
            "{plan}"
        );
    }

    let out = weir(
        &[
            "sql",
            q,
            "--source",
            "generator:events=20000,sensors=20,partitions=2",
            "--sink",
            "sqlite:out.sqlite",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let n: i64 = conn
        .query_row("SELECT sum(n) FROM results", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20_000);

    // Without a window: an upsert stream, one row per sensor holding its count so far.
    let out = weir(
        &[
            "sql",
            "SELECT sensor_id, count(*) AS n FROM events GROUP BY sensor_id",
            "--source",
            "generator:events=20000,sensors=20,partitions=2",
            "--sink",
            "sqlite:upsert.sqlite",
            "--dir",
            "upsert-state",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(dir.path().join("upsert.sqlite")).unwrap();
    let (rows, n): (i64, i64) = conn
        .query_row("SELECT count(*), sum(n) FROM results", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, n), (20, 20_000));

    let out = weir(&["sql", "SELECT sensor_id, count(*) FROM events GROUP BY sensor_id, TUMBLE(humidity, INTERVAL '1' MINUTE)"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "TUMBLE on `humidity` (line 1, column 67): a window needs a timestamp column"
        ),
        "{}",
        stderr(&out)
    );
    let out = weir(&["sql", q, "--source", "carrier-pigeon"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--source: unknown source `carrier-pigeon`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pipeline_file_can_hold_a_sql_query() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "sql-file"
sql = """
SELECT sensor_id, window_start, max(temperature) AS max_temp, count(*) AS n
FROM sensors
GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '30' SECOND)
"""
[watermark]
max_out_of_orderness_ms = 2000
[source]
type = "generator"
sensors = 30
partitions = 3
events = 9000
disorder_ms = 2000
[schema]
table = "sensors"
event_time = "event_time"
partition_key = "sensor_id"
fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]
[[sinks]]
type = "sqlite"
path = "out.sqlite"
table = "w"
key_columns = ["sensor_id", "window_start"]
[dlq]
type = "jsonl"
path = "dlq"
[checkpoint]
dir = "checkpoints"
"#;
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let n: i64 = conn
        .query_row("SELECT sum(n) FROM w", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 9_000);
    // A query error is reported like any other config error, with file and key.
    std::fs::write(
        dir.path().join("bad.toml"),
        text.replace("max(temperature)", "max(temprature)"),
    )
    .unwrap();
    let err = stderr(&weir(&["run", "bad.toml"], dir.path()));
    assert!(
        err.contains("bad.toml: sql: unknown column `temprature` in `max(temprature)`"),
        "{err}"
    );
}
