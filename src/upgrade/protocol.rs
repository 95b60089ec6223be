//! The handoff's first exchange, as bytes (over [`super::wire`]): each side says which
//! versions it speaks before anything else is sent.
//!
//! The new process writes [`HELLO`] on the socketpair it inherited, the old one answers with
//! its own [`HELLO`] or with [`REFUSE`] and a reason. A different handoff protocol, a
//! different connection-state format ([`wsloop_proto::conn::STATE_VERSION`]) or another
//! worker count is refused here, before a descriptor moves: no connection is ever handed to
//! a process that could misread it.

use std::io;
use std::os::unix::net::UnixStream;

use wsloop_proto::codec::{CodecError, Reader, Writer};

use super::wire::{Channel, Msg};

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

/// Why the hello did not end in agreement.
#[derive(Debug)]
pub(crate) enum HelloError {
    /// The channel failed (or its read timeout passed).
    Io(io::Error),
    /// The versions differ: ours refused theirs, or theirs refused ours (the reason).
    Refused(String),
    /// The peer sent something else than a hello or a refusal.
    Malformed(&'static str),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::Io(e) => write!(f, "handoff channel: {e}"),
            HelloError::Refused(why) => write!(f, "handoff refused: {why}"),
            HelloError::Malformed(what) => write!(f, "handoff hello: {what}"),
        }
    }
}

impl std::error::Error for HelloError {}

impl From<io::Error> for HelloError {
    fn from(e: io::Error) -> HelloError {
        HelloError::Io(e)
    }
}

/// The new process's side: says hello first, then waits for the old process's answer.
///
/// # Errors
/// The old process refused (or sent a hello this process cannot agree with), or the channel
/// failed.
pub(crate) fn greet(channel: &mut Channel<UnixStream>, ours: Hello) -> Result<(), HelloError> {
    channel.send_all(HELLO, &ours.encode(), Vec::new())?;
    let answer = no_descriptors(channel.recv_one()?)?;
    match answer.kind {
        HELLO => {
            let theirs =
                Hello::decode(&answer.body).map_err(|_| HelloError::Malformed("not a hello"))?;
            ours.mismatch(&theirs)
                .map_or(Ok(()), |why| Err(HelloError::Refused(why)))
        }
        REFUSE => Err(HelloError::Refused(
            String::from_utf8_lossy(&answer.body).into_owned(),
        )),
        _ => Err(HelloError::Malformed("unexpected message")),
    }
}

/// The old process's side: reads the new process's hello and answers with its own, or with
/// [`REFUSE`] and the reason (then nothing more is sent on the channel).
///
/// # Errors
/// A mismatch or a malformed hello (both refused), or the channel failed.
pub(crate) fn answer(channel: &mut Channel<UnixStream>, ours: Hello) -> Result<(), HelloError> {
    let hello = no_descriptors(channel.recv_one()?);
    let refusal = match hello {
        Ok(msg) if msg.kind == HELLO => match Hello::decode(&msg.body) {
            Ok(theirs) => ours.mismatch(&theirs).map(HelloError::Refused),
            Err(_) => Some(HelloError::Malformed("not a hello")),
        },
        Ok(_) => Some(HelloError::Malformed("unexpected message")),
        Err(e) => Some(e),
    };
    match refusal {
        None => {
            channel.send_all(HELLO, &ours.encode(), Vec::new())?;
            Ok(())
        }
        Some(refusal) => {
            channel.send_all(REFUSE, refusal.to_string().as_bytes(), Vec::new())?;
            Err(refusal)
        }
    }
}

/// A hello carries no descriptors: one that does is not from a wsloop that speaks this
/// protocol (its descriptors close when `msg` is dropped).
fn no_descriptors(msg: Msg) -> Result<Msg, HelloError> {
    match msg.fds.is_empty() {
        true => Ok(msg),
        false => Err(HelloError::Malformed("descriptors with a hello")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `old` and `new` on the two ends of a socketpair; returns both results.
    fn hello_between(
        old: Hello,
        new: impl FnOnce(&mut Channel<UnixStream>) -> Result<(), HelloError> + Send + 'static,
    ) -> (
        Result<(), HelloError>,
        Result<(), HelloError>,
        Channel<UnixStream>,
    ) {
        let (a, b) = UnixStream::pair().unwrap();
        let newer = std::thread::spawn(move || {
            let mut channel = Channel::new(b);
            let result = new(&mut channel);
            (result, channel)
        });
        let mut channel = Channel::new(a);
        let old_result = answer(&mut channel, old);
        let (new_result, new_channel) = newer.join().unwrap();
        drop(channel);
        (old_result, new_result, new_channel)
    }

    #[test]
    fn the_same_versions_agree() {
        let (old, new, _) = hello_between(Hello::ours(1), |c| greet(c, Hello::ours(1)));
        assert!(old.is_ok() && new.is_ok(), "{old:?} {new:?}");
    }

    #[test]
    fn a_mismatch_is_refused_on_both_sides_and_nothing_follows() {
        let newer = Hello {
            protocol: PROTOCOL_VERSION + 1,
            ..Hello::ours(1)
        };
        let (old, new, mut rest) = hello_between(Hello::ours(1), move |c| greet(c, newer));
        assert!(matches!(old, Err(HelloError::Refused(_))), "{old:?}");
        match new {
            Err(HelloError::Refused(why)) => assert!(why.contains("protocol"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The old side sent its refusal and nothing else, descriptors least of all.
        assert_eq!(
            rest.recv_one().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn anything_but_a_hello_is_refused() {
        let (old, _, _) = hello_between(Hello::ours(1), |c| {
            c.send_all(HELLO, b"garbage", Vec::new())?;
            c.recv_one().map(drop).map_err(HelloError::Io)
        });
        assert!(matches!(old, Err(HelloError::Malformed(_))), "{old:?}");
        let (old, _, _) = hello_between(Hello::ours(1), |c| {
            let (x, _y) = UnixStream::pair()?;
            c.send_all(HELLO, &Hello::ours(1).encode(), vec![x.into()])?;
            c.recv_one().map(drop).map_err(HelloError::Io)
        });
        assert!(matches!(old, Err(HelloError::Malformed(_))), "{old:?}");
    }

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
