//! Large messages against the memory budget (issue 17).
//!
//! A large payload now reserves its whole size from the frame header and is read straight into
//! that buffer, and its echo leaves by move: the budget (`--max-buffered`) must bound all that
//! as it bounded messages assembled from the read buffer. 64 connections each send one 16 MiB
//! message at once to an echo server with a 256 MiB budget: the server's peak RSS stays under
//! the budget + 10 %, the connections it sheds get close code 1013, and every other one gets
//! its message back intact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::frames::{client_frame, read_server_frame};
use common::http::stats;
use common::process::peak_rss_kib;
use common::ws::{echo_rtt, raw_upgraded};
use common::ServerProcess;

const CONNS: usize = 64;
const SIZE: usize = 16 << 20;
const BUDGET: usize = 256 << 20;

/// What one connection got back.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Its message, intact.
    Echo,
    /// A close frame with this code.
    Closed(u16),
    /// Anything else (a wrong echo, another frame, nothing).
    Other(String),
}

/// Sends `frame` on `stream` (from a second thread, once every connection is ready) while
/// reading the one frame the server answers with.
fn exchange(
    mut stream: TcpStream,
    frame: Arc<Vec<u8>>,
    payload: Arc<Vec<u8>>,
    start: Arc<Barrier>,
) -> Outcome {
    // Generous: a debug build echoes a few hundred MB/s on a loaded machine; the test ends as
    // soon as every connection has its answer.
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        start.wait();
        // A shed connection stops reading our message: the write may fail, that is fine.
        let _ = writer.write_all(&frame);
    });
    let outcome = match read_server_frame(&mut stream) {
        Some((0x82, echo)) if echo == *payload => Outcome::Echo,
        Some((0x82, echo)) => Outcome::Other(format!("an echo of {} wrong bytes", echo.len())),
        Some((0x88, close)) if close.len() >= 2 => {
            Outcome::Closed(u16::from_be_bytes([close[0], close[1]]))
        }
        Some((first, other)) => Outcome::Other(format!("frame {first:#x}, {} bytes", other.len())),
        None => Outcome::Other("no answer".to_owned()),
    };
    let _ = sender.join();
    outcome
}

#[test]
fn sixty_four_16_mib_messages_against_a_256_mib_budget() {
    let server = ServerProcess::start(&["--max-buffered", &BUDGET.to_string()]);
    let payload: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| (i % 251) as u8).collect());
    let frame = Arc::new(client_frame(true, 0x2, &payload));
    // Every connection is upgraded first, so the budget decides who is shed, not who gets in.
    let streams: Vec<TcpStream> = (0..CONNS).map(|_| raw_upgraded(&server, "/")).collect();
    let start = Arc::new(Barrier::new(CONNS));
    let clients: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let (frame, payload, start) =
                (Arc::clone(&frame), Arc::clone(&payload), Arc::clone(&start));
            thread::spawn(move || exchange(stream, frame, payload, start))
        })
        .collect();
    let outcomes: Vec<Outcome> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();

    let echoed = outcomes.iter().filter(|o| **o == Outcome::Echo).count();
    let shed = outcomes
        .iter()
        .filter(|o| **o == Outcome::Closed(1013))
        .count();
    let others: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| **o != Outcome::Echo && **o != Outcome::Closed(1013))
        .collect();
    assert!(others.is_empty(), "neither echoed nor shed: {others:?}");
    assert!(shed > 0, "1 GiB against a 256 MiB budget, and nobody shed");
    assert!(echoed > 0, "nobody got the echo");
    let peak = peak_rss_kib(server.pid());
    let limit = (BUDGET + BUDGET / 10) as u64 / 1024;
    assert!(
        peak < limit,
        "peak RSS {peak} KiB over the budget + 10 % ({limit} KiB); {echoed} echoed, {shed} shed"
    );
    let counters = stats(server.addr);
    assert!(
        counters["shed"].as_u64().unwrap_or(0) >= shed as u64,
        "{counters}"
    );
    // Still serving.
    let mut late = raw_upgraded(&server, "/");
    echo_rtt(&mut late, "still here");
}

/// A large message in fragments (a ping between two of them, text split inside a character)
/// takes the same path: each fragment's payload is reserved and read in place, the pong
/// goes out at once, and the echo is the whole message; the idle pool is then let go, so the
/// budget's figure falls back to what the connections hold.
#[test]
fn fragmented_large_messages_are_echoed_whole() {
    let server = ServerProcess::start(&[]);
    let mut stream = raw_upgraded(&server, "/");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let binary: Vec<u8> = (0..6 << 20).map(|i| (i % 241) as u8).collect();
    let text = "wsloop: größer als der Puffer 😀 ".repeat(100_000);
    for (opcode, payload, pieces) in [(0x2, binary.as_slice(), 5), (0x1, text.as_bytes(), 7)] {
        // Uneven cuts, so the text is cut inside characters.
        let cut = payload.len() / pieces + 3;
        let parts: Vec<&[u8]> = payload.chunks(cut).collect();
        let mut wire = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let first = if i == 0 { opcode } else { 0x0 };
            wire.extend(client_frame(i + 1 == parts.len(), first, part));
            if i == 1 {
                wire.extend(client_frame(true, 0x9, b"between"));
            }
        }
        stream.write_all(&wire).expect("send");
        assert_eq!(
            read_server_frame(&mut stream),
            Some((0x8A, b"between".to_vec())),
            "the pong first"
        );
        let (first, echo) = read_server_frame(&mut stream).expect("echo");
        assert_eq!(first, 0x80 | opcode, "one final frame");
        assert!(
            echo == payload,
            "the echo of {} bytes differs",
            payload.len()
        );
    }
    // The pool lets its buffers go once idle (about a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = stats(server.addr)["buffered_bytes"].as_u64().unwrap_or(0);
        if held < 1 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {held} bytes buffered"
        );
        thread::sleep(Duration::from_millis(200));
    }
    echo_rtt(&mut stream, "after");
}

/// A client that sends several large messages before reading anything gets every echo once it
/// reads: the server stops reading (and decoding what it read) while an echo waits to be
/// written, so each connection holds one message buffer, and it resumes as the socket takes
/// the echo. Fails if a paused connection were never brought back (a deadlock: the client's
/// writes block on a server that no longer reads).
#[test]
fn large_messages_sent_before_reading_are_all_echoed() {
    const COUNT: usize = 4;
    let server = ServerProcess::start(&[]);
    let mut stream = raw_upgraded(&server, "/");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let payloads: Vec<Vec<u8>> = (0..COUNT)
        .map(|n| (0..4 << 20).map(|i| ((i + n) % 239) as u8).collect())
        .collect();
    let wire: Vec<u8> = payloads
        .iter()
        .flat_map(|p| client_frame(true, 0x2, p))
        .collect();
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&wire));
    // Long enough for the server to have paused on the first echo, and the writer to block.
    thread::sleep(Duration::from_millis(500));
    for (n, payload) in payloads.iter().enumerate() {
        let (first, echo) = read_server_frame(&mut stream).expect("echo");
        assert_eq!(first, 0x82, "echo {n}");
        assert!(echo == *payload, "echo {n} differs");
    }
    sender.join().expect("writer").expect("sent");
    echo_rtt(&mut stream, "after");
}
