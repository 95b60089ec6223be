//! Server configuration: the address, every limit and every timeout, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::deflate::DeflateConfig;
use crate::protocol::Limits;

use super::tls::TlsConfig;

/// What to do with a publication for a subscriber whose send queue is already over the
/// backpressure limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close the subscriber with 1008 and log it (the default: memory stays bounded and the
    /// client learns why).
    #[default]
    Close,
    /// Drop the message for that subscriber and count it.
    Drop,
}

/// Everything the reactor needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Frame and message size limits (1009 beyond them).
    pub limits: Limits,
    /// Largest HTTP request head (431 beyond it).
    pub max_head: usize,
    /// Most concurrent connections (503 beyond it).
    pub max_conns: usize,
    /// Per-connection send-queue limit: above it reading pauses and publications follow
    /// `slow_consumer`. Reading resumes below half of it.
    pub max_backpressure: usize,
    /// What a publication does to a subscriber over `max_backpressure`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Time allowed from accept to a complete request head.
    pub handshake_timeout: Duration,
    /// Silence after which the server pings; `None` disables keepalive pings.
    pub ping_interval: Option<Duration>,
    /// Silence after which a connection is considered dead and dropped; `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Time to wait for the peer's close frame (and then its FIN) after ours.
    pub close_timeout: Duration,
    /// Time a graceful shutdown waits for close handshakes before exiting anyway.
    pub drain_timeout: Duration,
    /// Folder of static files for plain HTTP requests (embedded page when absent).
    pub static_dir: PathBuf,
    /// Allowed `Origin` values for upgrades; empty allows every origin.
    pub allow_origins: Vec<String>,
    /// Interval of the stats log line; `None` disables it.
    pub stats_interval: Option<Duration>,
    /// permessage-deflate (RFC 7692) settings; `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// Certificate and key: the listener then speaks only TLS (wss://, https://). `None`:
    /// plain TCP.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            limits: Limits::default(),
            max_head: 8 * 1024,
            max_conns: 100_000,
            max_backpressure: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(75)),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            static_dir: PathBuf::from("html"),
            allow_origins: Vec::new(),
            stats_interval: None,
            deflate: None,
            tls: None,
        }
    }
}
