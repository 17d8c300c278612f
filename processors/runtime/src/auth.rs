//! The bearer-token check of the HTTP surfaces (the gateway, the saga monitor's operator
//! actions): the parsing and the comparison, so each surface only words its own answer.

use axum::http::{HeaderMap, header};

/// Why a request's credentials were refused (a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not a bearer token.
    NotBearer,
    /// A bearer token that matches none.
    Invalid,
}

impl Denied {
    /// The reason, for people.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "authentication required: send Authorization: Bearer <token>",
            Denied::NotBearer => "the Authorization header is not a Bearer token",
            Denied::Invalid => "the bearer token is not valid",
        }
    }

    /// The RFC 6750 `error` of the challenge, if any.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Denied::Missing => None,
            Denied::NotBearer => Some("invalid_request"),
            Denied::Invalid => Some("invalid_token"),
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a token
/// matched. (Lengths can still differ in time; the token's length is not the secret.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Passes when `headers` carry `Authorization: Bearer <t>` with `t` one of `tokens`. Every
/// token is compared, whichever matches. (With no tokens nothing passes: callers decide what
/// an empty list means.)
pub fn check_bearer(tokens: &[Vec<u8>], headers: &HeaderMap) -> Result<(), Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Denied::Missing)?
        .as_bytes();
    let presented = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(Denied::NotBearer),
    };
    let matched = tokens
        .iter()
        .fold(false, |ok, t| ok | constant_time_eq(t, presented));
    if matched {
        Ok(())
    } else {
        Err(Denied::Invalid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_a_listed_bearer_token_passes() {
        let tokens = vec![b"alpha".to_vec(), b"beta-2".to_vec()];
        assert_eq!(check_bearer(&tokens, &with(Some("Bearer beta-2"))), Ok(()));
        assert_eq!(check_bearer(&tokens, &with(Some("bearer  alpha "))), Ok(()));
        assert_eq!(check_bearer(&tokens, &with(None)), Err(Denied::Missing));
        assert_eq!(
            check_bearer(&tokens, &with(Some("Basic YWxwaGE="))),
            Err(Denied::NotBearer)
        );
        for bad in ["Bearer alph", "Bearer alphaa", "Bearer "] {
            assert_eq!(
                check_bearer(&tokens, &with(Some(bad))),
                Err(Denied::Invalid)
            );
        }
        assert_eq!(
            check_bearer(&[], &with(Some("Bearer alpha"))),
            Err(Denied::Invalid)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
