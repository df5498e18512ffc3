//! [`PostgresStore`]: the `postgres` sink and checkpoint store in one object (see the module
//! docs of [`super`] for the transaction design).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::Severity;
use postgres::types::ToSql;
use postgres::{Client, Statement};
use tracing::{debug, info, warn};
use weir_runtime::arrow::array::ArrayRef;
use weir_runtime::arrow::datatypes::SchemaRef;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::checkpoint::{decode, encode};
use weir_runtime::error::{ErrorClass, Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{
    Checkpoint, CheckpointStore, Guarantee, Lane, SinkWriter, WriteOutcome, DELETED_COLUMN,
};

use super::config::{check_identifier, PostgresSinkConfig};
use super::errors::{classify, describe};
use super::sql::{self, SqlColumn, CHECKPOINT_TABLE, OWNER_TABLE};
use super::tls::PgConnect;
use super::types::{self, ArrayParam, Column, RowsParam};
use crate::sink_rows;

/// The advisory lock key that serializes weir's DDL across workers ("weir ddl").
pub(crate) const DDL_LOCK: i64 = 0x7765_6972_2064_646c;

/// How long opening a connection may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `postgres` sink and checkpoint store. Clones share everything: give one clone to the
/// executor as a sink and another as its checkpoint store (see [`PostgresStore::checkpoint_store`]
/// and [`CheckpointRole`]).
#[derive(Clone)]
pub struct PostgresStore {
    name: String,
    /// Fixed at construction ([`CheckpointRole`]).
    stores_checkpoints: bool,
    inner: Arc<Mutex<Inner>>,
}

/// What a [`PostgresStore`] is for the pipeline, chosen by whoever builds it (the pipeline
/// builder: at most one sink stores the checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointRole {
    /// The sink and the checkpoint store: each lane's rows commit with its checkpoint, in one
    /// transaction (exactly-once).
    Store,
    /// A sink only: rows commit at `prepare` (idempotent upserts); `load` and `save` are
    /// refused.
    Sink,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("PostgresStore");
        d.field("name", &self.name);
        if let Ok(inner) = self.inner.try_lock() {
            d.field("config", &inner.config)
                .field("pipeline", &inner.pipeline)
                .field("stores_checkpoints", &inner.stores_checkpoints)
                .field("lanes", &inner.lanes.keys().collect::<Vec<_>>());
        }
        d.finish()
    }
}

/// What a write path knows of the batch schema it last wrote.
#[derive(Debug)]
struct Plan {
    schema: SchemaRef,
    columns: Vec<SqlColumn>,
    /// Upserts only: batches without delete flags.
    sql: String,
    /// Upserts and deletes: batches with a [`weir_runtime::DELETED_COLUMN`].
    change_sql: String,
}

/// Rows of one `write`, applied in the lane's open transaction and kept until it commits, so
/// that a lost transaction can be replayed. `rows` are the accepted rows only.
struct Staged {
    plan: Arc<Plan>,
    columns: Vec<Column>,
    /// The delete flags, when the batch had them.
    deleted: Option<Column>,
    rows: Vec<u32>,
}

/// A parameter of a [`LaneStatement`]: an array, sent in PostgreSQL's binary format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneParam {
    Texts(Vec<String>),
    Ints(Vec<i32>),
    BigInts(Vec<i64>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl LaneParam {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            LaneParam::Texts(v) => v,
            LaneParam::Ints(v) => v,
            LaneParam::BigInts(v) => v,
            LaneParam::Bytes(v) => v,
        }
    }
}

/// A statement another participant of the epoch protocol (the PostgreSQL DLQ) runs in a
/// lane's transaction ([`PostgresStore::run_in_lane`]): it commits with the lane's rows and
/// checkpoint, and is replayed with them after a lost transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStatement {
    pub sql: String,
    pub params: Vec<LaneParam>,
    /// Names the participant in errors (`postgres dlq "weir_dead_letters"`).
    pub by: String,
}

fn execute_statement(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    s: &LaneStatement,
) -> Result<u64, postgres::Error> {
    let stmt = statement(client, statements, &s.sql)?;
    let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(LaneParam::as_sql).collect();
    client.execute(&stmt, &params)
}

/// The rows of a batch that were applied, and the refused ones with their reason.
type Applied = (Vec<u32>, Vec<(usize, String)>);

/// A checkpoint saved into the lane's open transaction, not yet committed.
#[derive(Debug, Clone)]
struct Pending {
    topic: String,
    epoch: u64,
    /// The claim it was taken under, checked again when a lost transaction is replayed.
    generation: u64,
    next_offset: i64,
    state: Vec<u8>,
}

/// One lane's connection and transaction.
#[derive(Default)]
struct PgLane {
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// A transaction is open on `client` and holds every `staged` row and the `pending`
    /// checkpoint.
    open: bool,
    staged: Vec<Staged>,
    /// Other participants' statements in the open transaction ([`LaneStatement`]).
    extra: Vec<LaneStatement>,
    pending: Option<Pending>,
    /// A row was refused in this transaction: isolate rows with savepoints until it commits.
    savepoints: bool,
    /// COMMIT was sent but its answer was lost: read the stored epoch before anything else.
    uncertain: bool,
}

impl PgLane {
    /// Forget the connection (dropping it ends the session; the server rolls back).
    fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
        self.open = false;
    }

    /// The transaction committed: nothing is left to replay.
    fn committed(&mut self) {
        self.open = false;
        self.staged.clear();
        self.extra.clear();
        self.pending = None;
        self.savepoints = false;
        self.uncertain = false;
    }

    fn idle(&self) -> bool {
        !self.open
            && self.staged.is_empty()
            && self.extra.is_empty()
            && self.pending.is_none()
            && !self.uncertain
    }
}

/// What a commit whose answer was lost did, judged by the epoch stored afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitOutcome {
    /// The stored checkpoint is the one the transaction saved: it committed.
    Landed,
    /// The stored checkpoint is older (or absent): the transaction rolled back.
    Lost,
    /// A newer checkpoint is stored: another writer owns this partition.
    Superseded(u64),
}

pub(crate) fn commit_outcome(pending_epoch: u64, stored: Option<u64>) -> CommitOutcome {
    match stored {
        Some(s) if s == pending_epoch => CommitOutcome::Landed,
        Some(s) if s > pending_epoch => CommitOutcome::Superseded(s),
        _ => CommitOutcome::Lost,
    }
}

struct Inner {
    name: String,
    pipeline: String,
    config: PostgresSinkConfig,
    /// The parsed URL with its TLS connector.
    connect: PgConnect,
    /// The target table, qualified and quoted.
    table: String,
    /// The checkpoint table, qualified and quoted.
    checkpoints: String,
    /// The lane owners' table ([`OWNER_TABLE`]), qualified and quoted.
    owners: String,
    /// Autocommit connection for DDL, loading checkpoints and checking lost commits.
    control: Option<Client>,
    checkpoint_table_ready: bool,
    /// This object is the pipeline's checkpoint store (the builder's choice, given to
    /// [`PostgresStore::connect_as`]): rows commit with the checkpoint (exactly-once) rather
    /// than at `prepare`.
    stores_checkpoints: bool,
    plan: Option<Arc<Plan>>,
    lanes: BTreeMap<Lane, PgLane>,
}

fn pg_error(sink: &str, doing: &str, e: &postgres::Error) -> WeirError {
    WeirError::Sink {
        sink: sink.to_string(),
        message: format!("{doing}: {}", describe(e)),
        class: classify(e),
    }
}

fn with_class(sink: &str, class: ErrorClass, message: impl std::fmt::Display) -> WeirError {
    WeirError::Sink {
        sink: sink.to_string(),
        message: message.to_string(),
        class,
    }
}

/// `application_name` of a connection, as `pg_stat_activity` shows it (at most 63 bytes).
/// A lane's connection is named by its partition number (`p3`; the global stage's
/// `global`): the topic would often not fit.
fn application_name(pipeline: &str, sink: &str, lane: Option<&Lane>) -> String {
    let mut name = match lane.map(Lane::partition) {
        Some(Some(p)) => format!("weir {pipeline}/{sink} p{p}"),
        Some(None) => format!("weir {pipeline}/{sink} global"),
        None => format!("weir {pipeline}/{sink} control"),
    };
    while name.len() > 63 {
        name.pop();
    }
    name
}

fn open_client(
    connect: &PgConnect,
    application: &str,
    lock_timeout_ms: u64,
) -> Result<Client, postgres::Error> {
    let mut config = connect.config.clone();
    config.application_name(application);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let mut client = connect.connect_with(&config)?;
    client.batch_execute(&format!("SET lock_timeout = '{lock_timeout_ms}ms'"))?;
    Ok(client)
}

fn statement(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql)?;
    statements.insert(sql.to_string(), s.clone());
    Ok(s)
}

/// The converted columns of a batch and its delete flags, if any.
#[derive(Clone, Copy)]
struct Values<'a> {
    columns: &'a [Column],
    deleted: Option<&'a Column>,
}

impl Plan {
    fn sql_for(&self, values: Values<'_>) -> &str {
        if values.deleted.is_some() {
            &self.change_sql
        } else {
            &self.sql
        }
    }
}

/// Upserts (and deletes) `rows` of the converted values with one statement.
fn execute_rows(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    plan: &Plan,
    values: Values<'_>,
    rows: &[u32],
) -> Result<u64, postgres::Error> {
    let stmt = statement(client, statements, plan.sql_for(values))?;
    let arrays: Vec<ArrayParam<'_>> = values
        .columns
        .iter()
        .chain(values.deleted)
        .map(|column| ArrayParam { column, rows })
        .collect();
    let row_numbers = RowsParam(rows);
    let mut params: Vec<&(dyn ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    params.push(&row_numbers);
    client.execute(&stmt, &params)
}

/// Upserts `rows` inside a savepoint; when a row is refused (a `Data` error), splits the rows
/// in halves down to single rows, so that only refused rows are left out. Rows keep their
/// order: the first half is applied before the second.
fn apply_isolating(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    plan: &Plan,
    values: Values<'_>,
    rows: &[u32],
    accepted: &mut Vec<u32>,
    rejected: &mut Vec<(usize, String)>,
) -> Result<(), postgres::Error> {
    // Prepared outside the savepoint: a failure to prepare is not about the rows.
    statement(client, statements, plan.sql_for(values))?;
    client.batch_execute("SAVEPOINT weir_rows")?;
    match execute_rows(client, statements, plan, values, rows) {
        Ok(_) => {
            client.batch_execute("RELEASE SAVEPOINT weir_rows")?;
            accepted.extend_from_slice(rows);
            Ok(())
        }
        Err(e) if classify(&e) == ErrorClass::Data => {
            client.batch_execute("ROLLBACK TO SAVEPOINT weir_rows; RELEASE SAVEPOINT weir_rows")?;
            if let [row] = rows {
                rejected.push((*row as usize, describe(&e)));
                return Ok(());
            }
            let (first, second) = rows.split_at(rows.len() / 2);
            apply_isolating(client, statements, plan, values, first, accepted, rejected)?;
            apply_isolating(client, statements, plan, values, second, accepted, rejected)
        }
        Err(e) => Err(e),
    }
}

/// The lane's generation in `owners` (0: never claimed), share-locked in the transaction
/// open on `client` ([`sql::lane_generation`]).
fn owner_generation(
    client: &mut Client,
    statements: &mut HashMap<String, Statement>,
    owners: &str,
    key: (&String, &str, i32),
) -> Result<u64, postgres::Error> {
    let stmt = statement(client, statements, &sql::lane_generation(owners))?;
    let (pipeline, topic, partition) = key;
    let row = client.query_opt(&stmt, &[pipeline, &topic, &partition])?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// The refusal of a checkpoint whose generation is no longer the lane's.
fn fenced(lane: &Lane, owners: &str, pending: &Pending, current: u64) -> WeirError {
    WeirError::Fenced {
        lane: lane.to_string(),
        message: format!(
            "checkpoint epoch {} of generation {} not saved: {owners} holds generation \
             {current}; this lane's transaction (its rows too) is rolled back",
            pending.epoch, pending.generation
        ),
    }
}

fn save_params<'a>(
    pipeline: &'a String,
    pending: &'a Pending,
    partition: &'a i32,
    epoch: &'a i64,
) -> [&'a (dyn ToSql + Sync); 6] {
    [
        pipeline,
        &pending.topic,
        partition,
        epoch,
        &pending.next_offset,
        &pending.state,
    ]
}

impl Inner {
    fn control(&mut self) -> Result<&mut Client> {
        if self.control.as_ref().is_none_or(|c| c.is_closed()) {
            self.control = None;
            let app = application_name(&self.pipeline, &self.name, None);
            let client = open_client(&self.connect, &app, self.config.lock_timeout_ms)
                .map_err(|e| pg_error(&self.name, "connect", &e))?;
            self.control = Some(client);
        }
        Ok(self.control.as_mut().expect("invariant: connected above"))
    }

    /// Runs `f` on the control connection; on error, drops it (it is reopened when needed).
    fn on_control<T>(
        &mut self,
        doing: &str,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let client = self.control()?;
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.control = None;
                Err(pg_error(&self.name, doing, &e))
            }
        }
    }

    /// Runs DDL on the control connection. Two workers creating the same object at once make
    /// one of them fail with a unique violation: that one retries (and finds it made).
    /// Run DDL (`CREATE ... IF NOT EXISTS`) under a transaction-scoped advisory lock: two
    /// workers starting at once on a fresh database would otherwise race inside PostgreSQL
    /// (`IF NOT EXISTS` is not atomic: the loser fails with a duplicate `pg_type` key).
    fn ddl(&mut self, doing: &str, sql: &str) -> Result<()> {
        let locked = format!("BEGIN; SELECT pg_advisory_xact_lock({DDL_LOCK}); {sql}; COMMIT;");
        self.on_control(doing, |c| {
            let done = c.batch_execute(&locked);
            if done.is_err() {
                let _ = c.batch_execute("ROLLBACK");
            }
            done
        })
        .map_err(|e| match e {
            WeirError::Sink {
                sink,
                message,
                class: ErrorClass::Data,
            } => WeirError::Sink {
                sink,
                message,
                class: ErrorClass::Transient,
            },
            e => e,
        })
    }

    fn create_schema(&mut self) -> Result<()> {
        if let Some(schema) = self.config.schema.clone() {
            if self.config.create_table {
                let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", sql::quote(&schema));
                self.ddl("create the schema", &sql)?;
            }
        }
        Ok(())
    }

    fn ensure_checkpoint_table(&mut self) -> Result<()> {
        if !self.checkpoint_table_ready {
            self.create_schema()?;
            let ddl = sql::create_checkpoint_table(&self.checkpoints);
            self.ddl("create the checkpoint table", &ddl)?;
            // A database from before fencing gets the owners' table here, beside its
            // checkpoints: its lanes have generation 0 until claimed, as their checkpoints.
            let ddl = sql::create_owner_table(&self.owners);
            self.ddl("create the lane owners' table", &ddl)?;
            self.checkpoint_table_ready = true;
        }
        Ok(())
    }

    fn fatal(&self, message: impl std::fmt::Display) -> WeirError {
        WeirError::sink(&self.name, message)
    }

    /// The plan for batches of `schema`: checks names and types, creates the table if asked,
    /// and builds the upsert.
    fn plan_for(&mut self, schema: &SchemaRef) -> Result<Arc<Plan>> {
        if let Some(plan) = &self.plan {
            if Arc::ptr_eq(&plan.schema, schema) || plan.schema.fields() == schema.fields() {
                return Ok(plan.clone());
            }
        }
        let mut columns = Vec::new();
        let mut errors = Vec::new();
        for field in schema.fields() {
            check_identifier(
                &mut errors,
                &format!("column {:?}", field.name()),
                field.name(),
            );
            match types::pg_type(field.data_type()) {
                Some(pg) => columns.push(SqlColumn {
                    name: field.name().clone(),
                    pg,
                }),
                None => errors.push(types::unsupported(field.name(), field.data_type())),
            }
        }
        if !errors.is_empty() {
            return Err(self.fatal(errors.join("; ")));
        }
        let mut keys = Vec::new();
        for key in &self.config.key_columns {
            match columns.iter().position(|c| &c.name == key) {
                Some(i) => keys.push(i),
                None => {
                    return Err(self.fatal(format!(
                        "key column {key:?} is not in the output (columns: {})",
                        columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        let table = self.table.clone();
        if self.config.create_table {
            self.create_schema()?;
            self.ddl(
                "create the table",
                &sql::create_table(&table, &columns, &keys, self.config.fillfactor),
            )?;
        } else {
            let exists = self.on_control("look up the table", |c| {
                c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .map(|row| row.get::<_, bool>(0))
            })?;
            if !exists {
                return Err(self.fatal(format!(
                    "table {table} does not exist and create_table is false"
                )));
            }
        }
        let plan = Arc::new(Plan {
            schema: schema.clone(),
            sql: sql::upsert(&table, &columns, &keys),
            change_sql: sql::upsert_and_delete(&table, &columns, &keys),
            columns,
        });
        self.plan = Some(plan.clone());
        Ok(plan)
    }

    /// The epoch stored for (`topic`, `partition`), read on the control connection.
    fn stored_epoch(&mut self, topic: &str, partition: i32) -> Result<Option<u64>> {
        self.ensure_checkpoint_table()?;
        let sql = sql::load_checkpoint(&self.checkpoints);
        let pipeline = self.pipeline.clone();
        let row = self.on_control("read the stored epoch", |c| {
            c.query_opt(&sql, &[&pipeline, &topic, &partition])
        })?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    /// After a lost COMMIT answer: learn from the stored epoch whether it committed.
    fn resolve_uncertain(&mut self, p: &Lane) -> Result<()> {
        let Some(lane) = self.lanes.get_mut(p) else {
            return Ok(());
        };
        let Some(pending) = lane.pending.clone().filter(|_| lane.uncertain) else {
            lane.uncertain = false;
            return Ok(());
        };
        let (_, partition) = p.checkpoint_key();
        let stored = self.stored_epoch(&pending.topic, partition)?;
        let lane = self.lanes.get_mut(p).expect("invariant: looked up above");
        match commit_outcome(pending.epoch, stored) {
            CommitOutcome::Landed => {
                info!(sink = %self.name, lane = %p, epoch = pending.epoch, "the commit whose answer was lost had landed");
                lane.committed();
                Ok(())
            }
            CommitOutcome::Lost => {
                info!(sink = %self.name, lane = %p, epoch = pending.epoch, "the commit whose answer was lost had not landed: replaying");
                lane.uncertain = false;
                Ok(())
            }
            CommitOutcome::Superseded(stored) => Err(WeirError::Fenced {
                lane: p.to_string(),
                message: format!(
                    "epoch {stored} is stored while this worker committed epoch {}: another \
                     worker owns this lane",
                    pending.epoch
                ),
            }),
        }
    }

    /// Makes lane `p` hold an open transaction with everything it staged: reconnects and
    /// replays after a lost transaction.
    fn ready(&mut self, p: &Lane) -> Result<()> {
        if self.lanes.get(p).is_some_and(|l| l.uncertain) {
            self.resolve_uncertain(p)?;
        }
        let Inner {
            name,
            pipeline,
            config,
            connect,
            checkpoints,
            owners,
            lanes,
            ..
        } = self;
        let lane = lanes.entry(p.clone()).or_default();
        if lane.open && lane.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        lane.open = false;
        if lane.client.as_ref().is_none_or(|c| c.is_closed()) {
            lane.drop_connection();
            let app = application_name(pipeline, name, Some(p));
            let client = open_client(connect, &app, config.lock_timeout_ms)
                .map_err(|e| pg_error(name, "connect", &e))?;
            lane.client = Some(client);
        }
        let replayed = lane.staged.iter().map(|s| s.rows.len()).sum::<usize>();
        let PgLane {
            client,
            statements,
            staged,
            extra,
            pending,
            ..
        } = lane;
        let client = client.as_mut().expect("invariant: connected above");
        // Ok(Some(generation)): the replayed checkpoint's claim is no longer the lane's.
        let result = (|| -> Result<Option<u64>, (&'static str, postgres::Error)> {
            client.batch_execute("BEGIN").map_err(|e| ("begin", e))?;
            for s in staged.iter() {
                let values = Values {
                    columns: &s.columns,
                    deleted: s.deleted.as_ref(),
                };
                execute_rows(client, statements, &s.plan, values, &s.rows)
                    .map_err(|e| ("replay the rows of the lost transaction", e))?;
            }
            for s in extra.iter() {
                execute_statement(client, statements, s)
                    .map_err(|e| ("replay the dead letters of the lost transaction", e))?;
            }
            if let Some(pending) = pending {
                let epoch = pending.epoch as i64;
                let (_, partition) = p.checkpoint_key();
                let key = (&*pipeline, pending.topic.as_str(), partition);
                let current = owner_generation(client, statements, owners, key)
                    .map_err(|e| ("check the lane's generation", e))?;
                if current != pending.generation {
                    return Ok(Some(current));
                }
                let sql = sql::save_checkpoint(checkpoints);
                let stmt = statement(client, statements, &sql).map_err(|e| ("save", e))?;
                client
                    .execute(&stmt, &save_params(pipeline, pending, &partition, &epoch))
                    .map_err(|e| ("replay the checkpoint of the lost transaction", e))?;
            }
            Ok(None)
        })();
        match result {
            Ok(Some(current)) => {
                let error = fenced(
                    p,
                    owners,
                    pending.as_ref().expect("invariant: checked above"),
                    current,
                );
                let _ = client.batch_execute("ROLLBACK");
                lanes.remove(p);
                Err(error)
            }
            Ok(None) => {
                if replayed > 0 || pending.is_some() || !extra.is_empty() {
                    warn!(sink = %name, lane = %p, rows = replayed, statements = extra.len(), checkpoint = pending.is_some(), "replayed a lost transaction");
                }
                lane.open = true;
                Ok(())
            }
            Err((doing, e)) => {
                lane.drop_connection();
                if classify(&e) == ErrorClass::Data {
                    return Err(WeirError::sink(
                        name.as_str(),
                        format!(
                            "{p}: {doing}: a row accepted before the transaction was \
                             lost is refused now ({}); it can no longer go to the DLQ",
                            describe(&e)
                        ),
                    ));
                }
                Err(pg_error(name, doing, &e))
            }
        }
    }

    /// The error of a failed statement in lane `p`. A lock wait that timed out while another
    /// partition of this store holds an open transaction is fatal: the two partitions write
    /// the same key, and the other transaction only commits after this call returns.
    fn lane_error(&self, p: &Lane, doing: &str, e: &postgres::Error) -> WeirError {
        let lock_timeout = e.code().is_some_and(|c| c.code() == "55P03");
        let other_open = self.lanes.iter().any(|(q, l)| q != p && l.open);
        if lock_timeout && other_open {
            return self.fatal(format!(
                "{p}: {doing}: waited {} ms for a row lock held by another lane's \
                 open transaction: two lanes write rows with the same key. The sink's \
                 key_columns must include the key the source partitions by ({})",
                self.config.lock_timeout_ms,
                describe(e)
            ));
        }
        pg_error(&self.name, doing, e)
    }

    /// Applies `rows` of a batch in lane `p`'s transaction; returns the accepted rows and the
    /// refused ones with their reason.
    fn apply_batch(
        &mut self,
        p: &Lane,
        plan: &Arc<Plan>,
        values: Values<'_>,
        rows: &[u32],
    ) -> Result<Applied> {
        self.ready(p)?;
        let lane = self.lanes.get_mut(p).expect("invariant: ready");
        if !lane.savepoints {
            // Optimistic: no savepoint (no subtransaction) on the common path.
            let client = lane.client.as_mut().expect("invariant: ready");
            match execute_rows(client, &mut lane.statements, plan, values, rows) {
                Ok(_) => return Ok((rows.to_vec(), Vec::new())),
                Err(e) if classify(&e) == ErrorClass::Data => {
                    debug!(sink = %self.name, lane = %p, error = %describe(&e), "a row was refused: isolating rows with savepoints until the next commit");
                    lane.savepoints = true;
                    lane.open = false;
                    if client.batch_execute("ROLLBACK").is_err() {
                        lane.drop_connection();
                    }
                    self.ready(p)?;
                }
                Err(e) => {
                    lane.drop_connection();
                    return Err(self.lane_error(p, "upsert", &e));
                }
            }
        }
        let lane = self.lanes.get_mut(p).expect("invariant: ready");
        let client = lane.client.as_mut().expect("invariant: ready");
        let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
        match apply_isolating(
            client,
            &mut lane.statements,
            plan,
            values,
            rows,
            &mut accepted,
            &mut rejected,
        ) {
            Ok(()) => Ok((accepted, rejected)),
            Err(e) => {
                lane.drop_connection();
                Err(self.lane_error(p, "upsert", &e))
            }
        }
    }

    /// Runs another participant's statement in lane `p`'s transaction (opening it), keeping
    /// it to replay after a lost transaction.
    fn run_in_lane(&mut self, p: &Lane, s: LaneStatement) -> Result<()> {
        self.ready(p)?;
        let lane = self.lanes.get_mut(p).expect("invariant: ready");
        let client = lane.client.as_mut().expect("invariant: ready");
        match execute_statement(client, &mut lane.statements, &s) {
            Ok(_) => {
                lane.extra.push(s);
                Ok(())
            }
            Err(e) => {
                lane.drop_connection();
                let class = match classify(&e) {
                    // Refused for what it holds: retrying cannot help, and the rows of the
                    // transaction were rolled back with it (replayed on the next call).
                    ErrorClass::Data => ErrorClass::Fatal,
                    class => class,
                };
                Err(WeirError::Sink {
                    sink: s.by.clone(),
                    message: format!("{p}: in the transaction of {}: {}", self.name, describe(&e)),
                    class,
                })
            }
        }
    }

    fn write(&mut self, p: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        if batch.num_rows() == 0 {
            return Ok(WriteOutcome::default());
        }
        let split = sink_rows(&self.name, batch)?;
        let batch = &split.rows;
        let plan = self.plan_for(&batch.schema())?;
        let mut rejected = Vec::new();
        let mut columns = Vec::with_capacity(plan.columns.len());
        for (i, c) in plan.columns.iter().enumerate() {
            columns.push(
                types::convert(&c.name, batch.column(i), &mut rejected)
                    .map_err(|e| self.fatal(e))?,
            );
        }
        let deleted = match &split.deleted {
            Some(flags) => Some(
                types::convert(
                    DELETED_COLUMN,
                    &(Arc::new(flags.clone()) as ArrayRef),
                    &mut rejected,
                )
                .map_err(|e| self.fatal(e))?,
            ),
            None => None,
        };
        let n = u32::try_from(batch.num_rows())
            .map_err(|_| self.fatal("a batch of more than 2^32 rows"))?;
        let mut refused = vec![false; batch.num_rows()];
        for (row, _) in &rejected {
            refused[*row] = true;
        }
        let rows: Vec<u32> = (0..n).filter(|r| !refused[*r as usize]).collect();
        let accepted = if rows.is_empty() {
            Vec::new()
        } else {
            let values = Values {
                columns: &columns,
                deleted: deleted.as_ref(),
            };
            let (accepted, server) = self.apply_batch(p, &plan, values, &rows)?;
            rejected.extend(server);
            accepted
        };
        // One reason per row (the first), in row order.
        rejected.sort_by_key(|(row, _)| *row);
        rejected.dedup_by_key(|(row, _)| *row);
        let outcome = WriteOutcome {
            accepted: accepted.len(),
            rejected,
        };
        if !accepted.is_empty() {
            self.lanes
                .get_mut(p)
                .expect("invariant: applied in this lane")
                .staged
                .push(Staged {
                    plan,
                    columns,
                    deleted,
                    rows: accepted,
                });
        }
        Ok(outcome)
    }

    /// Commits lane `p`'s transaction. When the answer is lost, reads the stored epoch back to
    /// learn whether it committed.
    fn commit(&mut self, p: &Lane) -> Result<()> {
        if self.lanes.get(p).is_some_and(|l| l.uncertain) {
            // A retry after a lost answer: if that commit landed, nothing is left to do.
            self.resolve_uncertain(p)?;
        }
        if self.lanes.get(p).is_none_or(PgLane::idle) {
            return Ok(());
        }
        self.ready(p)?;
        let lane = self.lanes.get_mut(p).expect("invariant: ready");
        let client = lane.client.as_mut().expect("invariant: ready");
        let Err(e) = client.batch_execute("COMMIT") else {
            lane.committed();
            return Ok(());
        };
        lane.drop_connection();
        let refused = e
            .as_db_error()
            .is_some_and(|db| db.parsed_severity() == Some(Severity::Error));
        if refused {
            // The server answered: the transaction rolled back; replay on retry.
            if classify(&e) == ErrorClass::Data {
                return Err(self.fatal(format!(
                    "{p}: commit: a deferred constraint refused the transaction ({}); \
                     rows refused at commit cannot go to the DLQ: make the constraint immediate",
                    describe(&e)
                )));
            }
            return Err(pg_error(&self.name, "commit", &e));
        }
        if lane.pending.is_none() {
            // No checkpoint to tell: replay (the rows are upserts, so at worst they repeat).
            return Err(pg_error(&self.name, "commit", &e));
        }
        warn!(sink = %self.name, lane = %p, error = %describe(&e), "the answer to COMMIT was lost: reading the stored epoch");
        lane.uncertain = true;
        let error = with_class(
            &self.name,
            ErrorClass::Transient,
            format!(
                "{p}: commit: the connection broke before the answer ({})",
                describe(&e)
            ),
        );
        self.resolve_uncertain(p)?;
        if self.lanes.get(p).is_none_or(PgLane::idle) {
            Ok(())
        } else {
            Err(error)
        }
    }

    fn prepare(&mut self, p: &Lane) -> Result<()> {
        if self.lanes.get(p).is_none_or(PgLane::idle) {
            return Ok(());
        }
        self.ready(p)?;
        if self.stores_checkpoints {
            Ok(())
        } else {
            // Not the checkpoint store: rows commit now (idempotent upserts).
            self.commit(p)
        }
    }

    /// Refuses the checkpoint store's calls when the builder made this store a sink only.
    fn check_stores(&self, doing: &str) -> Result<()> {
        if self.stores_checkpoints {
            return Ok(());
        }
        Err(self.fatal(format!(
            "{doing}: this postgres sink was built as a sink only, not as the pipeline's \
             checkpoint store (PostgresStore::connect_as with CheckpointRole::Store)"
        )))
    }

    fn save(&mut self, c: &Checkpoint) -> Result<()> {
        self.check_stores("save a checkpoint")?;
        self.ensure_checkpoint_table()?;
        let lane = Lane::from_checkpoint_key(&c.topic, c.partition);
        let p = &lane;
        let partition = c.partition;
        let pending = Pending {
            topic: c.topic.to_string(),
            epoch: c.epoch,
            generation: c.generation,
            next_offset: c.next_offset,
            state: encode(c)?,
        };
        let epoch = i64::try_from(c.epoch)
            .map_err(|_| self.fatal(format!("epoch {} does not fit int8", c.epoch)))?;
        self.ready(p)?;
        let Inner {
            name,
            pipeline,
            checkpoints,
            owners,
            lanes,
            ..
        } = self;
        let lane = lanes.get_mut(p).expect("invariant: ready");
        let client = lane.client.as_mut().expect("invariant: ready");
        let statements = &mut lane.statements;
        // The claim is checked in the transaction that holds the lane's rows: refused, both
        // roll back; accepted, a newer claim waits for the commit (the row is share-locked).
        let key = (&*pipeline, pending.topic.as_str(), partition);
        let result = owner_generation(client, statements, owners, key).and_then(|current| {
            if current != pending.generation {
                return Ok(Some(current));
            }
            let sql = sql::save_checkpoint(checkpoints);
            let stmt = statement(client, statements, &sql)?;
            client.execute(&stmt, &save_params(pipeline, &pending, &partition, &epoch))?;
            Ok(None)
        });
        match result {
            Ok(None) => {
                lane.pending = Some(pending);
                Ok(())
            }
            Ok(Some(current)) => {
                let _ = client.batch_execute("ROLLBACK");
                lanes.remove(p);
                Err(fenced(p, owners, &pending, current))
            }
            Err(e) => {
                lane.drop_connection();
                Err(pg_error(name, "save the checkpoint", &e))
            }
        }
    }

    /// Claims the lane on the control connection (autocommit): one upsert that increments
    /// its generation. It waits while a checkpoint checked against the old generation is in
    /// a transaction not yet ended (up to `lock_timeout_ms`, then a transient error).
    fn claim(&mut self, topic: &str, partition: i32) -> Result<u64> {
        self.check_stores("claim a lane")?;
        self.ensure_checkpoint_table()?;
        let sql = sql::claim_lane(&self.owners);
        let pipeline = self.pipeline.clone();
        let row = self.on_control("claim the lane", |c| {
            c.query_one(&sql, &[&pipeline, &topic, &partition])
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn load(&mut self, topic: &str, partition: i32) -> Result<Option<Checkpoint>> {
        self.check_stores("load a checkpoint")?;
        self.ensure_checkpoint_table()?;
        let sql = sql::load_checkpoint(&self.checkpoints);
        let pipeline = self.pipeline.clone();
        let row = self.on_control("load the checkpoint", |c| {
            c.query_opt(&sql, &[&pipeline, &topic, &partition])
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state: Vec<u8> = row.get(1);
        let place = format!(
            "postgres {} (pipeline {pipeline:?}, topic {topic:?}, partition {partition})",
            self.checkpoints
        );
        decode(&state, Path::new(&place)).map(Some)
    }
}

impl PostgresStore {
    /// [`PostgresStore::connect_as`] a sink only ([`CheckpointRole::Sink`]).
    pub fn connect(
        name: impl Into<String>,
        config: &PostgresSinkConfig,
        pipeline: &str,
    ) -> Result<Self> {
        Self::connect_as(name, config, pipeline, CheckpointRole::Sink)
    }

    /// Checks `config`, connects (the control connection) and returns the store of pipeline
    /// `pipeline` (the checkpoint rows' `pipeline` column), in `role`: the pipeline's
    /// checkpoint store too, or a sink only. Lanes get their own connection on first use.
    pub fn connect_as(
        name: impl Into<String>,
        config: &PostgresSinkConfig,
        pipeline: &str,
        role: CheckpointRole,
    ) -> Result<Self> {
        let name = name.into();
        let errors = config.validate("");
        if !errors.is_empty() {
            return Err(WeirError::Sink {
                sink: name,
                message: errors.join("; "),
                class: ErrorClass::Fatal,
            });
        }
        let connect = PgConnect::new(config.url.expose()).map_err(|e| WeirError::Sink {
            sink: name.clone(),
            message: format!("url {}: {e}", config.url),
            class: ErrorClass::Fatal,
        })?;
        let schema = config.schema.as_deref();
        let mut inner = Inner {
            name: name.clone(),
            pipeline: pipeline.to_string(),
            config: config.clone(),
            connect,
            table: sql::qualified(schema, &config.table),
            checkpoints: sql::qualified(schema, CHECKPOINT_TABLE),
            owners: sql::qualified(schema, OWNER_TABLE),
            control: None,
            checkpoint_table_ready: false,
            stores_checkpoints: role == CheckpointRole::Store,
            plan: None,
            lanes: BTreeMap::new(),
        };
        inner.control()?;
        Ok(Self {
            name,
            stores_checkpoints: role == CheckpointRole::Store,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// This store as the pipeline's checkpoint store; an error when it was connected as a
    /// sink only.
    pub fn checkpoint_store(&self) -> Result<Arc<dyn CheckpointStore>> {
        self.lock()?.check_stores("be the checkpoint store")?;
        Ok(Arc::new(self.clone()))
    }

    /// Runs `statement` in `lane`'s transaction: it commits with the lane's rows and
    /// checkpoint (exactly-once with them when this store is the checkpoint store), and is
    /// replayed with them when the transaction is lost. What the PostgreSQL DLQ writes when
    /// the pipeline's sink is this store.
    pub fn run_in_lane(&self, lane: &Lane, statement: LaneStatement) -> Result<()> {
        self.lock()?.run_in_lane(lane, statement)
    }

    /// The parsed connection settings (to tell whether another component's URL names the
    /// same database).
    pub fn connection_config(&self) -> Result<postgres::Config> {
        Ok(self.lock()?.connect.config.clone())
    }

    /// Whether this store was connected as the pipeline's checkpoint store.
    pub fn stores_checkpoints(&self) -> bool {
        self.stores_checkpoints
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| {
            WeirError::sink(
                &self.name,
                "a previous call panicked while holding the store; its state is unknown",
            )
        })
    }
}

impl EpochParticipant for PostgresStore {
    /// Forgets the lane's uncommitted work: the database holds the truth (the stored
    /// checkpoint and the rows committed with it).
    fn recover(&mut self, lane: &Lane, committed_epoch: Option<u64>) -> Result<()> {
        let mut inner = self.lock()?;
        if inner.lanes.remove(lane).is_some() {
            debug!(sink = %self.name, %lane, ?committed_epoch, "dropped uncommitted work");
        }
        Ok(())
    }

    /// Makes sure the lane's transaction is open and holds its rows (replaying them after a
    /// lost connection). When this store is not the checkpoint store, commits them.
    fn prepare(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        self.lock()?.prepare(lane)
    }

    /// Commits the lane's rows and checkpoint.
    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let result = self.lock()?.commit(lane);
        if result.is_ok() {
            debug!(sink = %self.name, %lane, epoch, "committed");
        }
        result
    }
}

impl SinkWriter for PostgresStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantee(&self) -> Guarantee {
        if self.stores_checkpoints {
            Guarantee::ExactlyOnce
        } else {
            Guarantee::IdempotentUpsert
        }
    }

    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        self.lock()?.write(lane, batch)
    }
}

impl CheckpointStore for PostgresStore {
    fn claim(&self, topic: &str, partition: i32) -> Result<u64> {
        self.lock()?.claim(topic, partition)
    }

    fn load(&self, topic: &str, partition: i32) -> Result<Option<Checkpoint>> {
        self.lock()?.load(topic, partition)
    }

    /// Saves the checkpoint into its lane's open transaction; `commit` commits both.
    fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        self.lock()?.save(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_commit_is_judged_by_the_stored_epoch() {
        assert_eq!(commit_outcome(5, Some(5)), CommitOutcome::Landed);
        assert_eq!(commit_outcome(5, Some(4)), CommitOutcome::Lost);
        assert_eq!(commit_outcome(1, None), CommitOutcome::Lost);
        assert_eq!(commit_outcome(5, Some(6)), CommitOutcome::Superseded(6));
    }

    #[test]
    fn the_global_lane_names_its_connection_global() {
        assert_eq!(
            application_name("orders", "pg", Some(&Lane::Global)),
            "weir orders/pg global"
        );
    }

    #[test]
    fn application_names_fit_postgres() {
        assert_eq!(
            application_name("orders", "pg", Some(&Lane::new("t", 3))),
            "weir orders/pg p3"
        );
        assert_eq!(
            application_name("orders", "pg", None),
            "weir orders/pg control"
        );
        let long = application_name(&"é".repeat(40), "pg", Some(&Lane::new("t", 1)));
        assert!(long.len() <= 63, "{long}");
    }
}
