//! Micro-benchmarks of the protocol core and of the reactor's per-frame work (criterion).
//!
//! The wsload figures in benches/README.md measure the whole server through the kernel; these
//! measure the user-space work per frame and per byte, so it can be set beside the syscall cost
//! and beside the machine's memory-copy speed:
//! - `decode`: a buffer of many masked client frames (text and binary alternating) decoded by
//!   [`Decoder`] the way a connection's `handle_input` (`wsloop_proto::conn`) drives it: the
//!   bytes split into reads of the reactor's read-buffer size, `decode` called until each read
//!   is used up, and each message taken as the connection hands it out (text validated once
//!   more, to give the application a `&str`). By payload size, plus a message sent in
//!   fragments.
//! - `decode_large`: one 4 MiB or 16 MiB binary message (and 16 MiB text) decoded as the
//!   reactor reads a payload larger than its read buffer: the header from a read into the read
//!   buffer, then every later read straight into the message buffer
//!   ([`Decoder::read_target`], one `copy_from_slice` standing for the kernel's copy), unmasked
//!   in place ([`Decoder::decode_target`]), the buffer back to a pool kept across messages.
//!   Set beside `memcpy` of the same size: the ideal is one copy.
//! - `encode`: server frame header and payload appended to an [`Outbox`] as a connection's
//!   `send` does through the reactor's door, the outbox then cleared as the reactor's
//!   end-of-turn flush does.
//! - `unmask`: [`apply_mask`] (a word at a time), aligned and unaligned, and the bytewise
//!   reference beside it.
//! - `utf8`: the streaming [`Utf8Validator`] fed in chunks, [`utf8::validate`] and
//!   `std::str::from_utf8`, on ASCII and on mixed Chinese + emoji text.
//! - `handshake`: a Chrome upgrade request scanned, parsed, validated, checked for its origin
//!   and answered with the 101 response and its accept key.
//! - `memcpy`: `copy_from_slice`, the memory-copy limit that large-message figures are read
//!   against: with source and destination in the caches (`copy_from_slice`, up to 16 MiB) and
//!   with neither (`copy_from_slice_cold`: each copy takes the next of several buffer pairs,
//!   128 MiB in all, four times this machine's 32 MiB L3), which is how a large echo meets
//!   its payload (in flight, its messages and socket buffers run through more memory than
//!   the L3 holds).
//!
//! `cargo bench --bench micro` for the full run (about five minutes on two shared cores);
//! `cargo bench --bench micro -- --quick` for a quick one; `cargo bench --bench micro -- --test`
//! runs each benchmark once without measuring (a smoke test). It also prints
//! `size_of::<Entry>()` (a connection in the slab).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng};
use wsloop::internals::{origin_allowed, Entry, Outbox};
use wsloop::protocol::deflate::{negotiate, DeflateConfig};
use wsloop::protocol::frame::{server_header, MAX_HEADER_LEN};
use wsloop::protocol::handshake::{
    validate_upgrade, write_accept_response, HeadScanner, RequestHead, EMPTY_HEADER,
};
use wsloop::protocol::mask::{apply_mask, apply_mask_bytewise};
use wsloop::protocol::utf8::{self, Utf8Validator};
use wsloop::protocol::{
    BufferPool, Decoder, Event, FrameHeader, Limits, MessageKind, OpCode, Outcome, Payload,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The reactor's plaintext read buffer (`READ_BUF` in src/reactor/mod.rs): one read hands
/// the decoder at most this many bytes.
const READ: usize = 256 * KIB;

/// `Config::default().max_head` and the reactor's `MAX_HEADERS`.
const MAX_HEAD: usize = 8 * KIB;
const MAX_HEADERS: usize = 64;

/// Payload sizes of the decode and encode groups, with their labels.
const SIZES: [(usize, &str); 4] = [
    (32, "32B"),
    (KIB, "1KiB"),
    (64 * KIB, "64KiB"),
    (MIB, "1MiB"),
];

/// Masking keys and binary payloads: seeded, so every run measures the same bytes.
fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// `len` random bytes.
fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// `len` bytes of ASCII, JSON-like.
fn ascii_text(len: usize) -> Vec<u8> {
    let pattern =
        br#"{"seq":1234,"room":"lobby","msg":"the quick brown fox jumps over the lazy dog"} "#;
    pattern.iter().copied().cycle().take(len).collect()
}

/// About `len` bytes (at most 3 fewer) of Chinese, emoji and some ASCII: 1- to 4-byte code
/// points, cut on a character boundary.
fn mixed_text(len: usize) -> Vec<u8> {
    let pattern = "你好，世界！😀 WebSocket 消息测试 🚀🎉 数据 ok; ";
    let mut text = String::with_capacity(len + 4);
    for c in pattern.chars().cycle() {
        if text.len() + c.len_utf8() > len {
            break;
        }
        text.push(c);
    }
    text.into_bytes()
}

/// Appends one masked client frame.
fn client_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut bytes = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut bytes);
    out.extend_from_slice(&bytes[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

/// What a decode run saw: messages and their payload bytes.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    messages: usize,
    bytes: usize,
}

/// Decodes `wire` as a connection does: read by read, `decode` until each read is used up,
/// each message's bytes taken as the connection hands them out.
fn decode_all(decoder: &mut Decoder, limits: &Limits, wire: &mut [u8]) -> Seen {
    let mut pool = BufferPool::default();
    let mut seen = Seen {
        messages: 0,
        bytes: 0,
    };
    for read in wire.chunks_mut(READ) {
        let mut pos = 0;
        while pos < read.len() {
            let rest = &mut read[pos..];
            let decoded = decoder.decode(limits, &mut pool, rest);
            pos += decoded.consumed;
            match decoded.outcome {
                Outcome::NeedMore => break,
                Outcome::Event(Event::Message(kind, payload)) => {
                    let data = payload.bytes(rest);
                    // The connection validates text once more, to hand out a `&str`.
                    if kind == MessageKind::Text {
                        utf8::validate(data).unwrap();
                    }
                    seen.bytes += black_box(data).len();
                    seen.messages += 1;
                }
                Outcome::Event(other) => panic!("unexpected event {other:?}"),
                Outcome::Error(e) => panic!("decode error: {e}"),
            }
        }
    }
    seen
}

/// Benchmarks decoding `wire` (re-copied before each iteration: decoding unmasks in place),
/// after checking once that it yields `expect`.
fn bench_decode(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    wire: &[u8],
    expect: Seen,
) {
    let limits = Limits::default();
    let mut decoder = Decoder::new();
    assert_eq!(
        decode_all(&mut decoder, &limits, &mut wire.to_vec()),
        expect
    );
    c.throughput(Throughput::ElementsAndBytes {
        elements: expect.messages as u64,
        bytes: wire.len() as u64,
    });
    c.bench_function(id, |b| {
        b.iter_batched_ref(
            || wire.to_vec(),
            |buf| decode_all(&mut decoder, &limits, buf),
            BatchSize::PerIteration,
        )
    });
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let mut rng = rng(0x2545_F491_4F6C_DD1D);
    for (size, label) in SIZES {
        // About 1 MiB of payload per iteration (4 MiB for 1 MiB frames), text and binary
        // alternating.
        let frames = (MIB / size).max(4);
        let text = ascii_text(size);
        let mut wire = Vec::new();
        for i in 0..frames {
            if i % 2 == 0 {
                client_frame(
                    &mut wire,
                    true,
                    OpCode::Text,
                    &text,
                    rng.random::<[u8; 4]>(),
                );
            } else {
                let binary = random_bytes(&mut rng, size);
                client_frame(
                    &mut wire,
                    true,
                    OpCode::Binary,
                    &binary,
                    rng.random::<[u8; 4]>(),
                );
            }
        }
        let expect = Seen {
            messages: frames,
            bytes: frames * size,
        };
        bench_decode(&mut group, BenchmarkId::new("frames", label), &wire, expect);
    }
    // 16 text messages of 64 KiB (Chinese + emoji), each in 16 fragments: code points split
    // across fragments, the message assembled by the decoder.
    let message = mixed_text(64 * KIB);
    let mut wire = Vec::new();
    let fragments: Vec<&[u8]> = message.chunks(message.len().div_ceil(16)).collect();
    for _ in 0..16 {
        for (i, fragment) in fragments.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            let fin = i + 1 == fragments.len();
            client_frame(&mut wire, fin, opcode, fragment, rng.random::<[u8; 4]>());
        }
    }
    let expect = Seen {
        messages: 16,
        bytes: 16 * message.len(),
    };
    let id = BenchmarkId::new("fragmented", "64KiB_text_in_16");
    bench_decode(&mut group, id, &wire, expect);
    group.finish();
}

/// Decodes `wire` (one or more large messages) as the reactor reads a large payload: a read
/// into `read_buf` while the decoder has no read target, else straight into the target (the
/// `copy_from_slice` stands for the kernel's copy). Message buffers go back to `pool`.
fn decode_direct(
    decoder: &mut Decoder,
    limits: &Limits,
    pool: &mut BufferPool,
    read_buf: &mut [u8],
    wire: &[u8],
) -> Seen {
    let mut seen = Seen {
        messages: 0,
        bytes: 0,
    };
    let take = |seen: &mut Seen, kind: MessageKind, data: &[u8]| {
        if kind == MessageKind::Text {
            utf8::validate(data).unwrap();
        }
        seen.bytes += black_box(data).len();
        seen.messages += 1;
    };
    let mut pos = 0;
    while pos < wire.len() {
        if let Some(target) = decoder.read_target(READ) {
            let n = target.len().min(wire.len() - pos);
            target[..n].copy_from_slice(&wire[pos..pos + n]);
            pos += n;
            match decoder.decode_target(n) {
                Outcome::NeedMore => {}
                Outcome::Event(Event::Message(kind, Payload::Owned(buf))) => {
                    take(&mut seen, kind, &buf);
                    pool.give(buf);
                }
                other => panic!("unexpected {other:?}"),
            }
            continue;
        }
        let n = READ.min(wire.len() - pos);
        let read = &mut read_buf[..n];
        read.copy_from_slice(&wire[pos..pos + n]);
        pos += n;
        let mut at = 0;
        while at < n {
            let rest = &mut read[at..];
            let decoded = decoder.decode(limits, pool, rest);
            at += decoded.consumed;
            match decoded.outcome {
                Outcome::NeedMore => break,
                Outcome::Event(Event::Message(kind, payload)) => {
                    take(&mut seen, kind, payload.bytes(rest));
                    if let Payload::Owned(buf) = payload {
                        pool.give(buf);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    seen
}

fn decode_large(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_large");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    let mut rng = rng(0x5DEE_CE66_D1CE_4E5B);
    let limits = Limits {
        max_frame: 64 << 20,
        max_message: 64 << 20,
    };
    for (size, label, opcode) in [
        (4 * MIB, "4MiB", OpCode::Binary),
        (16 * MIB, "16MiB", OpCode::Binary),
        (16 * MIB, "16MiB_text", OpCode::Text),
    ] {
        let payload = match opcode {
            OpCode::Text => ascii_text(size),
            _ => random_bytes(&mut rng, size),
        };
        let mut wire = Vec::new();
        client_frame(&mut wire, true, opcode, &payload, rng.random::<[u8; 4]>());
        let mut decoder = Decoder::new();
        let mut pool = BufferPool::new(READ, 64 << 20);
        let mut read_buf = vec![0u8; READ];
        let expect = Seen {
            messages: 1,
            bytes: size,
        };
        let mut run = || decode_direct(&mut decoder, &limits, &mut pool, &mut read_buf, &wire);
        assert_eq!(run(), expect);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("direct", label), |b| b.iter(&mut run));
    }
    group.finish();
}

/// Encodes `payloads` as server frames for one connection, as its `send` does through the
/// reactor's door, then clears the outbox as the end-of-turn flush does after writing it
/// (dropping a buffer grown past four read buffers).
fn encode_all(outbox: &mut Outbox, opcode: OpCode, payloads: &[&[u8]]) -> usize {
    for payload in payloads {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, payload.len(), &mut header);
        outbox.push_bytes(0, &[&header[..n], payload]);
    }
    let written = black_box(&outbox.bytes).len();
    outbox.clear(4 * READ);
    written
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut rng = rng(0x9E37_79B9_7F4A_7C15);
    for (size, label) in SIZES {
        // One read's worth of echoed messages per turn (256 KiB), or one 1 MiB message.
        let frames = (READ / size).max(1);
        let source = random_bytes(&mut rng, frames * size);
        let payloads: Vec<&[u8]> = source.chunks(size).collect();
        let mut outbox = Outbox::default();
        let written = encode_all(&mut outbox, OpCode::Binary, &payloads);
        group.throughput(Throughput::ElementsAndBytes {
            elements: frames as u64,
            bytes: written as u64,
        });
        group.bench_function(BenchmarkId::new("frames", label), |b| {
            b.iter(|| encode_all(&mut outbox, OpCode::Binary, black_box(&payloads)))
        });
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for (size, label) in [(KIB, "1KiB"), (64 * KIB, "64KiB"), (MIB, "1MiB")] {
        let mut buf = random_bytes(&mut rng(7), size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("words", label), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), key, 0))
        });
    }
    // A payload starting one byte into the buffer, continuing the key at offset 3.
    let size = 64 * KIB;
    let mut buf = random_bytes(&mut rng(7), size + 1);
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function(BenchmarkId::new("words_unaligned", "64KiB"), |b| {
        b.iter(|| apply_mask(black_box(&mut buf[1..]), key, 3))
    });
    group.bench_function(BenchmarkId::new("bytewise", "64KiB"), |b| {
        b.iter(|| apply_mask_bytewise(black_box(&mut buf[..size]), key, 0))
    });
    group.finish();
}

/// Chunk size for the streaming validator: not a multiple of 3 or 4, so chunks split code
/// points and the carried-partial path runs.
const UTF8_CHUNK: usize = 4 * KIB;

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (label, text) in [
        ("ascii_64KiB", ascii_text(64 * KIB)),
        ("mixed_64KiB", mixed_text(64 * KIB)),
    ] {
        assert!(std::str::from_utf8(&text).is_ok());
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::new("streaming_4KiB_chunks", label), |b| {
            b.iter(|| {
                let mut validator = Utf8Validator::new();
                for chunk in black_box(&text).chunks(UTF8_CHUNK) {
                    validator.feed(chunk).unwrap();
                }
                validator.finish().unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("validate", label), |b| {
            b.iter(|| utf8::validate(black_box(&text)).is_ok())
        });
        group.bench_function(BenchmarkId::new("std_from_utf8", label), |b| {
            b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
        });
    }
    group.finish();
}

/// An upgrade request as Chrome 131 sends it.
const CHROME_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://example.com:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// What the reactor does with a complete upgrade request (`on_head_bytes` and `upgrade`, less
/// the application's callback): scan, parse, validate, check the origin, optionally negotiate
/// permessage-deflate, and write the 101 response into a fresh buffer.
fn handshake_once(request: &[u8], deflate: Option<&DeflateConfig>) -> Vec<u8> {
    let end = HeadScanner::default()
        .scan(request, MAX_HEAD)
        .unwrap()
        .unwrap();
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let req = RequestHead::parse(&request[..end], &mut headers).unwrap();
    assert!(req.wants_websocket());
    validate_upgrade(&req).unwrap();
    let key = req.header("sec-websocket-key").unwrap_or_default();
    assert!(origin_allowed(
        req.header("origin"),
        req.header("host"),
        &[]
    ));
    let extensions = deflate
        .and_then(|config| negotiate(req.values("sec-websocket-extensions"), config))
        .map(|params| params.response_value());
    let mut response = Vec::with_capacity(256);
    write_accept_response(&mut response, key, None, extensions.as_deref());
    response
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let response = handshake_once(CHROME_REQUEST, None);
    assert!(response.ends_with(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    group.bench_function("chrome_upgrade", |b| {
        b.iter(|| handshake_once(black_box(CHROME_REQUEST), None))
    });
    let deflate = DeflateConfig::default();
    assert!(handshake_once(CHROME_REQUEST, Some(&deflate))
        .windows(18)
        .any(|w| w == b"permessage-deflate"));
    group.bench_function("chrome_upgrade_deflate", |b| {
        b.iter(|| handshake_once(black_box(CHROME_REQUEST), Some(&deflate)))
    });
    group.bench_function("accept_key_only", |b| {
        b.iter(|| wsloop::protocol::handshake::accept_key(black_box("dGhlIHNhbXBsZSBub25jZQ==")))
    });
    group.finish();
}

/// Memory the cold copies go through: four times this machine's L3 (32 MiB), so that what
/// one copy reads or writes has left the caches by the time it comes round again.
const COLD_FOOTPRINT: usize = 128 * MIB;

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    for (size, label) in [
        (64 * KIB, "64KiB"),
        (MIB, "1MiB"),
        (4 * MIB, "4MiB"),
        (16 * MIB, "16MiB"),
        (64 * MIB, "64MiB"),
    ] {
        let src = random_bytes(&mut rng(11), size);
        let mut dst = vec![0u8; size];
        if size > MIB {
            // ~10 ms per copy: fewer, longer samples.
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(8));
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("copy_from_slice", label), |b| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
        });
    }
    for (size, label) in [(4 * MIB, "4MiB"), (16 * MIB, "16MiB")] {
        let pairs = (COLD_FOOTPRINT / (2 * size)).max(2);
        let sources: Vec<Vec<u8>> = (0..pairs)
            .map(|i| random_bytes(&mut rng(i as u64), size))
            .collect();
        // Written once, so that every page is mapped before the clock runs.
        let mut destinations: Vec<Vec<u8>> = (0..pairs).map(|_| vec![1u8; size]).collect();
        let mut next = 0;
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(8));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("copy_from_slice_cold", label), |b| {
            b.iter(|| {
                next = (next + 1) % pairs;
                black_box(&mut destinations[next]).copy_from_slice(black_box(&sources[next]));
            })
        });
    }
    // The copy `encode` makes of a 64 KiB payload: behind a 4-byte header, so the destination
    // is 4 bytes past an 8-byte boundary.
    let size = 64 * KIB;
    let src = random_bytes(&mut rng(11), size);
    let mut dst = vec![0u8; size + 4];
    group.sample_size(100);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function(BenchmarkId::new("copy_from_slice_dst+4", "64KiB"), |b| {
        b.iter(|| black_box(&mut dst[4..]).copy_from_slice(black_box(&src)))
    });
    group.finish();
}

criterion_group!(
    benches,
    decode,
    decode_large,
    encode,
    unmask,
    utf8,
    handshake,
    memcpy
);

fn main() {
    // Not a timing: the per-connection state every open connection costs (with the features
    // this bench was built with).
    eprintln!(
        "size_of::<wsloop::internals::Entry>() = {} bytes",
        std::mem::size_of::<Entry>()
    );
    benches();
    Criterion::default().configure_from_args().final_summary();
}
