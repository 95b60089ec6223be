//! The handoff's first exchange, as bytes (over [`super::wire`]): each side says which
//! versions it speaks before anything else is sent.
//!
//! The new process writes [`HELLO`] on the socketpair it inherited, the old one answers with
//! its own [`HELLO`] or with [`REFUSE`] and a reason. A different handoff protocol, a
//! different connection-state format ([`wsloop_proto::conn::STATE_VERSION`]) or another
//! worker count is refused here, before a descriptor moves: no connection is ever handed to
//! a process that could misread it.

use wsloop_proto::codec::{CodecError, Reader, Writer};

/// Version of this protocol; both processes must speak the same one.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// First bytes of a hello.
const MAGIC: &[u8; 8] = b"wsloopUP";

/// Message kind: a [`Hello`].
pub(crate) const HELLO: u8 = 1;
/// Message kind: the hello was refused (the body says why, as UTF-8).
pub(crate) const REFUSE: u8 = 2;

/// What each side says about itself first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) state: u8,
    pub(crate) workers: u32,
}

impl Hello {
    /// This build's hello for `workers` workers.
    pub(crate) fn ours(workers: usize) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            state: wsloop_proto::conn::STATE_VERSION,
            workers: u32::try_from(workers).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut w = Writer::new(&mut out);
        w.u32(self.protocol);
        w.u8(self.state);
        w.u32(self.workers);
        out
    }

    /// # Errors
    /// Not a wsloop hello, or truncated or trailing bytes.
    pub(crate) fn decode(body: &[u8]) -> Result<Hello, CodecError> {
        let mut r = Reader::new(body);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(CodecError::Invalid("not a wsloop handoff"));
        }
        let hello = Hello {
            protocol: r.u32()?,
            state: r.u8()?,
            workers: r.u32()?,
        };
        r.finish()?;
        Ok(hello)
    }

    /// Why `theirs` cannot take over from (or be taken over by) `self`, if it cannot.
    pub(crate) fn mismatch(&self, theirs: &Hello) -> Option<String> {
        if theirs.protocol != self.protocol || theirs.state != self.state {
            Some(format!(
                "handoff protocol {} / state {} against ours {} / {}",
                theirs.protocol, theirs.state, self.protocol, self.state
            ))
        } else if theirs.workers != self.workers {
            Some(format!(
                "{} workers against our {}",
                theirs.workers, self.workers
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_match_only_the_same_versions_and_workers() {
        let ours = Hello::ours(2);
        assert_eq!(Hello::decode(&ours.encode()), Ok(ours));
        assert_eq!(ours.mismatch(&ours), None);
        assert!(ours.mismatch(&Hello::ours(3)).is_some());
        for theirs in [
            Hello {
                protocol: PROTOCOL_VERSION + 1,
                ..ours
            },
            Hello {
                state: ours.state.wrapping_add(1),
                ..ours
            },
        ] {
            assert!(ours.mismatch(&theirs).is_some(), "{theirs:?}");
        }
    }

    #[test]
    fn anything_but_a_whole_hello_is_an_error() {
        let bytes = Hello::ours(1).encode();
        for cut in 0..bytes.len() {
            assert!(Hello::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Hello::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
        assert!(Hello::decode(b"notwsloop\x01\0\0\0\0\0\0\0\0").is_err());
    }
}
