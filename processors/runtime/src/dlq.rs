//! Dead-letter records: the original key, value and headers, plus headers that say why.
//!
//! A record that can never be processed goes to `<source topic><dlq_suffix>` with these
//! headers, so an operator can see what failed, where it came from, and redrive it:
//!
//! | header | value |
//! |---|---|
//! | `eip.dlq.error-class` | `poison` (or `transient`/`fatal` when a retry budget ran out) |
//! | `eip.dlq.reason` | the error, for people |
//! | `eip.dlq.source-topic` | the topic the record was consumed from |
//! | `eip.dlq.source-partition` | its partition, decimal |
//! | `eip.dlq.source-offset` | its offset, decimal |
//! | `eip.dlq.attempts` | how many times processing was tried |
//! | `eip.dlq.first-failure` | RFC 3339 UTC time of the first failed attempt |
//! | `eip.dlq.processor` | the processor that gave up |
//! | `eip.dlq.truncated` | only on a dead letter sent without its payload because the whole one was refused |

use eip_schemas::ErrorClass;
use time::format_description::well_known::Rfc3339;

use crate::processor::{Headers, Record};

/// Header: error class.
pub const ERROR_CLASS: &str = "eip.dlq.error-class";
/// Header: reason, for people.
pub const REASON: &str = "eip.dlq.reason";
/// Header: source topic.
pub const SOURCE_TOPIC: &str = "eip.dlq.source-topic";
/// Header: source partition.
pub const SOURCE_PARTITION: &str = "eip.dlq.source-partition";
/// Header: source offset.
pub const SOURCE_OFFSET: &str = "eip.dlq.source-offset";
/// Header: processing attempts.
pub const ATTEMPTS: &str = "eip.dlq.attempts";
/// Header: time of the first failure.
pub const FIRST_FAILURE: &str = "eip.dlq.first-failure";
/// Header: processor name.
pub const PROCESSOR: &str = "eip.dlq.processor";

/// Header set by processors that produce to targets (the router): the target that could not
/// be reached. Not written by the runtime itself.
pub const TARGET_TOPIC: &str = "eip.dlq.target-topic";

/// Header on a dead letter that had to be cut down to be accepted: why, and what was dropped.
pub const TRUNCATED: &str = "eip.dlq.truncated";

/// Every DLQ header name, in the order they are written.
pub const ALL: [&str; 9] = [
    ERROR_CLASS,
    REASON,
    SOURCE_TOPIC,
    SOURCE_PARTITION,
    SOURCE_OFFSET,
    ATTEMPTS,
    FIRST_FAILURE,
    PROCESSOR,
    TRUNCATED,
];

/// Longest reason kept in a header; longer ones are cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 2048;

/// Why a record is being dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The error class.
    pub class: ErrorClass,
    /// The error, for people.
    pub reason: &'a str,
    /// The processor's name.
    pub processor: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failure: time::OffsetDateTime,
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The headers of a DLQ record: the original headers (minus stale DLQ headers from an earlier
/// dead-lettering) followed by the DLQ headers.
pub fn headers(record: &Record, failure: &Failure<'_>) -> Headers {
    let mut h = record.headers.without(|k| ALL.contains(&k));
    let first = failure
        .first_failure
        .format(&Rfc3339)
        .unwrap_or_else(|_| failure.first_failure.unix_timestamp().to_string());
    h.push(ERROR_CLASS, failure.class.as_str());
    h.push(
        REASON,
        truncate(failure.reason, MAX_REASON_BYTES).to_string(),
    );
    h.push(SOURCE_TOPIC, record.position.topic.to_string());
    h.push(SOURCE_PARTITION, record.position.partition.to_string());
    h.push(SOURCE_OFFSET, record.position.offset.to_string());
    h.push(ATTEMPTS, failure.attempts.to_string());
    h.push(FIRST_FAILURE, first);
    h.push(PROCESSOR, failure.processor.to_string());
    h
}

/// The headers of a dead letter the broker refused (too large for the DLQ topic, say), to be
/// sent again without the original payload: only the DLQ headers, which name the source
/// position to read the original from, and [`TRUNCATED`] saying what was dropped and why.
pub fn reduced_headers(record: &Record, failure: &Failure<'_>, refused: &str) -> Headers {
    let mut h = headers(record, failure).without(|k| !ALL.contains(&k));
    h.push(
        TRUNCATED,
        format!(
            "the dead letter was refused ({}); sent again without its payload ({} bytes) and its {} original headers",
            truncate(refused, 256),
            record.payload.as_ref().map_or(0, |p| p.len()),
            record.headers.len()
        ),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Position;
    use std::sync::Arc;

    fn record() -> Record {
        let mut headers = Headers::new();
        headers.push(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.push(REASON, "an older failure");
        Record {
            position: Position {
                topic: Arc::from("orders"),
                partition: 3,
                offset: 42,
                timestamp_ms: None,
            },
            key: None,
            payload: None,
            headers,
        }
    }

    #[test]
    fn given_a_refused_dead_letter_then_the_reduced_one_keeps_only_the_dlq_headers_and_says_why() {
        let mut r = record();
        r.payload = Some(bytes::Bytes::from(vec![b'x'; 8192]));
        let failure = Failure {
            class: ErrorClass::Poison,
            reason: "bad frame",
            processor: "passthrough",
            attempts: 1,
            first_failure: time::macros::datetime!(2026-11-24 10:00:00 UTC),
        };
        let h = reduced_headers(&r, &failure, "Broker: Message size too large");
        assert!(h.iter().all(|(k, _)| ALL.contains(&k)), "{h:?}");
        assert_eq!(h.get("traceparent"), None, "original headers dropped");
        assert_eq!(h.get_str(REASON), Some("bad frame"));
        assert_eq!(h.get_str(SOURCE_OFFSET), Some("42"));
        assert_eq!(
            h.get_str(TRUNCATED),
            Some(
                "the dead letter was refused (Broker: Message size too large); sent again without its payload (8192 bytes) and its 2 original headers"
            )
        );
    }

    #[test]
    fn carries_everything_an_operator_needs() {
        let at = time::macros::datetime!(2026-11-24 10:00:00.123 UTC);
        let h = headers(
            &record(),
            &Failure {
                class: ErrorClass::Poison,
                reason: "bad frame: payload starts with byte 0x7b",
                processor: "passthrough",
                attempts: 1,
                first_failure: at,
            },
        );
        assert_eq!(h.get_str(ERROR_CLASS), Some("poison"));
        assert_eq!(
            h.get_str(REASON),
            Some("bad frame: payload starts with byte 0x7b")
        );
        assert_eq!(h.get_str(SOURCE_TOPIC), Some("orders"));
        assert_eq!(h.get_str(SOURCE_PARTITION), Some("3"));
        assert_eq!(h.get_str(SOURCE_OFFSET), Some("42"));
        assert_eq!(h.get_str(ATTEMPTS), Some("1"));
        assert_eq!(h.get_str(FIRST_FAILURE), Some("2026-11-24T10:00:00.123Z"));
        assert_eq!(h.get_str(PROCESSOR), Some("passthrough"));
        // The original trace context travels along; the stale reason does not.
        assert!(h.get("traceparent").is_some());
        assert_eq!(h.iter().filter(|(k, _)| *k == REASON).count(), 1);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let h = headers(
            &record(),
            &Failure {
                class: ErrorClass::Poison,
                reason: &long,
                processor: "p",
                attempts: 1,
                first_failure: time::OffsetDateTime::UNIX_EPOCH,
            },
        );
        let reason = h.get_str(REASON).unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(reason.chars().all(|c| c == 'é'));
    }
}
