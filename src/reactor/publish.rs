//! Rooms and publication: subscriptions, one shared frame per encoding of a publication for
//! every local subscriber (per-room slow-consumer policies, see [`crate::out`]), and
//! the hand-off to and from the broker.

use std::rc::Rc;

use log::{debug, warn};
use wsloop_proto::conn::Encoding;
use wsloop_proto::CloseCode;

use crate::app::{ConnId, Message};
use crate::out::{Door, Verdict};
use crate::pubsub::{Delivery, Kind};

use super::write::kind_of;
use super::Core;
use crate::upgrade::relay::Relayed;

impl Core {
    pub(crate) fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        self.key_of(id)
            .is_some_and(|key| self.subscribe_key(key, topic))
    }

    /// Adds connection `key` to `topic`, telling the hub when it is this reactor's first
    /// member there.
    pub(super) fn subscribe_key(&mut self, key: usize, topic: &str) -> bool {
        let added = self.rooms.subscribe(key, topic);
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
    pub(super) fn interest(&self, topic: &str, subscribed: bool) {
        if let Some(member) = &self.member {
            member.interest(topic, subscribed);
        }
    }

    /// Removes a connection from every room, telling the hub about rooms it left empty.
    /// During an upgrade the old worker keeps its interest in rooms it emptied: what the hub
    /// brings it goes on to their members in the new process ([`crate::upgrade::relay`]).
    pub(super) fn leave_rooms(&mut self, key: usize) {
        let member = self.member.as_deref().filter(|_| self.relay.is_none());
        self.rooms.remove_conn(key, |topic| {
            if let Some(member) = member {
                member.interest(topic, false);
            }
        });
    }

    /// A publication from the broker: this reactor's subscribers only.
    pub(super) fn deliver_from_broker(&mut self, delivery: &Delivery) {
        if let Some(held) = &mut self.held_deliveries {
            held.deliveries.push(delivery.clone());
            return;
        }
        if let Some(cut) = self.cut.as_deref_mut() {
            let covered = cut.covers(delivery);
            if cut.spent(self.now) {
                self.cut = None;
            }
            if covered {
                return;
            }
        }
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
        if let Some(relay) = self.relay.as_deref_mut().filter(|r| !r.forwarding) {
            // An old worker during an upgrade: its members in the new process get it too.
            relay.out.push(Relayed {
                id: delivery.id,
                ..Relayed::new(Some(&delivery.topic), msg, false)
            });
        }
        self.publish_local(Some(&delivery.topic), msg);
    }

    /// Publishes to `topic` (or, with `None`, broadcasts to every open connection of this
    /// reactor): local subscribers first, then the broker when this reactor has one.
    pub(crate) fn publish(&mut self, topic: Option<&str>, msg: Message<'_>) -> usize {
        self.stats.publications += 1;
        self.publish_from(topic, msg, false)
    }

    /// [`Core::publish`]; `from_new`: during an upgrade, a publication the new process made,
    /// sequenced here (see [`crate::upgrade::relay`]). While the new process relays, its own
    /// publications go to the old process instead.
    pub(super) fn publish_from(
        &mut self,
        topic: Option<&str>,
        msg: Message<'_>,
        from_new: bool,
    ) -> usize {
        if let Some(relay) = self.relay.as_deref_mut() {
            if !relay.publish(topic, msg, from_new) {
                return 0; // Delivered when the old process relays it back.
            }
        }
        let delivered = self.publish_local(topic, msg);
        if let (Some(member), Some(topic)) = (&self.member, topic) {
            member.publish(topic, &msg);
        }
        delivered
    }

    /// Queues `msg` for every member of `topic` on this reactor (or every open connection),
    /// each frame encoded once and shared: one plain frame, one compressed frame per window
    /// size for receivers without context takeover; those with it compress their own. Slow
    /// members get the room's slow-consumer policy instead. Each member is one unit of the
    /// publisher's work this turn.
    pub(super) fn publish_local(&mut self, topic: Option<&str>, msg: Message<'_>) -> usize {
        let kind = kind_of(&msg);
        let payload = msg.as_bytes();
        // [0]: plain; [1..=7]: compressed for server windows 9..=15.
        let mut frames: [Option<Rc<[u8]>>; 8] = Default::default();
        let (room, policy) = topic
            .and_then(|t| self.rooms.get(t))
            .map_or((0, self.config.slow_consumer), |r| (r.id, r.policy));
        // Frames a policy may take out of a queue later carry their room; others are plain
        // output (small ones are then copied together in a queue).
        let tag = if policy.drops_queued() { room } else { 0 };
        let members: Vec<usize> = match topic {
            Some(topic) => self.rooms.members(topic).to_vec(),
            None => self
                .conns
                .iter()
                .filter(|(_, e)| e.conn.is_open())
                .map(|(k, _)| k)
                .collect(),
        };
        self.spend(members.len());
        let (mut delivered, mut dropped) = (0, 0);
        for key in members {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            if !entry.conn.is_open() {
                // A member that subscribed in `on_open` while its upgrade is decided: its
                // connection keeps the frame for after the 101. Closing members get nothing.
                let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
                let kept = entry.conn.send(kind, payload, &mut door, &mut self.shared);
                delivered += usize::from(kept.is_ok());
                continue;
            }
            let encoding = entry.conn.encoding(payload.len(), &self.shared);
            let policed = entry.out.is_slow(self.config.max_backpressure);
            if policed {
                self.stats.slow_consumer_events += 1;
                let own_stream = encoding == Encoding::Own;
                let verdict = entry.out.police(
                    key,
                    &mut self.budget,
                    &mut self.outbox,
                    room,
                    policy,
                    own_stream,
                );
                dropped += verdict.dropped();
                match verdict {
                    Verdict::Queue { .. } => {}
                    Verdict::Skip => continue,
                    Verdict::Close => {
                        warn!("#{key}: send queue over --max-backpressure: closing with 1008");
                        self.close(key, CloseCode::POLICY_VIOLATION, "slow consumer");
                        continue;
                    }
                }
            }
            delivered += 1;
            let mut door = Door::new(key, &mut entry.out, &mut self.outbox);
            let slot = match encoding {
                Encoding::Plain => 0,
                Encoding::Deflate { window_bits } => usize::from(window_bits.clamp(9, 15) - 8),
                Encoding::Own => {
                    let _ = entry.conn.send(kind, payload, &mut door, &mut self.shared);
                    continue;
                }
            };
            let Some(cell) = frames.get_mut(slot) else {
                continue;
            };
            if cell.is_none() {
                *cell = self
                    .shared
                    .shared_frame(kind, payload, encoding)
                    .map(Rc::from);
            }
            let Some(frame) = cell.as_ref() else {
                continue;
            };
            if policed {
                door.push_policed(frame, room);
            } else {
                door.push_shared(frame, tag);
            }
        }
        self.stats.messages_out += delivered as u64;
        self.stats.dropped_messages += dropped as u64;
        if let Some(topic) = topic.filter(|_| dropped > 0) {
            self.rooms.count_drops(topic, dropped as u64);
        }
        delivered
    }
}
