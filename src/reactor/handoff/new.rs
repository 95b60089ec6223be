//! The new process's side of an upgrade: taking the listeners ([`Reactor::inherit`]),
//! adopting each batch whole or not at all, delivering the publications the old process
//! relays (and relaying its own to it), waiting for Redis to confirm the rooms, and taking
//! over together with the other workers.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use wsloop_proto::codec::CodecError;
use wsloop_proto::Connection;

use crate::app::{Context, Handler};
use crate::config::Config;
use crate::upgrade::protocol::{self, Hello};
use crate::upgrade::record::{self, ConnRecord};
use crate::upgrade::relay::{self, Held, Relay};
use crate::upgrade::wire::{Channel, Msg};
use crate::upgrade::{
    Takeover, ADOPTED, CONNS, DONE, LISTENERS, NOT_ADOPTED, RELAY, ROOMS, ROOMS_READY, TAKEN,
};

use crate::reactor::entry::Entry;
use crate::reactor::facts::Facts;
use crate::reactor::{Core, Reactor};

use super::{Handoff, HELLO_TIMEOUT, MAIN_LISTENER, METRICS_LISTENER};

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
            taken: false,
            pinned: Vec::new(),
            rooms_awaited: false,
        };
        // Deliveries from the other workers and from Redis wait until the old process has
        // relayed all it delivered: a sender's earlier messages come that way (see
        // `crate::upgrade::relay::Held`).
        reactor.core.held_deliveries = Some(Box::default());
        reactor.core.relay = Some(Box::new(Relay {
            forwarding: true,
            ..Relay::default()
        }));
        info!("upgrade: listening on the old process's sockets; taking its connections");
        Ok(reactor)
    }

    /// Before the first turn: what arrived with the listeners (a batch, even the end) raises
    /// no readiness event of its own.
    pub(in crate::reactor) fn adopt_what_waits(&mut self) {
        if matches!(self.handoff, Handoff::Adopting { .. }) {
            self.on_channel();
        }
    }

    /// New process: what the old one sent (connections, relayed publications, rooms, the
    /// end), then whether the takeover can happen.
    pub(super) fn on_old_process(&mut self) {
        let mut msgs = Vec::new();
        let Some(channel) = self.handoff.channel() else {
            return;
        };
        let received = channel.receive(&mut msgs, false);
        let eof = channel.is_eof();
        for msg in msgs {
            self.on_adopting(msg);
        }
        self.take_over_when_done();
        if let Err(e) = received {
            self.end_adopting(&format!("the channel failed: {e}"));
        } else if eof {
            match self.handoff {
                Handoff::Adopting { taken: true, .. } => self.end_adopting(""),
                Handoff::Adopting { .. } => {
                    self.end_adopting("the old process closed the channel");
                }
                _ => {}
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
            if let Some(held) = self.core.held_deliveries.as_deref_mut() {
                held.cut.relayed(item.topic.as_deref(), item.id);
            }
            if let Some(relay) = self.core.relay.as_deref_mut().filter(|_| item.from_new) {
                relay.pending = relay.pending.saturating_sub(1);
            }
        }
    }

    /// New process: once the old one has said [`DONE`] and every publication relayed has
    /// come back, its counters join ours, the takeover hook runs and [`TAKEN`] goes back.
    pub(super) fn take_over_when_done(&mut self) {
        let Handoff::Adopting {
            done,
            takeover,
            arrived,
            relaying,
            taken,
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
            if !takeover.all_arrived() {
                return;
            }
            // Relay no more: hold this worker's publications until the last relayed ones
            // are back, then send them out directly, in order.
            let held = match self.core.relay.as_deref_mut() {
                Some(relay) => {
                    relay.held.get_or_insert_with(Vec::new);
                    if relay.pending > 0 {
                        return;
                    }
                    relay.held.take().unwrap_or_default()
                }
                None => Vec::new(), // The relay ended already: nothing is held.
            };
            self.core.relay = None;
            *relaying = false;
            takeover.stop_relaying();
            for item in held {
                if let Some(msg) = item.message() {
                    self.core.publish_from(item.topic.as_deref(), msg, false);
                }
            }
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
        *taken = true;
        if let Some(channel) = self.handoff.channel() {
            if let Err(e) = channel.send(TAKEN, &[], Vec::new()) {
                warn!("upgrade: cannot confirm the takeover: {e}");
            }
        }
        // The end comes when the old process closes the channel, after its last relays.
    }

    /// New process, with `--redis`: once Redis has confirmed every room the old process
    /// named, it may send their members.
    pub(super) fn answer_rooms_when_subscribed(&mut self) {
        let Handoff::Adopting {
            channel,
            pinned,
            rooms_awaited: awaited @ true,
            ..
        } = &mut self.handoff
        else {
            return;
        };
        let member = self.core.member.as_deref();
        if !pinned
            .iter()
            .all(|t| member.is_none_or(|m| m.subscribed(t)))
        {
            return;
        }
        *awaited = false;
        if let Err(e) = channel.send(ROOMS_READY, &[], Vec::new()) {
            warn!("upgrade: cannot say the rooms are subscribed: {e}");
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
            ROOMS => match record::decode_rooms(&msg.body) {
                Ok((origin, topics)) => {
                    if let Some(held) = self.core.held_deliveries.as_deref_mut() {
                        held.cut.old_origin = origin;
                    }
                    for topic in &topics {
                        // Held until the takeover: its members are on their way.
                        if self.core.rooms.members(topic).is_empty() {
                            self.core.interest(topic, true);
                        }
                    }
                    if let Handoff::Adopting {
                        pinned,
                        rooms_awaited,
                        ..
                    } = &mut self.handoff
                    {
                        pinned.extend(topics);
                        *rooms_awaited = true;
                    }
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
        let mut pinned = Vec::new();
        if let Handoff::Adopting {
            mut channel,
            pinned: theirs,
            ..
        } = std::mem::take(&mut self.handoff)
        {
            self.deregister_channel(&mut channel);
            pinned = theirs;
        }
        // Publications of this worker's members not sent to the old process yet (only when
        // the handoff broke off: a takeover ends the relay first) go out from here.
        let unsent = self.core.relay.take().map(|relay| {
            let Relay { out, held, .. } = *relay;
            out.into_iter().chain(held.unwrap_or_default())
        });
        for item in unsent.into_iter().flatten() {
            if let Some(msg) = item.message() {
                self.core.publish_from(item.topic.as_deref(), msg, false);
            }
        }
        for topic in pinned {
            if self.core.rooms.members(&topic).is_empty() {
                self.core.interest(&topic, false);
            }
        }
        if let Some(held) = self.core.held_deliveries.take() {
            let Held {
                deliveries,
                mut cut,
            } = *held;
            cut.close(self.core.now);
            self.core.cut = cut.filters().then(|| Box::new(cut));
            for delivery in deliveries {
                self.core.deliver_from_broker(&delivery);
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
    /// Puts a connection from the old process in the slab, as it was there. Returns its id.
    fn adopt(
        &mut self,
        socket: TcpStream,
        conn: Connection,
        record: &ConnRecord,
    ) -> Option<crate::app::ConnId> {
        self.admission.count_in(self.conns.len());
        let key = self.conns.vacant_key();
        let facts = match &record.path {
            Some(path) => Facts {
                path: self.paths.hold(path),
                peer: record
                    .peer
                    .map(|peer| self.peers.keep(key, peer))
                    .unwrap_or_default(),
            },
            None => Facts::default(),
        };
        let inserted = self.insert_entry(socket, |socket, serial| {
            let mut entry = Entry::new(socket, serial, conn, None, record.metrics_only);
            entry.facts = facts;
            entry
        });
        if let Err(e) = inserted {
            warn!("upgrade: register a moved connection: {e}");
            self.admission.uncount();
            self.forget_facts(key, facts);
            return None;
        }
        if let Some(entry) = self.conns.get_mut(key) {
            entry.out.restore(&mut self.budget, &record.output);
        }
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
