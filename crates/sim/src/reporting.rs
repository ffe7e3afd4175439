//! Free page reporting in a DM guest, as Linux does it: `mm/page_reporting.c` finds free
//! blocks of at least pageblock order (9: 2 MiB) and hands them in batches to the
//! driver's callback, which for Hyper-V is `hv_balloon`'s `hv_free_page_report`: one
//! HvExtCallMemoryHeatHint of type COLD_DISCARD per batch, one large-form range per block.
//!
//! What the model keeps of Linux:
//! - the driver asks for the capability first (`hv_query_ext_cap`, bit 8) and reports
//!   only if the host offers it;
//! - a pass runs [`DELAY_S`] after free blocks appear (`PAGE_REPORTING_DELAY`, 2 s), so a
//!   block must stay free that long to be reported;
//! - a pass reports at most `ceil(free blocks / (CAPACITY x 16))` batches (the budget of
//!   `page_reporting_cycle`, which takes a sixteenth of a free list per pass) of at most
//!   [`CAPACITY`] blocks (`PAGE_REPORTING_CAPACITY`, 32), and schedules the next pass
//!   after the delay while unreported blocks remain;
//! - blocks are the buddy allocator's: order 9, or order 10 (4 MiB, Linux's largest on
//!   x86) where two aligned order-9 blocks are free together;
//! - a reported block stays reported while it stays free; when the guest allocates from
//!   it (its demand grows, or the balloon takes it) it is the guest's like any page, and
//!   it can be reported again once it is free again;
//! - a failed call leaves its blocks unreported; after [`MAX_FAILURES`] the guest stops
//!   reporting (as the driver gives up on a host that refuses it).
//!
//! The model is pure: pages in, hypercalls out through [`HvCaller`], no clock but the
//! time it is given.

use ballast_abi::hv::{
    Control, HvExtCapabilities, HvGpaPageRange, HvMemoryHeatHint, HvMemoryHeatHintType,
    HypercallCode, HypercallOutput,
};
use ballast_abi::types::GfnRange;
use ballast_dm::PageSet;
use zerocopy::IntoBytes;

/// Seconds between free blocks appearing and the pass that reports them
/// (`PAGE_REPORTING_DELAY`, `2 * HZ`).
pub const DELAY_S: f64 = 2.0;
/// Blocks per report, one hypercall each (`PAGE_REPORTING_CAPACITY`).
pub const CAPACITY: usize = 32;
/// Pages of the smallest reported block (pageblock order 9: 2 MiB).
pub const BLOCK_PAGES: u64 = 512;
/// Pages of the largest (order 10: 4 MiB, x86's `MAX_PAGE_ORDER`).
const MAX_BLOCK_PAGES: u64 = 1024;
/// A pass takes at most this fraction (its inverse) of the free blocks
/// (`PAGE_REPORTING_CAPACITY * 16` in `page_reporting_cycle`'s budget).
const BUDGET_DIVISOR: u64 = 16;
/// Failed hint calls after which the guest stops reporting.
pub const MAX_FAILURES: u32 = 2;

/// Hyper-V hypercalls a guest makes as itself. The host in the same process is one; a
/// guest in its own process reaches the daemon's over its link.
pub trait HvCaller {
    /// What a call can fail with (not the hypercall's own statuses, which are results).
    type Error;
    /// One hypercall: `control` (RCX), its input block and its output page; the result
    /// value (RAX).
    fn hypercall(
        &mut self,
        control: u64,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<u64, Self::Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The capability has not been asked for yet.
    Unknown,
    /// Reporting: the host offers the hint.
    On,
    /// Not reporting: the host does not offer it, or refused it too often.
    Off,
}

/// One guest's free page reporting.
#[derive(Debug, Clone)]
pub struct Reporter {
    state: State,
    /// Pages reported and free since.
    reported: PageSet,
    /// When the next pass runs; `None` while no unreported block was seen.
    due: Option<f64>,
    failures: u32,
    /// Hint calls made.
    pub calls: u64,
    /// Pages reported, in all.
    pub reported_pages_total: u64,
    /// Blocks of a hint whose call failed without an answer (the transport failed with
    /// it in flight): the host may or may not have discarded them.
    unanswered: Vec<GfnRange>,
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter {
    /// A guest whose driver has not started reporting yet.
    pub fn new() -> Self {
        Reporter {
            state: State::Unknown,
            reported: PageSet::new(),
            due: None,
            failures: 0,
            calls: 0,
            reported_pages_total: 0,
            unanswered: Vec::new(),
        }
    }

    /// True unless the host refused reporting (no capability, or too many failures).
    pub fn active(&self) -> bool {
        self.state != State::Off
    }

    /// Pages reported and still free: memory the host does not back.
    pub fn reported_pages(&self) -> u64 {
        self.reported.len()
    }

    /// The reported pages, for tests and checks.
    pub fn reported(&self) -> &PageSet {
        &self.reported
    }

    /// Takes back every reported page that is no longer in `free` (the guest allocated
    /// it) and returns those ranges: the guest writes them, so the host backs them again.
    pub fn reclaim_used(&mut self, free: &PageSet) -> Vec<GfnRange> {
        if self.reported.is_empty() {
            return Vec::new();
        }
        let back: Vec<GfnRange> = self
            .reported
            .ranges()
            .flat_map(|r| free.gaps_in(r).collect::<Vec<_>>())
            .collect();
        for r in &back {
            self.reported.remove(*r);
        }
        back
    }

    /// Takes the blocks of hints whose calls failed without an answer. They stay
    /// unreported, so the guest must write them again: the host may have discarded them.
    pub fn take_unanswered(&mut self) -> Vec<GfnRange> {
        std::mem::take(&mut self.unanswered)
    }

    /// `pages` left the guest's free memory without being written (the balloon took
    /// them): they are no longer reported.
    pub fn forget(&mut self, pages: GfnRange) {
        self.reported.remove(pages);
    }

    /// One step at `now_s` over the guest's free pages `free` (which must hold every
    /// reported page: call [`reclaim_used`](Self::reclaim_used) after the free set
    /// shrinks). Runs a pass when one is due: asks for the capability the first time, then
    /// reports up to its budget of unreported blocks.
    pub fn step<H: HvCaller>(
        &mut self,
        now_s: f64,
        free: &PageSet,
        hv: &mut H,
    ) -> Result<(), H::Error> {
        if self.state == State::Off {
            return Ok(());
        }
        // At least a block's worth unreported; whether it forms an aligned block the
        // pass finds out.
        if free.len().saturating_sub(self.reported.len()) < BLOCK_PAGES {
            self.due = None;
            return Ok(());
        }
        match self.due {
            None => {
                self.due = Some(now_s + DELAY_S);
                return Ok(());
            }
            Some(t) if now_s < t => return Ok(()),
            Some(_) => {}
        }
        if self.state == State::Unknown {
            self.state = if query_cold_discard(hv)? {
                State::On
            } else {
                State::Off
            };
            if self.state == State::Off {
                return Ok(());
            }
        }
        let free_blocks = free.len() / BLOCK_PAGES;
        let budget = free_blocks.div_ceil(CAPACITY as u64 * BUDGET_DIVISOR) as usize * CAPACITY;
        let blocks = self.unreported_blocks(free, budget + 1);
        let more = blocks.len() > budget;
        for batch in blocks[..blocks.len().min(budget)].chunks(CAPACITY) {
            let done = match hint(hv, batch) {
                Ok(done) => done,
                Err(e) => {
                    self.unanswered.extend_from_slice(batch);
                    return Err(e);
                }
            };
            for &b in &batch[..done] {
                self.reported.insert(b);
                self.reported_pages_total += b.count();
            }
            self.calls += 1;
            if done < batch.len() {
                self.failures += 1;
                if self.failures >= MAX_FAILURES {
                    self.state = State::Off;
                    self.due = None;
                    return Ok(());
                }
                break;
            }
        }
        self.due = more.then_some(now_s + DELAY_S);
        Ok(())
    }

    /// Up to `limit` free blocks not wholly reported yet, lowest first: order 10 where
    /// aligned and whole, else order 9. A block partly reported (its other pages were used
    /// and freed again) is reported whole, as Linux reports a block the buddy allocator
    /// merged from a reported and an unreported half.
    fn unreported_blocks(&self, free: &PageSet, limit: usize) -> Vec<GfnRange> {
        let mut out: Vec<GfnRange> = Vec::new();
        for run in free.ranges() {
            for gap in self.reported.gaps_in(run) {
                // The blocks the gap touches, within the free run.
                let lo = (gap.start() / BLOCK_PAGES * BLOCK_PAGES).max(run.start());
                let mut a = lo.next_multiple_of(BLOCK_PAGES);
                if let Some(last) = out.last() {
                    a = a.max(last.end());
                }
                let hi = gap.end().next_multiple_of(BLOCK_PAGES).min(run.end());
                while a + BLOCK_PAGES <= hi {
                    if out.len() == limit {
                        return out;
                    }
                    let n = if a % MAX_BLOCK_PAGES == 0 && a + MAX_BLOCK_PAGES <= hi {
                        MAX_BLOCK_PAGES
                    } else {
                        BLOCK_PAGES
                    };
                    // Inside a free range, which lies below the gfn limit.
                    if let Ok(b) = GfnRange::new(a, n) {
                        out.push(b);
                    }
                    a += n;
                }
            }
        }
        out
    }
}

/// `hv_query_ext_cap(HV_EXT_CAPABILITY_MEMORY_COLD_DISCARD_HINT)`: false on any failure.
fn query_cold_discard<H: HvCaller>(hv: &mut H) -> Result<bool, H::Error> {
    let control = Control::for_call(HypercallCode::HvExtCallQueryCapabilities, 0, 0).into_bits();
    let mut out = [0u8; 8];
    let rax = hv.hypercall(control, &[], &mut out)?;
    Ok(HypercallOutput::from_bits(rax).status().is_ok()
        && HvExtCapabilities::from_bits(u64::from_le_bytes(out)).memory_cold_discard_hint())
}

/// One `hv_free_page_report` call for `blocks` (each 2 or 4 MiB, aligned); returns how
/// many were accepted (Linux's `hv_do_rep_hypercall` re-issues a time-sliced call from
/// its reps completed, as this does).
fn hint<H: HvCaller>(hv: &mut H, blocks: &[GfnRange]) -> Result<usize, H::Error> {
    let header = HvMemoryHeatHint::new().with_heat_type(HvMemoryHeatHintType::COLD_DISCARD.0);
    let mut input = header.into_bits().to_le_bytes().to_vec();
    for b in blocks {
        // 2 or 4 MiB, 2 MiB-aligned, below the gfn limit: always a large-form range.
        let r = HvGpaPageRange::large_2m(b.start() / BLOCK_PAGES, b.count() / BLOCK_PAGES)
            .unwrap_or_default();
        input.extend_from_slice(r.as_bytes());
    }
    let reps = blocks.len() as u16;
    let mut start = 0u16;
    loop {
        let control = Control::for_call(HypercallCode::HvExtCallMemoryHeatHint, reps, start);
        let out = HypercallOutput::from_bits(hv.hypercall(control.into_bits(), &input, &mut [])?);
        let done = out.reps_completed().min(reps);
        if !out.status().is_ok() || done >= reps || done <= start {
            return Ok(if out.status().is_ok() && done >= reps {
                blocks.len()
            } else {
                usize::from(done)
            });
        }
        start = done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn r(start: u64, count: u64) -> GfnRange {
        GfnRange::new(start, count).unwrap()
    }

    /// A host that offers the hint (or not) and records what it is told.
    #[derive(Default)]
    struct Recorder {
        offer: bool,
        refuse: bool,
        hinted: Vec<GfnRange>,
        calls: usize,
    }

    impl HvCaller for Recorder {
        type Error = ();
        fn hypercall(&mut self, control: u64, input: &[u8], output: &mut [u8]) -> Result<u64, ()> {
            let c = Control::from_bits(control);
            if c.call_code() == HypercallCode::HvExtCallQueryCapabilities {
                let caps = HvExtCapabilities::new().with_memory_cold_discard_hint(self.offer);
                output[..8].copy_from_slice(&caps.into_bits().to_le_bytes());
                return Ok(HypercallOutput::success(0).into_bits());
            }
            self.calls += 1;
            assert_eq!(c.call_code(), HypercallCode::HvExtCallMemoryHeatHint);
            assert_eq!(input.len(), 8 + 8 * c.rep_count() as usize);
            assert_eq!(
                u64::from_le_bytes(input[..8].try_into().unwrap()),
                2,
                "COLD_DISCARD"
            );
            if self.refuse {
                let e = ballast_abi::hv::HvError::ACCESS_DENIED;
                return Ok(HypercallOutput::error(e, 0).into_bits());
            }
            for el in input[8..].chunks_exact(8) {
                let range = HvGpaPageRange::from_bits(u64::from_le_bytes(el.try_into().unwrap()));
                let (s, n) = range.pages().unwrap();
                self.hinted.push(r(s, n));
            }
            Ok(HypercallOutput::success(c.rep_count()).into_bits())
        }
    }

    fn free_set(ranges: &[(u64, u64)]) -> PageSet {
        let mut f = PageSet::new();
        for &(s, n) in ranges {
            f.insert(r(s, n));
        }
        f
    }

    #[test]
    fn reports_after_the_delay_in_batches_of_aligned_blocks() {
        // 64 MiB free from gfn 100: aligned blocks from 512 up to 16484.
        let free = free_set(&[(100, 16384)]);
        let mut rep = Reporter::new();
        let mut host = Recorder {
            offer: true,
            ..Default::default()
        };
        rep.step(0.0, &free, &mut host).unwrap();
        rep.step(1.0, &free, &mut host).unwrap();
        assert!(host.hinted.is_empty(), "nothing before the delay");
        rep.step(2.0, &free, &mut host).unwrap();
        // 31 free blocks: a budget of one batch of 32, so all of them in one call.
        assert_eq!(host.calls, 1);
        let pages: u64 = host.hinted.iter().map(|b| b.count()).sum();
        assert_eq!(pages, (16384 / 512 - 1) * 512);
        for b in &host.hinted {
            assert_eq!(b.start() % 512, 0);
            assert!(b.count() == 512 || (b.count() == 1024 && b.start() % 1024 == 0));
            assert!(b.start() >= 100 && b.end() <= 16484);
        }
        assert_eq!(rep.reported_pages(), pages);
        // Nothing new: no more calls.
        for t in 3..10 {
            rep.step(t as f64, &free, &mut host).unwrap();
        }
        assert_eq!(host.calls, 1);
    }

    #[test]
    fn a_pass_takes_a_sixteenth_and_the_rest_follows() {
        // 8 GiB free: 4096 blocks, a budget of 8 batches of 32 per pass.
        let free = free_set(&[(0, 4096 * 512)]);
        let mut rep = Reporter::new();
        let mut host = Recorder {
            offer: true,
            ..Default::default()
        };
        rep.step(0.0, &free, &mut host).unwrap();
        rep.step(2.0, &free, &mut host).unwrap();
        assert_eq!(host.calls, 8);
        assert!(rep.reported_pages() <= 8 * 32 * 1024);
        let mut t = 2.0;
        while rep.reported_pages() < free.len() {
            t += 1.0;
            rep.step(t, &free, &mut host).unwrap();
            assert!(t < 200.0, "reporting stalls");
        }
        // Every page reported once.
        let mut seen = BTreeSet::new();
        for b in &host.hinted {
            for g in b.start()..b.end() {
                assert!(seen.insert(g), "gfn {g} reported twice");
            }
        }
        assert_eq!(seen.len() as u64, free.len());
    }

    #[test]
    fn used_pages_come_back_and_ballooned_ones_are_forgotten() {
        let mut free = free_set(&[(0, 4096)]);
        let mut rep = Reporter::new();
        let mut host = Recorder {
            offer: true,
            ..Default::default()
        };
        rep.step(0.0, &free, &mut host).unwrap();
        rep.step(2.0, &free, &mut host).unwrap();
        assert_eq!(rep.reported_pages(), 4096);
        // The workload takes gfns 0..600 (part of two blocks).
        free.remove(r(0, 600));
        assert_eq!(rep.reclaim_used(&free), vec![r(0, 600)]);
        assert_eq!(rep.reported_pages(), 4096 - 600);
        // The balloon takes the top block: not written, not reported.
        free.remove(r(3584, 512));
        rep.forget(r(3584, 512));
        assert!(rep.reclaim_used(&free).is_empty());
        // Freed again, the used pages are reported again, the block they share with
        // reported pages whole (0..1024 as one order-10 block).
        free.insert(r(0, 600));
        let before = host.hinted.len();
        rep.step(3.0, &free, &mut host).unwrap();
        rep.step(5.0, &free, &mut host).unwrap();
        assert_eq!(rep.reported_pages(), 4096 - 512);
        assert_eq!(host.hinted[before..], [r(0, 1024)]);
    }

    #[test]
    fn no_capability_no_reports_and_failures_stop_it() {
        let free = free_set(&[(0, 8192)]);
        let mut rep = Reporter::new();
        let mut host = Recorder::default();
        for t in 0..10 {
            rep.step(t as f64, &free, &mut host).unwrap();
        }
        assert_eq!((host.calls, rep.active()), (0, false));
        let mut rep = Reporter::new();
        let mut host = Recorder {
            offer: true,
            refuse: true,
            ..Default::default()
        };
        for t in 0..20 {
            rep.step(t as f64, &free, &mut host).unwrap();
        }
        assert_eq!(host.calls as u32, MAX_FAILURES);
        assert!(!rep.active());
        assert_eq!(rep.reported_pages(), 0);
    }

    /// What a guest's memory can do between two reporting steps.
    #[derive(Debug, Clone)]
    enum Op {
        /// The workload takes `n` pages at `at` (the lowest free ones there).
        Use { at: u64, n: u64 },
        /// It frees `n` pages at `at`.
        Free { at: u64, n: u64 },
        /// The balloon takes the aligned block at `block` if it is free.
        Balloon { block: u64 },
        /// Time passes: a step `dt` seconds later.
        Step { dt: f64 },
        /// The host starts or stops refusing hints.
        Refuse(bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..8192, 1u64..2048).prop_map(|(at, n)| Op::Use { at, n }),
            (0u64..8192, 1u64..2048).prop_map(|(at, n)| Op::Free { at, n }),
            (0u64..16).prop_map(|b| Op::Balloon { block: b * 512 }),
            (0.0f64..3.0).prop_map(|dt| Op::Step { dt }),
            any::<bool>().prop_map(Op::Refuse),
        ]
    }

    proptest::proptest! {
        /// Whatever the guest does: what is reported is always free; every hint names
        /// whole aligned blocks that were free when hinted, and none the guest uses; a
        /// page used again is handed back to be written; and once the guest stays
        /// still, every whole free block is reported (unless the host refused it twice).
        #[test]
        fn reports_only_free_blocks_and_catches_up(
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut free = free_set(&[(0, 8192)]);
            let mut rep = Reporter::new();
            let mut host = Recorder { offer: true, ..Default::default() };
            let mut t = 0.0;
            for o in ops {
                match o {
                    Op::Use { at, n } => {
                        let g = r(at, n.min(8192 - at));
                        free.remove(g);
                        for back in rep.reclaim_used(&free) {
                            proptest::prop_assert!(!free.intersects(back));
                        }
                    }
                    Op::Free { at, n } => {
                        free.insert(r(at, n.min(8192 - at)));
                    }
                    Op::Balloon { block } => {
                        let b = r(block, 512);
                        if free.contains_all(b) {
                            free.remove(b);
                            rep.forget(b);
                        }
                    }
                    Op::Step { dt } => {
                        t += dt;
                        let before = host.hinted.len();
                        rep.step(t, &free, &mut host).unwrap();
                        for b in &host.hinted[before..] {
                            proptest::prop_assert_eq!(b.start() % BLOCK_PAGES, 0);
                            proptest::prop_assert_eq!(b.count() % BLOCK_PAGES, 0);
                            proptest::prop_assert!(free.contains_all(*b), "{b:?} not free");
                        }
                    }
                    Op::Refuse(on) => host.refuse = on,
                }
                for g in rep.reported().ranges() {
                    proptest::prop_assert!(free.contains_all(g), "reported {g:?} is not free");
                }
            }
            // Still from here on, with a host that accepts: reporting catches up.
            host.refuse = false;
            for _ in 0..200 {
                t += 1.0;
                rep.step(t, &free, &mut host).unwrap();
            }
            if rep.active() {
                let whole: u64 = free
                    .ranges()
                    .map(|g| {
                        let a = g.start().next_multiple_of(BLOCK_PAGES);
                        (g.end().saturating_sub(a) / BLOCK_PAGES) * BLOCK_PAGES
                    })
                    .sum();
                proptest::prop_assert!(rep.reported_pages() >= whole);
            }
        }
    }
}
