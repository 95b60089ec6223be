//! Adversarial clients over real sockets: connection churn, accept under EMFILE, tiny
//! fragments, ping floods and half-closed connections. Each test says in a comment which
//! missing protection would make it fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::frames::{client_close, client_frame, expect_close, op, read_server_frame};
use common::http::{read_http_head, read_to_close, stats, upgrade_request};
use common::process::{context_switches, cpu_seconds, fd_count, rss_kib};
use common::wait_until;
use common::ws::{assert_still_serving, echo_rtt, raw_upgraded};
use common::ServerProcess;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `"open"` from `/stats` (the `/stats` request itself is counted the same way every time).
fn stats_open(server: &ServerProcess) -> u64 {
    stats(server.addr)["open"].as_u64().expect("open")
}

/// What the server holds when idle, to compare with after an abuse: open descriptors,
/// `/stats` open connections and RSS.
struct Baseline {
    pid: u32,
    fds: usize,
    open: u64,
    rss: u64,
}

impl Baseline {
    /// Taken once the server has served one connection (so lazily created state exists)
    /// and removed it again.
    fn after_warm_up(server: &ServerProcess) -> Baseline {
        let open = stats_open(server);
        let mut warm = raw_upgraded(server, "/");
        echo_rtt(&mut warm, "warm");
        drop(warm);
        assert!(wait_until(Duration::from_secs(5), || stats_open(server) == open));
        Baseline::now(server)
    }

    /// Taken as things are.
    fn now(server: &ServerProcess) -> Baseline {
        let pid = server.pid();
        Baseline {
            pid,
            fds: fd_count(pid),
            open: stats_open(server),
            rss: rss_kib(pid),
        }
    }

    /// Waits until the server holds no more descriptors (±2) and connections than at the
    /// baseline, after `what`.
    fn assert_back(&self, server: &ServerProcess, what: &str) {
        let fds_ok = wait_until(Duration::from_secs(15), || {
            fd_count(self.pid).abs_diff(self.fds) <= 2
        });
        assert!(
            fds_ok,
            "fd count {} after {what}, baseline {}",
            fd_count(self.pid),
            self.fds
        );
        let open_ok = wait_until(Duration::from_secs(10), || stats_open(server) == self.open);
        assert!(
            open_ok,
            "/stats open {} after {what}, baseline {}",
            stats_open(server),
            self.open
        );
    }

    /// RSS grew by less than `kib` since the baseline, over `what`.
    fn assert_rss_within(&self, kib: u64, what: &str) {
        let rss = rss_kib(self.pid);
        assert!(
            rss < self.rss + kib,
            "RSS grew from {} KiB to {rss} KiB over {what}",
            self.rss
        );
    }
}

/// An upgraded connection that has sent part of a text frame (round 0, 3, …: 1 byte, inside
/// the header; 1, 4, …: 5 bytes, inside the mask; 2, 5, …: 100 bytes, inside the payload),
/// after a complete first fragment on odd rounds (so mid-message too).
fn partial_frame(server: &ServerProcess, round: usize) -> TcpStream {
    let mut stream = raw_upgraded(server, "/");
    let frame = client_frame(true, op::TEXT, &[b'x'; 300]);
    let cut = [1, 5, 100][round % 3];
    if round % 2 == 1 {
        stream
            .write_all(&client_frame(false, op::TEXT, b"first"))
            .expect("fragment");
    }
    stream.write_all(&frame[..cut]).expect("partial frame");
    stream
}

/// One churn cycle: connect, upgrade, then either a close handshake (waiting for the
/// server's FIN, so the server closes TCP first) or, every 10th cycle, a plain TCP close.
fn churn_cycle(server: &ServerProcess, i: usize) {
    let mut stream = raw_upgraded(server, "/");
    if i % 10 == 9 {
        return; // Plain TCP close on drop.
    }
    stream
        .write_all(&client_close(1000, b""))
        .expect("send close");
    assert_eq!(expect_close(&mut stream), Some(1000), "cycle {i}");
    let rest = read_to_close(&mut stream);
    assert!(rest.is_empty(), "cycle {i}: bytes after the close frame");
}

/// 20 000 open → upgrade → close cycles (4 threads × 5 000, a few sockets open at a time):
/// afterwards fds, `/stats` open and RSS are back near the baseline taken after a warm-up.
/// Fails if the server leaked a socket, a slab entry or per-connection state (timers, rooms,
/// per-IP counts, buffers) on either the close-handshake or the plain-TCP-close path.
#[test]
fn connection_churn_leaks_nothing() {
    let server = Arc::new(ServerProcess::start(&[]));
    let pid = server.pid();
    for i in 0..1000 {
        churn_cycle(&server, i);
    }
    // Warm-up done: everything it opened must be gone before taking the baseline.
    let mut fds = fd_count(pid);
    wait_until(Duration::from_secs(10), || {
        let now = fd_count(pid);
        let settled = now == fds;
        fds = now;
        settled
    });
    let base = Baseline::now(&server);

    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for i in 0..5000 {
                    churn_cycle(&server, t * 5000 + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("churn thread");
    }
    let took = started.elapsed();

    base.assert_back(&server, "churn");
    base.assert_rss_within(8 * 1024, &format!("20 000 cycles ({took:?})"));
    assert_still_serving(&server);
}

/// A client sends a text frame and then `shutdown(Write)`: it still gets the echo, then EOF.
/// Fails if the server treats the FIN as "drop everything" and discards output it had
/// already produced for that connection (RFC 6455 §7.1.1 / TCP half-close semantics).
#[test]
fn half_close_after_frame_still_gets_echo() {
    let server = ServerProcess::start(&[]);
    let mut stream = raw_upgraded(&server, "/");
    stream
        .write_all(&client_frame(true, op::TEXT, b"before my FIN"))
        .expect("send text");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let bytes = read_to_close(&mut stream);
    assert!(
        bytes.starts_with(&[0x81, 13]) && bytes[2..].starts_with(b"before my FIN"),
        "expected the echo before EOF, got {} bytes: {:02x?}",
        bytes.len(),
        &bytes[..bytes.len().min(32)]
    );
}

/// The same with an 8 MiB message: the client half-closes right after sending it and reads
/// only later, so when the server reads the FIN most of the echo is still queued (the
/// client's receive buffer is small, and `--max-backpressure 64 MiB` keeps the server
/// reading). The whole echo must still arrive before EOF. Fails if the FIN discards queued
/// output; unlike the test above, this does not depend on whether the frame and the FIN
/// happen to be read in the same turn.
#[test]
fn half_close_with_a_large_echo_queued_still_gets_all_of_it() {
    const LEN: usize = 8 << 20;
    let server = ServerProcess::start(&["--max-backpressure", &(64usize << 20).to_string()]);
    let mut stream = raw_upgraded(&server, "/");
    socket2::SockRef::from(&stream)
        .set_recv_buffer_size(64 * 1024)
        .expect("SO_RCVBUF");
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    stream
        .write_all(&client_frame(true, op::BINARY, &payload))
        .expect("send binary");
    stream.shutdown(Shutdown::Write).expect("half-close");
    // Let the server read the FIN while the echo is still queued behind the small buffer.
    std::thread::sleep(Duration::from_millis(500));
    let bytes = read_to_close(&mut stream);
    let mut header = vec![0x82, 127];
    header.extend_from_slice(&(LEN as u64).to_be_bytes());
    assert!(
        bytes.len() == header.len() + LEN,
        "expected the whole {} byte echo before EOF, got {} bytes",
        header.len() + LEN,
        bytes.len()
    );
    assert_eq!(bytes[..header.len()], header[..], "echo header");
    assert!(bytes[header.len()..] == payload[..], "echo payload differs");
}

/// A client half-closes in the middle of a frame (and in the middle of a fragmented
/// message): the server closes the connection, does not crash and keeps no fd for it.
/// Fails if a FIN with a partial frame buffered made the server panic, spin or leak.
#[test]
fn half_close_mid_frame_is_cleaned_up() {
    let server = ServerProcess::start(&[]);
    let base = Baseline::after_warm_up(&server);
    for round in 0..50 {
        let mut stream = partial_frame(&server, round);
        stream.shutdown(Shutdown::Write).expect("half-close");
        // Whatever the server says (a close frame or nothing), it must end the connection.
        let started = Instant::now();
        let _ = read_to_close(&mut stream);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "round {round}: server kept a half-closed connection open"
        );
    }
    base.assert_back(&server, "half-closes");
    assert_still_serving(&server);
}

/// A client resets the connection (RST: `SO_LINGER` 0, then close) in the middle of a frame
/// or of a fragmented message: the server drops the connection and keeps no fd or slab
/// entry for it. Fails if a read error with a partial frame buffered were not cleaned up.
#[test]
fn reset_mid_frame_is_cleaned_up() {
    let server = ServerProcess::start(&[]);
    let base = Baseline::after_warm_up(&server);
    for round in 0..50 {
        let stream = partial_frame(&server, round);
        // Let the server read the partial frame before the reset arrives.
        std::thread::sleep(Duration::from_millis(5));
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(stream);
    }
    base.assert_back(&server, "resets");
    assert_still_serving(&server);
}

/// Sends one text message of `count` one-byte fragments from a writer thread in big
/// batched writes; returns the stream for reading and the writer (which ignores write
/// errors once the server closed).
fn send_tiny_fragments(
    server: &ServerProcess,
    count: usize,
) -> (TcpStream, std::thread::JoinHandle<()>) {
    let stream = raw_upgraded(server, "/");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // A writer stuck behind a server that stopped reading gives up instead of hanging.
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let mut writer = stream.try_clone().expect("clone");
    let handle = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(7 * 10_000);
        for i in 0..count {
            let opcode = if i == 0 { op::TEXT } else { op::CONT };
            batch.extend(client_frame(
                i == count - 1,
                opcode,
                &[b'a' + (i % 26) as u8],
            ));
            if batch.len() >= 7 * 10_000 || i == count - 1 {
                if writer.write_all(&batch).is_err() {
                    return; // The server closed on us: expected with a small limit.
                }
                batch.clear();
            }
        }
    });
    (stream, handle)
}

/// 100 000 one-byte fragments with `--max-message 50000`: closed with 1009 once the sum
/// passes the limit, and RSS stays small. Fails if the limit were only checked per frame
/// (each fragment is tiny) or if per-fragment bookkeeping grew without bound.
#[test]
fn hundred_thousand_tiny_fragments_hit_max_message() {
    let server = ServerProcess::start(&["--max-message", "50000"]);
    let base = Baseline::now(&server);
    let (mut stream, writer) = send_tiny_fragments(&server, 100_000);
    assert_eq!(expect_close(&mut stream), Some(1009));
    writer.join().expect("writer");
    base.assert_rss_within(8 * 1024, "100 000 fragments");
    assert_still_serving(&server);
}

/// The same 100 000 one-byte fragments under the default limit echo as one correct
/// 100 000-byte message. Fails if reassembly lost, reordered or duplicated fragments, or
/// if the server could not keep up with 700 kB of 7-byte frames in big writes.
#[test]
fn hundred_thousand_tiny_fragments_echo_whole() {
    let server = ServerProcess::start(&[]);
    let (mut stream, writer) = send_tiny_fragments(&server, 100_000);
    let (first, payload) = read_server_frame(&mut stream).expect("echo");
    writer.join().expect("writer");
    assert_eq!(first, 0x81, "one final text frame");
    assert_eq!(payload.len(), 100_000);
    let wrong = payload
        .iter()
        .enumerate()
        .position(|(i, &b)| b != b'a' + (i % 26) as u8);
    assert_eq!(wrong, None, "first wrong byte");
}

/// Runs the server with `ulimit -n 40` and fills its fd table: new connections then wait in
/// the kernel backlog without a 101. While saturated the server must not spin on `accept`
/// (< 0.5 s of CPU and < 500 context switches over 2 s), must keep serving the connections
/// it has, and once some are closed it must accept again. Fails without the EMFILE back-off
/// (a level-triggered retry loop burns a core; a retry on every poll wakes the server about
/// once a millisecond) or if accepting were never resumed after the pause (no recovery).
#[test]
fn accept_under_emfile_backs_off_and_recovers() {
    let server = ServerProcess::start_with_fd_limit(40, &[]);
    let pid = server.pid();
    let mut held = Vec::new();
    let mut unserved = None;
    for _ in 0..80 {
        let mut stream = TcpStream::connect(server.addr).expect("connect (backlog)");
        stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        stream
            .write_all(upgrade_request("/").as_bytes())
            .expect("send upgrade");
        let head = read_http_head(&mut stream);
        if head.starts_with("HTTP/1.1 101") {
            held.push(stream);
        } else {
            assert!(head.is_empty(), "unexpected answer: {head}");
            unserved = Some(stream);
            break;
        }
    }
    let mut unserved = unserved.expect("the server never ran out of descriptors");
    assert!(held.len() >= 10, "only {} connections served", held.len());
    assert!(fd_count(pid) >= 35, "fd table not full: {}", fd_count(pid));

    let cpu_before = cpu_seconds(pid);
    let switches_before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(pid) - cpu_before;
    let switches = context_switches(pid) - switches_before;
    assert!(
        cpu < 0.5,
        "server used {cpu:.2} s of CPU in 2 s while out of descriptors (busy accept loop?)"
    );
    // A retry on every poll costs little CPU (the reactor's poll timeout has 1 ms of slack)
    // but wakes the server ~1000 times a second; the 100 ms back-off wakes it ~10 times.
    assert!(
        switches < 500,
        "server was scheduled {switches} times in 2 s while out of descriptors (accept \
         retried without a back-off?)"
    );

    // Existing connections are still served while accepts are paused.
    echo_rtt(&mut held[0], "served while saturated");

    // Recovery: free descriptors; the waiting client and a new one get upgraded.
    held.truncate(0);
    unserved
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = read_http_head(&mut unserved);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "backlogged client not served after recovery: {head:?}"
    );
    echo_rtt(&mut unserved, "accepted after the pause");
    let mut fresh = raw_upgraded(&server, "/");
    echo_rtt(&mut fresh, "new after recovery");
}

/// 200 000 pings (125-byte payloads) from a client that does not read: once its send queue
/// passes `--max-backpressure 65536` the server stops reading it, so the client's writes
/// block; the server's RSS stays bounded; another client is served meanwhile; and when the
/// client reads, every pong arrives with the right payload, in order. Fails if the server
/// kept reading (and queueing pongs) regardless of backpressure: writes would never block
/// and RSS would grow by the ~25 MB of pongs.
#[test]
fn ping_flood_pongs_are_bounded_by_backpressure() {
    const PINGS: usize = 200_000;
    let server = ServerProcess::start(&["--max-backpressure", "65536"]);
    let mut other = raw_upgraded(&server, "/");
    echo_rtt(&mut other, "warm");
    let base = Baseline::now(&server);

    let stream = raw_upgraded(&server, "/");
    // Small fixed socket buffers on the client, so the kernel cannot absorb the whole flood.
    let sock = socket2::SockRef::from(&stream);
    sock.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    sock.set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");

    let payload = |i: usize| -> Vec<u8> {
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.extend((0..121).map(|k| (i + k) as u8));
        p
    };
    let blocked = Arc::new(AtomicBool::new(false));
    let sent_when_blocked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writer = stream.try_clone().expect("clone");
    let writer = {
        let blocked = Arc::clone(&blocked);
        let sent_when_blocked = Arc::clone(&sent_when_blocked);
        std::thread::spawn(move || {
            let mut i = 0;
            while i < PINGS {
                let end = (i + 500).min(PINGS);
                let batch: Vec<u8> = (i..end)
                    .flat_map(|k| client_frame(true, op::PING, &payload(k)))
                    .collect();
                let mut off = 0;
                while off < batch.len() {
                    match writer.write(&batch[off..]) {
                        Ok(n) => off += n,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            if !blocked.swap(true, Ordering::SeqCst) {
                                sent_when_blocked.store(i, Ordering::SeqCst);
                            }
                        }
                        Err(e) => panic!("write: {e}"),
                    }
                }
                i = end;
            }
        })
    };

    let got_blocked = wait_until(Duration::from_secs(30), || blocked.load(Ordering::SeqCst));
    assert!(
        got_blocked,
        "the client's writes never blocked: the server kept reading"
    );
    let sent = sent_when_blocked.load(Ordering::SeqCst);
    assert!(sent < PINGS, "all pings went through before blocking");
    // Let the server sit in the paused state for a moment, then look at it.
    std::thread::sleep(Duration::from_millis(500));
    base.assert_rss_within(16 * 1024, "the flood");
    echo_rtt(&mut other, "served during the flood");

    // Now read: every pong, in order, with its ping's payload.
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &stream);
    let mut frame = [0u8; 127];
    for i in 0..PINGS {
        reader
            .read_exact(&mut frame)
            .unwrap_or_else(|e| panic!("pong {i}: {e}"));
        assert_eq!(frame[..2], [0x8a, 125], "pong {i} header");
        if frame[2..] != payload(i)[..] {
            let got = u32::from_be_bytes([frame[2], frame[3], frame[4], frame[5]]);
            panic!("pong {i}: payload of ping {got}");
        }
    }
    writer.join().expect("writer");
    drop(reader);
    let mut stream = stream;
    echo_rtt(&mut stream, "after the flood");
    echo_rtt(&mut other, "after the flood");
}
