//! Plain-HTTP answers for requests that are not WebSocket upgrades, sans-IO.
//!
//! The reactor parses the request line and headers; this module only turns
//! already-parsed pieces into complete response bytes: error responses, small
//! `200 OK` bodies (e.g. `/stats`), and static files served from a folder or
//! from the copies compiled into the binary. Nothing here touches a socket,
//! and no response ever echoes request data.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Status for malformed targets.
const BAD_REQUEST: u16 = 400;
/// Status for anything not served, including refused paths.
const NOT_FOUND: u16 = 404;
/// Status for unexpected I/O failures.
const INTERNAL_ERROR: u16 = 500;

/// Largest static file served; bigger files are refused rather than loaded.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The embedded fallback pages, as `(request path, bytes)`.
const EMBEDDED: [(&str, &[u8]); 2] = [
    (
        "index.html",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/html/index.html")),
    ),
    (
        "favicon.svg",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/html/favicon.svg")),
    ),
];

/// Standard reason phrase for the statuses wsloop sends, so every status line
/// and error body reads the same; unknown codes get a generic phrase.
pub fn reason_phrase(status: u16) -> &'static str {
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
pub fn error_response(status: u16, extra_headers: &[(&str, &str)]) -> Vec<u8> {
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
pub fn ok_response(content_type: &str, body: &[u8], head_only: bool, keep_alive: bool) -> Vec<u8> {
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

/// Static files from a folder, or the files compiled into the binary when the
/// folder is absent, so a bare binary still serves its demo page.
pub struct StaticFiles {
    /// Canonicalized folder to serve from; `None` means the embedded files.
    root: Option<PathBuf>,
}

impl StaticFiles {
    /// `dir` is `--static-dir` (default `html/`). If it exists and is a directory, serve from it
    /// (canonicalized once, so containment checks compare like with like); otherwise serve the
    /// embedded files.
    pub fn new(dir: &Path) -> StaticFiles {
        let root = if dir.is_dir() {
            dir.canonicalize().ok()
        } else {
            None
        };
        StaticFiles { root }
    }

    /// Whether files come from disk (false = embedded). For the startup log line.
    pub fn from_disk(&self) -> bool {
        self.root.is_some()
    }

    /// The full response bytes (head + body unless HEAD) for one request.
    /// `method` and `target` are the request line's method and request-target, as received.
    /// Only GET and HEAD are allowed; errors go through [`error_response`] (and so close),
    /// with the body dropped for HEAD.
    pub fn respond(&self, method: &str, target: &str, keep_alive: bool) -> Vec<u8> {
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return error_response(405, &[("Allow", "GET, HEAD")]),
        };
        let found = resolve_target(target).and_then(|rel| {
            let body = match &self.root {
                Some(root) => read_disk(root, &rel).map(Cow::Owned),
                None => EMBEDDED
                    .iter()
                    .find(|(name, _)| *name == rel)
                    .map(|(_, bytes)| Cow::Borrowed(*bytes))
                    .ok_or(NOT_FOUND),
            }?;
            Ok((rel, body))
        });
        match found {
            Ok((rel, body)) => ok_response(content_type(&rel), &body, head_only, keep_alive),
            Err(status) => {
                let mut out = error_response(status, &[]);
                if head_only {
                    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                        out.truncate(end + 4);
                    }
                }
                out
            }
        }
    }
}

/// Turns a request-target into a safe relative path (segments joined by `/`),
/// or the status to refuse it with: 400 for malformed targets, 404 for
/// anything that could escape the root or name a hidden file.
fn resolve_target(target: &str) -> Result<String, u16> {
    // Origin-form only: absolute-form, authority-form and `*` are refused.
    if !target.starts_with('/') {
        return Err(BAD_REQUEST);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let bytes = percent_decode(path).ok_or(BAD_REQUEST)?;
    if bytes.iter().any(u8::is_ascii_control) {
        return Err(BAD_REQUEST); // NUL, CR, LF, ... have no business in a file name
    }
    let decoded = String::from_utf8(bytes).map_err(|_| BAD_REQUEST)?;
    let rest = decoded.strip_prefix('/').ok_or(BAD_REQUEST)?;
    if rest.is_empty() {
        return Ok("index.html".to_owned());
    }
    // Checked after decoding, so `%2e%2e`, `%2f` and `%5c` get no special pass.
    // A leading dot covers `.`, `..` and dotfiles; `:` covers drive letters;
    // an empty segment covers `//` and an absolute path after the first slash.
    let bad_segment =
        |seg: &str| seg.is_empty() || seg.starts_with('.') || seg.contains(['\\', ':']);
    if rest.split('/').any(bad_segment)
        || !Path::new(rest)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(NOT_FOUND);
    }
    Ok(rest.to_owned())
}

/// Decodes `%XX` escapes; `None` if an escape is malformed.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex_value)?;
            let lo = bytes.next().and_then(hex_value)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Value of one hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads `rel` under the canonical `root`, refusing anything whose canonical
/// path leaves the root (symlinks out), non-regular files and oversized files.
fn read_disk(root: &Path, rel: &str) -> Result<Vec<u8>, u16> {
    let path = root.join(rel).canonicalize().map_err(|_| NOT_FOUND)?;
    // Checked before opening so a FIFO or device is never opened (open could block).
    let is_small_file = |m: &std::fs::Metadata| m.is_file() && m.len() <= MAX_FILE_BYTES;
    if !path.starts_with(root) || !std::fs::metadata(&path).is_ok_and(|m| is_small_file(&m)) {
        return Err(NOT_FOUND);
    }
    let file = File::open(&path).map_err(|_| NOT_FOUND)?;
    // Re-checked on the open handle, and the read is capped, in case the file changed meanwhile.
    let meta = file.metadata().map_err(|_| INTERNAL_ERROR)?;
    if !is_small_file(&meta) {
        return Err(NOT_FOUND);
    }
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|_| INTERNAL_ERROR)?;
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(NOT_FOUND);
    }
    Ok(body)
}

/// `Content-Type` for a file, by (case-insensitive) extension.
fn content_type(rel: &str) -> &'static str {
    let ext = Path::new(rel)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Splits a response into (status, head text, body).
    fn parse(resp: &[u8]) -> (u16, String, Vec<u8>) {
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(resp[..end].to_vec()).unwrap();
        (head[9..12].parse().unwrap(), head, resp[end..].to_vec())
    }

    /// Value of header `name` in `head`, or "" if absent.
    fn hdr<'a>(head: &'a str, name: &str) -> &'a str {
        let line = head.lines().filter_map(|l| l.split_once(": "));
        line.filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next()
            .unwrap_or("")
    }

    /// A fresh `<tmp>/wsloop-http-*/{secret.txt, root/...}` tree; returns (base, root).
    fn tree() -> (PathBuf, PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("wsloop-http-{}-{n}", std::process::id()));
        let root = base.join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(base.join("secret.txt"), "SECRET").unwrap();
        for (name, text) in [("index.html", "<h1>disk</h1>"), ("a.txt", "hello")] {
            fs::write(root.join(name), text).unwrap();
        }
        for (name, text) in [
            ("a b.txt", "spaced"),
            (".env", "SECRET"),
            ("sub/s.CSS", "p{}"),
        ] {
            fs::write(root.join(name), text).unwrap();
        }
        #[cfg(unix)]
        for (from, to) in [
            ("secret.txt", "out.txt"),
            ("", "outdir"),
            ("root/a.txt", "in.txt"),
        ] {
            std::os::unix::fs::symlink(base.join(from), root.join(to)).unwrap();
        }
        (base, root)
    }

    #[test]
    fn traversal_and_malformed_targets_refused() {
        let (base, root) = tree();
        let files = StaticFiles::new(&root);
        assert!(files.from_disk());
        // Whitespace-separated so the table stays compact under rustfmt.
        let not_found = "/../secret.txt /%2e%2e/secret.txt /%2e%2E/secret.txt /..%2fsecret.txt \
            /sub/../../secret.txt /sub/%2e%2e/%2e%2e/secret.txt /./a.txt /%2e/a.txt /sub/.. \
            /..\\secret.txt /%5c..%5csecret.txt /%5C%2e%2e%5Csecret.txt //etc/passwd \
            /%2fetc/passwd /a.txt/ /C:/Windows/win.ini /c%3a%5cwin.ini /.env /out.txt \
            /outdir/secret.txt";
        let bad = "http://localhost/a.txt * a.txt /a.txt%00 /a%0a.txt /a%zz /a%2 /a% /%ff.txt";
        let not_found = not_found.split_whitespace().map(|t| (t, 404));
        let cases = not_found.chain(bad.split_whitespace().chain([""]).map(|t| (t, 400)));
        for (target, want) in cases {
            let (status, head, body) = parse(&files.respond("GET", target, true));
            assert_eq!(
                (status, hdr(&head, "Connection")),
                (want, "close"),
                "{target:?}"
            );
            assert!(
                !String::from_utf8_lossy(&body).contains("SECRET"),
                "{target:?}"
            );
        }
        // A symlink that stays inside the root is fine.
        #[cfg(unix)]
        assert_eq!(parse(&files.respond("GET", "/in.txt", true)).2, b"hello");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn serves_files_with_exact_headers() {
        let (base, root) = tree();
        let files = StaticFiles::new(&root);
        let (status, head, body) = parse(&files.respond("GET", "/a%20b.txt?x=1#frag", true));
        assert_eq!((status, body.as_slice()), (200, &b"spaced"[..]));
        assert_eq!(hdr(&head, "Content-Type"), "text/plain; charset=utf-8");
        assert_eq!(hdr(&head, "Content-Length"), "6");
        assert_eq!(hdr(&head, "Connection"), "keep-alive");
        assert_eq!(hdr(&head, "Cache-Control"), "no-cache");
        assert_eq!(hdr(&head, "X-Content-Type-Options"), "nosniff");
        let (_, head, body) = parse(&files.respond("GET", "/", false));
        assert_eq!(body, b"<h1>disk</h1>");
        assert_eq!(hdr(&head, "Content-Type"), "text/html; charset=utf-8");
        assert_eq!(hdr(&head, "Connection"), "close");
        let (_, head, _) = parse(&files.respond("GET", "/sub/s.CSS", true));
        assert_eq!(hdr(&head, "Content-Type"), "text/css; charset=utf-8");
        // HEAD: the same head as GET, no body; errors to HEAD lose their body too.
        let get = files.respond("GET", "/a.txt", true);
        let head = files.respond("HEAD", "/a.txt", true);
        assert_eq!(
            (&get[..head.len()], parse(&head).2.len()),
            (head.as_slice(), 0)
        );
        assert_eq!(hdr(&parse(&head).1, "Content-Length"), "5");
        let (status, _, body) = parse(&files.respond("HEAD", "/missing", true));
        assert_eq!((status, body.len()), (404, 0));
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let files = StaticFiles::new(Path::new("/nonexistent/wsloop"));
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", ""] {
            let (status, head, _) = parse(&files.respond(method, "/", true));
            assert_eq!((status, hdr(&head, "Allow")), (405, "GET, HEAD"));
            assert_eq!(hdr(&head, "Connection"), "close");
        }
    }

    #[test]
    fn directories_missing_and_huge_files_are_404() {
        let (base, root) = tree();
        let big = fs::File::create(root.join("big.bin")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let files = StaticFiles::new(&root);
        for target in ["/sub", "/sub/", "/nope.txt", "/sub/nope", "/big.bin"] {
            assert_eq!(
                parse(&files.respond("GET", target, true)).0,
                404,
                "{target}"
            );
        }
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn embedded_fallback_when_dir_missing_or_not_a_dir() {
        let (base, root) = tree();
        for dir in [base.join("missing"), root.join("a.txt")] {
            let files = StaticFiles::new(&dir);
            assert!(!files.from_disk());
            let (status, head, body) = parse(&files.respond("GET", "/", true));
            assert_eq!((status, body.as_slice()), (200, EMBEDDED[0].1));
            assert_eq!(hdr(&head, "Content-Type"), "text/html; charset=utf-8");
            let (status, head, _) = parse(&files.respond("GET", "/favicon.svg", true));
            assert_eq!((status, hdr(&head, "Content-Type")), (200, "image/svg+xml"));
            for target in ["/a.txt", "/../html/index.html", "/%2e%2e/index.html"] {
                assert_eq!(parse(&files.respond("GET", target, true)).0, 404);
            }
        }
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn content_types_by_extension() {
        let cases = "html text/html; charset=utf-8
            css text/css; charset=utf-8
            js text/javascript; charset=utf-8
            mjs text/javascript; charset=utf-8
            txt text/plain; charset=utf-8
            json application/json
            svg image/svg+xml
            png image/png
            JPG image/jpeg
            jpeg image/jpeg
            gif image/gif
            ico image/x-icon
            webp image/webp
            wasm application/wasm
            woff2 font/woff2
            exe application/octet-stream";
        for (ext, want) in cases.lines().filter_map(|l| l.trim().split_once(' ')) {
            assert_eq!(content_type(&format!("x.{ext}")), want, "{ext}");
        }
        assert_eq!(content_type("noext"), "application/octet-stream");
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
