//! `results.json`: the serde form of [`RunResult`], pretty printed.

use std::path::Path;

use super::{ReportError, write_file};
use crate::record::RunResult;

/// The run as `results.json` text: pretty-printed, keys as [`RunResult`]'s serde form.
///
/// Non-finite floats become `null` (serde_json's choice, kept on purpose: the file stays
/// valid JSON and the other figures stay readable). The record's types serialise without
/// error; should that ever change, the text is a JSON object with one `error` key rather
/// than a panic.
pub fn results_json(result: &RunResult) -> String {
    match serde_json::to_string_pretty(result) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(e) => {
            let msg = serde_json::Value::String(e.to_string());
            format!("{{\"error\": {msg}}}\n")
        }
    }
}

/// Writes [`results_json`] to `path`; unlike [`results_json`] it reports a serialisation
/// failure as an error, so a caller never leaves an error object where data was expected.
pub fn write_results_json(result: &RunResult, path: impl AsRef<Path>) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(result)?;
    text.push('\n');
    write_file(path.as_ref(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::synthetic_result;

    #[test]
    fn nan_becomes_null_and_stays_valid() {
        let mut r = synthetic_result(1, 2, 10);
        r.policies[0].metrics.slack_fraction = f64::NAN;
        r.policies[0].wall_s = f64::INFINITY;
        let v: serde_json::Value = serde_json::from_str(&results_json(&r)).expect("valid JSON");
        assert!(v["policies"][0]["slack_fraction"].is_null());
        assert!(v["policies"][0]["wall_s"].is_null());
        assert!(v["policies"][0]["paging_vm_seconds_fraction"].is_number());
    }

    #[test]
    fn series_are_not_written() {
        let r = synthetic_result(1, 2, 10);
        let v: serde_json::Value = serde_json::from_str(&results_json(&r)).expect("valid JSON");
        assert!(v["policies"][0].get("series").is_none());
    }
}
