//! Balloon responses of many ranges (up to 510 a message) into a Dynamic Memory host
//! whose ballooned set is large and fragmented (tens of thousands of runs), as a guest
//! that ballooned every other page would leave it. Ranges are chosen by the input: long
//! ones over the fragmented part, repeats of one range (the "[0, 2^24) 510 times"
//! attack), short ones anywhere. The host must never panic, never count a page twice or a
//! page the guest does not own, keep every message within its work budget (ownership
//! checks counted here), and report foreign pages as a count and a few runs.
#![no_main]

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use ballast_abi::dm::{Body, Caps, MAX_RANGES_PER_MESSAGE, Message, PageRange, Version};
use ballast_dm::PageSet;
use ballast_dm::vsp::{MAX_REPORTED_RUNS, MAX_WORK_CREDIT, ProtocolOnly, Violation, Vsp, VspConfig, VspEvent};
use libfuzzer_sys::fuzz_target;

/// Guest RAM: 3 GiB, a 1 GiB hole, 1 GiB above 4 GiB.
fn ram(start: u64, count: u64) -> bool {
    start
        .checked_add(count)
        .is_some_and(|end| end <= 0xC0000 || (start >= 0x100000 && end <= 0x140000))
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn range(&mut self) -> PageRange {
        let (start, count) = match self.u8() % 4 {
            // Long, over the fragmented part.
            0 => (
                u64::from(self.u16()) << 2,
                self.u32() & PageRange::MAX_PAGE_CNT,
            ),
            // The whole 2^24 from near 0.
            1 => (u64::from(self.u8()), PageRange::MAX_PAGE_CNT),
            // Short, near guest RAM.
            2 => (
                u64::from(self.u32()) % 0x150000,
                u32::from(self.u16() % 1024),
            ),
            // Anywhere, any length.
            _ => (
                u64::from(self.u32()) << 8 & PageRange::MAX_START_PAGE,
                self.u32() & PageRange::MAX_PAGE_CNT,
            ),
        };
        PageRange::try_new(start, count).unwrap_or_default()
    }
}

/// Steps (messages, ticks, host requests) per input.
const MAX_STEPS: usize = 12;

fn encode(body: Body<'_>) -> Vec<u8> {
    Message::new(1, body).to_bytes().unwrap_or_default()
}

fn balloon_response(more_pages: bool, ranges: &[PageRange]) -> Vec<u8> {
    encode(Body::BalloonResponse { more_pages, ranges })
}

/// Hosts in a balloon with a fragmented ballooned set, one per pattern: (first page,
/// run length, stride, runs).
fn bases() -> &'static [(Vsp, PageSet)] {
    static BASES: OnceLock<Vec<(Vsp, PageSet)>> = OnceLock::new();
    BASES.get_or_init(|| {
        // One large set, and smaller ones that cost less to copy per input.
        [
            (0u64, 1u32, 2u64, 1u64 << 16),
            (1, 2, 3, 16_000),
            (7, 1, 5, 8_000),
            (0, 3, 4, 4_096),
        ]
        .into_iter()
        .map(|(first, len, stride, runs)| {
            let now = Duration::from_secs(50);
            let mut vsp = Vsp::new(VspConfig::default());
            let _ = vsp.channel_opened(Duration::ZERO);
            vsp.receive(
                Duration::ZERO,
                &encode(Body::VersionRequest {
                    version: Version::V2_0,
                    is_last_attempt: false,
                }),
                &ram,
            );
            vsp.receive(
                Duration::ZERO,
                &encode(Body::CapabilitiesReport {
                    caps: Caps::from_u64(0x5f),
                    min_page_cnt: 0,
                    max_page_number: u64::MAX,
                }),
                &ram,
            );
            vsp.tick(now);
            vsp.balloon(now, 1 << 30).expect("balloon starts");
            let ranges: Vec<PageRange> = (0..runs)
                .filter_map(|i| PageRange::try_new(first + i * stride, len))
                .collect();
            for c in ranges.chunks(MAX_RANGES_PER_MESSAGE) {
                vsp.receive(now, &balloon_response(true, c), &ram);
            }
            while vsp.poll_event().is_some() {}
            while vsp.poll_transmit(&mut [0; ballast_abi::dm::MAX_MESSAGE_SIZE]).is_some() {}
            let model = vsp.ballooned().clone();
            assert_eq!(model.run_count() as u64, runs);
            (vsp, model)
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let bases = bases();
    let (base, base_model) = &bases[usize::from(input.u8()) % bases.len()];
    let mut vsp = base.clone();
    let mut model = base_model.clone();
    let mut now = Duration::from_secs(50);

    // A few messages per input: each may cost a whole work budget, and the fuzzer gains
    // more from many inputs than from long ones.
    for _ in 0..MAX_STEPS {
        if input.0.is_empty() {
            break;
        }
        let op = input.u8();
        match op % 8 {
            0..=4 => {
                let n = usize::from(input.u16()) % (MAX_RANGES_PER_MESSAGE + 1);
                let mut ranges = Vec::with_capacity(n);
                let mut repeat = PageRange::default();
                for _ in 0..n {
                    // Often the same range again: repeats cost a walk each.
                    if ranges.is_empty() || input.u8() % 4 != 0 {
                        repeat = input.range();
                    }
                    ranges.push(repeat);
                }
                let named: u64 = ranges.iter().map(|r| u64::from(r.page_cnt())).sum();
                let checks = Cell::new(0u64);
                let oracle = |s: u64, c: u64| {
                    checks.set(checks.get() + 1);
                    ram(s, c)
                };
                let m = balloon_response(op & 0x80 != 0, &ranges);
                // All the message may spend: the guest's credit plus its own budget,
                // never more than one full message's.
                let allowed = vsp
                    .work_credit()
                    .saturating_add(Vsp::work_budget(n))
                    .min(MAX_WORK_CREDIT);
                vsp.receive(now, &m, &oracle);
                assert!(
                    checks.get() <= allowed,
                    "{} ownership checks for {n} ranges, {allowed} units allowed",
                    checks.get()
                );
                let (mut accepted, mut rejected) = (0, 0);
                while let Some(e) = vsp.poll_event() {
                    match e {
                        VspEvent::PagesReturned(rs) => {
                            for r in rs {
                                let (s, c) = (r.start(), r.count());
                                assert!(
                                    c > 0 && ram(s, c),
                                    "counted a page the guest does not own"
                                );
                                assert!(!model.intersects(r), "counted a page twice");
                                model.insert(r);
                                accepted += c;
                            }
                        }
                        VspEvent::ProtocolViolation {
                            what:
                                Violation::ForeignPages {
                                    pages,
                                    unchecked,
                                    runs,
                                },
                        } => {
                            assert!(pages + unchecked > 0 && runs.len() <= MAX_REPORTED_RUNS);
                            assert!(runs.iter().map(|r| r.1).sum::<u64>() <= pages + unchecked);
                            rejected += pages;
                        }
                        _ => {}
                    }
                }
                assert!(accepted + rejected <= named);
            }
            5 => {
                now = now.saturating_add(Duration::from_secs(u64::from(input.u8())));
                vsp.tick(now);
            }
            6 => {
                let _ = vsp.balloon(now, u64::from(input.u32()));
            }
            _ => {
                let pages = u64::from(input.u32());
                if let Ok(runs) = vsp.unballoon(now, pages, &mut ProtocolOnly) {
                    for r in runs {
                        assert!(
                            model.contains_all(r),
                            "unballooned a page never ballooned"
                        );
                        model.remove(r);
                    }
                }
            }
        }
        while vsp.poll_event().is_some() {}
        while vsp.poll_transmit(&mut [0; ballast_abi::dm::MAX_MESSAGE_SIZE]).is_some() {}
        assert_eq!(vsp.ballooned().len(), model.len());
    }
    // The whole set once, at the end: per step it would cost more than the messages.
    assert_eq!(vsp.ballooned(), &model);
});
