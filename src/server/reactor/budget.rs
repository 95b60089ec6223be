//! The process-wide memory budget (`--max-buffered`): what each connection holds is kept in
//! one running total (per reactor, and with several workers also one for the process); over
//! the budget, connections and upgrades are refused and the largest holders shed.

use log::warn;

use crate::protocol::CloseCode;
use crate::server::connection::Connection;

use super::Core;

impl Core {
    /// Brings the process-wide byte count up to date with what connection `key` holds now.
    /// Called after anything that can change its queue, partial message, contexts or TLS
    /// session.
    pub(super) fn reaccount(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let (before, now) = (conn.accounted, conn.footprint());
            conn.accounted = now;
            self.count_buffered(before, now);
        }
    }

    /// One connection's bytes went from `before` to `after`: this reactor's count (its
    /// `buffered_bytes`) and, with several workers, the process's.
    pub(super) fn count_buffered(&mut self, before: u64, after: u64) {
        if before == after {
            return;
        }
        self.stats.buffered_bytes = self
            .stats
            .buffered_bytes
            .saturating_sub(before)
            .saturating_add(after);
        if let Some(member) = &self.member {
            member.counts.rebuffer(before, after);
        }
    }

    /// Bytes held for every connection of the process (all workers).
    fn process_buffered(&self) -> u64 {
        match &self.member {
            Some(member) => member.counts.buffered(),
            None => self.stats.buffered_bytes,
        }
    }

    /// Over the budget: close the connections holding the most bytes with 1013 ("try again
    /// later"), dropping what they had queued, until the process's total is back under 90 %
    /// of it.
    pub(super) fn shed(&mut self) {
        let budget = self.config.max_buffered as u64;
        let target = budget - budget / 10;
        let mut holders: Vec<(u64, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.accounted > 0 && !c.is_dead())
            .map(|(k, c)| (c.accounted, k))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, key) in holders {
            if !self.shedding_here_helps(target) {
                break;
            }
            warn!("#{key}: holds {bytes} bytes, over --max-buffered {budget}: shedding with 1013");
            self.stats.shed += 1;
            let open = self.conns.get(key).is_some_and(Connection::is_open);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.out.clear();
                conn.decoder = crate::protocol::Decoder::new();
                conn.deflate = None;
                conn.close_code = Some(CloseCode::TRY_AGAIN_LATER);
            }
            self.reaccount(key);
            if open {
                self.queue_close(key, CloseCode::TRY_AGAIN_LATER, "try again later");
                self.linger(key);
            } else {
                self.kill(key);
            }
        }
    }

    /// Whether the process holds more than `target` and this reactor at least its share of
    /// it: with several workers each sheds only while it holds at least its share, so the
    /// worker holding the most sheds, and the others keep their smaller holders.
    fn shedding_here_helps(&self, target: u64) -> bool {
        let total = self.process_buffered();
        let workers = self.member.as_ref().map_or(1, |m| m.counts.workers) as u64;
        total > target && self.stats.buffered_bytes.saturating_mul(workers) >= total
    }

    /// Whether the bytes held for all connections of the process are over `--max-buffered`.
    pub(super) fn over_budget(&self) -> bool {
        self.process_buffered() > self.config.max_buffered as u64
    }
}
