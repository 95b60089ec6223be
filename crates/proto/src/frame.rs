//! Frame headers (RFC 6455 §5.2): decode from the 2–14 header bytes, on either end of the
//! connection ([`Role`]), and encode them.
//!
//! Every rule that can be decided from the header is decided here, before a payload byte is
//! touched: reserved bits, reserved opcodes, control-frame length and FIN, the 64-bit length's
//! top bit and the mask bit. Size limits, which depend on configuration and on the message in
//! progress, are checked by the decoder right after, still before buffering anything.

use super::error::ProtocolError;

/// A frame opcode (§5.2). Reserved opcodes are refused when parsing, so this enum is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: a UTF-8 text message (first frame).
    Text,
    /// 0x2: a binary message (first frame).
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode with wire value `bits`; `None` for the reserved ones (§5.2).
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed between fragments.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The longest header a frame can have: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// The longest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether this is the final fragment of its message.
    pub fin: bool,
    /// RSV1–RSV3 as the low three bits (zero unless an extension is negotiated).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key; every client frame has one.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

/// Which end of a connection parses a header. The two differ in one rule only, the mask
/// (§5.1); every other rule of §5.2 and §5.5 is the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server, parsing client frames: each must be masked.
    Server,
    /// A client (the load generator), parsing server frames: none may be masked.
    Client,
}

impl FrameHeader {
    /// Parses the header of a frame sent to `role` from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of the header (incomplete is not an
    /// error), or the header and how many bytes it took.
    ///
    /// `allowed_rsv` is the RSV bits a negotiated extension permits on the first frame of a
    /// data message (permessage-deflate's RSV1; 0 without an extension). Continuations and
    /// control frames never carry them (RFC 7692 §6.1).
    ///
    /// # Errors
    /// Any rule of §5.2 that the header breaks: [`ProtocolError::UnmaskedFrame`] for a client
    /// frame without a mask, [`ProtocolError::MaskedFrame`] for a server frame with one.
    pub fn parse(
        buf: &[u8],
        role: Role,
        allowed_rsv: u8,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (first, second) = match buf {
            [a, b, ..] => (*a, *b),
            _ => return Ok(None),
        };
        let fin = first & 0x80 != 0;
        let rsv = (first >> 4) & 0x07;
        let opcode = OpCode::from_bits(first & 0x0f);
        // §5.2: "MUST be 0 unless an extension is negotiated that defines meanings"; RFC 7692
        // §6.1: the "Per-Message Compressed" bit is set on "the first frame of a message"
        // and "MUST NOT" be on control frames or non-first fragments.
        let allowed = match opcode {
            Some(OpCode::Text | OpCode::Binary) => allowed_rsv,
            _ => 0,
        };
        if rsv & !allowed != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = opcode.ok_or(ProtocolError::ReservedOpcode)?;
        let masked = second & 0x80 != 0;
        match role {
            // §5.1: "a client MUST mask all frames that it sends to the server".
            Role::Server if !masked => return Err(ProtocolError::UnmaskedFrame),
            // §5.1: "A server MUST NOT mask any frames that it sends to the client."
            Role::Client if masked => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let short_len = second & 0x7f;
        if opcode.is_control() {
            // §5.5: "All control frames MUST have a payload length of 125 bytes or less
            // and MUST NOT be fragmented."
            if short_len > 125 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
        }
        let Some((payload_len, length_end)) = payload_length(second, buf)? else {
            return Ok(None);
        };
        let (mask, header_len) = if masked {
            match buf.get(length_end..length_end + 4).map(<[u8; 4]>::try_from) {
                Some(Ok(key)) => (Some(key), length_end + 4),
                _ => return Ok(None),
            }
        } else {
            (None, length_end)
        };
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes this header into `out`; returns the number of bytes written (2–14).
    ///
    /// Server frames have no mask; the load generator (a client) sets one.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let first = if self.fin { 0x80 } else { 0 } | (self.rsv & 0x07) << 4 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload_len;
        let (second, extended): (u8, &[u8]) = if len < 126 {
            (mask_bit | len as u8, &[])
        } else if len <= u64::from(u16::MAX) {
            (mask_bit | 126, &(len as u16).to_be_bytes()[..])
        } else {
            (mask_bit | 127, &len.to_be_bytes()[..])
        };
        let key = self.mask.as_ref().map_or(&[][..], |k| &k[..]);
        let mut n = 0;
        for byte in [first, second].iter().chain(extended).chain(key) {
            if let Some(slot) = out.get_mut(n) {
                *slot = *byte;
                n += 1;
            }
        }
        n
    }
}

/// The payload length announced by a header's second byte and the extended length bytes
/// after it in `buf` (the header from its first byte). `Ok(None)` while those bytes have not
/// all arrived; else the length and where the length field ends (2, 4 or 10).
///
/// # Errors
/// [`ProtocolError::LengthOverflow`] for a 64-bit length with its top bit set.
fn payload_length(second: u8, buf: &[u8]) -> Result<Option<(u64, usize)>, ProtocolError> {
    Ok(Some(match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).map(<[u8; 8]>::try_from) {
            Some(Ok(bytes)) => {
                let len = u64::from_be_bytes(bytes);
                // §5.2: "the most significant bit MUST be 0".
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, 10)
            }
            _ => return Ok(None),
        },
        n => (u64::from(n), 2),
    }))
}

/// Encodes the header of an unmasked, unfragmented server frame.
pub fn server_header(opcode: OpCode, payload_len: usize, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    data_header(opcode, false, payload_len, out)
}

/// Encodes the header of an unmasked, unfragmented server frame, with RSV1 set when the
/// payload is compressed (permessage-deflate).
pub fn data_header(
    opcode: OpCode,
    compressed: bool,
    payload_len: usize,
    out: &mut [u8; MAX_HEADER_LEN],
) -> usize {
    FrameHeader {
        fin: true,
        rsv: if compressed { 0x4 } else { 0 },
        opcode,
        mask: None,
        payload_len: payload_len as u64,
    }
    .encode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes, Role::Server, 0)
    }

    fn parse_server_frame(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes, Role::Client, 0)
    }

    #[test]
    fn rfc_masked_hello() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!(n, 6);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for bytes in [
            &[0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4][..],
            &[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
            &[0x89, 0x80, 1, 2, 3, 4],
        ] {
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{bytes:02x?} cut {cut}");
            }
            assert_eq!(parse(bytes).unwrap().unwrap().1, bytes.len());
        }
    }

    #[test]
    fn header_rules() {
        assert_eq!(parse(&[0x81, 0x05]), Err(ProtocolError::UnmaskedFrame));
        assert_eq!(parse(&[0xc1, 0x80]), Err(ProtocolError::ReservedBits));
        assert_eq!(parse(&[0x91, 0x80]), Err(ProtocolError::ReservedBits));
        assert_eq!(parse(&[0xa1, 0x80]), Err(ProtocolError::ReservedBits));
        for op in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                parse(&[0x80 | op, 0x80]),
                Err(ProtocolError::ReservedOpcode)
            );
        }
        assert_eq!(
            parse(&[0x89, 0xfe]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        assert_eq!(
            parse(&[0x09, 0x80]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            parse(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::LengthOverflow)
        );
        // RSV1 allowed once an extension permits it.
        assert!(
            FrameHeader::parse(&[0xc1, 0x80, 0, 0, 0, 0], Role::Server, 0x4)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn rfc_unmasked_hello_from_a_server() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = parse_server_frame(&bytes).unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            (h.fin, h.opcode, h.payload_len, h.mask),
            (true, OpCode::Text, 5, None)
        );
        // The same frame is refused by a server, and its masked twin by a client.
        assert_eq!(parse(&bytes), Err(ProtocolError::UnmaskedFrame));
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
        assert_eq!(parse_server_frame(&masked), Err(ProtocolError::MaskedFrame));
    }

    #[test]
    fn every_prefix_of_a_server_header_is_incomplete() {
        for bytes in [
            &[0x82, 0x7e, 0x01, 0x00][..],
            &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x8a, 0x00],
        ] {
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_server_frame(&bytes[..cut]),
                    Ok(None),
                    "{bytes:02x?} cut {cut}"
                );
            }
            assert_eq!(parse_server_frame(bytes).unwrap().unwrap().1, bytes.len());
        }
    }

    #[test]
    fn a_client_applies_the_same_rules_to_server_frames() {
        let p = parse_server_frame;
        assert_eq!(p(&[0xc1, 0x00]), Err(ProtocolError::ReservedBits));
        assert_eq!(p(&[0xa1, 0x00]), Err(ProtocolError::ReservedBits));
        assert_eq!(p(&[0x83, 0x00]), Err(ProtocolError::ReservedOpcode));
        assert_eq!(p(&[0x89, 0x7e]), Err(ProtocolError::ControlFrameTooLong));
        assert_eq!(p(&[0x09, 0x00]), Err(ProtocolError::FragmentedControlFrame));
        assert_eq!(
            p(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::LengthOverflow)
        );
    }

    #[test]
    fn rsv1_is_allowed_on_first_data_frames_only() {
        for role in [Role::Server, Role::Client] {
            let mask_bit = if role == Role::Server { 0x80 } else { 0 };
            let header = |first: u8| {
                FrameHeader::parse(&[first, mask_bit, 1, 2, 3, 4], role, 0x4)
                    .map(|h| h.map(|h| h.0.rsv))
            };
            assert_eq!(header(0xc1), Ok(Some(0x4)), "text, {role:?}");
            assert_eq!(header(0x42), Ok(Some(0x4)), "binary, not FIN, {role:?}");
            for first in [0xc0, 0xc8, 0xc9, 0xca] {
                assert_eq!(
                    header(first),
                    Err(ProtocolError::ReservedBits),
                    "{first:02x} {role:?}"
                );
            }
            assert_eq!(
                header(0xe1),
                Err(ProtocolError::ReservedBits),
                "RSV2, {role:?}"
            );
        }
    }

    #[test]
    fn encode_lengths() {
        let mut out = [0u8; MAX_HEADER_LEN];
        assert_eq!(server_header(OpCode::Text, 5, &mut out), 2);
        assert_eq!(&out[..2], &[0x81, 0x05]);
        assert_eq!(server_header(OpCode::Binary, 256, &mut out), 4);
        assert_eq!(&out[..4], &[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(server_header(OpCode::Binary, 65536, &mut out), 10);
        assert_eq!(&out[..10], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn encode_then_parse_round_trips() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 40] {
            let h = FrameHeader {
                fin: len % 2 == 0,
                rsv: 0,
                opcode: OpCode::Binary,
                mask: Some([9, 8, 7, 6]),
                payload_len: len,
            };
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut out);
            assert_eq!(parse(&out[..n]), Ok(Some((h, n))));
            let unmasked = FrameHeader { mask: None, ..h };
            let n = unmasked.encode(&mut out);
            assert_eq!(parse_server_frame(&out[..n]), Ok(Some((unmasked, n))));
        }
    }
}
