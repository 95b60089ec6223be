//! permessage-deflate (RFC 7692) payloads: `Inflater::inflate` on arbitrary bytes never
//! panics and never holds more than the limit (+1) however much the data would inflate to;
//! `Deflater::compress` then `inflate` round trips, per message (no context takeover) and
//! across messages sharing a window (context takeover).
//!
//! Input: `[flags, max_sel, data..]`: `flags & 7` picks the window (9–15), `(flags >> 3) % 10`
//! the level, `flags & 0x80` context takeover; `max_sel` the inflate limit (see
//! `common::size_from`).
#![no_main]

mod common;

use common::size_from;
use libfuzzer_sys::fuzz_target;
use wsloop_proto::deflate::{Deflater, Inflater};
use wsloop_proto::ProtocolError;

const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

fuzz_target!(|input: &[u8]| {
    let [flags, max_sel, data @ ..] = input else {
        return;
    };
    let bits = 9 + (flags & 7).min(6);
    let level = u32::from((flags >> 3) % 10);
    let takeover = flags & 0x80 != 0;
    let max = usize::try_from(size_from(*max_sel)).unwrap_or(usize::MAX);

    // Arbitrary bytes as a compressed message.
    let mut out = Vec::new();
    match Inflater::new().inflate(data, &mut out, max, true) {
        Ok(()) => assert!(out.len() <= max),
        Err(e) => assert!(
            matches!(
                e,
                ProtocolError::MessageTooBig | ProtocolError::BadCompressedData
            ),
            "{e:?}"
        ),
    }
    assert!(
        out.capacity() <= max + 1,
        "held {} bytes for max {max}",
        out.capacity()
    );

    // Round trip: the data cut into two messages, with or without context takeover.
    let cut = data.len() / 3;
    let mut deflater = Deflater::new(bits, level);
    let mut inflater = Inflater::new();
    for message in [&data[..cut], &data[cut..], &data[..0]] {
        let mut packed = Vec::new();
        deflater.compress(message, &mut packed, !takeover);
        assert!(
            !packed.is_empty(),
            "a message compresses to at least one byte"
        );
        assert!(
            !packed.ends_with(&SYNC_TAIL),
            "the sync tail must be removed"
        );
        let mut back = Vec::new();
        inflater
            .inflate(&packed, &mut back, message.len(), !takeover)
            .unwrap_or_else(|e| panic!("{e:?} inflating {} bytes", message.len()));
        assert_eq!(back, message);
        // One byte short of the limit fails cleanly.
        if !takeover && !message.is_empty() {
            let mut short = Vec::new();
            assert_eq!(
                Inflater::new().inflate(&packed, &mut short, message.len() - 1, true),
                Err(ProtocolError::MessageTooBig)
            );
        }
    }
});
