use ballast_abi::hv::{HvPartitionPrivilegeMask, HvProximityDomainInfo};
use ballast_abi::xen::{
    DOMID_SELF, MapSpace, MemFlags, MemoryOp, ResourceType, XenAddToPhysmap, XenAddToPhysmapBatch,
    XenMemAcquireResource, XenMemoryExchange, XenMemoryReservation, XenPodTarget,
    XenVnumaTopologyInfo,
};
use proptest::prelude::*;
use zerocopy::{FromZeros, Immutable, IntoBytes};

use super::errno::*;
use super::*;
use crate::Config;
use crate::guest::{FlatMemory, GuestFault};

const BASE: u64 = 0x1_0000;
const ARG: u64 = BASE;
const LIST: u64 = BASE + 0x1000;
const LIST2: u64 = BASE + 0x2000;
const ERRS: u64 = BASE + 0x3000;
const C: DomId = DomId(0);

fn cmd(op: MemoryOp, start: u64) -> u64 {
    u64::from(op.0) | start << MEMOP_EXTENT_SHIFT
}

fn res(list: u64, nr: u64, order: u32, flags: MemFlags, domid: u16) -> XenMemoryReservation {
    XenMemoryReservation {
        extent_start: list,
        nr_extents: nr,
        extent_order: order,
        mem_flags: flags,
        domid,
        _pad0: [0; 6],
    }
}

struct T {
    hv: Hypervisor,
    mem: FlatMemory,
}

impl T {
    fn new(frames: u32) -> Self {
        let hv = Hypervisor::new(Config::single_node(frames)).unwrap();
        T {
            hv,
            mem: FlatMemory::new(BASE, 0x4000),
        }
    }

    fn guest(&mut self, max: u32, translated: bool) -> DomId {
        let id = self
            .hv
            .create_guest(max, HvProximityDomainInfo::ANY)
            .unwrap();
        self.hv.set_translated(id, translated).unwrap();
        self.hv.partition(id).unwrap().domid
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

    /// Re-issues continuations until done; returns the result and how many calls it took.
    fn call_budgeted<A: IntoBytes + Immutable>(
        &mut self,
        caller: DomId,
        mut cmd: u64,
        arg: &A,
        budget: u64,
    ) -> (MemoryOpResult, usize) {
        self.mem.write(ARG, arg.as_bytes()).unwrap();
        for calls in 1..10_000 {
            let r = self.hv.memory_op(caller, cmd, ARG, &mut self.mem, budget);
            self.hv.check().unwrap();
            match r.continuation {
                Some(next) => cmd = next,
                None => return (r, calls),
            }
        }
        panic!("no end");
    }

    fn list(&mut self, at: u64, v: &[u64]) {
        for (i, x) in v.iter().enumerate() {
            self.mem.write_u64(at + 8 * i as u64, *x).unwrap();
        }
    }

    fn read_list(&self, at: u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| self.mem.read_u64(at + 8 * i as u64).unwrap())
            .collect()
    }

    fn populate(&mut self, caller: DomId, domid: u16, gfns: &[u64], order: u32) -> MemoryOpResult {
        self.list(LIST, gfns);
        let r = res(LIST, gfns.len() as u64, order, MemFlags::NONE, domid);
        self.call(caller, cmd(MemoryOp::POPULATE_PHYSMAP, 0), &r)
    }

    fn slot(&self, d: DomId) -> u32 {
        self.hv.slot_of_domid(d).unwrap()
    }

    fn p(&self, d: DomId) -> &crate::Partition {
        self.hv.partition_by_domid(d).unwrap()
    }
}

#[test]
fn host_width_and_address_limits() {
    let t = T::new(20480);
    // 20480 frames need 15 bits of frame number: 27 address bits.
    assert_eq!(t.hv.xen_host_address_bits(), 27);
    assert_eq!(t.hv.xen_address_limit(0), None);
    assert_eq!(t.hv.xen_address_limit(27), None);
    assert_eq!(t.hv.xen_address_limit(64), None);
    assert_eq!(t.hv.xen_address_limit(26), Some(1 << 14));
    assert_eq!(t.hv.xen_address_limit(13), Some(2));
    assert_eq!(t.hv.xen_address_limit(12), Some(0));
    assert_eq!(t.hv.xen_address_limit(1), Some(0));
    let one = T::new(1);
    assert_eq!(one.hv.xen_host_address_bits(), 12);
}

#[test]
fn node_requests_follow_propagate_node() {
    let mut t = T::new(64);
    t.hv = Hypervisor::new(Config::with_nodes(vec![32, 32])).unwrap();
    let u = t.guest(64, true);
    let (root, su) = (Hypervisor::ROOT_SLOT, t.slot(u));
    let hv = &t.hv;
    assert_eq!(hv.xen_requested_node(root, MemFlags::NONE), Ok(None));
    assert_eq!(
        hv.xen_requested_node(root, MemFlags::node(1)),
        Ok(Some(NodeSel::Preferred(1)))
    );
    assert_eq!(
        hv.xen_requested_node(root, MemFlags::exact_node(0)),
        Ok(Some(NodeSel::Exact(0)))
    );
    assert_eq!(hv.xen_requested_node(root, MemFlags::node(2)), Err(()));
    assert_eq!(hv.xen_requested_node(su, MemFlags::node(1)), Ok(None));
    assert_eq!(hv.xen_requested_node(su, MemFlags::exact_node(1)), Err(()));
    // The exact bit without a node asks for nothing.
    assert_eq!(
        hv.xen_requested_node(su, MemFlags::EXACT_NODE_REQUEST),
        Ok(None)
    );
    // A vnode request means nothing without vNUMA, whatever node it names.
    let p = hv.xen_reservation_placement(root, su, MemFlags::node(7) | MemFlags::VNODE);
    assert!(matches!(
        p,
        Ok(Placement {
            sel: NodeSel::Any,
            ..
        })
    ));
}

/// DM_PRIV: a partition's parent stands in for its device model.
#[test]
fn parents_act_on_children_and_nobody_else_does() {
    let mut config = Config::single_node(4096);
    config.limits.max_depth = 3;
    let mut t = T {
        hv: Hypervisor::new(config).unwrap(),
        mem: FlatMemory::new(BASE, 0x4000),
    };
    let parent = t.guest(256, true);
    let sibling = t.guest(256, true);
    let ps = t.slot(parent);
    let child_slot =
        t.hv.new_partition(
            Some(ps),
            HvPartitionPrivilegeMask::NONE,
            HvProximityDomainInfo::ANY,
            0,
        )
        .unwrap();
    t.hv.part_mut(child_slot).state = PartitionState::Active;
    t.hv.part_mut(child_slot).xen.max_pages = 256;
    let child = t.hv.part(child_slot).domid;

    assert_eq!(t.populate(parent, child.0, &[1, 2], 0).ret, 2);
    assert_eq!(
        t.populate(child, parent.0, &[1], 0).stop,
        Some(StopReason::Denied)
    );
    assert_eq!(
        t.populate(sibling, child.0, &[3], 0).stop,
        Some(StopReason::Denied)
    );
    assert_eq!(t.populate(C, child.0, &[3], 0).ret, 1);
    assert!(t.hv.xen_xsm(ps, child_slot, Xsm::DmPriv));
    assert!(!t.hv.xen_xsm(ps, child_slot, Xsm::Priv));
    assert!(!t.hv.xen_xsm(child_slot, ps, Xsm::DmPriv));

    // acquire_resource is DM_PRIV: the parent may map its child's grant table.
    t.list(LIST, &[0]);
    let acq = XenMemAcquireResource {
        domid: child.0,
        ty: ResourceType::GRANT_TABLE,
        id: 0,
        nr_frames: 1,
        flags: 0,
        frame: 0,
        frame_list: LIST,
    };
    assert_eq!(
        t.call(parent, cmd(MemoryOp::ACQUIRE_RESOURCE, 0), &acq).ret,
        0
    );
    assert_eq!(
        t.call(sibling, cmd(MemoryOp::ACQUIRE_RESOURCE, 0), &acq)
            .ret,
        -EPERM
    );
    // claim_pages is PRIV: the control domain only.
    let claim = res(0, 10, 0, MemFlags::NONE, child.0);
    assert_eq!(
        t.call(parent, cmd(MemoryOp::CLAIM_PAGES, 0), &claim).ret,
        -EPERM
    );
}

#[test]
fn unknown_callers_are_refused() {
    let mut t = T::new(256);
    let ghost = DomId(0x7000);
    let r = res(LIST, 1, 0, MemFlags::NONE, DOMID_SELF);
    t.list(LIST, &[1]);
    let out = t.call(ghost, cmd(MemoryOp::POPULATE_PHYSMAP, 3), &r);
    assert_eq!((out.ret, out.stop), (3, Some(StopReason::NoDomain)));
    assert_eq!(
        t.call(ghost, cmd(MemoryOp::MAXIMUM_RAM_PAGE, 0), &r).ret,
        -ESRCH
    );
}

/// A PV guest frees, by MFN, frames it was given without a gfn (increase) and frames it
/// populated: both leave, the assigned list is relinked once, counts stay exact.
#[test]
fn pv_guests_free_assigned_frames_by_mfn() {
    let mut t = T::new(1024);
    let pv = t.guest(64, false);
    t.list(LIST, &[0; 6]);
    let r = res(LIST, 6, 0, MemFlags::NONE, DOMID_SELF);
    assert_eq!(
        t.call(pv, cmd(MemoryOp::INCREASE_RESERVATION, 0), &r).ret,
        6
    );
    let assigned = t.read_list(LIST, 6);
    assert_eq!(t.populate(pv, DOMID_SELF, &[0x40], 0).ret, 1);
    let mapped = t.read_list(LIST, 1)[0];
    assert_eq!(t.p(pv).p2m.get(0x40), Some(mapped as Mfn));
    assert_eq!(t.p(pv).tot_pages(), 7);

    // Free the 1st, 4th and 6th assigned frames (head, middle, tail of the list) and the
    // mapped one; the 7th entry names a frame that is no longer the guest's.
    let victims = [assigned[0], assigned[3], assigned[5], mapped, assigned[0]];
    t.list(LIST, &victims);
    let r = res(LIST, victims.len() as u64, 0, MemFlags::NONE, DOMID_SELF);
    let out = t.call(pv, cmd(MemoryOp::DECREASE_RESERVATION, 0), &r);
    assert_eq!((out.ret, out.stop), (4, Some(StopReason::NotMapped)));
    let p = t.p(pv);
    assert_eq!((p.xen.assigned, p.p2m.mapped(), p.tot_pages()), (3, 0, 3));
    for m in victims {
        assert_eq!(t.hv.frames.state(m as Mfn), FrameState::Free);
    }
    for m in [assigned[1], assigned[2], assigned[4]] {
        assert_eq!(t.hv.frames.state(m as Mfn), FrameState::Assigned);
    }
}

/// A translated guest's list entries are gfns: an MFN it does not map is not its page.
#[test]
fn translated_guests_cannot_free_by_mfn() {
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    let r = res(0, 2, 0, MemFlags::NONE, DOMID_SELF);
    assert_eq!(t.call(u, cmd(MemoryOp::INCREASE_RESERVATION, 0), &r).ret, 2);
    let some_assigned = t.hv.part(t.slot(u)).xen.assigned_head;
    t.list(LIST, &[u64::from(some_assigned)]);
    let r = res(LIST, 1, 0, MemFlags::NONE, DOMID_SELF);
    let out = t.call(u, cmd(MemoryOp::DECREASE_RESERVATION, 0), &r);
    assert_eq!(out.stop, Some(StopReason::NotMapped));
    assert_eq!(t.p(u).tot_pages(), 2);
}

/// Memory whose writes fail past a byte budget even where `range_ok` said yes.
struct Flaky {
    inner: FlatMemory,
    writes_left: usize,
}

impl GuestMemory for Flaky {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        self.inner.read(addr, buf)
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), GuestFault> {
        if self.writes_left == 0 {
            return Err(GuestFault::unreadable(addr, buf.len() as u64));
        }
        self.writes_left -= 1;
        self.inner.write(addr, buf)
    }

    fn range_ok(&self, addr: u64, len: u64) -> bool {
        self.inner.range_ok(addr, len)
    }
}

#[test]
fn a_failed_write_back_undoes_its_extent() {
    let mut t = T::new(1024);
    let pv = t.guest(64, false);
    let free = t.hv.frames.total_free();
    let mut mem = Flaky {
        inner: FlatMemory::new(BASE, 0x4000),
        writes_left: 2,
    };
    let r = res(LIST, 4, 1, MemFlags::NONE, DOMID_SELF);
    mem.inner.write(ARG, r.as_bytes()).unwrap();
    let out =
        t.hv.memory_op_to_completion(pv, cmd(MemoryOp::INCREASE_RESERVATION, 0), ARG, &mut mem);
    t.hv.check().unwrap();
    assert_eq!((out.ret, out.stop), (2, Some(StopReason::Fault)));
    assert_eq!(t.p(pv).tot_pages(), 4);
    assert_eq!(t.hv.frames.total_free(), free - 4);

    for (i, g) in [0x10u64, 0x20, 0x30].iter().enumerate() {
        mem.inner.write_u64(LIST + 8 * i as u64, *g).unwrap();
    }
    mem.writes_left = 1;
    let r = res(LIST, 3, 0, MemFlags::NONE, DOMID_SELF);
    mem.inner.write(ARG, r.as_bytes()).unwrap();
    let out =
        t.hv.memory_op_to_completion(pv, cmd(MemoryOp::POPULATE_PHYSMAP, 0), ARG, &mut mem);
    t.hv.check().unwrap();
    assert_eq!((out.ret, out.stop), (1, Some(StopReason::Fault)));
    assert!(t.p(pv).p2m.get(0x10).is_some() && t.p(pv).p2m.get(0x20).is_none());
    assert_eq!(t.hv.frames.total_free(), free - 5);
}

#[test]
fn a_pv_exchange_whose_write_back_fails_changes_nothing() {
    let mut t = T::new(1024);
    let pv = t.guest(64, false);
    assert_eq!(t.populate(pv, DOMID_SELF, &[1, 2], 0).ret, 2);
    let mfns = t.read_list(LIST, 2);
    let mut mem = Flaky {
        inner: t.mem.clone(),
        writes_left: 0,
    };
    mem.inner.write_u64(LIST, mfns[0]).unwrap();
    mem.inner.write_u64(LIST + 8, mfns[1]).unwrap();
    mem.inner.write_u64(LIST2, 8).unwrap();
    mem.inner.write_u64(LIST2 + 8, 9).unwrap();
    let x = XenMemoryExchange {
        in_: res(LIST, 2, 0, MemFlags::NONE, DOMID_SELF),
        out: res(LIST2, 1, 1, MemFlags::NONE, DOMID_SELF),
        nr_exchanged: 0,
    };
    mem.inner.write(ARG, x.as_bytes()).unwrap();
    let free = t.hv.frames.total_free();
    // One chunk of two pages whose output MFN cannot be reported: the chunk does not
    // happen (and nr_exchanged cannot be written back either).
    mem.writes_left = 0;
    let out =
        t.hv.memory_op_to_completion(pv, cmd(MemoryOp::EXCHANGE, 0), ARG, &mut mem);
    t.hv.check().unwrap();
    assert_eq!(out.ret, -EFAULT);
    assert_eq!(t.hv.frames.total_free(), free);
    assert_eq!(t.p(pv).p2m.get(1), Some(mfns[0] as Mfn));
    assert_eq!(mem.inner.read_u64(LIST2).unwrap(), 8);
}

#[test]
fn exchange_chunks_are_validated_before_anything_moves() {
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    assert_eq!(t.populate(u, DOMID_SELF, &[1, 2, 3, 4], 0).ret, 4);
    let before: Vec<_> = t.p(u).p2m.iter().collect();
    let free = t.hv.frames.total_free();
    let x = |n: u64, out_order: u32| XenMemoryExchange {
        in_: res(LIST, n, 0, MemFlags::NONE, DOMID_SELF),
        out: res(LIST2, n >> out_order, out_order, MemFlags::NONE, DOMID_SELF),
        nr_exchanged: 0,
    };
    let ex = cmd(MemoryOp::EXCHANGE, 0);
    // The same input twice in one chunk.
    t.list(LIST, &[1, 1]);
    t.list(LIST2, &[0x20]);
    assert_eq!(t.call(u, ex, &x(2, 1)).ret, -EINVAL);
    // An output on a page that is not one of the chunk's inputs.
    t.list(LIST, &[1]);
    t.list(LIST2, &[3]);
    assert_eq!(t.call(u, ex, &x(1, 0)).ret, -EINVAL);
    // Outputs overlapping each other (two order-1 outputs from one order-2 input).
    let overlap = XenMemoryExchange {
        in_: res(LIST, 1, 2, MemFlags::NONE, DOMID_SELF),
        out: res(LIST2, 2, 1, MemFlags::NONE, DOMID_SELF),
        nr_exchanged: 0,
    };
    t.list(LIST, &[1]);
    t.list(LIST2, &[0x40, 0x41]);
    assert_eq!(t.call(u, ex, &overlap).ret, -EINVAL);
    // An input that is a hole.
    t.list(LIST, &[9]);
    t.list(LIST2, &[0x20]);
    assert_eq!(t.call(u, ex, &x(1, 0)).ret, -EINVAL);
    assert_eq!(t.p(u).p2m.iter().collect::<Vec<_>>(), before);
    assert_eq!(t.hv.frames.total_free(), free);
    // In place: outputs may land exactly where the chunk's inputs were ...
    t.list(LIST, &[1, 2]);
    t.list(LIST2, &[1]);
    assert_eq!(t.call(u, ex, &x(2, 1)).ret, 0);
    assert_eq!(t.p(u).tot_pages(), 4);
    // ... but not across a page the chunk does not give up.
    t.list(LIST, &[3, 4]);
    t.list(LIST2, &[2]);
    assert_eq!(t.call(u, ex, &x(2, 1)).ret, -EINVAL);
}

#[test]
fn claims_of_others_hold_memory_back() {
    let mut t = T::new(1024);
    let a = t.guest(2048, true);
    let b = t.guest(2048, true);
    let free = t.hv.frames.total_free();
    let claim = res(0, free - 4, 0, MemFlags::NONE, a.0);
    assert_eq!(t.call(C, cmd(MemoryOp::CLAIM_PAGES, 0), &claim).ret, 0);
    let gfns: Vec<u64> = (0..8).collect();
    let out = t.populate(b, DOMID_SELF, &gfns, 0);
    assert_eq!((out.ret, out.stop), (4, Some(StopReason::Claim)));
    // The claimant's own claim covers it.
    let out = t.populate(a, DOMID_SELF, &gfns, 0);
    assert_eq!((out.ret, out.stop), (8, None));
    assert_eq!(u64::from(t.p(a).xen.outstanding_claim), free - 4 - 8);
    // A claim is released with its domain.
    let id = t.p(a).id;
    t.hv.destroy_partition(id).unwrap();
    assert_eq!(t.hv.outstanding_claims(), 0);
}

#[test]
fn a_finalized_partition_gets_no_memory_but_can_free() {
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    assert_eq!(t.populate(C, u.0, &[1, 2], 0).ret, 2);
    let s = t.slot(u);
    t.hv.part_mut(s).state = PartitionState::Finalized;
    assert_eq!(t.populate(C, u.0, &[3], 0).stop, Some(StopReason::Dying));
    t.list(LIST, &[1]);
    let r = res(LIST, 1, 0, MemFlags::NONE, u.0);
    assert_eq!(t.call(C, cmd(MemoryOp::DECREASE_RESERVATION, 0), &r).ret, 1);
    let claim = res(0, 10, 0, MemFlags::NONE, u.0);
    assert_eq!(
        t.call(C, cmd(MemoryOp::CLAIM_PAGES, 0), &claim).ret,
        -EINVAL
    );
}

#[test]
fn max_pages_and_the_32_bit_counters() {
    let mut t = T::new(1 << 10);
    let u = t.guest(u32::MAX, true);
    // An order-18 extent from the control domain asks for more than the host has: no
    // memory, not an overflow.
    let out = t.populate(C, u.0, &[0], 18);
    assert_eq!(out.stop, Some(StopReason::NoMemory));
    let s = t.slot(u);
    let place = t.hv.xen_placement(s, None, crate::frame::NO_FRAME);
    t.hv.part_mut(s).xen.max_pages = 0;
    assert_eq!(
        t.hv.xen_alloc_extent(s, 0, &place),
        Err(StopReason::MaxPages)
    );
}

fn preemption_case<A: IntoBytes + Immutable>(
    setup: impl Fn(&mut T) -> (DomId, u64, A),
    min_calls: usize,
) {
    let mut whole = T::new(2048);
    let (caller, c, arg) = setup(&mut whole);
    let mut sliced = T::new(2048);
    let _ = setup(&mut sliced);
    let expect = whole.call(caller, c, &arg);
    let (got, calls) = sliced.call_budgeted(caller, c, &arg, 1);
    assert_eq!(got, expect);
    assert!(calls >= min_calls, "{calls} calls");
    assert_eq!(sliced.mem, whole.mem);
    for (a, b) in sliced.hv.partitions().zip(whole.hv.partitions()) {
        assert_eq!(
            a.p2m.iter().collect::<Vec<_>>(),
            b.p2m.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            (a.tot_pages(), a.pool_in_use()),
            (b.tot_pages(), b.pool_in_use())
        );
    }
}

#[test]
fn preempted_calls_resume_where_they_stopped() {
    // populate: one extent per call.
    preemption_case(
        |t| {
            let u = t.guest(64, true);
            t.list(LIST, &[5, 6, 7, 8]);
            (
                u,
                cmd(MemoryOp::POPULATE_PHYSMAP, 0),
                res(LIST, 4, 0, MemFlags::NONE, DOMID_SELF),
            )
        },
        4,
    );
    // exchange: one chunk per call, progress in nr_exchanged.
    preemption_case(
        |t| {
            let u = t.guest(64, true);
            t.populate(u, DOMID_SELF, &[1, 2, 3], 0);
            t.list(LIST, &[1, 2, 3]);
            t.list(LIST2, &[0x11, 0x12, 0x13]);
            let x = XenMemoryExchange {
                in_: res(LIST, 3, 0, MemFlags::NONE, DOMID_SELF),
                out: res(LIST2, 3, 0, MemFlags::NONE, DOMID_SELF),
                nr_exchanged: 0,
            };
            (u, cmd(MemoryOp::EXCHANGE, 0), x)
        },
        3,
    );
    // gmfn_range moving backwards over itself.
    preemption_case(
        |t| {
            let u = t.guest(64, true);
            let gfns: Vec<u64> = (0x20..0x28).collect();
            t.populate(u, DOMID_SELF, &gfns, 0);
            let x = XenAddToPhysmap {
                domid: DOMID_SELF,
                size: 8,
                space: MapSpace::GMFN_RANGE,
                idx: 0x20,
                gpfn: 0x23,
            };
            (u, cmd(MemoryOp::ADD_TO_PHYSMAP, 0), x)
        },
        8,
    );
    // add_to_physmap_batch: one item per call.
    preemption_case(
        |t| {
            let u = t.guest(64, true);
            t.populate(u, DOMID_SELF, &[1, 2, 3], 0);
            t.list(LIST, &[1, 2, 3]);
            t.list(LIST2, &[0x31, 0x32, 0x33]);
            let b = XenAddToPhysmapBatch {
                domid: DOMID_SELF,
                space: MapSpace::GMFN.0 as u16,
                size: 3,
                foreign_domid: 0,
                idxs: LIST,
                gpfns: LIST2,
                errs: ERRS,
            };
            (u, cmd(MemoryOp::ADD_TO_PHYSMAP_BATCH, 0), b)
        },
        3,
    );
    // acquire_resource: 32 frames per call.
    preemption_case(
        |t| {
            let u = t.guest(64, true);
            let acq = XenMemAcquireResource {
                domid: u.0,
                ty: ResourceType::GRANT_TABLE,
                id: 0,
                nr_frames: 64,
                flags: 0,
                frame: 0,
                frame_list: LIST,
            };
            (C, cmd(MemoryOp::ACQUIRE_RESOURCE, 0), acq)
        },
        2,
    );
}

#[test]
fn grant_frames_keep_their_mfns_as_the_table_grows() {
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    let s = t.slot(u);
    let acq = |nr: u32, frame: u64| XenMemAcquireResource {
        domid: u.0,
        ty: ResourceType::GRANT_TABLE,
        id: 0,
        nr_frames: nr,
        flags: 0,
        frame,
        frame_list: LIST,
    };
    let op = cmd(MemoryOp::ACQUIRE_RESOURCE, 0);
    assert_eq!(t.call(C, op, &acq(2, 0)).ret, 0);
    let first = t.read_list(LIST, 2);
    assert_eq!(t.call(C, op, &acq(3, 5)).ret, 0);
    assert_eq!(t.p(u).pool_in_use(), 8);
    let all = t.hv.xen_grant_frames(s);
    assert_eq!(all.len(), 8);
    assert_eq!(
        all[..2].iter().map(|&m| u64::from(m)).collect::<Vec<_>>(),
        first
    );
    assert_eq!(
        t.read_list(LIST, 3),
        all[5..].iter().map(|&m| u64::from(m)).collect::<Vec<_>>()
    );
    let id = t.p(u).id;
    t.hv.destroy_partition(id).unwrap();
    t.hv.check().unwrap();
    assert_eq!(t.hv.frames.total_free(), 1024);
}

#[test]
fn sub_ops_without_a_model_answer_plainly() {
    let mut t = T::new(256);
    let u = t.guest(64, true);
    let blank = [0u8; 64];
    assert_eq!(
        t.call(u, cmd(MemoryOp::MACHPHYS_MFN_LIST, 0), &blank).ret,
        -ENOSYS
    );
    assert_eq!(
        t.call(u, cmd(MemoryOp::MACHPHYS_MAPPING, 0), &blank).ret,
        -ENOSYS
    );
    let v = XenVnumaTopologyInfo {
        domid: DOMID_SELF,
        ..XenVnumaTopologyInfo::new_zeroed()
    };
    assert_eq!(
        t.call(u, cmd(MemoryOp::GET_VNUMAINFO, 0), &v).ret,
        -EOPNOTSUPP
    );
    assert_eq!(t.call(u, cmd(MemoryOp::GET_VNUMAINFO, 1), &v).ret, -EINVAL);
    let padded = XenVnumaTopologyInfo { pad: 1, ..v };
    assert_eq!(
        t.call(u, cmd(MemoryOp::GET_VNUMAINFO, 0), &padded).ret,
        -EINVAL
    );
    // Populate-on-demand is modelled now (it used to answer -EOPNOTSUPP / stop): the
    // control domain marks PoD entries for another domain, and fills its cache.
    let target = |pages| XenPodTarget {
        target_pages: pages,
        domid: u.0,
        ..XenPodTarget::new_zeroed()
    };
    let set = cmd(MemoryOp::SET_POD_TARGET, 0);
    assert_eq!(t.call(C, set, &target(65)).ret, -EINVAL);
    t.list(LIST, &[9]);
    let r = res(LIST, 1, 0, MemFlags::POPULATE_ON_DEMAND, u.0);
    let out = t.call(C, cmd(MemoryOp::POPULATE_PHYSMAP, 0), &r);
    assert_eq!((out.ret, out.stop), (1, None));
    assert_eq!(t.call(C, set, &target(10)).ret, 0);
    assert_eq!((t.p(u).pod_entries(), t.p(u).xen.pod_cache), (1, 10));
}

#[test]
fn gmfn_moves_onto_themselves_change_nothing() {
    let mut t = T::new(256);
    let u = t.guest(64, true);
    t.populate(u, DOMID_SELF, &[4], 0);
    t.hv.take_effects();
    let x = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: MapSpace::GMFN,
        idx: 4,
        gpfn: 4,
    };
    assert_eq!(t.call(u, cmd(MemoryOp::ADD_TO_PHYSMAP, 0), &x).ret, 0);
    assert!(t.p(u).p2m.get(4).is_some());
    assert!(
        t.hv.take_effects().is_empty(),
        "no discard: the page did not leave"
    );
}

proptest! {
    /// Any command word, argument bytes and list contents give a result, never a panic,
    /// and leave the model consistent.
    #[test]
    fn memory_op_is_total(
        caller in 0u16..4,
        op in 0u64..64,
        start in prop_oneof![Just(0u64), 0u64..8, any::<u64>()],
        arg in proptest::collection::vec(any::<u8>(), 72),
        list in proptest::collection::vec(0u64..64, 8),
        point in any::<bool>(),
    ) {
        let mut t = T::new(512);
        let a = t.guest(128, true);
        let b = t.guest(64, false);
        t.populate(a, DOMID_SELF, &[0, 1, 2, 3], 0);
        t.populate(b, DOMID_SELF, &[0, 1], 0);
        t.list(LIST, &list);
        t.list(LIST2, &list);
        let mut arg = arg;
        if point {
            // Aim the handles of every layout at the lists.
            for off in [0usize, 8, 16, 24, 32] {
                arg[off..off + 8].copy_from_slice(&LIST.to_le_bytes());
            }
            arg[8..16].copy_from_slice(&(list[0] % 8).to_le_bytes());
        }
        t.mem.write(ARG, &arg).unwrap();
        let callers = [C, a, b, DomId(0x7000)];
        let word = op | start.wrapping_shl(MEMOP_EXTENT_SHIFT);
        let _ = t.hv.memory_op_to_completion(callers[caller as usize], word, ARG, &mut t.mem);
        prop_assert!(t.hv.check().is_ok(), "{:?}", t.hv.check());
    }
}

/// HvFinalizePartition releases every charge to the pool: the Xen shared-info page and
/// grant frames come out of the p2m and back to the pool as available.
#[test]
fn finalize_returns_hypervisor_pages_to_the_pool() {
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    let s = t.slot(u);
    let op = cmd(MemoryOp::ADD_TO_PHYSMAP, 0);
    let x = |space, idx, gpfn| XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space,
        idx,
        gpfn,
    };
    assert_eq!(t.call(u, op, &x(MapSpace::SHARED_INFO, 0, 0x100)).ret, 0);
    assert_eq!(t.call(u, op, &x(MapSpace::GRANT_TABLE, 2, 0x101)).ret, 0);
    assert_eq!(t.p(u).pool_in_use(), 4);
    assert_eq!(t.p(u).xen.special_mapped, 2);
    let id = t.p(u).id;
    t.hv.finalize_partition(crate::ROOT_ID, id).unwrap();
    t.hv.check().unwrap();
    let p = t.hv.part(s);
    assert_eq!((p.pool_in_use(), p.pool_available()), (0, 4));
    assert_eq!((p.p2m.mapped(), p.xen.special_mapped), (0, 0));
    assert!(p.xen.special_frames().next().is_none());
    // Finalized: nothing more can be charged.
    assert_eq!(
        t.call(u, op, &x(MapSpace::SHARED_INFO, 0, 0x100)).ret,
        -ENOMEM
    );
    t.hv.destroy_partition(id).unwrap();
    t.hv.check().unwrap();
    assert_eq!(t.hv.frames.total_free(), 1024);
}

#[test]
fn grant_status_frame_arithmetic_is_xens() {
    use super::special::grant_to_status_frames;
    assert_eq!(grant_to_status_frames(0), 0);
    assert_eq!(grant_to_status_frames(1), 1);
    assert_eq!(grant_to_status_frames(8), 1);
    assert_eq!(grant_to_status_frames(9), 2);
    assert_eq!(grant_to_status_frames(64), 8);
    // An index whose grant-frame count overflows 32 bits is refused, not wrapped.
    let mut t = T::new(1024);
    let u = t.guest(64, true);
    let id = t.p(u).id;
    t.hv.xen_grant_set_version(id, 2).unwrap();
    let s = t.slot(u);
    assert_eq!(t.hv.xen_grant_status_frame(s, u32::MAX / 4), Err(EINVAL));
    assert_eq!(t.hv.xen_grant_status_frame(s, u32::MAX), Err(EINVAL));
    assert!(t.hv.xen_grant_status_frame(s, 7).is_ok());
    assert_eq!(t.p(u).xen.grant_shared.len(), 64);
    assert_eq!(t.hv.xen_grant_status_frame(s, 8), Err(EINVAL));
    t.hv.check().unwrap();
}

/// One order-0 reservation call of the differential test below.
#[derive(Debug, Clone)]
struct ResCall {
    /// Decrease (true) or populate.
    decrease: bool,
    /// The guest names itself (true) or the control domain names it.
    by_self: bool,
    gfns: Vec<u64>,
    /// Work budget per call; continuations are re-issued until done.
    budget: u64,
}

fn res_call() -> impl Strategy<Value = ResCall> {
    let gfn = prop_oneof![
        8 => 0u64..48,
        1 => Just(crate::p2m::GFN_LIMIT - 1),
        1 => Just(crate::p2m::GFN_LIMIT),
        1 => Just(u64::MAX),
        1 => 0x100u64..0x102,
    ];
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(gfn, 0..12),
        prop_oneof![Just(u64::MAX), 1u64..6],
    )
        .prop_map(|(decrease, by_self, gfns, budget)| ResCall {
            decrease,
            by_self,
            gfns,
            budget,
        })
}

/// A model set up for the differential test: a translated guest (with, as drawn, a
/// shared-info page in its p2m, a claim, a guest-physical limit, a tight p2m budget, a
/// dying state) beside a second domain holding a claim of its own.
#[derive(Debug, Clone)]
struct Scene {
    frames: u32,
    max_pages: u32,
    own_claim: u64,
    other_claim: u64,
    gfn_limit: Option<u64>,
    p2m_budget: Option<u64>,
    shared_info: bool,
    dying: bool,
    prefill: Vec<u64>,
}

fn scene() -> impl Strategy<Value = Scene> {
    (
        prop_oneof![Just(96u32), Just(256u32)],
        0u32..64,
        prop_oneof![Just(0u64), 1u64..16],
        prop_oneof![Just(0u64), 1u64..96],
        proptest::option::of(0u64..64),
        proptest::option::of(prop_oneof![Just(0u64), 1u64..20_000]),
        any::<bool>(),
        proptest::bool::weighted(0.1),
        proptest::collection::vec(0u64..48, 0..16),
    )
        .prop_map(
            |(
                frames,
                max_pages,
                own_claim,
                other_claim,
                gfn_limit,
                p2m_budget,
                si,
                dying,
                prefill,
            )| {
                Scene {
                    frames,
                    max_pages,
                    own_claim,
                    other_claim,
                    gfn_limit,
                    p2m_budget,
                    shared_info: si,
                    dying,
                    prefill,
                }
            },
        )
}

impl T {
    /// Builds `s`; returns the guest's domid.
    fn scene(s: &Scene) -> (T, DomId) {
        let mut t = T::new(s.frames);
        let u = t.guest(s.max_pages, true);
        let other = t.guest(64, true);
        let id = t.p(u).id;
        if s.shared_info {
            let x = XenAddToPhysmap {
                domid: DOMID_SELF,
                size: 0,
                space: MapSpace::SHARED_INFO,
                idx: 0,
                gpfn: 0x100,
            };
            t.call(u, cmd(MemoryOp::ADD_TO_PHYSMAP, 0), &x);
        }
        let _ = t.populate(u, DOMID_SELF, &s.prefill, 0);
        for (d, n) in [(other, s.other_claim), (u, s.own_claim)] {
            let claim = res(0, n, 0, MemFlags::NONE, d.0);
            t.call(C, cmd(MemoryOp::CLAIM_PAGES, 0), &claim);
        }
        if let Some(limit) = s.gfn_limit {
            let _ = t.hv.set_guest_physical_limit(id, limit);
        }
        t.hv.set_p2m_budget(id, s.p2m_budget).unwrap();
        if s.dying {
            let slot = t.slot(u);
            t.hv.part_mut(slot).state = PartitionState::Finalized;
        }
        t.hv.take_effects();
        (t, u)
    }

    /// Runs `rc` to completion (re-issuing continuations), on the fast paths or forced
    /// onto the general one; returns every call's result.
    fn run_res(&mut self, u: DomId, rc: &ResCall, general: bool) -> Vec<MemoryOpResult> {
        let op = if rc.decrease {
            MemoryOp::DECREASE_RESERVATION
        } else {
            MemoryOp::POPULATE_PHYSMAP
        };
        let (caller, domid) = if rc.by_self {
            (u, DOMID_SELF)
        } else {
            (C, u.0)
        };
        self.list(LIST, &rc.gfns);
        let r = res(LIST, rc.gfns.len() as u64, 0, MemFlags::NONE, domid);
        self.mem.write(ARG, r.as_bytes()).unwrap();
        let mut word = cmd(op, 0);
        let mut out = Vec::new();
        for _ in 0..1000 {
            let r = if general {
                self.hv
                    .memory_op_general_path(caller, word, ARG, &mut self.mem, rc.budget)
            } else {
                self.hv
                    .memory_op(caller, word, ARG, &mut self.mem, rc.budget)
            };
            out.push(r);
            match r.continuation {
                Some(next) => word = next,
                None => break,
            }
        }
        out
    }

    /// Everything the two runs must agree on: p2m, Xen state, counters, frame states.
    fn snapshot(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .hv
            .partitions()
            .map(|p| {
                format!(
                    "{:?} {:?} tot={} pod={} tables={} {:?}",
                    p.id(),
                    p.p2m().iter().collect::<Vec<_>>(),
                    p.tot_pages(),
                    p.pod_entries(),
                    p.p2m().table_bytes(),
                    p.xen(),
                )
            })
            .collect();
        let f = self.hv.frames();
        v.push(format!(
            "{:?}",
            (0..f.len())
                .map(|m| (f.state(m), f.owner(m)))
                .collect::<Vec<_>>()
        ));
        v
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The order-0 populate and decrease fast paths of a translated guest give what the
    /// general path gives: the same counts, stop reasons and continuations, the same
    /// effects, the same p2m, Xen state and frame states, and a consistent model.
    #[test]
    fn fast_paths_match_the_general_path(
        s in scene(),
        calls in proptest::collection::vec(res_call(), 1..6),
    ) {
        let (mut fast, u) = T::scene(&s);
        let (mut general, _) = T::scene(&s);
        prop_assert_eq!(fast.snapshot(), general.snapshot());
        for rc in &calls {
            let a = fast.run_res(u, rc, false);
            let b = general.run_res(u, rc, true);
            prop_assert_eq!(&a, &b, "results of {:?}", rc);
            prop_assert_eq!(fast.hv.take_effects(), general.hv.take_effects(), "effects of {:?}", rc);
            prop_assert_eq!(fast.snapshot(), general.snapshot(), "state after {:?}", rc);
            prop_assert!(fast.hv.check().is_ok(), "{:?}", fast.hv.check());
            prop_assert!(general.hv.check().is_ok(), "{:?}", general.hv.check());
        }
    }
}
