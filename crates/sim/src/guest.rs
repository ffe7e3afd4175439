//! The guest side of a simulated guest: the operating system's memory as the balloon
//! drivers see it, for both interfaces.
//!
//! - [`DmModel`]: a Hyper-V Dynamic Memory guest, the [`GuestMemoryModel`] behind the
//!   VSC (which behaves as Linux's `hv_balloon`): pages in use are the guest's demand,
//!   the balloon takes only free pages above Linux's floor, hot-added blocks come online
//!   as the host backs them; with [`DmModel::with_reporting`] it also reports its free
//!   blocks ([`crate::reporting`]) through a [`HvCaller`] such as [`HostDm`].
//! - [`XenGuest`]: a Xen guest whose balloon driver follows the host's target as Linux's
//!   `drivers/xen/balloon.c` does: above target it gives free pages back with
//!   `XENMEM_decrease_reservation`, below it takes them with `XENMEM_populate_physmap`,
//!   within the `max_pages` the host enforces, as the guest, through the core's
//!   `memory_op`.
//!
//! In real-memory mode the guest writes every page it is given (boot memory, pages back
//! from the balloon, hot-added pages), as a guest that zeroes and then uses its free
//! memory does (Windows zeroes free pages in the background; Linux fills free memory with
//! page cache): so the host's resident memory is what the guest holds, and a balloon
//! really gives it back. The models record the ranges to write; the engine writes them
//! into the guest's memfd.

use ballast_abi::types::GfnRange;
use ballast_abi::xen::{DOMID_SELF, MemFlags, MemoryOp, MemoryOpCmd, XenMemoryReservation};
use ballast_core::{FlatMemory, MemoryOpResult};
use ballast_dm::vsc::{GuestMemoryModel, HotAddError, SimGuest};
use ballast_host::{Host, VmError, VmId};
use zerocopy::IntoBytes;

use crate::reporting::{HvCaller, Reporter};

/// A DM guest's memory: Linux's page allocator as `hv_balloon` sees it, with the demand
/// set by the workload.
#[derive(Debug)]
pub struct DmModel {
    os: SimGuest,
    /// Ranges the guest was given and will write (real-memory mode).
    pub to_touch: Vec<GfnRange>,
    demand: u64,
    /// Free page reporting, when the guest does it.
    reporter: Option<Reporter>,
}

impl DmModel {
    /// A guest booted with `boot_pages` of RAM, all free.
    pub fn new(boot_pages: u64) -> Self {
        DmModel {
            os: SimGuest::new(boot_pages, boot_pages),
            to_touch: GfnRange::new(0, boot_pages).into_iter().collect(),
            demand: 0,
            reporter: None,
        }
    }

    /// The same guest reporting its free memory ([`crate::reporting`]).
    pub fn with_reporting(mut self) -> Self {
        self.reporter = Some(Reporter::new());
        self
    }

    /// Sets the pages the workload needs: that many are in use (as far as the guest has
    /// memory), the rest free, and committed memory is the demand.
    pub fn set_demand(&mut self, pages: u64) {
        self.demand = pages;
        let total = self.os.total_pages();
        self.os.set_committed(pages);
        self.os.set_available(total.saturating_sub(pages));
        if let Some(r) = &mut self.reporter {
            // Reported pages the workload took are written again: backed again.
            let back = r.reclaim_used(self.os.free());
            self.to_touch.extend(back);
        }
    }

    /// One step of free page reporting at `now_s` through `hv` (nothing if the guest
    /// does not report). The blocks of a hint lost with its call are written again
    /// (they are free, so their contents are the guest's to choose): the host may have
    /// discarded them, and they stay unreported.
    pub fn report<H: HvCaller>(&mut self, now_s: f64, hv: &mut H) -> Result<(), H::Error> {
        let Some(r) = &mut self.reporter else {
            return Ok(());
        };
        let result = r.step(now_s, self.os.free(), hv);
        self.to_touch.extend(r.take_unanswered());
        result
    }

    /// Pages reported free and not used since: memory the host does not back.
    pub fn reported_pages(&self) -> u64 {
        self.reporter.as_ref().map_or(0, Reporter::reported_pages)
    }

    /// The reporter, if the guest reports.
    pub fn reporter(&self) -> Option<&Reporter> {
        self.reporter.as_ref()
    }

    /// The pages the guest OS manages.
    pub fn total_pages(&self) -> u64 {
        self.os.total_pages()
    }

    /// The balloon took the block of `order` at `start`: not reported any more.
    fn forget_ballooned(&mut self, start: u64, order: u32) {
        if let Some(r) = &mut self.reporter {
            if let Ok(g) = GfnRange::new(start, 1 << order) {
                r.forget(g);
            }
        }
    }

    /// The top of its guest-physical RAM, pages: boot memory and every hot-added page.
    pub fn ram_top(&self) -> u64 {
        self.os.ram_pages()
    }
}

impl GuestMemoryModel for DmModel {
    fn total_pages(&self) -> u64 {
        self.os.total_pages()
    }
    fn available_pages(&self) -> u64 {
        self.os.available_pages()
    }
    fn committed_pages(&self) -> u64 {
        self.os.committed_pages()
    }
    fn alloc_block(&mut self, order: u32) -> Option<u64> {
        let b = self.os.alloc_block(order)?;
        self.forget_ballooned(b, order);
        Some(b)
    }
    fn alloc_blocks(&mut self, order: u32, count: usize, out: &mut Vec<u64>) -> usize {
        let from = out.len();
        let n = self.os.alloc_blocks(order, count, out);
        for &b in &out[from..] {
            self.forget_ballooned(b, order);
        }
        n
    }
    fn free_pages(&mut self, pages: GfnRange) {
        self.os.free_pages(pages);
        self.to_touch.push(pages);
        // Pages back from the balloon are free; the workload takes what it needs.
        let d = self.demand;
        self.set_demand(d);
    }
    fn hot_add(&mut self, blocks: GfnRange, online: GfnRange) -> Result<u64, HotAddError> {
        let n = self.os.hot_add(blocks, online)?;
        if online.count() > 0 {
            self.to_touch.push(online);
        }
        let d = self.demand;
        self.set_demand(d);
        Ok(n)
    }
    fn online_pages(&mut self, pages: GfnRange) -> u64 {
        let n = self.os.online_pages(pages);
        if n > 0 {
            self.to_touch.push(pages);
        }
        let d = self.demand;
        self.set_demand(d);
        n
    }
    fn block_pages(&self) -> u64 {
        self.os.block_pages()
    }
}

/// What a Xen balloon driver needs of its hypervisor and toolstack: its target (xenstore
/// `memory/target`), the `memory_op` hypercall as itself, and a place for its reports
/// (`data/meminfo`). The host in the same process ([`HostXen`]) is one; a guest in its own
/// process reaches the daemon's over its link.
pub trait XenHypervisor {
    /// What a call can fail with (not the hypercall's own errors, which are results).
    type Error;
    /// The balloon target, pages; `None` if there is none yet.
    fn target_pages(&self) -> Option<u64>;
    /// `memory_op(cmd, arg)` with argument memory `mem`.
    fn memory_op(
        &mut self,
        cmd: u64,
        arg: u64,
        mem: &mut FlatMemory,
    ) -> Result<MemoryOpResult, Self::Error>;
    /// The guest's committed memory, bytes.
    fn report(&mut self, committed_bytes: u64) -> Result<(), Self::Error>;
}

/// A guest of a [`Host`] in this process.
#[derive(Debug)]
pub struct HostXen<'a> {
    /// The host.
    pub host: &'a mut Host,
    /// The guest.
    pub vm: VmId,
}

impl XenHypervisor for HostXen<'_> {
    type Error = VmError;
    fn target_pages(&self) -> Option<u64> {
        self.host.xen_target_pages(self.vm)
    }
    fn memory_op(
        &mut self,
        cmd: u64,
        arg: u64,
        mem: &mut FlatMemory,
    ) -> Result<MemoryOpResult, VmError> {
        self.host.xen_memory_op(self.vm, cmd, arg, mem)
    }
    fn report(&mut self, committed_bytes: u64) -> Result<(), VmError> {
        self.host.xen_report(self.vm, committed_bytes);
        Ok(())
    }
}

/// A DM guest of a [`Host`] in this process, making its Hyper-V hypercalls.
#[derive(Debug)]
pub struct HostDm<'a> {
    /// The host.
    pub host: &'a mut Host,
    /// The guest.
    pub vm: VmId,
}

impl HvCaller for HostDm<'_> {
    type Error = VmError;
    fn hypercall(&mut self, control: u64, input: &[u8], output: &mut [u8]) -> Result<u64, VmError> {
        self.host.hv_hypercall(self.vm, control, input, output)
    }
}

/// Extents per hypercall: Linux's balloon batches a page of `xen_pfn_t`s (512).
const EXTENTS_PER_CALL: usize = 512;
/// Pages in a 2 MiB extent (order 9, the largest a guest may ask for).
const ORDER9: u64 = 512;
/// Most pages the driver moves per tick (1 GiB), as Linux's `balloon_process` yields
/// between batches.
const MAX_PAGES_PER_TICK: u64 = 262_144;
/// Where the argument block lives in the guest's hypercall buffer.
const ARG_GPA: u64 = 0x1000;
/// Where the extent list lives.
const LIST_GPA: u64 = 0x2000;

/// A Xen guest's balloon driver and memory: RAM is the prefix `[0, pages)` of its
/// guest-physical space, in use from the bottom, ballooned from the top.
#[derive(Debug)]
pub struct XenGuest {
    vm: VmId,
    /// Pages populated: gfns `[0, pages)`.
    pages: u64,
    /// Pages the workload needs.
    demand: u64,
    /// The least the guest keeps, pages (its OS floor).
    floor: u64,
    /// The hypercall argument memory (the driver's own page and its list page).
    args: FlatMemory,
    /// Ranges populated and to be written (real-memory mode).
    pub to_touch: Vec<GfnRange>,
}

impl XenGuest {
    /// The driver of VM `vm`, booted with `boot_pages` populated.
    pub fn new(vm: VmId, boot_pages: u64, floor_pages: u64) -> Self {
        XenGuest {
            vm,
            pages: boot_pages,
            demand: 0,
            floor: floor_pages,
            args: FlatMemory::new(
                ARG_GPA,
                (LIST_GPA - ARG_GPA) as usize + EXTENTS_PER_CALL * 8,
            ),
            to_touch: GfnRange::new(0, boot_pages).into_iter().collect(),
        }
    }

    /// Pages populated.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Sets the workload's demand, pages.
    pub fn set_demand(&mut self, pages: u64) {
        self.demand = pages;
    }

    /// One pass of the balloon driver: towards the host's target (xenstore
    /// `memory/target`), at most [`MAX_PAGES_PER_TICK`] pages, giving back only free
    /// pages; then the committed-memory report (a guest agent's `data/meminfo`).
    pub fn step(&mut self, host: &mut Host) -> Result<(), VmError> {
        let vm = self.vm;
        self.step_with(&mut HostXen { host, vm })
    }

    /// [`step`](Self::step) against any [`XenHypervisor`].
    pub fn step_with<H: XenHypervisor>(&mut self, host: &mut H) -> Result<(), H::Error> {
        let target = host.target_pages().unwrap_or(self.pages);
        if self.pages > target {
            // Free pages are those above the demand; the OS keeps its floor.
            let keep = target.max(self.demand).max(self.floor);
            let give = self.pages.saturating_sub(keep).min(MAX_PAGES_PER_TICK);
            if give > 0 {
                self.decrease(host, give)?;
            }
        } else if target > self.pages {
            let take = (target - self.pages).min(MAX_PAGES_PER_TICK);
            self.populate(host, take)?;
        }
        host.report(self.demand * 4096)
    }

    /// Gives the top `n` pages back.
    fn decrease<H: XenHypervisor>(&mut self, host: &mut H, n: u64) -> Result<(), H::Error> {
        let mut left = n;
        while left > 0 {
            let (order, extents) = self.batch(left, true);
            if extents.is_empty() {
                break;
            }
            let done = self.call(host, MemoryOp::DECREASE_RESERVATION, order, &extents)?;
            let pages = done as u64 * (1 << order);
            self.pages -= pages;
            left = left.saturating_sub(pages);
            if done < extents.len() {
                break;
            }
        }
        Ok(())
    }

    /// Takes `n` pages above the top back.
    fn populate<H: XenHypervisor>(&mut self, host: &mut H, n: u64) -> Result<(), H::Error> {
        let mut left = n;
        while left > 0 {
            let (order, extents) = self.batch(left, false);
            if extents.is_empty() {
                break;
            }
            let done = self.call(host, MemoryOp::POPULATE_PHYSMAP, order, &extents)?;
            let pages = done as u64 * (1 << order);
            if let Ok(r) = GfnRange::new(self.pages, pages) {
                if pages > 0 {
                    self.to_touch.push(r);
                }
            }
            self.pages += pages;
            left = left.saturating_sub(pages);
            if done < extents.len() {
                break;
            }
        }
        Ok(())
    }

    /// The next batch of extents moving up to `n` pages at the top of RAM: 2 MiB extents
    /// (order 9) where the top is aligned and the move long enough, else 4 KiB extents up
    /// to the next 2 MiB boundary. Decrease takes pages just below the top, populate the
    /// pages just above it. (Linux's driver moves 4 KiB pages only; the interface allows
    /// order-9 extents to any guest, and they make a large move 512 times fewer extents.)
    fn batch(&self, n: u64, decrease: bool) -> (u32, Vec<u64>) {
        let top = self.pages;
        let n = if decrease { n.min(top) } else { n };
        if n == 0 {
            return (0, Vec::new());
        }
        let max = EXTENTS_PER_CALL as u64;
        if top % ORDER9 == 0 && n >= ORDER9 {
            let count = (n / ORDER9).min(max);
            let first = if decrease { top - count * ORDER9 } else { top };
            return (9, (0..count).map(|i| first + i * ORDER9).collect());
        }
        let to_boundary = if decrease {
            match top % ORDER9 {
                0 => ORDER9,
                r => r,
            }
        } else {
            ORDER9 - top % ORDER9
        };
        let count = n.min(to_boundary).min(max);
        let first = if decrease { top - count } else { top };
        (0, (first..first + count).collect())
    }

    /// One reservation hypercall, re-issued on its continuations; returns extents done.
    fn call<H: XenHypervisor>(
        &mut self,
        host: &mut H,
        op: MemoryOp,
        order: u32,
        extents: &[u64],
    ) -> Result<usize, H::Error> {
        let list: Vec<u8> = extents.iter().flat_map(|g| g.to_le_bytes()).collect();
        let off = (LIST_GPA - ARG_GPA) as usize;
        self.args.bytes[off..off + list.len()].copy_from_slice(&list);
        let arg = XenMemoryReservation {
            extent_start: LIST_GPA,
            nr_extents: extents.len() as u64,
            extent_order: order,
            mem_flags: MemFlags(0),
            domid: DOMID_SELF,
            _pad0: [0; 6],
        };
        self.args.bytes[..core::mem::size_of::<XenMemoryReservation>()]
            .copy_from_slice(arg.as_bytes());
        let mut cmd = MemoryOpCmd::new(op).encode().unwrap_or(0);
        loop {
            let r = host.memory_op(cmd, ARG_GPA, &mut self.args)?;
            match r.continuation {
                Some(next) => cmd = next,
                None => return Ok(usize::try_from(r.ret.max(0)).unwrap_or(0)),
            }
        }
    }
}
