//! Handing live connections to a new process on `SIGUSR2`: a deploy that closes nothing.
//!
//! # How an upgrade goes
//! 1. `SIGUSR2` reaches the running server (the *old* process). It starts the program at the
//!    path it was started from, with the same arguments, and gives it one end of a fresh
//!    socketpair as its standard input ([`INHERIT_ENV`] tells it so): no path exists that
//!    another local user could connect to.
//! 2. The new process says hello (`protocol`): the handoff protocol and the
//!    connection-state format must match, or the old process refuses before a descriptor
//!    moves.
//! 3. The old process sends its listening sockets (`LISTENERS`) and stops accepting: the
//!    new process accepts from then on, on the very same sockets.
//! 4. At the end of each loop turn the old process sends a batch (`CONNS`) of up to
//!    `wire::MAX_FDS` connections: each socket (`SCM_RIGHTS`) with its `record` — the
//!    protocol connection's whole state, path, client address, rooms, output not yet written
//!    and the application's own bytes ([`crate::Handler::export`]). It waits for the new
//!    process to confirm the batch (`ADOPTED`) before it forgets those connections; until
//!    then they are untouched, so a batch that is not confirmed is served on here as if
//!    nothing happened.
//!    Room publications made meanwhile reach the members on both sides once and in order:
//!    the old process sequences them all (`relay`).
//! 5. What cannot move is drained as a shutdown drains it (1001): TLS connections (rustls
//!    cannot export a live session) and connections with deflate contexts of their own
//!    (context takeover: zlib's history cannot be exported). A request being answered or
//!    events not handed to the application yet wait for the next turn.
//! 6. Once nothing is left, the old process sends its counters (`DONE`); the new one adds
//!    them to its own, runs the takeover hook (the binary rewrites `--pid-file` there) and
//!    answers `TAKEN`; the old process exits.
//!
//! If the new program does not start, refuses, closes the channel or does not answer in
//! time, the old process kills it (by its pid), resumes accepting and serves on what it has
//! not handed over; `wsloop_upgrades_failed_total` counts it.
//!
//! With `--workers N` the old process's worker 0 starts the new process and hands it, first
//! thing on the inherited channel, one more channel per other worker (`WORKER_CHANNELS`);
//! each worker then moves its own listener and connections to its counterpart, and the new
//! process's workers take over together (`Takeover`).
//!
//! With `--redis`, before any connection moves, the old process names its rooms (`ROOMS`)
//! and the new one answers once Redis has confirmed its SUBSCRIBE to each (`ROOMS_READY`).
//! Both processes then receive every message of those rooms; the old one delivers and relays
//! what it receives until it goes, and the new one delivers from its own subscription only
//! what comes after the last message relayed — what it held meanwhile and what is still on
//! its way from Redis when the handoff ends (`relay::Cut`: messages are named by their
//! publisher and its sequence number on the room).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::handle::ServerHandle;

pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod record;
pub(crate) mod relay;
pub(crate) mod wire;

/// Set (to `1`) in the environment of the new process: its standard input is the handoff
/// channel.
pub const INHERIT_ENV: &str = "WSLOOP_UPGRADE";

/// Old → new: the listening sockets (body: a bit per listener, 1 the main one, 2 `/metrics`).
pub(crate) const LISTENERS: u8 = 3;
/// Old → new: a batch of connections ([`record::encode_batch`]) with their sockets.
pub(crate) const CONNS: u8 = 4;
/// New → old: the batch was taken (body: its count as a `u32`).
pub(crate) const ADOPTED: u8 = 5;
/// New → old: the batch was not taken (body: why); the old process serves it on.
pub(crate) const NOT_ADOPTED: u8 = 6;
/// Old → new: everything moved (body: the old process's counters).
pub(crate) const DONE: u8 = 7;
/// New → old: the new process serves everything now.
pub(crate) const TAKEN: u8 = 8;
/// Either way: room publications ([`relay`]).
pub(crate) const RELAY: u8 = 9;
/// Old → new, first on the inherited channel with `--workers N`: the channels of workers 1
/// to N-1 (worker 0 keeps the inherited one).
pub(crate) const WORKER_CHANNELS: u8 = 10;
/// Old → new, with `--redis`, before any connection: the rooms the connections to come are
/// in ([`record::encode_topics`]).
pub(crate) const ROOMS: u8 = 11;
/// New → old: Redis has confirmed a SUBSCRIBE to each of those rooms: their members may move
/// without a publication from another process falling between the two.
pub(crate) const ROOMS_READY: u8 = 12;

/// Whether this process was started by an upgrade (see [`INHERIT_ENV`]).
pub fn inheriting() -> bool {
    std::env::var_os(INHERIT_ENV).is_some()
}

/// How this server upgrades on `SIGUSR2`: the program to start and its arguments, and what
/// the new process does once it has taken over.
#[derive(Clone)]
pub struct Upgrades {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) on_takeover: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The process's workers (set by [`crate::Workers`]).
    pub(crate) workers: usize,
    /// Worker 0's way to hand the other workers their channels.
    pub(crate) siblings: Vec<ServerHandle>,
    /// Rooms span processes through Redis (set by [`crate::Workers`]): the new process
    /// subscribes to the old one's rooms before members move.
    pub(crate) via_redis: bool,
}

impl Upgrades {
    /// Upgrades start `program` with `args`. Give the path the server was started from
    /// (resolved at start: a deploy replaces the file at that path).
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Upgrades {
        Upgrades {
            program,
            args,
            on_takeover: None,
            workers: 1,
            siblings: Vec::new(),
            via_redis: false,
        }
    }

    /// Runs `hook` in the new process once the old one has handed everything over (e.g. to
    /// rewrite a pid file).
    pub fn on_takeover(mut self, hook: impl Fn() + Send + Sync + 'static) -> Upgrades {
        self.on_takeover = Some(Arc::new(hook));
        self
    }
}

/// What the new process's workers share to take over together: each says when its old
/// counterpart is done, and none stops relaying publications before all have (see
/// [`relay`]).
#[derive(Debug)]
pub(crate) struct Takeover {
    workers: usize,
    /// Workers whose old counterpart is not done yet.
    left: AtomicUsize,
    /// Workers still relaying their publications through the old process.
    relaying: AtomicUsize,
}

impl Takeover {
    pub(crate) fn new(workers: usize) -> Takeover {
        Takeover {
            workers,
            left: AtomicUsize::new(workers),
            relaying: AtomicUsize::new(workers),
        }
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// One worker's counterpart is done; true for the last.
    pub(crate) fn arrive(&self) -> bool {
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }

    pub(crate) fn all_arrived(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }

    /// One worker stopped relaying (its publications go to the new process's hub now).
    pub(crate) fn stop_relaying(&self) {
        self.relaying.fetch_sub(1, Ordering::AcqRel);
    }

    /// No worker relays any more: the old process's workers may go (until then they relay
    /// what the others still send them to their counterparts here).
    pub(crate) fn none_relaying(&self) -> bool {
        self.relaying.load(Ordering::Acquire) == 0
    }
}

impl fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrades")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("on_takeover", &self.on_takeover.is_some())
            .field("workers", &self.workers)
            .finish()
    }
}
