//! The guest physical space of a partition, as a hostile guest and a Xen toolstack use it:
//! the guest-physical limit (nothing is mapped past the backing memory), the p2m table
//! budget (a sparse guest cannot make the host spend unbounded heap on tables),
//! populate-on-demand (`XENMEMF_populate_on_demand`, `XENMEM_set_pod_target`,
//! `XENMEM_get_pod_target`, the PoD cache reclaimed by decrease_reservation) and the
//! per-domain extent order of domains with passthrough devices.
//!
//! Every call is followed by `Hypervisor::check`.

use ballast_abi::hv::HvProximityDomainInfo;
use ballast_abi::xen::{
    DOMID_SELF, MapSpace, MemFlags, MemoryOp, XenAddToPhysmap, XenMemoryExchange,
    XenMemoryReservation, XenPodTarget,
};
use ballast_core::xen::errno::*;
use ballast_core::xen::{MemoryOpResult, StopReason};
use ballast_core::{
    Config, DomId, FlatMemory, GuestMemory, Hypervisor, MemoryError, PartitionId, ROOT_DOMID,
};
use zerocopy::{FromZeros, Immutable, IntoBytes};

const BASE: u64 = 0x10_0000;
const ARG: u64 = BASE;
const LIST: u64 = BASE + 0x1000;
const LIST2: u64 = BASE + 0x4000;
const MEM_LEN: usize = 0x8000;
const C: DomId = ROOT_DOMID;

struct Env {
    hv: Hypervisor,
    mem: FlatMemory,
}

impl Env {
    fn new(frames: u32) -> Self {
        Env {
            hv: Hypervisor::new(Config::single_node(frames)).unwrap(),
            mem: FlatMemory::new(BASE, MEM_LEN),
        }
    }

    fn guest(&mut self, max_pages: u32) -> (PartitionId, DomId) {
        let id = self
            .hv
            .create_guest(max_pages, HvProximityDomainInfo::ANY)
            .unwrap();
        (id, self.hv.partition(id).unwrap().domid())
    }

    fn call<A: IntoBytes + Immutable>(
        &mut self,
        caller: DomId,
        cmd: u64,
        arg: &A,
    ) -> MemoryOpResult {
        self.mem.write(ARG, arg.as_bytes()).unwrap();
        let r = self
            .hv
            .memory_op_to_completion(caller, cmd, ARG, &mut self.mem);
        self.hv.check().unwrap();
        r
    }

    fn list(&mut self, at: u64, v: &[u64]) {
        for (i, x) in v.iter().enumerate() {
            self.mem.write_u64(at + 8 * i as u64, *x).unwrap();
        }
    }

    fn reservation(
        &mut self,
        caller: DomId,
        op: MemoryOp,
        domid: DomId,
        gfns: &[u64],
        order: u32,
        flags: MemFlags,
    ) -> (i64, Option<StopReason>) {
        self.list(LIST, gfns);
        let r = XenMemoryReservation {
            extent_start: LIST,
            nr_extents: gfns.len() as u64,
            extent_order: order,
            mem_flags: flags,
            domid: domid.0,
            _pad0: [0; 6],
        };
        let out = self.call(caller, cmd(op, 0), &r);
        (out.ret, out.stop)
    }

    fn populate(
        &mut self,
        caller: DomId,
        domid: DomId,
        gfns: &[u64],
        order: u32,
    ) -> (i64, Option<StopReason>) {
        self.reservation(
            caller,
            MemoryOp::POPULATE_PHYSMAP,
            domid,
            gfns,
            order,
            MemFlags::NONE,
        )
    }

    fn pod(
        &mut self,
        caller: DomId,
        domid: DomId,
        gfns: &[u64],
        order: u32,
    ) -> (i64, Option<StopReason>) {
        let f = MemFlags::POPULATE_ON_DEMAND;
        self.reservation(caller, MemoryOp::POPULATE_PHYSMAP, domid, gfns, order, f)
    }

    fn decrease(&mut self, domid: DomId, gfns: &[u64], order: u32) -> (i64, Option<StopReason>) {
        let op = MemoryOp::DECREASE_RESERVATION;
        self.reservation(domid, op, DomId(DOMID_SELF), gfns, order, MemFlags::NONE)
    }

    fn move_gmfn(&mut self, caller: DomId, idx: u64, gpfn: u64) -> i64 {
        let x = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: MapSpace::GMFN,
            idx,
            gpfn,
        };
        self.call(caller, cmd(MemoryOp::ADD_TO_PHYSMAP, 0), &x).ret
    }

    /// set_pod_target (or get with `None`) by `caller`: the return value and what it
    /// reported (tot_pages, pod_cache_pages, pod_entries).
    fn pod_target(
        &mut self,
        caller: DomId,
        domid: DomId,
        target: Option<u64>,
    ) -> (i64, (u64, u64, u64)) {
        let op = if target.is_some() {
            MemoryOp::SET_POD_TARGET
        } else {
            MemoryOp::GET_POD_TARGET
        };
        let t = XenPodTarget {
            target_pages: target.unwrap_or(u64::MAX),
            domid: domid.0,
            ..XenPodTarget::new_zeroed()
        };
        let r = self.call(caller, cmd(op, 0), &t);
        let mut back = XenPodTarget::new_zeroed();
        self.mem.read(ARG, back.as_mut_bytes()).unwrap();
        (
            r.ret,
            (back.tot_pages, back.pod_cache_pages, back.pod_entries),
        )
    }

    fn free(&self) -> u64 {
        self.hv.frames().total_free()
    }

    fn part(&self, d: DomId) -> &ballast_core::Partition {
        self.hv.partition_by_domid(d).unwrap()
    }
}

fn cmd(op: MemoryOp, start: u64) -> u64 {
    u64::from(op.0) | start << 6
}

// ---------------------------------------------------------------------------------------
// The guest-physical limit
// ---------------------------------------------------------------------------------------

/// The attack of issue 12 §2: a gmfn move to a gfpn past the backing memory used to record
/// an `Effect::Move` the host could not apply. Now it fails with Xen's -EINVAL before
/// anything changes.
#[test]
fn add_to_physmap_past_the_limit_is_refused_before_any_effect() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(64);
    e.hv.set_guest_physical_limit(id, 256).unwrap();
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &[4], 0), (1, None));
    e.hv.take_effects();
    let before = e.part(u).p2m().iter().collect::<Vec<_>>();
    assert_eq!(e.move_gmfn(u, 4, 256), -EINVAL);
    assert_eq!(e.move_gmfn(u, 4, 1 << 30), -EINVAL);
    assert!(e.hv.effects().is_empty(), "no effect for a refused move");
    assert_eq!(e.part(u).p2m().iter().collect::<Vec<_>>(), before);
    // The last gfn below the limit is fine.
    assert_eq!(e.move_gmfn(u, 4, 255), 0);
    assert_eq!(e.part(u).p2m().get(255), before.first().map(|p| p.1));
}

/// The second attack: populate past the backing memory, then move. The populate stops at
/// the limit, so there is nothing past it to move.
#[test]
fn populate_stops_at_the_limit() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(1024);
    e.hv.set_guest_physical_limit(id, 256).unwrap();
    let free = e.free();
    // Single pages (the fast path): 250..256 done, 256 stops the call.
    let gfns: Vec<u64> = (250..260).collect();
    assert_eq!(
        e.populate(u, DomId(DOMID_SELF), &gfns, 0),
        (6, Some(StopReason::BadGfn))
    );
    assert_eq!(
        e.free(),
        free - 6,
        "nothing allocated for the refused extent"
    );
    // An extent that straddles the limit fails whole, before its frames are allocated.
    assert_eq!(e.populate(C, u, &[0x80], 8), (0, Some(StopReason::BadGfn)));
    assert_eq!(e.free(), free - 6);
    assert_eq!(e.part(u).p2m().highest_entry(), Some(255));
    // The move from 255 past the limit is refused.
    assert_eq!(e.move_gmfn(u, 255, 300), -EINVAL);
    // The host's own populate (boot memory, an unballoon, a hot-add) too.
    assert_eq!(
        e.hv.populate(id, 200, 100),
        Err(MemoryError::GfnOutOfRange(300))
    );
    assert_eq!(e.free(), free - 6);
    e.hv.check().unwrap();
}

#[test]
fn exchange_and_increase_respect_the_limit() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(512);
    e.hv.set_guest_physical_limit(id, 256).unwrap();
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &[1], 0), (1, None));
    // Exchange gfn 1 for a page at gfn 256: -EINVAL, nothing exchanged.
    e.list(LIST, &[1]);
    e.list(LIST2, &[256]);
    let side = |list| XenMemoryReservation {
        extent_start: list,
        nr_extents: 1,
        extent_order: 0,
        mem_flags: MemFlags::NONE,
        domid: DOMID_SELF,
        _pad0: [0; 6],
    };
    let x = XenMemoryExchange {
        in_: side(LIST),
        out: side(LIST2),
        nr_exchanged: 0,
    };
    assert_eq!(e.call(u, cmd(MemoryOp::EXCHANGE, 0), &x).ret, -EINVAL);
    assert!(e.part(u).p2m().get(1).is_some());
    e.list(LIST2, &[255]);
    assert_eq!(e.call(u, cmd(MemoryOp::EXCHANGE, 0), &x).ret, 0);
    assert!(e.part(u).p2m().get(255).is_some());
    // increase_reservation: frames the guest space has no gfns for are refused.
    let op = MemoryOp::INCREASE_RESERVATION;
    let (n, stop) = e.reservation(u, op, DomId(DOMID_SELF), &[0; 300], 0, MemFlags::NONE);
    assert_eq!((n, stop), (255, Some(StopReason::BadGfn)));
    assert_eq!(e.part(u).tot_pages(), 256);
}

#[test]
fn the_limit_is_raised_by_hot_add_and_never_below_a_used_gfn() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(1024);
    // A new partition has the whole p2m.
    assert_eq!(e.hv.partition(id).unwrap().gfn_limit(), 1 << 40);
    e.hv.set_guest_physical_limit(id, 256).unwrap();
    e.hv.populate(id, 0, 256).unwrap();
    assert_eq!(
        e.hv.set_guest_physical_limit(id, 255),
        Err(MemoryError::LimitBelowMapped(255))
    );
    assert_eq!(
        e.hv.set_guest_physical_limit(id, (1 << 40) + 1),
        Err(MemoryError::GfnOutOfRange((1 << 40) + 1))
    );
    // A hot-add of 256 pages: the host grows the memory, raises the limit, populates.
    e.hv.set_guest_physical_limit(id, 512).unwrap();
    e.hv.populate(id, 256, 256).unwrap();
    // PoD entries count as used gfns too.
    e.hv.set_guest_physical_limit(id, 1024).unwrap();
    assert_eq!(e.pod(C, u, &[900], 0), (1, None));
    assert_eq!(
        e.hv.set_guest_physical_limit(id, 900),
        Err(MemoryError::LimitBelowMapped(900))
    );
    e.hv.check().unwrap();
}

// ---------------------------------------------------------------------------------------
// The p2m table budget
// ---------------------------------------------------------------------------------------

/// Issue 12 §2: one page every 2^18 gfns costs a leaf and an inner table per page, some
/// 6 KiB of host heap per 4 KiB guest page. The budget stops it with a clear reason, per
/// partition, before the extent changes anything.
#[test]
fn a_sparse_populate_hits_the_p2m_budget() {
    let mut e = Env::new(8192);
    let (a_id, a) = e.guest(4096);
    let (b_id, b) = e.guest(4096);
    let (budget, used) = e.hv.p2m_usage(a_id).unwrap();
    // The default: 256 KiB + 4 KiB per MiB of max_pages (16 MiB).
    assert_eq!((budget, used), ((256 << 10) + (64 << 10), 0));
    let sparse: Vec<u64> = (0..1024u64).map(|i| i << 18).collect();
    let free = e.free();
    let (n, stop) = e.populate(a, DomId(DOMID_SELF), &sparse, 0);
    assert_eq!(stop, Some(StopReason::P2mMemory), "stopped after {n} pages");
    assert!(n > 10 && n < 100, "{n} pages before the budget");
    let (_, used) = e.hv.p2m_usage(a_id).unwrap();
    assert!(used <= budget, "{used} bytes of tables, budget {budget}");
    assert_eq!(
        e.free(),
        free - n as u64,
        "the refused page was not allocated"
    );
    // The same through the host API, in one call: refused whole.
    let free = e.free();
    assert_eq!(
        e.hv.populate(a_id, (n as u64) << 18, 1),
        Err(MemoryError::P2mBudget(budget))
    );
    assert_eq!(e.free(), free);
    // A PoD mark and a gmfn move to a fresh region are charged the same way.
    assert_eq!(
        e.pod(C, a, &[(4000u64) << 18], 0),
        (0, Some(StopReason::P2mMemory))
    );
    assert_eq!(e.move_gmfn(a, 0, 4001 << 18), -ENOMEM);
    // Another partition is unaffected: it maps its whole max_pages densely ...
    e.hv.populate(b_id, 0, 4096).unwrap();
    let (_, b_used) = e.hv.p2m_usage(b_id).unwrap();
    assert!(b_used < 32 << 10, "{b_used} bytes for a dense 16 MiB");
    // ... and a's own dense pages still fit where tables exist.
    assert_eq!(e.populate(a, DomId(DOMID_SELF), &[1, 2, 3], 0), (3, None));
    // Freeing the sparse pages frees their tables, and the budget is usable again.
    let back: Vec<u64> = (1..n as u64).map(|i| i << 18).collect();
    assert_eq!(e.decrease(a, &back, 0).0, back.len() as i64);
    assert!(e.hv.p2m_usage(a_id).unwrap().1 < used);
    assert_eq!(e.populate(a, DomId(DOMID_SELF), &[1 << 18], 0), (1, None));
    // An explicit budget (the toolstack's paging-pool size) replaces the default.
    e.hv.set_p2m_budget(b_id, Some(0)).unwrap();
    assert_eq!(e.hv.p2m_usage(b_id).unwrap().0, 0);
    let op = MemoryOp::DECREASE_RESERVATION;
    assert_eq!(
        e.reservation(b, op, DomId(DOMID_SELF), &[5, 6], 0, MemFlags::NONE),
        (2, None)
    );
    // Gfn 5's leaf is still there: re-populating it needs no new table.
    assert_eq!(e.populate(b, DomId(DOMID_SELF), &[5], 0), (1, None));
    assert_eq!(
        e.populate(b, DomId(DOMID_SELF), &[1 << 20], 0),
        (0, Some(StopReason::P2mMemory))
    );
    e.hv.check().unwrap();
}

// ---------------------------------------------------------------------------------------
// Populate-on-demand
// ---------------------------------------------------------------------------------------

/// How an HVM guest boots with less memory than its maximum (libxl's `maxmem` > `memory`):
/// the builder marks all of RAM PoD and sets the target; the guest's accesses take frames
/// from the cache; its balloon driver gives the PoD entries back until the cache covers
/// the rest.
#[test]
fn pod_boot_demand_populate_and_balloon() {
    let mut e = Env::new(8192);
    let (id, u) = e.guest(2048);
    e.hv.set_guest_physical_limit(id, 2048).unwrap();
    let free = e.free();
    // The builder (control domain): 2048 gfns PoD, order 9. Nothing is allocated.
    assert_eq!(e.pod(C, u, &[0, 512, 1024, 1536], 9), (4, None));
    assert_eq!(e.free(), free);
    assert_eq!(e.pod_target(C, u, None), (0, (0, 0, 2048)));
    // Target 1024 pages: the cache is filled from the heap and counted in tot_pages.
    assert_eq!(e.pod_target(C, u, Some(1024)), (0, (1024, 1024, 2048)));
    assert_eq!(e.free(), free - 1024);
    // The guest touches gfn 7: a cache frame is mapped there.
    let m = e.hv.pod_demand_populate(id, 7).unwrap();
    assert_eq!(e.part(u).p2m().get(7), Some(m));
    assert_eq!(e.pod_target(u, u, None).0, -EPERM, "PRIV only");
    assert_eq!(e.pod_target(C, u, None), (0, (1024, 1023, 2047)));
    assert_eq!(e.hv.pod_demand_populate(id, 7), Err(MemoryError::NotPod(7)));
    e.hv.check().unwrap();
    // The balloon driver gives back 1024 PoD entries: nothing is freed while the entries
    // still outnumber the cache...
    let balloon: Vec<u64> = (1023..2048).collect();
    assert_eq!(e.decrease(u, &balloon[..1000], 0), (1000, None));
    assert_eq!(e.pod_target(C, u, None), (0, (1024, 1023, 1047)));
    assert_eq!(e.free(), free - 1024);
    // ... and once they are fewer, the excess cache goes back to the heap.
    assert_eq!(e.decrease(u, &balloon[1000..], 0), (25, None));
    assert_eq!(e.pod_target(C, u, None), (0, (1023, 1022, 1022)));
    assert_eq!(e.free(), free - 1023);
    // Every remaining PoD gfn can now be backed.
    for gfn in (0..1023).filter(|&g| g != 7) {
        e.hv.pod_demand_populate(id, gfn).unwrap();
    }
    assert_eq!(e.pod_target(C, u, None), (0, (1023, 0, 0)));
    assert_eq!(e.part(u).p2m().mapped(), 1023);
    // A fully populated domain without PoD entries: set_pod_target changes nothing.
    assert_eq!(e.pod_target(C, u, Some(2048)), (0, (1023, 0, 0)));
    e.hv.destroy_partition(id).unwrap();
    assert_eq!(e.free(), free);
    e.hv.check().unwrap();
}

#[test]
fn decrease_steals_frames_for_the_cache_and_empty_cache_is_reported() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(1024);
    assert_eq!(e.pod(C, u, &[0], 9), (1, None));
    // The guest populates 16 pages itself over PoD entries (replacing them).
    let own: Vec<u64> = (0..16).collect();
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &own, 0), (16, None));
    assert_eq!(e.pod_target(C, u, None), (0, (16, 0, 496)));
    // Nothing in the cache: a guest access to a PoD gfn cannot be served.
    assert_eq!(
        e.hv.pod_demand_populate(id, 100),
        Err(MemoryError::PodCacheEmpty)
    );
    // A populated domain with entries: the cache is set to the entries at most.
    assert_eq!(e.pod_target(C, u, Some(1024)), (0, (512, 496, 496)));
    // Ballooning RAM while entries exceed the cache keeps the frames in the cache.
    e.hv.pod_demand_populate(id, 100).unwrap();
    e.hv.pod_demand_populate(id, 101).unwrap();
    assert_eq!(e.pod_target(C, u, None), (0, (512, 494, 494)));
    let free = e.free();
    e.hv.take_effects();
    // 100 is RAM, 102 PoD: the PoD entry goes, and the frame of 100 is kept for the
    // cache only while the entries outnumber it (493 entries, 494 cache: it is freed).
    assert_eq!(e.decrease(u, &[100, 102], 0), (2, None));
    assert!(e.hv.effects().iter().any(|x| x.discards(id, 100)));
    assert_eq!(e.pod_target(C, u, None), (0, (510, 493, 493)));
    assert_eq!(e.free(), free + 2);
    // Lower the cache below the entries (a target below tot_pages changes nothing) ...
    assert_eq!(e.pod_target(C, u, Some(100)), (0, (510, 493, 493)));
    // ... so take frames out through demand population instead, then balloon RAM: now the
    // entries outnumber the cache and the freed frame is stolen for it.
    assert_eq!(e.pod(C, u, &[600, 601], 0), (2, None));
    assert_eq!(e.pod_target(C, u, None), (0, (510, 493, 495)));
    let free = e.free();
    assert_eq!(e.decrease(u, &[0], 0), (1, None));
    assert_eq!(e.pod_target(C, u, None), (0, (510, 494, 495)));
    assert_eq!(e.free(), free, "the frame went to the cache, not the heap");
    // A hole in the extent: nothing is removed.
    assert_eq!(e.decrease(u, &[1000], 0), (0, Some(StopReason::NotMapped)));
    e.hv.check().unwrap();
}

#[test]
fn pod_checks_follow_xen() {
    let mut e = Env::new(4096);
    let (id, u) = e.guest(1024);
    let (pv_id, pv) = e.guest(1024);
    e.hv.set_translated(pv_id, false).unwrap();
    // XSA-30: not on oneself.
    assert_eq!(
        e.pod(u, DomId(DOMID_SELF), &[0], 0),
        (0, Some(StopReason::Denied))
    );
    // PV: the extent counts and nothing happens.
    assert_eq!(e.pod(C, pv, &[0, 1], 0), (2, None));
    assert_eq!(e.part(pv).pod_entries(), 0);
    assert_eq!(e.pod_target(C, pv, Some(10)).0, -EINVAL);
    assert_eq!(e.pod_target(C, pv, None).0, -EINVAL);
    // A frame in the extent: -EBUSY in Xen, the extent stops.
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &[5], 0), (1, None));
    assert_eq!(e.pod(C, u, &[0], 3), (0, Some(StopReason::AlreadyMapped)));
    assert_eq!(e.part(u).pod_entries(), 0);
    // Marking twice counts once; PoD orders go up to MAX_ORDER (not max_order).
    assert_eq!(e.pod(C, u, &[8, 8], 3), (2, None));
    assert_eq!(e.part(u).pod_entries(), 8);
    assert_eq!(e.pod(C, u, &[1 << 12], 10), (1, None));
    assert_eq!(e.part(u).pod_entries(), 8 + 1024);
    assert_eq!(e.pod(C, u, &[0], 19), (0, Some(StopReason::OrderTooBig)));
    // set_pod_target: beyond max_pages -EINVAL; unknown domain -ESRCH.
    assert_eq!(e.pod_target(C, u, Some(1025)).0, -EINVAL);
    assert_eq!(e.pod_target(C, DomId(0x7000), Some(1)).0, -ESRCH);
    // A target below tot_pages changes nothing.
    assert_eq!(e.pod_target(C, u, Some(0)), (0, (1, 0, 8 + 1024)));
    // The heap cannot fill the cache: -ENOMEM, with what was filled kept.
    let (big_id, big) = e.guest(8192);
    assert_eq!(e.pod(C, big, &[0], 13), (1, None));
    let free = e.free();
    assert_eq!(e.pod_target(C, big, Some(8192)).0, -ENOMEM);
    assert_eq!(e.part(big).xen().pod_cache, free);
    e.hv.destroy_partition(big_id).unwrap();
    // Passthrough: -ENOTEMPTY for the target, the mark stops.
    e.hv.set_passthrough(id, true).unwrap();
    assert_eq!(e.pod_target(C, u, Some(100)).0, -ENOTEMPTY);
    assert_eq!(
        e.pod(C, u, &[700], 0),
        (0, Some(StopReason::PopulateOnDemand))
    );
    e.hv.check().unwrap();
}

#[test]
fn set_pod_target_is_preemptible() {
    let mut e = Env::new(4096);
    let (_, u) = e.guest(2048);
    assert_eq!(e.pod(C, u, &[0], 11), (1, None));
    let t = XenPodTarget {
        target_pages: 2000,
        domid: u.0,
        ..XenPodTarget::new_zeroed()
    };
    e.mem.write(ARG, t.as_bytes()).unwrap();
    let mut c = cmd(MemoryOp::SET_POD_TARGET, 0);
    let mut calls = 0;
    loop {
        calls += 1;
        let r = e.hv.memory_op(C, c, ARG, &mut e.mem, 256);
        e.hv.check().unwrap();
        match r.continuation {
            Some(next) => c = next,
            None => {
                assert_eq!(r.ret, 0);
                break;
            }
        }
    }
    assert_eq!(calls, 8);
    assert_eq!(e.part(u).xen().pod_cache, 2000);
}

// ---------------------------------------------------------------------------------------
// Extent orders of domains with passthrough devices
// ---------------------------------------------------------------------------------------

/// Xen's `max_order()`: a domain with I/O resources may use `CONFIG_PTDOM_MAX_ORDER` (12
/// on x86) where an ordinary domU has 9.
#[test]
fn passthrough_domains_get_the_ptdom_max_order() {
    let mut e = Env::new(16384);
    let (id, u) = e.guest(8192);
    assert_eq!(
        e.populate(u, DomId(DOMID_SELF), &[0], 10),
        (0, Some(StopReason::OrderTooBig))
    );
    e.hv.set_passthrough(id, true).unwrap();
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &[0], 12), (1, None));
    assert_eq!(
        e.populate(u, DomId(DOMID_SELF), &[4096], 13),
        (0, Some(StopReason::OrderTooBig))
    );
    // The limit is the caller's: the control domain keeps its own.
    assert_eq!(e.populate(C, u, &[4096], 12), (1, None));
    e.hv.set_passthrough(id, false).unwrap();
    assert_eq!(e.decrease(u, &[0], 12), (0, Some(StopReason::OrderTooBig)));
    let mut config = Config::single_node(16384);
    config.xen.max_order_ptdom = 10;
    let mut e = Env {
        hv: Hypervisor::new(config).unwrap(),
        mem: FlatMemory::new(BASE, MEM_LEN),
    };
    let (id, u) = e.guest(8192);
    e.hv.set_passthrough(id, true).unwrap();
    assert_eq!(
        e.populate(u, DomId(DOMID_SELF), &[0], 11),
        (0, Some(StopReason::OrderTooBig))
    );
    assert_eq!(e.populate(u, DomId(DOMID_SELF), &[0], 10), (1, None));
}
