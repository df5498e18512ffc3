//! The connectors driven by the runtime's executor: generator → (a minimal JSON decoder) →
//! JSONL sink, poison → JSONL DLQ, with a crash in the middle and a restart from the
//! checkpoint. Every event must end up exactly once in the sink or in the DLQ.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::tasks;
use weir_connectors::{
    read_jsonl_dir, GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig, JsonlSink,
    JsonlSinkConfig,
};
use weir_runtime::error::Result;
use weir_runtime::testkit::MemorySink;
use weir_runtime::{Executor, ExecutorConfig, LocalCheckpointStore, Shutdown, SinkWriter};

fn run(
    generator: &GeneratorConfig,
    dir: &std::path::Path,
    fail_after_writes: Option<usize>,
) -> Result<()> {
    let mut config = ExecutorConfig::new("e2e");
    config.cpu_threads = 2;
    config.max_rows = 37;
    config.linger = Duration::from_millis(5);
    config.checkpoint_interval = Duration::from_millis(1);
    let mut sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(JsonlSink::new(
        "out",
        &JsonlSinkConfig {
            path: dir.join("out"),
        },
    )?)];
    if let Some(n) = fail_after_writes {
        sinks.push(Box::new(MemorySink {
            fail_after_writes: Some(n),
            ..Default::default()
        }));
    }
    let dlq = JsonlDlq::new(&JsonlDlqConfig {
        path: dir.join("dlq"),
    })?;
    let executor = Executor::new(
        config,
        Box::new(GeneratorSource::new(generator.clone())?),
        tasks(),
        sinks,
        Box::new(dlq),
        Arc::new(LocalCheckpointStore::new(dir.join("ckpt"), "e2e")),
    );
    executor.run(Shutdown::new()).map(|_| ())
}

#[test]
fn a_crash_and_restart_leaves_every_event_exactly_once_in_the_sink_or_the_dlq() {
    let generator = GeneratorConfig {
        sensors: 40,
        partitions: 3,
        events: Some(3000),
        disorder_ms: 200,
        poison_ratio: 0.05,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        run(&generator, tmp.path(), Some(25)).is_err(),
        "the injected crash stops the run"
    );
    let partial = read_jsonl_dir(tmp.path().join("out")).unwrap().len();
    assert!(
        partial > 0 && partial < 3000,
        "the crash came after some checkpoints and before the end: {partial} rows"
    );
    run(&generator, tmp.path(), None).unwrap();

    support::assert_exactly_once(&generator, tmp.path());
}
