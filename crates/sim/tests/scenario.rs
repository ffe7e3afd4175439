//! Scenarios end to end: the bundled files, TOML round trips, validation, loading from a
//! file, and scenarios built from a trace.

use std::path::{Path, PathBuf};

use ballast_sim::record::{GuestKind, Mode};
use ballast_sim::scenario::{
    BUNDLED, GRANULE, Scenario, ScenarioError, TRACE_HYPERVISOR_SHARE, TRACE_TICK_S,
};
use ballast_sim::size::{GIB, MIB};
use ballast_sim::trace::Trace;
use ballast_sim::workload::WorkloadSpec;

/// The bundled Bitbrains trace, `traces/bitbrains-gwa-t-12-rnd/vm_mem.csv` at the
/// workspace root (it is part of the repository, so its absence is a failure).
fn bundled_trace() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces/bitbrains-gwa-t-12-rnd/vm_mem.csv");
    assert!(
        path.exists(),
        "the bundled trace is missing: {}",
        path.display()
    );
    Some(path)
}

/// A fresh directory for this test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-sim-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const ONE_GUEST: &str = r#"
name = "t"
host_memory = "4G"
duration_s = 60
[[guest]]
name = "a"
kind = "xen"
startup = "1G"
minimum = "512M"
maximum = "2G"
workload = { kind = "steady", level = "600M" }
"#;

#[test]
fn bundled_scenarios_parse_and_validate() {
    for (name, _) in BUNDLED {
        let s = Scenario::bundled(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.validate().unwrap();
        assert_eq!(s.name, name);
        let workloads = s.workloads().unwrap();
        assert_eq!(workloads.len(), s.guests.len());
        // Overcommitted: the maxima together exceed the host, the startups fit.
        assert!(s.total_maximum() > s.host_memory, "{name}");
        assert!(s.total_startup() <= s.host_memory, "{name}");
        // No guest demands more than its maximum: shortfalls come from balancing.
        for (g, w) in s.guests.iter().zip(&workloads) {
            assert!(w.max_demand() <= g.maximum, "{name}: {}", g.name);
        }
        assert_eq!(s.mode, Mode::RealMemory, "{name}");
    }
    assert!(matches!(
        Scenario::bundled("nope"),
        Err(ScenarioError::NoSuchBundled(_))
    ));
}

#[test]
fn default_scenario_has_the_promised_shape() {
    let s = Scenario::default_scenario().unwrap();
    assert_eq!(s.guests.len(), 8);
    assert_eq!(
        s.guests.iter().filter(|g| g.kind == GuestKind::Dm).count(),
        4
    );
    assert_eq!(
        s.guests.iter().filter(|g| g.kind == GuestKind::Xen).count(),
        4
    );
    assert!((10 * GIB..=12 * GIB).contains(&s.host_memory));
    assert!((6 * GIB..=8 * GIB).contains(&s.total_startup()));
    assert_eq!(s.duration_s, 600.0);
    let kinds: Vec<&str> = s.guests.iter().map(|g| g.workload.kind_name()).collect();
    for k in ["idle", "steady", "ramp", "bursty", "diurnal"] {
        assert!(kinds.contains(&k), "no {k} workload");
    }
    // The peaks do not all coincide: the busiest second differs between guests, and the
    // host total's peak is below the sum of the guests' peaks.
    let workloads = s.workloads().unwrap();
    let mut busiest = Vec::new();
    let mut sum_of_peaks = 0;
    for w in &workloads {
        let (t, peak) = (0..600u32)
            .map(|t| (t, w.demand_at(f64::from(t))))
            .max_by_key(|&(_, d)| d)
            .unwrap();
        busiest.push(t);
        sum_of_peaks += peak;
    }
    busiest.sort_unstable();
    busiest.dedup();
    assert!(busiest.len() >= 5, "{busiest:?}");
    let peak_of_sum = (0..600u32)
        .map(|t| {
            workloads
                .iter()
                .map(|w| w.demand_at(f64::from(t)))
                .sum::<u64>()
        })
        .max()
        .unwrap();
    assert!(
        peak_of_sum < sum_of_peaks * 9 / 10,
        "{peak_of_sum} vs {sum_of_peaks}"
    );
    // Yet at its peak the demand exceeds what the guests boot with, so the startups
    // (what `static` keeps) cannot serve it: memory has to move to the busy guests.
    assert!(
        peak_of_sum > s.total_startup(),
        "{peak_of_sum} vs {}",
        s.total_startup()
    );
}

#[test]
fn diurnal_and_bursty_scenarios() {
    let d = Scenario::bundled("diurnal").unwrap();
    assert_eq!(d.guests.len(), 12);
    assert_eq!(d.guests[0].name, "office-1");
    assert_eq!(d.guests[3].name, "office-4");
    let b = Scenario::bundled("bursty").unwrap();
    let bursty = b
        .guests
        .iter()
        .filter(|g| matches!(g.workload, WorkloadSpec::Bursty { .. }))
        .count();
    assert!(bursty * 2 > b.guests.len());
    // The copies of one table differ: each guest's randomness is its own.
    let w = b.workloads().unwrap();
    let series = |i: usize| {
        (0..600u32)
            .map(|t| w[i].demand_at(f64::from(t)))
            .collect::<Vec<_>>()
    };
    assert_ne!(series(0), series(1));
}

#[test]
fn toml_round_trip() {
    for (name, _) in BUNDLED {
        let s = Scenario::bundled(name).unwrap();
        let text = s.to_toml_string().unwrap();
        let back = Scenario::from_toml_str(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(back, s, "{name}");
    }
}

/// The error of `ONE_GUEST` with `from` replaced by `to`, as text.
fn error_with(from: &str, to: &str) -> String {
    let text = ONE_GUEST.replace(from, to);
    assert_ne!(text, ONE_GUEST, "{from} not in the template");
    match Scenario::from_toml_str(&text) {
        Ok(_) => panic!("{from} -> {to} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn validation_errors_name_the_field() {
    let cases = [
        (
            "minimum = \"512M\"",
            "minimum = \"1.5G\"",
            "guest \"a\".minimum",
        ),
        (
            "maximum = \"2G\"",
            "maximum = \"768M\"",
            "guest \"a\".maximum",
        ),
        ("minimum = \"512M\"", "minimum = 0", "guest \"a\".minimum"),
        ("duration_s = 60", "duration_s = 0", "duration_s"),
        ("duration_s = 60", "duration_s = 60\ntick_s = 61", "tick_s"),
        ("duration_s = 60", "duration_s = 60\ntick_s = -1", "tick_s"),
        (
            "duration_s = 60",
            "duration_s = 60\nreserve = \"4G\"",
            "reserve",
        ),
        (
            "duration_s = 60",
            "duration_s = 60\npolicy = \"\"",
            "policy",
        ),
        (
            "duration_s = 60",
            "duration_s = 60\npost_caps_wait_s = -1",
            "post_caps_wait_s",
        ),
        ("name = \"t\"", "name = \"\"", "name"),
        (
            "kind = \"xen\"",
            "kind = \"xen\"\nbuffer = 2",
            "guest \"a\".buffer",
        ),
        (
            "kind = \"xen\"",
            "kind = \"xen\"\nweight = 101",
            "guest \"a\".weight",
        ),
        (
            "kind = \"xen\"",
            "kind = \"xen\"\nvps = 0",
            "guest \"a\".vps",
        ),
        (
            "kind = \"xen\"",
            "kind = \"xen\"\ncount = 0",
            "guest \"a\".count",
        ),
        (
            "host_memory = \"4G\"",
            "host_memory = \"768M\"",
            "startup memory",
        ),
        (
            "level = \"600M\"",
            "level = \"600M\", noise_percent = 500",
            "guest \"a\" workload",
        ),
    ];
    for (from, to, field) in cases {
        let e = error_with(from, to);
        assert!(e.contains(field), "{from} -> {to}: {e}");
        assert!(e.starts_with("<string>:"), "{e}");
    }
    // No guest at all.
    let e = Scenario::from_toml_str("name = \"t\"\nhost_memory = \"1G\"\nduration_s = 1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no guest"), "{e}");
    // Duplicate names, also through count.
    let two = format!(
        "{ONE_GUEST}{}",
        &ONE_GUEST[ONE_GUEST.find("[[guest]]").unwrap()..]
    );
    assert!(
        Scenario::from_toml_str(&two)
            .unwrap_err()
            .to_string()
            .contains("another guest")
    );
    let stamped = two
        .replacen("name = \"a\"", "name = \"a\"\ncount = 2", 1)
        .replace(
            "name = \"a\"\nkind = \"xen\"\nstartup",
            "name = \"a-2\"\nkind = \"xen\"\nstartup",
        );
    let e = Scenario::from_toml_str(&stamped).unwrap_err().to_string();
    assert!(e.contains("\"a-2\".name"), "{e}");
}

#[test]
fn parse_errors_name_the_key() {
    for (from, to, key) in [
        ("startup = \"1G\"", "startp = \"1G\"", "startp"),
        ("startup = \"1G\"", "startup = \"1Q\"", "1Q"),
        ("kind = \"xen\"", "kind = \"kvm\"", "kvm"),
        ("level = \"600M\"", "levl = \"600M\"", "levl"),
        ("duration_s = 60", "duration_s = \"long\"", "duration_s"),
    ] {
        let e = error_with(from, to);
        assert!(e.contains(key), "{from} -> {to}: {e}");
        assert!(e.contains("line"), "{e}");
    }
}

#[test]
fn count_stamps_copies() {
    let s = Scenario::from_toml_str(
        &ONE_GUEST
            .replace("kind = \"xen\"", "kind = \"xen\"\ncount = 3")
            .replace("\"4G\"", "\"8G\""),
    )
    .unwrap();
    let names: Vec<&str> = s.guests.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["a-1", "a-2", "a-3"]);
    assert!(
        s.guests
            .iter()
            .all(|g| g.startup == GIB && g.kind == GuestKind::Xen)
    );
}

#[test]
fn load_names_the_file_and_resolves_trace_paths() {
    let dir = temp_dir("load");
    let trace = "vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes\n\
                 9,0,2147483648,104857600\n9,300,2147483648,209715200\n";
    std::fs::write(dir.join("small.csv"), trace).unwrap();
    let text = ONE_GUEST.replace(
        "{ kind = \"steady\", level = \"600M\" }",
        "{ kind = \"trace\", file = \"small.csv\", vm_id = 9 }",
    );
    let path = dir.join("s.toml");
    std::fs::write(&path, &text).unwrap();
    let s = Scenario::load(&path).unwrap();
    let WorkloadSpec::Trace { file, .. } = &s.guests[0].workload else {
        panic!("not a trace workload");
    };
    assert_eq!(file, &dir.join("small.csv"));
    let w = s.workloads().unwrap();
    // 256 MiB base + 1.25 × 150 MiB at t = 150.
    assert_eq!(
        w[0].demand_at(150.0),
        256 * MIB + 150 * MIB * 5 / 4 / 4096 * 4096
    );
    // A missing VM is named when the workloads are built.
    std::fs::write(&path, text.replace("vm_id = 9", "vm_id = 8")).unwrap();
    let e = Scenario::load(&path)
        .unwrap()
        .workloads()
        .unwrap_err()
        .to_string();
    assert!(e.contains("no VM 8"), "{e}");
    // A bad file is named with its line.
    std::fs::write(&path, text.replace("startup = \"1G\"", "startup = true")).unwrap();
    let e = Scenario::load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(e.contains("line"), "{e}");
    let e = Scenario::load(dir.join("absent.toml")).unwrap_err();
    assert!(matches!(e, ScenarioError::Read { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_bundled_trace_reads() {
    let Some(path) = bundled_trace() else { return };
    let t = Trace::load(&path).unwrap();
    assert_eq!(t.vms.len(), 100);
    assert_eq!(t.samples(), 57_588);
    let total = t.total_capacity() as f64 / GIB as f64;
    assert!((total - 698.0).abs() < 1.0, "{total}");
    assert!(
        t.vms
            .iter()
            .all(|vm| (575..=576).contains(&vm.samples.len()))
    );
    let (first, last) = t.time_range();
    assert!((0.0..600.0).contains(&first) && (172_000.0..172_800.0).contains(&last));
    assert_eq!(t.vms[0].vm_id, 1);
    assert_eq!(t.vms[0].capacity, 8 * GIB);
}

#[test]
fn from_trace_defaults() {
    let Some(path) = bundled_trace() else { return };
    let trace = Trace::load(&path).unwrap();
    let s = Scenario::from_trace(&path, None).unwrap();
    assert_eq!(s.guests.len(), 100);
    assert_eq!(s.tick_s, TRACE_TICK_S);
    // Every VM's provisioned memory, the hypervisor's share per VM and the reserve.
    let overhead = 100 * TRACE_HYPERVISOR_SHARE + s.reserve;
    assert_eq!(s.host_memory, s.total_startup() + overhead);
    // 698 GiB is more than half of any test machine: accounting.
    assert_eq!(s.mode, Mode::Accounting);
    assert!(s.duration_s >= 172_500.0 && s.duration_s <= 172_800.0);
    assert_eq!(s.duration_s % TRACE_TICK_S, 0.0);
    for (i, (g, vm)) in s.guests.iter().zip(&trace.vms).enumerate() {
        assert_eq!(g.name, format!("vm-{}", vm.vm_id));
        assert_eq!(
            g.kind,
            if i % 2 == 0 {
                GuestKind::Dm
            } else {
                GuestKind::Xen
            }
        );
        assert!(g.startup >= vm.capacity && g.startup - vm.capacity < GRANULE);
        assert_eq!(g.startup % GRANULE, 0);
        assert_eq!(g.maximum, g.startup);
        assert_eq!(g.minimum, g.startup.min(512 * MIB));
        assert_eq!((g.buffer, g.weight), (20, 50));
    }
    // Every guest's demand stays within its size; a 48 h sweep of 100 guests is cheap.
    let workloads = s.workloads().unwrap();
    let started = std::time::Instant::now();
    let mut total_peak = 0u64;
    for (g, w) in s.guests.iter().zip(&workloads) {
        let mut t = 0.0;
        while t <= s.duration_s {
            assert!(w.demand_at(t) <= g.maximum);
            t += s.tick_s;
        }
        total_peak += w.peak_between(0.0, s.duration_s);
    }
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    // Committed memory is far below provisioned memory (the trace's point): all guests
    // together peak under half of it and average under a fifth.
    let sums: Vec<u64> = (0..=(s.duration_s / 300.0) as u32)
        .map(|i| {
            workloads
                .iter()
                .map(|w| w.demand_at(f64::from(i) * 300.0))
                .sum()
        })
        .collect();
    let max_sum = *sums.iter().max().unwrap();
    let mean_sum = sums.iter().sum::<u64>() / sums.len() as u64;
    eprintln!(
        "trace: sum of peaks {} GiB, peak of sum {} GiB, mean {} GiB, host {} GiB",
        total_peak / GIB,
        max_sum / GIB,
        mean_sum / GIB,
        s.host_memory / GIB
    );
    assert!(total_peak < s.host_memory, "{total_peak}");
    assert!(max_sum < s.host_memory / 2, "{max_sum}");
    assert!(mean_sum < s.host_memory / 5, "{mean_sum}");
    // A smaller host scales the startups down so they boot.
    let small = Scenario::from_trace(&path, Some(300 * GIB)).unwrap();
    assert!(small.total_startup() <= 300 * GIB);
    assert!(
        small
            .guests
            .iter()
            .all(|g| g.minimum <= g.startup && g.startup <= g.maximum)
    );
    // Too small for even the minima: validation says so.
    let e = Scenario::from_trace(&path, Some(10 * GIB))
        .unwrap_err()
        .to_string();
    assert!(e.contains("startup memory"), "{e}");
    // Round trip through TOML.
    let back = Scenario::from_toml_str(&s.to_toml_string().unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn from_trace_on_a_small_file() {
    let dir = temp_dir("from-trace");
    let path = dir.join("t.csv");
    std::fs::write(
        &path,
        "vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes\n\
         1,0,1073741824,1\n1,300,1073741824,2\n\
         2,10,104857601,3\n2,310,104857600,4\n\
         3,20,4294967296,5\n",
    )
    .unwrap();
    let s = Scenario::from_trace(&path, None).unwrap();
    let kinds: Vec<GuestKind> = s.guests.iter().map(|g| g.kind).collect();
    assert_eq!(kinds, [GuestKind::Dm, GuestKind::Xen, GuestKind::Dm]);
    // 100 MiB + 1 byte rounds up to 102 MiB; a tiny VM keeps its size as minimum.
    assert_eq!(s.guests[1].startup, 102 * MIB);
    assert_eq!(s.guests[1].minimum, 102 * MIB);
    assert_eq!(s.guests[0].minimum, 512 * MIB);
    assert_eq!(
        s.host_memory,
        GIB + 102 * MIB + 4 * GIB + 3 * TRACE_HYPERVISOR_SHARE + s.reserve
    );
    assert_eq!(s.duration_s, 310.0);
    assert_eq!(s.name, "trace:t");
    std::fs::write(
        &path,
        "vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes\n1,0,10,11\n",
    )
    .unwrap();
    let e = Scenario::from_trace(&path, None).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn count_is_bounded() {
    let e = error_with("kind = \"xen\"", "kind = \"xen\"\ncount = 4000000000");
    assert!(e.contains("more than"), "{e}");
}

/// What a guest needs at `t`, bytes, as the host must back it: a Dynamic Memory guest
/// (Linux `hv_balloon`) keeps its balloon floor free on top of its demand, and the floor
/// grows with the memory the guest manages (its startup, or more once hot-added).
fn host_need(kind: GuestKind, startup: u64, demand: u64, managed: &mut u64) -> u64 {
    const PAGE: u64 = 4096;
    match kind {
        GuestKind::Dm => {
            let floor =
                |total: u64| ballast_dm::vsc::compute_balloon_floor(total.div_ceil(PAGE)) * PAGE;
            let mut need = demand + floor((*managed).max(startup));
            // Memory hot-added to back the need stays: the floor follows it.
            if need > *managed {
                *managed = need;
                need = demand + floor(*managed);
            }
            need
        }
        GuestKind::Xen => demand,
    }
}

/// The bundled scenarios are feasible: at every moment the guests' needs (at least their
/// minimums) with 10 % headroom fit in the host less its reserve, so a policy that knew
/// the future could serve every guest. Yet they are contended: the maxima together exceed
/// the host, and the guests' startups (what `static` gives for ever) are short of the
/// demand for a good share of the run.
#[test]
fn bundled_scenarios_are_feasible_but_contended() {
    let mut failed = Vec::new();
    for (name, _) in BUNDLED {
        let s = Scenario::bundled(name).unwrap();
        let workloads = s.workloads().unwrap();
        let usable = s.host_memory - s.reserve;
        let mut managed: Vec<u64> = s.guests.iter().map(|g| g.startup).collect();
        let (mut worst, mut short_samples, mut samples) = (0u64, 0u64, 0u64);
        let mut t = 0.0;
        while t <= s.duration_s {
            let mut total = 0;
            for (i, (g, w)) in s.guests.iter().zip(&workloads).enumerate() {
                let d = w.demand_at(t);
                let need = host_need(g.kind, g.startup, d, &mut managed[i]);
                total += need.max(g.minimum);
                samples += 1;
                short_samples += u64::from(d > g.startup);
            }
            worst = worst.max(total);
            t += s.tick_s;
        }
        let worst_with_headroom = worst + worst / 10;
        let short = short_samples as f64 / samples as f64;
        println!(
            "{name}: peak need {:.2} GiB (+10 % {:.2}) of {:.2} GiB usable; demand above startup {:.1} %",
            worst as f64 / GIB as f64,
            worst_with_headroom as f64 / GIB as f64,
            usable as f64 / GIB as f64,
            short * 100.0
        );
        if worst_with_headroom > usable || s.total_maximum() <= s.host_memory || short <= 0.05 {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}
