//! Files written per partition and checkpoint epoch, published when the checkpoint commits:
//! the one implementation of the epoch protocol ([`weir_runtime::sink`]) for file outputs,
//! shared by the JSONL and Parquet sinks and the JSONL dead-letter queue. Files end in
//! `.jsonl` unless made with [`EpochFiles::with_extension`].
//!
//! Layout under the output directory, for a file prefix such as `part`:
//! - `.staging/part-p<p>-open.jsonl`: bytes of partition `p` since its last prepare;
//! - `.staging/part-p<p>-e<E>.jsonl`: what `prepare(p, E)` made durable (fsynced, renamed);
//! - `part-p<p>-e<E:010>.jsonl`: what `commit(p, E)` published (renamed out of staging).
//!
//! `recover(p, committed)` publishes staged epochs `<= committed` (a commit that a crash
//! interrupted) and deletes newer staged epochs and the open file (their input is replayed
//! from the checkpoint). An epoch with no bytes produces no file. Every step is idempotent,
//! so the executor may retry it after a transient failure.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use weir_runtime::error::{Result, WeirError};

const STAGING: &str = ".staging";
const JSONL: &str = ".jsonl";

/// The bytes of one partition since its last prepare.
#[derive(Debug)]
struct OpenFile {
    file: File,
    /// Length of the bytes fully written; a failed append is cut back to it on the next one.
    good_len: u64,
    torn: bool,
}

/// Per-partition, per-epoch files in one directory. See the module docs.
#[derive(Debug)]
pub struct EpochFiles {
    dir: PathBuf,
    staging: PathBuf,
    prefix: String,
    /// The file name extension, with its dot.
    ext: String,
    open: HashMap<i32, OpenFile>,
    /// Epochs prepared (staged) and not yet committed, per partition.
    prepared: HashMap<i32, BTreeSet<u64>>,
}

impl EpochFiles {
    /// Files named `<prefix>-p<p>-...` in `dir`, which is created if absent.
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Result<Self> {
        Self::with_extension(dir, prefix, JSONL)
    }

    /// Files named `<prefix>-p<p>-...<ext>` (`ext` with its dot, e.g. `.parquet`) in `dir`.
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
        })
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_path(&self, partition: i32) -> PathBuf {
        self.staging
            .join(format!("{}-p{partition}-open{}", self.prefix, self.ext))
    }

    fn staged_path(&self, partition: i32, epoch: u64) -> PathBuf {
        self.staging
            .join(format!("{}-p{partition}-e{epoch}{}", self.prefix, self.ext))
    }

    fn committed_path(&self, partition: i32, epoch: u64) -> PathBuf {
        self.dir.join(format!(
            "{}-p{partition}-e{epoch:010}{}",
            self.prefix, self.ext
        ))
    }

    /// Append `bytes` (whole lines) to the open file of `partition`. Not durable before
    /// [`prepare`](Self::prepare). After a failed append, the next one first cuts the file
    /// back to the last complete append, so a retried write never leaves a torn line.
    pub fn append(&mut self, partition: i32, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = self.open_path(partition);
        let open = match self.open.entry(partition) {
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

    /// Make everything appended for `partition` durable as epoch `epoch`: fsync the open file,
    /// rename it to its staged name, fsync the staging directory. No bytes, no file.
    pub fn prepare(&mut self, partition: i32, epoch: u64) -> Result<()> {
        let open_path = self.open_path(partition);
        if let Some(open) = self.open.remove(&partition) {
            let synced = if open.torn {
                open.file.set_len(open.good_len)
            } else {
                Ok(())
            }
            .and_then(|_| open.file.sync_all());
            if let Err(e) = synced {
                self.open.insert(partition, open);
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
                let staged = self.staged_path(partition, epoch);
                fs::rename(&open_path, &staged).map_err(|e| WeirError::io(&staged, e))?;
                self.prepared.entry(partition).or_default().insert(epoch);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WeirError::io(&open_path, e)),
        }
        sync_dir(&self.staging)
    }

    /// Publish the staged epochs of `partition` up to `epoch` (normally just `epoch`).
    pub fn commit(&mut self, partition: i32, epoch: u64) -> Result<()> {
        let Some(pending) = self.prepared.get_mut(&partition) else {
            return Ok(());
        };
        let due: Vec<u64> = pending.range(..=epoch).copied().collect();
        if due.is_empty() {
            return Ok(());
        }
        for e in &due {
            let staged = self.staged_path(partition, *e);
            let target = self.committed_path(partition, *e);
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
            .get_mut(&partition)
            .expect("invariant: present above");
        for e in due {
            pending.remove(&e);
        }
        Ok(())
    }

    /// Bring the files of `partition` in line with the stored checkpoint of epoch
    /// `committed` (`None`: no checkpoint yet). See the module docs.
    pub fn recover(&mut self, partition: i32, committed: Option<u64>) -> Result<()> {
        self.open.remove(&partition);
        self.prepared.remove(&partition);
        let open_path = self.open_path(partition);
        match fs::remove_file(&open_path) {
            Ok(()) => debug!(path = %open_path.display(), "discarded unprepared output"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WeirError::io(&open_path, e)),
        }
        for (p, epoch, path) in self.list(&self.staging)? {
            if p != partition {
                continue;
            }
            if committed.is_some_and(|c| epoch <= c) {
                let target = self.committed_path(partition, epoch);
                fs::rename(&path, &target).map_err(|e| WeirError::io(&target, e))?;
                debug!(
                    partition,
                    epoch, "published output of an interrupted commit"
                );
            } else {
                fs::remove_file(&path).map_err(|e| WeirError::io(&path, e))?;
                debug!(
                    partition,
                    epoch, "discarded output newer than the checkpoint"
                );
            }
        }
        for (p, epoch, path) in self.list(&self.dir)? {
            if p == partition && committed.is_none_or(|c| epoch > c) {
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

    /// `(partition, epoch, path)` of the epoch files of this prefix in `dir`.
    fn list(&self, dir: &Path) -> Result<Vec<(i32, u64, PathBuf)>> {
        list_epoch_files(dir, &self.prefix, &self.ext)
    }

    /// The published `.jsonl` files of `prefix` in `dir`, ordered by partition, then epoch.
    pub fn committed_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
        Self::committed_files_with_extension(dir, prefix, JSONL)
    }

    /// The published files of `prefix` ending in `ext` in `dir`, ordered by partition, then
    /// epoch.
    pub fn committed_files_with_extension(
        dir: &Path,
        prefix: &str,
        ext: &str,
    ) -> Result<Vec<PathBuf>> {
        let mut files = list_epoch_files(dir, prefix, ext)?;
        files.sort_by_key(|(p, e, _)| (*p, *e));
        Ok(files.into_iter().map(|(_, _, path)| path).collect())
    }
}

/// Parses `<prefix>-p<partition>-e<epoch><ext>`.
fn parse_name(name: &str, prefix: &str, ext: &str) -> Option<(i32, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix("-p")?;
    let rest = rest.strip_suffix(ext)?;
    let (partition, epoch) = rest.rsplit_once("-e")?;
    Some((partition.parse().ok()?, epoch.parse().ok()?))
}

fn list_epoch_files(dir: &Path, prefix: &str, ext: &str) -> Result<Vec<(i32, u64, PathBuf)>> {
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
        if let Some((p, e)) = parse_name(name, prefix, ext) {
            out.push((p, e, entry.path()));
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
        f.append(0, b"a\n").unwrap();
        f.append(0, b"b\n").unwrap();
        assert_eq!(published(tmp.path()), "");
        f.prepare(0, 1).unwrap();
        assert_eq!(published(tmp.path()), "");
        assert_eq!(names(&tmp.path().join(STAGING)), ["part-p0-e1.jsonl"]);
        f.commit(0, 1).unwrap();
        assert_eq!(published(tmp.path()), "a\nb\n");
        assert!(names(tmp.path()).contains(&"part-p0-e0000000001.jsonl".to_string()));
    }

    #[test]
    fn an_empty_epoch_produces_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(0, b"").unwrap();
        f.prepare(0, 1).unwrap();
        f.commit(0, 1).unwrap();
        assert_eq!(names(tmp.path()), [STAGING]);
        assert!(names(&tmp.path().join(STAGING)).is_empty());
    }

    #[test]
    fn prepare_and_commit_can_be_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(3, b"x\n").unwrap();
        f.prepare(3, 4).unwrap();
        f.prepare(3, 4).unwrap();
        f.commit(3, 4).unwrap();
        f.commit(3, 4).unwrap();
        assert_eq!(published(tmp.path()), "x\n");
    }

    #[test]
    fn recover_publishes_old_epochs_and_deletes_newer_ones_of_that_partition_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.append(0, b"e1\n").unwrap();
        f.prepare(0, 1).unwrap();
        f.append(0, b"e2\n").unwrap();
        f.prepare(0, 2).unwrap();
        f.append(0, b"open\n").unwrap();
        f.append(1, b"other\n").unwrap();
        f.prepare(1, 1).unwrap();
        drop(f); // crash: nothing committed

        let mut f = EpochFiles::new(tmp.path(), "part").unwrap();
        f.recover(0, Some(1)).unwrap();
        assert_eq!(published(tmp.path()), "e1\n");
        assert_eq!(names(&tmp.path().join(STAGING)), ["part-p1-e1.jsonl"]);
        f.recover(1, None).unwrap();
        assert!(names(&tmp.path().join(STAGING)).is_empty());
        assert_eq!(published(tmp.path()), "e1\n");
    }

    #[test]
    fn prefixes_sharing_a_directory_do_not_see_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = EpochFiles::new(tmp.path(), "part").unwrap();
        let mut b = EpochFiles::new(tmp.path(), "dlq").unwrap();
        a.append(0, b"a\n").unwrap();
        b.append(0, b"b\n").unwrap();
        a.prepare(0, 1).unwrap();
        b.prepare(0, 1).unwrap();
        b.recover(0, None).unwrap();
        a.commit(0, 1).unwrap();
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
            f.append(p, format!("{p}/{e}\n").as_bytes()).unwrap();
            f.prepare(p, e).unwrap();
            f.commit(p, e).unwrap();
        }
        assert_eq!(published(tmp.path()), "0/3\n2/9\n2/11\n10/1\n");
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(
            parse_name("part-p3-e0000000012.jsonl", "part", JSONL),
            Some((3, 12))
        );
        assert_eq!(
            parse_name("part-p-1-e5.jsonl", "part", JSONL),
            Some((-1, 5))
        );
        assert_eq!(parse_name("part-p3-open.jsonl", "part", JSONL), None);
        assert_eq!(parse_name("dlq-p3-e1.jsonl", "part", JSONL), None);
        assert_eq!(
            parse_name("part-p3-e0000000012.parquet", "part", ".parquet"),
            Some((3, 12))
        );
        assert_eq!(parse_name("part-p3-e12.parquet", "part", JSONL), None);
    }
}
