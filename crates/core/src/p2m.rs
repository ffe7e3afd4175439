//! A partition's physical-to-machine map: gfn → mfn.
//!
//! A four-level radix tree over 40-bit gfns (13 + 9 + 9 + 9 bits), allocated as it is
//! touched, with 2 KiB leaves of 512 u32 entries (one leaf maps 2 MiB of guest memory).
//! 40 bits is the Dynamic Memory page range's limit and 4 PiB of guest space; larger gfns
//! are refused by the callers, and each partition has its own, lower guest-physical
//! limit (the size of its backing memory) that the callers check as well.
//!
//! An entry is empty, a frame, or a populate-on-demand entry ([`POD_ENTRY`]): a gfn the
//! guest may touch, backed only when it does (Xen's `p2m_populate_on_demand` type).
//! PoD entries are not frames: [`P2m::get`], the iterators and [`P2m::mapped`] skip them.
//!
//! The tables are host heap the partition makes the host spend, so they are counted
//! ([`P2m::table_bytes`]) and the callers charge them to a per-partition budget before
//! mapping ([`P2m::new_table_bytes`]): a guest populating one page every 2^18 gfns would
//! otherwise cost the host some 6 KiB of tables per 4 KiB page.

use crate::Mfn;
use crate::frame::NO_FRAME;

/// Gfns are below this (2^40: the vocabulary's limit, which the tree's 40 bits match).
pub use ballast_abi::types::GFN_LIMIT;

/// The entry value of a populate-on-demand gfn. Never a frame: the frame table holds at
/// most 2^32 - 2 frames, so MFNs stop below `NO_FRAME - 1`.
pub const POD_ENTRY: Mfn = NO_FRAME - 1;

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
    /// Children whose every slot is in use (for a leaf: unused). Kept so that a range
    /// query skips a full 1 GiB or 512 GiB subtree in one step.
    full: u32,
}

type Leaf = Node<[Mfn; 1 << LEAF_BITS]>;
type L3 = Node<[Option<Box<Leaf>>; FAN]>;
type L2 = Node<[Option<Box<L3>>; FAN]>;

/// Host heap bytes of one leaf table.
pub const LEAF_BYTES: u64 = core::mem::size_of::<Leaf>() as u64;
/// Host heap bytes of one inner table.
pub const NODE_BYTES: u64 = core::mem::size_of::<L3>() as u64;
/// The most one gfn's mapping can allocate: a leaf and two inner tables.
pub const MAX_BYTES_PER_GFN: u64 = LEAF_BYTES + 2 * NODE_BYTES;

#[inline]
fn is_frame(m: Mfn) -> bool {
    m < POD_ENTRY
}

/// gfn → mfn for one partition.
#[derive(Debug, Clone)]
pub struct P2m {
    top: Vec<Option<Box<L2>>>,
    /// Emptied tables kept for reuse (a few of each): a guest ballooning one 2 MiB region
    /// in and out would otherwise free and allocate the same tables every time.
    spare: Spares,
    mapped: u64,
    /// PoD entries.
    pod: u64,
    /// Bytes of the leaf and inner tables, in the tree or spare (the fixed top level is
    /// not counted: every partition has it).
    table_bytes: u64,
    /// The highest gfn ever mapped or marked PoD (Xen's `max_mapped_pfn`: it never
    /// shrinks).
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

/// Keeps an emptied table as a spare, or frees it and uncounts its bytes.
fn keep<T>(spares: &mut Vec<Box<T>>, node: Box<T>, table_bytes: &mut u64) {
    if spares.len() < MAX_SPARES {
        spares.push(node);
    } else {
        *table_bytes -= core::mem::size_of::<T>() as u64;
    }
}

/// An inner table whose slots hold tables of type `C`.
type Inner<C> = Node<[Option<Box<C>>; FAN]>;

/// The inner table in `slot`, made (from a spare, or new and counted) if missing.
// The boxes are the tree's own: a spare moves back in without copying kilobytes.
#[allow(clippy::vec_box)]
fn inner<'a, C>(
    slot: &'a mut Option<Box<Inner<C>>>,
    spares: &mut Vec<Box<Inner<C>>>,
    bytes: &mut u64,
) -> &'a mut Inner<C> {
    slot.get_or_insert_with(|| {
        spares.pop().unwrap_or_else(|| {
            *bytes += NODE_BYTES;
            Box::new(Node {
                slots: [const { None }; FAN],
                used: 0,
                full: 0,
            })
        })
    })
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
            pod: 0,
            table_bytes: 0,
            max_mapped: None,
        }
    }

    /// Number of mapped gfns (frames; PoD entries are not counted).
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Number of populate-on-demand entries.
    pub fn pod_entries(&self) -> u64 {
        self.pod
    }

    /// Host heap bytes of the tables, in the tree or kept spare.
    pub fn table_bytes(&self) -> u64 {
        self.table_bytes
    }

    /// Bytes of new tables that entries at every gfn of `start .. start + count` would
    /// allocate, after the spares are reused. `start + count <= GFN_LIMIT`.
    pub fn new_table_bytes(&self, start: u64, count: u64) -> u64 {
        if count == 0 {
            return 0;
        }
        let end = start + count;
        let (mut leaves, mut l3s, mut l2s) = (0u64, 0u64, 0u64);
        // One step per leaf-sized window: the walk is as long as the request / 512.
        let mut g = start;
        while g < end {
            let (a, b, c, _) = split(g);
            let l2 = self.top[a].as_ref();
            let l3 = l2.and_then(|t| t.slots[b].as_ref());
            let leaf = l3.and_then(|t| t.slots[c].as_ref());
            let first_of = |bits: u32| g == start || g & ((1 << bits) - 1) == 0;
            if l2.is_none() && first_of(LEAF_BITS + 2 * MID_BITS) {
                l2s += 1;
            }
            if l3.is_none() && first_of(LEAF_BITS + MID_BITS) {
                l3s += 1;
            }
            if leaf.is_none() {
                leaves += 1;
            }
            g = (g | ((1 << LEAF_BITS) - 1)) + 1;
        }
        let sp = &self.spare;
        leaves.saturating_sub(sp.leaves.len() as u64) * LEAF_BYTES
            + l3s.saturating_sub(sp.l3.len() as u64) * NODE_BYTES
            + l2s.saturating_sub(sp.l2.len() as u64) * NODE_BYTES
    }

    /// [`new_table_bytes`](Self::new_table_bytes) of one gfn.
    #[inline]
    pub fn new_table_bytes_one(&self, gfn: u64) -> u64 {
        self.new_table_bytes(gfn, 1)
    }

    /// The highest gfn ever mapped or marked PoD.
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
        is_frame(m).then_some(m)
    }

    /// Whether `gfn` is a populate-on-demand entry.
    #[inline]
    pub fn is_pod(&self, gfn: u64) -> bool {
        self.raw(gfn) == POD_ENTRY
    }

    /// The entry at `gfn`: a frame, [`POD_ENTRY`] or `NO_FRAME`.
    #[inline]
    fn raw(&self, gfn: u64) -> Mfn {
        if gfn >= GFN_LIMIT {
            return NO_FRAME;
        }
        let (a, b, c, d) = split(gfn);
        let Some(l2) = self.top[a].as_ref() else {
            return NO_FRAME;
        };
        let Some(l3) = l2.slots[b].as_ref() else {
            return NO_FRAME;
        };
        let Some(leaf) = l3.slots[c].as_ref() else {
            return NO_FRAME;
        };
        leaf.slots[d]
    }

    /// Maps `gfn` to `mfn`; returns the frame that was there. A PoD entry there is
    /// replaced (as Xen's `guest_physmap_add_entry` replaces them) and uncounted.
    ///
    /// # Panics
    /// If `gfn >= GFN_LIMIT`: callers check guest-supplied gfns first.
    #[inline]
    pub(crate) fn set(&mut self, gfn: u64, mfn: Mfn) -> Option<Mfn> {
        debug_assert!(is_frame(mfn));
        let old = self.put(gfn, mfn);
        if !is_frame(old) {
            self.mapped += 1;
            if old == POD_ENTRY {
                self.pod -= 1;
            }
        }
        self.max_mapped = Some(self.max_mapped.map_or(gfn, |m| m.max(gfn)));
        is_frame(old).then_some(old)
    }

    /// Makes `gfn` a PoD entry if it holds no frame; returns the frame that is there
    /// otherwise, changing nothing.
    pub(crate) fn set_pod(&mut self, gfn: u64) -> Option<Mfn> {
        let old = self.put(gfn, POD_ENTRY);
        if is_frame(old) {
            self.put(gfn, old);
            return Some(old);
        }
        if old == NO_FRAME {
            self.pod += 1;
        }
        // Xen's max_mapped_pfn follows every p2m entry written, PoD ones included.
        self.max_mapped = Some(self.max_mapped.map_or(gfn, |m| m.max(gfn)));
        None
    }

    /// Writes an entry, allocating its tables; returns the old entry.
    #[inline]
    fn put(&mut self, gfn: u64, entry: Mfn) -> Mfn {
        assert!(gfn < GFN_LIMIT, "gfn {gfn:#x} beyond the p2m");
        debug_assert!(entry != NO_FRAME);
        let (a, b, c, d) = split(gfn);
        let spare = &mut self.spare;
        let bytes = &mut self.table_bytes;
        let l2 = inner(&mut self.top[a], &mut spare.l2, bytes);
        if l2.slots[b].is_none() {
            l2.used += 1;
        }
        let l3 = inner(&mut l2.slots[b], &mut spare.l3, bytes);
        if l3.slots[c].is_none() {
            l3.used += 1;
        }
        let leaf = l3.slots[c].get_or_insert_with(|| {
            spare.leaves.pop().unwrap_or_else(|| {
                *bytes += LEAF_BYTES;
                Box::new(Node {
                    slots: [NO_FRAME; 1 << LEAF_BITS],
                    used: 0,
                    full: 0,
                })
            })
        });
        let old = core::mem::replace(&mut leaf.slots[d], entry);
        if old == NO_FRAME {
            leaf.used += 1;
            if leaf.used == FAN as u32 {
                l3.full += 1;
                if l3.full == FAN as u32 {
                    l2.full += 1;
                }
            }
        }
        old
    }

    /// Maps `gfn` to `mfn` if it holds no frame (a PoD entry is replaced) and returns
    /// `None`; otherwise changes nothing and returns the frame that is there. One walk where `get` then `set` take
    /// two.
    #[inline]
    pub(crate) fn set_if_empty(&mut self, gfn: u64, mfn: Mfn) -> Option<Mfn> {
        match self.set(gfn, mfn) {
            None => None,
            Some(old) => {
                // Put the old frame back: `set` replaced it.
                self.set(gfn, old);
                Some(old)
            }
        }
    }

    /// Unmaps `gfn`; returns the frame that was there. A PoD entry stays.
    #[inline]
    pub(crate) fn remove(&mut self, gfn: u64) -> Option<Mfn> {
        let old = self.take(gfn, is_frame)?;
        self.mapped -= 1;
        Some(old)
    }

    /// Unmaps, in gfn order, the frames of `[start, end)` that `take` accepts: each frame
    /// mapped there is offered as `take(gfn, mfn)`, and its entry cleared if that returns
    /// true. Holes and PoD entries are passed over. The same as [`remove`](Self::remove)
    /// of each gfn in turn (minus the ones refused), walking each leaf once instead of the
    /// tree for every page.
    pub(crate) fn remove_run(
        &mut self,
        start: u64,
        end: u64,
        mut take: impl FnMut(u64, Mfn) -> bool,
    ) -> u64 {
        let end = end.min(GFN_LIMIT);
        let leaf_span = 1u64 << LEAF_BITS;
        let mut removed = 0u64;
        let mut g = start;
        while g < end {
            let (a, b, c, d) = split(g);
            let leaf_end = (g - d as u64 + leaf_span).min(end);
            let next = g - d as u64 + leaf_span;
            let Some(l2) = self.top[a].as_mut() else {
                g = next;
                continue;
            };
            let Some(l3) = l2.slots[b].as_mut() else {
                g = next;
                continue;
            };
            let Some(leaf) = l3.slots[c].as_mut() else {
                g = next;
                continue;
            };
            let was_full = leaf.used == FAN as u32;
            let mut n = 0u32;
            for (i, slot) in leaf.slots[d..d + (leaf_end - g) as usize]
                .iter_mut()
                .enumerate()
            {
                let m = *slot;
                if is_frame(m) && take(g + i as u64, m) {
                    *slot = NO_FRAME;
                    n += 1;
                }
            }
            if n > 0 {
                if was_full {
                    if l3.full == FAN as u32 {
                        l2.full -= 1;
                    }
                    l3.full -= 1;
                }
                leaf.used -= n;
                removed += u64::from(n);
                let bytes = &mut self.table_bytes;
                if leaf.used == 0 {
                    if let Some(t) = l3.slots[c].take() {
                        keep(&mut self.spare.leaves, t, bytes);
                    }
                    l3.used -= 1;
                    if l3.used == 0 {
                        if let Some(t) = l2.slots[b].take() {
                            keep(&mut self.spare.l3, t, bytes);
                        }
                        l2.used -= 1;
                        if l2.used == 0 {
                            if let Some(t) = self.top[a].take() {
                                keep(&mut self.spare.l2, t, bytes);
                            }
                        }
                    }
                }
            }
            g = leaf_end;
        }
        self.mapped -= removed;
        removed
    }

    /// Removes the PoD entry at `gfn`; false if there is none.
    pub(crate) fn remove_pod(&mut self, gfn: u64) -> bool {
        if self.take(gfn, |m| m == POD_ENTRY).is_none() {
            return false;
        }
        self.pod -= 1;
        true
    }

    /// Empties the entry at `gfn` if `which` accepts it, freeing emptied tables; returns
    /// the old entry.
    #[inline]
    fn take(&mut self, gfn: u64, which: impl Fn(Mfn) -> bool) -> Option<Mfn> {
        if gfn >= GFN_LIMIT {
            return None;
        }
        let (a, b, c, d) = split(gfn);
        let l2 = self.top[a].as_mut()?;
        let l3 = l2.slots[b].as_mut()?;
        let leaf = l3.slots[c].as_mut()?;
        let old = leaf.slots[d];
        if old == NO_FRAME || !which(old) {
            return None;
        }
        leaf.slots[d] = NO_FRAME;
        if leaf.used == FAN as u32 {
            if l3.full == FAN as u32 {
                l2.full -= 1;
            }
            l3.full -= 1;
        }
        leaf.used -= 1;
        let bytes = &mut self.table_bytes;
        if leaf.used == 0 {
            if let Some(t) = l3.slots[c].take() {
                keep(&mut self.spare.leaves, t, bytes);
            }
            l3.used -= 1;
            if l3.used == 0 {
                if let Some(t) = l2.slots[b].take() {
                    keep(&mut self.spare.l3, t, bytes);
                }
                l2.used -= 1;
                if l2.used == 0 {
                    if let Some(t) = self.top[a].take() {
                        keep(&mut self.spare.l2, t, bytes);
                    }
                }
            }
        }
        Some(old)
    }

    /// Maps the 512 gfns of the leaf at `gfn` (2 MiB-aligned) to `base .. base + 512` in
    /// one step, if no leaf is there yet (the whole 2 MiB is empty, PoD entries
    /// included); returns false and changes nothing otherwise. What a block populate does
    /// for every 2 MiB it backs: one walk and one fill where 512 [`set`](Self::set)s take
    /// 512 walks.
    ///
    /// # Panics
    /// If `gfn` is not 2 MiB-aligned or `gfn >= GFN_LIMIT`.
    pub(crate) fn put_block(&mut self, gfn: u64, base: Mfn) -> bool {
        const LEAF: u64 = 1 << LEAF_BITS;
        assert!(gfn % LEAF == 0 && gfn < GFN_LIMIT, "block gfn {gfn:#x}");
        debug_assert!(is_frame(base) && is_frame(base + (LEAF as Mfn - 1)));
        let (a, b, c, _) = split(gfn);
        if self.top[a]
            .as_ref()
            .and_then(|l2| l2.slots[b].as_ref())
            .is_some_and(|l3| l3.slots[c].is_some())
        {
            return false;
        }
        let spare = &mut self.spare;
        let bytes = &mut self.table_bytes;
        let l2 = inner(&mut self.top[a], &mut spare.l2, bytes);
        if l2.slots[b].is_none() {
            l2.used += 1;
        }
        let l3 = inner(&mut l2.slots[b], &mut spare.l3, bytes);
        let mut leaf = spare.leaves.pop().unwrap_or_else(|| {
            *bytes += LEAF_BYTES;
            Box::new(Node {
                slots: [NO_FRAME; 1 << LEAF_BITS],
                used: 0,
                full: 0,
            })
        });
        for (i, slot) in leaf.slots.iter_mut().enumerate() {
            *slot = base + i as Mfn;
        }
        leaf.used = FAN as u32;
        l3.slots[c] = Some(leaf);
        l3.used += 1;
        l3.full += 1;
        if l3.full == FAN as u32 {
            l2.full += 1;
        }
        self.mapped += LEAF;
        let last = gfn + LEAF - 1;
        self.max_mapped = Some(self.max_mapped.map_or(last, |m| m.max(last)));
        true
    }

    /// Unmaps the 512 gfns of the leaf at `gfn` (2 MiB-aligned) in one step, if every one
    /// holds a frame that `take` accepts, and returns their frames in gfn order; returns
    /// `None` and changes nothing otherwise (a hole, a PoD entry or a refused frame in
    /// the 2 MiB). The emptied leaf becomes a spare.
    pub(crate) fn take_block(
        &mut self,
        gfn: u64,
        take: impl Fn(Mfn) -> bool,
    ) -> Option<[Mfn; 1 << LEAF_BITS]> {
        if gfn % (1 << LEAF_BITS) != 0 || gfn >= GFN_LIMIT {
            return None;
        }
        let (a, b, c, _) = split(gfn);
        let l2 = self.top[a].as_mut()?;
        let l3 = l2.slots[b].as_mut()?;
        let leaf = l3.slots[c].as_ref()?;
        if leaf.used != FAN as u32 || !leaf.slots.iter().all(|&m| is_frame(m) && take(m)) {
            return None;
        }
        let mut leaf = l3.slots[c].take()?;
        let frames = leaf.slots;
        leaf.slots.fill(NO_FRAME);
        leaf.used = 0;
        if l3.full == FAN as u32 {
            l2.full -= 1;
        }
        l3.full -= 1;
        l3.used -= 1;
        self.mapped -= 1 << LEAF_BITS;
        let bytes = &mut self.table_bytes;
        keep(&mut self.spare.leaves, leaf, bytes);
        if l3.used == 0 {
            if let Some(t) = l2.slots[b].take() {
                keep(&mut self.spare.l3, t, bytes);
            }
            l2.used -= 1;
            if l2.used == 0 {
                if let Some(t) = self.top[a].take() {
                    keep(&mut self.spare.l2, t, bytes);
                }
            }
        }
        Some(frames)
    }

    /// The first gfn of `[start, start + count)` holding a frame, walking only the tables
    /// that exist: a missing table passes its whole span in one step, so checking that a
    /// range about to be populated is empty costs what the map holds there, not the
    /// range's length.
    pub fn first_frame(&self, start: u64, count: u64) -> Option<u64> {
        let end = start.saturating_add(count).min(GFN_LIMIT);
        let leaf_span = 1u64 << LEAF_BITS;
        let l3_span = leaf_span << MID_BITS;
        let l2_span = l3_span << MID_BITS;
        let mut g = start;
        while g < end {
            let (a, b, c, d) = split(g);
            let Some(l2) = self.top[a].as_ref() else {
                g = (g / l2_span + 1) * l2_span;
                continue;
            };
            let Some(l3) = l2.slots[b].as_ref() else {
                g = (g / l3_span + 1) * l3_span;
                continue;
            };
            let leaf_end = (g - d as u64 + leaf_span).min(end);
            if let Some(leaf) = l3.slots[c].as_ref() {
                let n = (leaf_end - g) as usize;
                if let Some(i) = leaf.slots[d..d + n].iter().position(|&m| is_frame(m)) {
                    return Some(g + i as u64);
                }
            }
            g = leaf_end;
        }
        None
    }

    /// The highest gfn holding a frame or a PoD entry.
    pub fn highest_entry(&self) -> Option<u64> {
        for (a, l2) in self.top.iter().enumerate().rev() {
            let Some(l2) = l2 else { continue };
            for (b, l3) in l2.slots.iter().enumerate().rev() {
                let Some(l3) = l3 else { continue };
                for (c, leaf) in l3.slots.iter().enumerate().rev() {
                    let Some(leaf) = leaf else { continue };
                    if let Some(d) = leaf.slots.iter().rposition(|&m| m != NO_FRAME) {
                        return Some(
                            ((a as u64) << (LEAF_BITS + 2 * MID_BITS))
                                | ((b as u64) << (LEAF_BITS + MID_BITS))
                                | ((c as u64) << LEAF_BITS)
                                | d as u64,
                        );
                    }
                }
            }
        }
        None
    }

    /// Counts from scratch: (frames, PoD entries, table bytes), for the invariant check.
    pub fn recount(&self) -> (u64, u64, u64) {
        let (mut frames, mut pods) = (0u64, 0u64);
        let mut bytes = self.spare.leaves.len() as u64 * LEAF_BYTES
            + (self.spare.l3.len() + self.spare.l2.len()) as u64 * NODE_BYTES;
        for l2 in self.top.iter().flatten() {
            bytes += NODE_BYTES;
            for l3 in l2.slots.iter().flatten() {
                bytes += NODE_BYTES;
                for leaf in l3.slots.iter().flatten() {
                    bytes += LEAF_BYTES;
                    for &m in &leaf.slots {
                        if is_frame(m) {
                            frames += 1;
                        } else if m == POD_ENTRY {
                            pods += 1;
                        }
                    }
                }
            }
        }
        (frames, pods, bytes)
    }

    /// The PoD entries as maximal runs `(start, count)`, in order, at most `limit` runs.
    pub fn pod_ranges_up_to(&self, limit: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let _ = self.try_for_each_raw(|gfn, m| {
            if m != POD_ENTRY {
                return core::ops::ControlFlow::Continue(());
            }
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

    /// True if every gfn of `[start, start + count)` holds a frame (a PoD entry or a hole
    /// answers false; an empty range is true).
    ///
    /// A range query: a subtree whose every slot is in use is passed in one step (1 GiB
    /// for an inner table, 2 MiB for a leaf) while the map holds no PoD entry, so the cost
    /// is a few steps per level for ranges of RAM, whatever their length; only the
    /// partial leaves at the ends are scanned (at most 2 x 512 entries). This is how the
    /// host answers the DM VSP's ownership question for every run a guest gives back.
    pub fn all_mapped(&self, start: u64, count: u64) -> bool {
        if count == 1 {
            // The question a guest returning 4 KiB pages asks for every page: one lookup.
            return self.get(start).is_some();
        }
        let Some(end) = start.checked_add(count).filter(|&e| e <= GFN_LIMIT) else {
            return false;
        };
        let leaf_span = 1u64 << LEAF_BITS;
        let l3_span = leaf_span << MID_BITS;
        let l2_span = l3_span << MID_BITS;
        // Fullness means "every slot in use", which is "every slot a frame" only while no
        // PoD entry exists anywhere in the map.
        let no_pod = self.pod == 0;
        let mut g = start;
        while g < end {
            let (a, b, c, d) = split(g);
            let Some(l2) = self.top[a].as_ref() else {
                return false;
            };
            if no_pod && g % l2_span == 0 && end - g >= l2_span && l2.full == FAN as u32 {
                g += l2_span;
                continue;
            }
            let Some(l3) = l2.slots[b].as_ref() else {
                return false;
            };
            if no_pod && g % l3_span == 0 && end - g >= l3_span && l3.full == FAN as u32 {
                g += l3_span;
                continue;
            }
            let Some(leaf) = l3.slots[c].as_ref() else {
                return false;
            };
            let leaf_end = (g - d as u64 + leaf_span).min(end);
            if no_pod && d == 0 && leaf_end - g == leaf_span && leaf.used == FAN as u32 {
                g = leaf_end;
                continue;
            }
            let n = (leaf_end - g) as usize;
            if !leaf.slots[d..d + n].iter().all(|&m| is_frame(m)) {
                return false;
            }
            g = leaf_end;
        }
        true
    }

    /// The first gfn of `[start, end)` that holds no frame, or whose frame `ok` refuses;
    /// `None` if every one holds a frame `ok` accepts. Each leaf is walked once, so a run
    /// costs a lookup per leaf and a step per page.
    pub fn first_not(&self, start: u64, end: u64, mut ok: impl FnMut(Mfn) -> bool) -> Option<u64> {
        let leaf_span = 1u64 << LEAF_BITS;
        let mut g = start;
        while g < end {
            if g >= GFN_LIMIT {
                return Some(g);
            }
            let (a, b, c, d) = split(g);
            let leaf_end = (g - d as u64 + leaf_span).min(end);
            let Some(leaf) = self.top[a]
                .as_ref()
                .and_then(|l2| l2.slots[b].as_ref())
                .and_then(|l3| l3.slots[c].as_ref())
            else {
                return Some(g);
            };
            let slots = &leaf.slots[d..d + (leaf_end - g) as usize];
            if let Some(i) = slots.iter().position(|&m| !is_frame(m) || !ok(m)) {
                return Some(g + i as u64);
            }
            g = leaf_end;
        }
        None
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

    /// Calls `f` for every mapping (frames only), in gfn order, until it breaks.
    pub fn try_for_each<B>(
        &self,
        mut f: impl FnMut(u64, Mfn) -> core::ops::ControlFlow<B>,
    ) -> core::ops::ControlFlow<B> {
        self.try_for_each_raw(|g, m| {
            if is_frame(m) {
                f(g, m)
            } else {
                core::ops::ControlFlow::Continue(())
            }
        })
    }

    /// Calls `f` for every entry, frames and PoD entries, in gfn order, until it breaks.
    fn try_for_each_raw<B>(
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

    #[test]
    fn all_mapped_passes_full_subtrees_and_sees_every_hole() {
        let mut p = P2m::new();
        let gib = 1u64 << 18;
        for g in 0..2 * gib + 700 {
            p.set(g, (g % 1000) as Mfn);
        }
        assert!(p.all_mapped(0, 2 * gib + 700));
        assert!(p.all_mapped(3, 2 * gib));
        assert!(!p.all_mapped(0, 2 * gib + 701));
        assert!(p.all_mapped(5, 0), "an empty range");
        assert!(!p.all_mapped(GFN_LIMIT - 1, 2), "past the limit");
        // A hole deep inside a full 1 GiB table is found after the table stops being full.
        p.remove(gib + 12345);
        assert!(!p.all_mapped(0, 2 * gib));
        assert!(p.all_mapped(0, gib + 12345));
        assert!(p.all_mapped(gib + 12346, gib - 12346));
        p.set(gib + 12345, 1);
        assert!(p.all_mapped(0, 2 * gib));
        // A PoD entry fills a slot but is not a frame.
        p.remove(77);
        p.set_pod(77);
        assert!(!p.all_mapped(0, gib));
        assert!(p.all_mapped(78, gib));
        // One page: the lookup, which sees holes, PoD entries and the limit alike.
        assert!(p.all_mapped(76, 1));
        assert!(!p.all_mapped(77, 1));
        assert!(!p.all_mapped(2 * gib + 700, 1));
        assert!(!p.all_mapped(GFN_LIMIT, 1));
        assert!(!p.all_mapped(u64::MAX, 1));
    }

    #[test]
    fn pod_entries_are_not_frames() {
        let mut p = P2m::new();
        assert_eq!(p.set_pod(7), None);
        assert_eq!(p.set_pod(7), None, "marking twice counts once");
        assert_eq!((p.mapped(), p.pod_entries()), (0, 1));
        assert!(p.is_pod(7));
        assert_eq!(p.get(7), None);
        assert_eq!(p.remove(7), None, "remove takes frames only");
        assert_eq!(p.iter().count(), 0);
        assert_eq!(p.highest_entry(), Some(7));
        // A frame replaces the PoD entry; a PoD mark does not replace a frame.
        assert_eq!(p.set(7, 3), None);
        assert_eq!((p.mapped(), p.pod_entries()), (1, 0));
        assert_eq!(p.set_pod(7), Some(3));
        assert_eq!(p.get(7), Some(3));
        p.set_pod(1 << 30);
        assert_eq!(p.pod_ranges_up_to(8), vec![(1 << 30, 1)]);
        assert!(p.remove_pod(1 << 30));
        assert!(!p.remove_pod(1 << 30));
        assert_eq!(p.remove(7), Some(3));
        assert_eq!(p.highest_entry(), None);
        assert!(p.top.iter().all(Option::is_none), "empty tables are freed");
        assert_eq!(p.recount(), (0, 0, p.table_bytes()));
    }

    #[test]
    fn table_bytes_count_every_table() {
        let mut p = P2m::new();
        assert_eq!(p.new_table_bytes(0, 1), LEAF_BYTES + 2 * NODE_BYTES);
        // A 1 GiB run: 512 leaves under one inner table, one top entry.
        assert_eq!(
            p.new_table_bytes(0, 1 << 18),
            512 * LEAF_BYTES + 2 * NODE_BYTES
        );
        // One page every 2^18 gfns: a leaf and an inner table each.
        assert_eq!(p.new_table_bytes(5 << 18, 1), LEAF_BYTES + 2 * NODE_BYTES);
        p.set(0, 1);
        assert_eq!(p.table_bytes(), LEAF_BYTES + 2 * NODE_BYTES);
        assert_eq!(p.new_table_bytes(1, 511), 0);
        assert_eq!(p.new_table_bytes(511, 2), LEAF_BYTES);
        assert_eq!(p.new_table_bytes(1 << 18, 1), LEAF_BYTES + NODE_BYTES);
        // Emptied tables stay counted as spares, and are reused for free.
        p.remove(0);
        assert_eq!(p.table_bytes(), LEAF_BYTES + 2 * NODE_BYTES);
        assert_eq!(p.new_table_bytes(1 << 30, 1), 0);
        assert_eq!(p.recount().2, p.table_bytes());
    }

    proptest! {
        /// `new_table_bytes` predicts exactly what mapping a range allocates, and the
        /// counters match a recount, whatever was mapped, marked and removed before.
        #[test]
        fn new_table_bytes_predicts_the_allocation(
            ops in proptest::collection::vec((0u8..3, 0u64..64, 0u64..1000), 0..100),
            start in 0u64..(1 << 30),
            count in 1u64..2000,
        ) {
            let mut p = P2m::new();
            for (op, region, off) in ops {
                let g = region << 17 | off;
                match op {
                    0 => { p.set(g, 1); }
                    1 => { p.set_pod(g); }
                    _ => { p.remove(g); p.remove_pod(g); }
                }
            }
            prop_assert_eq!(p.recount(), (p.mapped(), p.pod_entries(), p.table_bytes()));
            let before = p.table_bytes();
            let predicted = p.new_table_bytes(start, count);
            for g in start..start + count {
                p.set_pod(g);
            }
            prop_assert_eq!(p.table_bytes() - before, predicted);
            prop_assert_eq!(p.recount(), (p.mapped(), p.pod_entries(), p.table_bytes()));
        }

        #[test]
        fn all_mapped_matches_a_scan(
            ops in proptest::collection::vec((0u8..3, 0u64..3000), 0..400),
            queries in proptest::collection::vec((0u64..3000, 0u64..1500), 1..40),
        ) {
            let mut p = P2m::new();
            // Dense runs so that leaves fill and empty.
            for g in 0..2048 {
                p.set(g, g as Mfn);
            }
            for (op, g) in ops {
                match op {
                    0 => { p.set(g, 1); }
                    1 => { p.remove(g); }
                    _ => { p.set_pod(g); }
                }
            }
            for (s, n) in queries {
                let naive = (s..s + n).all(|g| p.get(g).is_some());
                prop_assert_eq!(p.all_mapped(s, n), naive, "range {}+{}", s, n);
            }
        }

        /// The block operations and the range queries agree with a page-by-page model,
        /// and leave counters (frames, PoD entries, table bytes, fullness) that match a
        /// recount and the page-by-page queries, whatever is around them.
        #[test]
        fn block_operations_match_pages(
            ops in proptest::collection::vec((0u8..6, 0u64..(8 << 9)), 0..300),
            queries in proptest::collection::vec((0u64..(8 << 9), 0u64..3000), 1..20),
        ) {
            let mut p = P2m::new();
            let mut m: BTreeMap<u64, Mfn> = BTreeMap::new();
            let mut pods = std::collections::BTreeSet::new();
            for (op, g) in ops {
                let block = g & !511;
                match op {
                    0 => { if p.get(g).is_none() { pods.remove(&g); } p.set(g, g as Mfn); m.insert(g, g as Mfn); }
                    1 => { p.remove(g); m.remove(&g); }
                    2 => { if p.set_pod(g).is_none() { pods.insert(g); } }
                    3 => {
                        let empty = !(block..block + 512).any(|x| m.contains_key(&x) || pods.contains(&x));
                        prop_assert_eq!(p.put_block(block, 7000 + block as Mfn), empty);
                        if empty {
                            for x in block..block + 512 { m.insert(x, 7000 + x as Mfn); }
                        }
                    }
                    _ => {
                        // Half the time every frame is accepted, half the time one in
                        // seven is refused (a block then always holds one).
                        let strict = g % 2 == 0;
                        let ok = |f: Mfn| !strict || f % 7 != 0;
                        let all = (block..block + 512).all(|x| m.get(&x).is_some_and(|&f| ok(f)));
                        let got = p.take_block(block, ok);
                        prop_assert_eq!(got.is_some(), all);
                        if let Some(frames) = got {
                            for (i, x) in (block..block + 512).enumerate() {
                                prop_assert_eq!(Some(frames[i]), m.remove(&x));
                            }
                        }
                    }
                }
                prop_assert_eq!(p.recount(), (p.mapped(), p.pod_entries(), p.table_bytes()));
                prop_assert_eq!(p.mapped(), m.len() as u64);
            }
            for (s, n) in queries {
                let first = (s..s + n).find(|g| m.contains_key(g));
                prop_assert_eq!(p.first_frame(s, n), first);
                let not = (s..s + n).find(|g| m.get(g).is_none_or(|&f| f % 3 == 0));
                prop_assert_eq!(p.first_not(s, s + n, |f| f % 3 != 0), not);
                prop_assert_eq!(p.all_mapped(s, n), (s..s + n).all(|g| m.contains_key(&g)));
            }
        }

        /// Removing a run walks each leaf once and leaves the map as removing its gfns
        /// one by one does: entries, counters, fullness (seen by `all_mapped`), tables
        /// and spares. Frames the caller refuses stay.
        #[test]
        fn remove_run_is_remove_of_each_gfn(
            ops in proptest::collection::vec((0u8..3, 0u64..3000), 0..40),
            start in 0u64..3000,
            count in 0u64..2000,
            refuse in 1u32..20,
        ) {
            let mut one = P2m::new();
            for g in 0..2048 {
                one.set(g, g as Mfn);
            }
            for (op, g) in ops {
                match op {
                    0 => { one.set(g, g as Mfn); }
                    1 => { one.remove(g); }
                    _ => { one.set_pod(g); }
                }
            }
            let mut run = one.clone();
            let mut want = Vec::new();
            for g in start..start + count {
                if let Some(m) = one.get(g) {
                    if m % refuse != 0 {
                        one.remove(g);
                        want.push((g, m));
                    }
                }
            }
            let mut got = Vec::new();
            let n = run.remove_run(start, start + count, |g, m| {
                let take = m % refuse != 0;
                if take {
                    got.push((g, m));
                }
                take
            });
            prop_assert_eq!(n, want.len() as u64);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(run.iter().collect::<Vec<_>>(), one.iter().collect::<Vec<_>>());
            // Every table, counter and spare alike.
            let (a, b) = (format!("{run:?}"), format!("{one:?}"));
            prop_assert!(a == b, "the maps differ");
            prop_assert_eq!(run.recount(), one.recount());
            prop_assert_eq!(
                (run.mapped(), run.pod_entries(), run.table_bytes()),
                (one.mapped(), one.pod_entries(), one.table_bytes())
            );
            prop_assert_eq!(
                (run.spare.leaves.len(), run.spare.l3.len(), run.spare.l2.len()),
                (one.spare.leaves.len(), one.spare.l3.len(), one.spare.l2.len())
            );
            for (s, c) in [(0, 512), (0, 2048), (512, 1024), (start, count), (0, 1 << 20)] {
                prop_assert_eq!(run.all_mapped(s, c), one.all_mapped(s, c));
            }
            prop_assert_eq!(run.pod_ranges_up_to(100), one.pod_ranges_up_to(100));
        }

        #[test]
        fn first_not_matches_a_scan(
            ops in proptest::collection::vec((0u8..3, 0u64..3000), 0..60),
            start in 0u64..3000,
            count in 0u64..2000,
            refuse in 1u32..40,
        ) {
            let mut p = P2m::new();
            for g in 0..2048 {
                p.set(g, g as Mfn);
            }
            for (op, g) in ops {
                match op {
                    0 => { p.set(g, g as Mfn); }
                    1 => { p.remove(g); }
                    _ => { p.set_pod(g); }
                }
            }
            let ok = |m: Mfn| m % refuse != 7;
            let naive = (start..start + count).find(|&g| !p.get(g).is_some_and(ok));
            prop_assert_eq!(p.first_not(start, start + count, ok), naive);
            prop_assert_eq!(p.first_not(GFN_LIMIT - 1, GFN_LIMIT + 1, ok), Some(GFN_LIMIT - 1));
        }

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
