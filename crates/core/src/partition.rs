//! Partitions (Xen: domains): identity, lifecycle state, pools, guest space, VPs.

use std::collections::BTreeMap;

use ballast_abi::hv::{HvPartitionPrivilegeMask, HvProximityDomainInfo};

use crate::frame::NO_FRAME;
use crate::p2m::P2m;
use crate::state::XenState;
use crate::{DomId, Mfn, PartitionId};

/// The Hyper-V partition lifecycle (the TLFS, partition management: partition states). Finalize completes in one call, so
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

/// How a VP starts (the TLFS, HvCreateVp).
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
    /// A VP in the reset state the TLFS gives for HvCreateVp.
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

/// A partition. Embedders read it through [`Hypervisor::partition`](crate::Hypervisor::partition)
/// and its getters; only the model's moves change it, so its counters, pools and p2m
/// always agree with the frame table.
#[derive(Debug, Clone)]
pub struct Partition {
    pub(crate) id: PartitionId,
    pub(crate) domid: DomId,
    pub(crate) parent: Option<PartitionId>,
    pub(crate) depth: u32,
    pub(crate) privileges: HvPartitionPrivilegeMask,
    pub(crate) state: PartitionState,
    pub(crate) home: HvProximityDomainInfo,
    pub(crate) flags: u64,
    pub(crate) pools: Vec<NodePool>,
    pub(crate) p2m: P2m,
    pub(crate) vps: BTreeMap<u32, Vp>,
    pub(crate) children: Vec<PartitionId>,
    pub(crate) init_charged: Vec<(u32, u64)>,
    pub(crate) create_charged: Vec<(u32, u64)>,
    pub(crate) gfn_limit: u64,
    pub(crate) p2m_budget: Option<u64>,
    pub(crate) xen: XenState,
}

impl Partition {
    /// Hyper-V id (never 0, never SELF, never reused).
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// Xen domain id (below DOMID_FIRST_RESERVED).
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The creator; `None` for the root.
    pub fn parent(&self) -> Option<PartitionId> {
        self.parent
    }

    /// Depth in the tree: 0 for the root.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// `HV_PARTITION_PRIVILEGE_MASK`.
    pub fn privileges(&self) -> HvPartitionPrivilegeMask {
        self.privileges
    }

    /// Lifecycle state.
    pub fn state(&self) -> PartitionState {
        self.state
    }

    /// The home node given at creation.
    pub fn home(&self) -> HvProximityDomainInfo {
        self.home
    }

    /// Creation flags.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// Pool, per node.
    pub fn pools(&self) -> &[NodePool] {
        &self.pools
    }

    /// gfn → mfn, read-only: every write goes through the model, which keeps the m2p,
    /// the counters and the effects in step with it.
    pub fn p2m(&self) -> &P2m {
        &self.p2m
    }

    /// VPs by index.
    pub fn vps(&self) -> &BTreeMap<u32, Vp> {
        &self.vps
    }

    /// Children, in creation order.
    pub fn children(&self) -> &[PartitionId] {
        &self.children
    }

    /// Pool frames charged for HvInitializePartition, per node.
    pub fn init_charged(&self) -> &[(u32, u64)] {
        &self.init_charged
    }

    /// Pool frames of the parent charged for HvCreatePartition, per node.
    pub fn create_charged(&self) -> &[(u32, u64)] {
        &self.create_charged
    }

    /// Gfns of the guest physical space are below this: the size of the partition's
    /// backing memory once the host attaches it, [`GFN_LIMIT`](crate::p2m::GFN_LIMIT)
    /// before. Nothing is mapped (or marked PoD) at or above it.
    pub fn gfn_limit(&self) -> u64 {
        self.gfn_limit
    }

    /// The host heap bytes the p2m's tables may take, when set explicitly; otherwise the
    /// default budget of [`P2mBudget`](crate::config::P2mBudget) scaled to `max_pages`.
    pub fn p2m_budget(&self) -> Option<u64> {
        self.p2m_budget
    }

    /// The partition's Xen state: accounting, populate-on-demand, paging mode, special
    /// frames.
    pub fn xen(&self) -> &XenState {
        &self.xen
    }

    /// Xen `tot_pages`: frames mapped, assigned or in the PoD cache of the partition.
    pub fn tot_pages(&self) -> u64 {
        // Hypervisor pages mapped in the p2m (shared info, grant frames) are not the
        // domain's memory.
        self.p2m.mapped() + self.xen.assigned + self.xen.pod_cache - self.xen.special_mapped
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
