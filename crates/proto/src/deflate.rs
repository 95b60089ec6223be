//! permessage-deflate (RFC 7692): negotiating the extension, and compressing and inflating
//! whole messages with hard output bounds.
//!
//! # Memory
//! A deflate context costs memory for as long as it keeps its sliding window: about 336 KiB
//! for a compressor with a 32 KiB window, about 44 KiB for an inflater (measured with
//! zlib-rs: benches/README.md, "permessage-deflate"). "No context takeover"
//! means the window is dropped after every message, so one context can serve every connection
//! in turn: by default wsloop answers with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 §7.1.1 lets a server add both), so a reactor needs one
//! compressor and one inflater whatever the number of connections. Context takeover (better
//! ratios on streams of small similar messages) is opt-in and then costs a context pair per
//! connection, created on its first compressed message.
//!
//! zlib cannot compress raw deflate with a 256-byte window (`windowBits` 8), so an offer that
//! requires `server_max_window_bits=8` is declined, as RFC 7692 §7.1.2.1 allows.

use std::collections::VecDeque;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::error::ProtocolError;
use super::pool::BufferPool;

/// The tail that a sync flush ends with, removed from and re-added to each message (§7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server is willing to negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Largest window the server compresses with (9–15).
    pub server_max_window_bits: u8,
    /// Largest window the server asks clients to compress with, when they let it (9–15).
    pub client_max_window_bits: u8,
    /// Keep compression contexts across messages (better ratio, memory per connection).
    pub context_takeover: bool,
    /// Messages shorter than this are sent uncompressed.
    pub min_size: usize,
    /// zlib level 0–9.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            context_takeover: false,
            min_size: 64,
            level: 1,
        }
    }
}

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message (so our inflater may too).
    pub client_no_context_takeover: bool,
    /// The server's compression window.
    pub server_max_window_bits: u8,
    /// `Some(bits)` when the response limits the client's window.
    pub client_max_window_bits: Option<u8>,
    /// Whether the offer named `server_max_window_bits` (the response must then carry it).
    server_bits_requested: bool,
}

impl DeflateParams {
    /// Parameters negotiated earlier (by another process, which handed the connection
    /// over): what [`negotiate`] would have returned for them.
    pub fn from_parts(
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_max_window_bits: u8,
        client_max_window_bits: Option<u8>,
    ) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover,
            client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
            server_bits_requested: false,
        }
    }

    /// The `Sec-WebSocket-Extensions` value that accepts this configuration.
    pub fn response_value(&self) -> String {
        let mut value = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if self.server_bits_requested || self.server_max_window_bits < 15 {
            value.push_str("; server_max_window_bits=");
            value.push_str(&self.server_max_window_bits.to_string());
        }
        if let Some(bits) = self.client_max_window_bits {
            value.push_str("; client_max_window_bits=");
            value.push_str(&bits.to_string());
        }
        value
    }
}

/// One parsed offer; `None` fields were absent.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Picks the first acceptable `permessage-deflate` offer from the `Sec-WebSocket-Extensions`
/// header values, in the client's order of preference (RFC 7692 §5). Offers with unknown,
/// repeated or invalid parameters are declined, and so is one the server cannot honour.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<DeflateParams> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(parse_offer)
        .find_map(|offer| accept(&offer, config))
}

fn parse_offer(extension: &str) -> Option<Offer> {
    let mut parts = extension.split(';').map(|p| p.trim_matches([' ', '\t']));
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    parse_params(parts)
}

/// The parameters of one `permessage-deflate` element (offer or response: same grammar);
/// `None` for an unknown, repeated or malformed one.
fn parse_params<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => {
                let v = v.trim_matches([' ', '\t']);
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (n.trim_matches([' ', '\t']), Some(v))
            }
            None => (param, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(v)?);
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                });
            }
            _ => return None, // Unknown, repeated, or a value where none belongs: decline.
        }
    }
    Some(offer)
}

/// The offer a client sends: permessage-deflate with every parameter left to the server
/// (`client_max_window_bits` without a value says the client can honour a window limit).
pub const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Why a client refuses the server's `Sec-WebSocket-Extensions` answer; RFC 7692 §5 says the
/// client must then fail the connection rather than guess what the server will send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// An extension the client did not offer (any extension, when it offered none).
    NotOffered,
    /// permessage-deflate accepted more than once.
    Repeated,
    /// An unknown, repeated or malformed parameter, or `client_max_window_bits` without the
    /// value a response must give it (§7.1.2.2).
    BadParameter,
    /// `client_max_window_bits=8`: zlib cannot compress with a 256-byte window.
    WindowTooSmall,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseError::NotOffered => "server accepted an extension that was not offered",
            ResponseError::Repeated => "server accepted permessage-deflate twice",
            ResponseError::BadParameter => "bad permessage-deflate parameter in the answer",
            ResponseError::WindowTooSmall => "server asked for an 8-bit client window",
        })
    }
}

impl std::error::Error for ResponseError {}

/// The client side of negotiation: checks the server's `Sec-WebSocket-Extensions` values
/// against what the client offered (`offered`: [`CLIENT_OFFER`], or nothing) and returns the
/// agreed parameters, `None` when the server declined.
///
/// Every parameter the server may add on its own (§7.1.1, §7.1.2.2: both
/// `*_no_context_takeover`, `server_max_window_bits`) is taken; `client_max_window_bits`
/// must carry a value, which [`CLIENT_OFFER`] allows since it names the parameter.
///
/// # Errors
/// An answer the client must fail the connection on, see [`ResponseError`].
pub fn accept_response<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    offered: bool,
) -> Result<Option<DeflateParams>, ResponseError> {
    let mut accepted = None;
    let elements = header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(|element| element.trim_matches([' ', '\t']))
        .filter(|element| !element.is_empty());
    for element in elements {
        let mut parts = element.split(';').map(|p| p.trim_matches([' ', '\t']));
        let name = parts.next().unwrap_or_default();
        if !offered || !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(ResponseError::NotOffered);
        }
        if accepted.is_some() {
            return Err(ResponseError::Repeated);
        }
        let answer = parse_params(parts).ok_or(ResponseError::BadParameter)?;
        let client_max_window_bits = match answer.client_max_window_bits {
            Some(None) => return Err(ResponseError::BadParameter),
            Some(Some(8)) => return Err(ResponseError::WindowTooSmall),
            Some(bits) => bits,
            None => None,
        };
        accepted = Some(DeflateParams {
            server_no_context_takeover: answer.server_no_context_takeover,
            client_no_context_takeover: answer.client_no_context_takeover,
            server_max_window_bits: answer.server_max_window_bits.unwrap_or(15),
            client_max_window_bits,
            server_bits_requested: answer.server_max_window_bits.is_some(),
        });
    }
    Ok(accepted)
}

/// §7.1.2: "a decimal integer value without leading zeros between 8 to 15, inclusive".
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

fn accept(offer: &Offer, config: &DeflateConfig) -> Option<DeflateParams> {
    let server_bits = config
        .server_max_window_bits
        .clamp(9, 15)
        .min(offer.server_max_window_bits.unwrap_or(15));
    if server_bits < 9 {
        return None; // zlib cannot honour an 8-bit window when compressing.
    }
    let client_limit = config.client_max_window_bits.clamp(9, 15);
    let client_max_window_bits = match offer.client_max_window_bits {
        // The client lets us pick; say so only when it changes something.
        Some(None) => (client_limit < 15).then_some(client_limit),
        Some(Some(offered)) => Some(client_limit.min(offered)),
        None => None,
    };
    Some(DeflateParams {
        server_no_context_takeover: offer.server_no_context_takeover || !config.context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover || !config.context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits,
        server_bits_requested: offer.server_max_window_bits.is_some(),
    })
}

/// A raw-deflate compressor for whole messages.
pub struct Deflater {
    compress: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Deflater {
    /// A compressor with a `window_bits` window (9–15) at zlib `level`.
    pub fn new(window_bits: u8, level: u32) -> Deflater {
        Deflater {
            compress: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits.clamp(9, 15),
            ),
        }
    }

    /// Appends `message` compressed to `out`, without the sync-flush tail (§7.2.1), and
    /// forgets the context afterwards when `reset` (no context takeover).
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>, reset: bool) {
        let start_in = self.compress.total_in();
        let start = out.len();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(message.len() / 2 + 64);
            }
            let done = (self.compress.total_in() - start_in) as usize;
            let rest = message.get(done..).unwrap_or_default();
            if self
                .compress
                .compress_vec(rest, out, FlushCompress::Sync)
                .is_err()
            {
                break; // Only with invalid parameters, which `new` never builds.
            }
            let all_in = (self.compress.total_in() - start_in) as usize == message.len();
            if all_in && out.len() < out.capacity() {
                break; // Room was left over: the flush is complete.
            }
        }
        if out.get(start..).is_some_and(|o| o.ends_with(&SYNC_TAIL)) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        if out.len() == start {
            // Nothing pending after the previous flush: zlib emits nothing, but the peer will
            // append the 4-byte tail, which needs the empty stored block's header byte first
            // (§7.2.3.6: an empty message is the single byte 0x00).
            out.push(0x00);
        }
        if reset {
            self.compress.reset();
        }
    }
}

/// Makes room for `room` more bytes of output: in a buffer from `pool` once the output
/// reaches its large size (the bytes so far copied over, as a reallocation would), else by
/// growing `out`.
fn grow(out: &mut Vec<u8>, room: usize, pool: Option<&mut BufferPool>) {
    let want = out.len().saturating_add(room);
    match pool {
        Some(pool) if want >= pool.large() => {
            let mut bigger = pool.take_empty(want);
            bigger.extend_from_slice(out);
            pool.give(std::mem::replace(out, bigger));
        }
        _ => out.reserve_exact(room),
    }
}

/// A raw-deflate inflater for whole messages, bounded by the message size limit.
///
/// # A block with BFINAL set
/// RFC 7692 §7.2.3.3 lets a sender end a message's data with a DEFLATE block whose `BFINAL`
/// bit is set, which ends the DEFLATE stream, and follow it with the header of a new one; with
/// context takeover the sender still keeps its LZ77 window. A finished zlib stream inflates
/// nothing more, so at the end of a stream the inflater starts a fresh one primed with the
/// window as a dictionary: the last window's worth of everything inflated before (earlier
/// messages, kept in `history` with context takeover, then this message so far). The next
/// data, in this message or the next, is read against the same window the sender used.
pub struct Inflater {
    decompress: Decompress,
    /// With context takeover: the last `window` bytes of earlier messages' output (allocated
    /// on the first message, empty without takeover).
    history: VecDeque<u8>,
    /// The sender's window size in bytes: the most a back-reference may reach.
    window: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// An inflater with the largest window, which reads streams made with any smaller one.
    pub fn new() -> Inflater {
        Inflater::with_window_bits(15)
    }

    /// An inflater for a sender whose window is at most `window_bits` (9–15) bits: it reads
    /// any stream, and keeps only that much of earlier messages for a stream that ends.
    pub fn with_window_bits(window_bits: u8) -> Inflater {
        Inflater {
            decompress: Decompress::new_with_window_bits(false, 15),
            history: VecDeque::new(),
            window: 1 << window_bits.clamp(9, 15),
        }
    }

    /// Heap bytes held besides the zlib context: the copy of the window kept for a stream
    /// that ends (context takeover only).
    pub fn history_bytes(&self) -> usize {
        self.history.capacity()
    }

    /// Inflates one message (its frames' payloads joined) into `out`, which must start empty.
    ///
    /// Output grows only as it is produced, and never past `max` bytes: a small message that
    /// inflates to gigabytes fails with [`ProtocolError::MessageTooBig`] after at most `max`
    /// bytes were allocated. With context takeover (`reset` false) the window carries over to
    /// the next message, also across a block with BFINAL set.
    ///
    /// # Errors
    /// [`ProtocolError::MessageTooBig`] past `max`; [`ProtocolError::BadCompressedData`] for
    /// input that is not raw deflate. The context is reset after an error.
    pub fn inflate(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        reset: bool,
    ) -> Result<(), ProtocolError> {
        self.inflate_pooled(message, out, max, reset, None)
    }

    /// [`Inflater::inflate`], with output that grows to `pool`'s large size moved into a
    /// buffer from `pool` (one already faulted in, when it has one idle).
    ///
    /// # Errors
    /// See [`Inflater::inflate`].
    pub fn inflate_pooled(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        reset: bool,
        mut pool: Option<&mut BufferPool>,
    ) -> Result<(), ProtocolError> {
        let result = self.inflate_message(message, out, max, &mut pool);
        if reset || result.is_err() {
            self.decompress.reset(false);
            self.history = VecDeque::new();
        } else {
            self.remember(out);
        }
        result
    }

    /// §7.2.2: inflates the message with the sync-flush tail appended, starting a new stream
    /// (same window) wherever one ends.
    fn inflate_message(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        pool: &mut Option<&mut BufferPool>,
    ) -> Result<(), ProtocolError> {
        let mut rest = message;
        loop {
            let (used, ended) = self.inflate_some(rest, out, max, pool)?;
            if !ended {
                break;
            }
            rest = rest.get(used..).unwrap_or_default();
            self.restart(out)?;
            if rest.is_empty() {
                // §7.2.3.3: the data ended with the BFINAL block itself; the tail would only
                // open a stored block that the next message's data could not close.
                return Ok(());
            }
        }
        let (_, ended) = self.inflate_some(&SYNC_TAIL, out, max, pool)?;
        if ended {
            // The tail completed a final stored block the message began.
            self.restart(out)?;
        }
        Ok(())
    }

    /// Inflates `input` into `out` until it is used up or the DEFLATE stream ends; returns
    /// how many bytes of `input` were consumed and whether the stream ended.
    fn inflate_some(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        pool: &mut Option<&mut BufferPool>,
    ) -> Result<(usize, bool), ProtocolError> {
        let start_in = self.decompress.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(ProtocolError::MessageTooBig);
                }
                // Grow geometrically, but never reserve past the limit (+1 to detect it).
                let room = (max + 1 - out.len()).min(out.len().max(input.len() * 2).max(1024));
                grow(out, room, pool.as_deref_mut());
            }
            let done = (self.decompress.total_in() - start_in) as usize;
            let rest = input.get(done..).unwrap_or_default();
            let status = self
                .decompress
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::BadCompressedData)?;
            if out.len() > max {
                return Err(ProtocolError::MessageTooBig);
            }
            let used = (self.decompress.total_in() - start_in) as usize;
            if status == Status::StreamEnd {
                return Ok((used, true));
            }
            let all_in = used == input.len();
            if (all_in && out.len() < out.capacity())
                || (status == Status::BufError && out.len() < out.capacity())
            {
                // All input consumed, or no progress possible with room left.
                return Ok((used, false));
            }
        }
    }

    /// A stream ended: start a fresh one whose window is what the sender's still is, the
    /// last `window` bytes inflated so far (`history`, then `out`).
    fn restart(&mut self, out: &[u8]) -> Result<(), ProtocolError> {
        let from_out = out.len().min(self.window);
        let from_history = (self.window - from_out).min(self.history.len());
        let mut dictionary = Vec::with_capacity(from_history + from_out);
        dictionary.extend(self.history.range(self.history.len() - from_history..));
        dictionary.extend_from_slice(out.get(out.len() - from_out..).unwrap_or_default());
        self.decompress.reset(false);
        if dictionary.is_empty() {
            return Ok(());
        }
        self.decompress
            .set_dictionary(&dictionary)
            .map(drop)
            .map_err(|_| ProtocolError::BadCompressedData)
    }

    /// Context takeover: keeps the last `window` bytes of output, in case a later stream
    /// ends and must restart with them.
    fn remember(&mut self, out: &[u8]) {
        if self.history.capacity() == 0 {
            self.history.reserve_exact(self.window);
        }
        let new = out
            .get(out.len().saturating_sub(self.window)..)
            .unwrap_or_default();
        let overflow = (self.history.len() + new.len()).saturating_sub(self.window);
        self.history.drain(..overflow);
        self.history.extend(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<DeflateParams> {
        negotiate([value], &DeflateConfig::default())
    }

    #[test]
    fn negotiates_defaults_without_context_takeover() {
        let p = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            p.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let takeover = DeflateConfig {
            context_takeover: true,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let p = negotiate(["permessage-deflate; client_max_window_bits"], &takeover).unwrap();
        assert_eq!(
            p.response_value(),
            "permessage-deflate; client_max_window_bits=12"
        );
    }

    #[test]
    fn honours_requested_parameters() {
        let p = offer("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9")
            .unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(p.client_max_window_bits, Some(9));
        assert!(p.response_value().contains("server_max_window_bits=10"));
        assert!(p.response_value().contains("client_max_window_bits=9"));
        let p = offer("permessage-deflate; server_max_window_bits=\"12\"").unwrap();
        assert_eq!(p.server_max_window_bits, 12);
    }

    #[test]
    fn declines_invalid_offers_and_takes_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=8",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let p = negotiate(
            [
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=11",
            ],
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 11);
    }

    #[test]
    fn client_takes_the_servers_answers() {
        let p = accept_response(["permessage-deflate"], true)
            .unwrap()
            .unwrap();
        assert!(!p.server_no_context_takeover && !p.client_no_context_takeover);
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (15, None)
        );
        // What wsloop answers by default, read back by the client.
        let server = offer(CLIENT_OFFER).unwrap();
        let p = accept_response([server.response_value().as_str()], true)
            .unwrap()
            .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        let p = accept_response(
            ["permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"],
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, Some(12))
        );
        assert_eq!(accept_response([], true), Ok(None), "declined");
        assert_eq!(accept_response([""], false), Ok(None), "an empty header");
    }

    #[test]
    fn client_refuses_answers_it_did_not_offer() {
        use ResponseError::*;
        for (answer, offered, why) in [
            ("permessage-deflate", false, NotOffered),
            ("x-webkit-deflate-frame", true, NotOffered),
            ("permessage-deflate, x-foo", true, NotOffered),
            ("permessage-deflate, permessage-deflate", true, Repeated),
            (
                "permessage-deflate; client_max_window_bits",
                true,
                BadParameter,
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                true,
                WindowTooSmall,
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                true,
                BadParameter,
            ),
            ("permessage-deflate; mystery", true, BadParameter),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                true,
                BadParameter,
            ),
        ] {
            assert_eq!(accept_response([answer], offered), Err(why), "{answer}");
        }
    }

    #[test]
    fn round_trip_with_and_without_context_takeover() {
        let messages: Vec<Vec<u8>> = vec![
            b"Hello".to_vec(),
            Vec::new(),
            b"Hello Hello Hello Hello".repeat(100),
            (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect(),
        ];
        for reset in [false, true] {
            let mut deflater = Deflater::new(15, 6);
            let mut inflater = Inflater::new();
            for m in &messages {
                let mut packed = Vec::new();
                deflater.compress(m, &mut packed, reset);
                assert!(!packed.ends_with(&SYNC_TAIL));
                let mut out = Vec::new();
                inflater.inflate(&packed, &mut out, 1 << 20, reset).unwrap();
                assert_eq!(&out, m);
            }
        }
    }

    #[test]
    fn rfc7692_example_hello() {
        // §7.2.3.1: "Hello" compressed is c2 48 cd c9 c9 07 00 (one of several valid forms).
        let mut out = Vec::new();
        Inflater::new()
            .inflate(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                &mut out,
                100,
                true,
            )
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn large_output_moves_into_an_idle_pooled_buffer() {
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut packed = Vec::new();
        Deflater::new(15, 1).compress(&message, &mut packed, true);
        let mut pool = BufferPool::new(64 * 1024, 8 << 20);
        pool.give(vec![0; 1 << 20]);
        let idle = pool.take_empty(1 << 20);
        let ptr = idle.as_ptr();
        pool.give(idle);
        let mut out = Vec::new();
        Inflater::new()
            .inflate_pooled(&packed, &mut out, 1 << 20, true, Some(&mut pool))
            .unwrap();
        assert!(out == message);
        assert_eq!(out.as_ptr(), ptr, "inflated into the idle buffer");
        // The bound holds with a pool as without.
        let bomb = vec![0u8; 4 << 20];
        let mut packed = Vec::new();
        Deflater::new(15, 9).compress(&bomb, &mut packed, true);
        let mut out = Vec::new();
        let err = Inflater::new().inflate_pooled(&packed, &mut out, 1 << 20, true, Some(&mut pool));
        assert_eq!(err, Err(ProtocolError::MessageTooBig));
        assert!(out.len() <= (1 << 20) + 1);
    }

    #[test]
    fn bomb_is_refused_without_allocating_it() {
        let big = vec![0u8; 10 << 20];
        let mut packed = Vec::new();
        Deflater::new(15, 9).compress(&big, &mut packed, true);
        assert!(packed.len() < 20_000);
        let mut out = Vec::new();
        let err = Inflater::new().inflate(&packed, &mut out, 1 << 20, true);
        assert_eq!(err, Err(ProtocolError::MessageTooBig));
        assert!(
            out.capacity() <= (1 << 20) + 1,
            "allocated {}",
            out.capacity()
        );
    }

    /// A sender that ends each message's data with a BFINAL block (RFC 7692 §7.2.3.3) yet
    /// keeps its LZ77 window: every message is a fresh stream primed with what it sent before.
    struct FinishingSender {
        sent: Vec<u8>,
        zero_after: bool,
    }

    impl FinishingSender {
        fn message(&mut self, text: &[u8]) -> Vec<u8> {
            let mut compress = Compress::new_with_window_bits(Compression::new(6), false, 15);
            let window = self.sent.len().saturating_sub(1 << 15);
            if !self.sent[window..].is_empty() {
                compress.set_dictionary(&self.sent[window..]).unwrap();
            }
            let mut packed = Vec::with_capacity(text.len() + 64);
            let status = compress
                .compress_vec(text, &mut packed, FlushCompress::Finish)
                .unwrap();
            assert_eq!(status, Status::StreamEnd);
            if self.zero_after {
                // §7.2.3.3's example form: the header of an empty stored block follows.
                packed.push(0x00);
            }
            self.sent.extend_from_slice(text);
            packed
        }
    }

    #[test]
    fn bfinal_block_keeps_the_window_for_later_messages() {
        for zero_after in [false, true] {
            let mut sender = FinishingSender {
                sent: Vec::new(),
                zero_after,
            };
            let mut inflater = Inflater::new();
            let long: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 253) as u8).collect();
            let messages: [&[u8]; 5] = [
                b"Hello, Hello, Hello",
                b"Hello, Hello, Hello",
                &long,
                b"Hello, Hello, Hello and more",
                &long[30_000..],
            ];
            for (i, m) in messages.iter().enumerate() {
                let packed = sender.message(m);
                let mut out = Vec::new();
                inflater.inflate(&packed, &mut out, 1 << 20, false).unwrap();
                assert_eq!(&out, m, "message {i}, zero after: {zero_after}");
            }
            assert!(inflater.history_bytes() >= 1 << 15);
            assert!(
                inflater.history_bytes() < 1 << 16,
                "history stays one window"
            );
        }
    }

    #[test]
    fn rfc7692_bfinal_example_then_a_back_reference() {
        // §7.2.3.3: "Hello" in a block with BFINAL set, then an empty stored block's header.
        let mut inflater = Inflater::new();
        let mut out = Vec::new();
        let first = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        inflater.inflate(&first, &mut out, 100, false).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.2's second message: a back-reference to the first "Hello" (distance 5).
        let mut out = Vec::new();
        inflater
            .inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], &mut out, 100, false)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn a_stream_that_ends_mid_message_continues_in_the_same_message() {
        // One message: "Hello" with BFINAL set, then a new stream that refers back to it.
        let mut sender = FinishingSender {
            sent: Vec::new(),
            zero_after: false,
        };
        let mut packed = sender.message(b"Hello, world. ");
        packed.extend(sender.message(b"Hello, world. Hello, world."));
        for reset in [true, false] {
            let mut out = Vec::new();
            Inflater::new()
                .inflate(&packed, &mut out, 1 << 10, reset)
                .unwrap();
            assert_eq!(out, b"Hello, world. Hello, world. Hello, world.");
        }
    }

    #[test]
    fn garbage_is_bad_data() {
        let mut out = Vec::new();
        let err = Inflater::new().inflate(&[0xff; 32], &mut out, 1 << 20, true);
        assert_eq!(err, Err(ProtocolError::BadCompressedData));
    }
}
