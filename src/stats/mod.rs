//! Counters the reactor keeps, readable through the API, `/stats`, `/metrics` and the stats
//! log line. Plain integers bumped on the reactor thread: no atomics, no allocation.
//! [`metrics`] renders them for Prometheus; [`board`] is where the workers of a process leave
//! theirs for each other to sum.

pub(crate) mod board;
pub(crate) mod metrics;

use crate::protocol::CloseCode;

/// Why a connection or upgrade was refused (each one a label of `wsloop_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Over `--max-conns` (503).
    MaxConns,
    /// Over the process-wide `--max-buffered` memory budget (503).
    MemoryBudget,
    /// Over `--max-handshake-rate` (503).
    HandshakeRate,
    /// Over `--max-conns-per-ip` (503).
    PerIp,
    /// `Origin` not allowed (403).
    Origin,
    /// Malformed or invalid request (400).
    BadRequest,
    /// Unsupported WebSocket version (426).
    BadVersion,
    /// Request head too large (431).
    HeadTooLarge,
    /// The application refused the upgrade.
    Application,
    /// Missing, malformed or untrusted PROXY protocol header.
    Proxy,
}

impl RejectReason {
    /// Every reason, in the order of [`Stats::rejected_by`].
    pub const ALL: [RejectReason; 10] = [
        RejectReason::MaxConns,
        RejectReason::MemoryBudget,
        RejectReason::HandshakeRate,
        RejectReason::PerIp,
        RejectReason::Origin,
        RejectReason::BadRequest,
        RejectReason::BadVersion,
        RejectReason::HeadTooLarge,
        RejectReason::Application,
        RejectReason::Proxy,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::MaxConns => "max_conns",
            RejectReason::MemoryBudget => "memory_budget",
            RejectReason::HandshakeRate => "handshake_rate",
            RejectReason::PerIp => "per_ip",
            RejectReason::Origin => "origin",
            RejectReason::BadRequest => "bad_request_400",
            RejectReason::BadVersion => "bad_version_426",
            RejectReason::HeadTooLarge => "head_too_large_431",
            RejectReason::Application => "application",
            RejectReason::Proxy => "proxy_protocol",
        }
    }

    /// The reason for a refused handshake with HTTP `status`.
    pub(crate) fn for_status(status: u16) -> RejectReason {
        match status {
            426 => RejectReason::BadVersion,
            431 => RejectReason::HeadTooLarge,
            403 => RejectReason::Origin,
            _ => RejectReason::BadRequest,
        }
    }
}

/// Close codes counted individually; anything else is "other".
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013,
];

/// Counts of close codes (sent or received), one slot per common code plus "other".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseCounts(pub(crate) [u64; 13]);

impl CloseCounts {
    /// Counts one close with `code`.
    pub(crate) fn add(&mut self, code: CloseCode) {
        let slot = CLOSE_CODES
            .iter()
            .position(|&c| c == code.0)
            .unwrap_or(CLOSE_CODES.len());
        if let Some(count) = self.0.get_mut(slot) {
            *count += 1;
        }
    }

    /// How many closes had `code` (other codes: ask for 0).
    pub fn get(&self, code: u16) -> u64 {
        let slot = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.0.get(slot).copied().unwrap_or(0)
    }

    /// (label, count) for every slot.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        const LABELS: [&str; 13] = [
            "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
            "1013", "other",
        ];
        LABELS.into_iter().zip(self.0.iter().copied())
    }
}

/// A fixed-bucket histogram of keepalive ping round trips.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RttHistogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    pub counts: [u64; 13],
    /// Sum of all samples, in microseconds.
    pub sum_us: u64,
}

impl RttHistogram {
    /// Upper bounds (milliseconds) of the buckets but the last (+Inf).
    pub const BUCKETS_MS: [f64; 12] = [
        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
    ];

    /// Records one round trip.
    pub(crate) fn record(&mut self, rtt_us: u64) {
        let ms = rtt_us as f64 / 1000.0;
        let slot = Self::BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(Self::BUCKETS_MS.len());
        if let Some(count) = self.counts.get_mut(slot) {
            *count += 1;
        }
        self.sum_us = self.sum_us.saturating_add(rtt_us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Monotonic counters and gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Connections open now (any phase).
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections or upgrades refused, all reasons together.
    pub rejected: u64,
    /// Refusals by reason, in the order of [`RejectReason::ALL`].
    pub rejected_by: [u64; 10],
    /// Successful WebSocket upgrades.
    pub upgraded: u64,
    /// Plain HTTP requests answered (static files, stats, metrics).
    pub http_requests: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent (each receiver of a publication counts).
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Connections failed for a protocol error, by close code: 1002, 1007, 1009.
    pub protocol_errors: [u64; 3],
    /// Close frames sent, by code.
    pub close_sent: CloseCounts,
    /// Close frames received, by code (1005: a close frame without a code).
    pub close_received: CloseCounts,
    /// Publications (each encoded once per encoding its receivers need, shared by them).
    pub publications: u64,
    /// Publications that met a subscriber over its send-queue limit, whatever its room's
    /// policy then did (closed it, dropped the publication, or dropped older frames to queue
    /// it). `/stats` still names it `backpressure_closes`, its name from before the drop
    /// policies; `/metrics` names it `wsloop_slow_consumer_events_total`.
    pub slow_consumer_events: u64,
    /// Publications dropped for slow subscribers (drop policies).
    pub dropped_messages: u64,
    /// Connections dropped because the peer went silent.
    pub idle_timeouts: u64,
    /// Connections shed (closed with 1013) to bring memory back under `--max-buffered`.
    pub shed: u64,
    /// Times a connection's reading was paused, or it was closed, for `--max-msg-rate`.
    pub rate_limited: u64,
    /// Bytes held now in output queues, partial messages, compressor contexts and TLS
    /// sessions (what `--max-buffered` limits).
    pub buffered_bytes: u64,
    /// Keepalive ping round trips.
    pub ping_rtt: RttHistogram,
    /// Publications that arrived from the broker (other workers or processes) and were
    /// delivered to this reactor's subscribers.
    pub broker_in: u64,
    /// `SIGUSR2` upgrades that ended with this process handing everything over.
    pub process_upgrades: u64,
    /// `SIGUSR2` upgrades that failed (the new binary did not start, refused, crashed or
    /// did not confirm in time); this process kept serving what it had not handed over.
    pub process_upgrades_failed: u64,
    /// Connections handed to a new process, confirmed by it.
    pub handed_over: u64,
    /// Connections taken over from an old process.
    pub adopted: u64,
}

/// How many `u64` counters [`Stats::to_fields`] yields.
pub(crate) const STATS_FIELDS: usize = 74;

impl Stats {
    /// Counts a refusal.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.rejected += 1;
        if let Some(slot) = RejectReason::ALL.iter().position(|&r| r == reason) {
            if let Some(count) = self.rejected_by.get_mut(slot) {
                *count += 1;
            }
        }
    }

    /// Refusals for one reason.
    pub fn rejected_for(&self, reason: RejectReason) -> u64 {
        RejectReason::ALL
            .iter()
            .position(|&r| r == reason)
            .and_then(|slot| self.rejected_by.get(slot))
            .copied()
            .unwrap_or(0)
    }

    /// Counts a protocol error by the close code it was answered with.
    pub(crate) fn count_protocol_error(&mut self, code: CloseCode) {
        let slot = match code {
            CloseCode::INVALID_PAYLOAD => 1,
            CloseCode::MESSAGE_TOO_BIG => 2,
            _ => 0,
        };
        if let Some(count) = self.protocol_errors.get_mut(slot) {
            *count += 1;
        }
    }

    /// All protocol errors together.
    pub fn protocol_errors_total(&self) -> u64 {
        self.protocol_errors.iter().sum()
    }

    /// Every counter, in one fixed order (the single list that `to_fields`, `from_fields` and
    /// `add` share, so a new counter cannot be summed in one and forgotten in another).
    fn fields_mut(&mut self) -> Vec<&mut u64> {
        let mut fields = vec![
            &mut self.open,
            &mut self.accepted,
            &mut self.rejected,
            &mut self.upgraded,
            &mut self.http_requests,
            &mut self.messages_in,
            &mut self.messages_out,
            &mut self.bytes_in,
            &mut self.bytes_out,
            &mut self.publications,
            &mut self.slow_consumer_events,
            &mut self.dropped_messages,
            &mut self.idle_timeouts,
            &mut self.shed,
            &mut self.rate_limited,
            &mut self.buffered_bytes,
            &mut self.broker_in,
            &mut self.ping_rtt.sum_us,
            &mut self.process_upgrades,
            &mut self.process_upgrades_failed,
            &mut self.handed_over,
            &mut self.adopted,
        ];
        fields.extend(self.rejected_by.iter_mut());
        fields.extend(self.protocol_errors.iter_mut());
        fields.extend(self.close_sent.0.iter_mut());
        fields.extend(self.close_received.0.iter_mut());
        fields.extend(self.ping_rtt.counts.iter_mut());
        fields
    }

    /// Every counter in a fixed order, for copying into shared atomics (see
    /// [`board::StatsBoard`]).
    pub(crate) fn to_fields(&self) -> [u64; STATS_FIELDS] {
        let mut copy = self.clone();
        let mut out = [0; STATS_FIELDS];
        for (slot, value) in out.iter_mut().zip(copy.fields_mut()) {
            *slot = *value;
        }
        out
    }

    /// The inverse of [`Stats::to_fields`].
    pub(crate) fn from_fields(fields: [u64; STATS_FIELDS]) -> Stats {
        let mut stats = Stats::default();
        for (value, slot) in fields.into_iter().zip(stats.fields_mut()) {
            *slot = value;
        }
        stats
    }

    /// Adds every counter of `other` (summing the workers of one process).
    pub(crate) fn add(&mut self, other: &Stats) {
        for (mine, theirs) in self.fields_mut().into_iter().zip(other.to_fields()) {
            *mine += theirs;
        }
    }

    /// The counters as one JSON object (for `/stats` and the demo page).
    pub fn to_json(&self) -> String {
        self.to_json_with("")
    }

    /// The counters as one JSON object, with `extra` (`"key":value` pairs, comma-led) appended
    /// inside it.
    pub(crate) fn to_json_with(&self, extra: &str) -> String {
        let [e1002, e1007, e1009] = self.protocol_errors;
        format!(
            "{{\"open\":{},\"accepted\":{},\"rejected\":{},\"upgraded\":{},\"messages_in\":{},\
             \"messages_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"protocol_errors\":{},\
             \"protocol_errors_by_code\":{{\"1002\":{e1002},\"1007\":{e1007},\"1009\":{e1009}}},\
             \"publications\":{},\"backpressure_closes\":{},\"dropped_messages\":{},\
             \"idle_timeouts\":{},\"shed\":{},\"rate_limited\":{},\"buffered_bytes\":{},\
             \"broker_in\":{},\"process_upgrades\":{},\"process_upgrades_failed\":{},\"handed_over\":{},\
             \"adopted\":{}{extra}}}",
            self.open,
            self.accepted,
            self.rejected,
            self.upgraded,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.protocol_errors_total(),
            self.publications,
            self.slow_consumer_events,
            self.dropped_messages,
            self.idle_timeouts,
            self.shed,
            self.rate_limited,
            self.buffered_bytes,
            self.broker_in,
            self.process_upgrades,
            self.process_upgrades_failed,
            self.handed_over,
            self.adopted,
        )
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open={} accepted={} rejected={} msgs_in={} msgs_out={} bytes_in={} bytes_out={} \
             protocol_errors={} slow_consumer_events={} buffered={}",
            self.open,
            self.accepted,
            self.rejected,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.protocol_errors_total(),
            self.slow_consumer_events,
            self.buffered_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_sum() {
        let mut a = Stats::default();
        a.reject(RejectReason::Proxy);
        a.close_sent.add(CloseCode::NORMAL);
        a.ping_rtt.record(1500);
        a.broker_in = 4;
        assert_eq!(Stats::from_fields(a.to_fields()), a);
        assert_eq!(a.clone().fields_mut().len(), STATS_FIELDS);
        let mut sum = a.clone();
        sum.add(&a);
        assert_eq!(sum.rejected_for(RejectReason::Proxy), 2);
        assert_eq!(sum.close_sent.get(1000), 2);
        assert_eq!(sum.ping_rtt.count(), 2);
        assert_eq!(sum.broker_in, 8);
    }

    #[test]
    fn rejections_by_reason() {
        let mut stats = Stats::default();
        stats.reject(RejectReason::Origin);
        stats.reject(RejectReason::Origin);
        stats.reject(RejectReason::MaxConns);
        assert_eq!(stats.rejected, 3);
        assert_eq!(stats.rejected_for(RejectReason::Origin), 2);
        assert_eq!(stats.rejected_for(RejectReason::Proxy), 0);
    }

    #[test]
    fn close_counts_and_rtt_buckets() {
        let mut c = CloseCounts::default();
        c.add(CloseCode::NORMAL);
        c.add(CloseCode(4000));
        assert_eq!(c.get(1000), 1);
        assert_eq!(c.iter().last(), Some(("other", 1)));
        let mut h = RttHistogram::default();
        h.record(300); // 0.3 ms → the 0.5 ms bucket
        h.record(10_000_000); // 10 s → +Inf
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[12], 1);
        assert_eq!(h.count(), 2);
    }
}
