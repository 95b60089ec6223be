//! The subscriber thread: one pub/sub connection, SUBSCRIBEd to the topics the process has
//! local subscribers for, handing what arrives to the hub.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use log::{debug, info, warn};

use super::backoff::Backoff;
use super::wire::decode;
use super::{connect, unix_micros, Control};
use crate::pubsub::{BrokerStats, Delivery, Hub};

/// How long a read waits before the thread looks at subscription changes again: the delay
/// between a first local subscriber and the SUBSCRIBE, at worst.
const POLL: Duration = Duration::from_millis(20);

/// Why a session ended.
enum End {
    /// Every sender is gone: the process is shutting the broker down.
    Shutdown,
    /// The connection broke; reconnect.
    Broken(redis::RedisError),
}

/// Everything the thread owns.
/// The topics Redis confirmed, shared with the bridge ([`super::RedisBridge`]).
pub(super) type Confirmed = Arc<Mutex<HashSet<String>>>;

/// The confirmed set, locked (a panic elsewhere cannot leave it inconsistent: each change
/// is one call).
pub(super) fn confirmed(set: &Confirmed) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) struct Subscriber {
    client: redis::Client,
    prefix: String,
    origin: u64,
    hub: Weak<Hub>,
    stats: Arc<BrokerStats>,
    /// Topics with local subscribers, whether or not Redis is reachable now.
    wanted: HashSet<String>,
    /// The topics Redis has confirmed a SUBSCRIBE to on the current connection.
    confirmed: Confirmed,
    /// Last sequence number seen per publishing process and topic, for counting gaps.
    last_seq: HashMap<u64, HashMap<Box<str>, u64>>,
}

impl Subscriber {
    pub(super) fn new(
        client: redis::Client,
        prefix: String,
        origin: u64,
        hub: Weak<Hub>,
        stats: Arc<BrokerStats>,
        confirmed: Confirmed,
    ) -> Subscriber {
        Subscriber {
            client,
            prefix,
            origin,
            hub,
            stats,
            wanted: HashSet::new(),
            confirmed,
            last_seq: HashMap::new(),
        }
    }

    /// Connects, subscribes, receives; on any error reconnects with backoff and subscribes to
    /// every wanted topic again. Returns when the hub is gone.
    pub(super) fn run(mut self, control: &Receiver<Control>) {
        let mut backoff = Backoff::new();
        let mut down_logged = false;
        loop {
            if self.apply_offline(control).is_err() {
                return;
            }
            let mut con = match connect(&self.client) {
                Ok(con) => con,
                Err(e) => {
                    BrokerStats::bump(&self.stats.connection_errors);
                    if down_logged {
                        debug!("redis: subscriber cannot connect: {e}");
                    } else {
                        warn!("redis: subscriber cannot connect: {e}; serving local subscribers only, retrying");
                        down_logged = true;
                    }
                    std::thread::sleep(backoff.next_delay());
                    continue;
                }
            };
            match self.session(&mut con, control, &mut backoff) {
                End::Shutdown => return,
                End::Broken(e) => {
                    warn!("redis: subscriber connection lost: {e}; reconnecting");
                    BrokerStats::bump(&self.stats.connection_errors);
                    self.stats.subscribed_topics.store(0, Ordering::Relaxed);
                    confirmed(&self.confirmed).clear();
                    down_logged = true;
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
    }

    /// Records interest changes while there is no connection. `Err` when the hub is gone.
    fn apply_offline(&mut self, control: &Receiver<Control>) -> Result<(), ()> {
        loop {
            match control.try_recv() {
                Ok(Control::Subscribe(topic)) => {
                    self.wanted.insert(topic);
                }
                Ok(Control::Unsubscribe(topic)) => self.forget(&topic),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(()),
            }
        }
    }

    fn session(
        &mut self,
        con: &mut redis::Connection,
        control: &Receiver<Control>,
        backoff: &mut Backoff,
    ) -> End {
        let mut pubsub = con.as_pubsub();
        let resubscribed = pubsub.set_read_timeout(Some(POLL)).and_then(|()| {
            self.wanted
                .iter()
                .try_for_each(|t| pubsub.subscribe(self.channel(t)))
        });
        if let Err(e) = resubscribed {
            return End::Broken(e);
        }
        confirmed(&self.confirmed).clone_from(&self.wanted);
        info!(
            "redis: subscriber connected; subscribed to {} topics",
            self.wanted.len()
        );
        BrokerStats::bump(&self.stats.connects);
        backoff.reset();
        loop {
            loop {
                let result = match control.try_recv() {
                    Ok(Control::Subscribe(topic)) => {
                        let channel = self.channel(&topic);
                        self.wanted.insert(topic.clone());
                        // Returns once Redis has confirmed it.
                        let result = pubsub.subscribe(channel);
                        if result.is_ok() {
                            confirmed(&self.confirmed).insert(topic);
                        }
                        result
                    }
                    Ok(Control::Unsubscribe(topic)) => {
                        let channel = self.channel(&topic);
                        self.forget(&topic);
                        confirmed(&self.confirmed).remove(&topic);
                        pubsub.unsubscribe(channel)
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return End::Shutdown,
                };
                if let Err(e) = result {
                    return End::Broken(e);
                }
            }
            self.stats
                .subscribed_topics
                .store(self.wanted.len() as u64, Ordering::Relaxed);
            match pubsub.get_message() {
                Ok(msg) => self.receive(msg.get_channel_name(), msg.get_payload_bytes()),
                Err(e) if e.is_timeout() => {}
                Err(e) => return End::Broken(e),
            }
        }
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// No more local subscribers: stop wanting the topic and forget its sequence numbers (a
    /// later subscription starts afresh, not with a "gap").
    fn forget(&mut self, topic: &str) {
        self.wanted.remove(topic);
        for topics in self.last_seq.values_mut() {
            topics.remove(topic);
        }
    }

    /// One message from Redis: drop our own echo and foreign messages, count gaps and lag,
    /// deliver to the local workers.
    fn receive(&mut self, channel: &str, bytes: &[u8]) {
        let (Some(topic), Some(frame)) = (channel.strip_prefix(&self.prefix), decode(bytes)) else {
            BrokerStats::bump(&self.stats.malformed);
            return;
        };
        if frame.origin == self.origin {
            BrokerStats::bump(&self.stats.echoes_dropped);
            return;
        }
        let topics = self.last_seq.entry(frame.origin).or_default();
        match topics.get_mut(topic) {
            Some(last) => {
                if frame.seq > *last + 1 {
                    self.stats
                        .gaps
                        .fetch_add(frame.seq - *last - 1, Ordering::Relaxed);
                }
                *last = frame.seq.max(*last);
            }
            None => {
                topics.insert(topic.into(), frame.seq);
            }
        }
        let lag = unix_micros().saturating_sub(frame.sent_us);
        self.stats.lag_us_sum.fetch_add(lag, Ordering::Relaxed);
        self.stats.lag_us_max.fetch_max(lag, Ordering::Relaxed);
        BrokerStats::bump(&self.stats.upstream_received);
        if let Some(hub) = self.hub.upgrade() {
            hub.deliver_from_upstream(&Delivery {
                topic: topic.into(),
                kind: frame.kind,
                payload: frame.payload.into(),
                id: Some((frame.origin, frame.seq)),
            });
        }
    }
}
