//! Connection lifetime: timers (handshake deadline, keepalive and idle, close wait),
//! lingering after the close handshake, the peer going away, shutdown, and removal at the end
//! of the turn.

use std::io;
use std::time::Duration;

use log::debug;

use crate::protocol::frame::OpCode;
use crate::protocol::CloseCode;
use crate::server::app::Handler;
use crate::server::connection::Phase;

use super::Core;

impl Core {
    /// Nothing more to say: flush, FIN, discard input until EOF or the close timeout.
    pub(super) fn linger(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Linger;
            // Nothing left to write (e.g. the peer answered our close): FIN now. Otherwise
            // `after_write` sends it once the queue drains.
            conn.finish_when_drained();
        }
        self.arm(key, self.tick.after(self.config.close_timeout));
    }

    pub(crate) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shutdown_deadline = Some(self.now + self.config.drain_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Open) => {
                    self.start_close(key, CloseCode::GOING_AWAY, "server shutdown")
                }
                Some(Phase::Head(_)) => self.kill(key),
                _ => {}
            }
        }
    }

    pub(super) fn peer_closed(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| !c.is_dead()) else {
            return;
        };
        if conn.is_open() {
            debug!("#{key}: peer closed TCP without a close frame");
            conn.close_code.get_or_insert(CloseCode::ABNORMAL);
        }
        let pending = conn.corked != 0 || conn.has_pending_output();
        if !pending || conn.fin_sent {
            self.kill(key);
            return;
        }
        // A client may half-close right after its last message (or HTTP request): what is
        // queued for it goes out first; `after_write` removes the connection once FIN is sent.
        conn.peer_eof = true;
        if !matches!(conn.phase, Phase::Linger) {
            self.linger(key);
        }
    }

    pub(super) fn socket_error(&mut self, key: usize, e: &io::Error) {
        debug!("#{key}: socket error: {e}");
        self.kill(key);
    }

    /// Marks a connection for removal at the end of the turn.
    pub(super) fn kill(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.is_dead() {
                conn.phase = Phase::Dead;
                conn.out.clear();
                self.doomed.push(key);
                self.reaccount(key);
            }
        }
    }

    pub(super) fn fire_timers<H: Handler>(&mut self, app: &mut H) {
        while let Some((_, key, serial)) = self.resume.pop_due(self.tick) {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.serial == serial) else {
                continue;
            };
            if let Some(rate) = conn.rate.as_mut().filter(|r| r.paused) {
                rate.paused = false;
                self.ready.push(key);
            }
        }
        while let Some((key, serial)) = self.timers.pop_due(self.tick) {
            let Some(conn) = self.conns.get(key).filter(|c| c.serial == serial) else {
                continue; // Gone since it was armed.
            };
            match conn.phase {
                Phase::Head(_) => {
                    debug!("#{key}: handshake timeout");
                    self.kill(key);
                }
                Phase::Open => self.keepalive(key),
                Phase::CloseSent | Phase::Linger => {
                    debug!("#{key}: close timeout");
                    self.kill(key);
                }
                Phase::Dead => {}
            }
        }
        let _ = app;
    }

    /// First deadline of an open connection.
    pub(super) fn arm_idle(&mut self, key: usize) {
        let first = [self.config.ping_interval, self.config.idle_timeout]
            .into_iter()
            .flatten()
            .min();
        if let Some(after) = first {
            self.arm(key, self.tick.after(after));
        }
    }

    /// An open connection's timer: ping after `ping_interval` of silence, drop it after
    /// `idle_timeout` of silence.
    pub(super) fn keepalive(&mut self, key: usize) {
        let (ping, idle) = (self.config.ping_interval, self.config.idle_timeout);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let silent = self.tick.since(conn.last_seen);
        if idle.is_some_and(|idle| silent >= idle) {
            debug!("#{key}: no traffic for {silent:?}: dropping the dead peer (1006)");
            self.stats.idle_timeouts += 1;
            conn.close_code = Some(CloseCode::ABNORMAL);
            self.kill(key);
            return;
        }
        if ping.is_some_and(|ping| silent >= ping) && !conn.ping_sent {
            conn.ping_sent = true;
            let sent = self
                .now
                .saturating_duration_since(self.clock_start())
                .as_micros() as u64;
            self.queue_frame(key, OpCode::Ping, &[&sent.to_be_bytes()]);
        }
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let next_ping = ping
            .filter(|_| !conn.ping_sent)
            .map(|p| conn.last_seen.after(p));
        let next_idle = idle.map(|i| conn.last_seen.after(i));
        let next = [next_ping, next_idle].into_iter().flatten().min();
        if let Some(next) = next {
            let next = if next <= self.tick {
                // Ping sent and no idle limit configured: check again one interval later.
                self.tick.after(ping.unwrap_or(Duration::from_secs(30)))
            } else {
                next
            };
            self.arm(key, next);
        }
    }

    /// Ends the turn: remove dead connections (telling the application), then write every
    /// connection's output, until neither produces more work.
    pub(super) fn finish_turn<H: Handler>(&mut self, app: &mut H) {
        if self.over_budget() {
            self.shed();
        }
        for _ in 0..4 {
            self.remove_doomed(app);
            if self.outbox.is_empty() {
                break;
            }
            self.flush_outbox(app);
        }
    }

    pub(super) fn remove_doomed<H: Handler>(&mut self, app: &mut H) {
        while let Some(key) = self.doomed.pop() {
            let code = self
                .conns
                .get(key)
                .and_then(|c| c.close_code)
                .unwrap_or(CloseCode::ABNORMAL);
            self.notify_close(app, key, code, "");
            if let Some(conn) = self.conns.try_remove(key) {
                self.stats.open -= 1;
                self.count_buffered(conn.accounted, 0);
                self.count_out(key);
                self.leave_rooms(key);
            }
        }
    }
}
