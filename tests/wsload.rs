#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The load generator against the real `wsloop` binary: short, small runs of each mode that
//! must see every echo intact and every connection come and go cleanly.

mod common;

use std::time::Duration;

use common::ServerProcess;
use wsloop::load::{
    run_connect, run_echo, run_fanout, run_hold, run_latency, ConnectOptions, EchoOptions,
    FanoutOptions, HoldOptions, LatencyOptions,
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
    let latency = run_latency(&LatencyOptions {
        url: server.ws_url("/"),
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        ..LatencyOptions::default()
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

    let fanout = run_fanout(&FanoutOptions {
        url: server.ws_url("/chat"),
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
