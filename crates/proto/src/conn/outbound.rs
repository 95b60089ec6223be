//! Messages out from the application: compressed when permessage-deflate was negotiated and
//! the message is at least `min_size`, and, for a publication to many connections, which
//! encoding of one frame a connection can share with others.

use crate::{MessageKind, OpCode};

use super::output::{write_frame, write_frame_owned, Output};
use super::shared::Shared;
use super::{ActionError, Connection};

/// How a message is framed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Uncompressed: one frame serves every such receiver.
    Plain,
    /// Compressed with the shared, reset-after-each-message context for this window (no
    /// context takeover): one frame serves every receiver with the same window.
    Deflate {
        /// The server window the receiver negotiated.
        window_bits: u8,
    },
    /// Compressed with the connection's own context (context takeover): only
    /// [`Connection::send`] can encode it.
    Own,
}

impl Connection {
    /// Sends a message: one frame into `out`, compressed when negotiated and worth it. While
    /// an upgrade request is being decided (between [`Event::Request`] and `accept`), the
    /// frame is kept and goes out right after the 101 (dropped if the request is refused).
    ///
    /// [`Event::Request`]: super::Event::Request
    ///
    /// # Errors
    /// [`ActionError::NotOpen`] unless open or deciding.
    pub fn send<O: Output>(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        out: &mut O,
        shared: &mut Shared,
    ) -> Result<(), ActionError> {
        let opcode = opcode_of(kind);
        if self.send_while_deciding(opcode, payload) {
            return Ok(());
        }
        if !self.is_open() {
            return Err(ActionError::NotOpen);
        }
        let deflate = match self.encoding(payload.len(), shared) {
            Encoding::Plain => None,
            _ => self.deflate.as_deref_mut(),
        };
        match deflate {
            Some(deflate) => {
                let packed = shared.compress(deflate, payload);
                if packed.len() >= shared.settings.large_payload {
                    // A large compressed payload is given away, not copied.
                    write_frame_owned(out, opcode, true, packed);
                } else {
                    write_frame(out, opcode, true, &[&packed]);
                    shared.done_compressing(packed);
                }
            }
            None => write_frame(out, opcode, false, &[payload]),
        }
        Ok(())
    }

    /// How a message of `payload_len` bytes is framed for this connection, so that a
    /// publication encodes each shareable frame once ([`Shared::shared_frame`]) and calls
    /// [`Connection::send`] only for [`Encoding::Own`].
    pub fn encoding(&self, payload_len: usize, shared: &Shared) -> Encoding {
        let Some(deflate) = self.deflate.as_deref() else {
            return Encoding::Plain;
        };
        let min_size = shared
            .settings
            .deflate
            .as_ref()
            .map_or(usize::MAX, |d| d.min_size);
        if payload_len < min_size {
            Encoding::Plain
        } else if deflate.params.server_no_context_takeover {
            Encoding::Deflate {
                window_bits: deflate.params.server_max_window_bits,
            }
        } else {
            Encoding::Own
        }
    }
}

impl Shared {
    /// The whole frame of a message in a shareable `encoding` (`None` for
    /// [`Encoding::Own`]), to be queued for many connections.
    pub fn shared_frame(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        encoding: Encoding,
    ) -> Option<Vec<u8>> {
        let opcode = opcode_of(kind);
        let mut frame = Vec::new();
        match encoding {
            Encoding::Plain => write_frame(&mut frame, opcode, false, &[payload]),
            Encoding::Deflate { window_bits } => {
                let packed = self.compress_shared(window_bits, payload);
                write_frame(&mut frame, opcode, true, &[&packed]);
                self.done_compressing(packed);
            }
            Encoding::Own => return None,
        }
        Some(frame)
    }
}

/// The opcode of a message's (only) frame.
fn opcode_of(kind: MessageKind) -> OpCode {
    match kind {
        MessageKind::Text => OpCode::Text,
        MessageKind::Binary => OpCode::Binary,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{server_frames, Harness};
    use super::super::{ActionError, Settings};
    use super::Encoding;
    use crate::deflate::{DeflateConfig, Inflater};
    use crate::MessageKind;

    fn deflate(context_takeover: bool) -> Settings {
        Settings {
            deflate: Some(DeflateConfig {
                context_takeover,
                min_size: 16,
                ..DeflateConfig::default()
            }),
            ..Settings::default()
        }
    }

    const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Inflater::new()
            .inflate(payload, &mut out, 1 << 20, true)
            .unwrap();
        out
    }

    #[test]
    fn messages_are_compressed_from_the_minimum_size() {
        let mut h = Harness::open_with(deflate(false), OFFER);
        h.send_text("short").unwrap();
        let long = "compressible ".repeat(10);
        h.send_text(&long).unwrap();
        let frames = h.frames();
        assert_eq!((frames[0].rsv, &frames[0].payload[..]), (0, &b"short"[..]));
        assert_eq!(frames[1].rsv, 0b100, "RSV1: compressed (RFC 7692 §6)");
        assert!(frames[1].payload.len() < long.len());
        assert_eq!(inflate(&frames[1].payload), long.as_bytes());
    }

    #[test]
    fn without_deflate_every_frame_is_plain() {
        let mut h = Harness::open(Settings::default());
        h.send_text(&"x".repeat(1000)).unwrap();
        assert_eq!(h.frames()[0].rsv, 0);
        assert_eq!(h.conn.encoding(1000, &h.shared), Encoding::Plain);
    }

    #[test]
    fn a_publication_shares_one_frame_per_encoding() {
        let h = Harness::open_with(deflate(false), OFFER);
        let mut shared_h = Harness::open_with(deflate(true), OFFER);
        assert_eq!(h.conn.encoding(15, &h.shared), Encoding::Plain);
        assert_eq!(
            h.conn.encoding(16, &h.shared),
            Encoding::Deflate { window_bits: 15 }
        );
        assert_eq!(shared_h.conn.encoding(16, &shared_h.shared), Encoding::Own);
        let payload = "room news ".repeat(8);
        let frame = shared_h
            .shared
            .shared_frame(
                MessageKind::Text,
                payload.as_bytes(),
                Encoding::Deflate { window_bits: 15 },
            )
            .unwrap();
        let frames = server_frames(&frame);
        assert_eq!(frames[0].rsv, 0b100);
        assert_eq!(inflate(&frames[0].payload), payload.as_bytes());
        let plain = shared_h
            .shared
            .shared_frame(MessageKind::Binary, b"raw", Encoding::Plain)
            .unwrap();
        assert_eq!(plain, [0x82, 3, b'r', b'a', b'w']);
        assert_eq!(
            shared_h
                .shared
                .shared_frame(MessageKind::Text, b"x", Encoding::Own),
            None
        );
    }

    /// An output that records which pushes gave their payload away.
    #[derive(Default)]
    struct Recorder {
        wire: Vec<u8>,
        owned: Vec<usize>,
    }

    impl crate::conn::Output for Recorder {
        fn push(&mut self, parts: &[&[u8]]) {
            crate::conn::Output::push(&mut self.wire, parts);
        }

        fn push_owned(&mut self, header: &[u8], payload: Vec<u8>) {
            self.owned.push(payload.len());
            crate::conn::Output::push(&mut self.wire, &[header, &payload]);
        }
    }

    #[test]
    fn a_large_compressed_payload_is_given_away_not_copied() {
        let settings = Settings {
            large_payload: 1024,
            ..deflate(false)
        };
        let mut h = Harness::open_with(settings, OFFER);
        let mut seed = 1u32;
        let long: Vec<u8> = (0..20_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b'a' + (seed >> 16) as u8 % 26
            })
            .collect();
        let mut out = Recorder::default();
        for message in [&long[..], &long[..100]] {
            h.conn
                .send(MessageKind::Binary, message, &mut out, &mut h.shared)
                .unwrap();
        }
        assert_eq!(out.owned.len(), 1, "only the large one");
        assert!(out.owned[0] >= 1024);
        let frames = server_frames(&out.wire);
        assert_eq!(inflate(&frames[0].payload), long);
        assert_eq!(inflate(&frames[1].payload), &long[..100]);
    }

    #[test]
    fn sending_after_the_close_is_refused() {
        let mut h = Harness::open(Settings::default());
        h.close(1000, "").unwrap();
        assert_eq!(h.send_text("late"), Err(ActionError::NotOpen));
    }
}
