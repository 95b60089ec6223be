//! `cargo bench --bench upgrade`: issue 18's benchmark for one process — a `SIGUSR2` upgrade
//! in place while 10 000 connections carry traffic.
//!
//! The bench builds the release `wsloop`, starts it on a free loopback port with
//! `--pid-file` (pinned to CPU 0, under the machine's hard open-file limit; the process it
//! starts on `SIGUSR2` inherits both), and moves itself to CPU 1. Client threads (each a
//! `wsload` driver: one mio loop, its share of the connections) open `--conns` connections,
//! `--chat` of them on `/chat` (where the demo app relays every message to every member, the
//! sender too), the rest on `/` (echo). Then, for `--secs` seconds, they send `--rate` echo
//! messages per second in all, round-robin over the echo connections, each message carrying
//! its connection's id, a sequence number of that connection and the send time; and one
//! thread publishes `--chat-rate` messages per second on `/chat`, each carrying a global
//! sequence number, from each member in turn. At a third of the run the bench reads the old
//! process's RSS and descriptor count, sends it `SIGUSR2` and watches, every millisecond, for
//! the pid file to name another process and for the old process to have exited (it is this
//! bench's child, so it stays a zombie until reaped; the bench reaps it only at the end).
//!
//! After the run every thread waits (up to 5 s) for the echoes and publications still on
//! their way, then checks, per connection: echoes lost, duplicated or reordered (and any
//! echo carrying another connection's id), chat messages lost, duplicated or reordered per
//! member, and connections that ended or got a close frame during the run. Echo round trips
//! are split in three: *before* (answered before the signal), *during* (in flight at some
//! moment between the signal and the old process's exit) and *after* (sent after that exit).
//!
//! Only loopback; the bench stops the processes it started by their PID: its child (the old
//! server) and the new server, whose PID it reads from the pid file (or, when the handoff
//! does not complete within the run, from the old process's `/proc/PID/task/PID/children`),
//! with `SIGTERM`, the new one first. It is bounded: 30 s to open, `--secs` of traffic (at
//! most 50), 5 s to drain, 3 s to close.
//!
//! Options (unknown ones, like the `--bench` that cargo passes, are ignored):
//! `--conns N` (10 000), `--chat N` (1 000), `--rate MSGS_PER_S` (20 000), `--chat-rate
//! MSGS_PER_S` (10), `--secs S` (15), `--threads N` (client threads, 2), `--rt` (server and
//! clients under `chrt -f 10`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::{path, Launch, Running};
use wsload::client::{ConnConfig, Data, Event};
use wsload::driver::{Driver, End, Handler};
use wsload::open::{open_all, OpenPlan};
use wsload::{Histogram, Target};
use wsloop_proto::frame::OpCode;

/// Every message is 16 bytes: an 8-byte number (echo: connection id << 32 | sequence; chat:
/// the global sequence) and the send time in nanoseconds since the run's epoch.
const MESSAGE: usize = 16;
/// How long the threads wait for what is still on its way after the run.
const DRAIN: Duration = Duration::from_secs(5);
/// The bound on the echo round trip's p99 during the upgrade.
const P99_TARGET: Duration = Duration::from_millis(50);

/// The run's settings.
#[derive(Debug)]
struct Settings {
    conns: usize,
    chat: usize,
    rate: f64,
    chat_rate: f64,
    secs: f64,
    threads: usize,
    launch: Launch,
}

impl Settings {
    fn from_env() -> Settings {
        let args = support::Args::from_env();
        let value = |name: &str| args.parsed::<f64>(name);
        let conns = value("--conns").map_or(10_000, |v| v as usize);
        let settings = Settings {
            conns,
            chat: value("--chat").map_or(1_000, |v| v as usize).min(conns),
            rate: value("--rate").unwrap_or(20_000.0),
            chat_rate: value("--chat-rate").unwrap_or(10.0),
            secs: value("--secs").unwrap_or(15.0).clamp(3.0, 50.0),
            threads: value("--threads").map_or(2, |v| v as usize).max(1),
            launch: Launch::new(args.flag("--rt", "WSLOOP_BENCH_RT")),
        };
        assert!(
            settings.conns - settings.chat >= settings.threads || settings.rate == 0.0,
            "every client thread needs an echo connection"
        );
        settings
    }
}

/// What the client threads share.
struct Run {
    /// The zero of every timestamp in a message.
    epoch: Instant,
    /// Every thread has opened its connections (the main thread waits on it too).
    opened: Barrier,
    /// Chat messages published so far.
    published: AtomicU64,
    /// The publisher has stopped.
    publishing_done: AtomicBool,
}

impl Run {
    fn since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// One connection's record.
#[derive(Debug, Default)]
struct Track {
    chat: bool,
    /// Echo messages sent.
    sent: u32,
    seen: Vec<bool>,
    distinct: u64,
    highest: Option<u32>,
    duplicated: u64,
    reordered: u64,
    /// Messages that were not ours: another connection's echo, or a wrong size.
    foreign: u64,
    /// A message that arrived in pieces, so far.
    partial: Vec<u8>,
    /// How it ended or was closed during the run.
    ended: Option<String>,
}

impl Track {
    /// Notes message `seq`; whether it is its first arrival.
    fn receive(&mut self, seq: u32) -> bool {
        let at = seq as usize;
        if self.seen.len() <= at {
            self.seen.resize(at + 1, false);
        }
        if self.seen[at] {
            self.duplicated += 1;
            return false;
        }
        self.seen[at] = true;
        self.distinct += 1;
        if self.highest.is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        true
    }
}

/// A client thread's side of the driver: checks every message.
struct Client {
    run: Arc<Run>,
    tracks: Vec<Track>,
    /// (sent, answered) of every echo, in nanoseconds since the epoch.
    rtts: Vec<(u64, u64)>,
    /// Echoes sent and not yet answered.
    echo_outstanding: u64,
    /// First arrivals of chat messages, over all members.
    chat_received: u64,
}

impl Client {
    fn data(&mut self, id: usize, data: Data<'_>, now: Instant) {
        let track = &mut self.tracks[id];
        let whole = if data.offset == 0 && data.last && track.partial.is_empty() {
            data.bytes.to_vec()
        } else {
            track.partial.extend_from_slice(data.bytes);
            if !data.last {
                return;
            }
            std::mem::take(&mut track.partial)
        };
        let Ok(bytes) = <[u8; MESSAGE]>::try_from(whole.as_slice()) else {
            track.foreign += 1;
            return;
        };
        let number = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let sent = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        if track.chat {
            if track.receive(number as u32) {
                self.chat_received += 1;
            }
        } else if (number >> 32) as usize != id {
            track.foreign += 1;
        } else if track.receive(number as u32) {
            self.echo_outstanding -= 1;
            self.rtts.push((sent, self.run.since_epoch(now)));
        }
    }

    fn end(&mut self, id: usize, why: String) {
        self.tracks[id].ended.get_or_insert(why);
    }
}

impl Handler for Client {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        match event {
            Event::Data(data) => self.data(id, data, now),
            Event::Close { code, .. } => self.end(id, format!("close frame {code}")),
            Event::Opened { .. } | Event::Pong(_) => {}
        }
        Ok(())
    }

    fn on_end(&mut self, id: usize, end: End) {
        self.end(id, end.to_string());
    }
}

/// A client thread's connections and rates.
#[derive(Debug, Clone, Copy)]
struct Share {
    addr: SocketAddr,
    chat: usize,
    echo: usize,
    echo_rate: f64,
    /// This thread publishes, at this rate.
    chat_rate: Option<f64>,
    secs: f64,
}

/// What a client thread found.
#[derive(Debug, Default)]
struct Outcome {
    /// The thread panicked (its figures are missing).
    failed: bool,
    opened: usize,
    open_failures: u64,
    echo_sent: u64,
    echo: Losses,
    chat: Losses,
    foreign: u64,
    /// Connections that ended or got a close frame before the bench closed them.
    closed: Vec<String>,
    still_open: usize,
    rtts: Vec<(u64, u64)>,
    /// The publisher's thread: when each chat message was sent (ns since the epoch), and
    /// how many members never received it.
    chat_sent_at: Vec<u64>,
    chat_missed_by: Vec<u64>,
}

/// Lost, duplicated and reordered messages, summed over connections.
#[derive(Debug, Default, Clone, Copy)]
struct Losses {
    lost: u64,
    duplicated: u64,
    reordered: u64,
}

impl Losses {
    fn add(&mut self, other: Losses) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
    }

    fn none(&self) -> bool {
        self.lost + self.duplicated + self.reordered == 0
    }
}

/// A client thread's wait on [`Run::opened`], made at the latest when dropped: a thread that
/// panics while opening still lets the others and the main thread go on.
struct Arrival<'a> {
    barrier: &'a Barrier,
    done: bool,
}

impl Arrival<'_> {
    fn arrive(&mut self) {
        if !self.done {
            self.done = true;
            self.barrier.wait();
        }
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

/// One client thread: opens its share, waits for the others, drives its traffic for the
/// run, drains, checks and closes.
fn client_thread(share: Share, run: Arc<Run>) -> Outcome {
    let mut arrival = Arrival {
        barrier: &run.opened,
        done: false,
    };
    let mut driver = Driver::new(64 << 10).expect("poller");
    let target = |p: &str| Target::parse(&format!("ws://{}{p}", share.addr)).expect("target");
    let (chat_target, echo_target) = (target("/chat"), target("/"));
    let count = share.chat + share.echo;
    let targets: Vec<Target> = (0..count)
        .map(|i| {
            if i < share.chat {
                chat_target.clone()
            } else {
                echo_target.clone()
            }
        })
        .collect();
    let mut client = Client {
        run: Arc::clone(&run),
        tracks: (0..count)
            .map(|i| Track {
                chat: i < share.chat,
                ..Track::default()
            })
            .collect(),
        rtts: Vec::with_capacity((share.echo_rate * (share.secs + 1.0)) as usize),
        echo_outstanding: 0,
        chat_received: 0,
    };
    let plan = OpenPlan {
        count,
        max_pending: 256,
        sources: None,
        attempt_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(30),
        config: ConnConfig::default(),
    };
    let opening = open_all(&mut driver, &mut client, &targets, &plan).expect("open");
    arrival.arrive();

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(share.secs);
    let (mut echo_sent, mut next_echo, mut published, mut publisher) = (0u64, 0usize, 0u64, 0);
    let mut echo_due = 0u64;
    let mut chat_sent_at = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        driver
            .turn(&mut client, Duration::from_millis(1))
            .expect("poll");
        let elapsed = start.elapsed().as_secs_f64();
        // Each echo slot goes to the next connection; one that has ended loses its slot.
        let due = (elapsed * share.echo_rate) as u64;
        while echo_due < due {
            echo_due += 1;
            let id = share.chat + next_echo % share.echo;
            next_echo += 1;
            let track = &mut client.tracks[id];
            let number = (id as u64) << 32 | u64::from(track.sent);
            let payload = message(number, run.since_epoch(Instant::now()));
            let queued = driver.with_conn(id, |conn, shared| {
                conn.send(OpCode::Binary, &payload, shared)
            });
            if queued.unwrap_or(0) > 0 {
                track.sent += 1;
                echo_sent += 1;
                client.echo_outstanding += 1;
            }
        }
        if let Some(rate) = share.chat_rate {
            let due = (elapsed * rate) as u64;
            // A publisher that cannot send passes its turn to the next member.
            for _ in 0..share.chat {
                if published >= due {
                    break;
                }
                let sent_at = run.since_epoch(Instant::now());
                let payload = message(published, sent_at);
                let id = publisher % share.chat;
                publisher += 1;
                let queued = driver.with_conn(id, |conn, shared| {
                    conn.send(OpCode::Binary, &payload, shared)
                });
                if queued.unwrap_or(0) > 0 {
                    published += 1;
                    chat_sent_at.push(sent_at);
                    run.published.store(published, Ordering::Release);
                }
            }
        }
    }
    if share.chat_rate.is_some() {
        run.publishing_done.store(true, Ordering::Release);
    }

    let members = share.chat as u64;
    driver
        .run_until(&mut client, Instant::now() + DRAIN, |c, _| {
            run.publishing_done.load(Ordering::Acquire)
                && c.echo_outstanding == 0
                && c.chat_received == members * run.published.load(Ordering::Acquire)
        })
        .expect("poll");
    let published = run.published.load(Ordering::Acquire);
    let mut outcome = Outcome {
        opened: opening.established,
        open_failures: opening.failures.total(),
        echo_sent,
        still_open: (0..count).filter(|&id| driver.is_open(id)).count(),
        ..Outcome::default()
    };
    for (id, track) in client.tracks.iter().enumerate() {
        let expected = if track.chat {
            published
        } else {
            u64::from(track.sent)
        };
        let losses = Losses {
            lost: expected.saturating_sub(track.distinct),
            duplicated: track.duplicated,
            reordered: track.reordered,
        };
        if track.chat {
            outcome.chat.add(losses);
        } else {
            outcome.echo.add(losses);
        }
        outcome.foreign += track.foreign;
        if let Some(why) = &track.ended {
            outcome.closed.push(format!("connection {id}: {why}"));
        }
    }
    outcome.rtts = client.rtts;
    outcome.chat_missed_by = (0..published as usize)
        .map(|seq| {
            let members = client.tracks.iter().filter(|t| t.chat);
            members
                .filter(|t| !t.seen.get(seq).copied().unwrap_or(false))
                .count() as u64
        })
        .collect();
    outcome.chat_sent_at = chat_sent_at;
    driver.close_all(Duration::from_secs(3)).expect("poll");
    outcome
}

/// A message: `number` and the send time, little-endian.
fn message(number: u64, sent_ns: u64) -> [u8; MESSAGE] {
    let mut payload = [0u8; MESSAGE];
    payload[..8].copy_from_slice(&number.to_le_bytes());
    payload[8..].copy_from_slice(&sent_ns.to_le_bytes());
    payload
}

/// A process's resident memory and open descriptors.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
}

impl Footprint {
    fn of(pid: u32) -> Option<Footprint> {
        Some(Footprint {
            rss_kib: wsload::stats::rss_kib(pid)?,
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count(),
        })
    }

    fn show(this: Option<Footprint>) -> String {
        this.map_or("unknown".into(), |f| {
            format!("RSS {:.1} MiB, {} fds", f.rss_kib as f64 / 1024.0, f.fds)
        })
    }
}

/// Whether process `pid` has exited: gone, or a zombie not yet reaped.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// The first child of process `pid` (the new server, once the old one has started it).
fn child_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// The pid the pid file names.
fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// When the handoff's milestones were seen.
#[derive(Debug, Default)]
struct Handoff {
    signalled: Option<Instant>,
    /// The process the old one started (its child), whether or not it took over.
    started: Option<u32>,
    /// The pid file named a process other than the old one.
    pid_file: Option<(Instant, u32)>,
    old_exited: Option<Instant>,
    before: Option<Footprint>,
    /// The new process, as soon as the old has exited and the pid file names it.
    after: Option<Footprint>,
    /// The new process near the end of the run, with every connection still open.
    settled: Option<Footprint>,
    stats: Option<serde_json::Value>,
}

impl Handoff {
    fn new_pid(&self) -> Option<u32> {
        self.pid_file.map(|(_, pid)| pid)
    }

    /// From the signal to `at`.
    fn since_signal(&self, at: Option<Instant>) -> Option<Duration> {
        Some(at?.saturating_duration_since(self.signalled?))
    }
}

/// The main thread during the run: waits a third of it, signals the old process, watches
/// the handoff, and reads the new process near the end.
fn watch(settings: &Settings, old: u32, pid_file: &Path, addr: SocketAddr) -> Handoff {
    let start = Instant::now();
    let mut handoff = Handoff::default();
    std::thread::sleep(Duration::from_secs_f64(settings.secs / 3.0));
    handoff.before = Footprint::of(old);
    if !support::signal(old, "USR2") {
        eprintln!("SIGUSR2 to {old} failed");
        return handoff;
    }
    handoff.signalled = Some(Instant::now());
    let give_up = start + Duration::from_secs_f64(settings.secs);
    while Instant::now() < give_up && (handoff.pid_file.is_none() || handoff.old_exited.is_none()) {
        let now = Instant::now();
        if handoff.pid_file.is_none() {
            if let Some(pid) = read_pid(pid_file).filter(|&pid| pid != old) {
                handoff.pid_file = Some((now, pid));
            }
        }
        if handoff.started.is_none() {
            handoff.started = child_of(old);
        }
        if handoff.old_exited.is_none() && exited(old) {
            handoff.old_exited = Some(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let (Some(new), Some(_)) = (handoff.new_pid(), handoff.old_exited) {
        handoff.after = Footprint::of(new);
    }
    let near_end = start + Duration::from_secs_f64(settings.secs * 0.9);
    std::thread::sleep(near_end.saturating_duration_since(Instant::now()));
    if let Some(new) = handoff.new_pid() {
        handoff.settled = Footprint::of(new);
    }
    handoff.stats = support::stats(addr);
    handoff
}

/// Echo round trips split by where they fall against the handoff.
struct Phases {
    before: Histogram,
    during: Histogram,
    after: Histogram,
}

impl Phases {
    /// `window`: from the signal to the old process's exit, in ns since the epoch (without
    /// an exit, to the end of the run: everything after the signal is "during").
    fn split(rtts: &[(u64, u64)], window: Option<(u64, u64)>) -> Phases {
        let mut phases = Phases {
            before: Histogram::new(),
            during: Histogram::new(),
            after: Histogram::new(),
        };
        let (from, to) = window.unwrap_or((u64::MAX, u64::MAX));
        for &(sent, answered) in rtts {
            let rtt = answered.saturating_sub(sent);
            if answered < from {
                phases.before.record(rtt);
            } else if sent <= to {
                phases.during.record(rtt);
            } else {
                phases.after.record(rtt);
            }
        }
        phases
    }
}

fn show_rtt(name: &str, h: &Histogram) -> String {
    let ms = |ns: u64| ns as f64 / 1e6;
    format!(
        "echo RTT {name:<6}: {:>7} msgs  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        h.count(),
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(h.max())
    )
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("never seen".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    })
}

/// This process's soft open-file limit raised to the hard one: the client sockets.
fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        eprintln!("note: open-file limit not raised: {e}");
    }
}

/// A folder for the pid file and the servers' log: `target/upgrade-bench`.
fn scratch() -> PathBuf {
    let dir = support::release_dir().join("..").join("upgrade-bench");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir.canonicalize().expect("scratch folder")
}

/// Stops the new server (not this bench's child) by the PID its pid file gave: `SIGTERM`,
/// up to 5 s to exit, then `SIGKILL`. Only a process that runs the bench's own binary.
fn stop_new(pid: u32, program: &Path) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    if exe.as_deref() != Some(program) {
        eprintln!(
            "note: pid {pid} does not run {}: not stopped",
            path(program)
        );
        return;
    }
    support::signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exited(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !exited(pid) {
        support::signal(pid, "KILL");
    }
}

fn main() {
    let settings = Settings::from_env();
    support::build(&["--bin", "wsloop"]);
    settings.launch.place_self();
    raise_open_files();
    let dir = scratch();
    let program = support::release_dir()
        .join("wsloop")
        .canonicalize()
        .expect("wsloop");
    let pid_file = dir.join("wsloop.pid");
    let log = dir.join("server.log");
    let _ = std::fs::remove_file(&pid_file);

    let addr = support::free_addr();
    let server_args = [
        path(&program),
        "--addr".into(),
        addr.to_string(),
        "--pid-file".into(),
        path(&pid_file),
        "--max-conns".into(),
        (settings.conns + 1_000).to_string(),
    ];
    let mut command = settings.launch.command(0, &server_args);
    command
        .current_dir(&dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("server log"));
    let server = Running::start("wsloop", command, addr);
    let (old, addr) = (server.pid(), server.addr());
    println!(
        "upgrade bench: {} connections ({} on /chat), {} echo msg/s, {} chat msg/s, {} s, {} client threads; server pid {old}, log {}",
        settings.conns,
        settings.chat,
        settings.rate,
        settings.chat_rate,
        settings.secs,
        settings.threads,
        path(&log)
    );

    let run = Arc::new(Run {
        epoch: Instant::now(),
        opened: Barrier::new(settings.threads + 1),
        published: AtomicU64::new(0),
        publishing_done: AtomicBool::new(settings.chat == 0 || settings.chat_rate <= 0.0),
    });
    let threads: Vec<_> = (0..settings.threads)
        .map(|t| {
            let part =
                |total: usize| total / settings.threads + usize::from(t < total % settings.threads);
            let share = Share {
                addr,
                // The publisher's thread holds every chat member (so it can publish from any).
                chat: if t == 0 { settings.chat } else { 0 },
                echo: part(settings.conns - settings.chat),
                echo_rate: settings.rate / settings.threads as f64,
                chat_rate: (t == 0 && settings.chat > 0 && settings.chat_rate > 0.0)
                    .then_some(settings.chat_rate),
                secs: settings.secs,
            };
            let run = Arc::clone(&run);
            std::thread::spawn(move || client_thread(share, run))
        })
        .collect();
    let opening = Instant::now();
    run.opened.wait();
    println!(
        "opened in {:.1} s; server {}",
        opening.elapsed().as_secs_f64(),
        Footprint::show(Footprint::of(old))
    );
    let handoff = watch(&settings, old, &pid_file, addr);
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| {
            t.join().unwrap_or_else(|_| Outcome {
                failed: true,
                ..Outcome::default()
            })
        })
        .collect();

    report(&settings, &run, &handoff, &outcomes, &log);

    // The new process first: one still adopting makes the old one fail the upgrade and serve on.
    if let Some(new) = handoff.new_pid().or(handoff.started) {
        stop_new(new, &program);
    }
    drop(server);
}

/// The chat messages some member never received, with when each was published against the
/// handoff's window.
fn show_chat_misses(outcomes: &[Outcome], run: &Run, handoff: &Handoff) {
    let Some(publisher) = outcomes.iter().find(|o| !o.chat_sent_at.is_empty()) else {
        return;
    };
    let signalled = handoff.signalled.map(|s| run.since_epoch(s));
    let offset = |ns: u64| {
        signalled.map_or("?".into(), |s| {
            format!("{:+.0} ms", (ns as f64 - s as f64) / 1e6)
        })
    };
    let missed: Vec<(usize, u64)> = publisher
        .chat_missed_by
        .iter()
        .enumerate()
        .filter(|&(_, &by)| by > 0)
        .map(|(seq, &by)| (seq, by))
        .collect();
    if missed.is_empty() {
        return;
    }
    let at = |seq: usize| offset(publisher.chat_sent_at[seq]);
    println!(
        "chat: {} messages missed by some member, published from {} to {} (from SIGUSR2; the old process exited at {}); the first ten:",
        missed.len(),
        at(missed[0].0),
        at(missed[missed.len() - 1].0),
        handoff
            .old_exited
            .map_or("?".into(), |e| offset(run.since_epoch(e)))
    );
    for (seq, by) in missed.iter().take(10) {
        println!("  #{seq} at {}: missed by {by} members", at(*seq));
    }
}

/// Prints every figure and which of the targets were missed.
fn report(settings: &Settings, run: &Run, handoff: &Handoff, outcomes: &[Outcome], log: &Path) {
    let mut echo = Losses::default();
    let mut chat = Losses::default();
    let mut closed = Vec::new();
    let (mut opened, mut open_failures, mut echo_sent, mut foreign, mut still_open) =
        (0, 0, 0, 0, 0);
    let mut rtts = Vec::new();
    for o in outcomes {
        echo.add(o.echo);
        chat.add(o.chat);
        closed.extend(o.closed.iter().cloned());
        opened += o.opened;
        open_failures += o.open_failures;
        echo_sent += o.echo_sent;
        foreign += o.foreign;
        still_open += o.still_open;
        rtts.extend_from_slice(&o.rtts);
    }
    let window = handoff.signalled.map(|s| {
        let to = handoff.old_exited.map_or(u64::MAX, |e| run.since_epoch(e));
        (run.since_epoch(s), to)
    });
    let phases = Phases::split(&rtts, window);
    let published = run.published.load(Ordering::Acquire);
    let stat = |name: &str| {
        handoff
            .stats
            .as_ref()
            .and_then(|s| s.get(name)?.as_u64())
            .map_or("?".into(), |v| v.to_string())
    };

    println!();
    println!(
        "connections opened {opened} of {}, failures {open_failures}; open at the end {still_open}",
        settings.conns
    );
    println!("connections closed during the run: {}", closed.len());
    for why in closed.iter().take(5) {
        println!("  {why}");
    }
    println!(
        "echo: {echo_sent} sent; lost {}, duplicated {}, reordered {}; not ours {foreign}",
        echo.lost, echo.duplicated, echo.reordered
    );
    println!(
        "chat: {published} published to {} members; lost {}, duplicated {}, reordered {} (member-messages)",
        settings.chat, chat.lost, chat.duplicated, chat.reordered
    );
    println!("{}", show_rtt("before", &phases.before));
    println!("{}", show_rtt("during", &phases.during));
    println!("{}", show_rtt("after", &phases.after));
    show_chat_misses(outcomes, run, handoff);
    println!(
        "handoff: SIGUSR2 -> old pid gone {}; SIGUSR2 -> pid file names the new pid {} ({})",
        ms(handoff.since_signal(handoff.old_exited)),
        ms(handoff.since_signal(handoff.pid_file.map(|(at, _)| at))),
        handoff
            .new_pid()
            .map_or("none".into(), |p| format!("pid {p}"))
    );
    println!(
        "old process just before SIGUSR2:  {}",
        Footprint::show(handoff.before)
    );
    println!(
        "new process just after handoff:   {}",
        Footprint::show(handoff.after)
    );
    println!(
        "new process at 90 % of the run:   {}",
        Footprint::show(handoff.settled)
    );
    println!(
        "/stats: adopted {}, handed_over {}, process_upgrades {}, process_upgrades_failed {}",
        stat("adopted"),
        stat("handed_over"),
        stat("process_upgrades"),
        stat("process_upgrades_failed")
    );

    let text = std::fs::read_to_string(log).unwrap_or_default();
    println!("server log ({}), upgrade lines and warnings:", path(log));
    for line in text
        .lines()
        .filter(|l| {
            l.contains("pgrade")
                || l.contains("SIGUSR2")
                || l.contains("WARN")
                || l.contains("ERROR")
        })
        .take(20)
    {
        println!("  {line}");
    }

    let mut missed = Vec::new();
    if outcomes.iter().any(|o| o.failed) {
        missed.push("a client thread failed (see above): its figures are missing".into());
    }
    if !closed.is_empty() || open_failures > 0 {
        missed.push(format!(
            "{} connections closed, {open_failures} not opened",
            closed.len()
        ));
    }
    if !echo.none() || !chat.none() || foreign > 0 {
        missed.push("messages lost, duplicated or reordered".into());
    }
    if phases.during.quantile(0.99) > P99_TARGET.as_nanos() as u64 {
        missed.push("echo RTT p99 during the upgrade over 50 ms".into());
    }
    if handoff.old_exited.is_none() || handoff.pid_file.is_none() {
        missed.push("the handoff did not complete within the run".into());
    }
    let within = |old: u64, new: u64| (new as f64 - old as f64).abs() <= old as f64 * 0.1;
    match (handoff.before, handoff.after) {
        (Some(b), Some(a))
            if within(b.rss_kib, a.rss_kib) && within(b.fds as u64, a.fds as u64) => {}
        _ => missed.push("new RSS or descriptors not within 10 % of the old".into()),
    }
    if missed.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets MISSED: {}", missed.join("; "));
    }
}
