//! What the core asks of the world outside it.
//!
//! The core does no I/O. Whenever a gfn leaves a partition's guest physical space (a
//! balloon, a withdraw, a decrease_reservation, a partition's teardown) it records a
//! discard of that gfn; the host applies discards to the partition's backing memory, so a
//! gfn mapped again later reads zero, whichever frame backs it.

use crate::PartitionId;

/// A run of guest frame numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GfnRange {
    /// First gfn.
    pub start: u64,
    /// Number of gfns.
    pub count: u64,
}

impl GfnRange {
    /// One past the last gfn.
    pub const fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// An action the host must carry out for the core.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The gfns left the partition's guest physical space: release their backing bytes.
    Discard {
        /// Whose guest space.
        partition: PartitionId,
        /// Which gfns.
        range: GfnRange,
    },
    /// The page at gfn `from` now lives at gfn `to` of the same partition (Xen
    /// `add_to_physmap` of a gmfn): its bytes must follow it. Recorded after the discard of
    /// whatever was at `to` and before the discard of `from`, so applying effects in order
    /// copies the page and then releases its old place.
    Move {
        /// Whose guest space.
        partition: PartitionId,
        /// The page's old gfn.
        from: u64,
        /// Its new gfn.
        to: u64,
    },
}

impl Effect {
    /// True if this is a discard of `gfn` in `partition`'s guest space.
    pub fn discards(&self, partition: PartitionId, gfn: u64) -> bool {
        matches!(self, Effect::Discard { partition: p, range }
            if *p == partition && range.start <= gfn && gfn < range.end())
    }
}

/// Effects in the order they happened, with consecutive discards of neighbouring gfns of
/// one partition merged into one range.
#[derive(Debug, Clone, Default)]
pub(crate) struct Effects {
    queue: Vec<Effect>,
}

impl Effects {
    /// Records that `gfn` left `partition`'s guest space.
    #[inline]
    pub(crate) fn discard(&mut self, partition: PartitionId, gfn: u64, count: u64) {
        if let Some(Effect::Discard {
            partition: p,
            range,
        }) = self.queue.last_mut()
        {
            if *p == partition {
                if range.end() == gfn {
                    range.count += count;
                    return;
                }
                if gfn + count == range.start {
                    range.start = gfn;
                    range.count += count;
                    return;
                }
            }
        }
        self.queue.push(Effect::Discard {
            partition,
            range: GfnRange { start: gfn, count },
        });
    }

    /// Records that the page at `from` moved to `to` in `partition`'s guest space.
    pub(crate) fn moved(&mut self, partition: PartitionId, from: u64, to: u64) {
        self.queue.push(Effect::Move {
            partition,
            from,
            to,
        });
    }

    /// Takes every recorded effect, oldest first.
    pub(crate) fn take(&mut self) -> Vec<Effect> {
        core::mem::take(&mut self.queue)
    }

    /// The recorded effects, oldest first.
    pub(crate) fn pending(&self) -> &[Effect] {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_merge_both_ways() {
        let mut e = Effects::default();
        for g in [10, 11, 12, 9, 8] {
            e.discard(PartitionId(3), g, 1);
        }
        e.discard(PartitionId(4), 13, 1);
        e.discard(PartitionId(3), 20, 2);
        assert_eq!(
            e.take(),
            vec![
                Effect::Discard {
                    partition: PartitionId(3),
                    range: GfnRange { start: 8, count: 5 }
                },
                Effect::Discard {
                    partition: PartitionId(4),
                    range: GfnRange {
                        start: 13,
                        count: 1
                    }
                },
                Effect::Discard {
                    partition: PartitionId(3),
                    range: GfnRange {
                        start: 20,
                        count: 2
                    }
                },
            ]
        );
        assert!(e.pending().is_empty());
    }
}
