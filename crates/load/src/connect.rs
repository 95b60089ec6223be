//! `connect`: whole connection lifecycles per second — TCP connect, upgrade, close handshake
//! (client first), and the server's TCP close — with `concurrency` lifecycles in parallel.

use std::io;
use std::time::{Duration, Instant};

use wsloop_proto::close::CloseCode;

use crate::client::{ClientConn, ConnConfig, Event, Shared};
use crate::driver::{Driver, End, Expiry, Handler, Stage};
use crate::net::{connect_nonblocking, Target};
use crate::report::{JsonLine, Table};
use crate::stats::{CpuMeter, Histogram, Percentiles};

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

/// The connect mode's handler: one lifecycle per slot, slots reused as lifecycles end.
struct Lifecycles {
    /// When each slot's lifecycle started.
    started: Vec<Instant>,
    /// Slots whose upgrade just completed: their close goes out next.
    to_close: Vec<bool>,
    /// Slots free for a new lifecycle.
    idle: Vec<usize>,
    upgrade: Histogram,
    lifecycle: Histogram,
    report: ConnectReport,
}

impl Lifecycles {
    fn elapsed_ns(&self, id: usize, now: Instant) -> u64 {
        self.started
            .get(id)
            .map_or(0, |s| now.saturating_duration_since(*s).as_nanos() as u64)
    }
}

impl Handler for Lifecycles {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        match event {
            Event::Opened { .. } => {
                self.upgrade.record(self.elapsed_ns(id, now));
                if let Some(close) = self.to_close.get_mut(id) {
                    *close = true;
                }
            }
            Event::Close {
                client_first: false,
                ..
            } => return Err("the server closed first".into()),
            Event::Close { .. } | Event::Data(_) | Event::Pong(_) => {}
        }
        Ok(())
    }

    /// The upgrade is complete: start the close handshake at once.
    fn answer(&mut self, id: usize, conn: &mut ClientConn, shared: &mut Shared, _now: Instant) {
        if let Some(close) = self.to_close.get_mut(id).filter(|c| **c) {
            *close = false;
            conn.close(CloseCode::NORMAL, &mut shared.rng);
        }
    }

    fn on_end(&mut self, id: usize, end: End) {
        self.idle.push(id);
        let why = match end {
            End::Closed => {
                let took = self.elapsed_ns(id, Instant::now());
                self.lifecycle.record(took);
                self.report.completed += 1;
                return;
            }
            End::TimedOut => {
                self.report.timeouts += 1;
                "lifecycle timed out".to_owned()
            }
            End::Failed { stage, why } => {
                match stage {
                    Stage::Connect => self.report.connect_failures += 1,
                    Stage::Upgrade => self.report.handshake_failures += 1,
                    Stage::Open => self.report.close_failures += 1,
                }
                why
            }
        };
        self.report.first_error.get_or_insert(why);
    }
}

/// How long one lifecycle may take.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut driver = Driver::new(16 * 1024)?;
    let mut lives = Lifecycles {
        started: vec![Instant::now(); opts.concurrency],
        to_close: vec![false; opts.concurrency],
        idle: (0..opts.concurrency).collect(),
        upgrade: Histogram::new(),
        lifecycle: Histogram::new(),
        report: ConnectReport {
            concurrency: opts.concurrency,
            ..ConnectReport::default()
        },
    };
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let start = Instant::now();
    let end = start + opts.duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Start lifecycles in idle slots. One that fails at once waits for the next turn.
        for id in std::mem::take(&mut lives.idle) {
            lives.report.attempts += 1;
            let started = Instant::now();
            if let Some(s) = lives.started.get_mut(id) {
                *s = started;
            }
            if let Err(e) = start_lifecycle(&mut driver, &target, id, started) {
                lives.report.connect_failures += 1;
                lives
                    .report
                    .first_error
                    .get_or_insert_with(|| format!("connect: {e}"));
                lives.idle.push(id);
            }
        }
        let wait = if lives.idle.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(10)
        };
        driver.turn(&mut lives, wait.min(end.saturating_duration_since(now)))?;
    }
    let mut report = lives.report;
    report.window_secs = start.elapsed().as_secs_f64();
    report.client_cpu_pct = cpu.percent().unwrap_or(0.0);
    report.server_cpu_pct = server_cpu.and_then(|m| m.percent());
    report.abandoned = driver.abandon_all() as u64;
    report.handshakes_per_sec = report.completed as f64 / report.window_secs.max(1e-9);
    report.upgrade = lives.upgrade.percentiles_us();
    report.lifecycle = lives.lifecycle.percentiles_us();
    Ok(report)
}

/// Starts a lifecycle in slot `id`. Nagle stays on: nothing is ever written behind
/// unacknowledged data.
fn start_lifecycle(
    driver: &mut Driver,
    target: &Target,
    id: usize,
    started: Instant,
) -> io::Result<()> {
    let stream = connect_nonblocking(target.addr, None, false)?;
    let conn = ClientConn::new(
        &target.host,
        &target.path,
        ConnConfig::default(),
        &mut driver.shared().rng,
    );
    driver.add(
        id,
        stream,
        conn,
        Some(Expiry::EndBy(started + LIFECYCLE_TIMEOUT)),
    )
}
