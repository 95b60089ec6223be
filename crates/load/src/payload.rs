//! What the load generator sends: random bytes (the default), or text that reads like a chat
//! and market-data feed. Random bytes are right for measuring framing and copying, but with
//! permessage-deflate they measure only the cost of failing to compress; real WebSocket
//! traffic is mostly JSON, which is what `text` imitates.
//!
//! Messages are cut from one *corpus* generated once per run: message after message, each
//! connection walks through it from its own offset, so consecutive messages differ (as a real
//! feed's do) and a compressor with context takeover sees a realistic history, not the same
//! message again and again.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The kind of payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload {
    /// Random bytes (binary messages) or random letters and digits (text messages).
    #[default]
    Random,
    /// Deterministic JSON-like chat and ticker lines.
    Text,
}

impl Payload {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Payload::Random => "random",
            Payload::Text => "text",
        }
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Payload {
    type Err = String;

    fn from_str(s: &str) -> Result<Payload, String> {
        match s {
            "random" => Ok(Payload::Random),
            "text" => Ok(Payload::Text),
            _ => Err(format!("unknown payload {s:?} (random or text)")),
        }
    }
}

/// Smallest corpus: far more than a 32 KiB deflate window, so walking it never hands a
/// compressor a message it has just seen.
const MIN_CORPUS: usize = 4 << 20;

/// Letters for random text messages: 6 bits of entropy per byte, valid UTF-8 at any cut.
const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

/// The corpus that messages of `size` bytes are cut from. `Text` is the same every run (a
/// fixed seed); `Random` draws from `rng`. Text is pure ASCII, so any cut is a valid text
/// message.
pub fn corpus(payload: Payload, binary: bool, size: usize, rng: &mut impl Rng) -> Vec<u8> {
    let len = MIN_CORPUS.max(size.saturating_mul(2));
    match payload {
        Payload::Random if binary => {
            let mut out = vec![0u8; len];
            rng.fill(out.as_mut_slice());
            out
        }
        Payload::Random => {
            let mut out = vec![0u8; len];
            rng.fill(out.as_mut_slice());
            for b in &mut out {
                *b = ALPHABET.get(usize::from(*b & 63)).copied().unwrap_or(b'x');
            }
            out
        }
        Payload::Text => feed_text(len),
    }
}

/// Where the message after the one at `start` begins: the next stretch of the corpus, shifted
/// by a few bytes so messages do not line up with earlier ones after wrapping around.
pub fn next_start(start: usize, size: usize, corpus_len: usize) -> usize {
    let span = corpus_len.saturating_sub(size) + 1;
    (start + size + 61) % span
}

/// Where connection `index` starts in the corpus: spread out, so connections differ.
pub fn first_start(index: usize, size: usize, corpus_len: usize) -> usize {
    let span = corpus_len.saturating_sub(size) + 1;
    index.wrapping_mul(104_729) % span
}

const WORDS: [&str; 64] = [
    "the", "price", "is", "up", "down", "meeting", "at", "noon", "lunch", "anyone", "coffee",
    "deploy", "build", "green", "red", "ship", "it", "today", "tomorrow", "thanks", "ok", "sounds",
    "good", "let's", "sync", "later", "on", "new", "release", "customer", "ticket", "closed",
    "open", "bug", "fix", "review", "please", "merged", "main", "branch", "test", "failing",
    "again", "great", "work", "team", "weekend", "plans", "call", "in", "5", "minutes", "hello",
    "everyone", "morning", "see", "you", "soon", "what", "about", "the", "numbers", "for", "Q3",
];
const USERS: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar", "peggy", "trent", "victor", "walter",
];
const ROOMS: [&str; 6] = ["general", "random", "dev", "ops", "trading", "support"];
const SYMBOLS: [&str; 12] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "NFLX", "INTC", "AMD", "IBM", "ORCL",
];

fn pick<'a>(list: &[&'a str], rng: &mut SmallRng) -> &'a str {
    list.get(rng.random_range(0..list.len()))
        .copied()
        .unwrap_or_default()
}

/// `len` bytes of newline-separated JSON objects: 60 % chat messages, 40 % price ticks with
/// random-walking prices, timestamps a few milliseconds apart. The same bytes every run of a
/// build (a fixed seed).
fn feed_text(len: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut rng = SmallRng::seed_from_u64(0x7E57_F00D);
    let mut out = String::with_capacity(len + 256);
    let mut prices = [18_742u64; SYMBOLS.len()];
    for (i, p) in prices.iter_mut().enumerate() {
        *p = 2_000 + (i as u64 * 7_919) % 60_000;
    }
    let (mut ts, mut id) = (1_767_225_600_000u64, 1_000_000u64);
    while out.len() < len {
        ts += rng.random_range(0..40);
        id += 1;
        if rng.random_bool(0.6) {
            let _ = write!(
                out,
                r#"{{"type":"message","id":{id},"room":"{}","user":"{}{}","ts":{ts},"text":""#,
                pick(&ROOMS, &mut rng),
                pick(&USERS, &mut rng),
                rng.random_range(0..100),
            );
            let words = rng.random_range(3..19);
            for w in 0..words {
                if w > 0 {
                    out.push(' ');
                }
                out.push_str(pick(&WORDS, &mut rng));
            }
            out.push_str("\"}\n");
        } else {
            let s = rng.random_range(0..SYMBOLS.len());
            let sym = SYMBOLS.get(s).copied().unwrap_or("X");
            let price = prices.get_mut(s).map_or(10_000, |p| {
                *p = (*p + rng.random_range(0..21)).saturating_sub(10).max(100);
                *p
            });
            let spread = rng.random_range(1..6u64);
            let _ = writeln!(
                out,
                r#"{{"type":"tick","seq":{id},"sym":"{sym}","bid":{}.{:02},"ask":{}.{:02},"size":{},"ts":{ts}}}"#,
                price / 100,
                price % 100,
                (price + spread) / 100,
                (price + spread) % 100,
                100 * rng.random_range(1..51),
            );
        }
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsloop_proto::deflate::Deflater;

    #[test]
    fn text_is_deterministic_ascii_and_compressible() {
        let a = corpus(Payload::Text, false, 1024, &mut SmallRng::seed_from_u64(1));
        let b = corpus(Payload::Text, false, 1024, &mut SmallRng::seed_from_u64(2));
        assert_eq!(a, b, "generated the same way every run");
        assert_eq!(a.len(), MIN_CORPUS);
        assert!(a.is_ascii());
        assert!(
            a.starts_with(b"{\"type\":\""),
            "{}",
            String::from_utf8_lossy(&a[..80])
        );
        let message = &a[1000..2024];
        let mut packed = Vec::new();
        Deflater::new(15, 1).compress(message, &mut packed, true);
        let ratio = packed.len() as f64 / message.len() as f64;
        assert!((0.1..0.6).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn random_text_is_ascii_and_does_not_compress_much() {
        let c = corpus(Payload::Random, false, 10, &mut SmallRng::seed_from_u64(5));
        assert!(c.iter().all(|b| ALPHABET.contains(b)));
        let mut packed = Vec::new();
        Deflater::new(15, 1).compress(&c[..4096], &mut packed, true);
        assert!(packed.len() > 4096 * 7 / 10, "{}", packed.len());
        let big = corpus(
            Payload::Random,
            true,
            3 << 20,
            &mut SmallRng::seed_from_u64(5),
        );
        assert_eq!(big.len(), 6 << 20);
    }

    #[test]
    fn messages_walk_the_corpus_in_bounds() {
        let len = 100_000;
        for size in [0, 1, 1000, 65_536, len] {
            let mut start = first_start(7, size, len);
            for _ in 0..1000 {
                assert!(start + size <= len, "size {size} start {start}");
                start = next_start(start, size, len);
            }
        }
        assert_ne!(first_start(1, 10, len), first_start(2, 10, len));
        assert_eq!("text".parse::<Payload>(), Ok(Payload::Text));
        assert!("json".parse::<Payload>().is_err());
    }
}
