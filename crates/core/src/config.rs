//! Host configuration: memory, NUMA nodes, costs and limits.

use ballast_abi::hv::InputLayout;
use core::num::NonZeroU16;

use thiserror::Error;

/// Pages the hypervisor charges to pools for its own structures.
///
/// The TLFS fixes no numbers; the defaults follow what Linux's root deposits before each
/// call (Linux `drivers/hv/mshv_root_main.c` and `arch/x86/hyperv/hv_proc.c`): 128 pages before HvInitializePartition (the 2026 figure), 90
/// before HvCreateVp. HvCreatePartition is charged to the creator's own pool, and Linux
/// refills that one page at a time, so it is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    /// HvCreatePartition, from the caller's pool; refunded by HvDeletePartition.
    pub create_partition: u32,
    /// HvInitializePartition, from the partition's own pool; released by Finalize.
    pub initialize_partition: u32,
    /// HvCreateVp, from the partition's own pool; released by HvDeleteVp or Finalize.
    pub create_vp: u32,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            create_partition: 8,
            initialize_partition: 128,
            create_vp: 90,
        }
    }
}

/// Implementation limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Partitions alive at once, root included (beyond: NO_RESOURCES).
    pub max_partitions: u32,
    /// Levels of the partition tree, root included (2 = the root and its children; the
    /// TLFS requires at least two).
    pub max_depth: u32,
    /// The highest VP index (Linux's x86 `HV_MAX_VP_INDEX`: 2047).
    pub max_vp_index: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_partitions: 1024,
            max_depth: 2,
            max_vp_index: 2047,
        }
    }
}

/// Xen-specific settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenConfig {
    /// Largest extent order an ordinary guest may use (`memop-max-order` domU: 9).
    pub max_order_domu: u32,
    /// Largest extent order the control domain may use (ctldom: 18).
    pub max_order_ctldom: u32,
    /// Largest extent order a domain with passthrough devices may use (ptdom: Xen's
    /// `CONFIG_PTDOM_MAX_ORDER`, which defaults to `CONFIG_HWDOM_MAX_ORDER`, 12 on x86).
    pub max_order_ptdom: u32,
    /// Hold Xen's m2p table in hypervisor frames taken from the heap at boot: one
    /// 2 MiB extent per 262,144 host frames (8 bytes per frame), as x86 Xen lays it
    /// out, so `XENMEM_machphys_mfn_list` can name them. Off by default: a model of a
    /// few MiB would give a large share of its memory to it; without it that sub-op
    /// answers `-ENOSYS`.
    pub m2p_frames: bool,
    /// The host's limit on a domain's grant frames (Xen's `gnttab_max_frames` command
    /// line option, default 64): a domain is created with at most this many.
    pub max_grant_frames: u32,
}

impl Default for XenConfig {
    fn default() -> Self {
        XenConfig {
            max_order_domu: 9,
            max_order_ctldom: 18,
            max_order_ptdom: 12,
            m2p_frames: false,
            max_grant_frames: 64,
        }
    }
}

/// The default budget of host heap for a partition's p2m tables (a partition may be
/// given its own with [`Hypervisor::set_p2m_budget`](crate::Hypervisor::set_p2m_budget)).
///
/// Xen charges a domain's p2m to its paging pool, sized by the toolstack
/// (`XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION`; libxl's default is 1 MiB per vCPU plus 8 KiB per
/// MiB of maximum memory), and Hyper-V takes a partition's page tables from its pool. Here
/// the budget is `base + per_mib * max_pages / 256`. A guest that maps its memory densely
/// needs 1 KiB of tables per MiB (a 2 KiB leaf per 2 MiB) plus 4 KiB per GiB, so the
/// default of 4 KiB per MiB lets it scatter its pages over four times its size at 2 MiB
/// granularity; a sparse guest runs out of budget at a cost to the host of about 0.4% of
/// its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P2mBudget {
    /// Bytes every partition may use whatever its size.
    pub base: u64,
    /// Bytes more per MiB of `max_pages`.
    pub per_mib: u64,
}

impl Default for P2mBudget {
    fn default() -> Self {
        P2mBudget {
            base: 256 << 10,
            per_mib: 4 << 10,
        }
    }
}

impl P2mBudget {
    /// The budget of a partition with this `max_pages`.
    pub fn for_max_pages(&self, max_pages: u32) -> u64 {
        self.base
            .saturating_add(self.per_mib.saturating_mul(u64::from(max_pages) >> 8))
    }
}

/// What a range of host physical memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// RAM of NUMA node `node`: the only frames ballast hands out or accepts.
    Ram {
        /// The node.
        node: u32,
    },
    /// Reserved (firmware, ACPI, MMIO described as reserved): never allocated or
    /// deposited; reported in the machine memory map.
    Reserved,
}

/// One entry of the host memory map (an e820-like map), in 4 KiB frames. Frames that no
/// entry covers are holes (the PCI hole below 4 GiB, below the RAM base, between nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryRange {
    /// The first frame (its machine address divided by 4096).
    pub start: u64,
    /// How many frames.
    pub frames: u64,
    /// RAM of a node, or reserved.
    pub kind: MemoryKind,
}

impl MemoryRange {
    /// `frames` frames of RAM on `node` from frame `start`.
    pub const fn ram(node: u32, start: u64, frames: u64) -> Self {
        MemoryRange {
            start,
            frames,
            kind: MemoryKind::Ram { node },
        }
    }

    /// `frames` reserved frames from frame `start`.
    pub const fn reserved(start: u64, frames: u64) -> Self {
        MemoryRange {
            start,
            frames,
            kind: MemoryKind::Reserved,
        }
    }

    /// One past the last frame.
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.frames)
    }
}

/// Everything the hypervisor is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// 4 KiB frames of RAM on each NUMA node: the sums of `memory_map`'s RAM entries per
    /// node, which [`validate`](Self::validate) checks.
    pub node_frames: Vec<u32>,
    /// The host memory map: RAM per node and reserved ranges, sorted by address and not
    /// overlapping; a node's RAM lies above every lower-numbered node's. Frames outside
    /// RAM are never allocated, deposited or accepted.
    pub memory_map: Vec<MemoryRange>,
    /// Pool charges.
    pub costs: Costs,
    /// Limits.
    pub limits: Limits,
    /// Which HvCreatePartition / HvCreateVp layout the dispatcher decodes.
    pub input_layout: InputLayout,
    /// XMM fast hypercall input is advertised.
    pub xmm_fast_input: bool,
    /// Xen settings.
    pub xen: XenConfig,
    /// The default p2m table budget.
    pub p2m: P2mBudget,
    /// Hyper-V rep calls served through the hypercall entries complete at most this many
    /// elements per call and return SUCCESS with reps completed below the rep count, as
    /// a hypervisor time-slices a long call to bound a VP's time in it; the caller
    /// re-issues with rep start = reps completed (Linux's `hv_do_rep_hypercall`). `None`
    /// (the default): every call runs to completion.
    pub rep_budget: Option<NonZeroU16>,
    /// The host offers the cold discard hint (HvExtCallMemoryHeatHint, free page
    /// reporting) to partitions with the EnableExtendedHypercalls privilege. On by
    /// default: the privilege is what a host grants per partition.
    pub cold_discard_hint: bool,
}

impl Config {
    /// A host of `frames` frames on one node, with default costs and limits.
    pub fn single_node(frames: u32) -> Self {
        Self::with_nodes(vec![frames])
    }

    /// A host with the given frames per node, with default costs and limits: the nodes'
    /// RAM is consecutive from frame 0, with no holes.
    pub fn with_nodes(node_frames: Vec<u32>) -> Self {
        let mut start = 0u64;
        let memory_map = node_frames
            .iter()
            .enumerate()
            .map(|(node, &n)| {
                let r = MemoryRange::ram(node as u32, start, u64::from(n));
                start += u64::from(n);
                r
            })
            .collect();
        Self::build(node_frames, memory_map)
    }

    /// A host whose memory is described by `memory_map` (RAM per node at any base, with
    /// holes and reserved ranges), with default costs and limits. `node_frames` follows
    /// from the map (a node beyond the highest one with RAM does not exist; a node number
    /// with no RAM below it makes [`validate`](Self::validate) fail).
    pub fn with_memory_map(memory_map: Vec<MemoryRange>) -> Self {
        let mut node_frames: Vec<u32> = Vec::new();
        for r in &memory_map {
            if let MemoryKind::Ram { node } = r.kind {
                let n = node as usize;
                if n < 64 {
                    if node_frames.len() <= n {
                        node_frames.resize(n + 1, 0);
                    }
                    let sum = u64::from(node_frames[n]).saturating_add(r.frames);
                    node_frames[n] = u32::try_from(sum).unwrap_or(u32::MAX);
                } else if node_frames.len() <= 64 {
                    // Caught by validate's node count.
                    node_frames.resize(65, 0);
                }
            }
        }
        Self::build(node_frames, memory_map)
    }

    fn build(node_frames: Vec<u32>, memory_map: Vec<MemoryRange>) -> Self {
        Config {
            node_frames,
            memory_map,
            costs: Costs::default(),
            limits: Limits::default(),
            input_layout: InputLayout::Tlfs2,
            xmm_fast_input: false,
            xen: XenConfig::default(),
            p2m: P2mBudget::default(),
            cold_discard_hint: true,
            rep_budget: None,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_frames.is_empty() || self.node_frames.len() > 64 {
            return Err(ConfigError::NodeCount(self.node_frames.len()));
        }
        if let Some(i) = self.node_frames.iter().position(|&n| n == 0) {
            return Err(ConfigError::EmptyNode(i));
        }
        let total: u64 = self.node_frames.iter().map(|&n| n as u64).sum();
        if total >= u32::MAX as u64 {
            return Err(ConfigError::TooManyFrames(total));
        }
        self.validate_memory_map()?;
        if self.limits.max_depth < 1 || self.limits.max_partitions < 1 {
            return Err(ConfigError::Limits);
        }
        if self.limits.max_partitions > crate::frame::MAX_OWNER_SLOT {
            return Err(ConfigError::Limits);
        }
        if self.xen.max_order_domu > crate::frame::MAX_ORDER
            || self.xen.max_order_ctldom > crate::frame::MAX_ORDER
            || self.xen.max_order_ptdom > crate::frame::MAX_ORDER
        {
            return Err(ConfigError::MaxOrder);
        }
        Ok(())
    }
}

impl Config {
    /// The map is sorted, non-overlapping, within 32-bit MFNs, its nodes' RAM in node
    /// order, and its RAM per node equals `node_frames`.
    fn validate_memory_map(&self) -> Result<(), ConfigError> {
        // Xen's E820 tables hold at most E820MAX entries; the machine map is one of them.
        if self.memory_map.len() > ballast_abi::xen::E820MAX {
            return Err(ConfigError::MemoryMap(ballast_abi::xen::E820MAX));
        }
        let mut end = 0u64;
        let mut last_node = 0u32;
        let mut ram = vec![0u64; self.node_frames.len()];
        for (i, r) in self.memory_map.iter().enumerate() {
            if r.frames == 0 || r.start < end {
                return Err(ConfigError::MemoryMap(i));
            }
            end = r.end();
            // MFNs are u32 and NO_FRAME (u32::MAX) is not one.
            if end >= u64::from(u32::MAX) {
                return Err(ConfigError::TooManyFrames(end));
            }
            if let MemoryKind::Ram { node } = r.kind {
                if node < last_node || node as usize >= ram.len() {
                    return Err(ConfigError::MemoryMap(i));
                }
                last_node = node;
                ram[node as usize] += r.frames;
            }
        }
        if ram
            .iter()
            .zip(&self.node_frames)
            .any(|(&m, &n)| m != u64::from(n))
        {
            return Err(ConfigError::NodeFramesMismatch);
        }
        Ok(())
    }

    /// The RAM ranges of the map as (node, first frame, end frame).
    pub(crate) fn ram_ranges(&self) -> Vec<(u32, u32, u32)> {
        self.memory_map
            .iter()
            .filter_map(|r| match r.kind {
                // Validated: below u32::MAX.
                MemoryKind::Ram { node } => Some((node, r.start as u32, r.end() as u32)),
                MemoryKind::Reserved => None,
            })
            .collect()
    }
}

/// A configuration ballast cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Between 1 and 64 nodes (the web TLFS's proximity domain ids 0-63).
    #[error("{0} NUMA nodes configured; between 1 and 64 are supported")]
    NodeCount(usize),
    /// A node without memory.
    #[error("NUMA node {0} has no frames")]
    EmptyNode(usize),
    /// More frames than a 32-bit MFN numbers (16 TiB).
    #[error("{0} frames configured; at most 2^32 - 2 (16 TiB) are supported")]
    TooManyFrames(u64),
    /// Zero partitions or depth, or more partitions than a frame's owner field holds.
    #[error("partition limits must be at least 1 and at most 2^24 - 1 partitions")]
    Limits,
    /// Memory map entry `0` is empty, overlaps or precedes the one before it, or puts a
    /// node's RAM below a lower-numbered node's (each node's RAM must be one span of
    /// frames, holes allowed); or the map has more than E820MAX (1024) entries, the first
    /// one too many being entry `0`.
    #[error("memory map entry {0} is empty, out of order, overlapping or out of node order")]
    MemoryMap(usize),
    /// `node_frames` does not match the RAM of `memory_map`.
    #[error("node_frames does not match the RAM the memory map gives each node")]
    NodeFramesMismatch,
    /// An extent order beyond MAX_ORDER (18).
    #[error("Xen max extent orders must be at most 18")]
    MaxOrder,
    /// `XenConfig::m2p_frames` with a host that has no free 2 MiB extent for the table.
    #[error("the host has no room for the m2p table's 2 MiB extents")]
    M2pDoesNotFit,
}
