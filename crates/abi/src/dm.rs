//! Hyper-V Dynamic Memory protocol messages.
//!
//! Follows the Dynamic Memory protocol header QEMU carries,
//! `include/hw/hyperv/dynmem-proto.h` (taken from Linux `drivers/hv/hv_balloon.c`), and
//! the behaviour of both (Linux 6.1, QEMU `hw/hyperv/hv-balloon.c`). Every struct there is `QEMU_PACKED` and little-endian
//! with LSB-first bitfields; the [`wire`] structs reproduce them byte for byte (alignment 1,
//! so they can be read in place from a ring), and [`Message`] is the typed form the
//! protocol endpoints use.
//!
//! Decoding is lenient where the real peers are lenient and strict where a lie could cost
//! memory: reserved bits and `trans_id` are not checked (neither QEMU nor Linux checks
//! them), but `hdr.size` must cover the message's fixed part and every range its count
//! claims, and must not run past the bytes received. The info message's `info_size` is
//! ignored, as Linux ignores it. Encoding refuses anything beyond one 4 KiB receive buffer
//! ([`MAX_MESSAGE_SIZE`]); decoding accepts what `hdr.size` can say, and leaves the limit
//! to the transport.
//!
//! Two layouts that look alike and are not: in [`wire::DmBalloonResponse`] the word at
//! +12 holds `more_pages` in bit 0 and `range_count` in bits 31:1, while
//! [`wire::DmUnballoonRequest`] keeps `more_pages` at +8 and a full 32-bit `range_count`
//! at +12.

use core::fmt;

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A message type (`enum dm_message_type`).
#[open_enum::open_enum]
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `DM_ERROR`: defined, but with no payload; nobody sends it.
    ERROR = 0,
    /// `DM_VERSION_REQUEST`, guest to host.
    VERSION_REQUEST = 1,
    /// `DM_VERSION_RESPONSE`, host to guest.
    VERSION_RESPONSE = 2,
    /// `DM_CAPABILITIES_REPORT`, guest to host.
    CAPABILITIES_REPORT = 3,
    /// `DM_CAPABILITIES_RESPONSE`, host to guest.
    CAPABILITIES_RESPONSE = 4,
    /// `DM_STATUS_REPORT`, guest to host, never answered.
    STATUS_REPORT = 5,
    /// `DM_BALLOON_REQUEST`, host to guest.
    BALLOON_REQUEST = 6,
    /// `DM_BALLOON_RESPONSE`, guest to host.
    BALLOON_RESPONSE = 7,
    /// `DM_UNBALLOON_REQUEST`, host to guest.
    UNBALLOON_REQUEST = 8,
    /// `DM_UNBALLOON_RESPONSE`, guest to host.
    UNBALLOON_RESPONSE = 9,
    /// `DM_MEM_HOT_ADD_REQUEST`, host to guest.
    MEM_HOT_ADD_REQUEST = 10,
    /// `DM_MEM_HOT_ADD_RESPONSE`, guest to host.
    MEM_HOT_ADD_RESPONSE = 11,
    /// `DM_INFO_MESSAGE`, host to guest (1.0+).
    INFO_MESSAGE = 12,
    /// `DM_MEM_HOT_REMOVE_REQUEST`, host to guest (2.0).
    MEM_HOT_REMOVE_REQUEST = 13,
    /// `DM_MEM_HOT_REMOVE_RESPONSE`, guest to host (2.0).
    MEM_HOT_REMOVE_RESPONSE = 14,
}

impl MessageType {
    /// `DM_VERSION_03_MAX`: the last type of protocol 0.3.
    pub const VERSION_03_MAX: MessageType = MessageType(11);
    /// `DM_VERSION_1_MAX`: the last type of protocol 1.0.
    pub const VERSION_1_MAX: MessageType = MessageType(12);

    /// The C name, e.g. `DM_BALLOON_RESPONSE`.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::ERROR => "DM_ERROR",
            Self::VERSION_REQUEST => "DM_VERSION_REQUEST",
            Self::VERSION_RESPONSE => "DM_VERSION_RESPONSE",
            Self::CAPABILITIES_REPORT => "DM_CAPABILITIES_REPORT",
            Self::CAPABILITIES_RESPONSE => "DM_CAPABILITIES_RESPONSE",
            Self::STATUS_REPORT => "DM_STATUS_REPORT",
            Self::BALLOON_REQUEST => "DM_BALLOON_REQUEST",
            Self::BALLOON_RESPONSE => "DM_BALLOON_RESPONSE",
            Self::UNBALLOON_REQUEST => "DM_UNBALLOON_REQUEST",
            Self::UNBALLOON_RESPONSE => "DM_UNBALLOON_RESPONSE",
            Self::MEM_HOT_ADD_REQUEST => "DM_MEM_HOT_ADD_REQUEST",
            Self::MEM_HOT_ADD_RESPONSE => "DM_MEM_HOT_ADD_RESPONSE",
            Self::INFO_MESSAGE => "DM_INFO_MESSAGE",
            Self::MEM_HOT_REMOVE_REQUEST => "DM_MEM_HOT_REMOVE_REQUEST",
            Self::MEM_HOT_REMOVE_RESPONSE => "DM_MEM_HOT_REMOVE_RESPONSE",
            _ => return None,
        })
    }

    /// The bytes of the message before any range array or info blob, header included.
    pub const fn fixed_size(self) -> Option<usize> {
        Some(match self {
            Self::ERROR | Self::UNBALLOON_RESPONSE => 8,
            Self::VERSION_REQUEST
            | Self::VERSION_RESPONSE
            | Self::CAPABILITIES_RESPONSE
            | Self::BALLOON_REQUEST
            | Self::BALLOON_RESPONSE
            | Self::UNBALLOON_REQUEST
            | Self::MEM_HOT_ADD_REQUEST
            | Self::MEM_HOT_ADD_RESPONSE
            | Self::INFO_MESSAGE => 16,
            Self::MEM_HOT_REMOVE_REQUEST | Self::MEM_HOT_REMOVE_RESPONSE => 24,
            Self::CAPABILITIES_REPORT => 32,
            Self::STATUS_REPORT => 48,
            _ => return None,
        })
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "DM message type {}", self.0),
        }
    }
}

/// A protocol version (`union dm_version`): major in the high 16 bits, minor in the low.
#[repr(transparent)]
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Version(pub u32);

impl Version {
    /// `DYNMEM_PROTOCOL_VERSION_1` (0.3, Windows 7).
    pub const V0_3: Version = Version::new(0, 3);
    /// `DYNMEM_PROTOCOL_VERSION_2` (1.0, Windows 8).
    pub const V1_0: Version = Version::new(1, 0);
    /// `DYNMEM_PROTOCOL_VERSION_3` (2.0, Windows 10), `DYNMEM_PROTOCOL_VERSION_CURRENT`.
    pub const V2_0: Version = Version::new(2, 0);

    /// `DYNMEM_MAKE_VERSION(major, minor)`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Version((major as u32) << 16 | minor as u32)
    }

    /// The major version.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// `DYNMEM_MINOR_VERSION(version)`: the low 8 bits, as the header's macro masks
    /// (`& 0xff`). Bits 15:8 belong to no field; they stay in the wire value, which is
    /// what is compared and sent (Linux's `hv_balloon.c` uses the macros only to print
    /// the version), so no version in use reads differently.
    pub const fn minor(self) -> u16 {
        (self.0 & 0xff) as u16
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())?;
        // Bits the macros drop are shown raw, so two different versions never print alike.
        if self.0 & 0xff00 != 0 {
            write!(f, " ({:#010x})", self.0)?;
        }
        Ok(())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `union dm_caps`: what the guest can do.
#[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Caps {
    /// Bit 0: the guest can balloon.
    pub balloon: bool,
    /// Bit 1: the guest can hot-add memory.
    pub hot_add: bool,
    /// Bits 5:2: hot-add alignment: n means 2^n MiB.
    #[bits(4)]
    pub hot_add_alignment: u8,
    /// Bit 6: the guest can hot-remove memory (2.0).
    pub hot_remove: bool,
    /// Bits 63:7: reserved, zero.
    #[bits(57)]
    pub reservedz: u64,
}

impl Caps {
    /// From the wire value.
    pub const fn from_u64(v: u64) -> Self {
        Self::from_bits(U64::new(v))
    }

    /// The wire value.
    pub const fn to_u64(self) -> u64 {
        self.into_bits().get()
    }

    /// The hot-add alignment in 4 KiB pages (2^n MiB = 256 << n pages).
    pub const fn hot_add_alignment_pages(&self) -> u64 {
        256 << self.hot_add_alignment()
    }
}

/// `union dm_mem_page_range`: a run of guest pages.
#[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PageRange {
    /// Bits 39:0: the first guest PFN (4 KiB units).
    #[bits(40)]
    pub start_page: u64,
    /// Bits 63:40: the number of pages.
    #[bits(24)]
    pub page_cnt: u32,
}

impl PageRange {
    /// From the wire value.
    pub const fn from_u64(v: u64) -> Self {
        Self::from_bits(U64::new(v))
    }

    /// The wire value.
    pub const fn to_u64(self) -> u64 {
        self.into_bits().get()
    }

    /// The largest start PFN the 40-bit field holds.
    pub const MAX_START_PAGE: u64 = (1 << 40) - 1;
    /// The largest page count the 24-bit field holds.
    pub const MAX_PAGE_CNT: u32 = (1 << 24) - 1;

    /// A range, or `None` if either value does not fit its field.
    pub const fn try_new(start_page: u64, page_cnt: u32) -> Option<Self> {
        if start_page > Self::MAX_START_PAGE || page_cnt > Self::MAX_PAGE_CNT {
            return None;
        }
        Some(
            Self::new()
                .with_start_page(start_page)
                .with_page_cnt(page_cnt),
        )
    }

    /// One past the last page (cannot overflow: 40 + 24 bits fit in 64).
    pub const fn end_page(&self) -> u64 {
        self.start_page() + self.page_cnt() as u64
    }
}

/// Checks every range of a message a guest sent (a balloon or hot-remove response) against
/// guest memory `[0, end_page)`: each must be non-empty and end at or below `end_page`.
/// Returns the pages the ranges name in total, or the index of the first bad range.
///
/// The whole message is checked in one branch-free pass (a message is accepted or refused
/// whole, so nothing is gained by stopping early, and the loop vectorises); only a refused
/// message is walked again to name its first bad range. This is the check an embedder with
/// its own state machine makes before trusting a message; ballast's VSP does more (it
/// accepts page by page against what the guest owns and what is already ballooned).
pub fn check_ranges(ranges: &[PageRange], end_page: u64) -> Result<u64, usize> {
    let (mut pages, mut bad) = (0u64, false);
    for r in ranges {
        let cnt = u64::from(r.page_cnt());
        // `end_page()` cannot overflow (40 + 24 bits), nor can the total of at most
        // 2^24 - 1 pages per range over any slice that fits in memory.
        bad |= (cnt == 0) | (r.end_page() > end_page);
        pages += cnt;
    }
    if !bad {
        return Ok(pages);
    }
    Err(ranges
        .iter()
        .position(|r| r.page_cnt() == 0 || r.end_page() > end_page)
        .unwrap_or(0))
}

/// The information type of a [`Body::Info`] message (`enum dm_info_type`).
#[open_enum::open_enum]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InfoType {
    /// `INFO_TYPE_MAX_PAGE_CNT`: the configured maximum memory, as a u64 page count.
    MAX_PAGE_CNT = 0,
}

/// `DM_REMOVE_QOS_LARGE`.
pub const DM_REMOVE_QOS_LARGE: u32 = 1 << 0;
/// `DM_REMOVE_QOS_LOCAL`.
pub const DM_REMOVE_QOS_LOCAL: u32 = 1 << 1;
/// `DM_REMOVE_QOS_MASK`.
pub const DM_REMOVE_QOS_MASK: u32 = 0x3;

/// The largest message one 4 KiB receive buffer holds (Linux's `recv_buffer`).
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// Ranges per 4 KiB balloon response or unballoon request: (4096 - 16) / 8.
pub const MAX_RANGES_PER_MESSAGE: usize = (MAX_MESSAGE_SIZE - 16) / 8;
/// Ranges per 4 KiB hot-remove response: (4096 - 24) / 8.
pub const MAX_HOT_REMOVE_RANGES_PER_MESSAGE: usize = (MAX_MESSAGE_SIZE - 24) / 8;
/// The largest balloon request a host should send: Windows guests stop honouring larger
/// ones (QEMU's cap and its comment, `hw/hyperv/hv-balloon.c`).
pub const MAX_BALLOON_REQUEST_PAGES: u32 = 585_728;
/// The largest `hdr.size` (a u16); [`Message::parse`] accepts up to this, while
/// [`Message::write`] keeps to [`MAX_MESSAGE_SIZE`].
pub const MAX_ENCODED_SIZE: usize = u16::MAX as usize;

pub mod wire {
    //! The protocol header's structs, byte for byte.
    //!
    //! Each is `#[repr(C)]` over alignment-1 little-endian fields, which is what
    //! `QEMU_PACKED` produces; sizes and offsets are asserted at compile time and against
    //! the C compiler in `tests/c_conformance_dm.rs`.

    use super::*;

    macro_rules! assert_layout {
        ($t:ty, $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
            const _: () = assert!(core::mem::size_of::<$t>() == $size);
            const _: () = assert!(core::mem::align_of::<$t>() == 1);
            $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
        };
    }

    macro_rules! wire_struct {
        ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
            $(#[$m])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
            pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        };
    }

    wire_struct! {
        /// `struct dm_header`.
        pub struct DmHeader {
            /// Message type.
            pub ty: U16,
            /// Bytes of the whole message, header included.
            pub size: U16,
            /// Transaction id.
            pub trans_id: U32,
        }
    }
    assert_layout!(DmHeader, 8, { ty @ 0, size @ 2, trans_id @ 4 });

    /// The bitfield word of `struct dm_version_request`.
    #[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct VersionRequestFlags {
        /// Bit 0: the guest will not try another version.
        pub is_last_attempt: bool,
        /// Bits 31:1.
        #[bits(31)]
        pub reservedz: u32,
    }

    wire_struct! {
        /// `struct dm_version_request` (16 bytes).
        pub struct DmVersionRequest {
            /// Header.
            pub hdr: DmHeader,
            /// `union dm_version`.
            pub version: U32,
            /// is_last_attempt and reserved bits.
            pub flags: VersionRequestFlags,
        }
    }
    assert_layout!(DmVersionRequest, 16, { hdr @ 0, version @ 8, flags @ 12 });

    /// A u64 whose bit 0 is `is_accepted` (version response).
    #[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct AcceptFlags {
        /// Bit 0.
        pub is_accepted: bool,
        /// Bits 63:1.
        #[bits(63)]
        pub reservedz: u64,
    }

    wire_struct! {
        /// `struct dm_version_response` (16 bytes).
        pub struct DmVersionResponse {
            /// Header.
            pub hdr: DmHeader,
            /// is_accepted.
            pub flags: AcceptFlags,
        }
    }
    assert_layout!(DmVersionResponse, 16, { hdr @ 0, flags @ 8 });

    wire_struct! {
        /// `struct dm_capabilities` (32 bytes).
        pub struct DmCapabilities {
            /// Header.
            pub hdr: DmHeader,
            /// `union dm_caps`.
            pub caps: Caps,
            /// Ignored by hosts; Linux sends 0.
            pub min_page_cnt: U64,
            /// Ignored by hosts; Linux sends u64::MAX.
            pub max_page_number: U64,
        }
    }
    assert_layout!(DmCapabilities, 32, { hdr @ 0, caps @ 8, min_page_cnt @ 16, max_page_number @ 24 });

    /// The bitfield word of `struct dm_capabilities_resp_msg`.
    #[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct CapsResponseFlags {
        /// Bit 0.
        pub is_accepted: bool,
        /// Bit 1 (2.0 header only).
        pub hot_remove: bool,
        /// Bit 2 (2.0 header only).
        pub suppress_pressure_reports: bool,
        /// Bits 63:3.
        #[bits(61)]
        pub reservedz: u64,
    }

    wire_struct! {
        /// `struct dm_capabilities_resp_msg` (16 bytes).
        pub struct DmCapabilitiesResp {
            /// Header.
            pub hdr: DmHeader,
            /// Flags.
            pub flags: CapsResponseFlags,
        }
    }
    assert_layout!(DmCapabilitiesResp, 16, { hdr @ 0, flags @ 8 });

    wire_struct! {
        /// `struct dm_status` (48 bytes).
        pub struct DmStatus {
            /// Header.
            pub hdr: DmHeader,
            /// Available memory, pages.
            pub num_avail: U64,
            /// Committed memory, pages: the only value the host's pressure uses.
            pub num_committed: U64,
            /// Page file size, pages.
            pub page_file_size: U64,
            /// Zero and free pages.
            pub zero_free: U64,
            /// Page file writes, pages.
            pub page_file_writes: U32,
            /// File cache efficiency indicator, pages.
            pub io_diff: U32,
        }
    }
    assert_layout!(DmStatus, 48, {
        hdr @ 0, num_avail @ 8, num_committed @ 16, page_file_size @ 24, zero_free @ 32,
        page_file_writes @ 40, io_diff @ 44,
    });

    wire_struct! {
        /// `struct dm_balloon` (16 bytes).
        pub struct DmBalloon {
            /// Header.
            pub hdr: DmHeader,
            /// Pages the host asks for.
            pub num_pages: U32,
            /// Reserved.
            pub reservedz: U32,
        }
    }
    assert_layout!(DmBalloon, 16, { hdr @ 0, num_pages @ 8, reservedz @ 12 });

    /// The word at +12 of `struct dm_balloon_response`: `more_pages` is bit 0 and
    /// `range_count` bits 31:1.
    #[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct BalloonResponseFlags {
        /// Bit 0: more messages of this transaction follow.
        pub more_pages: bool,
        /// Bits 31:1: ranges in this message.
        #[bits(31)]
        pub range_count: u32,
    }

    wire_struct! {
        /// `struct dm_balloon_response` without its range array (16 bytes).
        pub struct DmBalloonResponse {
            /// Header.
            pub hdr: DmHeader,
            /// Reserved.
            pub reservedz: U32,
            /// more_pages and range_count.
            pub flags: BalloonResponseFlags,
        }
    }
    assert_layout!(DmBalloonResponse, 16, { hdr @ 0, reservedz @ 8, flags @ 12 });

    /// The word at +8 of `struct dm_unballoon_request`.
    #[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct UnballoonRequestFlags {
        /// Bit 0: more messages of this transaction follow.
        pub more_pages: bool,
        /// Bits 31:1.
        #[bits(31)]
        pub reservedz: u32,
    }

    wire_struct! {
        /// `struct dm_unballoon_request` without its range array (16 bytes).
        pub struct DmUnballoonRequest {
            /// Header.
            pub hdr: DmHeader,
            /// more_pages.
            pub flags: UnballoonRequestFlags,
            /// Ranges in this message (all 32 bits).
            pub range_count: U32,
        }
    }
    assert_layout!(DmUnballoonRequest, 16, { hdr @ 0, flags @ 8, range_count @ 12 });

    wire_struct! {
        /// `struct dm_unballoon_response` (8 bytes).
        pub struct DmUnballoonResponse {
            /// Header.
            pub hdr: DmHeader,
        }
    }
    assert_layout!(DmUnballoonResponse, 8, { hdr @ 0 });

    wire_struct! {
        /// `struct dm_hot_add` (16 bytes).
        pub struct DmHotAdd {
            /// Header.
            pub hdr: DmHeader,
            /// The pages to add.
            pub range: PageRange,
        }
    }
    assert_layout!(DmHotAdd, 16, { hdr @ 0, range @ 8 });

    wire_struct! {
        /// The 24-byte hot-add request with the region the range lies in (QEMU's
        /// `dm_hot_add_with_region`).
        pub struct DmHotAddWithRegion {
            /// Header.
            pub hdr: DmHeader,
            /// The pages to add.
            pub range: PageRange,
            /// The region the guest should create for them.
            pub region: PageRange,
        }
    }
    assert_layout!(DmHotAddWithRegion, 24, { hdr @ 0, range @ 8, region @ 16 });

    wire_struct! {
        /// `struct dm_hot_add_response` (16 bytes).
        pub struct DmHotAddResponse {
            /// Header.
            pub hdr: DmHeader,
            /// Pages added.
            pub page_count: U32,
            /// 1 success, 0 failure.
            pub result: U32,
        }
    }
    assert_layout!(DmHotAddResponse, 16, { hdr @ 0, page_count @ 8, result @ 12 });

    wire_struct! {
        /// `struct dm_hot_remove` (24 bytes).
        pub struct DmHotRemove {
            /// Header.
            pub hdr: DmHeader,
            /// The guest NUMA node.
            pub virtual_node: U32,
            /// Pages to remove.
            pub page_count: U32,
            /// `DM_REMOVE_QOS_*`.
            pub qos_flags: U32,
            /// Reserved.
            pub reserved_z: U32,
        }
    }
    assert_layout!(DmHotRemove, 24, {
        hdr @ 0, virtual_node @ 8, page_count @ 12, qos_flags @ 16, reserved_z @ 20,
    });

    /// The u64 at +16 of `struct dm_hot_remove_response`.
    #[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
    #[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
    pub struct HotRemoveResponseFlags {
        /// Bit 0: more messages of this transaction follow.
        pub more_pages: bool,
        /// Bits 63:1.
        #[bits(63)]
        pub reservedz: u64,
    }

    wire_struct! {
        /// `struct dm_hot_remove_response` without its range array (24 bytes).
        pub struct DmHotRemoveResponse {
            /// Header.
            pub hdr: DmHeader,
            /// Result.
            pub result: U32,
            /// Ranges in this message.
            pub range_count: U32,
            /// more_pages.
            pub flags: HotRemoveResponseFlags,
        }
    }
    assert_layout!(DmHotRemoveResponse, 24, { hdr @ 0, result @ 8, range_count @ 12, flags @ 16 });

    wire_struct! {
        /// `struct dm_info_header` (8 bytes), at the start of the info blob.
        pub struct DmInfoHeader {
            /// `enum dm_info_type` (4 bytes, as GCC lays out the C enum).
            pub ty: U32,
            /// Bytes of data after this header.
            pub data_size: U32,
        }
    }
    assert_layout!(DmInfoHeader, 8, { ty @ 0, data_size @ 4 });

    wire_struct! {
        /// `struct dm_info_msg` without its blob (16 bytes).
        pub struct DmInfoMsg {
            /// Header.
            pub hdr: DmHeader,
            /// Unused.
            pub reserved: U32,
            /// Bytes of the info blob.
            pub info_size: U32,
        }
    }
    assert_layout!(DmInfoMsg, 16, { hdr @ 0, reserved @ 8, info_size @ 12 });
}

use wire::*;

/// A status (pressure) report's values, all in 4 KiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusReport {
    /// Available memory.
    pub num_avail: u64,
    /// Committed memory.
    pub num_committed: u64,
    /// Page file size.
    pub page_file_size: u64,
    /// Zero and free pages.
    pub zero_free: u64,
    /// Page file writes.
    pub page_file_writes: u32,
    /// File cache indicator.
    pub io_diff: u32,
}

/// What a message says, by type. Ranges and info data are borrowed from the bytes parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body<'a> {
    /// `DM_ERROR`.
    Error,
    /// `DM_VERSION_REQUEST`.
    VersionRequest {
        /// The version the guest proposes.
        version: Version,
        /// The guest will not try another.
        is_last_attempt: bool,
    },
    /// `DM_VERSION_RESPONSE`.
    VersionResponse {
        /// The host accepts the version.
        is_accepted: bool,
    },
    /// `DM_CAPABILITIES_REPORT`.
    CapabilitiesReport {
        /// The guest's capabilities.
        caps: Caps,
        /// Ignored by hosts.
        min_page_cnt: u64,
        /// Ignored by hosts.
        max_page_number: u64,
    },
    /// `DM_CAPABILITIES_RESPONSE`.
    CapabilitiesResponse {
        /// The host accepts the capabilities.
        is_accepted: bool,
        /// The host may hot-remove (2.0).
        hot_remove: bool,
        /// The host asks the guest not to send status reports (2.0).
        suppress_pressure_reports: bool,
    },
    /// `DM_STATUS_REPORT`.
    StatusReport(StatusReport),
    /// `DM_BALLOON_REQUEST`.
    BalloonRequest {
        /// Pages the host asks for.
        num_pages: u32,
    },
    /// `DM_BALLOON_RESPONSE`.
    BalloonResponse {
        /// More messages of this transaction follow.
        more_pages: bool,
        /// Pages given to the host.
        ranges: &'a [PageRange],
    },
    /// `DM_UNBALLOON_REQUEST`.
    UnballoonRequest {
        /// More messages of this transaction follow.
        more_pages: bool,
        /// Pages given back to the guest.
        ranges: &'a [PageRange],
    },
    /// `DM_UNBALLOON_RESPONSE`.
    UnballoonResponse,
    /// `DM_MEM_HOT_ADD_REQUEST`.
    HotAddRequest {
        /// The pages to add.
        range: PageRange,
        /// The region to create for them; `None` is the 16-byte form, where the guest
        /// derives the region itself.
        region: Option<PageRange>,
    },
    /// `DM_MEM_HOT_ADD_RESPONSE`.
    HotAddResponse {
        /// Pages added.
        page_count: u32,
        /// 1 success, 0 failure (hosts treat any non-zero as success).
        result: u32,
    },
    /// `DM_INFO_MESSAGE`.
    Info {
        /// What the data is.
        info_type: InfoType,
        /// `data_size` bytes of data.
        data: &'a [u8],
    },
    /// `DM_MEM_HOT_REMOVE_REQUEST`.
    HotRemoveRequest {
        /// The guest NUMA node.
        virtual_node: u32,
        /// Pages to remove.
        page_count: u32,
        /// `DM_REMOVE_QOS_*`.
        qos_flags: u32,
    },
    /// `DM_MEM_HOT_REMOVE_RESPONSE`.
    HotRemoveResponse {
        /// Result (0 appears to mean success; unverified against Hyper-V).
        result: u32,
        /// More messages of this transaction follow.
        more_pages: bool,
        /// The pages removed.
        ranges: &'a [PageRange],
    },
}

/// A Dynamic Memory message: the header's transaction id and the typed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message<'a> {
    /// `hdr.trans_id`.
    pub trans_id: u32,
    /// The message.
    pub body: Body<'a>,
}

/// Why bytes are not a Dynamic Memory message. Each variant names the message and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a `dm_header`.
    #[error("{len} bytes are too few for the 8-byte dm_header")]
    ShortHeader {
        /// Bytes given.
        len: usize,
    },
    /// `hdr.type` is not a protocol message type.
    #[error("unknown DM message type {ty}")]
    UnknownType {
        /// The type.
        ty: u16,
    },
    /// `hdr.size` runs past the bytes received.
    #[error("{ty}: hdr.size {size} exceeds the {available} bytes received")]
    SizeBeyondBuffer {
        /// Message type.
        ty: MessageType,
        /// `hdr.size`.
        size: u16,
        /// Bytes given.
        available: usize,
    },
    /// `hdr.size` is below the message's fixed part.
    #[error("{ty}: hdr.size {size} is below the message's fixed size of {needed} bytes")]
    TooShort {
        /// Message type.
        ty: MessageType,
        /// `hdr.size`.
        size: u16,
        /// The fixed size.
        needed: usize,
    },
    /// `range_count` claims more ranges than `hdr.size` holds.
    #[error("{ty}: range_count {range_count} needs {needed} bytes but hdr.size is {size}")]
    RangeCount {
        /// Message type.
        ty: MessageType,
        /// `range_count`.
        range_count: u32,
        /// `hdr.size`.
        size: u16,
        /// Bytes the count needs.
        needed: u64,
    },
    /// A hot-add request of a size that is neither form.
    #[error(
        "DM_MEM_HOT_ADD_REQUEST: hdr.size {size} is neither 16 (range) nor 24 or more (range and region)"
    )]
    HotAddSize {
        /// `hdr.size`.
        size: u16,
    },
    /// `hdr.size` leaves no room for a `dm_info_header` after the fixed part.
    #[error(
        "DM_INFO_MESSAGE: hdr.size {size} leaves no room for a dm_info_header (info_size says {info_size})"
    )]
    InfoSize {
        /// `info_size`.
        info_size: u32,
        /// `hdr.size`.
        size: u16,
    },
    /// `data_size` runs past the message.
    #[error(
        "DM_INFO_MESSAGE: data_size {data_size} exceeds the {available} bytes after the dm_info_header"
    )]
    InfoDataSize {
        /// `data_size`.
        data_size: u32,
        /// Bytes of the message after the info header.
        available: usize,
    },
}

/// Why a message cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small.
    #[error("{ty}: needs {needed} bytes, the buffer has {available}")]
    BufferTooSmall {
        /// Message type.
        ty: MessageType,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The message would not fit the peer's 4 KiB receive buffer ([`MAX_MESSAGE_SIZE`]):
    /// Linux reads every message into one page, and a longer packet stalls its ring.
    #[error("{ty}: {size} bytes exceed the {MAX_MESSAGE_SIZE}-byte receive buffer")]
    TooLarge {
        /// Message type.
        ty: MessageType,
        /// The size it would have.
        size: usize,
    },
}

fn ranges_in(
    ty: MessageType,
    msg: &[u8],
    fixed: usize,
    count: u32,
) -> Result<&[PageRange], DecodeError> {
    let size = msg.len() as u16;
    let needed = fixed as u64 + 8 * count as u64;
    let err = DecodeError::RangeCount {
        ty,
        range_count: count,
        size,
        needed,
    };
    let end = usize::try_from(needed).map_err(|_| err)?;
    let bytes = msg.get(fixed..end).ok_or(err)?;
    <[PageRange]>::ref_from_bytes(bytes).map_err(|_| err)
}

fn read<T: FromBytes + KnownLayout + Immutable + Unaligned>(msg: &[u8]) -> &T {
    // `parse` checked `msg.len() >= fixed_size(ty)`, which is `size_of::<T>()` for every T
    // read here, and the types are alignment 1.
    match T::ref_from_prefix(msg) {
        Ok((v, _)) => v,
        Err(_) => unreachable!("length checked against the fixed size"),
    }
}

impl<'a> Message<'a> {
    /// A message.
    pub const fn new(trans_id: u32, body: Body<'a>) -> Self {
        Self { trans_id, body }
    }

    /// Decodes one message from `bytes` (a VMBus in-band payload, padding included).
    ///
    /// The message is the first `hdr.size` bytes; anything after it is ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (hdr, _) = DmHeader::ref_from_prefix(bytes)
            .map_err(|_| DecodeError::ShortHeader { len: bytes.len() })?;
        let ty = MessageType(hdr.ty.get());
        let fixed = ty
            .fixed_size()
            .ok_or(DecodeError::UnknownType { ty: ty.0 })?;
        let size = hdr.size.get();
        let msg = bytes
            .get(..size as usize)
            .ok_or(DecodeError::SizeBeyondBuffer {
                ty,
                size,
                available: bytes.len(),
            })?;
        if msg.len() < fixed {
            return Err(DecodeError::TooShort {
                ty,
                size,
                needed: fixed,
            });
        }
        let body = match ty {
            MessageType::ERROR => Body::Error,
            MessageType::VERSION_REQUEST => {
                let m: &DmVersionRequest = read(msg);
                Body::VersionRequest {
                    version: Version(m.version.get()),
                    is_last_attempt: m.flags.is_last_attempt(),
                }
            }
            MessageType::VERSION_RESPONSE => Body::VersionResponse {
                is_accepted: read::<DmVersionResponse>(msg).flags.is_accepted(),
            },
            MessageType::CAPABILITIES_REPORT => {
                let m: &DmCapabilities = read(msg);
                Body::CapabilitiesReport {
                    caps: m.caps,
                    min_page_cnt: m.min_page_cnt.get(),
                    max_page_number: m.max_page_number.get(),
                }
            }
            MessageType::CAPABILITIES_RESPONSE => {
                let f = read::<DmCapabilitiesResp>(msg).flags;
                Body::CapabilitiesResponse {
                    is_accepted: f.is_accepted(),
                    hot_remove: f.hot_remove(),
                    suppress_pressure_reports: f.suppress_pressure_reports(),
                }
            }
            MessageType::STATUS_REPORT => {
                let m: &DmStatus = read(msg);
                Body::StatusReport(StatusReport {
                    num_avail: m.num_avail.get(),
                    num_committed: m.num_committed.get(),
                    page_file_size: m.page_file_size.get(),
                    zero_free: m.zero_free.get(),
                    page_file_writes: m.page_file_writes.get(),
                    io_diff: m.io_diff.get(),
                })
            }
            MessageType::BALLOON_REQUEST => Body::BalloonRequest {
                num_pages: read::<DmBalloon>(msg).num_pages.get(),
            },
            MessageType::BALLOON_RESPONSE => {
                let f = read::<DmBalloonResponse>(msg).flags;
                Body::BalloonResponse {
                    more_pages: f.more_pages(),
                    ranges: ranges_in(ty, msg, fixed, f.range_count())?,
                }
            }
            MessageType::UNBALLOON_REQUEST => {
                let m: &DmUnballoonRequest = read(msg);
                Body::UnballoonRequest {
                    more_pages: m.flags.more_pages(),
                    ranges: ranges_in(ty, msg, fixed, m.range_count.get())?,
                }
            }
            MessageType::UNBALLOON_RESPONSE => Body::UnballoonResponse,
            MessageType::MEM_HOT_ADD_REQUEST => {
                // Linux tells the two forms apart by `hdr.size == 16` alone.
                let range = read::<DmHotAdd>(msg).range;
                let region = if msg.len() == 16 {
                    None
                } else if msg.len() >= 24 {
                    Some(read::<DmHotAddWithRegion>(msg).region)
                } else {
                    return Err(DecodeError::HotAddSize { size });
                };
                Body::HotAddRequest { range, region }
            }
            MessageType::MEM_HOT_ADD_RESPONSE => {
                let m: &DmHotAddResponse = read(msg);
                Body::HotAddResponse {
                    page_count: m.page_count.get(),
                    result: m.result.get(),
                }
            }
            MessageType::INFO_MESSAGE => {
                // Linux reads the dm_info_header right after the 16-byte fixed part and
                // never looks at info_size, so neither does this decoder: the blob is the
                // rest of the message, bounded by hdr.size.
                let info_size = read::<DmInfoMsg>(msg).info_size.get();
                let (ih, rest) = DmInfoHeader::ref_from_prefix(&msg[fixed..])
                    .map_err(|_| DecodeError::InfoSize { info_size, size })?;
                let data_size = ih.data_size.get();
                let data = usize::try_from(data_size)
                    .ok()
                    .and_then(|n| rest.get(..n))
                    .ok_or(DecodeError::InfoDataSize {
                        data_size,
                        available: rest.len(),
                    })?;
                Body::Info {
                    info_type: InfoType(ih.ty.get()),
                    data,
                }
            }
            MessageType::MEM_HOT_REMOVE_REQUEST => {
                let m: &DmHotRemove = read(msg);
                Body::HotRemoveRequest {
                    virtual_node: m.virtual_node.get(),
                    page_count: m.page_count.get(),
                    qos_flags: m.qos_flags.get(),
                }
            }
            MessageType::MEM_HOT_REMOVE_RESPONSE => {
                let m: &DmHotRemoveResponse = read(msg);
                Body::HotRemoveResponse {
                    result: m.result.get(),
                    more_pages: m.flags.more_pages(),
                    ranges: ranges_in(ty, msg, fixed, m.range_count.get())?,
                }
            }
            _ => return Err(DecodeError::UnknownType { ty: ty.0 }),
        };
        Ok(Message {
            trans_id: hdr.trans_id.get(),
            body,
        })
    }

    /// The message type of the body.
    pub const fn message_type(&self) -> MessageType {
        match self.body {
            Body::Error => MessageType::ERROR,
            Body::VersionRequest { .. } => MessageType::VERSION_REQUEST,
            Body::VersionResponse { .. } => MessageType::VERSION_RESPONSE,
            Body::CapabilitiesReport { .. } => MessageType::CAPABILITIES_REPORT,
            Body::CapabilitiesResponse { .. } => MessageType::CAPABILITIES_RESPONSE,
            Body::StatusReport(_) => MessageType::STATUS_REPORT,
            Body::BalloonRequest { .. } => MessageType::BALLOON_REQUEST,
            Body::BalloonResponse { .. } => MessageType::BALLOON_RESPONSE,
            Body::UnballoonRequest { .. } => MessageType::UNBALLOON_REQUEST,
            Body::UnballoonResponse => MessageType::UNBALLOON_RESPONSE,
            Body::HotAddRequest { .. } => MessageType::MEM_HOT_ADD_REQUEST,
            Body::HotAddResponse { .. } => MessageType::MEM_HOT_ADD_RESPONSE,
            Body::Info { .. } => MessageType::INFO_MESSAGE,
            Body::HotRemoveRequest { .. } => MessageType::MEM_HOT_REMOVE_REQUEST,
            Body::HotRemoveResponse { .. } => MessageType::MEM_HOT_REMOVE_RESPONSE,
        }
    }

    /// The bytes [`write`](Self::write) produces (may exceed [`MAX_MESSAGE_SIZE`], in
    /// which case `write` refuses).
    pub const fn encoded_len(&self) -> usize {
        let fixed = match self.message_type().fixed_size() {
            Some(n) => n,
            None => 0,
        };
        fixed
            + match self.body {
                Body::BalloonResponse { ranges, .. }
                | Body::UnballoonRequest { ranges, .. }
                | Body::HotRemoveResponse { ranges, .. } => 8 * ranges.len(),
                Body::HotAddRequest {
                    region: Some(_), ..
                } => 8,
                Body::Info { data, .. } => 8 + data.len(),
                _ => 0,
            }
    }

    /// Encodes the message into the front of `buf`; returns the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let ty = self.message_type();
        let len = self.encoded_len();
        if len > MAX_MESSAGE_SIZE {
            return Err(EncodeError::TooLarge { ty, size: len });
        }
        let available = buf.len();
        let out = buf.get_mut(..len).ok_or(EncodeError::BufferTooSmall {
            ty,
            needed: len,
            available,
        })?;
        let hdr = DmHeader {
            ty: U16::new(ty.0),
            size: U16::new(len as u16),
            trans_id: U32::new(self.trans_id),
        };
        // Ranges are at most (4096 - 16) / 8, so their count fits every count field.
        let put_ranges = |out: &mut [u8], at: usize, ranges: &[PageRange]| {
            out[at..].copy_from_slice(ranges.as_bytes());
        };
        match self.body {
            Body::Error | Body::UnballoonResponse => {
                out.copy_from_slice(DmUnballoonResponse { hdr }.as_bytes())
            }
            Body::VersionRequest {
                version,
                is_last_attempt,
            } => out.copy_from_slice(
                DmVersionRequest {
                    hdr,
                    version: U32::new(version.0),
                    flags: VersionRequestFlags::new().with_is_last_attempt(is_last_attempt),
                }
                .as_bytes(),
            ),
            Body::VersionResponse { is_accepted } => out.copy_from_slice(
                DmVersionResponse {
                    hdr,
                    flags: AcceptFlags::new().with_is_accepted(is_accepted),
                }
                .as_bytes(),
            ),
            Body::CapabilitiesReport {
                caps,
                min_page_cnt,
                max_page_number,
            } => out.copy_from_slice(
                DmCapabilities {
                    hdr,
                    caps,
                    min_page_cnt: U64::new(min_page_cnt),
                    max_page_number: U64::new(max_page_number),
                }
                .as_bytes(),
            ),
            Body::CapabilitiesResponse {
                is_accepted,
                hot_remove,
                suppress_pressure_reports,
            } => out.copy_from_slice(
                DmCapabilitiesResp {
                    hdr,
                    flags: CapsResponseFlags::new()
                        .with_is_accepted(is_accepted)
                        .with_hot_remove(hot_remove)
                        .with_suppress_pressure_reports(suppress_pressure_reports),
                }
                .as_bytes(),
            ),
            Body::StatusReport(s) => out.copy_from_slice(
                DmStatus {
                    hdr,
                    num_avail: U64::new(s.num_avail),
                    num_committed: U64::new(s.num_committed),
                    page_file_size: U64::new(s.page_file_size),
                    zero_free: U64::new(s.zero_free),
                    page_file_writes: U32::new(s.page_file_writes),
                    io_diff: U32::new(s.io_diff),
                }
                .as_bytes(),
            ),
            Body::BalloonRequest { num_pages } => out.copy_from_slice(
                DmBalloon {
                    hdr,
                    num_pages: U32::new(num_pages),
                    reservedz: U32::ZERO,
                }
                .as_bytes(),
            ),
            Body::BalloonResponse { more_pages, ranges } => {
                out[..16].copy_from_slice(
                    DmBalloonResponse {
                        hdr,
                        reservedz: U32::ZERO,
                        flags: BalloonResponseFlags::new()
                            .with_more_pages(more_pages)
                            .with_range_count(ranges.len() as u32),
                    }
                    .as_bytes(),
                );
                put_ranges(out, 16, ranges);
            }
            Body::UnballoonRequest { more_pages, ranges } => {
                out[..16].copy_from_slice(
                    DmUnballoonRequest {
                        hdr,
                        flags: UnballoonRequestFlags::new().with_more_pages(more_pages),
                        range_count: U32::new(ranges.len() as u32),
                    }
                    .as_bytes(),
                );
                put_ranges(out, 16, ranges);
            }
            Body::HotAddRequest { range, region } => match region {
                None => out.copy_from_slice(DmHotAdd { hdr, range }.as_bytes()),
                Some(region) => {
                    out.copy_from_slice(DmHotAddWithRegion { hdr, range, region }.as_bytes())
                }
            },
            Body::HotAddResponse { page_count, result } => out.copy_from_slice(
                DmHotAddResponse {
                    hdr,
                    page_count: U32::new(page_count),
                    result: U32::new(result),
                }
                .as_bytes(),
            ),
            Body::Info { info_type, data } => {
                // `len` <= 4096 was checked, so both sizes fit in a u32.
                out[..16].copy_from_slice(
                    DmInfoMsg {
                        hdr,
                        reserved: U32::ZERO,
                        info_size: U32::new((8 + data.len()) as u32),
                    }
                    .as_bytes(),
                );
                out[16..24].copy_from_slice(
                    DmInfoHeader {
                        ty: U32::new(info_type.0),
                        data_size: U32::new(data.len() as u32),
                    }
                    .as_bytes(),
                );
                out[24..].copy_from_slice(data);
            }
            Body::HotRemoveRequest {
                virtual_node,
                page_count,
                qos_flags,
            } => out.copy_from_slice(
                DmHotRemove {
                    hdr,
                    virtual_node: U32::new(virtual_node),
                    page_count: U32::new(page_count),
                    qos_flags: U32::new(qos_flags),
                    reserved_z: U32::ZERO,
                }
                .as_bytes(),
            ),
            Body::HotRemoveResponse {
                result,
                more_pages,
                ranges,
            } => {
                out[..24].copy_from_slice(
                    DmHotRemoveResponse {
                        hdr,
                        result: U32::new(result),
                        range_count: U32::new(ranges.len() as u32),
                        flags: HotRemoveResponseFlags::new().with_more_pages(more_pages),
                    }
                    .as_bytes(),
                );
                put_ranges(out, 24, ranges);
            }
        }
        Ok(len)
    }

    /// Encodes the message into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_bytes(&self) -> Result<alloc::vec::Vec<u8>, EncodeError> {
        let mut v = alloc::vec![0; self.encoded_len()];
        self.write(&mut v)?;
        Ok(v)
    }
}

impl Body<'_> {
    /// The maximum page count of an `INFO_TYPE_MAX_PAGE_CNT` message; `None` for any other
    /// message, or when `data_size` is not 8 (Linux ignores those).
    pub fn max_page_count(&self) -> Option<u64> {
        match *self {
            Body::Info {
                info_type: InfoType::MAX_PAGE_CNT,
                data,
            } => Some(u64::from_le_bytes(data.try_into().ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
