//! `ballast compare` as a user runs it: the rows with free page reporting, the choice of
//! which to run, and the errors for what cannot run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ballast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("ballast runs")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ballast-compare-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn compare_runs_each_policy_with_and_without_reporting() {
    let dir = out_dir("both");
    let o = ballast(&[
        "compare",
        "../sim/scenarios/bursty.toml",
        "--mode",
        "accounting",
        "--duration",
        "120",
        "--policies",
        "ballast,static",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in ["ballast ", "ballast+fpr", "static ", "static+fpr"] {
        assert!(
            table.lines().any(|l| l.starts_with(row)),
            "no {row:?} row:\n{table}"
        );
    }
    assert!(
        table.contains("backed") && table.contains("hints"),
        "{table}"
    );
    let r = results(&dir);
    let runs = r["policies"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for p in runs {
        let assigned = p["footprint_assigned_bytes_avg"].as_f64().unwrap();
        let backed = p["footprint_backed_bytes_avg"].as_f64().unwrap();
        let hints = p["operations"]["hint"].as_u64().unwrap();
        if p["free_page_reporting"].as_bool().unwrap() {
            assert!(backed < assigned && hints > 0, "{p}");
        } else {
            assert!(backed == assigned && hints == 0, "{p}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_way_only_and_clear_errors() {
    let dir = out_dir("off");
    let o = ballast(&[
        "compare",
        "../sim/scenarios/bursty.toml",
        "--mode",
        "accounting",
        "--duration",
        "30",
        "--policies",
        "hyperv",
        "--free-page-reporting",
        "off",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(results(&dir)["policies"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);

    let o = ballast(&["compare", "--free-page-reporting", "sometimes"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sometimes") && err.contains("both"), "{err}");

    // A Xen guest cannot report: the scenario is refused, naming the field.
    let file = std::env::temp_dir().join(format!("ballast-xen-fpr-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        r#"name = "x"
host_memory = "2G"
duration_s = 10
[[guest]]
name = "x1"
kind = "xen"
startup = "512M"
minimum = "256M"
maximum = "1G"
free_page_reporting = true
workload = { kind = "idle", base = "100M" }
"#,
    )
    .unwrap();
    let o = ballast(&["compare", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("free_page_reporting") && err.contains("DM guests only"),
        "{err}"
    );
}
