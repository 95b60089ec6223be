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

    /// After output moved: note a blocked socket, resume reading under the low-water mark,
    /// tell the application, and send FIN once a lingering connection has said everything.
    pub(super) fn after_write<H: Handler>(&mut self, app: &mut H, key: usize) {
        let low_water = self.config.max_backpressure / 2;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has_pending_output() {
            conn.writable = false;
        }
        if conn.read_paused && conn.out.len() <= low_water {
            conn.read_paused = false;
            self.ready.push(key);
            if conn.is_open() {
                let id = ConnId {
                    key: key as u32,
                    serial: conn.serial,
                };
                app.on_drain(&mut Context { core: self }, id);
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.finish_when_drained();
            if conn.peer_eof && conn.fin_sent {
                self.kill(key); // Both directions are done.
            }
        }
    }

    /// One vectored write per connection for everything produced this turn.
    pub(super) fn flush_outbox<H: Handler>(&mut self, app: &mut H) {
        let mut outbox = std::mem::take(&mut self.outbox);
        // Stable: keeps each connection's output in the order it was produced.
        outbox.entries.sort_by_key(|e| e.key);
        for group in outbox.entries.chunk_by(|a, b| a.key == b.key) {
            let Some(key) = group.first().map(|e| e.key) else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.corked = 0;
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
            self.after_write(app, key);
        }
        outbox.entries.clear();
        outbox.bytes.clear();
        if outbox.bytes.capacity() > 4 * READ_BUF {
            outbox.bytes = Vec::new();
        }
        // Output produced by callbacks during this flush (on_drain) went to a fresh outbox;
        // keep it for the next round, else reuse the old buffers.
        let produced = std::mem::replace(&mut self.outbox, outbox);
        if !produced.is_empty() {
            self.outbox = produced;
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
