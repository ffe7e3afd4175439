//! The report's outputs as their readers see them: `results.json` parsed back, the HTML
//! page searched for its charts and numbers, and the page opened in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ballast_sim::record::{Mode, RunResult};
use ballast_sim::report::{self, testing::synthetic_result};
use serde_json::Value;

/// A fresh directory for one test's files.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    dir
}

/// The charts a page for `r` must have: the scatter with more than one policy; per policy
/// with samples, the host chart, the sums chart past 12 guests, and one per drawn guest.
fn expected_charts(r: &RunResult) -> usize {
    let scatter = usize::from(r.policies.len() > 1);
    let per_policy: usize = r
        .policies
        .iter()
        .map(|p| {
            if p.series.t_s.is_empty() {
                0
            } else {
                let g = p.series.guests.len();
                1 + usize::from(g > 12) + g.min(12)
            }
        })
        .sum();
    scatter + per_policy
}

const POLICY_KEYS: [&str; 14] = [
    "policy",
    "free_page_reporting",
    "footprint_backed_bytes_avg",
    "footprint_assigned_bytes_avg",
    "footprint_resident_bytes_avg",
    "saved_vs_static_fraction",
    "slack_fraction",
    "paging_vm_seconds_fraction",
    "paged_byte_seconds",
    "reaction_p50_s",
    "reaction_p99_s",
    "churn_per_vm_hour",
    "operations",
    "wall_s",
];

const OPERATION_KEYS: [&str; 14] = [
    "balloon",
    "balloon_bytes",
    "unballoon",
    "unballoon_bytes",
    "hot_add",
    "hot_add_bytes",
    "decrease",
    "decrease_bytes",
    "populate",
    "populate_bytes",
    "target_changes",
    "failures",
    "hint",
    "hint_bytes",
];

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("results.json written");
    serde_json::from_str(&text).expect("results.json is valid JSON")
}

#[test]
fn results_json_has_every_key() {
    let r = synthetic_result(3, 4, 100);
    let path = out_dir("json").join("results.json");
    report::write_results_json(&r, &path).expect("written");
    let v = read_json(&path);
    let sc = &v["scenario"];
    for k in [
        "name",
        "guests",
        "host_memory_bytes",
        "duration_s",
        "seed",
        "mode",
    ] {
        assert!(sc.get(k).is_some(), "scenario.{k} missing");
    }
    assert_eq!(sc["mode"], "real-memory");
    assert_eq!(sc["guests"], 4);
    let policies = v["policies"].as_array().expect("policies is an array");
    assert_eq!(policies.len(), 3);
    for (p, run) in policies.iter().zip(&r.policies) {
        let obj = p.as_object().expect("a policy is an object");
        for k in POLICY_KEYS {
            assert!(obj.contains_key(k), "policies[].{k} missing");
        }
        assert!(
            !obj.contains_key("series"),
            "series belong to the page only"
        );
        for k in OPERATION_KEYS {
            assert!(p["operations"].get(k).is_some(), "operations.{k} missing");
        }
        assert_eq!(p["policy"], run.metrics.policy.as_str());
        assert_eq!(
            p["footprint_assigned_bytes_avg"].as_f64(),
            Some(run.metrics.footprint_assigned_bytes_avg)
        );
        assert!(p["footprint_resident_bytes_avg"].is_number());
    }
    // The text form and the file agree, and the file reads back into the record.
    assert_eq!(
        report::results_json(&r),
        std::fs::read_to_string(&path).unwrap()
    );
    let back: RunResult = serde_json::from_value(v).expect("reads back");
    assert_eq!(back.policies[1].metrics, r.policies[1].metrics);
}

#[test]
fn accounting_mode_writes_null_resident() {
    let mut r = synthetic_result(2, 2, 10);
    r.scenario.mode = Mode::Accounting;
    for p in &mut r.policies {
        p.metrics.footprint_resident_bytes_avg = None;
        p.series.host_resident.clear();
    }
    let v: Value = serde_json::from_str(&report::results_json(&r)).expect("valid");
    assert_eq!(v["scenario"]["mode"], "accounting");
    assert!(v["policies"][0]["footprint_resident_bytes_avg"].is_null());
    let page = report::html(&r);
    assert!(page.contains("accounting only"));
    assert!(
        !page.contains(">measured resident<"),
        "no resident line without samples"
    );
    assert_eq!(page.matches("<svg").count(), expected_charts(&r));
}

#[test]
fn write_to_a_missing_directory_is_an_error() {
    let r = synthetic_result(1, 1, 3);
    let dir = out_dir("missing").join("no").join("such");
    let e = report::write_results_json(&r, dir.join("results.json")).unwrap_err();
    assert!(e.to_string().contains("results.json"), "{e}");
    assert!(report::write_html(&r, dir.join("report.html")).is_err());
}

#[test]
fn html_names_no_url_and_loads_nothing() {
    for r in [synthetic_result(3, 14, 300), synthetic_result(1, 1, 0)] {
        let page = report::html(&r);
        assert!(!page.contains("http://"), "the page names a URL");
        assert!(!page.contains("https://"), "the page names a URL");
        for fetch in ["<script", "<link", "<img", "src=", "url(", "@import"] {
            assert!(
                !page.contains(fetch),
                "the page could fetch through {fetch}"
            );
        }
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
    }
}

#[test]
fn html_has_one_svg_per_chart() {
    let mut empty_series = synthetic_result(2, 3, 50);
    empty_series.policies[1].series = Default::default();
    let mut no_policy = synthetic_result(1, 1, 1);
    no_policy.policies.clear();
    for (what, r) in [
        ("three policies, four guests", synthetic_result(3, 4, 200)),
        ("one policy", synthetic_result(1, 5, 200)),
        ("more guests than are drawn", synthetic_result(2, 20, 100)),
        ("exactly twelve guests", synthetic_result(2, 12, 30)),
        ("no samples", synthetic_result(2, 3, 0)),
        ("a policy without series", empty_series),
        ("no policy", no_policy),
    ] {
        let page = report::html(&r);
        assert_eq!(
            page.matches("<svg").count(),
            expected_charts(&r),
            "{what}: wrong number of charts"
        );
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
        assert_eq!(
            page.contains("Footprint against paging"),
            r.policies.len() > 1,
            "{what}: scatter shown iff more than one policy"
        );
    }
    let many = report::html(&synthetic_result(1, 20, 50));
    assert!(many.contains("the 12 of 20 guests with the largest average demand"));
    assert!(many.contains("All 20 guests, summed"));
}

/// The `data-value` of each `data-metric` cell in the row of `policy`.
fn row_values(page: &str, policy: &str) -> Vec<(String, String, String)> {
    let start = page
        .find(&format!("<tr data-policy=\"{policy}\">"))
        .unwrap_or_else(|| panic!("no row for {policy}"));
    let row = &page[start..start + page[start..].find("</tr>").expect("row ends")];
    row.split("<td data-metric=\"")
        .skip(1)
        .map(|cell| {
            let (key, rest) = cell.split_once("\" data-value=\"").expect("data-value");
            let (value, rest) = rest.split_once("\">").expect("cell text");
            let (text, _) = rest.split_once("</td>").expect("cell ends");
            (key.to_owned(), value.to_owned(), text.to_owned())
        })
        .collect()
}

/// The value at a dotted key (`operations.balloon`).
fn at<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn table_numbers_match_results_json() {
    let mut r = synthetic_result(3, 4, 100);
    r.policies[2].metrics.reaction_p99_s = None;
    let json: Value = serde_json::from_str(&report::results_json(&r)).expect("valid");
    let page = report::html(&r);
    let table = report::summary_table(&r);
    for (p, run) in json["policies"].as_array().unwrap().iter().zip(&r.policies) {
        let name = p["policy"].as_str().unwrap();
        let cells = row_values(&page, name);
        assert_eq!(cells.len(), 16, "every column of the row");
        for (key, value, text) in cells {
            let want = at(p, &key);
            let value = value.replace("&quot;", "\"").replace("&amp;", "&");
            let got: Value = serde_json::from_str(&value).expect("data-value is JSON");
            match (want.as_f64(), got.as_f64()) {
                (Some(w), Some(g)) => assert_eq!(w, g, "{name}.{key}"),
                _ => assert_eq!(want, &got, "{name}.{key}"),
            }
            if key != "policy" {
                // The terminal shows the same text as the page.
                assert!(
                    table.contains(&text),
                    "{name}.{key}: {text} not in\n{table}"
                );
            }
        }
        let m = &run.metrics;
        let shown = report::format::bytes(m.footprint_assigned_bytes_avg);
        assert!(page.contains(&format!(">{shown}</td>")));
        assert!(page.contains(&format!(
            ">{}</td>",
            report::format::percent(m.slack_fraction)
        )));
    }
}

#[test]
fn nan_and_odd_input_do_not_panic() {
    let mut r = synthetic_result(3, 3, 40);
    let m = &mut r.policies[0].metrics;
    m.footprint_assigned_bytes_avg = f64::NAN;
    m.paging_vm_seconds_fraction = f64::INFINITY;
    m.reaction_p50_s = Some(f64::NAN);
    r.policies[1].series.t_s[3] = f64::NAN;
    r.policies[1].series.guests[0].assigned.truncate(5);
    r.policies[2].series.host_free.clear();
    r.scenario.duration_s = f64::NAN;
    let json: Value = serde_json::from_str(&report::results_json(&r)).expect("valid JSON");
    assert!(json["policies"][0]["footprint_assigned_bytes_avg"].is_null());
    assert!(json["scenario"]["duration_s"].is_null());
    let page = report::html(&r);
    assert_eq!(page.matches("<svg").count(), expected_charts(&r));
    assert!(page.contains(">NaN</td>"));
    assert!(report::summary_table(&r).contains("NaN"));
}

/// Runs `cmd` for at most `limit` and returns what it printed on stdout. Output goes to
/// files, not pipes: a dumped DOM is megabytes, and a full pipe nobody reads would stall
/// the browser.
fn run(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> String {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium failed: {status}\n{stderr}");
    std::fs::read_to_string(&out_path).expect("chromium's output")
}

#[test]
fn report_renders_in_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("chromium is not installed: install it (apt-get install chromium; scripts/test does)")
        });
    let dir = out_dir("chromium");
    let r = synthetic_result(4, 16, 3000);
    let html = dir.join("report.html");
    report::write_html(&r, &html).expect("written");
    report::write_results_json(&r, dir.join("results.json")).expect("written");
    let png = dir.join("report.png");
    let url = format!("file://{}", html.display());
    let common = |cmd: &mut Command, profile: &str| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.join(profile).display()));
    };
    let mut shot = Command::new(&chromium);
    common(&mut shot, "profile-shot");
    shot.arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2000")
        .arg(&url);
    run(shot, &dir, "screenshot", Duration::from_secs(120));
    let size = std::fs::metadata(&png).expect("screenshot written").len();
    assert!(
        size > 50_000,
        "screenshot is only {size} bytes: the page looks empty"
    );

    let mut dump = Command::new(&chromium);
    common(&mut dump, "profile-dom");
    dump.arg("--dump-dom").arg(&url);
    let dom = run(dump, &dir, "dump-dom", Duration::from_secs(120));
    assert_eq!(
        dom.matches("<svg").count(),
        expected_charts(&r),
        "svg elements in the DOM"
    );
    assert!(dom.contains("<polyline"), "the charts have lines");
    assert!(dom.contains("footprint against paging"));
    for p in &r.policies {
        assert!(dom.contains(&format!("data-policy=\"{}\"", p.metrics.policy)));
    }
    eprintln!("screenshot: {}", png.display());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..Default::default()
    })]

    /// Whatever the sizes and however broken the figures and series, the three outputs
    /// are produced, the JSON parses and the page has its charts.
    #[test]
    fn any_run_gives_valid_outputs(
        policies in 0usize..4,
        guests in 0usize..15,
        points in 0usize..60,
        bad_metric in proptest::num::f64::ANY,
        cut in 0usize..60,
        bad_time in proptest::option::of(proptest::num::f64::ANY),
    ) {
        let mut r = synthetic_result(policies, guests, points);
        if let Some(p) = r.policies.first_mut() {
            p.metrics.slack_fraction = bad_metric;
            p.metrics.paging_vm_seconds_fraction = bad_metric;
            p.metrics.footprint_assigned_bytes_avg = bad_metric;
            if let Some(g) = p.series.guests.first_mut() {
                g.paged.truncate(cut);
                g.committed.truncate(cut / 2);
            }
            if let (Some(t), Some(bad)) = (p.series.t_s.get_mut(cut), bad_time) {
                *t = bad;
            }
        }
        let json: Value = serde_json::from_str(&report::results_json(&r)).expect("valid JSON");
        proptest::prop_assert_eq!(json["policies"].as_array().map(Vec::len), Some(policies));
        proptest::prop_assert_eq!(report::summary_table(&r).lines().count(), policies + 2);
        let page = report::html(&r);
        proptest::prop_assert_eq!(page.matches("<svg").count(), expected_charts(&r));
        proptest::prop_assert!(!page.contains("class=\"error\""), "a chart failed to draw");
    }
}

#[test]
fn a_large_trace_gives_a_page_of_bounded_size() {
    // A hundred guests, six policies, long series: the page thins and picks guests, so it
    // stays a size a browser opens at once.
    let r = synthetic_result(6, 100, 5000);
    let start = Instant::now();
    let page = report::html(&r);
    let took = start.elapsed();
    assert_eq!(page.matches("<svg").count(), 1 + 6 * (1 + 1 + 12));
    assert!(page.len() < 16 << 20, "page is {} bytes", page.len());
    eprintln!("large page: {} bytes in {took:?}", page.len());
    let path = out_dir("large").join("report.html");
    report::write_html(&r, &path).expect("written");
}

#[test]
fn one_policy_accounting_page_and_table() {
    let mut r = synthetic_result(1, 3, 400);
    r.scenario.mode = Mode::Accounting;
    r.policies[0].metrics.footprint_resident_bytes_avg = None;
    r.policies[0].series.host_resident.clear();
    let dir = out_dir("accounting");
    report::write_html(&r, dir.join("report.html")).expect("written");
    let table = report::summary_table(&r);
    std::fs::write(dir.join("table.txt"), &table).expect("written");
    let page = report::html(&r);
    assert!(!page.contains("Footprint against paging"));
    assert_eq!(page.matches("<svg").count(), 1 + 3);
    assert!(
        !page.contains("All 3 guests"),
        "no sums chart for a few guests"
    );
    assert!(
        !page.contains("<dt>resident</dt>"),
        "no legend for a column not shown"
    );
    assert!(page.contains("No resident memory was measured"));
    assert_eq!(table.lines().count(), 3);
}
