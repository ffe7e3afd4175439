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
use crate::effects::{Effect, Effects, GfnRange};
use crate::frame::{FrameState, Frames, NO_FRAME, NodeSel};
use crate::p2m::{GFN_LIMIT, P2m};
use crate::partition::{NodePool, Partition, PartitionState};
use crate::{DomId, Mfn, PartitionId};

/// The root partition's Hyper-V id.
pub const ROOT_ID: PartitionId = PartitionId(1);
/// The root partition's Xen domid (the control domain).
pub const ROOT_DOMID: DomId = DomId(0);
/// Xen's `DOMID_FIRST_RESERVED`: ordinary domids are below it.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;

/// A broken invariant, found by [`Hypervisor::check`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

/// Why a partition could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
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
    #[error("no partition {0:?}")]
    NoParent(PartitionId),
}

/// Why memory could not be put into or taken out of a guest's space by the host API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MemoryError {
    /// No such partition.
    #[error("no partition {0:?}")]
    NoPartition(PartitionId),
    /// A gfn at or beyond 2^40.
    #[error("gfn {0:#x} is beyond the 40-bit guest physical space")]
    GfnOutOfRange(u64),
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

/// Why a partition could not be destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DestroyError {
    /// No such partition.
    #[error("no partition {0:?}")]
    NoPartition(PartitionId),
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
    pub(crate) hv: crate::hyperv::HvState,
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
        };
        let root = hv
            .new_partition(
                None,
                HvPartitionPrivilegeMask::ROOT,
                HvProximityDomainInfo::ANY,
                0,
            )
            .expect("an empty host has room for the root");
        hv.part_mut(root).state = PartitionState::Active;
        Ok(hv)
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
        let domid = (0..DOMID_FIRST_RESERVED)
            .map(|i| (self.next_domid as u32 + i as u32) % DOMID_FIRST_RESERVED as u32)
            .map(|d| d as u16)
            .find(|d| !self.by_domid.contains_key(d))
            .ok_or(CreateError::NoDomid)?;
        let id = PartitionId(self.next_id);
        self.next_id += 1;
        self.next_domid = (domid + 1) % DOMID_FIRST_RESERVED;
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
            assigned: 0,
            assigned_head: NO_FRAME,
            // No memory until the host grants it (`set_max_pages`, or `create_guest`): a
            // partition must not be able to draw the host dry through memory_op.
            max_pages: 0,
            outstanding_claim: 0,
            vps: BTreeMap::new(),
            children: Vec::new(),
            init_charged: Vec::new(),
            create_charged: Vec::new(),
            grant_charged: Vec::new(),
            memory_map: None,
            translated: true,
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

    /// Unmaps `gfn` of `slot`, recording its discard; the frame comes back in state
    /// Hypervisor for the caller to free or reuse.
    pub(crate) fn unmap(&mut self, slot: u32, gfn: u64) -> Option<Mfn> {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        let mfn = p.p2m.remove(gfn)?;
        let id = p.id;
        self.frames.set(mfn, FrameState::Hypervisor, 0, 0);
        self.effects.discard(id, gfn, 1);
        Some(mfn)
    }

    /// Records `mfn` (state Hypervisor) as assigned to `slot` without a gfn.
    pub(crate) fn assign_unmapped(&mut self, slot: u32, mfn: Mfn) {
        let p = self.slots[slot as usize].as_mut().expect("live slot");
        self.frames
            .set(mfn, FrameState::Assigned, slot, p.assigned_head as u64);
        p.assigned_head = mfn;
        p.assigned += 1;
    }

    /// Room left under `slot`'s Xen `max_pages`.
    pub(crate) fn room(&self, slot: u32) -> u64 {
        let p = self.part(slot);
        (p.max_pages as u64).saturating_sub(p.tot_pages())
    }

    /// Returns every frame of `slot`'s guest space (mapped or assigned) to the heap.
    pub(crate) fn release_guest_memory(&mut self, slot: u32) {
        let gfns: Vec<u64> = self.part(slot).p2m.iter().map(|(g, _)| g).collect();
        for gfn in gfns {
            if let Some(m) = self.unmap(slot, gfn) {
                self.heap_free(m, 0);
            }
        }
        loop {
            let m = self.part(slot).assigned_head;
            if m == NO_FRAME {
                break;
            }
            let next = self.frames.link(m) as Mfn;
            let p = self.part_mut(slot);
            p.assigned_head = next;
            p.assigned -= 1;
            self.frames.set(m, FrameState::Hypervisor, 0, 0);
            self.heap_free(m, 0);
        }
    }

    // -----------------------------------------------------------------------------------
    // Host API: guest memory by range
    // -----------------------------------------------------------------------------------

    /// Backs `count` gfns from `start` of partition `id` with fresh frames (any node,
    /// preferring the partition's home): the host's way to give a guest RAM (boot memory,
    /// an unballoon, a hot-add). Counts against Xen `max_pages`. All or nothing.
    pub fn populate(&mut self, id: PartitionId, start: u64, count: u64) -> Result<(), MemoryError> {
        let slot = self.slot_of(id).ok_or(MemoryError::NoPartition(id))?;
        if slot == Self::ROOT_SLOT {
            return Err(MemoryError::Root);
        }
        if self.part(slot).state == PartitionState::Finalized {
            return Err(MemoryError::Finalized(id));
        }
        let end = start.checked_add(count).filter(|&e| e <= GFN_LIMIT);
        let end = end.ok_or(MemoryError::GfnOutOfRange(start.saturating_add(count)))?;
        // The cheap refusals first: the scan below is as long as the request.
        if self.room(slot) < count {
            return Err(MemoryError::MaxPages(self.part(slot).max_pages));
        }
        if self.frames.total_free() < count {
            return Err(MemoryError::NoMemory);
        }
        if let Some(g) = (start..end).find(|&g| self.part(slot).p2m.get(g).is_some()) {
            return Err(MemoryError::AlreadyMapped(g));
        }
        let sel = home_sel(self.part(slot).home);
        for gfn in start..end {
            let m = self
                .heap_alloc(sel, 0, NO_FRAME)
                .ok_or(MemoryError::NoMemory)?;
            self.map(slot, gfn, m);
        }
        Ok(())
    }

    /// Unmaps the given gfn ranges of partition `id` and returns their frames to the
    /// heap: the host's way to take RAM back (a balloon). Every range is checked before
    /// any is touched: an unmapped gfn refuses the whole call.
    pub fn release(&mut self, id: PartitionId, ranges: &[GfnRange]) -> Result<u64, MemoryError> {
        let slot = self.slot_of(id).ok_or(MemoryError::NoPartition(id))?;
        if slot == Self::ROOT_SLOT {
            return Err(MemoryError::Root);
        }
        for r in ranges {
            let end = r.start.checked_add(r.count).filter(|&e| e <= GFN_LIMIT);
            end.ok_or(MemoryError::GfnOutOfRange(r.start))?;
            if let Some(g) = (r.start..r.end()).find(|&g| self.part(slot).p2m.get(g).is_none()) {
                return Err(MemoryError::NotMapped(g));
            }
        }
        let mut released = 0;
        for r in ranges {
            for gfn in r.start..r.end() {
                // A gfn listed twice is released once.
                if let Some(m) = self.unmap(slot, gfn) {
                    self.heap_free(m, 0);
                    released += 1;
                }
            }
        }
        Ok(released)
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
        p.max_pages = max_pages;
        Ok(p.id)
    }

    /// Tears a partition down whatever its state, as a toolstack destroying a domain:
    /// its guest memory and its whole pool go back to the heap (with discards), the pool
    /// frames it was charged in its parent's pool are released, and its ids become
    /// invalid. A partition with children must lose them first.
    pub fn destroy_partition(&mut self, id: PartitionId) -> Result<(), DestroyError> {
        let slot = self.slot_of(id).ok_or(DestroyError::NoPartition(id))?;
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
        p.grant_charged.clear();
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
        let slot = self.slot_of(id).ok_or(MemoryError::NoPartition(id))?;
        self.part_mut(slot).max_pages = max_pages;
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
        let mut free = 0u64;
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
                FrameState::Free | FrameState::Absent | FrameState::Hypervisor => unreachable!(),
            }
        }
        if free != self.frames.total_free() {
            return err(format!(
                "{free} frames free, heap counts {}",
                self.frames.total_free()
            ));
        }
        let mut total = free;
        for (slot, p) in self.slots.iter().enumerate() {
            let Some(p) = p else { continue };
            if self.by_id.get(&p.id.0) != Some(&(slot as u32))
                || self.by_domid.get(&p.domid.0) != Some(&(slot as u32))
            {
                return err(format!("{:?} not indexed at slot {slot}", p.id));
            }
            if p.p2m.mapped() != mapped[slot] {
                return err(format!(
                    "{:?}: p2m maps {} gfns, {} frames say they are mapped there",
                    p.id,
                    p.p2m.mapped(),
                    mapped[slot]
                ));
            }
            for (gfn, mfn) in p.p2m.iter() {
                if self.frames.state(mfn) != FrameState::Mapped
                    || self.frames.owner(mfn) as usize != slot
                    || self.frames.link(mfn) != gfn
                {
                    return err(format!(
                        "{:?}: gfn {gfn:#x} → frame {mfn} not mapped back",
                        p.id
                    ));
                }
            }
            if p.assigned != assigned[slot]
                || self.list_len(p.assigned_head, FrameState::Assigned, slot)? != p.assigned
            {
                return err(format!("{:?}: assigned count {} wrong", p.id, p.assigned));
            }
            for (node, pool) in p.pools.iter().enumerate() {
                let a = self.list_len(pool.available_head, FrameState::PoolAvailable, slot)?;
                let u = self.list_len(pool.in_use_head, FrameState::PoolInUse, slot)?;
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
            if p.pool_available() != pool_avail[slot] || p.pool_in_use() != pool_used[slot] {
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
                .chain(&p.grant_charged)
                .map(|c| c.1)
                .sum::<u64>()
                + self.children_create_charges(p);
            if charged != p.pool_in_use() {
                return err(format!(
                    "{:?}: {} pool frames in use, {charged} charged",
                    p.id,
                    p.pool_in_use()
                ));
            }
            total += mapped[slot] + assigned[slot] + pool_avail[slot] + pool_used[slot];
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
