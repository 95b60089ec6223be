//! [`Member`]: what a reactor that is one of several workers of a process holds of the
//! others — its slot on the stats board, the hub, the shared counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::counts::ProcessCounts;
use crate::app::Message;
use crate::pubsub::rooms::Rooms;
use crate::pubsub::{Hub, Kind};
use crate::stats::board::StatsBoard;
use crate::stats::{metrics, Stats};

/// How often at most a worker copies its per-room drop counts to the board while drops
/// happen (each copy walks its rooms). `/metrics` answered by another worker shows them that
/// late, or — when the worker's last drops came less than this after a copy — as of its
/// first loop turn after that (the totals, `wsloop_dropped_messages_total`, are at most one
/// loop turn old).
const ROOM_FIGURES_EVERY: Duration = Duration::from_secs(1);

/// What a reactor that is one of several knows about the others.
#[derive(Debug)]
pub(crate) struct Member {
    /// This worker's index (its slot on the board, its bit in the hub).
    pub(crate) index: usize,
    /// Every worker's counters.
    pub(crate) board: Arc<StatsBoard>,
    /// The process's broker.
    pub(crate) hub: Arc<Hub>,
    /// The counts the per-process limits apply to.
    pub(crate) counts: Arc<ProcessCounts>,
    /// `Stats::dropped_messages` when this worker last copied its room figures to the board,
    /// and when that was.
    rooms_copied: (u64, Option<Instant>),
}

impl Member {
    /// Worker `index` of the process whose `board`, `hub` and `counts` these are.
    pub(crate) fn new(
        index: usize,
        board: Arc<StatsBoard>,
        hub: Arc<Hub>,
        counts: Arc<ProcessCounts>,
    ) -> Member {
        Member {
            index,
            board,
            hub,
            counts,
            rooms_copied: (0, None),
        }
    }

    /// End of a loop turn: this worker's counters go to its board slot, and its per-room
    /// drop counts too when they changed (at most every [`ROOM_FIGURES_EVERY`]).
    pub(crate) fn end_turn(&mut self, stats: &Stats, rooms: &Rooms, now: Instant) {
        self.board.store(self.index, stats);
        self.board
            .store_subscriptions(self.index, rooms.subscriptions() as u64);
        let (dropped, at) = self.rooms_copied;
        let due = at.is_none_or(|at| now >= at + ROOM_FIGURES_EVERY);
        if stats.dropped_messages != dropped && due {
            self.board
                .store_drops(self.index, metrics::drops_by_room(rooms));
            self.rooms_copied = (stats.dropped_messages, Some(now));
        }
    }

    /// `/metrics` on any worker: the process's counters (every worker's summed), its rooms
    /// (the hub knows which topics have subscribers anywhere) and their drops.
    pub(crate) fn metrics_text(&self, own: &Stats, rooms: &Rooms) -> String {
        let (_, sum) = self.process_stats(own);
        self.board
            .store_subscriptions(self.index, rooms.subscriptions() as u64);
        self.board
            .store_drops(self.index, metrics::drops_by_room(rooms));
        let figures = self.board.room_figures(self.hub.topics() as u64);
        metrics::render(&sum, &figures)
    }

    /// Every worker's counters (this one's fresh) and their sum.
    fn process_stats(&self, own: &Stats) -> (Vec<Stats>, Stats) {
        self.board.store(self.index, own);
        let workers = self.board.workers();
        let mut sum = Stats::default();
        workers.iter().for_each(|w| sum.add(w));
        (workers, sum)
    }

    /// This process's name in what it publishes through Redis, if it has Redis.
    pub(crate) fn origin(&self) -> Option<u64> {
        self.hub.origin()
    }

    /// Whether other processes' publications to `topic` reach this process now.
    pub(crate) fn subscribed(&self, topic: &str) -> bool {
        self.hub.subscribed(topic)
    }

    /// This worker gained its first or lost its last subscriber to `topic`.
    pub(crate) fn interest(&self, topic: &str, subscribed: bool) {
        self.hub.interest(self.index, topic, subscribed);
    }

    /// This worker published (and delivered locally): pass it on.
    pub(crate) fn publish(&self, topic: &str, msg: &Message<'_>) {
        let kind = match msg {
            Message::Text(_) => Kind::Text,
            Message::Binary(_) => Kind::Binary,
        };
        self.hub.publish(self.index, topic, kind, msg.as_bytes());
    }

    /// `/stats` on any worker: the sum of every worker, each worker's own counters, and the
    /// broker's.
    pub(crate) fn stats_json(&self, own: &Stats) -> String {
        let (workers, sum) = self.process_stats(own);
        let each: Vec<String> = workers.iter().map(Stats::to_json).collect();
        let mut extra = format!(
            ",\"worker\":{},\"workers\":[{}]",
            self.index,
            each.join(",")
        );
        extra.push_str(&self.hub.stats().to_json_field());
        sum.to_json_with(&extra)
    }
}
