//! Memory balancing for ballast: a pure function from a snapshot of the host to target
//! changes.
//!
//! The host (or the simulator) takes a [`Snapshot`] every balancer tick and hands it to a
//! [`Balancer`]; the balancer answers with the new targets, which the host applies through
//! the memory interfaces (a DM balloon, unballoon or hot-add; a Xen balloon target). The
//! balancer reads no clock and makes no call: time comes in the snapshot, and the history
//! a policy keeps is its own state, so a run is deterministic.
//!
//! A [`Policy`] says what each VM should have; the [`Arbiter`] turns those wishes into
//! targets under the rules every policy shares (DESIGN "Decisions: balancer"): clamping to
//! the VM's minimum and maximum, sharing by weight under contention, reclaim before grant,
//! bounded steps, a minimum change, stuck detection and hysteresis.
//!
//! # Policies
//!
//! [`POLICIES`] names them; [`Balancer::by_name`] builds one.
//!
//! - `ballast` ([`policies::Ballast`]): headroom from each VM's own volatility (its rises
//!   within a minute, capped at where its demand usually peaks), a one-minute hold on
//!   freed memory, a lead on sustained rises.
//! - `static` ([`policies::Static`]): the startup memory, as with Dynamic Memory off.
//! - `hyperv` ([`policies::HyperV`]): committed x (1 + buffer), Hyper-V's rule.
//! - `proportional` ([`policies::Proportional`]): squeezed's one fraction of every VM's
//!   range, ignoring demand.
//! - `vpa` ([`policies::Vpa`]): the Kubernetes VPA recommender on 5-minute peaks.
//! - `oracle` ([`policies::Oracle`]): the demand peak of the simulator's lookahead with no
//!   pacing, the lower bound.
//!
//! # Sources
//!
//! - **Hyper-V Dynamic Memory** (the `Set-VMMemory` documentation and Microsoft's
//!   descriptions of the balancer): the settings (startup, minimum, maximum, buffer,
//!   weight), demand = committed memory, target = demand x (1 + buffer), sharing by
//!   weight under shortage. The [`policies::HyperV`] policy is that behaviour.
//! - **xapi squeezed** (`lib/squeeze.ml`): the balancer as a pure function of a snapshot;
//!   the proportional policy ([`policies::Proportional`]); reclaim before grant; a
//!   stuck detector.
//! - **oVirt MOM** (`balloon.rules`): a bounded step per tick and a minimum change.
//! - **Kubernetes VPA** (the recommender): decaying histograms of window peaks, P90 plus a
//!   margin, the OOM bump ([`policies::Vpa`]).
//! - **Google Autopilot** (EuroSys'20): limits from decaying peaks, the idea behind
//!   [`policies::Ballast`]'s held level.
//!
//! # Deviations
//!
//! - Stuck after 60 s without progress, not squeezed's 5 s: DM operations on a loaded
//!   guest can take tens of seconds.
//! - Weight 0 is Hyper-V's lowest priority: such a VM shares only memory the weighted VMs
//!   leave, rather than being starved while memory sits unused.
//! - Hysteresis is asymmetric: reductions wait (30 s below a band), grants only need to
//!   clear a small band, because a VM short of memory pages while a VM with slack only
//!   costs host memory. Under contention holds are lifted.
//! - A grant may take up to 25% of the VM's maximum per tick (MOM moves 5%): the step
//!   bound guards against one wrong wish, and only reclaim has a pressure-spike history
//!   (vm0); a grant cannot over-commit the host since reclaim comes first.
//! - VPA's 24 h windows become 5-minute windows (see [`policies::vpa`]).
//!
//! # Example
//!
//! ```
//! use ballast_balancer::{Balancer, HostSnapshot, Snapshot, VmSettings, VmSnapshot};
//!
//! const GIB: u64 = 1 << 30;
//! let settings = VmSettings {
//!     startup: 2 * GIB,
//!     minimum: GIB,
//!     maximum: 8 * GIB,
//!     buffer_percent: 20,
//!     weight: 50,
//! };
//! let vm = VmSnapshot {
//!     settings,
//!     assigned: 2 * GIB,
//!     target: 2 * GIB,
//!     committed: Some(3 * GIB),
//!     report_age_s: 1.0,
//!     busy: false,
//!     unresponsive: false,
//!     future_peak: None,
//! };
//! let snap = Snapshot {
//!     host: HostSnapshot { now_s: 100.0, total: 16 * GIB, free: 14 * GIB, reserve: GIB },
//!     vms: vec![vm],
//! };
//! let mut balancer = Balancer::by_name("hyperv").unwrap();
//! let decision = balancer.tick(&snap);
//! // The VM is short of memory: Hyper-V's rule wants committed + 20% = 3.6 GiB, within
//! // one tick's step (25% of 8 GiB) and the free memory, so it is granted at once.
//! assert_eq!(decision.changes.len(), 1);
//! assert_eq!(decision.changes[0].target, 3 * GIB * 12 / 10);
//! assert!(decision.stuck.is_empty());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod arbiter;
mod histogram;
pub mod policies;
mod types;

pub use arbiter::{Amount, Arbiter, Decision, Rules};
pub use types::{HostSnapshot, Snapshot, TargetChange, VmSettings, VmSnapshot};

/// A balancing policy: what each VM should have now.
///
/// The arbiter's rules apply afterwards, so a policy only expresses demand and headroom;
/// it need not clamp, share or pace.
pub trait Policy: Send {
    /// The policy's name as results.json writes it.
    fn name(&self) -> &'static str;
    /// What each VM should have now, bytes, one entry per snapshot VM (before the
    /// arbiter's rules). A policy may keep history in `self`.
    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64>;
    /// The arbiter rules this policy runs under (oracle: no step bound, no min change,
    /// no hysteresis; everybody else: the defaults).
    fn rules(&self) -> Rules {
        Rules::default()
    }
}

/// The names [`Balancer::by_name`] knows, in the order results list them.
pub const POLICIES: &[&str] = &[
    "ballast",
    "static",
    "hyperv",
    "proportional",
    "vpa",
    "oracle",
];

/// A policy name [`Balancer::by_name`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balancing policy {name:?} (known: {known})", known = POLICIES.join(", "))]
pub struct UnknownPolicy {
    /// The name asked for.
    pub name: String,
}

/// A policy and the arbiter that applies its rules: one tick in, a decision out.
pub struct Balancer {
    policy: Box<dyn Policy>,
    arbiter: Arbiter,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy.name())
            .field("arbiter", &self.arbiter)
            .finish()
    }
}

impl Balancer {
    /// A balancer for `policy`, its arbiter running `policy.rules()`.
    pub fn new(policy: Box<dyn Policy>) -> Self {
        let arbiter = Arbiter::new(policy.rules());
        Balancer { policy, arbiter }
    }

    /// A balancer for one of the [`POLICIES`], by name.
    pub fn by_name(name: &str) -> Result<Self, UnknownPolicy> {
        let policy: Box<dyn Policy> = match name {
            "ballast" => Box::new(policies::Ballast::default()),
            "static" => Box::new(policies::Static),
            "hyperv" => Box::new(policies::HyperV),
            "proportional" => Box::new(policies::Proportional),
            "vpa" => Box::new(policies::Vpa::default()),
            "oracle" => Box::new(policies::Oracle),
            _ => {
                return Err(UnknownPolicy {
                    name: name.to_owned(),
                });
            }
        };
        Ok(Balancer::new(policy))
    }

    /// The policy's name.
    pub fn name(&self) -> &'static str {
        self.policy.name()
    }

    /// One balancer tick: the policy's wishes, then the arbiter's rules.
    pub fn tick(&mut self, snap: &Snapshot) -> Decision {
        let wishes = self.policy.wishes(snap);
        self.arbiter.arbitrate(snap, &wishes)
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_builds_and_reports_itself() {
        for &name in POLICIES {
            assert_eq!(Balancer::by_name(name).unwrap().name(), name);
        }
        let err = Balancer::by_name("squeezy").unwrap_err();
        assert_eq!(err.name, "squeezy");
        assert!(err.to_string().contains("ballast"));
    }

    #[test]
    fn oracle_runs_unbounded_rules_others_default() {
        for &name in POLICIES {
            let b = Balancer::by_name(name).unwrap();
            let want = if name == "oracle" {
                Rules::unbounded()
            } else {
                Rules::default()
            };
            assert_eq!(*b.arbiter.rules(), want, "{name}");
        }
    }
}
