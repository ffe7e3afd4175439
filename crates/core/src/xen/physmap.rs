//! add_to_physmap, add_to_physmap_batch and remove_from_physmap (Xen's
//! `xen/common/memory.c`, `xenmem_add_to_physmap` and `xen/arch/x86/mm.c`).

use ballast_abi::xen::{MapSpace, XenAddToPhysmap, XenAddToPhysmapBatch, XenRemoveFromPhysmap};

use super::errno::*;
use super::{Call, MemoryOpResult, Xsm, elem};
use crate::hypervisor::{Hypervisor, SpaceError};

/// Xen's `INVALID_GFN`.
const INVALID_GFN: u64 = u64::MAX;

impl Hypervisor {
    /// `xatp_permission_check` and the translated-target check before it.
    fn xen_xatp_permission(&self, caller: u32, target: u32, space: MapSpace) -> Result<(), i64> {
        if !self.part(target).xen.translated {
            return Err(EACCES);
        }
        // dev_mmio is for the hardware domain mapping itself.
        if space == MapSpace::DEV_MMIO && !(caller == Self::ROOT_SLOT && target == caller) {
            return Err(EACCES);
        }
        if !self.xen_xsm(caller, target, Xsm::Target) {
            return Err(EPERM);
        }
        Ok(())
    }

    pub(super) fn xen_add_to_physmap(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        match self.xen_add_to_physmap_inner(c) {
            Ok(Some(next)) => MemoryOpResult::resume(c.op, next),
            Ok(None) => MemoryOpResult::value(0),
            Err(e) => MemoryOpResult::err(e),
        }
    }

    fn xen_add_to_physmap_inner(&mut self, c: &mut Call<'_>) -> Result<Option<u64>, i64> {
        if c.start > u64::from(u16::MAX) {
            return Err(EDOM);
        }
        let x = c.read::<XenAddToPhysmap>(c.arg).ok_or(EFAULT)?;
        if x.space == MapSpace::GMFN_FOREIGN {
            return Err(ENOSYS);
        }
        let t = self.xen_lookup(c.caller, x.domid).ok_or(ESRCH)?;
        self.xen_xatp_permission(c.caller, t, x.space)?;
        if t == Self::ROOT_SLOT {
            // The root's p2m is never written: see the module docs.
            return Err(EPERM);
        }
        if x.gpfn == INVALID_GFN {
            return Err(EINVAL);
        }
        if x.space != MapSpace::GMFN_RANGE {
            return self.xen_add_one(t, x.space, x.idx, x.gpfn).map(|()| None);
        }
        let size = u64::from(x.size);
        if size < c.start {
            return Err(EILSEQ);
        }
        if x.gpfn.checked_add(size).is_none() || x.idx.checked_add(size).is_none() {
            return Err(EOVERFLOW);
        }
        // Walk from the top when the destination overlaps the source from above, so no
        // page is moved onto one not yet moved. The direction comes from the whole
        // request, so a resumed call keeps it.
        let backwards = x.gpfn > x.idx && x.gpfn < x.idx + size;
        for done in c.start..size {
            if done != c.start && c.preempt() {
                return Ok(Some(done));
            }
            let off = if backwards { size - 1 - done } else { done };
            self.xen_add_one(t, MapSpace::GMFN, x.idx + off, x.gpfn + off)?;
            c.spend(1);
        }
        Ok(None)
    }

    pub(super) fn xen_add_to_physmap_batch(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        match self.xen_add_to_physmap_batch_inner(c) {
            Ok(Some(next)) => MemoryOpResult::resume(c.op, next),
            Ok(None) => MemoryOpResult::value(0),
            Err(e) => MemoryOpResult::err(e),
        }
    }

    fn xen_add_to_physmap_batch_inner(&mut self, c: &mut Call<'_>) -> Result<Option<u64>, i64> {
        if c.start > u64::from(u16::MAX) {
            return Err(EDOM);
        }
        let b = c.read::<XenAddToPhysmapBatch>(c.arg).ok_or(EFAULT)?;
        let space = b.map_space();
        if space == MapSpace::GMFN_RANGE {
            return Err(EOPNOTSUPP);
        }
        let t = self.xen_lookup(c.caller, b.domid).ok_or(ESRCH)?;
        self.xen_xatp_permission(c.caller, t, space)?;
        if t == Self::ROOT_SLOT {
            return Err(EPERM);
        }
        let size = u64::from(b.size);
        if size < c.start {
            return Err(EILSEQ);
        }
        if size == c.start {
            return if c.start != 0 { Err(EILSEQ) } else { Ok(None) };
        }
        let n = size - c.start;
        if !c.array_ok(b.idxs, c.start, n, 8)
            || !c.array_ok(b.gpfns, c.start, n, 8)
            || !c.array_ok(b.errs, c.start, n, 4)
        {
            return Err(EFAULT);
        }
        if space == MapSpace::DEV_MMIO && b.foreign_domid != 0 {
            return Err(EOPNOTSUPP);
        }
        for i in c.start..size {
            if i != c.start && c.preempt() {
                return Ok(Some(i));
            }
            let idx = c.read_u64(elem(b.idxs, i, 8)).ok_or(EFAULT)?;
            let gpfn = c.read_u64(elem(b.gpfns, i, 8)).ok_or(EFAULT)?;
            if gpfn == INVALID_GFN {
                return Err(EINVAL);
            }
            let rc = match self.xen_add_one(t, space, idx, gpfn) {
                Ok(()) => 0,
                // Errnos are small positive numbers.
                Err(e) => -(e as i32),
            };
            if !c.write(elem(b.errs, i, 4), &rc) {
                return Err(EFAULT);
            }
            c.spend(1);
        }
        Ok(None)
    }

    /// `xenmem_add_to_physmap_one` for the spaces ballast has pages for. The shared-info
    /// page and grant frames are the domain's hypervisor pages (see `special.rs`).
    fn xen_add_one(&mut self, t: u32, space: MapSpace, idx: u64, gpfn: u64) -> Result<(), i64> {
        match space {
            MapSpace::SHARED_INFO if idx != 0 => Err(EINVAL),
            MapSpace::SHARED_INFO => {
                let m = self.xen_shared_info(t)?;
                self.xen_special_map(t, m, gpfn)
            }
            MapSpace::GRANT_TABLE => {
                let m = self.xen_grant_map_frame(t, idx)?;
                self.xen_special_map(t, m, gpfn)
            }
            MapSpace::GMFN_FOREIGN => Err(EOPNOTSUPP),
            MapSpace::GMFN => self.xen_move_gmfn(t, idx, gpfn),
            _ => Err(EINVAL),
        }
    }

    /// Moves the page at gfn `from` to gfn `to`, freeing the page that was at `to`.
    fn xen_move_gmfn(&mut self, t: u32, from: u64, to: u64) -> Result<(), i64> {
        let Some(m) = self.part(t).p2m.get(from) else {
            return Err(EACCES);
        };
        // Past the guest-physical limit the page would have no backing to live in: Xen's
        // p2m refuses gfns past the guest's physical address width with -EINVAL.
        if to >= self.part(t).gfn_limit {
            return Err(EINVAL);
        }
        if from == to {
            return Ok(());
        }
        // The tables for `to`, before anything moves (the p2m pool: -ENOMEM).
        if let Err(SpaceError::Budget(_)) = self.guest_space_ok(t, to, 1) {
            return Err(ENOMEM);
        }
        // Xen moves a hypervisor page of the domain by its gfn too (the page is the
        // domain's and its m2p entry is that gfn).
        if self.frames.state(m) == crate::frame::FrameState::Special {
            return self.xen_special_map(t, m, to);
        }
        // The page at `to` goes first, then the move, then the old place: applied in
        // this order, the backing copies the bytes before releasing either gfn. A
        // hypervisor page there is unhooked, not freed.
        if self.xen_special_at(t, to) {
            self.xen_special_unhook(t, to);
        } else if let Some(old) = self.unmap(t, to) {
            self.heap_free(old, 0);
        }
        let id = self.part(t).id;
        self.effects.moved(id, from, to);
        let Some(m) = self.unmap(t, from) else {
            return Err(EACCES);
        };
        self.map(t, to, m);
        Ok(())
    }

    pub(super) fn xen_remove_from_physmap(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let x = c.read::<XenRemoveFromPhysmap>(c.arg).ok_or(EFAULT)?;
        let t = self.xen_lookup(c.caller, x.domid).ok_or(ESRCH)?;
        if !self.part(t).xen.translated {
            return Err(EACCES);
        }
        if !self.xen_xsm(c.caller, t, Xsm::Target) {
            return Err(EPERM);
        }
        // A hypervisor page is only unhooked (Xen leaves it allocated too).
        if self.xen_special_at(t, x.gpfn) {
            self.xen_special_unhook(t, x.gpfn);
            return Ok(0);
        }
        let m = self.unmap(t, x.gpfn).ok_or(ENOENT)?;
        self.heap_free(m, 0);
        Ok(0)
    }
}
