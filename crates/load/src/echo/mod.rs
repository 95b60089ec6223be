//! `echo` and `latency`: closed-loop echo load with every echo verified byte for byte.
//!
//! Each connection keeps `inflight` messages outstanding: every echo completed sends the
//! next message. [`plan`] decides what the messages carry (pre-encoded strips, or messages
//! cut from a corpus and compressed when deflate is on), [`measure`] verifies the echoes and
//! takes their round trips, [`report`] prints the result. The report gives the wire ratio:
//! frame bytes on the wire per payload byte, each way.

mod measure;
mod plan;
mod report;

use std::io;
use std::time::{Duration, Instant};

use crate::client::ConnConfig;
use crate::driver::Driver;
use crate::net::{default_sources, Target};
use crate::open::{open_all, OpenPlan};
use crate::payload::Payload;
use crate::stats::{rss_kib, CpuMeter};
use measure::Echo;
use plan::Plan;
pub use report::EchoReport;

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

/// Runs the echo benchmark.
///
/// # Errors
/// A bad or non-loopback URL, bad options, or a failing poller. Connection failures and
/// mismatches are reported, not returned.
pub fn run_echo(opts: &EchoOptions) -> io::Result<EchoReport> {
    run(opts, "echo")
}

/// Runs the latency benchmark: [`run_echo`] with one connection and one message in flight
/// (`conns` and `inflight` are ignored).
///
/// # Errors
/// As [`run_echo`].
pub fn run_latency(opts: &EchoOptions) -> io::Result<EchoReport> {
    let echo = EchoOptions {
        conns: 1,
        inflight: 1,
        ..opts.clone()
    };
    run(&echo, "latency")
}

/// Largest payload `echo` accepts (the server's default message limit).
pub const MAX_ECHO_SIZE: usize = 16 << 20;
/// The read buffer shared by every connection. Small enough to stay in the core's L2 cache
/// beside the stretch of the sent message an echo is compared with: with 256 KiB, a large
/// echo's receive copy and comparison missed the L2 and wsload, not the server, set the pace
/// of the 4 MiB and 16 MiB points (95 % of its CPU against 70–80 % of wsloop's; see
/// benches/README.md).
const READ_BUF: usize = 64 * 1024;

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
    let mut driver = Driver::new(READ_BUF)?;
    let plan = Plan::new(opts, &mut driver.shared().rng);
    let mut echo = Echo::new(&plan, opts.conns, opts.inflight);
    let opening = open_all(
        &mut driver,
        &mut echo,
        std::slice::from_ref(&target),
        &OpenPlan {
            count: opts.conns,
            max_pending: 256,
            sources: default_sources(target.addr, opts.conns, None, 20_000),
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30) + Duration::from_millis(opts.conns as u64),
            config: ConnConfig {
                offer_deflate: opts.deflate,
                one_message: false,
                // One byte over the size is enough to tell a longer echo.
                max_message: opts.size + 1,
            },
        },
    )?;
    echo.tally.errors += opening.failures.total();
    if let Some(first) = opening.failures.first {
        echo.tally.first_error.get_or_insert(first);
    }
    for id in 0..opts.conns {
        driver.with_conn(id, |conn, shared| echo.start(id, conn, shared));
    }

    let warmup_end = Instant::now() + opts.warmup;
    // Until the window ends, or no connection is left.
    let all_gone = |_: &Echo<'_>, d: &Driver| d.live() == 0;
    driver.run_until(&mut echo, warmup_end, all_gone)?;
    echo.tally.start_window();
    driver.reset_io();
    let window_start = Instant::now();
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    driver.run_until(&mut echo, window_start + opts.duration, all_gone)?;
    let window = window_start.elapsed();
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    let server_rss_kib = opts.server_pid.and_then(rss_kib);
    let io = driver.io();
    driver.close_all(Duration::from_secs(1))?;

    let tally = echo.tally;
    let secs = window.as_secs_f64().max(1e-9);
    let msgs = tally.msgs;
    let bytes = msgs * opts.size as u64;
    let ratio = |wire: u64| (bytes > 0).then(|| wire as f64 / bytes as f64);
    Ok(EchoReport {
        mode,
        conns: opts.conns,
        conns_open: opening.established,
        inflight: opts.inflight,
        size: opts.size,
        binary: opts.binary,
        payload: opts.payload,
        deflate_offered: opts.deflate,
        deflate_conns: echo.deflate_conns,
        deflate_answer: echo.deflate_answer,
        wire_ratio_recv: ratio(tally.wire_recv),
        wire_ratio_sent: ratio(tally.wire_sent),
        window_secs: secs,
        msgs,
        msgs_per_sec: msgs as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        latency: tally.hist.percentiles_us(),
        read_calls: io.reads,
        write_calls: io.writes,
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
