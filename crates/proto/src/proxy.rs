//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2), sans-IO: a
//! load balancer in front of the server prepends it to tell the original client's address.
//!
//! # Contract
//! Call [`parse`] with the bytes received so far at the start of a connection, again after
//! every read, until it stops answering [`ProxyHeader::Partial`]:
//! - [`ProxyHeader::Found`] says how many bytes the header took (drop them; what follows is the
//!   client's first bytes) and, when the header names one, the original source address;
//! - [`ProxyHeader::Absent`] is decided from the first byte that can start neither signature
//!   (an HTTP request is `Absent` after its first byte), so a listener may make the header
//!   optional; the spec advises against that (a client could send its own header), so only do
//!   it when every peer is a trusted proxy;
//! - an error means the peer speaks the protocol wrongly: the spec says to drop the
//!   connection. Errors are reported as early as the bytes allow, never later than
//!   [`MAX_LEN`] bytes, so a caller never needs to buffer more than that.
//!
//! Strictness follows the spec: one space between v1 fields, no leading zeros, no lone CR or
//! LF, v2 version 2 only, the seven family bytes the spec lists. v2 TLVs are skipped unread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most bytes a v1 line may take, CRLF included (the spec's worst case,
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const MAX_V1_LEN: usize = 107;

/// Most bytes after the 16-byte v2 header that this parser accepts: addresses plus TLVs.
/// The spec allows 65535; real headers are a few dozen bytes, and a cap bounds the buffer.
pub const MAX_V2_BLOCK: usize = 1024;

/// The longest header [`parse`] accepts, of either version: the most a caller must buffer
/// before it gets an answer other than [`ProxyHeader::Partial`].
pub const MAX_LEN: usize = V2_HEADER + MAX_V2_BLOCK;

/// The v1 signature (the spec's identification rule uses these five bytes).
const V1_SIG: &[u8] = b"PROXY";
/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIG: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";
/// The fixed v2 header: signature, version/command, family/protocol, length.
const V2_HEADER: usize = 16;

/// What the bytes at the start of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not enough bytes yet to decide or to finish the header: read more and ask again.
    Partial,
    /// The stream does not start with a PROXY header (its first bytes match neither
    /// signature): every byte belongs to the client.
    Absent,
    /// A complete header of `len` bytes, to be dropped from the stream.
    Found {
        /// Bytes the header took, from the start of the buffer.
        len: usize,
        /// The original client address; `None` when the header carries none the server can
        /// use (v1 `UNKNOWN`, v2 `LOCAL`, `UNSPEC`, UDP or `AF_UNIX`): keep the socket's peer.
        source: Option<SocketAddr>,
    },
}

/// Why a PROXY header was refused; the spec says to drop the connection for any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A v1 line off the grammar: wrong protocol word, spacing or field count, a lone CR or
    /// LF, or bytes that are not ASCII.
    V1Malformed,
    /// No CRLF within the first [`MAX_V1_LEN`] bytes of a v1 line.
    V1TooLong,
    /// A v1 address that does not parse as the announced family (`TCP4`/`TCP6`).
    V1BadAddress,
    /// A v1 port that is not a decimal 0–65535 without sign or leading zero.
    V1BadPort,
    /// A v2 version nibble other than 2.
    V2BadVersion,
    /// A v2 command other than `LOCAL` (0) or `PROXY` (1).
    V2BadCommand,
    /// A v2 family/protocol byte the spec does not list.
    V2BadFamily,
    /// A v2 address block shorter than its family needs (12 bytes for IPv4, 36 for IPv6).
    V2Truncated,
    /// A v2 length over [`MAX_V2_BLOCK`].
    V2TooLong,
}

impl ProxyError {
    /// A short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::V1Malformed => "malformed PROXY v1 line",
            ProxyError::V1TooLong => "PROXY v1 line without CRLF in 107 bytes",
            ProxyError::V1BadAddress => "PROXY v1 address does not match its family",
            ProxyError::V1BadPort => "PROXY v1 port is not a decimal 0-65535",
            ProxyError::V2BadVersion => "PROXY v2 header with a version other than 2",
            ProxyError::V2BadCommand => "PROXY v2 command neither LOCAL nor PROXY",
            ProxyError::V2BadFamily => "PROXY v2 unknown family/protocol byte",
            ProxyError::V2Truncated => "PROXY v2 address block too short for its family",
            ProxyError::V2TooLong => "PROXY v2 header longer than 1040 bytes",
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ProxyError {}

/// Reads the PROXY header at the start of `buf`, the bytes received so far.
///
/// # Errors
/// A header that starts with a valid signature but breaks the spec: see [`ProxyError`].
pub fn parse(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if buf.starts_with(V1_SIG) {
        parse_v1(buf)
    } else if buf.starts_with(V2_SIG) {
        parse_v2(buf)
    } else if may_become(buf, V1_SIG) || may_become(buf, V2_SIG) {
        Ok(ProxyHeader::Partial)
    } else {
        Ok(ProxyHeader::Absent)
    }
}

/// Whether `buf` agrees with `pattern` on their common length (so more bytes could still
/// make `buf` start with `pattern`).
fn may_become(buf: &[u8], pattern: &[u8]) -> bool {
    buf.iter().zip(pattern).all(|(a, b)| a == b)
}

/// Version 1: `PROXY TCP4|TCP6 src dst sport dport\r\n` or `PROXY UNKNOWN[ anything]\r\n`.
fn parse_v1(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    // Reject a wrong protocol word as soon as it shows, not only at the CRLF.
    let after_sig = buf.get(V1_SIG.len()..).unwrap_or_default();
    let starts: [&[u8]; 4] = [b" TCP4 ", b" TCP6 ", b" UNKNOWN ", b" UNKNOWN\r"];
    if !starts.iter().any(|start| may_become(after_sig, start)) {
        return Err(ProxyError::V1Malformed);
    }
    let Some(cr) = find_crlf(buf)? else {
        return if buf.len() >= MAX_V1_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(ProxyHeader::Partial)
        };
    };
    let len = cr + 2;
    // Past "PROXY ", up to the CR; the check above guarantees the space.
    let line = buf.get(V1_SIG.len() + 1..cr).unwrap_or_default();
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::Found { len, source: None });
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed)?;
    let mut fields = line.split(' ');
    let mut field = || fields.next().ok_or(ProxyError::V1Malformed);
    let (proto, src, dst, src_port, dst_port) = (field()?, field()?, field()?, field()?, field()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed);
    }
    let src_ip = match proto {
        "TCP4" => {
            dst.parse::<Ipv4Addr>()
                .map_err(|_| ProxyError::V1BadAddress)?;
            IpAddr::V4(src.parse().map_err(|_| ProxyError::V1BadAddress)?)
        }
        "TCP6" => {
            dst.parse::<Ipv6Addr>()
                .map_err(|_| ProxyError::V1BadAddress)?;
            IpAddr::V6(src.parse().map_err(|_| ProxyError::V1BadAddress)?)
        }
        _ => return Err(ProxyError::V1Malformed),
    };
    let port = v1_port(src_port)?;
    v1_port(dst_port)?;
    Ok(ProxyHeader::Found {
        len,
        source: Some(SocketAddr::new(src_ip, port)),
    })
}

/// The index of the CR of the first CRLF within the first [`MAX_V1_LEN`] bytes, `None` if
/// there is none yet.
///
/// # Errors
/// A CR followed by anything but LF, or an LF without its CR: the spec forbids ending the line
/// on either alone, and no valid line contains them, so there is no point waiting.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let window = buf.get(..MAX_V1_LEN).unwrap_or(buf);
    for (i, &byte) in window.iter().enumerate() {
        match byte {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => return Err(ProxyError::V1Malformed),
                None => break,
            },
            b'\n' => return Err(ProxyError::V1Malformed),
            _ => {}
        }
    }
    Ok(None)
}

/// A v1 port: 1–5 ASCII digits, no leading zero (except `0` itself), at most 65535.
fn v1_port(field: &str) -> Result<u16, ProxyError> {
    let digits = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
    if !digits || (field.len() > 1 && field.starts_with('0')) {
        return Err(ProxyError::V1BadPort);
    }
    field.parse().map_err(|_| ProxyError::V1BadPort)
}

/// `PROXY` command nibble.
const CMD_PROXY: u8 = 0x1;
/// `LOCAL` command nibble.
const CMD_LOCAL: u8 = 0x0;
/// Family/protocol byte: TCP over IPv4.
const TCP4: u8 = 0x11;
/// Family/protocol byte: TCP over IPv6.
const TCP6: u8 = 0x21;

/// Version 2: the signature, then version/command, family/protocol, a big-endian length and
/// that many bytes of addresses and TLVs. Each fixed byte is checked as soon as it arrives.
fn parse_v2(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(ProxyHeader::Partial);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion);
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_PROXY && command != CMD_LOCAL {
        return Err(ProxyError::V2BadCommand);
    }
    let Some(&family) = buf.get(13) else {
        return Ok(ProxyHeader::Partial);
    };
    // LOCAL: "discard the protocol block including the family which is ignored".
    if command == CMD_PROXY && !matches!(family, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Err(ProxyError::V2BadFamily);
    }
    let Some(&[hi, lo]) = buf.get(14..V2_HEADER) else {
        return Ok(ProxyHeader::Partial);
    };
    let block_len = usize::from(u16::from_be_bytes([hi, lo]));
    if block_len > MAX_V2_BLOCK {
        return Err(ProxyError::V2TooLong);
    }
    let len = V2_HEADER + block_len;
    let Some(block) = buf.get(V2_HEADER..len) else {
        return Ok(ProxyHeader::Partial);
    };
    let source = match (command, family) {
        (CMD_PROXY, TCP4) => {
            let Some(&[a, b, c, d, _, _, _, _, p0, p1, ..]) = block.get(..12) else {
                return Err(ProxyError::V2Truncated);
            };
            let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            Some(SocketAddr::new(ip, u16::from_be_bytes([p0, p1])))
        }
        (CMD_PROXY, TCP6) => {
            // Source and destination addresses, then source and destination ports.
            let (Some(ip), Some(&[p0, p1, _, _])) = (block.first_chunk::<16>(), block.get(32..36))
            else {
                return Err(ProxyError::V2Truncated);
            };
            let ip = IpAddr::V6(Ipv6Addr::from(*ip));
            Some(SocketAddr::new(ip, u16::from_be_bytes([p0, p1])))
        }
        // LOCAL, UNSPEC, UDP and AF_UNIX: fall back to the real endpoints, as the spec allows.
        _ => None,
    };
    Ok(ProxyHeader::Found { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(len: usize, source: &str) -> Result<ProxyHeader, ProxyError> {
        Ok(ProxyHeader::Found {
            len,
            source: Some(source.parse().unwrap()),
        })
    }

    /// Every strict prefix of `header` is `Partial`, and `header` plus trailing bytes parses
    /// to `expected` (the trailing bytes are the client's, not the header's).
    fn check_all_prefixes(header: &[u8], expected: Result<ProxyHeader, ProxyError>) {
        for n in 0..header.len() {
            assert_eq!(
                parse(&header[..n]),
                Ok(ProxyHeader::Partial),
                "prefix of {n} bytes"
            );
        }
        assert_eq!(parse(header), expected);
        let mut more = header.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&more), expected);
    }

    #[test]
    fn v1_spec_example_tcp4() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        check_all_prefixes(line, found(line.len(), "192.168.0.1:56324"));
    }

    #[test]
    fn v1_tcp6_and_maximal_lines() {
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n";
        check_all_prefixes(line, found(line.len(), "[2001:db8::1]:65535"));
        let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(v4.len(), 56);
        assert_eq!(parse(v4), found(56, "255.255.255.255:65535"));
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let v6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(v6.len(), 104);
        assert_eq!(parse(v6.as_bytes()), found(104, &format!("[{full}]:65535")));
    }

    #[test]
    fn v1_unknown_short_and_worst_case() {
        let short = b"PROXY UNKNOWN\r\n";
        assert_eq!(short.len(), 15);
        check_all_prefixes(
            short,
            Ok(ProxyHeader::Found {
                len: 15,
                source: None,
            }),
        );
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let worst = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(worst.len(), MAX_V1_LEN);
        assert_eq!(
            parse(worst.as_bytes()),
            Ok(ProxyHeader::Found {
                len: 107,
                source: None
            })
        );
        // "The receiver must ignore anything presented before the CRLF."
        assert_eq!(
            parse(b"PROXY UNKNOWN not\xffparsed at all\r\n"),
            Ok(ProxyHeader::Found {
                len: 33,
                source: None
            })
        );
    }

    #[test]
    fn v1_too_long_without_crlf() {
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 93]].concat();
        assert_eq!(long.len(), 107);
        assert_eq!(parse(&long[..106]), Ok(ProxyHeader::Partial));
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        // A CRLF that would end at byte 108 is too late.
        let late = [&long[..106], b"\r\n"].concat();
        assert_eq!(parse(&late), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_malformed_lines() {
        let cases: [(&[u8], ProxyError); 17] = [
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n",
                ProxyError::V1BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n",
                ProxyError::V1BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n",
                ProxyError::V1BadPort,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 \r\n", ProxyError::V1BadPort),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 80\r\n",
                ProxyError::V1BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
                ProxyError::V1BadAddress,
            ),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", ProxyError::V1BadAddress),
            (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", ProxyError::V1BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ProxyError::V1BadAddress),
            (
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Malformed,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyError::V1Malformed),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                ProxyError::V1Malformed,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::V1Malformed),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                ProxyError::V1Malformed,
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Malformed,
            ),
            (b"PROXY UNKNOWNX\r\n", ProxyError::V1Malformed),
            (
                b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1Malformed,
            ),
        ];
        for (line, error) in cases {
            assert_eq!(parse(line), Err(error), "{}", line.escape_ascii());
        }
    }

    #[test]
    fn v1_errors_are_reported_early() {
        // The protocol word is wrong before any CRLF arrives.
        assert_eq!(parse(b"PROXY TCP5"), Err(ProxyError::V1Malformed));
        assert_eq!(parse(b"PROXY-"), Err(ProxyError::V1Malformed));
        // A lone LF inside the line.
        assert_eq!(parse(b"PROXY TCP4 1.2\n"), Err(ProxyError::V1Malformed));
        // A CR at the end of the bytes so far may still be followed by LF.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
            Ok(ProxyHeader::Partial)
        );
    }

    /// The 16-byte v2 header with `ver_cmd`, `family` and a block of `block.len()` bytes.
    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".to_vec();
        header.extend_from_slice(&[ver_cmd, family]);
        header.extend_from_slice(&(block.len() as u16).to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    #[test]
    fn v2_proxy_tcp4_as_haproxy_sends_it() {
        // Captured from haproxy: 172.19.0.1:42578 -> 172.19.0.3:80.
        let header = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c\
                       \xac\x13\x00\x01\xac\x13\x00\x03\xa6\x52\x00\x50";
        check_all_prefixes(header, found(28, "172.19.0.1:42578"));
    }

    #[test]
    fn v2_proxy_tcp4_with_tlvs() {
        // 192.0.2.1:1234 -> 198.51.100.2:443, then PP2_TYPE_ALPN "h2" and a NOOP TLV.
        let block = b"\xc0\x00\x02\x01\xc6\x33\x64\x02\x04\xd2\x01\xbb\
                      \x01\x00\x02h2\x04\x00\x03\x00\x00\x00";
        let header = v2(0x21, 0x11, block);
        assert_eq!(header.len(), 16 + 12 + 5 + 6);
        check_all_prefixes(&header, found(header.len(), "192.0.2.1:1234"));
    }

    #[test]
    fn v2_proxy_tcp6_with_tlv() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(b"\xc3\x50\x01\xbb"); // 50000, 443
        block.extend_from_slice(b"\x02\x00\x0bexample.com"); // PP2_TYPE_AUTHORITY
        let header = v2(0x21, 0x21, &block);
        check_all_prefixes(&header, found(16 + 36 + 14, "[2001:db8::1]:50000"));
    }

    #[test]
    fn v2_local_and_unsupported_families_keep_the_peer() {
        let none = |len| Ok(ProxyHeader::Found { len, source: None });
        // LOCAL (a health check) with no block, and with a block and any family byte.
        check_all_prefixes(&v2(0x20, 0x00, b""), none(16));
        assert_eq!(parse(&v2(0x20, 0x11, &[0; 12])), none(28));
        assert_eq!(parse(&v2(0x20, 0xff, b"")), none(16));
        // PROXY with UNSPEC, UDP over IPv4 and IPv6, AF_UNIX stream.
        assert_eq!(parse(&v2(0x21, 0x00, b"")), none(16));
        assert_eq!(parse(&v2(0x21, 0x12, &[1; 12])), none(28));
        assert_eq!(parse(&v2(0x21, 0x22, &[1; 36])), none(52));
        assert_eq!(parse(&v2(0x21, 0x31, &[0; 216])), none(232));
    }

    #[test]
    fn v2_malformed_headers() {
        // Version 1 in the high nibble, as soon as byte 13 arrives.
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])[..13]),
            Err(ProxyError::V2BadVersion)
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &[0; 12])),
            Err(ProxyError::V2BadVersion)
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(ProxyError::V2BadCommand)
        );
        assert_eq!(
            parse(&v2(0x21, 0x13, &[0; 12])[..14]),
            Err(ProxyError::V2BadFamily)
        );
        assert_eq!(
            parse(&v2(0x21, 0x41, &[0; 12])),
            Err(ProxyError::V2BadFamily)
        );
        // Address blocks shorter than the family needs.
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 11])),
            Err(ProxyError::V2Truncated)
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyError::V2Truncated)
        );
        assert_eq!(parse(&v2(0x21, 0x11, b"")), Err(ProxyError::V2Truncated));
    }

    #[test]
    fn v2_length_cap() {
        let at_cap = v2(0x21, 0x11, &[0; MAX_V2_BLOCK]);
        assert_eq!(parse(&at_cap), found(MAX_LEN, "0.0.0.0:0"));
        let mut over = at_cap;
        over[14..16].copy_from_slice(&1025u16.to_be_bytes());
        // Refused from the length field alone, without waiting for the block.
        assert_eq!(parse(&over[..16]), Err(ProxyError::V2TooLong));
        over[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&over[..16]), Err(ProxyError::V2TooLong));
    }

    #[test]
    fn absent_as_soon_as_no_signature_fits() {
        assert_eq!(parse(b"G"), Ok(ProxyHeader::Absent));
        assert_eq!(
            parse(b"GET /chat HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            Ok(ProxyHeader::Absent)
        );
        assert_eq!(parse(b""), Ok(ProxyHeader::Partial));
        assert_eq!(parse(b"PROX"), Ok(ProxyHeader::Partial));
        assert_eq!(parse(b"PROXI"), Ok(ProxyHeader::Absent));
        assert_eq!(parse(b"\r\n\r\n"), Ok(ProxyHeader::Partial));
        // An HTTP request with a blank first line is not the v2 signature.
        assert_eq!(parse(b"\r\n\r\nGET"), Ok(ProxyHeader::Absent));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Ok(ProxyHeader::Absent));
        // A TLS ClientHello.
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Ok(ProxyHeader::Absent));
    }
}
