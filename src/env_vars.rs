//! Environment variables in `pipeline.toml`: `${VAR}` and `${VAR:-default}` in any string
//! value are replaced at load time, before any section is read, so a secret (a PostgreSQL
//! password, `sasl.password`) or a deployment's address (`brokers`) need not sit in the file.
//!
//! - `${VAR}`: the variable's value; a variable that is not set is an error at the value's
//!   key (`sinks[0].url: environment variable `PG_URL` is not set`).
//! - `${VAR:-default}`: the default when the variable is unset or empty, as in a shell.
//! - `$${` is a literal `${`; a `$` before anything else is kept as it is.
//!
//! Names are `[A-Za-z_][A-Za-z0-9_]*`. Only values are replaced, never keys, and a
//! replaced value is not scanned again (a variable's value holding `${X}` stays as it is).
//! The error never shows a variable's value.

/// What the environment holds for a name.
pub enum Var {
    Set(String),
    Unset,
    /// Set, but not valid UTF-8.
    NotUnicode,
}

/// The process environment.
pub fn process_env(name: &str) -> Var {
    match std::env::var(name) {
        Ok(v) => Var::Set(v),
        Err(std::env::VarError::NotPresent) => Var::Unset,
        Err(std::env::VarError::NotUnicode(_)) => Var::NotUnicode,
    }
}

/// `${name:-default}` for a pipeline written in Rust: the variable's value, or `default`
/// when it is unset, empty or not UTF-8.
pub fn var_or(name: &str, default: &str) -> String {
    match process_env(name) {
        Var::Set(v) if !v.is_empty() => v,
        _ => default.to_string(),
    }
}

/// Replace the variables in every string value of `table`, pushing "`<key>`: reason" onto
/// `errors` for each value that cannot be resolved (that value is left as written).
pub fn resolve_table(table: &mut toml::Table, env: &dyn Fn(&str) -> Var, errors: &mut Vec<String>) {
    for (key, value) in table.iter_mut() {
        resolve_value(value, &toml_key(key), env, errors);
    }
}

fn resolve_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Var,
    errors: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => match resolve(s, env) {
            Ok(Some(resolved)) => *s = resolved,
            Ok(None) => {}
            Err(why) => errors.push(format!("{path}: {why}")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_value(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (key, item) in t.iter_mut() {
                resolve_value(item, &format!("{path}.{}", toml_key(key)), env, errors);
            }
        }
        _ => {}
    }
}

/// A key as it is written in a key path: bare, or quoted when it is not a bare TOML key
/// (`options."sasl.password"`).
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// `text` with its variables replaced; `None` when it holds no `$` (nothing to change).
pub fn resolve(text: &str, env: &dyn Fn(&str) -> Var) -> Result<Option<String>, String> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(format!(
                    "`${{` at byte {at} has no closing `}}` (write `$${{` for a literal `${{`)"
                ));
            };
            out.push_str(&substitute(&inner[..end], env)?);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The value of one `${...}` (its text between the braces).
fn substitute(inner: &str, env: &dyn Fn(&str) -> Var) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{inner}}}`: `{name}` is not a variable name (letters, digits and `_`, not \
             starting with a digit; `${{NAME:-default}}` gives a default)"
        ));
    }
    match (env(name), default) {
        (Var::Set(v), Some(d)) if v.is_empty() => Ok(d.to_string()),
        (Var::Set(v), _) => Ok(v),
        (Var::Unset, Some(d)) => Ok(d.to_string()),
        (Var::Unset, None) => Err(format!(
            "environment variable `{name}` is not set (set it, or write `${{{name}:-default}}`)"
        )),
        (Var::NotUnicode, _) => Err(format!("environment variable `{name}` is not valid UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Var {
        match name {
            "PG_PASSWORD" => Var::Set("s3cret".into()),
            "EMPTY" => Var::Set(String::new()),
            "NESTED" => Var::Set("${PG_PASSWORD}".into()),
            "BAD" => Var::NotUnicode,
            _ => Var::Unset,
        }
    }

    fn r(text: &str) -> Result<String, String> {
        resolve(text, &env).map(|o| o.unwrap_or_else(|| text.to_string()))
    }

    #[test]
    fn a_set_variable_is_replaced_wherever_it_is_in_the_value() {
        assert_eq!(
            r("postgres://weir:${PG_PASSWORD}@db/weir").unwrap(),
            "postgres://weir:s3cret@db/weir"
        );
        assert_eq!(r("${PG_PASSWORD}${PG_PASSWORD}").unwrap(), "s3crets3cret");
    }

    #[test]
    fn a_default_applies_when_the_variable_is_unset_or_empty() {
        assert_eq!(r("${BROKERS:-127.0.0.1:9092}").unwrap(), "127.0.0.1:9092");
        assert_eq!(r("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(r("${EMPTY}").unwrap(), "");
        assert_eq!(r("${PG_PASSWORD:-x}").unwrap(), "s3cret");
        assert_eq!(r("${BROKERS:-}").unwrap(), "");
    }

    #[test]
    fn an_unset_variable_without_default_is_an_error_naming_it() {
        let e = r("a${BROKERS}").unwrap_err();
        assert!(e.contains("`BROKERS` is not set"), "{e}");
    }

    #[test]
    fn a_doubled_dollar_escapes_and_a_lone_dollar_stays() {
        assert_eq!(r("$${PG_PASSWORD}").unwrap(), "${PG_PASSWORD}");
        assert_eq!(r("cost $5 and $x").unwrap(), "cost $5 and $x");
        assert_eq!(r("$").unwrap(), "$");
        assert_eq!(resolve("plain", &env).unwrap(), None);
    }

    #[test]
    fn a_value_is_not_scanned_again() {
        assert_eq!(r("${NESTED}").unwrap(), "${PG_PASSWORD}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(r("${PG_PASSWORD").unwrap_err().contains("no closing"));
        assert!(r("${}").unwrap_err().contains("is not a variable name"));
        assert!(r("${1X}").unwrap_err().contains("is not a variable name"));
        assert!(r("${A-B}").unwrap_err().contains("is not a variable name"));
        assert!(r("${BAD}").unwrap_err().contains("not valid UTF-8"));
    }

    #[test]
    fn every_string_of_the_tree_is_resolved_and_errors_name_their_key() {
        let mut table: toml::Table = r#"
            name = "p"
            [source]
            brokers = "${BROKERS:-localhost:9092}"
            topics = ["a", "${TOPIC}"]
            options = { "sasl.password" = "${PG_PASSWORD}" }
            [[sinks]]
            url = "${PG_URL}"
            size = 5
        "#
        .parse()
        .unwrap();
        let mut errors = Vec::new();
        resolve_table(&mut table, &env, &mut errors);
        assert_eq!(table["source"]["brokers"].as_str(), Some("localhost:9092"));
        assert_eq!(
            table["source"]["options"]["sasl.password"].as_str(),
            Some("s3cret")
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("sinks[0].url: environment variable `PG_URL`"));
        assert!(errors[1].starts_with("source.topics[1]: environment variable `TOPIC`"));
        assert!(!errors.iter().any(|e| e.contains("s3cret")));
    }

    #[test]
    fn a_dotted_key_is_quoted_in_the_path() {
        let mut table: toml::Table = r#"source = { options = { "sasl.password" = "${SASL}" } }"#
            .parse()
            .unwrap();
        let mut errors = Vec::new();
        resolve_table(&mut table, &env, &mut errors);
        assert_eq!(
            errors,
            vec![
                "source.options.\"sasl.password\": environment variable `SASL` is not set \
                  (set it, or write `${SASL:-default}`)"
            ]
        );
    }
}
