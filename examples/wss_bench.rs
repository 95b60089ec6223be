//! A small, fast measurement client for ws:// and wss:// servers (one mio loop, rustls's
//! sans-IO client): pipelined echo with byte-for-byte verification, WebSocket-over-TLS
//! handshakes per second, and server memory per idle connection. Talks to 127.0.0.1 only.
//!
//! ```sh
//! wss_bench echo --addr 127.0.0.1:9443 --ca cert.pem --conns 64 --size 32 --inflight 16 \
//!     --secs 5 --server-pid PID          # --ca absent: plain ws://
//! wss_bench handshakes --addr 127.0.0.1:9443 --ca cert.pem --conns 32 --secs 5
//! wss_bench hold --addr 127.0.0.1:9443 --ca cert.pem --conns 10000 --server-pid PID
//! ```
//!
//! Server CPU comes from `/proc/PID/stat` (utime + stime) over the measured window; memory
//! from `/proc/PID/status` (VmRSS) before and after the connections are open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../tests/common/tls.rs"]
mod tls_support;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use wsloop::protocol::frame::MAX_HEADER_LEN;
use wsloop::protocol::{FrameHeader, OpCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Pipelined binary echo, verified byte for byte.
    Echo,
    /// Connect, TLS handshake, WebSocket upgrade, drop; repeat.
    Handshakes,
    /// Open --conns connections, keep them idle, report server RSS per connection.
    Hold,
}

/// Measurement client for ws:// and wss:// echo servers.
#[derive(Debug, Parser)]
struct Args {
    mode: Mode,
    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:9443")]
    addr: SocketAddr,
    /// PEM certificate to trust: wss://. Without it: ws://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Connections (echo, hold) or concurrent connection attempts (handshakes).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Server PID, for CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// hold: seconds to keep the connections open after measuring.
    #[arg(long, default_value_t = 0.0)]
    hold_secs: f64,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[derive(Debug, PartialEq, Eq)]
enum State {
    Upgrading,
    Open,
}

struct Conn {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    state: State,
    /// Plain mode: bytes not yet taken by the socket.
    out: Vec<u8>,
    /// Plaintext received and not parsed yet.
    inbuf: Vec<u8>,
    sent: u64,
    received: u64,
}

impl Conn {
    fn open(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> io::Result<Conn> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let tls = tls.map(|config| {
            let name = ServerName::try_from("localhost").unwrap();
            let mut c = ClientConnection::new(Arc::clone(config), name).unwrap();
            c.set_buffer_limit(None);
            c
        });
        let mut conn = Conn {
            sock,
            tls,
            state: State::Upgrading,
            out: Vec::new(),
            inbuf: Vec::new(),
            sent: 0,
            received: 0,
        };
        let req =
            "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        conn.send(req.as_bytes());
        Ok(conn)
    }

    /// Queues plaintext (encrypted at once on TLS; buffered until the handshake is done).
    fn send(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(bytes).unwrap(),
            None => self.out.extend_from_slice(bytes),
        }
    }

    /// Writes until done or WouldBlock.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let mut pos = 0;
                while pos < self.out.len() {
                    match self.sock.write(&self.out[pos..]) {
                        Ok(n) => pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                        Err(e) => return Err(e),
                    }
                }
                self.out.drain(..pos);
            }
        }
        Ok(())
    }

    /// Reads until WouldBlock into `inbuf` (decrypting on TLS).
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let n = match self.sock.read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e),
            };
            match &mut self.tls {
                None => self.inbuf.extend_from_slice(&buf[..n]),
                Some(tls) => {
                    let mut rd = &buf[..n];
                    while !rd.is_empty() {
                        tls.read_tls(&mut rd)?;
                        tls.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        let _ = tls.reader().read_to_end(&mut self.inbuf);
                    }
                }
            }
        }
    }
}

/// The messages: a fixed pseudo-random body whose first 8 bytes are replaced by the message's
/// sequence number, so every echo is checked byte for byte at memcmp speed, and frames are
/// built from a body masked once.
struct Payloads {
    body: Vec<u8>,
    masked: Vec<u8>,
}

impl Payloads {
    fn new(size: usize) -> Payloads {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let body: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let masked = body
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        Payloads { body, masked }
    }

    /// Whether `got` is exactly message `seq`.
    fn matches(&self, seq: u64, got: &[u8]) -> bool {
        let k = self.body.len().min(8);
        got.len() == self.body.len()
            && got[..k] == seq.to_le_bytes()[..k]
            && got[k..] == self.body[k..]
    }

    /// Appends message `seq` as a masked binary client frame.
    fn frame(&self, seq: u64, out: &mut Vec<u8>) {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: Some(MASK),
            payload_len: self.body.len() as u64,
        };
        let mut buf = [0; MAX_HEADER_LEN];
        let n = header.encode(&mut buf);
        out.extend_from_slice(&buf[..n]);
        let k = self.body.len().min(8);
        let seq = seq.to_le_bytes();
        out.extend((0..k).map(|i| seq[i] ^ MASK[i % 4]));
        out.extend_from_slice(&self.masked[k..]);
    }
}

/// One complete server frame at the front of `buf`: (header length, payload length).
fn server_frame(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (hl, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= hl + len).then_some((hl, len))
}

/// Server (utime + stime) in seconds, and VmRSS in KiB.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    assert!(args.addr.ip().is_loopback(), "loopback only");
    let tls = args.ca.as_ref().map(|path| {
        let der = CertificateDer::from_pem_file(path).expect("read --ca");
        tls_support::client_config_trusting(der)
    });
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let payloads = Payloads::new(args.size);
    let mut frame = Vec::new();
    let target = args.conns;
    let rss_before = args.server_pid.map(proc_rss_kib);
    let mut opening = 0usize; // connections not yet upgraded
    let mut open = 0usize;
    let mut upgrades = 0u64;
    let mut received = 0u64;
    let start = Instant::now();
    let mut window: Option<(Instant, u64, u64, f64)> = None; // (t0, received0, upgrades0, cpu0)
    let max_pending = 256;
    let mut started = 0usize;
    loop {
        // Open more: echo/hold up to --conns in total, handshakes keeps --conns attempts going.
        while opening < max_pending.min(target)
            && (args.mode == Mode::Handshakes || started < target)
        {
            let conn = Conn::open(args.addr, tls.as_ref())?;
            let key = match conns.iter().position(Option::is_none) {
                Some(k) => k,
                None => {
                    conns.push(None);
                    conns.len() - 1
                }
            };
            let mut conn = conn;
            poll.registry().register(
                &mut conn.sock,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conns[key] = Some(conn);
            opening += 1;
            started += 1;
        }
        let all_open = open == target && args.mode != Mode::Handshakes;
        if window.is_none() && (all_open || (args.mode == Mode::Handshakes && upgrades >= 100)) {
            let cpu = args.server_pid.map_or(0.0, proc_cpu);
            window = Some((Instant::now(), received, upgrades, cpu));
            if args.mode == Mode::Hold {
                break;
            }
        }
        if let Some((t0, ..)) = window {
            if t0.elapsed().as_secs_f64() >= args.secs {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            eprintln!("gave up after 120 s: {open} open, {opening} opening");
            std::process::exit(2);
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key).and_then(Option::as_mut) else {
                continue;
            };
            let result = (|| -> io::Result<bool> {
                conn.flush()?;
                conn.fill(&mut buf)?;
                let mut upgraded_now = false;
                if conn.state == State::Upgrading {
                    let Some(end) = conn.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        conn.flush()?; // the client's handshake records
                        return Ok(false);
                    };
                    assert!(conn.inbuf.starts_with(b"HTTP/1.1 101"), "upgrade refused");
                    conn.inbuf.drain(..end + 4);
                    conn.state = State::Open;
                    upgraded_now = true;
                    if args.mode == Mode::Echo {
                        for _ in 0..args.inflight {
                            frame.clear();
                            payloads.frame(conn.sent, &mut frame);
                            conn.send(&frame);
                            conn.sent += 1;
                        }
                    }
                }
                let mut pos = 0;
                while let Some((hl, len)) = server_frame(&conn.inbuf[pos..]) {
                    let first = conn.inbuf[pos];
                    assert_eq!(first, 0x82, "a binary echo frame");
                    assert!(
                        payloads.matches(conn.received, &conn.inbuf[pos + hl..pos + hl + len]),
                        "echo of message {} differs",
                        conn.received
                    );
                    conn.received += 1;
                    received += 1;
                    pos += hl + len;
                    frame.clear();
                    payloads.frame(conn.sent, &mut frame);
                    conn.send(&frame);
                    conn.sent += 1;
                }
                conn.inbuf.drain(..pos);
                conn.flush()?;
                Ok(upgraded_now)
            })();
            match result {
                Ok(true) => {
                    opening -= 1;
                    upgrades += 1;
                    if args.mode == Mode::Handshakes {
                        // Reset, not FIN: no TIME_WAIT pile-up on the client side.
                        let conn = conns[key].take().unwrap();
                        let _ = socket2::SockRef::from(&conn.sock).set_linger(Some(Duration::ZERO));
                    } else {
                        open += 1;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // Measurements only count when nothing failed.
                    eprintln!("connection {key}: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
    let (t0, received0, upgrades0, cpu0) = window.expect("measured");
    let secs = t0.elapsed().as_secs_f64();
    let cpu = args.server_pid.map(|pid| proc_cpu(pid) - cpu0);
    match args.mode {
        Mode::Echo => {
            let n = received - received0;
            let rate = n as f64 / secs;
            let mib = rate * args.size as f64 / (1024.0 * 1024.0);
            let cpu_us = cpu.map_or(String::from("-"), |c| format!("{:.2}", c * 1e6 / n as f64));
            println!(
                "echo conns={} size={} inflight={}: {n} msgs in {secs:.2} s = {rate:.0} msg/s \
                 ({mib:.1} MiB/s each way); server CPU {} s = {cpu_us} µs/msg",
                args.conns,
                args.size,
                args.inflight,
                cpu.map_or(String::from("-"), |c| format!("{c:.2}")),
            );
        }
        Mode::Handshakes => {
            let n = upgrades - upgrades0;
            let cpu_us = cpu.map_or(String::from("-"), |c| format!("{:.0}", c * 1e6 / n as f64));
            println!(
                "handshakes concurrency={}: {n} in {secs:.2} s = {:.0}/s; server CPU {cpu_us} \
                 µs/handshake",
                args.conns,
                n as f64 / secs
            );
        }
        Mode::Hold => {
            std::thread::sleep(Duration::from_secs(2)); // let the server settle
            if let (Some(pid), Some(before)) = (args.server_pid, rss_before) {
                let after = proc_rss_kib(pid);
                println!(
                    "hold: {open} idle connections; server RSS {before} KiB -> {after} KiB = \
                     {:.2} KiB per connection",
                    (after.saturating_sub(before)) as f64 / open as f64
                );
            } else {
                println!("hold: {open} idle connections");
            }
            std::thread::sleep(Duration::from_secs_f64(args.hold_secs));
        }
    }
    Ok(())
}
