//! Incremental decoding of server frames, zero-copy.
//!
//! Headers are parsed by the protocol crate's one header parser in the client role
//! ([`FrameHeader::parse`] with [`Role::Client`]), so the client applies exactly the server's
//! rules, mirrored for the mask. Payload is never copied: [`ClientDecoder::decode`] hands out
//! [`Piece`]s that borrow the caller's read buffer, each tagged with its offset in the frame's
//! payload, so a frame split across reads is seen chunk by chunk. Only a partial *header* (at
//! most 14 bytes) is ever carried between calls.

use wsloop_proto::error::ProtocolError;
use wsloop_proto::frame::{FrameHeader, Role, MAX_HEADER_LEN};

/// RSV1, as [`FrameHeader::rsv`] holds it: "Per-Message Compressed" (RFC 7692 §6).
pub const RSV1: u8 = 0x4;

/// A contiguous part of one server frame's payload, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The frame this piece belongs to.
    pub header: FrameHeader,
    /// Bytes of the frame's header (2, 4 or 10).
    pub header_len: u8,
    /// Where `data` starts within the frame's payload.
    pub offset: u64,
    /// The bytes (empty only for an empty frame).
    pub data: &'a [u8],
}

impl Piece<'_> {
    /// Whether this piece completes its frame.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.header.payload_len
    }

    /// Whether this piece starts its frame.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// Bytes this piece took on the wire: its data, and the header on the frame's first piece.
    pub fn wire_len(&self) -> u64 {
        let header = if self.is_first() { self.header_len } else { 0 };
        u64::from(header) + self.data.len() as u64
    }
}

/// Incremental decoder of server frames. Carries at most a partial header between calls.
#[derive(Debug, Clone, Default)]
pub struct ClientDecoder {
    partial: [u8; MAX_HEADER_LEN],
    partial_len: usize,
    /// The frame whose payload is being received, its header's length, and how much of the
    /// payload has arrived.
    current: Option<(FrameHeader, u8, u64)>,
    /// RSV bits the negotiated extension allows (RSV1 with permessage-deflate).
    allowed_rsv: u8,
}

impl ClientDecoder {
    /// A decoder for a connection that negotiated permessage-deflate when `deflate`.
    pub fn new(deflate: bool) -> ClientDecoder {
        ClientDecoder {
            allowed_rsv: if deflate { RSV1 } else { 0 },
            ..ClientDecoder::default()
        }
    }

    /// Decodes from `input`; returns how many bytes were consumed and, possibly, a piece.
    ///
    /// Call again with the rest of the input until it is empty. Each call either consumes at
    /// least one byte or returns the piece of an empty frame, so the loop always progresses.
    /// A piece is returned for every frame at least once (its first bytes, or the whole empty
    /// payload); a header whose payload has not arrived yet returns no piece.
    ///
    /// # Errors
    /// A header no server may send; the decoder is then unusable.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Piece<'a>>), ProtocolError> {
        if let Some((header, header_len, offset)) = self.current {
            let remaining = header.payload_len - offset;
            let take = remaining.min(input.len() as u64) as usize;
            let data = input.get(..take).unwrap_or_default();
            let end = offset + take as u64;
            self.current = (end < header.payload_len).then_some((header, header_len, end));
            let piece = (take > 0).then_some(Piece {
                header,
                header_len,
                offset,
                data,
            });
            return Ok((take, piece));
        }
        if self.partial_len == 0 {
            return match FrameHeader::parse(input, Role::Client, self.allowed_rsv)? {
                Some((header, used)) => Ok(self.start(header, used, used, input)),
                None => {
                    // Shorter than a header, so it fits in `partial`.
                    let take = input.len().min(MAX_HEADER_LEN);
                    self.stash(input.get(..take).unwrap_or_default());
                    Ok((take, None))
                }
            };
        }
        let before = self.partial_len;
        let take = (MAX_HEADER_LEN - before).min(input.len());
        self.stash(input.get(..take).unwrap_or_default());
        let partial = self.partial.get(..self.partial_len).unwrap_or_default();
        match FrameHeader::parse(partial, Role::Client, self.allowed_rsv)? {
            Some((header, header_len)) => {
                self.partial_len = 0;
                // Only the header's bytes are consumed from `input`; the payload follows.
                Ok(self.start(header, header_len, header_len - before, input))
            }
            None => Ok((take, None)),
        }
    }

    fn stash(&mut self, bytes: &[u8]) {
        for b in bytes {
            if let Some(slot) = self.partial.get_mut(self.partial_len) {
                *slot = *b;
                self.partial_len += 1;
            }
        }
    }

    /// A header of `header_len` bytes ended at `input[used]`: hand out the payload bytes that
    /// follow it.
    fn start<'a>(
        &mut self,
        header: FrameHeader,
        header_len: usize,
        used: usize,
        input: &'a [u8],
    ) -> (usize, Option<Piece<'a>>) {
        // 2, 4 or 10: a server header has no mask.
        let header_len = header_len as u8;
        let rest = input.get(used..).unwrap_or_default();
        let take = header.payload_len.min(rest.len() as u64) as usize;
        let data = rest.get(..take).unwrap_or_default();
        self.current =
            ((take as u64) < header.payload_len).then_some((header, header_len, take as u64));
        let piece = (take > 0 || header.payload_len == 0).then_some(Piece {
            header,
            header_len,
            offset: 0,
            data,
        });
        (used + take, piece)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wsloop_proto::frame::{server_header, OpCode};

    /// One unmasked server frame (the test side of the wire).
    pub(crate) fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, payload.len(), &mut head);
        let mut out = head[..n].to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns (header, reassembled payload, wire
    /// bytes) per frame.
    fn decode_all(input: &[u8], chunk: usize) -> Vec<(FrameHeader, Vec<u8>, u64)> {
        let mut dec = ClientDecoder::new(false);
        let mut frames: Vec<(FrameHeader, Vec<u8>, u64)> = Vec::new();
        for part in input.chunks(chunk) {
            let mut rest = part;
            while !rest.is_empty() {
                let (used, piece) = dec.decode(rest).unwrap();
                if let Some(p) = piece {
                    if p.is_first() {
                        frames.push((p.header, Vec::new(), 0));
                    }
                    let last = frames.last_mut().unwrap();
                    assert_eq!(last.1.len() as u64, p.offset);
                    last.1.extend_from_slice(p.data);
                    last.2 += p.wire_len();
                }
                rest = &rest[used..];
            }
        }
        assert!(
            dec.partial_len == 0 && dec.current.is_none(),
            "between frames"
        );
        frames
    }

    #[test]
    fn decodes_every_length_class_in_every_split() {
        let payloads: Vec<Vec<u8>> = [0usize, 1, 125, 126, 127, 300, 65535, 65536, 70000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 + 7) as u8).collect())
            .collect();
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend(server_frame(OpCode::Binary, p));
        }
        stream.extend(server_frame(OpCode::Ping, b"hi"));
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let frames = decode_all(&stream, chunk);
            assert_eq!(frames.len(), payloads.len() + 1, "chunk {chunk}");
            for (f, p) in frames.iter().zip(&payloads) {
                assert_eq!(f.0.opcode, OpCode::Binary);
                assert_eq!(f.0.payload_len, p.len() as u64);
                assert_eq!(&f.1, p, "chunk {chunk}");
                assert_eq!(f.2, server_frame(OpCode::Binary, p).len() as u64);
            }
            assert_eq!(frames.last().unwrap().0.opcode, OpCode::Ping);
            assert_eq!(frames.last().unwrap().1, b"hi");
        }
    }

    #[test]
    fn empty_frame_yields_one_piece() {
        let stream = server_frame(OpCode::Text, b"");
        let mut dec = ClientDecoder::new(false);
        let (used, piece) = dec.decode(&stream).unwrap();
        assert_eq!(used, 2);
        let p = piece.unwrap();
        assert!(p.is_first() && p.is_last() && p.data.is_empty());
    }

    #[test]
    fn header_then_payload_later_gives_no_empty_piece() {
        let stream = server_frame(OpCode::Text, b"abc");
        let mut dec = ClientDecoder::new(false);
        assert_eq!(dec.decode(&stream[..2]).unwrap(), (2, None));
        let (used, piece) = dec.decode(&stream[2..]).unwrap();
        assert_eq!(used, 3);
        assert_eq!(piece.unwrap().data, b"abc");
    }

    #[test]
    fn refuses_what_no_server_sends() {
        let e = |bytes: &[u8]| ClientDecoder::new(false).decode(bytes).unwrap_err();
        assert_eq!(e(&[0x81, 0x80, 1, 2, 3, 4]), ProtocolError::MaskedFrame);
        assert_eq!(e(&[0xC1, 0x00]), ProtocolError::ReservedBits);
        assert_eq!(e(&[0x83, 0x00]), ProtocolError::ReservedOpcode);
        assert_eq!(e(&[0x89, 126, 0, 200]), ProtocolError::ControlFrameTooLong);
        assert_eq!(e(&[0x09, 0x00]), ProtocolError::FragmentedControlFrame);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(e(&long), ProtocolError::LengthOverflow);
    }

    #[test]
    fn rsv1_only_on_first_data_frames_with_deflate() {
        let mut dec = ClientDecoder::new(true);
        let (_, piece) = dec.decode(&[0xC1, 0x01, 0x00]).unwrap();
        assert_eq!(piece.unwrap().header.rsv, RSV1);
        let e = |bytes: &[u8]| ClientDecoder::new(true).decode(bytes).unwrap_err();
        assert_eq!(
            e(&[0xC0, 0x00]),
            ProtocolError::ReservedBits,
            "continuation"
        );
        assert_eq!(e(&[0xC9, 0x00]), ProtocolError::ReservedBits, "ping");
        assert_eq!(e(&[0xA1, 0x00]), ProtocolError::ReservedBits, "RSV2");
    }
}
