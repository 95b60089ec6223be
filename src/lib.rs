//! wsloop: a fast, strict RFC 6455 WebSocket server on a single-threaded mio reactor.
//!
//! An application implements [`Handler`] — callbacks for a connection's upgrade, its
//! messages, its end — and acts through the [`Context`] each callback gets: send to any
//! connection, close one with a code and reason, join and publish to rooms, ask what the
//! server knows. [`Reactor`] runs it on one thread; [`Workers`] on several reactors sharing
//! a port (and, with [`RedisConfig`], rooms shared between processes). [`Config`] holds the
//! address, every limit and timeout, and what plain HTTP gets; a [`ServerHandle`] reaches a
//! running reactor from other threads.
//!
//! Every example below is a doc-test: `cargo test` runs it on a port the OS picks, talks to
//! it with a client (in hidden lines) and stops it.
//!
//! # Echo
//! ```
//! use wsloop::{Config, ConnId, Context, Handler, Message, Reactor};
//!
//! /// Sends every message back to its sender.
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
//!         ctx.send(id, msg); // text as text, binary as binary
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let config = Config {
//!         addr: "127.0.0.1:9001".parse().expect("an address"),
//!         ..Config::default()
//!     };
//! #   let config = Config { addr: "127.0.0.1:0".parse().unwrap(), ..config };
//!     let mut reactor = Reactor::bind(config, Echo)?;
//!     reactor.handle_signals()?; // SIGINT/SIGTERM: close every connection with 1001, return
//! #   let client = doc::check(reactor.local_addr(), reactor.handle(), doc::echoes);
//!     reactor.run()
//! #   .and_then(|()| doc::joined(client))
//! }
//! # mod doc { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/doctest_client.rs")); }
//! ```
//!
//! `Config::default()` serves WebSocket upgrades on every path and nothing else: a plain HTTP
//! request gets `404`. [`Config::demo_page`], [`Config::static_dir`], [`Config::stats`] and
//! [`Config::metrics`] turn on the demo page, a folder of files, `/stats` and `/metrics` (the
//! `wsloop` binary turns them all on).
//!
//! # Rooms
//! A room (a pub/sub topic) is a name connections subscribe to; a publication is encoded once
//! and the same frame queued for every member. What a connection is sent in
//! [`Handler::on_open`] goes out right after its `101`, so a newcomer subscribed there hears
//! its own announcement. [`Context::set_room_policy`] picks what happens to a member too slow
//! to keep up ([`RoomPolicy`]).
//! ```
//! use wsloop::{CloseCode, Config, ConnId, Context, Decision, Handler, Message, Reactor, Request};
//!
//! /// A connection on `/room/NAME` joins room `NAME`; what a member says, every member hears.
//! struct Rooms;
//!
//! /// The room of a path `/room/NAME`.
//! fn room_of(path: &str) -> Option<&str> {
//!     path.strip_prefix("/room/").filter(|name| !name.is_empty())
//! }
//!
//! impl Handler for Rooms {
//!     fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
//!         let Some(room) = room_of(req.path()) else {
//!             return Decision::Reject(404);
//!         };
//!         ctx.subscribe(id, room);
//!         let here = ctx.subscribers(room);
//!         ctx.publish(room, Message::Text(&format!("{id} joined, {here} here")));
//!         Decision::Accept(None)
//!     }
//!
//!     fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
//!         // The server remembers each connection's path: no map of our own.
//!         if let Some(room) = ctx.path(id).and_then(room_of).map(str::to_owned) {
//!             ctx.publish(&room, msg);
//!         }
//!     }
//!
//!     fn on_close(&mut self, ctx: &mut Context<'_>, id: ConnId, _: CloseCode, _: &str) {
//!         // It has left its rooms already; the others hear that it went.
//!         if let Some(room) = ctx.path(id).and_then(room_of).map(str::to_owned) {
//!             ctx.publish(&room, Message::Text(&format!("{id} left")));
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let config = Config {
//!         addr: "127.0.0.1:9001".parse().expect("an address"),
//!         ..Config::default()
//!     };
//! #   let config = Config { addr: "127.0.0.1:0".parse().unwrap(), ..config };
//!     let reactor = Reactor::bind(config, Rooms)?;
//! #   let client = doc::check(reactor.local_addr(), reactor.handle(), |addr| {
//! #       let mut ann = doc::connect(addr, "/room/lobby")?;
//! #       let joined = doc::next(&mut ann)?;
//! #       assert!(joined.ends_with(" joined, 1 here"), "{joined}");
//! #       let mut bob = doc::connect(addr, "/room/lobby")?;
//! #       let second = doc::next(&mut bob)?;
//! #       assert!(second.ends_with(" joined, 2 here"), "{second}");
//! #       doc::expect(&mut ann, &second)?;
//! #       bob.send(tungstenite::Message::text("hi all"))?;
//! #       doc::expect(&mut ann, "hi all")?;
//! #       doc::expect(&mut bob, "hi all")?;
//! #       bob.close(None)?;
//! #       assert!(doc::next(&mut ann)?.ends_with(" left"));
//! #       Ok(())
//! #   });
//!     reactor.run()
//! #   .and_then(|()| doc::joined(client))
//! }
//! # mod doc { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/doctest_client.rs")); }
//! ```
//!
//! # From another thread: `ServerHandle`
//! A [`ServerHandle`] is `Clone + Send + Sync`: sending, publishing, closing and shutting
//! down through it queue a command the reactor runs at its next loop turn (a `mio::Waker`
//! interrupts its wait). Its questions — [`ServerHandle::rooms`],
//! [`ServerHandle::subscribers`] — wait for the reactor's answer.
//! ```
//! use std::time::Duration;
//!
//! use wsloop::{Config, ConnId, Context, Decision, Handler, Message, Reactor, Request};
//!
//! /// Every connection listens to the room `ticks`.
//! struct Listeners;
//!
//! impl Handler for Listeners {
//!     fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, _: &Request<'_>) -> Decision {
//!         ctx.subscribe(id, "ticks");
//!         Decision::Accept(None)
//!     }
//!
//!     fn on_message(&mut self, _: &mut Context<'_>, _: ConnId, _: Message<'_>) {}
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let config = Config {
//!         addr: "127.0.0.1:9001".parse().expect("an address"),
//!         ..Config::default()
//!     };
//! #   let config = Config { addr: "127.0.0.1:0".parse().unwrap(), ..config };
//!     let reactor = Reactor::bind(config, Listeners)?;
//!     let handle = reactor.handle();
//!     std::thread::spawn(move || {
//!         for n in 0.. {
//!             std::thread::sleep(Duration::from_millis(100));
//!             if handle.subscribers("ticks") == Some(0) {
//!                 continue; // nobody listens
//!             }
//!             if !handle.publish("ticks", format!("tick {n}")) {
//!                 return; // the server has stopped
//!             }
//!         }
//!     });
//! #   let client = doc::check(reactor.local_addr(), reactor.handle(), |addr| {
//! #       let mut ws = doc::connect(addr, "/")?;
//! #       let tick = doc::next(&mut ws)?;
//! #       assert!(tick.starts_with("tick "), "{tick}");
//! #       Ok(())
//! #   });
//!     reactor.run()
//! #   .and_then(|()| doc::joined(client))
//! }
//! # mod doc { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/doctest_client.rs")); }
//! ```
//!
//! # Several reactors: `Workers`
//! One reactor is one thread. [`Workers`] runs several on one port, each with its own
//! `SO_REUSEPORT` listener, connections and handler (built on its own thread); publications
//! reach every worker's subscribers, and with the `redis` feature and
//! [`Workers::redis`] those of other processes too. They stop together on SIGINT or SIGTERM.
//! ```
//! use wsloop::{Config, ConnId, Context, Handler, Message, Workers};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
//!         ctx.send(id, msg);
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let config = Config {
//!         addr: "127.0.0.1:9001".parse().expect("an address"),
//!         ..Config::default()
//!     };
//! #   let config = Config { addr: "127.0.0.1:0".parse().unwrap(), ..config };
//! #   let (checked, outcome) = std::sync::mpsc::channel();
//!     Workers::new(config)
//!         .count(2)
//!         .run(
//!             |_worker| Echo,
//!             |addr, _| {
//!                 println!("listening on {addr}");
//! #               std::thread::spawn(move || {
//! #                   let _stop = doc::TermOnDrop; // however the check ends
//! #                   let _ = checked.send(doc::echoes(addr).map_err(|e| e.to_string()));
//! #               });
//!             },
//!         )
//! #   .and_then(|()| outcome.recv().map_err(std::io::Error::other)?.map_err(std::io::Error::other))
//! }
//! # mod doc { include!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/doctest_client.rs")); }
//! ```
//!
//! # Where things are
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
//! - `upgrade/` — the first pieces of handing live connections to a new process (the
//!   handoff channel and its versioned hello), not wired in yet.
//! - `app.rs`, `config.rs`, `handle.rs`, `workers/` — the public surface above.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

/// The rustls this crate is built with, for [`TlsConfig::from_rustls`].
#[cfg(feature = "tls")]
pub use rustls;
pub use wsloop_proto as protocol;

/// Every Rust snippet of the README is a doc-test too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

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
pub mod upgrade;
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
pub use upgrade::Upgrades;
pub use workers::Workers;

/// The insides the benchmarks measure (`benches/micro.rs`, `benches/load.rs`). Not part of
/// the API: no promise holds from one version to the next.
#[doc(hidden)]
pub mod internals {
    pub use crate::admission::origin::origin_allowed;
    pub use crate::out::Outbox;
    pub use crate::reactor::entry::Entry;
}
