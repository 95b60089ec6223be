//! The smallest wsloop application: echo every message back.
//!
//! `cargo run --release --example echo -- 127.0.0.1:9002`, then from a browser console:
//! `ws = new WebSocket("ws://127.0.0.1:9002"); ws.onmessage = e => console.log(e.data); ws.send("hi")`

use wsloop::{Config, ConnId, Context, Handler, Message, Reactor};

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        ctx.send(id, msg);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let config = Config {
        addr: addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ..Config::default()
    };
    let mut reactor = Reactor::bind(config, Echo)?;
    reactor.handle_signals()?;
    println!("echo example listening on {}", reactor.local_addr());
    reactor.run()
}
