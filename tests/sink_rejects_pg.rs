//! A row PostgreSQL refuses for good (a CHECK constraint) is dead-lettered with its source
//! message when it has one: a filter/project pipeline's rows are source events, so the DLQ
//! record carries the message's partition, offset, key and original bytes, with the
//! SQLSTATE. A window's rows derive from many messages: offset -1, the row as JSON.
//! Needs `WEIR_PG_URL` (`export "$(scripts/postgres.sh start)"`).

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::pg_url;
use weir::connectors::{partition_for_key, read_dlq_dir};
use weir_runtime::dlq::{ErrorKind, Stage};

fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "weir_{what}_{}_{:x}",
        std::process::id(),
        nanos % 0xffff_ffff
    )
}

fn run(dir: &Path, toml: &str) {
    std::fs::write(dir.join("p.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "p.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Payments: `c` has a negative amount, which the table's CHECK refuses.
const LINES: [&str; 6] = [
    r#"{"order_id":"a","amount":10,"time":1000}"#,
    r#"{"order_id":"b","amount":20,"time":1100}"#,
    r#"{"order_id":"c","amount":-5,"time":1200}"#,
    r#"{"order_id":"d","amount":7,"time":1300}"#,
    r#"{"order_id":"e","amount":1,"time":1400}"#,
    r#"{"order_id":"f","amount":2,"time":1500}"#,
];

fn pipeline(table: &str, operators: &str, key_columns: &str) -> String {
    format!(
        r#"
name = "{table}"
{operators}
[source]
type = "jsonl"
path = "payments.jsonl"
partitions = 2
key_field = "order_id"

[schema]
table = "payments"
event_time = "time"
fields = [
  {{ name = "order_id", type = "string" }},
  {{ name = "amount", type = "int64" }},
  {{ name = "time", type = "timestamp", any_epoch = true }},
]

[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = {key_columns}
create_table = false

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
interval_ms = 50
"#,
        url = pg_url()
    )
}

#[test]
fn a_row_refused_by_a_check_constraint_is_dead_lettered_with_its_source_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payments.jsonl"), LINES.join("\n") + "\n").unwrap();
    let table = unique("pay");
    let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (order_id text PRIMARY KEY, cents bigint NOT NULL \
             CHECK (cents >= 0), time timestamp NOT NULL)"
        ))
        .unwrap();
    let operators = r#"
[[operators]]
type = "filter"
predicate = "amount < 1000"

[[operators]]
type = "project"
columns = [
  { expr = "order_id", name = "order_id" },
  { expr = "amount * 100", name = "cents" },
  { expr = "time", name = "time" },
]
"#;
    run(dir.path(), &pipeline(&table, operators, r#"["order_id"]"#));

    let rows: Vec<(String, i64)> = client
        .query(
            &format!("SELECT order_id, cents FROM \"{table}\" ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i64)> =
        [("a", 1000), ("b", 2000), ("d", 700), ("e", 100), ("f", 200)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
    assert_eq!(rows, expected);

    // Where line `c` went: its partition and its index among that partition's lines.
    let partition = partition_for_key(b"c", 2);
    let offset = LINES[..2]
        .iter()
        .zip(["a", "b"])
        .filter(|(_, k)| partition_for_key(k.as_bytes(), 2) == partition)
        .count() as i64;
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.letter.kind, ErrorKind::SinkRejected);
    assert_eq!(d.letter.stage, Stage::Sink("sinks[0]".into()));
    assert_eq!(&*d.letter.topic, "payments.jsonl");
    assert_eq!((d.letter.partition, d.letter.offset), (partition, offset));
    assert_eq!(d.letter.key.as_deref(), Some(&b"c"[..]));
    assert_eq!(d.letter.payload.as_deref(), Some(LINES[2].as_bytes()));
    assert!(
        d.letter
            .message
            .starts_with("SQLSTATE 23514: new row for relation")
            && d.letter.message.contains("check constraint"),
        "{}",
        d.letter.message
    );
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .unwrap();
}

#[test]
fn a_refused_window_row_has_no_source_message_and_is_dead_lettered_as_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payments.jsonl"), LINES.join("\n") + "\n").unwrap();
    let table = unique("paywin");
    let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (order_id text, window_start timestamp, total bigint \
             CHECK (total >= 0), PRIMARY KEY (order_id, window_start))"
        ))
        .unwrap();
    let operators = r#"
sql = "SELECT order_id, window_start, sum(amount) AS total FROM payments GROUP BY order_id, TUMBLE(time, INTERVAL '1' SECOND)"
"#;
    run(
        dir.path(),
        &pipeline(&table, operators, r#"["order_id", "window_start"]"#),
    );
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let dead = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.letter.kind, ErrorKind::SinkRejected);
    assert_eq!((d.letter.offset, d.letter.key.as_deref()), (-1, None));
    let row: serde_json::Value =
        serde_json::from_slice(d.letter.payload.as_deref().unwrap()).unwrap();
    assert_eq!(row["order_id"], "c");
    assert_eq!(row["total"], -5);
    assert!(
        d.letter.message.starts_with("SQLSTATE 23514"),
        "{}",
        d.letter.message
    );
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .unwrap();
}
