//! A partition's physical-to-machine map: gfn → mfn.
//!
//! A four-level radix tree over 40-bit gfns (13 + 9 + 9 + 9 bits), allocated as it is
//! touched, with 2 KiB leaves of 512 u32 entries (one leaf maps 2 MiB of guest memory).
//! 40 bits is the Dynamic Memory page range's limit and 4 PiB of guest space; larger gfns
//! are refused by the callers.

use crate::Mfn;
use crate::frame::NO_FRAME;

/// Gfns are below this.
pub const GFN_LIMIT: u64 = 1 << 40;

const LEAF_BITS: u32 = 9;
const MID_BITS: u32 = 9;
const TOP_BITS: u32 = 40 - LEAF_BITS - 2 * MID_BITS;
const FAN: usize = 1 << MID_BITS;

/// A table node and how many of its slots are in use, so empty nodes are freed: a guest
/// mapping and unmapping one page at a stride must not leave a trail of empty tables.
#[derive(Debug, Clone)]
struct Node<T> {
    slots: T,
    used: u32,
}

type Leaf = Node<[Mfn; 1 << LEAF_BITS]>;
type L3 = Node<[Option<Box<Leaf>>; FAN]>;
type L2 = Node<[Option<Box<L3>>; FAN]>;

/// gfn → mfn for one partition.
#[derive(Debug, Clone)]
pub struct P2m {
    top: Vec<Option<Box<L2>>>,
    /// Emptied tables kept for reuse (a few of each): a guest ballooning one 2 MiB region
    /// in and out would otherwise free and allocate the same tables every time.
    spare: Spares,
    mapped: u64,
    /// The highest gfn ever mapped (Xen's `max_mapped_pfn`: it never shrinks).
    max_mapped: Option<u64>,
}

impl Default for P2m {
    fn default() -> Self {
        Self::new()
    }
}

/// Emptied tables: every slot is already empty, so they are reused as they are.
// The boxes are the point: a spare moves back into the tree without copying kilobytes.
#[allow(clippy::vec_box)]
#[derive(Debug, Clone, Default)]
struct Spares {
    leaves: Vec<Box<Leaf>>,
    l3: Vec<Box<L3>>,
    l2: Vec<Box<L2>>,
}

const MAX_SPARES: usize = 4;

fn keep<T>(spares: &mut Vec<Box<T>>, node: Box<T>) {
    if spares.len() < MAX_SPARES {
        spares.push(node);
    }
}

#[inline]
fn split(gfn: u64) -> (usize, usize, usize, usize) {
    (
        (gfn >> (LEAF_BITS + 2 * MID_BITS)) as usize,
        (gfn >> (LEAF_BITS + MID_BITS)) as usize & (FAN - 1),
        (gfn >> LEAF_BITS) as usize & (FAN - 1),
        gfn as usize & ((1 << LEAF_BITS) - 1),
    )
}

impl P2m {
    /// An empty map.
    pub fn new() -> Self {
        P2m {
            top: (0..1usize << TOP_BITS).map(|_| None).collect(),
            spare: Spares::default(),
            mapped: 0,
            max_mapped: None,
        }
    }

    /// Number of mapped gfns.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// The highest gfn ever mapped.
    pub fn max_mapped(&self) -> Option<u64> {
        self.max_mapped
    }

    /// The frame at `gfn`, if mapped.
    #[inline]
    pub fn get(&self, gfn: u64) -> Option<Mfn> {
        if gfn >= GFN_LIMIT {
            return None;
        }
        let (a, b, c, d) = split(gfn);
        let m = self.top[a].as_ref()?.slots[b].as_ref()?.slots[c]
            .as_ref()?
            .slots[d];
        (m != NO_FRAME).then_some(m)
    }

    /// Maps `gfn` to `mfn`; returns the frame that was there.
    ///
    /// # Panics
    /// If `gfn >= GFN_LIMIT`: callers check guest-supplied gfns first.
    #[inline]
    pub fn set(&mut self, gfn: u64, mfn: Mfn) -> Option<Mfn> {
        assert!(gfn < GFN_LIMIT, "gfn {gfn:#x} beyond the p2m");
        debug_assert!(mfn != NO_FRAME);
        let (a, b, c, d) = split(gfn);
        let spare = &mut self.spare;
        let l2 = self.top[a].get_or_insert_with(|| {
            spare.l2.pop().unwrap_or_else(|| {
                Box::new(Node {
                    slots: [const { None }; FAN],
                    used: 0,
                })
            })
        });
        if l2.slots[b].is_none() {
            l2.used += 1;
        }
        let l3 = l2.slots[b].get_or_insert_with(|| {
            spare.l3.pop().unwrap_or_else(|| {
                Box::new(Node {
                    slots: [const { None }; FAN],
                    used: 0,
                })
            })
        });
        if l3.slots[c].is_none() {
            l3.used += 1;
        }
        let leaf = l3.slots[c].get_or_insert_with(|| {
            spare.leaves.pop().unwrap_or_else(|| {
                Box::new(Node {
                    slots: [NO_FRAME; 1 << LEAF_BITS],
                    used: 0,
                })
            })
        });
        let old = core::mem::replace(&mut leaf.slots[d], mfn);
        if old == NO_FRAME {
            leaf.used += 1;
            self.mapped += 1;
        }
        self.max_mapped = Some(self.max_mapped.map_or(gfn, |m| m.max(gfn)));
        (old != NO_FRAME).then_some(old)
    }

    /// Maps `gfn` to `mfn` if it is unmapped and returns `None`; otherwise changes
    /// nothing and returns the frame that is there. One walk where `get` then `set` take
    /// two.
    #[inline]
    pub fn set_if_empty(&mut self, gfn: u64, mfn: Mfn) -> Option<Mfn> {
        match self.set(gfn, mfn) {
            None => None,
            Some(old) => {
                // Put the old frame back: `set` replaced it.
                self.set(gfn, old);
                Some(old)
            }
        }
    }

    /// Unmaps `gfn`; returns the frame that was there.
    #[inline]
    pub fn remove(&mut self, gfn: u64) -> Option<Mfn> {
        if gfn >= GFN_LIMIT {
            return None;
        }
        let (a, b, c, d) = split(gfn);
        let l2 = self.top[a].as_mut()?;
        let l3 = l2.slots[b].as_mut()?;
        let leaf = l3.slots[c].as_mut()?;
        let old = core::mem::replace(&mut leaf.slots[d], NO_FRAME);
        if old == NO_FRAME {
            return None;
        }
        self.mapped -= 1;
        leaf.used -= 1;
        if leaf.used == 0 {
            if let Some(t) = l3.slots[c].take() {
                keep(&mut self.spare.leaves, t);
            }
            l3.used -= 1;
            if l3.used == 0 {
                if let Some(t) = l2.slots[b].take() {
                    keep(&mut self.spare.l3, t);
                }
                l2.used -= 1;
                if l2.used == 0 {
                    if let Some(t) = self.top[a].take() {
                        keep(&mut self.spare.l2, t);
                    }
                }
            }
        }
        Some(old)
    }

    /// The mapped gfns as maximal runs `(start, count)`, in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        self.for_each(|gfn, _| match out.last_mut() {
            Some((s, c)) if *s + *c == gfn => *c += 1,
            _ => out.push((gfn, 1)),
        });
        out
    }

    /// Every mapping, in gfn order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Mfn)> + '_ {
        let mut out = Vec::with_capacity(self.mapped as usize);
        self.for_each(|g, m| out.push((g, m)));
        out.into_iter()
    }

    /// The first `limit` maximal runs of mapped gfns, `(start, count)`, in order; stops
    /// walking as soon as it has them, so a guest-driven query costs what it returns.
    pub fn ranges_up_to(&self, limit: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let _ = self.try_for_each(|gfn, _| {
            if let Some((s, c)) = out.last_mut() {
                if *s + *c == gfn {
                    *c += 1;
                    return core::ops::ControlFlow::Continue(());
                }
            }
            if out.len() == limit {
                return core::ops::ControlFlow::Break(());
            }
            out.push((gfn, 1));
            core::ops::ControlFlow::Continue(())
        });
        out
    }

    /// Calls `f` for every mapping, in gfn order.
    pub fn for_each(&self, mut f: impl FnMut(u64, Mfn)) {
        let _ = self.try_for_each(|g, m| {
            f(g, m);
            core::ops::ControlFlow::<()>::Continue(())
        });
    }

    /// Calls `f` for every mapping, in gfn order, until it breaks.
    pub fn try_for_each<B>(
        &self,
        mut f: impl FnMut(u64, Mfn) -> core::ops::ControlFlow<B>,
    ) -> core::ops::ControlFlow<B> {
        for (a, l2) in self.top.iter().enumerate() {
            let Some(l2) = l2 else { continue };
            for (b, l3) in l2.slots.iter().enumerate() {
                let Some(l3) = l3 else { continue };
                for (c, leaf) in l3.slots.iter().enumerate() {
                    let Some(leaf) = leaf else { continue };
                    let base = ((a as u64) << (LEAF_BITS + 2 * MID_BITS))
                        | ((b as u64) << (LEAF_BITS + MID_BITS))
                        | ((c as u64) << LEAF_BITS);
                    for (d, &m) in leaf.slots.iter().enumerate() {
                        if m != NO_FRAME {
                            f(base | d as u64, m)?;
                        }
                    }
                }
            }
        }
        core::ops::ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn set_get_remove() {
        let mut p = P2m::new();
        assert_eq!(p.set(5, 100), None);
        assert_eq!(p.set(GFN_LIMIT - 1, 7), None);
        assert_eq!(p.set(5, 101), Some(100));
        assert_eq!(p.get(5), Some(101));
        assert_eq!(p.get(6), None);
        assert_eq!(p.get(GFN_LIMIT), None);
        assert_eq!(p.mapped(), 2);
        assert_eq!(p.remove(5), Some(101));
        assert_eq!(p.remove(5), None);
        assert_eq!(p.max_mapped(), Some(GFN_LIMIT - 1));
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![(GFN_LIMIT - 1, 7)]);
        p.set(1, 1);
        p.set(2, 2);
        p.set(9, 3);
        assert_eq!(p.ranges_up_to(1), vec![(1, 2)]);
        assert_eq!(p.ranges_up_to(5), vec![(1, 2), (9, 1), (GFN_LIMIT - 1, 1)]);
        p.remove(1);
        p.remove(2);
        p.remove(9);
        assert_eq!(p.remove(GFN_LIMIT - 1), Some(7));
        assert!(p.top.iter().all(Option::is_none), "empty tables are freed");
        // Emptied tables are kept and reused, already empty.
        assert!(!p.spare.leaves.is_empty());
        p.set(3, 3);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![(3, 3)]);
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u64..4096, 0u32..1000), 0..300), high in any::<u64>()) {
            let mut p = P2m::new();
            let mut m = BTreeMap::new();
            let spread = |g: u64| ((g * 0x9E37_79B9) ^ high) % GFN_LIMIT;
            for (set, g, v) in ops {
                let g = spread(g);
                if set {
                    prop_assert_eq!(p.set(g, v), m.insert(g, v));
                } else {
                    prop_assert_eq!(p.remove(g), m.remove(&g));
                }
            }
            prop_assert_eq!(p.mapped(), m.len() as u64);
            prop_assert_eq!(p.iter().collect::<Vec<_>>(), m.into_iter().collect::<Vec<_>>());
        }
    }
}
