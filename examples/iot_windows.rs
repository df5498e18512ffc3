//! IoT sensor averages, written as Rust code with the fluent builder.
//!
//! Generated readings → drop implausible temperatures → 1-minute tumbling avg/max/count per
//! sensor → SQLite (`iot-example/windows.sqlite`) and JSONL files (`iot-example/windows/`).
//! Poison and late events go to `iot-example/dlq/`.
//!
//! Guarantee: the JSONL output and the DLQ are exactly-once (files staged per checkpoint
//! epoch); SQLite upserts by (sensor_id, window_start) are effectively once. Stop it with
//! Ctrl-C and run it again: it resumes from its checkpoints.
//!
//! Run: `cargo run --release --example iot_windows`

use std::path::Path;
use std::time::Duration;

use weir::prelude::*;

/// The example's generator: `events` readings of 1000 sensors over 4 partitions, some of them
/// poison or late.
pub fn generator(events: u64) -> GeneratorConfig {
    GeneratorConfig {
        sensors: 1_000,
        partitions: 4,
        events: Some(events),
        disorder_ms: 5_000,
        poison_ratio: 0.001,
        late_ratio: 0.001,
        ..Default::default()
    }
}

/// Runs the pipeline over `events` readings, writing under `dir`.
pub fn run(dir: &Path, events: u64, shutdown: Shutdown) -> anyhow::Result<RunSummary> {
    let summary = Pipeline::new("iot-example")
        .source(GeneratorSource::new(generator(events))?)
        .schema(weir::iot_schema())
        .filter("temperature BETWEEN -40 AND 60")
        .tumble(weir::demo_window(60_000))
        .sink(SqliteSink::new(
            "sqlite",
            &SqliteSinkConfig {
                path: dir.join("windows.sqlite"),
                table: "sensor_windows".into(),
                key_columns: vec!["sensor_id".into(), "window_start".into()],
                create_table: true,
            },
        )?)
        .sink(JsonlSink::new(
            "jsonl",
            &JsonlSinkConfig {
                path: dir.join("windows"),
            },
        )?)
        .dlq(JsonlDlq::new(&JsonlDlqConfig {
            path: dir.join("dlq"),
        })?)
        .checkpoint_dir(dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_secs(2))
        .run(shutdown)?;
    Ok(summary)
}

#[allow(dead_code)] // run by `cargo run --example`; the tests call `run`
fn main() -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    weir::install_signal_handlers(shutdown.clone())?;
    let summary = run(Path::new("iot-example"), 1_000_000, shutdown)?;
    let c = summary.counters;
    println!(
        "{} events: {} aggregated, {} filtered, {} dead-lettered ({} late); {} windows out in {:.2}s",
        c.consumed,
        c.aggregated,
        c.filtered,
        c.dlq,
        c.late,
        c.rows_out,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}
