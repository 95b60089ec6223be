//! What a connection reports: messages (returned by `handle_input`, borrowing the input) and
//! events (queued, owned, from `poll_event`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use crate::handshake::HandshakeError;
use crate::proxy::{ProxyError, ProxyHeader};
use crate::time::Tick;
use crate::{CloseCode, MessageKind, ProtocolError};

/// A complete message from the peer, borrowed: from the input when it arrived whole in one
/// read (zero copy), else from the caller's scratch buffer (assembled across reads or
/// fragments, inflated, or decoded from held-back input). Text is valid UTF-8 by
/// construction: it was validated once, by making this `&str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }
}

/// What one `handle_input` call did.
#[derive(Debug)]
#[must_use]
pub struct Input<'a> {
    /// Bytes of the input consumed; the caller passes the rest next.
    pub consumed: usize,
    /// The message decoding stopped at, if any.
    pub message: Option<Message<'a>>,
}

impl Input<'_> {
    /// Everything consumed, nothing to hand out.
    pub(super) fn all(len: usize) -> Input<'static> {
        Input {
            consumed: len,
            message: None,
        }
    }
}

/// Something the caller must know about, other than a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request head. Answer it with [`accept`](super::Connection::accept) (an
    /// upgrade), [`respond`](super::Connection::respond) or
    /// [`reject`](super::Connection::reject); the next pipelined request is not looked at
    /// until then.
    Request(Request),
    /// The request head broke a rule the connection checks itself (it grew past
    /// `max_head`: 431): answer with [`reject`](super::Connection::reject) and the error's
    /// [`status`](HandshakeError::status).
    BadRequest(HandshakeError),
    /// The PROXY header was refused (the outcome of parsing it; an untrusted or missing one
    /// is refused too). The connection is finished without a word, as the PROXY protocol
    /// says.
    ProxyRefused(Result<ProxyHeader, ProxyError>),
    /// No complete request head within the handshake timeout: the connection is finished.
    HandshakeTimeout,
    /// The peer went over its message or byte rate: reading pauses until `resume` (with the
    /// close policy, `None`: it is being closed with 1008).
    RateLimited {
        /// When reading resumes, if it does.
        resume: Option<Tick>,
    },
    /// The round-trip time of a keepalive ping, from the peer's pong.
    Rtt(Duration),
    /// The connection is closed for the application: sent exactly once for every accepted
    /// connection, and nothing after it.
    Closed(Closed),
}

/// A request head, owned so that the caller can parse borrowed headers from it while it
/// calls the application and then answers through the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The head through its blank line (parse with
    /// [`RequestHead::parse`](crate::handshake::RequestHead::parse)).
    pub head: Vec<u8>,
    /// The client address a trusted PROXY header gave, if any.
    pub client: Option<SocketAddr>,
}

/// How an accepted connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// What the application is told: the peer's code (1005 for an empty close frame), else
    /// the code we closed with, else 1006 when the connection ended without a close frame.
    pub code: CloseCode,
    /// The reason in the peer's close frame (empty otherwise).
    pub reason: String,
    /// Who or what started the end.
    pub initiator: Initiator,
    /// The code of the close frame we sent, if we sent one with a code.
    pub sent: Option<CloseCode>,
    /// The code of the peer's close frame (1005 when it had none), if one arrived.
    pub received: Option<CloseCode>,
}

impl Closed {
    /// Ended after our close frame with `code`, without the peer's answer.
    pub(super) fn ours(code: CloseCode, initiator: Initiator) -> Closed {
        Closed {
            code,
            reason: String::new(),
            initiator,
            sent: Some(code),
            received: None,
        }
    }

    /// Ended without any close frame (1006).
    pub(super) fn abnormal(initiator: Initiator) -> Closed {
        Closed {
            code: CloseCode::ABNORMAL,
            reason: String::new(),
            initiator,
            sent: None,
            received: None,
        }
    }
}

/// Who or what started the end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The peer's close frame.
    Peer,
    /// Our close frame: the application, a shutdown, the rate policy or the memory budget
    /// (whether the peer answered it or not).
    Local,
    /// The peer broke the protocol; we failed the connection (§7.1.7).
    Error(ProtocolError),
    /// The peer was silent past the idle limit; dropped without a close frame.
    Idle,
    /// The peer's FIN or a socket or TLS error, without a close handshake.
    Transport,
}

/// Events waiting for `poll_event`. Boxed only while non-empty: an idle connection pays
/// 8 bytes for it.
#[derive(Debug, Default)]
#[allow(
    clippy::box_collection,
    reason = "8 bytes in every connection instead of the 32 of an empty VecDeque"
)]
pub(super) struct Events(Option<Box<VecDeque<Event>>>);

impl Events {
    pub(super) fn push(&mut self, event: Event) {
        self.0.get_or_insert_with(Box::default).push_back(event);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn pop(&mut self) -> Option<Event> {
        let queue = self.0.as_mut()?;
        let event = queue.pop_front();
        if queue.is_empty() {
            self.0 = None;
        }
        event
    }

    /// Heap bytes held: the queue and the request heads in it.
    pub(super) fn memory(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| {
            let heads: usize = queue
                .iter()
                .map(|event| match event {
                    Event::Request(request) => request.head.capacity(),
                    _ => 0,
                })
                .sum();
            queue.capacity() * std::mem::size_of::<Event>() + heads
        })
    }
}
