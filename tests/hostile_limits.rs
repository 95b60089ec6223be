#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Issue 19's limits under hostile clients, over loopback sockets against the real binary:
//! the one trusted forwarding header, and deflate streams ending with a BFINAL block under
//! context takeover. Each test starts its own server.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{client_frame_raw, read_http_head, read_server_frame, upgrade_request, ServerProcess};
use flate2::{Compress, Compression, FlushCompress, Status};

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

// ---------------------------------------------------------------------------------------------
// Item 8: a deflate stream that ends with a BFINAL block, under context takeover
// ---------------------------------------------------------------------------------------------

/// `text` compressed as a client that ends each message with a BFINAL block (`finish()`,
/// RFC 7692 §7.2.3.3) and keeps its LZ77 window: a fresh stream primed with `sent_before`.
fn finished_stream(sent_before: &[u8], text: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let window = &sent_before[sent_before.len().saturating_sub(1 << 15)..];
    if !window.is_empty() {
        compress.set_dictionary(window).unwrap();
    }
    let mut packed = Vec::with_capacity(text.len() + 64);
    let status = compress
        .compress_vec(text, &mut packed, FlushCompress::Finish)
        .unwrap();
    assert_eq!(status, Status::StreamEnd);
    packed
}

/// With `--deflate-context-takeover`, messages after one whose data ended with a BFINAL
/// block arrive whole (replies are sent uncompressed here, so the test reads them as they
/// are: `--deflate-min-size` above every message).
#[test]
fn bfinal_block_with_context_takeover_loses_no_later_message() {
    let server = ServerProcess::start(&[
        "--deflate",
        "--deflate-context-takeover",
        "--deflate-min-size",
        "1000000",
    ]);
    let (mut stream, status) = upgrade_with(
        &server,
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    );
    assert_eq!(status, 101);
    let messages = [
        "wsloop keeps the window: wsloop keeps the window",
        "wsloop keeps the window after BFINAL, and the next one too",
        "a third message, referring back: wsloop keeps the window",
    ];
    let mut sent = Vec::new();
    for text in messages {
        let packed = finished_stream(&sent, text.as_bytes());
        sent.extend_from_slice(text.as_bytes());
        // RSV1 (compressed) + FIN + text.
        stream.write_all(&client_frame_raw(0xc1, &packed)).unwrap();
        let (first, payload) = read_server_frame(&mut stream).expect("echo");
        assert_eq!(first, 0x81, "an uncompressed text echo");
        assert_eq!(String::from_utf8(payload).unwrap(), text);
    }
}
