//! Rooms and publication: subscriptions, one shared frame per publication for every local
//! subscriber (per-room slow-consumer policies), and the hand-off to and from the broker.

use std::rc::Rc;

use log::{debug, warn};

use crate::protocol::frame::{data_header, OpCode, MAX_HEADER_LEN};
use crate::protocol::CloseCode;
use crate::server::app::{ConnId, Message};
use crate::server::broker::{Delivery, Kind};
use crate::server::rooms::RoomPolicy;

use super::{opcode_of, Core};

impl Core {
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
    pub(super) fn interest(&self, topic: &str, subscribed: bool) {
        if let Some(member) = &self.member {
            member.interest(topic, subscribed);
        }
    }

    /// Removes a connection from every room, telling the hub about rooms it left empty.
    pub(super) fn leave_rooms(&mut self, key: usize) {
        let member = self.member.as_deref();
        self.rooms.remove_conn(key, |topic| {
            if let Some(member) = member {
                member.interest(topic, false);
            }
        });
    }

    /// A publication from the broker: this reactor's subscribers only.
    pub(super) fn deliver_from_broker(&mut self, delivery: &Delivery) {
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
    pub(super) fn publish_local(&mut self, topic: Option<&str>, msg: Message<'_>) -> usize {
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
                        // Unsent frames are in the connection's queue (older) and in this
                        // turn's outbox (published earlier in the same turn).
                        let all = policy == RoomPolicy::LatestOnly;
                        let (queued, _) = conn.out.drop_room_frames(room, all);
                        let (corked, freed) = if all || queued == 0 {
                            self.outbox.drop_room_frames(key, room, all)
                        } else {
                            (0, 0)
                        };
                        conn.corked = conn.corked.saturating_sub(freed);
                        queued + corked
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
