//! A connection's life as the reactor sees it: after each piece of work on a connection it is
//! settled in one place ([`Core::settle`]: its FIN, its one deadline, its state in the memory
//! budget, removal once finished); timers hand the connection its time; shutdown, shedding
//! under the memory budget, and removal at the end of the turn.

use log::warn;

use crate::app::Handler;
use crate::out::Door;

use super::Core;

impl Core {
    /// After anything happened to connection `key`: our FIN once a lingering connection has
    /// said everything, its one deadline from its connection, its protocol and TLS state (and
    /// its path) counted in the budget, and, once finished, its removal at the end of the
    /// turn.
    pub(super) fn settle(&mut self, key: usize) {
        let Some(entry) = self.conns.get_mut(key).filter(|e| !e.doomed) else {
            return;
        };
        entry.fin_when_flushed();
        if entry.conn.is_finished() {
            entry.doomed = true;
            self.doomed.push(key);
            self.timers.disarm(key);
            return;
        }
        let state = entry.state_bytes() + self.paths.len_of(entry.facts.path);
        entry.out.account_state(&mut self.budget, state);
        match entry.conn.poll_timeout(&self.shared) {
            Some(at) => self.timers.arm(key, at),
            None => self.timers.disarm(key),
        }
    }

    /// Hands each connection whose deadline passed its time: handshake timeout, keepalive
    /// ping, idle limit, close wait, the end of a rate pause (which brings it back to be read).
    pub(super) fn fire_timers<H: Handler>(&mut self, app: &mut H) {
        while let Some(key) = self.timers.pop_due(self.tick) {
            let Some(entry) = self.conns.get_mut(key).filter(|e| !e.doomed) else {
                continue; // Gone since it was armed.
            };
            let reading = entry.conn.wants_read();
            let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
            entry
                .conn
                .handle_timeout(self.tick, &mut door, &self.shared);
            if (!reading && entry.conn.wants_read()) || entry.conn.has_backlog() {
                self.ready.push(key); // A rate pause ended: read what waited.
            }
            self.dispatch_events(app, key);
            self.settle(key);
        }
    }

    pub(crate) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shutdown_deadline = Some(self.now + self.config.drain_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(entry) = self.conns.get_mut(key) {
                let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
                entry.conn.shutdown(self.tick, &mut door, &self.shared);
            }
            self.settle(key);
        }
    }

    /// Connections not done yet (see [`wsloop_proto::Connection::is_done`]): a graceful
    /// shutdown ends when there are none, without waiting for the FINs of peers that keep
    /// their sockets open after the close handshake.
    pub(super) fn not_done(&self) -> usize {
        self.conns
            .iter()
            .filter(|(_, entry)| !entry.conn.is_done())
            .count()
    }

    /// Ends the turn: tend the pool of message buffers (emptied first when over the memory
    /// budget), shed over the budget, remove finished connections (telling the application),
    /// then write every connection's output, until neither produces more work; the buffers
    /// written go back to the pool.
    pub(super) fn finish_turn<H: Handler>(&mut self, app: &mut H) {
        self.tend_pool();
        if self.budget.over(self.config.max_buffered) {
            self.shed(app);
        }
        for _ in 0..4 {
            self.remove_doomed(app);
            if self.outbox.is_empty() {
                break;
            }
            self.flush_outbox(app);
        }
        self.reclaim_buffers();
        self.account_pool();
        self.fresh_stats();
    }

    /// Over the budget: close the connections that shedding frees the most bytes of with
    /// 1013 ("try again later"), dropping what they had queued (but the rest of a frame being
    /// written), until the process's total is back under 90 % of it. A lingering connection
    /// (shed already, or closed) is left alone: what it holds is its last words, the close
    /// frame among them, and it goes at its close timeout.
    fn shed<H: Handler>(&mut self, app: &mut H) {
        let budget = self.config.max_buffered as u64;
        let target = budget - budget / 10;
        let mut holders: Vec<(u64, usize)> = self
            .conns
            .iter()
            .filter(|(_, e)| !e.doomed && !e.conn.is_lingering() && e.out.sheddable() > 0)
            .map(|(k, e)| (e.out.sheddable(), k))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, key) in holders {
            if !self.budget.shedding_here_helps(target) {
                break;
            }
            warn!("#{key}: holds {bytes} bytes, over --max-buffered {budget}: shedding with 1013");
            self.stats.shed += 1;
            if let Some(entry) = self.conns.get_mut(key) {
                entry
                    .out
                    .drop_unsent(&mut self.budget, &mut self.outbox, key);
                let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
                entry.conn.shed(self.tick, &mut door, &self.shared);
            }
            self.dispatch_events(app, key);
            self.settle(key);
        }
    }

    /// Removes finished connections, telling the application about those it saw open.
    fn remove_doomed<H: Handler>(&mut self, app: &mut H) {
        while let Some(key) = self.doomed.pop() {
            self.dispatch_last_events(app, key);
            self.forget(key);
        }
    }

    /// Takes connection `key` out of the slab and out of everything that counts it: open
    /// connections, the budget, admission, rooms, facts, its deadline. Returns it (its socket
    /// still open).
    pub(super) fn forget(&mut self, key: usize) -> Option<super::entry::Entry> {
        let mut entry = self.conns.try_remove(key)?;
        self.stats.open -= 1;
        entry.out.release(&mut self.budget);
        self.admission.count_out(key);
        self.leave_rooms(key);
        self.forget_facts(key, entry.facts);
        self.timers.disarm(key);
        Some(entry)
    }
}
