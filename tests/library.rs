//! The library as an application meets it: a [`Handler`] served in this process on a loopback
//! port ([`common::in_process::InProcess`]), talked to over real sockets with raw frames or `tungstenite`.
//! Needs no `wsloop` binary, so it runs in every feature set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::frames::{client_frame, read_server_frame};
use common::http::{connect, get, read_http_head, read_to_close, upgrade_request};
use common::in_process::InProcess;
use common::ws::{recv_text, send_text, ws_connect, Client};
use wsloop::{
    CloseCode, Config, ConnId, Context, Decision, Handler, Message, ProxyMode, Request,
    ServerHandle,
};

/// The read timeout of the tests' `tungstenite` clients: short, since they poll.
const POLL: Duration = Duration::from_millis(50);

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

    let mut stream = connect(server.addr);
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

    let mut refused = connect(server.addr);
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
    let mut first = ws_connect(server.addr, "/", POLL);
    let joined = recv_text(&mut first, ARRIVES).expect("the first joiner's own 'joined'");
    assert!(joined.ends_with(" joined"), "{joined}");
    let mut second = ws_connect(server.addr, "/", POLL);
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
fn status_of(addr: SocketAddr, target: &str) -> u16 {
    let status = get(addr, target).status();
    assert_ne!(status, 0, "no status line for {target}");
    status
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
    let mut ws = ws_connect(server.addr, "/", POLL);
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

// ---------------------------------------------------------------------------------------------
// What the server knows of a connection and its rooms (issue 20, item 4)
// ---------------------------------------------------------------------------------------------

/// Answers `who` with what its `Context` knows of the sender (`PEER PATH`), `join ROOM` with
/// `ok`, `rooms` with every room and its subscriber count, `ask` with what a `ServerHandle`
/// answers on the reactor's own thread; records `peer` and `path` in `on_close`.
struct Directory {
    closed: Seen<(Option<SocketAddr>, Option<String>)>,
    handle: Arc<OnceLock<ServerHandle>>,
}

impl Handler for Directory {
    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return;
        };
        let answer = match text {
            "who" => format!("{} {}", ctx.peer(id).unwrap(), ctx.path(id).unwrap()),
            "rooms" => {
                let mut rooms: Vec<String> = ctx
                    .rooms()
                    .map(|room| format!("{room}={}", ctx.subscribers(room)))
                    .collect();
                rooms.sort();
                rooms.join(",")
            }
            "ask" => format!("{:?}", self.handle.get().unwrap().rooms()),
            _ => {
                let room = text.strip_prefix("join ").unwrap();
                ctx.subscribe(id, room);
                "ok".to_owned()
            }
        };
        ctx.send(id, Message::Text(&answer));
    }

    fn on_close(&mut self, ctx: &mut Context<'_>, id: ConnId, _: CloseCode, _: &str) {
        let facts = (ctx.peer(id), ctx.path(id).map(str::to_owned));
        self.closed.lock().unwrap().push(facts);
    }
}

/// Sends `text` and returns the answer.
fn ask(ws: &mut Client, text: &str) -> String {
    send_text(ws, text);
    recv_text(ws, ARRIVES).unwrap_or_else(|| panic!("no answer to {text:?}"))
}

/// Sends `text` after a PROXY v1 `header` and an upgrade to `path`; returns the answer.
fn ask_behind_proxy(addr: SocketAddr, header: &str, path: &str, text: &str) -> String {
    let mut stream = connect(addr);
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend(upgrade_request(path).into_bytes());
    bytes.extend(client_frame(true, 0x1, text.as_bytes()));
    stream.write_all(&bytes).unwrap();
    assert!(read_http_head(&mut stream).starts_with("HTTP/1.1 101"));
    let (_, answer) = read_server_frame(&mut stream).unwrap();
    String::from_utf8(answer).unwrap()
}

/// `Context::peer` and `Context::path` say what the upgrade decided — the path without its
/// query, the address after a trusted PROXY header (IPv4 and IPv6) — for as long as the
/// connection is there, `on_close` included; `rooms` and `subscribers` count the same from a
/// `Context` and from a `ServerHandle` on another thread, which declines on the reactor's own
/// thread instead of waiting for itself.
#[test]
fn context_and_handle_know_peers_paths_rooms_and_subscribers() {
    let closed = Seen::default();
    let handle = Arc::new(OnceLock::new());
    let app = Directory {
        closed: Arc::clone(&closed),
        handle: Arc::clone(&handle),
    };
    let config = Config {
        proxy_protocol: ProxyMode::Optional,
        ..Config::default()
    };
    let server = InProcess::start(config, move || app);
    handle.set(server.handle.clone()).unwrap();

    let mut first = ws_connect(server.addr, "/lobby/a?token=secret", POLL);
    let first_addr = first.get_ref().local_addr().unwrap();
    assert_eq!(ask(&mut first, "who"), format!("{first_addr} /lobby/a"));
    let proxied = [
        (
            "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n",
            "203.0.113.9:5555",
        ),
        (
            "PROXY TCP6 2001:db8::9 ::1 6666 80\r\n",
            "[2001:db8::9]:6666",
        ),
    ];
    for (header, peer) in proxied {
        let answer = ask_behind_proxy(server.addr, header, "/p?q", "who");
        assert_eq!(answer, format!("{peer} /p"));
    }

    let mut second = ws_connect(server.addr, "/second", POLL);
    assert_eq!(ask(&mut first, "join a"), "ok");
    assert_eq!(ask(&mut second, "join a"), "ok");
    assert_eq!(ask(&mut second, "join b"), "ok");
    assert_eq!(ask(&mut first, "rooms"), "a=2,b=1");
    let mut rooms = server.handle.rooms().unwrap();
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    assert_eq!(server.handle.subscribers("a"), Some(2));
    assert_eq!(server.handle.subscribers("nobody's"), Some(0));
    assert_eq!(ask(&mut first, "ask"), "None");

    let second_addr = second.get_ref().local_addr().unwrap();
    second.close(None).unwrap();
    let heard_in_on_close = (Some(second_addr), Some("/second".to_owned()));
    let deadline = std::time::Instant::now() + ARRIVES;
    while !closed.lock().unwrap().contains(&heard_in_on_close) {
        assert!(
            std::time::Instant::now() < deadline,
            "no on_close for the second"
        );
        let _ = second.read(); // the close handshake
    }
    assert_eq!(server.handle.rooms(), Some(vec!["a".to_owned()]));
    assert_eq!(server.handle.subscribers("a"), Some(1));
}
