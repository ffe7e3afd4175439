//! Tests: ballast's numbered guest cases (`tNN_…`, each what Linux's
//! `drivers/hv/hv_balloon.c` does with a host message, with the message's bytes where they
//! matter), one or more per item of ballast's guest checklist not covered by those
//! (`checklist_NN_…`: what a VSC must do, as Linux does it), and a property test over
//! arbitrary host traffic.

use super::*;
use ballast_abi::dm::InfoType;
use proptest::prelude::*;

/// The gfn range `start .. start + count` (the tests name only ranges below the limit).
fn r(start: u64, count: u64) -> GfnRange {
    GfnRange::new(start, count).unwrap()
}

const MIB: u64 = 256;
const GIB: u64 = 1024 * MIB;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn bytes(trans_id: u32, body: Body<'_>) -> Vec<u8> {
    Message::new(trans_id, body).to_bytes().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn drain(vsc: &mut Vsc) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| poll(vsc)).collect()
}

/// The next message, in a vector of its own.
fn poll(vsc: &mut Vsc) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_MESSAGE_SIZE];
    vsc.poll_transmit(&mut buf).map(|n| buf[..n].to_vec())
}

fn events(vsc: &mut Vsc) -> Vec<VscEvent> {
    std::iter::from_fn(|| vsc.poll_event()).collect()
}

fn parse(b: &[u8]) -> Message<'_> {
    Message::parse(b).unwrap()
}

fn trans_id(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[4..8].try_into().unwrap())
}

fn version_response(accepted: bool) -> Vec<u8> {
    bytes(
        0,
        Body::VersionResponse {
            is_accepted: accepted,
        },
    )
}

fn caps_response(accepted: bool) -> Vec<u8> {
    bytes(
        0,
        Body::CapabilitiesResponse {
            is_accepted: accepted,
            hot_remove: false,
            suppress_pressure_reports: false,
        },
    )
}

fn balloon_request(pages: u32) -> Vec<u8> {
    bytes(0, Body::BalloonRequest { num_pages: pages })
}

fn unballoon_request(more: bool, ranges: &[(u64, u32)]) -> Vec<u8> {
    let r: Vec<PageRange> = ranges
        .iter()
        .map(|&(s, n)| PageRange::try_new(s, n).unwrap())
        .collect();
    bytes(
        0,
        Body::UnballoonRequest {
            more_pages: more,
            ranges: &r,
        },
    )
}

/// A VSC through version and capabilities at time 0, queues and events emptied.
fn connected(config: VscConfig, guest: &mut SimGuest) -> Vsc {
    let mut vsc = Vsc::new(config);
    vsc.connect(Duration::ZERO);
    drain(&mut vsc);
    vsc.receive(Duration::ZERO, &version_response(true), guest);
    drain(&mut vsc);
    vsc.receive(Duration::ZERO, &caps_response(true), guest);
    assert!(matches!(vsc.state(), VscState::Connected { .. }));
    events(&mut vsc);
    vsc
}

/// The ranges of a balloon response, with its more_pages flag.
fn balloon_ranges(b: &[u8]) -> (bool, Vec<(u64, u64)>) {
    match parse(b).body {
        Body::BalloonResponse { more_pages, ranges } => (
            more_pages,
            ranges
                .iter()
                .map(|r| (r.start_page(), u64::from(r.page_cnt())))
                .collect(),
        ),
        other => panic!("not a balloon response: {other:?}"),
    }
}

fn set_of(ranges: &[(u64, u64)]) -> PageSet {
    let mut s = PageSet::new();
    for &(a, n) in ranges {
        s.insert(r(a, n));
    }
    s
}

/// A guest whose only free pages are `ranges`, with the floor off, ballooned completely.
fn balloon_exactly(ranges: &[(u64, u64)], total: u64) -> (Vsc, SimGuest) {
    let mut g = SimGuest::new(total, 0);
    let mut n = 0;
    for &(s, c) in ranges {
        n += g.vacate(r(s, c));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(1), &balloon_request(n as u32), &mut g);
    drain(&mut vsc);
    events(&mut vsc);
    assert_eq!(vsc.ballooned(), &set_of(ranges));
    (vsc, g)
}

// ---- T4: version negotiation ----------------------------------------------------------

#[test]
fn t04_legacy_chain_offers_2_0_then_1_0_then_0_3_last_and_fails() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    assert_eq!(
        drain(&mut vsc),
        vec![hex("01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00")]
    );
    let reject = hex("02 00 10 00 01 00 00 00 00 00 00 00 00 00 00 00");
    vsc.receive(secs(1), &reject, &mut g);
    assert_eq!(
        drain(&mut vsc),
        vec![hex("01 00 10 00 02 00 00 00 00 00 01 00 00 00 00 00")]
    );
    vsc.receive(secs(2), &reject, &mut g);
    assert_eq!(
        drain(&mut vsc),
        vec![hex("01 00 10 00 03 00 00 00 03 00 00 00 01 00 00 00")]
    );
    vsc.receive(secs(3), &reject, &mut g);
    assert!(drain(&mut vsc).is_empty());
    let failed = FailReason::VersionRejected {
        last: Version::V0_3,
    };
    assert_eq!(vsc.state(), VscState::Failed(failed));
    assert_eq!(events(&mut vsc), vec![VscEvent::Failed { reason: failed }]);
    assert_eq!(vsc.next_deadline(), None);
    // Closed for good: nothing the host sends gets an answer.
    vsc.receive(secs(3), &balloon_request(10), &mut g);
    assert!(drain(&mut vsc).is_empty());
}

#[test]
fn t04_2_0_only_guest_fails_after_the_first_reject() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::newest_linux());
    vsc.connect(Duration::ZERO);
    assert_eq!(
        drain(&mut vsc),
        vec![hex("01 00 10 00 01 00 00 00 00 00 02 00 01 00 00 00")]
    );
    vsc.receive(secs(1), &version_response(false), &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(
        vsc.state(),
        VscState::Failed(FailReason::VersionRejected {
            last: Version::V2_0
        })
    );
}

#[test]
fn t04_no_version_response_fails_after_5_s() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(secs(10));
    assert_eq!(vsc.next_deadline(), Some(secs(15)));
    vsc.tick(secs(15) - Duration::from_millis(1), &mut g);
    assert!(matches!(vsc.state(), VscState::Negotiating { .. }));
    vsc.tick(secs(15), &mut g);
    let reason = FailReason::Timeout {
        awaiting: MessageType::VERSION_RESPONSE,
    };
    assert_eq!(vsc.state(), VscState::Failed(reason));
    assert_eq!(events(&mut vsc), vec![VscEvent::Failed { reason }]);
}

#[test]
fn t04_one_deadline_covers_every_version_attempt() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    vsc.receive(secs(4), &version_response(false), &mut g);
    assert_eq!(
        vsc.state(),
        VscState::Negotiating {
            offered: Version::V1_0
        }
    );
    assert_eq!(vsc.next_deadline(), Some(secs(5)));
    // A response that arrives after the deadline is too late even without a tick.
    vsc.receive(secs(5), &version_response(true), &mut g);
    assert!(matches!(
        vsc.state(),
        VscState::Failed(FailReason::Timeout { .. })
    ));
}

#[test]
fn t04_accepted_second_attempt_connects_with_1_0() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    vsc.receive(secs(1), &version_response(false), &mut g);
    vsc.receive(secs(1), &version_response(true), &mut g);
    vsc.receive(secs(1), &caps_response(true), &mut g);
    assert_eq!(
        vsc.state(),
        VscState::Connected {
            version: Version::V1_0
        }
    );
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::Connected {
            version: Version::V1_0
        }]
    );
}

// ---- T9: the balloon floor -------------------------------------------------------------

#[test]
fn t09_floor_matches_linux_examples() {
    for (total_mib, floor_mib) in [
        (16, 16),
        (32, 24),
        (128, 72),
        (512, 168),
        (1024, 232),
        (2048, 360),
        (4096, 488),
        (8192, 744),
        (16384, 1000),
        (32768, 1512),
        (65536, 2536),
    ] {
        assert_eq!(
            compute_balloon_floor(total_mib * MIB),
            floor_mib * MIB,
            "{total_mib} MiB"
        );
    }
}

#[test]
fn t09_request_beyond_floor_gives_exactly_available_minus_floor() {
    // 4 GiB guest: floor 488 MiB; MemAvailable 600 MiB; asked for 1 GiB: 112 MiB.
    let mut g = SimGuest::new(4 * GIB, 600 * MIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(secs(60), &balloon_request(GIB as u32), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    let (more, ranges) = balloon_ranges(&out[0]);
    assert!(!more);
    assert_eq!(ranges.len(), 56);
    assert!(ranges.iter().all(|&(s, n)| n == 512 && s % 512 == 0));
    let given: u64 = ranges.iter().map(|r| r.1).sum();
    assert_eq!(given, 600 * MIB - 488 * MIB);
    assert_eq!(given, 112 * MIB);
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::Ballooned {
            requested: GIB as u32,
            pages: 112 * MIB
        }]
    );
}

#[test]
fn t09_at_floor_answers_one_empty_final_message() {
    let mut g = SimGuest::new(4 * GIB, 488 * MIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(secs(60), &balloon_request(GIB as u32), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    let mut expect = hex("07 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00");
    expect[4..8].copy_from_slice(&trans_id(&out[0]).to_le_bytes());
    assert_eq!(out[0], expect);
    assert!(vsc.ballooned().is_empty());
}

#[test]
fn t09_floor_sinks_as_the_balloon_grows() {
    // Linux computes the floor from totalram, which ballooning lowers, so a guest asked
    // again and again keeps giving, less each time.
    let mut g = SimGuest::new(GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    let mut gifts = Vec::new();
    for i in 0..5 {
        vsc.receive(secs(60 + i), &balloon_request(GIB as u32), &mut g);
        drain(&mut vsc);
        gifts.push(match events(&mut vsc).as_slice() {
            [VscEvent::Ballooned { pages, .. }] => *pages,
            e => panic!("{e:?}"),
        });
    }
    assert_eq!(gifts[0], GIB - 232 * MIB);
    assert!(
        gifts.windows(2).all(|w| w[1] < w[0] && w[1] > 0),
        "{gifts:?}"
    );
}

// ---- T14-T16: unballoon ---------------------------------------------------------------

#[test]
fn t14_unballoon_in_two_messages_answers_once_after_the_last() {
    let (mut vsc, mut g) = balloon_exactly(&[(0x12345, 512), (0x12745, 512)], 0x20000);
    let free_before = g.available_pages();
    vsc.receive(
        secs(2),
        &hex("08 00 18 00 00 00 00 00 01 00 00 00 01 00 00 00 45 23 01 00 00 00 02 00"),
        &mut g,
    );
    assert!(drain(&mut vsc).is_empty(), "no answer to more_pages = 1");
    assert_eq!(vsc.ballooned(), &set_of(&[(0x12745, 512)]));
    vsc.receive(
        secs(2),
        &hex("08 00 18 00 00 00 00 00 00 00 00 00 01 00 00 00 45 27 01 00 00 00 02 00"),
        &mut g,
    );
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0][..4], hex("09 00 08 00")[..]);
    assert_eq!(out[0].len(), 8);
    assert!(vsc.ballooned().is_empty());
    assert_eq!(g.available_pages(), free_before + 1024);
    assert!(g.free().contains_all(r(0x12345, 512)) && g.free().contains_all(r(0x12745, 512)));
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::Unballooned {
            pages: 1024,
            not_ballooned: 0
        }]
    );
}

#[test]
fn t15_unballoon_of_pages_never_ballooned_frees_nothing_and_still_answers() {
    let (mut vsc, mut g) = balloon_exactly(&[(0x1000, 512)], 0x10000);
    let used_page = 0x2000;
    assert!(!g.free().contains_all(r(used_page, 1)));
    // One range half ballooned, one entirely foreign (a page the guest is using).
    vsc.receive(
        secs(2),
        &unballoon_request(false, &[(0x1100, 512), (used_page, 16)]),
        &mut g,
    );
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0]).body, Body::UnballoonResponse);
    assert_eq!(vsc.ballooned(), &set_of(&[(0x1000, 256)]));
    assert_eq!(g.foreign_frees(), 0);
    assert_eq!(
        g.free().count_in(r(used_page, 16)),
        0,
        "a page in use was freed"
    );
    assert_eq!(
        events(&mut vsc),
        vec![
            VscEvent::ProtocolViolation(Violation::NotBallooned {
                start: 0x1100,
                pages: 256
            }),
            VscEvent::ProtocolViolation(Violation::NotBallooned {
                start: used_page,
                pages: 16
            }),
            VscEvent::Unballooned {
                pages: 256,
                not_ballooned: 272
            },
        ]
    );
    // The same range twice in one message is freed once.
    vsc.receive(
        secs(3),
        &unballoon_request(false, &[(0x1000, 256), (0x1000, 256)]),
        &mut g,
    );
    assert!(vsc.ballooned().is_empty());
    assert_eq!(g.foreign_frees(), 0);
}

#[test]
fn t16_full_page_unballoon_with_510_ranges() {
    // 510 isolated pages: every balloon range is one page, so 510 of them fill a message.
    let pages: Vec<(u64, u64)> = (0..510).map(|i| (0x4000 + 2 * i, 1)).collect();
    let mut g = SimGuest::new(0x10000, 0);
    for &(s, n) in &pages {
        g.vacate(r(s, n));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(1), &balloon_request(510), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 4096);
    assert_eq!(out[0][..4], hex("07 00 00 10")[..]);
    // range_count 510 in bits 31:1, more_pages 0.
    assert_eq!(out[0][12..16], (510u32 << 1).to_le_bytes());

    let ranges: Vec<(u64, u32)> = pages.iter().map(|&(s, _)| (s, 1)).collect();
    let req = unballoon_request(false, &ranges);
    assert_eq!(req.len(), 4096);
    assert_eq!(req[..4], hex("08 00 00 10")[..]);
    vsc.receive(secs(2), &req, &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0]).body, Body::UnballoonResponse);
    assert!(vsc.ballooned().is_empty());
    assert_eq!(g.available_pages(), 510);
    // In step afterwards: the next message is read normally.
    vsc.receive(secs(3), &balloon_request(1), &mut g);
    assert_eq!(drain(&mut vsc).len(), 1);
}

// ---- T17, T18: hot-add ----------------------------------------------------------------

fn hot_add_response(b: &[u8]) -> (u32, u32) {
    match parse(b).body {
        Body::HotAddResponse { page_count, result } => (page_count, result),
        other => panic!("not a hot-add response: {other:?}"),
    }
}

#[test]
fn t17_hot_add_with_region() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(
        secs(60),
        &hex("0a 00 18 00 01 00 00 00 00 00 10 00 00 00 80 00 00 00 10 00 00 00 80 00"),
        &mut g,
    );
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    let mut expect = hex("0b 00 10 00 00 00 00 00 00 80 00 00 01 00 00 00");
    expect[4..8].copy_from_slice(&trans_id(&out[0]).to_le_bytes());
    assert_eq!(out[0], expect);
    assert!(g.added().contains_all(r(0x100000, 32768)));
    assert!(g.free().contains_all(r(0x100000, 32768)), "onlined");
    assert_eq!(g.total_pages(), 2 * GIB + 32768);
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::HotAdded {
            requested: 32768,
            pages: 32768,
            result: 1
        }]
    );
}

#[test]
fn t18_hot_add_without_region_derives_it_from_the_block_size() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(
        secs(60),
        &hex("0a 00 10 00 01 00 00 00 00 00 10 00 00 00 80 00"),
        &mut g,
    );
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    let mut expect = hex("0b 00 10 00 00 00 00 00 00 80 00 00 01 00 00 00");
    expect[4..8].copy_from_slice(&trans_id(&out[0]).to_le_bytes());
    assert_eq!(out[0], expect);
    assert!(g.added().contains_all(r(0x100000, 32768)));
    assert!(g.offline().is_empty());
}

#[test]
fn t18_next_range_without_region_extends_the_derived_region() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    // Half a block: the whole block is added, half of it stays offline.
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x100000, 16384, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (16384, 1));
    assert!(g.added().contains_all(r(0x100000, 32768)));
    assert_eq!(g.offline().len(), 16384);
    // The rest of that block, then the next block: offline pages come online, the
    // region grows by a block.
    vsc.receive(
        secs(61),
        &bytes(0, hot_add_body(0x104000, 16384 + 32768, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (49152, 1));
    assert!(g.offline().is_empty());
    assert!(g.added().contains_all(r(0x100000, 65536)));
    assert_eq!(vsc.pages_added(), 65536);
    assert_eq!(vsc.pages_onlined(), 65536);
}

fn hot_add_body(start: u64, count: u32, region: Option<(u64, u32)>) -> Body<'static> {
    Body::HotAddRequest {
        range: PageRange::try_new(start, count).unwrap(),
        region: region.map(|(s, n)| PageRange::try_new(s, n).unwrap()),
    }
}

// ---- T23, T24 -------------------------------------------------------------------------

#[test]
fn t23_info_max_page_count_is_recorded_without_reply() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = connected(VscConfig::default(), &mut g);
    let msg = hex(
        "0c 00 20 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 08 00 00 00 00 00 08 00 00 00 00 00",
    );
    vsc.receive(secs(49), &msg, &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(vsc.max_page_count(), Some(524_288));
    assert_eq!(events(&mut vsc), vec![VscEvent::MaxPageCount(524_288)]);
}

#[test]
fn t23_info_with_data_size_4_is_ignored() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = connected(VscConfig::default(), &mut g);
    let mut msg = hex(
        "0c 00 20 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 08 00 00 00 00 00 08 00 00 00 00 00",
    );
    msg[20] = 4;
    vsc.receive(secs(49), &msg, &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(vsc.max_page_count(), None);
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::ProtocolViolation(Violation::UnhandledInfo {
            info_type: 0,
            data_size: 4
        })]
    );
    // An unknown info type is ignored the same way.
    let unknown = bytes(
        0,
        Body::Info {
            info_type: InfoType(7),
            data: &[1, 2, 3, 4, 5, 6, 7, 8],
        },
    );
    vsc.receive(secs(49), &unknown, &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(vsc.max_page_count(), None);
}

#[test]
fn t24_dm_error_and_unknown_types_are_ignored_and_the_next_message_served() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(secs(50), &hex("00 00 08 00 00 00 00 00"), &mut g);
    vsc.receive(secs(50), &hex("0f 00 08 00 00 00 00 00"), &mut g);
    // Hot-remove is not offered; Linux leaves it unhandled too.
    let remove = bytes(
        0,
        Body::HotRemoveRequest {
            virtual_node: 0,
            page_count: 100,
            qos_flags: 0,
        },
    );
    vsc.receive(secs(50), &remove, &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(
        events(&mut vsc),
        vec![
            VscEvent::ProtocolViolation(Violation::Unhandled(MessageType::ERROR)),
            VscEvent::ProtocolViolation(Violation::Malformed(DecodeError::UnknownType {
                ty: 0x0f
            })),
            VscEvent::ProtocolViolation(Violation::Unhandled(MessageType::MEM_HOT_REMOVE_REQUEST)),
        ]
    );
    vsc.receive(secs(50), &balloon_request(1), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(balloon_ranges(&out[0]).1.len(), 1);
}

// ---- guest checklist ------------------------------------------------------------------

#[test]
fn checklist_01_transport_sizes_hold_a_full_message() {
    // A 4096-byte message and its 16-byte VMBus descriptor fit the receive limit, and
    // the ring holds several of them.
    const _: () = assert!(MAX_RECEIVE_PACKET >= MAX_MESSAGE_SIZE + 16);
    const _: () = assert!(RING_DATA_SIZE >= 3 * (MAX_MESSAGE_SIZE + 16 + 8));
    // Nothing the VSC sends exceeds one 4 KiB message, even a fragmented balloon.
    let mut g = SimGuest::new(GIB, 0);
    for i in 0..3000 {
        g.vacate(r(0x1000 + 2 * i, 1));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(1), &balloon_request(3000), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|m| m.len() <= MAX_MESSAGE_SIZE));
}

#[test]
fn checklist_03_capabilities_report_bytes() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    drain(&mut vsc);
    vsc.receive(
        secs(1),
        &hex("02 00 10 00 01 00 00 00 01 00 00 00 00 00 00 00"),
        &mut g,
    );
    assert_eq!(
        drain(&mut vsc),
        vec![hex(
            "03 00 20 00 02 00 00 00 1f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff"
        )]
    );
    assert_eq!(
        vsc.state(),
        VscState::Capabilities {
            version: Version::V2_0
        }
    );
    assert_eq!(vsc.next_deadline(), Some(secs(6)));
}

#[test]
fn checklist_03_alignment_is_log2_of_the_block_size_in_mib() {
    // balloon | hot_add | alignment << 2: 128 MiB → 7, 256 MiB → 8, 2 GiB → 11,
    // 1 MiB → 0, 32 GiB → 15.
    for (block_pages, caps_byte) in [
        (128 * MIB, 0x1fu8),
        (256 * MIB, 0x23),
        (2 * GIB, 0x2f),
        (MIB, 0x03),
        (32 * GIB, 0x3f),
    ] {
        let mut g = SimGuest::new(GIB, GIB / 2).with_block_pages(block_pages);
        let mut vsc = Vsc::new(VscConfig::default());
        vsc.connect(Duration::ZERO);
        drain(&mut vsc);
        vsc.receive(secs(1), &version_response(true), &mut g);
        let caps = drain(&mut vsc);
        assert_eq!(caps[0][8], caps_byte, "{block_pages} pages");
    }
}

#[test]
fn checklist_03_caps_bits_are_honest() {
    // No hot-add configured, or a block size the field cannot say: the bit is clear,
    // and a hot-add request gets "never again".
    for (config, block) in [
        (
            VscConfig {
                hot_add: false,
                ..VscConfig::default()
            },
            DEFAULT_BLOCK_PAGES,
        ),
        (VscConfig::default(), 3 * MIB),
        (VscConfig::default(), 64),
    ] {
        let mut g = SimGuest::new(GIB, GIB / 2).with_block_pages(block);
        let mut vsc = Vsc::new(config);
        vsc.connect(Duration::ZERO);
        drain(&mut vsc);
        vsc.receive(secs(1), &version_response(true), &mut g);
        let caps = drain(&mut vsc);
        assert_eq!(caps[0][8], 0x01, "balloon only");
        vsc.receive(secs(1), &caps_response(true), &mut g);
        vsc.receive(
            secs(60),
            &bytes(0, hot_add_body(0x100000, 32768, None)),
            &mut g,
        );
        assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 1));
        assert!(g.added().is_empty());
    }
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig {
        balloon: false,
        ..VscConfig::default()
    });
    vsc.connect(Duration::ZERO);
    drain(&mut vsc);
    vsc.receive(secs(1), &version_response(true), &mut g);
    assert_eq!(drain(&mut vsc)[0][8], 0x1e, "hot-add only");
    vsc.receive(secs(1), &caps_response(true), &mut g);
    // A host that balloons anyway gets an empty final response rather than silence.
    vsc.receive(secs(60), &balloon_request(100), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(balloon_ranges(&out[0]), (false, vec![]));
}

#[test]
fn checklist_03_no_caps_response_fails_after_5_s() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    vsc.receive(secs(4), &version_response(true), &mut g);
    assert_eq!(vsc.next_deadline(), Some(secs(9)));
    vsc.tick(secs(9), &mut g);
    assert_eq!(
        vsc.state(),
        VscState::Failed(FailReason::Timeout {
            awaiting: MessageType::CAPABILITIES_RESPONSE
        })
    );
}

#[test]
fn checklist_03_rejected_caps_abort() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    vsc.connect(Duration::ZERO);
    vsc.receive(secs(1), &version_response(true), &mut g);
    drain(&mut vsc);
    vsc.receive(secs(1), &caps_response(false), &mut g);
    assert_eq!(
        vsc.state(),
        VscState::Failed(FailReason::CapabilitiesRejected)
    );
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(vsc.next_deadline(), None);
}

#[test]
fn checklist_04_status_every_second_after_45_silent_periods() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = connected(VscConfig::default(), &mut g);
    let mut sent_at = Vec::new();
    let mut now = Duration::ZERO;
    while now < secs(50) {
        now = vsc.next_deadline().unwrap();
        vsc.tick(now, &mut g);
        for m in drain(&mut vsc) {
            assert_eq!(m.len(), 48);
            assert_eq!(parse(&m).message_type(), MessageType::STATUS_REPORT);
            sent_at.push(now);
        }
    }
    assert_eq!(
        sent_at,
        vec![secs(46), secs(47), secs(48), secs(49), secs(50)]
    );
    // A late tick sends one report and keeps the period from there: no burst.
    vsc.tick(secs(60), &mut g);
    assert_eq!(drain(&mut vsc).len(), 1);
    assert_eq!(vsc.next_deadline(), Some(secs(61)));
    // Linux ignores suppress_pressure_reports; so does the default VSC.
    assert!(!VscConfig::default().honour_suppress_pressure_reports);
}

#[test]
fn checklist_04_committed_counts_ballooned_offline_and_floor() {
    let mut g = SimGuest::new(4 * GIB, 2 * GIB);
    g.set_committed(GIB);
    let config = VscConfig {
        status_delay_periods: 0,
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(0), &balloon_request(512 * MIB as u32), &mut g);
    drain(&mut vsc);
    // Half a block backed: the other half is added but offline.
    vsc.receive(
        secs(0),
        &bytes(0, hot_add_body(0x100000, 16384, None)),
        &mut g,
    );
    drain(&mut vsc);
    // SimGuest counts offline pages of added blocks out of its total, as Linux's managed
    // pages do; Linux's counter of added-minus-onlined is zero here, since the backed
    // half came online.
    vsc.tick(secs(1), &mut g);
    let out = drain(&mut vsc);
    let Body::StatusReport(s) = parse(&out[0]).body else {
        panic!()
    };
    let total = 4 * GIB - 512 * MIB + 16384;
    assert_eq!(g.total_pages(), total);
    assert_eq!(s.num_avail, g.available_pages());
    assert_eq!(
        s.num_committed,
        GIB + 512 * MIB + compute_balloon_floor(total)
    );
    assert_eq!(
        (s.page_file_size, s.zero_free, s.page_file_writes, s.io_diff),
        (0, 0, 0, 0)
    );
}

#[test]
fn checklist_04_committed_counts_hot_added_pages_not_yet_online() {
    /// A guest whose hot-added memory never comes online (no udev rule, no auto-online).
    struct NoOnline(SimGuest);
    impl GuestMemoryModel for NoOnline {
        fn total_pages(&self) -> u64 {
            self.0.total_pages()
        }
        fn available_pages(&self) -> u64 {
            self.0.available_pages()
        }
        fn committed_pages(&self) -> u64 {
            self.0.committed_pages()
        }
        fn alloc_block(&mut self, order: u32) -> Option<u64> {
            self.0.alloc_block(order)
        }
        fn free_pages(&mut self, pages: GfnRange) {
            self.0.free_pages(pages)
        }
        fn hot_add(&mut self, blocks: GfnRange, _: GfnRange) -> Result<u64, HotAddError> {
            let s = blocks.start();
            self.0.hot_add(blocks, r(s, 0))
        }
        fn online_pages(&mut self, _: GfnRange) -> u64 {
            0
        }
        fn block_pages(&self) -> u64 {
            self.0.block_pages()
        }
    }
    let mut m = NoOnline(SimGuest::new(4 * GIB, 2 * GIB));
    m.0.set_committed(GIB);
    let config = VscConfig {
        status_delay_periods: 0,
        balloon_floor: Some(1000),
        ..VscConfig::default()
    };
    let mut vsc = Vsc::new(config);
    vsc.connect(Duration::ZERO);
    vsc.receive(Duration::ZERO, &version_response(true), &mut m);
    vsc.receive(Duration::ZERO, &caps_response(true), &mut m);
    vsc.receive(
        Duration::ZERO,
        &bytes(0, hot_add_body(0x100000, 32768, None)),
        &mut m,
    );
    drain(&mut vsc);
    assert_eq!(vsc.pages_added(), 32768);
    assert_eq!(vsc.pages_onlined(), 0);
    vsc.tick(secs(1), &mut m);
    let out = drain(&mut vsc);
    let Body::StatusReport(s) = parse(&out[0]).body else {
        panic!()
    };
    assert_eq!(s.num_committed, GIB + 32768 + 1000);
}

#[test]
fn checklist_05_2mib_blocks_first_then_4kib_pages() {
    // Linux 6.1, 10000 pages: 19 ranges of 512 (more_pages = 1), then 272 single pages.
    let mut g = SimGuest::new(4 * GIB, 2 * GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(secs(60), &balloon_request(10_000), &mut g);
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 2);
    let (more, big) = balloon_ranges(&out[0]);
    assert!(more);
    assert_eq!(big.len(), 19);
    assert!(big.iter().all(|&(s, n)| n == 512 && s % 512 == 0));
    let (more, small) = balloon_ranges(&out[1]);
    assert!(!more);
    assert_eq!(small.len(), 272);
    assert!(
        small.iter().all(|&(_, n)| n == 1),
        "one range per allocation, not merged"
    );
    // The pages left the OS, and are what the VSC says it gave.
    let mut all = big.clone();
    all.extend(small);
    assert_eq!(vsc.ballooned(), &set_of(&all));
    assert_eq!(g.ballooned(), vsc.ballooned());
    assert_eq!(g.available_pages(), 2 * GIB - 10_000);
    assert_eq!(g.total_pages(), 4 * GIB - 10_000);
}

#[test]
fn checklist_05_without_2mib_blocks_each_message_carries_510_ranges() {
    let mut g = SimGuest::new(GIB, 0);
    for i in 0..1200 {
        g.vacate(r(0x1000 + 2 * i, 1));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(60), &balloon_request(1200), &mut g);
    let out = drain(&mut vsc);
    let shape: Vec<(bool, usize, usize)> = out
        .iter()
        .map(|m| {
            let (more, r) = balloon_ranges(m);
            (more, r.len(), m.len())
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (true, 510, 4096),
            (true, 510, 4096),
            (false, 180, 16 + 8 * 180)
        ]
    );
}

#[test]
fn checklist_05_allocation_failure_still_ends_with_a_final_message() {
    let mut g = SimGuest::new(4 * GIB, 2 * GIB);
    g.set_alloc_budget(Some(1024 + 5));
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(secs(60), &balloon_request(5000), &mut g);
    let out = drain(&mut vsc);
    let shape: Vec<(bool, Vec<(u64, u64)>)> = out.iter().map(|m| balloon_ranges(m)).collect();
    // Two 2 MiB blocks, then five pages once 2 MiB fails, then nothing: a final empty
    // message closes the transaction.
    assert_eq!(shape.len(), 3);
    assert!(shape[0].0 && shape[0].1.len() == 2 && shape[0].1.iter().all(|r| r.1 == 512));
    assert!(shape[1].0 && shape[1].1.len() == 5 && shape[1].1.iter().all(|r| r.1 == 1));
    assert_eq!(shape[2], (false, vec![]));
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::Ballooned {
            requested: 5000,
            pages: 1029
        }]
    );
}

#[test]
fn checklist_05_a_full_ring_drains_one_message_at_a_time() {
    let mut g = SimGuest::new(GIB, 0);
    for i in 0..2000 {
        g.vacate(r(0x1000 + 2 * i, 1));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(60), &balloon_request(2000), &mut g);
    assert_eq!(vsc.pending_transmit(), 4);
    assert_eq!(vsc.in_flight().len(), 2000);
    assert!(vsc.ballooned().is_empty(), "nothing reached the host yet");
    let first = poll(&mut vsc).unwrap();
    assert_eq!(vsc.ballooned().len(), 510);
    assert_eq!(vsc.in_flight().len(), 1490);
    // The host cannot know queued pages; an unballoon naming them is refused.
    let (_, sent) = balloon_ranges(&first);
    let queued = 0x1000 + 2 * 1999;
    vsc.receive(
        secs(61),
        &unballoon_request(false, &[(sent[0].0, 1), (queued, 1)]),
        &mut g,
    );
    assert_eq!(vsc.ballooned().len(), 509);
    assert!(vsc.in_flight().contains_all(r(queued, 1)));
    assert_eq!(g.foreign_frees(), 0);
    drain(&mut vsc);
    assert_eq!(vsc.ballooned().len(), 1999);
    assert_eq!(g.ballooned(), vsc.ballooned());
}

#[test]
fn checklist_07_overlap_with_existing_memory_stops_hot_add_for_good() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    // Boot RAM is there: Linux's add_memory says -EEXIST.
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x40000, 32768, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 1));
    // And it stays off, even for a range that would work.
    vsc.receive(
        secs(61),
        &bytes(0, hot_add_body(0x100000, 32768, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 1));
    assert!(g.added().is_empty());
}

#[test]
fn checklist_07_transient_failure_answers_0_0_and_a_retry_works() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    g.set_hot_add_failure(Some(HotAddError::Failed));
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x100000, 32768, Some((0x100000, 32768)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 0));
    g.set_hot_add_failure(None);
    vsc.receive(
        secs(90),
        &bytes(0, hot_add_body(0x100000, 32768, Some((0x100000, 32768)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (32768, 1));
    // The same pages again add nothing: 0 pages, try later.
    vsc.receive(
        secs(91),
        &bytes(0, hot_add_body(0x100000, 32768, Some((0x100000, 32768)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 0));
    assert_eq!(vsc.pages_added(), 32768);
}

#[test]
fn checklist_07_unaligned_or_inconsistent_region_is_transient() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    for body in [
        hot_add_body(0x100100, 32768, Some((0x100100, 32768))),
        hot_add_body(0x200000, 32768, Some((0x100000, 32768))),
        hot_add_body(0x100000, 0, Some((0x100000, 32768))),
        hot_add_body(0x100000, 32768, Some((0x100000, 0))),
    ] {
        vsc.receive(secs(60), &bytes(0, body), &mut g);
        assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 0), "{body:?}");
    }
    assert!(g.added().is_empty());
    // Still willing afterwards.
    vsc.receive(
        secs(61),
        &bytes(0, hot_add_body(0x100000, 32768, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (32768, 1));
}

#[test]
fn checklist_07_region_larger_than_range_is_filled_by_later_requests() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    // Region of two blocks, first request backs 1.5 blocks.
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x100000, 49152, Some((0x100000, 65536)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (49152, 1));
    assert_eq!(g.offline().len(), 16384);
    // The rest, in the 16-byte form: the guest finds the region and onlines it.
    vsc.receive(
        secs(61),
        &bytes(0, hot_add_body(0x10c000, 16384, None)),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (16384, 1));
    assert!(g.offline().is_empty());
    // A range running past a host-given region is cut at its end: fewer pages than
    // asked, which tells the host it hit the guest's limit.
    vsc.receive(
        secs(62),
        &bytes(0, hot_add_body(0x200000, 65536, Some((0x200000, 32768)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (32768, 1));
}

#[test]
fn checklist_07_overlapping_host_region_is_permanent() {
    let mut g = SimGuest::new(2 * GIB, GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x100000, 32768, Some((0x100000, 65536)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (32768, 1));
    // A new region that overlaps the first one, for a range outside it.
    vsc.receive(
        secs(61),
        &bytes(0, hot_add_body(0x120000, 32768, Some((0x108000, 131072)))),
        &mut g,
    );
    assert_eq!(hot_add_response(&drain(&mut vsc)[0]), (0, 1));
}

#[test]
fn checklist_09_short_and_oversized_packets_never_crash_or_answer() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = connected(VscConfig::default(), &mut g);
    let mut oversized = unballoon_request(false, &[]);
    oversized.resize(9000, 0xaa);
    let mut lying = hex("08 00 18 00 00 00 00 00 00 00 00 00 02 00 00 00 45 23 01 00 00 00 02 00");
    lying.truncate(24);
    for junk in [
        vec![],
        hex("06 00"),
        hex("01 00 10 00 01 00"),
        hex("06 00 08 00 00 00 00 00"),
        hex("06 00 10 00 00 00 00 00 00 01"),
        lying,
        hex("0a 00 14 00 00 00 00 00 00 00 10 00 00 00 80 00 00 00 00 00"),
    ] {
        vsc.receive(secs(60), &junk, &mut g);
        assert!(drain(&mut vsc).is_empty(), "{junk:02x?}");
        assert!(matches!(
            events(&mut vsc).as_slice(),
            [VscEvent::ProtocolViolation(Violation::Malformed(_))]
        ));
    }
    // hdr.size bounds the message; the padding after it is ignored, whatever its length.
    vsc.receive(secs(60), &oversized, &mut g);
    assert_eq!(drain(&mut vsc).len(), 1);
    assert!(matches!(vsc.state(), VscState::Connected { .. }));
}

#[test]
fn checklist_10_one_counter_numbers_every_message() {
    let mut g = SimGuest::new(4 * GIB, 2 * GIB);
    let config = VscConfig {
        status_delay_periods: 0,
        ..VscConfig::default()
    };
    let mut vsc = Vsc::new(config);
    let mut ids = Vec::new();
    let run =
        |vsc: &mut Vsc, ids: &mut Vec<u32>| ids.extend(drain(vsc).iter().map(|m| trans_id(m)));
    vsc.connect(Duration::ZERO);
    run(&mut vsc, &mut ids);
    // The host's ids are whatever it likes; the guest neither checks nor echoes them.
    vsc.receive(
        Duration::ZERO,
        &bytes(0xdead_beef, Body::VersionResponse { is_accepted: false }),
        &mut g,
    );
    run(&mut vsc, &mut ids);
    vsc.receive(
        Duration::ZERO,
        &bytes(7, Body::VersionResponse { is_accepted: true }),
        &mut g,
    );
    run(&mut vsc, &mut ids);
    vsc.receive(Duration::ZERO, &caps_response(true), &mut g);
    vsc.tick(secs(1), &mut g);
    run(&mut vsc, &mut ids);
    vsc.receive(
        secs(1),
        &bytes(99, Body::BalloonRequest { num_pages: 10_000 }),
        &mut g,
    );
    run(&mut vsc, &mut ids);
    vsc.receive(secs(1), &unballoon_request(false, &[]), &mut g);
    vsc.receive(
        secs(1),
        &bytes(99, hot_add_body(0x100000, 32768, None)),
        &mut g,
    );
    vsc.tick(secs(2), &mut g);
    run(&mut vsc, &mut ids);
    // A reset does not restart the count.
    vsc.reset();
    vsc.connect(secs(3));
    run(&mut vsc, &mut ids);
    assert_eq!(ids, (1..=ids.len() as u32).collect::<Vec<_>>());
    assert_eq!(ids.len(), 10);
}

#[test]
fn checklist_11_a_request_during_another_is_served_after_it() {
    let mut g = SimGuest::new(4 * GIB, 2 * GIB);
    let mut vsc = connected(VscConfig::default(), &mut g);
    // Nothing drained in between: the second transaction queues behind the first.
    vsc.receive(secs(60), &balloon_request(1000), &mut g);
    vsc.receive(secs(60), &balloon_request(600), &mut g);
    vsc.receive(
        secs(60),
        &bytes(0, hot_add_body(0x100000, 32768, None)),
        &mut g,
    );
    let out = drain(&mut vsc);
    let kinds: Vec<(MessageType, bool)> = out
        .iter()
        .map(|m| match parse(m).body {
            Body::BalloonResponse { more_pages, .. } => (MessageType::BALLOON_RESPONSE, more_pages),
            b => (Message::new(0, b).message_type(), false),
        })
        .collect();
    use MessageType as T;
    assert_eq!(
        kinds,
        vec![
            (T::BALLOON_RESPONSE, true),
            (T::BALLOON_RESPONSE, false),
            (T::BALLOON_RESPONSE, true),
            (T::BALLOON_RESPONSE, false),
            (T::MEM_HOT_ADD_RESPONSE, false),
        ]
    );
    assert_eq!(vsc.ballooned().len(), 1600);
}

#[test]
fn checklist_12_renegotiates_from_scratch_after_reset() {
    let (mut vsc, mut g) = balloon_exactly(&[(0x1000, 512)], 0x10000);
    vsc.reset();
    assert_eq!(vsc.state(), VscState::Closed);
    assert_eq!(vsc.next_deadline(), None);
    // Closed: nothing is served.
    vsc.receive(secs(5), &unballoon_request(false, &[(0x1000, 512)]), &mut g);
    assert!(drain(&mut vsc).is_empty());
    vsc.connect(secs(10));
    let out = drain(&mut vsc);
    assert_eq!(out.len(), 1);
    assert_eq!(
        parse(&out[0]).body,
        Body::VersionRequest {
            version: Version::V2_0,
            is_last_attempt: false
        }
    );
    vsc.receive(secs(10), &version_response(true), &mut g);
    vsc.receive(secs(10), &caps_response(true), &mut g);
    assert!(matches!(vsc.state(), VscState::Connected { .. }));
    // Ballooned pages outlive the connection; a host that returns them gets them back.
    assert_eq!(vsc.ballooned().len(), 512);
    drain(&mut vsc);
    vsc.receive(
        secs(11),
        &unballoon_request(false, &[(0x1000, 512)]),
        &mut g,
    );
    assert!(vsc.ballooned().is_empty());
    assert_eq!(g.foreign_frees(), 0);
}

#[test]
fn reset_gives_back_pages_of_balloon_responses_never_sent() {
    let mut g = SimGuest::new(GIB, 0);
    for i in 0..1500 {
        g.vacate(r(0x1000 + 2 * i, 1));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(1), &balloon_request(1500), &mut g);
    events(&mut vsc);
    poll(&mut vsc).unwrap();
    vsc.reset();
    assert_eq!(vsc.ballooned().len(), 510);
    assert!(vsc.in_flight().is_empty());
    assert_eq!(vsc.pending_transmit(), 0);
    // The model is reached at the next tick or receive.
    assert_eq!(g.ballooned().len(), 1500);
    vsc.tick(secs(2), &mut g);
    assert_eq!(g.ballooned(), vsc.ballooned());
    assert_eq!(events(&mut vsc), vec![VscEvent::Withdrawn { pages: 990 }]);
    assert_eq!(g.foreign_frees(), 0);
}

#[test]
fn requests_out_of_state_are_dropped() {
    let mut g = SimGuest::new(GIB, GIB / 2);
    let mut vsc = Vsc::new(VscConfig::default());
    // Closed: not even a violation, the channel is not open.
    vsc.receive(secs(0), &balloon_request(1), &mut g);
    assert!(events(&mut vsc).is_empty());
    vsc.connect(Duration::ZERO);
    drain(&mut vsc);
    for m in [
        balloon_request(1),
        unballoon_request(false, &[(1, 1)]),
        bytes(0, hot_add_body(0x100000, 32768, None)),
        caps_response(true),
    ] {
        vsc.receive(secs(0), &m, &mut g);
    }
    assert!(drain(&mut vsc).is_empty());
    assert_eq!(events(&mut vsc).len(), 4);
    assert!(matches!(vsc.state(), VscState::Negotiating { .. }));
    vsc.receive(secs(0), &version_response(true), &mut g);
    vsc.receive(secs(0), &caps_response(true), &mut g);
    events(&mut vsc);
    drain(&mut vsc);
    // A late version response (Linux would offer 1.0 again) changes nothing.
    vsc.receive(secs(1), &version_response(false), &mut g);
    assert!(drain(&mut vsc).is_empty());
    assert!(matches!(vsc.state(), VscState::Connected { .. }));
    assert_eq!(
        events(&mut vsc),
        vec![VscEvent::ProtocolViolation(Violation::Unexpected(
            MessageType::VERSION_RESPONSE
        ))]
    );
}

#[test]
fn empty_version_list_fails_at_connect() {
    let mut vsc = Vsc::new(VscConfig {
        versions: vec![],
        ..VscConfig::default()
    });
    vsc.connect(Duration::ZERO);
    assert_eq!(vsc.state(), VscState::Failed(FailReason::NoVersionToOffer));
    assert!(drain(&mut vsc).is_empty());
}

// ---- property: arbitrary host traffic ---------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Version(bool),
    Caps(bool),
    Balloon(u32),
    /// Ranges: (take from the pages the host holds?, index or PFN, count).
    Unballoon(bool, Vec<(bool, u64, u32)>),
    HotAdd(u64, u32, Option<(u64, u32)>),
    Info(u32, Vec<u8>),
    Garbage(Vec<u8>),
    /// A valid message of kind `.0` with byte `.1` set to `.2`.
    Mutated(u8, usize, u8),
    Tick(u64),
    Transmit(usize),
    Reset,
    Connect,
    /// Connect and accept version and capabilities.
    Handshake,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (any::<bool>(), 0u64..70_000, 1u32..600);
    prop_oneof![
        1 => any::<bool>().prop_map(Op::Version),
        1 => any::<bool>().prop_map(Op::Caps),
        4 => prop_oneof![0u32..3000, any::<u32>()].prop_map(Op::Balloon),
        4 => (any::<bool>(), proptest::collection::vec(range, 0..8)).prop_map(|(m, r)| Op::Unballoon(m, r)),
        2 => (0u64..(1 << 20), 0u32..2000, proptest::option::of((0u64..(1 << 20), 0u32..4000)))
            .prop_map(|(s, n, r)| Op::HotAdd(s, n, r)),
        1 => (0u32..3, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(t, d)| Op::Info(t, d)),
        2 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        3 => (0u8..6, 0usize..40, any::<u8>()).prop_map(|(k, i, v)| Op::Mutated(k, i, v)),
        2 => (0u64..3000).prop_map(Op::Tick),
        8 => (0usize..6).prop_map(Op::Transmit),
        1 => Just(Op::Reset),
        1 => Just(Op::Connect),
        1 => Just(Op::Handshake),
    ]
}

/// What the host would learn from the guest, kept independently of the VSC.
struct Host {
    held: PageSet,
    last_id: u32,
}

impl Host {
    fn take(&mut self, m: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(m.len() <= MAX_MESSAGE_SIZE);
        let msg = Message::parse(m).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        // Strictly increasing: a reset drops queued messages, and their ids with them.
        prop_assert!(msg.trans_id > self.last_id, "one counter, always forward");
        self.last_id = msg.trans_id;
        if let Body::BalloonResponse { ranges, .. } = msg.body {
            for pr in ranges {
                let n = u64::from(pr.page_cnt());
                prop_assert!(n > 0);
                prop_assert_eq!(
                    self.held.count_in(r(pr.start_page(), n)),
                    0,
                    "page reported twice"
                );
                self.held.insert(r(pr.start_page(), n));
            }
        }
        Ok(())
    }
}

fn template(kind: u8) -> Vec<u8> {
    match kind {
        0 => balloon_request(300),
        1 => unballoon_request(true, &[(0x3000, 40), (0x3100, 8)]),
        2 => bytes(0, hot_add_body(0x100000, 256, Some((0x100000, 512)))),
        3 => bytes(0, hot_add_body(0x100100, 256, None)),
        4 => hex(
            "0c 00 20 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 08 00 00 00 00 00 08 00 00 00 00 00",
        ),
        _ => caps_response(true),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_host_traffic_keeps_the_books(ops in proptest::collection::vec(op(), 1..120)) {
        // 64 MiB guest, fragmented, 1 MiB blocks so hot-add stays cheap.
        let mut g = SimGuest::new(16_384, 12_000).with_block_pages(256);
        for i in 0..300 {
            g.occupy(r(8_000 + 3 * i, 1));
        }
        let config = VscConfig { balloon_floor: Some(1_000), ..VscConfig::default() };
        let mut vsc = Vsc::new(config);
        let mut host = Host { held: PageSet::new(), last_id: 0 };
        let mut now = Duration::ZERO;
        vsc.connect(now);
        vsc.receive(now, &version_response(true), &mut g);
        vsc.receive(now, &caps_response(true), &mut g);

        for op in ops {
            let payload = match op {
                Op::Version(a) => Some(version_response(a)),
                Op::Caps(a) => Some(caps_response(a)),
                Op::Balloon(n) => Some(balloon_request(n)),
                Op::Unballoon(more, rs) => {
                    let held: Vec<(u64, u64)> = host.held.ranges().map(|g| (g.start(), g.count())).collect();
                    let ranges: Vec<(u64, u32)> = rs
                        .iter()
                        .map(|&(from_held, x, n)| match held.get(x as usize % held.len().max(1)) {
                            Some(&(s, c)) if from_held => (s + x % c, n.min(c as u32)),
                            _ => (x, n),
                        })
                        .collect();
                    Some(unballoon_request(more, &ranges))
                }
                Op::HotAdd(s, n, r) => Some(bytes(0, hot_add_body(s, n, r))),
                Op::Info(t, d) => Some(bytes(0, Body::Info { info_type: InfoType(t), data: &d })),
                Op::Garbage(b) => Some(b),
                Op::Mutated(k, i, v) => {
                    let mut b = template(k);
                    let i = i % b.len();
                    b[i] = v;
                    Some(b)
                }
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    vsc.tick(now, &mut g);
                    None
                }
                Op::Transmit(n) => {
                    for _ in 0..n {
                        match poll(&mut vsc) {
                            Some(m) => host.take(&m)?,
                            None => break,
                        }
                    }
                    None
                }
                Op::Reset => {
                    vsc.reset();
                    None
                }
                Op::Connect => {
                    vsc.connect(now);
                    None
                }
                Op::Handshake => {
                    vsc.connect(now);
                    vsc.receive(now, &version_response(true), &mut g);
                    vsc.receive(now, &caps_response(true), &mut g);
                    None
                }
            };
            if let Some(p) = payload {
                // The host's view: pages it names in an unballoon served while connected
                // are gone from what it holds.
                if matches!(vsc.state(), VscState::Connected { .. }) {
                    if let Ok(Message { body: Body::UnballoonRequest { ranges, .. }, .. }) = Message::parse(&p) {
                        for r in ranges {
                            // The host holds no page past the gfn limit.
                            host.held.remove(gfns_below_limit(r));
                        }
                    }
                }
                vsc.receive(now, &p, &mut g);
            }
            while vsc.poll_event().is_some() {}
            prop_assert_eq!(g.foreign_frees(), 0, "freed a page it did not own");
            prop_assert_eq!(vsc.ballooned(), &host.held, "ballooned set is what was reported");
            let overlap = vsc.in_flight().ranges().map(|g| vsc.ballooned().count_in(g)).sum::<u64>();
            prop_assert_eq!(overlap, 0);
        }
        while let Some(m) = poll(&mut vsc) {
            host.take(&m)?;
        }
        vsc.tick(now, &mut g);
        prop_assert_eq!(vsc.ballooned(), &host.held);
        prop_assert_eq!(g.ballooned(), &host.held, "the OS lost no page and kept none given back");
        prop_assert_eq!(g.foreign_frees(), 0);
    }
}

/// A hostile host against a fragmented balloon: the guest ballooned every other page of
/// 2 GiB (262,144 one-page runs), and the host asks for `[0, 2^24)` back 510 times in one
/// message. The set lookups and steps it costs are counted, not timed: one ordered walk
/// per range, so at most a few per run freed (work the host was owed) and per range.
#[test]
fn a_hostile_unballoon_costs_work_linear_in_the_runs_it_frees() {
    const RAM: u64 = 1 << 19;
    let mut g = SimGuest::new(RAM, 0);
    for p in (0..RAM).step_by(2) {
        g.vacate(r(p, 1));
    }
    let config = VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    };
    let mut vsc = connected(config, &mut g);
    vsc.receive(secs(1), &balloon_request((RAM / 2) as u32), &mut g);
    drain(&mut vsc);
    events(&mut vsc);
    assert_eq!(vsc.ballooned().len(), RAM / 2);
    let runs = vsc.ballooned().ranges().count() as u64;
    assert_eq!(runs, RAM / 2);

    let whole = vec![(0u64, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE];
    let visits0 = crate::pageset::probe::visits();
    vsc.receive(secs(2), &unballoon_request(false, &whole), &mut g);
    let visits = crate::pageset::probe::visits() - visits0;
    // The model's own books (SimGuest's sets) count too: a few steps per run freed.
    let bound = 8 * runs + 8 * MAX_RANGES_PER_MESSAGE as u64;
    assert!(
        visits <= bound,
        "{visits} set lookups and steps for {runs} runs"
    );
    assert!(vsc.ballooned().is_empty());
    assert_eq!(g.available_pages(), RAM / 2);
    assert_eq!(g.foreign_frees(), 0);
    let ev = events(&mut vsc);
    assert!(ev.len() <= MAX_RANGES_PER_MESSAGE + 1);
}

/// A model that gives a block twice (a bug): the message ends before the second copy, as
/// when blocks were taken one by one, and the blocks the model gave after it in the same
/// batch go back to it unreported, to be taken again for the next message. Every page
/// is reported once.
#[test]
fn a_block_given_twice_ends_the_message_and_the_rest_of_the_batch_goes_back() {
    struct Twice {
        os: SimGuest,
        calls: u32,
        first: Option<u64>,
    }
    impl GuestMemoryModel for Twice {
        fn total_pages(&self) -> u64 {
            self.os.total_pages()
        }
        fn available_pages(&self) -> u64 {
            self.os.available_pages()
        }
        fn committed_pages(&self) -> u64 {
            self.os.committed_pages()
        }
        fn alloc_block(&mut self, order: u32) -> Option<u64> {
            self.calls += 1;
            if self.calls == 2 {
                return self.first;
            }
            let s = self.os.alloc_block(order);
            self.first = self.first.or(s);
            s
        }
        fn free_pages(&mut self, pages: GfnRange) {
            self.os.free_pages(pages)
        }
        fn hot_add(&mut self, blocks: GfnRange, online: GfnRange) -> Result<u64, HotAddError> {
            self.os.hot_add(blocks, online)
        }
        fn online_pages(&mut self, pages: GfnRange) -> u64 {
            self.os.online_pages(pages)
        }
        fn block_pages(&self) -> u64 {
            self.os.block_pages()
        }
    }
    let mut m = Twice {
        os: SimGuest::new(4096, 4096),
        calls: 0,
        first: None,
    };
    let mut vsc = Vsc::new(VscConfig {
        balloon_floor: Some(0),
        ..VscConfig::default()
    });
    vsc.connect(Duration::ZERO);
    vsc.receive(Duration::ZERO, &version_response(true), &mut m);
    vsc.receive(Duration::ZERO, &caps_response(true), &mut m);
    drain(&mut vsc);
    vsc.receive(secs(60), &balloon_request(2000), &mut m);
    let out: Vec<_> = drain(&mut vsc).iter().map(|b| balloon_ranges(b)).collect();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], (true, vec![(0, 512)]));
    assert_eq!(out[1], (true, vec![(512, 512), (1024, 512)]));
    let (more, small) = &out[2];
    assert!(!more);
    assert_eq!(small.len(), 2000 - 3 * 512);
    assert!(small.iter().all(|&(_, n)| n == 1));
    let all: Vec<(u64, u64)> = out.iter().flat_map(|(_, r)| r.clone()).collect();
    assert_eq!(vsc.ballooned(), &set_of(&all));
    assert_eq!(vsc.ballooned().len(), 2000);
    assert_eq!(m.os.ballooned(), vsc.ballooned());
    assert_eq!(m.os.available_pages(), 4096 - 2000);
}
