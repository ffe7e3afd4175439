//! Arbitrary guest packets, ticks and host requests, in an order chosen by the input, into
//! a Dynamic Memory host (VSP) in every state. The host must never panic, never count a
//! page twice or a page the guest does not own, never unballoon a page it was not given,
//! send only well-formed messages, and keep a deadline whenever it waits for a reply.
#![no_main]

use std::time::Duration;

use ballast_abi::dm::{
    Body, Caps, MAX_BALLOON_REQUEST_PAGES, MAX_MESSAGE_SIZE, MAX_RANGES_PER_MESSAGE, Message,
    PageRange, StatusReport, Version,
};
use ballast_dm::PageSet;
use ballast_dm::vsp::{HotAddTransient, ProtocolOnly, Vsp, VspConfig, VspEvent, VspState};
use libfuzzer_sys::fuzz_target;

/// Guest RAM: 3 GiB, a 1 GiB hole, 1 GiB above 4 GiB.
fn ram(start: u64, count: u64) -> bool {
    start
        .checked_add(count)
        .is_some_and(|end| end <= 0xC0000 || (start >= 0x100000 && end <= 0x140000))
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn ranges(&mut self) -> Vec<PageRange> {
        let n = usize::from(self.u8() % 12);
        (0..n)
            .map(|_| {
                // Mostly near guest RAM, so that pages are accepted and repeated.
                let start = if self.u8() & 1 == 0 {
                    u64::from(self.u32()) % 0x150000
                } else {
                    self.u64() & PageRange::MAX_START_PAGE
                };
                let count = if self.u8() & 1 == 0 {
                    u32::from(self.u16() % 2048)
                } else {
                    self.u32() & PageRange::MAX_PAGE_CNT
                };
                PageRange::try_new(start, count).unwrap_or_default()
            })
            .collect()
    }
}

fn encode(trans_id: u32, body: Body<'_>) -> Vec<u8> {
    Message::new(trans_id, body).to_bytes().unwrap_or_default()
}

const VERSIONS: [Version; 4] = [
    Version::V2_0,
    Version::V1_0,
    Version::V0_3,
    Version(0x30000),
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let knobs = input.u8();
    let config = VspConfig {
        hot_remove: knobs & 1 != 0,
        status_reports: knobs & 2 != 0,
        hot_add_transient: if knobs & 4 != 0 {
            HotAddTransient::Disable
        } else {
            HotAddTransient::RetryAfter(Duration::from_secs(10))
        },
        max_page_count: (knobs & 8 != 0).then_some(1 << 20),
        max_balloon_pages: if knobs & 16 != 0 {
            1000
        } else {
            MAX_BALLOON_REQUEST_PAGES
        },
        ..VspConfig::default()
    };
    let longest = config
        .hot_add_reply_timeout
        .max(config.reply_timeout)
        .max(config.post_caps_wait);
    let mut vsp = Vsp::new(config);
    let mut now = Duration::ZERO;
    let mut model = PageSet::new();

    // Start closed, open, or negotiated and past the wait.
    let setup = input.u8();
    if setup % 3 > 0 {
        let _ = vsp.channel_opened(now);
    }
    if setup % 3 > 1 {
        let v = VERSIONS[usize::from(setup / 3) % 3];
        let caps = if setup & 0x80 != 0 { input.u64() } else { 0x5f };
        vsp.receive(
            now,
            &encode(
                1,
                Body::VersionRequest {
                    version: v,
                    is_last_attempt: false,
                },
            ),
            &ram,
        );
        vsp.receive(
            now,
            &encode(
                2,
                Body::CapabilitiesReport {
                    caps: Caps::from_u64(caps),
                    min_page_cnt: 0,
                    max_page_number: u64::MAX,
                },
            ),
            &ram,
        );
        now = Duration::from_secs(50);
        vsp.tick(now);
    }

    while !input.0.is_empty() {
        let tid = u32::from(input.u8());
        match input.u8() % 16 {
            0 => {
                let len = usize::from(input.u8());
                let raw = input.bytes(len).to_vec();
                vsp.receive(now, &raw, &ram);
            }
            1 => {
                let pick = input.u8();
                let version = match VERSIONS.get(usize::from(pick % 5)) {
                    Some(&v) => v,
                    None => Version(input.u32()),
                };
                let m = encode(
                    tid,
                    Body::VersionRequest {
                        version,
                        is_last_attempt: pick & 8 != 0,
                    },
                );
                vsp.receive(now, &m, &ram);
            }
            2 => {
                let caps = Caps::from_u64(input.u64());
                let m = encode(
                    tid,
                    Body::CapabilitiesReport {
                        caps,
                        min_page_cnt: 0,
                        max_page_number: u64::MAX,
                    },
                );
                vsp.receive(now, &m, &ram);
            }
            3 => {
                let more_pages = input.u8() & 1 != 0;
                let ranges = input.ranges();
                let m = encode(
                    tid,
                    Body::BalloonResponse {
                        more_pages,
                        ranges: &ranges,
                    },
                );
                vsp.receive(now, &m, &ram);
            }
            4 => vsp.receive(now, &encode(tid, Body::UnballoonResponse), &ram),
            5 => {
                let page_count = if input.u8() & 1 == 0 {
                    u32::from(input.u16())
                } else {
                    input.u32()
                };
                let result = u32::from(input.u8() % 3);
                vsp.receive(
                    now,
                    &encode(tid, Body::HotAddResponse { page_count, result }),
                    &ram,
                );
            }
            6 => {
                let result = u32::from(input.u8() % 2);
                let more_pages = input.u8() & 1 != 0;
                let ranges = input.ranges();
                let m = encode(
                    tid,
                    Body::HotRemoveResponse {
                        result,
                        more_pages,
                        ranges: &ranges,
                    },
                );
                vsp.receive(now, &m, &ram);
            }
            7 => {
                let s = StatusReport {
                    num_committed: input.u64(),
                    ..StatusReport::default()
                };
                vsp.receive(now, &encode(tid, Body::StatusReport(s)), &ram);
            }
            8 => {
                let ms = match input.u8() % 3 {
                    0 => u64::from(input.u16()),
                    1 => u64::from(input.u32()),
                    _ => input.u64(),
                };
                now = now.saturating_add(Duration::from_millis(ms));
                vsp.tick(now);
            }
            9 => {
                let _ = vsp.balloon(now, u64::from(input.u32()));
            }
            10 => {
                let pages = u64::from(input.u32());
                if let Ok(runs) = vsp.unballoon(now, pages, &mut ProtocolOnly) {
                    assert!(runs.iter().map(|r| r.count()).sum::<u64>() <= pages);
                    for r in runs {
                        assert!(
                            model.contains_all(r),
                            "unballooned a page never ballooned"
                        );
                        model.remove(r);
                    }
                }
            }
            11 => {
                let start = u64::from(input.u16()) << 15;
                let _ = vsp.hot_add(now, start, u64::from(input.u32()), &mut ProtocolOnly);
            }
            12 => {
                let (node, pages, qos) = (
                    u32::from(input.u8()),
                    input.u32(),
                    u32::from(input.u8() % 5),
                );
                let _ = vsp.hot_remove(now, node, pages, qos);
            }
            13 => vsp.channel_closed(now),
            14 => {
                let _ = vsp.channel_opened(now);
            }
            _ => {
                assert_eq!(vsp.take_ballooned(), model);
                model = PageSet::new();
            }
        }

        while let Some(e) = vsp.poll_event() {
            if let VspEvent::PagesReturned(rs) | VspEvent::HotRemoved(rs) = e {
                for r in rs {
                    let (s, n) = (r.start(), r.count());
                    assert!(n > 0 && ram(s, n), "counted a page the guest does not own");
                    assert_eq!(model.count_in(r), 0, "counted a page twice");
                    model.insert(r);
                }
            }
        }
        assert_eq!(vsp.ballooned(), &model);
        let caps = vsp.caps();
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        while let Some(n) = vsp.poll_transmit(&mut buf) {
            let bytes = &buf[..n];
            assert!(bytes.len() <= MAX_MESSAGE_SIZE);
            let m = Message::parse(bytes).expect("host output decodes");
            match m.body {
                Body::BalloonRequest { num_pages } => {
                    assert!(num_pages > 0 && num_pages <= MAX_BALLOON_REQUEST_PAGES);
                    assert!(caps.is_some_and(|c| c.balloon()));
                }
                Body::UnballoonRequest { ranges, .. } => {
                    assert!(ranges.len() <= MAX_RANGES_PER_MESSAGE);
                    assert!(caps.is_some_and(|c| c.balloon()));
                }
                Body::HotAddRequest { range, .. } => {
                    let c = caps.expect("caps before a hot-add");
                    let a = c.hot_add_alignment_pages();
                    assert!(c.hot_add() && range.page_cnt() > 0);
                    assert!(range.start_page() % a == 0 && u64::from(range.page_cnt()) % a == 0);
                }
                Body::HotRemoveRequest { .. } => {
                    assert_eq!(vsp.negotiated_version(), Some(Version::V2_0));
                }
                _ => {}
            }
        }
        if vsp.state().awaits_reply() || vsp.state() == VspState::PostCapsWait {
            let d = vsp.next_deadline().expect("a deadline while waiting");
            assert!(d <= now.saturating_add(longest));
        }
    }
    vsp.tick(now.saturating_add(longest));
    assert!(!vsp.state().awaits_reply());
});
