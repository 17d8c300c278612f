//! The answers both view stores give, whichever backend holds the views: pages of rows with
//! an opaque cursor to the next page, a customer's orders, a day's sales. Backend-neutral, so
//! each backend imports only this module and the trait, never the other backend.
//!
//! A cursor is the last row's key (URL-safe base64 of JSON) with a check over the query it
//! belongs to (the customer, the day, the correlation id). A cursor this API did not give
//! out, one edited by hand, or one of another customer's pages is refused
//! ([`BadCursor`]), which the query API answers 400. The check is for mistakes, not a secret:
//! a cursor only says where a page starts.

use serde::{Deserialize, Serialize};

/// One entry of a customer's orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrder {
    /// The order.
    pub order_id: String,
    /// When it was placed, ms since the Unix epoch.
    pub placed_at: i64,
    /// Its status.
    pub status: String,
    /// Its currency.
    pub currency: String,
    /// Its total in minor units.
    pub total_cents: i64,
    /// Its version.
    pub version: i64,
}

/// One SKU's sales in one currency on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    /// The product.
    pub sku: String,
    /// The currency of `revenue_cents`.
    pub currency: String,
    /// Units sold.
    pub units: i64,
    /// Revenue in minor units.
    pub revenue_cents: i64,
    /// Confirmed orders that sold it.
    pub orders: i64,
}

/// One page of a paged query, as the query API and `eipctl query` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The cursor of the next page; None on the last one.
    pub next_cursor: Option<String>,
}

/// A cursor this API did not give out (or gave out for another query).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cursor is not one this API gave out for this query: pass next_cursor from the \
     previous page unchanged"
)]
pub struct BadCursor;

/// The longest cursor this API takes, in bytes: above the longest it gives out (a key of
/// two ids of `eip_schemas::limits::MAX_ID_BYTES` each, every byte a control character that
/// JSON spells `\u00XX`, in base64), and far below the 64 KiB an HTTP request line may have.
pub const MAX_CURSOR_BYTES: usize = 20_480;

/// FNV-1a, 64 bits: a stable check (the same in every build and release).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// An opaque cursor for the query `scope` (its kind and its key: `("customer", id)`): the
/// last row's key, with a check over both.
pub fn encode_cursor<T: Serialize>(scope: (&str, &str), key: &T) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(key).unwrap_or_default();
    let check = fnv1a(&[scope.0.as_bytes(), scope.1.as_bytes(), &json]);
    format!(
        "{}.{check:016x}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

/// The key in a cursor that [`encode_cursor`] gave out for `scope`.
pub fn decode_cursor<T: serde::de::DeserializeOwned>(
    scope: (&str, &str),
    cursor: Option<&str>,
) -> Result<Option<T>, BadCursor> {
    use base64::Engine;
    let Some(text) = cursor else {
        return Ok(None);
    };
    if text.len() > MAX_CURSOR_BYTES {
        return Err(BadCursor);
    }
    let (body, check) = text.rsplit_once('.').ok_or(BadCursor)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| BadCursor)?;
    let want = fnv1a(&[scope.0.as_bytes(), scope.1.as_bytes(), &json]);
    if u64::from_str_radix(check, 16).ok() != Some(want) || check.len() != 16 {
        return Err(BadCursor);
    }
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|_| BadCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_for_their_query_and_anything_else_is_refused() {
        let scope = ("customer", "c-1");
        let c = encode_cursor(scope, &(17_i64, "o-1"));
        let back: Option<(i64, String)> = decode_cursor(scope, Some(&c)).unwrap();
        assert_eq!(back, Some((17, "o-1".to_string())));
        // Garbage, a key of another shape, another customer's cursor, a hand-made one.
        assert!(decode_cursor::<(i64, String)>(scope, Some("%%%")).is_err());
        let other = encode_cursor(scope, &("a", "b"));
        assert!(decode_cursor::<(i64, String)>(scope, Some(&other)).is_err());
        assert!(decode_cursor::<(i64, String)>(("customer", "c-2"), Some(&c)).is_err());
        assert!(decode_cursor::<(i64, String)>(("sales", "c-1"), Some(&c)).is_err());
        let (body, _) = c.rsplit_once('.').unwrap();
        assert!(decode_cursor::<(i64, String)>(scope, Some(body)).is_err());
        assert!(
            decode_cursor::<(i64, String)>(scope, Some(&format!("{body}.0000000000000000")))
                .is_err()
        );
        assert!(
            decode_cursor::<(i64, String)>(scope, None)
                .unwrap()
                .is_none()
        );
        let long = "a".repeat(MAX_CURSOR_BYTES + 1);
        assert!(decode_cursor::<(i64, String)>(scope, Some(&long)).is_err());
        // The longest key this API pages by still makes a cursor it takes back.
        let worst = "\u{1}".repeat(eip_schemas::limits::MAX_ID_BYTES);
        let c = encode_cursor(("sales", "d"), &(&worst, &worst));
        assert!(c.len() <= MAX_CURSOR_BYTES, "{}", c.len());
        let back: Option<(String, String)> = decode_cursor(("sales", "d"), Some(&c)).unwrap();
        assert_eq!(back, Some((worst.clone(), worst)));
    }
}
