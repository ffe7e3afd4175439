//! The HTML report: one self-contained file (inline CSS, inline SVG, no script, no font,
//! no image, no URL), so it opens offline and can be archived with the run.

use std::fmt::Write as _;
use std::path::Path;

use super::charts::{self, Line, colors};
use super::table::{self, Cell};
use super::{ReportError, format, write_file};
use crate::record::{GuestSeries, Mode, PolicyRun, RunResult};

/// Guests drawn one by one at most; a trace of a hundred guests would give an unreadable
/// page, so only the largest are drawn, beside a chart of the sums over all of them.
pub const MAX_GUEST_CHARTS: usize = 12;

/// Size of the wide charts (scatter, host, sums) and of the per-guest ones, in pixels.
const WIDE: (u32, u32) = (1160, 340);
const SMALL: (u32, u32) = (570, 280);

const CSS: &str = r#"
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d232b;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-size: 15px; line-height: 1.45; }
main { max-width: 1220px; margin: 0 auto; padding: 24px 24px 48px; background: #fff;
  min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 32px 0 10px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: #5a6470; margin: 0 0 14px; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr));
  gap: 8px 18px; margin: 12px 0 0; }
dl.facts div { background: #f1f3f6; border-radius: 6px; padding: 6px 10px; }
dl.facts dt { font-size: 12px; color: #5a6470; text-transform: uppercase; letter-spacing: .04em; }
dl.facts dd { margin: 0; font-weight: 600; }
.scroll { overflow-x: auto; }
table.metrics { border-collapse: collapse; width: 100%; font-size: 13px; }
table.metrics th, table.metrics td { padding: 6px 5px; border-bottom: 1px solid #e3e6ea;
  white-space: nowrap; }
table.metrics th { text-align: right; font-weight: 600; background: #f1f3f6;
  white-space: normal; vertical-align: bottom; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; font-weight: 600; }
table.metrics tbody tr:hover { background: #f8f9fb; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px;
  font-size: 13.5px; margin: 14px 0 0; }
dl.legend dt { font-weight: 600; }
dl.legend dd { margin: 0; color: #39414b; }
details { border: 1px solid #e3e6ea; border-radius: 6px; margin: 12px 0; padding: 0 14px; }
details[open] { padding-bottom: 12px; }
summary { cursor: pointer; font-weight: 600; font-size: 16px; padding: 10px 0; }
.chart { margin: 8px 0; }
.chart svg { max-width: 100%; height: auto; display: block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 10px; }
.note { color: #5a6470; font-size: 13.5px; }
.keys { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; margin: 4px 0; }
.key i { display: inline-block; width: 18px; height: 3px; vertical-align: middle;
  margin-right: 6px; border-radius: 2px; }
.error { color: #b00020; }
"#;

/// What each column means, for the legend under the table.
const LEGEND: &[(&str, &str)] = &[
    (
        "assigned",
        "time average of the memory assigned to all guests together",
    ),
    (
        "resident",
        "time average of the guest memory the host measured resident (real-memory mode only)",
    ),
    (
        "backed",
        "time average of assigned memory minus what the guests reported free (free page reporting) and have not used since: what the host must back",
    ),
    (
        "saved",
        "1 - assigned footprint / footprint of the static policy on the same scenario",
    ),
    (
        "slack",
        "time average over guests of the assigned memory the guest did not need, as a share of assigned",
    ),
    (
        "paging",
        "share of VM-seconds in which a guest wanted more memory than it had",
    ),
    (
        "paged",
        "integral over time and guests of demand above assigned memory",
    ),
    (
        "react p50 / p99",
        "median and 99th percentile of the time from a demand rise above assigned memory to the guest having enough again",
    ),
    ("churn/VM-h", "target changes per VM-hour"),
    (
        "balloon … populate",
        "protocol operations: DM balloon, unballoon and hot-add; Xen decrease_reservation and populate_physmap",
    ),
    ("failures", "host operations that failed or timed out"),
    (
        "hints",
        "free page reporting calls (cold discard hints); a +fpr row is the policy with every Dynamic Memory guest reporting",
    ),
];

/// Escapes text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A chart as a `<div class="chart">`, or the reason it could not be drawn (the rest of
/// the page is still worth having).
fn chart_block(svg: Result<String, charts::ChartError>) -> String {
    match svg {
        Ok(svg) => format!("<div class=\"chart\">{svg}</div>\n"),
        Err(e) => format!("<p class=\"error\">{}</p>\n", esc(&e.to_string())),
    }
}

/// The guests to draw one by one: the [`MAX_GUEST_CHARTS`] with the largest average
/// demand, in scenario order (indices into `guests`).
pub(crate) fn guests_to_draw(guests: &[GuestSeries]) -> Vec<usize> {
    let mean = |g: &GuestSeries| {
        if g.committed.is_empty() {
            0.0
        } else {
            g.committed.iter().map(|&c| c as f64).sum::<f64>() / g.committed.len() as f64
        }
    };
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by(|&a, &b| mean(&guests[b]).total_cmp(&mean(&guests[a])));
    order.truncate(MAX_GUEST_CHARTS);
    order.sort_unstable();
    order
}

/// Element-wise sums of one series over all guests, as long as the longest guest series.
fn sums(guests: &[GuestSeries], pick: impl Fn(&GuestSeries) -> &[u64]) -> Vec<u64> {
    let len = guests.iter().map(|g| pick(g).len()).max().unwrap_or(0);
    let mut out = vec![0u64; len];
    for g in guests {
        for (o, v) in out.iter_mut().zip(pick(g)) {
            *o = o.saturating_add(*v);
        }
    }
    out
}

/// The four lines of a guest (or of the sums over guests).
fn guest_lines<'a>(
    assigned: &'a [u64],
    target: &'a [u64],
    committed: &'a [u64],
    paged: &'a [u64],
) -> [Line<'a>; 4] {
    [
        Line {
            label: "assigned",
            color: colors::ASSIGNED,
            values: assigned,
            keep_peaks: false,
            width: 2,
        },
        Line {
            label: "target",
            color: colors::TARGET,
            values: target,
            keep_peaks: false,
            width: 1,
        },
        Line {
            label: "committed (demand)",
            color: colors::COMMITTED,
            values: committed,
            keep_peaks: true,
            width: 1,
        },
        Line {
            label: "paged",
            color: colors::PAGED,
            values: paged,
            keep_peaks: true,
            width: 2,
        },
    ]
}

/// An HTML legend for `lines`: a swatch of each line's colour and its label.
fn legend(lines: &[Line<'_>]) -> String {
    let mut out = String::from("<div class=\"keys\">");
    for l in lines {
        let c = l.color;
        let _ = write!(
            out,
            "<span class=\"key\"><i style=\"background:#{:02x}{:02x}{:02x}\"></i>{}</span>",
            c.0,
            c.1,
            c.2,
            esc(l.label)
        );
    }
    out.push_str("</div>\n");
    out
}

/// One policy's time series: host chart, sums chart (many guests), per-guest charts.
fn policy_section(out: &mut String, run: &PolicyRun, open: bool) {
    let s = &run.series;
    let label = crate::compare::run_label(&run.metrics.policy, run.metrics.free_page_reporting);
    let name = esc(&label);
    let _ = writeln!(
        out,
        "<details{} data-policy=\"{name}\"><summary>{name}</summary>",
        if open { " open" } else { "" }
    );
    if s.t_s.is_empty() {
        out.push_str("<p class=\"note\">This run recorded no time series.</p>\n</details>\n");
        return;
    }
    out.push_str("<h3>Host</h3>\n");
    let mut host = vec![Line {
        label: "host free",
        color: colors::HOST_FREE,
        values: &s.host_free,
        keep_peaks: false,
        width: 2,
    }];
    if !s.host_resident.is_empty() {
        host.push(Line {
            label: "measured resident",
            color: colors::RESIDENT,
            values: &s.host_resident,
            keep_peaks: true,
            width: 2,
        });
    }
    out.push_str(&legend(&host));
    if s.host_resident.is_empty() {
        out.push_str(
            "<p class=\"note\">No resident memory was measured (accounting mode has no \
             guest memory to measure).</p>\n",
        );
    }
    out.push_str(&chart_block(charts::time_chart(
        &format!("{label}: host memory"),
        &s.t_s,
        &host,
        WIDE,
    )));
    let drawn = guests_to_draw(&s.guests);
    if s.guests.len() > drawn.len() {
        let assigned = sums(&s.guests, |g| &g.assigned);
        let target = sums(&s.guests, |g| &g.target);
        let committed = sums(&s.guests, |g| &g.committed);
        let paged = sums(&s.guests, |g| &g.paged);
        let _ = writeln!(out, "<h3>All {} guests, summed</h3>", s.guests.len());
        let lines = guest_lines(&assigned, &target, &committed, &paged);
        out.push_str(&legend(&lines));
        out.push_str(&chart_block(charts::time_chart(
            &format!("{label}: sum over {} guests", s.guests.len()),
            &s.t_s,
            &lines,
            WIDE,
        )));
        let _ = writeln!(
            out,
            "<p class=\"note\">Below: the {} of {} guests with the largest average demand, \
             one chart each; the others appear only in the sums above.</p>",
            drawn.len(),
            s.guests.len()
        );
    }
    if !drawn.is_empty() {
        out.push_str("<h3>Guests</h3>\n");
        out.push_str(&legend(&guest_lines(&[], &[], &[], &[])));
        out.push_str("<div class=\"grid\">\n");
        for &i in &drawn {
            let g = &s.guests[i];
            let kind = match g.kind {
                crate::record::GuestKind::Dm => "DM",
                crate::record::GuestKind::Xen => "Xen",
            };
            out.push_str(&chart_block(charts::time_chart(
                &format!("{} ({kind})", g.name),
                &s.t_s,
                &guest_lines(&g.assigned, &g.target, &g.committed, &g.paged),
                SMALL,
            )));
        }
        out.push_str("</div>\n");
    }
    out.push_str("</details>\n");
}

/// The policy table, with each figure's `results.json` value in `data-value`.
fn metrics_table(out: &mut String, result: &RunResult) {
    let cols = table::Columns::for_result(result);
    out.push_str("<div class=\"scroll\"><table class=\"metrics\">\n<thead><tr>");
    for h in table::headers(cols) {
        // Non-breaking hyphens: a narrow column breaks "hot-add" at its spaces only.
        let _ = write!(out, "<th>{}</th>", esc(h).replace('-', "\u{2011}"));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for run in &result.policies {
        let _ = write!(out, "<tr data-policy=\"{}\">", esc(&run.metrics.policy));
        for Cell { key, text, raw, .. } in table::cells(run, cols) {
            let _ = write!(
                out,
                "<td data-metric=\"{key}\" data-value=\"{}\">{}</td>",
                esc(&raw),
                esc(&text)
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

/// The report as one HTML document.
///
/// Sections: the scenario (name, mode, guests, host memory, virtual duration, seed); the
/// policy table and a legend; with more than one policy, the footprint against paging
/// scatter; then per policy (the first one open) the host chart, with more than
/// [`MAX_GUEST_CHARTS`] guests a chart of the sums, and one chart per drawn guest.
pub fn html(result: &RunResult) -> String {
    let sc = &result.scenario;
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>ballast: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        esc(&sc.name)
    );
    let mode = match sc.mode {
        Mode::RealMemory => "real memory",
        Mode::Accounting => "accounting only",
    };
    let _ = write!(
        out,
        "<header>\n<h1>{}</h1>\n<p class=\"sub\">ballast simulation report: {} polic{}</p>\n\
         <dl class=\"facts\">\n",
        esc(&sc.name),
        result.policies.len(),
        if result.policies.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    for (k, v) in [
        ("mode", mode.to_owned()),
        ("guests", sc.guests.to_string()),
        ("host memory", format::bytes(sc.host_memory_bytes as f64)),
        ("virtual duration", format::duration(sc.duration_s)),
        ("seed", sc.seed.to_string()),
    ] {
        let _ = writeln!(out, "<div><dt>{k}</dt><dd>{}</dd></div>", esc(&v));
    }
    out.push_str("</dl>\n</header>\n");

    out.push_str("<section>\n<h2>Policies</h2>\n");
    if result.policies.is_empty() {
        out.push_str("<p class=\"note\">No policy ran.</p>\n");
    } else {
        metrics_table(&mut out, result);
    }
    out.push_str("<dl class=\"legend\">\n");
    let cols = table::Columns::for_result(result);
    for (k, v) in LEGEND.iter().filter(|(k, _)| match *k {
        "resident" => cols.with_resident,
        "backed" | "hints" => cols.with_reporting,
        _ => true,
    }) {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    out.push_str("</dl>\n</section>\n");

    if result.policies.len() > 1 {
        out.push_str(
            "<section>\n<h2>Footprint against paging</h2>\n<p class=\"note\">One point per \
             policy: lower uses less memory, further left makes guests page less.</p>\n",
        );
        out.push_str(&chart_block(charts::footprint_paging_scatter(result, WIDE)));
        out.push_str("</section>\n");
    }

    if !result.policies.is_empty() {
        out.push_str(
            "<section>\n<h2>Over time</h2>\n<p class=\"note\">Per guest: committed memory \
             (the guest's demand), the balancer's target, the memory assigned and the part of \
             demand above it (paged), in GiB. Long runs are thinned for drawing; demand and \
             paging keep each interval's peak.</p>\n",
        );
        for (i, run) in result.policies.iter().enumerate() {
            policy_section(&mut out, run, i == 0);
        }
        out.push_str("</section>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// Writes [`html`] to `path`.
pub fn write_html(result: &RunResult, path: impl AsRef<Path>) -> Result<(), ReportError> {
    write_file(path.as_ref(), &html(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::synthetic_result;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn largest_guests_are_drawn_in_order() {
        let r = synthetic_result(1, 30, 20);
        let g = &r.policies[0].series.guests;
        let drawn = guests_to_draw(g);
        assert_eq!(drawn.len(), MAX_GUEST_CHARTS);
        assert!(drawn.windows(2).all(|w| w[0] < w[1]));
        let mean = |i: usize| g[i].committed.iter().sum::<u64>();
        let smallest_drawn = drawn.iter().map(|&i| mean(i)).min().unwrap_or(0);
        for i in (0..g.len()).filter(|i| !drawn.contains(i)) {
            assert!(mean(i) <= smallest_drawn);
        }
    }

    #[test]
    fn sums_cover_ragged_series() {
        let r = synthetic_result(1, 2, 5);
        let mut g = r.policies[0].series.guests.clone();
        g[1].assigned.truncate(2);
        let s = sums(&g, |g| &g.assigned);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], g[0].assigned[0] + g[1].assigned[0]);
        assert_eq!(s[4], g[0].assigned[4]);
    }

    #[test]
    fn names_are_escaped_in_the_page() {
        let mut r = synthetic_result(1, 1, 5);
        r.scenario.name = "<script>".to_owned();
        r.policies[0].metrics.policy = "a\"b".to_owned();
        let page = html(&r);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("data-policy=\"a&quot;b\""));
    }
}
