//! The integration of ballast: one host owns the hypervisor core and the real memory
//! behind it, and steps them together.
//!
//! [`MemoryHost`] joins the core ([`ballast_core::Hypervisor`]) and the backing
//! ([`ballast_backing::Backing`]): every discard the core records is applied to the
//! partition's memfd, and nothing else in ballast punches holes. [`Host`] adds the guests
//! (made and torn down by the root's hypercalls, [`root`]), their Dynamic Memory sessions
//! or Xen targets, a DM guest's own extended hypercalls (free page reporting:
//! [`Host::hv_hypercall`], gated per guest by [`Host::set_free_page_reporting`]) and the
//! balancer, stepped on a clock the owner passes in.

#![forbid(unsafe_code)]

mod host;
mod memory;
pub mod root;

pub use host::{
    BackingMode, DmRing, Host, HostConfig, OpCounts, ResumeReport, VmConfig, VmError, VmId, VmKind,
    VmView,
};
pub use memory::{ApplyReport, ApplyStats, EffectFailure, EffectsFailed, HostError, MemoryHost};

// The README's examples are compiled and run as doc tests, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
