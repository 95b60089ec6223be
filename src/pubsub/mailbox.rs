//! A reactor's incoming broker deliveries: a bounded channel plus the reactor's mio `Waker`.
//!
//! A burst of deliveries costs one wake-up, not one per message: senders wake the reactor
//! only when the `pending` flag was clear, and the reactor clears it before draining.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use mio::Waker;

use super::Delivery;

/// The sending side, held by the hub (one per worker).
#[derive(Debug)]
pub(crate) struct Mailbox {
    tx: SyncSender<Delivery>,
    waker: Arc<Waker>,
    pending: Arc<AtomicBool>,
}

/// The receiving side, held by the reactor.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: Receiver<Delivery>,
    pending: Arc<AtomicBool>,
}

/// A mailbox of `capacity` deliveries that wakes `waker`.
pub(crate) fn mailbox(capacity: usize, waker: Arc<Waker>) -> (Mailbox, Inbox) {
    let (tx, rx) = sync_channel(capacity);
    let pending = Arc::new(AtomicBool::new(false));
    (
        Mailbox {
            tx,
            waker,
            pending: Arc::clone(&pending),
        },
        Inbox { rx, pending },
    )
}

impl Mailbox {
    /// Queues a delivery without blocking; false when the mailbox is full (or gone).
    pub(crate) fn post(&self, delivery: Delivery) -> bool {
        match self.tx.try_send(delivery) {
            Ok(()) => {
                if !self.pending.swap(true, Ordering::AcqRel) {
                    let _ = self.waker.wake();
                }
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Inbox {
    /// Everything queued so far. Clears the pending flag first, so a delivery posted while
    /// draining either is drained now or wakes the reactor again.
    pub(crate) fn drain(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.pending.store(false, Ordering::Release);
        self.rx.try_iter()
    }
}
