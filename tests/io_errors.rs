//! Errors that end (ARCHITECTURE.md, "Errors and retries"): a full disk under the checkpoint
//! store or under a file sink ends `weir run` at once with exit code ≠ 0 and a message naming
//! the path and the OS error, without retrying; a sink whose writes keep failing with a
//! transient error ends once its retry budget (`[worker] retry_max_attempts`,
//! `retry_max_elapsed_ms`) is spent. In every case a rerun after the cause is gone resumes
//! exactly: its output equals an uninterrupted run's, nothing twice, nothing lost.
//!
//! The full disk is a small tmpfs the test mounts (root only; skipped with the reason
//! otherwise) and always unmounts, also when the test fails.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cli::{spawn_weir, stderr, wait_within, weir};
use common::IOT_SCHEMA;
use weir::connectors::{read_dlq_dir, read_jsonl_dir};

/// Longer than any run of these pipelines takes when it ends as it should; a run still going
/// then is taken as retrying for ever.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted for one test; unmounted on drop (also when the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. `1m`) at `dir`; `None`, with the reason printed, where
    /// mounting is not permitted (not root, or a container without the capability).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} (needs root and CAP_SYS_ADMIN): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run `mount`: {e}");
                None
            }
        }
    }

    /// Fill the filesystem to the last byte with one file, which is returned (delete it to
    /// free the space).
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for size in [64 * 1024, 4096, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process of a failed test): detach it now, freed once unused.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Rate-limited generator input (3 s at full speed), so that a run is still going when the
/// test breaks its disk or its database.
fn pipeline(sink: &str, checkpoints: &Path, worker: &str) -> String {
    format!(
        r#"
name = "full"
[source]
type = "generator"
seed = 11
sensors = 40
partitions = 2
events = 6000
events_per_sec = 2000
poison_ratio = 0.01

{IOT_SCHEMA}

[[operators]]
type = "tumble"
size_ms = 1000
keys = ["sensor_id"]
aggregates = [
  {{ function = "count", alias = "n" }},
  {{ function = "avg", column = "temperature", alias = "avg_temp" }},
]

{sink}

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "{}"
interval_ms = 50

[batch]
max_rows = 200
linger_ms = 5

{worker}
"#,
        checkpoints.display()
    )
}

fn jsonl_sink(path: &Path) -> String {
    format!(
        "[[sinks]]\ntype = \"jsonl\"\npath = \"{}\"\n",
        path.display()
    )
}

fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = read_jsonl_dir(dir)
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    v.sort();
    v
}

fn sorted_dlq(dir: &Path) -> Vec<(i32, i64, String)> {
    let mut v: Vec<(i32, i64, String)> = read_dlq_dir(dir)
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.letter.partition,
                l.letter.offset,
                l.letter.kind.as_str().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A directory `base/name` holding `p.toml` = `text`.
fn run_dir(base: &Path, name: &str, text: &str) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("p.toml"), text).unwrap();
    d
}

/// Wait (bounded) until `ready` holds while `child` runs; kills it and fails otherwise.
fn wait_for(child: &mut std::process::Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        let ended = child.try_wait().unwrap();
        if ended.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir ended or stalled before {what} ({ended:?})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The run ended by itself within [`RUN_LIMIT`] with a non-zero code and no panic.
fn failed_run(out: Option<Output>) -> String {
    let out =
        out.unwrap_or_else(|| panic!("weir did not end within {RUN_LIMIT:?}: it retries for ever"));
    let err = stderr(&out);
    let code = out.status.code();
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn any_file_in(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(suffix))
    })
}

#[test]
fn a_full_disk_under_the_checkpoints_ends_the_run_naming_the_path_and_a_rerun_resumes_exactly() {
    let base = tempfile::tempdir().unwrap();
    let straight = run_dir(
        base.path(),
        "straight",
        &pipeline(&jsonl_sink(Path::new("out")), Path::new("checkpoints"), ""),
    );
    let out = weir(&["run", "p.toml"], &straight);
    assert!(out.status.success(), "{}", stderr(&out));
    let truth = sorted_rows(&straight.join("out"));
    assert!(truth.len() > 100, "{} windows", truth.len());

    let Some(disk) = Tmpfs::mount(&base.path().join("disk"), "1m") else {
        return;
    };
    let checkpoints = disk.dir.join("checkpoints");
    let dir = run_dir(
        base.path(),
        "full",
        &pipeline(&jsonl_sink(Path::new("out")), &checkpoints, ""),
    );
    let mut child = spawn_weir(&["run", "p.toml"], &dir);
    let stored = checkpoints.join("full").join("generator");
    wait_for(&mut child, "its first checkpoint", || {
        any_file_in(&stored, ".ckpt")
    });
    let filler = disk.fill();
    let err = failed_run(wait_within(child, RUN_LIMIT));
    assert!(
        err.contains(&stored.display().to_string()) && err.contains("No space left on device"),
        "the message names the path and the cause:\n{err}"
    );
    assert!(
        !err.contains("retrying"),
        "a full disk is not retried:\n{err}"
    );

    std::fs::remove_file(filler).unwrap();
    let out = wait_within(spawn_weir(&["run", "p.toml"], &dir), RUN_LIMIT).expect("rerun ends");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sorted_rows(&dir.join("out")),
        truth,
        "the rerun resumes exactly"
    );
    assert_eq!(
        sorted_dlq(&dir.join("dlq")),
        sorted_dlq(&straight.join("dlq"))
    );
}

#[test]
fn a_file_sink_on_a_full_disk_ends_the_run_naming_the_path_and_a_rerun_resumes_exactly() {
    let base = tempfile::tempdir().unwrap();
    let straight = run_dir(
        base.path(),
        "straight",
        &pipeline(&jsonl_sink(Path::new("out")), Path::new("checkpoints"), ""),
    );
    let out = weir(&["run", "p.toml"], &straight);
    assert!(out.status.success(), "{}", stderr(&out));
    let truth = sorted_rows(&straight.join("out"));

    let Some(disk) = Tmpfs::mount(&base.path().join("disk"), "1m") else {
        return;
    };
    let sink_dir = disk.dir.join("out");
    let dir = run_dir(
        base.path(),
        "full",
        &pipeline(&jsonl_sink(&sink_dir), Path::new("checkpoints"), ""),
    );
    let mut child = spawn_weir(&["run", "p.toml"], &dir);
    wait_for(&mut child, "its first published file", || {
        any_file_in(&sink_dir, ".jsonl")
    });
    let filler = disk.fill();
    let err = failed_run(wait_within(child, RUN_LIMIT));
    assert!(
        err.contains(&sink_dir.display().to_string()) && err.contains("No space left on device"),
        "the message names the path and the cause:\n{err}"
    );
    assert!(
        !err.contains("retrying"),
        "a full disk is not retried:\n{err}"
    );

    std::fs::remove_file(filler).unwrap();
    let out = wait_within(spawn_weir(&["run", "p.toml"], &dir), RUN_LIMIT).expect("rerun ends");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted_rows(&sink_dir), truth, "the rerun resumes exactly");
    assert_eq!(
        sorted_dlq(&dir.join("dlq")),
        sorted_dlq(&straight.join("dlq"))
    );
}

fn dump(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT sensor_id, window_start, n, printf('%.9f', avg_temp) FROM windows ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(format!(
            "{}|{}|{}|{}",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_sink_whose_writes_keep_failing_transiently_ends_when_its_retry_budget_is_spent() {
    let sqlite = "[[sinks]]\ntype = \"sqlite\"\npath = \"out.sqlite\"\ntable = \"windows\"\n\
                  key_columns = [\"sensor_id\", \"window_start\"]\n";
    let budget = "[worker]\nretry_max_attempts = 3\nretry_max_elapsed_ms = 30000\n";
    let base = tempfile::tempdir().unwrap();
    let straight = run_dir(
        base.path(),
        "straight",
        &pipeline(sqlite, Path::new("checkpoints"), budget),
    );
    let out = weir(&["run", "p.toml"], &straight);
    assert!(out.status.success(), "{}", stderr(&out));
    let truth = dump(&straight.join("out.sqlite"));
    assert!(truth.len() > 100, "{} windows", truth.len());

    let dir = run_dir(
        base.path(),
        "locked",
        &pipeline(sqlite, Path::new("checkpoints"), budget),
    );
    let mut child = spawn_weir(&["run", "p.toml"], &dir);
    wait_for(&mut child, "its first checkpoint", || {
        any_file_in(&dir.join("checkpoints/full/generator"), ".ckpt")
    });
    // Another process holds the database: every write of the sink is refused as busy (a
    // transient error) after the sink's busy timeout.
    let lock = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    lock.busy_timeout(Duration::from_secs(20)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let err = failed_run(wait_within(child, RUN_LIMIT));
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("database is locked"),
        "the message names the budget and the cause:\n{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "spent within the budget: {:?}",
        started.elapsed()
    );

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let out = wait_within(spawn_weir(&["run", "p.toml"], &dir), RUN_LIMIT).expect("rerun ends");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        dump(&dir.join("out.sqlite")),
        truth,
        "the rerun resumes exactly"
    );
    assert_eq!(
        sorted_dlq(&dir.join("dlq")),
        sorted_dlq(&straight.join("dlq"))
    );
}

#[test]
fn a_retry_budget_of_zero_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = pipeline(
        &jsonl_sink(Path::new("out")),
        Path::new("checkpoints"),
        "[worker]\nretry_max_attempts = 0\nretry_max_elapsed_ms = 0\n",
    );
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let out = weir(&["run", "--check", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for expected in [
        "p.toml: worker.retry_max_attempts: must be positive, got 0",
        "p.toml: worker.retry_max_elapsed_ms: must be positive, got 0",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
