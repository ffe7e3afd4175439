//! Scenarios run through the engine: one policy ([`run_scenario`]) or every policy on
//! the same scenario and seed ([`compare`]), with `saved_vs_static_fraction` filled in.

use std::sync::Mutex;

use ballast_balancer::POLICIES;
use thiserror::Error;

use crate::engine::{self, Demand, GuestSpec, RunConfig, RunError};
use crate::record::{Mode, PolicyRun, RunResult};
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

fn guests(s: &Scenario) -> Result<Vec<GuestSpec>, ScenarioError> {
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
        })
        .collect())
}

/// Runs `s` with `policy`.
pub fn run_scenario(
    s: &Scenario,
    policy: &str,
    check_every_tick: bool,
    progress: &mut dyn FnMut(f64),
) -> Result<PolicyRun, CompareError> {
    let guests = guests(s)?;
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

/// Runs every policy of `policies` (all of them when empty) on `s`, `jobs` at a time;
/// `progress(policy, fraction)` is called from the running threads.
pub fn compare(
    s: &Scenario,
    policies: &[&str],
    jobs: usize,
    progress: &(dyn Fn(&str, f64) + Sync),
) -> Result<RunResult, CompareError> {
    let policies: Vec<&str> = if policies.is_empty() {
        POLICIES.to_vec()
    } else {
        policies.to_vec()
    };
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
    let mut order: Vec<usize> = (0..policies.len()).collect();
    order.sort_by_key(|&i| cost(policies[i]));
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<PolicyRun, CompareError>>>> =
        Mutex::new((0..policies.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, policies.len().max(1)) {
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
                    let policy = policies[i];
                    let r = run_scenario(s, policy, false, &mut |f| progress(policy, f));
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let mut runs = Vec::with_capacity(policies.len());
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
    let base = runs
        .iter()
        .find(|r| r.metrics.policy == "static")
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
