//! A DM guest's free page reporting of 1 GiB through the host in real-memory mode: the
//! Hyper-V cold discard hint (HvExtCallMemoryHeatHint, 0x8003) of 512 free 2 MiB blocks,
//! against the whole-range punch limit measured in the same run.
//!
//! Run: `cargo bench -p ballast-host --bench cold_discard`
//!
//! Each sample starts (untimed) from a fresh [`Host`] with one DM guest of 1.25 GiB
//! startup memory that may report free memory, every page of it written (so resident in
//! its memfd), and the calls' input pages written as Linux's `hv_balloon` writes them from
//! its page reporting callback: the COLD_DISCARD header, then one large-form (2 MiB)
//! `hv_gpa_page_range` per free block. The free blocks are the guest's top 1 GiB, in
//! address order. The timed part is only the hint calls (`Host::hv_hypercall`: the core's
//! checks of the caller and of every range against its p2m, then the punch of the memfd);
//! each must return SUCCESS with all its reps completed. After the time is taken (when
//! the sample's state is dropped) the guest's resident memory must be 1 GiB lower and its
//! assigned memory unchanged: a hinted page stays the guest's.
//!
//! Variants: 32 ranges a call (16 calls), as Linux sends them (its page reporting
//! capacity, `PAGE_REPORTING_CAPACITY`), and 511 ranges a call (2 calls), the most one
//! input page holds (`HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES`): the difference is the cost of
//! a call.
//!
//! The limit is one `fallocate(PUNCH_HOLE)` of a 1 GiB resident memfd range, the least a
//! host must do to drop 1 GiB. Every variant is measured interleaved with it
//! (`ballast_benchkit::interleaved`: one sample of each per round, the order rotating).
//! Figures are GiB discarded per second, median (min .. max); each ratio is ballast's rate
//! over the limit's, the median of the per-round ratios (min .. max).

mod common;

use common::{GIB, MOVE, PAGE, STARTUP, fill, host, punch, settings, write_all};

use std::time::Duration;

use ballast_abi::hv::{
    Control, HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES, HvGpaPageRange, HvMemoryHeatHint,
    HvMemoryHeatHintType, HvStatus, HypercallCode, HypercallOutput,
};
use ballast_backing::{PageSize, PartitionMemory};
use ballast_benchkit::{Sampling, Spread, interleaved, sig};
use ballast_host::{Host, VmConfig, VmId, VmKind};
use zerocopy::IntoBytes;

/// A 2 MiB block, in bytes.
const BLOCK: u64 = 2 << 20;
/// The free blocks: the guest's top 1 GiB, as 2 MiB page numbers.
const FIRST_BLOCK: u64 = (STARTUP - MOVE) / BLOCK;
const BLOCKS: u64 = MOVE / BLOCK;
/// Ranges a call as Linux's page reporting sends them (`PAGE_REPORTING_CAPACITY`).
const LINUX_RANGES: usize = 32;
/// Each sample needs a fresh 1.25 GiB guest written page by page (about a second of
/// setup); the timed part is tens of milliseconds. A few rounds, capped in time.
const SAMPLING: Sampling = Sampling {
    min_rounds: 5,
    max_rounds: 31,
    budget: Duration::from_secs(45),
    rel_ci: 0.03,
};

/// The input pages of the hint calls: the free blocks, one range each, `per_call` ranges
/// a call.
fn inputs(per_call: usize) -> Vec<(u16, Vec<u8>)> {
    let ranges: Vec<HvGpaPageRange> = (FIRST_BLOCK..FIRST_BLOCK + BLOCKS)
        .map(|b| HvGpaPageRange::large_2m(b, 1).expect("a 2 MiB block"))
        .collect();
    ranges
        .chunks(per_call)
        .map(|c| {
            let mut input = HvMemoryHeatHint::new()
                .with_heat_type(HvMemoryHeatHintType::COLD_DISCARD.0)
                .into_bits()
                .to_le_bytes()
                .to_vec();
            for r in c {
                input.extend_from_slice(r.as_bytes());
            }
            (u16::try_from(c.len()).expect("a rep count"), input)
        })
        .collect()
}

/// One guest on its own host, all of it resident, with the input pages of its calls.
struct Rig {
    host: Host,
    vm: VmId,
    calls: Vec<(u16, Vec<u8>)>,
    /// The guest's assigned memory before the hint.
    assigned: u64,
}

fn rig(per_call: usize) -> Rig {
    let mut host = host();
    let vm = host
        .create_vm(VmConfig {
            name: "dm".into(),
            kind: VmKind::Dm,
            settings: settings(),
            vps: 1,
            free_page_reporting: true,
        })
        .expect("a DM guest");
    write_all(&host, vm);
    let assigned = host.vm(vm).expect("the guest").assigned;
    Rig {
        host,
        vm,
        calls: inputs(per_call),
        assigned,
    }
}

impl Rig {
    /// The timed part: every hint call, each completing all its ranges.
    fn hint(&mut self) {
        for (reps, input) in &self.calls {
            let control =
                Control::for_call(HypercallCode::HvExtCallMemoryHeatHint, *reps, 0).into_bits();
            let rax = self
                .host
                .hv_hypercall(self.vm, control, input, &mut [])
                .expect("a DM guest");
            let o = HypercallOutput::from_bits(rax);
            assert_eq!((o.status(), o.reps_completed()), (HvStatus::SUCCESS, *reps));
        }
    }

    /// The guest's resident memory is 1 GiB lower and its assigned memory unchanged.
    fn check(&self) {
        let v = self.host.vm(self.vm).expect("the guest");
        let resident = v.resident.expect("real memory");
        if resident != STARTUP - MOVE || v.assigned != self.assigned {
            panic!(
                "after the hint: {resident} bytes resident (want {}), {} bytes assigned \
                 (want {})",
                STARTUP - MOVE,
                v.assigned,
                self.assigned
            );
        }
        assert_eq!(v.ops.hint, self.calls.len() as u64, "hint calls counted");
        assert_eq!(v.ops.hint_pages, MOVE / PAGE, "hinted pages counted");
    }
}

impl Drop for Rig {
    /// `interleaved` drops a sample's state after taking its time: the check is untimed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

enum State {
    Rig(Box<Rig>),
    Limit,
}

/// The variants: label and ranges a call.
const VARIANTS: [(&str, usize); 2] = [
    ("32 ranges a call", LINUX_RANGES),
    (
        "511 ranges a call",
        HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES as usize,
    ),
];

fn main() {
    let limit =
        PartitionMemory::new("ballast-bench-limit", MOVE, MOVE, PageSize::Base).expect("a memfd");
    // Sanity: a hinted page reads zero, the page below the hinted 1 GiB keeps its bytes.
    let mut r = rig(LINUX_RANGES);
    r.hint();
    let p = r.host.vm(r.vm).expect("the guest").partition;
    let mut page = vec![0xEEu8; PAGE as usize];
    let first = FIRST_BLOCK * BLOCK / PAGE;
    r.host
        .memory()
        .read_guest(p, first, &mut page)
        .expect("a mapped page");
    assert!(page.iter().all(|&b| b == 0), "a hinted page reads zero");
    r.host
        .memory()
        .read_guest(p, first - 1, &mut page)
        .expect("a mapped page");
    assert!(
        page.iter().all(|&b| b == 0x5a),
        "an unhinted page keeps its bytes"
    );
    drop(r);

    let c = interleaved(
        &SAMPLING,
        1,
        |i| match VARIANTS.get(i) {
            Some(&(_, per_call)) => State::Rig(Box::new(rig(per_call))),
            None => {
                fill(&limit);
                State::Limit
            }
        },
        &mut [
            &mut |s| {
                if let State::Rig(r) = s {
                    r.hint();
                }
            },
            &mut |s| {
                if let State::Rig(r) = s {
                    r.hint();
                }
            },
            &mut |_| punch(&limit),
        ],
    );
    let gibs = MOVE as f64 / GIB as f64 * 1e9;
    let ratio = |r: Spread| format!("{} ({} .. {})", sig(r.median), sig(r.min), sig(r.max));
    let lim = VARIANTS.len();
    println!(
        "DM cold discard hint 1 GiB, 2 MiB blocks ({} rounds{}):",
        c.rounds(),
        c.note()
    );
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        println!("    ballast, {name:<18} {}", c.rate(i, gibs).show("GiB/s"));
    }
    println!(
        "    whole-range punch           {}",
        c.rate(lim, gibs).show("GiB/s")
    );
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        println!(
            "    ballast, {name:<18} {} of limit",
            ratio(c.ratio(lim, i))
        );
    }
}
