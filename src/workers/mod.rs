//! Several share-nothing reactors in one process: one thread, listener (`SO_REUSEPORT`), slab
//! and timer heap each, joined only by the [`Hub`] that carries publications between them
//! (and to Redis), by the [`StatsBoard`] that `/stats` and `/metrics` sum, and by the
//! `ProcessCounts` that `--max-conns`, `--max-conns-per-ip` and `--max-buffered` limit,
//! which are per process.
//!
//! With one worker and no Redis this is exactly the single reactor, run on the calling
//! thread, with no hub, no board and no shared counts: it keeps those counts itself.

mod member;

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use crate::admission::counts::ProcessCounts;
use crate::app::Handler;
use crate::config::{Config, RedisConfig};
use crate::handle::ServerHandle;
use crate::pubsub::hub::MAX_WORKERS;
use crate::pubsub::mailbox::mailbox;
use crate::pubsub::redis::RedisBridge;
use crate::pubsub::{BrokerStats, Hub, Mailbox, Upstream};
use crate::reactor::Reactor;
use crate::stats::board::StatsBoard;
use crate::upgrade::wire::Channel;
use crate::upgrade::{process, Takeover, Upgrades};
use std::os::unix::net::UnixStream;

pub(crate) use member::Member;

/// Deliveries waiting for one worker before the hub drops (and counts) more.
const MAILBOX_CAPACITY: usize = 65_536;

/// How many reactors to run on one port, and whether rooms span processes through Redis.
#[derive(Debug, Clone)]
pub struct Workers {
    config: Config,
    count: usize,
    redis: Option<RedisConfig>,
    upgrades: Option<Upgrades>,
}

/// What a worker thread reports once its listener is bound.
type Ready = io::Result<(SocketAddr, bool, Mailbox, ServerHandle)>;

/// How a worker starts: its index, and in a process an upgrade started, its channel to its
/// counterpart in the old process.
struct Start {
    index: usize,
    channel: Option<Channel<UnixStream>>,
    takeover: Arc<Takeover>,
}

impl Workers {
    /// One worker, no Redis.
    pub fn new(config: Config) -> Workers {
        Workers {
            config,
            count: 1,
            redis: None,
            upgrades: None,
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

    /// Upgrades in place on `SIGUSR2` ([`crate::upgrade`]): only one worker without Redis
    /// does; otherwise the signal is ignored with a log line. A process that an upgrade
    /// started takes its listeners and connections from the old one instead of binding.
    pub fn upgrades(mut self, upgrades: Upgrades) -> Workers {
        self.upgrades = Some(upgrades);
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
            let inherited = process::inherited_channels(1)?.and_then(|c| c.into_iter().next());
            let mut reactor = match inherited {
                Some(channel) => {
                    let takeover = Arc::new(Takeover::new(1));
                    Reactor::inherit(self.config, make_app(0), channel, takeover)?
                }
                None => Reactor::bind(self.config, make_app(0))?,
            };
            reactor.handle_signals()?;
            if let Some(upgrades) = self.upgrades {
                reactor.upgrade_on_sigusr2(upgrades);
            }
            on_listening(reactor.local_addr(), reactor.static_from_disk());
            return reactor.run();
        }
        // Started by an upgrade: each worker takes its listener and connections from its
        // counterpart in the old process, and all take over together.
        let mut inherited = process::inherited_channels(self.count)?
            .map(|channels| channels.into_iter().map(Some).collect::<Vec<_>>())
            .unwrap_or_default();
        let takeover = Arc::new(Takeover::new(self.count));
        let mut config = self.config;
        config.reuse_port |= self.count > 1;
        let make_app = Arc::new(make_app);
        let mut threads = Vec::with_capacity(self.count);
        let mut mailboxes = Vec::with_capacity(self.count);
        let mut joins = Vec::with_capacity(self.count);
        let mut handles = Vec::with_capacity(self.count);
        let mut from_disk = false;
        for index in 0..self.count {
            let (ready_tx, ready_rx) = channel();
            let (join_tx, join_rx) = channel();
            let (own_config, make_app) = (config.clone(), Arc::clone(&make_app));
            let start = Start {
                index,
                channel: inherited.get_mut(index).and_then(Option::take),
                takeover: Arc::clone(&takeover),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wsloop-worker-{index}"))
                    .spawn(move || worker(start, own_config, &*make_app, &ready_tx, &join_rx))?,
            );
            let (addr, disk, mailbox, handle) = ready_rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread died while binding"))??;
            handles.push(handle);
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
        // Worker 0 starts an upgrade and hands the others their channels.
        let upgrades = self.upgrades.map(|mut u| {
            u.workers = self.count;
            u.via_redis = self.redis.is_some();
            u
        });
        for (index, join) in joins.into_iter().enumerate() {
            let member = Member::new(
                index,
                Arc::clone(&board),
                Arc::clone(&hub),
                Arc::clone(&counts),
            );
            let own_upgrades = upgrades.clone().map(|mut u| {
                if index == 0 {
                    u.siblings = handles.iter().skip(1).cloned().collect();
                }
                u
            });
            let _ = join.send((member, own_upgrades));
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

/// One worker thread: bind (or take its listener from the old process), report, wait to
/// join the hub, run.
fn worker<H: Handler>(
    start: Start,
    config: Config,
    make_app: &dyn Fn(usize) -> H,
    ready: &Sender<Ready>,
    join: &Receiver<(Member, Option<Upgrades>)>,
) -> io::Result<()> {
    let app = make_app(start.index);
    let bound = match start.channel {
        Some(channel) => Reactor::inherit(config, app, channel, start.takeover),
        None => Reactor::bind(config, app),
    }
    .and_then(|mut reactor| {
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
        reactor.handle(),
    )));
    let Ok((member, upgrades)) = join.recv() else {
        return Ok(()); // Another worker failed to start: the process is giving up.
    };
    reactor.join(member, Some(inbox));
    if let Some(upgrades) = upgrades {
        reactor.upgrade_on_sigusr2(upgrades);
    }
    reactor.run()
}
