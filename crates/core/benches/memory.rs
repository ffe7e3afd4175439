//! The memory model's hot paths against a plain `Vec` free list measured in the same run.
//!
//! Run: `cargo bench -p ballast-core --bench memory`
//!
//! The baseline is the least any allocator can do: pop a frame number off a `Vec` and push
//! it back. Each line prints ballast's median, the baseline's and the ratio.

use std::hint::black_box;

use std::time::Instant;

use ballast_abi::hv::{Control, HvProximityDomainInfo, HypercallCode, HypercallOutput};
use ballast_abi::xen::{DOMID_SELF, MemoryOp, XenMemoryReservation};
use ballast_benchkit::{median_ns, median_ns_per, report};
use ballast_core::frame::{Frames, METADATA_BYTES_PER_FRAME, NO_FRAME, NodeSel};
use ballast_core::{Config, FlatMemory, Hypervisor, ROOT_ID};
use zerocopy::IntoBytes;

const SAMPLES: usize = 31;

fn frames_benches() {
    // 4 GiB of frames on two nodes.
    let mut frames = Frames::new(&[1 << 19, 1 << 19]);
    let mut vec_list: Vec<u32> = (0..1u32 << 20).collect();

    let base_pair = median_ns(SAMPLES, 200_000, || {
        let m = vec_list.pop().unwrap();
        vec_list.push(black_box(m));
    });
    let pair0 = median_ns(SAMPLES, 200_000, || {
        let m = frames.alloc(NodeSel::Any, 0, NO_FRAME).unwrap();
        frames.free(black_box(m), 0);
    });
    report(
        "order-0 alloc+free pair",
        "ns",
        pair0,
        "Vec pop+push",
        base_pair,
    );

    // A batch: 512 allocations, then 512 frees, as a balloon or populate does; this goes
    // through the cache's refill and drain.
    let mut held = Vec::with_capacity(512);
    let base_batch = median_ns_per(SAMPLES, 2_000, 512, || {
        for _ in 0..512 {
            held.push(vec_list.pop().unwrap());
        }
        for m in held.drain(..) {
            vec_list.push(m);
        }
    });
    let batch0 = median_ns_per(SAMPLES, 2_000, 512, || {
        for _ in 0..512 {
            held.push(frames.alloc(NodeSel::Any, 0, NO_FRAME).unwrap());
        }
        for m in held.drain(..) {
            frames.free(m, 0);
        }
    });
    report(
        "order-0 pair, batches of 512",
        "ns",
        batch0,
        "Vec pop+push",
        base_batch,
    );

    let pair9 = median_ns(SAMPLES, 100_000, || {
        let m = frames.alloc(NodeSel::Any, 9, NO_FRAME).unwrap();
        frames.free(black_box(m), 9);
    });
    report(
        "order-9 alloc+free pair",
        "ns",
        pair9,
        "Vec pop+push",
        base_pair,
    );

    let exact = median_ns(SAMPLES, 200_000, || {
        let m = frames.alloc(NodeSel::Exact(1), 0, NO_FRAME).unwrap();
        frames.free(black_box(m), 0);
    });
    report(
        "order-0 pair, exact node 1",
        "ns",
        exact,
        "Vec pop+push",
        base_pair,
    );
    frames.check().unwrap();
    println!("metadata: {METADATA_BYTES_PER_FRAME} bytes per 4 KiB frame");
}

/// The same work on the baseline free list: move `n` frame numbers from one `Vec` to
/// another, as a pool moving pages between partitions at its cheapest.
fn vec_move_ns_per_page(n: usize) -> f64 {
    let mut from: Vec<u32> = (0..1u32 << 20).collect();
    let mut to: Vec<u32> = Vec::with_capacity(1 << 20);
    median_ns_per(SAMPLES, 2_000, n as u64, || {
        for _ in 0..n {
            to.push(from.pop().unwrap());
        }
        for _ in 0..n {
            from.push(to.pop().unwrap());
        }
    }) / 2.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn hyperv_benches(base: f64) {
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
    let mut out = vec![0u8; 4096];
    let (mut dep_ns, mut wd_ns) = (Vec::new(), Vec::new());
    for round in 0..2_000 {
        // The pages: 511 consecutive free frames of the root (untimed choice).
        let first = (round % 64) * 512 + 1;
        for i in 0..511 {
            let at = 8 + 8 * i;
            dep_in[at..at + 8].copy_from_slice(&(first as u64 + i as u64).to_le_bytes());
        }
        let t = Instant::now();
        let r = hv.hypercall(ROOT_ID, deposit, &dep_in, &mut out);
        dep_ns.push(t.elapsed().as_nanos() as f64 / 511.0);
        assert_eq!(r, HypercallOutput::success(511).into_bits(), "deposit");
        let t = Instant::now();
        let r = HypercallOutput::from_bits(hv.hypercall(ROOT_ID, withdraw, &wd_in, &mut out));
        wd_ns.push(t.elapsed().as_nanos() as f64 / 511.0);
        assert_eq!(r.reps_completed(), 511, "withdraw drains the pool");
        hv.take_effects();
    }
    hv.check().unwrap();
    report(
        "HvDepositMemory, 511 pages",
        "ns/page",
        median(dep_ns),
        "Vec free list",
        base,
    );
    report(
        "HvWithdrawMemory, 512 asked",
        "ns/page",
        median(wd_ns),
        "Vec free list",
        base,
    );
}

fn xen_benches(base: f64) {
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
    let (mut pop_ns, mut dec_ns) = (Vec::new(), Vec::new());
    for _ in 0..2_000 {
        let t = Instant::now();
        let r = hv.memory_op_to_completion(
            domid,
            MemoryOp::POPULATE_PHYSMAP.0 as u64,
            0x10000,
            &mut mem,
        );
        pop_ns.push(t.elapsed().as_nanos() as f64 / 512.0);
        assert_eq!(r.ret, 512, "populate");
        let t = Instant::now();
        let r = hv.memory_op_to_completion(
            domid,
            MemoryOp::DECREASE_RESERVATION.0 as u64,
            0x10000,
            &mut mem,
        );
        dec_ns.push(t.elapsed().as_nanos() as f64 / 512.0);
        assert_eq!(r.ret, 512, "decrease");
        hv.take_effects();
    }
    hv.check().unwrap();
    report(
        "populate_physmap, 512 order-0",
        "ns/page",
        median(pop_ns),
        "Vec free list",
        base,
    );
    report(
        "decrease_reservation, 512 order-0",
        "ns/page",
        median(dec_ns),
        "Vec free list",
        base,
    );
}

fn main() {
    frames_benches();
    let base = vec_move_ns_per_page(512);
    hyperv_benches(base);
    xen_benches(base);
}
