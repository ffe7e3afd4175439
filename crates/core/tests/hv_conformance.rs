//! ballast's Hyper-V conformance cases (the TLFS: the hypercall interface, partition
//! management and the memory pool; HvDepositMemory, HvWithdrawMemory,
//! HvGetMemoryBalance, HvCreateVp), one test each, driven through the
//! raw hypercall entries and checked by their result values (RAX) and the model's state.
//!
//! Notation: R is the root, C a child of R, G an unrelated child of R. Every
//! call is followed by `check()`.

use ballast_abi::hv::{
    Control, HV_PARTITION_ID_SELF, HvCreatePartition, HvCreateVp, HvDeleteVp, HvDepositMemory,
    HvGetMemoryBalance, HvGetPartitionProperty, HvPartitionIdInput, HvPartitionPrivilegeMask,
    HvPartitionPropertyCode, HvProximityDomainInfo, HvStatus, HvWithdrawMemory, HypercallCode,
    HypercallOutput,
};
use ballast_core::frame::FrameState;
use ballast_core::hyperv::SELF;
use ballast_core::{
    Config, Effect, FlatMemory, GuestMemory, Hypervisor, NodeSel, PartitionId, PartitionState,
    ROOT_ID,
};
use zerocopy::IntoBytes;

const R: PartitionId = ROOT_ID;
const NODE_FRAMES: u32 = 2048;
const ANY: HvProximityDomainInfo = HvProximityDomainInfo::ANY;

fn host() -> Hypervisor {
    Hypervisor::new(Config::with_nodes(vec![NODE_FRAMES, NODE_FRAMES])).unwrap()
}

fn create_cost(hv: &Hypervisor) -> u64 {
    u64::from(hv.config().costs.create_partition)
}

fn init_cost(hv: &Hypervisor) -> u64 {
    u64::from(hv.config().costs.initialize_partition)
}

fn vp_cost(hv: &Hypervisor) -> u64 {
    u64::from(hv.config().costs.create_vp)
}

fn ctl(code: HypercallCode, reps: u16, start: u16) -> u64 {
    Control::for_call(code, reps, start).into_bits()
}

/// (status, reps completed) of a result value.
fn res(rax: u64) -> (HvStatus, u16) {
    let o = HypercallOutput::from_bits(rax);
    (o.status(), o.reps_completed())
}

/// One raw hypercall with an output page; checks the invariants after it.
fn call(hv: &mut Hypervisor, caller: PartitionId, control: u64, input: &[u8]) -> (u64, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let rax = hv.hypercall(caller, control, input, &mut out);
    hv.check().unwrap();
    (rax, out)
}

fn deposit_input(target: u64, pages: &[u64]) -> Vec<u8> {
    let mut v = HvDepositMemory {
        partition_id: target,
    }
    .as_bytes()
    .to_vec();
    for p in pages {
        v.extend_from_slice(&p.to_le_bytes());
    }
    v
}

fn deposit(hv: &mut Hypervisor, caller: PartitionId, target: u64, pages: &[u64]) -> u64 {
    let input = deposit_input(target, pages);
    let n = pages.len() as u16;
    call(
        hv,
        caller,
        ctl(HypercallCode::HvCallDepositMemory, n, 0),
        &input,
    )
    .0
}

fn id_call(hv: &mut Hypervisor, caller: PartitionId, code: HypercallCode, id: PartitionId) -> u64 {
    let input = HvPartitionIdInput { partition_id: id.0 };
    call(hv, caller, ctl(code, 0, 0), input.as_bytes()).0
}

/// (available, in use) or the failing status.
fn balance(
    hv: &mut Hypervisor,
    caller: PartitionId,
    target: u64,
    pdi: HvProximityDomainInfo,
) -> Result<(u64, u64), HvStatus> {
    let input = HvGetMemoryBalance {
        partition_id: target,
        proximity_domain_info: pdi,
    };
    let (rax, out) = call(
        hv,
        caller,
        ctl(HypercallCode::HvCallGetMemoryBalance, 0, 0),
        input.as_bytes(),
    );
    match res(rax).0 {
        HvStatus::SUCCESS => Ok((
            u64::from_le_bytes(out[..8].try_into().unwrap()),
            u64::from_le_bytes(out[8..16].try_into().unwrap()),
        )),
        s => Err(s),
    }
}

fn withdraw(
    hv: &mut Hypervisor,
    caller: PartitionId,
    target: u64,
    pdi: u64,
    n: u16,
) -> (u64, Vec<u64>) {
    let input = HvWithdrawMemory {
        partition_id: target,
        proximity_domain_info: HvProximityDomainInfo::from_u64(pdi),
    };
    let (rax, out) = call(
        hv,
        caller,
        ctl(HypercallCode::HvCallWithdrawMemory, n, 0),
        input.as_bytes(),
    );
    let done = usize::from(res(rax).1);
    let pages = out[..done * 8]
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (rax, pages)
}

fn create_vp(
    hv: &mut Hypervisor,
    caller: PartitionId,
    c: PartitionId,
    index: u32,
    pdi: HvProximityDomainInfo,
    flags: u64,
) -> u64 {
    let input = HvCreateVp {
        partition_id: c.0,
        vp_index: index,
        padding: 0,
        proximity_domain_info: pdi,
        flags,
    };
    call(
        hv,
        caller,
        ctl(HypercallCode::HvCallCreateVp, 0, 0),
        input.as_bytes(),
    )
    .0
}

fn create_partition(hv: &mut Hypervisor, caller: PartitionId, flags: u64) -> (u64, PartitionId) {
    let input = HvCreatePartition {
        flags,
        proximity_domain_info: ANY,
    };
    let (rax, out) = call(
        hv,
        caller,
        ctl(HypercallCode::HvCallCreatePartition, 0, 0),
        input.as_bytes(),
    );
    (
        rax,
        PartitionId(u64::from_le_bytes(out[..8].try_into().unwrap())),
    )
}

/// `n` free root pages on `node`, lowest first.
fn free_pages(hv: &Hypervisor, node: u32, n: usize) -> Vec<u64> {
    hv.frames()
        .node_range(node)
        .filter(|&m| hv.frames().state(m) == FrameState::Free)
        .take(n)
        .map(u64::from)
        .collect()
}

fn part(hv: &Hypervisor, id: PartitionId) -> &ballast_core::Partition {
    hv.partition(id).unwrap()
}

/// C: a child of R, Uninitialized with an empty pool; R's pool paid for it.
fn child(hv: &mut Hypervisor) -> PartitionId {
    let pages = free_pages(hv, 0, create_cost(hv) as usize);
    assert_eq!(
        res(deposit(hv, R, HV_PARTITION_ID_SELF, &pages)).0,
        HvStatus::SUCCESS
    );
    let (rax, c) = create_partition(hv, R, 0);
    assert_eq!(res(rax).0, HvStatus::SUCCESS);
    c
}

/// C, Active: INIT_COST node-0 pages deposited and initialized.
fn active_child(hv: &mut Hypervisor) -> PartitionId {
    let c = child(hv);
    let pages = free_pages(hv, 0, init_cost(hv) as usize);
    assert_eq!(res(deposit(hv, R, c.0, &pages)).0, HvStatus::SUCCESS);
    assert_eq!(
        res(id_call(hv, R, HypercallCode::HvCallInitializePartition, c)).0,
        HvStatus::SUCCESS
    );
    c
}

fn grant(hv: &mut Hypervisor, id: PartitionId, mask: HvPartitionPrivilegeMask) {
    hv.set_partition_privileges(id, mask).unwrap();
}

const POOL: HvPartitionPrivilegeMask =
    HvPartitionPrivilegeMask::new().with_access_memory_pool(true);
const POOL_AND_CREATE: HvPartitionPrivilegeMask = POOL.with_create_partitions(true);

#[test]
fn case_01_unknown_call_code() {
    let mut hv = host();
    let (rax, _) = call(&mut hv, R, ctl(HypercallCode(0x00FF), 0, 0), &[0; 64]);
    assert_eq!(rax, 0x0002);
    assert_eq!(hv.partitions().count(), 1);
}

#[test]
fn case_02_rep_call_with_no_reps() {
    let mut hv = host();
    let c = child(&mut hv);
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallDepositMemory, 0, 0),
        &deposit_input(c.0, &[]),
    );
    assert_eq!(res(rax), (HvStatus::INVALID_HYPERCALL_INPUT, 0));
}

#[test]
fn case_03_simple_call_with_reps() {
    let mut hv = host();
    let c = child(&mut hv);
    let input = HvGetMemoryBalance {
        partition_id: c.0,
        proximity_domain_info: ANY,
    };
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallGetMemoryBalance, 1, 0),
        input.as_bytes(),
    );
    assert_eq!(res(rax).0, HvStatus::INVALID_HYPERCALL_INPUT);
}

#[test]
fn case_04_rep_start_at_count() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 4);
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallDepositMemory, 4, 4),
        &deposit_input(c.0, &pages),
    );
    assert_eq!(res(rax), (HvStatus::INVALID_HYPERCALL_INPUT, 0));
    assert_eq!(part(&hv, c).pool_available(), 0);
}

#[test]
fn case_05_reserved_control_bit() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 1);
    let control = 0x48 | 1 << 32 | 1 << 44;
    let (rax, _) = call(&mut hv, R, control, &deposit_input(c.0, &pages));
    assert_eq!(res(rax).0, HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(part(&hv, c).pool_available(), 0);
}

#[test]
fn case_06_variable_header() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 1);
    let control = ctl(HypercallCode::HvCallDepositMemory, 1, 0) | 1 << 17;
    let (rax, _) = call(&mut hv, R, control, &deposit_input(c.0, &pages));
    assert_eq!(res(rax).0, HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(part(&hv, c).pool_available(), 0);
}

const GPA_BASE: u64 = 0x1_0000_0000;

#[test]
fn case_07_unaligned_input_gpa() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 1);
    let mut mem = FlatMemory::new(GPA_BASE, 0x2000);
    mem.write(GPA_BASE + 4, &deposit_input(c.0, &pages))
        .unwrap();
    let rax = hv.hypercall_gpa(
        R,
        ctl(HypercallCode::HvCallDepositMemory, 1, 0),
        GPA_BASE + 4,
        0,
        &mut mem,
    );
    hv.check().unwrap();
    assert_eq!(res(rax), (HvStatus::INVALID_ALIGNMENT, 0));
    assert_eq!(part(&hv, c).pool_available(), 0);
}

#[test]
fn case_08_deposit_list_must_fit_one_page() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 512);
    let mut mem = FlatMemory::new(GPA_BASE, 0x3000);
    mem.write(GPA_BASE, &deposit_input(c.0, &pages)).unwrap();
    let rax = hv.hypercall_gpa(
        R,
        ctl(HypercallCode::HvCallDepositMemory, 512, 0),
        GPA_BASE,
        0,
        &mut mem,
    );
    hv.check().unwrap();
    assert_eq!(res(rax).0, HvStatus::INVALID_ALIGNMENT);
    assert_eq!(part(&hv, c).pool_available(), 0);
    let rax = hv.hypercall_gpa(
        R,
        ctl(HypercallCode::HvCallDepositMemory, 511, 0),
        GPA_BASE,
        0,
        &mut mem,
    );
    hv.check().unwrap();
    assert_eq!(rax, 0x0000_01FF_0000_0000);
    assert_eq!(part(&hv, c).pool_available(), 511);
}

#[test]
fn case_09_child_without_access_memory_pool() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 1);
    let before = part(&hv, c).pool_available();
    assert_eq!(
        res(deposit(&mut hv, c, c.0, &pages)),
        (HvStatus::ACCESS_DENIED, 0)
    );
    assert_eq!(part(&hv, c).pool_available(), before);
    assert_eq!(hv.frames().state(pages[0] as u32), FrameState::Free);
}

#[test]
fn case_10_unknown_and_invalid_partition_ids() {
    let mut hv = host();
    let pages = free_pages(&hv, 0, 1);
    assert_eq!(
        res(deposit(&mut hv, R, 0x1234, &pages)).0,
        HvStatus::INVALID_PARTITION_ID
    );
    assert_eq!(
        res(deposit(&mut hv, R, 0, &pages)).0,
        HvStatus::INVALID_PARTITION_ID
    );
}

#[test]
fn case_11_deposit_three_pages() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 3);
    hv.take_effects();
    assert_eq!(deposit(&mut hv, R, c.0, &pages), 0x0000_0003_0000_0000);
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((3, 0)));
    for &p in &pages {
        // Out of R's identity map: the page left the heap and R's view of it was discarded.
        assert_eq!(hv.frames().state(p as u32), FrameState::PoolAvailable);
        let discarded = hv.effects().iter().any(|e| {
            matches!(e, Effect::Discard { partition, range } if *partition == R && range.start() <= p && p < range.end())
        });
        assert!(discarded, "no discard of root page {p}");
    }
}

#[test]
fn case_12_duplicate_page_in_one_list() {
    let mut hv = host();
    let c = child(&mut hv);
    let de = free_pages(&hv, 0, 2);
    let (d, e) = (de[0], de[1]);
    assert_eq!(deposit(&mut hv, R, c.0, &[d, e, d]), 0x0000_0002_0000_0008);
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((2, 0)));
}

#[test]
fn case_13_page_already_in_another_pool() {
    let mut hv = host();
    let c = child(&mut hv);
    let g = child(&mut hv);
    let a = free_pages(&hv, 0, 1);
    assert_eq!(res(deposit(&mut hv, R, c.0, &a)).0, HvStatus::SUCCESS);
    assert_eq!(
        res(deposit(&mut hv, R, g.0, &a)),
        (HvStatus::OPERATION_DENIED, 0)
    );
    assert_eq!(part(&hv, g).pool_available(), 0);
}

#[test]
fn case_14_page_beyond_the_root_gpa_space() {
    let mut hv = host();
    let c = child(&mut hv);
    let beyond = u64::from(2 * NODE_FRAMES);
    for page in [beyond, 1 << 40, u64::MAX] {
        assert_eq!(
            res(deposit(&mut hv, R, c.0, &[page])),
            (HvStatus::OPERATION_DENIED, 0)
        );
    }
    assert_eq!(part(&hv, c).pool_available(), 0);
}

#[test]
fn case_15_page_in_use_for_another_purpose() {
    let mut hv = host();
    let c = child(&mut hv);
    let p = free_pages(&hv, 1, 1)[0];
    assert!(hv.lock_root_page(p));
    assert_eq!(
        res(deposit(&mut hv, R, c.0, &[p])),
        (HvStatus::OBJECT_IN_USE, 0)
    );
    assert_eq!(hv.frames().state(p as u32), FrameState::Free);
}

#[test]
fn case_16_initialize_short_of_init_cost() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, init_cost(&hv) as usize - 5);
    deposit(&mut hv, R, c.0, &pages);
    let rax = id_call(&mut hv, R, HypercallCode::HvCallInitializePartition, c);
    assert_eq!(res(rax).0, HvStatus::INSUFFICIENT_MEMORY);
    assert_eq!(part(&hv, c).state(), PartitionState::Uninitialized);
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((init_cost(&hv) - 5, 0)));
}

#[test]
fn case_17_initialize_after_topping_up_memory_and_fast_forms() {
    for fast in [false, true] {
        let mut hv = host();
        let c = child(&mut hv);
        let short = free_pages(&hv, 0, init_cost(&hv) as usize - 5);
        deposit(&mut hv, R, c.0, &short);
        let rax = id_call(&mut hv, R, HypercallCode::HvCallInitializePartition, c);
        assert_eq!(res(rax).0, HvStatus::INSUFFICIENT_MEMORY);
        let extra = free_pages(&hv, 0, 5 + 3);
        deposit(&mut hv, R, c.0, &extra);
        let rax = if fast {
            let control = ctl(HypercallCode::HvCallInitializePartition, 0, 0) | 1 << 16;
            assert_eq!(control, 0x1_0041);
            call(&mut hv, R, control, &c.0.to_le_bytes()).0
        } else {
            id_call(&mut hv, R, HypercallCode::HvCallInitializePartition, c)
        };
        assert_eq!(rax, 0);
        assert_eq!(part(&hv, c).state(), PartitionState::Active);
        assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((3, init_cost(&hv))));
    }
}

#[test]
fn case_18_initialize_twice() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let rax = id_call(&mut hv, R, HypercallCode::HvCallInitializePartition, c);
    assert_eq!(res(rax).0, HvStatus::INVALID_PARTITION_STATE);
}

#[test]
fn case_19_create_vp_while_uninitialized() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    assert_eq!(
        res(create_vp(&mut hv, R, c, 0, ANY, 0)).0,
        HvStatus::INVALID_PARTITION_STATE
    );
    assert!(part(&hv, c).vps().is_empty());
}

#[test]
fn case_20_create_vp_refilled_one_page_at_a_time() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize - 2);
    deposit(&mut hv, R, c.0, &pages);
    let mut statuses = vec![];
    loop {
        let s = res(create_vp(&mut hv, R, c, 0, ANY, 0)).0;
        statuses.push(s);
        if s != HvStatus::INSUFFICIENT_MEMORY {
            break;
        }
        let one = free_pages(&hv, 0, 1);
        assert_eq!(res(deposit(&mut hv, R, c.0, &one)).0, HvStatus::SUCCESS);
    }
    assert_eq!(
        statuses,
        [
            HvStatus::INSUFFICIENT_MEMORY,
            HvStatus::INSUFFICIENT_MEMORY,
            HvStatus::SUCCESS
        ]
    );
    let vp = &part(&hv, c).vps()[&0];
    assert!(vp.explicit_suspend);
    assert_eq!(vp.run_state, ballast_core::VpRunState::Ready);
    assert_eq!(vp.initial_apic_id, 0);
    assert_eq!(
        balance(&mut hv, R, c.0, ANY),
        Ok((0, init_cost(&hv) + vp_cost(&hv)))
    );
}

#[test]
fn case_21_create_vp_twice() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, 2 * vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    assert_eq!(create_vp(&mut hv, R, c, 0, ANY, 0), 0);
    let before = balance(&mut hv, R, c.0, ANY);
    assert_eq!(
        res(create_vp(&mut hv, R, c, 0, ANY, 0)).0,
        HvStatus::INVALID_VP_INDEX
    );
    assert_eq!(balance(&mut hv, R, c.0, ANY), before);
}

#[test]
fn case_22_vp_index_beyond_the_maximum() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    let max = hv.config().limits.max_vp_index;
    assert_eq!(
        res(create_vp(&mut hv, R, c, max + 1, ANY, 0)).0,
        HvStatus::INVALID_VP_INDEX
    );
    assert_eq!(create_vp(&mut hv, R, c, max, ANY, 0), 0);
    assert_eq!(
        part(&hv, c).vps()[&max].run_state,
        ballast_core::VpRunState::WaitingForSipi
    );
}

#[test]
fn case_23_create_vp_with_flags() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    assert_eq!(
        res(create_vp(&mut hv, R, c, 1, ANY, 1)).0,
        HvStatus::INVALID_PARAMETER
    );
    assert!(part(&hv, c).vps().is_empty());
}

#[test]
fn case_24_create_vp_with_a_reserved_pdi_bit() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    let pdi = HvProximityDomainInfo::from_u64(1 << (32 + 5));
    assert_eq!(
        res(create_vp(&mut hv, R, c, 1, pdi, 0)).0,
        HvStatus::INVALID_PARAMETER
    );
}

#[test]
fn case_25_strict_node_without_pages_then_preferred_falls_back() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    let strict = HvProximityDomainInfo::node(1, false);
    let preferred = HvProximityDomainInfo::node(1, true);
    assert_eq!(
        res(create_vp(&mut hv, R, c, 1, strict, 0)).0,
        HvStatus::INSUFFICIENT_MEMORY
    );
    assert_eq!(create_vp(&mut hv, R, c, 1, preferred, 0), 0);
    assert_eq!(
        part(&hv, c).pools()[0].in_use,
        init_cost(&hv) + vp_cost(&hv)
    );
}

#[test]
fn case_26_withdraw_runs_dry() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let vp = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &vp);
    assert_eq!(create_vp(&mut hv, R, c, 0, ANY, 0), 0);
    let four = free_pages(&hv, 1, 4);
    deposit(&mut hv, R, c.0, &four);
    let (rax, got) = withdraw(&mut hv, R, c.0, 0, 10);
    assert_eq!(rax, 0x0000_0004_0000_001D);
    let mut got = got;
    got.sort_unstable();
    assert_eq!(got, four);
    for p in four {
        // Back in R's identity map; it reads zero, its deposit having discarded it.
        assert_eq!(hv.frames().state(p as u32), FrameState::Free);
    }
    assert_eq!(balance(&mut hv, R, c.0, ANY).unwrap().0, 0);
}

#[test]
fn case_27_withdraw_with_a_reserved_pdi_bit() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, 2);
    deposit(&mut hv, R, c.0, &pages);
    let (rax, _) = withdraw(&mut hv, R, c.0, 0x8000_0002_0000_0000, 4);
    assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 0));
    assert_eq!(balance(&mut hv, R, c.0, ANY).unwrap().0, 2);
}

#[test]
fn case_28_balance_per_node_and_total() {
    let mut hv = host();
    let c = child(&mut hv);
    let n0 = free_pages(&hv, 0, 2);
    let n1 = free_pages(&hv, 1, 3);
    deposit(&mut hv, R, c.0, &n0);
    deposit(&mut hv, R, c.0, &n1);
    assert_eq!(
        balance(&mut hv, R, c.0, HvProximityDomainInfo::node(1, false)),
        Ok((3, 0))
    );
    assert_eq!(
        balance(&mut hv, R, c.0, HvProximityDomainInfo::node(0, false)),
        Ok((2, 0))
    );
    assert_eq!(
        balance(&mut hv, R, c.0, HvProximityDomainInfo::node(1, true)),
        Ok((3, 0))
    );
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((5, 0)));
}

#[test]
fn case_29_delete_an_active_partition() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let rax = id_call(&mut hv, R, HypercallCode::HvCallDeletePartition, c);
    assert_eq!(res(rax).0, HvStatus::INVALID_PARTITION_STATE);
    assert!(hv.partition(c).is_some());
}

#[test]
fn case_30_finalize_releases_everything_to_the_pool() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let vps = free_pages(&hv, 1, 2 * vp_cost(&hv) as usize + 7);
    deposit(&mut hv, R, c.0, &vps);
    assert_eq!(create_vp(&mut hv, R, c, 0, ANY, 0), 0);
    assert_eq!(create_vp(&mut hv, R, c, 1, ANY, 0), 0);
    hv.set_max_pages(c, u32::MAX).unwrap();
    hv.populate(c, 0x1000, 64).unwrap();
    hv.check().unwrap();
    let deposited = init_cost(&hv) + vps.len() as u64;
    let rax = id_call(&mut hv, R, HypercallCode::HvCallFinalizePartition, c);
    assert_eq!(rax, 0);
    let p = part(&hv, c);
    assert_eq!(p.state(), PartitionState::Finalized);
    assert!(p.vps().is_empty());
    assert_eq!(p.p2m().mapped(), 0);
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((deposited, 0)));
    let more = free_pages(&hv, 0, 1);
    assert_eq!(
        res(deposit(&mut hv, R, c.0, &more)).0,
        HvStatus::INVALID_PARTITION_STATE
    );
    assert_eq!(
        res(create_vp(&mut hv, R, c, 2, ANY, 0)).0,
        HvStatus::INVALID_PARTITION_STATE
    );
    let (rax, got) = withdraw(&mut hv, R, c.0, 0, 3);
    assert_eq!((rax, got.len()), (0x0000_0003_0000_0000, 3));
}

#[test]
fn case_31_delete_needs_an_empty_pool() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let extra = free_pages(&hv, 1, 600);
    deposit(&mut hv, R, c.0, &extra[..511]);
    deposit(&mut hv, R, c.0, &extra[511..]);
    assert_eq!(
        id_call(&mut hv, R, HypercallCode::HvCallFinalizePartition, c),
        0
    );
    let rax = id_call(&mut hv, R, HypercallCode::HvCallDeletePartition, c);
    assert_eq!(res(rax).0, HvStatus::OPERATION_DENIED);
    let total = init_cost(&hv) + 600;
    let mut drained = 0;
    loop {
        let (rax, got) = withdraw(&mut hv, R, c.0, 0, 512);
        drained += got.len() as u64;
        match res(rax).0 {
            HvStatus::SUCCESS => assert_eq!(got.len(), 512),
            HvStatus::NO_RESOURCES => break,
            s => panic!("withdraw failed with {s:?}"),
        }
    }
    assert_eq!(drained, total);
    assert_eq!(
        id_call(&mut hv, R, HypercallCode::HvCallDeletePartition, c),
        0
    );
    assert_eq!(
        balance(&mut hv, R, c.0, ANY),
        Err(HvStatus::INVALID_PARTITION_ID)
    );
    assert_eq!(
        hv.frames().total_free() + part(&hv, R).pool_available(),
        u64::from(2 * NODE_FRAMES)
    );
}

#[test]
fn case_32_uninitialized_partitions_are_deleted_without_finalize() {
    let mut hv = host();
    let c = child(&mut hv);
    let rax = id_call(&mut hv, R, HypercallCode::HvCallFinalizePartition, c);
    assert_eq!(res(rax).0, HvStatus::INVALID_PARTITION_STATE);
    assert_eq!(
        id_call(&mut hv, R, HypercallCode::HvCallDeletePartition, c),
        0
    );
    assert!(hv.partition(c).is_none());
}

#[test]
fn case_33_create_partition_charges_and_refunds_the_root_pool() {
    let mut hv = host();
    let cost = create_cost(&hv);
    let short = free_pages(&hv, 0, cost as usize - 1);
    deposit(&mut hv, R, HV_PARTITION_ID_SELF, &short);
    let (rax, _) = create_partition(&mut hv, R, 0);
    assert_eq!(res(rax).0, HvStatus::INSUFFICIENT_MEMORY);
    assert_eq!(hv.partitions().count(), 1);
    let k = free_pages(&hv, 0, 3);
    deposit(&mut hv, R, HV_PARTITION_ID_SELF, &k);
    let (rax, c) = create_partition(&mut hv, R, 0);
    assert_eq!(rax, 0);
    assert!(c.0 != 0 && c.0 != HV_PARTITION_ID_SELF && c != R);
    assert_eq!(part(&hv, c).parent(), Some(R));
    assert_eq!(
        balance(&mut hv, R, HV_PARTITION_ID_SELF, ANY),
        Ok((2, cost))
    );
    assert_eq!(
        id_call(&mut hv, R, HypercallCode::HvCallDeletePartition, c),
        0
    );
    assert_eq!(
        balance(&mut hv, R, HV_PARTITION_ID_SELF, ANY),
        Ok((2 + cost, 0))
    );
    // The id is never handed out again.
    let (rax, c2) = create_partition(&mut hv, R, 0);
    assert_eq!(rax, 0);
    assert!(c2.0 > c.0);
}

#[test]
fn case_34_child_without_create_partitions() {
    let mut hv = host();
    let c = child(&mut hv);
    let (rax, _) = create_partition(&mut hv, c, 0);
    assert_eq!(res(rax).0, HvStatus::ACCESS_DENIED);
    assert_eq!(hv.partitions().count(), 2);
}

#[test]
fn case_35_undefined_creation_flag() {
    let mut hv = host();
    let pages = free_pages(&hv, 0, 16);
    deposit(&mut hv, R, HV_PARTITION_ID_SELF, &pages);
    let (rax, _) = create_partition(&mut hv, R, 1 << 63);
    assert_eq!(res(rax).0, HvStatus::INVALID_PARAMETER);
    assert_eq!(hv.partitions().count(), 1);
}

#[test]
fn case_36_depth_limit() {
    let mut hv = host();
    assert_eq!(hv.config().limits.max_depth, 2);
    let c = child(&mut hv);
    grant(&mut hv, c, POOL_AND_CREATE);
    let pages = free_pages(&hv, 0, 16);
    deposit(&mut hv, R, c.0, &pages);
    let (rax, _) = create_partition(&mut hv, c, 0);
    assert_eq!(res(rax).0, HvStatus::PARTITION_TOO_DEEP);
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((16, 0)));
}

#[test]
fn case_37_root_self_deposits_but_a_child_cannot_deposit_into_itself() {
    let mut hv = host();
    let ab = free_pages(&hv, 0, 2);
    assert_eq!(
        deposit(&mut hv, R, HV_PARTITION_ID_SELF, &ab[..1]),
        0x0000_0001_0000_0000
    );
    assert_eq!(deposit(&mut hv, R, R.0, &ab[1..]), 0x0000_0001_0000_0000);
    assert_eq!(balance(&mut hv, R, R.0, ANY), Ok((2, 0)));
    let c = child(&mut hv);
    grant(&mut hv, c, POOL);
    let x = free_pages(&hv, 1, 1);
    assert_eq!(
        res(deposit(&mut hv, c, c.0, &x)),
        (HvStatus::ACCESS_DENIED, 0)
    );
    assert_eq!(
        res(deposit(&mut hv, c, HV_PARTITION_ID_SELF, &x)),
        (HvStatus::ACCESS_DENIED, 0)
    );
}

#[test]
fn case_38_rep_start_resumes_and_reps_are_absolute() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 8);
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallDepositMemory, 8, 5),
        &deposit_input(c.0, &pages),
    );
    assert_eq!(res(rax), (HvStatus::SUCCESS, 8));
    for (i, &p) in pages.iter().enumerate() {
        let expected = if i >= 5 {
            FrameState::PoolAvailable
        } else {
            FrameState::Free
        };
        assert_eq!(hv.frames().state(p as u32), expected, "element {i}");
    }
    assert_eq!(balance(&mut hv, R, c.0, ANY), Ok((3, 0)));
}

#[test]
fn case_39_delete_vp_twice() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let pages = free_pages(&hv, 0, vp_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    assert_eq!(create_vp(&mut hv, R, c, 1, ANY, 0), 0);
    assert_eq!(
        balance(&mut hv, R, c.0, ANY),
        Ok((0, init_cost(&hv) + vp_cost(&hv)))
    );
    let input = HvDeleteVp {
        partition_id: c.0,
        vp_index: 1,
        padding: 0,
    };
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallDeleteVp, 0, 0),
        input.as_bytes(),
    );
    assert_eq!(rax, 0);
    assert_eq!(
        balance(&mut hv, R, c.0, ANY),
        Ok((vp_cost(&hv), init_cost(&hv)))
    );
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallDeleteVp, 0, 0),
        input.as_bytes(),
    );
    assert_eq!(res(rax).0, HvStatus::INVALID_VP_INDEX);
}

#[test]
fn case_40_unknown_property() {
    let mut hv = host();
    let c = active_child(&mut hv);
    let input = HvGetPartitionProperty {
        partition_id: c.0,
        property_code: HvPartitionPropertyCode(0x7FFF_0000),
        padding: 0,
    };
    let (rax, _) = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallGetPartitionProperty, 0, 0),
        input.as_bytes(),
    );
    assert_eq!(res(rax).0, HvStatus::UNKNOWN_PROPERTY);
}

#[test]
fn case_41_finalize_with_children() {
    let mut config = Config::with_nodes(vec![NODE_FRAMES, NODE_FRAMES]);
    config.limits.max_depth = 3;
    let mut hv = Hypervisor::new(config).unwrap();
    let c = active_child(&mut hv);
    grant(&mut hv, c, POOL_AND_CREATE);
    let pages = free_pages(&hv, 0, create_cost(&hv) as usize);
    deposit(&mut hv, R, c.0, &pages);
    let (rax, c1) = create_partition(&mut hv, c, 0);
    assert_eq!(rax, 0);
    assert_eq!(part(&hv, c1).parent(), Some(c));
    let rax = id_call(&mut hv, R, HypercallCode::HvCallFinalizePartition, c);
    assert_eq!(res(rax).0, HvStatus::OPERATION_DENIED);
    assert_eq!(part(&hv, c).state(), PartitionState::Active);
    // Once C deletes its child, R can finalize C.
    assert_eq!(
        id_call(&mut hv, c, HypercallCode::HvCallDeletePartition, c1),
        0
    );
    assert_eq!(
        id_call(&mut hv, R, HypercallCode::HvCallFinalizePartition, c),
        0
    );
}

#[test]
fn case_42_a_child_cannot_reach_its_sibling() {
    let mut hv = host();
    let c = child(&mut hv);
    let g = child(&mut hv);
    grant(&mut hv, c, POOL);
    let x = free_pages(&hv, 0, 2);
    deposit(&mut hv, R, g.0, &x[..1]);
    assert_eq!(
        res(deposit(&mut hv, c, g.0, &x[1..])),
        (HvStatus::ACCESS_DENIED, 0)
    );
    assert_eq!(
        res(withdraw(&mut hv, c, g.0, 0, 1).0),
        (HvStatus::ACCESS_DENIED, 0)
    );
    assert_eq!(balance(&mut hv, c, g.0, ANY), Err(HvStatus::ACCESS_DENIED));
    assert_eq!(balance(&mut hv, R, g.0, ANY), Ok((1, 0)));
}

/// The whole sequence of a conforming root (create, deposit on INSUFFICIENT_MEMORY and
/// retry, initialize, create VPs, finalize, withdraw, delete) through the root-side
/// helpers, as Linux's root drives it (`drivers/hv/mshv_root_main.c`,
/// `arch/x86/hyperv/hv_proc.c`).
#[test]
fn linux_root_lifecycle_through_the_helpers() {
    use ballast_abi::hv::{CreatePartitionInput, CreateVpInput};
    let mut hv = host();
    let create = CreatePartitionInput::Tlfs2(HvCreatePartition::default());
    let c = hv
        .call_with_deposits(SELF, NodeSel::Any, 1, 64, |hv| {
            hv.create_partition(R, &create)
        })
        .unwrap();
    hv.root_deposit(c, NodeSel::Any, 208).unwrap();
    hv.call_with_deposits(c, NodeSel::Any, 1, 64, |hv| hv.initialize_partition(R, c))
        .unwrap();
    for vp in 0..4 {
        let input = CreateVpInput::Tlfs2(HvCreateVp {
            partition_id: c.0,
            vp_index: vp,
            proximity_domain_info: HvProximityDomainInfo::node(1, true),
            ..Default::default()
        });
        hv.call_with_deposits(c, NodeSel::Preferred(1), 1, 1024, |hv| {
            hv.create_vp(R, &input)
        })
        .unwrap();
    }
    hv.check().unwrap();
    hv.finalize_partition(R, c).unwrap();
    let back = hv.withdraw_all(R, c).unwrap();
    // Everything deposited comes back: the pre-deposit plus the one-page refills.
    let used = init_cost(&hv) + 4 * vp_cost(&hv);
    assert_eq!(back.len() as u64, used.max(208));
    hv.delete_partition(R, c).unwrap();
    let root = hv.withdraw_all(R, SELF).unwrap();
    assert_eq!(root.len() as u64, create_cost(&hv));
    hv.check().unwrap();
    assert_eq!(hv.frames().total_free(), u64::from(2 * NODE_FRAMES));
}

/// G5: a parameter GPA beyond the caller's GPA space is INVALID_ALIGNMENT (the TLFS's
/// common status codes), while a GPA inside it that cannot be read stays
/// INVALID_HYPERCALL_INPUT. Input first, then output; nothing happens in either case.
#[test]
fn g5_parameter_gpa_outside_the_gpa_space() {
    let mut hv = host();
    let c = child(&mut hv);
    let pages = free_pages(&hv, 0, 1);
    let space_end = GPA_BASE + 0x2000;
    let mut mem = FlatMemory::new(GPA_BASE, 0x2000).with_gpa_space_end(space_end);
    mem.write(GPA_BASE, &deposit_input(c.0, &pages)).unwrap();
    let deposit_ctl = ctl(HypercallCode::HvCallDepositMemory, 1, 0);
    // Input beyond the space.
    let rax = hv.hypercall_gpa(R, deposit_ctl, space_end, 0, &mut mem);
    hv.check().unwrap();
    assert_eq!(res(rax), (HvStatus::INVALID_ALIGNMENT, 0));
    let rax = hv.hypercall_gpa(R, deposit_ctl, u64::MAX - 0xFFF, 0, &mut mem);
    assert_eq!(res(rax), (HvStatus::INVALID_ALIGNMENT, 0));
    // Inside the space but not backed: a failed read.
    let rax = hv.hypercall_gpa(R, deposit_ctl, GPA_BASE - 0x1000, 0, &mut mem);
    assert_eq!(res(rax), (HvStatus::INVALID_HYPERCALL_INPUT, 0));
    assert_eq!(part(&hv, c).pool_available(), 0);
    // Output beyond the space (withdraw's list), even when the input is unreadable too:
    // the GPA checks of G5 come before the read.
    assert_eq!(res(deposit(&mut hv, R, c.0, &pages)).0, HvStatus::SUCCESS);
    let input = HvWithdrawMemory {
        partition_id: c.0,
        proximity_domain_info: ANY,
    };
    mem.write(GPA_BASE, input.as_bytes()).unwrap();
    let withdraw_ctl = ctl(HypercallCode::HvCallWithdrawMemory, 1, 0);
    let rax = hv.hypercall_gpa(R, withdraw_ctl, GPA_BASE, space_end + 0x1000, &mut mem);
    assert_eq!(res(rax), (HvStatus::INVALID_ALIGNMENT, 0));
    let rax = hv.hypercall_gpa(R, withdraw_ctl, GPA_BASE - 0x1000, space_end, &mut mem);
    assert_eq!(res(rax), (HvStatus::INVALID_ALIGNMENT, 0));
    let rax = hv.hypercall_gpa(R, withdraw_ctl, GPA_BASE, GPA_BASE - 0x1000, &mut mem);
    assert_eq!(res(rax), (HvStatus::INVALID_HYPERCALL_INPUT, 0));
    hv.check().unwrap();
    assert_eq!(part(&hv, c).pool_available(), 1);
    let rax = hv.hypercall_gpa(R, withdraw_ctl, GPA_BASE, GPA_BASE + 0x1000, &mut mem);
    assert_eq!(res(rax), (HvStatus::SUCCESS, 1));
    assert_eq!(mem.read_u64(GPA_BASE + 0x1000).unwrap(), pages[0]);
}

/// A rep call as Linux issues it (`hv_do_rep_hypercall` in include/asm-generic/mshyperv.h):
/// re-issue with rep start = reps completed while the status is SUCCESS and reps completed
/// is below the rep count. Returns the last result value, the output page and the number
/// of calls made.
fn rep_loop(
    hv: &mut Hypervisor,
    caller: PartitionId,
    code: HypercallCode,
    count: u16,
    input: &[u8],
) -> (u64, Vec<u8>, u32) {
    let mut out = vec![0u8; 4096];
    let mut start = 0;
    let mut calls = 0;
    loop {
        let rax = hv.hypercall(caller, ctl(code, count, start), input, &mut out);
        hv.check().unwrap();
        calls += 1;
        let (status, done) = res(rax);
        assert!(calls <= u32::from(count), "no progress");
        if status != HvStatus::SUCCESS || done >= count {
            return (rax, out, calls);
        }
        assert!(done > start, "a sliced call completes at least one element");
        start = done;
    }
}

/// Everything the pool calls change, to compare two runs.
fn pool_state(hv: &Hypervisor, ids: &[PartitionId]) -> Vec<u64> {
    let mut v: Vec<u64> = (0..hv.frames().len())
        .map(|m| hv.frames().state(m) as u64)
        .collect();
    for &id in ids {
        let p = part(hv, id);
        v.extend([p.pool_available(), p.pool_in_use(), p.tot_pages()]);
    }
    v
}

#[test]
fn time_sliced_rep_calls_end_where_unsliced_ones_do() {
    let run = |budget: Option<u16>| {
        let mut config = Config::with_nodes(vec![NODE_FRAMES, NODE_FRAMES]);
        config.rep_budget = budget.and_then(core::num::NonZeroU16::new);
        let mut hv = Hypervisor::new(config).unwrap();
        // The child through the typed calls, which a budget does not slice.
        let fee = free_pages(&hv, 0, create_cost(&hv) as usize);
        hv.deposit_memory(R, SELF, &fee).unwrap();
        let create = ballast_abi::hv::CreatePartitionInput::Tlfs2(HvCreatePartition::default());
        let c = hv.create_partition(R, &create).unwrap();
        let pages = free_pages(&hv, 0, 40);
        // Deposit 40 pages, the 26th a duplicate: the loop stops at the error, reps
        // completed absolute.
        let mut list = pages.clone();
        list[25] = list[3];
        let (rax, _, deposit_calls) = rep_loop(
            &mut hv,
            R,
            HypercallCode::HvCallDepositMemory,
            40,
            &deposit_input(c.0, &list),
        );
        assert_eq!(res(rax), (HvStatus::OPERATION_DENIED, 25));
        let (rax, _, more) = rep_loop(
            &mut hv,
            R,
            HypercallCode::HvCallDepositMemory,
            14,
            &deposit_input(c.0, &pages[26..]),
        );
        assert_eq!(res(rax), (HvStatus::SUCCESS, 14));
        let after_deposit = pool_state(&hv, &[R, c]);
        // Withdraw 30 of the 39, then ask for 20 more: runs dry after 9.
        let input = HvWithdrawMemory {
            partition_id: c.0,
            proximity_domain_info: ANY,
        };
        let mut withdrawn = Vec::new();
        let mut withdraw_calls = 0;
        for (n, want) in [
            (30u16, (HvStatus::SUCCESS, 30)),
            (20, (HvStatus::NO_RESOURCES, 9)),
        ] {
            let (rax, out, calls) = rep_loop(
                &mut hv,
                R,
                HypercallCode::HvCallWithdrawMemory,
                n,
                input.as_bytes(),
            );
            assert_eq!(res(rax), want);
            withdraw_calls += calls;
            withdrawn.extend(
                out[..usize::from(res(rax).1) * 8]
                    .chunks(8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
            );
        }
        let end = pool_state(&hv, &[R, c]);
        (
            after_deposit,
            withdrawn,
            end,
            deposit_calls + more,
            withdraw_calls,
        )
    };
    let whole = run(None);
    assert_eq!((whole.3, whole.4), (2, 2), "unsliced: one call each");
    for budget in [1, 3, 7, 4095] {
        let sliced = run(Some(budget));
        assert_eq!(sliced.0, whole.0, "budget {budget}: state after deposit");
        assert_eq!(sliced.1, whole.1, "budget {budget}: withdrawn pages");
        assert_eq!(sliced.2, whole.2, "budget {budget}: end state");
        if budget == 3 {
            // 40 = 25 + 1 failing: ceil(26 / 3) = 9 calls; 14: 5 calls.
            assert_eq!(sliced.3, 9 + 5);
            // 30: 10 calls; 20 running dry after 9: 4 calls (three of 3, then dry at 9).
            assert_eq!(sliced.4, 10 + 4);
        }
    }
}

// ---------------------------------------------------------------------------------------
// HvGetVpRegisters / HvSetVpRegisters: the VP reset state of HvCreateVp
// ---------------------------------------------------------------------------------------

use ballast_abi::hv::{HvGetSetVpRegisters, HvInputVtl, HvRegisterAssoc, HvRegisterName};

const SUSPEND: HvRegisterName = HvRegisterName::HvRegisterExplicitSuspend;
const APIC_ID: HvRegisterName = HvRegisterName::HvX64RegisterInitialApicId;
const ACTIVITY: HvRegisterName = HvRegisterName::HvRegisterInternalActivityState;

fn vp_header(target: u64, vp: u32) -> HvGetSetVpRegisters {
    HvGetSetVpRegisters {
        partition_id: target,
        vp_index: vp,
        ..Default::default()
    }
}

fn get_regs_input(header: HvGetSetVpRegisters, names: &[HvRegisterName]) -> Vec<u8> {
    let mut v = header.as_bytes().to_vec();
    for n in names {
        v.extend_from_slice(n.as_bytes());
    }
    v
}

fn set_regs_input(header: HvGetSetVpRegisters, regs: &[(HvRegisterName, u64)]) -> Vec<u8> {
    let mut v = header.as_bytes().to_vec();
    for &(name, value) in regs {
        let e = HvRegisterAssoc {
            name,
            value: ballast_abi::hv::HvRegisterValue::from_u64(value),
            ..Default::default()
        };
        v.extend_from_slice(e.as_bytes());
    }
    v
}

/// (result value, the low 64 bits of each value read).
fn get_regs(
    hv: &mut Hypervisor,
    caller: PartitionId,
    header: HvGetSetVpRegisters,
    names: &[HvRegisterName],
) -> (u64, Vec<u64>) {
    let n = names.len() as u16;
    let (rax, out) = call(
        hv,
        caller,
        ctl(HypercallCode::HvCallGetVpRegisters, n, 0),
        &get_regs_input(header, names),
    );
    let done = usize::from(res(rax).1);
    let values = out[..done * 16]
        .chunks(16)
        .map(|b| {
            assert_eq!(&b[8..], &[0; 8], "upper half of a 64-bit register");
            u64::from_le_bytes(b[..8].try_into().unwrap())
        })
        .collect();
    (rax, values)
}

fn set_regs(
    hv: &mut Hypervisor,
    caller: PartitionId,
    header: HvGetSetVpRegisters,
    regs: &[(HvRegisterName, u64)],
) -> u64 {
    let n = regs.len() as u16;
    call(
        hv,
        caller,
        ctl(HypercallCode::HvCallSetVpRegisters, n, 0),
        &set_regs_input(header, regs),
    )
    .0
}

/// C, Active, with VPs 0 and 1.
fn child_with_vps(hv: &mut Hypervisor) -> PartitionId {
    let c = active_child(hv);
    let pages = free_pages(hv, 0, 2 * vp_cost(hv) as usize);
    assert_eq!(res(deposit(hv, R, c.0, &pages)).0, HvStatus::SUCCESS);
    for vp in 0..2 {
        assert_eq!(res(create_vp(hv, R, c, vp, ANY, 0)).0, HvStatus::SUCCESS);
    }
    c
}

/// The HvCreateVp remarks: a new VP is explicitly suspended, its initial APIC ID is its
/// index, VP 0 is ready and the others wait for a SIPI; the parent reads that state and
/// clears the suspend to let the VP run.
#[test]
fn vp_registers_root_reads_the_reset_state_and_clears_the_suspend() {
    let mut hv = host();
    let c = child_with_vps(&mut hv);
    let names = [SUSPEND, APIC_ID, ACTIVITY];
    let (rax, v) = get_regs(&mut hv, R, vp_header(c.0, 0), &names);
    assert_eq!(res(rax), (HvStatus::SUCCESS, 3));
    assert_eq!(v, [1, 0, 0], "VP 0: suspended, APIC ID 0, ready");
    let (rax, v) = get_regs(&mut hv, R, vp_header(c.0, 1), &names);
    assert_eq!(res(rax), (HvStatus::SUCCESS, 3));
    assert_eq!(v, [1, 1, 1], "VP 1: suspended, APIC ID 1, waiting for SIPI");

    // Clear the suspend of VP 0; give VP 1 another APIC ID.
    let rax = set_regs(&mut hv, R, vp_header(c.0, 0), &[(SUSPEND, 0)]);
    assert_eq!(res(rax), (HvStatus::SUCCESS, 1));
    let rax = set_regs(&mut hv, R, vp_header(c.0, 1), &[(APIC_ID, 7)]);
    assert_eq!(res(rax), (HvStatus::SUCCESS, 1));
    assert_eq!(get_regs(&mut hv, R, vp_header(c.0, 0), &names).1, [0, 0, 0]);
    assert_eq!(get_regs(&mut hv, R, vp_header(c.0, 1), &names).1, [1, 7, 1]);
    let vp0 = &part(&hv, c).vps()[&0];
    assert!(!vp0.explicit_suspend);
    assert_eq!(part(&hv, c).vps()[&1].initial_apic_id, 7);
}

#[test]
fn vp_registers_checks() {
    let mut hv = host();
    let c = child_with_vps(&mut hv);
    let g = child(&mut hv);
    let rax_raw = HvRegisterName(0x0002_0000); // HvX64RegisterRax: not served
    // An unknown register name: INVALID_PARAMETER at its element; the ones before stand.
    let (rax, v) = get_regs(&mut hv, R, vp_header(c.0, 1), &[APIC_ID, rax_raw, SUSPEND]);
    assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 1));
    assert_eq!(v, [1]);
    let rax = set_regs(&mut hv, R, vp_header(c.0, 0), &[(SUSPEND, 0), (rax_raw, 5)]);
    assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 1));
    assert!(
        !part(&hv, c).vps()[&0].explicit_suspend,
        "element 0 was applied"
    );
    // No such VP, and indices that are never VPs.
    for vp in [
        2,
        5000,
        ballast_abi::hv::HV_VP_INDEX_SELF,
        ballast_abi::hv::HV_ANY_VP,
    ] {
        let (rax, _) = get_regs(&mut hv, R, vp_header(c.0, vp), &[SUSPEND]);
        assert_eq!(res(rax), (HvStatus::INVALID_VP_INDEX, 0), "vp {vp}");
        let rax = set_regs(&mut hv, R, vp_header(c.0, vp), &[(SUSPEND, 0)]);
        assert_eq!(res(rax), (HvStatus::INVALID_VP_INDEX, 0), "vp {vp}");
    }
    // Unknown partition; a partition that is not Active.
    let (rax, _) = get_regs(&mut hv, R, vp_header(0x1234, 0), &[SUSPEND]);
    assert_eq!(res(rax), (HvStatus::INVALID_PARTITION_ID, 0));
    let (rax, _) = get_regs(&mut hv, R, vp_header(g.0, 0), &[SUSPEND]);
    assert_eq!(res(rax), (HvStatus::INVALID_PARTITION_STATE, 0));
    // Header: RsvdZ bytes, another VTL.
    let mut h = vp_header(c.0, 0);
    h.rsvd = [0, 1, 0];
    assert_eq!(
        res(get_regs(&mut hv, R, h, &[SUSPEND]).0),
        (HvStatus::INVALID_PARAMETER, 0)
    );
    let mut h = vp_header(c.0, 0);
    h.input_vtl = HvInputVtl::new()
        .with_use_target_vtl(true)
        .with_target_vtl(1);
    assert_eq!(
        res(set_regs(&mut hv, R, h, &[(SUSPEND, 1)])),
        (HvStatus::INVALID_PARAMETER, 0)
    );
    // VTL 0 named explicitly is this VTL.
    h.input_vtl = HvInputVtl::new().with_use_target_vtl(true);
    assert_eq!(
        res(get_regs(&mut hv, R, h, &[SUSPEND]).0),
        (HvStatus::SUCCESS, 1)
    );
    // Values: reserved bits, bits beyond the register, a reserved element word.
    for (name, value) in [
        (SUSPEND, 2),
        (APIC_ID, 1 << 32),
        (ACTIVITY, 2),
        (ACTIVITY, 1 << 9),
    ] {
        let rax = set_regs(&mut hv, R, vp_header(c.0, 1), &[(name, value)]);
        assert_eq!(
            res(rax),
            (HvStatus::INVALID_PARAMETER, 0),
            "{name:?} = {value:#x}"
        );
    }
    let mut input = set_regs_input(vp_header(c.0, 1), &[(SUSPEND, 0)]);
    input[16 + 31] = 1; // upper half of the value
    let rax = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallSetVpRegisters, 1, 0),
        &input,
    )
    .0;
    assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 0));
    let mut input = set_regs_input(vp_header(c.0, 1), &[(SUSPEND, 0)]);
    input[16 + 4] = 1; // RsvdZ after the name
    let rax = call(
        &mut hv,
        R,
        ctl(HypercallCode::HvCallSetVpRegisters, 1, 0),
        &input,
    )
    .0;
    assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 0));
    assert!(part(&hv, c).vps()[&1].explicit_suspend);
    hv.check().unwrap();
}

#[test]
fn vp_registers_parent_or_self_with_access_vp_registers() {
    let mut hv = host();
    let c = child_with_vps(&mut hv);
    let g = child(&mut hv);
    // C without privileges: ACCESS_DENIED for its own VPs and its sibling's.
    for target in [c.0, HV_PARTITION_ID_SELF, g.0, 0x1234] {
        let (rax, _) = get_regs(&mut hv, c, vp_header(target, 0), &[SUSPEND]);
        assert_eq!(res(rax), (HvStatus::ACCESS_DENIED, 0), "target {target:#x}");
    }
    // A sibling with CreatePartitions is still not the parent.
    grant(
        &mut hv,
        g,
        HvPartitionPrivilegeMask::new().with_create_partitions(true),
    );
    let (rax, _) = get_regs(&mut hv, g, vp_header(c.0, 0), &[SUSPEND]);
    assert_eq!(res(rax), (HvStatus::ACCESS_DENIED, 0));
    // SELF with AccessVpRegisters reads and clears its own suspend, but may not change
    // its initial APIC ID.
    grant(
        &mut hv,
        c,
        HvPartitionPrivilegeMask::new().with_access_vp_registers(true),
    );
    let (rax, v) = get_regs(&mut hv, c, vp_header(HV_PARTITION_ID_SELF, 1), &[APIC_ID]);
    assert_eq!((res(rax), v), ((HvStatus::SUCCESS, 1), vec![1]));
    let rax = set_regs(&mut hv, c, vp_header(c.0, 1), &[(SUSPEND, 0), (APIC_ID, 9)]);
    assert_eq!(res(rax), (HvStatus::ACCESS_DENIED, 1));
    assert!(!part(&hv, c).vps()[&1].explicit_suspend);
    assert_eq!(part(&hv, c).vps()[&1].initial_apic_id, 1);
    // Still not its sibling's.
    let (rax, _) = get_regs(&mut hv, c, vp_header(g.0, 0), &[SUSPEND]);
    assert_eq!(res(rax), (HvStatus::ACCESS_DENIED, 0));
}

/// The register calls time-sliced, re-issued as Linux's loop does, end where one call
/// does.
#[test]
fn time_sliced_vp_register_calls_end_where_unsliced_ones_do() {
    let run = |budget: Option<u16>| {
        let mut config = Config::with_nodes(vec![NODE_FRAMES, NODE_FRAMES]);
        config.rep_budget = budget.and_then(core::num::NonZeroU16::new);
        let mut hv = Hypervisor::new(config).unwrap();
        let create = ballast_abi::hv::CreatePartitionInput::Tlfs2(HvCreatePartition::default());
        let c = hv
            .call_with_deposits(SELF, NodeSel::Any, 1, 64, |hv| {
                hv.create_partition(R, &create)
            })
            .unwrap();
        hv.call_with_deposits(c, NodeSel::Any, 1, 1024, |hv| hv.initialize_partition(R, c))
            .unwrap();
        let vp = ballast_abi::hv::CreateVpInput::Tlfs2(HvCreateVp {
            partition_id: c.0,
            vp_index: 3,
            ..Default::default()
        });
        hv.call_with_deposits(c, NodeSel::Any, 1, 1024, |hv| hv.create_vp(R, &vp))
            .unwrap();
        // Set: suspend on/off/on..., ending cleared, then a new APIC ID, then an invalid
        // name at element 9.
        let mut regs: Vec<(HvRegisterName, u64)> = (0..8).map(|i| (SUSPEND, (i + 1) % 2)).collect();
        regs.push((APIC_ID, 42));
        regs.push((HvRegisterName(0x0002_0000), 0));
        regs.push((SUSPEND, 1));
        let (rax, _, set_calls) = rep_loop(
            &mut hv,
            R,
            HypercallCode::HvCallSetVpRegisters,
            regs.len() as u16,
            &set_regs_input(vp_header(c.0, 3), &regs),
        );
        assert_eq!(res(rax), (HvStatus::INVALID_PARAMETER, 9));
        let names = [
            SUSPEND, APIC_ID, ACTIVITY, SUSPEND, APIC_ID, ACTIVITY, APIC_ID,
        ];
        let (rax, out, get_calls) = rep_loop(
            &mut hv,
            R,
            HypercallCode::HvCallGetVpRegisters,
            names.len() as u16,
            &get_regs_input(vp_header(c.0, 3), &names),
        );
        assert_eq!(res(rax), (HvStatus::SUCCESS, 7));
        let vp = part(&hv, c).vps()[&3].clone();
        (out[..7 * 16].to_vec(), vp, set_calls, get_calls)
    };
    let whole = run(None);
    assert_eq!((whole.2, whole.3), (1, 1));
    let v = |i: usize| u64::from_le_bytes(whole.0[i * 16..i * 16 + 8].try_into().unwrap());
    assert_eq!((0..7).map(v).collect::<Vec<_>>(), [0, 42, 1, 0, 42, 1, 42]);
    for budget in [1, 2, 4, 100] {
        let sliced = run(Some(budget));
        assert_eq!(sliced.0, whole.0, "budget {budget}: values read");
        assert_eq!(sliced.1, whole.1, "budget {budget}: the VP");
        if budget == 2 {
            assert_eq!((sliced.2, sliced.3), (5, 4));
        }
    }
}
