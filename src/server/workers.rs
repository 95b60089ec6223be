//! Several share-nothing reactors in one process: one thread, listener (`SO_REUSEPORT`), slab
//! and timer heap each, joined only by the [`Hub`] that carries publications between them
//! (and to Redis), by the [`StatsBoard`] that `/stats` and `/metrics` sum, and by the
//! `ProcessCounts` that `--max-conns`, `--max-conns-per-ip` and `--max-buffered` limit,
//! which are per process.
//!
//! With one worker and no Redis this is exactly the single reactor, run on the calling
//! thread, with no hub, no board and no shared counts: it keeps those counts itself.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::app::{Handler, Message};
use super::board::StatsBoard;
use super::broker::hub::MAX_WORKERS;
use super::broker::mailbox::mailbox;
use super::broker::redis::{RedisBridge, RedisConfig};
use super::broker::{BrokerStats, Hub, Kind, Mailbox, Upstream};
use super::config::Config;
use super::metrics;
use super::reactor::Reactor;
use super::rooms::Rooms;
use super::stats::Stats;

/// Deliveries waiting for one worker before the hub drops (and counts) more.
const MAILBOX_CAPACITY: usize = 65_536;

/// How often at most a worker copies its per-room drop counts to the board while drops
/// happen (each copy walks its rooms). `/metrics` answered by another worker shows them that
/// late, or — when the worker's last drops came less than this after a copy — as of its
/// first loop turn after that (the totals, `wsloop_dropped_messages_total`, are at most one
/// loop turn old).
const ROOM_FIGURES_EVERY: Duration = Duration::from_secs(1);

/// The counts behind the process-wide limits, shared by every worker: each admission
/// decision reads and changes them in one atomic step, so workers together never admit more
/// than the limit.
#[derive(Debug)]
pub(crate) struct ProcessCounts {
    /// Connections in the slabs of all workers (any phase), as `--max-conns` counts them.
    open: AtomicUsize,
    /// Bytes all workers' connections hold, as `--max-buffered` counts them.
    buffered: AtomicU64,
    /// Upgraded connections per client address (`--max-conns-per-ip` only).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// How many workers share these counts.
    pub(crate) workers: usize,
}

impl ProcessCounts {
    /// Counts for `workers` workers, all zero.
    pub(crate) fn new(workers: usize) -> ProcessCounts {
        ProcessCounts {
            open: AtomicUsize::new(0),
            buffered: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            workers,
        }
    }

    /// Counts one more connection; returns how many there were before it.
    pub(crate) fn open_one(&self) -> usize {
        self.open.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one connection less.
    pub(crate) fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// One connection's bytes went from `before` to `after`.
    pub(crate) fn rebuffer(&self, before: u64, after: u64) {
        if after > before {
            self.buffered.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.buffered.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Bytes all workers' connections hold now.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Counts one more connection from `ip` unless it already has `cap`; false when it has.
    pub(crate) fn take_ip(&self, ip: IpAddr, cap: usize) -> bool {
        take_ip_slot(&mut self.lock_per_ip(), ip, cap)
    }

    /// Counts one connection from `ip` less.
    pub(crate) fn release_ip(&self, ip: IpAddr) {
        release_ip_slot(&mut self.lock_per_ip(), ip);
    }

    fn lock_per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic while holding this lock cannot leave a count half-updated.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts one more connection from `ip` in `per_ip` unless it already has `cap`; false when
/// it has. (The one rule, for a lone reactor's own map and for the process's shared one.)
pub(crate) fn take_ip_slot(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr, cap: usize) -> bool {
    let count = per_ip.get(&ip).copied().unwrap_or(0);
    if count >= cap {
        return false;
    }
    per_ip.insert(ip, count + 1);
    true
}

/// Counts one connection from `ip` less in `per_ip`, forgetting addresses left with none.
pub(crate) fn release_ip_slot(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(count) = per_ip.get_mut(&ip) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            per_ip.remove(&ip);
        }
    }
}

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

/// How many reactors to run on one port, and whether rooms span processes through Redis.
#[derive(Debug, Clone)]
pub struct Workers {
    config: Config,
    count: usize,
    redis: Option<RedisConfig>,
}

/// What a worker thread reports once its listener is bound.
type Ready = io::Result<(SocketAddr, bool, Mailbox)>;

impl Workers {
    /// One worker, no Redis.
    pub fn new(config: Config) -> Workers {
        Workers {
            config,
            count: 1,
            redis: None,
        }
    }

    /// Runs `count` reactors (1 to 64) on one port.
    pub fn count(mut self, count: usize) -> Workers {
        self.count = count;
        self
    }

    /// Shares rooms with other processes through Redis.
    pub fn redis(mut self, redis: Option<RedisConfig>) -> Workers {
        self.redis = redis;
        self
    }

    /// Binds every worker, calls `on_listening(address, static files from disk)`, and runs
    /// until every worker has shut down (SIGINT/SIGTERM reach all of them). `make_app(i)`
    /// builds worker `i`'s application on that worker's thread.
    ///
    /// # Errors
    /// When a listener cannot be bound, the Redis URL is invalid, a thread cannot start, or
    /// a reactor's poll fails.
    pub fn run<H, F>(
        self,
        make_app: F,
        on_listening: impl FnOnce(SocketAddr, bool),
    ) -> io::Result<()>
    where
        H: Handler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        if !(1..=MAX_WORKERS).contains(&self.count) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--workers must be between 1 and {MAX_WORKERS}"),
            ));
        }
        if self.count == 1 && self.redis.is_none() {
            let mut reactor = Reactor::bind(self.config, make_app(0))?;
            reactor.handle_signals()?;
            on_listening(reactor.local_addr(), reactor.static_from_disk());
            return reactor.run();
        }
        let mut config = self.config;
        config.reuse_port |= self.count > 1;
        let make_app = Arc::new(make_app);
        let mut threads = Vec::with_capacity(self.count);
        let mut mailboxes = Vec::with_capacity(self.count);
        let mut joins = Vec::with_capacity(self.count);
        let mut from_disk = false;
        for index in 0..self.count {
            let (ready_tx, ready_rx) = channel();
            let (join_tx, join_rx) = channel();
            let (own_config, make_app) = (config.clone(), Arc::clone(&make_app));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wsloop-worker-{index}"))
                    .spawn(move || worker(index, own_config, &*make_app, &ready_tx, &join_rx))?,
            );
            let (addr, disk, mailbox) = ready_rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread died while binding"))??;
            // Port 0 picks a port once; the other workers share it.
            config.addr = addr;
            from_disk = disk;
            mailboxes.push(mailbox);
            joins.push(join_tx);
        }
        let stats = Arc::new(BrokerStats::default());
        let mut failed = None;
        let hub = Arc::new_cyclic(|weak| {
            let upstream = self.redis.as_ref().and_then(|redis| {
                RedisBridge::start(redis, weak.clone(), Arc::clone(&stats))
                    .map_err(|e| failed = Some(e))
                    .ok()
            });
            Hub::new(
                mailboxes,
                upstream.map(|u| Box::new(u) as Box<dyn Upstream>),
                Arc::clone(&stats),
            )
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let board = Arc::new(StatsBoard::new(self.count));
        let counts = Arc::new(ProcessCounts::new(self.count));
        for (index, join) in joins.into_iter().enumerate() {
            let _ = join.send(Member {
                index,
                board: Arc::clone(&board),
                hub: Arc::clone(&hub),
                counts: Arc::clone(&counts),
                rooms_copied: (0, None),
            });
        }
        drop(hub);
        on_listening(config.addr, from_disk);
        let mut result = Ok(());
        for thread in threads {
            let outcome = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a worker panicked")));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

/// One worker thread: bind, report, wait to join the hub, run.
fn worker<H: Handler>(
    index: usize,
    config: Config,
    make_app: &dyn Fn(usize) -> H,
    ready: &Sender<Ready>,
    join: &Receiver<Member>,
) -> io::Result<()> {
    let bound = Reactor::bind(config, make_app(index)).and_then(|mut reactor| {
        reactor.handle_signals()?;
        Ok(reactor)
    });
    let mut reactor = match bound {
        Ok(reactor) => reactor,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let (mailbox, inbox) = mailbox(MAILBOX_CAPACITY, reactor.waker());
    let _ = ready.send(Ok((
        reactor.local_addr(),
        reactor.static_from_disk(),
        mailbox,
    )));
    let Ok(member) = join.recv() else {
        return Ok(()); // Another worker failed to start: the process is giving up.
    };
    reactor.join(member, Some(inbox));
    reactor.run()
}
