//! Accepting a connection: into the slab and the poller with its protocol connection and TLS
//! session, or refused — 503, or a plain close when not even that can be said — when the
//! [`crate::admission`] rules say so.

use std::io;
use std::net::SocketAddr;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use wsloop_proto::Connection;

use crate::admission::proxy_policy;
use crate::stats::RejectReason;

use super::entry::Entry;
use super::{Core, REJECT_OVERFLOW};

impl Core {
    /// Registers `socket` with the poller under the slab's next key and puts there the entry
    /// `build` makes of it and a fresh serial; returns the key. Accepted and adopted
    /// connections enter the same way.
    ///
    /// # Errors
    /// The poller refused the socket (which is then closed).
    pub(super) fn insert_entry(
        &mut self,
        mut socket: TcpStream,
        build: impl FnOnce(TcpStream, u32) -> Entry,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.next_serial = self.next_serial.wrapping_add(1);
        entry.insert(build(socket, self.next_serial));
        Ok(key)
    }

    /// A connection was accepted: admit it, or answer 503 (or just close it) over a limit.
    pub(super) fn add_connection(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
    ) {
        if self.shutting_down {
            return;
        }
        let open = self.admission.count_in(self.conns.len());
        if !self.insert_connection(socket, peer, metrics_only, open) {
            self.admission.uncount();
        }
    }

    /// Puts an accepted connection in the slab, refused with 503 when over `--max-conns`
    /// (`open` connections in the process before it), the memory budget or the handshake rate.
    /// False when it was closed at once instead.
    fn insert_connection(
        &mut self,
        socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
        open: usize,
    ) -> bool {
        let over_budget = self.budget.over(self.config.max_buffered);
        let refusal =
            self.admission
                .refusal(&self.config, open, over_budget, metrics_only, self.tick);
        if refusal.is_some() && open >= self.config.max_conns + REJECT_OVERFLOW {
            // Not even room to say so: drop the socket.
            self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
            return false;
        }
        // The metrics listener is always plain HTTP.
        let tls_config = self.config.tls.as_ref().filter(|_| !metrics_only);
        let tls = match tls_config {
            // A 503 cannot be said before a TLS handshake: over the limit, just close.
            Some(_) if refusal.is_some() => {
                debug!("{peer}: refused before the TLS handshake: closing");
                self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
                return false;
            }
            Some(config) => match config.accept() {
                Ok(session) => Some(session),
                Err(e) => {
                    warn!("{peer}: {e}");
                    return false;
                }
            },
            None => None,
        };
        let _ = socket.set_nodelay(true);
        let conn = Connection::new(
            self.tick,
            proxy_policy(&self.config, peer, metrics_only),
            &self.shared,
        );
        let inserted = self.insert_entry(socket, |socket, serial| {
            Entry::new(socket, serial, conn, tls, metrics_only)
        });
        let key = match inserted {
            Ok(key) => key,
            Err(e) => {
                warn!("register {peer}: {e}");
                return false;
            }
        };
        self.stats.accepted += 1;
        self.stats.open += 1;
        if let Some(reason) = refusal {
            debug!("{peer}: refused ({}): 503", reason.label());
            self.reject_busy(key, reason);
        } else {
            debug!("{peer}: accepted as #{key}");
        }
        // Counts its TLS session from the start, and arms the handshake deadline.
        self.settle(key);
        true
    }
}
