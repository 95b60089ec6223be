//! The mio `Poll` loop: accept, read into one shared buffer, hand bytes to the protocol core,
//! hand events to the application, write each connection's output once per turn, fire timers.
//!
//! # One loop turn
//! 1. `poll` (timeout: the next timer, or zero while connections wait for a fair share).
//! 2. For each event: accept until `WouldBlock`; read until `WouldBlock` (bounded per event,
//!    in reads and in the work they cause, for fairness); flush on `WRITABLE`. Then the
//!    connections left on the ready list by the previous turn.
//! 3. Fire due timers (handshake, keepalive/idle, close-wait).
//! 4. Remove dead connections (telling the application), then write this turn's outbox: one
//!    vectored write per connection, queueing only what the socket refused.
//!
//! # Where things are
//! This module holds the loop ([`Reactor`]) and the state it mutates ([`Core`]); `Core`'s
//! methods are split by what they own: [`admit`] (accept-time refusals, the request head, the
//! upgrade, the client address), [`inbound`] (decoding, delivery, rate limits), [`outbound`]
//! (the per-turn outbox and what is queued behind it), [`publish`] (rooms and the broker),
//! [`budget`] (the process-wide memory budget) and [`lifecycle`] (timers, close, removal).

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::protocol::frame::OpCode;

use crate::server::admission::Jitter;
use crate::server::app::{ConnId, Context, Handler, Message};
use crate::server::broker::Inbox;
use crate::server::compression::SharedContexts;
use crate::server::config::Config;
use crate::server::connection::{Connection, Phase};
use crate::server::handle::{Command, ServerHandle};
use crate::server::http::StaticFiles;
use crate::server::listen;
use crate::server::out_queue::Outbox;
use crate::server::ratelimit::TokenBucket;
use crate::server::rooms::Rooms;
use crate::server::stats::Stats;
use crate::server::timer::{Clock, Deadlines, Tick, Timers};
use crate::server::workers::Member;

mod admit;
mod budget;
mod inbound;
mod lifecycle;
mod outbound;
mod publish;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const METRICS: Token = Token(usize::MAX - 3);

/// Size of the one read buffer shared by every connection.
const READ_BUF: usize = 256 * 1024;
/// TLS connections: plaintext goes to `read_buf[..PLAIN_LEN]`, ciphertext is read above it.
const PLAIN_LEN: usize = READ_BUF / 2;
/// Reads per readiness event before other connections get their turn.
const READS_PER_EVENT: usize = 16;
/// Units of work one connection may cause per loop turn: a message decoded is one, and so is
/// every frame queued for a receiver (a publication to a 21-member room is 21). The rest of
/// its input waits for the next turn. 4096 units are well under a millisecond of work in a
/// release build, so a flood delays everyone else by about that much per turn; the echo
/// benchmarks (at most 64 messages in flight per connection, 128 units) never reach it.
const WORK_PER_TURN: usize = 4096;
/// Most header lines in a request.
const MAX_HEADERS: usize = 64;
/// Connections beyond `max_conns` that may still get their 503 before being dropped outright.
const REJECT_OVERFLOW: usize = 1024;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the reactor mutates except the read buffer and the application, so callbacks
/// can get `&mut Core` while a message still borrows the read buffer.
pub struct Core {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    conns: Slab<Connection>,
    outbox: Outbox,
    pub(crate) rooms: Rooms,
    /// Each connection's deadline (handshake or keep-alive, idle, close-wait).
    timers: Deadlines,
    registry: Registry,
    static_files: StaticFiles,
    now: Instant,
    /// `now` as a [`Tick`], for connection deadlines.
    tick: Tick,
    clock: Clock,
    next_serial: u32,
    /// Connections to read next turn: their reads or work were cut short (fairness), or
    /// reading resumed (backpressure, rate limit).
    ready: Vec<usize>,
    /// Units of work the connection being read may still cause this turn ([`WORK_PER_TURN`]).
    work_left: usize,
    /// Connections to remove at the end of the turn.
    doomed: Vec<usize>,
    shutting_down: bool,
    shutdown_deadline: Option<Instant>,
    /// Deflate contexts shared by connections without context takeover.
    contexts: SharedContexts,
    /// Scratch for inflated messages and compressed frames (reused, trimmed when large).
    inflate_buf: Vec<u8>,
    deflate_buf: Vec<u8>,
    /// Spreads `Retry-After` values.
    jitter: Jitter,
    /// `--max-handshake-rate`.
    handshake_bucket: Option<TokenBucket>,
    /// Upgraded connections per client address, and each one's address (with
    /// `--max-conns-per-ip` only).
    per_ip: HashMap<IpAddr, usize>,
    ip_of: HashMap<usize, IpAddr>,
    /// When rate-limited connections may read again.
    resume: Timers,
    /// Set only when this reactor is one of several or has a broker; `None` keeps the single
    /// reactor's hot path free of any broker work.
    member: Option<Box<Member>>,
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
    core: Core,
    app: H,
    local_addr: SocketAddr,
    accept_paused_until: Option<Instant>,
    emfile_logged: bool,
    next_stats: Option<Instant>,
    /// Publications from the broker (other workers, other processes).
    inbox: Option<Inbox>,
}

impl<H: Handler> Reactor<H> {
    /// Binds the listener and prepares the loop.
    ///
    /// # Errors
    /// When the address cannot be bound or the poller cannot be created.
    pub fn bind(config: Config, app: H) -> io::Result<Reactor<H>> {
        let poll = Poll::new()?;
        let mut listener = listen::bind(config.addr, config.reuse_port)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr.filter(|_| config.metrics) {
            Some(addr) => {
                let mut listener = TcpListener::bind(addr)?;
                poll.registry()
                    .register(&mut listener, METRICS, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let static_files = StaticFiles::new(&config.static_dir);
        let now = Instant::now();
        let next_stats = config.stats_interval.map(|i| now + i);
        Ok(Reactor {
            core: Core {
                stats: Stats::default(),
                conns: Slab::new(),
                outbox: Outbox::default(),
                rooms: Rooms::new(config.slow_consumer),
                timers: Deadlines::default(),
                registry: poll.registry().try_clone()?,
                static_files,
                now,
                tick: Clock::new(now).tick(now),
                clock: Clock::new(now),
                next_serial: 0,
                ready: Vec::new(),
                work_left: WORK_PER_TURN,
                doomed: Vec::new(),
                shutting_down: false,
                shutdown_deadline: None,
                contexts: SharedContexts::new(config.deflate.map_or(1, |d| d.level)),
                inflate_buf: Vec::new(),
                deflate_buf: Vec::new(),
                jitter: Jitter::new(),
                handshake_bucket: config
                    .max_handshake_rate
                    .map(|(rate, burst)| TokenBucket::new(rate, burst, Clock::new(now).tick(now))),
                per_ip: HashMap::new(),
                ip_of: HashMap::new(),
                resume: Timers::default(),
                member: None,
                config,
            },
            poll,
            listener: Some(listener),
            metrics_listener,
            signals: None,
            commands: rx,
            handle: ServerHandle::new(tx, waker),
            read_buf: vec![0; READ_BUF],
            app,
            local_addr,
            accept_paused_until: None,
            emfile_logged: false,
            next_stats,
            inbox: None,
        })
    }

    /// Makes this reactor worker `member.index` of a process: its counters go to the shared
    /// board, and with a hub its publications reach the other workers (and the hub's
    /// upstream) while the hub's deliveries arrive through `inbox`.
    pub(crate) fn join(&mut self, member: Member, inbox: Option<Inbox>) {
        self.core.member = Some(Box::new(member));
        self.inbox = inbox;
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

    /// Whether static files come from disk (false: the embedded page).
    pub fn static_from_disk(&self) -> bool {
        self.core.static_files.from_disk()
    }

    /// Shuts down gracefully on SIGINT and SIGTERM.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
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
            self.log_stats();
            self.core.finish_turn(&mut self.app);
            if let Some(member) = &mut self.core.member {
                member.end_turn(&self.core.stats, &self.core.rooms, self.core.now);
            }
            if self.core.shutting_down {
                self.listener = None;
                self.metrics_listener = None;
                let expired = self
                    .core
                    .shutdown_deadline
                    .is_some_and(|d| d <= self.core.now);
                if self.core.conns.is_empty() || expired {
                    info!(
                        "shutdown complete ({} connections left open)",
                        self.core.conns.len()
                    );
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
                .resume
                .next_deadline()
                .map(|t| self.core.clock.instant(t)),
            self.accept_paused_until,
            self.next_stats,
            self.core.shutdown_deadline,
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
        let received = self
            .signals
            .as_mut()
            .is_some_and(|s| s.pending().next().is_some());
        if received {
            info!("signal received: shutting down gracefully");
            self.core.begin_shutdown();
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

    /// Reads from one connection until `WouldBlock`, a short read, or its fair share: at most
    /// [`READS_PER_EVENT`] reads and [`WORK_PER_TURN`] units of work. Out of work, the
    /// undecoded rest of the last read waits in its backlog and the connection goes on the
    /// ready list; its backlog is decoded first when that brings it back.
    fn on_readable(&mut self, key: usize, visit: Visit) {
        // Keep reading after a short read when no new edge will come: the event already
        // reported the peer's FIN (or an error), or the connection is revisited from the
        // ready list.
        let read_to_end = visit != Visit::Event { hangup: false };
        let Some(conn) = self.core.conns.get(key) else {
            return;
        };
        if visit != Visit::Ready && conn.has_backlog() {
            return; // On the ready list (or paused): its backlog goes first.
        }
        self.core.work_left = WORK_PER_TURN;
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.core.conns.get_mut(key) else {
                return;
            };
            if conn.is_dead() {
                return;
            }
            if conn.peer_eof {
                return; // Its FIN already arrived; only our output is left.
            }
            if conn.rate.as_ref().is_some_and(|r| r.paused) {
                return; // Over its rate: the resume timer brings it back.
            }
            if let Some(mut backlog) = conn.take_backlog() {
                // Decode what was read before the pause or the cut first.
                self.core.on_input(&mut self.app, key, &mut backlog);
                self.core.reaccount(key);
                if self.core.held_back(key) {
                    return;
                }
                continue;
            }
            if conn.over_backpressure(self.core.config.max_backpressure) {
                // Stop reading: TCP pushes back on a peer that sends but does not read.
                conn.read_paused = true;
                return;
            }
            if matches!(&conn.phase, Phase::Head(head) if head.held) {
                // Answer the requests read before the pause before reading more.
                self.core.on_head_bytes(&mut self.app, key);
                self.core.reaccount(key);
                continue;
            }
            // TLS: ciphertext into the upper half, plaintext drained into the lower half.
            let tls = conn.tls.is_some();
            let buf = if tls {
                self.read_buf.get_mut(PLAIN_LEN..).unwrap_or_default()
            } else {
                self.read_buf.as_mut_slice()
            };
            let full = buf.len();
            let n = match conn.socket.read(buf) {
                Ok(0) => {
                    self.core.peer_closed(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.core.socket_error(key, &e);
                    return;
                }
            };
            conn.last_seen = self.core.tick;
            conn.ping_sent = false;
            self.core.stats.bytes_in += n as u64;
            if tls {
                if !self.on_ciphertext(key, n) {
                    return;
                }
            } else {
                let input = self.read_buf.get_mut(..n).unwrap_or_default();
                self.core.on_input(&mut self.app, key, input);
            }
            self.core.reaccount(key);
            if self.core.held_back(key) {
                return;
            }
            if n < full && !read_to_end {
                // A short read drained the socket (as tokio also assumes on Linux): the next
                // arrival raises a new edge.
                return;
            }
        }
        self.core.ready.push(key);
    }

    /// Decrypts the `n` bytes of ciphertext just read and hands the plaintext to the core as
    /// a plain connection's bytes; then writes what rustls itself has to say (handshake
    /// records, alerts), even when the application said nothing. False when the connection
    /// ended.
    fn on_ciphertext(&mut self, key: usize, n: usize) -> bool {
        let (plain, cipher) = self.read_buf.split_at_mut(PLAIN_LEN);
        let mut cipher: &[u8] = cipher.get(..n).unwrap_or_default();
        loop {
            let Some(conn) = self.core.conns.get_mut(key).filter(|c| !c.is_dead()) else {
                return false;
            };
            let Some(tls) = conn.tls.as_deref_mut() else {
                return false;
            };
            let step = match tls.decrypt(&mut cipher, plain) {
                Ok(step) => step,
                Err(e) => {
                    let during = if tls.is_handshaking() {
                        " handshake"
                    } else {
                        ""
                    };
                    debug!("#{key}: TLS{during} error: {e}: closing");
                    let _ = tls.send_pending(&mut conn.socket); // the alert, best effort
                    self.core.kill(key);
                    return false;
                }
            };
            if step.len > 0 {
                let input = plain.get_mut(..step.len).unwrap_or_default();
                self.core.on_input(&mut self.app, key, input);
            }
            if step.closed {
                self.core.peer_closed(key);
                return false;
            }
            if cipher.is_empty() && step.len < plain.len() {
                break;
            }
        }
        self.core.write_pending(&mut self.app, key);
        true
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

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The few errno values the accept loop distinguishes (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

impl Core {
    fn id_of(&self, key: usize) -> Option<ConnId> {
        self.conns.get(key).map(|c| ConnId {
            key: key as u32,
            serial: c.serial,
        })
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        let key = id.key as usize;
        self.conns
            .get(key)
            .filter(|c| c.serial == id.serial)
            .map(|_| key)
    }

    /// Sets a connection's deadline (replacing the one it had).
    fn arm(&mut self, key: usize, at: Tick) {
        if let Some(conn) = self.conns.get(key) {
            self.timers.arm(key, conn.serial, at);
        }
    }

    fn clock_start(&self) -> Instant {
        self.clock.instant(Tick::NONE)
    }

    /// Whether decoding stopped with input left over: out of work for this turn (then it
    /// goes on the ready list for the next) or over its rate (the resume timer brings it
    /// back).
    fn held_back(&mut self, key: usize) -> bool {
        let Some(rate) = self.conns.get(key).and_then(|c| c.rate.as_deref()) else {
            return false;
        };
        if rate.backlog.is_empty() {
            return false;
        }
        if !rate.paused {
            self.ready.push(key);
        }
        true
    }
}

fn opcode_of(msg: &Message<'_>) -> OpCode {
    match msg {
        Message::Text(_) => OpCode::Text,
        Message::Binary(_) => OpCode::Binary,
    }
}
