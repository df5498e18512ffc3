//! Errors at the right place and time: a mistake in a pipeline file is reported at its own
//! key (and SQL at its line in the file) by `weir run --check`, including what only the disk
//! or the output's column types reveal; a run-time I/O error names its config key and says
//! the OS error once.

use crate::common;

use std::path::Path;

use common::cli::{stderr, weir, weir_with_env};
use common::IOT_SCHEMA;

/// A valid pipeline file with `body` (operators or sql) and the given sink, DLQ and
/// checkpoint sections.
fn pipeline(body: &str, sink: &str, dlq_path: &str, checkpoint_dir: &str) -> String {
    // `sql = ...` is a top-level key: it goes before the first table.
    let (top, ops) = if body.starts_with("sql") {
        (body, "")
    } else {
        ("", body)
    };
    format!(
        r#"name = "errors"
{top}
[source]
type = "generator"
partitions = 2
sensors = 10
events = 2000

{IOT_SCHEMA}
{ops}

[[sinks]]
{sink}

[dlq]
type = "jsonl"
path = "{dlq_path}"

[checkpoint]
dir = "{checkpoint_dir}"
"#
    )
}

const TUMBLE: &str = r#"[[operators]]
type = "filter"
predicate = "temperature > -50"

[[operators]]
type = "tumble"
size_ms = 60000
keys = ["sensor_id"]
aggregates = [{ function = "count", alias = "n" }]
"#;

fn check(dir: &Path, text: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("p.toml"), text).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir);
    (out.status.code(), stderr(&out))
}

#[test]
fn an_unknown_late_policy_is_reported_at_late_policy() {
    let dir = tempfile::tempdir().unwrap();
    let body = TUMBLE.replace(
        "size_ms = 60000",
        "size_ms = 60000\nlate_policy = \"ignore\"",
    );
    let (code, err) = check(dir.path(), &pipeline(&body, "type = \"null\"", "dlq", "c"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: operators[1].late_policy: unknown variant `ignore`"),
        "{err}"
    );
    assert!(!err.contains("operators[1].type"), "{err}");
}

#[test]
fn an_unknown_assignment_is_reported_at_source_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(TUMBLE, "type = \"null\"", "dlq", "c").replace(
        "type = \"generator\"\npartitions = 2\nsensors = 10\nevents = 2000",
        "type = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nassignment = \"auto\"",
    );
    let (code, err) = check(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: source.assignment: unknown variant `auto`"),
        "{err}"
    );
    assert!(!err.contains("source.type"), "{err}");
}

#[test]
fn an_unknown_field_type_is_reported_at_that_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(TUMBLE, "type = \"null\"", "dlq", "c").replace(
        "{ name = \"humidity\", type = \"float64\" }",
        "{ name = \"humidity\", type = \"percent\" }",
    );
    let (code, err) = check(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: schema.fields[3].type: unknown variant `percent`"),
        "{err}"
    );
}

#[test]
fn a_sql_error_position_counts_from_the_start_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = "sql = \"SELECT sensor_id, window_start, count(*) AS n FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE) ORDER BY n\"";
    let text = pipeline(body, "type = \"null\"", "dlq", "c");
    let (line, sql_line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("sql = "))
        .unwrap();
    let line = line + 1;
    // The planner points at the first ORDER BY expression.
    let column = sql_line.find("ORDER BY n").unwrap() + "ORDER BY ".len() + 1;
    let (code, err) = check(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("ORDER BY (line {line}, column {column})")),
        "line {line}, column {column}: {err}"
    );
}

#[test]
fn a_checkpoint_directory_that_is_a_file_fails_the_check_naming_checkpoint_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ckpt"), "not a directory").unwrap();
    let (code, err) = check(
        dir.path(),
        &pipeline(TUMBLE, "type = \"null\"", "dlq", "ckpt"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: checkpoint.dir: `ckpt` exists and is not a directory"),
        "{err}"
    );
}

#[test]
fn a_dlq_path_that_is_a_file_fails_the_check_naming_dlq_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dead"), "not a directory").unwrap();
    let (code, err) = check(
        dir.path(),
        &pipeline(TUMBLE, "type = \"null\"", "dead", "c"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: dlq.path: `dead` exists and is not a directory"),
        "{err}"
    );
    // Nothing was created: the check looked, it did not write.
    assert!(!dir.path().join("c").exists());
}

#[test]
fn a_column_type_the_sqlite_sink_cannot_store_fails_the_check_naming_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let body = "sql = \"SELECT sensor_id, window_start, arrow_cast(sensor_id, 'Binary') AS t, count(*) AS n FROM sensors GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE)\"";
    let sink = "type = \"sqlite\"\npath = \"out.sqlite\"\ntable = \"w\"\nkey_columns = [\"sensor_id\", \"window_start\"]";
    let (code, err) = check(dir.path(), &pipeline(body, sink, "dlq", "c"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: sinks[0]: column `t` has type Binary")
            && err.contains("which the SQLite sink cannot store"),
        "{err}"
    );
    assert!(!dir.path().join("out.sqlite").exists());
}

#[test]
fn a_run_time_io_error_names_the_key_and_says_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    // /proc exists, so the check passes, but nothing can be created in it, even by root.
    let text = pipeline(TUMBLE, "type = \"null\"", "/proc/weir-dlq-test", "c");
    std::fs::write(dir.path().join("p.toml"), &text).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("dlq.path: "), "{err}");
    assert!(err.contains("/proc/weir-dlq-test"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn a_missing_environment_variable_is_refused_naming_its_key_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(TUMBLE, "type = \"null\"", "${WEIR_TEST_DLQ_DIR}", "c");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir_with_env(
        &["run", "--check", "p.toml"],
        dir.path(),
        &[("WEIR_TEST_DLQ_DIR", None)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "p.toml: dlq.path: environment variable `WEIR_TEST_DLQ_DIR` is not set (set it, or \
             write `${WEIR_TEST_DLQ_DIR:-default}`)"
        ),
        "{err}"
    );
}

#[test]
fn a_value_whose_variable_is_missing_gets_that_error_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "type = \"postgres\"\nurl = \"${WEIR_TEST_PG_URL}\"\ntable = \"w\"\nkey_columns = [\"sensor_id\", \"window_start\"]";
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline(TUMBLE, sink, "dlq", "c"),
    )
    .unwrap();
    let out = weir_with_env(
        &["run", "--check", "p.toml"],
        dir.path(),
        &[("WEIR_TEST_PG_URL", None)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("p.toml has 1 error:"), "{err}");
    assert!(
        err.contains("p.toml: sinks[0].url: environment variable `WEIR_TEST_PG_URL` is not set"),
        "{err}"
    );
}

#[test]
fn environment_variables_and_defaults_decide_where_a_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "type = \"jsonl\"\npath = \"${WEIR_TEST_OUT:-out-default}\"";
    let text = pipeline(TUMBLE, sink, "${WEIR_TEST_DLQ_DIR}", "$${not-a-variable}");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir_with_env(
        &["run", "p.toml"],
        dir.path(),
        &[
            ("WEIR_TEST_DLQ_DIR", Some("dead-letters")),
            ("WEIR_TEST_OUT", None),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("out-default").is_dir());
    assert!(dir.path().join("dead-letters").is_dir());
    // `$${` is a literal `${`: the checkpoint directory is named as written.
    assert!(dir.path().join("${not-a-variable}").is_dir());
}

#[test]
fn a_password_from_the_environment_is_in_no_error_message() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: connecting fails, and the error names the sink.
    let sink = "type = \"postgres\"\nurl = \"postgres://weir:${WEIR_TEST_PG_PASSWORD}@127.0.0.1:1/weir?connect_timeout=2\"\ntable = \"w\"\nkey_columns = [\"sensor_id\", \"window_start\"]";
    let text = format!(
        "{}\n[worker]\nretry_max_attempts = 2\n",
        pipeline(TUMBLE, sink, "dlq", "c")
    );
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let password = "pw-Zq81-not-in-logs";
    let out = weir_with_env(
        &["run", "p.toml"],
        dir.path(),
        &[
            ("WEIR_TEST_PG_PASSWORD", Some(password)),
            ("WEIR_LOG", Some("debug")),
        ],
    );
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("127.0.0.1"),
        "the error names the server: {err}"
    );
    assert!(!err.contains(password), "{err}");
    assert!(!stdout.contains(password), "{stdout}");
}

/// The pipeline file with `retry` as its `[dlq.retry]` section.
fn with_retry(retry: &str) -> String {
    pipeline(TUMBLE, "type = \"null\"", "dlq", "c").replace(
        "[checkpoint]",
        &format!("[dlq.retry]\n{retry}\n\n[checkpoint]"),
    )
}

#[test]
fn a_bad_retry_schedule_is_reported_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for (retry, expected) in [
        (
            "attempts = 5\nbackoff_ms = [100, 200]",
            "p.toml: dlq.retry.backoff_ms: 2 waits for 5 attempts: give one wait before each attempt after the first (4)",
        ),
        (
            "attempts = 0",
            "p.toml: dlq.retry.attempts: must be at least 1 (the first attempt), got 0",
        ),
        (
            "backoff_ms = [100]\ninitial_backoff_ms = 50",
            "p.toml: dlq.retry.backoff_ms: give either a list of waits (backoff_ms) or an exponential backoff (initial_backoff_ms, multiplier, max_backoff_ms), not both",
        ),
        (
            "multiplier = 3.0",
            "p.toml: dlq.retry.initial_backoff_ms: missing (an exponential backoff starts from it; or give the waits as backoff_ms)",
        ),
        (
            "initial_backoff_ms = 1000\nmax_backoff_ms = 500",
            "p.toml: dlq.retry.max_backoff_ms: 500 is below initial_backoff_ms (1000)",
        ),
        (
            "initial_backoff_ms = 100\nmultiplier = 0.5",
            "p.toml: dlq.retry.multiplier: must be a number of at least 1 (each wait at least the one before), got 0.5",
        ),
        (
            "retry_panic = true",
            "p.toml: dlq.retry.retry_panic: unknown key",
        ),
        ("backoff_ms = [100, -1]", "p.toml: dlq.retry.backoff_ms[1]: "),
    ] {
        let (code, err) = check(dir.path(), &with_retry(retry));
        assert_eq!(code, Some(2), "{retry}: {err}");
        assert!(err.contains(expected), "{retry}: missing {expected:?} in:\n{err}");
        assert!(err.contains("has 1 error:"), "{retry}: one error only:\n{err}");
    }
    let text = pipeline(TUMBLE, "type = \"null\"", "dlq", "c")
        .replace("path = \"dlq\"", "path = \"dlq\"\nretry = 3");
    let (code, err) = check(dir.path(), &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("p.toml: dlq.retry: expected a table ([dlq.retry]), found a integer"),
        "{err}"
    );
}

#[test]
fn check_prints_the_retry_schedule_the_pipeline_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    for (retry, expected) in [
        (
            None,
            "retry: 5 attempts, waits 1000, 5000, 30000, 120000 ms",
        ),
        (
            Some("backoff_ms = [200, 200]\nretry_panics = true"),
            "retry: 3 attempts, waits 200, 200 ms, panics retried",
        ),
        (
            Some("attempts = 5\ninitial_backoff_ms = 100\nmax_backoff_ms = 300"),
            "retry: 5 attempts, waits 100, 200, 300, 300 ms",
        ),
        (Some("attempts = 1"), "retry: 1 attempt (no retries)"),
        (
            Some("attempts = 7"),
            "retry: 7 attempts, waits 1000, 5000, 30000, 120000, 120000, 120000 ms",
        ),
    ] {
        let text = match retry {
            Some(r) => with_retry(r),
            None => pipeline(TUMBLE, "type = \"null\"", "dlq", "c"),
        };
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let out = weir(&["run", "--check", "p.toml"], dir.path());
        assert!(out.status.success(), "{retry:?}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expected), "{retry:?}: {stdout}");
    }
}
