//! `weir bench`: pre-encoded JSON in memory → decode → the demo's window → null sink, on one
//! thread. From the same run and the same input it reports decode-only events/s, whole-path
//! events/s with the window built by hand (a `TumbleWindow`), the same with the run-time
//! `partition_key` check in front of it, and with the window written as SQL ([`DEMO_SQL`],
//! planned by `Pipeline::sql`), and the process's peak memory.
//!
//! Input is encoded batch by batch by the deterministic generator, outside the timed region
//! (so memory stays bounded for any event count); only decode, operators and the sink are timed.

use std::time::{Duration, Instant};

use weir_connectors::{EventGenerator, GeneratorConfig};
use weir_operators::{JsonDecoder, KeyCheckOperator, KeyPlacement, TumbleWindow};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{Decoder, NullSink, PartitionTask, SinkWriter};

/// The demo's window as SQL: what the SQL pass of the benchmark runs.
pub const DEMO_SQL: &str = "SELECT sensor_id, window_start, window_end, \
    avg(temperature) AS avg_temp, max(temperature) AS max_temp, count(*) AS readings \
    FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE)";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub events: u64,
    pub sensors: u32,
    pub batch_rows: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            events: 10_000_000,
            sensors: 10_000,
            batch_rows: 8192,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub events: u64,
    pub avg_event_bytes: f64,
    pub decode_secs: f64,
    pub whole_secs: f64,
    /// The whole path with the window planned from [`DEMO_SQL`].
    pub sql_secs: f64,
    /// The whole path with the run-time check of `[schema] partition_key` in front of the
    /// window (what a Kafka source with a declared partition key runs).
    pub key_check_secs: f64,
    pub windows_out: u64,
    pub sql_windows_out: u64,
    pub peak_rss_bytes: Option<u64>,
}

impl BenchReport {
    pub fn decode_eps(&self) -> f64 {
        self.events as f64 / self.decode_secs.max(1e-9)
    }

    pub fn whole_eps(&self) -> f64 {
        self.events as f64 / self.whole_secs.max(1e-9)
    }

    pub fn sql_eps(&self) -> f64 {
        self.events as f64 / self.sql_secs.max(1e-9)
    }

    pub fn key_check_eps(&self) -> f64 {
        self.events as f64 / self.key_check_secs.max(1e-9)
    }
}

/// Run the three passes over the same generated input.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.events == 0 || opts.sensors == 0 || opts.batch_rows == 0 {
        return Err(WeirError::Config(
            "bench: --events, --sensors and --batch-rows must be positive".into(),
        ));
    }
    let generator = EventGenerator::new(&GeneratorConfig {
        sensors: opts.sensors,
        partitions: 1,
        events: Some(opts.events),
        disorder_ms: 5_000,
        ..Default::default()
    });
    let schema = crate::iot_schema();

    // Pass 1: decode only.
    let mut decoder = JsonDecoder::new(&schema);
    let (decode, bytes) = feed(&generator, opts, &mut |raw| {
        let t = Instant::now();
        let out = decoder.decode(&raw)?;
        std::hint::black_box(&out);
        Ok(t.elapsed())
    })?;

    // Pass 2: the whole path of a partition task.
    let mut task = window_task(&schema, None)?;
    let (whole, windows_out) = run_task(&mut task, &generator, opts)?;

    // Pass 3: the whole path with the partition key check in front of the window (right
    // after pass 2, so the two are measured back to back).
    let placement = std::sync::Arc::new(KeyPlacement::new(
        schema.partition_key.as_deref().unwrap_or("sensor_id"),
        weir_operators::PartitionKeyCheck::Warn,
    ));
    let mut checked = window_task(&schema, Some(placement))?;
    let (key_check, _) = run_task(&mut checked, &generator, opts)?;

    // Pass 4: the same window written as SQL.
    let mut sql_task = crate::pipeline::Pipeline::new("bench")
        .schema(schema.clone())
        .sql(
            DEMO_SQL,
            &weir_operators::SqlOptions {
                max_out_of_orderness_ms: 5_000,
                ..Default::default()
            },
        )?
        .partition_task(&"bench".into(), 0)?;
    let (sql, sql_windows_out) = run_task(&mut sql_task, &generator, opts)?;

    Ok(BenchReport {
        events: opts.events,
        avg_event_bytes: bytes as f64 / opts.events as f64,
        decode_secs: decode.as_secs_f64(),
        whole_secs: whole.as_secs_f64(),
        sql_secs: sql.as_secs_f64(),
        key_check_secs: key_check.as_secs_f64(),
        windows_out,
        sql_windows_out,
        peak_rss_bytes: peak_rss(),
    })
}

/// The demo's window as a partition task, with the partition key check in front of it when
/// `placement` is given.
fn window_task(
    schema: &weir_operators::SchemaConfig,
    placement: Option<std::sync::Arc<KeyPlacement>>,
) -> Result<PartitionTask> {
    let decoder = JsonDecoder::new(schema);
    let mut chain: Vec<Box<dyn weir_runtime::Operator>> = Vec::new();
    if let Some(p) = placement {
        let check = KeyCheckOperator::new(p, "bench".into(), 0, decoder.schema())
            .map_err(WeirError::Config)?;
        chain.push(Box::new(check));
    }
    let window = TumbleWindow::new(
        "window",
        &crate::demo_window(60_000),
        decoder.schema(),
        &schema.event_time,
    )
    .map_err(WeirError::Config)?;
    chain.push(Box::new(window));
    Ok(PartitionTask::new(
        "bench".into(),
        "bench".into(),
        0,
        Box::new(decoder),
        chain,
    ))
}

/// The input, batch by batch (encoded outside the timed region), through `f`, which returns
/// the time it spent: the total of those times and the payload bytes.
fn feed(
    generator: &EventGenerator,
    opts: &BenchOptions,
    f: &mut dyn FnMut(weir_runtime::RawBatch) -> Result<Duration>,
) -> Result<(Duration, u64)> {
    let mut timed = Duration::ZERO;
    let mut bytes = 0u64;
    let mut offset = 0i64;
    while (offset as u64) < opts.events {
        let n = opts.batch_rows.min((opts.events - offset as u64) as usize);
        let msgs = generator.messages(0, offset, n);
        bytes += msgs
            .iter()
            .map(|m| m.payload.as_ref().map_or(0, |p| p.len() as u64))
            .sum::<u64>();
        offset += n as i64;
        timed += f(weir_runtime::RawBatch::new("bench".into(), 0, msgs))?;
    }
    Ok((timed, bytes))
}

/// Every batch through `task` and its output into a null sink, then the end of input: the
/// time spent and the rows out.
fn run_task(
    task: &mut PartitionTask,
    generator: &EventGenerator,
    opts: &BenchOptions,
) -> Result<(Duration, u64)> {
    let mut sink = NullSink::default();
    let mut write = |out: weir_runtime::TaskOutput| -> Result<()> {
        for b in &out.batches {
            sink.write(&weir_runtime::Lane::new("bench", 0), b)?;
        }
        Ok(())
    };
    let (mut timed, _) = feed(generator, opts, &mut |raw| {
        let t = Instant::now();
        let out = task.process(&raw)?;
        write(out)?;
        Ok(t.elapsed())
    })?;
    let t = Instant::now();
    let out = task.end_of_input()?;
    write(out)?;
    timed += t.elapsed();
    Ok((timed, sink.rows))
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
