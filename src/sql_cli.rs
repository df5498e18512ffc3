//! `weir sql "<query>" --source <spec> --sink <spec>`: a streaming query with no pipeline file.
//!
//! Source specs: `generator[:key=value,...]` (GeneratorConfig keys), `jsonl:PATH`,
//! `kafka:BROKERS/TOPIC`. Sink specs: `terminal` (default), `jsonl:DIR`, `sqlite:PATH` (table
//! `results`, upserted by the group keys and `window_start`, or by the keys alone for a
//! GROUP BY without a window), `null`. The input schema is the
//! generator's IoT readings (table `events`, as in a pipeline file) unless `--schema FILE`
//! names a TOML file with a `[schema]` table. The watermark defaults are those of a pipeline
//! file's `[watermark]` ([`SqlOptions::default`]).
//!
//! State ([`SqlState`]): without `--dir` an ad-hoc query starts fresh, with its checkpoints
//! in a temporary directory removed at exit (a run's dead letters are kept there and the
//! directory is printed); with `--dir` the state is kept and a later run resumes from it,
//! saying so on stderr.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use weir_connectors::{
    GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig, JsonlFileSource, JsonlSink,
    JsonlSinkConfig, JsonlSourceConfig, KafkaSource, KafkaSourceConfig, SqliteSink,
    SqliteSinkConfig, TerminalSink, TerminalSinkConfig,
};
use weir_operators::{plan_sql, SchemaConfig, SqlOptions, SqlPlan};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::NullSink;

use crate::pipeline::Pipeline;

fn bad(flag: &str, msg: impl std::fmt::Display) -> WeirError {
    WeirError::Config(format!("{flag}: {msg}"))
}

/// The schema from `--schema FILE` (a `[schema]` table), or the IoT schema.
pub fn load_schema(file: Option<&Path>) -> Result<SchemaConfig> {
    let Some(file) = file else {
        return Ok(crate::iot_schema());
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| bad("--schema", format!("{}: {e}", file.display())))?;
    #[derive(serde::Deserialize)]
    struct File {
        schema: SchemaConfig,
    }
    let f: File = toml::from_str(&text)
        .map_err(|e| bad("--schema", format!("{}: {}", file.display(), e.message())))?;
    let errors = f.schema.validate("schema");
    if !errors.is_empty() {
        return Err(bad(
            "--schema",
            format!("{}: {}", file.display(), errors.join("; ")),
        ));
    }
    Ok(f.schema)
}

pub fn plan(query: &str, schema: &SchemaConfig, options: &SqlOptions) -> Result<SqlPlan> {
    plan_sql(query, &schema.table, schema, options).map_err(WeirError::Config)
}

/// Where a `weir sql` run keeps its DLQ (`dlq/`) and checkpoints (`checkpoints/`).
#[derive(Debug)]
pub struct SqlState {
    dir: PathBuf,
    /// A temporary directory of this run: removed at exit, dead letters excepted.
    temporary: bool,
    finished: bool,
}

/// The pipeline name of a `weir sql` run (its checkpoint namespace).
pub const PIPELINE: &str = "sql";

impl SqlState {
    /// `--dir DIR`, or a fresh temporary directory.
    pub fn new(dir: Option<PathBuf>) -> Result<Self> {
        let (dir, temporary) = match dir {
            Some(d) => (d, false),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let d =
                    std::env::temp_dir().join(format!("weir-sql-{}-{nanos}", std::process::id()));
                std::fs::create_dir_all(&d).map_err(|e| WeirError::io(&d, e))?;
                (d, true)
            }
        };
        Ok(Self {
            dir,
            temporary,
            finished: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    fn dlq(&self) -> PathBuf {
        self.dir.join("dlq")
    }

    /// `resuming from checkpoints in DIR (N partitions)` when `--dir` holds checkpoints of
    /// an earlier run.
    pub fn resumed(&self) -> Result<Option<String>> {
        let store = weir_runtime::LocalCheckpointStore::new(self.checkpoints(), PIPELINE);
        let n = store
            .load_all()?
            .iter()
            .filter(|(_, c)| !c.reset && &*c.topic != weir_runtime::GLOBAL_TOPIC)
            .count();
        Ok((n > 0).then(|| {
            format!(
                "resuming from checkpoints in {} ({n} partition{})",
                self.dir.display(),
                if n == 1 { "" } else { "s" }
            )
        }))
    }

    /// Published dead-letter files.
    fn dead_letter_files(&self) -> usize {
        std::fs::read_dir(self.dlq())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_file())
                    .count()
            })
            .unwrap_or(0)
    }

    /// The run ended: a temporary directory is removed, except its dead letters, whose
    /// place is returned to print.
    pub fn finish(mut self, dead_letters: u64) -> Result<Option<String>> {
        self.finished = true;
        if !self.temporary {
            return Ok(
                (dead_letters > 0).then(|| format!("dead letters in {}", self.dlq().display()))
            );
        }
        self.clean_up()
    }

    fn clean_up(&self) -> Result<Option<String>> {
        let checkpoints = self.checkpoints();
        if checkpoints.exists() {
            std::fs::remove_dir_all(&checkpoints).map_err(|e| WeirError::io(&checkpoints, e))?;
        }
        if self.dead_letter_files() > 0 {
            return Ok(Some(format!(
                "dead letters kept in {} (the rest of the temporary state was removed)",
                self.dlq().display()
            )));
        }
        std::fs::remove_dir_all(&self.dir).map_err(|e| WeirError::io(&self.dir, e))?;
        Ok(None)
    }
}

impl Drop for SqlState {
    /// A run that failed still removes its temporary state (dead letters kept and named).
    fn drop(&mut self) {
        if self.temporary && !self.finished {
            match self.clean_up() {
                Ok(Some(kept)) => eprintln!("{kept}"),
                Ok(None) => {}
                Err(e) => eprintln!("warning: cannot remove the temporary state: {e}"),
            }
        }
    }
}

/// Add the source named by `spec` to `p`.
pub fn with_source(p: Pipeline, spec: &str, state: &SqlState) -> Result<Pipeline> {
    let dir = state.dir();
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "generator" => {
            let mut table = toml::Table::new();
            for kv in arg.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad("--source", format!("`{kv}` is not key=value")))?;
                let value: toml::Value = v
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .or_else(|_| v.parse::<f64>().map(toml::Value::Float))
                    .unwrap_or_else(|_| toml::Value::String(v.to_string()));
                table.insert(k.to_string(), value);
            }
            let cfg: GeneratorConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| bad("--source generator", e.message().to_string()))?;
            let errors = cfg.validate("");
            if !errors.is_empty() {
                return Err(bad("--source generator", errors.join("; ")));
            }
            p.source(GeneratorSource::new(cfg)?)
        }
        "jsonl" if !arg.is_empty() => p.source(JsonlFileSource::new(JsonlSourceConfig {
            path: arg.into(),
            partitions: 1,
            key_field: None,
        })?),
        "kafka" => {
            let (brokers, topic) = arg
                .rsplit_once('/')
                .filter(|(b, t)| !b.is_empty() && !t.is_empty())
                .ok_or_else(|| bad("--source", "kafka needs kafka:BROKERS/TOPIC"))?;
            let group = format!("weir-sql-{}", dir.display());
            p.source(KafkaSource::new(KafkaSourceConfig::new(brokers, &[topic], group))?)
        }
        other => {
            return Err(bad(
                "--source",
                format!("unknown source `{other}` (expected generator[:k=v,...], jsonl:PATH or kafka:BROKERS/TOPIC)"),
            ))
        }
    })
}

/// Add the sink named by `spec` to `p`.
pub fn with_sink(p: Pipeline, spec: &str, plan: &SqlPlan) -> Result<Pipeline> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "terminal" => p.sink(TerminalSink::new(
            "terminal",
            &TerminalSinkConfig { max_rows: 20 },
        )),
        "null" => p.sink(NullSink::default()),
        "jsonl" if !arg.is_empty() => p.sink(JsonlSink::new(
            "jsonl",
            &JsonlSinkConfig { path: arg.into() },
        )?),
        "sqlite" if !arg.is_empty() => {
            let names: Vec<&str> = plan.output.iter().map(|(_, n)| n.as_str()).collect();
            let mut keys: Vec<String> = plan.window.keys.clone();
            let windowed = plan.window.kind != weir_operators::WindowKind::Continuous;
            if windowed {
                keys.push("window_start".into());
            }
            if let Some(missing) = keys.iter().find(|k| !names.contains(&k.as_str())) {
                return Err(bad(
                    "--sink",
                    format!(
                        "sqlite upserts by the group keys{}: select `{missing}`",
                        if windowed { " and window_start" } else { "" }
                    ),
                ));
            }
            p.sink(SqliteSink::new(
                "sqlite",
                &SqliteSinkConfig {
                    path: PathBuf::from(arg),
                    table: "results".into(),
                    key_columns: keys,
                    create_table: true,
                },
            )?)
        }
        other => {
            return Err(bad(
                "--sink",
                format!(
                    "unknown sink `{other}` (expected terminal, jsonl:DIR, sqlite:PATH or null)"
                ),
            ))
        }
    })
}

/// The DLQ and checkpoints of a `weir sql` run live in its [`SqlState`].
pub fn with_state(p: Pipeline, state: &SqlState) -> Result<Pipeline> {
    Ok(p.dlq(JsonlDlq::new(&JsonlDlqConfig { path: state.dlq() })?)
        .checkpoint_dir(state.checkpoints()))
}
