//! The demo application the binary serves: echo on any path, a chat room on `/chat`.

use std::collections::HashSet;

use wsloop::{CloseCode, ConnId, Context, Decision, Handler, Message, Request};

/// The default application: echo every message on any path; on `/chat` (or every path when
/// `chat_everywhere`), relay each message, text or binary, to every chat member instead (the
/// sender too). Selects the first subprotocol the client offers that `protocols` lists.
#[derive(Debug, Default)]
pub struct EchoChat {
    /// Put every connection in the chat room.
    pub chat_everywhere: bool,
    /// The subprotocols it speaks (`--protocol`).
    pub protocols: Vec<String>,
    chat_members: HashSet<ConnId>,
}

impl EchoChat {
    /// The room that chat members share.
    pub const ROOM: &'static str = "chat";

    /// Echo by default, chat on `/chat`; with `chat_everywhere`, chat on every path.
    pub fn new(chat_everywhere: bool, protocols: Vec<String>) -> EchoChat {
        EchoChat {
            chat_everywhere,
            protocols,
            chat_members: HashSet::new(),
        }
    }
}

impl Handler for EchoChat {
    fn on_open(&mut self, ctx: &mut Context<'_>, id: ConnId, req: &Request<'_>) -> Decision {
        if self.chat_everywhere || req.path() == "/chat" {
            ctx.subscribe(id, Self::ROOM);
            self.chat_members.insert(id);
        }
        Decision::Accept(req.select_protocol(&self.protocols).map(str::to_owned))
    }

    fn on_message(&mut self, ctx: &mut Context<'_>, id: ConnId, msg: Message<'_>) {
        if self.chat_members.contains(&id) {
            ctx.publish(Self::ROOM, msg);
        } else {
            ctx.send(id, msg);
        }
    }

    fn on_close(&mut self, _ctx: &mut Context<'_>, id: ConnId, _code: CloseCode, _reason: &str) {
        self.chat_members.remove(&id);
    }

    /// Whether it is a chat member: one byte.
    fn export(&mut self, _ctx: &mut Context<'_>, id: ConnId) -> Vec<u8> {
        vec![u8::from(self.chat_members.remove(&id))]
    }

    fn import(&mut self, _ctx: &mut Context<'_>, id: ConnId, state: &[u8]) {
        if state == [1] {
            self.chat_members.insert(id);
        }
    }
}
