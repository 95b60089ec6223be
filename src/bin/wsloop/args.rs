//! The command line: every flag, and the [`Config`] and [`RedisConfig`] it makes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wsloop::{
    Cidr, Config, DeflateConfig, ForwardedHeader, Limits, ProxyMode, RatePolicy, RedisConfig,
    RoomPolicy, TlsConfig, TlsError,
};

/// A fast, strict RFC 6455 WebSocket server on one mio reactor.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: SocketAddr,
    /// Largest message (all fragments together), in bytes; larger ones close with 1009.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message: u64,
    /// Largest single frame, in bytes (defaults to --max-message).
    #[arg(long)]
    pub max_frame: Option<u64>,
    /// Largest HTTP request head, in bytes; larger ones get 431.
    #[arg(long, default_value_t = 8192)]
    pub max_head: usize,
    /// Most concurrent connections in the process (all workers together); beyond it new
    /// connections get 503.
    #[arg(long, default_value_t = 100_000)]
    pub max_conns: usize,
    /// Per-connection send-queue limit in bytes: above it reading pauses (it goes by the memory
    /// the queue holds: a large message sent back counts whole until written; reading resumes
    /// below half), and publications follow --slow-consumer (judged by what the socket refused
    /// besides the frame it is in the middle of receiving).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_backpressure: usize,
    /// What a publication does to a subscriber over --max-backpressure, for rooms without a
    /// policy of their own: close (1008), drop-newest (alias: drop), drop-oldest, latest-only.
    #[arg(long, default_value = "close")]
    pub slow_consumer: RoomPolicy,
    /// Process-wide budget in bytes (all workers together) for send queues, request heads,
    /// partial messages, input held back, deflate contexts and TLS sessions; over it, upgrades get 503 and the largest holders are
    /// closed with 1013
    /// [default: 32 × (--max-message + --max-backpressure)].
    #[arg(long)]
    pub max_buffered: Option<usize>,
    /// Seconds allowed from accept to a complete request head.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds of silence before the server pings (0 disables pings).
    #[arg(long, default_value_t = 30.0)]
    pub ping_interval: f64,
    /// Seconds of silence after which a connection is dropped as dead (0 disables).
    #[arg(long, default_value_t = 75.0)]
    pub idle_timeout: f64,
    /// Seconds to wait for the peer's close frame after ours.
    #[arg(long, default_value_t = 5.0)]
    pub close_timeout: f64,
    /// Seconds a graceful shutdown (SIGINT/SIGTERM) waits for close handshakes.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Folder served over plain HTTP (the embedded demo page when it does not exist).
    #[arg(long, default_value = "html")]
    pub static_dir: PathBuf,
    /// Origin allowed to upgrade besides the same-origin default (repeatable; an origin like
    /// `https://app.example` or a host; `*` turns the check off). Requests without Origin
    /// (non-browser clients) are always allowed.
    #[arg(long)]
    pub allow_origin: Vec<String>,
    /// Handshakes admitted per second, e.g. `200` or `200/1000` (rate/burst); over it new
    /// connections get 503 with a jittered Retry-After.
    #[arg(long, value_parser = parse_rate)]
    pub max_handshake_rate: Option<(u64, u64)>,
    /// Upgraded connections per client address in the process (all workers together), the
    /// address after PROXY / --forwarded-header.
    #[arg(long)]
    pub max_conns_per_ip: Option<usize>,
    /// Messages per second each connection may send (1 s of burst).
    #[arg(long)]
    pub max_msg_rate: Option<u64>,
    /// Bytes per second each connection may send (1 s of burst).
    #[arg(long)]
    pub max_bytes_rate: Option<u64>,
    /// Over --max-msg-rate / --max-bytes-rate: `pause` reading until tokens return, or `close`
    /// with 1008.
    #[arg(long, default_value = "pause", value_parser = ["pause", "close"])]
    pub rate_limit_policy: String,
    /// PROXY protocol v1/v2 header on each connection: `required` or `optional`.
    #[arg(long, value_parser = ["required", "optional"])]
    pub proxy_protocol: Option<String>,
    /// Peers (CIDR, repeatable) whose PROXY header, and --forwarded-header, are believed.
    /// Default: loopback only for PROXY; forwarding headers ignored.
    #[arg(long)]
    pub trusted_proxy: Vec<Cidr>,
    /// The one forwarding header the --trusted-proxy peers write, `x-forwarded-for` or
    /// `forwarded`, believed from them for the client address; the other is ignored. Unset:
    /// no forwarding header is believed.
    #[arg(long, requires = "trusted_proxy")]
    pub forwarded_header: Option<ForwardedHeader>,
    /// Do not serve /metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Serve /metrics on this address instead of the main port.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Put every connection in the chat room (default: only connections on /chat).
    #[arg(long)]
    pub chat: bool,
    /// A subprotocol the server speaks (repeatable): the first of the client's
    /// Sec-WebSocket-Protocol offers listed here is selected; none listed, none is.
    #[arg(long, value_name = "NAME")]
    pub protocol: Vec<String>,
    /// Seconds between stats log lines (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub stats_interval: f64,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    #[arg(long)]
    pub deflate: bool,
    /// Largest compression window, in bits (9-15), for the server and asked of clients.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u8).range(9..=15))]
    pub deflate_window_bits: u8,
    /// Keep deflate contexts across messages (better ratio; ~380 KiB per connection). Off:
    /// one shared context pair per reactor.
    #[arg(long)]
    pub deflate_context_takeover: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64)]
    pub deflate_min_size: usize,
    /// zlib compression level (0-9).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub deflate_level: u32,
    /// Reactors (threads) sharing the port through SO_REUSEPORT, each with its own
    /// connections and timers; publications reach every worker's subscribers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Bind with SO_REUSEPORT so several wsloop processes can share the port.
    #[arg(long)]
    pub reuse_port: bool,
    /// Run this many wsloop processes on the port (SO_REUSEPORT) under a small supervisor
    /// that restarts any that dies and passes SIGTERM/SIGINT on; each has its own open-file
    /// limit. Rooms span them only through --redis.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub processes: u16,
    /// Share rooms with other wsloop processes through this Redis, e.g.
    /// redis://127.0.0.1:6379 (at-most-once between processes). Needs the `redis` feature
    /// (on by default).
    #[arg(long)]
    pub redis: Option<String>,
    /// Prefix of the Redis channel of each topic.
    #[arg(long, default_value = "wsloop:")]
    pub redis_prefix: String,
    /// Publications waiting to go to Redis; beyond it they are dropped and counted.
    #[arg(long, default_value_t = 65_536)]
    pub redis_queue: usize,
    /// Write the serving process's id (the supervisor's under --processes) to this file at
    /// start; it is removed at exit.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first): the port then speaks only TLS (wss://, https://).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `RATE` or `RATE/BURST` (burst defaults to the rate: one second's worth).
fn parse_rate(text: &str) -> Result<(u64, u64), String> {
    let (rate, burst) = text.split_once('/').unwrap_or((text, text));
    let number = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("{s}: {e}"));
    Ok((number(rate)?, number(burst)?))
}

fn seconds(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

impl Args {
    /// The server's configuration.
    ///
    /// # Errors
    /// The TLS certificate or key cannot be loaded.
    pub fn config(&self) -> Result<Config, TlsError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
            _ => None,
        };
        Ok(Config {
            addr: self.addr,
            limits: Limits {
                max_frame: self.max_frame.unwrap_or(self.max_message),
                max_message: self.max_message,
            },
            max_head: self.max_head,
            max_conns: self.max_conns,
            max_backpressure: self.max_backpressure,
            slow_consumer: self.slow_consumer,
            max_buffered: self.max_buffered.unwrap_or_else(|| {
                let per_conn = usize::try_from(self.max_message).unwrap_or(usize::MAX / 64);
                per_conn
                    .saturating_add(self.max_backpressure)
                    .saturating_mul(32)
            }),
            handshake_timeout: seconds(self.handshake_timeout).unwrap_or(Duration::from_secs(10)),
            ping_interval: seconds(self.ping_interval),
            idle_timeout: seconds(self.idle_timeout),
            close_timeout: seconds(self.close_timeout).unwrap_or(Duration::from_secs(5)),
            drain_timeout: seconds(self.drain_timeout).unwrap_or(Duration::from_secs(10)),
            // The binary is the demo: its page, files, /stats and /metrics are on.
            static_dir: Some(self.static_dir.clone()),
            demo_page: true,
            stats: true,
            allow_origins: self.allow_origin.clone(),
            max_handshake_rate: self.max_handshake_rate,
            max_conns_per_ip: self.max_conns_per_ip,
            max_msg_rate: self.max_msg_rate,
            max_bytes_rate: self.max_bytes_rate,
            rate_policy: if self.rate_limit_policy == "close" {
                RatePolicy::Close
            } else {
                RatePolicy::Pause
            },
            proxy_protocol: match self.proxy_protocol.as_deref() {
                Some("required") => ProxyMode::Required,
                Some(_) => ProxyMode::Optional,
                None => ProxyMode::Off,
            },
            trusted_proxies: self.trusted_proxy.clone(),
            forwarded_header: self.forwarded_header,
            metrics: !self.no_metrics,
            metrics_addr: self.metrics_addr,
            stats_interval: seconds(self.stats_interval),
            deflate: self.deflate.then_some(DeflateConfig {
                server_max_window_bits: self.deflate_window_bits,
                client_max_window_bits: self.deflate_window_bits,
                context_takeover: self.deflate_context_takeover,
                min_size: self.deflate_min_size,
                level: self.deflate_level,
            }),
            reuse_port: self.reuse_port,
            tls,
        })
    }

    /// Where Redis is, with `--redis`.
    pub fn redis(&self) -> Option<RedisConfig> {
        self.redis.as_deref().map(|url| RedisConfig {
            prefix: self.redis_prefix.clone(),
            queue: self.redis_queue,
            ..RedisConfig::new(url)
        })
    }
}
