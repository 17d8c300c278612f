//! What a valid identifier is, on every side of the pipeline: the write side checks commands
//! against it before it accepts them, the projector before it stages a row, and the gateway at
//! the edge. One definition, so a command the write side accepts is never one the read side
//! refuses (an accepted order that never becomes visible).
//!
//! An id (order, customer, SKU, command, correlation) is a key somewhere: a Kafka record key,
//! a SQLite primary key, a CQL partition or clustering key (at most 64 KiB). It must not be
//! empty, and it is at most [`MAX_ID_BYTES`] bytes of UTF-8: far above any real id, far
//! below every store's limit.

/// The longest id, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 1_024;

/// Why an id is refused, or None when it is valid. The sentence reads after the id's name:
/// "customer_id is empty".
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("is empty".to_string())
    } else if value.len() > MAX_ID_BYTES {
        Some(format!(
            "is {} bytes long, more than the {MAX_ID_BYTES} an id may have",
            value.len()
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_non_empty_and_at_most_max_id_bytes_of_utf8() {
        assert_eq!(id_problem("order-1"), None);
        assert_eq!(id_problem(&"x".repeat(MAX_ID_BYTES)), None);
        assert!(id_problem("").is_some_and(|p| p.contains("empty")));
        let long = "é".repeat(MAX_ID_BYTES / 2 + 1);
        assert!(id_problem(&long).is_some_and(|p| p.contains(&format!("{} bytes", long.len()))));
    }
}
