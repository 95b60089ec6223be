//! Trusted proxies and the real client address behind them (`Forwarded`, RFC 7239, and
//! `X-Forwarded-For`).
//!
//! # Contract
//! Forwarding headers are believed only as far as they were written by trusted proxies: the
//! socket's peer must be trusted for any header to count, and each further hop must be
//! trusted for the entry to its left to count. The walk runs from the right (the entry the
//! nearest proxy appended) to the left and stops at the first address outside the trusted
//! networks: that is the client. Anything a client wrote itself lies further left and is never
//! read, so it cannot spoof an address. An entry that is unknown, obfuscated or malformed
//! stops the walk at the last trusted hop: garbage is never believed.
//!
//! The header list is parsed from the right, so a client's malformed text (say an unclosed
//! quote) to the left of what the proxies appended cannot hide their entries.
//!
//! Exactly one header is read, the one the operator names ([`ForwardedHeader`]): a proxy that
//! appends to `X-Forwarded-For` passes a client's own `Forwarded` header through untouched
//! (nginx, HAProxy and AWS ALB all do), so believing both would let a client name its own
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use wsloop_proto::handshake::RequestHead;

/// An IPv4 or IPv6 network in CIDR notation, e.g. `10.0.0.0/8`, `::1/128`, or a bare address
/// (= /32 or /128), naming the proxies whose forwarding headers are believed.
///
/// Host bits below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`), and an
/// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps,
/// so either spelling matches both forms of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, host bits cleared.
    addr: IpAddr,
    /// Leading bits that must match: at most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after `/` is not a decimal number within the family's bit count.
    BadPrefix,
}

impl std::fmt::Display for CidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CidrError::BadAddress => "not an IP address or network",
            CidrError::BadPrefix => "network prefix length out of range",
        })
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| CidrError::BadPrefix)?
            }
            Some(_) => return Err(CidrError::BadPrefix),
        };
        if prefix > bits {
            return Err(CidrError::BadPrefix);
        }
        Ok(Cidr::new(addr, prefix))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The network of `prefix` leading bits of `addr` (`prefix` already checked).
    fn new(addr: IpAddr, prefix: u8) -> Cidr {
        match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Cidr::new(IpAddr::V4(v4), prefix - 96),
                _ => Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix))),
                    prefix,
                },
            },
            IpAddr::V4(v4) => Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix))),
                prefix,
            },
        }
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, as a
    /// dual-stack socket reports IPv4 peers) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix) == net.into(),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == net.into()
            }
            _ => false,
        }
    }
}

/// The IPv4 netmask of `prefix` bits.
fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(prefix.into()))
        .unwrap_or(0)
}

/// The IPv6 netmask of `prefix` bits.
fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(prefix.into()))
        .unwrap_or(0)
}

/// The one forwarding header whose entries are believed from trusted proxies
/// (`--forwarded-header`): the one they write. The other is ignored entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (what nginx, HAProxy and AWS ALB append to).
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

impl FromStr for ForwardedHeader {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<ForwardedHeader, &'static str> {
        if s.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(ForwardedHeader::XForwardedFor)
        } else if s.eq_ignore_ascii_case("forwarded") {
            Ok(ForwardedHeader::Forwarded)
        } else {
            Err("expected x-forwarded-for or forwarded")
        }
    }
}

/// The client address to believe for a request that arrived from `peer` with `list`, the
/// value of the `header` the trusted proxies write: if `peer` is not in `trusted`, `peer`
/// itself; otherwise walk the entries — `Forwarded`'s `for=` values (RFC 7239: quoted,
/// `[v6]:port`, `_obfuscated`/`unknown` → stop and use the last trusted hop's address), or
/// `X-Forwarded-For`'s comma list — from right to left, skipping addresses in `trusted`, and
/// return the first one that is not trusted (or the left-most if all are trusted). Malformed
/// entries stop the walk and return the last good (trusted) address — never trust garbage.
///
/// Several header lines of the same name must be joined with `,` (RFC 9110 §5.3), in order.
/// Empty list elements are skipped, as the list syntax allows. A `Forwarded` element without
/// `for=` stops the walk like `for=unknown`. `X-Forwarded-For` entries may carry a port
/// (`192.0.2.1:80`, `[2001:db8::1]:80`). Addresses are returned as written (an IPv4-mapped
/// IPv6 peer stays one).
pub(crate) fn client_ip(
    peer: IpAddr,
    trusted: &[Cidr],
    header: ForwardedHeader,
    list: &str,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut last = peer;
    for hop in Hops::new(list, header) {
        match hop {
            Some(ip) if is_trusted(ip) => last = ip,
            Some(ip) => return ip,
            None => return last,
        }
    }
    last
}

/// The address of the client behind a request from `peer`: the `header` believed from
/// `trusted` proxies (joined over its lines, RFC 9110 §5.3, and walked by [`client_ip`]);
/// without one, or when the request has none, `peer` itself. The port is the peer's when the
/// address is, else 0 (unknown).
pub(crate) fn client_addr(
    peer: SocketAddr,
    req: &RequestHead<'_, '_>,
    trusted: &[Cidr],
    header: Option<ForwardedHeader>,
) -> SocketAddr {
    let Some(header) = header else {
        return peer;
    };
    let values: Vec<&str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(header.name()))
        .map(|h| h.value)
        .collect();
    if values.is_empty() {
        return peer;
    }
    let list = values.join(", ");
    let ip = client_ip(peer.ip(), trusted, header, &list);
    SocketAddr::new(ip, if ip == peer.ip() { peer.port() } else { 0 })
}

/// Optional white space around list elements and parameters.
const OWS: &[char] = &[' ', '\t'];

/// The entries of a forwarding header from right to left, empty ones skipped: `Some(ip)` for
/// an address, `None` for an entry that names none the walk may use (stop there).
struct Hops<'a> {
    /// The part of the list not yet visited; `None` once it is used up.
    rest: Option<&'a str>,
    /// `Forwarded` syntax (quoted strings, parameters) rather than `X-Forwarded-For`.
    forwarded: bool,
}

impl<'a> Hops<'a> {
    /// The hops of `list`, the value of a `header` header.
    fn new(list: &'a str, header: ForwardedHeader) -> Hops<'a> {
        Hops {
            rest: Some(list),
            forwarded: header == ForwardedHeader::Forwarded,
        }
    }
}

impl Iterator for Hops<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Option<IpAddr>> {
        loop {
            let rest = self.rest?;
            let split = if self.forwarded {
                rsplit_unquoted(rest, b',')
            } else {
                Some(match rest.rsplit_once(',') {
                    Some((before, last)) => (Some(before), last),
                    None => (None, rest),
                })
            };
            let Some((before, entry)) = split else {
                // An unterminated quoted string: nothing further left can be delimited.
                self.rest = None;
                return Some(None);
            };
            self.rest = before;
            let entry = entry.trim_matches(OWS);
            if !entry.is_empty() {
                return Some(if self.forwarded {
                    forwarded_for(entry)
                } else {
                    xff_entry(entry)
                });
            }
        }
    }
}

/// Splits `s` at its last `delim` outside quoted strings into `(before, after)`, `before`
/// being `None` when there is no such delimiter; `None` if a quoted string is unterminated.
///
/// Scanning from the right, a `"` outside a quoted string closes one, and a `"` inside one
/// opens it unless an odd number of backslashes precedes it (a quoted-pair `\"`).
fn rsplit_unquoted(s: &str, delim: u8) -> Option<(Option<&str>, &str)> {
    let bytes = s.as_bytes();
    let mut quoted = false;
    for (i, &byte) in bytes.iter().enumerate().rev() {
        if quoted {
            if byte == b'"' {
                let before = bytes.get(..i).unwrap_or_default();
                let backslashes = before.iter().rev().take_while(|&&b| b == b'\\').count();
                quoted = backslashes % 2 == 1;
            }
        } else if byte == b'"' {
            quoted = true;
        } else if byte == delim {
            // `delim` is ASCII, so both sides are on character boundaries.
            return Some((s.get(..i), s.get(i + 1..)?));
        }
    }
    (!quoted).then_some((None, s))
}

/// The address in one `Forwarded` element's `for=` parameter (`None`: unknown, obfuscated,
/// absent, repeated, or a malformed element).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut node = None;
    let mut rest = Some(element);
    while let Some(pairs) = rest {
        let (before, pair) = rsplit_unquoted(pairs, b';')?;
        rest = before;
        let pair = pair.trim_matches(OWS);
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if !is_token(name) {
            return None;
        }
        let value = param_value(value)?;
        // "Each parameter MUST NOT occur more than once per forwarded-element."
        if name.eq_ignore_ascii_case("for") && node.replace(value).is_some() {
            return None;
        }
    }
    node_ip(node?)
}

/// A parameter value: a token as is, or a valid quoted-string without its quotes (escapes
/// left in place: no node value contains one, so an escaped `for` value fails to parse).
fn param_value(value: &str) -> Option<&str> {
    if is_token(value) {
        return Some(value);
    }
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes = inner.bytes();
    while let Some(byte) = bytes.next() {
        let ok = match byte {
            b'\\' => bytes
                .next()
                .is_some_and(|b| b == b'\t' || (b >= b' ' && b != 0x7f)),
            b'"' | 0x7f => false,
            b => b == b'\t' || b >= b' ',
        };
        if !ok {
            return None;
        }
    }
    Some(inner)
}

/// Whether `s` is a non-empty RFC 9110 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The IP address of an RFC 7239 node: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]` or
/// `[2001:db8::1]:80`. `unknown`, `_obfuscated` names and anything else give `None`.
fn node_ip(node: &str) -> Option<IpAddr> {
    let (ip, port) = match node.strip_prefix('[') {
        Some(bracketed) => {
            let (v6, port) = bracketed.split_once(']')?;
            (IpAddr::V6(v6.parse().ok()?), port)
        }
        None => {
            let (v4, port) = node.find(':').map_or((node, ""), |i| node.split_at(i));
            (IpAddr::V4(v4.parse().ok()?), port)
        }
    };
    match port.strip_prefix(':') {
        None if port.is_empty() => Some(ip),
        // node-port = port / obfport: 1*5DIGIT, or "_" 1*(ALPHA / DIGIT / "." / "_" / "-").
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => Some(ip),
        Some(p) if p.len() > 1 && p.starts_with('_') && p.bytes().all(is_obf_char) => Some(ip),
        _ => None,
    }
}

/// A character of an obfuscated node name or port (RFC 7239 §6.3), `_` included.
fn is_obf_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// The address of one `X-Forwarded-For` entry: an IP, optionally with a port or in brackets.
fn xff_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let v6 = entry.strip_prefix('[')?.strip_suffix(']')?;
    v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;
    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/+8".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/0008".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!(" 10.0.0.0/8".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!("localhost".parse::<Cidr>(), Err(CidrError::BadAddress));
    }

    #[test]
    fn cidr_contains() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")));
        assert!(!ten.contains(ip("::10.1.2.3")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")));
        let doc: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(doc.contains(ip("2001:db8:ffff::1")));
        assert!(!doc.contains(ip("2001:db9::1")));
        assert!(!doc.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::1")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.9");
        // A client claiming to be someone else, directly.
        let spoof = "for=198.51.100.1";
        assert_eq!(client_ip(peer, &trusted, FWD, spoof), peer);
        assert_eq!(client_ip(peer, &trusted, XFF, "1.2.3.4"), peer);
        assert_eq!(client_ip(peer, &[], XFF, "1.2.3.4"), peer);
    }

    #[test]
    fn one_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let proxy = ip("10.0.0.2");
        // RFC 7239 §4 examples.
        let fwd = |h| client_ip(proxy, &trusted, FWD, h);
        assert_eq!(fwd("for=\"_gazonk\""), proxy);
        assert_eq!(
            fwd("For=\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd("for=192.0.2.43, for=198.51.100.17"),
            ip("198.51.100.17")
        );
        let xff = |h| client_ip(proxy, &trusted, XFF, h);
        assert_eq!(xff("192.0.2.43"), ip("192.0.2.43"));
        // The client prepended its own claim; the proxy appended the truth.
        assert_eq!(xff("6.6.6.6, 192.0.2.43"), ip("192.0.2.43"));
        // A trusted peer that sent no header at all.
        assert_eq!(client_ip(proxy, &trusted, XFF, ""), proxy);
        assert_eq!(xff(""), proxy);
    }

    #[test]
    fn chain_of_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1"]);
        let peer = ip("10.0.0.2");
        let xff = |h| client_ip(peer, &trusted, XFF, h);
        assert_eq!(
            xff("6.6.6.6, 198.51.100.7, 192.168.1.1"),
            ip("198.51.100.7")
        );
        assert_eq!(
            xff("198.51.100.7,192.168.1.1 ,10.9.9.9"),
            ip("198.51.100.7")
        );
        // All trusted: the left-most.
        assert_eq!(xff("192.168.1.1, 10.9.9.9"), ip("192.168.1.1"));
        // Two header lines joined by the caller, with empty elements.
        assert_eq!(
            xff("6.6.6.6, 198.51.100.7, , 192.168.1.1,"),
            ip("198.51.100.7")
        );
        let fwd = |h| client_ip(peer, &trusted, FWD, h);
        assert_eq!(
            fwd("for=6.6.6.6, for=198.51.100.7;proto=https, for=\"192.168.1.1:8443\";by=10.0.0.2"),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv6_forms() {
        let trusted = nets(&["::1", "fd00::/8", "10.0.0.0/8"]);
        let fwd = |peer, h| client_ip(ip(peer), &trusted, FWD, h);
        assert_eq!(fwd("::1", "for=\"[2001:db8::1]\""), ip("2001:db8::1"));
        assert_eq!(
            fwd("::1", "for=\"[2001:db8::1]:_port\", for=\"[fd00::5]:443\""),
            ip("2001:db8::1")
        );
        // A dual-stack socket reports an IPv4 proxy as IPv4-mapped.
        assert_eq!(fwd("::ffff:10.0.0.2", "for=192.0.2.1"), ip("192.0.2.1"));
        // IPv6 must be bracketed and quoted: "[" is no token character.
        assert_eq!(fwd("::1", "for=[2001:db8::1]"), ip("::1"));
        assert_eq!(fwd("::1", "for=\"2001:db8::1\""), ip("::1"));
        let xff = |h| client_ip(ip("fd00::1"), &trusted, XFF, h);
        assert_eq!(xff("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(xff("[2001:db8::1]:8080"), ip("2001:db8::1"));
        assert_eq!(xff("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(xff("192.0.2.1:8080, fd00::9"), ip("192.0.2.1"));
    }

    #[test]
    fn obfuscated_and_unknown_stop_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let fwd = |h| client_ip(peer, &trusted, FWD, h);
        assert_eq!(
            fwd("for=192.0.2.1, for=_hidden, for=10.0.0.7"),
            ip("10.0.0.7")
        );
        assert_eq!(fwd("for=192.0.2.1, for=unknown"), peer);
        assert_eq!(fwd("for=192.0.2.1, for=UNKNOWN;proto=http"), peer);
        assert_eq!(fwd("for=192.0.2.1, proto=https"), peer);
        assert_eq!(client_ip(peer, &trusted, XFF, "1.2.3.4, unknown"), peer);
    }

    #[test]
    fn garbage_is_never_believed() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let fwd = |h| client_ip(peer, &trusted, FWD, h);
        for garbage in [
            "for=192.0.2.1;for=198.51.100.1",
            "for=192.0.2.1 ;x",
            "for=\"192.0.2.1",
            "for=\"192.0.2.1\\\"",
            "for=192.0.2.1:65536x",
            "for=192.0.2.1:123456",
            "for=\"\\192.0.2.1\"",
            "for=192.0.2.01",
            "f@r=192.0.2.1",
            "for=192.0.2.1;host=\"a\"b\"",
            "for=\"[::1\"",
            "for=",
        ] {
            assert_eq!(fwd(garbage), peer, "{garbage}");
        }
        // Garbage behind a trusted hop stops at that hop.
        assert_eq!(
            fwd("for=192.0.2.1, for=bogus, for=10.0.0.3"),
            ip("10.0.0.3")
        );
        let xff = |h| client_ip(peer, &trusted, XFF, h);
        assert_eq!(xff("192.0.2.1, not-an-ip, 10.0.0.3"), ip("10.0.0.3"));
        assert_eq!(xff("192.0.2.1 10.0.0.3"), peer);
        assert_eq!(xff("1.2.3.4.5"), peer);
    }

    #[test]
    fn client_garbage_cannot_hide_the_proxys_entry() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        // The client sent `Forwarded: for="x` (unclosed quote); the proxy appended its entry.
        let joined = "for=\"x, for=192.0.2.1";
        assert_eq!(client_ip(peer, &trusted, FWD, joined), ip("192.0.2.1"));
        // Quoted commas and semicolons in other parameters do not split entries.
        let quoted = "for=192.0.2.1;host=\"a,b;c\\\"d\"";
        assert_eq!(client_ip(peer, &trusted, FWD, quoted), ip("192.0.2.1"));
    }

    #[test]
    fn header_names() {
        assert_eq!("X-Forwarded-For".parse(), Ok(XFF));
        assert_eq!("forwarded".parse(), Ok(FWD));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
        assert_eq!(XFF.name(), "x-forwarded-for");
        assert_eq!(FWD.name(), "forwarded");
    }
}
