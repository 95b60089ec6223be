//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Written by hand rather than with `prometheus-client`: the counters already live as plain
//! integers in [`Stats`] on the reactor thread, so a registry of atomic metric objects would
//! add a second copy and an atomic operation per event on the hot path. A scrape formats the
//! counters into one `String`; its cost does not grow with the number of connections (only
//! with the number of rooms, one line each for rooms that dropped messages).
//!
//! With several workers any of them answers for the process, as `/stats` does: the counters
//! summed over the board, subscriptions and drops by room summed over what each worker last
//! copied there, and the rooms the hub knows (see `Member::metrics_text`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{RejectReason, RttHistogram, Stats};
use crate::pubsub::rooms::Rooms;

/// What `/metrics` says about rooms: one reactor's, or a process's over all its workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomFigures {
    /// Rooms with at least one subscriber.
    pub(crate) rooms: u64,
    /// Subscriptions across all rooms.
    pub(crate) subscriptions: u64,
    /// Publications dropped for slow subscribers, by room (rooms that dropped none left out).
    pub(crate) dropped: BTreeMap<Box<str>, u64>,
}

impl RoomFigures {
    /// The figures of one reactor's rooms.
    pub(crate) fn of(rooms: &Rooms) -> RoomFigures {
        RoomFigures {
            rooms: rooms.len() as u64,
            subscriptions: rooms.subscriptions() as u64,
            dropped: drops_by_room(rooms),
        }
    }
}

/// Publications dropped for slow subscribers in each of `rooms` that dropped any.
pub(crate) fn drops_by_room(rooms: &Rooms) -> BTreeMap<Box<str>, u64> {
    rooms
        .iter()
        .filter(|(_, room)| room.dropped > 0)
        .map(|(name, room)| (name.into(), room.dropped))
        .collect()
}

/// Renders every metric: `stats` and `rooms` are one reactor's, or a process's summed over
/// its workers.
pub(crate) fn render(stats: &Stats, rooms: &RoomFigures) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let mut m = Writer(&mut out);
    m.gauge(
        "wsloop_open_connections",
        "Connections open now.",
        stats.open,
    );
    m.counter(
        "wsloop_accepted_total",
        "Connections accepted.",
        stats.accepted,
    );
    m.counter(
        "wsloop_upgrades_total",
        "Successful WebSocket upgrades.",
        stats.upgraded,
    );
    m.counter(
        "wsloop_http_requests_total",
        "Plain HTTP requests answered.",
        stats.http_requests,
    );
    m.counters_by(
        "wsloop_rejected_total",
        "Connections or upgrades refused, by reason.",
        "reason",
        RejectReason::ALL
            .iter()
            .map(|&reason| (reason.label(), stats.rejected_for(reason))),
    );
    m.counter(
        "wsloop_messages_in_total",
        "Data messages received.",
        stats.messages_in,
    );
    m.counter(
        "wsloop_messages_out_total",
        "Data messages sent.",
        stats.messages_out,
    );
    m.counter(
        "wsloop_bytes_in_total",
        "Bytes read from sockets.",
        stats.bytes_in,
    );
    m.counter(
        "wsloop_bytes_out_total",
        "Bytes written to sockets.",
        stats.bytes_out,
    );
    m.counters_by(
        "wsloop_close_frames_sent_total",
        "Close frames sent, by code.",
        "code",
        stats.close_sent.iter(),
    );
    m.counters_by(
        "wsloop_close_frames_received_total",
        "Close frames received, by code (1005: no code).",
        "code",
        stats.close_received.iter(),
    );
    m.counters_by(
        "wsloop_protocol_errors_total",
        "Connections failed for a protocol error, by close code.",
        "code",
        ["1002", "1007", "1009"]
            .into_iter()
            .zip(stats.protocol_errors),
    );
    m.counter(
        "wsloop_publications_total",
        "Publications made in this process (to a room or to every connection).",
        stats.publications,
    );
    m.counter(
        "wsloop_slow_consumer_events_total",
        "Publications that met a subscriber over its send-queue limit.",
        stats.slow_consumer_events,
    );
    m.counter(
        "wsloop_dropped_messages_total",
        "Publications dropped for slow subscribers by a drop policy.",
        stats.dropped_messages,
    );
    m.counters_by(
        "wsloop_room_dropped_messages_total",
        "Publications dropped for slow subscribers, by room.",
        "room",
        rooms
            .dropped
            .iter()
            .map(|(name, &dropped)| (&**name, dropped)),
    );
    m.counter(
        "wsloop_idle_timeouts_total",
        "Connections dropped after going silent.",
        stats.idle_timeouts,
    );
    m.counter(
        "wsloop_shed_total",
        "Connections closed with 1013 to bring memory under --max-buffered.",
        stats.shed,
    );
    m.counter(
        "wsloop_rate_limited_total",
        "Connections paused or closed for --max-msg-rate.",
        stats.rate_limited,
    );
    m.counter(
        "wsloop_process_upgrades_total",
        "SIGUSR2 upgrades that handed every connection to the new process.",
        stats.process_upgrades,
    );
    m.counter(
        "wsloop_process_upgrades_failed_total",
        "SIGUSR2 upgrades that failed; the old process kept what it had not handed over.",
        stats.process_upgrades_failed,
    );
    m.counter(
        "wsloop_connections_handed_over_total",
        "Connections handed to a new process during an upgrade, confirmed by it.",
        stats.handed_over,
    );
    m.counter(
        "wsloop_connections_adopted_total",
        "Connections taken over from an old process during an upgrade.",
        stats.adopted,
    );
    m.gauge(
        "wsloop_buffered_bytes",
        "Bytes held in send queues, partial messages, compressor contexts and TLS sessions.",
        stats.buffered_bytes,
    );
    m.gauge(
        "wsloop_rooms",
        "Rooms with at least one subscriber.",
        rooms.rooms,
    );
    m.gauge(
        "wsloop_subscriptions",
        "Subscriptions across all rooms.",
        rooms.subscriptions,
    );
    m.header(
        "wsloop_ping_rtt_seconds",
        "Round trip of keepalive pings.",
        "histogram",
    );
    let mut cumulative = 0;
    for (bound, n) in RttHistogram::BUCKETS_MS.iter().zip(stats.ping_rtt.counts) {
        cumulative += n;
        let _ = writeln!(
            m.0,
            "wsloop_ping_rtt_seconds_bucket{{le=\"{}\"}} {cumulative}",
            bound / 1000.0
        );
    }
    let total = stats.ping_rtt.count();
    let _ = writeln!(m.0, "wsloop_ping_rtt_seconds_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(
        m.0,
        "wsloop_ping_rtt_seconds_sum {}",
        stats.ping_rtt.sum_us as f64 / 1e6
    );
    let _ = writeln!(m.0, "wsloop_ping_rtt_seconds_count {total}");
    out
}

struct Writer<'a>(&'a mut String);

impl Writer<'_> {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A counter family with one sample per label value.
    fn counters_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, help, "counter");
        for (value, sample) in samples {
            self.labeled(name, label, value, sample);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// One sample with one label; the value is escaped as the format requires.
    fn labeled(&mut self, name: &str, label: &str, value: &str, sample: u64) {
        let _ = write!(self.0, "{name}{{{label}=\"");
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        let _ = writeln!(self.0, "\"}} {sample}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histogram() {
        let mut stats = Stats {
            open: 3,
            ..Stats::default()
        };
        stats.reject(RejectReason::Origin);
        stats.ping_rtt.record(400);
        stats.ping_rtt.record(3000);
        let mut rooms = Rooms::default();
        rooms.subscribe(1, "we\"ird\nroom");
        rooms.count_drops("we\"ird\nroom", 1);
        let text = render(&stats, &RoomFigures::of(&rooms));
        assert!(text.contains("wsloop_open_connections 3\n"));
        assert!(text.contains("wsloop_rejected_total{reason=\"origin\"} 1\n"));
        assert!(text.contains("wsloop_room_dropped_messages_total{room=\"we\\\"ird\\nroom\"} 1\n"));
        assert!(text.contains("wsloop_ping_rtt_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("wsloop_ping_rtt_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("wsloop_ping_rtt_seconds_count 2\n"));
        assert!(text.contains("wsloop_subscriptions 1\n"));
    }
}
