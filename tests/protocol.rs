//! Core RFC 6455 behaviour over real sockets against the real `wsloop` binary: the opening
//! handshake, echo, the size-limit flags, the close handshake, isolation between connections,
//! and plain HTTP on the same port.
//!
//! Each connection rule (every protocol error's close code, fragments, UTF-8, size limits
//! from the header, close codes, pings) is tested once, on a virtual clock, beside the code
//! in `crates/proto/src/conn/`; here one test shows each piece of wiring over real sockets:
//! reads cut anywhere reach the connection, a protocol error reaches the peer as one close
//! frame with its code and then FIN, the close handshake ends with the server's FIN, the
//! limit flags reach the connection.
//!
//! Happy paths use `tungstenite`; malformed input is written as raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufReader, Write};
use std::time::Duration;

use common::frames::{
    client_close, client_frame, client_frame_raw, close_code, header_only, op, server_frames,
};
use common::http::{
    header, http_once, read_http_head, read_response, read_until_eof, status, upgrade_request,
    Response,
};
use common::ws::{raw_upgraded, ws_connect, ws_next, ws_roundtrip};
use common::ServerProcess;
use tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Starts a server whose close timeout (30 s) is longer than any read timeout here (10 s), so
/// every "the server closed TCP" assertion can only pass if the server sent FIN on purpose,
/// not because it gave up waiting.
fn start(args: &[&str]) -> ServerProcess {
    let mut all = vec!["--close-timeout", "30"];
    all.extend_from_slice(args);
    ServerProcess::start(&all)
}

/// A `tungstenite` client on `/` whose reads wait 10 s at most.
fn ws(server: &ServerProcess) -> common::ws::Client {
    ws_connect(server.addr, "/", Duration::from_secs(10))
}

/// Reads one frame from a raw stream, panicking if none arrives.
fn next_frame(stream: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    common::frames::read_server_frame(stream).expect("a server frame")
}

/// After a protocol error: the server must send exactly one close frame carrying `code`,
/// nothing else, and then close TCP (FIN). Returns the close payload.
fn expect_single_close_then_eof(stream: &mut std::net::TcpStream, code: u16) -> Vec<u8> {
    let (bytes, end) = read_until_eof(stream);
    assert_eq!(
        end,
        Ok(()),
        "server did not close TCP cleanly after the close frame"
    );
    let frames = server_frames(&bytes);
    assert_eq!(
        frames.len(),
        1,
        "expected exactly one frame (a close), got {frames:?}"
    );
    let (first, payload) = &frames[0];
    assert_eq!(*first, 0x80 | op::CLOSE, "expected a FIN close frame");
    assert!(
        payload.len() >= 2,
        "close frame without a code: {payload:?}"
    );
    assert_eq!(close_code(payload), code);
    payload.clone()
}

/// Upgrades a raw connection, writes `bytes`, and expects the server to fail the connection
/// with exactly one close frame carrying `code`, then FIN.
fn expect_failure(server: &ServerProcess, bytes: &[u8], code: u16) {
    let mut stream = raw_upgraded(server, "/");
    stream.write_all(bytes).unwrap();
    expect_single_close_then_eof(&mut stream, code);
}

/// A valid upgrade request with `Host`, `Upgrade`, `Connection`, key and version replaced by
/// the given header lines (each ending in CRLF).
fn request_with(method: &str, headers: &str) -> String {
    format!("{method} / HTTP/1.1\r\n{headers}\r\n")
}

const HOST: &str = "Host: 127.0.0.1\r\n";
const UPGRADE: &str = "Upgrade: websocket\r\n";
const CONNECTION: &str = "Connection: Upgrade\r\n";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";

/// Expects an HTTP error `want` for `request`, followed by the server closing the connection.
fn expect_http_error(server: &ServerProcess, request: &str, want: u16) -> String {
    let response = http_once(server.addr, request.as_bytes());
    assert_eq!(
        response.status(),
        want,
        "request {request:?} got {response:?}"
    );
    assert_eq!(response.end, Ok(()), "connection not closed after {want}");
    assert_eq!(response.header("connection"), Some("close"));
    response.head
}

/// The demo page's folder.
fn demo_dir() -> String {
    format!("{}/html", env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Opening handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_accept_key_matches_rfc_example() {
    let server = start(&[]);
    let mut stream = server.raw();
    stream
        .write_all(upgrade_request("/chat").as_bytes())
        .unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(header(&head, "upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
    assert!(header(&head, "connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
}

#[test]
fn handshake_sent_one_byte_at_a_time() {
    let server = start(&[]);
    let mut stream = server.raw();
    for byte in upgrade_request("/").as_bytes() {
        stream.write_all(&[*byte]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // A frame split byte by byte too.
    for byte in client_frame(true, op::TEXT, b"slow") {
        stream.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(next_frame(&mut stream), (0x81, b"slow".to_vec()));
}

#[test]
fn handshake_header_tokens_are_case_insensitive_lists() {
    let server = start(&[]);
    let variants = [
        format!("{HOST}{UPGRADE}Connection: keep-alive, Upgrade\r\n{KEY}{VERSION}"),
        format!("{HOST}upgrade: WebSocket\r\nconnection: upgrade\r\n{KEY}{VERSION}"),
    ];
    for headers in variants {
        let mut stream = server.raw();
        stream
            .write_all(request_with("GET", &headers).as_bytes())
            .unwrap();
        let head = read_http_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{headers:?} got {head}");
        stream
            .write_all(&client_frame(true, op::TEXT, b"ok"))
            .unwrap();
        assert_eq!(next_frame(&mut stream), (0x81, b"ok".to_vec()));
    }
}

/// The `Sec-WebSocket-Protocol` of the 101 that `server` answers an upgrade offering `offers`
/// with (`None`: no such header), after checking the connection echoes.
fn selected_protocol(server: &ServerProcess, offers: &str) -> Option<String> {
    let offer = format!("Sec-WebSocket-Protocol: {offers}\r\n");
    let headers = format!("{HOST}{UPGRADE}{CONNECTION}{KEY}{VERSION}{offer}");
    let mut stream = server.raw();
    stream
        .write_all(request_with("GET", &headers).as_bytes())
        .unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{offers:?} got {head}");
    stream
        .write_all(&client_frame(true, op::TEXT, b"ok"))
        .unwrap();
    assert_eq!(next_frame(&mut stream), (0x81, b"ok".to_vec()));
    header(&head, "sec-websocket-protocol").map(str::to_owned)
}

/// `--protocol` (repeatable): the first of the client's offers that the server lists is
/// selected; with none listed (or no `--protocol`), the answer names none (RFC 6455 §4.2.2).
#[test]
fn protocol_flag_selects_the_first_listed_offer() {
    let server = start(&["--protocol", "chat", "--protocol", "y"]);
    let cases = [
        ("x, chat", Some("chat")),
        ("y, chat", Some("y")),
        ("chat, y", Some("chat")),
        ("x", None),
        ("Chat", None),
    ];
    for (offers, want) in cases {
        assert_eq!(
            selected_protocol(&server, offers).as_deref(),
            want,
            "{offers}"
        );
    }
    let plain = start(&[]);
    assert_eq!(selected_protocol(&plain, "x, chat"), None);
}

#[test]
fn handshake_bad_requests_get_400_and_close() {
    let server = start(&[]);
    let cases = [
        ("missing Host", "GET", format!("{UPGRADE}{CONNECTION}{KEY}{VERSION}")),
        (
            "Connection without upgrade",
            "GET",
            format!("{HOST}{UPGRADE}Connection: keep-alive\r\n{KEY}{VERSION}"),
        ),
        (
            "no Connection",
            "GET",
            format!("{HOST}{UPGRADE}{KEY}{VERSION}"),
        ),
        (
            "key of 10 bytes",
            "GET",
            format!("{HOST}{UPGRADE}{CONNECTION}Sec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n{VERSION}"),
        ),
        (
            "key of 17 bytes",
            "GET",
            format!(
                "{HOST}{UPGRADE}{CONNECTION}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=\r\n{VERSION}"
            ),
        ),
        (
            "key not base64",
            "GET",
            format!("{HOST}{UPGRADE}{CONNECTION}Sec-WebSocket-Key: !!!!\r\n{VERSION}"),
        ),
        (
            "missing key",
            "GET",
            format!("{HOST}{UPGRADE}{CONNECTION}{VERSION}"),
        ),
        (
            "HTTP/1.0",
            "GET",
            format!("{HOST}{UPGRADE}{CONNECTION}{KEY}{VERSION}"),
        ),
        (
            "POST",
            "POST",
            format!("{HOST}{UPGRADE}{CONNECTION}{KEY}{VERSION}"),
        ),
    ];
    for (what, method, headers) in cases {
        let mut request = request_with(method, &headers);
        if what == "HTTP/1.0" {
            request = request.replacen("HTTP/1.1", "HTTP/1.0", 1);
        }
        let head = expect_http_error(&server, &request, 400);
        assert!(
            header(&head, "sec-websocket-accept").is_none(),
            "{what}: {head}"
        );
    }
}

#[test]
fn handshake_wrong_version_gets_426_naming_13() {
    let server = start(&[]);
    let request = request_with(
        "GET",
        &format!("{HOST}{UPGRADE}{CONNECTION}{KEY}Sec-WebSocket-Version: 8\r\n"),
    );
    let head = expect_http_error(&server, &request, 426);
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"));
}

/// An upgrade request padded with an extra header to exactly `total` bytes.
fn padded_request(total: usize) -> String {
    let base = request_with(
        "GET",
        &format!("{HOST}{UPGRADE}{CONNECTION}{KEY}{VERSION}X-Pad: \r\n"),
    );
    let pad = total - base.len();
    request_with(
        "GET",
        &format!(
            "{HOST}{UPGRADE}{CONNECTION}{KEY}{VERSION}X-Pad: {}\r\n",
            "a".repeat(pad)
        ),
    )
}

#[test]
fn handshake_head_over_default_limit_gets_431() {
    let server = start(&[]);
    // Exactly 8 KiB still upgrades, even with a frame pipelined behind it in the same write
    // (so more than 8 KiB arrive at once): the limit applies to the head alone.
    let mut stream = server.raw();
    let mut bytes = padded_request(8 * 1024).into_bytes();
    bytes.extend(client_frame(true, op::TEXT, b"behind the head"));
    stream.write_all(&bytes).unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(next_frame(&mut stream), (0x81, b"behind the head".to_vec()));
    // One byte over 8 KiB (complete head), and far over (no end in sight), are refused.
    expect_http_error(&server, &padded_request(8 * 1024 + 1), 431);
    let endless = format!("GET / HTTP/1.1\r\n{HOST}X-Pad: {}", "a".repeat(20_000));
    expect_http_error(&server, &endless, 431);
}

#[test]
fn handshake_max_head_flag_is_honoured() {
    let default = start(&[]);
    let small = start(&["--max-head", "1024"]);
    let request = padded_request(2048);
    let mut stream = default.raw();
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    expect_http_error(&small, &request, 431);
}

// ---------------------------------------------------------------------------------------------
// Echo (tungstenite)
// ---------------------------------------------------------------------------------------------

#[test]
fn echo_text_binary_and_empty() {
    let server = start(&[]);
    let mut ws = ws(&server);
    for text in ["hello", "你好，世界", "emoji 🎉🦀👩‍👩‍👧", ""] {
        ws_roundtrip(&mut ws, Message::Text(text.to_owned()));
    }
    ws_roundtrip(&mut ws, Message::Binary(vec![0, 1, 2, 0xff, 0xfe, 0x80]));
    ws_roundtrip(&mut ws, Message::Binary(Vec::new()));
    // Types are preserved: binary that happens to be UTF-8 stays binary.
    ws.send(Message::Binary(b"abc".to_vec())).unwrap();
    assert!(matches!(ws_next(&mut ws), Message::Binary(b) if b == b"abc"));
    ws.close(None).unwrap();
}

#[test]
fn echo_large_messages() {
    let server = start(&[]);
    let mut ws = ws(&server);
    // Largest message under the default 16 MiB limit, with a pattern that catches reordering.
    let big: Vec<u8> = (0..(16usize << 20) - 1)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    ws.send(Message::Binary(big.clone())).unwrap();
    match ws_next(&mut ws) {
        Message::Binary(back) => {
            assert_eq!(back.len(), big.len());
            assert!(back == big, "16 MiB - 1 echo corrupted");
        }
        other => panic!("expected binary, got {:?}", other.len()),
    }
    let text: String = "0123456789abcdé€🦀".chars().cycle().take(1 << 20).collect();
    ws_roundtrip(&mut ws, Message::Text(text));
}

#[test]
fn echo_many_pipelined_messages_in_order() {
    let server = start(&[]);
    let mut ws = ws(&server);
    for i in 0..1000 {
        ws.write(Message::Text(format!("message {i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..1000 {
        match ws_next(&mut ws) {
            Message::Text(t) => assert_eq!(t, format!("message {i}")),
            other => panic!("expected text {i}, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Size limits: the flags reach the connection (the rules: `conn::inbound` unit tests)
// ---------------------------------------------------------------------------------------------

#[test]
fn oversized_message_is_1009_from_the_header() {
    let server = start(&["--max-message", "1000"]);
    // At the limit: echoed.
    let mut stream = raw_upgraded(&server, "/");
    stream
        .write_all(&client_frame(true, op::BINARY, &[5u8; 1000]))
        .unwrap();
    assert_eq!(next_frame(&mut stream), (0x82, vec![5u8; 1000]));
    drop(stream);
    // One over: only the header is sent, the close must still come.
    expect_failure(&server, &header_only(0x82, 1001), 1009);
    expect_failure(&server, &header_only(0x81, 1 << 40), 1009);

    // The default limit is 16 MiB.
    let default = start(&[]);
    expect_failure(&default, &header_only(0x82, (16 << 20) + 1), 1009);
}

/// `--max-frame` below `--max-message`: a frame over it is refused from its header alone even
/// though the message limit would allow it, and fragments at the frame limit are fine.
#[test]
fn frame_over_max_frame_is_1009_from_the_header() {
    let server = start(&["--max-message", "100000", "--max-frame", "1000"]);
    let mut stream = raw_upgraded(&server, "/");
    let mut bytes = client_frame(false, op::BINARY, &[1u8; 1000]);
    bytes.extend(client_frame(true, op::CONT, &[2u8; 1000]));
    stream.write_all(&bytes).unwrap();
    let (first, payload) = next_frame(&mut stream);
    assert_eq!((first, payload.len()), (0x82, 2000));
    drop(stream);
    expect_failure(&server, &header_only(0x82, 1001), 1009);
    let mut bytes = client_frame(false, op::TEXT, b"start");
    bytes.extend(header_only(op::CONT | 0x80, 1001));
    expect_failure(&server, &bytes, 1009);
}

/// A close the server starts for a protocol error says why in a short reason (RFC 6455 §7.1.7
/// lets it; at most 123 bytes, so the frame stays a valid control frame, §5.5), and the code
/// and reason arrive as they were written.
#[test]
fn protocol_error_closes_carry_a_short_reason() {
    let server = start(&["--max-message", "1000"]);
    let mut over_in_fragments = client_frame(false, op::TEXT, &[b'a'; 600]);
    over_in_fragments.extend(header_only(op::CONT | 0x80, 401));
    let cases = [
        (
            client_frame(true, op::TEXT, b"abc\xff"),
            1007,
            "invalid UTF-8",
        ),
        (header_only(0x82, 1001), 1009, "frame over the size limit"),
        (over_in_fragments, 1009, "message over the size limit"),
        (client_frame_raw(0xC1, b"hi"), 1002, "reserved bits set"),
        (b"\x81\x05hello".to_vec(), 1002, "unmasked client frame"),
    ];
    for (bytes, code, reason) in cases {
        let mut stream = raw_upgraded(&server, "/");
        stream.write_all(&bytes).unwrap();
        let payload = expect_single_close_then_eof(&mut stream, code);
        assert_eq!(std::str::from_utf8(&payload[2..]), Ok(reason), "{code}");
        assert!(payload.len() - 2 <= 123, "{reason}");
    }
}

// ---------------------------------------------------------------------------------------------
// Closing handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn client_close_is_echoed_then_tcp_closes() {
    let server = start(&[]);
    let mut stream = raw_upgraded(&server, "/");
    stream.write_all(&client_close(1000, b"bye")).unwrap();
    let (bytes, end) = read_until_eof(&mut stream);
    assert_eq!(
        end,
        Ok(()),
        "server must close TCP after the close handshake"
    );
    let frames = server_frames(&bytes);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, 0x88);
    assert!(frames[0].1.len() >= 2);
    assert_eq!(close_code(&frames[0].1), 1000);
    assert!(std::str::from_utf8(&frames[0].1[2..]).is_ok());
}

#[test]
fn protocol_error_sends_one_close_and_ignores_the_rest() {
    let server = start(&[]);
    let mut stream = raw_upgraded(&server, "/");
    stream
        .write_all(&client_frame(true, op::TEXT, b"before"))
        .unwrap();
    assert_eq!(next_frame(&mut stream), (0x81, b"before".to_vec()));
    // The error, then frames that would be echoed or answered on a healthy connection.
    let mut bytes = client_frame_raw(0xC1, b"rsv");
    bytes.extend(client_frame(true, op::TEXT, b"after"));
    bytes.extend(client_frame(true, op::PING, b"ping"));
    bytes.extend(client_close(1000, b""));
    stream.write_all(&bytes).unwrap();
    expect_single_close_then_eof(&mut stream, 1002);
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

#[test]
fn failing_clients_do_not_affect_others() {
    let server = start(&[]);
    let mut good = ws(&server);
    ws_roundtrip(&mut good, Message::Text("before".into()));

    // A client sends garbage frames and is failed while the good one keeps working.
    let mut bad = raw_upgraded(&server, "/");
    bad.write_all(&client_frame(false, op::TEXT, b"half a message"))
        .unwrap();
    ws_roundtrip(&mut good, Message::Text("during".into()));
    bad.write_all(&[0xff; 64]).unwrap();
    expect_single_close_then_eof(&mut bad, 1002);
    ws_roundtrip(&mut good, Message::Binary(vec![42; 100_000]));

    // A client that speaks no HTTP at all.
    let response = http_once(server.addr, b"\x00\x01\x02garbage\r\n\r\n");
    assert_eq!(response.status(), 400);
    assert_eq!(response.end, Ok(()));
    ws_roundtrip(&mut good, Message::Text("after garbage".into()));

    // A client that vanishes mid-frame, with unread data so its kernel sends RST.
    let mut rude = raw_upgraded(&server, "/");
    rude.write_all(&client_frame(true, op::TEXT, b"echo me"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let frame = client_frame(true, op::BINARY, &[9u8; 5000]);
    rude.write_all(&frame[..2000]).unwrap();
    drop(rude);
    // And one that disappears half-way through its handshake.
    let mut shy = server.raw();
    shy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpg").unwrap();
    drop(shy);

    ws_roundtrip(&mut good, Message::Text("still here".into()));
    let mut fresh = ws(&server);
    ws_roundtrip(&mut fresh, Message::Text("new client".into()));
    ws_roundtrip(&mut good, Message::Text("done".into()));
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP on the same port
// ---------------------------------------------------------------------------------------------

#[test]
fn http_index_page() {
    let dir = demo_dir();
    let server = start(&["--static-dir", &dir]);
    let file = std::fs::read(format!("{dir}/index.html")).unwrap();
    let Response { head, body, end } = http_once(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&head, "content-length"),
        Some(file.len().to_string().as_str())
    );
    assert_eq!(body, file, "the body is exactly the file, nothing more");
    assert_eq!(
        end,
        Ok(()),
        "Connection: close must close after the response"
    );
    assert_eq!(header(&head, "connection"), Some("close"));

    // HEAD: same Content-Length, no body.
    let Response { head, body, end } = http_once(
        server.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(file.len().to_string().as_str())
    );
    assert!(body.is_empty(), "HEAD must not carry a body");
    assert_eq!(end, Ok(()));
}

#[test]
fn http_stats_json() {
    let server = start(&[]);
    let _ws = ws(&server);
    let mut stream = server.raw();
    stream
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut BufReader::new(stream));
    assert_eq!(status(&head), 200);
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    // The WebSocket and this HTTP connection are both open.
    assert!(json["open"].as_u64() >= Some(2), "{json}");
    assert_eq!(json["upgraded"], 1, "{json}");
}

#[test]
fn http_errors() {
    let server = start(&["--static-dir", &demo_dir()]);
    expect_http_error(&server, "GET /nope.txt HTTP/1.1\r\nHost: x\r\n\r\n", 404);
    let head = expect_http_error(&server, "POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405);
    assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
    // HEAD of a missing file: 404 without a body.
    let response = http_once(server.addr, b"HEAD /nope.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status(), 404);
    assert!(
        response.body.is_empty(),
        "HEAD must not carry a body: {response:?}"
    );
    assert_eq!(response.end, Ok(()));
}

#[test]
fn http_path_traversal_never_escapes() {
    let server = start(&["--static-dir", &demo_dir()]);
    let cargo_toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(cargo_toml.contains("[package]"));
    for target in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/Cargo.toml",
        "/..%2fCargo.toml",
        "/%5c..%5cCargo.toml",
        "/..\\Cargo.toml",
        "/html/../Cargo.toml",
        "/./../Cargo.toml",
        "//work/main/Cargo.toml",
        "/%2f..%2fCargo.toml",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = http_once(server.addr, request.as_bytes());
        let code = response.status();
        assert!(code == 404 || code == 400, "{target}: {}", response.head);
        assert!(
            !response.text().contains("[package]"),
            "{target} leaked Cargo.toml"
        );
    }
}

#[test]
fn http_keep_alive_serves_several_requests() {
    let dir = demo_dir();
    let server = start(&["--static-dir", &dir]);
    let file = std::fs::read(format!("{dir}/index.html")).unwrap();
    let mut stream = server.raw();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut reader);
    assert_eq!(status(&head), 200);
    assert_eq!(header(&head, "connection"), Some("keep-alive"));
    assert_eq!(body, file);
    stream
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut reader);
    assert_eq!(status(&head), 200);
    assert!(String::from_utf8(body).unwrap().contains("\"open\":"));
    // Two pipelined requests in one write, the last asking to close.
    stream
        .write_all(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let head = read_http_head(&mut reader);
    assert_eq!(status(&head), 200);
    let (head, _) = read_response(&mut reader);
    assert_eq!(status(&head), 200);
    assert_eq!(header(&head, "connection"), Some("close"));
    let (rest, end) = read_until_eof(&mut reader);
    assert!(rest.is_empty(), "bytes after the last response: {rest:?}");
    assert_eq!(end, Ok(()));
}
