//! Fingerprints of operator configuration, stored with each operator's state in every
//! checkpoint so that state never meets a configuration it does not fit.
//!
//! A [`Fingerprint`] is the configuration that gives an operator's state its meaning (for a
//! window: its kind and sizes, keys and their types, time column, aggregates and their state
//! types), as ordered `setting = value` pairs. Its canonical [`Fingerprint::description`] (one
//! line per setting) and a stable hash of it (FNV-1a, 64 bit) are stored in the checkpoint
//! header, so every store (local directory, PostgreSQL, Kafka) carries them without a schema
//! change, and a mismatch names what changed: `operators[1] (tumble): size_ms was 60000, is
//! now 300000`.
//!
//! Rules that keep a fingerprint stable across processes and versions: values are written by
//! weir's own code (never `Debug` output or a process-seeded hasher); a setting added in a
//! later version enters the description only when it differs from the behaviour before it
//! existed ([`Fingerprint::set_unless`]), so old checkpoints keep fitting.

use std::fmt;

/// The configuration an operator's state depends on. Empty: the operator keeps no state that
/// depends on configuration (filters, projections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    entries: Vec<(String, String)>,
}

impl Fingerprint {
    /// A fingerprint starting with `kind = <kind>` (the operator type, e.g. `tumble`).
    pub fn new(kind: &str) -> Self {
        Self::default().set("kind", kind)
    }

    /// Add a setting (order matters: it is the order of the description).
    pub fn set(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.entries.push((key.to_string(), value.to_string()));
        self
    }

    /// Add a setting unless it has the value that means what its absence meant.
    pub fn set_unless<V: fmt::Display + PartialEq>(self, key: &str, value: V, absent: V) -> Self {
        if value == absent {
            self
        } else {
            self.set(key, value)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The canonical text: `key = value` per line, in order, `\` and line breaks escaped.
    pub fn description(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.entries {
            out.push_str(&escape(k));
            out.push_str(" = ");
            out.push_str(&escape(v));
            out.push('\n');
        }
        out
    }

    /// The inverse of [`Fingerprint::description`].
    pub fn parse(description: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for line in description.lines() {
            let (k, v) = line
                .split_once(" = ")
                .ok_or_else(|| format!("configuration line {line:?} has no ` = `"))?;
            entries.push((unescape(k), unescape(v)));
        }
        Ok(Self { entries })
    }

    /// FNV-1a (64 bit) of the description, as `fnv1a64:` and 16 hex digits.
    pub fn hash(&self) -> String {
        let h = self
            .description()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("fnv1a64:{h:016x}")
    }

    /// What differs from `stored`, one `"<key> was <old>, is now <new>"` per setting.
    pub fn changes_from(&self, stored: &Fingerprint) -> Vec<String> {
        let show = |v: Option<&str>| match v {
            Some(v) => v.to_string(),
            None => "(not set)".to_string(),
        };
        let mut keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
        for (k, _) in &stored.entries {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        keys.into_iter()
            .filter(|k| self.get(k) != stored.get(k))
            .map(|k| {
                format!(
                    "{k} was {}, is now {}",
                    show(stored.get(k)),
                    show(self.get(k))
                )
            })
            .collect()
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// How a restored state's fingerprint compares with the operator's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Same configuration.
    Fits,
    /// The checkpoint was written before fingerprints existed: nothing to compare.
    Unchecked,
    /// The configuration changed: what changed, e.g. `operators[1] (tumble): size_ms was
    /// 60000, is now 300000`.
    Changed(String),
}

/// Compare the `stored` fingerprint of operator `name` (`None`: a checkpoint from before
/// fingerprints) with its `current` one.
pub fn fit(name: &str, stored: Option<&Fingerprint>, current: &Fingerprint) -> Fit {
    let Some(stored) = stored else {
        return Fit::Unchecked;
    };
    if stored == current {
        return Fit::Fits;
    }
    let kind = |f: &Fingerprint| f.get("kind").unwrap_or("stateless").to_string();
    if kind(stored) != kind(current) {
        return Fit::Changed(format!(
            "{name}: the checkpoint holds the state of a {} operator, the pipeline now has a {} here",
            kind(stored),
            kind(current)
        ));
    }
    let changes = current.changes_from(stored);
    Fit::Changed(format!(
        "{name} ({}): {}",
        kind(current),
        changes.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tumble(size: i64) -> Fingerprint {
        Fingerprint::new("tumble")
            .set("size_ms", size)
            .set("keys", "sensor_id utf8")
            .set("aggregates[0]", "avg(temperature) AS t\nweird \\ text")
    }

    #[test]
    fn a_description_parses_back_to_the_same_fingerprint() {
        let f = tumble(60_000);
        assert_eq!(Fingerprint::parse(&f.description()).unwrap(), f);
        assert_eq!(f.description().lines().count(), 4);
    }

    #[test]
    fn the_hash_is_stable_across_processes_and_versions() {
        // A fixed value: a change of the canonical text or the hash breaks every checkpoint.
        assert_eq!(
            Fingerprint::new("tumble").set("size_ms", 60_000).hash(),
            "fnv1a64:90c6cdb2f7b75664"
        );
    }

    #[test]
    fn a_changed_size_is_named_with_both_values() {
        assert_eq!(
            fit("operators[1]", Some(&tumble(60_000)), &tumble(300_000)),
            Fit::Changed("operators[1] (tumble): size_ms was 60000, is now 300000".into())
        );
    }

    #[test]
    fn an_added_or_removed_setting_is_named() {
        let stored = tumble(1);
        let current = tumble(1).set("aggregates[1]", "max(x) AS m");
        assert_eq!(
            current.changes_from(&stored),
            vec!["aggregates[1] was (not set), is now max(x) AS m".to_string()]
        );
        assert_eq!(
            stored.changes_from(&current),
            vec!["aggregates[1] was max(x) AS m, is now (not set)".to_string()]
        );
    }

    #[test]
    fn a_setting_at_its_old_default_is_left_out() {
        let f = Fingerprint::new("tumble").set_unless("idle_advance_ms", 0, 0);
        assert_eq!(f, Fingerprint::new("tumble"));
    }

    #[test]
    fn a_checkpoint_without_fingerprint_is_unchecked_and_a_same_one_fits() {
        assert_eq!(fit("op", None, &tumble(1)), Fit::Unchecked);
        assert_eq!(fit("op", Some(&tumble(1)), &tumble(1)), Fit::Fits);
        assert_eq!(
            fit("op", Some(&Fingerprint::default()), &Fingerprint::default()),
            Fit::Fits
        );
    }

    #[test]
    fn another_operator_kind_in_the_same_place_is_named() {
        let Fit::Changed(why) = fit("operators[0]", Some(&Fingerprint::default()), &tumble(1))
        else {
            panic!("a window where a stateless operator was must not fit");
        };
        assert!(why.contains("stateless") && why.contains("tumble"), "{why}");
    }
}
