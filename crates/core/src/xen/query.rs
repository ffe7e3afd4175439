//! The reservation queries and get_vnumainfo and acquire_resource (Xen's
//! `xen/common/memory.c`), the memory maps and the PoD target (`arch_memory_op` in
//! `xen/arch/x86/mm.c`, `xen/arch/x86/mm/p2m-pod.c`).

use core::mem::offset_of;

use ballast_abi::xen::{
    E820Entry, E820MAX, E820Type, MACH2PHYS_NR_ENTRIES, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
    MemoryOp, ResourceType, XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED,
    XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS, XenForeignMemoryMap, XenMachphysMapping,
    XenMachphysMfnList, XenMemAcquireResource, XenMemoryDomain, XenMemoryMap, XenPodTarget,
    XenVnumaTopologyInfo,
};
use zerocopy::{FromBytes, IntoBytes};

use super::errno::*;
use super::special::grant_to_status_frames;
use super::{Call, MAX_NR_EXTENTS, MemoryOpResult, RESOURCE_BATCH, Xsm, elem};
use crate::config::MemoryKind;
use crate::frame::NO_FRAME;
use crate::hypervisor::Hypervisor;

const E820_SIZE: u64 = size_of::<E820Entry>() as u64;
use ballast_abi::types::PAGE_BYTES as PAGE_SIZE;

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
            MemoryOp::MAXIMUM_RESERVATION => i64::from(p.xen.max_pages),
            // The highest gfn ever mapped: Xen's max_mapped_pfn, which never shrinks.
            _ if p.xen.translated => p.p2m.max_mapped().unwrap_or(0) as i64,
            // domain_get_maximum_gpfn for PV: the guest gives a page count, not a pfn.
            // Xen returns an unsigned long; a max_pfn beyond 2^63 reads back negated.
            _ => p.xen.max_pfn.max(1).wrapping_sub(1) as i64,
        })
    }

    /// The caller's own E820 map as the toolstack set it, at most `limit` entries;
    /// `None` when no map (or an empty one) was set.
    fn xen_guest_e820(&self, slot: u32, limit: usize) -> Option<Vec<E820Entry>> {
        let map = self.part(slot).xen.memory_map.as_ref()?;
        (!map.is_empty()).then(|| map.iter().take(limit).copied().collect())
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

    /// memory_map: always about the caller; silently truncated to the buffer. Without a
    /// map set, `-ENOSYS` as Xen 4.17 answers ("backwards compatibility": old PV guests
    /// then assume one RAM range).
    pub(super) fn xen_memory_map(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let mut map = c.read::<XenMemoryMap>(c.arg).ok_or(EFAULT)?;
        let entries = self
            .xen_guest_e820(c.caller, map.nr_entries as usize)
            .ok_or(ENOSYS)?;
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

    /// machphys_mapping (x86_64 `arch_memory_op`), for a PV caller: where the read-only
    /// m2p sits in its address space, and the largest MFN it can look up there. The
    /// hardware domain learns the host's real last frame (Xen does so unless memory can
    /// be hot-plugged, which ballast's host memory cannot at this level).
    pub(super) fn xen_machphys_mapping(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let max_mfn = if c.caller == Self::ROOT_SLOT {
            u64::from(self.frames.len()) - 1
        } else {
            MACH2PHYS_NR_ENTRIES - 1
        };
        let mapping = XenMachphysMapping {
            v_start: MACH2PHYS_VIRT_START,
            v_end: MACH2PHYS_VIRT_END,
            max_mfn,
        };
        if !c.write(c.arg, &mapping) {
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// machphys_mfn_list (x86_64 `subarch_memory_op`): the first MFN of each 2 MiB extent
    /// holding the m2p, up to `max_extents`, entry by entry, then the count. Without m2p
    /// frames (`XenConfig::m2p_frames` off) there is nothing to name: `-ENOSYS`, as
    /// an architecture without a guest-mappable m2p answers.
    pub(super) fn xen_machphys_mfn_list(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let mut l = c.read::<XenMachphysMfnList>(c.arg).ok_or(EFAULT)?;
        if self.m2p.is_empty() {
            return Err(ENOSYS);
        }
        let mut i = 0u32;
        while i != l.max_extents && (i as usize) < self.m2p.len() {
            let m = u64::from(self.m2p[i as usize]);
            if !c.write_u64(elem(l.extent_start, u64::from(i), 8), m) {
                return Err(EFAULT);
            }
            i += 1;
        }
        l.nr_extents = i;
        if !c.write(c.arg, &l) {
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
        self.part_mut(t).xen.memory_map = Some(entries.to_vec());
        Ok(0)
    }

    /// set_pod_target and get_pod_target (x86 `arch_memory_op`): any domid, HVM only
    /// (-EINVAL for PV), the PRIV check, for set a target of at most `max_pages`
    /// (-EINVAL) and [`xen_pod_set_mem_target`](Self::xen_pod_set_mem_target), which may
    /// continue; then both report `tot_pages`, the cache and the entries.
    pub(super) fn xen_pod_target(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        let mut target = match c.read::<XenPodTarget>(c.arg) {
            Some(t) => t,
            None => return MemoryOpResult::err(EFAULT),
        };
        let Some(t) = self.xen_lookup(c.caller, target.domid) else {
            return MemoryOpResult::err(ESRCH);
        };
        if !self.part(t).xen.translated {
            return MemoryOpResult::err(EINVAL);
        }
        if !self.xen_xsm(c.caller, t, Xsm::Priv) {
            return MemoryOpResult::err(EPERM);
        }
        if c.op == MemoryOp::SET_POD_TARGET {
            if target.target_pages > u64::from(self.part(t).xen.max_pages) {
                return MemoryOpResult::err(EINVAL);
            }
            match self.xen_pod_set_mem_target(c, t, target.target_pages) {
                Ok(false) => {}
                // -ERESTART: the same call again, from where the cache is now.
                Ok(true) => {
                    return MemoryOpResult {
                        ret: 0,
                        continuation: Some(c.cmd),
                        stop: None,
                    };
                }
                Err(e) => return MemoryOpResult::err(e),
            }
        }
        let p = self.part(t);
        target.tot_pages = p.tot_pages();
        target.pod_cache_pages = p.xen.pod_cache;
        target.pod_entries = p.pod_entries();
        if !c.write(c.arg, &target) {
            return MemoryOpResult::err(EFAULT);
        }
        MemoryOpResult::value(0)
    }

    /// Xen's `p2m_pod_set_mem_target` (`xen/arch/x86/mm/p2m-pod.c`): sizes the PoD cache
    /// so that the populated pages plus the cache make `target`. Nothing happens for a
    /// populated domain without PoD entries, a dying one, or a target below `tot_pages`
    /// (the balloon driver shrinks the cache as it frees PoD entries); once the domain is
    /// populated, the cache never exceeds its entries. -ENOTEMPTY with passthrough
    /// devices. Returns true when preempted (the caller re-issues the call).
    fn xen_pod_set_mem_target(
        &mut self,
        c: &mut Call<'_>,
        t: u32,
        target: u64,
    ) -> Result<bool, i64> {
        let p = self.part(t);
        let populated = p.tot_pages() - p.xen.pod_cache;
        if (populated > 0 && p.pod_entries() == 0) || self.xen_dying(t) || target < p.tot_pages() {
            return Ok(false);
        }
        let mut pod_target = target - populated;
        if populated > 0 && pod_target > p.pod_entries() {
            pod_target = p.pod_entries();
        }
        if p.xen.passthrough {
            return Err(ENOTEMPTY);
        }
        // p2m_pod_set_cache_target: grow from the heap (counted in tot_pages, within
        // max_pages and the claims, as alloc_domheap_pages is), or give back.
        let place = self.xen_placement(t, None, NO_FRAME);
        while self.part(t).xen.pod_cache < pod_target {
            let m = self.xen_alloc_extent(t, 0, &place).map_err(|_| ENOMEM)?;
            self.pod_cache_add(t, m);
            self.xen_charge_claim(t, 1);
            c.spend(1);
            if self.part(t).xen.pod_cache != pod_target && c.preempt() {
                return Ok(true);
            }
        }
        while self.part(t).xen.pod_cache > pod_target {
            let Some(m) = self.pod_cache_take(t) else {
                break;
            };
            self.heap_free(m, 0);
            c.spend(1);
            if self.part(t).xen.pod_cache != pod_target && c.preempt() {
                return Ok(true);
            }
        }
        Ok(false)
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
        // or an Uninitialized / Finalized pool would stop being fully withdrawable (the
        // TLFS, HvWithdrawMemory) and its partition could never be deleted.
        if self.part(t).state != crate::PartitionState::Active {
            return Err(EINVAL);
        }
        // gnttab_resource_max_frames: fixed when the domain is created.
        let max_grant = self.part(t).xen.max_grant_frames;
        let status = r.id == XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS;
        let max = match r.ty {
            ResourceType::GRANT_TABLE if r.id == XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED => max_grant,
            ResourceType::GRANT_TABLE if status => grant_to_status_frames(max_grant),
            _ => 0,
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
        // gnttab_acquire_resource: status frames exist in version 2 only; the table grows
        // to hold the last frame asked for. Both are below 2^32 (checked above).
        let last = (r.frame + nr - 1) as u32;
        if status {
            if self.part(t).xen.grant_version != 2 {
                return Err(EINVAL);
            }
            self.xen_grant_status_frame(t, last)?;
        } else {
            self.xen_grant_shared_frame(t, last)?;
        }
        let x = &self.part(t).xen;
        let mfns = if status {
            x.grant_status.clone()
        } else {
            x.grant_shared.clone()
        };
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

    /// The MFNs of grant (shared) frames 0, 1, ... of `slot`.
    #[cfg(test)]
    pub(crate) fn xen_grant_frames(&self, slot: u32) -> Vec<crate::Mfn> {
        self.part(slot).xen.grant_shared.clone()
    }
}
