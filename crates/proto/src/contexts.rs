//! permessage-deflate contexts for the server role: each connection's negotiated parameters
//! and (only with context takeover) its own contexts, plus the contexts that every connection
//! without context takeover shares (one set per reactor), reset after each message.

use super::deflate::{DeflateParams, Deflater, Inflater};
use super::error::ProtocolError;
use super::pool::BufferPool;

/// Heap cost of one compressor context once it has been used, for the memory budget and the
/// docs. zlib-rs with a 32 KiB window allocates, in one block, the window twice over
/// (64 KiB), the chain table (64 KiB) and a 64 Ki-entry hash table (128 KiB), all three
/// zeroed at creation, then the pending buffer (64 KiB) and the symbol buffer (48 KiB), which
/// fill as messages go through: 368 KiB plus its state at most.
///
/// Measured (benches/README.md, "permessage-deflate", `benches/deflate.sh`): 2 000 held
/// connections with context takeover cost the server 339 818 B each (RSS) after one 1 KiB
/// message and 388 751–392 110 B each after one 64 KiB message, against 186–2 564 B without
/// deflate: about 380 KiB for a compressor and an inflater together, of which a lone
/// `Deflater` fed 64 KiB took about 336 KiB. The former estimate (262 + 40 KiB) was
/// about 20 % low, so the budget let through about a quarter more memory than it meant to.
pub const DEFLATER_BYTES: usize = 336 * 1024;
/// Heap cost of one inflater context once used: a 32 KiB window plus its state and tables
/// (the rest of the measured ~380 KiB pair, see [`DEFLATER_BYTES`]).
pub const INFLATER_BYTES: usize = 44 * 1024;

/// A connection's deflate state: 8 bytes in the slab entry (behind `Option<Box<_>>`).
#[derive(Debug)]
pub struct ConnDeflate {
    /// What was negotiated.
    pub params: DeflateParams,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

impl ConnDeflate {
    /// State for a connection that negotiated `params`; contexts are created on first use.
    pub fn new(params: DeflateParams) -> ConnDeflate {
        ConnDeflate {
            params,
            deflater: None,
            inflater: None,
        }
    }

    /// Whether it has contexts of its own yet (created on first use, with context takeover):
    /// their history cannot be handed to another process, so such a connection cannot move.
    pub fn has_own_contexts(&self) -> bool {
        self.deflater.is_some() || self.inflater.is_some()
    }

    /// Heap bytes held by this connection's own contexts (the inflater's with the copy of
    /// the window it keeps for a stream that ends, see [`Inflater`]).
    pub fn memory(&self) -> usize {
        self.deflater.as_ref().map_or(0, |_| DEFLATER_BYTES)
            + self
                .inflater
                .as_ref()
                .map_or(0, |i| INFLATER_BYTES + i.history_bytes())
    }
}

/// The reactor's shared contexts: one compressor per window size in use, one inflater.
#[derive(Debug)]
pub struct SharedContexts {
    level: u32,
    /// Indexed by window bits − 9.
    deflaters: [Option<Deflater>; 7],
    inflater: Option<Inflater>,
}

impl SharedContexts {
    /// Shared contexts compressing at zlib `level`.
    pub fn new(level: u32) -> SharedContexts {
        SharedContexts {
            level,
            deflaters: Default::default(),
            inflater: None,
        }
    }

    /// Appends `payload` compressed for `conn` to `out` (no sync tail): with the shared
    /// context for its window size when it has no context takeover, else with its own.
    pub fn compress(&mut self, conn: &mut ConnDeflate, payload: &[u8], out: &mut Vec<u8>) {
        let bits = conn.params.server_max_window_bits;
        if conn.params.server_no_context_takeover {
            self.compress_shared(bits, payload, out);
        } else {
            let level = self.level;
            conn.deflater
                .get_or_insert_with(|| Deflater::new(bits, level))
                .compress(payload, out, false);
        }
    }

    /// Appends `payload` compressed with the shared, reset-after-use context for a
    /// `window_bits` window to `out`: one compressed frame serves every receiver without
    /// context takeover that negotiated this window.
    pub fn compress_shared(&mut self, window_bits: u8, payload: &[u8], out: &mut Vec<u8>) {
        let bits = window_bits.clamp(9, 15);
        let level = self.level;
        let slot = usize::from(bits - 9);
        match self.deflaters.get_mut(slot) {
            Some(slot) => slot
                .get_or_insert_with(|| Deflater::new(bits, level))
                .compress(payload, out, true),
            // Unreachable after the clamp; a fresh context is still correct.
            None => Deflater::new(bits, level).compress(payload, out, true),
        }
    }

    /// Inflates a message from `conn` into `out` (which must be empty), at most `max` bytes;
    /// output that grows large moves into a buffer from `pool`.
    ///
    /// # Errors
    /// See [`Inflater::inflate`].
    pub fn inflate(
        &mut self,
        conn: &mut ConnDeflate,
        payload: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        pool: &mut BufferPool,
    ) -> Result<(), ProtocolError> {
        let reset = conn.params.client_no_context_takeover;
        let inflater = if reset {
            self.inflater.get_or_insert_with(Inflater::new)
        } else {
            // The client compresses with at most the window we allowed it (§7.1.2.2).
            let bits = conn.params.client_max_window_bits.unwrap_or(15);
            conn.inflater
                .get_or_insert_with(|| Inflater::with_window_bits(bits))
        };
        inflater.inflate_pooled(payload, out, max, reset, Some(pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::{negotiate, DeflateConfig};

    fn params(takeover: bool) -> DeflateParams {
        let config = DeflateConfig {
            context_takeover: takeover,
            ..DeflateConfig::default()
        };
        negotiate(["permessage-deflate"], &config).expect("negotiated")
    }

    #[test]
    fn shared_contexts_own_nothing_per_connection() {
        let mut shared = SharedContexts::new(1);
        let mut conn = ConnDeflate::new(params(false));
        let mut packed = Vec::new();
        shared.compress(&mut conn, b"hello hello hello", &mut packed);
        let mut plain = Vec::new();
        shared
            .inflate(
                &mut conn,
                &packed,
                &mut plain,
                1024,
                &mut BufferPool::default(),
            )
            .unwrap();
        assert_eq!(plain, b"hello hello hello");
        assert_eq!(conn.memory(), 0);
    }

    #[test]
    fn context_takeover_contexts_are_the_connections_and_counted() {
        let mut shared = SharedContexts::new(1);
        let mut conn = ConnDeflate::new(params(true));
        let mut first = Vec::new();
        shared.compress(&mut conn, b"a message that repeats", &mut first);
        let mut second = Vec::new();
        shared.compress(&mut conn, b"a message that repeats", &mut second);
        // The second copy refers back into the kept window.
        assert!(second.len() < first.len());
        assert_eq!(conn.memory(), DEFLATER_BYTES);
        let mut plain = Vec::new();
        shared
            .inflate(
                &mut conn,
                &first,
                &mut plain,
                1024,
                &mut BufferPool::default(),
            )
            .unwrap();
        // Plus the copy of the window the inflater keeps (at least the message just inflated).
        let kept = conn.memory() - DEFLATER_BYTES - INFLATER_BYTES;
        assert!((plain.len()..=32 * 1024).contains(&kept), "kept {kept}");
    }
}
