//! An owner that never drains its events: the queue stays bounded, and what it drops is
//! only the peer's noise, counted; the pages and completions all get through.

use std::time::Duration;

use ballast_abi::dm::MAX_MESSAGE_SIZE;
use ballast_dm::EVENT_CAP;
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig, VscEvent};
use ballast_dm::vsp::{Vsp, VspConfig, VspEvent};

const TOTAL: u64 = 262_144;

fn owns(s: u64, c: u64) -> bool {
    s.checked_add(c).is_some_and(|e| e <= TOTAL)
}

struct Pair {
    now: Duration,
    vsp: Vsp,
    vsc: Vsc,
    guest: SimGuest,
    buf: Box<[u8; MAX_MESSAGE_SIZE]>,
}

impl Pair {
    fn connected() -> Self {
        let mut p = Self {
            now: Duration::ZERO,
            vsp: Vsp::new(VspConfig::default()),
            vsc: Vsc::new(VscConfig::default()),
            guest: SimGuest::new(TOTAL, TOTAL / 2),
            buf: Box::new([0; MAX_MESSAGE_SIZE]),
        };
        p.vsp.channel_opened(p.now).unwrap();
        p.vsc.connect(p.now);
        p.settle();
        // Past the post-capabilities wait, so requests are served.
        p.now += Duration::from_secs(51);
        p.vsp.tick(p.now);
        p.vsc.tick(p.now, &mut p.guest);
        p.settle();
        while p.vsp.poll_event().is_some() {}
        while p.vsc.poll_event().is_some() {}
        p
    }

    /// Messages to the guest until neither side has any to send.
    fn deliver_to_guest(&mut self) -> bool {
        let mut moved = false;
        while let Some(n) = self.vsp.poll_transmit(&mut self.buf) {
            self.vsc.receive(self.now, &self.buf[..n], &mut self.guest);
            moved = true;
        }
        moved
    }

    fn deliver_to_host(&mut self) -> bool {
        let mut moved = false;
        while let Some(n) = self.vsc.poll_transmit(&mut self.buf) {
            self.vsp.receive(self.now, &self.buf[..n], &owns);
            moved = true;
        }
        moved
    }

    fn settle(&mut self) {
        while self.deliver_to_guest() | self.deliver_to_host() {}
    }
}

#[test]
fn a_guest_flooding_violations_cannot_grow_the_host_queue_or_hide_its_pages() {
    let mut p = Pair::connected();
    p.vsp.balloon(p.now, 2000).unwrap();
    // The guest answers, but the host takes its answer only in the middle of the flood.
    p.deliver_to_guest();
    const FLOOD: u64 = 20_000;
    for _ in 0..FLOOD / 2 {
        p.vsp.receive(p.now, &[0xff; 3], &owns);
    }
    p.settle();
    for _ in 0..FLOOD / 2 {
        p.vsp.receive(p.now, &[0xff; 3], &owns);
    }
    let events: Vec<VspEvent> = std::iter::from_fn(|| p.vsp.poll_event()).collect();
    assert!(events.len() <= EVENT_CAP + 16, "{} events", events.len());
    let violations: u64 = events
        .iter()
        .map(|e| match e {
            VspEvent::ProtocolViolation { .. } => 1,
            VspEvent::Coalesced { violations, .. } => *violations,
            _ => 0,
        })
        .sum();
    assert_eq!(violations, FLOOD);
    let returned: u64 = events
        .iter()
        .filter_map(|e| match e {
            VspEvent::PagesReturned(r) => Some(r.iter().map(|g| g.count()).sum::<u64>()),
            _ => None,
        })
        .sum();
    assert_eq!(returned, 2000);
    assert_eq!(p.vsp.ballooned().len(), 2000);
    assert!(events.contains(&VspEvent::BalloonComplete {
        requested: 2000,
        returned: 2000,
    }));
}

#[test]
fn a_host_flooding_violations_cannot_grow_the_guest_queue_or_hide_its_balloon() {
    let mut p = Pair::connected();
    const FLOOD: u64 = 20_000;
    for _ in 0..FLOOD / 2 {
        p.vsc.receive(p.now, &[0xff; 3], &mut p.guest);
    }
    p.vsp.balloon(p.now, 1000).unwrap();
    p.settle();
    for _ in 0..FLOOD / 2 {
        p.vsc.receive(p.now, &[0xff; 3], &mut p.guest);
    }
    let events: Vec<VscEvent> = std::iter::from_fn(|| p.vsc.poll_event()).collect();
    assert!(events.len() <= EVENT_CAP + 16, "{} events", events.len());
    let violations: u64 = events
        .iter()
        .map(|e| match e {
            VscEvent::ProtocolViolation(_) => 1,
            VscEvent::Coalesced { violations } => *violations,
            _ => 0,
        })
        .sum();
    assert_eq!(violations, FLOOD);
    let ballooned: u64 = events
        .iter()
        .filter_map(|e| match e {
            VscEvent::Ballooned { pages, .. } => Some(*pages),
            _ => None,
        })
        .sum();
    assert_eq!(ballooned, 1000);
    assert_eq!(p.vsc.ballooned().len(), 1000);
}
