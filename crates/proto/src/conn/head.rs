//! The request phase: the PROXY header when one is expected, the request head (found
//! incrementally, at most `max_head` bytes), one request at a time, and its answer — the
//! upgrade (101 with the negotiated extension), a plain HTTP answer (keep-alive or not) or a
//! refusal.
//!
//! Frames the application sends while it decides an upgrade wait here and go out right after
//! the 101; a refusal drops them.

use std::net::SocketAddr;

use crate::deflate::negotiate;
use crate::handshake::{write_accept_response, HandshakeError, HeadScanner, RequestHead};
use crate::proxy::{self, ProxyError, ProxyHeader};
use crate::time::Tick;

use super::event::{Event, Request};
use super::output::{write_frame, Output};
use super::shared::{ProxyPolicy, Settings, Shared};
use super::{ActionError, Connection, Phase};

/// The request phase's state (boxed: it exists only until the upgrade or the last answer).
#[derive(Debug)]
pub(super) struct Head {
    /// Bytes received and not handed out yet start at `start`.
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    /// Where the search for the end of the head resumes.
    scanner: HeadScanner,
    /// Still expected before the request, if a PROXY header is.
    pub(super) proxy: Option<ProxyPolicy>,
    /// The client address a trusted PROXY header gave.
    pub(super) client: Option<SocketAddr>,
    /// When the request (or the next keep-alive request) must be complete.
    pub(super) deadline: Tick,
    /// What was handed out and is not answered yet.
    waiting: Waiting,
    /// Frames the application sent while deciding the upgrade.
    pub(super) sent: Vec<u8>,
}

/// What a request-phase connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Bytes: no request is out.
    Bytes,
    /// The answer to an [`Event::Request`].
    Answer,
    /// The refusal of an [`Event::BadRequest`].
    Refusal,
}

/// What the PROXY header step decided.
enum ProxyStep {
    /// Dealt with (or none expected): the request head follows.
    Done,
    /// Not enough bytes yet.
    Partial,
    /// Refused: the connection ends without a word.
    Refused(Result<ProxyHeader, ProxyError>),
}

impl Head {
    pub(super) fn new(deadline: Tick, proxy: Option<ProxyPolicy>) -> Head {
        Head {
            buf: Vec::new(),
            start: 0,
            scanner: HeadScanner::default(),
            proxy,
            client: None,
            deadline,
            waiting: Waiting::Bytes,
            sent: Vec::new(),
        }
    }

    /// Whether a request (or a refusal) is out and not answered: one at a time.
    pub(super) fn is_waiting(&self) -> bool {
        self.waiting != Waiting::Bytes
    }

    /// Heap bytes held: unanswered request bytes and frames sent while deciding.
    pub(super) fn memory(&self) -> usize {
        self.buf.capacity() + self.sent.capacity()
    }

    /// The bytes not handed out yet.
    fn unread(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Appends received bytes. Handed-out bytes are dropped first, so a run of pipelined
    /// requests costs linear time: each is copied out once, the rest moves once per read.
    fn append(&mut self, input: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
        self.buf.extend_from_slice(input);
    }

    /// The PROXY protocol header, when one is expected: a trusted one gives the client's
    /// address; a missing one (when required), an untrusted or a malformed one is refused.
    fn read_proxy(&mut self) -> ProxyStep {
        let Some(policy) = self.proxy else {
            return ProxyStep::Done;
        };
        match proxy::parse(self.unread()) {
            Ok(ProxyHeader::Partial) => return ProxyStep::Partial,
            Ok(ProxyHeader::Absent) if !policy.required => {}
            Ok(ProxyHeader::Found { len, source }) if policy.trusted => {
                self.start += len.min(self.unread().len());
                self.client = source;
            }
            refused => return ProxyStep::Refused(refused),
        }
        self.proxy = None;
        ProxyStep::Done
    }

    /// Looks for the end of the next request head (incrementally: each byte is scanned once
    /// however the bytes were split); 431 past `max_head`.
    fn scan(&mut self, max_head: usize) -> Result<Option<usize>, HandshakeError> {
        let unread = self.buf.get(self.start..).unwrap_or_default();
        self.scanner.scan(unread, max_head)
    }

    /// Hands out the `len` bytes of the complete head at the front (the whole buffer without
    /// a copy when nothing follows it, as for every non-pipelined request).
    fn take_request(&mut self, len: usize) -> Request {
        let end = self.start.saturating_add(len).min(self.buf.len());
        let head = if self.start == 0 && end == self.buf.len() {
            std::mem::take(&mut self.buf)
        } else {
            let head = self.buf.get(self.start..end).unwrap_or_default().to_vec();
            self.start = end;
            head
        };
        self.scanner = HeadScanner::default();
        self.waiting = Waiting::Answer;
        Request {
            head,
            client: self.client,
        }
    }

    /// After a keep-alive answer: ready for the next request, with a fresh deadline.
    fn next_request(&mut self, deadline: Tick) {
        self.waiting = Waiting::Bytes;
        self.sent = Vec::new();
        self.deadline = deadline;
        if self.start >= self.buf.len() {
            // An idle keep-alive connection holds no buffer.
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

impl Connection {
    /// Request-phase bytes (after any that were deferred): collected, then the next request
    /// (if complete) is handed out.
    pub(super) fn head_input(&mut self, input: &[u8], shared: &Shared) {
        let deferred = self.take_backlog();
        if let Phase::Head(head) = &mut self.phase {
            if let Some((held, start)) = &deferred {
                head.append(held.get(*start..).unwrap_or_default());
            }
            head.append(input);
        }
        self.advance_head(&shared.settings);
    }

    /// Looks at the bytes collected: the PROXY header first, then the next request head,
    /// unless a request is out already.
    fn advance_head(&mut self, settings: &Settings) {
        let Phase::Head(head) = &mut self.phase else {
            return;
        };
        if head.is_waiting() {
            return;
        }
        match head.read_proxy() {
            ProxyStep::Done => {}
            ProxyStep::Partial => return,
            ProxyStep::Refused(outcome) => {
                self.events.push(Event::ProxyRefused(outcome));
                self.phase = Phase::Finished;
                return;
            }
        }
        match head.scan(settings.max_head) {
            Ok(None) => {}
            Ok(Some(len)) => self.events.push(Event::Request(head.take_request(len))),
            Err(e) => {
                head.waiting = Waiting::Refusal;
                self.events.push(Event::BadRequest(e));
            }
        }
    }

    /// Accepts the upgrade request last handed out: writes the 101 (§4.2.2) with `protocol`
    /// and the permessage-deflate parameters negotiated from `request`'s offers, then any
    /// frames the application sent while deciding. The connection is open from here; bytes
    /// that came after the head are its first frames, held until the caller resumes them
    /// ([`has_backlog`](Connection::has_backlog)).
    ///
    /// `request` must be the one parsed from that [`Request`] and validated as an upgrade.
    ///
    /// # Errors
    /// [`ActionError::NoRequest`] unless a request is waiting for its answer.
    pub fn accept<O: Output>(
        &mut self,
        now: Tick,
        request: &RequestHead<'_, '_>,
        protocol: Option<&str>,
        out: &mut O,
        shared: &Shared,
    ) -> Result<(), ActionError> {
        if !matches!(&self.phase, Phase::Head(head) if head.waiting == Waiting::Answer) {
            return Err(ActionError::NoRequest);
        }
        let Phase::Head(head) = std::mem::replace(&mut self.phase, Phase::Open { last_seen: now })
        else {
            return Err(ActionError::NoRequest);
        };
        let deflate = shared
            .settings
            .deflate
            .as_ref()
            .and_then(|config| negotiate(request.values("sec-websocket-extensions"), config));
        let extensions = deflate.map(|params| params.response_value());
        let key = request.header("sec-websocket-key").unwrap_or_default();
        let mut response = Vec::with_capacity(256);
        write_accept_response(&mut response, key, protocol, extensions.as_deref());
        out.push(&[&response, &head.sent]);
        self.opened = true;
        if let Some(params) = deflate {
            self.decoder.enable_compression();
            self.deflate = Some(Box::new(crate::contexts::ConnDeflate::new(params)));
        }
        let Head { buf, start, .. } = *head;
        self.hold(buf, start);
        Ok(())
    }

    /// Answers the request last handed out (or, before any, refuses the connection) with an
    /// HTTP `response` given as parts. With `keep_alive` (and a request to answer), the next
    /// request may follow, with a fresh handshake deadline; otherwise the connection lingers:
    /// the caller sends FIN once the answer is out.
    ///
    /// # Errors
    /// [`ActionError::NoRequest`] once the request phase is over.
    pub fn respond<O: Output>(
        &mut self,
        now: Tick,
        response: &[&[u8]],
        keep_alive: bool,
        out: &mut O,
        shared: &Shared,
    ) -> Result<(), ActionError> {
        let Phase::Head(head) = &mut self.phase else {
            return Err(ActionError::NoRequest);
        };
        out.push(response);
        if keep_alive && head.waiting == Waiting::Answer {
            head.next_request(now.after(shared.settings.handshake_timeout));
            self.advance_head(&shared.settings);
        } else {
            self.linger(now, shared.settings.close_timeout);
        }
        Ok(())
    }

    /// Refuses: writes `response` (an HTTP error answer) and lingers; frames the application
    /// sent while deciding are dropped. Also answers [`Event::BadRequest`], and refuses a
    /// connection before any request (e.g. a 503 at accept time).
    ///
    /// # Errors
    /// [`ActionError::NoRequest`] once the request phase is over.
    pub fn reject<O: Output>(
        &mut self,
        now: Tick,
        response: &[&[u8]],
        out: &mut O,
        shared: &Shared,
    ) -> Result<(), ActionError> {
        self.respond(now, response, false, out, shared)
    }

    /// While an upgrade is being decided: keeps a frame to send right after the 101.
    /// False when no request is waiting for its answer.
    pub(super) fn send_while_deciding(&mut self, opcode: crate::OpCode, payload: &[u8]) -> bool {
        match &mut self.phase {
            Phase::Head(head) if head.waiting == Waiting::Answer => {
                write_frame(&mut head.sent, opcode, false, &[payload]);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{client_frame, upgrade_request, Harness, Seen};
    use super::super::{ActionError, Event, ProxyPolicy, Settings};
    use crate::handshake::HandshakeError;
    use crate::OpCode;

    const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    fn requests(h: &mut Harness) -> Vec<Vec<u8>> {
        h.take_seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Event(Event::Request(request)) => Some(request.head),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_request_split_anywhere_is_handed_out_once_complete() {
        let request = upgrade_request("");
        for cut in 1..request.len() {
            let mut h = Harness::new(Settings::default());
            h.feed(&request[..cut]);
            assert_eq!(requests(&mut h), Vec::<Vec<u8>>::new(), "cut {cut}");
            h.feed(&request[cut..]);
            assert_eq!(requests(&mut h), vec![request.clone()], "cut {cut}");
        }
    }

    #[test]
    fn pipelined_requests_are_handed_out_one_at_a_time() {
        let mut h = Harness::new(Settings::default());
        h.feed(GET.repeat(3).as_bytes());
        assert_eq!(requests(&mut h), vec![GET.as_bytes().to_vec()]);
        assert!(
            !h.conn.wants_read(),
            "nothing more is read until it is answered"
        );
        assert!(
            h.conn.memory() >= 2 * GET.len(),
            "the held requests are counted"
        );
        // The deadline moves with each answer: the next request gets the same time.
        h.advance(Duration::from_secs(9));
        h.respond(OK, true).unwrap();
        assert_eq!(
            h.conn.poll_timeout(&h.shared),
            Some(h.now.after(Duration::from_secs(10)))
        );
        assert_eq!(requests(&mut h), vec![GET.as_bytes().to_vec()]);
        h.respond(OK, true).unwrap();
        assert_eq!(requests(&mut h), vec![GET.as_bytes().to_vec()]);
        h.respond(OK, true).unwrap();
        assert_eq!(requests(&mut h), Vec::<Vec<u8>>::new());
        assert!(h.conn.wants_read());
        assert_eq!(
            h.conn.memory(),
            0,
            "an idle keep-alive connection holds no buffer"
        );
        assert_eq!(h.http(), OK.repeat(3));
    }

    #[test]
    fn a_request_read_while_another_is_out_waits_for_the_answer() {
        let mut h = Harness::new(Settings::default());
        h.feed(GET.as_bytes());
        // A reactor that reads while the first request is out (it should not).
        h.feed(GET.as_bytes());
        assert_eq!(requests(&mut h).len(), 1);
        h.respond(OK, true).unwrap();
        assert_eq!(
            requests(&mut h).len(),
            1,
            "the second, once the first is answered"
        );
    }

    #[test]
    fn an_answer_without_keep_alive_ends_the_connection() {
        let mut h = Harness::new(Settings::default());
        h.feed(GET.repeat(2).as_bytes());
        let _ = requests(&mut h);
        h.respond(OK, false).unwrap();
        assert_eq!(
            requests(&mut h),
            Vec::<Vec<u8>>::new(),
            "the second is never read"
        );
        assert!(h.conn.poll_fin(true));
        assert_eq!(h.respond(OK, true), Err(ActionError::NoRequest));
        // A half-close right after the request: the answer still goes out, then FIN.
        let mut h = Harness::new(Settings::default());
        h.feed(GET.as_bytes());
        let _ = requests(&mut h);
        h.respond(OK, true).unwrap();
        h.conn.handle_eof(h.now, false, &h.shared);
        assert!(!h.conn.is_finished());
        assert!(h.conn.poll_fin(true));
        assert!(h.conn.is_finished());
    }

    #[test]
    fn a_head_over_max_head_is_431() {
        let settings = Settings {
            max_head: 64,
            ..Settings::default()
        };
        let mut h = Harness::new(settings.clone());
        h.feed(&[b'a'; 65]);
        assert_eq!(
            h.events(),
            vec![Event::BadRequest(HandshakeError::HeadTooLarge)]
        );
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
        assert!(!h.conn.wants_read());
        h.conn
            .reject(h.now, &[b"HTTP/1.1 431 x\r\n\r\n"], &mut h.out, &h.shared)
            .unwrap();
        assert!(h.conn.poll_fin(true));
        // A complete head longer than the limit, in one read.
        let mut h = Harness::new(settings);
        h.feed(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(60)).as_bytes());
        assert_eq!(
            h.events(),
            vec![Event::BadRequest(HandshakeError::HeadTooLarge)]
        );
    }

    #[test]
    fn no_complete_request_within_the_handshake_timeout() {
        let mut h = Harness::new(Settings::default());
        h.feed(b"GET / HTTP/1.1\r\n");
        h.advance(Duration::from_millis(9_999));
        assert!(!h.conn.is_finished());
        h.run_to_deadline();
        assert!(h.conn.is_finished());
        assert_eq!(h.events(), vec![Event::HandshakeTimeout]);
        assert!(h.out.is_empty(), "dropped without an answer");
    }

    #[test]
    fn frames_sent_while_deciding_follow_the_101() {
        let mut h = Harness::new(Settings::default());
        h.feed(&upgrade_request(""));
        h.send_text("welcome").unwrap();
        assert!(h.out.is_empty(), "nothing before the 101");
        h.accept().unwrap();
        let end = h.out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (head, frame) = h.out.split_at(end);
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(frame, [&[0x81, 7][..], b"welcome"].concat());
        // Accepted once only.
        let request = upgrade_request("");
        let mut headers = [crate::handshake::EMPTY_HEADER; 16];
        let head = crate::handshake::RequestHead::parse(&request, &mut headers).unwrap();
        assert_eq!(
            h.conn.accept(h.now, &head, None, &mut h.out, &h.shared),
            Err(ActionError::NoRequest)
        );
    }

    #[test]
    fn a_refusal_drops_what_was_sent_while_deciding() {
        let mut h = Harness::new(Settings::default());
        h.feed(&upgrade_request(""));
        h.send_text("never seen").unwrap();
        h.conn
            .reject(
                h.now,
                &[b"HTTP/1.1 403 Forbidden\r\n\r\n"],
                &mut h.out,
                &h.shared,
            )
            .unwrap();
        assert_eq!(h.http(), "HTTP/1.1 403 Forbidden\r\n\r\n");
        assert_eq!(h.send_text("x"), Err(ActionError::NotOpen));
        assert!(h.conn.poll_fin(true));
        let events = h.events();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Closed(_))),
            "never opened: no Closed"
        );
    }

    #[test]
    fn sending_needs_a_request_being_decided_or_an_open_connection() {
        let mut h = Harness::new(Settings::default());
        assert_eq!(h.send_text("too early"), Err(ActionError::NotOpen));
        // Refused before any request (e.g. 503 at accept time).
        h.conn
            .reject(h.now, &[b"HTTP/1.1 503 x\r\n\r\n"], &mut h.out, &h.shared)
            .unwrap();
        assert!(h.conn.poll_fin(true));
        assert_eq!(h.send_text("too late"), Err(ActionError::NotOpen));
    }

    #[test]
    fn a_trusted_proxy_header_gives_the_client_address() {
        let policy = ProxyPolicy {
            required: true,
            trusted: true,
        };
        let mut h = Harness::with_proxy(Settings::default(), Some(policy));
        let mut bytes = b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n".to_vec();
        bytes.extend(GET.as_bytes());
        h.feed(&bytes[..10]);
        assert_eq!(h.events(), vec![]);
        h.feed(&bytes[10..]);
        let request = h.take_request();
        assert_eq!(request.head, GET.as_bytes());
        assert_eq!(request.client, Some("192.0.2.1:5000".parse().unwrap()));
    }

    #[test]
    fn proxy_headers_refused_end_the_connection_silently() {
        let header = b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n";
        let untrusted = ProxyPolicy {
            required: false,
            trusted: false,
        };
        let required = ProxyPolicy {
            required: true,
            trusted: true,
        };
        let cases: [(ProxyPolicy, &[u8]); 3] = [
            (untrusted, header),
            (required, GET.as_bytes()),
            (required, b"PROXY TCP4 nonsense\r\n"),
        ];
        for (policy, bytes) in cases {
            let mut h = Harness::with_proxy(Settings::default(), Some(policy));
            h.feed(bytes);
            assert!(h.conn.is_finished(), "{policy:?}");
            assert!(h.out.is_empty());
            assert!(
                matches!(h.events()[..], [Event::ProxyRefused(_)]),
                "{policy:?}"
            );
        }
        // Optional and absent: a plain request.
        let mut h = Harness::with_proxy(Settings::default(), Some(untrusted));
        h.feed(GET.as_bytes());
        assert_eq!(h.take_request().client, None);
    }

    #[test]
    fn bytes_while_a_request_is_out_wait_their_turn() {
        let mut h = Harness::new(Settings::default());
        h.feed(&upgrade_request(""));
        // A reactor that reads anyway: the frame waits in the head buffer.
        h.feed(&client_frame(OpCode::Text, b"queued"));
        assert!(matches!(h.seen[..], [Seen::Event(Event::Request(_))]));
        h.accept().unwrap();
        assert_eq!(h.take_seen(), vec![Seen::Text("queued".to_owned(), false)]);
    }
}
