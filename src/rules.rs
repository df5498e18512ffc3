//! The rules between components of one pipeline: each a pure function of the parsed
//! sections, returning the errors it finds as `"<key>: <reason>"` lines.
//! [`crate::config::ValidatedPipeline`] applies all of them; a component's own value checks
//! are its kind's `validate` in [`crate::registry`].

use weir_connectors::AssignmentMode;
use weir_operators::Colocation;

use crate::config::CheckpointConfig;
use crate::registry::{SinkConfig, SourceConfig};

/// At most one sink stores the pipeline's checkpoints (its output and the offsets commit in
/// one transaction: two such sinks could not both be that transaction).
pub fn one_storing_sink(sinks: &[SinkConfig]) -> Option<String> {
    let storing = sinks
        .iter()
        .filter(|s| s.component().stores_checkpoints())
        .count();
    (storing > 1).then(|| {
        "sinks: at most one postgres or transactional kafka sink (it is the pipeline's checkpoint store)"
            .to_string()
    })
}

/// The exactly-once Kafka sink commits the source's offsets in its transactions, so its
/// source is Kafka. `source` is `None` when the `[source]` section itself has errors.
pub fn transactional_kafka_needs_kafka_source(
    source: Option<&SourceConfig>,
    sinks: &[SinkConfig],
) -> Vec<String> {
    if matches!(source, Some(SourceConfig::Kafka(_)) | None) {
        return Vec::new();
    }
    sinks
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, SinkConfig::Kafka(k) if k.transactional_id.is_some()))
        .map(|(i, _)| format!("sinks[{i}].transactional_id: the exactly-once kafka sink commits the source's offsets in its transactions: it needs a kafka source"))
        .collect()
}

/// Checkpoints live in `[checkpoint] dir` unless a sink stores them.
pub fn checkpoints_have_a_store(
    checkpoint: &CheckpointConfig,
    sinks: &[SinkConfig],
) -> Vec<String> {
    let mut errors = Vec::new();
    let sink_stores = sinks.iter().any(|s| s.component().stores_checkpoints());
    if checkpoint.dir.is_none() && !sink_stores {
        errors.push("checkpoint.dir: missing (only a pipeline with a postgres or transactional kafka sink stores checkpoints elsewhere)".into());
    }
    if checkpoint.interval_ms == 0 {
        errors.push("checkpoint.interval_ms: must be positive, got 0".into());
    }
    errors
}

/// A window whose groups span partitions (it runs in two phases, `two_phase`) needs every
/// partition in this worker: a Kafka source in group mode would split them between workers.
pub fn two_phase_needs_manual_assignment(
    two_phase: bool,
    source: Option<&SourceConfig>,
    colocation: &Colocation,
) -> Option<String> {
    let Some(SourceConfig::Kafka(k)) = source else {
        return None;
    };
    if !two_phase || k.assignment != AssignmentMode::Group {
        return None;
    }
    let why = match colocation {
        Colocation::Key(pk) => format!("the window's keys leave out the partition key `{pk}`"),
        Colocation::Unknown(why) => format!(
            "the window's keys are not known to be co-located ({why}; declare \
             `[schema] partition_key`, the field the topic is keyed by)"
        ),
        Colocation::AcrossTopics(topics) => format!(
            "the window's keys may be in more than one of the topics {}",
            topics.join(", ")
        ),
        Colocation::All => String::new(),
    };
    Some(format!(
        "source.assignment: {why}, so its groups span partitions and every \
         partition must be read by this worker; set assignment = \"manual\" (or \
         group by the partition key)"
    ))
}

/// The operators of a pipeline are a `sql` query or `[[operators]]`; `operators` counts
/// those other than `dedup`, which runs before a query.
pub fn sql_or_operators(sql: bool, operators: usize) -> Option<String> {
    (sql && operators > 0).then(|| {
        "sql: a pipeline has either `sql` or [[operators]] (other than `dedup`, which runs \
         before the query), not both"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_connectors::{GeneratorConfig, KafkaSinkConfig, KafkaSourceConfig};

    fn txn_kafka() -> SinkConfig {
        SinkConfig::Kafka(KafkaSinkConfig {
            transactional_id: Some("t".into()),
            ..KafkaSinkConfig::new("127.0.0.1:9092", "out")
        })
    }

    fn postgres() -> SinkConfig {
        let section: toml::Value = toml::from_str(
            "type = 'postgres'\nurl = 'postgres://127.0.0.1/x'\ntable = 't'\nkey_columns = ['k']",
        )
        .expect("TOML");
        let mut errors = Vec::new();
        crate::toml_de::tagged_section(section, "sinks[0]", &mut errors).expect("a postgres sink")
    }

    fn kafka_source(assignment: AssignmentMode) -> SourceConfig {
        SourceConfig::Kafka(KafkaSourceConfig {
            assignment,
            ..KafkaSourceConfig::new("127.0.0.1:9092", &["in"], "g")
        })
    }

    #[test]
    fn only_one_sink_stores_checkpoints() {
        assert_eq!(one_storing_sink(&[postgres()]), None);
        assert_eq!(one_storing_sink(&[txn_kafka()]), None);
        let plain_kafka = SinkConfig::Kafka(KafkaSinkConfig::new("127.0.0.1:9092", "out"));
        assert_eq!(one_storing_sink(&[postgres(), plain_kafka]), None);
        let e = one_storing_sink(&[postgres(), txn_kafka()]).expect("two storing sinks");
        assert!(e.starts_with("sinks: at most one"), "{e}");
    }

    #[test]
    fn a_transactional_kafka_sink_needs_a_kafka_source() {
        let generator = SourceConfig::Generator(GeneratorConfig::default());
        let e =
            transactional_kafka_needs_kafka_source(Some(&generator), &[postgres(), txn_kafka()]);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("sinks[1].transactional_id:"), "{e:?}");
        let kafka = kafka_source(AssignmentMode::Group);
        assert!(transactional_kafka_needs_kafka_source(Some(&kafka), &[txn_kafka()]).is_empty());
        // A broken [source] is reported by itself, not again here.
        assert!(transactional_kafka_needs_kafka_source(None, &[txn_kafka()]).is_empty());
    }

    #[test]
    fn checkpoints_need_a_directory_unless_a_sink_stores_them() {
        let no_dir = CheckpointConfig {
            dir: None,
            interval_ms: 1000,
        };
        let e = checkpoints_have_a_store(&no_dir, &[]);
        assert!(e[0].starts_with("checkpoint.dir: missing"), "{e:?}");
        assert!(checkpoints_have_a_store(&no_dir, &[postgres()]).is_empty());
        let zero = CheckpointConfig {
            dir: Some("c".into()),
            interval_ms: 0,
        };
        assert_eq!(
            checkpoints_have_a_store(&zero, &[]),
            ["checkpoint.interval_ms: must be positive, got 0"]
        );
    }

    #[test]
    fn a_two_phase_window_needs_every_partition_in_the_worker() {
        let unknown = Colocation::Unknown("no partition_key".into());
        let group = kafka_source(AssignmentMode::Group);
        let e = two_phase_needs_manual_assignment(true, Some(&group), &unknown).expect("refused");
        assert!(
            e.contains("source.assignment") && e.contains("partition_key") && e.contains("manual"),
            "{e}"
        );
        let key = Colocation::Key("symbol".into());
        let e = two_phase_needs_manual_assignment(true, Some(&group), &key).expect("refused");
        assert!(e.contains("leave out the partition key `symbol`"), "{e}");
        assert_eq!(
            two_phase_needs_manual_assignment(false, Some(&group), &unknown),
            None
        );
        let manual = kafka_source(AssignmentMode::Manual);
        assert_eq!(
            two_phase_needs_manual_assignment(true, Some(&manual), &unknown),
            None
        );
        let generator = SourceConfig::Generator(GeneratorConfig::default());
        assert_eq!(
            two_phase_needs_manual_assignment(true, Some(&generator), &unknown),
            None
        );
    }

    #[test]
    fn sql_and_operators_exclude_each_other() {
        assert_eq!(sql_or_operators(true, 0), None);
        assert_eq!(sql_or_operators(false, 3), None);
        assert!(sql_or_operators(true, 1).is_some());
    }
}
