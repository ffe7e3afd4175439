//! increase_reservation, decrease_reservation, populate_physmap, exchange
//! (`memory_exchange`) and claim_pages, as Xen's `xen/common/memory.c` serves them.

use core::mem::offset_of;

use ballast_abi::xen::{MemoryOp, XenMemoryExchange, XenMemoryReservation};

use super::errno::*;
use super::{Call, MAX_NR_EXTENTS, MemoryOpResult, Placement, StopReason, Xsm, elem};
use crate::Mfn;
use crate::frame::MAX_ORDER;
use crate::hypervisor::{FreshMapError, Hypervisor, SpaceError};
use crate::p2m::{GFN_LIMIT, MAX_BYTES_PER_GFN};

/// How a reservation loop ended early.
enum Halt {
    Stop(StopReason),
    Preempt,
}

impl From<StopReason> for Halt {
    fn from(r: StopReason) -> Self {
        Halt::Stop(r)
    }
}

/// One exchange, as checked: what every chunk needs.
struct Exchange {
    target: u32,
    x: XenMemoryExchange,
    in_chunk: u32,
    out_chunk: u32,
    place: Placement,
}

impl Hypervisor {
    /// The checks `do_memory_op` makes for the three reservation sub-ops, in Xen's order,
    /// then the sub-op.
    pub(super) fn xen_reservation(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        let start = c.start;
        let stop = |r| MemoryOpResult::count(start, Some(r));
        let Some(r) = c.read::<XenMemoryReservation>(c.arg) else {
            return stop(StopReason::Fault);
        };
        if r.nr_extents > MAX_NR_EXTENTS {
            return stop(StopReason::BadArgs);
        }
        if start >= r.nr_extents {
            let past_end = start > r.nr_extents;
            return MemoryOpResult::count(start, past_end.then_some(StopReason::BadArgs));
        }
        let Some(target) = self.xen_lookup(c.caller, r.domid) else {
            return stop(StopReason::NoDomain);
        };
        let place = match self.xen_reservation_placement(c.caller, target, r.mem_flags) {
            Ok(p) => p,
            Err(reason) => return stop(reason),
        };
        if !self.xen_xsm(c.caller, target, Xsm::Target) {
            return stop(StopReason::Denied);
        }
        // The root's memory is the identity map of free host memory: nothing is ever
        // mapped into its p2m, so only a (no-op) decrease can name it.
        if target == Self::ROOT_SLOT && c.op != MemoryOp::DECREASE_RESERVATION {
            return stop(StopReason::Denied);
        }
        let mut done = start;
        let outcome = match c.op {
            MemoryOp::INCREASE_RESERVATION => self.xen_increase(c, target, &r, &place, &mut done),
            MemoryOp::DECREASE_RESERVATION => self.xen_decrease(c, target, &r, &mut done),
            _ => self.xen_populate(c, target, &r, &place, &mut done),
        };
        match outcome {
            Ok(()) => MemoryOpResult::count(done, None),
            Err(Halt::Stop(reason)) => MemoryOpResult::count(done, Some(reason)),
            Err(Halt::Preempt) => MemoryOpResult::resume(c.op, done),
        }
    }

    /// Xen's `increase_reservation`: frames assigned to the target without a gfn; a PV target with a list gets
    /// their MFNs.
    fn xen_increase(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        r: &XenMemoryReservation,
        place: &Placement,
        done: &mut u64,
    ) -> Result<(), Halt> {
        let list = r.extent_start;
        if list != 0 && !c.array_ok(list, *done, r.nr_extents - *done, 8) {
            return Err(StopReason::Fault.into());
        }
        if r.extent_order > self.xen_max_order(c.caller) {
            return Err(StopReason::OrderTooBig.into());
        }
        let order = r.extent_order;
        let pages = 1u64 << order;
        let report = list != 0 && !self.part(target).xen.translated;
        while *done < r.nr_extents {
            if *done != c.start && c.preempt() {
                return Err(Halt::Preempt);
            }
            // Frames the guest physical space has no room for could never be mapped.
            let p = self.part(target);
            if p.tot_pages().saturating_add(pages) > p.gfn_limit {
                return Err(StopReason::BadGfn.into());
            }
            let m = self.xen_alloc_extent(target, order, place)?;
            if report && !c.write_u64(elem(list, *done, 8), u64::from(m)) {
                self.heap_free(m, order);
                return Err(StopReason::Fault.into());
            }
            for f in m..m + (1 << order) {
                self.assign_unmapped(target, f);
            }
            self.xen_charge_claim(target, pages);
            c.spend(pages);
            *done += 1;
        }
        Ok(())
    }

    /// Xen's `decrease_reservation`, each extent all or nothing.
    fn xen_decrease(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        r: &XenMemoryReservation,
        done: &mut u64,
    ) -> Result<(), Halt> {
        let list = r.extent_start;
        if !c.array_ok(list, *done, r.nr_extents - *done, 8) {
            return Err(StopReason::Fault.into());
        }
        if r.extent_order > self.xen_max_order(c.caller) {
            return Err(StopReason::OrderTooBig.into());
        }
        while *done < r.nr_extents {
            if *done != c.start && c.preempt() {
                return Err(Halt::Preempt);
            }
            let base = c.read_u64(elem(list, *done, 8)).ok_or(StopReason::Fault)?;
            if self.part(target).xen.translated && self.part(target).pod_entries() > 0 {
                self.xen_decrease_pod(c, target, base, r.extent_order)?;
                *done += 1;
                continue;
            }
            // The balloon's case, one 4 KiB page of a translated guest, without building
            // the extent's page list.
            if c.fast_paths && r.extent_order == 0 && self.part(target).xen.translated {
                if base >= GFN_LIMIT {
                    return Err(StopReason::BadGfn.into());
                }
                let m = self.unmap(target, base).ok_or(StopReason::NotMapped)?;
                self.heap_free(m, 0);
                c.spend(1);
                *done += 1;
                continue;
            }
            // A 2 MiB extent of a translated guest (what a balloon driver moving order-9
            // extents gives): every page checked as RAM first, then the run released as
            // the host's release does, one heap block when its frames form one.
            if c.fast_paths && r.extent_order == 9 && self.part(target).xen.translated {
                let end = base
                    .checked_add(512)
                    .filter(|&e| e <= GFN_LIMIT)
                    .ok_or(StopReason::BadGfn)?;
                if self.first_not_ram(target, base, end - base).is_some() {
                    return Err(StopReason::NotMapped.into());
                }
                c.spend(512);
                self.release_run(target, base, end);
                *done += 1;
                continue;
            }
            let pages = self.xen_extent_pages(target, base, r.extent_order)?;
            c.spend(pages.len() as u64);
            for (gfn, m) in pages {
                self.xen_free_page(c, target, gfn, m);
            }
            *done += 1;
        }
        Ok(())
    }

    /// One extent of a decrease on a domain with PoD entries (Xen's
    /// `p2m_pod_decrease_reservation`, then `guest_remove_page` for the rest). Every page
    /// of the extent must be a frame or a PoD entry, or nothing is removed (ballast's
    /// all-or-nothing extent). PoD entries are dropped without freeing anything; frames
    /// are unmapped and, while the domain has more PoD entries than cache frames, kept in
    /// the cache instead of freed (Xen "steals" them for the cache). Once the entries are
    /// fewer than the cache frames, the cache gives the excess back to the heap.
    fn xen_decrease_pod(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        base: u64,
        order: u32,
    ) -> Result<(), Halt> {
        let pages = 1u64 << order;
        let end = base
            .checked_add(pages)
            .filter(|&e| e <= GFN_LIMIT)
            .ok_or(StopReason::BadGfn)?;
        // A hypervisor page (shared info, a grant frame) is not RAM: the extent fails with
        // nothing removed, and such a page is never taken for the cache.
        let p2m = &self.part(target).p2m;
        if (base..end).any(|g| match p2m.get(g) {
            Some(m) => self.frames.state(m) == crate::frame::FrameState::Special,
            None => !p2m.is_pod(g),
        }) {
            return Err(StopReason::NotMapped.into());
        }
        c.spend(pages);
        let dying = self.xen_dying(target);
        for gfn in base..end {
            if self.part_mut(target).p2m.remove_pod(gfn) {
                continue;
            }
            let Some(m) = self.unmap(target, gfn) else {
                continue;
            };
            let p = self.part(target);
            if !dying && p.pod_entries() > p.xen.pod_cache {
                self.pod_cache_add(target, m);
            } else {
                self.heap_free(m, 0);
            }
        }
        self.xen_pod_trim_cache(target);
        Ok(())
    }

    /// Gives cache frames beyond the PoD entries back to the heap: a cache larger than
    /// the entries it backs holds memory nobody can use.
    pub(super) fn xen_pod_trim_cache(&mut self, target: u32) {
        while self.part(target).xen.pod_cache > self.part(target).pod_entries() {
            let Some(m) = self.pod_cache_take(target) else {
                break;
            };
            self.heap_free(m, 0);
        }
    }

    /// Xen's `populate_physmap`: fresh frames mapped at the listed gfns; a PV target gets their MFNs.
    fn xen_populate(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        r: &XenMemoryReservation,
        place: &Placement,
        done: &mut u64,
    ) -> Result<(), Halt> {
        let list = r.extent_start;
        let pod = r.mem_flags.populate_on_demand();
        if !c.array_ok(list, *done, r.nr_extents - *done, 8) {
            return Err(StopReason::Fault.into());
        }
        let max = if pod {
            MAX_ORDER
        } else {
            self.xen_max_order(c.caller)
        };
        if r.extent_order > max {
            return Err(StopReason::OrderTooBig.into());
        }
        let order = r.extent_order;
        let pages = 1u64 << order;
        let pv = !self.part(target).xen.translated;
        if c.fast_paths && order == 0 && !pv && !pod {
            return self.xen_populate_pages(c, target, r, place, done);
        }
        while *done < r.nr_extents {
            if *done != c.start && c.preempt() {
                return Err(Halt::Preempt);
            }
            let at = elem(list, *done, 8);
            let gfn = c.read_u64(at).ok_or(StopReason::Fault)?;
            if pod {
                // XSA-30: a domain may not populate-on-demand itself.
                if target == c.caller {
                    return Err(StopReason::Denied.into());
                }
                // Xen marks PoD entries only for an HVM domain; for PV the extent counts
                // and nothing happens.
                if !pv {
                    self.xen_mark_pod(target, gfn, pages)?;
                }
                c.spend(pages);
                *done += 1;
                continue;
            }
            let limit = self.part(target).gfn_limit;
            let end = gfn
                .checked_add(pages)
                .filter(|&e| e <= limit)
                .ok_or(StopReason::BadGfn)?;
            let p2m = &self.part(target).p2m;
            if (gfn..end).any(|g| p2m.get(g).is_some()) {
                return Err(StopReason::AlreadyMapped.into());
            }
            // Xen allocates the extent (dying, max_pages, claims) before it inserts it in
            // the p2m, where the tables may run out: the same order as the fast path.
            self.xen_alloc_extent_ok(target, order, place)?;
            self.xen_space_ok(target, gfn, pages)?;
            let m = self.xen_alloc_extent(target, order, place)?;
            if pv && !c.write_u64(at, u64::from(m)) {
                self.heap_free(m, order);
                return Err(StopReason::Fault.into());
            }
            for (g, f) in (gfn..end).zip(m..) {
                self.map(target, g, f);
            }
            self.xen_charge_claim(target, pages);
            c.spend(pages);
            *done += 1;
        }
        Ok(())
    }

    /// Xen's `guest_physmap_mark_populate_on_demand`: the extent becomes PoD entries, no
    /// frame is allocated and `tot_pages` does not move. Refused with passthrough
    /// devices, beyond the guest-physical limit or the p2m budget, and if any page of the
    /// extent is a frame (Xen -EBUSY); PoD entries already there are counted once.
    fn xen_mark_pod(&mut self, target: u32, gfn: u64, pages: u64) -> Result<(), Halt> {
        if self.part(target).xen.passthrough {
            return Err(StopReason::PopulateOnDemand.into());
        }
        // A Hyper-V Finalized partition has no guest space left to mark.
        if self.xen_dying(target) {
            return Err(StopReason::Dying.into());
        }
        let end = gfn
            .checked_add(pages)
            .filter(|&e| e <= self.part(target).gfn_limit)
            .ok_or(StopReason::BadGfn)?;
        let p2m = &self.part(target).p2m;
        if (gfn..end).any(|g| p2m.get(g).is_some()) {
            return Err(StopReason::AlreadyMapped.into());
        }
        self.xen_space_ok(target, gfn, pages)?;
        let p2m = &mut self.part_mut(target).p2m;
        for g in gfn..end {
            p2m.set_pod(g);
        }
        Ok(())
    }

    /// [`Hypervisor::guest_space_ok`] as a stop reason.
    pub(super) fn xen_space_ok(&self, target: u32, gfn: u64, pages: u64) -> Result<(), StopReason> {
        self.guest_space_ok(target, gfn, pages)
            .map_err(|e| match e {
                SpaceError::BeyondLimit => StopReason::BadGfn,
                SpaceError::Budget(_) => StopReason::P2mMemory,
            })
    }

    /// [`xen_populate`](Self::xen_populate) for the balloon's case: single pages of a
    /// translated guest. The same checks in the same order, with what cannot change
    /// during the call (dying, the other domains' claims) looked up once.
    fn xen_populate_pages(
        &mut self,
        c: &mut Call<'_>,
        target: u32,
        r: &XenMemoryReservation,
        place: &Placement,
        done: &mut u64,
    ) -> Result<(), Halt> {
        let list = r.extent_start;
        let dying = self.xen_dying(target);
        // Nothing else allocates or frees while the call runs: count locally.
        let p = self.part(target);
        let mut room = u64::from(p.xen.max_pages).saturating_sub(p.tot_pages());
        let mut free = self.frames.total_free();
        let limit = p.gfn_limit;
        let budget = self.p2m_budget_of(target);
        while *done < r.nr_extents {
            if *done != c.start && c.preempt() {
                return Err(Halt::Preempt);
            }
            let gfn = c.read_u64(elem(list, *done, 8)).ok_or(StopReason::Fault)?;
            if gfn >= limit {
                return Err(StopReason::BadGfn.into());
            }
            if dying {
                // Xen checks the gfn first: keep its order of answers.
                if self.part(target).p2m.get(gfn).is_some() {
                    return Err(StopReason::AlreadyMapped.into());
                }
                return Err(StopReason::Dying.into());
            }
            if room == 0 {
                if self.part(target).p2m.get(gfn).is_some() {
                    return Err(StopReason::AlreadyMapped.into());
                }
                return Err(StopReason::MaxPages.into());
            }
            let own = u64::from(self.part(target).xen.outstanding_claim);
            if own == 0 && place.other_claims.saturating_add(1) > free {
                if self.part(target).p2m.get(gfn).is_some() {
                    return Err(StopReason::AlreadyMapped.into());
                }
                return Err(if free == 0 {
                    StopReason::NoMemory
                } else {
                    StopReason::Claim
                }
                .into());
            }
            // The tables the gfn needs, looked at only near the budget.
            let p2m = &self.part(target).p2m;
            let have = p2m.table_bytes();
            if have + MAX_BYTES_PER_GFN > budget {
                let new = p2m.new_table_bytes_one(gfn);
                if new > 0 && have + new > budget {
                    return Err(StopReason::P2mMemory.into());
                }
            }
            // Allocate, then map only if the gfn is free, in one p2m walk; a mapped gfn
            // (rare: the guest named it twice) hands the frame straight back.
            match self.heap_map_fresh(target, gfn, place.sel, place.limit) {
                Ok(_) => {}
                Err(FreshMapError::Mapped) => return Err(StopReason::AlreadyMapped.into()),
                Err(FreshMapError::NoMemory) => {
                    if self.part(target).p2m.get(gfn).is_some() {
                        return Err(StopReason::AlreadyMapped.into());
                    }
                    return Err(StopReason::NoMemory.into());
                }
            }
            if own > 0 {
                self.part_mut(target).xen.outstanding_claim -= 1;
            }
            room -= 1;
            free -= 1;
            c.spend(1);
            *done += 1;
        }
        Ok(())
    }

    /// Xen's `memory_exchange`: the checks in Xen's order, then chunk by chunk, each atomic.
    pub(super) fn xen_exchange(&mut self, c: &mut Call<'_>) -> MemoryOpResult {
        let Some(x) = c.read::<XenMemoryExchange>(c.arg) else {
            return MemoryOpResult::err(EFAULT);
        };
        let (i, o) = (x.in_, x.out);
        // Xen writes nr_exchanged back on every failure after the copy.
        let fail = |c: &mut Call<'_>, errno: i64, nr: u64| {
            let at = c.field(offset_of!(XenMemoryExchange, nr_exchanged));
            MemoryOpResult::err(if c.write_u64(at, nr) { errno } else { EFAULT })
        };
        if i.extent_order.max(o.extent_order) > self.xen_max_order(c.caller) {
            return fail(c, EPERM, x.nr_exchanged);
        }
        // The orders are at most MAX_ORDER now, and the shifts below are guarded by the
        // overflow checks before them.
        let sane = x.nr_exchanged <= i.nr_extents
            && i.domid == o.domid
            && (u64::MAX >> i.extent_order) >= i.nr_extents
            && (u64::MAX >> o.extent_order) >= o.nr_extents
            && (i.nr_extents << i.extent_order) == (o.nr_extents << o.extent_order);
        if !sane {
            return fail(c, EINVAL, x.nr_exchanged);
        }
        if x.nr_exchanged == i.nr_extents {
            return MemoryOpResult::value(0);
        }
        let (in_chunk, out_chunk) = if i.extent_order <= o.extent_order {
            (o.extent_order - i.extent_order, 0)
        } else {
            (0, i.extent_order - o.extent_order)
        };
        let first = x.nr_exchanged >> in_chunk;
        let (in_first, out_first) = (first << in_chunk, first << out_chunk);
        if !c.array_ok(i.extent_start, in_first, i.nr_extents - in_first, 8)
            || !c.array_ok(
                o.extent_start,
                out_first,
                o.nr_extents.saturating_sub(out_first),
                8,
            )
        {
            return fail(c, EFAULT, x.nr_exchanged);
        }
        let Ok(node) = self.xen_requested_node(c.caller, o.mem_flags) else {
            return fail(c, EINVAL, x.nr_exchanged);
        };
        let Some(target) = self.xen_lookup(c.caller, i.domid) else {
            return fail(c, ESRCH, x.nr_exchanged);
        };
        if !self.xen_xsm(c.caller, target, Xsm::Target) || target == Self::ROOT_SLOT {
            return fail(c, EPERM, x.nr_exchanged);
        }
        if self.xen_dying(target) {
            return fail(c, EINVAL, x.nr_exchanged);
        }
        // Xen clamps the width and lets allocation fail, rather than refuse 12 bits or
        // fewer as the reservation sub-ops do.
        let limit = self.xen_address_limit(o.mem_flags.get_address_bits());
        let place = self.xen_placement(target, node, limit.unwrap_or(crate::frame::NO_FRAME));
        let ex = Exchange {
            target,
            x,
            in_chunk,
            out_chunk,
            place,
        };
        let chunks = i.nr_extents >> in_chunk;
        for k in first..chunks {
            if k != first && c.preempt() {
                let at = c.field(offset_of!(XenMemoryExchange, nr_exchanged));
                if !c.write_u64(at, k << in_chunk) {
                    return MemoryOpResult::err(EFAULT);
                }
                return MemoryOpResult {
                    ret: 0,
                    continuation: Some(c.cmd),
                    stop: None,
                };
            }
            if let Err(errno) = self.xen_exchange_chunk(c, &ex, k) {
                return fail(c, errno, k << in_chunk);
            }
        }
        let at = c.field(offset_of!(XenMemoryExchange, nr_exchanged));
        if c.write_u64(at, i.nr_extents) {
            MemoryOpResult::value(0)
        } else {
            MemoryOpResult::err(EFAULT)
        }
    }

    /// Exchanges chunk `k`: 2^in_chunk input extents for 2^out_chunk output extents.
    /// Everything that can fail is done before the first change.
    fn xen_exchange_chunk(&mut self, c: &mut Call<'_>, ex: &Exchange, k: u64) -> Result<(), i64> {
        let (i, o, t) = (&ex.x.in_, &ex.x.out, ex.target);
        let mut inputs: Vec<(Option<u64>, Mfn)> = Vec::new();
        for e in (k << ex.in_chunk)..((k + 1) << ex.in_chunk) {
            let base = c.read_u64(elem(i.extent_start, e, 8)).ok_or(EFAULT)?;
            inputs.extend(
                self.xen_extent_pages(t, base, i.extent_order)
                    .map_err(|_| EINVAL)?,
            );
        }
        let mut mfns: Vec<Mfn> = inputs.iter().map(|p| p.1).collect();
        mfns.sort_unstable();
        if mfns.windows(2).any(|w| w[0] == w[1]) {
            return Err(EINVAL);
        }
        let mut freed: Vec<u64> = inputs.iter().filter_map(|p| p.0).collect();
        freed.sort_unstable();

        let out_pages = 1u64 << o.extent_order;
        let out_ix = (k << ex.out_chunk)..((k + 1) << ex.out_chunk);
        let translated = self.part(t).xen.translated;
        let mut outs = Vec::new();
        let limit = self.part(t).gfn_limit;
        let mut tables = 0u64;
        for e in out_ix.clone() {
            let gfn = c.read_u64(elem(o.extent_start, e, 8)).ok_or(EFAULT)?;
            if !translated {
                // A PV guest's output gpfns only label the new frames in the m2p (Xen's
                // memory_exchange does nothing else with them for a non-translated
                // domain), so any value is accepted: libxenctrl bounces the out list
                // OUT-only and the hypervisor sees zeros.
                outs.push(gfn);
                continue;
            }
            let end = gfn
                .checked_add(out_pages)
                .filter(|&e| e <= limit)
                .ok_or(EINVAL)?;
            // Summed per output extent, so tables two outputs share count twice: a bound.
            tables = tables.saturating_add(self.part(t).p2m.new_table_bytes(gfn, out_pages));
            let p2m = &self.part(t).p2m;
            // An output may land where this chunk's inputs are, never on another page.
            if (gfn..end).any(|g| p2m.get(g).is_some() && freed.binary_search(&g).is_err()) {
                return Err(EINVAL);
            }
            outs.push(gfn);
        }
        let mut sorted = outs.clone();
        sorted.sort_unstable();
        if translated && sorted.windows(2).any(|w| w[0] + out_pages > w[1]) {
            return Err(EINVAL);
        }
        if tables > 0
            && self.part(t).p2m.table_bytes().saturating_add(tables) > self.p2m_budget_of(t)
        {
            return Err(ENOMEM);
        }

        let own = u64::from(self.part(t).xen.outstanding_claim);
        let mut blocks: Vec<Mfn> = Vec::with_capacity(outs.len());
        for _ in &outs {
            match self.xen_alloc_unowned(o.extent_order, &ex.place, own) {
                Some(m) => blocks.push(m),
                None => {
                    for &m in &blocks {
                        self.heap_free(m, o.extent_order);
                    }
                    return Err(ENOMEM);
                }
            }
        }
        if !translated {
            for (j, (e, &m)) in out_ix.clone().zip(&blocks).enumerate() {
                if !c.write_u64(elem(o.extent_start, e, 8), u64::from(m)) {
                    // Put back the gfns already overwritten: the chunk did not happen.
                    for (e, &gfn) in out_ix.clone().zip(&outs).take(j) {
                        c.write_u64(elem(o.extent_start, e, 8), gfn);
                    }
                    for &m in &blocks {
                        self.heap_free(m, o.extent_order);
                    }
                    return Err(EFAULT);
                }
            }
        }

        // The chunk cannot fail from here on. Its pages trade places one for one, so
        // tot_pages does not move and max_pages is not consulted (Xen's MEMF_no_refcount).
        c.spend(inputs.len() as u64);
        for (gfn, m) in inputs {
            self.xen_free_page(c, t, gfn, m);
        }
        for (&gfn, &m) in outs.iter().zip(&blocks) {
            for (k, f) in (0..out_pages).zip(m..) {
                let g = gfn.wrapping_add(k);
                // Translated outputs were checked free above.
                if translated
                    || (self.part(t).p2m.get(g).is_none() && self.guest_space_ok(t, g, 1).is_ok())
                {
                    self.map(t, g, f);
                } else {
                    // Xen would record the same gpfn for two frames (or one beyond
                    // the guest physical space); ballast's m2p holds one frame per
                    // gfn, so this one belongs to the guest without a gfn.
                    self.assign_unmapped(t, f);
                }
            }
        }
        Ok(())
    }

    /// XENMEM_claim_pages: `domain_set_outstanding_pages` (`xen/common/page_alloc.c`).
    pub(super) fn xen_claim_pages(&mut self, c: &mut Call<'_>) -> Result<i64, i64> {
        let r = c.read::<XenMemoryReservation>(c.arg).ok_or(EFAULT)?;
        if r.extent_start != 0 || r.extent_order != 0 || r.mem_flags.0 != 0 {
            return Err(EINVAL);
        }
        // The plain id lookup: DOMID_SELF is not an id, so it is invalid here.
        let t = self.xen_lookup_id(r.domid).ok_or(EINVAL)?;
        if !self.xen_xsm(c.caller, t, Xsm::Priv) {
            return Err(EPERM);
        }
        if self.xen_dying(t) {
            return Err(EINVAL);
        }
        let pages = r.nr_extents;
        if pages == 0 {
            self.part_mut(t).xen.outstanding_claim = 0;
            return Ok(0);
        }
        let p = self.part(t);
        if p.xen.outstanding_claim != 0
            || pages <= p.tot_pages()
            || pages > u64::from(p.xen.max_pages)
        {
            return Err(EINVAL);
        }
        // Claims are measured against what the domain already has.
        let claim = pages - p.tot_pages();
        let avail = self
            .frames
            .total_free()
            .saturating_sub(self.outstanding_claims());
        if claim > avail {
            return Err(ENOMEM);
        }
        // At most max_pages, a u32.
        self.part_mut(t).xen.outstanding_claim = claim as u32;
        Ok(0)
    }
}
