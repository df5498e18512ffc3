//! Rebuilding a read model (`weir replay`): the pipeline lock, the shadow table and the swap.
//!
//! - [`PipelineLock`]: a session-level PostgreSQL advisory lock keyed by the checkpoint table
//!   and the pipeline name ([`sql::pipeline_lock_key`]). `weir run` holds it *shared* (several
//!   workers of one pipeline share its partitions), `weir replay` *exclusive*: a replay refuses
//!   to start while a worker of the pipeline runs, and a worker refuses to start during a
//!   replay. The server drops the lock with the connection, so a SIGKILLed process never
//!   leaves it behind. A pipeline run through the Rust builder does not take the lock, so an
//!   exclusive taker also refuses while a session named like the pipeline's sink connections
//!   (`weir <pipeline>/...`) is connected. Both checks allow a second for a process that just
//!   stopped (its session ends when the server notices).
//! - [`ReplayTarget`]: holds the exclusive lock for the whole replay; starts the shadow table
//!   `<table>__replay` over (dropped, then created `LIKE` the live table when there is one),
//!   with the checkpoints of the pipeline `<name>__replay`; reads those checkpoints back; and
//!   [`ReplayTarget::swap`]s in one transaction: the live table is renamed to
//!   `<table>__replaced` (a previous one is dropped), the shadow table takes the live name, and
//!   the replay's checkpoints become the live pipeline's. Readers see the old table or the new
//!   one: the renames take `ACCESS EXCLUSIVE` locks and commit together.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, NoTls};
use tracing::info;
use weir_runtime::checkpoint::{decode, encode};
use weir_runtime::error::{ErrorClass, Result, WeirError};

use super::config::{check_identifier, PostgresSinkConfig};
use super::errors::describe;
use super::sql::{self, CHECKPOINT_TABLE};

/// Suffix of the table a replay writes into.
pub const SHADOW_SUFFIX: &str = "__replay";
/// Suffix the live table is renamed to by the swap.
pub const REPLACED_SUFFIX: &str = "__replaced";

/// The pipeline name (checkpoint namespace) of a replay of `pipeline`.
pub fn replay_pipeline_name(pipeline: &str) -> String {
    format!("{pipeline}{SHADOW_SUFFIX}")
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a lock or a session of a process that just stopped may take to go away:
/// `SETTLE_TRIES` more looks, `SETTLE_PAUSE` apart.
const SETTLE_TRIES: u32 = 10;
const SETTLE_PAUSE: Duration = Duration::from_millis(100);

pub(super) fn error(message: impl std::fmt::Display) -> WeirError {
    WeirError::Sink {
        sink: "postgres".into(),
        message: message.to_string(),
        class: ErrorClass::Fatal,
    }
}

pub(super) fn pg(doing: &str, e: &postgres::Error) -> WeirError {
    error(format!("{doing}: {}", describe(e)))
}

pub(super) fn connect(config: &PostgresSinkConfig, application: &str) -> Result<Client> {
    let mut c = postgres::Config::from_str(config.url.expose())
        .map_err(|e| error(format!("url {}: {}", config.url, describe(&e))))?;
    c.application_name(application);
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(CONNECT_TIMEOUT);
    }
    c.connect(NoTls).map_err(|e| {
        error(format!(
            "cannot connect to {}: {}",
            config.url,
            describe(&e)
        ))
    })
}

/// Shared (`weir run`) or exclusive (`weir replay`, `weir reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
    /// Exclusive, for `weir reset` (the errors say so).
    Reset,
    /// Exclusive, for `weir dlq replay` (the errors say so).
    DlqReplay,
}

/// The advisory lock of a pipeline, held as long as this value (its connection) lives.
pub struct PipelineLock {
    pub(super) client: Client,
    pipeline: String,
}

impl std::fmt::Debug for PipelineLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineLock")
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

impl PipelineLock {
    /// Takes the lock of `pipeline` in the checkpoint namespace of `config`, or fails at once
    /// (never waits) naming the sessions that hold it.
    pub fn acquire(config: &PostgresSinkConfig, pipeline: &str, mode: LockMode) -> Result<Self> {
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(error(errors.join("; ")));
        }
        let role = match mode {
            LockMode::Shared => "run",
            LockMode::Exclusive => "replay",
            LockMode::Reset => "reset",
            LockMode::DlqReplay => "dlq replay",
        };
        let mut app = format!("weir {role} {pipeline}");
        while app.len() > 63 {
            app.pop();
        }
        let mut client = connect(config, &app)?;
        let key = sql::pipeline_lock_key(
            &sql::qualified(config.schema.as_deref(), CHECKPOINT_TABLE),
            pipeline,
        );
        // A process that just exited may still hold the lock for a moment (its server
        // session ends when the server notices the closed connection): try for a while.
        let mut got = false;
        for attempt in 0..=SETTLE_TRIES {
            if attempt > 0 {
                std::thread::sleep(SETTLE_PAUSE);
            }
            got = client
                .query_one(sql::try_advisory_lock(mode == LockMode::Shared), &[&key])
                .map_err(|e| pg("take the pipeline lock", &e))?
                .get(0);
            if got {
                break;
            }
        }
        if !got {
            let holders: Vec<String> = client
                .query(sql::ADVISORY_LOCK_HOLDERS, &[&key])
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let app: String = r.get(0);
                            let pid: i32 = r.get(1);
                            let mode: String = r.get(2);
                            format!("{app:?} (pid {pid}, {mode})")
                        })
                        .collect()
                })
                .unwrap_or_default();
            let who = if holders.is_empty() {
                String::new()
            } else {
                format!("; held by {}", holders.join(", "))
            };
            return Err(error(match mode {
                LockMode::Shared => format!(
                    "pipeline {pipeline:?}: a `weir replay` of this pipeline is rebuilding its \
                     table (it holds the pipeline's PostgreSQL advisory lock{who}); start the \
                     worker once the replay has finished"
                ),
                LockMode::Exclusive => format!(
                    "pipeline {pipeline:?} looks like it is running: a `weir run` worker of it \
                     (or another replay) holds the pipeline's PostgreSQL advisory lock{who}; stop \
                     every worker of the pipeline before replaying it"
                ),
                LockMode::Reset => format!(
                    "pipeline {pipeline:?} looks like it is running: a `weir run` worker of it \
                     (or a replay) holds the pipeline's PostgreSQL advisory lock{who}; stop \
                     every worker of the pipeline before resetting it"
                ),
                LockMode::DlqReplay => format!(
                    "pipeline {pipeline:?} looks like it is running: a `weir run` worker of it \
                     (or a replay) holds the pipeline's PostgreSQL advisory lock{who}; stop \
                     every worker of the pipeline before replaying its dead letters"
                ),
            }));
        }
        if mode != LockMode::Shared {
            // Sinks of the pipeline that run without the lock (a pipeline built in Rust, an
            // older worker) still name their connections after it.
            let prefix = sql::store_application_prefix(pipeline);
            let mut sessions = Vec::new();
            for attempt in 0..=SETTLE_TRIES {
                if attempt > 0 {
                    std::thread::sleep(SETTLE_PAUSE);
                }
                sessions = client
                    .query(sql::SESSIONS_NAMED, &[&prefix])
                    .map_err(|e| pg("look for sessions of the pipeline", &e))?
                    .iter()
                    .map(|r| {
                        let app: String = r.get(0);
                        let pid: i32 = r.get(1);
                        format!("{app:?} (pid {pid})")
                    })
                    .collect::<Vec<String>>();
                if sessions.is_empty() {
                    break;
                }
            }
            if !sessions.is_empty() {
                return Err(error(format!(
                    "pipeline {pipeline:?} looks like it is running: its sink is connected to PostgreSQL ({}); stop it before {}",
                    sessions.join(", "),
                    match mode {
                        LockMode::Reset => "resetting it",
                        LockMode::DlqReplay => "replaying its dead letters",
                        _ => "replaying it",
                    }
                )));
            }
        }
        info!(pipeline, ?mode, "took the pipeline lock");
        Ok(Self {
            client,
            pipeline: pipeline.to_string(),
        })
    }
}

/// One partition after the swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedCheckpoint {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub epoch: u64,
}

/// What [`ReplayTarget::swap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapSummary {
    /// The live table existed and was renamed to this name (in its schema).
    pub replaced: Option<String>,
    /// The checkpoints the live pipeline now resumes from.
    pub checkpoints: Vec<MovedCheckpoint>,
}

/// The PostgreSQL side of a replay of one pipeline. See the module docs.
pub struct ReplayTarget {
    lock: PipelineLock,
    config: PostgresSinkConfig,
    live_pipeline: String,
    replay_pipeline: String,
    /// Qualified, quoted names.
    live: String,
    shadow: String,
    replaced: String,
    checkpoints: String,
    /// Bare names.
    shadow_name: String,
    replaced_name: String,
}

impl std::fmt::Debug for ReplayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayTarget")
            .field("live", &self.live)
            .field("shadow", &self.shadow)
            .field("live_pipeline", &self.live_pipeline)
            .finish()
    }
}

impl ReplayTarget {
    /// Checks the names, connects and takes the pipeline's lock exclusively.
    pub fn open(config: &PostgresSinkConfig, pipeline: &str) -> Result<Self> {
        let shadow_name = format!("{}{SHADOW_SUFFIX}", config.table);
        let replaced_name = format!("{}{REPLACED_SUFFIX}", config.table);
        let mut errors = Vec::new();
        check_identifier(&mut errors, "the shadow table", &shadow_name);
        check_identifier(&mut errors, "the replaced table", &replaced_name);
        if !errors.is_empty() {
            return Err(error(format!(
                "table {:?}: the name is too long to replay: {}",
                config.table,
                errors.join("; ")
            )));
        }
        let lock = PipelineLock::acquire(config, pipeline, LockMode::Exclusive)?;
        let schema = config.schema.as_deref();
        Ok(Self {
            lock,
            config: config.clone(),
            live_pipeline: pipeline.to_string(),
            replay_pipeline: replay_pipeline_name(pipeline),
            live: sql::qualified(schema, &config.table),
            shadow: sql::qualified(schema, &shadow_name),
            replaced: sql::qualified(schema, &replaced_name),
            checkpoints: sql::qualified(schema, CHECKPOINT_TABLE),
            shadow_name,
            replaced_name,
        })
    }

    /// The replay's pipeline name: its checkpoint rows are keyed by it.
    pub fn replay_pipeline(&self) -> &str {
        &self.replay_pipeline
    }

    /// The sink config the replay writes with: the shadow table.
    pub fn shadow_config(&self) -> PostgresSinkConfig {
        PostgresSinkConfig {
            table: self.shadow_name.clone(),
            create_table: true,
            ..self.config.clone()
        }
    }

    /// The shadow table as a bare name.
    pub fn shadow_table(&self) -> &str {
        &self.shadow_name
    }

    fn client(&mut self) -> &mut Client {
        &mut self.lock.client
    }

    fn exists(&mut self, qualified: &str) -> Result<bool> {
        self.lock
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .map(|r| r.get(0))
            .map_err(|e| pg("look the table up", &e))
    }

    /// Starts the shadow over: drops the table and the replay's checkpoints a previous
    /// (interrupted) replay left, and creates the shadow table like the live one when that
    /// exists (else the sink creates it from the first batch, as for a first run).
    pub fn reset_shadow(&mut self) -> Result<()> {
        let mut ddl = Vec::new();
        if let Some(schema) = &self.config.schema {
            if self.config.create_table {
                ddl.push(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    sql::quote(schema)
                ));
            }
        }
        ddl.push(sql::create_checkpoint_table(&self.checkpoints));
        ddl.push(format!("DROP TABLE IF EXISTS {}", self.shadow));
        for statement in &ddl {
            self.client()
                .batch_execute(statement)
                .map_err(|e| pg("prepare the shadow table", &e))?;
        }
        let delete = sql::delete_checkpoints(&self.checkpoints);
        let pipeline = self.replay_pipeline.clone();
        self.client()
            .execute(&delete, &[&pipeline])
            .map_err(|e| pg("delete the checkpoints of a previous replay", &e))?;
        let live = self.live.clone();
        if self.exists(&live)? {
            let like = sql::create_table_like(&self.shadow, &self.live, self.config.fillfactor);
            self.client()
                .batch_execute(&like)
                .map_err(|e| pg("create the shadow table", &e))?;
        } else if !self.config.create_table {
            return Err(error(format!(
                "table {live} does not exist and the sink has create_table = false: create it \
                 first (the replay copies its definition)"
            )));
        }
        Ok(())
    }

    /// The replay's stored next offsets, by (topic, partition).
    pub fn stored_offsets(&mut self) -> Result<BTreeMap<(String, i32), i64>> {
        let query = format!(
            "SELECT topic, partition, next_offset FROM {} WHERE pipeline = $1",
            self.checkpoints
        );
        let pipeline = self.replay_pipeline.clone();
        let rows = self
            .client()
            .query(&query, &[&pipeline])
            .map_err(|e| pg("read the replay's checkpoints", &e))?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// In one transaction: the live table becomes `<table>__replaced` (a previous one is
    /// dropped), the shadow table takes the live name, and the replay's checkpoints replace
    /// the live pipeline's. Each moved checkpoint is rewritten with the live pipeline's name
    /// and, when the live pipeline had a checkpoint of that partition, its epoch, so that the
    /// live pipeline's epoch-numbered outputs (a JSONL DLQ's files) go on from where they
    /// were instead of reusing names.
    pub fn swap(&mut self) -> Result<SwapSummary> {
        let live_exists = {
            let live = self.live.clone();
            self.exists(&live)?
        };
        let Self {
            lock,
            live_pipeline,
            replay_pipeline,
            live,
            shadow,
            replaced,
            checkpoints,
            replaced_name,
            config,
            ..
        } = self;
        let table_name = config.table.clone();
        let mut tx = lock
            .client
            .transaction()
            .map_err(|e| pg("begin the swap", &e))?;
        let select = sql::pipeline_checkpoints(checkpoints);
        // Per live lane: its epoch, and the generation that wrote it (the owner whose staged
        // epoch files `recover` may still publish; ARCHITECTURE.md, "Checkpoint protocol").
        let mut live_epochs: BTreeMap<(String, i32), (i64, u64)> = BTreeMap::new();
        for r in tx
            .query(&select, &[&live_pipeline.as_str()])
            .map_err(|e| pg("read the live checkpoints", &e))?
        {
            let (topic, partition): (String, i32) = (r.get(0), r.get(1));
            let place = format!(
                "postgres {checkpoints} (pipeline {live_pipeline:?}, topic {topic:?}, partition {partition})"
            );
            let state: Vec<u8> = r.get(4);
            let generation = decode(&state, Path::new(&place))?.generation;
            live_epochs.insert((topic, partition), (r.get(2), generation));
        }
        let replayed = tx
            .query(&select, &[&replay_pipeline.as_str()])
            .map_err(|e| pg("read the replay's checkpoints", &e))?;
        let mut moved = Vec::new();
        let mut rows = Vec::new();
        for r in &replayed {
            let topic: String = r.get(0);
            let partition: i32 = r.get(1);
            let state: Vec<u8> = r.get(4);
            let place = format!(
                "postgres {checkpoints} (pipeline {replay_pipeline:?}, topic {topic:?}, partition {partition})"
            );
            let mut c = decode(&state, Path::new(&place))?;
            c.pipeline = live_pipeline.clone();
            if let Some((e, generation)) = live_epochs.get(&(topic.clone(), partition)) {
                c.epoch = u64::try_from(*e).unwrap_or(c.epoch);
                c.generation = *generation;
            }
            let epoch = i64::try_from(c.epoch)
                .map_err(|_| error(format!("{place}: epoch {} does not fit int8", c.epoch)))?;
            moved.push(MovedCheckpoint {
                topic: topic.clone(),
                partition,
                next_offset: c.next_offset,
                epoch: c.epoch,
            });
            rows.push((topic, partition, epoch, c.next_offset, encode(&c)?));
        }
        let delete = sql::delete_checkpoints(checkpoints);
        for pipeline in [live_pipeline.as_str(), replay_pipeline.as_str()] {
            tx.execute(&delete, &[&pipeline])
                .map_err(|e| pg("delete the old checkpoints", &e))?;
        }
        let save = sql::save_checkpoint(checkpoints);
        for (topic, partition, epoch, next_offset, state) in &rows {
            tx.execute(
                &save,
                &[
                    &live_pipeline.as_str(),
                    topic,
                    partition,
                    epoch,
                    next_offset,
                    state,
                ],
            )
            .map_err(|e| pg("store the moved checkpoints", &e))?;
        }
        let renames = [
            format!("DROP TABLE IF EXISTS {replaced}"),
            sql::rename_table(live, replaced_name),
            sql::rename_table(shadow, &table_name),
        ];
        for statement in &renames {
            tx.batch_execute(statement)
                .map_err(|e| pg("swap the tables", &e))?;
        }
        tx.commit().map_err(|e| pg("commit the swap", &e))?;
        info!(pipeline = %live_pipeline, table = %live, "replayed table swapped in");
        Ok(SwapSummary {
            replaced: live_exists.then(|| replaced_name.clone()),
            checkpoints: moved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_has_its_own_checkpoint_namespace() {
        assert_eq!(replay_pipeline_name("orders"), "orders__replay");
    }
}
