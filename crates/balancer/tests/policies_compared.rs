//! The policies side by side on a synthetic fleet, through a minimal host model: steady,
//! smoothly varying and spiky VMs, each kind with its own sizes. Checks the orderings the
//! policies exist for (ballast below Hyper-V's footprint without paging more, the oracle
//! lowest, static the most shortfall), not exact figures.

use ballast_balancer::{Balancer, HostSnapshot, POLICIES, Snapshot, VmSettings, VmSnapshot};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TICK_S: f64 = 5.0;
const HOURS: f64 = 12.0;
/// How fast the host model moves a VM's memory, bytes per second.
const MOVE_RATE: u64 = GIB;

/// A deterministic pseudo-random sequence (SplitMix64), so the fleet is the same each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Flat with 1% noise every minute.
    Steady,
    /// A smooth swing of +-50% over a period of a few hours.
    Smooth,
    /// A new level between 0.2x and 3x of the base every five minutes.
    Spiky,
}

/// Demand of every VM at every tick.
fn fleet() -> Vec<Vec<u64>> {
    let mut rng = Rng(7);
    let ticks = (HOURS * 3600.0 / TICK_S) as usize;
    let mut out = Vec::new();
    for k in 0..18 {
        let kind = [Kind::Steady, Kind::Smooth, Kind::Spiky][k % 3];
        let base = (256 * MIB + rng.next() % (4 * GIB)) as f64;
        let period = 3600.0 * (2.0 + 4.0 * rng.unit());
        let phase = rng.unit() * std::f64::consts::TAU;
        let mut level = base;
        let mut series = Vec::with_capacity(ticks);
        for i in 0..ticks {
            let t = i as f64 * TICK_S;
            let d = match kind {
                Kind::Steady => {
                    if i % 12 == 0 {
                        level = base * (0.99 + 0.02 * rng.unit());
                    }
                    level
                }
                Kind::Smooth => {
                    base * (1.0 + 0.5 * (phase + t * std::f64::consts::TAU / period).sin())
                }
                Kind::Spiky => {
                    if i % 60 == 0 {
                        level = base * (0.2 + 2.8 * rng.unit() * rng.unit());
                    }
                    level
                }
            };
            series.push(d as u64);
        }
        out.push(series);
    }
    out
}

struct Outcome {
    footprint: f64,
    shortfall: f64,
}

fn run(name: &str, demand: &[Vec<u64>]) -> Outcome {
    let mut balancer = Balancer::by_name(name).unwrap();
    let settings = VmSettings {
        startup: 2 * GIB,
        minimum: 128 * MIB,
        maximum: 16 * GIB,
        buffer_percent: 20,
        weight: 50,
    };
    let mut vms: Vec<VmSnapshot> = demand
        .iter()
        .map(|_| VmSnapshot {
            settings,
            assigned: settings.startup,
            target: settings.startup,
            committed: None,
            report_age_s: 0.0,
            busy: false,
            unresponsive: false,
            future_peak: None,
        })
        .collect();
    let total = 200 * GIB;
    let ticks = demand[0].len();
    let lookahead = (300.0 / TICK_S) as usize;
    let (mut footprint, mut shortfall) = (0.0, 0.0);
    for i in 0..ticks - 1 {
        for (vm, d) in vms.iter_mut().zip(demand) {
            vm.committed = Some(d[i]);
            vm.future_peak = d[i..(i + lookahead).min(ticks)].iter().copied().max();
            vm.busy = vm.assigned != vm.target;
        }
        let assigned: u64 = vms.iter().map(|v| v.assigned).sum();
        let snap = Snapshot {
            host: HostSnapshot {
                now_s: i as f64 * TICK_S,
                total,
                free: total - assigned,
                reserve: GIB,
            },
            vms: vms.clone(),
        };
        for c in balancer.tick(&snap).changes {
            vms[c.vm].target = c.target;
        }
        let step = (MOVE_RATE as f64 * TICK_S) as u64;
        for (vm, d) in vms.iter_mut().zip(demand) {
            if vm.target < vm.assigned {
                vm.assigned -= (vm.assigned - vm.target).min(step);
            } else {
                vm.assigned += (vm.target - vm.assigned).min(step);
            }
            footprint += vm.assigned as f64;
            shortfall += d[i + 1].saturating_sub(vm.assigned) as f64 * TICK_S;
        }
    }
    Outcome {
        footprint: footprint / (ticks - 1) as f64 / GIB as f64,
        shortfall: shortfall / GIB as f64,
    }
}

#[test]
fn policies_order_as_intended() {
    let demand = fleet();
    let results: Vec<(&str, Outcome)> = POLICIES.iter().map(|&p| (p, run(p, &demand))).collect();
    let get = |n: &str| &results.iter().find(|(p, _)| *p == n).unwrap().1;
    for (p, o) in &results {
        println!(
            "{p:>13}: footprint {:6.2} GiB, shortfall {:9.1} GiB*s",
            o.footprint, o.shortfall
        );
    }
    let (ballast, hyperv, oracle) = (get("ballast"), get("hyperv"), get("oracle"));
    // Ballast keeps less than half of Hyper-V's memory above the oracle's lower bound,
    // and pages no more.
    let over = |o: &Outcome| o.footprint - oracle.footprint;
    assert!(over(ballast) < 0.5 * over(hyperv), "ballast's footprint");
    assert!(
        ballast.shortfall <= hyperv.shortfall,
        "ballast pages no more"
    );
    // Static ignores demand (and pages for it); no policy that follows demand beats the
    // oracle on both counts: one that holds less memory pages more.
    for p in ["ballast", "hyperv", "proportional", "vpa"] {
        let o = get(p);
        assert!(
            oracle.footprint <= o.footprint || oracle.shortfall < o.shortfall,
            "oracle is the lower bound ({p})"
        );
    }
    assert!(get("static").shortfall > hyperv.shortfall);
}
