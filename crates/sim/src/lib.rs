//! The simulator: guests whose memory demand moves, driven through a real ballast host,
//! and the numbers that say how well a balancing policy followed them.
//!
//! - [`record`]: what a run produces (per-policy metrics and time series), the shape of
//!   `results.json` and the input of the report.
//! - [`report`]: `results.json`, the terminal summary table and the HTML report.

#![forbid(unsafe_code)]

pub mod record;
pub mod report;
