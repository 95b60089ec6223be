//! The mio `Poll` loop: accept, read into one shared buffer, feed each connection's protocol
//! state machine, hand what comes out to the application, write each connection's output once
//! per turn, fire timers. No protocol rule lives here: phases, the close handshake, keepalive,
//! idle and close-wait deadlines, rate limits and the request head are
//! [`wsloop_proto::Connection`]'s.
//!
//! # One loop turn
//! 1. `poll` (timeout: the next timer, or zero while connections wait for a fair share).
//! 2. For each event: accept until `WouldBlock`; read until `WouldBlock` (bounded per event,
//!    in reads and in the work they cause, for fairness); flush on `WRITABLE`. Then the
//!    connections left on the ready list by the previous turn.
//! 3. Fire due timers (each connection's one deadline, from its `poll_timeout`).
//! 4. Remove finished connections (telling the application), then write this turn's outbox:
//!    one vectored write per connection (see [`crate::out`] for when there are more),
//!    queueing only what the socket refused. A large message sent back by move is written
//!    earlier, as soon as the visit that read it ends, while its bytes are still in the
//!    caches; written whole, its visit reads on (`Reactor::on_readable`).
//!
//! # Where things are
//! This module holds the loop ([`Reactor`]) and the state it mutates ([`Core`]). The other
//! files are split by what they own: [`listen`] (binding the listener), [`entry`] (the slab
//! entry), [`accept`] (into the slab, or refused as [`crate::admission`] decides), [`read`]
//! (reading, feeding a connection, events to the application), [`requests`] (answers to HTTP
//! requests and the upgrade), [`write`](mod@write) (sending and the end-of-turn flush), [`life`] (after
//! each piece of work: deadlines, FIN, budget; timers, shutdown, shedding, removal),
//! [`publish`] (a publication to this reactor's subscribers, and the hand-off to and from the
//! broker) and [`timers`] (the connections' deadline heap).
//!
//! Publishing stays here rather than in [`crate::pubsub`]: it walks the slab and writes
//! through each subscriber's door, state only the reactor holds. `pubsub` owns what rooms
//! are and how publications travel between reactors.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustix::io::Errno;
use slab::Slab;
use wsloop_proto::conn::Shared;
use wsloop_proto::time::{Clock, Tick};

use crate::admission::Admission;
use crate::app::{ConnId, Context, Handler};
use crate::config::Config;
use crate::handle::{Command, ServerHandle};
use crate::http::StaticFiles;
use crate::out::{Budget, Outbox};
use crate::pubsub::rooms::Rooms;
use crate::pubsub::Inbox;
use crate::stats::Stats;
use crate::upgrade::relay::{Cut, Held, Relay};
use crate::upgrade::wire::Channel;
use crate::upgrade::Upgrades;
use crate::workers::Member;

use entry::Entry;
use facts::{Paths, Peers};
use handoff::Handoff;
use timers::Deadlines;

mod accept;
pub(crate) mod entry;
mod facts;
mod handoff;
mod large;
mod life;
pub(crate) mod listen;
mod publish;
mod read;
mod requests;
mod timers;
mod write;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const METRICS: Token = Token(usize::MAX - 3);

/// Size of the one read buffer shared by every connection.
const READ_BUF: usize = 256 * 1024;
/// How much of the shared buffer a connection's read takes while it has not shown that it
/// has more to send (see [`Entry::narrow_read`](entry::Entry::narrow_read)): enough for a
/// request head and a few small messages; one such read that fills it goes wide again.
const NARROW_READ: usize = 16 * 1024;
/// TLS connections: plaintext goes to `read_buf[..PLAIN_LEN]`, ciphertext is read above it.
const PLAIN_LEN: usize = READ_BUF / 2;
/// Reads per readiness event before other connections get their turn.
const READS_PER_EVENT: usize = 16;
/// Large messages sent back by move that one visit reads and writes before the next
/// connection's turn (see `Reactor::on_readable`): at 16 MiB each, about 16 ms.
const LARGE_ECHOES_PER_VISIT: usize = 2;
/// Units of work one connection may cause per loop turn: each step of its connection's
/// decoding is one (a message, a pong, an event), and so is every frame queued for a receiver
/// (a publication to a 21-member room is 21). The rest of its input waits for the next turn.
/// 4096 units are well under a millisecond of work in a release build, so a flood delays
/// everyone else by about that much per turn; the echo benchmarks (at most 64 messages in
/// flight per connection, 128 units) never reach it.
const WORK_PER_TURN: usize = 4096;
/// Most header lines in a request.
const MAX_HEADERS: usize = 64;
/// Connections beyond `max_conns` that may still get their 503 before being dropped outright.
const REJECT_OVERFLOW: usize = 1024;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the reactor mutates except the read buffers and the application, so callbacks
/// can get `&mut Core` while a message still borrows a read buffer.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    conns: Slab<Entry>,
    /// This turn's output for every connection (the door: [`crate::out::Door`]).
    outbox: Outbox,
    /// Visits that ended by writing a large message lent out by move: tests tell a move from
    /// a copy by it, since the outbox that held the lent buffer is written and cleared then.
    #[cfg(test)]
    lent_writes: usize,
    /// What every connection holds, against `--max-buffered`.
    budget: Budget,
    pub(crate) rooms: Rooms,
    /// The paths open connections asked for, each stored once.
    paths: Paths,
    /// Open connections' client addresses that do not fit their slab entry.
    peers: Peers,
    /// Each connection's one deadline.
    timers: Deadlines,
    /// The protocol settings and deflate contexts every connection shares.
    shared: Shared,
    registry: Registry,
    static_files: StaticFiles,
    now: Instant,
    /// `now` as a [`Tick`], the protocol connections' time.
    tick: Tick,
    clock: Clock,
    next_serial: u32,
    /// Connections to visit next turn: their reads or work were cut short (fairness), or
    /// reading resumed (backpressure, rate limit).
    ready: Vec<usize>,
    /// Units of work the connection being read may still cause this turn ([`WORK_PER_TURN`]).
    work_left: usize,
    /// Finished connections, removed at the end of the turn.
    doomed: Vec<usize>,
    shutting_down: bool,
    shutdown_deadline: Option<Instant>,
    /// The admission rules' state: handshake rate, connection counts, `Retry-After` jitter.
    admission: Admission,
    /// Set only when this reactor is one of several or has a broker; `None` keeps the single
    /// reactor's hot path free of any broker work.
    member: Option<Box<Member>>,
    /// Room publications between the two processes while connections move.
    relay: Option<Box<Relay>>,
    /// A new process's worker during an upgrade: deliveries from the other workers and from
    /// Redis, held until the old process has relayed everything (see `handoff`).
    held_deliveries: Option<Box<Held>>,
    /// A new process's worker after an upgrade through Redis: what its own subscription
    /// brings that the old process delivered already is dropped (see `Cut`).
    cut: Option<Box<Cut>>,
}

/// A bound server, ready to [`run`](Reactor::run).
pub struct Reactor<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    /// The `--metrics-addr` listener, when /metrics is served apart.
    metrics_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    commands: mpsc::Receiver<Command>,
    handle: ServerHandle,
    read_buf: Vec<u8>,
    /// Where messages that cannot be borrowed from `read_buf` are assembled or inflated.
    scratch: Vec<u8>,
    core: Core,
    app: H,
    local_addr: SocketAddr,
    accept_paused_until: Option<Instant>,
    emfile_logged: bool,
    next_stats: Option<Instant>,
    /// Publications from the broker (other workers, other processes).
    inbox: Option<Inbox>,
    /// How to upgrade on `SIGUSR2` (`None`: this server does not).
    upgrades: Option<Upgrades>,
    /// Where an upgrade stands.
    handoff: Handoff,
    /// Workers in this process (a handoff needs the same number on both sides).
    workers: usize,
}

impl<H: Handler> Reactor<H> {
    /// Binds the listener and prepares the loop.
    ///
    /// # Errors
    /// When the address cannot be bound or the poller cannot be created.
    pub fn bind(config: Config, app: H) -> io::Result<Reactor<H>> {
        let listener = listen::bind(config.addr, config.reuse_port)?;
        let metrics_listener = match config.metrics_addr.filter(|_| config.metrics) {
            Some(addr) => Some(TcpListener::bind(addr)?),
            None => None,
        };
        Reactor::with_listeners(config, app, listener, metrics_listener)
    }

    /// Prepares the loop on listeners bound already (here, or by an old process).
    fn with_listeners(
        config: Config,
        app: H,
        mut listener: TcpListener,
        mut metrics_listener: Option<TcpListener>,
    ) -> io::Result<Reactor<H>> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        if let Some(listener) = &mut metrics_listener {
            poll.registry()
                .register(listener, METRICS, Interest::READABLE)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let static_files = StaticFiles::new(config.static_dir.as_deref(), config.demo_page);
        let now = Instant::now();
        let clock = Clock::new(now);
        let next_stats = config.stats_interval.map(|i| now + i);
        Ok(Reactor {
            core: Core {
                stats: Stats::default(),
                conns: Slab::with_capacity(table_capacity(config.max_conns)),
                outbox: Outbox::default(),
                #[cfg(test)]
                lent_writes: 0,
                budget: Budget::default(),
                rooms: Rooms::new(config.slow_consumer),
                paths: Paths::default(),
                peers: Peers::default(),
                timers: Deadlines::with_capacity(table_capacity(config.max_conns)),
                shared: Shared::new(config.settings()),
                registry: poll.registry().try_clone()?,
                static_files,
                now,
                tick: clock.tick(now),
                clock,
                next_serial: 0,
                ready: Vec::new(),
                work_left: WORK_PER_TURN,
                doomed: Vec::new(),
                shutting_down: false,
                shutdown_deadline: None,
                admission: Admission::new(&config, clock.tick(now)),
                member: None,
                relay: None,
                held_deliveries: None,
                cut: None,
                config,
            },
            poll,
            listener: Some(listener),
            metrics_listener,
            signals: None,
            commands: rx,
            handle: ServerHandle::new(tx, waker),
            read_buf: vec![0; READ_BUF],
            scratch: Vec::new(),
            app,
            local_addr,
            accept_paused_until: None,
            emfile_logged: false,
            next_stats,
            inbox: None,
            upgrades: None,
            handoff: Handoff::Idle,
            workers: 1,
        })
    }

    /// Upgrades in place on `SIGUSR2` as `upgrades` says (see [`crate::upgrade`]). Only a
    /// single reactor can: not one of several workers, not one with a broker.
    pub fn upgrade_on_sigusr2(&mut self, upgrades: Upgrades) {
        self.workers = upgrades.workers;
        self.upgrades = Some(upgrades);
    }

    /// Makes this reactor worker `member.index` of a process: its counters go to the shared
    /// board, and with a hub its publications reach the other workers (and the hub's
    /// upstream) while the hub's deliveries arrive through `inbox`.
    pub(crate) fn join(&mut self, member: Member, inbox: Option<Inbox>) {
        self.core.budget.share(Arc::clone(&member.counts));
        self.core.admission.share(Arc::clone(&member.counts));
        self.core.member = Some(Box::new(member));
        self.inbox = inbox;
        // Rooms of connections adopted from an old process before joining.
        let topics: Vec<Box<str>> = self
            .core
            .rooms
            .iter()
            .map(|(name, _)| name.into())
            .collect();
        for topic in topics {
            self.core.interest(&topic, true);
        }
    }

    /// The waker that interrupts this reactor's `poll` (for a broker mailbox).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.handle.waker()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A thread-safe handle to send, publish and shut down from other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Whether static files come from a folder on disk (false: the embedded demo page, or
    /// none).
    pub fn static_from_disk(&self) -> bool {
        self.core.static_files.is_on_disk()
    }

    /// Shuts down gracefully on SIGINT and SIGTERM; upgrades on SIGUSR2 (or says why not).
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGUSR2,
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Runs until a graceful shutdown completes.
    ///
    /// # Errors
    /// Only when polling itself fails; connection errors never end the loop.
    pub fn run(mut self) -> io::Result<()> {
        self.handle.running_here();
        self.adopt_what_waits();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.core.now = Instant::now();
            self.core.tick = self.core.clock.tick(self.core.now);
            // Those the last turn left over: whoever is put back during this turn waits for
            // the next one, so a connection with more to do gets one share per turn.
            let ready = std::mem::take(&mut self.core.ready);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(false),
                    METRICS => self.accept_all(true),
                    WAKER => {
                        self.run_commands();
                        self.drain_inbox();
                    }
                    SIGNALS => self.check_signals(),
                    handoff::UPGRADE => self.on_channel(),
                    Token(key) => {
                        if event.is_writable() {
                            self.core.on_writable(&mut self.app, key);
                        }
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hangup {
                            self.on_readable(key, Visit::Event { hangup });
                        }
                    }
                }
            }
            for key in ready {
                self.on_readable(key, Visit::Ready);
            }
            if self
                .accept_paused_until
                .is_some_and(|until| until <= self.core.now)
            {
                self.accept_paused_until = None;
                self.accept_all(false);
                self.accept_all(true);
            }
            self.core.fire_timers(&mut self.app);
            self.core.finish_turn(&mut self.app);
            self.log_stats();
            if let Some(member) = &mut self.core.member {
                member.end_turn(&self.core.stats, &self.core.rooms, self.core.now);
            }
            if self.tend_handoff() {
                return Ok(());
            }
            if self.core.shutting_down {
                self.listener = None;
                self.metrics_listener = None;
                let expired = self
                    .core
                    .shutdown_deadline
                    .is_some_and(|d| d <= self.core.now);
                let left = self.core.not_done();
                if left == 0 || expired {
                    info!("shutdown complete ({left} connections were not done)");
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.core.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.core
                .timers
                .next_deadline()
                .map(|t| self.core.clock.instant(t)),
            self.core
                .pool_deadline()
                .map(|t| self.core.clock.instant(t)),
            self.accept_paused_until,
            self.next_stats,
            self.core.shutdown_deadline,
            self.handoff_deadline(),
        ];
        let now = Instant::now();
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn log_stats(&mut self) {
        let (Some(at), Some(every)) = (self.next_stats, self.core.config.stats_interval) else {
            return;
        };
        if at <= self.core.now {
            info!("stats: {}", self.core.stats);
            self.next_stats = Some(self.core.now + every);
        }
    }

    fn check_signals(&mut self) {
        let received: Vec<i32> = match self.signals.as_mut() {
            Some(signals) => signals.pending().collect(),
            None => return,
        };
        for signal in received {
            if signal == signal_hook::consts::SIGUSR2 {
                self.start_upgrade();
            } else {
                info!("signal received: shutting down gracefully");
                self.core.begin_shutdown();
            }
        }
    }

    fn run_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            let mut ctx = Context {
                core: &mut self.core,
            };
            match command {
                Command::Send(id, msg) => {
                    ctx.send(id, msg.as_message());
                }
                Command::Publish(topic, msg) => {
                    ctx.publish(&topic, msg.as_message());
                }
                Command::Broadcast(msg) => {
                    ctx.broadcast(msg.as_message());
                }
                Command::Close(id, code, reason) => ctx.close(id, code, &reason),
                Command::Shutdown => ctx.shutdown(),
                Command::Rooms(reply) => {
                    let _ = reply.send(ctx.rooms().map(str::to_owned).collect());
                }
                Command::Subscribers(room, reply) => {
                    let _ = reply.send(ctx.subscribers(&room));
                }
                Command::Upgrade(stream) => {
                    info!("upgrade: worker 0 started the new process; moving this worker's connections");
                    self.greet_new_process(None, Channel::new(stream));
                }
            }
        }
    }

    /// Delivers what the broker brought to this reactor's subscribers, never publishing it
    /// again.
    fn drain_inbox(&mut self) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        for delivery in inbox.drain() {
            self.core.deliver_from_broker(&delivery);
        }
    }

    /// Accepts until `WouldBlock`. Out of file descriptors, it pauses accepting briefly
    /// (logged once) instead of spinning on a listener that stays readable.
    fn accept_all(&mut self, metrics: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let listener = if metrics {
                self.metrics_listener.as_ref()
            } else {
                self.listener.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    self.emfile_logged = false;
                    self.core.add_connection(socket, peer, metrics);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    if !self.emfile_logged {
                        warn!("accept: {e}; pausing accepts (existing connections are served)");
                        self.emfile_logged = true;
                    }
                    self.accept_paused_until = Some(self.core.now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => debug!("accept: {e}"),
            }
        }
    }
}

/// Why a connection is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    /// A readiness event; `hangup`: it also reported the peer's FIN or an error.
    Event { hangup: bool },
    /// The ready list, from the previous turn.
    Ready,
}

/// Whether `accept` failed for want of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM): trying again at once would fail the same way.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

impl Core {
    fn id_of(&self, key: usize) -> Option<ConnId> {
        self.conns.get(key).map(|e| ConnId {
            key: key as u32,
            serial: e.serial,
        })
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        let key = id.key as usize;
        self.conns
            .get(key)
            .filter(|e| e.serial == id.serial)
            .map(|_| key)
    }

    /// Counts `units` of work (a decoding step, a frame queued for a receiver) against the
    /// share of the connection being read this turn.
    fn spend(&mut self, units: usize) {
        self.work_left = self.work_left.saturating_sub(units);
    }

    /// The counters, with the budget's figure brought up to date.
    fn fresh_stats(&mut self) -> &Stats {
        self.stats.buffered_bytes = self.budget.held();
        &self.stats
    }
}

/// How many connections the tables that grow with them (the slab, the deadline slots and
/// heap) have room for from the start. Reserved address space, not memory: no page is touched
/// until a connection uses it. What it buys: allocated while glibc's `mmap` threshold is still
/// its default (128 KiB), each table gets its own mapping and grows by `mremap`; allocated
/// later, after a burst of large messages has raised that threshold (glibc raises it to the
/// size of every large block freed), they would come from the `brk` heap, where every
/// outgrown copy stays resident — measured: 291 B per idle connection opened after a burst of
/// 16 MiB echoes instead of 175 B (`cargo bench --bench load -- --rt --only j`).
fn table_capacity(max_conns: usize) -> usize {
    max_conns.min(16_384)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_or_memory_is_resource_exhaustion() {
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(is_resource_exhaustion(&e), "{e}");
        }
        let reset = io::Error::from_raw_os_error(Errno::CONNRESET.raw_os_error());
        assert!(!is_resource_exhaustion(&reset));
        assert!(!is_resource_exhaustion(&io::ErrorKind::WouldBlock.into()));
    }
}
