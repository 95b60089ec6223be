//! Who gets in: the rules an accepted connection and an upgrade must pass before they cost
//! anything, and the state those rules keep ([`Admission`], one per reactor).
//!
//! - At accept: `--max-conns` (counted over the process), the memory budget, the handshake
//!   rate; the PROXY policy a connection starts under ([`proxy_policy`]).
//! - At the upgrade: the `Origin` check ([`origin`]), the client's address behind trusted
//!   proxies ([`client_addr`]), `--max-conns-per-ip` ([`counts`]).
//! - A refusal for load (503) carries a jittered `Retry-After`.
//!
//! The reactor does the I/O (accepting, registering, answering); the decisions are here.

pub(crate) mod client_addr;
pub(crate) mod counts;
pub(crate) mod origin;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wsloop_proto::conn::ProxyPolicy;
use wsloop_proto::ratelimit::TokenBucket;
use wsloop_proto::time::Tick;

use crate::config::{Config, ProxyMode};
use crate::stats::RejectReason;

use client_addr::Cidr;
use counts::{release_ip_slot, take_ip_slot, ProcessCounts};

/// The seconds a 503 asks a client to wait at least (it waits up to twice as long).
const RETRY_AFTER_SECS: u64 = 2;

/// One reactor's admission state: the handshake-rate bucket, the counts the connection limits
/// apply to (its own, or the process's when it is one of several workers), and the jitter of
/// its refusals.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `--max-handshake-rate`.
    handshake_bucket: Option<TokenBucket>,
    /// The process's counts when this reactor is a worker; `None`: a lone reactor counts its
    /// own (its slab, [`Admission::per_ip`]).
    process: Option<Arc<ProcessCounts>>,
    /// A lone reactor's upgraded connections per client address (`--max-conns-per-ip`).
    per_ip: HashMap<IpAddr, usize>,
    /// The address each connection counted in `--max-conns-per-ip` was counted under.
    ip_of: HashMap<usize, IpAddr>,
    /// Spreads `Retry-After` values (nothing secret: seeded once from the OS).
    rng: SmallRng,
}

impl Admission {
    /// A lone reactor's admission, with `config`'s handshake rate starting full at `now`.
    pub(crate) fn new(config: &Config, now: Tick) -> Admission {
        Admission {
            handshake_bucket: config
                .max_handshake_rate
                .map(|(rate, burst)| TokenBucket::new(rate, burst, now)),
            process: None,
            per_ip: HashMap::new(),
            ip_of: HashMap::new(),
            rng: SmallRng::from_os_rng(),
        }
    }

    /// From now on the limits count over the whole process (this reactor became a worker).
    pub(crate) fn share(&mut self, process: Arc<ProcessCounts>) {
        self.process = Some(process);
    }

    /// Counts a new connection towards `--max-conns`; returns how many the process had
    /// before it. A lone reactor's count is its slab (`slab_len` connections); workers share
    /// one.
    pub(crate) fn count_in(&self, slab_len: usize) -> usize {
        match &self.process {
            Some(process) => process.open_one(),
            None => slab_len,
        }
    }

    /// A connection counted by [`Admission::count_in`] never made it into the slab.
    pub(crate) fn uncount(&self) {
        if let Some(process) = &self.process {
            process.close_one();
        }
    }

    /// Connection `key` left the slab: it no longer counts towards `--max-conns` nor, if it
    /// was counted under an address, towards that address's `--max-conns-per-ip`.
    pub(crate) fn count_out(&mut self, key: usize) {
        self.uncount();
        if let Some(ip) = self.ip_of.remove(&key) {
            match &self.process {
                Some(process) => process.release_ip(ip),
                None => release_ip_slot(&mut self.per_ip, ip),
            }
        }
    }

    /// Why a connection accepted at `now` must be refused, if it must: `open` connections in
    /// the process before it reach `--max-conns`, the process is over its memory budget, or
    /// (not on the metrics listener) over the handshake rate, whose token it then does not
    /// take.
    pub(crate) fn refusal(
        &mut self,
        config: &Config,
        open: usize,
        over_budget: bool,
        metrics_only: bool,
        now: Tick,
    ) -> Option<RejectReason> {
        if open >= config.max_conns {
            Some(RejectReason::MaxConns)
        } else if over_budget {
            Some(RejectReason::MemoryBudget)
        } else if !metrics_only
            && self
                .handshake_bucket
                .as_mut()
                .is_some_and(|bucket| !bucket.try_take(now, 1))
        {
            Some(RejectReason::HandshakeRate)
        } else {
            None
        }
    }

    /// Counts connection `key` towards `--max-conns-per-ip` for `ip` (every worker's
    /// connections together); false when `ip` already has `cap`.
    pub(crate) fn count_per_ip(&mut self, key: usize, ip: IpAddr, cap: usize) -> bool {
        let taken = match &self.process {
            Some(process) => process.take_ip(ip, cap),
            None => take_ip_slot(&mut self.per_ip, ip, cap),
        };
        if taken {
            self.ip_of.insert(key, ip);
        }
        taken
    }

    /// The `Retry-After` of a 503, in whole seconds: jittered, so a fleet told to come back
    /// spreads out.
    pub(crate) fn retry_after(&mut self) -> u64 {
        retry_after(&mut self.rng, RETRY_AFTER_SECS)
    }
}

/// What a connection from `peer` must start with: a PROXY header, when the listener expects
/// them (never on the metrics listener), believed only from a trusted peer.
pub(crate) fn proxy_policy(
    config: &Config,
    peer: SocketAddr,
    metrics_only: bool,
) -> Option<ProxyPolicy> {
    let required = match config.proxy_protocol {
        ProxyMode::Off => return None,
        _ if metrics_only => return None,
        ProxyMode::Optional => false,
        ProxyMode::Required => true,
    };
    Some(ProxyPolicy {
        required,
        trusted: trusted_peer(&config.trusted_proxies, peer.ip()),
    })
}

/// Whether PROXY headers from `ip` are believed (no `--trusted-proxy`: loopback only).
fn trusted_peer(trusted: &[Cidr], ip: IpAddr) -> bool {
    if trusted.is_empty() {
        ip.is_loopback()
    } else {
        trusted.iter().any(|c| c.contains(ip))
    }
}

/// A `Retry-After` value in whole seconds, uniform in `base..=2*base` (at least 1), so
/// clients told to come back do not all come back in the same second.
fn retry_after(rng: &mut impl Rng, base_secs: u64) -> u64 {
    let base = base_secs.max(1);
    rng.random_range(base..=2 * base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_spread() {
        let mut rng = SmallRng::seed_from_u64(1);
        let values: std::collections::HashSet<u64> =
            (0..200).map(|_| retry_after(&mut rng, 5)).collect();
        assert!(values.iter().all(|v| (5..=10).contains(v)));
        assert!(values.len() >= 4, "{values:?}");
    }
}
