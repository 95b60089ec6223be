//! Opening many connections with bounded concurrency, on the [driver](crate::driver): at
//! most `max_pending` between `connect` and `101` at once, each within its own time and all
//! within the plan's, failures counted by stage.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::client::{ClientConn, ConnConfig, Event, Shared};
use crate::driver::{Driver, End, Expiry, Handler, Stage};
use crate::net::{connect_nonblocking, source_for, PortPicker, Target};

/// How [`open_all`] opens its connections.
#[derive(Debug, Clone)]
pub struct OpenPlan {
    /// How many connections: ids `0..count`, connection `i` to `targets[i % targets.len()]`.
    pub count: usize,
    /// Most connections between `connect` and `101` at once.
    pub max_pending: usize,
    /// Source addresses: (first, connections per address); `None` lets the kernel choose.
    pub sources: Option<(Ipv4Addr, usize)>,
    /// One connection's budget from `connect` to `101`.
    pub attempt_timeout: Duration,
    /// Budget for the whole opening.
    pub total_timeout: Duration,
    /// How each connection is set up.
    pub config: ConnConfig,
}

/// Why connections failed to open, by stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenFailures {
    /// Socket, bind or TCP connect failures (refused, no file descriptors, ...).
    pub connect: u64,
    /// Bad or refused upgrade answers (e.g. `503` over `--max-conns`), or closed early.
    pub handshake: u64,
    /// Attempts that ran out of time.
    pub timeout: u64,
    /// The first failure's description, for the report.
    pub first: Option<String>,
}

impl OpenFailures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.handshake + self.timeout
    }
}

/// What [`open_all`] achieved.
#[derive(Debug, Clone)]
pub struct Opening {
    /// Connections that completed the upgrade.
    pub established: usize,
    /// Failures by stage.
    pub failures: OpenFailures,
    /// Wall time of the whole opening.
    pub elapsed: Duration,
}

/// The handler while opening: counts openings and failures, and passes everything about
/// connections already open to the mode's handler.
struct Opener<'h, H> {
    inner: &'h mut H,
    /// Which ids completed the upgrade.
    opened: Vec<bool>,
    pending: usize,
    established: usize,
    failures: OpenFailures,
}

impl<H: Handler> Handler for Opener<'_, H> {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        if let Event::Opened { .. } = event {
            if let Some(opened) = self.opened.get_mut(id) {
                *opened = true;
                self.pending -= 1;
                self.established += 1;
            }
        }
        self.inner.on_event(id, event, now)
    }

    fn answer(&mut self, id: usize, conn: &mut ClientConn, shared: &mut Shared, now: Instant) {
        self.inner.answer(id, conn, shared, now);
    }

    fn on_end(&mut self, id: usize, end: End) {
        if self.opened.get(id).copied().unwrap_or(true) {
            return self.inner.on_end(id, end);
        }
        self.pending -= 1;
        let why = match end {
            End::Failed {
                stage: Stage::Connect,
                why,
            } => {
                self.failures.connect += 1;
                why
            }
            End::Failed { why, .. } => {
                self.failures.handshake += 1;
                why
            }
            End::Closed => {
                self.failures.handshake += 1;
                "closed before 101".into()
            }
            End::TimedOut => {
                self.failures.timeout += 1;
                format!("connection {id} timed out")
            }
        };
        self.failures.first.get_or_insert(why);
    }
}

/// Opens `plan.count` WebSocket connections as ids `0..count` on `driver`, connection `i` to
/// `targets[i % targets.len()]`. Events of connections already open go to `handler` (which
/// sees [`Event::Opened`] for each), as do their ends; failures to open are only counted.
///
/// # Errors
/// No target, or a failing poll; connection failures are counted in the outcome.
pub fn open_all<H: Handler>(
    driver: &mut Driver,
    handler: &mut H,
    targets: &[Target],
    plan: &OpenPlan,
) -> io::Result<Opening> {
    if targets.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target"));
    }
    let start = Instant::now();
    let deadline = start + plan.total_timeout;
    let mut opener = Opener {
        inner: handler,
        opened: vec![false; plan.count],
        pending: 0,
        established: 0,
        failures: OpenFailures::default(),
    };
    let mut ports = PortPicker::default();
    let mut next = 0usize;
    loop {
        while opener.pending < plan.max_pending.max(1) && next < plan.count {
            let id = next;
            next += 1;
            match dial(driver, &mut ports, targets, plan, id) {
                Ok(()) => opener.pending += 1,
                Err(e) => {
                    opener.failures.connect += 1;
                    opener
                        .failures
                        .first
                        .get_or_insert_with(|| format!("connect: {e}"));
                }
            }
        }
        if opener.pending == 0 && next >= plan.count {
            break;
        }
        if Instant::now() >= deadline {
            for id in 0..next {
                if !opener.opened.get(id).copied().unwrap_or(true) && driver.is_live(id) {
                    driver.end(id, End::TimedOut, &mut opener);
                }
            }
            // Never started: out of time too.
            opener.failures.timeout += (plan.count - next) as u64;
            opener
                .failures
                .first
                .get_or_insert_with(|| "opening timed out".into());
            break;
        }
        driver.turn(&mut opener, Duration::from_millis(50))?;
    }
    Ok(Opening {
        established: opener.established,
        failures: opener.failures,
        elapsed: start.elapsed(),
    })
}

/// Starts connection `id`: its socket (from its planned source address, if any) and its
/// upgrade request.
fn dial(
    driver: &mut Driver,
    ports: &mut PortPicker,
    targets: &[Target],
    plan: &OpenPlan,
    id: usize,
) -> io::Result<()> {
    let target = targets
        .get(id % targets.len().max(1))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no target"))?;
    let stream = match source_for(id, plan.sources) {
        Some(ip) => {
            let slot = id / plan.sources.map_or(1, |(_, per)| per.max(1));
            ports.connect(target.addr, ip, slot)?
        }
        None => connect_nonblocking(target.addr, None, true)?,
    };
    let conn = ClientConn::new(
        &target.host,
        &target.path,
        plan.config,
        &mut driver.shared().rng,
    );
    let expiry = Expiry::OpenBy(Instant::now() + plan.attempt_timeout);
    driver.add(id, stream, conn, Some(expiry))
}
