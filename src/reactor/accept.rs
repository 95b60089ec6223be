//! Admission at accept time: the connection limits (`--max-conns`, the memory budget, the
//! handshake rate; 503 or a plain close over them), the TLS session, the PROXY policy, and the
//! counts the process-wide limits keep (connections, upgraded connections per address).

use std::net::{IpAddr, SocketAddr};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use wsloop_proto::conn::ProxyPolicy;
use wsloop_proto::Connection;

use crate::admission::client_addr::Cidr;
use crate::admission::counts::{release_ip_slot, take_ip_slot};
use crate::config::ProxyMode;
use crate::stats::RejectReason;

use super::entry::Entry;
use super::{Core, REJECT_OVERFLOW};

impl Core {
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
        let open = self.count_connection_in();
        if !self.insert_connection(socket, peer, metrics_only, open) {
            self.count_connection_out();
        }
    }

    /// Puts an accepted connection in the slab, refused with 503 when over `--max-conns`
    /// (`open` connections in the process before it), the memory budget or the handshake rate.
    /// False when it was closed at once instead.
    fn insert_connection(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
        open: usize,
    ) -> bool {
        let refusal = if open >= self.config.max_conns {
            Some(RejectReason::MaxConns)
        } else if self.budget.over(self.config.max_buffered) {
            Some(RejectReason::MemoryBudget)
        } else if !metrics_only
            && self
                .handshake_bucket
                .as_mut()
                .is_some_and(|bucket| !bucket.try_take(self.tick, 1))
        {
            Some(RejectReason::HandshakeRate)
        } else {
            None
        };
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
            self.proxy_policy(peer, metrics_only),
            &self.shared,
        );
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            return false;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        entry.insert(Entry::new(
            socket,
            self.next_serial,
            conn,
            tls,
            metrics_only,
        ));
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

    /// Counts a new connection towards `--max-conns`; returns how many the process had
    /// before it. A lone reactor's slab is its count; workers share one.
    fn count_connection_in(&self) -> usize {
        match &self.member {
            Some(member) => member.counts.open_one(),
            None => self.conns.len(),
        }
    }

    /// A connection counted by [`Core::count_connection_in`] is gone.
    fn count_connection_out(&self) {
        if let Some(member) = &self.member {
            member.counts.close_one();
        }
    }

    /// What a connection from `peer` must start with: a PROXY header, when the listener
    /// expects them (never on the metrics listener), believed only from a trusted peer.
    fn proxy_policy(&self, peer: SocketAddr, metrics_only: bool) -> Option<ProxyPolicy> {
        let required = match self.config.proxy_protocol {
            ProxyMode::Off => return None,
            _ if metrics_only => return None,
            ProxyMode::Optional => false,
            ProxyMode::Required => true,
        };
        Some(ProxyPolicy {
            required,
            trusted: trusted_peer(&self.config.trusted_proxies, peer.ip()),
        })
    }

    /// Connection `key` left the slab: it no longer counts towards `--max-conns` nor, if it
    /// was upgraded, towards its address's `--max-conns-per-ip`.
    pub(super) fn count_out(&mut self, key: usize) {
        self.count_connection_out();
        if let Some(ip) = self.ip_of.remove(&key) {
            match &self.member {
                Some(member) => member.counts.release_ip(ip),
                None => release_ip_slot(&mut self.per_ip, ip),
            }
        }
    }

    /// Counts connection `key` towards `--max-conns-per-ip` for `ip` (every worker's
    /// connections together); false when `ip` already has `cap`.
    pub(super) fn count_per_ip(&mut self, key: usize, ip: IpAddr, cap: usize) -> bool {
        let taken = match &self.member {
            Some(member) => member.counts.take_ip(ip, cap),
            None => take_ip_slot(&mut self.per_ip, ip, cap),
        };
        if taken {
            self.ip_of.insert(key, ip);
        }
        taken
    }
}

/// Whether PROXY headers from `ip` are believed (no `--trusted-proxy`: loopback only).
fn trusted_peer(trusted: &[Cidr], ip: IpAddr) -> bool {
    if trusted.is_empty() {
        ip.is_loopback()
    } else {
        trusted.iter().any(|c| c.contains(ip))
    }
}
