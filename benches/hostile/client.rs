//! The client side of the hostile mixes: blocking std sockets whose reads and writes time out
//! often, so every thread looks at its deadline or stop flag; WebSocket framing through the
//! load generator's sans-IO client (`wsload::client`), not a second encoder.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wsload::client::{
    encode_frame, handshake_key, parse_upgrade_response, write_upgrade_request, ClientDecoder,
};
use wsloop::protocol::frame::OpCode;

/// The host every request names.
pub const HOST: &str = "127.0.0.1";
/// How long a blocking read waits, so reading threads notice the end of a mix.
const READ_POLL: Duration = Duration::from_millis(50);
/// How long a blocking write waits, so writers look at their deadline while the server is not
/// reading.
const WRITE_POLL: Duration = Duration::from_millis(100);

/// A TCP connection to the server with Nagle off and the short timeouts above.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(READ_POLL)).expect("timeout");
    stream.set_write_timeout(Some(WRITE_POLL)).expect("timeout");
    stream
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One read that waits at most the socket's read timeout: `Ok(None)` when nothing came in
/// time, `Ok(Some(0))` at the end of the stream.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match stream.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if timed_out(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes as much of `data` as the socket takes before `deadline` and returns how much that
/// was: all of it, unless the server stopped reading (or closed the connection) meanwhile.
pub fn write_until(mut stream: &TcpStream, data: &[u8], deadline: Instant) -> usize {
    let mut sent = 0;
    while sent < data.len() && Instant::now() < deadline {
        match stream.write(&data[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if timed_out(&e) => {}
            Err(_) => break,
        }
    }
    sent
}

/// [`write_until`] with `data` spread evenly over `over`, in 10 ms steps.
pub fn write_paced(stream: &TcpStream, data: &[u8], over: Duration, deadline: Instant) -> usize {
    let start = Instant::now();
    let mut sent = 0;
    while sent < data.len() && Instant::now() < deadline {
        let share = (start.elapsed().as_secs_f64() / over.as_secs_f64()).min(1.0);
        let due = (data.len() as f64 * share) as usize;
        if due > sent {
            let wrote = write_until(stream, &data[sent..due], deadline);
            if wrote < due - sent {
                return sent + wrote;
            }
            sent = due;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sent
}

/// Waits until `done` holds or `deadline` passes; whether it held.
pub fn wait_for(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// One masked client frame, unfragmented.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_frame(
        &mut out,
        opcode,
        false,
        payload,
        SmallRng::from_os_rng().random(),
    );
    out
}

/// A client WebSocket on a blocking socket: the upgrade, masked frames out, server frames
/// decoded in.
pub struct Ws {
    stream: TcpStream,
    decoder: ClientDecoder,
    buf: Vec<u8>,
    /// Bytes that came after the 101 head, not yet decoded.
    unread: Vec<u8>,
}

impl Ws {
    /// Connects to `ws://addr/path` and completes the upgrade (10 s at most).
    pub fn connect(addr: SocketAddr, path: &str) -> Ws {
        let mut stream = connect(addr);
        let key = handshake_key(&mut SmallRng::from_os_rng());
        let mut request = Vec::new();
        write_upgrade_request(&mut request, HOST, path, &key, false);
        stream.write_all(&request).expect("send upgrade");
        let mut head = Vec::new();
        let mut buf = vec![0; 64 << 10];
        let deadline = Instant::now() + Duration::from_secs(10);
        let upgraded = loop {
            assert!(Instant::now() < deadline, "no answer to the upgrade");
            match read_some(&mut stream, &mut buf).expect("read upgrade answer") {
                Some(0) => panic!("connection closed during the upgrade"),
                Some(n) => head.extend_from_slice(&buf[..n]),
                None => continue,
            }
            if let Some(upgraded) = parse_upgrade_response(&head, &key, false).expect("101") {
                break upgraded;
            }
        };
        Ws {
            stream,
            decoder: ClientDecoder::new(false),
            buf,
            unread: head.split_off(upgraded.head_len),
        }
    }

    /// Sends `frame` (from [`frame`]) whole.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.stream.write_all(frame)
    }

    /// A second handle on the socket, for a thread that writes while another reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone socket")
    }

    /// The socket, for a member that never reads.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Reads until a frame of `size` payload bytes has begun; gives up at `deadline` or once
    /// nothing has come for a second. Whether it began.
    pub fn read_into_frame_of(&mut self, size: u64, deadline: Instant) -> bool {
        let tally = Tally::default();
        let mut last_news = Instant::now();
        while tally.largest.load(Relaxed) < size {
            let before = tally.bytes();
            let open = matches!(self.receive(&tally), Ok(true));
            if tally.bytes() > before {
                last_news = Instant::now();
            }
            let now = Instant::now();
            if !open || now >= deadline || now - last_news > Duration::from_secs(1) {
                return false;
            }
        }
        true
    }

    /// Reads what arrives within [`READ_POLL`] and counts its frames in `tally`; `Ok(false)`
    /// once the server has closed the connection.
    pub fn receive(&mut self, tally: &Tally) -> io::Result<bool> {
        if !self.unread.is_empty() {
            let unread = std::mem::take(&mut self.unread);
            tally.add_frames(&mut self.decoder, &unread)?;
            return Ok(true);
        }
        match read_some(&mut self.stream, &mut self.buf)? {
            Some(0) => Ok(false),
            Some(n) => {
                tally.add_frames(&mut self.decoder, &self.buf[..n])?;
                Ok(true)
            }
            None => Ok(true),
        }
    }
}

/// What one reading connection has received so far, shared with the mix that watches it.
#[derive(Debug, Default)]
pub struct Tally {
    /// Whole data messages (last frames of text or binary messages).
    messages: AtomicU64,
    /// Close frames.
    closes: AtomicU64,
    /// Payload bytes (frames' payloads; for raw HTTP, every byte).
    bytes: AtomicU64,
    /// The largest payload length among the frames begun.
    largest: AtomicU64,
}

impl Tally {
    /// Decodes `input` (the next bytes of the connection) and counts what it holds.
    fn add_frames(&self, decoder: &mut ClientDecoder, mut input: &[u8]) -> io::Result<()> {
        while !input.is_empty() {
            let (used, piece) = decoder
                .decode(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            input = &input[used..];
            let Some(piece) = piece else { continue };
            self.bytes.fetch_add(piece.data.len() as u64, Relaxed);
            if piece.is_first() {
                self.largest.fetch_max(piece.header.payload_len, Relaxed);
            }
            if piece.is_last() && piece.header.fin {
                match piece.header.opcode {
                    OpCode::Close => self.closes.fetch_add(1, Relaxed),
                    OpCode::Ping | OpCode::Pong => 0,
                    _ => self.messages.fetch_add(1, Relaxed),
                };
            }
        }
        Ok(())
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Relaxed)
    }

    pub fn closes(&self) -> u64 {
        self.closes.load(Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}

/// Threads that read connections until the mix ends: dropping this stops and joins them.
#[derive(Default)]
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Reads `ws` on a thread of its own; returns its live tally.
    pub fn read_ws(&mut self, mut ws: Ws) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        let counts = tally.clone();
        self.spawn(move || ws.receive(&counts));
        tally
    }

    /// Reads `stream` (HTTP answers) on a thread of its own, counting bytes only.
    pub fn read_bytes(&mut self, mut stream: TcpStream) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        let counts = tally.clone();
        let mut buf = vec![0; 64 << 10];
        self.spawn(move || {
            let n = read_some(&mut stream, &mut buf)?;
            counts.bytes.fetch_add(n.unwrap_or(0) as u64, Relaxed);
            Ok(n != Some(0))
        });
        tally
    }

    /// Runs `step` on a new thread until it returns anything but `Ok(true)` or the mix ends.
    fn spawn(&mut self, mut step: impl FnMut() -> io::Result<bool> + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Relaxed) && matches!(step(), Ok(true)) {}
        }));
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
