//! One partition's guest memory: a memfd, mapped shared into this process.
//!
//! The bytes of gfn `g` live at offset `g * 4096` of the memfd. The file is sparse: it has
//! a size (the guest's physical address space so far) but only touched pages use memory.
//! The mapping sits at the start of a virtual address reservation as large as the guest
//! may ever grow, so a hot-add extends it in place and the base pointer a VMM gave to KVM
//! never moves.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{FallocateFlags, MemfdFlags, SeekFrom};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use ballast_abi::PAGE_SHIFT;
use ballast_abi::types::{GFN_LIMIT, PAGE_BYTES, gfn_to_bytes};

use crate::BackingError;
use crate::ranges::{GfnRange, merge, subtract};

/// The largest guest space: every gfn is below `GFN_LIMIT`, so no byte of a partition's
/// memory lies at or beyond 2^52, and every gfn range of it converts to bytes exactly.
const MAX_GUEST_BYTES: u64 = GFN_LIMIT << PAGE_SHIFT;

/// The page size the memfd is backed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PageSize {
    /// Ordinary shmem pages (4 KiB).
    #[default]
    Base,
    /// hugetlbfs 2 MiB pages (`MFD_HUGETLB | MFD_HUGE_2MB`); needs pages reserved in
    /// `/proc/sys/vm/nr_hugepages`.
    Huge2M,
}

impl PageSize {
    /// Bytes per page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Base => PAGE_BYTES,
            PageSize::Huge2M => 2 << 20,
        }
    }

    /// Gfns per page.
    pub const fn gfns(self) -> u64 {
        self.bytes() / PAGE_BYTES
    }
}

/// What a discard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscardStats {
    /// Ranges the caller passed.
    pub ranges_in: usize,
    /// Hole-punching syscalls made (one per merged range).
    pub syscalls: usize,
    /// Bytes of the punched ranges covering whole pages (ranges that were already holes
    /// count too: the kernel does not say which bytes it freed).
    pub bytes_released: u64,
    /// Bytes zeroed in place instead (partial huge pages), which stay resident.
    pub bytes_zeroed: u64,
}

/// The result of an audit: resident memory that no mapped gfn explains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditReport {
    /// Resident gfn ranges of the memfd.
    pub resident: Vec<GfnRange>,
    /// Resident ranges outside every mapped gfn: memory the partition holds but does not
    /// own, such as a guest touching pages it ballooned away.
    pub violations: Vec<GfnRange>,
}

impl AuditReport {
    /// Gfns in violation.
    pub fn violating_gfns(&self) -> u64 {
        self.violations.iter().map(|r| r.count()).sum()
    }
}

/// A partition's guest memory.
#[derive(Debug)]
pub struct PartitionMemory {
    fd: OwnedFd,
    /// Start of guest memory (2 MiB-aligned for hugetlb).
    base: NonNull<u8>,
    /// Bytes of guest space the reservation can hold.
    reserved: usize,
    /// The whole anonymous reservation, for munmap (it may start below `base`).
    reservation: (NonNull<u8>, usize),
    size: u64,
    page_size: PageSize,
}

// SAFETY: the struct owns the memfd and the mapping; every method either makes syscalls on
// them or copies bytes through the mapping, and shared guest memory is meant to be reached
// from several threads (the bytes may change under a reader, which only ever copies them).
unsafe impl Send for PartitionMemory {}
// SAFETY: as for Send: no method hands out references into the mapping.
unsafe impl Sync for PartitionMemory {}

fn check_multiple(what: &'static str, value: u64, page: PageSize) -> Result<(), BackingError> {
    if value % page.bytes() != 0 {
        return Err(BackingError::Unaligned {
            what,
            value,
            page_bytes: page.bytes(),
        });
    }
    Ok(())
}

impl PartitionMemory {
    /// A memfd named `name` of `size` bytes, in a reservation of `max_size` bytes of
    /// address space. Both must be multiples of the page size, and `max_size` at most
    /// 2^52 (the gfn limit's bytes: larger guest spaces have gfns no range can name).
    pub fn new(
        name: &str,
        size: u64,
        max_size: u64,
        page_size: PageSize,
    ) -> Result<Self, BackingError> {
        check_multiple("size", size, page_size)?;
        check_multiple("max_size", max_size, page_size)?;
        if size > max_size {
            return Err(BackingError::TooLarge { size, max_size });
        }
        if max_size > MAX_GUEST_BYTES {
            return Err(BackingError::TooLarge {
                size: max_size,
                max_size: MAX_GUEST_BYTES,
            });
        }
        // Sealable, so the size can be sealed against shrinking: whoever else holds the fd
        // (a VMM, KVM) could otherwise truncate it under our mapping and turn every later
        // access into SIGBUS.
        let flags = match page_size {
            PageSize::Base => MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            PageSize::Huge2M => {
                MemfdFlags::CLOEXEC
                    | MemfdFlags::ALLOW_SEALING
                    | MemfdFlags::HUGETLB
                    | MemfdFlags::HUGE_2MB
            }
        };
        let fd = rustix::fs::memfd_create(name, flags).map_err(|e| match (page_size, e) {
            (PageSize::Huge2M, Errno::INVAL | Errno::NOENT | Errno::NOSYS) => {
                BackingError::NoHugePages(e)
            }
            _ => BackingError::Syscall("memfd_create", e),
        })?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| BackingError::Syscall("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK)
            .map_err(|e| BackingError::Syscall("fcntl(F_ADD_SEALS)", e))?;
        Self::map_fd(fd, size, max_size, page_size)
    }

    /// Takes over guest memory that already exists: the memfd a guest kept while its host
    /// process restarted, with its contents. The file must be a shmem memfd of 4 KiB pages
    /// sealed against shrinking (every memfd [`new`](Self::new) makes is), whose size is
    /// a page multiple no larger than `max_size`; it is mapped as `new` maps a fresh one.
    pub fn adopt(fd: OwnedFd, max_size: u64) -> Result<Self, BackingError> {
        let page_size = PageSize::Base;
        crate::shared::check_shmem_fd(fd.as_fd())?;
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| BackingError::Syscall("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(BackingError::Syscall(
                "fcntl(F_GET_SEALS) (not sealed against shrinking)",
                Errno::INVAL,
            ));
        }
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| BackingError::Syscall("fstat", e))?
            .st_size;
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        check_multiple("size", size, page_size)?;
        check_multiple("max_size", max_size, page_size)?;
        if size > max_size || max_size > MAX_GUEST_BYTES {
            return Err(BackingError::TooLarge { size, max_size });
        }
        Self::map_fd(fd, size, max_size, page_size)
    }

    /// Reserves `max_size` bytes of address space and maps `size` bytes of `fd` at its
    /// start (checked by the callers: page multiples, `size <= max_size <= MAX_GUEST_BYTES`,
    /// the file sealed against shrinking and `size` long).
    fn map_fd(
        fd: OwnedFd,
        size: u64,
        max_size: u64,
        page_size: PageSize,
    ) -> Result<Self, BackingError> {
        let reserved = usize::try_from(max_size)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(BackingError::TooLarge { size, max_size })?;
        // hugetlb mappings must start on a huge page boundary, which an anonymous mapping
        // only guarantees by luck: reserve one page more and align inside it.
        let align = page_size.bytes() as usize;
        let total = reserved
            .get()
            .checked_add(align)
            .ok_or(BackingError::TooLarge { size, max_size })?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks, with no
        // access: it only reserves address space and aliases nothing.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| BackingError::Syscall("mmap (reserve)", e))?;
        let raw = NonNull::new(raw.cast::<u8>()).expect("mmap never returns null on success");
        let skip = (raw.as_ptr() as usize).next_multiple_of(align) - raw.as_ptr() as usize;
        // SAFETY: `skip < align`, so `raw + skip` stays inside the `total`-byte reservation.
        let base = unsafe { raw.add(skip) };
        let mem = PartitionMemory {
            fd,
            base,
            reserved: reserved.get(),
            reservation: (raw, total),
            size: 0,
            page_size,
        };
        let mut mem = mem;
        mem.map_range(0, size)?;
        mem.size = size;
        Ok(mem)
    }

    /// Maps `[from, to)` of the file over the same part of the reservation.
    fn map_range(&mut self, from: u64, to: u64) -> Result<(), BackingError> {
        if to == from {
            return Ok(());
        }
        // `to <= reserved` was checked by every caller, so both fit in usize.
        let (off, len) = (from as usize, (to - from) as usize);
        // SAFETY: `[base + off, base + off + len)` lies inside the reservation this struct
        // owns (to <= max_size), which holds nothing that anyone references: MAP_FIXED
        // replaces only our own PROT_NONE pages (or, on grow, pages past the old size).
        unsafe {
            rustix::mm::mmap(
                self.base.as_ptr().add(off).cast(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &self.fd,
                from,
            )
        }
        .map_err(|e| BackingError::Syscall("mmap (memfd)", e))?;
        Ok(())
    }

    /// Grows the guest space to `new_size` bytes (hot-add). Shrinking is not supported:
    /// hot-removed memory is discarded, not truncated.
    pub fn grow(&mut self, new_size: u64) -> Result<(), BackingError> {
        check_multiple("new_size", new_size, self.page_size)?;
        if new_size > self.reserved as u64 {
            return Err(BackingError::TooLarge {
                size: new_size,
                max_size: self.reserved as u64,
            });
        }
        if new_size <= self.size {
            return Ok(());
        }
        rustix::fs::ftruncate(&self.fd, new_size)
            .map_err(|e| BackingError::Syscall("ftruncate", e))?;
        self.map_range(self.size, new_size)?;
        self.size = new_size;
        Ok(())
    }

    /// Bytes of guest physical space.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Gfns of guest physical space.
    pub fn gfns(&self) -> u64 {
        self.size / PAGE_BYTES
    }

    /// The page size.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The memfd, e.g. to share with another process or register with KVM.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Start of the mapping: gfn `g` is at `host_address() + g * 4096`.
    pub fn host_address(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn check_span(&self, offset: u64, len: usize) -> Result<(), BackingError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BackingError::OutOfRange {
                offset,
                len: len as u64,
                size: self.size,
            }),
        }
    }

    /// Copies guest bytes at byte `offset` into `buf`.
    ///
    /// Reads through the file, not the mapping, so reading a hole returns zeros without
    /// allocating a page for it.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackingError> {
        self.check_span(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = rustix::io::pread(&self.fd, &mut buf[done..], offset + done as u64)
                .map_err(|e| BackingError::Syscall("pread", e))?;
            if n == 0 {
                // Inside the file size a short read only happens at EOF, which check_span
                // excludes; treat it as zeros rather than loop forever.
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Copies `buf` into guest memory at byte `offset`, as the guest writing there would.
    ///
    /// Base pages are written through the file (`pwrite`). hugetlbfs has no `write`, so
    /// there the covering huge pages are allocated first (`fallocate`: a pool that ran dry
    /// gives an error here instead of SIGBUS at the first touch) and the bytes are stored
    /// through the mapping one atomic byte at a time, so concurrent writers never race.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), BackingError> {
        self.check_span(offset, buf.len())?;
        match self.page_size {
            PageSize::Base => {
                let mut done = 0usize;
                while done < buf.len() {
                    let n = rustix::io::pwrite(&self.fd, &buf[done..], offset + done as u64)
                        .map_err(|e| BackingError::Syscall("pwrite", e))?;
                    if n == 0 {
                        return Err(BackingError::Syscall("pwrite", Errno::IO));
                    }
                    done += n;
                }
            }
            PageSize::Huge2M => {
                if buf.is_empty() {
                    return Ok(());
                }
                let page = self.page_size.bytes();
                let start = offset / page * page;
                let end = (offset + buf.len() as u64).div_ceil(page) * page;
                rustix::fs::fallocate(&self.fd, FallocateFlags::KEEP_SIZE, start, end - start)
                    .map_err(|e| BackingError::Syscall("fallocate (hugetlb)", e))?;
                // SAFETY: `[offset, offset + len)` is inside the mapped size (checked above)
                // and the mapping lives as long as `self`; AtomicU8 has the size and
                // alignment of u8, and every access to these bytes from this process goes
                // through atomics, so the shared slice aliases no plain reference.
                let dst = unsafe {
                    std::slice::from_raw_parts(
                        self.base.as_ptr().add(offset as usize).cast::<AtomicU8>(),
                        buf.len(),
                    )
                };
                for (d, &b) in dst.iter().zip(buf) {
                    d.store(b, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Copies the page at gfn `from` to gfn `to` (a page moving inside the guest's physical
    /// space). A source that reads as zero is not written but the destination punched, so
    /// it reads zero without becoming resident.
    pub fn copy_page(&self, from: u64, to: u64) -> Result<(), BackingError> {
        let mut page = vec![0u8; PAGE_BYTES as usize];
        self.read(self.page_offset(from)?, &mut page)?;
        if page.iter().any(|&b| b != 0) {
            self.write(self.page_offset(to)?, &page)
        } else {
            match GfnRange::page(to) {
                Ok(r) => self.discard(&[r]).map(|_| ()),
                // Beyond every guest space: nothing there to punch, as `discard` ignores
                // gfns beyond the space.
                Err(_) => Ok(()),
            }
        }
    }

    /// The byte offset of page `gfn`, or `OutOfRange` (with the offset saturated) if no
    /// guest space reaches it.
    pub fn page_offset(&self, gfn: u64) -> Result<u64, BackingError> {
        gfn_to_bytes(gfn).ok_or(BackingError::OutOfRange {
            offset: gfn.saturating_mul(PAGE_BYTES),
            len: PAGE_BYTES,
            size: self.size,
        })
    }

    /// Releases the memory behind the given gfn ranges back to the host kernel, so they
    /// read as zero and stop counting as resident.
    ///
    /// The ranges are sorted and merged first (overlaps and neighbours become one range),
    /// then each merged range is one `fallocate(PUNCH_HOLE | KEEP_SIZE)`: on shmem and
    /// hugetlbfs that frees the pages; `MADV_DONTNEED` would only drop this process's page
    /// table entries and free nothing. Gfns beyond the guest space are ignored.
    ///
    /// With 2 MiB pages only whole huge pages can be freed. The kernel (6.2 and later)
    /// zeroes the covered part of a partly covered huge page in place, which keeps the zero
    /// guarantee while the page stays resident for its other gfns; those bytes are counted
    /// as zeroed, not released.
    pub fn discard(&self, ranges: &[GfnRange]) -> Result<DiscardStats, BackingError> {
        let mut v = ranges.to_vec();
        self.discard_in_place(&mut v)
    }

    /// [`discard`](Self::discard), reusing the caller's vector for the sort and merge.
    pub fn discard_in_place(
        &self,
        ranges: &mut Vec<GfnRange>,
    ) -> Result<DiscardStats, BackingError> {
        let mut stats = DiscardStats {
            ranges_in: ranges.len(),
            ..Default::default()
        };
        let limit = self.gfns();
        let per_page = self.page_size.gfns();
        for r in merge(ranges).iter() {
            let r = r.clamp_end(limit);
            if r.is_empty() {
                continue;
            }
            self.punch(r)?;
            stats.syscalls += 1;
            // Whole pages inside the range are freed; partial pages at either edge are
            // only zeroed.
            let inner_start = r.start().div_ceil(per_page) * per_page;
            let inner_end = (r.end() / per_page) * per_page;
            let released = GfnRange::from_bounds(inner_start, inner_end).unwrap_or_default();
            stats.bytes_released += released.byte_len();
            stats.bytes_zeroed += r.byte_len() - released.byte_len();
        }
        Ok(stats)
    }

    fn punch(&self, r: GfnRange) -> Result<(), BackingError> {
        rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            r.byte_offset(),
            r.byte_len(),
        )
        .map_err(|e| BackingError::Syscall("fallocate(PUNCH_HOLE)", e))
    }

    /// Bytes of memory the memfd holds (its allocated blocks).
    pub fn resident_bytes(&self) -> Result<u64, BackingError> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| BackingError::Syscall("fstat", e))?;
        Ok(st.st_blocks as u64 * 512)
    }

    /// The resident gfn ranges, from `SEEK_DATA` / `SEEK_HOLE` (4 KiB backing only:
    /// hugetlbfs reports its whole file as data).
    pub fn resident_ranges(&self) -> Result<Vec<GfnRange>, BackingError> {
        if self.page_size != PageSize::Base {
            return Err(BackingError::AuditUnsupported);
        }
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let data = match rustix::fs::seek(&self.fd, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break,
                Err(e) => return Err(BackingError::Syscall("lseek(SEEK_DATA)", e)),
            };
            let hole = rustix::fs::seek(&self.fd, SeekFrom::Hole(data))
                .map_err(|e| BackingError::Syscall("lseek(SEEK_HOLE)", e))?
                .min(self.size);
            let (s, e) = (data / PAGE_BYTES, hole.div_ceil(PAGE_BYTES));
            // `hole <= size <= MAX_GUEST_BYTES`, so the range is within the gfn limit.
            if e > s {
                if let Ok(r) = GfnRange::from_bounds(s, e) {
                    out.push(r);
                }
            }
            pos = hole.max(data + 1);
        }
        Ok(out)
    }

    /// Finds resident memory outside `mapped` (sorted or not, overlapping or not): every
    /// byte a partition holds that its p2m does not account for.
    pub fn audit(&self, mapped: &[GfnRange]) -> Result<AuditReport, BackingError> {
        let resident = self.resident_ranges()?;
        let mut keep = mapped.to_vec();
        let keep = merge(&mut keep);
        let violations = subtract(&resident, keep);
        Ok(AuditReport {
            resident,
            violations,
        })
    }

    /// Audits, then discards every violation. Returns the report of what was found.
    pub fn audit_and_repair(&self, mapped: &[GfnRange]) -> Result<AuditReport, BackingError> {
        let report = self.audit(mapped)?;
        self.discard(&report.violations)?;
        Ok(report)
    }
}

impl Drop for PartitionMemory {
    fn drop(&mut self) {
        let (ptr, len) = self.reservation;
        // SAFETY: the reservation was mapped by `new` with this pointer and length and is
        // unmapped exactly once, here; nothing can reference it after `self` is gone.
        let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pattern(gfn: u64) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (gfn as u8).wrapping_mul(31).wrapping_add(i as u8) | 1;
        }
        p
    }

    fn touch(m: &PartitionMemory, gfns: impl IntoIterator<Item = u64>) {
        for g in gfns {
            m.write(g * PAGE_BYTES, &pattern(g)).unwrap();
        }
    }

    fn read_page(m: &PartitionMemory, gfn: u64) -> Vec<u8> {
        let mut b = vec![0xEE; 4096];
        m.read(gfn * PAGE_BYTES, &mut b).unwrap();
        b
    }

    #[test]
    fn discard_releases_memory_and_reads_zero() {
        let m = PartitionMemory::new("t", 8 * MIB, 16 * MIB, PageSize::Base).unwrap();
        assert_eq!(m.resident_bytes().unwrap(), 0);
        touch(&m, 0..1024);
        assert_eq!(m.resident_bytes().unwrap(), 4 * MIB);
        assert_eq!(read_page(&m, 5), pattern(5));
        // Pages given in scattered order, with overlaps, merge into two punches.
        let ranges: Vec<GfnRange> = (0..256u64)
            .rev()
            .map(|g| GfnRange::new(g, 1).unwrap())
            .chain([
                GfnRange::new(512, 256).unwrap(),
                GfnRange::new(600, 10).unwrap(),
                GfnRange::new(100, 5).unwrap(),
            ])
            .collect();
        let stats = m.discard(&ranges).unwrap();
        assert_eq!(stats.syscalls, 2);
        assert_eq!(stats.ranges_in, 259);
        assert_eq!(stats.bytes_released, 512 * PAGE_BYTES);
        assert_eq!(m.resident_bytes().unwrap(), 4 * MIB - 512 * PAGE_BYTES);
        assert_eq!(read_page(&m, 5), vec![0; 4096]);
        assert_eq!(read_page(&m, 600), vec![0; 4096]);
        assert_eq!(read_page(&m, 256), pattern(256));
        // Reading a hole through the file does not make it resident.
        assert_eq!(m.resident_bytes().unwrap(), 4 * MIB - 512 * PAGE_BYTES);
        // Beyond the guest space: ignored, not an error.
        assert_eq!(
            m.discard(&[GfnRange::new(1 << 30, 4).unwrap()])
                .unwrap()
                .syscalls,
            0
        );
    }

    #[test]
    fn adopted_memory_keeps_its_bytes_and_only_sealed_memfds_are_adopted() {
        let m = PartitionMemory::new("a", 4 * MIB, 8 * MIB, PageSize::Base).unwrap();
        touch(&m, [0, 7]);
        let fd = m.fd().try_clone_to_owned().unwrap();
        drop(m);
        // Too small a reservation for the file.
        let small = PartitionMemory::adopt(fd.try_clone().unwrap(), 2 * MIB);
        assert!(
            matches!(small, Err(BackingError::TooLarge { .. })),
            "{small:?}"
        );
        let mut a = PartitionMemory::adopt(fd, 8 * MIB).unwrap();
        assert_eq!(a.size(), 4 * MIB);
        assert_eq!(read_page(&a, 7), pattern(7));
        assert_eq!(a.resident_bytes().unwrap(), 2 * PAGE_BYTES);
        a.grow(8 * MIB).unwrap();
        assert_eq!(read_page(&a, 0), pattern(0));
        // A memfd that can still shrink is refused: a peer could truncate it under us.
        let loose = rustix::fs::memfd_create("l", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&loose, 4 * MIB).unwrap();
        assert!(PartitionMemory::adopt(loose, 8 * MIB).is_err());
        // So is a file that is not a memfd.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(PartitionMemory::adopt(file.into(), 8 * MIB).is_err());
    }

    #[test]
    fn grow_keeps_the_base_and_the_bytes() {
        let mut m = PartitionMemory::new("g", 2 * MIB, 64 * MIB, PageSize::Base).unwrap();
        touch(&m, [3]);
        let base = m.host_address();
        assert!(m.write(2 * MIB, &[1]).is_err());
        m.grow(6 * MIB).unwrap();
        assert_eq!(m.host_address(), base);
        assert_eq!(m.gfns(), 6 * 256);
        touch(&m, [1000]);
        assert_eq!(read_page(&m, 3), pattern(3));
        assert_eq!(read_page(&m, 1000), pattern(1000));
        assert!(matches!(
            m.grow(128 * MIB),
            Err(BackingError::TooLarge { .. })
        ));
        assert!(matches!(
            m.grow(6 * MIB + 1),
            Err(BackingError::Unaligned { .. })
        ));
    }

    #[test]
    fn bounds_are_checked() {
        let m = PartitionMemory::new("b", MIB, MIB, PageSize::Base).unwrap();
        let mut buf = [0u8; 8];
        assert!(m.read(MIB - 8, &mut buf).is_ok());
        assert!(matches!(
            m.read(MIB - 4, &mut buf),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.write(u64::MAX - 2, &buf),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            PartitionMemory::new("x", 2 * MIB, MIB, PageSize::Base),
            Err(BackingError::TooLarge { .. })
        ));
        assert!(matches!(
            PartitionMemory::new("x", 100, MIB, PageSize::Base),
            Err(BackingError::Unaligned { .. })
        ));
    }

    #[test]
    fn audit_finds_planted_violations() {
        let m = PartitionMemory::new("a", 4 * MIB, 4 * MIB, PageSize::Base).unwrap();
        let mapped = [
            GfnRange::new(0, 100).unwrap(),
            GfnRange::new(200, 50).unwrap(),
        ];
        touch(&m, (0..100).chain(200..250));
        let clean = m.audit(&mapped).unwrap();
        assert!(clean.violations.is_empty(), "{clean:?}");
        assert_eq!(
            clean.resident,
            vec![
                GfnRange::new(0, 100).unwrap(),
                GfnRange::new(200, 50).unwrap()
            ]
        );
        // A guest touches pages it does not own.
        touch(&m, [150, 151, 900]);
        let report = m.audit(&mapped).unwrap();
        assert_eq!(
            report.violations,
            vec![
                GfnRange::new(150, 2).unwrap(),
                GfnRange::new(900, 1).unwrap()
            ]
        );
        assert_eq!(report.violating_gfns(), 3);
        let before = m.resident_bytes().unwrap();
        m.audit_and_repair(&mapped).unwrap();
        assert_eq!(m.resident_bytes().unwrap(), before - 3 * PAGE_BYTES);
        assert!(m.audit(&mapped).unwrap().violations.is_empty());
        assert_eq!(read_page(&m, 150), vec![0; 4096]);
        assert_eq!(read_page(&m, 50), pattern(50));
    }

    /// 2 MiB pages. `scripts/test` reserves huge pages and sets
    /// `BALLAST_REQUIRE_HUGETLB=1`; without that, a host with no huge pages must refuse
    /// with a clear error instead.
    #[test]
    fn hugetlb_backing() {
        let required = std::env::var_os("BALLAST_REQUIRE_HUGETLB").is_some();
        let m = match PartitionMemory::new("h", 8 * MIB, 8 * MIB, PageSize::Huge2M) {
            Ok(m) => m,
            Err(BackingError::NoHugePages(_)) | Err(BackingError::Syscall(_, Errno::NOMEM))
                if !required =>
            {
                return;
            }
            Err(e) => panic!("hugetlb backing: {e}"),
        };
        assert!(matches!(
            PartitionMemory::new("h2", MIB, 8 * MIB, PageSize::Huge2M),
            Err(BackingError::Unaligned { .. })
        ));
        touch(&m, [0, 512, 513, 1024]);
        assert_eq!(m.resident_bytes().unwrap(), 6 * MIB);
        // One whole huge page and a 4 KiB piece of another.
        let stats = m
            .discard(&[
                GfnRange::new(0, 512).unwrap(),
                GfnRange::new(513, 1).unwrap(),
            ])
            .unwrap();
        assert_eq!(stats.bytes_released, 2 * MIB);
        assert_eq!(stats.bytes_zeroed, 4096);
        assert_eq!(m.resident_bytes().unwrap(), 4 * MIB);
        assert_eq!(read_page(&m, 0), vec![0; 4096]);
        assert_eq!(read_page(&m, 513), vec![0; 4096]);
        assert_eq!(read_page(&m, 512), pattern(512));
        assert_eq!(m.resident_ranges(), Err(BackingError::AuditUnsupported));
    }
}
