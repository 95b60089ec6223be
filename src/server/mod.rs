//! The reactor: moves bytes between sockets and the [`crate::protocol`] core, and nothing else.

pub mod app;
pub mod compression;
pub mod config;
pub mod connection;
pub mod handle;
pub mod http;
pub mod out_queue;
pub mod reactor;
pub mod rooms;
pub mod stats;
pub mod timer;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
pub mod tls;

pub use app::{ConnId, Context, Decision, EchoChat, Handler, Message, OwnedMessage, Request};
pub use config::{Config, SlowConsumerPolicy};
pub use handle::ServerHandle;
pub use reactor::Reactor;
pub use stats::Stats;
pub use tls::{TlsConfig, TlsError};
