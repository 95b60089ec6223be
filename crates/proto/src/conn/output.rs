//! Where a connection's bytes go: the caller's output (its send queue), written in order, and
//! the server frames the connection writes into it.

use crate::close::truncate_reason;
use crate::frame::{data_header, OpCode, MAX_HEADER_LEN};
use crate::CloseCode;

/// The caller's output for one connection: every byte the connection produces (HTTP answers,
/// frames) is pushed here, in order.
pub trait Output {
    /// Appends `parts` (a frame as header then payload pieces, or an HTTP answer), in order.
    fn push(&mut self, parts: &[&[u8]]);

    /// Appends a frame whose payload the caller may keep by move instead of copying it (a
    /// queue of owned chunks can take `payload` as is). The default copies.
    fn push_owned(&mut self, header: &[u8], payload: Vec<u8>) {
        self.push(&[header, &payload]);
    }
}

/// Plain bytes, in order: for tests, and for whoever wants a flat buffer.
impl Output for Vec<u8> {
    fn push(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.extend_from_slice(part);
        }
    }
}

/// Writes one unmasked, unfragmented server frame whose payload is `parts` joined (at most
/// two parts), RSV1 set when `compressed`.
pub(super) fn write_frame<O: Output + ?Sized>(
    out: &mut O,
    opcode: OpCode,
    compressed: bool,
    parts: &[&[u8]],
) {
    let len = parts.iter().map(|p| p.len()).sum();
    let header = Header::new(opcode, compressed, len);
    let mut all: [&[u8]; 3] = [header.bytes(), &[], &[]];
    for (slot, part) in all.iter_mut().skip(1).zip(parts) {
        *slot = part;
    }
    out.push(&all);
}

/// Writes one server frame like [`write_frame`], giving its payload away
/// ([`Output::push_owned`]: a queue of owned chunks keeps it instead of a copy).
pub(super) fn write_frame_owned<O: Output + ?Sized>(
    out: &mut O,
    opcode: OpCode,
    compressed: bool,
    payload: Vec<u8>,
) {
    let header = Header::new(opcode, compressed, payload.len());
    out.push_owned(header.bytes(), payload);
}

/// A server frame header.
struct Header {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    fn new(opcode: OpCode, compressed: bool, payload_len: usize) -> Header {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let len = data_header(opcode, compressed, payload_len, &mut bytes);
        Header { bytes, len }
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Writes a close frame with `code` and `reason` (cut to 123 bytes on a character boundary,
/// so the frame stays a legal control frame, §5.5).
pub(super) fn write_close<O: Output + ?Sized>(out: &mut O, code: CloseCode, reason: &str) {
    let reason = truncate_reason(reason);
    write_frame(
        out,
        OpCode::Close,
        false,
        &[&code.0.to_be_bytes(), reason.as_bytes()],
    );
}
