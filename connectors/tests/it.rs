//! The connectors' integration tests, one binary: each file of connectors/tests/ is a module
//! of it, so the test build links once instead of once per file (`cargo test --workspace
//! --test connectors kafka_txn::` runs one file).

mod support;

mod executor_end_to_end;
mod kafka_broker;
mod kafka_fence;
mod kafka_mock;
mod kafka_mock_executor;
mod kafka_mock_stop;
mod kafka_reset;
mod kafka_txn;
mod postgres_dlq;
mod postgres_executor;
mod postgres_store;
mod postgres_tls;

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
