//! The `postgres` dead-letter queue: one row per dead letter in a table (created if missing),
//! keyed by the stable dead-letter id.
//!
//! When the pipeline's sink is PostgreSQL and the DLQ's `url` names the same database (host,
//! port, database and user), dead letters are written in the sink's lane transaction
//! ([`PostgresStore::run_in_lane`]): they commit together with the lane's rows and its
//! checkpoint, so they are exactly-once with the output. Otherwise the DLQ writes in
//! transactions of its own: a lane's dead letters are inserted at `prepare` (before its
//! checkpoint is stored), and since a letter written again after a crash has the same id, the
//! upsert keeps one row per letter (effectively once).
//!
//! Columns: `id` (primary key), `pipeline`, `topic`, `partition`, `offset`, `key` and
//! `payload` (the original bytes, `bytea`), `kind`, `stage` (`decode`, `operator:<id>`,
//! `sink:<id>`), `message`, `attempts`, `first_failure_at` and `last_failure_at`
//! (`timestamptz`, millisecond precision) and `replayed_at` (set by `weir dlq replay` when
//! the letter's message went through; a letter written again under its id is pending again).

use std::collections::{BTreeMap, HashMap};

use postgres::Client;
use serde::Deserialize;
use tracing::info;
use weir_runtime::error::{ErrorClass, Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{DeadLetter, DlqWriter, ErrorKind, Lane, Stage};

use super::config::{check_identifier, PostgresUrl};
use super::errors::{classify, describe};
use super::sql::{qualified, quote};
use super::store::{LaneParam, LaneStatement, PostgresStore, DDL_LOCK};
use super::tls::PgConnect;
use crate::config_key;
use crate::dlq_records::DeadLetterRecord;

/// The table of the dead letters when `[dlq] table` is not given.
pub const DEFAULT_DLQ_TABLE: &str = "weir_dead_letters";

fn default_table() -> String {
    DEFAULT_DLQ_TABLE.to_string()
}

/// Configuration of the `postgres` dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresDlqConfig {
    /// Where to connect (as the `postgres` sink's `url`; the password is never shown). The
    /// same database as a `postgres` sink's: dead letters commit in its transactions.
    pub url: PostgresUrl,
    /// The table of the dead letters (created when absent).
    #[serde(default = "default_table")]
    pub table: String,
    /// The schema of the table (created when absent); the connection's `search_path` when
    /// absent.
    #[serde(default)]
    pub schema: Option<String>,
}

impl PostgresDlqConfig {
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            url: PostgresUrl::new(url),
            table: table.into(),
            schema: None,
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines. Pure: nothing is connected.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.url.expose().trim().is_empty() {
            errors.push(format!("{}: must not be empty", key("url")));
        } else {
            match super::tls::parse(self.url.expose()) {
                Err(e) => errors.push(format!("{}: {e}: {}", key("url"), self.url)),
                Ok((c, _)) if c.get_hosts().is_empty() && c.get_hostaddrs().is_empty() => errors
                    .push(format!(
                        "{}: names no host (e.g. postgres://user@127.0.0.1:5432/db): {}",
                        key("url"),
                        self.url
                    )),
                Ok(_) => {}
            }
        }
        check_identifier(&mut errors, &key("table"), &self.table);
        if let Some(schema) = &self.schema {
            check_identifier(&mut errors, &key("schema"), schema);
        }
        errors
    }

    /// The table, qualified and quoted.
    pub fn qualified_table(&self) -> String {
        qualified(self.schema.as_deref(), &self.table)
    }
}

/// Whether two connection settings name the same database as the same user.
fn same_database(a: &postgres::Config, b: &postgres::Config) -> bool {
    let ports = |c: &postgres::Config| -> Vec<u16> {
        match c.get_ports() {
            [] => vec![5432],
            p => p.to_vec(),
        }
    };
    a.get_hosts() == b.get_hosts()
        && a.get_hostaddrs() == b.get_hostaddrs()
        && ports(a) == ports(b)
        && a.get_dbname() == b.get_dbname()
        && a.get_user() == b.get_user()
}

fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
         id text PRIMARY KEY, \
         pipeline text NOT NULL, \
         topic text NOT NULL, \
         \"partition\" integer NOT NULL, \
         \"offset\" bigint NOT NULL, \
         key bytea, \
         payload bytea, \
         kind text NOT NULL, \
         stage text NOT NULL, \
         message text NOT NULL, \
         attempts integer NOT NULL, \
         first_failure_at timestamptz NOT NULL, \
         last_failure_at timestamptz NOT NULL, \
         replayed_at timestamptz)"
    )
}

/// One statement for many letters: the columns as arrays, `unnest`ed; a letter whose id is
/// there already replaces it (keeping the earlier first failure) and is pending again.
fn insert_sql(table: &str) -> String {
    let ms = |c: &str| format!("timestamptz 'epoch' + u.{c} * interval '1 millisecond'");
    format!(
        "INSERT INTO {table} AS d (id, pipeline, topic, \"partition\", \"offset\", key, payload, \
         kind, stage, message, attempts, first_failure_at, last_failure_at, replayed_at) \
         SELECT u.id, u.pipeline, u.topic, u.p, u.o, u.k, u.v, u.kind, u.stage, u.message, \
         u.attempts, {}, {}, NULL \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::bytea[], \
         $7::bytea[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[], $13::int8[]) \
         AS u(id, pipeline, topic, p, o, k, v, kind, stage, message, attempts, first_ms, last_ms) \
         ON CONFLICT (id) DO UPDATE SET pipeline = EXCLUDED.pipeline, topic = EXCLUDED.topic, \
         \"partition\" = EXCLUDED.\"partition\", \"offset\" = EXCLUDED.\"offset\", \
         key = EXCLUDED.key, payload = EXCLUDED.payload, kind = EXCLUDED.kind, \
         stage = EXCLUDED.stage, message = EXCLUDED.message, attempts = EXCLUDED.attempts, \
         first_failure_at = LEAST(d.first_failure_at, EXCLUDED.first_failure_at), \
         last_failure_at = EXCLUDED.last_failure_at, replayed_at = NULL",
        ms("first_ms"),
        ms("last_ms")
    )
}

fn mark_sql(table: &str) -> String {
    format!("UPDATE {table} SET replayed_at = now() WHERE id = ANY($1::text[])")
}

fn select_sql(table: &str) -> String {
    let ms = |c: &str| format!("(extract(epoch FROM {c}) * 1000)::int8");
    format!(
        "SELECT id, pipeline, topic, \"partition\", \"offset\", key, payload, kind, stage, \
         message, attempts, {}, {}, {} FROM {table} WHERE pipeline = $1 \
         ORDER BY last_failure_at, id",
        ms("first_failure_at"),
        ms("last_failure_at"),
        ms("replayed_at")
    )
}

/// Text PostgreSQL can hold (no NUL character).
fn text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

/// The insert of `letters` (the last of an id wins).
fn insert_statement(table: &str, by: &str, letters: &[DeadLetter]) -> LaneStatement {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, l) in letters.iter().enumerate() {
        last.insert(l.id(), i);
    }
    let mut keep: Vec<(String, usize)> = last.into_iter().collect();
    keep.sort_by_key(|(_, i)| *i);
    let pick = |f: &dyn Fn(&DeadLetter) -> String| -> Vec<String> {
        keep.iter().map(|(_, i)| text(&f(&letters[*i]))).collect()
    };
    let ids = keep.iter().map(|(id, _)| id.clone()).collect();
    let at = |i: &usize| &letters[*i];
    LaneStatement {
        sql: insert_sql(table),
        params: vec![
            LaneParam::Texts(ids),
            LaneParam::Texts(pick(&|l| l.pipeline.to_string())),
            LaneParam::Texts(pick(&|l| l.topic.to_string())),
            LaneParam::Ints(keep.iter().map(|(_, i)| at(i).partition).collect()),
            LaneParam::BigInts(keep.iter().map(|(_, i)| at(i).offset).collect()),
            LaneParam::Bytes(keep.iter().map(|(_, i)| at(i).key.clone()).collect()),
            LaneParam::Bytes(keep.iter().map(|(_, i)| at(i).payload.clone()).collect()),
            LaneParam::Texts(pick(&|l| l.kind.as_str().to_string())),
            LaneParam::Texts(pick(&|l| l.stage.text())),
            LaneParam::Texts(pick(&|l| l.message.clone())),
            LaneParam::Ints(
                keep.iter()
                    .map(|(_, i)| i32::try_from(at(i).attempts).unwrap_or(i32::MAX))
                    .collect(),
            ),
            LaneParam::BigInts(keep.iter().map(|(_, i)| at(i).first_failure_ms).collect()),
            LaneParam::BigInts(keep.iter().map(|(_, i)| at(i).time_ms).collect()),
        ],
        by: by.to_string(),
    }
}

fn mark_statement(table: &str, by: &str, ids: &[String]) -> LaneStatement {
    LaneStatement {
        sql: mark_sql(table),
        params: vec![LaneParam::Texts(ids.to_vec())],
        by: by.to_string(),
    }
}

fn run(
    client: &mut impl postgres::GenericClient,
    s: &LaneStatement,
) -> std::result::Result<u64, postgres::Error> {
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = s
        .params
        .iter()
        .map(|p| match p {
            LaneParam::Texts(v) => v as &(dyn postgres::types::ToSql + Sync),
            LaneParam::Ints(v) => v,
            LaneParam::BigInts(v) => v,
            LaneParam::Bytes(v) => v,
        })
        .collect();
    client.execute(s.sql.as_str(), &params)
}

fn connect(connect: &PgConnect, application: &str) -> std::result::Result<Client, postgres::Error> {
    let mut config = connect.config.clone();
    config.application_name(application);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    connect.connect_with(&config)
}

/// The writer's connection is named like the pipeline's sink connections (`weir <name>/...`:
/// `weir reset` and `weir replay` see a running pipeline by them); readers' are not.
fn application_name(pipeline: &str) -> String {
    truncated(format!("weir {pipeline}/dlq"))
}

fn reader_name(pipeline: &str) -> String {
    truncated(format!("weir dlq reader {pipeline}"))
}

fn truncated(mut name: String) -> String {
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The `postgres` dead-letter queue. See the module docs.
pub struct PostgresDlq {
    /// Names it in errors: `postgres dlq "weir_dead_letters"`.
    name: String,
    /// The table, qualified and quoted.
    table: String,
    connect: PgConnect,
    application: String,
    client: Option<Client>,
    /// The sink's store whose lane transactions the letters join, when it is the same
    /// database.
    shared: Option<PostgresStore>,
    /// Own transactions: letters per lane not yet inserted (at `prepare`), and replay marks
    /// not yet applied (at `commit`).
    pending: BTreeMap<Lane, Vec<DeadLetter>>,
    marks: BTreeMap<Lane, Vec<String>>,
}

impl std::fmt::Debug for PostgresDlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDlq")
            .field("name", &self.name)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

fn error(name: &str, doing: &str, e: &postgres::Error) -> WeirError {
    WeirError::Sink {
        sink: name.to_string(),
        message: format!("{doing}: {}", describe(e)),
        class: match classify(e) {
            ErrorClass::Data => ErrorClass::Fatal,
            c => c,
        },
    }
}

impl PostgresDlq {
    /// Checks `config`, connects, creates the table (and schema) when absent. `sink` is the
    /// pipeline's `postgres` sink, if any: when it names the same database, the letters are
    /// written in its lane transactions.
    pub fn connect(
        config: &PostgresDlqConfig,
        pipeline: &str,
        sink: Option<&PostgresStore>,
    ) -> Result<Self> {
        let errors = config.validate("dlq");
        if !errors.is_empty() {
            return Err(WeirError::Config(errors.join("; ")));
        }
        let name = format!("postgres dlq {}", config.qualified_table());
        let connect = PgConnect::new(config.url.expose())
            .map_err(|e| WeirError::Config(format!("dlq.url {}: {e}", config.url)))?;
        let shared = match sink {
            Some(store) if same_database(&store.connection_config()?, &connect.config) => {
                Some(store.clone())
            }
            _ => None,
        };
        let mut dlq = Self {
            table: config.qualified_table(),
            application: application_name(pipeline),
            name,
            connect,
            client: None,
            shared,
            pending: BTreeMap::new(),
            marks: BTreeMap::new(),
        };
        let mut ddl = String::from("BEGIN; ");
        ddl.push_str(&format!("SELECT pg_advisory_xact_lock({DDL_LOCK}); "));
        if let Some(schema) = &config.schema {
            ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {}; ", quote(schema)));
        }
        ddl.push_str(&create_table_sql(&dlq.table));
        ddl.push_str("; COMMIT;");
        dlq.on_client("create the table", |c| {
            let done = c.batch_execute(&ddl);
            if done.is_err() {
                let _ = c.batch_execute("ROLLBACK");
            }
            done
        })?;
        if dlq.shared.is_some() {
            info!(dlq = %dlq.name, "dead letters commit in the postgres sink's transactions");
        }
        Ok(dlq)
    }

    /// Whether dead letters are written in the sink's transactions (exactly-once with them).
    pub fn shares_the_sink_transaction(&self) -> bool {
        self.shared.is_some()
    }

    fn on_client<T>(
        &mut self,
        doing: &str,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(
                connect(&self.connect, &self.application)
                    .map_err(|e| error(&self.name, "connect", &e))?,
            );
        }
        let client = self.client.as_mut().expect("invariant: connected above");
        f(client).map_err(|e| {
            self.client = None;
            error(&self.name, doing, &e)
        })
    }
}

impl EpochParticipant for PostgresDlq {
    fn recover(&mut self, lane: &Lane, _committed_epoch: Option<u64>) -> Result<()> {
        self.pending.remove(lane);
        self.marks.remove(lane);
        Ok(())
    }

    /// Own transactions: inserts the lane's letters (before the checkpoint is stored).
    fn prepare(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        let Some(letters) = self.pending.get(lane).filter(|l| !l.is_empty()) else {
            return Ok(());
        };
        let s = insert_statement(&self.table, &self.name, letters);
        self.on_client("insert dead letters", |c| {
            let mut t = c.transaction()?;
            run(&mut t, &s)?;
            t.commit()
        })?;
        self.pending.remove(lane);
        Ok(())
    }

    /// Own transactions: applies the lane's replay marks (after the sinks committed).
    fn commit(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        let Some(ids) = self.marks.get(lane).filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        let s = mark_statement(&self.table, &self.name, ids);
        self.on_client("mark dead letters replayed", |c| run(c, &s))?;
        self.marks.remove(lane);
        Ok(())
    }
}

impl DlqWriter for PostgresDlq {
    fn write(&mut self, lane: &Lane, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match &self.shared {
            Some(store) => {
                store.run_in_lane(lane, insert_statement(&self.table, &self.name, letters))
            }
            None => {
                self.pending
                    .entry(lane.clone())
                    .or_default()
                    .extend_from_slice(letters);
                Ok(())
            }
        }
    }

    fn mark_replayed(&mut self, lane: &Lane, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match &self.shared {
            Some(store) => store.run_in_lane(lane, mark_statement(&self.table, &self.name, ids)),
            None => {
                self.marks
                    .entry(lane.clone())
                    .or_default()
                    .extend_from_slice(ids);
                Ok(())
            }
        }
    }
}

/// A connection to the DLQ's database for `pipeline`'s reader, with the table's name and the
/// DLQ's, or `None` when the table does not exist.
fn open_table(
    config: &PostgresDlqConfig,
    pipeline: &str,
) -> Result<Option<(Client, String, String)>> {
    let errors = config.validate("dlq");
    if !errors.is_empty() {
        return Err(WeirError::Config(errors.join("; ")));
    }
    let table = config.qualified_table();
    let name = format!("postgres dlq {table}");
    let pg = PgConnect::new(config.url.expose())
        .map_err(|e| WeirError::Config(format!("dlq.url {}: {e}", config.url)))?;
    let mut client =
        connect(&pg, &reader_name(pipeline)).map_err(|e| error(&name, "connect", &e))?;
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map_err(|e| error(&name, "look up the table", &e))?
        .get(0);
    Ok(exists.then_some((client, table, name)))
}

/// Every dead letter of `pipeline` in the DLQ table (none when the table does not exist),
/// ordered by last failure time.
pub fn read_dead_letters(
    config: &PostgresDlqConfig,
    pipeline: &str,
) -> Result<Vec<DeadLetterRecord>> {
    let Some((mut client, table, name)) = open_table(config, pipeline)? else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(select_sql(&table).as_str(), &[&pipeline])
        .map_err(|e| error(&name, "read dead letters", &e))?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            let bad = |what: String| WeirError::Dlq {
                message: format!("{table} id {id}: {what}"),
            };
            let kind: String = row.get(7);
            let stage: String = row.get(8);
            let attempts: i32 = row.get(10);
            Ok(DeadLetterRecord {
                letter: DeadLetter {
                    pipeline: row.get::<_, String>(1).into(),
                    topic: row.get::<_, String>(2).into(),
                    partition: row.get(3),
                    offset: row.get(4),
                    key: row.get(5),
                    payload: row.get(6),
                    kind: ErrorKind::parse(&kind).map_err(|e| bad(format!("kind: {e}")))?,
                    stage: Stage::parse(&stage).map_err(|e| bad(format!("stage: {e}")))?,
                    message: row.get(9),
                    attempts: u32::try_from(attempts)
                        .map_err(|_| bad(format!("attempts {attempts}")))?,
                    first_failure_ms: row.get(11),
                    time_ms: row.get(12),
                },
                replayed_ms: row.get(13),
                id: id.clone(),
            })
        })
        .collect()
}

/// Deletes every dead letter of `pipeline` from the DLQ table, if it exists (`weir replay`
/// starts its shadow pipeline's dead letters over). Returns how many there were.
pub fn delete_pipeline(config: &PostgresDlqConfig, pipeline: &str) -> Result<u64> {
    let Some((mut client, table, name)) = open_table(config, pipeline)? else {
        return Ok(0);
    };
    client
        .execute(
            format!("DELETE FROM {table} WHERE pipeline = $1").as_str(),
            &[&pipeline],
        )
        .map_err(|e| error(&name, "delete dead letters", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_values_are_errors_naming_their_key() {
        let mut c = PostgresDlqConfig::new("", "");
        c.schema = Some("x".repeat(70));
        let errors = c.validate("dlq");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("dlq.url: must not be empty"));
        assert!(errors[1].starts_with("dlq.table: must not be empty"));
        assert!(errors[2].starts_with("dlq.schema: "));
        assert!(PostgresDlqConfig::new("postgres://u@h/db", "dead")
            .validate("dlq")
            .is_empty());
    }

    #[test]
    fn the_same_database_is_the_same_host_port_database_and_user() {
        let c = |url: &str| super::super::tls::parse(url).unwrap().0;
        let a = c("postgres://u:secret@h:5432/db");
        assert!(same_database(&a, &c("postgres://u@h/db?sslmode=disable")));
        assert!(!same_database(&a, &c("postgres://u@h:5433/db")));
        assert!(!same_database(&a, &c("postgres://u@h/other")));
        assert!(!same_database(&a, &c("postgres://v@h/db")));
        assert!(!same_database(&a, &c("postgres://u@g/db")));
    }

    #[test]
    fn one_row_per_id_the_last_written_wins() {
        let letter = |offset, message: &str| DeadLetter {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: None,
            kind: ErrorKind::InvalidJson,
            message: message.into(),
            stage: Stage::Decode,
            attempts: 1,
            time_ms: 2,
            first_failure_ms: 1,
        };
        let s = insert_statement(
            "\"d\"",
            "dlq",
            &[letter(1, "a"), letter(2, "b\0"), letter(1, "c")],
        );
        assert_eq!(
            s.params[0],
            LaneParam::Texts(vec![letter(2, "").id(), letter(1, "").id()])
        );
        assert_eq!(
            s.params[9],
            LaneParam::Texts(vec!["b\u{fffd}".into(), "c".into()])
        );
    }
}
