//! `fanout`: one publisher sends `rate` text messages a second into the broadcast room; `N`
//! subscribers receive them. Deliveries per second, publish→receive latency, losses.
//!
//! Each message starts with its send time (16 hex digits of nanoseconds since the run's start)
//! and its sequence number (8 hex digits), then `x` up to `size` bytes: the room is text, and
//! every byte is checked on arrival.

use std::io;
use std::time::{Duration, Instant};

use wsloop_proto::frame::OpCode;

use crate::client::{ConnConfig, Data, Event};
use crate::driver::{Driver, End, Handler};
use crate::net::Target;
use crate::open::{open_all, OpenPlan};
use crate::report::{JsonLine, Table};
use crate::stats::{rss_kib, CpuMeter, Histogram, Percentiles};

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

/// One subscriber.
#[derive(Debug, Clone, Copy, Default)]
struct Sub {
    /// The message in progress: its prefix, bytes so far, and whether a byte was wrong.
    prefix: [u8; PREFIX],
    msg_pos: u64,
    msg_bad: bool,
    /// The next sequence number expected.
    next_seq: u64,
    /// Distinct in-order messages received.
    received: u64,
    /// Opened (a subscriber that failed to open counts as an open failure, not as losses).
    joined: bool,
}

/// The fan-out mode's handler: subscribers `0..publisher`, then the publisher, whose own
/// copies (the room includes it) are read and ignored.
struct Fanout {
    subs: Vec<Sub>,
    publisher: usize,
    publisher_ok: bool,
    size: usize,
    base: Instant,
    hist: Histogram,
    delivered: u64,
    out_of_order: u64,
    corrupt: u64,
    dropped: usize,
    first_error: Option<String>,
}

impl Fanout {
    /// A piece of a message to subscriber `id`: the prefix is copied aside, the padding
    /// checked in place.
    fn on_data(&mut self, id: usize, data: &Data<'_>, now: Instant) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        let mut pos = sub.msg_pos as usize;
        for &b in data.bytes {
            if let Some(slot) = sub.prefix.get_mut(pos) {
                *slot = b;
            } else if b != b'x' {
                sub.msg_bad = true;
            }
            pos += 1;
        }
        sub.msg_pos = pos as u64;
        if !data.last {
            return;
        }
        let parsed = parse_prefix(&sub.prefix);
        let bad = sub.msg_bad || sub.msg_pos != self.size as u64 || parsed.is_none();
        sub.msg_pos = 0;
        sub.msg_bad = false;
        self.delivered += 1;
        let Some((sent, seq)) = parsed.filter(|_| !bad) else {
            self.corrupt += 1;
            return;
        };
        let now = now.saturating_duration_since(self.base).as_nanos() as u64;
        self.hist.record(now.saturating_sub(sent));
        let seq = u64::from(seq);
        if seq >= sub.next_seq {
            sub.next_seq = seq + 1;
            sub.received += 1;
        } else {
            self.out_of_order += 1;
        }
    }
}

impl Handler for Fanout {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        let publisher = id == self.publisher;
        match event {
            Event::Opened { .. } => {
                if let Some(sub) = self.subs.get_mut(id) {
                    sub.joined = true;
                }
            }
            Event::Data(data) if !publisher => self.on_data(id, &data, now),
            Event::Close { code, .. } if publisher => {
                return Err(format!("closed by the server ({code})"))
            }
            Event::Close { code, .. } => {
                return Err(format!("server closed a subscriber ({code})"))
            }
            Event::Data(_) | Event::Pong(_) => {}
        }
        Ok(())
    }

    fn on_end(&mut self, id: usize, end: End) {
        if id == self.publisher {
            self.publisher_ok = false;
            self.first_error
                .get_or_insert_with(|| format!("publisher: {end}"));
        } else {
            self.dropped += 1;
            self.first_error.get_or_insert_with(|| end.to_string());
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
    let mut driver = Driver::new(256 * 1024)?;
    // Subscribers 0..N, the publisher last.
    let publisher = opts.subscribers;
    let count = opts.subscribers + 1;
    let mut fanout = Fanout {
        subs: vec![Sub::default(); opts.subscribers],
        publisher,
        publisher_ok: true,
        size: opts.size,
        base: Instant::now(),
        hist: Histogram::new(),
        delivered: 0,
        out_of_order: 0,
        corrupt: 0,
        dropped: 0,
        first_error: None,
    };
    let opening = open_all(
        &mut driver,
        &mut fanout,
        &targets,
        &OpenPlan {
            count,
            max_pending: 256,
            sources: None,
            attempt_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30) + Duration::from_millis(count as u64),
            config: ConnConfig::default(),
        },
    )?;
    let open_failures = opening.failures.total();
    if let Some(first) = opening.failures.first {
        fanout.first_error.get_or_insert(first);
    }
    if !driver.is_open(publisher) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the publisher could not connect: {}",
                fanout.first_error.as_deref().unwrap_or("unknown error")
            ),
        ));
    }
    let subscribers_open = fanout.subs.iter().filter(|s| s.joined).count();

    if targets.len() > 1 {
        std::thread::sleep(SETTLE);
    }
    let mut payload = vec![0u8; opts.size];
    let mut published: u64 = 0;
    let start = Instant::now();
    let end = start + opts.duration;
    let cpu = CpuMeter::start(None);
    let server_cpu = opts.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let interval = Duration::from_secs_f64(1.0 / opts.rate);
    // Exactly `rate × duration` messages (at least one), paced from `start`.
    let total = ((opts.duration.as_secs_f64() * opts.rate).round() as u64).max(1);
    loop {
        let now = Instant::now();
        let publishing = published < total && fanout.publisher_ok;
        // Messages due by now (the first at once); all due ones go in one write, unless the
        // publisher already has a backlog.
        if publishing && driver.queued(publisher) < 1 << 20 {
            let due = if now >= end {
                total
            } else {
                ((now.duration_since(start).as_secs_f64() * opts.rate) as u64 + 1).min(total)
            };
            let stamp = now.saturating_duration_since(fanout.base).as_nanos() as u64;
            driver.with_conn(publisher, |conn, shared| {
                while published < due {
                    fanout_payload(&mut payload, stamp, published as u32);
                    conn.send(OpCode::Text, &payload, shared);
                    published += 1;
                }
            });
        }
        // Done when every subscriber has everything, or (bounded) the drain time is up.
        let caught_up = !publishing
            && (driver.queued(publisher) == 0 || !fanout.publisher_ok)
            && (0..opts.subscribers).all(|id| {
                !driver.is_live(id) || fanout.subs.get(id).is_some_and(|s| s.next_seq >= published)
            });
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
        driver.turn(&mut fanout, timeout)?;
    }
    let window_secs = opts.duration.as_secs_f64();
    let client_cpu_pct = cpu.percent().unwrap_or(0.0);
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    let server_rss_kib = opts.server_pid.and_then(rss_kib);
    let lost = fanout
        .subs
        .iter()
        .filter(|s| s.joined)
        .map(|s| published.saturating_sub(s.received))
        .sum();
    driver.close_all(Duration::from_secs(1))?;

    Ok(FanoutReport {
        subscribers: opts.subscribers,
        subscribers_open,
        window_secs,
        published,
        publish_rate: published as f64 / window_secs,
        delivered: fanout.delivered,
        deliveries_per_sec: fanout.delivered as f64 / window_secs,
        latency: fanout.hist.percentiles_us(),
        lost,
        out_of_order: fanout.out_of_order,
        corrupt: fanout.corrupt,
        dropped: fanout.dropped,
        open_failures,
        client_cpu_pct,
        server_cpu_pct,
        server_rss_kib,
        first_error: fanout.first_error,
    })
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
