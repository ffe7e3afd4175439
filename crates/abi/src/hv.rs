//! The Hyper-V hypercall ABI of the partition memory pool and the partition lifecycle.
//!
//! Follows the Hyper-V Top-Level Functional Specification (TLFS): the "Native Interface"
//! of HvGetMemoryBalance, HvWithdrawMemory and HvCreateVp; the hypercall interface
//! (control word, result value, rep semantics: the current web TLFS,
//! `hypercall-interface.md`); HV_STATUS (TLFS 2.0A appendix C, extended by Linux
//! `include/hyperv/hvgdk_mini.h`); the data types and the partition-management and
//! memory-pool calls (TLFS 2.0A, the last public version that documents them in full),
//! with today's layouts as Linux's root writes them (`drivers/hv/mshv_root_hv_call.c`,
//! `include/hyperv/hvhdk_mini.h`); and the two extended hypercalls of free page reporting,
//! HvExtCallQueryCapabilities (the TLFS "Extended Hypercall Interface") and
//! HvExtCallMemoryHeatHint (the layout Linux writes: `include/hyperv/hvgdk_ext.h`).
//!
//! What this module decides, and what it leaves to the dispatcher:
//! - [`decode`] performs the generic checks G1-G4 (code lookup,
//!   reserved and nested control bits, rep/simple class, fast-register capacity) and reads
//!   the call's input struct. It never applies a per-call check such as a bad proximity
//!   domain: those come after the privilege check in each call's own order, which needs
//!   partition state this crate does not have. The TLFS leaves the order of these checks
//!   open (it asks only that ACCESS_DENIED win over a status that reveals state); G1-G6
//!   is ballast's own order, the one OpenVMM's `vm/hv1/hv1_hypercall/src/support.rs`
//!   follows.
//! - G5 (where the input and output lists sit in guest memory) is [`check_param_gpa`] for
//!   alignment and page crossing; whether a GPA lies inside the caller's GPA space, and
//!   whether input and output overlap, only the dispatcher can tell.
//!
//! Layout generations: the TLFS documents the 2.0 forms (16-byte HvCreatePartition,
//! 32-byte HvCreateVp); today's Linux mshv root writes 56- and 40-byte forms. The bytes do
//! not say which one a caller meant, so [`InputLayout`] is chosen by the host.

use core::fmt;
use core::num::NonZeroU16;

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------
// Call codes
// ---------------------------------------------------------------------------------------

/// A hypercall code (bits 15:0 of the control word).
#[open_enum::open_enum]
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub enum HypercallCode {
    /// HvCreatePartition.
    HvCallCreatePartition = 0x0040,
    /// HvInitializePartition.
    HvCallInitializePartition = 0x0041,
    /// HvFinalizePartition.
    HvCallFinalizePartition = 0x0042,
    /// HvDeletePartition.
    HvCallDeletePartition = 0x0043,
    /// HvGetPartitionProperty.
    HvCallGetPartitionProperty = 0x0044,
    /// HvGetNextChildPartition.
    HvCallGetNextChildPartition = 0x0047,
    /// HvDepositMemory (rep).
    HvCallDepositMemory = 0x0048,
    /// HvWithdrawMemory (rep).
    HvCallWithdrawMemory = 0x0049,
    /// HvGetMemoryBalance.
    HvCallGetMemoryBalance = 0x004A,
    /// HvCreateVp.
    HvCallCreateVp = 0x004E,
    /// HvDeleteVp.
    HvCallDeleteVp = 0x004F,
    /// HvGetVpRegisters (rep).
    HvCallGetVpRegisters = 0x0050,
    /// HvSetVpRegisters (rep).
    HvCallSetVpRegisters = 0x0051,
    /// HvExtCallQueryCapabilities: which extended hypercalls the host offers (TLFS
    /// "Extended Hypercall Interface").
    HvExtCallQueryCapabilities = 0x8001,
    /// HvExtCallMemoryHeatHint (rep): a guest's hint about its memory; the cold discard
    /// type is free page reporting (Linux `hv_balloon.c` `hv_free_page_report`).
    HvExtCallMemoryHeatHint = 0x8003,
}

/// Whether a call takes a repeated list (TLFS "rep" call) or a single input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// Rep count and rep start must be zero.
    Simple,
    /// Rep count must be at least one and rep start below it.
    Rep,
}

/// The static shape of one hypercall: its class and the sizes of its parameter lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallInfo {
    /// The call code.
    pub code: HypercallCode,
    /// The TLFS name, e.g. `HvDepositMemory`.
    pub name: &'static str,
    /// Simple or rep.
    pub class: CallClass,
    /// The TLFS 2.0 tables mark the call `[fast]`. Informational: like the current TLFS,
    /// [`check_control`] lets any call be fast whose input fits the registers and that has
    /// no output.
    pub fast_capable: bool,
    /// Size of the fixed input header in bytes.
    pub input_size: usize,
    /// Size of one rep input element (0 when the call has no input list).
    pub input_element_size: usize,
    /// Size of the fixed output in bytes.
    pub output_size: usize,
    /// Size of one rep output element (0 when the call has no output list).
    pub output_element_size: usize,
}

impl CallInfo {
    /// Bytes of input a call with `rep_count` elements reads.
    pub const fn input_len(&self, rep_count: u16) -> usize {
        self.input_size + self.input_element_size * rep_count as usize
    }

    /// Bytes of output a call with `rep_count` elements writes.
    pub const fn output_len(&self, rep_count: u16) -> usize {
        self.output_size + self.output_element_size * rep_count as usize
    }
}

/// Which generation of input layouts the host decodes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputLayout {
    /// TLFS 2.0: 16-byte HvCreatePartition, 32-byte HvCreateVp.
    #[default]
    Tlfs2,
    /// Current TLFS and Linux mshv: 56-byte HvCreatePartition, 40-byte HvCreateVp.
    Current,
}

impl HypercallCode {
    /// The shape of this call under `layout`, or `None` for a code ballast does not serve.
    pub const fn info(self, layout: InputLayout) -> Option<CallInfo> {
        let current = matches!(layout, InputLayout::Current);
        let (name, class, fast, inp, inp_el, out, out_el) = match self {
            Self::HvCallCreatePartition => (
                "HvCreatePartition",
                CallClass::Simple,
                false,
                if current { 56 } else { 16 },
                0,
                8,
                0,
            ),
            Self::HvCallInitializePartition => {
                ("HvInitializePartition", CallClass::Simple, true, 8, 0, 0, 0)
            }
            Self::HvCallFinalizePartition => {
                ("HvFinalizePartition", CallClass::Simple, true, 8, 0, 0, 0)
            }
            Self::HvCallDeletePartition => {
                ("HvDeletePartition", CallClass::Simple, true, 8, 0, 0, 0)
            }
            Self::HvCallGetPartitionProperty => (
                "HvGetPartitionProperty",
                CallClass::Simple,
                false,
                16,
                0,
                8,
                0,
            ),
            Self::HvCallGetNextChildPartition => (
                "HvGetNextChildPartition",
                CallClass::Simple,
                false,
                16,
                0,
                8,
                0,
            ),
            Self::HvCallDepositMemory => ("HvDepositMemory", CallClass::Rep, false, 8, 8, 0, 0),
            Self::HvCallWithdrawMemory => ("HvWithdrawMemory", CallClass::Rep, false, 16, 0, 0, 8),
            Self::HvCallGetMemoryBalance => {
                ("HvGetMemoryBalance", CallClass::Simple, false, 16, 0, 16, 0)
            }
            Self::HvCallCreateVp => (
                "HvCreateVp",
                CallClass::Simple,
                false,
                if current { 40 } else { 32 },
                0,
                0,
                0,
            ),
            Self::HvCallDeleteVp => ("HvDeleteVp", CallClass::Simple, true, 16, 0, 0, 0),
            // TLFS "HvCallGetVpRegisters": a 16-byte header, 4-byte register names in,
            // 16-byte HV_REGISTER_VALUEs out.
            Self::HvCallGetVpRegisters => ("HvGetVpRegisters", CallClass::Rep, false, 16, 4, 0, 16),
            // TLFS "HvCallSetVpRegisters": the same header, 32-byte {name, RsvdZ, value}.
            Self::HvCallSetVpRegisters => ("HvSetVpRegisters", CallClass::Rep, false, 16, 32, 0, 0),
            // TLFS "HvExtCallQueryCapabilities": no input, a u64 capability mask out.
            Self::HvExtCallQueryCapabilities => (
                "HvExtCallQueryCapabilities",
                CallClass::Simple,
                false,
                0,
                0,
                8,
                0,
            ),
            // Linux `struct hv_memory_hint`: an 8-byte header, then one 8-byte
            // `hv_gpa_page_range` per rep.
            Self::HvExtCallMemoryHeatHint => {
                ("HvExtCallMemoryHeatHint", CallClass::Rep, false, 8, 8, 0, 0)
            }
            _ => return None,
        };
        Some(CallInfo {
            code: self,
            name,
            class,
            fast_capable: fast,
            input_size: inp,
            input_element_size: inp_el,
            output_size: out,
            output_element_size: out_el,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------

macro_rules! hv_status {
    (
        #[doc = $success_doc:literal] SUCCESS = 0x0000,
        $($(#[doc = $doc:literal])+ $name:ident = $value:literal,)*
    ) => {
        /// An HV_STATUS value as it appears on the wire (bits 15:0 of the result value).
        ///
        /// Unknown values stay representable; [`HvStatus::name`] and
        /// [`HvStatus::description`] return `None` for them.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
        #[repr(transparent)]
        pub struct HvStatus(pub u16);

        impl HvStatus {
            #[doc = $success_doc]
            pub const SUCCESS: HvStatus = HvStatus(0);
            $(
                $(#[doc = $doc])+
                pub const $name: HvStatus = HvStatus($value);
            )*

            /// Every status code ballast knows, in numeric order.
            pub const ALL: &'static [HvStatus] = &[Self::SUCCESS, $(Self::$name),*];

            /// The TLFS name without the `HV_STATUS_` prefix.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    0 => Some("SUCCESS"),
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// What the code means, from the TLFS status tables.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    0 => Some($success_doc),
                    $($value => Some(concat!($($doc),+)),)*
                    _ => None,
                }
            }
        }

        impl HvError {
            $(
                $(#[doc = $doc])+
                pub const $name: HvError = HvError::from_const($value);
            )*
        }
    };
}

hv_status! {
    /// The operation succeeded.
    SUCCESS = 0x0000,
    /// The hypervisor does not support the operation because the call code is not recognised.
    INVALID_HYPERCALL_CODE = 0x0002,
    /// The control word is malformed: a rep count or rep start that does not fit the call, or a reserved bit set.
    INVALID_HYPERCALL_INPUT = 0x0003,
    /// A parameter GPA is not 8-byte aligned, a parameter list crosses a page, or a GPA lies outside the GPA space.
    INVALID_ALIGNMENT = 0x0004,
    /// An input parameter is invalid.
    INVALID_PARAMETER = 0x0005,
    /// The caller lacks the privilege, or is neither the parent nor the root addressing itself.
    ACCESS_DENIED = 0x0006,
    /// The partition is not in a state that permits the operation.
    INVALID_PARTITION_STATE = 0x0007,
    /// The operation is refused for a call-specific reason.
    OPERATION_DENIED = 0x0008,
    /// The partition property code is not recognised.
    UNKNOWN_PROPERTY = 0x0009,
    /// The property value is out of range or read-only.
    PROPERTY_VALUE_OUT_OF_RANGE = 0x000A,
    /// The memory pool holds too few pages: deposit and retry.
    INSUFFICIENT_MEMORY = 0x000B,
    /// The partition hierarchy would be too deep.
    PARTITION_TOO_DEEP = 0x000C,
    /// No partition has this identifier.
    INVALID_PARTITION_ID = 0x000D,
    /// The virtual processor index is out of range, in use or absent.
    INVALID_VP_INDEX = 0x000E,
    /// The requested object was not found.
    NOT_FOUND = 0x0010,
    /// The port identifier is invalid.
    INVALID_PORT_ID = 0x0011,
    /// The connection identifier is invalid.
    INVALID_CONNECTION_ID = 0x0012,
    /// The target port has no free message buffers.
    INSUFFICIENT_BUFFERS = 0x0013,
    /// An external interrupt has not been acknowledged.
    NOT_ACKNOWLEDGED = 0x0014,
    /// The virtual processor is not in a valid state for the operation.
    INVALID_VP_STATE = 0x0015,
    /// An external interrupt has been acknowledged.
    ACKNOWLEDGED = 0x0016,
    /// The save or restore state is invalid.
    INVALID_SAVE_RESTORE_STATE = 0x0017,
    /// The synthetic interrupt controller state is invalid.
    INVALID_SYNIC_STATE = 0x0018,
    /// The object or value is in use, or is used for another purpose.
    OBJECT_IN_USE = 0x0019,
    /// The proximity domain information has a bad flag or a bad domain identifier.
    INVALID_PROXIMITY_DOMAIN_INFO = 0x001A,
    /// No data is available.
    NO_DATA = 0x001B,
    /// The debugger connection is inactive.
    INACTIVE = 0x001C,
    /// A resource is unavailable or an implementation limit has been reached.
    NO_RESOURCES = 0x001D,
    /// The feature is unavailable.
    FEATURE_UNAVAILABLE = 0x001E,
    /// Only part of a debug packet was returned.
    PARTIAL_PACKET = 0x001F,
    /// A processor feature the partition requires is not supported.
    PROCESSOR_FEATURE_NOT_SUPPORTED = 0x0020,
    /// The processor's cache-line flush size is incompatible.
    PROCESSOR_CACHE_LINE_FLUSH_SIZE_INCOMPATIBLE = 0x0030,
    /// The buffer is too small.
    INSUFFICIENT_BUFFER = 0x0033,
    /// The processor is incompatible.
    INCOMPATIBLE_PROCESSOR = 0x0037,
    /// Too few device domains are available.
    INSUFFICIENT_DEVICE_DOMAINS = 0x0038,
    /// CPUID feature validation failed.
    CPUID_FEATURE_VALIDATION_ERROR = 0x003C,
    /// CPUID XSAVE feature validation failed.
    CPUID_XSAVE_FEATURE_VALIDATION_ERROR = 0x003D,
    /// A processor did not start in time.
    PROCESSOR_STARTUP_TIMEOUT = 0x003E,
    /// SMX is enabled.
    SMX_ENABLED = 0x003F,
    /// The logical processor index is invalid.
    INVALID_LP_INDEX = 0x0041,
    /// The register value is invalid.
    INVALID_REGISTER_VALUE = 0x0050,
    /// The VTL state is invalid.
    INVALID_VTL_STATE = 0x0051,
    /// NX is not detected.
    NX_NOT_DETECTED = 0x0055,
    /// The device identifier is invalid.
    INVALID_DEVICE_ID = 0x0057,
    /// The device state is invalid.
    INVALID_DEVICE_STATE = 0x0058,
    /// Page requests are pending.
    PENDING_PAGE_REQUESTS = 0x0059,
    /// The page request is invalid.
    PAGE_REQUEST_INVALID = 0x0060,
    /// The key already exists.
    KEY_ALREADY_EXISTS = 0x0065,
    /// The device is already in a domain.
    DEVICE_ALREADY_IN_DOMAIN = 0x0066,
    /// The CPU group identifier is invalid.
    INVALID_CPU_GROUP_ID = 0x006F,
    /// The CPU group state is invalid.
    INVALID_CPU_GROUP_STATE = 0x0070,
    /// The operation failed.
    OPERATION_FAILED = 0x0071,
    /// The operation is not allowed while nested virtualization is active.
    NOT_ALLOWED_WITH_NESTED_VIRT_ACTIVE = 0x0072,
    /// The root partition's own pool needs pages, although the call targets another partition.
    INSUFFICIENT_ROOT_MEMORY = 0x0073,
    /// The event buffer was already freed.
    EVENT_BUFFER_ALREADY_FREED = 0x0074,
    /// The pool needs physically contiguous pages.
    INSUFFICIENT_CONTIGUOUS_MEMORY = 0x0075,
    /// The operation timed out.
    TIME_OUT = 0x0078,
    /// The call completes asynchronously.
    CALL_PENDING = 0x0079,
    /// The root partition's pool needs physically contiguous pages.
    INSUFFICIENT_CONTIGUOUS_ROOT_MEMORY = 0x0083,
    /// The VTL is already enabled.
    VTL_ALREADY_ENABLED = 0x0086,
    /// The register name is unknown.
    UNKNOWN_REGISTER_NAME = 0x0087,
}

impl HvStatus {
    /// `Ok(())` for SUCCESS, the typed error otherwise.
    pub const fn result(self) -> HvResult<()> {
        match NonZeroU16::new(self.0) {
            None => Ok(()),
            Some(code) => Err(HvError(code)),
        }
    }

    /// True for SUCCESS.
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "HvStatus({:#06x})", self.0),
        }
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.description()) {
            (Some(name), Some(desc)) => write!(f, "HV_STATUS_{name} ({:#06x}): {desc}", self.0),
            _ => write!(f, "unknown HV_STATUS {:#06x}", self.0),
        }
    }
}

/// A failed hypercall: any HV_STATUS but SUCCESS.
///
/// Kept apart from the wire [`HvStatus`] so that `Result<T, HvError>` cannot carry a
/// "successful error"; the niche keeps `HvResult<()>` two bytes wide.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvError(NonZeroU16);

/// The result of a hypercall handler.
pub type HvResult<T> = Result<T, HvError>;

/// The result of a rep-call handler: on failure, the error and the absolute index of the
/// element that failed (= reps completed).
pub type HvRepResult = Result<(), (HvError, u16)>;

impl HvError {
    // Only evaluated in constants, so a zero would fail the build, not a caller.
    const fn from_const(code: u16) -> Self {
        match NonZeroU16::new(code) {
            Some(code) => HvError(code),
            None => panic!("HV_STATUS_SUCCESS is not an error"),
        }
    }

    /// The error for a non-zero wire status; `None` for SUCCESS.
    pub const fn new(status: HvStatus) -> Option<Self> {
        match NonZeroU16::new(status.0) {
            Some(code) => Some(HvError(code)),
            None => None,
        }
    }

    /// The wire status.
    pub const fn status(self) -> HvStatus {
        HvStatus(self.0.get())
    }
}

impl fmt::Debug for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.status(), f)
    }
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.status(), f)
    }
}

impl core::error::Error for HvError {}

impl From<HvError> for HvStatus {
    fn from(e: HvError) -> Self {
        e.status()
    }
}

// ---------------------------------------------------------------------------------------
// Control word and result value
// ---------------------------------------------------------------------------------------

/// The hypercall input value (RCX), current TLFS layout (the web TLFS,
/// `hypercall-interface.md`; Linux `hvgdk_mini.h` `HV_HYPERCALL_*`).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Control {
    /// Bits 15:0: the call code.
    pub code: u16,
    /// Bit 16: parameters are in registers rather than in memory.
    pub fast: bool,
    /// Bits 26:17: variable-header size in qwords.
    #[bits(10)]
    pub variable_header_size: u16,
    #[bits(4)]
    _rsvd_27_30: u8,
    /// Bit 31: handle in L0 (nested). ballast does not model nesting and rejects it.
    pub is_nested: bool,
    /// Bits 43:32: rep count.
    #[bits(12)]
    pub rep_count: u16,
    #[bits(4)]
    _rsvd_44_47: u8,
    /// Bits 59:48: rep start index.
    #[bits(12)]
    pub rep_start: u16,
    #[bits(4)]
    _rsvd_60_63: u8,
}

impl Control {
    /// The RsvdZ bits: 30:27, 47:44 and 63:60.
    pub const RESERVED_MASK: u64 = 0xF000_F000_7800_0000;
    /// The largest rep count the field holds.
    pub const MAX_REP_COUNT: u16 = 0x0FFF;

    /// The call code as a typed value.
    pub const fn call_code(&self) -> HypercallCode {
        HypercallCode(self.code())
    }

    /// A control word for `code` with `rep_count` elements starting at `rep_start`. Both
    /// are 12-bit fields: higher bits are dropped.
    pub const fn for_call(code: HypercallCode, rep_count: u16, rep_start: u16) -> Self {
        Self::new()
            .with_code(code.0)
            .with_rep_count(rep_count & Self::MAX_REP_COUNT)
            .with_rep_start(rep_start & Self::MAX_REP_COUNT)
    }
}

/// The hypercall result value (RAX; TLFS 2.0A §4.8, `HV_X64_HYPERCALL_OUTPUT`).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HypercallOutput {
    /// Bits 15:0: the status.
    pub call_status: u16,
    #[bits(16)]
    _rsvd_16_31: u16,
    /// Bits 43:32: reps completed, counted from element 0 (absolute), not from rep start.
    #[bits(12)]
    pub reps_completed: u16,
    #[bits(20)]
    _rsvd_44_63: u32,
}

impl HypercallOutput {
    /// A successful result that completed `reps` elements (a 12-bit field: higher bits
    /// are dropped; a rep count cannot exceed it).
    pub const fn success(reps: u16) -> Self {
        Self::new().with_reps_completed(reps & Control::MAX_REP_COUNT)
    }

    /// A failed result after `reps` completed elements (12 bits, as for
    /// [`success`](Self::success)).
    pub const fn error(error: HvError, reps: u16) -> Self {
        Self::new()
            .with_call_status(error.status().0)
            .with_reps_completed(reps & Control::MAX_REP_COUNT)
    }

    /// The status as a typed value.
    pub const fn status(&self) -> HvStatus {
        HvStatus(self.call_status())
    }
}

// ---------------------------------------------------------------------------------------
// Data types
// ---------------------------------------------------------------------------------------

/// `HV_PARTITION_ID_INVALID`.
pub const HV_PARTITION_ID_INVALID: u64 = 0;
/// `HV_PARTITION_ID_SELF`: the caller's own partition.
pub const HV_PARTITION_ID_SELF: u64 = u64::MAX;
/// `HV_VP_INDEX_SELF`.
pub const HV_VP_INDEX_SELF: u32 = 0xFFFF_FFFE;
/// `HV_ANY_VP`.
pub const HV_ANY_VP: u32 = 0xFFFF_FFFF;
/// One deposit call carries at most this many pages: one 4 KiB input page less the
/// 8-byte header (Linux `HV_DEPOSIT_MAX`, "published ABI").
pub const HV_DEPOSIT_MAX: u16 = 511;
/// One withdraw call returns at most this many pages: one 4 KiB output page.
pub const HV_WITHDRAW_BATCH_SIZE: u16 = 512;

/// Flags of [`HvProximityDomainInfo`] (TLFS 2.0A §7.2.1; Linux `hvhdk_mini.h`).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ProximityDomainFlags {
    /// Bit 0: allocate from the domain first, then fall back; clear means strictly there.
    pub proximity_preferred: bool,
    /// Bits 30:1: reserved, must be zero.
    #[bits(30)]
    pub reserved: u32,
    /// Bit 31: the domain id and `proximity_preferred` are meaningful.
    pub proximity_info_valid: bool,
}

/// `HV_PROXIMITY_DOMAIN_INFO`: the NUMA node a call should draw pages from.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvProximityDomainInfo {
    /// `HV_PROXIMITY_DOMAIN_ID`.
    pub id: u32,
    /// The flags.
    pub flags: ProximityDomainFlags,
}

/// What an [`HvProximityDomainInfo`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProximitySelection {
    /// `ProximityInfoValid` clear: any node will do.
    Any,
    /// This node only.
    Strict(u32),
    /// This node first, then any other.
    Preferred(u32),
}

impl HvProximityDomainInfo {
    /// "Any node": all zero, what Linux sends for `NUMA_NO_NODE`.
    pub const ANY: Self = Self {
        id: 0,
        flags: ProximityDomainFlags::new(),
    };

    /// A valid domain info naming `id`, strict or preferred.
    pub const fn node(id: u32, preferred: bool) -> Self {
        Self {
            id,
            flags: ProximityDomainFlags::new()
                .with_proximity_preferred(preferred)
                .with_proximity_info_valid(true),
        }
    }

    /// The same bits as a little-endian u64 (id in 31:0, preferred at 32, valid at 63).
    pub const fn to_u64(self) -> u64 {
        self.id as u64 | (self.flags.into_bits() as u64) << 32
    }

    /// The inverse of [`to_u64`](Self::to_u64).
    pub const fn from_u64(v: u64) -> Self {
        Self {
            id: v as u32,
            flags: ProximityDomainFlags::from_bits((v >> 32) as u32),
        }
    }

    /// Interprets the structure against a host with `node_count` proximity domains, whose
    /// ids are `0..node_count` (ballast numbers its nodes so; a host with sparse ACPI
    /// proximity ids maps them before calling).
    ///
    /// Reserved flag bits are an error whatever the valid bit says; a valid id at or
    /// beyond `node_count` is an error; with the valid bit clear the id and the preferred
    /// bit are ignored. The per-call tables answer both errors with INVALID_PARAMETER.
    pub const fn selection(self, node_count: u32) -> HvResult<ProximitySelection> {
        if self.flags.reserved() != 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        if !self.flags.proximity_info_valid() {
            return Ok(ProximitySelection::Any);
        }
        if self.id >= node_count {
            return Err(HvError::INVALID_PARAMETER);
        }
        Ok(if self.flags.proximity_preferred() {
            ProximitySelection::Preferred(self.id)
        } else {
            ProximitySelection::Strict(self.id)
        })
    }
}

/// `HV_PARTITION_PRIVILEGE_MASK` (TLFS 2.0A §5.2.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HvPartitionPrivilegeMask {
    /// Bit 0.
    pub access_vp_run_time_msr: bool,
    /// Bit 1.
    pub access_partition_reference_counter: bool,
    /// Bit 2.
    pub access_synic_msrs: bool,
    /// Bit 3.
    pub access_synthetic_timer_msrs: bool,
    /// Bit 4.
    pub access_apic_msrs: bool,
    /// Bit 5.
    pub access_hypercall_msrs: bool,
    /// Bit 6.
    pub access_vp_index: bool,
    /// Bit 7.
    pub access_reset_msr: bool,
    /// Bit 8.
    pub access_stats_msr: bool,
    /// Bit 9.
    pub access_partition_reference_tsc: bool,
    /// Bit 10.
    pub access_guest_idle_msr: bool,
    /// Bit 11.
    pub access_frequency_msrs: bool,
    /// Bit 12.
    pub access_debug_msrs: bool,
    /// Bit 13.
    pub access_reenlightenment_controls: bool,
    /// Bit 14.
    pub access_root_scheduler_msr: bool,
    /// Bit 15.
    pub access_tsc_invariant_controls: bool,
    #[bits(16)]
    _rsvd_16_31: u16,
    /// Bit 32: HvCreatePartition and every call restricted to operating on children.
    pub create_partitions: bool,
    /// Bit 33.
    pub access_partition_id: bool,
    /// Bit 34: HvDepositMemory, HvWithdrawMemory, HvGetMemoryBalance.
    pub access_memory_pool: bool,
    /// Bit 35.
    pub adjust_message_buffers: bool,
    /// Bit 36.
    pub post_messages: bool,
    /// Bit 37.
    pub signal_events: bool,
    /// Bit 38.
    pub create_port: bool,
    /// Bit 39.
    pub connect_port: bool,
    /// Bit 40.
    pub access_stats: bool,
    #[bits(2)]
    _rsvd_41_42: u8,
    /// Bit 43.
    pub debugging: bool,
    /// Bit 44.
    pub cpu_management: bool,
    /// Bit 45.
    pub configure_profiler: bool,
    /// Bit 46.
    pub access_vp_exit_tracing: bool,
    /// Bit 47.
    pub enable_extended_gva_ranges_flush_va_list: bool,
    /// Bit 48.
    pub access_vsm: bool,
    /// Bit 49.
    pub access_vp_registers: bool,
    #[bits(1)]
    _unused_50: u8,
    /// Bit 51.
    pub fast_hypercall_output: bool,
    /// Bit 52.
    pub enable_extended_hypercalls: bool,
    /// Bit 53.
    pub start_virtual_processor: bool,
    /// Bit 54.
    pub isolation: bool,
    #[bits(9)]
    _rsvd_55_63: u16,
}

impl HvPartitionPrivilegeMask {
    /// What the root holds: "the root partition has access to all capabilities" (every
    /// defined bit; Isolation is left clear, as Linux identifies a root by its absence).
    pub const ROOT: Self = Self::from_bits(0x003B_F9FF_0000_FFFF);
    /// A partition with no privileges.
    pub const NONE: Self = Self::new();
}

/// `HV_PARTITION_PROPERTY_CODE`, the properties ballast answers through
/// HvGetPartitionProperty.
#[open_enum::open_enum]
#[repr(u32)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub enum HvPartitionPropertyCode {
    /// The partition's privilege mask.
    PrivilegeFlags = 0x0001_0000,
    /// Pool pages reserved for the virtual TLB (the one pool property the TLFS defines).
    VirtualTlbPageCount = 0x0005_0000,
}

/// `HV_REGISTER_NAME`: the registers ballast serves through HvGetVpRegisters and
/// HvSetVpRegisters (values from the TLFS register tables, as Linux's `hvgdk_mini.h`
/// numbers them). Other names stay representable and are answered INVALID_PARAMETER.
#[open_enum::open_enum]
#[repr(u32)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub enum HvRegisterName {
    /// `HvRegisterExplicitSuspend`: bit 0 set while the parent holds the VP suspended;
    /// set by HvCreateVp, cleared by the parent to let the VP run.
    HvRegisterExplicitSuspend = 0x0000_0000,
    /// `HvRegisterInternalActivityState`: bit 0 StartupSuspend (waiting for a SIPI),
    /// bit 1 HaltSuspend, bit 2 IdleSuspend.
    HvRegisterInternalActivityState = 0x0000_0004,
    /// `HvX64RegisterInitialApicId`: the APIC ID CPUID reports, the VP index at creation;
    /// only the parent may change it.
    HvX64RegisterInitialApicId = 0x0008_000C,
}

/// `HV_REGISTER_VALUE`: 128 bits, little-endian, as two u64 halves so that the struct
/// keeps 8-byte alignment (a `u128` would need 16).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvRegisterValue {
    /// Bits 63:0 (`Reg64`, and `Reg32`/`Reg16`/`Reg8` in its low bytes).
    pub low: u64,
    /// Bits 127:64.
    pub high: u64,
}

impl HvRegisterValue {
    /// A 64-bit register value.
    pub const fn from_u64(v: u64) -> Self {
        HvRegisterValue { low: v, high: 0 }
    }
}

/// `HV_EXPLICIT_SUSPEND_REGISTER`.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct HvExplicitSuspendRegister {
    /// The VP is held suspended by its parent.
    pub suspended: bool,
    #[bits(63)]
    _rsvd: u64,
}

/// `HV_INTERNAL_ACTIVITY_REGISTER`.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct HvInternalActivityRegister {
    /// The VP waits for a startup IPI (an application processor after creation).
    pub startup_suspend: bool,
    /// The VP is halted.
    pub halt_suspend: bool,
    /// The VP is idle.
    pub idle_suspend: bool,
    #[bits(61)]
    _rsvd_z: u64,
}

/// `HV_INPUT_VTL`.
#[bitfield(u8)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HvInputVtl {
    /// The VTL addressed when `use_target_vtl` is set.
    #[bits(4)]
    pub target_vtl: u8,
    /// Address `target_vtl` rather than the caller's own VTL.
    pub use_target_vtl: bool,
    #[bits(3)]
    pub reserved_z: u8,
}

/// `HV_SUBNODE_TYPE` of the 40-byte HvCreateVp.
#[open_enum::open_enum]
#[repr(u8)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub enum HvSubnodeType {
    /// No subnode: SubnodeId is ignored.
    Any = 0,
    /// A socket.
    Socket = 1,
    /// A cluster.
    Cluster = 2,
    /// An L3 cache domain.
    L3 = 3,
}

// ---------------------------------------------------------------------------------------
// Input and output structs
// ---------------------------------------------------------------------------------------

macro_rules! assert_layout {
    ($t:ty, $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}

/// HvCreatePartition input, TLFS 2.0 form (16 bytes).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvCreatePartition {
    /// Creation flags.
    pub flags: u64,
    /// The partition's home node.
    pub proximity_domain_info: HvProximityDomainInfo,
}
assert_layout!(HvCreatePartition, 16, { flags @ 0, proximity_domain_info @ 8 });

/// HvCreatePartition input, current x64 form (56 bytes, Linux `hv_input_create_partition`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvCreatePartitionV2 {
    /// Creation flags.
    pub flags: u64,
    /// The partition's home node.
    pub proximity_domain_info: HvProximityDomainInfo,
    /// `HV_COMPATIBILITY_*`.
    pub compatibility_version: u32,
    /// Padding.
    pub padding: u32,
    /// Disabled processor feature banks.
    pub disabled_processor_features: [u64; 2],
    /// Disabled XSAVE features.
    pub disabled_processor_xsave_features: u64,
    /// Isolation properties (ReservedZ0 in older headers).
    pub isolation_properties: u64,
}
assert_layout!(HvCreatePartitionV2, 56, {
    flags @ 0, proximity_domain_info @ 8, compatibility_version @ 16, padding @ 20,
    disabled_processor_features @ 24, disabled_processor_xsave_features @ 40,
    isolation_properties @ 48,
});

/// HvCreatePartition output.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvCreatePartitionOutput {
    /// The new partition's id.
    pub partition_id: u64,
}
assert_layout!(HvCreatePartitionOutput, 8, { partition_id @ 0 });

/// The input of HvInitializePartition, HvFinalizePartition and HvDeletePartition.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvPartitionIdInput {
    /// The target partition.
    pub partition_id: u64,
}
assert_layout!(HvPartitionIdInput, 8, { partition_id @ 0 });

/// HvGetPartitionProperty input.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetPartitionProperty {
    /// The target partition.
    pub partition_id: u64,
    /// The property.
    pub property_code: HvPartitionPropertyCode,
    /// Padding.
    pub padding: u32,
}
assert_layout!(HvGetPartitionProperty, 16, { partition_id @ 0, property_code @ 8, padding @ 12 });

/// HvGetPartitionProperty output.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetPartitionPropertyOutput {
    /// The value.
    pub property_value: u64,
}
assert_layout!(HvGetPartitionPropertyOutput, 8, { property_value @ 0 });

/// HvGetNextChildPartition input.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetNextChildPartition {
    /// Whose children to walk.
    pub parent_id: u64,
    /// The child returned last time, or `HV_PARTITION_ID_INVALID` to start.
    pub previous_child_id: u64,
}
assert_layout!(HvGetNextChildPartition, 16, { parent_id @ 0, previous_child_id @ 8 });

/// HvGetNextChildPartition output.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetNextChildPartitionOutput {
    /// The next child, or `HV_PARTITION_ID_INVALID` at the end.
    pub next_child_id: u64,
}
assert_layout!(HvGetNextChildPartitionOutput, 8, { next_child_id @ 0 });

/// HvDepositMemory input header; followed by `rep_count` GPA page numbers (u64 each).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvDepositMemory {
    /// The partition whose pool receives the pages.
    pub partition_id: u64,
}
assert_layout!(HvDepositMemory, 8, { partition_id @ 0 });

/// HvWithdrawMemory input (the TLFS, HvWithdrawMemory); the output list is `rep_count` GPA page numbers.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvWithdrawMemory {
    /// The partition whose pool gives up pages.
    pub partition_id: u64,
    /// Which node to take them from.
    pub proximity_domain_info: HvProximityDomainInfo,
}
assert_layout!(HvWithdrawMemory, 16, { partition_id @ 0, proximity_domain_info @ 8 });

/// HvGetMemoryBalance input (the TLFS, HvGetMemoryBalance).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetMemoryBalance {
    /// The partition whose pool is queried.
    pub partition_id: u64,
    /// Which node; "any" gives totals across nodes.
    pub proximity_domain_info: HvProximityDomainInfo,
}
assert_layout!(HvGetMemoryBalance, 16, { partition_id @ 0, proximity_domain_info @ 8 });

/// HvGetMemoryBalance output (the TLFS, HvGetMemoryBalance).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetMemoryBalanceOutput {
    /// Pages in the pool and free.
    pub pages_available: u64,
    /// Pages in the pool that the hypervisor uses.
    pub pages_in_use: u64,
}
assert_layout!(HvGetMemoryBalanceOutput, 16, { pages_available @ 0, pages_in_use @ 8 });

/// HvCreateVp input, the TLFS 2.0 32-byte form (the TLFS, HvCreateVp).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvCreateVp {
    /// The partition that gets the VP.
    pub partition_id: u64,
    /// `HV_VP_INDEX`.
    pub vp_index: u32,
    /// Padding.
    pub padding: u32,
    /// Where the VP's structures live.
    pub proximity_domain_info: HvProximityDomainInfo,
    /// Reserved, must be zero.
    pub flags: u64,
}
assert_layout!(HvCreateVp, 32, {
    partition_id @ 0, vp_index @ 8, padding @ 12, proximity_domain_info @ 16, flags @ 24,
});

/// HvCreateVp input, the current 40-byte form (Linux `struct hv_create_vp`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvCreateVpV2 {
    /// The partition that gets the VP.
    pub partition_id: u64,
    /// `HV_VP_INDEX`.
    pub vp_index: u32,
    /// Reserved, must be zero.
    pub reserved_z0: [u8; 3],
    /// `HV_SUBNODE_TYPE`.
    pub subnode_type: HvSubnodeType,
    /// Subnode id; meaningless (and left stale by Linux) while the type is Any.
    pub subnode_id: u64,
    /// Where the VP's structures live.
    pub proximity_domain_info: HvProximityDomainInfo,
    /// Flags; Linux passes the LP index here for root VPs only.
    pub flags: u64,
}
assert_layout!(HvCreateVpV2, 40, {
    partition_id @ 0, vp_index @ 8, reserved_z0 @ 12, subnode_type @ 15, subnode_id @ 16,
    proximity_domain_info @ 24, flags @ 32,
});

/// HvDeleteVp input.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvDeleteVp {
    /// The partition that owns the VP.
    pub partition_id: u64,
    /// `HV_VP_INDEX`.
    pub vp_index: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(HvDeleteVp, 16, { partition_id @ 0, vp_index @ 8, padding @ 12 });

/// The input header of HvGetVpRegisters and HvSetVpRegisters (TLFS
/// "HvCallGetVpRegisters"); followed by the rep list.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvGetSetVpRegisters {
    /// The partition that owns the VP (or `HV_PARTITION_ID_SELF`).
    pub partition_id: u64,
    /// `HV_VP_INDEX`.
    pub vp_index: u32,
    /// Which VTL's registers.
    pub input_vtl: HvInputVtl,
    /// RsvdZ.
    pub rsvd: [u8; 3],
}
assert_layout!(HvGetSetVpRegisters, 16, { partition_id @ 0, vp_index @ 8, input_vtl @ 12, rsvd @ 13 });

/// One HvSetVpRegisters input element (TLFS "HvCallSetVpRegisters").
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct HvRegisterAssoc {
    /// The register.
    pub name: HvRegisterName,
    /// RsvdZ.
    pub rsvd: [u32; 3],
    /// Its new value.
    pub value: HvRegisterValue,
}
assert_layout!(HvRegisterAssoc, 32, { name @ 0, rsvd @ 4, value @ 16 });
assert_layout!(HvRegisterValue, 16, { low @ 0, high @ 8 });
assert_layout!(HvRegisterName, 4, {});

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// HvCreatePartition input in whichever layout the host decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatePartitionInput {
    /// The 16-byte form.
    Tlfs2(HvCreatePartition),
    /// The 56-byte form.
    Current(HvCreatePartitionV2),
}

impl CreatePartitionInput {
    /// The creation flags.
    pub const fn flags(&self) -> u64 {
        match self {
            Self::Tlfs2(i) => i.flags,
            Self::Current(i) => i.flags,
        }
    }

    /// The home node.
    pub const fn proximity_domain_info(&self) -> HvProximityDomainInfo {
        match self {
            Self::Tlfs2(i) => i.proximity_domain_info,
            Self::Current(i) => i.proximity_domain_info,
        }
    }
}

/// HvCreateVp input in whichever layout the host decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateVpInput {
    /// The 32-byte form.
    Tlfs2(HvCreateVp),
    /// The 40-byte form.
    Current(HvCreateVpV2),
}

impl CreateVpInput {
    /// The target partition.
    pub const fn partition_id(&self) -> u64 {
        match self {
            Self::Tlfs2(i) => i.partition_id,
            Self::Current(i) => i.partition_id,
        }
    }

    /// The VP index.
    pub const fn vp_index(&self) -> u32 {
        match self {
            Self::Tlfs2(i) => i.vp_index,
            Self::Current(i) => i.vp_index,
        }
    }

    /// The node for the VP's structures.
    pub const fn proximity_domain_info(&self) -> HvProximityDomainInfo {
        match self {
            Self::Tlfs2(i) => i.proximity_domain_info,
            Self::Current(i) => i.proximity_domain_info,
        }
    }

    /// The flags word.
    pub const fn flags(&self) -> u64 {
        match self {
            Self::Tlfs2(i) => i.flags,
            Self::Current(i) => i.flags,
        }
    }

    /// True if any reserved byte is non-zero (padding in the 32-byte form, ReservedZ0 in
    /// the 40-byte form). SubnodeId is not reserved: it is ignored while the subnode type
    /// is Any, because Linux leaves stale bytes there.
    pub const fn reserved_nonzero(&self) -> bool {
        match self {
            Self::Tlfs2(i) => i.padding != 0,
            Self::Current(i) => {
                i.reserved_z0[0] != 0 || i.reserved_z0[1] != 0 || i.reserved_z0[2] != 0
            }
        }
    }

    /// The subnode type; Any in the 32-byte form.
    pub const fn subnode_type(&self) -> HvSubnodeType {
        match self {
            Self::Tlfs2(_) => HvSubnodeType::Any,
            Self::Current(i) => i.subnode_type,
        }
    }
}

/// The GPA page numbers of an HvDepositMemory input list, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaPageList<'a> {
    bytes: &'a [u8],
}

impl<'a> GpaPageList<'a> {
    /// A list over `bytes`, which must hold a whole number of 8-byte elements.
    pub const fn new(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() % 8 == 0 {
            Some(Self { bytes })
        } else {
            None
        }
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.bytes.len() / 8
    }

    /// True if the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Element `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<u64> {
        let start = i.checked_mul(8)?;
        let chunk = self.bytes.get(start..start.checked_add(8)?)?;
        Some(u64::from_le_bytes(chunk.try_into().ok()?))
    }

    /// The elements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }
}

/// A rep input list of fixed-size elements, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementList<'a, T> {
    bytes: &'a [u8],
    _element: core::marker::PhantomData<T>,
}

impl<'a, T: FromBytes> ElementList<'a, T> {
    /// A list over `bytes`, which must hold a whole number of elements.
    pub const fn new(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() % core::mem::size_of::<T>() == 0 {
            Some(Self {
                bytes,
                _element: core::marker::PhantomData,
            })
        } else {
            None
        }
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.bytes.len() / core::mem::size_of::<T>()
    }

    /// True if the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The elements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + 'a {
        self.bytes
            .chunks_exact(core::mem::size_of::<T>())
            // Each chunk is exactly one element, so the read cannot fail.
            .map(|c| T::read_from_bytes(c).unwrap_or_else(|_| T::new_zeroed()))
    }
}

// ---------------------------------------------------------------------------------------
// Extended hypercalls: capabilities and the memory heat hint
// ---------------------------------------------------------------------------------------

/// The HvExtCallQueryCapabilities output: which extended hypercalls the host offers.
///
/// Bits 0-4 are the TLFS table ("HvExtCallQueryCapabilities"); bit 8 is the cold discard
/// hint, the bit Linux tests before it registers free page reporting
/// (`HV_EXT_CAPABILITY_MEMORY_COLD_DISCARD_HINT`, `include/hyperv/hvgdk_ext.h`).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HvExtCapabilities {
    /// Bit 0: HvExtCallGetBootZeroedMemory.
    pub get_boot_zeroed_memory: bool,
    /// Bit 1: HvExtCallMemoryHeatHint.
    pub memory_heat_hint: bool,
    /// Bit 2: HvExtCallEpfSetup.
    pub epf_setup: bool,
    /// Bit 3: HvExtCallSchedulerAssistSetup.
    pub scheduler_assist_setup: bool,
    /// Bit 4: HvExtCallMemoryHeatHintAsync.
    pub memory_heat_hint_async: bool,
    #[bits(3)]
    _rsvd_5_7: u8,
    /// Bit 8: the heat hint takes the cold discard type.
    pub memory_cold_discard_hint: bool,
    #[bits(55)]
    _rsvd_9_63: u64,
}

/// `HV_EXT_MEMORY_HEAT_HINT_TYPE` (Linux `include/hyperv/hvgdk_ext.h`).
#[open_enum::open_enum]
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HvMemoryHeatHintType {
    /// The guest will not use the pages soon.
    COLD = 0,
    /// The guest will use the pages soon.
    HOT = 1,
    /// The pages are free: their contents may be dropped.
    COLD_DISCARD = 2,
}

/// The HvExtCallMemoryHeatHint input header (Linux `struct hv_memory_hint`, its first
/// u64): a 2-bit hint type and 62 reserved bits.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HvMemoryHeatHint {
    /// Bits 1:0: the [`HvMemoryHeatHintType`].
    #[bits(2)]
    pub heat_type: u8,
    /// Bits 63:2, reserved.
    #[bits(62)]
    pub reserved: u64,
}

impl HvMemoryHeatHint {
    /// The hint type as a typed value.
    pub const fn hint_type(&self) -> HvMemoryHeatHintType {
        HvMemoryHeatHintType(self.heat_type())
    }
}

/// The most ranges one heat hint carries: what fits in the input page after the header
/// (Linux `HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES`).
pub const HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES: u16 = ((crate::PAGE_SIZE - 8) / 8) as u16;

/// Pages in one 2 MiB large page.
const LARGE_PAGE_PAGES: u64 = 512;

/// `HV_GPA_PAGE_RANGE` (Linux `union hv_gpa_page_range`): a run of guest pages in one
/// u64, in one of two forms chosen by bit 11.
///
/// - small (bit 11 clear): `additional_pages` bits 10:0, `base_pfn` bits 63:12, in 4 KiB
///   pages: 1 to 2048 pages from `base_pfn`;
/// - large (bit 11 set): `additional_pages` bits 10:0, the page size at bit 12 (0 = 2 MiB,
///   1 = 1 GiB), bits 20:13 reserved, the base in large pages at bits 63:21: 1 to 2048
///   large pages. Linux writes this form for every block of order 9 and up.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct HvGpaPageRange {
    /// Bits 10:0: pages (small form) or large pages (large form) after the first.
    #[bits(11)]
    pub additional_pages: u16,
    /// Bit 11: the large form.
    pub large_page: bool,
    /// Bits 63:12 of the small form: the first page number. In the large form bit 12 is
    /// the page size and bits 63:21 the first large page.
    #[bits(52)]
    pub base_pfn: u64,
}

/// Why an [`HvGpaPageRange`] names no run of pages ballast serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpaPageRangeError {
    /// The large form with the 1 GiB page size: Linux never writes it, and the TLFS does
    /// not say which unit its base counts in.
    GiantPages,
    /// Reserved bits 20:13 of the large form are set.
    Reserved,
}

impl HvGpaPageRange {
    /// The small form: `count` (1 to 2048) pages from `base_pfn`; `None` if either does
    /// not fit its field.
    pub const fn small(base_pfn: u64, count: u64) -> Option<Self> {
        if count == 0 || count > 2048 || base_pfn >= 1 << 52 {
            return None;
        }
        Some(
            Self::new()
                .with_additional_pages((count - 1) as u16)
                .with_base_pfn(base_pfn),
        )
    }

    /// The large form in 2 MiB pages, as Linux writes it: `count` (1 to 2048) 2 MiB
    /// pages from the 2 MiB page `base_large_pfn` (a page number shifted right by 9);
    /// `None` if either does not fit its field.
    pub const fn large_2m(base_large_pfn: u64, count: u64) -> Option<Self> {
        if count == 0 || count > 2048 || base_large_pfn >= 1 << 43 {
            return None;
        }
        Some(Self::from_bits(
            (count - 1) | 1 << 11 | base_large_pfn << 21,
        ))
    }

    /// Bit 12 of the large form: 1 GiB pages.
    pub const fn giant(&self) -> bool {
        self.into_bits() >> 12 & 1 != 0
    }

    /// The run as `(first page, pages)` in 4 KiB pages. The count is at most 2048 x 512,
    /// and the end does not wrap: the first page is below 2^52.
    pub const fn pages(&self) -> Result<(u64, u64), GpaPageRangeError> {
        let n = self.additional_pages() as u64 + 1;
        if !self.large_page() {
            return Ok((self.base_pfn(), n));
        }
        let bits = self.into_bits();
        if self.giant() {
            return Err(GpaPageRangeError::GiantPages);
        }
        if bits >> 13 & 0xFF != 0 {
            return Err(GpaPageRangeError::Reserved);
        }
        Ok(((bits >> 21) * LARGE_PAGE_PAGES, n * LARGE_PAGE_PAGES))
    }
}

/// A decoded hypercall: which call, and its input read into typed structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvCall<'a> {
    /// HvCreatePartition.
    CreatePartition(CreatePartitionInput),
    /// HvInitializePartition.
    InitializePartition(HvPartitionIdInput),
    /// HvFinalizePartition.
    FinalizePartition(HvPartitionIdInput),
    /// HvDeletePartition.
    DeletePartition(HvPartitionIdInput),
    /// HvGetPartitionProperty.
    GetPartitionProperty(HvGetPartitionProperty),
    /// HvGetNextChildPartition.
    GetNextChildPartition(HvGetNextChildPartition),
    /// HvDepositMemory: the header and the whole page list (elements `0..rep_count`;
    /// processing starts at the control word's rep start).
    DepositMemory(HvDepositMemory, GpaPageList<'a>),
    /// HvWithdrawMemory.
    WithdrawMemory(HvWithdrawMemory),
    /// HvGetMemoryBalance.
    GetMemoryBalance(HvGetMemoryBalance),
    /// HvCreateVp.
    CreateVp(CreateVpInput),
    /// HvDeleteVp.
    DeleteVp(HvDeleteVp),
    /// HvGetVpRegisters: the header and the whole name list (from element 0).
    GetVpRegisters(HvGetSetVpRegisters, ElementList<'a, HvRegisterName>),
    /// HvSetVpRegisters: the header and the whole {name, value} list (from element 0).
    SetVpRegisters(HvGetSetVpRegisters, ElementList<'a, HvRegisterAssoc>),
    /// HvExtCallQueryCapabilities (no input).
    QueryCapabilities,
    /// HvExtCallMemoryHeatHint: the header and the whole range list (from element 0).
    MemoryHeatHint(HvMemoryHeatHint, ElementList<'a, HvGpaPageRange>),
}

/// A hypercall that passed the generic checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The control word.
    pub control: Control,
    /// The call's static shape.
    pub info: CallInfo,
    /// The typed input.
    pub call: HvCall<'a>,
}

/// Host settings that change how inputs decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// Which layout generation HvCreatePartition and HvCreateVp use.
    pub layout: InputLayout,
    /// The host advertises XMM fast input (CPUID 0x40000003 EDX bit 4): fast calls may
    /// carry up to 112 bytes instead of 16.
    pub xmm_fast_input: bool,
}

/// Bytes of input a fast call carries in RDX:R8.
pub const FAST_INPUT_MAX: usize = 16;
/// Bytes of input a fast call carries with XMM fast input (RDX, R8, XMM0-XMM5).
pub const XMM_FAST_INPUT_MAX: usize = 112;

/// The generic checks G1-G4 (ballast's order, described in the module documentation), in that order, on a raw control word.
///
/// Returns the call's shape. G1 unknown code → INVALID_HYPERCALL_CODE; G2 reserved or
/// nested bits → INVALID_HYPERCALL_INPUT; G3 a simple call with rep fields, a rep call
/// with no reps or a start at or past the count, or a variable header on these fixed-size
/// calls → INVALID_HYPERCALL_INPUT; G4 a fast call whose input does not fit the
/// registers, or that has output → INVALID_HYPERCALL_INPUT.
pub fn check_control(raw: u64, options: DecodeOptions) -> HvResult<(Control, CallInfo)> {
    let control = Control::from_bits(raw);
    let info = control
        .call_code()
        .info(options.layout)
        .ok_or(HvError::INVALID_HYPERCALL_CODE)?;
    if raw & Control::RESERVED_MASK != 0 || control.is_nested() {
        return Err(HvError::INVALID_HYPERCALL_INPUT);
    }
    let class_ok = match info.class {
        CallClass::Simple => control.rep_count() == 0 && control.rep_start() == 0,
        CallClass::Rep => control.rep_count() != 0 && control.rep_start() < control.rep_count(),
    };
    if !class_ok || control.variable_header_size() != 0 {
        return Err(HvError::INVALID_HYPERCALL_INPUT);
    }
    if control.fast() {
        let limit = if options.xmm_fast_input {
            XMM_FAST_INPUT_MAX
        } else {
            FAST_INPUT_MAX
        };
        if info.output_len(control.rep_count()) != 0 || info.input_len(control.rep_count()) > limit
        {
            return Err(HvError::INVALID_HYPERCALL_INPUT);
        }
    }
    Ok((control, info))
}

/// G5: a parameter list of `len` bytes at guest physical address `gpa` must be 8-byte
/// aligned and must not cross a page boundary (INVALID_ALIGNMENT, as the TLFS says for
/// both; OpenVMM answers a straddle with INVALID_HYPERCALL_INPUT).
pub const fn check_param_gpa(gpa: u64, len: usize) -> HvResult<()> {
    if len == 0 {
        return Ok(());
    }
    let offset = (gpa & (crate::PAGE_SIZE as u64 - 1)) as usize;
    if gpa % 8 != 0 || len > crate::PAGE_SIZE - offset {
        return Err(HvError::INVALID_ALIGNMENT);
    }
    Ok(())
}

fn read<T: FromBytes>(input: &[u8]) -> HvResult<T> {
    T::read_from_prefix(input)
        .map(|(v, _)| v)
        .map_err(|_| HvError::INVALID_HYPERCALL_INPUT)
}

/// Runs G1-G4 on `control` and reads the call's input from `input`.
///
/// `input` is the input parameter block: the bytes at the input GPA (memory form), or the
/// register contents (fast form). It must hold at least the call's input length
/// ([`CallInfo::input_len`]); fewer bytes is an input the caller could not supply, answered
/// with INVALID_HYPERCALL_INPUT, as OpenVMM and KVM answer a failed guest read. Extra
/// bytes are ignored.
pub fn decode(control: u64, input: &[u8], options: DecodeOptions) -> HvResult<Decoded<'_>> {
    let (control, info) = check_control(control, options)?;
    let needed = info.input_len(control.rep_count());
    let input = input
        .get(..needed)
        .ok_or(HvError::INVALID_HYPERCALL_INPUT)?;
    let current = matches!(options.layout, InputLayout::Current);
    let call = match info.code {
        HypercallCode::HvCallCreatePartition => HvCall::CreatePartition(if current {
            CreatePartitionInput::Current(read(input)?)
        } else {
            CreatePartitionInput::Tlfs2(read(input)?)
        }),
        HypercallCode::HvCallInitializePartition => HvCall::InitializePartition(read(input)?),
        HypercallCode::HvCallFinalizePartition => HvCall::FinalizePartition(read(input)?),
        HypercallCode::HvCallDeletePartition => HvCall::DeletePartition(read(input)?),
        HypercallCode::HvCallGetPartitionProperty => HvCall::GetPartitionProperty(read(input)?),
        HypercallCode::HvCallGetNextChildPartition => HvCall::GetNextChildPartition(read(input)?),
        HypercallCode::HvCallDepositMemory => {
            let list = input
                .get(info.input_size..)
                .and_then(GpaPageList::new)
                .ok_or(HvError::INVALID_HYPERCALL_INPUT)?;
            HvCall::DepositMemory(read(input)?, list)
        }
        HypercallCode::HvCallWithdrawMemory => HvCall::WithdrawMemory(read(input)?),
        HypercallCode::HvCallGetMemoryBalance => HvCall::GetMemoryBalance(read(input)?),
        HypercallCode::HvCallCreateVp => HvCall::CreateVp(if current {
            CreateVpInput::Current(read(input)?)
        } else {
            CreateVpInput::Tlfs2(read(input)?)
        }),
        HypercallCode::HvCallDeleteVp => HvCall::DeleteVp(read(input)?),
        HypercallCode::HvCallGetVpRegisters => {
            let list = input
                .get(info.input_size..)
                .and_then(ElementList::new)
                .ok_or(HvError::INVALID_HYPERCALL_INPUT)?;
            HvCall::GetVpRegisters(read(input)?, list)
        }
        HypercallCode::HvCallSetVpRegisters => {
            let list = input
                .get(info.input_size..)
                .and_then(ElementList::new)
                .ok_or(HvError::INVALID_HYPERCALL_INPUT)?;
            HvCall::SetVpRegisters(read(input)?, list)
        }
        HypercallCode::HvExtCallQueryCapabilities => HvCall::QueryCapabilities,
        HypercallCode::HvExtCallMemoryHeatHint => {
            let list = input
                .get(info.input_size..)
                .and_then(ElementList::new)
                .ok_or(HvError::INVALID_HYPERCALL_INPUT)?;
            HvCall::MemoryHeatHint(read(input)?, list)
        }
        // `info` only exists for the codes above.
        _ => return Err(HvError::INVALID_HYPERCALL_CODE),
    };
    Ok(Decoded {
        control,
        info,
        call,
    })
}

#[cfg(test)]
mod tests;
