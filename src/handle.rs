//! [`ServerHandle`]: how other threads talk to the single-threaded reactor — a channel of
//! commands plus a mio `Waker` that interrupts `poll`.

use std::sync::mpsc::Sender;
use std::sync::Arc;

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
}

/// A cloneable, thread-safe handle to a running server.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl ServerHandle {
    pub(crate) fn new(tx: Sender<Command>, waker: Arc<Waker>) -> ServerHandle {
        ServerHandle { tx, waker }
    }

    /// The reactor's waker (shared with broker mailboxes).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn submit(&self, command: Command) -> bool {
        self.tx.send(command).is_ok() && self.waker.wake().is_ok()
    }

    /// Sends a message to one connection. Returns false if the server has stopped.
    pub fn send(&self, to: ConnId, msg: OwnedMessage) -> bool {
        self.submit(Command::Send(to, msg))
    }

    /// Publishes to a topic's subscribers.
    pub fn publish(&self, topic: &str, msg: OwnedMessage) -> bool {
        self.submit(Command::Publish(topic.to_owned(), msg))
    }

    /// Sends to every open connection.
    pub fn broadcast(&self, msg: OwnedMessage) -> bool {
        self.submit(Command::Broadcast(msg))
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
}
