//! A domain's hypervisor pages: its shared-info page and its grant-table frames.
//!
//! They are the hypervisor's pages (Xen allocates them from its own heap and they are not
//! in `tot_pages`), charged to the domain's pool as acquire_resource has always charged
//! grant frames: a pool frame becomes a [`FrameState::Special`] frame, counted in the
//! pool's `in_use` but on neither of its lists, so the frame keeps its MFN for the
//! domain's life. `XENMEM_add_to_physmap` maps one at a gfn of the domain's p2m (its link
//! word holds the gfn); mapping it elsewhere moves it, as Xen's
//! `xenmem_add_to_physmap_one` does. Finalizing or destroying the domain returns them to
//! the pool.
//!
//! The grant-table rules are Xen 4.17's `gnttab_map_frame_begin`,
//! `gnttab_get_shared_frame_mfn` and `gnttab_get_status_frame_mfn`
//! (`xen/common/grant_table.c`): a frame index beyond the table grows it up to
//! `max_grant_frames`, status frames exist only in version 2, and
//! `XENMAPIDX_grant_table_status` selects them only then.

use ballast_abi::xen::XENMAPIDX_GRANT_TABLE_STATUS;

use super::errno::*;
use crate::Mfn;
use crate::frame::{FrameState, NO_GFN};
use crate::hypervisor::{Hypervisor, home_sel};
use crate::partition::PartitionState;
use crate::{NodeSel, PartitionId};

/// Grant entries (v2, 16 bytes) per 4 KiB frame: Xen's `GRANT_PER_PAGE`.
const GRANT_PER_PAGE: u32 = 4096 / 16;
/// Status entries (2 bytes) per frame: `GRANT_STATUS_PER_PAGE`.
const GRANT_STATUS_PER_PAGE: u32 = 4096 / 2;

/// `grant_to_status_frames`: status frames a table of `grant_frames` frames needs. Xen
/// computes in `unsigned long` (the entry sizes are `size_t`) and returns an
/// `unsigned int`.
pub(crate) fn grant_to_status_frames(grant_frames: u32) -> u32 {
    (u64::from(grant_frames) * u64::from(GRANT_PER_PAGE)).div_ceil(u64::from(GRANT_STATUS_PER_PAGE))
        as u32
}

/// `status_to_grant_frames`, likewise; the truncation to 32 bits is what the caller's
/// round-trip check catches.
fn status_to_grant_frames(status_frames: u32) -> u32 {
    (u64::from(status_frames) * u64::from(GRANT_STATUS_PER_PAGE))
        .div_ceil(u64::from(GRANT_PER_PAGE)) as u32
}

impl Hypervisor {
    /// Takes `n` frames out of `slot`'s pool as its hypervisor pages, topping the pool up
    /// from the heap first if it is short. All or nothing. Only an Active partition may be
    /// charged: an Uninitialized or Finalized pool must stay fully withdrawable (the TLFS,
    /// HvWithdrawMemory)
    /// or the partition could never be deleted.
    pub(crate) fn xen_special_alloc(&mut self, slot: u32, n: u64) -> Option<Vec<Mfn>> {
        if self.part(slot).state != PartitionState::Active {
            return None;
        }
        let sel = home_sel(self.part(slot).home);
        let short = n.saturating_sub(self.part(slot).pool_available());
        if short > 0 {
            let claimed = self.outstanding_claims();
            if claimed.saturating_add(short) > self.frames.total_free() {
                return None;
            }
            let nested = slot != Self::ROOT_SLOT && self.part(slot).parent != Some(crate::ROOT_ID);
            for _ in 0..short {
                let m = self.heap_alloc(sel, 0, crate::frame::NO_FRAME)?;
                self.pool_deposit(slot, m);
                if nested {
                    self.part_mut(slot).xen.heap_topped += 1;
                }
            }
        }
        let mut out = Vec::new();
        for _ in 0..n {
            // The pool holds n available frames now, on whichever nodes: take any.
            let m = self
                .pool_take_available(slot, NodeSel::Any)
                .expect("the pool was topped up");
            let node = self.frames.node_of(m) as usize;
            self.part_mut(slot).pools[node].in_use += 1;
            self.frames.set(m, FrameState::Special, slot, NO_GFN);
            out.push(m);
        }
        Some(out)
    }

    /// Unmaps the hypervisor page at `gfn` of `slot` (which must hold one) and records
    /// the discard. The frame stays the partition's.
    pub(crate) fn xen_special_unhook(&mut self, slot: u32, gfn: u64) {
        let p = self.part_mut(slot);
        let m = p
            .p2m
            .remove(gfn)
            .expect("a hypervisor page is mapped there");
        p.xen.special_mapped -= 1;
        let id = p.id;
        self.frames.set(m, FrameState::Special, slot, NO_GFN);
        self.effects.discard(id, gfn, 1);
    }

    /// Whether `gfn` of `slot` holds one of its hypervisor pages.
    pub(crate) fn xen_special_at(&self, slot: u32, gfn: u64) -> bool {
        self.part(slot)
            .p2m
            .get(gfn)
            .is_some_and(|m| self.frames.state(m) == FrameState::Special)
    }

    /// Maps hypervisor page `m` of `t` at `gpfn`, as `xenmem_add_to_physmap_one` does:
    /// another hypervisor page there is unhooked, a RAM page there is freed, and `m`
    /// leaves the gfn it was at. Its bytes follow it (an [`Effect::Move`](crate::Effect)
    /// before the discard of the old gfn).
    pub(crate) fn xen_special_map(&mut self, t: u32, m: Mfn, gpfn: u64) -> Result<(), i64> {
        // The guest's physical space ends at its limit (the backing's size): -EINVAL past
        // it, as for every other entry, and -ENOMEM when the tables would exceed the p2m
        // budget; both before anything changes.
        if gpfn >= self.part(t).gfn_limit {
            return Err(EINVAL);
        }
        let old = self.frames.link(m);
        if old == gpfn {
            return Ok(());
        }
        if let Err(crate::hypervisor::SpaceError::Budget(_)) = self.guest_space_ok(t, gpfn, 1) {
            return Err(ENOMEM);
        }
        match self.part(t).p2m.get(gpfn) {
            Some(_) if self.xen_special_at(t, gpfn) => self.xen_special_unhook(t, gpfn),
            Some(_) => {
                if let Some(prev) = self.unmap(t, gpfn) {
                    self.heap_free(prev, 0);
                }
            }
            None => {}
        }
        if old != NO_GFN {
            let id = self.part(t).id;
            self.effects.moved(id, old, gpfn);
            self.xen_special_unhook(t, old);
        }
        let p = self.part_mut(t);
        p.p2m.set(gpfn, m);
        p.xen.special_mapped += 1;
        self.frames.set(m, FrameState::Special, t, gpfn);
        Ok(())
    }

    /// The shared-info page of `t`, allocated on first use (at creation for
    /// [`Hypervisor::create_domain`]).
    pub(crate) fn xen_shared_info(&mut self, t: u32) -> Result<Mfn, i64> {
        if let Some(m) = self.part(t).xen.shared_info {
            return Ok(m);
        }
        let m = self.xen_special_alloc(t, 1).ok_or(ENOMEM)?[0];
        self.part_mut(t).xen.shared_info = Some(m);
        Ok(m)
    }

    /// `gnttab_grow_table`: at least `nr_grant` shared frames (and in version 2 the status
    /// frames they need), all or nothing. False if the frames cannot be had.
    pub(crate) fn xen_grant_grow(&mut self, t: u32, nr_grant: u32) -> bool {
        let x = &self.part(t).xen;
        let shared = (nr_grant as usize).saturating_sub(x.grant_shared.len());
        let status = if x.grant_version == 2 {
            (grant_to_status_frames(nr_grant) as usize).saturating_sub(x.grant_status.len())
        } else {
            0
        };
        if shared + status == 0 {
            return true;
        }
        let Some(mut frames) = self.xen_special_alloc(t, (shared + status) as u64) else {
            return false;
        };
        let st = frames.split_off(shared);
        let x = &mut self.part_mut(t).xen;
        x.grant_shared.extend(frames);
        x.grant_status.extend(st);
        true
    }

    /// `gnttab_get_shared_frame_mfn`: shared frame `idx`, growing the table to reach it
    /// if `max_grant_frames` allows. `-EINVAL` otherwise (Xen does not tell a full host
    /// from an index past the limit).
    pub(crate) fn xen_grant_shared_frame(&mut self, t: u32, idx: u32) -> Result<Mfn, i64> {
        let x = &self.part(t).xen;
        if idx as usize >= x.grant_shared.len() {
            let nr = idx.checked_add(1).ok_or(EINVAL)?;
            if nr <= x.max_grant_frames {
                self.xen_grant_grow(t, nr);
            }
        }
        self.part(t)
            .xen
            .grant_shared
            .get(idx as usize)
            .copied()
            .ok_or(EINVAL)
    }

    /// `gnttab_get_status_frame_mfn` (version 2 only): status frame `idx`, growing the
    /// table to the shared frames that need it.
    pub(crate) fn xen_grant_status_frame(&mut self, t: u32, idx: u32) -> Result<Mfn, i64> {
        debug_assert_eq!(self.part(t).xen.grant_version, 2);
        if idx as usize >= self.part(t).xen.grant_status.len() {
            let nr_status = idx.checked_add(1).ok_or(EINVAL)?;
            let nr_grant = status_to_grant_frames(nr_status);
            if grant_to_status_frames(nr_grant) != nr_status {
                return Err(EINVAL);
            }
            if nr_grant <= self.part(t).xen.max_grant_frames {
                self.xen_grant_grow(t, nr_grant);
            }
        }
        self.part(t)
            .xen
            .grant_status
            .get(idx as usize)
            .copied()
            .ok_or(EINVAL)
    }

    /// `gnttab_map_frame_begin`'s choice of frame for an add_to_physmap `idx`.
    /// `XENMAPIDX_grant_table_status` selects a status frame in version 2 only; in
    /// version 1 it stays in the index, which is then beyond any table. The index is
    /// then truncated to 32 bits, as Xen passes the `unsigned long` on as an
    /// `unsigned int`.
    pub(crate) fn xen_grant_map_frame(&mut self, t: u32, idx: u64) -> Result<Mfn, i64> {
        if self.part(t).xen.grant_version == 2 && idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 {
            self.xen_grant_status_frame(t, (idx & !XENMAPIDX_GRANT_TABLE_STATUS) as u32)
        } else {
            self.xen_grant_shared_frame(t, idx as u32)
        }
    }

    /// Gives hypervisor page `m` of `slot` (already off its lists) back to the pool as
    /// available, unmapping it first.
    fn xen_special_free(&mut self, slot: u32, m: Mfn) {
        let gfn = self.frames.link(m);
        if gfn != NO_GFN {
            self.xen_special_unhook(slot, gfn);
        }
        let node = self.frames.node_of(m) as usize;
        self.part_mut(slot).pools[node].in_use -= 1;
        self.frames.set(m, FrameState::Hypervisor, 0, 0);
        let x = &mut self.part_mut(slot).xen;
        if x.heap_topped > 0 {
            // No depositor has an origin for it: back to the host heap.
            x.heap_topped -= 1;
            self.heap_free(m, 0);
        } else {
            self.pool_deposit(slot, m);
        }
    }

    /// Gives every hypervisor page of `slot` back to its pool as available, unmapping
    /// them first: what finalizing or destroying the partition does with them.
    pub(crate) fn xen_special_release(&mut self, slot: u32) {
        let frames: Vec<Mfn> = self.part(slot).xen.special_frames().collect();
        for m in frames {
            self.xen_special_free(slot, m);
        }
        let x = &mut self.part_mut(slot).xen;
        x.shared_info = None;
        x.grant_shared.clear();
        x.grant_status.clear();
    }

    /// `GNTTABOP_set_version` for partition `id` (a guest choosing its own grant table
    /// version): 1 or 2 (`EINVAL` otherwise; `ENOSYS` for 2 beyond the domain's
    /// `max_grant_version`). Going to 2 adds the status frames the
    /// table's shared frames need (`ENOMEM` if they cannot be had); going back to 1 frees
    /// them, unmapping any that are mapped. Returns the version in force. Errors are
    /// positive [`errno`](super::errno) values; `ESRCH` for an unknown partition.
    pub fn xen_grant_set_version(&mut self, id: PartitionId, version: u32) -> Result<u32, i64> {
        let t = self.slot_of(id).ok_or(ESRCH)?;
        if version != 1 && version != 2 {
            return Err(EINVAL);
        }
        let x = &self.part(t).xen;
        if version == 2 && x.max_grant_version < 2 {
            return Err(ENOSYS);
        }
        let current = u32::from(x.grant_version);
        if current == version {
            return Ok(current);
        }
        if version == 2 {
            let need = grant_to_status_frames(x.grant_shared.len() as u32) as u64;
            let st = if need == 0 {
                Vec::new()
            } else {
                self.xen_special_alloc(t, need).ok_or(ENOMEM)?
            };
            let x = &mut self.part_mut(t).xen;
            x.grant_status = st;
            x.grant_version = 2;
        } else {
            let st = core::mem::take(&mut self.part_mut(t).xen.grant_status);
            for m in st {
                self.xen_special_free(t, m);
            }
            self.part_mut(t).xen.grant_version = 1;
        }
        Ok(version)
    }
}
