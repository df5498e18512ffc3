//! Lanes: what sinks, the DLQ and checkpoints are keyed by (ARCHITECTURE.md, "Lanes").
//!
//! A lane is one ordered stream of output with its own checkpoints: one partition of one
//! topic of the source, or the global stage of a two-phase aggregation. A source may read
//! several topics whose partition numbers overlap (topic `a` partition 0 and topic `b`
//! partition 0 are two lanes), so nothing is keyed by a partition number alone.

use std::fmt;
use std::sync::Arc;

use crate::global::{GLOBAL_PARTITION, GLOBAL_TOPIC};
use crate::source::TopicPartition;

/// One lane of output. Cheap to clone (an `Arc<str>` and an `i32`). Lanes order by topic,
/// then partition; the global lane comes last.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// One partition of one topic of the source: the output of its partition task.
    Partition { topic: Arc<str>, partition: i32 },
    /// The global stage of a two-phase aggregation: the merged rows and its frontier.
    Global,
}

impl Lane {
    /// The lane of `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Lane::Partition {
            topic: topic.into(),
            partition,
        }
    }

    /// The lane of a source partition.
    pub fn of(tp: &TopicPartition) -> Self {
        Lane::new(tp.0.clone(), tp.1)
    }

    /// The topic of a partition lane (`None`: the global lane).
    pub fn topic(&self) -> Option<&Arc<str>> {
        match self {
            Lane::Partition { topic, .. } => Some(topic),
            Lane::Global => None,
        }
    }

    /// The partition number of a partition lane (`None`: the global lane).
    pub fn partition(&self) -> Option<i32> {
        match self {
            Lane::Partition { partition, .. } => Some(*partition),
            Lane::Global => None,
        }
    }

    /// (topic, partition) under which checkpoint stores keep this lane's checkpoint. The
    /// global lane keeps the key it always had ([`GLOBAL_TOPIC`], [`GLOBAL_PARTITION`]), so
    /// checkpoints stored before lanes existed are found again.
    pub fn checkpoint_key(&self) -> (&str, i32) {
        match self {
            Lane::Partition { topic, partition } => (topic, *partition),
            Lane::Global => (GLOBAL_TOPIC, GLOBAL_PARTITION),
        }
    }

    /// The lane whose checkpoint a store keeps under (`topic`, `partition`).
    pub fn from_checkpoint_key(topic: &Arc<str>, partition: i32) -> Self {
        if &**topic == GLOBAL_TOPIC && partition == GLOBAL_PARTITION {
            Lane::Global
        } else {
            Lane::new(topic.clone(), partition)
        }
    }
}

/// `topic/partition`, or `global` for the global stage's lane (logs, error messages).
impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lane::Partition { topic, partition } => write!(f, "{topic}/{partition}"),
            Lane::Global => f.write_str("global"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_of_two_topics_with_one_partition_number_differ() {
        assert_ne!(Lane::new("a", 0), Lane::new("b", 0));
        assert_eq!(Lane::new("a", 0), Lane::of(&(Arc::from("a"), 0)));
    }

    #[test]
    fn lanes_order_by_topic_then_partition_and_the_global_lane_last() {
        let mut lanes = vec![
            Lane::Global,
            Lane::new("b", 0),
            Lane::new("a", 3),
            Lane::new("a", 1),
        ];
        lanes.sort();
        assert_eq!(
            lanes,
            [
                Lane::new("a", 1),
                Lane::new("a", 3),
                Lane::new("b", 0),
                Lane::Global
            ]
        );
    }

    #[test]
    fn the_global_lane_keeps_its_checkpoint_key() {
        assert_eq!(
            Lane::Global.checkpoint_key(),
            (GLOBAL_TOPIC, GLOBAL_PARTITION)
        );
        let topic: Arc<str> = Arc::from(GLOBAL_TOPIC);
        assert_eq!(
            Lane::from_checkpoint_key(&topic, GLOBAL_PARTITION),
            Lane::Global
        );
        assert_eq!(
            Lane::from_checkpoint_key(&Arc::from("t"), 2),
            Lane::new("t", 2)
        );
        assert_eq!(Lane::new("t", 2).checkpoint_key(), ("t", 2));
    }

    #[test]
    fn lanes_display_as_topic_slash_partition() {
        assert_eq!(Lane::new("orders", 3).to_string(), "orders/3");
        assert_eq!(Lane::Global.to_string(), "global");
    }
}
