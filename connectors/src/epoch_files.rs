//! Files written per lane and checkpoint epoch, published when the checkpoint commits: the
//! one implementation of the epoch protocol ([`weir_runtime::sink`]) for file outputs, shared
//! by the JSONL and Parquet sinks and the JSONL dead-letter queue. Files end in `.jsonl`
//! unless made with [`EpochFiles::with_extension`].
//!
//! Layout under the output directory, for a file prefix such as `part` and a lane named
//! `t<topic>-p<partition>` (the topic with every byte outside `[A-Za-z0-9._-]` written as
//! `%XX`) or `global` (the global stage of a two-phase aggregation):
//! - `.staging/part-<lane>-open.jsonl`: bytes of the lane since its last prepare;
//! - `.staging/part-<lane>-e<E>.jsonl`: what `prepare(lane, E)` made durable (fsynced, renamed);
//! - `part-<lane>-e<E:010>.jsonl`: what `commit(lane, E)` published (renamed out of staging).
//!
//! `recover(lane, committed)` publishes staged epochs `<= committed` (a commit that a crash
//! interrupted) and deletes newer staged epochs and the open file (their input is replayed
//! from the checkpoint). An epoch with no bytes produces no file. Every step is idempotent,
//! so the executor may retry it after a transient failure.
//!
//! # Owners (ARCHITECTURE.md, "Checkpoint protocol")
//!
//! A lane claimed under generation `G` ([`EpochFiles::claimed`]; the executor claims every
//! lane it starts) names its open and staged files `part-<lane>-g<G>-open.jsonl` and
//! `part-<lane>-g<G>-e<E>.jsonl`: a worker still draining a lane that a newer owner took
//! over (its revocation outlasted the group's wait) works on files of its own generation
//! only. Both would otherwise use the same names, since the new owner resumes from the last
//! stored checkpoint and so stages the same epoch: the old owner's `prepare` would rename the
//! new owner's open file into its own staged epoch, and the new owner's rows would be lost.
//! The old owner's checkpoint is then refused by the store, so it never commits (publishes)
//! its staged epoch. `recover` by generation `G` settles files of generations up to `G` only:
//! it publishes a staged epoch `<= committed` only when the stored checkpoint's generation
//! staged it, and deletes every other one (a fenced owner's leftovers, whose epochs the new
//! owner wrote again), so a late owner's files are never published. A staged epoch without
//! a generation (staged before fencing existed) within the checkpoint is published as
//! before: the executor always claims, so no fenced owner left it. Published names carry no
//! generation: one epoch of a lane is published once, by the owner whose checkpoint stored it
//! (a late commit of the same staged file by its owner and a `recover` racing it publish the
//! same bytes under the same name). Generation 0 (never claimed) keeps the names without
//! `-g`, which are also those of files staged before fencing existed.
//!
//! Older weir named files by partition number alone (`part-p<p>-...`; the global stage as
//! partition 2147483647). Published files of that layout stay where they are and are read
//! with the others. On `recover` of a lane, an old open file of its partition number is
//! discarded like its own, and an old *staged* epoch is settled as the lane's own (published
//! under the new name, or deleted) when the source reads one topic; when it reads several,
//! which topic staged it is unknown and `recover` refuses, naming the file.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::{LaneClaim, SourceTopics};
use weir_runtime::{Lane, GLOBAL_PARTITION};

const STAGING: &str = ".staging";
const JSONL: &str = ".jsonl";

/// The bytes of one lane since its last prepare.
#[derive(Debug)]
struct OpenFile {
    file: File,
    /// Length of the bytes fully written; a failed append is cut back to it on the next one.
    good_len: u64,
    torn: bool,
}

/// Whose an epoch file is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Lane(Lane),
    /// The partition number of a file named before lanes carried their topic.
    Legacy(i32),
}

impl Owner {
    /// Order of published files: the old layout first (older epochs), then by lane.
    fn order(&self) -> (u8, Option<&Lane>, i32) {
        match self {
            Owner::Legacy(p) => (0, None, *p),
            Owner::Lane(l) => (1, Some(l), 0),
        }
    }
}

/// Per-lane, per-epoch files in one directory. See the module docs.
#[derive(Debug)]
pub struct EpochFiles {
    dir: PathBuf,
    staging: PathBuf,
    prefix: String,
    /// The file name extension, with its dot.
    ext: String,
    open: HashMap<Lane, OpenFile>,
    /// Epochs prepared (staged) and not yet committed, per lane.
    prepared: HashMap<Lane, BTreeSet<u64>>,
    /// What the source reads: decides whose a file of the old layout is.
    topics: SourceTopics,
    /// Who owns each claimed lane (see the module docs).
    claims: HashMap<Lane, LaneClaim>,
}

/// `t<topic>-p<partition>` or `global`: see the module docs.
pub fn lane_file_name(lane: &Lane) -> String {
    match lane {
        Lane::Global => "global".to_string(),
        Lane::Partition { topic, partition } => {
            let mut out = String::with_capacity(topic.len() + 8);
            out.push('t');
            for b in topic.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out.push_str(&format!("-p{partition}"));
            out
        }
    }
}

/// The owner named by the part of a file name between the prefix and the epoch.
fn parse_owner(name: &str) -> Option<Owner> {
    if name == "global" {
        return Some(Owner::Lane(Lane::Global));
    }
    if let Some(p) = name.strip_prefix('p') {
        return p.parse().ok().map(Owner::Legacy);
    }
    let (topic, partition) = name.strip_prefix('t')?.rsplit_once("-p")?;
    let partition: i32 = partition.parse().ok()?;
    let mut bytes = Vec::with_capacity(topic.len());
    let mut rest = topic.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let topic = String::from_utf8(bytes).ok()?;
    Some(Owner::Lane(Lane::new(topic, partition)))
}

impl EpochFiles {
    /// Files named `<prefix>-<lane>-...` in `dir`, which is created if absent.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Result<Self> {
        Self::with_extension(dir, prefix, JSONL)
    }

    /// Files named `<prefix>-<lane>-...<ext>` (`ext` with its dot, e.g. `.parquet`) in `dir`.
    pub fn with_extension(dir: impl Into<PathBuf>, prefix: &str, ext: &str) -> Result<Self> {
        let dir = dir.into();
        let staging = dir.join(STAGING);
        fs::create_dir_all(&staging).map_err(|e| WeirError::io(&staging, e))?;
        Ok(Self {
            dir,
            staging,
            prefix: prefix.to_string(),
            ext: ext.to_string(),
            open: HashMap::new(),
            prepared: HashMap::new(),
            topics: SourceTopics::One,
            claims: HashMap::new(),
        })
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the source reads, which decides whose a staged file of the old layout is (see
    /// the module docs). Until told, one topic.
    pub fn set_source_topics(&mut self, topics: &SourceTopics) {
        self.topics = topics.clone();
    }

    /// This worker owns `lane` under `claim` from now on; called before `recover` (see the
    /// module docs). Forgets what was open or prepared under an older claim.
    pub fn claimed(&mut self, lane: &Lane, claim: LaneClaim) {
        if self.claims.insert(lane.clone(), claim) != Some(claim) {
            self.open.remove(lane);
            self.prepared.remove(lane);
        }
    }

    /// This worker's generation on `lane` (0: never claimed).
    fn generation(&self, lane: &Lane) -> u64 {
        self.claims.get(lane).map_or(0, |c| c.generation)
    }

    /// `<lane>` or `<lane>-g<G>`: the owner part of a staging file's name.
    fn staging_owner(&self, lane: &Lane, generation: u64) -> String {
        match generation {
            0 => lane_file_name(lane),
            g => format!("{}-g{g}", lane_file_name(lane)),
        }
    }

    fn open_path_of(&self, lane: &Lane, generation: u64) -> PathBuf {
        self.staging.join(format!(
            "{}-{}-open{}",
            self.prefix,
            self.staging_owner(lane, generation),
            self.ext
        ))
    }

    fn open_path(&self, lane: &Lane) -> PathBuf {
        self.open_path_of(lane, self.generation(lane))
    }

    fn staged_path_of(&self, lane: &Lane, generation: u64, epoch: u64) -> PathBuf {
        self.staging.join(format!(
            "{}-{}-e{epoch}{}",
            self.prefix,
            self.staging_owner(lane, generation),
            self.ext
        ))
    }

    fn staged_path(&self, lane: &Lane, epoch: u64) -> PathBuf {
        self.staged_path_of(lane, self.generation(lane), epoch)
    }

    fn committed_path(&self, lane: &Lane, epoch: u64) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-e{epoch:010}{}",
            self.prefix,
            lane_file_name(lane),
            self.ext
        ))
    }

    /// Append `bytes` (whole lines) to the open file of `lane`. Not durable before
    /// [`prepare`](Self::prepare). After a failed append, the next one first cuts the file
    /// back to the last complete append, so a retried write never leaves a torn line.
    pub fn append(&mut self, lane: &Lane, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = self.open_path(lane);
        let open = match self.open.entry(lane.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| WeirError::io(&path, e))?;
                entry.insert(OpenFile {
                    file,
                    good_len: 0,
                    torn: false,
                })
            }
        };
        if open.torn {
            open.file
                .set_len(open.good_len)
                .and_then(|_| open.file.seek(SeekFrom::Start(open.good_len)))
                .map_err(|e| WeirError::io(&path, e))?;
            open.torn = false;
        }
        if let Err(e) = open.file.write_all(bytes) {
            open.torn = true;
            return Err(WeirError::io(&path, e));
        }
        open.good_len += bytes.len() as u64;
        Ok(())
    }

    /// Make everything appended for `lane` durable as epoch `epoch`: fsync the open file,
    /// rename it to its staged name, fsync the staging directory. No bytes, no file.
    pub fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let open_path = self.open_path(lane);
        if let Some(open) = self.open.remove(lane) {
            let synced = if open.torn {
                open.file.set_len(open.good_len)
            } else {
                Ok(())
            }
            .and_then(|_| open.file.sync_all());
            if let Err(e) = synced {
                self.open.insert(lane.clone(), open);
                return Err(WeirError::io(&open_path, e));
            }
        }
        // From here on the file on disk is the truth, so a retry after a failure below finds
        // the same state and finishes the job.
        match fs::metadata(&open_path) {
            Ok(meta) if meta.len() == 0 => {
                fs::remove_file(&open_path).map_err(|e| WeirError::io(&open_path, e))?;
            }
            Ok(_) => {
                let staged = self.staged_path(lane, epoch);
                fs::rename(&open_path, &staged).map_err(|e| WeirError::io(&staged, e))?;
                self.prepared.entry(lane.clone()).or_default().insert(epoch);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WeirError::io(&open_path, e)),
        }
        sync_dir(&self.staging)
    }

    /// Publish the staged epochs of `lane` up to `epoch` (normally just `epoch`).
    pub fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let Some(pending) = self.prepared.get_mut(lane) else {
            return Ok(());
        };
        let due: Vec<u64> = pending.range(..=epoch).copied().collect();
        if due.is_empty() {
            return Ok(());
        }
        for e in &due {
            let staged = self.staged_path(lane, *e);
            let target = self.committed_path(lane, *e);
            match fs::rename(&staged, &target) {
                Ok(()) => {}
                // Renamed by an earlier attempt whose directory sync failed.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && target.exists() => {}
                Err(err) => return Err(WeirError::io(&target, err)),
            }
        }
        sync_dir(&self.dir)?;
        sync_dir(&self.staging)?;
        let pending = self
            .prepared
            .get_mut(lane)
            .expect("invariant: present above");
        for e in due {
            pending.remove(&e);
        }
        Ok(())
    }

    /// Whether a file of the old layout, named by partition number `legacy`, may be `lane`'s.
    fn legacy_matches(lane: &Lane, legacy: i32) -> bool {
        match lane {
            Lane::Global => legacy == GLOBAL_PARTITION,
            Lane::Partition { partition, .. } => *partition == legacy,
        }
    }

    /// Bring the files of `lane` in line with the stored checkpoint of epoch `committed`
    /// (`None`: no checkpoint yet). See the module docs.
    pub fn recover(&mut self, lane: &Lane, committed: Option<u64>) -> Result<()> {
        self.open.remove(lane);
        self.prepared.remove(lane);
        let claim = self.claims.get(lane).copied().unwrap_or_default();
        // Open files of this generation and older ones (a fenced owner's, an older weir's);
        // a newer owner's are not ours to touch.
        let mut open_paths = vec![self.open_path_of(lane, 0)];
        for (owner, generation, path) in self.list_open()? {
            if owner == Owner::Lane(lane.clone()) && generation <= claim.generation {
                open_paths.push(path);
            }
        }
        let legacy_partition = match lane {
            Lane::Global => GLOBAL_PARTITION,
            Lane::Partition { partition, .. } => *partition,
        };
        // Unprepared bytes of the old layout: discarded whichever topic wrote them, since
        // every lane discards its own.
        open_paths.push(self.staging.join(format!(
            "{}-p{legacy_partition}-open{}",
            self.prefix, self.ext
        )));
        for open_path in open_paths {
            match fs::remove_file(&open_path) {
                Ok(()) => debug!(path = %open_path.display(), "discarded unprepared output"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WeirError::io(&open_path, e)),
            }
        }
        for (owner, generation, epoch, path) in self.list(&self.staging)? {
            if generation > claim.generation {
                continue;
            }
            match owner {
                Owner::Lane(l) if l == *lane => {}
                Owner::Legacy(p) if Self::legacy_matches(lane, p) => {
                    if let (SourceTopics::Several(topics), Lane::Partition { .. }) =
                        (&self.topics, lane)
                    {
                        return Err(WeirError::Internal(format!(
                            "{}: staged by an older weir, which named files by partition \
                             number only, and the source reads several topics ({}), so which \
                             topic's partition {p} wrote it is unknown. Its rows may belong to \
                             a stored checkpoint (deleting it could lose them) or not \
                             (publishing it could repeat them): stop weir, move the file out \
                             of {}, compare its rows with the published output, and start \
                             again",
                            path.display(),
                            topics.join(", "),
                            self.staging.display()
                        )));
                    }
                }
                _ => continue,
            }
            let stored = committed.is_some_and(|c| epoch <= c);
            // Generation 0: staged before fencing existed (or by a user that never claims),
            // so no fenced owner's; within the checkpoint, it is the checkpoint's.
            let checkpoints_own = generation == claim.committed_generation || generation == 0;
            if stored && checkpoints_own {
                let target = self.committed_path(lane, epoch);
                match fs::rename(&path, &target) {
                    Ok(()) => {}
                    // Its owner's late commit published it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.exists() => {}
                    Err(e) => return Err(WeirError::io(&target, e)),
                }
                debug!(%lane, epoch, generation, "published output of an interrupted commit");
            } else {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(WeirError::io(&path, e)),
                }
                if stored {
                    debug!(%lane, epoch, generation, "discarded output a fenced owner staged");
                } else {
                    debug!(%lane, epoch, generation, "discarded output newer than the checkpoint");
                }
            }
        }
        for (owner, _, epoch, path) in self.list(&self.dir)? {
            let mine = match owner {
                Owner::Lane(l) => l == *lane,
                Owner::Legacy(p) => {
                    Self::legacy_matches(lane, p)
                        && (self.topics == SourceTopics::One || *lane == Lane::Global)
                }
            };
            if mine && committed.is_none_or(|c| epoch > c) {
                warn!(
                    path = %path.display(),
                    committed_epoch = ?committed,
                    "published output is newer than the stored checkpoint (was the checkpoint \
                     directory reset?): replayed input will be written again"
                );
            }
        }
        sync_dir(&self.staging)?;
        sync_dir(&self.dir)
    }

    /// `(owner, generation, epoch, path)` of the epoch files of this prefix in `dir`.
    fn list(&self, dir: &Path) -> Result<Vec<(Owner, u64, u64, PathBuf)>> {
        list_epoch_files(dir, &self.prefix, &self.ext)
    }

    /// `(owner, generation, path)` of the open files of this prefix in the staging directory.
    fn list_open(&self) -> Result<Vec<(Owner, u64, PathBuf)>> {
        let suffix = format!("-open{}", self.ext);
        let mut out = Vec::new();
        for (name, path) in dir_entries(&self.staging)? {
            let rest = name
                .strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(suffix.as_str()));
            if let Some((owner, generation)) = rest.and_then(parse_staging_owner) {
                out.push((owner, generation, path));
            }
        }
        Ok(out)
    }

    /// The published `.jsonl` files of `prefix` in `dir`: those of the old layout first, then
    /// by lane, then epoch.
    pub fn committed_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
        Self::committed_files_with_extension(dir, prefix, JSONL)
    }

    /// The published files of `prefix` ending in `ext` in `dir`, ordered as
    /// [`EpochFiles::committed_files`].
    pub fn committed_files_with_extension(
        dir: &Path,
        prefix: &str,
        ext: &str,
    ) -> Result<Vec<PathBuf>> {
        let mut files = list_epoch_files(dir, prefix, ext)?;
        files.sort_by(|(a, _, ea, _), (b, _, eb, _)| (a.order(), ea).cmp(&(b.order(), eb)));
        Ok(files.into_iter().map(|(_, _, _, path)| path).collect())
    }
}

/// The owner and generation named by `<lane>` or `<lane>-g<G>` (staging files; a lane's
/// name itself ends in `-p<partition>` or is `global`, so a trailing `-g<digits>` is always
/// a generation).
fn parse_staging_owner(name: &str) -> Option<(Owner, u64)> {
    if let Some((owner, g)) = name.rsplit_once("-g") {
        if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) {
            return Some((parse_owner(owner)?, g.parse().ok()?));
        }
    }
    Some((parse_owner(name)?, 0))
}

/// Parses `<prefix>-<lane>[-g<generation>]-e<epoch><ext>` (and the old
/// `<prefix>-p<partition>-e<epoch><ext>`): owner, generation (0 without one), epoch.
fn parse_name(name: &str, prefix: &str, ext: &str) -> Option<(Owner, u64, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(ext)?;
    let (owner, epoch) = rest.rsplit_once("-e")?;
    let (owner, generation) = parse_staging_owner(owner)?;
    Some((owner, generation, epoch.parse().ok()?))
}

/// The (UTF-8) file names in `dir` with their paths; none when it does not exist.
fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WeirError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WeirError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        out.push((name.to_string(), entry.path()));
    }
    Ok(out)
}

fn list_epoch_files(
    dir: &Path,
    prefix: &str,
    ext: &str,
) -> Result<Vec<(Owner, u64, u64, PathBuf)>> {
    let mut out = Vec::new();
    for (name, path) in dir_entries(dir)? {
        if let Some((owner, generation, e)) = parse_name(&name, prefix, ext) {
            out.push((owner, generation, e, path));
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WeirError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition `p` of topic `t`.
    fn l(p: i32) -> Lane {
        Lane::new("t", p)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn published(dir: &Path) -> String {
        EpochFiles::committed_files(dir, "part")
            .unwrap()
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn appended_bytes_are_published_only_on_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(&l(0), b"a\n").unwrap();
        f.append(&l(0), b"b\n").unwrap();
        assert_eq!(published(tmp.path()), "");
        f.prepare(&l(0), 1).unwrap();
        assert_eq!(published(tmp.path()), "");
        assert_eq!(names(&tmp.path().join(STAGING)), ["part-tt-p0-e1.jsonl"]);
        f.commit(&l(0), 1).unwrap();
        assert_eq!(published(tmp.path()), "a\nb\n");
        assert!(names(tmp.path()).contains(&"part-tt-p0-e0000000001.jsonl".to_string()));
    }

    #[test]
    fn an_empty_epoch_produces_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(&l(0), b"").unwrap();
        f.prepare(&l(0), 1).unwrap();
        f.commit(&l(0), 1).unwrap();
        assert_eq!(names(tmp.path()), [STAGING]);
        assert!(names(&tmp.path().join(STAGING)).is_empty());
    }

    #[test]
    fn prepare_and_commit_can_be_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(&l(3), b"x\n").unwrap();
        f.prepare(&l(3), 4).unwrap();
        f.prepare(&l(3), 4).unwrap();
        f.commit(&l(3), 4).unwrap();
        f.commit(&l(3), 4).unwrap();
        assert_eq!(published(tmp.path()), "x\n");
    }

    #[test]
    fn recover_publishes_old_epochs_and_deletes_newer_ones_of_that_partition_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(&l(0), b"e1\n").unwrap();
        f.prepare(&l(0), 1).unwrap();
        f.append(&l(0), b"e2\n").unwrap();
        f.prepare(&l(0), 2).unwrap();
        f.append(&l(0), b"open\n").unwrap();
        f.append(&l(1), b"other\n").unwrap();
        f.prepare(&l(1), 1).unwrap();
        drop(f); // crash: nothing committed

        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.recover(&l(0), Some(1)).unwrap();
        assert_eq!(published(tmp.path()), "e1\n");
        assert_eq!(names(&tmp.path().join(STAGING)), ["part-tt-p1-e1.jsonl"]);
        f.recover(&l(1), None).unwrap();
        assert!(names(&tmp.path().join(STAGING)).is_empty());
        assert_eq!(published(tmp.path()), "e1\n");
    }

    fn claim(generation: u64, committed_generation: u64) -> LaneClaim {
        LaneClaim {
            generation,
            committed_generation,
        }
    }

    #[test]
    fn a_late_owner_never_stages_the_new_owners_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        // A owns the lane under generation 1 and commits epoch 1.
        let mut a = EpochFiles::new(tmp.path(), "part").unwrap();
        a.claimed(&l(0), claim(1, 0));
        a.recover(&l(0), None).unwrap();
        a.append(&l(0), b"a1\n").unwrap();
        a.prepare(&l(0), 1).unwrap();
        a.commit(&l(0), 1).unwrap();
        a.append(&l(0), b"a2\n").unwrap();
        // B takes over from A's checkpoint (epoch 1) while A still drains: both write epoch 2.
        let mut b = EpochFiles::new(tmp.path(), "part").unwrap();
        b.claimed(&l(0), claim(2, 1));
        b.recover(&l(0), Some(1)).unwrap();
        b.append(&l(0), b"b2\n").unwrap();
        a.append(&l(0), b"a2 late\n").unwrap();
        a.prepare(&l(0), 2).unwrap(); // A's save is then refused: it never commits
        b.prepare(&l(0), 2).unwrap();
        b.commit(&l(0), 2).unwrap();
        assert_eq!(published(tmp.path()), "a1\nb2\n");
        assert!(
            names(&tmp.path().join(STAGING))
                .iter()
                .all(|n| !n.contains("-g2-")),
            "B's epoch 2 is published, nothing of B is left staged"
        );
    }

    #[test]
    fn recover_discards_what_a_fenced_owner_staged_and_publishes_the_checkpoints_own() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = EpochFiles::new(tmp.path(), "part").unwrap();
        a.claimed(&l(0), claim(1, 0));
        a.recover(&l(0), None).unwrap();
        let mut b = EpochFiles::new(tmp.path(), "part").unwrap();
        b.claimed(&l(0), claim(2, 0));
        b.recover(&l(0), None).unwrap();
        // A (fenced) stages epoch 1 after B claimed; B stages its own epoch 1, its checkpoint
        // is stored, and B stops before publishing it.
        a.append(&l(0), b"late\n").unwrap();
        a.prepare(&l(0), 1).unwrap();
        b.append(&l(0), b"mine\n").unwrap();
        b.prepare(&l(0), 1).unwrap();
        drop((a, b));
        // C recovers from B's checkpoint (epoch 1, generation 2).
        let mut c = EpochFiles::new(tmp.path(), "part").unwrap();
        c.claimed(&l(0), claim(3, 2));
        c.recover(&l(0), Some(1)).unwrap();
        assert_eq!(published(tmp.path()), "mine\n");
        assert!(names(&tmp.path().join(STAGING)).is_empty());
    }

    #[test]
    fn recover_publishes_an_epoch_staged_before_fencing_within_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut old = EpochFiles::new(tmp.path(), "part").unwrap();
        old.append(&l(0), b"old\n").unwrap();
        old.prepare(&l(0), 4).unwrap();
        drop(old); // staged without a generation, its checkpoint stored, never published
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.claimed(&l(0), claim(2, 1));
        f.recover(&l(0), Some(4)).unwrap();
        assert_eq!(published(tmp.path()), "old\n");
    }

    #[test]
    fn recover_leaves_a_newer_owners_files_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let mut newer = EpochFiles::new(tmp.path(), "part").unwrap();
        newer.claimed(&l(0), claim(5, 0));
        newer.append(&l(0), b"n1\n").unwrap();
        newer.prepare(&l(0), 1).unwrap();
        newer.append(&l(0), b"n2\n").unwrap();
        let mut older = EpochFiles::new(tmp.path(), "part").unwrap();
        older.claimed(&l(0), claim(4, 0));
        older.recover(&l(0), None).unwrap();
        assert_eq!(
            names(&tmp.path().join(STAGING)),
            ["part-tt-p0-g5-e1.jsonl", "part-tt-p0-g5-open.jsonl"]
        );
        newer.commit(&l(0), 1).unwrap();
        assert_eq!(published(tmp.path()), "n1\n");
    }

    #[test]
    fn staging_names_carry_the_generation_and_parse_back() {
        assert_eq!(
            parse_name("part-tt-p0-g12-e3.jsonl", "part", ".jsonl"),
            Some((Owner::Lane(l(0)), 12, 3))
        );
        assert_eq!(
            parse_name("part-tt-p0-e3.jsonl", "part", ".jsonl"),
            Some((Owner::Lane(l(0)), 0, 3))
        );
        // A topic with `-g` in its name is not a generation.
        let lane = Lane::new("x-g1", 2);
        assert_eq!(
            parse_name("part-tx-g1-p2-e0000000004.jsonl", "part", ".jsonl"),
            Some((Owner::Lane(lane.clone()), 0, 4))
        );
        assert_eq!(
            parse_name("part-tx-g1-p2-g7-e4.jsonl", "part", ".jsonl"),
            Some((Owner::Lane(lane), 7, 4))
        );
        assert_eq!(
            parse_name("part-global-g3-e9.jsonl", "part", ".jsonl"),
            Some((Owner::Lane(Lane::Global), 3, 9))
        );
    }

    #[test]
    fn prefixes_sharing_a_directory_do_not_see_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = EpochFiles::new(tmp.path(), "part").unwrap();
        let mut b = EpochFiles::new(tmp.path(), "dlq").unwrap();
        a.append(&l(0), b"a\n").unwrap();
        b.append(&l(0), b"b\n").unwrap();
        a.prepare(&l(0), 1).unwrap();
        b.prepare(&l(0), 1).unwrap();
        b.recover(&l(0), None).unwrap();
        a.commit(&l(0), 1).unwrap();
        assert_eq!(published(tmp.path()), "a\n");
        assert!(EpochFiles::committed_files(tmp.path(), "dlq")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn committed_files_are_ordered_by_partition_then_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        for (p, e) in [(10, 1), (2, 11), (2, 9), (0, 3)] {
            f.append(&l(p), format!("{p}/{e}\n").as_bytes()).unwrap();
            f.prepare(&l(p), e).unwrap();
            f.commit(&l(p), e).unwrap();
        }
        assert_eq!(published(tmp.path()), "0/3\n2/9\n2/11\n10/1\n");
    }

    #[test]
    fn file_names_parse_back() {
        let lane = |t: &str, p| Some((Owner::Lane(Lane::new(t, p)), 0, 12));
        assert_eq!(
            parse_name("part-tt-p3-e0000000012.jsonl", "part", JSONL),
            lane("t", 3)
        );
        assert_eq!(
            parse_name("part-tt-p-1-e12.jsonl", "part", JSONL),
            lane("t", -1)
        );
        assert_eq!(parse_name("part-tt-p3-open.jsonl", "part", JSONL), None);
        assert_eq!(parse_name("dlq-tt-p3-e1.jsonl", "part", JSONL), None);
        assert_eq!(
            parse_name("part-tt-p3-e0000000012.parquet", "part", ".parquet"),
            lane("t", 3)
        );
        assert_eq!(parse_name("part-tt-p3-e12.parquet", "part", JSONL), None);
        assert_eq!(
            parse_name("part-global-e12.jsonl", "part", JSONL),
            Some((Owner::Lane(Lane::Global), 0, 12))
        );
        // The old layout: the partition number only.
        assert_eq!(
            parse_name("part-p3-e0000000012.jsonl", "part", JSONL),
            Some((Owner::Legacy(3), 0, 12))
        );
    }

    #[test]
    fn topics_with_any_bytes_name_files_that_parse_back_to_their_lane() {
        for topic in [
            "orders",
            "a-p1-e2",
            "x.y_z",
            "with/slash",
            "per%cent",
            "ünï",
            "-e5",
        ] {
            let l = Lane::new(topic, 7);
            let name = format!("part-{}-e0000000003.jsonl", lane_file_name(&l));
            assert!(!name.contains('/'), "{name}");
            assert_eq!(
                parse_name(&name, "part", JSONL),
                Some((Owner::Lane(l), 0, 3)),
                "{name}"
            );
        }
    }

    #[test]
    fn two_topics_with_one_partition_number_keep_their_files_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        let (a, b) = (Lane::new("ta", 0), Lane::new("tb", 0));
        f.append(&a, b"a1\n").unwrap();
        f.append(&b, b"b1\n").unwrap();
        f.prepare(&a, 1).unwrap();
        f.commit(&a, 1).unwrap();
        f.prepare(&b, 1).unwrap();
        f.commit(&b, 1).unwrap();
        assert_eq!(published(tmp.path()), "a1\nb1\n");
    }

    /// Writes `name` with `text` into `dir`, as an older weir left it.
    fn old_file(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn staged_files_of_the_old_layout_are_settled_as_their_lanes_when_the_source_reads_one_topic() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(STAGING);
        fs::create_dir_all(&staging).unwrap();
        // Published, staged within the checkpoint, staged past it, and unprepared.
        old_file(tmp.path(), "part-p0-e0000000001.jsonl", "e1\n");
        old_file(&staging, "part-p0-e2.jsonl", "e2\n");
        old_file(&staging, "part-p0-e3.jsonl", "e3\n");
        old_file(&staging, "part-p0-open.jsonl", "open\n");
        old_file(&staging, "part-p1-e2.jsonl", "other partition\n");
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.set_source_topics(&SourceTopics::One);
        f.recover(&l(0), Some(2)).unwrap();
        assert_eq!(published(tmp.path()), "e1\ne2\n");
        assert!(tmp.path().join("part-tt-p0-e0000000002.jsonl").exists());
        assert_eq!(names(&staging), ["part-p1-e2.jsonl"]);
        // The lane goes on under the new names, after the old ones.
        f.append(&l(0), b"e3 again\n").unwrap();
        f.prepare(&l(0), 3).unwrap();
        f.commit(&l(0), 3).unwrap();
        assert_eq!(published(tmp.path()), "e1\ne2\ne3 again\n");
    }

    #[test]
    fn a_staged_file_of_the_old_layout_is_refused_by_name_when_the_source_reads_two_topics() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(STAGING);
        fs::create_dir_all(&staging).unwrap();
        old_file(&staging, "part-p0-e2.jsonl", "e2\n");
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.set_source_topics(&SourceTopics::Several(vec!["ta".into(), "tb".into()]));
        let err = f
            .recover(&Lane::new("ta", 0), Some(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("part-p0-e2.jsonl"), "{err}");
        assert!(err.contains("several topics (ta, tb)"), "{err}");
        assert!(err.contains("move the file out of"), "{err}");
        // Nothing was touched: the file is still there for the user.
        assert_eq!(names(&staging), ["part-p0-e2.jsonl"]);
        // Other partitions are not concerned.
        f.recover(&Lane::new("ta", 1), Some(2)).unwrap();
    }

    #[test]
    fn the_global_stage_staged_under_the_old_partition_number_is_settled_as_the_global_lane() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(STAGING);
        fs::create_dir_all(&staging).unwrap();
        old_file(&staging, "part-p2147483647-e4.jsonl", "merged\n");
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.set_source_topics(&SourceTopics::Several(vec!["ta".into(), "tb".into()]));
        f.recover(&Lane::Global, Some(4)).unwrap();
        assert_eq!(published(tmp.path()), "merged\n");
        assert!(tmp.path().join("part-global-e0000000004.jsonl").exists());
    }
}
