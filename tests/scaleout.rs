//! Scale-out with the real engines: several wsloop processes sharing rooms through a real
//! `redis-server` (started per test on a free loopback port, stopped by PID), and several
//! reactors of one process sharing a port.

// Test code may panic on the unexpected: that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::http::stats;
use common::process::fd_count;
use common::redis::RedisServer;
use common::server::free_port;
use common::ws::{recv_text, send_text, ws_connect, Client};
use common::ServerProcess;

const CHANNEL: &str = "wsloop:chat";

/// `None` (and a clear message) only when redis-server is not installed; CI installs it.
fn redis() -> Option<RedisServer> {
    if RedisServer::available() {
        Some(RedisServer::start())
    } else {
        eprintln!(
            "SKIPPED: redis-server is not installed (CI installs it: apt-get install redis-server)"
        );
        None
    }
}

/// A client on `path` whose reads wait 50 ms, for [`recv_text`] to poll.
fn ws_client(addr: std::net::SocketAddr, path: &str) -> Client {
    ws_connect(addr, path, Duration::from_millis(50))
}

fn node(redis: &RedisServer, extra: &[&str]) -> ServerProcess {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// Reads until `want` messages arrived or nothing came for a while.
fn collect(ws: &mut Client, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        match recv_text(ws, Duration::from_secs(5)) {
            Some(text) => got.push(text),
            None => break,
        }
    }
    got
}

/// Messages from `prefix`, checked to arrive in order and never twice.
fn from_publisher(got: &[String], prefix: &str) -> Vec<usize> {
    let seq: Vec<usize> = got
        .iter()
        .filter_map(|m| m.strip_prefix(prefix)?.parse().ok())
        .collect();
    assert!(
        seq.windows(2).all(|w| w[0] < w[1]),
        "{prefix}: out of order or repeated: {seq:?}"
    );
    seq
}

/// Sends `prefix N` from `from` until `to` receives one of them (within 20 s); returns it.
fn until_delivered(from: &mut Client, to: &mut Client, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(Instant::now() < deadline, "{prefix}: never delivered");
        send_text(from, &format!("{prefix}{n}"));
        while let Some(text) = recv_text(to, Duration::from_millis(100)) {
            if text.starts_with(prefix) {
                return text;
            }
        }
    }
    unreachable!()
}

#[test]
fn two_processes_share_a_room_in_order_and_once() {
    let Some(redis) = redis() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut ca = ws_client(a.addr, "/chat");
    let mut cb = ws_client(b.addr, "/chat");
    redis.wait_numsub(CHANNEL, 2);
    const N: usize = 200;
    for i in 0..N {
        send_text(&mut ca, &format!("a{i}"));
        send_text(&mut cb, &format!("b{i}"));
    }
    for (name, client) in [("a", &mut ca), ("b", &mut cb)] {
        let got = collect(client, 2 * N);
        assert_eq!(
            got.len(),
            2 * N,
            "client {name} got {} of {}",
            got.len(),
            2 * N
        );
        assert_eq!(
            from_publisher(&got, "a").len(),
            N,
            "client {name}: a's messages"
        );
        assert_eq!(
            from_publisher(&got, "b").len(),
            N,
            "client {name}: b's messages"
        );
        assert!(
            recv_text(client, Duration::from_millis(300)).is_none(),
            "a duplicate arrived"
        );
    }
    // A's own publications come back from Redis and are dropped, never delivered twice.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let broker = stats(a.addr)["broker"].clone();
        if broker["echoes_dropped"] == N as u64 {
            assert_eq!(broker["gaps"], 0, "{broker}");
            break;
        }
        assert!(Instant::now() < deadline, "{broker}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_on_one_port_share_a_room() {
    let server = ServerProcess::start(&["--workers", "2"]);
    let mut clients = Vec::new();
    let per_worker = |s: &serde_json::Value| -> Vec<u64> {
        s["workers"]
            .as_array()
            .expect("per-worker stats")
            .iter()
            .map(|w| w["upgraded"].as_u64().unwrap_or(0))
            .collect()
    };
    // The kernel spreads connections by hash: open until both workers upgraded some.
    while clients.len() < 64 {
        clients.push(ws_client(server.addr, "/chat"));
        let open = per_worker(&stats(server.addr));
        if clients.len() >= 4 && open.iter().all(|&n| n > 0) {
            break;
        }
    }
    let open = per_worker(&stats(server.addr));
    assert_eq!(open.len(), 2);
    assert!(
        open.iter().all(|&n| n > 0),
        "one worker got every connection: {open:?}"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("c{i}:"));
    }
    let n = clients.len();
    for client in &mut clients {
        let got = collect(client, n);
        assert_eq!(got.len(), n, "every member sees every message");
    }
    let s = stats(server.addr);
    assert!(s["broker_in"].as_u64().unwrap_or(0) > 0, "{s}");
    assert_eq!(
        s["upgraded"].as_u64(),
        Some(n as u64),
        "summed over workers: {s}"
    );
}

#[test]
fn local_chat_survives_redis_loss_and_cross_node_delivery_resumes() {
    let Some(mut redis) = redis() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let (mut ca, mut ca2, mut cb) = (
        ws_client(a.addr, "/chat"),
        ws_client(a.addr, "/chat"),
        ws_client(b.addr, "/chat"),
    );
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut ca, &mut cb, "before");
    let port = redis.port;
    redis.kill();
    // Local delivery never waits for Redis.
    send_text(&mut ca, "during");
    let deadline = Instant::now() + Duration::from_secs(5);
    let local = std::iter::from_fn(|| recv_text(&mut ca2, Duration::from_secs(1)))
        .take_while(|_| Instant::now() < deadline)
        .any(|m| m == "during");
    assert!(local, "local chat stopped while Redis was down");
    std::thread::sleep(Duration::from_millis(500));
    let redis = RedisServer::start_on(port);
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut ca, &mut cb, "after");
    until_delivered(&mut cb, &mut ca, "back");
    let broker = &stats(a.addr)["broker"];
    assert!(
        broker["connection_errors"].as_u64().unwrap_or(0) > 0,
        "{broker}"
    );
    assert!(broker["connects"].as_u64().unwrap_or(0) >= 4, "{broker}");
}

#[test]
fn killed_pubsub_connections_heal() {
    let Some(redis) = redis() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let (mut ca, mut cb) = (ws_client(a.addr, "/chat"), ws_client(b.addr, "/chat"));
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut ca, &mut cb, "before");
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut ca, &mut cb, "after");
    until_delivered(&mut cb, &mut ca, "back");
}

#[test]
fn redis_subscription_follows_local_subscribers() {
    let Some(redis) = redis() else { return };
    let a = node(&redis, &[]);
    let mut echo = ws_client(a.addr, "/");
    send_text(&mut echo, "ping");
    assert_eq!(
        recv_text(&mut echo, Duration::from_secs(5)).as_deref(),
        Some("ping")
    );
    assert_eq!(
        redis.numsub(CHANNEL),
        0,
        "an echo client subscribes to nothing"
    );
    let first = ws_client(a.addr, "/chat");
    let second = ws_client(a.addr, "/chat");
    redis.wait_numsub(CHANNEL, 1);
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(redis.numsub(CHANNEL), 1, "one local subscriber is left");
    drop(second);
    redis.wait_numsub(CHANNEL, 0);
}

#[test]
fn starts_without_redis_and_joins_when_it_appears() {
    if !RedisServer::available() {
        eprintln!("SKIPPED: redis-server is not installed (CI installs it)");
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = ServerProcess::start(&["--redis", &url]);
    let (mut ca, mut ca2) = (ws_client(a.addr, "/chat"), ws_client(a.addr, "/chat"));
    send_text(&mut ca, "local");
    assert_eq!(
        recv_text(&mut ca2, Duration::from_secs(5)).as_deref(),
        Some("local")
    );
    let redis = RedisServer::start_on(port);
    let b = node(&redis, &[]);
    let mut cb = ws_client(b.addr, "/chat");
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut cb, &mut ca, "hello");
    until_delivered(&mut ca, &mut cb, "hi");
}

#[test]
fn processes_share_one_port_with_reuse_port() {
    let Some(redis) = redis() else { return };
    let url = redis.url();
    let first = ServerProcess::start(&["--reuse-port", "--redis", &url]);
    let addr = first.addr.to_string();
    let second = ServerProcess::start_at(&addr, &["--reuse-port", "--redis", &url]);
    assert_eq!(second.addr, first.addr);
    // Open /chat clients on the shared port until both processes have one (each process
    // with a local subscriber subscribes in Redis once).
    let mut clients = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.numsub(CHANNEL) < 2 {
        assert!(
            Instant::now() < deadline,
            "the kernel never picked the second process"
        );
        clients.push(ws_client(first.addr, "/chat"));
        std::thread::sleep(Duration::from_millis(30));
    }
    let n = clients.len();
    for (i, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("c{i}:"));
    }
    for client in &mut clients {
        assert_eq!(
            collect(client, n).len(),
            n,
            "every member sees every message"
        );
    }
}

/// `wsload fanout` with one URL per process: the subscribers of both processes receive every
/// publication of the one publisher, through Redis, none lost or out of order.
#[test]
fn wsload_fanout_spans_processes_through_redis() {
    let Some(redis) = redis() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let report = wsload::run_fanout(&wsload::FanoutOptions {
        urls: vec![a.ws_url("/chat"), b.ws_url("/chat")],
        subscribers: 20,
        rate: 50.0,
        size: 64,
        duration: Duration::from_secs(1),
        server_pid: None,
    })
    .unwrap();
    assert_eq!(report.subscribers_open, 20);
    assert!(report.published >= 50, "{report:?}");
    assert_eq!(report.delivered, 20 * report.published, "{report:?}");
    // Subscribers alternate between the two processes and the publisher (the last
    // connection, 20 % 2) is on the first: half of the deliveries crossed Redis.
    assert!(report.ok(), "{report:?}");
}

/// Lines from a process's stdout, read on a thread so the process never blocks on the pipe.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?} within 20 s"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// The number after `(pid ` in a supervisor line.
fn pid_in(line: &str) -> u32 {
    let rest = line.split("(pid ").nth(1).unwrap();
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Echo on `n` fresh connections (they land on whichever process the kernel picks).
fn echo_on_fresh_connections(addr: std::net::SocketAddr, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut ws = ws_client(addr, "/");
            send_text(&mut ws, &format!("hello {i}"));
            assert_eq!(
                recv_text(&mut ws, Duration::from_secs(5)).as_deref(),
                Some(format!("hello {i}").as_str())
            );
            ws
        })
        .collect()
}

/// The supervisor of `--processes`, stopped (with its children) if a test fails midway.
struct Supervised {
    child: std::process::Child,
    pids: Vec<u32>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in &self.pids {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// A supervisor of 2 processes with `--pid-file pid_file`, once both listen: it, its lines,
/// its address, the children's pids.
fn supervise_two(
    pid_file: &std::path::Path,
) -> (
    Supervised,
    std::sync::mpsc::Receiver<String>,
    std::net::SocketAddr,
    Vec<u32>,
) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(["--addr", "127.0.0.1:0", "--processes", "2", "--pid-file"])
        .arg(pid_file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sup = Supervised {
        child,
        pids: Vec::new(),
    };
    let lines = stdout_lines(&mut sup.child);
    let head = wait_line(&lines, "supervisor on ");
    // --pid-file names the supervisor, not a child.
    let written = std::fs::read_to_string(pid_file).unwrap();
    assert_eq!(written, format!("{}\n", sup.child.id()));
    let addr: std::net::SocketAddr = head
        .split("supervisor on ")
        .nth(1)
        .and_then(|r| r.rsplit_once(':').map(|(a, _)| a))
        .unwrap()
        .parse()
        .unwrap();
    // The children's own lines interleave with the supervisor's: take them in any order.
    let (mut started, mut listening) = (Vec::new(), 0);
    while started.len() < 2 || listening < 2 {
        let line = wait_line(&lines, "");
        if line.contains(" of 2 started") {
            started.push(pid_in(&line));
        } else if line.contains("listening on") {
            listening += 1;
        }
    }
    sup.pids.clone_from(&started);
    (sup, lines, addr, started)
}

/// SIGTERM to the supervisor stops every process, then the supervisor.
fn stop_supervisor(sup: &mut Supervised) -> std::process::ExitStatus {
    use rustix::process::{kill_process, Pid, Signal};
    kill_process(Pid::from_raw(sup.child.id() as i32).unwrap(), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = sup.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "supervisor did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn supervisor_restarts_a_killed_process_and_stops_all_on_sigterm() {
    use rustix::process::{kill_process, Pid, Signal};
    let pid_file =
        std::env::temp_dir().join(format!("wsloop-supervisor-{}.pid", std::process::id()));
    let (mut sup, lines, addr, started) = supervise_two(&pid_file);
    let (first, second) = (started[0], started[1]);

    // Both processes take connections on the one port.
    let before = (fd_count(first), fd_count(second));
    let held = echo_on_fresh_connections(addr, 40);
    assert!(fd_count(first) > before.0 && fd_count(second) > before.1);
    drop(held);

    // A process killed outright is replaced; the port keeps serving meanwhile.
    kill_process(Pid::from_raw(first as i32).unwrap(), Signal::KILL).unwrap();
    let (mut replacement, mut listening) = (None, false);
    while replacement.is_none() || !listening {
        let line = wait_line(&lines, "");
        if line.contains("restarted (pid") {
            replacement = Some(pid_in(&line));
        } else if line.contains("listening on") {
            listening = true;
        }
    }
    let replacement = replacement.unwrap();
    sup.pids.push(replacement);
    assert_ne!(replacement, first);
    let held = echo_on_fresh_connections(addr, 40);
    assert!(alive(replacement) && alive(second));
    drop(held);

    let status = stop_supervisor(&mut sup);
    assert!(status.success(), "{status}");
    assert!(!alive(replacement) && !alive(second));
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

/// SIGUSR2 to the supervisor upgrades its processes one at a time: every connection stays
/// open and echoing, the new processes are supervised in their place (and stopped with it).
#[test]
fn supervisor_upgrades_its_processes_one_at_a_time() {
    use rustix::process::{kill_process, Pid, Signal};
    let pid_file =
        std::env::temp_dir().join(format!("wsloop-supervisor-up-{}.pid", std::process::id()));
    let (mut sup, lines, addr, started) = supervise_two(&pid_file);
    let mut held = echo_on_fresh_connections(addr, 40);
    assert!(started.iter().all(|&pid| fd_count(pid) > 20));
    kill_process(Pid::from_raw(sup.child.id() as i32).unwrap(), Signal::USR2).unwrap();
    let mut upgraded = Vec::new();
    while upgraded.len() < 2 {
        let line = wait_line(&lines, "upgraded (pid");
        let new = line.rsplit("pid ").next().unwrap();
        upgraded.push(new.trim_end_matches(')').parse::<u32>().unwrap());
    }
    sup.pids.extend(&upgraded);
    assert!(started.iter().all(|&pid| !alive(pid)), "{started:?}");
    for (i, ws) in held.iter_mut().enumerate() {
        send_text(ws, &format!("after {i}"));
        assert_eq!(
            recv_text(ws, Duration::from_secs(5)).as_deref(),
            Some(format!("after {i}").as_str())
        );
    }
    let status = stop_supervisor(&mut sup);
    assert!(status.success(), "{status}");
    assert!(upgraded.iter().all(|&pid| !alive(pid)), "{upgraded:?}");
}

/// `--redis`: SIGUSR2 moves a process's room members to the new process, which has
/// subscribed to their rooms first; publications from another process reach them there, in
/// order and once, and theirs reach it.
#[test]
fn an_upgrade_keeps_a_processs_members_in_the_shared_room() {
    let Some(redis) = redis() else { return };
    let pid_file =
        std::env::temp_dir().join(format!("wsloop-redis-upgrade-{}.pid", std::process::id()));
    let mut a = node(&redis, &["--pid-file", pid_file.to_str().unwrap()]);
    let b = node(&redis, &[]);
    let mut members: Vec<Client> = (0..20).map(|_| ws_client(a.addr, "/chat")).collect();
    let mut other = ws_client(b.addr, "/chat");
    redis.wait_numsub(CHANNEL, 2);
    until_delivered(&mut other, &mut members[0], "warm ");
    for ws in &mut members[1..] {
        while recv_text(ws, Duration::from_millis(200)).is_some() {}
    }
    let signalled = Instant::now();
    a.signal("USR2");
    let new = a.upgraded(&pid_file);
    let _stop = StopPid(new);
    // The new process confirmed the takeover (the old one gives up waiting after 5 s).
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "{:?}",
        signalled.elapsed()
    );
    const N: usize = 50;
    for i in 0..N {
        send_text(&mut other, &format!("b{i}"));
    }
    for (m, ws) in members.iter_mut().enumerate() {
        let got = collect(ws, N);
        assert_eq!(from_publisher(&got, "b").len(), N, "member {m}: {got:?}");
    }
    send_text(&mut members[3], "from a");
    let heard = std::iter::from_fn(|| recv_text(&mut other, Duration::from_secs(5)))
        .any(|text| text == "from a");
    assert!(
        heard,
        "the other process never got the moved member's message"
    );
}

/// Stops a process that is not this test's child (one an upgrade started) by its pid.
struct StopPid(u32);

impl Drop for StopPid {
    fn drop(&mut self) {
        common::server::signal_pid(self.0, "TERM");
    }
}

/// `--redis`: another process publishes every millisecond while 300 members of a shared room
/// move (more than one batch): each member gets every publication once and in order — the old
/// process delivers and relays what Redis brings it until it goes, the new one delivers from
/// its own subscription only what comes after. And a member of the moving process publishing
/// all through it reaches the other process once and in order.
#[test]
fn publications_from_another_process_during_an_upgrade_arrive_once_and_in_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(redis) = redis() else { return };
    let pid_file =
        std::env::temp_dir().join(format!("wsloop-redis-during-{}.pid", std::process::id()));
    let mut a = node(&redis, &["--pid-file", pid_file.to_str().unwrap()]);
    let b = node(&redis, &[]);
    let mut members: Vec<Client> = (0..300).map(|_| ws_client(a.addr, "/chat")).collect();
    let mut other = ws_client(b.addr, "/chat");
    redis.wait_numsub(CHANNEL, 2);
    // Subscribed through Redis (the "warm" messages every member gets are not counted).
    until_delivered(&mut other, &mut members[0], "warm ");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, addr) = (std::sync::Arc::clone(&stop), b.addr);
        std::thread::spawn(move || {
            let mut ws = ws_client(addr, "/chat");
            common::publish_until(&stop, 50, |n| send_text(&mut ws, &format!("d{n}")))
        })
    };
    // A member of the upgrading process publishes all through it too: its messages leave
    // from the old process before the takeover and from the new one after; the other
    // process gets them once and in order.
    let local = {
        let (stop, mut ws) = (std::sync::Arc::clone(&stop), ws_client(a.addr, "/chat"));
        std::thread::spawn(move || {
            let sent = common::publish_until(&stop, 50, |n| send_text(&mut ws, &format!("e{n}")));
            // Kept open: closed with unread messages, it would be reset, and the server
            // would lose what it had not read yet.
            (sent, ws)
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    a.signal("USR2");
    let new = a.upgraded(&pid_file);
    let _stop = StopPid(new);
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().unwrap();
    let (sent_here, _publishing) = local.join().unwrap();
    let mut got = Vec::new();
    while let Some(text) = recv_text(&mut other, Duration::from_secs(3)) {
        got.push(text);
        if got.last().map(String::as_str) == Some(format!("e{}", sent_here - 1).as_str()) {
            break;
        }
    }
    let seq = from_publisher(&got, "e");
    assert_eq!(seq, (0..sent_here).collect::<Vec<_>>(), "the other process");
    for (m, ws) in members.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Some(text) = recv_text(ws, Duration::from_secs(3)) {
            got.push(text);
            if got.last().map(String::as_str) == Some(format!("d{}", sent - 1).as_str()) {
                break;
            }
        }
        let seq = from_publisher(&got, "d");
        assert_eq!(seq, (0..sent).collect::<Vec<_>>(), "member {m}");
    }
}
