//! Helpers shared by the integration tests, one module per idea. Every test starts a real
//! `wsloop` process ([`server::ServerProcess`]) and talks to it over loopback sockets.
//!
//! - [`server`]: the server process and free ports (needs the `cli` feature: the binary).
//! - [`in_process`]: a `Handler` served in this process (the library tests, every build).
//! - [`http`]: connections, requests, responses, `/stats`.
//! - [`frames`]: client frames written byte by byte, server frames read back.
//! - [`ws`]: upgraded connections, echoes, `tungstenite` clients.
//! - [`metrics`]: `/metrics`, parsed strictly.
//! - [`process`]: what `/proc` says about the server (memory, CPU, descriptors).
//! - [`redis`]: a `redis-server` per test. [`tls`]: certificates and TLS clients.
// Each test file uses some of these.
#![allow(dead_code)]

pub mod frames;
pub mod http;
pub mod in_process;
pub mod metrics;
pub mod process;
pub mod redis;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

/// The server under test: every test file starts one.
#[allow(unused_imports)] // The library tests never start the binary.
pub use server::ServerProcess;

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns true or `within` passes; returns whether it did.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends message after message through `send` (given its number), one per millisecond, until
/// `stop` is set and at least `min` went; returns how many went. A member that keeps
/// publishing through an upgrade.
pub fn publish_until(
    stop: &std::sync::atomic::AtomicBool,
    min: usize,
    mut send: impl FnMut(usize),
) -> usize {
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < min {
        send(sent);
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}
