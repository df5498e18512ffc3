//! `scripts/kafka.sh`, the test broker's script, run as the README test command runs it: a
//! broker of its own on a free loopback port, in a services directory of its own, stopped by
//! its PID afterwards.

use std::path::Path;
use std::process::Command;

fn kafka_sh(services: &Path, cluster_id: &str, cmd: &str) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
        .arg(cmd)
        .env("WEIR_TEST_BROKER", "kafka")
        .env("WEIR_SERVICES_DIR", services)
        .env("WEIR_KAFKA_CLUSTER_ID", cluster_id)
        .env_remove("WEIR_KAFKA_PORT")
        .output()
        .expect("scripts/kafka.sh runs")
}

/// One cluster id in 64 starts with '-' (URL-safe base64 of random bytes); the storage
/// tool took `-t -xyz...` for an option and the broker never formatted (CI failed on it
/// once). Such an id must format and start like any other.
#[test]
fn a_cluster_id_that_starts_with_a_dash_formats_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let id = "-AbCdEfGhIjKlMnOpQrStUw";
    let start = kafka_sh(dir.path(), id, "start");
    let meta = std::fs::read_to_string(dir.path().join("kafka-data/meta.properties"));
    let stop = kafka_sh(dir.path(), id, "stop");
    let out = String::from_utf8_lossy(&start.stdout);
    assert!(
        start.status.success() && out.contains("WEIR_KAFKA_BROKERS=127.0.0.1:"),
        "kafka.sh start with cluster id {id} failed: {}\n{out}{}",
        start.status,
        String::from_utf8_lossy(&start.stderr)
    );
    assert!(stop.status.success(), "kafka.sh stop: {stop:?}");
    let meta = meta.expect("kafka-data/meta.properties after start");
    assert!(
        meta.lines().any(|l| l == format!("cluster.id={id}")),
        "the log directory was formatted with another id:\n{meta}"
    );
}
