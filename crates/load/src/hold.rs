//! `hold`: open many idle connections, keep them alive with pings, and measure what they cost
//! the server (resident memory before and after opening them).
//!
//! With `deflate`, each connection offers permessage-deflate and, once open, sends one
//! message and reads its echo before idling: a real chat connection has spoken at least once,
//! and only then has the server made its deflate contexts (per connection with context
//! takeover), so only then does the memory per connection include them.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll};

use super::client::{
    encode_frame, encode_frame_rsv, ClientDecoder, XorShift, CLIENT_DEFLATE_LEVEL,
};
use super::net::{close_all, default_sources, open_many, OpenPlan, Target};
use super::payload::{self, Payload};
use super::report::{JsonLine, Table};
use super::stats::{open_files_limit, rss_kib, CpuMeter, Histogram, Percentiles};
use wsloop_proto::deflate::{Deflater, Inflater};
use wsloop_proto::frame::OpCode;

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

/// What [`run_hold`] measured.
#[derive(Debug, Clone, Default)]
pub struct HoldReport {
    /// Connections requested.
    pub conns: usize,
    /// Connections that completed the upgrade.
    pub established: usize,
    /// Connections that failed to open (connect, upgrade or timeout).
    pub failed: u64,
    /// Of which: TCP connect or socket failures.
    pub connect_failures: u64,
    /// Of which: refused or broken upgrades.
    pub handshake_failures: u64,
    /// Of which: attempts out of time.
    pub timeouts: u64,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Upgrades completed per second while opening.
    pub opens_per_sec: f64,
    /// Seconds held.
    pub held_secs: f64,
    /// Connections closed or broken while held.
    pub dropped: usize,
    /// Connections that answered the final ping.
    pub stayed_up: usize,
    /// Keep-alive pings sent.
    pub pings_sent: u64,
    /// Matching pongs received.
    pub pongs: u64,
    /// Ping round trips.
    pub ping_rtt: Percentiles,
    /// permessage-deflate was offered (and one message sent per connection).
    pub deflate_offered: bool,
    /// Connections on which the server accepted it.
    pub deflate_conns: usize,
    /// Messages sent, one per connection.
    pub messages_sent: usize,
    /// Echoes that came back intact.
    pub echoes_ok: usize,
    /// Echoes that differed from the message.
    pub echo_mismatches: usize,
    /// Server RSS before opening, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with every connection open, before the messages (with `deflate`), KiB.
    pub server_rss_open_kib: Option<u64>,
    /// Server RSS with every connection open (and, with `deflate`, its message echoed), KiB.
    pub server_rss_after_kib: Option<u64>,
    /// (after − before) / established, bytes.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// (after − open) / established, bytes: what one message (deflate contexts, buffers)
    /// added to each connection.
    pub server_rss_message_per_conn_bytes: Option<f64>,
    /// Server RSS at the end of the hold, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// The load generator's CPU over the whole run, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU over the whole run, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// This process's open-file limit.
    pub fd_limit: Option<u64>,
    /// The first error seen.
    pub first_error: Option<String>,
}

impl HoldReport {
    /// Every connection opened, echoed its message intact (with `deflate`) and answered
    /// the final ping.
    pub fn ok(&self) -> bool {
        self.established == self.conns
            && self.stayed_up == self.conns
            && self.conns > 0
            && self.echoes_ok == self.messages_sent
            && self.echo_mismatches == 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", "hold")
            .int("conns", self.conns as u64)
            .int("established", self.established as u64)
            .int("failed", self.failed)
            .int("connect_failures", self.connect_failures)
            .int("handshake_failures", self.handshake_failures)
            .int("timeouts", self.timeouts)
            .num("open_secs", self.open_secs)
            .num("opens_per_sec", self.opens_per_sec)
            .num("held_secs", self.held_secs)
            .int("dropped", self.dropped as u64)
            .int("stayed_up", self.stayed_up as u64)
            .int("pings_sent", self.pings_sent)
            .int("pongs", self.pongs)
            .num("ping_p50_us", self.ping_rtt.p50_us)
            .num("ping_p99_us", self.ping_rtt.p99_us)
            .bool("deflate_offered", self.deflate_offered)
            .int("deflate_conns", self.deflate_conns as u64)
            .int("messages_sent", self.messages_sent as u64)
            .int("echoes_ok", self.echoes_ok as u64)
            .int("echo_mismatches", self.echo_mismatches as u64)
            .opt_int("server_rss_before_kib", self.server_rss_before_kib)
            .opt_int("server_rss_open_kib", self.server_rss_open_kib)
            .opt_int("server_rss_after_kib", self.server_rss_after_kib)
            .opt_num("server_rss_per_conn_bytes", self.server_rss_per_conn_bytes)
            .opt_num(
                "server_rss_message_per_conn_bytes",
                self.server_rss_message_per_conn_bytes,
            )
            .opt_int("server_rss_end_kib", self.server_rss_end_kib)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_int("fd_limit", self.fd_limit)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        Table::new(format!("wsload hold: {} connections", self.conns))
            .row("established", self.established)
            .row(
                "failed (connect/upgrade/timeout)",
                format!(
                    "{} ({}/{}/{})",
                    self.failed, self.connect_failures, self.handshake_failures, self.timeouts
                ),
            )
            .row(
                "opening",
                format!(
                    "{:.2} s, {:.0} upgrades/s",
                    self.open_secs, self.opens_per_sec
                ),
            )
            .row("held", format!("{:.1} s", self.held_secs))
            .row("dropped while held", self.dropped)
            .row("answered final ping", self.stayed_up)
            .row(
                "pings / pongs",
                format!("{} / {}", self.pings_sent, self.pongs),
            )
            .row(
                "ping RTT p50 / p99",
                format!(
                    "{:.1} / {:.1} us",
                    self.ping_rtt.p50_us, self.ping_rtt.p99_us
                ),
            )
            .opt_row(
                "deflate accepted",
                self.deflate_offered
                    .then(|| format!("{} connections", self.deflate_conns)),
            )
            .opt_row(
                "messages / echoes ok / bad",
                self.deflate_offered.then(|| {
                    format!(
                        "{} / {} / {}",
                        self.messages_sent, self.echoes_ok, self.echo_mismatches
                    )
                }),
            )
            .opt_row(
                "server RSS before",
                self.server_rss_before_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS open, before messages",
                self.server_rss_open_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS all open",
                self.server_rss_after_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS per connection",
                self.server_rss_per_conn_bytes.map(|b| format!("{b:.0} B")),
            )
            .opt_row(
                "of which its message",
                self.server_rss_message_per_conn_bytes
                    .map(|b| format!("{b:.0} B")),
            )
            .opt_row(
                "server RSS at end",
                self.server_rss_end_kib.map(|k| format!("{k} KiB")),
            )
            .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
            .opt_row(
                "server CPU",
                self.server_cpu_pct.map(|c| format!("{c:.1} %")),
            )
            .opt_row("open-file limit", self.fd_limit)
            .opt_row("first error", self.first_error.as_deref())
            .render()
    }
}

/// One held connection.
struct Held {
    stream: Option<TcpStream>,
    decoder: ClientDecoder,
    control: Vec<u8>,
    /// Corpus offset of its one message (with `deflate`).
    start: usize,
    /// The window the server allows this client to compress with, when it accepted
    /// permessage-deflate.
    deflate: Option<u8>,
    /// Bytes of its message not yet written.
    out: Vec<u8>,
    /// Payload of the echo so far, and whether it is compressed.
    echo: Vec<u8>,
    echo_compressed: bool,
    /// The echo came back (intact or not).
    echoed: bool,
    /// The last ping's number, and whether its pong came back.
    ping_seq: u64,
    answered: bool,
    key: [u8; 4],
}

/// Runs the hold test.
///
/// Raising the open-file limit needs `setrlimit`, which std does not offer without `unsafe`:
/// run `ulimit -n <hard limit>` first; the report shows the limit in force.
///
/// # Errors
/// A bad or non-loopback URL, or a failing poller.
pub fn run_hold(opts: &HoldOptions) -> io::Result<HoldReport> {
    let target = Target::parse(&opts.url)?;
    if opts.conns == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--conns must be at least 1",
        ));
    }
    if opts.size > MAX_HOLD_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--size is limited to 1 MiB in hold",
        ));
    }
    if let Some(base) = opts.source_base {
        if !base.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--source-base must be 127.x.x.x",
            ));
        }
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
    let mut poll = Poll::new()?;
    let mut rng = XorShift::from_entropy();
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let server_rss_before_kib = opts.server_pid.and_then(rss_kib);

    let sources = default_sources(target.addr, opts.conns, opts.source_base, opts.per_source);
    let opened = open_many(
        &mut poll,
        std::slice::from_ref(&target),
        &OpenPlan {
            count: opts.conns,
            max_pending: opts.max_pending,
            sources,
            attempt_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(60) + Duration::from_millis(opts.conns as u64 * 2),
            deflate: opts.deflate,
        },
        &mut rng,
    )?;
    let established = opened.established();
    let open_secs = opened.elapsed.as_secs_f64();
    let failures = opened.failures.clone();
    let mut first_error = failures.first.clone();
    let deflate_conns = opened
        .conns
        .iter()
        .flatten()
        .filter(|o| o.deflate.is_some());
    let deflate_conns = deflate_conns.count();
    let corpus = if opts.deflate {
        payload::corpus(opts.payload, false, opts.size, &mut rng)
    } else {
        Vec::new()
    };
    let mut conns: Vec<Held> = opened
        .conns
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let deflate = o
                .as_ref()
                .and_then(|o| o.deflate)
                .map(|p| p.client_max_window_bits.unwrap_or(15));
            Held {
                stream: o.map(|o| o.stream),
                decoder: ClientDecoder::with_deflate(deflate.is_some()),
                control: Vec::new(),
                start: payload::first_start(i, opts.size, corpus.len()),
                deflate,
                out: Vec::new(),
                echo: Vec::new(),
                echo_compressed: false,
                echoed: false,
                ping_seq: 0,
                answered: true,
                key: rng.mask_key(),
            }
        })
        .collect();

    let mut state = HoldState {
        hist: Histogram::new(),
        pings_sent: 0,
        pongs: 0,
        dropped: 0,
        base: Instant::now(),
        buf: vec![0u8; 64 * 1024],
        frame: Vec::with_capacity(32),
        events: Events::with_capacity(1024),
        first_error: None,
        messages: Messages {
            corpus,
            size: opts.size,
            sent: 0,
            ok: 0,
            mismatches: 0,
            deflater: None,
            inflater: None,
        },
    };
    // Let the server finish its side of the last upgrades, then read its memory.
    state.pump(&mut poll, &mut conns, Duration::from_millis(200))?;
    let mut server_rss_open_kib = None;
    if opts.deflate {
        server_rss_open_kib = opts.server_pid.and_then(rss_kib);
        state.send_messages(&mut poll, &mut conns)?;
        let echo_end = Instant::now() + Duration::from_secs(10) + opts.duration;
        while conns.iter().any(|c| c.stream.is_some() && !c.echoed) {
            let left = echo_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.note(|| "echoes still missing after the wait".into());
                break;
            }
            state.pump(&mut poll, &mut conns, left.min(Duration::from_millis(50)))?;
        }
        state.pump(&mut poll, &mut conns, Duration::from_millis(200))?;
    }
    let server_rss_after_kib = opts.server_pid.and_then(rss_kib);

    let hold_start = Instant::now();
    let hold_end = hold_start + opts.duration;
    let ping_every = opts.ping_every.max(Duration::from_millis(100));
    let mut next_ping = hold_start + ping_every;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        if now >= next_ping {
            seq += 1;
            state.ping_all(&mut poll, &mut conns, seq)?;
            next_ping = now + ping_every;
        }
        let until = next_ping.min(hold_end);
        state.pump(&mut poll, &mut conns, until.saturating_duration_since(now))?;
    }
    let held_secs = hold_start.elapsed().as_secs_f64();
    // The final check: every connection must answer one more ping.
    seq += 1;
    state.ping_all(&mut poll, &mut conns, seq)?;
    let check_end = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = conns
            .iter()
            .filter(|c| c.stream.is_some() && !c.answered)
            .count();
        let now = Instant::now();
        if waiting == 0 || now >= check_end {
            break;
        }
        state.pump(
            &mut poll,
            &mut conns,
            Duration::from_millis(50).min(check_end - now),
        )?;
    }
    let stayed_up = conns
        .iter()
        .filter(|c| c.stream.is_some() && c.answered && c.ping_seq == seq)
        .count();
    let server_rss_end_kib = opts.server_pid.and_then(rss_kib);
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());

    let mut streams: Vec<Option<TcpStream>> = conns.iter_mut().map(|c| c.stream.take()).collect();
    close_all(&mut poll, &mut streams, &mut rng, Duration::from_secs(5));

    if first_error.is_none() {
        first_error = state.first_error.take();
    }
    let server_rss_per_conn_bytes = match (server_rss_before_kib, server_rss_after_kib) {
        (Some(before), Some(after)) if established > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    let server_rss_message_per_conn_bytes = match (server_rss_open_kib, server_rss_after_kib) {
        (Some(open), Some(after)) if established > 0 => {
            Some((after as f64 - open as f64) * 1024.0 / established as f64)
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
        dropped: state.dropped,
        stayed_up,
        pings_sent: state.pings_sent,
        pongs: state.pongs,
        ping_rtt: state.hist.percentiles_us(),
        deflate_offered: opts.deflate,
        deflate_conns,
        messages_sent: state.messages.sent,
        echoes_ok: state.messages.ok,
        echo_mismatches: state.messages.mismatches,
        server_rss_before_kib,
        server_rss_open_kib,
        server_rss_after_kib,
        server_rss_per_conn_bytes,
        server_rss_message_per_conn_bytes,
        server_rss_end_kib,
        client_cpu_pct,
        server_cpu_pct,
        fd_limit,
        first_error,
    })
}

struct HoldState {
    hist: Histogram,
    pings_sent: u64,
    pongs: u64,
    dropped: usize,
    base: Instant,
    buf: Vec<u8>,
    frame: Vec<u8>,
    events: Events,
    first_error: Option<String>,
    messages: Messages,
}

/// The one message per connection (with `deflate`) and its echoes.
struct Messages {
    /// What the messages are cut from.
    corpus: Vec<u8>,
    size: usize,
    sent: usize,
    ok: usize,
    mismatches: usize,
    /// One context pair for all connections, reset after each message: a connection's first
    /// message is compressed from an empty context with or without context takeover, so
    /// the load generator needs no context per connection.
    /// (window bits, compressor): remade if a server answers with another window.
    deflater: Option<(u8, Deflater)>,
    inflater: Option<Inflater>,
}

impl Messages {
    /// Encodes `conn`'s message into its `out` (compressed where deflate was accepted).
    fn encode(&mut self, conn: &mut Held) {
        let message = self
            .corpus
            .get(conn.start..conn.start + self.size)
            .unwrap_or_default();
        conn.out.clear();
        if let Some(bits) = conn.deflate {
            let mut packed = Vec::with_capacity(self.size / 2 + 64);
            if self.deflater.as_ref().is_some_and(|(b, _)| *b != bits) {
                self.deflater = None;
            }
            let (_, deflater) = self
                .deflater
                .get_or_insert_with(|| (bits, Deflater::new(bits, CLIENT_DEFLATE_LEVEL)));
            deflater.compress(message, &mut packed, true);
            encode_frame_rsv(&mut conn.out, OpCode::Text, true, &packed, conn.key);
        } else {
            encode_frame(&mut conn.out, OpCode::Text, message, conn.key);
        }
        self.sent += 1;
    }

    /// A whole echo arrived in `conn.echo`: inflate it if need be and compare.
    fn check(&mut self, conn: &mut Held) -> Result<(), String> {
        let echo = if conn.echo_compressed {
            let mut out = Vec::new();
            self.inflater
                .get_or_insert_with(Inflater::new)
                .inflate(&conn.echo, &mut out, self.size + 1, true)
                .map_err(|e| format!("inflating an echo: {e}"))?;
            out
        } else {
            std::mem::take(&mut conn.echo)
        };
        let expected = self.corpus.get(conn.start..conn.start + self.size);
        if conn.echoed || expected != Some(echo.as_slice()) {
            self.mismatches += 1;
        } else {
            self.ok += 1;
        }
        conn.echoed = true;
        conn.echo = Vec::new();
        Ok(())
    }
}

impl HoldState {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn note(&mut self, why: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    /// Sends every connection its one message (compressed where deflate was accepted).
    fn send_messages(&mut self, poll: &mut Poll, conns: &mut [Held]) -> io::Result<()> {
        const SLICE: usize = 256;
        for i in 0..conns.len() {
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            if conn.stream.is_none() {
                continue;
            }
            self.messages.encode(conn);
            if let Err(why) = write_out(conn) {
                self.drop_conn(poll, conn, || why);
            }
            if i % SLICE == SLICE - 1 {
                self.pump(poll, conns, Duration::ZERO)?;
            }
        }
        Ok(())
    }

    fn drop_conn(&mut self, poll: &mut Poll, conn: &mut Held, why: impl FnOnce() -> String) {
        if let Some(mut s) = conn.stream.take() {
            let _ = poll.registry().deregister(&mut s);
            self.dropped += 1;
            if self.first_error.is_none() {
                self.first_error = Some(why());
            }
        }
    }

    /// Sends ping `seq` (payload: the sequence number and the send time) on every connection.
    /// Pings every connection, reading the pongs already back after every few hundred
    /// pings so a round trip does not include the rest of the round's writes.
    fn ping_all(&mut self, poll: &mut Poll, conns: &mut [Held], seq: u64) -> io::Result<()> {
        const SLICE: usize = 256;
        let mut start = 0;
        while start < conns.len() {
            let end = (start + SLICE).min(conns.len());
            if let Some(slice) = conns.get_mut(start..end) {
                self.ping_slice(poll, slice, seq);
            }
            self.pump(poll, conns, Duration::ZERO)?;
            start = end;
        }
        Ok(())
    }

    fn ping_slice(&mut self, poll: &mut Poll, conns: &mut [Held], seq: u64) {
        for conn in conns.iter_mut() {
            let Some(stream) = conn.stream.as_mut() else {
                continue;
            };
            let mut payload = [0u8; 16];
            let (a, b) = payload.split_at_mut(8);
            a.copy_from_slice(&seq.to_be_bytes());
            b.copy_from_slice(&self.now_ns().to_be_bytes());
            self.frame.clear();
            encode_frame(&mut self.frame, OpCode::Ping, &payload, conn.key);
            conn.ping_seq = seq;
            conn.answered = false;
            if !conn.out.is_empty() {
                // The message is still going out: the ping follows it, whole.
                conn.out.extend_from_slice(&self.frame);
                self.pings_sent += 1;
                continue;
            }
            match stream.write(&self.frame) {
                Ok(n) if n == self.frame.len() => self.pings_sent += 1,
                Ok(_) => self.drop_conn(poll, conn, || "ping only partly written".into()),
                Err(e) => self.drop_conn(poll, conn, || format!("ping: {e}")),
            }
        }
    }

    /// Serves events for up to `wait`: pongs, server pings, closes.
    fn pump(&mut self, poll: &mut Poll, conns: &mut [Held], wait: Duration) -> io::Result<()> {
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let result = self.pump_with(poll, conns, wait, &mut events);
        self.events = events;
        result
    }

    fn pump_with(
        &mut self,
        poll: &mut Poll,
        conns: &mut [Held],
        wait: Duration,
        events: &mut Events,
    ) -> io::Result<()> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match poll.poll(events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let Some(conn) = conns.get_mut(event.token().0) else {
                    continue;
                };
                if conn.stream.is_some() {
                    if let Err(why) = write_out(conn).and_then(|()| self.read(conn)) {
                        self.drop_conn(poll, conn, || why);
                    }
                }
            }
            if left.is_zero() {
                return Ok(());
            }
        }
    }

    fn read(&mut self, conn: &mut Held) -> Result<(), String> {
        loop {
            let Some(stream) = conn.stream.as_mut() else {
                return Ok(());
            };
            let n = match stream.read(&mut self.buf) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let mut input = self.buf.get(..n).unwrap_or_default();
            let now = self.base.elapsed().as_nanos() as u64;
            while !input.is_empty() {
                let (used, piece) = conn.decoder.decode(input).map_err(|e| e.to_string())?;
                input = input.get(used..).unwrap_or_default();
                let Some(piece) = piece else { continue };
                let opcode = piece.header.opcode;
                if !opcode.is_control() {
                    if piece.is_first() && opcode != OpCode::Continuation {
                        conn.echo_compressed = piece.header.rsv1;
                    }
                    if conn.echo.len() + piece.data.len() > self.messages.size + 1024 {
                        return Err("echo longer than the message".into());
                    }
                    conn.echo.extend_from_slice(piece.data);
                    if piece.is_last() && piece.header.fin {
                        self.messages.check(conn)?;
                    }
                    continue;
                }
                if piece.is_first() {
                    conn.control.clear();
                }
                conn.control.extend_from_slice(piece.data);
                if !piece.is_last() {
                    continue;
                }
                match opcode {
                    OpCode::Pong => {
                        let seq = conn
                            .control
                            .get(..8)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok());
                        let sent = conn
                            .control
                            .get(8..16)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok());
                        if let (Some(seq), Some(sent)) = (seq, sent) {
                            if u64::from_be_bytes(seq) == conn.ping_seq && !conn.answered {
                                conn.answered = true;
                                self.pongs += 1;
                                self.hist
                                    .record(now.saturating_sub(u64::from_be_bytes(sent)));
                            }
                        }
                    }
                    OpCode::Ping => {
                        self.frame.clear();
                        encode_frame(&mut self.frame, OpCode::Pong, &conn.control, conn.key);
                        if !conn.out.is_empty() {
                            conn.out.extend_from_slice(&self.frame);
                        } else if let Some(stream) = conn.stream.as_mut() {
                            stream
                                .write_all(&self.frame)
                                .map_err(|e| format!("pong: {e}"))?;
                        }
                    }
                    OpCode::Close => {
                        let code = match conn.control.get(..2) {
                            Some(&[a, b]) => u16::from_be_bytes([a, b]),
                            _ => 1005,
                        };
                        return Err(format!("server closed the connection ({code})"));
                    }
                    _ => {}
                }
            }
            if n < self.buf.len() {
                return Ok(());
            }
        }
    }
}

/// Writes what is left of `conn`'s message; the rest waits for the next writable event.
fn write_out(conn: &mut Held) -> Result<(), String> {
    let Some(stream) = conn.stream.as_mut() else {
        return Ok(());
    };
    let mut done = 0;
    while let Some(rest) = conn.out.get(done..).filter(|r| !r.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Err("message: wrote nothing".into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("message: {e}")),
        }
    }
    conn.out.drain(..done);
    Ok(())
}
