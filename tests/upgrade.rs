#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! `SIGUSR2` upgrades in place, against the real binary: 300 live connections — echoing, in
//! `/chat`, in the middle of a fragmented message, in the middle of the close handshake, with
//! permessage-deflate — through a failing upgrade (the program at the server's path replaced
//! by one that exits 1) and then a good one; a new program that never answers, and one that
//! fails in the middle of adopting. (The TLS connection that must get 1001 is in
//! `tests/tls.rs`, beside its helpers.)

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::frames::{
    client_close, client_frame, close_code, next_frame, op, read_server_frame, Next,
};
use common::http::{
    connect, exchange, read_http_head, stat, stats, upgrade_request, upgrade_request_with,
};
use common::server::signal_pid;
use common::ws::raw_upgraded;
use common::{wait_until, ServerProcess};

/// Connections in the middle of their request head through an upgrade (beside the sizes).
const HALF_REQUESTS: usize = 3;

/// How many connections of each kind a test opens.
#[derive(Clone, Copy)]
struct Sizes {
    echo: usize,
    chat: usize,
    fragmented: usize,
    closing: usize,
    deflate: usize,
}

impl Sizes {
    fn total(self) -> usize {
        self.echo + self.chat + self.fragmented + self.closing + self.deflate
    }
}

/// 300 connections: more than one batch (253), so the chat room is split between the
/// processes while it moves.
const SINGLE: Sizes = Sizes {
    echo: 220,
    chat: 40,
    fragmented: 20,
    closing: 10,
    deflate: 10,
};

/// A folder with a copy of the binary that the test may replace, removed on drop.
struct Deploy {
    dir: PathBuf,
}

/// The tests here take turns: a binary being copied while another test starts a process
/// could be inherited open for writing by it, and could then not be run ("text file busy").
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Deploy {
    fn new(name: &str) -> Deploy {
        let dir = std::env::temp_dir().join(format!("wsloop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let deploy = Deploy { dir };
        deploy.install(Path::new(env!("CARGO_BIN_EXE_wsloop")));
        deploy
    }

    fn program(&self) -> PathBuf {
        self.dir.join("wsloop")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("wsloop.pid")
    }

    /// Puts `source` at the program's path as a deploy does: written aside, renamed over.
    fn install(&self, source: &Path) {
        let aside = self.dir.join("wsloop.new");
        std::fs::copy(source, &aside).unwrap();
        std::fs::rename(&aside, self.program()).unwrap();
    }

    /// A program that fails at once in place of the server's.
    fn install_failing(&self) {
        self.install_script("#!/bin/sh\nexit 1\n");
    }

    /// A shell script in place of the server's program.
    fn install_script(&self, body: &str) {
        let script = self.dir.join("script");
        std::fs::write(&script, body).unwrap();
        std::process::Command::new("chmod")
            .args(["755", script.to_str().unwrap()])
            .status()
            .unwrap();
        self.install(&script);
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one masked text message.
fn send(stream: &mut TcpStream, text: &str) {
    stream
        .write_all(&client_frame(true, op::TEXT, text.as_bytes()))
        .unwrap();
}

/// The next text frame's payload (no ping or other frame expected here).
fn text(stream: &mut TcpStream, what: &str) -> String {
    match read_server_frame(stream) {
        Some((0x81, payload)) => String::from_utf8(payload).unwrap(),
        other => panic!("{what}: expected a text frame, got {other:?}"),
    }
}

/// Nothing more arrives within a moment (no duplicate).
fn silent(stream: &mut TcpStream, what: &str) {
    match next_frame(stream, Duration::from_millis(50)) {
        Next::Timeout => {}
        other => panic!("{what}: unexpected {other:?}"),
    }
}

/// Every connection kind the test moves.
struct Clients {
    echo: Vec<TcpStream>,
    chat: Vec<TcpStream>,
    fragmented: Vec<TcpStream>,
    closing: Vec<TcpStream>,
    deflate: Vec<TcpStream>,
}

impl Clients {
    fn open(server: &ServerProcess, sizes: Sizes) -> Clients {
        let deflated = |_| {
            let request = upgrade_request_with(
                "/deflate",
                "127.0.0.1",
                &[("Sec-WebSocket-Extensions", "permessage-deflate")],
            );
            let (stream, head) = exchange(server.addr, b"", &request);
            assert!(head.contains("permessage-deflate"), "{head}");
            stream
        };
        let mut clients = Clients {
            echo: (0..sizes.echo)
                .map(|_| raw_upgraded(server, "/echo"))
                .collect(),
            chat: (0..sizes.chat)
                .map(|_| raw_upgraded(server, "/chat"))
                .collect(),
            fragmented: (0..sizes.fragmented)
                .map(|_| raw_upgraded(server, "/fragments"))
                .collect(),
            closing: (0..sizes.closing)
                .map(|_| raw_upgraded(server, "/closing"))
                .collect(),
            deflate: (0..sizes.deflate).map(deflated).collect(),
        };
        for stream in &mut clients.fragmented {
            stream
                .write_all(&client_frame(false, op::TEXT, b"first half, "))
                .unwrap();
        }
        clients
    }

    /// Every echo and deflate connection sends message `n`, and one chat member publishes.
    fn say(&mut self, n: usize) {
        for (i, stream) in self.echo.iter_mut().chain(&mut self.deflate).enumerate() {
            send(stream, &format!("{i}:{n}"));
        }
        let at = n % self.chat.len();
        send(&mut self.chat[at], &format!("chat {n}"));
    }

    /// Every echo of message `n` arrived exactly once and in order, and the publication
    /// reached every member.
    fn heard(&mut self, n: usize) {
        self.echoed(n);
        for (i, stream) in self.chat.iter_mut().enumerate() {
            assert_eq!(text(stream, "chat"), format!("chat {n}"), "member {i}");
        }
    }

    fn echoed(&mut self, n: usize) {
        for (i, stream) in self.echo.iter_mut().chain(&mut self.deflate).enumerate() {
            assert_eq!(text(stream, "echo"), format!("{i}:{n}"), "connection {i}");
        }
    }

    fn all_quiet(&mut self) {
        for stream in self
            .echo
            .iter_mut()
            .chain(&mut self.deflate)
            .chain(&mut self.chat)
        {
            silent(stream, "after the echoes");
        }
    }
}

#[test]
fn sigusr2_moves_every_connection_and_a_failing_binary_moves_none() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let deploy = Deploy::new("upgrade");
    let pid_file = deploy.pid_file();
    let mut old = ServerProcess::start_program(
        &deploy.program(),
        &["--deflate", "--pid-file", pid_file.to_str().unwrap()],
    );
    assert_eq!(deploy.pid(), Some(old.pid()));
    let mut clients = Clients::open(&old, SINGLE);
    let open = SINGLE.total() as u64 + 1;
    assert_eq!(stat(&stats(old.addr), "open"), open);
    clients.say(0);
    clients.heard(0);

    // A new binary that exits at once: the old process serves all 300 on.
    deploy.install_failing();
    old.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(10), || stat(
            &stats(old.addr),
            "process_upgrades_failed"
        ) == 1),
        "the failed upgrade was not counted"
    );
    assert_eq!(deploy.pid(), Some(old.pid()));
    clients.say(1);
    clients.heard(1);
    assert_eq!(stat(&stats(old.addr), "open"), open);

    // The real binary again.
    deploy.install(Path::new(env!("CARGO_BIN_EXE_wsloop")));
    let _stop = upgrade_and_check(&deploy, &mut old, &mut clients, SINGLE);
    let after = stats(old.addr);
    // Counters carried on: the old process's upgrade and failure, its messages.
    assert_eq!(stat(&after, "process_upgrades"), 1, "{after}");
    assert_eq!(stat(&after, "process_upgrades_failed"), 1, "{after}");
    assert!(
        stat(&after, "messages_in") >= (4 * (SINGLE.echo + SINGLE.deflate)) as u64,
        "{after}"
    );
}

/// With `--workers 2`, each worker's connections move to its counterpart; the chat room
/// spans both workers in each process.
#[test]
fn sigusr2_moves_every_workers_connections() {
    const SIZES: Sizes = Sizes {
        echo: 60,
        chat: 30,
        fragmented: 4,
        closing: 4,
        deflate: 4,
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let deploy = Deploy::new("upgrade-workers");
    let pid_file = deploy.pid_file();
    let mut old = ServerProcess::start_program(
        &deploy.program(),
        &[
            "--workers",
            "2",
            "--deflate",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let mut clients = Clients::open(&old, SIZES);
    clients.say(0);
    clients.heard(0);
    clients.say(1);
    clients.heard(1);
    let _stop = upgrade_and_check(&deploy, &mut old, &mut clients, SIZES);
}

/// Messages in flight as SIGUSR2 arrives (twice: the second is ignored), a member
/// publishing all through the upgrade, connections mid-message and mid-close: the old
/// process exits, the new one (named by the pid file) answers everything once and in order.
fn upgrade_and_check(
    deploy: &Deploy,
    old: &mut ServerProcess,
    clients: &mut Clients,
    sizes: Sizes,
) -> Stop {
    clients.say(2);
    for stream in &mut clients.closing {
        stream.write_all(&client_close(1000, b"bye")).unwrap();
    }
    // One member publishes all through the upgrade.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = {
        let mut member = clients.chat[0].try_clone().unwrap();
        let stop = Arc::clone(&stop_publishing);
        std::thread::spawn(move || {
            common::publish_until(&stop, 20, |n| send(&mut member, &format!("live {n}")))
        })
    };
    // Connections that have sent half of their request head (well within the handshake
    // timeout).
    let request = upgrade_request("/late");
    let mut half_request: Vec<TcpStream> = (0..HALF_REQUESTS).map(|_| connect(old.addr)).collect();
    for stream in &mut half_request {
        stream
            .write_all(&request.as_bytes()[..request.len() / 2])
            .unwrap();
    }
    old.signal("USR2");
    // A second signal during the upgrade is ignored.
    old.signal("USR2");
    let new = old.upgraded(&deploy.pid_file());
    let stop = Stop(new);
    stop_publishing.store(true, Ordering::Relaxed);
    let live = publisher.join().unwrap();
    // The rest of a request head that began in the old process: answered by the new one.
    let request = upgrade_request("/late");
    for (i, stream) in half_request.iter_mut().enumerate() {
        stream
            .write_all(&request.as_bytes()[request.len() / 2..])
            .unwrap();
        let head = read_http_head(stream);
        assert!(head.starts_with("HTTP/1.1 101"), "{i}: {head}");
        send(stream, "late");
        assert_eq!(text(stream, "late"), "late");
    }

    clients.echoed(2);
    // Every member got "chat 2" and every live publication once, each sender's in order.
    for (i, stream) in clients.chat.iter_mut().enumerate() {
        let (mut next_live, mut chat2) = (0, 0);
        while next_live < live || chat2 == 0 {
            let got = text(stream, "chat");
            if got == "chat 2" {
                chat2 += 1;
            } else {
                assert_eq!(got, format!("live {next_live}"), "member {i}");
                next_live += 1;
            }
        }
        assert_eq!(chat2, 1, "member {i}");
    }
    clients.say(3);
    clients.heard(3);
    clients.all_quiet();
    for (i, stream) in clients.fragmented.iter_mut().enumerate() {
        stream
            .write_all(&client_frame(true, op::CONT, b"second half"))
            .unwrap();
        assert_eq!(text(stream, "fragments"), "first half, second half", "{i}");
    }
    for (i, stream) in clients.closing.iter_mut().enumerate() {
        match read_server_frame(stream) {
            Some((0x88, payload)) => assert_eq!(close_code(&payload), 1000, "{i}"),
            other => panic!("closing {i}: {other:?}"),
        }
    }
    let after = stats(old.addr);
    let moved = sizes.echo + sizes.chat + sizes.fragmented + sizes.deflate;
    assert!(stat(&after, "adopted") >= moved as u64, "{after}");
    // And new connections are served by the new process.
    let mut fresh = raw_upgraded(old, "/");
    send(&mut fresh, "fresh");
    assert_eq!(text(&mut fresh, "fresh"), "fresh");
    stop
}

/// Stops the new process (not this test's child) by its pid.
struct Stop(u32);

impl Drop for Stop {
    fn drop(&mut self) {
        signal_pid(self.0, "TERM");
    }
}

/// A new program that starts but never says hello is stopped after the hello timeout (10 s),
/// and the old process serves on; so does one that exits at once (the first test).
#[test]
fn a_new_binary_that_never_answers_is_stopped_and_the_old_serves_on() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let deploy = Deploy::new("upgrade-hangs");
    let pid_file = deploy.pid_file();
    let old = ServerProcess::start_program(
        &deploy.program(),
        &["--pid-file", pid_file.to_str().unwrap()],
    );
    let mut clients: Vec<TcpStream> = (0..5).map(|_| raw_upgraded(&old, "/")).collect();
    deploy.install_script("#!/bin/sh\nexec sleep 60\n");
    old.signal("USR2");
    assert!(
        wait_until(Duration::from_secs(20), || stat(
            &stats(old.addr),
            "process_upgrades_failed"
        ) == 1),
        "the hung upgrade was not given up"
    );
    assert_eq!(deploy.pid(), Some(old.pid()));
    for (i, stream) in clients.iter_mut().enumerate() {
        send(stream, &format!("still {i}"));
        assert_eq!(text(stream, "echo"), format!("still {i}"));
    }
}

/// With `--deflate-context-takeover` a connection's zlib history cannot move: it is closed
/// with 1001 as a shutdown would, while a plain connection moves.
#[test]
fn connections_with_their_own_deflate_contexts_are_drained_with_1001() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let deploy = Deploy::new("upgrade-takeover");
    let pid_file = deploy.pid_file();
    let mut old = ServerProcess::start_program(
        &deploy.program(),
        &[
            "--deflate",
            "--deflate-context-takeover",
            "--deflate-min-size",
            "0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let request = upgrade_request_with(
        "/",
        "127.0.0.1",
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    );
    let (mut deflated, head) = exchange(old.addr, b"", &request);
    assert!(head.contains("permessage-deflate"), "{head}");
    // One compressed echo: its contexts exist now.
    send(&mut deflated, "compress me, compress me, compress me");
    assert!(matches!(read_server_frame(&mut deflated), Some((0xc1, _))));
    let mut plain = raw_upgraded(&old, "/");
    old.signal("USR2");
    match read_server_frame(&mut deflated) {
        Some((0x88, payload)) => assert_eq!(close_code(&payload), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let new = old.upgraded(&pid_file);
    let _stop = Stop(new);
    send(&mut plain, "moved");
    assert_eq!(text(&mut plain, "plain"), "moved");
}

/// Descriptors process `pid` holds open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// A new process that fails in the middle of adopting — here its open-file limit lets it
/// take the first batch (253 connections) but not the second — keeps the batch it confirmed
/// and serves it; the old process serves every other connection on and accepts again. Every
/// connection still echoes, once and in order, and the pid file still names the old process.
#[test]
fn a_new_process_failing_while_adopting_keeps_what_it_confirmed_and_the_old_serves_the_rest() {
    const CONNS: usize = 300;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let deploy = Deploy::new("upgrade-fails-midway");
    let pid_file = deploy.pid_file();
    let old = ServerProcess::start_program(
        &deploy.program(),
        &["--pid-file", pid_file.to_str().unwrap()],
    );
    let mut clients: Vec<TcpStream> = (0..CONNS).map(|_| raw_upgraded(&old, "/")).collect();
    let before = open_files(old.pid());
    // The real program, behind a limit of 290 open files.
    let real = deploy.dir.join("wsloop.real");
    std::fs::copy(env!("CARGO_BIN_EXE_wsloop"), &real).unwrap();
    deploy.install_script(&format!(
        "#!/bin/sh\nulimit -n 290\nexec '{}' \"$@\"\n",
        real.display()
    ));
    old.signal("USR2");
    let children = format!("/proc/{0}/task/{0}/children", old.pid());
    let mut new = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            new = std::fs::read_to_string(&children)
                .ok()
                .and_then(|pids| pids.split_whitespace().next()?.parse::<u32>().ok());
            // The first batch moved (the old process let its sockets go) and the new
            // process holds them.
            new.is_some_and(|new| open_files(new) > 253) && open_files(old.pid()) + 200 < before
        }),
        "the first batch did not move"
    );
    let new = new.unwrap();
    let _stop = Stop(new);
    // The second batch failed: the upgrade is given up and the old process accepts again.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let answer = stats(old.addr);
            stat(&answer, "process_upgrades_failed") == 1
        }),
        "the failure was not counted (or /stats always reached the new process)"
    );
    assert_eq!(deploy.pid(), Some(old.pid()));
    for round in 0..3 {
        for (i, stream) in clients.iter_mut().enumerate() {
            send(stream, &format!("{i}:{round}"));
        }
        for (i, stream) in clients.iter_mut().enumerate() {
            assert_eq!(
                text(stream, "echo"),
                format!("{i}:{round}"),
                "connection {i}"
            );
        }
    }
    // No duplicate: nothing more within a moment, for any of them.
    std::thread::sleep(Duration::from_millis(100));
    for (i, stream) in clients.iter_mut().enumerate() {
        match next_frame(stream, Duration::from_millis(1)) {
            Next::Timeout => {}
            other => panic!("connection {i}: unexpected {other:?}"),
        }
    }
    // Both serve: the new process its batch, the old one the rest.
    assert!(open_files(new) > 253, "the new process let its batch go");
    assert!(
        std::fs::metadata(format!("/proc/{}", old.pid())).is_ok(),
        "the old process is gone"
    );
}
