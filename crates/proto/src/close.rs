//! Close codes (RFC 6455 §7.4) and close-frame payloads (§5.5.1).

use super::error::ProtocolError;
use super::utf8;

/// A close status code. An open newtype, not a closed enum: peers may send any code in the
/// registered ranges, and applications may use 3000–4999 freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going down or the peer left.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection was lost without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violated the server's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message or frame was over the size limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1013: the server is overloaded; try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether this code may appear in a close frame on the wire (§7.4.1, §7.4.2 and the
    /// IANA registry): 1000–1003, 1007–1014, and 3000–4999.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The code's name in the IANA WebSocket close code registry (§7.4.1, §11.7), in lower
    /// case: `Some("normal closure")` for 1000; `None` for a code without one (1004, the
    /// applications' 3000–4999, anything unassigned).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1005 => "no status received",
            1006 => "abnormal closure",
            1007 => "invalid frame payload data",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "mandatory extension",
            1011 => "internal error",
            1012 => "service restart",
            1013 => "try again later",
            1014 => "bad gateway",
            1015 => "TLS handshake",
            _ => return None,
        })
    }
}

/// The number, then the registered name when there is one: `1000 (normal closure)`,
/// `4001`.
///
/// ```
/// use wsloop_proto::CloseCode;
///
/// assert_eq!(CloseCode::GOING_AWAY.to_string(), "1001 (going away)");
/// assert_eq!(CloseCode(4001).to_string(), "4001");
/// ```
impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A validated close payload: the code (if any) and the UTF-8 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosePayload<'a> {
    /// The status code; `None` for an empty payload (reported to applications as 1005).
    pub code: Option<CloseCode>,
    /// The reason text, possibly empty.
    pub reason: &'a str,
}

/// Parses and validates a received close frame's payload.
///
/// # Errors
/// A 1-byte payload or a code that may not be sent: [`ProtocolError::InvalidClosePayload`];
/// a reason that is not UTF-8: [`ProtocolError::InvalidUtf8`].
pub fn parse_close_payload(payload: &[u8]) -> Result<ClosePayload<'_>, ProtocolError> {
    match payload {
        [] => Ok(ClosePayload {
            code: None,
            reason: "",
        }),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidClosePayload);
            }
            let reason = utf8::validate(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(ClosePayload {
                code: Some(code),
                reason,
            })
        }
        [_] => Err(ProtocolError::InvalidClosePayload),
    }
}

/// Longest reason that fits a control frame after the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// Cuts `reason` to at most [`MAX_REASON_LEN`] bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(ok).is_sendable(), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(bad).is_sendable(), "{bad}");
        }
    }

    #[test]
    fn display_names_registered_codes() {
        assert_eq!(CloseCode::NORMAL.to_string(), "1000 (normal closure)");
        assert_eq!(
            CloseCode::MESSAGE_TOO_BIG.to_string(),
            "1009 (message too big)"
        );
        assert_eq!(CloseCode(4001).to_string(), "4001");
        assert_eq!(CloseCode(1004).name(), None);
        let named = (1000..=1015).filter(|&c| CloseCode(c).name().is_some());
        assert_eq!(named.count(), 15, "every code 1000-1015 but 1004");
    }

    #[test]
    fn payload_rules() {
        assert_eq!(parse_close_payload(&[]).unwrap().code, None);
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::InvalidClosePayload)
        );
        let p = parse_close_payload(&[0x03, 0xe8, b'b', b'y', b'e']).unwrap();
        assert_eq!(p.code, Some(CloseCode::NORMAL));
        assert_eq!(p.reason, "bye");
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xff]),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn truncates_on_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert_eq!(cut.len(), 122);
    }
}
