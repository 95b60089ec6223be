//! Differential: the decoder's events must not depend on how the stream is cut into reads,
//! nor on whether large payloads are read straight into place.
//!
//! Input: `[max_frame, max_message, flags, plan.., data..]` (see `common::take_limits` and
//! `common::take_plan`); `flags & 1` enables permessage-deflate (RSV1 accepted); `flags >> 1`
//! sets the pool's large size for the direct-read run (`1 + (flags >> 1) * 8` bytes). The data
//! is decoded one-shot and cut per the plan; then cut per the plan again with every read that
//! can landing in the decoder's read target (`read_target` / `decode_target`), its messages
//! given back to the pool so that later ones reuse their buffers. All three must give the same
//! events (payloads resolved) and the same first error, and match an independent one-pass
//! reference decoder. Every call is checked against the contract, and the memory the decoder
//! holds is bounded by the limits.
#![no_main]

mod common;

use common::{ref_decode, resolve, take_limits, take_plan, Got};
use libfuzzer_sys::fuzz_target;
use wsloop_proto::{BufferPool, Decoder, Event, Limits, Outcome, Payload};

/// The most a decoder may hold between calls: the assembled message (a `Vec` grown by
/// doubling, or a pooled buffer reserved from a header, within the limit, so up to twice the
/// limit) and one control payload (≤ 125 bytes, likewise).
fn hard_bound(limits: &Limits) -> usize {
    let msg = usize::try_from(limits.max_message).unwrap_or(usize::MAX);
    msg.saturating_mul(2).max(8) + 256
}

/// A new decoder, with compression when asked.
fn decoder(compression: bool) -> Decoder {
    let mut decoder = Decoder::new();
    if compression {
        decoder.enable_compression();
    }
    decoder
}

/// Decodes `data` fed as the reads `ranges`, checking the contract on every call.
fn run(
    limits: &Limits,
    compression: bool,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Vec<Got> {
    let mut decoder = decoder(compression);
    let mut pool = BufferPool::default();
    let mut buf = data.to_vec();
    let mut out = Vec::new();
    let mut failed = false;
    for range in ranges {
        let chunk = &mut buf[range.clone()];
        if failed {
            // Errors are sticky: later reads are swallowed whole, with no event.
            let d = decoder.decode(limits, &mut pool, chunk);
            assert_eq!(
                d.consumed,
                chunk.len(),
                "after an error all input is consumed"
            );
            assert_eq!(
                d.outcome,
                Outcome::NeedMore,
                "after an error nothing more is decoded"
            );
            continue;
        }
        let mut pos = 0;
        loop {
            let remaining = chunk.len() - pos;
            let d = decoder.decode(limits, &mut pool, &mut chunk[pos..]);
            assert!(
                d.consumed <= remaining,
                "consumed {} of {remaining}",
                d.consumed
            );
            assert!(
                decoder.buffered() <= hard_bound(limits),
                "decoder holds {} bytes with {limits:?}",
                decoder.buffered()
            );
            match d.outcome {
                Outcome::NeedMore => {
                    assert_eq!(d.consumed, remaining, "NeedMore must consume all input");
                    if !decoder.is_mid_message() {
                        assert_eq!(decoder.buffered(), 0, "an idle decoder owns nothing");
                    }
                    break;
                }
                Outcome::Event(event) => {
                    assert!(d.consumed > 0, "an event must consume bytes");
                    out.push(resolve(&event, &chunk[pos..], d.consumed));
                    pos += d.consumed;
                }
                Outcome::Error(error) => {
                    assert_eq!(d.consumed, remaining, "an error consumes all input");
                    out.push(Got::Error(error));
                    failed = true;
                    break;
                }
            }
        }
    }
    check_events(&out);
    out
}

/// Decodes `data` arriving in the pieces `ranges`, as a reactor with direct reads does: each
/// read lands in the decoder's read target when it lends one (at most its length, the rest of
/// the piece left for the next read), else the rest of the piece is decoded as one read.
/// Delivered message buffers go back to `pool`.
fn run_direct(
    limits: &Limits,
    compression: bool,
    pool: &mut BufferPool,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Vec<Got> {
    let mut decoder = decoder(compression);
    let mut out = Vec::new();
    'reads: for range in ranges {
        let mut pos = range.start;
        while pos < range.end {
            let Some(target) = decoder.read_target(pool.large()) else {
                let mut read = data[pos..range.end].to_vec();
                let mut at = 0;
                loop {
                    let d = decoder.decode(limits, pool, &mut read[at..]);
                    match d.outcome {
                        Outcome::NeedMore => break,
                        Outcome::Event(event) => {
                            out.push(resolve(&event, &read[at..], d.consumed));
                            give_back(pool, event);
                            at += d.consumed;
                        }
                        Outcome::Error(error) => {
                            out.push(Got::Error(error));
                            break 'reads;
                        }
                    }
                }
                break;
            };
            assert!(!target.is_empty(), "an empty read target");
            let n = target.len().min(range.end - pos);
            target[..n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            match decoder.decode_target(n) {
                Outcome::NeedMore => {}
                Outcome::Event(event) => {
                    assert!(
                        matches!(event, Event::Message(..) | Event::Compressed(..)),
                        "a read target completed {event:?}"
                    );
                    out.push(resolve(&event, &[], 0));
                    give_back(pool, event);
                }
                Outcome::Error(error) => {
                    out.push(Got::Error(error));
                    break 'reads;
                }
            }
            assert!(
                decoder.buffered() <= hard_bound(limits),
                "decoder holds {} bytes with {limits:?}",
                decoder.buffered()
            );
        }
    }
    check_events(&out);
    out
}

/// A delivered message's buffer back to the pool, as the reactor gives back its scratch
/// buffer: a later message may reuse it, with this one's bytes still in it.
fn give_back(pool: &mut BufferPool, event: Event) {
    if let Event::Message(_, Payload::Owned(buffer))
    | Event::Compressed(_, Payload::Owned(buffer)) = event
    {
        pool.give(buffer);
    }
}

/// Every text message is valid UTF-8, and no event follows an error.
fn check_events(out: &[Got]) {
    for (i, got) in out.iter().enumerate() {
        if let Got::Text(bytes) = got {
            assert!(std::str::from_utf8(bytes).is_ok(), "invalid text delivered");
        }
        if matches!(got, Got::Error(_)) {
            assert_eq!(i + 1, out.len(), "event after an error");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let (limits, rest) = take_limits(input);
    let Some((&flags, rest)) = rest.split_first() else {
        return;
    };
    let compression = flags & 1 != 0;
    let (plan, data) = take_plan(rest);
    let whole = run(&limits, compression, data, &[0..data.len()]);
    let split = run(&limits, compression, data, &plan.ranges(data.len()));
    assert_eq!(whole, split, "split {plan:?} changed the events");
    let large = 1 + usize::from(flags >> 1) * 8;
    let mut pool = BufferPool::new(large, 1 << 20);
    let direct = run_direct(
        &limits,
        compression,
        &mut pool,
        data,
        &plan.ranges(data.len()),
    );
    assert_eq!(
        whole, direct,
        "direct reads (large from {large} B), split {plan:?}"
    );
    let reference = ref_decode(data, &limits, compression);
    assert_eq!(
        whole, reference,
        "decoder disagrees with the reference model"
    );
});
