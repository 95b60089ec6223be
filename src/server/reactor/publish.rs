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
    /// reactor (or every open connection). Slow members (`Connection::is_slow`) get the room's
    /// slow-consumer policy instead. Each member is one unit of the publisher's work this turn.
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
        // Frames a policy may take out of a queue later carry their room; others are plain
        // output (small ones are then copied together in a queue).
        let tag = if policy.drops_queued() { room } else { 0 };
        let members: Vec<usize> = match topic {
            Some(topic) => self.rooms.members(topic).to_vec(),
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.is_open())
                .map(|(k, _)| k)
                .collect(),
        };
        self.spend(members.len());
        let min_size = self
            .config
            .deflate
            .as_ref()
            .map_or(usize::MAX, |d| d.min_size);
        let (mut delivered, mut dropped) = (0, 0);
        for key in members {
            let Some(conn) = self.conns.get(key).filter(|c| c.is_open()) else {
                continue;
            };
            let shared_deflate = conn
                .deflate
                .as_ref()
                .filter(|_| payload.len() >= min_size)
                .map(|d| {
                    (
                        d.params.server_no_context_takeover,
                        d.params.server_max_window_bits,
                    )
                });
            let policed = conn.is_slow(self.config.max_backpressure);
            if policed {
                // Its own compressed stream cannot lose a frame later: drop this one instead.
                let own_stream = matches!(shared_deflate, Some((false, _)));
                let policy = if own_stream && policy.drops_queued() {
                    RoomPolicy::DropNewest
                } else {
                    policy
                };
                let (queue, made_room) = self.police(key, room, policy);
                dropped += made_room;
                if !queue {
                    continue;
                }
            }
            delivered += 1;
            let frame = match shared_deflate {
                Some((true, bits)) => {
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
                Some((false, _)) => {
                    self.queue_message(key, &msg);
                    continue;
                }
                None => Rc::clone(&frame),
            };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.corked += frame.len();
            }
            if policed {
                self.outbox.push_policed(key, &frame, room);
            } else {
                self.outbox.push_shared(key, &frame, tag);
            }
        }
        self.stats.messages_out += delivered as u64;
        self.stats.dropped_messages += dropped as u64;
        if let Some(topic) = topic.filter(|_| dropped > 0) {
            self.rooms.count_drops(topic, dropped as u64);
        }
        delivered
    }

    /// A publication meets slow member `key` of `room` (0: a broadcast): applies `policy`.
    /// Returns whether the new frame is still queued for it, and how many frames were dropped
    /// (the new one, or older ones that made room for it).
    fn police(&mut self, key: usize, room: u32, policy: RoomPolicy) -> (bool, usize) {
        self.stats.backpressure_closes += 1;
        match policy {
            RoomPolicy::Close => {
                warn!("#{key}: send queue over --max-backpressure: closing with 1008");
                self.start_close(key, CloseCode::POLICY_VIOLATION, "slow consumer");
                (false, 0)
            }
            RoomPolicy::DropOldest if room != 0 => match self.drop_older(key, room, false) {
                0 => (false, 1),
                older => (true, older),
            },
            RoomPolicy::LatestOnly if room != 0 => (true, self.drop_older(key, room, true)),
            _ => (false, 1),
        }
    }

    /// Takes unsent whole frames of `room` out of slow member `key`'s output — the oldest
    /// (queued first, else from this turn), or all of them — and returns how many. Nothing is
    /// searched for frames that are not there, and this turn's are found without a scan (see
    /// `OutQueue::drop_room_frames` and `Outbox::drop_policed`).
    fn drop_older(&mut self, key: usize, room: u32, all: bool) -> usize {
        let Some(conn) = self.conns.get_mut(key) else {
            return 0;
        };
        let (mut frames, _) = conn.out.drop_room_frames(room, all);
        if all || frames == 0 {
            let (this_turn, bytes) = self.outbox.drop_policed(key, room, all);
            conn.corked = conn.corked.saturating_sub(bytes);
            frames += this_turn;
        }
        self.reaccount(key);
        frames
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
