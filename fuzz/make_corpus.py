#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small, meaningful inputs).

Each target's input layout is documented at the top of its fuzz_targets/<target>.rs; the
prefix bytes here follow it. Run from anywhere: `python3 fuzz/make_corpus.py`. Seeds are named
by content, so re-running is idempotent and never removes what the fuzzer added.
"""
import hashlib
import os
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])  # RFC 6455 §5.7's masking key


def frame(opcode, payload, fin=True, rsv=0, key=KEY, length_form=None):
    """A masked client frame; length_form forces 126/127 (non-minimal) encodings."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    form = length_form or (0 if n < 126 else 126 if n <= 0xFFFF else 127)
    if form == 0:
        head = bytes([first, 0x80 | n])
    elif form == 126:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def plan(*gaps, cycle=False):
    """The split plan prefix (see common::take_plan)."""
    assert len(gaps) <= 15
    return bytes([(0x10 if cycle else 0) | len(gaps), *gaps])


BYTEWISE = plan(1, cycle=True)
WHOLE = plan()


def deflate_raw(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def close(code, reason=b""):
    return code.to_bytes(2, "big") + reason


REQ = (
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
REQ_DEFLATE = REQ.replace(
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, permessage-deflate\r\n",
)
GET_STATS = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"

HELLO = frame(0x1, b"Hello")  # 81 85 37 fa 21 3d 7f 9f 4d 51 58
HEL_LO = frame(0x1, b"Hel", fin=False) + frame(0x0, b"lo")
PING_PONG = frame(0x9, b"Hello") + frame(0xA, b"Hello")
KOSME = "κόσμε 😀".encode()

decoder_streams = {
    "hello": HELLO,
    "hel_lo": HEL_LO,
    "ping_pong": PING_PONG,
    "binary_256": frame(0x2, bytes(range(256))),
    "binary_127_form": frame(0x2, bytes(300), length_form=127),
    "fragments_with_ping_then_close": frame(0x1, KOSME[:3], fin=False)
    + frame(0x9, b"p")
    + frame(0x0, KOSME[3:9], fin=False)
    + frame(0x0, KOSME[9:])
    + frame(0x8, close(1000, b"bye")),
    "close_empty": frame(0x8, b""),
    "close_one_byte": frame(0x8, b"\x03"),
    "close_1005": frame(0x8, close(1005)),
    "close_bad_utf8": frame(0x8, close(1000, b"\xff")),
    "text_bad_utf8": frame(0x1, b"ok\xed\xa0\x80"),
    "text_truncated_utf8": frame(0x1, b"\xe2\x82"),
    "unmasked": bytes([0x81, 0x05]) + b"Hello",
    "reserved_opcode": frame(0x3, b""),
    "continuation_first": frame(0x0, b"x"),
    "length_overflow": bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]) + KEY,
    "zero_length_fragments": frame(0x2, b"", fin=False) + frame(0x0, b"", fin=False) + frame(0x0, b""),
}

seeds = {t: [] for t in [
    "handshake", "decoder_splits", "utf8", "close_payload", "connection", "frame_header", "deflate",
]}

# decoder_splits: [max_frame, max_message, flags, plan.., data..]
for name, stream in decoder_streams.items():
    seeds["decoder_splits"].append(bytes([0xFF, 0xFF, 0]) + WHOLE + stream)
    seeds["decoder_splits"].append(bytes([0xFF, 0xFF, 0]) + BYTEWISE + stream)
    seeds["decoder_splits"].append(bytes([0xFF, 0xFF, 0]) + plan(3, 7, 0, 2) + stream)
# Small limits: 16-byte frames, 32-byte messages, then a message over them.
seeds["decoder_splits"].append(
    bytes([16, 32, 0]) + plan(5, cycle=True)
    + frame(0x1, b"0123456789abcdef", fin=False) + frame(0x0, b"0123456789abcdef", fin=False)
    + frame(0x0, b"x")
)
# permessage-deflate: compressed "Hello" (RFC 7692 §7.2.3.1), whole and fragmented.
packed = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
seeds["decoder_splits"].append(bytes([0xFF, 0xFF, 1]) + plan(2, 3) + frame(0x1, packed, rsv=4))
seeds["decoder_splits"].append(
    bytes([0xFF, 0xFF, 1]) + BYTEWISE
    + frame(0x2, packed[:3], fin=False, rsv=4) + frame(0x9, b"") + frame(0x0, packed[3:])
)
seeds["decoder_splits"].append(bytes([0xFF, 0xFF, 1]) + WHOLE + frame(0x9, b"", rsv=4))

# connection: [max_frame, max_message, head_sel, plan.., data..]
session = REQ + HELLO + HEL_LO + frame(0x9, b"are you there") + frame(0x8, close(1000, b"bye"))
seeds["connection"] += [
    bytes([0xFF, 0xFF, 0x80]) + WHOLE + session,
    bytes([0xFF, 0xFF, 0x80]) + plan(40, 100, 7, 1, 1, 30) + session,
    bytes([0xFF, 0xFF, 0x80]) + WHOLE + GET_STATS + GET_STATS + session,
    bytes([0xFF, 0xFF, 0x80]) + WHOLE + REQ.replace(b"Version: 13", b"Version: 8"),
    bytes([0xFF, 0xFF, 0x80]) + WHOLE + b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    bytes([0xFF, 0xFF, 0x80]) + WHOLE + REQ + frame(0x1, b"\xff"),
    bytes([16, 32, 0x80]) + plan(3, cycle=True) + REQ + frame(0x2, bytes(40)),
    bytes([0xFF, 0xFF, 0x04]) + WHOLE + REQ,  # max_head 64: too large
    bytes([0xFF, 0xFF, 0xC0]) + WHOLE + REQ_DEFLATE + frame(0x1, packed, rsv=4) + frame(0x8, b""),
    bytes([0xFF, 0x48, 0xE0]) + plan(50, 200, cycle=True) + REQ_DEFLATE
    + frame(0x2, deflate_raw(bytes(100_000)), rsv=4),  # a small bomb against 32 KiB
]

# connection, scripted mode: [max_frame, max_message, head_sel | 0x10, opts, ops..] (see the
# target's docs and `Script::step`). The reactor's and the application's steps, so the fuzzer
# starts from states a split plan never reaches: held-back input, timers, closes both ways.
SCRIPTED = 0x90  # the default 8 KiB head limit, scripted
ACCEPT = bytes([0])  # the decision byte a request is answered with: accept / keep alive
OPT_PING, OPT_IDLE, OPT_MSG_RATE, OPT_BYTE_RATE, OPT_RATE_CLOSE = 0x01, 0x02, 0x04, 0x08, 0x10
OPT_PROXY, OPT_PROXY_REQUIRED, OPT_PROXY_TRUSTED = 0x20, 0x40, 0x80
DEADLINE, SHUTDOWN, SHED, FLUSH, PEER_FIN, RESET, PONG, ECHO = (
    bytes([op]) for op in (6, 9, 10, 11, 12, 13, 14, 15)
)


def script(opts, *ops, head_sel=SCRIPTED, limits=(0xFF, 0xFF)):
    return bytes([*limits, head_sel, opts]) + b"".join(ops)


def read(data, defer=False):
    """One read of `data` (op 0, or 4 to defer, | high << 4, then n: n * (1 + high) bytes)
    when its length has that form, else a 255-byte read and reads of the rest."""
    out = b""
    while data:
        h, n = next(
            ((h, len(data) // (1 + h)) for h in range(16)
             if len(data) % (1 + h) == 0 and len(data) // (1 + h) <= 255),
            (0, min(255, len(data))),
        )
        take = n * (1 + h)
        out += bytes([(4 if defer else 0) | h << 4, n]) + data[:take]
        data = data[take:]
    return out


def clock(n, unit):
    """The clock moves n units: 0 = 1 ms, 1 = 10 ms, 2 = 100 ms, 3 = 1 s."""
    return bytes([5 | unit << 4, n])


def send(n, text=False):
    return bytes([7 | (0x10 if text else 0), n])


def app_close(code, reason_units=0):
    return bytes([8 | reason_units << 4]) + code.to_bytes(2, "big")


MESSAGES = b"".join(frame(0x1, b"m%d" % i) for i in range(10))
PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 9001\r\n"
UPGRADED = read(REQ) + ACCEPT + FLUSH  # a reactor flushes every turn
seeds["connection"] += [
    # An upgrade, messages, a ping, the application's own sends, the peer's close, FINs.
    script(0, UPGRADED, read(HELLO + HEL_LO + frame(0x9, b"are you there")), FLUSH,
           send(40, text=True), send(3), read(frame(0x8, close(1000, b"bye"))), FLUSH, PEER_FIN),
    # A text sent while the upgrade is decided (decision bit 0), then refused (bit 1).
    script(0, read(REQ), bytes([1]), FLUSH),
    script(0, read(REQ), bytes([3]), FLUSH),
    # Our close, the close wait running out; and our close answered.
    script(0, UPGRADED, read(HELLO), app_close(1000, 2), FLUSH, DEADLINE, FLUSH),
    script(0, UPGRADED, app_close(4000), FLUSH, read(frame(0x8, close(4000))), FLUSH, PEER_FIN),
    # Pipelined plain requests, the last one ending the keep-alive (decision bit 2); a plain
    # request, then an upgrade, on one connection.
    script(0, read(GET_STATS * 3), ACCEPT, ACCEPT, bytes([4]), FLUSH),
    script(0, read(GET_STATS + REQ), ACCEPT, ACCEPT, read(HELLO), FLUSH),
    # A partial head, then the handshake timeout.
    script(0, read(REQ[:40]), DEADLINE),
    # 5 messages/s: ten in one read pause reading; the deadlines let the rest through.
    script(OPT_MSG_RATE, UPGRADED, read(MESSAGES), DEADLINE, DEADLINE, clock(1, 3), FLUSH),
    # 1000 bytes/s: a 2 000-byte message puts the bucket in debt.
    script(OPT_BYTE_RATE, UPGRADED, read(frame(0x2, bytes(2000)) + HELLO), clock(5, 2),
           DEADLINE, DEADLINE, FLUSH),
    # The rate-limit close policy: 1008, then the peer's answer.
    script(OPT_MSG_RATE | OPT_RATE_CLOSE, UPGRADED, read(MESSAGES), FLUSH,
           read(frame(0x8, close(1008))), PEER_FIN),
    # A reader that defers all after the first message, with a ping in between.
    script(0, UPGRADED, read(MESSAGES[:24] + frame(0x9, b"p") + MESSAGES[24:], defer=True),
           FLUSH),
    # Keepalive: a ping after 1 s of silence, answered (a round trip); then silence past the
    # 3 s idle limit.
    script(OPT_PING | OPT_IDLE, UPGRADED, clock(1, 3), FLUSH, clock(3, 0), PONG, clock(5, 3),
           FLUSH),
    script(OPT_PING | OPT_IDLE, UPGRADED, DEADLINE, FLUSH, DEADLINE, FLUSH, DEADLINE),
    # A PROXY header from a trusted peer, then an upgrade; and one required but untrusted.
    script(OPT_PROXY | OPT_PROXY_REQUIRED | OPT_PROXY_TRUSTED, read(PROXY_V1 + REQ), ACCEPT,
           read(HELLO), FLUSH),
    script(OPT_PROXY | OPT_PROXY_REQUIRED, read(PROXY_V1 + REQ), FLUSH),
    # permessage-deflate (without and with context takeover): a compressed message, a
    # compressed send, then the connection shed.
    script(0, read(REQ_DEFLATE), ACCEPT, read(frame(0x1, packed, rsv=4)), send(200, text=True),
           FLUSH, SHED, head_sel=0xD0),
    script(0, read(REQ_DEFLATE), ACCEPT, read(frame(0x1, packed, rsv=4)), send(200, text=True),
           read(frame(0x1, packed, rsv=4)), FLUSH, head_sel=0xF0),
    # Shutdown with an echo queued; a transport error mid-frame; the echo turned off.
    script(0, UPGRADED, read(HELLO), SHUTDOWN, FLUSH, read(frame(0x8, close(1001))), FLUSH),
    script(0, UPGRADED, read(HELLO[:4]), RESET),
    script(0, UPGRADED, ECHO, read(HELLO), send(5), ECHO, read(HELLO), FLUSH),
]

# handshake: [head_sel, hdr_sel, plan.., data..]
for req in [
    REQ,
    REQ_DEFLATE,
    REQ + HELLO,
    GET_STATS,
    REQ.replace(b"GET", b"POST"),
    REQ.replace(b"HTTP/1.1", b"HTTP/1.0"),
    REQ.replace(b"Host: server.example.com\r\n", b""),
    REQ.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ=="),
    REQ.replace(b"Host:", b"Host :"),
    REQ.replace(
        b"Sec-WebSocket-Version: 13\r\n",
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; "
        b"server_max_window_bits=10; client_max_window_bits=9; server_no_context_takeover\r\n",
    ),
    b"GET / HTTP/1.1\r\n\r",  # not complete yet
]:
    seeds["handshake"].append(bytes([0xFF, 64]) + WHOLE + req)
    seeds["handshake"].append(bytes([0xFF, 64]) + plan(1, 3, 2, 60) + req)
seeds["handshake"].append(bytes([0x81, 64]) + BYTEWISE + REQ)  # max_head 64
seeds["handshake"].append(bytes([0xFF, 3]) + WHOLE + REQ)  # too many headers

# utf8: [plan.., data..]
for text in [
    KOSME,
    "ascii only".encode(),
    "\U0010FFFF\u0800\u07ff\x7f".encode(),
    b"\xed\xa0\x80",  # surrogate
    b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\x80",  # overlong
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf8\x88\x80\x80\x80",
    b"\xc2\x41",
    b"abc\xe2\x82",  # truncated at the end
    b"\xff",
    KOSME + b"\x80" + KOSME,
]:
    seeds["utf8"].append(WHOLE + text)
    seeds["utf8"].append(BYTEWISE + text)
    seeds["utf8"].append(plan(2, 1, 3) + text)

# close_payload: the payload itself
seeds["close_payload"] += [
    b"", b"\x03", close(1000), close(1000, b"bye"), close(1005), close(1006), close(1015),
    close(2999), close(3000), close(4999, "κόσμε".encode()), close(5000), close(1000, b"\xff"),
    close(1011, "é".encode() * 61 + b"x"),
]

# frame_header: [rsv_sel, data..]
for rsv_sel, data in [
    (0, HELLO),
    (0, frame(0x2, bytes(256))[:8]),
    (0, frame(0x2, bytes(70_000))[:14]),
    (0, frame(0x2, b"x", length_form=126)[:8]),
    (0, frame(0x2, b"x", length_form=127)[:14]),
    (0, bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]) + KEY),
    (0, frame(0x9, b"")),
    (0, bytes([0x09, 0x80]) + KEY),
    (0, bytes([0x89, 0xFE])),
    (0, bytes([0x81, 0x05])),
    (4, frame(0x1, b"", rsv=4)),
    (0, frame(0x1, b"", rsv=4)),
    (7, frame(0x0, b"", rsv=7)),
]:
    seeds["frame_header"].append(bytes([rsv_sel]) + data)

# deflate: [flags, max_sel, data..]
seeds["deflate"] += [
    bytes([0x00, 0xFF]) + packed,
    bytes([0x37, 0x48]) + deflate_raw(bytes(100_000)),  # bomb against a 32 KiB limit
    bytes([0x86, 0xFF]) + b"Hello Hello Hello Hello " * 20,
    bytes([0x00, 0xFF]) + b"\xff" * 32,
    bytes([0x0F, 0x05]) + deflate_raw(b"0123456789"),
    bytes([0x00, 0xFF]) + b"\x00",
]

total = 0
for target, inputs in seeds.items():
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for data in inputs:
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        total += len(data)
    print(f"{target}: {len(inputs)} seeds")
print(f"total {total} bytes")
