//! Host CPU per guest message at its worst: what one hostile 4 KiB balloon response
//! costs the VSP, against an honest 510-range one, measured in the same run with their
//! samples interleaved.
//!
//! The guest ballooned every other page of 2 GiB (262,144 one-page runs in the host's
//! ballooned set). Hostile messages: 510 ranges, each `[0, 2^24)`, with the gaps between
//! the ballooned pages the guest's (each gap is checked and taken) or not (each gap is
//! checked and rejected), and 510 ranges wholly outside guest RAM. The honest message:
//! 510 new 2 MiB blocks of guest RAM, over the same fragmented set. Each sample sends
//! [`MESSAGES`] messages of one kind to a fresh copy of the host.
//!
//! A last row compares by ring bytes rather than messages: hostile one-range messages,
//! each `[0, 2^24)`, as many as fill the ring bytes of one honest message (payload plus
//! the 16-byte VMBus descriptor and 8-byte trailer: 85 of them), against that one honest
//! message; figures are per 4 KiB of ring bytes.
//!
//! Run: `cargo bench -p ballast-dm --bench dm_hostile`
//!
//! The honest message and the three hostile kinds are measured interleaved (one sample of
//! each per round, the order rotating) for as many rounds as `ballast_benchkit::Sampling`'s
//! rule asks: at least 21, until every median's 95% interval is within 2%, at most 20 s.
//! Prints, per hostile kind: µs per message with its spread (min .. max), beside the
//! honest message's, and the ratio hostile / honest (the median of the per-round ratios,
//! with its spread; the goal: within 10).

use std::hint::black_box;
use std::time::Duration;

use ballast_abi::dm::{
    Body, Caps, MAX_MESSAGE_SIZE, MAX_RANGES_PER_MESSAGE, Message, PageRange, Version,
};
use ballast_benchkit::{Sampling, interleaved, report_comparison};
use ballast_dm::vsp::{GuestOwnership, Vsp, VspConfig, VspState};

/// Guest RAM: 2 GiB from page 0; the honest blocks go above it, in RAM too.
const RAM: u64 = 1 << 19;
const GUEST: std::ops::Range<u64> = 0..(RAM + (1 << 20));
/// Messages per sample.
const MESSAGES: u64 = 16;
/// Each sample is a few ms; the interval is 2% because the samples share two cores with
/// the set's clone before each one.
const SAMPLING: Sampling = Sampling {
    min_rounds: 21,
    max_rounds: 1001,
    budget: Duration::from_secs(20),
    rel_ci: 0.02,
};

fn msg(body: Body<'_>) -> Vec<u8> {
    Message::new(1, body).to_bytes().expect("encodes")
}

fn response(rs: &[(u64, u32)]) -> Vec<u8> {
    let ranges: Vec<PageRange> = rs
        .iter()
        .map(|&(s, n)| PageRange::try_new(s, n).expect("fits"))
        .collect();
    msg(Body::BalloonResponse {
        more_pages: true,
        ranges: &ranges,
    })
}

/// A host in a balloon, with every other page of [`RAM`] ballooned.
fn fragmented() -> Vsp {
    let now = Duration::from_secs(100);
    let mut vsp = Vsp::new(VspConfig::default());
    vsp.channel_opened(Duration::ZERO).unwrap();
    let caps = Caps::from_u64(0x1f);
    vsp.receive(
        Duration::ZERO,
        &msg(Body::VersionRequest {
            version: Version::V2_0,
            is_last_attempt: false,
        }),
        &GUEST,
    );
    vsp.receive(
        Duration::ZERO,
        &msg(Body::CapabilitiesReport {
            caps,
            min_page_cnt: 0,
            max_page_number: u64::MAX,
        }),
        &GUEST,
    );
    vsp.tick(now);
    vsp.balloon(now, 1 << 30).unwrap();
    let pages: Vec<(u64, u32)> = (0..RAM).step_by(2).map(|p| (p, 1)).collect();
    for c in pages.chunks(MAX_RANGES_PER_MESSAGE) {
        vsp.receive(now, &response(c), &GUEST);
    }
    while vsp.poll_event().is_some() {}
    while vsp.poll_transmit(&mut [0; MAX_MESSAGE_SIZE]).is_some() {}
    assert_eq!(vsp.ballooned().len(), RAM / 2);
    assert_eq!(vsp.state(), VspState::Balloon);
    vsp
}

fn main() {
    let now = Duration::from_secs(100);
    let base = fragmented();
    let hostile = response(&[(0, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE]);
    let outside = response(&[(1 << 30, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE]);
    let honest: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|m| {
            let blocks: Vec<(u64, u32)> = (0..MAX_RANGES_PER_MESSAGE as u64)
                .map(|i| (RAM + (m * MAX_RANGES_PER_MESSAGE as u64 + i) * 512, 512))
                .collect();
            response(&blocks)
        })
        .collect();
    let even_only = |s: u64, n: u64| n == 1 && s % 2 == 0 && s < RAM;
    let kinds: [(&str, &[u8], &dyn GuestOwnership); 3] = [
        ("hostile, gaps owned", &hostile, &GUEST),
        ("hostile, gaps foreign", &hostile, &even_only),
        ("hostile, outside RAM", &outside, &GUEST),
    ];
    let run = |v: &mut Vsp, bytes: &[u8], oracle: &dyn GuestOwnership| {
        for _ in 0..MESSAGES {
            v.receive(now, bytes, oracle);
            while black_box(v.poll_event()).is_some() {}
        }
    };
    let c = interleaved(
        &SAMPLING,
        MESSAGES * 1000,
        |_| base.clone(),
        &mut [
            &mut |v: &mut Vsp| {
                for m in &honest {
                    v.receive(now, m, &GUEST);
                    while black_box(v.poll_event()).is_some() {}
                }
            },
            &mut |v| run(v, kinds[0].1, kinds[0].2),
            &mut |v| run(v, kinds[1].1, kinds[1].2),
            &mut |v| run(v, kinds[2].1, kinds[2].2),
        ],
    );
    println!(
        "host CPU per 4 KiB balloon response, set of {} runs, {} rounds{} x {MESSAGES} messages",
        RAM / 2,
        c.rounds(),
        c.note()
    );
    for (i, (name, ..)) in kinds.iter().enumerate() {
        report_comparison(name, "us/msg", &c, i + 1, "honest 510 x 2 MiB", 0);
    }

    // Per ring byte: small messages must not buy more work per byte than large ones.
    let one = response(&[(0, PageRange::MAX_PAGE_CNT)]);
    let ring = |m: &[u8]| m.len() as u64 + 24;
    let per_honest = ring(&honest[0]) / ring(&one);
    let c = interleaved(
        &SAMPLING,
        MESSAGES * 1000,
        |_| base.clone(),
        &mut [
            &mut |v: &mut Vsp| {
                for m in &honest {
                    v.receive(now, m, &GUEST);
                    while black_box(v.poll_event()).is_some() {}
                }
            },
            &mut |v| {
                for _ in 0..MESSAGES * per_honest {
                    v.receive(now, &one, &GUEST);
                    while black_box(v.poll_event()).is_some() {}
                }
            },
        ],
    );
    report_comparison(
        &format!("hostile, {per_honest} one-range msgs / 4 KiB"),
        "us/4KiB",
        &c,
        1,
        "honest 510 x 2 MiB",
        0,
    );
}
