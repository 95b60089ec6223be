#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Operational behaviour of the real `wsloop` binary over loopback sockets: connection limits,
//! backpressure, the connection's timers over real sockets (keepalive pings and the idle
//! limit; each timer's rule is a `conn` unit test on a virtual clock), graceful shutdown, chat
//! fan-out, slow consumers, the `/stats` counters, and the memory start-up gives back. Each
//! test starts its own server.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::frames::{
    client_close, client_frame, client_frame_raw, close_code, expect_close, next_frame, numbered,
    op, read_server_frame, seq_of, Next,
};
use common::http::{
    exchange, header, is_reset, is_timeout, stat, stats, upgrade_request, wait_eof, wait_for_stats,
};
use common::process::{peak_rss_kib, rss_kib};
use common::ws::{echo_rtt, raw_upgraded, ws_connect, ws_roundtrip, ws_text, Client};
use common::ServerProcess;
use tungstenite::Message;

/// A `tungstenite` client on `path` whose reads wait 5 s at most.
fn ws(server: &ServerProcess, path: &str) -> Client {
    ws_connect(server.addr, path, Duration::from_secs(5))
}

/// One echo round trip of `text` on a `tungstenite` client.
fn ws_echo(ws: &mut Client, text: &str) -> Duration {
    ws_roundtrip(ws, Message::Text(text.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// 1. --max-conns
// ---------------------------------------------------------------------------------------------

#[test]
fn max_conns_answers_503_and_frees_slots() {
    let server = ServerProcess::start(&["--max-conns", "100"]);
    let mut conns: Vec<TcpStream> = (0..100).map(|_| raw_upgraded(&server, "/")).collect();

    // The 101st is refused with 503 + Retry-After and closed.
    let (mut extra, head) = exchange(server.addr, b"", &upgrade_request("/"));
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "101st connection with --max-conns 100: {head:?}"
    );
    assert!(
        header(&head, "retry-after").is_some(),
        "503 without Retry-After: {head:?}"
    );
    assert!(
        wait_eof(&mut extra, Duration::from_secs(3)).is_some(),
        "the refused connection was not closed"
    );
    drop(extra);

    // Close one of the 100 with a full close handshake.
    let mut leaving = conns.remove(0);
    leaving.write_all(&client_close(1000, b"")).unwrap();
    assert_eq!(expect_close(&mut leaving), Some(1000));
    assert!(
        wait_eof(&mut leaving, Duration::from_secs(3)).is_some(),
        "no FIN after the close handshake"
    );
    drop(leaving);

    // A new connection upgrades again (the server sees our FIN asynchronously: retry briefly).
    let deadline = Instant::now() + Duration::from_secs(3);
    let replacement = loop {
        let (stream, head) = exchange(server.addr, b"", &upgrade_request("/"));
        if head.starts_with("HTTP/1.1 101") {
            break stream;
        }
        assert!(
            head.starts_with("HTTP/1.1 503"),
            "unexpected answer: {head:?}"
        );
        assert!(
            Instant::now() < deadline,
            "still 503 three seconds after a connection closed"
        );
        drop(stream);
        thread::sleep(Duration::from_millis(50));
    };
    conns.push(replacement);

    // All 100 open connections still echo.
    for (i, conn) in conns.iter_mut().enumerate() {
        echo_rtt(conn, &format!("still here {i}"));
    }
}

/// A peer that sends its last message and then FIN (here before the server has read the
/// message) must be noticed and removed at once: otherwise it holds a slot until a timer
/// fires (75 s idle timeout by default; the close timeout for a refused connection), which
/// `--max-conns` turns into refused clients.
#[test]
fn peer_fin_right_after_last_message_is_noticed() {
    const CLIENTS: usize = 50;
    let server = ServerProcess::start(&[]);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| raw_upgraded(&server, "/")).collect();
    for client in &mut clients {
        client
            .write_all(&client_frame(true, op::TEXT, b"last words"))
            .unwrap();
        client.shutdown(Shutdown::Write).unwrap();
    }
    thread::sleep(Duration::from_millis(1000));
    let mut still_open = 0;
    for client in &mut clients {
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    still_open += 1;
                    break;
                }
                Err(e) if is_reset(&e) => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    let json = stats(server.addr);
    assert_eq!(
        still_open, 0,
        "{still_open} of {CLIENTS} connections whose peer sent a message and then FIN are still \
         open after 1 s; /stats: {json}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Backpressure against a flooding client that never reads
// ---------------------------------------------------------------------------------------------

#[test]
fn flooding_client_is_paused_while_others_stay_fast() {
    let server = ServerProcess::start(&[]);
    let pid = server.pid();
    let mut other = ws(&server, "/");
    for i in 0..5 {
        ws_echo(&mut other, &format!("warm-up {i}"));
    }
    let baseline = rss_kib(pid);

    let mut flooder = raw_upgraded(&server, "/");
    flooder
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let frame = client_frame(true, op::BINARY, &vec![0xa5; 64 * 1024]);
    let flood = thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0usize;
        let mut blocked = false;
        while start.elapsed() < Duration::from_secs(4) {
            match flooder.write_all(&frame) {
                Ok(()) => sent += frame.len(),
                Err(e) if is_timeout(&e) => {
                    blocked = true;
                    break;
                }
                Err(e) => panic!("flood write failed after {sent} bytes: {e}"),
            }
        }
        (flooder, sent, blocked, start.elapsed())
    });

    let mut rtts = Vec::new();
    let mut peak = baseline;
    let mut measure = |other: &mut Client, i: usize| {
        rtts.push(ws_echo(other, &format!("rtt {i}")));
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(100));
    };
    let mut i = 0;
    while !flood.is_finished() {
        measure(&mut other, i);
        i += 1;
    }
    let (flooder, sent, blocked, took) = flood.join().unwrap();
    // The flooder stays connected (never reading) while we keep measuring.
    for _ in 0..5 {
        measure(&mut other, i);
        i += 1;
    }
    drop(flooder);

    assert!(
        blocked,
        "the flooder wrote {} MiB in {took:?} without ever blocking: the server keeps \
         reading from a client whose send queue is over --max-backpressure",
        sent >> 20
    );
    let slow: Vec<_> = rtts
        .iter()
        .filter(|rtt| **rtt >= Duration::from_millis(500))
        .collect();
    assert!(
        slow.is_empty(),
        "echo round trips of another client during the flood: {rtts:?}"
    );
    assert!(rtts.len() >= 6, "too few round trips measured: {rtts:?}");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        growth_mib < 32,
        "server RSS grew by {growth_mib} MiB during the flood (baseline {baseline} KiB, peak \
         {peak} KiB)"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Keepalive pings and idle timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn keepalive_pings_then_drops_silent_peers_only() {
    let server = ServerProcess::start(&["--ping-interval", "1", "--idle-timeout", "3"]);
    let mut silent = raw_upgraded(&server, "/");
    let silent_start = Instant::now();
    let mut lively = raw_upgraded(&server, "/");

    let lively = thread::spawn(move || {
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(5500) {
            match next_frame(&mut lively, Duration::from_millis(200)) {
                Next::Frame(first, payload) => {
                    assert_eq!(first, 0x80 | op::PING, "unexpected frame");
                    lively
                        .write_all(&client_frame(true, op::PONG, &payload))
                        .unwrap();
                    pings += 1;
                }
                Next::Timeout => {}
                Next::Eof => panic!(
                    "a client answering every ping was dropped after {:?}",
                    start.elapsed()
                ),
            }
        }
        echo_rtt(&mut lively, "still alive");
        pings
    });

    // The silent client (reads, never answers) gets a ping after ~1 s of silence...
    match next_frame(&mut silent, Duration::from_millis(2500)) {
        Next::Frame(first, payload) => {
            assert_eq!(first, 0x80 | op::PING, "expected a keepalive ping");
            assert!(payload.len() <= 125);
        }
        other => panic!("no keepalive ping within 2.5 s: {other:?}"),
    }
    let ping_at = silent_start.elapsed();
    assert!(
        ping_at >= Duration::from_millis(800) && ping_at <= Duration::from_secs(2),
        "ping after {ping_at:?}, expected about 1 s"
    );
    // ...and is dropped at the idle timeout (3 s of silence).
    let closed = wait_eof(&mut silent, Duration::from_secs(4));
    let closed_at = silent_start.elapsed();
    assert!(
        closed.is_some(),
        "a peer that never answered pings is still connected after {closed_at:?}"
    );
    assert!(
        closed_at >= Duration::from_millis(2500) && closed_at <= Duration::from_secs(5),
        "dropped after {closed_at:?}, expected about 3 s"
    );

    let pings = lively.join().unwrap();
    assert!(pings >= 2, "the lively client saw {pings} pings in 5.5 s");
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_flushes_queued_echoes_then_closes_with_1001() {
    const MESSAGES: usize = 200;
    const REPLY_DELAY: Duration = Duration::from_millis(700);
    let server = ServerProcess::start(&["--drain-timeout", "5"]);
    let mut busy = raw_upgraded(&server, "/");
    let mut idle = raw_upgraded(&server, "/");

    let mut batch = Vec::new();
    for i in 0..MESSAGES {
        batch.extend(client_frame(
            true,
            op::TEXT,
            format!("message {i}").as_bytes(),
        ));
    }
    busy.write_all(&batch).unwrap();
    // The server has read (and echoed) all of them; the echoes wait unread in our socket.
    wait_for_stats(server.addr, Duration::from_secs(5), |json| {
        stat(json, "messages_in") >= MESSAGES as u64
    });

    let go = Arc::new(Barrier::new(3));
    let busy = thread::spawn({
        let go = Arc::clone(&go);
        move || {
            go.wait();
            for i in 0..MESSAGES {
                let (first, payload) = read_server_frame(&mut busy)
                    .unwrap_or_else(|| panic!("echo {i} lost in the shutdown"));
                assert_eq!(first, 0x80 | op::TEXT, "frame {i}");
                assert_eq!(String::from_utf8_lossy(&payload), format!("message {i}"));
            }
            let (first, payload) = read_server_frame(&mut busy).expect("close frame");
            assert_eq!(first, 0x80 | op::CLOSE, "expected close after the echoes");
            assert_eq!(close_code(&payload), 1001, "close code");
            thread::sleep(REPLY_DELAY);
            busy.write_all(&client_close(1001, b"")).unwrap();
            wait_eof(&mut busy, Duration::from_secs(6))
        }
    });
    let idle = thread::spawn({
        let go = Arc::clone(&go);
        move || {
            go.wait();
            assert_eq!(
                expect_close(&mut idle),
                Some(1001),
                "idle client close code"
            );
            thread::sleep(REPLY_DELAY);
            idle.write_all(&client_close(1001, b"")).unwrap();
            wait_eof(&mut idle, Duration::from_secs(6))
        }
    });

    go.wait();
    let start = Instant::now();
    let status = server.terminate();
    let took = start.elapsed();
    let busy_eof = busy.join().unwrap();
    let idle_eof = idle.join().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took >= REPLY_DELAY - Duration::from_millis(100),
        "the server exited after {took:?}, before the clients answered its close"
    );
    // Once a client has answered, the close handshake is complete: the server closes TCP
    // (RFC 6455 §7.1.1) and, with every connection gone, exits well before the drain timeout.
    for (who, eof) in [("busy", busy_eof), ("idle", idle_eof)] {
        let eof = eof.unwrap_or_else(|| panic!("{who} client: TCP never closed"));
        assert!(
            eof < Duration::from_secs(1),
            "{who} client: the server closed TCP {eof:?} after the client answered its close \
             frame (server exited after {took:?}; drain timeout 5 s)"
        );
    }
    assert!(
        took < Duration::from_millis(4500),
        "the server took {took:?} to exit although both clients answered its close after \
         {REPLY_DELAY:?} (drain timeout 5 s)"
    );
}

/// Clients that answer the server's close frame but then keep their sockets open (never
/// sending FIN) do not hold a shutting-down server: once a connection has sent and received
/// close and its output is flushed it is done, and the process exits when all are. It used
/// to wait for each peer's FIN until `--close-timeout` (5 s here).
#[test]
fn sigterm_ends_when_the_close_handshakes_end_though_peers_keep_their_sockets() {
    const CLIENTS: usize = 50;
    let server = ServerProcess::start(&["--close-timeout", "5", "--drain-timeout", "10"]);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| raw_upgraded(&server, "/")).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut client = c.try_clone().unwrap();
            let (go, answered) = (Arc::clone(&go), Arc::clone(&answered));
            thread::spawn(move || {
                go.wait();
                assert_eq!(expect_close(&mut client), Some(1001), "close code");
                client.write_all(&client_close(1001, b"")).unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    let status = server.terminate();
    let took = start.elapsed();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_eq!(answered.load(Ordering::SeqCst), CLIENTS);
    // The exit takes a few milliseconds; 2 s leaves a loaded machine a wide margin and is
    // still well below the 5 s the server took when it waited for every peer's FIN.
    assert!(
        took < Duration::from_secs(2),
        "the server took {took:?} to exit although every client answered its close frame"
    );
    // The clients never closed: their sockets were still open when the server exited.
    clients.clear();
}

#[test]
fn pid_file_names_the_serving_process_until_it_exits() {
    let dir = std::env::temp_dir().join(format!("wsloop-pid-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wsloop.pid");
    let server = ServerProcess::start(&["--pid-file", path.to_str().unwrap()]);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, format!("{}\n", server.pid()));
    assert!(server.terminate().success());
    assert!(!path.exists(), "removed at exit");
    // A file it cannot write: it says so and does not serve.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(["--addr", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("missing").join("wsloop.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. Chat fan-out
// ---------------------------------------------------------------------------------------------

#[test]
fn chat_publication_reaches_all_1001_members_once() {
    const TEXT: &[u8] = b"hello, everyone";
    let server = ServerProcess::start(&[]);
    let mut members: Vec<TcpStream> = (0..1000).map(|_| raw_upgraded(&server, "/chat")).collect();
    let mut sender = raw_upgraded(&server, "/chat");
    sender
        .write_all(&client_frame(true, op::TEXT, TEXT))
        .unwrap();
    members.push(sender);

    for (i, member) in members.iter_mut().enumerate() {
        let (first, payload) =
            read_server_frame(member).unwrap_or_else(|| panic!("member {i} received nothing"));
        assert_eq!(first, 0x80 | op::TEXT, "member {i}");
        assert_eq!(payload, TEXT, "member {i}");
    }
    thread::sleep(Duration::from_millis(300));
    for (i, member) in members.iter_mut().enumerate() {
        member.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match member.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("member {i} received more than one message: {other:?}"),
        }
    }

    let json = stats(server.addr);
    assert_eq!(stat(&json, "messages_in"), 1, "{json}");
    assert_eq!(stat(&json, "publications"), 1, "{json}");
    assert!(stat(&json, "messages_out") >= 1001, "{json}");
}

#[test]
fn chat_flag_puts_every_path_in_the_room() {
    let server = ServerProcess::start(&["--chat"]);
    let mut a = ws(&server, "/x");
    let mut b = ws(&server, "/x");
    a.send(Message::Text("from a".into())).unwrap();
    assert_eq!(ws_text(&mut a), "from a");
    assert_eq!(ws_text(&mut b), "from a", "b did not see a's message");
    b.send(Message::Text("from b".into())).unwrap();
    assert_eq!(ws_text(&mut b), "from b");
    assert_eq!(ws_text(&mut a), "from b", "a did not see b's message");
}

// ---------------------------------------------------------------------------------------------
// 6. Slow consumers
// ---------------------------------------------------------------------------------------------

const BIG: usize = 64 * 1024;
/// 25 MiB in all: far more than a never-reading socket's kernel buffers plus 1 MiB of queue.
const PUBLISHED: usize = 400;
/// How far (in messages) the publisher may run ahead of the fast readers.
const WINDOW: usize = 4;

/// Reads `PUBLISHED` big messages in order, counting them in `count`.
fn fast_reader(mut stream: TcpStream, count: Arc<AtomicUsize>, who: &'static str) {
    for i in 0..PUBLISHED {
        match next_frame(&mut stream, Duration::from_secs(10)) {
            Next::Frame(first, payload) => {
                assert_eq!(
                    first,
                    0x80 | op::TEXT,
                    "{who} got frame {first:#x} instead of message {i}: {:?}",
                    String::from_utf8_lossy(&payload[..payload.len().min(20)])
                );
                assert_eq!(payload.len(), BIG, "{who}: message {i}");
                assert_eq!(seq_of(&payload), i, "{who}: order");
            }
            other => panic!("{who}: message {i} missing: {other:?}"),
        }
        count.store(i + 1, Ordering::SeqCst);
    }
}

/// On `/chat`: a slow subscriber that never reads, a fast one and the publisher (also a
/// member, reading its own publications). Publishes `PUBLISHED` messages of 64 KiB, paced on
/// the fast readers. Returns the slow subscriber's socket, still unread.
fn publish_past_a_slow_subscriber(server: &ServerProcess) -> TcpStream {
    let slow = raw_upgraded(server, "/chat");
    let fast = raw_upgraded(server, "/chat");
    let mut publisher = raw_upgraded(server, "/chat");
    let fast_count = Arc::new(AtomicUsize::new(0));
    let own_count = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let spawn_reader = |stream: TcpStream, count: &Arc<AtomicUsize>, who: &'static str| {
        let count = Arc::clone(count);
        let failed = Arc::clone(&failed);
        thread::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fast_reader(stream, count, who);
            }));
            if let Err(e) = result {
                failed.store(true, Ordering::SeqCst);
                std::panic::resume_unwind(e);
            }
        })
    };
    let fast = spawn_reader(fast, &fast_count, "fast subscriber");
    let own = spawn_reader(publisher.try_clone().unwrap(), &own_count, "publisher");

    for i in 0..PUBLISHED {
        let start = Instant::now();
        while fast_count.load(Ordering::SeqCst) + WINDOW < i
            || own_count.load(Ordering::SeqCst) + WINDOW < i
        {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fast readers stuck before message {i}"
            );
            thread::sleep(Duration::from_micros(200));
        }
        if failed.load(Ordering::SeqCst) {
            break;
        }
        publisher
            .write_all(&client_frame(true, op::TEXT, &numbered(i, BIG)))
            .unwrap();
    }
    fast.join().expect("the fast subscriber missed messages");
    own.join().expect("the publisher missed its own messages");
    assert_eq!(fast_count.load(Ordering::SeqCst), PUBLISHED);
    slow
}

#[test]
fn slow_consumer_is_closed_with_1008_by_default() {
    let server = ServerProcess::start(&["--close-timeout", "30"]);
    let mut slow = publish_past_a_slow_subscriber(&server);

    let mut received = 0;
    let code = loop {
        match next_frame(&mut slow, Duration::from_secs(5)) {
            Next::Frame(first, _) if first & 0x0f == op::TEXT => received += 1,
            Next::Frame(first, payload) if first & 0x0f == op::CLOSE => {
                break close_code(&payload);
            }
            other => {
                panic!("slow subscriber: after {received} messages, no close frame: {other:?}")
            }
        }
    };
    assert_eq!(code, 1008, "slow subscriber close code");
    assert!(received < PUBLISHED, "the slow subscriber got everything");
    let json = stats(server.addr);
    assert!(stat(&json, "backpressure_closes") >= 1, "{json}");
}

#[test]
fn slow_consumer_drop_policy_skips_messages_but_keeps_it() {
    let server = ServerProcess::start(&["--slow-consumer", "drop"]);
    let mut slow = publish_past_a_slow_subscriber(&server);

    let mut received = 0;
    loop {
        match next_frame(&mut slow, Duration::from_millis(1000)) {
            Next::Frame(first, _) if first & 0x0f == op::TEXT => received += 1,
            Next::Timeout => break,
            other => panic!("slow subscriber (drop policy) after {received} messages: {other:?}"),
        }
    }
    assert!(
        received < PUBLISHED,
        "the slow subscriber got all {received} messages: nothing was dropped"
    );
    // Still a member: its own message comes back to it.
    slow.write_all(&client_frame(true, op::TEXT, b"still subscribed"))
        .unwrap();
    match next_frame(&mut slow, Duration::from_secs(5)) {
        Next::Frame(first, payload) => {
            assert_eq!(first, 0x80 | op::TEXT);
            assert_eq!(payload, b"still subscribed");
        }
        other => panic!("slow subscriber no longer served: {other:?}"),
    }
    let json = stats(server.addr);
    assert!(stat(&json, "dropped_messages") > 0, "{json}");
}

// ---------------------------------------------------------------------------------------------
// 7. /stats counters
// ---------------------------------------------------------------------------------------------

#[test]
fn stats_counters_follow_traffic_and_errors() {
    const ECHOES: u64 = 25;
    let server = ServerProcess::start(&[]);
    let before = stats(server.addr);
    assert_eq!(stat(&before, "messages_in"), 0, "{before}");
    assert_eq!(stat(&before, "protocol_errors"), 0, "{before}");

    let mut ws = ws(&server, "/");
    for i in 0..ECHOES {
        ws_echo(&mut ws, &format!("count me {i}"));
    }
    let after = stats(server.addr);
    assert!(stat(&after, "messages_in") >= ECHOES, "{after}");
    assert!(stat(&after, "messages_out") >= ECHOES, "{after}");
    assert!(stat(&after, "upgraded") >= 1, "{after}");

    // A reserved opcode is a protocol error: close 1002, counted.
    let mut bad = raw_upgraded(&server, "/");
    bad.write_all(&client_frame_raw(0x83, b"")).unwrap();
    assert_eq!(expect_close(&mut bad), Some(1002));
    let json = stats(server.addr);
    assert!(stat(&json, "protocol_errors") >= 1, "{json}");
}

// ---------------------------------------------------------------------------------------------
// 8. Start-up's memory
// ---------------------------------------------------------------------------------------------

/// Once it listens, the server gives back what start-up mapped of its program file and
/// libraries (src/bin/wsloop/trim.rs): its RSS falls well below the most it has been (over
/// 3 MiB below, in a debug build). Then it serves as before: the code it runs is mapped
/// again from the page cache.
#[test]
fn start_up_pages_are_given_back_and_the_server_serves_on() {
    let server = ServerProcess::start(&[]);
    let pid = server.pid();
    let given_back = || peak_rss_kib(pid).saturating_sub(rss_kib(pid));
    assert!(
        common::wait_until(Duration::from_secs(5), || given_back() >= 1024),
        "RSS {} KiB, at most {} KiB: start-up's pages were not given back",
        rss_kib(pid),
        peak_rss_kib(pid)
    );
    let mut client = ws(&server, "/");
    for i in 0..100 {
        let text = format!("after the trim {i}");
        ws_echo(&mut client, &text);
    }
    let (_stream, page) = exchange(server.addr, b"", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}
