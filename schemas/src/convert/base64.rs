//! base64 (RFC 4648, standard alphabet, padded) for `bytes` and `fixed` in XML
//! (`xsd:base64Binary`), through the `base64` crate. Whitespace between characters is allowed,
//! as XML Schema allows it; non-canonical padding bits are refused, so two texts never decode
//! to the same bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::names::quote;

/// `bytes` as padded standard base64.
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes padded standard base64, ignoring spaces, tabs and line breaks.
pub(super) fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
        .collect();
    STANDARD
        .decode(clean)
        .map_err(|_| format!("expected base64 bytes, found text {}", quote(text)))
}
