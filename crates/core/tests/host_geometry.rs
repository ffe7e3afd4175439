//! Host memory geometry: RAM at a base, with holes and reserved ranges, per node. Frames
//! outside RAM are never handed out or accepted, and the machine memory map reports the
//! configured map.

use ballast_abi::hv::{Control, HvCreatePartition, HypercallOutput};
use ballast_abi::hv::{HvDepositMemory, HvProximityDomainInfo, HvStatus, HypercallCode};
use ballast_abi::xen::{E820Entry, E820Type, MemoryOp, XenMemoryMap};
use ballast_core::frame::FrameState;
use ballast_core::hyperv::SELF;
use ballast_core::{
    Config, ConfigError, FlatMemory, GuestMemory, Hypervisor, MemoryRange, ROOT_DOMID, ROOT_ID,
};
use zerocopy::{FromBytes, IntoBytes};

/// Node 0: RAM from 1 MiB (frame 0x100) to 4 MiB, 256 KiB reserved, a hole up to 8 MiB
/// (a scaled-down PCI hole), RAM from 8 MiB to 12 MiB. A gap up to 16 MiB, then node 1:
/// RAM from 16 MiB to 20 MiB. A reserved range far above the RAM (an MMIO window).
fn holed_map() -> Vec<MemoryRange> {
    vec![
        MemoryRange::ram(0, 0x100, 0x300),
        MemoryRange::reserved(0x400, 0x40),
        MemoryRange::ram(0, 0x800, 0x400),
        MemoryRange::ram(1, 0x1000, 0x400),
        MemoryRange::reserved(0xFEC00, 0x10),
    ]
}

const RAM_FRAMES: u64 = 0x300 + 0x400 + 0x400;
/// Frames that are not RAM, each in a different kind of place.
const NOT_RAM: [u64; 7] = [0, 0xFF, 0x400, 0x43F, 0x500, 0xC00, 0x1400];

fn holed_host() -> Hypervisor {
    Hypervisor::new(Config::with_memory_map(holed_map())).unwrap()
}

fn is_ram(mfn: u64) -> bool {
    [(0x100, 0x400), (0x800, 0xC00), (0x1000, 0x1400)]
        .iter()
        .any(|&(s, e)| (s..e).contains(&mfn))
}

#[test]
fn config_describes_ram_per_node_with_holes() {
    let c = Config::with_memory_map(holed_map());
    assert_eq!(c.node_frames, vec![0x700, 0x400]);
    c.validate().unwrap();
    // with_nodes keeps its meaning: contiguous from frame 0.
    let c = Config::with_nodes(vec![10, 20]);
    assert_eq!(
        c.memory_map,
        vec![MemoryRange::ram(0, 0, 10), MemoryRange::ram(1, 10, 20)]
    );
    c.validate().unwrap();
    // Overlap, disorder, a node's RAM below a lower node's, a map node_frames disagrees
    // with, a node number with no RAM below it.
    let bad = |map: Vec<MemoryRange>| Config::with_memory_map(map).validate().unwrap_err();
    assert_eq!(
        bad(vec![
            MemoryRange::ram(0, 0, 10),
            MemoryRange::reserved(5, 10)
        ]),
        ConfigError::MemoryMap(1)
    );
    assert_eq!(
        bad(vec![
            MemoryRange::ram(0, 100, 10),
            MemoryRange::ram(0, 0, 10)
        ]),
        ConfigError::MemoryMap(1)
    );
    assert_eq!(
        bad(vec![
            MemoryRange::ram(0, 0, 10),
            MemoryRange::ram(1, 10, 10),
            MemoryRange::ram(0, 20, 10)
        ]),
        ConfigError::MemoryMap(2)
    );
    assert_eq!(
        bad(vec![MemoryRange::ram(0, 0, 10), MemoryRange::ram(0, 20, 0)]),
        ConfigError::MemoryMap(1)
    );
    assert_eq!(
        bad(vec![MemoryRange::ram(1, 0, 10)]),
        ConfigError::EmptyNode(0)
    );
    assert_eq!(
        bad(vec![MemoryRange::ram(0, u64::from(u32::MAX) - 4, 8)]),
        ConfigError::TooManyFrames(u64::from(u32::MAX) + 4)
    );
    let mut c = Config::with_memory_map(holed_map());
    c.node_frames[1] += 1;
    assert_eq!(c.validate().unwrap_err(), ConfigError::NodeFramesMismatch);
}

#[test]
fn frames_outside_ram_are_absent_and_never_handed_out() {
    let mut hv = holed_host();
    hv.check().unwrap();
    assert_eq!(
        hv.frames().len(),
        0x1400,
        "the table ends at the highest RAM frame"
    );
    assert_eq!(hv.frames().ram_frames(), RAM_FRAMES);
    assert_eq!(hv.frames().total_free(), RAM_FRAMES);
    assert_eq!(hv.frames().node_range(0), 0x100..0xC00);
    assert_eq!(hv.frames().node_range(1), 0x1000..0x1400);
    for m in 0..hv.frames().len() {
        let st = hv.frames().state(m);
        assert_eq!(st == FrameState::Absent, !is_ram(m.into()), "frame {m:#x}");
        assert_eq!(hv.frames().is_ram(m), is_ram(m.into()));
    }
    // A guest takes every free frame, in every order the populate picks: each is RAM.
    let g = hv
        .create_guest(u32::MAX, HvProximityDomainInfo::ANY)
        .unwrap();
    let free = hv.frames().total_free();
    hv.populate(g, 0, free).unwrap();
    hv.check().unwrap();
    assert_eq!(hv.frames().total_free(), 0);
    assert!(hv.populate(g, free, 1).is_err(), "holes are not memory");
    let p = hv.partition(g).unwrap();
    assert!(p.p2m().iter().all(|(_, mfn)| is_ram(mfn.into())));
    // And they all come back.
    hv.release(g, &[ballast_core::GfnRange::new(0, free).unwrap()])
        .unwrap();
    hv.check().unwrap();
    assert_eq!(hv.frames().total_free(), RAM_FRAMES);
}

fn ctl(code: HypercallCode, reps: u16) -> u64 {
    Control::for_call(code, reps, 0).into_bits()
}

fn deposit(hv: &mut Hypervisor, target: u64, pages: &[u64]) -> (HvStatus, u16) {
    let mut input = HvDepositMemory {
        partition_id: target,
    }
    .as_bytes()
    .to_vec();
    for p in pages {
        input.extend_from_slice(&p.to_le_bytes());
    }
    let rax = hv.hypercall(
        ROOT_ID,
        ctl(HypercallCode::HvCallDepositMemory, pages.len() as u16),
        &input,
        &mut [],
    );
    hv.check().unwrap();
    let o = HypercallOutput::from_bits(rax);
    (o.status(), o.reps_completed())
}

/// HvDepositMemory of a root GPA page that is not RAM is OPERATION_DENIED (the TLFS
/// HvDepositMemory table: a page the caller does not own), like one beyond host memory.
#[test]
fn deposit_of_a_page_outside_ram_is_operation_denied() {
    let mut hv = holed_host();
    let create = ballast_abi::hv::CreatePartitionInput::Tlfs2(HvCreatePartition::default());
    let c = hv
        .call_with_deposits(SELF, ballast_core::NodeSel::Any, 1, 64, |hv| {
            hv.create_partition(ROOT_ID, &create)
        })
        .unwrap();
    for page in NOT_RAM {
        assert_eq!(
            deposit(&mut hv, c.0, &[page]),
            (HvStatus::OPERATION_DENIED, 0),
            "page {page:#x}"
        );
        assert!(!hv.lock_root_page(page), "page {page:#x}");
    }
    // Element by element: the RAM pages before a hole page go in, the rest do not.
    assert_eq!(
        deposit(&mut hv, c.0, &[0x3FF, 0x800, 0x500, 0x801]),
        (HvStatus::OPERATION_DENIED, 2)
    );
    assert_eq!(hv.partition(c).unwrap().pool_available(), 2);
    assert_eq!(hv.frames().state(0x801), FrameState::Free);
    // root_deposit picks RAM only.
    let before = hv.partition(c).unwrap().pool_available();
    let n = hv
        .root_deposit(c, ballast_core::NodeSel::Exact(1), 0x400)
        .unwrap();
    assert_eq!(n, 0x400);
    assert_eq!(hv.partition(c).unwrap().pool_available(), before + 0x400);
    hv.check().unwrap();
}

/// XENMEM_machine_memory_map is the configured map: RAM entries type 1, reserved type 2,
/// holes absent.
#[test]
fn machine_memory_map_reports_the_configured_map() {
    let mut hv = holed_host();
    const ARG: u64 = 0x10_0000;
    const LIST: u64 = ARG + 0x1000;
    let mut mem = FlatMemory::new(ARG, 0x2000);
    let map = XenMemoryMap {
        nr_entries: 8,
        _pad0: [0; 4],
        buffer: LIST,
    };
    mem.write(ARG, map.as_bytes()).unwrap();
    let r = hv.memory_op_to_completion(
        ROOT_DOMID,
        MemoryOp::MACHINE_MEMORY_MAP.0 as u64,
        ARG,
        &mut mem,
    );
    assert_eq!(r.ret, 0);
    let mut b = [0u8; 16];
    mem.read(ARG, &mut b).unwrap();
    let out = XenMemoryMap::read_from_bytes(&b).unwrap();
    assert_eq!(out.nr_entries, 5);
    let mut list = vec![0u8; 5 * 20];
    mem.read(LIST, &mut list).unwrap();
    let entries = <[E820Entry]>::ref_from_bytes(&list).unwrap();
    let e = |addr: u64, size: u64, ty: E820Type| E820Entry { addr, size, ty };
    let want = [
        e(0x10_0000, 0x30_0000, E820Type::RAM),
        e(0x40_0000, 0x4_0000, E820Type::RESERVED),
        e(0x80_0000, 0x40_0000, E820Type::RAM),
        e(0x100_0000, 0x40_0000, E820Type::RAM),
        e(0xFEC0_0000, 0x1_0000, E820Type::RESERVED),
    ];
    for (got, want) in entries.iter().zip(&want) {
        assert_eq!(
            (got.addr, got.size, got.ty.0),
            (want.addr, want.size, want.ty.0)
        );
    }
    // Xen's maximum_ram_page: one past the highest RAM frame.
    let r =
        hv.memory_op_to_completion(ROOT_DOMID, MemoryOp::MAXIMUM_RAM_PAGE.0 as u64, 0, &mut mem);
    assert_eq!(r.ret, 0x1400);
}

/// Xen's populate_physmap on the holed host: with `address_bits(22)` (below 4 MiB) a guest
/// gets exactly the RAM of [1 MiB, 4 MiB), and nothing from below the base or the
/// reserved range; without a limit, the rest of RAM and then ENOMEM-style short counts.
#[test]
fn xen_populate_takes_ram_only() {
    use ballast_abi::xen::{DOMID_SELF, MemFlags, XenMemoryReservation};
    let mut hv = holed_host();
    let g = hv
        .create_guest(u32::MAX, HvProximityDomainInfo::ANY)
        .unwrap();
    hv.set_translated(g, false).unwrap();
    let domid = hv.partition(g).unwrap().domid();
    const ARG: u64 = 0x10_0000;
    const LIST: u64 = ARG + 0x1000;
    let mut mem = FlatMemory::new(ARG, 0x1000 + 8 * 0x1000);
    let mut populate = |hv: &mut Hypervisor, first: u64, n: u64, flags: MemFlags| {
        for i in 0..n {
            mem.write_u64(LIST + 8 * i, first + i).unwrap();
        }
        let r = XenMemoryReservation {
            extent_start: LIST,
            nr_extents: n,
            extent_order: 0,
            mem_flags: flags,
            domid: DOMID_SELF,
            _pad0: [0; 6],
        };
        mem.write(ARG, r.as_bytes()).unwrap();
        let ret = hv
            .memory_op_to_completion(domid, MemoryOp::POPULATE_PHYSMAP.0 as u64, ARG, &mut mem)
            .ret;
        let mfns: Vec<u64> = (0..ret.max(0) as u64)
            .map(|i| mem.read_u64(LIST + 8 * i).unwrap())
            .collect();
        (ret, mfns)
    };
    let (ret, low) = populate(&mut hv, 0, 0x400, MemFlags::address_bits(22));
    assert_eq!(ret, 0x300, "the RAM below 4 MiB, and no more");
    assert!(low.iter().all(|&m| (0x100..0x400).contains(&m)), "{low:x?}");
    let (ret, rest) = populate(&mut hv, 0x1000, 0x1000, MemFlags::NONE);
    assert_eq!(ret as u64, RAM_FRAMES - 0x300);
    assert!(rest.iter().all(|&m| is_ram(m)));
    hv.check().unwrap();
    assert_eq!(hv.frames().total_free(), 0);
}
