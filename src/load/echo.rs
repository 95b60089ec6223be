//! `echo` and `latency`: closed-loop echo load with every echo verified byte for byte.
//!
//! Each connection keeps `inflight` messages outstanding. Its frames are encoded and masked
//! once, before the run, into a *strip* of identical frames; sending `j` messages is one
//! `writev` of a slice of that strip (no encoding, no allocation, no copy per message). Reads
//! go into one shared buffer; every echo is compared with the expected payload as it arrives
//! (split frames chunk by chunk) and its round trip is taken from a per-connection ring of
//! send times. One clock read per read/write burst, not per message.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll};

use super::client::{encode_frame, ClientDecoder, FrameError, Piece, XorShift};
use super::net::{close_all, default_sources, open_many, OpenPlan, Target};
use super::report::{JsonLine, Table};
use super::stats::{rss_kib, CpuMeter, Histogram, Percentiles};
use crate::protocol::frame::OpCode;

/// Options of [`run_echo`].
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// `ws://` URL on a loopback address.
    pub url: String,
    /// Connections.
    pub conns: usize,
    /// Messages outstanding per connection.
    pub inflight: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Binary messages (text otherwise).
    pub binary: bool,
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// The server's PID, to report its CPU and memory.
    pub server_pid: Option<u32>,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            url: "ws://127.0.0.1:9001/".into(),
            conns: 64,
            inflight: 16,
            size: 32,
            binary: false,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            server_pid: None,
        }
    }
}

/// Options of [`run_latency`]: one connection, one message at a time.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// `ws://` URL on a loopback address.
    pub url: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Binary messages (text otherwise).
    pub binary: bool,
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// The server's PID, to report its CPU and memory.
    pub server_pid: Option<u32>,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            url: "ws://127.0.0.1:9001/".into(),
            size: 32,
            binary: false,
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            server_pid: None,
        }
    }
}

/// What [`run_echo`] or [`run_latency`] measured.
#[derive(Debug, Clone)]
pub struct EchoReport {
    /// `"echo"` or `"latency"`.
    pub mode: &'static str,
    /// Connections requested.
    pub conns: usize,
    /// Connections established.
    pub conns_open: usize,
    /// Messages in flight per connection.
    pub inflight: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Binary (true) or text messages.
    pub binary: bool,
    /// Length of the measured window in seconds.
    pub window_secs: f64,
    /// Echoes received and verified in the window.
    pub msgs: u64,
    /// `msgs` per second.
    pub msgs_per_sec: f64,
    /// Echoed payload in MB (10^6 bytes) per second, one direction.
    pub mb_per_sec: f64,
    /// Round-trip times in the window.
    pub latency: Percentiles,
    /// `read` calls that returned data, in the window (messages per call = batching).
    pub read_calls: u64,
    /// `writev` calls, in the window.
    pub write_calls: u64,
    /// Echoes whose bytes, length or type differed from what was sent (whole run).
    pub mismatches: u64,
    /// Connections that failed to open or died, and protocol errors (whole run).
    pub errors: u64,
    /// The load generator's CPU in the window, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU in the window, % of one core (with `server_pid`).
    pub server_cpu_pct: Option<f64>,
    /// The server's resident memory at the end, KiB (with `server_pid`).
    pub server_rss_kib: Option<u64>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl EchoReport {
    /// No mismatch, no error, and at least one verified echo.
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.errors == 0 && self.msgs > 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", self.mode)
            .int("conns", self.conns as u64)
            .int("conns_open", self.conns_open as u64)
            .int("inflight", self.inflight as u64)
            .int("size", self.size as u64)
            .bool("binary", self.binary)
            .num("window_secs", self.window_secs)
            .int("msgs", self.msgs)
            .num("msgs_per_sec", self.msgs_per_sec)
            .num("mb_per_sec", self.mb_per_sec)
            .num("p50_us", self.latency.p50_us)
            .num("p99_us", self.latency.p99_us)
            .num("p999_us", self.latency.p999_us)
            .num("max_us", self.latency.max_us)
            .num("mean_us", self.latency.mean_us)
            .num("msgs_per_read", per(self.msgs, self.read_calls))
            .num("msgs_per_write", per(self.msgs, self.write_calls))
            .int("mismatches", self.mismatches)
            .int("errors", self.errors)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_int("server_rss_kib", self.server_rss_kib)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let kind = if self.binary { "binary" } else { "text" };
        Table::new(format!(
            "wsload {}: {} conns x {} in flight, {} B {kind}",
            self.mode, self.conns, self.inflight, self.size
        ))
        .row("connections open", self.conns_open)
        .row("window", format!("{:.2} s", self.window_secs))
        .row("messages", self.msgs)
        .row("msgs/s", format!("{:.0}", self.msgs_per_sec))
        .row(
            "MB/s (payload, each way)",
            format!("{:.2}", self.mb_per_sec),
        )
        .row(
            "RTT p50 / p99 / p99.9",
            format!(
                "{:.1} / {:.1} / {:.1} us",
                self.latency.p50_us, self.latency.p99_us, self.latency.p999_us
            ),
        )
        .row(
            "RTT mean / max",
            format!(
                "{:.1} / {:.1} us",
                self.latency.mean_us, self.latency.max_us
            ),
        )
        .row(
            "msgs per read / per write",
            format!(
                "{:.1} / {:.1}",
                per(self.msgs, self.read_calls),
                per(self.msgs, self.write_calls)
            ),
        )
        .row("mismatches", self.mismatches)
        .row("errors", self.errors)
        .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
        .opt_row(
            "server CPU",
            self.server_cpu_pct.map(|c| format!("{c:.1} %")),
        )
        .opt_row(
            "server RSS",
            self.server_rss_kib.map(|k| format!("{k} KiB")),
        )
        .opt_row("first error", self.first_error.as_deref())
        .render()
    }
}

fn per(n: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        n as f64 / calls as f64
    }
}

/// Runs the echo benchmark.
///
/// # Errors
/// A bad or non-loopback URL, bad options, or a failing poller. Connection failures and
/// mismatches are reported, not returned.
pub fn run_echo(opts: &EchoOptions) -> io::Result<EchoReport> {
    run(opts, "echo")
}

/// Runs the latency benchmark: [`run_echo`] with one connection and one message in flight.
///
/// # Errors
/// As [`run_echo`].
pub fn run_latency(opts: &LatencyOptions) -> io::Result<EchoReport> {
    let echo = EchoOptions {
        url: opts.url.clone(),
        conns: 1,
        inflight: 1,
        size: opts.size,
        binary: opts.binary,
        duration: opts.duration,
        warmup: opts.warmup,
        server_pid: opts.server_pid,
    };
    run(&echo, "latency")
}

/// Largest payload `echo` accepts (the server's default message limit).
pub const MAX_ECHO_SIZE: usize = 16 << 20;
/// Bytes of one strip of pre-encoded frames (at least one frame).
const STRIP_BYTES: usize = 64 * 1024;
/// Memory budget for all strips; beyond it connections share payload variants.
const STRIPS_BUDGET: usize = 128 << 20;
/// Slices per `writev`.
const MAX_IOV: usize = 64;
/// Shared read buffer.
const READ_BUF: usize = 256 * 1024;

/// One payload and its pre-encoded, pre-masked frames.
struct Variant {
    /// The payload as the server must echo it.
    payload: Vec<u8>,
    /// `frames` copies of the masked frame, back to back.
    strip: Vec<u8>,
    frame_len: usize,
}

impl Variant {
    fn new(
        rng: &mut XorShift,
        index: usize,
        size: usize,
        binary: bool,
        per_strip: usize,
    ) -> Variant {
        let mut payload = vec![0u8; size];
        if binary {
            rng.fill(&mut payload);
        } else {
            const ALPHABET: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
            for (i, b) in payload.iter_mut().enumerate() {
                *b = ALPHABET
                    .get((i + index * 7) % ALPHABET.len())
                    .copied()
                    .unwrap_or(b'x');
            }
        }
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let mut frame = Vec::with_capacity(size + 14);
        encode_frame(&mut frame, opcode, &payload, rng.mask_key());
        let frame_len = frame.len();
        let mut strip = Vec::with_capacity(frame_len * per_strip);
        for _ in 0..per_strip {
            strip.extend_from_slice(&frame);
        }
        Variant {
            payload,
            strip,
            frame_len,
        }
    }
}

/// Counters shared by every connection of a run.
struct Tally {
    hist: Histogram,
    msgs: u64,
    bytes: u64,
    /// `read` and `writev` calls that moved bytes, in the window.
    reads: u64,
    writes: u64,
    measuring: bool,
    mismatches: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// One connection's state: small, no per-message allocation.
struct Conn {
    stream: Option<TcpStream>,
    variant: usize,
    decoder: ClientDecoder,
    /// Position, within one frame, of the next byte to write.
    phase: usize,
    /// Bytes queued but not yet written.
    unsent: usize,
    /// Send times (ns since the run's start) of the messages awaiting their echo.
    sent_at: VecDeque<u64>,
    /// Bytes of the echo in progress received so far.
    msg_pos: u64,
    /// The echo in progress has already differed.
    msg_bad: bool,
    /// Opcode of the echo in progress (its first frame).
    msg_opcode: Option<OpCode>,
    /// Payload of a control frame in progress.
    control: Vec<u8>,
    /// Control frames to send (a pong) at the next frame boundary.
    extra: Vec<u8>,
    /// How much of `extra` is written (non-zero: must finish before more data).
    extra_done: usize,
    /// Echoes completed in this read burst: that many messages go out next.
    completed: usize,
    key: [u8; 4],
}

/// Settings the hot path needs.
struct Spec {
    size: u64,
    opcode: OpCode,
}

impl Conn {
    fn alive(&self) -> bool {
        self.stream.is_some()
    }

    /// Handles one piece of a server frame.
    fn on_piece(
        &mut self,
        piece: Piece<'_>,
        v: &Variant,
        spec: &Spec,
        tally: &mut Tally,
        now: u64,
    ) -> Result<(), String> {
        let opcode = piece.header.opcode;
        match opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if piece.is_first() {
                    if opcode == OpCode::Continuation {
                        if self.msg_opcode.is_none() {
                            return Err("continuation without a message".into());
                        }
                    } else {
                        if self.msg_opcode.is_some() {
                            return Err("new message inside a fragmented one".into());
                        }
                        self.msg_opcode = Some(opcode);
                    }
                }
                let start = self.msg_pos as usize;
                let same = v
                    .payload
                    .get(start..start + piece.data.len())
                    .is_some_and(|expected| expected == piece.data);
                self.msg_bad |= !same;
                self.msg_pos += piece.data.len() as u64;
                if piece.is_last() && piece.header.fin {
                    let bad = self.msg_bad
                        || self.msg_pos != spec.size
                        || self.msg_opcode != Some(spec.opcode);
                    self.msg_pos = 0;
                    self.msg_bad = false;
                    self.msg_opcode = None;
                    self.complete(bad, tally, now);
                }
            }
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                if piece.is_first() {
                    self.control.clear();
                }
                self.control.extend_from_slice(piece.data);
                if piece.is_last() {
                    match opcode {
                        OpCode::Ping => {
                            let payload = std::mem::take(&mut self.control);
                            encode_frame(&mut self.extra, OpCode::Pong, &payload, self.key);
                            self.control = payload;
                        }
                        OpCode::Close => {
                            let code = match self.control.get(..2) {
                                Some(&[a, b]) => u16::from_be_bytes([a, b]),
                                _ => 1005,
                            };
                            return Err(format!("server closed the connection ({code})"));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn complete(&mut self, bad: bool, tally: &mut Tally, now: u64) {
        let Some(sent) = self.sent_at.pop_front() else {
            // An echo for a message never sent.
            tally.mismatches += 1;
            return;
        };
        self.completed += 1;
        if bad {
            tally.mismatches += 1;
        }
        if tally.measuring {
            tally.msgs += 1;
            tally.hist.record(now.saturating_sub(sent));
        }
    }

    /// Queues `count` more messages sent at `now`.
    fn queue(&mut self, count: usize, v: &Variant, now: u64) {
        self.unsent += count * v.frame_len;
        for _ in 0..count {
            self.sent_at.push_back(now);
        }
    }

    /// Writes what is queued until done or the socket refuses: data frames from the strip,
    /// control frames only between data frames.
    fn flush(&mut self, v: &Variant, tally: &mut Tally) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if self.extra_done > 0 && !write_extra(stream, &mut self.extra, &mut self.extra_done)? {
            return Ok(());
        }
        while self.unsent > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut filled = 0;
            let mut pos = self.phase;
            let mut left = self.unsent;
            for slot in iov.iter_mut() {
                if left == 0 {
                    break;
                }
                let end = v.strip.len().min(pos + left);
                let chunk = v.strip.get(pos..end).unwrap_or_default();
                if chunk.is_empty() {
                    break;
                }
                *slot = IoSlice::new(chunk);
                filled += 1;
                left -= chunk.len();
                pos = 0;
            }
            let n = match stream.write_vectored(iov.get(..filled).unwrap_or_default()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            tally.writes += u64::from(tally.measuring);
            self.unsent -= n;
            self.phase = (self.phase + n) % v.frame_len;
        }
        if !self.extra.is_empty() {
            write_extra(stream, &mut self.extra, &mut self.extra_done)?;
        }
        Ok(())
    }
}

/// Writes `extra[done..]`; true when all of it went out (then clears it).
fn write_extra(stream: &mut TcpStream, extra: &mut Vec<u8>, done: &mut usize) -> io::Result<bool> {
    while let Some(rest) = extra.get(*done..).filter(|r| !r.is_empty()) {
        match stream.write(rest) {
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    extra.clear();
    *done = 0;
    Ok(true)
}

fn check(opts: &EchoOptions) -> io::Result<Target> {
    let target = Target::parse(&opts.url)?;
    let bad = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()));
    if opts.conns == 0 || opts.inflight == 0 {
        return bad("--conns and --inflight must be at least 1");
    }
    if opts.size > MAX_ECHO_SIZE {
        return bad("--size is limited to 16 MiB");
    }
    if opts.duration.is_zero() {
        return bad("--duration must be positive");
    }
    Ok(target)
}

fn run(opts: &EchoOptions, mode: &'static str) -> io::Result<EchoReport> {
    let target = check(opts)?;
    let mut poll = Poll::new()?;
    let mut rng = XorShift::from_entropy();
    let opened = open_many(
        &mut poll,
        &target,
        &OpenPlan {
            count: opts.conns,
            max_pending: 256,
            sources: default_sources(target.addr, opts.conns, None, 20_000),
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30) + Duration::from_millis(opts.conns as u64),
        },
        &mut rng,
    )?;
    let conns_open = opened.established();
    let mut tally = Tally {
        hist: Histogram::new(),
        msgs: 0,
        bytes: 0,
        reads: 0,
        writes: 0,
        measuring: false,
        mismatches: 0,
        errors: opened.failures.total(),
        first_error: opened.failures.first.clone(),
    };

    // Pre-encoded frames: one strip per connection while memory allows, else shared.
    let frame_len = opts.size + 14;
    let per_strip = (STRIP_BYTES / frame_len).clamp(1, opts.inflight);
    let strip_len = per_strip * frame_len;
    let variants_n = (STRIPS_BUDGET / strip_len).clamp(1, opts.conns);
    let variants: Vec<Variant> = (0..variants_n)
        .map(|i| Variant::new(&mut rng, i, opts.size, opts.binary, per_strip))
        .collect();
    let spec = Spec {
        size: opts.size as u64,
        opcode: if opts.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        },
    };

    let base = Instant::now();
    let ns = |t: Instant| t.duration_since(base).as_nanos() as u64;
    let mut leftovers = Vec::new();
    let mut conns: Vec<Conn> = opened
        .conns
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let (stream, leftover) = match o {
                Some(o) => (Some(o.stream), o.leftover),
                None => (None, Vec::new()),
            };
            leftovers.push(leftover);
            Conn {
                stream,
                variant: i % variants_n,
                decoder: ClientDecoder::new(),
                phase: 0,
                unsent: 0,
                sent_at: VecDeque::with_capacity(opts.inflight),
                msg_pos: 0,
                msg_bad: false,
                msg_opcode: None,
                control: Vec::new(),
                extra: Vec::new(),
                extra_done: 0,
                completed: 0,
                key: rng.mask_key(),
            }
        })
        .collect();

    let mut rbuf = vec![0u8; READ_BUF];
    // Bytes that came with the 101 (none from an echo server), then the first burst.
    for (conn, leftover) in conns.iter_mut().zip(leftovers) {
        let Some(v) = variants.get(conn.variant) else {
            continue;
        };
        if !leftover.is_empty() {
            let now = ns(Instant::now());
            if let Err(why) = feed(conn, &leftover, v, &spec, &mut tally, now) {
                tally.error(|| why);
                conn.stream = None;
                continue;
            }
        }
        conn.queue(opts.inflight, v, ns(Instant::now()));
        if let Err(e) = conn.flush(v, &mut tally) {
            tally.error(|| format!("write: {e}"));
            drop_conn(&mut poll, conn);
        }
    }

    let warmup_end = Instant::now() + opts.warmup;
    let end = warmup_end + opts.duration;
    let mut window_start = warmup_end;
    let mut cpu = CpuMeter::start(None);
    let mut server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let mut events = Events::with_capacity(1024);
    let mut alive = conns.iter().filter(|c| c.alive()).count();
    if opts.warmup.is_zero() {
        tally.measuring = true;
        window_start = Instant::now();
    }
    while alive > 0 {
        let now = Instant::now();
        if !tally.measuring && now >= warmup_end {
            tally.measuring = true;
            tally.hist.clear();
            tally.reads = 0;
            tally.writes = 0;
            window_start = now;
            cpu = CpuMeter::start(None);
            server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
        }
        if now >= end {
            break;
        }
        let next = if tally.measuring { end } else { warmup_end };
        match poll.poll(&mut events, Some(next.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let Some(conn) = conns.get_mut(event.token().0) else {
                continue;
            };
            let Some(v) = variants.get(conn.variant) else {
                continue;
            };
            if !conn.alive() {
                continue;
            }
            let mut failed = None;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                failed = read_burst(conn, &mut rbuf, v, &spec, &mut tally, base).err();
            }
            if failed.is_none() {
                let count = std::mem::take(&mut conn.completed);
                if count > 0 {
                    conn.queue(count, v, ns(Instant::now()));
                }
                if conn.unsent > 0 || !conn.extra.is_empty() {
                    failed = conn
                        .flush(v, &mut tally)
                        .err()
                        .map(|e| format!("write: {e}"));
                }
            }
            if let Some(why) = failed {
                tally.error(|| why);
                drop_conn(&mut poll, conn);
                alive -= 1;
            }
        }
    }
    let window = window_start.elapsed();
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    let server_rss_kib = opts.server_pid.and_then(rss_kib);

    // Close: politely where the stream stands at a frame boundary.
    let mut streams: Vec<Option<TcpStream>> = conns
        .iter_mut()
        .map(|c| {
            let s = c.stream.take();
            if c.unsent > 0 || c.extra_done > 0 {
                if let Some(mut s) = s {
                    let _ = poll.registry().deregister(&mut s);
                }
                None
            } else {
                s
            }
        })
        .collect();
    close_all(&mut poll, &mut streams, &mut rng, Duration::from_secs(1));

    let secs = window.as_secs_f64().max(1e-9);
    let msgs = if tally.measuring { tally.msgs } else { 0 };
    tally.bytes = msgs * opts.size as u64;
    Ok(EchoReport {
        mode,
        conns: opts.conns,
        conns_open,
        inflight: opts.inflight,
        size: opts.size,
        binary: opts.binary,
        window_secs: secs,
        msgs,
        msgs_per_sec: msgs as f64 / secs,
        mb_per_sec: tally.bytes as f64 / secs / 1e6,
        latency: tally.hist.percentiles_us(),
        read_calls: tally.reads,
        write_calls: tally.writes,
        mismatches: tally.mismatches,
        errors: tally.errors,
        client_cpu_pct,
        server_cpu_pct,
        server_rss_kib,
        first_error: tally.first_error,
    })
}

fn drop_conn(poll: &mut Poll, conn: &mut Conn) {
    if let Some(mut s) = conn.stream.take() {
        let _ = poll.registry().deregister(&mut s);
    }
}

/// Reads until a short read or `WouldBlock` and verifies what arrived.
fn read_burst(
    conn: &mut Conn,
    rbuf: &mut [u8],
    v: &Variant,
    spec: &Spec,
    tally: &mut Tally,
    base: Instant,
) -> Result<(), String> {
    loop {
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        let n = match stream.read(rbuf) {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        let now = Instant::now().duration_since(base).as_nanos() as u64;
        tally.reads += u64::from(tally.measuring);
        feed(conn, rbuf.get(..n).unwrap_or_default(), v, spec, tally, now)?;
        if n < rbuf.len() {
            // A short read drained the socket; the next arrival raises a new edge.
            return Ok(());
        }
    }
}

fn feed(
    conn: &mut Conn,
    mut input: &[u8],
    v: &Variant,
    spec: &Spec,
    tally: &mut Tally,
    now: u64,
) -> Result<(), String> {
    while !input.is_empty() {
        let (used, piece) = conn
            .decoder
            .decode(input)
            .map_err(|e: FrameError| e.to_string())?;
        if let Some(piece) = piece {
            conn.on_piece(piece, v, spec, tally, now)?;
        }
        input = input.get(used..).unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{server_header, MAX_HEADER_LEN};

    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, payload.len(), &mut head);
        let mut out = head[..n].to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn setup(size: usize) -> (Conn, Variant, Spec, Tally) {
        let mut rng = XorShift::new(3);
        let v = Variant::new(&mut rng, 1, size, false, 4);
        let conn = Conn {
            stream: None,
            variant: 0,
            decoder: ClientDecoder::new(),
            phase: 0,
            unsent: 0,
            sent_at: VecDeque::new(),
            msg_pos: 0,
            msg_bad: false,
            msg_opcode: None,
            control: Vec::new(),
            extra: Vec::new(),
            extra_done: 0,
            completed: 0,
            key: [1, 2, 3, 4],
        };
        let spec = Spec {
            size: size as u64,
            opcode: OpCode::Text,
        };
        let tally = Tally {
            hist: Histogram::new(),
            msgs: 0,
            bytes: 0,
            reads: 0,
            writes: 0,
            measuring: true,
            mismatches: 0,
            errors: 0,
            first_error: None,
        };
        (conn, v, spec, tally)
    }

    #[test]
    fn strip_holds_identical_masked_frames_of_the_payload() {
        let (_, v, _, _) = setup(40);
        assert_eq!(v.frame_len, 2 + 4 + 40);
        assert_eq!(v.strip.len(), 4 * v.frame_len);
        assert!(v.payload.is_ascii());
        let mut frame = v.strip[..v.frame_len].to_vec();
        let key = [frame[2], frame[3], frame[4], frame[5]];
        crate::protocol::mask::apply_mask(&mut frame[6..], key, 0);
        assert_eq!(&frame[6..], &v.payload[..]);
        assert_eq!(
            &v.strip[v.frame_len..2 * v.frame_len],
            &v.strip[..v.frame_len]
        );
    }

    #[test]
    fn verifies_echoes_byte_for_byte_even_when_split() {
        let (mut conn, v, spec, mut tally) = setup(40);
        conn.queue(3, &v, 100);
        assert_eq!(conn.unsent, 3 * v.frame_len);
        let good = server_frame(OpCode::Text, &v.payload);
        let mut bad_bytes = v.payload.clone();
        bad_bytes[39] ^= 1;
        let bad = server_frame(OpCode::Text, &bad_bytes);
        let binary = server_frame(OpCode::Binary, &v.payload);
        let mut wire = good.clone();
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&binary);
        for chunk in wire.chunks(7) {
            feed(&mut conn, chunk, &v, &spec, &mut tally, 1100).unwrap();
        }
        assert_eq!(conn.completed, 3);
        assert_eq!(tally.msgs, 3);
        assert_eq!(tally.mismatches, 2, "a flipped bit and a wrong opcode");
        assert_eq!(tally.hist.quantile(0.5), 1000);
        // An echo for nothing sent is a mismatch too.
        feed(&mut conn, &good, &v, &spec, &mut tally, 1200).unwrap();
        assert_eq!(tally.mismatches, 3);
    }

    #[test]
    fn fragmented_echo_is_one_message_and_wrong_length_is_caught() {
        let (mut conn, v, spec, mut tally) = setup(10);
        conn.queue(2, &v, 0);
        let mut first = server_frame(OpCode::Text, &v.payload[..4]);
        first[0] &= 0x7f; // not FIN
        let mut last = server_frame(OpCode::Continuation, &v.payload[4..]);
        last[0] |= 0x80;
        let mut wire = first;
        wire.extend_from_slice(&last);
        wire.extend_from_slice(&server_frame(OpCode::Text, &v.payload[..9]));
        feed(&mut conn, &wire, &v, &spec, &mut tally, 5).unwrap();
        assert_eq!(tally.msgs, 2);
        assert_eq!(tally.mismatches, 1, "the short echo");
    }

    #[test]
    fn pings_are_answered_and_close_ends_the_connection() {
        let (mut conn, v, spec, mut tally) = setup(8);
        feed(
            &mut conn,
            &server_frame(OpCode::Ping, b"abc"),
            &v,
            &spec,
            &mut tally,
            0,
        )
        .unwrap();
        assert_eq!(conn.extra.len(), 2 + 4 + 3);
        assert_eq!(conn.extra[0], 0x8A);
        let err = feed(
            &mut conn,
            &server_frame(OpCode::Close, &1001u16.to_be_bytes()),
            &v,
            &spec,
            &mut tally,
            0,
        )
        .unwrap_err();
        assert!(err.contains("1001"), "{err}");
    }
}
