//! ballast's numbered host cases (`tNN_`, each a guest message as Linux's
//! `drivers/hv/hv_balloon.c` or a broken guest sends it, and what QEMU's
//! `hw/hyperv/hv-balloon.c` or ballast's decisions make of it), ballast's host checklist
//! (`checklist_NN_`: what a VSP must do), and a property test over arbitrary guest bytes and
//! host requests.

use super::*;
use ballast_abi::dm::MAX_MESSAGE_SIZE;
use proptest::prelude::*;

/// The gfn range `start .. start + count` (the tests name only ranges below the limit).
fn r(start: u64, count: u64) -> GfnRange {
    GfnRange::new(start, count).unwrap()
}

/// Guest RAM in the tests: 3 GiB below a 1 GiB MMIO hole, then 1 GiB above 4 GiB.
const LOW_END: u64 = 0xC0000;
const HIGH_START: u64 = 0x100000;
const HIGH_END: u64 = 0x140000;

fn ram(start: u64, count: u64) -> bool {
    start
        .checked_add(count)
        .is_some_and(|end| end <= LOW_END || (start >= HIGH_START && end <= HIGH_END))
}

/// Linux's caps: balloon, hot-add, 128 MiB alignment.
const LINUX_CAPS: u64 = 0x1f;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn msg(trans_id: u32, body: Body<'_>) -> Vec<u8> {
    Message::new(trans_id, body)
        .to_bytes()
        .expect("test message encodes")
}

fn ranges(rs: &[(u64, u32)]) -> Vec<PageRange> {
    rs.iter()
        .map(|&(s, n)| PageRange::try_new(s, n).expect("range fits"))
        .collect()
}

fn balloon_response(trans_id: u32, more_pages: bool, rs: &[(u64, u32)]) -> Vec<u8> {
    msg(
        trans_id,
        Body::BalloonResponse {
            more_pages,
            ranges: &ranges(rs),
        },
    )
}

fn hot_add_response(page_count: u32, result: u32) -> Vec<u8> {
    msg(7, Body::HotAddResponse { page_count, result })
}

fn version_request(trans_id: u32, version: Version, last: bool) -> Vec<u8> {
    msg(
        trans_id,
        Body::VersionRequest {
            version,
            is_last_attempt: last,
        },
    )
}

fn caps_report(trans_id: u32, caps: u64) -> Vec<u8> {
    msg(
        trans_id,
        Body::CapabilitiesReport {
            caps: Caps::from_u64(caps),
            min_page_cnt: 0,
            max_page_number: u64::MAX,
        },
    )
}

/// A VSP with its clock, talking to a guest whose RAM is [`ram`].
struct Host {
    vsp: Vsp,
    now: Duration,
}

impl Host {
    fn open(config: VspConfig) -> Self {
        let mut vsp = Vsp::new(config);
        vsp.channel_opened(Duration::ZERO).expect("opens");
        Host {
            vsp,
            now: Duration::ZERO,
        }
    }

    /// Open, negotiated, past the post-capabilities wait, queues drained.
    fn ready(config: VspConfig, version: Version, caps: u64) -> Self {
        let mut h = Self::open(config);
        h.recv(&version_request(1, version, false));
        h.recv(&caps_report(2, caps));
        let wait = h.vsp.config().post_caps_wait;
        h.wait(wait);
        assert_eq!(h.vsp.state(), VspState::Idle);
        h.sent();
        h.events();
        h
    }

    fn linux() -> Self {
        Self::ready(VspConfig::default(), Version::V2_0, LINUX_CAPS)
    }

    fn recv(&mut self, bytes: &[u8]) {
        self.vsp.receive(self.now, bytes, &ram);
    }

    fn wait(&mut self, d: Duration) {
        self.now += d;
        self.vsp.tick(self.now);
    }

    fn sent(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        std::iter::from_fn(|| self.vsp.poll_transmit(&mut buf).map(|n| buf[..n].to_vec())).collect()
    }

    fn events(&mut self) -> Vec<VspEvent> {
        std::iter::from_fn(|| self.vsp.poll_event()).collect()
    }

    fn violations(&mut self) -> Vec<Violation> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                VspEvent::ProtocolViolation { what } => Some(what),
                _ => None,
            })
            .collect()
    }
}

fn parse(bytes: &[u8]) -> Message<'_> {
    Message::parse(bytes).expect("host output decodes")
}

#[test]
fn t01_version_2_0_accepted() {
    let mut h = Host::open(VspConfig::default());
    h.recv(&hex("01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00"));
    assert_eq!(
        h.sent(),
        vec![hex("02 00 10 00 01 00 00 00 01 00 00 00 00 00 00 00")]
    );
    assert_eq!(h.vsp.state(), VspState::Caps);
    assert_eq!(h.vsp.negotiated_version(), Some(Version::V2_0));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::StateChanged(VspState::Version),
            VspEvent::Negotiated(Version::V2_0),
            VspEvent::StateChanged(VspState::Caps),
        ]
    );
}

#[test]
fn t02_version_0x30000_rejected_then_2_0_accepted() {
    let mut h = Host::open(VspConfig::default());
    h.events();
    h.recv(&hex("01 00 10 00 01 00 00 00 00 00 03 00 00 00 00 00"));
    assert_eq!(
        h.sent(),
        vec![hex("02 00 10 00 01 00 00 00 00 00 00 00 00 00 00 00")]
    );
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(
        h.events(),
        vec![VspEvent::VersionRejected {
            version: Version(0x30000),
            last_attempt: false
        }]
    );
    h.recv(&hex("01 00 10 00 02 00 00 00 00 00 02 00 00 00 00 00"));
    assert_eq!(
        h.sent(),
        vec![hex("02 00 10 00 02 00 00 00 01 00 00 00 00 00 00 00")]
    );
    assert_eq!(h.vsp.state(), VspState::Caps);
}

#[test]
fn t03_version_0_3_last_attempt_accepted() {
    let mut h = Host::open(VspConfig::default());
    h.recv(&hex("01 00 10 00 03 00 00 00 03 00 00 00 01 00 00 00"));
    assert_eq!(
        h.sent(),
        vec![hex("02 00 10 00 03 00 00 00 01 00 00 00 00 00 00 00")]
    );
    assert_eq!(h.vsp.negotiated_version(), Some(Version::V0_3));
}

#[test]
fn t05_caps_response_and_post_caps_quiet() {
    let caps = "03 00 20 00 02 00 00 00 1f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff";
    let version = "01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00";
    // QEMU's defaults: hot-remove offered, status reports off.
    for (status_reports, hot_remove, word) in
        [(false, true, "07"), (true, true, "03"), (true, false, "01")]
    {
        let mut h = Host::open(VspConfig {
            status_reports,
            hot_remove,
            ..VspConfig::default()
        });
        h.recv(&hex(version));
        h.sent();
        h.now = secs(3);
        h.recv(&hex(caps));
        assert_eq!(
            h.sent(),
            vec![hex(&format!(
                "04 00 10 00 02 00 00 00 {word} 00 00 00 00 00 00 00"
            ))]
        );
        assert_eq!(h.vsp.state(), VspState::PostCapsWait);
        assert_eq!(h.vsp.caps(), Some(Caps::from_u64(0x1f)));
        assert!(
            h.events()
                .contains(&VspEvent::CapabilitiesReported(Caps::from_u64(0x1f)))
        );
        // Nothing for the next 50 s, and requests are refused with the time they open.
        assert_eq!(h.vsp.next_deadline(), Some(secs(53)));
        h.wait(Duration::from_millis(49_999));
        assert!(h.sent().is_empty());
        assert_eq!(
            h.vsp.balloon(h.now, 1),
            Err(VspError::NotReady { until: secs(53) })
        );
        h.wait(Duration::from_millis(1));
        assert_eq!(h.vsp.state(), VspState::Idle);
        assert!(h.sent().is_empty());
        assert_eq!(h.vsp.balloon(h.now, 1), Ok(()));
    }
}

#[test]
fn t06_out_of_order_handshake_ignored() {
    let mut h = Host::open(VspConfig::default());
    h.events();
    h.recv(&caps_report(1, LINUX_CAPS));
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(
        h.violations(),
        vec![Violation::Unexpected {
            ty: MessageType::CAPABILITIES_REPORT,
            state: VspState::Version
        }]
    );
    h.recv(&version_request(2, Version::V2_0, false));
    assert_eq!(h.sent().len(), 1);
    h.recv(&version_request(3, Version::V2_0, false));
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Caps);
    assert_eq!(
        h.violations(),
        vec![Violation::Unexpected {
            ty: MessageType::VERSION_REQUEST,
            state: VspState::Caps
        }]
    );
}

#[test]
fn t07_short_messages_dropped() {
    let mut h = Host::open(VspConfig::default());
    h.events();
    h.recv(&hex("01 00 08 00 01 00 00 00"));
    h.recv(&hex("01 00 10 00 01 00"));
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(
        h.violations(),
        vec![
            Violation::Malformed(DecodeError::TooShort {
                ty: MessageType::VERSION_REQUEST,
                size: 8,
                needed: 16
            }),
            Violation::Malformed(DecodeError::ShortHeader { len: 6 }),
        ]
    );
    // Still negotiates afterwards.
    h.recv(&hex("01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00"));
    assert_eq!(h.vsp.state(), VspState::Caps);
}

#[test]
fn t08_balloon_happy_path() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 262_144).unwrap();
    assert_eq!(
        h.sent(),
        vec![hex("06 00 10 00 00 00 00 00 00 00 04 00 00 00 00 00")]
    );
    assert_eq!(h.vsp.state(), VspState::Balloon);
    h.events();
    h.recv(&hex(
        "07 00 18 00 05 00 00 00 00 00 00 00 03 00 00 00 45 23 01 00 00 00 02 00",
    ));
    assert_eq!(
        h.events(),
        vec![VspEvent::PagesReturned(vec![r(0x12345, 512)])]
    );
    assert_eq!(
        h.vsp.state(),
        VspState::Balloon,
        "open until more_pages = 0"
    );
    h.recv(&hex(
        "07 00 18 00 06 00 00 00 00 00 00 00 02 00 00 00 45 27 01 00 00 00 02 00",
    ));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::PagesReturned(vec![r(0x12745, 512)]),
            VspEvent::BalloonComplete {
                requested: 262_144,
                returned: 1024
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
    assert_eq!(h.vsp.ballooned().len(), 1024);
    assert_eq!(
        h.vsp.ballooned().ranges().collect::<Vec<_>>(),
        vec![r(0x12345, 512), r(0x12745, 512)]
    );
    // A partial answer means the guest is at its floor: unlike QEMU, no re-ask.
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.next_trans_id(), 1);
}

#[test]
fn t09_balloon_at_floor() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 262_144).unwrap();
    h.sent();
    h.events();
    h.recv(&hex("07 00 10 00 06 00 00 00 00 00 00 00 00 00 00 00"));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::BalloonComplete {
                requested: 262_144,
                returned: 0
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
    h.wait(secs(600));
    assert!(h.sent().is_empty(), "the host does not re-ask by itself");
}

#[test]
fn t10_lying_range_count_keeps_transaction_open() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 262_144).unwrap();
    h.sent();
    h.events();
    h.recv(&hex(
        "07 00 18 00 07 00 00 00 00 00 00 00 04 00 00 00 45 23 01 00 00 00 02 00",
    ));
    assert_eq!(
        h.violations(),
        vec![Violation::Malformed(DecodeError::RangeCount {
            ty: MessageType::BALLOON_RESPONSE,
            range_count: 2,
            size: 24,
            needed: 32
        })]
    );
    assert!(h.vsp.ballooned().is_empty());
    assert_eq!(h.vsp.state(), VspState::Balloon);
    assert!(h.vsp.next_deadline().is_some());
    h.recv(&balloon_response(8, false, &[(0x12345, 512)]));
    assert_eq!(h.vsp.state(), VspState::Idle);
    assert_eq!(h.vsp.ballooned().len(), 512);
}

#[test]
fn t11_zero_ranges_with_more_pages_keeps_waiting() {
    let zero_more = hex("07 00 10 00 08 00 00 00 00 00 00 00 01 00 00 00");
    // Ended by the final message...
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1000).unwrap();
    let deadline = h.vsp.next_deadline();
    h.wait(secs(10));
    h.recv(&zero_more);
    assert_eq!(h.vsp.state(), VspState::Balloon);
    assert_eq!(h.vsp.next_deadline(), deadline, "no progress, no re-arm");
    h.recv(&balloon_response(9, false, &[]));
    assert_eq!(h.vsp.state(), VspState::Idle);
    // ...or by the timeout.
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1000).unwrap();
    h.recv(&zero_more);
    h.events();
    h.wait(secs(30));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::TransactionTimedOut {
                what: Transaction::Balloon {
                    requested: 1000,
                    returned: 0
                }
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
}

#[test]
fn t12_duplicate_and_foreign_pages() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 4096).unwrap();
    h.events();
    // The same range twice, a half-overlapping one, and one in the MMIO hole.
    h.recv(&balloon_response(
        6,
        false,
        &[
            (0x12345, 512),
            (0x12345, 512),
            (0x12445, 512),
            (LOW_END + 0x100, 16),
        ],
    ));
    let events = h.events();
    assert!(events.contains(&VspEvent::PagesReturned(vec![
        r(0x12345, 512),
        r(0x12545, 256)
    ])));
    assert!(events.contains(&VspEvent::ProtocolViolation {
        what: Violation::ForeignPages {
            pages: 16,
            unchecked: 0,
            runs: vec![(LOW_END + 0x100, 16)]
        }
    }));
    assert!(events.contains(&VspEvent::BalloonComplete {
        requested: 4096,
        returned: 768
    }));
    assert_eq!(h.vsp.ballooned().len(), 768);
    assert_eq!(
        h.vsp.ballooned().count_in(r(LOW_END, HIGH_START - LOW_END)),
        0
    );
}

#[test]
fn t13_balloon_response_when_idle_ignored() {
    let mut h = Host::linux();
    h.recv(&balloon_response(6, false, &[(0x12345, 512)]));
    assert!(h.sent().is_empty());
    assert!(h.vsp.ballooned().is_empty());
    assert_eq!(h.vsp.state(), VspState::Idle);
    assert_eq!(
        h.violations(),
        vec![Violation::Unexpected {
            ty: MessageType::BALLOON_RESPONSE,
            state: VspState::Idle
        }]
    );
}

/// Balloons the given ranges in one transaction.
fn balloon_these(h: &mut Host, rs: &[(u64, u32)]) {
    let pages = rs.iter().map(|&(_, n)| u64::from(n)).sum();
    h.vsp.balloon(h.now, pages).unwrap();
    h.sent();
    for chunk in rs.chunks(MAX_RANGES_PER_MESSAGE) {
        h.recv(&balloon_response(5, true, chunk));
    }
    h.recv(&balloon_response(6, false, &[]));
    assert_eq!(h.vsp.state(), VspState::Idle);
    assert_eq!(h.vsp.ballooned().len(), pages);
    h.events();
}

#[test]
fn t14_unballoon_chunking() {
    let mut h = Host::linux();
    // 1021 single pages, none adjacent: three messages of 510, 510 and 1 range.
    let rs: Vec<(u64, u32)> = (0..1021).map(|i| (0x20000 + 2 * i, 1)).collect();
    balloon_these(&mut h, &rs);
    let runs = h.vsp.unballoon(h.now, 10_000, &mut ProtocolOnly).unwrap();
    assert_eq!(runs.len(), 1021);
    assert!(h.vsp.ballooned().is_empty());
    let sent = h.sent();
    assert_eq!(sent.len(), 3);
    let mut more = Vec::new();
    for m in &sent {
        assert!(m.len() <= MAX_MESSAGE_SIZE);
        let m = parse(m);
        assert_eq!(m.trans_id, 1, "one transaction id for every fragment");
        let Body::UnballoonRequest { more_pages, ranges } = m.body else {
            panic!("{m:?}")
        };
        more.push((more_pages, ranges.len()));
    }
    assert_eq!(more, vec![(true, 510), (true, 510), (false, 1)]);
    h.events();
    h.recv(&hex("09 00 08 00 2a 00 00 00"));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::UnballoonComplete { pages: 1021 },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
}

#[test]
fn unballoon_backs_pages_before_it_queues_the_request() {
    let mut h = Host::linux();
    let rs: Vec<(u64, u32)> = (0..4).map(|i| (0x20000 + 8 * i, 2)).collect();
    balloon_these(&mut h, &rs);
    h.events();
    // A backer that refuses: the pages stay ballooned and nothing reaches the guest.
    let mut refuse = |_: &[GfnRange]| Err(BackingRefused);
    assert_eq!(
        h.vsp.unballoon(h.now, 8, &mut refuse),
        Err(VspError::BackingRefused)
    );
    assert_eq!(h.vsp.ballooned().len(), 8);
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Idle);
    // A backer that sees the runs while no message is queued yet.
    let mut seen = Vec::new();
    let queued_before = h.vsp.next_trans_id();
    let mut record = |runs: &[GfnRange]| {
        seen.extend_from_slice(runs);
        Ok(())
    };
    let runs = h.vsp.unballoon(h.now, 8, &mut record).unwrap();
    assert_eq!(seen, runs);
    assert_eq!(runs.iter().map(|r| r.count()).sum::<u64>(), 8);
    assert!(h.vsp.next_trans_id() >= queued_before);
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn hot_add_backs_the_range_before_the_request() {
    let mut h = Host::linux();
    let mut refuse = |_: &[GfnRange]| Err(BackingRefused);
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut refuse),
        Err(VspError::BackingRefused)
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Idle);
    let mut seen = Vec::new();
    let mut record = |runs: &[GfnRange]| {
        seen.extend_from_slice(runs);
        Ok(())
    };
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut record),
        Ok(32_768)
    );
    assert_eq!(seen, vec![r(0x100000, 32_768)]);
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn t16_full_page_unballoon_is_4096_bytes() {
    let mut h = Host::linux();
    let rs: Vec<(u64, u32)> = (0..510).map(|i| (0x30000 + 4 * i, 2)).collect();
    balloon_these(&mut h, &rs);
    h.vsp.unballoon(h.now, 1020, &mut ProtocolOnly).unwrap();
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 4096);
    assert_eq!(&sent[0][..4], &hex("08 00 00 10")[..]);
    assert_eq!(&sent[0][8..16], &hex("00 00 00 00 fe 01 00 00")[..]);
}

#[test]
fn t17_hot_add_with_region_to_2_0_guest() {
    let mut h = Host::linux();
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );
    assert_eq!(
        h.sent(),
        vec![hex(
            "0a 00 18 00 00 00 00 00 00 00 10 00 00 00 80 00 00 00 10 00 00 00 80 00"
        )]
    );
    h.events();
    h.recv(&hex("0b 00 10 00 2b 00 00 00 00 80 00 00 01 00 00 00"));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::HotAddComplete {
                requested: 32_768,
                added: 32_768,
                result: HotAddResult::Success
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
}

#[test]
fn t18_hot_add_without_region_to_0_3_guest() {
    let mut h = Host::ready(VspConfig::default(), Version::V0_3, LINUX_CAPS);
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    assert_eq!(
        h.sent(),
        vec![hex("0a 00 10 00 00 00 00 00 00 00 10 00 00 00 80 00")]
    );
}

#[test]
fn t19_hot_add_permanent_and_transient_failure() {
    // {0, 1}: never again on this connection.
    let mut h = Host::linux();
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.events();
    h.recv(&hex("0b 00 10 00 0b 00 00 00 00 00 00 00 01 00 00 00"));
    assert!(h.events().contains(&VspEvent::HotAddComplete {
        requested: 32_768,
        added: 0,
        result: HotAddResult::Permanent
    }));
    h.wait(secs(3600));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
    // A reset gives the next connection a fresh start.
    h.vsp.channel_closed(h.now);
    h.vsp.channel_opened(h.now).unwrap();
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    h.wait(secs(50));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );

    // {0, 0}: Hyper-V's "retry later".
    let mut h = Host::linux();
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.events();
    h.recv(&hex("0b 00 10 00 0b 00 00 00 00 00 00 00 00 00 00 00"));
    let retry_at = h.now + secs(10);
    assert!(h.events().contains(&VspEvent::HotAddComplete {
        requested: 32_768,
        added: 0,
        result: HotAddResult::Transient {
            retry_at: Some(retry_at)
        }
    }));
    assert_eq!(h.vsp.state(), VspState::Idle);
    h.vsp.balloon(h.now, 10).unwrap();
    h.recv(&balloon_response(3, false, &[]));
    h.wait(secs(5));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::NotReady { until: retry_at })
    );
    h.wait(secs(5));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );

    // {0, 0} with QEMU's policy: off until reset.
    let mut h = Host::ready(
        VspConfig {
            hot_add_transient: HotAddTransient::Disable,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS,
    );
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.events();
    h.recv(&hex("0b 00 10 00 0b 00 00 00 00 00 00 00 00 00 00 00"));
    assert!(h.events().contains(&VspEvent::HotAddComplete {
        requested: 32_768,
        added: 0,
        result: HotAddResult::Transient { retry_at: None }
    }));
    h.wait(secs(3600));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
}

#[test]
fn t20_hot_add_over_report_clamped() {
    let mut h = Host::linux();
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.events();
    h.recv(&hot_add_response(40_000, 1));
    let events = h.events();
    assert!(events.contains(&VspEvent::ProtocolViolation {
        what: Violation::HotAddOverReport {
            requested: 32_768,
            reported: 40_000
        }
    }));
    assert!(events.contains(&VspEvent::HotAddComplete {
        requested: 32_768,
        added: 32_768,
        result: HotAddResult::Success
    }));
}

#[test]
fn t21_hot_add_alignment() {
    // Alignment 11: 2 GiB, 524 288 pages.
    let caps = 0b11 | (11 << 2);
    let mut h = Host::ready(VspConfig::default(), Version::V2_0, caps);
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 262_144, &mut ProtocolOnly),
        Err(VspError::NothingToDo),
        "1 GiB is below one alignment unit"
    );
    assert_eq!(
        h.vsp.hot_add(h.now, 0x140000, 524_288, &mut ProtocolOnly),
        Err(VspError::Unaligned {
            alignment_pages: 524_288
        })
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Idle);
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 786_432, &mut ProtocolOnly),
        Ok(524_288)
    );
    let sent = h.sent();
    let Body::HotAddRequest { range, region } = parse(&sent[0]).body else {
        panic!()
    };
    assert_eq!((range.start_page(), range.page_cnt()), (0x100000, 524_288));
    assert_eq!(region, Some(range));
}

#[test]
fn t22_status_report_in_any_open_state() {
    let status = hex(
        "05 00 30 00 09 00 00 00 00 00 04 00 00 00 00 00 00 00 02 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    );
    let expect = VspEvent::StatusReport {
        committed: 131_072,
        available: 262_144,
    };
    let mut h = Host::open(VspConfig::default());
    h.events();
    h.recv(&status);
    assert!(h.sent().is_empty());
    assert_eq!(h.events(), vec![expect.clone()]);
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(h.vsp.last_status().map(|s| s.num_committed), Some(131_072));
    h.recv(&version_request(1, Version::V2_0, false));
    h.sent();
    h.events();
    h.recv(&status);
    assert_eq!(h.events(), vec![expect.clone()]);
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    h.events();
    h.recv(&status);
    assert!(h.sent().is_empty());
    assert_eq!(h.events(), vec![expect]);
    assert_eq!(h.vsp.state(), VspState::Balloon);
    // Not before the channel opens.
    let mut v = Vsp::new(VspConfig::default());
    v.receive(Duration::ZERO, &status, &ram);
    assert_eq!(v.poll_event(), None);
}

#[test]
fn t23_info_max_page_count_sent_after_the_wait() {
    let mut h = Host::open(VspConfig {
        max_page_count: Some(524_288),
        ..VspConfig::default()
    });
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    assert_eq!(h.sent().len(), 2);
    h.wait(secs(49));
    assert!(h.sent().is_empty());
    h.wait(secs(1));
    assert_eq!(
        h.sent(),
        vec![hex(
            "0c 00 20 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 08 00 00 00 00 00 08 00 00 00 00 00"
        )]
    );
    // It is not a transaction: the first balloon still carries id 0.
    h.vsp.balloon(h.now, 1).unwrap();
    assert_eq!(parse(&h.sent()[0]).trans_id, 0);
}

#[test]
fn t24_unknown_type_and_dm_error_ignored() {
    let mut h = Host::open(VspConfig::default());
    h.events();
    h.recv(&hex("00 00 08 00 00 00 00 00"));
    h.recv(&hex("0f 00 08 00 00 00 00 00"));
    assert!(h.sent().is_empty());
    assert_eq!(
        h.violations(),
        vec![
            Violation::Unexpected {
                ty: MessageType::ERROR,
                state: VspState::Version
            },
            Violation::Malformed(DecodeError::UnknownType { ty: 0x0f }),
        ]
    );
    h.recv(&hex("01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00"));
    assert_eq!(h.sent().len(), 1);
    assert_eq!(h.vsp.state(), VspState::Caps);
}

#[test]
fn t25_reset_mid_balloon_restarts_negotiation() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 10).unwrap();
    h.recv(&balloon_response(3, false, &[(0x1000, 10)]));
    h.vsp.balloon(h.now, 20).unwrap();
    assert_eq!(parse(&h.sent()[1]).trans_id, 1);
    h.recv(&balloon_response(4, true, &[(0x2000, 10)]));
    h.events();
    h.vsp.channel_closed(h.now);
    assert_eq!(
        h.events(),
        vec![VspEvent::Reset, VspEvent::StateChanged(VspState::Closed)]
    );
    assert_eq!(h.vsp.state(), VspState::Closed);
    assert_eq!(h.vsp.next_deadline(), None);
    assert_eq!(h.vsp.negotiated_version(), None);
    assert_eq!(h.vsp.caps(), None);
    // A late response to the dead connection counts for nothing.
    h.recv(&balloon_response(5, false, &[(0x3000, 10)]));
    assert_eq!(h.vsp.ballooned().len(), 20);
    assert_eq!(h.vsp.balloon(h.now, 1), Err(VspError::NotConnected));

    h.vsp.channel_opened(h.now).unwrap();
    assert_eq!(h.vsp.channel_opened(h.now), Err(VspError::AlreadyOpen));
    assert_eq!(h.vsp.state(), VspState::Version);
    h.recv(&caps_report(1, LINUX_CAPS));
    assert!(h.sent().is_empty(), "negotiation starts over");
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    h.sent();
    h.wait(secs(50));
    h.vsp.balloon(h.now, 1).unwrap();
    assert_eq!(
        h.sent(),
        vec![hex("06 00 10 00 00 00 00 00 01 00 00 00 00 00 00 00")]
    );
}

#[test]
fn t26_unfinished_balloon_times_out() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 262_144).unwrap();
    h.wait(secs(1));
    h.recv(&balloon_response(5, true, &[(0x12345, 512)]));
    assert_eq!(h.vsp.next_deadline(), Some(h.now + secs(30)));
    h.events();
    h.wait(Duration::from_millis(29_999));
    assert_eq!(h.vsp.state(), VspState::Balloon);
    h.wait(Duration::from_millis(1));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::TransactionTimedOut {
                what: Transaction::Balloon {
                    requested: 262_144,
                    returned: 512
                }
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
    // The rest of the answer may still come: the guest took those pages offline.
    assert_eq!(h.vsp.next_deadline(), Some(h.now + secs(30)));
    assert_eq!(h.vsp.ballooned().len(), 512, "what came is kept");
    assert_eq!(
        h.vsp.balloon(h.now, 1),
        Err(VspError::Busy),
        "its final message would end a new one"
    );
    h.recv(&balloon_response(6, false, &[(0x12745, 512)]));
    assert_eq!(
        h.vsp.ballooned().len(),
        1024,
        "a late answer is counted, not stranded"
    );
    assert_eq!(h.vsp.next_deadline(), None);
    assert_eq!(h.vsp.balloon(h.now, 1), Ok(()));
    // Without a final message, the late window closes after one more timeout.
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1024).unwrap();
    h.wait(secs(30));
    assert_eq!(h.vsp.balloon(h.now, 1), Err(VspError::Busy));
    h.wait(secs(30));
    assert_eq!(h.vsp.balloon(h.now, 1), Ok(()));
}

#[test]
fn a_guest_trickling_pages_cannot_hold_a_balloon_open() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1 << 20).unwrap();
    let all = |_: u64, _: u64| true;
    let mut timed_out = false;
    for pfn in 0x10_0000..0x10_0014 {
        h.wait(secs(29));
        if h.vsp.state() != VspState::Balloon {
            timed_out = true;
            break;
        }
        h.vsp
            .receive(h.now, &balloon_response(9, true, &[(pfn, 1)]), &all);
    }
    assert!(timed_out, "bounded by {MAX} reply timeouts", MAX = 8);
}

#[test]
fn checklist_01_every_output_is_one_dm_message() {
    assert_eq!(CLASS_ID.to_string(), "525074DC-8985-46E2-8057-A307DC18A502");
    let mut h = Host::open(VspConfig {
        max_page_count: Some(1 << 20),
        hot_remove: true,
        ..VspConfig::default()
    });
    let mut out = Vec::new();
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS | 1 << 6));
    h.wait(secs(50));
    out.extend(h.sent());
    h.vsp.balloon(h.now, 2000).unwrap();
    let rs: Vec<(u64, u32)> = (0..600).map(|i| (0x40000 + 2 * i, 1)).collect();
    h.recv(&balloon_response(3, true, &rs[..510]));
    h.recv(&balloon_response(4, false, &rs[510..]));
    h.vsp.unballoon(h.now, 600, &mut ProtocolOnly).unwrap();
    out.extend(h.sent());
    h.recv(&msg(5, Body::UnballoonResponse));
    h.vsp
        .hot_add(h.now, 0x100000, 65_536, &mut ProtocolOnly)
        .unwrap();
    out.extend(h.sent());
    h.recv(&hot_add_response(65_536, 1));
    h.vsp.hot_remove(h.now, 0, 512, 0).unwrap();
    out.extend(h.sent());
    assert_eq!(out.len(), 2 + 1 + 1 + 2 + 1 + 1);
    for bytes in &out {
        assert!(bytes.len() <= MAX_MESSAGE_SIZE);
        assert_eq!(
            usize::from(u16::from_le_bytes([bytes[2], bytes[3]])),
            bytes.len()
        );
        let m = parse(bytes);
        assert!(matches!(
            m.message_type(),
            MessageType::VERSION_RESPONSE
                | MessageType::CAPABILITIES_RESPONSE
                | MessageType::BALLOON_REQUEST
                | MessageType::UNBALLOON_REQUEST
                | MessageType::MEM_HOT_ADD_REQUEST
                | MessageType::INFO_MESSAGE
                | MessageType::MEM_HOT_REMOVE_REQUEST
        ));
    }
}

#[test]
fn checklist_02_only_version_requests_until_accepted() {
    let mut h = Host::open(VspConfig::default());
    for m in [
        caps_report(1, LINUX_CAPS),
        balloon_response(1, false, &[(0x1000, 1)]),
        msg(1, Body::UnballoonResponse),
        hot_add_response(1, 1),
        msg(1, Body::VersionResponse { is_accepted: true }),
        msg(1, Body::BalloonRequest { num_pages: 1 }),
    ] {
        h.recv(&m);
    }
    assert!(h.sent().is_empty());
    assert!(h.vsp.ballooned().is_empty());
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(h.violations().len(), 6);
    // Each request is answered, echoing its id.
    h.recv(&version_request(0xdead_beef, Version::V2_0, false));
    let sent = h.sent();
    assert_eq!(parse(&sent[0]).trans_id, 0xdead_beef);
    assert_eq!(sent[0].len(), 16);
}

#[test]
fn checklist_03_only_known_versions_accepted() {
    for v in [
        Version(0),
        Version::new(0, 4),
        Version::new(1, 5),
        Version::new(2, 1),
        Version(0x30000),
        Version(u32::MAX),
    ] {
        let mut h = Host::open(VspConfig::default());
        h.recv(&version_request(1, v, false));
        assert_eq!(
            parse(&h.sent()[0]).body,
            Body::VersionResponse { is_accepted: false },
            "{v}"
        );
        assert_eq!(h.vsp.state(), VspState::Version);
    }
    // A refused last attempt: the guest gives up; the host keeps no timer for it.
    let mut h = Host::open(VspConfig {
        versions: AcceptedVersions {
            v0_3: false,
            ..AcceptedVersions::ALL
        },
        ..VspConfig::default()
    });
    h.events();
    h.recv(&version_request(3, Version::V0_3, true));
    assert_eq!(
        parse(&h.sent()[0]).body,
        Body::VersionResponse { is_accepted: false }
    );
    assert_eq!(
        h.events(),
        vec![VspEvent::VersionRejected {
            version: Version::V0_3,
            last_attempt: true
        }]
    );
    assert_eq!(h.vsp.state(), VspState::Version);
    assert_eq!(h.vsp.next_deadline(), None);
    for v in [Version::V1_0, Version::V2_0] {
        let mut h = Host::open(VspConfig::default());
        h.recv(&version_request(1, v, false));
        assert_eq!(h.vsp.negotiated_version(), Some(v));
    }
}

#[test]
fn checklist_04_only_caps_after_version() {
    let mut h = Host::open(VspConfig::default());
    h.recv(&version_request(1, Version::V2_0, false));
    h.sent();
    h.events();
    h.recv(&balloon_response(2, false, &[(0x1000, 1)]));
    h.recv(&version_request(3, Version::V1_0, false));
    assert!(h.sent().is_empty());
    assert_eq!(h.violations().len(), 2);
    assert_eq!(h.vsp.state(), VspState::Caps);
    assert_eq!(h.vsp.balloon(h.now, 1), Err(VspError::NotConnected));
    h.recv(&caps_report(0x77, 0));
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 16);
    let m = parse(&sent[0]);
    assert_eq!(m.trans_id, 0x77);
    assert!(matches!(
        m.body,
        Body::CapabilitiesResponse {
            is_accepted: true,
            ..
        }
    ));
    // Bits only 2.0 defines are zero for an older guest.
    let mut h = Host::open(VspConfig {
        status_reports: false,
        hot_remove: true,
        ..VspConfig::default()
    });
    h.recv(&version_request(1, Version::V1_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    assert_eq!(
        h.sent()[1],
        hex("04 00 10 00 02 00 00 00 01 00 00 00 00 00 00 00")
    );
}

#[test]
fn checklist_05_requests_honour_caps() {
    let mut h = Host::ready(VspConfig::default(), Version::V2_0, 0);
    assert!(matches!(
        h.vsp.balloon(h.now, 1),
        Err(VspError::NotCapable(_))
    ));
    assert!(matches!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::NotCapable(_))
    ));
    // Pages ballooned on an earlier connection cannot go back to a guest that cannot balloon.
    let mut h = Host::linux();
    balloon_these(&mut h, &[(0x1000, 8)]);
    h.vsp.channel_closed(h.now);
    h.vsp.channel_opened(h.now).unwrap();
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, 0b10 | 7 << 2));
    h.wait(secs(50));
    assert!(matches!(
        h.vsp.unballoon(h.now, 8, &mut ProtocolOnly),
        Err(VspError::NotCapable(_))
    ));
    assert!(matches!(
        h.vsp.balloon(h.now, 8),
        Err(VspError::NotCapable(_))
    ));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );
    assert!(
        h.sent()
            .iter()
            .all(|m| parse(m).message_type() != MessageType::BALLOON_REQUEST)
    );
}

#[test]
fn checklist_06_post_caps_wait_refuses_requests() {
    let mut h = Host::open(VspConfig::default());
    h.recv(&version_request(1, Version::V2_0, false));
    h.now = secs(7);
    h.recv(&caps_report(2, LINUX_CAPS));
    h.sent();
    let until = secs(57);
    assert_eq!(h.vsp.next_deadline(), Some(until));
    h.now = secs(30);
    assert_eq!(h.vsp.balloon(h.now, 1), Err(VspError::NotReady { until }));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::NotReady { until })
    );
    assert_eq!(
        h.vsp.unballoon(h.now, 1, &mut ProtocolOnly),
        Err(VspError::NotReady { until })
    );
    assert!(h.sent().is_empty());
    // The wait ends at its time even if no tick came.
    h.now = until;
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );
    // A zero wait means at once.
    let mut h = Host::open(VspConfig {
        post_caps_wait: Duration::ZERO,
        ..VspConfig::default()
    });
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    assert_eq!(h.vsp.state(), VspState::Idle);
}

#[test]
fn checklist_07_one_operation_at_a_time() {
    let mut h = Host::linux();
    balloon_these(&mut h, &[(0x1000, 64)]);
    h.vsp.balloon(h.now, 10).unwrap();
    assert_eq!(h.vsp.balloon(h.now, 10), Err(VspError::Busy));
    assert_eq!(
        h.vsp.unballoon(h.now, 10, &mut ProtocolOnly),
        Err(VspError::Busy)
    );
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::Busy)
    );
    assert_eq!(h.sent().len(), 1);
    h.recv(&balloon_response(1, false, &[]));
    h.vsp.unballoon(h.now, 10, &mut ProtocolOnly).unwrap();
    assert_eq!(h.vsp.balloon(h.now, 10), Err(VspError::Busy));
    h.recv(&msg(1, Body::UnballoonResponse));
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    assert_eq!(
        h.vsp.unballoon(h.now, 10, &mut ProtocolOnly),
        Err(VspError::Busy)
    );
    h.recv(&hot_add_response(32_768, 1));
    assert_eq!(h.vsp.state(), VspState::Idle);
}

#[test]
fn checklist_08_large_balloon_split_into_requests() {
    // A guest larger than `ram`.
    let big_guest = |s: u64, n: u64| s + n <= 1 << 22;
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1_500_000).unwrap();
    let mut asked = Vec::new();
    let mut next = 0u64;
    let mut ids = Vec::new();
    loop {
        let sent = h.sent();
        let Some(m) = sent.first() else { break };
        let m = parse(m);
        let Body::BalloonRequest { num_pages } = m.body else {
            panic!()
        };
        ids.push(m.trans_id);
        asked.push(num_pages);
        // Answered in full, in 2 MiB ranges and a remainder, several messages.
        let n = u64::from(num_pages);
        let mut rs: Vec<(u64, u32)> = (0..n / 512).map(|i| (next + i * 512, 512)).collect();
        if n % 512 != 0 {
            rs.push((next + n / 512 * 512, num_pages % 512));
        }
        next += u64::from(num_pages);
        for chunk in rs.chunks(MAX_RANGES_PER_MESSAGE) {
            let m = balloon_response(9, true, chunk);
            h.vsp.receive(h.now, &m, &big_guest);
        }
        h.recv(&balloon_response(9, false, &[]));
    }
    assert_eq!(asked, vec![585_728, 585_728, 328_544]);
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(h.events().contains(&VspEvent::BalloonComplete {
        requested: 1_500_000,
        returned: 1_500_000
    }));
    assert_eq!(h.vsp.state(), VspState::Idle);
    // A partial answer to the first request stops the operation.
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1_500_000).unwrap();
    h.sent();
    h.recv(&balloon_response(1, false, &[(0, 4096)]));
    assert!(h.sent().is_empty());
    assert!(h.events().contains(&VspEvent::BalloonComplete {
        requested: 1_500_000,
        returned: 4096
    }));
}

#[test]
fn checklist_09_returned_pages_checked() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 100_000).unwrap();
    h.events();
    h.recv(&balloon_response(1, true, &[(0x1000, 512)]));
    // Across messages: the repeat is dropped, silently.
    h.recv(&balloon_response(2, true, &[(0x1000, 512), (0x1100, 512)]));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::PagesReturned(vec![r(0x1000, 512)]),
            VspEvent::PagesReturned(vec![r(0x1200, 256)]),
        ]
    );
    // Straddling the end of RAM, past the 40-bit space, and zero-length ranges.
    h.recv(&balloon_response(
        3,
        false,
        &[
            (LOW_END - 16, 32),
            (PageRange::MAX_START_PAGE, 2),
            (0x5000, 0),
            (HIGH_END - 8, 8),
        ],
    ));
    let events = h.events();
    // The owned half of the straddling range is kept, the rest reported.
    assert!(events.contains(&VspEvent::ProtocolViolation {
        what: Violation::ForeignPages {
            pages: 18,
            unchecked: 0,
            runs: vec![
                (LOW_END, 16),
                (PageRange::MAX_START_PAGE + 1, 1),
                (PageRange::MAX_START_PAGE, 1),
            ]
        }
    }));
    assert!(events.contains(&VspEvent::PagesReturned(vec![
        r(LOW_END - 16, 16),
        r(HIGH_END - 8, 8)
    ])));
    assert_eq!(h.vsp.ballooned().len(), 768 + 16 + 8);
    assert!(
        h.vsp
            .ballooned()
            .ranges()
            .all(|g| ram(g.start(), g.count()))
    );
}

#[test]
fn checklist_10_unballoon_returns_only_ballooned_pages() {
    let mut h = Host::linux();
    assert_eq!(
        h.vsp.unballoon(h.now, 10, &mut ProtocolOnly),
        Err(VspError::NothingToDo)
    );
    balloon_these(&mut h, &[(0x1000, 512), (0x3000, 100)]);
    // More than ballooned: what there is.
    let runs = h
        .vsp
        .unballoon(h.now, 1_000_000, &mut ProtocolOnly)
        .unwrap();
    assert_eq!(runs, vec![r(0x1000, 512), r(0x3000, 100)]);
    let sent = h.sent();
    assert_eq!(
        sent,
        vec![msg(
            1,
            Body::UnballoonRequest {
                more_pages: false,
                ranges: &ranges(&[(0x1000, 512), (0x3000, 100)])
            }
        )]
    );
    h.events();
    // Only an 8-byte unballoon response ends it.
    h.recv(&hot_add_response(0, 1));
    h.recv(&balloon_response(3, false, &[]));
    assert_eq!(h.vsp.state(), VspState::Unballoon);
    h.recv(&msg(3, Body::UnballoonResponse));
    assert!(
        h.events()
            .contains(&VspEvent::UnballoonComplete { pages: 612 })
    );
    // Part of a set, lowest pages first; a second response is unexpected.
    balloon_these(&mut h, &[(0x1000, 512)]);
    assert_eq!(
        h.vsp.unballoon(h.now, 100, &mut ProtocolOnly).unwrap(),
        vec![r(0x1000, 100)]
    );
    assert_eq!(
        h.vsp.ballooned().ranges().collect::<Vec<_>>(),
        vec![r(0x1064, 412)]
    );
    h.recv(&msg(4, Body::UnballoonResponse));
    h.events();
    h.recv(&msg(4, Body::UnballoonResponse));
    assert_eq!(h.violations().len(), 1);
    // A run above 2^24 - 1 pages goes out as several ranges.
    let mut h = Host::ready(VspConfig::default(), Version::V2_0, LINUX_CAPS);
    h.vsp.balloon(h.now, 1 << 24).unwrap();
    h.sent();
    // Given as Linux gives them, 2 MiB per range: an ownership check of a 2^24-page range
    // costs 2^15 units of work, more than one message may spend.
    let all = |_: u64, _: u64| true;
    let blocks: Vec<(u64, u32)> = (0..(1u64 << 15) + 1).map(|i| (i * 512, 512)).collect();
    for chunk in blocks.chunks(MAX_RANGES_PER_MESSAGE) {
        h.vsp
            .receive(h.now, &balloon_response(1, true, chunk), &all);
    }
    h.vsp.receive(h.now, &balloon_response(1, false, &[]), &all);
    assert!(h.violations().is_empty());
    assert_eq!(
        h.vsp.unballoon(h.now, 1 << 24, &mut ProtocolOnly).unwrap(),
        (0..32).map(|i| r(i * 524_288, 524_288)).collect::<Vec<_>>(),
        "at most 2 GiB per range, as QEMU sends"
    );
}

#[test]
fn checklist_11_hot_add_chunks_progress_and_barrier() {
    let mut h = Host::linux();
    // 5 GiB: chunks of 2 GiB, 2 GiB, 1 GiB, contiguous, each its own transaction.
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 1_310_720, &mut ProtocolOnly),
        Ok(1_310_720)
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let sent = h.sent();
        assert_eq!(sent.len(), 1);
        let m = parse(&sent[0]);
        let Body::HotAddRequest { range, region } = m.body else {
            panic!()
        };
        assert_eq!(region, Some(range));
        got.push((m.trans_id, range.start_page(), range.page_cnt()));
        h.recv(&hot_add_response(range.page_cnt(), 1));
    }
    assert_eq!(
        got,
        vec![
            (0, 0x100000, 524_288),
            (1, 0x180000, 524_288),
            (2, 0x200000, 262_144)
        ]
    );
    assert!(h.events().contains(&VspEvent::HotAddComplete {
        requested: 1_310_720,
        added: 1_310_720,
        result: HotAddResult::Success
    }));
    // Fewer pages than asked: the barrier; no further hot-add on this connection.
    h.vsp
        .hot_add(h.now, 0x300000, 1_048_576, &mut ProtocolOnly)
        .unwrap();
    h.sent();
    h.recv(&hot_add_response(100_000, 1));
    assert!(h.sent().is_empty());
    assert!(h.events().contains(&VspEvent::HotAddComplete {
        requested: 1_048_576,
        added: 100_000,
        result: HotAddResult::Barrier
    }));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x400000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
    // "Failed" with pages: counted, and a barrier.
    let mut h = Host::linux();
    h.vsp
        .hot_add(h.now, 0x100000, 65_536, &mut ProtocolOnly)
        .unwrap();
    h.events();
    h.recv(&hot_add_response(32_768, 0));
    let events = h.events();
    assert!(events.contains(&VspEvent::ProtocolViolation {
        what: Violation::HotAddFailedWithPages { page_count: 32_768 }
    }));
    assert!(events.contains(&VspEvent::HotAddComplete {
        requested: 65_536,
        added: 32_768,
        result: HotAddResult::Barrier
    }));
    // Ranges the host cannot name, or that cover ballooned pages, are refused.
    let mut h = Host::linux();
    assert_eq!(
        h.vsp.hot_add(
            h.now,
            PageRange::MAX_START_PAGE + 1 - 32_768,
            65_536,
            &mut ProtocolOnly
        ),
        Err(VspError::OutOfRange)
    );
    balloon_these(&mut h, &[(0x8000, 1)]);
    assert_eq!(
        h.vsp.hot_add(h.now, 0, 65_536, &mut ProtocolOnly),
        Err(VspError::OverlapsBallooned)
    );
    // A configured chunk below the alignment becomes one alignment unit.
    let mut h = Host::ready(
        VspConfig {
            max_hot_add_pages: 1000,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS,
    );
    h.vsp
        .hot_add(h.now, 0x100000, 65_536, &mut ProtocolOnly)
        .unwrap();
    let Body::HotAddRequest { range, .. } = parse(&h.sent()[0]).body else {
        panic!()
    };
    assert_eq!(range.page_cnt(), 32_768);
}

#[test]
fn checklist_12_status_reports_unwanted() {
    let mut h = Host::ready(
        VspConfig {
            status_reports: false,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS,
    );
    h.recv(&msg(
        9,
        Body::StatusReport(StatusReport {
            num_committed: 5,
            ..StatusReport::default()
        }),
    ));
    assert!(h.events().is_empty());
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.last_status(), None);
}

#[test]
fn checklist_13_info_only_for_1_0_and_later() {
    for (version, infos) in [(Version::V0_3, 0), (Version::V1_0, 1), (Version::V2_0, 1)] {
        let mut h = Host::open(VspConfig {
            max_page_count: Some(1 << 20),
            ..VspConfig::default()
        });
        h.recv(&version_request(1, version, false));
        h.recv(&caps_report(2, LINUX_CAPS));
        h.wait(secs(50));
        let sent = h.sent();
        let info: Vec<_> = sent
            .iter()
            .filter_map(|m| parse(m).body.max_page_count())
            .collect();
        assert_eq!(info.len(), infos, "{version}");
        assert!(info.iter().all(|&n| n == 1 << 20));
    }
    // None configured, none sent.
    let mut h = Host::open(VspConfig::default());
    h.recv(&version_request(1, Version::V2_0, false));
    h.recv(&caps_report(2, LINUX_CAPS));
    h.wait(secs(50));
    assert_eq!(h.sent().len(), 2);
}

#[test]
fn checklist_14_wrong_state_messages_dropped_without_reply() {
    let mut h = Host::linux();
    let junk = [
        msg(1, Body::UnballoonResponse),
        hot_add_response(32_768, 1),
        msg(
            1,
            Body::HotRemoveResponse {
                result: 0,
                more_pages: false,
                ranges: &ranges(&[(0x1000, 1)]),
            },
        ),
        version_request(1, Version::V2_0, false),
        caps_report(1, LINUX_CAPS),
        msg(1, Body::BalloonRequest { num_pages: 5 }),
        msg(
            1,
            Body::HotAddRequest {
                range: PageRange::new(),
                region: None,
            },
        ),
        hex("00 00 08 00 00 00 00 00"),
        hex("63 00 08 00 00 00 00 00"),
        hex("07 00 10 00"),
    ];
    for m in &junk {
        h.recv(m);
    }
    assert!(h.sent().is_empty());
    assert_eq!(h.violations().len(), junk.len());
    assert_eq!(h.vsp.state(), VspState::Idle);
    assert!(h.vsp.ballooned().is_empty());
    // Mid-transaction too: the transaction is untouched.
    h.vsp.balloon(h.now, 10).unwrap();
    h.sent();
    let deadline = h.vsp.next_deadline();
    for m in &junk {
        h.recv(m);
    }
    assert!(h.sent().is_empty());
    assert_eq!(h.vsp.state(), VspState::Balloon);
    assert_eq!(h.vsp.next_deadline(), deadline);
    // Trailing bytes past hdr.size (ring padding) are fine.
    let mut padded = balloon_response(1, false, &[(0x1000, 10)]);
    padded.extend([0xff; 7]);
    h.recv(&padded);
    assert_eq!(h.vsp.ballooned().len(), 10);
}

#[test]
fn checklist_15_every_wait_times_out() {
    let config = VspConfig {
        hot_remove: true,
        ..VspConfig::default()
    };
    let caps = LINUX_CAPS | 1 << 6;
    type Start = fn(&mut Host) -> Transaction;
    let cases: [(Start, Duration); 4] = [
        (
            |h| {
                h.vsp.balloon(h.now, 7).unwrap();
                Transaction::Balloon {
                    requested: 7,
                    returned: 0,
                }
            },
            secs(30),
        ),
        (
            |h| {
                balloon_these(h, &[(0x1000, 7)]);
                h.vsp.unballoon(h.now, 7, &mut ProtocolOnly).unwrap();
                Transaction::Unballoon { pages: 7 }
            },
            secs(30),
        ),
        (
            |h| {
                h.vsp
                    .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
                    .unwrap();
                Transaction::HotAdd {
                    requested: 32_768,
                    added: 0,
                }
            },
            secs(120),
        ),
        (
            |h| {
                h.vsp.hot_remove(h.now, 0, 7, 0).unwrap();
                Transaction::HotRemove {
                    requested: 7,
                    removed: 0,
                }
            },
            secs(30),
        ),
    ];
    for (start, timeout) in cases {
        let mut h = Host::ready(config.clone(), Version::V2_0, caps);
        let what = start(&mut h);
        assert!(h.vsp.state().awaits_reply());
        assert_eq!(h.vsp.next_deadline(), Some(h.now + timeout));
        h.events();
        h.wait(timeout);
        assert_eq!(
            h.events(),
            vec![
                VspEvent::TransactionTimedOut { what },
                VspEvent::StateChanged(VspState::Idle)
            ]
        );
        // After a balloon or a hot-remove, its late answers are still taken in for one
        // more timeout.
        let late = matches!(
            what,
            Transaction::Balloon { .. } | Transaction::HotRemove { .. }
        )
        .then_some(h.now + timeout);
        assert_eq!(h.vsp.next_deadline(), late);
        assert_eq!(
            h.vsp.next_trans_id(),
            1 + u32::from(matches!(what, Transaction::Unballoon { .. }))
        );
    }
    // A hot-add that timed out may still be running in the guest: no second one.
    let mut h = Host::linux();
    h.vsp
        .hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.wait(secs(120));
    assert_eq!(
        h.vsp.hot_add(h.now, 0x100000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
    // A reply handed in by the call that passes the deadline still counts.
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 8).unwrap();
    h.now += secs(31);
    h.recv(&balloon_response(1, false, &[(0x1000, 8)]));
    assert!(h.events().contains(&VspEvent::BalloonComplete {
        requested: 8,
        returned: 8
    }));
}

#[test]
fn checklist_16_close_drops_connection_state_keeps_ballooned() {
    let mut h = Host::linux();
    balloon_these(&mut h, &[(0x1000, 64)]);
    h.vsp.balloon(h.now, 10).unwrap();
    h.vsp.channel_closed(h.now);
    assert!(h.sent().is_empty(), "unsent messages are dropped");
    assert_eq!(h.vsp.state(), VspState::Closed);
    assert_eq!(h.vsp.next_trans_id(), 0);
    h.vsp.channel_closed(h.now);
    assert_eq!(
        h.events().iter().filter(|e| **e == VspEvent::Reset).count(),
        1
    );
    assert_eq!(h.vsp.ballooned().len(), 64);
    // On guest reboot the owner takes the set back.
    let taken = h.vsp.take_ballooned();
    assert_eq!(taken.ranges().collect::<Vec<_>>(), vec![r(0x1000, 64)]);
    assert!(h.vsp.ballooned().is_empty());
}

#[test]
fn hot_remove_needs_2_0_caps_and_config() {
    let on = VspConfig {
        hot_remove: true,
        ..VspConfig::default()
    };
    let caps = LINUX_CAPS | 1 << 6;
    let mut h = Host::ready(VspConfig::default(), Version::V2_0, caps);
    assert!(matches!(
        h.vsp.hot_remove(h.now, 0, 10, 0),
        Err(VspError::NotCapable(_))
    ));
    let mut h = Host::ready(on.clone(), Version::V1_0, caps);
    assert!(matches!(
        h.vsp.hot_remove(h.now, 0, 10, 0),
        Err(VspError::NotCapable(_))
    ));
    let mut h = Host::ready(on.clone(), Version::V2_0, LINUX_CAPS);
    assert!(matches!(
        h.vsp.hot_remove(h.now, 0, 10, 0),
        Err(VspError::NotCapable(_))
    ));
    let mut h = Host::ready(on, Version::V2_0, caps);
    assert_eq!(
        h.vsp.hot_remove(h.now, 0, 10, 4),
        Err(VspError::InvalidQos(4))
    );
    assert_eq!(h.vsp.hot_remove(h.now, 0, 0, 0), Err(VspError::NothingToDo));
    assert_eq!(h.vsp.hot_remove(h.now, 1, 10, DM_REMOVE_QOS_MASK), Ok(()));
    assert_eq!(
        h.sent(),
        vec![msg(
            0,
            Body::HotRemoveRequest {
                virtual_node: 1,
                page_count: 10,
                qos_flags: 3
            }
        )]
    );
}

#[test]
fn hot_remove_pages_join_ballooned() {
    let mut h = Host::ready(
        VspConfig {
            hot_remove: true,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS | 1 << 6,
    );
    h.vsp.hot_remove(h.now, 0, 1024, 0).unwrap();
    h.events();
    let resp = |more_pages, rs: &[(u64, u32)]| {
        msg(
            1,
            Body::HotRemoveResponse {
                result: 0,
                more_pages,
                ranges: &ranges(rs),
            },
        )
    };
    h.recv(&resp(true, &[(0x8000, 512), (LOW_END, 1)]));
    h.recv(&resp(false, &[(0x8000, 512), (0x9000, 512)]));
    let events = h.events();
    assert_eq!(
        events,
        vec![
            VspEvent::ProtocolViolation {
                what: Violation::ForeignPages {
                    pages: 1,
                    unchecked: 0,
                    runs: vec![(LOW_END, 1)]
                }
            },
            VspEvent::HotRemoved(vec![r(0x8000, 512)]),
            VspEvent::HotRemoved(vec![r(0x9000, 512)]),
            VspEvent::HotRemoveComplete {
                requested: 1024,
                removed: 1024,
                result: 0
            },
            VspEvent::StateChanged(VspState::Idle),
        ]
    );
    assert_eq!(h.vsp.ballooned().len(), 1024);
    assert_eq!(
        h.vsp
            .unballoon(h.now, 1024, &mut ProtocolOnly)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn guest_ownership_of_a_range() {
    let r = 10u64..20;
    assert!(r.owns(10, 10));
    assert!(!r.owns(9, 2));
    assert!(!r.owns(19, 2));
    assert!(!r.owns(u64::MAX, 2));
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Raw(Vec<u8>),
    Version(u32, bool),
    Caps(u64),
    Status,
    BalloonResp(bool, Vec<(u64, u32)>),
    UnballoonResp,
    HotAddResp(u32, u32),
    HotRemoveResp(u32, bool, Vec<(u64, u32)>),
    Wait(u64),
    Balloon(u64),
    Unballoon(u64),
    HotAdd(u64, u64),
    HotRemove(u32, u32, u32),
    Close,
    Open,
    Reboot,
}

fn page_ranges() -> impl Strategy<Value = Vec<(u64, u32)>> {
    let start = prop_oneof![
        4 => 0u64..0x150_000,
        1 => 0u64..=PageRange::MAX_START_PAGE,
    ];
    let count = prop_oneof![
        4 => 0u32..2048,
        1 => 0u32..=PageRange::MAX_PAGE_CNT,
    ];
    proptest::collection::vec((start, count), 0..40)
}

fn step() -> impl Strategy<Value = Step> {
    let version = prop_oneof![
        Just(0x20000u32),
        Just(0x10000),
        Just(3),
        Just(0x30000),
        any::<u32>()
    ];
    let pages = prop_oneof![0u64..5000, 0u64..3_000_000, any::<u64>()];
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Step::Raw),
        2 => (version, any::<bool>()).prop_map(|(v, l)| Step::Version(v, l)),
        2 => prop_oneof![Just(LINUX_CAPS), Just(LINUX_CAPS | 1 << 6), any::<u64>()].prop_map(Step::Caps),
        1 => Just(Step::Status),
        6 => (any::<bool>(), page_ranges()).prop_map(|(m, r)| Step::BalloonResp(m, r)),
        2 => Just(Step::UnballoonResp),
        2 => (prop_oneof![0u32..70_000, any::<u32>()], 0u32..3).prop_map(|(n, r)| Step::HotAddResp(n, r)),
        2 => (0u32..2, any::<bool>(), page_ranges()).prop_map(|(r, m, rs)| Step::HotRemoveResp(r, m, rs)),
        4 => prop_oneof![0u64..2000, 0u64..200_000, any::<u64>()].prop_map(Step::Wait),
        4 => pages.clone().prop_map(Step::Balloon),
        3 => pages.clone().prop_map(Step::Unballoon),
        3 => (prop_oneof![Just(0x100000u64), 0u64..0x200000, any::<u64>()], pages).prop_map(|(s, n)| Step::HotAdd(s, n)),
        1 => (0u32..4, any::<u32>(), 0u32..5).prop_map(|(a, b, c)| Step::HotRemove(a, b, c)),
        1 => Just(Step::Close),
        2 => Just(Step::Open),
        1 => Just(Step::Reboot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn proptest_arbitrary_guest_and_host_input(
        steps in proptest::collection::vec(step(), 0..80),
        hot_remove in any::<bool>(),
        status_reports in any::<bool>(),
        retry in any::<bool>(),
        setup in 0u8..4,
        setup_version in prop_oneof![Just(Version::V2_0), Just(Version::V1_0), Just(Version::V0_3)],
        setup_caps in prop_oneof![3 => Just(LINUX_CAPS | 1 << 6), 1 => any::<u64>()],
    ) {
        let config = VspConfig {
            hot_remove,
            status_reports,
            max_page_count: Some(1 << 20),
            hot_add_transient: if retry {
                HotAddTransient::RetryAfter(secs(10))
            } else {
                HotAddTransient::Disable
            },
            ..VspConfig::default()
        };
        let longest = config.hot_add_reply_timeout.max(config.reply_timeout).max(config.post_caps_wait);
        let mut vsp = Vsp::new(config);
        let mut now = Duration::ZERO;
        let mut model = PageSet::new();
        // Start closed, open, or (twice as often) negotiated and past the wait, so that
        // arbitrary steps spend their time in every state.
        if setup > 0 {
            vsp.channel_opened(now).expect("opens");
        }
        if setup > 1 {
            vsp.receive(now, &version_request(1, setup_version, false), &ram);
            vsp.receive(now, &caps_report(2, setup_caps), &ram);
            now = secs(50);
            vsp.tick(now);
        }
        for step in steps {
            let r = |rs: &[(u64, u32)]| ranges(rs);
            match step {
                Step::Raw(b) => vsp.receive(now, &b, &ram),
                Step::Version(v, l) => vsp.receive(now, &version_request(1, Version(v), l), &ram),
                Step::Caps(c) => vsp.receive(now, &caps_report(2, c), &ram),
                Step::Status => vsp.receive(now, &msg(3, Body::StatusReport(StatusReport::default())), &ram),
                Step::BalloonResp(m, rs) => vsp.receive(now, &msg(4, Body::BalloonResponse { more_pages: m, ranges: &r(&rs) }), &ram),
                Step::UnballoonResp => vsp.receive(now, &msg(5, Body::UnballoonResponse), &ram),
                Step::HotAddResp(n, res) => vsp.receive(now, &hot_add_response(n, res), &ram),
                Step::HotRemoveResp(res, m, rs) => vsp.receive(now, &msg(6, Body::HotRemoveResponse { result: res, more_pages: m, ranges: &r(&rs) }), &ram),
                Step::Wait(ms) => {
                    now = now.saturating_add(Duration::from_millis(ms));
                    vsp.tick(now);
                }
                Step::Balloon(n) => { let _ = vsp.balloon(now, n); }
                Step::Unballoon(n) => {
                    if let Ok(runs) = vsp.unballoon(now, n, &mut ProtocolOnly) {
                        prop_assert!(runs.iter().map(|g| g.count()).sum::<u64>() <= n);
                        for g in runs {
                            prop_assert!(model.contains_all(g), "unballooned a page never ballooned");
                            model.remove(g);
                        }
                    }
                }
                Step::HotAdd(s, n) => { let _ = vsp.hot_add(now, s, n, &mut ProtocolOnly); }
                Step::HotRemove(node, n, q) => { let _ = vsp.hot_remove(now, node, n, q); }
                Step::Close => vsp.channel_closed(now),
                Step::Open => { let _ = vsp.channel_opened(now); }
                Step::Reboot => {
                    prop_assert_eq!(&vsp.take_ballooned(), &model);
                    model = PageSet::new();
                }
            }
            while let Some(e) = vsp.poll_event() {
                if let VspEvent::PagesReturned(rs) | VspEvent::HotRemoved(rs) = e {
                    for g in rs {
                        let (s, n) = (g.start(), g.count());
                        prop_assert!(n > 0);
                        prop_assert!(ram(s, n), "counted a page the guest does not own");
                        prop_assert_eq!(model.count_in(g), 0, "counted a page twice");
                        model.insert(g);
                    }
                }
            }
            prop_assert_eq!(vsp.ballooned(), &model);
            let caps = vsp.caps();
            let mut buf = [0u8; MAX_MESSAGE_SIZE];
            while let Some(n) = vsp.poll_transmit(&mut buf) {
                let bytes = &buf[..n];
                prop_assert!(bytes.len() <= MAX_MESSAGE_SIZE);
                let m = Message::parse(bytes).expect("host output decodes");
                match m.body {
                    Body::BalloonRequest { num_pages } => {
                        prop_assert!((1..=MAX_BALLOON_REQUEST_PAGES).contains(&num_pages));
                        prop_assert!(caps.is_some_and(|c| c.balloon()));
                    }
                    Body::HotAddRequest { range, region } => {
                        let c = caps.expect("caps before hot-add");
                        prop_assert!(c.hot_add());
                        let a = c.hot_add_alignment_pages();
                        prop_assert_eq!(range.start_page() % a, 0);
                        prop_assert_eq!(u64::from(range.page_cnt()) % a, 0);
                        prop_assert!(range.page_cnt() > 0);
                        prop_assert_eq!(region.is_none(), vsp.negotiated_version() == Some(Version::V0_3));
                    }
                    Body::UnballoonRequest { ranges, .. } => {
                        prop_assert!(ranges.len() <= MAX_RANGES_PER_MESSAGE);
                        prop_assert!(caps.is_some_and(|c| c.balloon()));
                    }
                    Body::HotRemoveRequest { .. } => {
                        prop_assert_eq!(vsp.negotiated_version(), Some(Version::V2_0));
                    }
                    _ => {}
                }
            }
            if vsp.state().awaits_reply() || vsp.state() == VspState::PostCapsWait {
                let d = vsp.next_deadline();
                prop_assert!(d.is_some(), "waiting with no deadline in {:?}", vsp.state());
                let d = d.unwrap_or_default();
                prop_assert!(d > now || d == Duration::MAX);
                prop_assert!(d <= now.saturating_add(longest));
            }
        }
        // Whatever was awaited ends.
        now = now.saturating_add(longest);
        vsp.tick(now);
        prop_assert!(!vsp.state().awaits_reply() || now == Duration::MAX);
        prop_assert!(vsp.state() != VspState::PostCapsWait || now == Duration::MAX);
    }
}

#[test]
fn a_range_straddling_the_end_of_ram_keeps_its_owned_part() {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1024).unwrap();
    h.sent();
    let ram = 0..0x1000u64;
    h.vsp
        .receive(h.now, &balloon_response(9, false, &[(0xFF0, 0x20)]), &ram);
    assert_eq!(
        h.vsp.ballooned().ranges().collect::<Vec<_>>(),
        vec![r(0xFF0, 0x10)]
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        VspEvent::ProtocolViolation { what: Violation::ForeignPages { pages: 0x10, unchecked: 0, runs } } if runs == &vec![(0x1000, 0x10)]
    )));
    // A wholly foreign range costs a bounded number of checks.
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1024).unwrap();
    h.sent();
    let calls = std::cell::Cell::new(0u32);
    let none = |_: u64, _: u64| {
        calls.set(calls.get() + 1);
        false
    };
    h.vsp.receive(
        h.now,
        &balloon_response(9, false, &[(0, (1 << 24) - 1)]),
        &none,
    );
    assert!(calls.get() <= 1 << 16, "{} ownership checks", calls.get());
    assert!(h.vsp.ballooned().is_empty());
}

#[test]
fn owned_pages_are_kept_wherever_the_holes_are() {
    // Guest RAM with a hole: [600, 0x800) and [0x900, 0x10000).
    let ram = |s: u64, n: u64| {
        let in_ram = |p: u64| (600..0x800).contains(&p) || (0x900..0x10000).contains(&p);
        (s..s + n).all(in_ram)
    };
    for (start, count) in [(0u64, 1024u64), (0, 0x1000), (0x7F0, 0x20), (0x10, 0xFF00)] {
        let mut h = Host::linux();
        h.vsp.balloon(h.now, 1 << 20).unwrap();
        h.sent();
        let m = balloon_response(9, false, &[(start, count as u32)]);
        h.vsp.receive(h.now, &m, &ram);
        let want = (start..start + count).filter(|&p| ram(p, 1)).count() as u64;
        assert_eq!(h.vsp.ballooned().len(), want, "range {start:#x}+{count:#x}");
        assert!(
            h.vsp
                .ballooned()
                .ranges()
                .all(|g| ram(g.start(), g.count()))
        );
    }
}

/// Guest RAM for the hostile-message tests: 2 GiB from page 0.
const HOSTILE_RAM: u64 = 1 << 19;

/// A host whose guest ballooned every other page of [`HOSTILE_RAM`]: 262,144 one-page
/// ranges, given in answer to a one-page request (pages beyond the request are taken).
fn every_other_page_ballooned() -> Host {
    let mut h = Host::linux();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let pages: Vec<(u64, u32)> = (0..HOSTILE_RAM).step_by(2).map(|p| (p, 1)).collect();
    let chunks: Vec<_> = pages.chunks(MAX_RANGES_PER_MESSAGE).collect();
    for (i, c) in chunks.iter().enumerate() {
        let m = balloon_response(1, i + 1 != chunks.len(), c);
        h.vsp.receive(h.now, &m, &(0..HOSTILE_RAM));
    }
    assert_eq!(h.vsp.ballooned().len(), HOSTILE_RAM / 2);
    assert_eq!(h.vsp.ballooned().ranges().count() as u64, HOSTILE_RAM / 2);
    assert_eq!(h.vsp.state(), VspState::Idle);
    h.events();
    h
}

/// The attack of issue "one message burns minutes of host CPU": every other page
/// ballooned, then one balloon response of 510 ranges, each `[0, 2^24)`. The work it
/// causes — set lookups and steps, ownership checks, runs reported — is counted, not
/// timed, and must stay linear in the message's size.
#[test]
fn a_hostile_balloon_message_costs_work_linear_in_its_size() {
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let whole = vec![(0u64, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE];
    let m = balloon_response(2, false, &whole);
    assert!(m.len() <= MAX_MESSAGE_SIZE);
    // Generous: 32 units of work per range and 4096 for the message.
    let bound = 32 * (MAX_RANGES_PER_MESSAGE as u64 + 128);
    let visits0 = crate::pageset::probe::visits();
    let visits = || crate::pageset::probe::visits() - visits0;
    let checks = std::cell::Cell::new(0u64);
    let oracle = |s: u64, n: u64| {
        checks.set(checks.get() + 1);
        // Fail at once rather than after minutes of work.
        assert!(
            visits() <= bound,
            "{} set lookups and steps so far",
            visits()
        );
        assert!(
            checks.get() <= bound,
            "{} ownership checks so far",
            checks.get()
        );
        (0..HOSTILE_RAM).owns(s, n)
    };
    let work0 = h.vsp.work_spent;
    h.vsp.receive(h.now, &m, &oracle);
    let work = h.vsp.work_spent - work0;
    assert!(work <= bound, "{work} units of work");
    assert!(visits() <= bound, "{} set lookups and steps", visits());
    assert!(checks.get() <= bound, "{} ownership checks", checks.get());
    let events = h.events();
    let runs: usize = events
        .iter()
        .map(|e| match e {
            VspEvent::PagesReturned(r) => r.len(),
            VspEvent::ProtocolViolation {
                what: Violation::ForeignPages { runs, .. },
            } => runs.len(),
            _ => 0,
        })
        .sum();
    assert!(runs as u64 <= bound, "{runs} runs reported");
    let Some(VspEvent::ProtocolViolation {
        what:
            Violation::ForeignPages {
                pages,
                unchecked,
                runs,
            },
    }) = events
        .iter()
        .find(|e| matches!(e, VspEvent::ProtocolViolation { .. }))
    else {
        panic!("the pages past guest RAM are reported");
    };
    assert!(runs.len() <= MAX_REPORTED_RUNS);
    // Past guest RAM: found foreign or, once the budget is spent, left unchecked.
    assert!(*pages + *unchecked >= (1 << 24) - HOSTILE_RAM);
    // Still right: only the guest's pages, none twice.
    let back: u64 = events
        .iter()
        .filter_map(|e| match e {
            VspEvent::PagesReturned(r) => Some(r.iter().map(|g| g.count()).sum::<u64>()),
            _ => None,
        })
        .sum();
    assert_eq!(h.vsp.ballooned().len(), HOSTILE_RAM / 2 + back);
    // The budget is shared between walking and checking: the gaps walked are the
    // guest's, and a good part of them is taken, not all rejected unchecked.
    assert!(back >= 1000, "{back} pages taken");
    assert!(h.vsp.ballooned().len() <= HOSTILE_RAM);
    assert!(h.vsp.ballooned().ranges().all(|g| g.end() <= HOSTILE_RAM));
}

/// The same attack where the gaps are not the guest's either: every gap costs an
/// ownership check that fails, and the report stays a count and a few runs.
#[test]
fn a_hostile_message_of_foreign_gaps_is_bounded_too() {
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let whole = vec![(0u64, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE];
    let bound = 32 * (MAX_RANGES_PER_MESSAGE as u64 + 128);
    let checks = std::cell::Cell::new(0u64);
    let even_only = |s: u64, n: u64| {
        checks.set(checks.get() + 1);
        n == 1 && s % 2 == 0 && s < HOSTILE_RAM
    };
    let visits0 = crate::pageset::probe::visits();
    h.vsp
        .receive(h.now, &balloon_response(2, false, &whole), &even_only);
    let visits = crate::pageset::probe::visits() - visits0;
    assert!(visits <= bound, "{visits} set lookups and steps");
    assert!(checks.get() <= bound, "{} ownership checks", checks.get());
    assert_eq!(h.vsp.ballooned().len(), HOSTILE_RAM / 2);
    let v = h.violations();
    let [Violation::ForeignPages { pages, runs, .. }] = &v[..] else {
        panic!("one report: {v:?}");
    };
    assert!(runs.len() <= MAX_REPORTED_RUNS);
    assert!(*pages > 0);
}

/// An honest 510-range message over the same fragmented set is taken whole, for a small
/// part of the budget.
#[test]
fn an_honest_message_over_a_fragmented_set_is_taken_whole() {
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1 << 20).unwrap();
    h.sent();
    let above = HOSTILE_RAM;
    let blocks: Vec<(u64, u32)> = (0..MAX_RANGES_PER_MESSAGE as u64)
        .map(|i| (above + i * 512, 512))
        .collect();
    let ram = 0..(above + 512 * MAX_RANGES_PER_MESSAGE as u64);
    let work0 = h.vsp.work_spent;
    h.vsp
        .receive(h.now, &balloon_response(2, true, &blocks), &ram);
    let work = h.vsp.work_spent - work0;
    assert_eq!(
        h.vsp.ballooned().len(),
        HOSTILE_RAM / 2 + 512 * MAX_RANGES_PER_MESSAGE as u64
    );
    assert!(h.violations().is_empty());
    // Each range: a lookup, a step, a check, an insertion absorbing the block before.
    let per_range = LOOKUP_COST + 1 + 1 + INSERT_COST + MERGE_COST;
    assert_eq!(work, per_range * MAX_RANGES_PER_MESSAGE as u64 - MERGE_COST);
    assert!(work < Work::for_ranges(MAX_RANGES_PER_MESSAGE).left);
}

#[test]
fn guest_caused_log_lines_are_rate_limited() {
    let mut l = LogLimit::default();
    let t = secs(100);
    for _ in 0..LogLimit::BURST {
        assert_eq!(l.allow(t), Some(0));
    }
    assert_eq!(l.allow(t), None);
    assert_eq!(l.allow(t + secs(1)), None);
    assert_eq!(l.allow(t + LogLimit::WINDOW), Some(2));
    assert_eq!(l.allow(t + LogLimit::WINDOW), Some(0));
}

/// An unballoon or hot-add answered after its timeout: the guest did the work, so the
/// answer is a late completion, not a protocol violation; a second answer is one.
#[test]
fn late_unballoon_and_hot_add_responses_are_late_completions() {
    let mut h = Host::linux();
    balloon_these(&mut h, &[(0x1000, 7)]);
    h.vsp.unballoon(h.now, 7, &mut ProtocolOnly).unwrap();
    h.sent();
    h.wait(secs(30));
    h.events();
    h.recv(&msg(5, Body::UnballoonResponse));
    assert_eq!(
        h.events(),
        vec![VspEvent::LateReply {
            what: Transaction::Unballoon { pages: 7 }
        }]
    );
    h.recv(&msg(5, Body::UnballoonResponse));
    assert!(matches!(
        &h.violations()[..],
        [Violation::Unexpected {
            ty: MessageType::UNBALLOON_RESPONSE,
            ..
        }]
    ));

    // A hot-add of two chunks whose first answer comes late: the pages count, the second
    // chunk is not sent, and hot-add is open again since the guest has finished.
    let mut h = Host::ready(
        VspConfig {
            max_hot_add_pages: 32_768,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS,
    );
    h.vsp
        .hot_add(h.now, 0x100000, 65_536, &mut ProtocolOnly)
        .unwrap();
    h.sent();
    h.wait(secs(120));
    h.events();
    assert_eq!(
        h.vsp.hot_add(h.now, 0x120000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
    h.recv(&hot_add_response(32_768, 1));
    assert_eq!(
        h.events(),
        vec![VspEvent::LateReply {
            what: Transaction::HotAdd {
                requested: 65_536,
                added: 32_768
            }
        }]
    );
    assert!(h.sent().is_empty());
    assert_eq!(
        h.vsp.hot_add(h.now, 0x108000, 32_768, &mut ProtocolOnly),
        Ok(32_768)
    );
    h.recv(&hot_add_response(32_768, 1));
    h.events();
    // A late answer that reports a failure keeps hot-add off, as an answer in time would.
    h.vsp
        .hot_add(h.now, 0x110000, 32_768, &mut ProtocolOnly)
        .unwrap();
    h.wait(secs(120));
    h.events();
    h.recv(&hot_add_response(0, 1));
    assert_eq!(
        h.events(),
        vec![VspEvent::LateReply {
            what: Transaction::HotAdd {
                requested: 32_768,
                added: 0
            }
        }]
    );
    assert_eq!(
        h.vsp.hot_add(h.now, 0x110000, 32_768, &mut ProtocolOnly),
        Err(VspError::HotAddDisabled)
    );
    h.recv(&hot_add_response(0, 1));
    assert_eq!(h.violations().len(), 1);
}

/// Work per byte of guest traffic: hostile one-range messages filling the ring bytes of
/// one honest 4 KiB message cost within 10x of it, since the budget is per range and the
/// per-message part small.
#[test]
fn small_hostile_messages_cost_work_proportional_to_their_ring_bytes() {
    // Honest: one 510-range message over the fragmented set.
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1 << 20).unwrap();
    h.sent();
    let blocks: Vec<(u64, u32)> = (0..MAX_RANGES_PER_MESSAGE as u64)
        .map(|i| (HOSTILE_RAM + i * 512, 512))
        .collect();
    let honest = balloon_response(2, true, &blocks);
    let ram_all = 0..(HOSTILE_RAM + 512 * MAX_RANGES_PER_MESSAGE as u64);
    let w0 = h.vsp.work_spent;
    let t = std::time::Instant::now();
    h.vsp.receive(h.now, &honest, &ram_all);
    let honest_time = t.elapsed();
    let honest_work = h.vsp.work_spent - w0;
    // Ring bytes: payload + 16-byte descriptor + 8-byte trailer.
    let honest_bytes = honest.len() as u64 + 24;

    // Hostile: as many one-range [0, 2^24) messages as fit the same ring bytes.
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let one = balloon_response(2, true, &[(0, PageRange::MAX_PAGE_CNT)]);
    let n = honest_bytes / (one.len() as u64 + 24);
    let w0 = h.vsp.work_spent;
    let t = std::time::Instant::now();
    for _ in 0..n {
        h.vsp.receive(h.now, &one, &(0..HOSTILE_RAM));
        while h.vsp.poll_event().is_some() {}
    }
    let hostile_time = t.elapsed();
    let hostile_work = h.vsp.work_spent - w0;
    eprintln!(
        "honest: {honest_work} units {honest_time:?} for {honest_bytes} ring bytes; \
         hostile: {n} one-range messages, {hostile_work} units {hostile_time:?}"
    );
    assert!(
        hostile_work <= 10 * honest_work,
        "{hostile_work} units of hostile work for the ring bytes of one honest message \
         ({honest_work} units): {}x",
        hostile_work / honest_work.max(1)
    );
}

/// The pages one hostile message makes the host ask `GuestOwnership::owns` about are
/// bounded by its budget: a check of `n` pages costs `1 + (n - 1) / 512` units, so an
/// owner whose check grows with its count is paid for it.
#[test]
fn ownership_checks_are_charged_by_the_pages_they_name() {
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let whole = vec![(HOSTILE_RAM, PageRange::MAX_PAGE_CNT); MAX_RANGES_PER_MESSAGE];
    let m = balloon_response(2, false, &whole);
    let named = std::cell::Cell::new(0u64);
    let calls = std::cell::Cell::new(0u64);
    // Gaps foreign from a point, so that bisection runs over long spans.
    let oracle = |s: u64, n: u64| {
        named.set(named.get() + n);
        calls.set(calls.get() + 1);
        s.checked_add(n).is_some_and(|e| e <= HOSTILE_RAM)
    };
    h.vsp.receive(h.now, &m, &oracle);
    eprintln!("{} owns() calls naming {} pages", calls.get(), named.get());
    assert!(
        named.get() <= 512 * Vsp::work_budget(MAX_RANGES_PER_MESSAGE),
        "{} pages named to owns() by one 4 KiB message",
        named.get()
    );
}

/// A hot-remove answered after its timeout: the guest has removed the pages, so they are
/// taken, as a late balloon answer's are.
#[test]
fn late_hot_remove_pages_are_taken() {
    let mut h = Host::ready(
        VspConfig {
            hot_remove: true,
            ..VspConfig::default()
        },
        Version::V2_0,
        LINUX_CAPS | 1 << 6,
    );
    h.vsp.hot_remove(h.now, 0, 512, 0).unwrap();
    h.sent();
    h.wait(secs(31));
    h.events();
    h.recv(&msg(
        1,
        Body::HotRemoveResponse {
            result: 0,
            more_pages: false,
            ranges: &ranges(&[(0x8000, 512)]),
        },
    ));
    let ev = h.events();
    assert!(
        h.vsp.ballooned().len() == 512,
        "late hot-removed pages dropped: {ev:?}"
    );
}

/// An unballoon retried after a timeout: the guest answers both, in order. The first
/// answer is the late one's and leaves the retry pending; the second completes it.
#[test]
fn late_unballoon_answer_after_a_retry_leaves_the_retry_pending() {
    let mut h = Host::linux();
    balloon_these(&mut h, &[(0x1000, 7), (0x2000, 5)]);
    h.vsp.unballoon(h.now, 7, &mut ProtocolOnly).unwrap();
    h.sent();
    h.wait(secs(30));
    h.events();
    // The owner retries with the rest; the guest then answers the first, then the second.
    h.vsp.unballoon(h.now, 5, &mut ProtocolOnly).unwrap();
    h.sent();
    h.events();
    h.recv(&msg(5, Body::UnballoonResponse));
    h.recv(&msg(6, Body::UnballoonResponse));
    let ev = h.events();
    assert!(
        ev.contains(&VspEvent::LateReply {
            what: Transaction::Unballoon { pages: 7 }
        }) && ev.contains(&VspEvent::UnballoonComplete { pages: 5 })
            && !ev
                .iter()
                .any(|e| matches!(e, VspEvent::ProtocolViolation { .. })),
        "{ev:?}"
    );
}

/// Pages the budget left unexamined are reported as unchecked, not as foreign: here every
/// page named is guest RAM, half of it already ballooned, and none was found foreign.
#[test]
fn pages_left_unchecked_are_not_counted_as_foreign() {
    let mut h = every_other_page_ballooned();
    h.vsp.balloon(h.now, 1).unwrap();
    h.sent();
    let whole = vec![(0u64, HOSTILE_RAM as u32); MAX_RANGES_PER_MESSAGE];
    h.vsp.receive(
        h.now,
        &balloon_response(2, false, &whole),
        &(0..HOSTILE_RAM),
    );
    let v = h.violations();
    let [
        Violation::ForeignPages {
            pages,
            unchecked,
            runs,
        },
    ] = &v[..]
    else {
        panic!("one report: {v:?}");
    };
    assert_eq!(*pages, 0, "nothing named is foreign");
    assert!(*unchecked > 0 && *unchecked <= MAX_RANGES_PER_MESSAGE as u64 * HOSTILE_RAM);
    assert!(!runs.is_empty() && runs.len() <= MAX_REPORTED_RUNS);
}

/// Timed-out unballoons are remembered in order, at most [`MAX_LATE_UNBALLOONS`]: the
/// oldest beyond that is given up with a report, and the late answers that come are
/// matched oldest first.
#[test]
fn late_unballoons_are_matched_in_order_and_bounded() {
    let mut h = Host::linux();
    let n = MAX_LATE_UNBALLOONS as u64 + 1;
    balloon_these(&mut h, &[(0x1000, 1024)]);
    for pages in 1..=n {
        h.vsp.unballoon(h.now, pages, &mut ProtocolOnly).unwrap();
        h.sent();
        h.wait(secs(30));
    }
    let ev = h.events();
    assert!(
        ev.contains(&VspEvent::ProtocolViolation {
            what: Violation::UnansweredUnballoon { pages: 1 }
        }),
        "{ev:?}"
    );
    for pages in 2..=n {
        h.recv(&msg(9, Body::UnballoonResponse));
        assert_eq!(
            h.events(),
            vec![VspEvent::LateReply {
                what: Transaction::Unballoon { pages }
            }]
        );
    }
    h.recv(&msg(9, Body::UnballoonResponse));
    assert_eq!(h.violations().len(), 1);
    // A reset forgets them.
    h.vsp.unballoon(h.now, 1, &mut ProtocolOnly).unwrap();
    h.wait(secs(30));
    h.vsp.channel_closed(h.now);
    assert!(h.vsp.late_unballoon.is_empty());
}

/// A late hot-remove in several messages: each brings its pages, the final one ends it
/// with a late completion; meanwhile no other operation starts, and the window closes
/// after one more timeout.
#[test]
fn a_late_hot_remove_in_several_messages_completes_late() {
    let config = VspConfig {
        hot_remove: true,
        ..VspConfig::default()
    };
    let resp = |more_pages: bool, rs: &[(u64, u32)]| {
        msg(
            1,
            Body::HotRemoveResponse {
                result: 0,
                more_pages,
                ranges: &ranges(rs),
            },
        )
    };
    let mut h = Host::ready(config.clone(), Version::V2_0, LINUX_CAPS | 1 << 6);
    h.vsp.hot_remove(h.now, 0, 1024, 0).unwrap();
    h.sent();
    h.recv(&resp(true, &[(0x8000, 256)]));
    h.wait(secs(30));
    h.events();
    assert_eq!(h.vsp.balloon(h.now, 1), Err(VspError::Busy));
    assert_eq!(h.vsp.next_deadline(), Some(h.now + secs(30)));
    h.recv(&resp(true, &[(0x9000, 512)]));
    h.recv(&resp(false, &[(0xA000, 256)]));
    assert_eq!(
        h.events(),
        vec![
            VspEvent::HotRemoved(vec![r(0x9000, 512)]),
            VspEvent::HotRemoved(vec![r(0xA000, 256)]),
            VspEvent::LateReply {
                what: Transaction::HotRemove {
                    requested: 1024,
                    removed: 1024
                }
            },
        ]
    );
    assert_eq!(h.vsp.ballooned().len(), 1024);
    assert_eq!(h.vsp.next_deadline(), None);
    h.recv(&resp(false, &[(0xB000, 1)]));
    assert_eq!(h.violations().len(), 1);
    // Unanswered, the window closes after one more timeout and the host is free again.
    let mut h = Host::ready(config, Version::V2_0, LINUX_CAPS | 1 << 6);
    h.vsp.hot_remove(h.now, 0, 8, 0).unwrap();
    h.wait(secs(30));
    h.wait(secs(30));
    assert_eq!(h.vsp.next_deadline(), None);
    h.vsp.balloon(h.now, 1).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Runs of one-page ranges taken at once leave the VSP exactly as taking the ranges
    /// one by one: the same events (pages returned, range by range), ballooned set, work
    /// spent and credit left, whatever was ballooned before, whatever the guest owns and
    /// however little credit it has.
    #[test]
    fn page_runs_are_taken_as_range_by_range(
        before in proptest::collection::vec(0u64..3000, 0..400),
        pieces in proptest::collection::vec((0u64..3200, 1u64..400, 0u8..4), 1..12),
        holes in proptest::collection::vec(0u64..3200, 0..4),
        ram_end in 2000u64..3300,
        credit in proptest::option::of(0u64..6000),
    ) {
        let mut h = Host::linux();
        h.vsp.balloon(h.now, 1 << 20).unwrap();
        h.sent();
        let owner = |s: u64, n: u64| {
            s.checked_add(n)
                .is_some_and(|e| e <= ram_end && !holes.iter().any(|&g| g >= s && g < e))
        };
        if !before.is_empty() {
            let pages: Vec<(u64, u32)> = before.iter().map(|&p| (p, 1)).collect();
            h.vsp.receive(h.now, &balloon_response(1, true, &pages), &owner);
        }
        h.events();
        let mut rs: Vec<(u64, u32)> = Vec::new();
        for (start, len, kind) in pieces {
            match kind {
                0 | 1 => rs.extend((start..start + len).map(|p| (p, 1))),
                2 => rs.push((start, len as u32)),
                // Long ranges over the fragmented set: walks and checks that eat the
                // budget, so that a later run may find too little of it.
                _ => rs.extend((0..len % 24).map(|_| (start / 4, PageRange::MAX_PAGE_CNT))),
            }
        }
        rs.truncate(MAX_RANGES_PER_MESSAGE);
        let m = balloon_response(1, true, &rs);
        if let Some(c) = credit {
            h.vsp.work_credit = c;
        }
        let mut runs = Host { vsp: h.vsp.clone(), now: h.now };
        let mut each = h;
        each.vsp.page_runs = false;
        let (w0, w1) = (runs.vsp.work_spent, each.vsp.work_spent);
        runs.vsp.receive(runs.now, &m, &owner);
        each.vsp.receive(each.now, &m, &owner);
        prop_assert_eq!(runs.events(), each.events());
        prop_assert_eq!(runs.vsp.ballooned(), each.vsp.ballooned());
        prop_assert_eq!(runs.vsp.work_spent - w0, each.vsp.work_spent - w1);
        prop_assert_eq!(runs.vsp.work_credit(), each.vsp.work_credit());
        prop_assert_eq!(runs.sent(), each.sent());
    }
}

/// The budget's edge: a range walking a fragmented set spends most of the message's
/// budget, then a run of pages finds enough for all of it, for part of it or for none;
/// taken at once or range by range, the same pages are taken and the same work paid.
#[test]
fn a_page_run_at_the_budget_edge_is_taken_as_range_by_range() {
    let mut base = Host::linux();
    base.vsp.balloon(base.now, 1 << 20).unwrap();
    base.sent();
    let every_other: Vec<(u64, u32)> = (0..1000).step_by(2).map(|p| (p, 1)).collect();
    let ram = 0..6000u64;
    base.vsp
        .receive(base.now, &balloon_response(1, true, &every_other), &ram);
    base.events();
    let mut taken_whole = 0;
    let mut taken_part = 0;
    for k in [2u64, 3, 50, 200, 509] {
        let mut rs = vec![(1u64, 999u32)];
        rs.extend((5000..5000 + k).map(|p| (p, 1)));
        let m = balloon_response(1, true, &rs);
        for credit in (0..12_000).step_by(53) {
            let mut runs = Host {
                vsp: base.vsp.clone(),
                now: base.now,
            };
            runs.vsp.work_credit = credit;
            let mut each = Host {
                vsp: runs.vsp.clone(),
                now: base.now,
            };
            each.vsp.page_runs = false;
            runs.vsp.receive(runs.now, &m, &ram);
            each.vsp.receive(each.now, &m, &ram);
            assert_eq!(runs.events(), each.events(), "k {k} credit {credit}");
            assert_eq!(runs.vsp.ballooned(), each.vsp.ballooned());
            assert_eq!(runs.vsp.work_spent, each.vsp.work_spent);
            assert_eq!(runs.vsp.work_credit(), each.vsp.work_credit());
            let got = each.vsp.ballooned().count_in(r(5000, k));
            if got == k {
                taken_whole += 1;
            } else if got > 0 {
                taken_part += 1;
            }
        }
    }
    // Both sides of the edge were reached.
    assert!(
        taken_whole > 0 && taken_part > 0,
        "{taken_whole} {taken_part}"
    );
}
