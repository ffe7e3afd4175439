//! Decode, decode + validate, and encode of a full 4 KiB balloon response (510 ranges),
//! against the physical limit measured in the same run: copying the same 4 KiB once.
//!
//! "Validate" is what a host must do with every returned range before trusting it: check
//! that it is non-empty and inside guest memory, and total the pages.
//!
//! Run: `cargo bench -p ballast-abi --bench dm_codec`
//!
//! Prints, per operation: ballast's ns per message, ranges per second, the baseline's ns
//! per message and the ratio ballast / baseline (1.0 = as fast as touching the bytes).

use std::hint::black_box;

use ballast_benchkit::median_ns;

use ballast_abi::dm::{Body, MAX_RANGES_PER_MESSAGE, Message, PageRange};

/// What a host must check of each returned range before trusting it: a non-empty count
/// and a run that stays inside guest memory. Returns the pages, or `None` on a bad range.
fn validate(ranges: &[PageRange], guest_pages: u64) -> Option<u64> {
    // Branch-free over the whole message so the loop vectorises; a message is accepted or
    // refused whole, so there is nothing to gain from stopping early.
    let (mut pages, mut bad) = (0u64, false);
    for r in ranges {
        let (start, cnt) = (r.start_page(), r.page_cnt() as u64);
        bad |= (cnt == 0) | (start + cnt > guest_pages);
        pages += cnt;
    }
    (!bad).then_some(pages)
}

fn report(name: &str, ours: f64, base: f64, ranges: usize) {
    ballast_benchkit::report(name, "ns/msg", ours, "4 KiB copy", base);
    println!("{:<40} {:>10.1} M ranges/s", "", ranges as f64 / ours * 1e3);
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
    let (samples, iters) = (51, 20_000);

    // Physical limit: one pass over the 4 KiB message.
    let base = median_ns(samples, iters, || {
        copy.copy_from_slice(black_box(&bytes));
        black_box(&copy);
    });

    let decode = median_ns(samples, iters, || {
        let m = Message::parse(black_box(&bytes)).unwrap();
        let Body::BalloonResponse { ranges, .. } = m.body else {
            unreachable!()
        };
        black_box(validate(ranges, guest_pages).unwrap());
    });
    let parse_only = median_ns(samples, iters, || {
        black_box(Message::parse(black_box(&bytes)).unwrap());
    });
    let encode = median_ns(samples, iters, || {
        black_box(black_box(&msg).write(&mut buf).unwrap());
    });
    assert_eq!(buf, bytes);

    println!("DM balloon response, {} ranges, 4096 bytes", ranges.len());
    report("decode", parse_only, base, ranges.len());
    report("decode + validate", decode, base, ranges.len());
    report("encode", encode, base, ranges.len());
}
