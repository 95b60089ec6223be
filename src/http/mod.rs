//! Plain HTTP, sans-IO: the answers to requests that are not WebSocket upgrades.
//!
//! The reactor parses the request line and headers and picks the answer (`/metrics`,
//! `/stats`, a static file, a refusal); this module only turns already-parsed pieces into
//! complete response bytes: error responses (400/403/404/405/426/431/503), small `200 OK`
//! bodies, and, in [`static_files`], files served from a folder (through a bounded in-memory
//! cache) or from the copies compiled into the binary. Nothing here touches a socket, and no
//! response ever echoes request data.

mod static_files;

use std::rc::Rc;

pub(crate) use static_files::StaticFiles;

/// Status for malformed targets.
const BAD_REQUEST: u16 = 400;
/// Status for anything not served, including refused paths.
const NOT_FOUND: u16 = 404;
/// Status for unexpected I/O failures.
const INTERNAL_ERROR: u16 = 500;

/// Standard reason phrase for the statuses wsloop sends, so every status line
/// and error body reads the same; unknown codes get a generic phrase.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete error response: status line, `Content-Type: text/plain; charset=utf-8`,
/// `Content-Length`, `Connection: close` (errors always close, so the reactor
/// never has to resynchronise after a bad request), any extra headers (e.g.
/// `("Sec-WebSocket-Version", "13")` for 426, `("Retry-After", "5")` for 503,
/// `("Allow", "GET, HEAD")` for 405), and a short plain-text body (the reason
/// phrase + `"\n"`). Never echoes request data; extra headers containing
/// CR, LF or NUL are dropped so they cannot split the response.
pub(crate) fn error_response(status: u16, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let body = format!("{}\n", reason_phrase(status));
    let head = response_head(
        status,
        "text/plain; charset=utf-8",
        body.len(),
        false,
        extra_headers,
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A 200 response with the given content type and body (used for `/stats` JSON
/// and static files), so every success carries the same caching and sniffing
/// headers. `head_only` omits the body but keeps the real `Content-Length`, as
/// HEAD requires. `keep_alive` picks `Connection: keep-alive` vs `Connection: close`.
pub(crate) fn ok_response(
    content_type: &str,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let content_type = if header_safe(content_type) {
        content_type
    } else {
        "application/octet-stream"
    };
    let head = response_head(200, content_type, body.len(), keep_alive, &[]);
    let mut out = Vec::with_capacity(head.len() + if head_only { 0 } else { body.len() });
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Status line and headers up to and including the blank line.
fn response_head(
    status: u16,
    content_type: &str,
    len: usize,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> String {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: {connection}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n",
        reason_phrase(status)
    );
    for (name, value) in extra {
        if !name.is_empty() && header_safe(name) && header_safe(value) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    head
}

/// Whether a header name/value is free of bytes that could split the response.
fn header_safe(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// A complete plain-HTTP answer: owned bytes (status line, headers and any generated body),
/// then, for a static file, its cached body, shared with every other answer of the same file
/// rather than copied into each.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// Status line, headers and, for anything but a static file, the body.
    pub(crate) bytes: Vec<u8>,
    /// A static file's body (none for `HEAD`), sent after `bytes`.
    pub(crate) shared_body: Option<Rc<[u8]>>,
}

impl Response {
    /// An answer whose bytes are all in `bytes`.
    pub(crate) fn owned(status: u16, bytes: Vec<u8>) -> Response {
        Response {
            status,
            bytes,
            shared_body: None,
        }
    }

    /// Whether the connection closes after it: every answer but a 200 says `Connection: close`.
    pub(crate) fn closes(&self) -> bool {
        self.status != 200
    }

    /// An error answer; for `HEAD` without its body.
    fn error(status: u16, head_only: bool) -> Response {
        let mut bytes = error_response(status, &[]);
        if head_only {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                bytes.truncate(end + 4);
            }
        }
        Response::owned(status, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a response into (status, head text, body).
    pub(super) fn parse(resp: &[u8]) -> (u16, String, Vec<u8>) {
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(resp[..end].to_vec()).unwrap();
        (head[9..12].parse().unwrap(), head, resp[end..].to_vec())
    }

    /// Value of header `name` in `head`, or "" if absent.
    pub(super) fn hdr<'a>(head: &'a str, name: &str) -> &'a str {
        let line = head.lines().filter_map(|l| l.split_once(": "));
        line.filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next()
            .unwrap_or("")
    }

    #[test]
    fn error_and_ok_response_shapes() {
        let extra = [("Sec-WebSocket-Version", "13"), ("X", "a\r\nSet-Cookie: x")];
        let (status, head, body) = parse(&error_response(426, &extra));
        assert!(head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert_eq!((status, body.as_slice()), (426, &b"Upgrade Required\n"[..]));
        assert_eq!(hdr(&head, "Content-Length"), "17");
        assert_eq!(hdr(&head, "Content-Type"), "text/plain; charset=utf-8");
        assert_eq!(hdr(&head, "Connection"), "close");
        assert_eq!(hdr(&head, "Sec-WebSocket-Version"), "13");
        assert_eq!((hdr(&head, "X"), hdr(&head, "Set-Cookie")), ("", ""));
        for s in [400, 403, 404, 405, 408, 413, 426, 431, 500, 503] {
            assert_ne!(reason_phrase(s), "Unknown", "{s}");
        }
        let (status, head, body) = parse(&ok_response("application/json", b"{}", false, true));
        assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(hdr(&head, "Content-Type"), "application/json");
        assert_eq!(hdr(&head, "Connection"), "keep-alive");
        let (_, head, body) = parse(&ok_response("application/json", b"{}", true, false));
        assert_eq!(
            (hdr(&head, "Content-Length"), hdr(&head, "Connection")),
            ("2", "close")
        );
        assert!(body.is_empty());
    }
}
