//! The balancer's inputs and outputs: plain data, bytes throughout.

/// A VM's memory settings, with Hyper-V's meanings (PowerShell `Set-VMMemory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSettings {
    /// Memory the VM boots with (`-StartupBytes`), bytes.
    pub startup: u64,
    /// The least it may be given (`-MinimumBytes`), bytes.
    pub minimum: u64,
    /// The most it may be given (`-MaximumBytes`), bytes.
    pub maximum: u64,
    /// Extra memory over demand, percent of demand (`-Buffer`, 5-2000, default 20).
    pub buffer_percent: u32,
    /// Share under contention (`-Priority`, 0-100, default 50).
    pub weight: u32,
}

/// One VM as the host sees it at the snapshot's time.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSnapshot {
    /// The VM's settings.
    pub settings: VmSettings,
    /// Memory the VM holds now (mapped guest RAM not ballooned), bytes.
    pub assigned: u64,
    /// The target last set (what the host is moving the VM towards), bytes.
    pub target: u64,
    /// The guest's last report of what it needs (DM `num_committed`, or the Xen guest's
    /// committed memory), bytes; `None` before the first report.
    pub committed: Option<u64>,
    /// Seconds since that report.
    pub report_age_s: f64,
    /// An operation (balloon, unballoon, hot-add, Xen target not yet reached) is in
    /// progress.
    pub busy: bool,
    /// The host gave up on the VM (a reply timed out, the session ended): it keeps the
    /// memory it has and gets no new target until it answers again.
    pub unresponsive: bool,
    /// Only for the `oracle` policy, filled by the simulator: the highest demand of the
    /// next `lookahead` seconds, bytes. `None` from a real host.
    pub future_peak: Option<u64>,
}

/// The host at the snapshot's time.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    /// Seconds since the host started (virtual or real time).
    pub now_s: f64,
    /// Memory the guests may share: managed memory less what the hypervisor itself uses,
    /// bytes.
    pub total: u64,
    /// Memory free now (not assigned to any VM), bytes.
    pub free: u64,
    /// Memory the balancer must leave free, bytes.
    pub reserve: u64,
}

/// What the balancer is given each tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The host.
    pub host: HostSnapshot,
    /// The VMs, indexed by position: a [`TargetChange::vm`] is an index into this list.
    pub vms: Vec<VmSnapshot>,
}

/// A new target for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetChange {
    /// Index into [`Snapshot::vms`].
    pub vm: usize,
    /// The new target, bytes; always within the VM's minimum and maximum.
    pub target: u64,
}
