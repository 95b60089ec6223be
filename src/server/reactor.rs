//! The mio `Poll` loop: accept, read into one shared buffer, hand bytes to the protocol core,
//! hand events to the application, write each connection's output once per turn, fire timers.
//!
//! # One loop turn
//! 1. `poll` (timeout: the next timer, or zero while connections wait for a fair share).
//! 2. For each event: accept until `WouldBlock`; read until `WouldBlock` (bounded per event
//!    for fairness); flush on `WRITABLE`.
//! 3. Fire due timers (handshake, keepalive/idle, close-wait).
//! 4. Remove dead connections (telling the application), then write this turn's outbox: one
//!    vectored write per connection, queueing only what the socket refused.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::protocol::close::{parse_close_payload, truncate_reason};
use crate::protocol::deflate::negotiate;
use crate::protocol::frame::{data_header, server_header, OpCode, MAX_HEADER_LEN};
use crate::protocol::handshake::{
    validate_upgrade, write_accept_response, HandshakeError, RequestHead, EMPTY_HEADER,
};
use crate::protocol::proxy::{self, ProxyHeader};
use crate::protocol::{CloseCode, Event, MessageKind, Outcome, ProtocolError};

use super::admission::{origin_allowed, Jitter};
use super::app::{ConnId, Context, Decision, Handler, Message, Request};
use super::broker::{Delivery, Inbox, Kind};
use super::client_addr::client_ip;
use super::compression::{ConnDeflate, SharedContexts};
use super::config::Config;
use super::config::{ProxyMode, RatePolicy};
use super::connection::RateState;
use super::connection::{Connection, Phase};
use super::handle::{Command, ServerHandle};
use super::http::{error_response, ok_response, StaticFiles};
use super::listen;
use super::metrics;
use super::out_queue::Outbox;
use super::ratelimit::TokenBucket;
use super::rooms::{RoomPolicy, Rooms};
use super::stats::{RejectReason, Stats};
use super::timer::{Clock, Tick, Timers};
use super::workers::Member;

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
    timers: Timers,
    registry: Registry,
    static_files: StaticFiles,
    now: Instant,
    /// `now` as a [`Tick`], for connection deadlines.
    tick: Tick,
    clock: Clock,
    next_serial: u32,
    /// Connections whose reads were cut short (fairness) or resumed after backpressure.
    ready: Vec<usize>,
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
                timers: Timers::default(),
                registry: poll.registry().try_clone()?,
                static_files,
                now,
                tick: Clock::new(now).tick(now),
                clock: Clock::new(now),
                next_serial: 0,
                ready: Vec::new(),
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
                            self.on_readable(key, hangup);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.core.ready) {
                self.on_readable(key, true);
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
            if let Some(member) = &self.core.member {
                member.board.store(member.index, &self.core.stats);
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

    /// Reads from one connection until `WouldBlock`, a short read, or its fair share.
    ///
    /// `read_to_end`: keep reading after a short read, because no new edge will come — the
    /// event already reported the peer's FIN (or an error), or the connection is revisited
    /// from the ready list.
    fn on_readable(&mut self, key: usize, read_to_end: bool) {
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
            if let Some(rate) = conn.rate.as_mut().filter(|r| !r.backlog.is_empty()) {
                // Decode what was read before the pause first.
                let mut backlog = std::mem::take(&mut rate.backlog);
                self.core.on_input(&mut self.app, key, &mut backlog);
                self.core.reaccount(key);
                continue;
            }
            if conn.buffered_amount() > self.core.config.max_backpressure {
                // Stop reading: TCP pushes back on a peer that sends but does not read.
                conn.read_paused = true;
                return;
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

    fn add_connection(&mut self, mut socket: TcpStream, peer: SocketAddr, metrics_only: bool) {
        if self.shutting_down {
            return;
        }
        let refusal = if self.conns.len() >= self.config.max_conns {
            Some(RejectReason::MaxConns)
        } else if self.over_budget() {
            Some(RejectReason::MemoryBudget)
        } else if !metrics_only
            && self
                .handshake_bucket
                .as_mut()
                .is_some_and(|bucket| !bucket.try_take(self.tick, 1))
        {
            Some(RejectReason::HandshakeRate)
        } else {
            None
        };
        if refusal.is_some() && self.conns.len() >= self.config.max_conns + REJECT_OVERFLOW {
            // Not even room to say so: drop the socket.
            self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
            return;
        }
        // The metrics listener is always plain HTTP.
        let tls_config = self.config.tls.as_ref().filter(|_| !metrics_only);
        let tls = match tls_config {
            // A 503 cannot be said before a TLS handshake: over the limit, just close.
            Some(_) if refusal.is_some() => {
                debug!("{peer}: refused before the TLS handshake: closing");
                self.stats.reject(refusal.unwrap_or(RejectReason::MaxConns));
                return;
            }
            Some(config) => match config.accept() {
                Ok(session) => Some(session),
                Err(e) => {
                    warn!("{peer}: {e}");
                    return;
                }
            },
            None => None,
        };
        let _ = socket.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            return;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Connection::new(socket, self.next_serial, self.tick, tls);
        conn.metrics_only = metrics_only;
        entry.insert(conn);
        self.stats.accepted += 1;
        self.stats.open += 1;
        if let Some(reason) = refusal {
            debug!("{peer}: refused ({}): 503", reason.label());
            self.reject_busy(key, reason);
        } else {
            debug!("{peer}: accepted as #{key}");
            self.arm(key, self.tick.after(self.config.handshake_timeout));
        }
    }

    /// Sets a connection's deadline and schedules it.
    fn arm(&mut self, key: usize, at: Tick) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.deadline = at;
            self.timers.schedule(at, key, conn.serial);
        }
    }

    fn on_input<H: Handler>(&mut self, app: &mut H, key: usize, input: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.phase {
            Phase::Head(head) => {
                head.buf.extend_from_slice(input);
                self.on_head_bytes(app, key);
            }
            Phase::Open | Phase::CloseSent => self.on_frames(app, key, input),
            Phase::Linger | Phase::Dead => {}
        }
    }

    /// Handles the request head(s) collected so far: plain HTTP requests (possibly several,
    /// pipelined on a keep-alive connection) and at most one upgrade.
    fn on_head_bytes<H: Handler>(&mut self, app: &mut H, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Head(head) = &mut conn.phase else {
                return;
            };
            if !head.proxy_done
                && self.config.proxy_protocol != ProxyMode::Off
                && !conn.metrics_only
            {
                let peer = conn.socket.peer_addr().map(|a| a.ip()).ok();
                let trusted = peer.is_some_and(|ip| trusted_peer(&self.config.trusted_proxies, ip));
                match proxy::parse(&head.buf) {
                    Ok(ProxyHeader::Partial) => return,
                    Ok(ProxyHeader::Absent)
                        if self.config.proxy_protocol == ProxyMode::Optional =>
                    {
                        head.proxy_done = true;
                    }
                    Ok(ProxyHeader::Found { len, source }) if trusted => {
                        head.buf.drain(..len.min(head.buf.len()));
                        head.client = source;
                        head.proxy_done = true;
                    }
                    outcome => {
                        debug!("#{key}: PROXY header refused from {peer:?}: {outcome:?}");
                        self.stats.reject(RejectReason::Proxy);
                        self.kill(key);
                        return;
                    }
                }
                continue;
            }
            let end = match head.scanner.scan(&head.buf, self.config.max_head) {
                Ok(Some(end)) => end,
                Ok(None) => return,
                Err(e) => {
                    self.refuse(key, e);
                    return;
                }
            };
            let Phase::Head(mut head) = std::mem::replace(&mut conn.phase, Phase::Linger) else {
                return;
            };
            let mut rest = head.buf.split_off(end);
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let req = match RequestHead::parse(&head.buf, &mut headers) {
                Ok(req) => req,
                Err(e) => {
                    self.refuse(key, e);
                    return;
                }
            };
            if req.wants_websocket() {
                if self.upgrade(app, key, &req, head.client) {
                    // Bytes after the head are the first frames: decode them now.
                    self.on_frames(app, key, &mut rest);
                }
                return;
            }
            let keep_alive = req.keep_alive() && !self.shutting_down;
            let response = self.plain_http(key, &req, keep_alive);
            let closes = !keep_alive || !response.starts_with(b"HTTP/1.1 200");
            self.queue(key, &[&response]);
            if closes {
                self.linger(key);
                return;
            }
            // Keep-alive: the next request may already be in `rest`.
            head.buf = rest;
            head.scanner = Default::default();
            if let Some(conn) = self.conns.get_mut(key) {
                conn.phase = Phase::Head(head);
            }
            self.arm(key, self.tick.after(self.config.handshake_timeout));
        }
    }

    fn plain_http(&mut self, key: usize, req: &RequestHead<'_, '_>, keep_alive: bool) -> Vec<u8> {
        self.stats.http_requests += 1;
        let path = req.target.split('?').next().unwrap_or_default();
        let head_only = req.method == "HEAD";
        let metrics_only = self.conns.get(key).is_some_and(|c| c.metrics_only);
        let metrics_here = if metrics_only {
            true
        } else {
            self.config.metrics && self.config.metrics_addr.is_none()
        };
        if path == "/metrics" && metrics_here && matches!(req.method, "GET" | "HEAD") {
            let text = metrics::render(&self.stats, &self.rooms);
            return ok_response(
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                head_only,
                keep_alive,
            );
        }
        if metrics_only {
            return error_response(404, &[]);
        }
        if path == "/stats" && matches!(req.method, "GET" | "HEAD") {
            let json = match &self.member {
                Some(member) => member.stats_json(&self.stats),
                None => self.stats.to_json(),
            };
            return ok_response(
                "application/json",
                json.as_bytes(),
                req.method == "HEAD",
                keep_alive,
            );
        }
        self.static_files
            .respond(req.method, req.target, keep_alive)
    }

    /// Validates an upgrade and asks the application; on success the connection is open.
    fn upgrade<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        req: &RequestHead<'_, '_>,
        proxied: Option<SocketAddr>,
    ) -> bool {
        if let Err(e) = validate_upgrade(req) {
            self.refuse(key, e);
            return false;
        }
        let key_header = req.header("sec-websocket-key").unwrap_or_default();
        let origin = req.header("origin");
        if !origin_allowed(origin, req.header("host"), &self.config.allow_origins) {
            debug!("#{key}: origin {origin:?} not allowed: 403");
            self.reject_http(key, 403, &[], RejectReason::Origin);
            return false;
        }
        if self.over_budget() {
            debug!("#{key}: over --max-buffered: 503");
            self.reject_busy(key, RejectReason::MemoryBudget);
            return false;
        }
        let (Some(id), Some(conn)) = (self.id_of(key), self.conns.get(key)) else {
            return false;
        };
        let socket_peer = conn
            .socket
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer = self.client_addr(proxied.unwrap_or(socket_peer), req);
        if let Some(cap) = self.config.max_conns_per_ip {
            if self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= cap {
                debug!("#{key}: {} already has {cap} connections: 503", peer.ip());
                self.reject_busy(key, RejectReason::PerIp);
                return false;
            }
            *self.per_ip.entry(peer.ip()).or_default() += 1;
            self.ip_of.insert(key, peer.ip());
        }
        let request = Request {
            path: req.target,
            headers: req.headers,
            peer,
        };
        let decision = app.on_open(&mut Context { core: self }, id, &request);
        let protocol = match decision {
            Decision::Accept(protocol) => protocol,
            Decision::Reject(status) => {
                debug!("#{key}: application rejected the upgrade: {status}");
                self.reject_http(key, status, &[], RejectReason::Application);
                return false;
            }
        };
        let deflate = self.config.deflate.as_ref().and_then(|config| {
            let offers = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| h.value);
            negotiate(offers, config)
        });
        let extensions = deflate.map(|params| params.response_value());
        let mut response = Vec::with_capacity(256);
        write_accept_response(
            &mut response,
            key_header,
            protocol.as_deref(),
            extensions.as_deref(),
        );
        self.queue(key, &[&response]);
        self.stats.upgraded += 1;
        debug!("#{key}: upgraded {} from {peer}", req.target);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Open;
            conn.app_open = true;
            if let Some(params) = deflate {
                conn.decoder.enable_compression();
                conn.deflate = Some(Box::new(ConnDeflate::new(params)));
            }
        }
        self.arm_idle(key);
        true
    }

    /// The client's address: `Forwarded` / `X-Forwarded-For` are honoured only when
    /// `--trusted-proxy` is set and only for hops it trusts.
    fn client_addr(&self, peer: SocketAddr, req: &RequestHead<'_, '_>) -> SocketAddr {
        if self.config.trusted_proxies.is_empty() {
            return peer;
        }
        let joined = |name: &str| {
            let values: Vec<&str> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        let forwarded = joined("forwarded");
        let xff = joined("x-forwarded-for");
        let ip = client_ip(
            peer.ip(),
            &self.config.trusted_proxies,
            forwarded.as_deref(),
            xff.as_deref(),
        );
        SocketAddr::new(ip, if ip == peer.ip() { peer.port() } else { 0 })
    }

    fn refuse(&mut self, key: usize, e: HandshakeError) {
        debug!("#{key}: bad request: {e}: {}", e.status());
        let extra: &[(&str, &str)] = if e == HandshakeError::UnsupportedVersion {
            &[("Sec-WebSocket-Version", "13")]
        } else {
            &[]
        };
        let status = e.status();
        self.reject_http(key, status, extra, RejectReason::for_status(status));
    }

    /// Answers 503 with a jittered `Retry-After`, so a fleet told to come back spreads out.
    fn reject_busy(&mut self, key: usize, reason: RejectReason) {
        let retry = self.jitter.retry_after(2).to_string();
        self.reject_http(key, 503, &[("Retry-After", &retry)], reason);
    }

    fn reject_http(
        &mut self,
        key: usize,
        status: u16,
        extra: &[(&str, &str)],
        reason: RejectReason,
    ) {
        self.stats.reject(reason);
        self.queue(key, &[&error_response(status, extra)]);
        self.linger(key);
    }

    /// Brings the process-wide byte count up to date with what connection `key` holds now.
    /// Called after anything that can change its queue, partial message or contexts.
    fn reaccount(&mut self, key: usize) {
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
    fn shed(&mut self) {
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
    fn over_budget(&self) -> bool {
        self.stats.buffered_bytes > self.config.max_buffered as u64
    }

    /// Nothing more to say: flush, FIN, discard input until EOF or the close timeout.
    fn linger(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Linger;
            // Nothing left to write (e.g. the peer answered our close): FIN now. Otherwise
            // `after_write` sends it once the queue drains.
            conn.finish_when_drained();
        }
        self.arm(key, self.tick.after(self.config.close_timeout));
    }

    fn on_frames<H: Handler>(&mut self, app: &mut H, key: usize, input: &mut [u8]) {
        let mut pos = 0;
        while pos < input.len() {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !matches!(conn.phase, Phase::Open | Phase::CloseSent) {
                return;
            }
            if !self.rate_admits(key) {
                // Over its rate: the rest waits until the buckets refill.
                if let Some(rate) = self.conns.get_mut(key).and_then(|c| c.rate.as_mut()) {
                    rate.backlog
                        .extend_from_slice(input.get(pos..).unwrap_or_default());
                }
                return;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let rest = input.get_mut(pos..).unwrap_or_default();
            let decoded = conn.decoder.decode(&self.config.limits, rest);
            pos += decoded.consumed;
            match decoded.outcome {
                Outcome::NeedMore => return,
                Outcome::Event(event) => self.on_event(app, key, event, rest),
                Outcome::Error(e) => {
                    self.fail(key, e);
                    return;
                }
            }
        }
    }

    fn on_event<H: Handler>(&mut self, app: &mut H, key: usize, event: Event, input: &[u8]) {
        let open = self.conns.get(key).is_some_and(Connection::is_open);
        match event {
            Event::Message(kind, payload) => {
                if open {
                    self.deliver(app, key, kind, payload.bytes(input));
                }
            }
            Event::Compressed(kind, payload) => {
                if open {
                    self.inflate_and_deliver(app, key, kind, payload.bytes(input));
                }
            }
            Event::Ping(payload) => {
                if open {
                    self.queue_frame(key, OpCode::Pong, &[payload.bytes(input)]);
                }
            }
            Event::Pong(payload) => self.record_rtt(payload.bytes(input)),
            Event::Close { code, payload } => {
                let close = parse_close_payload(payload.bytes(input))
                    .unwrap_or(crate::protocol::close::ClosePayload { code, reason: "" });
                debug!("#{key}: close received: {:?} {:?}", code, close.reason);
                self.stats
                    .close_received
                    .add(code.unwrap_or(CloseCode::NO_STATUS));
                if open {
                    // §5.5.1: answer with a close frame echoing the status code.
                    if let Some(code) = code {
                        self.stats.close_sent.add(code);
                    }
                    let echo = code.map(|c| c.0.to_be_bytes());
                    self.queue_frame(key, OpCode::Close, &[echo.as_ref().map_or(&[][..], |b| b)]);
                }
                self.notify_close(app, key, code.unwrap_or(CloseCode::NO_STATUS), close.reason);
                // The close handshake is complete: the server closes TCP first (§7.1.1).
                self.linger(key);
            }
        }
    }

    /// Hands a complete message to the application (text validated once more as `&str`).
    fn deliver<H: Handler>(&mut self, app: &mut H, key: usize, kind: MessageKind, bytes: &[u8]) {
        self.stats.messages_in += 1;
        let msg = match kind {
            MessageKind::Binary => Message::Binary(bytes),
            MessageKind::Text => match crate::protocol::utf8::validate(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => return self.fail(key, ProtocolError::InvalidUtf8),
            },
        };
        if let Some(id) = self.id_of(key) {
            app.on_message(&mut Context { core: self }, id, msg);
        }
        self.rate_charge(key, bytes.len());
    }

    /// The connection's rate state, created on its first message under a rate limit.
    fn rate_state(&mut self, key: usize) -> Option<&mut RateState> {
        let tick = self.tick;
        let (msg_rate, byte_rate) = (self.config.max_msg_rate, self.config.max_bytes_rate);
        if msg_rate.is_none() && byte_rate.is_none() {
            return None;
        }
        let conn = self.conns.get_mut(key)?;
        Some(conn.rate.get_or_insert_with(|| {
            Box::new(RateState {
                messages: msg_rate.map(|r| TokenBucket::new(r, r, tick)),
                bytes: byte_rate.map(|r| TokenBucket::new(r, r, tick)),
                paused: false,
                backlog: Vec::new(),
            })
        }))
    }

    /// Before decoding more of a connection's input: whether its budgets allow another
    /// message. Over them it is paused (or closed); `on_frames` keeps the undecoded rest.
    fn rate_admits(&mut self, key: usize) -> bool {
        let tick = self.tick;
        let Some(rate) = self.rate_state(key) else {
            return true;
        };
        if rate.paused {
            return false;
        }
        let wait = [
            rate.messages.as_ref().map(|b| b.wait(tick, 1)),
            rate.bytes.as_ref().map(|b| b.wait(tick, 1)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            return true;
        }
        self.over_rate(key, wait);
        false
    }

    /// After a message of `len` bytes: charges it to the connection's budgets (emptying them
    /// at most: a message larger than the byte burst takes the whole burst).
    fn rate_charge(&mut self, key: usize, len: usize) {
        let tick = self.tick;
        let Some(rate) = self.rate_state(key) else {
            return;
        };
        if let Some(bucket) = rate.messages.as_mut() {
            bucket.charge(tick, 1);
        }
        if let Some(bucket) = rate.bytes.as_mut() {
            bucket.charge(tick, len as u64);
        }
    }

    /// A connection over its rate: pause reading for `wait` (TCP pushes back on the sender),
    /// or close it with 1008 (`--rate-limit-policy close`).
    fn over_rate(&mut self, key: usize, wait: Duration) {
        self.stats.rate_limited += 1;
        if self.config.rate_policy == RatePolicy::Close {
            debug!("#{key}: over --max-msg-rate: closing with 1008");
            self.start_close(key, CloseCode::POLICY_VIOLATION, "rate limit");
            return;
        }
        let tick = self.tick;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let serial = conn.serial;
        if let Some(rate) = conn.rate.as_mut().filter(|r| !r.paused) {
            debug!("#{key}: over its message rate: pausing reads for {wait:?}");
            rate.paused = true;
            let at = tick.after(wait.max(Duration::from_millis(1)));
            self.resume.schedule(at, key, serial);
        }
    }

    /// Inflates a compressed message (bounded by the message limit: a deflate bomb fails with
    /// 1009 after at most that many bytes) and delivers it.
    fn inflate_and_deliver<H: Handler>(
        &mut self,
        app: &mut H,
        key: usize,
        kind: MessageKind,
        bytes: &[u8],
    ) {
        let mut out = std::mem::take(&mut self.inflate_buf);
        out.clear();
        let max = usize::try_from(self.config.limits.max_message).unwrap_or(usize::MAX);
        let result = match self.conns.get_mut(key).and_then(|c| c.deflate.as_mut()) {
            Some(deflate) => self.contexts.inflate(deflate, bytes, &mut out, max),
            None => Err(ProtocolError::ReservedBits),
        };
        match result {
            Ok(()) => self.deliver(app, key, kind, &out),
            Err(e) => self.fail(key, e),
        }
        if out.capacity() <= READ_BUF {
            self.inflate_buf = out;
        }
    }

    /// A keepalive ping carries its send time (µs since start); its pong gives the round trip.
    /// Pongs that are not answers to ours (other lengths, impossible times) are ignored.
    fn record_rtt(&mut self, payload: &[u8]) {
        let Ok(sent) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) else {
            return;
        };
        let now = self
            .now
            .saturating_duration_since(self.clock_start())
            .as_micros() as u64;
        if let Some(rtt) = now.checked_sub(sent).filter(|&rtt| rtt < 3_600_000_000) {
            self.stats.ping_rtt.record(rtt);
        }
    }

    fn clock_start(&self) -> Instant {
        self.clock.instant(Tick::NONE)
    }

    /// Fails the connection (§7.1.7): one close frame with the error's code, then TCP closes.
    fn fail(&mut self, key: usize, e: ProtocolError) {
        let code = CloseCode::from(&e);
        debug!("#{key}: protocol error: {e}: closing with {code}");
        self.stats.count_protocol_error(code);
        let open = self.conns.get(key).is_some_and(Connection::is_open);
        if open {
            self.queue_close(key, code, "");
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.close_code.get_or_insert(code);
        }
        self.linger(key);
    }

    fn queue_frame(&mut self, key: usize, opcode: OpCode, parts: &[&[u8]]) {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = server_header(opcode, len, &mut header);
        let mut all: [&[u8]; 3] = [header.get(..n).unwrap_or_default(), &[], &[]];
        for (slot, part) in all.iter_mut().skip(1).zip(parts) {
            *slot = part;
        }
        self.queue(key, &all);
    }

    fn queue_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        self.stats.close_sent.add(code);
        let reason = truncate_reason(reason);
        self.queue_frame(
            key,
            OpCode::Close,
            &[&code.0.to_be_bytes(), reason.as_bytes()],
        );
    }

    /// Corks bytes for `key` until the end of the turn.
    fn queue(&mut self, key: usize, parts: &[&[u8]]) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.corked += parts.iter().map(|p| p.len()).sum::<usize>();
            self.outbox.push_bytes(key, parts);
        }
    }

    /// Tells the application once that a connection it saw open has ended.
    fn notify_close<H: Handler>(&mut self, app: &mut H, key: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !std::mem::take(&mut conn.app_open) {
            return;
        }
        let id = ConnId {
            key: key as u32,
            serial: conn.serial,
        };
        self.leave_rooms(key);
        app.on_close(&mut Context { core: self }, id, code, reason);
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
    fn queue_message(&mut self, key: usize, msg: &Message<'_>) {
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
    fn compress_for(&mut self, key: usize, payload: &[u8]) -> Option<Vec<u8>> {
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
    fn start_close(&mut self, key: usize, code: CloseCode, reason: &str) {
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

    pub(crate) fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let added = self
            .key_of(id)
            .is_some_and(|key| self.rooms.subscribe(key, topic));
        if added && self.member.is_some() && self.rooms.members(topic).len() == 1 {
            self.interest(topic, true);
        }
        added
    }

    pub(crate) fn unsubscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let removed = self
            .key_of(id)
            .is_some_and(|key| self.rooms.unsubscribe(key, topic));
        if removed && self.member.is_some() && self.rooms.members(topic).is_empty() {
            self.interest(topic, false);
        }
        removed
    }

    /// Tells the hub that this reactor gained its first or lost its last subscriber to
    /// `topic` (nothing to do without one).
    fn interest(&self, topic: &str, subscribed: bool) {
        if let Some(member) = &self.member {
            member.interest(topic, subscribed);
        }
    }

    /// Removes a connection from every room, telling the hub about rooms it left empty.
    fn leave_rooms(&mut self, key: usize) {
        let member = self.member.as_deref();
        self.rooms.remove_conn(key, |topic| {
            if let Some(member) = member {
                member.interest(topic, false);
            }
        });
    }

    /// A publication from the broker: this reactor's subscribers only.
    fn deliver_from_broker(&mut self, delivery: &Delivery) {
        let msg = match delivery.kind {
            Kind::Binary => Message::Binary(&delivery.payload),
            Kind::Text => match crate::protocol::utf8::validate(&delivery.payload) {
                Ok(text) => Message::Text(text),
                Err(_) => {
                    debug!("broker: dropping invalid UTF-8 text on {}", delivery.topic);
                    return;
                }
            },
        };
        self.stats.broker_in += 1;
        self.publish_local(Some(&delivery.topic), msg);
    }

    /// Publishes to `topic` (or, with `None`, broadcasts to every open connection of this
    /// reactor): local subscribers first, then the broker when this reactor has one.
    pub(crate) fn publish(&mut self, topic: Option<&str>, msg: Message<'_>) -> usize {
        self.stats.publications += 1;
        let delivered = self.publish_local(topic, msg);
        if let (Some(member), Some(topic)) = (&self.member, topic) {
            member.publish(topic, &msg);
        }
        delivered
    }

    /// Encodes `msg` into one shared frame and queues it for every member of `topic` on this
    /// reactor (or every open connection). Members over the backpressure limit get the
    /// slow-consumer policy instead.
    fn publish_local(&mut self, topic: Option<&str>, msg: Message<'_>) -> usize {
        let opcode = opcode_of(&msg);
        let payload = msg.as_bytes();
        let frame = shared_frame(opcode, false, payload);
        // Deflate receivers without context takeover share one compressed frame per window
        // size; those with context takeover need their own compression.
        let mut compressed: [Option<Rc<[u8]>>; 7] = Default::default();
        let (room, policy) = topic
            .and_then(|t| self.rooms.get(t))
            .map_or((0, self.config.slow_consumer), |r| (r.id, r.policy));
        let members: Vec<usize> = match topic {
            Some(topic) => self.rooms.members(topic).to_vec(),
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.is_open())
                .map(|(k, _)| k)
                .collect(),
        };
        let mut delivered = 0;
        for key in members {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.is_open() {
                continue;
            }
            if conn.buffered_amount() + payload.len() > self.config.max_backpressure {
                self.stats.backpressure_closes += 1;
                let dropped_old = match policy {
                    RoomPolicy::Close => {
                        warn!("#{key}: send queue over --max-backpressure: closing with 1008");
                        self.start_close(key, CloseCode::POLICY_VIOLATION, "slow consumer");
                        continue;
                    }
                    RoomPolicy::DropOldest | RoomPolicy::LatestOnly if room != 0 => {
                        let all = policy == RoomPolicy::LatestOnly;
                        conn.out.drop_room_frames(room, all).0
                    }
                    _ => 0,
                };
                self.reaccount(key);
                // Older frames made room for this one, or else this one is dropped.
                let dropped = dropped_old.max(1);
                self.stats.dropped_messages += dropped as u64;
                if let Some(topic) = topic {
                    for _ in 0..dropped {
                        self.rooms.count_drop(topic);
                    }
                }
                if dropped_old == 0 {
                    continue;
                }
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let shared_deflate = conn.deflate.as_ref().map(|d| {
                (
                    d.params.server_no_context_takeover,
                    d.params.server_max_window_bits,
                )
            });
            let min_size = self
                .config
                .deflate
                .as_ref()
                .map_or(usize::MAX, |d| d.min_size);
            delivered += 1;
            let frame = match shared_deflate {
                Some((true, bits)) if payload.len() >= min_size => {
                    let slot = compressed.get_mut(usize::from(bits.clamp(9, 15) - 9));
                    match slot {
                        Some(Some(frame)) => Rc::clone(frame),
                        Some(slot) => match self.compress_for(key, payload) {
                            Some(packed) => {
                                let frame = shared_frame(opcode, true, &packed);
                                self.deflate_buf = packed;
                                slot.insert(frame).clone()
                            }
                            None => Rc::clone(&frame),
                        },
                        None => Rc::clone(&frame),
                    }
                }
                Some((false, _)) if payload.len() >= min_size => {
                    self.queue_message(key, &msg);
                    continue;
                }
                _ => Rc::clone(&frame),
            };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.corked += frame.len();
            }
            self.outbox.push_shared(key, &frame, room);
        }
        self.stats.messages_out += delivered as u64;
        delivered
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

    fn peer_closed(&mut self, key: usize) {
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

    fn socket_error(&mut self, key: usize, e: &io::Error) {
        debug!("#{key}: socket error: {e}");
        self.kill(key);
    }

    /// Marks a connection for removal at the end of the turn.
    fn kill(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.is_dead() {
                conn.phase = Phase::Dead;
                conn.out.clear();
                self.doomed.push(key);
                self.reaccount(key);
            }
        }
    }

    fn on_writable<H: Handler>(&mut self, app: &mut H, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.writable = true;
        }
        self.write_pending(app, key);
    }

    /// Writes what waits for the socket (queued bytes, TLS records) if it accepts writes.
    fn write_pending<H: Handler>(&mut self, app: &mut H, key: usize) {
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
    fn after_write<H: Handler>(&mut self, app: &mut H, key: usize) {
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

    fn fire_timers<H: Handler>(&mut self, app: &mut H) {
        while let Some((_, key, serial)) = self.resume.pop_due(self.tick) {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.serial == serial) else {
                continue;
            };
            if let Some(rate) = conn.rate.as_mut().filter(|r| r.paused) {
                rate.paused = false;
                self.ready.push(key);
            }
        }
        while let Some((at, key, serial)) = self.timers.pop_due(self.tick) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.serial != serial || conn.deadline != at {
                continue; // Stale: re-armed or a different connection since.
            }
            conn.deadline = Tick::NONE;
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
    fn arm_idle(&mut self, key: usize) {
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
    fn keepalive(&mut self, key: usize) {
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
    fn finish_turn<H: Handler>(&mut self, app: &mut H) {
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

    fn remove_doomed<H: Handler>(&mut self, app: &mut H) {
        while let Some(key) = self.doomed.pop() {
            let code = self
                .conns
                .get(key)
                .and_then(|c| c.close_code)
                .unwrap_or(CloseCode::ABNORMAL);
            self.notify_close(app, key, code, "");
            if let Some(conn) = self.conns.try_remove(key) {
                self.stats.open -= 1;
                self.stats.buffered_bytes =
                    self.stats.buffered_bytes.saturating_sub(conn.accounted);
                if let Some(ip) = self.ip_of.remove(&key) {
                    if let Some(count) = self.per_ip.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            self.per_ip.remove(&ip);
                        }
                    }
                }
                self.leave_rooms(key);
            }
        }
    }

    /// One vectored write per connection for everything produced this turn.
    fn flush_outbox<H: Handler>(&mut self, app: &mut H) {
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

/// Whether PROXY headers from `ip` are believed (no `--trusted-proxy`: loopback only).
fn trusted_peer(trusted: &[super::client_addr::Cidr], ip: IpAddr) -> bool {
    if trusted.is_empty() {
        ip.is_loopback()
    } else {
        trusted.iter().any(|c| c.contains(ip))
    }
}

fn opcode_of(msg: &Message<'_>) -> OpCode {
    match msg {
        Message::Text(_) => OpCode::Text,
        Message::Binary(_) => OpCode::Binary,
    }
}

/// One complete server frame in a reference-counted buffer, for sharing among receivers.
fn shared_frame(opcode: OpCode, compressed: bool, payload: &[u8]) -> Rc<[u8]> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = data_header(opcode, compressed, payload.len(), &mut header);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(header.get(..n).unwrap_or_default());
    frame.extend_from_slice(payload);
    frame.into()
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
