//! Checking an echo as it arrives against the message it must equal, piece by piece, so a
//! large echo is verified without being gathered.

use wsloop_proto::frame::OpCode;

use crate::client::Data;

/// The verdict on one whole echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Same opcode, same length, same bytes.
    pub intact: bool,
    /// Its bytes on the wire, frame headers included.
    pub wire: u64,
}

/// The echo in progress on one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoCheck {
    /// Some byte (or the opcode) already differed.
    differs: bool,
    /// Wire bytes so far.
    wire: u64,
}

impl EchoCheck {
    /// Takes the next piece of the echo of `expected` (sent as `opcode`); at the echo's end,
    /// returns the verdict and starts over.
    pub fn piece(&mut self, expected: &[u8], opcode: OpCode, data: &Data<'_>) -> Option<Verdict> {
        let start = usize::try_from(data.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.bytes.len());
        let same = expected.get(start..end).is_some_and(|e| e == data.bytes);
        self.differs |= !same || data.opcode != opcode;
        self.wire += data.wire;
        if !data.last {
            return None;
        }
        let verdict = Verdict {
            intact: !self.differs && end == expected.len(),
            wire: self.wire,
        };
        *self = EchoCheck::default();
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(offset: u64, bytes: &[u8], last: bool) -> Data<'_> {
        Data {
            opcode: OpCode::Text,
            offset,
            bytes,
            last,
            wire: bytes.len() as u64 + 2,
        }
    }

    #[test]
    fn intact_only_when_every_byte_the_length_and_the_opcode_match() {
        let mut check = EchoCheck::default();
        assert_eq!(
            check.piece(b"hello", OpCode::Text, &data(0, b"hel", false)),
            None
        );
        assert_eq!(
            check.piece(b"hello", OpCode::Text, &data(3, b"lo", true)),
            Some(Verdict {
                intact: true,
                wire: 9
            })
        );
        let verdict = |pieces: &[Data<'_>], opcode| {
            let mut check = EchoCheck::default();
            pieces
                .iter()
                .find_map(|d| check.piece(b"hello", opcode, d))
                .unwrap()
                .intact
        };
        assert!(!verdict(&[data(0, b"hellp", true)], OpCode::Text), "a byte");
        assert!(!verdict(&[data(0, b"hell", true)], OpCode::Text), "short");
        assert!(!verdict(&[data(0, b"hello!", true)], OpCode::Text), "long");
        assert!(
            !verdict(&[data(0, b"hello", true)], OpCode::Binary),
            "opcode"
        );
        assert!(
            !verdict(
                &[data(0, b"hex", false), data(3, b"lo", true)],
                OpCode::Text
            ),
            "an early difference sticks"
        );
    }
}
