//! Checkpoints: per partition, the next offset to read and every operator's state.
//!
//! The local store writes one file per partition: a JSON header, then each operator state
//! batch as an Arrow IPC stream, then a checksum. It is written to a temporary file, fsynced,
//! renamed over the old one, and the directory fsynced: a reader sees the old checkpoint or
//! the new one, never a torn one. Each operator's entry carries the fingerprint of its
//! configuration ([`crate::fingerprint`]) in the header, so every store that keeps
//! [`encode`]d checkpoints (local, PostgreSQL, Kafka) carries it too.
//!
//! A running worker holds an exclusive lock on `<dir>/<pipeline>/.lock`
//! ([`LocalCheckpointStore::try_lock`]): `weir reset` refuses while it is held.
//!
//! # Fencing (ARCHITECTURE.md, "Checkpoint protocol")
//!
//! A lane's checkpoints have one owner at a time. Starting a partition, the executor
//! [`CheckpointStore::claim`]s its lane: the store increments the lane's *generation* and
//! returns it, and every checkpoint of that partition carries it ([`Checkpoint::generation`]).
//! A save is accepted only while the stored generation still equals the checkpoint's; once a
//! newer owner claimed the lane, the older owner's save is refused with
//! [`WeirError::Fenced`] and changes nothing, so a worker whose drain outlasted its
//! revocation never overwrites the new owner's progress. Generation 0 is a lane never
//! claimed: a checkpoint of generation 0 is saved while nobody claimed the lane (tools and
//! tests that write checkpoints directly). Reading needs no claim; `weir reset`, which
//! refuses while the pipeline runs, saves its markers under the generation of the
//! checkpoints they replace (claiming a lane only when a worker claimed it since).
//!
//! The local store keeps the generation in `<partition>.generation` beside the lane's
//! checkpoint (decimal text, written atomically like the checkpoint), and holds an OS file
//! lock on `<partition>.lock` around a claim and around the check-and-write of a save, so
//! processes sharing the directory see one order of claims and saves.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::arrow::ipc::reader::StreamReader;
use crate::arrow::ipc::writer::StreamWriter;
use crate::arrow::record_batch::RecordBatch;
use crate::error::{Result, WeirError};
use crate::fingerprint::Fingerprint;
use crate::metrics::Counters;

/// An operator's checkpointed state: scalar metadata plus Arrow batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorState {
    pub meta: serde_json::Value,
    pub batches: Vec<RecordBatch>,
    /// The configuration this state was built under ([`crate::fingerprint`]); the partition
    /// task fills it in. `None` in a checkpoint written before fingerprints existed.
    pub config: Option<Fingerprint>,
}

/// The checkpoint of one partition at a batch boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub pipeline: String,
    pub topic: Arc<str>,
    pub partition: i32,
    /// Increases by one with every checkpoint of this partition.
    pub epoch: u64,
    /// The first offset not yet reflected in this checkpoint's state and outputs.
    pub next_offset: i64,
    /// Accounting since the pipeline first ran on this partition.
    pub counters: Counters,
    /// One entry per operator, in chain order.
    pub operators: Vec<OperatorState>,
    /// The events waiting for a retry before the DLQ, with their timers (the partition
    /// task's, [`crate::task`]); empty when none waits, and in checkpoints from before
    /// retries.
    pub parked: OperatorState,
    /// Written by `weir reset`: the partition starts over, like one without a checkpoint (no
    /// state, no offset: the source's start position, no counters), but its epochs go on from
    /// `epoch`, so epoch-numbered outputs (file sinks, the JSONL DLQ) never reuse a name.
    pub reset: bool,
    /// The owner's claim this checkpoint was taken under ([`CheckpointStore::claim`]): the
    /// store saves it only while this is still the lane's generation. 0: no claim (a lane
    /// never claimed, or a checkpoint from before fencing existed).
    pub generation: u64,
}

impl Checkpoint {
    /// The marker `weir reset` stores for a partition whose last epoch was `epoch`. `weir
    /// reset` gives it the [`Checkpoint::generation`] of the checkpoint it replaces: the
    /// next owner's recovery then settles what that generation staged as after any restart.
    pub fn reset_marker(pipeline: &str, topic: &str, partition: i32, epoch: u64) -> Self {
        Checkpoint {
            pipeline: pipeline.to_string(),
            topic: topic.into(),
            partition,
            epoch,
            next_offset: 0,
            counters: Counters::default(),
            operators: Vec::new(),
            parked: OperatorState::default(),
            reset: true,
            generation: 0,
        }
    }
}

/// Where checkpoints live. Shared by every partition of a worker. Lanes are named by their
/// checkpoint key (topic, partition; [`crate::Lane::checkpoint_key`]). See the module docs
/// for the generation protocol.
pub trait CheckpointStore: Send + Sync {
    /// Make the caller the owner of the lane: increment its generation and return the new
    /// one. From then on a save of an older generation is refused ([`WeirError::Fenced`]).
    fn claim(&self, topic: &str, partition: i32) -> Result<u64>;
    /// The lane's stored checkpoint, if any. Needs no claim.
    fn load(&self, topic: &str, partition: i32) -> Result<Option<Checkpoint>>;
    /// Store `checkpoint` if its [`Checkpoint::generation`] is still the lane's; otherwise
    /// refuse it with [`WeirError::Fenced`] and change nothing.
    fn save(&self, checkpoint: &Checkpoint) -> Result<()>;
}

const MAGIC: &[u8; 8] = b"WEIRCKP1";

#[derive(Serialize, Deserialize)]
struct Header {
    pipeline: String,
    topic: String,
    partition: i32,
    epoch: u64,
    next_offset: i64,
    counters: Counters,
    operators: Vec<OperatorHeader>,
    /// See [`Checkpoint::parked`]; absent when nothing waits (and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parked: Option<OperatorHeader>,
    /// See [`Checkpoint::reset`]; absent (false) in older checkpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
    /// See [`Checkpoint::generation`]; absent (0) in older checkpoints.
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct OperatorHeader {
    meta: serde_json::Value,
    /// Byte length of each state batch's IPC stream, in order.
    batch_bytes: Vec<u64>,
    /// The operator's configuration; absent in checkpoints from before fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<StoredConfig>,
}

/// A [`Fingerprint`] as stored: its hash, and its description so that a mismatch can say
/// what changed.
#[derive(Serialize, Deserialize)]
struct StoredConfig {
    fingerprint: String,
    description: String,
}

/// Checkpoints in a local directory: `<dir>/<pipeline>/<topic>/<partition>.ckpt`.
#[derive(Debug, Clone)]
pub struct LocalCheckpointStore {
    dir: PathBuf,
    pipeline: String,
}

impl LocalCheckpointStore {
    pub fn new(dir: impl Into<PathBuf>, pipeline: &str) -> Self {
        Self {
            dir: dir.into(),
            pipeline: pipeline.to_string(),
        }
    }

    fn path(&self, topic: &str, partition: i32) -> PathBuf {
        self.lane_file(topic, partition, "ckpt")
    }

    /// `<dir>/<pipeline>/<topic>/<partition>.<ext>`: the lane's checkpoint (`ckpt`), its
    /// generation (`generation`) and the lock around both (`lock`).
    fn lane_file(&self, topic: &str, partition: i32, ext: &str) -> PathBuf {
        self.dir
            .join(sanitize(&self.pipeline))
            .join(sanitize(topic))
            .join(format!("{partition}.{ext}"))
    }

    /// Hold the lane's lock (an exclusive OS file lock on `<partition>.lock`, released when
    /// the returned file is dropped or the process ends).
    fn lock_lane(&self, topic: &str, partition: i32) -> Result<File> {
        let path = self.lane_file(topic, partition, "lock");
        let dir = path
            .parent()
            .expect("invariant: a lane file has a directory");
        fs::create_dir_all(dir).map_err(|e| WeirError::io(dir, e))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WeirError::io(&path, e))?;
        file.lock().map_err(|e| WeirError::io(&path, e))?;
        Ok(file)
    }

    /// The lane's stored generation (0 when it was never claimed). Read under its lock.
    fn generation(&self, topic: &str, partition: i32) -> Result<u64> {
        let path = self.lane_file(topic, partition, "generation");
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| WeirError::Checkpoint {
                path: path.clone(),
                message: format!("generation {:?} is not a number", text.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(WeirError::io(&path, e)),
        }
    }
}

impl LocalCheckpointStore {
    /// The directory of this pipeline's checkpoints.
    pub fn pipeline_dir(&self) -> PathBuf {
        self.dir.join(sanitize(&self.pipeline))
    }

    /// Every stored checkpoint of the pipeline (every topic, the global stage's too), with
    /// its file, ordered by path.
    pub fn load_all(&self) -> Result<Vec<(PathBuf, Checkpoint)>> {
        let root = self.pipeline_dir();
        let mut files = Vec::new();
        let topics = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(WeirError::io(&root, e)),
        };
        for topic in topics {
            let topic = topic.map_err(|e| WeirError::io(&root, e))?.path();
            if !topic.is_dir() {
                continue;
            }
            for f in fs::read_dir(&topic).map_err(|e| WeirError::io(&topic, e))? {
                let path = f.map_err(|e| WeirError::io(&topic, e))?.path();
                if path.extension().is_some_and(|x| x == "ckpt") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let bytes = fs::read(&path).map_err(|e| WeirError::io(&path, e))?;
                let c = decode(&bytes, &path)?;
                Ok((path, c))
            })
            .collect()
    }

    /// Take the pipeline's run lock (`<dir>/<pipeline>/.lock`, exclusive, released when the
    /// file is dropped or the process ends, however it ends). `None`: another process holds
    /// it.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let root = self.pipeline_dir();
        fs::create_dir_all(&root).map_err(|e| WeirError::io(&root, e))?;
        let path = root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WeirError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(WeirError::io(&path, e)),
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// FNV-1a, 64 bit: detects a truncated or corrupted file.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The header of one state, its batches' IPC streams appended to `bodies`.
fn encode_state(op: &OperatorState, bodies: &mut Vec<Vec<u8>>) -> Result<OperatorHeader> {
    let mut batch_bytes = Vec::new();
    for batch in &op.batches {
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        batch_bytes.push(buf.len() as u64);
        bodies.push(buf);
    }
    Ok(OperatorHeader {
        meta: op.meta.clone(),
        batch_bytes,
        config: op.config.as_ref().map(|f| StoredConfig {
            fingerprint: f.hash(),
            description: f.description(),
        }),
    })
}

pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut operators = Vec::new();
    for op in &checkpoint.operators {
        operators.push(encode_state(op, &mut bodies)?);
    }
    let parked = &checkpoint.parked;
    let parked = if parked.batches.is_empty() && parked.meta.is_null() {
        None
    } else {
        Some(encode_state(parked, &mut bodies)?)
    };
    let header = Header {
        pipeline: checkpoint.pipeline.clone(),
        topic: checkpoint.topic.to_string(),
        partition: checkpoint.partition,
        epoch: checkpoint.epoch,
        next_offset: checkpoint.next_offset,
        counters: checkpoint.counters,
        operators,
        parked,
        reset: checkpoint.reset,
        generation: checkpoint.generation,
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| WeirError::Internal(format!("checkpoint header: {e}")))?;
    let mut out =
        Vec::with_capacity(header.len() + bodies.iter().map(Vec::len).sum::<usize>() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for b in bodies {
        out.extend_from_slice(&b);
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

pub fn decode(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let bad = |message: String| WeirError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < MAGIC.len() + 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a weir checkpoint (bad magic or too short)".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let stored = u64::from_le_bytes(tail.try_into().expect("invariant: 8 bytes"));
    if checksum(body) != stored {
        return Err(bad("checksum mismatch: the file is corrupt".into()));
    }
    let header_len =
        u64::from_le_bytes(body[8..16].try_into().expect("invariant: 8 bytes")) as usize;
    let header_end = 16usize
        .checked_add(header_len)
        .filter(|end| *end <= body.len())
        .ok_or_else(|| bad("header length past end of file".into()))?;
    let header: Header =
        serde_json::from_slice(&body[16..header_end]).map_err(|e| bad(format!("header: {e}")))?;
    let mut cursor = header_end;
    let mut read_state = |op: OperatorHeader| -> Result<OperatorState> {
        let mut batches = Vec::new();
        for len in op.batch_bytes {
            let end = cursor
                .checked_add(len as usize)
                .filter(|end| *end <= body.len())
                .ok_or_else(|| bad("state batch past end of file".into()))?;
            let reader = StreamReader::try_new(&body[cursor..end], None)?;
            for batch in reader {
                batches.push(batch?);
            }
            cursor = end;
        }
        let config = match op.config {
            None => None,
            Some(c) => {
                let f = Fingerprint::parse(&c.description)
                    .map_err(|e| bad(format!("operator configuration: {e}")))?;
                if f.hash() != c.fingerprint {
                    return Err(bad(format!(
                        "operator configuration: fingerprint {} does not match its description",
                        c.fingerprint
                    )));
                }
                Some(f)
            }
        };
        Ok(OperatorState {
            meta: op.meta,
            batches,
            config,
        })
    };
    let mut operators = Vec::new();
    for op in header.operators {
        operators.push(read_state(op)?);
    }
    let parked = match header.parked {
        Some(p) => read_state(p)?,
        None => OperatorState::default(),
    };
    Ok(Checkpoint {
        pipeline: header.pipeline,
        topic: header.topic.into(),
        partition: header.partition,
        epoch: header.epoch,
        next_offset: header.next_offset,
        counters: header.counters,
        operators,
        parked,
        reset: header.reset,
        generation: header.generation,
    })
}

/// Write `bytes` to `path` atomically: temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| WeirError::Internal(format!("{} has no parent", path.display())))?;
    fs::create_dir_all(dir).map_err(|e| WeirError::io(dir, e))?;
    // `<name>.<ext>.tmp`: files of one name but different extensions (a lane's checkpoint
    // and generation) never share a temporary file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| WeirError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| WeirError::io(&tmp, e))?;
    f.sync_all().map_err(|e| WeirError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| WeirError::io(path, e))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WeirError::io(dir, e))
}

impl CheckpointStore for LocalCheckpointStore {
    fn load(&self, topic: &str, partition: i32) -> Result<Option<Checkpoint>> {
        let path = self.path(topic, partition);
        match fs::read(&path) {
            Ok(bytes) => decode(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(WeirError::io(&path, e)),
        }
    }

    fn claim(&self, topic: &str, partition: i32) -> Result<u64> {
        let _lock = self.lock_lane(topic, partition)?;
        let generation = self.generation(topic, partition)? + 1;
        let path = self.lane_file(topic, partition, "generation");
        write_atomic(&path, format!("{generation}\n").as_bytes())?;
        Ok(generation)
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let (topic, partition) = (&*checkpoint.topic, checkpoint.partition);
        let bytes = encode(checkpoint)?;
        let _lock = self.lock_lane(topic, partition)?;
        let current = self.generation(topic, partition)?;
        if current != checkpoint.generation {
            return Err(WeirError::Fenced {
                lane: crate::Lane::from_checkpoint_key(&checkpoint.topic, partition).to_string(),
                message: format!(
                    "checkpoint epoch {} of generation {} not saved: the lane's generation in \
                     {} is {current}",
                    checkpoint.epoch,
                    checkpoint.generation,
                    self.lane_file(topic, partition, "generation").display()
                ),
            });
        }
        write_atomic(&self.path(topic, partition), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::{Int64Array, StringArray};
    use crate::arrow::datatypes::{DataType, Field, Schema};

    fn sample() -> Checkpoint {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
            ],
        )
        .unwrap();
        Checkpoint {
            pipeline: "p".into(),
            topic: "t/1".into(),
            partition: 3,
            epoch: 7,
            next_offset: 42,
            counters: Counters {
                consumed: 5,
                ..Default::default()
            },
            operators: vec![
                OperatorState {
                    config: Some(Fingerprint::default()),
                    ..Default::default()
                },
                OperatorState {
                    meta: serde_json::json!({"max_event_time": 10}),
                    batches: vec![batch.clone(), batch.clone()],
                    config: Some(Fingerprint::new("tumble").set("size_ms", 60_000)),
                },
            ],
            parked: OperatorState {
                meta: serde_json::json!({"levels": [{"level": 1}]}),
                batches: vec![batch],
                config: None,
            },
            reset: false,
            generation: 0,
        }
    }

    #[test]
    fn a_checkpoint_without_parked_events_has_no_parked_entry_and_loads_back_empty() {
        let mut c = sample();
        c.parked = OperatorState::default();
        let bytes = encode(&c).unwrap();
        // (The counters have a `parked` count; the state entry is an object.)
        assert!(!String::from_utf8_lossy(&bytes).contains("\"parked\":{"));
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn a_checkpoint_from_before_fingerprints_loads_without_them() {
        let mut c = sample();
        for op in &mut c.operators {
            op.config = None;
        }
        let bytes = encode(&c).unwrap();
        let header = String::from_utf8_lossy(&bytes);
        assert!(!header.contains("fingerprint"), "{header}");
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn a_reset_marker_loads_back_as_one() {
        let m = Checkpoint::reset_marker("p", "t", 2, 9);
        let back = decode(&encode(&m).unwrap(), Path::new("x")).unwrap();
        assert!(back.reset);
        assert_eq!(back, m);
    }

    #[test]
    fn the_run_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path(), "p");
        let held = store.try_lock().unwrap();
        assert!(held.is_some());
        assert!(store.try_lock().unwrap().is_none());
        drop(held);
        assert!(store.try_lock().unwrap().is_some());
    }

    #[test]
    fn load_all_finds_every_topic_and_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path(), "p");
        let mut c = sample();
        store.save(&c).unwrap();
        c.topic = "other".into();
        c.partition = 0;
        store.save(&c).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(&*all[0].1.topic, "other");
    }

    #[test]
    fn a_saved_checkpoint_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path(), "p");
        assert_eq!(store.load("t/1", 3).unwrap(), None);
        let c = sample();
        store.save(&c).unwrap();
        assert_eq!(store.load("t/1", 3).unwrap(), Some(c));
    }

    #[test]
    fn the_generation_loads_back_with_the_checkpoint() {
        let mut c = sample();
        c.generation = 12;
        assert_eq!(decode(&encode(&c).unwrap(), Path::new("x")).unwrap(), c);
    }

    #[test]
    fn each_claim_increments_the_lanes_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path(), "p");
        assert_eq!(store.claim("t/1", 3).unwrap(), 1);
        assert_eq!(store.claim("t/1", 3).unwrap(), 2);
        assert_eq!(store.claim("t/1", 4).unwrap(), 1, "another lane");
        // Another store object on the same directory (another process) continues the count.
        let other = LocalCheckpointStore::new(dir.path(), "p");
        assert_eq!(other.claim("t/1", 3).unwrap(), 3);
    }

    #[test]
    fn a_save_of_an_older_generation_is_fenced_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCheckpointStore::new(dir.path(), "p");
        let b = LocalCheckpointStore::new(dir.path(), "p");
        let mut first = sample();
        first.generation = a.claim("t/1", 3).unwrap();
        a.save(&first).unwrap();

        // B takes the lane over and saves its first checkpoint.
        let generation = b.claim("t/1", 3).unwrap();
        assert!(generation > first.generation);
        let mut taken_over = b.load("t/1", 3).unwrap().unwrap();
        taken_over.generation = generation;
        taken_over.epoch += 1;
        taken_over.next_offset = 100;
        b.save(&taken_over).unwrap();

        // A's late checkpoint is refused, as the fenced outcome.
        let mut late = first.clone();
        late.epoch += 1;
        late.next_offset = 60;
        let err = a.save(&late).unwrap_err();
        assert_eq!(err.class(), crate::ErrorClass::Fenced, "{err}");
        assert!(matches!(err, WeirError::Fenced { .. }), "{err}");
        assert!(err.to_string().contains("t/1/3"), "{err}");
        assert_eq!(b.load("t/1", 3).unwrap(), Some(taken_over.clone()));

        // B goes on.
        let mut next = taken_over.clone();
        next.epoch += 1;
        next.next_offset = 150;
        b.save(&next).unwrap();
        assert_eq!(a.load("t/1", 3).unwrap(), Some(next));
    }

    #[test]
    fn a_corrupt_generation_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalCheckpointStore::new(dir.path(), "p");
        store.claim("t", 0).unwrap();
        let path = store.lane_file("t", 0, "generation");
        fs::write(&path, "x7").unwrap();
        let err = store.claim("t", 0).unwrap_err().to_string();
        assert!(err.contains("0.generation") && err.contains("x7"), "{err}");
    }

    #[test]
    fn a_corrupt_checkpoint_is_an_error_not_a_panic() {
        let bytes = encode(&sample()).unwrap();
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], Path::new("x")).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 0xff;
        let err = decode(&flipped, Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
