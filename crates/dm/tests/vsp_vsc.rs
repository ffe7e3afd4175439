//! The host (VSP) and the guest (VSC) wired together, with random targets, random guest
//! memory states and random message loss, delay, duplication and truncation.
//!
//! Whatever the network does, the host never waits without a deadline, never counts a
//! page twice or a page the guest does not own, and never believes it holds a page the
//! guest did not give it. Without faults, host and guest agree on the ballooned set
//! whenever both are idle.

use std::collections::VecDeque;
use std::time::Duration;

use ballast_abi::dm::MAX_MESSAGE_SIZE;
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig};
use ballast_dm::vsp::{ProtocolOnly, Vsp, VspConfig};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Action {
    Balloon(u64),
    Unballoon(u64),
    HotAdd(u64),
    /// Let this many milliseconds pass (with ticks).
    Advance(u64),
    /// Deliver up to this many queued messages each way.
    Deliver(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    Truncate(u16),
    Delay,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (1u64..200_000).prop_map(Action::Balloon),
        (1u64..200_000).prop_map(Action::Unballoon),
        (1u64..4).prop_map(|n| Action::HotAdd(n * 32_768)),
        (1u64..40_000).prop_map(Action::Advance),
        (1u8..40).prop_map(Action::Deliver),
    ]
}

fn fate(faults: bool) -> BoxedStrategy<Fate> {
    if !faults {
        return Just(Fate::Deliver).boxed();
    }
    prop_oneof![
        8 => Just(Fate::Deliver),
        1 => Just(Fate::Drop),
        1 => Just(Fate::Duplicate),
        1 => any::<u16>().prop_map(Fate::Truncate),
        1 => Just(Fate::Delay),
    ]
    .boxed()
}

struct World {
    now: Duration,
    vsp: Vsp,
    vsc: Vsc,
    guest: SimGuest,
    guest_pages: u64,
    h2g: VecDeque<Vec<u8>>,
    g2h: VecDeque<Vec<u8>>,
    fates: Vec<Fate>,
    next_fate: usize,
}

impl World {
    fn fate(&mut self) -> Fate {
        let f = self
            .fates
            .get(self.next_fate)
            .copied()
            .unwrap_or(Fate::Deliver);
        self.next_fate += 1;
        f
    }

    /// Moves what each side wants to send onto its link, through the fault plan.
    fn collect(&mut self) {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        while let Some(n) = self.vsp.poll_transmit(&mut buf) {
            self.push(true, buf[..n].to_vec());
        }
        while let Some(n) = self.vsc.poll_transmit(&mut buf) {
            self.push(false, buf[..n].to_vec());
        }
    }

    fn push(&mut self, to_guest: bool, m: Vec<u8>) {
        let fate = self.fate();
        let q = if to_guest {
            &mut self.h2g
        } else {
            &mut self.g2h
        };
        match fate {
            Fate::Deliver | Fate::Delay => q.push_back(m),
            Fate::Drop => {}
            Fate::Duplicate => {
                q.push_back(m.clone());
                q.push_back(m);
            }
            Fate::Truncate(n) => q.push_back(m[..(n as usize) % m.len().max(1)].to_vec()),
        }
    }

    fn deliver(&mut self, n: usize) {
        let guest_pages = self.guest_pages;
        let owner = move |s: u64, c: u64| s.checked_add(c).is_some_and(|e| e <= guest_pages);
        for _ in 0..n {
            self.collect();
            let (a, b) = (self.h2g.pop_front(), self.g2h.pop_front());
            if a.is_none() && b.is_none() {
                break;
            }
            if let Some(m) = a {
                self.vsc.receive(self.now, &m, &mut self.guest);
            }
            if let Some(m) = b {
                self.vsp.receive(self.now, &m, &owner);
            }
        }
        self.collect();
    }

    fn advance(&mut self, ms: u64) {
        // Step in 500 ms so status reports and deadlines fire roughly on time.
        let mut left = ms;
        while left > 0 {
            let d = left.min(500);
            self.now += Duration::from_millis(d);
            left -= d;
            self.vsp.tick(self.now);
            self.vsc.tick(self.now, &mut self.guest);
            self.deliver(64);
        }
    }

    fn apply(&mut self, a: Action) {
        match a {
            Action::Balloon(n) => {
                let _ = self.vsp.balloon(self.now, n);
            }
            Action::Unballoon(n) => {
                let _ = self.vsp.unballoon(self.now, n, &mut ProtocolOnly);
            }
            Action::HotAdd(n) => {
                if self
                    .vsp
                    .hot_add(self.now, self.guest_pages, n, &mut ProtocolOnly)
                    .is_ok()
                {
                    // The host makes the hot-added range guest RAM before asking.
                    self.guest_pages += n;
                }
            }
            Action::Advance(ms) => self.advance(ms),
            Action::Deliver(n) => self.deliver(n as usize),
        }
        self.collect();
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for g in self.vsp.ballooned().ranges() {
            let (s, c) = (g.start(), g.count());
            prop_assert!(
                s + c <= self.guest_pages,
                "host holds pages beyond guest RAM: {s:#x}+{c}"
            );
            prop_assert!(
                self.vsc.ballooned().contains_all(g),
                "host holds {s:#x}+{c}, which the guest never gave"
            );
        }
        if self.vsp.state().awaits_reply() {
            let d = self.vsp.next_deadline();
            prop_assert!(
                d.is_some(),
                "waiting in {:?} without a deadline",
                self.vsp.state()
            );
            prop_assert!(
                d.unwrap() <= self.now + Duration::from_secs(300),
                "deadline too far"
            );
        }
        Ok(())
    }
}

fn run(
    actions: Vec<Action>,
    fates: Vec<Fate>,
    total: u64,
    avail_pct: u64,
) -> Result<World, TestCaseError> {
    let guest = SimGuest::new(total, total * avail_pct / 100);
    let mut w = World {
        now: Duration::ZERO,
        vsp: Vsp::new(VspConfig::default()),
        vsc: Vsc::new(VscConfig::default()),
        guest,
        guest_pages: total,
        h2g: VecDeque::new(),
        g2h: VecDeque::new(),
        fates,
        next_fate: 0,
    };
    w.vsp.channel_opened(w.now).unwrap();
    w.vsc.connect(w.now);
    w.deliver(16);
    // Past the post-capabilities wait, so requests are served.
    w.advance(51_000);
    for a in actions {
        w.apply(a);
        w.check()?;
    }
    // Liveness: with time passing and every message delivered, every wait ends.
    w.fates.clear();
    w.advance(400_000);
    prop_assert!(
        !w.vsp.state().awaits_reply(),
        "still waiting in {:?}",
        w.vsp.state()
    );
    w.check()?;
    Ok(w)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn faults_never_break_the_host(
        actions in proptest::collection::vec(action(), 1..40),
        fates in proptest::collection::vec(fate(true), 0..400),
        total in (1u64..8).prop_map(|g| g * 262_144),
        avail_pct in 10u64..95,
    ) {
        run(actions, fates, total, avail_pct)?;
    }

    #[test]
    fn without_faults_host_and_guest_agree_when_idle(
        actions in proptest::collection::vec(action(), 1..40),
        total in (1u64..8).prop_map(|g| g * 262_144),
        avail_pct in 10u64..95,
    ) {
        let w = run(actions, Vec::new(), total, avail_pct)?;
        prop_assert!(w.h2g.is_empty() && w.g2h.is_empty());
        prop_assert_eq!(w.vsp.ballooned(), w.vsc.ballooned());
    }
}

#[test]
fn a_full_session_balloons_unballoons_and_hot_adds() {
    let actions = vec![
        Action::Balloon(100_000),
        Action::Advance(2_000),
        Action::Unballoon(40_000),
        Action::Advance(2_000),
        Action::HotAdd(65_536),
        Action::Advance(10_000),
    ];
    let w = run(actions, Vec::new(), 262_144 * 4, 80).unwrap();
    assert_eq!(w.vsp.ballooned().len(), 60_000);
    assert_eq!(w.vsp.ballooned(), w.vsc.ballooned());
    assert_eq!(w.guest_pages, 262_144 * 4 + 65_536);
    assert_eq!(w.vsc.pages_added(), 65_536);
}
