//! A guest cannot place a page where its memfd has no room (issue 12 §2): the core knows
//! each partition's guest-physical limit from the memory the host attaches, so a gmfn move
//! or a populate past the memfd fails in the core, before an effect the host could not
//! apply is recorded.

use ballast_abi::hv::HvProximityDomainInfo;
use ballast_abi::xen::{
    DOMID_SELF, MapSpace, MemFlags, MemoryOp, XenAddToPhysmap, XenMemoryReservation,
};
use ballast_backing::PageSize;
use ballast_core::xen::errno::EINVAL;
use ballast_core::{Config, DomId};
use ballast_core::{FlatMemory, GuestMemory, MemoryError, PartitionId};
use ballast_host::{EffectsFailed, MemoryHost};
use zerocopy::IntoBytes;

const ARG: u64 = 0x1_0000;
const LIST: u64 = 0x1_1000;

fn guest(host: &mut MemoryHost, gfns: u64) -> (PartitionId, DomId) {
    let (id, _) = host
        .run(|hv| hv.create_guest(1 << 20, HvProximityDomainInfo::ANY))
        .unwrap();
    let id = id.unwrap();
    host.attach_memory(id, gfns, 4 * gfns, PageSize::Base)
        .unwrap();
    (id, host.hv().partition(id).unwrap().domid())
}

fn populate(host: &mut MemoryHost, u: DomId, gfns: &[u64]) -> i64 {
    let mut mem = FlatMemory::new(ARG, 0x4000);
    for (i, g) in gfns.iter().enumerate() {
        mem.write_u64(LIST + 8 * i as u64, *g).unwrap();
    }
    let r = XenMemoryReservation {
        extent_start: LIST,
        nr_extents: gfns.len() as u64,
        extent_order: 0,
        mem_flags: MemFlags::NONE,
        domid: DOMID_SELF,
        _pad0: [0; 6],
    };
    mem.write(ARG, r.as_bytes()).unwrap();
    let cmd = u64::from(MemoryOp::POPULATE_PHYSMAP.0);
    let (out, _) = host
        .run(|hv| hv.memory_op_to_completion(u, cmd, ARG, &mut mem))
        .unwrap();
    out.ret
}

fn move_gmfn(
    host: &mut MemoryHost,
    u: DomId,
    idx: u64,
    gpfn: u64,
) -> Result<i64, EffectsFailed<i64>> {
    let mut mem = FlatMemory::new(ARG, 0x1000);
    let x = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: MapSpace::GMFN,
        idx,
        gpfn,
    };
    mem.write(ARG, x.as_bytes()).unwrap();
    let cmd = u64::from(MemoryOp::ADD_TO_PHYSMAP.0);
    host.run(|hv| hv.memory_op_to_completion(u, cmd, ARG, &mut mem).ret)
        .map(|(ret, _)| ret)
}

#[test]
fn a_move_past_the_memfd_is_refused_in_the_core() {
    let mut host = MemoryHost::new(Config::single_node(4096)).unwrap();
    let (a, u) = guest(&mut host, 256);
    assert_eq!(populate(&mut host, u, &[3, 4]), 2);
    host.write_guest(a, 4, &[0x5a; 4096]).unwrap();
    // Past the memfd: refused, nothing recorded, the page stays where it was.
    assert_eq!(move_gmfn(&mut host, u, 4, 256).unwrap(), -EINVAL);
    assert_eq!(move_gmfn(&mut host, u, 4, 1 << 30).unwrap(), -EINVAL);
    let mut b = [0u8; 4096];
    host.read_guest(a, 4, &mut b).unwrap();
    assert_eq!(b, [0x5a; 4096]);
    // Inside it the page moves with its bytes.
    assert_eq!(move_gmfn(&mut host, u, 4, 255).unwrap(), 0);
    host.read_guest(a, 255, &mut b).unwrap();
    assert_eq!(b, [0x5a; 4096]);
    assert!(host.audit(a, false).unwrap().violations.is_empty());
    host.hv().check().unwrap();
}

#[test]
fn populate_past_the_memfd_then_move_is_refused() {
    let mut host = MemoryHost::new(Config::single_node(4096)).unwrap();
    let (a, u) = guest(&mut host, 256);
    assert_eq!(populate(&mut host, u, &[254, 255, 256, 257]), 2);
    assert_eq!(
        move_gmfn(&mut host, u, 256, 300).unwrap(),
        -13,
        "nothing at 256"
    );
    assert_eq!(move_gmfn(&mut host, u, 255, 300).unwrap(), -EINVAL);
    // The host's own populate respects the limit too ...
    let (r, _) = host.run(|hv| hv.populate(a, 200, 100)).unwrap();
    assert_eq!(r, Err(MemoryError::GfnOutOfRange(300)));
    // ... until a hot-add grows the memfd and raises it.
    host.grow_memory(a, 512).unwrap();
    assert_eq!(host.hv().partition(a).unwrap().gfn_limit(), 512);
    host.run(|hv| hv.populate(a, 256, 100)).unwrap().0.unwrap();
    assert_eq!(move_gmfn(&mut host, u, 255, 400).unwrap(), 0);
    assert!(host.audit(a, false).unwrap().violations.is_empty());
    host.hv().check().unwrap();
}
