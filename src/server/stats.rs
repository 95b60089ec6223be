//! Counters the reactor keeps, readable through the API, `/stats` and the stats log line.

use crate::protocol::CloseCode;

/// Monotonic counters and gauges; plain integers, bumped on the reactor thread only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections open now (any phase).
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused (max-conns, bad handshake, origin, application).
    pub rejected: u64,
    /// Successful WebSocket upgrades.
    pub upgraded: u64,
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
    /// Publications (each encoded into exactly one shared frame, whatever its fan-out).
    pub publications: u64,
    /// Subscribers closed or skipped because their queue was over the limit.
    pub backpressure_closes: u64,
    /// Publications dropped for slow subscribers (drop policy).
    pub dropped_messages: u64,
    /// Connections dropped because the peer went silent.
    pub idle_timeouts: u64,
    /// Publications that arrived from the broker (other workers or processes) and were
    /// delivered to this reactor's subscribers.
    pub broker_in: u64,
}

/// How many `u64` counters [`Stats::to_fields`] yields.
pub const STATS_FIELDS: usize = 16;

impl Stats {
    /// Counts a protocol error by the close code it was answered with.
    pub fn count_protocol_error(&mut self, code: CloseCode) {
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

    /// Every counter in a fixed order, for copying into shared atomics (see
    /// [`super::board::StatsBoard`]).
    pub fn to_fields(&self) -> [u64; STATS_FIELDS] {
        let [e1002, e1007, e1009] = self.protocol_errors;
        [
            self.open,
            self.accepted,
            self.rejected,
            self.upgraded,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            e1002,
            e1007,
            e1009,
            self.publications,
            self.backpressure_closes,
            self.dropped_messages,
            self.idle_timeouts,
            self.broker_in,
        ]
    }

    /// The inverse of [`Stats::to_fields`].
    pub fn from_fields(f: [u64; STATS_FIELDS]) -> Stats {
        let [open, accepted, rejected, upgraded, messages_in, messages_out, bytes_in, bytes_out, e1002, e1007, e1009, publications, backpressure_closes, dropped_messages, idle_timeouts, broker_in] =
            f;
        Stats {
            open,
            accepted,
            rejected,
            upgraded,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            protocol_errors: [e1002, e1007, e1009],
            publications,
            backpressure_closes,
            dropped_messages,
            idle_timeouts,
            broker_in,
        }
    }

    /// Adds every counter of `other` (summing the workers of one process).
    pub fn add(&mut self, other: &Stats) {
        let mut sum = self.to_fields();
        for (a, b) in sum.iter_mut().zip(other.to_fields()) {
            *a += b;
        }
        *self = Stats::from_fields(sum);
    }

    /// The counters as one JSON object (for `/stats` and the demo page).
    pub fn to_json(&self) -> String {
        self.to_json_with("")
    }

    /// The counters as one JSON object, with `extra` (`"key":value` pairs, comma-led) appended
    /// inside it.
    pub fn to_json_with(&self, extra: &str) -> String {
        let [e1002, e1007, e1009] = self.protocol_errors;
        format!(
            "{{\"open\":{},\"accepted\":{},\"rejected\":{},\"upgraded\":{},\"messages_in\":{},\
             \"messages_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"protocol_errors\":{},\
             \"protocol_errors_by_code\":{{\"1002\":{e1002},\"1007\":{e1007},\"1009\":{e1009}}},\
             \"publications\":{},\"backpressure_closes\":{},\"dropped_messages\":{},\"idle_timeouts\":{},\"broker_in\":{}{extra}}}",
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
            self.backpressure_closes,
            self.dropped_messages,
            self.idle_timeouts,
            self.broker_in,
        )
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open={} accepted={} rejected={} msgs_in={} msgs_out={} bytes_in={} bytes_out={} \
             protocol_errors={} backpressure_closes={}",
            self.open,
            self.accepted,
            self.rejected,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.protocol_errors_total(),
            self.backpressure_closes
        )
    }
}
