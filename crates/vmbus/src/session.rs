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
//!   ([`Vsp::channel_closed`], which reports [`VspEvent::Reset`](ballast_dm::vsp::VspEvent::Reset)):
//!   a new channel is a new connection. The guest side resets the VSC, whose balloon
//!   pages still queued go back to the guest OS. Every later call returns
//!   [`SessionError::Ended`].
//! - **A dead peer is the owner's news.** Doorbells never hang up (each end holds both
//!   eventfds), so a session cannot see its peer die; the owner, who watches the guest's
//!   process or socket, calls `close`. On the host, `close` first takes what the ring
//!   still holds: the memory is the host's own, a packet is visible only once written in
//!   full, and pages the guest gave before it died are the host's to keep.
//! - Packets other than in-band data carry no DM message and are dropped.
//!
//! # Seeing the bytes
//!
//! For debugging against a real guest, a session can carry a [`Tap`]
//! ([`HostSession::set_tap`], [`GuestSession::set_tap`]) that sees every DM message the
//! session puts in the ring and every one it takes out, in order, with its direction:
//! a closure, a [`HexdumpTap`] writing a text hexdump to any [`io::Write`], or a
//! [`TraceTap`] emitting `tracing` events at TRACE level.

use std::fmt;
use std::io;
use std::time::Duration;

use ballast_abi::dm::{MAX_MESSAGE_SIZE, MessageType};
use ballast_abi::vmbus::{DESCRIPTOR_LEN, PACKET_TRAILER_LEN, PacketType};

use crate::ring::{Channel, RingError};
use ballast_dm::vsc::{GuestMemoryModel, Vsc};
use ballast_dm::vsp::{GuestOwnership, Vsp};

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

/// Which way a message went, for a [`Tap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This session wrote it to the ring.
    Sent,
    /// This session took it from the ring.
    Received,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        })
    }
}

/// Sees the DM messages a session exchanges: each payload of an in-band packet the
/// session wrote to the ring (once, when the ring took it; a message held for a full ring
/// is seen when it finally goes) and of each one it read (as the ring held it, with the
/// sender's padding of up to 7 bytes, before the state machine sees it).
///
/// A tap only watches: it cannot change or stop the exchange, and a tap that fails (a
/// full disk) should remember the failure rather than panic.
pub trait Tap: Send {
    /// One message, `bytes` its packet payload.
    fn packet(&mut self, dir: Direction, bytes: &[u8]);
}

impl<F: FnMut(Direction, &[u8]) + Send> Tap for F {
    fn packet(&mut self, dir: Direction, bytes: &[u8]) {
        self(dir, bytes)
    }
}

/// The message type in a payload's `dm_header`, if it has one.
fn message_type(bytes: &[u8]) -> Option<MessageType> {
    let ty = bytes.get(..2)?;
    Some(MessageType(u16::from_le_bytes([ty[0], ty[1]])))
}

/// A [`Tap`] that writes each message to `out` as a text hexdump, `hexdump -C` style:
///
/// ```text
/// 0 received 16 bytes DM_VERSION_REQUEST
///   0000  01 00 10 00 00 00 00 00  02 00 04 00 00 00 00 00  |................|
/// ```
///
/// A header line (sequence number from 0, direction, length, message type), then the
/// bytes 16 to a line. The first write error stops the dump; [`error`](Self::error) keeps
/// it, and the session goes on.
#[derive(Debug)]
pub struct HexdumpTap<W> {
    out: W,
    seq: u64,
    error: Option<io::Error>,
}

impl<W: io::Write + Send> HexdumpTap<W> {
    /// Dumps to `out`; wrap a file or socket in a `BufWriter` to spare a syscall a line.
    pub fn new(out: W) -> Self {
        Self {
            out,
            seq: 0,
            error: None,
        }
    }

    /// The write error that stopped the dump, if one did.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// The writer.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn dump(&mut self, dir: Direction, bytes: &[u8]) -> io::Result<()> {
        write!(self.out, "{} {dir} {} bytes", self.seq, bytes.len())?;
        match message_type(bytes) {
            Some(ty) => writeln!(self.out, " {ty}")?,
            None => writeln!(self.out)?,
        }
        for (line, chunk) in bytes.chunks(16).enumerate() {
            write!(self.out, "  {:04x} ", line * 16)?;
            for i in 0..16 {
                if i == 8 {
                    write!(self.out, " ")?;
                }
                match chunk.get(i) {
                    Some(b) => write!(self.out, " {b:02x}")?,
                    None => write!(self.out, "   ")?,
                }
            }
            let ascii: String = chunk
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        char::from(b)
                    } else {
                        '.'
                    }
                })
                .collect();
            writeln!(self.out, "  |{ascii}|")?;
        }
        self.out.flush()
    }
}

impl<W: io::Write + Send> Tap for HexdumpTap<W> {
    fn packet(&mut self, dir: Direction, bytes: &[u8]) {
        if self.error.is_none() {
            if let Err(e) = self.dump(dir, bytes) {
                self.error = Some(e);
            }
        }
        self.seq += 1;
    }
}

/// A [`Tap`] that emits each message as a `tracing` event at TRACE level, target
/// `ballast_dm::tap`, with fields `direction`, `len`, `ty` and `bytes` (lower-case hex).
/// The hex is formatted only if a subscriber takes the event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceTap;

/// Bytes as lower-case hex, formatted on demand.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Tap for TraceTap {
    fn packet(&mut self, dir: Direction, bytes: &[u8]) {
        tracing::trace!(
            target: "ballast_dm::tap",
            direction = %dir,
            len = bytes.len(),
            ty = ?message_type(bytes),
            bytes = %Hex(bytes),
            "DM message"
        );
    }
}

/// A session's tap, if the owner installed one.
#[derive(Default)]
struct TapSlot(Option<Box<dyn Tap>>);

impl fmt::Debug for TapSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(Tap)"
        } else {
            "None"
        })
    }
}

impl TapSlot {
    fn see(&mut self, dir: Direction, bytes: &[u8]) {
        if let Some(tap) = &mut self.0 {
            tap.packet(dir, bytes);
        }
    }
}

/// The smallest packet's footprint in a ring: a descriptor and a trailer.
const MIN_PACKET_RING_LEN: usize = DESCRIPTOR_LEN + PACKET_TRAILER_LEN;

/// The channel and what a session keeps beside it, the same for both sides.
#[derive(Debug)]
struct Link {
    channel: Channel,
    buf: Vec<u8>,
    /// The message being sent: filled by the machine's `poll_transmit`, reused for every
    /// message, so sending allocates nothing.
    out: Box<[u8; MAX_MESSAGE_SIZE]>,
    /// `out[..n]` holds a message the ring had no room for.
    held: Option<usize>,
    next_packet_id: u64,
    ended: bool,
    tap: TapSlot,
}

impl Link {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            buf: Vec::new(),
            out: Box::new([0; MAX_MESSAGE_SIZE]),
            held: None,
            next_packet_id: 0,
            ended: false,
            tap: TapSlot::default(),
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
                self.tap.see(Direction::Received, packet.payload);
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
        mut next: impl FnMut(&mut [u8; MAX_MESSAGE_SIZE]) -> Option<usize>,
    ) -> Result<(usize, bool), RingError> {
        let mut sent = 0;
        loop {
            let Some(len) = self.held.take().or_else(|| next(&mut self.out)) else {
                return Ok((sent, false));
            };
            let msg = &self.out[..len];
            match self.channel.try_send(msg, self.next_packet_id) {
                Ok(()) => {
                    self.tap.see(Direction::Sent, msg);
                    self.next_packet_id = self.next_packet_id.wrapping_add(1);
                    sent += 1;
                }
                Err(RingError::Full) => {
                    self.held = Some(len);
                    return Ok((sent, true));
                }
                Err(e) => {
                    self.held = Some(len);
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

    fn set_tap(&mut self, tap: Option<Box<dyn Tap>>) -> Option<Box<dyn Tap>> {
        std::mem::replace(&mut self.tap.0, tap)
    }

    fn check_open(&self) -> Result<(), SessionError> {
        if self.ended {
            Err(SessionError::Ended)
        } else {
            Ok(())
        }
    }

    /// Ends the session; returns the length of the message held back for a full ring
    /// (in `out`), which never reached the peer.
    fn end(&mut self, why: Option<&SessionError>) -> Option<usize> {
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
        pass_with(&mut self.link, &mut self.vsp, now, &self.guest)
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
        self.link.held.map(|n| &self.link.out[..n])
    }

    /// The channel, e.g. for its doorbell.
    pub fn channel(&self) -> &Channel {
        &self.link.channel
    }

    /// Installs `tap` (or removes the tap, for `None`) to see every message from now on;
    /// returns the one it replaces.
    pub fn set_tap(&mut self, tap: Option<Box<dyn Tap>>) -> Option<Box<dyn Tap>> {
        self.link.set_tap(tap)
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

impl<G> HostSession<G> {
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

    /// [`pump`](HostSession::pump) with the ownership question answered by `guest` for
    /// this pass instead of by the session's own field: for an owner whose answer lives in
    /// state it cannot lend the session (a host whose p2m is in its core).
    pub fn pump_with(
        &mut self,
        now: Duration,
        guest: &dyn GuestOwnership,
    ) -> Result<Progress, SessionError> {
        self.link.check_open()?;
        let r = pass_with(&mut self.link, &mut self.vsp, now, guest);
        if let Err(e) = &r {
            self.link.end(Some(e));
            self.vsp.channel_closed(now);
        }
        r
    }
}

fn pass_with(
    link: &mut Link,
    vsp: &mut Vsp,
    now: Duration,
    guest: &dyn GuestOwnership,
) -> Result<Progress, SessionError> {
    let (received, more) = link.receive(|payload| vsp.receive(now, payload, guest))?;
    vsp.tick(now);
    let (sent, blocked) = link.flush(|buf| vsp.poll_transmit(buf))?;
    Ok(Progress {
        received,
        sent,
        more,
        blocked,
    })
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
        let (sent, blocked) = self.link.flush(|buf| vsc.poll_transmit(buf))?;
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

    fn reset(&mut self, now: Duration, unsent: Option<usize>) {
        // A balloon response held for a full ring never reached the host: its pages are
        // the guest's again.
        if let Some(n) = unsent {
            self.vsc.take_back(&self.link.out[..n]);
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
        self.link.held.map(|n| &self.link.out[..n])
    }

    /// The channel, e.g. for its doorbell.
    pub fn channel(&self) -> &Channel {
        &self.link.channel
    }

    /// Installs `tap` (or removes the tap, for `None`) to see every message from now on;
    /// returns the one it replaces.
    pub fn set_tap(&mut self, tap: Option<Box<dyn Tap>>) -> Option<Box<dyn Tap>> {
        self.link.set_tap(tap)
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

    use ballast_abi::dm::{Body, Message, MessageType};
    use ballast_abi::types::GfnRange;
    use ballast_abi::vmbus::WRITE_INDEX_OFFSET;

    use super::*;
    use crate::ring::DEFAULT_DATA_SIZE;
    use ballast_dm::vsc::{SimGuest, VscConfig};
    use ballast_dm::vsp::{HotAddResult, ProtocolOnly, VspConfig, VspEvent, VspState};
    use ballast_dm::{EVENT_CAP, PageSet};

    /// 1 GiB of boot RAM, 768 MiB free.
    const TOTAL: u64 = 262_144;

    /// A guest whose free memory has a page in use in every 2 MiB block, so it balloons
    /// 4 KiB pages, 510 ranges to a message.
    fn fragmented_guest() -> SimGuest {
        let mut g = SimGuest::new(TOTAL, TOTAL * 3 / 4);
        for block in (TOTAL / 4 / 512)..(TOTAL / 512) {
            g.occupy(GfnRange::page(block * 512).unwrap());
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
                set.insert(GfnRange::new(r.start_page(), u64::from(r.page_cnt())).unwrap());
            }
        }
        set
    }

    /// Writes malformed DM messages into the guest's outgoing ring until it is full.
    fn flood(guest: &mut GuestSession<SimGuest>) -> u64 {
        let mut written = 0;
        loop {
            match guest
                .link
                .channel
                .try_send(&[0xff; 3], guest.link.next_packet_id)
            {
                Ok(()) => written += 1,
                Err(RingError::Full) => return written,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_guest_flooding_the_ring_with_violations_cannot_grow_the_host_queue() {
        let (mut host, mut guest) = connected(SimGuest::new(TOTAL, TOTAL / 2));
        let now = Duration::from_secs(1);
        host.vsp.balloon(now, 1000).unwrap();
        host.pump(now).unwrap();
        // Each pass takes a ring's worth of malformed packets; the owner never drains.
        let mut written = 0;
        for round in 0..40 {
            if round == 20 {
                // The balloon response lands amid the flood.
                guest.pump(now).unwrap();
            }
            written += flood(&mut guest);
            while host.pump(now).unwrap().more {}
        }
        assert!(written > 10 * EVENT_CAP as u64, "{written}");
        let events: Vec<VspEvent> = std::iter::from_fn(|| host.vsp.poll_event()).collect();
        assert!(events.len() <= EVENT_CAP + 16, "{} events", events.len());
        let violations: u64 = events
            .iter()
            .map(|e| match e {
                VspEvent::ProtocolViolation { .. } => 1,
                VspEvent::Coalesced { violations, .. } => *violations,
                _ => 0,
            })
            .sum();
        assert_eq!(violations, written);
        assert!(events.contains(&VspEvent::BalloonComplete {
            requested: 1000,
            returned: 1000
        }));
        assert_eq!(host.vsp.ballooned().len(), 1000);
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

        host.vsp.unballoon(now, 15_000, &mut ProtocolOnly).unwrap();
        let events = settle(&mut host, &mut guest, now);
        assert!(events.contains(&VspEvent::UnballoonComplete { pages: 15_000 }));
        assert_eq!(host.vsp.ballooned().len(), 5_000);
        assert_eq!(host.vsp.ballooned(), guest.vsc.ballooned());

        host.guest.end += 32_768;
        host.vsp
            .hot_add(now, TOTAL, 32_768, &mut ProtocolOnly)
            .unwrap();
        let events = settle(&mut host, &mut guest, now);
        assert!(events.contains(&VspEvent::HotAddComplete {
            requested: 32_768,
            added: 32_768,
            result: HotAddResult::Success
        }));
        assert_eq!(guest.model.added().len(), 32_768);
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Direction, Vec<u8>)>>>;

    /// A tap that records what it sees.
    fn recorder() -> (Box<dyn Tap>, Seen) {
        let seen = Seen::default();
        let log = std::sync::Arc::clone(&seen);
        let tap = move |dir: Direction, bytes: &[u8]| {
            log.lock().unwrap().push((dir, bytes.to_vec()));
        };
        (Box::new(tap), seen)
    }

    fn taken(seen: &Seen, dir: Direction) -> Vec<Vec<u8>> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// `received` is `sent` as the ring delivers it: the same messages in the same order,
    /// each padded with zeros to a multiple of 8.
    fn assert_delivered(sent: &[Vec<u8>], received: &[Vec<u8>]) {
        assert_eq!(sent.len(), received.len());
        for (s, r) in sent.iter().zip(received) {
            assert_eq!(r.len(), s.len().next_multiple_of(8));
            assert_eq!(&r[..s.len()], &s[..]);
            assert!(r[s.len()..].iter().all(|&b| b == 0));
            assert_eq!(Message::parse(s).unwrap(), Message::parse(r).unwrap());
        }
    }

    #[test]
    fn a_tap_sees_every_message_both_ways() {
        let (mut host, mut guest) = pair(fragmented_guest());
        let (tap, host_seen) = recorder();
        assert!(host.set_tap(Some(tap)).is_none());
        let (tap, guest_seen) = recorder();
        assert!(guest.set_tap(Some(tap)).is_none());
        settle(&mut host, &mut guest, Duration::ZERO);
        settle(&mut host, &mut guest, Duration::from_millis(1));
        let now = Duration::from_secs(1);
        // Enough to fill the ring, so messages are held and sent later.
        let (mut sent, mut received) = (0, 0);
        host.vsp.balloon(now, 5_000).unwrap();
        loop {
            let a = host.pump(now).unwrap();
            let b = guest.pump(now).unwrap();
            sent += b.sent;
            received += a.received;
            if a.is_idle() && b.is_idle() {
                break;
            }
        }
        host.vsp.unballoon(now, 2_000, &mut ProtocolOnly).unwrap();
        settle(&mut host, &mut guest, now);

        let host_sent = taken(&host_seen, Direction::Sent);
        let guest_sent = taken(&guest_seen, Direction::Sent);
        assert_delivered(&host_sent, &taken(&guest_seen, Direction::Received));
        assert_delivered(&guest_sent, &taken(&host_seen, Direction::Received));
        let types = |msgs: &[Vec<u8>]| -> Vec<MessageType> {
            msgs.iter().map(|m| message_type(m).unwrap()).collect()
        };
        let guest_types = types(&guest_sent);
        assert_eq!(
            guest_types[..2],
            [
                MessageType::VERSION_REQUEST,
                MessageType::CAPABILITIES_REPORT
            ]
        );
        let responses = guest_types
            .iter()
            .filter(|&&t| t == MessageType::BALLOON_RESPONSE)
            .count();
        // 5,000 pages at 510 to a message; the balloon pass counted as many.
        assert_eq!(responses, 10);
        assert!(sent >= responses && received >= responses);
        assert!(guest_types.contains(&MessageType::UNBALLOON_RESPONSE));
        let host_types = types(&host_sent);
        assert_eq!(
            host_types[..2],
            [
                MessageType::VERSION_RESPONSE,
                MessageType::CAPABILITIES_RESPONSE
            ]
        );
        assert!(host_types.contains(&MessageType::BALLOON_REQUEST));
        assert!(host_types.contains(&MessageType::UNBALLOON_REQUEST));
        // The pages the tap saw given are the pages the host holds.
        let mut given = PageSet::new();
        for m in taken(&host_seen, Direction::Received) {
            for range in pages_of(Some(&m)).ranges() {
                given.insert(range);
            }
        }
        assert_eq!(given.len(), 5_000);

        // Removing the tap stops it.
        let count = host_seen.lock().unwrap().len();
        assert!(host.set_tap(None).is_some());
        host.vsp.balloon(now, 10).unwrap();
        settle(&mut host, &mut guest, now);
        assert_eq!(host_seen.lock().unwrap().len(), count);
        assert!(guest_seen.lock().unwrap().len() > count);
    }

    /// A writer the test keeps a handle on while the session owns the tap.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Reads a [`HexdumpTap`]'s text back: (direction, bytes) per message.
    fn parse_hexdump(text: &str) -> Vec<(Direction, Vec<u8>)> {
        let mut out: Vec<(Direction, Vec<u8>)> = Vec::new();
        for line in text.lines() {
            if let Some(hex) = line.strip_prefix("  ") {
                let (_, rest) = hex.split_once("  ").unwrap();
                let (bytes, _) = rest.split_once("  |").unwrap();
                let last = out.last_mut().unwrap();
                for b in bytes.split_whitespace() {
                    last.1.push(u8::from_str_radix(b, 16).unwrap());
                }
            } else {
                let mut f = line.split(' ');
                assert_eq!(f.next().unwrap().parse::<usize>().unwrap(), out.len());
                let dir = match f.next().unwrap() {
                    "sent" => Direction::Sent,
                    "received" => Direction::Received,
                    other => panic!("{other}"),
                };
                let len: usize = f.next().unwrap().parse().unwrap();
                out.push((dir, Vec::with_capacity(len)));
            }
        }
        out
    }

    #[test]
    fn a_hexdump_tap_writes_what_was_exchanged() {
        let (mut host, mut guest) = pair(fragmented_guest());
        let text = Shared::default();
        host.set_tap(Some(Box::new(HexdumpTap::new(text.clone()))));
        let (tap, guest_seen) = recorder();
        guest.set_tap(Some(tap));
        settle(&mut host, &mut guest, Duration::ZERO);
        settle(&mut host, &mut guest, Duration::from_millis(1));
        host.vsp.balloon(Duration::from_secs(1), 600).unwrap();
        settle(&mut host, &mut guest, Duration::from_secs(1));

        let text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with("0 received 16 bytes DM_VERSION_REQUEST\n  0000  01 00 10 00"),
            "{text}"
        );
        let dumped = parse_hexdump(&text);
        let by_dir = |dir| -> Vec<Vec<u8>> {
            dumped
                .iter()
                .filter(|(d, _)| *d == dir)
                .map(|(_, b)| b.clone())
                .collect()
        };
        assert_delivered(
            &taken(&guest_seen, Direction::Sent),
            &by_dir(Direction::Received),
        );
        assert_delivered(
            &by_dir(Direction::Sent),
            &taken(&guest_seen, Direction::Received),
        );
        assert!(dumped.len() > 6);
    }

    #[test]
    fn a_hexdump_tap_that_cannot_write_stops_and_keeps_the_error() {
        struct Broken;
        impl io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut tap = HexdumpTap::new(Broken);
        tap.packet(Direction::Sent, &[1, 0, 8, 0, 0, 0, 0, 0]);
        tap.packet(Direction::Received, &[]);
        assert_eq!(tap.error().unwrap().to_string(), "disk full");
        let mut ok = HexdumpTap::new(Vec::new());
        ok.packet(Direction::Sent, &[0x41; 17]);
        ok.packet(Direction::Received, &[7]);
        assert!(ok.error().is_none());
        assert_eq!(
            String::from_utf8(ok.into_inner()).unwrap(),
            "0 sent 17 bytes DM message type 16705\n\
             \x20 0000  41 41 41 41 41 41 41 41  41 41 41 41 41 41 41 41  |AAAAAAAAAAAAAAAA|\n\
             \x20 0010  41                                                |A|\n\
             1 received 1 bytes\n\
             \x20 0000  07                                                |.|\n"
        );
        // The tracing tap formats nothing without a subscriber and never fails.
        TraceTap.packet(Direction::Sent, &[1, 2, 3]);
    }

    /// Keeps the fields of every event, as `name=value` strings.
    #[derive(Default)]
    struct Fields(std::sync::Mutex<Vec<(String, String, tracing::Level)>>);

    struct Visitor<'a>(&'a mut Vec<String>);

    impl tracing::field::Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push(format!("{}={value:?}", field.name()));
        }
    }

    impl tracing::Subscriber for Fields {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push((
                event.metadata().target().to_owned(),
                fields.join(" "),
                *event.metadata().level(),
            ));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_trace_tap_emits_direction_and_hex_at_trace_level() {
        let fields = std::sync::Arc::new(Fields::default());
        tracing::subscriber::with_default(std::sync::Arc::clone(&fields), || {
            TraceTap.packet(Direction::Received, &[2, 0, 8, 0, 0xab, 0xcd, 0, 1]);
            TraceTap.packet(Direction::Sent, &[9]);
        });
        let events = fields.0.lock().unwrap();
        assert_eq!(
            *events,
            [
                (
                    "ballast_dm::tap".to_owned(),
                    "message=DM message direction=received len=8 \
                     ty=Some(DM_VERSION_RESPONSE) bytes=02000800abcd0001"
                        .to_owned(),
                    tracing::Level::TRACE
                ),
                (
                    "ballast_dm::tap".to_owned(),
                    "message=DM message direction=sent len=1 ty=None bytes=09".to_owned(),
                    tracing::Level::TRACE
                ),
            ]
        );
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
        for range in host.vsp.ballooned().ranges() {
            assert!(guest.vsc.ballooned().contains_all(range));
            assert_eq!(held.count_in(range), 0);
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
                    matches!(s.vsc.state(), ballast_dm::vsc::VscState::Connected { .. })
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
