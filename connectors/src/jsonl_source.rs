//! A newline-delimited file as a bounded, partitioned source: one message per line.
//!
//! With `key_field`, a line's key is the value of that field (a string's text, any other
//! value's JSON text) and the line goes to partition `FNV-1a(key) % partitions`, exactly as
//! the [generator](crate::generator) places its sensors. A line that is not a JSON object
//! or lacks the field (or has it null) goes to partition 0 without a key, and stays a message:
//! the decoder dead-letters what it cannot read. Without `key_field`, line `n` (from 0) goes
//! to partition `n % partitions`.
//!
//! A message's offset is its index among the lines of its partition, in file order. The topic
//! is the file name. A line is what ends with `\n` (a trailing `\r` is dropped), plus a last
//! line without `\n` if it is not empty: an empty line inside the file is an (empty) message,
//! the end of the last line is not.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{PartitionReader, Partitioning, RawBatch, RawMessage, ReadResult, Source};

use crate::{config_key, partition_for_key};

fn default_partitions() -> u32 {
    1
}

/// Configuration of the `jsonl` file source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceConfig {
    /// The file to read, one message per line.
    pub path: PathBuf,
    /// Number of partitions to spread the lines over.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Field whose value is the message key and chooses the partition; absent: no key, and
    /// lines are spread by line number.
    #[serde(default)]
    pub key_field: Option<String>,
}

impl JsonlSourceConfig {
    /// One partition holds every key; with `key_field` the lines are routed by that field;
    /// without it, line `n` goes to partition `n % partitions` (round-robin: no key is
    /// co-located).
    pub fn partitioning(&self) -> Partitioning {
        match (&self.key_field, self.partitions) {
            (_, 0 | 1) => Partitioning::Single,
            (Some(field), _) => Partitioning::ByField(field.clone()),
            (None, _) => Partitioning::Spread,
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(format!("{}: must not be empty", key("path")));
        } else if self.path.file_name().is_none() {
            errors.push(format!(
                "{}: must name a file, got {:?}",
                key("path"),
                self.path.display().to_string()
            ));
        }
        if self.partitions == 0 {
            errors.push(format!("{}: must be at least 1, got 0", key("partitions")));
        } else if i32::try_from(self.partitions).is_err() {
            errors.push(format!(
                "{}: must be at most {}, got {}",
                key("partitions"),
                i32::MAX,
                self.partitions
            ));
        }
        if self.key_field.as_deref() == Some("") {
            errors.push(format!(
                "{}: must not be empty (leave it out for no key)",
                key("key_field")
            ));
        }
        errors
    }
}

/// The `jsonl` file source. See the module docs.
#[derive(Debug)]
pub struct JsonlFileSource {
    config: JsonlSourceConfig,
    topic: Arc<str>,
    name: String,
}

impl JsonlFileSource {
    /// Fails when the config is impossible or the file cannot be read.
    pub fn new(config: JsonlSourceConfig) -> Result<Self> {
        let name = format!("jsonl {}", config.path.display());
        let errors = config.validate("source");
        if !errors.is_empty() {
            return Err(WeirError::source(name, errors.join("; ")));
        }
        File::open(&config.path).map_err(|e| WeirError::io(&config.path, e))?;
        let topic = config
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            topic: Arc::from(topic),
            config,
            name,
        })
    }

    /// The topic of every message: the file name.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }
}

impl Source for JsonlFileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitioning(&self) -> Partitioning {
        self.config.partitioning()
    }

    fn partitions(&mut self) -> Result<Vec<(Arc<str>, i32)>> {
        Ok((0..self.config.partitions as i32)
            .map(|p| (self.topic.clone(), p))
            .collect())
    }

    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        if partition < 0 || partition as u32 >= self.config.partitions {
            return Err(WeirError::source(
                &self.name,
                format!(
                    "no partition {partition}: the source has partitions 0..{}",
                    self.config.partitions
                ),
            ));
        }
        let file =
            File::open(&self.config.path).map_err(|e| WeirError::io(&self.config.path, e))?;
        Ok(Box::new(JsonlReader {
            path: self.config.path.clone(),
            lines: BufReader::with_capacity(256 * 1024, file),
            topic: topic.clone(),
            partition,
            partitions: self.config.partitions,
            key_field: self.config.key_field.clone(),
            line_no: 0,
            offset: 0,
            next_offset,
            line: Vec::new(),
            done: false,
        }))
    }
}

struct JsonlReader {
    path: PathBuf,
    lines: BufReader<File>,
    topic: Arc<str>,
    partition: i32,
    partitions: u32,
    key_field: Option<String>,
    /// Index of the next line in the file.
    line_no: u64,
    /// Offset the next line of this partition will have.
    offset: i64,
    /// Lines of this partition below this offset are skipped (resume).
    next_offset: i64,
    line: Vec<u8>,
    done: bool,
}

impl JsonlReader {
    /// The next line, without its terminator; `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<()>> {
        self.line.clear();
        let n = self
            .lines
            .read_until(b'\n', &mut self.line)
            .map_err(|e| WeirError::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        }
        Ok(Some(()))
    }
}

impl PartitionReader for JsonlReader {
    fn read(&mut self, max_rows: usize, _linger: Duration) -> Result<ReadResult> {
        let mut messages = Vec::new();
        while !self.done && messages.len() < max_rows.max(1) {
            if self.next_line()?.is_none() {
                self.done = true;
                break;
            }
            let line_no = self.line_no;
            self.line_no += 1;
            let (partition, key) = place(
                &self.line,
                line_no,
                self.key_field.as_deref(),
                self.partitions,
            );
            if partition != self.partition {
                continue;
            }
            let offset = self.offset;
            self.offset += 1;
            if offset < self.next_offset {
                continue;
            }
            messages.push(RawMessage {
                offset,
                key,
                payload: Some(self.line.clone()),
                timestamp_ms: None,
                headers: Vec::new(),
            });
        }
        if messages.is_empty() {
            return Ok(ReadResult::End);
        }
        Ok(ReadResult::Batch(RawBatch::new(
            self.topic.clone(),
            self.partition,
            messages,
        )))
    }
}

/// The partition and key of one line. See the module docs.
fn place(
    line: &[u8],
    line_no: u64,
    key_field: Option<&str>,
    partitions: u32,
) -> (i32, Option<Vec<u8>>) {
    let Some(field) = key_field else {
        let p = if partitions == 0 {
            0
        } else {
            (line_no % u64::from(partitions)) as i32
        };
        return (p, None);
    };
    match key_of(line, field) {
        Some(key) => (partition_for_key(&key, partitions), Some(key)),
        None => (0, None),
    }
}

/// The key bytes of a JSON object line: a string field's text, or another value's JSON.
fn key_of(line: &[u8], field: &str) -> Option<Vec<u8>> {
    let serde_json::Value::Object(mut map) = serde_json::from_slice(line).ok()? else {
        return None;
    };
    match map.remove(field)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.into_bytes()),
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(
        content: &str,
        partitions: u32,
        key_field: Option<&str>,
    ) -> (tempfile::TempDir, JsonlFileSource) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        File::create(&path)
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        let src = JsonlFileSource::new(JsonlSourceConfig {
            path,
            partitions,
            key_field: key_field.map(str::to_string),
        })
        .unwrap();
        (dir, src)
    }

    fn read(
        src: &mut JsonlFileSource,
        partition: i32,
        from: i64,
        max_rows: usize,
    ) -> Vec<RawMessage> {
        let topic = src.topic().clone();
        let mut reader = src.open(&topic, partition, from).unwrap();
        let mut out = Vec::new();
        loop {
            match reader.read(max_rows, Duration::ZERO).unwrap() {
                ReadResult::Batch(b) => {
                    assert_eq!(&*b.topic, "events.jsonl");
                    assert_eq!(b.partition, partition);
                    out.extend(b.messages)
                }
                ReadResult::Idle => panic!("a file is never idle"),
                ReadResult::End => return out,
            }
        }
    }

    fn payloads(messages: &[RawMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| String::from_utf8(m.payload.clone().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn lines_go_to_the_partition_of_their_key_with_contiguous_offsets() {
        let mut content = String::new();
        for i in 0..60 {
            content.push_str(&format!(
                "{{\"sensor_id\":\"sensor-{}\",\"i\":{i}}}\n",
                i % 7
            ));
        }
        let (_dir, mut src) = source(&content, 3, Some("sensor_id"));
        let mut total = 0;
        for p in 0..3 {
            let messages = read(&mut src, p, 0, 4);
            total += messages.len();
            for (i, m) in messages.iter().enumerate() {
                assert_eq!(m.offset, i as i64);
                let key = m.key.clone().unwrap();
                assert!(key.starts_with(b"sensor-"), "the key is the string's text");
                assert_eq!(partition_for_key(&key, 3), p);
            }
            let order: Vec<i64> = messages
                .iter()
                .map(|m| {
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
                    v["i"].as_i64().unwrap()
                })
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "file order kept");
        }
        assert_eq!(total, 60);
    }

    #[test]
    fn a_reader_resumes_at_its_next_offset() {
        let content: String = (0..25)
            .map(|i| format!("{{\"k\":{},\"i\":{i}}}\n", i % 4))
            .collect();
        let (_dir, mut src) = source(&content, 2, Some("k"));
        for p in 0..2 {
            let all = read(&mut src, p, 0, 1000);
            for n in [0, 1, 5, all.len() - 1, all.len(), all.len() + 3] {
                let tail = read(&mut src, p, n as i64, 3);
                assert_eq!(
                    tail,
                    all[n.min(all.len())..].to_vec(),
                    "partition {p} from {n}"
                );
            }
        }
    }

    #[test]
    fn lines_without_the_key_or_not_json_go_to_partition_zero_as_messages() {
        let content = "not json\n{\"other\":1}\n{\"k\":null}\n[1,2]\n";
        let (_dir, mut src) = source(content, 4, Some("k"));
        let p0 = read(&mut src, 0, 0, 10);
        assert_eq!(
            payloads(&p0),
            ["not json", "{\"other\":1}", "{\"k\":null}", "[1,2]"]
        );
        assert!(p0.iter().all(|m| m.key.is_none()));
        for p in 1..4 {
            assert!(read(&mut src, p, 0, 10).is_empty());
        }
    }

    #[test]
    fn an_empty_line_inside_is_a_message_but_the_final_newline_is_not() {
        let (_dir, mut src) = source("{\"a\":1}\n\n{\"a\":2}\r\n", 1, None);
        let messages = read(&mut src, 0, 0, 10);
        assert_eq!(payloads(&messages), ["{\"a\":1}", "", "{\"a\":2}"]);
        assert_eq!(
            messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [0, 1, 2]
        );

        let (_dir, mut src) = source("{\"a\":1}\n{\"a\":2}", 1, None);
        assert_eq!(
            payloads(&read(&mut src, 0, 0, 10)),
            ["{\"a\":1}", "{\"a\":2}"]
        );
        let (_dir, mut src) = source("", 1, None);
        assert!(read(&mut src, 0, 0, 10).is_empty());
    }

    #[test]
    fn without_a_key_field_lines_are_spread_by_line_number() {
        let content: String = (0..10).map(|i| format!("{i}\n")).collect();
        let (_dir, mut src) = source(&content, 3, None);
        assert_eq!(payloads(&read(&mut src, 0, 0, 2)), ["0", "3", "6", "9"]);
        assert_eq!(payloads(&read(&mut src, 1, 0, 2)), ["1", "4", "7"]);
        assert_eq!(payloads(&read(&mut src, 2, 1, 2)), ["5", "8"]);
    }

    #[test]
    fn non_utf8_lines_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin.jsonl");
        File::create(&path)
            .unwrap()
            .write_all(b"\xff\xfe\n")
            .unwrap();
        let mut src = JsonlFileSource::new(JsonlSourceConfig {
            path,
            partitions: 1,
            key_field: Some("k".into()),
        })
        .unwrap();
        let topic = src.topic().clone();
        let mut reader = src.open(&topic, 0, 0).unwrap();
        let ReadResult::Batch(b) = reader.read(10, Duration::ZERO).unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(b.messages[0].payload.as_deref(), Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn a_missing_file_and_impossible_values_are_errors() {
        let cfg = JsonlSourceConfig {
            path: PathBuf::new(),
            partitions: 0,
            key_field: Some(String::new()),
        };
        assert_eq!(
            cfg.validate("source"),
            [
                "source.path: must not be empty",
                "source.partitions: must be at least 1, got 0",
                "source.key_field: must not be empty (leave it out for no key)",
            ]
        );
        let err = JsonlFileSource::new(JsonlSourceConfig {
            path: PathBuf::from("/nonexistent/x.jsonl"),
            partitions: 1,
            key_field: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }
}
