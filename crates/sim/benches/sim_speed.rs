//! How fast the simulator runs: VM-seconds simulated per wall second, the whole stack
//! (workloads, guest drivers, rings, VSPs, core, balancer, backing) on virtual time.
//!
//! Run: `cargo bench -p ballast-sim --bench sim_speed`
//!
//! Two scenarios, each with policy `ballast`:
//! - the bundled default scenario (eight guests) cut to 120 s of virtual time, in
//!   real-memory mode (every page a guest holds written into its memfd, every balloon
//!   punched) and in accounting mode, measured interleaved
//!   (`ballast_benchkit::interleaved`: one run of each per round, the order rotating);
//! - the bundled trace (Bitbrains GWA-T-12 Rnd, 100 VMs) cut to 6 h, in accounting mode.
//!
//! The baseline is real time: a guest lives one VM-second per wall second, so the ratio
//! is how many times faster than real time the simulator runs all its guests together
//! (a fleet of N guests in real time is N VM-s per s).
//! Figures are median (min .. max) over the rounds.

use std::path::Path;
use std::time::Duration;

use ballast_benchkit::{Sampling, interleaved, sig};
use ballast_sim::compare::run_scenario;
use ballast_sim::record::Mode;
use ballast_sim::scenario::Scenario;

/// A run of the default scenario takes seconds: a few rounds, capped in time.
const SAMPLING: Sampling = Sampling {
    min_rounds: 3,
    max_rounds: 9,
    budget: Duration::from_secs(60),
    rel_ci: 0.05,
};

fn run(s: &Scenario) {
    run_scenario(s, "ballast", false, &mut |_| {}).expect("the run");
}

/// VM-seconds a run of `s` simulates.
fn vm_seconds(s: &Scenario) -> f64 {
    s.guests.len() as f64 * s.duration_s
}

fn line(name: &str, vms: usize, rate: ballast_benchkit::Spread) {
    println!(
        "{name:<44} {} | real time {vms} VM-s/s ({vms} guests) | x{} real time",
        rate.show("VM-s/s"),
        sig(rate.median / vms as f64)
    );
}

fn main() {
    let mut real = Scenario::default_scenario().expect("the default scenario");
    real.duration_s = 120.0;
    real.mode = Mode::RealMemory;
    let mut acct = real.clone();
    acct.mode = Mode::Accounting;
    let c = interleaved(
        &SAMPLING,
        1,
        |_| (),
        &mut [&mut |_| run(&real), &mut |_| run(&acct)],
    );
    let n = real.guests.len();
    println!(
        "default scenario, 120 s virtual, policy ballast ({} rounds{}):",
        c.rounds(),
        c.note()
    );
    let scale = vm_seconds(&real) * 1e9;
    line("    real memory", n, c.rate(0, scale));
    line("    accounting", n, c.rate(1, scale));
    let r = c.ratio(0, 1);
    println!(
        "    accounting / real memory: x{} ({} .. {})",
        sig(r.median),
        sig(r.min),
        sig(r.max)
    );

    let trace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces/bitbrains-gwa-t-12-rnd/vm_mem.csv");
    let mut t = Scenario::from_trace(&trace, None).expect("the bundled trace");
    t.duration_s = t.duration_s.min(6.0 * 3600.0);
    t.mode = Mode::Accounting;
    let c = interleaved(&Sampling::fixed(3), 1, |_| (), &mut [&mut |_| run(&t)]);
    println!(
        "bitbrains trace, {} h virtual, accounting, policy ballast ({} rounds):",
        sig(t.duration_s / 3600.0),
        c.rounds()
    );
    line(
        "    accounting",
        t.guests.len(),
        c.rate(0, vm_seconds(&t) * 1e9),
    );
}
