//! permessage-deflate (RFC 7692) over real sockets against the real binary: negotiation,
//! compressed echo (whole and fragmented), the size bound on inflation, and RSV1 rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::frames::{client_frame, client_frame_raw, expect_close, op, read_server_frame};
use common::http::{exchange, header, upgrade_request_with};
use common::process::rss_kib;
use common::ServerProcess;
use wsloop::protocol::deflate::{Deflater, Inflater};

/// Upgrades with `extensions` offered; returns the stream and the response head.
fn upgrade(server: &ServerProcess, extensions: &str) -> (TcpStream, String) {
    let offer = [("Sec-WebSocket-Extensions", extensions)];
    let (stream, head) = exchange(
        server.addr,
        b"",
        &upgrade_request_with("/", "127.0.0.1", &offer),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

/// The extensions the server accepted.
fn extensions_header(head: &str) -> Option<&str> {
    header(head, "sec-websocket-extensions")
}

/// A compressed client message: RSV1 on the first frame, split into `pieces` frames.
fn compressed_frames(opcode: u8, packed: &[u8], pieces: usize) -> Vec<u8> {
    let chunk = packed.len().div_ceil(pieces).max(1);
    let parts: Vec<&[u8]> = packed.chunks(chunk).collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let fin = if i + 1 == parts.len() { 0x80 } else { 0 };
        let first = if i == 0 { 0x40 | opcode } else { 0 };
        out.extend(client_frame_raw(fin | first, part));
    }
    out
}

fn text_of_size(n: usize) -> String {
    "wsloop compresses repeated text nicely. 你好 😀 "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

#[test]
fn negotiates_only_when_enabled_and_offered() {
    let off = ServerProcess::start(&[]);
    let (_s, head) = upgrade(&off, "permessage-deflate; client_max_window_bits");
    assert_eq!(
        extensions_header(&head),
        None,
        "declined when --deflate is off"
    );

    let on = ServerProcess::start(&["--deflate"]);
    let (_s, head) = upgrade(&on, "permessage-deflate; client_max_window_bits");
    assert_eq!(
        extensions_header(&head),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let (_s, head) = upgrade(
        &on,
        "x-unknown, permessage-deflate; server_max_window_bits=10",
    );
    let ext = extensions_header(&head).unwrap();
    assert!(ext.contains("server_max_window_bits=10"), "{ext}");
    // An invalid offer is declined, not an error.
    let (_s, head) = upgrade(&on, "permessage-deflate; server_max_window_bits=20");
    assert_eq!(extensions_header(&head), None);
}

#[test]
fn compressed_echo_whole_and_fragmented() {
    let server = ServerProcess::start(&["--deflate"]);
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    let mut deflater = Deflater::new(15, 6);
    let mut inflater = Inflater::new();
    for (size, pieces) in [(100, 1), (5000, 1), (70_000, 7), (300_000, 40)] {
        let text = text_of_size(size);
        let mut packed = Vec::new();
        deflater.compress(text.as_bytes(), &mut packed, true);
        stream
            .write_all(&compressed_frames(0x1, &packed, pieces))
            .unwrap();
        let (first, payload) = read_server_frame(&mut stream).unwrap();
        assert_eq!(first, 0x80 | 0x40 | 0x1, "FIN + RSV1 + text");
        assert!(payload.len() < text.len(), "the echo is compressed");
        let mut out = Vec::new();
        inflater.inflate(&payload, &mut out, 1 << 24, true).unwrap();
        assert_eq!(out, text.as_bytes(), "size {size}");
    }
    // Short messages go uncompressed (below --deflate-min-size), and uncompressed client
    // messages are fine on a deflate connection.
    stream
        .write_all(&client_frame(true, op::BINARY, b"tiny"))
        .unwrap();
    assert_eq!(
        read_server_frame(&mut stream).unwrap(),
        (0x82, b"tiny".to_vec())
    );
}

/// Large compressed messages (beyond the server's read buffer, compressed too) take the large
/// path both ways: read into a pooled buffer, inflated into another, the echo compressed and
/// queued by move; whole and fragmented, as text and binary.
#[test]
fn large_compressed_messages_echo_whole_and_fragmented() {
    let server = ServerProcess::start(&["--deflate"]);
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    let mut deflater = Deflater::new(15, 6);
    let mut inflater = Inflater::new();
    // Letters from a small generator: about 5 bits each once compressed, so a 4 MiB message
    // stays megabytes on the wire.
    let mut seed = 17u32;
    let letters: String = (0..4 << 20)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            char::from(b'a' + (seed >> 16) as u8 % 26)
        })
        .collect();
    let repeated = text_of_size(3 << 20);
    for (opcode, message, pieces) in [
        (0x1, letters.as_bytes(), 1),
        (0x2, letters.as_bytes(), 9),
        (0x1, repeated.as_bytes(), 3),
    ] {
        let mut packed = Vec::new();
        deflater.compress(message, &mut packed, true);
        stream
            .write_all(&compressed_frames(opcode, &packed, pieces))
            .unwrap();
        let (first, payload) = read_server_frame(&mut stream).unwrap();
        assert_eq!(first, 0x80 | 0x40 | opcode, "FIN + RSV1");
        let mut out = Vec::new();
        inflater.inflate(&payload, &mut out, 1 << 24, true).unwrap();
        assert!(out == message, "{} bytes in {pieces} frames", message.len());
    }
}

#[test]
fn context_takeover_when_enabled() {
    let server = ServerProcess::start(&["--deflate", "--deflate-context-takeover"]);
    let (mut stream, head) = upgrade(&server, "permessage-deflate; client_max_window_bits");
    assert_eq!(extensions_header(&head), Some("permessage-deflate"));
    let mut deflater = Deflater::new(15, 6);
    let mut inflater = Inflater::new();
    let text = text_of_size(2000);
    let mut sizes = Vec::new();
    for _ in 0..5 {
        let mut packed = Vec::new();
        deflater.compress(text.as_bytes(), &mut packed, false);
        stream
            .write_all(&compressed_frames(0x1, &packed, 1))
            .unwrap();
        let (_, payload) = read_server_frame(&mut stream).unwrap();
        sizes.push(payload.len());
        let mut out = Vec::new();
        inflater
            .inflate(&payload, &mut out, 1 << 24, false)
            .unwrap();
        assert_eq!(out, text.as_bytes());
    }
    assert!(
        sizes[4] < sizes[0] / 2,
        "later messages reuse the window: {sizes:?}"
    );
}

#[test]
fn inflation_is_bounded_by_the_message_limit() {
    let server = ServerProcess::start(&["--deflate", "--max-message", "1048576"]);
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    let bomb = vec![0u8; 32 << 20];
    let mut packed = Vec::new();
    Deflater::new(15, 9).compress(&bomb, &mut packed, true);
    assert!(packed.len() < 100_000, "{}", packed.len());
    stream
        .write_all(&compressed_frames(0x2, &packed, 1))
        .unwrap();
    assert_eq!(expect_close(&mut stream), Some(1009));
    let kb = rss_kib(server.pid());
    assert!(kb < 48 * 1024, "server RSS {kb} KiB after a 32 MiB bomb");
}

#[test]
fn rsv1_rules() {
    // RSV1 without negotiation: 1002.
    let server = ServerProcess::start(&["--deflate"]);
    let (mut plain, _) = upgrade(&server, "x-something-else");
    plain.write_all(&client_frame_raw(0xc1, b"x")).unwrap();
    assert_eq!(expect_close(&mut plain), Some(1002));
    // RSV1 on a continuation or a control frame: 1002 even when negotiated.
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    let mut bad = client_frame_raw(0x41, b"a");
    bad.extend(client_frame_raw(0xc0, b"b"));
    stream.write_all(&bad).unwrap();
    assert_eq!(expect_close(&mut stream), Some(1002));
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    stream.write_all(&client_frame_raw(0xc9, b"")).unwrap();
    assert_eq!(expect_close(&mut stream), Some(1002));
    // Data that is not deflate: 1007.
    let (mut stream, _) = upgrade(&server, "permessage-deflate");
    stream
        .write_all(&client_frame_raw(0xc2, &[0xff; 40]))
        .unwrap();
    assert_eq!(expect_close(&mut stream), Some(1007));
}
