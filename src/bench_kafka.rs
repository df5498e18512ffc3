//! `weir bench --kafka`: the same topic read twice in one run, by a raw rdkafka consumer that
//! only counts messages and bytes, and by weir's whole path (Kafka source → decode → the
//! demo's window → null sink, on the executor), so the two figures are comparable.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_connectors::{EventGenerator, GeneratorConfig, KafkaSource, KafkaSourceConfig};
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
    pub raw_secs: f64,
    pub raw_bytes: u64,
    pub weir_secs: f64,
    pub windows_out: u64,
}

impl KafkaBenchReport {
    pub fn raw_eps(&self) -> f64 {
        self.events as f64 / self.raw_secs.max(1e-9)
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
        max_out_of_orderness_ms: 5_000,
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

    // Pass 2: weir's whole path on the executor.
    let dir = std::env::temp_dir().join(&topic);
    let sink = NullSink::default();
    let executor = Pipeline::new("bench-kafka")
        .source(KafkaSource::new(KafkaSourceConfig::new(
            opts.brokers.clone(),
            &[&topic],
            format!("{topic}-weir"),
        ))?)
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
    stop.trigger();
    let summary = handle
        .join()
        .map_err(|_| WeirError::Internal("bench executor panicked".into()))??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(KafkaBenchReport {
        topic,
        events: opts.events,
        produce_secs,
        raw_secs,
        raw_bytes: bytes,
        weir_secs,
        windows_out: summary.counters.rows_out,
    })
}
