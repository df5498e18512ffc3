//! The root crate's integration tests, one binary: each file of tests/ is a module of it, so
//! the test build links once instead of once per file. nextest still runs each test in its own
//! process (`.config/nextest.toml`); `cargo test --test it two_topics::` runs one file.

mod common;

mod accounting;
mod bench_cli;
mod cli;
mod colocation;
mod config_errors;
mod config_reference;
mod decode_rules;
mod dlq_cmd;
mod dlq_pg_crash;
mod examples;
mod io_errors;
mod kafka_metadata;
mod kafka_offsets;
mod kafka_pipeline;
mod kafka_script;
mod kafka_unreachable;
mod lanes_upgrade;
mod logs;
mod metrics_endpoint;
mod nested_events;
mod order_projection_pg;
mod orders_pipeline;
mod postgres_kafka_crash;
mod postgres_pipeline;
mod replay_pg;
mod reset_services;
mod retries;
mod sink_rejects_pg;
mod sql;
mod sql_corpus;
mod state;
mod status_cmd;
mod two_phase;
mod two_topics;
mod upcast_pipeline;
mod watermark_kafka;
mod window_config;
mod window_oracle;

/// A test file that is not a module above would never be compiled or run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let listed = include_str!("it.rs");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && stem != "it" {
            assert!(
                listed.contains(&format!("\nmod {stem};\n")),
                "tests/{stem}.rs is not declared in tests/it.rs"
            );
        }
    }
}
