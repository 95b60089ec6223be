//! The reactor: moves bytes between sockets and the [`crate::protocol`] core, and nothing else.

pub mod admission;
pub mod app;
pub mod board;
pub mod broker;
pub mod client_addr;
pub mod config;
pub mod handle;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod out;
pub mod reactor;
pub mod rooms;
pub mod stats;
pub mod supervisor;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
pub mod tls;
pub mod workers;

pub use app::{ConnId, Context, Decision, EchoChat, Handler, Message, OwnedMessage, Request};
pub use broker::redis::RedisConfig;
pub use config::Config;
pub use handle::ServerHandle;
pub use reactor::Reactor;
pub use rooms::RoomPolicy;
pub use stats::Stats;
pub use tls::{TlsConfig, TlsError};
pub use workers::Workers;
