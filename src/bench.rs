//! `weir bench`: pre-encoded JSON in memory → decode → the demo's window → null sink, on one
//! thread. From the same run and the same input it reports decode-only events/s, whole-path
//! events/s with the window built by hand (a `TumbleWindow`), the same with the run-time
//! `partition_key` check in front of it, and with the window written as SQL ([`DEMO_SQL`],
//! planned by `Pipeline::sql`), and the process's peak memory. The metrics passes run the
//! whole path again with metrics on (every batch counted into [`Metrics`] as the executor
//! counts it, the endpoint served and scraped every [`SCRAPE_EVERY`]) beside it with metrics
//! off, in the order off, on, on, off, so a drift of the machine's speed cancels out.
//!
//! Input is encoded batch by batch by the deterministic generator, outside the timed region
//! (so memory stays bounded for any event count); only decode, operators and the sink are timed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_connectors::{EventGenerator, GeneratorConfig};
use weir_operators::{JsonDecoder, KeyCheckOperator, KeyPlacement, TumbleWindow};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::metrics::{now_ms, PartitionMetrics, RunState};
use weir_runtime::{Decoder, Metrics, NullSink, PartitionTask, SinkWriter, TaskOutput};

use crate::metrics_http::MetricsServer;

/// How often the metrics passes scrape `/metrics`: 150 times as often as a Prometheus server
/// does by default (every 15 s), so the cost of serving shows.
pub const SCRAPE_EVERY: Duration = Duration::from_millis(100);

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
    /// The metrics comparison: the whole path with metrics off and on, two passes each.
    pub metrics: MetricsComparison,
    pub peak_rss_bytes: Option<u64>,
}

/// The same path timed with metrics off and on, in the order off, on, on, off.
#[derive(Debug, Clone, Default)]
pub struct MetricsComparison {
    /// Seconds of the two passes with metrics off.
    pub off_secs: [f64; 2],
    /// Seconds of the two passes with metrics on.
    pub on_secs: [f64; 2],
    /// Successful scrapes of `/metrics` during the passes with metrics on.
    pub scrapes: u64,
}

impl MetricsComparison {
    /// Events/s with metrics off (both passes' time together).
    pub fn off_eps(&self, events: u64) -> f64 {
        2.0 * events as f64 / (self.off_secs[0] + self.off_secs[1]).max(1e-9)
    }

    /// Events/s with metrics on.
    pub fn on_eps(&self, events: u64) -> f64 {
        2.0 * events as f64 / (self.on_secs[0] + self.on_secs[1]).max(1e-9)
    }

    /// Metrics on as a percentage of metrics off (the bound: at least 97 %).
    pub fn on_percent(&self, events: u64) -> f64 {
        100.0 * self.on_eps(events) / self.off_eps(events).max(1e-9)
    }
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
    let (whole, windows_out) = run_task(&mut task, &generator, opts, None)?;

    // Passes 2a-2c: the same with metrics on, twice, then off again.
    let mut metrics = MetricsComparison {
        off_secs: [whole.as_secs_f64(), 0.0],
        ..Default::default()
    };
    for on in &mut metrics.on_secs {
        let (secs, windows, scrapes) = metrics_pass(&schema, &generator, opts)?;
        if windows != windows_out {
            return Err(WeirError::Internal(format!(
                "bench: {windows} windows with metrics on, {windows_out} without"
            )));
        }
        *on = secs.as_secs_f64();
        metrics.scrapes += scrapes;
    }
    let (again, _) = run_task(&mut window_task(&schema, None)?, &generator, opts, None)?;
    metrics.off_secs[1] = again.as_secs_f64();

    // Pass 3: the whole path with the partition key check in front of the window (right
    // after pass 2, so the two are measured back to back).
    let placement = std::sync::Arc::new(KeyPlacement::new(
        schema.partition_key.as_deref().unwrap_or("sensor_id"),
        weir_operators::PartitionKeyCheck::Warn,
    ));
    let mut checked = window_task(&schema, Some(placement))?;
    let (key_check, _) = run_task(&mut checked, &generator, opts, None)?;

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
    let (sql, sql_windows_out) = run_task(&mut sql_task, &generator, opts, None)?;

    Ok(BenchReport {
        events: opts.events,
        avg_event_bytes: bytes as f64 / opts.events as f64,
        decode_secs: decode.as_secs_f64(),
        whole_secs: whole.as_secs_f64(),
        sql_secs: sql.as_secs_f64(),
        key_check_secs: key_check.as_secs_f64(),
        windows_out,
        sql_windows_out,
        metrics,
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
/// time spent and the rows out. With `counted`, each batch is also counted as the executor
/// counts it (bytes read, the partition's offset and watermark, batch time, rows written,
/// end-to-end latency, the accounting counters), inside the timed region.
fn run_task(
    task: &mut PartitionTask,
    generator: &EventGenerator,
    opts: &BenchOptions,
    counted: Option<(&Metrics, &PartitionMetrics)>,
) -> Result<(Duration, u64)> {
    let mut sink = NullSink::default();
    let mut write = |out: TaskOutput, took: Duration, newest: Option<i64>| -> Result<()> {
        for b in &out.batches {
            sink.write(&weir_runtime::Lane::new("bench", 0), b)?;
        }
        if let Some((metrics, partition)) = counted {
            metrics.batch_processed(took);
            if let Some(w) = out.event_watermark.or(out.watermark) {
                partition.set_watermark(w);
            }
            let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
            metrics.sink_wrote(0, rows as u64);
            if let (Some(t), true) = (newest, rows > 0) {
                let latency = now_ms().saturating_sub(t).max(0) as u64;
                metrics.written_after(Duration::from_millis(latency));
            }
            metrics.add(&out.delta);
        }
        Ok(())
    };
    let (mut timed, _) = feed(generator, opts, &mut |raw| {
        let t = Instant::now();
        let mut newest = None;
        if let Some((metrics, partition)) = counted {
            newest = raw.messages.iter().filter_map(|m| m.timestamp_ms).max();
            let bytes: usize = raw
                .messages
                .iter()
                .map(|m| {
                    m.payload.as_ref().map_or(0, Vec::len) + m.key.as_ref().map_or(0, Vec::len)
                })
                .sum();
            metrics.read_bytes(bytes as u64);
            partition.read_to(raw.messages.last().map(|m| m.offset + 1), None);
        }
        let processing = Instant::now();
        let out = task.process(&raw)?;
        write(out, processing.elapsed(), newest)?;
        Ok(t.elapsed())
    })?;
    let t = Instant::now();
    let out = task.end_of_input()?;
    write(out, t.elapsed(), None)?;
    timed += t.elapsed();
    Ok((timed, sink.rows))
}

/// The whole path with metrics on: every batch counted (see [`run_task`]), the endpoint
/// served on a free loopback port and scraped every [`SCRAPE_EVERY`]. The time, the rows
/// out and the scrapes that succeeded.
fn metrics_pass(
    schema: &weir_operators::SchemaConfig,
    generator: &EventGenerator,
    opts: &BenchOptions,
) -> Result<(Duration, u64, u64)> {
    let metrics = Arc::new(Metrics::default());
    metrics.set_sinks(["null".to_string()]);
    let partition = metrics.track_partition(&"bench".into(), 0, 0);
    metrics.set_state(RunState::Running);
    let server = MetricsServer::start(([127, 0, 0, 1], 0).into(), metrics.clone())
        .map_err(|e| WeirError::Internal(format!("bench: metrics endpoint: {e}")))?;
    let scraper = Scraper::start(server.addr(), SCRAPE_EVERY);
    let mut task = window_task(schema, None)?;
    let ran = run_task(&mut task, generator, opts, Some((&metrics, &partition)));
    let scrapes = scraper.stop()?;
    let (secs, windows) = ran?;
    Ok((secs, windows, scrapes))
}

/// A client that GETs `/metrics` every `every` on a thread of its own until stopped, as a
/// Prometheus server would (one connection per scrape). Every answer must be a 200 carrying
/// the events counter.
pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::result::Result<u64, String>>,
}

impl Scraper {
    pub(crate) fn start(addr: SocketAddr, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !stopping.load(Ordering::Relaxed) {
                scrape(addr)?;
                scrapes += 1;
                std::thread::sleep(every);
            }
            Ok(scrapes)
        });
        Self { stop, thread }
    }

    /// Stop scraping: the scrapes made, or the first that failed.
    pub(crate) fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let scrapes = self
            .thread
            .join()
            .map_err(|_| WeirError::Internal("bench: the scraper panicked".into()))?
            .map_err(|e| WeirError::Internal(format!("bench: scraping /metrics: {e}")))?;
        if scrapes == 0 {
            return Err(WeirError::Internal(
                "bench: /metrics was never scraped".into(),
            ));
        }
        Ok(scrapes)
    }
}

fn scrape(addr: SocketAddr) -> std::result::Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if !answer.starts_with("HTTP/1.1 200") {
        let status = answer.lines().next().unwrap_or("no answer");
        return Err(format!("{addr} answered {status}"));
    }
    if !answer.contains("\nweir_events_in_total ") {
        return Err(format!("{addr} answered without weir_events_in_total"));
    }
    Ok(())
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
