//! The in-process broker: fan-out among the workers (reactors) of one process, and the one
//! place that talks to the [`Upstream`] (Redis) for all of them.
//!
//! Interest is a bit mask of workers per topic, kept under one mutex that is touched only when
//! a worker gains its first or loses its last subscriber to a topic, and (briefly, to read a
//! mask) once per publication. The process subscribes upstream while any bit is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BrokerStats, Delivery, Kind, Mailbox, Upstream};

/// Most workers a hub serves (one bit each in the interest mask).
pub(crate) const MAX_WORKERS: usize = 64;

/// The broker shared by every worker of a process.
pub(crate) struct Hub {
    mailboxes: Vec<Mailbox>,
    interest: Mutex<HashMap<Box<str>, u64>>,
    upstream: Option<Box<dyn Upstream>>,
    stats: Arc<BrokerStats>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("workers", &self.mailboxes.len())
            .field("upstream", &self.upstream.is_some())
            .finish()
    }
}

impl Hub {
    /// A hub delivering to `mailboxes` (worker `i` is `mailboxes[i]`), at most
    /// [`MAX_WORKERS`] of them, and to `upstream` when given.
    pub(crate) fn new(
        mailboxes: Vec<Mailbox>,
        upstream: Option<Box<dyn Upstream>>,
        stats: Arc<BrokerStats>,
    ) -> Hub {
        Hub {
            mailboxes,
            interest: Mutex::new(HashMap::new()),
            upstream,
            stats,
        }
    }

    /// The broker counters.
    pub(crate) fn stats(&self) -> &BrokerStats {
        &self.stats
    }

    /// Worker `from` published (and already delivered to its own subscribers): pass the
    /// message to the other interested workers and upstream.
    pub(crate) fn publish(&self, from: usize, topic: &str, kind: Kind, payload: &[u8]) {
        let others = self.mask(topic) & !bit(from);
        if others == 0 && self.upstream.is_none() {
            return;
        }
        let delivery = Delivery {
            topic: topic.into(),
            kind,
            payload: payload.into(),
            id: None,
        };
        self.post(others, &delivery);
        if let Some(upstream) = &self.upstream {
            upstream.publish(&delivery);
        }
    }

    /// A publication from another process: every interested local worker gets it; it is
    /// never published again.
    // The Redis bridge is the only upstream: without it nothing calls this but the tests.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deliver_from_upstream(&self, delivery: &Delivery) {
        self.post(self.mask(&delivery.topic), delivery);
    }

    /// Worker `worker` gained its first (`subscribed`) or lost its last subscriber to
    /// `topic`. The upstream hears about process-wide transitions, in order.
    pub(crate) fn interest(&self, worker: usize, topic: &str, subscribed: bool) {
        let mut table = self.lock();
        let before = table.get(topic).copied().unwrap_or(0);
        let after = if subscribed {
            before | bit(worker)
        } else {
            before & !bit(worker)
        };
        if after == 0 {
            table.remove(topic);
        } else {
            table.insert(topic.into(), after);
        }
        if (before == 0) != (after == 0) {
            if let Some(upstream) = &self.upstream {
                upstream.interest(topic, subscribed);
            }
        }
    }

    /// Whether publications to `topic` from other processes reach this one (always, without
    /// an upstream).
    pub(crate) fn subscribed(&self, topic: &str) -> bool {
        self.upstream.as_ref().is_none_or(|u| u.subscribed(topic))
    }

    /// This process's name in what it publishes upstream, if it has an upstream.
    pub(crate) fn origin(&self) -> Option<u64> {
        self.upstream.as_ref().map(|u| u.origin())
    }

    /// Topics with a subscriber on any worker: the process's rooms.
    pub(crate) fn topics(&self) -> usize {
        self.lock().len()
    }

    fn mask(&self, topic: &str) -> u64 {
        self.lock().get(topic).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, u64>> {
        // A panic while holding this lock cannot leave the table half-updated.
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, mask: u64, delivery: &Delivery) {
        if mask == 0 {
            return;
        }
        for (i, mailbox) in self.mailboxes.iter().enumerate() {
            if mask & bit(i) != 0 && !mailbox.post(delivery.clone()) {
                BrokerStats::bump(&self.stats.mailbox_dropped);
            }
        }
    }
}

fn bit(worker: usize) -> u64 {
    1u64.checked_shl(worker as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::mailbox::mailbox;
    use mio::{Poll, Token, Waker};
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<String>>);

    impl Upstream for Arc<Recorder> {
        fn publish(&self, d: &Delivery) {
            self.0.lock().unwrap().push(format!("pub {}", d.topic));
        }
        fn interest(&self, topic: &str, subscribed: bool) {
            self.0.lock().unwrap().push(format!("{topic} {subscribed}"));
        }
        fn subscribed(&self, _topic: &str) -> bool {
            true
        }

        fn origin(&self) -> u64 {
            0
        }
    }

    #[test]
    fn fans_out_to_other_interested_workers_and_tracks_interest() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let (m0, in0) = mailbox(4, Arc::clone(&waker));
        let (m1, in1) = mailbox(4, waker);
        let rec = Arc::new(Recorder::default());
        let hub = Hub::new(
            vec![m0, m1],
            Some(Box::new(Arc::clone(&rec))),
            Arc::default(),
        );
        hub.interest(0, "t", true);
        hub.interest(1, "t", true);
        hub.publish(0, "t", Kind::Text, b"hi");
        assert_eq!(
            in0.drain().count(),
            0,
            "the publisher delivered locally already"
        );
        let got: Vec<_> = in1.drain().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].payload, b"hi");
        hub.interest(0, "t", false);
        hub.interest(1, "t", false);
        hub.deliver_from_upstream(&got[0]);
        assert_eq!(in1.drain().count(), 0, "nobody is interested any more");
        assert_eq!(
            *rec.0.lock().unwrap(),
            ["t true", "pub t", "t false"],
            "upstream hears only process-wide transitions"
        );
    }
}
