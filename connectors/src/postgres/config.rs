//! Configuration of the `postgres` sink and checkpoint store, and the redacting URL type.

use std::fmt;

use serde::Deserialize;
use weir_runtime::OFFSET_COLUMN;

use crate::config_key;

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1): a longer name would silently
/// address another table or column, so it is refused instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

fn yes() -> bool {
    true
}

fn ten_seconds() -> u64 {
    10_000
}

/// The `fillfactor` of tables the sink creates (see [`PostgresSinkConfig::fillfactor`]).
pub const DEFAULT_FILLFACTOR: u8 = 30;

fn default_fillfactor() -> u8 {
    DEFAULT_FILLFACTOR
}

/// A connection string (`postgres://user:password@host:port/db?...` or `host=... password=...`)
/// whose password never appears in `Debug`, `Display` or logs. [`PostgresUrl::expose`] gives
/// the real string, for connecting only.
#[derive(Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The connection string with its password: pass it to the client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The connection string with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({:?})", self.redacted())
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Hides the password of a connection string in either form PostgreSQL accepts: the URL's
/// `user:password@` part and `password=` query parameters, or a `password=` key of the
/// key/value form (quoted or not).
fn redact(url: &str) -> String {
    const MASK: &str = "***";
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (before_query, query) = match rest.find('?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let mut out = String::from(scheme);
        match before_query.rfind('@') {
            Some(at) => {
                let userinfo = &before_query[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&before_query[at..]);
            }
            None => out.push_str(before_query),
        }
        if let Some(query) = query {
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        return out;
    }
    // Key/value form: `key = value` pairs, values optionally single-quoted with \' escapes.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while !rest.is_empty() {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            break;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        let after_key = rest.trim_start();
        if !after_key.starts_with('=') {
            continue;
        }
        let eq = rest.len() - after_key.len();
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        let value_start = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let value_len = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        if key.eq_ignore_ascii_case("password") {
            out.push_str(MASK);
        } else {
            out.push_str(&rest[..value_len]);
        }
        rest = &rest[value_len..];
    }
    out
}

/// Configuration of the `postgres` sink: rows upserted by key into one table, in the same
/// transaction as the checkpoint of the partition they come from (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Where to connect: `postgres://user:password@host:port/database` or the key/value form
    /// (`host=... user=... password=...`). The password is hidden from logs and errors. TLS as
    /// in libpq: `sslmode` (disable, prefer (default), require, verify-ca, verify-full),
    /// `sslrootcert`, `sslcert` + `sslkey` (see `postgres::tls`).
    pub url: PostgresUrl,
    /// The table to upsert into (created from the first batch when absent and
    /// `create_table` is true).
    pub table: String,
    /// The upsert key: rows with equal values in these columns replace each other, e.g.
    /// `["order_id"]`. With `create_table`, they become the table's primary key.
    pub key_columns: Vec<String>,
    /// Create the table (and the schema) from the first batch's columns when absent.
    #[serde(default = "yes")]
    pub create_table: bool,
    /// The schema holding the table and the `weir_checkpoints` table; the connection's
    /// `search_path` (normally `public`) when absent.
    #[serde(default)]
    pub schema: Option<String>,
    /// How long a write waits for a row lock held by another transaction before failing
    /// (PostgreSQL's `lock_timeout`). Waiting on another partition of this pipeline is fatal
    /// (two partitions write one key); waiting on anyone else is retried.
    #[serde(default = "ten_seconds")]
    pub lock_timeout_ms: u64,
    /// How full (percent) PostgreSQL packs the pages of a table the sink creates. A read
    /// model is updated over and over, and a transaction spans a whole checkpoint epoch, so
    /// one key is often updated several times in one transaction: room left in each page
    /// keeps those updates on the page (HOT updates, no index insert). Measured with 8192-row
    /// batches over 10k keys, 8 batches per transaction (release build): 81k rows/s at 100
    /// (PostgreSQL's default), 229k-235k at 30. Tables that exist already keep theirs.
    #[serde(default = "default_fillfactor")]
    pub fillfactor: u8,
}

impl PostgresSinkConfig {
    /// What this sink cannot store of rows with `schema` (the pipeline's output), as
    /// `"<key>: <problem>"` lines: `weir run --check` reports them before any output exists.
    pub fn check_columns(
        &self,
        schema: &weir_runtime::arrow::datatypes::Schema,
        key_prefix: &str,
    ) -> Vec<String> {
        schema
            .fields()
            .iter()
            .filter(|f| {
                f.name() != weir_runtime::OFFSET_COLUMN && f.name() != weir_runtime::DELETED_COLUMN
            })
            .filter(|f| super::types::pg_type(f.data_type()).is_none())
            .map(|f| {
                format!(
                    "{key_prefix}: {}",
                    super::types::unsupported(f.name(), f.data_type())
                )
            })
            .collect()
    }

    /// Every impossible value, as `"<key>: <problem>"` lines. Pure: nothing is connected.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = Vec::new();
        if self.url.expose().trim().is_empty() {
            errors.push(format!("{}: must not be empty", key("url")));
        } else {
            match super::tls::parse(self.url.expose()) {
                Err(e) => errors.push(format!("{}: {e}: {}", key("url"), self.url)),
                Ok((c, _)) => {
                    if c.get_hosts().is_empty() && c.get_hostaddrs().is_empty() {
                        errors.push(format!(
                            "{}: names no host (e.g. postgres://user@127.0.0.1:5432/db): {}",
                            key("url"),
                            self.url
                        ));
                    }
                }
            }
        }
        check_identifier(&mut errors, &key("table"), &self.table);
        if self.lock_timeout_ms == 0 || self.lock_timeout_ms > i32::MAX as u64 {
            errors.push(format!(
                "{}: must be between 1 and {} (0 would wait forever)",
                key("lock_timeout_ms"),
                i32::MAX
            ));
        }
        if let Some(schema) = &self.schema {
            check_identifier(&mut errors, &key("schema"), schema);
        }
        if !(10..=100).contains(&self.fillfactor) {
            errors.push(format!(
                "{}: must be between 10 and 100 (percent), got {}",
                key("fillfactor"),
                self.fillfactor
            ));
        }
        if self.key_columns.is_empty() {
            errors.push(format!(
                "{}: must name at least one column (the upsert key)",
                key("key_columns")
            ));
        }
        for (i, column) in self.key_columns.iter().enumerate() {
            let at = format!("{}[{i}]", key("key_columns"));
            if column == OFFSET_COLUMN {
                errors.push(format!(
                    "{at}: {OFFSET_COLUMN} is internal and never written"
                ));
            } else if self.key_columns[..i].contains(column) {
                errors.push(format!("{at}: {column:?} is listed twice"));
            } else {
                check_identifier(&mut errors, &at, column);
            }
        }
        errors
    }
}

/// An empty name, or one PostgreSQL would truncate, is an error at `at`.
pub(crate) fn check_identifier(errors: &mut Vec<String>, at: &str, name: &str) {
    if name.is_empty() {
        errors.push(format!("{at}: must not be empty"));
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        errors.push(format!(
            "{at}: {name:?} is {} bytes long; PostgreSQL names are at most \
             {MAX_IDENTIFIER_BYTES} bytes (a longer one would be truncated)",
            name.len()
        ));
    } else if name.contains('\0') {
        errors.push(format!("{at}: must not contain a NUL character"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PostgresSinkConfig {
        PostgresSinkConfig {
            url: PostgresUrl::new("postgres://weir:s3cret@127.0.0.1:5432/weir"),
            table: "orders".into(),
            key_columns: vec!["order_id".into()],
            create_table: true,
            schema: None,
            lock_timeout_ms: 10_000,
            fillfactor: DEFAULT_FILLFACTOR,
        }
    }

    #[test]
    fn a_valid_config_has_no_errors() {
        assert_eq!(config().validate("sinks.pg"), Vec::<String>::new());
        let kv = PostgresSinkConfig {
            url: PostgresUrl::new("host=127.0.0.1 user=weir password='a b' dbname=weir"),
            schema: Some("read_models".into()),
            ..config()
        };
        assert_eq!(kv.validate(""), Vec::<String>::new());
    }

    #[test]
    fn impossible_values_are_all_reported_with_their_key() {
        let long = "x".repeat(64);
        let cfg = PostgresSinkConfig {
            url: PostgresUrl::new(""),
            table: String::new(),
            key_columns: vec![
                "a".into(),
                "a".into(),
                OFFSET_COLUMN.into(),
                String::new(),
                long.clone(),
            ],
            create_table: true,
            schema: Some(String::new()),
            lock_timeout_ms: 0,
            fillfactor: 5,
        };
        assert_eq!(
            cfg.validate("sinks.pg"),
            [
                "sinks.pg.url: must not be empty".to_string(),
                "sinks.pg.table: must not be empty".into(),
                "sinks.pg.lock_timeout_ms: must be between 1 and 2147483647 (0 would wait forever)"
                    .into(),
                "sinks.pg.schema: must not be empty".into(),
                "sinks.pg.fillfactor: must be between 10 and 100 (percent), got 5".into(),
                "sinks.pg.key_columns[1]: \"a\" is listed twice".into(),
                "sinks.pg.key_columns[2]: __offset is internal and never written".into(),
                "sinks.pg.key_columns[3]: must not be empty".into(),
                format!(
                    "sinks.pg.key_columns[4]: \"{long}\" is 64 bytes long; PostgreSQL names are \
                     at most 63 bytes (a longer one would be truncated)"
                ),
            ]
        );
        let none = PostgresSinkConfig {
            key_columns: vec![],
            ..config()
        };
        assert_eq!(
            none.validate(""),
            ["key_columns: must name at least one column (the upsert key)"]
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        for url in [
            "postgres://weir:s3cret@127.0.0.1:notaport/db",
            "postgres://weir:s3cret@127.0.0.1/db?sslmode=required",
        ] {
            let cfg = PostgresSinkConfig {
                url: PostgresUrl::new(url),
                ..config()
            };
            let errors = cfg.validate("sinks.pg");
            assert_eq!(errors.len(), 1, "{url}: {errors:?}");
            assert!(errors[0].starts_with("sinks.pg.url: "), "{errors:?}");
            assert!(!errors[0].contains("s3cret"), "{errors:?}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_or_display() {
        let cases = [
            (
                "postgres://weir:s3cret@db.example:5432/weir",
                "postgres://weir:***@db.example:5432/weir",
            ),
            (
                "postgresql://weir:p%40ss@h/db?sslmode=disable&password=s3cret",
                "postgresql://weir:***@h/db?sslmode=disable&password=***",
            ),
            ("postgres://weir@h/db", "postgres://weir@h/db"),
            (
                "postgres://h/db?password=s3cret",
                "postgres://h/db?password=***",
            ),
            (
                "host=h password=s3cret user=weir",
                "host=h password=*** user=weir",
            ),
            (
                "host=h password = 'it\\'s s3cret' user=weir",
                "host=h password = *** user=weir",
            ),
            ("password=s3cret", "password=***"),
        ];
        for (url, shown) in cases {
            let url = PostgresUrl::new(url);
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), format!("PostgresUrl({shown:?})"));
        }
        let debug = format!("{:?}", config());
        assert!(
            !debug.contains("s3cret") && debug.contains("***"),
            "{debug}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_defaults_apply() {
        let cfg: PostgresSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "postgres://h/db", "table": "t", "key_columns": ["k"]
        }))
        .unwrap();
        assert!(cfg.create_table);
        assert_eq!(cfg.schema, None);
        assert_eq!(cfg.lock_timeout_ms, 10_000);
        let err = serde_json::from_value::<PostgresSinkConfig>(serde_json::json!({
            "url": "postgres://h/db", "table": "t", "key_columns": ["k"], "tabel": "x"
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `tabel`"), "{err}");
    }
}
