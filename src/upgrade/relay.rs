//! Room publications while connections move: the members of a room are split between the two
//! processes until the last batch, and each publication must still reach every member once
//! and in order.
//!
//! The old process is the one sequencer. It publishes as always (to the members it still
//! has) and relays each publication to the new process, which delivers it to the members it
//! has adopted. The new process does not deliver its own publications: it relays them to the
//! old process, which sequences them like its own and relays them back. Since the channel is
//! ordered, a member moved by a batch sent before a relayed publication gets it from the new
//! process, and one moved after it got it from the old process (in the unsent output it moved
//! with): never both, never neither. The new process keeps relaying until every publication
//! it sent has come back, and only then takes over. Deliveries from its other workers and from
//! Redis wait meanwhile ([`Held`]), since earlier messages of the same senders come through
//! the old process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wsloop_proto::codec::{CodecError, Reader, Writer};

use crate::pubsub::Delivery;

use crate::app::Message;

/// Most publications one relay message carries (one message per loop turn).
const MAX_ITEMS: usize = 1 << 20;

/// One publication on its way between the processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The room, or `None` for a broadcast to every open connection.
    pub(crate) topic: Option<String>,
    /// Text (else binary).
    pub(crate) text: bool,
    pub(crate) payload: Vec<u8>,
    /// Made in the new process (and coming back to it from the sequencer).
    pub(crate) from_new: bool,
    /// A Redis message's name ([`crate::pubsub::Delivery::id`]), when it came from Redis.
    pub(crate) id: Option<(u64, u64)>,
}

impl Relayed {
    pub(crate) fn new(topic: Option<&str>, msg: Message<'_>, from_new: bool) -> Relayed {
        let (text, payload) = match msg {
            Message::Text(text) => (true, text.as_bytes()),
            Message::Binary(bytes) => (false, bytes),
        };
        Relayed {
            topic: topic.map(str::to_owned),
            text,
            payload: payload.to_vec(),
            from_new,
            id: None,
        }
    }

    /// The message, if a text payload is still valid UTF-8.
    pub(crate) fn message(&self) -> Option<Message<'_>> {
        match self.text {
            true => std::str::from_utf8(&self.payload).ok().map(Message::Text),
            false => Some(Message::Binary(&self.payload)),
        }
    }
}

/// A process's side of the relay, while connections move.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// The new process: publications go to the sequencer instead of being delivered here.
    pub(crate) forwarding: bool,
    /// Publications to send at the end of this turn, in order.
    pub(crate) out: Vec<Relayed>,
    /// The new process: publications sent that have not come back yet.
    pub(crate) pending: usize,
    /// The new process, once it stops relaying: its publications wait here, in order, for
    /// the last relayed ones to come back (then they go out directly). Under a steady stream
    /// of publications `pending` would otherwise seldom be zero.
    pub(crate) held: Option<Vec<Relayed>>,
}

impl Relay {
    /// A publication: made here, or (`from_new`) sequenced here for the new process. Returns
    /// whether it is delivered here now (not in the new process while it relays: it comes
    /// back from the sequencer).
    pub(crate) fn publish(
        &mut self,
        topic: Option<&str>,
        msg: Message<'_>,
        from_new: bool,
    ) -> bool {
        if let Some(held) = &mut self.held {
            held.push(Relayed::new(topic, msg, true));
            return false;
        }
        let from_new = from_new || self.forwarding;
        self.out.push(Relayed::new(topic, msg, from_new));
        self.pending += usize::from(self.forwarding);
        !self.forwarding
    }
}

/// The new process's hold on what the other workers and Redis deliver while connections
/// move: earlier messages of the same senders come through the old process meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// In arrival order.
    pub(crate) deliveries: Vec<Delivery>,
    /// Where this process's own Redis stream takes over from the old one's.
    pub(crate) cut: Cut,
}

/// Where, in each room, the new process's own Redis subscription takes over from the old
/// process's. Both subscriptions receive every message of a room in the same order (Redis
/// keeps each publisher's order); the old process delivers what it receives to its members
/// and relays it to the new one until it goes. Every member has therefore received, from
/// the old process, each publisher's messages up to the last one relayed: the new process
/// delivers from its own subscription only what comes after that mark — what it held while
/// connections moved, and what is still on its way from Redis when the handoff ends (the
/// reason the cut outlives the handoff). Messages the old process published itself are
/// never delivered from here: it delivered them and relayed them.
#[derive(Debug, Default)]
pub(crate) struct Cut {
    /// The old process's name in Redis.
    pub(crate) old_origin: Option<u64>,
    /// Per publisher and room, the last message relayed; forgotten once passed.
    last: HashMap<u64, HashMap<Box<str>, u64>>,
    /// After the handoff: no straggler of the old process's own is expected after this.
    until: Option<Instant>,
}

/// How long after the handoff the old process's own publications may still come in from
/// Redis (they left before it did; Redis delivers in milliseconds).
const STRAGGLERS: Duration = Duration::from_secs(10);

impl Cut {
    /// The old process relayed Redis message `id` of `topic`.
    pub(crate) fn relayed(&mut self, topic: Option<&str>, id: Option<(u64, u64)>) {
        if let (Some(topic), Some((origin, seq))) = (topic, id) {
            let rooms = self.last.entry(origin).or_default();
            match rooms.get_mut(topic) {
                Some(last) => *last = (*last).max(seq),
                None => {
                    rooms.insert(topic.into(), seq);
                }
            }
        }
    }

    /// The handoff ended at `now`: marks stay until passed, the old process's name a while.
    pub(crate) fn close(&mut self, now: Instant) {
        self.until = Some(now + STRAGGLERS);
    }

    /// Whether `delivery` reached this room's members through the old process already. A
    /// publisher's mark is forgotten once its stream passes it.
    pub(crate) fn covers(&mut self, delivery: &Delivery) -> bool {
        let Some((origin, seq)) = delivery.id else {
            return false; // Not from Redis: the other workers' own.
        };
        if Some(origin) == self.old_origin {
            return true;
        }
        let Some(rooms) = self.last.get_mut(&origin) else {
            return false;
        };
        match rooms.get(&*delivery.topic) {
            Some(&last) if seq <= last => true,
            Some(_) => {
                rooms.remove(&*delivery.topic);
                if rooms.is_empty() {
                    self.last.remove(&origin);
                }
                false
            }
            None => false,
        }
    }

    /// Whether it has anything to filter: through Redis only.
    pub(crate) fn filters(&self) -> bool {
        self.old_origin.is_some() || !self.last.is_empty()
    }

    /// Whether nothing is left to filter at `now`.
    pub(crate) fn spent(&self, now: Instant) -> bool {
        self.last.is_empty() && self.until.is_some_and(|until| now >= until)
    }
}

/// A relay message's body: the count, then each publication.
pub(crate) fn encode(items: &[Relayed]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u32(items.len() as u32);
    for item in items {
        w.bool(item.topic.is_some());
        w.bytes(item.topic.as_deref().unwrap_or_default().as_bytes());
        w.bool(item.text);
        w.bool(item.from_new);
        w.bytes(&item.payload);
        w.bool(item.id.is_some());
        let (origin, seq) = item.id.unwrap_or_default();
        w.u64(origin);
        w.u64(seq);
    }
    out
}

/// # Errors
/// Truncated, inconsistent or trailing bytes.
pub(crate) fn decode(body: &[u8]) -> Result<Vec<Relayed>, CodecError> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    if count > MAX_ITEMS {
        return Err(CodecError::Invalid("relay size"));
    }
    let mut items = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let has_topic = r.bool()?;
        let topic =
            String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CodecError::Invalid("topic"))?;
        items.push(Relayed {
            topic: has_topic.then_some(topic),
            text: r.bool()?,
            from_new: r.bool()?,
            payload: r.bytes()?.to_vec(),
            id: match (r.bool()?, r.u64()?, r.u64()?) {
                (true, origin, seq) => Some((origin, seq)),
                (false, ..) => None,
            },
        });
    }
    r.finish()?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Kind;

    fn from_redis(topic: &str, origin: u64, seq: u64) -> Delivery {
        Delivery {
            topic: topic.into(),
            kind: Kind::Text,
            payload: b"x"[..].into(),
            id: Some((origin, seq)),
        }
    }

    #[test]
    fn the_cut_drops_what_the_old_process_delivered_and_nothing_after() {
        let mut cut = Cut {
            old_origin: Some(1),
            ..Cut::default()
        };
        for seq in [3, 5, 4] {
            cut.relayed(Some("chat"), Some((2, seq)));
        }
        cut.relayed(None, Some((2, 99))); // A broadcast names no room: no mark.
        cut.relayed(Some("news"), None); // Not from Redis: no mark.
        assert!(cut.filters());
        // The old process's own, ever.
        assert!(cut.covers(&from_redis("chat", 1, 1000)));
        // Up to the last relayed, per publisher and room.
        assert!(cut.covers(&from_redis("chat", 2, 5)));
        assert!(!cut.covers(&from_redis("news", 2, 1)));
        assert!(!cut.covers(&from_redis("chat", 3, 1)));
        let now = Instant::now();
        cut.close(now);
        assert!(!cut.spent(now + STRAGGLERS), "a mark is left");
        // Passed: the mark is forgotten (a later lower number would be a new stream).
        assert!(!cut.covers(&from_redis("chat", 2, 6)));
        assert!(!cut.covers(&from_redis("chat", 2, 2)));
        assert!(!cut.spent(now));
        assert!(cut.spent(now + STRAGGLERS));
        // Not through Redis: nothing to filter.
        let plain = Cut::default();
        assert!(!plain.filters());
        let local = Delivery {
            id: None,
            ..from_redis("chat", 1, 1)
        };
        assert!(!Cut {
            old_origin: Some(1),
            ..Cut::default()
        }
        .covers(&local));
    }

    #[test]
    fn publications_come_back_as_they_went() {
        let items = vec![
            Relayed::new(Some("chat"), Message::Text("hi"), true),
            Relayed {
                id: Some((7, 9)),
                ..Relayed::new(None, Message::Binary(&[0, 255]), false)
            },
        ];
        let bytes = encode(&items);
        assert_eq!(decode(&bytes), Ok(items.clone()));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(items[0].message(), Some(Message::Text("hi")));
        let broken = Relayed {
            payload: vec![0xff],
            ..items[0].clone()
        };
        assert_eq!(broken.message(), None);
    }
}
