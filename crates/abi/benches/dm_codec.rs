//! Decode, decode + validate, and encode of a full 4 KiB balloon response (510 ranges),
//! against the physical limit measured in the same run: copying the same 4 KiB once.
//!
//! "Validate" is what a host must do with every returned range before trusting it: check
//! that it is non-empty and inside guest memory, and total the pages. It is the library's
//! own check, [`ballast_abi::dm::check_ranges`], as an embedder calls it after
//! [`Message::parse`].
//!
//! Run: `cargo bench -p ballast-abi --bench dm_codec`
//!
//! The four (the copy and the three operations) are measured interleaved, one sample of
//! 2,000 messages each per round, for as many rounds as `ballast_benchkit::Sampling`'s
//! default rule asks (at least 21, until every median's 95% interval is within 1%, at
//! most 10 s). Prints, per operation: ballast's ns per message with its spread
//! (min .. max), ranges per second, the baseline's ns per message and the ratio
//! ballast / baseline (the median of the per-round ratios, 1.0 = as fast as touching the
//! bytes) with its spread.

use std::hint::black_box;

use ballast_benchkit::{Comparison, Sampling, interleaved, report_comparison, sig};

use ballast_abi::dm::{Body, MAX_RANGES_PER_MESSAGE, Message, PageRange, check_ranges};

/// Messages per sample: about 1-20 µs each, so a sample is far above the timer's grain.
const ITERS: u64 = 2_000;

fn report(name: &str, c: &Comparison, i: usize, ranges: usize) {
    report_comparison(name, "ns/msg", c, i, "4 KiB copy", 0);
    let per_s = ranges as f64 / c.spread(i).median * 1e3;
    println!("{:<34} {} M ranges/s", "", sig(per_s));
}

fn main() {
    // A 2 MiB-block balloon response as Linux sends it: 510 ranges of 512 pages.
    let ranges: Vec<PageRange> = (0..MAX_RANGES_PER_MESSAGE as u64)
        .map(|i| PageRange::try_new(0x10_0000 + 512 * i, 512).unwrap())
        .collect();
    let msg = Message::new(
        7,
        Body::BalloonResponse {
            more_pages: true,
            ranges: &ranges,
        },
    );
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(bytes.len(), 4096);
    let guest_pages = 1u64 << 24;
    let mut buf = vec![0u8; 4096];
    let mut copy = vec![0u8; 4096];

    let c = interleaved(
        &Sampling::DEFAULT,
        ITERS,
        |_| (),
        &mut [
            // Physical limit: one pass over the 4 KiB message.
            &mut |_| {
                for _ in 0..ITERS {
                    copy.copy_from_slice(black_box(&bytes));
                    black_box(&copy);
                }
            },
            &mut |_| {
                for _ in 0..ITERS {
                    black_box(Message::parse(black_box(&bytes)).unwrap());
                }
            },
            &mut |_| {
                for _ in 0..ITERS {
                    let m = Message::parse(black_box(&bytes)).unwrap();
                    let Body::BalloonResponse { ranges, .. } = m.body else {
                        unreachable!()
                    };
                    black_box(check_ranges(ranges, guest_pages).unwrap());
                }
            },
            &mut |_| {
                for _ in 0..ITERS {
                    black_box(black_box(&msg).write(&mut buf).unwrap());
                }
            },
        ],
    );
    assert_eq!(buf, bytes);

    println!(
        "DM balloon response, {} ranges, 4096 bytes, {} rounds{}",
        ranges.len(),
        c.rounds(),
        c.note()
    );
    report("decode", &c, 1, ranges.len());
    report("decode + validate", &c, 2, ranges.len());
    report("encode", &c, 3, ranges.len());
}
