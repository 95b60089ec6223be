//! Rooms (pub/sub topics): which connections receive a publication.
//!
//! Membership only; the reactor encodes a publication into one shared frame and queues that
//! same frame for every member. Keys are slab keys of live connections: a connection leaves
//! every room when it is removed, so a room never names a dead or reused slot.

use std::collections::HashMap;

/// Topic membership, both ways.
#[derive(Debug, Default)]
pub struct Rooms {
    topics: HashMap<Box<str>, Vec<usize>>,
    by_conn: HashMap<usize, Vec<Box<str>>>,
}

impl Rooms {
    /// Adds `key` to `topic`; returns false if it was already a member.
    pub fn subscribe(&mut self, key: usize, topic: &str) -> bool {
        let members = self.topics.entry(topic.into()).or_default();
        if members.contains(&key) {
            return false;
        }
        members.push(key);
        self.by_conn.entry(key).or_default().push(topic.into());
        true
    }

    /// Removes `key` from `topic`; returns false if it was not a member.
    pub fn unsubscribe(&mut self, key: usize, topic: &str) -> bool {
        let Some(members) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(at) = members.iter().position(|&k| k == key) else {
            return false;
        };
        members.swap_remove(at);
        if members.is_empty() {
            self.topics.remove(topic);
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
    pub fn remove_conn(&mut self, key: usize, mut emptied: impl FnMut(&str)) {
        for topic in self.by_conn.remove(&key).unwrap_or_default() {
            if let Some(members) = self.topics.get_mut(&topic) {
                members.retain(|&k| k != key);
                if members.is_empty() {
                    self.topics.remove(&topic);
                    emptied(&topic);
                }
            }
        }
    }

    /// The members of `topic` (empty when nobody subscribed).
    pub fn members(&self, topic: &str) -> &[usize] {
        self.topics
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Number of rooms with at least one member.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no room has members.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
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
        let mut emptied = Vec::new();
        rooms.remove_conn(2, |t| emptied.push(t.to_owned()));
        assert_eq!(emptied, ["b"]);
        assert_eq!(rooms.members("a"), &[1]);
        assert!(rooms.members("b").is_empty());
        assert_eq!(rooms.len(), 1);
        assert!(rooms.unsubscribe(1, "a"));
        assert!(!rooms.unsubscribe(1, "a"));
        assert!(rooms.is_empty());
    }
}
