//! The queues themselves: the reactor-wide [`Outbox`] of one loop turn, and each connection's
//! [`OutQueue`] of bytes the socket did not take. (Only [`super`] puts bytes in them.)
//!
//! Everything produced for connections during a loop turn goes into the outbox: owned bytes
//! as ranges of one shared byte buffer, publications as reference-counted frames shared by
//! their receivers (one per encoding). At the end of the turn each connection with output gets
//! one vectored write of its queue followed by its outbox entries (more only when they span
//! over [`MAX_IOVECS`] slices, or one `writev` takes part of them and the socket still accepts
//! more); only what the socket refuses is kept in the connection's own queue. An idle
//! connection owns no output buffer.
//!
//! A queue knows what it costs in memory, not only what it has to send: a small shared frame
//! is copied into its owned tail (a few bytes instead of a slot and a reference count each),
//! and [`OutQueue::footprint`] counts owned capacity, the shared frames and lent buffers it
//! keeps alive and its slots — the figure the process-wide memory budget adds up.
//!
//! Large payloads travel by move ([`super::lent`]): a message buffer lent to the output is
//! queued as it is, by reference count, beside its frame header.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Write};
use std::mem::size_of;
use std::ops::Range;
use std::rc::Rc;

use super::lent::Lent;

/// Most slices passed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 256;

/// Shared frames shorter than this are copied into the queue's owned tail instead of taking a
/// chunk of their own (unless a room policy may still drop them): a chunk costs a 32-byte
/// slot plus the frame's 16 bytes of reference counts, 24 times an empty frame's 2 bytes.
const COPY_BELOW: usize = 512;

/// Least capacity of a new owned chunk: small frames share one allocation.
const OWNED_CHUNK: usize = 4096;

/// What a shared frame's allocation holds besides the frame: `Rc`'s two counts.
const RC_COUNTS: usize = 2 * size_of::<usize>();

/// One piece of queued output.
#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    /// A shared frame, tagged with the room whose slow-consumer policy may drop it (0: none).
    Shared(Rc<[u8]>, u32),
    /// These bytes of a lent payload buffer (a frame's payload, its header queued before it).
    Lent(Rc<Lent>, Range<usize>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s, _) => s,
            Chunk::Lent(lent, range) => lent.bytes().get(range.clone()).unwrap_or_default(),
        }
    }

    /// Memory the chunk keeps allocated, besides its slot (a lent buffer counted whole, as if
    /// this queue were its only holder, like a shared frame).
    fn held(&self) -> usize {
        match self {
            Chunk::Owned(v) => v.capacity(),
            Chunk::Shared(s, _) => s.len() + RC_COUNTS,
            Chunk::Lent(lent, _) => lent.held(),
        }
    }

    /// The room that may drop it (0: none).
    fn room(&self) -> u32 {
        match self {
            Chunk::Owned(_) | Chunk::Lent(..) => 0,
            Chunk::Shared(_, room) => *room,
        }
    }
}

/// A connection's unsent output, in order: one pointer, allocated only while the socket
/// lags behind (an idle connection pays 8 bytes for it).
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    inner: Option<Box<Chunks>>,
}

/// The queued chunks themselves.
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// The front chunk is the rest of this turn's output the socket took part of (copied
    /// without the part written): a frame in it is on the wire already though none of the
    /// chunk is.
    front_started: bool,
    /// Unsent bytes in all chunks.
    len: usize,
    /// What the chunks keep allocated ([`Chunk::held`] summed).
    held: usize,
    /// Chunks tagged with each room (rarely more than one room): a room's policy finds out
    /// without looking whether the queue holds any of its frames.
    tagged: Vec<(u32, usize)>,
}

impl OutQueue {
    /// Unsent bytes.
    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| c.len)
    }

    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unsent bytes behind the front chunk — the frame being written (or, copied together,
    /// the small frames and the owned output of one turn that the socket refused with it).
    /// What a slow consumer is judged by: one message larger than the limit in flight to a
    /// reader that keeps up is all front chunk.
    pub(crate) fn behind_front(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| c.len - c.front_left())
    }

    /// Memory the queue holds: owned capacity, shared frames (each counted whole, as if this
    /// queue were their only holder), slots and bookkeeping. At least [`OutQueue::len`].
    pub(crate) fn footprint(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| {
            size_of::<Chunks>()
                + c.held
                + c.chunks.capacity() * size_of::<Chunk>()
                + c.tagged.capacity() * size_of::<(u32, usize)>()
        })
    }

    /// Appends a copy of `bytes`, extending the last owned chunk where it has room.
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.inner
                .get_or_insert_with(Box::default)
                .push_bytes(bytes);
        }
    }

    #[cfg(test)]
    /// Appends a shared frame tagged with `room` (0: none) from byte `from` on. A small
    /// untagged one is copied into the owned tail; otherwise the frame itself is queued, also
    /// the rest of a partly written one, which arrives as the queue empties and heads it
    /// (behind other output it would be copied).
    pub(crate) fn push_shared(&mut self, frame: &Rc<[u8]>, room: u32, from: usize) {
        if from < frame.len() {
            self.inner
                .get_or_insert_with(Box::default)
                .push_shared(frame, room, from);
        }
    }

    /// Removes unsent whole frames of `room` — the oldest one only, or all of them — and
    /// returns (frames, bytes) freed. A frame already partly written is never touched:
    /// cutting it would corrupt the stream. Free when the queue holds no frame of `room`;
    /// otherwise the oldest is found by looking from the front up to it, all in one pass.
    pub(crate) fn drop_room_frames(&mut self, room: u32, all: bool) -> (usize, usize) {
        let Some(inner) = self.inner.as_mut() else {
            return (0, 0);
        };
        let dropped = inner.drop_room_frames(room, all);
        if inner.len == 0 {
            self.inner = None;
        }
        dropped
    }

    /// Drops everything (the connection is going away).
    pub(crate) fn clear(&mut self) {
        self.inner = None;
    }

    /// Drops everything unsent but the rest of a frame already partly written, which must
    /// still go out whole or the peer would read what follows as its payload (the memory
    /// budget sheds the connection, and its close frame follows).
    pub(crate) fn drop_unsent(&mut self) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let keep = inner.in_progress();
        if keep == 0 {
            self.inner = None;
            return;
        }
        while inner.chunks.len() > keep {
            if let Some(chunk) = inner.chunks.pop_back() {
                inner.forget(&chunk);
            }
        }
        inner.len = inner.front_left()
            + inner
                .chunks
                .iter()
                .skip(1)
                .map(|c| c.bytes().len())
                .sum::<usize>();
    }

    /// Memory [`OutQueue::drop_unsent`] would keep: the frame being written, if partly.
    pub(crate) fn kept_when_dropped(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| {
            c.chunks.iter().take(c.in_progress()).map(Chunk::held).sum()
        })
    }

    /// Writes the queue to `socket` until it is empty or the socket would block.
    ///
    /// Returns the bytes written. `WouldBlock` is not an error here: it only means the rest
    /// stays queued until the socket is writable again.
    ///
    /// # Errors
    /// Any other socket error (the connection is then dead).
    pub(crate) fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        self.write_with(socket, &[], &[]).map(|(n, _)| n)
    }

    /// Writes the queue followed by `entries` (ranges of `outbox_bytes`, or shared frames) in
    /// as few vectored writes as the socket allows; whatever the socket refuses is appended to
    /// the queue, which is freed once empty. Returns (bytes written, whether the socket would
    /// block).
    ///
    /// # Errors
    /// Any socket error other than `WouldBlock`/`Interrupted`.
    pub(crate) fn write_with(
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
    /// How many chunks from the front hold the rest of a frame already partly written: none
    /// when nothing of the front chunk went out; else the front chunk (a chunk holds whole
    /// frames, or the rest of one), and the lent payload behind it when the front chunk ends
    /// with that payload's header. (A lent payload at the front had its header written
    /// already: chunks only leave the front once written.)
    fn in_progress(&self) -> usize {
        match self.chunks.front() {
            Some(Chunk::Lent(..)) => 1,
            Some(_) if self.front_written > 0 || self.front_started => {
                1 + usize::from(matches!(self.chunks.get(1), Some(Chunk::Lent(..))))
            }
            _ => 0,
        }
    }

    /// Unsent bytes of the front chunk.
    fn front_left(&self) -> usize {
        self.chunks
            .front()
            .map_or(0, |f| f.bytes().len() - self.front_written)
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            if last.capacity() - last.len() >= bytes.len() {
                last.extend_from_slice(bytes);
                return;
            }
        }
        let mut chunk = Vec::with_capacity(bytes.len().max(OWNED_CHUNK));
        chunk.extend_from_slice(bytes);
        self.push_chunk(Chunk::Owned(chunk));
    }

    fn push_shared(&mut self, frame: &Rc<[u8]>, room: u32, from: usize) {
        let rest = frame.get(from..).unwrap_or_default();
        if rest.is_empty() {
            return;
        }
        let small = room == 0 && rest.len() < COPY_BELOW;
        if small || (from > 0 && !self.chunks.is_empty()) {
            return self.push_bytes(rest);
        }
        if from > 0 {
            // The rest of a partly written frame, into a queue that has just emptied: it
            // becomes the front chunk, its written part skipped.
            self.front_written = from;
        }
        self.len += rest.len();
        self.push_chunk(Chunk::Shared(Rc::clone(frame), room));
    }

    /// Appends bytes `range` of a lent buffer, from byte `from` of the range on (the rest of a
    /// partly written one).
    fn push_lent(&mut self, lent: &Rc<Lent>, range: &Range<usize>, from: usize) {
        let rest = range.start.saturating_add(from)..range.end;
        if rest.is_empty() {
            return;
        }
        self.len += rest.len();
        self.push_chunk(Chunk::Lent(Rc::clone(lent), rest));
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        self.held += chunk.held();
        self.count_tag(chunk.room(), 1);
        self.chunks.push_back(chunk);
    }

    /// Accounts for a chunk that left the queue (written or dropped).
    fn forget(&mut self, chunk: &Chunk) {
        self.held -= chunk.held();
        self.count_tag(chunk.room(), -1);
    }

    /// Adds `delta` to the count of chunks tagged `room` (untagged chunks are not counted).
    fn count_tag(&mut self, room: u32, delta: isize) {
        if room == 0 {
            return;
        }
        match self.tagged.iter().position(|&(r, _)| r == room) {
            Some(at) => {
                if let Some((_, count)) = self.tagged.get_mut(at) {
                    *count = count.saturating_add_signed(delta);
                    if *count == 0 {
                        self.tagged.swap_remove(at);
                    }
                }
            }
            None if delta > 0 => self.tagged.push((room, delta.unsigned_abs())),
            None => {}
        }
    }

    fn tagged(&self, room: u32) -> usize {
        self.tagged
            .iter()
            .find(|&&(r, _)| r == room)
            .map_or(0, |&(_, count)| count)
    }

    fn drop_room_frames(&mut self, room: u32, all: bool) -> (usize, usize) {
        let partly_written = usize::from(self.front_written > 0);
        let mut left = self.tagged(room);
        if partly_written == 1 && self.chunks.front().is_some_and(|c| c.room() == room) {
            left -= 1;
        }
        if room == 0 || left == 0 {
            return (0, 0);
        }
        let (mut frames, mut freed, mut held) = (0, 0, 0);
        let mut take = |chunk: &Chunk| {
            frames += 1;
            freed += chunk.bytes().len();
            held += chunk.held();
        };
        if all {
            let mut index = 0;
            self.chunks.retain(|chunk| {
                index += 1;
                let drop = index > partly_written && chunk.room() == room;
                if drop {
                    take(chunk);
                }
                !drop
            });
        } else {
            let oldest = self
                .chunks
                .iter()
                .skip(partly_written)
                .position(|c| c.room() == room);
            if let Some(chunk) = oldest.and_then(|at| self.chunks.remove(at + partly_written)) {
                take(&chunk);
            }
        }
        self.len -= freed;
        self.held -= held;
        self.count_tag(room, -(frames as isize));
        (frames, freed)
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
            let left = self.front_left();
            if left == 0 {
                break;
            }
            if n >= left {
                n -= left;
                taken += left;
                if let Some(front) = self.chunks.pop_front() {
                    self.forget(&front);
                }
                self.front_written = 0;
                self.front_started = false;
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
                EntryData::Bytes(range) => {
                    // The rest of an entry the socket took part of: the queue was written
                    // out before it, so it is the front chunk.
                    self.front_started |= skip > 0 && self.chunks.is_empty();
                    self.push_bytes(
                        outbox_bytes
                            .get(range.clone())
                            .and_then(|b| b.get(skip..))
                            .unwrap_or_default(),
                    );
                }
                EntryData::Shared(frame, room) => self.push_shared(frame, *room, skip),
                EntryData::Lent(lent, range) => self.push_lent(lent, range, skip),
                // Resolved when the delivery that lent it ended, before any write.
                EntryData::Pending(_) => {}
            }
        }
        Ok((written_total, blocked))
    }
}

/// Where an outbox entry's bytes are.
#[derive(Debug)]
pub(crate) enum EntryData {
    /// A range of the outbox's byte buffer.
    Bytes(Range<usize>),
    /// A frame shared with other receivers, and its room (0: none).
    Shared(Rc<[u8]>, u32),
    /// A range of a lent payload buffer.
    Lent(Rc<Lent>, Range<usize>),
    /// This many bytes of the message being delivered, which the application sent while it
    /// held it: they become a [`EntryData::Lent`] when the delivery ends
    /// ([`Outbox::end_lending`]), before anything is written.
    Pending(usize),
}

/// Output for one connection produced during this loop turn.
#[derive(Debug)]
pub(crate) struct OutEntry {
    /// The connection's slab key.
    pub(crate) key: usize,
    /// The bytes.
    pub(crate) data: EntryData,
}

impl OutEntry {
    fn bytes<'a>(&'a self, outbox_bytes: &'a [u8]) -> &'a [u8] {
        match &self.data {
            EntryData::Bytes(range) => outbox_bytes.get(range.clone()).unwrap_or_default(),
            EntryData::Shared(frame, _) => frame,
            EntryData::Lent(lent, range) => lent.bytes().get(range.clone()).unwrap_or_default(),
            EntryData::Pending(_) => &[],
        }
    }

    /// How many bytes it sends.
    pub(crate) fn byte_count(&self, outbox_bytes: &[u8]) -> usize {
        match &self.data {
            EntryData::Pending(len) => *len,
            _ => self.bytes(outbox_bytes).len(),
        }
    }
}

/// All output of one loop turn, for every connection, in the order it was produced.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Owned frame bytes of this turn, all connections together.
    pub bytes: Vec<u8>,
    /// What goes to whom, in order.
    pub(crate) entries: Vec<OutEntry>,
    /// Where this turn's frames for receivers over their limit sit in `entries`, per
    /// (receiver, room), oldest first: a room policy that drops old frames takes them out in
    /// O(1) each, however long the turn.
    policed: HashMap<(usize, u32), VecDeque<usize>>,
    /// The large message being handed to the application, while it is.
    lending: Option<Lending>,
    /// Memory held by the lent buffers in `entries` (each counted once): like all output of
    /// the turn it is in no queue yet, but unlike copied bytes it is a message's worth each.
    lent_bytes: usize,
}

/// A message being delivered whose bytes go out by move if the application sends them.
#[derive(Debug)]
pub struct Lending {
    /// Where its bytes are (an address, only compared, never followed) and how many.
    pub addr: usize,
    /// Its length.
    pub len: usize,
    /// The [`EntryData::Pending`] entries waiting for its buffer.
    pending: Vec<usize>,
}

impl Lending {
    /// Whether `part` is exactly the message's bytes.
    fn is(&self, part: &[u8]) -> bool {
        part.len() == self.len && part.as_ptr() as usize == self.addr
    }
}

impl Outbox {
    /// A large message is about to be handed to the application: a send of exactly these
    /// bytes (the same address and length) is queued by reference to its buffer, which the
    /// caller hands over when the delivery ends ([`Outbox::end_lending`]).
    pub fn begin_lending(&mut self, message: &[u8]) {
        self.lending = Some(Lending {
            addr: message.as_ptr() as usize,
            len: message.len(),
            pending: Vec::new(),
        });
    }

    /// The message being lent, if the application sent it (its buffer is wanted).
    pub fn lent_and_sent(&self) -> Option<&Lending> {
        self.lending.as_ref().filter(|l| !l.pending.is_empty())
    }

    /// The delivery ended: the sends of the message become `range` of `lent` (its buffer,
    /// moved). `None` — the buffer was not found, which cannot be: a message not borrowed from
    /// the input is the scratch buffer's — keeps the frames whole with zeroes, not the bytes.
    pub fn end_lending(&mut self, lent: Option<(&Rc<Lent>, Range<usize>)>) {
        let Some(lending) = self.lending.take() else {
            return;
        };
        if let Some((lent, _)) = &lent {
            self.lent_bytes += lent.held();
        }
        for at in lending.pending {
            let data = match &lent {
                Some((lent, range)) => EntryData::Lent(Rc::clone(lent), range.clone()),
                None => {
                    let start = self.bytes.len();
                    self.bytes.resize(start + lending.len, 0);
                    EntryData::Bytes(start..self.bytes.len())
                }
            };
            if let Some(entry) = self.entries.get_mut(at) {
                entry.data = data;
            }
        }
    }

    /// Appends `parts` (one frame) for connection `key`: copied, except a part that is the
    /// message being lent, which waits for its buffer.
    pub fn push_parts(&mut self, key: usize, parts: &[&[u8]]) {
        let lent_at = self
            .lending
            .as_ref()
            .and_then(|l| parts.iter().position(|part| l.is(part)));
        let Some(at) = lent_at else {
            return self.push_bytes(key, parts);
        };
        let (before, from_lent) = parts.split_at(at);
        if !before.is_empty() {
            self.push_bytes(key, before);
        }
        if let Some(lending) = self.lending.as_mut() {
            lending.pending.push(self.entries.len());
            self.entries.push(OutEntry {
                key,
                data: EntryData::Pending(lending.len),
            });
        }
        let after = from_lent.get(1..).unwrap_or_default();
        if after.iter().any(|part| !part.is_empty()) {
            self.push_bytes(key, after);
        }
    }

    /// Memory held by this turn's lent buffers (see [`Outbox::end_lending`]).
    pub fn lent_bytes(&self) -> usize {
        self.lent_bytes
    }

    /// Appends bytes `range` of a lent buffer for connection `key` (its only use).
    pub fn push_lent(&mut self, key: usize, lent: &Rc<Lent>, range: Range<usize>) {
        self.lent_bytes += lent.held();
        self.entries.push(OutEntry {
            key,
            data: EntryData::Lent(Rc::clone(lent), range),
        });
    }

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

    /// Appends a shared frame tagged with `room` (0: none) for connection `key`.
    pub(crate) fn push_shared(&mut self, key: usize, frame: &Rc<[u8]>, room: u32) {
        self.entries.push(OutEntry {
            key,
            data: EntryData::Shared(Rc::clone(frame), room),
        });
    }

    /// Appends a frame of `room` for a receiver over its limit, remembering where it is so
    /// that [`Outbox::drop_policed`] can take it out again.
    pub(crate) fn push_policed(&mut self, key: usize, frame: &Rc<[u8]>, room: u32) {
        self.policed
            .entry((key, room))
            .or_default()
            .push_back(self.entries.len());
        self.push_shared(key, frame, room);
    }

    /// Takes this turn's frames of `room` pushed by [`Outbox::push_policed`] for `key` out —
    /// the oldest one only, or all of them — and returns (frames, bytes) taken. An entry is
    /// emptied where it stands rather than removed, so this costs O(1) per frame.
    ///
    /// Only policed frames are found. That is all of them: a receiver's queue only shrinks
    /// while an outbox fills (even the `on_drain` callbacks of a flush run after all its
    /// writes), so one over its limit now was over it for every earlier frame of this outbox.
    pub(crate) fn drop_policed(&mut self, key: usize, room: u32, all: bool) -> (usize, usize) {
        let Some(indexes) = self.policed.get_mut(&(key, room)) else {
            return (0, 0);
        };
        let frames = if all {
            indexes.len()
        } else {
            indexes.len().min(1)
        };
        let mut freed = 0;
        for index in indexes.drain(..frames) {
            if let Some(entry) = self.entries.get_mut(index) {
                freed += entry.byte_count(&self.bytes);
                entry.data = EntryData::Bytes(0..0);
            }
        }
        (frames, freed)
    }

    /// Empties this turn's entries for connection `key` where they stand (the connection is
    /// shed: none was written yet); returns the bytes they held.
    pub fn drop_entries(&mut self, key: usize) -> usize {
        let mut dropped = 0;
        for entry in self.entries.iter_mut().filter(|e| e.key == key) {
            dropped += entry.byte_count(&self.bytes);
            entry.data = EntryData::Bytes(0..0);
        }
        dropped
    }

    /// Whether nothing was produced this turn.
    pub(crate) fn is_empty(&self) -> bool {
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
        self.policed.clear();
        self.lent_bytes = 0;
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
    fn outbox_drops_only_that_connections_policed_frames_of_that_room() {
        let mut outbox = Outbox::default();
        let a: Rc<[u8]> = Rc::from(&b"aaaa"[..]);
        let b: Rc<[u8]> = Rc::from(&b"bb"[..]);
        outbox.push_policed(1, &a, 7);
        outbox.push_bytes(1, &[b"own"]);
        outbox.push_policed(2, &a, 7);
        outbox.push_policed(1, &b, 7);
        outbox.push_policed(1, &b, 8);
        outbox.push_shared(1, &a, 7);
        assert_eq!(outbox.drop_policed(1, 7, false), (1, 4), "the oldest only");
        assert_eq!(
            outbox.drop_policed(1, 7, true),
            (1, 2),
            "frames pushed unpoliced are not found"
        );
        assert_eq!(outbox.drop_policed(1, 7, true), (0, 0));
        assert_eq!(outbox.drop_policed(3, 7, true), (0, 0));
        // Dropped entries stay in place, empty.
        let left: Vec<(usize, usize)> = outbox
            .entries
            .iter()
            .map(|e| (e.key, e.byte_count(&outbox.bytes)))
            .collect();
        assert_eq!(left, [(1, 0), (1, 3), (2, 4), (1, 0), (1, 2), (1, 4)]);
        outbox.clear(usize::MAX);
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.drop_policed(1, 8, true),
            (0, 0),
            "cleared with the turn"
        );
    }

    #[test]
    fn small_untagged_frames_are_copied_together() {
        let tiny: Rc<[u8]> = Rc::from(&[0x81, 0][..]);
        let mut q = OutQueue::default();
        for _ in 0..10_000 {
            q.push_shared(&tiny, 0, 0);
        }
        assert_eq!(q.len(), 20_000);
        // Five 4 KiB chunks, not 10 000 slots and references.
        let chunks = q.inner.as_ref().map_or(0, |c| c.chunks.len());
        assert_eq!(chunks, 5);
        assert!(
            q.footprint() < q.len() * 11 / 10 + 1024,
            "{}",
            q.footprint()
        );
        // A tagged one keeps its own chunk (its room may drop it), and is counted with its
        // slot and reference counts.
        let before = q.footprint();
        q.push_shared(&tiny, 7, 0);
        assert!(q.footprint() >= before + 2 + RC_COUNTS);
        assert_eq!(q.drop_room_frames(7, true), (1, 2));
        let mut sock = Limited {
            got: Vec::new(),
            room: usize::MAX,
            calls: 0,
        };
        q.write_to(&mut sock).unwrap();
        assert_eq!(sock.got.len(), 20_000);
        assert_eq!(q.footprint(), 0);
    }

    #[test]
    fn behind_front_leaves_out_the_frame_being_written() {
        let big: Rc<[u8]> = Rc::from(vec![1u8; 10_000]);
        let mut outbox = Outbox::default();
        outbox.push_shared(1, &big, 0);
        outbox.push_bytes(1, &[b"after"]);
        let mut q = OutQueue::default();
        let mut sock = Limited {
            got: Vec::new(),
            room: 1000,
            calls: 0,
        };
        q.write_with(&mut sock, &outbox.bytes, &outbox.entries)
            .unwrap();
        assert_eq!(q.len(), 9005);
        assert_eq!(
            q.behind_front(),
            5,
            "the rest of the big frame is in flight"
        );
        // Its rest was not copied: the queue holds the shared frame itself.
        assert!(q.footprint() < 10_000 + 4096 + 1024, "{}", q.footprint());
        assert_eq!(Rc::strong_count(&big), 3);
        // Another frame behind it leaves the front where it was.
        q.push_shared(&big, 0, 0);
        assert_eq!(q.len(), 19_005);
        assert_eq!(q.behind_front(), 10_005);
        sock.room = 9000;
        q.write_to(&mut sock).unwrap();
        assert_eq!(q.behind_front(), 10_000);
        assert_eq!(q.len(), 10_005);
        sock.room = usize::MAX;
        q.write_to(&mut sock).unwrap();
        assert_eq!(sock.got.len(), 20_005);
        assert_eq!(&sock.got[10_000..10_005], b"after");
        assert_eq!(sock.got[10_005..], big[..]);
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
    fn shedding_keeps_only_the_rest_of_a_partly_written_frame() {
        let big: Rc<[u8]> = Rc::from(vec![1u8; 10_000]);
        let mut q = OutQueue::default();
        q.push_shared(&big, 0, 0);
        q.push_bytes(b"after");
        q.push_shared(&big, 0, 0);
        // Nothing written yet: everything goes.
        assert!(q.kept_when_dropped() == 0);
        let mut unwritten = OutQueue::default();
        unwritten.push_shared(&big, 0, 0);
        unwritten.drop_unsent();
        assert!(unwritten.is_empty());
        // The first frame partly written: its rest stays, the rest goes.
        let mut sock = Limited {
            got: Vec::new(),
            room: 1000,
            calls: 0,
        };
        q.write_to(&mut sock).unwrap();
        assert!(q.kept_when_dropped() >= 10_000);
        q.drop_unsent();
        assert_eq!(q.len(), 9000);
        assert!(q.footprint() < 10_000 + 1024, "{}", q.footprint());
        sock.room = usize::MAX;
        q.write_to(&mut sock).unwrap();
        assert!(
            sock.got[..] == big[..],
            "one whole frame and nothing after it"
        );
        // The same when the socket took part of this turn's output, not of the queue.
        let mut outbox = Outbox::default();
        outbox.push_bytes(1, &[b"frame one", b"frame two"]);
        let mut q = OutQueue::default();
        sock.room = 4;
        q.write_with(&mut sock, &outbox.bytes, &outbox.entries)
            .unwrap();
        assert!(q.kept_when_dropped() > 0);
        q.drop_unsent();
        assert_eq!(q.len(), 14);
    }

    #[test]
    fn shedding_keeps_a_lent_payload_whose_header_went_out() {
        let lent = Lent::new(vec![2u8; 10_000], None);
        let mut outbox = Outbox::default();
        outbox.push_bytes(1, &[b"HEADER"]);
        outbox.push_lent(1, &lent, 0..10_000);
        outbox.push_bytes(1, &[b"next frame"]);
        // The header alone went out: the payload must follow it whole.
        let mut q = OutQueue::default();
        let mut sock = Limited {
            got: Vec::new(),
            room: 6,
            calls: 0,
        };
        q.write_with(&mut sock, &outbox.bytes, &outbox.entries)
            .unwrap();
        assert!(q.kept_when_dropped() >= 10_000);
        q.drop_unsent();
        assert_eq!(q.len(), 10_000);
        // Part of the header went out: the header's rest and the payload stay.
        let mut q = OutQueue::default();
        sock.room = 3;
        q.write_with(&mut sock, &outbox.bytes, &outbox.entries)
            .unwrap();
        q.drop_unsent();
        assert_eq!(q.len(), 3 + 10_000);
        sock.room = usize::MAX;
        q.write_to(&mut sock).unwrap();
        assert_eq!(&sock.got[..9], b"HEADERHEA");
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
