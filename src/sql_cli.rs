//! `weir sql "<query>" --source <spec> --sink <spec>`: a streaming query with no pipeline file.
//!
//! A spec is `TYPE[:ARG]`, read through the registry ([`crate::registry`]) into the same
//! config as a pipeline file's section of that `type`, so it is checked and opened the same
//! way. ARG is `key=value,...` (that type's config keys) or a shorthand. Source specs:
//! `generator[:key=value,...]`, `jsonl:PATH`, `kafka:BROKERS/TOPIC`. Sink specs: `terminal`
//! (default), `jsonl:DIR`, `parquet:DIR`, `sqlite:PATH` (table `results`, upserted by the
//! group keys and `window_start`, or by the keys alone for a GROUP BY without a window),
//! `null`. Sinks that store checkpoints (postgres, transactional kafka) need a pipeline file. The input schema is the
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

use weir_connectors::JsonlDlqConfig;
use weir_operators::{plan_sql, SchemaConfig, SqlOptions, SqlPlan};
use weir_runtime::error::{Result, WeirError};

use crate::pipeline::Pipeline;
use crate::registry::{DlqConfig, Shorthand, SinkConfig, SinkContext, SourceConfig};

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

/// Add the source named by `spec` (`TYPE[:ARG]`) to `p`, read, checked and opened through
/// the registry as a `[source]` section of that type would be.
pub fn with_source(mut p: Pipeline, spec: &str, state: &SqlState) -> Result<Pipeline> {
    let ctx = Shorthand {
        group_id: format!("weir-sql-{}", state.dir().display()),
        key_columns: Vec::new(),
    };
    let source = SourceConfig::from_spec(spec, &ctx)?;
    p = p.boxed_source(source.component().open()?);
    Ok(p)
}

/// Add the sink named by `spec` (`TYPE[:ARG]`) to `p`, through the registry as for
/// [`with_source`]. A keyed sink upserts by the query's group keys (and `window_start`).
pub fn with_sink(
    p: Pipeline,
    spec: &str,
    schema: &SchemaConfig,
    plan: &SqlPlan,
) -> Result<Pipeline> {
    let mut key_columns: Vec<String> = plan.window.keys.clone();
    let windowed = plan.window.kind != weir_operators::WindowKind::Continuous;
    if windowed {
        key_columns.push("window_start".into());
    }
    let ctx = Shorthand {
        group_id: String::new(),
        key_columns,
    };
    let sink = SinkConfig::from_spec(spec, &ctx)?;
    let colocation = schema.declared_colocation();
    if let Some(out) = crate::pipeline::output_schema(schema, &colocation, &[], Some(plan)) {
        let errors = sink.component().check_columns(&out, "");
        if !errors.is_empty() {
            return Err(bad(
                &format!("--sink {}", sink.type_name()),
                format!(
                    "{} (it upserts by the query's group keys{}: select them)",
                    errors.join("; "),
                    if windowed { " and window_start" } else { "" }
                ),
            ));
        }
    }
    let opened = sink.component().open(&SinkContext {
        name: sink.type_name().to_string(),
        pipeline: PIPELINE,
        source: None,
    })?;
    Ok(p.boxed_sink(opened.writer))
}

/// The DLQ and checkpoints of a `weir sql` run live in its [`SqlState`].
pub fn with_state(p: Pipeline, state: &SqlState) -> Result<Pipeline> {
    let dlq = DlqConfig::Jsonl(JsonlDlqConfig { path: state.dlq() });
    let ctx = crate::registry::DlqContext {
        pipeline: PIPELINE,
        postgres_sink: None,
    };
    Ok(p.boxed_dlq(dlq.component().open(&ctx)?)
        .checkpoint_dir(state.checkpoints()))
}
