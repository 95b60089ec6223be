//! The opening handshake: `HeadScanner::scan` over arbitrary reads must find the same head (or
//! the same error) as one scan of the whole input, and whatever it finds must go through
//! `RequestHead::parse`, `validate_upgrade` and the header helpers without panicking and with
//! consistent answers.
//!
//! Input: `[head_sel, hdr_sel, plan.., data..]`: `head_sel` picks `max_head` (small values
//! included, 0xff the server's 8 KiB default), `hdr_sel` the header array size.
#![no_main]

mod common;

use common::take_plan;
use libfuzzer_sys::fuzz_target;
use wsloop_proto::deflate::{negotiate, DeflateConfig};
use wsloop_proto::handshake::{
    accept_key, validate_upgrade, write_accept_response, HandshakeError, HeadScanner, RequestHead,
    EMPTY_HEADER,
};

fn max_head_from(b: u8) -> usize {
    match b {
        0xff => 8 * 1024,
        b if b & 0x80 != 0 => usize::from(b & 0x7f) * 64,
        b => usize::from(b),
    }
}

/// Scans `data` delivered as the reads `ends` (prefix lengths), stopping at the first answer.
fn scan_reads(
    data: &[u8],
    ends: &[usize],
    max_head: usize,
) -> Result<Option<usize>, HandshakeError> {
    let mut scanner = HeadScanner::default();
    for &end in ends {
        match scanner.scan(&data[..end], max_head) {
            Ok(None) => {
                // Not found yet: the reactor keeps buffering, so the head limit must hold.
                assert!(
                    end <= max_head,
                    "{end} bytes buffered past max_head {max_head}"
                );
            }
            answer => return answer,
        }
    }
    Ok(None)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_head(head: &[u8], n_headers: usize) {
    let mut headers = vec![EMPTY_HEADER; n_headers];
    let req = match RequestHead::parse(head, &mut headers) {
        Ok(req) => req,
        Err(e) => {
            assert!(matches!(
                e,
                HandshakeError::Malformed | HandshakeError::TooManyHeaders
            ));
            let _ = (e.status(), e.as_str());
            return;
        }
    };
    // What a parsed head must look like.
    let text = std::str::from_utf8(head).expect("a parsed head is UTF-8");
    assert!(text.ends_with("\r\n\r\n"));
    assert!(!req.method.is_empty() && req.method.bytes().all(is_tchar));
    assert!(!req.target.is_empty() && req.target.bytes().all(|b| b > b' ' && b != 0x7f));
    assert!(req.minor_version <= 9);
    assert!(req.headers.len() <= n_headers);
    for h in req.headers {
        assert!(!h.name.is_empty() && h.name.bytes().all(is_tchar), "{h:?}");
        assert!(!h.value.starts_with([' ', '\t']) && !h.value.ends_with([' ', '\t']));
        assert!(!h
            .value
            .bytes()
            .any(|b| (b < b' ' && b != b'\t') || b == 0x7f));
        assert_eq!(req.header(&h.name.to_ascii_uppercase()).is_some(), true);
    }
    for name in ["connection", "upgrade", "sec-websocket-protocol", "x"] {
        for t in req.tokens(name) {
            assert!(!t.is_empty() && !t.contains(','));
            assert!(!t.starts_with([' ', '\t']) && !t.ends_with([' ', '\t']));
        }
    }
    let extensions = check_extensions(&req);
    let wants = req.wants_websocket();
    let _ = req.keep_alive();
    match validate_upgrade(&req) {
        Ok(upgrade) => {
            assert_eq!(req.method, "GET");
            assert!(req.minor_version >= 1);
            assert!(req.header("host").is_some_and(|h| !h.is_empty()));
            assert_eq!(req.header("sec-websocket-version"), Some("13"));
            assert!(req
                .tokens("connection")
                .any(|t| t.eq_ignore_ascii_case("upgrade")));
            // 16 bytes in padded base64 is always 24 characters.
            assert_eq!(upgrade.key.len(), 24, "{:?}", upgrade.key);
            assert_eq!(accept_key(upgrade.key).len(), 28);
            let mut out = Vec::new();
            write_accept_response(
                &mut out,
                upgrade.key,
                req.header("sec-websocket-protocol"),
                extensions.as_deref(),
            );
            assert!(out.starts_with(b"HTTP/1.1 101 "));
            assert!(out.ends_with(b"\r\n\r\n"));
            let _ = wants;
        }
        Err(e) => {
            assert!(!matches!(
                e,
                HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders
            ));
            let _ = (e.status(), e.as_str());
        }
    }
}

/// permessage-deflate offers: whatever is accepted answers with a value that is itself an
/// acceptable offer (RFC 7692 §5: the response uses the offer's syntax).
fn check_extensions(req: &RequestHead<'_, '_>) -> Option<String> {
    let offers = || {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|h| h.value)
    };
    let takeover = DeflateConfig {
        context_takeover: true,
        server_max_window_bits: 10,
        client_max_window_bits: 9,
        ..DeflateConfig::default()
    };
    let mut extensions = None;
    for config in [DeflateConfig::default(), takeover] {
        if let Some(params) = negotiate(offers(), &config) {
            assert!((9..=15).contains(&params.server_max_window_bits));
            assert!(params.server_max_window_bits <= config.server_max_window_bits.max(9));
            if let Some(bits) = params.client_max_window_bits {
                // The client may compress with an 8-bit window; our 15-bit inflater reads it.
                assert!((8..=15).contains(&bits));
                assert!(bits <= config.client_max_window_bits.clamp(9, 15));
            }
            if !config.context_takeover {
                assert!(params.server_no_context_takeover);
                assert!(params.client_no_context_takeover);
            }
            let value = params.response_value();
            assert!(value.starts_with("permessage-deflate"));
            assert!(
                negotiate([value.as_str()], &DeflateConfig::default()).is_some(),
                "{value}"
            );
            extensions = Some(value);
        }
    }
    extensions
}

fuzz_target!(|input: &[u8]| {
    let [head_sel, hdr_sel, rest @ ..] = input else {
        return;
    };
    let max_head = max_head_from(*head_sel);
    let n_headers = usize::from(*hdr_sel % 80);
    let (plan, data) = take_plan(rest);

    let one_shot = HeadScanner::default().scan(data, max_head);
    let ends: Vec<usize> = plan.ranges(data.len()).iter().map(|r| r.end).collect();
    let split = scan_reads(data, &ends, max_head);
    assert_eq!(one_shot, split, "split {plan:?} changed the scan");
    // One byte per read, as a slow client sends it.
    if data.len() <= 4096 {
        let ends: Vec<usize> = (0..=data.len()).collect();
        assert_eq!(one_shot, scan_reads(data, &ends, max_head), "bytewise");
    }

    match one_shot {
        Ok(Some(end)) => {
            assert!(end >= 4 && end <= data.len() && end <= max_head);
            let head = &data[..end];
            assert!(head.ends_with(b"\r\n\r\n"));
            // The first blank line: no earlier terminator.
            assert!(!head[..end - 1].windows(4).any(|w| w == b"\r\n\r\n"));
            check_head(head, n_headers);
        }
        Ok(None) => {
            assert!(data.len() <= max_head);
            assert!(!data.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        Err(e) => assert_eq!(e, HandshakeError::HeadTooLarge),
    }
    // The parser must also survive bytes the scanner never vouched for.
    check_head_lenient(data, n_headers);
});

/// `RequestHead::parse` on raw input (not a scanned head): only "no panic" and error kinds.
fn check_head_lenient(data: &[u8], n_headers: usize) {
    let mut headers = vec![EMPTY_HEADER; n_headers];
    match RequestHead::parse(data, &mut headers) {
        Ok(req) => {
            let _ = (
                req.wants_websocket(),
                req.keep_alive(),
                validate_upgrade(&req),
            );
        }
        Err(e) => assert!(matches!(
            e,
            HandshakeError::Malformed | HandshakeError::TooManyHeaders
        )),
    }
}
