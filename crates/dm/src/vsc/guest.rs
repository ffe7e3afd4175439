//! What the VSC needs from the guest OS, and [`SimGuest`], a deterministic stand-in for
//! tests and the simulator.
//!
//! Every count and PFN is in 4 KiB pages, the protocol's unit (the guest is taken to use
//! 4 KiB pages, as x86 Linux does; Linux turns ballooning off otherwise).

use ballast_abi::types::GfnRange;

use crate::pageset::{PageSet, run};

/// Why a hot-add of memory blocks failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HotAddError {
    /// The range overlaps memory the guest already has (Linux's `-EEXIST` from
    /// `add_memory`): the address map rules hot-add out, so the VSC stops hot-adding for
    /// good and tells the host so.
    #[error("the range overlaps memory the guest already has")]
    Exists,
    /// Anything else (unaligned range, no memory for the memmap, beyond the physical address
    /// limit): worth retrying later.
    #[error("hot-add failed")]
    Failed,
}

/// The guest OS as the VSC sees it.
///
/// Implementations decide which pages a balloon may take; the VSC decides how many, in
/// which order, and keeps the books of what the host holds.
pub trait GuestMemoryModel {
    /// Pages the OS manages now, as Linux's `totalram_pages()`: boot RAM plus onlined
    /// hot-added memory, minus ballooned pages. The balloon floor is computed from it, so
    /// the floor sinks as the balloon grows, as it does in Linux.
    fn total_pages(&self) -> u64;

    /// Pages the OS could hand out without swapping, as `MemAvailable`.
    fn available_pages(&self) -> u64;

    /// Committed pages, as `vm_memory_committed()` (reported to the host, which bases its
    /// pressure on it).
    fn committed_pages(&self) -> u64;

    /// Takes `2^order` contiguous pages out of the OS's reach for the balloon; returns the
    /// first PFN, or `None` when no such block is free (the VSC then tries smaller blocks
    /// or stops). The pages stay the model's until [`free_pages`](Self::free_pages) gives
    /// them back.
    fn alloc_block(&mut self, order: u32) -> Option<u64>;

    /// Takes up to `count` blocks of `2^order` pages, as that many calls of
    /// [`alloc_block`](Self::alloc_block) would, stopping at the first that fails; appends
    /// their first PFNs to `out` in the order taken and returns how many it took.
    ///
    /// The VSC fills a balloon response (up to 510 blocks) with one call. A model whose
    /// allocator can hand out a batch in one step (a run of free pages at a time) should
    /// override it: with 4 KiB pages a 1 GiB balloon is 262,144 allocations.
    fn alloc_blocks(&mut self, order: u32, count: usize, out: &mut Vec<u64>) -> usize {
        let mut n = 0;
        while n < count {
            let Some(start) = self.alloc_block(order) else {
                break;
            };
            out.push(start);
            n += 1;
        }
        n
    }

    /// Gives pages taken by [`alloc_block`](Self::alloc_block) back to the OS. The VSC
    /// only ever passes pages it got from `alloc_block` and has not freed since.
    fn free_pages(&mut self, pages: GfnRange);

    /// Adds the memory blocks `blocks` (whole blocks, block-aligned) and onlines the pages
    /// of `online` (a sub-range, possibly empty: the pages the host backs); the rest of
    /// the blocks stays offline until [`online_pages`](Self::online_pages). Returns the
    /// pages brought online.
    fn hot_add(&mut self, blocks: GfnRange, online: GfnRange) -> Result<u64, HotAddError>;

    /// Onlines pages of blocks added earlier, once the host backs them; returns the pages
    /// brought online (pages already online or never added do not count).
    fn online_pages(&mut self, pages: GfnRange) -> u64;

    /// The memory block size in pages: the unit of hot-add. Must be a power of two of at
    /// least 1 MiB (256 pages) and at most 32 GiB, as the caps field can only say 2^n MiB
    /// with n < 16; otherwise the VSC does not offer hot-add.
    fn block_pages(&self) -> u64;
}

/// Appends to `out` the maximal runs of `window` whose pages are all in `set` (`inside`)
/// or all outside it (`!inside`), in order.
///
/// One ordered walk of the set from `start`: a lookup, then one step per run of the set
/// inside the window, so the cost grows with the runs found, not with `count` (a host may
/// name 16 M pages in one range) — and every caller frees or fills the runs it finds, so
/// asking again for the same window finds one.
pub(crate) fn runs(set: &PageSet, window: GfnRange, inside: bool, out: &mut Vec<GfnRange>) {
    if inside {
        out.extend(set.runs_in(window));
    } else {
        out.extend(set.gaps_in(window));
    }
}

/// The default memory block size: 128 MiB, what x86 Linux uses below 64 GiB.
pub const DEFAULT_BLOCK_PAGES: u64 = 32_768;

/// The largest PFN plus one that a page range can name (40 bits).
const PFN_LIMIT: u64 = 1 << 40;

/// A deterministic guest: boot RAM at PFNs `[0, total)`, the low part in use, the rest
/// free; hot-added blocks above. Allocations take the lowest free block that fits, so a
/// test can predict every PFN.
///
/// It also audits the VSC: freeing a page it did not allocate to the balloon is counted
/// in [`foreign_frees`](Self::foreign_frees), never obeyed.
#[derive(Debug, Clone)]
pub struct SimGuest {
    boot_pages: u64,
    block_pages: u64,
    free: PageSet,
    used: PageSet,
    ballooned: PageSet,
    added: PageSet,
    offline: PageSet,
    committed: u64,
    alloc_budget: Option<u64>,
    hot_add_failure: Option<HotAddError>,
    foreign_frees: u64,
}

impl SimGuest {
    /// Guest-physical RAM the OS was given: boot memory and every hot-added page, online
    /// or not, ballooned or not (hot-added blocks extend boot memory upwards, so this is
    /// also the top of RAM).
    pub fn ram_pages(&self) -> u64 {
        self.boot_pages + self.added.len()
    }

    /// A guest with `total_pages` of boot RAM of which `available_pages` are free (the
    /// highest ones), 128 MiB memory blocks, and committed memory equal to the pages in
    /// use.
    pub fn new(total_pages: u64, available_pages: u64) -> Self {
        let total = total_pages.min(PFN_LIMIT);
        let avail = available_pages.min(total);
        let mut used = PageSet::new();
        // Both below `total`, which is at most the gfn limit.
        used.insert(run(0, total - avail));
        let mut free = PageSet::new();
        free.insert(run(total - avail, total));
        Self {
            boot_pages: total,
            block_pages: DEFAULT_BLOCK_PAGES,
            free,
            used,
            ballooned: PageSet::new(),
            added: PageSet::new(),
            offline: PageSet::new(),
            committed: total - avail,
            alloc_budget: None,
            hot_add_failure: None,
            foreign_frees: 0,
        }
    }

    /// Sets the memory block size in pages.
    pub fn with_block_pages(mut self, block_pages: u64) -> Self {
        self.block_pages = block_pages;
        self
    }

    /// Marks free pages of `pages` as in use (to fragment memory); returns how many were
    /// free.
    pub fn occupy(&mut self, pages: GfnRange) -> u64 {
        let mut r = Vec::new();
        runs(&self.free, pages, true, &mut r);
        let mut n = 0;
        for g in r {
            self.free.remove(g);
            self.used.insert(g);
            n += g.count();
        }
        n
    }

    /// Frees in-use pages of `pages`; returns how many were in use.
    pub fn vacate(&mut self, pages: GfnRange) -> u64 {
        let mut r = Vec::new();
        runs(&self.used, pages, true, &mut r);
        let mut n = 0;
        for g in r {
            self.used.remove(g);
            self.free.insert(g);
            n += g.count();
        }
        n
    }

    /// Grows or shrinks the workload so that `pages` are free, as far as memory allows:
    /// pages are taken from, and given back to, the lowest addresses first.
    pub fn set_available(&mut self, pages: u64) {
        let now = self.free.len();
        if pages < now {
            for g in self.free.take(now - pages, u64::MAX) {
                self.used.insert(g);
            }
        } else {
            for g in self.used.take(pages - now, u64::MAX) {
                self.free.insert(g);
            }
        }
    }

    /// Sets the committed pages reported.
    pub fn set_committed(&mut self, pages: u64) {
        self.committed = pages;
    }

    /// Lets the allocator hand out only `pages` more pages before failing (as
    /// `__GFP_NORETRY` allocations give up under pressure); `None` lifts the limit.
    pub fn set_alloc_budget(&mut self, pages: Option<u64>) {
        self.alloc_budget = pages;
    }

    /// Makes every hot-add fail with `error` until cleared.
    pub fn set_hot_add_failure(&mut self, error: Option<HotAddError>) {
        self.hot_add_failure = error;
    }

    /// Free pages.
    pub fn free(&self) -> &PageSet {
        &self.free
    }

    /// Pages held by the balloon.
    pub fn ballooned(&self) -> &PageSet {
        &self.ballooned
    }

    /// Pages of hot-added blocks, online or not.
    pub fn added(&self) -> &PageSet {
        &self.added
    }

    /// Pages of hot-added blocks not yet online.
    pub fn offline(&self) -> &PageSet {
        &self.offline
    }

    /// Pages the VSC tried to free that the balloon did not hold.
    pub fn foreign_frees(&self) -> u64 {
        self.foreign_frees
    }
}

impl GuestMemoryModel for SimGuest {
    fn total_pages(&self) -> u64 {
        (self.boot_pages + self.added.len() - self.offline.len())
            .saturating_sub(self.ballooned.len())
    }

    fn available_pages(&self) -> u64 {
        self.free.len()
    }

    fn committed_pages(&self) -> u64 {
        self.committed
    }

    fn alloc_block(&mut self, order: u32) -> Option<u64> {
        let n = 1u64.checked_shl(order).filter(|&n| n <= PFN_LIMIT)?;
        if self.alloc_budget.is_some_and(|b| b < n) {
            return None;
        }
        let start = self.free.ranges().find_map(|g| {
            let a = g.start().checked_next_multiple_of(n)?;
            (a + n <= g.end()).then_some(a)
        })?;
        // Inside a free range.
        let block = run(start, start + n);
        self.free.remove(block);
        self.ballooned.insert(block);
        if let Some(b) = &mut self.alloc_budget {
            *b -= n;
        }
        Some(start)
    }

    /// The blocks [`alloc_block`](GuestMemoryModel::alloc_block) would give one by one:
    /// after it takes the lowest aligned block of the lowest free range that fits, what is
    /// left below the block in that range is too short for another, so the next call
    /// takes the block right after it, until the range is used up, then the next range
    /// that fits. Taken here a range at a time: one removal from the free set and one
    /// insertion into the ballooned set per run of blocks, not per block.
    fn alloc_blocks(&mut self, order: u32, count: usize, out: &mut Vec<u64>) -> usize {
        let Some(n) = 1u64.checked_shl(order).filter(|&n| n <= PFN_LIMIT) else {
            return 0;
        };
        let mut taken = 0usize;
        let mut from = 0u64;
        while taken < count {
            let budget = self.alloc_budget.map_or(u64::MAX, |b| b / n);
            if budget == 0 {
                break;
            }
            // The lowest free range at or above `from` (every range below it was used up
            // or too short) with room for an aligned block.
            let window = run(from, PFN_LIMIT);
            let Some((a, fit)) = self.free.runs_in(window).find_map(|g| {
                let a = g.start().checked_next_multiple_of(n)?;
                let fit = (g.end().checked_sub(a)? / n).min(budget);
                (fit > 0).then_some((a, fit))
            }) else {
                break;
            };
            let k = fit.min((count - taken) as u64);
            // Inside a free range.
            let blocks = run(a, a + k * n);
            self.free.remove(blocks);
            self.ballooned.insert(blocks);
            if let Some(b) = &mut self.alloc_budget {
                *b -= k * n;
            }
            out.extend((0..k).map(|i| a + i * n));
            taken += k as usize;
            from = blocks.end();
        }
        taken
    }

    fn free_pages(&mut self, pages: GfnRange) {
        let mut r = Vec::new();
        runs(&self.ballooned, pages, true, &mut r);
        let mut n = 0;
        for g in r {
            self.ballooned.remove(g);
            self.free.insert(g);
            n += g.count();
        }
        self.foreign_frees += pages.count() - n;
    }

    fn hot_add(&mut self, blocks: GfnRange, online: GfnRange) -> Result<u64, HotAddError> {
        if let Some(e) = self.hot_add_failure {
            return Err(e);
        }
        let b = self.block_pages.max(1);
        let len = blocks.count();
        // A gfn range ends at the 40-bit PFN limit at the latest.
        if len == 0 || blocks.start() % b != 0 || len % b != 0 || blocks.end() > PFN_LIMIT {
            return Err(HotAddError::Failed);
        }
        if blocks.start() < self.boot_pages || self.added.intersects(blocks) {
            return Err(HotAddError::Exists);
        }
        let (lo, hi) = (
            online.start().max(blocks.start()),
            online.end().min(blocks.end()),
        );
        // Inside `blocks`, or empty.
        let on = if lo < hi {
            run(lo, hi)
        } else {
            GfnRange::EMPTY
        };
        self.added.insert(blocks);
        self.offline.insert(blocks);
        self.offline.remove(on);
        self.free.insert(on);
        Ok(on.count())
    }

    fn online_pages(&mut self, pages: GfnRange) -> u64 {
        let mut r = Vec::new();
        runs(&self.offline, pages, true, &mut r);
        let mut n = 0;
        for g in r {
            self.offline.remove(g);
            self.free.insert(g);
            n += g.count();
        }
        n
    }

    fn block_pages(&self) -> u64 {
        self.block_pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, count: u64) -> GfnRange {
        GfnRange::new(start, count).unwrap()
    }

    /// A guest of 4096 pages with the given pages in use.
    fn fragmented(used: &[(u64, u64)]) -> SimGuest {
        let mut g = SimGuest::new(4096, 4096);
        for &(s, n) in used {
            g.occupy(r(s, n));
        }
        g
    }

    #[test]
    fn a_batch_takes_aligned_blocks_range_by_range() {
        // Free: [0, 100), [101, 1200), [1300, 4096).
        let mut g = fragmented(&[(100, 1), (1200, 100)]);
        let mut out = Vec::new();
        assert_eq!(g.alloc_blocks(9, 10, &mut out), 6);
        // 512 and 1536.. : [101, 1200) holds [512, 1024); [1300, 4096) holds 1536..3584.
        assert_eq!(out, vec![512, 1536, 2048, 2560, 3072, 3584]);
        out.clear();
        assert_eq!(g.alloc_blocks(0, 3, &mut out), 3);
        assert_eq!(out, vec![0, 1, 2]);
        assert_eq!(g.ballooned().len(), 6 * 512 + 3);
    }

    proptest! {
        /// Taking a batch leaves the guest as taking its blocks one by one does, and
        /// gives the same blocks in the same order.
        #[test]
        fn a_batch_is_alloc_block_repeated(
            used in proptest::collection::vec((0u64..4096, 1u64..300), 0..20),
            order in 0u32..10,
            count in 0usize..600,
            budget in proptest::option::of(0u64..5000),
        ) {
            let mut one = fragmented(&used);
            one.set_alloc_budget(budget);
            let mut batch = one.clone();
            let mut want = Vec::new();
            while want.len() < count {
                match one.alloc_block(order) {
                    Some(s) => want.push(s),
                    None => break,
                }
            }
            let mut got = Vec::new();
            prop_assert_eq!(batch.alloc_blocks(order, count, &mut got), want.len());
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(format!("{batch:?}"), format!("{one:?}"));
            prop_assert_eq!(batch.alloc_block(order), one.alloc_block(order));
        }
    }
}
