//! A deterministic generator of IoT sensor readings.
//!
//! Every message is a pure function of `(seed, partition, offset)`: a reader opened at offset
//! `N` produces exactly what an uninterrupted reader produces from `N` on, which is what
//! restart-from-checkpoint tests rely on. Sensors (the message keys) are spread over
//! partitions by [`partition_for_key`], so one sensor always lives in one partition and a
//! JSONL file of these events keyed by `sensor_id` partitions the same way.
//!
//! A valid event is the JSON object
//! `{"event_id":"<partition>-<offset>","sensor_id":"sensor-<n>","temperature":<f64>,"humidity":<f64>,"event_time":<epoch millis>}`.
//! Event times advance by `event_interval_ms` per offset and go back by at most
//! `disorder_ms`, except for the `late_ratio` share of late events, which go back
//! by more than twice the bound plus a minute. A `poison_ratio` share of messages is poison
//! (see [`PoisonKind`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{
    ErrorKind, PartitionReader, Partitioning, RawBatch, RawMessage, ReadResult, Source,
};

use crate::{config_key, partition_for_key};

/// The topic name of generated messages.
pub const GENERATOR_TOPIC: &str = "generator";

/// How far back a late event goes beyond twice the bound: at least this, plus up to as much
/// again.
const LATE_EXTRA_MS: u64 = 60_000;

/// Configuration of the `generator` source.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Seed of every pseudo-random choice: the same seed gives the same messages.
    pub seed: u64,
    /// Number of distinct sensors (message keys), named `sensor-0` .. `sensor-<n-1>`.
    pub sensors: u32,
    /// Number of partitions; each sensor lives in exactly one.
    pub partitions: u32,
    /// Total number of messages over all partitions (poison included); absent: unbounded.
    pub events: Option<u64>,
    /// Rate limit for the whole source, split evenly across partitions; absent: as fast as
    /// possible.
    pub events_per_sec: Option<u64>,
    /// How far, in milliseconds, the generator lets an event's time go back behind later
    /// events of its partition: the disorder of the generated data (events that are not late
    /// stay within it). It does not set any watermark: that is `[watermark]
    /// max_out_of_orderness_ms` (for `sql`) or a window operator's own
    /// `max_out_of_orderness_ms`, which should be at least this for no event to be late.
    pub disorder_ms: u64,
    /// The old name of `disorder_ms`, refused by [`GeneratorConfig::validate`] with a message
    /// pointing to the new name (it looked like a watermark setting and was not one).
    #[doc(hidden)]
    #[serde(rename = "max_out_of_orderness_ms")]
    pub renamed_max_out_of_orderness_ms: Option<u64>,
    /// Fraction (0 to 1) of events whose time goes back further than the bound (late events).
    pub late_ratio: f64,
    /// Fraction (0 to 1) of messages that are poison (invalid JSON, missing or wrongly typed
    /// field, null or empty payload).
    pub poison_ratio: f64,
    /// Event time of offset 0, in epoch milliseconds.
    pub start_time_ms: i64,
    /// Event-time advance per message of one partition, in milliseconds.
    pub event_interval_ms: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            sensors: 1000,
            partitions: 4,
            events: None,
            events_per_sec: None,
            disorder_ms: 0,
            renamed_max_out_of_orderness_ms: None,
            late_ratio: 0.0,
            poison_ratio: 0.0,
            start_time_ms: 1_700_000_000_000,
            event_interval_ms: 10,
        }
    }
}

impl GeneratorConfig {
    /// Each sensor lives in one partition: the events are partitioned by `sensor_id`.
    pub fn partitioning(&self) -> Partitioning {
        if self.partitions <= 1 {
            Partitioning::Single
        } else {
            Partitioning::ByField("sensor_id".into())
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.renamed_max_out_of_orderness_ms.is_some() {
            errors.push(format!(
                "{}: renamed to `{}`: it is the disorder the generator puts into event times and \
                 never set the watermark (that is `[watermark] max_out_of_orderness_ms` for a \
                 `sql` query, or a window operator's own `max_out_of_orderness_ms`)",
                key("max_out_of_orderness_ms"),
                key("disorder_ms")
            ));
        }
        if self.partitions == 0 {
            errors.push(format!("{}: must be at least 1, got 0", key("partitions")));
        } else if i32::try_from(self.partitions).is_err() {
            errors.push(format!(
                "{}: must be at most {}, got {}",
                key("partitions"),
                i32::MAX,
                self.partitions
            ));
        }
        if self.sensors == 0 {
            errors.push(format!("{}: must be at least 1, got 0", key("sensors")));
        }
        if self.events_per_sec == Some(0) {
            errors.push(format!(
                "{}: must be at least 1 (leave it out for no limit), got 0",
                key("events_per_sec")
            ));
        }
        for (name, ratio) in [
            ("late_ratio", self.late_ratio),
            ("poison_ratio", self.poison_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                errors.push(format!(
                    "{}: must be between 0 and 1, got {ratio}",
                    key(name)
                ));
            }
        }
        // Keep every event-time computation far from i64 overflow.
        const MAX_MS: u64 = 1 << 52;
        for (name, ms) in [
            ("disorder_ms", self.disorder_ms),
            ("event_interval_ms", self.event_interval_ms),
        ] {
            if ms > MAX_MS {
                errors.push(format!("{}: must be at most {MAX_MS}, got {ms}", key(name)));
            }
        }
        errors
    }
}

/// What kind of poison a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonKind {
    /// A truncated JSON object.
    InvalidJson,
    /// A complete object without `event_time`.
    MissingField,
    /// `temperature` is the string `"hot"`.
    WrongType,
    /// No payload at all (a tombstone).
    NullPayload,
    /// An empty payload.
    EmptyPayload,
}

impl PoisonKind {
    pub const ALL: [PoisonKind; 5] = [
        PoisonKind::InvalidJson,
        PoisonKind::MissingField,
        PoisonKind::WrongType,
        PoisonKind::NullPayload,
        PoisonKind::EmptyPayload,
    ];

    /// The dead-letter kind a decoder should give this message.
    pub fn error_kind(self) -> ErrorKind {
        match self {
            PoisonKind::InvalidJson => ErrorKind::InvalidJson,
            PoisonKind::MissingField => ErrorKind::MissingField,
            PoisonKind::WrongType => ErrorKind::WrongType,
            PoisonKind::NullPayload => ErrorKind::NullPayload,
            PoisonKind::EmptyPayload => ErrorKind::EmptyMessage,
        }
    }
}

/// One generated message, before encoding: what tests compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedEvent {
    pub partition: i32,
    pub offset: i64,
    /// The `n` of `sensor-<n>`.
    pub sensor: u32,
    /// Temperature in hundredths of a degree, in `[-2000, 4500)`.
    pub temperature_centi: i32,
    /// Relative humidity in tenths of a percent, in `[0, 1000)`.
    pub humidity_deci: u32,
    pub event_time_ms: i64,
    /// The event time lies further back than `disorder_ms` allows.
    pub late: bool,
    /// `Some` when the message is poison (its other fields are then not in the payload, or
    /// not all of them).
    pub poison: Option<PoisonKind>,
}

impl GeneratedEvent {
    /// The temperature as the payload states it (equal to parsing the JSON number).
    pub fn temperature(&self) -> f64 {
        f64::from(self.temperature_centi) / 100.0
    }

    /// The humidity as the payload states it (equal to parsing the JSON number).
    pub fn humidity(&self) -> f64 {
        f64::from(self.humidity_deci) / 10.0
    }

    /// `sensor-<n>`: the `sensor_id` field and the message key.
    pub fn sensor_id(&self) -> String {
        format!("sensor-{}", self.sensor)
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to drive test data
/// (`weir generate` draws from it too). The field is the state, the seed to start from.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The generator of one message: seeded from the seed, the partition and the offset,
    /// each spread by an odd constant so that `(p, o)` and `(o, p)` differ.
    fn for_message(seed: u64, partition: i32, offset: i64) -> Self {
        let p = u64::from(partition as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let o = (offset as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        SplitMix64(seed ^ p ^ o)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// In `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The pure core of the generator: which sensors live where, and every message by position.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    config: GeneratorConfig,
    sensors_by_partition: Vec<Vec<u32>>,
}

impl EventGenerator {
    /// Precomputes the sensors of each partition. Never fails: a config that
    /// [`GeneratorConfig::validate`] refuses yields partitions without events.
    pub fn new(config: &GeneratorConfig) -> Self {
        let partitions = usize::try_from(config.partitions)
            .unwrap_or(0)
            .min(i32::MAX as usize);
        let mut sensors_by_partition = vec![Vec::new(); partitions];
        if partitions > 0 {
            let mut key = Vec::with_capacity(24);
            for n in 0..config.sensors {
                sensor_key(n, &mut key);
                let p = partition_for_key(&key, config.partitions) as usize;
                sensors_by_partition[p].push(n);
            }
        }
        Self {
            config: config.clone(),
            sensors_by_partition,
        }
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Number of partitions.
    pub fn partitions(&self) -> i32 {
        self.sensors_by_partition.len() as i32
    }

    /// The sensors (the `n` of `sensor-<n>`) that live in `partition`.
    pub fn sensors_of(&self, partition: i32) -> &[u32] {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.sensors_by_partition.get(p))
            .map_or(&[], Vec::as_slice)
    }

    /// The partition where `sensor-<n>` lives.
    pub fn partition_of_sensor(&self, sensor: u32) -> i32 {
        let mut key = Vec::with_capacity(24);
        sensor_key(sensor, &mut key);
        partition_for_key(&key, self.config.partitions)
    }

    /// How many messages `partition` holds: `None` when unbounded, `Some(0)` for a partition
    /// without sensors. Partition `p` gets `events / partitions`, plus one when
    /// `p < events % partitions`.
    pub fn events_in_partition(&self, partition: i32) -> Option<u64> {
        let n = self.sensors_by_partition.len() as u64;
        if self.sensors_of(partition).is_empty() {
            return Some(0);
        }
        let events = self.config.events?;
        let p = partition as u64;
        Some(events / n + u64::from(p < events % n))
    }

    /// The message at `(partition, offset)` before encoding; `None` when the partition has no
    /// sensors or the offset is negative. Does not look at the partition's share of
    /// `events`: see [`events_in_partition`](Self::events_in_partition).
    pub fn event(&self, partition: i32, offset: i64) -> Option<GeneratedEvent> {
        let sensors = self.sensors_of(partition);
        if sensors.is_empty() || offset < 0 {
            return None;
        }
        let c = &self.config;
        let mut rng = SplitMix64::for_message(c.seed, partition, offset);
        // A fixed number of draws, in a fixed order, whatever the branches.
        let sensor = sensors[rng.below(sensors.len() as u64) as usize];
        let temperature_centi = rng.below(6500) as i32 - 2000;
        let humidity_deci = rng.below(1000) as u32;
        let jitter = rng.below(c.disorder_ms.saturating_add(1));
        let late = rng.unit() < c.late_ratio;
        let late_extra = rng.below(LATE_EXTRA_MS + 1);
        let poisoned = rng.unit() < c.poison_ratio;
        let kind = PoisonKind::ALL[rng.below(PoisonKind::ALL.len() as u64) as usize];

        let base = base_time(c, offset);
        let back = if late {
            // Further back than the bound allows: 2x the bound plus at least a minute.
            c.disorder_ms
                .saturating_mul(2)
                .saturating_add(LATE_EXTRA_MS)
                .saturating_add(late_extra)
        } else {
            jitter
        };
        let event_time_ms = base.saturating_sub(i64::try_from(back).unwrap_or(i64::MAX));
        Some(GeneratedEvent {
            partition,
            offset,
            sensor,
            temperature_centi,
            humidity_deci,
            event_time_ms,
            late,
            poison: poisoned.then_some(kind),
        })
    }

    /// The message of `event`, its payload written straight into a buffer sized for it.
    pub fn encode(&self, event: &GeneratedEvent) -> RawMessage {
        let mut key = Vec::with_capacity(16);
        sensor_key(event.sensor, &mut key);
        let payload = match event.poison {
            Some(PoisonKind::NullPayload) => None,
            Some(PoisonKind::EmptyPayload) => Some(Vec::new()),
            Some(PoisonKind::InvalidJson) => {
                let mut out = Vec::with_capacity(64);
                out.extend_from_slice(b"{\"sensor_id\": \"");
                out.extend_from_slice(&key);
                out.extend_from_slice(b"\", \"temperature\": ");
                Some(out)
            }
            poison => {
                let mut out = Vec::with_capacity(160);
                out.extend_from_slice(b"{\"event_id\":\"");
                push_i64(&mut out, i64::from(event.partition));
                out.push(b'-');
                push_i64(&mut out, event.offset);
                out.extend_from_slice(b"\",\"sensor_id\":\"");
                out.extend_from_slice(&key);
                out.extend_from_slice(b"\",\"temperature\":");
                if poison == Some(PoisonKind::WrongType) {
                    out.extend_from_slice(b"\"hot\"");
                } else {
                    push_fixed(&mut out, i64::from(event.temperature_centi), 100);
                }
                out.extend_from_slice(b",\"humidity\":");
                push_fixed(&mut out, i64::from(event.humidity_deci), 10);
                if poison != Some(PoisonKind::MissingField) {
                    out.extend_from_slice(b",\"event_time\":");
                    push_i64(&mut out, event.event_time_ms);
                }
                out.push(b'}');
                Some(out)
            }
        };
        RawMessage {
            offset: event.offset,
            key: Some(key),
            payload,
            timestamp_ms: Some(base_time(&self.config, event.offset)),
            headers: Vec::new(),
        }
    }

    /// The encoded message at `(partition, offset)`; see [`event`](Self::event).
    pub fn message(&self, partition: i32, offset: i64) -> Option<RawMessage> {
        self.event(partition, offset).map(|e| self.encode(&e))
    }

    /// `count` consecutive messages of `partition` from offset `from`.
    pub fn messages(&self, partition: i32, from: i64, count: usize) -> Vec<RawMessage> {
        if self.sensors_of(partition).is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(count);
        for i in 0..count as i64 {
            out.extend(self.message(partition, from.saturating_add(i)));
        }
        out
    }
}

/// `count` encoded messages of `partition` from offset `from`, e.g. to benchmark decoding on
/// input held in memory. Ignores the partition's share of `events`; empty when the partition
/// has no sensors or does not exist.
pub fn encode_events(
    cfg: &GeneratorConfig,
    partition: i32,
    from: i64,
    count: usize,
) -> Vec<RawMessage> {
    EventGenerator::new(cfg).messages(partition, from, count)
}

/// Event time of `offset` before jitter: `start_time_ms + offset * event_interval_ms`.
fn base_time(c: &GeneratorConfig, offset: i64) -> i64 {
    let interval = i64::try_from(c.event_interval_ms).unwrap_or(i64::MAX);
    c.start_time_ms
        .saturating_add(offset.saturating_mul(interval))
}

fn sensor_key(n: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"sensor-");
    push_i64(out, i64::from(n));
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    let mut v = v.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `units / scale` as a decimal with one digit per power of ten of `scale` (10 or 100).
fn push_fixed(out: &mut Vec<u8>, units: i64, scale: i64) {
    if units < 0 {
        out.push(b'-');
    }
    let abs = units.unsigned_abs();
    let scale = scale.unsigned_abs();
    push_i64(out, (abs / scale) as i64);
    out.push(b'.');
    let frac = abs % scale;
    if scale == 100 && frac < 10 {
        out.push(b'0');
    }
    push_i64(out, frac as i64);
}

/// The `generator` source. See the module docs.
pub struct GeneratorSource {
    generator: Arc<EventGenerator>,
    topic: Arc<str>,
}

impl GeneratorSource {
    /// Fails with every validation error when the config is impossible.
    pub fn new(config: GeneratorConfig) -> Result<Self> {
        let errors = config.validate("source");
        if !errors.is_empty() {
            return Err(WeirError::source(GENERATOR_TOPIC, errors.join("; ")));
        }
        Ok(Self {
            generator: Arc::new(EventGenerator::new(&config)),
            topic: Arc::from(GENERATOR_TOPIC),
        })
    }

    /// The pure generator behind this source (to compute expected results in tests).
    pub fn generator(&self) -> &Arc<EventGenerator> {
        &self.generator
    }
}

impl Source for GeneratorSource {
    fn name(&self) -> &str {
        GENERATOR_TOPIC
    }

    fn partitioning(&self) -> Partitioning {
        self.generator.config().partitioning()
    }

    fn partitions(&mut self) -> Result<Vec<(Arc<str>, i32)>> {
        Ok((0..self.generator.partitions())
            .map(|p| (self.topic.clone(), p))
            .collect())
    }

    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        if partition < 0 || partition >= self.generator.partitions() {
            return Err(WeirError::source(
                GENERATOR_TOPIC,
                format!(
                    "no partition {partition}: the generator has partitions 0..{}",
                    self.generator.partitions()
                ),
            ));
        }
        if next_offset < 0 {
            return Err(WeirError::source(
                GENERATOR_TOPIC,
                format!("partition {partition}: cannot start at negative offset {next_offset}"),
            ));
        }
        let c = self.generator.config();
        let rate = c
            .events_per_sec
            .map(|eps| eps as f64 / f64::from(c.partitions.max(1)));
        Ok(Box::new(GeneratorReader {
            generator: self.generator.clone(),
            topic: topic.clone(),
            partition,
            next: next_offset,
            end: self
                .generator
                .events_in_partition(partition)
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            rate,
            started: Instant::now(),
            start_offset: next_offset,
        }))
    }
}

struct GeneratorReader {
    generator: Arc<EventGenerator>,
    topic: Arc<str>,
    partition: i32,
    next: i64,
    /// One past the last offset, when bounded.
    end: Option<i64>,
    /// Events per second of this partition.
    rate: Option<f64>,
    started: Instant,
    start_offset: i64,
}

impl GeneratorReader {
    /// How many events the rate allows now beyond those already produced.
    fn due(&self, rate: f64, now: Instant) -> u64 {
        let allowed = (rate * now.duration_since(self.started).as_secs_f64()).floor() as i64;
        (allowed - (self.next - self.start_offset)).max(0) as u64
    }

    /// When `count` more events will be due.
    fn due_at(&self, rate: f64, count: u64) -> Option<Instant> {
        let total = (self.next - self.start_offset) as f64 + count as f64;
        Duration::try_from_secs_f64(total / rate)
            .ok()
            .and_then(|d| self.started.checked_add(d))
    }
}

impl PartitionReader for GeneratorReader {
    fn end_offset(&self) -> Option<i64> {
        self.end
    }

    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult> {
        let remaining = match self.end {
            Some(end) if self.next >= end => return Ok(ReadResult::End),
            Some(end) => (end - self.next) as u64,
            None if self.generator.sensors_of(self.partition).is_empty() => {
                std::thread::sleep(linger);
                return Ok(ReadResult::Idle);
            }
            None => u64::MAX,
        };
        let want = (max_rows.max(1) as u64).min(remaining);
        let n = match self.rate {
            None => want,
            Some(rate) => {
                let deadline = Instant::now() + linger;
                loop {
                    let now = Instant::now();
                    let due = self.due(rate, now);
                    if due >= want || now >= deadline {
                        break due.min(want);
                    }
                    let wake = self
                        .due_at(rate, want)
                        .map_or(deadline, |t| t.min(deadline));
                    std::thread::sleep(wake.saturating_duration_since(now));
                }
            }
        };
        if n == 0 {
            return Ok(ReadResult::Idle);
        }
        let messages = self
            .generator
            .messages(self.partition, self.next, n as usize);
        self.next += n as i64;
        Ok(ReadResult::Batch(RawBatch::new(
            self.topic.clone(),
            self.partition,
            messages,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn config() -> GeneratorConfig {
        GeneratorConfig {
            sensors: 50,
            partitions: 3,
            events: Some(3001),
            disorder_ms: 500,
            late_ratio: 0.05,
            poison_ratio: 0.1,
            ..Default::default()
        }
    }

    fn read_all(reader: &mut dyn PartitionReader, max_rows: usize) -> Vec<RawMessage> {
        let mut out = Vec::new();
        loop {
            match reader.read(max_rows, Duration::ZERO).unwrap() {
                ReadResult::Batch(b) => out.extend(b.messages),
                ReadResult::Idle => panic!("an unlimited bounded generator is never idle"),
                ReadResult::End => return out,
            }
        }
    }

    fn open(source: &mut GeneratorSource, partition: i32, from: i64) -> Box<dyn PartitionReader> {
        source
            .open(&Arc::from(GENERATOR_TOPIC), partition, from)
            .unwrap()
    }

    #[test]
    fn a_reader_opened_at_offset_n_yields_the_tail_of_a_reader_from_zero() {
        let mut source = GeneratorSource::new(config()).unwrap();
        for p in 0..3 {
            let all = read_all(open(&mut source, p, 0).as_mut(), 97);
            assert!(!all.is_empty());
            for (i, m) in all.iter().enumerate() {
                assert_eq!(m.offset, i as i64, "offsets are contiguous from 0");
            }
            for n in [1usize, 333, all.len() - 1, all.len()] {
                let tail = read_all(open(&mut source, p, n as i64).as_mut(), 41);
                assert_eq!(tail, all[n..].to_vec(), "partition {p} from {n}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_messages_and_another_seed_others() {
        let a = encode_events(&config(), 1, 0, 200);
        assert_eq!(a, encode_events(&config(), 1, 0, 200));
        let other = GeneratorConfig {
            seed: 7,
            ..config()
        };
        assert_ne!(a, encode_events(&other, 1, 0, 200));
        assert_eq!(encode_events(&config(), 1, 50, 10), a[50..60].to_vec());
    }

    #[test]
    fn the_events_total_is_split_across_partitions() {
        let mut source = GeneratorSource::new(config()).unwrap();
        let counts: Vec<usize> = (0..3)
            .map(|p| read_all(open(&mut source, p, 0).as_mut(), 500).len())
            .collect();
        assert_eq!(counts, [1001, 1000, 1000]);
    }

    #[test]
    fn a_partition_without_sensors_produces_nothing() {
        let cfg = GeneratorConfig {
            sensors: 1,
            partitions: 4,
            events: Some(100),
            ..Default::default()
        };
        let g = EventGenerator::new(&cfg);
        let home = g.partition_of_sensor(0);
        let mut source = GeneratorSource::new(cfg).unwrap();
        for p in 0..4 {
            let n = read_all(open(&mut source, p, 0).as_mut(), 64).len();
            let share = if p < 100 % 4 { 26 } else { 25 };
            assert_eq!(n, if p == home { share } else { 0 }, "partition {p}");
        }
    }

    #[test]
    fn a_sensor_always_lives_in_the_same_partition() {
        let cfg = GeneratorConfig {
            poison_ratio: 0.0,
            ..config()
        };
        let g = EventGenerator::new(&cfg);
        let mut home: HashMap<Vec<u8>, i32> = HashMap::new();
        for p in 0..3 {
            for m in g.messages(p, 0, 1000) {
                let key = m.key.clone().unwrap();
                assert_eq!(*home.entry(key.clone()).or_insert(p), p);
                assert_eq!(partition_for_key(&key, 3), p);
                let v: serde_json::Value = serde_json::from_slice(&m.payload.unwrap()).unwrap();
                assert_eq!(v["sensor_id"].as_str().unwrap().as_bytes(), key.as_slice());
            }
        }
        assert!(home.len() > 40, "most sensors appear: {}", home.len());
    }

    #[test]
    fn disorder_never_exceeds_the_bound_for_events_that_are_not_late() {
        let cfg = config();
        let g = EventGenerator::new(&cfg);
        let bound = cfg.disorder_ms as i64;
        let mut late = 0;
        for p in 0..3 {
            let mut max_seen = i64::MIN;
            let mut disorder_seen = false;
            for o in 0..5000 {
                let e = g.event(p, o).unwrap();
                if e.late {
                    late += 1;
                    if max_seen > i64::MIN {
                        assert!(
                            e.event_time_ms < max_seen - 2 * bound,
                            "a late event is behind the watermark by more than the bound"
                        );
                    }
                    continue;
                }
                assert!(
                    e.event_time_ms >= max_seen.saturating_sub(bound),
                    "{e:?} behind {max_seen}"
                );
                disorder_seen |= e.event_time_ms < max_seen;
                max_seen = max_seen.max(e.event_time_ms);
            }
            assert!(disorder_seen, "some events do go back in time");
        }
        let ratio = f64::from(late) / 15_000.0;
        assert!((0.035..0.065).contains(&ratio), "late ratio {ratio}");
    }

    #[test]
    fn valid_payloads_carry_the_documented_fields() {
        let g = EventGenerator::new(&GeneratorConfig {
            poison_ratio: 0.0,
            ..config()
        });
        for o in 0..500 {
            let e = g.event(2, o).unwrap();
            let m = g.encode(&e);
            let v: serde_json::Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 5);
            assert_eq!(v["event_id"], format!("2-{o}"));
            assert_eq!(v["sensor_id"], e.sensor_id());
            assert_eq!(v["temperature"].as_f64().unwrap(), e.temperature());
            assert_eq!(v["humidity"].as_f64().unwrap(), e.humidity());
            assert_eq!(v["event_time"].as_i64().unwrap(), e.event_time_ms);
            assert!((-20.0..45.0).contains(&e.temperature()));
            assert!((0.0..100.0).contains(&e.humidity()));
            assert_eq!(m.key.as_deref(), Some(e.sensor_id().as_bytes()));
        }
    }

    #[test]
    fn poison_ratio_is_roughly_respected_and_every_kind_appears() {
        let g = EventGenerator::new(&config());
        let mut kinds = HashSet::new();
        let mut poison = 0;
        let total = 6000;
        for o in 0..total / 3 {
            for p in 0..3 {
                let e = g.event(p, o).unwrap();
                let m = g.encode(&e);
                let parsed = m
                    .payload
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
                match e.poison {
                    None => assert!(parsed.is_some()),
                    Some(kind) => {
                        poison += 1;
                        kinds.insert(kind);
                        match kind {
                            PoisonKind::InvalidJson | PoisonKind::EmptyPayload => {
                                assert!(parsed.is_none())
                            }
                            PoisonKind::NullPayload => assert_eq!(m.payload, None),
                            PoisonKind::MissingField => {
                                assert!(parsed.unwrap().get("event_time").is_none())
                            }
                            PoisonKind::WrongType => {
                                assert_eq!(parsed.unwrap()["temperature"], "hot")
                            }
                        }
                    }
                }
            }
        }
        let ratio = f64::from(poison) / f64::from(total as u32);
        assert!((0.08..0.12).contains(&ratio), "poison ratio {ratio}");
        assert_eq!(kinds.len(), PoisonKind::ALL.len());
    }

    #[test]
    fn decimals_are_formatted_like_json_numbers() {
        let mut out = Vec::new();
        for (units, scale, text) in [
            (-2000, 100, "-20.00"),
            (-5, 100, "-0.05"),
            (0, 100, "0.00"),
            (4499, 100, "44.99"),
            (7, 10, "0.7"),
            (999, 10, "99.9"),
        ] {
            out.clear();
            push_fixed(&mut out, units, scale);
            assert_eq!(std::str::from_utf8(&out).unwrap(), text);
        }
        out.clear();
        push_i64(&mut out, i64::MIN);
        assert_eq!(std::str::from_utf8(&out).unwrap(), i64::MIN.to_string());
    }

    #[test]
    fn the_rate_limit_holds_and_never_sleeps_past_the_linger() {
        let cfg = GeneratorConfig {
            partitions: 2,
            events_per_sec: Some(400), // 200 per partition
            ..Default::default()
        };
        let mut source = GeneratorSource::new(cfg).unwrap();
        let mut reader = open(&mut source, 0, 0);
        let started = Instant::now();
        let mut got = 0usize;
        while started.elapsed() < Duration::from_millis(500) {
            let call = Instant::now();
            match reader.read(1000, Duration::from_millis(50)).unwrap() {
                ReadResult::Batch(b) => got += b.len(),
                ReadResult::Idle => {}
                ReadResult::End => panic!("unbounded"),
            }
            assert!(
                call.elapsed() < Duration::from_millis(250),
                "slept past linger"
            );
        }
        let allowed = 200.0 * started.elapsed().as_secs_f64();
        assert!(got as f64 <= allowed + 1.0, "{got} > {allowed}");
        assert!(got >= 40, "only {got} events in 0.5 s at 200/s");
    }

    #[test]
    fn an_impossible_config_reports_every_error() {
        let cfg = GeneratorConfig {
            partitions: 0,
            sensors: 0,
            events_per_sec: Some(0),
            late_ratio: 1.5,
            poison_ratio: f64::NAN,
            ..Default::default()
        };
        let errors = cfg.validate("source");
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert_eq!(errors[0], "source.partitions: must be at least 1, got 0");
        assert!(errors.iter().any(|e| e.starts_with("source.late_ratio:")));
        assert!(GeneratorSource::new(cfg).is_err());
        assert!(GeneratorConfig::default().validate("source").is_empty());
    }

    #[test]
    fn the_config_reads_from_toml_like_json_and_refuses_unknown_keys() {
        let cfg: GeneratorConfig =
            serde_json::from_str(r#"{"events": 10, "partitions": 2}"#).unwrap();
        assert_eq!(cfg.events, Some(10));
        assert_eq!(cfg.seed, 42);
        let err = serde_json::from_str::<GeneratorConfig>(r#"{"event": 10}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
