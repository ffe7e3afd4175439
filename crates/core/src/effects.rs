//! What the core asks of the world outside it.
//!
//! The core does no I/O. Whenever a gfn leaves a partition's guest physical space (a
//! balloon, a withdraw, a decrease_reservation, a partition's teardown) it records a
//! discard of that gfn; the host applies discards to the partition's backing memory, so a
//! gfn mapped again later reads zero, whichever frame backs it.

use crate::{Gfn, PartitionId};

/// The one gfn range type of ballast (checked: it never passes the gfn limit).
pub use ballast_abi::types::GfnRange;

/// An action the host must carry out for the core.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Effect {
    /// The gfns left the partition's guest physical space, or stayed and gave up their
    /// contents (a cold discard hint): release their backing bytes.
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
        from: Gfn,
        /// Its new gfn.
        to: Gfn,
    },
}

impl Effect {
    /// True if this is a discard of `gfn` in `partition`'s guest space.
    pub fn discards(&self, partition: PartitionId, gfn: Gfn) -> bool {
        matches!(self, Effect::Discard { partition: p, range }
            if *p == partition && range.contains(gfn))
    }
}

/// Effects in the order they happened, with consecutive discards of neighbouring gfns of
/// one partition merged into one range.
#[derive(Debug, Clone, Default)]
pub(crate) struct Effects {
    queue: Vec<Effect>,
}

impl Effects {
    /// Records that `count` gfns from `gfn` left `partition`'s guest space.
    ///
    /// # Panics
    /// If the gfns pass the gfn limit. The core never asks that: it discards only gfns it
    /// had mapped (its p2m refuses gfns from the limit up) and root frames (32-bit mfns).
    #[inline]
    pub(crate) fn discard(&mut self, partition: PartitionId, gfn: Gfn, count: u64) {
        let new = GfnRange::new(gfn, count)
            .expect("the core discards only gfns below the gfn limit (p2m and mfn ranges)");
        if let Some(Effect::Discard {
            partition: p,
            range,
        }) = self.queue.last_mut()
        {
            // Neighbours merge into their hull, which is their union since they touch.
            if *p == partition && (range.end() == new.start() || new.end() == range.start()) {
                *range = range.hull(&new);
                return;
            }
        }
        self.queue.push(Effect::Discard {
            partition,
            range: new,
        });
    }

    /// Records that the page at `from` moved to `to` in `partition`'s guest space.
    pub(crate) fn moved(&mut self, partition: PartitionId, from: Gfn, to: Gfn) {
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
                    range: GfnRange::new(8, 5).unwrap()
                },
                Effect::Discard {
                    partition: PartitionId(4),
                    range: GfnRange::new(13, 1).unwrap()
                },
                Effect::Discard {
                    partition: PartitionId(3),
                    range: GfnRange::new(20, 2).unwrap()
                },
            ]
        );
        assert!(e.pending().is_empty());
    }
}
