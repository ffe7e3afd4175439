//! The hypervisor: frames, partitions and the primitive moves between them.
//!
//! Every frame is in exactly one state (free in the heap, in one partition's pool, mapped
//! at one gfn of one partition, assigned unmapped to one partition, or the hypervisor's),
//! and every move below keeps it so; [`Hypervisor::check`] verifies it from scratch. The
//! Hyper-V and Xen dispatchers are built only from these moves.

use std::collections::BTreeMap;

use ballast_abi::hv::{HvPartitionPrivilegeMask, HvProximityDomainInfo};
use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::effects::{Effect, Effects};
use crate::frame::{FrameState, Frames, NO_FRAME, NodeSel};
use crate::p2m::{GFN_LIMIT, P2m};
use crate::partition::{NodePool, Partition, PartitionState};
use crate::state::{HvState, XenState};
use crate::{DomId, GfnRange, Mfn, NoSuchPartition, PartitionId};

/// The root partition's Hyper-V id.
pub const ROOT_ID: PartitionId = PartitionId(1);
/// The root partition's Xen domid (the control domain).
pub const ROOT_DOMID: DomId = DomId(0);
/// Xen's `DOMID_FIRST_RESERVED`: ordinary domids are below it (defined once, in the ABI).
pub use ballast_abi::xen::DOMID_FIRST_RESERVED;

/// Order of the 2 MiB blocks the host's populate and release move in one step.
const BLOCK_ORDER: u32 = 9;
/// Pages of such a block.
const BLOCK: u64 = 1 << BLOCK_ORDER;

/// A broken invariant, found by [`Hypervisor::check`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

/// Why a partition could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The partition limit is reached.
    #[error("the limit of {0} partitions is reached")]
    TooManyPartitions(u32),
    /// Every domid below DOMID_FIRST_RESERVED is in use.
    #[error("no free Xen domid")]
    NoDomid,
    /// The tree would be deeper than configured.
    #[error("the partition tree would exceed its depth limit")]
    TooDeep,
    /// No such parent.
    #[error(transparent)]
    NoParent(NoSuchPartition),
    /// The chosen Xen domid is taken (`XEN_DOMCTL_createdomain`: -EEXIST).
    #[error("domid {0:?} is in use")]
    DomidInUse(DomId),
    /// The chosen Xen domid is reserved (DOMID_FIRST_RESERVED or above: -EINVAL).
    #[error("domid {0:?} is reserved")]
    InvalidDomid(DomId),
    /// Grant table limits Xen refuses (`grant_table_init`: -EINVAL): no frames, more
    /// than the host allows, or a version other than 1 or 2.
    #[error("grant table limits out of range")]
    GrantTable,
    /// No memory for the domain's shared-info page.
    #[error("no memory for the shared-info page")]
    NoMemory,
}

/// Why memory could not be put into or taken out of a guest's space by the host API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// No such partition.
    #[error(transparent)]
    NoPartition(#[from] NoSuchPartition),
    /// A gfn at or beyond the partition's guest-physical limit (the size of its backing
    /// memory, at most 2^40).
    #[error("gfn {0:#x} is beyond the partition's guest physical space")]
    GfnOutOfRange(u64),
    /// The p2m tables the request needs would exceed the partition's p2m budget (bytes).
    #[error("the p2m tables would exceed the partition's budget of {0} bytes")]
    P2mBudget(u64),
    /// A guest-physical limit below a gfn that is mapped or marked PoD.
    #[error("gfn {0:#x} is in use at or above the requested guest-physical limit")]
    LimitBelowMapped(u64),
    /// A guest access to a gfn that is not a populate-on-demand entry.
    #[error("gfn {0:#x} is not a populate-on-demand entry")]
    NotPod(u64),
    /// The PoD cache is empty: Xen crashes the domain ("out of populate-on-demand
    /// memory"); the VMM should do the same.
    #[error("the populate-on-demand cache is empty")]
    PodCacheEmpty,
    /// The gfn is already mapped.
    #[error("gfn {0:#x} is already mapped")]
    AlreadyMapped(u64),
    /// The gfn is not mapped.
    #[error("gfn {0:#x} is not mapped")]
    NotMapped(u64),
    /// The heap has no frame on the allowed nodes.
    #[error("no free frame")]
    NoMemory,
    /// Xen `max_pages` would be exceeded.
    #[error("max_pages ({0}) would be exceeded")]
    MaxPages(u32),
    /// The root's memory is the identity map of free host memory, not a p2m.
    #[error("the root partition's guest space is not managed by gfn")]
    Root,
    /// A finalized partition has no guest space.
    #[error("{0:?} is finalized")]
    Finalized(PartitionId),
}

/// Why [`Hypervisor::heap_map_fresh`] mapped nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FreshMapError {
    /// The heap has no frame the placement allows.
    NoMemory,
    /// The gfn is already mapped.
    Mapped,
}

/// Why entries cannot go into a partition's guest space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpaceError {
    /// At or beyond the partition's guest-physical limit.
    BeyondLimit,
    /// The p2m tables would exceed the partition's budget (bytes).
    Budget(u64),
}

/// Why a partition could not be destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DestroyError {
    /// No such partition.
    #[error(transparent)]
    NoPartition(#[from] NoSuchPartition),
    /// The root cannot be destroyed.
    #[error("the root partition cannot be destroyed")]
    Root,
    /// Children must be destroyed first.
    #[error("{0:?} still has children")]
    HasChildren(PartitionId),
}

/// The hypervisor memory model.
#[derive(Debug, Clone)]
pub struct Hypervisor {
    pub(crate) config: Config,
    pub(crate) frames: Frames,
    pub(crate) slots: Vec<Option<Partition>>,
    pub(crate) by_id: BTreeMap<u64, u32>,
    pub(crate) by_domid: BTreeMap<u16, u32>,
    next_id: u64,
    next_domid: u16,
    pub(crate) effects: Effects,
    live: u32,
    /// State only the Hyper-V dispatcher uses (locked root pages, nested deposit origins).
    pub(crate) hv: HvState,
    /// First MFN of each 2 MiB extent holding Xen's m2p table (`XenConfig::m2p_frames`).
    pub(crate) m2p: Vec<Mfn>,
}

impl Hypervisor {
    /// A host with all memory free and the root partition (id [`ROOT_ID`], domid 0, every
    /// privilege, Active, empty pool).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let frames = Frames::with_ram(config.node_frames.len() as u32, &config.ram_ranges());
        let mut hv = Hypervisor {
            config,
            frames,
            slots: Vec::new(),
            by_id: BTreeMap::new(),
            by_domid: BTreeMap::new(),
            next_id: ROOT_ID.0,
            next_domid: ROOT_DOMID.0,
            effects: Effects::default(),
            live: 0,
            hv: Default::default(),
            m2p: Vec::new(),
        };
        if hv.config.xen.m2p_frames {
            hv.reserve_m2p()?;
        }
        let root = hv
            .new_partition(
                None,
                HvPartitionPrivilegeMask::ROOT,
                HvProximityDomainInfo::ANY,
                0,
            )
            .expect("an empty host has room for the root");
        hv.part_mut(root).state = PartitionState::Active;
        // The control domain is a PV dom0, as Debian runs it: it reads the host's
        // memory map and the m2p layout, which Xen refuses to HVM callers.
        hv.part_mut(root).xen.translated = false;
        Ok(hv)
    }

    /// Takes the 2 MiB extents of Xen's m2p table (8 bytes per host frame) out of the
    /// heap, for the host's life, as x86 Xen's `paging_init` does at boot.
    fn reserve_m2p(&mut self) -> Result<(), ConfigError> {
        const FRAMES_PER_EXTENT: u64 = (2 << 20) / 8;
        let extents = u64::from(self.frames.len()).div_ceil(FRAMES_PER_EXTENT);
        for _ in 0..extents {
            let m = self
                .heap_alloc(NodeSel::Any, 9, NO_FRAME)
                .ok_or(ConfigError::M2pDoesNotFit)?;
            for f in m..m + 512 {
                self.frames.set(f, FrameState::Reserved, 0, 0);
            }
            self.m2p.push(m);
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The frame table.
    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    /// Number of NUMA nodes.
    pub fn node_count(&self) -> u32 {
        self.frames.node_count()
    }

    /// A partition by Hyper-V id.
    pub fn partition(&self, id: PartitionId) -> Option<&Partition> {
        self.slot_of(id).map(|s| self.part(s))
    }

    /// A partition by Xen domid.
    pub fn partition_by_domid(&self, domid: DomId) -> Option<&Partition> {
        self.by_domid.get(&domid.0).map(|&s| self.part(s))
    }

    /// Every partition, root first, then by id.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.by_id.values().map(|&s| self.part(s))
    }

    /// The effects recorded since the last [`take_effects`](Self::take_effects).
    pub fn effects(&self) -> &[Effect] {
        self.effects.pending()
    }

    /// Takes the recorded effects, oldest first, for the host to apply.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.effects.take()
    }

    // -----------------------------------------------------------------------------------
    // Lookup
    // -----------------------------------------------------------------------------------

    pub(crate) fn slot_of(&self, id: PartitionId) -> Option<u32> {
        self.by_id.get(&id.0).copied()
    }

    /// The Xen state of live partition `id`, for the toolstack setters.
    pub(crate) fn xen_state_mut(
        &mut self,
        id: PartitionId,
    ) -> Result<&mut XenState, NoSuchPartition> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        Ok(&mut self.part_mut(slot).xen)
    }

    pub(crate) fn slot_of_domid(&self, domid: DomId) -> Option<u32> {
        self.by_domid.get(&domid.0).copied()
    }

    pub(crate) fn part(&self, slot: u32) -> &Partition {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    pub(crate) fn part_mut(&mut self, slot: u32) -> &mut Partition {
        self.slots[slot as usize].as_mut().expect("live slot")
    }

    pub(crate) const ROOT_SLOT: u32 = 0;

    // -----------------------------------------------------------------------------------
    // Partitions
    // -----------------------------------------------------------------------------------

    /// Creates a partition under `parent` (None: the root itself).
    pub(crate) fn new_partition(
        &mut self,
        parent: Option<u32>,
        privileges: HvPartitionPrivilegeMask,
        home: HvProximityDomainInfo,
        flags: u64,
    ) -> Result<u32, CreateError> {
        self.new_partition_as(parent, privileges, home, flags, None)
    }

    /// [`new_partition`](Self::new_partition) with the Xen domid chosen by the caller
    /// (`None`: the next free one).
    pub(crate) fn new_partition_as(
        &mut self,
        parent: Option<u32>,
        privileges: HvPartitionPrivilegeMask,
        home: HvProximityDomainInfo,
        flags: u64,
        domid: Option<DomId>,
    ) -> Result<u32, CreateError> {
        if let Some(d) = domid {
            if d.0 >= DOMID_FIRST_RESERVED {
                return Err(CreateError::InvalidDomid(d));
            }
            if self.by_domid.contains_key(&d.0) {
                return Err(CreateError::DomidInUse(d));
            }
        }
        if self.live >= self.config.limits.max_partitions {
            return Err(CreateError::TooManyPartitions(
                self.config.limits.max_partitions,
            ));
        }
        let depth = parent.map_or(0, |p| self.part(p).depth + 1);
        if depth >= self.config.limits.max_depth {
            return Err(CreateError::TooDeep);
        }
        // Domids are handed out round-robin and reused only after they are freed, as Xen
        // does; ids never are.
        let domid = match domid {
            Some(d) => d.0,
            None => {
                let d = (0..DOMID_FIRST_RESERVED)
                    .map(|i| (self.next_domid as u32 + i as u32) % DOMID_FIRST_RESERVED as u32)
                    .map(|d| d as u16)
                    .find(|d| !self.by_domid.contains_key(d))
                    .ok_or(CreateError::NoDomid)?;
                self.next_domid = (d + 1) % DOMID_FIRST_RESERVED;
                d
            }
        };
        let id = PartitionId(self.next_id);
        self.next_id += 1;
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(s) => s as u32,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let parent_id = parent.map(|p| self.part(p).id);
        self.slots[slot as usize] = Some(Partition {
            id,
            domid: DomId(domid),
            parent: parent_id,
            depth,
            privileges,
            state: PartitionState::Uninitialized,
            home,
            flags,
            pools: vec![NodePool::default(); self.frames.node_count() as usize],
            p2m: P2m::new(),
            vps: BTreeMap::new(),
            children: Vec::new(),
            init_charged: Vec::new(),
            create_charged: Vec::new(),
            // No backing memory yet: the whole p2m. The host lowers it to the memfd's
            // size when it attaches one (`set_guest_physical_limit`).
            gfn_limit: GFN_LIMIT,
            p2m_budget: None,
            xen: XenState::new(self.config.xen.max_grant_frames),
        });
        if let Some(p) = parent {
            self.part_mut(p).children.push(id);
        }
        self.by_id.insert(id.0, slot);
        self.by_domid.insert(domid, slot);
        self.live += 1;
        Ok(slot)
    }

    /// Removes a partition whose pool, guest space and children are all empty.
    pub(crate) fn remove_partition(&mut self, slot: u32) {
        let p = self.slots[slot as usize].take().expect("live slot");
        debug_assert!(p.pool_available() + p.pool_in_use() + p.tot_pages() == 0);
        debug_assert!(p.children.is_empty());
        self.by_id.remove(&p.id.0);
        self.by_domid.remove(&p.domid.0);
        if let Some(parent) = p.parent.and_then(|id| self.slot_of(id)) {
            self.part_mut(parent).children.retain(|&c| c != p.id);
        }
        self.live -= 1;
    }

    // -----------------------------------------------------------------------------------
    // Heap
    // -----------------------------------------------------------------------------------

    /// Takes a block of 2^`order` frames from the heap. The frames leave the root's
    /// identity map (a discard for the root) and come back in state Hypervisor.
    pub(crate) fn heap_alloc(&mut self, sel: NodeSel, order: u32, limit: Mfn) -> Option<Mfn> {
        let m = self.frames.alloc(sel, order, limit)?;
        self.effects.discard(ROOT_ID, m as u64, 1 << order);
        Some(m)
    }

    /// Takes the specific free frame `mfn` (a root GPA page) from the heap.
    pub(crate) fn heap_take(&mut self, mfn: Mfn) -> bool {
        if !self.frames.take(mfn) {
            return false;
        }
        self.effects.discard(ROOT_ID, mfn as u64, 1);
        true
    }

    /// Returns a block to the heap, and so to the root's identity map.
    pub(crate) fn heap_free(&mut self, mfn: Mfn, order: u32) {
        self.frames.free(mfn, order);
    }

    // -----------------------------------------------------------------------------------
    // Pools
    // -----------------------------------------------------------------------------------

    /// Puts `mfn` (state Hypervisor) into `slot`'s pool as available.
    pub(crate) fn pool_deposit(&mut self, slot: u32, mfn: Mfn) {
        let node = self.frames.node_of(mfn) as usize;
        let pool = &mut self.slots[slot as usize].as_mut().expect("live slot").pools[node];
        self.frames.set(
            mfn,
            FrameState::PoolAvailable,
            slot,
            pool.available_head as u64,
        );
        pool.available_head = mfn;
        pool.available += 1;
    }

    fn node_order(&self, sel: NodeSel) -> Vec<u32> {
        let n = self.frames.node_count();
        match sel {
            NodeSel::Any => (0..n).collect(),
            NodeSel::Exact(i) if i < n => vec![i],
            NodeSel::Exact(_) => vec![],
            NodeSel::Preferred(i) if i < n => std::iter::once(i)
                .chain((0..n).filter(|&j| j != i))
                .collect(),
            NodeSel::Preferred(_) => (0..n).collect(),
        }
    }

    /// Takes one available frame out of `slot`'s pool on the nodes `sel` allows (a
    /// preferred node first, then the nodes after it); it comes back in state Hypervisor.
    pub(crate) fn pool_take_available(&mut self, slot: u32, sel: NodeSel) -> Option<Mfn> {
        // The per-page path of a withdraw: no allocation, no node list.
        let n = self.frames.node_count();
        let (first, tries) = match sel {
            NodeSel::Exact(i) if i < n => (i, 1),
            NodeSel::Exact(_) => return None,
            NodeSel::Preferred(i) if i < n => (i, n),
            _ => (0, n),
        };
        for k in 0..tries {
            let node = ((first + k) % n) as usize;
            let head = self.part(slot).pools[node].available_head;
            if head == NO_FRAME {
                continue;
            }
            let next = self.frames.link(head) as Mfn;
            let pool = &mut self.part_mut(slot).pools[node];
            pool.available_head = next;
            pool.available -= 1;
            self.frames.set(head, FrameState::Hypervisor, 0, 0);
            return Some(head);
        }
        None
    }

    /// Moves `pages` frames of `slot`'s pool from available to in use, on the nodes `sel`
    /// allows (in order). All or nothing: `None` leaves the pool untouched.
    pub(crate) fn pool_charge(
        &mut self,
        slot: u32,
        pages: u64,
        sel: NodeSel,
    ) -> Option<Vec<(u32, u64)>> {
        let order = self.node_order(sel);
        let avail: u64 = order
            .iter()
            .map(|&n| self.part(slot).pools[n as usize].available)
            .sum();
        if avail < pages {
            return None;
        }
        let mut charged = Vec::new();
        let mut left = pages;
        for node in order {
            if left == 0 {
                break;
            }
            let take = left.min(self.part(slot).pools[node as usize].available);
            for _ in 0..take {
                let pool = &mut self.slots[slot as usize].as_mut().expect("live slot").pools
                    [node as usize];
                let m = pool.available_head;
                pool.available_head = self.frames.link(m) as Mfn;
                pool.available -= 1;
                self.frames
                    .set(m, FrameState::PoolInUse, slot, pool.in_use_head as u64);
                pool.in_use_head = m;
                pool.in_use += 1;
            }
            if take > 0 {
                charged.push((node, take));
            }
            left -= take;
        }
        Some(charged)
    }

    /// Moves charged frames of `slot`'s pool back from in use to available.
    pub(crate) fn pool_release(&mut self, slot: u32, charged: &[(u32, u64)]) {
        for &(node, count) in charged {
            for _ in 0..count {
                let pool = &mut self.slots[slot as usize].as_mut().expect("live slot").pools
                    [node as usize];
                let m = pool.in_use_head;
                debug_assert!(m != NO_FRAME, "releasing more than was charged");
                pool.in_use_head = self.frames.link(m) as Mfn;
                pool.in_use -= 1;
                self.frames.set(
                    m,
                    FrameState::PoolAvailable,
                    slot,
                    pool.available_head as u64,
                );
                pool.available_head = m;
                pool.available += 1;
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Guest physical space
    // -----------------------------------------------------------------------------------

    /// Maps `mfn` (state Hypervisor) at the unmapped `gfn < GFN_LIMIT` of `slot`.
    pub(crate) fn map(&mut self, slot: u32, gfn: u64, mfn: Mfn) {
        let old = self.part_mut(slot).p2m.set(gfn, mfn);
        debug_assert!(old.is_none(), "map over a mapped gfn");
        self.frames.set(mfn, FrameState::Mapped, slot, gfn);
    }

    /// Takes one frame from the heap and maps it at `gfn` of `slot` if that gfn is
    /// unmapped, in one p2m walk: the same end state and effects as
    /// [`heap_alloc`](Self::heap_alloc) then [`map`](Self::map), for the populate of a
    /// balloon, where the gfn is almost always free. A mapped gfn hands the frame back
    /// untouched, with no effect recorded.
    pub(crate) fn heap_map_fresh(
        &mut self,
        slot: u32,
        gfn: u64,
        sel: NodeSel,
        limit: Mfn,
    ) -> Result<Mfn, FreshMapError> {
        let m = self
            .frames
            .alloc(sel, 0, limit)
            .ok_or(FreshMapError::NoMemory)?;
        if self.part_mut(slot).p2m.set_if_empty(gfn, m).is_some() {
            self.frames.free(m, 0);
            return Err(FreshMapError::Mapped);
        }
        self.effects.discard(ROOT_ID, u64::from(m), 1);
        self.frames.set(m, FrameState::Mapped, slot, gfn);
        Ok(m)
    }

    /// Unmaps `gfn` of `slot`, recording its discard; the frame comes back in state
    /// Hypervisor for the caller to free or reuse. A gfn holding one of the partition's
    /// hypervisor pages (Xen shared info, grant frames) holds no RAM: it stays mapped and
    /// the answer is `None`.
    pub(crate) fn unmap(&mut self, slot: u32, gfn: u64) -> Option<Mfn> {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        let mfn = p.p2m.remove(gfn)?;
        if self.frames.state(mfn) == FrameState::Special {
            // Rare: put it back (the emptied table, if any, is reused from the spares).
            p.p2m.set(gfn, mfn);
            return None;
        }
        let id = p.id;
        self.frames.set(mfn, FrameState::Hypervisor, 0, 0);
        self.effects.discard(id, gfn, 1);
        Some(mfn)
    }

    /// Records `mfn` (state Hypervisor) as assigned to `slot` without a gfn.
    pub(crate) fn assign_unmapped(&mut self, slot: u32, mfn: Mfn) {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        self.frames
            .set(mfn, FrameState::Assigned, slot, p.xen.assigned_head as u64);
        p.xen.assigned_head = mfn;
        p.xen.assigned += 1;
    }

    /// Room left under `slot`'s Xen `max_pages`.
    pub(crate) fn room(&self, slot: u32) -> u64 {
        let p = self.part(slot);
        (p.xen.max_pages as u64).saturating_sub(p.tot_pages())
    }

    /// The p2m table budget of `slot`, in bytes.
    pub(crate) fn p2m_budget_of(&self, slot: u32) -> u64 {
        let p = self.part(slot);
        p.p2m_budget
            .unwrap_or_else(|| self.config.p2m.for_max_pages(p.xen.max_pages))
    }

    /// Whether entries at every gfn of `start .. start + count` of `slot` fit its guest
    /// space: below its guest-physical limit, with the p2m tables they need within its
    /// budget. Checked before any side effect, so a refused extent changes nothing.
    pub(crate) fn guest_space_ok(
        &self,
        slot: u32,
        start: u64,
        count: u64,
    ) -> Result<(), SpaceError> {
        let p = self.part(slot);
        if start.checked_add(count).is_none_or(|e| e > p.gfn_limit) {
            return Err(SpaceError::BeyondLimit);
        }
        let budget = self.p2m_budget_of(slot);
        let have = p.p2m.table_bytes();
        // The walk only when it could matter: far from the budget nothing can exceed it.
        let worst = count
            .div_ceil(512)
            .saturating_add(2)
            .saturating_mul(crate::p2m::MAX_BYTES_PER_GFN);
        // A budget already exceeded (lowered, or max_pages lowered) stops growth only.
        if have.saturating_add(worst) > budget {
            let new = p.p2m.new_table_bytes(start, count);
            if new > 0 && have + new > budget {
                return Err(SpaceError::Budget(budget));
            }
        }
        Ok(())
    }

    /// Returns every frame of `slot`'s guest space (mapped, assigned or in the PoD cache)
    /// to the heap.
    pub(crate) fn release_guest_memory(&mut self, slot: u32) {
        // The partition's hypervisor pages go back to its pool first, out of its p2m.
        self.xen_special_release(slot);
        while let Some(m) = self.pod_cache_take(slot) {
            self.heap_free(m, 0);
        }
        for (start, count) in self.part(slot).p2m.pod_ranges_up_to(usize::MAX) {
            for gfn in start..start + count {
                self.part_mut(slot).p2m.remove_pod(gfn);
            }
        }
        let gfns: Vec<u64> = self.part(slot).p2m.iter().map(|(g, _)| g).collect();
        for gfn in gfns {
            if let Some(m) = self.unmap(slot, gfn) {
                self.heap_free(m, 0);
            }
        }
        loop {
            let m = self.part(slot).xen.assigned_head;
            if m == NO_FRAME {
                break;
            }
            let next = self.frames.link(m) as Mfn;
            let p = self.part_mut(slot);
            p.xen.assigned_head = next;
            p.xen.assigned -= 1;
            self.frames.set(m, FrameState::Hypervisor, 0, 0);
            self.heap_free(m, 0);
        }
    }

    /// Puts `mfn` (state Hypervisor) into `slot`'s PoD cache.
    pub(crate) fn pod_cache_add(&mut self, slot: u32, mfn: Mfn) {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        self.frames
            .set(mfn, FrameState::PodCache, slot, p.xen.pod_cache_head as u64);
        p.xen.pod_cache_head = mfn;
        p.xen.pod_cache += 1;
    }

    /// Takes a frame out of `slot`'s PoD cache; it comes back in state Hypervisor.
    pub(crate) fn pod_cache_take(&mut self, slot: u32) -> Option<Mfn> {
        let m = self.part(slot).xen.pod_cache_head;
        if m == NO_FRAME {
            return None;
        }
        let next = self.frames.link(m) as Mfn;
        let p = self.part_mut(slot);
        p.xen.pod_cache_head = next;
        p.xen.pod_cache -= 1;
        self.frames.set(m, FrameState::Hypervisor, 0, 0);
        Some(m)
    }

    // -----------------------------------------------------------------------------------
    // Host API: guest memory by range
    // -----------------------------------------------------------------------------------

    /// Sets the guest-physical limit of partition `id`: gfns from `gfn_limit` up are
    /// outside its guest space, so nothing may be mapped (or marked populate-on-demand)
    /// there, by the guest or by the host. The host sets it to the size of the memory it
    /// attaches (in pages) and raises it when it grows that memory (a hot-add); a new
    /// partition has the whole 2^40-gfn p2m, for embedders that back guest memory some
    /// other way. Xen refuses such gfns in its p2m (`p2m_set_entry` answers -EINVAL past
    /// the guest's physical address width), and so does ballast, for the same reason:
    /// a page past the backing memory has nowhere to live.
    ///
    /// The limit may be lowered only down to just above the highest gfn in use.
    pub fn set_guest_physical_limit(
        &mut self,
        id: PartitionId,
        gfn_limit: u64,
    ) -> Result<(), MemoryError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        if gfn_limit > GFN_LIMIT {
            return Err(MemoryError::GfnOutOfRange(gfn_limit));
        }
        if let Some(g) = self.part(slot).p2m.highest_entry() {
            if g >= gfn_limit {
                return Err(MemoryError::LimitBelowMapped(g));
            }
        }
        self.part_mut(slot).gfn_limit = gfn_limit;
        Ok(())
    }

    /// Sets the budget of host heap, in bytes, that partition `id`'s p2m tables may use
    /// (`None`: the configured default scaled to its `max_pages`, [`Config::p2m`]). Xen's
    /// toolstack sizes a domain's paging pool the same way
    /// (`XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION`). A budget below what the tables already use
    /// stops further growth only: nothing is taken away.
    pub fn set_p2m_budget(
        &mut self,
        id: PartitionId,
        bytes: Option<u64>,
    ) -> Result<(), MemoryError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        self.part_mut(slot).p2m_budget = bytes;
        Ok(())
    }

    /// The p2m table budget of partition `id` in bytes, and what its tables use now.
    pub fn p2m_usage(&self, id: PartitionId) -> Option<(u64, u64)> {
        let slot = self.slot_of(id)?;
        Some((self.p2m_budget_of(slot), self.part(slot).p2m.table_bytes()))
    }

    /// Marks partition `id` as having passthrough devices (Xen: I/O resources assigned):
    /// its memory_op extent order limit becomes at least `max_order_ptdom`, and
    /// populate-on-demand is refused for it, as Xen refuses PoD with passthrough.
    pub fn set_passthrough(
        &mut self,
        id: PartitionId,
        passthrough: bool,
    ) -> Result<(), MemoryError> {
        self.xen_state_mut(id)?.passthrough = passthrough;
        Ok(())
    }

    /// A guest access to the populate-on-demand entry at `gfn` of partition `id`, as the
    /// VMM reports it from the fault (Xen's `p2m_pod_demand_populate`): a frame from the
    /// PoD cache is mapped there. `tot_pages` does not change (the frame was already the
    /// partition's); the PoD entries and the cache each go down by one. Returns the frame.
    ///
    /// With the cache empty, Xen sweeps for zero pages and then crashes the domain; the
    /// core has no page contents to sweep, so it answers [`MemoryError::PodCacheEmpty`]
    /// and the VMM should stop the guest.
    pub fn pod_demand_populate(&mut self, id: PartitionId, gfn: u64) -> Result<Mfn, MemoryError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        if !self.part(slot).p2m.is_pod(gfn) {
            return Err(MemoryError::NotPod(gfn));
        }
        let m = self
            .pod_cache_take(slot)
            .ok_or(MemoryError::PodCacheEmpty)?;
        // The entry's tables exist: replacing it allocates nothing. The gfn's backing was
        // discarded when it last left the guest space, so the guest reads zeros.
        self.map(slot, gfn, m);
        Ok(m)
    }

    /// Backs `count` gfns from `start` of partition `id` with fresh frames (any node,
    /// preferring the partition's home): the host's way to give a guest RAM (boot memory,
    /// an unballoon, a hot-add). Counts against Xen `max_pages`; the gfns must be below the
    /// partition's guest-physical limit and their p2m tables within its budget, as for the
    /// guest's own calls. A PoD entry in the range is replaced. All or nothing.
    pub fn populate(&mut self, id: PartitionId, start: u64, count: u64) -> Result<(), MemoryError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        if slot == Self::ROOT_SLOT {
            return Err(MemoryError::Root);
        }
        if self.part(slot).state == PartitionState::Finalized {
            return Err(MemoryError::Finalized(id));
        }
        let limit = self.part(slot).gfn_limit;
        let end = start.checked_add(count).filter(|&e| e <= limit);
        let end = end.ok_or(MemoryError::GfnOutOfRange(start.saturating_add(count)))?;
        // The cheap refusals first: the scan below is as long as the request.
        if self.room(slot) < count {
            return Err(MemoryError::MaxPages(self.part(slot).xen.max_pages));
        }
        if self.frames.total_free() < count {
            return Err(MemoryError::NoMemory);
        }
        if let Some(g) = self.part(slot).p2m.first_frame(start, count) {
            return Err(MemoryError::AlreadyMapped(g));
        }
        if let Err(SpaceError::Budget(b)) = self.guest_space_ok(slot, start, count) {
            return Err(MemoryError::P2mBudget(b));
        }
        let sel = home_sel(self.part(slot).home);
        let mut gfn = start;
        while gfn < end {
            // A 2 MiB-aligned run takes a 2 MiB block in one allocation (as Xen backs a
            // guest's order-9 extents), so a large populate costs one buddy operation per
            // 512 pages; a fragmented heap falls back to single frames.
            if gfn % BLOCK == 0 && end - gfn >= BLOCK {
                if let Some(m) = self.heap_alloc(sel, BLOCK_ORDER, NO_FRAME) {
                    self.map_block(slot, gfn, m);
                    gfn += BLOCK;
                    continue;
                }
            }
            let m = self
                .heap_alloc(sel, 0, NO_FRAME)
                .ok_or(MemoryError::NoMemory)?;
            self.map(slot, gfn, m);
            gfn += 1;
        }
        Ok(())
    }

    /// Unmaps the given gfn ranges of partition `id` and returns their frames to the
    /// heap: the host's way to take RAM back (a balloon). Every range is checked before
    /// any is touched: an unmapped gfn refuses the whole call.
    pub fn release(&mut self, id: PartitionId, ranges: &[GfnRange]) -> Result<u64, MemoryError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        if slot == Self::ROOT_SLOT {
            return Err(MemoryError::Root);
        }
        // Every range ends at or below GFN_LIMIT: `GfnRange` cannot be built otherwise.
        // Neighbouring ranges are checked as one run: the same gfns in the same order, so
        // the same first one refused.
        let p2m = &self.part(slot).p2m;
        let mut i = 0;
        while let Some(r) = ranges.get(i) {
            let mut end = r.end();
            i += 1;
            while let Some(next) = ranges.get(i).filter(|n| n.start() == end) {
                end = next.end();
                i += 1;
            }
            let ram = |m| self.frames.state(m) == FrameState::Mapped;
            if let Some(g) = p2m.first_not(r.start(), end, ram) {
                return Err(MemoryError::NotMapped(g));
            }
        }
        // A range holding an aligned 2 MiB block may free it as one block. A range that
        // holds none is released page by page, in order; so is a run of such ranges,
        // each starting where the last ended (a balloon of 4 KiB pages names one page
        // per range), which is the same pages in the same order: they go as one run,
        // walking each p2m leaf once.
        let holds_block = |r: &GfnRange| r.start().next_multiple_of(BLOCK) + BLOCK <= r.end();
        let mut released = 0;
        let mut i = 0;
        while i < ranges.len() {
            let r = ranges[i];
            i += 1;
            if holds_block(&r) {
                released += self.release_run(slot, r.start(), r.end());
                continue;
            }
            let mut end = r.end();
            while let Some(next) = ranges
                .get(i)
                .filter(|n| n.start() == end && !holds_block(n))
            {
                end = next.end();
                i += 1;
            }
            released += self.unmap_run(slot, r.start(), end, |frames, m| frames.free(m, 0));
        }
        Ok(released)
    }

    /// The first gfn of `[start, start + count)` of `slot` that is not RAM (a hole, a PoD
    /// entry, a hypervisor page), leaf by leaf.
    pub(crate) fn first_not_ram(&self, slot: u32, start: u64, count: u64) -> Option<u64> {
        let frames = &self.frames;
        self.part(slot)
            .p2m
            .first_not(start, start.saturating_add(count), |m| {
                frames.state(m) == FrameState::Mapped
            })
    }

    /// Maps the 2 MiB-aligned block of `BLOCK` frames from `base` (state Hypervisor) at
    /// the unmapped 2 MiB of `slot` from `gfn`: one p2m leaf written in one step where the
    /// 2 MiB is empty, page by page where it holds PoD entries.
    fn map_block(&mut self, slot: u32, gfn: u64, base: Mfn) {
        if self.part_mut(slot).p2m.put_block(gfn, base) {
            for i in 0..BLOCK {
                self.frames
                    .set(base + i as Mfn, FrameState::Mapped, slot, gfn + i);
            }
        } else {
            for i in 0..BLOCK {
                self.map(slot, gfn + i, base + i as Mfn);
            }
        }
    }

    /// Unmaps the 2 MiB of `slot` from `gfn` (aligned) in one step if all of it is RAM,
    /// returning its frames to the heap (as one block when they form one) and how many;
    /// `None`, changing nothing, if any gfn of it is not RAM.
    fn release_block(&mut self, slot: u32, gfn: u64) -> Option<u64> {
        let frames = &self.frames;
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        let block = p
            .p2m
            .take_block(gfn, |m| frames.state(m) == FrameState::Mapped)?;
        let id = p.id;
        for &m in &block {
            self.frames.set(m, FrameState::Hypervisor, 0, 0);
        }
        self.effects.discard(id, gfn, BLOCK);
        self.free_run(&block);
        Some(BLOCK)
    }

    /// Returns `BLOCK` unmapped frames to the heap: as one block when they are one
    /// aligned 2 MiB block of one node (node ranges need not be 2 MiB-aligned, and a run
    /// of single frames can straddle two nodes), one by one otherwise.
    fn free_run(&mut self, block: &[Mfn]) {
        let whole = block.len() == BLOCK as usize
            && block[0] % BLOCK as Mfn == 0
            && block
                .iter()
                .enumerate()
                .all(|(i, &m)| m == block[0] + i as Mfn)
            && self
                .frames
                .node_range(self.frames.node_of(block[0]))
                .contains(&(block[0] + (BLOCK - 1) as Mfn));
        if whole {
            self.heap_free(block[0], BLOCK_ORDER);
        } else {
            for &m in block {
                self.heap_free(m, 0);
            }
        }
    }

    /// Unmaps the gfns of `[start, end)` of `slot` that are mapped and returns their
    /// frames to the heap; returns how many. The caller has checked that they are RAM.
    /// A 2 MiB-aligned run whose frames form one aligned 2 MiB block of one node (what a
    /// block populate or an order-9 extent made) goes back to the heap as one block.
    pub(crate) fn release_run(&mut self, slot: u32, start: u64, end: u64) -> u64 {
        let mut released = 0;
        let mut gfn = start;
        while gfn < end {
            if gfn % BLOCK == 0 && end - gfn >= BLOCK {
                // A whole leaf of RAM goes in one step; anything else gfn by gfn.
                if let Some(n) = self.release_block(slot, gfn) {
                    released += n;
                    gfn += BLOCK;
                    continue;
                }
                let mut block = [0 as Mfn; BLOCK as usize];
                let mut n = 0;
                self.unmap_run(slot, gfn, gfn + BLOCK, |_, m| {
                    block[n] = m;
                    n += 1;
                });
                self.free_run(&block[..n]);
                released += n as u64;
                gfn += BLOCK;
                continue;
            }
            // Page by page up to the next aligned block that fits, or the end. A gfn
            // listed twice is released once: the second time it is a hole.
            let next_block = gfn.next_multiple_of(BLOCK);
            let stop = if next_block > gfn && end - next_block.min(end) >= BLOCK {
                next_block
            } else {
                end
            };
            released += self.unmap_run(slot, gfn, stop, |frames, m| frames.free(m, 0));
            gfn = stop;
        }
        released
    }

    /// [`unmap`](Self::unmap) of every gfn of `[start, end)` of `slot` in order, one
    /// walk of each p2m leaf; `then` gets each frame unmapped right after its unmap, as a
    /// caller of `unmap` would have it. Returns how many were unmapped.
    fn unmap_run(
        &mut self,
        slot: u32,
        start: u64,
        end: u64,
        mut then: impl FnMut(&mut Frames, Mfn),
    ) -> u64 {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        let id = p.id;
        let (frames, effects) = (&mut self.frames, &mut self.effects);
        // Discards are recorded a run of neighbouring gfns at a time, the queue left as
        // page by page would leave it: the run's first page meets the effect before it
        // as a page alone would (appended or prepended to it, or not), and each later
        // page is appended to the effect holding the page before it exactly when that
        // effect ends there, which is what recording the rest as one range does.
        let record = |effects: &mut Effects, s: u64, c: u64| {
            effects.discard(id, s, 1);
            if c > 1 {
                effects.discard(id, s + 1, c - 1);
            }
        };
        let mut pending: Option<(u64, u64)> = None;
        let n = p.p2m.remove_run(start, end, |gfn, mfn| {
            if frames.state(mfn) == FrameState::Special {
                // Stays mapped, as `unmap` leaves it.
                return false;
            }
            frames.set(mfn, FrameState::Hypervisor, 0, 0);
            pending = match pending {
                Some((s, c)) if s + c == gfn => Some((s, c + 1)),
                Some((s, c)) => {
                    record(effects, s, c);
                    Some((gfn, 1))
                }
                None => Some((gfn, 1)),
            };
            then(frames, mfn);
            true
        });
        if let Some((s, c)) = pending {
            record(&mut self.effects, s, c);
        }
        n
    }

    /// Creates a guest as a toolstack would (Xen `XEN_DOMCTL_createdomain`): a child of
    /// the root, already Active, with the given `max_pages` and home node, charged to no
    /// pool. Hyper-V callers create partitions with HvCreatePartition instead.
    pub fn create_guest(
        &mut self,
        max_pages: u32,
        home: HvProximityDomainInfo,
    ) -> Result<PartitionId, CreateError> {
        let slot = self.new_partition(
            Some(Self::ROOT_SLOT),
            HvPartitionPrivilegeMask::NONE,
            home,
            0,
        )?;
        let p = self.part_mut(slot);
        p.state = PartitionState::Active;
        p.xen.max_pages = max_pages;
        Ok(p.id)
    }

    /// Tears a partition down whatever its state, as a toolstack destroying a domain:
    /// its guest memory and its whole pool go back to the heap (with discards), the pool
    /// frames it was charged in its parent's pool are released, and its ids become
    /// invalid. A partition with children must lose them first.
    pub fn destroy_partition(&mut self, id: PartitionId) -> Result<(), DestroyError> {
        let slot = self.slot_of(id).ok_or(NoSuchPartition(id))?;
        if slot == Self::ROOT_SLOT {
            return Err(DestroyError::Root);
        }
        if !self.part(slot).children.is_empty() {
            return Err(DestroyError::HasChildren(id));
        }
        self.release_guest_memory(slot);
        let p = self.part_mut(slot);
        p.vps.clear();
        p.init_charged.clear();
        p.xen.grant_charged.clear();
        for node in 0..p.pools.len() {
            let pool = &mut self.slots[slot as usize].as_mut().expect("live slot").pools[node];
            let (mut a, mut u) = (pool.available_head, pool.in_use_head);
            *pool = NodePool::default();
            for head in [&mut a, &mut u] {
                while *head != NO_FRAME {
                    let m = *head;
                    *head = self.frames.link(m) as Mfn;
                    self.frames.set(m, FrameState::Hypervisor, 0, 0);
                    self.heap_free(m, 0);
                }
            }
        }
        let charged = core::mem::take(&mut self.part_mut(slot).create_charged);
        if let Some(parent) = self.part(slot).parent.and_then(|p| self.slot_of(p)) {
            self.pool_release(parent, &charged);
        }
        self.remove_partition(slot);
        Ok(())
    }

    /// A free frame the root could deposit, on the nodes `sel` allows, without taking it
    /// (the root's own page allocator, as `alloc_page` is for Linux's root).
    pub fn root_free_page(&self, sel: NodeSel) -> Option<u64> {
        self.frames.peek_free(sel).map(u64::from)
    }

    /// Sets Xen `max_pages` of partition `id` (`XEN_DOMCTL_max_mem`); it may go below
    /// `tot_pages`, after which only frees succeed.
    pub fn set_max_pages(&mut self, id: PartitionId, max_pages: u32) -> Result<(), MemoryError> {
        self.xen_state_mut(id)?.max_pages = max_pages;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Invariants
    // -----------------------------------------------------------------------------------

    /// Verifies, from scratch, that every frame is in exactly one place and every count
    /// agrees: the heap's own structure; each mapped frame's m2p entry and its owner's p2m
    /// agree; pool lists hold exactly their frames and match their counts; every owned
    /// frame's owner exists; conservation over all states.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        let err = |s: String| Err(InvariantViolation(s));
        if let Err(e) = self.frames.check() {
            return err(e);
        }
        let n = self.slots.len();
        let mut mapped = vec![0u64; n];
        let mut assigned = vec![0u64; n];
        let mut pool_avail = vec![0u64; n];
        let mut pool_used = vec![0u64; n];
        let mut pod_cache = vec![0u64; n];
        let mut free = 0u64;
        let mut reserved = 0u64;
        let mut special = vec![0u64; n];
        for mfn in 0..self.frames.len() {
            let st = self.frames.state(mfn);
            if st == FrameState::Free {
                free += 1;
                continue;
            }
            if st == FrameState::Absent {
                continue;
            }
            if st == FrameState::Hypervisor {
                return err(format!(
                    "frame {mfn} held by the hypervisor outside an operation"
                ));
            }
            if st == FrameState::Reserved {
                reserved += 1;
                continue;
            }
            let slot = self.frames.owner(mfn) as usize;
            let Some(Some(p)) = self.slots.get(slot) else {
                return err(format!("frame {mfn} ({st:?}) owned by dead slot {slot}"));
            };
            match st {
                FrameState::Mapped => {
                    let gfn = self.frames.link(mfn);
                    if p.p2m.get(gfn) != Some(mfn) {
                        return err(format!(
                            "m2p says frame {mfn} is gfn {gfn:#x} of {:?}, p2m says {:?}",
                            p.id,
                            p.p2m.get(gfn)
                        ));
                    }
                    mapped[slot] += 1;
                }
                FrameState::Assigned => assigned[slot] += 1,
                FrameState::PoolAvailable => pool_avail[slot] += 1,
                FrameState::PoolInUse => pool_used[slot] += 1,
                FrameState::PodCache => pod_cache[slot] += 1,
                FrameState::Special => special[slot] += 1,
                FrameState::Free
                | FrameState::Absent
                | FrameState::Hypervisor
                | FrameState::Reserved => unreachable!(),
            }
        }
        if free != self.frames.total_free() {
            return err(format!(
                "{free} frames free, heap counts {}",
                self.frames.total_free()
            ));
        }
        if reserved != 512 * self.m2p.len() as u64
            || self
                .m2p
                .iter()
                .any(|&m| (m..m + 512).any(|f| self.frames.state(f) != FrameState::Reserved))
        {
            return err(format!(
                "{reserved} reserved frames, m2p extents {:?}",
                self.m2p
            ));
        }
        let mut total = free + reserved;
        for (slot, p) in self.slots.iter().enumerate() {
            let Some(p) = p else { continue };
            if self.by_id.get(&p.id.0) != Some(&(slot as u32))
                || self.by_domid.get(&p.domid.0) != Some(&(slot as u32))
            {
                return err(format!("{:?} not indexed at slot {slot}", p.id));
            }
            // The partition's hypervisor pages: each Special, its own, listed once.
            let mut specials: Vec<Mfn> = p.xen.special_frames().collect();
            specials.sort_unstable();
            let mut special_node = vec![0u64; p.pools.len()];
            for (i, &m) in specials.iter().enumerate() {
                if m >= self.frames.len()
                    || self.frames.state(m) != FrameState::Special
                    || self.frames.owner(m) as usize != slot
                    || specials.get(i + 1) == Some(&m)
                {
                    return err(format!("{:?}: hypervisor page {m} is not its own", p.id));
                }
                special_node[self.frames.node_of(m) as usize] += 1;
            }
            if specials.len() as u64 != special[slot] {
                return err(format!(
                    "{:?}: {} hypervisor pages listed, {} in the frame table",
                    p.id,
                    specials.len(),
                    special[slot]
                ));
            }
            let mut special_mapped = 0u64;
            for (gfn, mfn) in p.p2m.iter() {
                let st = self.frames.state(mfn);
                if (st != FrameState::Mapped && st != FrameState::Special)
                    || self.frames.owner(mfn) as usize != slot
                    || self.frames.link(mfn) != gfn
                {
                    return err(format!(
                        "{:?}: gfn {gfn:#x} → frame {mfn} not mapped back",
                        p.id
                    ));
                }
                special_mapped += u64::from(st == FrameState::Special);
            }
            if p.p2m.mapped() != mapped[slot] + special_mapped
                || special_mapped != p.xen.special_mapped
            {
                return err(format!(
                    "{:?}: p2m maps {} gfns, {} frames say they are mapped there ({} of \
                     them hypervisor pages, counted {})",
                    p.id,
                    p.p2m.mapped(),
                    mapped[slot] + special_mapped,
                    special_mapped,
                    p.xen.special_mapped
                ));
            }
            if p.xen.assigned != assigned[slot]
                || self.list_len(p.xen.assigned_head, FrameState::Assigned, slot)? != p.xen.assigned
            {
                return err(format!(
                    "{:?}: assigned count {} wrong",
                    p.id, p.xen.assigned
                ));
            }
            if p.xen.pod_cache != pod_cache[slot]
                || self.list_len(p.xen.pod_cache_head, FrameState::PodCache, slot)?
                    != p.xen.pod_cache
            {
                return err(format!(
                    "{:?}: PoD cache count {} wrong",
                    p.id, p.xen.pod_cache
                ));
            }
            // The p2m's own counts (frames, PoD entries, table bytes) against its tables.
            let (frames, pods, bytes) = p.p2m.recount();
            if (frames, pods, bytes) != (p.p2m.mapped(), p.p2m.pod_entries(), p.p2m.table_bytes()) {
                return err(format!(
                    "{:?}: p2m counts {}/{}/{} bytes, its tables hold {frames}/{pods}/{bytes}",
                    p.id,
                    p.p2m.mapped(),
                    p.p2m.pod_entries(),
                    p.p2m.table_bytes()
                ));
            }
            if let Some(g) = p.p2m.highest_entry().filter(|&g| g >= p.gfn_limit) {
                return err(format!(
                    "{:?}: gfn {g:#x} in use at or above the limit {:#x}",
                    p.id, p.gfn_limit
                ));
            }
            for (node, pool) in p.pools.iter().enumerate() {
                let a = self.list_len(pool.available_head, FrameState::PoolAvailable, slot)?;
                // Hypervisor pages are charged to the pool without sitting on its lists.
                let u = self.list_len(pool.in_use_head, FrameState::PoolInUse, slot)?
                    + special_node[node];
                if a != pool.available || u != pool.in_use {
                    return err(format!(
                        "{:?} node {node}: pool counts {}/{} but lists hold {a}/{u}",
                        p.id, pool.available, pool.in_use
                    ));
                }
                for list in [pool.available_head, pool.in_use_head] {
                    let mut m = list;
                    while m != NO_FRAME {
                        if self.frames.node_of(m) as usize != node {
                            return err(format!("{:?}: frame {m} in node {node}'s pool", p.id));
                        }
                        m = self.frames.link(m) as Mfn;
                    }
                }
            }
            if p.pool_available() != pool_avail[slot]
                || p.pool_in_use() != pool_used[slot] + special[slot]
            {
                return err(format!(
                    "{:?}: pool totals disagree with the frame table",
                    p.id
                ));
            }
            let charged: u64 = p
                .vps
                .values()
                .flat_map(|v| &v.charged)
                .chain(&p.init_charged)
                .chain(&p.xen.grant_charged)
                .map(|c| c.1)
                .sum::<u64>()
                + self.children_create_charges(p)
                + special[slot];
            if charged != p.pool_in_use() {
                return err(format!(
                    "{:?}: {} pool frames in use, {charged} charged",
                    p.id,
                    p.pool_in_use()
                ));
            }
            total += mapped[slot]
                + assigned[slot]
                + pool_avail[slot]
                + pool_used[slot]
                + pod_cache[slot]
                + special[slot];
        }
        if total != self.frames.ram_frames() {
            return err(format!(
                "{total} frames accounted for of {} RAM frames",
                self.frames.ram_frames()
            ));
        }
        Ok(())
    }

    fn children_create_charges(&self, p: &Partition) -> u64 {
        p.children
            .iter()
            .filter_map(|&c| self.partition(c))
            .flat_map(|c| &c.create_charged)
            .map(|c| c.1)
            .sum()
    }

    fn list_len(
        &self,
        head: Mfn,
        state: FrameState,
        slot: usize,
    ) -> Result<u64, InvariantViolation> {
        let mut m = head;
        let mut n = 0u64;
        while m != NO_FRAME {
            if self.frames.state(m) != state || self.frames.owner(m) as usize != slot {
                return Err(InvariantViolation(format!(
                    "frame {m} on a {state:?} list of slot {slot} is {:?}",
                    self.frames.state(m)
                )));
            }
            n += 1;
            if n > self.frames.len() as u64 {
                return Err(InvariantViolation(format!(
                    "cycle in a {state:?} list of slot {slot}"
                )));
            }
            m = self.frames.link(m) as Mfn;
        }
        Ok(n)
    }
}

/// Where a partition's memory should come from, given its home node.
pub(crate) fn home_sel(home: HvProximityDomainInfo) -> NodeSel {
    if home.flags.proximity_info_valid() {
        NodeSel::Preferred(home.id)
    } else {
        NodeSel::Any
    }
}
