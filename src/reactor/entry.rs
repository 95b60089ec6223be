//! One connection in the slab: its socket, its protocol state machine
//! ([`wsloop_proto::Connection`], which holds every protocol rule), its output, its TLS
//! session and the few I/O flags the reactor needs. Kept small: it sits there for every idle
//! connection, and everything transient inside it is boxed.

use std::net::Shutdown;

use mio::net::TcpStream;
use wsloop_proto::Connection;

use crate::out::ConnOut;
use crate::tls::TlsSession;

use super::facts::Facts;

/// A connection in the slab.
#[derive(Debug)]
pub struct Entry {
    /// The protocol connection: phases, close handshake, keepalive, rates, deadlines.
    pub(crate) conn: Connection,
    /// Output the socket has not taken yet, and what the connection counts in the budget.
    pub(crate) out: ConnOut,
    /// TLS state on a TLS listener; `None` (and never looked into per byte) on plain ones.
    pub(crate) tls: Option<Box<TlsSession>>,
    /// The socket.
    pub(crate) socket: TcpStream,
    /// Tells this connection apart from earlier ones in the same slab slot.
    pub(crate) serial: u32,
    /// Its path and client address, from the upgrade on.
    pub(crate) facts: Facts,
    /// Whether the socket accepted writes last time (edge-triggered: cleared once it refused).
    pub(crate) writable: bool,
    /// Whether reading (and decoding what was read) stopped because its output is over
    /// `--max-backpressure` (by the memory it holds: `ConnOut::pressure`); it resumes (from
    /// the ready list) below half of it.
    pub(crate) read_paused: bool,
    /// Whether its next read into the shared buffer takes only the first
    /// [`NARROW_READ`](super::NARROW_READ) bytes of it: true for a new connection and after
    /// a large payload was read into place, false once such a read filled that window.
    /// Why: the read that brings a large message's header would otherwise fill the whole
    /// shared buffer with payload, to be copied into the message buffer at once, and touch
    /// all its pages, which then stay resident for nothing while only large messages come.
    pub(crate) narrow_read: bool,
    /// Accepted on the metrics listener: serves `/metrics` only.
    pub(crate) metrics_only: bool,
    /// Finished: removed from the slab at the end of the turn.
    pub(crate) doomed: bool,
}

impl Entry {
    /// A connection just accepted.
    pub(crate) fn new(
        socket: TcpStream,
        serial: u32,
        conn: Connection,
        tls: Option<Box<TlsSession>>,
        metrics_only: bool,
    ) -> Entry {
        Entry {
            conn,
            out: ConnOut::default(),
            tls,
            socket,
            serial,
            facts: Facts::default(),
            writable: true,
            read_paused: false,
            narrow_read: true,
            metrics_only,
            doomed: false,
        }
    }

    /// Whether output waits for the socket: queued bytes, or TLS records rustls holds.
    pub(crate) fn has_pending_output(&self) -> bool {
        self.out.has_queued() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Whether everything said has left: nothing corked, queued or held by TLS.
    pub(crate) fn is_flushed(&self) -> bool {
        self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Memory of its protocol and TLS state, for the budget.
    pub(crate) fn state_bytes(&self) -> usize {
        self.conn.memory() + self.tls.as_ref().map_or(0, |t| t.memory())
    }

    /// Once a lingering connection has said everything: TLS `close_notify`, then our FIN
    /// (when the connection says so; at most once).
    pub(crate) fn fin_when_flushed(&mut self) {
        if !self.conn.is_lingering() || !self.out.is_empty() {
            return;
        }
        if let Some(tls) = &mut self.tls {
            tls.close_notify();
            let _ = tls.send_pending(&mut self.socket); // the rest leaves on WRITABLE
        }
        if self.conn.poll_fin(self.is_flushed()) {
            let _ = self.socket.shutdown(Shutdown::Write);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection pays for this struct in the slab: keep it small on purpose.
    #[test]
    fn entry_stays_small() {
        let size = std::mem::size_of::<super::Entry>();
        // 136 bytes in release builds (120 before the 12 bytes of `Facts`: a path id and an
        // IPv4 peer; this limit said 128 and went unnoticed, as CI tests debug builds); in
        // debug builds mio keeps a selector id in every socket.
        let limit = if cfg!(debug_assertions) { 144 } else { 136 };
        assert!(size <= limit, "Entry grew to {size} bytes");
        assert_eq!(std::mem::size_of::<super::ConnOut>(), 16);
    }
}
