//! The application's side: the [`Handler`] callbacks and the [`Context`] they act through.
//!
//! Callbacks run after parsing, never inside it: a connection decodes a frame, then the
//! reactor hands the finished message to the handler. Messages are borrowed from the
//! reactor's read buffer when they arrived in one piece. Anything sent from a callback is
//! corked until the end of the loop turn and written then, one vectored write per connection
//! (more only for a very long list of frames, or when the socket takes part and then more).

use std::fmt;
use std::net::SocketAddr;

use crate::protocol::handshake::Header;
use crate::protocol::CloseCode;

use crate::pubsub::rooms::RoomPolicy;
use crate::reactor::Core;
use crate::stats::Stats;

/// A connection's identity: its slab slot plus a serial, so an id kept after the connection
/// closed never reaches a newer connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) serial: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.key, self.serial)
    }
}

/// A complete message, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Text (valid UTF-8).
    Text(&'a str),
    /// Binary.
    Binary(&'a [u8]),
}

impl Message<'_> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// An owned message, for sending from other threads through a [`crate::ServerHandle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedMessage {
    /// Text.
    Text(String),
    /// Binary.
    Binary(Vec<u8>),
}

impl OwnedMessage {
    /// Borrows it as a [`Message`].
    pub fn as_message(&self) -> Message<'_> {
        match self {
            OwnedMessage::Text(t) => Message::Text(t),
            OwnedMessage::Binary(b) => Message::Binary(b),
        }
    }
}

/// The upgrade request, as the application sees it in [`Handler::on_open`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request target, e.g. `/chat?room=1`.
    pub path: &'a str,
    /// Every header line, in order.
    pub headers: &'a [Header<'a>],
    /// The peer's address.
    pub peer: SocketAddr,
}

impl<'a> Request<'a> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|h| h.value.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
}

/// The application's answer to an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept, optionally selecting one of the offered subprotocols.
    Accept(Option<String>),
    /// Refuse with this HTTP status (e.g. 403, 404).
    Reject(u16),
}

/// Application callbacks. Only `on_message` is required.
pub trait Handler {
    /// An upgrade request passed validation; accept it (optionally picking a subprotocol) or
    /// reject it with an HTTP status. The default accepts without a subprotocol.
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
        let _ = (ctx, id, req);
        Decision::Accept(None)
    }

    /// A complete message arrived.
    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>);

    /// The connection ended: with the peer's close code and reason, the code we closed with,
    /// or 1006 when TCP ended without a close handshake. Called once per accepted connection.
    fn on_close(&mut self, ctx: &mut Context<'_>, id: ConnId, code: CloseCode, reason: &str) {
        let _ = (ctx, id, code, reason);
    }

    /// The connection's send buffer went back under its low-water mark after being over the
    /// high-water mark.
    fn on_drain(&mut self, ctx: &mut Context<'_>, id: ConnId) {
        let _ = (ctx, id);
    }
}

/// What a callback can do: send, close, publish, inspect.
pub struct Context<'a> {
    pub(crate) core: &'a mut Core,
}

impl Context<'_> {
    /// Sends a message to a connection. Returns false if it is not open (closed, closing, or
    /// never existed).
    pub fn send(&mut self, to: ConnId, msg: Message<'_>) -> bool {
        self.core.send_message(to, msg)
    }

    /// Starts the close handshake with `code` and `reason` (cut to 123 bytes).
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.core.close_conn(id, code, reason);
    }

    /// Bytes queued for `id` and not yet accepted by its socket (`None` if it is gone).
    pub fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        self.core.buffered_amount(id)
    }

    /// Subscribes `id` to `topic`.
    pub fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        self.core.subscribe(id, topic)
    }

    /// Unsubscribes `id` from `topic`.
    pub fn unsubscribe(&mut self, id: ConnId, topic: &str) -> bool {
        self.core.unsubscribe(id, topic)
    }

    /// Sets what publications to `topic` do to a subscriber over its send-queue limit
    /// (otherwise the server's `--slow-consumer` default).
    pub fn set_room_policy(&mut self, topic: &str, policy: RoomPolicy) {
        self.core.rooms.set_policy(topic, policy);
    }

    /// Publishes to every subscriber of `topic`: the frame is encoded once per encoding and
    /// shared (plain, or compressed per window size); a subscriber whose permessage-deflate
    /// keeps its context (`--deflate-context-takeover`) gets its own compressed frame.
    /// Returns how many subscribers it was queued for.
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> usize {
        self.core.publish(Some(topic), msg)
    }

    /// Publishes to every open connection (frames shared as by [`Context::publish`]).
    pub fn broadcast(&mut self, msg: Message<'_>) -> usize {
        self.core.publish(None, msg)
    }

    /// The server's counters (`buffered_bytes` as of the end of the last loop turn).
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&mut self) {
        self.core.begin_shutdown();
    }
}
