//! The opening handshake, client side (RFC 6455 §4.1): the upgrade request, and the check
//! of the server's answer, permessage-deflate's included (RFC 7692 §5).

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::Rng;

use wsloop_proto::deflate::{accept_response, DeflateParams, ResponseError, CLIENT_OFFER};
use wsloop_proto::handshake::accept_key;

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (§4.1: "randomly selected").
pub fn handshake_key(rng: &mut impl Rng) -> String {
    BASE64.encode(rng.random::<[u8; 16]>())
}

/// Appends an upgrade request for `path` on `host` with `key`, offering permessage-deflate
/// ([`CLIENT_OFFER`]) when `deflate`.
pub fn write_upgrade_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, deflate: bool) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
        key,
        "\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(CLIENT_OFFER.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Largest response head accepted from the server.
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// Why an upgrade answer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeError {
    /// No blank line within [`MAX_RESPONSE_HEAD`] bytes.
    HeadTooLong,
    /// The status line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A status other than 101.
    Status(u16),
    /// `Upgrade: websocket` or `Connection: Upgrade` missing.
    NotUpgraded,
    /// `Sec-WebSocket-Accept` missing or wrong.
    BadAccept,
    /// A `Sec-WebSocket-Extensions` answer the client must refuse.
    Extension(ResponseError),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::HeadTooLong => f.write_str("response head too long"),
            UpgradeError::BadStatusLine => f.write_str("malformed status line"),
            UpgradeError::Status(code) => write!(f, "status {code} instead of 101"),
            UpgradeError::NotUpgraded => f.write_str("Upgrade/Connection headers missing"),
            UpgradeError::BadAccept => f.write_str("wrong or missing Sec-WebSocket-Accept"),
            UpgradeError::Extension(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// A valid `101` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    /// Length of the response head: bytes after it already belong to the WebSocket stream.
    pub head_len: usize,
    /// The permessage-deflate parameters, when the server accepted the offer.
    pub deflate: Option<DeflateParams>,
}

/// Checks the server's answer to an upgrade request sent with `key` (and with
/// [`CLIENT_OFFER`] when `deflate_offered`).
///
/// Returns `Ok(None)` until the head is complete.
///
/// # Errors
/// Anything but a valid `101 Switching Protocols` for this key, including an extension the
/// request did not offer.
pub fn parse_upgrade_response(
    buf: &[u8],
    key: &str,
    deflate_offered: bool,
) -> Result<Option<Upgraded>, UpgradeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err(UpgradeError::HeadTooLong)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(buf.get(..end).unwrap_or_default())
        .map_err(|_| UpgradeError::BadStatusLine)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(UpgradeError::BadStatusLine);
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(UpgradeError::BadStatusLine)?;
    if code != 101 {
        return Err(UpgradeError::Status(code));
    }
    let (mut upgrade, mut connection, mut accept_ok) = (false, false, false);
    let mut extensions: Vec<&str> = Vec::new();
    let expected = accept_key(key);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value == expected;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.push(value);
        }
    }
    if !(upgrade && connection) {
        return Err(UpgradeError::NotUpgraded);
    }
    if !accept_ok {
        return Err(UpgradeError::BadAccept);
    }
    let deflate = accept_response(extensions, deflate_offered).map_err(UpgradeError::Extension)?;
    Ok(Some(Upgraded {
        head_len: end + 4,
        deflate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn key(seed: u64) -> String {
        handshake_key(&mut SmallRng::seed_from_u64(seed))
    }

    #[test]
    fn keys_are_16_random_bytes() {
        let mut rng = SmallRng::seed_from_u64(1);
        let (a, b) = (handshake_key(&mut rng), handshake_key(&mut rng));
        assert_ne!(a, b);
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
    }

    #[test]
    fn upgrade_round_trip() {
        let key = key(7);
        let mut req = Vec::new();
        write_upgrade_request(&mut req, "127.0.0.1:9001", "/chat", &key, false);
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /chat HTTP/1.1\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        assert!(!req.contains("Extensions"));
        let mut resp = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut resp, &key, None, None);
        let head_len = resp.len();
        resp.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade_response(&resp[..10], &key, false), Ok(None));
        let plain = Upgraded {
            head_len,
            deflate: None,
        };
        assert_eq!(parse_upgrade_response(&resp, &key, false), Ok(Some(plain)));
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Ok(Some(plain)),
            "a server may decline the offer"
        );
        assert_eq!(
            parse_upgrade_response(&resp, "dGhlIHNhbXBsZSBub25jZQ==", false),
            Err(UpgradeError::BadAccept)
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 503 Busy\r\n\r\n", &key, false),
            Err(UpgradeError::Status(503))
        );
        assert_eq!(
            parse_upgrade_response(&vec![b'a'; MAX_RESPONSE_HEAD + 1], &key, false),
            Err(UpgradeError::HeadTooLong)
        );
    }

    /// The server's real answer, with `extensions` as its `Sec-WebSocket-Extensions` value.
    pub(crate) fn answer_with(key: &str, extensions: &str) -> Vec<u8> {
        let mut resp = Vec::new();
        wsloop_proto::handshake::write_accept_response(&mut resp, key, None, Some(extensions));
        resp
    }

    #[test]
    fn deflate_offer_and_answer() {
        let key = key(9);
        let mut req = Vec::new();
        write_upgrade_request(&mut req, "h", "/", &key, true);
        let req = String::from_utf8(req).unwrap();
        assert!(req.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ));
        let resp = answer_with(&key, "permessage-deflate; server_no_context_takeover");
        let up = parse_upgrade_response(&resp, &key, true).unwrap().unwrap();
        let params = up.deflate.unwrap();
        assert!(params.server_no_context_takeover);
        assert!(!params.client_no_context_takeover);
    }

    #[test]
    fn refuses_an_answer_it_did_not_offer() {
        let key = key(10);
        // No offer at all, yet the server turned deflate on: its RSV1 frames would be
        // unreadable, so the client fails the connection (RFC 7692 §5).
        let resp = answer_with(&key, "permessage-deflate");
        assert_eq!(
            parse_upgrade_response(&resp, &key, false),
            Err(UpgradeError::Extension(ResponseError::NotOffered))
        );
        // An extension other than the one offered.
        let resp = answer_with(&key, "x-webkit-deflate-frame");
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Err(UpgradeError::Extension(ResponseError::NotOffered))
        );
        // A parameter that cannot be in an answer.
        let resp = answer_with(&key, "permessage-deflate; client_max_window_bits");
        assert_eq!(
            parse_upgrade_response(&resp, &key, true),
            Err(UpgradeError::Extension(ResponseError::BadParameter))
        );
    }
}
