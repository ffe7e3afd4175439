//! The Dynamic Memory host side (the VSP), sans-IO.
//!
//! The owner feeds in what happens — the channel opened or closed, a message arrived, time
//! passed, the host wants pages — each with the current time as a [`Duration`] since any
//! fixed origin, and takes out DM messages to send ([`Vsp::poll_transmit`], one message per
//! VMBus in-band packet) and events ([`Vsp::poll_event`]). Nothing here reads a clock,
//! sleeps or does I/O; [`Vsp::next_deadline`] says when [`Vsp::tick`] is next due.
//!
//! # Decisions
//!
//! Where Hyper-V and QEMU's hv-balloon (`hw/hyperv/hv-balloon.c`) leave a choice:
//!
//! - **Versions.** 2.0, 1.0 and 0.3, each switchable ([`AcceptedVersions`]); every other
//!   value is rejected. QEMU accepts any number in `[0x3, 0x20000]`, so 0.4 or 1.5 would pass
//!   there; those versions do not exist, and a guest that offers one has a different idea of
//!   the layouts. `0x30000` (a macOS guest's "3.0") is rejected as Hyper-V does, and the guest
//!   falls back. `is_last_attempt` changes nothing: the host keeps answering requests.
//! - **Capabilities** are always accepted: refusing makes Linux fail its probe, while a guest
//!   that cannot balloon or hot-add is simply never asked to. `hot_remove` and
//!   `suppress_pressure_reports` in the response exist only in the 2.0 header, so older guests
//!   get them as zero.
//! - **INFO (maximum page count)** goes to a 1.0 or 2.0 guest when the post-capabilities wait
//!   ends, just before the first request could, because Hyper-V sends it then and because the
//!   wait exists to keep Windows from seeing DM traffic right after boot.
//! - **One host operation at a time.** A request while another runs is refused with
//!   [`VspError::Busy`] rather than queued: the owner's target moves on while it waits, and a
//!   queued request would carry a stale one.
//! - **Balloon.** A target above [`VspConfig::max_balloon_pages`] becomes successive
//!   requests, the next sent when the guest fully answered the previous one. A partial answer
//!   ends the operation ([`VspEvent::BalloonComplete`] with what came back): the guest is at
//!   its floor, and because Linux computes the floor from a total that ballooning lowers,
//!   re-asking at once (QEMU does) squeezes it far below where it said stop. Re-asking is the
//!   owner's policy. A final response with zero ranges is "at the floor"; a zero-range
//!   response with `more_pages = 1` is taken at its word and the host keeps waiting for the
//!   final message or the timeout (QEMU ends the transaction there).
//! - **Returned pages** are checked against the ballooned set first (a page already given is
//!   dropped silently, within a message or across messages) and then against the guest's
//!   p2m ([`GuestOwnership`]); a run the guest does not own is rejected and reported as a
//!   [`Violation::ForeignPages`] (the pages found foreign, apart from those the work budget
//!   left unchecked, and the first [`MAX_REPORTED_RUNS`] runs), and never counted. Pages beyond the request are accepted: the guest has already taken
//!   them offline, and refusing them would waste them, not protect anything.
//! - **Work per ring byte.** Everything a guest message makes the host do — set lookups,
//!   ownership checks, insertions, the runs kept for reports — is paid from a work credit
//!   that each message fills in proportion to its size ([`Vsp::work_budget`]: 18 units per
//!   range and 64 per message), holding at most one full message's worth
//!   ([`MAX_WORK_CREDIT`]). A constant per message would let a guest multiply the host's
//!   work per ring byte by sending many one-range messages; with the credit, 85 one-range
//!   messages (the ring bytes of one 4 KiB message) cost no more than about one full
//!   message's budget. Each range is one ordered walk of the ballooned set; an ownership
//!   check of `n` pages costs `1 + (n - 1) / 512` units ([`GuestOwnership::owns`]); what
//!   the credit leaves unwalked or unchecked is rejected, never counted. An honest
//!   message (ranges new, wholly the guest's, as Linux sends them, at most 512 pages)
//!   needs at most 10 units per range and is never cut short; a guest that ballooned every
//!   other page and then names `[0, 2^24)` 510 times gets no more work than the credit.
//!   Log lines a guest can cause are rate-limited (8 per 10 s, the rest counted).
//! - **Hot-removed pages** (2.0) join the ballooned set, since Hyper-V gives hot-removed
//!   memory back with unballoon requests.
//! - **Unballoon** takes pages off the ballooned set when it is requested and returns them,
//!   so the owner can back them before the messages reach the guest; they are sent as
//!   ranges of at most 2^24 − 1 pages, 510 per 4 KiB message, `more_pages` on all but the
//!   last, one transaction id. A timeout does not put them back: the guest may be using them.
//! - **Hot-add** start and size are aligned to the guest's advertised alignment: an
//!   unaligned start is refused, the size is rounded down, and a size below one alignment
//!   unit sends nothing. A large request is split into chunks of
//!   [`VspConfig::max_hot_add_pages`]. A 1.0 or 2.0 guest gets the 24-byte form with
//!   region = range; a 0.3 guest gets the 16-byte form, the only one the seed header
//!   defines — since the range is already aligned the guest derives the same region from it.
//!   Answers: pages ≥ requested (clamped, with a [`Violation::HotAddOverReport`] when above)
//!   → next chunk; `0 < pages < requested` → "barrier reached", hot-add off until the
//!   channel resets (the header says further hot-adds will fail); `{0, 1}` → permanent, off;
//!   `{0, 0}` → transient: by default Hyper-V's "retry later" — hot-add is refused with
//!   [`VspError::NotReady`] until [`HotAddTransient::RetryAfter`] has passed, and the owner
//!   retries — or, with [`HotAddTransient::Disable`], QEMU's "off until reset". Linux never
//!   sends a failure with pages; one is counted, reported and treated as a barrier.
//! - **Timeouts.** Every awaited reply has one; QEMU has none and hangs when a guest stops
//!   answering (hibernation-capable Linux ignores balloon requests outright). For responses
//!   in several messages the deadline is re-armed by every message that brings new pages,
//!   so a long but progressing answer is not cut off, while one that only repeats itself
//!   is. A hot-add that times out turns hot-add off until reset: the guest may still be
//!   adding, and the protocol forbids a second request before the first is answered. A
//!   reply handed in by the same call that passes its deadline is still taken. A reply
//!   after the timeout is the guest's late completion, not a violation: balloon and
//!   hot-remove pages are still taken for one more timeout (no other operation starts
//!   meanwhile, so their final message cannot end the next one), a late hot-remove's
//!   final message giving a [`VspEvent::LateReply`]; an unballoon or hot-add answer is
//!   reported as [`VspEvent::LateReply`] (a hot-add's until reset), and a late hot-add
//!   answer sets the hot-add gate as a timely one would. Timed-out unballoons are kept in
//!   order, at most [`MAX_LATE_UNBALLOONS`]: the guest answers in order, so an unballoon
//!   response while one is kept is the oldest's, even while a retry is pending, and the
//!   retry's own answer then completes it.
//! - **Bad guest messages** change nothing and get no reply: malformed ones, unknown types,
//!   `DM_ERROR` and messages that do not fit the state each give a
//!   [`VspEvent::ProtocolViolation`]. Status reports are taken in every open state, even
//!   before the capabilities, as QEMU does.
//! - **Reset.** [`Vsp::channel_closed`] drops everything that belongs to the connection —
//!   version, capabilities, the running operation, unsent messages, the hot-add gate — and
//!   restarts the transaction counter at 0. The ballooned set is kept: those pages stay out
//!   of the guest until it reboots, and only the owner knows when that happens
//!   ([`Vsp::take_ballooned`]). A second [`Vsp::channel_opened`] without a close is refused,
//!   as QEMU refuses a reopen without a reset.
//! - **Transaction ids.** Replies to the guest's version and capabilities messages echo its
//!   id; host operations use a counter that every message of one transaction shares and
//!   that moves on when the transaction ends. Nobody checks ids on receipt (Linux takes a new
//!   one for every message, even retries), so neither does this side.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use ballast_abi::dm::{
    Body, Caps, DM_REMOVE_QOS_MASK, DecodeError, InfoType, MAX_BALLOON_REQUEST_PAGES,
    MAX_MESSAGE_SIZE, MAX_RANGES_PER_MESSAGE, Message, MessageType, PageRange, StatusReport,
    Version,
};

use ballast_abi::types::{GFN_LIMIT, GfnRange};

use crate::PageSet;
use crate::queue::{EventQueue, TxQueue};

/// The channel's class id, the only channel a VSP offers.
pub use ballast_abi::vmbus::HV_DM_GUID as CLASS_ID;

/// Which guest pages are guest RAM the guest holds right now: the host's p2m.
///
/// Asked about every run of pages a guest claims to give up, before the run is counted.
pub trait GuestOwnership {
    /// True if every page of `[start_pfn, start_pfn + count)` belongs to the guest.
    ///
    /// Must cost O(log n) in the size of the p2m whatever `count` is: a range query
    /// (one lookup of the run holding `start_pfn`, or of the first hole at or after it),
    /// never a walk page by page. The host charges a guest message `1 + (count - 1) / 512`
    /// units of its work budget per call (one for any range of up to 512 pages, Linux's
    /// largest balloon unit), so even an implementation linear in `count / 512` stays
    /// within the budget, but one linear in `count` would let a guest name 2^24 pages per
    /// unit of budget.
    fn owns(&self, start_pfn: u64, count: u64) -> bool;
}

impl<F: Fn(u64, u64) -> bool> GuestOwnership for F {
    fn owns(&self, start_pfn: u64, count: u64) -> bool {
        self(start_pfn, count)
    }
}

/// One contiguous span of guest RAM.
impl GuestOwnership for Range<u64> {
    fn owns(&self, start_pfn: u64, count: u64) -> bool {
        start_pfn >= self.start
            && start_pfn
                .checked_add(count)
                .is_some_and(|end| end <= self.end)
    }
}

/// What the owner does to make pages guest RAM (map them in the guest's p2m, back them
/// with memory) before a message that names them can reach the guest.
///
/// [`Vsp::unballoon`] and [`Vsp::hot_add`] take one and call it before they queue the
/// request: a guest may touch a page the moment it reads its number, so a page it is
/// given must already be there. Passing the backer into the call, rather than trusting
/// the owner to back pages between the call and [`Vsp::poll_transmit`], makes that order
/// a property of the types: there is no way to queue an unballoon or a hot-add without
/// the pages having been backed first.
pub trait Backer {
    /// Backs every page of `ranges`, all or nothing. On an error nothing may have changed
    /// for the guest: the VSP then sends nothing and keeps the pages as they were.
    fn back(&mut self, ranges: &[GfnRange]) -> Result<(), BackingRefused>;
}

/// The owner could not back the pages (no free memory, a limit, the backing failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host could not back the pages")]
pub struct BackingRefused;

impl<F: FnMut(&[GfnRange]) -> Result<(), BackingRefused>> Backer for F {
    fn back(&mut self, ranges: &[GfnRange]) -> Result<(), BackingRefused> {
        self(ranges)
    }
}

/// A backer that does nothing, for the protocol alone: tests, benchmarks of the state
/// machines, and embedders whose guest RAM is always backed (prefaulted, or a host that
/// never takes pages away).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolOnly;

impl Backer for ProtocolOnly {
    fn back(&mut self, _ranges: &[GfnRange]) -> Result<(), BackingRefused> {
        Ok(())
    }
}

/// The protocol versions the host accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedVersions {
    /// 2.0 (`0x00020000`, Windows 10): what every current guest offers first.
    pub v2_0: bool,
    /// 1.0 (`0x00010000`, Windows 8).
    pub v1_0: bool,
    /// 0.3 (`0x00000003`, Windows 7).
    pub v0_3: bool,
}

impl AcceptedVersions {
    /// All three.
    pub const ALL: Self = Self {
        v2_0: true,
        v1_0: true,
        v0_3: true,
    };

    /// True if `v` is one of the three and switched on.
    pub fn accepts(&self, v: Version) -> bool {
        match v {
            Version::V2_0 => self.v2_0,
            Version::V1_0 => self.v1_0,
            Version::V0_3 => self.v0_3,
            _ => false,
        }
    }
}

impl Default for AcceptedVersions {
    fn default() -> Self {
        Self::ALL
    }
}

/// What a transient hot-add failure (`page_count 0, result 0`) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotAddTransient {
    /// Hyper-V: hot-add may be asked again once this much time has passed.
    RetryAfter(Duration),
    /// QEMU: hot-add is off until the channel resets.
    Disable,
}

/// Host settings. Every default is what Hyper-V or QEMU does, or says why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VspConfig {
    /// Quiet time after the capabilities exchange before the first request.
    /// Default 50 s: Windows Server 2019 crashes on DM requests right after boot, and both
    /// Hyper-V and QEMU wait this long.
    pub post_caps_wait: Duration,
    /// How long the host waits for a balloon, unballoon or hot-remove reply; re-armed by
    /// every message that brings new pages. Default 30 s: Windows answers a 2 GiB balloon
    /// in 2–3 s, so this is ten times the slowest answer seen, yet short enough that a
    /// guest that will never answer does not hold the host's memory policy for long.
    pub reply_timeout: Duration,
    /// How long the host waits for a hot-add reply. Default 120 s: Linux waits up to 5 s
    /// per 128 MiB block for the block to be onlined, so a 2 GiB chunk can take 80 s on a
    /// guest with no onlining agent, and still succeed.
    pub hot_add_reply_timeout: Duration,
    /// Most pages one balloon request asks for; larger targets become successive requests.
    /// Default 585 728 ([`MAX_BALLOON_REQUEST_PAGES`]): Windows stops honouring larger
    /// requests. Zero is taken as one.
    pub max_balloon_pages: u32,
    /// Most pages one hot-add request carries, rounded down to the guest's alignment (but
    /// at least one alignment unit). Default 524 288 (2 GiB), QEMU's chunk.
    pub max_hot_add_pages: u32,
    /// Accepted protocol versions. Default: 2.0, 1.0 and 0.3.
    pub versions: AcceptedVersions,
    /// Whether status reports are wanted. The capabilities response asks a 2.0 guest to
    /// suppress them when not (Linux sends them anyway; they are then ignored). Default
    /// true: the balancer's pressure comes from `num_committed`.
    pub status_reports: bool,
    /// Whether the host may hot-remove (2.0 only; advertised in the capabilities
    /// response). Default false: no open guest implements it and the meaning of its result
    /// is unverified, so the host does not offer what it would not use by default.
    pub hot_remove: bool,
    /// The maximum memory, in 4 KiB pages, sent to 1.0 and 2.0 guests in an INFO message.
    /// Default none (QEMU sends none; Linux only logs it).
    pub max_page_count: Option<u64>,
    /// What a transient hot-add failure does. Default: Hyper-V's retry, after 10 s.
    pub hot_add_transient: HotAddTransient,
}

impl Default for VspConfig {
    fn default() -> Self {
        Self {
            post_caps_wait: Duration::from_secs(50),
            reply_timeout: Duration::from_secs(30),
            hot_add_reply_timeout: Duration::from_secs(120),
            max_balloon_pages: MAX_BALLOON_REQUEST_PAGES,
            max_hot_add_pages: 524_288,
            versions: AcceptedVersions::ALL,
            status_reports: true,
            hot_remove: false,
            max_page_count: None,
            hot_add_transient: HotAddTransient::RetryAfter(Duration::from_secs(10)),
        }
    }
}

/// Where the host is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VspState {
    /// No channel.
    Closed,
    /// Waiting for an acceptable VERSION_REQUEST.
    Version,
    /// Version agreed; waiting for the CAPABILITIES_REPORT.
    Caps,
    /// Capabilities agreed; quiet until the post-capabilities wait ends.
    PostCapsWait,
    /// Ready for a host request.
    Idle,
    /// Waiting for balloon responses.
    Balloon,
    /// Waiting for the unballoon response.
    Unballoon,
    /// Waiting for the hot-add response.
    HotAdd,
    /// Waiting for hot-remove responses.
    HotRemove,
}

impl VspState {
    /// True while a reply to a host request is awaited.
    pub const fn awaits_reply(self) -> bool {
        matches!(
            self,
            Self::Balloon | Self::Unballoon | Self::HotAdd | Self::HotRemove
        )
    }
}

/// A host operation and how far it got, as reported when it times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// Balloon: pages asked for in all, pages the guest gave.
    Balloon {
        /// Pages the owner asked for.
        requested: u64,
        /// Pages accepted so far.
        returned: u64,
    },
    /// Unballoon: pages given back (already off the ballooned set).
    Unballoon {
        /// Pages sent.
        pages: u64,
    },
    /// Hot-add: pages asked for in all, pages the guest reported added.
    HotAdd {
        /// Pages the owner asked for (after alignment).
        requested: u64,
        /// Pages added so far.
        added: u64,
    },
    /// Hot-remove: pages asked for, pages the guest gave.
    HotRemove {
        /// Pages asked for.
        requested: u32,
        /// Pages accepted so far.
        removed: u64,
    },
}

/// How a hot-add operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotAddResult {
    /// Every page was added.
    Success,
    /// The guest added fewer pages than asked: it has reached its limit. Hot-add is off
    /// until the channel resets.
    Barrier,
    /// `page_count 0, result 1`: the guest will never hot-add. Off until reset.
    Permanent,
    /// `page_count 0, result 0`: the guest could not add now. `retry_at` is when hot-add
    /// may be asked again, or `None` when [`HotAddTransient::Disable`] turned it off.
    Transient {
        /// When [`Vsp::hot_add`] is accepted again.
        retry_at: Option<Duration>,
    },
}

/// A way the guest broke the protocol. Each was dropped with no reply and no state change,
/// except [`Violation::UnansweredUnballoon`], which the host reports when it stops waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The bytes are not a DM message (too short, a lying count, an unknown type...).
    Malformed(DecodeError),
    /// A message the host does not take in its state (or ever, like `DM_ERROR`).
    Unexpected {
        /// The message's type.
        ty: MessageType,
        /// The host's state when it came.
        state: VspState,
    },
    /// Pages of one message the guest gave up that are not its own, or that were left
    /// unchecked when the message's work budget ran out: rejected, never counted.
    ForeignPages {
        /// Pages found not to be the guest's: the ownership check failed, or they lie past
        /// the 40-bit page number space. Each counted once per range naming it.
        pages: u64,
        /// Pages the message named that the work budget left unexamined: neither walked
        /// against the ballooned set nor checked. They may include pages already ballooned
        /// and pages another range of the message also named, so this is what was not
        /// looked at, not what was foreign.
        unchecked: u64,
        /// The first of the runs rejected (foreign or unchecked), as `(start_pfn, count)`,
        /// in the order met; at most [`MAX_REPORTED_RUNS`], however many runs the message
        /// named.
        ///
        /// Pairs rather than [`GfnRange`]s, unlike every other run this crate hands out:
        /// a page range's 40-bit start and 24-bit count can name pages up to
        /// `2^40 + 2^24 - 2`, past [`GFN_LIMIT`], and those are reported here too, as
        /// what the guest named. No such pair is ever a gfn range of the guest's.
        runs: Vec<(u64, u64)>,
    },
    /// An unballoon timed out and stayed unanswered while [`MAX_LATE_UNBALLOONS`] later
    /// ones timed out too: its answer is no longer waited for (the next answer is taken
    /// as the next one's).
    UnansweredUnballoon {
        /// Pages it gave back.
        pages: u64,
    },
    /// A hot-add response claimed more pages than were asked for; clamped.
    HotAddOverReport {
        /// Pages asked for.
        requested: u32,
        /// Pages claimed.
        reported: u32,
    },
    /// A hot-add response said "failed" and yet claimed pages; they are counted and
    /// hot-add is treated as having reached a barrier.
    HotAddFailedWithPages {
        /// Pages claimed.
        page_count: u32,
    },
}

/// What happened, for the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VspEvent {
    /// The state changed (reported once per call that changed it).
    StateChanged(VspState),
    /// A version was agreed.
    Negotiated(Version),
    /// A version was refused; after a refused last attempt the guest gives up.
    VersionRejected {
        /// What the guest offered.
        version: Version,
        /// The guest said it would try no other.
        last_attempt: bool,
    },
    /// The guest's capabilities, accepted.
    CapabilitiesReported(Caps),
    /// A status report (only when [`VspConfig::status_reports`]), in 4 KiB pages.
    StatusReport {
        /// `num_committed`: what the guest needs, the input to pressure.
        committed: u64,
        /// `num_avail`.
        available: u64,
    },
    /// Pages the guest ballooned, newly accepted: each page is reported once, and only if
    /// the guest owned it.
    PagesReturned(Vec<GfnRange>),
    /// A balloon operation ended.
    BalloonComplete {
        /// Pages the owner asked for.
        requested: u64,
        /// Pages accepted.
        returned: u64,
    },
    /// The guest acknowledged an unballoon.
    UnballoonComplete {
        /// Pages given back.
        pages: u64,
    },
    /// A hot-add operation ended.
    HotAddComplete {
        /// Pages asked for (after alignment).
        requested: u64,
        /// Pages the guest reported added (clamped to what was asked).
        added: u64,
        /// How it ended.
        result: HotAddResult,
    },
    /// Pages the guest hot-removed, newly accepted.
    HotRemoved(Vec<GfnRange>),
    /// A hot-remove operation ended.
    HotRemoveComplete {
        /// Pages asked for.
        requested: u32,
        /// Pages accepted.
        removed: u64,
        /// The guest's `result` in its final message (0 appears to mean success).
        result: u32,
    },
    /// A reply did not come in time; the operation is over.
    TransactionTimedOut {
        /// Which operation, and how far it got.
        what: Transaction,
    },
    /// The reply to an unballoon or a hot-add, or the final message of a hot-remove, came
    /// after the operation had timed out: the guest did the work, late (a 4 GiB hot-add
    /// that nobody onlines takes Linux minutes). A late hot-remove's pages come as
    /// [`VspEvent::HotRemoved`] first; a late balloon answer is
    /// [`VspEvent::PagesReturned`] only.
    LateReply {
        /// The operation with what the reply brought: for a hot-add, `added` counts the
        /// late chunk; for a hot-remove, `removed` counts every page accepted.
        what: Transaction,
    },
    /// The guest broke the protocol; the message was dropped.
    ProtocolViolation {
        /// How.
        what: Violation,
    },
    /// The channel closed: per-connection state is gone.
    Reset,
    /// Events the guest caused, counted rather than queued because the owner left more
    /// than [`EVENT_CAP`](crate::EVENT_CAP) events undrained. Only events without
    /// accounting are counted this way (the latest status report stays in
    /// [`Vsp::last_status`]); pages returned, completions and resets are always queued.
    Coalesced {
        /// [`VspEvent::ProtocolViolation`]s not queued.
        violations: u64,
        /// [`VspEvent::StatusReport`]s not queued.
        status_reports: u64,
    },
}

/// Why a host call was refused. A refused call changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VspError {
    /// The channel is already open.
    #[error("the channel is already open")]
    AlreadyOpen,
    /// The channel is closed or the handshake has not finished.
    #[error("no negotiated connection")]
    NotConnected,
    /// Too early: the post-capabilities wait, or the hot-add retry delay, runs until then.
    #[error("not before {until:?}")]
    NotReady {
        /// When the call is accepted.
        until: Duration,
    },
    /// Another operation is running.
    #[error("another operation is running")]
    Busy,
    /// The guest did not advertise it, its version lacks it, or the host is configured
    /// not to.
    #[error("not supported: {0}")]
    NotCapable(&'static str),
    /// Hot-add was turned off until the channel resets.
    #[error("hot-add is off until the channel resets")]
    HotAddDisabled,
    /// Nothing to do: zero pages, nothing ballooned, or less than one alignment unit.
    #[error("nothing to do")]
    NothingToDo,
    /// The hot-add start is not a multiple of the guest's alignment.
    #[error("hot-add start not aligned to {alignment_pages} pages")]
    Unaligned {
        /// The guest's alignment, in pages.
        alignment_pages: u64,
    },
    /// The hot-add range runs past the 40-bit PFN space.
    #[error("hot-add range beyond the 40-bit page number space")]
    OutOfRange,
    /// The hot-add range covers pages the guest ballooned.
    #[error("hot-add range overlaps ballooned pages")]
    OverlapsBallooned,
    /// The owner's [`Backer`] could not back the pages; nothing was sent.
    #[error("the host could not back the pages")]
    BackingRefused,
    /// Hot-remove QoS flags outside `DM_REMOVE_QOS_MASK`.
    #[error("invalid hot-remove QoS flags {0:#x}")]
    InvalidQos(u32),
}

/// Per-connection progress through the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Version,
    Caps {
        version: Version,
    },
    Wait {
        version: Version,
        caps: Caps,
        until: Duration,
    },
    Ready {
        version: Version,
        caps: Caps,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotAddGate {
    Open,
    RetryAt(Duration),
    Disabled,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Balloon {
        target: u64,
        returned: u64,
        /// The current transaction's request; whether it was answered in full decides
        /// whether the next one goes out.
        asked: u32,
        got: u64,
    },
    Unballoon {
        pages: u64,
    },
    HotAdd {
        requested: u64,
        added: u64,
        /// The current transaction's range; the next chunk starts where it ends.
        start: u64,
        asked: u32,
    },
    HotRemove {
        requested: u32,
        removed: u64,
    },
}

impl Op {
    const fn state(&self) -> VspState {
        match self {
            Op::Balloon { .. } => VspState::Balloon,
            Op::Unballoon { .. } => VspState::Unballoon,
            Op::HotAdd { .. } => VspState::HotAdd,
            Op::HotRemove { .. } => VspState::HotRemove,
        }
    }

    const fn transaction(&self) -> Transaction {
        match *self {
            Op::Balloon {
                target, returned, ..
            } => Transaction::Balloon {
                requested: target,
                returned,
            },
            Op::Unballoon { pages } => Transaction::Unballoon { pages },
            Op::HotAdd {
                requested, added, ..
            } => Transaction::HotAdd { requested, added },
            Op::HotRemove { requested, removed } => Transaction::HotRemove { requested, removed },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    op: Op,
    deadline: Duration,
    /// The deadline is never pushed past this.
    hard_deadline: Duration,
}

impl Pending {
    /// An operation that may be answered in many messages (balloon, hot-remove): one
    /// reply timeout to start, at most [`MAX_TIMEOUTS_PER_OPERATION`] in all.
    fn long(op: Op, now: Duration, timeout: Duration) -> Self {
        Pending {
            op,
            deadline: now.saturating_add(timeout),
            hard_deadline: now.saturating_add(timeout.saturating_mul(MAX_TIMEOUTS_PER_OPERATION)),
        }
    }

    /// The deadline after a message: progress while pages are still owed earns one more
    /// reply timeout, up to the hard limit.
    fn rearmed(
        deadline: Duration,
        hard: Duration,
        now: Duration,
        timeout: Duration,
        progress: bool,
    ) -> Duration {
        if progress {
            now.saturating_add(timeout).min(hard)
        } else {
            deadline
        }
    }
}

/// The Dynamic Memory host endpoint of one guest. `Clone` gives a snapshot: both copies
/// go on independently (for tests, benchmarks and checkpoints).
#[derive(Debug, Clone)]
pub struct Vsp {
    config: VspConfig,
    phase: Phase,
    pending: Option<Pending>,
    trans_id: u32,
    hot_add_gate: HotAddGate,
    ballooned: PageSet,
    last_status: Option<StatusReport>,
    reported_state: VspState,
    tx: TxQueue,
    events: EventQueue<VspEvent>,
    /// After a balloon timed out: until when its late responses are still taken in (the
    /// guest took those pages offline; dropping them would strand them on both sides).
    late_balloon_until: Option<Duration>,
    /// Unballoons that timed out and are still unanswered, oldest first: their pages. The
    /// guest answers in order (Linux handles one request at a time from its channel
    /// callback), so an unballoon response while this is not empty is the oldest's, even
    /// while a newer unballoon is pending. At most [`MAX_LATE_UNBALLOONS`].
    late_unballoon: VecDeque<u64>,
    /// After a hot-remove timed out: what it had got, and until when its late responses
    /// are still taken in (the guest removed those pages; dropping them would strand them).
    late_hot_remove: Option<LateHotRemove>,
    /// After a hot-add timed out: `(requested, added, asked)`, until its response comes
    /// or the channel resets (no other hot-add can start before either).
    late_hot_add: Option<(u64, u64, u32)>,
    /// Limits the log lines a guest can cause.
    guest_log: LogLimit,
    /// Work units the guest's messages may still spend: each message adds
    /// [`Vsp::work_budget`] of its ranges, up to [`MAX_WORK_CREDIT`], and what it does is
    /// paid from here. Kept across channel resets: it belongs to the guest.
    work_credit: u64,
    /// Work units the guest's messages have cost, for tests.
    #[cfg(test)]
    work_spent: u64,
    /// Whether runs of one-page ranges are taken at once; tests turn it off to compare.
    #[cfg(test)]
    page_runs: bool,
}

/// A hot-remove that timed out, still taking its late responses.
#[derive(Debug, Clone, Copy)]
struct LateHotRemove {
    requested: u32,
    removed: u64,
    until: Duration,
}

/// Timed-out unballoons whose answers are still waited for; beyond this, the oldest is
/// given up ([`Violation::UnansweredUnballoon`]).
pub const MAX_LATE_UNBALLOONS: usize = 8;

/// Messages the host keeps queued for a guest that does not read them; beyond this,
/// replies are dropped rather than grown without bound.
const MAX_QUEUED: usize = 256;

/// The longest a balloon or hot-remove may run, in reply timeouts, however steadily the
/// guest trickles pages: re-arming per page would let it hold the host for ever.
const MAX_TIMEOUTS_PER_OPERATION: u32 = 8;

impl Vsp {
    /// A host endpoint with no channel.
    pub fn new(config: VspConfig) -> Self {
        Self {
            config,
            phase: Phase::Closed,
            pending: None,
            trans_id: 0,
            hot_add_gate: HotAddGate::Open,
            ballooned: PageSet::new(),
            last_status: None,
            reported_state: VspState::Closed,
            tx: TxQueue::default(),
            events: EventQueue::default(),
            late_balloon_until: None,
            late_unballoon: VecDeque::new(),
            late_hot_remove: None,
            late_hot_add: None,
            guest_log: LogLimit::default(),
            work_credit: MAX_WORK_CREDIT,
            #[cfg(test)]
            work_spent: 0,
            #[cfg(test)]
            page_runs: true,
        }
    }

    /// A host endpoint taking over a guest that already gave the host `ballooned` (a host
    /// that restarted while the guest ran on): those pages are the host's, to give back
    /// with an unballoon as if this endpoint had taken them.
    pub fn with_ballooned(config: VspConfig, ballooned: PageSet) -> Self {
        let mut v = Self::new(config);
        v.ballooned = ballooned;
        v
    }

    /// The settings.
    pub fn config(&self) -> &VspConfig {
        &self.config
    }

    /// The guest opened the channel: wait for its version request. Refused while the
    /// channel is open, so a reopen always goes through [`channel_closed`](Self::channel_closed)
    /// and its reset.
    pub fn channel_opened(&mut self, _now: Duration) -> Result<(), VspError> {
        if self.phase != Phase::Closed {
            return Err(VspError::AlreadyOpen);
        }
        self.phase = Phase::Version;
        self.sync_state();
        Ok(())
    }

    /// The channel closed (or VMBus reset): forget the connection.
    pub fn channel_closed(&mut self, _now: Duration) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.pending = None;
        self.late_balloon_until = None;
        self.late_unballoon.clear();
        self.late_hot_remove = None;
        self.late_hot_add = None;
        self.trans_id = 0;
        self.hot_add_gate = HotAddGate::Open;
        self.last_status = None;
        // Messages built for the old connection would reach a guest that never asked.
        self.tx.clear();
        self.events.push_back(VspEvent::Reset);
        self.sync_state();
    }

    /// A DM message from the guest: the payload of one VMBus in-band packet.
    pub fn receive(&mut self, now: Duration, payload: &[u8], guest: &dyn GuestOwnership) {
        if self.phase == Phase::Closed {
            if let Some(suppressed) = self.guest_log.allow(now) {
                tracing::debug!(
                    len = payload.len(),
                    suppressed,
                    "DM message with no open channel, dropped"
                );
            }
        } else {
            match Message::parse(payload) {
                Ok(msg) => self.dispatch(now, msg, guest),
                Err(e) => self.violation(now, Violation::Malformed(e)),
            }
        }
        self.advance(now);
        self.sync_state();
    }

    /// Time passed: fire whatever is due.
    pub fn tick(&mut self, now: Duration) {
        self.advance(now);
        self.sync_state();
    }

    /// Asks the guest to give up `pages` pages, in requests of at most
    /// [`VspConfig::max_balloon_pages`].
    pub fn balloon(&mut self, now: Duration, pages: u64) -> Result<(), VspError> {
        self.advance(now);
        let r = self.try_balloon(now, pages);
        self.sync_state();
        r
    }

    fn try_balloon(&mut self, now: Duration, pages: u64) -> Result<(), VspError> {
        let caps = self.ready_idle()?;
        if !caps.balloon() {
            return Err(VspError::NotCapable("the guest cannot balloon"));
        }
        if pages == 0 {
            return Err(VspError::NothingToDo);
        }
        self.start_balloon(now, pages, 0);
        Ok(())
    }

    /// Gives up to `pages` ballooned pages back to the guest. `backer` backs the runs that
    /// leave the ballooned set before the request naming them is queued; if it refuses,
    /// the pages stay ballooned and nothing is sent ([`VspError::BackingRefused`]).
    /// Returns those runs.
    pub fn unballoon(
        &mut self,
        now: Duration,
        pages: u64,
        backer: &mut dyn Backer,
    ) -> Result<Vec<GfnRange>, VspError> {
        self.advance(now);
        let r = self.try_unballoon(now, pages, backer);
        self.sync_state();
        r
    }

    fn try_unballoon(
        &mut self,
        now: Duration,
        pages: u64,
        backer: &mut dyn Backer,
    ) -> Result<Vec<GfnRange>, VspError> {
        let caps = self.ready_idle()?;
        if !caps.balloon() {
            return Err(VspError::NotCapable("the guest cannot balloon"));
        }
        let pages = pages.min(self.ballooned.len());
        if pages == 0 {
            return Err(VspError::NothingToDo);
        }
        let runs = self
            .ballooned
            // At most 2 GiB per range, as QEMU sends: Linux frees unballooned pages in its
            // channel callback, and one huge range there risks soft-lockup warnings.
            .take(pages, 524_288);
        if backer.back(&runs).is_err() {
            for r in &runs {
                self.ballooned.insert(*r);
            }
            return Err(VspError::BackingRefused);
        }
        let ranges: Vec<PageRange> = runs
            .iter()
            .filter_map(|r| PageRange::try_new(r.start(), u32::try_from(r.count()).ok()?))
            .collect();
        let chunks: Vec<&[PageRange]> = ranges.chunks(MAX_RANGES_PER_MESSAGE).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            self.send(Message::new(
                self.trans_id,
                Body::UnballoonRequest {
                    more_pages: i != last,
                    ranges: chunk,
                },
            ));
        }
        self.pending = Some(Pending {
            op: Op::Unballoon { pages },
            deadline: now.saturating_add(self.config.reply_timeout),
            hard_deadline: now.saturating_add(self.config.reply_timeout),
        });
        Ok(runs)
    }

    /// Hot-adds `pages` pages from `start_pfn`. The start must be aligned to the guest's
    /// hot-add alignment; the size is rounded down to it. `backer` backs the whole range
    /// before the first request is queued (if it refuses, nothing is sent:
    /// [`VspError::BackingRefused`]); pages the guest ends up not adding are the owner's
    /// to release when [`VspEvent::HotAddComplete`] says how many it added. Returns the
    /// pages that will be asked for, in one or more requests.
    pub fn hot_add(
        &mut self,
        now: Duration,
        start_pfn: u64,
        pages: u64,
        backer: &mut dyn Backer,
    ) -> Result<u64, VspError> {
        self.advance(now);
        let r = self.try_hot_add(now, start_pfn, pages, backer);
        self.sync_state();
        r
    }

    fn try_hot_add(
        &mut self,
        now: Duration,
        start_pfn: u64,
        pages: u64,
        backer: &mut dyn Backer,
    ) -> Result<u64, VspError> {
        let caps = self.ready_idle()?;
        if !caps.hot_add() {
            return Err(VspError::NotCapable("the guest cannot hot-add"));
        }
        match self.hot_add_gate {
            HotAddGate::Disabled => return Err(VspError::HotAddDisabled),
            HotAddGate::RetryAt(until) if now < until => {
                return Err(VspError::NotReady { until });
            }
            _ => {}
        }
        let align = caps.hot_add_alignment_pages();
        if start_pfn % align != 0 {
            return Err(VspError::Unaligned {
                alignment_pages: align,
            });
        }
        let pages = pages - pages % align;
        if pages == 0 {
            return Err(VspError::NothingToDo);
        }
        // PFN_LIMIT is GFN_LIMIT, so this refuses what passes the 40-bit PFN space.
        let Ok(range) = GfnRange::new(start_pfn, pages) else {
            return Err(VspError::OutOfRange);
        };
        if self.ballooned.intersects(range) {
            return Err(VspError::OverlapsBallooned);
        }
        if backer.back(&[range]).is_err() {
            return Err(VspError::BackingRefused);
        }
        self.hot_add_gate = HotAddGate::Open;
        self.send_hot_add(now, pages, 0, start_pfn);
        Ok(pages)
    }

    /// Asks a 2.0 guest to hot-remove `pages` pages from NUMA node `node`, with
    /// `DM_REMOVE_QOS_*` flags `qos`.
    pub fn hot_remove(
        &mut self,
        now: Duration,
        node: u32,
        pages: u32,
        qos: u32,
    ) -> Result<(), VspError> {
        self.advance(now);
        let r = self.try_hot_remove(now, node, pages, qos);
        self.sync_state();
        r
    }

    fn try_hot_remove(
        &mut self,
        now: Duration,
        node: u32,
        pages: u32,
        qos: u32,
    ) -> Result<(), VspError> {
        let caps = self.ready_idle()?;
        if !self.config.hot_remove {
            return Err(VspError::NotCapable("hot-remove is not configured"));
        }
        if self.negotiated_version() != Some(Version::V2_0) {
            return Err(VspError::NotCapable("hot-remove needs protocol 2.0"));
        }
        if !caps.hot_remove() {
            return Err(VspError::NotCapable("the guest cannot hot-remove"));
        }
        if qos & !DM_REMOVE_QOS_MASK != 0 {
            return Err(VspError::InvalidQos(qos));
        }
        if pages == 0 {
            return Err(VspError::NothingToDo);
        }
        self.send(Message::new(
            self.trans_id,
            Body::HotRemoveRequest {
                virtual_node: node,
                page_count: pages,
                qos_flags: qos,
            },
        ));
        self.pending = Some(Pending::long(
            Op::HotRemove {
                requested: pages,
                removed: 0,
            },
            now,
            self.config.reply_timeout,
        ));
        Ok(())
    }

    /// The next DM message to send, as the payload of one VMBus in-band packet: copied
    /// into the front of `buf`; returns its length. Nothing is allocated per message.
    pub fn poll_transmit(&mut self, buf: &mut [u8; MAX_MESSAGE_SIZE]) -> Option<usize> {
        self.tx.pop(buf)
    }

    /// The next event. The queue is bounded: an owner that does not drain it loses no
    /// accounting, only guest-caused noise, counted in [`VspEvent::Coalesced`].
    pub fn poll_event(&mut self) -> Option<VspEvent> {
        self.events.pop_front()
    }

    /// When [`tick`](Self::tick) is next due: the end of the post-capabilities wait or the
    /// deadline of the awaited reply. `Some` whenever a reply is awaited.
    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.phase, self.pending) {
            (Phase::Wait { until, .. }, _) => Some(until),
            (_, Some(p)) => Some(p.deadline),
            _ => match (self.late_balloon_until, self.late_hot_remove) {
                (Some(a), Some(b)) => Some(a.min(b.until)),
                (a, b) => a.or(b.map(|l| l.until)),
            },
        }
    }

    /// Where the host is.
    pub fn state(&self) -> VspState {
        match self.phase {
            Phase::Closed => VspState::Closed,
            Phase::Version => VspState::Version,
            Phase::Caps { .. } => VspState::Caps,
            Phase::Wait { .. } => VspState::PostCapsWait,
            Phase::Ready { .. } => self.pending.map_or(VspState::Idle, |p| p.op.state()),
        }
    }

    /// Pages the guest gave the host (ballooned or hot-removed) that the host has not given
    /// back. Kept across channel resets.
    pub fn ballooned(&self) -> &PageSet {
        &self.ballooned
    }

    /// Empties the ballooned set and returns it: for a guest reboot, after which the guest
    /// sees all its RAM again and the host must back those pages.
    pub fn take_ballooned(&mut self) -> PageSet {
        std::mem::take(&mut self.ballooned)
    }

    /// The agreed protocol version.
    pub fn negotiated_version(&self) -> Option<Version> {
        match self.phase {
            Phase::Closed | Phase::Version => None,
            Phase::Caps { version }
            | Phase::Wait { version, .. }
            | Phase::Ready { version, .. } => Some(version),
        }
    }

    /// The guest's capabilities, once reported.
    pub fn caps(&self) -> Option<Caps> {
        match self.phase {
            Phase::Wait { caps, .. } | Phase::Ready { caps, .. } => Some(caps),
            _ => None,
        }
    }

    /// The last status report taken (when reports are wanted) on this connection.
    pub fn last_status(&self) -> Option<StatusReport> {
        self.last_status
    }

    /// The units of work one guest message naming `ranges` page ranges adds to the
    /// guest's work credit, from which all it makes the host do is paid: each set lookup,
    /// step of a set walk and insertion into the ballooned set is at least one, an
    /// ownership check of `n` pages `1 + (n - 1) / 512`. Proportional to the message's
    /// size (18 units per 8-byte range and 64 per message), whatever the ranges name and
    /// however fragmented the ballooned set is. An honest message (every range new and
    /// wholly the guest's) costs at most `10 * ranges`, so it always gets all it needs
    /// even from an empty credit. Unspent credit carries over up to [`MAX_WORK_CREDIT`]
    /// (one full message's budget), so one message can never cause more than that, and a
    /// stream of messages never more than their budgets plus that once: the work is
    /// bounded per ring byte, not per message.
    pub const fn work_budget(ranges: usize) -> u64 {
        WORK_PER_MESSAGE + WORK_PER_RANGE * ranges as u64
    }

    /// The guest's work credit now: at most this plus [`work_budget`](Self::work_budget)
    /// of its ranges (and never more than [`MAX_WORK_CREDIT`]) is what its next message
    /// can make the host do.
    pub fn work_credit(&self) -> u64 {
        self.work_credit
    }

    /// The transaction id the next host transaction will carry.
    pub fn next_trans_id(&self) -> u32 {
        self.trans_id
    }

    fn ready_idle(&self) -> Result<Caps, VspError> {
        match self.phase {
            Phase::Closed | Phase::Version | Phase::Caps { .. } => Err(VspError::NotConnected),
            Phase::Wait { until, .. } => Err(VspError::NotReady { until }),
            // A late balloon's or hot-remove's final message would otherwise end the next
            // operation.
            Phase::Ready { .. }
                if self.pending.is_some()
                    || self.late_balloon_until.is_some()
                    || self.late_hot_remove.is_some() =>
            {
                Err(VspError::Busy)
            }
            Phase::Ready { caps, .. } => Ok(caps),
        }
    }

    fn advance(&mut self, now: Duration) {
        if self.late_balloon_until.is_some_and(|until| now >= until) {
            self.late_balloon_until = None;
        }
        if self.late_hot_remove.is_some_and(|l| now >= l.until) {
            self.late_hot_remove = None;
        }
        if let Phase::Wait {
            version,
            caps,
            until,
        } = self.phase
        {
            if now >= until {
                self.become_ready(version, caps);
            }
        }
        if let Some(p) = self.pending {
            if now < p.deadline {
                return;
            }
            self.pending = None;
            self.trans_id = self.trans_id.wrapping_add(1);
            match p.op {
                Op::HotAdd {
                    requested,
                    added,
                    asked,
                    ..
                } => {
                    self.hot_add_gate = HotAddGate::Disabled;
                    self.late_hot_add = Some((requested, added, asked));
                }
                Op::Unballoon { pages } => {
                    self.late_unballoon.push_back(pages);
                    if self.late_unballoon.len() > MAX_LATE_UNBALLOONS {
                        if let Some(pages) = self.late_unballoon.pop_front() {
                            self.violation(now, Violation::UnansweredUnballoon { pages });
                        }
                    }
                }
                Op::HotRemove { requested, removed } => {
                    self.late_hot_remove = Some(LateHotRemove {
                        requested,
                        removed,
                        until: now.saturating_add(self.config.reply_timeout),
                    });
                }
                Op::Balloon { .. } => {}
            }
            if matches!(p.op, Op::Balloon { .. }) {
                self.late_balloon_until = Some(now.saturating_add(self.config.reply_timeout));
            }
            tracing::warn!(what = ?p.op.transaction(), "DM reply timed out");
            self.events.push_back(VspEvent::TransactionTimedOut {
                what: p.op.transaction(),
            });
        }
    }

    fn become_ready(&mut self, version: Version, caps: Caps) {
        self.phase = Phase::Ready { version, caps };
        if let (Some(max), true) = (self.config.max_page_count, version >= Version::V1_0) {
            let data = max.to_le_bytes();
            self.send(Message::new(
                self.trans_id,
                Body::Info {
                    info_type: InfoType::MAX_PAGE_CNT,
                    data: &data,
                },
            ));
        }
    }

    fn dispatch(&mut self, now: Duration, msg: Message<'_>, guest: &dyn GuestOwnership) {
        let state = self.state();
        match msg.body {
            Body::StatusReport(s) => self.on_status(s),
            Body::VersionRequest {
                version,
                is_last_attempt,
            } if self.phase == Phase::Version => {
                self.on_version(now, msg.trans_id, version, is_last_attempt)
            }
            Body::CapabilitiesReport { caps, .. } if state == VspState::Caps => {
                self.on_caps(now, msg.trans_id, caps)
            }
            Body::BalloonResponse { more_pages, ranges } if state == VspState::Balloon => {
                self.on_balloon_response(now, more_pages, ranges, guest)
            }
            Body::BalloonResponse { more_pages, ranges }
                if state == VspState::Idle && self.late_balloon_until.is_some() =>
            {
                // The rest of a balloon that timed out: still the guest's pages given up.
                let (accepted, _) = self.accept_pages(now, ranges, guest);
                if !accepted.is_empty() {
                    self.events.push_back(VspEvent::PagesReturned(accepted));
                }
                if !more_pages {
                    self.late_balloon_until = None;
                }
            }
            // In order: the oldest timed-out unballoon's answer comes before a newer one's,
            // so it leaves the pending one pending.
            Body::UnballoonResponse if !self.late_unballoon.is_empty() => {
                if let Some(pages) = self.late_unballoon.pop_front() {
                    self.events.push_back(VspEvent::LateReply {
                        what: Transaction::Unballoon { pages },
                    });
                }
            }
            Body::UnballoonResponse if state == VspState::Unballoon => self.on_unballoon_response(),
            Body::HotAddResponse { page_count, result } if state == VspState::HotAdd => {
                self.on_hot_add_response(now, page_count, result)
            }
            Body::HotAddResponse { page_count, result } if self.late_hot_add.is_some() => {
                self.on_late_hot_add_response(now, page_count, result)
            }
            Body::HotRemoveResponse {
                result,
                more_pages,
                ranges,
            } if state == VspState::HotRemove => {
                self.on_hot_remove_response(now, result, more_pages, ranges, guest)
            }
            Body::HotRemoveResponse {
                more_pages, ranges, ..
            } if state == VspState::Idle && self.late_hot_remove.is_some() => {
                self.on_late_hot_remove_response(now, more_pages, ranges, guest)
            }
            _ => {
                let ty = msg.message_type();
                self.violation(now, Violation::Unexpected { ty, state });
            }
        }
    }

    fn on_status(&mut self, s: StatusReport) {
        if !self.config.status_reports {
            return;
        }
        self.last_status = Some(s);
        self.events.push_back(VspEvent::StatusReport {
            committed: s.num_committed,
            available: s.num_avail,
        });
    }

    fn on_version(&mut self, now: Duration, trans_id: u32, version: Version, last_attempt: bool) {
        let accepted = self.config.versions.accepts(version);
        self.send_reply(
            now,
            Message::new(
                trans_id,
                Body::VersionResponse {
                    is_accepted: accepted,
                },
            ),
        );
        if accepted {
            self.phase = Phase::Caps { version };
            self.events.push_back(VspEvent::Negotiated(version));
        } else {
            if let Some(suppressed) = self.guest_log.allow(now) {
                tracing::info!(%version, last_attempt, suppressed, "DM version rejected");
            }
            self.events.push_back(VspEvent::VersionRejected {
                version,
                last_attempt,
            });
        }
    }

    fn on_caps(&mut self, now: Duration, trans_id: u32, caps: Caps) {
        let Phase::Caps { version } = self.phase else {
            return;
        };
        let v2 = version == Version::V2_0;
        self.send_reply(
            now,
            Message::new(
                trans_id,
                Body::CapabilitiesResponse {
                    is_accepted: true,
                    hot_remove: v2 && self.config.hot_remove,
                    suppress_pressure_reports: v2 && !self.config.status_reports,
                },
            ),
        );
        self.events.push_back(VspEvent::CapabilitiesReported(caps));
        let until = now.saturating_add(self.config.post_caps_wait);
        self.phase = Phase::Wait {
            version,
            caps,
            until,
        };
    }

    fn start_balloon(&mut self, now: Duration, target: u64, returned: u64) {
        let max = u64::from(self.config.max_balloon_pages.max(1));
        let asked = target.saturating_sub(returned).min(max) as u32;
        self.send(Message::new(
            self.trans_id,
            Body::BalloonRequest { num_pages: asked },
        ));
        self.pending = Some(Pending::long(
            Op::Balloon {
                target,
                returned,
                asked,
                got: 0,
            },
            now,
            self.config.reply_timeout,
        ));
    }

    fn on_balloon_response(
        &mut self,
        now: Duration,
        more_pages: bool,
        ranges: &[PageRange],
        guest: &dyn GuestOwnership,
    ) {
        let (accepted, new) = self.accept_pages(now, ranges, guest);
        let Some(Pending {
            op:
                Op::Balloon {
                    target,
                    returned,
                    asked,
                    got,
                },
            deadline,
            hard_deadline,
        }) = self.pending
        else {
            return;
        };
        if !accepted.is_empty() {
            self.events.push_back(VspEvent::PagesReturned(accepted));
        }
        let (returned, got) = (returned + new, got + new);
        if more_pages {
            // Progress earns more time, up to the operation's hard limit, and only while
            // the guest still owes pages.
            let progress = new > 0 && got < u64::from(asked);
            let deadline = Pending::rearmed(
                deadline,
                hard_deadline,
                now,
                self.config.reply_timeout,
                progress,
            );
            self.pending = Some(Pending {
                op: Op::Balloon {
                    target,
                    returned,
                    asked,
                    got,
                },
                deadline,
                hard_deadline,
            });
            return;
        }
        self.pending = None;
        self.trans_id = self.trans_id.wrapping_add(1);
        if got >= u64::from(asked) && returned < target {
            self.start_balloon(now, target, returned);
        } else {
            self.events.push_back(VspEvent::BalloonComplete {
                requested: target,
                returned,
            });
        }
    }

    fn on_unballoon_response(&mut self) {
        if let Some(Pending {
            op: Op::Unballoon { pages },
            ..
        }) = self.pending.take()
        {
            self.trans_id = self.trans_id.wrapping_add(1);
            self.events.push_back(VspEvent::UnballoonComplete { pages });
        }
    }

    fn hot_add_chunk(&self, align: u64) -> u64 {
        let max = u64::from(self.config.max_hot_add_pages.min(PageRange::MAX_PAGE_CNT));
        (max - max % align).max(align)
    }

    fn send_hot_add(&mut self, now: Duration, requested: u64, added: u64, start: u64) {
        let Some(caps) = self.caps() else { return };
        let chunk = self
            .hot_add_chunk(caps.hot_add_alignment_pages())
            .min(requested.saturating_sub(added));
        // Always fits: the chunk is below 2^24 and `hot_add` kept the range in 40 bits.
        let Some(range) = u32::try_from(chunk)
            .ok()
            .and_then(|n| PageRange::try_new(start, n))
        else {
            return;
        };
        let asked = range.page_cnt();
        let region = (self.negotiated_version() != Some(Version::V0_3)).then_some(range);
        self.send(Message::new(
            self.trans_id,
            Body::HotAddRequest { range, region },
        ));
        self.pending = Some(Pending {
            op: Op::HotAdd {
                requested,
                added,
                start,
                asked,
            },
            deadline: now.saturating_add(self.config.hot_add_reply_timeout),
            hard_deadline: now.saturating_add(self.config.hot_add_reply_timeout),
        });
    }

    fn on_hot_add_response(&mut self, now: Duration, page_count: u32, result: u32) {
        let Some(Pending {
            op:
                Op::HotAdd {
                    requested,
                    added,
                    start,
                    asked,
                },
            ..
        }) = self.pending.take()
        else {
            return;
        };
        self.trans_id = self.trans_id.wrapping_add(1);
        let (got, outcome) = self.judge_hot_add(now, page_count, result, asked);
        let added = added + u64::from(got);
        let result = match outcome {
            Some(r) => r,
            None if added < requested => {
                self.send_hot_add(now, requested, added, start + u64::from(asked));
                return;
            }
            None => HotAddResult::Success,
        };
        self.events.push_back(VspEvent::HotAddComplete {
            requested,
            added,
            result,
        });
    }

    /// The answer to a hot-add that timed out. The guest is done with it, so the gate the
    /// timeout closed follows the answer as if it had come in time; the chunks not yet
    /// sent are not sent (the operation is over).
    fn on_late_hot_add_response(&mut self, now: Duration, page_count: u32, result: u32) {
        let Some((requested, added, asked)) = self.late_hot_add.take() else {
            return;
        };
        let (got, outcome) = self.judge_hot_add(now, page_count, result, asked);
        if outcome.is_none() {
            self.hot_add_gate = HotAddGate::Open;
        }
        self.events.push_back(VspEvent::LateReply {
            what: Transaction::HotAdd {
                requested,
                added: added + u64::from(got),
            },
        });
    }

    /// Pages a hot-add response brings (clamped to `asked`) and how the operation ends,
    /// `None` if the chunk was added in full; sets the hot-add gate accordingly.
    fn judge_hot_add(
        &mut self,
        now: Duration,
        page_count: u32,
        result: u32,
        asked: u32,
    ) -> (u32, Option<HotAddResult>) {
        if page_count > asked {
            self.violation(
                now,
                Violation::HotAddOverReport {
                    requested: asked,
                    reported: page_count,
                },
            );
        }
        let got = page_count.min(asked);
        let outcome = if result == 0 && got == 0 {
            let retry_at = match self.config.hot_add_transient {
                HotAddTransient::RetryAfter(d) => Some(now.saturating_add(d)),
                HotAddTransient::Disable => None,
            };
            self.hot_add_gate = retry_at.map_or(HotAddGate::Disabled, HotAddGate::RetryAt);
            HotAddResult::Transient { retry_at }
        } else if result == 0 {
            self.violation(now, Violation::HotAddFailedWithPages { page_count });
            self.hot_add_gate = HotAddGate::Disabled;
            HotAddResult::Barrier
        } else if got == 0 {
            self.hot_add_gate = HotAddGate::Disabled;
            HotAddResult::Permanent
        } else if got < asked {
            self.hot_add_gate = HotAddGate::Disabled;
            HotAddResult::Barrier
        } else {
            return (got, None);
        };
        (got, Some(outcome))
    }

    fn on_hot_remove_response(
        &mut self,
        now: Duration,
        result: u32,
        more_pages: bool,
        ranges: &[PageRange],
        guest: &dyn GuestOwnership,
    ) {
        let (accepted, new) = self.accept_pages(now, ranges, guest);
        let Some(Pending {
            op: Op::HotRemove { requested, removed },
            deadline,
            hard_deadline,
        }) = self.pending
        else {
            return;
        };
        if !accepted.is_empty() {
            self.events.push_back(VspEvent::HotRemoved(accepted));
        }
        let removed = removed + new;
        if more_pages {
            let progress = new > 0 && removed < u64::from(requested);
            let deadline = Pending::rearmed(
                deadline,
                hard_deadline,
                now,
                self.config.reply_timeout,
                progress,
            );
            self.pending = Some(Pending {
                op: Op::HotRemove { requested, removed },
                deadline,
                hard_deadline,
            });
            return;
        }
        self.pending = None;
        self.trans_id = self.trans_id.wrapping_add(1);
        self.events.push_back(VspEvent::HotRemoveComplete {
            requested,
            removed,
            result,
        });
    }

    /// The rest of a hot-remove that timed out: still pages the guest removed.
    fn on_late_hot_remove_response(
        &mut self,
        now: Duration,
        more_pages: bool,
        ranges: &[PageRange],
        guest: &dyn GuestOwnership,
    ) {
        let (accepted, new) = self.accept_pages(now, ranges, guest);
        if !accepted.is_empty() {
            self.events.push_back(VspEvent::HotRemoved(accepted));
        }
        let Some(late) = self.late_hot_remove.as_mut() else {
            return;
        };
        late.removed += new;
        if !more_pages {
            let (requested, removed) = (late.requested, late.removed);
            self.late_hot_remove = None;
            self.events.push_back(VspEvent::LateReply {
                what: Transaction::HotRemove { requested, removed },
            });
        }
    }

    /// Adds the pages of `ranges` that are new and the guest's own to the ballooned set;
    /// returns them and their count, and reports the foreign ones.
    ///
    /// All the work one message causes — set lookups, ownership checks, insertions, the
    /// runs kept for the report — is paid from one [`Work`] budget linear in the number
    /// of ranges, whatever the ranges name or the set looks like: each range is one
    /// ordered walk of the ballooned set from its start, one lookup per run met, and what
    /// is left when the budget runs out is rejected unchecked. An honest message (each
    /// range new and wholly the guest's) spends a small part of it.
    fn accept_pages(
        &mut self,
        now: Duration,
        ranges: &[PageRange],
        guest: &dyn GuestOwnership,
    ) -> (Vec<GfnRange>, u64) {
        let mut work = Work::from_credit(
            self.work_credit
                .saturating_add(Self::work_budget(ranges.len()))
                .min(MAX_WORK_CREDIT),
        );
        let mut accepted = Vec::new();
        let mut foreign = Rejected::default();
        let mut owned = Vec::new();
        let mut gaps = Vec::with_capacity(WALK_CHUNK);
        let mut new = 0;
        // Ranges before this index go one by one (their run could not be taken at once).
        let mut one_by_one_until = 0;
        let mut i = 0;
        while let Some(r) = ranges.get(i) {
            if i >= one_by_one_until {
                match self.accept_page_run(&ranges[i..], &mut work, guest) {
                    PageRun::Taken(k) => {
                        new += k as u64;
                        accepted.extend(
                            (r.start_page()..r.start_page() + k as u64)
                                .filter_map(|g| GfnRange::new(g, 1).ok()),
                        );
                        i += k;
                        continue;
                    }
                    PageRun::OneByOne(k) => one_by_one_until = i + k,
                    PageRun::None => {}
                }
            }
            i += 1;
            let (start, count) = (r.start_page(), u64::from(r.page_cnt()));
            // A page past the 40-bit PFN space could never be named in an unballoon request.
            let inside = count.min(PFN_LIMIT - start);
            foreign.add(start + inside, count - inside);
            // One ordered walk of the ballooned set over the range: a lookup, then one
            // step per run met. The gaps between runs are the new pages; the runs are
            // repeats, dropped silently. The walk goes [`WALK_CHUNK`] gaps at a time, each
            // batch checked before the next is walked, so walking cannot eat the budget
            // the checks need; what the budget leaves unwalked is rejected.
            // Below PFN_LIMIT, which is GFN_LIMIT, so a gfn range; were it not, it would
            // be foreign like the pages past the limit.
            if GfnRange::new(start, inside).is_err() {
                foreign.add(start, inside);
                continue;
            }
            let end = start + inside;
            let mut at = start;
            while at < end {
                if !work.spend(LOOKUP_COST) {
                    // Not walked: may hold ballooned pages, so not counted as foreign.
                    foreign.skip(at, end - at);
                    break;
                }
                gaps.clear();
                let mut resume = end;
                // `at..end` lies inside the range checked above.
                let window = GfnRange::from_bounds(at, end).unwrap_or(GfnRange::EMPTY);
                if self.ballooned.end().is_none_or(|e| at >= e) {
                    // At or above every ballooned page (a guest giving pages from the
                    // bottom up, each above the last): the window is one gap, found
                    // without a walk and paid for as the walk's one step.
                    if work.spend(1) {
                        gaps.push((window.start(), window.count()));
                    } else {
                        resume = window.start();
                    }
                } else {
                    for gap in self.ballooned.gaps_in(window) {
                        if gaps.len() == WALK_CHUNK || !work.spend(1) {
                            resume = gap.start();
                            break;
                        }
                        gaps.push((gap.start(), gap.count()));
                    }
                }
                for &(gs, gn) in &gaps {
                    // QEMU takes a returned range page by page; bisecting keeps the owned
                    // part of a range that straddles the end of guest RAM, within the
                    // budget, so a wholly foreign range cannot cost millions of checks.
                    owned.clear();
                    owned_pieces(guest, gs, gn, &mut work, &mut owned, &mut foreign);
                    for &(s, n) in &owned {
                        // Inside a gap of the window, so a gfn range.
                        let Ok(piece) = GfnRange::new(s, n) else {
                            foreign.add(s, n);
                            continue;
                        };
                        // Paid for, though the budget may be spent: the pages were checked.
                        let runs = self.ballooned.run_count();
                        new += self.ballooned.insert(piece);
                        let absorbed = (runs + 1).saturating_sub(self.ballooned.run_count());
                        work.charge(INSERT_COST + MERGE_COST * absorbed as u64);
                        accepted.push(piece);
                    }
                }
                at = resume;
            }
        }
        self.work_credit = work.left;
        #[cfg(test)]
        {
            self.work_spent += work.spent;
        }
        if foreign.pages > 0 || foreign.unchecked > 0 {
            self.violation(
                now,
                Violation::ForeignPages {
                    pages: foreign.pages,
                    unchecked: foreign.unchecked,
                    runs: foreign.runs,
                },
            );
        }
        (accepted, new)
    }

    /// The Linux 4 KiB balloon's message in one step: a run of one-page ranges at the
    /// front of `ranges`, each the page after the one before, the first at or above every
    /// ballooned page. Range by range, each would cost a lookup, a one-gap step, a
    /// one-page ownership check, and an insertion that absorbs the run before it (all but
    /// perhaps the first); with the budget for all of that, the run is charged exactly
    /// that, checked with one ownership query (the guest owns every page of the run if
    /// and only if it owns each) and inserted at once. Anything else, or a run the guest
    /// does not wholly own, is left to the range-by-range walk.
    fn accept_page_run(
        &mut self,
        ranges: &[PageRange],
        work: &mut Work,
        guest: &dyn GuestOwnership,
    ) -> PageRun {
        #[cfg(test)]
        if !self.page_runs {
            return PageRun::None;
        }
        let Some(first) = ranges.first().filter(|r| r.page_cnt() == 1) else {
            return PageRun::None;
        };
        let start = first.start_page();
        let end = self.ballooned.end();
        if end.is_some_and(|e| start < e) {
            return PageRun::None;
        }
        let k = 1 + ranges[1..]
            .iter()
            .zip(1u64..)
            .take_while(|(r, n)| r.page_cnt() == 1 && r.start_page() == start + n)
            .count();
        if k < 2 {
            return PageRun::None;
        }
        // Each start is a 40-bit field, so the run ends at or below the gfn limit.
        let Ok(run) = GfnRange::new(start, k as u64) else {
            return PageRun::None;
        };
        let pages = k as u64;
        let absorbed = pages - 1 + u64::from(end == Some(start));
        let cost = (LOOKUP_COST + 1 + 1 + INSERT_COST) * pages + MERGE_COST * absorbed;
        // Short of budget, or not all the guest's: range by range, where each range
        // gets what the budget still pays for and each page its own answer.
        if work.left < cost || !guest.owns(start, pages) {
            return PageRun::OneByOne(k);
        }
        work.spend(cost);
        self.ballooned.insert(run);
        PageRun::Taken(k)
    }

    /// Reports a guest's breach to the owner, and to the log within [`LogLimit`]: every
    /// message a guest sends could be one, and formatting each would be the guest's way to
    /// spend host CPU and fill the host's log.
    fn violation(&mut self, now: Duration, what: Violation) {
        if let Some(suppressed) = self.guest_log.allow(now) {
            tracing::warn!(?what, suppressed, "DM guest broke the protocol");
        }
        self.events.push_back(VspEvent::ProtocolViolation { what });
    }

    /// Queues a reply the guest asked for (version and capabilities responses). A guest
    /// may send requests without ever reading its ring; beyond [`MAX_QUEUED`] queued
    /// messages its replies are dropped rather than queued without bound. Host requests
    /// (bounded by one transaction at a time) always go through [`send`](Self::send).
    fn send_reply(&mut self, now: Duration, msg: Message<'_>) {
        if self.tx.len() >= MAX_QUEUED {
            if let Some(suppressed) = self.guest_log.allow(now) {
                tracing::warn!(ty = %msg.message_type(), suppressed, "guest is not reading its ring: DM reply dropped");
            }
            return;
        }
        self.send(msg);
    }

    fn send(&mut self, msg: Message<'_>) {
        match self.tx.push(&msg) {
            Ok(()) => {}
            // Every message is built here within the 4 KiB limit; reaching this is a bug.
            Err(e) => {
                debug_assert!(false, "a host DM message failed to encode: {e}");
                tracing::error!(error = %e, "host DM message not sent");
            }
        }
    }

    /// Emits `StateChanged` when the state differs from the last one reported.
    fn sync_state(&mut self) {
        let s = self.state();
        if s != self.reported_state {
            self.reported_state = s;
            self.events.push_back(VspEvent::StateChanged(s));
        }
    }
}

/// One past the largest PFN a page range can start at: the gfn limit, so every run below
/// it is a [`GfnRange`].
const PFN_LIMIT: u64 = PageRange::MAX_START_PAGE + 1;
const _: () = assert!(PFN_LIMIT == GFN_LIMIT);

/// Units of work a guest message adds to the credit, for the message: small, since a
/// one-range message is 24 bytes of payload; a per-message constant much larger than the
/// per-range one would let a guest multiply its work by sending many small messages.
const WORK_PER_MESSAGE: u64 = 64;

/// What an honest range (new and wholly the guest's) costs at most — the lookup
/// ([`LOOKUP_COST`]), one step, one ownership check, and an insertion ([`INSERT_COST`])
/// that absorbs the runs on both sides ([`MERGE_COST`] each).
const HONEST_RANGE_COST: u64 = LOOKUP_COST + 1 + 1 + INSERT_COST + 2 * MERGE_COST;

/// Units of work a guest message adds to the credit per range it names: an honest
/// range's cost, so an honest message never reaches the budget, plus room to bisect a
/// range that straddles the end of guest RAM (about `log2` of its size in checks).
const WORK_PER_RANGE: u64 = HONEST_RANGE_COST + 8;

/// The most work credit a guest can hold: one full message's budget. Bounds what any
/// one message can cause, and what unspent credit from cheap messages can add to a
/// stream of expensive ones.
pub const MAX_WORK_CREDIT: u64 = Vsp::work_budget(MAX_RANGES_PER_MESSAGE);

/// Units the lookup that starts a walk of the ballooned set costs (two descents of the
/// tree), against one for each step of the walk.
const LOOKUP_COST: u64 = 2;

/// Gaps of the ballooned set walked before they are checked and the walk resumes.
const WALK_CHUNK: usize = 64;

/// Units an insertion into the ballooned set costs when it touches no run: a lookup and
/// a map insertion.
const INSERT_COST: u64 = 2;

/// Units more for each run an insertion absorbs (a lookup and a map removal): a guest
/// filling the gaps between its ballooned pages pays for the merging it causes.
const MERGE_COST: u64 = 2;

/// Runs kept in a [`Violation::ForeignPages`] report; the rest are only counted.
pub const MAX_REPORTED_RUNS: usize = 8;

/// What one guest message may still spend: a set lookup or step, an ownership check,
/// an insertion, each paid before it is done.
#[derive(Debug)]
struct Work {
    left: u64,
    #[cfg(test)]
    spent: u64,
}

impl Work {
    #[cfg(test)]
    fn for_ranges(ranges: usize) -> Self {
        Self::from_credit(Vsp::work_budget(ranges))
    }

    fn from_credit(left: u64) -> Self {
        Work {
            left,
            #[cfg(test)]
            spent: 0,
        }
    }

    /// Takes `n` units if there are that many left.
    fn spend(&mut self, n: u64) -> bool {
        let Some(left) = self.left.checked_sub(n) else {
            return false;
        };
        self.left = left;
        #[cfg(test)]
        {
            self.spent += n;
        }
        true
    }

    /// Takes `n` units, or what is left: for work that must finish once begun.
    fn charge(&mut self, n: u64) {
        #[cfg(test)]
        {
            self.spent += n;
        }
        self.left = self.left.saturating_sub(n);
    }
}

/// What [`Vsp::accept_page_run`] did with the front of a message's ranges.
enum PageRun {
    /// Took this many one-page ranges.
    Taken(usize),
    /// Found a run of this many that the budget does not cover or the guest does not
    /// wholly own: they go range by range.
    OneByOne(usize),
    /// Found no run to take at once.
    None,
}

/// The pages of one message rejected: counts, and the first runs for the report, so a
/// message naming billions of foreign pages in 510 ranges costs 510 additions.
#[derive(Debug, Default)]
struct Rejected {
    /// Found foreign.
    pages: u64,
    /// Left unexamined when the budget ran out.
    unchecked: u64,
    runs: Vec<(u64, u64)>,
}

impl Rejected {
    /// Pages found not to be the guest's.
    fn add(&mut self, start: u64, count: u64) {
        self.pages += count;
        self.run(start, count);
    }

    /// Pages the budget left unexamined.
    fn skip(&mut self, start: u64, count: u64) {
        self.unchecked += count;
        self.run(start, count);
    }

    fn run(&mut self, start: u64, count: u64) {
        if count == 0 {
            return;
        }
        let full = self.runs.len() >= MAX_REPORTED_RUNS;
        match self.runs.last_mut() {
            Some((s, n)) if *s + *n == start => *n += count,
            _ if !full => self.runs.push((start, count)),
            _ => {}
        }
    }
}

/// Guest-caused log lines: at most [`LogLimit::BURST`] per [`LogLimit::WINDOW`], the
/// rest counted and the count given with the next line that is written.
#[derive(Debug, Clone, Default)]
struct LogLimit {
    window_start: Duration,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    const WINDOW: Duration = Duration::from_secs(10);
    const BURST: u32 = 8;

    /// `Some(lines suppressed since the last one)` if a line may be written now.
    fn allow(&mut self, now: Duration) -> Option<u64> {
        if now.saturating_sub(self.window_start) >= Self::WINDOW || now < self.window_start {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window >= Self::BURST {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Runs up to this many pages (2 MiB, Linux's largest balloon unit) are sorted page by
/// page.
const PAGEWISE: u64 = 512;

/// Sorts `[start, start + count)` into the pages the guest owns and the rest, paying
/// `1 + (n - 1) / 512` units of `work` per call of `owns` naming `n` pages (an owner's
/// check may grow with the pages it names); what is left unsorted when it runs out is
/// rejected unchecked.
///
/// `owns(s, n)` answers only "all of it". A short run is checked page by page. A long
/// run starting with an owned page is cut at the end of its longest owned prefix
/// (monotone, so binary search finds it); one starting with a foreign page at the start
/// of its longest wholly owned suffix; one foreign at both ends is halved.
fn owned_pieces(
    guest: &dyn GuestOwnership,
    start: u64,
    count: u64,
    budget: &mut Work,
    owned: &mut Vec<(u64, u64)>,
    foreign: &mut Rejected,
) {
    let push = |v: &mut Vec<(u64, u64)>, s: u64, c: u64| match v.last_mut() {
        Some((ps, pc)) if *ps + *pc == s => *pc += c,
        _ => v.push((s, c)),
    };
    let owns = |s: u64, n: u64, budget: &mut Work| -> Option<bool> {
        budget
            .spend(1 + n.saturating_sub(1) / PAGEWISE)
            .then(|| guest.owns(s, n))
    };
    let (mut s, end) = (start, start + count);
    while s < end {
        let n = end - s;
        match owns(s, n, budget) {
            Some(true) => {
                push(owned, s, n);
                return;
            }
            Some(false) => {}
            None => {
                foreign.skip(s, n);
                return;
            }
        }
        if n == 1 {
            foreign.add(s, 1);
            return;
        }
        if n <= PAGEWISE {
            for p in s..end {
                match owns(p, 1, budget) {
                    Some(true) => push(owned, p, 1),
                    Some(false) => foreign.add(p, 1),
                    None => {
                        foreign.skip(p, end - p);
                        return;
                    }
                }
            }
            return;
        }
        match owns(s, 1, budget) {
            None => {
                foreign.skip(s, n);
                return;
            }
            Some(true) => {
                // Longest owned prefix: owns(s, k) holds for k = lo, fails for k = hi.
                let (mut lo, mut hi) = (1u64, n);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    match owns(s, mid, budget) {
                        Some(true) => lo = mid,
                        Some(false) => hi = mid,
                        None => break,
                    }
                }
                push(owned, s, lo);
                s += lo;
            }
            Some(false) => {
                // Longest owned suffix: owns(s + k, n - k) fails for k = lo and holds for
                // k = hi (k = n, the empty suffix, counts as owned).
                let (mut lo, mut hi) = (0u64, n);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    match owns(s + mid, n - mid, budget) {
                        Some(true) => hi = mid,
                        Some(false) => lo = mid,
                        None => break,
                    }
                }
                if hi == n {
                    // Foreign at both ends, maybe owned pages between: halve.
                    let half = n / 2;
                    owned_pieces(guest, s, half, budget, owned, foreign);
                    owned_pieces(guest, s + half, n - half, budget, owned, foreign);
                    return;
                }
                owned_pieces(guest, s, hi, budget, owned, foreign);
                push(owned, s + hi, n - hi);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
