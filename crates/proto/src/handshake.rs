//! The opening handshake (RFC 6455 §4.2), sans-IO: find the request head in any split of the
//! bytes, parse it into borrowed pieces, validate the upgrade, and build the answer.
//!
//! # Contract
//! Feed the bytes received so far to [`HeadScanner::scan`]; it returns `Ok(None)` until the
//! blank line has arrived, scanning each byte once however the bytes were split (one byte
//! per read costs linear time, not quadratic). Then [`RequestHead::parse`] borrows the method,
//! target and headers into a caller-provided array (no allocation), and [`validate_upgrade`]
//! checks §4.2.1. Bytes after the head (a pipelined first frame) are the caller's to keep.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Why a handshake was refused; each maps to one HTTP status through [`HandshakeError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The head grew past the configured limit before its end arrived (431).
    HeadTooLarge,
    /// More header lines than the parser holds (431).
    TooManyHeaders,
    /// The request line or a header line is not HTTP/1.x syntax (400).
    Malformed,
    /// An HTTP version before 1.1 (400).
    OldHttpVersion,
    /// A WebSocket upgrade with a method other than GET (400).
    NotGet,
    /// No `Host` header (400).
    MissingHost,
    /// More than one `Host` header (400).
    DuplicateHost,
    /// A body announced by `Transfer-Encoding` or a non-zero `Content-Length` (400).
    HasBody,
    /// `Connection` does not list the `Upgrade` token (400).
    MissingConnectionUpgrade,
    /// No valid `Sec-WebSocket-Key`: absent, or not 16 bytes in base64 (400).
    BadKey,
    /// More than one `Sec-WebSocket-Key` header (400).
    DuplicateKey,
    /// `Sec-WebSocket-Version` is absent or not 13 (426 with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
}

impl HandshakeError {
    /// The HTTP status that answers this error.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// A short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::TooManyHeaders => "too many headers",
            HandshakeError::Malformed => "malformed request",
            HandshakeError::OldHttpVersion => "HTTP version before 1.1",
            HandshakeError::NotGet => "upgrade with a method other than GET",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::DuplicateHost => "more than one Host header",
            HandshakeError::HasBody => "request with a body",
            HandshakeError::MissingConnectionUpgrade => "Connection header lacks Upgrade",
            HandshakeError::BadKey => "invalid Sec-WebSocket-Key",
            HandshakeError::DuplicateKey => "more than one Sec-WebSocket-Key",
            HandshakeError::UnsupportedVersion => "unsupported Sec-WebSocket-Version",
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HandshakeError {}

/// Finds the end of a request head across reads, resuming where the last scan stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScanner {
    scanned: u32,
}

impl HeadScanner {
    /// Looks for the blank line that ends the head in `buf` (all bytes received so far).
    /// Returns the head's length including the blank line, or `None` if it has not arrived.
    ///
    /// # Errors
    /// [`HandshakeError::HeadTooLarge`] once `buf` holds more than `max_head` bytes without
    /// a complete head, or the head itself is longer than `max_head`.
    pub fn scan(&mut self, buf: &[u8], max_head: usize) -> Result<Option<usize>, HandshakeError> {
        // Back up 3 bytes: the terminator may straddle the previous end.
        let from = (self.scanned as usize).saturating_sub(3);
        let window = buf.get(from..).unwrap_or_default();
        if let Some(at) = window.windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at + 4;
            return if end > max_head {
                Err(HandshakeError::HeadTooLarge)
            } else {
                Ok(Some(end))
            };
        }
        if buf.len() > max_head {
            return Err(HandshakeError::HeadTooLarge);
        }
        self.scanned = buf.len() as u32;
        Ok(None)
    }
}

/// One header line, borrowed from the request bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header<'a> {
    /// The field name as sent (compare case-insensitively).
    pub name: &'a str,
    /// The field value with surrounding spaces and tabs removed.
    pub value: &'a str,
}

/// The empty header used to initialize a header array.
pub const EMPTY_HEADER: Header<'static> = Header {
    name: "",
    value: "",
};

/// A parsed request head; every field borrows from the request bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a, 'h> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target, e.g. `/chat?room=1`.
    pub target: &'a str,
    /// The minor HTTP version (`1` for HTTP/1.1).
    pub minor_version: u8,
    /// The header lines in order.
    pub headers: &'h [Header<'a>],
}

impl<'a, 'h> RequestHead<'a, 'h> {
    /// Parses a complete head (through its blank line) into `headers`.
    ///
    /// # Errors
    /// [`HandshakeError::Malformed`] for anything that is not an HTTP/1.x request head,
    /// [`HandshakeError::TooManyHeaders`] when `headers` is too small.
    pub fn parse(
        head: &'a [u8],
        headers: &'h mut [Header<'a>],
    ) -> Result<RequestHead<'a, 'h>, HandshakeError> {
        let text = std::str::from_utf8(head).map_err(|_| HandshakeError::Malformed)?;
        let text = text
            .strip_suffix("\r\n\r\n")
            .ok_or(HandshakeError::Malformed)?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().ok_or(HandshakeError::Malformed)?;
        let (method, target, minor_version) = parse_request_line(request_line)?;
        let mut count = 0;
        for line in lines {
            let slot = headers
                .get_mut(count)
                .ok_or(HandshakeError::TooManyHeaders)?;
            *slot = parse_header_line(line)?;
            count += 1;
        }
        let headers = headers.get(..count).ok_or(HandshakeError::Malformed)?;
        Ok(RequestHead {
            method,
            target,
            minor_version,
            headers,
        })
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The values of every header line named `name` (case-insensitive), in order: for the
    /// headers that may repeat, such as `Sec-WebSocket-Extensions` (§9.1).
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'h, 'n> {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// How many header lines are named `name` (case-insensitive).
    pub fn count(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// Every value of the headers named `name`, as comma-separated tokens, trimmed.
    pub fn tokens<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(','))
            .map(|t| t.trim_matches([' ', '\t']))
            .filter(|t| !t.is_empty())
    }

    /// Whether the request asks for a WebSocket upgrade (`Upgrade: websocket`). Requests that
    /// do not are plain HTTP (static files, stats).
    pub fn wants_websocket(&self) -> bool {
        self.tokens("upgrade")
            .any(|t| t.eq_ignore_ascii_case("websocket"))
    }

    /// Whether the connection stays open after a plain HTTP answer: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version >= 1 {
            !self
                .tokens("connection")
                .any(|t| t.eq_ignore_ascii_case("close"))
        } else {
            self.tokens("connection")
                .any(|t| t.eq_ignore_ascii_case("keep-alive"))
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_request_line(line: &str) -> Result<(&str, &str, u8), HandshakeError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::Malformed);
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HandshakeError::Malformed);
    }
    let minor = match version.strip_prefix("HTTP/1.").map(str::as_bytes) {
        Some([d]) if d.is_ascii_digit() => d - b'0',
        _ => return Err(HandshakeError::Malformed),
    };
    Ok((method, target, minor))
}

fn parse_header_line(line: &str) -> Result<Header<'_>, HandshakeError> {
    let (name, value) = line.split_once(':').ok_or(HandshakeError::Malformed)?;
    // RFC 9112 §5.1: no whitespace between the field name and the colon.
    if !is_token(name) {
        return Err(HandshakeError::Malformed);
    }
    let value = value.trim_matches([' ', '\t']);
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(HandshakeError::Malformed);
    }
    Ok(Header { name, value })
}

/// What a valid upgrade request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// `Sec-WebSocket-Key`, validated to be 16 bytes in base64.
    pub key: &'a str,
}

/// Checks what every request must satisfy, plain or upgrade: wsloop answers no request with a
/// body, and the bytes after a head are always the next request (or the first frames), so a
/// body must never be left to be read as one.
///
/// # Errors
/// [`HandshakeError::DuplicateHost`] or [`HandshakeError::HasBody`].
pub fn validate_request(req: &RequestHead<'_, '_>) -> Result<(), HandshakeError> {
    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // request message that contains more than one Host header field line".
    if req.count("host") > 1 {
        return Err(HandshakeError::DuplicateHost);
    }
    // …and "to any HTTP/1.1 request message that lacks a Host header field" (HTTP/1.0 may).
    if req.minor_version >= 1 && req.count("host") == 0 {
        return Err(HandshakeError::MissingHost);
    }
    // RFC 9112 §6.3: a message body is framed by Transfer-Encoding or Content-Length. None is
    // read here, so one announced is refused (and the connection closed) rather than parsed
    // as the next request.
    let nonzero_length = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value != "0");
    if nonzero_length || req.count("transfer-encoding") > 0 {
        return Err(HandshakeError::HasBody);
    }
    Ok(())
}

/// Checks a request against RFC 6455 §4.2.1 (and [`validate_request`]).
///
/// # Errors
/// The first rule the request breaks; [`HandshakeError::status`] gives the answer.
pub fn validate_upgrade<'a>(req: &RequestHead<'a, '_>) -> Result<Upgrade<'a>, HandshakeError> {
    // §4.2.1 (1): "An HTTP/1.1 or higher GET request".
    if req.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::OldHttpVersion);
    }
    validate_request(req)?;
    // (2) "A |Host| header field".
    if req.header("host").is_none_or(str::is_empty) {
        return Err(HandshakeError::MissingHost);
    }
    // (4) "A |Connection| header field that includes the token 'Upgrade'".
    if !req
        .tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    // (6) "A |Sec-WebSocket-Version| header field, with a value of 13". Checked before the
    // key so a client of another version learns which one we speak (426).
    if req.header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // §11.3.1: "The |Sec-WebSocket-Key| header field MUST NOT appear more than once in an
    // HTTP request."
    if req.count("sec-websocket-key") > 1 {
        return Err(HandshakeError::DuplicateKey);
    }
    // (5) "a base64-encoded value that, when decoded, is 16 bytes in length".
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) => Ok(Upgrade { key }),
        _ => Err(HandshakeError::BadKey),
    }
}

/// The GUID that §1.3 appends to the key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Appends the `101 Switching Protocols` answer to `out`, with the selected subprotocol and
/// the accepted extensions, if any.
pub fn write_accept_response(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    if let Some(protocol) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
    }
    if let Some(extensions) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(extensions.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn check(req: &str) -> Result<(), HandshakeError> {
        let mut headers = [EMPTY_HEADER; 32];
        let head = RequestHead::parse(req.as_bytes(), &mut headers)?;
        validate_upgrade(&head).map(|_| ())
    }

    fn plain(req: &str) -> Result<(), HandshakeError> {
        let mut headers = [EMPTY_HEADER; 32];
        validate_request(&RequestHead::parse(req.as_bytes(), &mut headers)?)
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn every_split_point_finds_the_head() {
        let mut bytes = REQ.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80]);
        let bytes = &bytes[..];
        for split in 0..bytes.len() {
            let mut scanner = HeadScanner::default();
            let first = scanner.scan(&bytes[..split], 8192).unwrap();
            let found = first.or_else(|| scanner.scan(bytes, 8192).unwrap());
            assert_eq!(found, Some(REQ.len()), "split {split}");
        }
        // One byte at a time.
        let mut scanner = HeadScanner::default();
        let mut found = None;
        for end in 1..=bytes.len() {
            if let Some(n) = scanner.scan(&bytes[..end], 8192).unwrap() {
                found = Some(n);
                break;
            }
        }
        assert_eq!(found, Some(REQ.len()));
    }

    #[test]
    fn head_size_cap() {
        let mut scanner = HeadScanner::default();
        let big = vec![b'a'; 9000];
        assert_eq!(scanner.scan(&big, 8192), Err(HandshakeError::HeadTooLarge));
        let mut scanner = HeadScanner::default();
        assert_eq!(
            scanner.scan(REQ.as_bytes(), 20),
            Err(HandshakeError::HeadTooLarge)
        );
    }

    #[test]
    fn parses_the_rfc_example() {
        let mut headers = [EMPTY_HEADER; 16];
        let head = RequestHead::parse(REQ.as_bytes(), &mut headers).unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/chat");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.header("ORIGIN"), Some("http://example.com"));
        assert!(head.wants_websocket());
        assert!(head.keep_alive());
        assert_eq!(check(REQ), Ok(()));
    }

    #[test]
    fn validation_rules() {
        let cases = [
            ("GET /chat", "POST /chat", HandshakeError::NotGet),
            (
                "HTTP/1.1\r\nHost",
                "HTTP/1.0\r\nHost",
                HandshakeError::OldHttpVersion,
            ),
            (
                "Host: server.example.com\r\n",
                "",
                HandshakeError::MissingHost,
            ),
            (
                "keep-alive, Upgrade",
                "keep-alive",
                HandshakeError::MissingConnectionUpgrade,
            ),
            (
                "Version: 13",
                "Version: 8",
                HandshakeError::UnsupportedVersion,
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZQ==",
                HandshakeError::BadKey,
            ),
            ("dGhlIHNhbXBsZSBub25jZQ==", "!!!", HandshakeError::BadKey),
            ("Host:", "Host :", HandshakeError::Malformed),
            (
                "GET /chat HTTP/1.1",
                "GET /chat HTTP/2",
                HandshakeError::Malformed,
            ),
            ("GET /chat", "GET  /chat", HandshakeError::Malformed),
        ];
        for (from, to, err) in cases {
            let req = REQ.replacen(from, to, 1);
            assert_eq!(check(&req), Err(err), "{from} -> {to}");
        }
        assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
        assert_eq!(HandshakeError::BadKey.status(), 400);
    }

    /// RFC 9112 §3.2 and RFC 6455 §11.3.1: a repeated `Host` or `Sec-WebSocket-Key` is a bad
    /// request, whatever the case of the second name and whether the values agree.
    #[test]
    fn duplicate_host_or_key_refused() {
        let cases = [
            ("Host: server.example.com\r\n", "Host: a\r\nhost: a\r\n"),
            ("Host: server.example.com\r\n", "Host: a\r\nHOST: b\r\n"),
        ];
        for (from, to) in cases {
            let req = REQ.replacen(from, to, 1);
            assert_eq!(check(&req), Err(HandshakeError::DuplicateHost), "{to}");
            assert_eq!(plain(&req), Err(HandshakeError::DuplicateHost), "{to}");
        }
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        for second in [key, "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"] {
            let req = REQ.replacen(key, &format!("{key}{second}"), 1);
            assert_eq!(check(&req), Err(HandshakeError::DuplicateKey), "{second}");
        }
        assert_eq!(HandshakeError::DuplicateHost.status(), 400);
        assert_eq!(HandshakeError::DuplicateKey.status(), 400);
    }

    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is a bad request; HTTP/1.0 has none.
    #[test]
    fn http11_without_host_refused() {
        let req = REQ.replacen("Host: server.example.com\r\n", "", 1);
        assert_eq!(plain(&req), Err(HandshakeError::MissingHost));
        assert_eq!(check(&req), Err(HandshakeError::MissingHost));
        let old = req.replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(plain(&old), Ok(()));
        assert_eq!(HandshakeError::MissingHost.status(), 400);
    }

    /// RFC 9112 §6.3: any announced body is refused, plain request or upgrade; an explicit
    /// `Content-Length: 0` is no body.
    #[test]
    fn requests_with_a_body_refused() {
        let at = "Origin:";
        for header in [
            "Content-Length: 5",
            "content-length: 0\r\nContent-Length: 1",
            "Content-Length: 00",
            "Content-Length: -0",
            "Transfer-Encoding: chunked",
            "transfer-encoding: identity",
        ] {
            let req = REQ.replacen(at, &format!("{header}\r\n{at}"), 1);
            assert_eq!(check(&req), Err(HandshakeError::HasBody), "{header}");
            assert_eq!(plain(&req), Err(HandshakeError::HasBody), "{header}");
        }
        let empty = REQ.replacen(at, &format!("Content-Length: 0\r\n{at}"), 1);
        assert_eq!((check(&empty), plain(&empty)), (Ok(()), Ok(())));
        assert_eq!(plain(REQ), Ok(()));
        assert_eq!(HandshakeError::HasBody.status(), 400);
    }

    #[test]
    fn case_insensitive_upgrade_and_connection() {
        let req = REQ
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("keep-alive, Upgrade", "UPGRADE");
        assert_eq!(check(&req), Ok(()));
    }

    #[test]
    fn too_many_headers() {
        let mut headers = [EMPTY_HEADER; 3];
        assert_eq!(
            RequestHead::parse(REQ.as_bytes(), &mut headers).err(),
            Some(HandshakeError::TooManyHeaders)
        );
    }

    #[test]
    fn response_bytes() {
        let mut out = Vec::new();
        write_accept_response(
            &mut out,
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("chat"),
            Some("permessage-deflate"),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
