//! The VMBus transport for [`ballast_dm`]'s sans-IO machines.
//!
//! - [`ring`]: VMBus ring buffers in shared memory with eventfd doorbells, across
//!   processes (set up over a Unix socket, [`ring::ChannelSetup`]), or in-process for the
//!   simulator and tests; a ring lies in one span of a memfd or over a GPADL's scattered
//!   pages of guest RAM the VMM already has.
//! - [`session`]: drivers that pump either machine over a ring, with an optional
//!   [`Tap`](session::Tap) on the bytes each way.
//!
//! The split follows quinn-proto and quinn: `ballast-dm` holds the protocol and no I/O,
//! this crate holds the syscalls. An embedder with its own VMBus (OpenVMM, for one) links
//! only `ballast-dm` and feeds its machines the messages its own channel carries.

#![forbid(unsafe_code)]

pub mod ring;
pub mod session;
