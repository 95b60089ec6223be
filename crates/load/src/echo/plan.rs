//! What each connection of an echo run sends, fixed before the run.
//!
//! Random payloads without deflate (the default) are *strips*: a connection's messages all
//! carry one payload, encoded and masked once into a [`Strip`] of identical frames, so
//! sending `j` messages queues a counter and leaves in one `writev` straight from the strip
//! (no encoding, no allocation, no copy per message). With `--payload text` or `--deflate`,
//! messages differ from one to the next, each cut from a [corpus](crate::payload), and are
//! encoded (and compressed) one by one when queued.

use std::collections::VecDeque;
use std::rc::Rc;

use rand::Rng;

use wsloop_proto::frame::OpCode;

use super::EchoOptions;
use crate::client::{encode_frame, ClientConn, Shared, Strip};
use crate::payload::{self, Payload};

/// Bytes of one strip of pre-encoded frames (at least one frame).
const STRIP_BYTES: usize = 64 * 1024;
/// Memory budget for all strips; beyond it connections share payload variants.
const STRIPS_BUDGET: usize = 128 << 20;

/// One payload and its pre-encoded, pre-masked frames.
struct Variant {
    /// The payload as the server must echo it.
    payload: Vec<u8>,
    strip: Rc<Strip>,
}

impl Variant {
    /// Variant `index`: random bytes (binary) or letters (text), masked with a random key.
    fn new(
        rng: &mut impl Rng,
        index: usize,
        size: usize,
        binary: bool,
        per_strip: usize,
    ) -> Variant {
        let mut payload = vec![0u8; size];
        if binary {
            rng.fill(payload.as_mut_slice());
        } else {
            const ALPHABET: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
            for (i, b) in payload.iter_mut().enumerate() {
                *b = ALPHABET
                    .get((i + index * 7) % ALPHABET.len())
                    .copied()
                    .unwrap_or(b'x');
            }
        }
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let mut frame = Vec::with_capacity(size + 14);
        encode_frame(&mut frame, opcode, false, &payload, rng.random());
        Variant {
            payload,
            strip: Rc::new(Strip::new(&frame, per_strip)),
        }
    }
}

/// Which message a connection sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cursor {
    /// Always variant `v`'s payload.
    Strip(usize),
    /// The corpus stretch starting here, then the next.
    Corpus(usize),
}

/// A message sent and not echoed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outstanding {
    /// When it was queued, ns since the run's start.
    pub sent_at: u64,
    /// What it carried.
    pub what: Cursor,
    /// Its bytes on the wire.
    pub wire: u64,
}

/// What every connection's messages are made of.
pub(super) struct Plan {
    /// Strip mode's variants; empty in corpus mode.
    variants: Vec<Variant>,
    /// Corpus mode's corpus; empty in strip mode.
    corpus: Vec<u8>,
    /// Payload bytes per message.
    pub size: usize,
    /// Text or binary.
    pub opcode: OpCode,
}

impl Plan {
    /// Strips for random payloads without deflate, else a corpus to cut varied messages
    /// from.
    pub fn new(opts: &EchoOptions, rng: &mut impl Rng) -> Plan {
        let opcode = if opts.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        if opts.deflate || opts.payload != Payload::Random {
            return Plan {
                variants: Vec::new(),
                corpus: payload::corpus(opts.payload, opts.binary, opts.size, rng),
                size: opts.size,
                opcode,
            };
        }
        // One strip per connection while memory allows, else shared.
        let frame_len = opts.size + 14;
        let per_strip = (STRIP_BYTES / frame_len).clamp(1, opts.inflight);
        let strip_len = per_strip * frame_len;
        let variants_n = (STRIPS_BUDGET / strip_len).clamp(1, opts.conns);
        Plan {
            variants: (0..variants_n)
                .map(|i| Variant::new(rng, i, opts.size, opts.binary, per_strip))
                .collect(),
            corpus: Vec::new(),
            size: opts.size,
            opcode,
        }
    }

    /// Where connection `id` starts.
    pub fn first(&self, id: usize) -> Cursor {
        if self.variants.is_empty() {
            Cursor::Corpus(payload::first_start(id, self.size, self.corpus.len()))
        } else {
            Cursor::Strip(id % self.variants.len())
        }
    }

    /// The payload of the message `what` names (empty if none).
    pub fn payload(&self, what: Cursor) -> &[u8] {
        match what {
            Cursor::Strip(v) => self.variants.get(v).map_or(&[], |v| v.payload.as_slice()),
            Cursor::Corpus(start) => self
                .corpus
                .get(start..start + self.size)
                .unwrap_or_default(),
        }
    }

    /// Queues `count` messages on `conn`, from `cursor` on, each sent at `now`.
    pub fn queue(
        &self,
        cursor: &mut Cursor,
        count: usize,
        conn: &mut ClientConn,
        shared: &mut Shared,
        now: u64,
        outstanding: &mut VecDeque<Outstanding>,
    ) {
        if !conn.is_open() {
            return;
        }
        match *cursor {
            Cursor::Strip(v) => {
                let Some(variant) = self.variants.get(v) else {
                    return;
                };
                conn.send_strip(&variant.strip, count);
                let wire = variant.strip.frame_len() as u64;
                outstanding.extend((0..count).map(|_| Outstanding {
                    sent_at: now,
                    what: *cursor,
                    wire,
                }));
            }
            Cursor::Corpus(mut start) => {
                for _ in 0..count {
                    let what = Cursor::Corpus(start);
                    let wire = conn.send(self.opcode, self.payload(what), shared);
                    outstanding.push_back(Outstanding {
                        sent_at: now,
                        what,
                        wire,
                    });
                    start = payload::next_start(start, self.size, self.corpus.len());
                }
                *cursor = Cursor::Corpus(start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{client_frames, open_conn, shared, take_out};
    use crate::client::ConnConfig;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn options(size: usize, payload: Payload) -> EchoOptions {
        EchoOptions {
            conns: 3,
            inflight: 4,
            size,
            payload,
            ..EchoOptions::default()
        }
    }

    #[test]
    fn strips_hold_identical_masked_frames_of_the_payload() {
        let plan = Plan::new(
            &options(40, Payload::Random),
            &mut SmallRng::seed_from_u64(3),
        );
        assert_eq!(plan.variants.len(), 3, "one per connection");
        let v = &plan.variants[1];
        assert_eq!(v.strip.frame_len(), 2 + 4 + 40);
        assert_eq!(
            v.strip.bytes().len(),
            4 * v.strip.frame_len(),
            "inflight frames"
        );
        assert!(v.payload.is_ascii());
        let frames = client_frames(v.strip.bytes());
        assert_eq!(frames.len(), 4);
        assert!(frames.iter().all(|f| f == &(0x81, v.payload.clone())));
        assert_ne!(plan.payload(plan.first(0)), plan.payload(plan.first(1)));
    }

    #[test]
    fn strip_messages_are_queued_without_copies_and_remembered() {
        let plan = Plan::new(
            &options(10, Payload::Random),
            &mut SmallRng::seed_from_u64(3),
        );
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut cursor = plan.first(2);
        let mut outstanding = VecDeque::new();
        plan.queue(&mut cursor, 6, &mut conn, &mut shared, 77, &mut outstanding);
        assert_eq!(conn.out.len(), 6 * 16);
        assert_eq!(outstanding.len(), 6);
        assert!(outstanding
            .iter()
            .all(|o| o.sent_at == 77 && o.wire == 16 && o.what == Cursor::Strip(2)));
        let frames = client_frames(&take_out(&mut conn));
        assert!(frames.iter().all(|f| f.1 == plan.payload(cursor)));
    }

    #[test]
    fn corpus_messages_walk_the_corpus() {
        let plan = Plan::new(
            &options(100, Payload::Text),
            &mut SmallRng::seed_from_u64(3),
        );
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut cursor = plan.first(0);
        let mut outstanding = VecDeque::new();
        plan.queue(&mut cursor, 3, &mut conn, &mut shared, 0, &mut outstanding);
        let frames = client_frames(&take_out(&mut conn));
        assert_eq!(frames.len(), 3);
        for (frame, o) in frames.iter().zip(&outstanding) {
            assert_eq!(frame.1, plan.payload(o.what));
            assert_eq!(o.wire, 2 + 4 + 100);
        }
        assert_ne!(frames[0].1, frames[1].1, "consecutive messages differ");
    }
}
