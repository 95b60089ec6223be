//! Large messages in the reactor: the pool of message buffers (the protocol's
//! [`BufferPool`](wsloop_proto::pool::BufferPool) in [`Core::shared`]) kept in the memory
//! budget, refilled by the buffers the output queues have finished with, and emptied when idle;
//! and the end of a lent delivery, when a message the application sent back moves into the
//! output.
//!
//! A message buffer's life: the connection takes it from the pool when a frame header declares
//! a large payload, the payload is read into it, the finished message is moved into the
//! reactor's scratch buffer and handed to the application. If the application sends it (an
//! echo), the buffer moves into the output queues ([`Lent`]) and comes back through
//! [`Returns`](crate::out::Returns) once written; otherwise the scratch buffer goes back
//! to the pool after the read. At every step one holder counts it in the budget: the
//! connection's state, a queue's footprint, or the pool's idle bytes.

use wsloop_proto::time::Tick;

use crate::out::Lent;

use super::Core;

impl Core {
    /// Moves the buffers the output queues have finished with back into the pool.
    pub(super) fn reclaim_buffers(&mut self) {
        for buffer in self.budget.returns().drain() {
            self.shared.pool.give(buffer);
        }
    }

    /// Brings the pool's idle bytes up to date in the budget.
    pub(super) fn account_pool(&mut self) {
        self.budget.account_pool(self.shared.pool.idle_bytes());
    }

    /// At the end of a turn: the returned buffers into the pool, the pool emptied if it went
    /// unused for a while (or at once when the process is over its memory budget: idle
    /// buffers go before any connection is shed), and the budget told.
    pub(super) fn tend_pool(&mut self) {
        self.reclaim_buffers();
        if self.budget.over(self.config.max_buffered) {
            self.shared.pool.release();
        } else {
            self.shared.pool.release_if_idle(self.tick);
        }
        self.account_pool();
    }

    /// Whether the process is over its memory budget, counting this turn's lent message
    /// buffers too (in no queue yet): then nothing more is read until the end of the turn
    /// has shed connections, so one turn's reads never take the process past the budget by
    /// more than what one connection's visit reads.
    pub(super) fn over_budget(&self) -> bool {
        self.budget
            .over_with(self.outbox.lent_bytes(), self.config.max_buffered)
    }

    /// When the pool's idle buffers are due to be freed (the poll timeout wakes for it).
    pub(super) fn pool_deadline(&self) -> Option<Tick> {
        self.shared.pool.next_release()
    }

    /// A lent delivery ended (the message is no longer borrowed): if the application sent it,
    /// the scratch buffer holding it moves into the output, shared by every send of it, and
    /// comes back to the pool once written; otherwise nothing happens.
    pub(super) fn end_lending(&mut self, scratch: &mut Vec<u8>) {
        let Some(lending) = self.outbox.lent_and_sent() else {
            return self.outbox.end_lending(None);
        };
        let start = lending.addr.wrapping_sub(scratch.as_ptr() as usize);
        let range = start..start.saturating_add(lending.len);
        let lent = scratch
            .get(range.clone())
            .is_some()
            .then(|| Lent::new(std::mem::take(scratch), Some(self.budget.returns())));
        self.outbox
            .end_lending(lent.as_ref().map(|lent| (lent, range)));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::super::{Reactor, Visit};
    use crate::app::{ConnId, Context, Handler, Message};
    use crate::config::Config;

    const MIB: usize = 1 << 20;

    /// Sends every message back.
    #[derive(Default)]
    struct Echo;

    impl Handler for Echo {
        fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
            ctx.send(id, msg);
        }
    }

    /// A masked binary frame of `payload` (key 0: the bytes stay as they are).
    fn client_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x82];
        match u16::try_from(payload.len()) {
            Ok(len) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&len.to_be_bytes());
            }
            Err(_) => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        frame
    }

    /// Payloads from the pool's large size on are reserved whole: the reactor's read buffer,
    /// whose size it stands for ([`crate::config::Config::settings`]).
    #[test]
    fn the_large_size_is_the_read_buffer() {
        assert_eq!(wsloop_proto::pool::LARGE, super::super::READ_BUF);
    }

    /// An echo reactor on a free loopback port, with `max_backpressure` if given; and its
    /// address.
    fn echo_reactor(max_backpressure: Option<usize>) -> (Reactor<Echo>, std::net::SocketAddr) {
        let defaults = Config::default();
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            max_backpressure: max_backpressure.unwrap_or(defaults.max_backpressure),
            ..defaults
        };
        let reactor = Reactor::bind(config, Echo).unwrap();
        let addr = reactor.local_addr();
        (reactor, addr)
    }

    /// A whole turn ([`turn`], then its end: the flush and the timers), then a short sleep
    /// that lets the client thread move.
    fn full_turn(reactor: &mut Reactor<Echo>) {
        turn(reactor);
        reactor.core.finish_turn(&mut reactor.app);
        std::thread::sleep(Duration::from_millis(1));
    }

    /// One turn of the loop for every connection: accept, read (the turn is not ended).
    fn turn(reactor: &mut Reactor<Echo>) {
        reactor.accept_all(false);
        let keys: Vec<usize> = reactor.core.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            reactor.core.on_writable(&mut reactor.app, key);
            reactor.on_readable(key, Visit::Ready);
        }
    }

    /// Opens a connection to `addr` and upgrades it (the 101 is left unread).
    fn upgraded(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        s
    }

    /// Reads from `s` until `len` bytes came after the 101's head.
    fn read_after_head(s: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|end| end + 4);
            if let Some(body) = body.filter(|&at| got.len() >= at + len) {
                return got.split_off(body);
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// The echo of a large message is queued by move (the very buffer the message was read
    /// into), and that buffer is back in the pool once written, counted in the budget; the
    /// pool lets it go once idle.
    #[test]
    fn a_large_echo_leaves_by_move_and_its_buffer_returns_to_the_pool() {
        let (mut reactor, addr) = echo_reactor(None);
        let payload: Vec<u8> = (0..2 * MIB).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let client = std::thread::spawn(move || {
            let mut s = upgraded(addr);
            s.write_all(&client_frame(&sent)).unwrap();
            // The echo: a 10-byte header and the payload.
            read_after_head(&mut s, 10 + sent.len())
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client.is_finished() {
            assert!(Instant::now() < deadline, "no echo");
            full_turn(&mut reactor);
        }
        let got = client.join().unwrap();
        assert!(got.ends_with(&payload), "the echo differs");
        // Written as soon as the visit that read it ended.
        assert_eq!(
            reactor.core.lent_writes, 1,
            "the echo was copied, not moved"
        );
        assert_eq!(
            reactor.core.shared.pool.idle_bytes(),
            2 * MIB,
            "back in the pool"
        );
        assert!(reactor.core.budget.held() >= 2 * MIB as u64, "and counted");
        // Idle for a while: let go.
        reactor.core.tick = reactor.core.tick.after(Duration::from_secs(2));
        reactor.core.finish_turn(&mut reactor.app);
        assert_eq!(reactor.core.shared.pool.idle_bytes(), 0);
        assert!(reactor.core.budget.held() < MIB as u64);
    }

    /// A client sending large messages back to back, while it reads their echoes, gets each
    /// echo written before its next message is decoded: its connection holds one message
    /// buffer at a time, the one the last echo gives back to the pool, not one for the echo
    /// still being written and a second for the message arriving behind it. The client sends
    /// the end of each message with the start of the next, so the read that completes one
    /// holds the next one's header too: decoding it at once reserved the second buffer. Each
    /// buffer ever taken is in the pool at the end: one of them.
    #[test]
    fn pipelined_large_messages_take_one_buffer_at_a_time() {
        const COUNT: usize = 3;
        const TAIL: usize = 1000;
        let (mut reactor, addr) = echo_reactor(None);
        let payloads: Vec<Vec<u8>> = (0..COUNT)
            .map(|n| (0..2 * MIB).map(|i| ((i + n) % 251) as u8).collect())
            .collect();
        let frames: Vec<u8> = payloads.iter().flat_map(|p| client_frame(p)).collect();
        let frame_len = frames.len() / COUNT;
        let client = std::thread::spawn(move || {
            let mut s = upgraded(addr);
            let mut writer = s.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                // Each write ends `TAIL` bytes short of a message's end: the server reads up
                // to there, then the end of that message and the start of the next together.
                let mut at = 0;
                for n in 1..=COUNT {
                    let to = (n * frame_len - TAIL).max(at);
                    writer.write_all(&frames[at..to]).unwrap();
                    at = to;
                    std::thread::sleep(Duration::from_millis(200));
                }
                writer.write_all(&frames[at..]).unwrap();
            });
            let got = read_after_head(&mut s, COUNT * (10 + 2 * MIB));
            sender.join().unwrap();
            got
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.is_finished() {
            assert!(Instant::now() < deadline, "no echoes");
            full_turn(&mut reactor);
        }
        let got = client.join().unwrap();
        for (n, echo) in got.chunks(10 + 2 * MIB).enumerate() {
            assert!(echo[10..] == payloads[n][..], "echo {n} differs");
        }
        assert_eq!(
            reactor.core.shared.pool.idle_bytes(),
            2 * MIB,
            "one message buffer, reused for every message"
        );
    }

    /// A visit that wrote a large echo whole reads on from the same connection, up to
    /// `LARGE_ECHOES_PER_VISIT` echoes; the rest waits for the next turn on the ready list.
    /// Each echo takes the connection over its backpressure limit and pauses reading, so
    /// without reading on, every message would wait a turn. (Large here: 8 KiB, so the
    /// three messages fit in the socket before the visit.)
    #[test]
    fn a_visit_reads_on_after_a_large_echo_written_whole() {
        const COUNT: usize = 3;
        const SIZE: usize = 16 * 1024;
        let (mut reactor, addr) = echo_reactor(Some(SIZE / 2));
        let settings = wsloop_proto::conn::Settings {
            large_payload: SIZE / 2,
            ..reactor.core.config.settings()
        };
        reactor.core.shared = wsloop_proto::conn::Shared::new(settings);
        let payloads: Vec<Vec<u8>> = (0..COUNT)
            .map(|n| (0..SIZE).map(|i| ((i + n) % 253) as u8).collect())
            .collect();
        let frames: Vec<u8> = payloads.iter().flat_map(|p| client_frame(p)).collect();
        let mut s = upgraded(addr);
        reactor.accept_all(false);
        let (key, _) = reactor.core.conns.iter().next().unwrap();
        // The request first (its 101 leaves at the end of the turn), then every message.
        reactor.on_readable(key, Visit::Ready);
        reactor.core.finish_turn(&mut reactor.app);
        s.write_all(&frames).unwrap();
        let arrived = Instant::now() + Duration::from_secs(10);
        let mut peek = vec![0; 2 * frames.len()];
        while reactor.core.conns[key].socket.peek(&mut peek).unwrap_or(0) < frames.len() {
            assert!(Instant::now() < arrived, "the messages did not arrive");
            std::thread::sleep(Duration::from_millis(5));
        }

        reactor.core.ready.clear();
        reactor.on_readable(key, Visit::Ready);
        let read_on = super::super::LARGE_ECHOES_PER_VISIT;
        assert!(read_on > 1, "a visit reads on after a large echo");
        assert_eq!(
            reactor.core.lent_writes, read_on,
            "echoes written in one visit"
        );
        assert_eq!(
            reactor.core.ready,
            [key],
            "the last message waits for the next turn"
        );

        let got = std::thread::spawn(move || read_after_head(&mut s, COUNT * (4 + SIZE)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !got.is_finished() {
            assert!(Instant::now() < deadline, "no echoes");
            full_turn(&mut reactor);
        }
        let got = got.join().unwrap();
        for (n, echo) in got.chunks(4 + SIZE).enumerate() {
            assert!(echo[4..] == payloads[n][..], "echo {n} differs");
        }
        assert_eq!(reactor.core.lent_writes, COUNT);
        assert_eq!(
            reactor.core.shared.pool.idle_bytes(),
            SIZE,
            "one message buffer, reused for every message"
        );
    }

    /// The read after a large payload was read into place takes only the first
    /// `NARROW_READ` bytes of the shared buffer (the next header, and what comes with it), so
    /// a client that sends only large messages never has the rest of that buffer touched;
    /// once such a read fills the window, reads take the whole buffer again.
    #[test]
    fn reads_go_narrow_after_a_large_payload_and_wide_once_the_window_fills() {
        let (mut reactor, addr) = echo_reactor(None);
        let large: Vec<u8> = (0..MIB).map(|i| (i % 241) as u8).collect();
        let small = [5u8; 1000];
        let smalls: Vec<u8> = (0..64).flat_map(|_| client_frame(&small)).collect();
        assert!(smalls.len() > 2 * super::super::NARROW_READ);
        let large_sent = large.clone();
        let (echoed, large_echoed) = std::sync::mpsc::channel();
        let (go, go_on) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let mut s = upgraded(addr);
            s.write_all(&client_frame(&large_sent)).unwrap();
            let echo = read_after_head(&mut s, 10 + MIB);
            echoed.send(echo).unwrap();
            go_on.recv().unwrap();
            s.write_all(&smalls).unwrap();
            let mut got = vec![0; 64 * (4 + small.len())];
            s.read_exact(&mut got).unwrap();
            got
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let narrow =
            |reactor: &Reactor<Echo>| reactor.core.conns.iter().next().map(|(_, e)| e.narrow_read);
        let echo = loop {
            assert!(Instant::now() < deadline, "no echo");
            full_turn(&mut reactor);
            if let Ok(echo) = large_echoed.try_recv() {
                break echo;
            }
        };
        assert!(echo[10..] == large[..], "the large echo differs");
        assert_eq!(narrow(&reactor), Some(true), "narrow after the payload");
        go.send(()).unwrap();
        while !client.is_finished() {
            assert!(Instant::now() < deadline, "no small echoes");
            full_turn(&mut reactor);
        }
        let got = client.join().unwrap();
        for echo in got.chunks(4 + small.len()) {
            assert_eq!(echo[..4], [0x82, 126, 0x03, 0xe8]);
            assert!(echo[4..] == small[..], "a small echo differs");
        }
        assert_eq!(narrow(&reactor), Some(false), "wide once a window filled");
    }

    /// Over its backpressure limit, a connection stops decoding too, not only reading: the
    /// header of a large message read together with a small one whose echo took the output
    /// over the limit waits, undecoded, until that echo is written; decoded at once, it would
    /// reserve the large message's buffer beside the queued echo.
    #[test]
    fn a_large_header_behind_an_echo_over_the_limit_waits_for_the_drain() {
        let (mut reactor, addr) = echo_reactor(Some(1024));
        let small = vec![3u8; 4096];
        let large: Vec<u8> = (0..MIB).map(|i| (i % 249) as u8).collect();
        let (small_sent, large_sent) = (small.clone(), large.clone());
        let (wrote, written) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            let mut s = upgraded(addr);
            let large_frame = client_frame(&large_sent);
            let (start, rest) = large_frame.split_at(100_000);
            s.write_all(&[client_frame(&small_sent).as_slice(), start].concat())
                .unwrap();
            wrote.send(()).unwrap();
            let echo = read_after_head(&mut s, 4 + small_sent.len());
            s.write_all(rest).unwrap();
            let mut got = vec![0; 10 + large_sent.len()];
            s.read_exact(&mut got).unwrap();
            (echo, got)
        });
        written.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // One visit reads the request, the small message and the start of the large one.
        turn(&mut reactor);
        let entry = reactor.core.conns.iter().next().unwrap().1;
        assert!(entry.read_paused, "paused by the echo");
        assert!(
            entry.conn.has_backlog(),
            "the large message's start held back"
        );
        assert!(entry.state_bytes() < MIB, "its buffer not reserved yet");
        let deadline = Instant::now() + Duration::from_secs(30);
        reactor.core.finish_turn(&mut reactor.app);
        while !client.is_finished() {
            assert!(Instant::now() < deadline, "no echoes");
            full_turn(&mut reactor);
        }
        let (echo, got) = client.join().unwrap();
        assert!(echo[4..] == small[..], "the small echo differs");
        assert!(got[10..] == large[..], "the large echo differs");
    }
}
