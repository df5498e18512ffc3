//! The metrics endpoint of `weir run` (`--metrics-addr`, `[metrics]`): scraped while a real
//! run reads a topic of the test broker, its counters equal what was produced and what the
//! DLQ and the sink hold at the end, they reconcile with the accounting identity, lag falls to
//! 0 per partition and the watermark is reported per partition; `/readyz` turns ready once
//! the partitions are assigned; a taken or malformed address is a clear error.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::cli::{spawn_weir, stderr, wait_within, weir};
use common::kafka::{brokers, create_topic, produce_part, unique};
use common::{generator_pipeline, IOT_SCHEMA};
use weir::connectors::{read_dlq_dir, read_jsonl_dir, EventGenerator, GeneratorConfig};

/// One sample of a scrape: name, labels as written (`topic="t",partition="0"`), value.
type Sample = (String, String, f64);

/// `GET path` on `addr`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// The samples of a Prometheus text exposition.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (
                name.to_string(),
                labels.to_string(),
                value.parse().expect("a number"),
            )
        })
        .collect()
}

/// The value of the sample `name` without labels.
fn value(s: &[Sample], name: &str) -> f64 {
    s.iter()
        .find(|(n, l, _)| n == name && l.is_empty())
        .unwrap_or_else(|| panic!("no sample {name}"))
        .2
}

/// The samples `name`, by labels.
fn by_labels(s: &[Sample], name: &str) -> BTreeMap<String, f64> {
    s.iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, v)| (l.clone(), *v))
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address a `weir run` prints once it serves its metrics (stderr is read on a thread
/// and kept, for the assertions at the end).
fn served_at(child: &mut std::process::Child) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let err = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60).saturating_sub(start.elapsed()))
            .expect("weir prints where it serves its metrics");
        if let Some(url) = line.strip_prefix("metrics: serving http://") {
            let addr = url
                .trim_end_matches("/metrics")
                .parse()
                .expect("an address");
            return (addr, rx);
        }
    }
}

fn pipeline(topic: &str) -> String {
    format!(
        r#"name = "{name}"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
assignment = "manual"

{IOT_SCHEMA}

[[operators]]
type = "filter"
predicate = "temperature > 0"

[[operators]]
type = "tumble"
size_ms = 60000
max_out_of_orderness_ms = 60000
keys = ["sensor_id"]
aggregates = [{{ function = "count", alias = "n" }}]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 200

[batch]
max_rows = 500
linger_ms = 20
"#,
        name = unique("metrics"),
        brokers = brokers(),
        group = unique("weir-metrics"),
    )
}

#[test]
fn a_scrape_during_a_run_counts_what_was_produced_and_lag_falls_to_zero() {
    let partitions = 3;
    let cfg = GeneratorConfig {
        seed: 31,
        sensors: 60,
        partitions: partitions as u32,
        events: Some(6_000),
        disorder_ms: 5_000,
        // 400 s of event time per partition: windows close while the run reads.
        event_interval_ms: 200,
        poison_ratio: 0.02,
        late_ratio: 0.01,
        ..Default::default()
    };
    let truth = EventGenerator::new(&cfg);
    let topic = create_topic(partitions);
    // Half before the run starts, half while it runs.
    let first = produce_part(&topic, &truth, partitions, (0, 2), false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), pipeline(&topic)).unwrap();
    let mut child = spawn_weir(
        &["run", "p.toml", "--metrics-addr", "127.0.0.1:0"],
        dir.path(),
    );
    let (addr, log) = served_at(&mut child);

    wait_until("/readyz to answer ready", Duration::from_secs(60), || {
        get(addr, "/readyz").0 == 200
    });
    assert_eq!(get(addr, "/healthz").0, 200);
    let second = produce_part(&topic, &truth, partitions, (1, 2), false);
    let total = first + second;

    let mut last = Vec::new();
    wait_until(
        "every produced message to be counted, lag 0 and every partition checkpointed",
        Duration::from_secs(120),
        || {
            let (code, body) = get(addr, "/metrics");
            assert_eq!(code, 200, "{body}");
            last = samples(&body);
            let lags = by_labels(&last, "weir_consumer_lag");
            // Each partition checkpoints within `interval_ms` of its last input: on a fast
            // broker lag can reach 0 before every partition has.
            let checkpointed = by_labels(&last, "weir_last_checkpoint_timestamp_seconds");
            value(&last, "weir_events_in_total") as u64 == total
                && lags.len() == partitions as usize
                && lags.values().all(|l| *l == 0.0)
                && checkpointed.len() == partitions as usize
        },
    );
    let s = &last;
    // The accounting identity, from the scrape alone.
    let consumed = value(s, "weir_events_in_total");
    assert_eq!(
        consumed,
        value(s, "weir_events_aggregated_total")
            + value(s, "weir_events_dead_lettered_total")
            + value(s, "weir_events_late_dropped_total")
            + value(s, "weir_events_filtered_total")
            + value(s, "weir_events_deduplicated_total"),
        "consumed = aggregated + dlq + late_dropped + filtered + deduplicated"
    );
    assert!(value(s, "weir_events_filtered_total") > 0.0);
    assert!(value(s, "weir_bytes_in_total") > 0.0);
    assert_eq!(value(s, "weir_assigned_partitions"), partitions as f64);
    assert_eq!(value(s, "weir_ready"), 1.0);

    // Per partition: read to the end of what was produced into it.
    let next = by_labels(s, "weir_source_next_offset");
    for p in 0..partitions {
        let labels = format!("topic=\"{topic}\",partition=\"{p}\"");
        assert_eq!(
            next.get(&labels).copied(),
            Some(truth.events_in_partition(p).unwrap() as f64),
            "partition {p}: {next:?}"
        );
    }
    // Every partition has a watermark (the window reports it) and its lag behind the clock.
    let wm_lag = by_labels(s, "weir_watermark_lag_seconds");
    assert_eq!(wm_lag.len(), partitions as usize, "{wm_lag:?}");
    assert!(wm_lag.values().all(|l| *l > 0.0), "{wm_lag:?}");
    assert!(value(s, "weir_batch_processing_seconds_count") > 0.0);
    assert_eq!(
        value(s, "weir_checkpoint_duration_seconds_count"),
        value(s, "weir_checkpoints_total"),
        "one observation per checkpoint"
    );
    let checkpointed = by_labels(s, "weir_last_checkpoint_timestamp_seconds");
    assert_eq!(checkpointed.len(), partitions as usize, "{checkpointed:?}");
    // Windows were written: each write of a step with Kafka timestamps is timed end to end.
    assert!(value(s, "weir_events_out_total") > 0.0);
    assert!(value(s, "weir_end_to_end_latency_seconds_count") > 0.0);

    // Every poison message produced is a decode dead letter of the scrape.
    let poison = (0..partitions)
        .flat_map(|p| (0..truth.events_in_partition(p).unwrap() as i64).map(move |o| (p, o)))
        .filter(|(p, o)| truth.event(*p, *o).is_some_and(|e| e.poison.is_some()))
        .count();
    assert!(poison > 0);
    let dlq = by_labels(s, "weir_dlq_total");
    let decode: f64 = dlq
        .iter()
        .filter(|(l, _)| l.ends_with("stage=\"decode\""))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(decode, poison as f64, "{dlq:?}");
    let dlq_total: f64 = dlq.values().sum();
    assert_eq!(dlq_total, value(s, "weir_events_dead_lettered_total"));

    // Stop: what the DLQ and the sink hold is what the last scrape counted.
    let rows_written = by_labels(s, "weir_sink_rows_written_total")["sink=\"sinks[0]\""];
    let checkpoints_before = value(s, "weir_checkpoints_total");
    assert!(checkpoints_before > 0.0);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = wait_within(child, Duration::from_secs(60)).expect("weir stops on SIGTERM");
    let log: Vec<String> = log.try_iter().collect();
    assert!(out.status.success(), "{}\n{}", stderr(&out), log.join("\n"));
    let letters = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(letters.len() as f64, dlq_total);
    let rows = read_jsonl_dir(dir.path().join("out")).unwrap();
    assert_eq!(rows.len() as f64, rows_written);
    assert_eq!(
        value(s, "weir_events_out_total"),
        rows_written,
        "one sink: the rows handed to the sinks are the rows it wrote"
    );

    // `weir status` of the stopped pipeline: every partition checkpointed at its end, lag 0,
    // and the totals of the scrape.
    let status = weir(&["status", "p.toml"], dir.path());
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", stderr(&status));
    for p in 0..partitions {
        let end = truth.events_in_partition(p).unwrap();
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{topic}/{p}:")))
            .unwrap_or_else(|| panic!("no line for partition {p}: {report}"));
        assert!(line.contains(&format!(", offset {end}, ")), "{line}");
        assert!(line.ends_with(", lag 0"), "{line}");
    }
    assert!(
        report.contains(&format!("totals: {total} consumed = ")),
        "{report}"
    );
}

#[test]
fn a_taken_metrics_address_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        generator_pipeline("metrics-gen", ""),
    )
    .unwrap();
    let out = weir(&["run", "p.toml", "--metrics-addr", &addr], dir.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "p.toml: --metrics-addr: cannot listen on {addr}: "
        )),
        "{err}"
    );
    // Nothing ran: no output, no checkpoint.
    assert!(!dir.path().join("checkpoints").exists());
}

#[test]
fn a_malformed_metrics_address_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = generator_pipeline("metrics-gen", "[metrics]\naddr = \"localhost\"\n");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("p.toml: metrics.addr: `localhost` is not an address to listen on (ip:port"),
        "{err}"
    );
    let out = weir(&["run", "p.toml", "--metrics-addr", "nowhere"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`nowhere` is not an address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_metrics_section_serves_a_bounded_run_and_stops_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = generator_pipeline("metrics-gen", "[metrics]\naddr = \"127.0.0.1:0\"\n");
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("metrics: serving http://127.0.0.1:"), "{err}");
    let disabled = generator_pipeline("metrics-gen", "[metrics]\nenabled = false\n");
    std::fs::write(dir.path().join("q.toml"), disabled).unwrap();
    let out = weir(&["run", "q.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("metrics: serving"),
        "{}",
        stderr(&out)
    );
}
