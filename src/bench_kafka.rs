//! `weir bench --kafka`: the same topic read three times in one run, so the figures are
//! comparable: by two raw rdkafka consumers that only count messages and bytes (one poll loop
//! over every partition; one thread per partition on its split partition queue, the way
//! weir's readers fetch), and by weir's whole path (Kafka source → decode → the demo's window
//! → null sink, on the executor). The ratio is taken against the faster raw consumer. Both
//! raw passes and weir assign the partitions explicitly, so no group join is timed. weir's
//! path then runs three times more, so that metrics off and on are compared in the order
//! off, on, on, off: on means the metrics endpoint served and scraped every
//! [`crate::bench::SCRAPE_EVERY`] (the executor counts into its atomics either way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_connectors::{
    AssignmentMode, EventGenerator, GeneratorConfig, KafkaSource, KafkaSourceConfig,
};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{NullSink, Shutdown};

use crate::pipeline::Pipeline;

#[derive(Debug, Clone)]
pub struct KafkaBenchOptions {
    pub brokers: String,
    pub events: u64,
    pub sensors: u32,
    pub partitions: i32,
    /// Give up on a pass after this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KafkaBenchReport {
    pub topic: String,
    pub events: u64,
    pub produce_secs: f64,
    /// One `poll` loop over every partition.
    pub raw_secs: f64,
    pub raw_bytes: u64,
    /// One thread per partition, each polling its split partition queue.
    pub raw_split_secs: f64,
    pub weir_secs: f64,
    pub windows_out: u64,
    /// weir's path with metrics off (the first is `weir_secs`) and on.
    pub metrics: crate::bench::MetricsComparison,
}

impl KafkaBenchReport {
    pub fn raw_eps(&self) -> f64 {
        self.events as f64 / self.raw_secs.max(1e-9)
    }
    pub fn raw_split_eps(&self) -> f64 {
        self.events as f64 / self.raw_split_secs.max(1e-9)
    }
    /// The faster of the two raw consumers: the figure weir is held to.
    pub fn best_raw_eps(&self) -> f64 {
        self.raw_eps().max(self.raw_split_eps())
    }
    pub fn weir_eps(&self) -> f64 {
        self.events as f64 / self.weir_secs.max(1e-9)
    }
}

fn kafka_err(what: &str, e: impl std::fmt::Display) -> WeirError {
    WeirError::source("bench", format!("{what}: {e}"))
}

pub fn run(opts: &KafkaBenchOptions) -> Result<KafkaBenchReport> {
    let topic = format!(
        "weir-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .create()
        .map_err(|e| kafka_err("admin client", e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| kafka_err("runtime", e))?;
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(
                &topic,
                opts.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .map_err(|e| kafka_err(&format!("create topic on {}", opts.brokers), e))?;
    for r in created {
        r.map_err(|(t, e)| kafka_err(&format!("create topic {t}"), e))?;
    }

    // Produce: generator partition p → topic partition p.
    let generator = EventGenerator::new(&GeneratorConfig {
        sensors: opts.sensors,
        partitions: opts.partitions as u32,
        events: Some(opts.events),
        disorder_ms: 5_000,
        ..Default::default()
    });
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| kafka_err("producer", e))?;
    let t = Instant::now();
    for p in 0..opts.partitions {
        let n = generator.events_in_partition(p).unwrap_or(0) as usize;
        let mut from = 0;
        while from < n {
            let chunk = generator.messages(p, from as i64, (n - from).min(10_000));
            from += chunk.len();
            for m in &chunk {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).partition(p);
                if let Some(k) = &m.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &m.payload {
                    record = record.payload(v.as_slice());
                }
                while let Err((e, r)) = producer.send(record) {
                    if t.elapsed() > opts.timeout {
                        return Err(kafka_err("produce", e));
                    }
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
            }
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(opts.timeout)
        .map_err(|e| kafka_err("flush producer", e))?;
    let produce_secs = t.elapsed().as_secs_f64();

    // Pass 1: raw consumer, counting messages and bytes.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", format!("{topic}-raw"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| kafka_err("consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..opts.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .map_err(|e| kafka_err("assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_err("assign", e))?;
    let t = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    while count < opts.events {
        if t.elapsed() > opts.timeout {
            return Err(kafka_err(
                "raw consumer",
                format!("read {count} of {} in time", opts.events),
            ));
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.map_err(|e| kafka_err("raw consumer", e))?;
            count += 1;
            bytes += m.payload_len() as u64;
        }
    }
    let raw_secs = t.elapsed().as_secs_f64();
    drop(consumer);

    let raw_split_secs = raw_split_pass(&topic, opts)?;

    // Pass 3: weir's whole path on the executor; then on, on, off again for the metrics.
    let (weir_secs, windows_out, _) = weir_pass(&topic, opts, 0, false)?;
    let mut metrics = crate::bench::MetricsComparison {
        off_secs: [weir_secs, 0.0],
        ..Default::default()
    };
    for (i, on) in metrics.on_secs.iter_mut().enumerate() {
        let (secs, windows, scrapes) = weir_pass(&topic, opts, 1 + i, true)?;
        if windows != windows_out {
            return Err(WeirError::Internal(format!(
                "bench: {windows} windows with metrics on, {windows_out} without"
            )));
        }
        *on = secs;
        metrics.scrapes += scrapes;
    }
    metrics.off_secs[1] = weir_pass(&topic, opts, 3, false)?.0;
    Ok(KafkaBenchReport {
        topic,
        events: opts.events,
        produce_secs,
        raw_secs,
        raw_bytes: bytes,
        raw_split_secs,
        weir_secs,
        windows_out,
        metrics,
    })
}

/// weir's whole path over the topic (run number `run`, with a checkpoint directory of its
/// own), with the metrics endpoint served and scraped when `with_metrics`: the seconds until
/// every event was consumed, the windows out and the scrapes.
fn weir_pass(
    topic: &str,
    opts: &KafkaBenchOptions,
    run: usize,
    with_metrics: bool,
) -> Result<(f64, u64, u64)> {
    let dir = std::env::temp_dir().join(format!("{topic}-{run}"));
    let sink = NullSink::default();
    let executor = Pipeline::new("bench-kafka")
        .source(KafkaSource::new(KafkaSourceConfig {
            assignment: AssignmentMode::Manual,
            ..KafkaSourceConfig::new(
                opts.brokers.clone(),
                &[topic],
                format!("{topic}-weir-{run}"),
            )
        })?)
        .schema(crate::iot_schema())
        .tumble(crate::demo_window(60_000))
        .sink(sink)
        .dlq(weir_connectors::JsonlDlq::new(
            &weir_connectors::JsonlDlqConfig {
                path: dir.join("dlq"),
            },
        )?)
        .checkpoint_dir(dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_secs(5))
        .build()?;
    let metrics = executor.metrics();
    let served = match with_metrics {
        true => {
            let server = crate::metrics_http::MetricsServer::start(
                ([127, 0, 0, 1], 0).into(),
                metrics.clone(),
            )
            .map_err(|e| WeirError::Internal(format!("bench: metrics endpoint: {e}")))?;
            let scraper = crate::bench::Scraper::start(server.addr(), crate::bench::SCRAPE_EVERY);
            Some((server, scraper))
        }
        false => None,
    };
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let t = Instant::now();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let mut weir_secs = 0.0;
    while metrics.snapshot().consumed < opts.events {
        if t.elapsed() > opts.timeout || handle.is_finished() {
            stop.trigger();
            let _ = handle.join();
            return Err(kafka_err(
                "weir",
                format!(
                    "processed {:?} of {} in time",
                    metrics.snapshot().consumed,
                    opts.events
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
        weir_secs = t.elapsed().as_secs_f64();
    }
    let scrapes = match served {
        Some((_server, scraper)) => scraper.stop()?,
        None => 0,
    };
    stop.trigger();
    let summary = handle
        .join()
        .map_err(|_| WeirError::Internal("bench executor panicked".into()))??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((weir_secs, summary.counters.rows_out, scrapes))
}

/// The raw consumer with one thread per partition, each polling the partition's own queue
/// (`split_partition_queue`, as weir's readers do) and counting: seconds to read everything.
fn raw_split_pass(topic: &str, opts: &KafkaBenchOptions) -> Result<f64> {
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("group.id", format!("{topic}-raw-split"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| kafka_err("consumer", e))?,
    );
    let mut queues = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..opts.partitions {
        queues.push(
            consumer
                .split_partition_queue(topic, p)
                .ok_or_else(|| kafka_err("raw consumer", format!("no queue for partition {p}")))?,
        );
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| kafka_err("assign", e))?;
    }
    let count = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    consumer.assign(&tpl).map_err(|e| kafka_err("assign", e))?;
    let (events, timeout) = (opts.events, opts.timeout);
    let threads: Vec<_> = queues
        .into_iter()
        .map(|queue| {
            let count = count.clone();
            std::thread::spawn(move || -> std::result::Result<u64, String> {
                let mut bytes = 0u64;
                while count.load(Ordering::Relaxed) < events {
                    if t.elapsed() > timeout {
                        return Err(format!(
                            "read {} of {events} in time",
                            count.load(Ordering::Relaxed)
                        ));
                    }
                    if let Some(m) = queue.poll(Duration::from_millis(20)) {
                        let m = m.map_err(|e| e.to_string())?;
                        bytes += m.payload_len() as u64;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(bytes)
            })
        })
        .collect();
    // The main queue carries only events (logs, errors) here.
    while count.load(Ordering::Relaxed) < events && t.elapsed() <= timeout {
        consumer.poll(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    for th in threads {
        th.join()
            .map_err(|_| WeirError::Internal("raw consumer thread panicked".into()))?
            .map_err(|e| kafka_err("raw split consumer", e))?;
    }
    Ok(secs)
}
