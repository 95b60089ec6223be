//! The reactor's part in an upgrade ([`crate::upgrade`] has the whole story): in the old
//! process, starting the new one on `SIGUSR2`, giving it the listeners and moving the
//! connections batch by batch; in the new one, taking them in ([`Reactor::inherit`] and
//! [`Core::adopt`]).
//!
//! The channel's socket is registered with the poll (non-blocking) so that the new process
//! closing it is noticed at once. Waiting for an answer is the one blocking step — a hello,
//! or a batch's confirmation — bounded by a read timeout: a batch of 253 connections is
//! confirmed in well under a millisecond, and the turns between batches serve everyone
//! else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use wsloop_proto::codec::CodecError;
use wsloop_proto::conn::NotMovable;
use wsloop_proto::Connection;

use crate::app::{Context, Handler};
use crate::config::Config;
use crate::out::Door;
use crate::stats::Stats;
use crate::upgrade::protocol::{self, Hello};
use crate::upgrade::record::{self, ConnRecord};
use crate::upgrade::relay::{self, Relay};
use crate::upgrade::wire::{Channel, Msg, MAX_FDS};
use crate::upgrade::{
    process, Takeover, ADOPTED, CONNS, DONE, LISTENERS, NOT_ADOPTED, RELAY, ROOMS, ROOMS_READY,
    TAKEN,
};

use super::entry::Entry;
use super::facts::Facts;
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

/// Where an upgrade stands in this process.
#[derive(Debug, Default)]
pub(super) enum Handoff {
    /// None under way.
    #[default]
    Idle,
    /// Old process: the new program started; its hello is awaited until `until`.
    Greeting {
        child: Option<Child>,
        channel: Channel<UnixStream>,
        until: Instant,
    },
    /// Old process: the new one has the listeners; connections move at the end of turns,
    /// the next batch at `next`.
    Moving {
        child: Option<Child>,
        channel: Channel<UnixStream>,
        next: Instant,
    },
    /// Old process: all moved; the new one's [`TAKEN`] is awaited until `until`.
    Done {
        child: Option<Child>,
        channel: Channel<UnixStream>,
        until: Instant,
    },
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
            Handoff::Adopting { arrived: true, .. } => Some(Instant::now() + RETRY),
            _ => None,
        }
    }

    fn channel(&mut self) -> Option<&mut Channel<UnixStream>> {
        match self {
            Handoff::Greeting { channel, .. }
            | Handoff::Moving { channel, .. }
            | Handoff::Done { channel, .. }
            | Handoff::Adopting { channel, .. } => Some(channel),
            Handoff::Idle | Handoff::HandedOver => None,
        }
    }
}

/// A batch on its way: what each connection was, to put it back if the batch is refused.
struct Moving {
    key: usize,
    output: Vec<u8>,
    app: Vec<u8>,
}

impl<H: Handler> Reactor<H> {
    /// The new process's start: says hello on the inherited `channel`, takes the listeners
    /// the old process sends, and prepares to adopt its connections.
    ///
    /// # Errors
    /// The old process refused or went away, or the listeners did not come.
    pub(crate) fn inherit(
        config: Config,
        app: H,
        mut channel: Channel<UnixStream>,
        takeover: Arc<Takeover>,
    ) -> io::Result<Reactor<H>> {
        channel.socket_mut().set_read_timeout(Some(HELLO_TIMEOUT))?;
        let workers = takeover.workers();
        let via_redis = takeover.via_redis;
        protocol::greet(&mut channel, Hello::ours(workers)).map_err(io::Error::other)?;
        let msg = channel.recv_one()?;
        if msg.kind != LISTENERS {
            return Err(io::Error::other("handoff: expected the listeners"));
        }
        let mask = msg.body.first().copied().unwrap_or(0);
        let mut fds = msg.fds.into_iter();
        let mut take = |bit: u8| -> io::Result<Option<TcpListener>> {
            if mask & bit == 0 {
                return Ok(None);
            }
            let fd = fds
                .next()
                .ok_or_else(|| io::Error::other("handoff: a listener is missing"))?;
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(Some(TcpListener::from_std(listener)))
        };
        let listener =
            take(MAIN_LISTENER)?.ok_or_else(|| io::Error::other("handoff: no listener"))?;
        let metrics = take(METRICS_LISTENER)?;
        let mut reactor = Reactor::with_listeners(config, app, listener, metrics)?;
        channel.socket_mut().set_nonblocking(true)?;
        reactor.register_channel(&mut channel)?;
        reactor.workers = workers;
        reactor.handoff = Handoff::Adopting {
            channel,
            done: None,
            takeover,
            arrived: false,
            relaying: true,
        };
        if !via_redis {
            reactor.core.relay = Some(Box::new(Relay {
                forwarding: true,
                ..Relay::default()
            }));
        }
        info!("upgrade: listening on the old process's sockets; taking its connections");
        Ok(reactor)
    }

    /// `SIGUSR2`: starts the new program, unless an upgrade is under way, the server is
    /// shutting down or upgrades are not set up here.
    pub(super) fn start_upgrade(&mut self) {
        if !matches!(self.handoff, Handoff::Idle) {
            info!("SIGUSR2: an upgrade is under way already: ignored");
            return;
        }
        if self.core.shutting_down {
            info!("SIGUSR2: shutting down: ignored");
            return;
        }
        if self.core.member.as_ref().is_some_and(|m| m.index != 0) {
            return; // Worker 0 starts it, and hands this worker its channel.
        }
        let Some(upgrades) = &self.upgrades else {
            warn!("SIGUSR2: this server does not upgrade in place (--redis): ignored");
            return;
        };
        let program = upgrades.program.display().to_string();
        let started = process::spawn(upgrades).map(|(child, mut channel)| {
            let siblings = process::hand_out_channels(upgrades, &mut channel);
            (child, channel, siblings)
        });
        match started {
            Ok((child, channel, Ok(()))) => {
                info!("SIGUSR2: upgrading: started {program} (pid {})", child.id());
                self.greet_new_process(Some(child), channel);
            }
            Ok((mut child, _, Err(e))) => {
                let _ = child.kill();
                let _ = child.wait();
                self.fail_upgrade(Handoff::Idle, &format!("the workers' channels: {e}"));
            }
            Err(e) => self.fail_upgrade(Handoff::Idle, &format!("cannot start {program}: {e}")),
        }
    }

    /// Waits for the new process's hello on `channel` (this worker's, or the process's).
    pub(super) fn greet_new_process(
        &mut self,
        child: Option<Child>,
        mut channel: Channel<UnixStream>,
    ) {
        let registered = channel
            .socket_mut()
            .set_nonblocking(true)
            .and_then(|()| self.register_channel(&mut channel));
        let state = Handoff::Greeting {
            child,
            channel,
            until: self.core.now + HELLO_TIMEOUT,
        };
        self.moved = 0;
        match registered {
            Ok(()) => self.handoff = state,
            Err(e) => self.fail_upgrade(state, &e.to_string()),
        }
    }

    /// When the loop must wake up for the upgrade: its state's deadline, or shortly while
    /// waiting for Redis to confirm the rooms (which raises no event here).
    pub(super) fn handoff_deadline(&self) -> Option<Instant> {
        match self.rooms_awaited {
            true => Some(Instant::now() + RETRY),
            false => self.handoff.deadline(),
        }
    }

    /// Before the first turn: what arrived with the listeners (a batch, even the end) raises
    /// no readiness event of its own.
    pub(super) fn adopt_what_waits(&mut self) {
        if matches!(self.handoff, Handoff::Adopting { .. }) {
            self.on_channel();
        }
    }

    /// The channel is readable: a hello, an answer out of turn, the peer gone, or (new
    /// process) connections to adopt.
    pub(super) fn on_channel(&mut self) {
        match std::mem::take(&mut self.handoff) {
            Handoff::Greeting {
                child,
                mut channel,
                until,
            } => {
                let via_redis = self.upgrades.as_ref().is_some_and(|u| u.via_redis);
                let agreed = blocking(&mut channel, |c| {
                    protocol::answer(c, Hello::ours(self.workers)).map_err(io::Error::other)?;
                    self.send_listeners(c)?;
                    match via_redis {
                        true => self.send_rooms(c),
                        false => Ok(()),
                    }
                });
                match agreed {
                    Ok(()) => {
                        info!("upgrade: the new process agreed; moving connections");
                        self.pause_accepting();
                        // Through Redis, rooms span both processes already.
                        self.core.relay = (!via_redis).then(Box::default);
                        self.rooms_pending = via_redis.then(|| self.core.now + HELLO_TIMEOUT);
                        self.handoff = Handoff::Moving {
                            child,
                            channel,
                            next: self.core.now,
                        };
                    }
                    Err(e) => self.fail_upgrade(
                        Handoff::Greeting {
                            child,
                            channel,
                            until,
                        },
                        &e.to_string(),
                    ),
                }
            }
            Handoff::Adopting {
                mut channel,
                done,
                takeover,
                arrived,
                relaying,
            } => {
                let mut msgs = Vec::new();
                let received = channel.receive(&mut msgs, false);
                self.handoff = Handoff::Adopting {
                    channel,
                    done,
                    takeover,
                    arrived,
                    relaying,
                };
                for msg in msgs {
                    self.on_adopting(msg);
                }
                self.take_over_when_done();
                if let Err(e) = received {
                    self.end_adopting(&format!("the channel failed: {e}"));
                } else if self.handoff.channel().is_some_and(|c| c.is_eof()) {
                    self.end_adopting("the old process closed the channel");
                }
            }
            Handoff::Done {
                child,
                mut channel,
                until,
            } => {
                let mut msgs = Vec::new();
                let received = channel.receive(&mut msgs, false);
                let taken = msgs.iter().any(|m| m.kind == TAKEN);
                for msg in msgs {
                    self.sequence(msg);
                }
                if taken || channel.is_eof() || received.is_err() {
                    self.handed_over(child, channel);
                } else {
                    self.handoff = Handoff::Done {
                        child,
                        channel,
                        until,
                    };
                }
            }
            Handoff::Moving {
                child,
                mut channel,
                next,
            } => {
                // Nothing is due between batches: the peer went away, or broke the protocol.
                let mut msgs = Vec::new();
                let received = channel.receive(&mut msgs, false);
                let out_of_turn = msgs
                    .iter()
                    .any(|m| m.kind != RELAY && m.kind != ROOMS_READY);
                if msgs.iter().any(|m| m.kind == ROOMS_READY) {
                    self.rooms_pending = None;
                }
                for msg in msgs {
                    self.sequence(msg);
                }
                let why = match received {
                    Err(e) => Some(e.to_string()),
                    Ok(()) if channel.is_eof() => Some("the new process went away".to_owned()),
                    Ok(()) if out_of_turn => Some("a message out of turn".to_owned()),
                    Ok(()) => None,
                };
                let state = Handoff::Moving {
                    child,
                    channel,
                    next,
                };
                match why {
                    Some(why) => self.fail_upgrade(state, &why),
                    None => self.handoff = state,
                }
            }
            other @ (Handoff::Idle | Handoff::HandedOver) => self.handoff = other,
        }
    }

    /// At the end of each turn: a hello that did not come in time fails the upgrade; while
    /// moving, the next batch goes (or, when nothing is left, the counters and [`DONE`]);
    /// a takeover not confirmed in time ends this process all the same (everything moved).
    /// Returns whether this process has handed everything over (the loop ends).
    pub(super) fn tend_handoff(&mut self) -> bool {
        self.send_relay();
        match std::mem::take(&mut self.handoff) {
            Handoff::Greeting {
                until,
                child,
                channel,
            } if until <= self.core.now => {
                self.fail_upgrade(
                    Handoff::Greeting {
                        child,
                        channel,
                        until,
                    },
                    "no hello in time",
                );
            }
            Handoff::Moving {
                child,
                channel,
                next,
            } if self
                .rooms_pending
                .is_some_and(|until| until <= self.core.now) =>
            {
                let state = Handoff::Moving {
                    child,
                    channel,
                    next,
                };
                self.fail_upgrade(
                    state,
                    "Redis did not confirm the rooms' subscriptions in time",
                );
            }
            Handoff::Moving { child, channel, .. } if self.rooms_pending.is_some() => {
                // Waiting for ROOMS_READY: look again shortly.
                self.handoff = Handoff::Moving {
                    child,
                    channel,
                    next: self.core.now + RETRY,
                };
            }
            Handoff::Moving {
                child,
                channel,
                next,
            } if next <= self.core.now => {
                self.move_batch(child, channel);
            }
            Handoff::Done {
                child,
                channel,
                until,
            } if until <= self.core.now => {
                warn!("upgrade: the new process did not confirm the takeover in time");
                self.handed_over(child, channel);
            }
            other => self.handoff = other,
        }
        self.answer_rooms_when_subscribed();
        self.take_over_when_done();
        matches!(self.handoff, Handoff::HandedOver)
    }

    /// Moves the next batch of movable connections, drains those that can never move, and
    /// once none is left sends [`DONE`].
    fn move_batch(&mut self, child: Option<Child>, mut channel: Channel<UnixStream>) {
        let (batch, drain) = self.core.pick_batch();
        for key in drain {
            self.core.drain_for_upgrade(key);
        }
        if batch.is_empty() {
            if self.core.not_done() > 0 {
                // Waiting for a request's answer, events, or drained connections to close.
                self.handoff = Handoff::Moving {
                    child,
                    channel,
                    next: self.core.now + RETRY,
                };
                return;
            }
            self.core.stats.process_upgrades += 1;
            let counters = record::encode_stats(self.core.fresh_stats());
            return match blocking(&mut channel, |c| c.send(DONE, &counters, Vec::new())) {
                Ok(()) => {
                    info!("upgrade: every connection moved; waiting for the takeover");
                    self.handoff = Handoff::Done {
                        child,
                        channel,
                        until: self.core.now + ANSWER_TIMEOUT,
                    };
                }
                Err(e) => {
                    self.core.stats.process_upgrades -= 1;
                    let state = Handoff::Moving {
                        child,
                        channel,
                        next: self.core.now,
                    };
                    self.fail_upgrade(state, &e.to_string());
                }
            };
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut fds = Vec::with_capacity(batch.len());
        let mut moving = Vec::with_capacity(batch.len());
        for key in batch {
            let Some((record, fd)) = self.export(key) else {
                continue;
            };
            moving.push(Moving {
                key,
                output: record.output.clone(),
                app: record.app.clone(),
            });
            records.push(record);
            fds.push(fd);
        }
        let body = record::encode_batch(&records);
        let count = moving.len();
        let mut relayed = Vec::new();
        let answer = blocking(&mut channel, |c| {
            c.send(CONNS, &body, fds)?;
            loop {
                // Publications the new process relayed meanwhile are sequenced once this
                // batch's fate is known (see `crate::upgrade::relay`).
                match c.recv_one()? {
                    msg if msg.kind == RELAY => relayed.push(msg),
                    answer => return Ok(answer),
                }
            }
        });
        match answer {
            Ok(Msg {
                kind: ADOPTED,
                body,
                ..
            }) if body == (count as u32).to_le_bytes() => {
                debug!("upgrade: {count} connections handed over");
                for m in &moving {
                    self.core.hand_over(m.key);
                }
                self.core.stats.handed_over += count as u64;
                self.moved += count;
                for msg in relayed {
                    self.sequence(msg);
                }
                // More may be waiting: the next batch after one turn for everyone else.
                self.handoff = Handoff::Moving {
                    child,
                    channel,
                    next: self.core.now,
                };
            }
            answer => {
                let why = match answer {
                    Ok(Msg {
                        kind: NOT_ADOPTED,
                        body,
                        ..
                    }) => format!("refused a batch: {}", String::from_utf8_lossy(&body)),
                    Ok(_) => "an unexpected answer to a batch".to_owned(),
                    Err(e) => format!("no answer to a batch: {e}"),
                };
                self.put_back(moving);
                for msg in relayed {
                    self.sequence(msg);
                }
                let state = Handoff::Moving {
                    child,
                    channel,
                    next: self.core.now,
                };
                self.fail_upgrade(state, &why);
            }
        }
    }

    /// Connection `key`'s record and a duplicate of its socket; the application's part is
    /// taken ([`Handler::export`]) and its unsent output taken out of its queue.
    fn export(&mut self, key: usize) -> Option<(ConnRecord, OwnedFd)> {
        let id = self.core.id_of(key)?;
        let rooms = self
            .core
            .rooms
            .topics_of(key)
            .iter()
            .map(|t| t.to_string())
            .collect();
        let path = self.core.path_of(id).map(str::to_owned);
        let peer = self.core.peer_of(id);
        let entry = self.core.conns.get_mut(key)?;
        let mut state = Vec::new();
        entry.conn.export(self.core.tick, &mut state).ok()?;
        let fd = match entry.socket.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                warn!("#{key}: cannot duplicate its socket for the upgrade: {e}");
                return None;
            }
        };
        let output = entry.out.take_unsent(&mut self.core.budget);
        let metrics_only = entry.metrics_only;
        let app = self.app.export(
            &mut Context {
                core: &mut self.core,
            },
            id,
        );
        let record = ConnRecord {
            state,
            path,
            peer,
            rooms,
            output,
            app,
            metrics_only,
        };
        Some((record, fd))
    }

    /// A batch was not taken: its connections carry on here as they were.
    fn put_back(&mut self, moving: Vec<Moving>) {
        for m in moving {
            let Some(id) = self.core.id_of(m.key) else {
                continue;
            };
            if let Some(entry) = self.core.conns.get_mut(m.key) {
                entry.out.restore(&mut self.core.budget, &m.output);
                entry.writable = true;
            }
            self.app.import(
                &mut Context {
                    core: &mut self.core,
                },
                id,
                &m.app,
            );
            self.core.ready.push(m.key);
        }
    }

    /// The upgrade failed: the new program is stopped, accepting resumes here, and every
    /// connection not handed over yet is served on.
    fn fail_upgrade(&mut self, state: Handoff, why: &str) {
        warn!("upgrade failed: {why}; this process serves on");
        self.core.relay = None;
        self.rooms_pending = None;
        self.core.stats.process_upgrades_failed += 1;
        let was_moving = matches!(state, Handoff::Moving { .. } | Handoff::Done { .. });
        match state {
            Handoff::Greeting {
                mut child,
                mut channel,
                ..
            }
            | Handoff::Moving {
                mut child,
                mut channel,
                ..
            }
            | Handoff::Done {
                mut child,
                mut channel,
                ..
            } => {
                self.deregister_channel(&mut channel);
                drop(channel);
                match child.as_mut() {
                    // Ours to stop: it must not serve the sockets it may have been sent.
                    Some(child) if self.moved == 0 => {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    // It serves the connections it confirmed: stopping it would drop them.
                    _ if self.moved > 0 => warn!(
                        "upgrade: the new process keeps the {} connections it took; this \
                         one serves the rest",
                        self.moved
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
        if was_moving {
            self.resume_accepting();
        }
        self.handoff = Handoff::Idle;
    }

    /// The new process serves everything: this one's loop ends.
    fn handed_over(&mut self, child: Option<Child>, mut channel: Channel<UnixStream>) {
        match child {
            Some(child) => info!(
                "upgrade complete: process {} serves every connection now",
                child.id()
            ),
            None => info!("upgrade complete: the new process serves this worker's connections"),
        }
        self.deregister_channel(&mut channel);
        self.core.relay = None;
        self.handoff = Handoff::HandedOver;
    }

    fn send_listeners(&mut self, channel: &mut Channel<UnixStream>) -> io::Result<()> {
        let mut mask = 0;
        let mut fds = Vec::new();
        for (bit, listener) in [
            (MAIN_LISTENER, self.listener.as_ref()),
            (METRICS_LISTENER, self.metrics_listener.as_ref()),
        ] {
            if let Some(listener) = listener {
                mask |= bit;
                fds.push(listener.as_fd().try_clone_to_owned()?);
            }
        }
        channel.send(LISTENERS, &[mask], fds)
    }

    /// The new process accepts from now on.
    fn pause_accepting(&mut self) {
        for listener in [&mut self.listener, &mut self.metrics_listener]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(listener);
        }
    }

    fn resume_accepting(&mut self) {
        let registry = self.poll.registry();
        for (token, listener) in [
            (super::LISTENER, &mut self.listener),
            (super::METRICS, &mut self.metrics_listener),
        ] {
            if let Some(listener) = listener {
                if let Err(e) = registry.register(listener, token, Interest::READABLE) {
                    warn!("upgrade: cannot resume accepting: {e}");
                }
            }
        }
        // What queued up meanwhile.
        self.accept_all(false);
        self.accept_all(true);
    }

    fn register_channel(&mut self, channel: &mut Channel<UnixStream>) -> io::Result<()> {
        let fd = channel.socket_mut().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), UPGRADE, Interest::READABLE)
    }

    fn deregister_channel(&mut self, channel: &mut Channel<UnixStream>) {
        let fd = channel.socket_mut().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// Sends the publications this turn made (or, in the old process, sequenced) to the
    /// other process, and what the channel still holds.
    fn send_relay(&mut self) {
        let items = match self.core.relay.as_deref_mut() {
            Some(relay) if !relay.out.is_empty() => std::mem::take(&mut relay.out),
            _ => Vec::new(),
        };
        let Some(channel) = self.handoff.channel() else {
            return;
        };
        let sent = match items.is_empty() {
            true => channel.flush().map(drop),
            false => channel.send(RELAY, &relay::encode(&items), Vec::new()),
        };
        if let Err(e) = sent {
            warn!("upgrade: relaying publications: {e}");
        }
    }

    /// Old process: publications the new one made, sequenced: delivered to the members here
    /// and relayed back for those there.
    fn sequence(&mut self, msg: Msg) {
        if msg.kind != RELAY {
            return;
        }
        let items = match relay::decode(&msg.body) {
            Ok(items) => items,
            Err(e) => return warn!("upgrade: relayed publications: {e}"),
        };
        debug!(
            "upgrade: sequencing {} publications of the new process",
            items.len()
        );
        for item in items {
            match item.message() {
                // As if made here: local members, the other workers, and back (marked).
                Some(msg) => {
                    self.core.publish_from(item.topic.as_deref(), msg, true);
                }
                // Not deliverable (a new process that broke the protocol): back all the
                // same, for its count.
                None => {
                    if let Some(relay) = self.core.relay.as_deref_mut() {
                        relay.out.push(item);
                    }
                }
            }
        }
    }

    /// New process: publications the old one sequenced, for the members adopted so far.
    fn deliver_relayed(&mut self, body: &[u8]) {
        let items = match relay::decode(body) {
            Ok(items) => items,
            Err(e) => return warn!("upgrade: relayed publications: {e}"),
        };
        for item in items {
            if let Some(msg) = item.message() {
                self.core.publish_local(item.topic.as_deref(), msg);
            }
            if let Some(relay) = self.core.relay.as_deref_mut().filter(|_| item.from_new) {
                relay.pending = relay.pending.saturating_sub(1);
            }
        }
    }

    /// New process: once the old one has said [`DONE`] and every publication relayed has
    /// come back, its counters join ours, the takeover hook runs and [`TAKEN`] goes back.
    fn take_over_when_done(&mut self) {
        let Handoff::Adopting {
            done,
            takeover,
            arrived,
            relaying,
            ..
        } = &mut self.handoff
        else {
            return;
        };
        if done.is_none() {
            return;
        }
        if !*arrived {
            *arrived = true;
            if takeover.arrive() {
                // The last worker: the whole process serves everything now.
                if let Some(hook) = self.upgrades.as_ref().and_then(|u| u.on_takeover.clone()) {
                    hook();
                }
            }
        }
        // Publications go on through the old process until every worker's counterpart is
        // done and this worker's last relayed publication is back (a sender's messages
        // stay in order); then through this process's hub. The old workers stay until no
        // worker here relays: they pass on what the others still send them.
        if *relaying {
            let pending = self.core.relay.as_deref().map_or(0, |r| r.pending);
            if !takeover.all_arrived() || pending > 0 {
                return;
            }
            self.core.relay = None;
            *relaying = false;
            takeover.stop_relaying();
        }
        if !takeover.none_relaying() {
            return;
        }
        if let Some(mut theirs) = done.take() {
            // Gauges are this process's own.
            theirs.open = 0;
            theirs.buffered_bytes = 0;
            self.core.stats.add(&theirs);
        }
        if let Some(channel) = self.handoff.channel() {
            if let Err(e) = channel.send(TAKEN, &[], Vec::new()) {
                warn!("upgrade: cannot confirm the takeover: {e}");
            }
        }
        self.end_adopting("");
    }

    /// Old process, with `--redis`: its rooms, for the new process to subscribe to first.
    fn send_rooms(&self, channel: &mut Channel<UnixStream>) -> io::Result<()> {
        let topics: Vec<&str> = self.core.rooms.iter().map(|(name, _)| name).collect();
        channel.send(
            ROOMS,
            &record::encode_topics(topics.into_iter()),
            Vec::new(),
        )
    }

    /// New process, with `--redis`: once Redis has confirmed every room the old process
    /// named, it may send their members.
    fn answer_rooms_when_subscribed(&mut self) {
        if !self.rooms_awaited {
            return;
        }
        let member = self.core.member.as_deref();
        if !self
            .pinned
            .iter()
            .all(|t| member.is_none_or(|m| m.subscribed(t)))
        {
            return;
        }
        self.rooms_awaited = false;
        if let Some(channel) = self.handoff.channel() {
            if let Err(e) = channel.send(ROOMS_READY, &[], Vec::new()) {
                warn!("upgrade: cannot say the rooms are subscribed: {e}");
            }
        }
    }

    /// New process: one message from the old one.
    fn on_adopting(&mut self, msg: Msg) {
        match msg.kind {
            CONNS => {
                let answer = match self.adopt_batch(&msg.body, msg.fds) {
                    Ok(count) => (ADOPTED, (count as u32).to_le_bytes().to_vec()),
                    Err(e) => {
                        warn!("upgrade: refusing a batch: {e}");
                        (NOT_ADOPTED, e.to_string().into_bytes())
                    }
                };
                if let Some(channel) = self.handoff.channel() {
                    if let Err(e) = channel.send(answer.0, &answer.1, Vec::new()) {
                        warn!("upgrade: cannot confirm a batch: {e}");
                    }
                }
            }
            DONE => match record::decode_stats(&msg.body) {
                Ok(theirs) => {
                    if let Handoff::Adopting { done, .. } = &mut self.handoff {
                        *done = Some(Box::new(theirs));
                    }
                }
                Err(e) => self.end_adopting(&format!("the old process's counters: {e}")),
            },
            RELAY => self.deliver_relayed(&msg.body),
            ROOMS => match record::decode_topics(&msg.body) {
                Ok(topics) => {
                    for topic in topics {
                        // Held until the takeover: its members are on their way.
                        if self.core.rooms.members(&topic).is_empty() {
                            self.core.interest(&topic, true);
                        }
                        self.pinned.push(topic);
                    }
                    self.rooms_awaited = true;
                    self.answer_rooms_when_subscribed();
                }
                Err(e) => self.end_adopting(&format!("the old process's rooms: {e}")),
            },
            other => warn!("upgrade: unexpected message {other} from the old process"),
        }
    }

    /// Adopts a batch whole or not at all: every record is decoded and every connection
    /// imported before any is registered.
    fn adopt_batch(&mut self, body: &[u8], fds: Vec<OwnedFd>) -> Result<usize, CodecError> {
        let records = record::decode_batch(body)?;
        if records.len() != fds.len() {
            return Err(CodecError::Invalid("records and sockets differ in number"));
        }
        let conns = records
            .iter()
            .map(|r| Connection::import(&r.state, self.core.tick))
            .collect::<Result<Vec<_>, _>>()?;
        let count = records.len();
        for ((record, conn), fd) in records.into_iter().zip(conns).zip(fds) {
            let socket = std::net::TcpStream::from(fd);
            if let Err(e) = socket.set_nonblocking(true) {
                warn!("upgrade: a moved socket: {e}");
                continue;
            }
            let Some(id) = self.core.adopt(TcpStream::from_std(socket), conn, &record) else {
                continue;
            };
            self.app.import(
                &mut Context {
                    core: &mut self.core,
                },
                id,
                &record.app,
            );
        }
        Ok(count)
    }

    /// New process: the handoff is over (done, or the old process went away: what it
    /// had not sent stays with it).
    fn end_adopting(&mut self, why: &str) {
        if let Handoff::Adopting { mut channel, .. } = std::mem::take(&mut self.handoff) {
            self.deregister_channel(&mut channel);
        }
        self.core.relay = None;
        self.rooms_awaited = false;
        for topic in std::mem::take(&mut self.pinned) {
            if self.core.rooms.members(&topic).is_empty() {
                self.core.interest(&topic, false);
            }
        }
        if why.is_empty() {
            info!(
                "upgrade: took over ({} connections adopted)",
                self.core.stats.adopted
            );
        } else {
            warn!("upgrade: {why}; serving what was adopted");
        }
    }
}

impl Core {
    /// The next batch: up to [`MAX_FDS`] connections that can move now, and those that never
    /// can (TLS, deflate contexts of their own) and are still open, to drain.
    fn pick_batch(&self) -> (Vec<usize>, Vec<usize>) {
        let mut batch = Vec::new();
        let mut drain = Vec::new();
        for (key, entry) in &self.conns {
            if entry.doomed {
                continue;
            }
            let movable = match entry.tls {
                // rustls cannot export a live session.
                Some(_) => Err(NotMovable::OwnDeflateContexts),
                None => entry.conn.check_movable(),
            };
            match movable {
                Ok(()) if batch.len() < MAX_FDS => batch.push(key),
                Err(why)
                    if why.is_permanent()
                        && (entry.conn.is_open() || entry.conn.in_request_phase()) =>
                {
                    drain.push(key);
                }
                _ => {}
            }
        }
        (batch, drain)
    }

    /// Closes connection `key` as a shutdown would (1001 "server shutdown"): it cannot move.
    fn drain_for_upgrade(&mut self, key: usize) {
        if let Some(entry) = self.conns.get_mut(key) {
            let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
            entry.conn.shutdown(self.tick, &mut door, &self.shared);
        }
        self.settle(key);
    }

    /// Connection `key` now belongs to the new process: it leaves this one without a word
    /// to the application (which exported it) and without touching the socket.
    fn hand_over(&mut self, key: usize) {
        if let Some(mut entry) = self.forget(key) {
            let _ = self.registry.deregister(&mut entry.socket);
        }
    }

    /// Puts a connection from the old process in the slab, as it was there. Returns its id.
    fn adopt(
        &mut self,
        mut socket: TcpStream,
        conn: Connection,
        record: &ConnRecord,
    ) -> Option<crate::app::ConnId> {
        self.admission.count_in(self.conns.len());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.registry.register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("upgrade: register a moved connection: {e}");
            self.admission.uncount();
            return None;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut entry = Entry::new(socket, self.next_serial, conn, None, record.metrics_only);
        if let Some(path) = &record.path {
            entry.facts = Facts {
                path: self.paths.hold(path),
                peer: record
                    .peer
                    .map(|peer| self.peers.keep(key, peer))
                    .unwrap_or_default(),
            };
        }
        entry.out.restore(&mut self.budget, &record.output);
        self.conns.insert(entry);
        if let (Some(peer), Some(_)) = (record.peer, self.config.max_conns_per_ip) {
            let _ = self.admission.count_per_ip(key, peer.ip(), usize::MAX);
        }
        for room in &record.rooms {
            self.subscribe_key(key, room);
        }
        self.stats.open += 1;
        self.stats.adopted += 1;
        // Input it held back, or bytes that arrived meanwhile: read at once.
        self.ready.push(key);
        self.settle(key);
        self.id_of(key)
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
