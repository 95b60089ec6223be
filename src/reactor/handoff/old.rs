//! The old process's side of an upgrade: starting the new program on `SIGUSR2`, giving it
//! the listeners, moving the connections batch by batch (each forgotten only once confirmed),
//! draining those that cannot move, sequencing the publications the new process relays, and
//! failing safely.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::time::Instant;

use log::{debug, info, warn};
use mio::Interest;
use wsloop_proto::conn::NotMovable;

use crate::app::{Context, Handler};
use crate::out::Door;
use crate::upgrade::protocol::{self, Hello};
use crate::upgrade::record::{self, ConnRecord};
use crate::upgrade::relay;
use crate::upgrade::wire::{Channel, Msg, MAX_FDS};
use crate::upgrade::{
    process, ADOPTED, CONNS, DONE, LISTENERS, NOT_ADOPTED, RELAY, ROOMS, ROOMS_READY, TAKEN,
};

use crate::reactor::{Core, Reactor};

use super::{
    blocking, Handoff, NewProcess, ANSWER_TIMEOUT, HELLO_TIMEOUT, MAIN_LISTENER, METRICS_LISTENER,
    RETRY,
};

impl<H: Handler> Reactor<H> {
    /// `SIGUSR2`: starts the new program, unless an upgrade is under way, the server is
    /// shutting down or upgrades are not set up here.
    pub(in crate::reactor) fn start_upgrade(&mut self) {
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
    pub(in crate::reactor) fn greet_new_process(
        &mut self,
        child: Option<Child>,
        mut channel: Channel<UnixStream>,
    ) {
        let registered = channel
            .socket_mut()
            .set_nonblocking(true)
            .and_then(|()| self.register_channel(&mut channel));
        let state = Handoff::Greeting {
            to: NewProcess {
                child,
                channel,
                moved: 0,
                rooms_until: None,
            },
            until: self.core.now + HELLO_TIMEOUT,
        };
        match registered {
            Ok(()) => self.handoff = state,
            Err(e) => self.fail_upgrade(state, &e.to_string()),
        }
    }

    /// The new process's hello: agree (or refuse), give it the listeners (and with Redis the
    /// rooms), stop accepting.
    pub(super) fn on_hello(&mut self, mut to: NewProcess, until: Instant) {
        let via_redis = self.upgrades.as_ref().is_some_and(|u| u.via_redis);
        let agreed = blocking(&mut to.channel, |c| {
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
                self.core.relay = Some(Box::default());
                to.rooms_until = via_redis.then(|| self.core.now + HELLO_TIMEOUT);
                self.handoff = Handoff::Moving {
                    to,
                    next: self.core.now,
                };
            }
            Err(e) => self.fail_upgrade(Handoff::Greeting { to, until }, &e.to_string()),
        }
    }

    /// Between batches only relayed publications and, with Redis, the rooms' readiness are
    /// due: anything else means the new process went away or broke the protocol.
    pub(super) fn between_batches(&mut self, mut to: NewProcess, next: Instant) {
        let mut msgs = Vec::new();
        let received = to.channel.receive(&mut msgs, false);
        let out_of_turn = msgs
            .iter()
            .any(|m| m.kind != RELAY && m.kind != ROOMS_READY);
        if msgs.iter().any(|m| m.kind == ROOMS_READY) {
            to.rooms_until = None;
        }
        for msg in msgs {
            self.sequence(msg);
        }
        let why = match received {
            Err(e) => Some(e.to_string()),
            Ok(()) if to.channel.is_eof() => Some("the new process went away".to_owned()),
            Ok(()) if out_of_turn => Some("a message out of turn".to_owned()),
            Ok(()) => None,
        };
        let state = Handoff::Moving { to, next };
        match why {
            Some(why) => self.fail_upgrade(state, &why),
            None => self.handoff = state,
        }
    }

    /// After [`DONE`]: publications still relayed, then [`TAKEN`] (or the channel closing).
    pub(super) fn on_takeover_answer(&mut self, mut to: NewProcess, until: Instant) {
        let mut msgs = Vec::new();
        let received = to.channel.receive(&mut msgs, false);
        let taken = msgs.iter().any(|m| m.kind == TAKEN);
        for msg in msgs {
            self.sequence(msg);
        }
        if taken {
            // What the other workers sequenced and this one has not relayed yet goes last;
            // closing the channel then tells the new process it has everything.
            self.drain_inbox();
            super::relay_out(&mut self.core, &mut to.channel);
            if let Err(e) = blocking(&mut to.channel, Channel::flush) {
                warn!("upgrade: the last relayed publications: {e}");
            }
        }
        if taken || to.channel.is_eof() || received.is_err() {
            self.handed_over(to);
        } else {
            self.handoff = Handoff::Done { to, until };
        }
    }

    /// At the end of a turn: a hello that did not come in time fails the upgrade, as do
    /// rooms Redis did not confirm in time; while moving, the next batch goes (or, when
    /// nothing is left, the counters and [`DONE`]); a takeover not confirmed in time ends
    /// this process all the same (everything moved).
    pub(super) fn tend_old_side(&mut self) {
        let now = self.core.now;
        match std::mem::take(&mut self.handoff) {
            state @ Handoff::Greeting { until, .. } if until <= now => {
                self.fail_upgrade(state, "no hello in time");
            }
            Handoff::Moving { to, next } if to.rooms_until.is_some() => {
                let expired = to.rooms_until.is_some_and(|until| until <= now);
                // Waiting for ROOMS_READY: look again shortly.
                let state = Handoff::Moving {
                    to,
                    next: next.max(now + RETRY),
                };
                match expired {
                    true => self.fail_upgrade(
                        state,
                        "Redis did not confirm the rooms' subscriptions in time",
                    ),
                    false => self.handoff = state,
                }
            }
            Handoff::Moving { to, next } if next <= now => self.move_batch(to),
            Handoff::Done { to, until } if until <= now => {
                warn!("upgrade: the new process did not confirm the takeover in time");
                self.handed_over(to);
            }
            other => self.handoff = other,
        }
    }

    /// Moves the next batch of movable connections, drains those that can never move, and
    /// once none is left sends [`DONE`].
    fn move_batch(&mut self, mut to: NewProcess) {
        let (batch, drain) = self.core.pick_batch();
        for key in drain {
            self.core.drain_for_upgrade(key);
        }
        if batch.is_empty() {
            if self.core.not_done() > 0 {
                // Waiting for a request's answer, events, or drained connections to close.
                self.handoff = Handoff::Moving {
                    to,
                    next: self.core.now + RETRY,
                };
                return;
            }
            self.core.stats.process_upgrades += 1;
            let counters = record::encode_stats(self.core.fresh_stats());
            return match blocking(&mut to.channel, |c| c.send(DONE, &counters, Vec::new())) {
                Ok(()) => {
                    info!("upgrade: every connection moved; waiting for the takeover");
                    self.handoff = Handoff::Done {
                        to,
                        until: self.core.now + ANSWER_TIMEOUT,
                    };
                }
                Err(e) => {
                    self.core.stats.process_upgrades -= 1;
                    let state = Handoff::Moving {
                        to,
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
        let answer = blocking(&mut to.channel, |c| {
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
        let why = match answer {
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
                to.moved += count;
                None
            }
            Ok(Msg {
                kind: NOT_ADOPTED,
                body,
                ..
            }) => Some(format!(
                "refused a batch: {}",
                String::from_utf8_lossy(&body)
            )),
            Ok(_) => Some("an unexpected answer to a batch".to_owned()),
            Err(e) => Some(format!("no answer to a batch: {e}")),
        };
        if why.is_some() {
            self.put_back(moving);
        }
        for msg in relayed {
            self.sequence(msg);
        }
        // More may be waiting: the next batch after one turn for everyone else.
        let next = self.core.now;
        match why {
            Some(why) => self.fail_upgrade(Handoff::Moving { to, next }, &why),
            // What the new process sent after its answer was read with it, and the socket
            // will not be readable for it again: taken now (a relayed publication left
            // there would never come back, and the new process would wait for it).
            None => self.between_batches(to, next),
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
        self.core.stats.process_upgrades_failed += 1;
        let (mut to, accepting_paused) = match state {
            Handoff::Greeting { to, .. } => (to, false),
            Handoff::Moving { to, .. } | Handoff::Done { to, .. } => (to, true),
            _ => {
                self.handoff = Handoff::Idle;
                return;
            }
        };
        self.deregister_channel(&mut to.channel);
        match (to.child.as_mut(), to.moved) {
            // Ours to stop: it must not serve the sockets it may have been sent.
            (Some(child), 0) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            (None, 0) => {}
            // It serves the connections it confirmed: stopping it would drop them.
            (_, moved) => warn!(
                "upgrade: the new process keeps the {moved} connections it took; this one \
                 serves the rest"
            ),
        }
        drop(to);
        if accepting_paused {
            self.resume_accepting();
        }
        self.handoff = Handoff::Idle;
    }

    /// The new process serves everything: this one's loop ends.
    fn handed_over(&mut self, mut to: NewProcess) {
        match &to.child {
            Some(child) => info!(
                "upgrade complete: process {} serves every connection now",
                child.id()
            ),
            None => info!("upgrade complete: the new process serves this worker's connections"),
        }
        self.deregister_channel(&mut to.channel);
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
            (crate::reactor::LISTENER, &mut self.listener),
            (crate::reactor::METRICS, &mut self.metrics_listener),
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

    /// Old process, with `--redis`: its rooms, for the new process to subscribe to first.
    fn send_rooms(&self, channel: &mut Channel<UnixStream>) -> io::Result<()> {
        let topics: Vec<&str> = self.core.rooms.iter().map(|(name, _)| name).collect();
        let origin = self.core.member.as_deref().and_then(|m| m.origin());
        channel.send(
            ROOMS,
            &record::encode_rooms(origin, topics.into_iter()),
            Vec::new(),
        )
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
}

/// A batch on its way: what each connection was, to put it back if the batch is refused.
struct Moving {
    key: usize,
    output: Vec<u8>,
    app: Vec<u8>,
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
}
