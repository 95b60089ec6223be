//! `fanout`: one publisher sends `rate` text messages a second into the broadcast room; `N`
//! subscribers receive them. Deliveries per second, publish→receive latency, losses.
//!
//! Each message starts with its send time (16 hex digits of nanoseconds since the run's start)
//! and its sequence number (8 hex digits), then `x` up to `size` bytes: the room is text, and
//! every byte is checked on arrival.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll};

use super::client::{encode_frame, ClientDecoder, XorShift};
use super::net::{close_all, open_many, OpenPlan, Target};
use super::report::{JsonLine, Table};
use super::stats::{rss_kib, CpuMeter, Histogram, Percentiles};
use wsloop_proto::frame::OpCode;

/// Bytes of the timestamp and sequence prefix.
const PREFIX: usize = 24;
/// How long deliveries may trail the last publication.
const DRAIN: Duration = Duration::from_secs(2);
/// With several URLs, the pause between opening and publishing: servers that share the room
/// through a broker subscribe to it when their first member joins (Redis: one round trip),
/// and pub/sub delivers only to subscriptions that exist.
const SETTLE: Duration = Duration::from_millis(300);
/// The smallest message `fanout` sends.
pub const MIN_FANOUT_SIZE: usize = PREFIX;

/// Options of [`run_fanout`].
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// `ws://` URLs of the broadcast room (wsloop: `/chat`) on loopback addresses: connection
    /// `i` (subscribers first, the publisher last) goes to `urls[i % urls.len()]`, so the
    /// subscribers spread over several servers (processes sharing the room through Redis).
    pub urls: Vec<String>,
    /// Subscriber connections (the publisher is one more).
    pub subscribers: usize,
    /// Messages per second from the publisher.
    pub rate: f64,
    /// Payload bytes per message (at least 24).
    pub size: usize,
    /// How long to publish.
    pub duration: Duration,
    /// The server's PID, to report its CPU and memory.
    pub server_pid: Option<u32>,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            urls: vec!["ws://127.0.0.1:9001/chat".into()],
            subscribers: 100,
            rate: 1000.0,
            size: 32,
            duration: Duration::from_secs(5),
            server_pid: None,
        }
    }
}

/// What [`run_fanout`] measured.
#[derive(Debug, Clone, Default)]
pub struct FanoutReport {
    /// Subscribers requested.
    pub subscribers: usize,
    /// Subscribers that joined.
    pub subscribers_open: usize,
    /// Seconds of publishing.
    pub window_secs: f64,
    /// Messages published.
    pub published: u64,
    /// Messages published per second.
    pub publish_rate: f64,
    /// Messages received by subscribers (the publisher's own copies not counted).
    pub delivered: u64,
    /// `delivered` per second of publishing.
    pub deliveries_per_sec: f64,
    /// Publish→receive latency.
    pub latency: Percentiles,
    /// Messages a subscriber that joined did not receive intact (summed over subscribers).
    pub lost: u64,
    /// Messages received twice or out of order.
    pub out_of_order: u64,
    /// Messages whose bytes were not what was sent.
    pub corrupt: u64,
    /// Subscribers the server closed or that broke.
    pub dropped: usize,
    /// Connections that failed to open.
    pub open_failures: u64,
    /// The load generator's CPU while publishing, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU while publishing, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// The server's resident memory at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// The first error seen.
    pub first_error: Option<String>,
}

impl FanoutReport {
    /// Every subscriber joined and received every message intact.
    pub fn ok(&self) -> bool {
        self.published > 0
            && self.lost == 0
            && self.corrupt == 0
            && self.out_of_order == 0
            && self.dropped == 0
            && self.open_failures == 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", "fanout")
            .int("subscribers", self.subscribers as u64)
            .int("subscribers_open", self.subscribers_open as u64)
            .num("window_secs", self.window_secs)
            .int("published", self.published)
            .num("publish_rate", self.publish_rate)
            .int("delivered", self.delivered)
            .num("deliveries_per_sec", self.deliveries_per_sec)
            .num("p50_us", self.latency.p50_us)
            .num("p99_us", self.latency.p99_us)
            .num("p999_us", self.latency.p999_us)
            .num("max_us", self.latency.max_us)
            .int("lost", self.lost)
            .int("out_of_order", self.out_of_order)
            .int("corrupt", self.corrupt)
            .int("dropped", self.dropped as u64)
            .int("open_failures", self.open_failures)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_int("server_rss_kib", self.server_rss_kib)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        Table::new(format!(
            "wsload fanout: 1 publisher -> {} subscribers",
            self.subscribers
        ))
        .row("subscribers open", self.subscribers_open)
        .row("window", format!("{:.2} s", self.window_secs))
        .row(
            "published",
            format!("{} ({:.0}/s)", self.published, self.publish_rate),
        )
        .row("delivered", self.delivered)
        .row("deliveries/s", format!("{:.0}", self.deliveries_per_sec))
        .row(
            "latency p50 / p99 / p99.9",
            format!(
                "{:.1} / {:.1} / {:.1} us",
                self.latency.p50_us, self.latency.p99_us, self.latency.p999_us
            ),
        )
        .row("lost", self.lost)
        .row("out of order", self.out_of_order)
        .row("corrupt", self.corrupt)
        .row("subscribers dropped", self.dropped)
        .row("open failures", self.open_failures)
        .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
        .opt_row(
            "server CPU",
            self.server_cpu_pct.map(|c| format!("{c:.1} %")),
        )
        .opt_row(
            "server RSS",
            self.server_rss_kib.map(|k| format!("{k} KiB")),
        )
        .opt_row("first error", self.first_error.as_deref())
        .render()
    }
}

/// Writes `value` as `digits` lowercase hex digits into `out`.
fn put_hex(out: &mut [u8], value: u64) {
    let digits = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        let nibble = ((value >> shift) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
}

/// Reads lowercase hex digits.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(nibble))
    })
}

/// The payload of message `seq` sent at `sent_ns`.
pub fn fanout_payload(out: &mut [u8], sent_ns: u64, seq: u32) {
    let (stamp, rest) = out.split_at_mut(PREFIX.min(out.len()));
    let (time, number) = stamp.split_at_mut(16.min(stamp.len()));
    put_hex(time, sent_ns);
    put_hex(number, u64::from(seq));
    rest.iter_mut().for_each(|b| *b = b'x');
}

/// Send time and sequence number from a payload's first 24 bytes.
pub fn parse_prefix(prefix: &[u8]) -> Option<(u64, u32)> {
    let time = parse_hex(prefix.get(..16)?)?;
    let seq = parse_hex(prefix.get(16..PREFIX)?)?;
    Some((time, u32::try_from(seq).ok()?))
}

/// One receiving connection (the publisher receives its own messages too).
struct Sub {
    stream: Option<TcpStream>,
    decoder: ClientDecoder,
    prefix: [u8; PREFIX],
    msg_pos: u64,
    msg_bad: bool,
    control: Vec<u8>,
    /// The next sequence number expected.
    next_seq: u64,
    /// Distinct in-order messages received.
    received: u64,
    /// Opened (a subscriber that failed to open counts as an open failure, not as losses).
    joined: bool,
    key: [u8; 4],
}

struct Totals {
    hist: Histogram,
    delivered: u64,
    out_of_order: u64,
    corrupt: u64,
    dropped: usize,
    first_error: Option<String>,
}

impl Totals {
    fn note(&mut self, why: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Runs the fan-out test.
///
/// # Errors
/// A bad or non-loopback URL, bad options, or a failing poller.
pub fn run_fanout(opts: &FanoutOptions) -> io::Result<FanoutReport> {
    let targets = opts
        .urls
        .iter()
        .map(|url| Target::parse(url))
        .collect::<io::Result<Vec<_>>>()?;
    let invalid = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()));
    if targets.is_empty() {
        return invalid("give at least one URL");
    }
    if opts.size < MIN_FANOUT_SIZE || opts.size > 1 << 20 {
        return invalid(
            "--size must be between 24 and 1 MiB (the payload carries a 24-byte stamp)",
        );
    }
    if !(opts.rate > 0.0 && opts.rate.is_finite()) || opts.duration.is_zero() {
        return invalid("--rate and --duration must be positive");
    }
    let mut poll = Poll::new()?;
    let mut rng = XorShift::from_entropy();
    // Subscribers 0..N, the publisher last.
    let count = opts.subscribers + 1;
    let opened = open_many(
        &mut poll,
        &targets,
        &OpenPlan {
            count,
            max_pending: 256,
            sources: None,
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30) + Duration::from_millis(count as u64),
            deflate: false,
        },
        &mut rng,
    )?;
    let open_failures = opened.failures.total();
    let subscribers_open = opened
        .conns
        .iter()
        .take(opts.subscribers)
        .filter(|c| c.is_some())
        .count();
    let mut totals = Totals {
        hist: Histogram::new(),
        delivered: 0,
        out_of_order: 0,
        corrupt: 0,
        dropped: 0,
        first_error: opened.failures.first.clone(),
    };
    let base = Instant::now();
    let mut subs: Vec<Sub> = Vec::with_capacity(count);
    let mut leftovers = Vec::with_capacity(count);
    for o in opened.conns {
        let (stream, leftover) = match o {
            Some(o) => (Some(o.stream), o.leftover),
            None => (None, Vec::new()),
        };
        leftovers.push(leftover);
        subs.push(Sub {
            joined: stream.is_some(),
            stream,
            decoder: ClientDecoder::new(),
            prefix: [0; PREFIX],
            msg_pos: 0,
            msg_bad: false,
            control: Vec::new(),
            next_seq: 0,
            received: 0,
            key: rng.mask_key(),
        });
    }
    let publisher_index = opts.subscribers;
    let Some(mut publisher) = subs.get_mut(publisher_index).and_then(|p| p.stream.take()) else {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the publisher could not connect: {}",
                totals.first_error.as_deref().unwrap_or("unknown error")
            ),
        ));
    };
    let publisher_key = rng.mask_key();
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    let ns = |t: Instant| t.duration_since(base).as_nanos() as u64;
    for (i, (sub, leftover)) in subs.iter_mut().zip(leftovers).enumerate() {
        if !leftover.is_empty() && sub.stream.is_some() {
            let counted = i < opts.subscribers;
            if let Err(why) = feed(
                sub,
                &leftover,
                opts.size,
                counted,
                &mut totals,
                ns(Instant::now()),
            ) {
                totals.note(|| why);
                drop_sub(&mut poll, sub, &mut totals);
            }
        }
    }

    if targets.len() > 1 {
        std::thread::sleep(SETTLE);
    }
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out_done = 0usize;
    let mut payload = vec![0u8; opts.size];
    let mut published: u64 = 0;
    let start = Instant::now();
    let end = start + opts.duration;
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let interval = Duration::from_secs_f64(1.0 / opts.rate);
    let mut publisher_ok = true;
    // Exactly `rate × duration` messages (at least one), paced from `start`.
    let total = ((opts.duration.as_secs_f64() * opts.rate).round() as u64).max(1);
    loop {
        let now = Instant::now();
        let publishing = published < total && publisher_ok;
        if publishing {
            // Messages due by now (the first at once); all due ones go in one write.
            let due = if now >= end {
                total
            } else {
                ((now.duration_since(start).as_secs_f64() * opts.rate) as u64 + 1).min(total)
            };
            if out.len() - out_done < 1 << 20 {
                let stamp = ns(now);
                while published < due {
                    fanout_payload(&mut payload, stamp, published as u32);
                    encode_frame(&mut out, OpCode::Text, &payload, publisher_key);
                    published += 1;
                }
            }
        }
        if publisher_ok && out.len() > out_done {
            if let Err(e) = write_out(&mut publisher, &mut out, &mut out_done) {
                publisher_ok = false;
                totals.note(|| format!("publisher: {e}"));
            }
        }
        // Done when every subscriber has everything, or (bounded) the drain time is up.
        let caught_up = !publishing
            && (out.len() == out_done || !publisher_ok)
            && subs
                .iter()
                .take(opts.subscribers)
                .all(|s| s.stream.is_none() || s.next_seq >= published);
        if caught_up || now >= end + DRAIN {
            break;
        }
        let next_due = start + interval.mul_f64(published as f64);
        let wake = if publishing {
            next_due.min(end)
        } else {
            end + DRAIN
        };
        let timeout = wake
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(sub) = subs.get_mut(index) else {
                continue;
            };
            let counted = index < opts.subscribers;
            let result = if index == publisher_index {
                // The publisher's own copies: read and discard (the room includes it).
                drain(&mut publisher, &mut buf)
            } else if sub.stream.is_some() {
                read_sub(sub, &mut buf, opts.size, counted, &mut totals, base)
            } else {
                Ok(())
            };
            if let Err(why) = result {
                totals.note(|| why);
                if index == publisher_index {
                    publisher_ok = false;
                } else {
                    drop_sub(&mut poll, sub, &mut totals);
                }
            }
        }
    }
    let window_secs = opts.duration.as_secs_f64();
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    let server_rss_kib = opts.server_pid.and_then(rss_kib);
    let lost = subs
        .iter()
        .take(opts.subscribers)
        .filter(|s| s.joined)
        .map(|s| published.saturating_sub(s.received))
        .sum();

    let mut streams: Vec<Option<TcpStream>> = subs.iter_mut().map(|s| s.stream.take()).collect();
    if let Some(slot) = streams.get_mut(publisher_index) {
        *slot = out
            .get(out_done..)
            .is_none_or(|r| r.is_empty())
            .then_some(publisher);
    }
    close_all(&mut poll, &mut streams, &mut rng, Duration::from_secs(1));

    Ok(FanoutReport {
        subscribers: opts.subscribers,
        subscribers_open,
        window_secs,
        published,
        publish_rate: published as f64 / window_secs,
        delivered: totals.delivered,
        deliveries_per_sec: totals.delivered as f64 / window_secs,
        latency: totals.hist.percentiles_us(),
        lost,
        out_of_order: totals.out_of_order,
        corrupt: totals.corrupt,
        dropped: totals.dropped,
        open_failures,
        client_cpu_pct,
        server_cpu_pct,
        server_rss_kib,
        first_error: totals.first_error,
    })
}

fn drop_sub(poll: &mut Poll, sub: &mut Sub, totals: &mut Totals) {
    if let Some(mut s) = sub.stream.take() {
        let _ = poll.registry().deregister(&mut s);
        totals.dropped += 1;
    }
}

/// Writes the publisher's pending bytes; keeps what the socket refuses.
fn write_out(stream: &mut TcpStream, out: &mut Vec<u8>, done: &mut usize) -> io::Result<()> {
    while let Some(rest) = out.get(*done..).filter(|r| !r.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    *done = 0;
    Ok(())
}

/// Reads and discards until `WouldBlock`.
fn drain(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), String> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Err("publisher closed by the server".into()),
            Ok(n) if n < buf.len() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("publisher read: {e}")),
        }
    }
}

fn read_sub(
    sub: &mut Sub,
    buf: &mut [u8],
    size: usize,
    counted: bool,
    totals: &mut Totals,
    base: Instant,
) -> Result<(), String> {
    loop {
        let Some(stream) = sub.stream.as_mut() else {
            return Ok(());
        };
        let n = match stream.read(buf) {
            Ok(0) => return Err("subscriber closed by the server".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        let now = base.elapsed().as_nanos() as u64;
        feed(
            sub,
            buf.get(..n).unwrap_or_default(),
            size,
            counted,
            totals,
            now,
        )?;
        if n < buf.len() {
            return Ok(());
        }
    }
}

fn feed(
    sub: &mut Sub,
    mut input: &[u8],
    size: usize,
    counted: bool,
    totals: &mut Totals,
    now: u64,
) -> Result<(), String> {
    while !input.is_empty() {
        let (used, piece) = sub.decoder.decode(input).map_err(|e| e.to_string())?;
        input = input.get(used..).unwrap_or_default();
        let Some(piece) = piece else { continue };
        let opcode = piece.header.opcode;
        if opcode.is_control() {
            if piece.is_first() {
                sub.control.clear();
            }
            sub.control.extend_from_slice(piece.data);
            if piece.is_last() {
                match opcode {
                    OpCode::Ping => {
                        let mut pong = Vec::with_capacity(sub.control.len() + 6);
                        encode_frame(&mut pong, OpCode::Pong, &sub.control, sub.key);
                        if let Some(s) = sub.stream.as_mut() {
                            s.write_all(&pong).map_err(|e| format!("pong: {e}"))?;
                        }
                    }
                    OpCode::Close => return Err("server closed a subscriber".into()),
                    _ => {}
                }
            }
            continue;
        }
        // Data: the prefix is copied aside, the padding checked in place.
        let mut pos = sub.msg_pos as usize;
        for &b in piece.data {
            if let Some(slot) = sub.prefix.get_mut(pos) {
                *slot = b;
            } else if b != b'x' {
                sub.msg_bad = true;
            }
            pos += 1;
        }
        sub.msg_pos = pos as u64;
        if piece.is_last() && piece.header.fin {
            let parsed = parse_prefix(&sub.prefix);
            let bad = sub.msg_bad || sub.msg_pos != size as u64 || parsed.is_none();
            sub.msg_pos = 0;
            sub.msg_bad = false;
            if !counted {
                continue;
            }
            totals.delivered += 1;
            let Some((sent, seq)) = parsed.filter(|_| !bad) else {
                totals.corrupt += 1;
                continue;
            };
            totals.hist.record(now.saturating_sub(sent));
            let seq = u64::from(seq);
            if seq >= sub.next_seq {
                sub.next_seq = seq + 1;
                sub.received += 1;
            } else {
                totals.out_of_order += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut p = vec![0u8; 32];
        fanout_payload(&mut p, 0x0123_4567_89ab_cdef, 0xdead_beef);
        assert_eq!(&p[..], b"0123456789abcdefdeadbeefxxxxxxxx");
        assert_eq!(parse_prefix(&p), Some((0x0123_4567_89ab_cdef, 0xdead_beef)));
        assert_eq!(parse_prefix(b"0123456789abcdefdeadbeeZ"), None);
        assert_eq!(parse_prefix(b"short"), None);
        assert!(std::str::from_utf8(&p).is_ok());
    }
}
