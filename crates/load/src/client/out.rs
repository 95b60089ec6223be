//! What goes out: masked client frames, and the queue of bytes the socket has not taken yet.
//!
//! The queue holds frames encoded for one connection ([`OutQueue::push_frame`]) and runs of a
//! frame that many messages share ([`Strip`]): queueing `n` copies of a pre-encoded,
//! pre-masked frame costs a counter, not a copy, and the copies leave straight from the strip
//! in one vectored write. Everything leaves in the order it was queued, and the queue always
//! ends at a frame boundary, so any frame (a pong, a close) can be appended at any time.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use wsloop_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use wsloop_proto::mask::apply_mask;

use super::decoder::RSV1;

/// Most slices handed to one vectored write.
pub const MAX_IOV: usize = 64;

/// Appends one masked, unfragmented client frame: header, then `payload` masked with `key`;
/// RSV1 set when `compressed` (a permessage-deflate message).
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    compressed: bool,
    payload: &[u8],
    key: [u8; 4],
) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin: true,
        rsv: if compressed { RSV1 } else { 0 },
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    }
    .encode(&mut head);
    out.extend_from_slice(head.get(..n).unwrap_or_default());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(tail) = out.get_mut(start..) {
        apply_mask(tail, key, 0);
    }
}

/// One masked frame, repeated back to back: the messages of a run that all carry the same
/// payload share it, so sending one costs nothing per message.
#[derive(Debug)]
pub struct Strip {
    bytes: Box<[u8]>,
    frame_len: usize,
}

impl Strip {
    /// `copies` (at least one) of `frame`, back to back.
    pub fn new(frame: &[u8], copies: usize) -> Strip {
        Strip {
            bytes: frame.repeat(copies.max(1)).into_boxed_slice(),
            frame_len: frame.len(),
        }
    }

    /// Bytes of one frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Every copy, back to back.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A run of queued bytes.
#[derive(Debug)]
enum Chunk {
    /// Frames encoded for this connection.
    Owned(Vec<u8>),
    /// `frames` copies of a strip's frame.
    Repeat { strip: Rc<Strip>, frames: usize },
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Owned(bytes) => bytes.len(),
            Chunk::Repeat { strip, frames } => strip.frame_len * frames,
        }
    }
}

/// The bytes a connection has queued and the socket has not taken, in order.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes queued and not written yet.
    queued: usize,
}

impl OutQueue {
    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Bytes queued and not written yet.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Lets `encode` append whole frames to the queue; returns how many bytes it added.
    pub fn push_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> usize {
        if !matches!(self.chunks.back(), Some(Chunk::Owned(_))) {
            self.chunks.push_back(Chunk::Owned(Vec::new()));
        }
        let Some(Chunk::Owned(tail)) = self.chunks.back_mut() else {
            return 0;
        };
        let before = tail.len();
        encode(tail);
        let added = tail.len() - before;
        self.queued += added;
        added
    }

    /// Queues one masked frame ([`encode_frame`]); returns its bytes on the wire.
    pub fn push_frame(
        &mut self,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
        key: [u8; 4],
    ) -> usize {
        self.push_with(|out| {
            out.reserve(MAX_HEADER_LEN + payload.len());
            encode_frame(out, opcode, compressed, payload, key);
        })
    }

    /// Queues `frames` copies of `strip`'s frame.
    pub fn push_strip(&mut self, strip: &Rc<Strip>, frames: usize) {
        if frames == 0 {
            return;
        }
        self.queued += strip.frame_len * frames;
        if let Some(Chunk::Repeat {
            strip: last,
            frames: n,
        }) = self.chunks.back_mut()
        {
            if Rc::ptr_eq(last, strip) {
                *n += frames;
                return;
            }
        }
        self.chunks.push_back(Chunk::Repeat {
            strip: Rc::clone(strip),
            frames,
        });
    }

    /// The queued bytes when they are one run of a connection's own frames (the usual case
    /// outside `echo`): they need no vector of slices.
    pub fn contiguous(&self) -> Option<&[u8]> {
        match (self.chunks.front(), self.chunks.len()) {
            (Some(Chunk::Owned(bytes)), 1) => bytes.get(self.head..),
            _ => None,
        }
    }

    /// Fills `iov` with the queued bytes, oldest first; returns how many slices it used.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut used = 0;
        let mut skip = self.head;
        for chunk in &self.chunks {
            let Some(free) = iov.get_mut(used..) else {
                break;
            };
            used += match chunk {
                Chunk::Owned(bytes) => fill(free, bytes.get(skip..).unwrap_or_default()),
                Chunk::Repeat { strip, frames } => {
                    fill_repeat(free, strip, strip.frame_len * frames - skip, skip)
                }
            };
            skip = 0;
        }
        used
    }

    /// Drops the `written` bytes the socket took from the front.
    pub fn advance(&mut self, mut written: usize) {
        self.queued -= written.min(self.queued);
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.head;
            if written < left {
                self.head += written;
                return;
            }
            written -= left;
            self.head = 0;
            self.chunks.pop_front();
        }
    }
}

/// Puts `bytes` (when not empty) in the first slot of `iov`; returns the slots used.
fn fill<'a>(iov: &mut [IoSlice<'a>], bytes: &'a [u8]) -> usize {
    match iov.first_mut() {
        Some(slot) if !bytes.is_empty() => {
            *slot = IoSlice::new(bytes);
            1
        }
        _ => 0,
    }
}

/// Fills `iov` with the last `left` bytes of a run of copies, of which `done` bytes are
/// written: the first slice starts mid-strip (where the next frame byte is), the others at
/// its start. Returns the slots used.
fn fill_repeat<'a>(
    iov: &mut [IoSlice<'a>],
    strip: &'a Strip,
    mut left: usize,
    done: usize,
) -> usize {
    let mut pos = done % strip.frame_len.max(1);
    let mut used = 0;
    for slot in iov.iter_mut() {
        let end = strip.bytes.len().min(pos + left);
        let chunk = strip.bytes.get(pos..end).unwrap_or_default();
        if chunk.is_empty() {
            break;
        }
        *slot = IoSlice::new(chunk);
        used += 1;
        left -= chunk.len();
        pos = 0;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes everything through slices of at most `limit` bytes per call; returns the bytes.
    fn drain(queue: &mut OutQueue, limit: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !queue.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = queue.slices(&mut iov);
            assert!(n > 0);
            let mut took = 0;
            for slice in &iov[..n] {
                let take = slice.len().min(limit - took);
                wire.extend_from_slice(&slice[..take]);
                took += take;
                if took == limit {
                    break;
                }
            }
            queue.advance(took);
        }
        wire
    }

    #[test]
    fn owned_and_shared_frames_leave_in_order_whatever_the_socket_takes() {
        let strip = Rc::new(Strip::new(b"ABCDE", 3));
        let other = Rc::new(Strip::new(b"xy", 2));
        for limit in [1, 2, 3, 4, 7, 11, 1 << 20] {
            let mut queue = OutQueue::default();
            queue.push_with(|out| out.extend_from_slice(b"head"));
            queue.push_strip(&strip, 4);
            queue.push_strip(&strip, 3);
            assert_eq!(queue.push_with(|out| out.extend_from_slice(b"-pong-")), 6);
            queue.push_strip(&other, 3);
            queue.push_strip(&strip, 1);
            assert_eq!(queue.len(), 4 + 35 + 6 + 6 + 5);
            let expected = [
                &b"head"[..],
                &b"ABCDE".repeat(7),
                b"-pong-",
                b"xyxyxy",
                b"ABCDE",
            ]
            .concat();
            assert_eq!(drain(&mut queue, limit), expected, "limit {limit}");
            assert_eq!(queue.chunks.len(), 0);
        }
    }

    #[test]
    fn copies_of_one_strip_merge_and_stay_within_one_writev() {
        let strip = Rc::new(Strip::new(b"0123456789", 4));
        let mut queue = OutQueue::default();
        queue.push_strip(&strip, 10);
        queue.push_strip(&strip, 10);
        assert_eq!(queue.chunks.len(), 1, "one run");
        queue.advance(13);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = queue.slices(&mut iov);
        // 187 bytes left from the 4th byte of a frame: a strip's tail, then whole strips.
        assert_eq!(&iov[0][..], &b"3456789012345678901234567890123456789"[..]);
        assert_eq!(iov[..n].iter().map(|s| s.len()).sum::<usize>(), 187);
    }

    #[test]
    fn encoded_frames_pass_the_servers_decoder() {
        use wsloop_proto::decoder::{Decoder, Event, Limits, Outcome};
        use wsloop_proto::BufferPool;
        let mut wire = Vec::new();
        let text = "hello 你好 😀".repeat(40);
        encode_frame(
            &mut wire,
            OpCode::Text,
            false,
            text.as_bytes(),
            [1, 2, 3, 4],
        );
        encode_frame(
            &mut wire,
            OpCode::Close,
            false,
            &1000u16.to_be_bytes(),
            [5, 6, 7, 8],
        );
        let mut dec = Decoder::new();
        let limits = Limits::default();
        let mut pool = BufferPool::default();
        let mut events = Vec::new();
        let mut rest: &mut [u8] = &mut wire;
        while !rest.is_empty() {
            let decoded = dec.decode(&limits, &mut pool, rest);
            match decoded.outcome {
                Outcome::Event(Event::Message(_, payload)) => {
                    events.push(format!("msg {}", payload.bytes(rest).len()))
                }
                Outcome::Event(Event::Close { code, .. }) => events.push(format!("close {code:?}")),
                Outcome::Event(other) => events.push(format!("{other:?}")),
                Outcome::NeedMore => {}
                Outcome::Error(e) => panic!("{e:?}"),
            }
            rest = &mut rest[decoded.consumed..];
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], format!("msg {}", text.len()));
        assert!(events[1].starts_with("close"), "{events:?}");
    }
}
