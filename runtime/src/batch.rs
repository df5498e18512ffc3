//! The units of data: raw messages as read from a partition.

use std::sync::Arc;

/// One message as the source delivered it. The payload and key are the original bytes, so a
/// message that cannot be processed reaches the DLQ exactly as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (null payload).
    pub payload: Option<Vec<u8>>,
    /// Broker/producer timestamp in epoch millis, when the source has one.
    pub timestamp_ms: Option<i64>,
    /// The values of the headers the pipeline reads ([`crate::Source::keep_headers`]), in
    /// the order of those names: `None` when the message has no such header or it has no
    /// value. Empty (no allocation) when no header is read.
    pub headers: Vec<Option<Vec<u8>>>,
}

/// Messages of one partition in offset order (strictly increasing offsets).
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub topic: Arc<str>,
    pub partition: i32,
    pub messages: Vec<RawMessage>,
}

impl RawBatch {
    pub fn new(topic: Arc<str>, partition: i32, messages: Vec<RawMessage>) -> Self {
        debug_assert!(messages.windows(2).all(|w| w[0].offset < w[1].offset));
        Self {
            topic,
            partition,
            messages,
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The message at `offset` (binary search: offsets are increasing).
    pub fn find(&self, offset: i64) -> Option<&RawMessage> {
        self.messages
            .binary_search_by_key(&offset, |m| m.offset)
            .ok()
            .map(|i| &self.messages[i])
    }
}
