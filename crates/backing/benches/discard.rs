//! Releasing 1 GiB of guest memory through ballast's discard, against raw `fallocate` on
//! the same memfd in the same run: one call per range the caller passed (unmerged), and
//! one call for the whole range (the physical limit).
//!
//! Run: `cargo bench -p ballast-backing --bench discard`
//!
//! Before each timed release the memfd is filled (untimed) with `fallocate(0)`, so every
//! page is resident; the figure is GiB released per second (higher is better) and the
//! ratio is ballast's rate over the other's.

use std::time::Instant;

use ballast_backing::{GfnRange, PageSize, PartitionMemory};
use ballast_benchkit::XorShift;
use rustix::fs::FallocateFlags;

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB / 4096;
const SAMPLES: usize = 5;

fn fill(m: &PartitionMemory, ranges: &[GfnRange]) {
    for r in ranges {
        rustix::fs::fallocate(
            m.fd(),
            FallocateFlags::empty(),
            r.byte_offset(),
            r.byte_len(),
        )
        .unwrap();
    }
}

/// Median GiB/s of `release` over SAMPLES runs, each after filling `ranges` again.
fn rate(m: &PartitionMemory, ranges: &[GfnRange], mut release: impl FnMut()) -> f64 {
    let bytes: u64 = ranges.iter().map(|r| r.byte_len()).sum();
    let mut v: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            fill(m, ranges);
            assert_eq!(m.resident_bytes().unwrap(), bytes);
            let t = Instant::now();
            release();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(m.resident_bytes().unwrap(), 0, "everything released");
            bytes as f64 / GIB as f64 / s
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn raw_per_range(m: &PartitionMemory, ranges: &[GfnRange]) {
    for r in ranges {
        rustix::fs::fallocate(
            m.fd(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            r.byte_offset(),
            r.byte_len(),
        )
        .unwrap();
    }
}

fn case(name: &str, m: &PartitionMemory, ranges: &[GfnRange]) {
    let span_start = ranges.iter().map(|r| r.start()).min().unwrap();
    let span_end = ranges.iter().map(|r| r.end()).max().unwrap();
    let ours = rate(m, ranges, || {
        m.discard(ranges).unwrap();
    });
    let unmerged = rate(m, ranges, || raw_per_range(m, ranges));
    // The limit: one punch over the whole span (holes in the span cost nothing extra).
    let limit = rate(m, ranges, || {
        raw_per_range(
            m,
            &[GfnRange::new(span_start, span_end - span_start).unwrap()],
        );
    });
    let syscalls = m.discard(ranges).unwrap().syscalls;
    println!("{name} ({} ranges in, {syscalls} syscalls):", ranges.len());
    println!(
        "    ballast {ours:>7.2} GiB/s | unmerged fallocate {unmerged:>7.2} GiB/s (x{:.2}) | whole-range limit {limit:>7.2} GiB/s ({:.2} of limit)",
        ours / unmerged,
        ours / limit
    );
}

fn main() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let m = PartitionMemory::new("ballast-bench", 2 * GIB, 2 * GIB, PageSize::Base).unwrap();

    // (a) 2 MiB ranges covering 1 GiB, in the order a guest hands them back (shuffled).
    let mut a: Vec<GfnRange> = (0..PAGES / 512)
        .map(|i| GfnRange::new(i * 512, 512).unwrap())
        .collect();
    rng.shuffle(&mut a);
    case("(a) 1 GiB as 2 MiB ranges, shuffled", &m, &a);

    // (a') 2 MiB ranges with a 2 MiB gap between each: nothing to merge.
    let gapped: Vec<GfnRange> = (0..PAGES / 512)
        .map(|i| GfnRange::new(i * 1024, 512).unwrap())
        .collect();
    case("(a') 1 GiB as 2 MiB ranges with gaps", &m, &gapped);

    // (b) every 4 KiB page of 1 GiB, scattered at random.
    let mut b: Vec<GfnRange> = (0..PAGES).map(|g| GfnRange::new(g, 1).unwrap()).collect();
    rng.shuffle(&mut b);
    case("(b) 1 GiB as 4 KiB pages, random order", &m, &b);

    // (b') half the 4 KiB pages of 2 GiB, chosen at random: some neighbours, many gaps.
    let mut half: Vec<GfnRange> = (0..2 * PAGES)
        .filter(|_| rng.next_u64() & 1 == 0)
        .map(|g| GfnRange::new(g, 1).unwrap())
        .collect();
    rng.shuffle(&mut half);
    case("(b') ~1 GiB as random 4 KiB pages of 2 GiB", &m, &half);
}
