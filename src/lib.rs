//! wsloop: a fast, strict RFC 6455 WebSocket server on a single-threaded mio reactor.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use wsloop_proto as protocol;

pub mod admission;
pub mod app;
pub mod config;
pub mod handle;
pub mod http;
pub mod out;
pub mod pubsub;
pub mod reactor;
pub mod stats;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
pub mod tls;
pub mod workers;

pub use admission::client_addr::{Cidr, ForwardedHeader};
pub use app::{ConnId, Context, Decision, Handler, Message, OwnedMessage, Request};
pub use config::{Config, ProxyMode, RatePolicy};
pub use handle::ServerHandle;
pub use protocol::deflate::DeflateConfig;
pub use protocol::{CloseCode, Limits};
pub use pubsub::redis::RedisConfig;
pub use pubsub::rooms::RoomPolicy;
pub use reactor::Reactor;
pub use stats::Stats;
pub use tls::{TlsConfig, TlsError};
pub use workers::Workers;
