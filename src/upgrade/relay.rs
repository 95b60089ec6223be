//! Room publications while connections move: the members of a room are split between the two
//! processes until the last batch, and each publication must still reach every member once
//! and in order.
//!
//! The old process is the one sequencer. It publishes as always (to the members it still
//! has) and relays each publication to the new process, which delivers it to the members it
//! has adopted. The new process does not deliver its own publications: it relays them to the
//! old process, which sequences them like its own and relays them back. Since the channel is
//! ordered, a member moved by a batch sent before a relayed publication gets it from the new
//! process, and one moved after it got it from the old process (in the unsent output it moved
//! with): never both, never neither. The new process keeps relaying until every publication
//! it sent has come back, and only then takes over.

use wsloop_proto::codec::{CodecError, Reader, Writer};

use crate::app::Message;

/// Most publications one relay message carries (one message per loop turn).
const MAX_ITEMS: usize = 1 << 20;

/// One publication on its way between the processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The room, or `None` for a broadcast to every open connection.
    pub(crate) topic: Option<String>,
    /// Text (else binary).
    pub(crate) text: bool,
    pub(crate) payload: Vec<u8>,
    /// Made in the new process (and coming back to it from the sequencer).
    pub(crate) from_new: bool,
}

impl Relayed {
    pub(crate) fn new(topic: Option<&str>, msg: Message<'_>, from_new: bool) -> Relayed {
        let (text, payload) = match msg {
            Message::Text(text) => (true, text.as_bytes()),
            Message::Binary(bytes) => (false, bytes),
        };
        Relayed {
            topic: topic.map(str::to_owned),
            text,
            payload: payload.to_vec(),
            from_new,
        }
    }

    /// The message, if a text payload is still valid UTF-8.
    pub(crate) fn message(&self) -> Option<Message<'_>> {
        match self.text {
            true => std::str::from_utf8(&self.payload).ok().map(Message::Text),
            false => Some(Message::Binary(&self.payload)),
        }
    }
}

/// A process's side of the relay, while connections move.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// The new process: publications go to the sequencer instead of being delivered here.
    pub(crate) forwarding: bool,
    /// Publications to send at the end of this turn, in order.
    pub(crate) out: Vec<Relayed>,
    /// The new process: publications sent that have not come back yet.
    pub(crate) pending: usize,
    /// The new process, once it stops relaying: its publications wait here, in order, for
    /// the last relayed ones to come back (then they go out directly). Under a steady stream
    /// of publications `pending` would otherwise seldom be zero.
    pub(crate) held: Option<Vec<Relayed>>,
}

impl Relay {
    /// A publication: made here, or (`from_new`) sequenced here for the new process. Returns
    /// whether it is delivered here now (not in the new process while it relays: it comes
    /// back from the sequencer).
    pub(crate) fn publish(
        &mut self,
        topic: Option<&str>,
        msg: Message<'_>,
        from_new: bool,
    ) -> bool {
        if let Some(held) = &mut self.held {
            held.push(Relayed::new(topic, msg, true));
            return false;
        }
        let from_new = from_new || self.forwarding;
        self.out.push(Relayed::new(topic, msg, from_new));
        self.pending += usize::from(self.forwarding);
        !self.forwarding
    }
}

/// A relay message's body: the count, then each publication.
pub(crate) fn encode(items: &[Relayed]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u32(items.len() as u32);
    for item in items {
        w.bool(item.topic.is_some());
        w.bytes(item.topic.as_deref().unwrap_or_default().as_bytes());
        w.bool(item.text);
        w.bool(item.from_new);
        w.bytes(&item.payload);
    }
    out
}

/// # Errors
/// Truncated, inconsistent or trailing bytes.
pub(crate) fn decode(body: &[u8]) -> Result<Vec<Relayed>, CodecError> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    if count > MAX_ITEMS {
        return Err(CodecError::Invalid("relay size"));
    }
    let mut items = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let has_topic = r.bool()?;
        let topic =
            String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CodecError::Invalid("topic"))?;
        items.push(Relayed {
            topic: has_topic.then_some(topic),
            text: r.bool()?,
            from_new: r.bool()?,
            payload: r.bytes()?.to_vec(),
        });
    }
    r.finish()?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_come_back_as_they_went() {
        let items = vec![
            Relayed::new(Some("chat"), Message::Text("hi"), true),
            Relayed::new(None, Message::Binary(&[0, 255]), false),
        ];
        let bytes = encode(&items);
        assert_eq!(decode(&bytes), Ok(items.clone()));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(items[0].message(), Some(Message::Text("hi")));
        let broken = Relayed {
            payload: vec![0xff],
            ..items[0].clone()
        };
        assert_eq!(broken.message(), None);
    }
}
