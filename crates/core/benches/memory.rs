//! The memory model's hot paths against a plain `Vec` free list measured in the same run.
//!
//! Run: `cargo bench -p ballast-core --bench memory`
//!
//! The baseline is the least any allocator can do: pop a frame number off a `Vec` and push
//! it back. Each line prints ballast's median, the baseline's and the ratio.

use std::hint::black_box;

use ballast_benchkit::{median_ns, median_ns_per, report};
use ballast_core::frame::{Frames, NO_FRAME, NodeSel, METADATA_BYTES_PER_FRAME};

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
    report("order-0 alloc+free pair", "ns", pair0, "Vec pop+push", base_pair);

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
    report("order-0 pair, batches of 512", "ns", batch0, "Vec pop+push", base_batch);

    let pair9 = median_ns(SAMPLES, 100_000, || {
        let m = frames.alloc(NodeSel::Any, 9, NO_FRAME).unwrap();
        frames.free(black_box(m), 9);
    });
    report("order-9 alloc+free pair", "ns", pair9, "Vec pop+push", base_pair);

    let exact = median_ns(SAMPLES, 200_000, || {
        let m = frames.alloc(NodeSel::Exact(1), 0, NO_FRAME).unwrap();
        frames.free(black_box(m), 0);
    });
    report("order-0 pair, exact node 1", "ns", exact, "Vec pop+push", base_pair);
    frames.check().unwrap();
    println!("metadata: {METADATA_BYTES_PER_FRAME} bytes per 4 KiB frame");
}

fn main() {
    frames_benches();
}
