//! Hyper-V Dynamic Memory, both sides, as pure state machines.
//!
//! - [`vsp`]: the host side (the VSP), as Hyper-V and QEMU's hv-balloon play it: version
//!   negotiation, capabilities, status reports, balloon, unballoon, hot-add, hot-remove,
//!   one transaction at a time, a timeout on every awaited reply.
//! - [`vsc`]: the guest side (the VSC), as Linux's `hv_balloon` plays it.
//! - [`pageset`]: the sets of guest pages each side keeps.
//!
//! Runs of guest pages cross the API as [`GfnRange`](ballast_abi::types::GfnRange), the
//! range type every crate of ballast shares: the pages a guest returned or hot-removed,
//! what an unballoon gave back, a [`PageSet`]'s runs, what the guest model frees and
//! onlines. A page range off the wire (a 40-bit start, a 24-bit count) can reach past
//! the gfn limit; that part is never a guest page, and only
//! [`vsp::Violation::ForeignPages`] reports it, as the pairs the guest named.
//!
//! The transport is not here: `ballast-vmbus` holds the VMBus rings, the doorbells, the
//! channel setup and the sessions that pump these machines over a ring, as quinn holds
//! the sockets for quinn-proto. This crate makes no syscall; an embedder with its own
//! VMBus (OpenVMM, for one) links only this crate.
//!
//! Both endpoints are sans-IO state machines: they take events (a received message, a
//! timer, a request from the host) with the current time, and return messages to send and
//! events for their owner. No sockets, threads or clocks live inside them, so every path
//! is tested deterministically and fuzzed.
//!
//! Follows the Dynamic Memory protocol header (QEMU `include/hw/hyperv/dynmem-proto.h`,
//! taken from Linux `drivers/hv/hv_balloon.c`), as Linux 6.1's `hv_balloon.c` plays the
//! guest and QEMU's `hw/hyperv/hv-balloon.c` the host. ARCHITECTURE.md ("Decisions, and
//! where each is enforced") lists ballast's own choices; where a side deviates from QEMU
//! or Linux, its module says so.

#![forbid(unsafe_code)]

pub mod pageset;
mod queue;
pub mod vsc;
pub mod vsp;

pub use pageset::PageSet;
pub use queue::EVENT_CAP;
