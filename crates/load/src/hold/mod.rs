//! `hold`: open many idle connections, keep them alive with pings, and measure what they cost
//! the server (resident memory before and after opening them).
//!
//! With `deflate`, each connection offers permessage-deflate and, once open, sends one
//! message and reads its echo before idling: a real chat connection has spoken at least once,
//! and only then has the server made its deflate contexts (per connection with context
//! takeover), so only then does the memory per connection include them.

mod report;

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wsloop_proto::frame::OpCode;

use crate::client::{ConnConfig, Event};
use crate::driver::{Driver, End, Handler};
use crate::net::{default_sources, Target};
use crate::open::{open_all, OpenPlan};
use crate::payload::{self, Payload};
use crate::stats::{open_files_limit, rss_kib, CpuMeter, Histogram};
use crate::verify::EchoCheck;
pub use report::HoldReport;

/// Options of [`run_hold`].
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// `ws://` URL on a loopback address.
    pub url: String,
    /// Connections to open (one process can hold about its open-file limit minus a few).
    pub conns: usize,
    /// How long to hold them once open.
    pub duration: Duration,
    /// The server's PID: report its memory before/after and per connection.
    pub server_pid: Option<u32>,
    /// Seconds between keep-alive ping rounds.
    pub ping_every: Duration,
    /// First source address to bind before connecting (by default 127.0.0.1 from
    /// [`SPREAD_FROM`](super::net::SPREAD_FROM) connections on); use different bases to run
    /// several processes side by side.
    pub source_base: Option<Ipv4Addr>,
    /// Connections per source address.
    pub per_source: usize,
    /// Most handshakes in progress at once while opening.
    pub max_pending: usize,
    /// Offer permessage-deflate, and send one message per connection once all are open.
    pub deflate: bool,
    /// What that message contains.
    pub payload: Payload,
    /// Its size in bytes (at most 1 MiB).
    pub size: usize,
}

/// Largest message `hold` sends: the point is memory at rest, not throughput.
pub const MAX_HOLD_SIZE: usize = 1 << 20;

impl Default for HoldOptions {
    fn default() -> Self {
        HoldOptions {
            url: "ws://127.0.0.1:9001/".into(),
            conns: 1000,
            duration: Duration::from_secs(10),
            server_pid: None,
            ping_every: Duration::from_secs(5),
            source_base: None,
            per_source: 20_000,
            max_pending: 256,
            deflate: false,
            payload: Payload::Text,
            size: 1024,
        }
    }
}

/// Connections pinged (or sent their message) between two turns of the loop, so that the
/// pongs already back are read and a round trip does not include the rest of the round.
const SLICE: usize = 256;

/// One held connection.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// Corpus offset of its one message (with `deflate`).
    start: usize,
    /// Its message was sent, and its echo has not come back.
    awaiting_echo: bool,
    /// The echo in progress.
    check: EchoCheck,
    /// The last ping's number, and whether its pong came back.
    ping_seq: u64,
    answered: bool,
}

/// The hold mode's handler.
struct Hold {
    conns: Vec<Held>,
    /// What the messages are cut from (with `deflate`).
    corpus: Vec<u8>,
    size: usize,
    base: Instant,
    hist: Histogram,
    pings_sent: u64,
    pongs: u64,
    dropped: usize,
    deflate_conns: usize,
    messages_sent: usize,
    echoes_ok: usize,
    echo_mismatches: usize,
    first_error: Option<String>,
}

impl Hold {
    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Whether every live connection has its echo back.
    fn all_echoed(&self, driver: &Driver) -> bool {
        let waiting = |(id, c): (usize, &Held)| c.awaiting_echo && driver.is_live(id);
        !self.conns.iter().enumerate().any(waiting)
    }

    /// Whether every live connection answered the last ping.
    fn all_answered(&self, driver: &Driver) -> bool {
        let waiting = |(id, c): (usize, &Held)| !c.answered && driver.is_live(id);
        !self.conns.iter().enumerate().any(waiting)
    }

    /// A pong: `[seq, sent_ns]`, both big-endian.
    fn on_pong(&mut self, id: usize, payload: &[u8], now: Instant) {
        let word = |range: std::ops::Range<usize>| {
            let bytes = payload.get(range).and_then(|b| <[u8; 8]>::try_from(b).ok());
            bytes.map(u64::from_be_bytes)
        };
        let (Some(seq), Some(sent)) = (word(0..8), word(8..16)) else {
            return;
        };
        let now = self.ns(now);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if seq == c.ping_seq && !c.answered {
            c.answered = true;
            self.pongs += 1;
            self.hist.record(now.saturating_sub(sent));
        }
    }
}

impl Handler for Hold {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        match event {
            Event::Opened { deflate } => self.deflate_conns += usize::from(deflate.is_some()),
            Event::Data(data) => {
                let Some(c) = self.conns.get_mut(id) else {
                    return Ok(());
                };
                let expected = self.corpus.get(c.start..c.start + self.size);
                let verdict = c
                    .check
                    .piece(expected.unwrap_or_default(), OpCode::Text, &data);
                if let Some(verdict) = verdict {
                    if c.awaiting_echo && verdict.intact {
                        self.echoes_ok += 1;
                    } else {
                        self.echo_mismatches += 1;
                    }
                    c.awaiting_echo = false;
                }
            }
            Event::Pong(payload) => self.on_pong(id, payload, now),
            Event::Close { code, .. } => {
                return Err(format!("server closed the connection ({code})"))
            }
        }
        Ok(())
    }

    fn on_end(&mut self, _id: usize, end: End) {
        self.dropped += 1;
        self.first_error.get_or_insert_with(|| end.to_string());
    }
}

/// Sends every open connection its one message (compressed where deflate was accepted).
fn send_messages(driver: &mut Driver, hold: &mut Hold) -> io::Result<()> {
    for id in 0..hold.conns.len() {
        if driver.is_open(id) {
            let start = hold.conns.get(id).map_or(0, |c| c.start);
            let message = hold
                .corpus
                .get(start..start + hold.size)
                .unwrap_or_default();
            driver.with_conn(id, |conn, shared| conn.send(OpCode::Text, message, shared));
            hold.messages_sent += 1;
            if let Some(c) = hold.conns.get_mut(id) {
                c.awaiting_echo = true;
            }
        }
        if id % SLICE == SLICE - 1 {
            driver.turn(hold, Duration::ZERO)?;
        }
    }
    Ok(())
}

/// Sends ping `seq` (payload: the sequence number and the send time) on every connection.
fn ping_all(driver: &mut Driver, hold: &mut Hold, seq: u64) -> io::Result<()> {
    for id in 0..hold.conns.len() {
        if driver.is_open(id) {
            let mut payload = [0u8; 16];
            let (a, b) = payload.split_at_mut(8);
            a.copy_from_slice(&seq.to_be_bytes());
            b.copy_from_slice(&hold.ns(Instant::now()).to_be_bytes());
            driver.with_conn(id, |conn, shared| conn.ping(&payload, &mut shared.rng));
            hold.pings_sent += 1;
            if let Some(c) = hold.conns.get_mut(id) {
                c.ping_seq = seq;
                c.answered = false;
            }
        }
        if id % SLICE == SLICE - 1 {
            driver.turn(hold, Duration::ZERO)?;
        }
    }
    driver.turn(hold, Duration::ZERO)
}

/// Runs the hold test.
///
/// This process needs one descriptor per connection and does not raise its own open-file
/// limit: run `ulimit -n <hard limit>` first; the report shows the limit in force.
///
/// # Errors
/// A bad or non-loopback URL, or a failing poller.
pub fn run_hold(opts: &HoldOptions) -> io::Result<HoldReport> {
    let target = Target::parse(&opts.url)?;
    let invalid = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()));
    if opts.conns == 0 {
        return invalid("--conns must be at least 1");
    }
    if opts.size > MAX_HOLD_SIZE {
        return invalid("--size is limited to 1 MiB in hold");
    }
    if opts.source_base.is_some_and(|base| !base.is_loopback()) {
        return invalid("--source-base must be 127.x.x.x");
    }
    let fd_limit = open_files_limit();
    if let Some(limit) = fd_limit {
        if opts.conns as u64 + 16 > limit {
            log::warn!(
                "{} connections exceed this process's open-file limit ({limit}); run `ulimit -n` higher first",
                opts.conns
            );
        }
    }
    let mut driver = Driver::new(64 * 1024)?;
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let server_rss_before_kib = opts.server_pid.and_then(rss_kib);
    let corpus = if opts.deflate {
        payload::corpus(opts.payload, false, opts.size, &mut driver.shared().rng)
    } else {
        Vec::new()
    };
    let mut hold = Hold {
        conns: (0..opts.conns)
            .map(|id| Held {
                start: payload::first_start(id, opts.size, corpus.len()),
                answered: true,
                ..Held::default()
            })
            .collect(),
        corpus,
        size: opts.size,
        base: Instant::now(),
        hist: Histogram::new(),
        pings_sent: 0,
        pongs: 0,
        dropped: 0,
        deflate_conns: 0,
        messages_sent: 0,
        echoes_ok: 0,
        echo_mismatches: 0,
        first_error: None,
    };

    let opening = open_all(
        &mut driver,
        &mut hold,
        std::slice::from_ref(&target),
        &OpenPlan {
            count: opts.conns,
            max_pending: opts.max_pending,
            sources: default_sources(target.addr, opts.conns, opts.source_base, opts.per_source),
            attempt_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(60) + Duration::from_millis(opts.conns as u64 * 2),
            config: ConnConfig {
                offer_deflate: opts.deflate,
                one_message: true,
                max_message: opts.size + 1,
            },
        },
    )?;
    let established = opening.established;
    let open_secs = opening.elapsed.as_secs_f64();
    let failures = opening.failures;
    let pause = |driver: &mut Driver, hold: &mut Hold, wait: Duration| {
        driver.run_until(hold, Instant::now() + wait, |_, _| false)
    };
    // Let the server finish its side of the last upgrades, then read its memory.
    pause(&mut driver, &mut hold, Duration::from_millis(200))?;
    let mut server_rss_open_kib = None;
    if opts.deflate {
        server_rss_open_kib = opts.server_pid.and_then(rss_kib);
        send_messages(&mut driver, &mut hold)?;
        let echo_end = Instant::now() + Duration::from_secs(10) + opts.duration;
        driver.run_until(&mut hold, echo_end, |h, d| h.all_echoed(d))?;
        if !hold.all_echoed(&driver) {
            hold.first_error
                .get_or_insert_with(|| "echoes still missing after the wait".into());
        }
        pause(&mut driver, &mut hold, Duration::from_millis(200))?;
    }
    let server_rss_after_kib = opts.server_pid.and_then(rss_kib);

    let hold_start = Instant::now();
    let hold_end = hold_start + opts.duration;
    let ping_every = opts.ping_every.max(Duration::from_millis(100));
    let mut next_ping = hold_start + ping_every;
    let mut seq = 0u64;
    loop {
        driver.run_until(&mut hold, next_ping.min(hold_end), |_, _| false)?;
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        seq += 1;
        ping_all(&mut driver, &mut hold, seq)?;
        next_ping = now + ping_every;
    }
    let held_secs = hold_start.elapsed().as_secs_f64();
    // The final check: every connection must answer one more ping.
    seq += 1;
    ping_all(&mut driver, &mut hold, seq)?;
    let check_end = Instant::now() + Duration::from_secs(5);
    driver.run_until(&mut hold, check_end, |h, d| h.all_answered(d))?;
    let stayed_up = hold
        .conns
        .iter()
        .enumerate()
        .filter(|(id, c)| driver.is_live(*id) && c.answered && c.ping_seq == seq)
        .count();
    let server_rss_end_kib = opts.server_pid.and_then(rss_kib);
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    driver.close_all(Duration::from_secs(5))?;

    let per_conn = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(from), Some(to)) if established > 0 => {
            Some((to as f64 - from as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    Ok(HoldReport {
        conns: opts.conns,
        established,
        failed: failures.total(),
        connect_failures: failures.connect,
        handshake_failures: failures.handshake,
        timeouts: failures.timeout,
        open_secs,
        opens_per_sec: established as f64 / open_secs.max(1e-9),
        held_secs,
        dropped: hold.dropped,
        stayed_up,
        pings_sent: hold.pings_sent,
        pongs: hold.pongs,
        ping_rtt: hold.hist.percentiles_us(),
        deflate_offered: opts.deflate,
        deflate_conns: hold.deflate_conns,
        messages_sent: hold.messages_sent,
        echoes_ok: hold.echoes_ok,
        echo_mismatches: hold.echo_mismatches,
        server_rss_before_kib,
        server_rss_open_kib,
        server_rss_after_kib,
        server_rss_per_conn_bytes: per_conn(server_rss_before_kib, server_rss_after_kib),
        server_rss_message_per_conn_bytes: per_conn(server_rss_open_kib, server_rss_after_kib),
        server_rss_end_kib,
        client_cpu_pct,
        server_cpu_pct,
        fd_limit,
        first_error: failures.first.or(hold.first_error),
    })
}
