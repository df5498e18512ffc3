//! `weir dlq list|show|replay` on each DLQ target: JSONL files, a Kafka topic (the test
//! broker, `WEIR_KAFKA_BROKERS`) and a PostgreSQL table (`WEIR_PG_URL`).
//!
//! A JSONL file of payments where some amounts are strings: they are dead-lettered as
//! `wrong_type`, one line is not JSON. After the config is fixed (`coerce = true`), a replay
//! of the `wrong_type` letters turns those whose string holds a number into output rows,
//! once; the one whose string does not (`"x"`) fails again and comes back with attempts + 1
//! and its first failure time; the invalid JSON line is not touched. A second replay writes
//! nothing new, and the pipeline's next run neither.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::cli::{stderr, weir};
use common::pg_url;
use weir::connectors::read_jsonl_dir;

const LINES: [&str; 7] = [
    r#"{"order_id":"a","amount":10,"time":1000}"#,
    r#"{"order_id":"b","amount":"20","time":1100}"#,
    r#"{"order_id":"c","amount":"x","time":1200}"#,
    r#"{"order_id":"d","amount":7,"time":1300}"#,
    r#"{"order_id":"e","amount":"#,
    r#"{"order_id":"f","amount":"3","time":1500}"#,
    r#"{"order_id":"g","amount":-5,"time":1600}"#,
];

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

/// The pipeline over `payments.jsonl`, with `coerce` on the amount or not, these sinks and
/// this `[dlq]`.
fn pipeline(name: &str, coerce: bool, sinks: &str, dlq: &str) -> String {
    format!(
        r#"
name = "{name}"

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
  {{ name = "amount", type = "int64", coerce = {coerce} }},
  {{ name = "time", type = "timestamp", any_epoch = true }},
]

[[operators]]
type = "project"
columns = [
  {{ expr = "order_id", name = "order_id" }},
  {{ expr = "amount * 100", name = "cents" }},
]

{sinks}

[dlq]
{dlq}

[checkpoint]
dir = "checkpoints"
interval_ms = 50
"#
    )
}

const JSONL_SINK: &str = r#"
[[sinks]]
type = "jsonl"
path = "out"
"#;

fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = weir(args, dir);
    let err = stderr(&out);
    assert!(out.status.success(), "weir {args:?} failed: {err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// The ids and kinds of the rows of `weir dlq list` (its table on stdout).
fn listed(dir: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["dlq", "list", "p.toml"];
    args.extend_from_slice(extra);
    let (table, _) = ok(dir, &args);
    table
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_string(), cells[2].to_string())
        })
        .collect()
}

/// `(order_id, cents)` of the JSONL sink's rows, each once, and how often each appears.
fn jsonl_rows(dir: &Path) -> BTreeMap<String, (i64, usize)> {
    let mut rows = BTreeMap::new();
    for r in read_jsonl_dir(dir.join("out")).unwrap() {
        let id = r["order_id"].as_str().unwrap().to_string();
        let cents = r["cents"].as_i64().unwrap();
        rows.entry(id).or_insert((cents, 0)).1 += 1;
    }
    rows
}

/// The `show` text of the letter whose payload is `LINES[line]`.
fn id_of(dir: &Path, line: usize) -> String {
    for (id, _) in listed(dir, &["--all"]) {
        let (text, _) = ok(dir, &["dlq", "show", "p.toml", &id]);
        if text.contains(LINES[line]) {
            return id;
        }
    }
    panic!("no dead letter holds {}", LINES[line]);
}

fn field<'a>(show: &'a str, name: &str) -> &'a str {
    show.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {show}"))
}

/// The scenario of the module docs, over the DLQ `dlq`, with `sinks` (whose JSONL sink, if
/// any, is `out`); `refused` more letters are pending all along (a sink's refusals, left
/// alone). Returns the directory.
fn list_show_replay(name: &str, sinks: &str, dlq: &str, refused: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("payments.jsonl"), LINES.join("\n") + "\n").unwrap();
    std::fs::write(d.join("p.toml"), pipeline(name, false, sinks, dlq)).unwrap();
    ok(d, &["run", "p.toml"]);

    // list: b, c, f (wrong_type) and e (invalid_json), oldest first.
    let all = listed(d, &[]);
    assert_eq!(all.len(), 4 + refused, "{all:?}");
    let kinds =
        |rows: &[(String, String)], k: &str| rows.iter().filter(|(_, kind)| kind == k).count();
    assert_eq!(
        (kinds(&all, "wrong_type"), kinds(&all, "invalid_json")),
        (3, 1)
    );
    assert_eq!(listed(d, &["--kind", "invalid_json"]).len(), 1);
    assert_eq!(listed(d, &["--limit", "2"]), all[all.len() - 2..].to_vec());
    assert_eq!(listed(d, &["--since", "1h"]).len(), 4 + refused);
    assert!(listed(d, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let (table, summary) = ok(d, &["dlq", "list", "p.toml"]);
    let header = table.lines().next().unwrap();
    for column in ["ID", "TIME", "KIND", "STAGE", "POSITION", "MESSAGE"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("payments.jsonl/"), "{table}");
    assert!(
        summary.contains(&format!("{} pending and 0 replayed", 4 + refused)),
        "{summary}"
    );

    // show: everything, the payload as text.
    let b = id_of(d, 1);
    let (show, _) = ok(d, &["dlq", "show", "p.toml", &b]);
    assert_eq!(field(&show, "id"), b);
    assert_eq!(field(&show, "kind"), "wrong_type");
    assert_eq!(field(&show, "stage"), "decode");
    assert_eq!(field(&show, "status"), "pending");
    assert_eq!(field(&show, "attempts"), "1");
    assert!(
        field(&show, "source").starts_with("topic payments.jsonl, partition "),
        "{show}"
    );
    assert!(field(&show, "message").contains("amount"), "{show}");
    assert!(show.contains(&format!("text:\n{}", LINES[1])), "{show}");
    assert!(show.contains("key:            1 bytes, text:\nb"), "{show}");
    let c = id_of(d, 2);
    let (show_c, _) = ok(d, &["dlq", "show", "p.toml", &c]);
    let first_failure = field(&show_c, "first failure").to_string();

    // The config is fixed; a dry run changes nothing.
    std::fs::write(d.join("p.toml"), pipeline(name, true, sinks, dlq)).unwrap();
    let (plan, summary) = ok(
        d,
        &[
            "dlq",
            "replay",
            "p.toml",
            "--kind",
            "wrong_type",
            "--dry-run",
        ],
    );
    assert_eq!(plan.lines().count(), 4, "{plan}");
    assert!(
        summary.contains("would feed back 3 dead letter(s)"),
        "{summary}"
    );
    assert_eq!(listed(d, &[]).len(), 4 + refused);

    // The replay: b and f go through, c fails again.
    let (_, progress) = ok(d, &["dlq", "replay", "p.toml", "--kind", "wrong_type"]);
    assert!(
        progress.contains("3 dead letter(s) fed back: 2 went through"),
        "{progress}"
    );
    assert!(progress.contains("1 failed again"), "{progress}");
    let pending: Vec<(String, String)> = listed(d, &[])
        .into_iter()
        .filter(|(_, kind)| kind != "sink_rejected")
        .collect();
    let e = id_of(d, 4);
    let mut want = vec![c.clone(), e.clone()];
    want.sort();
    let mut got: Vec<String> = pending.iter().map(|(id, _)| id.clone()).collect();
    got.sort();
    assert_eq!(got, want, "{pending:?}");
    let (show_c, _) = ok(d, &["dlq", "show", "p.toml", &c]);
    assert_eq!(field(&show_c, "attempts"), "2", "{show_c}");
    assert_eq!(field(&show_c, "first failure"), first_failure, "{show_c}");
    assert_eq!(field(&show_c, "status"), "pending");
    let (show_b, _) = ok(d, &["dlq", "show", "p.toml", &b]);
    assert!(
        field(&show_b, "status").starts_with("replayed at "),
        "{show_b}"
    );
    let (all_table, _) = ok(d, &["dlq", "list", "p.toml", "--all"]);
    assert_eq!(all_table.matches(" replayed ").count(), 2, "{all_table}");
    let (show_e, _) = ok(d, &["dlq", "show", "p.toml", &e]);
    assert_eq!(field(&show_e, "attempts"), "1", "untouched: {show_e}");

    // A second replay: c fails once more; nothing else changes. Then the pipeline's next run
    // reads nothing again.
    let (_, progress) = ok(d, &["dlq", "replay", "p.toml", "--kind", "wrong_type"]);
    assert!(
        progress.contains("1 dead letter(s) fed back: 0 went through"),
        "{progress}"
    );
    let (show_c, _) = ok(d, &["dlq", "show", "p.toml", &c]);
    assert_eq!(field(&show_c, "attempts"), "3", "{show_c}");
    ok(d, &["run", "p.toml"]);
    assert_eq!(listed(d, &[]).len(), 2 + refused);
    dir
}

/// The JSONL sink holds every good payment once, b and f included after the replay.
fn assert_every_payment_once(dir: &Path, with_g: bool) {
    let mut want: BTreeMap<String, (i64, usize)> =
        [("a", 1000), ("b", 2000), ("d", 700), ("f", 300)]
            .iter()
            .map(|(k, v)| (k.to_string(), (*v, 1)))
            .collect();
    if with_g {
        want.insert("g".into(), (-500, 1));
    }
    assert_eq!(jsonl_rows(dir), want);
}

#[test]
fn list_show_and_replay_with_a_jsonl_dlq() {
    let dir = list_show_replay(
        &unique("dlq_jsonl"),
        JSONL_SINK,
        "type = \"jsonl\"\npath = \"dlq\"",
        0,
    );
    assert_every_payment_once(dir.path(), true);
}

#[test]
fn list_show_and_replay_with_a_kafka_dlq() {
    let topic = common::kafka::create_topic(2);
    let dlq = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"",
        common::kafka::brokers()
    );
    let dir = list_show_replay(&unique("dlq_kafka"), JSONL_SINK, &dlq, 0);
    assert_every_payment_once(dir.path(), true);
}

/// A PostgreSQL sink whose CHECK refuses g's negative amount, beside the JSONL sink, and the
/// PostgreSQL DLQ on the same database (its letters commit in the sink's transactions). After
/// the replay of the `wrong_type` letters, the schema is fixed (the CHECK dropped): the
/// replay of the `sink_rejected` letter writes g to the PostgreSQL sink only (the JSONL sink
/// has it already).
#[test]
fn list_show_and_replay_with_a_postgres_dlq_and_sink() {
    let name = unique("dlq_pg");
    let table = format!("{name}_out");
    let dead = format!("{name}_dead");
    let mut client = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (order_id text PRIMARY KEY, cents bigint NOT NULL \
             CONSTRAINT positive CHECK (cents >= 0))"
        ))
        .unwrap();
    let sinks = format!(
        r#"{JSONL_SINK}
[[sinks]]
type = "postgres"
url = "{url}"
table = "{table}"
key_columns = ["order_id"]
create_table = false
"#,
        url = pg_url()
    );
    let dlq = format!(
        "type = \"postgres\"\nurl = \"{}\"\ntable = \"{dead}\"",
        pg_url()
    );
    let dir = list_show_replay(&name, &sinks, &dlq, 1);
    let d = dir.path();
    let pg_rows = |client: &mut postgres::Client| -> Vec<(String, i64)> {
        client
            .query(
                &format!("SELECT order_id, cents FROM \"{table}\" ORDER BY 1"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let expect = |with_g: bool| {
        let mut rows: Vec<(String, i64)> = [("a", 1000), ("b", 2000), ("d", 700), ("f", 300)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        if with_g {
            rows.push(("g".into(), -500));
        }
        rows
    };
    assert_eq!(pg_rows(&mut client), expect(false));
    // The DLQ table marks what was replayed; g waits as sink_rejected.
    let marked: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{dead}\" WHERE replayed_at IS NOT NULL"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(marked, 2);
    let rejected = listed(d, &["--kind", "sink_rejected"]);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (show_g, _) = ok(d, &["dlq", "show", "p.toml", &rejected[0].0]);
    assert_eq!(field(&show_g, "stage"), "sink:sinks[1]");
    assert!(
        field(&show_g, "message").starts_with("SQLSTATE 23514"),
        "{show_g}"
    );

    client
        .batch_execute(&format!("ALTER TABLE \"{table}\" DROP CONSTRAINT positive"))
        .unwrap();
    let (_, progress) = ok(d, &["dlq", "replay", "p.toml", "--id", &rejected[0].0]);
    assert!(
        progress.contains("1 dead letter(s) fed back: 1 went through"),
        "{progress}"
    );
    assert_eq!(pg_rows(&mut client), expect(true));
    assert_every_payment_once(d, true);
    let (_, summary) = ok(d, &["dlq", "list", "p.toml"]);
    assert!(summary.contains("2 pending and 3 replayed"), "{summary}");
    let e = weir(&["dlq", "replay", "p.toml", "--id", &rejected[0].0], d);
    assert!(!e.status.success());
    assert!(
        stderr(&e).contains("was replayed already"),
        "{}",
        stderr(&e)
    );
    client
        .batch_execute(&format!("DROP TABLE \"{table}\"; DROP TABLE \"{dead}\""))
        .unwrap();
}

#[test]
fn bad_flags_unknown_ids_and_kinds_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("payments.jsonl"), LINES.join("\n") + "\n").unwrap();
    std::fs::write(
        d.join("p.toml"),
        pipeline(
            "errors",
            false,
            JSONL_SINK,
            "type = \"jsonl\"\npath = \"dlq\"",
        ),
    )
    .unwrap();
    ok(d, &["run", "p.toml"]);
    let fails = |args: &[&str], says: &str| {
        let out = weir(args, d);
        assert!(!out.status.success(), "weir {args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(says), "weir {args:?}: {err}");
    };
    fails(
        &["dlq", "show", "p.toml", "nope"],
        "\"nope\" is not a dead-letter id: ids are 16 hexadecimal digits",
    );
    fails(
        &["dlq", "show", "p.toml", "0123456789abcdef"],
        "no dead letter with id 0123456789abcdef for pipeline `errors` in JSONL directory dlq",
    );
    fails(
        &["dlq", "replay", "p.toml", "--id", "0123456789abcdef"],
        "no dead letter with id 0123456789abcdef",
    );
    fails(
        &["dlq", "list", "p.toml", "--kind", "typo"],
        "unknown error kind \"typo\" (kinds: invalid_json, missing_field",
    );
    fails(
        &["dlq", "list", "p.toml", "--since", "yesterday"],
        "\"yesterday\" is neither an RFC 3339 time",
    );
    fails(&["dlq", "list", "p.toml", "--limit", "0"], "--limit");
    fails(&["dlq", "list", "missing.toml"], "missing.toml");
    let invalid = listed(d, &["--kind", "invalid_json"]);
    fails(
        &[
            "dlq",
            "replay",
            "p.toml",
            "--kind",
            "wrong_type",
            "--id",
            &invalid[0].0,
        ],
        "is of kind invalid_json, not wrong_type",
    );
    // A window would emit results of the replayed messages alone.
    let windowed = pipeline("errors", false, JSONL_SINK, "type = \"jsonl\"\npath = \"dlq\"")
        .replace(
            "[[operators]]\ntype = \"project\"",
            "[[operators]]\ntype = \"tumble\"\nsize_ms = 1000\nkeys = [\"order_id\"]\naggregates = [{ function = \"count\", alias = \"n\" }]\n\n[[operators]]\ntype = \"project\"",
        )
        .replace("{ expr = \"amount * 100\", name = \"cents\" }", "{ expr = \"n\", name = \"cents\" }");
    std::fs::write(d.join("w.toml"), windowed).unwrap();
    fails(
        &["dlq", "replay", "w.toml"],
        "operators[0] (tumble) aggregates events in windows",
    );
}
