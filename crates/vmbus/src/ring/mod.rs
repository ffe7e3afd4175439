//! The VMBus ring transport: one ring per direction in shared memory, doorbells to wake
//! the other end.
//!
//! A ring ([`RingBuffer`]) is the Linux `drivers/hv/ring_buffer.c` layout: a 4 KiB control
//! page (`write_index`, `read_index`, `interrupt_mask`, `pending_send_sz`, `feature_bits`)
//! then the data area, holding in-band packets (16-byte descriptor, payload padded to 8,
//! 8-byte trailer) that may wrap. One end of a ring is its [`Writer`], the other its
//! [`Reader`]; a [`Channel`] is one of each plus a [`Doorbell`] per direction, set up in
//! one process ([`Channel::pair_in_process`]) or across two over a Unix socket
//! ([`ChannelSetup`]).
//!
//! A ring lies in one span of a shared region ([`RingBuffer::new`]) or over a list of
//! pages in it, as a VMBus GPADL gives them ([`RingBuffer::over_pages`]), e.g. in guest RAM
//! the VMM already has ([`SharedRegion::guest_ram`]); see [`RingMemory`].
//!
//! # Trust
//! The peer can write every byte of the shared memory at any time. So:
//! - each end keeps its own index privately and only publishes it; the copy in shared
//!   memory is never read back, so a peer scribbling on it changes nothing here;
//! - the peer's index is checked on every load (in range, aligned) and against what this
//!   end already knows: a writer never takes queued bytes back and a reader never frees
//!   more than was queued;
//! - packets are read as the `ballast_abi::vmbus` module doc prescribes, and decoded from a
//!   private copy, never from the shared bytes;
//! - every copy goes through [`RingMemory`], which checks each data-area span against the
//!   data size and each page against the region, so no index the peer writes can take an
//!   access outside the ring's own pages, in one span or over a page list;
//! - anything that fails those checks is [`RingError::Corrupt`]. A packet of doubtful
//!   length cannot be skipped, so the end stays failed (every later call returns the same
//!   error) and the owner must reset the channel.
//!
//! # Signalling (as Linux's `hv_signal_on_write` and `hv_pkt_iter_close`)
//! - The writer signals the reader after publishing a packet if the reader's
//!   `interrupt_mask` is clear and the ring was empty before this packet (`read_index`,
//!   loaded after the publish, equals the packet's start). A reader with packets still
//!   queued is going to come back for this one anyway.
//! - A writer that finds no room sets `pending_send_sz` to the bytes it needs (on rings
//!   whose `feature_bits` carry `FEAT_PENDING_SEND_SZ`), re-checks the room, and returns
//!   [`RingError::Full`] with nothing written. It clears `pending_send_sz` when its next
//!   write succeeds.
//! - The reader, after freeing a packet, signals the writer if `pending_send_sz` is
//!   non-zero and this packet took the free space from at most `pending_send_sz` to more
//!   than it: once per blocked write, not once per packet.
//! - Between each publish of an index and the load of the other side's fields there is a
//!   sequentially consistent fence, so of two ends racing (a writer publishing while the
//!   reader decides the ring is empty, a writer setting `pending_send_sz` while the reader
//!   frees space) at least one sees the other, and no wakeup is lost.
//! - A reader draining a batch may set `interrupt_mask` ([`Reader::mask_interrupts`]) to
//!   spare the writer's signals, and must re-check after clearing it
//!   ([`Reader::unmask_interrupts`] says whether packets arrived meanwhile).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use ballast_abi::vmbus::{
    self, DESCRIPTOR_LEN, FEAT_PENDING_SEND_SZ, FEATURE_BITS_OFFSET, INTERRUPT_MASK_OFFSET,
    PENDING_SEND_SZ_OFFSET, Packet, PacketDescriptor, PacketError, PacketType, READ_INDEX_OFFSET,
    RING_CONTROL_SIZE, WRITE_INDEX_OFFSET,
};
use ballast_backing::BackingError;

pub use ballast_backing::SharedRegion;

mod channel;
mod doorbell;
mod memory;

pub use channel::{Channel, ChannelSetup, DEFAULT_DATA_SIZE, MAX_DATA_SIZE, SetupError};
pub use doorbell::{Doorbell, EventFdDoorbell, InProcessDoorbell};
pub use memory::{RING_PAGE_SIZE, RingMemory};

/// Why a ring operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Not enough free space for the packet now; nothing was written. The reader signals
    /// once it has freed enough (see the module doc).
    #[error("ring full")]
    Full,
    /// The packet can never fit in this ring, even empty.
    #[error("a {payload_len}-byte payload exceeds the {max_payload}-byte maximum of this ring")]
    TooLarge {
        /// Payload length asked for.
        payload_len: usize,
        /// Largest payload the ring can carry.
        max_payload: usize,
    },
    /// The peer broke the ring protocol; the channel must be reset.
    #[error("ring corrupt, channel must be reset: {cause}")]
    Corrupt {
        /// What was wrong.
        cause: Corruption,
    },
    /// The ring does not fit the shared region it is said to live in.
    #[error(
        "a ring at {control_offset:#x} with {data_size} data bytes does not fit a {region_len}-byte region"
    )]
    Layout {
        /// Offset of the control page in the region.
        control_offset: usize,
        /// Data area size.
        data_size: u32,
        /// Region size.
        region_len: usize,
    },
    /// A page of a ring's page list is not a whole, aligned page of its region.
    #[error(
        "ring page {index} at {offset:#x} is not a 4096-aligned page inside the {region_len}-byte region"
    )]
    Page {
        /// Position in the page list (0: the control page).
        index: usize,
        /// Its offset in the region.
        offset: u64,
        /// Region size.
        region_len: usize,
    },
    /// A page list without a control page and at least one data page, or too long.
    #[error(
        "a ring page list needs a control page and at least one data page, at most {max} pages in all; got {pages}"
    )]
    PageCount {
        /// Pages given.
        pages: usize,
        /// Most pages a ring may have.
        max: usize,
    },
    /// A page appears twice in a ring's page list, or in both rings of a GPADL pair.
    #[error("ring page at {offset:#x} appears more than once in the page list")]
    RepeatedPage {
        /// The repeated page's offset in the region.
        offset: u64,
    },
    /// A copy through the shared region failed.
    #[error("shared region: {0}")]
    Region(BackingError),
}

/// What the peer did wrong, for [`RingError::Corrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The peer's index is out of range or misaligned.
    #[error("{0}")]
    Index(vmbus::RingError),
    /// The next packet's descriptor is malformed or runs past the queued bytes.
    #[error("{0}")]
    Packet(PacketError),
    /// The writer moved `write_index` back over bytes it had already queued.
    #[error("write_index retreated: {readable} bytes queued, {known} were queued before")]
    WriteIndexRetreated {
        /// Bytes queued now, by the peer's `write_index`.
        readable: u32,
        /// Bytes this reader already knew to be queued.
        known: u32,
    },
    /// The reader moved `read_index` backwards, or past what was queued.
    #[error("read_index moved wrongly: {queued} bytes would be queued, at most {known} can be")]
    ReadIndexInvalid {
        /// Bytes queued by the peer's `read_index`.
        queued: u32,
        /// Bytes queued at most, from what this writer wrote.
        known: u32,
    },
    /// The packet changed in shared memory between the look at its descriptor and the
    /// copy of the whole packet.
    #[error("packet rewritten while read: {peeked} bytes announced, {copied} in the copy")]
    Rewritten {
        /// Ring bytes the first descriptor read announced.
        peeked: usize,
        /// Ring bytes the copy's descriptor announced.
        copied: usize,
    },
}

impl From<BackingError> for RingError {
    fn from(e: BackingError) -> Self {
        Self::Region(e)
    }
}

/// Whether the other end needs a doorbell signal after an operation.
#[must_use = "a signal the peer needs and does not get stalls the channel"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Signal the peer.
    Peer,
    /// The peer does not need a signal.
    Quiet,
}

impl Signal {
    /// Whether to signal.
    pub fn is_needed(self) -> bool {
        self == Signal::Peer
    }
}

/// A packet read out of a ring, decoded from a private copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPacket<'a> {
    /// The packet type (Dynamic Memory uses only [`PacketType::DATA_INBAND`]).
    pub ty: PacketType,
    /// The packet flags.
    pub flags: u16,
    /// The transaction id.
    pub trans_id: u64,
    /// The data, including the sender's padding of up to 7 bytes (the descriptor cannot
    /// tell padding from data; a message carries its own length).
    pub payload: &'a [u8],
}

/// The smallest data area a [`RingBuffer`] accepts: room for one empty packet (24 bytes
/// with its trailer) while keeping the ring from ever filling completely.
pub const MIN_DATA_SIZE: u32 = 32;

/// One ring in shared memory: its control page and its data area, in one span or over a
/// page list ([`RingMemory`]).
#[derive(Debug, Clone)]
pub struct RingBuffer {
    memory: RingMemory,
}

impl RingBuffer {
    /// The ring at `control_offset` of `region`, its data right after the control page.
    /// `data_size` must be a multiple of 8 and at least [`MIN_DATA_SIZE`],
    /// `control_offset` a multiple of 8, and the ring must fit the region.
    pub fn new(
        region: Arc<SharedRegion>,
        control_offset: usize,
        data_size: u32,
    ) -> Result<Self, RingError> {
        RingMemory::contiguous(region, control_offset, data_size).map(Self::from_memory)
    }

    /// The ring over a page list of `region` (a GPADL's pages, in any order):
    /// `pages[0]` the byte offset of the control page, the rest those of the data pages in
    /// ring order. See [`RingMemory::pages`].
    pub fn over_pages(region: Arc<SharedRegion>, pages: &[u64]) -> Result<Self, RingError> {
        RingMemory::pages(region, pages).map(Self::from_memory)
    }

    /// The ring in `memory`.
    pub fn from_memory(memory: RingMemory) -> Self {
        Self { memory }
    }

    /// The two rings of a VMBus channel's GPADL, as a guest opens it: the first
    /// `downstream_page_offset` pages are the guest's outbound ring (guest to host), the
    /// rest its inbound ring (host to guest), each a control page and then data pages
    /// (`downstream_ringbuffer_pageoffset` of `struct vmbus_channel_open_channel`, Linux
    /// `include/linux/hyperv.h`). Returns (guest to host, host to guest).
    ///
    /// No page may repeat, within a ring or across the two ([`RingError::RepeatedPage`]):
    /// the host reads one ring and writes the other, often from different threads, and a
    /// shared page would make those accesses race (see [`RingMemory::pages`]).
    ///
    /// The host's end of a DM channel over a guest's GPADL in the VMM's guest RAM:
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use std::sync::Arc;
    /// use ballast_vmbus::ring::{
    ///     Channel, Doorbell, InProcessDoorbell, Reader, RingBuffer, SharedRegion, Writer,
    /// };
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use rustix::fs::{MemfdFlags, ftruncate, memfd_create};
    /// # let ram = memfd_create("guest-ram", MemfdFlags::CLOEXEC)?;
    /// # ftruncate(&ram, 1 << 20)?;
    /// // Guest RAM as the VMM has it (no seals), mapped once: gfn g at byte g * 4096.
    /// let guest_ram = Arc::new(SharedRegion::guest_ram(ram.as_fd(), 0, 1 << 20)?);
    /// // The GPADL the guest opened the channel with: 5 pages out, 5 in, anywhere.
    /// let gfns = [200u64, 17, 3, 150, 9, 41, 120, 88, 60, 4];
    /// let pages: Vec<u64> = gfns.iter().map(|g| g * 4096).collect();
    /// let (to_host, to_guest) = RingBuffer::gpadl_pair(&guest_ram, &pages, 5)?;
    /// # to_host.init(0)?;
    /// # to_guest.init(0)?;
    /// // The VMM's own signalling (the guest's hypercalls, its interrupts) goes behind
    /// // these two doorbells.
    /// let (to_guest_bell, from_guest_bell): (Arc<dyn Doorbell>, Arc<dyn Doorbell>) =
    ///     (Arc::new(InProcessDoorbell::new()), Arc::new(InProcessDoorbell::new()));
    /// let host = Channel::new(
    ///     Writer::new(to_guest)?,
    ///     Reader::new(to_host)?,
    ///     to_guest_bell,
    ///     from_guest_bell,
    /// );
    /// # drop(host);
    /// # Ok(())
    /// # }
    /// ```
    pub fn gpadl_pair(
        region: &Arc<SharedRegion>,
        pages: &[u64],
        downstream_page_offset: usize,
    ) -> Result<(Self, Self), RingError> {
        let (outbound, inbound) = pages.split_at(downstream_page_offset.min(pages.len()));
        let rings = (
            Self::over_pages(Arc::clone(region), outbound)?,
            Self::over_pages(Arc::clone(region), inbound)?,
        );
        // Each half's length is bounded now, so the whole list is too.
        memory::distinct_pages(pages)?;
        Ok(rings)
    }

    /// Resets the control page to an empty ring with these `feature_bits` (Linux's
    /// `hv_ringbuffer_init` sets [`FEAT_PENDING_SEND_SZ`]). For the end that creates the
    /// ring, before the peer has it.
    pub fn init(&self, feature_bits: u32) -> Result<(), RingError> {
        self.memory.write_control(&[0u8; RING_CONTROL_SIZE])?;
        self.word(FEATURE_BITS_OFFSET)?
            .store(feature_bits, Ordering::Release);
        Ok(())
    }

    /// The size of the data area.
    pub fn data_size(&self) -> u32 {
        self.memory.data_size()
    }

    /// The region the ring lives in.
    pub fn region(&self) -> &Arc<SharedRegion> {
        self.memory.region()
    }

    /// Where the ring's bytes are, e.g. to look at its data area by position
    /// ([`RingMemory::read`]) whatever its layout.
    pub fn memory(&self) -> &RingMemory {
        &self.memory
    }

    /// The control page word at `offset` (one of `ballast_abi::vmbus`'s `*_OFFSET`
    /// constants), as both ends access it. `None` for an offset that is not a word of the
    /// control page.
    pub fn control_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.memory.control_word(offset)
    }

    /// The largest payload a packet in this ring can carry: the packet plus trailer must
    /// stay below the data size, since a ring is never filled completely.
    pub fn max_payload(&self) -> usize {
        let room = (self.data_size() as usize).saturating_sub(1);
        // Largest 8-multiple packet strictly below the data size, minus trailer and
        // descriptor.
        let ring_len = room & !(vmbus::PACKET_ALIGN - 1);
        ring_len
            .saturating_sub(vmbus::PACKET_TRAILER_LEN + DESCRIPTOR_LEN)
            .min(vmbus::MAX_INBAND_PAYLOAD_LEN)
    }

    fn word(&self, offset: usize) -> Result<&AtomicU32, RingError> {
        // `RingMemory` checked that the whole control page lies in the region.
        self.control_word(offset).ok_or(RingError::Layout {
            control_offset: self.memory.control_offset(),
            data_size: self.data_size(),
            region_len: self.region().len(),
        })
    }

    fn pending_send_supported(&self) -> Result<bool, RingError> {
        let bits = self.word(FEATURE_BITS_OFFSET)?.load(Ordering::Acquire);
        Ok(bits & FEAT_PENDING_SEND_SZ != 0)
    }

    /// Copies `buf.len()` bytes of the data area starting at index `at`, wrapping.
    fn copy_out(&self, at: u32, buf: &mut [u8]) -> Result<(), RingError> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let (first, second) =
            vmbus::wrap_ranges(at, len, self.data_size()).map_err(|e| RingError::Corrupt {
                cause: Corruption::Index(e),
            })?;
        let (a, b) = buf.split_at_mut(first.len().min(buf.len()));
        self.memory.read(first.start, a)?;
        self.memory.read(second.start, b)?;
        Ok(())
    }

    /// Copies `bytes` into the data area starting at index `at`, wrapping.
    fn copy_in(&self, at: u32, bytes: &[u8]) -> Result<(), RingError> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let (first, second) =
            vmbus::wrap_ranges(at, len, self.data_size()).map_err(|e| RingError::Corrupt {
                cause: Corruption::Index(e),
            })?;
        let (a, b) = bytes.split_at(first.len().min(bytes.len()));
        self.memory.write(first.start, a)?;
        self.memory.write(second.start, b)?;
        Ok(())
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct Writer {
    ring: RingBuffer,
    write_index: u32,
    /// Upper bound on the bytes still queued: what was queued after this writer's last
    /// write. The reader can only lower it.
    queued: u32,
    pending_set: bool,
    failed: Option<Corruption>,
    scratch: Vec<u8>,
}

impl Writer {
    /// Takes the producing end of `ring`, from the indices it holds now (zero for a fresh
    /// ring).
    pub fn new(ring: RingBuffer) -> Result<Self, RingError> {
        let write_index = ring.word(WRITE_INDEX_OFFSET)?.load(Ordering::Acquire);
        let read_index = ring.word(READ_INDEX_OFFSET)?.load(Ordering::Acquire);
        let queued = vmbus::bytes_available_to_read(write_index, read_index, ring.data_size())
            .map_err(|e| RingError::Corrupt {
                cause: Corruption::Index(e),
            })?;
        Ok(Self {
            ring,
            write_index,
            queued,
            pending_set: false,
            failed: None,
            scratch: Vec::new(),
        })
    }

    /// The ring.
    pub fn ring(&self) -> &RingBuffer {
        &self.ring
    }

    fn fail(&mut self, cause: Corruption) -> RingError {
        self.failed = Some(cause);
        RingError::Corrupt { cause }
    }

    /// Bytes queued now, from the reader's current index.
    fn load_queued(&mut self) -> Result<u32, RingError> {
        let read_index = self.ring.word(READ_INDEX_OFFSET)?.load(Ordering::Acquire);
        let queued = match vmbus::bytes_available_to_read(
            self.write_index,
            read_index,
            self.ring.data_size(),
        ) {
            Ok(q) => q,
            Err(e) => return Err(self.fail(Corruption::Index(e))),
        };
        if queued > self.queued {
            return Err(self.fail(Corruption::ReadIndexInvalid {
                queued,
                known: self.queued,
            }));
        }
        self.queued = queued;
        Ok(queued)
    }

    fn has_room(&self, queued: u32, ring_len: usize) -> bool {
        // As `vmbus::has_room_for`: strictly more free than needed, so a full ring never
        // looks empty.
        (self.ring.data_size() - queued) as usize > ring_len
    }

    /// Writes an in-band packet (no completion requested) carrying `payload`.
    ///
    /// On [`RingError::Full`] nothing was written; retry the same packet after the reader
    /// signals. Returns whether the reader must be signalled.
    pub fn try_write(&mut self, payload: &[u8], trans_id: u64) -> Result<Signal, RingError> {
        if let Some(cause) = self.failed {
            return Err(RingError::Corrupt { cause });
        }
        let max_payload = self.ring.max_payload();
        let ring_len = match vmbus::ring_len_for(payload.len()) {
            Some(len) if len < self.ring.data_size() as usize => len,
            _ => {
                return Err(RingError::TooLarge {
                    payload_len: payload.len(),
                    max_payload,
                });
            }
        };
        // Below data_size, itself a u32.
        let ring_len32 = ring_len as u32;

        let mut queued = self.load_queued()?;
        if !self.has_room(queued, ring_len) {
            if !self.ring.pending_send_supported()? {
                return Err(RingError::Full);
            }
            self.ring
                .word(PENDING_SEND_SZ_OFFSET)?
                .store(ring_len32, Ordering::SeqCst);
            self.pending_set = true;
            // The reader may have freed space between our look and the store above without
            // seeing the request; look again after it.
            fence(Ordering::SeqCst);
            queued = self.load_queued()?;
            if !self.has_room(queued, ring_len) {
                return Err(RingError::Full);
            }
        }

        let start = self.write_index;
        self.scratch.clear();
        self.scratch.resize(ring_len, 0);
        let packet_len =
            vmbus::write_inband(&mut self.scratch, payload, trans_id, 0).map_err(|_| {
                RingError::TooLarge {
                    payload_len: payload.len(),
                    max_payload,
                }
            })?;
        if let Some(t) = self.scratch.get_mut(packet_len..) {
            t.copy_from_slice(&vmbus::trailer(start).to_le_bytes());
        }
        self.ring.copy_in(start, &self.scratch)?;
        if self.pending_set {
            self.ring
                .word(PENDING_SEND_SZ_OFFSET)?
                .store(0, Ordering::Relaxed);
            self.pending_set = false;
        }
        let next = vmbus::advance_index(start, ring_len32, self.ring.data_size())
            .map_err(|e| self.fail(Corruption::Index(e)))?;
        // Publishes the packet bytes with it.
        self.ring
            .word(WRITE_INDEX_OFFSET)?
            .store(next, Ordering::Release);
        self.write_index = next;
        self.queued = queued + ring_len32;

        fence(Ordering::SeqCst);
        if self
            .ring
            .word(INTERRUPT_MASK_OFFSET)?
            .load(Ordering::Acquire)
            != 0
        {
            return Ok(Signal::Quiet);
        }
        let read_index = self.ring.word(READ_INDEX_OFFSET)?.load(Ordering::Acquire);
        Ok(if read_index == start {
            Signal::Peer
        } else {
            Signal::Quiet
        })
    }

    /// Bytes free for packets now (a packet needs strictly more than its ring length).
    pub fn free_bytes(&mut self) -> Result<u32, RingError> {
        if let Some(cause) = self.failed {
            return Err(RingError::Corrupt { cause });
        }
        let queued = self.load_queued()?;
        Ok(self.ring.data_size() - queued)
    }
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct Reader {
    ring: RingBuffer,
    read_index: u32,
    /// Lower bound on the bytes queued: the writer can only add to it.
    readable: u32,
    failed: Option<Corruption>,
}

impl Reader {
    /// Takes the consuming end of `ring`, from the indices it holds now (zero for a fresh
    /// ring).
    pub fn new(ring: RingBuffer) -> Result<Self, RingError> {
        let write_index = ring.word(WRITE_INDEX_OFFSET)?.load(Ordering::Acquire);
        let read_index = ring.word(READ_INDEX_OFFSET)?.load(Ordering::Acquire);
        let readable = vmbus::bytes_available_to_read(write_index, read_index, ring.data_size())
            .map_err(|e| RingError::Corrupt {
                cause: Corruption::Index(e),
            })?;
        Ok(Self {
            ring,
            read_index,
            readable,
            failed: None,
        })
    }

    /// The ring.
    pub fn ring(&self) -> &RingBuffer {
        &self.ring
    }

    fn fail(&mut self, cause: Corruption) -> RingError {
        self.failed = Some(cause);
        RingError::Corrupt { cause }
    }

    /// Bytes queued now, from the writer's current index.
    pub fn bytes_queued(&mut self) -> Result<u32, RingError> {
        if let Some(cause) = self.failed {
            return Err(RingError::Corrupt { cause });
        }
        let write_index = self.ring.word(WRITE_INDEX_OFFSET)?.load(Ordering::Acquire);
        let readable = match vmbus::bytes_available_to_read(
            write_index,
            self.read_index,
            self.ring.data_size(),
        ) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(Corruption::Index(e))),
        };
        if readable < self.readable {
            return Err(self.fail(Corruption::WriteIndexRetreated {
                readable,
                known: self.readable,
            }));
        }
        self.readable = readable;
        Ok(readable)
    }

    /// Reads the next packet into `buf` (reused between calls), following the procedure of
    /// the `ballast_abi::vmbus` module doc. `None` when the ring is empty. With the packet
    /// comes whether the writer must be signalled.
    pub fn try_read<'a>(
        &mut self,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<(ReadPacket<'a>, Signal)>, RingError> {
        let readable = self.bytes_queued()?;
        if readable == 0 {
            return Ok(None);
        }
        let start = self.read_index;

        // Fewer than DESCRIPTOR_LEN bytes queued is itself a malformed packet; copy what
        // there is and let `peek` say so.
        let mut head = [0u8; DESCRIPTOR_LEN];
        let head_len = (readable as usize).min(DESCRIPTOR_LEN);
        let head_bytes = head.get_mut(..head_len).unwrap_or_default();
        self.ring.copy_out(start, head_bytes)?;
        let desc = PacketDescriptor::peek(head_bytes)
            .and_then(|d| d.validate().map(|()| d))
            .and_then(|d| d.check_queued(readable).map(|()| d))
            .map_err(|e| self.fail(Corruption::Packet(e)))?;
        let ring_len = desc.ring_len();

        buf.clear();
        buf.resize(ring_len, 0);
        self.ring.copy_out(start, buf)?;
        let copy: &'a [u8] = buf;
        let packet =
            Packet::parse_with_trailer(copy).map_err(|e| self.fail(Corruption::Packet(e)))?;
        if packet.total_len != ring_len {
            return Err(self.fail(Corruption::Rewritten {
                peeked: ring_len,
                copied: packet.total_len,
            }));
        }
        // At most `readable`, itself below data_size.
        let consumed = ring_len as u32;
        let next = vmbus::advance_index(start, consumed, self.ring.data_size())
            .map_err(|e| self.fail(Corruption::Index(e)))?;
        // Our copies out of the packet complete before the writer may reuse its space.
        self.ring
            .word(READ_INDEX_OFFSET)?
            .store(next, Ordering::Release);
        self.read_index = next;
        self.readable = readable - consumed;

        fence(Ordering::SeqCst);
        let signal = self.writer_signal(consumed)?;
        Ok(Some((
            ReadPacket {
                ty: packet.ty,
                flags: packet.flags,
                trans_id: packet.trans_id,
                payload: packet.payload,
            },
            signal,
        )))
    }

    /// Whether freeing `consumed` bytes just satisfied a blocked writer.
    fn writer_signal(&self, consumed: u32) -> Result<Signal, RingError> {
        if !self.ring.pending_send_supported()? {
            return Ok(Signal::Quiet);
        }
        let pending = self
            .ring
            .word(PENDING_SEND_SZ_OFFSET)?
            .load(Ordering::SeqCst);
        if pending == 0 {
            return Ok(Signal::Quiet);
        }
        // The freshest free space; a bad index here is left for the next read to report.
        let write_index = self.ring.word(WRITE_INDEX_OFFSET)?.load(Ordering::Acquire);
        let readable =
            vmbus::bytes_available_to_read(write_index, self.read_index, self.ring.data_size())
                .unwrap_or(self.readable);
        let free_now = self.ring.data_size() - readable;
        let free_before = free_now.saturating_sub(consumed);
        Ok(if free_now > pending && free_before <= pending {
            Signal::Peer
        } else {
            Signal::Quiet
        })
    }

    /// Asks the writer not to signal while this reader drains the ring anyway.
    pub fn mask_interrupts(&self) -> Result<(), RingError> {
        self.ring
            .word(INTERRUPT_MASK_OFFSET)?
            .store(1, Ordering::SeqCst);
        Ok(())
    }

    /// Lets the writer signal again. Returns whether packets are queued: a writer that
    /// published while the mask was set did not signal, so the reader must drain again
    /// before it waits.
    pub fn unmask_interrupts(&mut self) -> Result<bool, RingError> {
        self.ring
            .word(INTERRUPT_MASK_OFFSET)?
            .store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Ok(self.bytes_queued()? > 0)
    }
}

#[cfg(test)]
mod tests;
