//! Memory balancing for ballast: a pure function from a snapshot of the host to target
//! changes.
//!
//! The host (or the simulator) takes a [`Snapshot`] every balancer tick and hands it to a
//! [`Balancer`]; the balancer answers with the new targets, which the host applies through
//! the memory interfaces (a DM balloon, unballoon or hot-add; a Xen balloon target). The
//! balancer reads no clock and makes no call: time comes in the snapshot, and the history
//! a policy keeps is its own state, so a run is deterministic.
//!
//! A [`Policy`] says what each VM should have; the [`Arbiter`] turns those wishes into
//! targets under the rules every policy shares (DESIGN "Decisions: balancer"): clamping to
//! the VM's minimum and maximum, sharing by weight under contention, reclaim before grant,
//! bounded steps, a minimum change, stuck detection and hysteresis.

#![forbid(unsafe_code)]

mod types;

pub use types::{HostSnapshot, Snapshot, TargetChange, VmSettings, VmSnapshot};
