//! Host configuration: memory, NUMA nodes, costs and limits.

use ballast_abi::hv::InputLayout;
use core::num::NonZeroU16;

use thiserror::Error;

/// Pages the hypervisor charges to pools for its own structures.
///
/// The TLFS fixes no numbers; the defaults follow what Linux's root deposits before each
/// call (`hv-pool.md` §7.1): 128 pages before HvInitializePartition (the 2026 figure), 90
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
}

impl Default for XenConfig {
    fn default() -> Self {
        XenConfig {
            max_order_domu: 9,
            max_order_ctldom: 18,
        }
    }
}

/// Everything the hypervisor is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// 4 KiB frames of each NUMA node; nodes are consecutive MFN ranges from 0.
    pub node_frames: Vec<u32>,
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
    /// Hyper-V rep calls served through the hypercall entries complete at most this many
    /// elements per call and return SUCCESS with reps completed below the rep count, as
    /// a hypervisor time-slices a long call to bound a VP's time in it; the caller
    /// re-issues with rep start = reps completed (Linux's `hv_do_rep_hypercall`). `None`
    /// (the default): every call runs to completion.
    pub rep_budget: Option<NonZeroU16>,
}

impl Config {
    /// A host of `frames` frames on one node, with default costs and limits.
    pub fn single_node(frames: u32) -> Self {
        Self::with_nodes(vec![frames])
    }

    /// A host with the given frames per node, with default costs and limits.
    pub fn with_nodes(node_frames: Vec<u32>) -> Self {
        Config {
            node_frames,
            costs: Costs::default(),
            limits: Limits::default(),
            input_layout: InputLayout::Tlfs2,
            xmm_fast_input: false,
            xen: XenConfig::default(),
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
        if self.limits.max_depth < 1 || self.limits.max_partitions < 1 {
            return Err(ConfigError::Limits);
        }
        if self.limits.max_partitions > crate::frame::MAX_OWNER_SLOT {
            return Err(ConfigError::Limits);
        }
        if self.xen.max_order_domu > crate::frame::MAX_ORDER
            || self.xen.max_order_ctldom > crate::frame::MAX_ORDER
        {
            return Err(ConfigError::MaxOrder);
        }
        Ok(())
    }
}

/// A configuration ballast cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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
    /// An extent order beyond MAX_ORDER (18).
    #[error("Xen max extent orders must be at most 18")]
    MaxOrder,
}
