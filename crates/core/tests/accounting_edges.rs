//! Accounting at the edges where the guest-physical limit, the p2m budget, nested pools and
//! hypervisor pages meet: PV exchange outputs, a nested parent's withdraw, a grandchild's
//! shared-info page, and host information on a map with holes.

use ballast_abi::hv::{
    CreatePartitionInput, HvCreatePartition, HvPartitionPrivilegeMask, HvProximityDomainInfo,
};
use ballast_abi::xen::{DOMID_SELF, MemFlags, MemoryOp, XenMemoryExchange, XenMemoryReservation};
use ballast_core::{Config, DomId, FlatMemory, GuestMemory, Hypervisor, NodeSel, ROOT_ID};
use zerocopy::IntoBytes;

const BASE: u64 = 0x10_0000;
const ARG: u64 = BASE;
const LIST: u64 = BASE + 0x1000;
const LIST2: u64 = BASE + 0x4000;

fn cmd(op: MemoryOp) -> u64 {
    u64::from(op.0)
}

fn res(list: u64, n: u64, order: u32) -> XenMemoryReservation {
    XenMemoryReservation {
        extent_start: list,
        nr_extents: n,
        extent_order: order,
        mem_flags: MemFlags::NONE,
        domid: DOMID_SELF,
        _pad0: [0; 6],
    }
}

fn populate(hv: &mut Hypervisor, mem: &mut FlatMemory, u: DomId, gfns: &[u64]) -> i64 {
    for (i, g) in gfns.iter().enumerate() {
        mem.write_u64(LIST + 8 * i as u64, *g).unwrap();
    }
    mem.write(ARG, res(LIST, gfns.len() as u64, 0).as_bytes())
        .unwrap();
    let r = hv.memory_op_to_completion(u, cmd(MemoryOp::POPULATE_PHYSMAP), ARG, mem);
    r.ret
}

/// A PV guest exchanging one of its pages names an output gpfn past its guest-physical
/// limit: the new frame is mapped there (GFN_LIMIT is checked, not the partition's limit).
#[test]
fn pv_exchange_output_is_mapped_past_the_guest_physical_limit() {
    let mut hv = Hypervisor::new(Config::single_node(4096)).unwrap();
    let mut mem = FlatMemory::new(BASE, 0x8000);
    let id = hv.create_guest(64, HvProximityDomainInfo::ANY).unwrap();
    let u = hv.partition(id).unwrap().domid();
    hv.set_translated(id, false).unwrap();
    hv.set_guest_physical_limit(id, 16).unwrap();
    assert_eq!(populate(&mut hv, &mut mem, u, &[0]), 1);
    let mfn = mem.read_u64(LIST).unwrap(); // PV: populate wrote the MFN back
    hv.check().unwrap();
    mem.write_u64(LIST, mfn).unwrap();
    mem.write_u64(LIST2, 1 << 30).unwrap(); // far past the limit of 16
    let x = XenMemoryExchange {
        in_: res(LIST, 1, 0),
        out: res(LIST2, 1, 0),
        nr_exchanged: 0,
    };
    mem.write(ARG, x.as_bytes()).unwrap();
    let r = hv.memory_op_to_completion(u, cmd(MemoryOp::EXCHANGE), ARG, &mut mem);
    assert_eq!(r.ret, 0);
    let p = hv.partition(id).unwrap();
    assert!(
        p.p2m().get(1 << 30).is_none(),
        "a frame was mapped at gfn 2^30, limit {}",
        p.gfn_limit()
    );
    hv.check().unwrap();
}

/// The same path ignores the p2m budget: every output gpfn of a PV exchange in a new
/// 1 GiB region costs a leaf and an inner table, with no charge.
#[test]
fn pv_exchange_outputs_are_not_charged_to_the_p2m_budget() {
    let mut hv = Hypervisor::new(Config::single_node(4096)).unwrap();
    let mut mem = FlatMemory::new(BASE, 0x8000);
    let id = hv.create_guest(64, HvProximityDomainInfo::ANY).unwrap();
    let u = hv.partition(id).unwrap().domid();
    hv.set_translated(id, false).unwrap();
    let gfns: Vec<u64> = (0..32).collect();
    assert_eq!(populate(&mut hv, &mut mem, u, &gfns), 32);
    let mfns: Vec<u64> = (0..32)
        .map(|i| mem.read_u64(LIST + 8 * i).unwrap())
        .collect();
    let (_, used) = hv.p2m_usage(id).unwrap();
    hv.set_p2m_budget(id, Some(used)).unwrap();
    for (i, m) in mfns.iter().enumerate() {
        mem.write_u64(LIST + 8 * i as u64, *m).unwrap();
        mem.write_u64(LIST2 + 8 * i as u64, (i as u64 + 1) << 18)
            .unwrap();
    }
    let x = XenMemoryExchange {
        in_: res(LIST, 32, 0),
        out: res(LIST2, 32, 0),
        nr_exchanged: 0,
    };
    mem.write(ARG, x.as_bytes()).unwrap();
    let r = hv.memory_op_to_completion(u, cmd(MemoryOp::EXCHANGE), ARG, &mut mem);
    let (budget, used) = hv.p2m_usage(id).unwrap();
    assert!(
        used <= budget,
        "ret {}: tables {used} bytes > budget {budget}",
        r.ret
    );
}

/// A nested parent cycles deposit -> populate -> withdraw: give_back maps the withdrawn
/// frames at their old gfns without looking at max_pages, so tot_pages grows past it.
#[test]
fn nested_withdraw_gives_back_past_max_pages() {
    let mut c = Config::single_node(8192);
    c.limits.max_depth = 3;
    let mut hv = Hypervisor::new(c).unwrap();
    let mut mem = FlatMemory::new(BASE, 0x8000);
    let input = CreatePartitionInput::Tlfs2(HvCreatePartition {
        flags: 0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    });
    let cp = hv
        .call_with_deposits(ROOT_ID, NodeSel::Any, 1, 64, |hv| {
            hv.create_partition(ROOT_ID, &input)
        })
        .unwrap();
    hv.call_with_deposits(cp, NodeSel::Any, 8, 64, |hv| {
        hv.initialize_partition(ROOT_ID, cp)
    })
    .unwrap();
    hv.set_partition_privileges(
        cp,
        HvPartitionPrivilegeMask::new()
            .with_create_partitions(true)
            .with_access_memory_pool(true),
    )
    .unwrap();
    hv.call_with_deposits(cp, NodeSel::Any, 1, 64, |hv| {
        hv.create_partition(cp, &input).map(|_| ())
    })
    .unwrap();
    let g = hv.partition(cp).unwrap().children()[0];
    hv.set_max_pages(cp, 16).unwrap();
    let u = hv.partition(cp).unwrap().domid();
    assert_eq!(
        populate(&mut hv, &mut mem, u, &(0..16).collect::<Vec<_>>()),
        16
    );
    let mut next = 16u64;
    for _ in 0..4 {
        // Deposit every page it has into the grandchild's pool ...
        let mapped: Vec<u64> = hv
            .partition(cp)
            .unwrap()
            .p2m()
            .iter()
            .map(|(g, _)| g)
            .collect();
        hv.deposit_memory(cp, g, &mapped).unwrap();
        // ... which gives it room under max_pages again: populate fresh gfns ...
        let fresh: Vec<u64> = (next..next + 16).collect();
        assert_eq!(populate(&mut hv, &mut mem, u, &fresh), 16);
        next += 16;
        // ... and withdraw: every deposited page comes back mapped, max_pages or not.
        hv.withdraw_all(cp, g).unwrap();
        hv.check().unwrap();
    }
    let p = hv.partition(cp).unwrap();
    assert!(
        p.tot_pages() <= u64::from(p.xen().max_pages),
        "tot_pages {} > max_pages {}",
        p.tot_pages(),
        p.xen().max_pages
    );
}

/// XEN_SYSCTL_physinfo / numainfo totals count the holes inside a node's span.
#[test]
fn host_info_counts_holes_as_memory() {
    use ballast_core::MemoryRange;
    let map = vec![
        MemoryRange::ram(0, 0, 1024),
        MemoryRange::reserved(1024, 256),
        // a hole 1280..2048
        MemoryRange::ram(0, 2048, 1024),
    ];
    let hv = Hypervisor::new(Config::with_memory_map(map)).unwrap();
    assert_eq!(hv.frames().ram_frames(), 2048);
    let info = hv.host_info();
    assert_eq!(info.nodes[0].total_pages, 2048, "{info:?}");
    assert_eq!(info.total_pages, 2048);
}

/// A grandchild's hypervisor page is topped up from the host heap, not from its
/// (nested) depositor; after Finalize the nested parent withdraws one page more than it
/// deposited, and that element is a host MFN, not one of its gfns.
#[test]
fn nested_withdraw_returns_a_host_mfn_for_a_special_page_topped_up_from_the_heap() {
    use ballast_abi::xen::{MapSpace, XenAddToPhysmap};
    let mut c = Config::single_node(8192);
    c.limits.max_depth = 3;
    c.costs = ballast_core::Costs {
        create_partition: 1,
        initialize_partition: 2,
        create_vp: 1,
    };
    let mut hv = Hypervisor::new(c).unwrap();
    let mut mem = FlatMemory::new(BASE, 0x8000);
    let input = CreatePartitionInput::Tlfs2(HvCreatePartition {
        flags: 0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    });
    let cp = hv
        .call_with_deposits(ROOT_ID, NodeSel::Any, 1, 64, |hv| {
            hv.create_partition(ROOT_ID, &input)
        })
        .unwrap();
    hv.call_with_deposits(cp, NodeSel::Any, 8, 64, |hv| {
        hv.initialize_partition(ROOT_ID, cp)
    })
    .unwrap();
    hv.set_partition_privileges(
        cp,
        HvPartitionPrivilegeMask::new()
            .with_create_partitions(true)
            .with_access_memory_pool(true),
    )
    .unwrap();
    hv.root_deposit(cp, NodeSel::Any, 1).unwrap();
    let g = hv.create_partition(cp, &input).unwrap();
    hv.set_max_pages(cp, 64).unwrap();
    hv.populate(cp, 0x100, 2).unwrap();
    hv.deposit_memory(cp, g, &[0x100, 0x101]).unwrap();
    hv.initialize_partition(cp, g).unwrap();
    assert_eq!(hv.partition(g).unwrap().pool_available(), 0);
    // The grandchild maps its shared-info page: its pool is topped up from the heap.
    let gd = hv.partition(g).unwrap().domid();
    let x = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: MapSpace::SHARED_INFO,
        idx: 0,
        gpfn: 5,
    };
    mem.write(ARG, x.as_bytes()).unwrap();
    assert_eq!(
        hv.memory_op_to_completion(gd, cmd(MemoryOp::ADD_TO_PHYSMAP), ARG, &mut mem)
            .ret,
        0
    );
    hv.check().unwrap();
    hv.finalize_partition(cp, g).unwrap();
    let back = hv.withdraw_all(cp, g).unwrap();
    hv.check().unwrap();
    assert!(
        back.iter().all(|g| [0x100, 0x101].contains(g)),
        "the nested parent deposited gfns 0x100 and 0x101, got back {back:x?}"
    );
}
