//! Publish/subscribe: [`rooms`] (who is subscribed to what, and what a room does with a
//! subscriber that cannot keep up), and the broker seam — how a publication reaches
//! subscribers on other reactors ([`hub`], [`mailbox`]) and other processes ([`redis`]).
//!
//! A reactor always delivers a publication to its own subscribers first, directly (each frame
//! encoded once per encoding and shared; see `reactor::publish`). When the reactor belongs to
//! a [`hub::Hub`] it then hands the message to the hub, which copies it once into an `Arc`
//! and drops it into the [`Mailbox`] of every other worker of the process that has a
//! subscriber to the topic, and passes it to the [`Upstream`] (Redis) when one is
//! configured. What arrives from upstream goes to the local
//! workers only; nothing received is ever published again, so messages cannot loop.
//!
//! Delivery through the broker is at-most-once: every queue on the way is bounded and drops
//! (and counts) rather than blocking a reactor.

pub(crate) mod hub;
pub(crate) mod mailbox;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(not(feature = "redis"))]
#[path = "no_redis.rs"]
pub(crate) mod redis;
pub(crate) mod rooms;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use hub::Hub;
pub(crate) use mailbox::{Inbox, Mailbox};

/// A data message's kind, carried with it between reactors and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text (valid UTF-8, checked again by the receiving reactor).
    Text,
    /// Binary.
    Binary,
}

/// A publication travelling between reactors: the topic and payload are shared, not copied,
/// among the workers that receive it.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The topic (room) it was published on.
    pub(crate) topic: Arc<str>,
    /// Text or binary.
    pub(crate) kind: Kind,
    /// The message payload.
    pub(crate) payload: Arc<[u8]>,
    /// From Redis: the publishing process and its sequence number on this topic, which name
    /// the message in every process that receives it (an upgrade's cut-over uses them).
    pub(crate) id: Option<(u64, u64)>,
}

/// Where a hub sends what leaves the process (and learns nothing back through this trait:
/// the upstream calls [`Hub::deliver_from_upstream`] itself).
pub(crate) trait Upstream: Send + Sync {
    /// Queues a publication for other processes. Must not block.
    fn publish(&self, delivery: &Delivery);
    /// The process gained its first (`true`) or lost its last (`false`) subscriber to
    /// `topic`. Called in order, under the hub's interest lock.
    fn interest(&self, topic: &str, subscribed: bool);
    /// Whether other processes' publications to `topic` reach this one now (Redis confirmed
    /// the SUBSCRIBE): an upgrade waits for it before moving a room's members.
    fn subscribed(&self, topic: &str) -> bool;
    /// This process's name in the messages it publishes (see [`Delivery::id`]).
    fn origin(&self) -> u64;
}

/// Counters of the broker side of a process, bumped by the hub and the upstream threads.
#[derive(Debug, Default)]
pub(crate) struct BrokerStats {
    /// Publications handed to the upstream's queue.
    pub(crate) upstream_queued: AtomicU64,
    /// Publications dropped because the upstream queue was full.
    pub(crate) upstream_dropped: AtomicU64,
    /// Publications sent to the upstream (PUBLISH acknowledged).
    pub(crate) upstream_sent: AtomicU64,
    /// Publications lost in a batch whose send failed (the connection broke mid-way).
    pub(crate) upstream_lost: AtomicU64,
    /// Publications received from the upstream and handed to local workers.
    pub(crate) upstream_received: AtomicU64,
    /// Our own publications coming back from the upstream, dropped.
    pub(crate) echoes_dropped: AtomicU64,
    /// Messages from the upstream that were not ours to read (bad framing), dropped.
    pub(crate) malformed: AtomicU64,
    /// Sequence numbers skipped by other publishers: messages lost between nodes.
    pub(crate) gaps: AtomicU64,
    /// Largest publish-to-receive lag seen, in microseconds (wall clocks of two hosts).
    pub(crate) lag_us_max: AtomicU64,
    /// Sum of lags, in microseconds, over `upstream_received`.
    pub(crate) lag_us_sum: AtomicU64,
    /// Deliveries dropped because a worker's mailbox was full.
    pub(crate) mailbox_dropped: AtomicU64,
    /// Connections (re)established to the upstream, publisher and subscriber together.
    pub(crate) connects: AtomicU64,
    /// Connection attempts that failed or connections that broke.
    pub(crate) connection_errors: AtomicU64,
    /// Topics the process is subscribed to upstream right now.
    pub(crate) subscribed_topics: AtomicU64,
}

impl BrokerStats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `"broker":{...}`, to append to the stats JSON.
    pub(crate) fn to_json_field(&self) -> String {
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
