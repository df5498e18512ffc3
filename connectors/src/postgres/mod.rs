//! PostgreSQL: the `postgres` sink and checkpoint store, exactly-once.
//!
//! [`PostgresStore`] is one object that is both the pipeline's sink ([`SinkWriter`]) and its
//! checkpoint store ([`CheckpointStore`]): a partition's output rows, its checkpoint (next
//! offset, counters, operator state) and therefore its source offset are written in one
//! transaction. On start, [`CheckpointStore::load`] reads the checkpoint back from the same
//! database and the reader seeks to its offset, so a crash at any point gives exactly the
//! uninterrupted output.
//!
//! # One transaction per lane
//!
//! Several lanes (a topic's partition, or the global stage; `weir_runtime::Lane`) share the
//! sink, and their writes interleave. If they shared one transaction, committing lane p's
//! checkpoint would also commit rows of lane q whose checkpoint is not stored yet; after a
//! crash q would replay from its older checkpoint and write those rows again (fine for
//! idempotent upserts, but not exactly-once, and q's operator state would no longer match the
//! rows). So each lane has its own connection with its own transaction, which holds that
//! lane's rows only. Lanes are keyed by topic and partition: two topics' partition 0 are two
//! lanes (their checkpoint rows were always keyed so):
//!
//! ```text
//! write(p, batch)   lane p: BEGIN if none is open; upsert the batch          (rows of p only)
//! prepare(p, e)     lane p: the transaction is open and holds all rows of p since the last commit
//! save(ckpt of p)   lane p: upsert the checkpoint row into weir_checkpoints  (same transaction)
//! commit(p, e)      lane p: COMMIT                                           (rows + checkpoint)
//! ```
//!
//! # Fencing
//!
//! Each lane's generation (ARCHITECTURE.md, "Checkpoint protocol") is a row of
//! `weir_checkpoint_owners` (pipeline, topic, partition, generation), created beside the
//! checkpoint table, so a database from before fencing gains it on first use (its lanes have
//! generation 0, as their checkpoints do). `claim` increments it with one upsert
//! (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`). `save` reads it `FOR SHARE` in the
//! lane's transaction, before the checkpoint row: a checkpoint of another generation is
//! refused (`WeirError::Fenced`) and the transaction, with the epoch's rows, is rolled back;
//! an accepted one keeps the row share-locked until `commit`, so a newer claim waits for it
//! and the new owner loads it. A worker whose drain outlasted its revocation therefore
//! neither overwrites the new owner's checkpoint nor commits rows the new owner writes again.
//!
//! Rows are applied when written (not at `prepare`), because rows a constraint refuses must be
//! known when `write` returns, to go to the DLQ with the checkpoint that covers them. Every
//! lane keeps the rows it applied since its last commit (the converted Arrow columns, shared
//! with the batch), plus the checkpoint it saved: when the connection breaks (or the server
//! reports a serialization failure or deadlock), the transaction is gone, the call returns a
//! `Transient` error, and the executor's retry of that same call reconnects and replays them
//! into a new transaction. Nothing is applied twice, because the lost transaction applied
//! nothing.
//!
//! "COMMIT sent, answer lost": the store cannot tell from the connection whether the commit
//! landed. It reads the stored checkpoint's epoch back (on its separate control connection):
//! the epoch it was committing means the commit landed (the kept rows are dropped); an older
//! one means it did not (the rows and checkpoint are replayed on retry). When the server is
//! unreachable it returns `Transient` and checks again on the next call.
//!
//! Locks: a lane's transaction holds the row locks of its keys until its next
//! checkpoint. Two lanes writing the same key would therefore wait for each other, and
//! since one thread drives both, forever. Statements wait at most `lock_timeout_ms` for a lock; a lock wait
//! that times out while another lane has an open transaction is a `Fatal` error saying that
//! `key_columns` must include the key the source partitions by (which a read model keyed by
//! its entity id does). A timeout with no other lane open (an outside writer) is `Transient`.
//!
//! Connections: one per lane that wrote to the sink, plus one control connection (DDL,
//! `load`, lost-commit checks). TLS follows the URL's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` as in libpq ([`tls`]); the certificate files are read once, at start.
//!
//! Whether the object is the pipeline's checkpoint store is fixed when it is built
//! ([`PostgresStore::connect_as`] with a [`CheckpointRole`], chosen by the pipeline builder).
//! As the store, rows commit at `commit` with the checkpoint ([`Guarantee::ExactlyOnce`]). As
//! a sink only (another checkpoint store), rows commit at `prepare`, before the other store
//! saves the checkpoint: idempotent upserts, effectively once
//! ([`Guarantee::IdempotentUpsert`]); `load` and `save` are refused.
//!
//! # Writes
//!
//! A batch is one statement whatever its size: each column goes as one array parameter in
//! PostgreSQL's binary format, `unnest`ed server-side into
//! `INSERT ... ON CONFLICT (keys) DO UPDATE SET <every other column> = EXCLUDED.<column>`.
//! Within a batch the last row of each key wins (one `INSERT ... ON CONFLICT` may not touch a
//! row twice), which is what applying the rows in order would leave. Identifiers are quoted;
//! values are never spliced into SQL. The table is created from the first batch's columns
//! when absent ([`types`] has the type mapping), with the key columns as primary key.
//!
//! A row refused by the server (SQLSTATE class 23, integrity constraint, or 22, a value the
//! column cannot hold) is returned in [`WriteOutcome::rejected`] with its SQLSTATE and message
//! and goes to the DLQ; the other rows are written. To find it, the batch is retried in
//! halves inside savepoints down to single rows. The common path has no savepoint (no
//! subtransaction): the first refused row of a transaction rolls it back and replays it, then
//! savepoints are used until the next commit. Rows whose values have no PostgreSQL form (a
//! UInt64 above i64::MAX) are refused before sending. SQLSTATE classes: [`errors`].
//!
//! [`SinkWriter`]: weir_runtime::SinkWriter
//! [`CheckpointStore`]: weir_runtime::CheckpointStore
//! [`CheckpointStore::load`]: weir_runtime::CheckpointStore::load
//! [`Guarantee::IdempotentUpsert`]: weir_runtime::Guarantee::IdempotentUpsert
//! [`Guarantee::ExactlyOnce`]: weir_runtime::Guarantee::ExactlyOnce
//! [`WriteOutcome::rejected`]: weir_runtime::WriteOutcome::rejected

mod config;
pub mod dlq;
pub mod errors;
pub mod replay;
pub mod reset;
mod sql;
mod store;
pub mod tls;
pub mod types;

pub use config::{PostgresSinkConfig, PostgresUrl, MAX_IDENTIFIER_BYTES};
pub use dlq::{PostgresDlq, PostgresDlqConfig, DEFAULT_DLQ_TABLE};
pub use errors::{classify, classify_sqlstate, describe, SQLSTATE_CLASSIFICATION};
pub use replay::{LockMode, PipelineLock, ReplayTarget, SwapSummary};
pub use reset::ResetCheckpoints;
pub use sql::CHECKPOINT_TABLE;
pub use store::{CheckpointRole, LaneParam, LaneStatement, PostgresStore};
pub use tls::{PgConnect, SslMode, TlsOptions};
pub use types::{pg_type, PgType};
