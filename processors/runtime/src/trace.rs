//! W3C trace context and correlation ids carried in Kafka headers.
//!
//! Every record is processed inside a span that carries the `traceparent` taken from its
//! headers (or a new trace when it has none). Every output gets a `traceparent` of a child span
//! of that trace, and the correlation id of its input, so a flow can be followed across topics.

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The header with the id shared by every message of one business flow.
pub const CORRELATION_ID: &str = "correlation-id";

/// A parsed W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id, never all zero.
    pub trace_id: [u8; 16],
    /// 8-byte id of the span that sent the record, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The value of a lowercase hex digit, or 0xff: one table look-up per digit on the hot path.
const NIBBLE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        if (hi | lo) & 0xf0 != 0 {
            return None;
        }
        *o = (hi << 4) | lo;
    }
    Some(out)
}

/// Writes `bytes` as lowercase hex into `out`, which is twice as long.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 0xf) as usize];
    }
}

fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` when it is not a valid version-00 value.
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        // 00-<32 hex>-<16 hex>-<2 hex>
        if value.len() != 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        if &value[..2] != b"00" {
            return None;
        }
        let trace_id = parse_hex::<16>(&value[3..35])?;
        let span_id = parse_hex::<8>(&value[36..52])?;
        let [flags] = parse_hex::<1>(&value[53..55])?;
        if trace_id.iter().all(|b| *b == 0) || span_id.iter().all(|b| *b == 0) {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Starts a new, sampled trace.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: nonzero_random(),
            span_id: nonzero_random(),
            flags: 1,
        }
    }

    /// A new span in the same trace, for the records this one causes.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero_random(),
            flags: self.flags,
        }
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        String::from_utf8(self.header_bytes().to_vec()).unwrap_or_default()
    }

    /// The header value's bytes, written without allocating.
    pub fn header_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    /// The trace id in hex, for logs.
    pub fn trace_id_hex(&self) -> String {
        hex_string(&self.trace_id)
    }

    /// The span id in hex, for logs.
    pub fn span_id_hex(&self) -> String {
        hex_string(&self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tc = TraceContext::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(tc.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(tc.flags, 1);
        assert_eq!(tc.to_header(), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let tc = TraceContext::parse(EXAMPLE.as_bytes()).unwrap();
        let child = tc.child();
        assert_eq!(child.trace_id, tc.trace_id);
        assert_ne!(child.span_id, tc.span_id);
        assert_eq!(
            TraceContext::parse(child.to_header().as_bytes()),
            Some(child)
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(tc) = TraceContext::parse(&bytes) {
                let header = tc.to_header();
                prop_assert_eq!(header.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn roots_round_trip(_n in 0..100u32) {
            let root = TraceContext::new_root();
            prop_assert_eq!(TraceContext::parse(root.to_header().as_bytes()), Some(root));
        }
    }
}
