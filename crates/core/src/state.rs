//! State the two interfaces keep beside the memory model: Hyper-V's, for the whole
//! hypervisor, and Xen's, per partition.
//!
//! The module depends on no dispatcher, so the model (`hypervisor`, `partition`) and the
//! dispatchers (`hyperv`, `xen`) all use it without depending on each other's internals:
//! the dispatchers depend on the model, the model on neither.

use std::collections::{BTreeMap, BTreeSet};

use crate::frame::NO_FRAME;
use crate::{Mfn, PartitionId};

/// Hypervisor state that only the Hyper-V calls use.
#[derive(Debug, Clone, Default)]
pub(crate) struct HvState {
    /// Root pages in use for another purpose (the OBJECT_IN_USE hook).
    pub(crate) locked: BTreeSet<Mfn>,
    /// Per partition id, the gfns a non-root parent deposited into its pool and has not
    /// withdrawn yet: a pool frame does not remember where it came from, and a withdraw
    /// must return pages at GPAs that were deposited.
    pub(crate) origins: BTreeMap<u64, Vec<u64>>,
}

/// The Xen state of one partition (domain), beside Hyper-V's `HvState`: its accounting
/// (`tot_pages` parts, `max_pages`, the claim), populate-on-demand cache, paging mode,
/// passthrough, E820 map and special (shared-info, grant) frames. The frame moves of the
/// model keep it in step; embedders read it through [`Partition::xen`](crate::Partition::xen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenState {
    /// Frames assigned but not mapped (`increase_reservation` on a translated guest).
    pub assigned: u64,
    pub(crate) assigned_head: Mfn,
    /// Xen `max_pages`.
    pub max_pages: u32,
    /// Xen outstanding claim, in pages.
    pub outstanding_claim: u32,
    /// Pool frames charged for grant-table frames (`acquire_resource`), per node.
    pub grant_charged: Vec<(u32, u64)>,
    /// Guest E820 map set by the toolstack (`set_memory_map`), if any.
    pub memory_map: Option<Vec<ballast_abi::xen::E820Entry>>,
    /// The guest runs with translated paging (HVM/PVH); false for PV.
    pub translated: bool,
    /// Frames in the populate-on-demand cache (Xen `p2m->pod.count`).
    pub pod_cache: u64,
    pub(crate) pod_cache_head: Mfn,
    /// The domain has passthrough devices / I/O resources (`has_arch_io_resources`):
    /// its extent order limit is raised to `max_order_ptdom`, and populate-on-demand is
    /// refused (-ENOTEMPTY).
    pub passthrough: bool,
    /// PV: the arch `max_pfn` (`shared_info->arch.max_pfn`, which the toolstack and the
    /// guest set), from which `XENMEM_maximum_gpfn` answers `max(max_pfn, 1) - 1`.
    /// Unused for a translated domain, which answers with the highest gfn ever mapped.
    pub max_pfn: u64,
    /// The domain this one is a device model (or stub domain) for: Xen's `d->target`,
    /// set by `XEN_DOMCTL_set_target`. It passes the TARGET and DM_PRIV checks on it.
    pub target: Option<PartitionId>,
    /// The shared-info page, once it exists (allocated when first mapped).
    pub shared_info: Option<Mfn>,
    /// Grant table version (1 or 2; Xen starts every domain at 1).
    pub grant_version: u8,
    /// Most grant (shared) frames the table may grow to (`max_grant_frames`).
    pub max_grant_frames: u32,
    /// Highest grant table version the domain may choose (`max_grant_version`).
    pub max_grant_version: u8,
    /// Grant shared frames 0, 1, ...
    pub grant_shared: Vec<Mfn>,
    /// Grant status frames 0, 1, ... (version 2 only).
    pub grant_status: Vec<Mfn>,
    /// Hypervisor frames of this domain (shared info, grant frames) mapped in its p2m:
    /// they are in the p2m but not in `tot_pages`.
    pub(crate) special_mapped: u64,
    /// Hypervisor pages of a nested parent's child that were topped up from the host
    /// heap: they go back to the heap, not to the pool, when released.
    pub(crate) heap_topped: u64,
}

impl XenState {
    /// A new domain's state: no memory, translated, grant table version 1 growing to
    /// `max_grant_frames` frames.
    pub(crate) fn new(max_grant_frames: u32) -> Self {
        XenState {
            assigned: 0,
            assigned_head: NO_FRAME,
            // No memory until the host grants it (`set_max_pages`, or `create_guest`): a
            // partition must not be able to draw the host dry through memory_op.
            max_pages: 0,
            outstanding_claim: 0,
            grant_charged: Vec::new(),
            memory_map: None,
            translated: true,
            pod_cache: 0,
            pod_cache_head: NO_FRAME,
            passthrough: false,
            max_pfn: 0,
            target: None,
            shared_info: None,
            grant_version: 1,
            max_grant_frames,
            max_grant_version: 2,
            grant_shared: Vec::new(),
            grant_status: Vec::new(),
            special_mapped: 0,
            heap_topped: 0,
        }
    }

    /// Every hypervisor frame the domain holds: shared info and grant frames.
    pub fn special_frames(&self) -> impl Iterator<Item = Mfn> + '_ {
        self.shared_info
            .iter()
            .chain(&self.grant_shared)
            .chain(&self.grant_status)
            .copied()
    }
}
