//! The report of `hold`: a table for people, one JSON line for scripts.

use crate::report::{JsonLine, Table};
use crate::stats::Percentiles;

/// What [`run_hold`](super::run_hold) measured.
#[derive(Debug, Clone, Default)]
pub struct HoldReport {
    /// Connections requested.
    pub conns: usize,
    /// Connections that completed the upgrade.
    pub established: usize,
    /// Connections that failed to open (connect, upgrade or timeout).
    pub failed: u64,
    /// Of which: TCP connect or socket failures.
    pub connect_failures: u64,
    /// Of which: refused or broken upgrades.
    pub handshake_failures: u64,
    /// Of which: attempts out of time.
    pub timeouts: u64,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Upgrades completed per second while opening.
    pub opens_per_sec: f64,
    /// Seconds held.
    pub held_secs: f64,
    /// Connections closed or broken while held.
    pub dropped: usize,
    /// Connections that answered the final ping.
    pub stayed_up: usize,
    /// Keep-alive pings sent.
    pub pings_sent: u64,
    /// Matching pongs received.
    pub pongs: u64,
    /// Ping round trips.
    pub ping_rtt: Percentiles,
    /// permessage-deflate was offered (and one message sent per connection).
    pub deflate_offered: bool,
    /// Connections on which the server accepted it.
    pub deflate_conns: usize,
    /// Messages sent, one per connection.
    pub messages_sent: usize,
    /// Echoes that came back intact.
    pub echoes_ok: usize,
    /// Echoes that differed from the message.
    pub echo_mismatches: usize,
    /// Server RSS before opening, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with every connection open, before the messages (with `deflate`), KiB.
    pub server_rss_open_kib: Option<u64>,
    /// Server RSS with every connection open (and, with `deflate`, its message echoed), KiB.
    pub server_rss_after_kib: Option<u64>,
    /// (after − before) / established, bytes.
    pub server_rss_per_conn_bytes: Option<f64>,
    /// (after − open) / established, bytes: what one message (deflate contexts, buffers)
    /// added to each connection.
    pub server_rss_message_per_conn_bytes: Option<f64>,
    /// Server RSS at the end of the hold, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// The load generator's CPU over the whole run, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU over the whole run, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// This process's open-file limit.
    pub fd_limit: Option<u64>,
    /// The first error seen.
    pub first_error: Option<String>,
}

impl HoldReport {
    /// Every connection opened, echoed its message intact (with `deflate`) and answered
    /// the final ping.
    pub fn ok(&self) -> bool {
        self.established == self.conns
            && self.stayed_up == self.conns
            && self.conns > 0
            && self.echoes_ok == self.messages_sent
            && self.echo_mismatches == 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", "hold")
            .int("conns", self.conns as u64)
            .int("established", self.established as u64)
            .int("failed", self.failed)
            .int("connect_failures", self.connect_failures)
            .int("handshake_failures", self.handshake_failures)
            .int("timeouts", self.timeouts)
            .num("open_secs", self.open_secs)
            .num("opens_per_sec", self.opens_per_sec)
            .num("held_secs", self.held_secs)
            .int("dropped", self.dropped as u64)
            .int("stayed_up", self.stayed_up as u64)
            .int("pings_sent", self.pings_sent)
            .int("pongs", self.pongs)
            .num("ping_p50_us", self.ping_rtt.p50_us)
            .num("ping_p99_us", self.ping_rtt.p99_us)
            .bool("deflate_offered", self.deflate_offered)
            .int("deflate_conns", self.deflate_conns as u64)
            .int("messages_sent", self.messages_sent as u64)
            .int("echoes_ok", self.echoes_ok as u64)
            .int("echo_mismatches", self.echo_mismatches as u64)
            .opt_int("server_rss_before_kib", self.server_rss_before_kib)
            .opt_int("server_rss_open_kib", self.server_rss_open_kib)
            .opt_int("server_rss_after_kib", self.server_rss_after_kib)
            .opt_num("server_rss_per_conn_bytes", self.server_rss_per_conn_bytes)
            .opt_num(
                "server_rss_message_per_conn_bytes",
                self.server_rss_message_per_conn_bytes,
            )
            .opt_int("server_rss_end_kib", self.server_rss_end_kib)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_int("fd_limit", self.fd_limit)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        Table::new(format!("wsload hold: {} connections", self.conns))
            .row("established", self.established)
            .row(
                "failed (connect/upgrade/timeout)",
                format!(
                    "{} ({}/{}/{})",
                    self.failed, self.connect_failures, self.handshake_failures, self.timeouts
                ),
            )
            .row(
                "opening",
                format!(
                    "{:.2} s, {:.0} upgrades/s",
                    self.open_secs, self.opens_per_sec
                ),
            )
            .row("held", format!("{:.1} s", self.held_secs))
            .row("dropped while held", self.dropped)
            .row("answered final ping", self.stayed_up)
            .row(
                "pings / pongs",
                format!("{} / {}", self.pings_sent, self.pongs),
            )
            .row(
                "ping RTT p50 / p99",
                format!(
                    "{:.1} / {:.1} us",
                    self.ping_rtt.p50_us, self.ping_rtt.p99_us
                ),
            )
            .opt_row(
                "deflate accepted",
                self.deflate_offered
                    .then(|| format!("{} connections", self.deflate_conns)),
            )
            .opt_row(
                "messages / echoes ok / bad",
                self.deflate_offered.then(|| {
                    format!(
                        "{} / {} / {}",
                        self.messages_sent, self.echoes_ok, self.echo_mismatches
                    )
                }),
            )
            .opt_row(
                "server RSS before",
                self.server_rss_before_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS open, before messages",
                self.server_rss_open_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS all open",
                self.server_rss_after_kib.map(|k| format!("{k} KiB")),
            )
            .opt_row(
                "server RSS per connection",
                self.server_rss_per_conn_bytes.map(|b| format!("{b:.0} B")),
            )
            .opt_row(
                "of which its message",
                self.server_rss_message_per_conn_bytes
                    .map(|b| format!("{b:.0} B")),
            )
            .opt_row(
                "server RSS at end",
                self.server_rss_end_kib.map(|k| format!("{k} KiB")),
            )
            .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
            .opt_row(
                "server CPU",
                self.server_cpu_pct.map(|c| format!("{c:.1} %")),
            )
            .opt_row("open-file limit", self.fd_limit)
            .opt_row("first error", self.first_error.as_deref())
            .render()
    }
}
