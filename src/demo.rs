//! `weir demo`: generator → 1-minute tumbling avg/max/count of temperature per sensor →
//! SQLite, with a live progress line and a closing summary. No external service.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_connectors::{
    GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig, SqliteSink, SqliteSinkConfig,
};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{Metrics, RunSummary, Shutdown};

use crate::pipeline::Pipeline;

/// Knobs of the demo (the CLI's flags).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: u64,
    pub sensors: u32,
    pub partitions: u32,
    pub dir: PathBuf,
    pub poison_ratio: f64,
    pub late_ratio: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            events: 2_000_000,
            sensors: 2_000,
            partitions: 4,
            dir: PathBuf::from("weir-demo"),
            poison_ratio: 0.0005,
            late_ratio: 0.0005,
        }
    }
}

/// Run the demo; prints progress to stderr when it is a terminal, and returns the summary.
pub fn run(opts: &DemoOptions, shutdown: Shutdown) -> Result<RunSummary> {
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| WeirError::io(&opts.dir, e))?;
    }
    let db = opts.dir.join("windows.sqlite");
    let generator = GeneratorConfig {
        sensors: opts.sensors,
        partitions: opts.partitions,
        events: Some(opts.events),
        disorder_ms: 5_000,
        poison_ratio: opts.poison_ratio,
        late_ratio: opts.late_ratio,
        ..Default::default()
    };
    let executor = Pipeline::new("demo")
        .source(GeneratorSource::new(generator)?)
        .schema(crate::iot_schema())
        .tumble(crate::demo_window(60_000))
        .sink(SqliteSink::new(
            "sqlite",
            &SqliteSinkConfig {
                path: db.clone(),
                table: "sensor_windows".into(),
                key_columns: vec!["sensor_id".into(), "window_start".into()],
                create_table: true,
            },
        )?)
        .dlq(JsonlDlq::new(&JsonlDlqConfig {
            path: opts.dir.join("dlq"),
        })?)
        .checkpoint_dir(opts.dir.join("checkpoints"))
        .build()?;
    let metrics = executor.metrics();
    let done = Arc::new(AtomicBool::new(false));
    let progress = std::io::stderr().is_terminal().then(|| {
        let (metrics, done) = (metrics.clone(), done.clone());
        let total = opts.events;
        std::thread::spawn(move || progress_line(&metrics, &done, total))
    });
    let summary = executor.run(shutdown);
    done.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let summary = summary?;
    print_summary(&summary, &db, &opts.dir);
    Ok(summary)
}

fn progress_line(metrics: &Metrics, done: &AtomicBool, total: u64) {
    let started = Instant::now();
    let mut err = std::io::stderr();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        let c = metrics.snapshot();
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            err,
            "\r\x1b[2K{:>5.1}%  events {}  windows {}  dlq {}  late {}  {:.0} events/s",
            100.0 * c.consumed as f64 / total.max(1) as f64,
            c.consumed,
            c.rows_out,
            c.dlq,
            c.late,
            c.consumed as f64 / secs
        );
        let _ = err.flush();
    }
    let _ = writeln!(err, "\r\x1b[2K");
}

fn print_summary(s: &RunSummary, db: &std::path::Path, dir: &std::path::Path) {
    let c = &s.counters;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!("weir demo: done in {:.2}s", secs);
    println!("  events in     {:>12}", c.consumed);
    println!("  aggregated    {:>12}", c.aggregated);
    println!("  windows out   {:>12}", c.rows_out);
    println!(
        "  dead-lettered {:>12}  (poison and late events, in {})",
        c.dlq,
        dir.join("dlq").display()
    );
    println!("  late          {:>12}", c.late);
    println!("  events/s      {:>12.0}", c.consumed as f64 / secs);
    println!("  checkpoints   {:>12}", s.checkpoints);
    println!(
        "  accounting    consumed = aggregated + dlq + late_dropped + filtered + deduplicated: {}",
        if c.balanced() {
            "holds"
        } else {
            "DOES NOT HOLD"
        }
    );
    println!("  results       {} (table sensor_windows)", db.display());
    if let Ok(conn) = rusqlite::Connection::open(db) {
        let q = "SELECT sensor_id, window_start, avg_temp, max_temp, readings FROM sensor_windows \
                 ORDER BY max_temp DESC, sensor_id LIMIT 3";
        if let Ok(mut stmt) = conn.prepare(q) {
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "    {:<12} window_start={} avg={:.2} max={:.2} readings={}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, i64>(4)?
                ))
            });
            if let Ok(rows) = rows {
                println!("  hottest windows:");
                for r in rows.flatten() {
                    println!("{r}");
                }
            }
        }
    }
}
