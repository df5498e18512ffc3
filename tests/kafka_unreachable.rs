//! A start against an unreachable broker (no broker needed): the `weir` binary fails with
//! its clear error, and librdkafka's repeated lines about the refused connection are logged
//! once each with a count, not once per reconnect (issue 10, point 9).

use std::process::Command;

#[test]
fn a_start_against_an_unreachable_broker_logs_each_client_warning_a_bounded_number_of_times() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
name = "unreachable"

[source]
type = "kafka"
brokers = "127.0.0.1:{port}"
topics = ["events"]
group_id = "unreachable"
connect_timeout_ms = 5000

[schema]
event_time = "event_time"
fields = [
  {{ name = "event_id", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cannot fetch metadata of topic \"events\""),
        "{stderr}"
    );
    let client_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("librdkafka"))
        .collect();
    assert!(
        !client_lines.is_empty(),
        "the refused connection is logged: {stderr}"
    );
    assert!(
        client_lines.len() <= 6,
        "{} librdkafka lines; repeats must be collapsed:\n{stderr}",
        client_lines.len()
    );
}
