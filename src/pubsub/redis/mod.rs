//! The Redis upstream: rooms that span processes and hosts.
//!
//! Two threads per process bridge the reactors to Redis with the `redis` crate's synchronous
//! client (no async runtime): the *publisher* takes publications from a bounded queue and
//! PUBLISHes them in pipelined batches; the *subscriber* holds one connection in pub/sub mode,
//! SUBSCRIBEd to `PREFIX + topic` exactly while some worker of the process has a subscriber
//! to the topic, and hands what arrives to the [`Hub`] (local workers only).
//!
//! The sync client never reconnects by itself, so both threads do: on any connection error
//! they reconnect with capped exponential backoff and jitter, and the subscriber SUBSCRIBEs
//! again to every topic it wants. Local delivery never waits for Redis. Delivery between
//! processes is at-most-once: a full queue drops (counted), and a batch whose send failed is
//! lost (counted; never resent, since Redis may have delivered part of it).

mod backoff;
mod publisher;
mod subscriber;
pub(crate) mod wire;

use std::io;
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::{BrokerStats, Delivery, Hub, Upstream};
use crate::config::RedisConfig;

/// Time allowed to open a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A change of the process's interest in a topic, for the subscriber thread.
#[derive(Debug)]
enum Control {
    Subscribe(String),
    Unsubscribe(String),
}

/// The hub's [`Upstream`] when Redis is configured: the sending ends of the two threads.
#[derive(Debug)]
pub(crate) struct RedisBridge {
    /// This process's name in the messages it publishes.
    origin: u64,
    outgoing: SyncSender<Delivery>,
    control: Sender<Control>,
    /// The topics the subscriber has confirmed (see [`Upstream::subscribed`]).
    confirmed: subscriber::Confirmed,
    stats: Arc<BrokerStats>,
    dropped_logged: std::sync::atomic::AtomicBool,
    /// Set on drop, so a publisher waiting for Redis with a batch in hand stops retrying.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for RedisBridge {
    fn drop(&mut self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RedisBridge {
    /// Checks the URL and starts the publisher and subscriber threads. Does not wait for
    /// Redis: when it is unreachable the threads keep retrying while the server runs locally.
    ///
    /// # Errors
    /// When the URL is invalid or a thread cannot be started.
    pub(crate) fn start(
        config: &RedisConfig,
        hub: Weak<Hub>,
        stats: Arc<BrokerStats>,
    ) -> io::Result<RedisBridge> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Only needs to differ between processes (a process drops its own echo by it).
        let origin = SmallRng::from_os_rng().next_u64();
        let (outgoing, queue) = sync_channel(config.queue.max(1));
        let (control, control_rx) = channel();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let publisher = publisher::Publisher {
            closed: Arc::clone(&closed),
            client: client.clone(),
            prefix: config.prefix.clone(),
            origin,
            batch: config.batch.max(1),
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("wsloop-redis-pub".into())
            .spawn(move || publisher.run(&queue))?;
        let confirmed = subscriber::Confirmed::default();
        let subscriber = subscriber::Subscriber::new(
            client,
            config.prefix.clone(),
            origin,
            hub,
            Arc::clone(&stats),
            Arc::clone(&confirmed),
        );
        std::thread::Builder::new()
            .name("wsloop-redis-sub".into())
            .spawn(move || subscriber.run(&control_rx))?;
        Ok(RedisBridge {
            origin,
            outgoing,
            control,
            confirmed,
            stats,
            dropped_logged: Default::default(),
            closed,
        })
    }
}

impl Upstream for RedisBridge {
    fn publish(&self, delivery: &Delivery) {
        match self.outgoing.try_send(delivery.clone()) {
            Ok(()) => BrokerStats::bump(&self.stats.upstream_queued),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                BrokerStats::bump(&self.stats.upstream_dropped);
                if !self
                    .dropped_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!("redis: publish queue full: dropping publications (counted in /stats)");
                }
            }
        }
    }

    fn origin(&self) -> u64 {
        self.origin
    }

    fn subscribed(&self, topic: &str) -> bool {
        subscriber::confirmed(&self.confirmed).contains(topic)
    }

    fn interest(&self, topic: &str, subscribed: bool) {
        let topic = topic.to_owned();
        let _ = self.control.send(if subscribed {
            Control::Subscribe(topic)
        } else {
            Control::Unsubscribe(topic)
        });
    }
}

/// Wall-clock microseconds since the Unix epoch (0 before it).
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A fresh synchronous connection (the client never reconnects by itself).
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    client.get_connection_with_timeout(CONNECT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_queue_towards_redis_is_bounded_and_drops_are_counted() {
        // Nothing listens on port 1: the publisher holds one batch and retries; the queue
        // (capacity 2) fills up and the rest is dropped, without ever blocking the caller.
        let config = RedisConfig {
            queue: 2,
            batch: 1,
            ..RedisConfig::new("redis://127.0.0.1:1")
        };
        let stats = Arc::new(BrokerStats::default());
        let bridge = RedisBridge::start(&config, Weak::new(), Arc::clone(&stats)).unwrap();
        let delivery = Delivery {
            topic: "t".into(),
            kind: super::super::Kind::Text,
            payload: b"x"[..].into(),
            id: None,
        };
        for _ in 0..100 {
            bridge.publish(&delivery);
        }
        let queued = stats.upstream_queued.load(Ordering::Relaxed);
        let dropped = stats.upstream_dropped.load(Ordering::Relaxed);
        assert_eq!(queued + dropped, 100);
        assert!(queued <= 3, "queue plus the batch in hand: {queued}");
    }

    #[test]
    fn an_invalid_url_is_an_error_at_start() {
        let config = RedisConfig::new("not a url");
        assert!(RedisBridge::start(&config, Weak::new(), Arc::default()).is_err());
    }
}
