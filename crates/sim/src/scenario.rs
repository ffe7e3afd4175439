//! A scenario: the host, its guests, their memory settings and workloads, and how long to
//! run them. Scenarios are TOML files (see `crates/sim/scenarios/`) or are built from a
//! trace ([`Scenario::from_trace`]).
//!
//! ```toml
//! name = "example"
//! host_memory = "12G"     # bytes, or a size string
//! duration_s = 600
//! # tick_s = 1.0, seed = 1, policy = "ballast", mode = "real-memory",
//! # reserve = "256M", post_caps_wait_s = 5.0
//!
//! [[guest]]
//! name = "web"
//! kind = "dm"             # or "xen"
//! startup = "1G"
//! minimum = "512M"
//! maximum = "3G"
//! # buffer = 20, weight = 50, vps = 2, count = 1, free_page_reporting = false
//! workload = { kind = "bursty", base = "700M", peak = "2.5G", mean_interval_s = 90, mean_length_s = 40 }
//! ```
//!
//! **Rounding.** The balancer moves memory in 2 MiB units, so sizes are made multiples of
//! 2 MiB before validation: a guest's startup, minimum and maximum and the reserve are
//! rounded *up* (a guest never gets less than the file says; the reserve never shrinks),
//! the host's memory *down* (the host never has more than the file says). Rounding up is
//! monotone, so `minimum <= startup <= maximum` survives it.
//!
//! **`count`.** A guest table with `count = N` stands for N guests named `name-1` ..
//! `name-N`, with the same settings; their workloads differ, because each guest's random
//! stream is keyed by its position in the expanded list.
//!
//! **`post_caps_wait_s`.** A Dynamic Memory host does not balance a guest until the guest
//! has been quiet for a while after capability negotiation: Hyper-V waits about 50 s after
//! boot. Scenarios start their clock at boot + 45 s (the guest is up and has negotiated),
//! so the remaining wait is 5 s, the default.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ballast_balancer::VmSettings;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::{GuestKind, Mode, ScenarioInfo};
use crate::size::{MIB, format_size, serde_size};
use crate::trace::{Trace, TraceError};
use crate::workload::{TraceCache, Workload, WorkloadError, WorkloadSpec};

/// The unit sizes are rounded to.
pub const GRANULE: u64 = 2 * MIB;

/// The bundled scenarios, by name: `(name, TOML text)`.
pub const BUNDLED: [(&str, &str); 3] = [
    ("default", include_str!("../scenarios/default.toml")),
    ("bursty", include_str!("../scenarios/bursty.toml")),
    ("diurnal", include_str!("../scenarios/diurnal.toml")),
];

/// The most guests a scenario may have (after `count`): far above any host's VM count,
/// low enough that a typo in `count` is an error rather than an exhausted machine.
pub const MAX_GUESTS: usize = 10_000;

/// The least a trace guest's minimum memory is set to (Hyper-V's default minimum).
pub const TRACE_MINIMUM: u64 = 512 * MIB;

/// The tick of a trace scenario, seconds: the trace changes once per 300 s sample, so a
/// 5 s tick still sees 60 steps of each interpolated change, and it cuts a 48 h,
/// 100-guest run from 17 million guest-ticks to 3.5 million.
pub const TRACE_TICK_S: f64 = 5.0;

/// Why a scenario could not be read.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type (toml's message names the line,
    /// the column and the key).
    #[error("{file}: {source}")]
    Parse {
        /// The file (or `<string>`).
        file: String,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A field's value is not allowed.
    #[error("{file}: {field}: {problem}")]
    Invalid {
        /// The file (or `<string>`).
        file: String,
        /// The field, e.g. `guest "web".minimum`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A guest's workload could not be built.
    #[error("{file}: guest {guest:?} workload: {source}")]
    Workload {
        /// The file (or `<string>`; the scenario's name when [`Scenario::workloads`]
        /// builds it).
        file: String,
        /// The guest.
        guest: String,
        /// The workload's error.
        source: Box<WorkloadError>,
    },
    /// The trace of [`Scenario::from_trace`] could not be read.
    #[error("{path}: {source}")]
    Trace {
        /// The trace file.
        path: PathBuf,
        /// The reader's error.
        source: TraceError,
    },
    /// The scenario could not be written as TOML.
    #[error("cannot write the scenario as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    /// [`Scenario::bundled`] was asked for a name it does not have.
    #[error("no bundled scenario {0:?} (have: default, bursty, diurnal)")]
    NoSuchBundled(String),
}

/// One guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guest {
    /// Its name, unique in the scenario.
    pub name: String,
    /// Its memory interface.
    pub kind: GuestKind,
    /// Memory it boots with, bytes.
    #[serde(with = "serde_size")]
    pub startup: u64,
    /// The least it may be given, bytes.
    #[serde(with = "serde_size")]
    pub minimum: u64,
    /// The most it may be given, bytes.
    #[serde(with = "serde_size")]
    pub maximum: u64,
    /// Memory over demand it should get, percent of demand (5-2000).
    pub buffer: u32,
    /// Its share under contention (0-100).
    pub weight: u32,
    /// Virtual processors.
    pub vps: u32,
    /// What it demands over time.
    pub workload: WorkloadSpec,
    /// It reports its free memory with the cold discard hint (free page reporting; DM
    /// guests only). `ballast compare` runs every policy both ways.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub free_page_reporting: bool,
}

impl Guest {
    /// Its settings as the balancer takes them.
    #[must_use]
    pub fn settings(&self) -> VmSettings {
        VmSettings {
            startup: self.startup,
            minimum: self.minimum,
            maximum: self.maximum,
            buffer_percent: self.buffer,
            weight: self.weight,
        }
    }
}

/// A validated scenario, `count` expanded and sizes rounded (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The host's managed memory, bytes.
    #[serde(with = "serde_size")]
    pub host_memory: u64,
    /// Virtual time to run, seconds.
    pub duration_s: f64,
    /// Balancer tick, seconds.
    pub tick_s: f64,
    /// The seed every random choice comes from.
    pub seed: u64,
    /// The policy `ballast run` uses when none is given.
    pub policy: String,
    /// Real memory or accounting only.
    pub mode: Mode,
    /// Memory the balancer must leave free, bytes.
    #[serde(with = "serde_size")]
    pub reserve: u64,
    /// A DM guest's quiet time after capability negotiation, seconds.
    pub post_caps_wait_s: f64,
    /// The guests, in order; a guest's index here keys its workload's randomness.
    #[serde(rename = "guest")]
    pub guests: Vec<Guest>,
}

fn default_tick() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1
}
fn default_policy() -> String {
    "ballast".to_owned()
}
fn default_file_mode() -> Mode {
    Mode::RealMemory
}
fn default_reserve() -> u64 {
    256 * MIB
}
fn default_post_caps_wait() -> f64 {
    5.0
}
fn default_buffer() -> u32 {
    20
}
fn default_weight() -> u32 {
    50
}
fn default_vps() -> u32 {
    2
}

/// Reads the file form, then expands and validates it as [`Scenario::from_toml_str`]
/// does, so a scenario embedded in another serde document is checked the same way.
impl<'de> Deserialize<'de> for Scenario {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = ScenarioFile::deserialize(deserializer)?;
        let scenario = Self::expand(raw, "<scenario>").map_err(D::Error::custom)?;
        scenario.validate().map_err(D::Error::custom)?;
        Ok(scenario)
    }
}

/// The file's form: defaults filled, `count` not yet expanded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(with = "serde_size")]
    host_memory: u64,
    duration_s: f64,
    #[serde(default = "default_tick")]
    tick_s: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_policy")]
    policy: String,
    #[serde(default = "default_file_mode")]
    mode: Mode,
    #[serde(default = "default_reserve", with = "serde_size")]
    reserve: u64,
    #[serde(default = "default_post_caps_wait")]
    post_caps_wait_s: f64,
    #[serde(default)]
    guest: Vec<GuestFile>,
}

/// A `[[guest]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestFile {
    name: String,
    kind: GuestKind,
    #[serde(with = "serde_size")]
    startup: u64,
    #[serde(with = "serde_size")]
    minimum: u64,
    #[serde(with = "serde_size")]
    maximum: u64,
    #[serde(default = "default_buffer")]
    buffer: u32,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default = "default_vps")]
    vps: u32,
    workload: WorkloadSpec,
    count: Option<u32>,
    #[serde(default)]
    free_page_reporting: bool,
}

/// Rounds up to the granule (saturating at the largest multiple).
fn round_up(bytes: u64) -> u64 {
    bytes
        .checked_next_multiple_of(GRANULE)
        .unwrap_or(u64::MAX - u64::MAX % GRANULE)
}

/// Rounds down to the granule.
fn round_down(bytes: u64) -> u64 {
    bytes - bytes % GRANULE
}

impl Scenario {
    /// Parses and validates a scenario from TOML text. Relative trace paths are left as
    /// they are (read from the working directory).
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Parse`] or [`ScenarioError::Invalid`], naming `<string>` as the
    /// file.
    pub fn from_toml_str(text: &str) -> Result<Self, ScenarioError> {
        Self::from_toml_named(text, "<string>")
    }

    /// As [`Scenario::from_toml_str`], naming `file` in errors.
    ///
    /// # Errors
    ///
    /// As [`Scenario::from_toml_str`].
    pub fn from_toml_named(text: &str, file: &str) -> Result<Self, ScenarioError> {
        let raw: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_owned(),
            source: Box::new(e),
        })?;
        let scenario = Self::expand(raw, file)?;
        scenario.validate_named(file)?;
        Ok(scenario)
    }

    /// Reads and validates a scenario file. A trace workload's relative `file` is read
    /// from the scenario file's directory.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Read`], or as [`Scenario::from_toml_str`] with the path named.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut scenario = Self::from_toml_named(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        for guest in &mut scenario.guests {
            if let WorkloadSpec::Trace { file, .. } = &mut guest.workload {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
        Ok(scenario)
    }

    /// A bundled scenario by name (`default`, `bursty`, `diurnal`).
    ///
    /// # Errors
    ///
    /// [`ScenarioError::NoSuchBundled`] for another name; a bundled file that does not
    /// validate is a bug the tests catch.
    pub fn bundled(name: &str) -> Result<Self, ScenarioError> {
        let (file, text) = BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ScenarioError::NoSuchBundled(name.to_owned()))?;
        Self::from_toml_named(text, &format!("{file}.toml"))
    }

    /// The default scenario (`crates/sim/scenarios/default.toml`): eight guests, four DM
    /// and four Xen, mixed workloads on an overcommitted 12 GiB host, 600 s.
    ///
    /// # Errors
    ///
    /// Only if the bundled file is broken, which the tests rule out.
    pub fn default_scenario() -> Result<Self, ScenarioError> {
        Self::bundled("default")
    }

    /// Writes the scenario as TOML that [`Scenario::from_toml_str`] reads back to an equal
    /// scenario (guests expanded, sizes as short strings).
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Serialize`] (not expected for a validated scenario).
    pub fn to_toml_string(&self) -> Result<String, ScenarioError> {
        Ok(toml::to_string(self)?)
    }

    /// Turns the file form into a scenario: `count` expanded, sizes rounded.
    fn expand(raw: ScenarioFile, file: &str) -> Result<Self, ScenarioError> {
        let mut guests = Vec::with_capacity(raw.guest.len());
        for g in raw.guest {
            let copies = match g.count {
                None => None,
                Some(0) => {
                    return Err(ScenarioError::Invalid {
                        file: file.to_owned(),
                        field: format!("guest {:?}.count", g.name),
                        problem: "must be at least 1".to_owned(),
                    });
                }
                Some(n) => Some(n),
            };
            let make = |name: String| Guest {
                name,
                kind: g.kind,
                startup: round_up(g.startup),
                minimum: round_up(g.minimum),
                maximum: round_up(g.maximum),
                buffer: g.buffer,
                weight: g.weight,
                vps: g.vps,
                workload: g.workload.clone(),
                free_page_reporting: g.free_page_reporting,
            };
            let adding = copies.map_or(1, |n| n as usize);
            if guests.len().saturating_add(adding) > MAX_GUESTS {
                return Err(ScenarioError::Invalid {
                    file: file.to_owned(),
                    field: format!("guest {:?}.count", g.name),
                    problem: format!("the scenario would have more than {MAX_GUESTS} guests"),
                });
            }
            match copies {
                None => guests.push(make(g.name.clone())),
                Some(n) => guests.extend((1..=n).map(|i| make(format!("{}-{i}", g.name)))),
            }
        }
        Ok(Self {
            name: raw.name,
            host_memory: round_down(raw.host_memory),
            duration_s: raw.duration_s,
            tick_s: raw.tick_s,
            seed: raw.seed,
            policy: raw.policy,
            mode: raw.mode,
            reserve: round_up(raw.reserve),
            post_caps_wait_s: raw.post_caps_wait_s,
            guests,
        })
    }

    /// Checks every rule (see [`Scenario::validate_named`]), naming `<scenario>`.
    ///
    /// # Errors
    ///
    /// The first [`ScenarioError::Invalid`] or [`ScenarioError::Workload`] found.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.validate_named("<scenario>")
    }

    /// Checks the scenario: a name and a policy; host memory above the reserve; duration
    /// and tick finite, positive, tick <= duration; a non-negative wait; at least one
    /// guest and at most [`MAX_GUESTS`], names unique and non-empty; per guest `0 < minimum <= startup <= maximum`,
    /// sizes multiples of 2 MiB, buffer 5-2000, weight 0-100, 1-240 VPs, a workload that
    /// builds (trace workloads are checked when built, see [`Scenario::workloads`]); and
    /// the guests' startup memory together within the host's memory, since every guest
    /// boots with it.
    ///
    /// # Errors
    ///
    /// The first [`ScenarioError::Invalid`] or [`ScenarioError::Workload`] found, naming
    /// `file`.
    pub fn validate_named(&self, file: &str) -> Result<(), ScenarioError> {
        let invalid = |field: &str, problem: String| {
            Err(ScenarioError::Invalid {
                file: file.to_owned(),
                field: field.to_owned(),
                problem,
            })
        };
        if self.name.trim().is_empty() {
            return invalid("name", "is empty".into());
        }
        if self.policy.trim().is_empty() {
            return invalid("policy", "is empty".into());
        }
        if self.host_memory == 0 {
            return invalid("host_memory", "is less than 2 MiB".into());
        }
        if self.reserve >= self.host_memory {
            return invalid(
                "reserve",
                format!(
                    "{} leaves nothing of host_memory {}",
                    format_size(self.reserve),
                    format_size(self.host_memory)
                ),
            );
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return invalid(
                "duration_s",
                format!("{} is not a positive number", self.duration_s),
            );
        }
        if !(self.tick_s.is_finite() && self.tick_s > 0.0) {
            return invalid(
                "tick_s",
                format!("{} is not a positive number", self.tick_s),
            );
        }
        if self.tick_s > self.duration_s {
            return invalid(
                "tick_s",
                format!(
                    "{} is longer than duration_s {}",
                    self.tick_s, self.duration_s
                ),
            );
        }
        if !(self.post_caps_wait_s.is_finite() && self.post_caps_wait_s >= 0.0) {
            return invalid(
                "post_caps_wait_s",
                format!("{} is not a number >= 0", self.post_caps_wait_s),
            );
        }
        if self.guests.is_empty() {
            return invalid("guest", "the scenario has no guest".into());
        }
        if self.guests.len() > MAX_GUESTS {
            return invalid("guest", format!("more than {MAX_GUESTS} guests"));
        }
        let mut names = HashSet::new();
        for (index, g) in self.guests.iter().enumerate() {
            let field = |f: &str| format!("guest {:?}.{f}", g.name);
            if g.name.trim().is_empty() {
                return invalid(&format!("guest[{index}].name"), "is empty".into());
            }
            if !names.insert(g.name.as_str()) {
                return invalid(&field("name"), "is used by another guest".into());
            }
            for (f, v) in [
                ("startup", g.startup),
                ("minimum", g.minimum),
                ("maximum", g.maximum),
            ] {
                if v % GRANULE != 0 {
                    return invalid(&field(f), format!("{v} is not a multiple of 2 MiB"));
                }
            }
            if g.minimum == 0 {
                return invalid(&field("minimum"), "is zero".into());
            }
            if g.minimum > g.startup {
                return invalid(
                    &field("minimum"),
                    format!(
                        "{} is above startup {}",
                        format_size(g.minimum),
                        format_size(g.startup)
                    ),
                );
            }
            if g.startup > g.maximum {
                return invalid(
                    &field("maximum"),
                    format!(
                        "{} is below startup {}",
                        format_size(g.maximum),
                        format_size(g.startup)
                    ),
                );
            }
            if !(5..=2000).contains(&g.buffer) {
                return invalid(&field("buffer"), format!("{} is outside 5-2000", g.buffer));
            }
            if g.weight > 100 {
                return invalid(&field("weight"), format!("{} is above 100", g.weight));
            }
            if g.free_page_reporting && g.kind == GuestKind::Xen {
                return invalid(
                    &field("free_page_reporting"),
                    "free page reporting is a Hyper-V interface (the cold discard hint): DM guests only".to_owned(),
                );
            }
            if !(1..=240).contains(&g.vps) {
                return invalid(&field("vps"), format!("{} is outside 1-240", g.vps));
            }
            if !matches!(g.workload, WorkloadSpec::Trace { .. }) {
                Workload::new(&g.workload, self.seed, index).map_err(|source| {
                    ScenarioError::Workload {
                        file: file.to_owned(),
                        guest: g.name.clone(),
                        source: Box::new(source),
                    }
                })?;
            }
        }
        let startup = self.total_startup();
        if startup > self.host_memory {
            return invalid(
                "guest",
                format!(
                    "the guests' startup memory ({}) exceeds host_memory ({}): every guest boots with its startup memory",
                    format_size(startup),
                    format_size(self.host_memory)
                ),
            );
        }
        Ok(())
    }

    /// The guests' startup memory together, bytes (saturating).
    #[must_use]
    pub fn total_startup(&self) -> u64 {
        self.guests
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(g.startup))
    }

    /// The guests' maximum memory together, bytes (saturating): above the host's memory,
    /// the host is overcommitted.
    #[must_use]
    pub fn total_maximum(&self) -> u64 {
        self.guests
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(g.maximum))
    }

    /// Builds every guest's workload, in guest order, each keyed by the scenario's seed
    /// and the guest's index. Traces are read once.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Workload`] naming the first guest whose workload fails.
    pub fn workloads(&self) -> Result<Vec<Workload>, ScenarioError> {
        let mut cache = TraceCache::new();
        self.guests
            .iter()
            .enumerate()
            .map(|(index, g)| {
                Workload::with_traces(&g.workload, self.seed, index, &mut cache).map_err(|source| {
                    ScenarioError::Workload {
                        file: self.name.clone(),
                        guest: g.name.clone(),
                        source: Box::new(source),
                    }
                })
            })
            .collect()
    }

    /// The scenario as `results.json` records it.
    #[must_use]
    pub fn info(&self) -> ScenarioInfo {
        ScenarioInfo {
            name: self.name.clone(),
            guests: self.guests.len(),
            host_memory_bytes: self.host_memory,
            duration_s: self.duration_s,
            seed: self.seed,
            mode: self.mode,
        }
    }

    /// A scenario replaying every VM of a trace file.
    ///
    /// - One guest per trace VM, in trace order, named `vm-<id>`; kinds alternate by
    ///   position, DM first (even positions DM, odd Xen), so both interfaces see a fair
    ///   half of the trace's sizes.
    /// - `startup` = the VM's capacity rounded up to 2 MiB (the VM as provisioned),
    ///   `maximum` = `startup`, `minimum` = `min(startup, 512 MiB)` (Hyper-V's default
    ///   minimum; tiny VMs keep their size), buffer 20 %, weight 50, 2 VPs; the workload
    ///   replays the VM with the default overhead model ([`crate::trace`]).
    /// - `host_memory` defaults to the guests' startup memory together: the host a
    ///   provider that does not overcommit needs, on which `static` (every VM at its
    ///   startup memory) fits. A smaller host scales every startup down in proportion
    ///   (rounded down to 2 MiB, not below the guest's minimum) so the guests can boot;
    ///   if even the minima do not fit, validation says so.
    /// - The run's time is the trace's time (its origin is shared by all VMs) and lasts to
    ///   the last sample, rounded up to a tick; the tick is [`TRACE_TICK_S`].
    /// - The mode is [`default_mode`] of the host's memory; seed 1, policy `ballast`,
    ///   reserve 256 MiB, post-negotiation wait 5 s.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Trace`] if the trace cannot be read, [`ScenarioError::Invalid`]
    /// if the result does not validate.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn from_trace(
        path: impl AsRef<Path>,
        host_memory: Option<u64>,
    ) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let trace = Trace::load(path).map_err(|source| ScenarioError::Trace {
            path: path.to_path_buf(),
            source,
        })?;
        let mut guests: Vec<Guest> = trace
            .vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let startup = round_up(vm.capacity);
                Guest {
                    name: format!("vm-{}", vm.vm_id),
                    kind: if i % 2 == 0 {
                        GuestKind::Dm
                    } else {
                        GuestKind::Xen
                    },
                    startup,
                    minimum: startup.min(TRACE_MINIMUM),
                    maximum: startup,
                    buffer: default_buffer(),
                    weight: default_weight(),
                    vps: default_vps(),
                    free_page_reporting: false,
                    workload: WorkloadSpec::Trace {
                        file: path.to_path_buf(),
                        vm_id: vm.vm_id,
                        overhead_base: None,
                        overhead_percent: crate::trace::Overhead::DEFAULT_PERCENT,
                        start_s: 0.0,
                    },
                }
            })
            .collect();
        let total: u64 = guests.iter().fold(0u64, |s, g| s.saturating_add(g.startup));
        // The default host holds every VM's provisioned memory, the hypervisor's own
        // memory for each partition and the balancer's reserve: what a host without
        // ballooning needs, so that `static` fits.
        let overhead = (guests.len() as u64)
            .saturating_mul(TRACE_HYPERVISOR_SHARE)
            .saturating_add(default_reserve());
        let host = host_memory.map_or(total.saturating_add(overhead), round_down);
        if host < total {
            scale_startups(&mut guests, host);
        }
        let (_, last) = trace.time_range();
        let duration_s = ((last / TRACE_TICK_S).ceil() * TRACE_TICK_S).max(TRACE_TICK_S);
        let name = format!(
            "trace:{}",
            path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into_owned()
            )
        );
        let scenario = Self {
            name,
            host_memory: host,
            duration_s,
            tick_s: TRACE_TICK_S,
            seed: default_seed(),
            policy: default_policy(),
            mode: default_mode(host),
            reserve: default_reserve(),
            post_caps_wait_s: default_post_caps_wait(),
            guests,
        };
        scenario.validate_named(&path.display().to_string())?;
        Ok(scenario)
    }
}

/// Scales the guests' startup memory down so that together it fits in `host`: one factor
/// for all, except that a guest never goes below its minimum, and the guests held at their
/// minimum leave the rest to share the remainder (repeated until no new guest hits its
/// minimum). Startups are rounded down to 2 MiB. If the minima alone do not fit, every
/// guest ends at its minimum and validation reports the overflow.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn scale_startups(guests: &mut [Guest], host: u64) {
    let original: Vec<u64> = guests.iter().map(|g| g.startup).collect();
    let mut pinned = vec![false; guests.len()];
    // Each pass pins at least one more guest or ends, so this many passes suffice.
    for _ in 0..=guests.len() {
        let fixed: u64 = guests
            .iter()
            .zip(&pinned)
            .filter(|(_, p)| **p)
            .fold(0u64, |sum, (g, _)| sum.saturating_add(g.minimum));
        let free: u64 = original
            .iter()
            .zip(&pinned)
            .filter(|(_, p)| !**p)
            .fold(0u64, |sum, (s, _)| sum.saturating_add(*s));
        let scale = if free == 0 {
            0.0
        } else {
            (host.saturating_sub(fixed) as f64 / free as f64).min(1.0)
        };
        let mut changed = false;
        for ((g, &start), p) in guests.iter_mut().zip(&original).zip(pinned.iter_mut()) {
            if *p {
                g.startup = g.minimum;
                continue;
            }
            let scaled = round_down((start as f64 * scale) as u64);
            if scaled <= g.minimum {
                *p = true;
                changed = true;
                g.startup = g.minimum;
            } else {
                g.startup = scaled;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Host memory a trace scenario's default host adds per guest for the hypervisor's own
/// use (the partition's pool: creation, initialization and VP charges), bytes.
pub const TRACE_HYPERVISOR_SHARE: u64 = 16 << 20;

/// The mode a scenario of this host size should run in on this machine: real memory if
/// it fits in half of the machine's memory (`MemTotal` of `/proc/meminfo`; the other half
/// is for the rest of the machine's work), accounting otherwise or if the machine's
/// memory cannot be read.
#[must_use]
pub fn default_mode(host_memory: u64) -> Mode {
    mode_for(host_memory, mem_total())
}

/// [`default_mode`]'s rule for a given machine memory (`None`: unknown).
#[must_use]
pub fn mode_for(host_memory: u64, mem_total: Option<u64>) -> Mode {
    match mem_total {
        Some(total) if host_memory <= total / 2 => Mode::RealMemory,
        _ => Mode::Accounting,
    }
}

/// The machine's memory from `/proc/meminfo`, bytes.
fn mem_total() -> Option<u64> {
    meminfo("MemTotal")
}

/// A field of `/proc/meminfo` (`MemTotal`, `MemAvailable`), bytes.
pub(crate) fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, field)
}

/// `MemTotal:  24576000 kB` -> bytes.
#[cfg(test)]
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    parse_meminfo(meminfo, "MemTotal")
}

/// `FIELD:  24576000 kB` -> bytes.
fn parse_meminfo(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let mut parts = line[field.len() + 1..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    const MINIMAL: &str = r#"
name = "t"
host_memory = "4G"
duration_s = 60
[[guest]]
name = "a"
kind = "dm"
startup = "1G"
minimum = "512M"
maximum = "2G"
workload = { kind = "idle", base = "200M" }
"#;

    #[test]
    fn defaults_fill_in() {
        let s = Scenario::from_toml_str(MINIMAL).unwrap();
        assert_eq!(s.tick_s, 1.0);
        assert_eq!(s.seed, 1);
        assert_eq!(s.policy, "ballast");
        assert_eq!(s.mode, Mode::RealMemory);
        assert_eq!(s.reserve, 256 * MIB);
        assert_eq!(s.post_caps_wait_s, 5.0);
        let g = &s.guests[0];
        assert_eq!((g.buffer, g.weight, g.vps), (20, 50, 2));
        assert_eq!(
            g.settings(),
            VmSettings {
                startup: GIB,
                minimum: 512 * MIB,
                maximum: 2 * GIB,
                buffer_percent: 20,
                weight: 50
            }
        );
        assert_eq!(s.info().guests, 1);
    }

    #[test]
    fn sizes_round_to_two_mib() {
        let text = MINIMAL
            .replace("\"4G\"", "4296015872") // 4 GiB + 1 MiB: rounds down to 4 GiB.
            .replace("\"512M\"", "536870913"); // 512 MiB + 1: rounds up to 514 MiB.
        let s = Scenario::from_toml_str(&text).unwrap();
        assert_eq!(s.host_memory, 4 * GIB);
        assert_eq!(s.guests[0].minimum, 514 * MIB);
    }

    #[test]
    fn deserialize_validates() {
        let s: Scenario = toml::from_str(MINIMAL).unwrap();
        assert_eq!(s, Scenario::from_toml_str(MINIMAL).unwrap());
        let bad = MINIMAL.replace("duration_s = 60", "duration_s = -1");
        let e = toml::from_str::<Scenario>(&bad).unwrap_err().to_string();
        assert!(e.contains("duration_s"), "{e}");
    }

    #[test]
    fn meminfo_parses() {
        assert_eq!(
            parse_mem_total("MemFree: 1 kB\nMemTotal:  1024 kB\n"),
            Some(1 << 20)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mode_for(8 * GIB, Some(24 * GIB)), Mode::RealMemory);
        assert_eq!(mode_for(13 * GIB, Some(24 * GIB)), Mode::Accounting);
        assert_eq!(mode_for(GIB, None), Mode::Accounting);
    }
}
