//! What travels with a moving connection's socket: the protocol connection's own state
//! ([`wsloop_proto::Connection::export`]) and what the server keeps beside it — the path and
//! client address the upgrade decided, the rooms it is in, the bytes the socket has not taken
//! yet, and what the application exported for it ([`crate::Handler::export`]).
//!
//! A batch is the records of up to [`super::wire::MAX_FDS`] connections, in the order of the
//! descriptors sent with it. Every length is checked on the way in: a record that does not
//! decode refuses the whole batch, and the old process keeps serving those connections.

use std::net::SocketAddr;

use wsloop_proto::codec::{CodecError, Reader, Writer};

use crate::stats::{Stats, STATS_FIELDS};

/// Longest path or room name a record carries (the request head is bounded far below).
const MAX_NAME: usize = 64 * 1024;
/// Most rooms one connection carries.
const MAX_ROOMS: usize = 4096;

/// One connection's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnRecord {
    /// [`wsloop_proto::Connection::export`]'s bytes.
    pub(crate) state: Vec<u8>,
    /// The path it was upgraded on.
    pub(crate) path: Option<String>,
    /// Its client's address, as the upgrade decided it (PROXY and forwarding headers apply).
    pub(crate) peer: Option<SocketAddr>,
    /// The rooms it is a member of.
    pub(crate) rooms: Vec<String>,
    /// Output the socket has not taken yet, in order (the rest of a frame being written
    /// first).
    pub(crate) output: Vec<u8>,
    /// What the application exported for it.
    pub(crate) app: Vec<u8>,
    /// Accepted on the `/metrics` listener.
    pub(crate) metrics_only: bool,
}

impl ConnRecord {
    fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.state);
        w.bool(self.path.is_some());
        w.bytes(self.path.as_deref().unwrap_or_default().as_bytes());
        w.opt_addr(self.peer);
        w.u32(self.rooms.len() as u32);
        for room in &self.rooms {
            w.bytes(room.as_bytes());
        }
        w.bytes(&self.output);
        w.bytes(&self.app);
        w.bool(self.metrics_only);
    }

    fn decode(r: &mut Reader<'_>) -> Result<ConnRecord, CodecError> {
        let state = r.bytes()?.to_vec();
        let has_path = r.bool()?;
        let path = name(r, "path")?;
        let peer = r.opt_addr()?;
        let count = r.u32()? as usize;
        if count > MAX_ROOMS {
            return Err(CodecError::Invalid("room count"));
        }
        let rooms = (0..count)
            .map(|_| name(r, "room"))
            .collect::<Result<_, _>>()?;
        Ok(ConnRecord {
            state,
            path: has_path.then_some(path),
            peer,
            rooms,
            output: r.bytes()?.to_vec(),
            app: r.bytes()?.to_vec(),
            metrics_only: r.bool()?,
        })
    }
}

/// A UTF-8 name of at most [`MAX_NAME`] bytes.
fn name(r: &mut Reader<'_>, what: &'static str) -> Result<String, CodecError> {
    let bytes = r.bytes_max(MAX_NAME, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Invalid(what))
}

/// A batch's body: the record count, then the records.
pub(crate) fn encode_batch(records: &[ConnRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u32(records.len() as u32);
    for record in records {
        record.encode(&mut w);
    }
    out
}

/// The records of a batch body.
///
/// # Errors
/// Truncated, inconsistent or trailing bytes.
pub(crate) fn decode_batch(body: &[u8]) -> Result<Vec<ConnRecord>, CodecError> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    if count > super::wire::MAX_FDS {
        return Err(CodecError::Invalid("batch size"));
    }
    let records = (0..count)
        .map(|_| ConnRecord::decode(&mut r))
        .collect::<Result<_, _>>()?;
    r.finish()?;
    Ok(records)
}

/// The old process's rooms and its name in Redis.
pub(crate) fn encode_rooms<'a>(
    origin: Option<u64>,
    topics: impl ExactSizeIterator<Item = &'a str>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.bool(origin.is_some());
    w.u64(origin.unwrap_or_default());
    w.u32(topics.len() as u32);
    for topic in topics {
        w.bytes(topic.as_bytes());
    }
    out
}

/// # Errors
/// Truncated, trailing or over-long names, or too many.
pub(crate) fn decode_rooms(body: &[u8]) -> Result<(Option<u64>, Vec<String>), CodecError> {
    let mut r = Reader::new(body);
    let origin = match (r.bool()?, r.u64()?) {
        (true, origin) => Some(origin),
        (false, _) => None,
    };
    let count = r.u32()? as usize;
    if count > MAX_ROOMS * super::wire::MAX_FDS {
        return Err(CodecError::Invalid("room count"));
    }
    let topics = (0..count)
        .map(|_| name(&mut r, "room"))
        .collect::<Result<_, _>>()?;
    r.finish()?;
    Ok((origin, topics))
}

/// The counters `/stats` and `/metrics` show, so that they carry on in the new process.
pub(crate) fn encode_stats(stats: &Stats) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    for field in stats.to_fields() {
        w.u64(field);
    }
    out
}

/// # Errors
/// Not exactly the counters [`encode_stats`] writes.
pub(crate) fn decode_stats(body: &[u8]) -> Result<Stats, CodecError> {
    let mut r = Reader::new(body);
    let mut fields = [0; STATS_FIELDS];
    for field in &mut fields {
        *field = r.u64()?;
    }
    r.finish()?;
    Ok(Stats::from_fields(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ConnRecord> {
        vec![
            ConnRecord {
                state: vec![1, 2, 3],
                path: Some("/chat".into()),
                peer: Some("127.0.0.1:4242".parse().unwrap()),
                rooms: vec!["chat".into(), "news".into()],
                output: b"\x81\x02hi".to_vec(),
                app: vec![1],
                metrics_only: false,
            },
            ConnRecord::default(),
            ConnRecord {
                metrics_only: true,
                path: Some(String::new()),
                peer: Some("[::1]:80".parse().unwrap()),
                ..ConnRecord::default()
            },
        ]
    }

    #[test]
    fn a_batch_comes_back_as_it_went() {
        let records = sample();
        assert_eq!(decode_batch(&encode_batch(&records)), Ok(records));
        assert_eq!(decode_batch(&encode_batch(&[])), Ok(Vec::new()));
    }

    #[test]
    fn anything_but_a_whole_batch_is_an_error() {
        let bytes = encode_batch(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_batch(&[bytes.as_slice(), &[0]].concat()).is_err());
        // More records than descriptors a message can carry.
        assert!(decode_batch(&u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn room_lists_come_back_as_they_went() {
        let rooms = ["chat", "", "news"];
        let bytes = encode_rooms(Some(42), rooms.into_iter());
        assert_eq!(
            decode_rooms(&bytes).unwrap(),
            (Some(42), rooms.map(String::from).to_vec())
        );
        for cut in 0..bytes.len() {
            assert!(decode_rooms(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let none = encode_rooms(None, [].into_iter());
        assert_eq!(decode_rooms(&none).unwrap(), (None, Vec::new()));
    }

    #[test]
    fn names_must_be_utf8() {
        let mut record = sample().remove(0);
        record.path = Some("/x".into());
        let mut bytes = encode_batch(&[record]);
        let at = bytes.windows(2).position(|w| w == b"/x").unwrap();
        bytes[at] = 0xff;
        assert!(decode_batch(&bytes).is_err());
    }

    #[test]
    fn the_counters_come_back_as_they_went() {
        let mut stats = Stats {
            accepted: 7,
            messages_in: 1 << 40,
            ..Stats::default()
        };
        stats.ping_rtt.counts[3] = 2;
        assert_eq!(decode_stats(&encode_stats(&stats)), Ok(stats.clone()));
        let bytes = encode_stats(&stats);
        assert!(decode_stats(&bytes[..bytes.len() - 1]).is_err());
    }
}
