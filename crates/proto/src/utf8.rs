//! Streaming, fail-fast UTF-8 validation for text messages (RFC 6455 §8.1).
//!
//! A text message may be split anywhere: across fragments, and across the reads that deliver
//! one frame. The validator carries at most three bytes of an incomplete code point from one
//! chunk to the next and reports invalid input on the chunk where it appears, not at the end of
//! the message — a server that waits for the end lets a peer stream megabytes of garbage first
//! (Autobahn 6.4.x calls that NON-STRICT). Whole chunks go through `simdutf8`, which is several
//! times faster than `std::str::from_utf8` on long runs and reports errors the same way.

use simdutf8::compat::from_utf8;

/// Invalid UTF-8 in a text message or close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl std::fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for Utf8Error {}

/// Validator state between chunks: the bytes of a code point that is not complete yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Validates the next chunk of the message.
    ///
    /// # Errors
    /// As soon as the bytes seen so far cannot be the start of valid UTF-8.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let rest = self.complete_partial(chunk)?;
        match from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                // A valid prefix of a code point at the end: carry it (at most 3 bytes).
                let tail = rest.get(e.valid_up_to()..).unwrap_or_default();
                self.carry(tail);
                Ok(())
            }
        }
    }

    /// Checks the end of the message: an incomplete code point there is an error.
    ///
    /// # Errors
    /// When the message ended inside a code point.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.partial_len != 0;
        *self = Utf8Validator::new();
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }

    /// Completes a carried code point with the first bytes of `chunk`; returns the rest.
    fn complete_partial<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let have = usize::from(self.partial_len);
        if have == 0 {
            return Ok(chunk);
        }
        let take = (4 - have).min(chunk.len());
        let mut joined = self.partial;
        let (head, rest) = chunk.split_at(take);
        joined
            .get_mut(have..have + take)
            .ok_or(Utf8Error)?
            .copy_from_slice(head);
        let joined = joined.get(..have + take).ok_or(Utf8Error)?;
        match from_utf8(joined) {
            Ok(_) => {
                self.partial_len = 0;
                Ok(rest)
            }
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) if e.valid_up_to() == 0 => {
                // Still incomplete: `take` was all of `chunk`.
                self.carry(joined);
                Ok(rest)
            }
            Err(e) => {
                // The carried code point completed; what follows it is validated with the rest.
                self.partial_len = 0;
                let used = e.valid_up_to() - have;
                Ok(chunk.get(used..).unwrap_or_default())
            }
        }
    }

    /// The bytes of an incomplete code point carried to the next chunk (for moving a
    /// connection's state, see `decoder::state`).
    pub(crate) fn carried(&self) -> &[u8] {
        self.partial
            .get(..usize::from(self.partial_len))
            .unwrap_or_default()
    }

    /// A validator carrying `bytes`: `None` unless they are empty or the start of a code
    /// point that is not complete yet (what [`Utf8Validator::carried`] can return).
    pub(crate) fn with_carried(bytes: &[u8]) -> Option<Utf8Validator> {
        let incomplete = match from_utf8(bytes) {
            Ok(_) => bytes.is_empty(),
            Err(e) => e.error_len().is_none() && e.valid_up_to() == 0,
        };
        let mut validator = Utf8Validator::new();
        validator.carry(bytes);
        (incomplete && bytes.len() <= 3).then_some(validator)
    }

    fn carry(&mut self, tail: &[u8]) {
        let len = tail.len().min(3);
        self.partial = [0; 4];
        if let (Some(dst), Some(src)) = (self.partial.get_mut(..len), tail.get(..len)) {
            dst.copy_from_slice(src);
        }
        self.partial_len = len as u8;
    }
}

/// Validates a complete byte string (a whole text message or close reason) at once.
///
/// # Errors
/// When `bytes` is not valid UTF-8.
pub fn validate(bytes: &[u8]) -> Result<&str, Utf8Error> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| Utf8Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(chunks: &[&[u8]]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for c in chunks {
            v.feed(c)?;
        }
        v.finish()
    }

    #[test]
    fn every_split_of_valid_text_is_valid() {
        let text = "κόσμε 你好 😀🚀 ascii \u{10FFFF}".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(streamed(&[&text[..a], &text[a..b], &text[b..]]), Ok(()));
            }
        }
    }

    #[test]
    fn fails_on_the_chunk_with_the_bad_byte() {
        // "κόσμε" then 0xF4 0x90 (beyond U+10FFFF): must fail when 0x90 arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert!(v.feed(&[0xF4]).is_ok());
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
    }

    #[test]
    fn incomplete_at_end_fails_at_finish() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xE2, 0x82]).is_ok());
        assert_eq!(v.finish(), Err(Utf8Error));
    }

    #[test]
    fn rejects_surrogates_overlongs_and_bad_continuations() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0x80],
            &[0xE0, 0x80, 0x80],
            &[0x80],
            &[0xF8, 0x88, 0x80, 0x80, 0x80],
            &[0xC2, 0x41],
        ] {
            assert_eq!(streamed(&[bad]), Err(Utf8Error), "{bad:02x?}");
            // One byte at a time fails too, at the latest at finish.
            let chunks: Vec<&[u8]> = bad.chunks(1).collect();
            assert_eq!(streamed(&chunks), Err(Utf8Error), "{bad:02x?} bytewise");
        }
    }

    #[test]
    fn differential_against_std_on_generated_inputs() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let alphabet: [u8; 12] = [
            0x41, 0x7F, 0x80, 0xBF, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5,
        ];
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 9) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i * 4 + 8)) % 12) as usize])
                .collect();
            let split = (seed >> 60) as usize % (len + 1);
            let expected = std::str::from_utf8(&bytes).is_ok();
            let got = streamed(&[&bytes[..split], &bytes[split..]]).is_ok();
            assert_eq!(got, expected, "{bytes:02x?} split {split}");
        }
    }
}
