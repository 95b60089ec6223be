//! `parse_close_payload` on arbitrary bytes: never panics; `Ok` implies an empty payload or a
//! 2-byte sendable code followed by a UTF-8 reason; the verdict and the error kind match an
//! independent reimplementation; the decoder reports the same for a close frame carrying it;
//! and `truncate_reason` cuts on a character boundary within the control-frame budget.
#![no_main]

mod common;

use common::{ref_close, ref_sendable, Got};
use libfuzzer_sys::fuzz_target;
use wsloop_proto::close::{parse_close_payload, truncate_reason, MAX_REASON_LEN};
use wsloop_proto::{BufferPool, CloseCode, Decoder, Event, Limits, Outcome};

fuzz_target!(|data: &[u8]| {
    let got = parse_close_payload(data);
    match &got {
        Ok(p) => {
            assert!(data.is_empty() || data.len() >= 2);
            match p.code {
                None => {
                    assert!(data.is_empty());
                    assert_eq!(p.reason, "");
                }
                Some(code) => {
                    assert!(code.is_sendable());
                    assert_eq!(code.0, u16::from_be_bytes([data[0], data[1]]));
                    assert_eq!(p.reason.as_bytes(), &data[2..]);
                }
            }
        }
        Err(_) => {}
    }
    assert_eq!(got.map(|p| p.code.map(|c| c.0)), ref_close(data));
    if data.len() >= 2 {
        let code = u16::from_be_bytes([data[0], data[1]]);
        assert_eq!(CloseCode(code).is_sendable(), ref_sendable(code));
    }

    // The same payload inside a masked close frame, through the decoder.
    if data.len() <= 125 {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x88, 0x80 | data.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let d = Decoder::new().decode(&Limits::default(), &mut BufferPool::default(), &mut frame);
        assert_eq!(d.consumed, frame.len());
        let from_decoder = match d.outcome {
            Outcome::Event(Event::Close { code, payload }) => {
                assert_eq!(payload.bytes(&frame), data);
                Got::Close(code.map(|c| c.0), data.to_vec())
            }
            Outcome::Error(e) => Got::Error(e),
            other => panic!("close frame decoded as {other:?}"),
        };
        let expected = match ref_close(data) {
            Ok(code) => Got::Close(code, data.to_vec()),
            Err(e) => Got::Error(e),
        };
        assert_eq!(from_decoder, expected);
    }

    if let Ok(reason) = std::str::from_utf8(data) {
        let cut = truncate_reason(reason);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert!(reason.starts_with(cut));
        if reason.len() <= MAX_REASON_LEN {
            assert_eq!(cut, reason);
        } else {
            // The longest cut: at most 3 bytes short of the budget (a 4-byte char).
            assert!(cut.len() + 3 >= MAX_REASON_LEN);
        }
    }
});
