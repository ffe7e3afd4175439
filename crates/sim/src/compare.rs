//! Scenarios run through the engine: one policy ([`run_scenario`]) or every policy on
//! the same scenario and seed ([`compare`]), with `saved_vs_static_fraction` filled in.

use std::sync::Mutex;

use ballast_balancer::POLICIES;
use thiserror::Error;

use crate::engine::{self, Demand, GuestSpec, RunConfig, RunError};
use crate::record::{GuestKind, Mode, PolicyRun, RunResult};
use crate::scenario::{Scenario, ScenarioError};
use crate::workload::Workload;

/// The oracle's look-ahead, seconds: longer than any operation takes through the stack
/// (a 2 GiB hot-add, a balloon of 4 KiB pages), so the oracle is never late.
const LOOKAHEAD_S: f64 = 30.0;

/// Why a comparison failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CompareError {
    /// The scenario's workloads could not be built.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A run failed.
    #[error("policy {policy}: {source}")]
    Run {
        /// The policy.
        policy: String,
        /// Why.
        source: RunError,
    },
}

impl Demand for Workload {
    fn demand_at(&mut self, t_s: f64) -> u64 {
        Workload::demand_at(self, t_s)
    }
    fn peak_between(&mut self, t0: f64, t1: f64) -> u64 {
        Workload::peak_between(self, t0, t1)
    }
}

/// The engine's settings for a scenario.
pub fn run_config(s: &Scenario, check_every_tick: bool) -> RunConfig {
    RunConfig {
        host_memory: s.host_memory,
        reserve: s.reserve,
        duration_s: s.duration_s,
        tick_s: s.tick_s,
        mode: s.mode,
        post_caps_wait_s: s.post_caps_wait_s,
        lookahead_s: LOOKAHEAD_S,
        check_every_tick,
    }
}

/// Which DM guests report their free memory in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reporting {
    /// As the scenario says for each guest.
    #[default]
    AsScenario,
    /// Every DM guest.
    AllDm,
    /// None.
    Off,
}

fn guests(s: &Scenario, reporting: Reporting) -> Result<Vec<GuestSpec>, ScenarioError> {
    let workloads = s.workloads()?;
    Ok(s.guests
        .iter()
        .zip(workloads)
        .map(|(g, w)| GuestSpec {
            name: g.name.clone(),
            kind: g.kind,
            settings: g.settings(),
            vps: g.vps,
            demand: Box::new(w),
            free_page_reporting: g.kind == GuestKind::Dm
                && match reporting {
                    Reporting::AsScenario => g.free_page_reporting,
                    Reporting::AllDm => true,
                    Reporting::Off => false,
                },
        })
        .collect())
}

/// Runs `s` with `policy`, its guests reporting free memory as the scenario says.
pub fn run_scenario(
    s: &Scenario,
    policy: &str,
    check_every_tick: bool,
    progress: &mut dyn FnMut(f64),
) -> Result<PolicyRun, CompareError> {
    run_scenario_with(s, policy, Reporting::AsScenario, check_every_tick, progress)
}

/// Runs `s` with `policy`, free page reporting as `reporting` says.
pub fn run_scenario_with(
    s: &Scenario,
    policy: &str,
    reporting: Reporting,
    check_every_tick: bool,
    progress: &mut dyn FnMut(f64),
) -> Result<PolicyRun, CompareError> {
    let guests = guests(s, reporting)?;
    engine::run(&run_config(s, check_every_tick), policy, guests, progress).map_err(|source| {
        CompareError::Run {
            policy: policy.to_string(),
            source,
        }
    })
}

/// How many runs may go at once: one per core, and in real-memory mode no more than fit
/// in half of the machine's available memory (each run backs up to the host's memory).
pub fn parallel_runs(s: &Scenario) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if s.mode == Mode::Accounting {
        return cores;
    }
    let avail = crate::scenario::meminfo("MemAvailable").unwrap_or(0);
    let fit = (avail / 2 / s.host_memory.max(1)) as usize;
    cores.min(fit).max(1)
}

/// The name a run goes by in progress lines and tables: the policy, with `+fpr` when its
/// guests report free memory.
pub fn run_label(policy: &str, free_page_reporting: bool) -> String {
    if free_page_reporting {
        format!("{policy}+fpr")
    } else {
        policy.to_owned()
    }
}

/// Runs every policy of `policies` (all of them when empty) on `s` once per entry of
/// `reporting` (each policy as the scenario says when it is empty), `jobs` at a time;
/// `progress(label, fraction)` is called from the running threads with the
/// [`run_label`]. The runs come back policy by policy, in the order of `reporting`
/// within each.
pub fn compare(
    s: &Scenario,
    policies: &[&str],
    reporting: &[Reporting],
    jobs: usize,
    progress: &(dyn Fn(&str, f64) + Sync),
) -> Result<RunResult, CompareError> {
    let policies: Vec<&str> = if policies.is_empty() {
        POLICIES.to_vec()
    } else {
        policies.to_vec()
    };
    let variants: &[Reporting] = if reporting.is_empty() {
        &[Reporting::AsScenario]
    } else {
        reporting
    };
    let runs_wanted: Vec<(&str, Reporting)> = policies
        .iter()
        .flat_map(|&p| variants.iter().map(move |&r| (p, r)))
        .collect();
    // Longest first (the usual rule for scheduling jobs on a few workers), so that the
    // last to finish is a short one: the more a policy follows demand, the more memory it
    // moves, and moving memory is the cost of a run.
    let cost = |p: &str| match p {
        "oracle" => 0,
        "hyperv" => 1,
        "ballast" => 2,
        "vpa" => 3,
        "proportional" => 4,
        "static" => 5,
        _ => 2,
    };
    let mut order: Vec<usize> = (0..runs_wanted.len()).collect();
    order.sort_by_key(|&i| cost(runs_wanted[i].0));
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<PolicyRun, CompareError>>>> =
        Mutex::new((0..runs_wanted.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, runs_wanted.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(&i) = order.get(i) else {
                        break;
                    };
                    let (policy, reporting) = runs_wanted[i];
                    let label = run_label(policy, reporting == Reporting::AllDm);
                    let r = run_scenario_with(s, policy, reporting, false, &mut |f| {
                        progress(&label, f)
                    });
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let mut runs = Vec::with_capacity(runs_wanted.len());
    for r in results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
    {
        runs.push(r?);
    }
    Ok(finish(s, runs))
}

/// The record of `runs` on `s`, with the savings against `static` where it ran.
pub fn finish(s: &Scenario, mut runs: Vec<PolicyRun>) -> RunResult {
    // The baseline is `static` as most hosts run it: without reporting, where it ran so.
    let base = runs
        .iter()
        .filter(|r| r.metrics.policy == "static")
        .min_by_key(|r| r.metrics.free_page_reporting)
        .map(|r| r.metrics.footprint_assigned_bytes_avg);
    for r in &mut runs {
        r.metrics.saved_vs_static_fraction = base
            .filter(|&b| b > 0.0)
            .map(|b| 1.0 - r.metrics.footprint_assigned_bytes_avg / b);
    }
    RunResult {
        scenario: s.info(),
        policies: runs,
    }
}
