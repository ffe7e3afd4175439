//! VMBus packet descriptors, ring control pages and GUIDs: the transport that carries
//! Hyper-V Dynamic Memory.
//!
//! Follows Linux `drivers/hv/ring_buffer.c` and `include/linux/hyperv.h` (`HV_DM_GUID`,
//! the ring sizes Linux's `drivers/hv/hv_balloon.c` asks for), with OpenVMM's
//! `vm/devices/vmbus/vmbus_ring/src/lib.rs` for the packet descriptor and footer.
//!
//! # Ring layout
//! A ring is one direction of a channel: a 4 KiB control page ([`RingControl`]) followed by
//! a data area of `data_size` bytes. `write_index` and `read_index` are byte offsets into the
//! data area. Each packet in the data area is
//!
//! ```text
//! | PacketDescriptor (16) | header_ext | payload | padding to 8 | trailer (8) |
//! |<------------------- len8 * 8 ---------------------------->|
//! |<- offset8 * 8 ->|
//! ```
//!
//! and may wrap from the end of the data area to its start.
//!
//! # Reading a packet out of a ring
//! 1. [`bytes_available_to_read`] checks the peer's indices and says how much is queued.
//! 2. Copy [`DESCRIPTOR_LEN`] bytes out of the ring, [`PacketDescriptor::peek`] them,
//!    [`PacketDescriptor::validate`] the result and [`PacketDescriptor::check_queued`] it
//!    against the bytes queued; [`PacketDescriptor::ring_len`] is the number of bytes the
//!    packet occupies, trailer included.
//! 3. Copy that many bytes out (see [`wrap_ranges`]) and decode the copy with
//!    [`Packet::parse_with_trailer`]. The copy is decoded again rather than trusting the
//!    descriptor from step 2, because the peer can rewrite shared memory between the two
//!    reads; only the copy is stable.
//! 4. Advance `read_index` by [`Packet::total_len`] with [`advance_index`].
//!
//! A packet that fails any step cannot be skipped safely (its length is the thing in
//! doubt), so the channel must be reset; that is what the ring endpoints do.
//!
//! # Deliberate deviations
//! - Linux (`hv_pkt_iter_first`) repairs a descriptor whose offset or length is out of range
//!   and carries on; [`Packet::parse`] rejects it, so a malformed packet is reported instead
//!   of being delivered with guessed bounds.
//! - Linux trusts the ring indices the peer writes; the ring helpers here check them and
//!   return [`RingError`] for an index outside the data area or not 8-byte aligned.

use core::fmt;
use core::ops::Range;
use core::str::FromStr;

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------------------
// Packet types and flags
// ---------------------------------------------------------------------------------------

/// Kind of a VMBus packet (Linux `enum vmbus_packet_type`), the `type` field of a
/// [`PacketDescriptor`].
#[open_enum::open_enum]
#[repr(u16)]
#[derive(Debug, Clone, Copy, Hash)]
pub enum PacketType {
    /// `VM_PKT_INVALID`.
    INVALID = 0x0,
    /// `VM_PKT_SYNCH`.
    SYNCH = 0x1,
    /// `VM_PKT_ADD_XFER_PAGESET`.
    ADD_XFER_PAGESET = 0x2,
    /// `VM_PKT_RM_XFER_PAGESET`.
    RM_XFER_PAGESET = 0x3,
    /// `VM_PKT_ESTABLISH_GPADL`.
    ESTABLISH_GPADL = 0x4,
    /// `VM_PKT_TEARDOWN_GPADL`.
    TEARDOWN_GPADL = 0x5,
    /// `VM_PKT_DATA_INBAND`: the payload is carried in the ring itself. Dynamic Memory uses
    /// only this type.
    DATA_INBAND = 0x6,
    /// `VM_PKT_DATA_USING_XFER_PAGES`.
    DATA_USING_XFER_PAGES = 0x7,
    /// `VM_PKT_DATA_USING_GPADL`.
    DATA_USING_GPADL = 0x8,
    /// `VM_PKT_DATA_USING_GPA_DIRECT`.
    DATA_USING_GPA_DIRECT = 0x9,
    /// `VM_PKT_CANCEL_REQUEST`.
    CANCEL_REQUEST = 0xa,
    /// `VM_PKT_COMP`: completion of a packet sent with
    /// [`VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED`].
    COMP = 0xb,
    /// `VM_PKT_DATA_USING_ADDITIONAL_PKT`.
    DATA_USING_ADDITIONAL_PKT = 0xc,
    /// `VM_PKT_ADDITIONAL_DATA`.
    ADDITIONAL_DATA = 0xd,
}

/// [`PacketDescriptor::flags`] bit asking the receiver to answer with a
/// [`PacketType::COMP`] packet carrying the same transaction id.
pub const VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED: u16 = 1;

// ---------------------------------------------------------------------------------------
// Packet descriptor
// ---------------------------------------------------------------------------------------

/// Size of a [`PacketDescriptor`], in bytes.
pub const DESCRIPTOR_LEN: usize = 16;
/// Size of the trailer that follows every packet in a ring, in bytes (see [`trailer`]).
pub const PACKET_TRAILER_LEN: usize = 8;
/// Packets, their data offsets and their lengths are counted in units of this many bytes.
pub const PACKET_ALIGN: usize = 8;
/// Largest packet a descriptor can describe (`len8` is 16 bits), trailer excluded.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * PACKET_ALIGN;
/// Largest payload [`write_inband`] can carry.
pub const MAX_INBAND_PAYLOAD_LEN: usize = MAX_PACKET_LEN - DESCRIPTOR_LEN;

/// The 16 bytes that start every VMBus packet (Linux `struct vmpacket_descriptor`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct PacketDescriptor {
    /// A [`PacketType`].
    pub packet_type: U16,
    /// Start of the data, in 8-byte units from the start of the packet. At least 2, since
    /// the data cannot overlap the descriptor.
    pub offset8: U16,
    /// Length of the packet in 8-byte units: descriptor, any header extension, payload and
    /// padding, but not the ring trailer.
    pub len8: U16,
    /// Packet flags, e.g. [`VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED`].
    pub flags: U16,
    /// Transaction id, echoed by the completion of this packet.
    pub trans_id: U64,
}

const _: () = {
    assert!(size_of::<PacketDescriptor>() == DESCRIPTOR_LEN);
    assert!(align_of::<PacketDescriptor>() == 1);
    assert!(core::mem::offset_of!(PacketDescriptor, packet_type) == 0);
    assert!(core::mem::offset_of!(PacketDescriptor, offset8) == 2);
    assert!(core::mem::offset_of!(PacketDescriptor, len8) == 4);
    assert!(core::mem::offset_of!(PacketDescriptor, flags) == 6);
    assert!(core::mem::offset_of!(PacketDescriptor, trans_id) == 8);
    assert!(MAX_INBAND_PAYLOAD_LEN % PACKET_ALIGN == 0);
};

impl PacketDescriptor {
    /// The descriptor of an in-band packet carrying `payload_len` bytes: data right after
    /// the descriptor, length rounded up to 8 bytes.
    pub const fn inband(
        payload_len: usize,
        trans_id: u64,
        flags: u16,
    ) -> Result<Self, EncodeError> {
        let Some(len) = packet_len_for(payload_len) else {
            return Err(EncodeError::PayloadTooLarge { payload_len });
        };
        // `packet_len_for` caps `len` at `MAX_PACKET_LEN`, so `len8` fits in 16 bits.
        let len8 = (len / PACKET_ALIGN) as u16;
        Ok(Self {
            packet_type: U16::new(PacketType::DATA_INBAND.0),
            offset8: U16::new((DESCRIPTOR_LEN / PACKET_ALIGN) as u16),
            len8: U16::new(len8),
            flags: U16::new(flags),
            trans_id: U64::new(trans_id),
        })
    }

    /// Copies a descriptor out of the first [`DESCRIPTOR_LEN`] bytes of `bytes`, without
    /// checking it (see [`validate`](Self::validate)).
    pub fn peek(bytes: &[u8]) -> Result<Self, PacketError> {
        Self::read_from_prefix(bytes)
            .map(|(desc, _)| desc)
            .map_err(|_| PacketError::TooShortForDescriptor {
                available: bytes.len(),
            })
    }

    /// Checks that the data offset lies past the descriptor and that the packet does not end
    /// before its data starts. Does not look at the type or flags.
    pub const fn validate(&self) -> Result<(), PacketError> {
        let offset8 = self.offset8.get();
        let len8 = self.len8.get();
        if (offset8 as usize) * PACKET_ALIGN < DESCRIPTOR_LEN {
            return Err(PacketError::DataOffsetTooSmall { offset8 });
        }
        if len8 < offset8 {
            return Err(PacketError::LengthBeforeData { offset8, len8 });
        }
        Ok(())
    }

    /// Checks that the whole packet, trailer included, is among the `readable` bytes the
    /// ring holds ([`bytes_available_to_read`]). A peer that writes a longer `len8` than it
    /// queued would otherwise make the reader take stale bytes as a packet and move
    /// `read_index` past `write_index`.
    pub const fn check_queued(&self, readable: u32) -> Result<(), PacketError> {
        if self.ring_len() > readable as usize {
            return Err(PacketError::BeyondQueued {
                ring_len: self.ring_len(),
                readable,
            });
        }
        Ok(())
    }

    /// The packet type.
    pub const fn ty(&self) -> PacketType {
        PacketType(self.packet_type.get())
    }

    /// Offset of the data from the start of the packet, in bytes (`offset8 * 8`).
    pub const fn data_offset(&self) -> usize {
        self.offset8.get() as usize * PACKET_ALIGN
    }

    /// Length of the packet without its trailer, in bytes (`len8 * 8`).
    pub const fn packet_len(&self) -> usize {
        self.len8.get() as usize * PACKET_ALIGN
    }

    /// Bytes the packet occupies in a ring: [`packet_len`](Self::packet_len) plus the
    /// trailer.
    pub const fn ring_len(&self) -> usize {
        self.packet_len() + PACKET_TRAILER_LEN
    }

    /// Whether the sender asked for a [`PacketType::COMP`] reply.
    pub const fn completion_requested(&self) -> bool {
        self.flags.get() & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED != 0
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Why bytes are not a VMBus packet. Each variant names the descriptor field at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Fewer than [`DESCRIPTOR_LEN`] bytes.
    #[error("{available} bytes cannot hold a {DESCRIPTOR_LEN}-byte packet descriptor")]
    TooShortForDescriptor {
        /// Bytes given.
        available: usize,
    },
    /// `offset8 * 8` points into the descriptor.
    #[error("data offset8 {offset8} points inside the {DESCRIPTOR_LEN}-byte descriptor")]
    DataOffsetTooSmall {
        /// The descriptor's `offset8`.
        offset8: u16,
    },
    /// `len8 < offset8`: the packet ends before its data starts.
    #[error("packet len8 {len8} ends before data offset8 {offset8}")]
    LengthBeforeData {
        /// The descriptor's `offset8`.
        offset8: u16,
        /// The descriptor's `len8`.
        len8: u16,
    },
    /// The packet and its trailer run past the bytes queued in the ring.
    #[error("packet occupies {ring_len} ring bytes but only {readable} are queued")]
    BeyondQueued {
        /// Bytes the descriptor says the packet occupies, trailer included.
        ring_len: usize,
        /// Bytes queued.
        readable: u32,
    },
    /// The packet (and trailer, when one is expected) runs past the bytes given.
    #[error("packet needs {needed} bytes but only {available} are available")]
    Truncated {
        /// Bytes the descriptor says the packet occupies.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
}

/// A decoded VMBus packet, borrowing its data from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet type.
    pub ty: PacketType,
    /// The packet flags.
    pub flags: u16,
    /// The transaction id.
    pub trans_id: u64,
    /// Bytes between the descriptor and the data offset: empty for in-band packets, the
    /// range or transfer-page headers for the other data packet types.
    pub header_ext: &'a [u8],
    /// Bytes from the data offset to the end of the packet. For in-band packets this
    /// includes the sender's padding (up to 7 bytes), which the descriptor cannot tell
    /// apart from data; the message inside must carry its own length.
    pub payload: &'a [u8],
    /// Bytes of the input the packet occupies: `len8 * 8` from [`parse`](Self::parse),
    /// plus [`PACKET_TRAILER_LEN`] from [`parse_with_trailer`](Self::parse_with_trailer).
    pub total_len: usize,
}

impl<'a> Packet<'a> {
    /// Decodes the packet at the start of `bytes`. Bytes past `len8 * 8` are not looked
    /// at.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        Self::parse_inner(bytes, 0)
    }

    /// Decodes the packet at the start of `bytes` as it sits in a ring, followed by its
    /// 8-byte trailer. The trailer must be present but its value is ignored, as Linux
    /// does: it only echoes the writer's index.
    pub fn parse_with_trailer(bytes: &'a [u8]) -> Result<Self, PacketError> {
        Self::parse_inner(bytes, PACKET_TRAILER_LEN)
    }

    /// Whether the sender asked for a [`PacketType::COMP`] reply.
    pub const fn completion_requested(&self) -> bool {
        self.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED != 0
    }

    fn parse_inner(bytes: &'a [u8], trailer_len: usize) -> Result<Self, PacketError> {
        let desc = PacketDescriptor::peek(bytes)?;
        desc.validate()?;
        let data_offset = desc.data_offset();
        let packet_len = desc.packet_len();
        // Both lengths come from 16-bit fields times 8, so the sum cannot overflow.
        let total_len = packet_len + trailer_len;
        let truncated = PacketError::Truncated {
            needed: total_len,
            available: bytes.len(),
        };
        if total_len > bytes.len() {
            return Err(truncated);
        }
        let packet = bytes.get(..packet_len).ok_or(truncated)?;
        let header_ext = packet.get(DESCRIPTOR_LEN..data_offset).ok_or(truncated)?;
        let payload = packet.get(data_offset..).ok_or(truncated)?;
        Ok(Self {
            ty: desc.ty(),
            flags: desc.flags.get(),
            trans_id: desc.trans_id.get(),
            header_ext,
            payload,
            total_len,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload does not fit in a packet whose length is a 16-bit count of 8-byte units.
    #[error(
        "a {payload_len}-byte payload exceeds the {MAX_INBAND_PAYLOAD_LEN}-byte in-band maximum"
    )]
    PayloadTooLarge {
        /// Payload length asked for.
        payload_len: usize,
    },
    /// The output buffer is shorter than the packet.
    #[error("packet needs {needed} bytes but the buffer holds {available}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer holds.
        available: usize,
    },
}

/// Length of an in-band packet carrying `payload_len` bytes (descriptor, payload, padding
/// to 8 bytes; trailer excluded), or `None` if it exceeds [`MAX_PACKET_LEN`].
pub const fn packet_len_for(payload_len: usize) -> Option<usize> {
    if payload_len > MAX_INBAND_PAYLOAD_LEN {
        return None;
    }
    // Bounded above, so neither the rounding nor the sum can overflow.
    let padded = (payload_len + (PACKET_ALIGN - 1)) & !(PACKET_ALIGN - 1);
    Some(DESCRIPTOR_LEN + padded)
}

/// Bytes an in-band packet carrying `payload_len` bytes occupies in a ring: the packet
/// plus its trailer, or `None` if the payload is too large.
pub const fn ring_len_for(payload_len: usize) -> Option<usize> {
    match packet_len_for(payload_len) {
        Some(len) => Some(len + PACKET_TRAILER_LEN),
        None => None,
    }
}

/// Writes an in-band packet (descriptor, `payload`, zero padding to 8 bytes) to the start of
/// `buf` and returns its length. Bytes of `buf` past the packet are left alone; the ring
/// trailer is not written (see [`trailer`]).
pub fn write_inband(
    buf: &mut [u8],
    payload: &[u8],
    trans_id: u64,
    flags: u16,
) -> Result<usize, EncodeError> {
    let desc = PacketDescriptor::inband(payload.len(), trans_id, flags)?;
    let len = desc.packet_len();
    let too_small = EncodeError::BufferTooSmall {
        needed: len,
        available: buf.len(),
    };
    let out = buf.get_mut(..len).ok_or(too_small)?;
    let (head, rest) = out.split_at_mut_checked(DESCRIPTOR_LEN).ok_or(too_small)?;
    let (body, padding) = rest.split_at_mut_checked(payload.len()).ok_or(too_small)?;
    head.copy_from_slice(desc.as_bytes());
    body.copy_from_slice(payload);
    padding.fill(0);
    Ok(len)
}

/// The 8-byte trailer a writer puts after each packet in a ring, given the write index at
/// which the packet starts (the index before this packet was written).
///
/// Linux's `hv_ringbuffer_write` fills the trailer from `hv_get_ring_bufferindices`, which
/// returns `(u64)write_index << 32` read before the index is advanced: the previous write
/// index in the high half, zero in the low half. Readers, Linux included, skip the trailer
/// without interpreting it, so the value only matters for matching Linux byte for byte.
/// Store it little-endian (`trailer(i).to_le_bytes()`).
pub const fn trailer(prev_write_index: u32) -> u64 {
    (prev_write_index as u64) << 32
}

// ---------------------------------------------------------------------------------------
// Ring control page
// ---------------------------------------------------------------------------------------

/// Size of a ring's control page; the data area starts this many bytes into the ring.
pub const RING_CONTROL_SIZE: usize = 4096;
/// Byte offset of [`RingControl::write_index`] in the control page.
pub const WRITE_INDEX_OFFSET: usize = 0;
/// Byte offset of [`RingControl::read_index`] in the control page.
pub const READ_INDEX_OFFSET: usize = 4;
/// Byte offset of [`RingControl::interrupt_mask`] in the control page.
pub const INTERRUPT_MASK_OFFSET: usize = 8;
/// Byte offset of [`RingControl::pending_send_sz`] in the control page.
pub const PENDING_SEND_SZ_OFFSET: usize = 12;
/// Byte offset of [`RingControl::feature_bits`] in the control page.
pub const FEATURE_BITS_OFFSET: usize = 64;
/// [`RingControl::feature_bits`] bit: the ring's owner honours `pending_send_sz` (see
/// [`RingFeatureBits::pending_send_sz`]).
pub const FEAT_PENDING_SEND_SZ: u32 = 1 << 0;

/// The control page at the start of every ring (Linux `struct hv_ring_buffer` without its
/// flexible `buffer` member).
///
/// The two sides update these fields concurrently in shared memory, so ring code accesses
/// them as atomics at the `*_OFFSET` constants; this struct documents the layout and serves
/// snapshots and tests.
#[repr(C)]
#[derive(Clone, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct RingControl {
    /// Byte offset in the data area where the writer puts the next packet. Written only by
    /// the producer.
    pub write_index: U32,
    /// Byte offset in the data area of the next packet to read. Written only by the
    /// consumer.
    pub read_index: U32,
    /// Non-zero while the consumer is draining the ring and needs no signal for new data.
    pub interrupt_mask: U32,
    /// Bytes the producer is waiting to write; 0 when it is not blocked. The consumer
    /// signals once that much space is free, if the ring's `feature_bits` carry
    /// [`FEAT_PENDING_SEND_SZ`].
    pub pending_send_sz: U32,
    /// Reserved.
    pub reserved1: [U32; 12],
    /// [`RingFeatureBits`]. Linux's `hv_ringbuffer_init` sets `feat_pending_send_sz` on
    /// every ring it sets up, in both directions; the consumer of a ring reads it before
    /// honouring that ring's `pending_send_sz`.
    pub feature_bits: U32,
    /// Pads the control page so the data area starts on a page boundary.
    pub reserved2: [u8; RING_CONTROL_SIZE - FEATURE_BITS_OFFSET - 4],
}

const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<RingControl>() == RING_CONTROL_SIZE);
    assert!(RING_CONTROL_SIZE == crate::PAGE_SIZE);
    assert!(offset_of!(RingControl, write_index) == WRITE_INDEX_OFFSET);
    assert!(offset_of!(RingControl, read_index) == READ_INDEX_OFFSET);
    assert!(offset_of!(RingControl, interrupt_mask) == INTERRUPT_MASK_OFFSET);
    assert!(offset_of!(RingControl, pending_send_sz) == PENDING_SEND_SZ_OFFSET);
    assert!(offset_of!(RingControl, reserved1) == 16);
    assert!(offset_of!(RingControl, feature_bits) == FEATURE_BITS_OFFSET);
    assert!(offset_of!(RingControl, reserved2) == 68);
};

impl RingControl {
    /// An all-zero control page: empty ring, no features.
    pub const ZERO: Self = Self {
        write_index: U32::ZERO,
        read_index: U32::ZERO,
        interrupt_mask: U32::ZERO,
        pending_send_sz: U32::ZERO,
        reserved1: [U32::ZERO; 12],
        feature_bits: U32::ZERO,
        reserved2: [0; RING_CONTROL_SIZE - FEATURE_BITS_OFFSET - 4],
    };

    /// The feature bits as a bitfield.
    pub const fn features(&self) -> RingFeatureBits {
        RingFeatureBits::from_bits(self.feature_bits.get())
    }
}

// Written by hand: the derived form would print 4 KiB of reserved bytes.
impl fmt::Debug for RingControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingControl")
            .field("write_index", &self.write_index.get())
            .field("read_index", &self.read_index.get())
            .field("interrupt_mask", &self.interrupt_mask.get())
            .field("pending_send_sz", &self.pending_send_sz.get())
            .field("feature_bits", &self.features())
            .finish_non_exhaustive()
    }
}

/// [`RingControl::feature_bits`] (Linux's `feature_bits` union).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct RingFeatureBits {
    /// Linux `feat_pending_send_sz`: the ring supports `pending_send_sz` signalling. A
    /// blocked producer writes the space it needs into `pending_send_sz`; the ring's
    /// consumer, seeing this bit, signals the producer once it has freed that much. Without
    /// it a producer must poll a full ring.
    pub pending_send_sz: bool,
    #[bits(31)]
    __: u32,
}

// ---------------------------------------------------------------------------------------
// Ring arithmetic
// ---------------------------------------------------------------------------------------

/// Why ring indices or sizes cannot be used. Indices come from shared memory the peer can
/// write, so these are expected at run time, not programming errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The data area size is zero or not a multiple of 8.
    #[error("ring data size {data_size} is zero or not a multiple of {PACKET_ALIGN}")]
    DataSizeInvalid {
        /// The data area size given.
        data_size: u32,
    },
    /// `write_index` lies outside the data area.
    #[error("write_index {write_index} is outside the {data_size}-byte data area")]
    WriteIndexOutOfRange {
        /// The write index.
        write_index: u32,
        /// The data area size.
        data_size: u32,
    },
    /// `write_index` is not a multiple of 8.
    #[error("write_index {write_index} is not a multiple of {PACKET_ALIGN}")]
    WriteIndexMisaligned {
        /// The write index.
        write_index: u32,
    },
    /// `read_index` lies outside the data area.
    #[error("read_index {read_index} is outside the {data_size}-byte data area")]
    ReadIndexOutOfRange {
        /// The read index.
        read_index: u32,
        /// The data area size.
        data_size: u32,
    },
    /// `read_index` is not a multiple of 8.
    #[error("read_index {read_index} is not a multiple of {PACKET_ALIGN}")]
    ReadIndexMisaligned {
        /// The read index.
        read_index: u32,
    },
    /// An [`advance_index`] step that is not a multiple of 8 or not below the data size.
    #[error("cannot advance by {by} bytes in a {data_size}-byte data area")]
    AdvanceInvalid {
        /// The step.
        by: u32,
        /// The data area size.
        data_size: u32,
    },
    /// An offset passed to [`advance_index`] or [`wrap_ranges`] lies outside the data area.
    #[error("offset {offset} is outside the {data_size}-byte data area")]
    OffsetOutOfRange {
        /// The offset.
        offset: u32,
        /// The data area size.
        data_size: u32,
    },
    /// An offset passed to [`advance_index`] or [`wrap_ranges`] is not a multiple of 8.
    #[error("offset {offset} is not a multiple of {PACKET_ALIGN}")]
    OffsetMisaligned {
        /// The offset.
        offset: u32,
    },
    /// A copy longer than the data area.
    #[error("a {len}-byte copy exceeds the {data_size}-byte data area")]
    LengthExceedsRing {
        /// The copy length.
        len: u32,
        /// The data area size.
        data_size: u32,
    },
}

/// `PACKET_ALIGN` as the index type.
const ALIGN32: u32 = PACKET_ALIGN as u32;

const fn check_data_size(data_size: u32) -> Result<(), RingError> {
    if data_size == 0 || data_size % ALIGN32 != 0 {
        return Err(RingError::DataSizeInvalid { data_size });
    }
    Ok(())
}

const fn check_indices(write_index: u32, read_index: u32, data_size: u32) -> Result<(), RingError> {
    if let Err(e) = check_data_size(data_size) {
        return Err(e);
    }
    if write_index >= data_size {
        return Err(RingError::WriteIndexOutOfRange {
            write_index,
            data_size,
        });
    }
    if write_index % ALIGN32 != 0 {
        return Err(RingError::WriteIndexMisaligned { write_index });
    }
    if read_index >= data_size {
        return Err(RingError::ReadIndexOutOfRange {
            read_index,
            data_size,
        });
    }
    if read_index % ALIGN32 != 0 {
        return Err(RingError::ReadIndexMisaligned { read_index });
    }
    Ok(())
}

const fn check_offset(offset: u32, data_size: u32) -> Result<(), RingError> {
    if let Err(e) = check_data_size(data_size) {
        return Err(e);
    }
    if offset >= data_size {
        return Err(RingError::OffsetOutOfRange { offset, data_size });
    }
    if offset % ALIGN32 != 0 {
        return Err(RingError::OffsetMisaligned { offset });
    }
    Ok(())
}

/// Bytes queued in a ring between `read_index` and `write_index` (Linux
/// `hv_get_bytes_to_read`). Equal indices mean an empty ring.
pub const fn bytes_available_to_read(
    write_index: u32,
    read_index: u32,
    data_size: u32,
) -> Result<u32, RingError> {
    if let Err(e) = check_indices(write_index, read_index, data_size) {
        return Err(e);
    }
    // Both indices are below `data_size`, so neither subtraction can underflow.
    Ok(if write_index >= read_index {
        write_index - read_index
    } else {
        data_size - read_index + write_index
    })
}

/// Free bytes in a ring (Linux `hv_get_bytes_to_write`): `data_size` minus
/// [`bytes_available_to_read`].
///
/// A writer must not use all of it: equal indices mean empty, so a packet that filled the
/// ring exactly would make it look empty. Linux's `hv_ringbuffer_write` therefore sends only
/// when this is strictly greater than the packet plus trailer; [`has_room_for`] applies that
/// rule.
pub const fn bytes_available_to_write(
    write_index: u32,
    read_index: u32,
    data_size: u32,
) -> Result<u32, RingError> {
    match bytes_available_to_read(write_index, read_index, data_size) {
        // `readable < data_size` because both indices are below `data_size`.
        Ok(readable) => Ok(data_size - readable),
        Err(e) => Err(e),
    }
}

/// Whether a writer may put `ring_len` bytes (packet plus trailer, see
/// [`PacketDescriptor::ring_len`] and [`ring_len_for`]) into the ring now. True only when
/// strictly more than `ring_len` bytes are free, so the ring never becomes completely full.
pub const fn has_room_for(
    write_index: u32,
    read_index: u32,
    data_size: u32,
    ring_len: usize,
) -> Result<bool, RingError> {
    match bytes_available_to_write(write_index, read_index, data_size) {
        Ok(writable) => Ok(writable as usize > ring_len),
        Err(e) => Err(e),
    }
}

/// The index `by` bytes past `offset`, wrapping at the end of the data area: where
/// `write_index` or `read_index` moves after a packet of [`Packet::total_len`] bytes.
///
/// `by` must be a multiple of 8 and below `data_size` (a ring is never completely full, so
/// no index ever moves by a whole lap); anything else is a length no honest peer wrote.
pub const fn advance_index(offset: u32, by: u32, data_size: u32) -> Result<u32, RingError> {
    if let Err(e) = check_offset(offset, data_size) {
        return Err(e);
    }
    if by >= data_size || by % ALIGN32 != 0 {
        return Err(RingError::AdvanceInvalid { by, data_size });
    }
    // `offset < data_size`, so `room > 0`, and `by < data_size` keeps every step in range.
    let room = data_size - offset;
    Ok(if by >= room { by - room } else { offset + by })
}

/// The data-area byte ranges of a `len`-byte copy starting at `offset`: the part up to the
/// end of the data area and the part wrapped to its start (empty when the copy does not
/// wrap).
pub fn wrap_ranges(
    offset: u32,
    len: u32,
    data_size: u32,
) -> Result<(Range<usize>, Range<usize>), RingError> {
    check_offset(offset, data_size)?;
    if len > data_size {
        return Err(RingError::LengthExceedsRing { len, data_size });
    }
    let room = data_size - offset;
    let (first_len, wrapped) = if len > room {
        (room, len - room)
    } else {
        (len, 0)
    };
    // u32 always fits in usize on the 64-bit hosts this crate targets; the conversions
    // saturate rather than panic anywhere else.
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let first_len = usize::try_from(first_len).unwrap_or(usize::MAX);
    let wrapped = usize::try_from(wrapped).unwrap_or(usize::MAX);
    Ok((start..start.saturating_add(first_len), 0..wrapped))
}

// ---------------------------------------------------------------------------------------
// GUIDs
// ---------------------------------------------------------------------------------------

/// A GUID in its mixed-endian wire form, as VMBus channel offers carry them: `data1`,
/// `data2` and `data3` little-endian, `data4` as bytes (Linux `guid_t` built by
/// `GUID_INIT`).
#[repr(C)]
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct Guid {
    /// First 8 hex digits of the text form.
    pub data1: U32,
    /// Next 4 hex digits.
    pub data2: U16,
    /// Next 4 hex digits.
    pub data3: U16,
    /// Last 16 hex digits, in text order.
    pub data4: [u8; 8],
}

const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<Guid>() == 16);
    assert!(align_of::<Guid>() == 1);
    assert!(offset_of!(Guid, data1) == 0);
    assert!(offset_of!(Guid, data2) == 4);
    assert!(offset_of!(Guid, data3) == 6);
    assert!(offset_of!(Guid, data4) == 8);
};

/// Class id of the Hyper-V Dynamic Memory channel (Linux `HV_DM_GUID`),
/// `525074DC-8985-46E2-8057-A307DC18A502`.
pub const HV_DM_GUID: Guid = Guid::from_fields(
    0x5250_74dc,
    0x8985,
    0x46e2,
    [0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18, 0xa5, 0x02],
);

/// Why text is not a GUID in `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuidParseError {
    /// Not 36 bytes long.
    #[error("GUID text is {len} bytes long, expected 36")]
    Length {
        /// Length of the text in bytes.
        len: usize,
    },
    /// A byte at a hyphen position is not `-`.
    #[error("expected '-' at byte {at} of GUID text")]
    MissingHyphen {
        /// Byte position.
        at: usize,
    },
    /// A byte at a digit position is not a hex digit.
    #[error("byte {at} of GUID text is not a hex digit")]
    NotHex {
        /// Byte position.
        at: usize,
    },
}

impl Guid {
    /// The all-zero (nil) GUID.
    pub const ZERO: Self = Self::from_fields(0, 0, 0, [0; 8]);

    /// A GUID from the four groups of its text form, in the order `GUID_INIT` takes them.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        Self {
            data1: U32::new(data1),
            data2: U16::new(data2),
            data3: U16::new(data3),
            data4,
        }
    }

    /// The 16 wire bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        let [a0, a1, a2, a3] = self.data1.to_bytes();
        let [b0, b1] = self.data2.to_bytes();
        let [c0, c1] = self.data3.to_bytes();
        let [d0, d1, d2, d3, d4, d5, d6, d7] = self.data4;
        [
            a0, a1, a2, a3, b0, b1, c0, c1, d0, d1, d2, d3, d4, d5, d6, d7,
        ]
    }

    /// The GUID with these 16 wire bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        let [
            a0,
            a1,
            a2,
            a3,
            b0,
            b1,
            c0,
            c1,
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            d6,
            d7,
        ] = bytes;
        Self {
            data1: U32::from_bytes([a0, a1, a2, a3]),
            data2: U16::from_bytes([b0, b1]),
            data3: U16::from_bytes([c0, c1]),
            data4: [d0, d1, d2, d3, d4, d5, d6, d7],
        }
    }

    /// Parses the `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` text form, either case, no braces.
    pub fn parse_str(s: &str) -> Result<Self, GuidParseError> {
        const HYPHENS: [usize; 4] = [8, 13, 18, 23];
        let text = s.as_bytes();
        if text.len() != 36 {
            return Err(GuidParseError::Length { len: text.len() });
        }
        // Digits in text order; the first three groups are big-endian numbers.
        let mut digits = [0u8; 16];
        let mut nibble = 0usize;
        for (at, &c) in text.iter().enumerate() {
            if HYPHENS.contains(&at) {
                if c != b'-' {
                    return Err(GuidParseError::MissingHyphen { at });
                }
                continue;
            }
            let value = hex_value(c).ok_or(GuidParseError::NotHex { at })?;
            // 32 digit positions fill exactly 16 bytes, so `get_mut` always succeeds.
            if let Some(byte) = digits.get_mut(nibble / 2) {
                *byte = (*byte << 4) | value;
            }
            nibble += 1;
        }
        let [a0, a1, a2, a3, b0, b1, c0, c1, data4 @ ..] = digits;
        Ok(Self::from_fields(
            u32::from_be_bytes([a0, a1, a2, a3]),
            u16::from_be_bytes([b0, b1]),
            u16::from_be_bytes([c0, c1]),
            data4,
        ))
    }
}

const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_str(s)
    }
}

/// The canonical upper-case text form, e.g. `525074DC-8985-46E2-8057-A307DC18A502`.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [d0, d1, d2, d3, d4, d5, d6, d7] = self.data4;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{d0:02X}{d1:02X}-{d2:02X}{d3:02X}{d4:02X}{d5:02X}{d6:02X}{d7:02X}",
            self.data1.get(),
            self.data2.get(),
            self.data3.get(),
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    /// The Dynamic Memory VERSION_REQUEST the Linux guest sends first: header type 1, size
    /// 16, trans_id 1, version 2.0, is_last_attempt 0.
    const DM_VERSION_REQUEST: [u8; 16] = [
        0x01, 0x00, 0x10, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00,
    ];

    fn descriptor_bytes(ty: u16, offset8: u16, len8: u16, flags: u16, trans_id: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&offset8.to_le_bytes());
        v.extend_from_slice(&len8.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&trans_id.to_le_bytes());
        v
    }

    #[test]
    fn struct_sizes_and_offsets() {
        assert_eq!(size_of::<PacketDescriptor>(), 16);
        assert_eq!(size_of::<RingControl>(), 4096);
        assert_eq!(size_of::<Guid>(), 16);
        assert_eq!(core::mem::offset_of!(PacketDescriptor, trans_id), 8);
        assert_eq!(core::mem::offset_of!(RingControl, feature_bits), 64);
    }

    #[test]
    fn packet_type_values_match_linux() {
        let expected = [
            (PacketType::INVALID, 0),
            (PacketType::SYNCH, 1),
            (PacketType::ADD_XFER_PAGESET, 2),
            (PacketType::RM_XFER_PAGESET, 3),
            (PacketType::ESTABLISH_GPADL, 4),
            (PacketType::TEARDOWN_GPADL, 5),
            (PacketType::DATA_INBAND, 6),
            (PacketType::DATA_USING_XFER_PAGES, 7),
            (PacketType::DATA_USING_GPADL, 8),
            (PacketType::DATA_USING_GPA_DIRECT, 9),
            (PacketType::CANCEL_REQUEST, 10),
            (PacketType::COMP, 11),
            (PacketType::DATA_USING_ADDITIONAL_PKT, 12),
            (PacketType::ADDITIONAL_DATA, 13),
        ];
        for (ty, value) in expected {
            assert_eq!(ty.0, value);
        }
        assert_eq!(VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, 1);
    }

    #[test]
    fn golden_dm_version_request_packet() {
        let mut buf = [0xAAu8; 40];
        let len = write_inband(&mut buf, &DM_VERSION_REQUEST, 0, 0).unwrap();
        assert_eq!(len, 32);
        let mut expected = descriptor_bytes(6, 2, 4, 0, 0);
        expected.extend_from_slice(&DM_VERSION_REQUEST);
        assert_eq!(&buf[..32], expected.as_slice());
        assert_eq!(&buf[..8], &[0x06, 0, 0x02, 0, 0x04, 0, 0, 0]);
        // Bytes past the packet are untouched.
        assert_eq!(&buf[32..], &[0xAA; 8]);

        let packet = Packet::parse(&buf[..32]).unwrap();
        assert_eq!(packet.ty, PacketType::DATA_INBAND);
        assert_eq!(packet.flags, 0);
        assert_eq!(packet.trans_id, 0);
        assert!(packet.header_ext.is_empty());
        assert_eq!(packet.payload, &DM_VERSION_REQUEST);
        assert_eq!(packet.total_len, 32);
    }

    #[test]
    fn thirteen_byte_payload_pads_to_sixteen() {
        let payload: Vec<u8> = (1..=13).collect();
        assert_eq!(packet_len_for(13), Some(32));
        let mut buf = [0xFFu8; 32];
        let len = write_inband(&mut buf, &payload, 0x1122_3344_5566_7788, 1).unwrap();
        assert_eq!(len, 32);
        assert_eq!(&buf[16..29], payload.as_slice());
        assert_eq!(&buf[29..32], &[0, 0, 0]);
        let desc = PacketDescriptor::peek(&buf).unwrap();
        assert_eq!(desc.len8.get(), 4);
        assert_eq!(desc.trans_id.get(), 0x1122_3344_5566_7788);
        assert!(desc.completion_requested());
        let packet = Packet::parse(&buf).unwrap();
        assert_eq!(packet.payload.len(), 16);
        assert_eq!(&packet.payload[..13], payload.as_slice());
        assert!(packet.completion_requested());
    }

    #[test]
    fn empty_payload_is_a_bare_descriptor() {
        let mut buf = [0u8; 16];
        assert_eq!(write_inband(&mut buf, &[], 7, 0), Ok(16));
        let packet = Packet::parse(&buf).unwrap();
        assert!(packet.payload.is_empty());
        assert_eq!(packet.trans_id, 7);
    }

    #[test]
    fn packet_len_limits() {
        assert_eq!(packet_len_for(0), Some(16));
        assert_eq!(packet_len_for(1), Some(24));
        assert_eq!(packet_len_for(8), Some(24));
        assert_eq!(packet_len_for(MAX_INBAND_PAYLOAD_LEN), Some(MAX_PACKET_LEN));
        assert_eq!(packet_len_for(MAX_INBAND_PAYLOAD_LEN + 1), None);
        assert_eq!(packet_len_for(usize::MAX), None);
        assert_eq!(ring_len_for(16), Some(40));
        assert_eq!(ring_len_for(usize::MAX), None);
        assert_eq!(MAX_PACKET_LEN, 0xFFFF * 8);
    }

    #[test]
    fn largest_inband_packet_round_trips() {
        let payload = vec![0x5Au8; MAX_INBAND_PAYLOAD_LEN];
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        assert_eq!(write_inband(&mut buf, &payload, 1, 0), Ok(MAX_PACKET_LEN));
        let desc = PacketDescriptor::peek(&buf).unwrap();
        assert_eq!(desc.len8.get(), u16::MAX);
        assert_eq!(Packet::parse(&buf).unwrap().payload, payload.as_slice());
    }

    #[test]
    fn encode_error_payload_too_large() {
        let payload = vec![0u8; MAX_INBAND_PAYLOAD_LEN + 1];
        let mut buf = vec![0u8; MAX_PACKET_LEN + 64];
        assert_eq!(
            write_inband(&mut buf, &payload, 0, 0),
            Err(EncodeError::PayloadTooLarge {
                payload_len: MAX_INBAND_PAYLOAD_LEN + 1
            })
        );
        assert!(PacketDescriptor::inband(usize::MAX, 0, 0).is_err());
    }

    #[test]
    fn encode_error_buffer_too_small() {
        let mut buf = [0u8; 31];
        assert_eq!(
            write_inband(&mut buf, &DM_VERSION_REQUEST, 0, 0),
            Err(EncodeError::BufferTooSmall {
                needed: 32,
                available: 31
            })
        );
        assert_eq!(buf, [0u8; 31], "nothing written on error");
    }

    #[test]
    fn parse_error_too_short_for_descriptor() {
        assert_eq!(
            Packet::parse(&[]),
            Err(PacketError::TooShortForDescriptor { available: 0 })
        );
        assert_eq!(
            PacketDescriptor::peek(&[0u8; 15]),
            Err(PacketError::TooShortForDescriptor { available: 15 })
        );
    }

    #[test]
    fn parse_error_data_offset_too_small() {
        for offset8 in [0u16, 1] {
            let bytes = descriptor_bytes(6, offset8, 2, 0, 0);
            assert_eq!(
                Packet::parse(&bytes),
                Err(PacketError::DataOffsetTooSmall { offset8 })
            );
        }
    }

    #[test]
    fn parse_error_length_before_data() {
        let mut bytes = descriptor_bytes(6, 3, 2, 0, 0);
        bytes.resize(64, 0);
        assert_eq!(
            Packet::parse(&bytes),
            Err(PacketError::LengthBeforeData {
                offset8: 3,
                len8: 2
            })
        );
    }

    #[test]
    fn parse_error_truncated() {
        let mut bytes = descriptor_bytes(6, 2, 4, 0, 0);
        bytes.resize(31, 0);
        assert_eq!(
            Packet::parse(&bytes),
            Err(PacketError::Truncated {
                needed: 32,
                available: 31
            })
        );
        // A complete packet without its trailer is truncated for a ring reader.
        bytes.resize(32, 0);
        assert!(Packet::parse(&bytes).is_ok());
        assert_eq!(
            Packet::parse_with_trailer(&bytes),
            Err(PacketError::Truncated {
                needed: 40,
                available: 32
            })
        );
    }

    #[test]
    fn header_ext_sits_between_descriptor_and_data() {
        // A GPA-direct style packet: 8 bytes of range header, then 8 bytes of data.
        let mut bytes = descriptor_bytes(9, 3, 4, 0, 42);
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        bytes.extend_from_slice(&[9, 10, 11, 12, 13, 14, 15, 16]);
        bytes.extend_from_slice(&[0xEE; 8]); // next packet, not consumed
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.ty, PacketType::DATA_USING_GPA_DIRECT);
        assert_eq!(packet.header_ext, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(packet.payload, &[9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(packet.total_len, 32);
    }

    #[test]
    fn descriptor_only_packet_with_offset_at_end() {
        // offset8 == len8: no data at all, which is how a bare completion looks.
        let bytes = descriptor_bytes(11, 2, 2, 0, 5);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.ty, PacketType::COMP);
        assert!(packet.header_ext.is_empty() && packet.payload.is_empty());
    }

    #[test]
    fn unknown_type_and_flags_are_kept() {
        let bytes = descriptor_bytes(0x1234, 2, 2, 0xFFFF, u64::MAX);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.ty, PacketType(0x1234));
        assert_eq!(packet.flags, 0xFFFF);
        assert_eq!(packet.trans_id, u64::MAX);
    }

    #[test]
    fn back_to_back_packets_with_trailers() {
        // Lay two packets out as a writer at index 64 would, then read them back.
        let mut ring = vec![0u8; 256];
        let mut write_index = 64u32;
        let mut at = 0usize;
        for (payload, id) in [(&DM_VERSION_REQUEST[..], 1u64), (&[0xAB; 13][..], 2)] {
            let len = write_inband(&mut ring[at..], payload, id, 0).unwrap();
            ring[at + len..at + len + PACKET_TRAILER_LEN]
                .copy_from_slice(&trailer(write_index).to_le_bytes());
            let advance = u32::try_from(len + PACKET_TRAILER_LEN).unwrap();
            write_index = advance_index(write_index, advance, 4096).unwrap();
            at += len + PACKET_TRAILER_LEN;
        }
        assert_eq!(write_index, 64 + 40 + 40);

        let desc = PacketDescriptor::peek(&ring).unwrap();
        desc.validate().unwrap();
        assert_eq!(desc.ring_len(), 40);
        let first = Packet::parse_with_trailer(&ring).unwrap();
        assert_eq!((first.trans_id, first.total_len), (1, 40));
        assert_eq!(first.payload, &DM_VERSION_REQUEST);
        let second = Packet::parse_with_trailer(&ring[first.total_len..]).unwrap();
        assert_eq!((second.trans_id, second.total_len), (2, 40));
        assert_eq!(&second.payload[..13], &[0xAB; 13]);
        // The trailers hold the write index each packet started at.
        assert_eq!(&ring[32..40], &trailer(64).to_le_bytes());
        assert_eq!(&ring[72..80], &trailer(104).to_le_bytes());
    }

    #[test]
    fn trailer_puts_previous_write_index_in_high_half() {
        assert_eq!(trailer(0), 0);
        assert_eq!(trailer(0x28), 0x28_0000_0000);
        assert_eq!(trailer(u32::MAX), 0xFFFF_FFFF_0000_0000);
        assert_eq!(
            trailer(0x0102_0304).to_le_bytes(),
            [0, 0, 0, 0, 0x04, 0x03, 0x02, 0x01]
        );
    }

    #[test]
    fn ring_control_field_offsets() {
        let mut page = RingControl::ZERO;
        page.write_index.set(0x1111_1111);
        page.read_index.set(0x2222_2222);
        page.interrupt_mask.set(0x3333_3333);
        page.pending_send_sz.set(0x4444_4444);
        page.feature_bits.set(FEAT_PENDING_SEND_SZ);
        let bytes = page.as_bytes();
        let word = |off: usize| u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        assert_eq!(word(WRITE_INDEX_OFFSET), 0x1111_1111);
        assert_eq!(word(READ_INDEX_OFFSET), 0x2222_2222);
        assert_eq!(word(INTERRUPT_MASK_OFFSET), 0x3333_3333);
        assert_eq!(word(PENDING_SEND_SZ_OFFSET), 0x4444_4444);
        assert_eq!(word(FEATURE_BITS_OFFSET), 1);
        assert!(bytes[16..64].iter().all(|&b| b == 0));
        assert!(bytes[68..].iter().all(|&b| b == 0));
        assert!(page.features().pending_send_sz());
        assert_eq!(
            RingFeatureBits::new()
                .with_pending_send_sz(true)
                .into_bits(),
            FEAT_PENDING_SEND_SZ
        );
        let copy = RingControl::read_from_bytes(bytes).unwrap();
        assert_eq!(copy.read_index.get(), 0x2222_2222);
        let debug = std::format!("{page:?}");
        assert!(debug.contains("write_index: 286331153"));
    }

    #[test]
    fn ring_arithmetic_hand_cases() {
        // Empty.
        assert_eq!(bytes_available_to_read(0, 0, 4096), Ok(0));
        assert_eq!(bytes_available_to_write(0, 0, 4096), Ok(4096));
        assert_eq!(bytes_available_to_read(128, 128, 4096), Ok(0));
        // Writer ahead.
        assert_eq!(bytes_available_to_read(40, 0, 4096), Ok(40));
        assert_eq!(bytes_available_to_write(40, 0, 4096), Ok(4056));
        // Writer wrapped.
        assert_eq!(bytes_available_to_read(8, 4088, 4096), Ok(16));
        assert_eq!(bytes_available_to_write(8, 4088, 4096), Ok(4080));
        // The writer leaves at least one slot free.
        assert_eq!(has_room_for(0, 0, 4096, 4096), Ok(false));
        assert_eq!(has_room_for(0, 0, 4096, 4088), Ok(true));
        assert_eq!(has_room_for(40, 0, 4096, 4056), Ok(false));
        assert_eq!(has_room_for(40, 0, 4096, usize::MAX), Ok(false));
    }

    #[test]
    fn ring_errors_each_variant() {
        assert_eq!(
            bytes_available_to_read(0, 0, 0),
            Err(RingError::DataSizeInvalid { data_size: 0 })
        );
        assert_eq!(
            bytes_available_to_write(0, 0, 4095),
            Err(RingError::DataSizeInvalid { data_size: 4095 })
        );
        assert_eq!(
            bytes_available_to_read(4096, 0, 4096),
            Err(RingError::WriteIndexOutOfRange {
                write_index: 4096,
                data_size: 4096
            })
        );
        assert_eq!(
            bytes_available_to_read(4, 0, 4096),
            Err(RingError::WriteIndexMisaligned { write_index: 4 })
        );
        assert_eq!(
            bytes_available_to_write(0, u32::MAX, 4096),
            Err(RingError::ReadIndexOutOfRange {
                read_index: u32::MAX,
                data_size: 4096
            })
        );
        assert_eq!(
            has_room_for(0, 12, 4096, 8),
            Err(RingError::ReadIndexMisaligned { read_index: 12 })
        );
        assert_eq!(
            advance_index(4096, 8, 4096),
            Err(RingError::OffsetOutOfRange {
                offset: 4096,
                data_size: 4096
            })
        );
        assert_eq!(
            wrap_ranges(3, 8, 4096),
            Err(RingError::OffsetMisaligned { offset: 3 })
        );
        assert_eq!(
            wrap_ranges(0, 4097, 4096),
            Err(RingError::LengthExceedsRing {
                len: 4097,
                data_size: 4096
            })
        );
    }

    #[test]
    fn advance_and_wrap_ranges() {
        assert_eq!(advance_index(0, 40, 4096), Ok(40));
        assert_eq!(advance_index(4088, 8, 4096), Ok(0));
        assert_eq!(advance_index(4080, 40, 4096), Ok(24));
        assert_eq!(
            advance_index(8, u32::MAX - 7, 4096),
            Err(RingError::AdvanceInvalid {
                by: u32::MAX - 7,
                data_size: 4096
            })
        );
        assert_eq!(
            advance_index(8, 4096, 4096),
            Err(RingError::AdvanceInvalid {
                by: 4096,
                data_size: 4096
            })
        );
        assert_eq!(
            advance_index(8, 12, 4096),
            Err(RingError::AdvanceInvalid {
                by: 12,
                data_size: 4096
            })
        );
        assert_eq!(wrap_ranges(0, 40, 4096), Ok((0..40, 0..0)));
        assert_eq!(wrap_ranges(4080, 16, 4096), Ok((4080..4096, 0..0)));
        assert_eq!(wrap_ranges(4080, 40, 4096), Ok((4080..4096, 0..24)));
        assert_eq!(wrap_ranges(8, 4096, 4096), Ok((8..4096, 0..8)));
    }

    #[test]
    fn dm_guid_wire_bytes() {
        assert_eq!(
            HV_DM_GUID.to_bytes(),
            [
                0xdc, 0x74, 0x50, 0x52, 0x85, 0x89, 0xe2, 0x46, 0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18,
                0xa5, 0x02
            ]
        );
        assert_eq!(HV_DM_GUID.as_bytes(), &HV_DM_GUID.to_bytes());
        assert_eq!(Guid::from_bytes(HV_DM_GUID.to_bytes()), HV_DM_GUID);
    }

    #[test]
    fn guid_text_form() {
        assert_eq!(
            HV_DM_GUID.to_string(),
            "525074DC-8985-46E2-8057-A307DC18A502"
        );
        assert_eq!(
            std::format!("{HV_DM_GUID:?}"),
            "Guid(525074DC-8985-46E2-8057-A307DC18A502)"
        );
        assert_eq!(
            Guid::ZERO.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            Guid::parse_str("525074DC-8985-46E2-8057-A307DC18A502"),
            Ok(HV_DM_GUID)
        );
        assert_eq!(
            "525074dc-8985-46e2-8057-a307dc18a502".parse::<Guid>(),
            Ok(HV_DM_GUID)
        );
    }

    #[test]
    fn guid_parse_errors() {
        assert_eq!(Guid::parse_str(""), Err(GuidParseError::Length { len: 0 }));
        assert_eq!(
            Guid::parse_str("{525074DC-8985-46E2-8057-A307DC18A502}"),
            Err(GuidParseError::Length { len: 38 })
        );
        assert_eq!(
            Guid::parse_str("525074DC-8985-46E2-8057_A307DC18A502"),
            Err(GuidParseError::MissingHyphen { at: 23 })
        );
        assert_eq!(
            Guid::parse_str("525074DC08985-46E2-8057-A307DC18A502"),
            Err(GuidParseError::MissingHyphen { at: 8 })
        );
        assert_eq!(
            Guid::parse_str("525074DG-8985-46E2-8057-A307DC18A502"),
            Err(GuidParseError::NotHex { at: 7 })
        );
        // A multi-byte character is rejected by position, not by panicking on a char
        // boundary.
        assert_eq!(
            Guid::parse_str("525074D\u{e9}-8985-46E2-8057-A307DC18A50"),
            Err(GuidParseError::NotHex { at: 7 })
        );
    }

    fn valid_ring() -> impl Strategy<Value = (u32, u32, u32)> {
        (1u32..=(u32::MAX / 8)).prop_flat_map(|units| {
            let data_size = units * 8;
            (
                (0..units).prop_map(|i| i * 8),
                (0..units).prop_map(|i| i * 8),
                Just(data_size),
            )
        })
    }

    proptest! {
        #[test]
        fn prop_inband_round_trip(
            payload in proptest::collection::vec(any::<u8>(), 0..4096),
            trans_id in any::<u64>(),
            flags in any::<u16>(),
        ) {
            let mut buf = vec![0xCCu8; 4096 + 64];
            let len = write_inband(&mut buf, &payload, trans_id, flags).unwrap();
            prop_assert_eq!(Some(len), packet_len_for(payload.len()));
            prop_assert_eq!(len % 8, 0);
            prop_assert!(len - DESCRIPTOR_LEN - payload.len() < 8);
            let packet = Packet::parse(&buf).unwrap();
            prop_assert_eq!(packet.ty, PacketType::DATA_INBAND);
            prop_assert_eq!(packet.flags, flags);
            prop_assert_eq!(packet.trans_id, trans_id);
            prop_assert!(packet.header_ext.is_empty());
            prop_assert_eq!(packet.total_len, len);
            prop_assert_eq!(&packet.payload[..payload.len()], payload.as_slice());
            prop_assert!(packet.payload[payload.len()..].iter().all(|&b| b == 0));
            let ringed = Packet::parse_with_trailer(&buf).unwrap();
            prop_assert_eq!(ringed.total_len, len + PACKET_TRAILER_LEN);
            prop_assert_eq!(ringed.payload, packet.payload);
        }

        #[test]
        fn prop_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let results = [Packet::parse(&bytes), Packet::parse_with_trailer(&bytes)];
            for packet in results.into_iter().flatten() {
                prop_assert!(packet.total_len <= bytes.len());
                let desc = PacketDescriptor::peek(&bytes).unwrap();
                prop_assert_eq!(packet.header_ext.len(), desc.data_offset() - DESCRIPTOR_LEN);
                prop_assert_eq!(packet.payload.len(), desc.packet_len() - desc.data_offset());
            }
        }

        #[test]
        fn prop_parse_small_descriptors(
            offset8 in 0u16..8,
            len8 in 0u16..8,
            extra in 0usize..80,
        ) {
            let mut bytes = descriptor_bytes(6, offset8, len8, 0, 0);
            bytes.resize(16 + extra, 0);
            let valid = offset8 >= 2
                && len8 >= offset8
                && usize::from(len8) * 8 <= bytes.len();
            prop_assert_eq!(Packet::parse(&bytes).is_ok(), valid);
        }

        #[test]
        fn prop_ring_readable_plus_writable_is_data_size((w, r, size) in valid_ring()) {
            let readable = bytes_available_to_read(w, r, size).unwrap();
            let writable = bytes_available_to_write(w, r, size).unwrap();
            prop_assert_eq!(u64::from(readable) + u64::from(writable), u64::from(size));
            prop_assert!(readable < size);
            prop_assert_eq!(readable % 8, 0);
            // Moving the reader forward by everything readable empties the ring.
            prop_assert_eq!(advance_index(r, readable, size), Ok(w));
        }

        #[test]
        fn prop_ring_write_keeps_accounting(
            (w, r, size) in valid_ring(),
            units in 1u32..1024,
        ) {
            let len = units * 8;
            if has_room_for(w, r, size, len as usize).unwrap() {
                let before = bytes_available_to_read(w, r, size).unwrap();
                let w2 = advance_index(w, len, size).unwrap();
                prop_assert_ne!(w2, r, "a write never makes the ring look empty");
                prop_assert_eq!(bytes_available_to_read(w2, r, size), Ok(before + len));
                let (first, second) = wrap_ranges(w, len, size).unwrap();
                prop_assert_eq!(first.len() + second.len(), len as usize);
                prop_assert!(first.end <= size as usize);
            }
        }

        #[test]
        fn prop_ring_garbage_indices(w in any::<u32>(), r in any::<u32>(), size in any::<u32>()) {
            let valid = size != 0
                && size % 8 == 0
                && w < size
                && r < size
                && w % 8 == 0
                && r % 8 == 0;
            prop_assert_eq!(bytes_available_to_read(w, r, size).is_ok(), valid);
            prop_assert_eq!(bytes_available_to_write(w, r, size).is_ok(), valid);
            prop_assert_eq!(has_room_for(w, r, size, 8).is_ok(), valid);
            let _ = advance_index(w, r, size);
            if let Ok((first, second)) = wrap_ranges(w, r, size) {
                prop_assert_eq!(first.len() + second.len(), r as usize);
            }
        }

        #[test]
        fn prop_guid_text_round_trip(bytes in any::<[u8; 16]>()) {
            let guid = Guid::from_bytes(bytes);
            prop_assert_eq!(guid.to_bytes(), bytes);
            prop_assert_eq!(guid.as_bytes(), &bytes);
            let text = guid.to_string();
            prop_assert_eq!(text.len(), 36);
            prop_assert_eq!(Guid::parse_str(&text), Ok(guid));
            prop_assert_eq!(Guid::parse_str(&text.to_lowercase()), Ok(guid));
        }

        #[test]
        fn prop_guid_parse_never_panics(s in "\\PC{0,40}") {
            let _ = Guid::parse_str(&s);
        }
    }
}
