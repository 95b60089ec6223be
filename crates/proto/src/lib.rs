//! The WebSocket protocol core, sans-IO: byte slices in, events and bytes out.
//!
//! Nothing here touches a socket, a clock or a log: every module is tested alone on bytes, and
//! the fuzz targets drive it directly. The `wsloop` server's reactor and the `wsload` load
//! generator only move bytes between sockets and this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod close;
pub mod codec;
pub mod conn;
pub mod contexts;
pub mod decoder;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod time;
pub mod utf8;

pub use close::CloseCode;
pub use conn::Connection;
pub use decoder::{Decoder, Event, Limits, MessageKind, Outcome, Payload};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};
pub use handshake::HandshakeError;
pub use pool::BufferPool;
