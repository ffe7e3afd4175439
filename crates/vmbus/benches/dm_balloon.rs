//! Balloon then unballoon 1 GiB between the host (VSP) and the guest (VSC), each driven
//! by its session over a 16 KiB VMBus ring: in one process (both sessions on one thread)
//! and across two (the guest is this binary run again). Protocol only: the guest is a
//! `SimGuest`, whose pages are bookkeeping, and the host backs nothing.
//!
//! Two page patterns: 4 KiB pages (the guest's free memory has a page in use in every
//! 2 MiB block, so it answers with 510 single-page ranges a message, 515 messages) and
//! 2 MiB blocks (512 ranges, two messages).
//!
//! The baseline, measured in the same run over the same kind of ring, is the transport's
//! limit: the same messages, byte for byte, in the same order and with the same waits (a
//! burst one way starts once the previous burst the other way has been read), written
//! and read by a plain loop with no state machine.
//!
//! Run: `cargo bench -p ballast-vmbus --bench dm_balloon`
//!
//! In one process it also moves the baseline's messages through rings over a GPADL's
//! scattered pages of unsealed guest RAM, against the same ring in one span, and drives
//! the two state machines alone, handing each other messages directly.
//!
//! The compared variants are measured interleaved (`ballast_benchkit::interleaved`: one
//! balloon + unballoon round of each per sampling round, the order rotating): in one
//! process the sessions, the ring only, the ring over a GPADL page list and the machines
//! alone; across two processes the sessions and the ring only, each against its own guest
//! process, both started before the first round and idle while the other runs. Rounds
//! follow [`SAMPLING`].
//!
//! Prints, per transport and pattern: messages per second and GiB of page ranges per
//! second (a round moves 2 GiB: 1 GiB in balloon responses, 1 GiB in unballoon requests),
//! each as median (min .. max) beside the baseline's, and the ratio ballast / baseline
//! (1.0 = as fast as the ring alone) as the median of the per-round ratios (min .. max).

use std::hint::black_box;
use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_abi::dm::MAX_MESSAGE_SIZE;
use ballast_abi::types::GfnRange;
use ballast_abi::vmbus::FEAT_PENDING_SEND_SZ;
use ballast_benchkit::{Comparison, Sampling, interleaved, sig};
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig};
use ballast_dm::vsp::{ProtocolOnly, Vsp, VspConfig, VspEvent, VspState};
use ballast_vmbus::ring::{
    Channel, ChannelSetup, DEFAULT_DATA_SIZE, Doorbell, InProcessDoorbell, Reader, RingBuffer,
    RingError, SharedRegion, Writer,
};
use ballast_vmbus::session::{GuestSession, HostSession};

/// Set in the guest process to its role: `session` or `baseline`.
const ROLE_ENV: &str = "BALLAST_DM_BENCH_CHILD";
/// Set in the guest process to the page pattern.
const PATTERN_ENV: &str = "BALLAST_DM_BENCH_PATTERN";
/// 4 GiB of guest RAM, 3 GiB of it free.
const GUEST_PAGES: u64 = 1 << 20;
const GUEST_FREE: u64 = GUEST_PAGES * 3 / 4;
/// 1 GiB.
const BALLOON: u64 = 262_144;
/// Bytes of page ranges a round moves: the balloon and the unballoon.
const ROUND_BYTES: f64 = 2.0 * BALLOON as f64 * 4096.0;
/// Rounds of each comparison: a balloon + unballoon of 4 KiB pages through the sessions
/// or the machines takes about 0.2 s, one of 2 MiB blocks well under 1 ms; the 4 KiB
/// comparisons stop at the 20 s cap, usually before a 2% interval (the report says so).
/// Four comparisons at most 20 s each keep the bench under two minutes on two cores.
const SAMPLING: Sampling = Sampling {
    min_rounds: 15,
    max_rounds: 1001,
    budget: Duration::from_secs(20),
    rel_ci: 0.02,
};
/// Longest an end waits for its doorbell before calling the run stalled.
const STALL: Duration = Duration::from_secs(20);
/// Longest sleep between looks at the setup socket.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Pages4K,
    Blocks2M,
}

impl Pattern {
    const ALL: [Pattern; 2] = [Pattern::Pages4K, Pattern::Blocks2M];

    fn name(self) -> &'static str {
        match self {
            Pattern::Pages4K => "4 KiB pages",
            Pattern::Blocks2M => "2 MiB blocks",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Pattern::Pages4K => "4k",
            Pattern::Blocks2M => "2m",
        }
    }

    fn from_env() -> Pattern {
        match std::env::var(PATTERN_ENV).as_deref() {
            Ok("4k") => Pattern::Pages4K,
            Ok("2m") => Pattern::Blocks2M,
            other => panic!("{PATTERN_ENV} is {other:?}"),
        }
    }

    fn guest(self) -> SimGuest {
        let mut g = SimGuest::new(GUEST_PAGES, GUEST_FREE);
        if self == Pattern::Pages4K {
            for block in (GUEST_PAGES - GUEST_FREE) / 512..GUEST_PAGES / 512 {
                g.occupy(GfnRange::page(block * 512).expect("below the gfn limit"));
            }
        }
        g
    }
}

fn vsp_config() -> VspConfig {
    VspConfig {
        post_caps_wait: Duration::ZERO,
        ..VspConfig::default()
    }
}

fn vsc_config() -> VscConfig {
    // No status reports: only the balloon's own messages cross the ring.
    VscConfig {
        status_period: Duration::ZERO,
        ..VscConfig::default()
    }
}

/// Messages that go one way, each burst sent once the previous one has been received.
#[derive(Debug)]
struct Burst {
    to_guest: bool,
    messages: Vec<Vec<u8>>,
}

/// The two machines handing each other messages directly, with no transport between.
struct Direct {
    vsp: Vsp,
    vsc: Vsc,
    model: SimGuest,
}

impl Direct {
    const T: Duration = Duration::ZERO;
    const OWNS: Range<u64> = 0..GUEST_PAGES;

    fn connected(pattern: Pattern) -> Direct {
        let mut d = Direct {
            vsp: Vsp::new(vsp_config()),
            vsc: Vsc::new(vsc_config()),
            model: pattern.guest(),
        };
        d.vsp.channel_opened(Self::T).unwrap();
        d.vsc.connect(Self::T);
        d.exchange(&mut |_, _| {});
        assert_eq!(d.vsp.state(), VspState::Idle);
        d
    }

    /// Delivers messages both ways until neither side has any, showing each burst to
    /// `seen` as (to the guest, messages); returns the messages delivered.
    fn exchange(&mut self, seen: &mut dyn FnMut(bool, Vec<Vec<u8>>)) -> usize {
        let mut moved = 0;
        loop {
            let mut buf = [0u8; MAX_MESSAGE_SIZE];
            let to_guest: Vec<_> =
                std::iter::from_fn(|| self.vsp.poll_transmit(&mut buf).map(|n| buf[..n].to_vec()))
                    .collect();
            for m in &to_guest {
                self.vsc.receive(Self::T, m, &mut self.model);
            }
            let to_host: Vec<_> =
                std::iter::from_fn(|| self.vsc.poll_transmit(&mut buf).map(|n| buf[..n].to_vec()))
                    .collect();
            for m in &to_host {
                self.vsp.receive(Self::T, m, &Self::OWNS);
            }
            if to_guest.is_empty() && to_host.is_empty() {
                return moved;
            }
            moved += to_guest.len() + to_host.len();
            for (to_guest, messages) in [(true, to_guest), (false, to_host)] {
                if !messages.is_empty() {
                    seen(to_guest, messages);
                }
            }
        }
    }

    /// Balloons and unballoons 1 GiB; returns the messages delivered.
    fn round(&mut self, seen: &mut dyn FnMut(bool, Vec<Vec<u8>>)) -> usize {
        self.vsp.balloon(Self::T, BALLOON).unwrap();
        let mut moved = self.exchange(seen);
        self.vsp
            .unballoon(Self::T, BALLOON, &mut ProtocolOnly)
            .unwrap();
        moved += self.exchange(seen);
        let events: Vec<_> = std::iter::from_fn(|| self.vsp.poll_event()).collect();
        assert!(events.iter().any(is_balloon_done), "{events:?}");
        assert!(events.iter().any(is_unballoon_done), "{events:?}");
        moved
    }
}

/// One round's messages, as the two machines exchange them with no transport between.
fn schedule(pattern: Pattern) -> Vec<Burst> {
    let mut bursts = Vec::new();
    Direct::connected(pattern)
        .round(&mut |to_guest, messages| bursts.push(Burst { to_guest, messages }));
    bursts
}

fn message_count(bursts: &[Burst]) -> usize {
    bursts.iter().map(|b| b.messages.len()).sum()
}

/// Which completion ends a step of a round.
fn is_balloon_done(e: &VspEvent) -> bool {
    matches!(e, VspEvent::BalloonComplete { returned, .. } if *returned == BALLOON)
}

fn is_unballoon_done(e: &VspEvent) -> bool {
    *e == VspEvent::UnballoonComplete { pages: BALLOON }
}

/// A variant as `interleaved` takes it.
type Timed<'a> = Box<dyn FnMut(&mut ()) + 'a>;

/// Runs `variants` interleaved, each a balloon + unballoon round returning the messages
/// it moved (checked against `expected`); nanoseconds per message. One untimed warm-up
/// round of each first.
fn compare(expected: usize, variants: &mut [&mut dyn FnMut() -> usize]) -> Comparison {
    for v in variants.iter_mut() {
        assert_eq!(v(), expected, "messages in a round");
    }
    let mut timed: Vec<Timed<'_>> = variants
        .iter_mut()
        .map(|v| {
            Box::new(move |_: &mut ()| {
                assert_eq!(black_box(v()), expected, "messages in a round");
            }) as Timed<'_>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut(&mut ())> = timed
        .iter_mut()
        .map(|b| &mut **b as &mut dyn FnMut(&mut ()))
        .collect();
    interleaved(&SAMPLING, expected as u64, |_| (), &mut refs)
}

/// "median (min .. max)" of a ratio's spread.
fn ratio(c: &Comparison, i: usize, j: usize) -> String {
    let r = c.ratio(i, j);
    format!("{} ({} .. {})", sig(r.median), sig(r.min), sig(r.max))
}

/// One line: variant `i`'s rate against variant `j`'s, and the ratio of the rates (the
/// per-round ratio of `j`'s time to `i`'s). `scale` turns ns per message into the unit.
fn line(c: &Comparison, name: &str, unit: &str, scale: f64, i: usize, base: &str, j: usize) {
    println!(
        "{name:<34} {} | {base} {} | ratio {}",
        c.rate(i, scale).show(unit),
        c.rate(j, scale).show(unit),
        ratio(c, j, i)
    );
}

/// The header and the messages and page-range lines of the sessions (variant 0) against
/// the ring only (variant 1).
fn print(transport: &str, pattern: Pattern, messages: usize, c: &Comparison) {
    println!(
        "{transport}, {}: {messages} messages a round, {} rounds{}; the ring alone moves them {} times faster",
        pattern.name(),
        c.rounds(),
        c.note(),
        ratio(c, 0, 1)
    );
    // kmsg/s = 1e6 / ns per message.
    line(c, "  messages", "kmsg/s", 1e6, 0, "ring only", 1);
    // GiB/s = bytes a round / (ns per message * messages) * 1e9 / 2^30.
    let gib = ROUND_BYTES / messages as f64 / 1.073_741_824;
    line(c, "  page ranges", "GiB/s", gib, 0, "ring only", 1);
}

// ---- in one process -----------------------------------------------------------------

type Host = HostSession<Range<u64>>;
type Guest = GuestSession<SimGuest>;

/// Both sessions on this thread, pumped in turn until `done` sees the host's event.
fn pump_until(
    host: &mut Host,
    guest: &mut Guest,
    now: Duration,
    done: fn(&VspEvent) -> bool,
) -> usize {
    let mut sent = 0;
    loop {
        let h = host.pump(now).unwrap();
        let g = guest.pump(now).unwrap();
        sent += h.sent + g.sent;
        let mut finished = false;
        while let Some(e) = host.vsp.poll_event() {
            finished |= done(&e);
        }
        if finished {
            return sent;
        }
        assert!(
            !(h.is_idle() && g.is_idle()),
            "stuck in {:?}",
            host.vsp.state()
        );
    }
}

fn in_process(pattern: Pattern, bursts: &[Burst]) {
    let expected = message_count(bursts);
    let start = Instant::now();
    let (h, g) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
    let mut host = HostSession::open(Vsp::new(vsp_config()), h, 0..GUEST_PAGES, start.elapsed());
    let mut guest =
        GuestSession::connect(Vsc::new(vsc_config()), g, pattern.guest(), start.elapsed());
    pump_until(&mut host, &mut guest, start.elapsed(), |e| {
        *e == VspEvent::StateChanged(VspState::Idle)
    });
    let (mut h, mut g) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
    // The ring alone again, over a GPADL's scattered pages of unsealed guest RAM.
    let (mut gh, mut gg) = gpadl_pair_in_process(DEFAULT_DATA_SIZE);
    // Where the time goes: the machines alone, handing each other messages directly.
    let mut direct = Direct::connected(pattern);
    let (mut buf, mut gbuf) = (Vec::new(), Vec::new());
    let c = compare(
        expected,
        &mut [
            &mut || {
                let now = start.elapsed();
                host.vsp.balloon(now, BALLOON).unwrap();
                let mut sent = pump_until(&mut host, &mut guest, now, is_balloon_done);
                host.vsp.unballoon(now, BALLOON, &mut ProtocolOnly).unwrap();
                sent += pump_until(&mut host, &mut guest, now, is_unballoon_done);
                sent
            },
            &mut || ring_round(&mut h, &mut g, bursts, &mut buf),
            &mut || ring_round(&mut gh, &mut gg, bursts, &mut gbuf),
            &mut || direct.round(&mut |_, _| {}),
        ],
    );
    print("in one process", pattern, expected, &c);
    line(
        &c,
        "  ring alone over a GPADL page list",
        "kmsg/s",
        1e6,
        2,
        "one span",
        1,
    );
    line(
        &c,
        "  messages (where the time goes)",
        "kmsg/s",
        1e6,
        0,
        "machines alone",
        3,
    );
}

/// Both ends of a channel whose rings lie over scattered pages of guest RAM (a memfd
/// without seals, as a VMM creates it), each end with its own mapping, as a VMBus guest
/// offers them in a GPADL.
fn gpadl_pair_in_process(data_size: u32) -> (Channel, Channel) {
    const RAM_PAGES: u64 = 1024;
    let ram = rustix::fs::memfd_create("bench-guest-ram", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&ram, RAM_PAGES * 4096).unwrap();
    let ring_pages = u64::from(data_size) / 4096 + 1;
    // Distinct pages in no order: 37 is prime to 1024.
    let pages: Vec<u64> = (0..2 * ring_pages)
        .map(|i| (i * 37 + 5) % RAM_PAGES * 4096)
        .collect();
    let view =
        || Arc::new(SharedRegion::guest_ram(ram.as_fd(), 0, (RAM_PAGES * 4096) as usize).unwrap());
    let (guest_view, host_view) = (view(), view());
    let (g_out, g_in) = RingBuffer::gpadl_pair(&guest_view, &pages, ring_pages as usize).unwrap();
    g_out.init(FEAT_PENDING_SEND_SZ).unwrap();
    g_in.init(FEAT_PENDING_SEND_SZ).unwrap();
    let (h_in, h_out) = RingBuffer::gpadl_pair(&host_view, &pages, ring_pages as usize).unwrap();
    let host_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
    let guest_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
    let host = Channel::new(
        Writer::new(h_out).unwrap(),
        Reader::new(h_in).unwrap(),
        Arc::clone(&guest_bell),
        Arc::clone(&host_bell),
    );
    let guest = Channel::new(
        Writer::new(g_out).unwrap(),
        Reader::new(g_in).unwrap(),
        host_bell,
        guest_bell,
    );
    (host, guest)
}

/// The baseline: a round's messages through `h` and `g` with a plain loop, no state
/// machine; returns the messages moved.
fn ring_round(h: &mut Channel, g: &mut Channel, bursts: &[Burst], buf: &mut Vec<u8>) -> usize {
    let mut moved = 0;
    for b in bursts {
        let (tx, rx) = if b.to_guest {
            (&mut *h, &mut *g)
        } else {
            (&mut *g, &mut *h)
        };
        let (mut sent, mut received) = (0, 0);
        while received < b.messages.len() {
            while let Some(m) = b.messages.get(sent) {
                match tx.try_send(m, sent as u64) {
                    Ok(()) => sent += 1,
                    Err(RingError::Full) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            while let Some(p) = rx.try_recv(buf).unwrap() {
                black_box(p.payload);
                received += 1;
            }
        }
        moved += received;
    }
    moved
}

// ---- across two processes -------------------------------------------------------------

/// True once the host has closed the setup socket (set non-blocking).
fn host_gone(socket: &UnixStream) -> bool {
    match (&*socket).read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("setup socket: {e}"),
    }
}

/// The guest process: serves the host until it closes the setup socket (stdin).
fn child(role: &str) {
    let socket = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let channel = ChannelSetup::receive(&socket).unwrap();
    socket.set_nonblocking(true).unwrap();
    let pattern = Pattern::from_env();
    match role {
        "session" => {
            let start = Instant::now();
            let clock = move || start.elapsed();
            let mut guest =
                GuestSession::connect(Vsc::new(vsc_config()), channel, pattern.guest(), clock());
            while !host_gone(&socket) {
                guest.run_until(clock, clock() + POLL, |_| false).unwrap();
            }
        }
        "baseline" => {
            let bursts = schedule(pattern);
            let mut ch = channel;
            let mut buf = Vec::new();
            loop {
                for b in &bursts {
                    let done = if b.to_guest {
                        receive(&mut ch, &mut buf, b.messages.len(), Some(&socket))
                    } else {
                        send(&mut ch, &b.messages);
                        true
                    };
                    if !done {
                        return;
                    }
                }
            }
        }
        _ => panic!("unknown role {role}"),
    }
}

/// Sends `messages`, waiting on the doorbell whenever the ring is full.
fn send(ch: &mut Channel, messages: &[Vec<u8>]) {
    for (i, m) in messages.iter().enumerate() {
        loop {
            match ch.try_send(m, i as u64) {
                Ok(()) => break,
                Err(RingError::Full) => assert!(ch.wait(Some(STALL)).unwrap(), "stalled sending"),
                Err(e) => panic!("send: {e}"),
            }
        }
    }
}

/// Receives `count` packets, waiting on the doorbell whenever the ring is empty; false if
/// `socket` says the host went away first.
fn receive(ch: &mut Channel, buf: &mut Vec<u8>, count: usize, socket: Option<&UnixStream>) -> bool {
    let mut received = 0;
    let mut waited = Duration::ZERO;
    while received < count {
        if let Some(p) = ch.try_recv(buf).unwrap() {
            black_box(p.payload);
            received += 1;
            waited = Duration::ZERO;
            continue;
        }
        let slice = if socket.is_some() { POLL } else { STALL };
        if !ch.wait(Some(slice)).unwrap() {
            if socket.is_some_and(host_gone) {
                return false;
            }
            waited += slice;
            assert!(waited < STALL, "stalled receiving");
        }
    }
    true
}

fn spawn(role: &str, pattern: Pattern) -> (std::process::Child, UnixStream, Channel) {
    let (socket, child_socket) = UnixStream::pair().unwrap();
    let (host, setup) = ChannelSetup::create(DEFAULT_DATA_SIZE).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, role)
        .env(PATTERN_ENV, pattern.env())
        .stdin(Stdio::from(OwnedFd::from(child_socket)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    setup.send(&socket).unwrap();
    (child, socket, host)
}

fn finish(mut child: std::process::Child, socket: UnixStream) {
    drop(socket);
    let status = child.wait().unwrap();
    assert!(status.success(), "guest process failed: {status}");
}

fn two_processes(pattern: Pattern, bursts: &[Burst]) {
    let expected = message_count(bursts);

    // Both guest processes run throughout; each waits on its doorbell (or polls its
    // setup socket) while the other variant's round runs.
    let (child, socket, channel) = spawn("session", pattern);
    let (base_child, base_socket, mut ch) = spawn("baseline", pattern);
    let start = Instant::now();
    let clock = move || start.elapsed();
    let mut host = HostSession::open(Vsp::new(vsp_config()), channel, 0..GUEST_PAGES, clock());
    let run = |host: &mut Host, done: fn(&VspEvent) -> bool| {
        let mut finished = false;
        let ok = host
            .run_until(clock, clock() + STALL, |s| {
                while let Some(e) = s.vsp.poll_event() {
                    finished |= done(&e);
                }
                finished
            })
            .unwrap();
        assert!(ok, "stuck in {:?}", host.vsp.state());
    };
    run(&mut host, |e| *e == VspEvent::StateChanged(VspState::Idle));
    let mut buf = Vec::new();
    let c = compare(
        expected,
        &mut [
            &mut || {
                host.vsp.balloon(clock(), BALLOON).unwrap();
                run(&mut host, is_balloon_done);
                host.vsp
                    .unballoon(clock(), BALLOON, &mut ProtocolOnly)
                    .unwrap();
                run(&mut host, is_unballoon_done);
                // Half the messages are counted in the other process; `in_process` checks
                // that the sessions exchange exactly the schedule's.
                expected
            },
            &mut || {
                for b in bursts {
                    if b.to_guest {
                        send(&mut ch, &b.messages);
                    } else {
                        receive(&mut ch, &mut buf, b.messages.len(), None);
                    }
                }
                expected
            },
        ],
    );
    finish(child, socket);
    finish(base_child, base_socket);
    print("across two processes", pattern, expected, &c);
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child(&role);
        return;
    }
    println!(
        "DM balloon + unballoon of 1 GiB over {} KiB rings; baseline: the same messages through the ring alone",
        DEFAULT_DATA_SIZE / 1024
    );
    for pattern in Pattern::ALL {
        let bursts = schedule(pattern);
        in_process(pattern, &bursts);
        two_processes(pattern, &bursts);
    }
}
