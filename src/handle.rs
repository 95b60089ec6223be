//! [`ServerHandle`]: how other threads talk to the single-threaded reactor — a channel of
//! commands plus a mio `Waker` that interrupts `poll`; questions carry a channel for the
//! reactor's answer.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};

use mio::Waker;

use crate::protocol::CloseCode;

use crate::app::{ConnId, OwnedMessage};

/// A request from another thread, run on the reactor thread.
#[derive(Debug)]
pub(crate) enum Command {
    Send(ConnId, OwnedMessage),
    Publish(String, OwnedMessage),
    Broadcast(OwnedMessage),
    Close(ConnId, CloseCode, String),
    Shutdown,
    /// Answer with the rooms that have subscribers.
    Rooms(Sender<Vec<String>>),
    /// Answer with a room's subscriber count.
    Subscribers(String, Sender<usize>),
    /// A `SIGUSR2` upgrade: this worker's channel to its counterpart in the new process.
    Upgrade(std::os::unix::net::UnixStream),
}

/// A cloneable, thread-safe handle to a running server (`Send + Sync`): what a thread other
/// than the reactor's does through it runs on the reactor thread at its next loop turn.
///
/// Sending, publishing, closing and shutting down only queue a command and wake the reactor:
/// they never wait. [`rooms`](ServerHandle::rooms) and
/// [`subscribers`](ServerHandle::subscribers) wait for the reactor's answer.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// The thread running the reactor, once it runs: a question from it would wait for
    /// itself.
    reactor_thread: Arc<OnceLock<ThreadId>>,
}

impl ServerHandle {
    /// Gives the reactor its channel to the new process of an upgrade (worker 0 to the
    /// others).
    pub(crate) fn take_upgrade_channel(&self, stream: std::os::unix::net::UnixStream) {
        if self.tx.send(Command::Upgrade(stream)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub(crate) fn new(tx: Sender<Command>, waker: Arc<Waker>) -> ServerHandle {
        ServerHandle {
            tx,
            waker,
            reactor_thread: Arc::new(OnceLock::new()),
        }
    }

    /// The reactor runs on the calling thread from now on.
    pub(crate) fn running_here(&self) {
        let _ = self.reactor_thread.set(thread::current().id());
    }

    /// Asks the reactor: sends the command `ask` makes with a channel for the answer, and
    /// waits for it. `None` on the reactor's own thread (it would wait for itself), or when
    /// the reactor stopped before answering.
    fn ask<T>(&self, ask: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        if self.reactor_thread.get() == Some(&thread::current().id()) {
            return None;
        }
        let (tx, rx) = mpsc::channel();
        if !self.submit(ask(tx)) {
            return None;
        }
        rx.recv().ok()
    }

    /// The reactor's waker (shared with broker mailboxes).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn submit(&self, command: Command) -> bool {
        self.tx.send(command).is_ok() && self.waker.wake().is_ok()
    }

    /// Sends a message to one connection (`"text"`, a `String` or a `Vec<u8>` will do).
    /// Returns false if the server has stopped.
    pub fn send(&self, to: ConnId, msg: impl Into<OwnedMessage>) -> bool {
        self.submit(Command::Send(to, msg.into()))
    }

    /// Publishes to a topic's subscribers. Returns false if the server has stopped.
    pub fn publish(&self, topic: &str, msg: impl Into<OwnedMessage>) -> bool {
        self.submit(Command::Publish(topic.to_owned(), msg.into()))
    }

    /// Sends to every open connection. Returns false if the server has stopped.
    pub fn broadcast(&self, msg: impl Into<OwnedMessage>) -> bool {
        self.submit(Command::Broadcast(msg.into()))
    }

    /// Closes one connection with a code and reason.
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        self.submit(Command::Close(id, code, reason.to_owned()))
    }

    /// Starts a graceful shutdown: stop accepting, close every connection with 1001 after its
    /// queued messages, wait for the close handshakes (up to the drain timeout), return.
    pub fn shutdown(&self) -> bool {
        self.submit(Command::Shutdown)
    }

    /// The rooms with at least one subscriber, in no particular order, as
    /// [`Context::rooms`](crate::Context::rooms) gives them.
    ///
    /// A question, not a snapshot: it waits for the reactor to answer at its next loop turn
    /// (a wake-up and a turn's work, typically microseconds; longer while the reactor is busy)
    /// and costs the reactor nothing when nobody asks. `None` when the reactor has stopped,
    /// or when called on the reactor's own thread (from a callback: ask the `Context`).
    pub fn rooms(&self) -> Option<Vec<String>> {
        self.ask(Command::Rooms)
    }

    /// How many connections subscribe to `room` (0 when none does), as
    /// [`Context::subscribers`](crate::Context::subscribers) counts them. Waits for the
    /// reactor's answer, as [`rooms`](ServerHandle::rooms) does.
    pub fn subscribers(&self, room: &str) -> Option<usize> {
        self.ask(|reply| Command::Subscribers(room.to_owned(), reply))
    }
}
