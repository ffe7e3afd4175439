//! The memory model's hot paths against a plain `Vec` free list measured in the same run.
//!
//! Run: `cargo bench -p ballast-core --bench memory`
//!
//! The baseline is the least any allocator can do: pop a frame number off a `Vec` and push
//! it back. Each group is measured interleaved with its baseline (one sample of each per
//! round, the order rotating) for as many rounds as `ballast_benchkit::Sampling`'s rule
//! asks (below). Each line prints ballast's median with its spread (min .. max), the
//! baseline's, and the ratio (the median of the per-round ratios) with its spread.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use ballast_abi::hv::{Control, HvProximityDomainInfo, HypercallCode, HypercallOutput};
use ballast_abi::xen::{DOMID_SELF, MemoryOp, XenMemoryReservation};
use ballast_benchkit::{Comparison, Sampling, interleaved, report_comparison};
use ballast_core::frame::{Frames, METADATA_BYTES_PER_FRAME, NO_FRAME, NodeSel};
use ballast_core::{Config, FlatMemory, Hypervisor, ROOT_ID};
use zerocopy::IntoBytes;

/// Calls per sample of the frame benches (order-9 pairs take about 1 µs each).
const ITERS: u64 = 10_000;
/// Batches of 512 per sample.
const BATCHES: u64 = 100;
/// One hypercall (about 10 µs) per sample: many short samples, so the rule asks for
/// at least 201 rounds and allows up to 20,001 within the same 10 s.
const CALLS: Sampling = Sampling {
    min_rounds: 201,
    max_rounds: 20_001,
    budget: Duration::from_secs(10),
    rel_ci: 0.01,
};

fn line(name: &str, unit: &str, c: &Comparison, i: usize, base: &str) {
    report_comparison(name, unit, c, i, base, 0);
}

fn frames_benches() {
    // 4 GiB of frames on two nodes.
    let frames = RefCell::new(Frames::new(&[1 << 19, 1 << 19]));
    let mut vec_list: Vec<u32> = (0..1u32 << 20).collect();

    let c = interleaved(
        &Sampling::DEFAULT,
        ITERS,
        |_| (),
        &mut [
            &mut |_| {
                for _ in 0..ITERS {
                    let m = vec_list.pop().unwrap();
                    vec_list.push(black_box(m));
                }
            },
            &mut |_| {
                let mut frames = frames.borrow_mut();
                for _ in 0..ITERS {
                    let m = frames.alloc(NodeSel::Any, 0, NO_FRAME).unwrap();
                    frames.free(black_box(m), 0);
                }
            },
            &mut |_| {
                let mut frames = frames.borrow_mut();
                for _ in 0..ITERS {
                    let m = frames.alloc(NodeSel::Any, 9, NO_FRAME).unwrap();
                    frames.free(black_box(m), 9);
                }
            },
            &mut |_| {
                let mut frames = frames.borrow_mut();
                for _ in 0..ITERS {
                    let m = frames.alloc(NodeSel::Exact(1), 0, NO_FRAME).unwrap();
                    frames.free(black_box(m), 0);
                }
            },
        ],
    );
    let pair = "Vec pop+push";
    line("order-0 alloc+free pair", "ns", &c, 1, pair);
    line("order-9 alloc+free pair", "ns", &c, 2, pair);
    line("order-0 pair, exact node 1", "ns", &c, 3, pair);

    // A batch: 512 allocations, then 512 frees, as a balloon or populate does; this goes
    // through the cache's refill and drain.
    let (mut held_vec, mut held) = (Vec::with_capacity(512), Vec::with_capacity(512));
    let c = interleaved(
        &Sampling::DEFAULT,
        BATCHES * 512,
        |_| (),
        &mut [
            &mut |_| {
                for _ in 0..BATCHES {
                    for _ in 0..512 {
                        held_vec.push(vec_list.pop().unwrap());
                    }
                    for m in held_vec.drain(..) {
                        vec_list.push(m);
                    }
                }
            },
            &mut |_| {
                let mut frames = frames.borrow_mut();
                for _ in 0..BATCHES {
                    for _ in 0..512 {
                        held.push(frames.alloc(NodeSel::Any, 0, NO_FRAME).unwrap());
                    }
                    for m in held.drain(..) {
                        frames.free(m, 0);
                    }
                }
            },
        ],
    );
    line("order-0 pair, batches of 512", "ns", &c, 1, pair);
    frames.borrow().check().unwrap();
    println!("metadata: {METADATA_BYTES_PER_FRAME} bytes per 4 KiB frame");
}

/// The baseline free list's work for a pool moving `n` pages between partitions at its
/// cheapest: move `n` frame numbers from one `Vec` to another and back (`2 n` page moves).
struct VecMove {
    from: Vec<u32>,
    to: Vec<u32>,
}

impl VecMove {
    fn new() -> Self {
        VecMove {
            from: (0..1u32 << 20).collect(),
            to: Vec::with_capacity(1 << 20),
        }
    }

    fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.to.push(self.from.pop().unwrap());
        }
        for _ in 0..n {
            self.from.push(self.to.pop().unwrap());
        }
    }
}

/// Times `put` and `take`, each the other's inverse, interleaved with the baseline's move
/// of 512 pages out and back. Before each sample the state is brought, untimed, to what
/// the variant needs: before a `put` (after `refresh`) nothing is put, before a `take`
/// something is; `tidy` runs last. Returns ns per page, with `pages` the pages each call
/// moves.
fn put_take<S>(
    state: S,
    pages: u64,
    mut refresh: impl FnMut(&mut S),
    put: impl Fn(&mut S),
    take: impl Fn(&mut S),
    mut tidy: impl FnMut(&mut S),
) -> (Comparison, S) {
    // The state, and whether it holds what `put` puts.
    let state = RefCell::new((state, false));
    let put = |s: &mut (S, bool)| {
        put(&mut s.0);
        s.1 = true;
    };
    let take = |s: &mut (S, bool)| {
        take(&mut s.0);
        s.1 = false;
    };
    let mut base = VecMove::new();
    let c = interleaved(
        &CALLS,
        1,
        |i| {
            let s = &mut *state.borrow_mut();
            match i {
                1 if s.1 => take(s),
                2 if !s.1 => put(s),
                _ => {}
            }
            if i == 1 {
                refresh(&mut s.0);
            }
            tidy(&mut s.0);
        },
        &mut [
            &mut |_| base.run(512),
            &mut |_| put(&mut state.borrow_mut()),
            &mut |_| take(&mut state.borrow_mut()),
        ],
    )
    .per_item(&[1024, pages, pages]);
    (c, state.into_inner().0)
}

fn hyperv_benches() {
    let mut hv = Hypervisor::new(Config::with_nodes(vec![1 << 19, 1 << 19])).unwrap();
    let child = hv
        .create_guest(u32::MAX, HvProximityDomainInfo::ANY)
        .unwrap();
    // Deposit: the root's GPA pages (its free memory) into the child's pool, 511 per call;
    // withdraw: 512 per call back out. Each round deposits fresh pages the root's
    // allocator offers, as Linux's root does with alloc_page.
    let deposit = Control::for_call(HypercallCode::HvCallDepositMemory, 511, 0).into_bits();
    let withdraw = Control::for_call(HypercallCode::HvCallWithdrawMemory, 512, 0).into_bits();
    let mut dep_in = vec![0u8; 4096];
    dep_in[..8].copy_from_slice(&child.0.to_le_bytes());
    let mut wd_in = [0u8; 16];
    wd_in[..8].copy_from_slice(&child.0.to_le_bytes());
    // The hypervisor, the deposit's input, the output buffer and the deposits made.
    type S = (Hypervisor, Vec<u8>, Vec<u8>, usize);
    let (c, s) = put_take(
        (hv, dep_in, vec![0u8; 4096], 0usize),
        511,
        |s: &mut S| {
            // The pages: 511 consecutive free frames of the root.
            let first = (s.3 % 64) * 512 + 1;
            s.3 += 1;
            for k in 0..511 {
                let at = 8 + 8 * k;
                s.1[at..at + 8].copy_from_slice(&(first as u64 + k as u64).to_le_bytes());
            }
        },
        |s: &mut S| {
            let r = s.0.hypercall(ROOT_ID, deposit, &s.1, &mut s.2);
            assert_eq!(r, HypercallOutput::success(511).into_bits(), "deposit");
        },
        |s: &mut S| {
            let r = HypercallOutput::from_bits(s.0.hypercall(ROOT_ID, withdraw, &wd_in, &mut s.2));
            assert_eq!(r.reps_completed(), 511, "withdraw drains the pool");
        },
        |s: &mut S| {
            s.0.take_effects();
        },
    );
    s.0.check().unwrap();
    let base = "Vec free list";
    line("HvDepositMemory, 511 pages", "ns/page", &c, 1, base);
    line("HvWithdrawMemory, 512 asked", "ns/page", &c, 2, base);
}

fn xen_benches() {
    let mut hv = Hypervisor::new(Config::with_nodes(vec![1 << 19, 1 << 19])).unwrap();
    let guest = hv
        .create_guest(u32::MAX, HvProximityDomainInfo::ANY)
        .unwrap();
    let domid = hv.partition(guest).unwrap().domid();
    let mut mem = FlatMemory::new(0x10000, 0x2000);
    let res = XenMemoryReservation {
        extent_start: 0x11000,
        nr_extents: 512,
        domid: DOMID_SELF,
        ..Default::default()
    };
    mem.bytes[..32].copy_from_slice(res.as_bytes());
    for i in 0..512u64 {
        let at = 0x1000 + 8 * i as usize;
        mem.bytes[at..at + 8].copy_from_slice(&(0x4_0000 + i).to_le_bytes());
    }
    let op = |s: &mut (Hypervisor, FlatMemory), cmd: MemoryOp| {
        s.0.memory_op_to_completion(domid, cmd.0 as u64, 0x10000, &mut s.1)
            .ret
    };
    let (c, s) = put_take(
        (hv, mem),
        512,
        |_| {},
        |s| assert_eq!(op(s, MemoryOp::POPULATE_PHYSMAP), 512, "populate"),
        |s| assert_eq!(op(s, MemoryOp::DECREASE_RESERVATION), 512, "decrease"),
        |s| {
            s.0.take_effects();
        },
    );
    s.0.check().unwrap();
    let base = "Vec free list";
    line("populate_physmap, 512 order-0", "ns/page", &c, 1, base);
    line("decrease_reservation, 512 order-0", "ns/page", &c, 2, base);
}

fn main() {
    frames_benches();
    hyperv_benches();
    xen_benches();
}
