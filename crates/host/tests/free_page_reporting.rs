//! Free page reporting end to end on real memory: a DM guest with the privilege asks for
//! the cold discard capability and hints free 2 MiB blocks through the host, as Linux's
//! `hv_balloon` does from its page reporting callback. The hinted pages stay the guest's,
//! read zero, and leave the host's resident memory; a guest without the privilege is
//! refused; no other guest ever sees the bytes.

use ballast_abi::hv::{
    Control, HvError, HvExtCapabilities, HvGpaPageRange, HvMemoryHeatHint, HvStatus, HypercallCode,
    HypercallOutput,
};
use ballast_balancer::{Balancer, VmSettings};
use ballast_host::{BackingMode, Host, HostConfig, VmConfig, VmId, VmKind};
use zerocopy::IntoBytes;

const MIB: u64 = 1 << 20;
const PAGE: usize = 4096;

fn vm(name: &str, reporting: bool) -> VmConfig {
    VmConfig {
        name: name.into(),
        kind: VmKind::Dm,
        settings: VmSettings {
            startup: 64 * MIB,
            minimum: 32 * MIB,
            maximum: 128 * MIB,
            buffer_percent: 20,
            weight: 50,
        },
        vps: 1,
        free_page_reporting: reporting,
    }
}

fn host() -> Host {
    Host::new(
        HostConfig {
            memory_bytes: 512 * MIB,
            backing: BackingMode::RealMemory,
            ..HostConfig::default()
        },
        Balancer::by_name("static").unwrap(),
    )
    .unwrap()
}

fn secret(vm: VmId, gfn: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| 0x80 | (vm.0 as u8 * 31) ^ (gfn as u8) ^ (i as u8).wrapping_mul(3))
        .collect()
}

/// Writes every page of the guest's startup memory, as a guest that uses it.
fn fill(host: &Host, vm: VmId) {
    let id = host.vm(vm).unwrap().partition;
    for g in 0..64 * MIB / PAGE as u64 {
        host.memory().write_guest(id, g, &secret(vm, g)).unwrap();
    }
}

fn read(host: &Host, vm: VmId, gfn: u64) -> Vec<u8> {
    let id = host.vm(vm).unwrap().partition;
    let mut b = vec![0xEE; PAGE];
    host.memory().read_guest(id, gfn, &mut b).unwrap();
    b
}

fn call(
    host: &mut Host,
    vm: VmId,
    code: HypercallCode,
    reps: u16,
    input: &[u8],
    out: &mut [u8],
) -> (HvStatus, u16) {
    let control = Control::for_call(code, reps, 0).into_bits();
    let o = HypercallOutput::from_bits(host.hv_hypercall(vm, control, input, out).unwrap());
    (o.status(), o.reps_completed())
}

fn hint(host: &mut Host, vm: VmId, ranges: &[HvGpaPageRange]) -> (HvStatus, u16) {
    let mut input = HvMemoryHeatHint::new()
        .with_heat_type(2)
        .into_bits()
        .to_le_bytes()
        .to_vec();
    for r in ranges {
        input.extend_from_slice(r.as_bytes());
    }
    call(
        host,
        vm,
        HypercallCode::HvExtCallMemoryHeatHint,
        ranges.len() as u16,
        &input,
        &mut [],
    )
}

#[test]
fn hinted_blocks_leave_resident_memory_read_zero_and_stay_the_guests() {
    let mut host = host();
    let a = host.create_vm(vm("reports", true)).unwrap();
    let b = host.create_vm(vm("plain", false)).unwrap();
    fill(&host, a);
    fill(&host, b);
    let resident = |h: &Host, v| h.vm(v).unwrap().resident.unwrap();
    assert_eq!(resident(&host, a), 64 * MIB);

    // The capability, as Linux's `hv_query_ext_cap` asks for it.
    let mut out = [0u8; 8];
    let s = call(
        &mut host,
        a,
        HypercallCode::HvExtCallQueryCapabilities,
        0,
        &[],
        &mut out,
    );
    assert_eq!(s, (HvStatus::SUCCESS, 0));
    assert!(HvExtCapabilities::from_bits(u64::from_le_bytes(out)).memory_cold_discard_hint());

    // Four free 2 MiB blocks, gfns 4096..5120 and 8192..9216 (Linux's large form).
    let ranges = [
        HvGpaPageRange::large_2m(8, 2).unwrap(),
        HvGpaPageRange::large_2m(16, 2).unwrap(),
    ];
    assert_eq!(hint(&mut host, a, &ranges), (HvStatus::SUCCESS, 2));
    let view = host.vm(a).unwrap();
    assert_eq!(
        resident(&host, a),
        56 * MIB,
        "resident drops by what was hinted"
    );
    assert_eq!(view.assigned, 64 * MIB, "hinted pages stay the guest's");
    assert_eq!((view.ops.hint, view.ops.hint_pages), (1, 2048));
    for g in [4096, 5000, 5119, 8192, 9215] {
        assert!(read(&host, a, g) == vec![0; PAGE], "gfn {g} reads zero");
    }
    for g in [4095, 5120, 8191, 9216] {
        assert!(read(&host, a, g) == secret(a, g), "gfn {g} keeps its bytes");
    }
    // The other guest's memory is untouched and holds none of the hinted bytes.
    assert_eq!(resident(&host, b), 64 * MIB);
    for g in (0..64 * MIB / PAGE as u64).step_by(97) {
        assert!(
            read(&host, b, g) == secret(b, g),
            "gfn {g} of the other guest"
        );
    }
    // The guest uses a hinted page again: it is resident again, and its own.
    let id = host.vm(a).unwrap().partition;
    host.memory().write_guest(id, 5000, &secret(a, 1)).unwrap();
    assert_eq!(resident(&host, a), 56 * MIB + PAGE as u64);
    assert!(read(&host, a, 5000) == secret(a, 1));
    assert!(
        host.memory()
            .audit(id, false)
            .unwrap()
            .violations
            .is_empty()
    );
    host.hv().check().unwrap();
}

#[test]
fn the_privilege_is_the_switch_and_bad_ranges_change_nothing() {
    let mut host = host();
    let a = host.create_vm(vm("reports", true)).unwrap();
    let b = host.create_vm(vm("plain", false)).unwrap();
    fill(&host, a);
    fill(&host, b);
    let block = [HvGpaPageRange::large_2m(1, 1).unwrap()];
    let denied = (HvStatus::from(HvError::ACCESS_DENIED), 0);
    assert_eq!(hint(&mut host, b, &block), denied);
    let mut out = [0u8; 8];
    assert_eq!(
        call(
            &mut host,
            b,
            HypercallCode::HvExtCallQueryCapabilities,
            0,
            &[],
            &mut out
        ),
        denied
    );
    assert_eq!(host.vm(b).unwrap().resident, Some(64 * MIB));
    // Switched on at run time, the same hint goes through; switched off, it is refused.
    host.set_free_page_reporting(b, true).unwrap();
    assert_eq!(hint(&mut host, b, &block), (HvStatus::SUCCESS, 1));
    assert_eq!(host.vm(b).unwrap().resident, Some(62 * MIB));
    host.set_free_page_reporting(b, false).unwrap();
    assert_eq!(hint(&mut host, b, &block), denied);
    assert!(!host.vm(b).unwrap().free_page_reporting);

    // A range past the guest's memory: the first block stands, the rest is untouched.
    let ranges = [
        HvGpaPageRange::large_2m(2, 1).unwrap(),
        HvGpaPageRange::large_2m(40, 1).unwrap(), // gfn 20480: past its 64 MiB
        HvGpaPageRange::large_2m(3, 1).unwrap(),
    ];
    assert_eq!(
        hint(&mut host, a, &ranges),
        (HvStatus::from(HvError::INVALID_PARAMETER), 1)
    );
    assert_eq!(host.vm(a).unwrap().resident, Some(62 * MIB));
    assert!(read(&host, a, 3 * 512) == secret(a, 3 * 512));
    let v = host.vm(a).unwrap();
    assert_eq!((v.ops.hint, v.ops.hint_pages), (1, 512));
    host.hv().check().unwrap();
}
