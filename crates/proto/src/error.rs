//! Why a peer's frames broke RFC 6455 ([`ProtocolError`]), and its one mapping to a close
//! code. (The handshake, the PROXY header, deflate negotiation and the connection's actions
//! have error types of their own.)

use super::close::CloseCode;

/// Why a peer's bytes broke RFC 6455. Each maps to exactly one close code through
/// `From<&ProtocolError> for CloseCode`, so no path can pick a different code for the same fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without the mask bit (§5.1).
    UnmaskedFrame,
    /// A server frame with the mask bit (§5.1), seen by a client.
    MaskedFrame,
    /// RSV1–3 set without a negotiated extension (§5.2).
    ReservedBits,
    /// Opcode 3–7 or 0xB–0xF (§5.2).
    ReservedOpcode,
    /// A control frame with more than 125 bytes of payload (§5.5).
    ControlFrameTooLong,
    /// A control frame with FIN clear (§5.5).
    FragmentedControlFrame,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    LengthOverflow,
    /// A continuation frame with no message in progress (§5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (§5.4).
    ExpectedContinuation,
    /// A frame over the configured frame size limit.
    FrameTooBig,
    /// A message over the configured message size limit.
    MessageTooBig,
    /// Text (or a close reason) that is not valid UTF-8 (§8.1).
    InvalidUtf8,
    /// A close payload of one byte, or a code that may not be sent (§5.5.1, §7.4).
    InvalidClosePayload,
    /// A compressed message that is not valid raw deflate (RFC 7692 §6.2).
    BadCompressedData,
}

impl ProtocolError {
    /// A short description, for logs and as the reason of the close frame that fails the
    /// connection (each is at most 40 bytes of ASCII: it fits a control frame, §5.5).
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::UnmaskedFrame => "unmasked client frame",
            ProtocolError::MaskedFrame => "masked server frame",
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::ControlFrameTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::LengthOverflow => "payload length with the top bit set",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented message",
            ProtocolError::FrameTooBig => "frame over the size limit",
            ProtocolError::MessageTooBig => "message over the size limit",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::InvalidClosePayload => "invalid close payload",
            ProtocolError::BadCompressedData => "invalid compressed data",
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ProtocolError {}

impl From<&ProtocolError> for CloseCode {
    fn from(e: &ProtocolError) -> CloseCode {
        match e {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}
