//! permessage-deflate (RFC 7692) on the client side, with the protocol crate's own
//! [`Deflater`] and [`Inflater`]: which contexts a connection compresses and inflates with.
//!
//! A context pair costs ~380 KiB, so a connection owns one only where it needs history:
//! when context takeover was agreed for that direction and it sends more than one message.
//! Every other message uses the run's one shared pair ([`SharedDeflate`]), reset after each
//! message, as the server does.

use wsloop_proto::deflate::{DeflateParams, Deflater, Inflater};
use wsloop_proto::error::ProtocolError;

/// zlib level of the client's compressor: the fastest, so the load generator spends its CPU
/// on load, not on squeezing bytes (the server's own level is what a run measures).
pub const CLIENT_DEFLATE_LEVEL: u32 = 1;

/// The contexts shared by every connection of a run that resets them after each message.
#[derive(Debug, Default)]
pub struct SharedDeflate {
    /// With the window bits it was made for (one per run in practice).
    deflater: Option<(u8, Deflater)>,
    inflater: Option<Inflater>,
}

impl SharedDeflate {
    /// Whether the shared compressor was made (some connection resets its context).
    #[cfg(test)]
    pub(crate) fn deflater_in_use(&self) -> bool {
        self.deflater.is_some()
    }
}

/// One connection's client-side permessage-deflate state: what was agreed and, only where
/// history must be kept, the connection's own contexts (made on first use).
#[derive(Debug)]
pub struct ClientDeflate {
    /// What the server agreed to.
    pub params: DeflateParams,
    /// Keep the compressor's history between messages (context takeover, several messages).
    keep_out: bool,
    /// Keep the inflater's history between messages.
    keep_in: bool,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

impl ClientDeflate {
    /// State for a connection that agreed `params`. `one_message`: the connection sends and
    /// receives one message only, which starts from an empty window with or without context
    /// takeover, so it never needs contexts of its own.
    pub fn new(params: DeflateParams, one_message: bool) -> ClientDeflate {
        ClientDeflate {
            params,
            keep_out: !params.client_no_context_takeover && !one_message,
            keep_in: !params.server_no_context_takeover && !one_message,
            deflater: None,
            inflater: None,
        }
    }

    /// Appends `message` compressed to `out` (no sync tail), within the window the server
    /// allowed (RFC 7692 §7.1.2.2).
    pub fn compress(&mut self, shared: &mut SharedDeflate, message: &[u8], out: &mut Vec<u8>) {
        let bits = self.params.client_max_window_bits.unwrap_or(15);
        let fresh = || Deflater::new(bits, CLIENT_DEFLATE_LEVEL);
        let deflater = if self.keep_out {
            self.deflater.get_or_insert_with(fresh)
        } else {
            if shared.deflater.as_ref().is_some_and(|(b, _)| *b != bits) {
                shared.deflater = None;
            }
            &mut shared.deflater.get_or_insert_with(|| (bits, fresh())).1
        };
        deflater.compress(message, out, !self.keep_out);
    }

    /// Inflates one compressed message from the server (its frames' payloads joined) into
    /// `out`, at most `max` bytes.
    ///
    /// # Errors
    /// See [`Inflater::inflate`].
    pub fn inflate(
        &mut self,
        shared: &mut SharedDeflate,
        payload: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let inflater = if self.keep_in {
            self.inflater.get_or_insert_with(Inflater::new)
        } else {
            shared.inflater.get_or_insert_with(Inflater::new)
        };
        inflater.inflate(payload, out, max, !self.keep_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsloop_proto::deflate::{accept_response, negotiate, DeflateConfig, CLIENT_OFFER};

    fn agreed(context_takeover: bool) -> DeflateParams {
        let server = negotiate(
            [CLIENT_OFFER],
            &DeflateConfig {
                context_takeover,
                ..Default::default()
            },
        )
        .unwrap();
        accept_response([server.response_value().as_str()], true)
            .unwrap()
            .unwrap()
    }

    /// Compresses `message` three times; the server's inflater must read each.
    fn three_times(
        client: &mut ClientDeflate,
        shared: &mut SharedDeflate,
        reset: bool,
    ) -> Vec<usize> {
        let mut server_inflater = Inflater::new();
        let message = br#"{"user":"ann","text":"hello hello hello"}"#.repeat(20);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut packed = Vec::new();
            client.compress(shared, &message, &mut packed);
            sizes.push(packed.len());
            let mut out = Vec::new();
            server_inflater
                .inflate(&packed, &mut out, 1 << 20, reset)
                .unwrap();
            assert_eq!(out, message);
        }
        sizes
    }

    #[test]
    fn context_takeover_keeps_its_own_history() {
        let mut client = ClientDeflate::new(agreed(true), false);
        let mut shared = SharedDeflate::default();
        let sizes = three_times(&mut client, &mut shared, false);
        assert!(!shared.deflater_in_use(), "context takeover: own context");
        assert!(
            sizes[1] < sizes[0],
            "the second message refers to the first"
        );
    }

    #[test]
    fn without_takeover_or_with_one_message_the_shared_pair_serves() {
        for (takeover, one_message) in [(false, false), (true, true)] {
            let mut client = ClientDeflate::new(agreed(takeover), one_message);
            let mut shared = SharedDeflate::default();
            let sizes = three_times(&mut client, &mut shared, true);
            assert!(shared.deflater_in_use());
            assert!(client.deflater.is_none());
            assert_eq!(sizes[0], sizes[1], "every message from an empty window");
        }
    }
}
