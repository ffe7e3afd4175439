//! Whole runs through a real host: both guest kinds, real memory, every tick checked.

use ballast_balancer::VmSettings;
use ballast_sim::engine::{Demand, GuestSpec, RunConfig, run};
use ballast_sim::record::{GuestKind, Mode};

const MIB: u64 = 1 << 20;

/// Demand that steps between two levels: `low` until `at_s`, `high` until `until_s`, then
/// `low` again.
struct Step {
    low: u64,
    high: u64,
    at_s: f64,
    until_s: f64,
}

impl Demand for Step {
    fn demand_at(&mut self, t: f64) -> u64 {
        if t >= self.at_s && t < self.until_s {
            self.high
        } else {
            self.low
        }
    }
    fn peak_between(&mut self, t0: f64, t1: f64) -> u64 {
        if t1 >= self.at_s && t0 < self.until_s {
            self.high
        } else {
            self.low
        }
    }
}

fn guest(name: &str, kind: GuestKind, low: u64, high: u64, at: f64) -> GuestSpec {
    GuestSpec {
        name: name.into(),
        kind,
        settings: VmSettings {
            startup: 256 * MIB,
            minimum: 128 * MIB,
            maximum: 768 * MIB,
            buffer_percent: 20,
            weight: 50,
        },
        vps: 2,
        demand: Box::new(Step {
            low,
            high,
            at_s: at,
            until_s: at + 40.0,
        }),
        free_page_reporting: false,
    }
}

fn config(mode: Mode, check: bool) -> RunConfig {
    RunConfig {
        host_memory: 2048 * MIB,
        reserve: 64 * MIB,
        duration_s: 150.0,
        tick_s: 1.0,
        mode,
        post_caps_wait_s: 2.0,
        lookahead_s: 30.0,
        check_every_tick: check,
    }
}

fn guests() -> Vec<GuestSpec> {
    vec![
        guest("dm-a", GuestKind::Dm, 60 * MIB, 500 * MIB, 30.0),
        guest("dm-b", GuestKind::Dm, 80 * MIB, 200 * MIB, 60.0),
        guest("xen-a", GuestKind::Xen, 70 * MIB, 450 * MIB, 45.0),
        guest("xen-b", GuestKind::Xen, 90 * MIB, 150 * MIB, 80.0),
    ]
}

#[test]
fn both_guest_kinds_balance_on_real_memory_with_invariants_and_clean_audits_every_tick() {
    let r = run(
        &config(Mode::RealMemory, true),
        "hyperv",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    let m = &r.metrics;
    let ops = m.operations;
    assert!(
        ops.balloon > 0 && ops.balloon_bytes > 0,
        "DM guests ballooned: {ops:?}"
    );
    assert!(
        ops.hot_add > 0 || ops.unballoon > 0,
        "DM guests grew: {ops:?}"
    );
    assert!(
        ops.decrease > 0 && ops.populate > 0,
        "Xen guests moved: {ops:?}"
    );
    assert!(m.paging_vm_seconds_fraction < 0.2, "{m:?}");
    // Memory followed demand both ways: each guest reached its high demand while it
    // lasted, and gave memory back once it had passed.
    for g in &r.series.guests {
        let peak_demand = *g.committed.iter().max().unwrap();
        let peak_assigned = *g.assigned.iter().max().unwrap();
        let last = *g.assigned.last().unwrap();
        assert!(
            peak_assigned >= peak_demand,
            "{}: {peak_assigned} < {peak_demand}",
            g.name
        );
        assert!(
            last + 64 * MIB <= peak_assigned,
            "{}: still {last} bytes after a peak of {peak_assigned}",
            g.name
        );
    }
}

#[test]
fn resident_memory_follows_assigned_memory() {
    let r = run(
        &config(Mode::RealMemory, false),
        "hyperv",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    let s = &r.series;
    assert_eq!(s.host_resident.len(), s.t_s.len());
    // Every guest writes every page it is given, so what the host holds resident is what
    // the guests hold, within 4 MiB per guest (pages in flight within a tick).
    let tolerance = 4 * 4 * MIB;
    for (i, &res) in s.host_resident.iter().enumerate() {
        let assigned: u64 = s.guests.iter().map(|g| g.assigned[i]).sum();
        assert!(
            res <= assigned,
            "t={}: resident {res} > assigned {assigned}",
            s.t_s[i]
        );
        assert!(
            assigned - res <= tolerance,
            "t={}: resident {res} trails assigned {assigned} by more than {tolerance}",
            s.t_s[i]
        );
    }
    let resident = r.metrics.footprint_resident_bytes_avg.unwrap();
    assert!(resident <= r.metrics.footprint_assigned_bytes_avg);
}

#[test]
fn accounting_mode_runs_the_same_stack_without_memory() {
    let real = run(
        &config(Mode::RealMemory, false),
        "ballast",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    let acct = run(
        &config(Mode::Accounting, true),
        "ballast",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(acct.metrics.footprint_resident_bytes_avg, None);
    assert!(acct.series.host_resident.is_empty());
    // Same stack, same decisions: the accounts match the real run's.
    assert_eq!(
        acct.metrics.footprint_assigned_bytes_avg,
        real.metrics.footprint_assigned_bytes_avg
    );
    assert_eq!(acct.metrics.operations, real.metrics.operations);
}

#[test]
fn a_run_is_deterministic() {
    let a = run(
        &config(Mode::Accounting, false),
        "ballast",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    let b = run(
        &config(Mode::Accounting, false),
        "ballast",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.series, b.series);
}

#[test]
fn reporting_guests_give_back_free_memory_without_changing_the_balance() {
    let plain = run(
        &config(Mode::RealMemory, false),
        "hyperv",
        guests(),
        &mut |_| {},
    )
    .unwrap();
    let mut reporting = guests();
    for g in &mut reporting {
        g.free_page_reporting = g.kind == GuestKind::Dm;
    }
    let fpr = run(
        &config(Mode::RealMemory, true),
        "hyperv",
        reporting,
        &mut |_| {},
    )
    .unwrap();
    let (p, f) = (&plain.metrics, &fpr.metrics);
    assert!(f.free_page_reporting && !p.free_page_reporting);
    // The balancer sees the same guests: the same memory moves the same way.
    assert_eq!(
        f.footprint_assigned_bytes_avg,
        p.footprint_assigned_bytes_avg
    );
    assert_eq!(f.paged_byte_seconds, p.paged_byte_seconds);
    assert_eq!(f.operations.balloon_bytes, p.operations.balloon_bytes);
    // The DM guests hinted their free blocks, and the host stopped backing them.
    assert!(
        f.operations.hint > 0 && f.operations.hint_bytes > 0,
        "{:?}",
        f.operations
    );
    assert_eq!(p.operations.hint, 0);
    assert_eq!(p.footprint_backed_bytes_avg, p.footprint_assigned_bytes_avg);
    let (res_p, res_f) = (
        p.footprint_resident_bytes_avg.unwrap(),
        f.footprint_resident_bytes_avg.unwrap(),
    );
    assert!(
        res_f + 64.0 * MIB as f64 <= res_p,
        "resident {res_f} with reporting, {res_p} without"
    );
    // The model's count of backed memory is what the host measures, within 4 MiB per
    // guest (pages in flight within a tick).
    let tolerance = 4.0 * 4.0 * MIB as f64;
    assert!(
        (f.footprint_backed_bytes_avg - res_f).abs() <= tolerance,
        "backed {} against resident {res_f}",
        f.footprint_backed_bytes_avg
    );
}
