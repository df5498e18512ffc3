//! `type = "hop"` and `type = "session"` operators in pipeline.toml: a file run gives exactly
//! the rows of the same window written as SQL (`HOP(...)`, `SESSION(...)`), and impossible
//! settings are refused with the file and key.

use crate::common;

use common::cli::{stderr, weir};
use weir::connectors::{read_dlq_dir, read_jsonl_dir, GeneratorConfig, GeneratorSource};
use weir::operators::{AggregateConfig, HopConfig, LatePolicy, SqlOptions, WindowConfig};
use weir::pipeline::Pipeline;
use weir_runtime::testkit::{MemoryDlq, MemorySink};

/// The same generated input for every run: some disorder, some late and some poison events.
const COMMON: &str = r#"
[source]
type = "generator"
seed = 7
sensors = 20
partitions = 3
events = 6000
event_interval_ms = 150
disorder_ms = 2000
late_ratio = 0.01
poison_ratio = 0.01

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
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50

[batch]
max_rows = 300
"#;

const AGGREGATES: &str = r#"aggregates = [
  { function = "avg", column = "temperature", alias = "avg_temp" },
  { function = "max", column = "temperature", alias = "max_temp" },
  { function = "count", alias = "n" },
]"#;

/// Runs `pipeline` (a name, the window part) in a fresh directory: output rows sorted, and
/// the number of dead letters.
fn run(pipeline: &str) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("name = \"w\"\n{pipeline}\n{COMMON}");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let mut rows: Vec<String> = read_jsonl_dir(dir.path().join("out"))
        .unwrap()
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    rows.sort();
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap().len();
    (rows, dead)
}

fn sql(window: &str) -> String {
    format!(
        "sql = \"\"\"\nSELECT sensor_id, window_start, window_end, avg(temperature) AS avg_temp, \
         max(temperature) AS max_temp, count(*) AS n FROM sensors GROUP BY sensor_id, {window}\n\
         \"\"\"\n[watermark]\nmax_out_of_orderness_ms = 2000\n"
    )
}

fn total_count(rows: &[String]) -> i64 {
    rows.iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .sum()
}

#[test]
fn a_hop_operator_gives_the_rows_of_the_same_sql_hop() {
    let file = format!(
        "[[operators]]\ntype = \"hop\"\nslide_ms = 10000\nsize_ms = 30000\nkeys = [\"sensor_id\"]\n\
         max_out_of_orderness_ms = 2000\n{AGGREGATES}\n"
    );
    let (from_file, dead_file) = run(&file);
    let (from_sql, dead_sql) = run(&sql(
        "HOP(event_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
    ));
    assert!(from_file.len() > 100, "{} rows", from_file.len());
    assert_eq!(from_file, from_sql);
    assert_eq!(dead_file, dead_sql);
    // Each accepted event is in size / slide = 3 windows.
    let accepted = 6000 - dead_file as i64;
    assert_eq!(total_count(&from_file), 3 * accepted);
}

#[test]
fn a_session_operator_gives_the_rows_of_the_same_sql_session() {
    let file = format!(
        "[[operators]]\ntype = \"session\"\ngap_ms = 3000\nkeys = [\"sensor_id\"]\n\
         max_out_of_orderness_ms = 2000\n{AGGREGATES}\n"
    );
    let (from_file, dead_file) = run(&file);
    let (from_sql, dead_sql) = run(&sql("SESSION(event_time, INTERVAL '3' SECOND)"));
    // More sessions than sensors: the gap splits each sensor's events.
    assert!(from_file.len() > 40, "{} rows", from_file.len());
    assert_eq!(from_file, from_sql);
    assert_eq!(dead_file, dead_sql);
    assert_eq!(total_count(&from_file), 6000 - dead_file as i64);
}

#[test]
fn impossible_hop_and_session_settings_are_named_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"w\"\n\
         [[operators]]\ntype = \"hop\"\nslide_ms = 30000\nsize_ms = 10000\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n\
         [[operators]]\ntype = \"hop\"\nslide_ms = 0\nsize_ms = 10000\nkeys = []\n{AGGREGATES}\n\
         [[operators]]\ntype = \"hop\"\nslide_ms = 1\nsize_ms = 86400000\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n\
         [[operators]]\ntype = \"session\"\ngap_ms = -5\nallowed_lateness_ms = -1\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n\
         [[operators]]\ntype = \"session\"\ngap_ms = 10\nsize_ms = 10\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n\
         {COMMON}"
    );
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let out = weir(&["run", "bad.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "bad.toml has 8 errors",
        "bad.toml: operators[4].size_ms: unknown key (expected one of `gap_ms`, `keys`",
        "bad.toml: operators[0].size_ms: 10000 ms is shorter than slide_ms (30000 ms), which \
         would leave events in no window; the size must be at least the slide",
        "bad.toml: operators[1].slide_ms: must be positive, got 0",
        "bad.toml: operators[1].keys: at least one key column is required",
        "bad.toml: operators[2].slide_ms: 1 ms puts each event in 86400000 windows of 86400000 \
         ms; at most 1000 are allowed (raise slide_ms)",
        "bad.toml: operators[3].gap_ms: must be positive, got -5",
        "bad.toml: operators[3].allowed_lateness_ms: must not be negative, got -1",
        // The chain is checked too (and stops at its first broken operator).
        "bad.toml: operators[0]: hop size 10000 ms is shorter than its slide 30000 ms",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// A hop of a day every millisecond: 86.4M windows per event.
const DAY_EVERY_MS: &str = "HOP(event_time, INTERVAL '1' MILLISECOND, INTERVAL '1' DAY)";

#[test]
fn a_sql_hop_in_a_pipeline_file_with_too_many_windows_per_event_is_refused_with_its_position() {
    let (code, err) = check(&sql(DAY_EVERY_MS));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "p.toml: sql: HOP (line 3, column 152): slide 1 ms puts each event in 86400000 windows of \
             86400000 ms; at most 1000 are allowed (raise the slide)"
        ),
        "{err}"
    );
}

/// The generator's readings, as a builder source.
fn builder() -> Pipeline {
    let schema: weir::operators::SchemaConfig = toml::from_str::<toml::Table>(COMMON)
        .unwrap()
        .remove("schema")
        .unwrap()
        .try_into()
        .unwrap();
    Pipeline::new("w")
        .source(
            GeneratorSource::new(GeneratorConfig {
                events: Some(100),
                ..Default::default()
            })
            .unwrap(),
        )
        .schema(schema)
}

#[test]
fn a_builder_hop_with_too_many_windows_per_event_is_refused() {
    let hop = HopConfig {
        slide_ms: 1,
        size_ms: 86_400_000,
        keys: vec!["sensor_id".into()],
        time_column: None,
        max_out_of_orderness_ms: 0,
        allowed_lateness_ms: 0,
        late_policy: LatePolicy::Dlq,
        aggregates: vec![AggregateConfig {
            function: "count".into(),
            column: None,
            alias: None,
            distinct: false,
            sql: None,
        }],
    };
    let checkpoints = tempfile::tempdir().unwrap();
    let built = builder()
        .window(WindowConfig::from(&hop))
        .sink(MemorySink::default())
        .dlq(MemoryDlq::default())
        .checkpoint_dir(checkpoints.path())
        .build();
    let err = match built {
        Ok(_) => panic!("a hop of 86400000 windows per event was built"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "operators[0]: hop slide 1 ms puts each event in 86400000 windows of 86400000 ms; \
             at most 1000 are allowed"
        ),
        "{err}"
    );
}

#[test]
fn a_builder_sql_hop_with_too_many_windows_per_event_is_refused_with_its_position() {
    let query =
        format!("SELECT sensor_id, count(*) AS n FROM sensors GROUP BY sensor_id, {DAY_EVERY_MS}");
    let err = match builder().sql(&query, &SqlOptions::default()) {
        Ok(_) => panic!("a hop of 86400000 windows per event was planned"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "HOP (line 1, column 66): slide 1 ms puts each event in 86400000 windows of \
             86400000 ms; at most 1000 are allowed (raise the slide)"
        ),
        "{err}"
    );
}

/// `weir run --check` of `pipeline` (after the name, before [`COMMON`]): exit code, stderr.
fn check(pipeline: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("name = \"w\"\n{pipeline}\n{COMMON}");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir.path());
    (out.status.code(), stderr(&out))
}

#[test]
fn watermark_guards_apply_to_operator_windows_too() {
    let tumble = format!(
        "[[operators]]\ntype = \"tumble\"\nsize_ms = 60000\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n"
    );
    let guards = "[watermark]\nidle_advance_ms = 5000\nmax_future_ms = 60000\n";
    let (code, err) = check(&format!("{guards}{tumble}"));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&format!(
        "sql = \"SELECT sensor_id, window_start, count(*) AS n FROM sensors GROUP BY sensor_id, \
         TUMBLE(event_time, INTERVAL '1' MINUTE)\"\n{guards}"
    ));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn watermark_keys_that_a_window_operator_has_itself_are_refused_with_the_operator_key() {
    let tumble = format!(
        "[[operators]]\ntype = \"tumble\"\nsize_ms = 60000\nkeys = [\"sensor_id\"]\n{AGGREGATES}\n"
    );
    let (code, err) = check(&format!(
        "[watermark]\nmax_out_of_orderness_ms = 2000\nidle_advance_ms = 0\nmax_future_ms = -1\n{tumble}"
    ));
    assert_eq!(code, Some(2), "{err}");
    for expected in [
        "p.toml: watermark.max_out_of_orderness_ms: only used with `sql`; a window operator has \
         its own (operators[i].max_out_of_orderness_ms)",
        "p.toml: watermark.idle_advance_ms: must be positive, got 0",
        "p.toml: watermark.max_future_ms: must be positive, got -1",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let (code, err) = check(
        "[watermark]\nidle_advance_ms = 5000\n[[operators]]\ntype = \"filter\"\npredicate = \"temperature > 0\"\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "p.toml: watermark.idle_advance_ms: the pipeline has no window (tumble, hop, session) \
             to apply it to"
        ),
        "{err}"
    );
}
