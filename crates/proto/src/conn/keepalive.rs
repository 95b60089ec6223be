//! Keepalive: after `ping_interval` of silence the server pings, the ping carrying its send
//! time (8 bytes, microseconds of the caller's clock), so the pong that echoes it gives the
//! round trip with no state kept. After `idle_timeout` of silence the peer is taken for dead
//! and dropped without a close frame (1006): a dead peer would read nothing.

use std::time::Duration;

use crate::time::Tick;
use crate::OpCode;

use super::event::{Closed, Event, Initiator};
use super::output::{write_frame, Output};
use super::shared::Settings;
use super::{Connection, Phase};

/// Pongs claiming a round trip this long are not answers to our pings.
const MAX_RTT: Duration = Duration::from_secs(3600);

impl Connection {
    /// Bytes arrived at `now` (ciphertext counts: call it for a TLS read that yields no
    /// plaintext; [`handle_input`](Connection::handle_input) calls it for every non-empty
    /// input): the keepalive and idle clocks start again.
    pub fn handle_traffic(&mut self, now: Tick) {
        if let Phase::Open { last_seen } = &mut self.phase {
            *last_seen = now;
        }
        self.ping_sent = false;
    }

    /// The next keepalive deadline of an open connection: the ping (unless one is out) or the
    /// idle limit, counted from the last traffic.
    pub(super) fn keepalive_deadline(&self, last_seen: Tick, settings: &Settings) -> Option<Tick> {
        let ping = settings
            .ping_interval
            .filter(|_| !self.ping_sent)
            .map(|interval| last_seen.after(interval));
        let idle = settings.idle_timeout.map(|limit| last_seen.after(limit));
        [ping, idle].into_iter().flatten().min()
    }

    /// An open connection's timer: drop it when silent past the idle limit, else ping it when
    /// silent past the ping interval (once until traffic comes back).
    pub(super) fn keepalive<O: Output>(
        &mut self,
        now: Tick,
        last_seen: Tick,
        out: &mut O,
        settings: &Settings,
    ) {
        let silent = now.since(last_seen);
        if settings.idle_timeout.is_some_and(|limit| silent >= limit) {
            self.report_closed(Closed::abnormal(Initiator::Idle));
            self.phase = Phase::Finished;
            return;
        }
        if !self.ping_sent
            && settings
                .ping_interval
                .is_some_and(|interval| silent >= interval)
        {
            self.ping_sent = true;
            write_frame(out, OpCode::Ping, false, &[&now.as_micros().to_be_bytes()]);
        }
    }

    /// A pong: when it answers one of our pings, queues the round trip (true). Pongs of other
    /// lengths or with impossible times are unsolicited, which §5.5.3 allows: ignored.
    pub(super) fn record_rtt(&mut self, now: Tick, payload: &[u8]) -> bool {
        let Ok(sent) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) else {
            return false;
        };
        let rtt = now.as_micros().checked_sub(sent).map(Duration::from_micros);
        match rtt.filter(|rtt| *rtt < MAX_RTT) {
            Some(rtt) => {
                self.events.push(Event::Rtt(rtt));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{client_frame, keepalive, Harness};
    use super::super::{Closed, Event, Initiator};
    use crate::OpCode;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_silent_peer_is_pinged_and_its_pong_gives_the_round_trip() {
        let mut h = Harness::open(keepalive(Some(30), Some(75)));
        h.advance(29 * SEC);
        assert_eq!(h.frames(), vec![], "not before the interval");
        h.advance(SEC);
        let frames = h.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].opcode, 0x9);
        assert_eq!(frames[0].payload.len(), 8);
        // The peer answers 2.5 ms later.
        h.now = h.now.after(Duration::from_micros(2500));
        h.feed(&client_frame(OpCode::Pong, &frames[0].payload));
        assert_eq!(h.events(), vec![Event::Rtt(Duration::from_micros(2500))]);
        // Pongs that are not answers to our pings give nothing.
        h.feed(&client_frame(OpCode::Pong, &u64::MAX.to_be_bytes()));
        assert_eq!(h.events(), vec![]);
    }

    #[test]
    fn pings_continue_after_traffic_even_without_an_idle_limit() {
        let mut h = Harness::open(keepalive(Some(30), None));
        for round in 0..3 {
            h.run_to_deadline();
            let frames = h.frames();
            assert_eq!(frames.len(), 1, "round {round}");
            assert_eq!(frames[0].opcode, 0x9);
            // One ping at a time: no second one while it is unanswered and nothing else is timed.
            assert_eq!(h.conn.poll_timeout(&h.shared), None);
            h.feed(&client_frame(OpCode::Pong, &frames[0].payload));
        }
    }

    #[test]
    fn traffic_resets_the_silence() {
        let mut h = Harness::open(keepalive(Some(30), Some(75)));
        h.advance(20 * SEC);
        h.feed(&client_frame(OpCode::Binary, b"alive")[..3]); // even part of a frame
        h.advance(20 * SEC);
        assert_eq!(h.frames(), vec![]);
        assert_eq!(h.conn.poll_timeout(&h.shared), Some(h.now.after(10 * SEC)));
    }

    #[test]
    fn a_peer_silent_past_the_idle_limit_is_dropped_with_1006() {
        let mut h = Harness::open(keepalive(Some(30), Some(75)));
        h.run_to_deadline(); // the ping at 30 s
        let _ = h.frames();
        h.advance(44 * SEC);
        assert!(!h.conn.is_finished());
        h.run_to_deadline(); // 75 s
        assert!(h.conn.is_finished());
        assert_eq!(h.frames(), vec![], "no close frame to a dead peer");
        assert_eq!(
            h.events(),
            vec![Event::Closed(Closed::abnormal(Initiator::Idle))]
        );
    }

    #[test]
    fn keepalive_is_off_when_not_configured_and_outside_the_open_phase() {
        let mut h = Harness::open(keepalive(None, None));
        assert_eq!(h.conn.poll_timeout(&h.shared), None);
        h.advance(3600 * SEC);
        assert_eq!(h.frames(), vec![]);
        // Closing: only the close wait is timed.
        let mut h = Harness::open(keepalive(Some(1), Some(2)));
        h.close(1000, "").unwrap();
        let _ = h.frames();
        h.advance(SEC);
        assert_eq!(h.frames(), vec![], "no ping while closing");
    }
}
