//! The one event loop every mode runs on: a mio [`Poll`] over the run's connections, each a
//! socket and a [`ClientConn`].
//!
//! A turn ([`Driver::turn`]) polls once and serves each ready connection: it finishes a
//! pending TCP connect, reads what has arrived, hands every event of those bytes to the
//! mode's [`Handler`], lets the mode [answer](Handler::answer), and writes. There
//! is one write path ([`flush`]): try the socket, keep in the connection's queue what it
//! refuses, write the rest on the next `WRITABLE` edge. Sockets are registered once for
//! `READABLE | WRITABLE` (edge-triggered), so a connection is served whenever either edge
//! comes. A mode supplies what to send and what to measure; it never touches a socket.
//!
//! Connections are named by the caller (`id`, also the poll token), so a mode keeps its own
//! per-connection state in a plain vector indexed the same way.

use std::fmt;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::client::{ClientConn, Event, OutQueue, Shared, MAX_IOV};
use wsloop_proto::close::CloseCode;

/// How far a connection had come when it ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect, or sending the upgrade request.
    Connect,
    /// Waiting for the `101` answer.
    Upgrade,
    /// Open (or closing).
    Open,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The close handshake completed and the server closed TCP (§7.1.1).
    Closed,
    /// It failed at `stage`.
    Failed {
        /// How far it had come.
        stage: Stage,
        /// What went wrong.
        why: String,
    },
    /// Its time ran out ([`Expiry`]).
    TimedOut,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("closed by the server after the close handshake"),
            End::Failed { why, .. } => f.write_str(why),
            End::TimedOut => f.write_str("timed out"),
        }
    }
}

/// A mode's side of the loop: what to do with the events of each connection.
pub trait Handler {
    /// An event from connection `id`'s input, read at `now`. An error ends the connection.
    ///
    /// # Errors
    /// Whatever the mode finds wrong; it becomes [`End::Failed`].
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String>;

    /// After connection `id`'s input is drained: queue what the events called for (the
    /// driver writes it right after).
    fn answer(&mut self, _id: usize, _conn: &mut ClientConn, _shared: &mut Shared, _now: Instant) {}

    /// Connection `id` ended; its socket is closed right after.
    fn on_end(&mut self, id: usize, end: End);
}

/// A handler that ignores everything (closing connections at the end of a run).
#[derive(Debug, Default)]
pub struct Discard;

impl Handler for Discard {
    fn on_event(&mut self, _id: usize, _event: Event<'_>, _now: Instant) -> Result<(), String> {
        Ok(())
    }

    fn on_end(&mut self, _id: usize, _end: End) {}
}

/// When a connection's time runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// It must be open (the `101` received) by then.
    OpenBy(Instant),
    /// It must have ended by then.
    EndBy(Instant),
}

/// `read` calls that returned data and `write` calls that took some.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// Reads that returned data.
    pub reads: u64,
    /// Writes that took bytes.
    pub writes: u64,
}

/// How much to read on a readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Nothing arrived (a `WRITABLE` edge).
    No,
    /// Until a read comes back short: the socket is then drained, and whatever arrives
    /// next raises a new edge. Saves the `WouldBlock` read per burst.
    UntilShort,
    /// Until the end of the stream or `WouldBlock`: the peer's FIN (or an error) came with
    /// this edge, and no other edge will follow it.
    ToEnd,
}

/// One connection: its socket and its protocol state.
#[derive(Debug)]
struct Slot {
    stream: TcpStream,
    conn: ClientConn,
    /// The TCP connect has completed.
    connected: bool,
    expiry: Option<Expiry>,
    /// A failure noted outside a turn, reported at the next one.
    failed: Option<End>,
}

impl Slot {
    fn stage(&self) -> Stage {
        if !self.connected {
            Stage::Connect
        } else if self.conn.is_upgrading() {
            Stage::Upgrade
        } else {
            Stage::Open
        }
    }

    /// Whether the pending TCP connect has completed (`Ok(false)`: not yet).
    fn check_connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A failure at the stage the connection has reached.
    fn fail(&self, why: String) -> End {
        End::Failed {
            stage: self.stage(),
            why,
        }
    }

    /// The end of the stream: clean after a complete close handshake, else a failure.
    fn eof(&self) -> End {
        if self.conn.closed_cleanly() {
            return End::Closed;
        }
        let why = match self.stage() {
            Stage::Connect | Stage::Upgrade => "closed before 101",
            Stage::Open if self.conn.awaiting_close() => "FIN before the close frame",
            Stage::Open => "connection closed by the server",
        };
        self.fail(why.into())
    }
}

/// Writes `out` to `stream` until it is empty or the socket refuses more: the one write
/// loop of the load generator. Each vectored write that takes bytes counts in `io`.
///
/// # Errors
/// A failed write (`WouldBlock` is not one: what is left waits for the next edge).
pub fn flush(stream: &mut TcpStream, out: &mut OutQueue, io: &mut IoCounts) -> io::Result<()> {
    while !out.is_empty() {
        let written = match out.contiguous() {
            Some(bytes) => stream.write(bytes),
            None => {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = out.slices(&mut iov);
                stream.write_vectored(iov.get(..n).unwrap_or_default())
            }
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                out.advance(written);
                io.writes += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How often expiries are checked: they are coarse (seconds), a sweep costs a pass over
/// every connection.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Longest single wait in [`Driver::run_until`].
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Everything but the poller and its event list, so that serving a connection can borrow
/// them field by field.
#[derive(Debug)]
struct Conns {
    slots: Vec<Option<Slot>>,
    live: usize,
    /// Connections with an expiry.
    expiring: usize,
    last_sweep: Instant,
    /// Connections that failed outside a turn (a write from [`Driver::with_conn`]): their
    /// handler hears of it at the next turn.
    failed: Vec<usize>,
    common: Common,
}

/// What serving any connection uses besides the connection itself.
#[derive(Debug)]
struct Common {
    /// The one buffer every read goes through.
    read_buf: Box<[u8]>,
    shared: Shared,
    io: IoCounts,
}

/// The run's connections and their loop.
#[derive(Debug)]
pub struct Driver {
    poll: Poll,
    events: Events,
    conns: Conns,
}

impl Driver {
    /// A driver whose reads go through one buffer of `read_buf` bytes.
    ///
    /// # Errors
    /// The poller could not be made.
    pub fn new(read_buf: usize) -> io::Result<Driver> {
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Conns {
                slots: Vec::new(),
                live: 0,
                expiring: 0,
                last_sweep: Instant::now(),
                failed: Vec::new(),
                common: Common {
                    read_buf: vec![0u8; read_buf.max(1)].into_boxed_slice(),
                    shared: Shared::new(),
                    io: IoCounts::default(),
                },
            },
        })
    }

    /// What the connections share (its generator makes keys and payloads for the mode too).
    pub fn shared(&mut self) -> &mut Shared {
        &mut self.conns.common.shared
    }

    /// Reads and writes so far.
    pub fn io(&self) -> IoCounts {
        self.conns.common.io
    }

    /// Starts counting reads and writes from zero.
    pub fn reset_io(&mut self) {
        self.conns.common.io = IoCounts::default();
    }

    /// Connections not ended.
    pub fn live(&self) -> usize {
        self.conns.live
    }

    /// Whether connection `id` has not ended.
    pub fn is_live(&self, id: usize) -> bool {
        self.slot(id).is_some()
    }

    /// Whether connection `id` is open (upgraded, no close frame either way).
    pub fn is_open(&self, id: usize) -> bool {
        self.slot(id).is_some_and(|s| s.conn.is_open())
    }

    /// Bytes connection `id` has queued and not written (0 when it has ended).
    pub fn queued(&self, id: usize) -> usize {
        self.slot(id).map_or(0, |s| s.conn.out.len())
    }

    fn slot(&self, id: usize) -> Option<&Slot> {
        self.conns.slots.get(id).and_then(Option::as_ref)
    }

    /// Adds connection `id`: `stream` (connecting, non-blocking) carrying `conn`. The
    /// upgrade request is written at once if the TCP handshake has already completed, as it
    /// usually has on loopback; else on the first `WRITABLE` edge.
    ///
    /// # Errors
    /// Registering the socket, or an immediate write failure. The connection is then not
    /// added.
    pub fn add(
        &mut self,
        id: usize,
        mut stream: TcpStream,
        mut conn: ClientConn,
        expiry: Option<Expiry>,
    ) -> io::Result<()> {
        if self.is_live(id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "connection id in use",
            ));
        }
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let before = conn.out.len();
        let connected = match flush(&mut stream, &mut conn.out, &mut self.conns.common.io) {
            Ok(()) => conn.out.len() < before,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => false,
            Err(e) => return Err(e),
        };
        let slots = &mut self.conns.slots;
        if slots.len() <= id {
            slots.resize_with(id + 1, || None);
        }
        if let Some(entry) = slots.get_mut(id) {
            *entry = Some(Slot {
                stream,
                conn,
                connected,
                expiry,
                failed: None,
            });
            self.conns.live += 1;
            self.conns.expiring += usize::from(expiry.is_some());
        }
        Ok(())
    }

    /// Runs `f` on connection `id` (if it has not ended) and writes what it queued. A write
    /// failure ends the connection at the next turn.
    pub fn with_conn<R>(
        &mut self,
        id: usize,
        f: impl FnOnce(&mut ClientConn, &mut Shared) -> R,
    ) -> Option<R> {
        let conns = &mut self.conns;
        let slot = conns.slots.get_mut(id).and_then(Option::as_mut)?;
        if slot.failed.is_some() {
            return None;
        }
        let result = f(&mut slot.conn, &mut conns.common.shared);
        if slot.connected {
            if let Err(e) = flush(&mut slot.stream, &mut slot.conn.out, &mut conns.common.io) {
                slot.failed = Some(slot.fail(format!("write: {e}")));
                conns.failed.push(id);
            }
        }
        Some(result)
    }

    /// Ends connection `id` now (closing its socket) and tells `handler`.
    pub fn end<H: Handler>(&mut self, id: usize, end: End, handler: &mut H) {
        self.conns.end(id, end, handler);
    }

    /// Polls once, waiting at most `timeout`, and serves every ready connection.
    ///
    /// # Errors
    /// Only a failing poll; connection failures go to `handler`.
    pub fn turn<H: Handler>(&mut self, handler: &mut H, timeout: Duration) -> io::Result<()> {
        self.conns.report_failed(handler);
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            let read = if event.is_read_closed() || event.is_error() {
                Read::ToEnd
            } else if event.is_readable() {
                Read::UntilShort
            } else {
                Read::No
            };
            self.conns.serve(event.token().0, read, handler);
        }
        self.conns.report_failed(handler);
        self.conns.sweep(handler);
        Ok(())
    }

    /// Turns until `deadline` or until `done` holds.
    ///
    /// # Errors
    /// A failing poll.
    pub fn run_until<H: Handler>(
        &mut self,
        handler: &mut H,
        deadline: Instant,
        mut done: impl FnMut(&H, &Driver) -> bool,
    ) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline || done(handler, self) {
                return Ok(());
            }
            self.turn(handler, deadline.duration_since(now).min(MAX_WAIT))?;
        }
    }

    /// Closes every connection politely: a close frame (1000) after whatever each has
    /// queued, then its frames are read (and ignored) until the server closes TCP (it closes
    /// first, so the TIME-WAIT stays on its side), for at most `wait`. Connections still
    /// upgrading, and those not closed in time, are dropped.
    ///
    /// # Errors
    /// A failing poll.
    pub fn close_all(&mut self, wait: Duration) -> io::Result<()> {
        for id in 0..self.conns.slots.len() {
            if self.is_open(id) {
                self.with_conn(id, |conn, shared| {
                    conn.close(CloseCode::NORMAL, &mut shared.rng)
                });
            } else if self.slot(id).is_some_and(|s| s.conn.is_upgrading()) {
                drop(self.conns.take_slot(id));
            }
        }
        self.run_until(&mut Discard, Instant::now() + wait, |_, d| d.live() == 0)?;
        self.abandon_all();
        Ok(())
    }

    /// Drops every connection left, telling no handler; returns how many there were.
    pub fn abandon_all(&mut self) -> usize {
        let left = self.conns.live;
        for id in 0..self.conns.slots.len() {
            drop(self.conns.take_slot(id));
        }
        self.conns.failed.clear();
        left
    }
}

impl Conns {
    /// Serves connection `id` after a readiness event (a stale token is ignored).
    fn serve<H: Handler>(&mut self, id: usize, read: Read, handler: &mut H) {
        let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if let Some(end) = slot.failed.take() {
            return self.end(id, end, handler);
        }
        let served = serve_slot(id, slot, read, &mut self.common, handler);
        if let Err(end) = served {
            self.end(id, end, handler);
        }
    }

    /// Takes connection `id` out and tells `handler` how it ended, then closes its socket
    /// (so a time the handler takes does not include the close).
    fn end<H: Handler>(&mut self, id: usize, end: End, handler: &mut H) {
        if let Some(slot) = self.take_slot(id) {
            handler.on_end(id, end);
            drop(slot);
        }
    }

    /// Takes connection `id` out, if it is live. Dropping it closes its socket, which also
    /// takes it out of the epoll set (the descriptor is never duplicated), so no
    /// `deregister` call is spent on it.
    fn take_slot(&mut self, id: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(id).and_then(Option::take)?;
        self.live -= 1;
        self.expiring -= usize::from(slot.expiry.is_some());
        Some(slot)
    }

    /// Ends the connections that failed outside a turn.
    fn report_failed<H: Handler>(&mut self, handler: &mut H) {
        if self.failed.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.failed) {
            let slot = self.slots.get_mut(id).and_then(Option::as_mut);
            if let Some(end) = slot.and_then(|s| s.failed.take()) {
                self.end(id, end, handler);
            }
        }
    }

    /// Ends the connections whose time ran out; forgets `OpenBy` expiries of those open.
    fn sweep<H: Handler>(&mut self, handler: &mut H) {
        if self.expiring == 0 || self.last_sweep.elapsed() < SWEEP_EVERY {
            return;
        }
        let now = Instant::now();
        self.last_sweep = now;
        for id in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            let expired = match slot.expiry {
                Some(Expiry::OpenBy(_)) if !slot.conn.is_upgrading() => {
                    slot.expiry = None;
                    self.expiring -= 1;
                    false
                }
                Some(Expiry::OpenBy(at) | Expiry::EndBy(at)) => now >= at,
                None => false,
            };
            if expired {
                self.end(id, End::TimedOut, handler);
            }
        }
    }
}

/// Serves one connection: completes its connect, reads and hands out its events, lets the
/// handler answer, writes.
fn serve_slot<H: Handler>(
    id: usize,
    slot: &mut Slot,
    read: Read,
    common: &mut Common,
    handler: &mut H,
) -> Result<(), End> {
    if !slot.connected {
        match slot.check_connected() {
            Ok(true) => slot.connected = true,
            Ok(false) => return Ok(()),
            Err(e) => return Err(slot.fail(format!("connect: {e}"))),
        }
    }
    let was_closing = slot.conn.awaiting_close();
    if let Some(at) = read_input(id, slot, read, common, handler)? {
        handler.answer(id, &mut slot.conn, &mut common.shared, at);
    }
    flush(&mut slot.stream, &mut slot.conn.out, &mut common.io).map_err(|e| {
        // A write refused before the answer: the connection never really stood.
        let stage = if slot.conn.is_upgrading() {
            Stage::Connect
        } else {
            slot.stage()
        };
        End::Failed {
            stage,
            why: format!("write: {e}"),
        }
    })?;
    if !was_closing && slot.conn.awaiting_close() && slot.conn.out.is_empty() {
        // The answer was a close frame. A server replies to one without any work of its
        // own, so the reply (and its FIN) is usually in already: take it now rather than
        // one poll later.
        read_input(id, slot, Read::ToEnd, common, handler)?;
    }
    Ok(())
}

/// Reads as `read` says and hands every event to `handler`; returns when the last read
/// that brought data happened.
fn read_input<H: Handler>(
    id: usize,
    slot: &mut Slot,
    read: Read,
    common: &mut Common,
    handler: &mut H,
) -> Result<Option<Instant>, End> {
    let mut last = None;
    if read == Read::No {
        return Ok(last);
    }
    let Common {
        read_buf: buf,
        shared,
        io,
    } = common;
    loop {
        let n = match slot.stream.read(buf) {
            Ok(0) => {
                // The server's half is closed, not ours: a close reply still goes out. The
                // connection ends either way, so a failed write changes nothing.
                let _ = flush(&mut slot.stream, &mut slot.conn.out, io);
                return Err(slot.eof());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(last),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(slot.fail(format!("read: {e}"))),
        };
        io.reads += 1;
        let at = Instant::now();
        last = Some(at);
        let mut input = buf.get(..n).unwrap_or_default();
        while !input.is_empty() {
            match slot.conn.poll_event(&mut input, shared) {
                Ok(Some(event)) => {
                    let handled = handler.on_event(id, event, at);
                    handled.map_err(|why| slot.fail(why))?;
                }
                Ok(None) => {}
                Err(e) => return Err(slot.fail(e.to_string())),
            }
        }
        if n < buf.len() && read == Read::UntilShort {
            return Ok(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{client_frames, server_frame};
    use crate::client::ConnConfig;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use wsloop_proto::frame::OpCode;

    /// Far more than a loaded machine needs for a few loopback round trips: the tests wait
    /// for behaviour (a connection ending, a queue emptying) and fail only if it never comes.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Every event and end, as text.
    #[derive(Debug, Default)]
    struct Record {
        events: Vec<String>,
        ends: Vec<(usize, End)>,
    }

    impl Handler for Record {
        fn on_event(&mut self, id: usize, event: Event<'_>, _now: Instant) -> Result<(), String> {
            self.events.push(format!("{id}: {event:?}"));
            Ok(())
        }

        fn on_end(&mut self, id: usize, end: End) {
            self.ends.push((id, end));
        }
    }

    /// Connection `id` on `driver`, connected to a server socket that the test drives by
    /// hand (blocking); its upgrade request is read there, and the `101` answer returned
    /// (not yet sent).
    fn connect(driver: &mut Driver, id: usize) -> (std::net::TcpStream, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        let conn = ClientConn::new("h", "/", ConnConfig::default(), &mut driver.shared().rng);
        driver
            .add(id, TcpStream::from_std(client), conn, None)
            .unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            server.read_exact(&mut byte).unwrap();
            request.push(byte[0]);
        }
        let text = String::from_utf8(request).unwrap();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut answer = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut answer, key, None, None);
        (server, answer)
    }

    #[test]
    fn a_close_and_fin_in_one_burst_end_the_connection_cleanly() {
        let mut driver = Driver::new(1024).unwrap();
        let (mut server, mut burst) = connect(&mut driver, 7);
        // All of it, FIN included, is there before the client's first poll: one edge.
        burst.extend(server_frame(OpCode::Close, &1000u16.to_be_bytes()));
        server.write_all(&burst).unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        let mut record = Record::default();
        let deadline = Instant::now() + PATIENCE;
        driver
            .run_until(&mut record, deadline, |_, d| d.live() == 0)
            .unwrap();
        assert_eq!(record.ends, vec![(7, End::Closed)], "{:?}", record.events);
        // The client answered the close before the end.
        let mut reply = Vec::new();
        server.read_to_end(&mut reply).unwrap();
        assert_eq!(
            client_frames(&reply),
            vec![(0x88, 1000u16.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn what_the_socket_refuses_is_written_on_writable_and_arrives_whole() {
        let mut driver = Driver::new(1024).unwrap();
        let (mut server, answer) = connect(&mut driver, 0);
        server.write_all(&answer).unwrap();
        let mut record = Record::default();
        let deadline = Instant::now() + PATIENCE;
        driver
            .run_until(&mut record, deadline, |_, d| d.is_open(0))
            .unwrap();
        // Far more than loopback's socket buffers hold while nobody reads.
        let message: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        driver.with_conn(0, |conn, shared| {
            conn.send(OpCode::Binary, &message, shared)
        });
        assert!(driver.queued(0) > 0, "the socket took 32 MiB at once");
        let wire_len = message.len() + 14;
        let reader = std::thread::spawn(move || {
            let mut wire = vec![0u8; wire_len];
            server.read_exact(&mut wire).map(|()| wire)
        });
        let deadline = Instant::now() + PATIENCE;
        driver
            .run_until(&mut record, deadline, |_, d| d.queued(0) == 0)
            .unwrap();
        assert_eq!(driver.queued(0), 0, "the rest went out on WRITABLE edges");
        let wire = reader.join().unwrap().unwrap();
        let frames = client_frames(&wire);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].0 == 0x82 && frames[0].1 == message);
        assert!(record.ends.is_empty(), "{:?}", record.ends);
    }
}
