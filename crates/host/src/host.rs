//! [`Host`]: the core, the backing, one Dynamic Memory session or Xen balloon target per
//! guest, and the balancer, stepped together on a clock the owner passes in.
//!
//! Every change of guest memory goes through the core and lands in the backing:
//!
//! - a DM balloon: the VSP's [`VspEvent::PagesReturned`] ranges, checked against the p2m
//!   by a range query, are released in the core ([`Hypervisor::release`]) and punched out
//!   of the guest's memfd;
//! - a DM unballoon or hot-add: the VSP calls the host's [`Backer`] before it queues the
//!   request, which populates the gfns in the core (and, for a hot-add, grows the memfd
//!   first), so no message names a page that is not there;
//! - a Xen guest gives pages back with `XENMEM_decrease_reservation` and takes them with
//!   `XENMEM_populate_physmap`, as the guest, through [`Host::xen_memory_op`], within the
//!   `max_pages` the host sets from its target (as libxl's `libxl_set_memory_target`
//!   does with `xc_domain_setmaxmem`).
//!
//! The host reads no clock: [`Host::step`] takes the time, so the same host runs a real
//! daemon (wall time) and a simulation (virtual time).

use std::collections::BTreeMap;
use std::time::Duration;

use ballast_backing::PageSize;
use ballast_balancer::{Balancer, HostSnapshot, Snapshot, VmSettings, VmSnapshot};
use ballast_core::{Config, DomId, GfnRange, GuestMemory, Hypervisor, MemoryOpResult, PartitionId};
use ballast_dm::PageSet;
use ballast_dm::vsp::{
    Backer, BackingRefused, HotAddResult, Transaction, Vsp, VspConfig, VspEvent, VspState,
};
use ballast_vmbus::ring::{Channel, ChannelSetup};
use ballast_vmbus::session::HostSession;
use thiserror::Error;

use crate::memory::{HostError, MemoryHost};
use crate::root::{self, RootCallError};

/// Bytes per page.
const PAGE: u64 = 4096;
/// A target within this many pages of what a guest has is reached: smaller moves cost a
/// protocol round trip for less than a 2 MiB block.
const SLACK_PAGES: u64 = 512;
/// Room above its target a Xen guest's `max_pages` keeps, as libxl's
/// `LIBXL_MAXMEM_CONSTANT` (1 MiB).
const XEN_MAXMEM_SLACK_PAGES: u64 = 256;
/// How long a Dynamic Memory guest may stay silent after it was made before the host
/// counts it unresponsive, at least: Linux sends its first status report 45 periods
/// (about 47 s) after the capabilities exchange and Hyper-V balances a guest from 50 s
/// after boot, so a guest with no report at all after two minutes has not finished its
/// handshake, or hung before its first report. The host's own quiet time
/// (`VspConfig::post_caps_wait`) plus a minute, when that is longer.
const FIRST_REPORT_DEADLINE: Duration = Duration::from_secs(120);
/// How long the host waits before asking again a guest that gave less than asked.
const BALLOON_BACKOFF: Duration = Duration::from_secs(5);
/// Data bytes of each direction of a DM ring (the VMBus default for the DM channel).
const RING_DATA_BYTES: u32 = 16 * 1024;

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingMode {
    /// A memfd per guest: real host memory, punched when ballooned.
    #[default]
    RealMemory,
    /// No memfd: the core keeps every account, no byte of guest memory exists (for
    /// simulating hosts larger than the machine).
    Accounting,
}

/// The host's settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Managed memory, bytes (rounded down to pages).
    pub memory_bytes: u64,
    /// Real memory or accounting only.
    pub backing: BackingMode,
    /// Memory the balancer leaves free, bytes.
    pub reserve_bytes: u64,
    /// The DM host's protocol settings for every DM guest.
    pub vsp: VspConfig,
    /// How often the balancer runs.
    pub balance_interval: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            backing: BackingMode::RealMemory,
            reserve_bytes: 64 << 20,
            vsp: VspConfig::default(),
            balance_interval: Duration::from_secs(1),
        }
    }
}

/// The interface a guest moves memory through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    /// Hyper-V Dynamic Memory over a VMBus ring.
    Dm,
    /// Xen: a balloon driver following the host's target with `memory_op`.
    Xen,
}

/// A guest to create.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Its name.
    pub name: String,
    /// Its interface.
    pub kind: VmKind,
    /// Its memory settings.
    pub settings: VmSettings,
    /// Virtual processors (each charged to its pool by HvCreateVp).
    pub vps: u32,
    /// The guest may report free memory with the cold discard hint
    /// (HvExtCallMemoryHeatHint): its partition gets the EnableExtendedHypercalls
    /// privilege. A Hyper-V interface: a Xen guest ignores it.
    pub free_page_reporting: bool,
}

/// A guest of this host: an index into its guest list, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub usize);

/// Operations and pages moved, per guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Balloon operations completed.
    pub balloon: u64,
    /// Pages ballooned (accepted).
    pub balloon_pages: u64,
    /// Unballoon operations started.
    pub unballoon: u64,
    /// Pages unballooned.
    pub unballoon_pages: u64,
    /// Hot-add operations completed.
    pub hot_add: u64,
    /// Pages hot-added (reported added).
    pub hot_add_pages: u64,
    /// `XENMEM_decrease_reservation` calls.
    pub decrease: u64,
    /// Pages given up by decrease.
    pub decrease_pages: u64,
    /// `XENMEM_populate_physmap` calls.
    pub populate: u64,
    /// Pages populated.
    pub populate_pages: u64,
    /// Target changes.
    pub target_changes: u64,
    /// Operations that failed or timed out, and pages the core refused to release.
    pub failures: u64,
    /// Cold discard hints (HvExtCallMemoryHeatHint calls), whatever their status.
    pub hint: u64,
    /// Pages whose contents hints discarded (they stay the guest's).
    pub hint_pages: u64,
}

/// What went wrong in the host.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VmError {
    /// The memory layer failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A root hypercall failed.
    #[error(transparent)]
    Root(#[from] RootCallError),
    /// The VM's settings are unusable.
    #[error("VM {name:?}: {why}")]
    Settings {
        /// The VM.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The host has too little free memory for the VM's startup memory.
    #[error("VM {name:?} needs {needed} bytes at startup, the host has {free} free")]
    NoMemory {
        /// The VM.
        name: String,
        /// Startup bytes.
        needed: u64,
        /// Free bytes.
        free: u64,
    },
    /// No such VM.
    #[error("no VM {0:?}")]
    NoVm(VmId),
    /// The VM's DM channel could not be set up.
    #[error("DM channel: {0}")]
    Channel(String),
    /// The operation does not apply to this kind of VM.
    #[error("VM {0:?} is not a {1} guest")]
    WrongKind(VmId, &'static str),
}

/// How a DM guest's ring reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmRing {
    /// Both ends in this process, signalled in process: the guest's end is taken with
    /// [`Host::take_dm_channel`] and driven on a thread or in the same loop.
    #[default]
    InProcess,
    /// Shared memory and eventfd doorbells: the guest's half is taken with
    /// [`Host::take_dm_setup`] and sent to the guest's process over a Unix socket
    /// ([`ChannelSetup::send`], SCM_RIGHTS), where [`ChannelSetup::receive`] makes it a
    /// channel.
    Shared,
}

/// The guest's end of a DM ring, until the guest takes it.
enum GuestEnd {
    InProcess(Box<Channel>),
    Shared(Box<ChannelSetup>),
}

enum Link {
    Dm {
        session: Box<HostSession<()>>,
        /// The guest's end, until the guest takes it.
        guest_end: Option<GuestEnd>,
        /// The hot-add in flight or timed out: (first gfn, pages backed, pages the guest
        /// reported added before a timeout).
        hot_add: Option<(u64, u64, u64)>,
    },
    Xen,
}

struct Vm {
    config: VmConfig,
    id: PartitionId,
    domid: DomId,
    link: Link,
    /// Target, pages.
    target: u64,
    /// Guest-physical pages the memfd spans now.
    region: u64,
    /// Guest-physical pages it may grow to.
    region_max: u64,
    committed: Option<u64>,
    /// The guest's last report of its free memory (DM `num_avail`), bytes.
    available: Option<u64>,
    reported_at: Duration,
    unresponsive: bool,
    stuck: bool,
    future_peak: Option<u64>,
    /// No balloon request before this time: the guest last gave less than asked (it is
    /// at its floor), and asking again at once would only repeat the answer.
    balloon_backoff: Duration,
    /// An operator's fixed target, pages ([`Host::pin_target`]).
    pinned: Option<u64>,
    ops: OpCounts,
}

/// What [`Host::resume_vm`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeReport {
    /// Memory the guest keeps, bytes.
    pub kept_bytes: u64,
    /// Memory it had given the host, bytes.
    pub ballooned_bytes: u64,
    /// Resident memory outside what it keeps, punched by the audit, bytes.
    pub punched_bytes: u64,
}

/// One guest as the owner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmView {
    /// Its name.
    pub name: String,
    /// Its interface.
    pub kind: VmKind,
    /// Its settings.
    pub settings: VmSettings,
    /// Its Hyper-V partition id.
    pub partition: PartitionId,
    /// Its Xen domid.
    pub domid: DomId,
    /// Memory it holds now (mapped guest RAM), bytes.
    pub assigned: u64,
    /// The balancer's target, bytes.
    pub target: u64,
    /// Its last reported committed memory, bytes.
    pub committed: Option<u64>,
    /// Its last reported free memory, bytes (Dynamic Memory's `num_avail`; `None` for a
    /// Xen guest, whose reports carry only what it commits).
    pub available: Option<u64>,
    /// Memory in its balloon now, bytes: for a DM guest the pages the VSP holds
    /// ballooned, for a Xen guest what its guest-physical space holds unpopulated.
    pub ballooned: u64,
    /// Resident bytes of its memfd (`None` in accounting mode).
    pub resident: Option<u64>,
    /// The host gave up waiting on it.
    pub unresponsive: bool,
    /// The balancer considers it stuck.
    pub stuck: bool,
    /// It may report free memory (cold discard hints).
    pub free_page_reporting: bool,
    /// Operations so far.
    pub ops: OpCounts,
}

/// The host.
pub struct Host {
    mem: MemoryHost,
    config: HostConfig,
    vms: BTreeMap<VmId, Vm>,
    next_vm: usize,
    balancer: Balancer,
    next_balance: Duration,
    now: Duration,
    /// Pages of managed memory (frames).
    frames: u64,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("frames", &self.frames)
            .field("vms", &self.vms.len())
            .field("policy", &self.balancer.name())
            .finish()
    }
}

impl Host {
    /// A host of `config.memory_bytes` managed memory, balanced by `balancer`.
    pub fn new(config: HostConfig, balancer: Balancer) -> Result<Self, HostError> {
        let frames = (config.memory_bytes / PAGE).min(u64::from(u32::MAX - 2));
        // The host's managed memory is one node; the frame count fits u32 by the clamp.
        let mem = MemoryHost::new(Config::single_node(frames as u32))?;
        Ok(Host {
            mem,
            config,
            vms: BTreeMap::new(),
            next_vm: 0,
            balancer,
            next_balance: Duration::ZERO,
            now: Duration::ZERO,
            frames,
        })
    }

    /// The memory layer (core and backing), to read.
    pub fn memory(&self) -> &MemoryHost {
        &self.mem
    }

    /// The core, to read.
    pub fn hv(&self) -> &Hypervisor {
        self.mem.hv()
    }

    /// The balancer's policy name.
    pub fn policy(&self) -> &'static str {
        self.balancer.name()
    }

    /// The settings.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Creates a guest: a child partition made by hypercalls, its memory (a memfd of its
    /// startup size for a DM guest, growable by hot-add to its maximum; of its maximum
    /// for a Xen guest, whose balloon holds the rest), its startup memory populated, and
    /// for a DM guest a VSP on a fresh in-process ring whose guest end
    /// [`take_dm_channel`](Self::take_dm_channel) hands out.
    pub fn create_vm(&mut self, config: VmConfig) -> Result<VmId, VmError> {
        self.create_vm_with_ring(config, DmRing::InProcess)
    }

    /// As [`create_vm`](Self::create_vm), with the DM guest's ring set up as `ring` says
    /// (a Xen guest has no ring; `ring` is then ignored).
    pub fn create_vm_with_ring(&mut self, config: VmConfig, ring: DmRing) -> Result<VmId, VmError> {
        let s = config.settings;
        let bad = |why| VmError::Settings {
            name: config.name.clone(),
            why,
        };
        if s.minimum > s.startup || s.startup > s.maximum {
            return Err(bad("minimum <= startup <= maximum must hold"));
        }
        if s.startup < 2 * SLACK_PAGES * PAGE {
            return Err(bad("startup memory below 4 MiB"));
        }
        if s.maximum / PAGE >= u64::from(u32::MAX) {
            return Err(bad("maximum beyond 16 TiB"));
        }
        let startup = s.startup / PAGE;
        let free = self.hv().frames().total_free();
        if startup > free {
            return Err(VmError::NoMemory {
                name: config.name.clone(),
                needed: s.startup,
                free: free * PAGE,
            });
        }
        let id = outcome(
            self.mem
                .run(|hv| root::create_partition(hv, config.vps.max(1))),
        )?;
        let max = s.maximum / PAGE;
        let (region, region_max) = match config.kind {
            VmKind::Dm => (
                startup,
                max.next_multiple_of(ballast_dm::vsc::DEFAULT_BLOCK_PAGES),
            ),
            VmKind::Xen => (max, max),
        };
        let made = (|| -> Result<(), VmError> {
            match self.config.backing {
                BackingMode::RealMemory => {
                    self.mem
                        .attach_memory(id, region, region_max, PageSize::Base)?
                }
                BackingMode::Accounting => self.mem.attach_accounting(id, region)?,
            }
            // Room for the startup memory; a Xen guest's follows its target from now on.
            outcome(self.mem.run(|hv| set_max_pages(hv, id, max.max(startup))))?;
            outcome(self.mem.run(|hv| hv.populate(id, 0, startup))).map_err(HostError::from)?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.mem.run(|hv| root::destroy_partition(hv, id));
            self.mem.detach_memory(id);
            return Err(e);
        }
        self.finish_vm(
            config,
            id,
            ring,
            Vsp::new(self.config.vsp.clone()),
            startup,
            region,
            region_max,
        )
    }

    /// Takes over a guest that ran on while its host restarted: a new partition made by
    /// hypercalls as for [`create_vm_with_ring`](Self::create_vm_with_ring), on the guest's
    /// own memory (`memory`, the memfd it kept), owning the guest-physical pages
    /// `[0, ram_top)` except `ballooned` (what the guest had given the host). Those pages
    /// are mapped, and the memfd is audited against them: anything resident outside them
    /// (a page ballooned but not yet punched when the old host died, or a guest that
    /// lies) is punched. A DM guest's VSP starts holding `ballooned`, to give back by
    /// unballoon later.
    ///
    /// The guest's word is checked against what it may hold, not trusted: `ram_top`
    /// within its memfd, the ranges within `[0, ram_top)`, the pages it keeps within its
    /// maximum and the host's free memory. A guest that claims more than it had can
    /// keep at most its maximum, which the balancer then reclaims as from any guest.
    pub fn resume_vm(
        &mut self,
        config: VmConfig,
        ring: DmRing,
        memory: std::os::fd::OwnedFd,
        ram_top: u64,
        ballooned: &[GfnRange],
    ) -> Result<(VmId, ResumeReport), VmError> {
        let s = config.settings;
        let bad = |why| VmError::Settings {
            name: config.name.clone(),
            why,
        };
        if s.minimum > s.startup || s.startup > s.maximum {
            return Err(bad("minimum <= startup <= maximum must hold"));
        }
        if s.maximum / PAGE >= u64::from(u32::MAX) {
            return Err(bad("maximum beyond 16 TiB"));
        }
        if self.config.backing != BackingMode::RealMemory {
            return Err(bad(
                "a guest's own memory can be taken over only in real-memory mode",
            ));
        }
        let max = s.maximum / PAGE;
        let region_max = match config.kind {
            VmKind::Dm => max.next_multiple_of(ballast_dm::vsc::DEFAULT_BLOCK_PAGES),
            VmKind::Xen => max,
        };
        let mut held = PageSet::new();
        for r in ballooned {
            if r.end() > ram_top {
                return Err(bad("a ballooned range beyond the guest's RAM"));
            }
            held.insert(*r);
        }
        let keeps = ram_top.saturating_sub(held.len());
        if keeps > max {
            return Err(bad("the guest claims more memory than its maximum"));
        }
        let free = self.hv().frames().total_free();
        if keeps > free {
            return Err(VmError::NoMemory {
                name: config.name.clone(),
                needed: keeps * PAGE,
                free: free * PAGE,
            });
        }
        let id = outcome(
            self.mem
                .run(|hv| root::create_partition(hv, config.vps.max(1))),
        )?;
        let made = (|| -> Result<(u64, ResumeReport), VmError> {
            let region = self.mem.adopt_memory(id, memory, region_max)?;
            if ram_top > region {
                return Err(bad("the guest's RAM extends beyond its memory"));
            }
            outcome(self.mem.run(|hv| set_max_pages(hv, id, max.max(keeps))))?;
            let mut next = 0;
            for r in held.ranges().chain(GfnRange::new(ram_top, 0)) {
                if r.start() > next {
                    let n = r.start() - next;
                    outcome(self.mem.run(|hv| hv.populate(id, next, n)))
                        .map_err(HostError::from)?;
                }
                next = r.end();
            }
            let audit = self.mem.audit(id, true)?;
            Ok((
                region,
                ResumeReport {
                    kept_bytes: keeps * PAGE,
                    ballooned_bytes: held.len() * PAGE,
                    punched_bytes: audit.violating_gfns() * PAGE,
                },
            ))
        })();
        let (region, report) = match made {
            Ok(x) => x,
            Err(e) => {
                let _ = self.mem.run(|hv| root::destroy_partition(hv, id));
                self.mem.detach_memory(id);
                return Err(e);
            }
        };
        let vsp = Vsp::with_ballooned(self.config.vsp.clone(), held);
        let vm = self.finish_vm(config, id, ring, vsp, keeps, region, region_max)?;
        Ok((vm, report))
    }

    /// The common end of making a guest: its link (a VSP on a fresh ring for a DM guest),
    /// its record, a Xen guest's `max_pages` set from its target.
    #[allow(clippy::too_many_arguments)]
    fn finish_vm(
        &mut self,
        config: VmConfig,
        id: PartitionId,
        ring: DmRing,
        vsp: Vsp,
        target: u64,
        region: u64,
        region_max: u64,
    ) -> Result<VmId, VmError> {
        let domid = self.hv().partition(id).map_or(DomId(0), |p| p.domid());
        if config.free_page_reporting && config.kind == VmKind::Dm {
            // Setting privileges records no effect; a failed apply cannot come of it.
            let _ = self.mem.run(|hv| grant_reporting(hv, id, true));
        }
        let link = match config.kind {
            VmKind::Dm => {
                let made = match ring {
                    DmRing::InProcess => Channel::pair_in_process(RING_DATA_BYTES)
                        .map(|(h, g)| (h, GuestEnd::InProcess(Box::new(g)))),
                    DmRing::Shared => ChannelSetup::create(RING_DATA_BYTES)
                        .map(|(h, g)| (h, GuestEnd::Shared(Box::new(g)))),
                };
                let (host_end, guest_end) = match made {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = self.mem.run(|hv| root::destroy_partition(hv, id));
                        self.mem.detach_memory(id);
                        return Err(VmError::Channel(e.to_string()));
                    }
                };
                Link::Dm {
                    session: Box::new(HostSession::open(vsp, host_end, (), self.now)),
                    guest_end: Some(guest_end),
                    hot_add: None,
                }
            }
            VmKind::Xen => Link::Xen,
        };
        let vm = VmId(self.next_vm);
        self.next_vm += 1;
        self.vms.insert(
            vm,
            Vm {
                config,
                id,
                domid,
                link,
                target,
                region,
                region_max,
                committed: None,
                available: None,
                reported_at: self.now,
                unresponsive: false,
                stuck: false,
                future_peak: None,
                balloon_backoff: Duration::ZERO,
                pinned: None,
                ops: OpCounts::default(),
            },
        );
        if let Some(v) = self.vms.get(&vm) {
            if v.config.kind == VmKind::Xen {
                self.xen_enforce_target(vm);
            }
        }
        Ok(vm)
    }

    /// The guest end of a DM guest's ring, once.
    pub fn take_dm_channel(&mut self, vm: VmId) -> Option<Channel> {
        match &mut self.vms.get_mut(&vm)?.link {
            Link::Dm { guest_end, .. } => match guest_end.take() {
                Some(GuestEnd::InProcess(c)) => Some(*c),
                other => {
                    *guest_end = other;
                    None
                }
            },
            Link::Xen => None,
        }
    }

    /// The guest's half of a DM guest's shared ring ([`DmRing::Shared`]), once, to send
    /// to the guest's process.
    pub fn take_dm_setup(&mut self, vm: VmId) -> Option<ChannelSetup> {
        match &mut self.vms.get_mut(&vm)?.link {
            Link::Dm { guest_end, .. } => match guest_end.take() {
                Some(GuestEnd::Shared(c)) => Some(*c),
                other => {
                    *guest_end = other;
                    None
                }
            },
            Link::Xen => None,
        }
    }

    /// Tears a guest down: its session closed, then HvFinalizePartition (which unmaps its
    /// guest space), HvWithdrawMemory until drained and HvDeletePartition; its memfd goes.
    pub fn destroy_vm(&mut self, vm: VmId) -> Result<(), VmError> {
        let v = self.vms.remove(&vm).ok_or(VmError::NoVm(vm))?;
        // The session goes with the VSP: pages still in its ring do not matter, since
        // finalizing the partition unmaps its whole guest space.
        drop(v.link);
        let r = self.mem.run(|hv| root::destroy_partition(hv, v.id));
        self.mem.detach_memory(v.id);
        outcome(r).map(drop).map_err(Into::into)
    }

    /// The guests, in creation order.
    pub fn vm_ids(&self) -> Vec<VmId> {
        self.vms.keys().copied().collect()
    }

    /// One guest as the owner sees it.
    pub fn vm(&self, vm: VmId) -> Option<VmView> {
        let v = self.vms.get(&vm)?;
        Some(VmView {
            name: v.config.name.clone(),
            kind: v.config.kind,
            settings: v.config.settings,
            partition: v.id,
            domid: v.domid,
            assigned: self.assigned_pages(v) * PAGE,
            target: v.target * PAGE,
            committed: v.committed,
            available: v.available,
            ballooned: match &v.link {
                Link::Dm { session, .. } => session.vsp.ballooned().len() * PAGE,
                Link::Xen => v.region.saturating_sub(self.assigned_pages(v)) * PAGE,
            },
            resident: match self.config.backing {
                BackingMode::RealMemory => self.mem.resident_bytes(v.id).ok(),
                BackingMode::Accounting => None,
            },
            unresponsive: v.unresponsive,
            stuck: v.stuck,
            free_page_reporting: v.config.free_page_reporting,
            ops: v.ops,
        })
    }

    /// Lets a guest report free memory with the cold discard hint, or stops it: grants
    /// or takes back its partition's EnableExtendedHypercalls privilege (a guest asks for
    /// the capability when its driver starts, so a change reaches a running guest's
    /// next hint, which is refused with ACCESS_DENIED once the privilege is gone).
    pub fn set_free_page_reporting(&mut self, vm: VmId, on: bool) -> Result<(), VmError> {
        let v = self.vms.get_mut(&vm).ok_or(VmError::NoVm(vm))?;
        if v.config.kind != VmKind::Dm {
            return Err(VmError::WrongKind(vm, "Dynamic Memory"));
        }
        v.config.free_page_reporting = on;
        let id = v.id;
        // Setting privileges records no effect; a failed apply cannot come of it.
        let _ = self.mem.run(|hv| grant_reporting(hv, id, on));
        Ok(())
    }

    /// A Hyper-V hypercall made by a DM guest as itself (the extended hypercalls of free
    /// page reporting are the ones a guest of this host has the privilege for): `control`
    /// is RCX, `input` its input block, `output` its output page. The effects it records
    /// are applied to the guest's memory; hints are counted. Returns the result value.
    pub fn hv_hypercall(
        &mut self,
        vm: VmId,
        control: u64,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<u64, VmError> {
        let v = self.vms.get(&vm).ok_or(VmError::NoVm(vm))?;
        if v.config.kind != VmKind::Dm {
            return Err(VmError::WrongKind(vm, "Dynamic Memory"));
        }
        let id = v.id;
        let (rax, discarded, failed) =
            match self.mem.run(|hv| hv.hypercall(id, control, input, output)) {
                Ok((rax, stats)) => (rax, stats.gfns, false),
                Err(e) => (e.result, e.report.stats.gfns, true),
            };
        if let Some(v) = self.vms.get_mut(&vm) {
            let code = ballast_abi::hv::Control::from_bits(control).call_code();
            if code == ballast_abi::hv::HypercallCode::HvExtCallMemoryHeatHint {
                v.ops.hint += 1;
                v.ops.hint_pages += discarded;
            }
            if failed {
                v.ops.failures += 1;
            }
        }
        Ok(rax)
    }

    /// Changes a running guest's memory settings (as `Set-VMMemory` on a running VM):
    /// minimum, maximum, buffer and weight take effect at the next balancer tick, and for
    /// a Xen guest its `max_pages` follows at once. Startup memory matters only at boot
    /// and is kept as given. The maximum cannot pass what the guest's memory was reserved
    /// for when it was created (its guest-physical space), and the new settings must
    /// order as a new guest's must (minimum <= startup <= maximum).
    pub fn set_settings(&mut self, vm: VmId, settings: VmSettings) -> Result<(), VmError> {
        let v = self.vms.get_mut(&vm).ok_or(VmError::NoVm(vm))?;
        let bad = |why| VmError::Settings {
            name: v.config.name.clone(),
            why,
        };
        let s = settings;
        if s.minimum > s.startup || s.startup > s.maximum {
            return Err(bad("minimum <= startup <= maximum must hold"));
        }
        if s.maximum / PAGE > v.region_max {
            return Err(bad(
                "maximum above what the running guest's memory was reserved for at its start; stop the guest to raise it",
            ));
        }
        v.config.settings = s;
        // The target may not stay above the new maximum; a Xen guest's `max_pages` follows.
        let max = s.maximum / PAGE;
        if v.target > max {
            v.target = max;
            v.ops.target_changes += 1;
        }
        if v.config.kind == VmKind::Xen {
            self.xen_enforce_target(vm);
        }
        Ok(())
    }

    /// The memfd behind a guest's memory (real-memory mode), for a guest in its own
    /// process to map: the file is sealed against shrinking, and grows with hot-adds.
    pub fn memory_fd(&self, vm: VmId) -> Option<std::os::fd::BorrowedFd<'_>> {
        let id = self.vms.get(&vm)?.id;
        Some(self.mem.backing().get(id)?.fd())
    }

    /// HvGetMemoryBalance of a guest's pool: (available, in use) pages.
    pub fn memory_balance(&mut self, vm: VmId) -> Result<(u64, u64), VmError> {
        let id = self.vms.get(&vm).ok_or(VmError::NoVm(vm))?.id;
        Ok(outcome(self.mem.run(|hv| root::memory_balance(hv, id)))?)
    }

    /// Free managed memory, bytes.
    pub fn free_bytes(&self) -> u64 {
        self.hv().frames().total_free() * PAGE
    }

    /// Managed memory, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.frames * PAGE
    }

    /// The simulator's look-ahead for the `oracle` policy: the highest demand of the next
    /// seconds, bytes.
    pub fn set_future_peak(&mut self, vm: VmId, peak: Option<u64>) {
        if let Some(v) = self.vms.get_mut(&vm) {
            v.future_peak = peak;
        }
    }

    /// A Xen guest's report of its committed memory, as a guest agent writes
    /// `data/meminfo` into xenstore.
    pub fn xen_report(&mut self, vm: VmId, committed_bytes: u64) {
        let now = self.now;
        if let Some(v) = self.vms.get_mut(&vm) {
            v.committed = Some(committed_bytes);
            v.reported_at = now;
            v.unresponsive = false;
        }
    }

    /// Sets a guest's target, bytes (rounded down to pages): an operator's target, as
    /// `xl mem-set` or Hyper-V's memory demand override. The host moves the guest towards
    /// it on its next steps or pumps (for a Xen guest its `max_pages` follows at once);
    /// the next balancer tick may change it, so an owner that wants it kept runs a policy
    /// whose wish is this target, or pumps without stepping.
    pub fn set_target(&mut self, vm: VmId, bytes: u64) -> Result<(), VmError> {
        let v = self.vms.get_mut(&vm).ok_or(VmError::NoVm(vm))?;
        let pages = bytes / PAGE;
        if pages != v.target {
            v.target = pages;
            v.ops.target_changes += 1;
            // A new target deserves a fresh ask, whatever the guest last answered.
            v.balloon_backoff = Duration::ZERO;
            if v.config.kind == VmKind::Xen {
                self.xen_enforce_target(vm);
            }
        }
        Ok(())
    }

    /// Pins a guest's target at `bytes` (rounded down to pages), as `xl mem-set` or
    /// `virsh setmem` set a fixed size, until `None` gives it back to the balancer. The pin
    /// must lie within the guest's minimum and maximum; the host starts towards it at once.
    pub fn pin_target(&mut self, vm: VmId, bytes: Option<u64>) -> Result<(), VmError> {
        let v = self.vms.get_mut(&vm).ok_or(VmError::NoVm(vm))?;
        let Some(bytes) = bytes else {
            v.pinned = None;
            return Ok(());
        };
        let s = v.config.settings;
        if bytes < s.minimum || bytes > s.maximum {
            return Err(VmError::Settings {
                name: v.config.name.clone(),
                why: "a fixed target must lie within the minimum and the maximum",
            });
        }
        v.pinned = Some(bytes / PAGE);
        self.set_target(vm, bytes)
    }

    /// The operator's fixed target, bytes, if one is set.
    pub fn pinned_target(&self, vm: VmId) -> Option<u64> {
        Some(self.vms.get(&vm)?.pinned? * PAGE)
    }

    /// A Xen guest's balloon target, pages (its xenstore `memory/target`, in KiB there).
    pub fn xen_target_pages(&self, vm: VmId) -> Option<u64> {
        let v = self.vms.get(&vm)?;
        (v.config.kind == VmKind::Xen).then_some(v.target)
    }

    /// A `memory_op` hypercall made by a Xen guest as itself, with its argument memory
    /// `mem`; the effects it records are applied to its memory. Counts decreases and
    /// populates. Bounded as a guest's call is: a continuation comes back to be re-issued.
    pub fn xen_memory_op(
        &mut self,
        vm: VmId,
        cmd: u64,
        arg: u64,
        mem: &mut dyn GuestMemory,
    ) -> Result<MemoryOpResult, VmError> {
        let v = self.vms.get(&vm).ok_or(VmError::NoVm(vm))?;
        if v.config.kind != VmKind::Xen {
            return Err(VmError::WrongKind(vm, "Xen"));
        }
        let (id, domid) = (v.id, v.domid);
        let before = self.hv().partition(id).map_or(0, |p| p.p2m().mapped());
        let r = match self
            .mem
            .run(|hv| hv.memory_op(domid, cmd, arg, mem, 1 << 16))
        {
            Ok((r, _)) => r,
            Err(e) => {
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.ops.failures += 1;
                }
                e.result
            }
        };
        let after = self.hv().partition(id).map_or(0, |p| p.p2m().mapped());
        if let Some(v) = self.vms.get_mut(&vm) {
            let op = cmd & 0x3f;
            if op == u64::from(ballast_abi::xen::MemoryOp::DECREASE_RESERVATION.0) {
                v.ops.decrease += 1;
                v.ops.decrease_pages += before.saturating_sub(after);
            } else if op == u64::from(ballast_abi::xen::MemoryOp::POPULATE_PHYSMAP.0) {
                v.ops.populate += 1;
                v.ops.populate_pages += after.saturating_sub(before);
            }
        }
        Ok(r)
    }

    /// Steps the host to `now`: every DM session pumped (the guests' messages taken,
    /// their pages released or backed, the VSPs' timers run), the balancer run if its
    /// interval has passed, and every guest's next operation started.
    pub fn step(&mut self, now: Duration) {
        self.now = now;
        self.pump_all();
        self.flag_silent(now);
        if now >= self.next_balance {
            self.next_balance = now.saturating_add(self.config.balance_interval);
            self.balance();
        }
        self.drive();
        self.pump_all();
    }

    /// Marks unresponsive every Dynamic Memory guest that has not sent one status report
    /// since it was made, past [`FIRST_REPORT_DEADLINE`]: a handshake that never finished
    /// leaves no transaction to time out, so nothing else would notice. Its first report
    /// clears the mark, as any report does.
    fn flag_silent(&mut self, now: Duration) {
        let deadline = FIRST_REPORT_DEADLINE.max(
            self.config
                .vsp
                .post_caps_wait
                .saturating_add(Duration::from_secs(60)),
        );
        for v in self.vms.values_mut() {
            if matches!(v.link, Link::Dm { .. })
                && v.committed.is_none()
                && now.saturating_sub(v.reported_at) > deadline
            {
                v.unresponsive = true;
            }
        }
    }

    fn assigned_pages(&self, v: &Vm) -> u64 {
        self.hv().partition(v.id).map_or(0, |p| p.p2m().mapped())
    }

    /// Pumps every DM session once at `now` (messages in, pages released, timers,
    /// messages out) without running the balancer; true if anything moved. For an owner
    /// that runs the guests' ends in the same thread and pumps both until quiet.
    pub fn pump(&mut self, now: Duration) -> bool {
        self.now = now;
        let moved = self.pump_all();
        self.drive();
        moved | self.pump_all()
    }

    fn pump_all(&mut self) -> bool {
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        let mut moved = false;
        for vm in ids {
            moved |= self.pump_one(vm);
        }
        moved
    }

    fn pump_one(&mut self, vm: VmId) -> bool {
        let now = self.now;
        let Some(v) = self.vms.get_mut(&vm) else {
            return false;
        };
        let Link::Dm { session, .. } = &mut v.link else {
            return false;
        };
        let id = v.id;
        let hv = self.mem.hv();
        let p2m = hv.partition(id).map(|p| p.p2m());
        // The VSP's ownership question, answered by a range query on the p2m. A DM
        // partition maps only RAM frames: the special frames of Xen's add_to_physmap
        // cannot reach it (`xen_memory_op` refuses DM guests), so every mapped frame is
        // one the core's release accepts.
        let owns = |start: u64, count: u64| p2m.is_some_and(|m| m.all_mapped(start, count));
        let moved = match session.pump_with(now, &owns) {
            Ok(p) => !p.is_idle(),
            Err(_) => {
                v.unresponsive = true;
                false
            }
        };
        let mut events = Vec::new();
        while let Some(e) = session.vsp.poll_event() {
            events.push(e);
        }
        for e in events {
            self.on_vsp_event(vm, e);
        }
        moved
    }

    fn on_vsp_event(&mut self, vm: VmId, e: VspEvent) {
        let now = self.now;
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let id = v.id;
        match e {
            VspEvent::StatusReport {
                committed,
                available,
            } => {
                v.available = Some(available * PAGE);
                // Linux counts the pages in its balloon as committed (hv_balloon.c,
                // `get_pages_committed`: the host expects the pressure report to include
                // them), so the guest's own need is the report less the pages the host
                // holds ballooned. Its balloon floor stays in: Linux adds it so that the
                // host never asks for it.
                let ballooned = match &v.link {
                    Link::Dm { session, .. } => session.vsp.ballooned().len(),
                    Link::Xen => 0,
                };
                v.committed = Some(committed.saturating_sub(ballooned) * PAGE);
                v.reported_at = now;
                v.unresponsive = false;
            }
            VspEvent::PagesReturned(ranges) => match self.mem.run(|hv| hv.release(id, &ranges)) {
                Ok((Ok(n), _)) => v.ops.balloon_pages += n,
                Ok((Err(_), _)) => v.ops.failures += 1,
                Err(e) => {
                    v.ops.failures += 1;
                    if let Ok(n) = e.result {
                        v.ops.balloon_pages += n;
                    }
                }
            },
            VspEvent::BalloonComplete {
                requested,
                returned,
            } => {
                v.ops.balloon += 1;
                if returned < requested {
                    v.balloon_backoff = now + BALLOON_BACKOFF;
                }
            }
            VspEvent::UnballoonComplete { .. } => {}
            VspEvent::HotAddComplete { added, result, .. } => {
                v.ops.hot_add += 1;
                v.ops.hot_add_pages += added;
                if result != HotAddResult::Success {
                    v.ops.failures += 1;
                }
                if let Link::Dm { hot_add, .. } = &mut v.link {
                    if let Some((start, backed, _)) = hot_add.take() {
                        // Pages the guest did not add were backed for nothing: release
                        // them (they were never the guest's to touch).
                        if added < backed {
                            if let Ok(r) = GfnRange::new(start + added, backed - added) {
                                let _ = self.mem.run(|hv| hv.release(id, &[r]));
                            }
                        }
                    }
                }
            }
            VspEvent::TransactionTimedOut { what } => {
                v.ops.failures += 1;
                v.unresponsive = true;
                // A hot-add that timed out keeps its pages backed: the guest may still
                // add them (a late reply), and it may touch them the moment it does. The
                // host remembers what it added so far until that reply comes.
                if let (Transaction::HotAdd { added, .. }, Link::Dm { hot_add, .. }) =
                    (what, &mut v.link)
                {
                    if let Some(h) = hot_add.as_mut() {
                        h.2 = added;
                    }
                }
            }
            VspEvent::LateReply { what } => {
                v.unresponsive = false;
                // The late chunk says how much more the guest added; what it did not add
                // was backed for nothing and goes back.
                if let (Transaction::HotAdd { added, .. }, Link::Dm { hot_add, .. }) =
                    (what, &mut v.link)
                {
                    if let Some((start, backed, before)) = hot_add.take() {
                        let total = before.saturating_add(added);
                        v.ops.hot_add_pages += added;
                        if total < backed {
                            if let Ok(r) = GfnRange::new(start + total, backed - total) {
                                let _ = self.mem.run(|hv| hv.release(id, &[r]));
                            }
                        }
                    }
                }
            }
            VspEvent::Reset => v.unresponsive = true,
            VspEvent::ProtocolViolation { .. } => v.ops.failures += 1,
            _ => {}
        }
    }

    fn balance(&mut self) {
        let now_s = self.now.as_secs_f64();
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        let vms: Vec<VmSnapshot> = ids
            .iter()
            .filter_map(|id| self.vms.get(id))
            .map(|v| VmSnapshot {
                // A pinned guest is one whose range is the pin: the arbiter's clamp holds it
                // there, and its memory still counts in every share.
                settings: match v.pinned {
                    Some(p) => VmSettings {
                        minimum: p * PAGE,
                        maximum: p * PAGE,
                        ..v.config.settings
                    },
                    None => v.config.settings,
                },
                assigned: self.assigned_pages(v) * PAGE,
                target: v.target * PAGE,
                committed: v.committed,
                report_age_s: now_s - v.reported_at.as_secs_f64(),
                busy: self.busy(v),
                unresponsive: v.unresponsive,
                future_peak: v.future_peak,
            })
            .collect();
        let snap = Snapshot {
            host: HostSnapshot {
                now_s,
                total: self.guest_total_bytes(),
                free: self.free_bytes(),
                reserve: self.config.reserve_bytes,
            },
            vms,
        };
        let decision = self.balancer.tick(&snap);
        for (i, id) in ids.iter().enumerate() {
            if let Some(v) = self.vms.get_mut(id) {
                v.stuck = decision.stuck.contains(&i);
            }
        }
        for c in decision.changes {
            let Some(&vm) = ids.get(c.vm) else { continue };
            let Some(v) = self.vms.get_mut(&vm) else {
                continue;
            };
            let pages = c.target / PAGE;
            if pages != v.target {
                v.target = pages;
                v.ops.target_changes += 1;
                if v.config.kind == VmKind::Xen {
                    self.xen_enforce_target(vm);
                }
            }
        }
    }

    /// Memory the guests may share: managed memory less the hypervisor's own (pools).
    fn guest_total_bytes(&self) -> u64 {
        let pools: u64 = self
            .hv()
            .partitions()
            .map(|p| p.pool_available() + p.pool_in_use())
            .sum();
        self.total_bytes().saturating_sub(pools * PAGE)
    }

    fn busy(&self, v: &Vm) -> bool {
        match &v.link {
            Link::Dm { session, .. } => session.vsp.state().awaits_reply(),
            Link::Xen => self.assigned_pages(v).abs_diff(v.target) > SLACK_PAGES,
        }
    }

    /// Sets a Xen guest's `max_pages` to its target plus libxl's slack, never below what
    /// it holds (so only frees succeed until it is there).
    fn xen_enforce_target(&mut self, vm: VmId) {
        let Some(v) = self.vms.get(&vm) else { return };
        let max = (v.target + XEN_MAXMEM_SLACK_PAGES).min(v.region_max);
        let id = v.id;
        let _ = self.mem.run(|hv| set_max_pages(hv, id, max));
    }

    /// Starts the next operation of every DM guest that is idle and away from its target.
    fn drive(&mut self) {
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        for vm in ids {
            self.drive_dm(vm);
        }
    }

    fn drive_dm(&mut self, vm: VmId) {
        let now = self.now;
        let Some(v) = self.vms.get(&vm) else { return };
        let Link::Dm { session, .. } = &v.link else {
            return;
        };
        if session.vsp.state() != VspState::Idle || v.stuck {
            return;
        }
        let assigned = self.assigned_pages(v);
        let (target, id, region, region_max) = (v.target, v.id, v.region, v.region_max);
        let max_pages = v.config.settings.maximum / PAGE;
        let ballooned = session.vsp.ballooned().len();
        let align = session
            .vsp
            .caps()
            .map_or(ballast_dm::vsc::DEFAULT_BLOCK_PAGES, |c| {
                c.hot_add_alignment_pages()
            });
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        let Link::Dm {
            session, hot_add, ..
        } = &mut v.link
        else {
            return;
        };
        if assigned > target + SLACK_PAGES {
            // A refusal (not ready, another operation) is retried on a later step.
            if now >= v.balloon_backoff {
                let _ = session.vsp.balloon(now, assigned - target);
            }
        } else if target > assigned + SLACK_PAGES {
            let want = target - assigned;
            let mem = &mut self.mem;
            if ballooned > 0 {
                let mut backer = Populate { mem, id };
                // A refusal (not ready yet, the host out of memory) is retried on a later
                // step; only what reaches the guest counts.
                if let Ok(runs) = session.vsp.unballoon(now, want.min(ballooned), &mut backer) {
                    v.ops.unballoon += 1;
                    v.ops.unballoon_pages += runs.iter().map(|r| r.count()).sum::<u64>();
                }
            } else if region < region_max {
                let start = region.next_multiple_of(align);
                // Whole blocks only (the guest's unit), and never past the VM's maximum:
                // its `max_pages` would refuse the backing.
                let room = max_pages.saturating_sub(assigned);
                let pages = want
                    .next_multiple_of(align)
                    .min(region_max.saturating_sub(start))
                    .min(room - room % align.max(1));
                if pages == 0 {
                    return;
                }
                let mut backer = HotAdd { mem, id };
                // The VSP rounds the size down to the guest's alignment and backs (and
                // asks for) that much: its answer is what the host records.
                if let Ok(asked) = session.vsp.hot_add(now, start, pages, &mut backer) {
                    *hot_add = Some((start, asked, 0));
                    v.region = start + asked;
                }
            }
        }
    }
}

/// Backs unballooned runs: populates them in the core, all or nothing.
struct Populate<'a> {
    mem: &'a mut MemoryHost,
    id: PartitionId,
}

impl Backer for Populate<'_> {
    fn back(&mut self, ranges: &[GfnRange]) -> Result<(), BackingRefused> {
        populate_all(self.mem, self.id, ranges)
    }
}

/// Backs a hot-add: grows the memfd to `end` pages, then populates the range.
struct HotAdd<'a> {
    mem: &'a mut MemoryHost,
    id: PartitionId,
}

impl Backer for HotAdd<'_> {
    fn back(&mut self, ranges: &[GfnRange]) -> Result<(), BackingRefused> {
        let limit = self
            .mem
            .hv()
            .partition(self.id)
            .map_or(0, |p| p.gfn_limit());
        let end = ranges.iter().map(|r| r.end()).max().unwrap_or(0);
        if end > limit {
            self.mem
                .grow_memory(self.id, end)
                .map_err(|_| BackingRefused)?;
        }
        populate_all(self.mem, self.id, ranges)
    }
}

fn populate_all(
    mem: &mut MemoryHost,
    id: PartitionId,
    ranges: &[GfnRange],
) -> Result<(), BackingRefused> {
    for (i, r) in ranges.iter().enumerate() {
        match mem.run(|hv| hv.populate(id, r.start(), r.count())) {
            Ok((Ok(()), _)) => {}
            r => {
                // All or nothing: what this call populated goes back, this range too if
                // the core mapped it before an effect failed.
                let mapped = matches!(r, Err(ref e) if e.result.is_ok());
                let upto = if mapped { i + 1 } else { i };
                let _ = mem.run(|hv| hv.release(id, &ranges[..upto]));
                return Err(BackingRefused);
            }
        }
    }
    Ok(())
}

/// The operation's own result from [`MemoryHost::run`], whether or not every effect it
/// recorded applied: the core has changed either way, and the effects that could be
/// applied were.
fn outcome<T>(r: Result<(T, crate::memory::ApplyStats), crate::memory::EffectsFailed<T>>) -> T {
    match r {
        Ok((t, _)) => t,
        Err(e) => e.result,
    }
}

fn set_max_pages(hv: &mut Hypervisor, id: PartitionId, pages: u64) -> Result<(), HostError> {
    let pages = u32::try_from(pages).unwrap_or(u32::MAX);
    hv.set_max_pages(id, pages)?;
    Ok(())
}

/// Grants partition `id` the EnableExtendedHypercalls privilege (free page reporting), or
/// takes it back, keeping its other privileges.
fn grant_reporting(hv: &mut Hypervisor, id: PartitionId, on: bool) {
    if let Some(p) = hv.partition(id) {
        let mask = p.privileges().with_enable_extended_hypercalls(on);
        // `id` names a live partition: the call cannot fail.
        let _ = hv.set_partition_privileges(id, mask);
    }
}
