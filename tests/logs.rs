//! The log of `weir run`: `--log-format json` (or `[worker] log_format = "json"`) writes one
//! JSON object per line, each telemetry event with its fields; no colour codes when stderr is
//! not a terminal; and a secret given through `${VAR}` (a PostgreSQL password, a Kafka
//! `sasl.password`) appears in no log line, at any level.

use crate::common;

use common::cli::{stderr, weir_with_env};
use common::{generator_pipeline, IOT_SCHEMA};

/// Each line of `text` as a JSON object (panics, naming the line, on one that is not).
fn json_lines(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    text.lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => panic!("not a JSON object: {l}\n{text}"),
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_each_events_fields() {
    for (flag, worker) in [(true, ""), (false, "[worker]\nlog_format = \"json\"\n")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            generator_pipeline("logs", worker),
        )
        .unwrap();
        let mut args = vec!["run", "p.toml"];
        if flag {
            args.extend(["--log-format", "json"]);
        }
        let out = weir_with_env(&args, dir.path(), &[("WEIR_LOG", Some("info"))]);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        let lines = json_lines(&err);
        let started: Vec<_> = lines
            .iter()
            .filter(|l| {
                l.get("message")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| m.starts_with("resuming topic"))
            })
            .collect();
        assert_eq!(started.len(), 2, "one per partition: {err}");
        for l in started {
            assert_eq!(l["level"], "INFO", "{l:?}");
            assert!(l["partition"].is_i64(), "{l:?}");
            assert!(l["topic"].is_string(), "{l:?}");
            assert!(l["from"].is_string(), "{l:?}");
        }
    }
}

#[test]
fn human_logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), generator_pipeline("logs", "")).unwrap();
    let out = weir_with_env(
        &["run", "p.toml"],
        dir.path(),
        &[("WEIR_LOG", Some("info"))],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming topic"), "{err}");
    assert!(!err.contains('\u{1b}'), "an escape code in: {err:?}");
}

#[test]
fn secrets_from_the_environment_are_in_no_log_line_at_debug_level() {
    // Nothing listens on this port: the Kafka client retries, then the start fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "secrets"

[source]
type = "kafka"
brokers = "${{WEIR_TEST_BROKERS:-127.0.0.1:{port}}}"
topics = ["events"]
group_id = "secrets"
connect_timeout_ms = 3000
options = {{ "security.protocol" = "sasl_plaintext", "sasl.mechanism" = "PLAIN", "sasl.username" = "weir", "sasl.password" = "${{WEIR_TEST_SASL_PASSWORD}}" }}

{IOT_SCHEMA}

[[sinks]]
type = "postgres"
url = "postgres://weir:${{WEIR_TEST_PG_PASSWORD}}@127.0.0.1:{port}/weir?connect_timeout=2"
table = "w"
key_columns = ["event_id"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#
    );
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let (sasl, pg) = ("sasl-Kq72-secret", "pg-Wv19-secret");
    for format in ["json", "human"] {
        let out = weir_with_env(
            &["run", "p.toml", "--log-format", format],
            dir.path(),
            &[
                ("WEIR_LOG", Some("debug")),
                ("WEIR_TEST_BROKERS", None),
                ("WEIR_TEST_SASL_PASSWORD", Some(sasl)),
                ("WEIR_TEST_PG_PASSWORD", Some(pg)),
            ],
        );
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(!out.status.success(), "{all}");
        assert!(all.contains(&format!("127.0.0.1:{port}")), "{all}");
        assert!(!all.contains(sasl), "{format}: {all}");
        assert!(!all.contains(pg), "{format}: {all}");
        if format == "json" {
            // Every line is JSON, the error that ends the run too.
            let lines = json_lines(&stderr(&out));
            let last = lines.last().expect("the error is logged");
            assert_eq!(last["level"], "ERROR", "{last:?}");
            assert!(
                last["message"].as_str().unwrap().starts_with("error: "),
                "{last:?}"
            );
        }
    }
}

/// On a terminal `weir run` redraws one status line on stderr every second (carriage return,
/// erase the line, the status) and erases it when the run ends; the log stays without
/// colour when `NO_COLOR` is set. The run is given a terminal by `script`, which runs it on
/// a pseudo-terminal and copies what it wrote.
#[test]
fn on_a_terminal_the_status_line_is_redrawn_in_place_and_erased_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    // 2000 events at 500/s: about 4 s, so the line is drawn several times.
    let pipeline = generator_pipeline("tty", "")
        .replace("events = 2000", "events = 2000\nevents_per_sec = 500");
    std::fs::write(dir.path().join("p.toml"), pipeline).unwrap();
    let weir = env!("CARGO_BIN_EXE_weir");
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &format!("{weir} run p.toml"), "/dev/null"])
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run `script` (util-linux) to give weir a terminal");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}\n{}", stderr(&out));
    let redraw = "\r\u{1b}[2K";
    let draws: Vec<&str> = tty
        .split(redraw)
        .skip(1)
        .filter(|l| l.contains(" events/s in, "))
        .collect();
    assert!(draws.len() >= 2, "fewer than 2 redraws in: {tty:?}");
    for d in &draws {
        let line = d.lines().next().unwrap_or_default();
        assert!(
            line.contains(" rows/s out, ") && line.contains(" dead letters"),
            "not a status line: {line:?}"
        );
    }
    // The last redraw is the erase: what follows it on its line is no status.
    let last = tty.rfind(redraw).expect("a redraw");
    let after = tty[last + redraw.len()..]
        .lines()
        .next()
        .unwrap_or_default();
    assert!(
        !after.contains(" events/s in, "),
        "the line was not erased at the end: {tty:?}"
    );
    assert!(
        !tty.contains("\u{1b}[3") && !tty.contains("\u{1b}[1m"),
        "a colour code with NO_COLOR set: {tty:?}"
    );
}
