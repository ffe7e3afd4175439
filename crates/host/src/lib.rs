//! The integration of ballast: one host owns the hypervisor core and the real memory
//! behind it, and steps them together.
//!
//! Today it joins the core ([`ballast_core::Hypervisor`]) and the backing
//! ([`ballast_backing::Backing`]) through [`MemoryHost`]: every discard the core records is
//! applied to the partition's memfd, and nothing else in ballast punches holes. The
//! Dynamic Memory sessions and the balancer join here next.

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
