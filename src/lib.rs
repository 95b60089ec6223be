//! wsloop: a fast, strict RFC 6455 WebSocket server on a single-threaded mio reactor.
//!
//! An application implements [`Handler`] and acts through the [`Context`] its callbacks get;
//! [`Reactor`] runs it on one thread, [`Workers`] on several reactors sharing a port (and,
//! with [`RedisConfig`], rooms shared between processes). [`Config`] holds every limit and
//! timeout; [`ServerHandle`] reaches a running reactor from other threads.
//!
//! The protocol itself — handshake, frames, UTF-8, close rules, and the sans-IO connection
//! that owns a connection's phases, deadlines and rate limits — is the `wsloop-proto` crate,
//! re-exported as [`protocol`]. This crate does the I/O around it:
//!
//! - `reactor/` — the mio loop: accept, read into one shared buffer, feed each connection,
//!   one flush per turn, the timer heap, the slab.
//! - `out/` — every byte a connection is sent goes through one door, which keeps the
//!   queued-byte counts and the memory budget; the slow-consumer policies beside the queues.
//! - `pubsub/` — rooms, and the broker seam: the in-process hub between workers, their
//!   mailboxes, the Redis bridge.
//! - `admission/` — who gets in: connection, per-address and handshake-rate limits, the
//!   `Origin` check, the client's address behind trusted proxies.
//! - `http/` — plain HTTP answers and static files. `stats/` — counters, Prometheus, the
//!   per-worker board. `tls.rs` — rustls as a filter between socket and connection.
//! - `app.rs`, `config.rs`, `handle.rs`, `workers/` — the public surface above.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub use wsloop_proto as protocol;

mod admission;
mod app;
mod config;
mod handle;
mod http;
mod out;
mod pubsub;
mod reactor;
mod stats;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;
mod tls_error;
mod workers;

pub use admission::client_addr::{Cidr, CidrError, ForwardedHeader};
pub use app::{ConnId, Context, Decision, Handler, Message, OwnedMessage, Request};
pub use config::{Config, ProxyMode, RedisConfig};
pub use handle::ServerHandle;
pub use protocol::conn::RatePolicy;
pub use protocol::deflate::DeflateConfig;
pub use protocol::handshake::Header;
pub use protocol::{CloseCode, Limits};
pub use pubsub::rooms::RoomPolicy;
pub use reactor::Reactor;
pub use stats::{CloseCounts, RejectReason, RttHistogram, Stats};
pub use tls::{TlsConfig, TlsError};
pub use workers::Workers;

/// The insides the benchmarks measure (`benches/micro.rs`, `benches/load.rs`). Not part of
/// the API: no promise holds from one version to the next.
#[doc(hidden)]
pub mod internals {
    pub use crate::admission::origin::origin_allowed;
    pub use crate::out::Outbox;
    pub use crate::reactor::entry::Entry;
}
