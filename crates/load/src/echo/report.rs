//! The report of `echo` and `latency`: a table for people, one JSON line for scripts.

use crate::payload::Payload;
use crate::report::{JsonLine, Table};
use crate::stats::Percentiles;

/// What [`run_echo`](super::run_echo) or [`run_latency`](super::run_latency) measured.
#[derive(Debug, Clone)]
pub struct EchoReport {
    /// `"echo"` or `"latency"`.
    pub mode: &'static str,
    /// Connections requested.
    pub conns: usize,
    /// Connections established.
    pub conns_open: usize,
    /// Messages in flight per connection.
    pub inflight: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Binary (true) or text messages.
    pub binary: bool,
    /// What the messages contained.
    pub payload: Payload,
    /// permessage-deflate was offered.
    pub deflate_offered: bool,
    /// Connections on which the server accepted it.
    pub deflate_conns: usize,
    /// The first accepted answer's `Sec-WebSocket-Extensions` value.
    pub deflate_answer: Option<String>,
    /// Server→client frame bytes (headers included) per payload byte, in the window: below 1
    /// when the server's compression pays.
    pub wire_ratio_recv: Option<f64>,
    /// Client→server frame bytes per payload byte, in the window.
    pub wire_ratio_sent: Option<f64>,
    /// Length of the measured window in seconds.
    pub window_secs: f64,
    /// Echoes received and verified in the window.
    pub msgs: u64,
    /// `msgs` per second.
    pub msgs_per_sec: f64,
    /// Echoed payload in MB (10^6 bytes) per second, one direction.
    pub mb_per_sec: f64,
    /// Round-trip times in the window.
    pub latency: Percentiles,
    /// `read` calls that returned data, in the window (messages per call = batching).
    pub read_calls: u64,
    /// `writev` calls, in the window.
    pub write_calls: u64,
    /// Echoes whose bytes, length or type differed from what was sent (whole run).
    pub mismatches: u64,
    /// Connections that failed to open or died, and protocol errors (whole run).
    pub errors: u64,
    /// The load generator's CPU in the window, % of one core.
    pub client_cpu_pct: f64,
    /// The server's CPU in the window, % of one core (with `server_pid`).
    pub server_cpu_pct: Option<f64>,
    /// The server's CPU time per echoed message in the window, µs (with `server_pid`).
    pub server_cpu_us_per_msg: Option<f64>,
    /// The server's resident memory at the end, KiB (with `server_pid`).
    pub server_rss_kib: Option<u64>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl EchoReport {
    /// No mismatch, no error, and at least one verified echo.
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.errors == 0 && self.msgs > 0
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        JsonLine::new()
            .str("mode", self.mode)
            .int("conns", self.conns as u64)
            .int("conns_open", self.conns_open as u64)
            .int("inflight", self.inflight as u64)
            .int("size", self.size as u64)
            .bool("binary", self.binary)
            .str("payload", self.payload.name())
            .bool("deflate_offered", self.deflate_offered)
            .int("deflate_conns", self.deflate_conns as u64)
            .opt_str("deflate_answer", self.deflate_answer.as_deref())
            .opt_num("wire_ratio_recv", self.wire_ratio_recv)
            .opt_num("wire_ratio_sent", self.wire_ratio_sent)
            .num("window_secs", self.window_secs)
            .int("msgs", self.msgs)
            .num("msgs_per_sec", self.msgs_per_sec)
            .num("mb_per_sec", self.mb_per_sec)
            .num("p50_us", self.latency.p50_us)
            .num("p99_us", self.latency.p99_us)
            .num("p999_us", self.latency.p999_us)
            .num("max_us", self.latency.max_us)
            .num("mean_us", self.latency.mean_us)
            .num("msgs_per_read", per(self.msgs, self.read_calls))
            .num("msgs_per_write", per(self.msgs, self.write_calls))
            .int("mismatches", self.mismatches)
            .int("errors", self.errors)
            .num("client_cpu_pct", self.client_cpu_pct)
            .opt_num("server_cpu_pct", self.server_cpu_pct)
            .opt_num("server_cpu_us_per_msg", self.server_cpu_us_per_msg)
            .opt_int("server_rss_kib", self.server_rss_kib)
            .opt_str("first_error", self.first_error.as_deref())
            .finish()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let kind = if self.binary { "binary" } else { "text" };
        let deflate = if self.deflate_offered {
            ", deflate offered"
        } else {
            ""
        };
        Table::new(format!(
            "wsload {}: {} conns x {} in flight, {} B {kind} ({} payload{deflate})",
            self.mode, self.conns, self.inflight, self.size, self.payload
        ))
        .row("connections open", self.conns_open)
        .opt_row(
            "deflate accepted",
            self.deflate_offered.then(|| {
                let answer = self.deflate_answer.as_deref().unwrap_or("declined");
                format!("{} conns: {answer}", self.deflate_conns)
            }),
        )
        .opt_row(
            "wire/payload (recv / sent)",
            self.wire_ratio_recv.map(|recv| {
                let sent = self.wire_ratio_sent.unwrap_or(f64::NAN);
                format!("{recv:.3} / {sent:.3}")
            }),
        )
        .row("window", format!("{:.2} s", self.window_secs))
        .row("messages", self.msgs)
        .row("msgs/s", format!("{:.0}", self.msgs_per_sec))
        .row(
            "MB/s (payload, each way)",
            format!("{:.2}", self.mb_per_sec),
        )
        .row(
            "RTT p50 / p99 / p99.9",
            format!(
                "{:.1} / {:.1} / {:.1} us",
                self.latency.p50_us, self.latency.p99_us, self.latency.p999_us
            ),
        )
        .row(
            "RTT mean / max",
            format!(
                "{:.1} / {:.1} us",
                self.latency.mean_us, self.latency.max_us
            ),
        )
        .row(
            "msgs per read / per write",
            format!(
                "{:.1} / {:.1}",
                per(self.msgs, self.read_calls),
                per(self.msgs, self.write_calls)
            ),
        )
        .row("mismatches", self.mismatches)
        .row("errors", self.errors)
        .row("client CPU", format!("{:.1} %", self.client_cpu_pct))
        .opt_row(
            "server CPU",
            self.server_cpu_pct.map(|c| format!("{c:.1} %")),
        )
        .opt_row(
            "server CPU per message",
            self.server_cpu_us_per_msg.map(|c| format!("{c:.2} us")),
        )
        .opt_row(
            "server RSS",
            self.server_rss_kib.map(|k| format!("{k} KiB")),
        )
        .opt_row("first error", self.first_error.as_deref())
        .render()
    }
}

fn per(n: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        n as f64 / calls as f64
    }
}
