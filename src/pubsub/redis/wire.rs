//! How a publication travels in a Redis message: a fixed binary header, then the payload as
//! is (Redis strings are binary-safe, so no escaping).
//!
//! ```text
//! 0      1        2     3          11        19          27
//! | 'W' | ver=1  | kind | origin   | seq     | sent_us   | payload...
//!                         u64 BE     u64 BE    u64 BE
//! ```
//! `origin` is the publishing process's random id (a process drops its own echo), `seq` counts
//! that process's publications on the topic (receivers count gaps), `sent_us` is its wall
//! clock in microseconds since the Unix epoch (receivers measure lag).

use crate::pubsub::Kind;

const MAGIC: u8 = b'W';
const VERSION: u8 = 1;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 27;

/// A decoded message, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// The publishing process.
    pub(crate) origin: u64,
    /// Its sequence number on this topic.
    pub(crate) seq: u64,
    /// When it was handed to Redis, in microseconds since the Unix epoch.
    pub(crate) sent_us: u64,
    /// Text or binary.
    pub(crate) kind: Kind,
    /// The message.
    pub(crate) payload: &'a [u8],
}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, kind_byte(self.kind)]);
        out.extend_from_slice(&self.origin.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// Decodes a message; `None` when it is not one of ours (wrong magic, version or kind, or
/// too short).
pub(crate) fn decode(bytes: &[u8]) -> Option<Frame<'_>> {
    let (header, payload) = bytes.split_at_checked(HEADER_LEN)?;
    let (&[magic, version, kind], rest) = header.split_first_chunk::<3>()?;
    if magic != MAGIC || version != VERSION {
        return None;
    }
    let kind = match kind {
        0 => Kind::Text,
        1 => Kind::Binary,
        _ => return None,
    };
    let (origin, rest) = rest.split_first_chunk::<8>()?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (sent_us, _) = rest.split_first_chunk::<8>()?;
    Some(Frame {
        origin: u64::from_be_bytes(*origin),
        seq: u64::from_be_bytes(*seq),
        sent_us: u64::from_be_bytes(*sent_us),
        kind,
        payload,
    })
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Text => 0,
        Kind::Binary => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_payload() {
        for payload in [
            &b""[..],
            b"hello",
            &[0, 255, b'\r', b'\n', 0x80],
            &[7; 70_000],
        ] {
            let frame = Frame {
                origin: 0xdead_beef_0123_4567,
                seq: 42,
                sent_us: 1_700_000_000_000_000,
                kind: Kind::Binary,
                payload,
            };
            let mut out = Vec::new();
            frame.encode(&mut out);
            assert_eq!(out.len(), HEADER_LEN + payload.len());
            assert_eq!(decode(&out), Some(frame));
        }
    }

    #[test]
    fn rejects_foreign_messages() {
        assert_eq!(decode(b"hello from redis-cli, not wsloop"), None);
        assert_eq!(decode(b"W\x01\x00short"), None);
        let mut out = Vec::new();
        Frame {
            origin: 1,
            seq: 1,
            sent_us: 1,
            kind: Kind::Text,
            payload: b"x",
        }
        .encode(&mut out);
        out[2] = 9;
        assert_eq!(decode(&out), None);
    }
}
