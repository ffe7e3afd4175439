//! The reservation queries (§4.7), the memory maps (§4.13), the PoD target (§4.14),
//! get_vnumainfo (§4.15) and acquire_resource (§4.12).

use core::mem::offset_of;

use ballast_abi::xen::{
    E820Entry, E820MAX, E820Type, MemoryOp, ResourceType, XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED,
    XenForeignMemoryMap, XenMemAcquireResource, XenMemoryDomain, XenMemoryMap, XenPodTarget,
    XenVnumaTopologyInfo,
};
use zerocopy::{FromBytes, IntoBytes};

use super::errno::*;
use super::{Call, MAX_GRANT_FRAMES, MAX_NR_EXTENTS, MemoryOpResult, RESOURCE_BATCH, Xsm, elem};
use crate::Mfn;
use crate::config::MemoryKind;
use crate::frame::NO_FRAME;
use crate::hypervisor::{Hypervisor, home_sel};

const E820_SIZE: u64 = size_of::<E820Entry>() as u64;
const PAGE_SIZE: u64 = 4096;

impl Hypervisor {
    /// current_reservation, maximum_reservation and maximum_gpfn.
    pub(super) fn xen_stat_reservation(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let d = c.read::<XenMemoryDomain>(c.arg).ok_or(EFAULT)?;
        let t = self.xen_lookup(c.caller, d.domid).ok_or(ESRCH)?;
        if !self.xen_xsm(c.caller, t, Xsm::Target) {
            return Err(EPERM);
        }
        let p = self.part(t);
        // All three are below 2^40.
        Ok(match c.op {
            MemoryOp::CURRENT_RESERVATION => p.tot_pages() as i64,
            MemoryOp::MAXIMUM_RESERVATION => i64::from(p.max_pages),
            // The highest gfn ever mapped: Xen's max_mapped_pfn, which never shrinks.
            _ => p.p2m.max_mapped().unwrap_or(0) as i64,
        })
    }

    /// The caller's own E820 map: the one the toolstack set, or one RAM entry per run of
    /// mapped gfns. At most `limit` entries.
    fn xen_guest_e820(&self, slot: u32, limit: usize) -> Vec<E820Entry> {
        let p = self.part(slot);
        if let Some(map) = p.memory_map.as_ref().filter(|m| !m.is_empty()) {
            return map.iter().take(limit).copied().collect();
        }
        p.p2m
            .ranges_up_to(limit)
            .into_iter()
            .map(|(start, len)| E820Entry {
                addr: start * PAGE_SIZE,
                size: len * PAGE_SIZE,
                ty: E820Type::RAM,
            })
            .collect()
    }

    fn xen_write_e820(c: &mut Call<'_>, buffer: u64, entries: &[E820Entry]) -> Result<(), i64> {
        if !c.array_ok(buffer, 0, entries.len() as u64, E820_SIZE) {
            return Err(EFAULT);
        }
        if entries.is_empty() {
            return Ok(());
        }
        if c.mem.write(buffer, entries.as_bytes()).is_err() {
            return Err(EFAULT);
        }
        Ok(())
    }

    /// memory_map: always about the caller; silently truncated to the buffer.
    pub(super) fn xen_memory_map(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let mut map = c.read::<XenMemoryMap>(c.arg).ok_or(EFAULT)?;
        let entries = self.xen_guest_e820(c.caller, map.nr_entries as usize);
        Self::xen_write_e820(c, map.buffer, &entries)?;
        // At most the u32 the guest gave.
        map.nr_entries = entries.len() as u32;
        if !c.write(c.arg, &map) {
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// machine_memory_map: the host memory map of the configuration, one E820 entry per
    /// range (RAM type 1, reserved type 2; holes have none). A NULL buffer asks
    /// for the count; otherwise the buffer must hold one entry more than the map.
    pub(super) fn xen_machine_memory_map(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        if c.caller != Self::ROOT_SLOT {
            return Err(EPERM);
        }
        let mut map = c.read::<XenMemoryMap>(c.arg).ok_or(EFAULT)?;
        let host: Vec<E820Entry> = self
            .config
            .memory_map
            .iter()
            .map(|r| E820Entry {
                addr: r.start * PAGE_SIZE,
                size: r.frames * PAGE_SIZE,
                ty: match r.kind {
                    MemoryKind::Ram { .. } => E820Type::RAM,
                    MemoryKind::Reserved => E820Type::RESERVED,
                },
            })
            .collect();
        if map.buffer != 0 {
            if (map.nr_entries as usize) < host.len() + 1 {
                return Err(EINVAL);
            }
            Self::xen_write_e820(c, map.buffer, &host)?;
        }
        // A validated map has at most E820MAX entries.
        map.nr_entries = host.len() as u32;
        if !c.write(c.arg, &map) {
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// set_memory_map: the map a domain later reads with memory_map.
    pub(super) fn xen_set_memory_map(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let f = c.read::<XenForeignMemoryMap>(c.arg).ok_or(EFAULT)?;
        let n = f.map.nr_entries as usize;
        if n > E820MAX {
            return Err(EINVAL);
        }
        let t = self.xen_lookup(c.caller, f.domid).ok_or(ESRCH)?;
        if !self.xen_xsm(c.caller, t, Xsm::Target) {
            return Err(EPERM);
        }
        let mut bytes = vec![0u8; n * size_of::<E820Entry>()];
        if n > 0 && c.mem.read(f.map.buffer, &mut bytes).is_err() {
            return Err(EFAULT);
        }
        let entries = <[E820Entry]>::ref_from_bytes(&bytes).map_err(|_| EFAULT)?;
        self.part_mut(t).memory_map = Some(entries.to_vec());
        Ok(0)
    }

    /// set_pod_target and get_pod_target, for a model without populate-on-demand: the
    /// cache is always empty.
    pub(super) fn xen_pod_target(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let mut target = c.read::<XenPodTarget>(c.arg).ok_or(EFAULT)?;
        let t = self.xen_lookup(c.caller, target.domid).ok_or(ESRCH)?;
        if !self.part(t).translated {
            return Err(EINVAL);
        }
        if !self.xen_xsm(c.caller, t, Xsm::Priv) {
            return Err(EPERM);
        }
        let p = self.part(t);
        if c.op == MemoryOp::SET_POD_TARGET {
            if target.target_pages > u64::from(p.max_pages) {
                return Err(EINVAL);
            }
            // Xen fills a PoD cache only for a domain with nothing populated yet; a
            // populated domain without PoD entries keeps an empty cache whatever the
            // target.
            if p.tot_pages() == 0 && target.target_pages > 0 {
                return Err(EOPNOTSUPP);
            }
        }
        target.tot_pages = p.tot_pages();
        target.pod_cache_pages = 0;
        target.pod_entries = 0;
        if !c.write(c.arg, &target) {
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// get_vnumainfo: no partition has a virtual NUMA topology.
    pub(super) fn xen_get_vnumainfo(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let v = c.read::<XenVnumaTopologyInfo>(c.arg).ok_or(EFAULT)?;
        if v.pad != 0 {
            return Err(EINVAL);
        }
        let t = self.xen_lookup(c.caller, v.domid).ok_or(ESRCH)?;
        if !self.xen_xsm(c.caller, t, Xsm::Target) {
            return Err(EPERM);
        }
        Err(EOPNOTSUPP)
    }

    pub(super) fn xen_acquire_resource(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        match self.xen_acquire_resource_inner(c) {
            Ok(Some(next)) => MemoryOpResult::resume(c.op, next),
            Ok(None) => MemoryOpResult::value(0),
            Err(e) => MemoryOpResult::err(e),
        }
    }

    fn xen_acquire_resource_inner(&mut self, c: &mut Call<'_>) -> Result<Option<u64>, i64> {
        let mut r = c.read::<XenMemAcquireResource>(c.arg).ok_or(EFAULT)?;
        if r.flags != 0 {
            return Err(EINVAL);
        }
        let nr = u64::from(r.nr_frames);
        // nr_frames is 32 bits but frame is 64: keep the whole window below 2^32.
        if r.frame >> 32 != 0 || (r.frame + nr) >> 32 != 0 {
            return Err(EINVAL);
        }
        let t = self.xen_lookup_id(r.domid).ok_or(ESRCH)?;
        if t == c.caller {
            return Err(EPERM);
        }
        if !self.xen_xsm(c.caller, t, Xsm::DmPriv) {
            return Err(EPERM);
        }
        // Grant frames are charged to the pool: only an Active partition may be charged,
        // or an Uninitialized / Finalized pool would stop being fully withdrawable (seed
        // 001) and its partition could never be deleted.
        if self.part(t).state != crate::PartitionState::Active {
            return Err(EINVAL);
        }
        let max =
            if r.ty == ResourceType::GRANT_TABLE && r.id == XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED {
                MAX_GRANT_FRAMES
            } else {
                0
            };
        if max == 0 {
            return Err(EINVAL);
        }
        if r.frame_list == 0 {
            if nr != 0 || c.start != 0 {
                return Err(EINVAL);
            }
            r.nr_frames = max;
            let at = c.field(offset_of!(XenMemAcquireResource, nr_frames));
            return if c.write(at, &r.nr_frames) {
                Ok(None)
            } else {
                Err(EFAULT)
            };
        }
        if c.start >= nr || nr > MAX_NR_EXTENTS || r.frame + nr > u64::from(max) {
            return Err(EINVAL);
        }
        if !c.array_ok(r.frame_list, c.start, nr - c.start, 8) {
            return Err(EFAULT);
        }
        if !self.xen_grow_grant_table(t, r.frame + nr) {
            return Err(ENOMEM);
        }
        let mfns = self.xen_grant_frames(t);
        let mut i = c.start;
        while i < nr {
            if i != c.start && c.preempt() {
                return Ok(Some(i));
            }
            let end = (i + RESOURCE_BATCH).min(nr);
            for j in i..end {
                let Some(&m) = usize::try_from(r.frame + j).ok().and_then(|k| mfns.get(k)) else {
                    return Err(EIO);
                };
                if !c.write_u64(elem(r.frame_list, j, 8), u64::from(m)) {
                    return Err(EFAULT);
                }
            }
            c.spend(end - i);
            i = end;
        }
        Ok(None)
    }

    /// Makes the grant table of `slot` at least `frames` frames long, charging its pool
    /// and topping the pool up from the heap first if it is short (Xen takes grant frames
    /// from its heap). The table never shrinks while the partition lives.
    fn xen_grow_grant_table(&mut self, slot: u32, frames: u64) -> bool {
        let have: u64 = self.part(slot).grant_charged.iter().map(|c| c.1).sum();
        if frames <= have {
            return true;
        }
        let need = frames - have;
        let sel = home_sel(self.part(slot).home);
        let short = need.saturating_sub(self.part(slot).pool_available());
        if short > 0 {
            let claimed = self.outstanding_claims();
            if claimed.saturating_add(short) > self.frames.total_free() {
                return false;
            }
            for _ in 0..short {
                let Some(m) = self.heap_alloc(sel, 0, NO_FRAME) else {
                    return false;
                };
                self.pool_deposit(slot, m);
            }
        }
        let Some(charged) = self.pool_charge(slot, need, sel) else {
            return false;
        };
        self.part_mut(slot).grant_charged.extend(charged);
        true
    }

    /// The MFNs standing for grant frames 0, 1, ... of `slot`.
    ///
    /// Pool frames in use are interchangeable hypervisor memory, tracked only by count, so
    /// the grant table is a labelling: each node's in-use list is a stack (charges push,
    /// releases pop), and the grant charges, in the order they were made, take that
    /// node's frames from the bottom. A partition whose pool pays only for its grant table
    /// keeps the same MFN for each frame for its whole life.
    pub(crate) fn xen_grant_frames(&self, slot: u32) -> Vec<Mfn> {
        let p = self.part(slot);
        let stacks: Vec<Vec<Mfn>> = p
            .pools
            .iter()
            .map(|pool| {
                let mut list = Vec::new();
                let mut m = pool.in_use_head;
                while m != NO_FRAME && list.len() as u64 <= pool.in_use {
                    list.push(m);
                    m = self.frames.link(m) as Mfn;
                }
                list.reverse();
                list
            })
            .collect();
        let mut next = vec![0usize; stacks.len()];
        let mut out = Vec::new();
        for &(node, count) in &p.grant_charged {
            let Some(stack) = stacks.get(node as usize) else {
                continue;
            };
            for _ in 0..count {
                if let Some(&m) = stack.get(next[node as usize]) {
                    out.push(m);
                    next[node as usize] += 1;
                }
            }
        }
        out
    }
}
