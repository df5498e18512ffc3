//! Upgrading from epoch files named by partition number alone (`part-p<p>-e<E>`) to files
//! named by lane (`part-t<topic>-p<p>-e<E>`), with real files in the old layout
//! (ARCHITECTURE.md, "Lanes"): with one topic, a staged epoch is settled as its lane's and
//! nothing is lost; with several topics it is refused, naming the file.

use crate::common;

use std::fs;
use std::path::Path;

use common::cli::{stderr, weir};
use common::kafka::{brokers, create_topic};
use weir::connectors::read_jsonl_dir;

const FIELDS: &str = r#"fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]"#;

fn pipeline(source: &str) -> String {
    format!(
        r#"
name = "upgrade"

{source}

[schema]
event_time = "event_time"
partition_key = "sensor_id"
{FIELDS}

[[operators]]
type = "project"
columns = [
  {{ expr = "event_id", name = "event_id" }},
  {{ expr = "temperature", name = "temperature" }},
]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "ckpt"
interval_ms = 20

[batch]
max_rows = 200
linger_ms = 5
"#
    )
}

fn event_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = read_jsonl_dir(dir.join("out"))
        .unwrap()
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The published files of lane `generator/<p>`, oldest epoch first.
fn published(dir: &Path, p: i32) -> Vec<String> {
    let prefix = format!("part-tgenerator-p{p}-e");
    let mut names: Vec<String> = fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn staged_and_published_files_of_the_old_layout_are_kept_on_upgrade_over_one_topic() {
    let dir = tempfile::tempdir().unwrap();
    let source = "[source]\ntype = \"generator\"\nevents = 4000\npartitions = 2\nsensors = 20";
    fs::write(dir.path().join("p.toml"), pipeline(source)).unwrap();
    let first = weir(&["run", "p.toml"], dir.path());
    assert!(first.status.success(), "{}", stderr(&first));
    let all = event_ids(dir.path());
    assert_eq!(all.len(), 4000);

    // As an older weir left it: partition 0's last epoch staged under the old name (its
    // checkpoint stored, the rename not done: a crash in between), an unprepared open file,
    // and partition 1's files published under the old names.
    let out = dir.path().join("out");
    let staging = out.join(".staging");
    let last = published(dir.path(), 0).pop().unwrap();
    let epoch: u64 = last
        .trim_start_matches("part-tgenerator-p0-e")
        .trim_end_matches(".jsonl")
        .parse()
        .unwrap();
    fs::rename(
        out.join(&last),
        staging.join(format!("part-p0-e{epoch}.jsonl")),
    )
    .unwrap();
    fs::write(
        staging.join("part-p0-open.jsonl"),
        "{\"event_id\":\"never\"}\n",
    )
    .unwrap();
    for name in published(dir.path(), 1) {
        let old = name.replace("part-tgenerator-p1-", "part-p1-");
        fs::rename(out.join(&name), out.join(old)).unwrap();
    }
    assert!(
        event_ids(dir.path()).len() < all.len(),
        "the staged epoch is not published"
    );

    // The upgraded weir resumes from the checkpoints (nothing left to read) and settles them.
    let second = weir(&["run", "p.toml"], dir.path());
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(event_ids(dir.path()), all, "every event once, none lost");
    assert!(
        out.join(format!("part-tgenerator-p0-e{epoch:010}.jsonl"))
            .exists(),
        "published under the lane's name"
    );
    let left: Vec<_> = fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "staging is settled: {left:?}");
}

#[test]
fn a_staged_file_of_the_old_layout_is_refused_naming_it_over_two_topics() {
    let (ta, tb) = (create_topic(2), create_topic(2));
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "[source]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{ta}\", \"{tb}\"]\ngroup_id = \"upgrade-{ta}\"\nassignment = \"manual\"",
        brokers()
    );
    fs::write(dir.path().join("p.toml"), pipeline(&source)).unwrap();
    let staging = dir.path().join("out/.staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("part-p0-e3.jsonl"), "{\"event_id\":\"old\"}\n").unwrap();
    let run = weir(&["run", "p.toml"], dir.path());
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("part-p0-e3.jsonl"), "{err}");
    assert!(
        err.contains(&format!("several topics ({ta}, {tb})")),
        "{err}"
    );
    assert!(err.contains("move the file out of"), "{err}");
    // The file is left for the user.
    assert!(staging.join("part-p0-e3.jsonl").exists());
}
