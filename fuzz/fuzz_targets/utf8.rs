//! Differential: the streaming `Utf8Validator`, fed arbitrary reads, must agree with
//! `std::str::from_utf8` on the whole input, and must fail on exactly the read that carries
//! the first byte after which no continuation can be valid (fail-fast, never early).
//!
//! Input: `[plan.., data..]` (see `common::take_plan`).
#![no_main]

mod common;

use common::take_plan;
use libfuzzer_sys::fuzz_target;
use wsloop_proto::utf8::{validate, Utf8Validator};

/// The index of the first byte at which `data` is certainly invalid (whatever follows), or
/// `None` if every prefix is valid or a valid prefix of a code point.
fn first_fatal_byte(data: &[u8]) -> Option<usize> {
    let e = std::str::from_utf8(data).err()?;
    e.error_len()?;
    let start = e.valid_up_to();
    // The fatal byte is inside the (at most 4-byte) bad sequence: the shortest prefix of the
    // input that std already rejects outright.
    (start..data.len().min(start + 4)).find(|&i| {
        std::str::from_utf8(&data[..=i])
            .err()
            .is_some_and(|e| e.error_len().is_some())
    })
}

fuzz_target!(|input: &[u8]| {
    let (plan, data) = take_plan(input);
    let std_ok = std::str::from_utf8(data).is_ok();
    assert_eq!(
        validate(data).is_ok(),
        std_ok,
        "validate() disagrees with std"
    );
    if let Ok(s) = validate(data) {
        assert_eq!(s.as_bytes(), data);
    }
    let fatal = first_fatal_byte(data);
    if std::str::from_utf8(data).is_err_and(|e| e.error_len().is_some()) {
        assert!(fatal.is_some(), "std rejects outright but no prefix does");
    }

    let mut v = Utf8Validator::new();
    let mut failed_in = None;
    for range in plan.ranges(data.len()) {
        if v.feed(&data[range.clone()]).is_err() {
            failed_in = Some(range);
            break;
        }
    }
    match (fatal, failed_in) {
        (None, Some(range)) => panic!("rejected valid-so-far input in read {range:?}"),
        (Some(at), None) => panic!("missed the bad byte at {at}"),
        (Some(at), Some(range)) => {
            assert!(
                range.contains(&at),
                "bad byte at {at}, failed in read {range:?}"
            )
        }
        (None, None) => {
            // Valid so far: the end decides, and it must agree with std.
            assert_eq!(v.finish().is_ok(), std_ok, "finish disagrees with std");
            // `finish` resets: the validator is as new for the next message.
            assert_eq!(v, Utf8Validator::new());
            let again = v.feed(data).and_then(|()| v.finish());
            assert_eq!(again.is_ok(), std_ok, "reused validator disagrees");
        }
    }
});
