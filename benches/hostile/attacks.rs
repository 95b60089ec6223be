//! The attacks of issue 19, one function per kind. Each connects what it needs, calls
//! [`Scene::begin`] just before its first attacking byte (so the base RSS, the CPU count and
//! the echo client's waits start there), sends the attack, and returns the row's note.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsloop::protocol::frame::OpCode;

use super::client::{connect, frame, wait_for, write_paced, write_until, Readers, Tally, Ws, HOST};
use super::measure::{stat, Figures, Measure};

/// One mix's client side: its connections, kept open until the mix has been measured.
pub struct Scene {
    addr: SocketAddr,
    pid: u32,
    /// What every size and count is multiplied by (a tenth with `--quick`).
    scale: f64,
    /// How long the setup may take, and then the attack.
    limit: Duration,
    /// When the setup, then the attack, must be done.
    deadline: Instant,
    kept: Vec<TcpStream>,
    readers: Readers,
    measure: Option<Measure>,
}

impl Scene {
    pub fn new(addr: SocketAddr, pid: u32, scale: f64, limit: Duration) -> Scene {
        Scene {
            addr,
            pid,
            scale,
            limit,
            deadline: Instant::now() + limit,
            kept: Vec::new(),
            readers: Readers::default(),
            measure: None,
        }
    }

    /// The attack starts now: measuring starts, and the attack has its own time limit.
    fn begin(&mut self) {
        self.measure = Some(Measure::start(self.addr, self.pid));
        self.deadline = Instant::now() + self.limit;
    }

    /// Takes the mix's figures once the server has settled (at most `settle`), then closes
    /// every connection.
    pub fn finish(mut self, settle: Duration) -> Figures {
        let measure = self.measure.take().expect("the attack calls Scene::begin");
        measure.finish(settle)
    }

    /// `n` at this run's scale.
    pub fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale) as usize).max(1)
    }

    fn ws(&self, path: &str) -> Ws {
        Ws::connect(self.addr, path)
    }

    /// `n` `/chat` members that read everything, each on a thread of its own.
    fn reading_members(&mut self, n: usize) -> Vec<Arc<Tally>> {
        (0..n)
            .map(|_| {
                let ws = self.ws("/chat");
                self.readers.read_ws(ws)
            })
            .collect()
    }
}

/// (a), (b), (c): `conns` connections each send `bytes` of pipelined `GET target` keep-alive
/// requests in one burst, all at once, and never read.
pub fn pipelined_gets(scene: &mut Scene, conns: usize, target: &str, bytes: usize) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let count = scene.scaled(bytes) / request.len();
    let burst = request.repeat(count);
    let streams: Vec<TcpStream> = (0..conns).map(|_| connect(scene.addr)).collect();
    scene.begin();
    let deadline = scene.deadline;
    let sent: usize = std::thread::scope(|s| {
        let writers: Vec<_> = streams
            .iter()
            .map(|stream| s.spawn(|| write_until(stream, burst.as_bytes(), deadline)))
            .collect();
        writers.into_iter().map(|w| w.join().expect("writer")).sum()
    });
    scene.kept.extend(streams);
    format!(
        "sent {} of {} requests",
        sent / request.len(),
        count * conns
    )
}

/// (d): a 1.4 MiB text message into a 5-member `/chat` room (sender included) whose members
/// all read: how many received it, and how many were sent a close frame instead.
pub fn big_room_message(scene: &mut Scene) -> String {
    const MEMBERS: usize = 5;
    let sender = scene.ws("/chat");
    let message = frame(OpCode::Text, &vec![b'a'; scene.scaled(1_468_006)]);
    let writer = sender.writer();
    let mut tallies = vec![scene.readers.read_ws(sender)];
    tallies.extend(scene.reading_members(MEMBERS - 1));
    scene.begin();
    write_until(&writer, &message, scene.deadline);
    scene.kept.push(writer);
    wait_for(scene.deadline, || {
        tallies.iter().all(|t| t.messages() + t.closes() > 0)
    });
    let delivered = tallies.iter().filter(|t| t.messages() > 0).count();
    let closes: u64 = tallies.iter().map(|t| t.closes()).sum();
    format!("delivered to {delivered}/{MEMBERS} members, {closes} close frame(s)")
}

/// (e): 20 × 1 MiB binary messages sent at once on one connection (which reads its echoes):
/// how many were echoed, in how long, and the rate of echoed bytes.
pub fn rate_limited_echoes(scene: &mut Scene) -> String {
    const MESSAGES: u64 = 20;
    let ws = scene.ws("/");
    let message = frame(OpCode::Binary, &vec![0x5a; scene.scaled(1 << 20)]);
    let burst = message.repeat(MESSAGES as usize);
    let writer = ws.writer();
    let echoes = scene.readers.read_ws(ws);
    scene.begin();
    let start = Instant::now();
    write_until(&writer, &burst, scene.deadline);
    scene.kept.push(writer);
    wait_for(scene.deadline, || echoes.messages() >= MESSAGES);
    let secs = start.elapsed().as_secs_f64();
    let rate = echoes.bytes() as f64 / secs;
    let rate = if rate >= 1e6 {
        format!("{:.1} MB/s", rate / 1e6)
    } else {
        format!("{:.1} kB/s", rate / 1e3)
    };
    format!(
        "{}/{MESSAGES} echoed in {secs:.2} s, {rate}",
        echoes.messages()
    )
}

/// A flood of empty publications into `/chat`, by one member that reads (every member gets
/// every publication, its own included).
pub struct Flood {
    /// Members that never read (during the attack).
    pub silent: usize,
    /// Members that read everything.
    pub reading: usize,
    /// Before the attack, the silent members stop reading in the middle of an 8 MiB message
    /// (see [`stop_inside_big_message`]), so every publication of the attack meets the room's
    /// `--slow-consumer` policy.
    pub over_limit: bool,
    /// Empty publications in the attack, sent as fast as the publisher's socket takes them.
    pub count: usize,
}

/// (f), (g), (h), (i): connects the flood's members (and puts the silent ones over their
/// limit when asked), then publishes the flood in one burst.
pub fn flood_room(scene: &mut Scene, flood: Flood) -> String {
    let silent: Vec<Ws> = (0..flood.silent).map(|_| scene.ws("/chat")).collect();
    scene.reading_members(flood.reading);
    let publisher = scene.ws("/chat");
    let writer = publisher.writer();
    let echoes = scene.readers.read_ws(publisher);
    let mut setup = String::new();
    if flood.over_limit {
        let stuck = stop_inside_big_message(scene, silent, &writer, &echoes);
        setup = format!(
            " (silent member(s) {} of {} stopped inside an 8 MiB message, {:.1} MiB queued)",
            stuck.len(),
            flood.silent,
            stat(scene.addr, "buffered_bytes").unwrap_or(0) as f64 / 1048576.0
        );
        scene.kept.extend(stuck);
    } else {
        scene.kept.extend(silent.into_iter().map(Ws::into_stream));
    }
    let empty = frame(OpCode::Text, b"");
    scene.begin();
    let start = Instant::now();
    let sent = write_until(&writer, &empty.repeat(flood.count), scene.deadline) / empty.len();
    scene.kept.push(writer);
    format!(
        "published {sent} of {} in {} ms{setup}",
        flood.count,
        start.elapsed().as_millis()
    )
}

/// Leaves `members` (which have not read yet) stopped in the middle of an 8 MiB message and
/// returns the sockets of those that got there. The partly written frame at the front of
/// their queues is one no policy may drop (cutting it would corrupt the stream), so they stay
/// over `--max-backpressure` for as long as they do not read.
///
/// How: 1 MiB messages (each echoed to the reading `publisher` before the next) until the
/// server's `buffered_bytes` grows, i.e. the kernel's buffers towards the members are full; one small
/// message, whole in their queues, which drop-oldest and latest-only drop to make room for
/// the 8 MiB one that follows (drop-newest and close do not queue it: then nothing gets
/// stuck); then each member reads until that message begins, and stops.
fn stop_inside_big_message(
    scene: &Scene,
    members: Vec<Ws>,
    publisher: &TcpStream,
    echoes: &Tally,
) -> Vec<TcpStream> {
    const BIG: usize = 8 << 20;
    let queued = || stat(scene.addr, "buffered_bytes").unwrap_or(0);
    let idle = queued();
    let fill = frame(OpCode::Binary, &vec![0x5a; 1 << 20]);
    let mut filled = 0;
    while queued() <= idle && Instant::now() < scene.deadline {
        write_until(publisher, &fill, scene.deadline);
        filled += 1;
        wait_for(scene.deadline, || echoes.messages() >= filled);
    }
    write_until(publisher, &frame(OpCode::Binary, b"s"), scene.deadline);
    write_until(
        publisher,
        &frame(OpCode::Binary, &vec![0x5a; BIG]),
        scene.deadline,
    );
    wait_for(Instant::now() + Duration::from_secs(2), || {
        queued() >= idle + BIG as u64
    });
    let stuck: Vec<TcpStream> = members
        .into_iter()
        .filter_map(|mut m| {
            m.read_into_frame_of(BIG as u64, scene.deadline)
                .then(|| m.into_stream())
        })
        .collect();
    // Time for the server to refill the kernel's buffers the members just emptied.
    std::thread::sleep(Duration::from_millis(200));
    stuck
}

/// (j): 1.75 M pipelined `HEAD /` requests spread over 6 s on one connection that reads the
/// answers (each keep-alive request arms a timer in the server).
pub fn paced_heads(scene: &mut Scene) -> String {
    let request = format!("HEAD / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let count = scene.scaled(1_750_000);
    let requests = request.repeat(count);
    let stream = connect(scene.addr);
    let answers = scene
        .readers
        .read_bytes(stream.try_clone().expect("clone socket"));
    scene.begin();
    let start = Instant::now();
    let over = Duration::from_secs_f64(6.0 * scene.scale);
    let sent = write_paced(&stream, requests.as_bytes(), over, scene.deadline);
    scene.kept.push(stream);
    format!(
        "sent {} of {count} requests in {:.1} s, {:.0} MB answered by then",
        sent / request.len(),
        start.elapsed().as_secs_f64(),
        answers.bytes() as f64 / 1e6
    )
}
