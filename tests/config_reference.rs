//! docs/pipeline.md, the reference of every pipeline.toml key, is what
//! `weir config reference` prints from the config structs today; and every environment
//! variable the code reads is documented there.

use std::path::{Path, PathBuf};

use crate::common::cli::weir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_checked_in_reference_is_what_weir_config_reference_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pipeline.md");
    let run = weir(
        &["config", "reference", "--out", out.to_str().unwrap()],
        dir.path(),
    );
    assert!(run.status.success(), "{run:?}");
    let fresh = std::fs::read_to_string(&out).unwrap();
    let checked_in = std::fs::read_to_string(root().join("docs/pipeline.md")).unwrap_or_default();
    assert!(
        fresh == checked_in,
        "docs/pipeline.md is stale: run `cargo run -- config reference --out docs/pipeline.md` \
         and commit it (first differing line: {:?})",
        fresh
            .lines()
            .zip(checked_in.lines())
            .find(|(a, b)| a != b)
            .map(|(a, _)| a)
    );
}

#[test]
fn the_reference_names_every_section_type_and_key_a_user_writes() {
    let text = weir::config_reference::markdown();
    for (kind, types) in [
        ("[source]", weir::config::SourceConfig::TYPES),
        ("[[operators]]", weir::config::OperatorConfig::TYPES),
        ("[[sinks]]", weir::config::SinkConfig::TYPES),
        ("[dlq]", weir::config::DlqConfig::TYPES),
    ] {
        for ty in types {
            let header = format!("{kind} type = \"{ty}\"");
            assert!(text.contains(&header), "no section `{header}`");
        }
    }
    // Keys of several depths, with their defaults and units.
    for row in [
        "| `name` | string | required |",
        "| `interval_ms` | integer ≥ 0 | `5000` | ms |",
        "| `max_rows` | integer ≥ 0 | `8192` |",
        "| `late_policy` | `\"drop\"` \\| `\"dlq\"` | optional |",
        "| `retry_max_attempts` |",
        "| `status_interval_secs` | integer ≥ 0 | optional | s |",
    ] {
        assert!(text.contains(row), "no row starting {row}");
    }
    for header in [
        "## [[schema.fields]]",
        "### [schema.metadata]",
        "## [checkpoint]",
    ] {
        let h = header.trim_start_matches('#').trim();
        assert!(text.lines().any(|l| l.ends_with(h)), "no section {h}");
    }
}

/// Every `env::var("X")`, `var_os("X")`, `try_from_env("X")` and clap `env = "X"` of the
/// sources.
fn env_vars_read(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            env_vars_read(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for pat in ["env::var(\"", "var_os(\"", "try_from_env(\"", "env = \""] {
                for (i, _) in text.match_indices(pat) {
                    let rest = &text[i + pat.len()..];
                    let name: String = rest.chars().take_while(|c| *c != '"').collect();
                    found.push((name, path.clone()));
                }
            }
        }
    }
}

#[test]
fn every_environment_variable_weir_reads_is_documented() {
    let mut found = Vec::new();
    for dir in ["src", "runtime/src", "operators/src", "connectors/src"] {
        env_vars_read(&root().join(dir), &mut found);
    }
    // HOME is read through var_os("HOME") for libpq's ~/.postgresql: the scan sees it.
    assert!(
        found.iter().any(|(n, _)| n == "WEIR_LOG"),
        "the scan finds nothing: {found:?}"
    );
    let text = weir::config_reference::markdown();
    for (name, path) in found {
        assert!(
            text.contains(&format!("| `{name}` |")),
            "{} reads the environment variable {name}, which \
             weir::config_reference::ENVIRONMENT does not document",
            path.display()
        );
    }
}
