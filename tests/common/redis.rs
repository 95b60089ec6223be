//! A real `redis-server` per test, for the scale-out tests.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::server::free_port;
use super::wait_until;

/// A `redis-server` started for one test on a free loopback port, with persistence off;
/// stopped by PID on drop.
pub struct RedisServer {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Whether `redis-server` can be run here (CI installs it; tests skip without it).
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts one on a port nobody listens on.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts one on `port` (e.g. the port of one that was killed) and waits for PING.
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        assert!(
            wait_until(Duration::from_secs(10), || server.connection().is_some()),
            "redis-server did not answer on port {port}"
        );
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection that answered PING, if the server is up.
    pub fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe to it.
    pub fn numsub(&self, channel: &str) -> i64 {
        let mut con = self.connection().expect("redis connection");
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut con)
            .expect("PUBSUB NUMSUB");
        reply.1
    }

    /// Waits (15 s at most) until `PUBSUB NUMSUB channel` equals `n`.
    pub fn wait_numsub(&self, channel: &str, n: i64) {
        let reached = wait_until(Duration::from_secs(15), || self.numsub(channel) == n);
        assert!(
            reached,
            "PUBSUB NUMSUB {channel} stayed {}, expected {n}",
            self.numsub(channel)
        );
    }

    /// Runs a command and ignores its reply (e.g. `CLIENT KILL TYPE pubsub`).
    pub fn command(&self, args: &[&str]) {
        let mut con = self.connection().expect("redis connection");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query::<redis::Value>(&mut con).expect("redis command");
    }

    /// Kills the server (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
