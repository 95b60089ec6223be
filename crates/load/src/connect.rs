//! `connect`: whole connection lifecycles per second — TCP connect, upgrade, close handshake
//! (client first), and the server's TCP close — with `concurrency` lifecycles in parallel.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::client::{
    encode_close, parse_upgrade_response, write_upgrade_request, ClientDecoder, XorShift,
};
use super::net::{connect_nonblocking, Target};
use super::report::{JsonLine, Table};
use super::stats::{CpuMeter, Histogram, Percentiles};
use wsloop_proto::frame::OpCode;

/// Options of [`run_connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://` URL on a loopback address.
    pub url: String,
    /// How long to keep opening connections.
    pub duration: Duration,
    /// Lifecycles in parallel.
    pub concurrency: usize,
    /// The server's PID, to report its CPU.
    pub server_pid: Option<u32>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            url: "ws://127.0.0.1:9001/".into(),
            duration: Duration::from_secs(5),
            concurrency: 16,
            server_pid: None,
        }
    }
}

/// What [`run_connect`] measured.
#[derive(Debug, Clone, Default)]
pub struct ConnectReport {
    /// Lifecycles in parallel.
    pub concurrency: usize,
    /// Seconds measured.
    pub window_secs: f64,
    /// Lifecycles started.
    pub attempts: u64,
    /// Lifecycles completed (the server's FIN after its close frame).
    pub completed: u64,
    /// `completed` per second.
    pub handshakes_per_sec: f64,
    /// Connect → `101`.
    pub upgrade: Percentiles,
    /// Connect → the server's FIN.
    pub lifecycle: Percentiles,
    /// TCP connect failures.
    pub connect_failures: u64,
    /// Refused or broken upgrades.
    pub handshake_failures: u64,
    /// Close handshakes that went wrong (no close frame, reset, ...).
    pub close_failures: u64,
    /// Lifecycles out of time (5 s each).
    pub timeouts: u64,
    /// Lifecycles still running when time was up (not counted either way).
    pub abandoned: u64,
    /// The load generator's CPU, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// The first error seen.
    pub first_error: Option<String>,
}

impl ConnectReport {
    /// All failures.
    pub fn failures(&self) -> u64 {
        self.connect_failures + self.handshake_failures + self.close_failures + self.timeouts
    }

    /// Something completed and nothing failed.
    pub fn ok(&self) -> bool {
        self.completed > 0 && self.failures() == 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", "connect")
            .int("concurrency", self.concurrency as u64)
            .num("window_secs", self.window_secs)
            .int("attempts", self.attempts)
            .int("completed", self.completed)
            .num("handshakes_per_sec", self.handshakes_per_sec)
            .num("upgrade_p50_us", self.upgrade.p50_us)
            .num("upgrade_p99_us", self.upgrade.p99_us)
            .num("p50_us", self.lifecycle.p50_us)
            .num("p99_us", self.lifecycle.p99_us)
            .num("p999_us", self.lifecycle.p999_us)
            .int("failures", self.failures())
            .int("connect_failures", self.connect_failures)
            .int("handshake_failures", self.handshake_failures)
            .int("close_failures", self.close_failures)
            .int("timeouts", self.timeouts)
            .int("abandoned", self.abandoned)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        Table::new(format!("wsload connect: {} in parallel", self.concurrency))
            .row("window", format!("{:.2} s", self.window_secs))
            .row(
                "attempts / completed",
                format!("{} / {}", self.attempts, self.completed),
            )
            .row("lifecycles/s", format!("{:.0}", self.handshakes_per_sec))
            .row(
                "connect->101 p50 / p99",
                format!("{:.1} / {:.1} us", self.upgrade.p50_us, self.upgrade.p99_us),
            )
            .row(
                "lifecycle p50 / p99 / p99.9",
                format!(
                    "{:.1} / {:.1} / {:.1} us",
                    self.lifecycle.p50_us, self.lifecycle.p99_us, self.lifecycle.p999_us
                ),
            )
            .row(
                "failures (connect/upgrade/close/timeout)",
                format!(
                    "{} ({}/{}/{}/{})",
                    self.failures(),
                    self.connect_failures,
                    self.handshake_failures,
                    self.close_failures,
                    self.timeouts
                ),
            )
            .row("abandoned at the end", self.abandoned)
            .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
            .opt_row(
                "server CPU",
                self.server_cpu_pct.map(|c| format!("{c:.1} %")),
            )
            .opt_row("first error", self.first_error.as_deref())
            .render()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    AwaitClose,
    AwaitFin,
}

/// One lifecycle in progress.
struct Slot {
    stream: TcpStream,
    phase: Phase,
    key: String,
    started: Instant,
    decoder: ClientDecoder,
    /// The upgrade answer so far (usually one read).
    response: Vec<u8>,
}

enum Failure {
    Connect(String),
    Handshake(String),
    Close(String),
}

/// Runs the connection-rate test.
///
/// # Errors
/// A bad or non-loopback URL, bad options, or a failing poller.
pub fn run_connect(opts: &ConnectOptions) -> io::Result<ConnectReport> {
    let target = Target::parse(&opts.url)?;
    if opts.concurrency == 0 || opts.duration.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--concurrency and --duration must be positive",
        ));
    }
    let mut poll = Poll::new()?;
    let mut rng = XorShift::from_entropy();
    let mut report = ConnectReport {
        concurrency: opts.concurrency,
        ..ConnectReport::default()
    };
    let mut upgrade = Histogram::new();
    let mut lifecycle = Histogram::new();
    let mut slots: Vec<Option<Slot>> = (0..opts.concurrency).map(|_| None).collect();
    let mut idle: Vec<usize> = (0..opts.concurrency).collect();
    let mut request = Vec::with_capacity(256);
    let mut close = Vec::with_capacity(8);
    let mut buf = vec![0u8; 16 * 1024];
    let mut events = Events::with_capacity(1024);
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let start = Instant::now();
    let end = start + opts.duration;
    let mut last_sweep = start;
    let note = |report: &mut ConnectReport, f: Failure| {
        let why = match f {
            Failure::Connect(w) => {
                report.connect_failures += 1;
                w
            }
            Failure::Handshake(w) => {
                report.handshake_failures += 1;
                w
            }
            Failure::Close(w) => {
                report.close_failures += 1;
                w
            }
        };
        if report.first_error.is_none() {
            report.first_error = Some(why);
        }
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Start lifecycles in idle slots. One that fails at once waits for the next turn.
        let mut retry = Vec::new();
        for index in idle.drain(..) {
            report.attempts += 1;
            match start_slot(&poll, &target, index, &mut rng, &mut request) {
                Ok(slot) => {
                    if let Some(s) = slots.get_mut(index) {
                        *s = Some(slot);
                    }
                }
                Err(e) => {
                    note(&mut report, Failure::Connect(format!("connect: {e}")));
                    retry.push(index);
                }
            }
        }
        idle = retry;
        let wait = if idle.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(10)
        };
        match poll.poll(
            &mut events,
            Some(wait.min(end.saturating_duration_since(now))),
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(entry) = slots.get_mut(index) else {
                continue;
            };
            let Some(slot) = entry.as_mut() else {
                continue;
            };
            let outcome = advance(
                slot,
                &target,
                &mut buf,
                &mut request,
                &mut close,
                &mut rng,
                &mut upgrade,
            );
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    lifecycle.record(slot.started.elapsed().as_nanos() as u64);
                    report.completed += 1;
                    finish(entry);
                    idle.push(index);
                }
                Err(f) => {
                    note(&mut report, f);
                    finish(entry);
                    idle.push(index);
                }
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(100) {
            last_sweep = Instant::now();
            for (index, entry) in slots.iter_mut().enumerate() {
                if entry
                    .as_ref()
                    .is_some_and(|s| s.started.elapsed() > Duration::from_secs(5))
                {
                    report.timeouts += 1;
                    if report.first_error.is_none() {
                        report.first_error = Some("lifecycle timed out".into());
                    }
                    finish(entry);
                    idle.push(index);
                }
            }
        }
    }
    let window = start.elapsed().as_secs_f64();
    report.client_cpu_pct = cpu.percent().unwrap_or(0.0);
    report.server_cpu_pct = server_cpu.and_then(|m| m.percent());
    for entry in slots.iter_mut() {
        if entry.is_some() {
            report.abandoned += 1;
            finish(entry);
        }
    }
    report.window_secs = window;
    report.handshakes_per_sec = report.completed as f64 / window.max(1e-9);
    report.upgrade = upgrade.percentiles_us();
    report.lifecycle = lifecycle.percentiles_us();
    Ok(report)
}

/// Starts a lifecycle. On loopback the TCP handshake usually completes inside `connect`, so
/// the request is written at once; only if the socket is not connected yet does the slot wait
/// for `WRITABLE`. Nagle stays on: nothing is ever written behind unacknowledged data.
fn start_slot(
    poll: &Poll,
    target: &Target,
    index: usize,
    rng: &mut XorShift,
    request: &mut Vec<u8>,
) -> io::Result<Slot> {
    let started = Instant::now();
    let mut stream = connect_nonblocking(target.addr, None, false)?;
    poll.registry().register(
        &mut stream,
        Token(index),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let key = rng.handshake_key();
    request.clear();
    write_upgrade_request(request, &target.host, &target.path, &key, false);
    let phase = match stream.write(request) {
        Ok(n) if n == request.len() => Phase::Upgrading,
        Ok(_) => return Err(io::Error::other("request only partly written")),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected =>
        {
            Phase::Connecting
        }
        Err(e) => return Err(e),
    };
    Ok(Slot {
        stream,
        phase,
        key,
        started,
        decoder: ClientDecoder::new(),
        response: Vec::new(),
    })
}

/// Ends a lifecycle. Closing the socket removes it from the epoll set (its descriptor is
/// never duplicated), so no `deregister` call is spent on it.
fn finish(entry: &mut Option<Slot>) {
    entry.take();
}

/// Moves one lifecycle forward; `Ok(true)` when it completed.
fn advance(
    slot: &mut Slot,
    target: &Target,
    buf: &mut [u8],
    request: &mut Vec<u8>,
    close: &mut Vec<u8>,
    rng: &mut XorShift,
    upgrade: &mut Histogram,
) -> Result<bool, Failure> {
    if slot.phase == Phase::Connecting {
        match slot.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(Failure::Connect(format!("connect: {e}"))),
            Ok(None) => {}
        }
        match slot.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(Failure::Connect(format!("connect: {e}"))),
        }
        request.clear();
        write_upgrade_request(request, &target.host, &target.path, &slot.key, false);
        // A fresh socket's buffer takes a 150-byte request whole.
        match slot.stream.write(request) {
            Ok(n) if n == request.len() => slot.phase = Phase::Upgrading,
            Ok(_) => return Err(Failure::Connect("request only partly written".into())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(Failure::Connect(format!("write: {e}"))),
        }
    }
    loop {
        let n = match slot.stream.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match slot.phase {
                    Phase::Connecting | Phase::Upgrading => {
                        Failure::Handshake(format!("read: {e}"))
                    }
                    _ => Failure::Close(format!("read: {e}")),
                })
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        if n == 0 {
            return match slot.phase {
                Phase::AwaitFin => Ok(true),
                Phase::AwaitClose => Err(Failure::Close("FIN before the close frame".into())),
                _ => Err(Failure::Handshake("closed before 101".into())),
            };
        }
        let mut frames = data;
        if slot.phase == Phase::Upgrading {
            let before = slot.response.len();
            slot.response.extend_from_slice(data);
            match parse_upgrade_response(&slot.response, &slot.key, false) {
                Ok(Some(up)) => {
                    let len = up.head_len;
                    upgrade.record(slot.started.elapsed().as_nanos() as u64);
                    close.clear();
                    encode_close(close, 1000, rng.mask_key());
                    match slot.stream.write(close) {
                        Ok(n) if n == close.len() => {}
                        Ok(_) => return Err(Failure::Close("close only partly written".into())),
                        Err(e) => return Err(Failure::Close(format!("write close: {e}"))),
                    }
                    slot.phase = Phase::AwaitClose;
                    frames = data.get(len.saturating_sub(before)..).unwrap_or_default();
                    slot.response = Vec::new();
                }
                Ok(None) => continue,
                Err(e) => return Err(Failure::Handshake(e.to_string())),
            }
        }
        while !frames.is_empty() {
            let (used, piece) = slot
                .decoder
                .decode(frames)
                .map_err(|e| Failure::Close(e.to_string()))?;
            frames = frames.get(used..).unwrap_or_default();
            if let Some(piece) = piece {
                if piece.header.opcode == OpCode::Close && piece.is_last() {
                    if slot.phase != Phase::AwaitClose {
                        return Err(Failure::Close("second close frame".into()));
                    }
                    slot.phase = Phase::AwaitFin;
                }
            }
        }
    }
}
