//! The decoder's state as bytes, so that a connection can move to another process in the
//! middle of a frame or a fragmented message (see `conn::export`): the partial header, the
//! frame in progress with its mask offset, the message in progress with its assembled
//! payload and the UTF-8 bytes carried over, a partial control payload, and the settings the
//! connection gave it (allowed RSV bits, deferred whole-text validation), and whether it has
//! failed.
//!
//! [`Decoder::import`] checks what it reads against the decoder's own invariants (a header no
//! longer than [`MAX_HEADER_LEN`], a frame's progress within its length, a control frame
//! unfragmented and at most 125 bytes with its payload so far held, at most 3 carried UTF-8
//! bytes): bytes that break them are an error, never a decoder in a state it could not reach.

use crate::codec::{CodecError, Reader, Writer};
use crate::frame::{OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::utf8::Utf8Validator;

use super::{Assembly, Decoder, FrameInProgress, MessageKind, Partial, RSV1};

/// Message kinds on the wire.
const NO_MESSAGE: u8 = 0;
const TEXT: u8 = 1;
const BINARY: u8 = 2;

impl Decoder {
    /// Appends the decoder's state to `w`.
    pub fn export(&self, w: &mut Writer<'_>) {
        w.bytes(
            self.header
                .get(..usize::from(self.header_len))
                .unwrap_or_default(),
        );
        w.bool(self.failed);
        w.u8(self.allowed_rsv);
        w.bool(self.defer_whole_text);
        w.bool(self.partial.is_some());
        let Some(partial) = self.partial.as_deref() else {
            return;
        };
        w.bool(partial.frame.is_some());
        if let Some(frame) = partial.frame {
            w.u8(frame.opcode.bits());
            w.bool(frame.fin);
            w.u32(u32::from_be_bytes(frame.mask));
            w.u64(frame.done);
            w.u64(frame.len);
        }
        w.bool(partial.compressed);
        w.u8(match partial.message {
            None => NO_MESSAGE,
            Some(MessageKind::Text) => TEXT,
            Some(MessageKind::Binary) => BINARY,
        });
        w.bytes(partial.utf8.carried());
        w.bytes(partial.data.bytes());
        w.bytes(&partial.control);
    }

    /// The decoder [`export`](Decoder::export) wrote.
    ///
    /// # Errors
    /// Truncated bytes, or a state the decoder could not be in (see the module docs).
    pub fn import(r: &mut Reader<'_>) -> Result<Decoder, CodecError> {
        let mut decoder = Decoder::new();
        let header = r.bytes_max(MAX_HEADER_LEN - 1, "partial header")?;
        if let Some(dst) = decoder.header.get_mut(..header.len()) {
            dst.copy_from_slice(header);
        }
        decoder.header_len = header.len() as u8;
        decoder.failed = r.bool()?;
        decoder.allowed_rsv = r.u8()?;
        if decoder.allowed_rsv & !RSV1 != 0 {
            return Err(CodecError::Invalid("allowed RSV bits"));
        }
        decoder.defer_whole_text = r.bool()?;
        if r.bool()? {
            decoder.partial = Some(Box::new(import_partial(r)?));
            decoder.release_if_idle();
        }
        if decoder.header_len != 0 && decoder.partial.as_ref().is_some_and(|p| p.frame.is_some()) {
            return Err(CodecError::Invalid("a header inside a frame"));
        }
        Ok(decoder)
    }
}

fn import_partial(r: &mut Reader<'_>) -> Result<Partial, CodecError> {
    let frame = match r.bool()? {
        false => None,
        true => {
            let opcode = OpCode::from_bits(r.u8()?).ok_or(CodecError::Invalid("frame opcode"))?;
            let frame = FrameInProgress {
                opcode,
                fin: r.bool()?,
                mask: r.u32()?.to_be_bytes(),
                done: r.u64()?,
                len: r.u64()?,
            };
            if frame.done > frame.len {
                return Err(CodecError::Invalid("frame progress"));
            }
            if opcode.is_control() && (!frame.fin || frame.len > MAX_CONTROL_PAYLOAD as u64) {
                return Err(CodecError::Invalid("control frame"));
            }
            Some(frame)
        }
    };
    let compressed = r.bool()?;
    let message = match r.u8()? {
        NO_MESSAGE => None,
        TEXT => Some(MessageKind::Text),
        BINARY => Some(MessageKind::Binary),
        _ => return Err(CodecError::Invalid("message kind")),
    };
    let utf8 = Utf8Validator::with_carried(r.bytes_max(3, "carried UTF-8")?)
        .ok_or(CodecError::Invalid("carried UTF-8"))?;
    let data = r.bytes()?.to_vec();
    let control = r
        .bytes_max(MAX_CONTROL_PAYLOAD, "control payload")?
        .to_vec();
    // A control frame's payload so far is held whole; a data frame's never is.
    let control_frame = frame.filter(|f| f.opcode.is_control());
    if control.len() as u64 != control_frame.map_or(0, |f| f.done) {
        return Err(CodecError::Invalid("control payload"));
    }
    if message.is_none() && (compressed || !data.is_empty() || !utf8.carried().is_empty()) {
        return Err(CodecError::Invalid("message payload without a message"));
    }
    Ok(Partial {
        frame,
        compressed,
        message,
        utf8,
        // Moved as plain bytes; it grows as before (a pooled buffer is this process's).
        data: Assembly::Small(data),
        control,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, Event, Limits, Outcome, Payload};
    use super::*;
    use crate::conn::testkit::{client_frame, client_frame_rsv};
    use crate::pool::BufferPool;

    /// Feeds `bytes` to `decoder` and collects every outcome but `NeedMore`.
    fn run(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Outcome> {
        let mut input = bytes.to_vec();
        let mut rest = &mut input[..];
        let mut seen = Vec::new();
        let mut pool = BufferPool::default();
        loop {
            let Decoded { consumed, outcome } = decoder.decode(&Limits::default(), &mut pool, rest);
            // Payloads that borrow the input are copied out so the outcomes can be compared.
            let outcome = match outcome {
                Outcome::NeedMore => {
                    assert_eq!(consumed, rest.len());
                    return seen;
                }
                Outcome::Event(event) => Outcome::Event(owned(event, rest)),
                other => other,
            };
            seen.push(outcome);
            rest = &mut rest[consumed..];
        }
    }

    /// `event` with its payload copied out of `input`.
    fn owned(event: Event, input: &[u8]) -> Event {
        let own = |p: Payload| Payload::Owned(p.bytes(input).to_vec());
        match event {
            Event::Message(kind, p) => Event::Message(kind, own(p)),
            Event::Compressed(kind, p) => Event::Compressed(kind, own(p)),
            Event::Ping(p) => Event::Ping(own(p)),
            Event::Pong(p) => Event::Pong(own(p)),
            Event::Close { code, payload } => Event::Close {
                code,
                payload: own(payload),
            },
        }
    }

    fn moved(decoder: &Decoder) -> Decoder {
        let mut state = Vec::new();
        decoder.export(&mut Writer::new(&mut state));
        let mut r = Reader::new(&state);
        let twin = Decoder::import(&mut r).expect("importable");
        r.finish().expect("all read");
        twin
    }

    /// The stream cut at every byte: the decoder moved there carries on exactly as the
    /// original does.
    fn check_every_cut(stream: &[u8], text_deferred: bool) {
        for cut in 0..=stream.len() {
            let mut original = Decoder::new();
            original.enable_compression();
            if text_deferred {
                original.defer_whole_text_validation();
            }
            let before = run(&mut original, &stream[..cut]);
            let mut twin = moved(&original);
            assert_eq!(
                run(&mut original, &stream[cut..]),
                run(&mut twin, &stream[cut..]),
                "cut at {cut} (after {before:?})"
            );
        }
    }

    #[test]
    fn a_fragmented_text_message_with_a_ping_between_moves_at_every_byte() {
        let euro = "€".as_bytes(); // three bytes: cuts fall inside a code point
        let mut stream = client_frame_rsv(false, 0, OpCode::Text, &[b"ab", euro].concat());
        stream.extend(client_frame(OpCode::Ping, b"ping"));
        stream.extend(client_frame_rsv(false, 0, OpCode::Continuation, euro));
        stream.extend(client_frame_rsv(true, 0, OpCode::Continuation, b"end"));
        stream.extend(client_frame(OpCode::Binary, &[7; 300]));
        check_every_cut(&stream, false);
        check_every_cut(&stream, true);
    }

    #[test]
    fn a_compressed_message_and_a_failure_move() {
        let mut stream = client_frame_rsv(false, RSV1, OpCode::Binary, b"deflated?");
        stream.extend(client_frame_rsv(true, 0, OpCode::Continuation, b"rest"));
        stream.extend(client_frame(OpCode::Text, &[0xff, 0xfe])); // invalid UTF-8: fails
        stream.extend(client_frame(OpCode::Text, b"ignored"));
        check_every_cut(&stream, false);
    }

    #[test]
    fn an_idle_decoder_costs_a_few_bytes_and_owns_nothing_after_import() {
        let decoder = Decoder::new();
        let mut state = Vec::new();
        decoder.export(&mut Writer::new(&mut state));
        assert!(state.len() < 16, "{} bytes", state.len());
        assert_eq!(moved(&decoder).buffered(), 0);
    }

    #[test]
    fn impossible_states_are_refused() {
        let mut original = Decoder::new();
        let stream = client_frame(OpCode::Ping, b"0123456789");
        let _ = run(&mut original, &stream[..10]); // inside the ping's payload
        let mut state = Vec::new();
        original.export(&mut Writer::new(&mut state));
        for cut in 0..state.len() {
            let mut r = Reader::new(&state[..cut]);
            assert!(
                Decoder::import(&mut r).and_then(|_| r.finish()).is_err(),
                "cut at {cut}"
            );
        }
        // Every single-byte change either imports a decoder or is an error: never a panic.
        for at in 0..state.len() {
            for byte in [0, 1, 2, 3, 0x7f, 0x80, 0xff] {
                let mut bad = state.clone();
                bad[at] = byte;
                let _ = Decoder::import(&mut Reader::new(&bad));
            }
        }
    }
}
