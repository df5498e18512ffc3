//! The `jsonl` dead-letter queue: one JSON line per dead letter, in files per source
//! partition and checkpoint epoch, published when the checkpoint commits (the protocol of
//! [`crate::epoch_files`]): an offset is never committed before its dead letters are durable.
//!
//! Each line holds `id` (the stable dead-letter id), `pipeline`, `topic`, `partition`,
//! `offset`, `key_b64` and `payload_b64` (the original bytes in base64, or null),
//! `payload_utf8` (the payload as text when it is valid UTF-8, else null), `kind`, `message`,
//! `stage`, `attempts`, `time_ms` (the last failure) and `first_failure_ms`. Lines written
//! before `id` and `first_failure_ms` existed are read with the id their fields give and
//! `first_failure_ms = time_ms`. `weir dlq replay` appends a mark line
//! `{"replayed": "<id>", "time_ms": ...}` for each letter that went through, in the epoch of
//! the letter's lane that holds the replay's output (so the mark is published with it).
//! Published files are `<path>/dlq-t<topic>-p<partition>-e<epoch:010>.jsonl` (`dlq-global-...`
//! for rows of the global stage; layout in [`crate::epoch_files`]); [`read_dlq_dir`] reads
//! the letters back as written, [`read_dlq_entries`] one record per id with the marks applied
//! ([`crate::dlq_records::fold`]).

use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use weir_runtime::dlq::{dead_letter_id, is_dead_letter_id};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::{EpochParticipant, LaneClaim, SourceTopics};
use weir_runtime::{DeadLetter, DlqWriter, ErrorKind, Lane, Stage};

pub use crate::dlq_records::DeadLetterRecord;
use crate::dlq_records::{fold, ReplayMark};
use crate::epoch_files::EpochFiles;
use crate::{base64, config_key};

const PREFIX: &str = "dlq";

/// Configuration of the `jsonl` dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlDlqConfig {
    /// Directory of the dead-letter files (created if absent).
    pub path: PathBuf,
}

impl JsonlDlqConfig {
    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(format!(
                "{}: must not be empty",
                config_key(key_prefix, "path")
            ));
        }
        errors
    }
}

/// One line of a dead-letter file, as written.
#[derive(Serialize)]
struct LineOut<'a> {
    id: String,
    pipeline: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    key_b64: Option<String>,
    payload_b64: Option<String>,
    payload_utf8: Option<&'a str>,
    kind: &'static str,
    message: &'a str,
    stage: &'a Stage,
    attempts: u32,
    time_ms: i64,
    first_failure_ms: i64,
}

/// A mark line: `weir dlq replay` fed the letter `replayed` through the pipeline again.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkLine {
    replayed: String,
    time_ms: i64,
}

/// One line of a dead-letter file, as read.
#[derive(Deserialize)]
struct LineIn {
    /// Absent in files from before ids.
    #[serde(default)]
    id: Option<String>,
    pipeline: String,
    topic: String,
    partition: i32,
    offset: i64,
    key_b64: Option<String>,
    payload_b64: Option<String>,
    #[allow(dead_code)] // derived from payload_b64; kept in the file for people
    payload_utf8: Option<String>,
    kind: ErrorKind,
    message: String,
    stage: Stage,
    attempts: u32,
    time_ms: i64,
    /// Absent in files from before it: the time of the (only recorded) failure.
    #[serde(default)]
    first_failure_ms: Option<i64>,
}

/// The `jsonl` dead-letter queue. See the module docs.
#[derive(Debug)]
pub struct JsonlDlq {
    files: EpochFiles,
    buf: Vec<u8>,
}

impl JsonlDlq {
    /// Writes into `config.path`, which it creates.
    pub fn new(config: &JsonlDlqConfig) -> Result<Self> {
        let errors = config.validate("dlq");
        if !errors.is_empty() {
            return Err(WeirError::Dlq {
                message: errors.join("; "),
            });
        }
        Ok(Self {
            files: EpochFiles::new(&config.path, PREFIX)?,
            buf: Vec::new(),
        })
    }
}

fn encode_line(letter: &DeadLetter, out: &mut Vec<u8>) -> Result<()> {
    let line = LineOut {
        id: letter.id(),
        pipeline: &letter.pipeline,
        topic: &letter.topic,
        partition: letter.partition,
        offset: letter.offset,
        key_b64: letter.key.as_deref().map(base64::encode),
        payload_b64: letter.payload.as_deref().map(base64::encode),
        payload_utf8: letter
            .payload
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok()),
        kind: letter.kind.as_str(),
        message: &letter.message,
        stage: &letter.stage,
        attempts: letter.attempts,
        time_ms: letter.time_ms,
        first_failure_ms: letter.first_failure_ms,
    };
    serde_json::to_writer(&mut *out, &line).map_err(|e| WeirError::Dlq {
        message: format!("encode dead letter: {e}"),
    })?;
    out.push(b'\n');
    Ok(())
}

impl EpochParticipant for JsonlDlq {
    fn source_topics(&mut self, topics: &SourceTopics) {
        self.files.set_source_topics(topics);
    }

    fn claimed(&mut self, lane: &Lane, claim: LaneClaim) {
        self.files.claimed(lane, claim);
    }

    fn recover(&mut self, lane: &Lane, committed_epoch: Option<u64>) -> Result<()> {
        self.files.recover(lane, committed_epoch)
    }

    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.files.prepare(lane, epoch)
    }

    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.files.commit(lane, epoch)
    }
}

impl DlqWriter for JsonlDlq {
    fn write(&mut self, lane: &Lane, letters: &[DeadLetter]) -> Result<()> {
        self.buf.clear();
        for letter in letters {
            encode_line(letter, &mut self.buf)?;
        }
        self.files.append(lane, &self.buf)
    }

    /// Appends a mark line per id to the lane's open epoch: published with the checkpoint
    /// that holds the replay's output.
    fn mark_replayed(&mut self, lane: &Lane, ids: &[String]) -> Result<()> {
        self.buf.clear();
        let time_ms = weir_runtime::metrics::now_ms();
        for id in ids {
            let mark = MarkLine {
                replayed: id.clone(),
                time_ms,
            };
            serde_json::to_writer(&mut self.buf, &mark).map_err(|e| WeirError::Dlq {
                message: format!("encode a replay mark: {e}"),
            })?;
            self.buf.push(b'\n');
        }
        self.files.append(lane, &self.buf)
    }
}

/// Every dead letter of the published files in `dir`, by lane, then epoch, then line, as
/// written (mark lines left out).
pub fn read_dlq_dir(dir: impl AsRef<Path>) -> Result<Vec<DeadLetterRecord>> {
    Ok(read_dlq_lines(dir.as_ref())?.0)
}

/// One record per dead-letter id of the published files in `dir`: the one that failed
/// last, marked replayed when `weir dlq replay` marked it since
/// ([`crate::dlq_records::fold`]). Ordered by last failure time.
pub fn read_dlq_entries(dir: impl AsRef<Path>) -> Result<Vec<DeadLetterRecord>> {
    let (records, marks) = read_dlq_lines(dir.as_ref())?;
    Ok(fold(records, &marks))
}

fn read_dlq_lines(dir: &Path) -> Result<(Vec<DeadLetterRecord>, Vec<ReplayMark>)> {
    let mut records = Vec::new();
    let mut marks = Vec::new();
    for path in EpochFiles::committed_files(dir, PREFIX)? {
        let text = fs::read_to_string(&path).map_err(|e| WeirError::io(&path, e))?;
        for (i, line) in text.lines().enumerate() {
            let bad = |what: String| WeirError::Dlq {
                message: format!("{}:{}: {what}", path.display(), i + 1),
            };
            if line.starts_with("{\"replayed\":") {
                let m: MarkLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                marks.push(ReplayMark {
                    id: m.replayed,
                    time_ms: m.time_ms,
                });
                continue;
            }
            let l: LineIn = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            let decode = |field: &str, b64: Option<String>| {
                b64.map(|t| base64::decode(&t))
                    .transpose()
                    .map_err(|e| bad(format!("{field}: {e}")))
            };
            let key = decode("key_b64", l.key_b64)?;
            let payload = decode("payload_b64", l.payload_b64)?;
            let id = match l.id {
                Some(id) if is_dead_letter_id(&id) => id,
                Some(id) => return Err(bad(format!("id: {id:?} is not a dead-letter id"))),
                None => dead_letter_id(
                    &l.pipeline,
                    &l.topic,
                    l.partition,
                    l.offset,
                    &l.stage,
                    payload.as_deref(),
                ),
            };
            records.push(DeadLetterRecord {
                id,
                letter: DeadLetter {
                    key,
                    payload,
                    pipeline: l.pipeline.into(),
                    topic: l.topic.into(),
                    partition: l.partition,
                    offset: l.offset,
                    kind: l.kind,
                    message: l.message,
                    stage: l.stage,
                    attempts: l.attempts,
                    time_ms: l.time_ms,
                    first_failure_ms: l.first_failure_ms.unwrap_or(l.time_ms),
                },
                replayed_ms: None,
            });
        }
    }
    Ok((records, marks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Partition `p` of the letters' topic.
    fn l(p: i32) -> Lane {
        Lane::new("readings", p)
    }

    fn letter(partition: i32, offset: i64, payload: Option<&[u8]>) -> DeadLetter {
        DeadLetter {
            pipeline: Arc::from("iot"),
            topic: Arc::from("readings"),
            partition,
            offset,
            key: Some(vec![0, 159, 146, 150]),
            payload: payload.map(<[u8]>::to_vec),
            kind: ErrorKind::InvalidJson,
            message: "expected value at line 1 column 1".into(),
            stage: Stage::Operator("avg \"x\"".into()),
            attempts: 2,
            time_ms: 1_700_000_000_123,
            first_failure_ms: 1_700_000_000_001,
        }
    }

    fn dlq(dir: &Path) -> JsonlDlq {
        JsonlDlq::new(&JsonlDlqConfig {
            path: dir.to_path_buf(),
        })
        .unwrap()
    }

    #[test]
    fn a_round_trip_preserves_arbitrary_payload_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = dlq(tmp.path());
        let letters = [
            letter(0, 7, Some(b"\xff\xfe\x00not utf8\n")),
            letter(1, 3, Some(b"{\"ok\": \"text\"}")),
            letter(0, 9, None),
            DeadLetter {
                key: None,
                stage: Stage::Decode,
                kind: ErrorKind::EmptyMessage,
                ..letter(0, 10, Some(b""))
            },
        ];
        for p in [0, 1] {
            let mine: Vec<DeadLetter> = letters
                .iter()
                .filter(|l| l.partition == p)
                .cloned()
                .collect();
            d.write(&l(p), &mine).unwrap();
        }
        for p in [0, 1] {
            d.prepare(&l(p), 1).unwrap();
            d.commit(&l(p), 1).unwrap();
        }
        let back = read_dlq_dir(tmp.path()).unwrap();
        let expected: Vec<DeadLetter> = [0, 2, 3, 1].iter().map(|i| letters[*i].clone()).collect();
        assert_eq!(
            back.into_iter().map(|r| r.letter).collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn lines_hold_the_documented_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = dlq(tmp.path());
        d.write(
            &l(2),
            &[
                letter(2, 5, Some(b"caf\xc3\xa9")),
                letter(2, 6, Some(b"\xc3")),
            ],
        )
        .unwrap();
        d.prepare(&l(2), 4).unwrap();
        d.commit(&l(2), 4).unwrap();
        let text =
            fs::read_to_string(tmp.path().join("dlq-treadings-p2-e0000000004.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({
                "id": letter(2, 5, None).id(),
                "pipeline": "iot", "topic": "readings", "partition": 2, "offset": 5,
                "key_b64": "AJ+Slg==", "payload_b64": "Y2Fmw6k=", "payload_utf8": "café",
                "kind": "invalid_json", "message": "expected value at line 1 column 1",
                "stage": {"type": "operator", "id": "avg \"x\""}, "attempts": 2,
                "time_ms": 1_700_000_000_123i64, "first_failure_ms": 1_700_000_000_001i64
            })
        );
        assert_eq!(lines[1]["payload_utf8"], serde_json::Value::Null);
        assert_eq!(lines[1]["payload_b64"], "ww==");
    }

    #[test]
    fn dead_letters_follow_the_checkpoint_of_their_partition() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = dlq(tmp.path());
        d.write(&l(0), &[letter(0, 1, Some(b"a"))]).unwrap();
        d.prepare(&l(0), 1).unwrap();
        d.write(&l(0), &[letter(0, 2, Some(b"b"))]).unwrap();
        d.prepare(&l(0), 2).unwrap();
        drop(d); // crash after storing the checkpoint of epoch 1 only
        let mut d = dlq(tmp.path());
        d.recover(&l(0), Some(1)).unwrap();
        let offsets: Vec<i64> = read_dlq_dir(tmp.path())
            .unwrap()
            .iter()
            .map(|r| r.letter.offset)
            .collect();
        assert_eq!(offsets, [1]);
    }

    #[test]
    fn a_line_from_before_ids_reads_with_the_id_its_fields_give() {
        let tmp = tempfile::tempdir().unwrap();
        let old = r#"{"pipeline":"iot","topic":"readings","partition":2,"offset":5,"key_b64":null,"payload_b64":"eA==","payload_utf8":"x","kind":"invalid_json","message":"m","stage":{"type":"decode"},"attempts":1,"time_ms":77}"#;
        fs::write(
            tmp.path().join("dlq-treadings-p2-e0000000001.jsonl"),
            format!("{old}\n"),
        )
        .unwrap();
        let back = read_dlq_entries(tmp.path()).unwrap();
        assert_eq!(back.len(), 1);
        let r = &back[0];
        assert_eq!(
            r.id,
            dead_letter_id("iot", "readings", 2, 5, &Stage::Decode, Some(b"x"))
        );
        assert_eq!(
            (r.letter.time_ms, r.letter.first_failure_ms, r.replayed_ms),
            (77, 77, None)
        );
        // The same letter written now has the same id.
        let mut now = letter(2, 5, Some(b"x"));
        now.stage = Stage::Decode;
        assert_eq!(now.id(), r.id);
    }

    #[test]
    fn a_replay_mark_is_published_with_its_epoch_and_marks_the_letter() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = dlq(tmp.path());
        let mut a = letter(0, 1, Some(b"a"));
        let b = letter(0, 2, Some(b"b"));
        a.time_ms = 1;
        d.write(&l(0), &[a.clone(), b.clone()]).unwrap();
        d.prepare(&l(0), 1).unwrap();
        d.commit(&l(0), 1).unwrap();
        d.mark_replayed(&l(0), &[a.id()]).unwrap();
        let pending = |dir: &Path| -> Vec<i64> {
            read_dlq_entries(dir)
                .unwrap()
                .iter()
                .filter(|r| r.replayed_ms.is_none())
                .map(|r| r.letter.offset)
                .collect()
        };
        assert_eq!(
            pending(tmp.path()),
            [1, 2],
            "not published before its epoch"
        );
        d.prepare(&l(0), 2).unwrap();
        d.commit(&l(0), 2).unwrap();
        assert_eq!(pending(tmp.path()), [2]);
        // read_dlq_dir still gives the letters as written, marks left out.
        assert_eq!(read_dlq_dir(tmp.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_line_is_an_error_naming_the_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("dlq-p0-e0000000001.jsonl"), "{}\n").unwrap();
        let err = read_dlq_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("dlq-p0-e0000000001.jsonl:1"), "{err}");
    }
}
