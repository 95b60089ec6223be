//! Input flow control: the rate buckets, and the input held back.
//!
//! Rates (`max_msg_rate`, `max_bytes_rate`, 1 s of burst each): a message costs one token of
//! the message budget and its size in the byte budget, which may go into debt. Before each
//! frame is decoded the budgets are checked; over either, reading pauses until they have paid
//! (or, with [`RatePolicy::Close`], the connection is closed with 1008). Checked only while
//! open: after our close frame nothing is delivered or charged, so the peer's close is read at
//! once.
//!
//! Held-back input: the rest of a read when a rate pause began, the rest the caller gave back
//! with [`Connection::defer`] (its work bound), or the bytes that followed the request head.
//! At most about one read: the caller does not read while any is held
//! ([`Connection::wants_read`]). It is decoded, in order, before anything read later.

use std::time::Duration;

use crate::ratelimit::TokenBucket;
use crate::time::Tick;
use crate::CloseCode;

use super::event::Event;
use super::output::Output;
use super::shared::{RatePolicy, Settings, Shared};
use super::{Connection, Phase};

/// Rate state and held-back input (boxed: it exists once a connection sends under a rate
/// limit, or while input is held).
#[derive(Debug, Default)]
pub(super) struct Flow {
    pub(super) rate: Option<Rate>,
    /// Held-back input starts at `start`.
    pub(super) backlog: Vec<u8>,
    pub(super) start: usize,
}

/// A connection's budgets.
#[derive(Debug)]
pub(super) struct Rate {
    pub(super) messages: Option<TokenBucket>,
    pub(super) bytes: Option<TokenBucket>,
    /// While paused: when reading resumes.
    pub(super) resume: Option<Tick>,
}

impl Rate {
    /// Full budgets at `now` (1 s of burst), if any rate is configured.
    fn new(settings: &Settings, now: Tick) -> Option<Rate> {
        let bucket = |rate: Option<u64>| rate.map(|r| TokenBucket::new(r, r, now));
        let rate = Rate {
            messages: bucket(settings.max_msg_rate),
            bytes: bucket(settings.max_bytes_rate),
            resume: None,
        };
        (rate.messages.is_some() || rate.bytes.is_some()).then_some(rate)
    }

    /// How long until both budgets allow another message (zero: now).
    fn wait(&self, now: Tick) -> Duration {
        [&self.messages, &self.bytes]
            .into_iter()
            .flatten()
            .map(|bucket| bucket.wait(now, 1))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Flow {
    /// Heap bytes held.
    pub(super) fn memory(&self) -> usize {
        self.backlog.capacity()
    }

    pub(super) fn held(&self) -> &[u8] {
        self.backlog.get(self.start..).unwrap_or_default()
    }
}

impl Connection {
    /// Gives back input the caller read but did not pass on (e.g. its per-turn work bound was
    /// reached): it is decoded, in order, before anything read later. Copies `rest`. Once the
    /// connection is lingering or finished, input is discarded, and so is `rest`.
    pub fn defer(&mut self, rest: &[u8]) {
        if rest.is_empty() || !self.takes_input() {
            return;
        }
        let flow = self.flow.get_or_insert_with(Box::default);
        if flow.start >= flow.backlog.len() {
            flow.backlog.clear();
            flow.start = 0;
        }
        flow.backlog.extend_from_slice(rest);
    }

    /// Whether input is held back and can be used now: call
    /// [`handle_input`](Connection::handle_input) with an empty slice. False during a rate
    /// pause ([`poll_timeout`](Connection::poll_timeout) says when it ends) and while a
    /// request waits for its answer.
    pub fn has_backlog(&self) -> bool {
        let ready = match &self.phase {
            Phase::Head(head) => !head.is_waiting(),
            Phase::Open { .. } | Phase::CloseSent { .. } => !self.is_paused(),
            Phase::Lingering { .. } | Phase::Finished => false,
        };
        ready && self.holds_input()
    }

    /// Whether any input is held back (paused or not).
    pub(super) fn holds_input(&self) -> bool {
        self.flow.as_deref().is_some_and(|f| !f.held().is_empty())
    }

    /// Whether input still means something: not once lingering or finished.
    fn takes_input(&self) -> bool {
        !matches!(self.phase, Phase::Lingering { .. } | Phase::Finished)
    }

    /// Takes the held-back input out, to decode it: `(buffer, start)`.
    pub(super) fn take_backlog(&mut self) -> Option<(Vec<u8>, usize)> {
        let flow = self.flow.as_deref_mut()?;
        if flow.held().is_empty() {
            return None;
        }
        let taken = (std::mem::take(&mut flow.backlog), flow.start);
        flow.start = 0;
        self.release_flow();
        Some(taken)
    }

    /// Holds `buf[start..]` without copying it, in front of anything held since: the bytes
    /// after the request head, or the undecoded rest of a taken backlog.
    pub(super) fn hold(&mut self, mut buf: Vec<u8>, start: usize) {
        if start >= buf.len() || !self.takes_input() {
            return;
        }
        let flow = self.flow.get_or_insert_with(Box::default);
        if !flow.held().is_empty() {
            buf.extend_from_slice(flow.held());
        }
        flow.backlog = buf;
        flow.start = start;
    }

    /// Whether reading is paused by the rate limits.
    pub(super) fn is_paused(&self) -> bool {
        self.resume_at().is_some()
    }

    /// When a rate pause ends.
    pub(super) fn resume_at(&self) -> Option<Tick> {
        self.flow.as_deref()?.rate.as_ref()?.resume
    }

    /// Ends a rate pause whose time has come.
    pub(super) fn resume_if_due(&mut self, now: Tick) {
        let rate = self.flow.as_deref_mut().and_then(|f| f.rate.as_mut());
        if let Some(rate) = rate.filter(|r| r.resume.is_some_and(|at| at <= now)) {
            rate.resume = None;
        }
    }

    /// Before decoding more while open: whether the budgets allow another message. Over
    /// them, the connection pauses (false: the rest is held back) or, with the close policy,
    /// is closed with 1008 (true: what follows is read as after any close of ours).
    pub(super) fn rate_admits<O: Output>(
        &mut self,
        now: Tick,
        out: &mut O,
        shared: &Shared,
    ) -> bool {
        let settings = &shared.settings;
        if settings.max_msg_rate.is_none() && settings.max_bytes_rate.is_none() {
            return true;
        }
        let flow = self.flow.get_or_insert_with(Box::default);
        if flow.rate.is_none() {
            flow.rate = Rate::new(settings, now);
        }
        let Some(rate) = flow.rate.as_mut() else {
            return true;
        };
        if rate.resume.is_some() {
            return false;
        }
        let wait = rate.wait(now);
        if wait.is_zero() {
            return true;
        }
        if settings.rate_policy == RatePolicy::Close {
            self.events.push(Event::RateLimited { resume: None });
            let _ = self.close(now, CloseCode::POLICY_VIOLATION, "rate limit", out, shared);
            return true;
        }
        let resume = now.after(wait.max(Duration::from_millis(1)));
        rate.resume = Some(resume);
        self.events.push(Event::RateLimited {
            resume: Some(resume),
        });
        false
    }

    /// After a message of `len` bytes was delivered: charges it to the budgets.
    pub(super) fn rate_charge(&mut self, now: Tick, len: usize) {
        let Some(rate) = self.flow.as_deref_mut().and_then(|f| f.rate.as_mut()) else {
            return;
        };
        if let Some(bucket) = rate.messages.as_mut() {
            bucket.charge(now, 1);
        }
        if let Some(bucket) = rate.bytes.as_mut() {
            bucket.charge(now, len as u64);
        }
    }

    /// Frees the flow box once it holds nothing (no budgets, no input).
    fn release_flow(&mut self) {
        if self
            .flow
            .as_deref()
            .is_some_and(|f| f.rate.is_none() && f.held().is_empty())
        {
            self.flow = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{client_close, client_frame, text, upgrade_request, Harness, Seen};
    use super::super::{Event, RatePolicy, Settings};
    use crate::OpCode;

    fn rates(messages: Option<u64>, bytes: Option<u64>, policy: RatePolicy) -> Settings {
        Settings {
            max_msg_rate: messages,
            max_bytes_rate: bytes,
            rate_policy: policy,
            ..Settings::default()
        }
    }

    fn texts(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| client_frame(OpCode::Text, format!("m{i}").as_bytes()))
            .collect()
    }

    fn messages(seen: &[Seen]) -> usize {
        seen.iter().filter(|s| !matches!(s, Seen::Event(_))).count()
    }

    #[test]
    fn over_the_message_rate_reading_pauses_then_resumes() {
        let mut h = Harness::open(rates(Some(2), None, RatePolicy::Pause));
        h.echo = true;
        h.feed(&texts(5));
        let seen = h.take_seen();
        assert_eq!(&seen[..2], &[text("m0"), text("m1")], "one second of burst");
        let resume = h.now.after(Duration::from_millis(500));
        assert_eq!(
            seen[2..],
            [Seen::Event(Event::RateLimited {
                resume: Some(resume)
            })]
        );
        assert!(!h.conn.wants_read());
        assert!(
            !h.conn.has_backlog(),
            "held, but not decodable during the pause"
        );
        assert!(h.conn.memory() > 0, "the rest of the read is held");
        assert_eq!(h.conn.poll_timeout(&h.shared), Some(resume));
        h.run_to_deadline();
        assert_eq!(h.take_seen()[0], Seen::Text("m2".to_owned(), false));
        h.advance(Duration::from_secs(2));
        let seen = h.take_seen();
        assert_eq!(messages(&seen), 2, "{seen:?}");
        assert!(h.conn.wants_read());
        assert_eq!(h.conn.memory(), 0);
        assert_eq!(h.frames().len(), 5, "every message was echoed, in order");
    }

    #[test]
    fn a_message_costs_its_size_in_the_byte_budget() {
        let mut h = Harness::open(rates(None, Some(1000), RatePolicy::Pause));
        let mut bytes = client_frame(OpCode::Binary, &[0; 5000]);
        bytes.extend(client_frame(OpCode::Binary, b"next"));
        h.feed(&bytes);
        let seen = h.take_seen();
        assert_eq!(
            messages(&seen),
            1,
            "the big one is admitted on a full bucket"
        );
        // It put the bucket 4 000 bytes in debt: 4.001 s until one more byte is there.
        let resume = h.now.after(Duration::from_millis(4001));
        assert_eq!(
            seen[1],
            Seen::Event(Event::RateLimited {
                resume: Some(resume)
            })
        );
        h.advance(Duration::from_secs(4));
        assert_eq!(messages(&h.take_seen()), 0);
        h.run_to_deadline();
        assert_eq!(messages(&h.take_seen()), 1);
    }

    #[test]
    fn the_close_policy_closes_with_1008_and_reads_on() {
        let mut h = Harness::open(rates(Some(1), None, RatePolicy::Close));
        let mut bytes = texts(3);
        bytes.extend(client_frame(OpCode::Ping, b"p"));
        h.feed(&bytes);
        let seen = h.take_seen();
        assert_eq!(seen[0], text("m0"));
        assert_eq!(seen[1], Seen::Event(Event::RateLimited { resume: None }));
        assert_eq!(seen.len(), 2, "what follows our close is not delivered");
        assert_eq!(h.close_frame(), (1008, "rate limit".to_owned()));
        assert!(
            h.conn.wants_read(),
            "reading goes on to find the peer's close"
        );
    }

    #[test]
    fn input_held_after_the_close_handshake_is_dropped() {
        // Found by the fuzz target: frames after a close frame, in the bytes that came with
        // the request, stayed held while lingering, so `has_backlog` never went false.
        let mut h = Harness::new(Settings::default());
        let mut bytes = upgrade_request("");
        bytes.extend(client_close(1000, b""));
        bytes.extend(texts(2));
        h.feed(&bytes);
        h.accept().unwrap();
        assert!(!h.conn.has_backlog());
        assert_eq!(h.conn.memory(), 0);
        assert!(matches!(h.events()[..], [Event::Closed(_)]));
        // Deferring once lingering discards, as reading would.
        h.conn.defer(b"more");
        assert!(!h.conn.has_backlog());
        assert_eq!(h.conn.memory(), 0);
    }

    #[test]
    fn input_deferred_in_the_request_phase_is_scanned_on_the_next_call() {
        let mut h = Harness::new(Settings::default());
        h.conn.defer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(h.conn.has_backlog());
        assert!(!h.conn.wants_read(), "held input goes first");
        h.resume();
        assert_eq!(h.take_request().head, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!h.conn.has_backlog());
    }

    #[test]
    fn deferred_input_is_decoded_first_and_in_order() {
        let mut h = Harness::open(Settings::default());
        let mut bytes = texts(3);
        // A reactor that stops after the first message and hands the rest back.
        let mut scratch = Vec::new();
        let got = h
            .conn
            .handle_input(h.now, &mut bytes, &mut scratch, &mut h.out, &mut h.shared);
        assert!(got.message.is_some());
        let consumed = got.consumed;
        h.conn.defer(&bytes[consumed..]);
        assert!(h.conn.has_backlog());
        assert!(!h.conn.wants_read(), "held input goes first");
        // New bytes arriving anyway are queued behind it.
        h.feed(&client_frame(OpCode::Text, b"later"));
        assert_eq!(
            h.take_seen(),
            vec![
                Seen::Text("m1".to_owned(), false),
                Seen::Text("m2".to_owned(), false),
                Seen::Text("later".to_owned(), false)
            ]
        );
        assert!(h.conn.wants_read());
        assert_eq!(h.conn.memory(), 0);
    }
}
