//! Static files: from a folder, or the copies compiled into the binary when there is none.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use log::debug;
use rustix::fs::{Mode, OFlags};

use super::{error_response, response_head, Response, BAD_REQUEST, INTERNAL_ERROR, NOT_FOUND};

/// Largest static file served; bigger files are refused (404, logged at debug level) rather
/// than loaded.
pub(super) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of file bodies the static-file cache keeps (per reactor): part of the fixed
/// memory base, outside `--max-buffered`.
pub(super) const MAX_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// How long a cached file is served before its size and modification time are compared with
/// the disk again.
pub(super) const REVALIDATE_AFTER: Duration = Duration::from_secs(1);

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

/// Static files from a folder; or, when there is none and the demo page is wanted, the files
/// compiled into the library, so a bare binary still serves its demo page; or none at all.
///
/// Bodies are served from memory: a file is read once, then kept as one shared buffer that
/// every answer references ([`Response::shared_body`]), so pipelined requests for a large file
/// cost neither a disk read nor a copy each. The cache is bounded: files over
/// [`MAX_FILE_BYTES`] are refused (404), and past [`MAX_CACHE_BYTES`] in all the least
/// recently served files are dropped. A cached file is compared with the disk (size and
/// modification time) at most once per [`REVALIDATE_AFTER`], and read again when it changed.
pub(crate) struct StaticFiles {
    /// Canonicalized folder to serve from; `None`: the embedded files, if cached, or none.
    root: Option<PathBuf>,
    /// Bodies by relative path (the embedded files, when they are served).
    cache: HashMap<String, Cached>,
    /// Bytes of all bodies in `cache`.
    cached_bytes: usize,
}

/// One file's body in the cache.
struct Cached {
    body: Rc<[u8]>,
    /// The file's size and modification time when it was read.
    stamp: Stamp,
    /// When `stamp` was last compared with the file on disk.
    checked: Instant,
    /// When it was last served (the least recently served go first when the cache is full).
    used: Instant,
}

/// What tells a changed file apart: size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

impl StaticFiles {
    /// `dir` is [`Config::static_dir`](crate::Config::static_dir). If it exists and is a
    /// directory, serve from it (canonicalized once, so containment checks compare like with
    /// like); otherwise serve the embedded files with `demo_page`, and nothing without.
    pub(crate) fn new(dir: Option<&Path>, demo_page: bool) -> StaticFiles {
        let root = dir
            .filter(|dir| dir.is_dir())
            .and_then(|dir| dir.canonicalize().ok());
        let mut files = StaticFiles {
            root,
            cache: HashMap::new(),
            cached_bytes: 0,
        };
        if files.root.is_none() && demo_page {
            let now = Instant::now();
            let stamp = Stamp {
                len: 0,
                modified: None,
            };
            for (name, bytes) in EMBEDDED {
                files.insert(name, Rc::from(bytes), stamp, now);
            }
        }
        files
    }

    /// Whether files come from disk (false = embedded). For the startup log line.
    pub(crate) fn is_on_disk(&self) -> bool {
        self.root.is_some()
    }

    /// The answer to one request at `now`. `method` and `target` are the request line's method
    /// and request-target, as received. Only GET and HEAD are allowed; errors go through
    /// [`error_response`] (and so close), with the body dropped for HEAD.
    pub(crate) fn respond(
        &mut self,
        method: &str,
        target: &str,
        keep_alive: bool,
        now: Instant,
    ) -> Response {
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return Response::owned(405, error_response(405, &[("Allow", "GET, HEAD")])),
        };
        let found = resolve_target(target).and_then(|rel| Ok((self.body(&rel, now)?, rel)));
        match found {
            Ok((body, rel)) => Response {
                status: 200,
                bytes: response_head(200, content_type(&rel), body.len(), keep_alive, &[])
                    .into_bytes(),
                shared_body: (!head_only).then_some(body),
            },
            Err(status) => Response::error(status, head_only),
        }
    }

    /// The body of `rel` (already resolved): cached, or read from disk when not cached yet or
    /// changed since.
    fn body(&mut self, rel: &str, now: Instant) -> Result<Rc<[u8]>, u16> {
        let root = self.root.as_deref();
        if let Some(cached) = self.cache.get_mut(rel) {
            let recent = now.saturating_duration_since(cached.checked) < REVALIDATE_AFTER;
            // `metadata` follows symlinks like the read did, and never blocks on a FIFO.
            let unchanged = || {
                root.is_none_or(|root| {
                    std::fs::metadata(root.join(rel)).is_ok_and(|m| Stamp::of(&m) == cached.stamp)
                })
            };
            if recent || unchanged() {
                if !recent {
                    cached.checked = now;
                }
                cached.used = now;
                return Ok(Rc::clone(&cached.body));
            }
        }
        self.forget(rel);
        let root = self.root.as_deref().ok_or(NOT_FOUND)?;
        let (body, stamp) = read_disk(root, rel)?;
        Ok(self.insert(rel, body.into(), stamp, now))
    }

    /// Caches `body` as `rel`, first dropping the least recently served files it does not fit
    /// beside.
    fn insert(&mut self, rel: &str, body: Rc<[u8]>, stamp: Stamp, now: Instant) -> Rc<[u8]> {
        while self.cached_bytes + body.len() > MAX_CACHE_BYTES {
            let oldest = self
                .cache
                .iter()
                .min_by_key(|(_, cached)| cached.used)
                .map(|(name, _)| name.clone());
            let Some(oldest) = oldest else {
                break;
            };
            self.forget(&oldest);
        }
        self.cached_bytes += body.len();
        let cached = Cached {
            body: Rc::clone(&body),
            stamp,
            checked: now,
            used: now,
        };
        self.cache.insert(rel.to_owned(), cached);
        body
    }

    /// Drops `rel` from the cache (answers still queued keep their reference to the body).
    fn forget(&mut self, rel: &str) {
        if let Some(cached) = self.cache.remove(rel) {
            self.cached_bytes = self.cached_bytes.saturating_sub(cached.body.len());
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

/// Reads `rel` under the canonical `root`, refusing anything whose canonical path leaves the
/// root (symlinks out), anything but a regular file, and files over [`MAX_FILE_BYTES`].
/// Returns the body and the stamp of what was read.
fn read_disk(root: &Path, rel: &str) -> Result<(Vec<u8>, Stamp), u16> {
    let path = root.join(rel).canonicalize().map_err(|_| NOT_FOUND)?;
    if !path.starts_with(root) {
        return Err(NOT_FOUND);
    }
    // Opened without blocking, then judged by what was opened (not by an earlier look at the
    // path, which a FIFO swapped in afterwards would defeat): opening or reading a FIFO or a
    // device could block the reactor.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::open(&path, flags, Mode::empty()).map_err(|_| NOT_FOUND)?);
    let meta = file.metadata().map_err(|_| INTERNAL_ERROR)?;
    if !meta.is_file() {
        debug!("static file {rel}: not a regular file: 404");
        return Err(NOT_FOUND);
    }
    if meta.len() > MAX_FILE_BYTES {
        debug!(
            "static file {rel}: {} bytes, over {MAX_FILE_BYTES}: 404",
            meta.len()
        );
        return Err(NOT_FOUND);
    }
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Capped, in case the file grows while it is read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|_| INTERNAL_ERROR)?;
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(NOT_FOUND);
    }
    Ok((body, Stamp::of(&meta)))
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
    use crate::http::tests::{hdr, parse};
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The whole answer to one request, as the socket would get it.
    fn answer(files: &mut StaticFiles, method: &str, target: &str, keep: bool) -> Vec<u8> {
        let response = files.respond(method, target, keep, Instant::now());
        let body = response.shared_body.as_deref().unwrap_or_default();
        [response.bytes.as_slice(), body].concat()
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
        let mut files = StaticFiles::new(Some(&root), true);
        assert!(files.is_on_disk());
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
            let (status, head, body) = parse(&answer(&mut files, "GET", target, true));
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
        assert_eq!(
            parse(&answer(&mut files, "GET", "/in.txt", true)).2,
            b"hello"
        );
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn serves_files_with_exact_headers() {
        let (base, root) = tree();
        let mut files = StaticFiles::new(Some(&root), true);
        let (status, head, body) = parse(&answer(&mut files, "GET", "/a%20b.txt?x=1#frag", true));
        assert_eq!((status, body.as_slice()), (200, &b"spaced"[..]));
        assert_eq!(hdr(&head, "Content-Type"), "text/plain; charset=utf-8");
        assert_eq!(hdr(&head, "Content-Length"), "6");
        assert_eq!(hdr(&head, "Connection"), "keep-alive");
        assert_eq!(hdr(&head, "Cache-Control"), "no-cache");
        assert_eq!(hdr(&head, "X-Content-Type-Options"), "nosniff");
        let (_, head, body) = parse(&answer(&mut files, "GET", "/", false));
        assert_eq!(body, b"<h1>disk</h1>");
        assert_eq!(hdr(&head, "Content-Type"), "text/html; charset=utf-8");
        assert_eq!(hdr(&head, "Connection"), "close");
        let (_, head, _) = parse(&answer(&mut files, "GET", "/sub/s.CSS", true));
        assert_eq!(hdr(&head, "Content-Type"), "text/css; charset=utf-8");
        // HEAD: the same head as GET, no body; errors to HEAD lose their body too.
        let get = answer(&mut files, "GET", "/a.txt", true);
        let head = answer(&mut files, "HEAD", "/a.txt", true);
        assert_eq!(
            (&get[..head.len()], parse(&head).2.len()),
            (head.as_slice(), 0)
        );
        assert_eq!(hdr(&parse(&head).1, "Content-Length"), "5");
        let (status, _, body) = parse(&answer(&mut files, "HEAD", "/missing", true));
        assert_eq!((status, body.len()), (404, 0));
        fs::remove_dir_all(base).unwrap();
    }

    /// One body per file, shared by every answer; a change on disk is noticed once
    /// `REVALIDATE_AFTER` has passed since the last look, not before.
    #[test]
    fn cached_bodies_are_shared_and_revalidated() {
        let (base, root) = tree();
        let mut files = StaticFiles::new(Some(&root), true);
        let t0 = Instant::now();
        let body = |files: &mut StaticFiles, at| {
            let response = files.respond("GET", "/a.txt", true, at);
            response.shared_body.unwrap()
        };
        let first = body(&mut files, t0);
        assert!(
            Rc::ptr_eq(&first, &body(&mut files, t0)),
            "shared, not copied"
        );
        assert!(files
            .respond("HEAD", "/a.txt", true, t0)
            .shared_body
            .is_none());
        fs::write(root.join("a.txt"), "changed!").unwrap();
        let soon = t0 + REVALIDATE_AFTER / 2;
        assert_eq!(
            &*body(&mut files, soon),
            b"hello",
            "not looked at again yet"
        );
        let later = t0 + REVALIDATE_AFTER;
        assert_eq!(&*body(&mut files, later), b"changed!");
        fs::remove_file(root.join("a.txt")).unwrap();
        let gone = files.respond("GET", "/a.txt", true, later + REVALIDATE_AFTER);
        assert_eq!(gone.status, 404);
        assert_eq!(
            files.cached_bytes,
            files.cache.values().map(|c| c.body.len()).sum()
        );
        fs::remove_dir_all(base).unwrap();
    }

    /// Five files of the largest size served do not fit the cache together: each is still
    /// served, and the least recently served make room.
    #[test]
    fn cache_stays_within_its_bound() {
        let (base, root) = tree();
        for i in 0..5 {
            let big = fs::File::create(root.join(format!("big{i}.bin"))).unwrap();
            big.set_len(MAX_FILE_BYTES).unwrap();
        }
        let mut files = StaticFiles::new(Some(&root), true);
        let t0 = Instant::now();
        for i in 0..5u32 {
            let at = t0 + Duration::from_millis(u64::from(i));
            let response = files.respond("GET", &format!("/big{i}.bin"), true, at);
            assert_eq!(
                response.shared_body.map(|b| b.len() as u64),
                Some(MAX_FILE_BYTES)
            );
            assert!(
                files.cached_bytes <= MAX_CACHE_BYTES,
                "{}",
                files.cached_bytes
            );
        }
        assert!(
            !files.cache.contains_key("big0.bin"),
            "the least recently served went"
        );
        assert!(files.cache.contains_key("big4.bin"));
        fs::remove_dir_all(base).unwrap();
    }

    /// A FIFO under a served name is refused, and opening it never blocks.
    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_without_blocking() {
        let (base, root) = tree();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("pipe.txt"))
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(read_disk(&root, "pipe.txt").err(), Some(NOT_FOUND));
        let mut files = StaticFiles::new(Some(&root), true);
        assert_eq!(parse(&answer(&mut files, "GET", "/pipe.txt", true)).0, 404);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let mut files = StaticFiles::new(Some(Path::new("/nonexistent/wsloop")), true);
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", ""] {
            let (status, head, _) = parse(&answer(&mut files, method, "/", true));
            assert_eq!((status, hdr(&head, "Allow")), (405, "GET, HEAD"));
            assert_eq!(hdr(&head, "Connection"), "close");
        }
    }

    #[test]
    fn directories_missing_and_huge_files_are_404() {
        let (base, root) = tree();
        let big = fs::File::create(root.join("big.bin")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let mut files = StaticFiles::new(Some(&root), true);
        for target in ["/sub", "/sub/", "/nope.txt", "/sub/nope", "/big.bin"] {
            assert_eq!(
                parse(&answer(&mut files, "GET", target, true)).0,
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
            let mut files = StaticFiles::new(Some(&dir), true);
            assert!(!files.is_on_disk());
            let (status, head, body) = parse(&answer(&mut files, "GET", "/", true));
            assert_eq!((status, body.as_slice()), (200, EMBEDDED[0].1));
            assert_eq!(hdr(&head, "Content-Type"), "text/html; charset=utf-8");
            let (status, head, _) = parse(&answer(&mut files, "GET", "/favicon.svg", true));
            assert_eq!((status, hdr(&head, "Content-Type")), (200, "image/svg+xml"));
            for target in ["/a.txt", "/../html/index.html", "/%2e%2e/index.html"] {
                assert_eq!(parse(&answer(&mut files, "GET", target, true)).0, 404);
            }
        }
        fs::remove_dir_all(base).unwrap();
    }

    /// Without a folder, the demo page only when asked for: a library serves no files of its
    /// own by default.
    #[test]
    fn nothing_served_without_a_folder_or_the_demo_page() {
        let (base, root) = tree();
        for dir in [None, Some(base.join("missing")), Some(root.join("a.txt"))] {
            let mut files = StaticFiles::new(dir.as_deref(), false);
            assert!(!files.is_on_disk());
            for target in ["/", "/index.html", "/favicon.svg", "/a.txt"] {
                let (status, _, _) = parse(&answer(&mut files, "GET", target, true));
                assert_eq!(status, 404, "{dir:?} {target}");
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
}
