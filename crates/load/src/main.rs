//! `wsload`: wsloop's own WebSocket load generator (loopback only, every mode bounded).
//!
//! Prints a table on stderr and exactly one JSON line on stdout. Exit code 1 when the run saw
//! mismatched echoes, errors or nothing at all; 2 on bad arguments.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wsload::{ConnectOptions, EchoOptions, FanoutOptions, HoldOptions, Payload};

/// wsloop's load generator: echo throughput, latency, held connections, connection rate and
/// broadcast fan-out, against a server on this machine (loopback addresses only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

/// The payload asked for, else text with deflate (random bytes would only show the cost of
/// failing to compress) and random without.
fn payload(asked: Option<Payload>, deflate: bool) -> Payload {
    asked.unwrap_or(if deflate {
        Payload::Text
    } else {
        Payload::Random
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

/// What the modes that send messages and wait for their echoes (`echo`, `latency`) take.
#[derive(Debug, clap::Args)]
struct MessageArgs {
    /// ws:// URL on a loopback address.
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Binary messages (default: text).
    #[arg(long)]
    binary: bool,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured seconds before (default: 1 for echo, 0.5 for latency).
    #[arg(long)]
    warmup: Option<f64>,
    /// The server's PID: report its CPU and memory too.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Offer permessage-deflate: compress messages, inflate echoes (default payload: text).
    #[arg(long)]
    deflate: bool,
    /// Payload: random, or JSON-like text (default: random, or text with --deflate).
    #[arg(long)]
    payload: Option<Payload>,
}

impl MessageArgs {
    /// The library's options, with the mode's connection count, messages in flight and
    /// default warm-up.
    fn options(self, conns: usize, inflight: usize, warmup: f64) -> EchoOptions {
        EchoOptions {
            url: self.url,
            conns,
            inflight,
            size: self.size,
            binary: self.binary,
            duration: secs(self.duration),
            warmup: secs(self.warmup.unwrap_or(warmup)),
            server_pid: self.server_pid,
            deflate: self.deflate,
            payload: payload(self.payload, self.deflate),
        }
    }
}

/// The `hold` mode's arguments.
#[derive(Debug, clap::Args)]
struct HoldArgs {
    /// ws:// URL on a loopback address.
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Seconds to hold them once open.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The server's PID: report its RSS before/after and per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds between keep-alive ping rounds.
    #[arg(long, default_value_t = 5.0)]
    ping_every: f64,
    /// First source address to bind, with explicit ports from 10000 (127.x.x.x); by
    /// default 127.0.0.1 from 4096 connections on, else the kernel's choice. A new
    /// address every --per-source connections.
    #[arg(long)]
    source_base: Option<Ipv4Addr>,
    /// Connections per source address.
    #[arg(long, default_value_t = 20_000)]
    per_source: usize,
    /// Most handshakes in progress at once while opening.
    #[arg(long, default_value_t = 256)]
    max_pending: usize,
    /// Offer permessage-deflate; once all are open, each connection sends one message and
    /// reads its echo (so the server has made its deflate state), then idles.
    #[arg(long)]
    deflate: bool,
    /// Payload of that message: random or JSON-like text.
    #[arg(long, default_value = "text")]
    payload: Payload,
    /// Size of that message in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

impl HoldArgs {
    fn options(self) -> HoldOptions {
        HoldOptions {
            url: self.url,
            conns: self.conns,
            duration: secs(self.duration),
            server_pid: self.server_pid,
            ping_every: secs(self.ping_every),
            source_base: self.source_base,
            per_source: self.per_source,
            max_pending: self.max_pending,
            deflate: self.deflate,
            payload: self.payload,
            size: self.size,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Closed-loop echo: N connections with K messages each in flight; msgs/s, MB/s, RTT.
    Echo {
        /// Connections.
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 16)]
        inflight: usize,
        #[command(flatten)]
        messages: MessageArgs,
    },
    /// One connection, one message at a time: round-trip time percentiles.
    Latency {
        #[command(flatten)]
        messages: MessageArgs,
    },
    /// Open N idle connections, keep them alive with pings, report how many stayed up and
    /// (with --server-pid) the server's memory per connection. Run `ulimit -n` high enough
    /// first: this process needs one descriptor per connection.
    Hold(HoldArgs),
    /// Connection lifecycles per second: TCP connect, upgrade, close handshake, TCP close.
    Connect {
        /// ws:// URL on a loopback address.
        #[arg(long, default_value = "ws://127.0.0.1:9001/")]
        url: String,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Lifecycles in parallel.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The server's PID: report its CPU too.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// One publisher at --rate msgs/s into the broadcast room, N subscribers: deliveries/s,
    /// publish->receive latency, losses.
    Fanout {
        /// ws:// URL of the room on a loopback address; repeat it (or separate URLs with
        /// commas) to spread the subscribers over several servers, round-robin.
        #[arg(
            long,
            default_value = "ws://127.0.0.1:9001/chat",
            value_delimiter = ','
        )]
        url: Vec<String>,
        /// Subscriber connections.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Messages per second published.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Payload bytes per message (at least 24).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// The server's PID: report its CPU and memory too.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

/// What every mode's report offers the binary.
trait Printable {
    fn table(&self) -> String;
    fn to_json(&self) -> String;
    fn ok(&self) -> bool;
}

impl Printable for wsload::EchoReport {
    fn table(&self) -> String {
        wsload::EchoReport::table(self)
    }
    fn to_json(&self) -> String {
        wsload::EchoReport::to_json(self)
    }
    fn ok(&self) -> bool {
        wsload::EchoReport::ok(self)
    }
}

macro_rules! printable {
    ($($t:ty),*) => {$(
        impl Printable for $t {
            fn table(&self) -> String {
                <$t>::table(self)
            }
            fn to_json(&self) -> String {
                <$t>::to_json(self)
            }
            fn ok(&self) -> bool {
                <$t>::ok(self)
            }
        }
    )*};
}

printable!(
    wsload::HoldReport,
    wsload::ConnectReport,
    wsload::FanoutReport
);

fn emit<R: Printable>(result: std::io::Result<R>) -> ExitCode {
    match result {
        Ok(report) => {
            eprint!("{}", report.table());
            println!("{}", report.to_json());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wsload: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Args::parse().mode {
        Mode::Echo {
            conns,
            inflight,
            messages,
        } => emit(wsload::run_echo(&messages.options(conns, inflight, 1.0))),
        Mode::Latency { messages } => emit(wsload::run_latency(&messages.options(1, 1, 0.5))),
        Mode::Hold(args) => emit(wsload::run_hold(&args.options())),
        Mode::Connect {
            url,
            duration,
            concurrency,
            server_pid,
        } => emit(wsload::run_connect(&ConnectOptions {
            url,
            duration: secs(duration),
            concurrency,
            server_pid,
        })),
        Mode::Fanout {
            url,
            subscribers,
            rate,
            size,
            duration,
            server_pid,
        } => emit(wsload::run_fanout(&FanoutOptions {
            urls: url,
            subscribers,
            rate,
            size,
            duration: secs(duration),
            server_pid,
        })),
    }
}
