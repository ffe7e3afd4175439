//! Per-domain Xen state beyond the memory model, and what a toolstack needs to drive
//! the core: domain creation with a chosen domid, the device-model (target) link,
//! `max_mem`, and domain and host information as typed values.

use ballast_abi::hv::HvPartitionPrivilegeMask;

use super::Xsm;
use super::errno::{EINVAL, EOPNOTSUPP, EPERM, ESRCH};
use crate::frame::NO_GFN;
use crate::hypervisor::{CreateError, Hypervisor};
use crate::partition::PartitionState;
use crate::{DomId, PartitionId};

/// `XEN_DOMINF_*`: flags of a domain's information.
pub mod dominf {
    /// `XEN_DOMINF_dying`: the domain is being torn down.
    pub const DYING: u32 = ballast_abi::xen::XEN_DOMINF_DYING;
    /// `XEN_DOMINF_hvm_guest`: an HVM (or PVH) domain.
    pub const HVM_GUEST: u32 = ballast_abi::xen::XEN_DOMINF_HVM_GUEST;
    /// `XEN_DOMINF_hap`: hardware-assisted paging (ballast's p2m of a translated
    /// domain is the only p2m).
    pub const HAP: u32 = ballast_abi::xen::XEN_DOMINF_HAP;
}

/// What `XEN_DOMCTL_getdomaininfo` reports about a domain's memory, as a typed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DomainInfo {
    /// Xen domain id.
    pub domid: DomId,
    /// Hyper-V partition id of the same partition.
    pub id: PartitionId,
    /// `tot_pages`: frames the domain owns (mapped or assigned), hypervisor pages aside.
    pub tot_pages: u64,
    /// `max_pages`.
    pub max_pages: u64,
    /// `shr_pages`: pages shared copy-on-write (ballast shares none).
    pub shr_pages: u64,
    /// `outstanding_pages`: the domain's claim not yet allocated.
    pub outstanding_pages: u64,
    /// Populate-on-demand entries of the domain's p2m (0 while PoD is not modelled).
    pub pod_entries: u64,
    /// `shared_info_frame`: the gfn of the shared-info page for a translated domain,
    /// its MFN for a PV one; `u64::MAX` (Xen's `INVALID_M2P_ENTRY`) while it is not
    /// mapped (translated) or does not exist yet.
    pub shared_info_frame: u64,
    /// `XEN_DOMINF_*` ([`dominf`]).
    pub flags: u32,
    /// The device-model target, if any.
    pub target: Option<DomId>,
}

/// One NUMA node of [`HostInfo`] (`XEN_SYSCTL_numainfo`'s memsize and memfree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Frames of the node.
    pub total_pages: u64,
    /// Free frames of the node.
    pub free_pages: u64,
}

/// What `XEN_SYSCTL_physinfo` (and numainfo) report about host memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostInfo {
    /// `total_pages`: frames of RAM.
    pub total_pages: u64,
    /// `free_pages`: frames in the heap.
    pub free_pages: u64,
    /// `outstanding_pages`: claims of all domains.
    pub outstanding_pages: u64,
    /// `max_mfn`: the highest frame number.
    pub max_mfn: u64,
    /// Frames the hypervisor holds for itself for the host's life (the m2p table).
    pub hypervisor_pages: u64,
    /// Per node.
    pub nodes: Vec<NodeInfo>,
}

/// How a toolstack creates a domain (`XEN_DOMCTL_createdomain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DomainConfig {
    /// The domid to use; `None` picks the next free one, as domid 0 does in Xen.
    pub domid: Option<DomId>,
    /// HVM or PVH (translated paging); `false` for PV.
    pub translated: bool,
    /// `max_pages` to start with.
    pub max_pages: u32,
    /// Home NUMA node.
    pub home: ballast_abi::hv::HvProximityDomainInfo,
    /// `max_grant_frames`: 1 to the host's `XenConfig::max_grant_frames`; `None` for
    /// the host's value.
    pub max_grant_frames: Option<u32>,
    /// `max_grant_version`: 1 or 2; `None` for 2.
    pub max_grant_version: Option<u8>,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            domid: None,
            translated: true,
            max_pages: 0,
            home: ballast_abi::hv::HvProximityDomainInfo::ANY,
            max_grant_frames: None,
            max_grant_version: None,
        }
    }
}

impl Hypervisor {
    /// Creates a domain as `XEN_DOMCTL_createdomain` does: a child of the control domain,
    /// running, with the domid, paging mode, `max_pages`, home node and grant-table
    /// limits of `cfg`, and its shared-info page (Xen's `arch_domain_create` allocates it;
    /// libxenctrl's PV builder maps it by the MFN getdomaininfo reports). The page is
    /// charged to the domain's pool, topped up from the heap; nothing else is.
    pub fn create_domain(&mut self, cfg: &DomainConfig) -> Result<PartitionId, CreateError> {
        let host_frames = self.config.xen.max_grant_frames;
        let frames = cfg.max_grant_frames.unwrap_or(host_frames);
        let version = cfg.max_grant_version.unwrap_or(2);
        if frames < 1 || frames > host_frames || !(1..=2).contains(&version) {
            return Err(CreateError::GrantTable);
        }
        let slot = self.new_partition_as(
            Some(Self::ROOT_SLOT),
            HvPartitionPrivilegeMask::NONE,
            cfg.home,
            0,
            cfg.domid,
        )?;
        let p = self.part_mut(slot);
        p.state = PartitionState::Active;
        p.xen.max_pages = cfg.max_pages;
        p.xen.translated = cfg.translated;
        p.xen.max_grant_frames = frames;
        p.xen.max_grant_version = version;
        let id = p.id;
        if self.xen_shared_info(slot).is_err() {
            self.destroy_partition(id)
                .expect("a new partition has no children");
            return Err(CreateError::NoMemory);
        }
        Ok(id)
    }

    /// `XEN_DOMCTL_max_mem` from domain `caller`: sets `max_pages` of `domid` to
    /// `max_memkb` KiB (saturating at the 32-bit field). Only the control domain may;
    /// `max_pages` may go below `tot_pages`, after which only frees succeed. Errors are
    /// positive [`errno`](super::errno) values: `ESRCH` for an unknown domain (looked up
    /// first, as do_domctl does), then `EPERM`.
    pub fn xen_max_mem(&mut self, caller: DomId, domid: DomId, max_memkb: u64) -> Result<(), i64> {
        let c = self.slot_of_domid(caller).ok_or(ESRCH)?;
        let t = self.xen_lookup_id(domid.0).ok_or(ESRCH)?;
        if !self.xen_xsm(c, t, Xsm::Priv) {
            return Err(EPERM);
        }
        let pages = max_memkb >> 2;
        self.part_mut(t).xen.max_pages = u32::try_from(pages).unwrap_or(u32::MAX);
        Ok(())
    }

    /// `XEN_DOMCTL_set_target` from domain `caller`: makes `dm` the device model (or stub
    /// domain) of `target`, so that `dm` passes the TARGET and DM_PRIV checks on
    /// `target` as its parent would. Unlike Hyper-V nesting it gives `dm` no pool and no
    /// children. Xen's rules: control domain only (`EPERM`), both domains exist
    /// (`ESRCH`), they differ and `dm` has no target yet (`EINVAL`), and the target is
    /// HVM (`EOPNOTSUPP`). The link lasts until `dm` is destroyed; a destroyed target
    /// simply matches nothing any more (partition ids are never reused).
    pub fn xen_set_target(&mut self, caller: DomId, dm: DomId, target: DomId) -> Result<(), i64> {
        let c = self.slot_of_domid(caller).ok_or(ESRCH)?;
        let d = self.xen_lookup_id(dm.0).ok_or(ESRCH)?;
        if !self.xen_xsm(c, d, Xsm::Priv) {
            return Err(EPERM);
        }
        let e = self.xen_lookup_id(target.0).ok_or(ESRCH)?;
        if d == e || self.part(d).xen.target.is_some() {
            return Err(EINVAL);
        }
        if !self.part(e).xen.translated {
            return Err(EOPNOTSUPP);
        }
        let id = self.part(e).id;
        self.part_mut(d).xen.target = Some(id);
        Ok(())
    }

    /// What `XEN_DOMCTL_getdomaininfo` reports about domain `domid`'s memory; `None` if
    /// there is no such domain (an exact lookup: Xen 4.17 returns the next domain up,
    /// which libxenctrl then reports as if it were the one asked for).
    pub fn domain_info(&self, domid: DomId) -> Option<DomainInfo> {
        let p = self.part(self.xen_lookup_id(domid.0)?);
        let shared_info_frame = match p.xen.shared_info {
            None => NO_GFN,
            Some(m) if !p.xen.translated => u64::from(m),
            // The m2p entry of the page: where it is mapped, if it is.
            Some(m) => self.frames.link(m),
        };
        let mut flags = 0;
        if p.xen.translated {
            flags |= dominf::HVM_GUEST | dominf::HAP;
        }
        if p.state == PartitionState::Finalized {
            flags |= dominf::DYING;
        }
        Some(DomainInfo {
            domid: p.domid,
            id: p.id,
            tot_pages: p.tot_pages(),
            max_pages: u64::from(p.xen.max_pages),
            shr_pages: 0,
            outstanding_pages: u64::from(p.xen.outstanding_claim),
            pod_entries: p.pod_entries(),
            shared_info_frame,
            flags,
            target: p
                .xen
                .target
                .and_then(|t| self.partition(t))
                .map(|t| t.domid),
        })
    }

    /// What `XEN_SYSCTL_physinfo` and `XEN_SYSCTL_numainfo` report about host memory.
    pub fn host_info(&self) -> HostInfo {
        let nodes: Vec<NodeInfo> = (0..self.node_count())
            .map(|n| NodeInfo {
                total_pages: u64::from(self.config.node_frames[n as usize]),
                free_pages: self.frames.free_frames(n),
            })
            .collect();
        HostInfo {
            total_pages: nodes.iter().map(|n| n.total_pages).sum(),
            free_pages: self.frames.total_free(),
            outstanding_pages: self.outstanding_claims(),
            max_mfn: u64::from(self.frames.len()).saturating_sub(1),
            hypervisor_pages: 512 * self.m2p.len() as u64,
            nodes,
        }
    }
}
