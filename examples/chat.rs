//! A chat room with nicknames, subprotocol negotiation and a server-side ticker thread.
//!
//! Every connection joins the room `lobby`; a client that offers the subprotocol `chat.v1`
//! gets it selected. Each text message is published to the room as `nick: text` (the frame is
//! encoded once and shared by every member). Another thread announces the time every 10 s
//! through the thread-safe `ServerHandle`.
//!
//! `cargo run --release --example chat -- 127.0.0.1:9003`

use std::collections::HashMap;
use std::time::Duration;

use wsloop::{
    CloseCode, Config, ConnId, Context, Decision, Handler, Message, OwnedMessage, Reactor, Request,
};

const ROOM: &str = "lobby";

#[derive(Default)]
struct Chat {
    nicks: HashMap<ConnId, String>,
}

impl Handler for Chat {
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
        let protocol = req.select_protocol(&["chat.v1"]).map(str::to_owned);
        let nick = format!("guest{}", self.nicks.len() + 1);
        // Subscribed first, the joiner hears its own "joined" too: what a connection is sent
        // in `on_open` goes out right after its 101.
        ctx.subscribe(id, ROOM);
        ctx.publish(ROOM, Message::Text(&format!("* {nick} joined")));
        self.nicks.insert(id, nick);
        Decision::Accept(protocol)
    }

    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            ctx.close(id, CloseCode::UNSUPPORTED_DATA, "text only");
            return;
        };
        if let Some(nick) = text.strip_prefix("/nick ") {
            self.nicks.insert(id, nick.trim().to_owned());
            return;
        }
        let nick = self.nicks.get(&id).map_or("?", String::as_str);
        ctx.publish(ROOM, Message::Text(&format!("{nick}: {text}")));
    }

    fn on_close(&mut self, ctx: &mut Context<'_>, id: ConnId, _code: CloseCode, _reason: &str) {
        if let Some(nick) = self.nicks.remove(&id) {
            ctx.publish(ROOM, Message::Text(&format!("* {nick} left")));
        }
    }
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".to_owned());
    let config = Config {
        addr: addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ..Config::default()
    };
    let mut reactor = Reactor::bind(config, Chat::default())?;
    reactor.handle_signals()?;
    let handle = reactor.handle();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if !handle.publish(ROOM, OwnedMessage::Text(format!("* server time {now}"))) {
            return;
        }
    });
    println!("chat example listening on {}", reactor.local_addr());
    reactor.run()
}
