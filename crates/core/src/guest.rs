//! Guest memory as the dispatchers see it: the bytes behind guest handles (Xen) and
//! hypercall parameter pages (Hyper-V).
//!
//! The trait sits on the consumer side, so one dispatcher serves an in-process caller, a
//! C caller through a shim, and a KVM guest whose memory the VMM maps.

use thiserror::Error;

/// Why a guest access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestFaultKind {
    /// The range lies in the caller's address space but cannot be accessed (unmapped,
    /// not readable or not writable).
    Unreadable,
    /// The range reaches beyond the caller's guest physical address space. The TLFS
    /// ("Hypercall Interface", common status codes) answers a parameter GPA outside the
    /// GPA space with HV_STATUS_INVALID_ALIGNMENT, not with the status of a failed read.
    OutsideGpaSpace,
}

/// A guest address that cannot be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest access of {len} bytes at {addr:#x} faulted ({kind:?})")]
pub struct GuestFault {
    /// The address.
    pub addr: u64,
    /// The length of the access.
    pub len: u64,
    /// Why.
    pub kind: GuestFaultKind,
}

impl GuestFault {
    /// An access inside the address space that cannot be made.
    pub const fn unreadable(addr: u64, len: u64) -> Self {
        GuestFault {
            addr,
            len,
            kind: GuestFaultKind::Unreadable,
        }
    }

    /// An access that reaches beyond the guest physical address space.
    pub const fn outside_gpa_space(addr: u64, len: u64) -> Self {
        GuestFault {
            addr,
            len,
            kind: GuestFaultKind::OutsideGpaSpace,
        }
    }
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

    /// Why `len` bytes at `addr` cannot be accessed, or `Ok` if they can. The default
    /// knows no address-space bound and calls every failure
    /// [`Unreadable`](GuestFaultKind::Unreadable); a memory that knows the caller's GPA
    /// space says [`OutsideGpaSpace`](GuestFaultKind::OutsideGpaSpace) beyond it.
    fn probe(&self, addr: u64, len: u64) -> Result<(), GuestFault> {
        if self.range_ok(addr, len) {
            Ok(())
        } else {
            Err(GuestFault::unreadable(addr, len))
        }
    }

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
///
/// Addresses outside the buffer are unreadable; those at or beyond `gpa_space_end` are
/// outside the caller's GPA space ([`GuestFaultKind::OutsideGpaSpace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatMemory {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// The memory.
    pub bytes: Vec<u8>,
    /// The end of the caller's GPA space (exclusive); `u64::MAX` (the default) for no
    /// bound, so that Xen guest handles (virtual addresses) anywhere are merely unmapped.
    pub gpa_space_end: u64,
}

impl Default for FlatMemory {
    fn default() -> Self {
        FlatMemory::new(0, 0)
    }
}

impl FlatMemory {
    /// `len` zero bytes at `base`, in an unbounded address space.
    pub fn new(base: u64, len: usize) -> Self {
        FlatMemory {
            base,
            bytes: vec![0; len],
            gpa_space_end: u64::MAX,
        }
    }

    /// The same memory in a GPA space that ends at `end` (exclusive), for example
    /// `1 << 46` for a partition with a 46-bit physical address width.
    pub fn with_gpa_space_end(mut self, end: u64) -> Self {
        self.gpa_space_end = end;
        self
    }

    fn span(&self, addr: u64, len: u64) -> Option<core::ops::Range<usize>> {
        let off = addr.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        (end <= self.bytes.len() as u64).then_some(off as usize..end as usize)
    }

    fn fault(&self, addr: u64, len: u64) -> GuestFault {
        match addr.checked_add(len) {
            Some(end) if end <= self.gpa_space_end => GuestFault::unreadable(addr, len),
            _ => GuestFault::outside_gpa_space(addr, len),
        }
    }
}

impl GuestMemory for FlatMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestFault> {
        let len = buf.len() as u64;
        let r = self.span(addr, len).ok_or_else(|| self.fault(addr, len))?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), GuestFault> {
        let len = buf.len() as u64;
        let r = self.span(addr, len).ok_or_else(|| self.fault(addr, len))?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }

    fn range_ok(&self, addr: u64, len: u64) -> bool {
        self.span(addr, len).is_some()
    }

    fn probe(&self, addr: u64, len: u64) -> Result<(), GuestFault> {
        match self.span(addr, len) {
            Some(_) => Ok(()),
            None => Err(self.fault(addr, len)),
        }
    }

    // Guest lists are read one u64 at a time: a fixed-size copy, not a memmove call.
    fn read_u64(&self, addr: u64) -> Result<u64, GuestFault> {
        let r = self.span(addr, 8).ok_or_else(|| self.fault(addr, 8))?;
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
        assert_eq!(
            m.probe(0x2000, 8).unwrap_err().kind,
            GuestFaultKind::Unreadable
        );
        let m = m.with_gpa_space_end(0x2000);
        assert_eq!(
            m.probe(0x1FF8, 16).unwrap_err().kind,
            GuestFaultKind::OutsideGpaSpace
        );
        assert_eq!(
            m.probe(0x1FF8, 8).unwrap_err().kind,
            GuestFaultKind::Unreadable
        );
        assert_eq!(
            m.read_u64(u64::MAX - 3).unwrap_err().kind,
            GuestFaultKind::OutsideGpaSpace
        );
        assert!(m.probe(0x1008, 8).is_ok());
    }
}
