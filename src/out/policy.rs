//! Slow consumers: who is one, and what a publication does to one (its room's policy). The
//! policies that take frames out again work on the queues beside them, keeping their counts.

use crate::pubsub::rooms::RoomPolicy;

use super::{Budget, ConnOut, Outbox};

/// What a publication does for a slow receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Queue the new frame (`dropped` older frames of the room made way for it).
    Queue {
        /// Frames dropped.
        dropped: usize,
    },
    /// Do not queue it (it is the one frame dropped).
    Skip,
    /// Close the receiver with 1008.
    Close,
}

impl Verdict {
    /// Frames this verdict drops.
    pub(crate) fn dropped(self) -> usize {
        match self {
            Verdict::Queue { dropped } => dropped,
            Verdict::Skip => 1,
            Verdict::Close => 0,
        }
    }
}

impl ConnOut {
    /// Whether it is a slow consumer: its socket refused more than `limit` bytes besides the
    /// frame it is in the middle of receiving ([`super::OutQueue::behind_front`]). Output
    /// produced this turn does not count (the socket has not been offered it yet), nor does
    /// one message larger than `limit` that a reader keeping up is still taking in.
    pub(crate) fn is_slow(&self, limit: usize) -> bool {
        self.queue.behind_front() > limit
    }

    /// A publication of `room` (0: a broadcast) meets this slow receiver (`key`): applies
    /// `policy`. `own_stream`: it compresses with its own context, whose stream cannot lose a
    /// frame once sent, so a policy that drops queued frames drops the new one instead.
    pub(crate) fn police(
        &mut self,
        key: usize,
        budget: &mut Budget,
        outbox: &mut Outbox,
        room: u32,
        policy: RoomPolicy,
        own_stream: bool,
    ) -> Verdict {
        let policy = if own_stream && policy.drops_queued() {
            RoomPolicy::DropNewest
        } else {
            policy
        };
        match policy {
            RoomPolicy::Close => Verdict::Close,
            RoomPolicy::DropOldest if room != 0 => {
                match self.drop_older(key, budget, outbox, room, false) {
                    0 => Verdict::Skip,
                    older => Verdict::Queue { dropped: older },
                }
            }
            RoomPolicy::LatestOnly if room != 0 => Verdict::Queue {
                dropped: self.drop_older(key, budget, outbox, room, true),
            },
            _ => Verdict::Skip,
        }
    }

    /// Takes unsent whole frames of `room` out — the oldest (queued first, else from this
    /// turn), or all of them — and returns how many. Nothing is searched for frames that are
    /// not there, and this turn's are found without a scan (see
    /// [`super::OutQueue::drop_room_frames`] and [`Outbox::drop_policed`]).
    fn drop_older(
        &mut self,
        key: usize,
        budget: &mut Budget,
        outbox: &mut Outbox,
        room: u32,
        all: bool,
    ) -> usize {
        let before = self.queue.footprint();
        let (mut frames, _) = self.queue.drop_room_frames(room, all);
        budget.change(before, self.queue.footprint());
        if all || frames == 0 {
            let (this_turn, bytes) = outbox.drop_policed(key, room, all);
            self.corked = self
                .corked
                .saturating_sub(u32::try_from(bytes).unwrap_or(u32::MAX));
            frames += this_turn;
        }
        frames
    }
}
