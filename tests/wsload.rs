#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The load generator against the real `wsloop` binary: short, small runs of each mode that
//! must see every echo intact and every connection come and go cleanly.

mod common;

use std::time::Duration;

use common::ServerProcess;
use wsload::{
    run_connect, run_echo, run_fanout, run_hold, run_latency, ConnectOptions, EchoOptions,
    FanoutOptions, HoldOptions, Payload,
};

#[test]
fn echo_verifies_every_message() {
    let server = ServerProcess::start(&[]);
    for (binary, size) in [(false, 32), (true, 70_000)] {
        let report = run_echo(&EchoOptions {
            url: server.ws_url("/"),
            conns: 4,
            inflight: 4,
            size,
            binary,
            duration: Duration::from_millis(700),
            warmup: Duration::from_millis(100),
            server_pid: Some(server.pid()),
            ..EchoOptions::default()
        })
        .expect("run_echo");
        eprint!("{}", report.table());
        assert_eq!(report.mismatches, 0, "{}", report.to_json());
        assert_eq!(report.errors, 0, "{}", report.to_json());
        assert_eq!(report.conns_open, 4);
        assert!(report.msgs > 0, "{}", report.to_json());
        assert!(report.latency.p50_us > 0.0);
        assert!(report.server_rss_kib.is_some());
        assert!(report.to_json().starts_with("{\"mode\":\"echo\""));
    }
}

#[test]
fn latency_hold_connect_and_fanout_run_clean() {
    let server = ServerProcess::start(&[]);
    let latency = run_latency(&EchoOptions {
        url: server.ws_url("/"),
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        ..EchoOptions::default()
    })
    .unwrap();
    assert!(latency.ok(), "{}", latency.to_json());

    let hold = run_hold(&HoldOptions {
        url: server.ws_url("/"),
        conns: 50,
        duration: Duration::from_millis(300),
        server_pid: Some(server.pid()),
        ping_every: Duration::from_millis(100),
        ..HoldOptions::default()
    })
    .unwrap();
    assert!(hold.ok(), "{}", hold.to_json());
    assert!(hold.pongs >= 50, "{}", hold.to_json());
    assert!(hold.server_rss_per_conn_bytes.is_some());

    let connect = run_connect(&ConnectOptions {
        url: server.ws_url("/"),
        duration: Duration::from_millis(300),
        concurrency: 4,
        server_pid: None,
    })
    .unwrap();
    assert!(connect.ok(), "{}", connect.to_json());
    // Slots are reused as lifecycles end: each of the 4 must complete at least twice. A
    // lifecycle takes about a millisecond on loopback; 150 ms each leaves a wide margin.
    assert!(connect.completed >= 8, "{}", connect.to_json());

    let fanout = run_fanout(&FanoutOptions {
        urls: vec![server.ws_url("/chat")],
        subscribers: 10,
        rate: 500.0,
        size: 40,
        duration: Duration::from_millis(300),
        server_pid: None,
    })
    .unwrap();
    assert!(fanout.ok(), "{}", fanout.to_json());
    assert_eq!(
        fanout.delivered,
        fanout.published * 10,
        "{}",
        fanout.to_json()
    );
}

#[test]
fn refuses_non_loopback_targets() {
    let err = run_echo(&EchoOptions {
        url: "ws://192.0.2.1:9001/".into(),
        ..EchoOptions::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// `wsload echo --deflate` against `wsloop --deflate`: every echo inflated and verified, and
/// the bytes on the wire show that both sides really compressed.
#[test]
fn echo_with_deflate_compresses_and_verifies() {
    for (args, answer, most) in [
        (
            &["--deflate"][..],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            0.6,
        ),
        (
            &["--deflate", "--deflate-context-takeover"][..],
            "permessage-deflate",
            0.6,
        ),
        // A 1 KiB window asked of the client too: it must compress within it.
        (
            &["--deflate", "--deflate-window-bits", "10"][..],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=10",
            0.8,
        ),
    ] {
        let server = ServerProcess::start(args);
        for size in [1024, 70_000] {
            let report = run_echo(&EchoOptions {
                url: server.ws_url("/"),
                conns: 4,
                inflight: 4,
                size,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
                server_pid: Some(server.pid()),
                deflate: true,
                payload: Payload::Text,
                ..EchoOptions::default()
            })
            .expect("run_echo");
            eprint!("{}", report.table());
            let json = report.to_json();
            assert!(report.ok(), "{json}");
            assert_eq!(report.deflate_conns, 4, "{json}");
            assert_eq!(report.deflate_answer.as_deref(), Some(answer), "{json}");
            let recv = report.wire_ratio_recv.expect("ratio");
            let sent = report.wire_ratio_sent.expect("ratio");
            assert!(recv < most, "the server compressed its echoes: {json}");
            assert!(sent < most, "the client compressed its messages: {json}");
            assert!(json.contains("\"wire_ratio_recv\":"), "{json}");
        }
    }
}

/// Declined offers and plain text: the same client, uncompressed, still verified.
/// A short unwarmed run of `size`-byte text messages offering permessage-deflate.
fn deflate_text(server: &ServerProcess, size: usize) -> EchoOptions {
    EchoOptions {
        url: server.ws_url("/"),
        size,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        deflate: true,
        payload: Payload::Text,
        ..EchoOptions::default()
    }
}

#[test]
fn deflate_declined_and_latency_with_deflate() {
    let plain = ServerProcess::start(&[]);
    let report = run_echo(&EchoOptions {
        conns: 2,
        inflight: 2,
        ..deflate_text(&plain, 2000)
    })
    .unwrap();
    assert!(report.ok(), "{}", report.to_json());
    assert_eq!(report.deflate_conns, 0);
    assert!(report.wire_ratio_recv.unwrap() > 1.0, "headers only add");

    let server = ServerProcess::start(&["--deflate"]);
    let latency = run_latency(&deflate_text(&server, 4096)).unwrap();
    assert!(latency.ok(), "{}", latency.to_json());
    assert!(
        latency.wire_ratio_recv.unwrap() < 0.6,
        "{}",
        latency.to_json()
    );
}

/// `hold --deflate`: each connection sends one message, gets it back intact, then idles.
#[test]
fn hold_with_deflate_echoes_one_message_each() {
    let server = ServerProcess::start(&["--deflate", "--deflate-context-takeover"]);
    let hold = run_hold(&HoldOptions {
        url: server.ws_url("/"),
        conns: 40,
        duration: Duration::from_millis(200),
        server_pid: Some(server.pid()),
        ping_every: Duration::from_millis(100),
        deflate: true,
        size: 100_000,
        ..HoldOptions::default()
    })
    .unwrap();
    eprint!("{}", hold.table());
    assert!(hold.ok(), "{}", hold.to_json());
    assert_eq!(hold.deflate_conns, 40);
    assert_eq!((hold.messages_sent, hold.echoes_ok), (40, 40));
    assert!(hold.server_rss_message_per_conn_bytes.is_some());
}
