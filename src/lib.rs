//! wsloop: a fast, strict RFC 6455 WebSocket server on a single-threaded mio reactor.
//!
//! Two layers: [`protocol`] is the sans-IO core (handshake parser, frame codec, UTF-8 and
//! close validation), tested and fuzzed on bytes alone; [`server`] is the reactor that moves
//! bytes between sockets and that core.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use wsloop_proto as protocol;
pub mod server;

pub use protocol::CloseCode;
pub use server::{
    Config, ConnId, Context, Decision, EchoChat, Handler, Message, OwnedMessage, Reactor, Request,
    ServerHandle, TlsConfig, TlsError,
};
