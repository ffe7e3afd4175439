//! Guest memory as the dispatchers see it: the bytes behind guest handles (Xen) and
//! hypercall parameter pages (Hyper-V).
//!
//! The trait sits on the consumer side, so one dispatcher serves an in-process caller, a
//! C caller through a shim, and a KVM guest whose memory the VMM maps.

use thiserror::Error;

/// A guest address that cannot be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest access of {len} bytes at {addr:#x} faulted")]
pub struct GuestFault {
    /// The address.
    pub addr: u64,
    /// The length of the access.
    pub len: u64,
}

/// Access to a caller's memory by address.
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestFault>;
    /// Writes `buf` at `addr`.
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), GuestFault>;
    /// True if `len` bytes at `addr` can be accessed (Xen's
    /// `guest_handle_subrange_okay`): callers check whole arrays before any side effect.
    fn range_ok(&self, addr: u64, len: u64) -> bool;

    /// Reads a little-endian u64.
    fn read_u64(&self, addr: u64) -> Result<u64, GuestFault> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64.
    fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), GuestFault> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// A flat buffer of guest memory starting at `base`: what tests and in-process callers use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatMemory {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// The memory.
    pub bytes: Vec<u8>,
}

impl FlatMemory {
    /// `len` zero bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        FlatMemory {
            base,
            bytes: vec![0; len],
        }
    }

    fn span(&self, addr: u64, len: u64) -> Option<core::ops::Range<usize>> {
        let off = addr.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        (end <= self.bytes.len() as u64).then_some(off as usize..end as usize)
    }
}

impl GuestMemory for FlatMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        let len = buf.len() as u64;
        let r = self.span(addr, len).ok_or(GuestFault { addr, len })?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), GuestFault> {
        let len = buf.len() as u64;
        let r = self.span(addr, len).ok_or(GuestFault { addr, len })?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }

    fn range_ok(&self, addr: u64, len: u64) -> bool {
        self.span(addr, len).is_some()
    }

    // Guest lists are read one u64 at a time: a fixed-size copy, not a memmove call.
    fn read_u64(&self, addr: u64) -> Result<u64, GuestFault> {
        let r = self.span(addr, 8).ok_or(GuestFault { addr, len: 8 })?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[r]);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_memory_bounds() {
        let mut m = FlatMemory::new(0x1000, 16);
        m.write_u64(0x1008, 7).unwrap();
        assert_eq!(m.read_u64(0x1008).unwrap(), 7);
        assert!(m.read_u64(0x1009).is_err());
        assert!(m.read_u64(0xFF8).is_err());
        assert!(!m.range_ok(u64::MAX, 2));
        assert!(m.range_ok(0x1010, 0));
    }
}
