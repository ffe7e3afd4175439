//! The hypervisor memory model of ballast, with the Hyper-V partition memory-pool
//! hypercalls and the Xen `memory_op` interface served from it.
//!
//! One model, two interfaces: machine frames on NUMA nodes ([`frame`]), partitions with
//! pools, a p2m and VPs ([`partition`], [`p2m`]), and the moves between them
//! ([`Hypervisor`]). Hyper-V callers reach it through [`Hypervisor::hypercall`], Xen
//! callers through [`Hypervisor::memory_op`]; a VMM embedding ballast uses the same
//! moves through the host API ([`Hypervisor::populate`], [`Hypervisor::release`]).
//!
//! The crate is deterministic and does no I/O. Whenever a gfn leaves a partition's guest
//! space, or a guest gives up a page's contents with the cold discard hint (free page
//! reporting), it records an [`Effect::Discard`]; the host applies those to real memory.
//!
//! Follows the Hyper-V TLFS (the hypercall interface, partition management and the
//! memory pool: HvDepositMemory, HvWithdrawMemory, HvGetMemoryBalance, HvCreateVp; the
//! extended hypercalls HvExtCallQueryCapabilities and HvExtCallMemoryHeatHint) as
//! Linux's root drives it (`arch/x86/hyperv/hv_proc.c`, `drivers/hv/mshv_root_main.c`),
//! and Xen's `memory_op` (`xen/include/public/memory.h`, `xen/common/memory.c`, Xen
//! 4.17). Where those leave a choice, ballast's decisions and deliberate deviations are
//! listed where they are made: [`hyperv`] and [`xen`]; ARCHITECTURE.md gives the map.

#![forbid(unsafe_code)]

pub mod config;
pub mod effects;
pub mod frame;
pub mod guest;
pub mod hyperv;
pub mod hypervisor;
pub mod p2m;
pub mod partition;
mod state;
pub mod xen;

pub use config::{
    Config, ConfigError, Costs, Limits, MemoryKind, MemoryRange, P2mBudget, XenConfig,
};
pub use effects::Effect;
pub use frame::NodeSel;
pub use guest::{FlatMemory, GuestFault, GuestFaultKind, GuestMemory};
pub use hypervisor::{
    CreateError, DestroyError, Hypervisor, InvariantViolation, MemoryError, ROOT_DOMID, ROOT_ID,
};
pub use partition::{NodePool, Partition, PartitionState, Vp, VpRunState};
pub use state::XenState;
pub use xen::{MemoryOpResult, StopReason};

/// A machine frame number (4 KiB frames; ballast manages up to 2^32 - 1 of them).
pub type Mfn = u32;

// The vocabulary every crate shares lives in ballast-abi; re-exported so the core's
// callers can name it from here.
pub use ballast_abi::types::{DomId, Gfn, GfnRange, GfnRangeError, NoSuchPartition, PartitionId};
