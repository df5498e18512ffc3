//! `weir bench` and `weir bench --kafka` run every pass over the same events, the metrics
//! passes included: with metrics on, `/metrics` is scraped while the path runs and it closes
//! the same windows as with metrics off (the passes check it and fail otherwise). Only the
//! figures' presence is checked here: speed is for the benchmark run, not the tests.

use crate::common;

use common::cli::{stderr, weir_with_env};

/// The number after `label` on the line that starts with it (after the indent).
fn figure(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure on: {line}"))
}

/// The scrapes the `metrics on` line reports.
fn scrapes(out: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("metrics on"))
        .unwrap_or_else(|| panic!("no `metrics on` line in:\n{out}"));
    let before = line.rsplit_once(" scrapes").expect("scrapes").0;
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `weir bench ARGS`, which must succeed: its standard output.
fn bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let out = weir_with_env(&all, dir.path(), &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    text
}

fn check_metrics_lines(out: &str) {
    assert!(figure(out, "metrics off") > 0.0, "{out}");
    assert!(figure(out, "metrics on") > 0.0, "{out}");
    assert!(scrapes(out) > 0, "{out}");
}

#[test]
fn the_in_memory_bench_reports_metrics_on_beside_off() {
    let text = bench(&["--events", "60000", "--sensors", "500"]);
    assert!(figure(&text, "whole path") > 0.0, "{text}");
    check_metrics_lines(&text);
}

#[test]
fn the_kafka_bench_reports_metrics_on_beside_off() {
    let brokers = common::kafka::brokers();
    let text = bench(&[
        "--kafka",
        "--brokers",
        &brokers,
        "--events",
        "20000",
        "--sensors",
        "200",
        "--partitions",
        "2",
    ]);
    assert!(figure(&text, "weir / raw") > 0.0, "{text}");
    check_metrics_lines(&text);
}
