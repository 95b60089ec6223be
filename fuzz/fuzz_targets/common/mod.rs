//! Helpers shared by the fuzz targets: cutting an input into reads, limits taken from input
//! bytes, events reduced to comparable values, and small independent reference models (a
//! client-frame header parser, a one-pass decoder, a reader of what a server may send).
#![allow(dead_code)]

use std::ops::Range;

use wsloop_proto::{Event, Limits, MessageKind, ProtocolError};

/// Splits an input into a "plan" prefix that says where to cut and the data to cut.
///
/// Layout: `[ctl, gap_1 .. gap_n, data ..]` where `n = ctl & 0x0f`. Each gap is the length of
/// the next read (0 is allowed: an empty read). When bit 4 of `ctl` is set the gaps repeat
/// (each at least 1) until the data is used up, so `[0x11, 0x01]` is one byte per read;
/// otherwise whatever the gaps did not cover is the last read.
pub fn take_plan(input: &[u8]) -> (Plan, &[u8]) {
    let Some((&ctl, rest)) = input.split_first() else {
        return (Plan::default(), &[]);
    };
    let n = usize::from(ctl & 0x0f).min(rest.len());
    let (gaps, data) = rest.split_at(n);
    (
        Plan {
            gaps: gaps.iter().map(|&g| usize::from(g)).collect(),
            cycle: ctl & 0x10 != 0,
        },
        data,
    )
}

/// How to cut data into reads (see [`take_plan`]).
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub gaps: Vec<usize>,
    pub cycle: bool,
}

impl Plan {
    /// The reads as ranges of a buffer of `len` bytes: they cover it exactly, in order.
    pub fn ranges(&self, len: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        if self.cycle && !self.gaps.is_empty() {
            let mut i = 0;
            while at < len {
                let g = self.gaps[i % self.gaps.len()].max(1);
                let end = (at + g).min(len);
                out.push(at..end);
                at = end;
                i += 1;
            }
        } else {
            for &g in &self.gaps {
                let end = (at + g).min(len);
                out.push(at..end);
                at = end;
            }
            out.push(at..len);
        }
        debug_assert!(out.iter().map(|r| r.len()).sum::<usize>() == len);
        out
    }
}

/// One byte to a size: small sizes are common, the default is reachable.
pub fn size_from(b: u8) -> u64 {
    match b >> 6 {
        0 => u64::from(b & 0x3f),
        1 => u64::from(b & 0x3f) * 64,
        2 => u64::from(b & 0x3f) << 12,
        _ => 16 << 20,
    }
}

/// Limits from two input bytes (small limits included), and the rest of the input.
pub fn take_limits(input: &[u8]) -> (Limits, &[u8]) {
    match input {
        [a, b, rest @ ..] => (
            Limits {
                max_frame: size_from(*a),
                max_message: size_from(*b),
            },
            rest,
        ),
        _ => (Limits::default(), &[]),
    }
}

/// An event with its payload resolved: what a split must not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// A compressed message (RSV1): `true` for text. Its bytes are deflate data.
    Compressed(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
    Error(ProtocolError),
}

/// Resolves an event against the slice passed to the `decode` call that returned it, checking
/// that an in-input payload lies inside what that call consumed.
pub fn resolve(event: &Event, input: &[u8], consumed: usize) -> Got {
    let payload = match event {
        Event::Message(_, p) | Event::Compressed(_, p) | Event::Ping(p) | Event::Pong(p) => p,
        Event::Close { payload, .. } => payload,
    };
    if let wsloop_proto::Payload::Input(range) = payload {
        assert!(range.start <= range.end, "inverted range {range:?}");
        assert!(
            range.end <= consumed,
            "payload {range:?} outside the {consumed} consumed bytes"
        );
    }
    let bytes = payload.bytes(input).to_vec();
    match event {
        Event::Message(MessageKind::Text, _) => Got::Text(bytes),
        Event::Message(MessageKind::Binary, _) => Got::Binary(bytes),
        Event::Compressed(kind, _) => Got::Compressed(*kind == MessageKind::Text, bytes),
        Event::Ping(_) => Got::Ping(bytes),
        Event::Pong(_) => Got::Pong(bytes),
        Event::Close { code, .. } => Got::Close(code.map(|c| c.0), bytes),
    }
}

// -------------------------------------------------------------------------------------------
// Independent reference models (written from RFC 6455, not from crates/proto).
// -------------------------------------------------------------------------------------------

/// Close codes that may be sent (RFC 6455 §7.4.1–§7.4.2 and the IANA registry).
pub fn ref_sendable(code: u16) -> bool {
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

/// A close payload's verdict: `Ok(code)` or the error the decoder must report.
pub fn ref_close(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    if payload.len() == 1 {
        return Err(ProtocolError::InvalidClosePayload);
    }
    let code = u16::from(payload[0]) << 8 | u16::from(payload[1]);
    if !ref_sendable(code) {
        return Err(ProtocolError::InvalidClosePayload);
    }
    if std::str::from_utf8(&payload[2..]).is_err() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(Some(code))
}

/// A parsed client header from the reference parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefHeader {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub key: [u8; 4],
    pub len: u64,
    pub header_len: usize,
}

/// Reference client-header parser: `Ok(None)` while incomplete, errors as soon as the bytes
/// that decide them are present (first two bytes, then the 64-bit length).
pub fn ref_header(buf: &[u8], allowed_rsv: u8) -> Result<Option<RefHeader>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let rsv = (b0 >> 4) & 7;
    let opcode = b0 & 0x0f;
    // RFC 7692 §6.1: an extension's RSV bits only on the first frame of a data message.
    let allowed_rsv = if matches!(opcode, 1 | 2) { allowed_rsv } else { 0 };
    if rsv & !allowed_rsv != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(ProtocolError::ReservedOpcode);
    }
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::UnmaskedFrame);
    }
    let short = b1 & 0x7f;
    let fin = b0 & 0x80 != 0;
    if opcode >= 8 {
        if short > 125 {
            return Err(ProtocolError::ControlFrameTooLong);
        }
        if !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
    }
    let (len, ext) = match short {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(buf[2]) << 8 | u64::from(buf[3]), 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut len = 0u64;
            for &b in &buf[2..10] {
                len = len << 8 | u64::from(b);
            }
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthOverflow);
            }
            (len, 8)
        }
        n => (u64::from(n), 0),
    };
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let mut key = [0u8; 4];
    key.copy_from_slice(&buf[2 + ext..header_len]);
    Ok(Some(RefHeader {
        fin,
        rsv,
        opcode,
        key,
        len,
        header_len,
    }))
}

/// UTF-8 of a message so far: `Err` as soon as no continuation can make it valid, and at the
/// end of a message (`complete`) unless it is entirely valid.
fn ref_utf8_ok(bytes: &[u8], complete: bool) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && !complete,
    }
}

/// Reference decoder over a whole stream: the events, then the first error if any. Written
/// straight from RFC 6455 §5 and RFC 7692 §6 (one pass, no streaming state), so it shares no
/// code with `Decoder`. `compression`: permessage-deflate was negotiated (RSV1 allowed on the
/// first frame of a data message, whose payload is then not UTF-8 checked).
pub fn ref_decode(data: &[u8], limits: &Limits, compression: bool) -> Vec<Got> {
    let mut out = Vec::new();
    let mut at = 0;
    // The data message in progress: (is_text, compressed, assembled payload).
    let mut message: Option<(bool, bool, Vec<u8>)> = None;
    let allowed_rsv = if compression { 4 } else { 0 };
    loop {
        let rest = &data[at..];
        let h = match ref_header(rest, allowed_rsv) {
            Err(e) => {
                out.push(Got::Error(e));
                return out;
            }
            Ok(None) => return out,
            Ok(Some(h)) => h,
        };
        let control = h.opcode >= 8;
        let seq = if !control && h.len > limits.max_frame {
            Err(ProtocolError::FrameTooBig)
        } else {
            match (h.opcode, &message) {
                (0, None) => Err(ProtocolError::UnexpectedContinuation),
                (1 | 2, Some(_)) => Err(ProtocolError::ExpectedContinuation),
                (0, Some((_, _, so_far)))
                    if (so_far.len() as u64).saturating_add(h.len) > limits.max_message =>
                {
                    Err(ProtocolError::MessageTooBig)
                }
                (1 | 2, None) if h.len > limits.max_message => Err(ProtocolError::MessageTooBig),
                _ => Ok(()),
            }
        };
        if let Err(e) = seq {
            out.push(Got::Error(e));
            return out;
        }
        let start = at + h.header_len;
        let available = (data.len() - start) as u64;
        let have = h.len.min(available) as usize;
        let mut payload = data[start..start + have].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= h.key[i % 4];
        }
        let complete = have as u64 == h.len;
        if control {
            if !complete {
                return out;
            }
            out.push(match h.opcode {
                9 => Got::Ping(payload),
                10 => Got::Pong(payload),
                _ => match ref_close(&payload) {
                    Ok(code) => Got::Close(code, payload),
                    Err(e) => {
                        out.push(Got::Error(e));
                        return out;
                    }
                },
            });
        } else {
            let (is_text, compressed, mut so_far) = match message.take() {
                Some(m) => m,
                None => (h.opcode == 1, h.rsv & 4 != 0, Vec::new()),
            };
            so_far.extend_from_slice(&payload);
            let ends = complete && h.fin;
            if is_text && !compressed && !ref_utf8_ok(&so_far, ends) {
                out.push(Got::Error(ProtocolError::InvalidUtf8));
                return out;
            }
            if !complete {
                return out;
            }
            if h.fin {
                out.push(if compressed {
                    Got::Compressed(is_text, so_far)
                } else if is_text {
                    Got::Text(so_far)
                } else {
                    Got::Binary(so_far)
                });
            } else {
                message = Some((is_text, compressed, so_far));
            }
        }
        at = start + have;
    }
}

/// One frame a server sent, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefServerFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Reads the frames a server wrote (RFC 6455 §5.2, client role), the stream ending on a frame
/// boundary: `Err` for a masked frame, a length not minimally encoded or with the top bit
/// set, a truncated frame, or a reserved opcode. Written from the RFC, not from crates/proto.
pub fn ref_server_frames(mut bytes: &[u8]) -> Result<Vec<RefServerFrame>, String> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return Err(format!("a truncated header: {bytes:02x?}"));
        }
        let (b0, b1) = (bytes[0], bytes[1]);
        // §5.1: "A server MUST NOT mask any frames that it sends to the client."
        if b1 & 0x80 != 0 {
            return Err("a masked server frame".into());
        }
        let opcode = b0 & 0x0f;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return Err(format!("reserved opcode {opcode:#x}"));
        }
        let (len, at): (u64, usize) = match b1 & 0x7f {
            126 if bytes.len() >= 4 => {
                let len = u64::from(bytes[2]) << 8 | u64::from(bytes[3]);
                if len < 126 {
                    return Err(format!("16-bit length {len} not minimal"));
                }
                (len, 4)
            }
            127 if bytes.len() >= 10 => {
                let mut len = 0u64;
                for &b in &bytes[2..10] {
                    len = len << 8 | u64::from(b);
                }
                if len >> 63 != 0 || len <= 0xffff {
                    return Err(format!("64-bit length {len:#x} not minimal or too long"));
                }
                (len, 10)
            }
            126 | 127 => return Err("a truncated length".into()),
            n => (u64::from(n), 2),
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| at.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| format!("a truncated payload of {len} bytes"))?;
        frames.push(RefServerFrame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode,
            payload: bytes[at..end].to_vec(),
        });
        bytes = &bytes[end..];
    }
    Ok(frames)
}

/// A masked client frame (FIN set), as a client writes it, with a fixed masking key.
pub fn ref_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}
