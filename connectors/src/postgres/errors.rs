//! PostgreSQL errors → [`ErrorClass`]: SQLSTATE codes in a table, tested row by row
//! (ARCHITECTURE.md, "Errors and retries").
//!
//! - `Transient`: the server or the connection is unavailable for now, or the transaction lost
//!   a race (serialization failure, deadlock, lock timeout); the open transaction is gone, the
//!   store replays what it had staged, and the executor retries with backoff.
//! - `Data`: this row cannot be stored as it is: an integrity constraint (class 23: NOT NULL,
//!   CHECK, UNIQUE, FOREIGN KEY) or a value the column cannot hold (class 22: out of range,
//!   a NUL character in text, an impossible date). The row goes to the DLQ with its SQLSTATE;
//!   the other rows of the batch are written.
//! - `Fatal`: everything else: a missing table or column, a type mismatch, permissions,
//!   authentication, an internal error. Retrying cannot help; the pipeline stops and resumes
//!   from its checkpoint once fixed.
//!
//! A row is either a whole SQLSTATE class (two characters) or one code (five); a code's own
//! row wins over its class's. A code in no row is `Fatal`: an unknown condition must be
//! looked at, not retried forever. Errors without a SQLSTATE (the connection broke, timed out
//! or could not be opened) are `Transient`, except client-side ones (a parameter that does not
//! encode, a malformed reply), which are `Fatal`.

use std::error::Error as _;

use weir_runtime::ErrorClass;

use ErrorClass::{Data, Fatal, Transient};

/// The classified SQLSTATE classes and codes. Anything else is [`ErrorClass::Fatal`].
pub const SQLSTATE_CLASSIFICATION: &[(&str, ErrorClass)] = &[
    // Class 08, connection exception: the connection is gone or could not be made.
    ("08", Transient),
    // Transaction rollback: the transaction lost a race; run it again.
    ("40001", Transient), // serialization_failure
    ("40P01", Transient), // deadlock_detected
    // A row lock was not granted within lock_timeout. The store turns this into a Fatal error
    // when the lock is held by another partition's open transaction of the same store (two
    // partitions writing one key), which waiting cannot resolve.
    ("55P03", Transient), // lock_not_available
    // Operator intervention.
    ("57P01", Transient), // admin_shutdown (e.g. pg_terminate_backend)
    ("57P02", Transient), // crash_shutdown
    ("57P03", Transient), // cannot_connect_now (starting up, shutting down, in recovery)
    // Insufficient resources that pass.
    ("53100", Transient), // disk_full
    ("53200", Transient), // out_of_memory
    ("53300", Transient), // too_many_connections
    // This row cannot be stored.
    ("22", Data), // data_exception
    ("23", Data), // integrity_constraint_violation
    // Listed to document the decision; the default would give the same class.
    ("0A", Fatal),    // feature_not_supported
    ("25", Fatal),    // invalid_transaction_state (a bug of ours)
    ("28", Fatal),    // invalid_authorization_specification (bad user or password)
    ("3D", Fatal),    // invalid_catalog_name (no such database)
    ("3F", Fatal),    // invalid_schema_name
    ("40", Fatal),    // other transaction rollbacks (e.g. statement_completion_unknown)
    ("42", Fatal),    // syntax_error_or_access_rule_violation (missing column, wrong type)
    ("53", Fatal),    // other insufficient resources (configuration_limit_exceeded)
    ("54", Fatal),    // program_limit_exceeded
    ("57014", Fatal), // query_canceled (statement_timeout would fire again)
    ("58", Fatal),    // system_error (I/O error on the server)
    ("XX", Fatal),    // internal_error, data_corrupted, index_corrupted
];

/// The class of a SQLSTATE code (see the module docs).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let exact = SQLSTATE_CLASSIFICATION
        .iter()
        .find(|(c, _)| c.len() == 5 && *c == code);
    let class = || {
        SQLSTATE_CLASSIFICATION
            .iter()
            .find(|(c, _)| c.len() == 2 && code.len() == 5 && code.starts_with(c))
    };
    exact.or_else(class).map_or(Fatal, |(_, class)| *class)
}

/// The class of a client error: its SQLSTATE's class; `Transient` when there is no SQLSTATE
/// because the connection broke, timed out or could not be made; `Fatal` otherwise.
pub fn classify(error: &postgres::Error) -> ErrorClass {
    if let Some(code) = error.code() {
        return classify_sqlstate(code.code());
    }
    if error.is_closed() || connection_trouble(error) {
        Transient
    } else {
        Fatal
    }
}

/// The connection failed at the I/O level: an `io::Error` cause, a timeout, or a failed
/// connect (tokio-postgres's error kinds are private, so this reads their descriptions).
fn connection_trouble(error: &postgres::Error) -> bool {
    let io = error
        .source()
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    let text = error.to_string();
    io || text.starts_with("error communicating with the server")
        || text.starts_with("error connecting to server")
        || text.starts_with("timeout waiting for server")
}

/// `"SQLSTATE 23514: <message> (<detail>)"` for a server error, the client's text otherwise.
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("SQLSTATE {}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = error.source();
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row, spelled out: changing a class must change this test.
    #[test]
    fn each_sqlstate_has_its_documented_class() {
        let expected: &[(&str, ErrorClass)] = &[
            ("08", Transient),
            ("40001", Transient),
            ("40P01", Transient),
            ("55P03", Transient),
            ("57P01", Transient),
            ("57P02", Transient),
            ("57P03", Transient),
            ("53100", Transient),
            ("53200", Transient),
            ("53300", Transient),
            ("22", Data),
            ("23", Data),
            ("0A", Fatal),
            ("25", Fatal),
            ("28", Fatal),
            ("3D", Fatal),
            ("3F", Fatal),
            ("40", Fatal),
            ("42", Fatal),
            ("53", Fatal),
            ("54", Fatal),
            ("57014", Fatal),
            ("58", Fatal),
            ("XX", Fatal),
        ];
        assert_eq!(SQLSTATE_CLASSIFICATION, expected);
    }

    #[test]
    fn codes_take_their_own_row_then_their_class_then_fatal() {
        let cases: &[(&str, ErrorClass, &str)] = &[
            ("08000", Transient, "connection_exception"),
            ("08003", Transient, "connection_does_not_exist"),
            ("08006", Transient, "connection_failure"),
            (
                "08001",
                Transient,
                "sqlclient_unable_to_establish_sqlconnection",
            ),
            ("08P01", Transient, "protocol_violation"),
            ("40001", Transient, "serialization_failure"),
            ("40P01", Transient, "deadlock_detected"),
            ("40002", Fatal, "transaction_integrity_constraint_violation"),
            ("40003", Fatal, "statement_completion_unknown"),
            ("55P03", Transient, "lock_not_available"),
            ("55000", Fatal, "object_not_in_prerequisite_state"),
            ("57P01", Transient, "admin_shutdown"),
            ("57P02", Transient, "crash_shutdown"),
            ("57P03", Transient, "cannot_connect_now"),
            ("57014", Fatal, "query_canceled"),
            ("57000", Fatal, "operator_intervention"),
            ("53100", Transient, "disk_full"),
            ("53200", Transient, "out_of_memory"),
            ("53300", Transient, "too_many_connections"),
            ("53400", Fatal, "configuration_limit_exceeded"),
            ("23000", Data, "integrity_constraint_violation"),
            ("23502", Data, "not_null_violation"),
            ("23503", Data, "foreign_key_violation"),
            ("23505", Data, "unique_violation"),
            ("23514", Data, "check_violation"),
            ("23P01", Data, "exclusion_violation"),
            ("22001", Data, "string_data_right_truncation"),
            ("22003", Data, "numeric_value_out_of_range"),
            ("22008", Data, "datetime_field_overflow"),
            ("22021", Data, "character_not_in_repertoire (NUL in text)"),
            ("22P02", Data, "invalid_text_representation"),
            ("0A000", Fatal, "feature_not_supported"),
            ("25P02", Fatal, "in_failed_sql_transaction"),
            ("28P01", Fatal, "invalid_password"),
            ("28000", Fatal, "invalid_authorization_specification"),
            ("3D000", Fatal, "invalid_catalog_name"),
            ("3F000", Fatal, "invalid_schema_name"),
            ("42P01", Fatal, "undefined_table"),
            ("42703", Fatal, "undefined_column"),
            ("42804", Fatal, "datatype_mismatch"),
            ("42501", Fatal, "insufficient_privilege"),
            (
                "42P10",
                Fatal,
                "invalid_column_reference (no unique index on the key)",
            ),
            ("54000", Fatal, "program_limit_exceeded"),
            ("58030", Fatal, "io_error"),
            ("XX000", Fatal, "internal_error"),
            ("XX001", Fatal, "data_corrupted"),
            ("P0001", Fatal, "raise_exception (unlisted class)"),
            ("", Fatal, "empty"),
            ("2", Fatal, "one character"),
            ("23", Fatal, "a bare class is not a code"),
        ];
        for (code, class, name) in cases {
            assert_eq!(classify_sqlstate(code), *class, "{code} {name}");
        }
    }
}
