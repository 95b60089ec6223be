//! HTTP as a client speaks it to the server: connections, request heads, responses read to
//! the end or by `Content-Length`, and `/stats`.

use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::wait_until;

/// A connection to `addr` with a 10 s read timeout (no test can hang on a silent server)
/// and Nagle off.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A read that gave up waiting.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A read or write that found the connection reset by the server.
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Reads until EOF, an error or the read timeout. Returns the bytes and how reading ended:
/// `Ok(())` for a clean EOF (the peer sent FIN), the error kind otherwise.
pub fn read_until_eof(stream: &mut impl Read) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (out, Err(e.kind())),
        }
    }
}

/// Reads until the peer closes or the read timeout passes; returns what arrived.
pub fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    read_until_eof(stream).0
}

/// Reads and discards until the server closes TCP (EOF or reset). Returns how long that
/// took, or `None` if the connection was still open after `within`.
pub fn wait_eof(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) if is_reset(&e) => return Some(start.elapsed()),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads an HTTP response head (through the blank line) byte by byte, so nothing after it
/// is consumed; what arrived if the connection ended first (empty: no answer).
pub fn read_http_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The status code of a response head (0 when there is none).
pub fn status(head: &str) -> u16 {
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The value of a response header, by case-insensitive name.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    upgrade_request_with(path, "127.0.0.1", &[])
}

/// A valid upgrade request for `path` with `Host: host` and extra header lines.
pub fn upgrade_request_with(path: &str, host: &str, extra: &[(&str, &str)]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Connects, sends `prefix` (e.g. a PROXY header) and `request`, and reads the response head
/// (empty when the server closed without answering). Returns the stream and the head.
pub fn exchange(addr: SocketAddr, prefix: &[u8], request: &str) -> (TcpStream, String) {
    let mut stream = connect(addr);
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    // The server may close before reading everything (a refused PROXY header): that is for
    // the caller to see in the answer.
    let _ = stream.write_all(&bytes);
    let head = read_http_head(&mut stream);
    (stream, head)
}

/// Everything the server sent on one connection until it closed it.
#[derive(Debug)]
pub struct Response {
    /// The first response head, through its blank line (all of it if there is none).
    pub head: String,
    /// Everything after the head.
    pub body: Vec<u8>,
    /// How reading ended: `Ok(())` when the server closed TCP (see [`read_until_eof`]).
    pub end: Result<(), ErrorKind>,
}

impl Response {
    /// The status code (0 when there is no response head).
    pub fn status(&self) -> u16 {
        status(&self.head)
    }

    /// A header of the (first) response.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    /// The status of every response on the connection, in order (pipelined answers).
    pub fn statuses(&self) -> Vec<u16> {
        let all = format!("{}{}", self.head, self.text());
        all.match_indices("HTTP/1.1 ")
            .map(|(at, _)| status(&all[at..]))
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it.
pub fn http_once(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = connect(addr);
    // A server that refuses may close before reading all: what it sent is the answer.
    let _ = stream.write_all(request);
    let (bytes, end) = read_until_eof(&mut stream);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |at| at + 4);
    Response {
        head: String::from_utf8_lossy(&bytes[..split]).into_owned(),
        body: bytes[split..].to_vec(),
        end,
    }
}

/// `GET path` with `Connection: close`, after `prefix` (e.g. a PROXY header).
pub fn get_after(addr: SocketAddr, prefix: &[u8], path: &str) -> Response {
    let mut request = prefix.to_vec();
    request.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    http_once(addr, &request)
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    get_after(addr, b"", path)
}

/// Reads one response from a kept-alive connection: the head (through its blank line) and
/// the body of its `Content-Length`.
pub fn read_response(reader: &mut impl BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let read = reader.read_line(&mut head);
        assert!(
            matches!(read, Ok(n) if n > 0),
            "no complete response head ({read:?}) after {head:?}"
        );
    }
    let length = header(&head, "content-length").map_or(0, |v| v.parse().expect("a length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the response body");
    (head, body)
}

/// `GET /stats` as JSON.
pub fn stats(addr: SocketAddr) -> serde_json::Value {
    let response = get(addr, "/stats");
    assert_eq!(response.status(), 200, "GET /stats: {}", response.head);
    serde_json::from_slice(&response.body).expect("stats JSON")
}

/// One counter of the `/stats` JSON.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a counter in {stats}"))
}

/// Polls `/stats` until `ok` holds for it (or panics after `within`); returns the JSON.
pub fn wait_for_stats(
    addr: SocketAddr,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let matched = wait_until(within, || {
        last = stats(addr);
        ok(&last)
    });
    assert!(matched, "stats never matched: {last}");
    last
}
