//! Shared helpers for integration tests: start a real `wsloop` process on a free loopback
//! port and stop it (by PID) when the test ends, or serve a [`wsloop::Handler`] in this
//! process ([`InProcess`]); raw frames and clients to talk to either.
//!
//! What starts the binary needs the `cli` feature (without it there is no `wsloop` binary);
//! the rest serves the library tests in every build.
#![allow(dead_code)]

#[cfg(feature = "tls")]
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wsloop::{Config, Handler, Reactor, ServerHandle};

/// A `wsloop` server process started for one test; killed on drop.
pub struct ServerProcess {
    /// The address it listens on (127.0.0.1 and a port the OS picked).
    pub addr: SocketAddr,
    child: Child,
}

impl ServerProcess {
    /// Starts `wsloop --addr 127.0.0.1:0 ARGS...` and waits for its `listening on` line.
    #[cfg(feature = "cli")]
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_at("127.0.0.1:0", args)
    }

    /// Starts `wsloop --addr ADDR ARGS...` and waits for its `listening on` line.
    #[cfg(feature = "cli")]
    pub fn start_at(addr: &str, args: &[&str]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsloop"));
        command.args(["--addr", addr]).args(args);
        ServerProcess::spawn(command)
    }

    /// Runs `command` (which starts wsloop) and waits for its `listening on` line.
    fn spawn(mut command: Command) -> ServerProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wsloop");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("wsloop exited before listening")
                .expect("read wsloop stdout");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { addr, child }
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://ADDR/PATH`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A raw TCP connection with a read timeout, for malformed-input tests.
    pub fn raw(&self) -> TcpStream {
        raw_connect(self.addr)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TCP connection to `addr` with a 10 s read timeout (no test hangs on a silent
/// server) and `TCP_NODELAY`.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A [`Handler`] served by a [`Reactor`] on its own thread of this process, on a loopback port
/// the OS picked; shut down gracefully and joined on drop.
pub struct InProcess {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its handle, for the test to act as another thread of the application would.
    pub handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Serves the application `make_app` builds (on the reactor's thread: a reactor stays on
    /// the thread that bound it) with `config`, its address replaced by `127.0.0.1:0`.
    pub fn start<H, F>(config: Config, make_app: F) -> InProcess
    where
        H: Handler + 'static,
        F: FnOnce() -> H + Send + 'static,
    {
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        };
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let reactor = Reactor::bind(config, make_app())?;
            let _ = bound_tx.send((reactor.local_addr(), reactor.handle()));
            reactor.run()
        });
        let (addr, handle) = bound_rx.recv().expect("the reactor did not bind");
        InProcess {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads until the peer closes or the timeout passes; returns what arrived.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return out,
        }
    }
}

/// Reads an HTTP response head (through the blank line) byte by byte.
pub fn read_http_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Opens a raw connection and completes the handshake; returns the stream.
pub fn raw_upgraded(server: &ServerProcess, path: &str) -> TcpStream {
    raw_upgraded_at(server.addr, path)
}

/// [`raw_upgraded`] for a server at `addr` (e.g. an [`InProcess`] one).
pub fn raw_upgraded_at(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = raw_connect(addr);
    stream
        .write_all(upgrade_request(path).as_bytes())
        .expect("send upgrade");
    let head = read_http_head(&mut stream);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "bad upgrade answer: {head}"
    );
    stream
}

/// Sends one masked text message on a raw upgraded stream and waits for its echo; returns
/// the round trip.
pub fn echo_rtt(stream: &mut TcpStream, text: &str) -> Duration {
    let start = std::time::Instant::now();
    stream
        .write_all(&client_frame(true, 0x1, text.as_bytes()))
        .expect("send text");
    let (first, payload) = read_server_frame(stream).expect("echo");
    assert_eq!(first, 0x81, "echo must be one final text frame");
    assert_eq!(payload, text.as_bytes());
    start.elapsed()
}

/// Encodes one masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_raw(if fin { 0x80 } else { 0 } | opcode, payload)
}

/// Encodes one masked client frame with the first byte given as is.
pub fn client_frame_raw(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One server frame read from a raw stream: (first byte, payload).
pub fn read_server_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some((head[0], payload))
}

/// Reads frames until a close frame arrives; returns its status code, if any.
pub fn expect_close(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = read_server_frame(stream)?;
        if first & 0x0f == 0x8 {
            return if payload.len() >= 2 {
                Some(u16::from_be_bytes([payload[0], payload[1]]))
            } else {
                Some(1005)
            };
        }
    }
}

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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.connection().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Waits until `PUBSUB NUMSUB channel` equals `n`.
    pub fn wait_numsub(&self, channel: &str, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.numsub(channel);
            if now == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PUBSUB NUMSUB {channel} stayed {now}, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A WebSocket client on a blocking socket whose reads time out quickly, so tests can poll.
pub type Client = tungstenite::WebSocket<TcpStream>;

/// Connects a WebSocket client to `ws://ADDR/PATH`.
pub fn ws_client(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let (ws, _) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("WebSocket handshake");
    ws
}

/// The next text message within `wait`, if any.
pub fn recv_text(ws: &mut Client, wait: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => return Some(text.to_string()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("WebSocket read: {e}"),
        }
    }
    None
}

/// Sends one text message.
pub fn send_text(ws: &mut Client, text: &str) {
    ws.send(tungstenite::Message::text(text)).expect("send");
}

/// `GET /stats` as JSON.
pub fn stats(addr: SocketAddr) -> serde_json::Value {
    let response = http_get(addr, "/stats");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    serde_json::from_str(body).expect("stats JSON")
}

/// The whole answer (head and body, as text) to a plain `GET target` with `Connection: close`.
pub fn http_get(addr: SocketAddr, target: &str) -> String {
    let mut stream = raw_connect(addr);
    let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned()
}

impl ServerProcess {
    /// Starts `wsloop --addr 127.0.0.1:0 ARGS...` through `sh -c 'ulimit -n LIMIT; exec ...'`,
    /// so the server runs with at most `fd_limit` open files; waits for `listening on`.
    /// `pid()` is the server's own PID (the shell `exec`s it).
    #[cfg(feature = "cli")]
    pub fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> ServerProcess {
        let script = format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_wsloop"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args);
        ServerProcess::spawn(command)
    }
}

/// utime + stime of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    // CLK_TCK is 100 on Linux.
    (utime + stime) as f64 / 100.0
}

/// `VmRSS` of process `pid`, in KiB (user memory; kernel socket buffers are not in it).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
