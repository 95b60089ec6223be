//! Output: the reactor-wide [`Outbox`] of one loop turn, and each connection's [`OutQueue`]
//! of bytes the socket did not take.
//!
//! Everything an application sends during a loop turn goes into the outbox: owned frames as
//! ranges of one shared byte buffer, publications as one reference-counted frame shared by
//! every receiver. At the end of the turn each connection with output gets exactly one
//! vectored write of its queue followed by its outbox entries; only what the socket refuses is
//! copied into the connection's own queue. An idle connection owns no output buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::ops::Range;
use std::rc::Rc;

/// Most slices passed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 256;

/// One piece of queued output.
#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    /// A shared frame, tagged with the room it was published to (0: none), so a room's
    /// slow-consumer policy can find its unsent frames.
    Shared(Rc<[u8]>, u32),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s, _) => s,
        }
    }
}

/// A connection's unsent output, in order: one pointer, allocated only while the socket
/// lags behind (an idle connection pays 8 bytes for it).
#[derive(Debug, Default)]
pub struct OutQueue {
    inner: Option<Box<Chunks>>,
}

/// The queued chunks themselves.
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// Unsent bytes in all chunks.
    len: usize,
}

impl OutQueue {
    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| c.len)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a copy of `bytes`, extending the last owned chunk where it has room.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.inner
                .get_or_insert_with(Box::default)
                .push_bytes(bytes);
        }
    }

    /// Appends a shared frame of `room` (0: none) from byte `from` on (no copy when `from`
    /// is 0).
    pub fn push_shared(&mut self, frame: &Rc<[u8]>, room: u32, from: usize) {
        if from < frame.len() {
            self.inner
                .get_or_insert_with(Box::default)
                .push_shared(frame, room, from);
        }
    }

    /// Removes unsent whole frames of `room` — the oldest one only, or all of them — and
    /// returns (frames, bytes) freed. A frame already partly written is never touched:
    /// cutting it would corrupt the stream.
    pub fn drop_room_frames(&mut self, room: u32, all: bool) -> (usize, usize) {
        let Some(inner) = self.inner.as_mut() else {
            return (0, 0);
        };
        let (mut frames, mut freed) = (0, 0);
        let mut index = usize::from(inner.front_written > 0);
        while let Some(chunk) = inner.chunks.get(index) {
            match chunk {
                Chunk::Shared(frame, r) if *r == room && room != 0 => {
                    freed += frame.len();
                    frames += 1;
                    inner.chunks.remove(index);
                    if !all {
                        break;
                    }
                }
                _ => index += 1,
            }
        }
        inner.len -= freed;
        if inner.len == 0 {
            self.inner = None;
        }
        (frames, freed)
    }

    /// Drops everything (the connection is going away).
    pub fn clear(&mut self) {
        self.inner = None;
    }

    /// Writes the queue to `socket` until it is empty or the socket would block.
    ///
    /// Returns the bytes written. `WouldBlock` is not an error here: it only means the rest
    /// stays queued until the socket is writable again.
    ///
    /// # Errors
    /// Any other socket error (the connection is then dead).
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        self.write_with(socket, &[], &[]).map(|(n, _)| n)
    }

    /// Writes the queue followed by `entries` (ranges of `outbox_bytes`, or shared frames) in
    /// as few vectored writes as the socket allows; whatever the socket refuses is appended to
    /// the queue, which is freed once empty. Returns (bytes written, whether the socket would
    /// block).
    ///
    /// # Errors
    /// Any socket error other than `WouldBlock`/`Interrupted`.
    pub fn write_with(
        &mut self,
        socket: &mut impl Write,
        outbox_bytes: &[u8],
        entries: &[OutEntry],
    ) -> io::Result<(usize, bool)> {
        let mut chunks = self.inner.take().unwrap_or_default();
        let result = chunks.write_with(socket, outbox_bytes, entries);
        if chunks.len != 0 {
            self.inner = Some(chunks);
        }
        result
    }
}

impl Chunks {
    fn push_bytes(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            if last.capacity() - last.len() >= bytes.len() {
                last.extend_from_slice(bytes);
                return;
            }
        }
        let mut chunk = Vec::with_capacity(bytes.len().max(4096));
        chunk.extend_from_slice(bytes);
        self.chunks.push_back(Chunk::Owned(chunk));
    }

    fn push_shared(&mut self, frame: &Rc<[u8]>, room: u32, from: usize) {
        let len = frame.len().saturating_sub(from);
        if len == 0 {
            return;
        }
        if from == 0 {
            self.len += len;
            self.chunks.push_back(Chunk::Shared(Rc::clone(frame), room));
        } else {
            self.push_bytes(frame.get(from..).unwrap_or_default());
        }
    }

    /// Adds the queued slices to `iov`, front first.
    fn slices<'a>(&'a self, iov: &mut Vec<IoSlice<'a>>) {
        for (i, chunk) in self.chunks.iter().enumerate() {
            if iov.len() == MAX_IOVECS {
                return;
            }
            let bytes = chunk.bytes();
            let bytes = if i == 0 {
                bytes.get(self.front_written..).unwrap_or_default()
            } else {
                bytes
            };
            iov.push(IoSlice::new(bytes));
        }
    }

    /// Marks `n` bytes from the front as written; returns how many of `n` were queue bytes.
    fn advance(&mut self, mut n: usize) -> usize {
        let mut taken = 0;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.front_written;
            if n >= left {
                n -= left;
                taken += left;
                self.chunks.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += n;
                taken += n;
                n = 0;
            }
        }
        self.len -= taken;
        taken
    }

    fn write_with(
        &mut self,
        socket: &mut impl Write,
        outbox_bytes: &[u8],
        entries: &[OutEntry],
    ) -> io::Result<(usize, bool)> {
        let mut written_total = 0;
        // Offset into `entries`: (index, bytes of that entry already written).
        let mut next = (0usize, 0usize);
        let mut blocked = false;
        loop {
            let mut iov = Vec::with_capacity((self.chunks.len() + entries.len()).min(MAX_IOVECS));
            self.slices(&mut iov);
            for (i, entry) in entries.iter().enumerate().skip(next.0) {
                if iov.len() == MAX_IOVECS {
                    break;
                }
                let bytes = entry.bytes(outbox_bytes);
                let skip = if i == next.0 { next.1 } else { 0 };
                iov.push(IoSlice::new(bytes.get(skip..).unwrap_or_default()));
            }
            let total: usize = iov.iter().map(|s| s.len()).sum();
            if total == 0 {
                break;
            }
            let n = match socket.write_vectored(&iov) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            drop(iov);
            written_total += n;
            let mut rest = n - self.advance(n);
            while rest > 0 {
                let Some(entry) = entries.get(next.0) else {
                    break;
                };
                let left = entry.bytes(outbox_bytes).len() - next.1;
                if rest >= left {
                    rest -= left;
                    next = (next.0 + 1, 0);
                } else {
                    next.1 += rest;
                    rest = 0;
                }
            }
        }
        for (i, entry) in entries.iter().enumerate().skip(next.0) {
            let skip = if i == next.0 { next.1 } else { 0 };
            match &entry.data {
                EntryData::Bytes(range) => self.push_bytes(
                    outbox_bytes
                        .get(range.clone())
                        .and_then(|b| b.get(skip..))
                        .unwrap_or_default(),
                ),
                EntryData::Shared(frame, room) => self.push_shared(frame, *room, skip),
            }
        }
        Ok((written_total, blocked))
    }
}

/// Where an outbox entry's bytes are.
#[derive(Debug)]
pub enum EntryData {
    /// A range of the outbox's byte buffer.
    Bytes(Range<usize>),
    /// A frame shared with other receivers, and its room (0: none).
    Shared(Rc<[u8]>, u32),
}

/// Output for one connection produced during this loop turn.
#[derive(Debug)]
pub struct OutEntry {
    /// The connection's slab key.
    pub key: usize,
    /// The bytes.
    pub data: EntryData,
}

impl OutEntry {
    fn bytes<'a>(&'a self, outbox_bytes: &'a [u8]) -> &'a [u8] {
        match &self.data {
            EntryData::Bytes(range) => outbox_bytes.get(range.clone()).unwrap_or_default(),
            EntryData::Shared(frame, _) => frame,
        }
    }

    /// How many bytes it sends.
    pub fn byte_count(&self, outbox_bytes: &[u8]) -> usize {
        self.bytes(outbox_bytes).len()
    }
}

/// All output of one loop turn, for every connection, in the order it was produced.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Owned frame bytes of this turn, all connections together.
    pub bytes: Vec<u8>,
    /// What goes to whom, in order.
    pub entries: Vec<OutEntry>,
}

impl Outbox {
    /// Appends owned bytes for connection `key`, merging with its previous entry when adjacent
    /// (an echo of sixteen pipelined messages becomes one slice).
    pub fn push_bytes(&mut self, key: usize, parts: &[&[u8]]) {
        let start = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        let end = self.bytes.len();
        if let Some(OutEntry {
            key: last_key,
            data: EntryData::Bytes(range),
        }) = self.entries.last_mut()
        {
            if *last_key == key && range.end == start {
                range.end = end;
                return;
            }
        }
        self.entries.push(OutEntry {
            key,
            data: EntryData::Bytes(start..end),
        });
    }

    /// Appends a shared frame of `room` (0: none) for connection `key`.
    pub fn push_shared(&mut self, key: usize, frame: &Rc<[u8]>, room: u32) {
        self.entries.push(OutEntry {
            key,
            data: EntryData::Shared(Rc::clone(frame), room),
        });
    }

    /// Removes this turn's whole frames of `room` (0: none) for connection `key` — the oldest
    /// one only, or all of them — and returns (frames, bytes) removed. The twin of
    /// [`OutQueue::drop_room_frames`] for what has not reached the connection's queue yet:
    /// frames published earlier in the same turn are still here.
    pub fn drop_room_frames(&mut self, key: usize, room: u32, all: bool) -> (usize, usize) {
        let (mut frames, mut freed) = (0, 0);
        let mut index = 0;
        while let Some(entry) = self.entries.get(index) {
            match &entry.data {
                EntryData::Shared(frame, r) if entry.key == key && *r == room && room != 0 => {
                    freed += frame.len();
                    frames += 1;
                    self.entries.remove(index);
                    if !all {
                        break;
                    }
                }
                _ => index += 1,
            }
        }
        (frames, freed)
    }

    /// Whether nothing was produced this turn.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets this turn's output (after it was written), keeping the buffers for the next
    /// turn unless they grew past `keep` bytes.
    pub fn clear(&mut self, keep: usize) {
        self.entries.clear();
        self.bytes.clear();
        if self.bytes.capacity() > keep {
            self.bytes = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that accepts at most `room` bytes, then would block.
    struct Limited {
        got: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room);
                self.got.extend_from_slice(&b[..take]);
                self.room -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn outbox_drops_only_that_connections_frames_of_that_room() {
        let mut outbox = Outbox::default();
        let a: Rc<[u8]> = Rc::from(&b"aaaa"[..]);
        let b: Rc<[u8]> = Rc::from(&b"bb"[..]);
        outbox.push_shared(1, &a, 7);
        outbox.push_bytes(1, &[b"own"]);
        outbox.push_shared(2, &a, 7);
        outbox.push_shared(1, &b, 7);
        outbox.push_shared(1, &b, 8);
        assert_eq!(
            outbox.drop_room_frames(1, 7, false),
            (1, 4),
            "the oldest only"
        );
        assert_eq!(outbox.drop_room_frames(1, 7, true), (1, 2));
        assert_eq!(
            outbox.drop_room_frames(1, 0, true),
            (0, 0),
            "room 0 is never dropped"
        );
        let left: Vec<(usize, usize)> = outbox
            .entries
            .iter()
            .map(|e| (e.key, e.bytes(&outbox.bytes).len()))
            .collect();
        assert_eq!(left, [(1, 3), (2, 4), (1, 2)]);
    }

    #[test]
    fn queue_then_entries_in_order_and_remainder_kept() {
        let mut outbox = Outbox::default();
        outbox.push_bytes(1, &[b"ab", b"cd"]);
        outbox.push_bytes(1, &[b"ef"]);
        let shared: Rc<[u8]> = Rc::from(&b"SHARED"[..]);
        outbox.push_shared(1, &shared, 0);
        outbox.push_bytes(1, &[b"gh"]);
        assert_eq!(outbox.entries.len(), 3, "adjacent byte entries merge");

        let mut q = OutQueue::default();
        q.push_bytes(b"01");
        let entries = &outbox.entries;
        for room in 0..=16 {
            let mut q2 = OutQueue::default();
            q2.push_bytes(b"01");
            let mut sock = Limited {
                got: Vec::new(),
                room,
                calls: 0,
            };
            let (n, _) = q2.write_with(&mut sock, &outbox.bytes, entries).unwrap();
            assert_eq!(n, room.min(16));
            sock.room = usize::MAX;
            q2.write_to(&mut sock).unwrap();
            assert_eq!(sock.got, b"01abcdefSHAREDgh", "room {room}");
            assert!(q2.is_empty());
        }
        let mut sock = Limited {
            got: Vec::new(),
            room: 100,
            calls: 0,
        };
        q.write_with(&mut sock, &outbox.bytes, entries).unwrap();
        assert_eq!(
            sock.calls, 1,
            "one vectored write when the socket takes it all"
        );
    }

    #[test]
    fn room_frames_drop_oldest_or_all_but_never_a_partly_written_one() {
        let a: Rc<[u8]> = Rc::from(&b"AAAA"[..]);
        let b: Rc<[u8]> = Rc::from(&b"BBBB"[..]);
        let mut q = OutQueue::default();
        q.push_shared(&a, 7, 0);
        q.push_bytes(b"own");
        q.push_shared(&b, 7, 0);
        q.push_shared(&a, 8, 0);
        // Write 2 bytes: the first room-7 frame is now partly written.
        let mut sock = Limited {
            got: Vec::new(),
            room: 2,
            calls: 0,
        };
        q.write_to(&mut sock).unwrap();
        assert_eq!(
            q.drop_room_frames(7, false),
            (1, 4),
            "the second room-7 frame goes"
        );
        assert_eq!(
            q.drop_room_frames(7, true),
            (0, 0),
            "the partly written one stays"
        );
        assert_eq!(q.drop_room_frames(8, true), (1, 4));
        sock.room = usize::MAX;
        q.write_to(&mut sock).unwrap();
        assert_eq!(sock.got, b"AAAAown");
        assert!(q.is_empty());
    }
}
