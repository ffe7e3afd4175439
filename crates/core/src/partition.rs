//! Partitions (Xen: domains): identity, lifecycle state, pools, guest space, VPs.

use std::collections::BTreeMap;

use ballast_abi::hv::{HvPartitionPrivilegeMask, HvProximityDomainInfo};

use crate::frame::NO_FRAME;
use crate::p2m::P2m;
use crate::{DomId, Mfn, PartitionId};

/// The Hyper-V partition lifecycle (`hv-pool.md` §5). Finalize completes in one call, so
/// the transient Finalizing state is never observable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionState {
    /// Created, not yet initialized: may be deposited into, withdrawn from, deleted.
    Uninitialized,
    /// Running: VPs may be created; withdraw is best effort.
    Active,
    /// Torn down: only withdraw, balance and delete remain.
    Finalized,
}

/// One node's share of a partition's memory pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePool {
    /// Frames in the pool and free.
    pub available: u64,
    /// Frames in the pool holding hypervisor structures.
    pub in_use: u64,
    pub(crate) available_head: Mfn,
    pub(crate) in_use_head: Mfn,
}

impl Default for NodePool {
    fn default() -> Self {
        NodePool {
            available: 0,
            in_use: 0,
            available_head: NO_FRAME,
            in_use_head: NO_FRAME,
        }
    }
}

/// How a VP starts (seed 004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VpRunState {
    /// The boot processor (index 0): runs once its explicit suspend is cleared.
    Ready,
    /// An application processor: waits for a SIPI.
    WaitingForSipi,
}

/// A virtual processor in its architectural reset state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp {
    /// `HV_VP_INDEX`.
    pub index: u32,
    /// `HvX64RegisterInitialApicId`: the index.
    pub initial_apic_id: u32,
    /// `HvRegisterExplicitSuspend`: set at creation.
    pub explicit_suspend: bool,
    /// Ready (VP 0) or waiting for SIPI.
    pub run_state: VpRunState,
    /// Pool frames charged for it, per node (refunded on delete).
    pub charged: Vec<(u32, u64)>,
}

impl Vp {
    /// A VP in the reset state the seed describes.
    pub fn reset(index: u32, charged: Vec<(u32, u64)>) -> Self {
        Vp {
            index,
            initial_apic_id: index,
            explicit_suspend: true,
            run_state: if index == 0 {
                VpRunState::Ready
            } else {
                VpRunState::WaitingForSipi
            },
            charged,
        }
    }
}

/// A partition.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Hyper-V id (never 0, never SELF, never reused).
    pub id: PartitionId,
    /// Xen domain id (below DOMID_FIRST_RESERVED).
    pub domid: DomId,
    /// The creator; `None` for the root.
    pub parent: Option<PartitionId>,
    /// Depth in the tree: 0 for the root.
    pub depth: u32,
    /// `HV_PARTITION_PRIVILEGE_MASK`.
    pub privileges: HvPartitionPrivilegeMask,
    /// Lifecycle state.
    pub state: PartitionState,
    /// The home node given at creation.
    pub home: HvProximityDomainInfo,
    /// Creation flags.
    pub flags: u64,
    /// Pool, per node.
    pub pools: Vec<NodePool>,
    /// gfn → mfn.
    pub p2m: P2m,
    /// Frames assigned but not mapped (Xen `increase_reservation` on a translated guest).
    pub assigned: u64,
    pub(crate) assigned_head: Mfn,
    /// Xen `max_pages`.
    pub max_pages: u32,
    /// Xen outstanding claim, in pages.
    pub outstanding_claim: u32,
    /// VPs by index.
    pub vps: BTreeMap<u32, Vp>,
    /// Children, in creation order.
    pub children: Vec<PartitionId>,
    /// Pool frames charged for HvInitializePartition, per node.
    pub init_charged: Vec<(u32, u64)>,
    /// Pool frames of the parent charged for HvCreatePartition, per node.
    pub create_charged: Vec<(u32, u64)>,
    /// Pool frames charged for Xen grant-table frames (`acquire_resource`), per node.
    pub grant_charged: Vec<(u32, u64)>,
    /// Xen guest E820 map set by the toolstack (`set_memory_map`), if any.
    pub memory_map: Option<Vec<ballast_abi::xen::E820Entry>>,
    /// Xen: the guest runs with translated paging (HVM/PVH); false for PV.
    pub translated: bool,
    /// Gfns of the guest physical space are below this: the size of the partition's
    /// backing memory once the host attaches it, [`GFN_LIMIT`](crate::p2m::GFN_LIMIT)
    /// before. Nothing is mapped (or marked PoD) at or above it.
    pub gfn_limit: u64,
    /// The host heap bytes the p2m's tables may take, when set explicitly; otherwise the
    /// default budget of [`P2mBudget`](crate::config::P2mBudget) scaled to `max_pages`.
    pub p2m_budget: Option<u64>,
    /// Frames in the populate-on-demand cache (Xen `p2m->pod.count`).
    pub pod_cache: u64,
    pub(crate) pod_cache_head: Mfn,
    /// Xen: the domain has passthrough devices / I/O resources (`has_arch_io_resources`):
    /// its extent order limit is raised to `max_order_ptdom`, and populate-on-demand is
    /// refused (-ENOTEMPTY).
    pub passthrough: bool,
    /// Xen domain state the memory model does not need (PV max_pfn, target link,
    /// shared-info and grant frames).
    pub xen: crate::xen::XenDomain,
}

impl Partition {
    /// Xen `tot_pages`: frames mapped, assigned or in the PoD cache of the partition.
    pub fn tot_pages(&self) -> u64 {
        // Hypervisor pages mapped in the p2m (shared info, grant frames) are not the
        // domain's memory.
        self.p2m.mapped() + self.assigned + self.pod_cache - self.xen.special_mapped
    }

    /// Xen `p2m->pod.entry_count`: gfns marked populate-on-demand and not yet backed.
    pub fn pod_entries(&self) -> u64 {
        self.p2m.pod_entries()
    }

    /// Pool frames available, over all nodes.
    pub fn pool_available(&self) -> u64 {
        self.pools.iter().map(|p| p.available).sum()
    }

    /// Pool frames in use, over all nodes.
    pub fn pool_in_use(&self) -> u64 {
        self.pools.iter().map(|p| p.in_use).sum()
    }
}
