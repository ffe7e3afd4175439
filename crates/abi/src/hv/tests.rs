use super::*;
use proptest::prelude::*;
use zerocopy::IntoBytes;

fn ctl(code: u16, reps: u16, start: u16) -> u64 {
    Control::for_call(HypercallCode(code), reps, start).into_bits()
}

const OPTS: DecodeOptions = DecodeOptions {
    layout: InputLayout::Tlfs2,
    xmm_fast_input: false,
};

#[test]
fn control_field_positions() {
    let c = Control::from_bits(0x0ABC_0DEF_0003_FC4E | 1 << 16);
    assert_eq!(c.code(), 0xFC4E);
    assert!(c.fast());
    assert_eq!(c.variable_header_size(), 1);
    assert_eq!(c.rep_count(), 0xDEF);
    assert_eq!(c.rep_start(), 0xABC);
    assert!(!c.is_nested());
    assert!(Control::from_bits(1 << 31).is_nested());
    // The var-header field is 10 bits wide: 26:17.
    assert_eq!(
        Control::new().with_variable_header_size(0x3FF).into_bits(),
        0x07FE_0000
    );
    assert_eq!(
        Control::new().with_rep_count(0xFFF).into_bits(),
        0x0000_0FFF_0000_0000
    );
    assert_eq!(
        Control::new().with_rep_start(0xFFF).into_bits(),
        0x0FFF_0000_0000_0000
    );
    // Every bit is either a named field or in the reserved mask.
    let named = Control::new()
        .with_code(0xFFFF)
        .with_fast(true)
        .with_variable_header_size(0x3FF)
        .with_is_nested(true)
        .with_rep_count(0xFFF)
        .with_rep_start(0xFFF)
        .into_bits();
    assert_eq!(named & Control::RESERVED_MASK, 0);
    assert_eq!(named | Control::RESERVED_MASK, u64::MAX);
}

/// Worked encodings of the hypercall result value (TLFS 2.0A §4.8).
#[test]
fn worked_result_encodings() {
    assert_eq!(
        HypercallOutput::success(3).into_bits(),
        0x0000_0003_0000_0000
    );
    assert_eq!(
        HypercallOutput::error(HvError::OPERATION_DENIED, 2).into_bits(),
        0x0000_0002_0000_0008
    );
    assert_eq!(
        HypercallOutput::error(HvError::NO_RESOURCES, 2).into_bits(),
        0x0000_0002_0000_001D
    );
    // Conformance #8: 511 pages deposited.
    assert_eq!(
        HypercallOutput::success(511).into_bits(),
        0x0000_01FF_0000_0000
    );
    // Conformance #26.
    assert_eq!(
        HypercallOutput::error(HvError::NO_RESOURCES, 4).into_bits(),
        0x0000_0004_0000_001D
    );
    let out = HypercallOutput::from_bits(0xFFFF_F123_FFFF_0005);
    assert_eq!(out.status(), HvStatus::INVALID_PARAMETER);
    assert_eq!(out.reps_completed(), 0x123);
}

#[test]
fn linux_fast_initialize_control() {
    // Conformance #17: Linux's hv_do_fast_hypercall8 for HvInitializePartition.
    let id = 42u64.to_le_bytes();
    let d = decode(0x0001_0041, &id, OPTS).unwrap();
    assert!(d.control.fast());
    assert_eq!(
        d.call,
        HvCall::InitializePartition(HvPartitionIdInput { partition_id: 42 })
    );
}

#[test]
fn status_table() {
    assert_eq!(HvStatus::ALL.len(), 61);
    let mut prev = None;
    for &s in HvStatus::ALL {
        assert!(prev < Some(s.0), "ALL is sorted and unique");
        prev = Some(s.0);
        assert!(s.name().is_some() && s.description().is_some());
        assert_eq!(
            HvError::new(s).map(HvError::status),
            (!s.is_ok()).then_some(s)
        );
    }
    assert_eq!(HvStatus::INSUFFICIENT_MEMORY.0, 0x000B);
    assert_eq!(HvStatus::NO_RESOURCES.0, 0x001D);
    assert_eq!(HvStatus::INSUFFICIENT_CONTIGUOUS_ROOT_MEMORY.0, 0x0083);
    assert_eq!(HvStatus(0x000F).name(), None);
    assert_eq!(HvStatus::SUCCESS.result(), Ok(()));
    assert_eq!(HvStatus(0xB).result(), Err(HvError::INSUFFICIENT_MEMORY));
    assert_eq!(core::mem::size_of::<HvResult<()>>(), 2);
    let text = std::format!("{}", HvError::INSUFFICIENT_MEMORY);
    assert!(
        text.starts_with("HV_STATUS_INSUFFICIENT_MEMORY (0x000b)"),
        "{text}"
    );
    assert_eq!(std::format!("{:?}", HvStatus(0x1234)), "HvStatus(0x1234)");
}

#[test]
fn proximity_domain_info_encoding() {
    // Worked values of HV_PROXIMITY_DOMAIN_INFO (TLFS 2.0A §7.2.1).
    assert_eq!(
        HvProximityDomainInfo::node(1, true).to_u64(),
        0x8000_0001_0000_0001
    );
    assert_eq!(
        HvProximityDomainInfo::node(2, false).to_u64(),
        0x8000_0000_0000_0002
    );
    assert_eq!(HvProximityDomainInfo::ANY.to_u64(), 0);
    assert_eq!(
        HvProximityDomainInfo::node(1, true).as_bytes(),
        &[1, 0, 0, 0, 1, 0, 0, 0x80]
    );
    for v in [0u64, 0x8000_0001_0000_0001, 0x1234_5678_9abc_def0] {
        assert_eq!(HvProximityDomainInfo::from_u64(v).to_u64(), v);
    }
}

#[test]
fn proximity_domain_selection() {
    let sel = |v: u64| HvProximityDomainInfo::from_u64(v).selection(2);
    assert_eq!(sel(0), Ok(ProximitySelection::Any));
    // Valid clear: id and preferred ignored.
    assert_eq!(sel(0x0000_0001_0000_0007), Ok(ProximitySelection::Any));
    assert_eq!(
        sel(0x8000_0000_0000_0001),
        Ok(ProximitySelection::Strict(1))
    );
    assert_eq!(
        sel(0x8000_0001_0000_0001),
        Ok(ProximitySelection::Preferred(1))
    );
    // Domain beyond the host's nodes.
    assert_eq!(sel(0x8000_0001_0000_0002), Err(HvError::INVALID_PARAMETER));
    // Conformance #27: flags 0x8000_0002 (reserved bit 1).
    assert_eq!(sel(0x8000_0002_0000_0000), Err(HvError::INVALID_PARAMETER));
    // Conformance #24: flags bit 5, whatever the valid bit says.
    assert_eq!(sel(0x0000_0020_0000_0000), Err(HvError::INVALID_PARAMETER));
}

#[test]
fn privilege_bits() {
    let m = HvPartitionPrivilegeMask::new()
        .with_create_partitions(true)
        .with_access_memory_pool(true);
    assert_eq!(m.into_bits(), 0x1_0000_0000 | 0x4_0000_0000);
    assert_eq!(
        HvPartitionPrivilegeMask::new()
            .with_cpu_management(true)
            .into_bits(),
        1 << 44
    );
    assert_eq!(
        HvPartitionPrivilegeMask::new()
            .with_isolation(true)
            .into_bits(),
        1 << 54
    );
    let root = HvPartitionPrivilegeMask::ROOT;
    assert!(root.create_partitions() && root.access_memory_pool() && root.cpu_management());
    assert!(!root.isolation());
    // ROOT holds exactly the named bits but Isolation.
    let all_named = HvPartitionPrivilegeMask::from_bits(u64::MAX);
    let reserved: u64 = (0xFFFF << 16) | (0b11 << 41) | (1 << 50) | (0x1FF << 55);
    assert_eq!(!reserved, root.into_bits() | 1 << 54);
    assert!(all_named.access_vp_registers() && all_named.start_virtual_processor());
}

#[test]
fn call_table() {
    let rep = |c| HypercallCode::info(c, InputLayout::Tlfs2).unwrap().class;
    assert_eq!(rep(HypercallCode::HvCallDepositMemory), CallClass::Rep);
    assert_eq!(rep(HypercallCode::HvCallWithdrawMemory), CallClass::Rep);
    assert_eq!(
        rep(HypercallCode::HvCallGetMemoryBalance),
        CallClass::Simple
    );
    assert_eq!(rep(HypercallCode::HvCallCreateVp), CallClass::Simple);
    let vp = |l| HypercallCode::HvCallCreateVp.info(l).unwrap().input_size;
    assert_eq!((vp(InputLayout::Tlfs2), vp(InputLayout::Current)), (32, 40));
    let cp = |l| {
        HypercallCode::HvCallCreatePartition
            .info(l)
            .unwrap()
            .input_size
    };
    assert_eq!((cp(InputLayout::Tlfs2), cp(InputLayout::Current)), (16, 56));
    for code in [
        0x40u16, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x4A, 0x4E, 0x4F, 0x50, 0x51, 0x8001,
        0x8003,
    ] {
        let info = HypercallCode(code).info(InputLayout::Tlfs2).unwrap();
        assert_eq!(info.code.0, code);
    }
    for code in [
        0x45u16, 0x46, 0x4B, 0x4C, 0x4D, 0x52, 0, 0xFFFF, 0x8000, 0x8002, 0x8004,
    ] {
        assert!(HypercallCode(code).info(InputLayout::Tlfs2).is_none());
    }
    // One deposit fills an input page exactly; one withdraw fills an output page.
    let dep = HypercallCode::HvCallDepositMemory
        .info(InputLayout::Tlfs2)
        .unwrap();
    assert_eq!(dep.input_len(HV_DEPOSIT_MAX), crate::PAGE_SIZE);
    let wd = HypercallCode::HvCallWithdrawMemory
        .info(InputLayout::Tlfs2)
        .unwrap();
    assert_eq!(wd.output_len(HV_WITHDRAW_BATCH_SIZE), crate::PAGE_SIZE);
    // The most ranges one heat hint carries fill its input page exactly.
    let hint = HypercallCode::HvExtCallMemoryHeatHint
        .info(InputLayout::Tlfs2)
        .unwrap();
    assert_eq!(hint.class, CallClass::Rep);
    assert_eq!(
        hint.input_len(HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES),
        crate::PAGE_SIZE
    );
    let caps = HypercallCode::HvExtCallQueryCapabilities
        .info(InputLayout::Tlfs2)
        .unwrap();
    assert_eq!(
        (caps.class, caps.input_size, caps.output_size),
        (CallClass::Simple, 0, 8)
    );
}

/// The cold discard bit is the one Linux tests (`HV_EXT_CAPABILITY_MEMORY_COLD_DISCARD_HINT`
/// is BIT(8)); the heat hint's own bit is the TLFS table's bit 1.
#[test]
fn extended_capability_bits() {
    let c = HvExtCapabilities::new()
        .with_memory_heat_hint(true)
        .with_memory_cold_discard_hint(true);
    assert_eq!(c.into_bits(), 1 << 1 | 1 << 8);
    assert_eq!(
        HvExtCapabilities::new()
            .with_get_boot_zeroed_memory(true)
            .into_bits(),
        1
    );
}

/// The range bits as Linux's `hv_free_page_report` writes them for an order-9 block and
/// for a run of 4 KiB pages.
#[test]
fn gpa_page_range_linux_forms() {
    // 3 x 2 MiB from gfn 0x40000: largepage = 1, page_size = 0 (2 MiB),
    // additional_pages = 2, base_large_pfn = 0x40000 >> 9.
    let raw: u64 = 2 | 1 << 11 | (0x40000u64 >> 9) << 21;
    let r = HvGpaPageRange::from_bits(raw);
    assert_eq!(r.pages(), Ok((0x40000, 3 * 512)));
    assert_eq!(HvGpaPageRange::large_2m(0x40000 >> 9, 3), Some(r));
    // 16 pages from gfn 0x1234: largepage = 0, basepfn at bit 12.
    let raw: u64 = 15 | 0x1234 << 12;
    let r = HvGpaPageRange::from_bits(raw);
    assert_eq!(r.pages(), Ok((0x1234, 16)));
    assert_eq!(HvGpaPageRange::small(0x1234, 16), Some(r));
    // The largest of each form.
    assert_eq!(
        HvGpaPageRange::large_2m(0, 2048).unwrap().pages(),
        Ok((0, 2048 * 512))
    );
    assert_eq!(HvGpaPageRange::small(0, 2049), None);
    assert_eq!(HvGpaPageRange::large_2m(1 << 43, 1), None);
    // 1 GiB pages and reserved bits are refused.
    assert_eq!(
        HvGpaPageRange::from_bits(1 << 11 | 1 << 12).pages(),
        Err(GpaPageRangeError::GiantPages)
    );
    assert_eq!(
        HvGpaPageRange::from_bits(1 << 11 | 1 << 13).pages(),
        Err(GpaPageRangeError::Reserved)
    );
    // In the small form bits 12-20 are the base, not reserved.
    assert_eq!(HvGpaPageRange::from_bits(1 << 13).pages(), Ok((2, 1)));
}

#[test]
fn heat_hint_decodes_header_and_ranges() {
    let mut input = std::vec![0u8; 8 + 2 * 8];
    input[..8].copy_from_slice(&2u64.to_le_bytes());
    let r0 = HvGpaPageRange::large_2m(1, 1).unwrap();
    let r1 = HvGpaPageRange::small(7, 3).unwrap();
    input[8..16].copy_from_slice(r0.as_bytes());
    input[16..].copy_from_slice(r1.as_bytes());
    let d = decode(ctl(0x8003, 2, 0), &input, OPTS).unwrap();
    let HvCall::MemoryHeatHint(h, list) = d.call else {
        panic!("{:?}", d.call)
    };
    assert_eq!(h.hint_type(), HvMemoryHeatHintType::COLD_DISCARD);
    assert_eq!(list.iter().collect::<std::vec::Vec<_>>(), [r0, r1]);
    // A heat hint is a rep call; the capability query a simple one.
    assert_eq!(
        decode(ctl(0x8003, 0, 0), &input, OPTS).unwrap_err(),
        HvError::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        decode(ctl(0x8001, 0, 0), &[], OPTS).unwrap().call,
        HvCall::QueryCapabilities
    );
}

proptest! {
    /// Every u64 is a range or a refusal, never a panic, and a range never wraps.
    #[test]
    fn gpa_page_range_is_total(raw in any::<u64>()) {
        if let Ok((start, count)) = HvGpaPageRange::from_bits(raw).pages() {
            prop_assert!((1..=2048 * 512).contains(&count));
            prop_assert!(start.checked_add(count).is_some());
        }
    }
}

/// The generic checks, one stage at a time, in ballast's G1-G6 order (the `hv` module
/// documentation), cases #1-#6.
#[test]
fn generic_checks_conformance_1_to_6() {
    let page = [0u8; 4096];
    let err = |c| decode(c, &page, OPTS).unwrap_err();
    assert_eq!(err(ctl(0x00FF, 0, 0)), HvError::INVALID_HYPERCALL_CODE); // #1
    assert_eq!(err(ctl(0x48, 0, 0)), HvError::INVALID_HYPERCALL_INPUT); // #2
    assert_eq!(err(ctl(0x4A, 1, 0)), HvError::INVALID_HYPERCALL_INPUT); // #3
    assert_eq!(err(ctl(0x4A, 0, 1)), HvError::INVALID_HYPERCALL_INPUT);
    assert_eq!(err(ctl(0x48, 4, 4)), HvError::INVALID_HYPERCALL_INPUT); // #4
    assert_eq!(
        err(0x48 | 1 << 32 | 1 << 44),
        HvError::INVALID_HYPERCALL_INPUT
    ); // #5
    assert_eq!(
        err(ctl(0x48, 1, 0) | 1 << 17),
        HvError::INVALID_HYPERCALL_INPUT
    ); // #6
    for bit in [27, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63] {
        assert_eq!(
            err(ctl(0x48, 1, 0) | 1 << bit),
            HvError::INVALID_HYPERCALL_INPUT,
            "bit {bit}"
        );
    }
    // G1 precedes G2: an unknown code with reserved bits is still an unknown code.
    assert_eq!(err(0x00FF | 1 << 63), HvError::INVALID_HYPERCALL_CODE);
    assert!(decode(ctl(0x48, 4, 3), &page, OPTS).is_ok());
}

#[test]
fn fast_calls() {
    let id = 7u64.to_le_bytes();
    let fast = |c: u64| c | 1 << 16;
    assert!(decode(fast(ctl(0x42, 0, 0)), &id, OPTS).is_ok());
    let mut dvp = [0u8; 16];
    dvp[..8].copy_from_slice(&7u64.to_le_bytes());
    dvp[8..12].copy_from_slice(&3u32.to_le_bytes());
    let d = decode(fast(ctl(0x4F, 0, 0)), &dvp, OPTS).unwrap();
    assert_eq!(
        d.call,
        HvCall::DeleteVp(HvDeleteVp {
            partition_id: 7,
            vp_index: 3,
            padding: 0
        })
    );
    // A call with output cannot be fast.
    let page = [0u8; 4096];
    assert_eq!(
        decode(fast(ctl(0x4A, 0, 0)), &page, OPTS).unwrap_err(),
        HvError::INVALID_HYPERCALL_INPUT
    );
    // HvCreateVp (32 bytes) does not fit RDX:R8, but fits the XMM registers.
    assert_eq!(
        decode(fast(ctl(0x4E, 0, 0)), &page, OPTS).unwrap_err(),
        HvError::INVALID_HYPERCALL_INPUT
    );
    let xmm = DecodeOptions {
        xmm_fast_input: true,
        ..OPTS
    };
    assert!(decode(fast(ctl(0x4E, 0, 0)), &page, xmm).is_ok());
    // A deposit of one page fits in registers (8-byte header + 8-byte element); two do not.
    assert!(decode(fast(ctl(0x48, 1, 0)), &page, OPTS).is_ok());
    assert!(decode(fast(ctl(0x48, 2, 0)), &page, OPTS).is_err());
}

#[test]
fn param_gpa_alignment_conformance_7_8() {
    let dep = HypercallCode::HvCallDepositMemory
        .info(InputLayout::Tlfs2)
        .unwrap();
    // #7: input GPA = page + 4.
    assert_eq!(
        check_param_gpa(0x1000 + 4, dep.input_len(1)),
        Err(HvError::INVALID_ALIGNMENT)
    );
    // #8: 512 pages from a page boundary need 4104 bytes; 511 fit.
    assert_eq!(
        check_param_gpa(0x1000, dep.input_len(512)),
        Err(HvError::INVALID_ALIGNMENT)
    );
    assert_eq!(check_param_gpa(0x1000, dep.input_len(511)), Ok(()));
    assert_eq!(
        check_param_gpa(0x1008, dep.input_len(511)),
        Err(HvError::INVALID_ALIGNMENT)
    );
    assert_eq!(check_param_gpa(0x1FF8, 8), Ok(()));
    assert_eq!(check_param_gpa(0x1FF8, 16), Err(HvError::INVALID_ALIGNMENT));
    assert_eq!(check_param_gpa(u64::MAX - 7, 8), Ok(()));
    assert_eq!(check_param_gpa(3, 0), Ok(()));
}

#[test]
fn decode_each_call() {
    let l = OPTS;
    let mut buf = [0u8; 4096];

    let w = HvWithdrawMemory {
        partition_id: 5,
        proximity_domain_info: HvProximityDomainInfo::node(1, true),
    };
    buf[..16].copy_from_slice(w.as_bytes());
    assert_eq!(
        decode(ctl(0x49, 10, 0), &buf, l).unwrap().call,
        HvCall::WithdrawMemory(w)
    );
    // HvWithdrawMemory input bytes (TLFS): PartitionId @0, ProximityDomainInfo @8.
    assert_eq!(
        w.as_bytes(),
        &[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x80]
    );

    let b = HvGetMemoryBalance {
        partition_id: 9,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    buf[..16].copy_from_slice(b.as_bytes());
    assert_eq!(
        decode(ctl(0x4A, 0, 0), &buf, l).unwrap().call,
        HvCall::GetMemoryBalance(b)
    );
    let out = HvGetMemoryBalanceOutput {
        pages_available: 3,
        pages_in_use: 4,
    };
    assert_eq!(
        out.as_bytes(),
        &[3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]
    );

    // Deposit: header then the GPA page list; the whole list is visible from element 0.
    buf[..8].copy_from_slice(&5u64.to_le_bytes());
    for i in 0..8u64 {
        let at = 8 + 8 * i as usize;
        buf[at..at + 8].copy_from_slice(&(0x1000 + i).to_le_bytes());
    }
    let d = decode(ctl(0x48, 8, 5), &buf, l).unwrap();
    let HvCall::DepositMemory(h, list) = d.call else {
        panic!("{d:?}")
    };
    assert_eq!(h.partition_id, 5);
    assert_eq!(list.len(), 8);
    assert_eq!(list.get(5), Some(0x1005));
    assert_eq!(list.get(8), None);
    assert_eq!(
        list.iter().collect::<std::vec::Vec<_>>(),
        (0x1000..0x1008).collect::<std::vec::Vec<_>>()
    );
    assert_eq!(d.control.rep_start(), 5);

    // CreateVp in both layouts from the same bytes (they cannot be told apart).
    let vp = HvCreateVp {
        partition_id: 5,
        vp_index: 2,
        padding: 0,
        proximity_domain_info: HvProximityDomainInfo::node(1, false),
        flags: 0,
    };
    buf[..32].copy_from_slice(vp.as_bytes());
    buf[32..40].copy_from_slice(&0xABu64.to_le_bytes());
    let d = decode(ctl(0x4E, 0, 0), &buf, l).unwrap();
    assert_eq!(d.call, HvCall::CreateVp(CreateVpInput::Tlfs2(vp)));
    let cur = DecodeOptions {
        layout: InputLayout::Current,
        ..l
    };
    let HvCall::CreateVp(v2) = decode(ctl(0x4E, 0, 0), &buf, cur).unwrap().call else {
        panic!()
    };
    assert_eq!(v2.partition_id(), 5);
    assert_eq!(v2.vp_index(), 2);
    // In the 40-byte form, the 32-byte form's PDI sits where SubnodeId is.
    assert_eq!(v2.subnode_type(), HvSubnodeType::Any);
    assert_eq!(v2.flags(), 0xAB);
    assert!(!v2.reserved_nonzero());

    let mut short = [0u8; 31];
    short[..8].copy_from_slice(&5u64.to_le_bytes());
    assert_eq!(
        decode(ctl(0x4E, 0, 0), &short, l).unwrap_err(),
        HvError::INVALID_HYPERCALL_INPUT
    );

    let gp = HvGetPartitionProperty {
        partition_id: 5,
        property_code: HvPartitionPropertyCode(0x7FFF_0000),
        padding: 0,
    };
    buf[..16].copy_from_slice(gp.as_bytes());
    assert_eq!(
        decode(ctl(0x44, 0, 0), &buf, l).unwrap().call,
        HvCall::GetPartitionProperty(gp)
    );

    let cp = HvCreatePartition {
        flags: 1 << 63,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    buf[..16].copy_from_slice(cp.as_bytes());
    let HvCall::CreatePartition(c) = decode(ctl(0x40, 0, 0), &buf, l).unwrap().call else {
        panic!()
    };
    assert_eq!(c.flags(), 1 << 63);
}

proptest! {
    #[test]
    fn decode_is_total(control in any::<u64>(), input in proptest::collection::vec(any::<u8>(), 0..200)) {
        for layout in [InputLayout::Tlfs2, InputLayout::Current] {
            for xmm in [false, true] {
                let _ = decode(control, &input, DecodeOptions { layout, xmm_fast_input: xmm });
            }
        }
    }

    /// Arbitrary control words on the served codes, so every later stage is reached.
    #[test]
    fn decode_is_total_on_served_codes(
        code in prop::sample::select(&[0x40u16, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x4A, 0x4E, 0x4F][..]),
        high in any::<u64>(),
        len in 0usize..33_000,
        fill in any::<u8>(),
    ) {
        let control = (high & !0xFFFF) | code as u64;
        let input = std::vec![fill; len];
        for layout in [InputLayout::Tlfs2, InputLayout::Current] {
            for xmm in [false, true] {
                let _ = decode(control, &input, DecodeOptions { layout, xmm_fast_input: xmm });
            }
        }
    }

    #[test]
    fn decode_accepts_what_it_should(
        code in prop::sample::select(&[0x40u16, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x4A, 0x4E, 0x4F][..]),
        reps in 1u16..=0xFFF,
        start in any::<u16>(),
    ) {
        let info = HypercallCode(code).info(InputLayout::Tlfs2).unwrap();
        let (reps, start) = match info.class {
            CallClass::Simple => (0, 0),
            CallClass::Rep => (reps, start % reps),
        };
        let input = std::vec![0u8; info.input_len(reps)];
        let d = decode(ctl(code, reps, start), &input, OPTS).unwrap();
        prop_assert_eq!(d.control.rep_count(), reps);
        prop_assert_eq!(d.info, info);
        if !input.is_empty() {
            // One byte short of the input is an input the caller could not supply.
            prop_assert_eq!(
                decode(ctl(code, reps, start), &input[..input.len() - 1], OPTS).unwrap_err(),
                HvError::INVALID_HYPERCALL_INPUT
            );
        }
    }

    #[test]
    fn control_round_trip(raw in any::<u64>()) {
        let c = Control::from_bits(raw);
        let rebuilt = Control::new()
            .with_code(c.code())
            .with_fast(c.fast())
            .with_variable_header_size(c.variable_header_size())
            .with_is_nested(c.is_nested())
            .with_rep_count(c.rep_count())
            .with_rep_start(c.rep_start());
        prop_assert_eq!(rebuilt.into_bits(), raw & !Control::RESERVED_MASK);
    }

    #[test]
    fn gpa_check_matches_definition(gpa in any::<u64>(), len in 0usize..=8192) {
        let ok = len == 0 || (gpa % 8 == 0 && (gpa % 4096) as usize + len <= 4096);
        prop_assert_eq!(check_param_gpa(gpa, len).is_ok(), ok);
    }
}
