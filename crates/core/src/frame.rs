//! Machine frames: the per-frame state table and the per-node heap that hands frames out.
//!
//! Every managed 4 KiB frame has 12 bytes of metadata: a `u32` state word (what the frame
//! is, who owns it, and for a free block its order) and a `u64` link word whose meaning
//! depends on the state (free-list links, the gfn it is mapped at, or the next frame of a
//! pool list). That is the whole m2p and the whole allocator: no side tables per frame.
//!
//! The heap of each NUMA node is a binary buddy allocator over the node's MFN range, with
//! blocks aligned to their size in absolute MFNs (an order-9 block is 2 MiB-aligned in
//! machine memory), orders 0 to [`MAX_ORDER`]. Order-0 traffic goes through a per-node
//! cache in front of the buddy lists, as Linux's per-CPU page lists do, so that the
//! common balloon and populate paths neither split nor coalesce on every page.

use crate::Mfn;

/// The largest extent order: 2^18 frames = 1 GiB (Xen's MAX_ORDER on x86).
pub const MAX_ORDER: u32 = 18;
/// Marks "no frame" in links and lists.
pub const NO_FRAME: Mfn = u32::MAX;

/// What a frame is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameState {
    /// Not RAM: a hole in the host memory map or a reserved range. Never allocated,
    /// deposited or accepted. Its state word is 0, so the metadata of a hole is memory
    /// the table never writes: zero pages the host kernel does not back.
    Absent = 0,
    /// In the heap: free memory, identity-mapped in the root partition.
    Free = 1,
    /// In a partition's memory pool, not used by the hypervisor (withdrawable).
    PoolAvailable = 2,
    /// In a partition's memory pool, holding hypervisor structures for it.
    PoolInUse = 3,
    /// Allocated to a partition but mapped at no gfn (Xen `increase_reservation` for a
    /// translated guest).
    Assigned = 4,
    /// Mapped into a partition's guest physical space; the link word holds the gfn.
    Mapped = 5,
    /// Held by the hypervisor itself (not part of any partition or the heap).
    Hypervisor = 6,
    /// In a partition's populate-on-demand cache: the partition's (counted in its
    /// `tot_pages`), at no gfn, waiting for a guest access to a PoD entry.
    PodCache = 7,
    /// Held by the hypervisor for the host's whole life, taken from the heap at boot
    /// (the frames of Xen's m2p table).
    Reserved = 8,
    /// A hypervisor page of one partition, charged to its pool: its Xen shared-info page
    /// or a grant frame. The link word holds the gfn it is mapped at, or
    /// [`NO_GFN`].
    Special = 9,
}

/// Link word of a [`FrameState::Special`] frame mapped at no gfn.
pub const NO_GFN: u64 = u64::MAX;

impl FrameState {
    const fn from_bits(b: u32) -> Self {
        match b & STATE_MASK {
            0 => Self::Absent,
            1 => Self::Free,
            2 => Self::PoolAvailable,
            3 => Self::PoolInUse,
            4 => Self::Assigned,
            5 => Self::Mapped,
            6 => Self::Hypervisor,
            7 => Self::PodCache,
            8 => Self::Reserved,
            _ => Self::Special,
        }
    }
}

// The state word: bits 3:0 state, bits 8:4 `order` (free frames only), bits 31:9 owner
// slot (owned frames only).
const STATE_MASK: u32 = 0xF;
const ORDER_SHIFT: u32 = 4;
const OWNER_SHIFT: u32 = 9;
/// Order field of a free frame that is inside a block, not its head.
const NOT_HEAD: u32 = 31;
/// Order field of a free frame sitting in a node's order-0 cache.
const CACHED: u32 = 30;
/// The largest owner slot the state word holds.
pub const MAX_OWNER_SLOT: u32 = (1 << 23) - 1;

const fn pack(state: FrameState, order: u32, owner: u32) -> u32 {
    state as u32 | order << ORDER_SHIFT | owner << OWNER_SHIFT
}

/// Bytes of metadata the frame table keeps per frame.
pub const METADATA_BYTES_PER_FRAME: usize =
    core::mem::size_of::<u32>() + core::mem::size_of::<u64>();

/// Which nodes an allocation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeSel {
    /// Any node, lowest first.
    Any,
    /// This node, then the others.
    Preferred(u32),
    /// This node only.
    Exact(u32),
}

/// The per-frame table and the per-node heaps.
#[derive(Debug, Clone)]
pub struct Frames {
    meta: Vec<u32>,
    link: Vec<u64>,
    nodes: Vec<NodeHeap>,
    /// RAM frames (the table also covers the holes below the highest RAM frame).
    ram: u64,
}

#[derive(Debug, Clone)]
struct NodeHeap {
    start: Mfn,
    end: Mfn,
    /// Head of the free list of each order (doubly linked through the link words).
    heads: [Mfn; MAX_ORDER as usize + 1],
    /// Free frames of this node, cache included.
    free: u64,
    /// Order-0 frames in front of the buddy lists.
    cache: Vec<Mfn>,
    /// Entries of `cache`.
    cached: u64,
}

const CACHE_HIGH: usize = 1024;
const CACHE_BATCH: usize = 256;

// The allocator itself (`new`, `alloc`, `free`) stays public so that a frame table can be
// built and measured on its own (the memory bench does); a `Hypervisor` hands out only
// `&Frames`, so no embedder reaches the model's frames through it. The writes that give a
// frame a state, owner or link (`set`, `set_link`, `take`) are the model's alone.
impl Frames {
    /// A frame table over `node_frames[i]` frames per node, laid out consecutively from
    /// MFN 0, all free.
    ///
    /// # Panics
    /// If the total exceeds what a u32 MFN can number (16 TiB); the caller validates
    /// configurations before this.
    pub fn new(node_frames: &[u32]) -> Self {
        let mut start = 0u32;
        let ranges: Vec<(u32, Mfn, Mfn)> = node_frames
            .iter()
            .enumerate()
            .map(|(node, &n)| {
                let r = (
                    node as u32,
                    start,
                    start.checked_add(n).expect("at most 2^32 - 1 frames"),
                );
                start = r.2;
                r
            })
            .collect();
        Self::with_ram(node_frames.len() as u32, &ranges)
    }

    /// A frame table over the RAM ranges `(node, first MFN, end MFN)`, all free; every
    /// other frame below the highest end is [`FrameState::Absent`]. Each node's heap
    /// spans its ranges, holes included: blocks never cover a hole, since they are carved
    /// from RAM ranges only and a hole is never a free buddy.
    ///
    /// # Panics
    /// If the ranges are unsorted, overlap, interleave nodes, name a node at or beyond
    /// `nodes`, leave a node without RAM, or end at `NO_FRAME`: the caller validates
    /// configurations before this.
    pub fn with_ram(nodes: u32, ranges: &[(u32, Mfn, Mfn)]) -> Self {
        let top = ranges.last().map_or(0, |r| r.2);
        assert!(top < NO_FRAME, "at most 2^32 - 1 frames");
        // Zeroed tables: `Absent` is the all-zero state word, so only RAM is written.
        let mut frames = Frames {
            meta: vec![0; top as usize],
            link: vec![0; top as usize],
            nodes: Vec::with_capacity(nodes as usize),
            ram: 0,
        };
        let mut end = 0;
        for node in 0..nodes {
            let mut mine = ranges.iter().filter(|r| r.0 == node);
            let (Some(first), Some(last)) = (mine.clone().next(), mine.next_back()) else {
                panic!("node {node} has no RAM");
            };
            frames.nodes.push(NodeHeap {
                start: first.1,
                end: last.2,
                heads: [NO_FRAME; MAX_ORDER as usize + 1],
                free: 0,
                cache: Vec::with_capacity(CACHE_HIGH),
                cached: 0,
            });
        }
        for &(node, s, e) in ranges {
            assert!(
                s >= end && s < e && node < nodes,
                "RAM ranges sorted and disjoint"
            );
            end = e;
            let n = &frames.nodes[node as usize];
            assert!(n.start <= s && e <= n.end, "node {node}'s RAM is one span");
            for m in s..e {
                frames.meta[m as usize] = pack(FrameState::Free, NOT_HEAD, 0);
            }
            frames.ram += u64::from(e - s);
            let mut m = s;
            while m < e {
                let mut order = MAX_ORDER;
                while order > 0 && (m % (1 << order) != 0 || m as u64 + (1u64 << order) > e as u64)
                {
                    order -= 1;
                }
                frames.push_block(node as usize, m, order);
                frames.nodes[node as usize].free += 1 << order;
                m += 1 << order;
            }
        }
        for w in frames.nodes.windows(2) {
            assert!(w[0].end <= w[1].start, "nodes in address order");
        }
        frames
    }

    /// Number of frames the table covers: one past the highest RAM frame (Xen's
    /// `max_page`). Frames below it that are not RAM are [`FrameState::Absent`].
    pub fn len(&self) -> u32 {
        self.meta.len() as u32
    }

    /// Number of RAM frames.
    pub fn ram_frames(&self) -> u64 {
        self.ram
    }

    /// True if `mfn` is a RAM frame (not a hole, not reserved, not beyond the table).
    #[inline]
    pub fn is_ram(&self, mfn: Mfn) -> bool {
        self.meta
            .get(mfn as usize)
            .is_some_and(|&w| FrameState::from_bits(w) != FrameState::Absent)
    }

    /// True if there are no frames.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Number of NUMA nodes.
    pub fn node_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// The MFN range of `node`.
    pub fn node_range(&self, node: u32) -> core::ops::Range<Mfn> {
        let n = &self.nodes[node as usize];
        n.start..n.end
    }

    /// The node `mfn` belongs to.
    #[inline]
    pub fn node_of(&self, mfn: Mfn) -> u32 {
        self.nodes.partition_point(|n| n.end <= mfn) as u32
    }

    /// Free frames on `node`.
    pub fn free_frames(&self, node: u32) -> u64 {
        self.nodes[node as usize].free
    }

    /// Free frames on all nodes.
    pub fn total_free(&self) -> u64 {
        self.nodes.iter().map(|n| n.free).sum()
    }

    /// The state of `mfn`.
    #[inline]
    pub fn state(&self, mfn: Mfn) -> FrameState {
        FrameState::from_bits(self.meta[mfn as usize])
    }

    /// The owner slot of an owned frame.
    #[inline]
    pub fn owner(&self, mfn: Mfn) -> u32 {
        self.meta[mfn as usize] >> OWNER_SHIFT
    }

    /// The link word of `mfn` (its gfn when mapped, its next frame in a pool list).
    #[inline]
    pub fn link(&self, mfn: Mfn) -> u64 {
        self.link[mfn as usize]
    }

    /// Gives `mfn` (which must not be free) a new state, owner and link.
    #[inline]
    pub(crate) fn set(&mut self, mfn: Mfn, state: FrameState, owner: u32, link: u64) {
        debug_assert!(state != FrameState::Free && state != FrameState::Absent);
        debug_assert!(self.state(mfn) != FrameState::Absent);
        debug_assert!(owner <= MAX_OWNER_SLOT);
        self.meta[mfn as usize] = pack(state, 0, owner);
        self.link[mfn as usize] = link;
    }

    /// Sets only the link word.
    #[inline]
    pub(crate) fn set_link(&mut self, mfn: Mfn, link: u64) {
        self.link[mfn as usize] = link;
    }

    fn order_field(&self, mfn: Mfn) -> u32 {
        (self.meta[mfn as usize] >> ORDER_SHIFT) & 31
    }

    fn is_free_head(&self, mfn: Mfn, order: u32) -> bool {
        self.meta[mfn as usize] == pack(FrameState::Free, order, 0)
    }

    fn push_block(&mut self, node: usize, mfn: Mfn, order: u32) {
        let head = self.nodes[node].heads[order as usize];
        self.meta[mfn as usize] = pack(FrameState::Free, order, 0);
        self.link[mfn as usize] = (head as u64) << 32 | NO_FRAME as u64;
        if head != NO_FRAME {
            let l = self.link[head as usize];
            self.link[head as usize] = (l & !0xFFFF_FFFF) | mfn as u64;
        }
        self.nodes[node].heads[order as usize] = mfn;
    }

    fn unlink_block(&mut self, node: usize, mfn: Mfn, order: u32) {
        let l = self.link[mfn as usize];
        let (prev, next) = (l as u32, (l >> 32) as u32);
        if prev == NO_FRAME {
            self.nodes[node].heads[order as usize] = next;
        } else {
            let pl = self.link[prev as usize];
            self.link[prev as usize] = (pl & 0xFFFF_FFFF) | (next as u64) << 32;
        }
        if next != NO_FRAME {
            let nl = self.link[next as usize];
            self.link[next as usize] = (nl & !0xFFFF_FFFF) | prev as u64;
        }
    }

    /// Marks the frames of a block as allocated-but-unassigned; the caller sets the
    /// final state with [`set`](Self::set) right after.
    fn claim_block(&mut self, mfn: Mfn, order: u32) {
        for m in mfn..mfn + (1 << order) {
            self.meta[m as usize] = pack(FrameState::Hypervisor, 0, 0);
        }
    }

    /// Takes a block of `order` from the buddy lists of `node` whose end is at or below
    /// `limit`, splitting a larger one if needed.
    fn buddy_alloc(&mut self, node: usize, order: u32, limit: Mfn) -> Option<Mfn> {
        let unlimited = limit >= self.nodes[node].end;
        for k in order..=MAX_ORDER {
            let mut m = self.nodes[node].heads[k as usize];
            if !unlimited {
                // Slow path for address-limited requests: walk the list for a low block.
                while m != NO_FRAME && m as u64 + (1u64 << order) > limit as u64 {
                    m = (self.link[m as usize] >> 32) as u32;
                }
            }
            if m == NO_FRAME {
                continue;
            }
            self.unlink_block(node, m, k);
            // Keep the low part, give back the upper halves.
            for j in (order..k).rev() {
                self.push_block(node, m + (1 << j), j);
            }
            return Some(m);
        }
        None
    }

    fn buddy_free(&mut self, node: usize, mut mfn: Mfn, mut order: u32) {
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        while order < MAX_ORDER {
            let buddy = mfn ^ (1 << order);
            if buddy < start || buddy >= end || !self.is_free_head(buddy, order) {
                break;
            }
            self.unlink_block(node, buddy, order);
            self.meta[buddy as usize] = pack(FrameState::Free, NOT_HEAD, 0);
            self.meta[mfn as usize] = pack(FrameState::Free, NOT_HEAD, 0);
            mfn = mfn.min(buddy);
            order += 1;
        }
        self.push_block(node, mfn, order);
    }

    /// Cached frames keep their index in the cache vector in their link word, so a
    /// deposit can take one out in O(1).
    #[inline]
    fn cache_push(&mut self, node: usize, mfn: Mfn) {
        self.meta[mfn as usize] = pack(FrameState::Free, CACHED, 0);
        self.link[mfn as usize] = self.nodes[node].cache.len() as u64;
        self.nodes[node].cache.push(mfn);
        self.nodes[node].cached += 1;
    }

    #[inline]
    fn cache_pop(&mut self, node: usize) -> Option<Mfn> {
        let m = self.nodes[node].cache.pop()?;
        self.nodes[node].cached -= 1;
        Some(m)
    }

    fn cache_refill(&mut self, node: usize) {
        for _ in 0..CACHE_BATCH {
            let Some(m) = self.buddy_alloc(node, 0, NO_FRAME) else {
                break;
            };
            self.cache_push(node, m);
        }
    }

    fn cache_drain(&mut self, node: usize, keep: usize) {
        while self.nodes[node].cached as usize > keep {
            let Some(m) = self.cache_pop(node) else { break };
            self.buddy_free(node, m, 0);
        }
    }

    #[inline]
    fn alloc_on(&mut self, node: usize, order: u32, limit: Mfn) -> Option<Mfn> {
        let n = &self.nodes[node];
        if n.free < 1 << order || n.start as u64 + (1u64 << order) > limit as u64 {
            return None;
        }
        let m = if order == 0 && limit >= n.end {
            match self.cache_pop(node) {
                Some(m) => m,
                None => {
                    self.cache_refill(node);
                    self.cache_pop(node)?
                }
            }
        } else {
            match self.buddy_alloc(node, order, limit) {
                Some(m) => m,
                None if self.nodes[node].cached > 0 => {
                    // The block may be held up by cached frames: give them back and retry.
                    self.cache_drain(node, 0);
                    self.buddy_alloc(node, order, limit)?
                }
                None => return None,
            }
        };
        self.claim_block(m, order);
        self.nodes[node].free -= 1 << order;
        Some(m)
    }

    /// Allocates a naturally aligned block of 2^`order` frames on the nodes `sel` allows,
    /// ending at or below MFN `limit` (exclusive; `NO_FRAME` for none).
    ///
    /// The frames come back in state [`FrameState::Hypervisor`]; the caller gives each
    /// its final state. `None` when no allowed node has such a block.
    #[inline]
    pub fn alloc(&mut self, sel: NodeSel, order: u32, limit: Mfn) -> Option<Mfn> {
        if order > MAX_ORDER {
            return None;
        }
        let count = self.nodes.len() as u32;
        match sel {
            NodeSel::Exact(n) if n < count => self.alloc_on(n as usize, order, limit),
            NodeSel::Exact(_) => None,
            NodeSel::Preferred(n) if n < count => {
                self.alloc_on(n as usize, order, limit).or_else(|| {
                    (0..count)
                        .filter(|&i| i != n)
                        .find_map(|i| self.alloc_on(i as usize, order, limit))
                })
            }
            _ => (0..count).find_map(|i| self.alloc_on(i as usize, order, limit)),
        }
    }

    /// A free frame on the nodes `sel` allows, left in the heap.
    pub fn peek_free(&self, sel: NodeSel) -> Option<Mfn> {
        let count = self.nodes.len() as u32;
        let order: Vec<u32> = match sel {
            NodeSel::Exact(n) if n < count => vec![n],
            NodeSel::Exact(_) => vec![],
            NodeSel::Preferred(n) if n < count => core::iter::once(n)
                .chain((0..count).filter(|&i| i != n))
                .collect(),
            _ => (0..count).collect(),
        };
        order.into_iter().find_map(|n| {
            let node = &self.nodes[n as usize];
            node.cache
                .last()
                .copied()
                .or_else(|| node.heads.iter().copied().find(|&h| h != NO_FRAME))
        })
    }

    /// Returns a block of 2^`order` frames starting at `mfn` to the heap.
    ///
    /// The block must have come from [`alloc`](Self::alloc) (or single frames taken from
    /// the heap by the model); its frames must not be free.
    #[inline]
    pub fn free(&mut self, mfn: Mfn, order: u32) {
        let node = self.node_of(mfn) as usize;
        debug_assert!(
            (mfn..mfn + (1 << order))
                .all(|m| !matches!(self.state(m), FrameState::Free | FrameState::Absent))
        );
        self.nodes[node].free += 1 << order;
        if order == 0 {
            self.cache_push(node, mfn);
            if self.nodes[node].cached as usize >= CACHE_HIGH {
                self.cache_drain(node, CACHE_HIGH - CACHE_BATCH);
            }
            return;
        }
        for m in mfn..mfn + (1 << order) {
            self.meta[m as usize] = pack(FrameState::Free, NOT_HEAD, 0);
        }
        self.buddy_free(node, mfn, order);
    }

    /// Takes the specific free frame `mfn` out of the heap (a root GPA page being
    /// deposited). Returns false if it is not free.
    pub(crate) fn take(&mut self, mfn: Mfn) -> bool {
        if mfn as usize >= self.meta.len() || self.state(mfn) != FrameState::Free {
            return false;
        }
        let node = self.node_of(mfn) as usize;
        match self.order_field(mfn) {
            CACHED => {
                let cache = &mut self.nodes[node].cache;
                let i = self.link[mfn as usize] as usize;
                debug_assert_eq!(cache.get(i), Some(&mfn));
                cache.swap_remove(i);
                if let Some(&moved) = cache.get(i) {
                    self.link[moved as usize] = i as u64;
                }
                self.nodes[node].cached -= 1;
            }
            _ => {
                let Some((head, order)) = (0..=MAX_ORDER).find_map(|k| {
                    let h = mfn & !((1u32 << k) - 1);
                    self.is_free_head(h, k).then_some((h, k))
                }) else {
                    unreachable!("a free frame outside the cache lies in a free block")
                };
                self.unlink_block(node, head, order);
                let mut h = head;
                for j in (0..order).rev() {
                    let upper = h + (1 << j);
                    if mfn >= upper {
                        self.push_block(node, h, j);
                        h = upper;
                    } else {
                        self.push_block(node, upper, j);
                    }
                }
            }
        }
        self.meta[mfn as usize] = pack(FrameState::Hypervisor, 0, 0);
        self.nodes[node].free -= 1;
        true
    }

    /// Checks the heap's own invariants: every free frame is in exactly one free block
    /// or the cache, blocks are aligned and in range, and the counts agree.
    pub fn check(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            let mut seen = 0u64;
            for order in 0..=MAX_ORDER {
                let mut m = n.heads[order as usize];
                let mut prev = NO_FRAME;
                while m != NO_FRAME {
                    if m < n.start || m >= n.end || m % (1 << order) != 0 {
                        return Err(format!("node {i}: block {m} of order {order} misplaced"));
                    }
                    if !self.is_free_head(m, order) {
                        return Err(format!("node {i}: listed block {m} not a free head"));
                    }
                    if self.link[m as usize] as u32 != prev {
                        return Err(format!("node {i}: broken prev link at {m}"));
                    }
                    for f in m + 1..m + (1 << order) {
                        if self.meta[f as usize] != pack(FrameState::Free, NOT_HEAD, 0) {
                            return Err(format!("node {i}: frame {f} inside free block {m}"));
                        }
                    }
                    seen += 1 << order;
                    prev = m;
                    m = (self.link[m as usize] >> 32) as u32;
                }
            }
            for (idx, &m) in n.cache.iter().enumerate() {
                if self.meta[m as usize] != pack(FrameState::Free, CACHED, 0)
                    || self.link[m as usize] != idx as u64
                {
                    return Err(format!("node {i}: cache entry {idx} (frame {m}) is stale"));
                }
            }
            let live = n.cache.len() as u64;
            if live != n.cached {
                return Err(format!("node {i}: cache count {} != live {live}", n.cached));
            }
            if seen + live != n.free {
                return Err(format!(
                    "node {i}: free count {} != {} listed + {live} cached",
                    n.free, seen
                ));
            }
            let free_frames = (n.start..n.end)
                .filter(|&m| self.state(m) == FrameState::Free)
                .count() as u64;
            if free_frames != n.free {
                return Err(format!(
                    "node {i}: {free_frames} frames free, counted {}",
                    n.free
                ));
            }
        }
        let absent = (0..self.len())
            .filter(|&m| self.state(m) == FrameState::Absent)
            .count() as u64;
        if absent + self.ram != u64::from(self.len()) {
            return Err(format!(
                "{absent} frames absent and {} RAM in a table of {}",
                self.ram,
                self.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_is_compact() {
        assert_eq!(METADATA_BYTES_PER_FRAME, 12);
    }

    #[test]
    fn initial_blocks_are_maximal_and_aligned() {
        let f = Frames::new(&[(1 << 18) + 3, 1000]);
        f.check().unwrap();
        assert_eq!(f.free_frames(0), (1 << 18) + 3);
        assert_eq!(f.free_frames(1), 1000);
        assert_eq!(f.node_of(0), 0);
        assert_eq!(f.node_of((1 << 18) + 2), 0);
        assert_eq!(f.node_of((1 << 18) + 3), 1);
    }

    #[test]
    fn alloc_free_orders() {
        let mut f = Frames::new(&[1 << 12]);
        let a = f.alloc(NodeSel::Any, 9, NO_FRAME).unwrap();
        assert_eq!(a % 512, 0);
        let b = f.alloc(NodeSel::Any, 0, NO_FRAME).unwrap();
        assert!(b < a || b >= a + 512);
        f.check().unwrap();
        f.free(a, 9);
        f.free(b, 0);
        f.check().unwrap();
        assert_eq!(f.free_frames(0), 1 << 12);
        // Everything coalesces back once the cache drains.
        let whole = f.alloc(NodeSel::Any, 12, NO_FRAME).unwrap();
        assert_eq!(whole, 0);
        assert_eq!(f.alloc(NodeSel::Any, 0, NO_FRAME), None);
    }

    #[test]
    fn exact_and_preferred_nodes() {
        let mut f = Frames::new(&[16, 16]);
        let m = f.alloc(NodeSel::Exact(1), 0, NO_FRAME).unwrap();
        assert_eq!(f.node_of(m), 1);
        assert_eq!(f.alloc(NodeSel::Exact(2), 0, NO_FRAME), None);
        for _ in 0..15 {
            f.alloc(NodeSel::Exact(1), 0, NO_FRAME).unwrap();
        }
        assert_eq!(f.alloc(NodeSel::Exact(1), 0, NO_FRAME), None);
        let m = f.alloc(NodeSel::Preferred(1), 0, NO_FRAME).unwrap();
        assert_eq!(f.node_of(m), 0);
        f.check().unwrap();
    }

    #[test]
    fn address_limit() {
        let mut f = Frames::new(&[1 << 10]);
        // Use up the low half through the cache, then ask below the midpoint.
        let low: Vec<_> = (0..512)
            .map(|_| f.alloc(NodeSel::Any, 0, 512).unwrap())
            .collect();
        assert!(low.iter().all(|&m| m < 512));
        assert_eq!(f.alloc(NodeSel::Any, 0, 512), None);
        assert!(f.alloc(NodeSel::Any, 0, NO_FRAME).unwrap() >= 512);
        f.check().unwrap();
    }

    #[test]
    fn take_specific_frames() {
        let mut f = Frames::new(&[64]);
        assert!(f.take(37));
        assert!(!f.take(37));
        assert!(!f.take(64));
        f.check().unwrap();
        let c = f.alloc(NodeSel::Any, 0, NO_FRAME).unwrap();
        f.free(c, 0);
        assert!(f.take(c)); // out of the cache
        f.check().unwrap();
        f.free(37, 0);
        f.free(c, 0);
        f.check().unwrap();
        assert_eq!(f.free_frames(0), 64);
    }

    /// Node 0: RAM [100, 612) and [1024, 1536); node 1: [2048, 2600). Everything else
    /// below 2600 is a hole.
    fn holed() -> Frames {
        Frames::with_ram(2, &[(0, 100, 612), (0, 1024, 1536), (1, 2048, 2600)])
    }

    fn in_ram(m: Mfn) -> bool {
        (100..612).contains(&m) || (1024..1536).contains(&m) || (2048..2600).contains(&m)
    }

    #[test]
    fn holes_are_absent_and_never_allocated() {
        let mut f = holed();
        f.check().unwrap();
        assert_eq!((f.len(), f.ram_frames()), (2600, 512 + 512 + 552));
        assert_eq!(f.node_range(0), 100..1536);
        assert!((0..f.len()).all(|m| f.is_ram(m) == in_ram(m)));
        assert!(!f.is_ram(2600) && !f.is_ram(NO_FRAME));
        for m in [0, 99, 612, 1023, 1536, 2047, 2600] {
            assert!(!f.take(m), "frame {m}");
        }
        // Every order, until the heap is dry: every block lies in RAM.
        let mut held = Vec::new();
        for order in (0..=9).rev() {
            while let Some(m) = f.alloc(NodeSel::Any, order, NO_FRAME) {
                assert!((m..m + (1 << order)).all(in_ram), "block {m} order {order}");
                held.push((m, order));
            }
        }
        assert_eq!(f.total_free(), 0);
        let held_frames: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
        assert_eq!(held_frames, f.ram_frames());
        f.check().unwrap();
        for (m, o) in held {
            f.free(m, o);
        }
        f.check().unwrap();
        assert_eq!(f.total_free(), f.ram_frames());
        // Buddies never coalesce across a hole: the largest block is what one RAM range
        // aligned holds ([1024, 1536) is one order-9 block).
        assert_eq!(f.alloc(NodeSel::Exact(0), 10, NO_FRAME), None);
        assert_eq!(f.alloc(NodeSel::Exact(0), 9, NO_FRAME), Some(1024));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u32, u8),
        Free(usize),
        Take(u32),
    }

    proptest! {
        #[test]
        fn heap_invariants_hold(ops in proptest::collection::vec(
            prop_oneof![
                (0u32..10, 0u8..3).prop_map(|(o, n)| Op::Alloc(o, n)),
                any::<usize>().prop_map(Op::Free),
                (0u32..3000).prop_map(Op::Take),
            ], 1..200),
            holes in any::<bool>(),
        ) {
            let mut f = if holes { holed() } else { Frames::new(&[1500, 1100]) };
            let total = f.ram_frames();
            let mut held: Vec<(Mfn, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(order, n) => {
                        let sel = match n { 0 => NodeSel::Any, 1 => NodeSel::Exact(1), _ => NodeSel::Preferred(1) };
                        if let Some(m) = f.alloc(sel, order, NO_FRAME) {
                            prop_assert_eq!(m % (1 << order), 0);
                            prop_assert!((m..m + (1 << order)).all(|x| f.is_ram(x)));
                            held.push((m, order));
                        }
                    }
                    Op::Free(i) if !held.is_empty() => {
                        let (m, o) = held.swap_remove(i % held.len());
                        f.free(m, o);
                    }
                    Op::Free(_) => {}
                    Op::Take(m) => {
                        let was_free = m < f.len() && f.state(m) == FrameState::Free;
                        prop_assert_eq!(f.take(m), was_free);
                        if was_free { held.push((m, 0)); }
                    }
                }
                prop_assert!(f.check().is_ok(), "{:?}", f.check());
            }
            let held_frames: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
            prop_assert_eq!(f.total_free() + held_frames, total);
        }
    }
}
