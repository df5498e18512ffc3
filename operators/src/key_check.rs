//! The run-time check of `[schema] partition_key`: every value of the declared key must be
//! read by one partition of a topic, or state keyed by it is split between partition tasks
//! and its results are wrong (ARCHITECTURE.md, "Co-location").
//!
//! [`KeyPlacement`] is shared by the partition tasks of a pipeline and records, per topic,
//! the partition each key value was first seen in. Each task runs a [`KeyCheckOperator`] in
//! front of its chain: it remembers (by a 64-bit hash) the values its partition has already
//! registered, so the shared map and its lock are reached only the first time a partition
//! sees a value, never per event. A value seen in a second partition is counted, the first
//! one is logged with the value and both partitions, and in `strict` mode the run fails.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{Emit, Operator};

use crate::schema::PartitionKeyCheck;

const SHARDS: usize = 64;

/// (topic, key value) → the partition it was first seen in.
type FirstSeen = HashMap<(Arc<str>, Box<[u8]>), i32>;

/// Where each value of the partition key was first seen, per topic; shared by every
/// partition task of one pipeline.
#[derive(Debug)]
pub struct KeyPlacement {
    column: String,
    mode: PartitionKeyCheck,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<FirstSeen>>,
    misplaced: AtomicU64,
    warned: AtomicBool,
}

impl KeyPlacement {
    pub fn new(column: &str, mode: PartitionKeyCheck) -> Self {
        Self {
            column: column.to_string(),
            mode,
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            misplaced: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// The declared partition key column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Values seen in more than one partition of a topic (each counted once per extra
    /// partition it was seen in).
    pub fn misplaced(&self) -> u64 {
        self.misplaced.load(Ordering::Relaxed)
    }

    /// Record that `partition` of `topic` holds `key`; `Err` in strict mode when another
    /// partition of the topic had it first.
    fn register(&self, topic: &Arc<str>, partition: i32, key: &[u8], hash: u64) -> Result<()> {
        let shard = &self.shards[(hash as usize) % SHARDS];
        let first = {
            let mut map = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *map.entry((topic.clone(), key.into())).or_insert(partition)
        };
        if first == partition {
            return Ok(());
        }
        self.misplaced.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "partition_key `{}` = {} is in partitions {first} and {partition} of topic `{topic}`: \
             the input is not partitioned by `{}`, so state keyed by it is split between \
             partitions (declare the field the topic is keyed by)",
            self.column,
            String::from_utf8_lossy(key),
            self.column
        );
        match self.mode {
            PartitionKeyCheck::Strict => Err(WeirError::operator(
                "partition_key_check",
                format!("{message}; partition_key_check = \"strict\" stops the run"),
            )),
            PartitionKeyCheck::Warn => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{message}; further such keys are counted, not logged \
                         (partition_key_check = \"strict\" stops the run instead)"
                    );
                }
                Ok(())
            }
        }
    }
}

/// Passes every batch on unchanged, registering the partition key values it has not seen
/// before with the shared [`KeyPlacement`].
pub struct KeyCheckOperator {
    placement: Arc<KeyPlacement>,
    topic: Arc<str>,
    partition: i32,
    schema: SchemaRef,
    column: usize,
    seen: HashSet<u64, IdentityHash>,
}

impl KeyCheckOperator {
    pub fn new(
        placement: Arc<KeyPlacement>,
        topic: Arc<str>,
        partition: i32,
        input: SchemaRef,
    ) -> Result<Self, String> {
        let column = input
            .index_of(placement.column())
            .map_err(|_| format!("partition_key `{}` is not a column", placement.column()))?;
        match input.field(column).data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Int32 | DataType::Int64 => {}
            other => {
                return Err(format!(
                    "partition_key `{}` has type {other}: it must be a string or an integer",
                    placement.column()
                ))
            }
        }
        Ok(Self {
            placement,
            topic,
            partition,
            schema: input,
            column,
            seen: HashSet::default(),
        })
    }

    fn check(&mut self, key: &[u8]) -> Result<()> {
        let hash = self.placement.hasher.hash_one(key);
        if self.seen.insert(hash) {
            self.placement
                .register(&self.topic, self.partition, key, hash)?;
        }
        Ok(())
    }

    /// [`Self::check`] for an integer key: hashed from its bytes, written out as text only
    /// the first time this partition sees it (never per event).
    fn check_int(&mut self, key: i64) -> Result<()> {
        let hash = self.placement.hasher.hash_one(key);
        if self.seen.insert(hash) {
            let text = key.to_string();
            self.placement
                .register(&self.topic, self.partition, text.as_bytes(), hash)?;
        }
        Ok(())
    }
}

impl Operator for KeyCheckOperator {
    fn name(&self) -> &str {
        "partition_key_check"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let col = batch.column(self.column).clone();
        match col.data_type() {
            DataType::Utf8 => {
                let a = col.as_string::<i32>();
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    self.check(a.value(i).as_bytes())?;
                }
            }
            DataType::LargeUtf8 => {
                let a = col.as_string::<i64>();
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    self.check(a.value(i).as_bytes())?;
                }
            }
            DataType::Int32 => {
                let a = col.as_primitive::<Int32Type>();
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    self.check_int(i64::from(a.value(i)))?;
                }
            }
            DataType::Int64 => {
                let a = col.as_primitive::<Int64Type>();
                for i in (0..a.len()).filter(|&i| a.is_valid(i)) {
                    self.check_int(a.value(i))?;
                }
            }
            other => {
                return Err(WeirError::Internal(format!(
                    "partition_key column of type {other}, checked at build time"
                )))
            }
        }
        emit.emit(batch);
        Ok(())
    }
}

/// The set holds hashes already: use them as they are.
#[derive(Default, Clone, Copy)]
struct IdentityHash;

impl BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(keys: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let col: ArrayRef = Arc::new(StringArray::from(keys.to_vec()));
        RecordBatch::try_new(schema, vec![col]).unwrap()
    }

    fn op(placement: &Arc<KeyPlacement>, topic: &str, partition: i32) -> KeyCheckOperator {
        KeyCheckOperator::new(
            placement.clone(),
            topic.into(),
            partition,
            batch(&[]).schema(),
        )
        .unwrap()
    }

    #[test]
    fn a_key_in_two_partitions_of_a_topic_is_counted_once_per_extra_partition() {
        let placement = Arc::new(KeyPlacement::new("k", PartitionKeyCheck::Warn));
        let (mut p0, mut p1) = (op(&placement, "t", 0), op(&placement, "t", 1));
        let mut emit = Emit::default();
        p0.process(batch(&["a", "b", "a"]), &mut emit).unwrap();
        p1.process(batch(&["c", "a", "a"]), &mut emit).unwrap();
        p1.process(batch(&["a", "c"]), &mut emit).unwrap();
        assert_eq!(placement.misplaced(), 1);
        // Rows pass through unchanged.
        assert_eq!(
            emit.batches().iter().map(|b| b.num_rows()).sum::<usize>(),
            8
        );
    }

    #[test]
    fn the_same_key_in_two_topics_is_not_misplaced() {
        let placement = Arc::new(KeyPlacement::new("k", PartitionKeyCheck::Warn));
        let mut emit = Emit::default();
        op(&placement, "ta", 0)
            .process(batch(&["a"]), &mut emit)
            .unwrap();
        op(&placement, "tb", 3)
            .process(batch(&["a"]), &mut emit)
            .unwrap();
        assert_eq!(placement.misplaced(), 0);
    }

    #[test]
    fn strict_mode_fails_naming_the_key_and_both_partitions() {
        let placement = Arc::new(KeyPlacement::new("k", PartitionKeyCheck::Strict));
        let mut emit = Emit::default();
        op(&placement, "t", 2)
            .process(batch(&["x"]), &mut emit)
            .unwrap();
        let err = op(&placement, "t", 5)
            .process(batch(&["y", "x"]), &mut emit)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`k` = x is in partitions 2 and 5 of topic `t`"),
            "{err}"
        );
        assert!(err.contains("strict"), "{err}");
    }

    #[test]
    fn an_integer_key_in_two_partitions_is_named_by_its_value() {
        use datafusion::arrow::array::Int64Array;
        let placement = Arc::new(KeyPlacement::new("k", PartitionKeyCheck::Strict));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let b = |v: Vec<i64>| {
            let col: ArrayRef = Arc::new(Int64Array::from(v));
            RecordBatch::try_new(schema.clone(), vec![col]).unwrap()
        };
        let op = |p| KeyCheckOperator::new(placement.clone(), "t".into(), p, schema.clone());
        let mut emit = Emit::default();
        op(0)
            .unwrap()
            .process(b(vec![42, 7, 42]), &mut emit)
            .unwrap();
        let err = op(1)
            .unwrap()
            .process(b(vec![42]), &mut emit)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`k` = 42 is in partitions 0 and 1"), "{err}");
    }

    #[test]
    fn null_keys_are_not_placed() {
        let placement = Arc::new(KeyPlacement::new("k", PartitionKeyCheck::Strict));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let col: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        let b = RecordBatch::try_new(schema, vec![col]).unwrap();
        let mut emit = Emit::default();
        op(&placement, "t", 0)
            .process(b.clone(), &mut emit)
            .unwrap();
        op(&placement, "t", 1).process(b, &mut emit).unwrap();
        assert_eq!(placement.misplaced(), 0);
    }
}
