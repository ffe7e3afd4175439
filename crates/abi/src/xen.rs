//! Xen `memory_op` (`__HYPERVISOR_memory_op`, the `XENMEM_*` sub-ops): the command word,
//! the sub-op and map-space codes, the `mem_flags` word and the argument structs.
//!
//! Follows Xen's `xen/include/public/memory.h` and `xen.h` (constants and layouts; Linux
//! carries a copy as `include/xen/interface/memory.h`), with the behaviour of
//! `xen/common/memory.c` (Xen 4.17). The layouts are the x86_64 ones, checked
//! byte for byte against Xen 4.17's public headers by `tests/c_conformance_xen.rs`.
//!
//! - Every `XEN_GUEST_HANDLE(T)` is a `u64` guest virtual address: on x86_64 the handle is a
//!   bare pointer (or, for `__XEN_TOOLS__`, a struct holding one), 8 bytes either way.
//!   `xen_pfn_t` and `xen_ulong_t` are `unsigned long`, so `u64`; `domid_t` is `u16`.
//! - Struct fields carry the C names. `in`, `type` and `out` are keywords or awkward in Rust
//!   and become `in_`, `ty` and `out`.
//! - Holes the C compiler leaves are spelled out as `_padN` byte arrays. Xen copies the
//!   whole struct and never looks at them, so a decoder must not either.
//!
//! The 32-bit compat ABI (`compat_memory_op`) is out of scope.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

use open_enum::open_enum;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Expands to compile-time checks of a struct's size, alignment and field offsets, so a
/// layout edit that drifts from the C header fails the build rather than a test.
macro_rules! assert_layout {
    ($t:ty, size $size:expr, align $align:expr $(, $($field:ident).+ @ $off:expr)* $(,)?) => {
        const _: () = {
            assert!(core::mem::size_of::<$t>() == $size);
            assert!(core::mem::align_of::<$t>() == $align);
            $(assert!(core::mem::offset_of!($t, $($field).+) == $off);)*
        };
    };
}

// ---------------------------------------------------------------------------------------
// Hypercall numbers and domain ids (xen.h)
// ---------------------------------------------------------------------------------------

/// Hypercall numbers (`__HYPERVISOR_*` in `xen.h`) that a memory manager meets.
///
/// Over `u64` because every place that carries one (`rax`, `multicall_entry_t.op`,
/// Linux's `privcmd_hypercall_t.op`) is 64 bits wide.
#[open_enum]
#[repr(u64)]
#[derive(Clone, Copy, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub enum Hypercall {
    /// `__HYPERVISOR_memory_op`: this module.
    MEMORY_OP = 12,
    /// `__HYPERVISOR_multicall`: libxenctrl wraps every memory_op in a one-entry multicall.
    MULTICALL = 13,
    /// `__HYPERVISOR_xen_version`.
    XEN_VERSION = 17,
    /// `__HYPERVISOR_sysctl`.
    SYSCTL = 35,
    /// `__HYPERVISOR_domctl`.
    DOMCTL = 36,
    /// `__HYPERVISOR_dm_op`.
    DM_OP = 41,
}

/// Domain ids at or above this are not ordinary domains.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// The calling domain. Equal to [`DOMID_FIRST_RESERVED`].
pub const DOMID_SELF: u16 = 0x7FF0;
/// Pseudo-domain owning I/O memory.
pub const DOMID_IO: u16 = 0x7FF1;
/// Pseudo-domain owning Xen's own heap pages.
pub const DOMID_XEN: u16 = 0x7FF2;
/// Owner of shared (copy-on-write) pages.
pub const DOMID_COW: u16 = 0x7FF3;
/// Owner of pages whose owner is unknown.
pub const DOMID_INVALID: u16 = 0x7FF4;
/// Any domain. Newer than Xen 4.17's headers, which do not define it.
pub const DOMID_ANY: u16 = 0x7FF5;
/// The idle domain.
pub const DOMID_IDLE: u16 = 0x7FFF;
/// Mask of the bits a domain id may use.
pub const DOMID_MASK: u16 = 0x7FFF;

// ---------------------------------------------------------------------------------------
// Sub-ops and the command word
// ---------------------------------------------------------------------------------------

/// A `XENMEM_*` sub-op: the low [`MEMOP_EXTENT_SHIFT`] bits of the `memory_op` command word.
///
/// Open: numbers 29..=63 decode to values with no name, which Xen answers with `-ENOSYS`.
#[open_enum]
#[repr(u32)]
#[derive(Clone, Copy, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub enum MemoryOp {
    /// `XENMEM_increase_reservation`; arg [`XenMemoryReservation`].
    INCREASE_RESERVATION = 0,
    /// `XENMEM_decrease_reservation`; arg [`XenMemoryReservation`].
    DECREASE_RESERVATION = 1,
    /// `XENMEM_maximum_ram_page`; arg ignored (NULL).
    MAXIMUM_RAM_PAGE = 2,
    /// `XENMEM_current_reservation`; arg [`XenMemoryDomain`].
    CURRENT_RESERVATION = 3,
    /// `XENMEM_maximum_reservation`; arg [`XenMemoryDomain`].
    MAXIMUM_RESERVATION = 4,
    /// `XENMEM_machphys_mfn_list`; arg [`XenMachphysMfnList`].
    MACHPHYS_MFN_LIST = 5,
    /// `XENMEM_populate_physmap`; arg [`XenMemoryReservation`].
    POPULATE_PHYSMAP = 6,
    /// `XENMEM_add_to_physmap`; arg [`XenAddToPhysmap`].
    ADD_TO_PHYSMAP = 7,
    /// `XENMEM_translate_gpfn_list`: removed from the interface. The number stays taken and
    /// Xen answers `-ENOSYS`; the header keeps it only as a comment.
    TRANSLATE_GPFN_LIST = 8,
    /// `XENMEM_memory_map`; arg [`XenMemoryMap`], buffer of [`E820Entry`].
    MEMORY_MAP = 9,
    /// `XENMEM_machine_memory_map`; arg [`XenMemoryMap`].
    MACHINE_MEMORY_MAP = 10,
    /// `XENMEM_exchange`; arg [`XenMemoryExchange`].
    EXCHANGE = 11,
    /// `XENMEM_machphys_mapping`; arg [`XenMachphysMapping`].
    MACHPHYS_MAPPING = 12,
    /// `XENMEM_set_memory_map`; arg [`XenForeignMemoryMap`].
    SET_MEMORY_MAP = 13,
    /// `XENMEM_maximum_gpfn`; arg [`XenMemoryDomain`].
    MAXIMUM_GPFN = 14,
    /// `XENMEM_remove_from_physmap`; arg [`XenRemoveFromPhysmap`].
    REMOVE_FROM_PHYSMAP = 15,
    /// `XENMEM_set_pod_target`; arg [`XenPodTarget`]. Tools only.
    SET_POD_TARGET = 16,
    /// `XENMEM_get_pod_target`; arg [`XenPodTarget`]. Tools only.
    GET_POD_TARGET = 17,
    /// `XENMEM_get_sharing_freed_pages`; no arg. Tools only.
    GET_SHARING_FREED_PAGES = 18,
    /// `XENMEM_get_sharing_shared_pages`; no arg. Tools only.
    GET_SHARING_SHARED_PAGES = 19,
    /// `XENMEM_paging_op`. Tools only.
    PAGING_OP = 20,
    /// `XENMEM_access_op`. Tools only.
    ACCESS_OP = 21,
    /// `XENMEM_sharing_op`. Tools only.
    SHARING_OP = 22,
    /// `XENMEM_add_to_physmap_batch`; arg [`XenAddToPhysmapBatch`]. Headers for interface
    /// versions below 0x40400 (Linux's among them) call it `XENMEM_add_to_physmap_range`,
    /// see [`MemoryOp::ADD_TO_PHYSMAP_RANGE`].
    ADD_TO_PHYSMAP_BATCH = 23,
    /// `XENMEM_claim_pages`; arg [`XenMemoryReservation`] (only `nr_extents` and `domid`
    /// used). Tools only.
    CLAIM_PAGES = 24,
    /// `XENMEM_machphys_compat_mfn_list`; arg [`XenMachphysMfnList`].
    MACHPHYS_COMPAT_MFN_LIST = 25,
    /// `XENMEM_get_vnumainfo`; arg [`XenVnumaTopologyInfo`].
    GET_VNUMAINFO = 26,
    /// `XENMEM_reserved_device_memory_map`; arg [`XenReservedDeviceMemoryMap`]. Tools only.
    RESERVED_DEVICE_MEMORY_MAP = 27,
    /// `XENMEM_acquire_resource`; arg [`XenMemAcquireResource`]. The last number assigned.
    ACQUIRE_RESOURCE = 28,
}

impl MemoryOp {
    /// `XENMEM_add_to_physmap_range`, the old name of [`MemoryOp::ADD_TO_PHYSMAP_BATCH`].
    pub const ADD_TO_PHYSMAP_RANGE: Self = Self::ADD_TO_PHYSMAP_BATCH;

    /// Every assigned sub-op number, 0 through 28, in order.
    pub const ALL: [Self; 29] = [
        Self::INCREASE_RESERVATION,
        Self::DECREASE_RESERVATION,
        Self::MAXIMUM_RAM_PAGE,
        Self::CURRENT_RESERVATION,
        Self::MAXIMUM_RESERVATION,
        Self::MACHPHYS_MFN_LIST,
        Self::POPULATE_PHYSMAP,
        Self::ADD_TO_PHYSMAP,
        Self::TRANSLATE_GPFN_LIST,
        Self::MEMORY_MAP,
        Self::MACHINE_MEMORY_MAP,
        Self::EXCHANGE,
        Self::MACHPHYS_MAPPING,
        Self::SET_MEMORY_MAP,
        Self::MAXIMUM_GPFN,
        Self::REMOVE_FROM_PHYSMAP,
        Self::SET_POD_TARGET,
        Self::GET_POD_TARGET,
        Self::GET_SHARING_FREED_PAGES,
        Self::GET_SHARING_SHARED_PAGES,
        Self::PAGING_OP,
        Self::ACCESS_OP,
        Self::SHARING_OP,
        Self::ADD_TO_PHYSMAP_BATCH,
        Self::CLAIM_PAGES,
        Self::MACHPHYS_COMPAT_MFN_LIST,
        Self::GET_VNUMAINFO,
        Self::RESERVED_DEVICE_MEMORY_MAP,
        Self::ACQUIRE_RESOURCE,
    ];

    /// The C macro name (`"XENMEM_populate_physmap"`), or `None` for an unassigned number.
    /// Sub-op 23 answers with its current name, `XENMEM_add_to_physmap_batch`.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::INCREASE_RESERVATION => "XENMEM_increase_reservation",
            Self::DECREASE_RESERVATION => "XENMEM_decrease_reservation",
            Self::MAXIMUM_RAM_PAGE => "XENMEM_maximum_ram_page",
            Self::CURRENT_RESERVATION => "XENMEM_current_reservation",
            Self::MAXIMUM_RESERVATION => "XENMEM_maximum_reservation",
            Self::MACHPHYS_MFN_LIST => "XENMEM_machphys_mfn_list",
            Self::POPULATE_PHYSMAP => "XENMEM_populate_physmap",
            Self::ADD_TO_PHYSMAP => "XENMEM_add_to_physmap",
            Self::TRANSLATE_GPFN_LIST => "XENMEM_translate_gpfn_list",
            Self::MEMORY_MAP => "XENMEM_memory_map",
            Self::MACHINE_MEMORY_MAP => "XENMEM_machine_memory_map",
            Self::EXCHANGE => "XENMEM_exchange",
            Self::MACHPHYS_MAPPING => "XENMEM_machphys_mapping",
            Self::SET_MEMORY_MAP => "XENMEM_set_memory_map",
            Self::MAXIMUM_GPFN => "XENMEM_maximum_gpfn",
            Self::REMOVE_FROM_PHYSMAP => "XENMEM_remove_from_physmap",
            Self::SET_POD_TARGET => "XENMEM_set_pod_target",
            Self::GET_POD_TARGET => "XENMEM_get_pod_target",
            Self::GET_SHARING_FREED_PAGES => "XENMEM_get_sharing_freed_pages",
            Self::GET_SHARING_SHARED_PAGES => "XENMEM_get_sharing_shared_pages",
            Self::PAGING_OP => "XENMEM_paging_op",
            Self::ACCESS_OP => "XENMEM_access_op",
            Self::SHARING_OP => "XENMEM_sharing_op",
            Self::ADD_TO_PHYSMAP_BATCH => "XENMEM_add_to_physmap_batch",
            Self::CLAIM_PAGES => "XENMEM_claim_pages",
            Self::MACHPHYS_COMPAT_MFN_LIST => "XENMEM_machphys_compat_mfn_list",
            Self::GET_VNUMAINFO => "XENMEM_get_vnumainfo",
            Self::RESERVED_DEVICE_MEMORY_MAP => "XENMEM_reserved_device_memory_map",
            Self::ACQUIRE_RESOURCE => "XENMEM_acquire_resource",
            _ => return None,
        })
    }
}

/// Bits of the command word below the start extent.
///
/// Not in the public headers (it lives in Xen's private `hypercall.h`), but effectively
/// ABI: a guest migrated in the middle of a continuation resumes with the old encoding.
pub const MEMOP_EXTENT_SHIFT: u32 = 6;
/// Mask selecting the sub-op from the command word.
pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;

/// The `memory_op` command word (`unsigned long cmd`, 64 bits on x86_64), split into its
/// sub-op and the extent to start or resume from:
/// `cmd = op | (start_extent << MEMOP_EXTENT_SHIFT)`.
///
/// Xen uses a non-zero start to resume a preempted call, and a guest may pass one itself.
/// Which sub-ops honour it is behaviour, not encoding: the decoder accepts every word.
/// Arch-specific sub-ops are dispatched on the whole word, so for them a non-zero start
/// is an unknown command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryOpCmd {
    /// The sub-op, `cmd & MEMOP_CMD_MASK`.
    pub op: MemoryOp,
    /// The extent to start from, `cmd >> MEMOP_EXTENT_SHIFT`.
    pub start_extent: u64,
}

/// Why a [`MemoryOpCmd`] has no command word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum CmdEncodeError {
    /// The sub-op number does not fit below [`MEMOP_EXTENT_SHIFT`]; it would spill into
    /// the start extent.
    #[error("sub-op {0:?} does not fit in the {MEMOP_EXTENT_SHIFT}-bit op field")]
    OpOutOfRange(MemoryOp),
    /// `start_extent << MEMOP_EXTENT_SHIFT` does not fit in 64 bits.
    #[error("start extent {0:#x} does not fit in the command word")]
    StartExtentOverflow(u64),
}

impl MemoryOpCmd {
    /// Largest start extent a command word can carry.
    pub const MAX_START_EXTENT: u64 = u64::MAX >> MEMOP_EXTENT_SHIFT;

    /// A command for `op` starting at extent 0.
    pub const fn new(op: MemoryOp) -> Self {
        Self {
            op,
            start_extent: 0,
        }
    }

    /// Splits a command word. Total: every `u64` is some (op, start) pair.
    pub const fn decode(cmd: u64) -> Self {
        Self {
            // Lossless: the mask leaves 6 bits.
            op: MemoryOp((cmd & MEMOP_CMD_MASK) as u32),
            start_extent: cmd >> MEMOP_EXTENT_SHIFT,
        }
    }

    /// Builds the command word, or says which half does not fit.
    pub const fn try_encode(self) -> Result<u64, CmdEncodeError> {
        if self.op.0 as u64 > MEMOP_CMD_MASK {
            return Err(CmdEncodeError::OpOutOfRange(self.op));
        }
        if self.start_extent > Self::MAX_START_EXTENT {
            return Err(CmdEncodeError::StartExtentOverflow(self.start_extent));
        }
        Ok(self.op.0 as u64 | (self.start_extent << MEMOP_EXTENT_SHIFT))
    }

    /// [`MemoryOpCmd::try_encode`] without the reason.
    pub const fn encode(self) -> Option<u64> {
        match self.try_encode() {
            Ok(cmd) => Some(cmd),
            Err(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// mem_flags
// ---------------------------------------------------------------------------------------

/// Node value meaning "no node" (`NUMA_NO_NODE`), what [`MemFlags::get_node`] yields
/// when the node field is empty.
pub const NUMA_NO_NODE: u8 = 0xff;

/// The `mem_flags` word of [`XenMemoryReservation`] (`XENMEMF_*`; Linux's headers, which
/// predate interface 0x30209, call the same word `address_bits`).
///
/// | bits | meaning |
/// |---|---|
/// | 0-7 | address bits the allocation must fit below; 0 = no limit |
/// | 8-15 | NUMA node **plus one**; 0 = no node requested |
/// | 16 | populate-on-demand (populate_physmap only) |
/// | 17 | the node is a requirement, not a hint |
/// | 18 | the node is a virtual (vNUMA) node |
/// | 19-31 | unassigned |
///
/// Hand-written rather than a bitfield so the helpers can carry the C macro names and so
/// the +1 of the node field stays in plain sight.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct MemFlags(pub u32);

impl MemFlags {
    /// No flags: any address, any node.
    pub const NONE: Self = Self(0);
    /// `XENMEMF_populate_on_demand`.
    pub const POPULATE_ON_DEMAND: Self = Self(1 << 16);
    /// `XENMEMF_exact_node_request`.
    pub const EXACT_NODE_REQUEST: Self = Self(1 << 17);
    /// `XENMEMF_vnode`.
    pub const VNODE: Self = Self(1 << 18);
    /// Bits no `XENMEMF_*` macro assigns (19-31).
    pub const RESERVED_MASK: u32 = !((1 << 19) - 1);

    const NODE_SHIFT: u32 = 8;

    /// `XENMEMF_address_bits(bits)`.
    pub const fn address_bits(bits: u8) -> Self {
        Self(bits as u32)
    }

    /// `XENMEMF_node(n)`, `(n + 1) << 8`.
    ///
    /// Differs from the C macro for `n == NUMA_NO_NODE` only: C carries the +1 out of the
    /// node field into [`MemFlags::POPULATE_ON_DEMAND`], this wraps to an empty node field,
    /// which is what "no node" means.
    pub const fn node(n: u8) -> Self {
        Self((n.wrapping_add(1) as u32) << Self::NODE_SHIFT)
    }

    /// `XENMEMF_exact_node(n)`: [`MemFlags::node`] plus the exact-node request.
    pub const fn exact_node(n: u8) -> Self {
        Self(Self::node(n).0 | Self::EXACT_NODE_REQUEST.0)
    }

    /// `XENMEMF_get_address_bits(x)`, `x & 0xff`.
    pub const fn get_address_bits(self) -> u8 {
        // Lossless: the C macro masks to 8 bits.
        (self.0 & 0xff) as u8
    }

    /// `XENMEMF_get_node(x)`, `((x >> 8) - 1) & 0xff`: the node, or [`NUMA_NO_NODE`] when
    /// the node field is 0.
    pub const fn get_node(self) -> u8 {
        // Lossless: the C macro masks to 8 bits; the borrow out of bit 8 is discarded
        // there too.
        ((self.0 >> Self::NODE_SHIFT).wrapping_sub(1) & 0xff) as u8
    }

    /// The requested node, `None` when the node field is empty or names [`NUMA_NO_NODE`].
    /// A virtual node if [`MemFlags::vnode`] is set, a physical one otherwise.
    pub const fn numa_node(self) -> Option<u8> {
        match self.get_node() {
            NUMA_NO_NODE => None,
            n => Some(n),
        }
    }

    /// Whether `XENMEMF_populate_on_demand` is set.
    pub const fn populate_on_demand(self) -> bool {
        self.0 & Self::POPULATE_ON_DEMAND.0 != 0
    }

    /// Whether `XENMEMF_exact_node_request` is set.
    pub const fn exact_node_request(self) -> bool {
        self.0 & Self::EXACT_NODE_REQUEST.0 != 0
    }

    /// Whether `XENMEMF_vnode` is set.
    pub const fn vnode(self) -> bool {
        self.0 & Self::VNODE.0 != 0
    }

    /// Bits 19-31, in place. Xen ignores them; a stricter host may refuse them.
    pub const fn reserved_bits(self) -> u32 {
        self.0 & Self::RESERVED_MASK
    }

    /// Both sets of flags. Meant for disjoint fields, as the C macros are `|`-ed.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl BitOr for MemFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for MemFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for MemFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFlags")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("address_bits", &self.get_address_bits())
            .field("node", &self.numa_node())
            .field("populate_on_demand", &self.populate_on_demand())
            .field("exact_node_request", &self.exact_node_request())
            .field("vnode", &self.vnode())
            .field("reserved", &format_args!("{:#x}", self.reserved_bits()))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Other codes
// ---------------------------------------------------------------------------------------

/// Source space of an `add_to_physmap(_batch)` mapping (`XENMAPSPACE_*`).
///
/// Over `u32`, the width of [`XenAddToPhysmap::space`]; the batch form carries a `u16`
/// (see [`XenAddToPhysmapBatch::map_space`]).
#[open_enum]
#[repr(u32)]
#[derive(Clone, Copy, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub enum MapSpace {
    /// `XENMAPSPACE_shared_info`: the shared-info page; idx must be 0.
    SHARED_INFO = 0,
    /// `XENMAPSPACE_grant_table`: a grant-table frame; OR
    /// [`XENMAPIDX_GRANT_TABLE_STATUS`] into idx for a status frame.
    GRANT_TABLE = 1,
    /// `XENMAPSPACE_gmfn`: move one of the domain's own frames.
    GMFN = 2,
    /// `XENMAPSPACE_gmfn_range`: move `size` frames. `add_to_physmap` only.
    GMFN_RANGE = 3,
    /// `XENMAPSPACE_gmfn_foreign`: map a frame of `foreign_domid`. `add_to_physmap_batch`
    /// only.
    GMFN_FOREIGN = 4,
    /// `XENMAPSPACE_dev_mmio`: device MMIO, hardware domain mapping itself (ARM).
    DEV_MMIO = 5,
}

/// `XENMAPIDX_grant_table_status`: in a [`MapSpace::GRANT_TABLE`] idx, selects status
/// frames instead of shared frames.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// Resource kind of `XENMEM_acquire_resource` (`XENMEM_resource_*`).
#[open_enum]
#[repr(u16)]
#[derive(Clone, Copy, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub enum ResourceType {
    /// `XENMEM_resource_ioreq_server`; id = ioreq server id.
    IOREQ_SERVER = 0,
    /// `XENMEM_resource_grant_table`; id = `XENMEM_RESOURCE_GRANT_TABLE_ID_*`.
    GRANT_TABLE = 1,
    /// `XENMEM_resource_vmtrace_buf`; id = vcpu.
    VMTRACE_BUF = 2,
}

/// `XENMEM_resource_grant_table_id_shared`: the shared grant frames.
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED: u32 = 0;
/// `XENMEM_resource_grant_table_id_status`: the status frames (grant table v2 only).
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS: u32 = 1;
/// `XENMEM_resource_ioreq_server_frame_bufioreq`: the buffered-ioreq page.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ: u64 = 0;

/// `XENMEM_resource_ioreq_server_frame_ioreq(n)`, `1 + n`: the `n`th synchronous ioreq
/// page. Takes a `u32` so the sum cannot overflow the `u64` frame index.
pub const fn xenmem_resource_ioreq_server_frame_ioreq(n: u32) -> u64 {
    1 + n as u64
}

/// `XENMEM_rsrc_acq_caller_owned`, bit 0 of [`XenMemAcquireResource::flags`]: set on
/// return by hypervisors that predate the field's reuse as padding (Linux's `include/xen/interface/memory.h`).
pub const XENMEM_RSRC_ACQ_CALLER_OWNED: u32 = 1;

/// `XENMEM_RDM_ALL`, in [`XenReservedDeviceMemoryMap::flags`]: report every region and
/// ignore `dev`.
pub const XENMEM_RDM_ALL: u32 = 1;

/// `MACH2PHYS_VIRT_START` (x86_64 `arch-x86/xen-x86_64.h`): where the read-only m2p
/// table starts in every PV guest's virtual address space (Xen's `RO_MPT_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// `MACH2PHYS_VIRT_END`: the end of that range (256 GiB).
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// `MACH2PHYS_NR_ENTRIES`: frames the range can describe, 8 bytes each.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;

/// `XEN_DOMINF_dying` (Xen 4.17 `domctl.h`): in `xen_domctl_getdomaininfo.flags`.
/// `domctl.h` needs GNU C (it pulls in `hvm/save.h`), so the C conformance test, which
/// compiles strict C, does not check the `XEN_DOMINF_*` values.
pub const XEN_DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_hvm_guest`: an HVM or PVH domain.
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
/// `XEN_DOMINF_hap`: the domain uses hardware-assisted paging.
pub const XEN_DOMINF_HAP: u32 = 1 << 8;

/// Most entries a memory map may hold (`E820MAX`; Xen-internal, not in the public
/// headers). `set_memory_map` refuses more with `-EINVAL`.
pub const E820MAX: usize = 1024;

/// Type of an [`E820Entry`], as returned by BIOS INT 15h/E820h.
#[open_enum]
#[repr(u32)]
#[derive(Clone, Copy, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub enum E820Type {
    /// Usable RAM.
    RAM = 1,
    /// Reserved.
    RESERVED = 2,
    /// ACPI tables, reclaimable after reading.
    ACPI = 3,
    /// ACPI non-volatile storage.
    NVS = 4,
    /// Known-bad memory.
    UNUSABLE = 5,
}

// ---------------------------------------------------------------------------------------
// Argument structs (x86_64)
// ---------------------------------------------------------------------------------------

/// `struct xen_memory_reservation`: the argument of `increase_reservation`,
/// `decrease_reservation`, `populate_physmap` and `claim_pages`, and both halves of
/// [`XenMemoryExchange`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Handle to a `xen_pfn_t` array, one per extent. increase: OUT, MFNs allocated (PV
    /// only); decrease: IN, GMFNs to free; populate: IN GPFNs to fill, OUT GMFNs
    /// allocated (PV only); claim: must be 0.
    pub extent_start: u64,
    /// IN: number of extents.
    pub nr_extents: u64,
    /// IN: each extent is `2^extent_order` pages, aligned to its size.
    pub extent_order: u32,
    /// IN: address limit and NUMA placement. Unused by decrease_reservation.
    pub mem_flags: MemFlags,
    /// IN: target domain; unprivileged callers may name only themselves.
    pub domid: u16,
    /// Tail padding.
    pub _pad0: [u8; 6],
}
assert_layout!(XenMemoryReservation, size 32, align 8,
    extent_start @ 0, nr_extents @ 8, extent_order @ 16, mem_flags @ 20, domid @ 24, _pad0 @ 26);

/// `struct xen_memory_exchange`, the argument of `XENMEM_exchange`: trade the `in_`
/// extents for freshly allocated `out` extents, atomically per chunk.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMemoryExchange {
    /// IN: the extents to give up (GMFN bases). `in_.mem_flags` is ignored.
    pub in_: XenMemoryReservation,
    /// IN/OUT: the extents wanted. Same domid and same total pages as `in_`;
    /// `out.extent_start` lists GPFNs to fill and is overwritten with the GMFNs allocated.
    pub out: XenMemoryReservation,
    /// IN/OUT: input extents already exchanged. The caller must pass 0; on return the
    /// first `nr_exchanged` input extents are gone and their replacements are in place.
    pub nr_exchanged: u64,
}
assert_layout!(XenMemoryExchange, size 72, align 8,
    in_ @ 0, in_.domid @ 24, out @ 32, out.extent_start @ 32, out.domid @ 56, nr_exchanged @ 64);

/// `struct xen_memory_domain`, the argument of `current_reservation`,
/// `maximum_reservation` and `maximum_gpfn`: just a domain id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMemoryDomain {
    /// IN: the domain asked about; [`DOMID_SELF`] allowed.
    pub domid: u16,
}
assert_layout!(XenMemoryDomain, size 2, align 2, domid @ 0);

/// `struct xen_machphys_mfn_list`, the argument of `machphys_mfn_list` and
/// `machphys_compat_mfn_list`: the MFNs of the 2 MiB extents holding the M2P table.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMachphysMfnList {
    /// IN: capacity of the `extent_start` array.
    pub max_extents: u32,
    /// Padding before the handle.
    pub _pad0: [u8; 4],
    /// IN: handle to a `xen_pfn_t` array to fill (a 0 entry marks a gap).
    pub extent_start: u64,
    /// OUT: entries written.
    pub nr_extents: u32,
    /// Tail padding.
    pub _pad1: [u8; 4],
}
assert_layout!(XenMachphysMfnList, size 24, align 8,
    max_extents @ 0, _pad0 @ 4, extent_start @ 8, nr_extents @ 16, _pad1 @ 20);

/// `struct xen_machphys_mapping`, the result of `XENMEM_machphys_mapping`: where the M2P
/// table sits in the guest's virtual address space.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMachphysMapping {
    /// OUT: first virtual address.
    pub v_start: u64,
    /// OUT: end virtual address.
    pub v_end: u64,
    /// OUT: largest MFN that can be looked up.
    pub max_mfn: u64,
}
assert_layout!(XenMachphysMapping, size 24, align 8, v_start @ 0, v_end @ 8, max_mfn @ 16);

/// `struct xen_add_to_physmap`, the argument of `XENMEM_add_to_physmap`: make page `idx`
/// of `space` appear at `gpfn` (translated guests only). All fields IN.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenAddToPhysmap {
    /// Domain whose physmap changes.
    pub domid: u16,
    /// Pages to move, for [`MapSpace::GMFN_RANGE`] only.
    pub size: u16,
    /// Source space.
    pub space: MapSpace,
    /// Index into `space` (a GFN for the gmfn spaces).
    pub idx: u64,
    /// GPFN where the page should appear.
    pub gpfn: u64,
}
assert_layout!(XenAddToPhysmap, size 24, align 8,
    domid @ 0, size @ 2, space @ 4, idx @ 8, gpfn @ 16);

/// `struct xen_add_to_physmap_batch`, the argument of `XENMEM_add_to_physmap_batch`:
/// `size` independent add_to_physmap calls, each with its own error code.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenAddToPhysmapBatch {
    /// IN: domain whose physmap changes.
    pub domid: u16,
    /// IN: source space, a [`MapSpace`] narrowed to 16 bits.
    pub space: u16,
    /// IN: number of entries in each array.
    pub size: u16,
    /// IN: the union `u`: `foreign_domid` for [`MapSpace::GMFN_FOREIGN`], `res0` (must be
    /// 0) for every other space. Headers before interface 0x40700 have the plain field.
    pub foreign_domid: u16,
    /// IN: handle to a `xen_ulong_t` array of indexes into `space`.
    pub idxs: u64,
    /// IN: handle to a `xen_pfn_t` array of destination GPFNs.
    pub gpfns: u64,
    /// OUT: handle to an `int` array receiving each entry's error code.
    pub errs: u64,
}
assert_layout!(XenAddToPhysmapBatch, size 32, align 8,
    domid @ 0, space @ 2, size @ 4, foreign_domid @ 6, idxs @ 8, gpfns @ 16, errs @ 24);

impl XenAddToPhysmapBatch {
    /// `space` as a [`MapSpace`].
    pub const fn map_space(&self) -> MapSpace {
        MapSpace(self.space as u32)
    }
}

/// `struct xen_add_to_physmap_range`, the name Linux's copy of the header and headers for interface versions
/// below 0x40400 give [`XenAddToPhysmapBatch`]; same layout.
pub type XenAddToPhysmapRange = XenAddToPhysmapBatch;

/// `struct xen_remove_from_physmap`, the argument of `XENMEM_remove_from_physmap`: unmap
/// whatever is at `gpfn` (translated guests only). All fields IN.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenRemoveFromPhysmap {
    /// Domain whose physmap changes.
    pub domid: u16,
    /// Padding before `gpfn`.
    pub _pad0: [u8; 6],
    /// GPFN of the page to unmap.
    pub gpfn: u64,
}
assert_layout!(XenRemoveFromPhysmap, size 16, align 8, domid @ 0, _pad0 @ 2, gpfn @ 8);

/// `struct xen_memory_map`, the argument of `memory_map` and `machine_memory_map`, and the
/// `map` of [`XenForeignMemoryMap`]: a buffer of [`E820Entry`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMemoryMap {
    /// IN: capacity of `buffer` in entries; OUT: entries stored.
    pub nr_entries: u32,
    /// Padding before the handle.
    pub _pad0: [u8; 4],
    /// Handle to an array of [`E820Entry`] (OUT for the getters, IN for set_memory_map).
    pub buffer: u64,
}
assert_layout!(XenMemoryMap, size 16, align 8, nr_entries @ 0, _pad0 @ 4, buffer @ 8);

/// One entry of a memory map, packed as BIOS INT 15h/E820h returns it (Xen's internal
/// `struct e820entry`). Entries sit at 20-byte strides, so fields are unaligned: read
/// them by value.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C, packed)]
pub struct E820Entry {
    /// Start physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Range type.
    pub ty: E820Type,
}
assert_layout!(E820Entry, size 20, align 1, addr @ 0, size @ 8, ty @ 16);

/// `struct xen_foreign_memory_map`, the argument of `XENMEM_set_memory_map`: a toolstack
/// sets the memory map that `domid` later reads with `XENMEM_memory_map`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenForeignMemoryMap {
    /// IN: the domain whose map is set.
    pub domid: u16,
    /// Padding before `map`.
    pub _pad0: [u8; 6],
    /// IN: the new map (`nr_entries` entries at `buffer`).
    pub map: XenMemoryMap,
}
assert_layout!(XenForeignMemoryMap, size 24, align 8,
    domid @ 0, _pad0 @ 2, map @ 8, map.nr_entries @ 8, map.buffer @ 16);

/// `struct xen_mem_acquire_resource`, the argument of `XENMEM_acquire_resource`: map
/// frames of a domain's resource (ioreq pages, grant table, trace buffer) into the
/// caller.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMemAcquireResource {
    /// IN: the domain owning the resource (not the caller itself).
    pub domid: u16,
    /// IN: which resource.
    pub ty: ResourceType,
    /// IN: a per-type id, 0 unless the type defines one.
    pub id: u32,
    /// IN: frames to map; OUT: with `frame_list` 0 and `nr_frames` 0 on entry, the
    /// resource's size in frames.
    pub nr_frames: u32,
    /// `flags` in Linux's copy of the header, OUT [`XENMEM_RSRC_ACQ_CALLER_OWNED`]. Xen since 4.15 calls it
    /// `pad`, requires 0 on input and never sets it.
    pub flags: u32,
    /// IN: index of the first frame; ignored when `nr_frames` is 0.
    pub frame: u64,
    /// IN/OUT: handle to a `xen_pfn_t` array. HVM callers pass the GFNs to map at; PV
    /// callers get the MFNs back.
    pub frame_list: u64,
}
assert_layout!(XenMemAcquireResource, size 32, align 8,
    domid @ 0, ty @ 2, id @ 4, nr_frames @ 8, flags @ 12, frame @ 16, frame_list @ 24);

/// `struct xen_pod_target`, the argument of `set_pod_target` and `get_pod_target`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenPodTarget {
    /// IN (set): the populate-on-demand target, in pages.
    pub target_pages: u64,
    /// OUT: pages the domain holds.
    pub tot_pages: u64,
    /// OUT: pages in the PoD cache.
    pub pod_cache_pages: u64,
    /// OUT: outstanding PoD entries.
    pub pod_entries: u64,
    /// IN: the domain.
    pub domid: u16,
    /// Tail padding.
    pub _pad0: [u8; 6],
}
assert_layout!(XenPodTarget, size 40, align 8,
    target_pages @ 0, tot_pages @ 8, pod_cache_pages @ 16, pod_entries @ 24, domid @ 32,
    _pad0 @ 34);

/// `struct xen_reserved_device_memory`: one region reported by
/// `XENMEM_reserved_device_memory_map`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenReservedDeviceMemory {
    /// First frame of the region.
    pub start_pfn: u64,
    /// Length in pages.
    pub nr_pages: u64,
}
assert_layout!(XenReservedDeviceMemory, size 16, align 8, start_pfn @ 0, nr_pages @ 8);

/// `struct physdev_pci_device` (`physdev.h`): a PCI device address.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PhysdevPciDevice {
    /// PCI segment.
    pub seg: u16,
    /// Bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
}
assert_layout!(PhysdevPciDevice, size 4, align 2, seg @ 0, bus @ 2, devfn @ 3);

/// `struct xen_reserved_device_memory_map`, the argument of
/// `XENMEM_reserved_device_memory_map`: the guest-physical ranges legacy devices need kept
/// free.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenReservedDeviceMemoryMap {
    /// IN: [`XENMEM_RDM_ALL`] or 0.
    pub flags: u32,
    /// IN: capacity of `buffer`; OUT: entries needed, when `-ERANGE` says it was too small.
    pub nr_entries: u32,
    /// OUT: handle to an array of [`XenReservedDeviceMemory`].
    pub buffer: u64,
    /// IN: the `dev` union's only member, `pci`: the device asked about, unless
    /// [`XENMEM_RDM_ALL`].
    pub dev: PhysdevPciDevice,
    /// Tail padding.
    pub _pad0: [u8; 4],
}
assert_layout!(XenReservedDeviceMemoryMap, size 24, align 8,
    flags @ 0, nr_entries @ 4, buffer @ 8, dev @ 16, dev.seg @ 16, dev.bus @ 18, dev.devfn @ 19,
    _pad0 @ 20);

/// `struct xen_vmemrange`: one vNUMA memory range, an element of
/// [`XenVnumaTopologyInfo::vmemrange`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenVmemrange {
    /// First guest-physical address.
    pub start: u64,
    /// End guest-physical address.
    pub end: u64,
    /// Flags; none defined.
    pub flags: u32,
    /// Virtual node the range belongs to.
    pub nid: u32,
}
assert_layout!(XenVmemrange, size 24, align 8, start @ 0, end @ 8, flags @ 16, nid @ 20);

/// `struct xen_vnuma_topology_info`, the argument of `XENMEM_get_vnumainfo`. Each array
/// handle sits in a union with a `uint64_t pad` so the struct is the same for 32-bit
/// guests; here the union is its 8 bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenVnumaTopologyInfo {
    /// IN: the domain.
    pub domid: u16,
    /// A real field of the C struct, not compiler padding.
    pub pad: u16,
    /// IN: capacity in vnodes; OUT: the domain's vnode count.
    pub nr_vnodes: u32,
    /// IN: capacity in vcpus; OUT: the domain's vcpu count.
    pub nr_vcpus: u32,
    /// IN: capacity in ranges; OUT: the domain's range count.
    pub nr_vmemranges: u32,
    /// OUT: handle to a `uint` array, `nr_vnodes` x `nr_vnodes` distances.
    pub vdistance: u64,
    /// OUT: handle to a `uint` array, the vnode of each vcpu.
    pub vcpu_to_vnode: u64,
    /// OUT: handle to an array of [`XenVmemrange`].
    pub vmemrange: u64,
}
assert_layout!(XenVnumaTopologyInfo, size 40, align 8,
    domid @ 0, pad @ 2, nr_vnodes @ 4, nr_vcpus @ 8, nr_vmemranges @ 12, vdistance @ 16,
    vcpu_to_vnode @ 24, vmemrange @ 32);

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use proptest::prelude::*;
    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn struct_sizes_match_the_xen_headers() {
        // (size, align) of the x86_64 C layouts of Xen 4.17's public headers (checked
        // against the headers themselves by `tests/c_conformance_xen.rs`).
        assert_eq!(
            (
                size_of::<XenMemoryReservation>(),
                align_of::<XenMemoryReservation>()
            ),
            (32, 8)
        );
        assert_eq!(
            (
                size_of::<XenMemoryExchange>(),
                align_of::<XenMemoryExchange>()
            ),
            (72, 8)
        );
        assert_eq!(
            (size_of::<XenMemoryDomain>(), align_of::<XenMemoryDomain>()),
            (2, 2)
        );
        assert_eq!(
            (
                size_of::<XenMachphysMfnList>(),
                align_of::<XenMachphysMfnList>()
            ),
            (24, 8)
        );
        assert_eq!(
            (
                size_of::<XenMachphysMapping>(),
                align_of::<XenMachphysMapping>()
            ),
            (24, 8)
        );
        assert_eq!(
            (size_of::<XenAddToPhysmap>(), align_of::<XenAddToPhysmap>()),
            (24, 8)
        );
        assert_eq!(
            (
                size_of::<XenAddToPhysmapBatch>(),
                align_of::<XenAddToPhysmapBatch>()
            ),
            (32, 8)
        );
        assert_eq!(size_of::<XenAddToPhysmapRange>(), 32);
        assert_eq!(
            (
                size_of::<XenRemoveFromPhysmap>(),
                align_of::<XenRemoveFromPhysmap>()
            ),
            (16, 8)
        );
        assert_eq!(
            (size_of::<XenMemoryMap>(), align_of::<XenMemoryMap>()),
            (16, 8)
        );
        assert_eq!((size_of::<E820Entry>(), align_of::<E820Entry>()), (20, 1));
        assert_eq!(
            (
                size_of::<XenForeignMemoryMap>(),
                align_of::<XenForeignMemoryMap>()
            ),
            (24, 8)
        );
        assert_eq!(
            (
                size_of::<XenMemAcquireResource>(),
                align_of::<XenMemAcquireResource>()
            ),
            (32, 8)
        );
        assert_eq!(
            (size_of::<XenPodTarget>(), align_of::<XenPodTarget>()),
            (40, 8)
        );
        assert_eq!(
            (
                size_of::<XenReservedDeviceMemory>(),
                align_of::<XenReservedDeviceMemory>()
            ),
            (16, 8)
        );
        assert_eq!(
            (
                size_of::<PhysdevPciDevice>(),
                align_of::<PhysdevPciDevice>()
            ),
            (4, 2)
        );
        assert_eq!(
            (
                size_of::<XenReservedDeviceMemoryMap>(),
                align_of::<XenReservedDeviceMemoryMap>()
            ),
            (24, 8)
        );
        assert_eq!(
            (
                size_of::<XenVnumaTopologyInfo>(),
                align_of::<XenVnumaTopologyInfo>()
            ),
            (40, 8)
        );
        assert_eq!(
            (size_of::<XenVmemrange>(), align_of::<XenVmemrange>()),
            (24, 8)
        );
        // Open enums and the flags word are their wire integer, nothing more.
        assert_eq!(size_of::<MemoryOp>(), 4);
        assert_eq!(size_of::<MapSpace>(), 4);
        assert_eq!(size_of::<ResourceType>(), 2);
        assert_eq!(size_of::<E820Type>(), 4);
        assert_eq!(size_of::<MemFlags>(), 4);
        assert_eq!(size_of::<Hypercall>(), 8);
    }

    #[test]
    fn field_offsets_match_the_xen_headers() {
        // The x86_64 C layouts of Xen 4.17's public headers, field by field.
        type R = XenMemoryReservation;
        assert_eq!(offset_of!(R, extent_start), 0);
        assert_eq!(offset_of!(R, nr_extents), 8);
        assert_eq!(offset_of!(R, extent_order), 16);
        assert_eq!(offset_of!(R, mem_flags), 20);
        assert_eq!(offset_of!(R, domid), 24);
        assert_eq!(offset_of!(R, _pad0), 26);

        type X = XenMemoryExchange;
        assert_eq!(offset_of!(X, in_), 0);
        assert_eq!(offset_of!(X, out), 32);
        assert_eq!(offset_of!(X, nr_exchanged), 64);

        assert_eq!(offset_of!(XenMemoryDomain, domid), 0);

        type M = XenMachphysMfnList;
        assert_eq!(offset_of!(M, max_extents), 0);
        assert_eq!(offset_of!(M, extent_start), 8);
        assert_eq!(offset_of!(M, nr_extents), 16);

        type P = XenMachphysMapping;
        assert_eq!(offset_of!(P, v_start), 0);
        assert_eq!(offset_of!(P, v_end), 8);
        assert_eq!(offset_of!(P, max_mfn), 16);

        type A = XenAddToPhysmap;
        assert_eq!(offset_of!(A, domid), 0);
        assert_eq!(offset_of!(A, size), 2);
        assert_eq!(offset_of!(A, space), 4);
        assert_eq!(offset_of!(A, idx), 8);
        assert_eq!(offset_of!(A, gpfn), 16);

        type B = XenAddToPhysmapBatch;
        assert_eq!(offset_of!(B, domid), 0);
        assert_eq!(offset_of!(B, space), 2);
        assert_eq!(offset_of!(B, size), 4);
        assert_eq!(offset_of!(B, foreign_domid), 6);
        assert_eq!(offset_of!(B, idxs), 8);
        assert_eq!(offset_of!(B, gpfns), 16);
        assert_eq!(offset_of!(B, errs), 24);

        assert_eq!(offset_of!(XenRemoveFromPhysmap, domid), 0);
        assert_eq!(offset_of!(XenRemoveFromPhysmap, gpfn), 8);

        assert_eq!(offset_of!(XenMemoryMap, nr_entries), 0);
        assert_eq!(offset_of!(XenMemoryMap, buffer), 8);

        assert_eq!(offset_of!(E820Entry, addr), 0);
        assert_eq!(offset_of!(E820Entry, size), 8);
        assert_eq!(offset_of!(E820Entry, ty), 16);

        assert_eq!(offset_of!(XenForeignMemoryMap, domid), 0);
        assert_eq!(offset_of!(XenForeignMemoryMap, map), 8);

        type Q = XenMemAcquireResource;
        assert_eq!(offset_of!(Q, domid), 0);
        assert_eq!(offset_of!(Q, ty), 2);
        assert_eq!(offset_of!(Q, id), 4);
        assert_eq!(offset_of!(Q, nr_frames), 8);
        assert_eq!(offset_of!(Q, flags), 12);
        assert_eq!(offset_of!(Q, frame), 16);
        assert_eq!(offset_of!(Q, frame_list), 24);

        type T = XenPodTarget;
        assert_eq!(offset_of!(T, target_pages), 0);
        assert_eq!(offset_of!(T, tot_pages), 8);
        assert_eq!(offset_of!(T, pod_cache_pages), 16);
        assert_eq!(offset_of!(T, pod_entries), 24);
        assert_eq!(offset_of!(T, domid), 32);

        assert_eq!(offset_of!(XenReservedDeviceMemory, start_pfn), 0);
        assert_eq!(offset_of!(XenReservedDeviceMemory, nr_pages), 8);

        type D = XenReservedDeviceMemoryMap;
        assert_eq!(offset_of!(D, flags), 0);
        assert_eq!(offset_of!(D, nr_entries), 4);
        assert_eq!(offset_of!(D, buffer), 8);
        assert_eq!(offset_of!(D, dev.seg), 16);
        assert_eq!(offset_of!(D, dev.bus), 18);
        assert_eq!(offset_of!(D, dev.devfn), 19);

        type V = XenVnumaTopologyInfo;
        assert_eq!(offset_of!(V, domid), 0);
        assert_eq!(offset_of!(V, pad), 2);
        assert_eq!(offset_of!(V, nr_vnodes), 4);
        assert_eq!(offset_of!(V, nr_vcpus), 8);
        assert_eq!(offset_of!(V, nr_vmemranges), 12);
        assert_eq!(offset_of!(V, vdistance), 16);
        assert_eq!(offset_of!(V, vcpu_to_vnode), 24);
        assert_eq!(offset_of!(V, vmemrange), 32);

        assert_eq!(offset_of!(XenVmemrange, start), 0);
        assert_eq!(offset_of!(XenVmemrange, end), 8);
        assert_eq!(offset_of!(XenVmemrange, flags), 16);
        assert_eq!(offset_of!(XenVmemrange, nid), 20);
    }

    #[test]
    fn memory_op_numbers_and_names() {
        for (i, op) in MemoryOp::ALL.iter().enumerate() {
            assert_eq!(op.0 as usize, i);
            let name = op.name().expect("every assigned sub-op has a name");
            assert!(name.starts_with("XENMEM_"), "{name}");
        }
        assert_eq!(MemoryOp::POPULATE_PHYSMAP.0, 6);
        assert_eq!(
            MemoryOp::POPULATE_PHYSMAP.name(),
            Some("XENMEM_populate_physmap")
        );
        assert_eq!(MemoryOp::ACQUIRE_RESOURCE.0, 28);
        assert_eq!(
            MemoryOp::ADD_TO_PHYSMAP_RANGE,
            MemoryOp::ADD_TO_PHYSMAP_BATCH
        );
        assert_eq!(MemoryOp::TRANSLATE_GPFN_LIST.0, 8);
        assert_eq!(MemoryOp(29).name(), None);
        assert_eq!(MemoryOp(u32::MAX).name(), None);
    }

    #[test]
    fn other_codes() {
        assert_eq!(MapSpace::SHARED_INFO.0, 0);
        assert_eq!(MapSpace::GMFN_FOREIGN.0, 4);
        assert_eq!(MapSpace::DEV_MMIO.0, 5);
        assert_eq!(ResourceType::VMTRACE_BUF.0, 2);
        assert_eq!(E820Type::UNUSABLE.0, 5);
        assert_eq!(Hypercall::MEMORY_OP.0, 12);
        assert_eq!(Hypercall::DM_OP.0, 41);
        assert_eq!(xenmem_resource_ioreq_server_frame_ioreq(0), 1);
        assert_eq!(xenmem_resource_ioreq_server_frame_ioreq(u32::MAX), 1 << 32);
        let batch = XenAddToPhysmapBatch {
            space: 4,
            ..XenAddToPhysmapBatch::new_zeroed()
        };
        assert_eq!(batch.map_space(), MapSpace::GMFN_FOREIGN);
    }

    #[test]
    fn mem_flags_golden_values() {
        assert_eq!(MemFlags::node(0).0, 0x100);
        assert_eq!(MemFlags::node(3).0, 0x400);
        assert_eq!(MemFlags::exact_node(1).0, 0x20200);
        assert_eq!(MemFlags::address_bits(32).0, 32);
        assert_eq!(MemFlags::POPULATE_ON_DEMAND.0, 0x1_0000);
        assert_eq!(MemFlags::EXACT_NODE_REQUEST.0, 0x2_0000);
        assert_eq!(MemFlags::VNODE.0, 0x4_0000);
        assert_eq!(MemFlags::RESERVED_MASK, 0xFFF8_0000);

        assert_eq!(MemFlags(0).get_node(), 0xff);
        assert_eq!(MemFlags(0).numa_node(), None);
        assert_eq!(MemFlags(0x100).get_node(), 0);
        assert_eq!(MemFlags(0x100).numa_node(), Some(0));
        assert_eq!(MemFlags(0xff00).get_node(), 0xfe);
        // A PoD request without a node must still read as "no node", even though the
        // C formula borrows from bit 16.
        assert_eq!(MemFlags::POPULATE_ON_DEMAND.get_node(), 0xff);
        assert_eq!(MemFlags::POPULATE_ON_DEMAND.numa_node(), None);
        // Node 255 is NUMA_NO_NODE: it must not leak into the PoD bit.
        assert_eq!(MemFlags::node(NUMA_NO_NODE), MemFlags::NONE);

        let f = MemFlags::address_bits(32) | MemFlags::exact_node(2) | MemFlags::VNODE;
        assert_eq!(f.0, 0x6_0320);
        assert_eq!(f.get_address_bits(), 32);
        assert_eq!(f.numa_node(), Some(2));
        assert!(f.exact_node_request());
        assert!(f.vnode());
        assert!(!f.populate_on_demand());
        assert_eq!(f.reserved_bits(), 0);
        assert_eq!(MemFlags(0xdead_beef).reserved_bits(), 0xdea8_0000);
        assert_eq!(MemFlags(0xdead_beef).get_address_bits(), 0xef);
    }

    #[test]
    fn mem_flags_node_matches_c_macro_below_no_node() {
        for n in 0..NUMA_NO_NODE {
            let c_node = (u32::from(n) + 1) << 8;
            assert_eq!(MemFlags::node(n).0, c_node);
            assert_eq!(MemFlags::exact_node(n).0, c_node | (1 << 17));
            assert_eq!(MemFlags::node(n).get_node(), n);
            assert_eq!(MemFlags::node(n).numa_node(), Some(n));
        }
    }

    #[test]
    fn command_word_golden_values() {
        let populate = MemoryOpCmd {
            op: MemoryOp::POPULATE_PHYSMAP,
            start_extent: 5,
        };
        assert_eq!(populate.encode(), Some(0x146));
        assert_eq!(MemoryOpCmd::decode(0x146), populate);

        assert_eq!(MemoryOpCmd::new(MemoryOp::EXCHANGE).encode(), Some(11));
        // XTF xsa-454's word: maximum_ram_page with bit 32 set is start extent 2^26.
        let xsa454 = MemoryOpCmd::decode(2 | (1 << 32));
        assert_eq!(xsa454.op, MemoryOp::MAXIMUM_RAM_PAGE);
        assert_eq!(xsa454.start_extent, 1 << 26);

        let all_ones = MemoryOpCmd::decode(u64::MAX);
        assert_eq!(all_ones.op, MemoryOp(0x3f));
        assert_eq!(all_ones.start_extent, MemoryOpCmd::MAX_START_EXTENT);
        assert_eq!(all_ones.encode(), Some(u64::MAX));

        let too_far = MemoryOpCmd {
            op: MemoryOp::INCREASE_RESERVATION,
            start_extent: MemoryOpCmd::MAX_START_EXTENT + 1,
        };
        assert_eq!(
            too_far.try_encode(),
            Err(CmdEncodeError::StartExtentOverflow(1 << 58))
        );
        assert_eq!(too_far.encode(), None);
        let wide_op = MemoryOpCmd::new(MemoryOp(64));
        assert_eq!(
            wide_op.try_encode(),
            Err(CmdEncodeError::OpOutOfRange(MemoryOp(64)))
        );
    }

    #[test]
    fn e820_entries_decode_at_unaligned_strides() {
        let mut buf = [0u8; 41];
        let a = E820Entry {
            addr: 0x1000,
            size: 0x9_f000,
            ty: E820Type::RAM,
        };
        let b = E820Entry {
            addr: 0xf_0000,
            size: 0x1_0000,
            ty: E820Type::RESERVED,
        };
        buf[1..21].copy_from_slice(a.as_bytes());
        buf[21..41].copy_from_slice(b.as_bytes());
        let entries = <[E820Entry]>::ref_from_bytes(&buf[1..]).expect("two whole entries");
        assert_eq!(entries, [a, b]);
        assert_eq!({ entries[1].ty }, E820Type::RESERVED);
        assert!(<[E820Entry]>::ref_from_bytes(&buf[1..40]).is_err());
    }

    proptest! {
        #[test]
        fn command_word_decode_is_total_and_inverts_encode(cmd in any::<u64>()) {
            let decoded = MemoryOpCmd::decode(cmd);
            prop_assert!(decoded.op.0 <= 0x3f);
            prop_assert_eq!(decoded.encode(), Some(cmd));
        }

        #[test]
        fn command_word_encode_roundtrips(
            op in 0u32..=0x3f,
            start_extent in 0..=MemoryOpCmd::MAX_START_EXTENT,
        ) {
            let cmd = MemoryOpCmd { op: MemoryOp(op), start_extent };
            let word = cmd.try_encode();
            prop_assert!(word.is_ok());
            prop_assert_eq!(word.map(MemoryOpCmd::decode), Ok(cmd));
        }

        #[test]
        fn command_word_encode_rejects_what_does_not_fit(
            op in any::<u32>(),
            start_extent in any::<u64>(),
        ) {
            let cmd = MemoryOpCmd { op: MemoryOp(op), start_extent };
            let fits = op <= 0x3f && start_extent <= MemoryOpCmd::MAX_START_EXTENT;
            prop_assert_eq!(cmd.encode().is_some(), fits);
        }

        #[test]
        fn mem_flags_getters_match_c_macros(raw in any::<u32>()) {
            let f = MemFlags(raw);
            prop_assert_eq!(u32::from(f.get_address_bits()), raw & 0xff);
            prop_assert_eq!(u32::from(f.get_node()), ((raw >> 8).wrapping_sub(1)) & 0xff);
            prop_assert_eq!(f.numa_node().is_none(), (raw >> 8) & 0xff == 0);
            prop_assert_eq!(f.populate_on_demand(), raw & (1 << 16) != 0);
            prop_assert_eq!(f.exact_node_request(), raw & (1 << 17) != 0);
            prop_assert_eq!(f.vnode(), raw & (1 << 18) != 0);
            prop_assert_eq!(f.reserved_bits() | (raw & 0x7_ffff), raw);
        }

        #[test]
        fn structs_decode_any_bytes_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            fn roundtrip<T: FromBytes + IntoBytes + Immutable>(bytes: &[u8]) -> bool {
                match T::read_from_bytes(bytes) {
                    Ok(v) => v.as_bytes() == bytes,
                    Err(_) => bytes.len() != size_of::<T>(),
                }
            }
            prop_assert!(roundtrip::<XenMemoryReservation>(&bytes));
            prop_assert!(roundtrip::<XenMemoryExchange>(&bytes));
            prop_assert!(roundtrip::<XenMemoryDomain>(&bytes));
            prop_assert!(roundtrip::<XenMachphysMfnList>(&bytes));
            prop_assert!(roundtrip::<XenMachphysMapping>(&bytes));
            prop_assert!(roundtrip::<XenAddToPhysmap>(&bytes));
            prop_assert!(roundtrip::<XenAddToPhysmapBatch>(&bytes));
            prop_assert!(roundtrip::<XenRemoveFromPhysmap>(&bytes));
            prop_assert!(roundtrip::<XenMemoryMap>(&bytes));
            prop_assert!(roundtrip::<E820Entry>(&bytes));
            prop_assert!(roundtrip::<XenForeignMemoryMap>(&bytes));
            prop_assert!(roundtrip::<XenMemAcquireResource>(&bytes));
            prop_assert!(roundtrip::<XenPodTarget>(&bytes));
            prop_assert!(roundtrip::<XenReservedDeviceMemory>(&bytes));
            prop_assert!(roundtrip::<XenReservedDeviceMemoryMap>(&bytes));
            prop_assert!(roundtrip::<XenVnumaTopologyInfo>(&bytes));
            prop_assert!(roundtrip::<XenVmemrange>(&bytes));
        }
    }
}
