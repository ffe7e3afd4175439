//! The host (VSP) and the guest (VSC) in two processes, over the shared-memory ring set up
//! through a Unix socket, each driven by its session.
//!
//! The guest is this test binary run again with [`CHILD_ENV`] set, running just the test
//! that spawned it, with the setup socket as its standard input. The socket stays open for
//! the guest's life: the host uses it to tell the guest to finish, and the guest to report
//! what it holds, which the host compares with what it believes.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_abi::dm::{Body, Message, Version};
use ballast_abi::types::GfnRange;
use ballast_dm::PageSet;
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig, VscEvent};
use ballast_dm::vsp::{
    HotAddResult, ProtocolOnly, Transaction, Vsp, VspConfig, VspEvent, VspState,
};
use ballast_vmbus::ring::{Channel, ChannelSetup, DEFAULT_DATA_SIZE};
use ballast_vmbus::session::{GuestSession, HostSession};

/// Set in the guest process to the role it plays.
const CHILD_ENV: &str = "BALLAST_DM_TWO_PROCESS_CHILD";
/// 4 GiB of guest RAM, 3 GiB of it free.
const GUEST_PAGES: u64 = 1 << 20;
const GUEST_FREE: u64 = GUEST_PAGES * 3 / 4;
/// 1 GiB.
const BALLOON: u64 = 262_144;
const UNBALLOON: u64 = 100_000;
/// Two 128 MiB memory blocks, right above boot RAM.
const HOT_ADD: u64 = 65_536;
/// Longest any one step may take before the test calls it stuck.
const STEP: Duration = Duration::from_secs(10);
/// Longest sleep between looks at things outside the channel.
const POLL: Duration = Duration::from_millis(20);
/// Balloon response messages the stalling guest sends before it stops.
const STALL_AFTER_MESSAGES: u64 = 40;
/// Ranges in a full balloon response.
const RANGES_PER_MESSAGE: u64 = 510;

/// The guest process, killed and its output shown if the host side panics.
struct Guest {
    child: Child,
    socket: UnixStream,
}

impl Guest {
    /// Starts the guest for `test` in role `role` and hands it a fresh channel; returns it
    /// with the host's end.
    fn spawn(test: &str, role: &str) -> (Guest, Channel) {
        let (socket, child_socket) = UnixStream::pair().unwrap();
        let (host, setup) = ChannelSetup::create(DEFAULT_DATA_SIZE).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .stdin(Stdio::from(OwnedFd::from(child_socket)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        setup.send(&socket).unwrap();
        (Guest { child, socket }, host)
    }

    /// Waits for the guest to exit; its status and output.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.output())
    }

    fn output(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("guest output:\n{}", self.output());
        }
    }
}

/// The host's side: its session, a clock, and every event seen.
struct Host {
    session: HostSession<Range<u64>>,
    start: Instant,
    events: Vec<VspEvent>,
}

impl Host {
    fn open(config: VspConfig, channel: Channel) -> Host {
        let start = Instant::now();
        Host {
            session: HostSession::open(Vsp::new(config), channel, 0..GUEST_PAGES, Duration::ZERO),
            start,
            events: Vec::new(),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Pumps until `done` holds, given the session and every event so far; panics after
    /// [`STEP`]. Sleeps at most [`POLL`] at a time, so that `done` also sees what happens
    /// outside the channel, such as the guest process exiting.
    fn run(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut HostSession<Range<u64>>, &[VspEvent]) -> bool,
    ) {
        let start = self.start;
        let give_up = start.elapsed() + STEP;
        let events = &mut self.events;
        let mut ok = false;
        while !ok && start.elapsed() < give_up {
            ok = self
                .session
                .run_until(clock(start), start.elapsed() + POLL, |s| {
                    events.extend(std::iter::from_fn(|| s.vsp.poll_event()));
                    done(s, events)
                })
                .unwrap();
        }
        assert!(
            ok,
            "no {what} within {STEP:?}; state {:?}, events {:?}",
            self.session.vsp.state(),
            self.events
        );
    }

    /// Pumps until an event `want` accepts arrives; returns it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&VspEvent) -> bool) -> VspEvent {
        let from = self.events.len();
        self.run(what, |_, events| events[from..].iter().any(&want));
        self.events[from..]
            .iter()
            .find(|e| want(e))
            .cloned()
            .unwrap()
    }
}

fn clock(start: Instant) -> impl Fn() -> Duration + Copy {
    move || start.elapsed()
}

fn setup_socket() -> UnixStream {
    UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap())
}

fn guest_config() -> VscConfig {
    VscConfig {
        status_period: Duration::from_millis(100),
        status_delay_periods: 2,
        ..VscConfig::default()
    }
}

/// A guest whose free memory has a page in use in every 2 MiB block: it balloons 4 KiB
/// pages, 510 ranges to a message.
fn fragmented_guest() -> SimGuest {
    let mut g = SimGuest::new(GUEST_PAGES, GUEST_FREE);
    for block in (GUEST_PAGES - GUEST_FREE) / 512..GUEST_PAGES / 512 {
        g.occupy(GfnRange::page(block * 512).unwrap());
    }
    g
}

fn write_ranges(socket: &UnixStream, set: &PageSet) {
    let mut out = String::new();
    for r in set.ranges() {
        let (s, n) = (r.start(), r.count());
        out.push_str(&format!("range {s} {n}\n"));
    }
    out.push_str("end\n");
    (&*socket).write_all(out.as_bytes()).unwrap();
}

/// Parses `range S N` lines up to `end`; `None` if `end` has not come yet.
fn parse_ranges(text: &str) -> Option<PageSet> {
    let mut set = PageSet::new();
    for line in text.lines() {
        if line == "end" {
            return Some(set);
        }
        let mut f = line.split(' ');
        assert_eq!(f.next(), Some("range"), "bad report line {line:?}");
        let s: u64 = f.next().unwrap().parse().unwrap();
        let n: u64 = f.next().unwrap().parse().unwrap();
        let range = GfnRange::new(s, n).unwrap();
        assert_eq!(set.insert(range), n, "page reported twice: {line}");
    }
    None
}

/// The pages of a balloon response.
fn balloon_pages(msg: Option<&[u8]>) -> PageSet {
    let mut set = PageSet::new();
    if let Some(Body::BalloonResponse { ranges, .. }) = msg.map(|m| Message::parse(m).unwrap().body)
    {
        for r in ranges {
            set.insert(GfnRange::new(r.start_page(), u64::from(r.page_cnt())).unwrap());
        }
    }
    set
}

/// The pages the host accepted from balloon responses, checking that none came twice.
fn returned_once(host: &Host) -> PageSet {
    let mut seen = PageSet::new();
    for e in &host.events {
        if let VspEvent::PagesReturned(runs) = e {
            for &r in runs {
                let (s, n) = (r.start(), r.count());
                assert_eq!(seen.insert(r), n, "page {s:#x}+{n} returned twice");
            }
        }
    }
    seen
}

/// The guest of [`full_session`]: serves the host until told to finish, then reports the
/// pages it holds for the host.
fn guest_full() {
    let socket = setup_socket();
    let channel = ChannelSetup::receive(&socket).unwrap();
    let start = Instant::now();
    let model = SimGuest::new(GUEST_PAGES, GUEST_FREE);
    let mut guest = GuestSession::connect(Vsc::new(guest_config()), channel, model, Duration::ZERO);
    socket.set_nonblocking(true).unwrap();
    let mut events = Vec::new();
    loop {
        guest
            .run_until(clock(start), start.elapsed() + POLL, |s| {
                events.extend(std::iter::from_fn(|| s.vsc.poll_event()));
                false
            })
            .unwrap();
        match (&socket).read(&mut [0u8; 1]) {
            // The host is gone: nobody to report to.
            Ok(0) => return,
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("setup socket: {e}"),
        }
    }
    socket.set_nonblocking(false).unwrap();
    let violations: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, VscEvent::ProtocolViolation(_)))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");
    for want in [
        VscEvent::Connected {
            version: Version::V2_0,
        },
        VscEvent::Ballooned {
            requested: BALLOON as u32,
            pages: BALLOON,
        },
        VscEvent::Unballooned {
            pages: UNBALLOON,
            not_ballooned: 0,
        },
        VscEvent::HotAdded {
            requested: HOT_ADD,
            pages: HOT_ADD,
            result: 1,
        },
    ] {
        assert!(events.contains(&want), "no {want:?} in {events:?}");
    }
    assert_eq!(guest.model.ballooned(), guest.vsc.ballooned());
    assert_eq!(guest.model.added().len(), HOT_ADD);
    assert!(guest.model.offline().is_empty());
    write_ranges(&socket, guest.vsc.ballooned());
}

/// Negotiation, status reports, a 1 GiB balloon, an unballoon and a hot-add, with the guest
/// in its own process; at the end the host holds exactly the pages the guest says it gave.
#[test]
fn full_session() {
    if let Some(role) = std::env::var_os(CHILD_ENV) {
        assert_eq!(role, "full");
        guest_full();
        return;
    }
    let (guest, channel) = Guest::spawn("full_session", "full");
    let config = VspConfig {
        post_caps_wait: Duration::from_secs(1),
        reply_timeout: Duration::from_secs(5),
        hot_add_reply_timeout: Duration::from_secs(5),
        ..VspConfig::default()
    };
    let mut host = Host::open(config, channel);

    let negotiated = host.wait_for("negotiation", |e| matches!(e, VspEvent::Negotiated(_)));
    assert_eq!(negotiated, VspEvent::Negotiated(Version::V2_0));
    let VspEvent::CapabilitiesReported(caps) = host.wait_for("capabilities", |e| {
        matches!(e, VspEvent::CapabilitiesReported(_))
    }) else {
        unreachable!()
    };
    assert!(caps.balloon() && caps.hot_add());
    assert_eq!(caps.hot_add_alignment_pages(), 32_768);
    host.wait_for("the end of the post-capabilities wait", |e| {
        *e == VspEvent::StateChanged(VspState::Idle)
    });
    assert!(host.now() >= Duration::from_secs(1));
    host.wait_for(
        "a status report",
        |e| matches!(e, VspEvent::StatusReport { available, .. } if *available == GUEST_FREE),
    );

    let now = host.now();
    host.session.vsp.balloon(now, BALLOON).unwrap();
    let done = host.wait_for("the balloon", |e| {
        matches!(e, VspEvent::BalloonComplete { .. })
    });
    assert_eq!(
        done,
        VspEvent::BalloonComplete {
            requested: BALLOON,
            returned: BALLOON
        }
    );
    assert_eq!(host.session.vsp.ballooned().len(), BALLOON);
    // The guest's reports count what it gave as committed, so the host does not take it
    // for free memory.
    let report = host.wait_for("a status report after the balloon", |e| {
        matches!(e, VspEvent::StatusReport { available, .. } if *available == GUEST_FREE - BALLOON)
    });
    let VspEvent::StatusReport { committed, .. } = report else {
        unreachable!()
    };
    assert!(
        committed >= GUEST_PAGES - GUEST_FREE + BALLOON,
        "{report:?}"
    );

    let now = host.now();
    let runs = host
        .session
        .vsp
        .unballoon(now, UNBALLOON, &mut ProtocolOnly)
        .unwrap();
    assert_eq!(runs.iter().map(|r| r.count()).sum::<u64>(), UNBALLOON);
    let done = host.wait_for("the unballoon", |e| {
        matches!(e, VspEvent::UnballoonComplete { .. })
    });
    assert_eq!(done, VspEvent::UnballoonComplete { pages: UNBALLOON });

    // The host backs the new memory before it offers it.
    host.session.guest.end += HOT_ADD;
    let now = host.now();
    assert_eq!(
        host.session
            .vsp
            .hot_add(now, GUEST_PAGES, HOT_ADD, &mut ProtocolOnly),
        Ok(HOT_ADD)
    );
    let done = host.wait_for("the hot-add", |e| {
        matches!(e, VspEvent::HotAddComplete { .. })
    });
    assert_eq!(
        done,
        VspEvent::HotAddComplete {
            requested: HOT_ADD,
            added: HOT_ADD,
            result: HotAddResult::Success
        }
    );

    (&guest.socket).write_all(b"F").unwrap();
    let mut text = String::new();
    BufReader::new(&guest.socket)
        .read_to_string(&mut text)
        .unwrap();
    let (status, output) = guest.finish();
    assert!(
        status.success() && output.contains("1 passed"),
        "guest failed:\n{output}"
    );
    let reported = parse_ranges(&text).unwrap_or_else(|| panic!("no report in {text:?}"));
    assert_eq!(&reported, host.session.vsp.ballooned());
    assert_eq!(reported.len(), BALLOON - UNBALLOON);
    let returned = returned_once(&host);
    assert_eq!(returned.len(), BALLOON);
    assert!(reported.ranges().all(|r| returned.contains_all(r)));
    let violations: Vec<_> = host
        .events
        .iter()
        .filter(|e| matches!(e, VspEvent::ProtocolViolation { .. }))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");

    let now = host.now();
    host.session.close(now).unwrap();
    assert_eq!(host.session.vsp.state(), VspState::Closed);
    assert_eq!(host.session.vsp.ballooned().len(), BALLOON - UNBALLOON);
}

/// The guest of the kill tests: balloons 4 KiB pages until it has handed
/// [`STALL_AFTER_MESSAGES`] messages to the ring, reports exactly the pages that reached
/// the ring, and then stops, neither pumping nor exiting, until it is killed.
fn guest_stalls() {
    let socket = setup_socket();
    let channel = ChannelSetup::receive(&socket).unwrap();
    let start = Instant::now();
    let mut guest = GuestSession::connect(
        Vsc::new(guest_config()),
        channel,
        fragmented_guest(),
        Duration::ZERO,
    );
    let threshold = STALL_AFTER_MESSAGES * RANGES_PER_MESSAGE;
    let stopped = guest
        .run_until(clock(start), start.elapsed() + STEP, |s| {
            s.vsc.ballooned().len() >= threshold
        })
        .unwrap();
    assert!(stopped, "no balloon request came");
    // The VSC counts a message as given once the session takes it; one held for room in
    // the ring has not reached the host.
    let mut sent = guest.vsc.ballooned().clone();
    for r in balloon_pages(guest.unsent()).ranges() {
        sent.remove(r);
    }
    write_ranges(&socket, &sent);
    // Until killed, or the host goes.
    let _ = (&socket).read(&mut [0u8; 1]);
}

/// How the host learns that the guest died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// The owner sees the process exit and closes the session.
    Exit,
    /// The VSP's reply timeout ends the balloon; the owner closes the session later.
    ReplyTimeout,
}

/// SIGKILLs the guest in the middle of a 1 GiB balloon: the host keeps every page that
/// reached the ring before the kill, each once, and nothing else.
fn killed_guest(test: &str, notice: Notice) {
    let (mut guest, channel) = Guest::spawn(test, "stall");
    let config = VspConfig {
        post_caps_wait: Duration::from_millis(200),
        // Short, yet far above the guest's gaps between messages (it answers a request
        // with the whole transaction at once).
        reply_timeout: match notice {
            Notice::Exit => STEP * 10,
            Notice::ReplyTimeout => Duration::from_secs(3),
        },
        ..VspConfig::default()
    };
    let mut host = Host::open(config, channel);
    host.wait_for("the end of the post-capabilities wait", |e| {
        *e == VspEvent::StateChanged(VspState::Idle)
    });
    let now = host.now();
    host.session.vsp.balloon(now, BALLOON).unwrap();

    guest.socket.set_nonblocking(true).unwrap();
    let mut text = Vec::new();
    let socket = &guest.socket;
    host.run("the guest's report", |_, _| {
        let mut buf = [0u8; 4096];
        loop {
            match (&*socket).read(&mut buf) {
                Ok(0) => panic!("the guest closed its socket before reporting"),
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("setup socket: {e}"),
            }
        }
        text.ends_with(b"end\n")
    });
    let sent = parse_ranges(std::str::from_utf8(&text).unwrap()).unwrap();
    // The guest stopped with at least this many messages taken, the last perhaps held.
    let least = (STALL_AFTER_MESSAGES - 1) * RANGES_PER_MESSAGE;
    assert!(
        sent.len() >= least && sent.len() < BALLOON,
        "{} pages reported",
        sent.len()
    );
    assert_eq!(host.session.vsp.state(), VspState::Balloon);

    guest.child.kill().unwrap();
    match notice {
        Notice::Exit => {
            let child = &mut guest.child;
            host.run("the guest's exit", |_, _| {
                child.try_wait().unwrap().is_some()
            });
            let now = host.now();
            host.session.close(now).unwrap();
            host.events
                .extend(std::iter::from_fn(|| host.session.vsp.poll_event()));
            assert!(host.events.contains(&VspEvent::Reset));
            assert!(
                !host.events.iter().any(|e| matches!(
                    e,
                    VspEvent::TransactionTimedOut { .. } | VspEvent::BalloonComplete { .. }
                )),
                "{:?}",
                host.events
            );
        }
        Notice::ReplyTimeout => {
            let timed_out = host.wait_for("the balloon timeout", |e| {
                matches!(e, VspEvent::TransactionTimedOut { .. })
            });
            assert_eq!(
                timed_out,
                VspEvent::TransactionTimedOut {
                    what: Transaction::Balloon {
                        requested: BALLOON,
                        returned: sent.len()
                    }
                }
            );
            assert_eq!(host.session.vsp.state(), VspState::Idle);
            guest.child.wait().unwrap();
            let now = host.now();
            host.session.close(now).unwrap();
        }
    }
    assert_eq!(host.session.vsp.state(), VspState::Closed);
    assert!(host.session.is_ended());
    assert_eq!(host.session.vsp.ballooned(), &sent);
    assert_eq!(&returned_once(&host), &sent);
    let violations: Vec<_> = host
        .events
        .iter()
        .filter(|e| matches!(e, VspEvent::ProtocolViolation { .. }))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");
    let (status, _) = guest.finish();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
}

#[test]
fn killed_guest_noticed_by_its_exit() {
    if std::env::var_os(CHILD_ENV).is_some() {
        guest_stalls();
        return;
    }
    killed_guest("killed_guest_noticed_by_its_exit", Notice::Exit);
}

#[test]
fn killed_guest_noticed_by_the_reply_timeout() {
    if std::env::var_os(CHILD_ENV).is_some() {
        guest_stalls();
        return;
    }
    killed_guest(
        "killed_guest_noticed_by_the_reply_timeout",
        Notice::ReplyTimeout,
    );
}
