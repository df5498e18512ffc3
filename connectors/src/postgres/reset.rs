//! `weir reset` of a pipeline whose checkpoints live in PostgreSQL: under the pipeline's
//! advisory lock taken exclusively (so it refuses while a `weir run` worker of the pipeline
//! holds it shared, or a replay runs), each checkpoint row of the pipeline, and only of that
//! pipeline, is replaced in one transaction by a reset marker
//! ([`weir_runtime::Checkpoint::reset_marker`]): no state, no offset, the same epoch, so the
//! pipeline's epoch-numbered outputs go on without reusing a name.

use std::path::Path;

use weir_runtime::checkpoint::{decode, encode};
use weir_runtime::error::Result;
use weir_runtime::Checkpoint;

use super::config::PostgresSinkConfig;
use super::replay::{error, pg, LockMode, PipelineLock};
use super::sql::{self, CHECKPOINT_TABLE};

/// A stored checkpoint and when it was written (epoch ms), when the store says.
pub type WrittenCheckpoint = (Checkpoint, Option<i64>);

/// The qualified checkpoint table, every stored checkpoint of `pipeline` in it and when each
/// was last written (epoch ms), read without the pipeline's lock (`weir status`: a running
/// worker may move them on meanwhile; each row is read as committed).
pub fn stored_checkpoints(
    config: &PostgresSinkConfig,
    pipeline: &str,
) -> Result<(String, Vec<WrittenCheckpoint>)> {
    let mut client = super::replay::connect(config, "weir status")?;
    let table = sql::qualified(config.schema.as_deref(), CHECKPOINT_TABLE);
    let stored = read(&mut client, &table, pipeline)?;
    Ok((table, stored))
}

/// The checkpoint rows of `pipeline` in `table` (none when the table does not exist yet).
fn read(
    client: &mut postgres::Client,
    table: &str,
    pipeline: &str,
) -> Result<Vec<WrittenCheckpoint>> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map(|r| r.get(0))
        .map_err(|e| pg("look the checkpoint table up", &e))?;
    if !exists {
        return Ok(Vec::new());
    }
    let query = format!(
        "SELECT topic, partition, state, (extract(epoch FROM updated_at) * 1000)::bigint \
         FROM {table} WHERE pipeline = $1 ORDER BY topic, partition"
    );
    let rows = client
        .query(&query, &[&pipeline])
        .map_err(|e| pg("read the pipeline's checkpoints", &e))?;
    rows.iter()
        .map(|r| {
            let (topic, partition): (String, i32) = (r.get(0), r.get(1));
            let state: Vec<u8> = r.get(2);
            let written: Option<i64> = r.get(3);
            let place = format!(
                "postgres {table} (pipeline {pipeline:?}, topic {topic:?}, partition {partition})"
            );
            Ok((decode(&state, Path::new(&place))?, written))
        })
        .collect()
}

/// The checkpoints of one pipeline in PostgreSQL, held for a reset. See the module docs.
pub struct ResetCheckpoints {
    lock: PipelineLock,
    checkpoints: String,
    pipeline: String,
}

impl ResetCheckpoints {
    /// Takes the pipeline's lock exclusively; fails at once, naming the holders, while a
    /// worker or a replay of the pipeline runs.
    pub fn open(config: &PostgresSinkConfig, pipeline: &str) -> Result<Self> {
        let lock = PipelineLock::acquire(config, pipeline, LockMode::Reset)?;
        Ok(Self {
            lock,
            checkpoints: sql::qualified(config.schema.as_deref(), CHECKPOINT_TABLE),
            pipeline: pipeline.to_string(),
        })
    }

    /// The qualified checkpoint table.
    pub fn table(&self) -> &str {
        &self.checkpoints
    }

    /// Every stored checkpoint of the pipeline (none when the table does not exist yet).
    pub fn stored(&mut self) -> Result<Vec<Checkpoint>> {
        let stored = read(&mut self.lock.client, &self.checkpoints, &self.pipeline)?;
        Ok(stored.into_iter().map(|(c, _)| c).collect())
    }

    /// Replace every checkpoint of the pipeline by its reset marker, in one transaction;
    /// returns how many were replaced.
    pub fn replace_with_markers(&mut self) -> Result<usize> {
        let stored = self.stored()?;
        let update = format!(
            "UPDATE {} SET next_offset = 0, state = $4, updated_at = now() \
             WHERE pipeline = $1 AND topic = $2 AND partition = $3",
            self.checkpoints
        );
        let mut markers = Vec::with_capacity(stored.len());
        for c in &stored {
            let mut m = Checkpoint::reset_marker(&self.pipeline, &c.topic, c.partition, c.epoch);
            // Whose staged epoch files the next owner's recovery settles (ARCHITECTURE.md,
            // "Reset").
            m.generation = c.generation;
            markers.push((c.topic.to_string(), c.partition, encode(&m)?));
        }
        let mut tx = self
            .lock
            .client
            .transaction()
            .map_err(|e| pg("begin the reset", &e))?;
        for (topic, partition, state) in &markers {
            let n = tx
                .execute(&update, &[&self.pipeline, topic, partition, state])
                .map_err(|e| pg("replace a checkpoint", &e))?;
            if n != 1 {
                return Err(error(format!(
                    "the checkpoint of {topic}/{partition} disappeared during the reset"
                )));
            }
        }
        tx.commit().map_err(|e| pg("commit the reset", &e))?;
        Ok(markers.len())
    }
}
