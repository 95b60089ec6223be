//! Rooms (pub/sub topics): which connections receive a publication, and what a room does
//! with a subscriber that cannot keep up.
//!
//! Membership only; the reactor encodes a publication into one shared frame and queues that
//! same frame for every member. Keys are slab keys of live connections: a connection leaves
//! every room when it is removed, so a room never names a dead or reused slot.

use std::collections::HashMap;

/// What a publication does to a subscriber whose send queue is over its high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomPolicy {
    /// Close the subscriber with 1008 (memory stays bounded and the client learns why).
    #[default]
    Close,
    /// Drop the new publication for that subscriber.
    DropNewest,
    /// Drop the oldest unsent whole frame of this room (queued, or else published earlier in
    /// the same turn), then queue the new one; with none to drop, drop the new one (a partly
    /// written frame is never touched).
    DropOldest,
    /// Keep only the newest unsent frame of this room (tickers, game state).
    LatestOnly,
}

impl RoomPolicy {
    /// Whether it takes frames already queued out again (drop-oldest, latest-only): the
    /// room's frames must then stay recognisable in the queues.
    pub(crate) fn drops_queued(self) -> bool {
        matches!(self, RoomPolicy::DropOldest | RoomPolicy::LatestOnly)
    }
}

impl std::str::FromStr for RoomPolicy {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<RoomPolicy, &'static str> {
        match s {
            "close" => Ok(RoomPolicy::Close),
            "drop" | "drop-newest" => Ok(RoomPolicy::DropNewest),
            "drop-oldest" => Ok(RoomPolicy::DropOldest),
            "latest-only" => Ok(RoomPolicy::LatestOnly),
            _ => Err("expected close, drop-newest, drop-oldest or latest-only"),
        }
    }
}

/// One room.
#[derive(Debug)]
pub(crate) struct Room {
    /// Tags this room's frames in output queues.
    pub(crate) id: u32,
    /// Subscribed connections.
    pub(crate) members: Vec<usize>,
    /// Slow-consumer policy.
    pub(crate) policy: RoomPolicy,
    /// Publications dropped for slow subscribers (drop policies), for `/metrics`.
    pub(crate) dropped: u64,
}

/// Topic membership, both ways.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    topics: HashMap<Box<str>, Room>,
    by_conn: HashMap<usize, Vec<Box<str>>>,
    /// Policies set for rooms before (or between) their members.
    policies: HashMap<Box<str>, RoomPolicy>,
    default_policy: RoomPolicy,
    next_id: u32,
    /// Members across all rooms, kept as they join and leave (read every loop turn by a
    /// worker of several, so it must not cost a walk over the rooms).
    subscriptions: usize,
}

impl Rooms {
    /// Rooms whose policy is `default_policy` unless set otherwise.
    pub(crate) fn new(default_policy: RoomPolicy) -> Rooms {
        Rooms {
            default_policy,
            ..Rooms::default()
        }
    }

    /// Sets the slow-consumer policy of `topic` (now and whenever it has members again).
    pub(crate) fn set_policy(&mut self, topic: &str, policy: RoomPolicy) {
        self.policies.insert(topic.into(), policy);
        if let Some(room) = self.topics.get_mut(topic) {
            room.policy = policy;
        }
    }

    /// Adds `key` to `topic`; returns false if it was already a member.
    pub(crate) fn subscribe(&mut self, key: usize, topic: &str) -> bool {
        if !self.topics.contains_key(topic) {
            self.next_id = self.next_id.wrapping_add(1);
            let policy = self
                .policies
                .get(topic)
                .copied()
                .unwrap_or(self.default_policy);
            let room = Room {
                id: self.next_id,
                members: Vec::new(),
                policy,
                dropped: 0,
            };
            self.topics.insert(topic.into(), room);
        }
        let Some(room) = self.topics.get_mut(topic) else {
            return false;
        };
        if room.members.contains(&key) {
            return false;
        }
        room.members.push(key);
        self.subscriptions += 1;
        self.by_conn.entry(key).or_default().push(topic.into());
        true
    }

    /// Removes `key` from `topic`; returns false if it was not a member.
    pub(crate) fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        if !self.leave(key, topic) {
            return false;
        }
        if let Some(topics) = self.by_conn.get_mut(&key) {
            topics.retain(|t| &**t != topic);
            if topics.is_empty() {
                self.by_conn.remove(&key);
            }
        }
        true
    }

    /// Removes `key` from every room (the connection is gone), calling `emptied` for each
    /// room it was the last member of.
    pub(crate) fn remove_conn(&mut self, key: usize, mut emptied: impl FnMut(&str)) {
        for topic in self.by_conn.remove(&key).unwrap_or_default() {
            if self.leave(key, &topic) && !self.topics.contains_key(&topic) {
                emptied(&topic);
            }
        }
    }

    fn leave(&mut self, key: usize, topic: &str) -> bool {
        let Some(room) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(at) = room.members.iter().position(|&k| k == key) else {
            return false;
        };
        room.members.swap_remove(at);
        self.subscriptions = self.subscriptions.saturating_sub(1);
        if room.members.is_empty() {
            self.topics.remove(topic);
        }
        true
    }

    /// The rooms connection `key` is a member of.
    pub(crate) fn topics_of(&self, key: usize) -> &[Box<str>] {
        self.by_conn.get(&key).map_or(&[], Vec::as_slice)
    }

    /// The room named `topic`, if it has members.
    pub(crate) fn get(&self, topic: &str) -> Option<&Room> {
        self.topics.get(topic)
    }

    /// Counts `n` publications dropped for slow members of `topic`.
    pub(crate) fn count_drops(&mut self, topic: &str, n: u64) {
        if let Some(room) = self.topics.get_mut(topic) {
            room.dropped += n;
        }
    }

    /// The members of `topic` (empty when nobody subscribed).
    pub(crate) fn members(&self, topic: &str) -> &[usize] {
        self.topics
            .get(topic)
            .map(|r| r.members.as_slice())
            .unwrap_or_default()
    }

    /// Every room with members: (name, room).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Room)> {
        self.topics.iter().map(|(name, room)| (&**name, room))
    }

    /// Subscriptions across all rooms.
    pub(crate) fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Number of rooms with at least one member.
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_both_ways() {
        let mut rooms = Rooms::default();
        assert!(rooms.subscribe(1, "a"));
        assert!(!rooms.subscribe(1, "a"));
        assert!(rooms.subscribe(2, "a"));
        assert!(rooms.subscribe(2, "b"));
        assert_eq!(rooms.members("a"), &[1, 2]);
        assert_eq!(rooms.subscriptions(), 3);
        let mut emptied = Vec::new();
        rooms.remove_conn(2, |t| emptied.push(t.to_owned()));
        assert_eq!(emptied, ["b"]);
        assert_eq!(rooms.members("a"), &[1]);
        assert_eq!(rooms.subscriptions(), 1);
        assert!(rooms.members("b").is_empty());
        assert_eq!(rooms.len(), 1);
        assert!(rooms.unsubscribe(1, "a"));
        assert!(!rooms.unsubscribe(1, "a"));
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn policies_default_and_per_room() {
        let mut rooms = Rooms::new(RoomPolicy::DropNewest);
        rooms.set_policy("ticker", RoomPolicy::LatestOnly);
        rooms.subscribe(1, "ticker");
        rooms.subscribe(1, "chat");
        assert_eq!(
            rooms.get("ticker").map(|r| r.policy),
            Some(RoomPolicy::LatestOnly)
        );
        assert_eq!(
            rooms.get("chat").map(|r| r.policy),
            Some(RoomPolicy::DropNewest)
        );
        assert_ne!(
            rooms.get("ticker").map(|r| r.id),
            rooms.get("chat").map(|r| r.id)
        );
        assert_eq!("drop-oldest".parse(), Ok(RoomPolicy::DropOldest));
        assert!("nope".parse::<RoomPolicy>().is_err());
    }
}
