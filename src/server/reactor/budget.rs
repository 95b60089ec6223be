//! The process-wide memory budget (`--max-buffered`): what each connection holds is kept in
//! one running total; over the budget, upgrades are refused and the largest holders shed.

use log::warn;

use crate::protocol::CloseCode;
use crate::server::connection::Connection;

use super::Core;

impl Core {
    /// Brings the process-wide byte count up to date with what connection `key` holds now.
    /// Called after anything that can change its queue, partial message or contexts.
    pub(super) fn reaccount(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let now = conn.footprint();
            self.stats.buffered_bytes = self
                .stats
                .buffered_bytes
                .saturating_sub(conn.accounted)
                .saturating_add(now);
            conn.accounted = now;
        }
    }

    /// Over the budget: close the connections holding the most bytes with 1013 ("try again
    /// later"), dropping what they had queued, until the total is back under 90 % of it.
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
            if self.stats.buffered_bytes <= target {
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

    /// Whether the bytes held for all connections are over `--max-buffered`.
    pub(super) fn over_budget(&self) -> bool {
        self.stats.buffered_bytes > self.config.max_buffered as u64
    }
}
