//! Drivers that run a state machine over a ring [`Channel`]: [`HostSession`] for the
//! [`Vsp`], [`GuestSession`] for the [`Vsc`].
//!
//! A session owns the channel and pumps the machine: it hands every packet waiting in the
//! incoming ring to the machine, lets the machine's timers fire, and writes what the
//! machine queued until the outgoing ring is full. [`pump`](HostSession::pump) does one
//! such pass and never blocks; [`run_until`](HostSession::run_until) pumps, and sleeps on
//! the channel's doorbell whenever a pass moved nothing, until the owner's condition holds
//! or a deadline passes.
//!
//! Like the machines, a session reads no clock: the owner passes the time in, as a
//! [`Duration`] since any fixed origin (`Instant::elapsed` of one start instant), and
//! `run_until` takes the clock as a closure.
//!
//! # Decisions
//!
//! - **Nothing is lost on a full ring.** A message taken from the machine that does not
//!   fit is held and sent first at the next pass; the writer has asked the peer for a
//!   signal once there is room. The VSC counts a balloon response's pages as given when
//!   the message is taken ([`Vsc::poll_transmit`]); when a guest session ends with one
//!   held, it hands it back ([`Vsc::take_back`]), so those pages, which the host never
//!   saw, are the guest's again. A message already in the ring is the host's to read.
//! - **A pass is bounded.** It receives at most as many packets as the ring can hold, so a
//!   peer that writes as fast as it is read cannot keep the owner in one call; the pass
//!   then reports [`Progress::more`] and `run_until` pumps again without sleeping.
//! - **Timers fire before the send**, so what a timer queues (INFO at the end of the
//!   post-capabilities wait, a status report) leaves in the same pass.
//! - **The end of a session is final.** A ring error other than `Full` (the peer
//!   corrupted the ring, or a message cannot fit it), a failed doorbell, or the owner's
//!   [`close`](HostSession::close) ends it. The host side then resets the VSP
//!   ([`Vsp::channel_closed`], which reports [`VspEvent::Reset`](crate::vsp::VspEvent::Reset)):
//!   a new channel is a new connection. The guest side resets the VSC, whose balloon
//!   pages still queued go back to the guest OS. Every later call returns
//!   [`SessionError::Ended`].
//! - **A dead peer is the owner's news.** Doorbells never hang up (each end holds both
//!   eventfds), so a session cannot see its peer die; the owner, who watches the guest's
//!   process or socket, calls `close`. On the host, `close` first takes what the ring
//!   still holds: the memory is the host's own, a packet is visible only once written in
//!   full, and pages the guest gave before it died are the host's to keep.
//! - Packets other than in-band data carry no DM message and are dropped.

use std::io;
use std::time::Duration;

use ballast_abi::vmbus::{DESCRIPTOR_LEN, PACKET_TRAILER_LEN, PacketType};

use crate::ring::{Channel, RingError};
use crate::vsc::{GuestMemoryModel, Vsc};
use crate::vsp::{GuestOwnership, Vsp};

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Packets taken from the incoming ring.
    pub received: usize,
    /// Messages written to the outgoing ring.
    pub sent: usize,
    /// The pass stopped at its bound with packets possibly left: pump again before waiting.
    pub more: bool,
    /// A message waits for room in the outgoing ring; the peer signals when it frees some.
    pub blocked: bool,
}

impl Progress {
    /// True if the pass moved nothing and left nothing to do at once: the time to sleep.
    pub fn is_idle(&self) -> bool {
        self.received == 0 && self.sent == 0 && !self.more
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The ring failed: the peer corrupted it, or a message cannot fit it.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// Waiting on the doorbell failed.
    #[error("doorbell: {0}")]
    Doorbell(#[source] io::Error),
    /// The session had already ended.
    #[error("the session has ended")]
    Ended,
}

/// The smallest packet's footprint in a ring: a descriptor and a trailer.
const MIN_PACKET_RING_LEN: usize = DESCRIPTOR_LEN + PACKET_TRAILER_LEN;

/// The channel and what a session keeps beside it, the same for both sides.
#[derive(Debug)]
struct Link {
    channel: Channel,
    buf: Vec<u8>,
    held: Option<Vec<u8>>,
    next_packet_id: u64,
    ended: bool,
}

impl Link {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            buf: Vec::new(),
            held: None,
            next_packet_id: 0,
            ended: false,
        }
    }

    /// Hands each in-band payload to `feed`, up to a ring's worth of packets; returns the
    /// packets taken and whether the bound stopped the pass.
    fn receive(&mut self, mut feed: impl FnMut(&[u8])) -> Result<(usize, bool), RingError> {
        let bound = self.channel.reader().ring().data_size() as usize / MIN_PACKET_RING_LEN + 1;
        let mut taken = 0;
        while taken < bound {
            let Some(packet) = self.channel.try_recv(&mut self.buf)? else {
                return Ok((taken, false));
            };
            taken += 1;
            if packet.ty == PacketType::DATA_INBAND {
                feed(packet.payload);
            } else {
                tracing::debug!(ty = ?packet.ty, "non-data packet on the DM channel dropped");
            }
        }
        Ok((taken, true))
    }

    /// Sends the held message, then those `next` yields, until the ring is full; returns
    /// the messages sent and whether one is held.
    fn flush(
        &mut self,
        mut next: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<(usize, bool), RingError> {
        let mut sent = 0;
        loop {
            let Some(msg) = self.held.take().or_else(&mut next) else {
                return Ok((sent, false));
            };
            match self.channel.try_send(&msg, self.next_packet_id) {
                Ok(()) => {
                    self.next_packet_id = self.next_packet_id.wrapping_add(1);
                    sent += 1;
                }
                Err(RingError::Full) => {
                    self.held = Some(msg);
                    return Ok((sent, true));
                }
                Err(e) => {
                    self.held = Some(msg);
                    return Err(e);
                }
            }
        }
    }

    fn wait(&self, timeout: Duration) -> Result<(), SessionError> {
        self.channel
            .wait(Some(timeout))
            .map(drop)
            .map_err(SessionError::Doorbell)
    }

    fn check_open(&self) -> Result<(), SessionError> {
        if self.ended {
            Err(SessionError::Ended)
        } else {
            Ok(())
        }
    }

    /// Ends the session; returns the message held back for a full ring, which never
    /// reached the peer.
    fn end(&mut self, why: Option<&SessionError>) -> Option<Vec<u8>> {
        if let Some(e) = why {
            tracing::warn!(error = %e, "DM session ended");
        }
        self.ended = true;
        self.held.take()
    }
}

/// What `run_until` needs of either session.
trait Pumped {
    fn pump(&mut self, now: Duration) -> Result<Progress, SessionError>;
    fn machine_deadline(&self) -> Option<Duration>;
    fn wait(&mut self, now: Duration, timeout: Duration) -> Result<(), SessionError>;
}

fn run_until<S: Pumped>(
    s: &mut S,
    mut clock: impl FnMut() -> Duration,
    deadline: Duration,
    mut done: impl FnMut(&mut S) -> bool,
) -> Result<bool, SessionError> {
    loop {
        let now = clock();
        let progress = s.pump(now)?;
        if done(s) {
            return Ok(true);
        }
        if now >= deadline {
            return Ok(false);
        }
        if !progress.is_idle() {
            continue;
        }
        // A machine deadline already past was just ticked; waiting for it again would
        // spin until `deadline`.
        let wake = s
            .machine_deadline()
            .filter(|&d| d > now)
            .map_or(deadline, |d| d.min(deadline));
        s.wait(now, wake - now)?;
    }
}

/// The host's end of one guest's DM channel: the [`Vsp`] and the ring it talks over.
#[derive(Debug)]
pub struct HostSession<G> {
    /// The host state machine: make requests on it and take its events.
    pub vsp: Vsp,
    /// Which pages are the guest's (the host's p2m), asked about every page the guest
    /// gives; the owner grows it before a hot-add.
    pub guest: G,
    link: Link,
}

impl<G: GuestOwnership> HostSession<G> {
    /// Opens the channel on `vsp`: it now waits for the guest's version request. A VSP
    /// still open from an earlier channel is reset first, since this is a new connection.
    pub fn open(mut vsp: Vsp, channel: Channel, guest: G, now: Duration) -> Self {
        vsp.channel_closed(now);
        let opened = vsp.channel_opened(now);
        debug_assert!(opened.is_ok(), "a closed VSP refused to open: {opened:?}");
        Self {
            vsp,
            guest,
            link: Link::new(channel),
        }
    }

    /// One pass: every packet waiting (up to a ring's worth) to the VSP, a tick, then the
    /// VSP's messages until the ring is full. Never blocks.
    ///
    /// An error ends the session and resets the VSP.
    pub fn pump(&mut self, now: Duration) -> Result<Progress, SessionError> {
        self.link.check_open()?;
        let r = self.pass(now);
        if let Err(e) = &r {
            self.link.end(Some(e));
            self.vsp.channel_closed(now);
        }
        r
    }

    fn pass(&mut self, now: Duration) -> Result<Progress, SessionError> {
        let (vsp, guest) = (&mut self.vsp, &self.guest);
        let (received, more) = self
            .link
            .receive(|payload| vsp.receive(now, payload, guest))?;
        vsp.tick(now);
        let (sent, blocked) = self.link.flush(|| vsp.poll_transmit())?;
        Ok(Progress {
            received,
            sent,
            more,
            blocked,
        })
    }

    /// Pumps until `done` holds (checked after every pass; `Ok(true)`) or `deadline`
    /// passes (`Ok(false)`), sleeping on the doorbell between passes that moved nothing,
    /// at most until the VSP's next deadline. `clock` gives the current time.
    pub fn run_until(
        &mut self,
        clock: impl FnMut() -> Duration,
        deadline: Duration,
        done: impl FnMut(&mut Self) -> bool,
    ) -> Result<bool, SessionError> {
        run_until(self, clock, deadline, done)
    }

    /// Ends the session because the guest is gone (its process exited, its socket
    /// closed) or the owner is done: takes what the ring still holds, then resets the
    /// VSP. Returns what was taken; an error while taking it is returned after the reset.
    /// Nothing happens on a session already ended.
    pub fn close(&mut self, now: Duration) -> Result<Progress, SessionError> {
        if self.link.ended {
            return Ok(Progress::default());
        }
        let (vsp, guest) = (&mut self.vsp, &self.guest);
        let r = self
            .link
            .receive(|payload| vsp.receive(now, payload, guest))
            .map(|(received, more)| Progress {
                received,
                more,
                ..Progress::default()
            })
            .map_err(SessionError::from);
        self.link.end(r.as_ref().err());
        self.vsp.channel_closed(now);
        r
    }

    /// True once the session has ended.
    pub fn is_ended(&self) -> bool {
        self.link.ended
    }

    /// The message waiting for room in the ring, if any.
    pub fn unsent(&self) -> Option<&[u8]> {
        self.link.held.as_deref()
    }

    /// The channel, e.g. for its doorbell.
    pub fn channel(&self) -> &Channel {
        &self.link.channel
    }
}

impl<G: GuestOwnership> Pumped for HostSession<G> {
    fn pump(&mut self, now: Duration) -> Result<Progress, SessionError> {
        HostSession::pump(self, now)
    }

    fn machine_deadline(&self) -> Option<Duration> {
        self.vsp.next_deadline()
    }

    fn wait(&mut self, now: Duration, timeout: Duration) -> Result<(), SessionError> {
        self.link.wait(timeout).inspect_err(|e| {
            self.link.end(Some(e));
            self.vsp.channel_closed(now);
        })
    }
}

/// The guest's end of the DM channel: the [`Vsc`], the guest OS it serves, and the ring.
#[derive(Debug)]
pub struct GuestSession<M> {
    /// The guest state machine.
    pub vsc: Vsc,
    /// The guest OS the VSC balloons and hot-adds.
    pub model: M,
    link: Link,
}

impl<M: GuestMemoryModel> GuestSession<M> {
    /// Starts the conversation on `channel`: the VSC queues its first version request
    /// (dropping any earlier connection, as [`Vsc::connect`] does).
    pub fn connect(mut vsc: Vsc, channel: Channel, model: M, now: Duration) -> Self {
        vsc.connect(now);
        Self {
            vsc,
            model,
            link: Link::new(channel),
        }
    }

    /// One pass: every packet waiting (up to a ring's worth) to the VSC, a tick, then the
    /// VSC's messages until the ring is full. Never blocks.
    ///
    /// An error ends the session and resets the VSC.
    pub fn pump(&mut self, now: Duration) -> Result<Progress, SessionError> {
        self.link.check_open()?;
        let r = self.pass(now);
        if let Err(e) = &r {
            let unsent = self.link.end(Some(e));
            self.reset(now, unsent);
        }
        r
    }

    fn pass(&mut self, now: Duration) -> Result<Progress, SessionError> {
        let (vsc, model) = (&mut self.vsc, &mut self.model);
        let (received, more) = self
            .link
            .receive(|payload| vsc.receive(now, payload, model))?;
        vsc.tick(now, model);
        let (sent, blocked) = self.link.flush(|| vsc.poll_transmit())?;
        Ok(Progress {
            received,
            sent,
            more,
            blocked,
        })
    }

    /// Pumps until `done` holds (checked after every pass; `Ok(true)`) or `deadline`
    /// passes (`Ok(false)`), sleeping on the doorbell between passes that moved nothing,
    /// at most until the VSC's next deadline. `clock` gives the current time.
    pub fn run_until(
        &mut self,
        clock: impl FnMut() -> Duration,
        deadline: Duration,
        done: impl FnMut(&mut Self) -> bool,
    ) -> Result<bool, SessionError> {
        run_until(self, clock, deadline, done)
    }

    /// Ends the session because the host is gone or the owner is done: resets the VSC,
    /// whose balloon pages not yet handed to the ring go back to the guest OS. Nothing
    /// happens on a session already ended.
    pub fn close(&mut self, now: Duration) {
        if !self.link.ended {
            let unsent = self.link.end(None);
            self.reset(now, unsent);
        }
    }

    fn reset(&mut self, now: Duration, unsent: Option<Vec<u8>>) {
        // A balloon response held for a full ring never reached the host: its pages are
        // the guest's again.
        if let Some(m) = unsent {
            self.vsc.take_back(&m);
        }
        self.vsc.reset();
        // The VSC gives withdrawn pages back at its next tick; there will be no other.
        self.vsc.tick(now, &mut self.model);
    }

    /// True once the session has ended.
    pub fn is_ended(&self) -> bool {
        self.link.ended
    }

    /// The message waiting for room in the ring, if any. Its balloon pages already count
    /// in [`Vsc::ballooned`] but have not reached the host.
    pub fn unsent(&self) -> Option<&[u8]> {
        self.link.held.as_deref()
    }

    /// The channel, e.g. for its doorbell.
    pub fn channel(&self) -> &Channel {
        &self.link.channel
    }
}

impl<M: GuestMemoryModel> Pumped for GuestSession<M> {
    fn pump(&mut self, now: Duration) -> Result<Progress, SessionError> {
        GuestSession::pump(self, now)
    }

    fn machine_deadline(&self) -> Option<Duration> {
        self.vsc.next_deadline()
    }

    fn wait(&mut self, now: Duration, timeout: Duration) -> Result<(), SessionError> {
        self.link.wait(timeout).inspect_err(|e| {
            let unsent = self.link.end(Some(e));
            self.reset(now, unsent);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use ballast_abi::dm::{Body, Message};
    use ballast_abi::vmbus::WRITE_INDEX_OFFSET;

    use super::*;
    use crate::PageSet;
    use crate::ring::DEFAULT_DATA_SIZE;
    use crate::vsc::{SimGuest, VscConfig};
    use crate::vsp::{HotAddResult, VspConfig, VspEvent, VspState};

    /// 1 GiB of boot RAM, 768 MiB free.
    const TOTAL: u64 = 262_144;

    /// A guest whose free memory has a page in use in every 2 MiB block, so it balloons
    /// 4 KiB pages, 510 ranges to a message.
    fn fragmented_guest() -> SimGuest {
        let mut g = SimGuest::new(TOTAL, TOTAL * 3 / 4);
        for block in (TOTAL / 4 / 512)..(TOTAL / 512) {
            g.occupy(block * 512, 1);
        }
        g
    }

    fn config() -> VspConfig {
        VspConfig {
            post_caps_wait: Duration::ZERO,
            ..VspConfig::default()
        }
    }

    fn pair(guest: SimGuest) -> (HostSession<std::ops::Range<u64>>, GuestSession<SimGuest>) {
        let (h, g) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
        let host = HostSession::open(Vsp::new(config()), h, 0..TOTAL, Duration::ZERO);
        let guest = GuestSession::connect(Vsc::new(VscConfig::default()), g, guest, Duration::ZERO);
        (host, guest)
    }

    /// Pumps both ends in turn at time `now` until neither moves; returns the host's
    /// events.
    fn settle(
        host: &mut HostSession<std::ops::Range<u64>>,
        guest: &mut GuestSession<SimGuest>,
        now: Duration,
    ) -> Vec<VspEvent> {
        loop {
            let a = host.pump(now).unwrap();
            let b = guest.pump(now).unwrap();
            if a.is_idle() && b.is_idle() {
                break;
            }
        }
        std::iter::from_fn(|| host.vsp.poll_event()).collect()
    }

    fn connected(guest: SimGuest) -> (HostSession<std::ops::Range<u64>>, GuestSession<SimGuest>) {
        let (mut host, mut guest) = pair(guest);
        settle(&mut host, &mut guest, Duration::ZERO);
        settle(&mut host, &mut guest, Duration::from_millis(1));
        assert_eq!(host.vsp.state(), VspState::Idle);
        (host, guest)
    }

    fn pages_of(msg: Option<&[u8]>) -> PageSet {
        let mut set = PageSet::new();
        if let Some(Body::BalloonResponse { ranges, .. }) =
            msg.and_then(|m| Message::parse(m).ok()).map(|m| m.body)
        {
            for r in ranges {
                set.insert(r.start_page(), u64::from(r.page_cnt()));
            }
        }
        set
    }

    #[test]
    fn balloon_unballoon_and_hot_add_through_a_full_ring() {
        let (mut host, mut guest) = connected(fragmented_guest());
        let now = Duration::from_secs(1);
        // 40 messages of 4 KiB: the 16 KiB ring fills many times over.
        host.vsp.balloon(now, 20_000).unwrap();
        host.pump(now).unwrap();
        let first = guest.pump(now).unwrap();
        assert!(first.blocked && first.sent == 3, "{first:?}");
        assert!(guest.unsent().is_some());
        let events = settle(&mut host, &mut guest, now);
        assert!(events.contains(&VspEvent::BalloonComplete {
            requested: 20_000,
            returned: 20_000
        }));
        assert!(guest.unsent().is_none());
        assert_eq!(host.vsp.ballooned(), guest.vsc.ballooned());
        assert_eq!(guest.model.ballooned(), guest.vsc.ballooned());

        host.vsp.unballoon(now, 15_000).unwrap();
        let events = settle(&mut host, &mut guest, now);
        assert!(events.contains(&VspEvent::UnballoonComplete { pages: 15_000 }));
        assert_eq!(host.vsp.ballooned().len(), 5_000);
        assert_eq!(host.vsp.ballooned(), guest.vsc.ballooned());

        host.guest.end += 32_768;
        host.vsp.hot_add(now, TOTAL, 32_768).unwrap();
        let events = settle(&mut host, &mut guest, now);
        assert!(events.contains(&VspEvent::HotAddComplete {
            requested: 32_768,
            added: 32_768,
            result: HotAddResult::Success
        }));
        assert_eq!(guest.model.added().len(), 32_768);
    }

    #[test]
    fn a_corrupt_ring_ends_the_host_session_and_resets_the_vsp() {
        let (h, mut g) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
        let mut host = HostSession::open(Vsp::new(config()), h, 0..TOTAL, Duration::ZERO);
        assert_eq!(host.vsp.state(), VspState::Version);
        // A write index that is not a multiple of 8.
        g.writer()
            .ring()
            .control_word(WRITE_INDEX_OFFSET)
            .unwrap()
            .store(3, Ordering::SeqCst);
        let err = host.pump(Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(err, SessionError::Ring(RingError::Corrupt { .. })),
            "{err}"
        );
        assert!(host.is_ended());
        assert_eq!(host.vsp.state(), VspState::Closed);
        let events: Vec<_> = std::iter::from_fn(|| host.vsp.poll_event()).collect();
        assert!(events.contains(&VspEvent::Reset), "{events:?}");
        assert!(matches!(
            host.pump(Duration::from_secs(2)),
            Err(SessionError::Ended)
        ));
        assert_eq!(
            host.close(Duration::from_secs(2)).unwrap(),
            Progress::default()
        );
    }

    #[test]
    fn host_close_keeps_what_the_guest_sent_before_it_went() {
        let (mut host, mut guest) = connected(fragmented_guest());
        let now = Duration::from_secs(1);
        host.vsp.balloon(now, 20_000).unwrap();
        host.pump(now).unwrap();
        guest.pump(now).unwrap();
        // The guest is gone with three messages in the ring and one held.
        let taken = host.close(now).unwrap();
        assert_eq!(taken.received, 3);
        assert_eq!(host.vsp.state(), VspState::Closed);
        assert_eq!(host.vsp.ballooned().len(), 3 * 510);
        let held = pages_of(guest.unsent());
        assert_eq!(held.len(), 510);
        for (s, n) in host.vsp.ballooned().ranges() {
            assert!(guest.vsc.ballooned().contains_all(s, n));
            assert_eq!(held.count_in(s, n), 0);
        }
        assert!(matches!(host.pump(now), Err(SessionError::Ended)));
    }

    #[test]
    fn guest_close_gives_queued_balloon_pages_back() {
        let (mut host, mut guest) = connected(fragmented_guest());
        let now = Duration::from_secs(1);
        host.vsp.balloon(now, 20_000).unwrap();
        host.pump(now).unwrap();
        guest.pump(now).unwrap();
        assert!(!guest.vsc.in_flight().is_empty());
        guest.close(now);
        assert!(guest.is_ended());
        assert!(guest.vsc.in_flight().is_empty());
        // What was written to the ring stays given; the held message and the rest of the
        // queue are the guest's again.
        assert_eq!(guest.model.ballooned(), guest.vsc.ballooned());
        assert_eq!(guest.vsc.ballooned().len(), 3 * 510);
        assert!(matches!(guest.pump(now), Err(SessionError::Ended)));
    }

    #[test]
    fn run_until_sleeps_on_the_doorbell_and_wakes_for_the_peer() {
        let (h, g) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
        let start = Instant::now();
        let clock = move || start.elapsed();
        let mut host = HostSession::open(Vsp::new(config()), h, 0..TOTAL, clock());
        // Nobody talks: the deadline ends the run.
        let t = clock();
        let done = host
            .run_until(clock, t + Duration::from_millis(30), |_| false)
            .unwrap();
        assert!(!done && clock() >= t + Duration::from_millis(30));

        let guest = std::thread::spawn(move || {
            let mut guest = GuestSession::connect(
                Vsc::new(VscConfig::default()),
                g,
                SimGuest::new(TOTAL, TOTAL / 2),
                clock(),
            );
            guest
                .run_until(clock, clock() + Duration::from_secs(20), |s| {
                    matches!(s.vsc.state(), crate::vsc::VscState::Connected { .. })
                        && s.unsent().is_none()
                })
                .unwrap()
        });
        let idle = host
            .run_until(clock, clock() + Duration::from_secs(20), |s| {
                s.vsp.state() == VspState::Idle
            })
            .unwrap();
        assert!(idle);
        assert!(guest.join().unwrap());
    }
}
