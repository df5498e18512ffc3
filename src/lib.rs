//! weir: a stream processing runtime. This facade re-exports the crates and holds the
//! pipeline builder, the `pipeline.toml` loader, and the demo and benchmark behind the CLI.
//!
//! - [`weir_runtime`]: batches, traits, the partition executor, checkpoints, DLQ;
//! - [`weir_operators`]: JSON decode, filter/project, windows, projections;
//! - [`weir_connectors`]: sources and sinks.

pub mod bench;
pub mod bench_kafka;
pub mod bench_postgres;
pub mod config;
pub mod config_reference;
pub mod demo;
pub mod dlq_cmd;
pub mod env_vars;
pub mod generate;
pub mod metrics_http;
pub mod pipeline;
pub mod preflight;
pub mod registry;
pub mod replay;
pub mod reset;
pub mod rules;
pub mod sql_cli;
pub mod status;
pub mod status_report;
pub mod toml_de;

pub use weir_connectors as connectors;
pub use weir_operators as operators;
pub use weir_runtime as runtime;

use weir_operators::{
    AggregateConfig, FieldConfig, FieldType, LatePolicy, SchemaConfig, TumbleConfig,
};

/// Everything a pipeline written in Rust needs.
pub mod prelude {
    pub use crate::config::ValidatedPipeline;
    pub use crate::pipeline::Pipeline;
    pub use weir_connectors::{
        GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig, JsonlFileSource, JsonlSink,
        JsonlSinkConfig, JsonlSourceConfig, SqliteSink, SqliteSinkConfig, TerminalSink,
        TerminalSinkConfig,
    };
    pub use weir_operators::{
        AggregateConfig, DedupConfig, EventError, FieldConfig, FieldType, LatePolicy, Projection,
        ProjectionOperator, SchemaConfig, TumbleConfig, Upcasters,
    };
    pub use weir_runtime::{NullSink, RetrySchedule, RunSummary, Shutdown};
}

/// The schema of the generator's IoT readings (table `events`, the default table name of a
/// pipeline file's `[schema]`).
pub fn iot_schema() -> SchemaConfig {
    let f = |name: &str, field_type| FieldConfig::new(name, field_type);
    SchemaConfig {
        table: "events".into(),
        event_time: "event_time".into(),
        partition_key: Some("sensor_id".into()),
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            f("event_id", FieldType::String),
            f("sensor_id", FieldType::String),
            f("temperature", FieldType::Float64),
            f("humidity", FieldType::Float64),
            f("event_time", FieldType::Timestamp),
        ],
    }
}

/// The demo's window: per sensor, avg/max/count of temperature over `size_ms`.
pub fn demo_window(size_ms: i64) -> TumbleConfig {
    let agg = |function: &str, column: Option<&str>, alias: &str| AggregateConfig {
        function: function.into(),
        column: column.map(Into::into),
        alias: Some(alias.into()),
        distinct: false,
        sql: None,
    };
    TumbleConfig {
        size_ms,
        keys: vec!["sensor_id".into()],
        time_column: None,
        max_out_of_orderness_ms: 5_000,
        allowed_lateness_ms: 0,
        late_policy: LatePolicy::Dlq,
        aggregates: vec![
            agg("avg", Some("temperature"), "avg_temp"),
            agg("max", Some("temperature"), "max_temp"),
            agg("count", None, "readings"),
        ],
    }
}

/// Wire Ctrl-C and SIGTERM to `shutdown` (a second signal exits at once).
pub fn install_signal_handlers(shutdown: weir_runtime::Shutdown) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("weir-signals".into()).spawn(move || {
        rt.block_on(async move {
            #[cfg(unix)]
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            for round in 0..2 {
                #[cfg(unix)]
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                #[cfg(not(unix))]
                let _ = tokio::signal::ctrl_c().await;
                if round == 0 {
                    tracing::info!("stopping: draining, checkpointing, then exiting (signal again to exit at once)");
                    shutdown.trigger();
                } else {
                    std::process::exit(130);
                }
            }
        });
    })?;
    Ok(())
}
