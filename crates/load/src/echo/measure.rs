//! What an echo run measures, as the driver's [`Handler`]: every echo is compared with the
//! message it answers as it arrives (a split echo piece by piece), its round trip taken from
//! the connection's queue of send times, and each echo completed sends the next message.

use std::collections::VecDeque;
use std::time::Instant;

use super::plan::{Cursor, Outstanding, Plan};
use crate::client::{ClientConn, Data, Event, Shared};
use crate::driver::{End, Handler};
use crate::stats::Histogram;
use crate::verify::EchoCheck;

/// One connection's echo state: small, no allocation per message.
struct EchoConn {
    /// What it sends next.
    cursor: Cursor,
    /// Its messages awaiting their echo, oldest first.
    outstanding: VecDeque<Outstanding>,
    /// The echo in progress.
    check: EchoCheck,
    /// Echoes completed in this read burst: that many messages go out next.
    completed: usize,
}

/// Counters over every connection of a run.
#[derive(Debug)]
pub(super) struct Tally {
    /// Round-trip times in the window, ns.
    pub hist: Histogram,
    /// Echoes completed in the window.
    pub msgs: u64,
    /// Frame bytes of the echoes completed in the window, and of the messages they echo.
    pub wire_recv: u64,
    pub wire_sent: u64,
    /// In the measured window.
    pub measuring: bool,
    /// Echoes that differed, or that answered nothing (whole run).
    pub mismatches: u64,
    /// Failed connections (whole run).
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    /// The measured window starts now: forget the warm-up's round trips.
    pub fn start_window(&mut self) {
        self.measuring = true;
        self.hist.clear();
    }
}

/// The echo mode's handler.
pub(super) struct Echo<'p> {
    plan: &'p Plan,
    inflight: usize,
    conns: Vec<EchoConn>,
    /// Where time is counted from.
    base: Instant,
    /// The last time converted, and its value in ns since `base`.
    clock: (Instant, u64),
    pub tally: Tally,
    /// Connections on which the server accepted permessage-deflate.
    pub deflate_conns: usize,
    /// The first accepted answer's `Sec-WebSocket-Extensions` value.
    pub deflate_answer: Option<String>,
}

impl<'p> Echo<'p> {
    /// `conns` connections with `inflight` messages each, sending what `plan` says.
    pub fn new(plan: &'p Plan, conns: usize, inflight: usize) -> Echo<'p> {
        Echo {
            plan,
            inflight,
            conns: (0..conns)
                .map(|id| EchoConn {
                    cursor: plan.first(id),
                    outstanding: VecDeque::with_capacity(inflight),
                    check: EchoCheck::default(),
                    completed: 0,
                })
                .collect(),
            base: Instant::now(),
            clock: (Instant::now(), 0),
            tally: Tally {
                hist: Histogram::new(),
                msgs: 0,
                wire_recv: 0,
                wire_sent: 0,
                measuring: false,
                mismatches: 0,
                errors: 0,
                first_error: None,
            },
            deflate_conns: 0,
            deflate_answer: None,
        }
    }

    /// `at` in ns since the run's start. Every event of one read carries the same `at`, so
    /// the conversion is made once per read, not once per message.
    fn ns(&mut self, at: Instant) -> u64 {
        if at != self.clock.0 {
            self.clock = (
                at,
                at.saturating_duration_since(self.base).as_nanos() as u64,
            );
        }
        self.clock.1
    }

    /// Queues connection `id`'s first `inflight` messages.
    pub fn start(&mut self, id: usize, conn: &mut ClientConn, shared: &mut Shared) {
        self.queue(id, self.inflight, conn, shared, Instant::now());
    }

    fn queue(
        &mut self,
        id: usize,
        count: usize,
        conn: &mut ClientConn,
        shared: &mut Shared,
        now: Instant,
    ) {
        let now = self.ns(now);
        if let Some(c) = self.conns.get_mut(id) {
            self.plan
                .queue(&mut c.cursor, count, conn, shared, now, &mut c.outstanding);
        }
    }

    /// A piece of connection `id`'s echo.
    fn on_data(&mut self, id: usize, data: &Data<'_>, now: u64) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // The oldest outstanding message (none: an echo of nothing, so nothing matches).
        let expected = c
            .outstanding
            .front()
            .map_or(&[][..], |o| self.plan.payload(o.what));
        let Some(verdict) = c.check.piece(expected, self.plan.opcode, data) else {
            return;
        };
        let tally = &mut self.tally;
        let Some(sent) = c.outstanding.pop_front() else {
            tally.mismatches += 1;
            return;
        };
        c.completed += 1;
        tally.mismatches += u64::from(!verdict.intact);
        if tally.measuring {
            tally.msgs += 1;
            tally.wire_recv += verdict.wire;
            tally.wire_sent += sent.wire;
            tally.hist.record(now.saturating_sub(sent.sent_at));
        }
    }
}

impl Handler for Echo<'_> {
    fn on_event(&mut self, id: usize, event: Event<'_>, now: Instant) -> Result<(), String> {
        match event {
            Event::Opened {
                deflate: Some(params),
            } => {
                self.deflate_conns += 1;
                self.deflate_answer
                    .get_or_insert_with(|| params.response_value());
            }
            Event::Data(data) => {
                let now = self.ns(now);
                self.on_data(id, &data, now);
            }
            Event::Close { code, .. } => {
                return Err(format!("server closed the connection ({code})"))
            }
            Event::Opened { deflate: None } | Event::Pong(_) => {}
        }
        Ok(())
    }

    fn answer(&mut self, id: usize, conn: &mut ClientConn, shared: &mut Shared, now: Instant) {
        let completed = self
            .conns
            .get_mut(id)
            .map_or(0, |c| std::mem::take(&mut c.completed));
        if completed > 0 {
            self.queue(id, completed, conn, shared, now);
        }
    }

    fn on_end(&mut self, _id: usize, end: End) {
        self.tally.errors += 1;
        self.tally
            .first_error
            .get_or_insert_with(|| end.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{client_frames, open_conn, server_frame, shared, take_out};
    use crate::client::ConnConfig;
    use crate::echo::EchoOptions;
    use crate::payload::Payload;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::time::Duration;
    use wsloop_proto::deflate::{Deflater, Inflater};
    use wsloop_proto::frame::OpCode;

    fn plan(size: usize, payload: Payload) -> Plan {
        let opts = EchoOptions {
            conns: 1,
            inflight: 4,
            size,
            payload,
            deflate: payload == Payload::Text,
            ..EchoOptions::default()
        };
        Plan::new(&opts, &mut SmallRng::seed_from_u64(3))
    }

    /// Feeds `wire` to `conn` in chunks of `chunk` bytes, as the driver would; returns the
    /// time of the last read.
    fn feed(
        echo: &mut Echo<'_>,
        conn: &mut ClientConn,
        shared: &mut Shared,
        wire: &[u8],
        chunk: usize,
        at: Instant,
    ) -> Result<(), String> {
        for part in wire.chunks(chunk) {
            let mut input = part;
            while !input.is_empty() {
                let event = conn.poll_event(&mut input, shared);
                if let Some(event) = event.map_err(|e| e.to_string())? {
                    echo.on_event(0, event, at)?;
                }
            }
        }
        echo.answer(0, conn, shared, at);
        Ok(())
    }

    #[test]
    fn verifies_echoes_byte_for_byte_even_when_split_and_sends_one_more_per_echo() {
        let plan = plan(40, Payload::Random);
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut echo = Echo::new(&plan, 1, 3);
        echo.tally.start_window();
        echo.start(0, &mut conn, &mut shared);
        let sent = client_frames(&take_out(&mut conn));
        assert_eq!(sent.len(), 3);
        let payload = &sent[0].1;
        let good = server_frame(OpCode::Text, payload);
        let mut flipped = payload.clone();
        flipped[39] ^= 1;
        let wire = [
            good.clone(),
            server_frame(OpCode::Text, &flipped),
            server_frame(OpCode::Binary, payload),
        ]
        .concat();
        // A round trip of at least a millisecond.
        let later = Instant::now() + Duration::from_millis(1);
        feed(&mut echo, &mut conn, &mut shared, &wire, 7, later).unwrap();
        assert_eq!(echo.tally.msgs, 3);
        assert_eq!(echo.tally.mismatches, 2, "a flipped bit and a wrong opcode");
        assert!(
            echo.tally.hist.quantile(0.5) >= 990_000,
            "1 ms, within the histogram's 0.8 %"
        );
        assert_eq!(echo.tally.wire_recv, 3 * 42, "2-byte headers");
        assert_eq!(echo.tally.wire_sent, 3 * 46);
        assert_eq!(
            client_frames(&take_out(&mut conn)).len(),
            3,
            "three more sent"
        );
        // Three more outstanding; an echo beyond them answers nothing and is a mismatch too.
        let four = [good.clone(), good.clone(), good.clone(), good].concat();
        feed(&mut echo, &mut conn, &mut shared, &four, 1000, later).unwrap();
        assert_eq!(echo.tally.mismatches, 3);
        assert_eq!(echo.tally.msgs, 6);
    }

    #[test]
    fn a_fragmented_echo_is_one_message_and_a_short_one_is_caught() {
        let plan = plan(10, Payload::Random);
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut echo = Echo::new(&plan, 1, 2);
        echo.start(0, &mut conn, &mut shared);
        let payload = client_frames(&take_out(&mut conn))[0].1.clone();
        let mut first = server_frame(OpCode::Text, &payload[..4]);
        first[0] &= 0x7f; // not FIN
        let wire = [
            first,
            server_frame(OpCode::Continuation, &payload[4..]),
            server_frame(OpCode::Text, &payload[..9]),
        ]
        .concat();
        feed(&mut echo, &mut conn, &mut shared, &wire, 5, Instant::now()).unwrap();
        assert_eq!(echo.tally.msgs, 0, "not measuring");
        assert_eq!(echo.tally.mismatches, 1, "the short echo");
        assert_eq!(client_frames(&take_out(&mut conn)).len(), 2);
    }

    #[test]
    fn a_server_close_fails_the_connection_with_its_code() {
        let plan = plan(8, Payload::Random);
        let mut shared = shared();
        let mut conn = open_conn(ConnConfig::default(), None, &mut shared);
        let mut echo = Echo::new(&plan, 1, 1);
        let close = server_frame(OpCode::Close, &1001u16.to_be_bytes());
        let err = feed(
            &mut echo,
            &mut conn,
            &mut shared,
            &close,
            100,
            Instant::now(),
        )
        .unwrap_err();
        assert!(err.contains("1001"), "{err}");
    }

    /// The server's side of one deflate echo: inflate what the client sent, answer it
    /// compressed (`split`: over two frames) or not.
    fn server_echo(packed: &[u8], split: bool, compress: bool) -> Vec<u8> {
        let mut message = Vec::new();
        Inflater::new()
            .inflate(packed, &mut message, 1 << 20, true)
            .unwrap();
        if !compress {
            return server_frame(OpCode::Text, &message);
        }
        let mut echo = Vec::new();
        Deflater::new(15, 1).compress(&message, &mut echo, true);
        if !split {
            let mut frame = server_frame(OpCode::Text, &echo);
            frame[0] |= 0x40;
            return frame;
        }
        let mut head = server_frame(OpCode::Text, &echo[..10]);
        head[0] = 0x40 | 0x1; // RSV1, not FIN
        [head, server_frame(OpCode::Continuation, &echo[10..])].concat()
    }

    /// A connection that agreed permessage-deflate as `answer`, and an echo run on it with
    /// `inflight` messages sent and the window open.
    fn deflate_run<'p>(
        plan: &'p Plan,
        inflight: usize,
        answer: &str,
        shared: &mut Shared,
    ) -> (ClientConn, Echo<'p>) {
        let config = ConnConfig {
            offer_deflate: true,
            max_message: plan.size + 1,
            ..ConnConfig::default()
        };
        let mut conn = open_conn(config, Some(answer), shared);
        let mut echo = Echo::new(plan, 1, inflight);
        echo.tally.start_window();
        echo.start(0, &mut conn, shared);
        (conn, echo)
    }

    #[test]
    fn compressed_messages_out_and_compressed_echoes_verified() {
        let size = 1024;
        let plan = plan(size, Payload::Text);
        let mut shared = shared();
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let (mut conn, mut echo) = deflate_run(&plan, 3, answer, &mut shared);
        let frames = client_frames(&take_out(&mut conn));
        assert_eq!(frames.len(), 3);
        let mut wire = Vec::new();
        for (i, (first, packed)) in frames.iter().enumerate() {
            assert_eq!(*first, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
            // Compressed whole, compressed and split, and plain (a server may).
            wire.extend(server_echo(packed, i == 1, i < 2));
        }
        feed(
            &mut echo,
            &mut conn,
            &mut shared,
            &wire,
            100,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(echo.tally.msgs, 3);
        assert_eq!(echo.tally.mismatches, 0);
        let ratio = echo.tally.wire_recv as f64 / (3 * size) as f64;
        assert!(ratio < 0.9, "two of three echoes compressed: {ratio}");
        assert!((echo.tally.wire_sent as f64) < 0.6 * (3 * size) as f64);
        assert!(
            shared.deflate.deflater_in_use(),
            "no context takeover: shared"
        );

        // A corrupted compressed echo is an error, not a silent pass.
        let mut frame = server_frame(OpCode::Text, &[0xff; 20]);
        frame[0] |= 0x40;
        assert!(feed(
            &mut echo,
            &mut conn,
            &mut shared,
            &frame,
            100,
            Instant::now()
        )
        .is_err());
    }

    #[test]
    fn context_takeover_keeps_each_side_s_history() {
        let size = 2048;
        let plan = plan(size, Payload::Text);
        let mut shared = shared();
        let (mut conn, mut echo) = deflate_run(&plan, 1, "permessage-deflate", &mut shared);
        let mut server_in = Inflater::new();
        let mut server_out = Deflater::new(15, 1);
        for round in 0..4 {
            let frames = client_frames(&take_out(&mut conn));
            assert_eq!(frames.len(), 1);
            let mut message = Vec::new();
            server_in
                .inflate(&frames[0].1, &mut message, 1 << 20, false)
                .unwrap();
            let mut packed = Vec::new();
            server_out.compress(&message, &mut packed, false);
            let mut frame = server_frame(OpCode::Text, &packed);
            frame[0] |= 0x40;
            feed(
                &mut echo,
                &mut conn,
                &mut shared,
                &frame,
                1000,
                Instant::now(),
            )
            .unwrap();
            assert_eq!(echo.tally.msgs, round + 1);
        }
        assert_eq!(echo.tally.mismatches, 0);
        assert!(!shared.deflate.deflater_in_use(), "own contexts");
    }
}
