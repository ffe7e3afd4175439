//! The simulation loop: guests whose demand follows their workload, a real [`Host`]
//! balancing them with one policy, on virtual time, and the figures of the run.
//!
//! Each tick of `tick_s` virtual seconds:
//! 1. every guest's demand is read from its workload; a DM guest's OS model is set to it,
//!    a Xen guest's balloon driver makes its `memory_op` calls towards its target and
//!    reports its committed memory;
//! 2. the host steps (its DM sessions pumped, the balancer run once per balance
//!    interval, every guest's next operation started), and the DM rings are pumped on
//!    both sides until the messages of this tick have been answered (at most a bounded
//!    number of rounds);
//! 3. in real-memory mode the guests write the pages they were given, and the guests that
//!    report free memory hint their free blocks (free page reporting);
//! 4. the figures are accumulated, and every `sample_every` ticks a sample is kept for
//!    the report.
//!
//! Nothing reads a clock but the wall time of the run; a run is a function of its
//! configuration.

use std::time::{Duration, Instant};

use ballast_balancer::{Balancer, VmSettings};
use ballast_core::PartitionId;
use ballast_dm::vsc::{Vsc, VscConfig};
use ballast_dm::vsp::VspConfig;
use ballast_host::{BackingMode, Host, HostConfig, VmConfig, VmError, VmId, VmKind};
use ballast_vmbus::session::GuestSession;
use thiserror::Error;

use crate::guest::{DmModel, HostDm, XenGuest};
use crate::record::{GuestKind, GuestSeries, Mode, Operations, PolicyMetrics, PolicyRun, Series};

const PAGE: u64 = 4096;
/// Most pump rounds per tick: enough for a 1 GiB balloon of 4 KiB pages (519 messages
/// through a 16 KiB ring) to finish within one tick.
const MAX_ROUNDS: usize = 1024;
/// Pages a guest writes per call when it touches the memory it was given.
const TOUCH_CHUNK: u64 = 512;
/// Samples kept for the report, at most.
const MAX_SAMPLES: usize = 2000;

/// A guest's demand over virtual time.
pub trait Demand: Send {
    /// Committed bytes at `t_s`.
    fn demand_at(&mut self, t_s: f64) -> u64;
    /// The highest demand in `[t0, t1]` (the oracle's look-ahead).
    fn peak_between(&mut self, t0: f64, t1: f64) -> u64;
}

/// One guest of a run.
pub struct GuestSpec {
    /// Its name.
    pub name: String,
    /// Its interface.
    pub kind: GuestKind,
    /// Its memory settings.
    pub settings: VmSettings,
    /// Its virtual processors.
    pub vps: u32,
    /// Its workload.
    pub demand: Box<dyn Demand>,
    /// It reports its free memory (a DM guest only: free page reporting is a Hyper-V
    /// interface).
    pub free_page_reporting: bool,
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Managed host memory, bytes.
    pub host_memory: u64,
    /// Memory the balancer leaves free, bytes.
    pub reserve: u64,
    /// Virtual seconds simulated.
    pub duration_s: f64,
    /// Virtual seconds per tick.
    pub tick_s: f64,
    /// Real memory or accounting only.
    pub mode: Mode,
    /// The DM host's quiet time after negotiation, seconds.
    pub post_caps_wait_s: f64,
    /// The oracle's look-ahead, seconds: long enough to cover the time an operation
    /// takes through the stack, so that it is never late.
    pub lookahead_s: f64,
    /// Check the core's invariants and audit every guest's memfd after every tick (for
    /// tests; slow).
    pub check_every_tick: bool,
}

/// Why a run failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The host could not be made.
    #[error("host: {0}")]
    Host(#[from] ballast_host::HostError),
    /// A guest could not be made or driven.
    #[error("guest: {0}")]
    Vm(#[from] VmError),
    /// The policy is unknown.
    #[error(transparent)]
    Policy(#[from] ballast_balancer::UnknownPolicy),
    /// An invariant broke (only with `check_every_tick`).
    #[error("at t = {t_s} s: {what}")]
    Invariant {
        /// When.
        t_s: f64,
        /// What.
        what: String,
    },
    /// The settings are unusable.
    #[error("{0}")]
    Config(String),
}

enum Side {
    Dm(Box<GuestSession<DmModel>>),
    Xen(XenGuest),
}

struct Guest {
    vm: VmId,
    /// Its partition, whose memfd the guest writes.
    partition: PartitionId,
    spec_kind: GuestKind,
    name: String,
    side: Side,
    demand: Box<dyn Demand>,
    /// When the current shortage began (demand above assigned), seconds.
    short_since: Option<f64>,
}

/// Accumulated figures.
#[derive(Default)]
struct Acc {
    vm_seconds: f64,
    assigned_byte_seconds: f64,
    resident_byte_seconds: f64,
    backed_byte_seconds: f64,
    slack_sum: f64,
    slack_samples: f64,
    paging_vm_seconds: f64,
    paged_byte_seconds: f64,
    reactions: Vec<f64>,
}

/// Runs `guests` on a fresh host with policy `policy`; `progress` is told the fraction
/// of virtual time done, now and then.
pub fn run(
    config: &RunConfig,
    policy: &str,
    guests: Vec<GuestSpec>,
    progress: &mut dyn FnMut(f64),
) -> Result<PolicyRun, RunError> {
    if !(config.tick_s > 0.0 && config.duration_s >= config.tick_s) {
        return Err(RunError::Config(format!(
            "tick {} s and duration {} s: need 0 < tick <= duration",
            config.tick_s, config.duration_s
        )));
    }
    let wall = Instant::now();
    let balancer = Balancer::by_name(policy)?;
    let vsp = VspConfig {
        post_caps_wait: Duration::from_secs_f64(config.post_caps_wait_s.max(0.0)),
        ..VspConfig::default()
    };
    let real = config.mode == Mode::RealMemory;
    let mut host = Host::new(
        HostConfig {
            memory_bytes: config.host_memory,
            backing: if real {
                BackingMode::RealMemory
            } else {
                BackingMode::Accounting
            },
            reserve_bytes: config.reserve,
            vsp,
            balance_interval: Duration::from_secs(1),
        },
        balancer,
    )?;
    let reporting = guests.iter().any(|g| g.free_page_reporting);
    let mut gs = Vec::with_capacity(guests.len());
    for g in guests {
        let kind = match g.kind {
            GuestKind::Dm => VmKind::Dm,
            GuestKind::Xen => VmKind::Xen,
        };
        let vm = host.create_vm(VmConfig {
            name: g.name.clone(),
            kind,
            settings: g.settings,
            vps: g.vps,
            free_page_reporting: g.free_page_reporting,
        })?;
        let boot = g.settings.startup / PAGE;
        let side = match g.kind {
            GuestKind::Dm => {
                let channel = host
                    .take_dm_channel(vm)
                    .ok_or_else(|| RunError::Config("a DM guest without a channel".into()))?;
                // The run starts once the guests have booted: the guest's quiet time
                // before its first status report is the host's post-capabilities wait
                // (Linux waits 45 periods, Hyper-V 50 s; both are one setting here).
                let vsc = Vsc::new(VscConfig {
                    status_delay_periods: config.post_caps_wait_s.ceil() as u32,
                    ..VscConfig::newest_linux()
                });
                let model = DmModel::new(boot);
                let model = if g.free_page_reporting {
                    model.with_reporting()
                } else {
                    model
                };
                Side::Dm(Box::new(GuestSession::connect(
                    vsc,
                    channel,
                    model,
                    Duration::ZERO,
                )))
            }
            GuestKind::Xen => Side::Xen(XenGuest::new(vm, boot, g.settings.minimum / PAGE)),
        };
        let partition = host
            .vm(vm)
            .map(|v| v.partition)
            .ok_or_else(|| RunError::Config("a guest without a partition".into()))?;
        gs.push(Guest {
            vm,
            partition,
            spec_kind: g.kind,
            name: g.name,
            side,
            demand: g.demand,
            short_since: None,
        });
    }

    let ticks = (config.duration_s / config.tick_s).floor() as u64;
    let sample_every = (ticks / MAX_SAMPLES as u64).max(1);
    let mut series = Series {
        guests: gs
            .iter()
            .map(|g| GuestSeries {
                name: g.name.clone(),
                kind: g.spec_kind,
                assigned: Vec::new(),
                target: Vec::new(),
                committed: Vec::new(),
                paged: Vec::new(),
            })
            .collect(),
        ..Series::default()
    };
    let mut acc = Acc::default();
    let oracle = policy == "oracle";
    let dt = config.tick_s;
    // What a guest writes into a page it is given, a 2 MiB chunk at a time.
    let touch_buf = vec![0x5au8; (TOUCH_CHUNK * PAGE) as usize];
    for tick in 0..=ticks {
        let t = tick as f64 * dt;
        let now = Duration::from_secs_f64(t);
        // 1. Demand, and the Xen drivers.
        let mut demands = Vec::with_capacity(gs.len());
        for g in gs.iter_mut() {
            let d = g.demand.demand_at(t);
            demands.push(d);
            if oracle {
                let peak = g.demand.peak_between(t, t + config.lookahead_s);
                host.set_future_peak(g.vm, Some(peak));
            }
            match &mut g.side {
                Side::Dm(s) => s.model.set_demand(d.div_ceil(PAGE)),
                Side::Xen(x) => {
                    x.set_demand(d.div_ceil(PAGE));
                    x.step(&mut host)?;
                }
            }
        }
        // 2. The host, and the rings until quiet.
        host.step(now);
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            for g in gs.iter_mut() {
                if let Side::Dm(s) = &mut g.side {
                    if let Ok(p) = s.pump(now) {
                        moved |= !p.is_idle();
                    }
                }
            }
            moved |= host.pump(now);
            if !moved {
                break;
            }
        }
        // 3. The guests write what they were given.
        if real {
            for g in gs.iter_mut() {
                let touch = match &mut g.side {
                    Side::Dm(s) => std::mem::take(&mut s.model.to_touch),
                    Side::Xen(x) => std::mem::take(&mut x.to_touch),
                };
                touch_pages(&host, g.partition, &touch, &touch_buf);
            }
        }
        // 3b. Free page reporting: the DM guests that report hint their free blocks (after
        // writing what they were given, which a block reported now must not be).
        for g in gs.iter_mut() {
            if let Side::Dm(s) = &mut g.side {
                let vm = g.vm;
                s.model.report(
                    t,
                    &mut HostDm {
                        host: &mut host,
                        vm,
                    },
                )?;
            }
        }
        if config.check_every_tick {
            check(&host, t)?;
        }
        // 4. Figures.
        let last = tick == ticks;
        let w = if last { 0.0 } else { dt };
        let keep = tick % sample_every == 0 || last;
        if keep {
            series.t_s.push(t);
        }
        let mut resident_total = 0u64;
        for (i, g) in gs.iter_mut().enumerate() {
            let Some(view) = host.vm(g.vm) else { continue };
            let d = demands[i];
            let a = view.assigned;
            acc.vm_seconds += w;
            acc.assigned_byte_seconds += a as f64 * w;
            let reported = match &g.side {
                Side::Dm(s) => s.model.reported_pages() * PAGE,
                Side::Xen(_) => 0,
            };
            acc.backed_byte_seconds += a.saturating_sub(reported) as f64 * w;
            if a > 0 {
                acc.slack_sum += a.saturating_sub(d) as f64 / a as f64 * w;
                acc.slack_samples += w;
            }
            let short = d.saturating_sub(a);
            if short > 0 {
                acc.paging_vm_seconds += w;
                acc.paged_byte_seconds += short as f64 * w;
                g.short_since.get_or_insert(t);
            } else if let Some(t0) = g.short_since.take() {
                acc.reactions.push(t - t0);
            }
            if let Some(r) = view.resident {
                resident_total += r;
            }
            if keep {
                let s = &mut series.guests[i];
                s.assigned.push(a);
                s.target.push(view.target);
                s.committed.push(d);
                s.paged.push(short);
            }
        }
        acc.resident_byte_seconds += resident_total as f64 * w;
        if keep {
            series.host_free.push(host.free_bytes());
            if real {
                series.host_resident.push(resident_total);
            }
        }
        if tick % 64 == 0 {
            progress(t / config.duration_s);
        }
    }
    progress(1.0);

    let mut ops = Operations::default();
    for g in &gs {
        if let Some(v) = host.vm(g.vm) {
            let o = v.ops;
            ops.balloon += o.balloon;
            ops.balloon_bytes += o.balloon_pages * PAGE;
            ops.unballoon += o.unballoon;
            ops.unballoon_bytes += o.unballoon_pages * PAGE;
            ops.hot_add += o.hot_add;
            ops.hot_add_bytes += o.hot_add_pages * PAGE;
            ops.decrease += o.decrease;
            ops.decrease_bytes += o.decrease_pages * PAGE;
            ops.populate += o.populate;
            ops.populate_bytes += o.populate_pages * PAGE;
            ops.target_changes += o.target_changes;
            ops.failures += o.failures;
            ops.hint += o.hint;
            ops.hint_bytes += o.hint_pages * PAGE;
        }
    }
    let duration = ticks as f64 * dt;
    let vm_hours = acc.vm_seconds / 3600.0;
    let mut reactions = acc.reactions;
    reactions.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        if reactions.is_empty() {
            return None;
        }
        let i = ((reactions.len() - 1) as f64 * p).round() as usize;
        reactions.get(i).copied()
    };
    let avg = |byte_seconds: f64| {
        if duration > 0.0 {
            byte_seconds / duration
        } else {
            0.0
        }
    };
    let metrics = PolicyMetrics {
        policy: policy.to_string(),
        free_page_reporting: reporting,
        footprint_backed_bytes_avg: avg(acc.backed_byte_seconds),
        footprint_assigned_bytes_avg: if duration > 0.0 {
            acc.assigned_byte_seconds / duration
        } else {
            0.0
        },
        footprint_resident_bytes_avg: real.then(|| {
            if duration > 0.0 {
                acc.resident_byte_seconds / duration
            } else {
                0.0
            }
        }),
        saved_vs_static_fraction: None,
        slack_fraction: if acc.slack_samples > 0.0 {
            acc.slack_sum / acc.slack_samples
        } else {
            0.0
        },
        paging_vm_seconds_fraction: if acc.vm_seconds > 0.0 {
            acc.paging_vm_seconds / acc.vm_seconds
        } else {
            0.0
        },
        paged_byte_seconds: acc.paged_byte_seconds,
        reaction_p50_s: pct(0.5),
        reaction_p99_s: pct(0.99),
        churn_per_vm_hour: if vm_hours > 0.0 {
            ops.target_changes as f64 / vm_hours
        } else {
            0.0
        },
        operations: ops,
    };
    // Teardown through the root's calls, as a real host does.
    for g in &gs {
        host.destroy_vm(g.vm)?;
    }
    if config.check_every_tick {
        check(&host, duration)?;
    }
    Ok(PolicyRun {
        metrics,
        series,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// Writes one byte into every page of `ranges` of the guest's memory (a page written once
/// is resident; the byte is what a guest's first use leaves there).
fn touch_pages(
    host: &Host,
    partition: PartitionId,
    ranges: &[ballast_abi::types::GfnRange],
    buf: &[u8],
) {
    for r in ranges {
        let mut g = r.start();
        while g < r.end() {
            let n = TOUCH_CHUNK.min(r.end() - g);
            // A page the host no longer maps (ballooned meanwhile) is not the guest's to
            // write: skip what is not mapped now.
            if host
                .hv()
                .partition(partition)
                .is_some_and(|p| p.p2m().all_mapped(g, n))
            {
                let _ = host
                    .memory()
                    .write_guest(partition, g, &buf[..(n * PAGE) as usize]);
            }
            g += n;
        }
    }
}

/// The core's invariants and every guest's backing audit.
fn check(host: &Host, t_s: f64) -> Result<(), RunError> {
    host.hv()
        .check()
        .map_err(|e| RunError::Invariant { t_s, what: e.0 })?;
    if host.config().backing == BackingMode::RealMemory {
        for vm in host.vm_ids() {
            let Some(v) = host.vm(vm) else { continue };
            let report =
                host.memory()
                    .audit(v.partition, false)
                    .map_err(|e| RunError::Invariant {
                        t_s,
                        what: format!("audit of {}: {e}", v.name),
                    })?;
            if !report.violations.is_empty() {
                return Err(RunError::Invariant {
                    t_s,
                    what: format!("audit of {}: {report:?}", v.name),
                });
            }
            if let Some(r) = v.resident {
                if r > v.assigned {
                    return Err(RunError::Invariant {
                        t_s,
                        what: format!("{}: {r} bytes resident but {} assigned", v.name, v.assigned),
                    });
                }
            }
        }
    }
    Ok(())
}
