//! What a run is turned into for people and for other tools: `results.json`, the terminal
//! summary table and the self-contained HTML report.
//!
//! - [`results_json`] / [`write_results_json`]: the serde form of [`RunResult`], pretty
//!   printed. Non-finite floats (NaN, infinities) are written as JSON `null`, so the file
//!   is always valid JSON; a reader treats `null` in a field that is otherwise always a
//!   number as "not a number" (a simulator bug to report, not a value to plot).
//! - [`summary_table`]: one plain-text row per policy, for the terminal.
//! - [`html`] / [`write_html`]: one HTML file with inline CSS and inline SVG charts, which
//!   opens offline in any browser and can be mailed or archived as it is.
//!
//! Every number shown in the table and the page goes through [`format`](mod@format), so the terminal,
//! the page and `results.json` agree.

pub mod charts;
pub mod format;
mod html;
mod json;
mod table;
#[doc(hidden)]
pub mod testing;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use html::{MAX_GUEST_CHARTS, html, write_html};
pub use json::{results_json, write_results_json};
pub use table::summary_table;

#[cfg(doc)]
use crate::record::RunResult;

/// Why a report could not be produced or written.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The run could not be turned into JSON.
    #[error("cannot serialise the run result: {0}")]
    Json(#[from] serde_json::Error),
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file that was being written.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Writes `contents` to `path`, naming the path in the error (a bare `io::Error` would not
/// say which of the run's outputs failed).
fn write_file(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}
