//! What a mix measures of the server, from the first byte of its attack on: RSS (`VmRSS` at
//! the start, the highest `VmHWM`), CPU (utime + stime), what the memory budget counted
//! (`buffered_bytes` of `/stats`), and how long an unrelated echo client had to wait.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wsload::stats::cpu_seconds;
use wsloop::protocol::frame::OpCode;

use super::client::{frame, Tally, Ws};

/// How often the unrelated client sends its small message.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// A mix's figures.
#[derive(Debug)]
pub struct Figures {
    /// `VmRSS` when the attack started, in bytes.
    pub base: Option<u64>,
    /// The highest `VmHWM`, in bytes.
    pub peak: Option<u64>,
    /// The highest `buffered_bytes` that `/stats` reported.
    pub budget: Option<u64>,
    /// Server CPU seconds (user + system) from the attack's start until it went quiet.
    pub cpu_secs: Option<f64>,
    pub probe: ProbeResult,
}

impl Figures {
    /// How far the peak rose above the base.
    pub fn growth(&self) -> Option<u64> {
        Some(self.peak?.saturating_sub(self.base?))
    }
}

/// The instruments of one mix, started when its attack starts.
pub struct Measure {
    pid: u32,
    base: Option<u64>,
    cpu_before: Option<f64>,
    probe: Probe,
    peak: MaxWatch,
    budget: MaxWatch,
}

impl Measure {
    /// Connects the echo client and starts watching the server (`pid`, listening on `addr`).
    pub fn start(addr: SocketAddr, pid: u32) -> Measure {
        let probe = Probe::start(addr);
        reset_peak(pid);
        Measure {
            pid,
            base: status_bytes(pid, "VmRSS"),
            cpu_before: cpu_seconds(Some(pid)),
            probe,
            // `VmHWM` often, in case the server dies: its `/proc` entry then loses the figure.
            peak: MaxWatch::start(Duration::from_millis(10), move || {
                status_bytes(pid, "VmHWM")
            }),
            budget: MaxWatch::start(Duration::from_millis(100), move || {
                stat(addr, "buffered_bytes")
            }),
        }
    }

    /// Waits until the server has gone quiet (or `settle` has passed), then takes the figures.
    pub fn finish(self, settle: Duration) -> Figures {
        wait_until_quiet(self.pid, settle);
        let cpu_secs = cpu_seconds(Some(self.pid))
            .zip(self.cpu_before)
            .map(|(now, before)| now - before);
        Figures {
            base: self.base,
            peak: self.peak.finish(),
            budget: self.budget.finish(),
            cpu_secs,
            probe: self.probe.finish(),
        }
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes; `None` once the process
/// is gone.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    wsload::stats::status_kib(pid, field).map(|kib| kib << 10)
}

/// Lowers the process's `VmHWM` to its present RSS (Linux's `clear_refs` value 5), so the
/// peak is the attack's, not the setup's (mixes (h) and (i) fill a queue first).
fn reset_peak(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("note: VmHWM not reset ({e}): the peak includes the mix's setup");
    }
}

/// A counter of `GET /stats` (e.g. `buffered_bytes`, what the memory budget counts).
pub fn stat(addr: SocketAddr, name: &str) -> Option<u64> {
    crate::support::stats(addr)?.get(name)?.as_u64()
}

/// Waits until the server has used under 20 ms of CPU in the last 500 ms (it has worked
/// through what the attack sent), or `limit` has passed, or it has exited.
fn wait_until_quiet(pid: u32, limit: Duration) {
    const STEP: Duration = Duration::from_millis(100);
    const WINDOW: usize = 5;
    let end = Instant::now() + limit;
    let mut samples = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(STEP);
        let Some(cpu) = cpu_seconds(Some(pid)) else {
            return;
        };
        samples.push(cpu);
        if samples.len() > WINDOW && cpu - samples[samples.len() - 1 - WINDOW] < 0.02 {
            return;
        }
    }
}

/// Reads one figure on a thread of its own, every `every`, and keeps the highest: so a peak
/// is known even if the server dies or stalls (a `/stats` answer then comes late).
struct MaxWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<u64>>,
}

impl MaxWatch {
    fn start(every: Duration, read: impl Fn() -> Option<u64> + Send + 'static) -> MaxWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut highest = None;
            loop {
                highest = highest.max(read());
                if flag.load(Relaxed) {
                    return highest;
                }
                std::thread::sleep(every);
            }
        });
        MaxWatch { stop, thread }
    }

    /// The highest reading, one last reading now included.
    fn finish(self) -> Option<u64> {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("watch")
    }
}

/// What the unrelated echo client saw during a mix.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    /// The longest wait for an echo, including one still outstanding at the end.
    pub worst: Duration,
    pub echoes: u64,
    /// The server closed its connection or stopped taking its messages.
    pub lost: bool,
}

/// The unrelated client of every mix: a small echo every 10 ms on a connection of its own.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeResult>,
}

impl Probe {
    fn start(addr: SocketAddr) -> Probe {
        let ws = Ws::connect(addr, "/");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || probe_loop(ws, &flag));
        Probe { stop, thread }
    }

    fn finish(self) -> ProbeResult {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("echo client")
    }
}

/// Sends a small text message, waits for its echo, keeps the longest wait; every 10 ms until
/// `stop` (or until the connection fails).
fn probe_loop(mut ws: Ws, stop: &AtomicBool) -> ProbeResult {
    let tally = Tally::default();
    let message = frame(OpCode::Text, b"are you there?");
    let mut result = ProbeResult {
        worst: Duration::ZERO,
        echoes: 0,
        lost: false,
    };
    let mut next = Instant::now();
    while !stop.load(Relaxed) {
        let sent = Instant::now();
        let mut alive = ws.send(&message).is_ok();
        while alive && tally.messages() == result.echoes && !stop.load(Relaxed) {
            alive = matches!(ws.receive(&tally), Ok(true));
        }
        result.worst = result.worst.max(sent.elapsed());
        if !alive {
            result.lost = true;
            return result;
        }
        result.echoes = tally.messages();
        next = (next + PROBE_EVERY).max(Instant::now());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    result
}
