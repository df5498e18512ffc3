//! The metrics endpoint of `weir run` (ARCHITECTURE.md, "Metrics and operations"): a small
//! HTTP server on its own thread serving `/metrics` (the Prometheus text format, written by
//! `prometheus-client`), `/healthz` and `/readyz`.
//!
//! The runtime counts into atomics ([`weir_runtime::Metrics`]); nothing here runs on the data
//! path. A scrape reads the atomics through a custom collector ([`RunCollector`]), so label
//! values (topic, partition, sink, kind) are made when a scrape asks, never per event.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use weir_runtime::metrics::{now_ms, RunState};
use weir_runtime::Metrics;

/// The address the endpoint listens on when `[metrics]` gives none: loopback only, so a
/// worker is reachable from outside its host only when configured so.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// `[metrics]`: the HTTP endpoint of `weir run` (off without this section or `--metrics-addr`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the endpoint (default true when the section is present).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `ip:port` to listen on (default 127.0.0.1:9464; port 0 picks a free port, printed on
    /// stderr). Any address other than loopback exposes the endpoint beyond this host.
    #[serde(default = "default_addr")]
    pub addr: String,
}

fn yes() -> bool {
    true
}

fn default_addr() -> String {
    DEFAULT_ADDR.to_string()
}

impl MetricsConfig {
    /// Value checks, as `"metrics.<key>: <problem>"` lines.
    pub fn validate(&self) -> Vec<String> {
        match parse_addr(&self.addr) {
            Ok(_) => Vec::new(),
            Err(why) => vec![format!("metrics.addr: {why}")],
        }
    }
}

/// An `ip:port` listen address, or why it is not one.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("`{text}` is not an address to listen on (ip:port, e.g. {DEFAULT_ADDR})")
    })
}

/// The running endpoint; dropping it stops the server thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listen on `addr` and serve `metrics` from a thread of its own. A taken or unusable
    /// address is an error naming it.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, String> {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, None)
                .map_err(|e| format!("cannot serve on {addr}: {e}"))?,
        );
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RunCollector(metrics.clone())));
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("weir-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = respond(request.url(), &registry, &metrics);
                    if let Err(e) = request.respond(response) {
                        tracing::debug!(error = %e, "metrics: a scrape's connection failed");
                    }
                }
            })
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok(Self {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the chosen port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn respond(url: &str, registry: &Registry, metrics: &Metrics) -> Response {
    let path = url.split('?').next().unwrap_or(url);
    let text = |code: u16, body: String| {
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    };
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => tiny_http::Response::from_string(body).with_header(header(
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
                Err(_) => text(500, "cannot encode the metrics\n".into()),
            }
        }
        "/healthz" if metrics.healthy() => text(200, "ok\n".into()),
        "/healthz" => text(503, "failed: a fatal error ends the run\n".into()),
        "/readyz" if metrics.ready() => text(200, "ready\n".into()),
        "/readyz" => text(503, format!("not ready: {}\n", not_ready(metrics))),
        _ => text(404, "not found (try /metrics, /healthz, /readyz)\n".into()),
    }
}

/// Why the run is not ready.
fn not_ready(m: &Metrics) -> &'static str {
    match m.state() {
        RunState::Starting => "restoring partitions",
        RunState::Running => "no partition assigned",
        RunState::Failing => "a fatal error drains the run",
        RunState::Stopped => "the run is over",
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("invariant: a valid static header")
}

/// Reads a run's atomics at scrape time (see the module docs).
#[derive(Debug)]
pub struct RunCollector(pub Arc<Metrics>);

/// A counter without labels.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// A gauge without labels.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Collector for RunCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let c = m.snapshot();
        let e = &mut e;
        // The accounting identity: events_in = aggregated + dead_lettered + late_dropped +
        // filtered + deduplicated + (parked - unparked), the last the events waiting for a
        // retry (ARCHITECTURE.md, "Checkpoint protocol").
        counter(
            e,
            "weir_events_in",
            "Events read from the source and processed.",
            c.consumed,
        )?;
        counter(
            e,
            "weir_events_aggregated",
            "Events absorbed by the stateful operator, or that reached the sinks without one.",
            c.aggregated,
        )?;
        counter(
            e,
            "weir_events_dead_lettered",
            "Events sent to the DLQ (any stage).",
            c.dlq,
        )?;
        counter(
            e,
            "weir_events_late_dropped",
            "Late events dropped by policy.",
            c.late_dropped,
        )?;
        counter(
            e,
            "weir_events_filtered",
            "Events removed by a filter.",
            c.filtered,
        )?;
        counter(
            e,
            "weir_events_deduplicated",
            "Events dropped by a dedup operator as repeats of a key seen within its window.",
            c.deduplicated,
        )?;
        counter(
            e,
            "weir_events_parked",
            "Events that entered the retry state (a retryable failure, or an event waiting behind one of its key), again at each failed retry.",
            c.parked,
        )?;
        counter(
            e,
            "weir_events_unparked",
            "Events that left the retry state to be tried again or to go on behind their key's.",
            c.unparked,
        )?;
        counter(
            e,
            "weir_retries_scheduled",
            "Failed attempts of an operator on an event after which another attempt was scheduled.",
            c.retries_scheduled,
        )?;
        counter(
            e,
            "weir_retries",
            "Attempts of an operator on an event after the first (retries made).",
            c.retries,
        )?;
        counter(
            e,
            "weir_retry_successes",
            "Events an operator accepted on a retry.",
            c.retry_successes,
        )?;
        counter(
            e,
            "weir_late_events",
            "Late events (dead-lettered or dropped).",
            c.late,
        )?;
        counter(
            e,
            "weir_events_out",
            "Result rows handed to the sinks.",
            c.rows_out,
        )?;
        counter(
            e,
            "weir_bytes_in",
            "Payload and key bytes read from the source.",
            m.bytes_in(),
        )?;
        {
            let mut f = e.encode_descriptor(
                "weir_sink_rows_written",
                "Rows each sink accepted.",
                None,
                MetricType::Counter,
            )?;
            for (sink, n) in m.sink_rows() {
                f.encode_family(&[("sink", sink)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        {
            let mut f = e.encode_descriptor(
                "weir_dlq",
                "Dead letters written, by kind and stage.",
                None,
                MetricType::Counter,
            )?;
            for (kind, stage, n) in m.dead_letters() {
                f.encode_family(&[("kind", kind.as_str()), ("stage", stage)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        counter(
            e,
            "weir_checkpoints",
            "Checkpoints committed.",
            m.checkpoints(),
        )?;
        counter(
            e,
            "weir_dlq_replayed",
            "Dead letters `weir dlq replay` fed through the pipeline again that went through (marked replayed).",
            m.replayed(),
        )?;
        counter(
            e,
            "weir_transient_retries",
            "Transient errors retried (attempts after the first).",
            m.transient_retries(),
        )?;
        counter(
            e,
            "weir_reader_pauses",
            "Times a reader paused its partition because downstream was full.",
            m.reader_pauses(),
        )?;
        let (assigned, revoked) = m.assignments();
        counter(
            e,
            "weir_partitions_assigned",
            "Partitions started (assigned) in this run.",
            assigned,
        )?;
        counter(
            e,
            "weir_partitions_revoked",
            "Partitions a rebalance took away in this run.",
            revoked,
        )?;
        counter(
            e,
            "weir_partitions_lost",
            "Partitions lost to another worker without a drain.",
            m.lost_partitions(),
        )?;
        counter(
            e,
            "weir_partitions_fenced",
            "Partitions dropped because a newer owner claimed them (a late revocation's checkpoint was refused).",
            m.fenced_partitions(),
        )?;
        counter(
            e,
            "weir_acknowledge_failures",
            "Durable checkpoints the source could not acknowledge upstream.",
            m.acknowledge_failures(),
        )?;
        gauge(
            e,
            "weir_assigned_partitions",
            "Partitions this worker reads now.",
            m.owned_partitions() as i64,
        )?;
        gauge(
            e,
            "weir_ready",
            "1 when /readyz answers ready.",
            i64::from(m.ready()),
        )?;
        self.encode_partitions(e)?;
        for (name, h) in m.histograms() {
            let (sum, count, buckets) = h.read();
            let help = match name {
                "checkpoint_duration" => "Time to commit a checkpoint (prepare, save, commit).",
                "batch_processing" => "Time of one step of a partition task (decode, operators).",
                _ => "Time from the source timestamp of a step's newest message to its output's sink write.",
            };
            e.encode_descriptor(
                &format!("weir_{name}_seconds"),
                help,
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

impl RunCollector {
    /// The per-partition gauges: consumer lag, offsets, watermark, last checkpoint.
    fn encode_partitions(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let parts = self.0.partitions();
        let labels: Vec<[(&str, String); 2]> = parts
            .iter()
            .map(|p| {
                [
                    ("topic", p.topic.to_string()),
                    ("partition", p.partition.to_string()),
                ]
            })
            .collect();
        let now = now_ms();
        type Read = fn(&weir_runtime::metrics::PartitionMetrics, i64) -> Option<f64>;
        let gauges: [(&str, &str, Read); 7] = [
            (
                "weir_consumer_lag",
                "Messages between the partition's end (high watermark) and the next offset to read.",
                |p, _| p.lag().map(|l| l as f64),
            ),
            (
                "weir_source_end_offset",
                "The partition's end offset as the source last reported it.",
                |p, _| p.end_offset().map(|o| o as f64),
            ),
            (
                "weir_source_next_offset",
                "The next offset the partition's reader reads.",
                |p, _| Some(p.next_offset() as f64),
            ),
            (
                "weir_watermark_seconds",
                "The partition's event-time watermark (epoch seconds).",
                |p, _| p.watermark_ms().map(|w| w as f64 / 1e3),
            ),
            (
                "weir_watermark_lag_seconds",
                "Wall clock minus the partition's watermark.",
                |p, now| p.watermark_ms().map(|w| (now - w) as f64 / 1e3),
            ),
            (
                "weir_events_in_retry",
                "Events of the partition waiting for a retry before the DLQ (in its checkpointed state).",
                |p, _| Some(p.in_retry() as f64),
            ),
            (
                "weir_last_checkpoint_timestamp_seconds",
                "When the partition's last checkpoint was committed (epoch seconds).",
                |p, _| p.last_checkpoint().map(|(at, _)| at as f64 / 1e3),
            ),
        ];
        for (name, help, read) in gauges {
            let mut f = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (p, l) in parts.iter().zip(&labels) {
                if let Some(v) = read(p, now) {
                    f.encode_family(l)?.encode_gauge(&v)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Arc<Metrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RunCollector(m.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn the_default_address_is_loopback_and_a_bad_one_names_the_key() {
        assert!(parse_addr(DEFAULT_ADDR).unwrap().ip().is_loopback());
        let section: MetricsConfig = toml::from_str("").unwrap();
        assert_eq!(section.addr, DEFAULT_ADDR);
        assert!(section.enabled);
        let bad = MetricsConfig {
            enabled: true,
            addr: "localhost:9464".into(),
        };
        assert_eq!(
            bad.validate(),
            vec![
                "metrics.addr: `localhost:9464` is not an address to listen on (ip:port, e.g. \
                 127.0.0.1:9464)"
            ]
        );
    }

    #[test]
    fn a_scrape_renders_counters_per_partition_gauges_and_histograms() {
        let m = Arc::new(Metrics::default());
        m.add(&weir_runtime::Counters {
            consumed: 10,
            aggregated: 6,
            dlq: 2,
            filtered: 2,
            rows_out: 3,
            ..Default::default()
        });
        let text = render(&m);
        assert!(
            text.contains("# TYPE weir_events_in counter\nweir_events_in_total 10\n"),
            "{text}"
        );
        assert!(text.contains("weir_events_aggregated_total 6\n"), "{text}");
        for name in [
            "weir_events_parked",
            "weir_events_unparked",
            "weir_retries_scheduled",
            "weir_retries",
            "weir_retry_successes",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter\n{name}_total 0\n")),
                "{name}: {text}"
            );
        }
        assert!(text.contains("weir_ready 0\n"), "{text}");
        assert!(
            text.contains("weir_checkpoint_duration_seconds_bucket{le=\"+Inf\"} 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("weir_dlq_replayed_total 0\n"), "{text}");
        m.dead_letters_replayed(4);
        assert!(render(&m).contains("weir_dlq_replayed_total 4\n"));
        assert!(
            !text.contains("weir_consumer_lag{"),
            "no partition yet: {text}"
        );
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_the_endpoint_serves() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/grafana-dashboard.json"
        );
        let dashboard = std::fs::read_to_string(path).unwrap();
        let served = render(&Arc::new(Metrics::default()));
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("weir_"))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            // Families are declared by their base name (`# TYPE weir_dlq counter`).
            let base = name
                .strip_suffix("_total")
                .or_else(|| name.strip_suffix("_bucket"))
                .unwrap_or(name);
            assert!(
                served.contains(&format!("# TYPE {base} ")),
                "the dashboard uses `{name}`, which the endpoint does not serve"
            );
        }
    }
}
