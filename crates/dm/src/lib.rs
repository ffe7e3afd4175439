//! Hyper-V Dynamic Memory, both sides, over VMBus rings.
//!
//! - [`vsp`]: the host side (the VSP), as Hyper-V and QEMU's hv-balloon play it: version
//!   negotiation, capabilities, status reports, balloon, unballoon, hot-add, hot-remove,
//!   one transaction at a time, a timeout on every awaited reply.
//! - [`vsc`]: the guest side (the VSC), as Linux's `hv_balloon` plays it.
//! - [`ring`]: the transport: VMBus ring buffers in shared memory with eventfd doorbells,
//!   across processes, or in-process for the simulator and tests; a ring lies in one span
//!   of a memfd or over a GPADL's scattered pages of guest RAM the VMM already has.
//! - [`session`]: drivers that pump either machine over a ring, with an optional [`Tap`](session::Tap)
//!   on the bytes each way.
//!
//! Both endpoints are sans-IO state machines: they take events (a received message, a
//! timer, a request from the host) with the current time, and return messages to send and
//! events for their owner. No sockets, threads or clocks live inside them, so every path
//! is tested deterministically and fuzzed.
//!
//! Follows seed 003 and reference `dm-protocol.md`, with the choices of DESIGN.md
//! "Decisions: Dynamic Memory"; where a side deviates from what QEMU or Linux does, its
//! module says so.

#![forbid(unsafe_code)]

pub mod pageset;
pub mod ring;
pub mod session;
pub mod vsc;
pub mod vsp;

pub use pageset::PageSet;
