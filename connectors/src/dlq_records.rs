//! Dead letters as the DLQ targets hold them (JSONL files, a Kafka topic, a PostgreSQL
//! table), read back for `weir dlq list|show|replay`.
//!
//! Every target keeps, per dead letter, the original key and payload bytes, the error kind,
//! the stage, the message, the source position, the pipeline, the attempts, the first and
//! last failure time and a stable id ([`weir_runtime::dlq::dead_letter_id`]). A letter
//! written again under the same id (a Kafka DLQ's rerun after a crash, a replay that failed
//! again at the same stage) replaces the older record: the one that failed last wins. A
//! replayed letter is marked (a [`ReplayMark`]): in a JSONL file and a Kafka topic a mark is a
//! record of its own that applies to the records of its id written before it; in PostgreSQL
//! it is the row's `replayed_at`. [`fold`] applies both rules to what a log target holds.

use std::collections::HashMap;

use weir_runtime::DeadLetter;

/// A dead letter read back from a DLQ target: the letter as written, with its id and the
/// replay mark a target keeps beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// The stable id (16 hex digits). Records written before ids existed get the id their
    /// fields give ([`weir_runtime::dlq::dead_letter_id`]).
    pub id: String,
    /// The letter, its bytes and failure times included (`first_failure_ms` is `time_ms`
    /// in records from before it existed).
    pub letter: DeadLetter,
    /// When `weir dlq replay` marked it replayed (epoch ms), if it did.
    pub replayed_ms: Option<i64>,
}

impl DeadLetterRecord {
    /// The record of `letter`, as written now.
    pub fn of_letter(letter: &DeadLetter) -> Self {
        Self {
            id: letter.id(),
            letter: letter.clone(),
            replayed_ms: None,
        }
    }

    /// `topic/partition@offset`, or `row (partition p)` for a letter of an output row.
    pub fn position(&self) -> String {
        let l = &self.letter;
        if l.offset < 0 {
            return match l.partition {
                p if p < 0 => "row (global)".to_string(),
                p => format!("row ({}{p})", self.topic_prefix()),
            };
        }
        format!("{}/{}@{}", l.topic, l.partition, l.offset)
    }

    fn topic_prefix(&self) -> String {
        if self.letter.topic.is_empty() {
            "partition ".to_string()
        } else {
            format!("{}/", self.letter.topic)
        }
    }

    /// Whether `weir dlq replay` can feed it back: it is a message of the source (not an
    /// output row derived from many).
    pub fn replayable(&self) -> bool {
        self.letter.offset >= 0 && !self.letter.topic.is_empty()
    }
}

/// `weir dlq replay` marked the dead letter `id` replayed at `time_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMark {
    pub id: String,
    pub time_ms: i64,
}

/// What a log target (JSONL files, a Kafka topic) holds, in the order it was written, folded
/// into one record per id: the record that failed last wins (at equal times, the later one),
/// and a mark at or after that time marks it replayed. Ordered by last failure time, then
/// id.
pub fn fold(records: Vec<DeadLetterRecord>, marks: &[ReplayMark]) -> Vec<DeadLetterRecord> {
    let mut by_id: HashMap<String, DeadLetterRecord> = HashMap::new();
    for r in records {
        match by_id.get(&r.id) {
            Some(old) if old.letter.time_ms > r.letter.time_ms => {}
            _ => {
                by_id.insert(r.id.clone(), r);
            }
        }
    }
    for m in marks {
        if let Some(r) = by_id.get_mut(&m.id) {
            if m.time_ms >= r.letter.time_ms && r.replayed_ms.is_none_or(|t| t < m.time_ms) {
                r.replayed_ms = Some(m.time_ms);
            }
        }
    }
    let mut out: Vec<DeadLetterRecord> = by_id.into_values().collect();
    out.sort_by(|a, b| (a.letter.time_ms, &a.id).cmp(&(b.letter.time_ms, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weir_runtime::{ErrorKind, Stage};

    fn record(offset: i64, time_ms: i64, attempts: u32) -> DeadLetterRecord {
        let letter = DeadLetter {
            pipeline: Arc::from("p"),
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: None,
            payload: Some(b"x".to_vec()),
            kind: ErrorKind::InvalidJson,
            message: "bad".into(),
            stage: Stage::Decode,
            attempts,
            time_ms,
            first_failure_ms: 5,
        };
        DeadLetterRecord::of_letter(&letter)
    }

    #[test]
    fn the_record_that_failed_last_wins_and_a_later_mark_marks_it() {
        let a1 = record(1, 10, 1);
        let a2 = record(1, 30, 2);
        let b = record(2, 20, 1);
        let c = record(3, 40, 1);
        let marks = [
            ReplayMark {
                id: b.id.clone(),
                time_ms: 25,
            },
            // Older than c's record: c failed again after this replay.
            ReplayMark {
                id: c.id.clone(),
                time_ms: 35,
            },
        ];
        let folded = fold(vec![a2.clone(), b.clone(), a1, c.clone()], &marks);
        assert_eq!(
            folded,
            vec![
                DeadLetterRecord {
                    replayed_ms: Some(25),
                    ..b
                },
                a2,
                c
            ]
        );
    }

    #[test]
    fn positions_read_as_topic_partition_offset() {
        assert_eq!(record(7, 0, 1).position(), "t/0@7");
        let mut row = record(-1, 0, 1);
        row.letter.topic = Arc::from("");
        row.letter.partition = 3;
        assert_eq!(row.position(), "row (partition 3)");
        assert!(!row.replayable());
        row.letter.partition = -1;
        assert_eq!(row.position(), "row (global)");
    }
}
