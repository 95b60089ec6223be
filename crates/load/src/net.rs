//! Sockets: loopback-only targets, non-blocking connects (optionally from a chosen 127.x
//! source address), opening many connections with bounded concurrency, and closing them.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::client::{encode_close, parse_upgrade_response, write_upgrade_request, XorShift};
use wsloop_proto::deflate::DeflateParams;

/// Where the load goes: a `ws://` URL on a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The socket address (always loopback).
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// The request path (with query), `/` when the URL has none.
    pub path: String,
}

impl Target {
    /// Parses `ws://HOST[:PORT][/PATH]`. HOST is `localhost`, an IPv4 address or a bracketed
    /// IPv6 address, and must be loopback: the load generator talks to this machine only.
    ///
    /// # Errors
    /// `InvalidInput` for another scheme (`wss://` included), a malformed URL, or an address
    /// that is not loopback.
    pub fn parse(url: &str) -> io::Result<Target> {
        let invalid =
            |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid("only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or("/"),
            ),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
            (ip, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
            None => 80,
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| invalid("host must be an IP address or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(invalid("refusing a non-loopback address"));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Linux's `EINPROGRESS`: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;

/// Starts a non-blocking TCP connect to `addr`, bound first to `source` when given; Nagle
/// off when `nodelay`.
///
/// # Errors
/// Socket creation, bind (`AddrInUse` when the source port is taken) or an immediate connect
/// failure.
pub fn connect_nonblocking(
    addr: SocketAddr,
    source: Option<SocketAddr>,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(source) = source {
        socket.bind(&source.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket));
    if nodelay {
        stream.set_nodelay(true)?;
    }
    Ok(stream)
}

/// Which source address connection `index` binds to: `base` plus `index / per_source`
/// (`None`: let the kernel choose). Stays within 127.0.0.0/8.
pub fn source_for(index: usize, sources: Option<(Ipv4Addr, usize)>) -> Option<IpAddr> {
    let (base, per) = sources?;
    let step = (index / per.max(1)) as u32;
    let ip = Ipv4Addr::from(u32::from(base).wrapping_add(step));
    ip.is_loopback().then_some(IpAddr::V4(ip))
}

/// The first source port tried on each source address: below Linux's ephemeral range
/// (32768–60999 by default), where only explicitly bound services live.
pub const FIRST_SOURCE_PORT: u16 = 10_000;

/// Hands out explicit source ports, one counter per source address.
///
/// Why not `bind(ip, 0)` or a plain `connect`: the kernel's ephemeral-port search scans the
/// range port by port, and once ~14 000 connections to one destination hold its preferred
/// half, every further connect scans thousands of ports under locks (seen here: 19 000
/// connections took 70 s and 25 s of kernel time). An explicit port binds in O(1).
#[derive(Debug, Default)]
struct PortPicker {
    next: Vec<u16>,
}

impl PortPicker {
    /// Binds and connects from `ip`, trying successive ports past any in use.
    fn connect(&mut self, target: SocketAddr, ip: IpAddr, slot: usize) -> io::Result<TcpStream> {
        if self.next.len() <= slot {
            self.next.resize(slot + 1, FIRST_SOURCE_PORT);
        }
        let Some(next) = self.next.get_mut(slot) else {
            return Err(io::Error::other("no source port slot"));
        };
        let mut last = io::Error::from(io::ErrorKind::AddrInUse);
        for _ in 0..256 {
            let port = *next;
            if port == u16::MAX {
                break;
            }
            *next = port + 1;
            match connect_nonblocking(target, Some(SocketAddr::new(ip, port)), true) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                other => return other,
            }
        }
        Err(last)
    }
}

/// How [`open_many`] opens its connections.
#[derive(Debug, Clone)]
pub struct OpenPlan {
    /// How many connections.
    pub count: usize,
    /// Most connections between `connect` and `101` at once.
    pub max_pending: usize,
    /// Source addresses: (first, connections per address); `None` lets the kernel choose.
    pub sources: Option<(Ipv4Addr, usize)>,
    /// One connection's budget from `connect` to `101`.
    pub attempt_timeout: Duration,
    /// Budget for the whole opening.
    pub total_timeout: Duration,
    /// Offer permessage-deflate.
    pub deflate: bool,
}

/// Why connections failed to open, by stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenFailures {
    /// Socket, bind or TCP connect failures (refused, no file descriptors, ...).
    pub connect: u64,
    /// Bad or refused upgrade answers (e.g. `503` over `--max-conns`), or closed early.
    pub handshake: u64,
    /// Attempts that ran out of time.
    pub timeout: u64,
    /// The first failure's description, for the report.
    pub first: Option<String>,
}

impl OpenFailures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.handshake + self.timeout
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(what());
        }
    }
}

/// An open WebSocket connection, registered in the poll with its index as token.
#[derive(Debug)]
pub struct Opened {
    /// The socket (non-blocking, `READABLE | WRITABLE`).
    pub stream: TcpStream,
    /// WebSocket bytes that arrived with the `101` answer: feed them first.
    pub leftover: Vec<u8>,
    /// permessage-deflate, when offered and accepted.
    pub deflate: Option<DeflateParams>,
}

/// What [`open_many`] achieved.
#[derive(Debug)]
pub struct OpenOutcome {
    /// One slot per requested connection; `None` where it failed.
    pub conns: Vec<Option<Opened>>,
    /// Failures by stage.
    pub failures: OpenFailures,
    /// Wall time of the whole opening.
    pub elapsed: Duration,
}

impl OpenOutcome {
    /// Connections established.
    pub fn established(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }
}

/// A connection between `connect` and `101`.
struct Pending {
    index: usize,
    stream: TcpStream,
    key: String,
    request: Vec<u8>,
    written: usize,
    connected: bool,
    response: Vec<u8>,
    started: Instant,
    /// permessage-deflate was offered.
    deflate: bool,
}

enum Step {
    Wait,
    Done(Vec<u8>, Option<DeflateParams>),
    Failed(Stage, String),
}

#[derive(Clone, Copy)]
enum Stage {
    Connect,
    Handshake,
}

impl Pending {
    /// Advances on readiness: finish the connect, send the request, read the answer.
    fn advance(&mut self, buf: &mut [u8]) -> Step {
        if !self.connected {
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Step::Failed(Stage::Connect, e.to_string()),
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Step::Wait,
                Err(e) => return Step::Failed(Stage::Connect, e.to_string()),
            }
        }
        while let Some(rest) = self.request.get(self.written..).filter(|r| !r.is_empty()) {
            match self.stream.write(rest) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(Stage::Connect, e.to_string()),
            }
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Step::Failed(Stage::Handshake, "closed before 101".into()),
                Ok(n) => {
                    self.response
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    match parse_upgrade_response(&self.response, &self.key, self.deflate) {
                        Ok(Some(up)) => {
                            let leftover = self.response.get(up.head_len..).unwrap_or_default();
                            return Step::Done(leftover.to_vec(), up.deflate);
                        }
                        Ok(None) => {}
                        Err(e) => return Step::Failed(Stage::Handshake, e.to_string()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(Stage::Handshake, e.to_string()),
            }
        }
    }
}

/// Opens `plan.count` WebSocket connections — connection `i` to `targets[i % targets.len()]` — at most `plan.max_pending` at a
/// time, on `poll`: connection `i` stays registered with `Token(i)`.
///
/// # Errors
/// Only a failing `poll`; connection failures are counted in the outcome.
pub fn open_many(
    poll: &mut Poll,
    targets: &[Target],
    plan: &OpenPlan,
    rng: &mut XorShift,
) -> io::Result<OpenOutcome> {
    let start = Instant::now();
    let mut conns: Vec<Option<Opened>> = (0..plan.count).map(|_| None).collect();
    let mut failures = OpenFailures::default();
    // Pending connections, indexed by `token - 0` through a side table of slots.
    let mut pending: Vec<Option<Pending>> = (0..plan.count).map(|_| None).collect();
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_sweep = Instant::now();
    let mut ports = PortPicker::default();
    let deadline = start + plan.total_timeout;
    loop {
        while active.len() < plan.max_pending.max(1) && next < plan.count {
            let index = next;
            next += 1;
            let Some(target) = targets.get(index % targets.len().max(1)) else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target"));
            };
            let connected = match source_for(index, plan.sources) {
                Some(ip) => {
                    let slot = index / plan.sources.map_or(1, |(_, per)| per.max(1));
                    ports.connect(target.addr, ip, slot)
                }
                None => connect_nonblocking(target.addr, None, true),
            };
            let mut stream = match connected {
                Ok(s) => s,
                Err(e) => {
                    failures.connect += 1;
                    failures.note(|| format!("connect: {e}"));
                    continue;
                }
            };
            if let Err(e) = poll.registry().register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                failures.connect += 1;
                failures.note(|| format!("register: {e}"));
                continue;
            }
            let key = rng.handshake_key();
            let mut request = Vec::with_capacity(160);
            write_upgrade_request(&mut request, &target.host, &target.path, &key, plan.deflate);
            if let Some(slot) = pending.get_mut(index) {
                *slot = Some(Pending {
                    index,
                    stream,
                    key,
                    request,
                    written: 0,
                    connected: false,
                    response: Vec::new(),
                    started: Instant::now(),
                    deflate: plan.deflate,
                });
                active.push(index);
            }
        }
        if active.is_empty() && next >= plan.count {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            for index in active.drain(..) {
                if let Some(mut p) = pending.get_mut(index).and_then(Option::take) {
                    let _ = poll.registry().deregister(&mut p.stream);
                    failures.timeout += 1;
                    failures.note(|| "opening timed out".into());
                }
            }
            // Never started: count as timed out too.
            let never = (plan.count - next) as u64;
            failures.timeout += never;
            break;
        }
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut finished = false;
        for event in events.iter() {
            let index = event.token().0;
            let Some(slot) = pending.get_mut(index) else {
                continue;
            };
            let Some(p) = slot.as_mut() else {
                // Already open: keep what arrives (a server ping, say) for the caller, or the
                // edge-triggered event would be lost.
                let entry = conns.get_mut(index);
                if let Some(open) = entry.and_then(|c| c.as_mut()) {
                    if let Err(why) = stash_early(open, &mut buf) {
                        if let Some(mut gone) = conns.get_mut(index).and_then(Option::take) {
                            let _ = poll.registry().deregister(&mut gone.stream);
                        }
                        failures.handshake += 1;
                        failures.note(|| why);
                    }
                }
                continue;
            };
            match p.advance(&mut buf) {
                Step::Wait => {}
                Step::Done(leftover, deflate) => {
                    if let (Some(p), Some(out)) = (slot.take(), conns.get_mut(index)) {
                        *out = Some(Opened {
                            stream: p.stream,
                            leftover,
                            deflate,
                        });
                    }
                    finished = true;
                }
                Step::Failed(stage, why) => {
                    match stage {
                        Stage::Connect => failures.connect += 1,
                        Stage::Handshake => failures.handshake += 1,
                    }
                    failures.note(|| why.clone());
                    if let Some(mut p) = slot.take() {
                        let _ = poll.registry().deregister(&mut p.stream);
                    }
                    finished = true;
                }
            }
        }
        let sweep = last_sweep.elapsed() >= Duration::from_millis(100);
        if sweep {
            last_sweep = Instant::now();
            for &index in &active {
                let slot = pending.get_mut(index);
                let expired = slot
                    .as_ref()
                    .and_then(|s| s.as_ref())
                    .is_some_and(|p| p.started.elapsed() > plan.attempt_timeout);
                if expired {
                    if let Some(mut p) = slot.and_then(Option::take) {
                        let _ = poll.registry().deregister(&mut p.stream);
                        failures.timeout += 1;
                        failures.note(|| format!("connection {} timed out", p.index));
                    }
                    finished = true;
                }
            }
        }
        if finished {
            active.retain(|&i| pending.get(i).is_some_and(Option::is_some));
        }
    }
    Ok(OpenOutcome {
        conns,
        failures,
        elapsed: start.elapsed(),
    })
}

/// Reads what an already open connection received while others are still opening.
fn stash_early(open: &mut Opened, buf: &mut [u8]) -> Result<(), String> {
    const CAP: usize = 1 << 20;
    while open.leftover.len() < CAP {
        match open.stream.read(buf) {
            Ok(0) => return Err("closed right after the upgrade".into()),
            Ok(n) => open
                .leftover
                .extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after the upgrade: {e}")),
        }
    }
    Ok(())
}

/// From how many connections on an IPv4 target [`default_sources`] binds explicit source
/// addresses and ports.
pub const SPREAD_FROM: usize = 4096;

/// The source plan for `count` connections to `target`: `base` (or 127.0.0.1 once `count`
/// reaches [`SPREAD_FROM`]) with a new address every `per_source` connections; `None` (the
/// kernel chooses) for fewer connections or an IPv6 target.
pub fn default_sources(
    target: SocketAddr,
    count: usize,
    base: Option<Ipv4Addr>,
    per_source: usize,
) -> Option<(Ipv4Addr, usize)> {
    if !target.is_ipv4() {
        return None;
    }
    match base {
        Some(base) => Some((base, per_source.max(1))),
        None if count >= SPREAD_FROM => Some((Ipv4Addr::LOCALHOST, per_source.max(1))),
        None => None,
    }
}

/// Closes connections politely: a masked close frame (1000) on each, then reads and discards
/// until the server closes TCP (it closes first, so the TIME-WAIT stays on its side), for at
/// most `wait`. Returns how many closed cleanly. Pass only streams at a frame boundary.
pub fn close_all(
    poll: &mut Poll,
    streams: &mut [Option<TcpStream>],
    rng: &mut XorShift,
    wait: Duration,
) -> usize {
    let mut frame = Vec::with_capacity(8);
    let mut open = 0usize;
    for slot in streams.iter_mut() {
        let Some(stream) = slot.as_mut() else {
            continue;
        };
        frame.clear();
        encode_close(&mut frame, 1000, rng.mask_key());
        if matches!(stream.write(&frame), Ok(n) if n == frame.len()) {
            open += 1;
        } else if let Some(mut s) = slot.take() {
            let _ = poll.registry().deregister(&mut s);
        }
    }
    let mut clean = 0;
    let deadline = Instant::now() + wait;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if poll.poll(&mut events, Some(left)).is_err() {
            break;
        }
        for event in events.iter() {
            let Some(slot) = streams.get_mut(event.token().0) else {
                continue;
            };
            let Some(stream) = slot.as_mut() else {
                continue;
            };
            let done = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break Some(true),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break Some(false),
                }
            };
            if let Some(ok) = done {
                clean += usize::from(ok);
                open -= 1;
                if let Some(mut s) = slot.take() {
                    let _ = poll.registry().deregister(&mut s);
                }
            }
        }
    }
    for slot in streams.iter_mut() {
        if let Some(mut s) = slot.take() {
            let _ = poll.registry().deregister(&mut s);
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:9001/chat?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/chat?x=1");
        assert_eq!(t.host, "127.0.0.1:9001");
        let t = Target::parse("ws://localhost:80").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        let t = Target::parse("ws://[::1]:9/").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(Target::parse("ws://127.3.2.1").unwrap().addr.port(), 80);
    }

    #[test]
    fn refuses_everything_else() {
        for url in [
            "ws://10.0.0.1:9001/",
            "ws://192.168.1.1/",
            "ws://8.8.8.8:80/",
            "ws://[2001:db8::1]:80/",
            "ws://example.com/",
            "wss://127.0.0.1/",
            "http://127.0.0.1/",
            "ws://127.0.0.1:notaport/",
        ] {
            let err = Target::parse(url).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{url}");
        }
    }

    #[test]
    fn sources_rotate_within_loopback() {
        let plan = Some((Ipv4Addr::new(127, 0, 0, 1), 20_000));
        assert_eq!(source_for(5, None), None);
        assert_eq!(source_for(0, plan), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_for(19_999, plan), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_for(20_000, plan), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(
            source_for(5, Some((Ipv4Addr::new(127, 255, 255, 255), 1))),
            None
        );
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(default_sources(v4, 10, None, 20_000), None);
        assert_eq!(
            default_sources(v4, SPREAD_FROM, None, 20_000),
            Some((Ipv4Addr::LOCALHOST, 20_000))
        );
        let base = Ipv4Addr::new(127, 0, 0, 9);
        assert_eq!(default_sources(v4, 1, Some(base), 5), Some((base, 5)));
        assert_eq!(default_sources(v6, 50_000, Some(base), 5), None);
    }
}
