//! Frames out: what a connection sends (messages, compressed or not, and close frames) goes
//! into this turn's outbox; the outbox is written once per connection per turn, and only what
//! the socket refuses is queued on the connection.

use std::io;

use log::debug;

use crate::protocol::close::truncate_reason;
use crate::protocol::frame::{data_header, server_header, OpCode, MAX_HEADER_LEN};
use crate::protocol::CloseCode;
use crate::server::app::{ConnId, Context, Handler, Message};
use crate::server::connection::{Connection, Phase};

use super::{opcode_of, Core, READ_BUF};

impl Core {
    pub(super) fn queue_frame(&mut self, key: usize, opcode: OpCode, parts: &[&[u8]]) {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, len, &mut header);
        let mut all: [&[u8]; 3] = [header.get(..n).unwrap_or_default(), &[], &[]];
        for (slot, part) in all.iter_mut().skip(1).zip(parts) {
            *slot = part;
        }
        self.queue(key, &all);
    }

    pub(super) fn queue_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        self.stats.close_sent.add(code);
        let reason = truncate_reason(reason);
        self.queue_frame(
            key,
            OpCode::Close,
            &[&code.0.to_be_bytes(), reason.as_bytes()],
        );
    }

    /// Corks bytes for `key` until the end of the turn.
    pub(super) fn queue(&mut self, key: usize, parts: &[&[u8]]) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.corked += parts.iter().map(|p| p.len()).sum::<usize>();
            self.outbox.push_bytes(key, parts);
        }
    }

    pub(crate) fn send_message(&mut self, to: ConnId, msg: Message<'_>) -> bool {
        let Some(key) = self.key_of(to) else {
            return false;
        };
        if !self.conns.get(key).is_some_and(Connection::is_open) {
            return false;
        }
        self.spend(1);
        self.queue_message(key, &msg);
        self.stats.messages_out += 1;
        true
    }

    /// Corks one data frame for `key`, compressed when deflate was negotiated.
    pub(super) fn queue_message(&mut self, key: usize, msg: &Message<'_>) {
        let opcode = opcode_of(msg);
        let payload = msg.as_bytes();
        if let Some(compressed) = self.compress_for(key, payload) {
            let mut header = [0u8; MAX_HEADER_LEN];
            let n = data_header(opcode, true, compressed.len(), &mut header);
            self.queue(key, &[header.get(..n).unwrap_or_default(), &compressed]);
            self.deflate_buf = compressed;
        } else {
            self.queue_frame(key, opcode, &[payload]);
        }
    }

    /// `payload` compressed for connection `key`, when it negotiated deflate and the message is
    /// long enough to be worth it. The buffer is the reactor's scratch: give it back after use.
    pub(super) fn compress_for(&mut self, key: usize, payload: &[u8]) -> Option<Vec<u8>> {
        let min_size = self.config.deflate.as_ref()?.min_size;
        if payload.len() < min_size {
            return None;
        }
        let deflate = self.conns.get_mut(key)?.deflate.as_mut()?;
        let mut out = std::mem::take(&mut self.deflate_buf);
        out.clear();
        self.contexts.compress(deflate, payload, &mut out);
        Some(out)
    }

    pub(crate) fn close_conn(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let Some(key) = self.key_of(id) else {
            return;
        };
        self.start_close(key, code, reason);
    }

    /// Server-initiated close: send ours, wait for theirs up to the close timeout.
    pub(super) fn start_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        if !self.conns.get(key).is_some_and(Connection::is_open) {
            return;
        }
        debug!("#{key}: closing with {code} {reason:?}");
        self.queue_close(key, code, reason);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::CloseSent;
            conn.close_code = Some(code);
        }
        self.arm(key, self.tick.after(self.config.close_timeout));
    }

    pub(crate) fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        self.key_of(id)
            .and_then(|key| self.conns.get(key))
            .map(Connection::buffered_amount)
    }

    pub(super) fn on_writable<H: Handler>(&mut self, app: &mut H, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.writable = true;
        }
        self.write_pending(app, key);
    }

    /// Writes what waits for the socket (queued bytes, TLS records) if it accepts writes.
    pub(super) fn write_pending<H: Handler>(&mut self, app: &mut H, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.is_dead() || !conn.writable || !conn.has_pending_output() {
            return;
        }
        match conn.write_out(&[], &[]) {
            Ok(n) => self.stats.bytes_out += n as u64,
            Err(e) => return self.socket_error(key, &e),
        }
        self.reaccount(key);
        self.after_write(app, key);
    }

    /// After output moved: note a blocked socket, resume reading under the low-water mark and
    /// tell the application, send FIN once a lingering connection has said everything.
    pub(super) fn after_write<H: Handler>(&mut self, app: &mut H, key: usize) {
        if self.settle(key) {
            self.notify_drain(app, key);
        }
    }

    /// [`Core::after_write`] without the callback: returns whether the application is to hear
    /// `on_drain` for `key`.
    fn settle(&mut self, key: usize) -> bool {
        let low_water = self.config.max_backpressure / 2;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.has_pending_output() {
            conn.writable = false;
        }
        let drained = conn.read_paused && conn.out.len() <= low_water;
        if drained {
            conn.read_paused = false;
            self.ready.push(key);
        }
        conn.finish_when_drained();
        if conn.peer_eof && conn.fin_sent {
            self.kill(key); // Both directions are done.
            return false;
        }
        drained
    }

    /// Tells the application that an open connection's send queue went under the low-water
    /// mark.
    fn notify_drain<H: Handler>(&mut self, app: &mut H, key: usize) {
        if !self.conns.get(key).is_some_and(Connection::is_open) {
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
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // What this outbox held for it; anything corked since belongs to the next one.
            let taken: usize = group.iter().map(|e| e.byte_count(&outbox.bytes)).sum();
            conn.corked = conn.corked.saturating_sub(taken);
            if conn.is_dead() {
                continue;
            }
            if !conn.writable {
                // Still blocked: queue behind what is waiting; WRITABLE will flush it.
                let mut nowhere = Blocked;
                let _ = conn.out.write_with(&mut nowhere, &outbox.bytes, group);
                self.reaccount(key);
                continue;
            }
            match conn.write_out(&outbox.bytes, group) {
                Ok(n) => self.stats.bytes_out += n as u64,
                Err(e) => {
                    self.socket_error(key, &e);
                    continue;
                }
            }
            self.reaccount(key);
            if self.settle(key) {
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

/// A writer that always would block: queues entries without touching a socket.
struct Blocked;

impl io::Write for Blocked {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::super::{Reactor, Visit};
    use crate::server::app::{ConnId, Context, Decision, Handler, Message, Request};
    use crate::server::config::Config;

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
                if reactor.core.conns.get(key).is_some_and(|c| c.is_open()) {
                    reactor.core.flush_outbox(&mut reactor.app);
                    return (key, client);
                }
            }
            assert!(Instant::now() < deadline, "no upgrade");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Output an `on_drain` callback produces while the outbox is being written stays counted
    /// in `corked` (and so in `buffered_amount`) until the next round writes it: the flush
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
        reactor.core.queue(a, &[b"x"]);
        reactor.core.queue(b, &[b"y"]);
        reactor.core.flush_outbox(&mut reactor.app);
        assert_eq!(reactor.app.drained.len(), 1);
        // The publication (a 2-byte header and 100 bytes) waits in the next outbox.
        assert_eq!(reactor.core.conns.get(b).unwrap().corked, 102);
        assert_eq!(reactor.core.conns.get(b).unwrap().buffered_amount(), 102);
        reactor.core.flush_outbox(&mut reactor.app);
        assert_eq!(reactor.core.conns.get(b).unwrap().corked, 0);
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
