//! The SQL text the store runs: pure functions of names and types, so they are tested as text.
//! Identifiers are always quoted; values are always parameters.

use super::types::PgType;

/// The name of the checkpoint table (in the configured schema).
pub const CHECKPOINT_TABLE: &str = "weir_checkpoints";

/// The name of the table of lane owners (in the configured schema): each lane's generation
/// (ARCHITECTURE.md, "Checkpoint protocol"), beside the checkpoint table.
pub const OWNER_TABLE: &str = "weir_checkpoint_owners";

/// `"name"` with embedded quotes doubled: an SQL identifier, whatever the name.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// `"schema"."name"`, or `"name"` when there is no schema.
pub fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote(schema), quote(name)),
        None => quote(name),
    }
}

/// A column the sink writes: its name and PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlColumn {
    pub name: String,
    pub pg: PgType,
}

/// `CREATE TABLE IF NOT EXISTS` with the key columns as primary key (hence NOT NULL), pages
/// filled to `fillfactor` percent.
pub fn create_table(table: &str, columns: &[SqlColumn], keys: &[usize], fillfactor: u8) -> String {
    let defs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let not_null = if keys.contains(&i) { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", quote(&c.name), c.pg.name())
        })
        .collect();
    let keys: Vec<String> = keys.iter().map(|k| quote(&columns[*k].name)).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({})) WITH (fillfactor = {fillfactor})",
        defs.join(", "),
        keys.join(", ")
    )
}

/// The upsert of one batch. Parameter `$i` (i = 1..=n) is column i-1's values as an array,
/// `$n+1` the row numbers (`int4[]`). The rows are unnested; for each key only the last row
/// (highest row number) is kept, since one `INSERT ... ON CONFLICT DO UPDATE` may not touch a
/// row twice; rows with a null key are all kept (they fail NOT NULL one by one). Then
/// `ON CONFLICT (keys) DO UPDATE` replaces every non-key column, or `DO NOTHING` when there is
/// none.
pub fn upsert(table: &str, columns: &[SqlColumn], keys: &[usize]) -> String {
    write_rows(table, columns, keys, false)
}

/// The upserts and deletes of one batch (the sink delete convention): as [`upsert`], with one
/// more array, `$n+1` (`bool[]`), true on rows that delete their key, and the row numbers in
/// `$n+2`. The last row of each key decides: a delete removes the key's row (a data-modifying
/// CTE, same statement, same snapshot), anything else is upserted. The two never touch the
/// same key, since only one row per key is left.
pub fn upsert_and_delete(table: &str, columns: &[SqlColumn], keys: &[usize]) -> String {
    write_rows(table, columns, keys, true)
}

fn write_rows(table: &str, columns: &[SqlColumn], keys: &[usize], deletes: bool) -> String {
    let n = columns.len();
    let alias = |i: usize| format!("c{i}");
    let aliases: Vec<String> = (0..n).map(alias).collect();
    let mut arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.pg.name()))
        .collect();
    let mut unnested = aliases.clone();
    if deletes {
        arrays.push(format!("${}::bool[]", n + 1));
        unnested.push("d".to_string());
    }
    arrays.push(format!("${}::int4[]", arrays.len() + 1));
    unnested.push("r".to_string());
    let key_aliases: Vec<String> = keys.iter().map(|k| alias(*k)).collect();
    let any_null = key_aliases
        .iter()
        .map(|k| format!("{k} IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let distinct = format!(
        "{}, (CASE WHEN {any_null} THEN r END)",
        key_aliases.join(", ")
    );
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let key_names: Vec<String> = keys.iter().map(|k| quote(&columns[*k].name)).collect();
    let updates: Vec<String> = (0..n)
        .filter(|i| !keys.contains(i))
        .map(|i| format!("{0} = EXCLUDED.{0}", quote(&columns[i].name)))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    let last_per_key = format!(
        "SELECT DISTINCT ON ({distinct}) {unnested} \
         FROM unnest({arrays}) AS s({unnested}) \
         ORDER BY {distinct}, r DESC",
        unnested = unnested.join(", "),
        arrays = arrays.join(", "),
    );
    if !deletes {
        return format!(
            "INSERT INTO {table} ({names}) \
             SELECT {aliases} FROM ({last_per_key}) AS last_per_key \
             ON CONFLICT ({keys}) DO {action}",
            names = names.join(", "),
            aliases = aliases.join(", "),
            keys = key_names.join(", "),
        );
    }
    let matches: Vec<String> = keys
        .iter()
        .map(|k| format!("t.{} = l.{}", quote(&columns[*k].name), alias(*k)))
        .collect();
    format!(
        "WITH last_per_key AS ({last_per_key}), \
         deleted AS (DELETE FROM {table} AS t USING last_per_key AS l \
         WHERE l.d IS TRUE AND {matches}) \
         INSERT INTO {table} ({names}) \
         SELECT {aliases} FROM last_per_key WHERE d IS NOT TRUE \
         ON CONFLICT ({keys}) DO {action}",
        matches = matches.join(" AND "),
        names = names.join(", "),
        aliases = aliases.join(", "),
        keys = key_names.join(", "),
    )
}

/// The checkpoint table: one row per (pipeline, topic, partition). `state` holds the whole
/// checkpoint (`weir_runtime::checkpoint::encode`); `epoch` and `next_offset` repeat its
/// header for people and tools.
pub fn create_checkpoint_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
         pipeline text NOT NULL, \
         topic text NOT NULL, \
         partition int4 NOT NULL, \
         epoch int8 NOT NULL, \
         next_offset int8 NOT NULL, \
         state bytea NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, topic, partition))"
    )
}

/// The lane owners: one row per (pipeline, topic, partition) ever claimed, holding its
/// generation. A table of its own, created beside an existing checkpoint table: a lane
/// without a row has generation 0, which is what checkpoints from before fencing carry.
pub fn create_owner_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
         pipeline text NOT NULL, \
         topic text NOT NULL, \
         partition int4 NOT NULL, \
         generation int8 NOT NULL, \
         claimed_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, topic, partition))"
    )
}

/// Claim of ($1 pipeline, $2 topic, $3 partition): its generation incremented (1 for a lane
/// never claimed), returned. One statement, so two claims never get the same generation.
pub fn claim_lane(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS o (pipeline, topic, partition, generation) \
         VALUES ($1, $2, $3, 1) \
         ON CONFLICT (pipeline, topic, partition) DO UPDATE SET \
         generation = o.generation + 1, claimed_at = now() \
         RETURNING generation"
    )
}

/// The generation of ($1 pipeline, $2 topic, $3 partition), share-locked until the
/// transaction ends: a claim waits until the checkpoint checked against it has committed
/// or rolled back, so it is either in what the new owner loads or refused.
pub fn lane_generation(table: &str) -> String {
    format!(
        "SELECT generation FROM {table} \
         WHERE pipeline = $1 AND topic = $2 AND partition = $3 FOR SHARE"
    )
}

/// Upsert of one checkpoint: $1 pipeline, $2 topic, $3 partition, $4 epoch, $5 next offset,
/// $6 state.
pub fn save_checkpoint(table: &str) -> String {
    format!(
        "INSERT INTO {table} (pipeline, topic, partition, epoch, next_offset, state) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (pipeline, topic, partition) DO UPDATE SET \
         epoch = EXCLUDED.epoch, next_offset = EXCLUDED.next_offset, \
         state = EXCLUDED.state, updated_at = now()"
    )
}

/// The stored checkpoint of ($1 pipeline, $2 topic, $3 partition): `epoch`, `state`.
pub fn load_checkpoint(table: &str) -> String {
    format!(
        "SELECT epoch, state FROM {table} WHERE pipeline = $1 AND topic = $2 AND partition = $3"
    )
}

/// The text an advisory lock of a pipeline is keyed by (hashed server-side with
/// `hashtextextended`): the checkpoint table, which is the pipeline's checkpoint namespace,
/// and the pipeline name. `weir run` holds it shared, `weir replay` exclusive.
pub fn pipeline_lock_key(checkpoints: &str, pipeline: &str) -> String {
    format!("weir pipeline {checkpoints} {pipeline}")
}

/// Try to take the advisory lock of $1 (a [`pipeline_lock_key`]): shared or exclusive,
/// session-level (released when the connection closes, whatever the way the process ends).
pub fn try_advisory_lock(shared: bool) -> &'static str {
    if shared {
        "SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))"
    } else {
        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
    }
}

/// Who holds the advisory lock of $1: `application_name` and pid of each session (a bigint
/// advisory lock shows as classid = high 32 bits, objid = low 32 bits, objsubid = 1).
pub const ADVISORY_LOCK_HOLDERS: &str = "SELECT coalesce(a.application_name, ''), l.pid, l.mode \
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.classid::int8 = (hashtextextended($1, 0) >> 32) & 4294967295 \
     AND l.objid::int8 = hashtextextended($1, 0) & 4294967295 \
     AND l.pid <> pg_backend_pid() ORDER BY l.pid";

/// The start of the `application_name` of every connection of a `postgres` sink of
/// `pipeline` (`weir <pipeline>/<sink> ...`, see the store), cut to PostgreSQL's 63 bytes.
pub fn store_application_prefix(pipeline: &str) -> String {
    let mut prefix = format!("weir {pipeline}/");
    while prefix.len() > 63 {
        prefix.pop();
    }
    prefix
}

/// Other sessions whose `application_name` starts with $1: name and pid.
pub const SESSIONS_NAMED: &str = "SELECT application_name, pid FROM pg_stat_activity \
     WHERE left(application_name, length($1)) = $1 AND pid <> pg_backend_pid() ORDER BY pid";

/// An empty copy of `live` (columns, defaults, constraints, indexes) named `shadow`, pages
/// filled to `fillfactor` percent (`LIKE` does not copy storage parameters).
pub fn create_table_like(shadow: &str, live: &str, fillfactor: u8) -> String {
    format!("CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL) WITH (fillfactor = {fillfactor})")
}

/// Every checkpoint row of pipeline $1: `topic`, `partition`, `epoch`, `next_offset`, `state`.
pub fn pipeline_checkpoints(table: &str) -> String {
    format!(
        "SELECT topic, partition, epoch, next_offset, state FROM {table} \
         WHERE pipeline = $1 ORDER BY topic, partition FOR UPDATE"
    )
}

/// Delete every checkpoint row of pipeline $1.
pub fn delete_checkpoints(table: &str) -> String {
    format!("DELETE FROM {table} WHERE pipeline = $1")
}

/// `ALTER TABLE IF EXISTS <from> RENAME TO <to>`: `to` is a bare name (it stays in the schema).
pub fn rename_table(from: &str, to: &str) -> String {
    format!("ALTER TABLE IF EXISTS {from} RENAME TO {}", quote(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<SqlColumn> {
        vec![
            SqlColumn {
                name: "order_id".into(),
                pg: PgType::Text,
            },
            SqlColumn {
                name: "line \"no\"".into(),
                pg: PgType::Int4,
            },
            SqlColumn {
                name: "total".into(),
                pg: PgType::Float8,
            },
        ]
    }

    #[test]
    fn identifiers_are_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("select"), "\"select\"");
        assert_eq!(qualified(Some("rm"), "t\"x"), "\"rm\".\"t\"\"x\"");
        assert_eq!(qualified(None, "t"), "\"t\"");
    }

    #[test]
    fn the_table_is_created_with_the_keys_as_primary_key() {
        assert_eq!(
            create_table("\"t\"", &columns(), &[0, 1], 30),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"order_id\" text NOT NULL, \
             \"line \"\"no\"\"\" int4 NOT NULL, \"total\" float8, \
             PRIMARY KEY (\"order_id\", \"line \"\"no\"\"\")) WITH (fillfactor = 30)"
        );
    }

    #[test]
    fn deletes_are_a_cte_on_the_last_row_per_key_and_upserts_skip_them() {
        assert_eq!(
            upsert_and_delete("\"t\"", &columns(), &[0]),
            "WITH last_per_key AS (\
             SELECT DISTINCT ON (c0, (CASE WHEN c0 IS NULL THEN r END)) c0, c1, c2, d, r \
             FROM unnest($1::text[], $2::int4[], $3::float8[], $4::bool[], $5::int4[]) AS s(c0, c1, c2, d, r) \
             ORDER BY c0, (CASE WHEN c0 IS NULL THEN r END), r DESC), \
             deleted AS (DELETE FROM \"t\" AS t USING last_per_key AS l \
             WHERE l.d IS TRUE AND t.\"order_id\" = l.c0) \
             INSERT INTO \"t\" (\"order_id\", \"line \"\"no\"\"\", \"total\") \
             SELECT c0, c1, c2 FROM last_per_key WHERE d IS NOT TRUE \
             ON CONFLICT (\"order_id\") DO UPDATE SET \"line \"\"no\"\"\" = EXCLUDED.\"line \"\"no\"\"\", \
             \"total\" = EXCLUDED.\"total\""
        );
    }

    #[test]
    fn the_upsert_unnests_parameters_keeps_the_last_row_per_key_and_updates_the_rest() {
        assert_eq!(
            upsert("\"rm\".\"t\"", &columns(), &[0]),
            "INSERT INTO \"rm\".\"t\" (\"order_id\", \"line \"\"no\"\"\", \"total\") \
             SELECT c0, c1, c2 FROM (\
             SELECT DISTINCT ON (c0, (CASE WHEN c0 IS NULL THEN r END)) c0, c1, c2, r \
             FROM unnest($1::text[], $2::int4[], $3::float8[], $4::int4[]) AS s(c0, c1, c2, r) \
             ORDER BY c0, (CASE WHEN c0 IS NULL THEN r END), r DESC) AS last_per_key \
             ON CONFLICT (\"order_id\") DO UPDATE SET \"line \"\"no\"\"\" = EXCLUDED.\"line \"\"no\"\"\", \
             \"total\" = EXCLUDED.\"total\""
        );
        let keys_only = upsert("\"t\"", &columns()[..2], &[1, 0]);
        assert!(
            keys_only.ends_with("ON CONFLICT (\"line \"\"no\"\"\", \"order_id\") DO NOTHING"),
            "{keys_only}"
        );
        assert!(
            keys_only
                .contains("DISTINCT ON (c1, c0, (CASE WHEN c1 IS NULL OR c0 IS NULL THEN r END))"),
            "{keys_only}"
        );
    }

    #[test]
    fn replay_statements_quote_names_and_keep_renames_in_the_schema() {
        assert_eq!(
            pipeline_lock_key("\"rm\".\"weir_checkpoints\"", "orders"),
            "weir pipeline \"rm\".\"weir_checkpoints\" orders"
        );
        assert_eq!(
            create_table_like("\"rm\".\"t__replay\"", "\"rm\".\"t\"", 30),
            "CREATE TABLE \"rm\".\"t__replay\" (LIKE \"rm\".\"t\" INCLUDING ALL) WITH (fillfactor = 30)"
        );
        assert_eq!(
            rename_table("\"rm\".\"t\"", "t__re\"placed"),
            "ALTER TABLE IF EXISTS \"rm\".\"t\" RENAME TO \"t__re\"\"placed\""
        );
        assert!(try_advisory_lock(true).contains("pg_try_advisory_lock_shared("));
        assert_eq!(store_application_prefix("orders"), "weir orders/");
        assert_eq!(store_application_prefix(&"é".repeat(40)).len(), 63);
        assert!(try_advisory_lock(false).contains("pg_try_advisory_lock("));
    }
}
