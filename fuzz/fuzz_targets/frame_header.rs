//! `FrameHeader::parse` (server role) on arbitrary bytes, against an independent reference parser,
//! then `encode` round trips: encoding a parsed header and parsing it again gives the same
//! header, and a minimally encoded input is reproduced byte for byte. Server headers built by
//! `server_header` are checked field by field.
//!
//! Input: `[rsv_sel, data..]`: `rsv_sel & 7` is the RSV bits an extension would allow.
#![no_main]

mod common;

use common::ref_header;
use libfuzzer_sys::fuzz_target;
use wsloop_proto::frame::{server_header, Role, MAX_HEADER_LEN};
use wsloop_proto::{FrameHeader, OpCode};

fn opcode_from(b: u8) -> OpCode {
    [
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ][usize::from(b) % 6]
}

/// Checks an unmasked server header against §5.2 by hand.
fn check_server_header(opcode: OpCode, len: usize) {
    let mut out = [0u8; MAX_HEADER_LEN];
    let n = server_header(opcode, len, &mut out);
    let h = &out[..n];
    assert_eq!(h[0], 0x80 | opcode.bits(), "FIN, no RSV, the opcode");
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let (decoded, expect_n) = match h[1] {
        126 => (usize::from(u16::from_be_bytes([h[2], h[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        short => (usize::from(short), 2),
    };
    assert_eq!(n, expect_n);
    assert_eq!(decoded, len);
    // Minimal length encoding (§5.2: "the minimal number of bytes MUST be used").
    let minimal = if len < 126 {
        2
    } else if len <= 0xffff {
        4
    } else {
        10
    };
    assert_eq!(n, minimal, "length {len} not minimally encoded");
}

fuzz_target!(|input: &[u8]| {
    let Some((&rsv_sel, data)) = input.split_first() else {
        return;
    };
    let allowed_rsv = rsv_sel & 7;
    let got = FrameHeader::parse(data, Role::Server, allowed_rsv);
    let reference = ref_header(data, allowed_rsv);
    match (&got, &reference) {
        (Ok(Some((h, n))), Ok(Some(r))) => {
            assert_eq!(*n, r.header_len);
            assert_eq!(
                (h.fin, h.rsv, h.opcode.bits(), h.mask, h.payload_len),
                (r.fin, r.rsv, r.opcode, Some(r.key), r.len)
            );
        }
        (Ok(None), Ok(None)) => assert!(data.len() < MAX_HEADER_LEN),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("parse {got:?}, reference {reference:?}"),
    }

    if let Ok(Some((header, n))) = got {
        assert!((6..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
        // Every shorter prefix is merely incomplete.
        for cut in 0..n {
            assert_eq!(
                FrameHeader::parse(&data[..cut], Role::Server, allowed_rsv),
                Ok(None),
                "cut {cut}"
            );
        }
        let mut out = [0u8; MAX_HEADER_LEN];
        let m = header.encode(&mut out);
        assert_eq!(
            FrameHeader::parse(&out[..m], Role::Server, allowed_rsv),
            Ok(Some((header, m)))
        );
        let minimal = match data[1] & 0x7f {
            126 => header.payload_len >= 126,
            127 => header.payload_len > 0xffff,
            _ => true,
        };
        if minimal {
            assert_eq!(&out[..m], &data[..n], "minimal header not reproduced");
        } else {
            assert!(m < n);
        }
        // The same header without its mask is a server header.
        let unmasked = FrameHeader {
            mask: None,
            ..header
        };
        let k = unmasked.encode(&mut out);
        assert_eq!(k + 4, m);
        if header.fin && header.rsv == 0 {
            if let Ok(len) = usize::try_from(header.payload_len) {
                check_server_header(header.opcode, len);
            }
        }
    }

    // Server headers for arbitrary lengths taken from the input.
    if data.len() >= 9 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[1..9]);
        let len = u64::from_le_bytes(b) >> (data[0] % 64);
        if let Ok(len) = usize::try_from(len) {
            check_server_header(opcode_from(data[0]), len);
        }
    }
});
