//! What the Kafka source, sink and DLQ share: the librdkafka configuration (with the options
//! weir owns), a client context that remembers the last broker error so that errors can say
//! why a broker is unreachable, metadata checks, and redaction of secret options.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;
use tracing::{debug, error, info, warn};
use weir_runtime::ErrorClass;

use super::errors::classify;
use super::group::GroupHooks;
use crate::config_key;

/// A librdkafka option that weir sets itself, and where the user says what they want instead.
pub(crate) struct OwnedOption {
    pub key: &'static str,
    pub why: &'static str,
}

/// `"<prefix>.options.<key>"` errors for every owned option present in `options`.
pub(crate) fn reject_owned_options(
    prefix: &str,
    options: &BTreeMap<String, String>,
    owned: &[OwnedOption],
) -> Vec<String> {
    let mut errors = Vec::new();
    for key in options.keys() {
        if key.trim().is_empty() {
            errors.push(format!(
                "{}: an option name must not be empty",
                config_key(prefix, "options")
            ));
            continue;
        }
        if let Some(o) = owned.iter().find(|o| o.key == key.trim()) {
            errors.push(format!(
                "{}: weir owns this librdkafka option: {}",
                config_key(prefix, &format!("options.\"{}\"", o.key)),
                o.why
            ));
        }
    }
    errors
}

/// Errors for an empty `brokers` and a zero timeout (shared by every Kafka config).
pub(crate) fn check_brokers_and_timeout(
    prefix: &str,
    brokers: &str,
    timeout_key: &str,
    timeout_ms: u64,
) -> Vec<String> {
    let mut errors = Vec::new();
    if brokers.trim().is_empty() {
        errors.push(format!(
            "{}: must list at least one broker, e.g. \"127.0.0.1:9092\"",
            config_key(prefix, "brokers")
        ));
    }
    if timeout_ms == 0 {
        errors.push(format!(
            "{}: must be at least 1",
            config_key(prefix, timeout_key)
        ));
    }
    errors
}

/// Is the value of this librdkafka option a secret (never printed)?
pub(crate) fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "pem",
        "oauthbearer.config",
        "credential",
        "token",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// The options as `Debug` shows them: secret values replaced by `"***"`.
pub(crate) fn redacted(options: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    options
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_option(k) {
                "***"
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect()
}

/// librdkafka options passed through by a config. Secret values (passwords, keys, tokens)
/// show as `***` in Debug, so a config can be logged as it is.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaOptions {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaOptions {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(&self.0).fmt(f)
    }
}

/// The client configuration: the user's options, then `bootstrap.servers`, then `weir_owned`
/// (validation rejects user options that collide with those), then `defaults` for options
/// the user did not set.
pub(crate) fn client_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
    weir_owned: &[(&str, &str)],
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in options {
        config.set(k.trim(), v);
    }
    config.set("bootstrap.servers", brokers.trim());
    for (k, v) in weir_owned {
        config.set(*k, *v);
    }
    for (k, v) in defaults {
        if !options.keys().any(|o| o.trim() == *k) {
            config.set(*k, *v);
        }
    }
    config.set_log_level(RDKafkaLogLevel::Info);
    config
}

/// A message whose delivery failed, kept to be sent again.
#[derive(Debug)]
pub(crate) struct FailedDelivery {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    pub error: KafkaError,
}

/// Repeats of a client log line within this window are counted, not logged.
const LOG_REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// At most this many distinct lines are tracked; older ones are forgotten past the window.
const LOG_LINES_TRACKED: usize = 256;

/// What to do with one client log line ([`LogCollapse::observe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogVerdict {
    /// Log it; `repeated` earlier repeats of it were counted and not logged.
    Log { repeated: u64 },
    /// A repeat within the window: counted only.
    Count,
}

/// A line seen, and its repeats not logged since.
#[derive(Debug, Clone)]
struct Seen {
    logged_at: Instant,
    repeats: u64,
    level: RDKafkaLogLevel,
    fac: String,
    message: String,
}

/// Collapses repeated client log lines (librdkafka logs a refused connection on every
/// reconnect, and the lines queue up until the client's queue is served, so a start against
/// an unreachable broker printed 195 of them at once). The first occurrence of a line is
/// logged; its repeats within [`LOG_REPEAT_WINDOW`] are counted, and the first occurrence
/// after the window is logged with that count. Lines are the same when they differ only in
/// numbers or in librdkafka's own "N identical error(s) suppressed". Pure: the
/// caller passes the time.
#[derive(Debug, Default)]
pub(crate) struct LogCollapse {
    lines: HashMap<String, Seen>,
}

/// The line with every run of digits replaced by `#`.
fn log_key(level: RDKafkaLogLevel, fac: &str, message: &str) -> String {
    let mut key = format!("{}|{fac}|", level as i32);
    let mut digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !digits {
                key.push('#');
            }
            digits = true;
        } else {
            key.push(c);
            digits = false;
        }
    }
    // librdkafka's own count of suppressed repeats is not a different line.
    key.replace(", # identical error(s) suppressed", "")
}

impl LogCollapse {
    pub fn observe(
        &mut self,
        level: RDKafkaLogLevel,
        fac: &str,
        message: &str,
        now: Instant,
    ) -> LogVerdict {
        let key = log_key(level, fac, message);
        if let Some(seen) = self.lines.get_mut(&key) {
            if now.saturating_duration_since(seen.logged_at) < LOG_REPEAT_WINDOW {
                seen.repeats += 1;
                return LogVerdict::Count;
            }
            let repeated = seen.repeats;
            seen.logged_at = now;
            seen.repeats = 0;
            return LogVerdict::Log { repeated };
        }
        if self.lines.len() >= LOG_LINES_TRACKED {
            self.lines.retain(|_, s| {
                s.repeats > 0 || now.saturating_duration_since(s.logged_at) < LOG_REPEAT_WINDOW
            });
        }
        if self.lines.len() < LOG_LINES_TRACKED {
            self.lines.insert(
                key,
                Seen {
                    logged_at: now,
                    repeats: 0,
                    level,
                    fac: fac.to_string(),
                    message: message.to_string(),
                },
            );
        }
        LogVerdict::Log { repeated: 0 }
    }

    /// The lines with repeats not reported yet, with their count (when the client goes away).
    pub fn drain(&mut self) -> Vec<(RDKafkaLogLevel, String, String, u64)> {
        let mut out: Vec<_> = self
            .lines
            .drain()
            .filter(|(_, s)| s.repeats > 0)
            .map(|(_, s)| (s.level, s.fac, s.message, s.repeats))
            .collect();
        out.sort_by(|a, b| a.2.cmp(&b.2));
        out
    }
}

/// Log one client line through `tracing` at its level.
fn emit_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility = fac, "{message}"),
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility = fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility = fac, "{message}"),
    }
}

/// `message`, followed by how often it repeated unlogged.
fn with_repeats(message: &str, repeated: u64, since: &str) -> String {
    match repeated {
        0 => message.to_string(),
        1 => format!("{message} (repeated 1 time {since})"),
        n => format!("{message} (repeated {n} times {since})"),
    }
}

/// Client context of every weir Kafka client: logs through `tracing` (repeated lines
/// collapsed, [`LogCollapse`]), remembers the last broker error (for error messages), and
/// collects failed deliveries of producers.
#[derive(Default)]
pub(crate) struct KafkaContext {
    log_lines: Mutex<LogCollapse>,
    last_error: Mutex<Option<String>>,
    failed: Mutex<Vec<FailedDelivery>>,
    /// A consumer's link to the executor when it follows a group (unused otherwise).
    pub group: GroupHooks,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KafkaContext {
    /// The last error librdkafka reported (a connection refused, a failed authentication).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Failed deliveries since the last call.
    pub fn take_failed(&self) -> Vec<FailedDelivery> {
        std::mem::take(&mut *lock(&self.failed))
    }

    fn remember(&self, message: String) {
        *lock(&self.last_error) = Some(message);
    }
}

impl Drop for KafkaContext {
    fn drop(&mut self) {
        for (level, fac, message, repeats) in lock(&self.log_lines).drain() {
            emit_log(
                level,
                &fac,
                &with_repeats(&message, repeats, "since it was logged"),
            );
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if level as i32 <= RDKafkaLogLevel::Warning as i32 {
            self.remember(message.to_string());
        }
        let verdict = lock(&self.log_lines).observe(level, fac, message, Instant::now());
        if let LogVerdict::Log { repeated } = verdict {
            emit_log(
                level,
                fac,
                &with_repeats(message, repeated, "in the window before"),
            );
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let message = format!("{error}: {reason}");
        let verdict = lock(&self.log_lines).observe(
            RDKafkaLogLevel::Warning,
            "error",
            &message,
            Instant::now(),
        );
        if let LogVerdict::Log { repeated } = verdict {
            emit_log(
                RDKafkaLogLevel::Warning,
                "error",
                &with_repeats(&message, repeated, "in the window before"),
            );
        }
        self.remember(message);
    }
}

impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.group.rebalance(consumer, err, tpl);
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            lock(&self.failed).push(FailedDelivery {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: message.headers().map(|h| h.detach()),
                error: error.clone(),
            });
        }
    }
}

/// `", last broker error: ..."` when librdkafka reported one, else nothing.
pub(crate) fn last_error_suffix(context: &KafkaContext) -> String {
    context
        .last_error()
        .map(|e| format!("; last broker error: {e}"))
        .unwrap_or_default()
}

/// The partitions of `topic`, fetching metadata within `timeout`. Errors name the brokers or
/// the topic; the class says whether waiting could help. `serve` polls the client's main
/// queue, where librdkafka's logs wait (rdkafka sets `log.queue`): serving it first lets the
/// error say why the brokers are unreachable.
pub(crate) fn topic_partitions(
    client: &Client<KafkaContext>,
    serve: &dyn Fn(),
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, (String, ErrorClass)> {
    let metadata = client.fetch_metadata(Some(topic), timeout).map_err(|e| {
        serve();
        (
            format!(
                "cannot fetch metadata of topic {topic:?} from brokers {brokers:?} within {} ms: {e}{}",
                timeout.as_millis(),
                last_error_suffix(client.context())
            ),
            classify(&e),
        )
    })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err((
            format!("topic {topic:?} does not exist on brokers {brokers:?}"),
            ErrorClass::Fatal,
        ));
    };
    if let Some(err) = t.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(err);
        let missing = matches!(
            code,
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                | rdkafka::types::RDKafkaErrorCode::UnknownTopic
        );
        let message = if missing {
            format!("topic {topic:?} does not exist on brokers {brokers:?}")
        } else {
            format!("topic {topic:?} on brokers {brokers:?}: {code}")
        };
        return Err((message, super::errors::classify_code(code)));
    }
    if t.partitions().is_empty() {
        return Err((
            format!("topic {topic:?} does not exist on brokers {brokers:?} (no partitions)"),
            ErrorClass::Fatal,
        ));
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    Ok(partitions)
}

/// Reads each of `partitions` of `topic` from its beginning to its end now, handing every
/// message to `each` with its partition: how weir reads back a topic it wrote (the DLQ
/// topic, the checkpoint topic). `consumer` joins no group and commits nothing; it must
/// have `enable.partition.eof=true`. A partition not read to its end within `wait` is a
/// transient error of `sink` naming `what` (`"DLQ topic"`); `err` makes the other errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_topic_to_end(
    consumer: &BaseConsumer<KafkaContext>,
    topic: &str,
    partitions: &[i32],
    wait: Duration,
    what: &str,
    sink: &str,
    err: &dyn Fn(String) -> weir_runtime::error::WeirError,
    mut each: impl FnMut(i32, &rdkafka::message::BorrowedMessage<'_>) -> weir_runtime::error::Result<()>,
) -> weir_runtime::error::Result<()> {
    use rdkafka::consumer::Consumer;
    for &p in partitions {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .map_err(|e| err(format!("{topic}/{p}: {e}")))?;
        consumer
            .assign(&tpl)
            .map_err(|e| err(format!("cannot assign {topic}/{p}: {e}")))?;
        let deadline = Instant::now() + wait;
        loop {
            if Instant::now() > deadline {
                return Err(weir_runtime::error::WeirError::Sink {
                    sink: sink.to_string(),
                    message: format!(
                        "reading {what} {topic} partition {p} did not reach its end within {} ms{}",
                        wait.as_millis(),
                        last_error_suffix(consumer.context())
                    ),
                    class: ErrorClass::Transient,
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => each(p, &m)?,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) if classify(&e) == ErrorClass::Transient => {}
                Some(Err(e)) => return Err(err(format!("read {topic}/{p}: {e}"))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_options_are_redacted_and_others_kept() {
        let options: BTreeMap<String, String> = [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "k"),
            ("ssl.key.pem", "-----BEGIN"),
            ("sasl.oauthbearer.config", "x"),
            ("sasl.username", "alice"),
            ("security.protocol", "SASL_SSL"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let shown = format!("{:?}", redacted(&options));
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert!(
            shown.contains("alice") && shown.contains("SASL_SSL"),
            "{shown}"
        );
        assert_eq!(redacted(&options)["sasl.password"], "***");
    }

    #[test]
    fn owned_options_are_rejected_with_the_key_to_use() {
        let options: BTreeMap<String, String> = [
            ("group.id", "g"),
            (" bootstrap.servers ", "b"),
            ("", "x"),
            ("acks", "all"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let owned = [
            OwnedOption {
                key: "group.id",
                why: "set `group_id` instead",
            },
            OwnedOption {
                key: "bootstrap.servers",
                why: "set `brokers` instead",
            },
        ];
        assert_eq!(
            reject_owned_options("source", &options, &owned),
            [
                "source.options: an option name must not be empty",
                "source.options.\"bootstrap.servers\": weir owns this librdkafka option: set `brokers` instead",
                "source.options.\"group.id\": weir owns this librdkafka option: set `group_id` instead",
            ]
        );
    }

    fn refused(after_ms: u64) -> String {
        format!(
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused \
             (after {after_ms}ms in state CONNECT)"
        )
    }

    fn drained(c: &mut LogCollapse) -> Vec<(i32, String, String, u64)> {
        c.drain()
            .into_iter()
            .map(|(l, f, m, n)| (l as i32, f, m, n))
            .collect()
    }

    #[test]
    fn the_first_of_a_repeated_log_line_is_logged_and_its_repeats_only_counted() {
        let mut c = LogCollapse::default();
        let t0 = Instant::now();
        let w = RDKafkaLogLevel::Warning;
        assert_eq!(
            c.observe(w, "FAIL", &refused(0), t0),
            LogVerdict::Log { repeated: 0 }
        );
        // 194 repeats in 2 ms, differing only in their numbers: counted.
        for i in 1..195u64 {
            let at = t0 + Duration::from_micros(10 * i);
            assert_eq!(c.observe(w, "FAIL", &refused(i), at), LogVerdict::Count);
        }
        // When the client goes away, the count is reported with the first line's text.
        assert_eq!(
            drained(&mut c),
            [(w as i32, "FAIL".to_string(), refused(0), 194)]
        );
    }

    #[test]
    fn a_repeat_after_the_window_is_logged_with_the_count_of_the_window_before() {
        let mut c = LogCollapse::default();
        let t0 = Instant::now();
        let w = RDKafkaLogLevel::Warning;
        c.observe(w, "FAIL", &refused(0), t0);
        c.observe(w, "FAIL", &refused(1), t0 + Duration::from_secs(1));
        c.observe(w, "FAIL", &refused(2), t0 + Duration::from_secs(2));
        let later = t0 + LOG_REPEAT_WINDOW + Duration::from_millis(1);
        assert_eq!(
            c.observe(w, "FAIL", &refused(3), later),
            LogVerdict::Log { repeated: 2 }
        );
        assert_eq!(
            c.observe(w, "FAIL", &refused(4), later + Duration::from_millis(1)),
            LogVerdict::Count
        );
        assert_eq!(
            drained(&mut c),
            [(w as i32, "FAIL".to_string(), refused(0), 1)]
        );
    }

    #[test]
    fn different_lines_levels_and_facilities_are_each_logged() {
        let mut c = LogCollapse::default();
        let t0 = Instant::now();
        let first = LogVerdict::Log { repeated: 0 };
        assert_eq!(c.observe(RDKafkaLogLevel::Warning, "FAIL", "a", t0), first);
        assert_eq!(c.observe(RDKafkaLogLevel::Warning, "FAIL", "b", t0), first);
        assert_eq!(c.observe(RDKafkaLogLevel::Error, "FAIL", "a", t0), first);
        assert_eq!(
            c.observe(RDKafkaLogLevel::Warning, "REQTMOUT", "a", t0),
            first
        );
        assert!(drained(&mut c).is_empty(), "nothing repeated");
    }

    #[test]
    fn the_tracked_lines_are_bounded() {
        let mut c = LogCollapse::default();
        let t0 = Instant::now();
        for i in 0..10 * LOG_LINES_TRACKED {
            let line = format!("line {}", "x".repeat(i % 50 + 1)) + &"y".repeat(i / 50);
            c.observe(RDKafkaLogLevel::Info, "F", &line, t0);
        }
        assert!(c.lines.len() <= LOG_LINES_TRACKED);
    }

    #[test]
    fn weir_owned_settings_win_and_defaults_yield_to_the_user() {
        let options: BTreeMap<String, String> = [("auto.offset.reset", "latest"), ("acks", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = client_config(
            " b:1 ",
            &options,
            &[("acks", "all")],
            &[
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "50"),
            ],
        );
        assert_eq!(config.get("bootstrap.servers"), Some("b:1"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("50"));
    }
}
