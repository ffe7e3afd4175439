//! Sequences of arbitrary hypercalls from several callers into one small host: the root,
//! an Active child holding CreatePartitions, AccessMemoryPool and EnableExtendedHypercalls
//! (so nested deposits and the cold discard hint are reachable), an unprivileged
//! Uninitialized child, and a caller that does not exist.
//! After every call the model's invariants must hold, every frame must be accounted for,
//! and the result value must be well formed.
//!
//! Each call is `flags, control (8 bytes LE), len, selector, input[len * 2]`. Flag bits:
//! 0-1 caller; 2 keep the control word well formed (a served code, reps in range, no
//! reserved bits) so the handlers are reached; 3 overwrite the input's first u64 with a
//! live partition id (or SELF) picked by the selector; 4 go through the GPA entry, with
//! the input at a selector-chosen offset of the caller's memory; 5 offer a short output;
//! 6 put the caller's GPA space end inside its memory, so parameter lists can fall
//! outside it. The first byte picks the layout and whether rep calls are time-sliced
//! (a rep budget of 3). The Active child has VPs 0 and 1, so the VP register calls reach
//! their registers.
#![no_main]

use std::sync::OnceLock;

use ballast_abi::hv::{
    Control, CreatePartitionInput, CreateVpInput, DecodeOptions, HV_PARTITION_ID_SELF,
    HvCreatePartition, HvCreateVp, HvCreateVpV2, HvPartitionPrivilegeMask, HypercallOutput,
    InputLayout, check_control,
};
use ballast_core::hyperv::SELF;
use ballast_core::{Config, FlatMemory, GuestMemory, Hypervisor, NodeSel, PartitionId, ROOT_ID};
use libfuzzer_sys::fuzz_target;

const CODES: [u16; 15] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x4A, 0x4E, 0x4F, 0x50, 0x51, 0x8001, 0x8003,
];
const GPA_BASE: u64 = 0x4000_0000;

struct Template {
    hv: Hypervisor,
    callers: [PartitionId; 4],
}

fn template(layout: InputLayout, rep_budget: Option<u16>) -> Template {
    let mut config = Config::with_nodes(vec![2048, 2048]);
    config.rep_budget = rep_budget.and_then(core::num::NonZeroU16::new);
    config.limits.max_depth = 3;
    config.limits.max_partitions = 12;
    config.costs.initialize_partition = 16;
    config.costs.create_vp = 8;
    config.input_layout = layout;
    let mut hv = Hypervisor::new(config).expect("a valid configuration");
    let create = CreatePartitionInput::Tlfs2(HvCreatePartition::default());
    let create = match layout {
        InputLayout::Tlfs2 => create,
        InputLayout::Current => CreatePartitionInput::Current(Default::default()),
    };
    let new_child = |hv: &mut Hypervisor| {
        hv.call_with_deposits(SELF, NodeSel::Any, 8, 4, |hv| {
            hv.create_partition(ROOT_ID, &create)
        })
        .expect("the root can pay for a child")
    };
    let c = new_child(&mut hv);
    let u = new_child(&mut hv);
    hv.root_deposit(c, NodeSel::Exact(0), 40).unwrap();
    hv.root_deposit(c, NodeSel::Exact(1), 40).unwrap();
    hv.initialize_partition(ROOT_ID, c).unwrap();
    // VPs 0 and 1, so that HvGetVpRegisters / HvSetVpRegisters reach their registers.
    for vp_index in 0..2 {
        let vp = match layout {
            InputLayout::Tlfs2 => CreateVpInput::Tlfs2(HvCreateVp {
                partition_id: c.0,
                vp_index,
                ..Default::default()
            }),
            InputLayout::Current => CreateVpInput::Current(HvCreateVpV2 {
                partition_id: c.0,
                vp_index,
                ..Default::default()
            }),
        };
        hv.create_vp(ROOT_ID, &vp).unwrap();
    }
    // The extended hypercalls too, so the heat hint reaches its ranges (gfns 0..64).
    let privileged = HvPartitionPrivilegeMask::new()
        .with_create_partitions(true)
        .with_access_memory_pool(true)
        .with_enable_extended_hypercalls(true);
    hv.set_partition_privileges(c, privileged).unwrap();
    // Partitions made by HvCreatePartition get memory only when the host grants it.
    hv.set_max_pages(c, u32::MAX).unwrap();
    hv.populate(c, 0, 64).unwrap();
    hv.root_deposit(u, NodeSel::Any, 4).unwrap();
    hv.root_deposit(SELF, NodeSel::Any, 32).unwrap();
    hv.take_effects();
    hv.check().expect("a consistent start");
    Template {
        hv,
        callers: [ROOT_ID, c, u, PartitionId(0xDEAD)],
    }
}

fn templates() -> &'static [Template; 4] {
    static T: OnceLock<[Template; 4]> = OnceLock::new();
    T.get_or_init(|| {
        [
            template(InputLayout::Tlfs2, None),
            template(InputLayout::Current, None),
            template(InputLayout::Tlfs2, Some(3)),
            template(InputLayout::Current, Some(3)),
        ]
    })
}

/// A control word for one of the served calls, with reps in range and no reserved bits.
fn well_formed(raw: u64) -> u64 {
    let code = CODES[(raw as u16 as usize) % CODES.len()];
    let count = ((raw >> 32) & 0xFFF) as u16;
    let start = if count == 0 {
        0
    } else {
        ((raw >> 48) & 0xFFF) as u16 % count
    };
    let fast = raw & 1 << 16 != 0;
    Control::new()
        .with_code(code)
        .with_fast(fast)
        .with_rep_count(count)
        .with_rep_start(start)
        .into_bits()
}

fn frames_accounted(hv: &Hypervisor) -> bool {
    let held: u64 = hv
        .partitions()
        .map(|p| p.pool_available() + p.pool_in_use() + p.tot_pages())
        .sum();
    hv.frames().total_free() + held == hv.frames().ram_frames()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, mut data)) = data.split_first() else {
        return;
    };
    let t = &templates()[usize::from(which & 3)];
    let mut hv = t.hv.clone();
    let options = DecodeOptions {
        layout: hv.config().input_layout,
        xmm_fast_input: hv.config().xmm_fast_input,
    };
    let mut output = vec![0u8; 4096];
    while let Some((head, rest)) = data.split_first_chunk::<11>() {
        let flags = head[0];
        let mut control = u64::from_le_bytes(head[1..9].try_into().unwrap());
        let len = usize::from(head[9]) * 2;
        let selector = head[10];
        let take = len.min(rest.len());
        let mut input = rest[..take].to_vec();
        data = &rest[take..];

        let caller = t.callers[usize::from(flags & 3)];
        if flags & 4 != 0 {
            control = well_formed(control);
        }
        if flags & 8 != 0 && input.len() >= 8 {
            let mut ids: Vec<u64> = hv.partitions().map(|p| p.id().0).collect();
            ids.push(HV_PARTITION_ID_SELF);
            let id = ids[usize::from(selector) % ids.len()];
            input[..8].copy_from_slice(&id.to_le_bytes());
        }
        let out_len = if flags & 32 != 0 {
            usize::from(selector)
        } else {
            output.len()
        };

        let rax = if flags & 16 != 0 {
            let offset = u64::from(selector) * 8 + u64::from(selector & 1) * 4;
            let mut mem = FlatMemory::new(GPA_BASE, 0x4000);
            if flags & 64 != 0 {
                mem = mem.with_gpa_space_end(GPA_BASE + 0x1000 + u64::from(selector) * 32);
            }
            let _ = mem.write(GPA_BASE + offset, &input);
            hv.hypercall_gpa(
                caller,
                control,
                GPA_BASE + offset,
                GPA_BASE + 0x2000,
                &mut mem,
            )
        } else {
            hv.hypercall(caller, control, &input, &mut output[..out_len])
        };

        let result = HypercallOutput::from_bits(rax);
        assert_eq!(
            rax & !0x0000_0FFF_0000_FFFF,
            0,
            "reserved result bits set: {rax:#x}"
        );
        match check_control(control, options) {
            Ok((ctl, _)) => {
                assert!(result.reps_completed() <= ctl.rep_count());
                let budget = hv.config().rep_budget.map(|b| b.get());
                if result.status().is_ok() {
                    // A sliced rep call completes exactly its slice.
                    let end = match budget {
                        Some(b) if ctl.rep_count() > 0 => {
                            ctl.rep_count().min(ctl.rep_start().saturating_add(b))
                        }
                        _ => ctl.rep_count(),
                    };
                    assert_eq!(result.reps_completed(), end);
                } else if ctl.rep_count() > 0 {
                    assert!(result.reps_completed() >= ctl.rep_start());
                }
            }
            Err(e) => assert_eq!(rax, HypercallOutput::error(e, 0).into_bits()),
        }
        if let Err(e) = hv.check() {
            panic!("after control {control:#x} from {caller:?}: {e}");
        }
        assert!(frames_accounted(&hv));
        hv.take_effects();
    }
});
