//! The library as an application meets it: a [`Handler`] served in this process on a loopback
//! port ([`common::InProcess`]), talked to over real sockets with raw frames or `tungstenite`.
//! Needs no `wsloop` binary, so it runs in every feature set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    client_frame, http_get, raw_connect, read_http_head, read_server_frame, read_to_close,
    recv_text, send_text, upgrade_request, ws_client, InProcess,
};
use wsloop::{Config, ConnId, Context, Decision, Handler, Message, Request};

/// What a test's application saw, shared with the test thread.
type Seen<T> = Arc<Mutex<Vec<T>>>;

/// How long a test waits for a message that must arrive: far beyond what a loaded machine
/// needs on loopback, so only a message that never comes fails.
const ARRIVES: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Sending from on_open (issue 20, item 1)
// ---------------------------------------------------------------------------------------------

/// Welcomes every connection from `on_open` (refusing `/refused` after the welcome), echoes
/// messages, and records what `Context::send` returned in `on_open`.
struct Welcome {
    sent: Seen<bool>,
}

impl Handler for Welcome {
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
        let sent = ctx.send(id, Message::Text("welcome"));
        self.sent.lock().unwrap().push(sent);
        if req.target == "/refused" {
            return Decision::Reject(403);
        }
        Decision::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        ctx.send(id, msg);
    }
}

/// What `on_open` sends is the first thing after the 101, ahead of the echo of a message the
/// client pipelined behind its upgrade request; on a refused upgrade it is never sent.
#[test]
fn a_message_sent_in_on_open_follows_the_101_before_anything_else() {
    let sent = Seen::default();
    let seen = Arc::clone(&sent);
    let server = InProcess::start(Config::default(), move || Welcome { sent: seen });

    let mut stream = raw_connect(server.addr);
    let mut bytes = upgrade_request("/").into_bytes();
    bytes.extend(client_frame(true, 0x1, b"first"));
    stream.write_all(&bytes).unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        read_server_frame(&mut stream),
        Some((0x81, b"welcome".to_vec()))
    );
    assert_eq!(
        read_server_frame(&mut stream),
        Some((0x81, b"first".to_vec()))
    );

    let mut refused = raw_connect(server.addr);
    refused
        .write_all(upgrade_request("/refused").as_bytes())
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut refused)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nForbidden\n"),
        "the refusal carries nothing after its body: {answer:?}"
    );
    assert_eq!(*sent.lock().unwrap(), [true, true]);
}

/// The chat room a newcomer builds: subscribe in `on_open`, then tell the room. The joiner is
/// a member already, so it hears its own "joined", and so does everyone else.
#[derive(Default)]
struct Room;

impl Handler for Room {
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, _: &Request<'_>) -> Decision {
        ctx.subscribe(id, "lobby");
        ctx.publish("lobby", Message::Text(&format!("{id} joined")));
        Decision::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Context<'_>, _: ConnId, msg: Message<'_>) {
        ctx.publish("lobby", msg);
    }
}

#[test]
fn a_joiner_hears_its_own_join_published_in_on_open() {
    let server = InProcess::start(Config::default(), Room::default);
    let mut first = ws_client(server.addr, "/");
    let joined = recv_text(&mut first, ARRIVES).expect("the first joiner's own 'joined'");
    assert!(joined.ends_with(" joined"), "{joined}");
    let mut second = ws_client(server.addr, "/");
    let second_joined = recv_text(&mut second, ARRIVES).expect("the second joiner's own");
    assert_ne!(second_joined, joined);
    assert_eq!(recv_text(&mut first, ARRIVES), Some(second_joined));
}

// ---------------------------------------------------------------------------------------------
// What plain HTTP gets (issue 20, item 2)
// ---------------------------------------------------------------------------------------------

/// Echoes; nothing else.
struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        ctx.send(id, msg);
    }
}

/// The status of the answer to `GET target`.
fn status_of(addr: std::net::SocketAddr, target: &str) -> u16 {
    let answer = http_get(addr, target);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {answer:?}"))
}

/// `Config::default()` serves WebSockets and nothing else: no demo page, no `/stats`, no
/// `/metrics`, and no files — not even the `html/index.html` that sits in the working
/// directory (the package root, where the binary's demo page lives). Each field turns its
/// part on.
#[test]
fn the_defaults_serve_no_page_files_stats_or_metrics() {
    assert!(
        std::path::Path::new("html/index.html").is_file(),
        "the test runs where an html/index.html is"
    );
    let server = InProcess::start(Config::default(), || Echo);
    for target in ["/", "/index.html", "/favicon.svg", "/stats", "/metrics"] {
        assert_eq!(status_of(server.addr, target), 404, "{target}");
    }
    let mut ws = ws_client(server.addr, "/");
    send_text(&mut ws, "still a WebSocket server");
    assert_eq!(
        recv_text(&mut ws, ARRIVES).as_deref(),
        Some("still a WebSocket server")
    );
    drop((ws, server));

    let each_on = [
        (
            "/",
            Config {
                demo_page: true,
                ..Config::default()
            },
        ),
        (
            "/stats",
            Config {
                stats: true,
                ..Config::default()
            },
        ),
        (
            "/metrics",
            Config {
                metrics: true,
                ..Config::default()
            },
        ),
        (
            "/index.html",
            Config {
                static_dir: Some("html".into()),
                ..Config::default()
            },
        ),
    ];
    for (target, config) in each_on {
        let server = InProcess::start(config, || Echo);
        assert_eq!(status_of(server.addr, target), 200, "{target}");
        let others = ["/", "/stats", "/metrics"]
            .into_iter()
            .filter(|t| *t != target);
        for other in others.filter(|_| target != "/index.html") {
            assert_eq!(
                status_of(server.addr, other),
                404,
                "{other} with {target} on"
            );
        }
    }
}
