//! What a run produces: one [`RunResult`] per `ballast run` or `ballast compare`, with one
//! [`PolicyRun`] per policy run on the scenario.
//!
//! These types are the contract between the simulator (which fills them), `results.json`
//! (their serde form: other tools read it, so the field names are fixed) and the HTML
//! report (which draws them).

use serde::{Deserialize, Serialize};

/// How guest memory was backed during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every guest's memory is a real memfd: pages the guest uses are written, ballooned
    /// pages are punched out, and the host's resident memory is measured.
    RealMemory,
    /// The same stack with an accounting-only backing: frames and pages are counted, no
    /// byte of guest memory exists (for traces larger than the machine).
    Accounting,
}

/// The interface a guest uses to move its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    /// A Hyper-V Dynamic Memory guest (the VSC over a VMBus ring).
    Dm,
    /// A Xen guest with a Linux-like balloon driver (XENMEM_* through memory_op).
    Xen,
}

/// The scenario as `results.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// The scenario's name.
    pub name: String,
    /// How many guests ran.
    pub guests: usize,
    /// The host's managed memory.
    pub host_memory_bytes: u64,
    /// Virtual time simulated.
    pub duration_s: f64,
    /// The seed every random choice came from.
    pub seed: u64,
    /// Real memory or accounting only.
    pub mode: Mode,
}

/// Protocol volume of one policy run: operations and bytes per kind of movement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operations {
    /// DM balloon operations the host started.
    pub balloon: u64,
    /// Bytes the guests ballooned (accepted by the host).
    pub balloon_bytes: u64,
    /// DM unballoon operations.
    pub unballoon: u64,
    /// Bytes given back by unballoon.
    pub unballoon_bytes: u64,
    /// DM hot-add operations.
    pub hot_add: u64,
    /// Bytes hot-added (reported added by the guest).
    pub hot_add_bytes: u64,
    /// Xen XENMEM_decrease_reservation calls.
    pub decrease: u64,
    /// Bytes given up by decrease_reservation.
    pub decrease_bytes: u64,
    /// Xen XENMEM_populate_physmap calls.
    pub populate: u64,
    /// Bytes populated.
    pub populate_bytes: u64,
    /// Target changes the balancer made (all guests).
    pub target_changes: u64,
    /// Host operations that failed or timed out.
    pub failures: u64,
    /// Cold discard hints (free page reporting calls, HvExtCallMemoryHeatHint).
    #[serde(default)]
    pub hint: u64,
    /// Bytes the hints discarded.
    #[serde(default)]
    pub hint_bytes: u64,
}

/// The figures of one policy on one scenario. Field names are `results.json`'s keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyMetrics {
    /// The policy's name (`ballast`, `static`, `hyperv`, `proportional`, `vpa`, `oracle`).
    pub policy: String,
    /// The DM guests reported their free memory (free page reporting, the cold discard
    /// hint). A policy may be run both ways on one scenario: this tells the rows apart.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Time average of the memory assigned to all guests together, in bytes.
    pub footprint_assigned_bytes_avg: f64,
    /// Time average of the host's measured resident guest memory; `None` (JSON null) in
    /// accounting mode.
    pub footprint_resident_bytes_avg: Option<f64>,
    /// Time average of the guest memory the host must back: assigned memory minus what
    /// guests reported free and have not used since, in bytes. The model's count, so it
    /// exists in accounting mode too; in real-memory mode it is what the resident memory
    /// measures. Without reporting it equals the assigned footprint.
    #[serde(default)]
    pub footprint_backed_bytes_avg: f64,
    /// 1 - footprint / footprint of `static` on the same scenario; `None` when `static`
    /// was not run.
    pub saved_vs_static_fraction: Option<f64>,
    /// Time average over guests of (assigned - demand) / assigned, counting only positive
    /// slack; see the README's definitions.
    pub slack_fraction: f64,
    /// Fraction of VM-seconds in which a guest's demand exceeded its assigned memory.
    pub paging_vm_seconds_fraction: f64,
    /// Integral over time and guests of (demand - assigned) where positive, in byte-seconds.
    pub paged_byte_seconds: f64,
    /// Median time from a demand rise above assigned memory to the guest having enough
    /// again, in seconds; `None` when no rise needed one.
    pub reaction_p50_s: Option<f64>,
    /// 99th percentile of the same.
    pub reaction_p99_s: Option<f64>,
    /// Target changes per VM-hour.
    pub churn_per_vm_hour: f64,
    /// Protocol volume.
    pub operations: Operations,
}

/// One guest's time series, sampled at [`Series::t_s`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestSeries {
    /// The guest's name.
    pub name: String,
    /// Its interface.
    pub kind: GuestKind,
    /// Memory assigned (mapped guest RAM the guest holds), bytes.
    pub assigned: Vec<u64>,
    /// The balancer's target, bytes.
    pub target: Vec<u64>,
    /// The guest's demand (committed memory), bytes.
    pub committed: Vec<u64>,
    /// Demand above assigned (paged), bytes.
    pub paged: Vec<u64>,
}

/// Time series of one policy run, thinned to at most a few thousand samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Sample times, seconds of virtual time.
    pub t_s: Vec<f64>,
    /// One entry per guest, in scenario order.
    pub guests: Vec<GuestSeries>,
    /// Host memory not assigned to any guest, bytes.
    pub host_free: Vec<u64>,
    /// Measured resident guest memory (sum of the memfds' resident bytes); empty in
    /// accounting mode.
    pub host_resident: Vec<u64>,
}

/// One policy's run: its figures and its time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// The figures.
    #[serde(flatten)]
    pub metrics: PolicyMetrics,
    /// The time series (not written to `results.json`; drawn in the report).
    #[serde(skip)]
    pub series: Series,
    /// Wall time the run took, seconds.
    pub wall_s: f64,
}

/// Everything one `ballast run` or `ballast compare` produced: `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The scenario.
    pub scenario: ScenarioInfo,
    /// One entry per policy run, in the order run.
    pub policies: Vec<PolicyRun>,
}
