//! The decode rules end to end: a pipeline file over a JSONL input with poison events that
//! an inexact decode would have let through (a fraction into an integer, a number written as
//! a string, epoch seconds where milliseconds are declared, a duplicated key, ...) puts each
//! of them in the DLQ file with its kind, field and value, and every valid event reaches the
//! sink unchanged.

use crate::common;

use common::cli::{stderr, weir};
use weir::connectors::{read_dlq_dir, read_jsonl_dir};

/// 2026-01-05T14:40:00Z in epoch milliseconds.
const T: i64 = 1_767_624_000_000;

const PIPELINE: &str = r#"
name = "decode-rules"
[source]
type = "jsonl"
path = "in.jsonl"
partitions = 1

[schema]
event_time = "event_time"
fields = [
  { name = "id", type = "string" },
  { name = "qty", type = "int64" },
  { name = "price", type = "float64" },
  { name = "lots", type = "int32", nullable = true, coerce = true },
  { name = "event_time", type = "timestamp", unit = "ms" },
]

[[operators]]
type = "filter"
predicate = "qty >= 0"

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50
"#;

#[test]
fn values_that_do_not_fit_their_declared_type_reach_the_dlq_and_the_valid_ones_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    // (payload, Some((field, value shown)) when it must be dead-lettered as wrong_type)
    let lines: Vec<(String, Option<(&str, &str)>)> = vec![
        (
            format!(r#"{{"id":"ok-1","qty":3,"price":12.5,"event_time":{T}}}"#),
            None,
        ),
        (
            format!(r#"{{"id":"frac","qty":3.7,"price":1.0,"event_time":{T}}}"#),
            Some(("qty", "3.7")),
        ),
        (
            format!(r#"{{"id":"str","qty":1,"price":"12.5","event_time":{T}}}"#),
            Some(("price", "\"12.5\"")),
        ),
        (
            r#"{"id":"secs","qty":1,"price":1.0,"event_time":1767624000}"#.to_string(),
            Some(("event_time", "1767624000")),
        ),
        (
            format!(r#"{{"id":"big","qty":1,"price":1.0,"lots":"3000000000","event_time":{T}}}"#),
            Some(("lots", "\"3000000000\"")),
        ),
        (
            format!(r#"{{"id":"nested","qty":{{"n":1}},"price":1.0,"event_time":{T}}}"#),
            Some(("qty", "an object")),
        ),
        (
            r#"{"id":"ok-2","qty":4,"price":2,"lots":"7","event_time":"2026-01-05T14:40:01Z"}"#
                .to_string(),
            None,
        ),
        (
            format!(
                r#"{{"id":"ok-3","qty":5.0,"price":-0.25,"event_time":{}}}"#,
                T + 2000
            ),
            None,
        ),
    ];
    let duplicate = format!(r#"{{"id":"dup","qty":1,"qty":2,"price":1.0,"event_time":{T}}}"#);
    let mut input = String::new();
    for (l, _) in &lines {
        input.push_str(l);
        input.push('\n');
    }
    input.push_str(&duplicate);
    input.push('\n');
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();

    let check = weir(&["run", "--check", "p.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    let mut by_id = std::collections::BTreeMap::new();
    for d in &dlq {
        let payload: serde_json::Value =
            serde_json::from_slice(d.letter.payload.as_deref().unwrap())
                .unwrap_or(serde_json::Value::Null);
        let id = payload["id"].as_str().unwrap_or("dup").to_string();
        by_id.insert(
            id,
            (d.letter.kind.as_str().to_string(), d.letter.message.clone()),
        );
    }
    for (line, poison) in &lines {
        let id: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = id["id"].as_str().unwrap();
        match poison {
            None => assert!(!by_id.contains_key(id), "{id} dead-lettered: {by_id:?}"),
            Some((field, value)) => {
                let (kind, message) = by_id
                    .get(id)
                    .unwrap_or_else(|| panic!("{id} not in the DLQ: {by_id:?}"));
                assert_eq!(kind, "wrong_type", "{id}: {message}");
                assert!(message.contains(&format!("`{field}`")), "{id}: {message}");
                assert!(message.contains(value), "{id}: {value} not in {message}");
            }
        }
    }
    let (kind, message) = by_id.get("dup").expect("the duplicated key in the DLQ");
    assert_eq!(kind, "invalid_json");
    assert!(message.contains("duplicate key `qty`"), "{message}");
    assert_eq!(dlq.len(), 6, "{by_id:?}");

    let mut rows: Vec<(String, i64, f64)> = read_jsonl_dir(dir.path().join("out"))
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["qty"].as_i64().unwrap(),
                r["price"].as_f64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rows,
        vec![
            ("ok-1".to_string(), 3, 12.5),
            ("ok-2".to_string(), 4, 2.0),
            ("ok-3".to_string(), 5, -0.25),
        ]
    );
}
