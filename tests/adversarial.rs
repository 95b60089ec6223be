//! Adversarial clients over real sockets: connection churn, accept under EMFILE, tiny
//! fragments, ping floods and half-closed connections. Each test says in a comment which
//! missing protection would make it fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{
    client_frame, cpu_seconds, echo_rtt, expect_close, raw_upgraded, read_http_head,
    read_server_frame, read_to_close, rss_kib, stats, upgrade_request, ServerProcess,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries in `/proc/PID/fd`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Voluntary and involuntary context switches of all the process's threads: how often it
/// was scheduled, so also how often it woke up.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task") {
        let path = task.expect("task entry").path().join("status");
        let status = std::fs::read_to_string(path).expect("task status");
        total += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .map(|v| v.trim().parse::<u64>().expect("switch count"))
            .sum::<u64>();
    }
    total
}

/// `"open"` from `/stats` (the `/stats` request itself is counted the same way every time).
fn stats_open(server: &ServerProcess) -> u64 {
    stats(server.addr)["open"].as_u64().expect("open")
}

/// Polls `f` until it returns true or `wait` passes; returns its last answer.
fn wait_for(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh connection still upgrades and echoes: the abuse before it hurt no one else.
fn assert_still_serving(server: &ServerProcess) {
    let mut ws = raw_upgraded(server, "/");
    echo_rtt(&mut ws, "still alive");
}

/// One churn cycle: connect, upgrade, then either a close handshake (waiting for the
/// server's FIN, so the server closes TCP first) or, every 10th cycle, a plain TCP close.
fn churn_cycle(server: &ServerProcess, i: usize) {
    let mut stream = server.raw();
    stream
        .write_all(upgrade_request("/").as_bytes())
        .expect("send upgrade");
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "cycle {i}: {head}");
    if i % 10 == 9 {
        return; // Plain TCP close on drop.
    }
    stream
        .write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
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
    let mut base_fds = fd_count(pid);
    wait_for(Duration::from_secs(10), || {
        let now = fd_count(pid);
        let settled = now == base_fds;
        base_fds = now;
        settled
    });
    let base_open = stats_open(&server);
    let base_rss = rss_kib(pid);

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

    let fds_ok = wait_for(Duration::from_secs(15), || {
        fd_count(pid).abs_diff(base_fds) <= 2
    });
    assert!(
        fds_ok,
        "fd count {} after churn, baseline {base_fds}",
        fd_count(pid)
    );
    let open_ok = wait_for(Duration::from_secs(10), || stats_open(&server) == base_open);
    assert!(
        open_ok,
        "/stats open {} after churn, baseline {base_open}",
        stats_open(&server)
    );
    let rss = rss_kib(pid);
    assert!(
        rss < base_rss + 8 * 1024,
        "RSS grew from {base_rss} KiB to {rss} KiB over 20 000 cycles ({took:?})"
    );
    // Still serving.
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
        .write_all(&client_frame(true, 0x1, b"before my FIN"))
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
        .write_all(&client_frame(true, 0x2, &payload))
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
    let pid = server.pid();
    let base_open = stats_open(&server);
    // Baseline with one idle connection cycle done, so lazily created state exists.
    let mut warm = raw_upgraded(&server, "/");
    echo_rtt(&mut warm, "warm");
    drop(warm);
    assert!(wait_for(Duration::from_secs(5), || stats_open(&server) == base_open));
    let base_fds = fd_count(pid);

    for round in 0..50 {
        let mut stream = raw_upgraded(&server, "/");
        let frame = client_frame(true, 0x1, &[b'x'; 300]);
        let cut = match round % 3 {
            0 => 1,   // inside the 2-byte header
            1 => 5,   // inside the mask
            _ => 100, // inside the payload
        };
        if round % 2 == 1 {
            // A complete first fragment before the cut frame.
            stream
                .write_all(&client_frame(false, 0x1, b"first"))
                .expect("fragment");
        }
        stream.write_all(&frame[..cut]).expect("partial frame");
        stream.shutdown(Shutdown::Write).expect("half-close");
        // Whatever the server says (a close frame or nothing), it must end the connection.
        let started = Instant::now();
        let _ = read_to_close(&mut stream);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "round {round}: server kept a half-closed connection open"
        );
    }
    let fds_ok = wait_for(Duration::from_secs(10), || {
        fd_count(pid).abs_diff(base_fds) <= 2
    });
    assert!(
        fds_ok,
        "fd count {} after half-closes, baseline {base_fds}",
        fd_count(pid)
    );
    assert!(wait_for(Duration::from_secs(5), || stats_open(&server) == base_open));
    assert_still_serving(&server);
}

/// A client resets the connection (RST: `SO_LINGER` 0, then close) in the middle of a frame
/// or of a fragmented message: the server drops the connection and keeps no fd or slab
/// entry for it. Fails if a read error with a partial frame buffered were not cleaned up.
#[test]
fn reset_mid_frame_is_cleaned_up() {
    let server = ServerProcess::start(&[]);
    let pid = server.pid();
    let base_open = stats_open(&server);
    let mut warm = raw_upgraded(&server, "/");
    echo_rtt(&mut warm, "warm");
    drop(warm);
    assert!(wait_for(Duration::from_secs(5), || stats_open(&server) == base_open));
    let base_fds = fd_count(pid);

    for round in 0..50 {
        let mut stream = raw_upgraded(&server, "/");
        let frame = client_frame(true, 0x1, &[b'x'; 300]);
        let cut = [1, 5, 100][round % 3];
        if round % 2 == 1 {
            stream
                .write_all(&client_frame(false, 0x1, b"first"))
                .expect("fragment");
        }
        stream.write_all(&frame[..cut]).expect("partial frame");
        // Let the server read the partial frame before the reset arrives.
        std::thread::sleep(Duration::from_millis(5));
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(stream);
    }
    let fds_ok = wait_for(Duration::from_secs(10), || {
        fd_count(pid).abs_diff(base_fds) <= 2
    });
    assert!(
        fds_ok,
        "fd count {} after resets, baseline {base_fds}",
        fd_count(pid)
    );
    let open_ok = wait_for(Duration::from_secs(5), || stats_open(&server) == base_open);
    assert!(
        open_ok,
        "/stats open {} after resets, baseline {base_open}",
        stats_open(&server)
    );
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
            let opcode = if i == 0 { 0x1 } else { 0x0 };
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
    let pid = server.pid();
    let base_rss = rss_kib(pid);
    let (mut stream, writer) = send_tiny_fragments(&server, 100_000);
    assert_eq!(expect_close(&mut stream), Some(1009));
    writer.join().expect("writer");
    let rss = rss_kib(pid);
    assert!(
        rss < base_rss + 8 * 1024,
        "RSS grew from {base_rss} KiB to {rss} KiB"
    );
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
    let mut fresh = server.raw();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    fresh
        .write_all(upgrade_request("/").as_bytes())
        .expect("send upgrade");
    let head = read_http_head(&mut fresh);
    assert!(head.starts_with("HTTP/1.1 101"), "new client: {head:?}");
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
    let pid = server.pid();
    let mut other = raw_upgraded(&server, "/");
    echo_rtt(&mut other, "warm");
    let base_rss = rss_kib(pid);

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
                    .flat_map(|k| client_frame(true, 0x9, &payload(k)))
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

    let got_blocked = wait_for(Duration::from_secs(30), || blocked.load(Ordering::SeqCst));
    assert!(
        got_blocked,
        "the client's writes never blocked: the server kept reading"
    );
    let sent = sent_when_blocked.load(Ordering::SeqCst);
    assert!(sent < PINGS, "all pings went through before blocking");
    // Let the server sit in the paused state for a moment, then look at it.
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(pid);
    assert!(
        rss < base_rss + 16 * 1024,
        "RSS grew from {base_rss} KiB to {rss} KiB while flooded"
    );
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
