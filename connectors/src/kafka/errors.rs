//! librdkafka error codes → [`ErrorClass`]: a table, tested row by row (ARCHITECTURE.md, "Errors and retries").
//!
//! - `Transient`: the broker, the network or the group coordinator is unavailable for now;
//!   librdkafka or weir retries with backoff and nothing is lost by waiting.
//! - `Data`: the broker refused one record for what it is (too large, invalid); the record
//!   goes to the DLQ and the pipeline goes on.
//! - `Fenced`: a newer transactional producer of the same `transactional.id` fenced this one
//!   (the lane has a new owner): the transactional sink drops the partition like a lost one
//!   and the worker goes on (ARCHITECTURE.md, "Checkpoint protocol").
//! - `Fatal`: configuration, authorization, a missing topic, or an internal error: retrying
//!   cannot help; the pipeline stops and resumes from its checkpoint once fixed.
//!
//! A code that is not in the table is `Fatal`: an unknown condition must be looked at, not
//! retried forever.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use weir_runtime::ErrorClass;

use ErrorClass::{Data, Fatal, Fenced, Transient};

/// The classified codes. Codes not listed are [`ErrorClass::Fatal`].
pub const CLASSIFICATION: &[(Code, ErrorClass)] = &[
    // Local (client-side) conditions that pass.
    (Code::BrokerTransportFailure, Transient),
    (Code::AllBrokersDown, Transient),
    (Code::Resolve, Transient),
    (Code::MessageTimedOut, Transient),
    (Code::OperationTimedOut, Transient),
    (Code::TimedOutQueue, Transient),
    (Code::QueueFull, Transient),
    (Code::WaitingForCoordinator, Transient),
    (Code::WaitCache, Transient),
    (Code::InProgress, Transient),
    (Code::PreviousInProgress, Transient),
    (Code::Retry, Transient),
    (Code::NodeUpdate, Transient),
    (Code::ISRInsufficient, Transient),
    (Code::PurgeQueue, Transient),
    (Code::PurgeInflight, Transient),
    (Code::Outdated, Transient),
    // Broker conditions that Kafka marks retriable.
    (Code::LeaderNotAvailable, Transient),
    (Code::NotLeaderForPartition, Transient),
    (Code::RequestTimedOut, Transient),
    (Code::BrokerNotAvailable, Transient),
    (Code::ReplicaNotAvailable, Transient),
    (Code::NetworkException, Transient),
    (Code::CoordinatorLoadInProgress, Transient),
    (Code::CoordinatorNotAvailable, Transient),
    (Code::NotCoordinator, Transient),
    (Code::NotEnoughReplicas, Transient),
    (Code::NotEnoughReplicasAfterAppend, Transient),
    (Code::RebalanceInProgress, Transient),
    (Code::KafkaStorageError, Transient),
    (Code::FetchSessionIdNotFound, Transient),
    (Code::InvalidFetchSessionEpoch, Transient),
    (Code::FencedLeaderEpoch, Transient),
    (Code::UnknownLeaderEpoch, Transient),
    (Code::OffsetNotAvailable, Transient),
    (Code::PreferredLeaderNotAvailable, Transient),
    (Code::UnstableOffsetCommit, Transient),
    (Code::ThrottlingQuotaExceeded, Transient),
    (Code::ConcurrentTransactions, Transient),
    // Kafka's CORRUPT_MESSAGE (librdkafka's INVALID_MSG, code 2): retriable in Kafka.
    (Code::InvalidMessage, Transient),
    (Code::RebootstrapRequired, Transient),
    // One record refused for what it is.
    (Code::MessageSizeTooLarge, Data),
    (Code::InvalidMessageSize, Data),
    (Code::InvalidRecord, Data),
    (Code::InvalidTimestamp, Data),
    // Listed to document the decision; the default would give the same class.
    (Code::UnknownTopicOrPartition, Fatal),
    (Code::UnknownTopic, Fatal),
    (Code::UnknownPartition, Fatal),
    (Code::TopicAuthorizationFailed, Fatal),
    (Code::GroupAuthorizationFailed, Fatal),
    (Code::ClusterAuthorizationFailed, Fatal),
    (Code::SaslAuthenticationFailed, Fatal),
    (Code::Authentication, Fatal),
    (Code::SSL, Fatal),
    (Code::InvalidConfig, Fatal),
    (Code::InvalidArgument, Fatal),
    (Code::InvalidGroupId, Fatal),
    (Code::UnsupportedVersion, Fatal),
    (Code::UnsupportedFeature, Fatal),
    (Code::OffsetOutOfRange, Fatal),
    (Code::AutoOffsetReset, Fatal),
    (Code::OutOfOrderSequenceNumber, Fatal),
    // A newer producer of the same transactional.id: the lane has a new owner.
    (Code::InvalidProducerEpoch, Fenced),
    (Code::ProducerFenced, Fenced),
    (Code::Fenced, Fenced),
    (Code::Fatal, Fatal),
    (Code::State, Fatal),
    (Code::Fail, Fatal),
];

/// The class of a librdkafka error code (see the module docs).
pub fn classify_code(code: Code) -> ErrorClass {
    CLASSIFICATION
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(Fatal, |(_, class)| *class)
}

/// The class of an rdkafka error: its code's class; `Fatal` when the client itself reported
/// a fatal error or the error carries no code (configuration, client creation).
pub fn classify(error: &KafkaError) -> ErrorClass {
    match error {
        KafkaError::MessageConsumptionFatal(_) => Fatal,
        // Fencing is fatal to the producer, not to the worker.
        KafkaError::Transaction(e) if classify_code(e.code()) == Fenced => Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => Fatal,
        KafkaError::Transaction(e) if e.is_retriable() => Transient,
        e => e.rdkafka_error_code().map_or(Fatal, classify_code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row, spelled out: changing a class must change this test.
    #[test]
    fn each_code_has_its_documented_class() {
        let expected: &[(Code, ErrorClass)] = &[
            (Code::BrokerTransportFailure, Transient),
            (Code::AllBrokersDown, Transient),
            (Code::Resolve, Transient),
            (Code::MessageTimedOut, Transient),
            (Code::OperationTimedOut, Transient),
            (Code::TimedOutQueue, Transient),
            (Code::QueueFull, Transient),
            (Code::WaitingForCoordinator, Transient),
            (Code::WaitCache, Transient),
            (Code::InProgress, Transient),
            (Code::PreviousInProgress, Transient),
            (Code::Retry, Transient),
            (Code::NodeUpdate, Transient),
            (Code::ISRInsufficient, Transient),
            (Code::PurgeQueue, Transient),
            (Code::PurgeInflight, Transient),
            (Code::Outdated, Transient),
            (Code::LeaderNotAvailable, Transient),
            (Code::NotLeaderForPartition, Transient),
            (Code::RequestTimedOut, Transient),
            (Code::BrokerNotAvailable, Transient),
            (Code::ReplicaNotAvailable, Transient),
            (Code::NetworkException, Transient),
            (Code::CoordinatorLoadInProgress, Transient),
            (Code::CoordinatorNotAvailable, Transient),
            (Code::NotCoordinator, Transient),
            (Code::NotEnoughReplicas, Transient),
            (Code::NotEnoughReplicasAfterAppend, Transient),
            (Code::RebalanceInProgress, Transient),
            (Code::KafkaStorageError, Transient),
            (Code::FetchSessionIdNotFound, Transient),
            (Code::InvalidFetchSessionEpoch, Transient),
            (Code::FencedLeaderEpoch, Transient),
            (Code::UnknownLeaderEpoch, Transient),
            (Code::OffsetNotAvailable, Transient),
            (Code::PreferredLeaderNotAvailable, Transient),
            (Code::UnstableOffsetCommit, Transient),
            (Code::ThrottlingQuotaExceeded, Transient),
            (Code::ConcurrentTransactions, Transient),
            (Code::InvalidMessage, Transient),
            (Code::RebootstrapRequired, Transient),
            (Code::MessageSizeTooLarge, Data),
            (Code::InvalidMessageSize, Data),
            (Code::InvalidRecord, Data),
            (Code::InvalidTimestamp, Data),
            (Code::UnknownTopicOrPartition, Fatal),
            (Code::UnknownTopic, Fatal),
            (Code::UnknownPartition, Fatal),
            (Code::TopicAuthorizationFailed, Fatal),
            (Code::GroupAuthorizationFailed, Fatal),
            (Code::ClusterAuthorizationFailed, Fatal),
            (Code::SaslAuthenticationFailed, Fatal),
            (Code::Authentication, Fatal),
            (Code::SSL, Fatal),
            (Code::InvalidConfig, Fatal),
            (Code::InvalidArgument, Fatal),
            (Code::InvalidGroupId, Fatal),
            (Code::UnsupportedVersion, Fatal),
            (Code::UnsupportedFeature, Fatal),
            (Code::OffsetOutOfRange, Fatal),
            (Code::AutoOffsetReset, Fatal),
            (Code::OutOfOrderSequenceNumber, Fatal),
            (Code::InvalidProducerEpoch, Fenced),
            (Code::ProducerFenced, Fenced),
            (Code::Fenced, Fenced),
            (Code::Fatal, Fatal),
            (Code::State, Fatal),
            (Code::Fail, Fatal),
        ];
        assert_eq!(
            expected.len(),
            CLASSIFICATION.len(),
            "a row was added or removed"
        );
        for (code, class) in expected {
            assert_eq!(classify_code(*code), *class, "{code:?}");
        }
    }

    #[test]
    fn the_table_has_no_duplicate_codes() {
        for (i, (code, _)) in CLASSIFICATION.iter().enumerate() {
            assert!(
                !CLASSIFICATION[i + 1..].iter().any(|(c, _)| c == code),
                "{code:?} is listed twice"
            );
        }
    }

    #[test]
    fn codes_outside_the_table_are_fatal() {
        for code in [
            Code::Unknown,
            Code::IllegalGeneration,
            Code::PolicyViolation,
            Code::TopicDeletionDisabled,
        ] {
            assert_eq!(classify_code(code), Fatal, "{code:?}");
        }
    }

    #[test]
    fn errors_are_classified_by_their_code_or_as_fatal_without_one() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::QueueFull)),
            Transient
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::MessageSizeTooLarge)),
            Data
        );
        assert_eq!(
            classify(&KafkaError::MetadataFetch(Code::OperationTimedOut)),
            Transient
        );
        assert_eq!(
            classify(&KafkaError::ConsumerCommit(Code::CoordinatorNotAvailable)),
            Transient
        );
        assert_eq!(
            classify(&KafkaError::MessageConsumptionFatal(
                Code::BrokerTransportFailure
            )),
            Fatal,
            "a fatal client error is fatal whatever its code"
        );
        assert_eq!(classify(&KafkaError::ClientCreation("bad".into())), Fatal);
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::ProducerFenced)),
            Fenced
        );
    }
}
