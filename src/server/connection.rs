//! One connection's state in the slab. Kept small: it sits there for every idle connection,
//! so everything that exists only briefly (the request head being read) is boxed, and the
//! decoder and output queue own no memory between messages.

use std::io;
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::protocol::decoder::Decoder;
use crate::protocol::handshake::HeadScanner;
use crate::protocol::CloseCode;

use super::compression::ConnDeflate;
use super::out_queue::{OutEntry, OutQueue};
use super::ratelimit::TokenBucket;
use super::timer::Tick;
use super::tls::TlsSession;

/// The bytes of a request head still arriving.
#[derive(Debug, Default)]
pub struct HeadState {
    /// Everything received since the request began.
    pub buf: Vec<u8>,
    /// Where the search for the blank line resumes.
    pub scanner: HeadScanner,
    /// Whether the PROXY protocol header (if any is expected) has been dealt with.
    pub proxy_done: bool,
    /// The client address a trusted PROXY header gave.
    pub client: Option<std::net::SocketAddr>,
    /// Whether `buf` holds requests read but not answered yet, because the answers before
    /// them still wait for the socket (see [`Connection::over_backpressure`]); they are
    /// answered before anything more is read.
    pub held: bool,
}

/// How fast a connection's input is decoded: its message and byte budgets (while
/// `--max-msg-rate`/`--max-bytes-rate` is set) and the bytes held back from decoding. Allocated
/// only for connections that send under a rate limit, or that hold bytes back.
#[derive(Debug)]
pub struct RateState {
    /// Messages per second.
    pub messages: Option<TokenBucket>,
    /// Bytes per second.
    pub bytes: Option<TokenBucket>,
    /// Reading stopped until the buckets refill.
    pub paused: bool,
    /// Bytes read but not decoded yet (at most one read's worth), because a rate budget ran
    /// out mid-buffer or the connection used up its share of this loop turn; decoded first
    /// when its turn comes again.
    pub backlog: Vec<u8>,
}

impl RateState {
    /// Full buckets for the limits that are set (`None`: no limit), nothing held back.
    pub fn new(msg_rate: Option<u64>, byte_rate: Option<u64>, now: Tick) -> RateState {
        RateState {
            messages: msg_rate.map(|r| TokenBucket::new(r, r, now)),
            bytes: byte_rate.map(|r| TokenBucket::new(r, r, now)),
            paused: false,
            backlog: Vec::new(),
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading an HTTP request head (an upgrade, or a plain request on a keep-alive connection).
    Head(Box<HeadState>),
    /// WebSocket open.
    Open,
    /// We sent a close frame and wait for the peer's (frames still decoded, data ignored).
    CloseSent,
    /// Nothing more to say: flush the queue, send FIN, discard input until EOF or timeout.
    Linger,
    /// Gone; removed from the slab at the end of the loop turn.
    Dead,
}

/// A connection in the slab.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub socket: TcpStream,
    /// Tells this connection apart from earlier ones in the same slab slot.
    pub serial: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// WebSocket frame decoder.
    pub decoder: Decoder,
    /// Output the socket has not taken yet.
    pub out: OutQueue,
    /// Bytes queued for it in this turn's outbox.
    pub corked: usize,
    /// When bytes last arrived.
    pub last_seen: Tick,
    /// The close code to report to the application when the connection ends.
    pub close_code: Option<CloseCode>,
    /// Whether the application saw `on_open` (and so must see `on_close`).
    pub app_open: bool,
    /// Whether a keepalive ping is outstanding.
    pub ping_sent: bool,
    /// Whether the socket accepted writes last time (edge-triggered: cleared on `WouldBlock`).
    pub writable: bool,
    /// Whether reading stopped because the output queue is over the high-water mark.
    pub read_paused: bool,
    /// Whether our FIN was sent (`shutdown(Write)`).
    pub fin_sent: bool,
    /// Whether the peer's FIN arrived while output was still queued for it.
    pub peer_eof: bool,
    /// permessage-deflate state, when negotiated.
    pub deflate: Option<Box<ConnDeflate>>,
    /// Bytes of this connection counted in the process-wide `buffered_bytes` (see
    /// [`Connection::footprint`]).
    pub accounted: u64,
    /// Accepted on the metrics listener: serves `/metrics` only.
    pub metrics_only: bool,
    /// TLS state on a TLS listener; `None` (and never looked into per byte) on plain ones.
    pub tls: Option<Box<TlsSession>>,
    /// Rate-limit state, once the connection sent a message under a rate limit.
    pub rate: Option<Box<RateState>>,
}

impl Connection {
    /// A freshly accepted connection, reading its request head.
    pub fn new(
        socket: TcpStream,
        serial: u32,
        now: Tick,
        tls: Option<Box<TlsSession>>,
    ) -> Connection {
        Connection {
            socket,
            serial,
            phase: Phase::Head(Box::default()),
            decoder: Decoder::new(),
            out: OutQueue::default(),
            corked: 0,
            last_seen: now,
            close_code: None,
            app_open: false,
            ping_sent: false,
            writable: true,
            read_paused: false,
            fin_sent: false,
            peer_eof: false,
            deflate: None,
            accounted: 0,
            metrics_only: false,
            tls,
            rate: None,
        }
    }

    /// Bytes waiting to be sent: queued plus produced this turn.
    pub fn buffered_amount(&self) -> usize {
        self.out.len() + self.corked
    }

    /// Whether its unsent output is over `max_backpressure`: then it reads nothing more and
    /// answers no more requests until the socket took enough.
    pub fn over_backpressure(&self, max_backpressure: usize) -> bool {
        self.buffered_amount() > max_backpressure
    }

    /// Whether it is a slow consumer: its socket refused more than `limit` bytes besides the
    /// frame it is in the middle of receiving ([`OutQueue::behind_front`]). Output produced
    /// this turn does not count (the socket has not been offered it yet), nor does one
    /// message larger than `limit` that a reader keeping up is still taking in.
    pub fn is_slow(&self, limit: usize) -> bool {
        self.out.behind_front() > limit
    }

    /// Memory it holds in its send queue (slots and shared frames included), request head
    /// buffer, partial message, held-back input, own deflate contexts and TLS session: what the
    /// memory budget counts.
    pub fn footprint(&self) -> u64 {
        let deflate = self.deflate.as_ref().map_or(0, |d| d.memory());
        let backlog = self.rate.as_ref().map_or(0, |r| r.backlog.capacity());
        let tls = self.tls.as_ref().map_or(0, |t| t.memory());
        let head = match &self.phase {
            Phase::Head(head) => head.buf.capacity(),
            _ => 0,
        };
        (self.out.footprint() + head + self.decoder.buffered() + deflate + backlog + tls) as u64
    }

    /// Whether bytes read earlier wait to be decoded.
    pub fn has_backlog(&self) -> bool {
        self.rate.as_ref().is_some_and(|r| !r.backlog.is_empty())
    }

    /// Takes the bytes held back from decoding (`None` when there are none), freeing the
    /// state that held them when no rate limit needs it.
    pub fn take_backlog(&mut self) -> Option<Vec<u8>> {
        let rate = self.rate.as_mut().filter(|r| !r.backlog.is_empty())?;
        let backlog = std::mem::take(&mut rate.backlog);
        if rate.messages.is_none() && rate.bytes.is_none() {
            self.rate = None;
        }
        Some(backlog)
    }

    /// Whether the application may send to it.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// Whether it is marked for removal.
    pub fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead)
    }

    /// Whether output waits for the socket: queued bytes, or TLS records rustls holds.
    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes the queue, then `entries` (this turn's output), through TLS when the connection
    /// has it; what the socket refuses stays queued. Returns the plaintext bytes written.
    ///
    /// # Errors
    /// A socket error other than `WouldBlock` (the connection is then dead).
    pub fn write_out(&mut self, outbox_bytes: &[u8], entries: &[OutEntry]) -> io::Result<usize> {
        match &mut self.tls {
            None => self
                .out
                .write_with(&mut self.socket, outbox_bytes, entries)
                .map(|(n, _)| n),
            Some(tls) => tls.write_with(&mut self.socket, &mut self.out, outbox_bytes, entries),
        }
    }

    /// Once a lingering connection has said everything: TLS `close_notify`, then FIN. Called
    /// again after each write until it happens.
    pub fn finish_when_drained(&mut self) {
        if !matches!(self.phase, Phase::Linger)
            || self.fin_sent
            || self.corked != 0
            || !self.out.is_empty()
        {
            return;
        }
        if let Some(tls) = &mut self.tls {
            tls.close_notify();
            let sent = tls.send_pending(&mut self.socket);
            if sent.is_ok() && tls.wants_write() {
                return; // The rest of the records leave on WRITABLE; FIN after them.
            }
        }
        self.fin_sent = true;
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection pays for this struct in the slab: keep it small on purpose.
    #[test]
    fn connection_stays_small() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(size <= 144, "Connection grew to {size} bytes");
        assert_eq!(std::mem::size_of::<crate::protocol::Decoder>(), 32);
        assert_eq!(std::mem::size_of::<super::OutQueue>(), 8);
    }
}
