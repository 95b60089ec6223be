//! A small load client for the scale-out benchmarks (`benches/README.md`): one thread, one mio
//! `Poll`, no async runtime. Three modes:
//!
//! - `hold`: open `--conns` connections (from several source addresses `127.0.0.x`, since one
//!   address has ~28 000 ephemeral ports) and ping each one every `--ping-every` seconds;
//!   reports how many were held and answered.
//! - `fanout`: `--subs` subscribers on `/chat` spread over `--addrs`, one publisher; reports
//!   deliveries per second and publish-to-receive latency percentiles.
//! - `echo`: `--conns` connections each keeping `--window` messages in flight; reports echoes
//!   per second.
//!
//! `cargo run --release --example wsbench -- hold --addr 127.0.0.1:9001 --conns 15000 \
//!   --sources 127.0.0.2,127.0.0.3`

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// A WebSocket load client for wsloop's benchmarks.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Source addresses to spread connections over (comma-separated).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    sources: String,
    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 512)]
    inflight: usize,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold connections open and ping them.
    Hold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        ping_every: f64,
        /// Seconds to hold once every connection is open.
        #[arg(long, default_value_t = 20.0)]
        hold: f64,
    },
    /// One publisher, many subscribers on /chat.
    Fanout {
        /// Servers to spread subscribers over (comma-separated); the publisher uses the first.
        #[arg(long)]
        addrs: String,
        #[arg(long)]
        subs: usize,
        #[arg(long, default_value_t = 100)]
        msgs: usize,
        /// Publications per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// Echo throughput.
    Echo {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
}

/// Source ports are taken from here up (wrapping), below the kernel's usual ephemeral range.
const FIRST_PORT: u16 = 10_000;
const OP_TEXT: u8 = 0x1;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One client connection.
struct Conn {
    stream: TcpStream,
    target: (SocketAddr, &'static str),
    open: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

/// What a mode does with the connections.
trait Driver {
    /// A connection completed its handshake.
    fn on_open(&mut self, net: &mut Net, i: usize);
    /// A frame arrived.
    fn on_frame(&mut self, net: &mut Net, i: usize, opcode: u8, payload: &[u8]);
    /// Called every turn; returns false when the run is over.
    fn tick(&mut self, net: &mut Net) -> bool;
}

/// The connections and their poller.
struct Net {
    poll: Poll,
    conns: Vec<Conn>,
    sources: Vec<IpAddr>,
    /// Connections still to open, in order.
    queue: Vec<(SocketAddr, &'static str)>,
    handshaking: usize,
    inflight: usize,
    /// Connections with frames queued this turn.
    dirty: Vec<usize>,
    /// The last source port bound.
    next_port: u16,
    opened: usize,
    failed: usize,
    start: Instant,
}

impl Net {
    fn new(sources: &str, inflight: usize) -> io::Result<Net> {
        let sources = sources
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<Vec<IpAddr>, _>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Net {
            poll: Poll::new()?,
            conns: Vec::new(),
            sources,
            queue: Vec::new(),
            handshaking: 0,
            inflight,
            dirty: Vec::new(),
            next_port: 0,
            opened: 0,
            failed: 0,
            start: Instant::now(),
        })
    }

    /// Opens queued connections while fewer than `inflight` handshakes are pending.
    fn open_more(&mut self) {
        while self.handshaking < self.inflight {
            let Some(target) = self.queue.pop() else {
                return;
            };
            let source = self
                .sources
                .get(self.conns.len() % self.sources.len().max(1))
                .copied();
            match self.connect(target, source) {
                Ok(()) => self.handshaking += 1,
                Err(e) => {
                    self.failed += 1;
                    if self.failed == 1 {
                        eprintln!("connect {}: {e}", target.0);
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        target: (SocketAddr, &'static str),
        source: Option<IpAddr>,
    ) -> io::Result<()> {
        let (addr, path) = target;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(ip) = source {
            self.bind_source(&socket, ip)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let token = Token(self.conns.len());
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.conns.push(Conn {
            stream,
            target,
            open: false,
            rbuf: Vec::new(),
            wbuf: request.into_bytes(),
        });
        Ok(())
    }

    /// Binds to `ip` and a port of our choosing: letting the kernel pick (port 0) scans for a
    /// free port on every bind, which gets slow with tens of thousands of connections.
    fn bind_source(&mut self, socket: &Socket, ip: IpAddr) -> io::Result<()> {
        socket.set_reuse_address(true)?;
        for _ in 0..1000 {
            self.next_port = if self.next_port < FIRST_PORT {
                FIRST_PORT
            } else {
                self.next_port.wrapping_add(1)
            };
            if socket
                .bind(&SocketAddr::new(ip, self.next_port).into())
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free source port",
        ))
    }

    /// Queues a masked client frame; it leaves at the end of the turn, with everything else
    /// queued for that connection, in one write.
    fn send(&mut self, i: usize, opcode: u8, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        if conn.wbuf.is_empty() {
            self.dirty.push(i);
        }
        client_frame(opcode, payload, &mut conn.wbuf);
    }

    fn flush_dirty(&mut self) {
        for i in std::mem::take(&mut self.dirty) {
            if let Some(conn) = self.conns.get_mut(i) {
                flush(conn);
            }
        }
    }

    fn open_count(&self) -> usize {
        self.conns.iter().filter(|c| c.open).count()
    }

    /// Runs `driver` until its `tick` says stop.
    fn run(&mut self, driver: &mut dyn Driver) -> io::Result<()> {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            self.open_more();
            if !driver.tick(self) {
                return Ok(());
            }
            self.flush_dirty();
            self.poll
                .poll(&mut events, Some(Duration::from_millis(5)))?;
            for event in events.iter() {
                let i = event.token().0;
                if event.is_writable() {
                    if let Some(conn) = self.conns.get_mut(i) {
                        flush(conn);
                    }
                }
                if event.is_readable() || event.is_read_closed() {
                    self.read(i, &mut buf, driver);
                }
            }
            self.flush_dirty();
        }
    }

    fn read(&mut self, i: usize, buf: &mut [u8], driver: &mut dyn Driver) {
        loop {
            let Some(conn) = self.conns.get_mut(i) else {
                return;
            };
            match conn.stream.read(buf) {
                Ok(0) => {
                    self.lost(i);
                    return;
                }
                Ok(n) => conn
                    .rbuf
                    .extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lost(i);
                    return;
                }
            }
        }
        self.parse(i, driver);
    }

    fn lost(&mut self, i: usize) {
        if let Some(conn) = self.conns.get_mut(i) {
            if conn.open {
                conn.open = false;
                self.opened -= 1;
            } else {
                self.handshaking -= 1;
            }
            self.failed += 1;
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if self.failed <= 3 {
                eprintln!("connection to {} lost", conn.target.0);
            }
        }
    }

    fn parse(&mut self, i: usize, driver: &mut dyn Driver) {
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        if !conn.open {
            let Some(end) = conn.rbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            if !conn.rbuf.starts_with(b"HTTP/1.1 101") {
                self.lost(i);
                return;
            }
            conn.rbuf.drain(..end + 4);
            conn.open = true;
            self.handshaking -= 1;
            self.opened += 1;
            driver.on_open(self, i);
        }
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        let rbuf = std::mem::take(&mut conn.rbuf);
        let mut pos = 0;
        while let Some((opcode, start, len)) = rbuf.get(pos..).and_then(parse_frame) {
            let payload = rbuf.get(pos + start..pos + start + len).unwrap_or_default();
            driver.on_frame(self, i, opcode, payload);
            pos += start + len;
        }
        if let Some(conn) = self.conns.get_mut(i) {
            conn.rbuf = rbuf.get(pos..).unwrap_or_default().to_vec();
        }
    }
}

fn flush(conn: &mut Conn) {
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(_) => return, // WouldBlock (WRITABLE follows) or dead (the read side notices).
        }
    }
}

/// A server frame at the start of `buf`: (opcode, header length, payload length).
fn parse_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, rest) = buf.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (start, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes(*rest.first_chunk::<2>()?)),
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(*rest.first_chunk::<8>()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    (buf.len() >= start + len).then_some((b0 & 0x0f, start, len))
}

/// Appends one masked, final client frame.
fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    out.push(0x80 | opcode);
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
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// `hold`: open everything, then ping every connection periodically.
struct Hold {
    conns: usize,
    ping_every: Duration,
    hold: Duration,
    all_open_at: Option<Instant>,
    next_ping: Option<Instant>,
    pings: u64,
    pongs: u64,
}

impl Driver for Hold {
    fn on_open(&mut self, _: &mut Net, _: usize) {}

    fn on_frame(&mut self, _: &mut Net, _: usize, opcode: u8, _: &[u8]) {
        if opcode == OP_PONG {
            self.pongs += 1;
        }
    }

    fn tick(&mut self, net: &mut Net) -> bool {
        let now = Instant::now();
        if self.all_open_at.is_none() && net.queue.is_empty() && net.handshaking == 0 {
            self.all_open_at = Some(now);
            self.next_ping = Some(now);
            println!(
                "holding {} of {} connections ({} failed) after {:.1} s",
                net.opened,
                self.conns,
                net.failed,
                net.start.elapsed().as_secs_f64()
            );
            let _ = io::stdout().flush();
        }
        let over = self.all_open_at.map(|at| at + self.hold);
        // After the hold, wait (up to 10 s) for late pongs: a loaded box answers late, not never.
        let answered = self.pongs >= self.pings;
        if over.is_some_and(|end| now >= end && (answered || now >= end + Duration::from_secs(10)))
        {
            println!(
                "held {} connections; {} pings sent, {} pongs received",
                net.open_count(),
                self.pings,
                self.pongs
            );
            return false;
        }
        // No ping in the last interval: every ping sent gets the time to be answered.
        let last_round = over.is_some_and(|end| now + self.ping_every > end);
        if !last_round && self.next_ping.is_some_and(|at| at <= now) {
            for i in 0..net.conns.len() {
                if net.conns.get(i).is_some_and(|c| c.open) {
                    net.send(i, OP_PING, b"hold");
                    self.pings += 1;
                }
            }
            self.next_ping = Some(now + self.ping_every);
        }
        true
    }
}

/// `fanout`: one publisher (the last connection) publishes timestamps; subscribers measure.
struct Fanout {
    subs: usize,
    msgs: usize,
    interval: Duration,
    publisher: Option<usize>,
    ready_at: Option<Instant>,
    sent: usize,
    next_send: Option<Instant>,
    first_send: Option<Instant>,
    last_receive: Option<Instant>,
    last_send: Option<Instant>,
    latencies_us: Vec<u64>,
}

impl Driver for Fanout {
    fn on_open(&mut self, net: &mut Net, i: usize) {
        if net
            .conns
            .get(i)
            .is_some_and(|c| c.target.1 == "/chat?publisher")
        {
            self.publisher = Some(i);
        }
    }

    fn on_frame(&mut self, net: &mut Net, i: usize, opcode: u8, payload: &[u8]) {
        if opcode != OP_TEXT || Some(i) == self.publisher {
            return;
        }
        let sent_ns = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.split(' ').nth(1))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(sent_ns) = sent_ns {
            let now = net.start.elapsed().as_nanos() as u64;
            self.latencies_us.push(now.saturating_sub(sent_ns) / 1000);
            self.last_receive = Some(Instant::now());
        }
    }

    fn tick(&mut self, net: &mut Net) -> bool {
        let now = Instant::now();
        if self.ready_at.is_none() && net.queue.is_empty() && net.handshaking == 0 {
            println!(
                "{} subscribers + publisher open ({} failed)",
                net.opened, net.failed
            );
            // Let every process subscribe upstream before the first publication.
            self.ready_at = Some(now + Duration::from_secs(2));
        }
        if self.ready_at.is_some_and(|at| at <= now) && self.sent < self.msgs {
            let due = self.next_send.is_none_or(|at| at <= now);
            if let (true, Some(p)) = (due, self.publisher) {
                let text = format!("{} {}", self.sent, net.start.elapsed().as_nanos());
                net.send(p, OP_TEXT, text.as_bytes());
                self.sent += 1;
                self.first_send.get_or_insert(now);
                self.last_send = Some(now);
                self.next_send = Some(self.next_send.unwrap_or(now) + self.interval);
            }
        }
        let expected = self.msgs * self.subs;
        let finished = self.latencies_us.len() >= expected
            || self
                .last_send
                .is_some_and(|at| self.sent == self.msgs && now > at + Duration::from_secs(10));
        if finished {
            self.report(expected);
        }
        !finished
    }
}

impl Fanout {
    fn report(&mut self, expected: usize) {
        let lat = &mut self.latencies_us;
        lat.sort_unstable();
        let pct = |p: usize| lat.get(lat.len() * p / 100).copied().unwrap_or(0);
        let span = match (self.first_send, self.last_receive) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "deliveries {} of {} in {:.2} s: {:.0}/s; latency p50 {} us, p99 {} us, max {} us",
            lat.len(),
            expected,
            span,
            lat.len() as f64 / span.max(1e-9),
            pct(50),
            pct(99),
            lat.last().copied().unwrap_or(0)
        );
    }
}

/// `echo`: keep `window` messages in flight per connection.
struct Echo {
    window: usize,
    payload: Vec<u8>,
    duration: Duration,
    started: Option<Instant>,
    echoes: u64,
}

impl Driver for Echo {
    fn on_open(&mut self, net: &mut Net, i: usize) {
        for _ in 0..self.window {
            net.send(i, OP_TEXT, &self.payload);
        }
    }

    fn on_frame(&mut self, net: &mut Net, i: usize, opcode: u8, _: &[u8]) {
        if opcode == OP_TEXT {
            if self.started.is_some() {
                self.echoes += 1;
            }
            net.send(i, OP_TEXT, &self.payload);
        }
    }

    fn tick(&mut self, net: &mut Net) -> bool {
        let now = Instant::now();
        if self.started.is_none() && net.queue.is_empty() && net.handshaking == 0 {
            self.started = Some(now);
        }
        match self.started {
            Some(at) if now >= at + self.duration => {
                let secs = (now - at).as_secs_f64();
                println!(
                    "{} connections, window {}, {} B: {} echoes in {:.1} s = {:.0} msg/s",
                    net.opened,
                    self.window,
                    self.payload.len(),
                    self.echoes,
                    secs,
                    self.echoes as f64 / secs
                );
                false
            }
            _ => true,
        }
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut net = Net::new(&args.sources, args.inflight)?;
    let mut driver: Box<dyn Driver> = match args.mode {
        Mode::Hold {
            addr,
            conns,
            ping_every,
            hold,
        } => {
            net.queue = vec![(addr, "/"); conns];
            Box::new(Hold {
                conns,
                ping_every: seconds(ping_every),
                hold: seconds(hold),
                all_open_at: None,
                next_ping: None,
                pings: 0,
                pongs: 0,
            })
        }
        Mode::Fanout {
            addrs,
            subs,
            msgs,
            rate,
        } => {
            let addrs = addrs
                .split(',')
                .map(|a| a.trim().parse())
                .collect::<Result<Vec<SocketAddr>, _>>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let Some(&first) = addrs.first() else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "no --addrs"));
            };
            // Popped from the end: subscribers first, the publisher last.
            net.queue.push((first, "/chat?publisher"));
            net.queue
                .extend(addrs.iter().cycle().take(subs).map(|&a| (a, "/chat")));
            Box::new(Fanout {
                subs,
                msgs,
                interval: seconds(1.0 / rate.max(0.001)),
                publisher: None,
                ready_at: None,
                sent: 0,
                next_send: None,
                first_send: None,
                last_receive: None,
                last_send: None,
                latencies_us: Vec::with_capacity(subs * msgs),
            })
        }
        Mode::Echo {
            addr,
            conns,
            window,
            size,
            duration,
        } => {
            net.queue = vec![(addr, "/"); conns];
            Box::new(Echo {
                window,
                payload: vec![b'x'; size],
                duration: seconds(duration),
                started: None,
                echoes: 0,
            })
        }
    };
    net.run(&mut *driver)
}
