//! Sockets: loopback-only targets, and non-blocking connects, optionally from a chosen 127.x
//! source address and port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

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
pub struct PortPicker {
    next: Vec<u16>,
}

impl PortPicker {
    /// Binds and connects from `ip` (source address number `slot`), trying successive ports
    /// past any in use.
    ///
    /// # Errors
    /// As [`connect_nonblocking`]; `AddrInUse` when no port was free.
    pub fn connect(
        &mut self,
        target: SocketAddr,
        ip: IpAddr,
        slot: usize,
    ) -> io::Result<TcpStream> {
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
