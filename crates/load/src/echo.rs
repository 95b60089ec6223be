//! `echo` and `latency`: closed-loop echo load with every echo verified byte for byte.
//!
//! Each connection keeps `inflight` messages outstanding. Its frames are encoded and masked
//! once, before the run, into a *strip* of identical frames; sending `j` messages is one
//! `writev` of a slice of that strip (no encoding, no allocation, no copy per message). Reads
//! go into one shared buffer; every echo is compared with the expected payload as it arrives
//! (split frames chunk by chunk) and its round trip is taken from a per-connection ring of
//! send times. One clock read per read/write burst, not per message.
//!
//! With `--payload text` or `--deflate`, messages differ from one to the next (each is cut
//! from a [corpus](super::payload)), so they are encoded (and compressed) one by one when
//! queued; a compressed echo is gathered whole, inflated and then compared. The report gives
//! the wire ratio: frame bytes on the wire per payload byte, each way.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll};

use super::client::{
    encode_frame, encode_frame_rsv, ClientDecoder, ClientDeflate, Piece, SharedDeflate, XorShift,
};
use super::net::{close_all, default_sources, open_many, OpenPlan, Target};
use super::payload::{self, Payload};
use super::report::{JsonLine, Table};
use super::stats::{rss_kib, CpuMeter, Histogram, Percentiles};
use wsloop_proto::frame::OpCode;

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
    /// Offer permessage-deflate; compress messages and inflate echoes when accepted.
    pub deflate: bool,
    /// What the messages contain.
    pub payload: Payload,
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
            deflate: false,
            payload: Payload::Random,
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
    /// Offer permessage-deflate; compress messages and inflate echoes when accepted.
    pub deflate: bool,
    /// What the messages contain.
    pub payload: Payload,
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
            deflate: false,
            payload: Payload::Random,
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
    /// What the messages contained.
    pub payload: Payload,
    /// permessage-deflate was offered.
    pub deflate_offered: bool,
    /// Connections on which the server accepted it.
    pub deflate_conns: usize,
    /// The first accepted answer's `Sec-WebSocket-Extensions` value.
    pub deflate_answer: Option<String>,
    /// Server→client frame bytes (headers included) per payload byte, in the window: below 1
    /// when the server's compression pays.
    pub wire_ratio_recv: Option<f64>,
    /// Client→server frame bytes per payload byte, in the window.
    pub wire_ratio_sent: Option<f64>,
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
    /// The server's CPU time per echoed message in the window, µs (with `server_pid`).
    pub server_cpu_us_per_msg: Option<f64>,
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
            .str("payload", self.payload.name())
            .bool("deflate_offered", self.deflate_offered)
            .int("deflate_conns", self.deflate_conns as u64)
            .opt_str("deflate_answer", self.deflate_answer.as_deref())
            .opt_num("wire_ratio_recv", self.wire_ratio_recv)
            .opt_num("wire_ratio_sent", self.wire_ratio_sent)
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
            .opt_num("server_cpu_us_per_msg", self.server_cpu_us_per_msg)
            .opt_int("server_rss_kib", self.server_rss_kib)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let kind = if self.binary { "binary" } else { "text" };
        let deflate = if self.deflate_offered {
            ", deflate offered"
        } else {
            ""
        };
        Table::new(format!(
            "wsload {}: {} conns x {} in flight, {} B {kind} ({} payload{deflate})",
            self.mode, self.conns, self.inflight, self.size, self.payload
        ))
        .row("connections open", self.conns_open)
        .opt_row(
            "deflate accepted",
            self.deflate_offered.then(|| {
                let answer = self.deflate_answer.as_deref().unwrap_or("declined");
                format!("{} conns: {answer}", self.deflate_conns)
            }),
        )
        .opt_row(
            "wire/payload (recv / sent)",
            self.wire_ratio_recv.map(|recv| {
                let sent = self.wire_ratio_sent.unwrap_or(f64::NAN);
                format!("{recv:.3} / {sent:.3}")
            }),
        )
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
            "server CPU per message",
            self.server_cpu_us_per_msg.map(|c| format!("{c:.2} us")),
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
        deflate: opts.deflate,
        payload: opts.payload,
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

/// What every connection's messages are made of, fixed before the run.
struct Plan {
    /// Strip mode (random payload, no deflate): each connection repeats one pre-encoded
    /// message, so sending costs the client nothing per message. Empty in flow mode.
    variants: Vec<Variant>,
    /// Flow mode: messages are cut from this corpus one after another and encoded (and
    /// compressed) when queued. Empty in strip mode.
    corpus: Vec<u8>,
    /// Payload bytes per message.
    size: usize,
    /// Text or binary.
    opcode: OpCode,
}

/// Counters shared by every connection of a run, and the scratch space they share.
struct Tally {
    hist: Histogram,
    msgs: u64,
    bytes: u64,
    /// `read` and `writev` calls that moved bytes, in the window.
    reads: u64,
    writes: u64,
    /// Frame bytes of the echoes completed in the window, and of the messages they echo.
    wire_recv: u64,
    wire_sent: u64,
    measuring: bool,
    mismatches: u64,
    errors: u64,
    first_error: Option<String>,
    /// Deflate contexts of the connections that reset them after every message.
    shared: SharedDeflate,
    /// A message being compressed.
    packed: Vec<u8>,
    /// An echo being inflated.
    inflated: Vec<u8>,
}

impl Tally {
    fn new(measuring: bool) -> Tally {
        Tally {
            hist: Histogram::new(),
            msgs: 0,
            bytes: 0,
            reads: 0,
            writes: 0,
            wire_recv: 0,
            wire_sent: 0,
            measuring,
            mismatches: 0,
            errors: 0,
            first_error: None,
            shared: SharedDeflate::default(),
            packed: Vec::new(),
            inflated: Vec::new(),
        }
    }

    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// A flow-mode connection's own state: its place in the corpus, what it has encoded but not
/// written, and its deflate state.
struct Flow {
    /// Corpus offset of the next message to send.
    next: usize,
    /// (corpus offset, frame bytes sent) of each message awaiting its echo, oldest first.
    awaiting: VecDeque<(usize, u64)>,
    /// Encoded frames, written from `out_done`; always ends at a frame boundary.
    out: Vec<u8>,
    out_done: usize,
    /// permessage-deflate, when the server accepted it.
    deflate: Option<ClientDeflate>,
    /// Compressed payload of the echo in progress, inflated once it is complete.
    packed: Vec<u8>,
}

impl Flow {
    fn new(start: usize, inflight: usize, deflate: Option<ClientDeflate>) -> Flow {
        Flow {
            next: start,
            awaiting: VecDeque::with_capacity(inflight),
            out: Vec::new(),
            out_done: 0,
            deflate,
            packed: Vec::new(),
        }
    }

    /// Writes `out` until done or the socket refuses.
    fn write(&mut self, stream: &mut TcpStream, tally: &mut Tally) -> io::Result<()> {
        while let Some(rest) = self.out.get(self.out_done..).filter(|r| !r.is_empty()) {
            match stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_done += n;
                    tally.writes += u64::from(tally.measuring);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_done = 0;
        Ok(())
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
    /// The echo in progress is compressed (RSV1 on its first frame).
    msg_compressed: bool,
    /// Frame bytes (headers included) of the echo in progress.
    msg_wire: u64,
    /// Payload of a control frame in progress.
    control: Vec<u8>,
    /// Control frames to send (a pong) at the next frame boundary.
    extra: Vec<u8>,
    /// How much of `extra` is written (non-zero: must finish before more data).
    extra_done: usize,
    /// Echoes completed in this read burst: that many messages go out next.
    completed: usize,
    key: [u8; 4],
    /// Flow mode (text payload or deflate); `None` in strip mode.
    flow: Option<Box<Flow>>,
}

/// Bytes of a server frame's header for a payload of `len` bytes.
fn header_len(len: u64) -> u64 {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

impl Conn {
    fn new(key: [u8; 4], variant: usize, inflight: usize, flow: Option<Box<Flow>>) -> Conn {
        let deflate = flow.as_ref().is_some_and(|f| f.deflate.is_some());
        Conn {
            stream: None,
            variant,
            decoder: ClientDecoder::with_deflate(deflate),
            phase: 0,
            unsent: 0,
            sent_at: VecDeque::with_capacity(inflight),
            msg_pos: 0,
            msg_bad: false,
            msg_opcode: None,
            msg_compressed: false,
            msg_wire: 0,
            control: Vec::new(),
            extra: Vec::new(),
            extra_done: 0,
            completed: 0,
            key,
            flow,
        }
    }

    fn alive(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether anything waits to be written.
    fn wants_write(&self) -> bool {
        self.unsent > 0
            || !self.extra.is_empty()
            || self.flow.as_ref().is_some_and(|f| f.out_done < f.out.len())
    }

    /// Whether a close frame written now would start at a frame boundary.
    fn at_boundary(&self) -> bool {
        match &self.flow {
            Some(f) => f.out_done == 0 || f.out_done == f.out.len(),
            None => self.unsent == 0 && self.extra_done == 0,
        }
    }

    /// The payload the oldest outstanding message carried (empty when none is outstanding).
    fn expected<'a>(&self, plan: &'a Plan) -> &'a [u8] {
        match &self.flow {
            Some(flow) => flow
                .awaiting
                .front()
                .and_then(|&(start, _)| plan.corpus.get(start..start + plan.size))
                .unwrap_or_default(),
            None => plan
                .variants
                .get(self.variant)
                .map_or(&[], |v| v.payload.as_slice()),
        }
    }

    /// Handles one piece of a server frame.
    fn on_piece(
        &mut self,
        piece: Piece<'_>,
        plan: &Plan,
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
                        self.msg_compressed = piece.header.rsv1;
                    }
                    self.msg_wire += header_len(piece.header.payload_len);
                }
                self.msg_wire += piece.data.len() as u64;
                if self.msg_compressed {
                    let flow = self
                        .flow
                        .as_mut()
                        .ok_or("compressed echo without deflate")?;
                    // Deflate never grows data by more than a few bytes per 16 KiB block.
                    if flow.packed.len() + piece.data.len() > plan.size + plan.size / 8 + 1024 {
                        return Err("compressed echo longer than any message sent".into());
                    }
                    flow.packed.extend_from_slice(piece.data);
                } else {
                    let start = self.msg_pos as usize;
                    let same = self
                        .expected(plan)
                        .get(start..start + piece.data.len())
                        .is_some_and(|expected| expected == piece.data);
                    self.msg_bad |= !same;
                    self.msg_pos += piece.data.len() as u64;
                }
                if piece.is_last() && piece.header.fin {
                    if self.msg_compressed {
                        self.inflate_echo(plan, tally)?;
                    }
                    let bad = self.msg_bad
                        || self.msg_pos != plan.size as u64
                        || self.msg_opcode != Some(plan.opcode);
                    let wire = self.msg_wire;
                    self.msg_pos = 0;
                    self.msg_bad = false;
                    self.msg_opcode = None;
                    self.msg_compressed = false;
                    self.msg_wire = 0;
                    self.complete(bad, wire, plan, tally, now);
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

    /// Inflates the compressed echo just completed and compares it whole.
    fn inflate_echo(&mut self, plan: &Plan, tally: &mut Tally) -> Result<(), String> {
        let expected = self.expected(plan);
        let flow = self
            .flow
            .as_mut()
            .ok_or("compressed echo without deflate")?;
        let deflate = flow
            .deflate
            .as_mut()
            .ok_or("compressed echo without deflate")?;
        tally.inflated.clear();
        // One byte over the size is enough to tell a longer echo.
        deflate
            .inflate(
                &mut tally.shared,
                &flow.packed,
                &mut tally.inflated,
                plan.size + 1,
            )
            .map_err(|e| format!("inflating an echo: {e}"))?;
        flow.packed.clear();
        self.msg_bad |= tally.inflated != expected;
        self.msg_pos = tally.inflated.len() as u64;
        Ok(())
    }

    #[inline]
    fn complete(&mut self, bad: bool, wire: u64, plan: &Plan, tally: &mut Tally, now: u64) {
        let Some(sent) = self.sent_at.pop_front() else {
            // An echo for a message never sent.
            tally.mismatches += 1;
            return;
        };
        let sent_wire = match self.flow.as_mut() {
            Some(flow) => flow.awaiting.pop_front().map_or(0, |(_, w)| w),
            None => plan
                .variants
                .get(self.variant)
                .map_or(0, |v| v.frame_len as u64),
        };
        self.completed += 1;
        if bad {
            tally.mismatches += 1;
        }
        if tally.measuring {
            tally.msgs += 1;
            tally.wire_recv += wire;
            tally.wire_sent += sent_wire;
            tally.hist.record(now.saturating_sub(sent));
        }
    }

    /// Queues `count` more messages sent at `now`.
    fn queue(&mut self, count: usize, plan: &Plan, tally: &mut Tally, now: u64) {
        for _ in 0..count {
            self.sent_at.push_back(now);
        }
        let Some(flow) = self.flow.as_mut() else {
            let frame_len = plan.variants.get(self.variant).map_or(0, |v| v.frame_len);
            self.unsent += count * frame_len;
            return;
        };
        for _ in 0..count {
            let start = flow.next;
            flow.next = payload::next_start(start, plan.size, plan.corpus.len());
            let message = plan
                .corpus
                .get(start..start + plan.size)
                .unwrap_or_default();
            let before = flow.out.len();
            match flow.deflate.as_mut() {
                Some(deflate) => {
                    tally.packed.clear();
                    deflate.compress(&mut tally.shared, message, &mut tally.packed);
                    encode_frame_rsv(&mut flow.out, plan.opcode, true, &tally.packed, self.key);
                }
                None => encode_frame(&mut flow.out, plan.opcode, message, self.key),
            }
            let wire = (flow.out.len() - before) as u64;
            flow.awaiting.push_back((start, wire));
        }
    }

    /// Writes what is queued until done or the socket refuses: data frames from the strip
    /// (or the flow's encoded frames), control frames only between data frames.
    fn flush(&mut self, plan: &Plan, tally: &mut Tally) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if let Some(flow) = self.flow.as_mut() {
            // `out` ends at a frame boundary: a pong can go right after it.
            flow.out.append(&mut self.extra);
            return flow.write(stream, tally);
        }
        let Some(v) = plan.variants.get(self.variant) else {
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

/// The messages of a run: strips of identical frames for random payloads without deflate,
/// else a corpus to cut varied messages from.
fn plan(opts: &EchoOptions, rng: &mut XorShift) -> Plan {
    let opcode = if opts.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    if opts.deflate || opts.payload != Payload::Random {
        return Plan {
            variants: Vec::new(),
            corpus: payload::corpus(opts.payload, opts.binary, opts.size, rng),
            size: opts.size,
            opcode,
        };
    }
    // Pre-encoded frames: one strip per connection while memory allows, else shared.
    let frame_len = opts.size + 14;
    let per_strip = (STRIP_BYTES / frame_len).clamp(1, opts.inflight);
    let strip_len = per_strip * frame_len;
    let variants_n = (STRIPS_BUDGET / strip_len).clamp(1, opts.conns);
    Plan {
        variants: (0..variants_n)
            .map(|i| Variant::new(rng, i, opts.size, opts.binary, per_strip))
            .collect(),
        corpus: Vec::new(),
        size: opts.size,
        opcode,
    }
}

fn run(opts: &EchoOptions, mode: &'static str) -> io::Result<EchoReport> {
    let target = check(opts)?;
    let mut poll = Poll::new()?;
    let mut rng = XorShift::from_entropy();
    let opened = open_many(
        &mut poll,
        std::slice::from_ref(&target),
        &OpenPlan {
            count: opts.conns,
            max_pending: 256,
            sources: default_sources(target.addr, opts.conns, None, 20_000),
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30) + Duration::from_millis(opts.conns as u64),
            deflate: opts.deflate,
        },
        &mut rng,
    )?;
    let conns_open = opened.established();
    let accepted = opened.conns.iter().flatten().filter_map(|o| o.deflate);
    let deflate_conns = accepted.clone().count();
    let deflate_answer = accepted.clone().next().map(|p| p.response_value());
    let mut tally = Tally::new(false);
    tally.errors = opened.failures.total();
    tally.first_error = opened.failures.first.clone();
    let plan = plan(opts, &mut rng);
    let variants_n = plan.variants.len().max(1);

    let base = Instant::now();
    let ns = |t: Instant| t.duration_since(base).as_nanos() as u64;
    let mut leftovers = Vec::new();
    let mut conns: Vec<Conn> = opened
        .conns
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let (stream, leftover, deflate) = match o {
                Some(o) => (Some(o.stream), o.leftover, o.deflate),
                None => (None, Vec::new(), None),
            };
            leftovers.push(leftover);
            let flow = plan.variants.is_empty().then(|| {
                let start = payload::first_start(i, plan.size, plan.corpus.len());
                Box::new(Flow::new(
                    start,
                    opts.inflight,
                    deflate.map(ClientDeflate::new),
                ))
            });
            let mut conn = Conn::new(rng.mask_key(), i % variants_n, opts.inflight, flow);
            conn.stream = stream;
            conn
        })
        .collect();

    let mut rbuf = vec![0u8; READ_BUF];
    // Bytes that came with the 101 (none from an echo server), then the first burst.
    for (conn, leftover) in conns.iter_mut().zip(leftovers) {
        if !conn.alive() {
            continue;
        }
        if !leftover.is_empty() {
            let now = ns(Instant::now());
            if let Err(why) = feed(conn, &leftover, &plan, &mut tally, now) {
                tally.error(|| why);
                conn.stream = None;
                continue;
            }
        }
        conn.queue(opts.inflight, &plan, &mut tally, ns(Instant::now()));
        if let Err(e) = conn.flush(&plan, &mut tally) {
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
            if !conn.alive() {
                continue;
            }
            let mut failed = None;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                failed = read_burst(conn, &mut rbuf, &plan, &mut tally, base).err();
            }
            if failed.is_none() {
                let count = std::mem::take(&mut conn.completed);
                if count > 0 {
                    conn.queue(count, &plan, &mut tally, ns(Instant::now()));
                }
                if conn.wants_write() {
                    failed = conn
                        .flush(&plan, &mut tally)
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
            let at_boundary = c.at_boundary();
            let s = c.stream.take();
            if at_boundary {
                s
            } else {
                if let Some(mut s) = s {
                    let _ = poll.registry().deregister(&mut s);
                }
                None
            }
        })
        .collect();
    close_all(&mut poll, &mut streams, &mut rng, Duration::from_secs(1));

    let secs = window.as_secs_f64().max(1e-9);
    let msgs = if tally.measuring { tally.msgs } else { 0 };
    tally.bytes = msgs * opts.size as u64;
    let ratio = |wire: u64| (tally.bytes > 0).then(|| wire as f64 / tally.bytes as f64);
    Ok(EchoReport {
        mode,
        conns: opts.conns,
        conns_open,
        inflight: opts.inflight,
        size: opts.size,
        binary: opts.binary,
        payload: opts.payload,
        deflate_offered: opts.deflate,
        deflate_conns,
        deflate_answer,
        wire_ratio_recv: ratio(tally.wire_recv),
        wire_ratio_sent: ratio(tally.wire_sent),
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
        server_cpu_us_per_msg: server_cpu_pct
            .filter(|_| msgs > 0)
            .map(|pct| pct / 100.0 * secs * 1e6 / msgs as f64),
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
    plan: &Plan,
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
        feed(conn, rbuf.get(..n).unwrap_or_default(), plan, tally, now)?;
        if n < rbuf.len() {
            // A short read drained the socket; the next arrival raises a new edge.
            return Ok(());
        }
    }
}

fn feed(
    conn: &mut Conn,
    mut input: &[u8],
    plan: &Plan,
    tally: &mut Tally,
    now: u64,
) -> Result<(), String> {
    while !input.is_empty() {
        let (used, piece) = conn.decoder.decode(input).map_err(|e| e.to_string())?;
        if let Some(piece) = piece {
            conn.on_piece(piece, plan, tally, now)?;
        }
        input = input.get(used..).unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::server_frame;
    use wsloop_proto::deflate::{accept_response, Deflater, Inflater};

    fn setup(size: usize) -> (Conn, Plan, Tally) {
        let mut rng = XorShift::new(3);
        let plan = Plan {
            variants: vec![Variant::new(&mut rng, 1, size, false, 4)],
            corpus: Vec::new(),
            size,
            opcode: OpCode::Text,
        };
        (Conn::new([1, 2, 3, 4], 0, 4, None), plan, Tally::new(true))
    }

    #[test]
    fn strip_holds_identical_masked_frames_of_the_payload() {
        let (_, plan, _) = setup(40);
        let v = &plan.variants[0];
        assert_eq!(v.frame_len, 2 + 4 + 40);
        assert_eq!(v.strip.len(), 4 * v.frame_len);
        assert!(v.payload.is_ascii());
        let mut frame = v.strip[..v.frame_len].to_vec();
        let key = [frame[2], frame[3], frame[4], frame[5]];
        wsloop_proto::mask::apply_mask(&mut frame[6..], key, 0);
        assert_eq!(&frame[6..], &v.payload[..]);
        assert_eq!(
            &v.strip[v.frame_len..2 * v.frame_len],
            &v.strip[..v.frame_len]
        );
    }

    #[test]
    fn verifies_echoes_byte_for_byte_even_when_split() {
        let (mut conn, plan, mut tally) = setup(40);
        let v = &plan.variants[0];
        conn.queue(3, &plan, &mut tally, 100);
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
            feed(&mut conn, chunk, &plan, &mut tally, 1100).unwrap();
        }
        assert_eq!(conn.completed, 3);
        assert_eq!(tally.msgs, 3);
        assert_eq!(tally.mismatches, 2, "a flipped bit and a wrong opcode");
        assert_eq!(tally.hist.quantile(0.5), 1000);
        assert_eq!(tally.wire_recv, 3 * 42, "2-byte headers");
        assert_eq!(tally.wire_sent, 3 * v.frame_len as u64);
        // An echo for nothing sent is a mismatch too.
        feed(&mut conn, &good, &plan, &mut tally, 1200).unwrap();
        assert_eq!(tally.mismatches, 3);
    }

    #[test]
    fn fragmented_echo_is_one_message_and_wrong_length_is_caught() {
        let (mut conn, plan, mut tally) = setup(10);
        let v = &plan.variants[0];
        conn.queue(2, &plan, &mut tally, 0);
        let mut first = server_frame(OpCode::Text, &v.payload[..4]);
        first[0] &= 0x7f; // not FIN
        let mut last = server_frame(OpCode::Continuation, &v.payload[4..]);
        last[0] |= 0x80;
        let mut wire = first;
        wire.extend_from_slice(&last);
        wire.extend_from_slice(&server_frame(OpCode::Text, &v.payload[..9]));
        feed(&mut conn, &wire, &plan, &mut tally, 5).unwrap();
        assert_eq!(tally.msgs, 2);
        assert_eq!(tally.mismatches, 1, "the short echo");
    }

    #[test]
    fn pings_are_answered_and_close_ends_the_connection() {
        let (mut conn, plan, mut tally) = setup(8);
        feed(
            &mut conn,
            &server_frame(OpCode::Ping, b"abc"),
            &plan,
            &mut tally,
            0,
        )
        .unwrap();
        assert_eq!(conn.extra.len(), 2 + 4 + 3);
        assert_eq!(conn.extra[0], 0x8A);
        let err = feed(
            &mut conn,
            &server_frame(OpCode::Close, &1001u16.to_be_bytes()),
            &plan,
            &mut tally,
            0,
        )
        .unwrap_err();
        assert!(err.contains("1001"), "{err}");
    }

    /// A flow-mode connection with deflate agreed as `answer`, over the text corpus.
    fn deflate_setup(size: usize, answer: &str) -> (Conn, Plan, Tally) {
        let plan = Plan {
            variants: Vec::new(),
            corpus: payload::corpus(Payload::Text, false, size, &mut XorShift::new(1)),
            size,
            opcode: OpCode::Text,
        };
        let params = accept_response([answer], true).unwrap().unwrap();
        let flow = Flow::new(5, 4, Some(ClientDeflate::new(params)));
        let conn = Conn::new([9, 8, 7, 6], 0, 4, Some(Box::new(flow)));
        (conn, plan, Tally::new(true))
    }

    /// Unmasks the client frames in `wire`: (first byte, payload) each.
    fn client_frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (len, at) = match wire[1] & 0x7f {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let key = [wire[at], wire[at + 1], wire[at + 2], wire[at + 3]];
            let mut payload = wire[at + 4..at + 4 + len].to_vec();
            wsloop_proto::mask::apply_mask(&mut payload, key, 0);
            frames.push((wire[0], payload));
            wire = &wire[at + 4 + len..];
        }
        frames
    }

    #[test]
    fn compressed_messages_out_and_compressed_echoes_verified() {
        let size = 1024;
        let (mut conn, plan, mut tally) = deflate_setup(
            size,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        conn.queue(3, &plan, &mut tally, 0);
        let out = conn.flow.as_ref().unwrap().out.clone();
        let frames = client_frames(&out);
        assert_eq!(frames.len(), 3);
        // The server's side: inflate what the client sent, echo it compressed (RSV1), one
        // echo split over two frames, one sent uncompressed (a server may).
        let mut wire = Vec::new();
        for (i, (first, packed)) in frames.iter().enumerate() {
            assert_eq!(*first, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
            let mut message = Vec::new();
            Inflater::new()
                .inflate(packed, &mut message, 1 << 20, true)
                .unwrap();
            let start = 5 + i * (size + 61);
            assert_eq!(message, &plan.corpus[start..start + size]);
            let mut echo = Vec::new();
            Deflater::new(15, 1).compress(&message, &mut echo, true);
            match i {
                0 => {
                    let mut frame = server_frame(OpCode::Text, &echo);
                    frame[0] |= 0x40;
                    wire.extend_from_slice(&frame);
                }
                1 => {
                    let mut head = server_frame(OpCode::Text, &echo[..10]);
                    head[0] = 0x40 | 0x1; // RSV1, not FIN
                    wire.extend_from_slice(&head);
                    wire.extend_from_slice(&server_frame(OpCode::Continuation, &echo[10..]));
                }
                _ => wire.extend_from_slice(&server_frame(OpCode::Text, &message)),
            }
        }
        for chunk in wire.chunks(100) {
            feed(&mut conn, chunk, &plan, &mut tally, 10).unwrap();
        }
        assert_eq!(tally.msgs, 3);
        assert_eq!(tally.mismatches, 0);
        let ratio = tally.wire_recv as f64 / (3 * size) as f64;
        assert!(ratio < 0.9, "two of three echoes compressed: {ratio}");
        assert!((tally.wire_sent as f64) < 0.6 * (3 * size) as f64);
        assert!(
            tally.shared.deflater_in_use(),
            "no context takeover: shared"
        );

        // A corrupted compressed echo is an error, not a silent pass.
        conn.queue(1, &plan, &mut tally, 0);
        let mut frame = server_frame(OpCode::Text, &[0xff; 20]);
        frame[0] |= 0x40;
        assert!(feed(&mut conn, &frame, &plan, &mut tally, 0).is_err());
    }

    #[test]
    fn context_takeover_keeps_each_side_s_history() {
        let size = 2048;
        let (mut conn, plan, mut tally) = deflate_setup(size, "permessage-deflate");
        let mut server_in = Inflater::new();
        let mut server_out = Deflater::new(15, 1);
        for round in 0..4 {
            conn.queue(1, &plan, &mut tally, 0);
            let flow = conn.flow.as_mut().unwrap();
            let frames = client_frames(&flow.out);
            flow.out.clear();
            let mut message = Vec::new();
            server_in
                .inflate(&frames[0].1, &mut message, 1 << 20, false)
                .unwrap();
            let mut echo = Vec::new();
            server_out.compress(&message, &mut echo, false);
            let mut frame = server_frame(OpCode::Text, &echo);
            frame[0] |= 0x40;
            feed(&mut conn, &frame, &plan, &mut tally, 0).unwrap();
            assert_eq!(tally.msgs, round + 1);
        }
        assert_eq!(tally.mismatches, 0);
        assert!(!tally.shared.deflater_in_use(), "own contexts");
    }
}
