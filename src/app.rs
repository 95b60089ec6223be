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

/// An owned message, for sending from other threads through a [`crate::ServerHandle`]
/// (whose methods take anything that converts into one: `"text"`, a `String`, a `Vec<u8>`).
///
/// ```
/// use wsloop::OwnedMessage;
///
/// assert_eq!(OwnedMessage::from("hi"), OwnedMessage::Text("hi".to_owned()));
/// assert_eq!(OwnedMessage::from(format!("{}", 42)), OwnedMessage::Text("42".to_owned()));
/// assert_eq!(OwnedMessage::from(vec![1, 2]), OwnedMessage::Binary(vec![1, 2]));
/// ```
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

/// A text message.
impl From<&str> for OwnedMessage {
    fn from(text: &str) -> OwnedMessage {
        OwnedMessage::Text(text.to_owned())
    }
}

/// A text message.
impl From<String> for OwnedMessage {
    fn from(text: String) -> OwnedMessage {
        OwnedMessage::Text(text)
    }
}

/// A binary message.
impl From<Vec<u8>> for OwnedMessage {
    fn from(bytes: Vec<u8>) -> OwnedMessage {
        OwnedMessage::Binary(bytes)
    }
}

/// The upgrade request, as the application sees it in [`Handler::on_open`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request target as received, e.g. `/chat?room=1` ([`Request::path`] and
    /// [`Request::query`] split it).
    pub target: &'a str,
    /// The request target: the old name of [`Request::target`].
    #[deprecated(
        since = "0.1.0",
        note = "the whole request target: use `target`, or `path()` for the path without the query"
    )]
    pub path: &'a str,
    /// Every header line, in order.
    pub headers: &'a [Header<'a>],
    /// The client's address: the TCP peer, or the address a trusted proxy gave (see
    /// [`Config::trusted_proxies`](crate::Config::trusted_proxies)); the same as
    /// [`Context::peer`] says for as long as the connection lasts.
    pub peer: SocketAddr,
}

impl<'a> Request<'a> {
    /// The request that `target`, `headers` and `peer` make.
    #[allow(deprecated)] // Fills the old name too, for the applications that still read it.
    pub(crate) fn new(target: &'a str, headers: &'a [Header<'a>], peer: SocketAddr) -> Self {
        Request {
            target,
            path: target,
            headers,
            peer,
        }
    }

    /// The target's path, without the query: `/chat` for `/chat?room=1`.
    pub fn path(&self) -> &'a str {
        split_target(self.target).0
    }

    /// The target's query, after the `?` and without it: `Some("room=1")` for
    /// `/chat?room=1`, `None` without a `?`.
    pub fn query(&self) -> Option<&'a str> {
        split_target(self.target).1
    }

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

    /// The subprotocol to select: the first of the client's offers that `supported` lists
    /// (RFC 6455 §4.2.2: the server picks one of the values the client sent), or `None`, and
    /// then the answer names none. Names compare exactly, as the RFC's tokens do.
    ///
    /// ```
    /// # use wsloop::{ConnId, Context, Decision, Request};
    /// fn on_open(ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
    ///     let protocol = req.select_protocol(&["chat.v2", "chat.v1"]);
    ///     Decision::Accept(protocol.map(str::to_owned))
    /// }
    /// ```
    pub fn select_protocol<S: AsRef<str>>(&self, supported: &[S]) -> Option<&'a str> {
        self.protocols()
            .find(|offer| supported.iter().any(|s| s.as_ref() == *offer))
    }
}

/// A request target split at its first `?` into the path and the query (RFC 3986 §3.4: the
/// query is what follows the first question mark).
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
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
///
/// # On the reactor's thread
/// Every callback runs on the thread of the reactor that owns the connection, inside its
/// loop, one at a time: while a callback runs, no connection of that reactor is read, written
/// or timed. So a callback must not block — no blocking I/O, no waiting on a lock another
/// thread holds for long, no sleeping, no long computation: hand such work to another
/// thread, which answers through a [`ServerHandle`](crate::ServerHandle). In exchange the
/// handler needs neither `Send` nor `Sync` and no locks of its own: it never leaves that
/// thread. (With [`Workers`](crate::Workers), each worker has its own handler.)
///
/// # Order
/// For each connection: `on_open` once; when it accepts, `on_message` for each message in
/// the order they arrived, `on_drain` whenever it applies, then `on_close` exactly once.
pub trait Handler {
    /// An upgrade request passed validation; accept it (optionally picking a subprotocol, see
    /// [`Request::select_protocol`]) or reject it with an HTTP status. The default accepts
    /// without a subprotocol.
    ///
    /// What `ctx` sends to `id` here goes out right after the `101`, before anything else,
    /// and is dropped if the request is rejected ([`Context::send`]).
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
        let _ = (ctx, id, req);
        Decision::Accept(None)
    }

    /// A complete message arrived (borrowed: copy what must outlive the call).
    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>);

    /// The connection ended: with the peer's close code and reason, the code we closed with,
    /// or 1006 when TCP ended without a close handshake. Called once per accepted connection;
    /// [`Context::peer`] and [`Context::path`] still answer for `id` during the call, and it
    /// has already left its rooms.
    fn on_close(&mut self, ctx: &mut Context<'_>, id: ConnId, code: CloseCode, reason: &str) {
        let _ = (ctx, id, code, reason);
    }

    /// The connection's send queue went back down to its low-water mark, half of
    /// [`Config::max_backpressure`](crate::Config::max_backpressure) (`--max-backpressure`
    /// in the binary), after reading from it had stopped because the queue was over the
    /// high-water mark, `max_backpressure` itself. Both marks are on the memory the queue
    /// holds: a large message sent back by move counts whole until its last byte is written.
    /// Reading resumes with it; a good moment to send what was held back
    /// ([`Context::buffered_amount`] says how many bytes are still queued).
    ///
    /// It runs after the loop turn's writes, once every connection's output of the turn has
    /// been written: what it sends goes out with the next turn's writes.
    fn on_drain(&mut self, ctx: &mut Context<'_>, id: ConnId) {
        let _ = (ctx, id);
    }

    /// Connection `id` moves to a new process (a `SIGUSR2` upgrade, see [`crate::upgrade`]):
    /// return what the new process's application needs to carry on with it (its
    /// [`Handler::import`] gets these bytes) and forget it here — [`Handler::on_close`] is
    /// not called for a connection that moved. Its path, peer and rooms still answer during
    /// the call. The default keeps nothing.
    fn export(&mut self, ctx: &mut Context<'_>, id: ConnId) -> Vec<u8> {
        let _ = (ctx, id);
        Vec::new()
    }

    /// Connection `id` arrived from an old process, open and in its rooms already, with what
    /// that process's application exported for it (`state`). Also called in the old process,
    /// with its own export, when the new process did not take the connection after all. The
    /// default ignores `state`.
    fn import(&mut self, ctx: &mut Context<'_>, id: ConnId, state: &[u8]) {
        let _ = (ctx, id, state);
    }
}

/// What a callback can do: send, close, publish, inspect.
///
/// What it sends is corked until the end of the loop turn and then written, one vectored
/// write per connection. It acts on the reactor that runs the callback: with
/// [`Workers`](crate::Workers), `send`, `close` and `broadcast` reach only that worker's
/// connections, while `publish` reaches every worker's subscribers (and, with Redis, other
/// processes').
pub struct Context<'a> {
    pub(crate) core: &'a mut Core,
}

impl Context<'_> {
    /// Sends a message to a connection. Returns false if it is not open (closed, closing, or
    /// never existed).
    ///
    /// From [`Handler::on_open`] it reaches the connection being decided too: what is sent
    /// to it then goes out right after the `101 Switching Protocols`, ahead of anything else,
    /// and is dropped if the upgrade is rejected. (So does a publication to a room it was
    /// subscribed to in `on_open`.)
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

    /// The client's address as the server decided it at the upgrade, the same as
    /// [`Request::peer`] said: the TCP peer, or the address a trusted PROXY or forwarding
    /// header gave. `None` unless `id` was upgraded and is still there (it is until
    /// [`Handler::on_close`] returns, so `on_close` can ask too).
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.core.peer_of(id)
    }

    /// The path `id` was upgraded on, without the query ([`Request::path`]). `None` as for
    /// [`Context::peer`].
    pub fn path(&self, id: ConnId) -> Option<&str> {
        self.core.path_of(id)
    }

    /// The rooms with at least one subscriber, in no particular order. With [`Workers`], the
    /// rooms of this worker's connections.
    ///
    /// [`Workers`]: crate::Workers
    pub fn rooms(&self) -> impl Iterator<Item = &str> + '_ {
        self.core.rooms.iter().map(|(name, _)| name)
    }

    /// How many connections subscribe to `room` (0 when none does). With [`Workers`], this
    /// worker's connections.
    ///
    /// [`Workers`]: crate::Workers
    pub fn subscribers(&self, room: &str) -> usize {
        self.core.rooms.members(room).len()
    }

    /// Sets what publications to `topic` do to a subscriber over its send-queue limit
    /// (otherwise the server's `--slow-consumer` default).
    pub fn set_room_policy(&mut self, topic: &str, policy: RoomPolicy) {
        self.core.rooms.set_policy(topic, policy);
    }

    /// Publishes to every subscriber of `topic`: the frame is encoded once per encoding and
    /// shared (plain, or compressed per window size); a subscriber whose permessage-deflate
    /// keeps its context (`--deflate-context-takeover`) gets its own compressed frame.
    /// Returns how many subscribers it was queued for (0 in a process taking over from an
    /// old one during a `SIGUSR2` upgrade: there it goes through the old process first, see
    /// [`crate::upgrade`]).
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

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn a_target_splits_at_its_first_question_mark() {
        assert_eq!(split_target("/chat"), ("/chat", None));
        assert_eq!(split_target("/chat?room=1"), ("/chat", Some("room=1")));
        assert_eq!(split_target("/a?b?c"), ("/a", Some("b?c")));
        assert_eq!(split_target("/?"), ("/", Some("")));
    }
}
