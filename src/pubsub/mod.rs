//! The broker seam: how a publication reaches subscribers on other reactors.
//!
//! A reactor always delivers a publication to its own subscribers first, directly (the frame
//! encoded once). When the reactor belongs to a [`hub::Hub`] it then hands the message to the
//! hub, which copies it once into an `Arc` and drops it into the [`Mailbox`] of every other
//! worker of the process that has a subscriber to the topic, and passes it to the
//! [`Upstream`] (Redis) when one is configured. What arrives from upstream goes to the local
//! workers only; nothing received is ever published again, so messages cannot loop.
//!
//! Delivery through the broker is at-most-once: every queue on the way is bounded and drops
//! (and counts) rather than blocking a reactor.

pub mod hub;
pub mod mailbox;
pub mod random;
pub mod redis;
pub mod rooms;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use hub::Hub;
pub use mailbox::{Inbox, Mailbox};

/// A data message's kind, carried with it between reactors and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (valid UTF-8, checked again by the receiving reactor).
    Text,
    /// Binary.
    Binary,
}

/// A publication travelling between reactors: the topic and payload are shared, not copied,
/// among the workers that receive it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The topic (room) it was published on.
    pub topic: Arc<str>,
    /// Text or binary.
    pub kind: Kind,
    /// The message payload.
    pub payload: Arc<[u8]>,
}

/// Where a hub sends what leaves the process (and learns nothing back through this trait:
/// the upstream calls [`Hub::deliver_from_upstream`] itself).
pub trait Upstream: Send + Sync {
    /// Queues a publication for other processes. Must not block.
    fn publish(&self, delivery: &Delivery);
    /// The process gained its first (`true`) or lost its last (`false`) subscriber to
    /// `topic`. Called in order, under the hub's interest lock.
    fn interest(&self, topic: &str, subscribed: bool);
}

/// Counters of the broker side of a process, bumped by the hub and the upstream threads.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Publications handed to the upstream's queue.
    pub upstream_queued: AtomicU64,
    /// Publications dropped because the upstream queue was full.
    pub upstream_dropped: AtomicU64,
    /// Publications sent to the upstream (PUBLISH acknowledged).
    pub upstream_sent: AtomicU64,
    /// Publications lost in a batch whose send failed (the connection broke mid-way).
    pub upstream_lost: AtomicU64,
    /// Publications received from the upstream and handed to local workers.
    pub upstream_received: AtomicU64,
    /// Our own publications coming back from the upstream, dropped.
    pub echoes_dropped: AtomicU64,
    /// Messages from the upstream that were not ours to read (bad framing), dropped.
    pub malformed: AtomicU64,
    /// Sequence numbers skipped by other publishers: messages lost between nodes.
    pub gaps: AtomicU64,
    /// Largest publish-to-receive lag seen, in microseconds (wall clocks of two hosts).
    pub lag_us_max: AtomicU64,
    /// Sum of lags, in microseconds, over `upstream_received`.
    pub lag_us_sum: AtomicU64,
    /// Deliveries dropped because a worker's mailbox was full.
    pub mailbox_dropped: AtomicU64,
    /// Connections (re)established to the upstream, publisher and subscriber together.
    pub connects: AtomicU64,
    /// Connection attempts that failed or connections that broke.
    pub connection_errors: AtomicU64,
    /// Topics the process is subscribed to upstream right now.
    pub subscribed_topics: AtomicU64,
}

impl BrokerStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `"broker":{...}`, to append to the stats JSON.
    pub fn to_json_field(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            ",\"broker\":{{\"upstream_queued\":{},\"upstream_dropped\":{},\"upstream_sent\":{},\
             \"upstream_lost\":{},\"upstream_received\":{},\"echoes_dropped\":{},\"malformed\":{},\
             \"gaps\":{},\"lag_us_max\":{},\"lag_us_sum\":{},\"mailbox_dropped\":{},\
             \"connects\":{},\"connection_errors\":{},\"subscribed_topics\":{}}}",
            get(&self.upstream_queued),
            get(&self.upstream_dropped),
            get(&self.upstream_sent),
            get(&self.upstream_lost),
            get(&self.upstream_received),
            get(&self.echoes_dropped),
            get(&self.malformed),
            get(&self.gaps),
            get(&self.lag_us_max),
            get(&self.lag_us_sum),
            get(&self.mailbox_dropped),
            get(&self.connects),
            get(&self.connection_errors),
            get(&self.subscribed_topics),
        )
    }
}
