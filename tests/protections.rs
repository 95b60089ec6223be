#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The limits and protections of the real `wsloop` binary over loopback sockets: `/metrics`
//! (parsed strictly as the Prometheus text format), the Origin check, the memory budget, the
//! handshake rate, the per-address cap, message rates, the PROXY protocol, trusted forwarding
//! headers and the slow-consumer room policies. Each test starts its own server.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::frames::{
    client_close, client_frame, expect_close, header_only, numbered, op, read_server_frame, seq_of,
};
use common::http::{
    exchange, get, header, read_to_close, status, upgrade_request, upgrade_request_with,
};
use common::metrics::{sample, scrape, scrape_after, wait_metrics};
use common::process::rss_kib;
use common::server::free_port;
use common::ws::{echo_rtt, raw_upgraded};
use common::ServerProcess;

// ---------------------------------------------------------------------------------------------
// 1. /metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_parse_and_count() {
    let server = ServerProcess::start(&[]);
    let addr = server.addr;
    let m0 = scrape(addr);
    assert_eq!(sample(&m0, "wsloop_upgrades_total"), 0.0);
    assert_eq!(sample(&m0, "wsloop_messages_in_total"), 0.0);
    assert_eq!(sample(&m0, "wsloop_rejected_total{reason=\"origin\"}"), 0.0);
    assert!(m0.contains_key("wsloop_open_connections"));
    let open0 = sample(&m0, "wsloop_open_connections");

    let mut a = raw_upgraded(&server, "/");
    let mut b = raw_upgraded(&server, "/");
    for i in 0..3 {
        echo_rtt(&mut a, &format!("message {i}"));
    }
    echo_rtt(&mut b, "hello");
    // Open: the two clients and the scrape itself (earlier scrapes may still be closing).
    let m1 = wait_metrics(addr, Duration::from_secs(5), |m| {
        sample(m, "wsloop_open_connections") == open0 + 2.0
    });
    assert_eq!(sample(&m1, "wsloop_upgrades_total"), 2.0);
    assert_eq!(sample(&m1, "wsloop_messages_in_total"), 4.0);

    // A normal close from the client is counted by code.
    a.write_all(&client_close(1000, b"")).unwrap();
    assert_eq!(expect_close(&mut a), Some(1000));
    drop(a);
    // A cross-origin upgrade is refused and counted.
    let host = addr.to_string();
    let (s, head) = exchange(
        addr,
        b"",
        &upgrade_request_with("/", &host, &[("Origin", "http://evil.example")]),
    );
    assert_eq!(status(&head), 403, "{head}");
    drop(s);
    let m2 = wait_metrics(addr, Duration::from_secs(5), |m| {
        sample(m, "wsloop_open_connections") == open0 + 1.0
    });
    assert_eq!(
        sample(&m2, "wsloop_close_frames_received_total{code=\"1000\"}"),
        1.0
    );
    assert_eq!(sample(&m2, "wsloop_rejected_total{reason=\"origin\"}"), 1.0);
    assert_eq!(sample(&m2, "wsloop_upgrades_total"), 2.0);
    drop(b);
    wait_metrics(addr, Duration::from_secs(5), |m| {
        sample(m, "wsloop_open_connections") == open0
    });
}

#[test]
fn metrics_can_be_turned_off() {
    let server = ServerProcess::start(&["--no-metrics"]);
    let code = get(server.addr, "/metrics").status();
    assert_eq!(code, 404);
    // The server itself still works.
    let mut ws = raw_upgraded(&server, "/");
    echo_rtt(&mut ws, "still here");
}

#[test]
fn metrics_on_their_own_address() {
    let port = free_port();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = ServerProcess::start(&["--metrics-addr", &metrics_addr.to_string()]);
    let code = get(server.addr, "/metrics").status();
    assert_eq!(code, 404, "/metrics must not be served on the main port");
    let mut ws = raw_upgraded(&server, "/");
    echo_rtt(&mut ws, "counted");
    let m = scrape(metrics_addr);
    assert_eq!(sample(&m, "wsloop_upgrades_total"), 1.0);
    assert_eq!(sample(&m, "wsloop_messages_in_total"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 2. Origin
// ---------------------------------------------------------------------------------------------

#[test]
fn origin_check() {
    let server = ServerProcess::start(&[]);
    let addr = server.addr;
    let host = addr.to_string();
    let same = format!("http://{host}");
    let (_a, head) = exchange(
        addr,
        b"",
        &upgrade_request_with("/", &host, &[("Origin", &same)]),
    );
    assert_eq!(status(&head), 101, "same origin: {head}");
    let (_b, head) = exchange(
        addr,
        b"",
        &upgrade_request_with("/", &host, &[("Origin", "http://evil.example")]),
    );
    assert_eq!(status(&head), 403, "cross origin: {head}");
    let (_c, head) = exchange(addr, b"", &upgrade_request_with("/", &host, &[]));
    assert_eq!(status(&head), 101, "no Origin: {head}");

    for allow in ["http://evil.example", "*"] {
        let server = ServerProcess::start(&["--allow-origin", allow]);
        let host = server.addr.to_string();
        let (mut s, head) = exchange(
            server.addr,
            b"",
            &upgrade_request_with("/", &host, &[("Origin", "http://evil.example")]),
        );
        assert_eq!(status(&head), 101, "--allow-origin {allow}: {head}");
        echo_rtt(&mut s, "allowed");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Memory budget
// ---------------------------------------------------------------------------------------------

#[test]
fn memory_budget_sheds_and_bounds_rss() {
    const BUDGET: usize = 8 << 20;
    let server = ServerProcess::start(&[
        "--max-buffered",
        &BUDGET.to_string(),
        "--max-backpressure",
        "1048576",
    ]);
    let base = rss_kib(server.pid());
    // 20 clients each declare a 4 MiB binary frame, send 1 MiB of it and stop: 20 MiB of
    // partial messages against an 8 MiB budget.
    let announced = header_only(0x80 | op::BINARY, 4 << 20);
    let chunk = vec![b'x'; 1 << 20];
    let mut clients = Vec::new();
    let mut refused_503 = 0;
    for _ in 0..20 {
        let (mut s, head) = exchange(server.addr, b"", &upgrade_request("/"));
        match status(&head) {
            101 => {}
            503 => {
                assert!(retry_after_ok(&head), "503 without Retry-After: {head}");
                refused_503 += 1;
                continue;
            }
            _ => panic!("unexpected answer: {head}"),
        }
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let sent = s.write_all(&announced).and_then(|()| s.write_all(&chunk));
        if sent.is_ok() {
            clients.push(s);
        }
    }
    thread::sleep(Duration::from_millis(300));
    let peak = rss_kib(server.pid());
    let limit = base + (BUDGET as u64 >> 10) + 40 * 1024;
    assert!(
        peak < limit,
        "RSS {peak} KiB over baseline {base} KiB + budget + 40 MiB"
    );
    let mut shed_1013 = 0;
    for s in &mut clients {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if expect_close(s) == Some(1013) {
            shed_1013 += 1;
        }
    }
    assert!(
        shed_1013 + refused_503 > 0,
        "no connection shed with 1013 and no upgrade refused with 503"
    );
    let m = scrape(server.addr);
    let shed = sample(&m, "wsloop_shed_total");
    let rejected = sample(&m, "wsloop_rejected_total{reason=\"memory_budget\"}");
    assert!(shed + rejected > 0.0, "{m:?}");
    assert!(shed >= f64::from(shed_1013));
    assert!(
        sample(&m, "wsloop_buffered_bytes") <= BUDGET as f64,
        "still over budget: {m:?}"
    );
}

/// Whether a 503 head carries a `Retry-After` of whole seconds.
fn retry_after_ok(head: &str) -> bool {
    header(head, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok())
}

// ---------------------------------------------------------------------------------------------
// 4. Handshake rate
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_rate_limits_a_burst() {
    let server = ServerProcess::start(&["--max-handshake-rate", "50/50"]);
    let request = upgrade_request("/");
    let start = Instant::now();
    let (mut ok, mut busy) = (0u32, 0u32);
    let mut retry_values = HashSet::new();
    for _ in 0..1000 {
        let (s, head) = exchange(server.addr, b"", &request);
        match status(&head) {
            101 => ok += 1,
            503 => {
                busy += 1;
                let retry: u64 = header(&head, "retry-after")
                    .expect("Retry-After")
                    .parse()
                    .expect("whole seconds");
                assert!(retry >= 1);
                retry_values.insert(retry);
            }
            _ => panic!("unexpected answer: {head}"),
        }
        drop(s);
    }
    let secs = start.elapsed().as_secs_f64();
    // The burst of 50, then 50 per second while the loop ran.
    let most = 50.0 + 50.0 * secs + 5.0;
    assert!(ok >= 45, "only {ok} upgrades in {secs:.1} s");
    assert!(
        f64::from(ok) <= most,
        "{ok} upgrades in {secs:.1} s: the rate is not enforced"
    );
    assert!(busy >= 500, "{busy} refusals");
    assert!(
        retry_values.len() >= 3,
        "Retry-After not jittered: {retry_values:?}"
    );
    // Let the bucket refill: the scrape is a connection too.
    thread::sleep(Duration::from_millis(1200));
    let m = scrape(server.addr);
    assert_eq!(
        sample(&m, "wsloop_rejected_total{reason=\"handshake_rate\"}"),
        f64::from(busy)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Per-address cap
// ---------------------------------------------------------------------------------------------

#[test]
fn per_ip_cap() {
    let server = ServerProcess::start(&["--max-conns-per-ip", "3"]);
    let request = upgrade_request("/");
    let mut open: Vec<TcpStream> = (0..3).map(|_| raw_upgraded(&server, "/")).collect();
    let (_s, head) = exchange(server.addr, b"", &request);
    assert_eq!(status(&head), 503, "4th connection: {head}");
    assert!(retry_after_ok(&head), "{head}");
    drop(open.pop());
    let start = Instant::now();
    loop {
        let (mut s, head) = exchange(server.addr, b"", &request);
        if status(&head) == 101 {
            echo_rtt(&mut s, "after a slot freed");
            break;
        }
        assert_eq!(status(&head), 503, "{head}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the slot was never freed"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let m = scrape(server.addr);
    assert!(sample(&m, "wsloop_rejected_total{reason=\"per_ip\"}") >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// 6. Message rate (the rules, pause and close, are `conn::flow` unit tests; here: a paused
//    connection's socket is not read, and no one else waits)
// ---------------------------------------------------------------------------------------------

#[test]
fn message_rate_pauses_a_flooder_only() {
    let server = ServerProcess::start(&["--max-msg-rate", "100"]);
    let flooder = raw_upgraded(&server, "/");
    let mut reader = flooder.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut other = raw_upgraded(&server, "/");
    let start = Instant::now();
    let drain = thread::spawn(move || {
        for i in 0..500 {
            let (first, payload) = read_server_frame(&mut reader).expect("echo");
            assert_eq!(first, 0x80 | op::TEXT);
            assert_eq!(payload, format!("flood {i}").as_bytes());
        }
        start.elapsed()
    });
    let mut writer = flooder;
    let sender = thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..500 {
            all.extend(client_frame(
                true,
                op::TEXT,
                format!("flood {i}").as_bytes(),
            ));
        }
        writer.write_all(&all).unwrap();
        writer
    });
    let mut worst = Duration::ZERO;
    while !drain.is_finished() && start.elapsed() < Duration::from_secs(3) {
        worst = worst.max(echo_rtt(&mut other, "are you there"));
        thread::sleep(Duration::from_millis(50));
    }
    let took = drain.join().unwrap();
    let _flooder = sender.join().unwrap();
    assert!(
        took >= Duration::from_secs(3),
        "500 messages echoed in {took:?}: not throttled to 100/s"
    );
    assert!(
        worst < Duration::from_millis(200),
        "another client's RTT reached {worst:?}"
    );
    let m = scrape(server.addr);
    assert!(sample(&m, "wsloop_rate_limited_total") > 0.0);
}

// ---------------------------------------------------------------------------------------------
// 7. PROXY protocol
// ---------------------------------------------------------------------------------------------

fn proxy_v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 51000 9001\r\n").into_bytes()
}

/// A v2 header, PROXY command, TCP over IPv4, from `src`.
fn proxy_v2(src: [u8; 4]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11]);
    out.extend_from_slice(&12u16.to_be_bytes());
    out.extend_from_slice(&src);
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&51000u16.to_be_bytes());
    out.extend_from_slice(&9001u16.to_be_bytes());
    out
}

/// Sends `prefix` + an upgrade; asserts the server closed without upgrading.
fn assert_refused(addr: SocketAddr, prefix: &[u8], what: &str) {
    let (mut s, head) = exchange(addr, prefix, &upgrade_request("/"));
    let rest = read_to_close(&mut s);
    assert!(
        head.is_empty() && rest.is_empty(),
        "{what}: expected the connection closed unanswered, got {head:?}"
    );
}

#[test]
fn proxy_protocol_required() {
    let server = ServerProcess::start(&["--proxy-protocol", "required", "--max-conns-per-ip", "1"]);
    let addr = server.addr;
    let request = upgrade_request("/");
    let (mut a, head) = exchange(addr, &proxy_v1("203.0.113.7"), &request);
    assert_eq!(status(&head), 101, "v1: {head}");
    echo_rtt(&mut a, "via v1");
    // The cap sees the PROXY address, not 127.0.0.1.
    let (_b, head) = exchange(addr, &proxy_v1("203.0.113.7"), &request);
    assert_eq!(status(&head), 503, "same PROXY address twice: {head}");
    let (_c, head) = exchange(addr, &proxy_v1("203.0.113.8"), &request);
    assert_eq!(status(&head), 101, "another PROXY address: {head}");
    let (mut d, head) = exchange(addr, &proxy_v2([203, 0, 113, 9]), &request);
    assert_eq!(status(&head), 101, "v2: {head}");
    echo_rtt(&mut d, "via v2");
    let (_e, head) = exchange(addr, &proxy_v2([203, 0, 113, 9]), &request);
    assert_eq!(status(&head), 503, "same v2 address twice: {head}");

    assert_refused(
        addr,
        b"PROXY TCP4 203.0.113.300 127.0.0.1 51000 9001\r\n",
        "bad v1 address",
    );
    assert_refused(addr, b"PROXY  TCP4 oops\r\n", "malformed v1");
    let mut bad_v2 = proxy_v2([203, 0, 113, 10]);
    bad_v2[12] = 0x31; // version 3
    assert_refused(addr, &bad_v2, "v2 with a bad version");
    assert_refused(addr, b"", "no PROXY header");

    let m = scrape_after(addr, &proxy_v1("203.0.113.99"));
    assert_eq!(
        sample(&m, "wsloop_rejected_total{reason=\"proxy_protocol\"}"),
        4.0
    );
}

#[test]
fn proxy_protocol_from_an_untrusted_peer() {
    let server = ServerProcess::start(&[
        "--proxy-protocol",
        "required",
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    assert_refused(
        server.addr,
        &proxy_v1("203.0.113.7"),
        "PROXY from an untrusted peer",
    );
    assert_refused(
        server.addr,
        &proxy_v2([203, 0, 113, 7]),
        "v2 PROXY from an untrusted peer",
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Trusted X-Forwarded-For (believed from a trusted proxy: `hostile_limits`'s
//    `a_client_written_forwarded_header_does_not_escape_the_per_ip_cap`)
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarded_for_ignored_without_trusted_proxy() {
    let server = ServerProcess::start(&["--max-conns-per-ip", "1"]);
    let xff = |ip: &str| upgrade_request_with("/", "127.0.0.1", &[("X-Forwarded-For", ip)]);
    let (_a, head) = exchange(server.addr, b"", &xff("198.51.100.1"));
    assert_eq!(status(&head), 101, "{head}");
    let (_b, head) = exchange(server.addr, b"", &xff("198.51.100.2"));
    assert_eq!(
        status(&head),
        503,
        "a spoofed X-Forwarded-For escaped the cap: {head}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Room policies for a subscriber that does not read
// ---------------------------------------------------------------------------------------------

const PUBLISHED: usize = 300;

/// A `/chat` subscriber that does not read while another member publishes 300 × 64 KiB
/// numbered messages; then reads everything that reaches it. Returns the sequence numbers it
/// got and whether a close frame came, plus the final metrics.
fn sleeper_receives(policy: &str) -> (Vec<usize>, bool, HashMap<String, f64>) {
    let server = ServerProcess::start(&["--slow-consumer", policy]);
    let mut sleeper = raw_upgraded(&server, "/chat");
    let publisher = raw_upgraded(&server, "/chat");
    let mut own = publisher.try_clone().unwrap();
    own.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // The publisher is a member too: drain its copies until the last one (or until 2 s of
    // silence, should its own copy of the last one have been dropped).
    let drain = thread::spawn(move || {
        while let Some((_, payload)) = read_server_frame(&mut own) {
            if seq_of(&payload) == PUBLISHED - 1 {
                break;
            }
        }
    });
    let mut publisher = publisher;
    for i in 0..PUBLISHED {
        publisher
            .write_all(&client_frame(true, op::TEXT, &numbered(i, 64 * 1024)))
            .unwrap();
    }
    drain.join().unwrap();
    let mut seqs = Vec::new();
    let mut closed = false;
    sleeper
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    while let Some((first, payload)) = read_server_frame(&mut sleeper) {
        if first & 0x0f == op::CLOSE {
            closed = true;
            break;
        }
        assert_eq!(first, 0x80 | op::TEXT);
        assert_eq!(payload.len(), 64 * 1024);
        seqs.push(seq_of(&payload));
    }
    let m = scrape(server.addr);
    (seqs, closed, m)
}

fn assert_dropped_some(policy: &str, seqs: &[usize], closed: bool, m: &HashMap<String, f64>) {
    assert!(!closed, "{policy}: the sleeper was closed");
    assert!(!seqs.is_empty(), "{policy}: nothing arrived");
    assert!(
        seqs.len() < PUBLISHED,
        "{policy}: all {PUBLISHED} arrived, nothing dropped"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{policy}: out of order: {seqs:?}"
    );
    assert!(
        sample(m, "wsloop_room_dropped_messages_total{room=\"chat\"}") > 0.0,
        "{policy}: {m:?}"
    );
}

#[test]
fn room_policy_drop_newest() {
    let (seqs, closed, m) = sleeper_receives("drop-newest");
    assert_dropped_some("drop-newest", &seqs, closed, &m);
    // The first messages arrive, in order, with none missing before the first drop.
    assert_eq!(seqs[0], 0, "{seqs:?}");
    assert!(seqs.len() >= 2 && seqs[1] == 1, "{seqs:?}");
}

#[test]
fn room_policy_latest_only() {
    let (seqs, closed, m) = sleeper_receives("latest-only");
    assert_dropped_some("latest-only", &seqs, closed, &m);
    assert_eq!(seqs.last(), Some(&(PUBLISHED - 1)), "{seqs:?}");
}

#[test]
fn room_policy_drop_oldest() {
    let (seqs, closed, m) = sleeper_receives("drop-oldest");
    assert_dropped_some("drop-oldest", &seqs, closed, &m);
    assert_eq!(seqs.last(), Some(&(PUBLISHED - 1)), "{seqs:?}");
}
