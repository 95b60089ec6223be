//! Differential: the decoder's events must not depend on how the stream is cut into reads.
//!
//! Input: `[max_frame, max_message, flags, plan.., data..]` (see `common::take_limits` and
//! `common::take_plan`); `flags & 1` enables permessage-deflate (RSV1 accepted). The data is decoded one-shot and cut per the plan; both must give the
//! same events (payloads resolved) and the same first error, and both must match an
//! independent one-pass reference decoder. Every call is checked against the `decode`
//! contract, and the memory the decoder holds is bounded by the limits.
#![no_main]

mod common;

use common::{ref_decode, resolve, take_limits, take_plan, Got};
use libfuzzer_sys::fuzz_target;
use wsloop_proto::{Decoder, Limits, Outcome};

/// The most a decoder may hold between calls: the assembled message (a `Vec` grown by
/// doubling, so up to twice the limit) and one control payload (≤ 125 bytes, likewise).
fn hard_bound(limits: &Limits) -> usize {
    let msg = usize::try_from(limits.max_message).unwrap_or(usize::MAX);
    msg.saturating_mul(2).max(8) + 256
}

/// Decodes `data` fed as the reads `ranges`, checking the contract on every call.
fn run(
    limits: &Limits,
    compression: bool,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Vec<Got> {
    let mut decoder = Decoder::new();
    if compression {
        decoder.enable_compression();
    }
    let mut buf = data.to_vec();
    let mut out = Vec::new();
    let mut failed = false;
    for range in ranges {
        let chunk = &mut buf[range.clone()];
        if failed {
            // Errors are sticky: later reads are swallowed whole, with no event.
            let d = decoder.decode(limits, chunk);
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
            let d = decoder.decode(limits, &mut chunk[pos..]);
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
    // Every text message is valid UTF-8, and no event follows an error.
    for (i, got) in out.iter().enumerate() {
        if let Got::Text(bytes) = got {
            assert!(std::str::from_utf8(bytes).is_ok(), "invalid text delivered");
        }
        if matches!(got, Got::Error(_)) {
            assert_eq!(i + 1, out.len(), "event after an error");
        }
    }
    out
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
    let reference = ref_decode(data, &limits, compression);
    assert_eq!(
        whole, reference,
        "decoder disagrees with the reference model"
    );
});
