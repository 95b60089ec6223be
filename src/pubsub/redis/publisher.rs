//! The publisher thread: bounded queue in, pipelined PUBLISH batches out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use redis::Connection;

use super::backoff::Backoff;
use super::wire::Frame;
use super::{connect, unix_micros};
use crate::pubsub::{BrokerStats, Delivery};

/// How long one batch may take on the wire before the connection is considered broken.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the thread owns.
pub(super) struct Publisher {
    pub(super) client: redis::Client,
    pub(super) prefix: String,
    pub(super) origin: u64,
    pub(super) batch: usize,
    pub(super) stats: Arc<BrokerStats>,
    /// The bridge is gone: stop retrying.
    pub(super) closed: Arc<AtomicBool>,
}

impl Publisher {
    /// Runs until every sender is gone.
    pub(super) fn run(self, queue: &Receiver<Delivery>) {
        let mut con: Option<Connection> = None;
        let mut backoff = Backoff::new();
        let mut seqs: HashMap<Arc<str>, u64> = HashMap::new();
        let mut down_logged = false;
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(self.batch - 1));
            // Hold the batch until Redis is reachable; meanwhile the bounded queue fills up and
            // the reactors drop (and count) what does not fit.
            let live = loop {
                if let Some(live) = con.as_mut() {
                    break live;
                }
                if self.closed.load(Ordering::Relaxed) {
                    return;
                }
                match self.open() {
                    Ok(fresh) => {
                        info!("redis: publisher connected");
                        BrokerStats::bump(&self.stats.connects);
                        backoff.reset();
                        down_logged = false;
                        con = Some(fresh);
                    }
                    Err(e) => {
                        BrokerStats::bump(&self.stats.connection_errors);
                        if down_logged {
                            debug!("redis: publisher cannot connect: {e}");
                        } else {
                            warn!("redis: publisher cannot connect: {e}; publishing locally only, retrying");
                            down_logged = true;
                        }
                        std::thread::sleep(backoff.next_delay());
                    }
                }
            };
            let n = batch.len() as u64;
            match self.send(live, &batch, &mut seqs) {
                Ok(()) => {
                    self.stats.upstream_sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!("redis: publish failed, {n} publications lost: {e}; reconnecting");
                    self.stats.upstream_lost.fetch_add(n, Ordering::Relaxed);
                    BrokerStats::bump(&self.stats.connection_errors);
                    con = None;
                    down_logged = true;
                }
            }
        }
    }

    fn open(&self) -> redis::RedisResult<Connection> {
        let con = connect(&self.client)?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// One round trip: a PUBLISH per publication, each framed with our id and the topic's
    /// next sequence number.
    fn send(
        &self,
        con: &mut Connection,
        batch: &[Delivery],
        seqs: &mut HashMap<Arc<str>, u64>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let sent_us = unix_micros();
        let mut frame = Vec::new();
        for delivery in batch {
            let seq = seqs.entry(Arc::clone(&delivery.topic)).or_insert(0);
            *seq += 1;
            frame.clear();
            Frame {
                origin: self.origin,
                seq: *seq,
                sent_us,
                kind: delivery.kind,
                payload: &delivery.payload,
            }
            .encode(&mut frame);
            pipe.cmd("PUBLISH")
                .arg(format!("{}{}", self.prefix, delivery.topic))
                .arg(frame.as_slice())
                .ignore();
        }
        pipe.query::<()>(con)
    }
}
