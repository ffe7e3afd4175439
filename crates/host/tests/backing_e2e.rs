//! The core driving real memory: pages a partition gives up are released to the host
//! kernel and read zero; a frame never carries bytes from one partition to another; the
//! audit finds nothing after correct operation and finds what a misbehaving guest leaves.

use ballast_abi::hv::{HvProximityDomainInfo, HvWithdrawMemory};
use ballast_abi::xen::{MemoryOp, XenMemoryReservation};
use ballast_backing::{BackingError, GfnRange, PageSize};
use ballast_core::{
    Config, DomId, Effect, FlatMemory, GfnRange as CoreRange, PartitionId, ROOT_ID,
};
use ballast_host::MemoryHost;
use zerocopy::IntoBytes;

const PAGE: usize = 4096;

fn pattern(partition: PartitionId, gfn: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (partition.0 as u8) ^ (gfn as u8).wrapping_mul(7) ^ (i as u8) | 0x80)
        .collect()
}

fn touch(host: &MemoryHost, id: PartitionId, gfns: impl IntoIterator<Item = u64>) {
    for g in gfns {
        host.write_guest(id, g, &pattern(id, g)).unwrap();
    }
}

fn page(host: &MemoryHost, id: PartitionId, gfn: u64) -> Vec<u8> {
    let mut b = vec![0xEE; PAGE];
    host.read_guest(id, gfn, &mut b).unwrap();
    b
}

fn guest(host: &mut MemoryHost, gfns: u64) -> PartitionId {
    let (id, _) = host
        .run(|hv| hv.create_guest(u32::MAX, HvProximityDomainInfo::ANY))
        .unwrap();
    let id = id.unwrap();
    host.attach_memory(id, gfns, gfns, PageSize::Base).unwrap();
    id
}

#[test]
fn balloon_release_drops_resident_and_reads_zero() {
    let mut host = MemoryHost::new(Config::single_node(1 << 14)).unwrap();
    let a = guest(&mut host, 4096);
    host.run(|hv| hv.populate(a, 0, 2048)).unwrap().0.unwrap();
    touch(&host, a, 0..2048);
    assert_eq!(host.resident_bytes(a).unwrap(), 2048 * PAGE as u64);

    let ranges = [CoreRange::new(0, 1024).unwrap()];
    let (released, stats) = host.run(|hv| hv.release(a, &ranges)).unwrap();
    assert_eq!(released.unwrap(), 1024);
    assert_eq!(stats.gfns, 1024);
    assert_eq!(stats.syscalls, 1, "one merged range, one punch");
    assert_eq!(host.resident_bytes(a).unwrap(), 1024 * PAGE as u64);
    assert_eq!(page(&host, a, 5), vec![0; PAGE]);
    assert_eq!(page(&host, a, 1500), pattern(a, 1500));
    assert!(host.audit(a, false).unwrap().violations.is_empty());
    host.hv().check().unwrap();
}

#[test]
fn withdrawn_pages_come_back_zeroed() {
    let frames = 1 << 13;
    let mut host = MemoryHost::new(Config::single_node(frames)).unwrap();
    // The root's GPA space is the identity map of host memory.
    host.attach_memory(ROOT_ID, frames as u64, frames as u64, PageSize::Base)
        .unwrap();
    let child = guest(&mut host, 16);
    let pages: Vec<u64> = (100..110).collect();
    touch(&host, ROOT_ID, pages.iter().copied());
    let before = host.resident_bytes(ROOT_ID).unwrap();
    host.run(|hv| hv.deposit_memory(ROOT_ID, child, &pages))
        .unwrap()
        .0
        .unwrap();
    // Deposited pages leave the root: their bytes are released.
    assert_eq!(
        host.resident_bytes(ROOT_ID).unwrap(),
        before - 10 * PAGE as u64
    );

    let mut out = [0u64; 16];
    let input = HvWithdrawMemory {
        partition_id: child.0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    let (r, _) = host
        .run(|hv| hv.withdraw_memory(ROOT_ID, &input, &mut out))
        .unwrap();
    assert_eq!(
        r.unwrap_err().1,
        10,
        "drained after the ten deposited pages"
    );
    let mut got = out[..10].to_vec();
    got.sort_unstable();
    assert_eq!(got, pages, "withdrawn at their original GPAs");
    for g in pages {
        assert_eq!(
            page(&host, ROOT_ID, g),
            vec![0; PAGE],
            "gpa page {g} zeroed"
        );
    }
    host.hv().check().unwrap();
}

#[test]
fn decrease_reservation_releases_memory() {
    let mut host = MemoryHost::new(Config::single_node(1 << 13)).unwrap();
    let a = guest(&mut host, 1024);
    let domid = host.hv().partition(a).unwrap().domid();
    let gfns: Vec<u64> = (0..512).collect();
    let r = memory_op(&mut host, domid, MemoryOp::POPULATE_PHYSMAP, &gfns);
    assert_eq!(r, 512);
    touch(&host, a, 0..512);
    assert_eq!(host.resident_bytes(a).unwrap(), 512 * PAGE as u64);
    let r = memory_op(
        &mut host,
        domid,
        MemoryOp::DECREASE_RESERVATION,
        &gfns[..256],
    );
    assert_eq!(r, 256);
    assert_eq!(host.resident_bytes(a).unwrap(), 256 * PAGE as u64);
    assert_eq!(page(&host, a, 10), vec![0; PAGE]);
    assert_eq!(page(&host, a, 300), pattern(a, 300));
    assert!(host.audit(a, false).unwrap().violations.is_empty());
}

/// Calls a reservation sub-op from `domid` on itself with `gfns` as the extent list.
fn memory_op(host: &mut MemoryHost, domid: DomId, op: MemoryOp, gfns: &[u64]) -> i64 {
    let mut mem = FlatMemory::new(0x10000, 64 + 8 * gfns.len());
    let list = 0x10000 + 64;
    for (i, g) in gfns.iter().enumerate() {
        mem.bytes[64 + 8 * i..72 + 8 * i].copy_from_slice(&g.to_le_bytes());
    }
    let res = XenMemoryReservation {
        extent_start: list,
        nr_extents: gfns.len() as u64,
        extent_order: 0,
        domid: ballast_abi::xen::DOMID_SELF,
        ..Default::default()
    };
    mem.bytes[..32].copy_from_slice(res.as_bytes());
    let (r, _) = host
        .run(|hv| hv.memory_op_to_completion(domid, op.0 as u64, 0x10000, &mut mem))
        .unwrap();
    r.ret
}

#[test]
fn a_frame_moving_between_partitions_carries_no_bytes() {
    // A host so small that B can only get the frames A gave up.
    let mut host = MemoryHost::new(Config::single_node(256)).unwrap();
    let a = guest(&mut host, 256);
    let b = guest(&mut host, 256);
    host.run(|hv| hv.populate(a, 0, 256)).unwrap().0.unwrap();
    touch(&host, a, 0..256);
    let a_frames: Vec<u32> = host
        .hv()
        .partition(a)
        .unwrap()
        .p2m()
        .iter()
        .map(|(_, m)| m)
        .collect();
    host.run(|hv| hv.release(a, &[CoreRange::new(0, 256).unwrap()]))
        .unwrap()
        .0
        .unwrap();
    host.run(|hv| hv.populate(b, 0, 256)).unwrap().0.unwrap();
    let mut b_frames: Vec<u32> = host
        .hv()
        .partition(b)
        .unwrap()
        .p2m()
        .iter()
        .map(|(_, m)| m)
        .collect();
    b_frames.sort_unstable();
    let mut a_sorted = a_frames.clone();
    a_sorted.sort_unstable();
    assert_eq!(a_sorted, b_frames, "B got exactly A's frames");
    for g in 0..256 {
        assert_eq!(page(&host, b, g), vec![0; PAGE], "B's gfn {g} reads zero");
    }
    assert_eq!(host.resident_bytes(a).unwrap(), 0);
}

#[test]
fn audit_finds_a_guest_touching_memory_it_gave_up() {
    let mut host = MemoryHost::new(Config::single_node(1 << 12)).unwrap();
    let a = guest(&mut host, 1024);
    host.run(|hv| hv.populate(a, 0, 512)).unwrap().0.unwrap();
    touch(&host, a, 0..512);
    host.run(|hv| hv.release(a, &[CoreRange::new(100, 50).unwrap()]))
        .unwrap()
        .0
        .unwrap();
    assert!(host.audit(a, false).unwrap().violations.is_empty());
    // The guest writes to a ballooned page and to one never given to it.
    touch(&host, a, [120, 700]);
    let report = host.audit(a, false).unwrap();
    assert_eq!(
        report.violations,
        vec![
            GfnRange::new(120, 1).unwrap(),
            GfnRange::new(700, 1).unwrap()
        ]
    );
    host.audit(a, true).unwrap();
    assert!(host.audit(a, false).unwrap().violations.is_empty());
    assert_eq!(page(&host, a, 120), vec![0; PAGE]);
}

#[test]
fn stress_random_map_and_release_keeps_memory_exact() {
    let mut host = MemoryHost::new(Config::with_nodes(vec![3000, 3000])).unwrap();
    let ids: Vec<PartitionId> = (0..4).map(|_| guest(&mut host, 2048)).collect();
    let mut rng = ballast_benchkit::XorShift(0xDEC0_DED5_EED5_1234);
    for step in 0..4000 {
        let id = ids[(rng.next_u64() % ids.len() as u64) as usize];
        let start = rng.next_u64() % 2000;
        let count = 1 + rng.next_u64() % 48;
        let mapped: Vec<u64> = (start..start + count)
            .filter(|&g| host.hv().partition(id).unwrap().p2m().get(g).is_some())
            .collect();
        if rng.next_u64() % 2 == 0 {
            // Back the unmapped part and let the guest touch it.
            for g in start..start + count {
                if !mapped.contains(&g) && host.run(|hv| hv.populate(id, g, 1)).unwrap().0.is_ok() {
                    touch(&host, id, [g]);
                }
            }
        } else {
            let ranges: Vec<CoreRange> = mapped
                .iter()
                .map(|&g| CoreRange::new(g, 1).unwrap())
                .collect();
            host.run(|hv| hv.release(id, &ranges)).unwrap().0.unwrap();
        }
        if step % 500 == 0 {
            host.hv().check().unwrap();
        }
    }
    host.hv().check().unwrap();
    for &id in &ids {
        let report = host.audit(id, false).unwrap();
        assert!(report.violations.is_empty(), "{id:?}: {report:?}");
        let mapped = host.hv().partition(id).unwrap().p2m().mapped();
        assert_eq!(
            host.resident_bytes(id).unwrap(),
            mapped * PAGE as u64,
            "{id:?}"
        );
    }
}

#[test]
fn a_page_moved_by_add_to_physmap_keeps_its_bytes() {
    use ballast_abi::xen::{MapSpace, XenAddToPhysmap};
    let mut host = MemoryHost::new(Config::single_node(1 << 12)).unwrap();
    let a = guest(&mut host, 256);
    let domid = host.hv().partition(a).unwrap().domid();
    host.run(|hv| hv.populate(a, 0, 8)).unwrap().0.unwrap();
    touch(&host, a, 0..8);
    let mut mem = FlatMemory::new(0x10000, 64);
    let x = XenAddToPhysmap {
        domid: ballast_abi::xen::DOMID_SELF,
        space: MapSpace::GMFN,
        idx: 2,
        gpfn: 100,
        ..Default::default()
    };
    mem.bytes[..24].copy_from_slice(x.as_bytes());
    let (r, _) = host
        .run(|hv| {
            hv.memory_op_to_completion(domid, MemoryOp::ADD_TO_PHYSMAP.0 as u64, 0x10000, &mut mem)
        })
        .unwrap();
    assert_eq!(r.ret, 0);
    assert_eq!(
        page(&host, a, 100),
        pattern(a, 2),
        "the bytes moved with the page"
    );
    assert_eq!(page(&host, a, 2), vec![0; PAGE]);
    // Moving onto a mapped gfn frees the page that was there, and still moves the bytes.
    let x = XenAddToPhysmap {
        idx: 3,
        gpfn: 5,
        ..x
    };
    mem.bytes[..24].copy_from_slice(x.as_bytes());
    let (r, _) = host
        .run(|hv| {
            hv.memory_op_to_completion(domid, MemoryOp::ADD_TO_PHYSMAP.0 as u64, 0x10000, &mut mem)
        })
        .unwrap();
    assert_eq!(r.ret, 0);
    assert_eq!(page(&host, a, 5), pattern(a, 3));
    assert_eq!(page(&host, a, 3), vec![0; PAGE]);
    assert_eq!(host.resident_bytes(a).unwrap(), 7 * PAGE as u64);
    assert!(host.audit(a, false).unwrap().violations.is_empty());
}

#[test]
fn a_failed_move_does_not_lose_the_discards_after_it() {
    use ballast_abi::xen::{MapSpace, XenAddToPhysmap};
    let mut host = MemoryHost::new(Config::single_node(1 << 12)).unwrap();
    let a = guest(&mut host, 256);
    let domid = host.hv().partition(a).unwrap().domid();
    host.run(|hv| hv.populate(a, 0, 4)).unwrap().0.unwrap();
    // A deliberately small memfd behind the core's mappings: whatever limit the core
    // keeps, a page move past this memfd's end fails on the host side.
    host.detach_memory(a);
    host.attach_memory(a, 4, 4, PageSize::Base).unwrap();
    // The core's guest-physical limit would refuse the move up front; raise it past the
    // memfd so the host's own defence is what is tested.
    host.run(|hv| hv.set_guest_physical_limit(a, 256))
        .unwrap()
        .0
        .unwrap();
    touch(&host, a, 0..4);
    assert_eq!(host.resident_bytes(a).unwrap(), 4 * PAGE as u64);
    let mut mem = FlatMemory::new(0x10000, 64);
    let x = XenAddToPhysmap {
        domid: ballast_abi::xen::DOMID_SELF,
        space: MapSpace::GMFN,
        idx: 2,
        gpfn: 100,
        ..Default::default()
    };
    mem.bytes[..24].copy_from_slice(x.as_bytes());
    let ranges = [CoreRange::new(0, 2).unwrap()];
    let failed = host
        .run(|hv| {
            let moved = hv.memory_op_to_completion(
                domid,
                MemoryOp::ADD_TO_PHYSMAP.0 as u64,
                0x10000,
                &mut mem,
            );
            let released = hv.release(a, &ranges);
            (moved, released)
        })
        .unwrap_err();
    // The operation's own result comes back.
    assert_eq!(failed.result.0.ret, 0);
    assert_eq!(failed.result.1.unwrap(), 2);
    // The failed move is reported, and only it.
    assert_eq!(failed.report.failures.len(), 1, "{:?}", failed.report);
    let f = &failed.report.failures[0];
    assert_eq!(
        f.effect,
        Effect::Move {
            partition: a,
            from: 2,
            to: 100
        }
    );
    assert!(matches!(f.error, BackingError::OutOfRange { .. }), "{f:?}");
    // Every discard after it was applied: gfns 0 and 1 released, gfn 2 discarded after its
    // move; one page is left.
    assert_eq!(failed.report.stats.gfns, 3);
    assert_eq!(host.resident_bytes(a).unwrap(), PAGE as u64);
    assert_eq!(page(&host, a, 3), pattern(a, 3));
    assert_eq!(page(&host, a, 0), vec![0; PAGE]);
    // The next operation starts clean.
    let (r, stats) = host
        .run(|hv| hv.release(a, &[CoreRange::new(3, 1).unwrap()]))
        .unwrap();
    assert_eq!((r.unwrap(), stats.gfns), (1, 1));
    assert_eq!(host.resident_bytes(a).unwrap(), 0);
}
