//! Output: what the application sends goes through each connection's protocol connection
//! into this turn's outbox (see [`crate::out`]); the outbox is written once per connection
//! per turn (and once more for each large message a visit lends out by move, up to
//! `LARGE_ECHOES_PER_VISIT` per visit: see `Reactor::on_readable`), and only what the socket
//! refuses is queued on the connection.
//! After a write, a connection under its low-water mark reads again and the application
//! hears `on_drain`.

use log::debug;
use wsloop_proto::{CloseCode, MessageKind};

use crate::app::{ConnId, Context, Handler, Message};
use crate::out::Door;

use super::{Core, READ_BUF};

impl Core {
    /// Sends `msg` to `to` if it is open, or if its upgrade is being decided (`on_open`):
    /// then its connection keeps the frame and writes it right after the 101, or drops it if
    /// the upgrade is refused.
    pub(crate) fn send_message(&mut self, to: ConnId, msg: Message<'_>) -> bool {
        let Some(key) = self.key_of(to) else {
            return false;
        };
        let Some(entry) = self.conns.get_mut(key) else {
            return false;
        };
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        let sent = entry
            .conn
            .send(kind_of(&msg), msg.as_bytes(), &mut door, &mut self.shared)
            .is_ok();
        if sent {
            self.spend(1);
            self.stats.messages_out += 1;
        }
        sent
    }

    pub(crate) fn close_conn(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(key) = self.key_of(id) {
            self.close(key, code, reason);
        }
    }

    /// Starts the close handshake on connection `key` (its connection refuses codes that may
    /// not be sent, and a second close).
    pub(super) fn close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
        match entry
            .conn
            .close(self.tick, code, reason, &mut door, &self.shared)
        {
            Ok(()) => debug!("#{key}: closing with {code} {reason:?}"),
            Err(e) => debug!("#{key}: close with {code} not sent: {e}"),
        }
    }

    pub(crate) fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        self.key_of(id)
            .and_then(|key| self.conns.get(key))
            .map(|e| e.out.buffered_amount())
    }

    pub(super) fn on_writable<H: Handler>(&mut self, app: &mut H, key: usize) {
        if let Some(entry) = self.conns.get_mut(key) {
            entry.writable = true;
        }
        self.write_pending(app, key);
    }

    /// Writes what waits for the socket (queued bytes, TLS records) if it accepts writes.
    pub(super) fn write_pending<H: Handler>(&mut self, app: &mut H, key: usize) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        if entry.doomed || !entry.writable || !entry.has_pending_output() {
            return;
        }
        let tls = entry.tls.as_deref_mut();
        match entry
            .out
            .write(&mut self.budget, &mut entry.socket, tls, &[], &[])
        {
            Ok(n) => self.stats.bytes_out += n as u64,
            Err(e) => return self.on_transport_error(app, key, &e),
        }
        if self.after_write(key) {
            self.notify_drain(app, key);
        }
    }

    /// After output moved: notes a socket that refused, resumes reading under the low-water
    /// mark (of the memory the queue holds: `ConnOut::pressure`), and settles the connection
    /// (FIN once a lingering one has said everything). Returns whether the application is to
    /// hear `on_drain` for it.
    fn after_write(&mut self, key: usize) -> bool {
        let low_water = self.config.max_backpressure / 2;
        let Some(entry) = self.conns.get_mut(key) else {
            return false;
        };
        if entry.has_pending_output() {
            entry.writable = false;
        }
        let drained = entry.read_paused && entry.out.pressure() <= low_water;
        if drained {
            entry.read_paused = false;
            self.ready.push(key);
        }
        self.settle(key);
        drained
    }

    /// Tells the application that an open connection's send queue went under the low-water
    /// mark.
    fn notify_drain<H: Handler>(&mut self, app: &mut H, key: usize) {
        if !self.conns.get(key).is_some_and(|e| e.conn.is_open()) {
            return;
        }
        if let Some(id) = self.id_of(key) {
            app.on_drain(&mut Context { core: self }, id);
        }
    }

    /// One vectored write per connection for everything produced this turn. `on_drain` runs
    /// after every connection's write, so no queue grows while callbacks fill the next outbox.
    pub(super) fn flush_outbox<H: Handler>(&mut self, app: &mut H) {
        let mut outbox = std::mem::take(&mut self.outbox);
        // Stable: keeps each connection's output in the order it was produced.
        outbox.entries.sort_by_key(|e| e.key);
        let mut drained = Vec::new();
        for group in outbox.entries.chunk_by(|a, b| a.key == b.key) {
            let Some(key) = group.first().map(|e| e.key) else {
                continue;
            };
            let Some(entry) = self.conns.get_mut(key).filter(|e| !e.doomed) else {
                continue;
            };
            if !entry.writable {
                // Still blocked: queue behind what is waiting; WRITABLE will flush it.
                entry
                    .out
                    .queue_blocked(&mut self.budget, &outbox.bytes, group);
                self.settle(key);
                continue;
            }
            let tls = entry.tls.as_deref_mut();
            match entry.out.write(
                &mut self.budget,
                &mut entry.socket,
                tls,
                &outbox.bytes,
                group,
            ) {
                Ok(n) => self.stats.bytes_out += n as u64,
                Err(e) => {
                    self.on_transport_error(app, key, &e);
                    self.settle(key);
                    continue;
                }
            }
            if self.after_write(key) {
                drained.push(key);
            }
        }
        outbox.clear(4 * READ_BUF);
        for key in drained {
            self.notify_drain(app, key);
        }
        // Output those callbacks produced went to a fresh outbox; keep it for the next round,
        // else reuse the old buffers.
        if self.outbox.is_empty() {
            self.outbox = outbox;
        }
    }
}

/// A message's kind.
pub(super) fn kind_of(msg: &Message<'_>) -> MessageKind {
    match msg {
        Message::Text(_) => MessageKind::Text,
        Message::Binary(_) => MessageKind::Binary,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use wsloop_proto::conn::Output;

    use super::super::{Reactor, Visit};
    use crate::app::{ConnId, Context, Decision, Handler, Message, Request};
    use crate::config::Config;
    use crate::out::Door;

    /// Puts every connection in one room; publishes 100 bytes to it whenever one drains.
    #[derive(Default)]
    struct PublishOnDrain {
        drained: Vec<ConnId>,
    }

    impl Handler for PublishOnDrain {
        fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, _: &Request<'_>) -> Decision {
            ctx.subscribe(id, "room");
            Decision::Accept(None)
        }

        fn on_message(&mut self, _: &mut Context<'_>, _: ConnId, _: Message<'_>) {}

        fn on_drain(&mut self, ctx: &mut Context<'_>, id: ConnId) {
            self.drained.push(id);
            ctx.publish("room", Message::Binary(&[7; 100]));
        }
    }

    /// Accepts and upgrades one client; returns its slab key and socket.
    fn open(reactor: &mut Reactor<PublishOnDrain>) -> (usize, TcpStream) {
        let mut client = TcpStream::connect(reactor.local_addr()).unwrap();
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let before: Vec<usize> = reactor.core.conns.iter().map(|(k, _)| k).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            reactor.accept_all(false);
            let new = reactor
                .core
                .conns
                .iter()
                .map(|(k, _)| k)
                .find(|k| !before.contains(k));
            if let Some(key) = new {
                reactor.on_readable(key, Visit::Ready);
                if reactor
                    .core
                    .conns
                    .get(key)
                    .is_some_and(|e| e.conn.is_open())
                {
                    reactor.core.flush_outbox(&mut reactor.app);
                    return (key, client);
                }
            }
            assert!(Instant::now() < deadline, "no upgrade");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Output an `on_drain` callback produces while the outbox is being written stays counted
    /// as corked (and so in `buffered_amount`) until the next round writes it: the flush
    /// takes off each connection only what it wrote for it. It used to reset the count of a
    /// connection written after the callback, losing what the callback had queued for it.
    #[test]
    fn output_queued_by_on_drain_during_a_flush_stays_counted() {
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let mut reactor = Reactor::bind(config, PublishOnDrain::default()).unwrap();
        let (a, _client_a) = open(&mut reactor);
        let (b, mut client_b) = open(&mut reactor);
        assert!(a < b, "the drained connection is written first");
        // `a` was paused for backpressure; both have output this turn.
        reactor.core.conns.get_mut(a).unwrap().read_paused = true;
        for (key, byte) in [(a, b"x"), (b, b"y")] {
            let core = &mut reactor.core;
            let entry = core.conns.get_mut(key).unwrap();
            Door::new(key, &mut entry.out, &mut core.outbox).push(&[byte]);
        }
        reactor.core.flush_outbox(&mut reactor.app);
        assert_eq!(reactor.app.drained.len(), 1);
        // The publication (a 2-byte header and 100 bytes) waits in the next outbox.
        assert_eq!(
            reactor.core.conns.get(b).unwrap().out.buffered_amount(),
            102
        );
        reactor.core.flush_outbox(&mut reactor.app);
        assert!(reactor.core.conns.get(b).unwrap().out.is_empty());
        assert!(reactor.core.outbox.is_empty());
        // `b` got its own byte, then the publication.
        let mut got = Vec::new();
        client_b
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while !got.ends_with(&[7; 100]) {
            let mut buf = [0u8; 4096];
            let n = client_b.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let response_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[response_end..response_end + 3], [b'y', 0x82, 100]);
    }
}
