//! A small binary codec for state handed from one process to another (a live connection
//! moving to a new server binary): fixed-width little-endian integers, length-prefixed byte
//! strings, durations in microseconds, socket addresses.
//!
//! The reader never panics and never allocates more than the input holds: every length is
//! checked against the bytes left before anything is taken, so a truncated or hostile
//! buffer is an error ([`CodecError`]), not a crash or a huge allocation. Formats built on it
//! carry their own version byte and check it first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended inside a value.
    Truncated,
    /// A value is out of its range, or bytes are left over: `what` names it.
    Invalid(&'static str),
    /// The format's version is not one this build reads.
    Version(u8),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Truncated => f.write_str("truncated state"),
            CodecError::Invalid(what) => write!(f, "invalid state: {what}"),
            CodecError::Version(v) => write!(f, "unknown state version {v}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Appends values to a byte buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// A boolean as one byte (0 or 1).
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Eight bytes, little-endian, two's complement.
    pub fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A length (as `u32`) then the bytes. Longer than `u32::MAX` is cut: no state handed
    /// over comes near it (every buffer is bounded by the limits).
    pub fn bytes(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.out
            .extend_from_slice(v.get(..len as usize).unwrap_or_default());
    }

    /// A duration in whole microseconds (rounded up: a deadline never comes early).
    pub fn duration(&mut self, d: Duration) {
        let micros = d.as_nanos().div_ceil(1000);
        self.u64(u64::try_from(micros).unwrap_or(u64::MAX));
    }

    /// An optional duration (presence byte first).
    pub fn opt_duration(&mut self, d: Option<Duration>) {
        self.bool(d.is_some());
        if let Some(d) = d {
            self.duration(d);
        }
    }

    /// A socket address: 4 or 6, the address bytes, the port.
    pub fn addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.out.extend_from_slice(&ip.octets());
            }
        }
        self.u16(addr.port());
    }

    /// An optional socket address (presence byte first).
    pub fn opt_addr(&mut self, addr: Option<SocketAddr>) {
        self.bool(addr.is_some());
        if let Some(addr) = addr {
            self.addr(addr);
        }
    }
}

/// Takes values off the front of a byte slice, checking every length first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `input`.
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] when fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.rest.len() {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| CodecError::Truncated)
    }

    /// One byte.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] at the end of the input.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        self.array::<1>().map(|[b]| b)
    }

    /// A boolean (0 or 1; anything else is invalid).
    ///
    /// # Errors
    /// Truncated input, or a byte other than 0 and 1.
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid("boolean")),
        }
    }

    /// Two bytes, little-endian.
    ///
    /// # Errors
    /// Truncated input.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    /// Four bytes, little-endian.
    ///
    /// # Errors
    /// Truncated input.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_le_bytes)
    }

    /// Eight bytes, little-endian.
    ///
    /// # Errors
    /// Truncated input.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Eight bytes, little-endian, two's complement.
    ///
    /// # Errors
    /// Truncated input.
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        self.array().map(i64::from_le_bytes)
    }

    /// A length-prefixed byte string, borrowed.
    ///
    /// # Errors
    /// Truncated input (the length says more than is left).
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()?;
        self.take(usize::try_from(len).map_err(|_| CodecError::Truncated)?)
    }

    /// A length-prefixed byte string no longer than `max`.
    ///
    /// # Errors
    /// Truncated input, or longer than `max` ([`CodecError::Invalid`] naming `what`).
    pub fn bytes_max(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let bytes = self.bytes()?;
        if bytes.len() > max {
            return Err(CodecError::Invalid(what));
        }
        Ok(bytes)
    }

    /// A duration in microseconds.
    ///
    /// # Errors
    /// Truncated input.
    pub fn duration(&mut self) -> Result<Duration, CodecError> {
        self.u64().map(Duration::from_micros)
    }

    /// An optional duration.
    ///
    /// # Errors
    /// Truncated input or a bad presence byte.
    pub fn opt_duration(&mut self) -> Result<Option<Duration>, CodecError> {
        Ok(match self.bool()? {
            true => Some(self.duration()?),
            false => None,
        })
    }

    /// A socket address.
    ///
    /// # Errors
    /// Truncated input or an unknown address family.
    pub fn addr(&mut self) -> Result<SocketAddr, CodecError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(CodecError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// An optional socket address.
    ///
    /// # Errors
    /// As [`Reader::addr`], or a bad presence byte.
    pub fn opt_addr(&mut self) -> Result<Option<SocketAddr>, CodecError> {
        Ok(match self.bool()? {
            true => Some(self.addr()?),
            false => None,
        })
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Checks that nothing is left: a format that reads fewer bytes than were written is
    /// not the format that wrote them.
    ///
    /// # Errors
    /// [`CodecError::Invalid`] when bytes are left over.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Invalid("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.u8(7);
        w.bool(true);
        w.u16(0xbeef);
        w.u32(123_456);
        w.u64(u64::MAX);
        w.i64(-42);
        w.bytes(b"hello");
        w.duration(Duration::from_nanos(1_500));
        w.opt_duration(None);
        w.addr("[::1]:9001".parse().unwrap());
        w.opt_addr(Some("10.0.0.1:80".parse().unwrap()));
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.u16(), Ok(0xbeef));
        assert_eq!(r.u32(), Ok(123_456));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.i64(), Ok(-42));
        assert_eq!(r.bytes(), Ok(&b"hello"[..]));
        assert_eq!(r.duration(), Ok(Duration::from_micros(2)), "rounded up");
        assert_eq!(r.opt_duration(), Ok(None));
        assert_eq!(r.addr(), Ok("[::1]:9001".parse().unwrap()));
        assert_eq!(r.opt_addr(), Ok(Some("10.0.0.1:80".parse().unwrap())));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn short_or_bad_input_is_an_error_never_a_panic() {
        let mut buf = Vec::new();
        Writer::new(&mut buf).bytes(&[1; 10]);
        for cut in 0..buf.len() {
            assert_eq!(Reader::new(&buf[..cut]).bytes(), Err(CodecError::Truncated));
        }
        // A length far beyond the input allocates nothing and fails.
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(Reader::new(&huge).bytes(), Err(CodecError::Truncated));
        assert!(Reader::new(&[2]).bool().is_err());
        assert!(Reader::new(&[5, 0, 0]).addr().is_err());
        assert_eq!(
            Reader::new(&[1, 2]).finish(),
            Err(CodecError::Invalid("trailing bytes"))
        );
        let mut r = Reader::new(&buf);
        assert_eq!(
            r.bytes_max(5, "test"),
            Err(CodecError::Invalid("test")),
            "over the caller's bound"
        );
    }
}
