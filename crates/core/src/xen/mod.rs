//! The Xen `memory_op` interface (`__HYPERVISOR_memory_op`, the `XENMEM_*` sub-ops of
//! Xen's `xen/include/public/memory.h`), served from the memory model.
//!
//! [`Hypervisor::memory_op`] takes the calling domain, the command word
//! (`op | start_extent << 6`), the guest address of the argument struct and the caller's
//! memory, and returns what Xen would put in `rax` ([`MemoryOpResult::ret`]): for
//! `increase_reservation`, `decrease_reservation` and `populate_physmap` the number of
//! extents done, never an error; for every other sub-op 0, a value or a negated errno
//! ([`errno`]). Why a reservation call stopped short is kept in [`MemoryOpResult::stop`]
//! for tests and logs, while the ABI value stays a count.
//!
//! [`Hypervisor::memory_op`] bounds the work of one call by a budget and returns a
//! continuation (the command word to re-issue with the same
//! argument) where Xen would preempt: between extents, exchange chunks, gmfn_range pages,
//! batch items and resource frames.
//!
//! Behaviour follows Xen's `xen/common/memory.c` (`do_memory_op` for dispatch and
//! continuations, each sub-op's handler for its checks in Xen's order; Xen 4.17, with
//! master where it differs), `xen/common/page_alloc.c` for the accounting, and
//! `xen/arch/x86/mm.c` for the x86 sub-ops, with ballast's own decisions below.
//!
//! # Privileges
//! The default XSM policy: TARGET allows a domain to act on itself; DM_PRIV (and TARGET)
//! allows the target's device model: its parent (ballast's stand-in for the domain that
//! created it) or the domain made its device model by
//! [`Hypervisor::xen_set_target`] (Xen's `d->target`); PRIV allows the control domain
//! (domid 0, the root), which also passes the other two. `DOMID_SELF` names the caller.
//! Extent orders are limited by the caller's class, as Xen's `max_order()`:
//! `max_order_domu`, raised to `max_order_ptdom` for a domain with passthrough devices
//! ([`Hypervisor::set_passthrough`]) and to `max_order_ctldom` for the control domain.
//!
//! The control domain is a PV domain (dom0 as Debian runs it); the toolstack may make it
//! PVH with [`Hypervisor::set_translated`]. HVM and PVH callers get `-ENOSYS` for
//! machine_memory_map and machphys_mapping, as Xen 4.17's `hvm_memory_op` answers.
//!
//! A domain's shared-info page and grant frames are hypervisor pages charged to its pool
//! and mapped into its p2m by add_to_physmap (module `special`); the toolstack's calls
//! (create a domain with a domid, `max_mem`, `set_target`, domain and host information)
//! are in module `domain`.
//!
//! # Guest physical space
//! Each partition has a guest-physical limit ([`Hypervisor::set_guest_physical_limit`]:
//! the size of its backing memory) and a budget of host heap for its p2m tables
//! ([`Hypervisor::set_p2m_budget`], by default scaled to `max_pages`, as Xen's toolstack
//! sizes a domain's paging pool). populate (PoD marks included), a gmfn move, exchange
//! outputs and the host's populate are refused at or past the limit (Xen's p2m answers
//! -EINVAL past the guest's physical address width: [`StopReason::BadGfn`], `-EINVAL`), and
//! when the tables they need would exceed the budget (Xen's paging pool runs dry: -ENOMEM;
//! [`StopReason::P2mMemory`], `-ENOMEM`). Both are checked for the whole extent before
//! anything is allocated or changed.
//!
//! # Populate-on-demand
//! A PoD entry is a p2m entry without a frame; the PoD cache is frames the domain holds
//! (counted in `tot_pages`) for them. populate_physmap with `XENMEMF_populate_on_demand`
//! marks entries (Xen's `guest_physmap_mark_populate_on_demand`), set_pod_target sizes the
//! cache (`p2m_pod_set_mem_target`), a guest access takes a cache frame
//! ([`Hypervisor::pod_demand_populate`], which the VMM calls on the fault), and
//! decrease_reservation drops PoD entries without freeing anything, keeps ballooned frames
//! for the cache while the entries outnumber it, and returns the cache's excess once they
//! do not (`p2m_pod_decrease_reservation`). Passthrough domains get -ENOTEMPTY.
//!
//! # Deliberate deviations from Xen
//! - Populating a gfn that is already mapped fails that extent ([`StopReason::AlreadyMapped`])
//!   instead of replacing the page and leaking the old one, as Xen does on x86 HVM. Every gfn of an
//!   extent is checked before its frames are allocated, so a failed p2m insert cannot leave
//!   an allocated page behind (Xen leaves it allocated when the insert fails).
//! - decrease_reservation checks that a whole extent is backed before removing any of it:
//!   an extent with a hole fails with nothing removed (`tests/xen_conformance.rs` case 22, where
//!   Xen removes the pages before the hole).
//! - remove_from_physmap frees the page, so `tot_pages` drops (Xen keeps it allocated).
//! - Exchange works for every partition, translated or not (Xen on x86 answers
//!   `-EOPNOTSUPP` for HVM/PVH). Each chunk is validated in full (inputs owned, outputs
//!   free or freed by the chunk, every list entry read, outputs allocated) before anything
//!   changes, so a chunk is either exchanged and counted or untouched (Xen can report a chunk whose
//!   output copy faulted as not exchanged when it was). Its
//!   input range is checked from the start of the chunk holding `nr_exchanged`, which is
//!   where reading starts.
//! - machphys_mfn_list names the 2 MiB extents of the m2p only when the host reserves them
//!   (`XenConfig::m2p_frames`, off by default so small models keep their memory); without
//!   them it answers `-ENOSYS`. ballast's m2p itself lives in the frame table: the
//!   reserved frames stand for Xen's table, their contents are not kept.
//! - acquire_resource serves the grant table (shared frames, at most the domain's
//!   `max_grant_frames`, 64 unless its creation says otherwise; status frames in version 2)
//!   from the same hypervisor pages add_to_physmap maps. The MFNs are written to
//!   `frame_list` for every caller, as for a PV caller, because ballast's p2m is
//!   single-owner and holds no foreign entries.
//! - add_to_physmap: gmfn_foreign items of a batch get `-EOPNOTSUPP` in `errs[]` for the
//!   same single-owner reason. A gmfn move, and a hypervisor page mapped at a new gfn,
//!   record an [`Effect::Move`](crate::Effect::Move) before the discard of the old gfn, so
//!   the page's bytes follow it; a hypervisor page unmapped from every gfn
//!   (remove_from_physmap, a RAM page moved onto it) loses its bytes, since the host backs
//!   guest memory per gfn. The shared-info page of a partition made by
//!   [`Hypervisor::create_domain`] exists from creation, as in Xen; one made otherwise
//!   (`create_guest`, HvCreatePartition) gets it when it first maps it, and getdomaininfo
//!   reports no frame before that.
//! - A gfn holding a hypervisor page holds no RAM: decrease_reservation and exchange fail
//!   on it ([`StopReason::NotMapped`], `-EINVAL`) with nothing changed, where Xen would
//!   drop the page's allocation reference; remove_from_physmap and add_to_physmap unhook
//!   it as Xen does.
//! - A PV exchange accepts any output gpfns (Xen only records them in the m2p). ballast's
//!   m2p holds one frame per gfn: an output page whose gpfn is beyond the guest physical
//!   space or already taken (libxenctrl passes zeros) belongs to the guest without a gfn,
//!   where Xen records the duplicate.
//! - The root's memory is the identity map of free host memory (ballast's model, see
//!   ARCHITECTURE.md): its p2m is
//!   never written. increase/populate naming the root stop with `Denied`; exchange on it
//!   answers `-EPERM`, add_to_physmap `-EACCES` (it is a PV domain). A decrease finds
//!   nothing mapped.
//! - [`Hypervisor::memory_op_to_completion`] runs every call to completion; a VMM exposing
//!   the interface to guests uses [`Hypervisor::memory_op`] with a budget, so one
//!   hypercall cannot hold the host for long (Xen preempts the same calls).
//! - Populate-on-demand is modelled page by page: a guest access backs one 4 KiB PoD entry
//!   (Xen backs a whole 2 MiB or 1 GiB PoD superpage from a cache superpage when it can),
//!   the cache is filled with single frames, decrease does not reclaim zeroed superpages
//!   (the core has no page contents), and an access with the cache empty fails
//!   ([`MemoryError::PodCacheEmpty`](crate::MemoryError::PodCacheEmpty)) where Xen sweeps for
//!   zero pages and then crashes the domain. A decrease extent over PoD entries is all or
//!   nothing like every other (a hole fails it with nothing removed).
//! - Populate, a gmfn move and exchange outputs at or past the guest-physical limit, or
//!   beyond the p2m budget, fail before any frame is allocated (Xen allocates, then fails
//!   in the p2m and frees). increase_reservation refuses frames beyond the number of gfns
//!   of the guest physical space (Xen has no such check; the frames could never be mapped).
//! - Claims gate the allocations made here; the host API and Hyper-V deposits do not look
//!   at them. Freed pages do not return to a claim (Xen master, not 4.17).
//! - A partition in the Hyper-V Finalized state counts as dying: nothing is allocated for
//!   it, frees still work.
//! - For a PV (non-translated) target, list entries naming existing pages are MFNs (a PV
//!   guest's GMFN is its MFN), so decrease and exchange take MFNs and may free frames that
//!   were assigned without a gfn.
//! - Guest handle element addresses wrap modulo 2^64 like C pointer arithmetic, while a
//!   range whose byte length overflows is a fault.
//! - gmfn_range walks backwards when the destination overlaps above the source (Xen 4.22+);
//!   its resume index counts pages done in the walking direction.

use ballast_abi::xen::{
    DOMID_FIRST_RESERVED, DOMID_SELF, MEMOP_EXTENT_SHIFT, MemFlags, MemoryOp, MemoryOpCmd,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::frame::{FrameState, MAX_ORDER, NO_FRAME, NodeSel};
use crate::guest::GuestMemory;
use crate::hypervisor::{Hypervisor, home_sel};
use crate::partition::PartitionState;
use crate::{DomId, Mfn, PartitionId};

mod domain;
mod physmap;
mod query;
mod reservation;
mod special;
#[cfg(test)]
mod tests;

/// Xen's errno values (`xen/include/public/errno.h`); sub-ops return them negated.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i64 = 1;
    /// No such file or directory.
    pub const ENOENT: i64 = 2;
    /// No such process (domain).
    pub const ESRCH: i64 = 3;
    /// I/O error.
    pub const EIO: i64 = 5;
    /// Argument list too long.
    pub const E2BIG: i64 = 7;
    /// Out of memory.
    pub const ENOMEM: i64 = 12;
    /// Permission denied.
    pub const EACCES: i64 = 13;
    /// Bad address.
    pub const EFAULT: i64 = 14;
    /// Device or resource busy.
    pub const EBUSY: i64 = 16;
    /// Cross-device link.
    pub const EXDEV: i64 = 18;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// No space left on device.
    pub const ENOSPC: i64 = 28;
    /// Argument out of domain of function.
    pub const EDOM: i64 = 33;
    /// Result out of range.
    pub const ERANGE: i64 = 34;
    /// Directory not empty (PoD with passthrough devices).
    pub const ENOTEMPTY: i64 = 39;
    /// Function not implemented.
    pub const ENOSYS: i64 = 38;
    /// Value too large for defined data type.
    pub const EOVERFLOW: i64 = 75;
    /// Illegal byte sequence.
    pub const EILSEQ: i64 = 84;
    /// Operation not supported.
    pub const EOPNOTSUPP: i64 = 95;
    /// No buffer space available.
    pub const ENOBUFS: i64 = 105;
}

use errno::*;

pub use domain::{DomainConfig, DomainInfo, HostInfo, NodeInfo, dominf};

/// Largest `nr_extents` whose count still fits a continuation (`UINT_MAX >> 6`).
pub const MAX_NR_EXTENTS: u64 = (u32::MAX >> MEMOP_EXTENT_SHIFT) as u64;

/// Grant-table frames a partition may have unless its creation says otherwise
/// ([`DomainConfig::max_grant_frames`]): Xen's default `gnttab_max_frames`.
pub const MAX_GRANT_FRAMES: u32 = 64;

/// Resource frames handled between preemption points (Xen's batch of 32).
const RESOURCE_BATCH: u64 = 32;

use ballast_abi::PAGE_SHIFT;

/// Why `increase_reservation`, `decrease_reservation` or `populate_physmap` did fewer
/// extents than asked. Xen reports all of these as the same short count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The argument struct or a list entry could not be read or written, or the list's
    /// range is not accessible.
    Fault,
    /// A malformed request: `nr_extents` above [`MAX_NR_EXTENTS`], a resume index beyond
    /// `nr_extents`, address bits of 12 or fewer, or a node the caller may not ask for.
    BadArgs,
    /// No such domain (or the caller itself is unknown).
    NoDomain,
    /// The caller may not act on the target, or populate-on-demand on itself.
    Denied,
    /// `extent_order` above the caller's limit.
    OrderTooBig,
    /// The target's `max_pages` would be exceeded.
    MaxPages,
    /// Outstanding claims of other partitions hold the memory that is left.
    Claim,
    /// No free block of the order on the allowed nodes below the address limit.
    NoMemory,
    /// A gfn of the extent is already mapped.
    AlreadyMapped,
    /// A page of the extent is not the target's (a hole, or for PV a foreign frame).
    NotMapped,
    /// The extent reaches beyond the target's guest-physical limit (the size of its
    /// backing memory, at most 2^40 gfns), or an increase would give the target more
    /// frames than its guest physical space has gfns. Xen's p2m answers -EINVAL.
    BadGfn,
    /// The target is being torn down.
    Dying,
    /// Populate-on-demand refused: the target has passthrough devices (Xen -ENOTEMPTY).
    PopulateOnDemand,
    /// The p2m tables the extent needs would exceed the target's p2m budget (Xen: its
    /// paging pool is exhausted, -ENOMEM from the p2m).
    P2mMemory,
}

impl core::fmt::Display for StopReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Fault => "guest memory fault",
            Self::BadArgs => "malformed request",
            Self::NoDomain => "no such domain",
            Self::Denied => "not permitted",
            Self::OrderTooBig => "extent order above the caller's limit",
            Self::MaxPages => "max_pages reached",
            Self::Claim => "memory held by other domains' claims",
            Self::NoMemory => "no free memory",
            Self::AlreadyMapped => "gfn already mapped",
            Self::NotMapped => "page not owned by the domain",
            Self::BadGfn => "gfn beyond the guest physical space",
            Self::Dying => "domain is dying",
            Self::PopulateOnDemand => "populate-on-demand refused with passthrough devices",
            Self::P2mMemory => "p2m table budget exhausted",
        })
    }
}

/// The outcome of one `memory_op` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryOpResult {
    /// Xen's return value: a count of extents for the reservation sub-ops, otherwise 0, a
    /// value, or a negated [`errno`]. 0 while [`continuation`](Self::continuation) is set.
    pub ret: i64,
    /// Work remains: re-issue this command word with the same argument. Only
    /// [`Hypervisor::memory_op`] produces one.
    pub continuation: Option<u64>,
    /// Why a reservation sub-op returned fewer than `nr_extents`; `None` when it completed,
    /// when it continues, and for every other sub-op.
    pub stop: Option<StopReason>,
}

impl MemoryOpResult {
    const fn value(ret: i64) -> Self {
        Self {
            ret,
            continuation: None,
            stop: None,
        }
    }

    const fn err(errno: i64) -> Self {
        Self::value(-errno)
    }

    fn rc(rc: Result<i64, i64>) -> Self {
        match rc {
            Ok(v) => Self::value(v),
            Err(e) => Self::err(e),
        }
    }

    fn count(done: u64, stop: Option<StopReason>) -> Self {
        // Counts are below 2^58 (they come from a command word), so they fit.
        Self {
            ret: done as i64,
            continuation: None,
            stop,
        }
    }

    fn resume(op: MemoryOp, next: u64) -> Self {
        Self {
            ret: 0,
            continuation: Some(u64::from(op.0) | next << MEMOP_EXTENT_SHIFT),
            stop: None,
        }
    }
}

/// Who may act on a target, under Xen's default XSM policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Xsm {
    Target,
    DmPriv,
    Priv,
}

/// Where new frames for a target come from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    pub sel: NodeSel,
    /// Frames must end at or below this MFN.
    pub limit: Mfn,
    /// Claims of every partition but the target, fixed for the call: only the target's
    /// claim changes while it runs.
    pub other_claims: u64,
}

/// One `memory_op` call in progress.
pub(crate) struct Call<'a> {
    pub caller: u32,
    pub cmd: u64,
    pub op: MemoryOp,
    pub start: u64,
    pub arg: u64,
    pub mem: &'a mut dyn GuestMemory,
    budget: u64,
    work: u64,
    /// Partitions whose assigned list holds frames this call took out of service.
    unassigned: Vec<u32>,
    /// Whether the order-0 populate and decrease of a translated guest take their fast
    /// paths. Always true outside tests; the differential test turns it off to compare
    /// the fast paths with the general one.
    pub(crate) fast_paths: bool,
}

impl Call<'_> {
    /// Records pages of work done.
    pub fn spend(&mut self, pages: u64) {
        self.work = self.work.saturating_add(pages);
    }

    /// The budget is used up; callers check only after their first unit of work, so
    /// every call makes progress.
    pub fn preempt(&self) -> bool {
        self.work >= self.budget
    }

    pub fn read<T: FromBytes + IntoBytes>(&self, addr: u64) -> Option<T> {
        let mut v = T::new_zeroed();
        self.mem.read(addr, v.as_mut_bytes()).ok()?;
        Some(v)
    }

    pub fn write<T: IntoBytes + Immutable>(&mut self, addr: u64, v: &T) -> bool {
        self.mem.write(addr, v.as_bytes()).is_ok()
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        self.mem.read_u64(addr).ok()
    }

    pub fn write_u64(&mut self, addr: u64, v: u64) -> bool {
        self.mem.write_u64(addr, v).is_ok()
    }

    /// Address of a field of the argument struct.
    pub fn field(&self, offset: usize) -> u64 {
        self.arg.wrapping_add(offset as u64)
    }

    /// Whether elements `first .. first + count` of `size` bytes each at `base` are all
    /// accessible (Xen's `guest_handle_subrange_okay`).
    pub fn array_ok(&self, base: u64, first: u64, count: u64, size: u64) -> bool {
        if count == 0 {
            return true;
        }
        match count.checked_mul(size) {
            Some(len) => self.mem.range_ok(elem(base, first, size), len),
            None => false,
        }
    }
}

/// Address of element `i` of a guest array.
pub(crate) fn elem(base: u64, i: u64, size: u64) -> u64 {
    base.wrapping_add(i.wrapping_mul(size))
}

impl Hypervisor {
    /// Serves one Xen `memory_op` hypercall from domain `caller`: `cmd` is the command
    /// word (`op | start_extent << 6`), `arg` the guest address of the sub-op's argument,
    /// `mem` the caller's memory, `budget` the work allowed in this call. Once about
    /// `budget` pages (or batch items) are done and more remain, the call stops where Xen
    /// would preempt and returns the command word to re-issue with the same `arg`. Each
    /// call does at least one unit of work, so re-issuing always terminates. Exchange
    /// keeps its progress in the guest's `nr_exchanged`, so its continuation is the same
    /// command word.
    ///
    /// This is the entry point for a guest-facing VMM: a guest cannot make one call take
    /// unbounded time. [`memory_op_to_completion`](Self::memory_op_to_completion) is the
    /// unbounded form, for trusted callers and tests.
    ///
    /// Total: any command, address and memory contents give a result, never a panic.
    /// A caller that is not a live domain gets `-ESRCH` (a count of `start_extent` for the
    /// reservation sub-ops).
    pub fn memory_op(
        &mut self,
        caller: DomId,
        cmd: u64,
        arg: u64,
        mem: &mut dyn GuestMemory,
        budget: u64,
    ) -> MemoryOpResult {
        self.memory_op_with(caller, cmd, arg, mem, budget, true)
    }

    /// [`memory_op`](Self::memory_op) with the order-0 fast paths of populate and
    /// decrease turned off: every extent takes the general path. For the differential
    /// test that holds the two paths to the same answers.
    #[cfg(test)]
    pub(crate) fn memory_op_general_path(
        &mut self,
        caller: DomId,
        cmd: u64,
        arg: u64,
        mem: &mut dyn GuestMemory,
        budget: u64,
    ) -> MemoryOpResult {
        self.memory_op_with(caller, cmd, arg, mem, budget, false)
    }

    fn memory_op_with(
        &mut self,
        caller: DomId,
        cmd: u64,
        arg: u64,
        mem: &mut dyn GuestMemory,
        budget: u64,
        fast_paths: bool,
    ) -> MemoryOpResult {
        let MemoryOpCmd { op, start_extent } = MemoryOpCmd::decode(cmd);
        let Some(caller) = self.slot_of_domid(caller) else {
            return if is_reservation(op) {
                MemoryOpResult::count(start_extent, Some(StopReason::NoDomain))
            } else {
                MemoryOpResult::err(ESRCH)
            };
        };
        let mut call = Call {
            caller,
            cmd,
            op,
            start: start_extent,
            arg,
            mem,
            budget: budget.max(1),
            work: 0,
            unassigned: Vec::new(),
            fast_paths,
        };
        let result = self.xen_dispatch(&mut call);
        self.xen_sweep_unassigned(&mut call);
        result
    }

    /// [`memory_op`](Self::memory_op) without a budget: runs to completion, so
    /// [`continuation`](MemoryOpResult::continuation) is always `None`. For trusted
    /// callers (a toolstack acting for dom0, tests); a guest can make it do work in
    /// proportion to the extents it names.
    pub fn memory_op_to_completion(
        &mut self,
        caller: DomId,
        cmd: u64,
        arg: u64,
        mem: &mut dyn GuestMemory,
    ) -> MemoryOpResult {
        self.memory_op(caller, cmd, arg, mem, u64::MAX)
    }

    /// Makes partition `id` translated (HVM/PVH, the default) or PV for the Xen interface.
    /// Toolstacks fix this when they create a domain, before it has memory; no invariant of
    /// the model depends on it, only how list entries are read and written.
    pub fn set_translated(
        &mut self,
        id: PartitionId,
        translated: bool,
    ) -> Result<(), crate::MemoryError> {
        self.xen_state_mut(id)?.translated = translated;
        Ok(())
    }

    /// Sets the PV arch `max_pfn` of partition `id` (`shared_info->arch.max_pfn`, which
    /// libxenctrl's domain builder and the PV guest write), from which
    /// `XENMEM_maximum_gpfn` answers `max(max_pfn, 1) - 1` for a PV domain.
    pub fn set_pv_max_pfn(
        &mut self,
        id: PartitionId,
        max_pfn: u64,
    ) -> Result<(), crate::MemoryError> {
        self.xen_state_mut(id)?.max_pfn = max_pfn;
        Ok(())
    }

    /// Pages claimed and not yet allocated, over all partitions (Xen's
    /// `outstanding_claims`).
    pub fn outstanding_claims(&self) -> u64 {
        self.partitions()
            .map(|p| u64::from(p.xen.outstanding_claim))
            .sum()
    }

    fn xen_dispatch(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        use MemoryOp as M;
        // Xen 4.17's hvm_memory_op refuses these to an HVM (or PVH) caller before
        // do_memory_op sees the command word, whatever its start extent.
        if self.part(c.caller).xen.translated
            && matches!(c.op, M::MACHINE_MEMORY_MAP | M::MACHPHYS_MAPPING)
        {
            return MemoryOpResult::err(ENOSYS);
        }
        let resumable = matches!(
            c.op,
            M::INCREASE_RESERVATION
                | M::DECREASE_RESERVATION
                | M::POPULATE_PHYSMAP
                | M::ADD_TO_PHYSMAP
                | M::ADD_TO_PHYSMAP_BATCH
                | M::ACQUIRE_RESOURCE
        );
        let common = resumable
            || matches!(
                c.op,
                M::EXCHANGE
                    | M::MAXIMUM_RAM_PAGE
                    | M::CURRENT_RESERVATION
                    | M::MAXIMUM_RESERVATION
                    | M::MAXIMUM_GPFN
                    | M::REMOVE_FROM_PHYSMAP
                    | M::CLAIM_PAGES
                    | M::GET_VNUMAINFO
            );
        if common && !resumable && c.start != 0 {
            return MemoryOpResult::err(EINVAL);
        }
        match c.op {
            M::INCREASE_RESERVATION | M::DECREASE_RESERVATION | M::POPULATE_PHYSMAP => {
                self.xen_reservation(c)
            }
            M::EXCHANGE => self.xen_exchange(c),
            M::MAXIMUM_RAM_PAGE => MemoryOpResult::value(i64::from(self.frames.len())),
            M::CURRENT_RESERVATION | M::MAXIMUM_RESERVATION | M::MAXIMUM_GPFN => {
                MemoryOpResult::rc(self.xen_stat_reservation(c))
            }
            M::ADD_TO_PHYSMAP => self.xen_add_to_physmap(c),
            M::ADD_TO_PHYSMAP_BATCH => self.xen_add_to_physmap_batch(c),
            M::REMOVE_FROM_PHYSMAP => MemoryOpResult::rc(self.xen_remove_from_physmap(c)),
            M::CLAIM_PAGES => MemoryOpResult::rc(self.xen_claim_pages(c)),
            M::GET_VNUMAINFO => MemoryOpResult::rc(self.xen_get_vnumainfo(c)),
            M::ACQUIRE_RESOURCE => self.xen_acquire_resource(c),
            // x86 hands everything else to arch_memory_op, which switches on the whole
            // command word: a non-zero start makes any of them an unknown command.
            _ if c.start != 0 => MemoryOpResult::err(ENOSYS),
            M::MEMORY_MAP => MemoryOpResult::rc(self.xen_memory_map(c)),
            M::MACHINE_MEMORY_MAP => MemoryOpResult::rc(self.xen_machine_memory_map(c)),
            M::SET_MEMORY_MAP => MemoryOpResult::rc(self.xen_set_memory_map(c)),
            M::MACHPHYS_MAPPING => MemoryOpResult::rc(self.xen_machphys_mapping(c)),
            M::MACHPHYS_MFN_LIST => MemoryOpResult::rc(self.xen_machphys_mfn_list(c)),
            M::SET_POD_TARGET | M::GET_POD_TARGET => self.xen_pod_target(c),
            _ => MemoryOpResult::err(ENOSYS),
        }
    }

    // -----------------------------------------------------------------------------------
    // Domains and privileges
    // -----------------------------------------------------------------------------------

    /// `rcu_lock_domain_by_any_id`: `DOMID_SELF` is the caller.
    pub(crate) fn xen_lookup(&self, caller: u32, domid: u16) -> Option<u32> {
        if domid == DOMID_SELF {
            Some(caller)
        } else {
            self.xen_lookup_id(domid)
        }
    }

    /// `rcu_lock_domain_by_id`: ids only, `DOMID_SELF` included among the unknown.
    pub(crate) fn xen_lookup_id(&self, domid: u16) -> Option<u32> {
        if domid >= DOMID_FIRST_RESERVED {
            return None;
        }
        self.slot_of_domid(DomId(domid))
    }

    pub(crate) fn xen_xsm(&self, caller: u32, target: u32, level: Xsm) -> bool {
        if level == Xsm::Target && caller == target {
            return true;
        }
        // DM_PRIV: the target's parent (ballast's stand-in for the device model that
        // created it) or its device model by XEN_DOMCTL_set_target (`d->target`).
        if level <= Xsm::DmPriv
            && (self.part(target).parent == Some(self.part(caller).id)
                || self.part(caller).xen.target == Some(self.part(target).id))
        {
            return true;
        }
        caller == Self::ROOT_SLOT
    }

    /// Xen's `max_order(current->domain)`: the domU limit, raised to the ptdom limit for
    /// a domain with passthrough devices and to the ctldom limit for the control domain.
    pub(crate) fn xen_max_order(&self, caller: u32) -> u32 {
        let x = &self.config.xen;
        let mut order = x.max_order_domu;
        if self.part(caller).xen.passthrough {
            order = order.max(x.max_order_ptdom);
        }
        if caller == Self::ROOT_SLOT {
            order = order.max(x.max_order_ctldom);
        }
        order.min(MAX_ORDER)
    }

    pub(crate) fn xen_dying(&self, slot: u32) -> bool {
        self.part(slot).state == PartitionState::Finalized
    }

    // -----------------------------------------------------------------------------------
    // Placement: mem_flags → nodes and address limit
    // -----------------------------------------------------------------------------------

    /// `order(max_page) + PAGE_SHIFT`: the address width all of the host's memory needs.
    fn xen_host_address_bits(&self) -> u32 {
        let pages = u64::from(self.frames.len()).max(1);
        pages.next_power_of_two().trailing_zeros() + PAGE_SHIFT
    }

    /// The MFN limit for `address_bits`, `None` for no limit (0, or at least the host's
    /// width). `Some(0)` for 12 bits or fewer: no memory lies below 4 KiB.
    pub(crate) fn xen_address_limit(&self, bits: u8) -> Option<Mfn> {
        let bits = u32::from(bits);
        if bits == 0 || bits >= self.xen_host_address_bits() {
            return None;
        }
        Some(if bits <= PAGE_SHIFT {
            0
        } else {
            1 << (bits - PAGE_SHIFT)
        })
    }

    /// Xen's `propagate_node`: the node the caller asks for, if it may. `Ok(None)` when
    /// no node is asked for or an unprivileged caller's plain hint is ignored.
    pub(crate) fn xen_requested_node(
        &self,
        caller: u32,
        flags: MemFlags,
    ) -> Result<Option<NodeSel>, ()> {
        let Some(node) = flags.numa_node() else {
            return Ok(None);
        };
        let exact = flags.exact_node_request();
        if caller != Self::ROOT_SLOT {
            return if exact { Err(()) } else { Ok(None) };
        }
        let node = u32::from(node);
        if node >= self.node_count() {
            return Err(());
        }
        Ok(Some(if exact {
            NodeSel::Exact(node)
        } else {
            NodeSel::Preferred(node)
        }))
    }

    /// The shared reservation checks for `mem_flags` (`construct_memop_from_reservation` and
    /// `propagate_node` in `xen/common/memory.c`): address bits, vnode, node.
    pub(crate) fn xen_reservation_placement(
        &self,
        caller: u32,
        target: u32,
        flags: MemFlags,
    ) -> Result<Placement, StopReason> {
        let bits = flags.get_address_bits();
        let limit = match self.xen_address_limit(bits) {
            None => NO_FRAME,
            Some(_) if u32::from(bits) <= PAGE_SHIFT => return Err(StopReason::BadArgs),
            Some(l) => l,
        };
        // A virtual node means something only to a domain with vNUMA, which ballast does
        // not model, so Xen ignores the node field altogether then.
        let node = if flags.vnode() {
            None
        } else {
            self.xen_requested_node(caller, flags)
                .map_err(|()| StopReason::BadArgs)?
        };
        Ok(self.xen_placement(target, node, limit))
    }

    pub(crate) fn xen_placement(
        &self,
        target: u32,
        node: Option<NodeSel>,
        limit: Mfn,
    ) -> Placement {
        let own = u64::from(self.part(target).xen.outstanding_claim);
        Placement {
            sel: node.unwrap_or_else(|| home_sel(self.part(target).home)),
            limit,
            other_claims: self.outstanding_claims() - own,
        }
    }

    // -----------------------------------------------------------------------------------
    // Frames for a target
    // -----------------------------------------------------------------------------------

    /// Allocates an extent for `target`, refcounted as Xen's `alloc_domheap_pages(d, ..)`:
    /// within `max_pages` (checked 32-bit arithmetic, XSA-385) and the claims. The frames
    /// come back in state Hypervisor; [`xen_charge_claim`](Self::xen_charge_claim) once assigned.
    pub(crate) fn xen_alloc_extent(
        &mut self,
        target: u32,
        order: u32,
        place: &Placement,
    ) -> Result<Mfn, StopReason> {
        self.xen_alloc_extent_ok(target, order, place)?;
        self.heap_alloc(place.sel, order, place.limit)
            .ok_or(StopReason::NoMemory)
    }

    /// The checks of [`xen_alloc_extent`](Self::xen_alloc_extent) before it takes a
    /// block from the heap, in Xen's order (`assign_pages`: dying, `max_pages`, claims).
    pub(crate) fn xen_alloc_extent_ok(
        &self,
        target: u32,
        order: u32,
        place: &Placement,
    ) -> Result<(), StopReason> {
        let pages = 1u64 << order;
        if self.xen_dying(target) {
            return Err(StopReason::Dying);
        }
        let p = self.part(target);
        let new_tot = u32::try_from(p.tot_pages())
            .ok()
            .zip(u32::try_from(pages).ok())
            .and_then(|(t, n)| t.checked_add(n));
        if pages > self.room(target) || new_tot.is_none() {
            return Err(StopReason::MaxPages);
        }
        let own = u64::from(p.xen.outstanding_claim);
        let claimed = place.other_claims.saturating_add(own);
        let free = self.frames.total_free();
        if claimed.saturating_add(pages) > free && own < pages {
            return Err(if pages > free {
                StopReason::NoMemory
            } else {
                StopReason::Claim
            });
        }
        Ok(())
    }

    /// An allocation owned by nobody yet (exchange outputs): no `max_pages`, and no claim
    /// of the target's to dip into.
    pub(crate) fn xen_alloc_unowned(
        &mut self,
        order: u32,
        place: &Placement,
        own_claim: u64,
    ) -> Option<Mfn> {
        let claimed = place.other_claims.saturating_add(own_claim);
        if claimed.saturating_add(1 << order) > self.frames.total_free() {
            return None;
        }
        self.heap_alloc(place.sel, order, place.limit)
    }

    /// Uses up the target's claim for pages just assigned to it.
    pub(crate) fn xen_charge_claim(&mut self, target: u32, pages: u64) {
        let p = self.part_mut(target);
        let used = u64::from(p.xen.outstanding_claim).min(pages);
        // `used` is at most the u32 claim.
        p.xen.outstanding_claim -= used as u32;
    }

    /// The pages of the extent of 2^`order` at `base` as the target names them: gfns for a
    /// translated target, MFNs for a PV one. Each comes back as (gfn if mapped, mfn); every
    /// page must be the target's.
    pub(crate) fn xen_extent_pages(
        &self,
        target: u32,
        base: u64,
        order: u32,
    ) -> Result<Vec<(Option<u64>, Mfn)>, StopReason> {
        let pages = 1u64 << order;
        let p = self.part(target);
        if p.xen.translated {
            let end = base
                .checked_add(pages)
                .filter(|&e| e <= crate::p2m::GFN_LIMIT)
                .ok_or(StopReason::BadGfn)?;
            // Hypervisor pages mapped in the p2m are not the domain's to free.
            return (base..end)
                .map(|g| {
                    p.p2m
                        .get(g)
                        .filter(|&m| self.frames.state(m) == FrameState::Mapped)
                        .map(|m| (Some(g), m))
                        .ok_or(StopReason::NotMapped)
                })
                .collect();
        }
        let end = base
            .checked_add(pages)
            .filter(|&e| e <= u64::from(self.frames.len()))
            .ok_or(StopReason::NotMapped)?;
        (base..end)
            .map(|m| {
                // Below frames.len(), which is a u32.
                let m = m as Mfn;
                let owned = |s| self.frames.state(m) == s && self.frames.owner(m) == target;
                if owned(FrameState::Mapped) {
                    Ok((Some(self.frames.link(m)), m))
                } else if owned(FrameState::Assigned) {
                    Ok((None, m))
                } else {
                    Err(StopReason::NotMapped)
                }
            })
            .collect()
    }

    /// Takes one page of the target's out of its guest memory and back to the heap.
    pub(crate) fn xen_free_page(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        gfn: Option<u64>,
        mfn: Mfn,
    ) {
        match gfn {
            Some(g) => {
                if let Some(m) = self.unmap(target, g) {
                    self.heap_free(m, 0);
                }
            }
            None => {
                // The assigned list is singly linked: mark the frame now (keeping its link
                // so the list still walks) and unlink every marked frame in one pass at
                // the end of the call, rather than walk the list once per page.
                let link = self.frames.link(mfn);
                self.frames.set(mfn, FrameState::Hypervisor, 0, link);
                self.part_mut(target).xen.assigned -= 1;
                if !c.unassigned.contains(&target) {
                    c.unassigned.push(target);
                }
            }
        }
    }

    /// Unlinks the frames [`xen_free_page`](Self::xen_free_page) marked and returns them to the
    /// heap.
    fn xen_sweep_unassigned(&mut self, c: &mut Call<'_>) {
        for slot in core::mem::take(&mut c.unassigned) {
            let mut m = self.part(slot).xen.assigned_head;
            let (mut head, mut tail) = (NO_FRAME, NO_FRAME);
            let mut freed = Vec::new();
            while m != NO_FRAME {
                let next = self.frames.link(m) as Mfn;
                if self.frames.state(m) == FrameState::Assigned {
                    if tail == NO_FRAME {
                        head = m;
                    } else {
                        self.frames.set_link(tail, u64::from(m));
                    }
                    tail = m;
                } else {
                    freed.push(m);
                }
                m = next;
            }
            if tail != NO_FRAME {
                self.frames.set_link(tail, u64::from(NO_FRAME));
            }
            self.part_mut(slot).xen.assigned_head = head;
            for m in freed {
                self.frames.set(m, FrameState::Hypervisor, 0, 0);
                self.heap_free(m, 0);
            }
        }
    }
}

fn is_reservation(op: MemoryOp) -> bool {
    matches!(
        op,
        MemoryOp::INCREASE_RESERVATION
            | MemoryOp::DECREASE_RESERVATION
            | MemoryOp::POPULATE_PHYSMAP
    )
}
