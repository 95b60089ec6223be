//! `wsload`, the project's own load generator, as a library: each mode is a function that
//! runs against a server on loopback and returns a report (`cargo bench` and the tests call
//! them; the `wsload` binary prints them).
//!
//! - [`run_echo`]: closed-loop echo throughput and round-trip latency, every echo verified.
//! - [`run_latency`]: one connection, one message at a time.
//! - [`run_hold`]: many idle connections kept alive with pings; the server's memory per
//!   connection.
//! - [`run_connect`]: whole connection lifecycles (TCP, upgrade, close handshake) per second.
//! - [`run_fanout`]: one publisher, many subscribers in the `/chat` room; deliveries per
//!   second, publish→receive latency and losses.
//!
//! Only loopback addresses are accepted ([`Target::parse`]), and every mode is bounded in
//! time. Every report has `to_json` (one line), `table` (text) and `ok`, and includes the load
//! generator's own CPU use so a run can tell whether the client was the bottleneck.
//!
//! The layers, bottom up: [`client`] is the sans-IO client side of the protocol, one
//! [`ClientConn`](client::ClientConn) per connection (upgrade request and answer, masked
//! frames out, incremental decoding of server frames, control frames answered,
//! permessage-deflate). [`driver`] is the one mio event loop that moves every connection's
//! bytes on the calling thread, with one write path; [`open`] opens many connections on it
//! with bounded concurrency. Each mode is a [`driver::Handler`] (what to send, what to
//! measure) and a schedule of turns. [`payload`] is what messages contain (random, or
//! JSON-like text for deflate runs); [`stats`] the histogram and `/proc` readings; [`net`]
//! loopback targets and non-blocking connects.
#![forbid(unsafe_code)]

pub mod client;
mod connect;
pub mod driver;
mod echo;
mod fanout;
mod hold;
pub mod net;
pub mod open;
pub mod payload;
pub mod report;
pub mod stats;
mod verify;

pub use connect::{run_connect, ConnectOptions, ConnectReport};
pub use echo::{run_echo, run_latency, EchoOptions, EchoReport, MAX_ECHO_SIZE};
pub use fanout::{
    fanout_payload, parse_prefix, run_fanout, FanoutOptions, FanoutReport, MIN_FANOUT_SIZE,
};
pub use hold::{run_hold, HoldOptions, HoldReport};
pub use net::Target;
pub use payload::Payload;
pub use stats::{Histogram, Percentiles};
