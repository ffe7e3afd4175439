//! The guest side of Dynamic Memory (the VSC), as Linux's `hv_balloon` plays it.
//!
//! A sans-IO state machine: the owner feeds it host messages ([`Vsc::receive`]) and the
//! passing of time ([`Vsc::tick`]), each with the current time, and takes out DM messages
//! to send ([`Vsc::poll_transmit`], one message's bytes at a time, so a transport with a
//! full ring can drain them gradually) and events ([`Vsc::poll_event`]). The guest OS is
//! behind [`GuestMemoryModel`]; [`SimGuest`] is a deterministic one.
//!
//! What it does, as Linux 6.1's `drivers/hv/hv_balloon.c` does:
//! - offers 2.0, then 1.0, then 0.3 with `is_last_attempt` on the last (or 2.0 alone, as
//!   the newest Linux), one 5 s wait covering the whole negotiation as in Linux 6.1, then
//!   reports its capabilities and waits 5 s for the answer;
//! - reports status every second once 45 periods have passed, with ballooned pages,
//!   not-yet-onlined hot-added pages and the balloon floor counted as committed;
//! - balloons down to, never below, Linux's floor; allocates 2 MiB blocks until one fails,
//!   then 4 KiB pages; puts at most 510 ranges in a message, one range per allocation;
//!   always ends the transaction with a `more_pages = 0` message, with no ranges if need
//!   be;
//! - gives back on unballoon only pages it ballooned, and answers once, after the
//!   `more_pages = 0` message;
//! - hot-adds whole memory blocks, telling the two request forms apart by `hdr.size`, and
//!   answers `{page_count, result}` with the meaning Linux's `hot_add_req` comment gives;
//! - records `INFO_TYPE_MAX_PAGE_CNT` when `data_size` is 8; ignores unknown types;
//! - takes one transaction id from a single counter for every message it sends, and
//!   never looks at the host's.
//!
//! Where it is stricter than Linux, on purpose:
//! - A message that does not decode (short, or counts that overrun `hdr.size`) is
//!   dropped with a [`Violation`] event. Linux reads whatever is in its zeroed buffer, so a
//!   2-byte `06 00` becomes "balloon 0 pages"; a host sending such bytes is broken either
//!   way, and acting on invented fields is worse than not answering.
//! - Unballooned ranges are checked against what was ballooned (test case t15); Linux
//!   frees blindly.
//! - Requests before the capabilities are accepted, and version or capabilities responses
//!   after, are dropped; Linux acts on some of them (a late version reject makes it offer
//!   1.0 again).
//! - The caps bits are honest: hot-add is advertised only if the configuration allows it
//!   and the model's block size can be expressed. Linux always sets both bits.
//! - A request whose pages could not reach the host because the channel was reset before
//!   they were sent gives those pages back to the guest (see [`Vsc::reset`]).
//!
//! Where sans-IO changes the shape: Linux balloons in a worker and hot-adds in a worker
//! that waits up to 5 s per block for onlining. Here a request is served entirely inside
//! [`Vsc::receive`], so requests are served strictly in arrival order, one at a time, and
//! each BALLOON_REQUEST yields its whole transaction at once in the transmit queue. The
//! extra status reports Linux posts while ballooning and hot-adding (which mostly burn
//! down its start-up delay faster) are not reproduced: reports follow the clock alone.

mod guest;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ballast_abi::dm::{
    Body, Caps, DecodeError, MAX_MESSAGE_SIZE, MAX_RANGES_PER_MESSAGE, Message, MessageType,
    PageRange, StatusReport, Version,
};

pub use guest::{DEFAULT_BLOCK_PAGES, GuestMemoryModel, HotAddError, SimGuest};

use ballast_abi::types::{GFN_LIMIT, GfnRange, GfnRangeError};

use crate::pageset::{PageSet, joined, run};
use crate::queue::{EventQueue, TxQueue};

/// The gfns a page range names, if they are all below the gfn limit: a 40-bit start and
/// a 24-bit count can reach past it.
fn gfns(r: &PageRange) -> Result<GfnRange, GfnRangeError> {
    GfnRange::new(r.start_page(), u64::from(r.page_cnt()))
}

/// The part of a page range below the gfn limit: all of it but what no guest page can
/// be. Its start is a 40-bit field, below the limit, so this is never empty for want of
/// a start.
fn gfns_below_limit(r: &PageRange) -> GfnRange {
    let start = r.start_page();
    let count = u64::from(r.page_cnt()).min(GFN_LIMIT.saturating_sub(start));
    GfnRange::new(start, count).unwrap_or(GfnRange::EMPTY)
}

/// The ring size per direction the VSC is meant to be opened with: Linux's
/// `VMBUS_RING_SIZE(16 KiB)` data area, room for three full 4 KiB balloon responses.
pub const RING_DATA_SIZE: usize = 16 * 1024;

/// The largest packet the VSC's transport must accept: one 4 KiB message plus its VMBus
/// descriptor, with room to spare, as Linux sets `max_pkt_size` (the 2022 fix after a
/// 4096-byte unballoon request was cut to 4080 bytes and desynchronised the ring).
pub const MAX_RECEIVE_PACKET: usize = 2 * MAX_MESSAGE_SIZE;

/// The allocation order tried first: 2 MiB, so one message carries up to ~1 GiB.
const LARGE_ORDER: u32 = 9;

/// Why a block the guest model gave cannot go into a balloon response.
#[derive(Debug, Clone, Copy)]
enum BadBlock {
    /// Some page of it is ballooned or in flight already.
    Given,
    /// It passes the 40-bit PFN space (or its size no page range can name).
    Beyond,
}

/// The balloon floor Linux keeps, in pages, for a guest managing `total_pages` pages
/// (`compute_balloon_floor` in Linux `drivers/hv/hv_balloon.c`): a continuous
/// piecewise-linear function, e.g. 232 MiB at 1 GiB, 488 MiB at 4 GiB, 1000 MiB at 16 GiB.
pub const fn compute_balloon_floor(total_pages: u64) -> u64 {
    const fn mib(n: u64) -> u64 {
        n * 256
    }
    if total_pages < mib(128) {
        mib(8) + total_pages / 2
    } else if total_pages < mib(512) {
        mib(40) + total_pages / 4
    } else if total_pages < mib(2048) {
        mib(104) + total_pages / 8
    } else if total_pages < mib(8192) {
        mib(232) + total_pages / 16
    } else {
        mib(488) + total_pages / 32
    }
}

/// The VSC's settings. [`Default`] is Linux's legacy driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VscConfig {
    /// Versions to offer, in order; the last is sent with `is_last_attempt`. Default
    /// 2.0, 1.0, 0.3, as Linux long did; [`VscConfig::newest_linux`] offers 2.0 alone.
    pub versions: Vec<Version>,
    /// How long the whole version negotiation may take (all attempts, as in Linux 6.1).
    /// Default 5 s.
    pub version_timeout: Duration,
    /// How long to wait for the capabilities response. Default 5 s.
    pub caps_timeout: Duration,
    /// Advertise and serve ballooning. Default true.
    pub balloon: bool,
    /// Advertise and serve hot-add. Default true.
    pub hot_add: bool,
    /// Pages never to balloon below; `None` (the default) is Linux's
    /// [`compute_balloon_floor`] of the model's current total. (Linux only proposed a
    /// fixed override, as a module parameter.)
    pub balloon_floor: Option<u64>,
    /// Status report period. Default 1 s; zero turns reports off.
    pub status_period: Duration,
    /// Periods to stay silent after connecting before the first status report. Default
    /// 45, Linux's `pressure_report_delay`.
    pub status_delay_periods: u32,
    /// Stop status reports when the host's capabilities response asks to. Default false:
    /// Linux ignores the bit.
    pub honour_suppress_pressure_reports: bool,
}

impl Default for VscConfig {
    fn default() -> Self {
        Self {
            versions: vec![Version::V2_0, Version::V1_0, Version::V0_3],
            version_timeout: Duration::from_secs(5),
            caps_timeout: Duration::from_secs(5),
            balloon: true,
            hot_add: true,
            balloon_floor: None,
            status_period: Duration::from_secs(1),
            status_delay_periods: 45,
            honour_suppress_pressure_reports: false,
        }
    }
}

impl VscConfig {
    /// The newest Linux: 2.0 only, with `is_last_attempt`.
    pub fn newest_linux() -> Self {
        Self {
            versions: vec![Version::V2_0],
            ..Self::default()
        }
    }
}

/// Why the connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// The configuration offers no version.
    #[error("no protocol version to offer")]
    NoVersionToOffer,
    /// The host rejected every version offered; `last` was the last attempt.
    #[error("the host rejected every protocol version, the last {last}")]
    VersionRejected {
        /// The last version offered.
        last: Version,
    },
    /// The host rejected the capabilities.
    #[error("capabilities not accepted by host")]
    CapabilitiesRejected,
    /// No answer in time.
    #[error("no {awaiting} in time")]
    Timeout {
        /// The message waited for.
        awaiting: MessageType,
    },
}

/// Where the VSC stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VscState {
    /// Not connected: before [`Vsc::connect`] or after [`Vsc::reset`].
    Closed,
    /// A version request is out.
    Negotiating {
        /// The version offered.
        offered: Version,
    },
    /// The capabilities report is out.
    Capabilities {
        /// The version agreed.
        version: Version,
    },
    /// Serving the host.
    Connected {
        /// The version agreed.
        version: Version,
    },
    /// Gave up; only [`Vsc::reset`] or [`Vsc::connect`] leave this state.
    Failed(FailReason),
}

/// Something the host sent that the VSC did not act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Bytes that are not a DM message (too short, unknown type, counts past the end).
    Malformed(DecodeError),
    /// A message the guest never handles: DM_ERROR, hot-remove (not offered), or a
    /// guest-to-host type.
    Unhandled(MessageType),
    /// A message that does not fit the state, e.g. a balloon request before the
    /// capabilities were accepted, or a version response after.
    Unexpected(MessageType),
    /// An INFO message with an unknown type, or MAX_PAGE_CNT whose data is not 8 bytes.
    UnhandledInfo {
        /// The info type.
        info_type: u32,
        /// Bytes of data.
        data_size: usize,
    },
    /// An unballoon range naming pages the guest does not hold; they were left alone.
    NotBallooned {
        /// First page of the range.
        start: u64,
        /// Pages of the range not ballooned.
        pages: u64,
    },
}

/// What the VSC tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VscEvent {
    /// Version and capabilities accepted.
    Connected {
        /// The version agreed.
        version: Version,
    },
    /// The connection failed.
    Failed {
        /// Why.
        reason: FailReason,
    },
    /// A balloon transaction is queued: `pages` left the guest for the host.
    Ballooned {
        /// Pages the host asked for.
        requested: u32,
        /// Pages given.
        pages: u64,
    },
    /// An unballoon transaction ended: `pages` came back to the guest.
    Unballooned {
        /// Pages given back to the OS.
        pages: u64,
        /// Pages named that the guest did not hold (ignored).
        not_ballooned: u64,
    },
    /// A hot-add request was answered.
    HotAdded {
        /// Pages the host asked to add.
        requested: u64,
        /// `page_count` of the response: pages newly backed.
        pages: u64,
        /// `result` of the response.
        result: u32,
    },
    /// The host's maximum for this guest, in pages.
    MaxPageCount(u64),
    /// Pages of balloon responses dropped unsent by a reset, returned to the OS.
    Withdrawn {
        /// Pages.
        pages: u64,
    },
    /// A host message was not acted on.
    ProtocolViolation(Violation),
    /// [`VscEvent::ProtocolViolation`]s counted rather than queued, because the owner
    /// left more than [`EVENT_CAP`](crate::EVENT_CAP) events undrained. Events
    /// with accounting (ballooned, unballooned, hot-added, withdrawn pages) are always
    /// queued.
    Coalesced {
        /// Violations not queued.
        violations: u64,
    },
}

/// A hot-add region (Linux's `hv_hotadd_state`): `[start, end)` reserved for hot-add,
/// blocks added from `start` up to `added_end`, `backed` the pages the host has covered.
#[derive(Debug, Clone)]
struct Region {
    start: u64,
    end: u64,
    added_end: u64,
    backed: PageSet,
}

/// The guest side of Dynamic Memory. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Vsc {
    config: VscConfig,
    state: VscState,
    /// Index into `config.versions` of the version on offer.
    attempt: usize,
    handshake_deadline: Option<Duration>,
    next_status: Option<Duration>,
    status_skip: u32,
    /// The last transaction id used; never reset, as Linux's is a module-wide counter.
    trans_id: u32,
    /// Balloon responses among these report the pages of `in_flight` they carry; the
    /// pages move to `ballooned` when the message is taken.
    tx: TxQueue,
    events: EventQueue<VscEvent>,
    /// Pages reported to the host: in messages already handed to the transport.
    ballooned: PageSet,
    /// Pages taken for the balloon whose message is still queued. The host cannot know
    /// them yet, so an unballoon naming them is refused: freeing them would make the
    /// queued message tell the host about pages the guest uses again.
    in_flight: PageSet,
    /// Pages of balloon responses dropped by a reset, to give back at the next chance to
    /// reach the model.
    withdrawn: PageSet,
    unballoon_freed: u64,
    unballoon_refused: u64,
    regions: Vec<Region>,
    hot_add_disabled: bool,
    pages_added: u64,
    pages_onlined: u64,
    max_page_count: Option<u64>,
}

impl Vsc {
    /// A VSC, closed.
    pub fn new(config: VscConfig) -> Self {
        Self {
            config,
            state: VscState::Closed,
            attempt: 0,
            handshake_deadline: None,
            next_status: None,
            status_skip: 0,
            trans_id: 0,
            tx: TxQueue::default(),
            events: EventQueue::default(),
            ballooned: PageSet::new(),
            in_flight: PageSet::new(),
            withdrawn: PageSet::new(),
            unballoon_freed: 0,
            unballoon_refused: 0,
            regions: Vec::new(),
            hot_add_disabled: false,
            pages_added: 0,
            pages_onlined: 0,
            max_page_count: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VscConfig {
        &self.config
    }

    /// Where the VSC stands.
    pub fn state(&self) -> VscState {
        self.state
    }

    /// The pages the guest has given to the host and not had back: those of balloon
    /// responses already taken by [`poll_transmit`](Self::poll_transmit).
    pub fn ballooned(&self) -> &PageSet {
        &self.ballooned
    }

    /// Pages taken from the OS for balloon responses still queued.
    pub fn in_flight(&self) -> &PageSet {
        &self.in_flight
    }

    /// Messages queued for sending.
    pub fn pending_transmit(&self) -> usize {
        self.tx.len()
    }

    /// The host's maximum, in pages, if an INFO message said it.
    pub fn max_page_count(&self) -> Option<u64> {
        self.max_page_count
    }

    /// Pages hot-added (backed by the host) since creation.
    pub fn pages_added(&self) -> u64 {
        self.pages_added
    }

    /// Pages of those brought online.
    pub fn pages_onlined(&self) -> u64 {
        self.pages_onlined
    }

    /// Opens the conversation: queues the first VERSION_REQUEST. Called in any state,
    /// it first drops the connection as [`reset`](Self::reset) does.
    pub fn connect(&mut self, now: Duration) {
        self.reset();
        let Some(&version) = self.config.versions.first() else {
            self.fail(FailReason::NoVersionToOffer);
            return;
        };
        self.attempt = 0;
        self.handshake_deadline = Some(now.saturating_add(self.config.version_timeout));
        self.offer(version);
    }

    /// Drops the connection (the channel closed or the VMBus reset): pending messages,
    /// the unballoon in progress and the timers go; [`connect`](Self::connect) starts
    /// over. What outlives a connection, as in Linux: the transaction counter, ballooned
    /// pages (they stay offline until a host returns them) and hot-added memory.
    ///
    /// Balloon responses still queued never reach the host, so their pages go back to the
    /// OS at the next `receive` or `tick` (the first chance to reach the model), with a
    /// [`VscEvent::Withdrawn`].
    pub fn reset(&mut self) {
        self.tx.clear();
        for g in self.in_flight.take(self.in_flight.len(), u64::MAX) {
            self.withdrawn.insert(g);
        }
        self.state = VscState::Closed;
        self.attempt = 0;
        self.handshake_deadline = None;
        self.next_status = None;
        self.status_skip = 0;
        self.unballoon_freed = 0;
        self.unballoon_refused = 0;
    }

    /// Takes back a message [`poll_transmit`](Self::poll_transmit) handed out that never
    /// reached the host (the transport ended before writing it): the pages of a balloon
    /// response become the guest's again at the next [`reset`](Self::reset) and tick.
    pub fn take_back(&mut self, bytes: &[u8]) {
        if let Ok(Message {
            body: Body::BalloonResponse { ranges, .. },
            ..
        }) = Message::parse(bytes)
        {
            for r in ranges {
                // A range past the gfn limit holds pages never ballooned: left alone, as
                // any range not wholly ballooned is.
                let Ok(g) = gfns(r) else { continue };
                if self.ballooned.contains_all(g) {
                    self.ballooned.remove(g);
                    self.in_flight.insert(g);
                }
            }
        }
    }

    /// The next DM message to send, oldest first: copied into the front of `buf`;
    /// returns its length. Nothing is allocated per message.
    pub fn poll_transmit(&mut self, buf: &mut [u8; MAX_MESSAGE_SIZE]) -> Option<usize> {
        let len = self.tx.pop(buf)?;
        // The queue holds only messages this side encoded, so they parse.
        if let Ok(Message {
            body: Body::BalloonResponse { ranges, .. },
            ..
        }) = Message::parse(&buf[..len])
        {
            // Ranges this side built from gfn ranges, so each converts back. A response
            // carries one range per block, mostly in runs of neighbours: moved a run at a
            // time, which leaves both sets as moving them one by one would.
            for g in joined(ranges.iter().filter_map(|r| gfns(r).ok())) {
                self.in_flight.remove(g);
                self.ballooned.insert(g);
            }
        }
        Some(len)
    }

    /// The next event, oldest first. The queue is bounded: an owner that does not drain
    /// it loses no accounting, only host-caused noise, counted in [`VscEvent::Coalesced`].
    pub fn poll_event(&mut self) -> Option<VscEvent> {
        self.events.pop_front()
    }

    /// When [`tick`](Self::tick) next has work: a handshake timeout or a status report.
    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.handshake_deadline, self.next_status) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lets time pass: fails a handshake that has waited too long, sends status reports.
    pub fn tick(&mut self, now: Duration, model: &mut dyn GuestMemoryModel) {
        self.flush_withdrawn(model);
        self.check_handshake_timeout(now);
        let Some(due) = self.next_status else { return };
        if now < due {
            return;
        }
        if self.status_skip > 0 {
            self.status_skip -= 1;
        } else {
            self.send_status(model);
        }
        // One report per period; a late tick does not cause a burst.
        let next = due.saturating_add(self.config.status_period);
        self.next_status = Some(if next <= now {
            now.saturating_add(self.config.status_period)
        } else {
            next
        });
    }

    /// Takes one message from the host (a VMBus in-band payload).
    pub fn receive(&mut self, now: Duration, payload: &[u8], model: &mut dyn GuestMemoryModel) {
        self.flush_withdrawn(model);
        self.check_handshake_timeout(now);
        if matches!(self.state, VscState::Closed | VscState::Failed(_)) {
            return;
        }
        let msg = match Message::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                // Debug, not warn: events carry it, and a flooding host must not flood the log.
                tracing::debug!("dm vsc: dropping host message: {e}");
                self.violation(Violation::Malformed(e));
                return;
            }
        };
        let connected = matches!(self.state, VscState::Connected { .. });
        match msg.body {
            Body::VersionResponse { is_accepted } => {
                self.on_version_response(now, is_accepted, model)
            }
            Body::CapabilitiesResponse {
                is_accepted,
                suppress_pressure_reports,
                ..
            } => self.on_caps_response(now, is_accepted, suppress_pressure_reports),
            Body::BalloonRequest { num_pages } if connected => self.balloon(num_pages, model),
            Body::UnballoonRequest { more_pages, ranges } if connected => {
                self.unballoon(more_pages, ranges, model)
            }
            Body::HotAddRequest { range, region } if connected => {
                self.hot_add(range, region, model)
            }
            Body::BalloonRequest { .. }
            | Body::UnballoonRequest { .. }
            | Body::HotAddRequest { .. } => {
                self.violation(Violation::Unexpected(msg.message_type()))
            }
            Body::Info { info_type, data } => match msg.body.max_page_count() {
                Some(n) => {
                    tracing::info!("dm vsc: max. dynamic memory size: {} MiB", n / 256);
                    self.max_page_count = Some(n);
                    self.events.push_back(VscEvent::MaxPageCount(n));
                }
                None => self.violation(Violation::UnhandledInfo {
                    info_type: info_type.0,
                    data_size: data.len(),
                }),
            },
            Body::Error
            | Body::HotRemoveRequest { .. }
            | Body::VersionRequest { .. }
            | Body::CapabilitiesReport { .. }
            | Body::StatusReport(_)
            | Body::BalloonResponse { .. }
            | Body::UnballoonResponse
            | Body::HotAddResponse { .. }
            | Body::HotRemoveResponse { .. } => {
                self.violation(Violation::Unhandled(msg.message_type()))
            }
        }
    }

    fn violation(&mut self, v: Violation) {
        self.events.push_back(VscEvent::ProtocolViolation(v));
    }

    fn fail(&mut self, reason: FailReason) {
        tracing::warn!("dm vsc: {reason}");
        self.state = VscState::Failed(reason);
        self.handshake_deadline = None;
        self.next_status = None;
        self.events.push_back(VscEvent::Failed { reason });
    }

    fn check_handshake_timeout(&mut self, now: Duration) {
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            let awaiting = match self.state {
                VscState::Capabilities { .. } => MessageType::CAPABILITIES_RESPONSE,
                _ => MessageType::VERSION_RESPONSE,
            };
            self.fail(FailReason::Timeout { awaiting });
        }
    }

    /// Queues one message under a fresh transaction id; false if it cannot be encoded.
    fn send(&mut self, body: Body<'_>) -> bool {
        self.trans_id = self.trans_id.wrapping_add(1);
        let msg = Message::new(self.trans_id, body);
        match self.tx.push(&msg) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("dm vsc: cannot encode {}: {e}", msg.message_type());
                false
            }
        }
    }

    fn offer(&mut self, version: Version) {
        let is_last_attempt = self.attempt + 1 >= self.config.versions.len();
        self.state = VscState::Negotiating { offered: version };
        self.send(Body::VersionRequest {
            version,
            is_last_attempt,
        });
    }

    fn on_version_response(
        &mut self,
        now: Duration,
        accepted: bool,
        model: &mut dyn GuestMemoryModel,
    ) {
        let VscState::Negotiating { offered } = self.state else {
            self.violation(Violation::Unexpected(MessageType::VERSION_RESPONSE));
            return;
        };
        if !accepted {
            self.attempt += 1;
            match self.config.versions.get(self.attempt) {
                Some(&next) => self.offer(next),
                None => self.fail(FailReason::VersionRejected { last: offered }),
            }
            return;
        }
        tracing::info!("dm vsc: using Dynamic Memory protocol version {offered}");
        let (hot_add, alignment) = match self.block_pages(model) {
            Some(b) if self.config.hot_add => (true, (b / 256).trailing_zeros() as u8),
            _ => (false, 0),
        };
        let caps = Caps::new()
            .with_balloon(self.config.balloon)
            .with_hot_add(hot_add)
            .with_hot_add_alignment(alignment);
        self.state = VscState::Capabilities { version: offered };
        self.handshake_deadline = Some(now.saturating_add(self.config.caps_timeout));
        // min_page_cnt and max_page_number as Windows and Linux send them; hosts ignore both.
        self.send(Body::CapabilitiesReport {
            caps,
            min_page_cnt: 0,
            max_page_number: u64::MAX,
        });
    }

    fn on_caps_response(&mut self, now: Duration, accepted: bool, suppress: bool) {
        let VscState::Capabilities { version } = self.state else {
            self.violation(Violation::Unexpected(MessageType::CAPABILITIES_RESPONSE));
            return;
        };
        if !accepted {
            self.fail(FailReason::CapabilitiesRejected);
            return;
        }
        self.state = VscState::Connected { version };
        self.handshake_deadline = None;
        let suppressed = suppress && self.config.honour_suppress_pressure_reports;
        if !self.config.status_period.is_zero() && !suppressed {
            self.status_skip = self.config.status_delay_periods;
            self.next_status = Some(now.saturating_add(self.config.status_period));
        }
        self.events.push_back(VscEvent::Connected { version });
    }

    /// The model's block size if the caps field can express it (2^n MiB, n < 16).
    fn block_pages(&self, model: &dyn GuestMemoryModel) -> Option<u64> {
        let b = model.block_pages();
        (b.is_power_of_two() && (256..=256 << 15).contains(&b)).then_some(b)
    }

    fn floor(&self, model: &dyn GuestMemoryModel) -> u64 {
        self.config
            .balloon_floor
            .unwrap_or_else(|| compute_balloon_floor(model.total_pages()))
    }

    fn send_status(&mut self, model: &dyn GuestMemoryModel) {
        // Ballooned pages count as committed so the host does not see them as free to
        // take again; pages added but not online, so it does not ask for them back; and
        // the floor, so it does not squeeze the guest below it.
        let committed = model
            .committed_pages()
            .saturating_add(self.ballooned.len())
            .saturating_add(self.in_flight.len())
            .saturating_add(self.pages_added.saturating_sub(self.pages_onlined))
            .saturating_add(self.floor(model));
        self.send(Body::StatusReport(StatusReport {
            num_avail: model.available_pages(),
            num_committed: committed,
            ..StatusReport::default()
        }));
    }

    fn flush_withdrawn(&mut self, model: &mut dyn GuestMemoryModel) {
        if self.withdrawn.is_empty() {
            return;
        }
        let pages = self.withdrawn.len();
        for g in self.withdrawn.take(pages, u64::MAX) {
            model.free_pages(g);
        }
        self.events.push_back(VscEvent::Withdrawn { pages });
    }

    /// Checks a block of `n` pages at `start` the model gave for the balloon: usable if it
    /// is a gfn range (below the gfn limit, which is the 40-bit PFN limit) that one page
    /// range can name, and not one already given (a model bug, which must not make the
    /// guest report a page twice).
    fn check_block(&self, start: u64, n: u64) -> Result<(GfnRange, PageRange), BadBlock> {
        let block = GfnRange::new(start, n);
        let range = block.ok().and_then(|b| {
            let cnt = u32::try_from(n).ok()?;
            Some((b, PageRange::try_new(start, cnt)?))
        });
        match range {
            Some((b, r)) if !self.ballooned.intersects(b) && !self.in_flight.intersects(b) => {
                Ok((b, r))
            }
            Some(_) => Err(BadBlock::Given),
            None => Err(BadBlock::Beyond),
        }
    }

    /// Deals with a block [`check_block`](Self::check_block) refused: pages beyond the
    /// PFN space go back to the model, pages already given stay where they are.
    fn refuse_block(
        &mut self,
        start: u64,
        n: u64,
        why: BadBlock,
        model: &mut dyn GuestMemoryModel,
    ) {
        match why {
            BadBlock::Given => {
                tracing::error!(
                    "dm vsc: the guest model gave pages already ballooned at {start:#x}"
                );
            }
            BadBlock::Beyond => {
                tracing::error!(
                    "dm vsc: the guest model gave pages beyond 40-bit PFNs at {start:#x}"
                );
                // Back to the model, all of it when it is a gfn range (a block too large
                // for one page range), else the part below the gfn limit: the rest is no
                // guest page.
                let back = GfnRange::new(start, n).unwrap_or_else(|_| {
                    let below = n.min(GFN_LIMIT.saturating_sub(start));
                    GfnRange::new(start.min(GFN_LIMIT), below).unwrap_or(GfnRange::EMPTY)
                });
                model.free_pages(back);
            }
        }
    }

    /// Takes the blocks of `2^order` pages whose first PFNs the model gave in `starts`,
    /// in order, for a balloon response: each goes in flight and into `ranges`, as one
    /// range per block. Runs of consecutive blocks are checked and put in flight a run at
    /// a time. At the first block that cannot be reported the message ends, as it did
    /// when blocks were taken one by one: the blocks the model gave after it were never
    /// reported and go back to it. Returns false if a block was refused.
    fn take_blocks(
        &mut self,
        order: u32,
        starts: &[u64],
        ranges: &mut Vec<PageRange>,
        model: &mut dyn GuestMemoryModel,
    ) -> bool {
        let n = 1u64 << order;
        let mut i = 0;
        while i < starts.len() {
            let mut j = i + 1;
            while j < starts.len() && starts[j - 1].checked_add(n) == Some(starts[j]) {
                j += 1;
            }
            // The run of blocks `starts[i..j]`, checked in one step when it is sound.
            let pages = (j - i) as u64 * n;
            let whole = GfnRange::new(starts[i], pages).ok().filter(|g| {
                n <= u64::from(PageRange::MAX_PAGE_CNT)
                    && !self.ballooned.intersects(*g)
                    && !self.in_flight.intersects(*g)
            });
            if let Some(g) = whole {
                self.in_flight.insert(g);
                // A gfn range, so every block of it is a page range: each start is below
                // the 40-bit limit and the count fits 24 bits (checked above).
                // Packed as the wire has it: the start in bits 39:0, the count above.
                ranges.extend(
                    starts[i..j]
                        .iter()
                        .map(|&s| PageRange::from_u64(s | n << 40)),
                );
                i = j;
                continue;
            }
            // Some block of the run is unusable: block by block, up to the first.
            for k in i..j {
                match self.check_block(starts[k], n) {
                    Ok((b, r)) => {
                        self.in_flight.insert(b);
                        ranges.push(r);
                    }
                    Err(why) => {
                        self.refuse_block(starts[k], n, why, model);
                        for &s in &starts[k + 1..] {
                            match self.check_block(s, n) {
                                Ok((b, _)) => model.free_pages(b),
                                Err(why) => self.refuse_block(s, n, why, model),
                            }
                        }
                        return false;
                    }
                }
            }
            i = j;
        }
        true
    }

    fn balloon(&mut self, requested: u32, model: &mut dyn GuestMemoryModel) {
        let avail = model.available_pages();
        let floor = self.floor(model);
        let mut remaining = u64::from(requested);
        if !self.config.balloon {
            remaining = 0;
        } else if avail < remaining || avail - remaining < floor {
            tracing::debug!(
                "dm vsc: balloon request will be partially fulfilled: {}",
                if avail < remaining {
                    "not enough memory"
                } else {
                    "balloon floor reached"
                }
            );
            remaining = avail.saturating_sub(floor);
        }
        let mut order = LARGE_ORDER;
        let mut given = 0;
        let mut starts = Vec::new();
        loop {
            let unit = 1u64 << order;
            let mut ranges = Vec::new();
            // The message's blocks in one batch from the model, as many as it has room
            // for and the request still wants. A model that gives fewer has failed an
            // allocation, which ends the message as a failed `alloc_block` did.
            let want = ((remaining / unit) as usize).min(MAX_RANGES_PER_MESSAGE);
            starts.clear();
            if want > 0 {
                model.alloc_blocks(order, want, &mut starts);
                // More than asked for is a model bug: the extra blocks go back unreported.
                if starts.len() > want {
                    let extra = starts.split_off(want);
                    for s in extra {
                        match self.check_block(s, unit) {
                            Ok((b, _)) => model.free_pages(b),
                            Err(why) => self.refuse_block(s, unit, why, model),
                        }
                    }
                }
                self.take_blocks(order, &starts, &mut ranges, model);
            }
            let got = ranges.len() as u64 * unit;
            // A failed 2 MiB attempt switches this request to 4 KiB pages for good, as
            // Linux does, and the empty message is not sent.
            if order != 0 && got == 0 {
                order = 0;
                continue;
            }
            let last = got == 0 || got == remaining;
            let sent = self.send(Body::BalloonResponse {
                more_pages: !last,
                ranges: &ranges,
            });
            if !sent {
                // Cannot happen with at most 510 ranges; if it did, the pages never
                // reached the host and must not stay lost.
                for g in ranges.iter().filter_map(|r| gfns(r).ok()) {
                    self.in_flight.remove(g);
                    model.free_pages(g);
                }
                if !last {
                    self.send(Body::BalloonResponse {
                        more_pages: false,
                        ranges: &[],
                    });
                }
                break;
            }
            remaining -= got;
            given += got;
            if last {
                break;
            }
        }
        self.events.push_back(VscEvent::Ballooned {
            requested,
            pages: given,
        });
    }

    fn unballoon(
        &mut self,
        more_pages: bool,
        ranges: &[PageRange],
        model: &mut dyn GuestMemoryModel,
    ) {
        let mut owned = Vec::new();
        let mut refused = 0;
        for r in ranges {
            let (start, count) = (r.start_page(), u64::from(r.page_cnt()));
            owned.clear();
            // No page past the gfn limit is ballooned, so that part is simply not found.
            guest::runs(&self.ballooned, gfns_below_limit(r), true, &mut owned);
            let mut freed = 0;
            for &g in &owned {
                self.ballooned.remove(g);
                model.free_pages(g);
                freed += g.count();
            }
            self.unballoon_freed += freed;
            if freed < count {
                refused += count - freed;
                self.unballoon_refused += count - freed;
                self.violation(Violation::NotBallooned {
                    start,
                    pages: count - freed,
                });
            }
        }
        if refused > 0 {
            // One line per message, not per range: a host naming 510 foreign ranges a
            // message must not turn each into a log line.
            tracing::debug!("dm vsc: host returned {refused} pages it was never given");
        }
        if more_pages {
            return;
        }
        self.send(Body::UnballoonResponse);
        let pages = core::mem::take(&mut self.unballoon_freed);
        let not_ballooned = core::mem::take(&mut self.unballoon_refused);
        self.events.push_back(VscEvent::Unballooned {
            pages,
            not_ballooned,
        });
    }

    fn hot_add(
        &mut self,
        range: PageRange,
        region: Option<PageRange>,
        model: &mut dyn GuestMemoryModel,
    ) {
        let requested = u64::from(range.page_cnt());
        let (pages, result) = self.do_hot_add(range, region, model);
        if pages == 0 {
            tracing::debug!("dm vsc: memory hot add failed");
        }
        // pages <= page_cnt, a 24-bit field.
        self.send(Body::HotAddResponse {
            page_count: pages as u32,
            result,
        });
        self.events.push_back(VscEvent::HotAdded {
            requested,
            pages,
            result,
        });
    }

    /// `(page_count, result)` as Linux's `hot_add_req` answers: pages newly backed, result
    /// 1 if any; 0 pages with result 1 when hot-add is off for good; 0 pages with result 0
    /// for "try later".
    fn do_hot_add(
        &mut self,
        range: PageRange,
        region: Option<PageRange>,
        model: &mut dyn GuestMemoryModel,
    ) -> (u64, u32) {
        const PERMANENT: (u64, u32) = (0, 1);
        const TRANSIENT: (u64, u32) = (0, 0);
        let Some(chunk) = self.block_pages(model) else {
            return PERMANENT;
        };
        if !self.config.hot_add || self.hot_add_disabled {
            return PERMANENT;
        }
        let (start, end) = (range.start_page(), range.end_page());
        if start == end {
            return TRANSIENT;
        }
        let found = self
            .regions
            .iter()
            .position(|r| r.start <= start && start < r.end);
        let (idx, created) = match (found, region) {
            (Some(i), None) => {
                // A range running past the region grows it by whole blocks (Linux's
                // `pfn_covered`), but never into the next region.
                let want = end
                    .next_multiple_of(chunk)
                    .min(self.next_region_start(start));
                let r = &mut self.regions[i];
                r.end = r.end.max(want);
                (i, false)
            }
            (Some(i), Some(_)) => (i, false),
            (None, None) => {
                // The guest derives the region: the blocks that hold the range.
                let rs = start - start % chunk;
                let re = end
                    .next_multiple_of(chunk)
                    .min(self.next_region_start(start));
                self.regions.push(Region {
                    start: rs,
                    end: re,
                    added_end: rs,
                    backed: PageSet::new(),
                });
                (self.regions.len() - 1, true)
            }
            (None, Some(rg)) => {
                // The part of the region below the gfn limit (a 40-bit start plus a
                // 24-bit count can reach past it): no block beyond is a guest's, and a
                // model would refuse it as Linux's add_memory refuses a range past the
                // physical address limit. The start is below the limit, so the same
                // ranges pass the checks below as before.
                let (rs, re) = (rg.start_page(), rg.end_page().min(GFN_LIMIT));
                // Linux's add_memory refuses an unaligned range with -EINVAL: try later.
                if rs == re || rs % chunk != 0 || !(rs <= start && start < re) {
                    return TRANSIENT;
                }
                // Blocks there exist already: Linux would get -EEXIST and stop for good.
                if self.regions.iter().any(|r| r.start < re && rs < r.end) {
                    self.hot_add_disabled = true;
                    return PERMANENT;
                }
                self.regions.push(Region {
                    start: rs,
                    end: re,
                    added_end: rs,
                    backed: PageSet::new(),
                });
                (self.regions.len() - 1, true)
            }
        };
        let (pages, onlined, disable) = cover(&mut self.regions[idx], start, end, chunk, model);
        if created && self.regions[idx].added_end == self.regions[idx].start {
            // Nothing was added: keep no bookkeeping a host could grow without bound.
            self.regions.swap_remove(idx);
        }
        self.hot_add_disabled |= disable;
        self.pages_added += pages;
        self.pages_onlined += onlined;
        match (pages, self.hot_add_disabled) {
            (0, true) => PERMANENT,
            (0, false) => TRANSIENT,
            (n, _) => (n, 1),
        }
    }

    /// The start of the first region above `pfn`, or the end of PFN space.
    fn next_region_start(&self, pfn: u64) -> u64 {
        self.regions
            .iter()
            .map(|r| r.start)
            .filter(|&s| s > pfn)
            .min()
            .unwrap_or(PageRange::MAX_START_PAGE + 1)
    }
}

/// Backs `[start, end)` inside region `r`: pages in blocks already added are onlined,
/// then blocks are added from where the region's added part ends, one at a time, each
/// onlining the part of the range it holds. Returns (pages newly backed, pages onlined,
/// hot-add must stop for good).
fn cover(
    r: &mut Region,
    start: u64,
    end: u64,
    chunk: u64,
    model: &mut dyn GuestMemoryModel,
) -> (u64, u64, bool) {
    let end = end.min(r.end);
    if start >= end {
        return (0, 0, false);
    }
    let (mut pages, mut onlined) = (0, 0);
    let in_added = end.min(r.added_end);
    if start < in_added {
        let mut fresh = Vec::new();
        // Regions end at the gfn limit at the latest (see `do_hot_add`).
        guest::runs(&r.backed, run(start, in_added), false, &mut fresh);
        for g in fresh {
            r.backed.insert(g);
            let n = g.count();
            pages += n;
            onlined += model.online_pages(g).min(n);
        }
    }
    while r.added_end < end && r.added_end + chunk <= r.end {
        let b = r.added_end;
        let (lo, hi) = (start.max(b), end.min(b + chunk));
        let blocks = run(b, b + chunk);
        let online = if lo < hi { run(lo, hi) } else { run(b, b) };
        let n = online.count();
        match model.hot_add(blocks, online) {
            Ok(on) => {
                r.added_end += chunk;
                r.backed.insert(online);
                pages += n;
                onlined += on.min(n);
            }
            Err(HotAddError::Exists) => return (pages, onlined, true),
            Err(HotAddError::Failed) => break,
        }
    }
    (pages, onlined, false)
}
