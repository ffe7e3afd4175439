//! Fake but plausible runs, for the report's tests and for trying the page out: demand
//! that moves like a sine wave with noise, targets that follow it late, assigned memory
//! that follows the targets later still.

use crate::record::{
    GuestKind, GuestSeries, Mode, Operations, PolicyMetrics, PolicyRun, RunResult, ScenarioInfo,
    Series,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The policy names the simulator knows, used in order (a suffix tells repeats apart).
const POLICIES: [&str; 6] = [
    "ballast",
    "static",
    "hyperv",
    "proportional",
    "vpa",
    "oracle",
];

/// A small deterministic generator (xorshift64*): the data must be the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A run of `policies` policies on `guests` guests with `points` samples each, over six
/// virtual hours, in real-memory mode. The metrics are computed from the series, so they
/// agree with the charts. `static` (the second policy) holds every guest at its peak.
pub fn synthetic_result(policies: usize, guests: usize, points: usize) -> RunResult {
    let duration_s = 6.0 * 3600.0;
    let step = if points > 1 {
        duration_s / (points - 1) as f64
    } else {
        0.0
    };
    let t_s: Vec<f64> = (0..points).map(|i| i as f64 * step).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Demand per guest: a base, a daily-ish swing with its own phase and period, noise.
    let demand: Vec<Vec<u64>> = (0..guests)
        .map(|_| {
            let base = (1.0 + 3.0 * rng.next_f64()) * GIB as f64;
            let swing = (0.2 + 0.6 * rng.next_f64()) * base;
            let period = (1.0 + 3.0 * rng.next_f64()) * 3600.0;
            let phase = rng.next_f64() * std::f64::consts::TAU;
            // Noise is a slow random walk plus the odd burst, as a guest's page cache would.
            let mut walk = 0.0;
            t_s.iter()
                .map(|&t| {
                    walk = walk * 0.98 + (rng.next_f64() - 0.5) * 0.01 * base;
                    let burst = if rng.next_f64() < 0.004 {
                        0.25 * base
                    } else {
                        0.0
                    };
                    let v = base + swing * (t / period * std::f64::consts::TAU + phase).sin();
                    (v + walk + burst).max(256.0 * MIB as f64) as u64
                })
                .collect()
        })
        .collect();
    let host_memory_bytes = (guests as u64).max(1) * 8 * GIB;
    let runs = (0..policies)
        .map(|p| {
            let name = if p < POLICIES.len() {
                POLICIES[p].to_owned()
            } else {
                format!("{}-{}", POLICIES[p % POLICIES.len()], p / POLICIES.len())
            };
            let lag = 2 + 3 * p; // samples the target trails demand by
            let headroom = 1.04 + 0.05 * (p % 4) as f64;
            let is_static = name == "static";
            let guest_series: Vec<GuestSeries> = demand
                .iter()
                .enumerate()
                .map(|(g, d)| {
                    let peak = d.iter().copied().max().unwrap_or(0);
                    let target: Vec<u64> = (0..d.len())
                        .map(|i| {
                            if is_static {
                                peak
                            } else {
                                (d[i.saturating_sub(lag)] as f64 * headroom) as u64
                            }
                        })
                        .collect();
                    let assigned: Vec<u64> =
                        (0..d.len()).map(|i| target[i.saturating_sub(1)]).collect();
                    let paged = d
                        .iter()
                        .zip(&assigned)
                        .map(|(c, a)| c.saturating_sub(*a))
                        .collect();
                    GuestSeries {
                        name: format!("vm{g:02}"),
                        kind: if g % 3 == 2 {
                            GuestKind::Xen
                        } else {
                            GuestKind::Dm
                        },
                        assigned,
                        target,
                        committed: d.clone(),
                        paged,
                    }
                })
                .collect();
            let total_assigned: Vec<u64> = (0..points)
                .map(|i| guest_series.iter().map(|g| g.assigned[i]).sum())
                .collect();
            let host_free = total_assigned
                .iter()
                .map(|a| host_memory_bytes.saturating_sub(*a))
                .collect();
            let host_resident = total_assigned.iter().map(|a| a / 10 * 9).collect();
            metrics_from(
                name,
                Series {
                    t_s: t_s.clone(),
                    guests: guest_series,
                    host_free,
                    host_resident,
                },
                step,
                duration_s,
            )
        })
        .collect::<Vec<_>>();
    let mut result = RunResult {
        scenario: ScenarioInfo {
            name: format!("synthetic-{guests}x{points}"),
            guests,
            host_memory_bytes,
            duration_s,
            seed: 42,
            mode: Mode::RealMemory,
        },
        policies: runs,
    };
    let static_fp = result
        .policies
        .iter()
        .find(|p| p.metrics.policy == "static")
        .map(|p| p.metrics.footprint_assigned_bytes_avg);
    for p in &mut result.policies {
        p.metrics.saved_vs_static_fraction = static_fp
            .filter(|s| *s > 0.0)
            .map(|s| 1.0 - p.metrics.footprint_assigned_bytes_avg / s);
    }
    result
}

/// A policy run whose figures are computed from its series.
fn metrics_from(policy: String, series: Series, step: f64, duration_s: f64) -> PolicyRun {
    let n = series.t_s.len().max(1) as f64;
    let guests = series.guests.len().max(1) as f64;
    let footprint = series
        .guests
        .iter()
        .map(|g| g.assigned.iter().map(|&a| a as f64).sum::<f64>())
        .sum::<f64>()
        / n;
    let resident = series.host_resident.iter().map(|&r| r as f64).sum::<f64>() / n;
    let mut slack = 0.0;
    let mut paging_samples = 0usize;
    let mut paged = 0.0;
    let mut changes = 0u64;
    for g in &series.guests {
        for ((a, c), p) in g.assigned.iter().zip(&g.committed).zip(&g.paged) {
            if *a > 0 && a > c {
                slack += (a - c) as f64 / *a as f64;
            }
            if *p > 0 {
                paging_samples += 1;
            }
            paged += *p as f64 * step;
        }
        changes += g.target.windows(2).filter(|w| w[0] != w[1]).count() as u64;
    }
    let vm_hours = guests * duration_s / 3600.0;
    let lag = step * 2.0;
    let operations = Operations {
        balloon: changes / 2,
        balloon_bytes: changes / 2 * 64 * MIB,
        unballoon: changes / 4,
        unballoon_bytes: changes / 4 * 64 * MIB,
        hot_add: changes / 8,
        hot_add_bytes: changes / 8 * 128 * MIB,
        decrease: changes / 3,
        decrease_bytes: changes / 3 * 32 * MIB,
        populate: changes / 3,
        populate_bytes: changes / 3 * 32 * MIB,
        target_changes: changes,
        failures: 0,
        hint: 0,
        hint_bytes: 0,
    };
    PolicyRun {
        metrics: PolicyMetrics {
            policy,
            free_page_reporting: false,
            footprint_backed_bytes_avg: footprint,
            footprint_assigned_bytes_avg: footprint,
            footprint_resident_bytes_avg: Some(resident),
            saved_vs_static_fraction: None,
            slack_fraction: slack / (n * guests),
            paging_vm_seconds_fraction: paging_samples as f64 / (n * guests),
            paged_byte_seconds: paged,
            reaction_p50_s: (paging_samples > 0).then_some(lag),
            reaction_p99_s: (paging_samples > 0).then_some(lag * 3.5),
            churn_per_vm_hour: if vm_hours > 0.0 {
                changes as f64 / vm_hours
            } else {
                0.0
            },
            operations,
        },
        series,
        wall_s: 0.5 + n / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_figures_agree() {
        let r = synthetic_result(3, 4, 100);
        assert_eq!(r.policies.len(), 3);
        assert_eq!(r.scenario.guests, 4);
        for p in &r.policies {
            assert_eq!(p.series.t_s.len(), 100);
            assert_eq!(p.series.guests.len(), 4);
            for g in &p.series.guests {
                assert_eq!(g.assigned.len(), 100);
                assert!(g.committed.iter().all(|&c| c > 0));
            }
            assert!(p.metrics.footprint_assigned_bytes_avg > 0.0);
        }
        // static holds the peak: it saves nothing and pages never.
        let s = &r.policies[1].metrics;
        assert_eq!(s.policy, "static");
        assert_eq!(s.saved_vs_static_fraction, Some(0.0));
        // the lagging policies page some of the time.
        assert!(r.policies[2].metrics.paging_vm_seconds_fraction > 0.0);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        for (p, g, n) in [(0, 0, 0), (1, 0, 5), (1, 3, 0), (1, 1, 1), (8, 1, 2)] {
            let r = synthetic_result(p, g, n);
            assert_eq!(r.policies.len(), p);
        }
    }
}
