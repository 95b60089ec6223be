//! The handoff channel: framed messages over a Unix stream socket (one end of a socketpair),
//! each with the file descriptors it carries (`SCM_RIGHTS`).
//!
//! A message is `[u32 body length][u8 kind][u16 descriptor count][body]`, little-endian,
//! sent with its descriptors attached to its first byte. On a stream socket the kernel hands
//! descriptors out with (never after) the first byte of the data they were sent with, and
//! never joins two sends that carry descriptors in one receive, so the receiver keeps the
//! descriptors it got in arrival order and gives each complete message the count its header
//! names. At most [`MAX_FDS`] descriptors go in one message (the kernel's `SCM_MAX_FD`).
//!
//! [`Channel`] works on a blocking socket (the coordinators' hello, which waits with a read
//! timeout) and on a non-blocking one registered with a reactor's poll (a worker's batches):
//! what the socket does not take at once stays queued until it is writable again.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Most descriptors in one message (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;
/// Largest message body: a batch of connections with their unsent output stays far below it.
const MAX_BODY: usize = 256 << 20;
/// Header bytes: length, kind, descriptor count.
const HEADER: usize = 7;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 * 1024;

/// One message as received.
#[derive(Debug)]
pub(crate) struct Msg {
    /// What it is (each side's own numbering, see `protocol`).
    pub(crate) kind: u8,
    pub(crate) body: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// A message waiting to be sent.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent with the first byte, then dropped (closed here; the receiver holds its copies).
    fds: Vec<OwnedFd>,
}

/// A framed channel over a Unix stream socket `S`.
#[derive(Debug)]
pub(crate) struct Channel<S> {
    socket: S,
    queue: VecDeque<Outgoing>,
    /// Received bytes not yet parsed into a message.
    input: Vec<u8>,
    /// Received descriptors not yet given to a message, in arrival order.
    fds: VecDeque<OwnedFd>,
    /// Messages [`Channel::recv_one`] read past the one it returned, in order.
    ready: VecDeque<Msg>,
    /// The peer closed its end.
    eof: bool,
}

impl<S: AsFd> Channel<S> {
    pub(crate) fn new(socket: S) -> Channel<S> {
        Channel {
            socket,
            queue: VecDeque::new(),
            input: Vec::new(),
            fds: VecDeque::new(),
            ready: VecDeque::new(),
            eof: false,
        }
    }

    /// The socket (to register it with a poll).
    pub(crate) fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// Whether the peer closed its end.
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// Whether messages wait for the socket.
    #[cfg(test)]
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Queues a message with `fds` (at most [`MAX_FDS`]) and sends what the socket takes.
    ///
    /// # Errors
    /// Too many descriptors, a body over the limit, or a socket error (the channel is then
    /// broken).
    pub(crate) fn send(&mut self, kind: u8, body: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
        if fds.len() > MAX_FDS || body.len() > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handoff message too large",
            ));
        }
        let mut bytes = Vec::with_capacity(HEADER + body.len());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&(fds.len() as u16).to_le_bytes());
        bytes.extend_from_slice(body);
        self.queue.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
        });
        self.flush().map(|_| ())
    }

    /// Sends queued messages until the socket would block. Returns whether all went.
    ///
    /// # Errors
    /// A socket error other than `WouldBlock` (the channel is then broken).
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        while let Some(front) = self.queue.front_mut() {
            let rest = front.bytes.get(front.sent..).unwrap_or_default();
            let fds: Vec<_> = match front.sent {
                0 => front.fds.iter().map(AsFd::as_fd).collect(),
                _ => Vec::new(),
            };
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other(
                    "descriptors do not fit the control buffer",
                ));
            }
            match sendmsg(
                &self.socket,
                &[IoSlice::new(rest)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    front.sent += n;
                    // The descriptors went with the first byte; ours close now.
                    front.fds.clear();
                    if front.sent >= front.bytes.len() {
                        self.queue.pop_front();
                    }
                }
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Reads what the socket has (until it would block, or once on a blocking socket) and
    /// appends every complete message to `out`. Sets EOF when the peer closed.
    ///
    /// # Errors
    /// A socket error, a malformed header, or descriptors missing for a message.
    pub(crate) fn receive(&mut self, out: &mut Vec<Msg>, blocking: bool) -> io::Result<()> {
        // Messages an earlier `recv_one` read past the one it returned come first.
        out.extend(self.ready.drain(..));
        loop {
            let start = self.input.len();
            self.input.resize(start + READ_CHUNK, 0);
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(
                    self.input.get_mut(start..).unwrap_or_default(),
                )],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            let got = match got {
                Ok(got) => got,
                Err(e) => {
                    self.input.truncate(start);
                    match e {
                        Errno::INTR => continue,
                        Errno::AGAIN => break,
                        e => return Err(e.into()),
                    }
                }
            };
            self.input.truncate(start + got.bytes);
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(io::Error::other("handoff descriptors were truncated"));
            }
            if got.bytes == 0 {
                self.eof = true;
                break;
            }
            if blocking {
                break;
            }
        }
        self.parse(out)
    }

    /// Takes every complete message off the front of the input.
    fn parse(&mut self, out: &mut Vec<Msg>) -> io::Result<()> {
        let mut at = 0;
        while let Some(header) = self.input.get(at..at + HEADER) {
            let [l0, l1, l2, l3, kind, f0, f1] = <[u8; HEADER]>::try_from(header)
                .map_err(|_| io::Error::other("short handoff header"))?;
            let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
            let nfds = usize::from(u16::from_le_bytes([f0, f1]));
            if len > MAX_BODY || nfds > MAX_FDS {
                return Err(io::Error::other("malformed handoff message"));
            }
            let Some(body) = self.input.get(at + HEADER..at + HEADER + len) else {
                break;
            };
            if self.fds.len() < nfds {
                return Err(io::Error::other("handoff message without its descriptors"));
            }
            out.push(Msg {
                kind,
                body: body.to_vec(),
                fds: self.fds.drain(..nfds).collect(),
            });
            at += HEADER + len;
        }
        self.input.drain(..at);
        if self.input.capacity() > 4 * READ_CHUNK && self.input.len() < READ_CHUNK {
            self.input.shrink_to(READ_CHUNK);
        }
        Ok(())
    }
}

impl Channel<std::os::unix::net::UnixStream> {
    /// Sends one message on a blocking socket, completely.
    ///
    /// # Errors
    /// A socket error.
    pub(crate) fn send_all(&mut self, kind: u8, body: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
        self.send(kind, body, fds)?;
        while !self.flush()? {}
        Ok(())
    }

    /// Waits for the next message on a blocking socket (within its read timeout); messages
    /// that arrived with it are kept, in order, for the next calls.
    ///
    /// # Errors
    /// A socket error, the timeout, or the peer's end closing first.
    pub(crate) fn recv_one(&mut self) -> io::Result<Msg> {
        let mut got = Vec::new();
        loop {
            if let Some(msg) = self.ready.pop_front() {
                return Ok(msg);
            }
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let before = self.input.len();
            self.receive(&mut got, true)?;
            if got.is_empty() && !self.eof && self.input.len() == before {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.ready.extend(got.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn messages_carry_their_descriptors_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b);
        let (p1, mut q1) = UnixStream::pair().unwrap();
        let (p2, mut q2) = UnixStream::pair().unwrap();
        // From another thread: the middle message is larger than the socket's buffer.
        let sender = std::thread::spawn(move || {
            let mut tx = Channel::new(a);
            tx.send_all(1, b"first", vec![OwnedFd::from(p1)]).unwrap();
            tx.send_all(2, &[7; 3_000_000], Vec::new()).unwrap();
            tx.send_all(3, b"", vec![OwnedFd::from(p2)]).unwrap();
        });
        let first = rx.recv_one().unwrap();
        assert_eq!(
            (first.kind, &first.body[..], first.fds.len()),
            (1, &b"first"[..], 1)
        );
        let second = rx.recv_one().unwrap();
        assert_eq!(
            (second.kind, second.body.len(), second.fds.len()),
            (2, 3_000_000, 0)
        );
        assert!(second.body.iter().all(|&b| b == 7));
        let third = rx.recv_one().unwrap();
        assert_eq!((third.kind, third.fds.len()), (3, 1));
        sender.join().unwrap();
        // Each descriptor is the socket that was sent, in order.
        for (fds, peer, byte) in [(first.fds, &mut q1, b'x'), (third.fds, &mut q2, b'y')] {
            let mut moved = UnixStream::from(fds.into_iter().next().unwrap());
            moved.write_all(&[byte]).unwrap();
            let mut got = [0u8];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got[0], byte);
        }
        assert_eq!(
            rx.recv_one().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_non_blocking_sender_keeps_what_the_socket_refuses_until_it_is_writable() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut tx = Channel::new(a);
        tx.send(9, &[1; 3_000_000], Vec::new()).unwrap();
        assert!(tx.has_queued(), "more than the socket's buffer");
        let mut rx = Channel::new(b);
        let mut got = Vec::new();
        while got.is_empty() {
            rx.receive(&mut got, true).unwrap();
            tx.flush().unwrap();
        }
        assert!(!tx.has_queued());
        assert_eq!((got[0].kind, got[0].body.len()), (9, 3_000_000));
    }

    #[test]
    fn a_malformed_header_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b);
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0]).unwrap();
        assert!(rx.recv_one().is_err());
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b);
        a.write_all(&[0, 0, 0, 0, 1, 5, 0]).unwrap();
        assert!(rx.recv_one().is_err(), "descriptors announced, none sent");
    }
}
