//! The control API's request and response bodies (JSON), shared by the daemon and the
//! client so that both ends use one definition. `openapi.json` beside the crate documents
//! them; a test holds it to the routes.

use serde::{Deserialize, Serialize};

use crate::link::GuestKind;

/// `POST /v1/vms`: a VM to define, with Hyper-V's memory settings
/// (`Set-VMMemory -StartupBytes -MinimumBytes -MaximumBytes -Buffer -Priority`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
    pub name: String,
    /// `dm` (Hyper-V Dynamic Memory) or `xen`.
    #[serde(default = "default_kind")]
    pub kind: GuestKind,
    /// Startup memory, bytes.
    pub startup: u64,
    /// Minimum, bytes; default: the startup memory.
    pub minimum: Option<u64>,
    /// Maximum, bytes; default: the startup memory.
    pub maximum: Option<u64>,
    /// Buffer, percent of demand (5-2000); default 20.
    pub buffer_percent: Option<u32>,
    /// Weight under contention (0-100); default 50.
    pub weight: Option<u32>,
    /// Virtual processors; default 1.
    pub vps: Option<u32>,
    /// Free page reporting: the guest reports its free 2 MiB blocks with Hyper-V's cold
    /// discard hint and the host stops backing them. Dynamic Memory VMs only; default
    /// off.
    pub free_page_reporting: Option<bool>,
}

fn default_kind() -> GuestKind {
    GuestKind::Dm
}

/// `PATCH /v1/vms/{name}`: settings to change; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateVm {
    /// Startup memory, bytes (used at the next start).
    pub startup: Option<u64>,
    /// Minimum, bytes.
    pub minimum: Option<u64>,
    /// Maximum, bytes.
    pub maximum: Option<u64>,
    /// Buffer, percent.
    pub buffer_percent: Option<u32>,
    /// Weight, 0-100.
    pub weight: Option<u32>,
    /// Free page reporting on or off (Dynamic Memory VMs only). Once it is off a running
    /// guest's hints are refused and it stops reporting; switched on, a guest that was
    /// refused the capability reports from its next start (its driver asks once, when it
    /// loads).
    pub free_page_reporting: Option<bool>,
}

/// `PUT /v1/vms/{name}/target`: a fixed target (`mem-set`), or `null` to give the VM
/// back to the balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTarget {
    /// Bytes, or `null`.
    pub bytes: Option<u64>,
}

/// `PUT /v1/vms/{name}/maximum`: a new maximum (`mem-max`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMaximum {
    /// Bytes.
    pub bytes: u64,
}

/// A VM's memory settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Startup memory, bytes.
    pub startup: u64,
    /// Minimum, bytes.
    pub minimum: u64,
    /// Maximum, bytes.
    pub maximum: u64,
    /// Buffer, percent.
    pub buffer_percent: u32,
    /// Weight, 0-100.
    pub weight: u32,
    /// Virtual processors.
    pub vps: u32,
}

/// Whether a guest process is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined; no guest attached (its memory is the host's).
    Stopped,
    /// A guest process is attached and its memory is balanced.
    Running,
}

/// Operation counts of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operations {
    /// Balloon operations completed.
    pub balloon: u64,
    /// Bytes ballooned.
    pub balloon_bytes: u64,
    /// Unballoon operations.
    pub unballoon: u64,
    /// Bytes unballooned.
    pub unballoon_bytes: u64,
    /// Hot-add operations completed.
    pub hot_add: u64,
    /// Bytes hot-added.
    pub hot_add_bytes: u64,
    /// `XENMEM_decrease_reservation` calls.
    pub decrease: u64,
    /// Bytes given up by decrease.
    pub decrease_bytes: u64,
    /// `XENMEM_populate_physmap` calls.
    pub populate: u64,
    /// Bytes populated.
    pub populate_bytes: u64,
    /// Target changes.
    pub target_changes: u64,
    /// Failed or timed-out operations.
    pub failures: u64,
    /// Cold discard hints (HvExtCallMemoryHeatHint calls) the guest made, whatever
    /// their status.
    pub hint_calls: u64,
    /// Bytes whose contents the hints discarded (they stay the VM's).
    pub hinted_bytes: u64,
}

/// One VM: its definition and, while it runs, its memory (`virsh dommemstat`'s view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its name.
    pub name: String,
    /// Its interface.
    pub kind: GuestKind,
    /// Stopped or running.
    pub state: VmState,
    /// Its settings.
    pub settings: Settings,
    /// The operator's fixed target, bytes, if set.
    pub pinned_target: Option<u64>,
    /// Its guest may report free memory with the cold discard hint.
    pub free_page_reporting: bool,
    /// Memory it holds (`actual`), bytes; 0 when stopped.
    pub assigned: u64,
    /// Where the host is moving it, bytes.
    pub target: u64,
    /// What the guest last said it commits, bytes.
    pub committed: Option<u64>,
    /// What the guest last said is free, bytes (Dynamic Memory only).
    pub available: Option<u64>,
    /// Pressure: committed / assigned x 100 (Hyper-V's figure).
    pub pressure: Option<f64>,
    /// Memory in its balloon, bytes.
    pub ballooned: u64,
    /// Resident bytes of its memory (`rss`).
    pub resident: Option<u64>,
    /// The balancer considers it stuck.
    pub stuck: bool,
    /// The host gave up waiting on it.
    pub unresponsive: bool,
    /// Its Hyper-V partition id and Xen domid while running.
    pub partition: Option<u64>,
    /// Its Xen domid while running.
    pub domid: Option<u16>,
    /// Operation counts since it started.
    pub operations: Operations,
    /// Protocol violations the daemon counted against its guest.
    pub violations: u64,
}

/// `POST /v1/vms`'s answer: the VM and the secret its guest proves itself with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    /// The VM.
    pub vm: VmInfo,
    /// Pass to `ballast guest --token`.
    pub token: String,
}

/// `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The daemon's version.
    pub version: String,
    /// The balancing policy.
    pub policy: String,
    /// Managed memory, bytes.
    pub memory_bytes: u64,
    /// Free managed memory, bytes.
    pub free_bytes: u64,
    /// Memory in the partitions' pools (the hypervisor's own use for them: VPs, tables),
    /// bytes. Free, pools and every running VM's assigned memory add up to the managed
    /// memory.
    pub pools_bytes: u64,
    /// Resident bytes of all guests' memory.
    pub resident_bytes: u64,
    /// Bytes the host took back from guests (ballooned and decreased) since it started.
    pub discarded_bytes: u64,
    /// The reserve, bytes.
    pub reserve_bytes: u64,
    /// Defined VMs.
    pub vms: usize,
    /// Running VMs.
    pub running: usize,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}
