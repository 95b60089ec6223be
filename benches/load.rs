//! `cargo bench --bench load`: wsloop side by side with two Rust peers (issue 9).
//!
//! The peers are `crates/peers/src/bin/peer_tokio_tungstenite.rs` and `…/peer_fastwebsockets.rs`
//! (the `wsloop-peers` package, built only here, so `cargo test` never compiles tokio or hyper),
//! each written the way its crate's own echo example is. Every point gets a fresh server
//! process on a free loopback port, pinned to CPU 0, and the project's load generator `wsload`
//! pinned to CPU 1 (when there are two CPUs); the servers take turns within each round, rounds
//! repeat, and the table shows medians with each peer's ratio to wsloop. Why a separate
//! process per point and interleaving: a server's memory and a machine's background load
//! drift over minutes, and this way the drift falls on all three alike.
//!
//! Server CPU per echoed message comes from `wsload --server-pid`, which reads the server's
//! `/proc/PID/stat` utime + stime over the measured window only (warm-up excluded).
//!
//! Options (unknown ones, like the `--bench` that cargo passes, are ignored):
//! - `--quick` or `WSLOOP_BENCH_QUICK=1`: ~1 s per point, 1 round, 1 000 idle connections.
//! - `--rounds N`, `--secs S`: override the rounds (default 2) and measured seconds (5).
//! - `--only abc`: run only the points with these letters.
//! - `--rt` or `WSLOOP_BENCH_RT=1`: run servers and wsload under `chrt -f 10` (SCHED_FIFO), so
//!   that other work on a shared machine (compilers at normal priority) cannot starve them;
//!   Linux throttles real-time tasks to 95 % of each second, so tail latencies then carry
//!   50 ms artifacts.
//! - `--perf` or `WSLOOP_BENCH_PERF=1`: record `perf record -g` of the server during each
//!   point, into `target/load-perf/POINT-SERVER.data`.
//! - `--baseline PATH` or `WSLOOP_BENCH_BASELINE=PATH`: one more server, "wsloop-before", run
//!   from that binary (e.g. a build of the commit before a refactor) with the same arguments as
//!   wsloop, interleaved with the others in each round and with its own ratio column; so a
//!   change is measured before and after in one run, under the same machine drift.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use support::{path, Launch, Running};

/// The servers compared, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Wsloop,
    /// wsloop from `--baseline PATH`: the same server before a change.
    Before,
    Tungstenite,
    Fastws,
}

/// The peers, in the order of the table's columns (each with its ratio to wsloop).
const PEERS: [Server; 3] = [Server::Before, Server::Tungstenite, Server::Fastws];

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Wsloop => "wsloop",
            Server::Before => "wsloop-before",
            Server::Tungstenite => "tokio-tungstenite",
            Server::Fastws => "fastwebsockets",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Server::Wsloop => "wsloop",
            Server::Before => "before",
            Server::Tungstenite => "tungstenite",
            Server::Fastws => "fastws",
        }
    }

    /// The program and its arguments to listen on `addr`.
    fn command(self, settings: &Settings, addr: SocketAddr) -> Vec<String> {
        let bins = &settings.bins;
        let addr = addr.to_string();
        match self {
            Server::Wsloop => vec![path(&bins.join("wsloop")), "--addr".into(), addr],
            Server::Before => {
                let baseline = settings.baseline.as_deref().expect("--baseline");
                vec![path(baseline), "--addr".into(), addr]
            }
            Server::Tungstenite => vec![path(&bins.join("peer_tokio_tungstenite")), addr],
            Server::Fastws => vec![path(&bins.join("peer_fastwebsockets")), addr],
        }
    }
}

/// What one point asks of `wsload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Latency,
    Echo {
        conns: usize,
        inflight: usize,
        size: usize,
    },
    Hold,
    /// [`Load::Hold`] on a server that first echoed large messages for a while: what the burst
    /// leaves behind counts against the idle connections.
    HoldAfterBurst,
    Connect,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    key: char,
    label: &'static str,
    load: Load,
}

const POINTS: [Point; 10] = [
    Point {
        key: 'a',
        label: "1 conn x 32 B ping-pong",
        load: Load::Latency,
    },
    Point {
        key: 'b',
        label: "64 conns x 32 B, 16 in flight",
        load: Load::Echo {
            conns: 64,
            inflight: 16,
            size: 32,
        },
    },
    Point {
        key: 'c',
        label: "256 conns x 1 KiB, 4 in flight",
        load: Load::Echo {
            conns: 256,
            inflight: 4,
            size: 1024,
        },
    },
    Point {
        key: 'd',
        label: "8 conns x 64 KiB, 4 in flight",
        load: Load::Echo {
            conns: 8,
            inflight: 4,
            size: 64 << 10,
        },
    },
    Point {
        key: 'e',
        label: "2 conns x 4 MiB, 2 in flight",
        load: Load::Echo {
            conns: 2,
            inflight: 2,
            size: 4 << 20,
        },
    },
    Point {
        key: 'i',
        label: "2 conns x 16 MiB, 2 in flight",
        load: Load::Echo {
            conns: 2,
            inflight: 2,
            size: 16 << 20,
        },
    },
    Point {
        key: 'f',
        label: "idle connections",
        load: Load::Hold,
    },
    Point {
        key: 'j',
        label: "idle connections after a burst of 16 MiB messages",
        load: Load::HoldAfterBurst,
    },
    Point {
        key: 'g',
        label: "handshakes (connect, upgrade, close)",
        load: Load::Connect,
    },
    Point {
        key: 'h',
        label: "64 conns x 32 B, 64 in flight (client ceiling)",
        load: Load::Echo {
            conns: 64,
            inflight: 64,
            size: 32,
        },
    },
];

/// How a metric compares: which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// One number a run yields, by name.
#[derive(Debug, Clone, Copy)]
struct Metric {
    name: &'static str,
    better: Better,
}

impl Metric {
    const fn lower(name: &'static str) -> Metric {
        Metric {
            name,
            better: Better::Lower,
        }
    }

    const fn higher(name: &'static str) -> Metric {
        Metric {
            name,
            better: Better::Higher,
        }
    }
}

const P50: Metric = Metric::lower("RTT p50 us");
const P99: Metric = Metric::lower("RTT p99 us");
const MSGS: Metric = Metric::higher("msgs/s");
const MBS: Metric = Metric::higher("MB/s each way");
const CPU_MSG: Metric = Metric::lower("server CPU us/msg");
const CLIENT_CPU: Metric = Metric::lower("wsload CPU %");
const RSS_CONN: Metric = Metric::lower("server RSS B/conn");
const PEAK_RSS: Metric = Metric::lower("server peak RSS MiB");
const RSS_CONN_FRESH: Metric = Metric::lower("server RSS B/conn over a fresh server");
const HELD: Metric = Metric::higher("connections held");
const HS: Metric = Metric::higher("handshakes/s");
const CPU_HS: Metric = Metric::lower("server CPU us/handshake");

impl Load {
    fn metrics(self) -> &'static [Metric] {
        match self {
            Load::Latency => &[P50, P99, CPU_MSG, CLIENT_CPU],
            Load::Echo { .. } => &[MSGS, MBS, CPU_MSG, CLIENT_CPU, PEAK_RSS],
            Load::Hold => &[RSS_CONN, HELD],
            Load::HoldAfterBurst => &[RSS_CONN_FRESH, RSS_CONN, HELD],
            Load::Connect => &[HS, CPU_HS, CLIENT_CPU],
        }
    }
}

/// The run's settings.
#[derive(Debug)]
struct Settings {
    quick: bool,
    rounds: usize,
    secs: f64,
    warmup: f64,
    idle_conns: usize,
    only: Option<String>,
    perf: bool,
    launch: Launch,
    bins: PathBuf,
    /// The "wsloop-before" binary, when comparing with one.
    baseline: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let args = support::Args::from_env();
        let quick = args.flag("--quick", "WSLOOP_BENCH_QUICK");
        let baseline = args
            .value("--baseline")
            .map(str::to_owned)
            .or_else(|| std::env::var("WSLOOP_BENCH_BASELINE").ok())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(baseline) = &baseline {
            assert!(
                baseline.is_file(),
                "--baseline {}: no such file",
                path(baseline)
            );
        }
        Settings {
            quick,
            rounds: args.parsed("--rounds").unwrap_or(if quick { 1 } else { 2 }),
            secs: args
                .parsed("--secs")
                .unwrap_or(if quick { 1.0 } else { 5.0 }),
            warmup: if quick { 0.3 } else { 1.0 },
            idle_conns: if quick { 1_000 } else { 10_000 },
            only: args.value("--only").map(str::to_owned),
            perf: args.flag("--perf", "WSLOOP_BENCH_PERF"),
            launch: Launch::new(args.flag("--rt", "WSLOOP_BENCH_RT")),
            bins: support::release_dir(),
            baseline,
        }
    }

    /// The servers each round runs, in order: "wsloop-before" only with `--baseline`.
    fn servers(&self) -> Vec<Server> {
        let mut servers = vec![Server::Wsloop];
        servers.extend(self.peers());
        servers
    }

    /// The servers compared with wsloop, in the table's column order.
    fn peers(&self) -> Vec<Server> {
        PEERS
            .into_iter()
            .filter(|s| *s != Server::Before || self.baseline.is_some())
            .collect()
    }

    fn wants(&self, point: &Point) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(point.key))
    }
}

fn main() {
    let settings = Settings::from_env();
    support::build(&[
        "--package",
        "wsloop",
        "--package",
        "wsload",
        "--package",
        "wsloop-peers",
        "--bins",
    ]);
    eprintln!(
        "load bench: {} round(s), {} s per point, {} idle connections, pinning {}",
        settings.rounds,
        settings.secs,
        settings.idle_conns,
        if settings.launch.pin {
            "server to CPU 0, wsload to CPU 1"
        } else {
            "off (one CPU)"
        }
    );
    if let Some(baseline) = &settings.baseline {
        eprintln!("wsloop-before: {}", path(baseline));
    }
    others_at_rt_priority("before");
    let started = Instant::now();
    // (point key, server) -> metric name -> one value per round.
    let mut results: BTreeMap<(char, Server), BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=settings.rounds {
        for point in POINTS.iter().filter(|p| settings.wants(p)) {
            for server in settings.servers() {
                let values = run_point(&settings, point, server);
                eprintln!(
                    "round {round} ({:.0} s) {} {}: {}",
                    started.elapsed().as_secs_f64(),
                    point.key,
                    server.short(),
                    values
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let slot = results.entry((point.key, server)).or_default();
                for (name, value) in values {
                    slot.entry(name).or_default().push(value);
                }
            }
        }
    }
    others_at_rt_priority("after");
    let medians: BTreeMap<(char, Server), BTreeMap<&'static str, f64>> = results
        .into_iter()
        .map(|(k, m)| (k, m.into_iter().map(|(n, v)| (n, median(v))).collect()))
        .collect();
    print_table(&settings, &medians);
    print_targets(&settings, &medians);
    println!(
        "\nsize_of::<Entry>() (a connection in the slab) = {} bytes; total {:.0} s",
        std::mem::size_of::<wsloop::internals::Entry>(),
        started.elapsed().as_secs_f64()
    );
}

/// Warns about real-time processes (FIFO/RR) on the machine: they preempt everything this bench
/// runs at normal priority and would skew its figures.
fn others_at_rt_priority(when: &str) {
    let Ok(out) = Command::new("ps")
        .args(["-eo", "cls=,ppid=,pid=,comm="])
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Kernel threads (children of kthreadd, PID 2) are real-time too; they are not load.
    let rt: Vec<&str> = text
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            matches!(fields.first(), Some(&("FF" | "RR")))
                && fields.get(1) != Some(&"2")
                && fields.get(2) != Some(&"2")
        })
        .collect();
    if !rt.is_empty() {
        eprintln!(
            "note: {} real-time process(es) {when} the run: {rt:?}",
            rt.len()
        );
    }
}

/// A fresh `server` on a free loopback port, pinned to CPU 0, its output discarded; with its
/// message size limit raised to [`LARGE_LIMIT`] for the points that need it (the peers have
/// theirs there always).
fn start_server(settings: &Settings, server: Server, point: &Point) -> Running {
    let addr = support::free_addr();
    let mut program = server.command(settings, addr);
    if point.load.large() && matches!(server, Server::Wsloop | Server::Before) {
        program.extend(["--max-message".to_owned(), LARGE_LIMIT.to_string()]);
    }
    let mut command = settings.launch.command(0, &program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Running::start(server.name(), command, addr)
}

/// The message size limit of the servers at the points over 4 MiB (the peers' limit too).
const LARGE_LIMIT: usize = 64 << 20;

impl Load {
    /// Whether its messages need the raised limit.
    fn large(self) -> bool {
        match self {
            Load::Echo { size, .. } => size > 4 << 20,
            Load::HoldAfterBurst => true,
            _ => false,
        }
    }
}

/// The `wsload` arguments of an echo run.
fn echo_args(conns: usize, inflight: usize, size: usize, warmup: &str) -> Vec<String> {
    let mut args: Vec<String> = ["echo", "--warmup", warmup, "--conns"]
        .map(str::to_owned)
        .to_vec();
    args.extend([
        conns.to_string(),
        "--inflight".into(),
        inflight.to_string(),
        "--size".into(),
        size.to_string(),
    ]);
    // 32 B messages are text (chat-like, UTF-8 checked); the larger ones binary.
    if size > 32 {
        args.push("--binary".into());
    }
    args
}

/// Runs `wsload echo` against `url` for `secs` (no warm-up), `(conns, inflight, size)`: work
/// that sets a server up before a point is measured, its report unread.
fn unmeasured_echo(
    settings: &Settings,
    wsload: &str,
    url: &str,
    (conns, inflight, size): (usize, usize, usize),
    secs: &str,
) {
    let mut args = vec![wsload.to_owned()];
    args.extend(echo_args(conns, inflight, size, "0"));
    args.extend(["--url", url, "--duration", secs].map(str::to_owned));
    run_wsload(settings, &args);
}

/// Runs one point against a fresh `server` and returns its metrics.
fn run_point(settings: &Settings, point: &Point, server: Server) -> Vec<(&'static str, f64)> {
    let running = start_server(settings, server, point);
    let pid = running.pid().to_string();
    let secs = settings.secs.to_string();
    let warmup = settings.warmup.to_string();
    let wsload = path(&settings.bins.join("wsload"));
    let url = format!("ws://{}/", running.addr());
    if matches!(point.load, Load::Hold | Load::HoldAfterBurst) {
        // One connection's echo first, so that the figures per connection count what
        // connections cost and not the code's first use: a server that gives back the pages
        // start-up mapped (wsloop does) maps the code and libc pages serving runs again on
        // first use, about 0.5 MiB, which over 10 000 connections would read as 50 B each.
        unmeasured_echo(settings, &wsload, &url, (1, 1, 32), "0.3");
    }
    let fresh_kib = status_kib(running.pid(), "VmRSS");
    let mut args: Vec<String> = vec![wsload.clone()];
    match point.load {
        Load::Latency => {
            args.extend(["latency", "--size", "32", "--warmup", &warmup].map(str::to_owned))
        }
        Load::Echo {
            conns,
            inflight,
            size,
        } => args.extend(echo_args(conns, inflight, size, &warmup)),
        Load::Hold | Load::HoldAfterBurst => {
            if point.load == Load::HoldAfterBurst {
                // The burst: 2 connections echoing 16 MiB messages for 2 s; then the pool's
                // idle time (1 s) and some.
                unmeasured_echo(settings, &wsload, &url, (2, 2, 16 << 20), "2");
                std::thread::sleep(std::time::Duration::from_millis(2500));
            }
            let conns = settings.idle_conns.to_string();
            args.extend(["hold", "--conns", &conns, "--ping-every", &secs].map(str::to_owned));
        }
        Load::Connect => args.push("connect".into()),
    }
    args.extend([
        "--url".into(),
        url,
        "--duration".into(),
        secs,
        "--server-pid".into(),
        pid,
    ]);
    let perf = settings
        .perf
        .then(|| start_perf(settings, point, server, running.pid()));
    let json = run_wsload(settings, &args);
    if let Some(mut perf) = perf {
        let _ = perf.wait();
    }
    let peak_kib = status_kib(running.pid(), "VmHWM");
    drop(running);
    let mut values = extract(point.load, &json);
    match point.load {
        Load::Echo { .. } => values.push((PEAK_RSS.name, peak_kib / 1024.0)),
        Load::HoldAfterBurst => {
            let held = field(&json, "established").max(1.0);
            let over_fresh = (field(&json, "server_rss_after_kib") - fresh_kib) * 1024.0 / held;
            values.push((RSS_CONN_FRESH.name, over_fresh));
        }
        _ => {}
    }
    values
}

/// A `kB` field of `/proc/PID/status` by its name (`NaN` when unreadable).
fn status_kib(pid: u32, field: &str) -> f64 {
    wsload::stats::status_kib(pid, field).map_or(f64::NAN, |kib| kib as f64)
}

/// `perf record -g` of the server for the length of the point (warm-up included).
fn start_perf(settings: &Settings, point: &Point, server: Server, pid: u32) -> Child {
    let dir = settings.bins.join("../load-perf");
    let _ = std::fs::create_dir_all(&dir);
    let out = dir.join(format!("{}-{}.data", point.key, server.short()));
    let secs = settings.secs + settings.warmup;
    Command::new("perf")
        .args([
            "record",
            "-g",
            "-q",
            "-o",
            &path(&out),
            "-p",
            &pid.to_string(),
        ])
        .args(["--", "sleep", &format!("{secs}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start perf")
}

/// Runs `wsload` (bounded by `timeout`, pinned to CPU 1) and returns its JSON line.
fn run_wsload(settings: &Settings, args: &[String]) -> Value {
    let limit = format!("{}", (settings.secs * 3.0) as u64 + 120);
    let mut program = vec!["timeout".to_owned(), "-s".into(), "KILL".into(), limit];
    program.extend_from_slice(args);
    let out = settings
        .launch
        .command(1, &program)
        .stdin(Stdio::null())
        .output()
        .expect("run wsload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let Some(json) = line.and_then(|l| serde_json::from_str::<Value>(l).ok()) else {
        panic!(
            "wsload gave no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !out.status.success() {
        eprintln!("  wsload reported a problem ({}): {json}", out.status);
    }
    json
}

fn field(json: &Value, key: &str) -> f64 {
    json.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The point's metrics from wsload's JSON line.
fn extract(load: Load, json: &Value) -> Vec<(&'static str, f64)> {
    // Server CPU seconds over the measured window, from the percentage wsload measured.
    let server_cpu_us = field(json, "server_cpu_pct") / 100.0 * field(json, "window_secs") * 1e6;
    match load {
        Load::Latency | Load::Echo { .. } => {
            let msgs = field(json, "msgs");
            let mut out = vec![
                (MSGS.name, field(json, "msgs_per_sec")),
                (MBS.name, field(json, "mb_per_sec")),
                (CPU_MSG.name, server_cpu_us / msgs),
                (CLIENT_CPU.name, field(json, "client_cpu_pct")),
            ];
            if let Load::Latency = load {
                out.push((P50.name, field(json, "p50_us")));
                out.push((P99.name, field(json, "p99_us")));
            }
            out
        }
        Load::Hold | Load::HoldAfterBurst => vec![
            (RSS_CONN.name, field(json, "server_rss_per_conn_bytes")),
            (HELD.name, field(json, "stayed_up")),
        ],
        Load::Connect => {
            let rate = field(json, "handshakes_per_sec");
            vec![
                (HS.name, rate),
                (
                    CPU_HS.name,
                    field(json, "server_cpu_pct") / 100.0 * 1e6 / rate,
                ),
                (CLIENT_CPU.name, field(json, "client_cpu_pct")),
            ]
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

type Medians = BTreeMap<(char, Server), BTreeMap<&'static str, f64>>;

fn get(medians: &Medians, key: char, server: Server, metric: Metric) -> f64 {
    medians
        .get(&(key, server))
        .and_then(|m| m.get(metric.name))
        .copied()
        .unwrap_or(f64::NAN)
}

/// A number with about three significant digits and thousands separated by spaces.
fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let text = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 && c.is_ascii_digit() {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        grouped
    } else {
        format!("{grouped}.{frac}")
    }
}

/// The side-by-side table (Markdown), medians over the rounds, with each peer ÷ wsloop.
fn print_table(settings: &Settings, medians: &Medians) {
    println!(
        "\n## wsloop vs peers: medians of {} round(s), {} s per point{}\n",
        settings.rounds,
        settings.secs,
        if settings.quick { " (quick mode)" } else { "" }
    );
    println!("ratio = peer ÷ wsloop; (↓) lower is better, (↑) higher is better\n");
    let peers = settings.peers();
    let mut header = "| point | metric | wsloop |".to_owned();
    let mut rule = "| --- | --- | ---: |".to_owned();
    for peer in &peers {
        header.push_str(&format!(" {} | ratio |", peer.name()));
        rule.push_str(" ---: | ---: |");
    }
    println!("{header}\n{rule}");
    for point in POINTS.iter().filter(|p| settings.wants(p)) {
        let label = match point.load {
            Load::Hold | Load::HoldAfterBurst => {
                format!("{} {}", fmt(settings.idle_conns as f64), point.label)
            }
            _ => point.label.to_owned(),
        };
        for metric in point.load.metrics() {
            let ours = get(medians, point.key, Server::Wsloop, *metric);
            let arrow = match metric.better {
                Better::Lower => "↓",
                Better::Higher => "↑",
            };
            let mut row = format!(
                "| ({}) {label} | {} ({arrow}) | {} |",
                point.key,
                metric.name,
                fmt(ours)
            );
            for &peer in &peers {
                let theirs = get(medians, point.key, peer, *metric);
                row.push_str(&format!(" {} | {:.2}× |", fmt(theirs), theirs / ours));
            }
            println!("{row}");
        }
    }
}

/// The point with this key.
fn point(key: char) -> &'static Point {
    POINTS.iter().find(|p| p.key == key).expect("a point")
}

/// Issue 9's targets, judged from the medians.
fn print_targets(settings: &Settings, medians: &Medians) {
    let m = |key, server, metric| get(medians, key, server, metric);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("\n## issue 9 targets\n");
    for (key, need) in [('b', 1.9), ('c', 2.4)] {
        if settings.only.as_ref().is_some_and(|o| !o.contains(key)) {
            continue;
        }
        let ratio = m(key, Server::Tungstenite, CPU_MSG) / m(key, Server::Wsloop, CPU_MSG);
        println!(
            "- ({key}) server CPU/msg {need}× lower than tokio-tungstenite: {ratio:.2}× — {}",
            verdict(ratio >= need)
        );
    }
    for key in ['d', 'e', 'i'] {
        if settings.only.as_ref().is_some_and(|o| !o.contains(key)) {
            continue;
        }
        let best_cpu = m(key, Server::Tungstenite, CPU_MSG).min(m(key, Server::Fastws, CPU_MSG));
        let best_rate = m(key, Server::Tungstenite, MSGS).max(m(key, Server::Fastws, MSGS));
        let (cpu, rate) = (
            m(key, Server::Wsloop, CPU_MSG),
            m(key, Server::Wsloop, MSGS),
        );
        println!(
            "- ({key}) CPU/msg {} vs best peer {} and msgs/s {} vs best peer {} — {}",
            fmt(cpu),
            fmt(best_cpu),
            fmt(rate),
            fmt(best_rate),
            verdict(cpu <= best_cpu && rate >= best_rate)
        );
    }
    let best = |key, metric: Metric| {
        let (t, f) = (
            m(key, Server::Tungstenite, metric),
            m(key, Server::Fastws, metric),
        );
        match metric.better {
            Better::Lower => t.min(f),
            Better::Higher => t.max(f),
        }
    };
    if settings.wants(point('a')) {
        let ours = m('a', Server::Wsloop, P50);
        println!(
            "- (a) RTT p50 {} us vs best peer {} us — {}",
            fmt(ours),
            fmt(best('a', P50)),
            verdict(ours <= best('a', P50))
        );
    }
    if settings.wants(point('f')) {
        let ours = m('f', Server::Wsloop, RSS_CONN);
        println!(
            "- (f) ≤ 200 B server RSS per idle connection at {} connections: {} B — {}",
            fmt(settings.idle_conns as f64),
            fmt(ours),
            verdict(ours <= 200.0)
        );
    }
    if settings.wants(point('j')) {
        let ours = m('j', Server::Wsloop, RSS_CONN_FRESH);
        println!(
            "- (j) ≤ 200 B server RSS per idle connection after a burst of 16 MiB messages \
             (over a fresh server): {} B — {}",
            fmt(ours),
            verdict(ours <= 200.0)
        );
    }
    if settings.wants(point('g')) {
        let (ours, theirs) = (m('g', Server::Wsloop, HS), m('g', Server::Tungstenite, HS));
        println!(
            "- (g) handshakes/s {} vs tokio-tungstenite {} — {}",
            fmt(ours),
            fmt(theirs),
            verdict(ours >= theirs)
        );
    }
    // wsload is one thread pinned to one CPU: whatever it drove, it drove from one core.
    let driven = ['b', 'h']
        .into_iter()
        .flat_map(|k| settings.servers().into_iter().map(move |s| m(k, s, MSGS)))
        .filter(|v| v.is_finite())
        .fold(f64::NAN, f64::max);
    if driven.is_finite() {
        println!(
            "- wsload drives ≥ 3 M msg/s of 32 B echo from one core: best {} msg/s — {}",
            fmt(driven),
            verdict(driven >= 3e6)
        );
    }
}
