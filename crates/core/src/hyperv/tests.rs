use super::*;
use crate::config::{Config, Costs, Limits};
use crate::guest::FlatMemory;
use ballast_abi::hv::HvStatus;
use ballast_abi::hv::{
    HvCreatePartition, HvCreatePartitionV2, HvCreateVp, HvCreateVpV2, HvDepositMemory,
    HvPartitionIdInput, HypercallCode, InputLayout,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const COSTS: Costs = Costs {
    create_partition: 2,
    initialize_partition: 8,
    create_vp: 4,
};

fn host(layout: InputLayout, max_depth: u32) -> Hypervisor {
    let mut c = Config::with_nodes(vec![1024, 1024]);
    c.costs = COSTS;
    c.limits = Limits {
        max_partitions: 8,
        max_depth,
        max_vp_index: 63,
    };
    c.input_layout = layout;
    Hypervisor::new(c).unwrap()
}

fn ctl(code: HypercallCode, reps: u16, start: u16) -> u64 {
    Control::for_call(code, reps, start).into_bits()
}

fn status(rax: u64) -> HvStatus {
    HypercallOutput::from_bits(rax).status()
}

fn reps(rax: u64) -> u16 {
    HypercallOutput::from_bits(rax).reps_completed()
}

fn tlfs2_create(pdi: HvProximityDomainInfo) -> CreatePartitionInput {
    CreatePartitionInput::Tlfs2(HvCreatePartition {
        flags: 0,
        proximity_domain_info: pdi,
    })
}

/// A child of `parent`, created and (if `init`) initialized with root deposits.
fn child(hv: &mut Hypervisor, parent: PartitionId, init: bool) -> PartitionId {
    let input = tlfs2_create(HvProximityDomainInfo::ANY);
    let id = if parent == ROOT_ID {
        hv.call_with_deposits(SELF, NodeSel::Any, 1, 16, |hv| {
            hv.create_partition(ROOT_ID, &input)
        })
        .unwrap()
    } else {
        hv.create_partition(parent, &input).unwrap()
    };
    if init {
        if parent == ROOT_ID {
            hv.call_with_deposits(id, NodeSel::Any, 4, 8, |hv| {
                hv.initialize_partition(ROOT_ID, id)
            })
            .unwrap();
        } else {
            hv.initialize_partition(parent, id).unwrap();
        }
    }
    hv.check().unwrap();
    id
}

const POOL_AND_CREATE: HvPartitionPrivilegeMask = HvPartitionPrivilegeMask::new()
    .with_create_partitions(true)
    .with_access_memory_pool(true);

#[test]
fn unknown_caller_is_denied_after_the_generic_checks() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let nobody = PartitionId(0x999);
    let id = HvPartitionIdInput { partition_id: 1 };
    let rax = hv.hypercall(
        nobody,
        ctl(HypercallCode::HvCallInitializePartition, 0, 0),
        id.as_bytes(),
        &mut [],
    );
    assert_eq!(status(rax), HvStatus::ACCESS_DENIED);
    // A bad control word is still answered first.
    let rax = hv.hypercall(nobody, 0x00FF, &[], &mut []);
    assert_eq!(status(rax), HvStatus::INVALID_HYPERCALL_CODE);
    // Rep calls report their rep start.
    let mut input = HvDepositMemory { partition_id: 1 }.as_bytes().to_vec();
    input.extend_from_slice(&[0; 8 * 4]);
    let rax = hv.hypercall(
        nobody,
        ctl(HypercallCode::HvCallDepositMemory, 4, 2),
        &input,
        &mut [],
    );
    assert_eq!((status(rax), reps(rax)), (HvStatus::ACCESS_DENIED, 2));
    hv.check().unwrap();
}

#[test]
fn short_output_is_refused_before_any_effect() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    hv.root_deposit(SELF, NodeSel::Any, 4).unwrap();
    let input = HvCreatePartition::default();
    let mut out = [0u8; 4];
    let rax = hv.hypercall(
        ROOT_ID,
        ctl(HypercallCode::HvCallCreatePartition, 0, 0),
        input.as_bytes(),
        &mut out,
    );
    assert_eq!(status(rax), HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(hv.partitions().count(), 1);
    assert_eq!(hv.partition(ROOT_ID).unwrap().pool_available(), 4);
}

#[test]
fn header_errors_of_a_resumed_rep_call_keep_the_rep_start() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    let w = HvWithdrawMemory {
        partition_id: c.0,
        proximity_domain_info: HvProximityDomainInfo::from_u64(0x8000_0002_0000_0000),
    };
    let mut out = vec![0u8; 8 * 10];
    let rax = hv.hypercall(
        ROOT_ID,
        ctl(HypercallCode::HvCallWithdrawMemory, 10, 3),
        w.as_bytes(),
        &mut out,
    );
    assert_eq!((status(rax), reps(rax)), (HvStatus::INVALID_PARAMETER, 3));
}

#[test]
fn withdraw_writes_only_completed_elements_from_rep_start() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    let pages: Vec<u64> = (500..503).collect();
    hv.deposit_memory(ROOT_ID, c, &pages).unwrap();
    let w = HvWithdrawMemory {
        partition_id: c.0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    let mut out = vec![0xAAu8; 8 * 8];
    let rax = hv.hypercall(
        ROOT_ID,
        ctl(HypercallCode::HvCallWithdrawMemory, 8, 2),
        w.as_bytes(),
        &mut out,
    );
    assert_eq!((status(rax), reps(rax)), (HvStatus::NO_RESOURCES, 5));
    assert!(out[..16].iter().all(|&b| b == 0xAA));
    assert!(out[40..].iter().all(|&b| b == 0xAA));
    let got: BTreeSet<u64> = out[16..40]
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, pages.iter().copied().collect());
    hv.check().unwrap();
}

#[test]
fn gpa_entry_writes_back_only_what_the_call_completed() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    hv.deposit_memory(ROOT_ID, c, &[700, 701]).unwrap();
    let base = 0x4000_0000;
    let mut mem = FlatMemory::new(base, 0x2000);
    let w = HvWithdrawMemory {
        partition_id: c.0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    mem.write(base, w.as_bytes()).unwrap();
    mem.bytes[0x1000..].fill(0xEE);
    let rax = hv.hypercall_gpa(
        ROOT_ID,
        ctl(HypercallCode::HvCallWithdrawMemory, 4, 0),
        base,
        base + 0x1000,
        &mut mem,
    );
    assert_eq!((status(rax), reps(rax)), (HvStatus::NO_RESOURCES, 2));
    let first = mem.read_u64(base + 0x1000).unwrap();
    let mut got = [first, mem.read_u64(base + 0x1008).unwrap()];
    got.sort_unstable();
    assert_eq!(got, [700, 701]);
    assert!(mem.bytes[0x1010..].iter().all(|&b| b == 0xEE));
    // An output page the caller cannot write is refused before anything moves.
    hv.deposit_memory(ROOT_ID, c, &[702]).unwrap();
    let rax = hv.hypercall_gpa(
        ROOT_ID,
        ctl(HypercallCode::HvCallWithdrawMemory, 1, 0),
        base,
        0x10_0000,
        &mut mem,
    );
    assert_eq!(status(rax), HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(hv.partition(c).unwrap().pool_available(), 1);
    // A simple call that fails leaves its output alone.
    let b = HvGetMemoryBalance {
        partition_id: 0x777,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    mem.write(base, b.as_bytes()).unwrap();
    let rax = hv.hypercall_gpa(
        ROOT_ID,
        ctl(HypercallCode::HvCallGetMemoryBalance, 0, 0),
        base,
        base + 0x1000,
        &mut mem,
    );
    assert_eq!(status(rax), HvStatus::INVALID_PARTITION_ID);
    assert_eq!(mem.read_u64(base + 0x1000).unwrap(), first);
    hv.check().unwrap();
}

#[test]
fn fast_calls_through_the_gpa_entry_use_the_registers() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    hv.root_deposit(c, NodeSel::Any, 8).unwrap();
    let mut mem = FlatMemory::new(0, 0);
    let fast = ctl(HypercallCode::HvCallInitializePartition, 0, 0) | 1 << 16;
    let rax = hv.hypercall_gpa(ROOT_ID, fast, c.0, 0, &mut mem);
    assert_eq!(status(rax), HvStatus::SUCCESS);
    let vp0 = CreateVpInput::Tlfs2(HvCreateVp {
        partition_id: c.0,
        ..Default::default()
    });
    assert_eq!(
        hv.create_vp(ROOT_ID, &vp0),
        Err(HvError::INSUFFICIENT_MEMORY)
    );
    // DeleteVp is fast16: RDX = id, R8 = index.
    hv.root_deposit(c, NodeSel::Any, 4).unwrap();
    hv.create_vp(
        ROOT_ID,
        &CreateVpInput::Tlfs2(HvCreateVp {
            partition_id: c.0,
            vp_index: 3,
            ..Default::default()
        }),
    )
    .unwrap();
    let fast = ctl(HypercallCode::HvCallDeleteVp, 0, 0) | 1 << 16;
    let rax = hv.hypercall_gpa(ROOT_ID, fast, c.0, 3, &mut mem);
    assert_eq!(status(rax), HvStatus::SUCCESS);
    assert!(hv.partition(c).unwrap().vps.is_empty());
    hv.check().unwrap();
}

#[test]
fn current_layout_create_partition_fields() {
    let mut hv = host(InputLayout::Current, 2);
    hv.root_deposit(SELF, NodeSel::Any, 16).unwrap();
    let mk = |f: fn(&mut HvCreatePartitionV2)| {
        let mut i = HvCreatePartitionV2 {
            compatibility_version: 0x609,
            ..Default::default()
        };
        f(&mut i);
        CreatePartitionInput::Current(i)
    };
    let lapic_smt = mk(|i| i.flags = 1 << 13 | 1);
    let id = hv.create_partition(ROOT_ID, &lapic_smt).unwrap();
    assert_eq!(hv.partition(id).unwrap().flags, 1 << 13 | 1);
    for bad in [
        mk(|i| i.flags = 1 << 2),
        mk(|i| i.padding = 1),
        mk(|i| i.isolation_properties = 1),
        mk(|i| i.proximity_domain_info = HvProximityDomainInfo::node(2, true)),
    ] {
        assert_eq!(
            hv.create_partition(ROOT_ID, &bad),
            Err(HvError::INVALID_PARAMETER)
        );
    }
    // TLFS 2.0 accepts no flags at all.
    let mut hv = host(InputLayout::Tlfs2, 2);
    hv.root_deposit(SELF, NodeSel::Any, 16).unwrap();
    let i = CreatePartitionInput::Tlfs2(HvCreatePartition {
        flags: 1,
        ..Default::default()
    });
    assert_eq!(
        hv.create_partition(ROOT_ID, &i),
        Err(HvError::INVALID_PARAMETER)
    );
}

#[test]
fn current_layout_create_vp_ignores_stale_subnode_id() {
    let mut hv = host(InputLayout::Current, 2);
    let c = child(&mut hv, ROOT_ID, true);
    hv.root_deposit(c, NodeSel::Exact(1), 8).unwrap();
    let vp = |idx: u32, f: fn(&mut HvCreateVpV2)| {
        let mut i = HvCreateVpV2 {
            partition_id: c.0,
            vp_index: idx,
            subnode_id: 0x1234_5678,
            proximity_domain_info: HvProximityDomainInfo::node(1, true),
            ..Default::default()
        };
        f(&mut i);
        i
    };
    let input = vp(0, |_| {});
    let mut bytes = input.as_bytes().to_vec();
    bytes.resize(64, 0x5A);
    let rax = hv.hypercall(
        ROOT_ID,
        ctl(HypercallCode::HvCallCreateVp, 0, 0),
        &bytes,
        &mut [],
    );
    assert_eq!(status(rax), HvStatus::SUCCESS);
    assert_eq!(hv.partition(c).unwrap().pools[1].in_use, 4);
    for bad in [
        vp(1, |i| i.reserved_z0 = [0, 1, 0]),
        vp(1, |i| i.subnode_type = HvSubnodeType(4)),
        vp(1, |i| i.flags = 2),
    ] {
        assert_eq!(
            hv.create_vp(ROOT_ID, &CreateVpInput::Current(bad)),
            Err(HvError::INVALID_PARAMETER)
        );
    }
    let socket = vp(1, |i| i.subnode_type = HvSubnodeType::Socket);
    hv.create_vp(ROOT_ID, &CreateVpInput::Current(socket))
        .unwrap();
    for idx in [64, HV_VP_INDEX_SELF, HV_ANY_VP] {
        assert_eq!(
            hv.create_vp(ROOT_ID, &CreateVpInput::Current(vp(idx, |_| {}))),
            Err(HvError::INVALID_VP_INDEX)
        );
    }
    hv.check().unwrap();
}

#[test]
fn privilege_is_checked_before_the_id_exists() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let u = child(&mut hv, ROOT_ID, true);
    let g = child(&mut hv, ROOT_ID, false);
    for target in [g, PartitionId(0x4444)] {
        assert_eq!(
            hv.initialize_partition(u, target),
            Err(HvError::ACCESS_DENIED)
        );
        let b = HvGetMemoryBalance {
            partition_id: target.0,
            ..Default::default()
        };
        assert_eq!(hv.get_memory_balance(u, &b), Err(HvError::ACCESS_DENIED));
    }
    // With the privileges, the answers tell unknown from not-mine.
    hv.set_partition_privileges(u, POOL_AND_CREATE).unwrap();
    assert_eq!(
        hv.initialize_partition(u, PartitionId(0x4444)),
        Err(HvError::INVALID_PARTITION_ID)
    );
    assert_eq!(hv.initialize_partition(u, g), Err(HvError::ACCESS_DENIED));
}

#[test]
fn delete_self_and_root_are_refused() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    assert_eq!(
        hv.delete_partition(ROOT_ID, SELF),
        Err(HvError::INVALID_PARAMETER)
    );
    assert_eq!(
        hv.delete_partition(ROOT_ID, ROOT_ID),
        Err(HvError::ACCESS_DENIED)
    );
    assert_eq!(
        hv.finalize_partition(ROOT_ID, SELF),
        Err(HvError::ACCESS_DENIED)
    );
}

#[test]
fn next_child_walks_in_creation_order() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let kids: Vec<_> = (0..3).map(|_| child(&mut hv, ROOT_ID, false)).collect();
    let mut prev = HV_PARTITION_ID_INVALID;
    let mut seen = vec![];
    loop {
        let input = HvGetNextChildPartition {
            parent_id: HV_PARTITION_ID_SELF,
            previous_child_id: prev,
        };
        let mut out = [0u8; 8];
        let rax = hv.hypercall(
            ROOT_ID,
            ctl(HypercallCode::HvCallGetNextChildPartition, 0, 0),
            input.as_bytes(),
            &mut out,
        );
        assert_eq!(status(rax), HvStatus::SUCCESS);
        prev = u64::from_le_bytes(out);
        if prev == HV_PARTITION_ID_INVALID {
            break;
        }
        seen.push(PartitionId(prev));
    }
    assert_eq!(seen, kids);
    hv.delete_partition(ROOT_ID, kids[1]).unwrap();
    let gone = HvGetNextChildPartition {
        parent_id: ROOT_ID.0,
        previous_child_id: kids[1].0,
    };
    assert_eq!(
        hv.get_next_child_partition(ROOT_ID, &gone),
        Err(HvError::INVALID_PARTITION_ID)
    );
    let other = HvGetNextChildPartition {
        parent_id: kids[0].0,
        previous_child_id: 0,
    };
    assert_eq!(
        hv.get_next_child_partition(ROOT_ID, &other),
        Err(HvError::ACCESS_DENIED)
    );
}

#[test]
fn property_reads_follow_the_state_rule() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    hv.set_partition_privileges(c, POOL_AND_CREATE).unwrap();
    let get = |code, id: PartitionId| HvGetPartitionProperty {
        partition_id: id.0,
        property_code: code,
        padding: 0,
    };
    let priv_flags = get(HvPartitionPropertyCode::PrivilegeFlags, c);
    assert_eq!(
        hv.get_partition_property(ROOT_ID, &priv_flags),
        Ok(POOL_AND_CREATE.into_bits())
    );
    let own = get(HvPartitionPropertyCode::PrivilegeFlags, SELF);
    assert_eq!(
        hv.get_partition_property(ROOT_ID, &own),
        Ok(HvPartitionPrivilegeMask::ROOT.into_bits())
    );
    assert_eq!(
        hv.get_partition_property(c, &own),
        Err(HvError::ACCESS_DENIED)
    );
    let vtlb = get(HvPartitionPropertyCode::VirtualTlbPageCount, c);
    assert_eq!(hv.get_partition_property(ROOT_ID, &vtlb), Ok(0));
    let padded = HvGetPartitionProperty {
        padding: 1,
        ..priv_flags
    };
    assert_eq!(
        hv.get_partition_property(ROOT_ID, &padded),
        Err(HvError::INVALID_PARAMETER)
    );
    hv.call_with_deposits(c, NodeSel::Any, 8, 2, |hv| {
        hv.initialize_partition(ROOT_ID, c)
    })
    .unwrap();
    hv.finalize_partition(ROOT_ID, c).unwrap();
    assert_eq!(
        hv.get_partition_property(ROOT_ID, &priv_flags),
        Err(HvError::INVALID_PARTITION_STATE)
    );
    let unknown = get(HvPartitionPropertyCode(0x7FFF_0000), c);
    assert_eq!(
        hv.get_partition_property(ROOT_ID, &unknown),
        Err(HvError::UNKNOWN_PROPERTY)
    );
}

#[test]
fn nested_parent_deposits_its_own_gfns_and_gets_them_back() {
    let mut hv = host(InputLayout::Tlfs2, 3);
    let c = child(&mut hv, ROOT_ID, true);
    hv.set_partition_privileges(c, POOL_AND_CREATE).unwrap();
    hv.root_deposit(c, NodeSel::Any, COSTS.create_partition as u64)
        .unwrap();
    let g = child(&mut hv, c, false);
    hv.set_max_pages(c, u32::MAX).unwrap();
    hv.populate(c, 0x100, 16).unwrap();
    hv.take_effects();
    // gfn 0x100 twice: the second is no longer mapped.
    let r = hv.deposit_memory(c, g, &[0x100, 0x101, 0x100]);
    assert_eq!(r, Err((HvError::OPERATION_DENIED, 2)));
    assert_eq!(hv.partition(c).unwrap().p2m.mapped(), 14);
    assert_eq!(hv.partition(g).unwrap().pool_available(), 2);
    assert_eq!(
        hv.take_effects(),
        vec![crate::Effect::Discard {
            partition: c,
            range: crate::GfnRange::new(0x100, 2).unwrap()
        }]
    );
    // The root cannot reach a grandchild's pool.
    assert_eq!(
        hv.deposit_memory(ROOT_ID, g, &[5]),
        Err((HvError::ACCESS_DENIED, 0))
    );
    hv.deposit_memory(c, g, &[0x102, 0x103, 0x104, 0x105, 0x106, 0x107])
        .unwrap();
    hv.initialize_partition(c, g).unwrap();
    assert_eq!(
        hv.initialize_partition(c, g),
        Err(HvError::INVALID_PARTITION_STATE)
    );
    hv.finalize_partition(c, g).unwrap();
    let back: BTreeSet<u64> = hv.withdraw_all(c, g).unwrap().into_iter().collect();
    assert_eq!(back, (0x100..0x108).collect());
    assert_eq!(hv.partition(c).unwrap().p2m.mapped(), 16);
    hv.delete_partition(c, g).unwrap();
    hv.check().unwrap();
    // Finalizing C with a child is refused; without one it goes through.
    let g2 = child(&mut hv, c, false);
    assert_eq!(
        hv.finalize_partition(ROOT_ID, c),
        Err(HvError::OPERATION_DENIED)
    );
    hv.delete_partition(c, g2).unwrap();
    hv.finalize_partition(ROOT_ID, c).unwrap();
    assert_eq!(hv.partition(c).unwrap().p2m.mapped(), 0);
    hv.check().unwrap();
}

#[test]
fn call_with_deposits_gives_up_after_max_refills() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    let r = hv.call_with_deposits(c, NodeSel::Any, 1, 3, |hv| {
        hv.initialize_partition(ROOT_ID, c)
    });
    assert_eq!(r, Err(HvError::INSUFFICIENT_MEMORY));
    assert_eq!(hv.partition(c).unwrap().pool_available(), 3);
    hv.call_with_deposits(c, NodeSel::Any, 5, 1, |hv| {
        hv.initialize_partition(ROOT_ID, c)
    })
    .unwrap();
    assert_eq!(hv.partition(c).unwrap().pool_in_use(), 8);
    // A deposit that is refused ends the loop with its own error.
    let r = hv.call_with_deposits(PartitionId(0x55), NodeSel::Any, 1, 3, |_| -> HvResult<()> {
        Err(HvError::INSUFFICIENT_MEMORY)
    });
    assert_eq!(r, Err(HvError::INVALID_PARTITION_ID));
}

#[test]
fn locked_pages_are_object_in_use_until_unlocked() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    let c = child(&mut hv, ROOT_ID, false);
    assert!(hv.lock_root_page(900));
    assert!(!hv.lock_root_page(1 << 40));
    assert_eq!(
        hv.deposit_memory(ROOT_ID, c, &[899, 900]),
        Err((HvError::OBJECT_IN_USE, 1))
    );
    assert!(hv.unlock_root_page(900));
    assert!(!hv.unlock_root_page(900));
    hv.deposit_memory(ROOT_ID, c, &[900]).unwrap();
    hv.check().unwrap();
}

#[test]
fn typed_rep_calls_bound_their_lists() {
    let mut hv = host(InputLayout::Tlfs2, 2);
    assert_eq!(
        hv.deposit_memory(ROOT_ID, SELF, &[]),
        Err((HvError::INVALID_HYPERCALL_INPUT, 0))
    );
    let big = vec![0u64; 4096];
    assert_eq!(
        hv.deposit_memory(ROOT_ID, SELF, &big),
        Err((HvError::INVALID_HYPERCALL_INPUT, 0))
    );
    let w = HvWithdrawMemory {
        partition_id: HV_PARTITION_ID_SELF,
        ..Default::default()
    };
    assert_eq!(
        hv.withdraw_memory(ROOT_ID, &w, &mut []),
        Err((HvError::INVALID_HYPERCALL_INPUT, 0))
    );
}

// ---------------------------------------------------------------------------------------
// Random sequences
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Create {
        caller: u8,
        pdi: u8,
    },
    Init {
        caller: u8,
        target: u8,
    },
    Finalize {
        caller: u8,
        target: u8,
    },
    Delete {
        caller: u8,
        target: u8,
    },
    Deposit {
        caller: u8,
        target: u8,
        n: u8,
        node: u8,
        junk: u8,
    },
    Withdraw {
        caller: u8,
        target: u8,
        n: u16,
        pdi: u8,
        start: u8,
    },
    Balance {
        caller: u8,
        target: u8,
        pdi: u8,
    },
    CreateVp {
        caller: u8,
        target: u8,
        index: u8,
        pdi: u8,
    },
    DeleteVp {
        caller: u8,
        target: u8,
        index: u8,
    },
    Raw {
        caller: u8,
        control: u64,
        input: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let b = any::<u8>;
    prop_oneof![
        (b(), b()).prop_map(|(caller, pdi)| Op::Create { caller, pdi }),
        (b(), b()).prop_map(|(caller, target)| Op::Init { caller, target }),
        (b(), b()).prop_map(|(caller, target)| Op::Finalize { caller, target }),
        (b(), b()).prop_map(|(caller, target)| Op::Delete { caller, target }),
        (b(), b(), 1u8..24, b(), b()).prop_map(|(caller, target, n, node, junk)| Op::Deposit {
            caller,
            target,
            n,
            node,
            junk
        }),
        (b(), b(), 1u16..40, b(), b()).prop_map(|(caller, target, n, pdi, start)| Op::Withdraw {
            caller,
            target,
            n,
            pdi,
            start
        }),
        (b(), b(), b()).prop_map(|(caller, target, pdi)| Op::Balance {
            caller,
            target,
            pdi
        }),
        (b(), b(), b(), b()).prop_map(|(caller, target, index, pdi)| Op::CreateVp {
            caller,
            target,
            index,
            pdi
        }),
        (b(), b(), b()).prop_map(|(caller, target, index)| Op::DeleteVp {
            caller,
            target,
            index
        }),
        (b(), any::<u64>(), proptest::collection::vec(b(), 0..48)).prop_map(
            |(caller, control, input)| Op::Raw {
                caller,
                control,
                input
            }
        ),
    ]
}

fn pdi_of(x: u8) -> HvProximityDomainInfo {
    match x % 6 {
        0 | 1 => HvProximityDomainInfo::ANY,
        2 => HvProximityDomainInfo::node(u32::from(x >> 7), true),
        3 => HvProximityDomainInfo::node(u32::from(x >> 7), false),
        4 => HvProximityDomainInfo::node(2, true),
        _ => HvProximityDomainInfo::from_u64(0x8000_0002_0000_0000),
    }
}

struct World {
    hv: Hypervisor,
    /// Root, a child with pool and create privileges, an unprivileged child, a stranger.
    callers: [PartitionId; 4],
    /// Every id ever handed out, plus SELF and INVALID.
    ids: Vec<u64>,
    /// GPA pages deposited into each partition's pool and not withdrawn yet.
    deposited: BTreeMap<u64, Vec<u64>>,
}

impl World {
    fn new() -> Self {
        let mut hv = host(InputLayout::Tlfs2, 3);
        let p = child(&mut hv, ROOT_ID, true);
        hv.set_partition_privileges(p, POOL_AND_CREATE).unwrap();
        hv.set_max_pages(p, u32::MAX).unwrap();
        hv.populate(p, 0, 48).unwrap();
        let u = child(&mut hv, ROOT_ID, true);
        hv.root_deposit(SELF, NodeSel::Any, 12).unwrap();
        hv.root_deposit(p, NodeSel::Exact(1), 12).unwrap();
        let mut deposited = BTreeMap::new();
        // Pages the setup deposited count as deposited too.
        for id in [ROOT_ID, p, u] {
            let mut pages = vec![];
            for m in 0..hv.frames().len() {
                let st = hv.frames().state(m);
                if matches!(st, FrameState::PoolAvailable | FrameState::PoolInUse)
                    && hv.slot_of(id) == Some(hv.frames().owner(m))
                {
                    pages.push(u64::from(m));
                }
            }
            deposited.insert(id.0, pages);
        }
        World {
            hv,
            callers: [ROOT_ID, p, u, PartitionId(0xDEAD)],
            ids: vec![
                ROOT_ID.0,
                p.0,
                u.0,
                HV_PARTITION_ID_SELF,
                HV_PARTITION_ID_INVALID,
                0xDEAD,
            ],
            deposited,
        }
    }

    /// The root most of the time, so that pools fill and partitions come and go.
    fn caller(&self, x: u8) -> PartitionId {
        self.callers[[0, 0, 0, 0, 1, 1, 2, 3][usize::from(x % 8)]]
    }

    /// Mostly a live partition; sometimes SELF, INVALID or an id that is gone.
    fn target(&self, x: u8) -> u64 {
        let live: Vec<u64> = self.hv.partitions().map(|p| p.id.0).collect();
        if x % 4 == 0 {
            self.ids[usize::from(x / 4) % self.ids.len()]
        } else {
            live[usize::from(x / 4) % live.len()]
        }
    }

    fn resolve(&self, caller: PartitionId, raw: u64) -> u64 {
        if raw == HV_PARTITION_ID_SELF {
            caller.0
        } else {
            raw
        }
    }

    fn record_deposit(&mut self, caller: PartitionId, raw: u64, pages: &[u64]) {
        let t = self.resolve(caller, raw);
        self.deposited
            .entry(t)
            .or_default()
            .extend_from_slice(pages);
    }

    fn check_withdrawn(
        &mut self,
        caller: PartitionId,
        raw: u64,
        pages: &[u64],
    ) -> Result<(), TestCaseError> {
        let t = self.resolve(caller, raw);
        let pool = self.deposited.entry(t).or_default();
        for p in pages {
            let i = pool.iter().position(|q| q == p);
            prop_assert!(
                i.is_some(),
                "{p:#x} withdrawn from {t:#x} was never deposited there"
            );
            pool.swap_remove(i.unwrap());
        }
        Ok(())
    }

    /// Candidate GPA pages for a deposit by `caller`: free root pages or mapped gfns of a
    /// nested parent, with some junk mixed in.
    fn pages_for(&self, caller: PartitionId, n: u8, node: u8, junk: u8) -> Vec<u64> {
        let mut pages: Vec<u64> = if caller == ROOT_ID {
            let range = self.hv.frames().node_range(u32::from(node % 2));
            range
                .filter(|&m| self.hv.frames().state(m) == FrameState::Free)
                .step_by(usize::from(junk % 3) + 1)
                .take(usize::from(n))
                .map(u64::from)
                .collect()
        } else {
            match self.hv.partition(caller) {
                Some(p) => p.p2m.iter().map(|(g, _)| g).take(usize::from(n)).collect(),
                None => vec![],
            }
        };
        match junk % 5 {
            0 => pages.push(u64::from(junk) * 7),
            1 if !pages.is_empty() => pages.push(pages[0]),
            2 => pages.push(1 << 45),
            _ => {}
        }
        if pages.is_empty() {
            pages.push(u64::from(junk));
        }
        pages
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create { caller, pdi } => {
                let c = self.caller(caller);
                if let Ok(id) = self.hv.create_partition(c, &tlfs2_create(pdi_of(pdi))) {
                    self.ids.push(id.0);
                }
            }
            Op::Init { caller, target } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let _ = self.hv.initialize_partition(c, PartitionId(t));
            }
            Op::Finalize { caller, target } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let _ = self.hv.finalize_partition(c, PartitionId(t));
            }
            Op::Delete { caller, target } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let _ = self.hv.delete_partition(c, PartitionId(t));
            }
            Op::Deposit {
                caller,
                target,
                n,
                node,
                junk,
            } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let pages = self.pages_for(c, n, node, junk);
                let done = match self.hv.deposit_memory(c, PartitionId(t), &pages) {
                    Ok(()) => pages.len(),
                    Err((_, i)) => usize::from(i),
                };
                self.record_deposit(c, t, &pages[..done]);
            }
            Op::Withdraw {
                caller,
                target,
                n,
                pdi,
                start,
            } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let start = u16::from(start) % n;
                let w = HvWithdrawMemory {
                    partition_id: t,
                    proximity_domain_info: pdi_of(pdi),
                };
                let mut out = vec![0u8; 8 * usize::from(n)];
                let rax = self.hv.hypercall(
                    c,
                    ctl(HypercallCode::HvCallWithdrawMemory, n, start),
                    w.as_bytes(),
                    &mut out,
                );
                let done = reps(rax);
                prop_assert!(done >= start && done <= n);
                let pages: Vec<u64> = out[usize::from(start) * 8..usize::from(done) * 8]
                    .chunks(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                self.check_withdrawn(c, t, &pages)?;
            }
            Op::Balance {
                caller,
                target,
                pdi,
            } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let b = HvGetMemoryBalance {
                    partition_id: t,
                    proximity_domain_info: pdi_of(pdi),
                };
                if let Ok(bal) = self.hv.get_memory_balance(c, &b) {
                    let p = self.hv.partition(PartitionId(self.resolve(c, t))).unwrap();
                    prop_assert!(bal.pages_available <= p.pool_available());
                    prop_assert!(bal.pages_in_use <= p.pool_in_use());
                }
            }
            Op::CreateVp {
                caller,
                target,
                index,
                pdi,
            } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let i = HvCreateVp {
                    partition_id: t,
                    vp_index: u32::from(index % 80),
                    proximity_domain_info: pdi_of(pdi),
                    ..Default::default()
                };
                let _ = self.hv.create_vp(c, &CreateVpInput::Tlfs2(i));
            }
            Op::DeleteVp {
                caller,
                target,
                index,
            } => {
                let (c, t) = (self.caller(caller), self.target(target));
                let i = HvDeleteVp {
                    partition_id: t,
                    vp_index: u32::from(index % 80),
                    padding: 0,
                };
                let _ = self.hv.delete_vp(c, &i);
            }
            Op::Raw {
                caller,
                control,
                input,
            } => {
                let c = self.caller(caller);
                // Mostly well-formed control words, so the handlers are reached.
                let control = if caller & 0x80 == 0 {
                    let codes = [
                        0x40u64, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x4A, 0x4E, 0x4F,
                    ];
                    let code = codes[(control as usize) % codes.len()];
                    let reps = (control >> 32) & 7;
                    let start = if reps > 0 { (control >> 48) % reps } else { 0 };
                    code | reps << 32 | start << 48
                } else {
                    control
                };
                let mut out = vec![0u8; 4096];
                let before = self.hv.partitions().map(|p| p.id.0).collect::<Vec<_>>();
                let rax = self.hv.hypercall(c, control, &input, &mut out);
                for p in self.hv.partitions() {
                    if !before.contains(&p.id.0) {
                        self.ids.push(p.id.0);
                    }
                }
                let opts = DecodeOptions::default();
                if let Ok(d) = decode(control, &input, opts) {
                    let (start, done) =
                        (usize::from(d.control.rep_start()), usize::from(reps(rax)));
                    match d.call {
                        HvCall::DepositMemory(h, list) if done > start => {
                            let pages: Vec<u64> =
                                list.iter().skip(start).take(done - start).collect();
                            self.record_deposit(c, h.partition_id, &pages);
                        }
                        HvCall::WithdrawMemory(w) if done > start => {
                            let pages: Vec<u64> = out[start * 8..done * 8]
                                .chunks(8)
                                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                                .collect();
                            self.check_withdrawn(c, w.partition_id, &pages)?;
                        }
                        _ => {}
                    }
                }
            }
        }
        let checked = self.hv.check();
        prop_assert!(checked.is_ok(), "{:?}", checked);
        let f = self.hv.frames();
        let free = f.total_free();
        let held: u64 = self
            .hv
            .partitions()
            .map(|p| p.pool_available() + p.pool_in_use() + p.tot_pages())
            .sum();
        prop_assert_eq!(free + held, u64::from(f.len()));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_call_sequences_keep_the_model_whole(ops in proptest::collection::vec(op(), 1..64)) {
        let mut w = World::new();
        for op in ops {
            w.apply(op)?;
        }
        // Whatever happened, every pool the root can reach drains to what was deposited.
        let children: Vec<PartitionId> = w.hv.partition(ROOT_ID).unwrap().children.clone();
        for c in children {
            let _ = w.hv.finalize_partition(ROOT_ID, c);
            if let Ok(pages) = w.hv.withdraw_all(ROOT_ID, c) {
                w.check_withdrawn(ROOT_ID, c.0, &pages)?;
            }
        }
        prop_assert!(w.hv.check().is_ok());
    }
}
