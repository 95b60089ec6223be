//! The reactor's part in an upgrade ([`crate::upgrade`] has the whole story): in the old
//! process, starting the new one on `SIGUSR2`, giving it the listeners and moving the
//! connections batch by batch; in the new one, taking them in ([`Reactor::inherit`] and
//! [`Core::adopt`]).
//!
//! [`old`] is the old process's side, [`new`] the new one's; this module holds the state
//! both share ([`Handoff`]), the dispatch of channel events and end-of-turn work, and the
//! relay's sending end.
//!
//! The channel's socket is registered with the poll (non-blocking) so that the new process
//! closing it is noticed at once. Waiting for an answer is the one blocking step — a hello,
//! or a batch's confirmation — bounded by a read timeout: a batch of 253 connections is
//! confirmed in well under a millisecond, and the turns between batches serve everyone
//! else.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::app::Handler;
use crate::stats::Stats;
use crate::upgrade::relay;
use crate::upgrade::wire::Channel;
use crate::upgrade::{Takeover, RELAY};

use super::{Core, Reactor};

/// The channel's token in the poll.
pub(super) const UPGRADE: Token = Token(usize::MAX - 4);
/// How long the new program may take to start and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one answer may take once asked for (a batch's confirmation, the takeover).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a connection that could not move yet is looked at again.
const RETRY: Duration = Duration::from_millis(10);
/// Listener bits in [`LISTENERS`]' body.
const MAIN_LISTENER: u8 = 1;
const METRICS_LISTENER: u8 = 2;

/// Old process: the new one, as the upgrade under way knows it.
#[derive(Debug)]
pub(super) struct NewProcess {
    /// The program started (worker 0 only; the other workers' counterparts are its own).
    child: Option<Child>,
    channel: Channel<UnixStream>,
    /// Connections it confirmed.
    moved: usize,
    /// With `--redis`: until when it may take to subscribe to the rooms (no connection
    /// moves before); `None` once it has.
    rooms_until: Option<Instant>,
}

/// Where an upgrade stands in this process.
#[derive(Debug, Default)]
pub(super) enum Handoff {
    /// None under way.
    #[default]
    Idle,
    /// Old process: the new program started; its hello is awaited until `until`.
    Greeting { to: NewProcess, until: Instant },
    /// Old process: the new one has the listeners; connections move at the end of turns,
    /// the next batch at `next`.
    Moving { to: NewProcess, next: Instant },
    /// Old process: all moved; the new one's [`TAKEN`] is awaited until `until`.
    Done { to: NewProcess, until: Instant },
    /// New process: connections arrive until [`DONE`] (the old process's counters, kept
    /// here until every publication relayed has come back).
    Adopting {
        channel: Channel<UnixStream>,
        done: Option<Box<Stats>>,
        /// What the new process's workers share to take over together.
        takeover: Arc<Takeover>,
        /// This worker's old counterpart is done (counted in `takeover`).
        arrived: bool,
        /// Its publications still go through the old process (counted in `takeover`).
        relaying: bool,
        /// [`TAKEN`] sent: what the old worker relays until it closes the channel is still
        /// delivered here.
        taken: bool,
        /// With `--redis`: the old process's rooms, held subscribed until the takeover.
        pinned: Vec<String>,
        /// With `--redis`: Redis has not confirmed every room in `pinned` yet.
        rooms_awaited: bool,
    },
    /// Old process: the new one has taken over; the loop ends.
    HandedOver,
}

impl Handoff {
    /// The deadline the poll must wake up for, if any.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Handoff::Greeting { until, .. } | Handoff::Done { until, .. } => Some(*until),
            Handoff::Moving { next, .. } => Some(*next),
            // Waiting for the other workers' old counterparts: look again shortly.
            // Waiting for Redis to confirm the rooms, which raises no event here.
            Handoff::Adopting { arrived: true, .. }
            | Handoff::Adopting {
                rooms_awaited: true,
                ..
            } => Some(Instant::now() + RETRY),
            _ => None,
        }
    }

    fn channel(&mut self) -> Option<&mut Channel<UnixStream>> {
        match self {
            Handoff::Greeting { to, .. }
            | Handoff::Moving { to, .. }
            | Handoff::Done { to, .. } => Some(&mut to.channel),
            Handoff::Adopting { channel, .. } => Some(channel),
            Handoff::Idle | Handoff::HandedOver => None,
        }
    }
}

mod new;
mod old;

impl<H: Handler> Reactor<H> {
    /// When the loop must wake up for the upgrade.
    pub(super) fn handoff_deadline(&self) -> Option<Instant> {
        self.handoff.deadline()
    }

    /// The channel is readable: a hello, an answer out of turn, the peer gone, or (new
    /// process) what the old one sends.
    pub(super) fn on_channel(&mut self) {
        match std::mem::take(&mut self.handoff) {
            Handoff::Greeting { to, until } => self.on_hello(to, until),
            Handoff::Moving { to, next } => self.between_batches(to, next),
            Handoff::Done { to, until } => self.on_takeover_answer(to, until),
            adopting @ Handoff::Adopting { .. } => {
                self.handoff = adopting;
                self.on_old_process();
            }
            other @ (Handoff::Idle | Handoff::HandedOver) => self.handoff = other,
        }
    }

    /// At the end of each turn: the relayed publications go; the old process's deadlines
    /// and next batch ([`Reactor::tend_old_side`]); the new process's answers. Returns
    /// whether this process has handed everything over (the loop ends).
    pub(super) fn tend_handoff(&mut self) -> bool {
        self.send_relay();
        self.tend_old_side();
        self.answer_rooms_when_subscribed();
        self.take_over_when_done();
        matches!(self.handoff, Handoff::HandedOver)
    }

    pub(super) fn register_channel(&mut self, channel: &mut Channel<UnixStream>) -> io::Result<()> {
        let fd = channel.socket_mut().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), UPGRADE, Interest::READABLE)
    }

    pub(super) fn deregister_channel(&mut self, channel: &mut Channel<UnixStream>) {
        let fd = channel.socket_mut().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// Sends the publications this turn made (or, in the old process, sequenced) to the
    /// other process, and what the channel still holds.
    fn send_relay(&mut self) {
        if let Some(channel) = self.handoff.channel() {
            relay_out(&mut self.core, channel);
        }
    }
}

/// Sends what `core` has to relay on `channel` (also while the handoff's state is taken out
/// of the reactor), and what the channel still holds.
fn relay_out(core: &mut Core, channel: &mut Channel<UnixStream>) {
    let items = match core.relay.as_deref_mut() {
        Some(relay) if !relay.out.is_empty() => std::mem::take(&mut relay.out),
        _ => Vec::new(),
    };
    let sent = match items.is_empty() {
        true => channel.flush().map(drop),
        false => channel.send(RELAY, &relay::encode(&items), Vec::new()),
    };
    if let Err(e) = sent {
        warn!("upgrade: relaying publications: {e}");
    }
}

/// Runs `f` on the channel's socket made blocking (reads wait at most [`ANSWER_TIMEOUT`]),
/// then makes it non-blocking again: on a blocking socket every send goes out whole.
fn blocking<T>(
    channel: &mut Channel<UnixStream>,
    f: impl FnOnce(&mut Channel<UnixStream>) -> io::Result<T>,
) -> io::Result<T> {
    let socket = channel.socket_mut();
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    // What a non-blocking send left queued goes first.
    let result = channel.flush().and_then(|_| f(channel));
    channel.socket_mut().set_nonblocking(true)?;
    result
}
