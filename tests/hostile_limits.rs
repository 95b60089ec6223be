#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Issue 19's limits under hostile clients, over loopback sockets against the real binary:
//! the one trusted forwarding header. Each test starts its own server.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{read_http_head, upgrade_request, ServerProcess};

/// Opens a connection that asks to upgrade with `extra` header lines; returns it and the
/// response's status code (0 when the server closed without answering).
fn upgrade_with(server: &ServerProcess, extra: &[(&str, &str)]) -> (TcpStream, u16) {
    let mut stream = server.raw();
    let lines: String = extra
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = upgrade_request("/").replacen("\r\n\r\n", &format!("\r\n{lines}\r\n"), 1);
    stream.write_all(request.as_bytes()).expect("send upgrade");
    let head = read_http_head(&mut stream);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (stream, status)
}

// ---------------------------------------------------------------------------------------------
// Item 3: exactly one forwarding header is believed, the one the operator names
// ---------------------------------------------------------------------------------------------

/// Behind a proxy that appends `X-Forwarded-For` and passes `Forwarded` through (the test
/// sends from 127.0.0.1, configured as that proxy), a client-written `Forwarded: for=…` does
/// not change the address `--max-conns-per-ip` counts.
#[test]
fn a_client_written_forwarded_header_does_not_escape_the_per_ip_cap() {
    let server = ServerProcess::start(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--forwarded-header",
        "x-forwarded-for",
        "--max-conns-per-ip",
        "1",
    ]);
    let (_first, status) = upgrade_with(&server, &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!(status, 101);
    let spoofed = [
        ("Forwarded", "for=203.0.113.77"),
        ("X-Forwarded-For", "198.51.100.1"),
    ];
    let (_second, status) = upgrade_with(&server, &spoofed);
    assert_eq!(
        status, 503,
        "the client named its own address with Forwarded"
    );
    let (_third, status) = upgrade_with(&server, &[("X-Forwarded-For", "198.51.100.2")]);
    assert_eq!(status, 101, "the named header still identifies clients");
}

/// `--trusted-proxy` without `--forwarded-header` believes no forwarding header at all:
/// every connection from the proxy counts as the proxy.
#[test]
fn without_forwarded_header_no_forwarding_header_is_believed() {
    let server =
        ServerProcess::start(&["--trusted-proxy", "127.0.0.1/32", "--max-conns-per-ip", "1"]);
    let (_first, status) = upgrade_with(&server, &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!(status, 101);
    let (_second, status) = upgrade_with(&server, &[("Forwarded", "for=203.0.113.77")]);
    assert_eq!(
        status, 503,
        "Forwarded was believed without --forwarded-header"
    );
    let (_third, status) = upgrade_with(&server, &[("X-Forwarded-For", "198.51.100.2")]);
    assert_eq!(
        status, 503,
        "X-Forwarded-For was believed without --forwarded-header"
    );
}
