//! WebSocket clients: raw upgraded sockets for byte-exact tests, and `tungstenite` clients
//! for the happy paths.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;

use super::frames::{client_frame, next_frame, op, Next};
use super::http::{exchange, status, upgrade_request, upgrade_request_with};
use super::server::ServerProcess;

/// Opens a raw connection and completes the handshake; returns the stream (10 s read
/// timeout).
pub fn raw_upgraded(server: &ServerProcess, path: &str) -> TcpStream {
    let (stream, head) = exchange(server.addr, b"", &upgrade_request(path));
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "bad upgrade answer: {head:?}"
    );
    stream
}

/// Asks to upgrade `/` with `extra` header lines; returns the stream and the response's
/// status (0 when the server closed without answering).
pub fn upgrade_with(addr: SocketAddr, extra: &[(&str, &str)]) -> (TcpStream, u16) {
    let (stream, head) = exchange(addr, b"", &upgrade_request_with("/", "127.0.0.1", extra));
    (stream, status(&head))
}

/// Sends one masked text message on a raw upgraded stream and waits (5 s at most) for its
/// echo, answering any keepalive ping on the way; returns the round trip.
pub fn echo_rtt(stream: &mut TcpStream, text: &str) -> Duration {
    let start = Instant::now();
    stream
        .write_all(&client_frame(true, op::TEXT, text.as_bytes()))
        .expect("send text");
    loop {
        match next_frame(stream, Duration::from_secs(5)) {
            Next::Frame(first, payload) if first & 0x0f == op::PING => stream
                .write_all(&client_frame(true, op::PONG, &payload))
                .expect("send pong"),
            Next::Frame(first, payload) => {
                assert_eq!(first, 0x80 | op::TEXT, "expected the echo of {text:?}");
                assert_eq!(payload, text.as_bytes());
                return start.elapsed();
            }
            other => panic!("no echo for {text:?}: {other:?}"),
        }
    }
}

/// A fresh connection still upgrades and echoes: whatever came before hurt no one else.
pub fn assert_still_serving(server: &ServerProcess) {
    let mut ws = raw_upgraded(server, "/");
    echo_rtt(&mut ws, "still serving");
}

/// A `tungstenite` client on a blocking socket.
pub type Client = tungstenite::WebSocket<TcpStream>;

/// Connects a `tungstenite` client to `ws://ADDR/PATH` whose reads time out after
/// `read_timeout` (short for tests that poll, long for tests that wait). The handshake
/// itself may take up to 10 s (a loaded machine), whatever `read_timeout` is.
pub fn ws_connect(addr: SocketAddr, path: &str, read_timeout: Duration) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    stream.set_nodelay(true).expect("nodelay");
    let (ws, response) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws.get_ref()
        .set_read_timeout(Some(read_timeout))
        .expect("read timeout");
    ws
}

/// The next data message (`tungstenite` answers pings itself).
pub fn ws_next(ws: &mut Client) -> Message {
    loop {
        match ws.read().expect("WebSocket read") {
            Message::Ping(_) | Message::Pong(_) => {}
            other => return other,
        }
    }
}

/// The next message, which must be text.
pub fn ws_text(ws: &mut Client) -> String {
    match ws_next(ws) {
        Message::Text(text) => text,
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends one message and asserts it comes back unchanged; returns the round trip.
pub fn ws_roundtrip(ws: &mut Client, msg: Message) -> Duration {
    let start = Instant::now();
    ws.send(msg.clone()).expect("WebSocket send");
    let back = ws_next(ws);
    assert!(back == msg, "echo differs: sent {msg:?}, got {back:?}");
    start.elapsed()
}

/// The next text message within `wait`, if any (for a client made with a short read
/// timeout).
pub fn recv_text(ws: &mut Client, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(text)) => return Some(text),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("WebSocket read: {e}"),
        }
    }
    None
}

/// Sends one text message.
pub fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).expect("send");
}
