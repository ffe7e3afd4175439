//! Byte-exact wire formats of the three interfaces ballast implements, and of the VMBus
//! packets and rings that carry Dynamic Memory.
//!
//! `ballast-abi` turns bytes into typed values and back. It keeps no state and does no
//! I/O, so every other crate (the hypervisor core, the Dynamic Memory endpoints, the
//! fuzz targets) shares one definition of every bit.
//!
//! | module | interface | follows |
//! |---|---|---|
//! | [`hv`] | Hyper-V partition memory-pool and lifecycle hypercalls | the TLFS (hypercall interface; HvGetMemoryBalance, HvWithdrawMemory, HvCreateVp; TLFS 2.0A partition management and memory pools); Linux `drivers/hv/mshv_root_hv_call.c` |
//! | [`xen`] | Xen `memory_op` (XENMEM_*) | Xen `xen/include/public/memory.h` (4.17; x86_64 layouts) |
//! | [`dm`] | Hyper-V Dynamic Memory messages | the protocol header, QEMU `include/hw/hyperv/dynmem-proto.h` (from Linux `drivers/hv/hv_balloon.c`) |
//! | [`types`] | the shared vocabulary: partition and domain ids, gfns, checked gfn ranges, "no such partition" | ballast's own |
//! | [`vmbus`] | VMBus packet descriptors and ring control pages | Linux `drivers/hv/ring_buffer.c`, `include/linux/hyperv.h` |
//!
//! # Conventions
//! - Every wire struct is `#[repr(C)]`, derives the zerocopy traits and has its size
//!   asserted at compile time. Reserved fields are spelled out, never left as implicit
//!   padding, so a struct reads top to bottom like the table it comes from.
//! - Codes are open enums (newtypes over the wire integer): an unknown value stays
//!   representable and is rejected by whoever interprets it, not by the decoder.
//! - Every decoder is total: arbitrary bytes give an error value, never a panic.
//! - The Hyper-V and Xen structs are the x86_64 in-memory ABIs and use native integers, as
//!   the C headers do; the Dynamic Memory and VMBus formats are packed, unaligned
//!   little-endian byte streams and use zerocopy's little-endian types, so they can be
//!   read in place from any offset of a ring.
//!
//! # Examples
//!
//! A Linux root's fast HvInitializePartition, through the generic checks:
//!
//! ```
//! use ballast_abi::hv::{DecodeOptions, HvCall, HvError, decode};
//!
//! let rdx = 7u64.to_le_bytes();
//! let d = decode(0x0001_0041, &rdx, DecodeOptions::default()).unwrap();
//! assert!(matches!(d.call, HvCall::InitializePartition(i) if i.partition_id == 7));
//! // A reserved control bit is refused before the input is looked at.
//! let e = decode(0x0001_0041 | 1 << 63, &[], DecodeOptions::default()).unwrap_err();
//! assert_eq!(e, HvError::INVALID_HYPERCALL_INPUT);
//! ```
//!
//! A Xen `memory_op` command word resuming `populate_physmap` at extent 5:
//!
//! ```
//! use ballast_abi::xen::{MemoryOp, MemoryOpCmd};
//!
//! let cmd = MemoryOpCmd::decode(0x146);
//! assert_eq!((cmd.op, cmd.start_extent), (MemoryOp::POPULATE_PHYSMAP, 5));
//! ```
//!
//! A Dynamic Memory balloon response inside a VMBus in-band packet:
//!
//! ```
//! use ballast_abi::dm::{Body, Message, PageRange};
//! use ballast_abi::vmbus::{Packet, write_inband};
//!
//! let ranges = [PageRange::try_new(0x12345, 512).unwrap()];
//! let msg = Message::new(5, Body::BalloonResponse { more_pages: false, ranges: &ranges });
//! let mut dm = [0u8; 64];
//! let n = msg.write(&mut dm).unwrap();
//! let mut pkt = [0u8; 128];
//! let len = write_inband(&mut pkt, &dm[..n], 0, 0).unwrap();
//! let payload = Packet::parse(&pkt[..len]).unwrap().payload;
//! assert_eq!(Message::parse(payload).unwrap(), msg);
//! ```
//!
//! # Deliberate deviations
//! - [`dm::Message::parse`] takes a message's length from `hdr.size`, not from the VMBus
//!   payload length, because VMBus pads payloads to 8 bytes; `hdr.size` beyond the bytes
//!   given is an error. QEMU uses the payload length and ignores `hdr.size`.
//! - [`hv::HvCreateVp`] is the TLFS 2.0 32-byte form; the 40-byte form Linux's mshv driver
//!   writes is [`hv::HvCreateVpV2`]. The bytes cannot tell them apart, so the host picks.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "ballast-abi describes little-endian x86_64 ABIs; big-endian hosts are not supported"
);

pub mod dm;
pub mod hv;
pub mod types;
pub mod vmbus;
pub mod xen;

/// Size of a Hyper-V / Xen / x86 page, in bytes.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
