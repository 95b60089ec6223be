//! wss:// and https:// against the real binary: a certificate made in the test, a rustls
//! client that trusts only it.
#![cfg(feature = "tls")]
// Test code: a failed expectation is a failed test (clippy.toml allows these in #[test]
// functions only; the shared helpers in tests/common are test code too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{read_http_head, read_to_close, status};
use common::tls::{tls_connect, TestCert, TlsStream};
use common::ServerProcess;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// A server on a TLS port with a fresh certificate, plus extra flags.
fn tls_server(extra: &[&str]) -> (ServerProcess, TestCert) {
    let cert = TestCert::generate();
    let mut args: Vec<String> = cert.args().to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (ServerProcess::start(&refs), cert)
}

/// A WebSocket over TLS, without message size limits on the client side.
fn wss(server: &ServerProcess, cert: &TestCert, path: &str) -> WebSocket<TlsStream> {
    let stream = tls_connect(server.addr, &cert.client_config());
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let url = format!("wss://localhost:{}{path}", server.addr.port());
    let config = WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..WebSocketConfig::default()
    };
    let (ws, response) =
        tungstenite::client::client_with_config(url, stream, Some(config)).expect("wss upgrade");
    assert_eq!(response.status(), 101);
    ws
}

#[test]
fn wss_echo_text_and_binary() {
    let (server, cert) = tls_server(&[]);
    let mut ws = wss(&server, &cert, "/");
    let alpn = ws.get_ref().conn.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    for i in 0..50 {
        let text = format!("hello 你好 😀 #{i}");
        ws.send(Message::Text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(text));
    }
    let bin: Vec<u8> = (0..=255).collect();
    ws.send(Message::Binary(bin.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(bin));
}

#[test]
fn wss_fragmented_message_is_reassembled() {
    let (server, cert) = tls_server(&[]);
    let mut ws = wss(&server, &cert, "/");
    let parts = ["frag", "men", "ted ", "über TLS"];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.as_bytes().to_vec(), opcode, i == parts.len() - 1);
        ws.write(Message::Frame(frame)).unwrap();
        if i == 1 {
            // A ping between fragments is answered at once.
            ws.write(Message::Ping(b"p".to_vec())).unwrap();
        }
    }
    ws.flush().unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match ws.read().unwrap() {
            Message::Pong(p) => got.push(Message::Pong(p)),
            m @ Message::Text(_) => got.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[0], Message::Pong(b"p".to_vec()));
    assert_eq!(got[1], Message::Text(parts.concat()));
}

#[test]
fn wss_close_handshake_then_close_notify() {
    let (server, cert) = tls_server(&[]);
    let mut ws = wss(&server, &cert, "/");
    ws.send(Message::Text("bye".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("bye".into()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    let echoed = match ws.read() {
        Ok(Message::Close(frame)) => frame,
        other => panic!("expected the close echo, got {other:?}"),
    };
    assert_eq!(echoed.map(|f| f.code), Some(CloseCode::Normal));
    // The server then sends close_notify and FIN: a clean TLS end (Ok(0)), not a truncation.
    let mut rest = Vec::new();
    let n = ws
        .get_mut()
        .read_to_end(&mut rest)
        .expect("clean TLS close (close_notify)");
    assert_eq!(n, 0);
}

#[test]
fn wss_16_mib_message_round_trip() {
    let (server, cert) = tls_server(&[]);
    let mut ws = wss(&server, &cert, "/");
    let big: Vec<u8> = (0..16usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    ws.send(Message::Binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        Message::Binary(back) => {
            assert_eq!(back.len(), big.len());
            assert!(back == big, "16 MiB echo differs");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection is still fine afterwards.
    ws.send(Message::Text("after".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("after".into()));
}

/// `GET path` over https://; the whole response.
fn https_get(server: &ServerProcess, cert: &TestCert, path: &str) -> String {
    let mut stream = tls_connect(server.addr, &cert.client_config());
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .expect("response, then close_notify");
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn https_serves_the_demo_page_and_stats() {
    let (server, cert) = tls_server(&[]);
    for path in ["/", "/stats"] {
        let text = https_get(&server, &cert, path);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:.200}");
        if path == "/" {
            assert!(text.contains("<html"), "the demo page");
        } else {
            assert!(text.contains("\"accepted\""), "stats JSON");
        }
    }
}

#[test]
fn stalled_tls_handshake_is_dropped_at_the_handshake_timeout() {
    let (server, _cert) = tls_server(&["--handshake-timeout", "1"]);
    let mut raw = server.raw();
    // The start of a ClientHello record, and then nothing.
    raw.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let start = Instant::now();
    let got = read_to_close(&mut raw);
    let waited = start.elapsed();
    assert!(got.is_empty(), "nothing is sent to a stalled handshake");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    // A client that stalls after the ClientHello, mid-handshake, is dropped too.
    let tcp = server.raw();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client =
        rustls::ClientConnection::new(TestCert::generate().client_config(), name).unwrap();
    let mut tcp2 = tcp.try_clone().unwrap();
    client.write_tls(&mut tcp2).unwrap(); // ClientHello only
    let start = Instant::now();
    let mut tcp3 = tcp;
    let got = read_to_close(&mut tcp3);
    assert!(!got.is_empty(), "the server answered the ClientHello");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn plain_http_to_the_tls_port_is_closed() {
    let (server, cert) = tls_server(&[]);
    let mut raw = server.raw();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let got = read_to_close(&mut raw);
    assert!(start.elapsed() < Duration::from_secs(5), "closed promptly");
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "no plaintext answer on a TLS port"
    );
    // Garbage too; and the server still serves TLS afterwards.
    let mut raw = server.raw();
    raw.write_all(&[0xff; 64]).unwrap();
    read_to_close(&mut raw);
    let mut ws = wss(&server, &cert, "/");
    ws.send(Message::Text("still here".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("still here".into()));
}

#[test]
fn bad_certificate_or_key_is_a_clear_startup_error() {
    let cert = TestCert::generate();
    let garbage = cert.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = cert.dir.join("missing.pem");
    let cases = [
        (missing.clone(), cert.key.clone(), "cannot read certificate"),
        (cert.cert.clone(), missing, "cannot read private key"),
        (garbage.clone(), cert.key.clone(), "no certificate"),
        (cert.cert.clone(), garbage, "no usable private key"),
        (cert.key.clone(), cert.key.clone(), "no certificate"),
    ];
    for (c, k, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_wsloop"))
            .args(["--addr", "127.0.0.1:0", "--tls-cert"])
            .arg(&c)
            .arg("--tls-key")
            .arg(&k)
            .output()
            .expect("run wsloop");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
        assert!(stderr.contains(want), "{want:?} not in {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A key that belongs to another certificate.
    let other = TestCert::generate();
    let out = Command::new(env!("CARGO_BIN_EXE_wsloop"))
        .args(["--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&other.key)
        .output()
        .expect("run wsloop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "mismatched key; stderr: {stderr}"
    );
    assert!(stderr.contains("do not fit"), "{stderr}");
}

/// What rustls holds for each session is inside `--max-buffered`: idle wss connections show
/// in `buffered_bytes` (at least the 8 KiB an idle session measured), and a budget of a few
/// sessions refuses further TLS connections.
#[test]
fn tls_sessions_count_in_the_memory_budget() {
    let (server, cert) = tls_server(&[]);
    let _held: Vec<_> = (0..10).map(|_| wss(&server, &cert, "/")).collect();
    let text = https_get(&server, &cert, "/stats");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    let stats: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
    let buffered = stats["buffered_bytes"].as_u64().unwrap();
    assert!(
        buffered >= 10 * 8 * 1024,
        "10 idle TLS sessions counted as {buffered} bytes"
    );

    // Sessions beyond the budget are refused at accept or shed: of 20 connections opened
    // one after the other, at most 9 (8 KiB each, 64 KiB) are still served at the end.
    let (small, cert) = tls_server(&["--max-buffered", "65536"]);
    let mut opened: Vec<TlsStream> = (0..20)
        .map(|_| {
            let mut stream = tls_connect(small.addr, &cert.client_config());
            stream
                .sock
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = answers_head(&mut stream);
            stream
        })
        .collect();
    let served = opened.iter_mut().map(answers_head).filter(|&ok| ok).count();
    assert!(
        served <= 9,
        "{served} TLS sessions served under a 64 KiB budget"
    );
}

/// Whether the server answers `HEAD /` on this connection (false once it closed it).
fn answers_head(stream: &mut TlsStream) -> bool {
    let request = b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(request).is_ok() && status(&read_http_head(stream)) == 200
}

/// A `SIGUSR2` upgrade cannot move a TLS session (rustls cannot export one): the TLS
/// connection is closed with 1001 as a shutdown would, and the new process serves wss on
/// the same port.
#[test]
fn an_upgrade_drains_tls_connections_with_1001() {
    let dir = std::env::temp_dir().join(format!("wsloop-tls-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("wsloop.pid");
    let (mut old, cert) = tls_server(&["--pid-file", pid_file.to_str().unwrap()]);
    let mut ws = wss(&old, &cert, "/");
    ws.send(Message::text("before")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before"));
    old.signal("USR2");
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    drop(ws);
    let new = old.upgraded(&pid_file);
    let mut ws = wss(&old, &cert, "/");
    ws.send(Message::text("after")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("after"));
    common::server::signal_pid(new, "TERM");
    let _ = std::fs::remove_dir_all(&dir);
}
