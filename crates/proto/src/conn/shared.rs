//! What every connection of one reactor shares: the settings (limits, timeouts, rates) and the
//! permessage-deflate contexts and compression scratch buffer. Passed by reference to the calls that
//! need it, so each connection stays small and plain data.

use std::time::Duration;

use crate::contexts::{ConnDeflate, SharedContexts};
use crate::deflate::DeflateConfig;
use crate::pool::{self, BufferPool};
use crate::Limits;

/// A compression scratch buffer above this capacity is not kept between messages.
const SCRATCH_KEEP: usize = 256 * 1024;

/// The rules every connection follows, with the server's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Frame and message size limits (1009 beyond them).
    pub limits: Limits,
    /// Largest HTTP request head (431 beyond it).
    pub max_head: usize,
    /// Time allowed from accept to a complete request head, and from one answered keep-alive
    /// request to the next.
    pub handshake_timeout: Duration,
    /// Time to wait for the peer's close frame after ours, and for its FIN after the close
    /// handshake.
    pub close_timeout: Duration,
    /// Silence after which the server pings; `None`: no keepalive pings.
    pub ping_interval: Option<Duration>,
    /// Silence after which a connection is dropped as dead (1006); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Messages per second a connection may send (1 s of burst).
    pub max_msg_rate: Option<u64>,
    /// Bytes per second a connection may send (1 s of burst); a message costs its size.
    pub max_bytes_rate: Option<u64>,
    /// What a connection over either rate gets.
    pub rate_policy: RatePolicy,
    /// permessage-deflate (RFC 7692); `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// Payloads from this size on are assembled in pooled buffers reserved from the frame
    /// header, and read straight into them ([`Connection::read_target`]); set it to the
    /// caller's read buffer size (see [`pool::LARGE`]).
    ///
    /// [`Connection::read_target`]: super::Connection::read_target
    pub large_payload: usize,
    /// The most bytes of idle large buffers the [`BufferPool`] keeps for reuse.
    pub pool_cap: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            max_head: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(75)),
            max_msg_rate: None,
            max_bytes_rate: None,
            rate_policy: RatePolicy::Pause,
            deflate: None,
            large_payload: pool::LARGE,
            pool_cap: pool::CAP,
        }
    }
}

/// What a connection over its message or byte rate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RatePolicy {
    /// Reading stops until its buckets have paid for what it sent (TCP pushes back on the
    /// sender).
    #[default]
    Pause,
    /// It is closed with 1008.
    Close,
}

/// What a new connection must start with when a PROXY protocol header is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Every connection must start with a header (else one is optional).
    pub required: bool,
    /// The peer is a proxy whose header is believed (else a header is refused).
    pub trusted: bool,
}

/// The settings plus what every connection of a reactor shares: the deflate contexts, the
/// compression scratch buffer and the pool of large message buffers.
#[derive(Debug)]
pub struct Shared {
    /// The rules.
    pub settings: Settings,
    /// Contexts of connections without context takeover.
    contexts: SharedContexts,
    /// Compressed payloads are built here before they are written out.
    deflate_buf: Vec<u8>,
    /// Large message buffers for reuse (the caller gives back the ones it was handed, and
    /// frees idle ones now and then: [`BufferPool::release_if_idle`]).
    pub pool: BufferPool,
}

impl Shared {
    /// Shared state for connections following `settings`.
    pub fn new(settings: Settings) -> Shared {
        let level = settings.deflate.as_ref().map_or(1, |d| d.level);
        Shared {
            pool: BufferPool::new(settings.large_payload, settings.pool_cap),
            settings,
            contexts: SharedContexts::new(level),
            deflate_buf: Vec::new(),
        }
    }

    /// Inflates a message from `conn` into `out` (cleared first), at most the message limit.
    pub(super) fn inflate(
        &mut self,
        conn: &mut ConnDeflate,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), crate::ProtocolError> {
        out.clear();
        let max = usize::try_from(self.settings.limits.max_message).unwrap_or(usize::MAX);
        self.contexts
            .inflate(conn, payload, out, max, &mut self.pool)
    }

    /// `payload` compressed for `conn` (its own context, or the shared one), in the scratch
    /// buffer; hand it back with [`Shared::done_compressing`].
    pub(super) fn compress(&mut self, conn: &mut ConnDeflate, payload: &[u8]) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.deflate_buf);
        out.clear();
        self.contexts.compress(conn, payload, &mut out);
        out
    }

    /// `payload` compressed with the shared context for `window_bits` (no context takeover).
    pub(super) fn compress_shared(&mut self, window_bits: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.deflate_buf);
        out.clear();
        self.contexts
            .compress_shared(window_bits, payload, &mut out);
        out
    }

    /// Takes back the scratch buffer [`Shared::compress`] lent.
    pub(super) fn done_compressing(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= SCRATCH_KEEP {
            self.deflate_buf = buf;
        }
    }
}
