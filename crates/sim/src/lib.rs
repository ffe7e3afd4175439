//! The simulator: guests whose memory demand moves, driven through a real ballast host,
//! and the numbers that say how well a balancing policy followed them.
//!
//! - [`record`]: what a run produces (per-policy metrics and time series), the shape of
//!   `results.json` and the input of the report.
//! - [`size`]: memory sizes as scenarios write them (`"2G"`, `"512M"`).
//! - [`workload`]: deterministic demand generators, one per guest.
//! - [`trace`]: the reader for memory-usage traces and the guest model replaying them.
//! - [`scenario`]: a scenario file: the host, its guests and their workloads.
//! - [`guest`]: the guests' side: a DM guest's memory behind the VSC, a Xen guest's
//!   balloon driver making `memory_op` calls.
//! - [`reporting`]: free page reporting in a DM guest, as Linux's page reporting and
//!   `hv_balloon` do it, through the cold discard hint.
//! - [`engine`]: the run loop: a real `ballast_host::Host` stepped on virtual time with
//!   the guests, and the figures of the run.
//! - [`compare`]: a scenario run with one policy or with every policy.
//! - [`report`]: `results.json`, the terminal summary table and the HTML report.
//!
//! Follows no specification of its own: it drives the three interfaces through the
//! crates that implement them. Its models (the guest OS overhead over a trace's active
//! memory, a guest writing every page it is given) are stated where they are defined.

#![forbid(unsafe_code)]

pub mod compare;
pub mod engine;
pub mod guest;
pub mod record;
pub mod report;
pub mod reporting;
pub mod scenario;
pub mod size;
pub mod trace;
pub mod workload;
