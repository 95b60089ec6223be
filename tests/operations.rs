#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Operational behaviour of the real `wsloop` binary over loopback sockets: connection limits,
//! backpressure, handshake and keepalive timeouts, graceful shutdown, chat fan-out, slow
//! consumers and the `/stats` counters. Each test starts its own server.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    client_frame, client_frame_raw, expect_close, raw_upgraded, read_http_head, read_server_frame,
    read_to_close, rss_kib, upgrade_request, ServerProcess,
};
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// What the next read on a raw connection produced.
#[derive(Debug)]
enum Next {
    /// A whole server frame: (first byte, payload).
    Frame(u8, Vec<u8>),
    /// The server closed TCP (EOF or reset).
    Eof,
    /// Nothing arrived in time.
    Timeout,
}

/// Reads one server frame, waiting at most `wait` for its first byte.
fn next_frame(stream: &mut TcpStream, wait: Duration) -> Next {
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut first = [0u8; 1];
    let got = loop {
        match stream.read(&mut first) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match got {
        Ok(0) => return Next::Eof,
        Ok(_) => {}
        Err(e) if is_timeout(&e) => return Next::Timeout,
        Err(e) if is_reset(&e) => return Next::Eof,
        Err(e) => panic!("read: {e}"),
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let rest = (|| -> io::Result<Vec<u8>> {
        let mut second = [0u8; 1];
        stream.read_exact(&mut second)?;
        assert_eq!(second[0] & 0x80, 0, "server frames must not be masked");
        let len = match second[0] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b)?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b)?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        Ok(payload)
    })();
    match rest {
        Ok(payload) => Next::Frame(first[0], payload),
        Err(e) => panic!("server frame cut short: {e}"),
    }
}

/// Reads and discards until the server closes TCP (EOF or reset). Returns how long that
/// took, or `None` if the connection was still open after `within`.
fn wait_eof(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) if is_reset(&e) => return Some(start.elapsed()),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Sends one masked text message on a raw connection and waits for its echo, answering any
/// keepalive ping on the way.
fn raw_echo(stream: &mut TcpStream, text: &str) {
    stream
        .write_all(&client_frame(true, OPCODE_TEXT, text.as_bytes()))
        .unwrap();
    loop {
        match next_frame(stream, Duration::from_secs(5)) {
            Next::Frame(first, payload) if first & 0x0f == OPCODE_PING => stream
                .write_all(&client_frame(true, OPCODE_PONG, &payload))
                .unwrap(),
            Next::Frame(first, payload) => {
                assert_eq!(first, 0x80 | OPCODE_TEXT, "expected the echo of {text:?}");
                assert_eq!(payload, text.as_bytes());
                return;
            }
            other => panic!("no echo for {text:?}: {other:?}"),
        }
    }
}

/// A tungstenite client on `path`, with 5 s socket timeouts.
fn ws_connect(server: &ServerProcess, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(server.ws_url(path), stream) {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            ws
        }
        Err(e) => panic!("handshake on {path} failed: {e}"),
    }
}

/// Reads the next text message on a tungstenite client (control frames are handled by it).
fn ws_read_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => return text,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => panic!("expected text, got {other:?}"),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// One echo round trip on a tungstenite client; returns its duration.
fn ws_echo(ws: &mut WebSocket<TcpStream>, text: &str) -> Duration {
    let start = Instant::now();
    ws.send(Message::Text(text.to_owned())).unwrap();
    assert_eq!(ws_read_text(ws), text);
    start.elapsed()
}

/// `GET path` with `Connection: close`; returns (head, body).
fn http_get(server: &ServerProcess, path: &str) -> (String, String) {
    let mut stream = server.raw();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let bytes = read_to_close(&mut stream);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response to GET {path}: {text:?}"));
    (head.to_owned(), body.to_owned())
}

/// The `/stats` JSON.
fn stats(server: &ServerProcess) -> String {
    let (head, body) = http_get(server, "/stats");
    assert!(head.starts_with("HTTP/1.1 200"), "GET /stats: {head}");
    body
}

/// One integer counter of the `/stats` JSON.
fn stat(json: &str, key: &str) -> u64 {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("{key} missing from {json}"))
        + pattern.len();
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Polls `/stats` until `ok` holds (or panics after `within`); returns the JSON.
fn wait_for_stats(server: &ServerProcess, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let json = stats(server);
        if ok(&json) {
            return json;
        }
        assert!(start.elapsed() < within, "stats never matched: {json}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn masked_close(code: u16) -> Vec<u8> {
    client_frame(true, OPCODE_CLOSE, &code.to_be_bytes())
}

// ---------------------------------------------------------------------------------------------
// 1. --max-conns
// ---------------------------------------------------------------------------------------------

#[test]
fn max_conns_answers_503_and_frees_slots() {
    let server = ServerProcess::start(&["--max-conns", "100"]);
    let mut conns: Vec<TcpStream> = (0..100).map(|_| raw_upgraded(&server, "/")).collect();

    // The 101st is refused with 503 + Retry-After and closed.
    let mut extra = server.raw();
    extra
        .write_all(upgrade_request("/").as_bytes())
        .expect("send upgrade");
    let head = read_http_head(&mut extra);
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "101st connection with --max-conns 100: {head:?}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after:"),
        "503 without Retry-After: {head:?}"
    );
    assert!(
        wait_eof(&mut extra, Duration::from_secs(3)).is_some(),
        "the refused connection was not closed"
    );
    drop(extra);

    // Close one of the 100 with a full close handshake.
    let mut leaving = conns.remove(0);
    leaving.write_all(&masked_close(1000)).unwrap();
    assert_eq!(expect_close(&mut leaving), Some(1000));
    assert!(
        wait_eof(&mut leaving, Duration::from_secs(3)).is_some(),
        "no FIN after the close handshake"
    );
    drop(leaving);

    // A new connection upgrades again (the server sees our FIN asynchronously: retry briefly).
    let deadline = Instant::now() + Duration::from_secs(3);
    let replacement = loop {
        let mut stream = server.raw();
        stream.write_all(upgrade_request("/").as_bytes()).unwrap();
        let head = read_http_head(&mut stream);
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
        raw_echo(conn, &format!("still here {i}"));
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
            .write_all(&client_frame(true, OPCODE_TEXT, b"last words"))
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
    let json = stats(&server);
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
    let mut other = ws_connect(&server, "/");
    for i in 0..5 {
        ws_echo(&mut other, &format!("warm-up {i}"));
    }
    let baseline = rss_kib(pid);

    let mut flooder = raw_upgraded(&server, "/");
    flooder
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let frame = client_frame(true, OPCODE_BINARY, &vec![0xa5; 64 * 1024]);
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
    let mut measure = |other: &mut WebSocket<TcpStream>, i: usize| {
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
// 3. Handshake timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_timeout_closes_stalled_request_heads() {
    let server = ServerProcess::start(&["--handshake-timeout", "2"]);
    let start = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut stream = server.raw();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
                .unwrap();
            stream
        })
        .collect();

    // A real client is served promptly meanwhile.
    let t = Instant::now();
    let mut ws = ws_connect(&server, "/");
    ws_echo(&mut ws, "not blocked by half-open handshakes");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a real client took {took:?} to connect and echo"
    );

    // Well before the timeout, the stalled connections are still open.
    if start.elapsed() < Duration::from_millis(1500) {
        for (i, stream) in stalled.iter_mut().enumerate() {
            stream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 16];
            match stream.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => panic!(
                    "stalled connection {i} ended after {:?}, before the 2 s handshake \
                     timeout: {other:?}",
                    start.elapsed()
                ),
            }
            stream.set_nonblocking(false).unwrap();
        }
    }

    // After the timeout every one of them is closed by the server.
    let deadline = start + Duration::from_secs(5);
    for (i, stream) in stalled.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            wait_eof(stream, left).is_some(),
            "stalled connection {i} still open {:?} after it sent half a request head",
            start.elapsed()
        );
    }
    // The server is still healthy.
    ws_echo(&mut ws, "after the timeouts");
}

// ---------------------------------------------------------------------------------------------
// 4. Keepalive pings and idle timeout
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
                    assert_eq!(first, 0x80 | OPCODE_PING, "unexpected frame");
                    lively
                        .write_all(&client_frame(true, OPCODE_PONG, &payload))
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
        raw_echo(&mut lively, "still alive");
        pings
    });

    // The silent client (reads, never answers) gets a ping after ~1 s of silence...
    match next_frame(&mut silent, Duration::from_millis(2500)) {
        Next::Frame(first, payload) => {
            assert_eq!(first, 0x80 | OPCODE_PING, "expected a keepalive ping");
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
// 5. Graceful shutdown
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
            OPCODE_TEXT,
            format!("message {i}").as_bytes(),
        ));
    }
    busy.write_all(&batch).unwrap();
    // The server has read (and echoed) all of them; the echoes wait unread in our socket.
    wait_for_stats(&server, Duration::from_secs(5), |json| {
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
                assert_eq!(first, 0x80 | OPCODE_TEXT, "frame {i}");
                assert_eq!(String::from_utf8_lossy(&payload), format!("message {i}"));
            }
            let (first, payload) = read_server_frame(&mut busy).expect("close frame");
            assert_eq!(
                first,
                0x80 | OPCODE_CLOSE,
                "expected close after the echoes"
            );
            assert_eq!(&payload[..2], &1001u16.to_be_bytes(), "close code");
            thread::sleep(REPLY_DELAY);
            busy.write_all(&masked_close(1001)).unwrap();
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
            idle.write_all(&masked_close(1001)).unwrap();
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
                client.write_all(&masked_close(1001)).unwrap();
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
// 6. Chat fan-out
// ---------------------------------------------------------------------------------------------

#[test]
fn chat_publication_reaches_all_1001_members_once() {
    const TEXT: &[u8] = b"hello, everyone";
    let server = ServerProcess::start(&[]);
    let mut members: Vec<TcpStream> = (0..1000).map(|_| raw_upgraded(&server, "/chat")).collect();
    let mut sender = raw_upgraded(&server, "/chat");
    sender
        .write_all(&client_frame(true, OPCODE_TEXT, TEXT))
        .unwrap();
    members.push(sender);

    for (i, member) in members.iter_mut().enumerate() {
        let (first, payload) =
            read_server_frame(member).unwrap_or_else(|| panic!("member {i} received nothing"));
        assert_eq!(first, 0x80 | OPCODE_TEXT, "member {i}");
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

    let json = stats(&server);
    assert_eq!(stat(&json, "messages_in"), 1, "{json}");
    assert_eq!(stat(&json, "publications"), 1, "{json}");
    assert!(stat(&json, "messages_out") >= 1001, "{json}");
}

#[test]
fn chat_flag_puts_every_path_in_the_room() {
    let server = ServerProcess::start(&["--chat"]);
    let mut a = ws_connect(&server, "/x");
    let mut b = ws_connect(&server, "/x");
    a.send(Message::Text("from a".into())).unwrap();
    assert_eq!(ws_read_text(&mut a), "from a");
    assert_eq!(ws_read_text(&mut b), "from a", "b did not see a's message");
    b.send(Message::Text("from b".into())).unwrap();
    assert_eq!(ws_read_text(&mut b), "from b");
    assert_eq!(ws_read_text(&mut a), "from b", "a did not see b's message");
}

// ---------------------------------------------------------------------------------------------
// 7. Slow consumers
// ---------------------------------------------------------------------------------------------

const BIG: usize = 64 * 1024;
/// 25 MiB in all: far more than a never-reading socket's kernel buffers plus 1 MiB of queue.
const PUBLISHED: usize = 400;
/// How far (in messages) the publisher may run ahead of the fast readers.
const WINDOW: usize = 4;

fn big_message(i: usize) -> Vec<u8> {
    let mut payload = format!("{i:08}").into_bytes();
    payload.resize(BIG, b'a');
    payload
}

/// Reads `PUBLISHED` big messages in order, counting them in `count`.
fn fast_reader(mut stream: TcpStream, count: Arc<AtomicUsize>, who: &'static str) {
    for i in 0..PUBLISHED {
        match next_frame(&mut stream, Duration::from_secs(10)) {
            Next::Frame(first, payload) => {
                assert_eq!(
                    first,
                    0x80 | OPCODE_TEXT,
                    "{who} got frame {first:#x} instead of message {i}: {:?}",
                    String::from_utf8_lossy(&payload[..payload.len().min(20)])
                );
                assert_eq!(payload.len(), BIG, "{who}: message {i}");
                assert_eq!(&payload[..8], format!("{i:08}").as_bytes(), "{who}: order");
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
            .write_all(&client_frame(true, OPCODE_TEXT, &big_message(i)))
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
            Next::Frame(first, _) if first & 0x0f == OPCODE_TEXT => received += 1,
            Next::Frame(first, payload) if first & 0x0f == OPCODE_CLOSE => {
                break u16::from_be_bytes([payload[0], payload[1]]);
            }
            other => {
                panic!("slow subscriber: after {received} messages, no close frame: {other:?}")
            }
        }
    };
    assert_eq!(code, 1008, "slow subscriber close code");
    assert!(received < PUBLISHED, "the slow subscriber got everything");
    let json = stats(&server);
    assert!(stat(&json, "backpressure_closes") >= 1, "{json}");
}

#[test]
fn slow_consumer_drop_policy_skips_messages_but_keeps_it() {
    let server = ServerProcess::start(&["--slow-consumer", "drop"]);
    let mut slow = publish_past_a_slow_subscriber(&server);

    let mut received = 0;
    loop {
        match next_frame(&mut slow, Duration::from_millis(1000)) {
            Next::Frame(first, _) if first & 0x0f == OPCODE_TEXT => received += 1,
            Next::Timeout => break,
            other => panic!("slow subscriber (drop policy) after {received} messages: {other:?}"),
        }
    }
    assert!(
        received < PUBLISHED,
        "the slow subscriber got all {received} messages: nothing was dropped"
    );
    // Still a member: its own message comes back to it.
    slow.write_all(&client_frame(true, OPCODE_TEXT, b"still subscribed"))
        .unwrap();
    match next_frame(&mut slow, Duration::from_secs(5)) {
        Next::Frame(first, payload) => {
            assert_eq!(first, 0x80 | OPCODE_TEXT);
            assert_eq!(payload, b"still subscribed");
        }
        other => panic!("slow subscriber no longer served: {other:?}"),
    }
    let json = stats(&server);
    assert!(stat(&json, "dropped_messages") > 0, "{json}");
}

// ---------------------------------------------------------------------------------------------
// 8. /stats counters
// ---------------------------------------------------------------------------------------------

#[test]
fn stats_counters_follow_traffic_and_errors() {
    const ECHOES: u64 = 25;
    let server = ServerProcess::start(&[]);
    let before = stats(&server);
    assert_eq!(stat(&before, "messages_in"), 0, "{before}");
    assert_eq!(stat(&before, "protocol_errors"), 0, "{before}");

    let mut ws = ws_connect(&server, "/");
    for i in 0..ECHOES {
        ws_echo(&mut ws, &format!("count me {i}"));
    }
    let after = stats(&server);
    assert!(stat(&after, "messages_in") >= ECHOES, "{after}");
    assert!(stat(&after, "messages_out") >= ECHOES, "{after}");
    assert!(stat(&after, "upgraded") >= 1, "{after}");

    // A reserved opcode is a protocol error: close 1002, counted.
    let mut bad = raw_upgraded(&server, "/");
    bad.write_all(&client_frame_raw(0x83, b"")).unwrap();
    assert_eq!(expect_close(&mut bad), Some(1002));
    let json = stats(&server);
    assert!(stat(&json, "protocol_errors") >= 1, "{json}");
}
