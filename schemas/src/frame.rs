//! The Confluent wire format: magic byte `0`, a 4-byte big-endian schema id, then the Avro body.
//!
//! The length and the magic byte are checked before anything else reads the payload, so a
//! truncated or garbage record is a classified [`FrameError`], never a panic or an
//! out-of-bounds read.

use crate::error::FrameError;

/// The first byte of every Confluent-framed record.
pub const MAGIC: u8 = 0;
/// Bytes before the Avro body: magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Splits a framed payload into its schema id and Avro body.
pub fn split(payload: Option<&[u8]>) -> Result<(u32, &[u8]), FrameError> {
    let bytes = payload.ok_or(FrameError::Missing)?;
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated { len: bytes.len() });
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    if header[0] != MAGIC {
        return Err(FrameError::BadMagic { found: header[0] });
    }
    let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Ok((id, body))
}

/// Reads only the schema id of a framed payload, for routing and inspection.
pub fn schema_id(payload: Option<&[u8]>) -> Result<u32, FrameError> {
    split(payload).map(|(id, _)| id)
}

/// Starts a framed payload for `id`; the caller appends the Avro body.
pub fn start(id: u32, body_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_hint);
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Frames an already encoded Avro body.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = start(id, body.len());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        assert_eq!(split(Some(&framed)), Ok((0x0102_0304, &b"body"[..])));
    }

    #[test]
    fn empty_body_is_a_valid_frame() {
        // A record with no fields encodes to zero bytes; the frame is still well formed.
        assert_eq!(split(Some(&[0, 0, 0, 0, 7])), Ok((7, &[][..])));
    }

    #[test]
    fn short_missing_and_bad_magic_are_classified() {
        assert_eq!(split(None), Err(FrameError::Missing));
        assert_eq!(split(Some(&[])), Err(FrameError::Truncated { len: 0 }));
        assert_eq!(
            split(Some(&[0, 0, 1])),
            Err(FrameError::Truncated { len: 3 })
        );
        assert_eq!(
            split(Some(b"{\"json\":1}")),
            Err(FrameError::BadMagic { found: b'{' })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match split(Some(&bytes)) {
                Ok((id, body)) => {
                    prop_assert!(bytes.len() >= HEADER_LEN);
                    prop_assert_eq!(bytes[0], MAGIC);
                    prop_assert_eq!(id.to_be_bytes(), [bytes[1], bytes[2], bytes[3], bytes[4]]);
                    prop_assert_eq!(body, &bytes[HEADER_LEN..]);
                }
                Err(FrameError::Truncated { len }) => prop_assert!(len < HEADER_LEN && len == bytes.len()),
                Err(FrameError::BadMagic { found }) => prop_assert!(found != MAGIC && found == bytes[0]),
                Err(FrameError::Missing) => prop_assert!(false, "Some(..) is never missing"),
            }
        }

        #[test]
        fn framing_round_trips(id in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let framed = frame(id, &body);
            prop_assert_eq!(split(Some(&framed)), Ok((id, &body[..])));
        }
    }
}
