//! The summary table: one row per policy, as plain text for the terminal and as the
//! cells the HTML table is built from (one definition of the columns for both).

use super::format;
use crate::record::{PolicyRun, RunResult};

/// One cell of a policy's row.
pub(crate) struct Cell {
    /// The `results.json` key the figure comes from (dotted for `operations.*`).
    pub key: &'static str,
    /// The column's heading.
    pub header: &'static str,
    /// The figure as people read it.
    pub text: String,
    /// The figure as `results.json` has it.
    pub raw: String,
}

/// What the columns look like for one run: shared by every row so that they line up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns {
    /// Whether any policy has a measured resident footprint: the column is left out in
    /// accounting mode, where it would be `-` on every row.
    pub with_resident: bool,
    /// The unit of the paging volume column.
    pub paged_unit: format::ByteSecondsUnit,
    /// Whether any run had free page reporting: then the backed footprint (assigned
    /// minus reported) and the hint counts get columns.
    pub with_reporting: bool,
}

impl Columns {
    /// The columns for `result`'s policies.
    pub fn for_result(result: &RunResult) -> Self {
        Columns {
            with_resident: result
                .policies
                .iter()
                .any(|p| p.metrics.footprint_resident_bytes_avg.is_some()),
            paged_unit: format::ByteSecondsUnit::for_values(
                result.policies.iter().map(|p| p.metrics.paged_byte_seconds),
            ),
            with_reporting: result
                .policies
                .iter()
                .any(|p| p.metrics.free_page_reporting),
        }
    }
}

/// The cells of one policy's row, in column order.
pub(crate) fn cells(run: &PolicyRun, cols: Columns) -> Vec<Cell> {
    let m = &run.metrics;
    let ops = &m.operations;
    let mut out = vec![Cell {
        key: "policy",
        header: "policy",
        text: crate::compare::run_label(&m.policy, m.free_page_reporting),
        raw: format::raw(&m.policy),
    }];
    let mut push = |key, header, text, raw| {
        out.push(Cell {
            key,
            header,
            text,
            raw,
        })
    };
    push(
        "footprint_assigned_bytes_avg",
        "assigned",
        format::bytes(m.footprint_assigned_bytes_avg),
        format::raw(&m.footprint_assigned_bytes_avg),
    );
    if cols.with_resident {
        push(
            "footprint_resident_bytes_avg",
            "resident",
            format::opt_bytes(m.footprint_resident_bytes_avg),
            format::raw(&m.footprint_resident_bytes_avg),
        );
    }
    if cols.with_reporting {
        push(
            "footprint_backed_bytes_avg",
            "backed",
            format::bytes(m.footprint_backed_bytes_avg),
            format::raw(&m.footprint_backed_bytes_avg),
        );
    }
    push(
        "saved_vs_static_fraction",
        "saved",
        format::opt_percent(m.saved_vs_static_fraction),
        format::raw(&m.saved_vs_static_fraction),
    );
    push(
        "slack_fraction",
        "slack",
        format::percent(m.slack_fraction),
        format::raw(&m.slack_fraction),
    );
    push(
        "paging_vm_seconds_fraction",
        "paging",
        format::percent(m.paging_vm_seconds_fraction),
        format::raw(&m.paging_vm_seconds_fraction),
    );
    push(
        "paged_byte_seconds",
        "paged",
        format::byte_seconds_in(m.paged_byte_seconds, cols.paged_unit),
        format::raw(&m.paged_byte_seconds),
    );
    push(
        "reaction_p50_s",
        "react p50",
        format::opt_seconds(m.reaction_p50_s),
        format::raw(&m.reaction_p50_s),
    );
    push(
        "reaction_p99_s",
        "react p99",
        format::opt_seconds(m.reaction_p99_s),
        format::raw(&m.reaction_p99_s),
    );
    push(
        "churn_per_vm_hour",
        "churn/VM-h",
        format::rate(m.churn_per_vm_hour),
        format::raw(&m.churn_per_vm_hour),
    );
    for (key, header, n) in [
        ("operations.balloon", "balloon", ops.balloon),
        ("operations.unballoon", "unballoon", ops.unballoon),
        ("operations.hot_add", "hot-add", ops.hot_add),
        ("operations.decrease", "decrease", ops.decrease),
        ("operations.populate", "populate", ops.populate),
        ("operations.failures", "failures", ops.failures),
    ] {
        push(key, header, n.to_string(), n.to_string());
    }
    if cols.with_reporting {
        push(
            "operations.hint",
            "hints",
            ops.hint.to_string(),
            ops.hint.to_string(),
        );
    }
    out
}

/// The headings of the columns, in order (the same whatever the row).
pub(crate) fn headers(cols: Columns) -> Vec<&'static str> {
    let probe = PolicyRun {
        metrics: crate::record::PolicyMetrics {
            policy: String::new(),
            free_page_reporting: false,
            footprint_backed_bytes_avg: 0.0,
            footprint_assigned_bytes_avg: 0.0,
            footprint_resident_bytes_avg: None,
            saved_vs_static_fraction: None,
            slack_fraction: 0.0,
            paging_vm_seconds_fraction: 0.0,
            paged_byte_seconds: 0.0,
            reaction_p50_s: None,
            reaction_p99_s: None,
            churn_per_vm_hour: 0.0,
            operations: Default::default(),
        },
        series: Default::default(),
        wall_s: 0.0,
    };
    cells(&probe, cols).into_iter().map(|c| c.header).collect()
}

/// The plain-text summary: a header line, a rule and one row per policy. The policy name
/// is left-aligned, every figure right-aligned, each column as wide as its widest cell;
/// footprints are assigned memory (and measured resident memory when the run has it),
/// paging volume is in one unit for the whole column, the operation columns count
/// protocol operations.
pub fn summary_table(result: &RunResult) -> String {
    let cols = Columns::for_result(result);
    let headers = headers(cols);
    let rows: Vec<Vec<String>> = result
        .policies
        .iter()
        .map(|p| cells(p, cols).into_iter().map(|c| c.text).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if i == 0 {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = line(&header_cells);
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::synthetic_result;

    #[test]
    fn one_row_per_policy_aligned() {
        let r = synthetic_result(3, 2, 50);
        let t = summary_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 3, "{t}");
        assert!(lines[0].starts_with("policy"));
        assert!(lines[0].contains("resident"));
        // Right-aligned figures: every row ends at the same column as the header.
        let width = lines[0].len();
        for l in &lines[1..] {
            assert_eq!(l.chars().count(), width, "{t}");
        }
        for p in &r.policies {
            assert!(t.contains(&p.metrics.policy));
            assert!(t.contains(&format::bytes(p.metrics.footprint_assigned_bytes_avg)));
        }
    }

    #[test]
    fn accounting_mode_drops_resident() {
        let mut r = synthetic_result(2, 2, 10);
        for p in &mut r.policies {
            p.metrics.footprint_resident_bytes_avg = None;
        }
        assert!(!summary_table(&r).contains("resident"));
    }

    #[test]
    fn no_policy_is_just_the_header() {
        let mut r = synthetic_result(1, 1, 1);
        r.policies.clear();
        assert_eq!(summary_table(&r).lines().count(), 2);
    }
}
