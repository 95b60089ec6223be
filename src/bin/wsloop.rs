//! `wsloop`: the server binary. Echoes every message on any path; `/chat` (or every path with
//! `--chat`) relays text to every chat member. Serves the demo page on the same port.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use wsloop::protocol::deflate::DeflateConfig;
use wsloop::protocol::Limits;
use wsloop::server::config::{Cidr, ForwardedHeader, ProxyMode, RatePolicy};
use wsloop::server::supervisor::{Supervisor, SUPERVISED_ADDR};
use wsloop::server::{RedisConfig, RoomPolicy, Workers};
use wsloop::{Config, EchoChat, TlsConfig, TlsError};

/// A fast, strict RFC 6455 WebSocket server on one mio reactor.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: SocketAddr,
    /// Largest message (all fragments together), in bytes; larger ones close with 1009.
    #[arg(long, default_value_t = 16 << 20)]
    max_message: u64,
    /// Largest single frame, in bytes (defaults to --max-message).
    #[arg(long)]
    max_frame: Option<u64>,
    /// Largest HTTP request head, in bytes; larger ones get 431.
    #[arg(long, default_value_t = 8192)]
    max_head: usize,
    /// Most concurrent connections in the process (all workers together); beyond it new
    /// connections get 503.
    #[arg(long, default_value_t = 100_000)]
    max_conns: usize,
    /// Per-connection send-queue limit in bytes: above it reading pauses, and publications
    /// follow --slow-consumer (judged by what the socket refused besides the frame it is in the
    /// middle of receiving).
    #[arg(long, default_value_t = 1 << 20)]
    max_backpressure: usize,
    /// What a publication does to a subscriber over --max-backpressure, for rooms without a
    /// policy of their own: close (1008), drop-newest (alias: drop), drop-oldest, latest-only.
    #[arg(long, default_value = "close")]
    slow_consumer: RoomPolicy,
    /// Process-wide budget in bytes (all workers together) for send queues, request heads,
    /// partial messages, input held back, deflate contexts and TLS sessions; over it, upgrades get 503 and the largest holders are
    /// closed with 1013
    /// [default: 32 × (--max-message + --max-backpressure)].
    #[arg(long)]
    max_buffered: Option<usize>,
    /// Seconds allowed from accept to a complete request head.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Seconds of silence before the server pings (0 disables pings).
    #[arg(long, default_value_t = 30.0)]
    ping_interval: f64,
    /// Seconds of silence after which a connection is dropped as dead (0 disables).
    #[arg(long, default_value_t = 75.0)]
    idle_timeout: f64,
    /// Seconds to wait for the peer's close frame after ours.
    #[arg(long, default_value_t = 5.0)]
    close_timeout: f64,
    /// Seconds a graceful shutdown (SIGINT/SIGTERM) waits for close handshakes.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Folder served over plain HTTP (the embedded demo page when it does not exist).
    #[arg(long, default_value = "html")]
    static_dir: PathBuf,
    /// Origin allowed to upgrade besides the same-origin default (repeatable; an origin like
    /// `https://app.example` or a host; `*` turns the check off). Requests without Origin
    /// (non-browser clients) are always allowed.
    #[arg(long)]
    allow_origin: Vec<String>,
    /// Handshakes admitted per second, e.g. `200` or `200/1000` (rate/burst); over it new
    /// connections get 503 with a jittered Retry-After.
    #[arg(long, value_parser = parse_rate)]
    max_handshake_rate: Option<(u64, u64)>,
    /// Upgraded connections per client address in the process (all workers together), the
    /// address after PROXY / --forwarded-header.
    #[arg(long)]
    max_conns_per_ip: Option<usize>,
    /// Messages per second each connection may send (1 s of burst).
    #[arg(long)]
    max_msg_rate: Option<u64>,
    /// Bytes per second each connection may send (1 s of burst).
    #[arg(long)]
    max_bytes_rate: Option<u64>,
    /// Over --max-msg-rate / --max-bytes-rate: `pause` reading until tokens return, or `close`
    /// with 1008.
    #[arg(long, default_value = "pause", value_parser = ["pause", "close"])]
    rate_limit_policy: String,
    /// PROXY protocol v1/v2 header on each connection: `required` or `optional`.
    #[arg(long, value_parser = ["required", "optional"])]
    proxy_protocol: Option<String>,
    /// Peers (CIDR, repeatable) whose PROXY header, and --forwarded-header, are believed.
    /// Default: loopback only for PROXY; forwarding headers ignored.
    #[arg(long)]
    trusted_proxy: Vec<Cidr>,
    /// The one forwarding header the --trusted-proxy peers write, `x-forwarded-for` or
    /// `forwarded`, believed from them for the client address; the other is ignored. Unset:
    /// no forwarding header is believed.
    #[arg(long, requires = "trusted_proxy")]
    forwarded_header: Option<ForwardedHeader>,
    /// Do not serve /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Serve /metrics on this address instead of the main port.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Put every connection in the chat room (default: only connections on /chat).
    #[arg(long)]
    chat: bool,
    /// Seconds between stats log lines (0 disables).
    #[arg(long, default_value_t = 0.0)]
    stats_interval: f64,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    #[arg(long)]
    deflate: bool,
    /// Largest compression window, in bits (9-15), for the server and asked of clients.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u8).range(9..=15))]
    deflate_window_bits: u8,
    /// Keep deflate contexts across messages (better ratio; ~380 KiB per connection). Off:
    /// one shared context pair per reactor.
    #[arg(long)]
    deflate_context_takeover: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64)]
    deflate_min_size: usize,
    /// zlib compression level (0-9).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    deflate_level: u32,
    /// Reactors (threads) sharing the port through SO_REUSEPORT, each with its own
    /// connections and timers; publications reach every worker's subscribers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Bind with SO_REUSEPORT so several wsloop processes can share the port.
    #[arg(long)]
    reuse_port: bool,
    /// Run this many wsloop processes on the port (SO_REUSEPORT) under a small supervisor
    /// that restarts any that dies and passes SIGTERM/SIGINT on; each has its own open-file
    /// limit. Rooms span them only through --redis.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    processes: u16,
    /// Share rooms with other wsloop processes through this Redis, e.g.
    /// redis://127.0.0.1:6379 (at-most-once between processes).
    #[arg(long)]
    redis: Option<String>,
    /// Prefix of the Redis channel of each topic.
    #[arg(long, default_value = "wsloop:")]
    redis_prefix: String,
    /// Publications waiting to go to Redis; beyond it they are dropped and counted.
    #[arg(long, default_value_t = 65_536)]
    redis_queue: usize,
    /// PEM certificate chain (leaf first): the port then speaks only TLS (wss://, https://).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    fn config(&self) -> Result<Config, TlsError> {
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
            static_dir: self.static_dir.clone(),
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

    fn redis(&self) -> Option<RedisConfig> {
        self.redis.as_deref().map(|url| RedisConfig {
            prefix: self.redis_prefix.clone(),
            queue: self.redis_queue,
            ..RedisConfig::new(url)
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    match std::env::var(SUPERVISED_ADDR).ok().map(|a| a.parse()) {
        // A child of `--processes`: serve on the supervisor's address.
        Some(Ok(addr)) => {
            args.addr = addr;
            args.reuse_port = true;
        }
        Some(Err(e)) => {
            eprintln!("wsloop: {SUPERVISED_ADDR}: {e}");
            return ExitCode::FAILURE;
        }
        None if args.processes > 1 => return supervise(&args),
        None => {}
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wsloop: TLS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let chat = args.chat;
    let workers = Workers::new(config)
        .count(usize::from(args.workers))
        .redis(args.redis());
    let on_listening = |addr: SocketAddr, from_disk: bool| {
        let page = if from_disk {
            format!("files from {}", args.static_dir.display())
        } else {
            "the embedded demo page".to_owned()
        };
        let scale = match (args.workers, &args.redis) {
            (1, None) => String::new(),
            (n, None) => format!(", {n} workers"),
            (n, Some(url)) => format!(", {n} workers, rooms shared through {url}"),
        };
        println!("wsloop listening on {addr} (open {scheme}://{addr}/ for {page}{scale})");
        let _ = std::io::stdout().flush();
    };
    match workers.run(move |_| EchoChat::new(chat), on_listening) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsloop: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// `--processes N`: start N copies of this program on one port and keep them running.
fn supervise(args: &Args) -> ExitCode {
    if args.metrics_addr.is_some() {
        eprintln!(
            "wsloop: --metrics-addr cannot be used with --processes: every process would bind it"
        );
        return ExitCode::FAILURE;
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("wsloop: cannot find this program to start it again: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("wsloop: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let supervisor = Supervisor {
        program,
        args: std::env::args_os().skip(1).collect(),
        processes: usize::from(args.processes),
        addr: args.addr,
    };
    let result = supervisor.run(&stop, |event| {
        // Not println!: a closed stdout must not take the supervisor (and its duty to stop
        // the children) down.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "wsloop supervisor: {event}").and_then(|()| out.flush());
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsloop: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}
