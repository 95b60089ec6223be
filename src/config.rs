//! Server configuration: the address, every limit and every timeout, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::conn::Settings;
use crate::protocol::deflate::DeflateConfig;
use crate::protocol::pool;
use crate::protocol::Limits;

use wsloop_proto::conn::RatePolicy;

use crate::admission::client_addr::{Cidr, ForwardedHeader};
use crate::pubsub::rooms::RoomPolicy;

/// Whether connections start with a PROXY protocol header (v1 or v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// No PROXY header is expected (one would be a bad request).
    #[default]
    Off,
    /// A PROXY header from a trusted peer is honoured; connections without one are served.
    Optional,
    /// Every connection must start with a PROXY header from a trusted peer.
    Required,
}
use crate::tls::TlsConfig;

/// Everything the reactor needs to know before it starts.
///
/// The defaults serve WebSocket upgrades on every path and nothing else: no demo page, no
/// static files, no `/stats`, no `/metrics`. A plain HTTP request (one that does not ask for
/// an upgrade) gets `404 Not Found` (`405` for methods other than `GET` and `HEAD`), whatever
/// its path; a broken upgrade request gets the status its fault calls for (`400`, `426`, …).
/// The fields [`demo_page`](Config::demo_page), [`static_dir`](Config::static_dir),
/// [`stats`](Config::stats) and [`metrics`](Config::metrics) turn each on; the `wsloop` binary
/// turns them all on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Frame and message size limits (1009 beyond them).
    pub limits: Limits,
    /// Largest HTTP request head (431 beyond it).
    pub max_head: usize,
    /// Most concurrent connections in the process, all workers together (503 beyond it).
    pub max_conns: usize,
    /// Per-connection send-queue limit: above it reading pauses and publications follow
    /// `slow_consumer` (a subscriber is judged by what its socket refused besides the frame it
    /// is in the middle of receiving). Reading resumes below half of it. Reading goes by the
    /// memory the queue holds (a large message sent back by move counts whole until written),
    /// so a connection echoing large messages holds one message buffer, not two.
    pub max_backpressure: usize,
    /// What a publication does to a subscriber over `max_backpressure`, for rooms without a
    /// policy of their own.
    pub slow_consumer: RoomPolicy,
    /// Process-wide budget (all workers together) for bytes held in send queues, request heads,
    /// partial messages, input held back, compressor contexts and TLS sessions: over it, upgrades get 503 and the
    /// largest holders are closed with 1013.
    pub max_buffered: usize,
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
    /// Folder whose files plain `GET` and `HEAD` requests are answered from (`/` is its
    /// `index.html`); `None`, the default: no files. A path that is not a folder serves
    /// nothing (or the demo page, with [`demo_page`](Config::demo_page)).
    pub static_dir: Option<PathBuf>,
    /// Serve the demo page compiled into the library (`/` and `/favicon.svg`: echo, chat and
    /// live counters in the browser) when there is no [`static_dir`](Config::static_dir)
    /// folder. Off by default.
    pub demo_page: bool,
    /// Serve `GET /stats`: the counters as JSON (what the demo page shows). Off by default.
    pub stats: bool,
    /// Origins allowed besides the same-origin default (`*` turns the check off).
    pub allow_origins: Vec<String>,
    /// Handshakes admitted per second (a token bucket with `burst`): `(rate, burst)`.
    pub max_handshake_rate: Option<(u64, u64)>,
    /// Upgraded connections per client address in the process, all workers together.
    pub max_conns_per_ip: Option<usize>,
    /// Messages per second each connection may send (1 s of burst).
    pub max_msg_rate: Option<u64>,
    /// Bytes per second each connection may send (1 s of burst).
    pub max_bytes_rate: Option<u64>,
    /// What a connection over its message or byte rate gets.
    pub rate_policy: RatePolicy,
    /// PROXY protocol on accepted connections.
    pub proxy_protocol: ProxyMode,
    /// Peers whose PROXY header is believed (empty: loopback only), and whose
    /// `forwarded_header` is (empty: none).
    pub trusted_proxies: Vec<Cidr>,
    /// The one forwarding header believed from `trusted_proxies`; `None`: no forwarding
    /// header is believed, whoever sent it.
    pub forwarded_header: Option<ForwardedHeader>,
    /// Serve `GET /metrics` (Prometheus text format). Off by default.
    pub metrics: bool,
    /// With [`metrics`](Config::metrics): serve `/metrics` on this separate listener instead
    /// of the main port.
    pub metrics_addr: Option<SocketAddr>,
    /// Interval of the stats log line; `None` disables it.
    pub stats_interval: Option<Duration>,
    /// permessage-deflate (RFC 7692) settings; `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// Bind with `SO_REUSEPORT`, so that other reactors or processes bound the same way share
    /// the port (the kernel spreads connections among them).
    pub reuse_port: bool,
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
            slow_consumer: RoomPolicy::Close,
            // Room for 32 connections at both per-connection limits (544 MiB by default).
            max_buffered: 32 * ((16 << 20) + (1 << 20)),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(75)),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            static_dir: None,
            demo_page: false,
            stats: false,
            allow_origins: Vec::new(),
            max_handshake_rate: None,
            max_conns_per_ip: None,
            max_msg_rate: None,
            max_bytes_rate: None,
            rate_policy: RatePolicy::Pause,
            proxy_protocol: ProxyMode::Off,
            trusted_proxies: Vec::new(),
            forwarded_header: None,
            metrics: false,
            metrics_addr: None,
            stats_interval: None,
            deflate: None,
            reuse_port: false,
            tls: None,
        }
    }
}

impl Config {
    /// The rules every protocol connection follows, from these settings.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            limits: self.limits,
            max_head: self.max_head,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            max_msg_rate: self.max_msg_rate,
            max_bytes_rate: self.max_bytes_rate,
            rate_policy: self.rate_policy,
            deflate: self.deflate,
            // The reactor's read buffer: a payload that large is never whole in one read.
            large_payload: pool::LARGE,
            // Idle pooled buffers count in the budget: let them take a quarter of it at most.
            pool_cap: pool::CAP.min(self.max_buffered / 4),
        }
    }
}

/// Where Redis is and how the bridge uses it (see [`crate::Workers::redis`]). Builds without
/// the `redis` feature accept it but refuse to start with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prepended to a topic to name its Redis channel.
    pub prefix: String,
    /// Publications waiting for the publisher thread; beyond it they are dropped and counted.
    pub queue: usize,
    /// Most PUBLISH commands in one pipelined round trip.
    pub batch: usize,
}

impl RedisConfig {
    /// `url` with the default prefix `wsloop:`, a queue of 65 536 and batches of 256.
    pub fn new(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.to_owned(),
            prefix: "wsloop:".to_owned(),
            queue: 65_536,
            batch: 256,
        }
    }
}
