//! The simulator: guests whose memory demand moves, driven through a real ballast host,
//! and the numbers that say how well a balancing policy followed them.
//!
//! - [`record`]: what a run produces (per-policy metrics and time series), the shape of
//!   `results.json` and the input of the report.
//! - [`size`]: memory sizes as scenarios write them (`"2G"`, `"512M"`).
//! - [`workload`]: deterministic demand generators, one per guest.
//! - [`trace`]: the reader for memory-usage traces and the guest model replaying them.
//! - [`scenario`]: a scenario file: the host, its guests and their workloads.

#![forbid(unsafe_code)]

pub mod compare;
pub mod engine;
pub mod guest;
pub mod record;
pub mod scenario;
pub mod size;
pub mod trace;
pub mod workload;
