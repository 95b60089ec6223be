//! WebSocket frames as a client sees them: masked client frames written by hand (so any byte
//! can be wrong on purpose), and the server's unmasked frames read back.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use wsloop::protocol::frame::MAX_HEADER_LEN;
use wsloop::protocol::{FrameHeader, OpCode};

use super::http::{is_reset, is_timeout};

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONT: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The masking key of every client frame built here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes one masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_raw(if fin { 0x80 } else { 0 } | opcode, payload)
}

/// Encodes one masked client frame with the first byte (FIN, RSV, opcode) given as is.
pub fn client_frame_raw(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header_only(first, payload.len() as u64);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// The masked header of a frame announcing `len` payload bytes, without the payload: what a
/// client sends before a payload the server should refuse to wait for.
pub fn header_only(first: u8, len: u64) -> Vec<u8> {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Binary,
        mask: Some(MASK),
        payload_len: len,
    };
    let mut buf = [0; MAX_HEADER_LEN];
    let n = header.encode(&mut buf);
    let mut out = buf[..n].to_vec();
    // The first byte as given, including the ones no valid header has.
    out[0] = first;
    out
}

/// A masked close frame with `code` and `reason`.
pub fn client_close(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(true, op::CLOSE, &payload)
}

/// One server frame read from `r`: (first byte, payload); `None` if the bytes end or the
/// read fails first.
pub fn read_server_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    // Both header bytes in one read: readers of floods of tiny frames spend their time here.
    let mut head = [0u8; 2];
    r.read_exact(&mut head).ok()?;
    read_frame_rest(r, head).ok()
}

/// The rest of a server frame whose first two bytes were `head`: (first byte, payload).
fn read_frame_rest(r: &mut impl Read, head: [u8; 2]) -> io::Result<(u8, Vec<u8>)> {
    let [first, second] = head;
    assert_eq!(second & 0x80, 0, "server frames must not be masked");
    let len = match second & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((first, payload))
}

/// Splits server bytes into frames `(first byte, payload)`; panics on a partial frame.
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let left = bytes.len();
        let frame = read_server_frame(&mut bytes)
            .unwrap_or_else(|| panic!("a partial frame in the last {left} bytes"));
        frames.push(frame);
    }
    frames
}

/// What the next read on a raw connection produced.
#[derive(Debug)]
pub enum Next {
    /// A whole server frame: (first byte, payload).
    Frame(u8, Vec<u8>),
    /// The server closed TCP (EOF or reset).
    Eof,
    /// Nothing arrived in time.
    Timeout,
}

/// Reads one server frame, waiting at most `wait` for its first byte (and 10 s for the
/// rest); leaves the stream's read timeout at 10 s.
pub fn next_frame(stream: &mut TcpStream, wait: Duration) -> Next {
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .expect("read timeout");
    let mut first = [0u8; 1];
    let got = loop {
        match stream.read(&mut first) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    match got {
        Ok(0) => Next::Eof,
        Ok(_) => {
            let mut second = [0u8; 1];
            let rest = stream
                .read_exact(&mut second)
                .and_then(|()| read_frame_rest(stream, [first[0], second[0]]));
            match rest {
                Ok((first, payload)) => Next::Frame(first, payload),
                Err(e) => panic!("server frame cut short: {e}"),
            }
        }
        Err(e) if is_timeout(&e) => Next::Timeout,
        Err(e) if is_reset(&e) => Next::Eof,
        Err(e) => panic!("read: {e}"),
    }
}

/// The code of a close frame's payload (1005 when it has none, RFC 6455 §7.1.5).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => 1005,
    }
}

/// Reads frames until a close frame arrives; returns its status code, if any.
pub fn expect_close(stream: &mut impl Read) -> Option<u16> {
    loop {
        let (first, payload) = read_server_frame(stream)?;
        if first & 0x0f == op::CLOSE {
            return Some(close_code(&payload));
        }
    }
}

/// A payload of `len` bytes (at least 8) starting with `seq` in 8 decimal digits, so a
/// reader can tell which message arrived and in what order.
pub fn numbered(seq: usize, len: usize) -> Vec<u8> {
    let mut payload = format!("{seq:08}").into_bytes();
    payload.resize(len, b'.');
    payload
}

/// The sequence number of a [`numbered`] payload (0 when it has none).
pub fn seq_of(payload: &[u8]) -> usize {
    payload
        .get(..8)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}
