//! Memory shared with another process: a memfd mapped read/write, `MAP_SHARED`.
//!
//! This is what VMBus rings live in. The peer on the other side of the mapping is not
//! trusted and may change any byte at any time, so the region never hands out a plain
//! `&[u8]` into the mapping: bytes come out as copies ([`SharedRegion::read`]), go in as
//! copies ([`SharedRegion::write`]), and the words both sides update concurrently are
//! reached as atomics ([`SharedRegion::atomic_u32`]).
//!
//! Every access from this process goes through an atomic type (copies are done word by
//! word with relaxed atomics), so two threads of this process sharing a region never race
//! in the Rust memory model; what the peer process does to the pages is outside it, as for
//! any memory shared with another address space.
//!
//! A region is never trusted beyond what the file held when it was mapped: a file that
//! shrinks under a mapping turns every later access to the lost pages into a `SIGBUS` in
//! this process. A memfd this crate creates ([`SharedRegion::new`]) or receives from a peer
//! process ([`SharedRegion::from_fd`]) is sealed against shrinking, so that cannot happen.
//! Guest RAM a VMM already has ([`SharedRegion::guest_ram`]) usually cannot be sealed; see
//! there for what keeps it safe.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use ballast_abi::types::PAGE_BYTES;

use crate::BackingError;

const WORD: usize = size_of::<AtomicU32>();

/// `f_type` of tmpfs/shmem, where memfds without `MFD_HUGETLB` live.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A memfd of a fixed size, mapped shared and writable into this process.
#[derive(Debug)]
pub struct SharedRegion {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    size_sealed: bool,
}

// SAFETY: the region owns its fd and its mapping, which stays valid until drop; all access
// to the mapping goes through atomics (`AtomicU8` / `AtomicU32`), so any thread may use it.
unsafe impl Send for SharedRegion {}
// SAFETY: as for Send: shared references only ever reach the mapping through atomics.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// A fresh, zeroed memfd named `name` of `len` bytes, its size sealed, mapped.
    pub fn new(name: &str, len: usize) -> Result<Self, BackingError> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| BackingError::Syscall("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| BackingError::Syscall("ftruncate", e))?;
        // Writes stay allowed: the point is to share them. GROW too, so the size a receiver
        // checks is the size for good.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| BackingError::Syscall("fcntl(F_ADD_SEALS)", e))?;
        Self::map(fd, 0, len, true)
    }

    /// Maps `len` bytes of a memfd received from elsewhere (typically over `SCM_RIGHTS`).
    ///
    /// The file must hold at least `len` bytes and must be a memfd that cannot shrink: if
    /// it is not sealed with `F_SEAL_SHRINK` yet, the seal is added here, and a memfd that
    /// refuses it (created without `MFD_ALLOW_SEALING`, or already sealed against new
    /// seals) is rejected, as is any fd that is not a memfd. This is for a peer process,
    /// which is not trusted to leave the size alone; for guest RAM the VMM itself holds,
    /// see [`guest_ram`](Self::guest_ram).
    pub fn from_fd(fd: OwnedFd, len: usize) -> Result<Self, BackingError> {
        check_shmem(fd.as_fd())?;
        // Seal before measuring: otherwise the sender could shrink the file between the
        // check and the mapping, and the first access would fault with SIGBUS.
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| BackingError::Syscall("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(SealFlags::SHRINK) {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK)
                .map_err(|e| BackingError::Syscall("fcntl(F_ADD_SEALS)", e))?;
        }
        let file_size = file_size(fd.as_fd())?;
        if file_size < len as u64 {
            return Err(BackingError::TooLarge {
                size: len as u64,
                max_size: file_size,
            });
        }
        Self::map(fd, 0, len, true)
    }

    /// Maps `len` bytes at byte `offset` of guest RAM the VMM already has, for rings that
    /// live in guest memory (a VMBus GPADL's pages). The fd is duplicated; the caller keeps
    /// its own.
    ///
    /// The fd must be a shmem memfd (as `memfd_create` without `MFD_HUGETLB` makes, with or
    /// without `MFD_ALLOW_SEALING`), `offset` a multiple of 4096, and the span must lie
    /// inside the file as it is now. No seal is required and none is added. A file on a
    /// size-limited tmpfs (`/dev/shm` is mounted with `size=`) is refused: it is told
    /// apart from a memfd by `fstatfs` reporting blocks, which the unlimited internal
    /// mount of memfds does not.
    ///
    /// # Why this is safe without a seal
    ///
    /// The danger is the file shrinking under the mapping. Only a holder of the fd can do
    /// that: the guest cannot, whatever it writes, since it reaches the file only through
    /// its own mapping of it. The holder is the VMM that embeds this crate, which must not
    /// shrink its guest RAM below `offset + len` while the region lives (a VMM never
    /// truncates RAM under a running guest; memory leaves a guest by punching holes). If it
    /// did anyway, the kernel would unmap the lost pages and this process's next access to
    /// one would fault with `SIGBUS`, ending the process: the access never completes, so
    /// nothing outside the file's pages is ever read or written. A file already sealed
    /// with `F_SEAL_SHRINK` ([`size_is_sealed`](Self::size_is_sealed)) rules even that out.
    ///
    /// The alternatives are worse: adding the seal fails on the unsealable memfds VMMs
    /// create, and on a sealable one would take a right from its owner behind its back; a
    /// copy is no ring, whose point is memory both sides see; a `SIGBUS` handler that maps
    /// zeros over the lost pages (as libwayland-server does for client buffers) takes a
    /// process-wide signal a VMM often uses itself (QEMU handles machine checks with it).
    ///
    /// Holes are not shrinking: a page the host discarded (`fallocate(PUNCH_HOLE)`, say
    /// because the guest ballooned its own ring pages) reads as zeros and faults in a fresh
    /// page on the next write. That holds for shmem without a size limit only: on
    /// hugetlbfs a refault with the pool empty, and on a size-limited tmpfs one with the
    /// filesystem full, is a `SIGBUS` the guest could provoke, so both are refused. (A
    /// memfd's pages are still charged to its memory cgroup; a refault over that limit
    /// reclaims or OOM-kills as any allocation does, never `SIGBUS`.)
    pub fn guest_ram(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Self, BackingError> {
        check_shmem(fd)?;
        if offset % PAGE_BYTES != 0 {
            return Err(BackingError::Unaligned {
                what: "guest RAM offset",
                value: offset,
                page_bytes: PAGE_BYTES,
            });
        }
        let size = file_size(fd)?;
        let out_of_range = BackingError::OutOfRange {
            offset,
            len: len as u64,
            size,
        };
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => {}
            _ => return Err(out_of_range),
        }
        let offset = usize::try_from(offset).map_err(|_| out_of_range)?;
        // A shmem file that is no memfd (on a tmpfs mounted without a size limit) has no
        // seals to ask.
        let sealed = rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 0)
            .map_err(|e| BackingError::Syscall("fcntl(F_DUPFD_CLOEXEC)", e))?;
        Self::map(fd, offset, len, sealed)
    }

    fn map(
        fd: OwnedFd,
        offset: usize,
        len: usize,
        size_sealed: bool,
    ) -> Result<Self, BackingError> {
        if len == 0 {
            // mmap refuses an empty mapping; say so before asking it.
            return Err(BackingError::Syscall("mmap (shared)", Errno::INVAL));
        }
        let file_offset = u64::try_from(offset).unwrap_or(u64::MAX);
        // SAFETY: a new shared mapping at an address the kernel picks, so it replaces
        // nothing. The callers checked that the file holds `[offset, offset + len)` now and
        // that it cannot shrink: sealed (`new`, `from_fd`), or held only by an owner bound
        // not to shrink it, where a breach is a SIGBUS that ends the process before the
        // access completes (`guest_ram`). So every access through the mapping either
        // reaches the file's pages or never happens.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                file_offset,
            )
        }
        .map_err(|e| BackingError::Syscall("mmap (shared)", e))?;
        let base = NonNull::new(base.cast::<u8>())
            .ok_or(BackingError::Syscall("mmap (shared)", Errno::FAULT))?;
        Ok(Self {
            fd,
            base,
            len,
            size_sealed,
        })
    }

    /// Whether the file is sealed against shrinking, so no access can ever fault: always
    /// for [`new`](Self::new) and [`from_fd`](Self::from_fd), and for
    /// [`guest_ram`](Self::guest_ram) if the VMM sealed it.
    pub fn size_is_sealed(&self) -> bool {
        self.size_sealed
    }

    /// Bytes in the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, e.g. to send to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The whole mapping as atomic bytes.
    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `base` is the start of a live, readable and writable mapping of `len`
        // bytes that lasts as long as `self`; `AtomicU8` has the size and alignment of `u8`
        // and permits mutation through shared references, which is what the peer (and
        // other threads) do to these bytes.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU8>(), self.len) }
    }

    /// The mapping as atomic words, up to its last whole word.
    fn words(&self) -> &[AtomicU32] {
        // SAFETY: as in `bytes`; in addition the mapping starts on a page boundary, so
        // `base` is aligned for `AtomicU32`, and `len / 4` words end inside the mapping.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU32>(), self.len / WORD)
        }
    }

    /// The 32-bit word at byte `offset`, for the fields both sides update concurrently.
    /// `None` unless `offset` is a multiple of 4 and the word lies inside the region.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % WORD != 0 {
            return None;
        }
        self.words().get(offset / WORD)
    }

    fn check_span(&self, offset: usize, len: usize) -> Result<(), BackingError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BackingError::OutOfRange {
                offset: offset as u64,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }

    /// Copies the bytes at `offset` into `buf`. The peer may be changing them meanwhile;
    /// the copy is what the caller should decode, and decode once.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), BackingError> {
        self.check_span(offset, buf.len())?;
        let (head, body, tail) = self.split(offset, buf.len());
        let (buf_head, rest) = buf.split_at_mut(head.len());
        let (buf_body, buf_tail) = rest.split_at_mut(body.len() * WORD);
        for (b, a) in buf_head.iter_mut().zip(head) {
            *b = a.load(Ordering::Relaxed);
        }
        for (chunk, a) in buf_body.chunks_exact_mut(WORD).zip(body) {
            chunk.copy_from_slice(&a.load(Ordering::Relaxed).to_ne_bytes());
        }
        for (b, a) in buf_tail.iter_mut().zip(tail) {
            *b = a.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `buf` into the region at `offset`.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<(), BackingError> {
        self.check_span(offset, buf.len())?;
        let (head, body, tail) = self.split(offset, buf.len());
        let (buf_head, rest) = buf.split_at(head.len());
        let (buf_body, buf_tail) = rest.split_at(body.len() * WORD);
        for (b, a) in buf_head.iter().zip(head) {
            a.store(*b, Ordering::Relaxed);
        }
        for (chunk, a) in buf_body.chunks_exact(WORD).zip(body) {
            let mut word = [0u8; WORD];
            word.copy_from_slice(chunk);
            a.store(u32::from_ne_bytes(word), Ordering::Relaxed);
        }
        for (b, a) in buf_tail.iter().zip(tail) {
            a.store(*b, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Splits the in-bounds span `[offset, offset + len)` into leading bytes up to a word
    /// boundary, whole words, and trailing bytes. Word-sized accesses keep copies fast and
    /// the same size as [`atomic_u32`](Self::atomic_u32)'s.
    fn split(&self, offset: usize, len: usize) -> (&[AtomicU8], &[AtomicU32], &[AtomicU8]) {
        let end = offset + len;
        let head_end = offset.next_multiple_of(WORD).min(end);
        let body_words = (end - head_end) / WORD;
        let body_end = head_end + body_words * WORD;
        let bytes = self.bytes();
        let words = self.words();
        let first_word = head_end / WORD;
        (
            bytes.get(offset..head_end).unwrap_or_default(),
            words
                .get(first_word..first_word + body_words)
                .unwrap_or_default(),
            bytes.get(body_end..end).unwrap_or_default(),
        )
    }
}

/// Only shmem with no size limit, as memfds have: hugetlbfs could fault with SIGBUS when
/// its pool runs dry, and would round the mapping's length; a tmpfs mounted with `size=`
/// (`/dev/shm`, a file a VMM put there) answers the refault of a punched-out page with
/// ENOSPC once it is full, which the kernel turns into SIGBUS too (`shmem_fault` in
/// Linux's mm/shmem.c). The internal mount memfds live on has no limit, and statfs then
/// reports zero blocks (`shmem_statfs` fills the block counts only when `max_blocks` is
/// set).
/// Refuses a file that is not shmem without a size limit (where a refault can never
/// SIGBUS).
pub(crate) fn check_shmem_fd(fd: BorrowedFd<'_>) -> Result<(), BackingError> {
    check_shmem(fd)
}

fn check_shmem(fd: BorrowedFd<'_>) -> Result<(), BackingError> {
    let fs = rustix::fs::fstatfs(fd).map_err(|e| BackingError::Syscall("fstatfs", e))?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between libcs
    if !shmem_without_size_limit(fs.f_type as i64, fs.f_blocks as u64) {
        return Err(BackingError::Syscall(
            "fstatfs (not a shmem memfd)",
            Errno::INVAL,
        ));
    }
    Ok(())
}

/// True for statfs values of a shmem mount without a size limit.
fn shmem_without_size_limit(f_type: i64, f_blocks: u64) -> bool {
    f_type == TMPFS_MAGIC && f_blocks == 0
}

fn file_size(fd: BorrowedFd<'_>) -> Result<u64, BackingError> {
    let st = rustix::fs::fstat(fd).map_err(|e| BackingError::Syscall("fstat", e))?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this base and length and is unmapped
        // exactly once, here; every reference into it borrows `self`, so none survives.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    #[test]
    fn read_write_round_trip_and_zeroed() {
        let r = SharedRegion::new("t", 8192).unwrap();
        assert_eq!(r.len(), 8192);
        assert!(!r.is_empty());
        let mut buf = [0xAAu8; 16];
        r.read(100, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        r.write(4093, b"hello, ring").unwrap();
        let mut out = [0u8; 11];
        r.read(4093, &mut out).unwrap();
        assert_eq!(&out, b"hello, ring");
        r.write(8191, &[7]).unwrap();
        r.read(8191, &mut out[..1]).unwrap();
        assert_eq!(out[0], 7);
        r.write(8192, &[]).unwrap();
    }

    #[test]
    fn bounds_are_checked() {
        let r = SharedRegion::new("b", 4096).unwrap();
        let mut buf = [0u8; 8];
        assert!(r.read(4088, &mut buf).is_ok());
        assert_eq!(
            r.read(4089, &mut buf),
            Err(BackingError::OutOfRange {
                offset: 4089,
                len: 8,
                size: 4096
            })
        );
        assert!(matches!(
            r.write(usize::MAX - 2, &buf),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.read(4097, &mut []),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            SharedRegion::new("z", 0),
            Err(BackingError::Syscall(_, Errno::INVAL))
        ));
    }

    #[test]
    fn atomic_words_are_aligned_and_in_bounds() {
        let r = SharedRegion::new("a", 4098).unwrap();
        assert!(r.atomic_u32(0).is_some());
        assert!(r.atomic_u32(4092).is_some());
        assert!(r.atomic_u32(4094).is_none());
        assert!(r.atomic_u32(4096).is_none());
        assert!(r.atomic_u32(2).is_none());
        assert!(r.atomic_u32(usize::MAX - 3).is_none());
        r.atomic_u32(64)
            .unwrap()
            .store(0x0403_0201, Ordering::Release);
        let mut b = [0u8; 4];
        r.read(64, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), 0x0403_0201);
        r.write(68, &0xDEAD_BEEFu32.to_ne_bytes()).unwrap();
        assert_eq!(
            r.atomic_u32(68).unwrap().load(Ordering::Acquire),
            0xDEAD_BEEF
        );
    }

    #[test]
    fn second_mapping_of_the_same_memfd_sees_the_bytes() {
        let a = SharedRegion::new("s", 16384).unwrap();
        let b = SharedRegion::from_fd(dup(a.fd()), 16384).unwrap();
        a.write(5000, b"shared").unwrap();
        let mut out = [0u8; 6];
        b.read(5000, &mut out).unwrap();
        assert_eq!(&out, b"shared");
        b.atomic_u32(12).unwrap().fetch_add(5, Ordering::AcqRel);
        assert_eq!(a.atomic_u32(12).unwrap().load(Ordering::Acquire), 5);
        // A smaller view of the same file is fine; a larger one is not.
        assert!(SharedRegion::from_fd(dup(a.fd()), 4096).is_ok());
        assert_eq!(
            SharedRegion::from_fd(dup(a.fd()), 16385).err(),
            Some(BackingError::TooLarge {
                size: 16385,
                max_size: 16384
            })
        );
    }

    #[test]
    fn size_is_sealed() {
        let a = SharedRegion::new("sealed", 8192).unwrap();
        assert_eq!(rustix::fs::ftruncate(a.fd(), 4096), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(a.fd(), 1 << 20), Err(Errno::PERM));
    }

    #[test]
    fn received_memfd_gets_the_shrink_seal_or_is_refused() {
        // Sealable but unsealed: the receiver seals it.
        let fd =
            rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        let keep = dup(fd.as_fd());
        let r = SharedRegion::from_fd(fd, 8192).unwrap();
        assert_eq!(rustix::fs::ftruncate(&keep, 0), Err(Errno::PERM));
        r.write(0, &[1]).unwrap();

        // Not sealable: the sender could shrink it under us, so it is refused.
        let fd = rustix::fs::memfd_create("n", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        assert_eq!(
            SharedRegion::from_fd(fd, 8192).err(),
            Some(BackingError::Syscall("fcntl(F_ADD_SEALS)", Errno::PERM))
        );

        // Not a memfd at all: refused before anything else.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(
            SharedRegion::from_fd(OwnedFd::from(file), 8).err(),
            Some(BackingError::Syscall(
                "fstatfs (not a shmem memfd)",
                Errno::INVAL
            ))
        );
    }

    /// Guest RAM as VMMs create it: a memfd that cannot be sealed.
    fn guest_ram_memfd(len: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn guest_ram_maps_an_unsealable_memfd_at_an_offset() {
        let ram = guest_ram_memfd(64 * 1024);
        let r = SharedRegion::guest_ram(ram.as_fd(), 8192, 16384).unwrap();
        assert_eq!(r.len(), 16384);
        assert!(!r.size_is_sealed());
        r.write(0, b"at 8192").unwrap();
        r.write(16380, &[1, 2, 3, 4]).unwrap();
        assert!(r.write(16381, &[0; 4]).is_err());
        // The bytes are the file's, at the offset, as a second view of the whole file
        // shows; and nothing sealed the owner's memfd.
        let whole = SharedRegion::guest_ram(ram.as_fd(), 0, 64 * 1024).unwrap();
        let mut out = [0u8; 7];
        whole.read(8192, &mut out).unwrap();
        assert_eq!(&out, b"at 8192");
        whole
            .atomic_u32(8192 + 16380)
            .unwrap()
            .store(9, Ordering::Release);
        assert_eq!(r.atomic_u32(16380).unwrap().load(Ordering::Acquire), 9);
        assert_eq!(rustix::fs::fcntl_get_seals(&ram), Ok(SealFlags::SEAL));
        rustix::fs::ftruncate(&ram, 128 * 1024).unwrap();
        // A sealed file says so.
        let sealed = SharedRegion::new("sealed-ram", 8192).unwrap();
        assert!(
            SharedRegion::guest_ram(sealed.fd(), 4096, 4096)
                .unwrap()
                .size_is_sealed()
        );
        assert!(sealed.size_is_sealed());
    }

    /// A file on a tmpfs mounted with `size=` (as `/dev/shm` is) would turn a refault of
    /// a punched hole on a full filesystem into `SIGBUS`: refused. A memfd's internal
    /// mount has no size limit and reports no blocks.
    #[test]
    fn guest_ram_refuses_a_size_limited_tmpfs() {
        let ram = guest_ram_memfd(8192);
        let fs = rustix::fs::fstatfs(&ram).unwrap();
        assert_eq!(fs.f_type as i64, TMPFS_MAGIC);
        assert_eq!(fs.f_blocks, 0, "a memfd's mount is unlimited");
        assert!(shmem_without_size_limit(
            fs.f_type as i64,
            fs.f_blocks as u64
        ));
        assert!(!shmem_without_size_limit(TMPFS_MAGIC, 1));
        assert!(!shmem_without_size_limit(0x9584_58f6, 0)); // hugetlbfs
        let path = std::path::Path::new("/dev/shm")
            .join(format!("ballast-guest-ram-{}", std::process::id()));
        let Ok(file) = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        else {
            return; // no /dev/shm here: the predicate above is the test
        };
        let _ = std::fs::remove_file(&path);
        file.set_len(8192).unwrap();
        let limited = rustix::fs::fstatfs(&file).unwrap();
        if limited.f_type as i64 != TMPFS_MAGIC || limited.f_blocks == 0 {
            return; // /dev/shm is no size-limited tmpfs here
        }
        assert_eq!(
            SharedRegion::guest_ram(file.as_fd(), 0, 4096).err(),
            Some(BackingError::Syscall(
                "fstatfs (not a shmem memfd)",
                Errno::INVAL
            ))
        );
    }

    #[test]
    fn guest_ram_is_never_mapped_beyond_the_file() {
        let ram = guest_ram_memfd(16384);
        assert!(SharedRegion::guest_ram(ram.as_fd(), 12288, 4096).is_ok());
        assert_eq!(
            SharedRegion::guest_ram(ram.as_fd(), 12288, 4097).err(),
            Some(BackingError::OutOfRange {
                offset: 12288,
                len: 4097,
                size: 16384
            })
        );
        assert!(matches!(
            SharedRegion::guest_ram(ram.as_fd(), 16384, 1),
            Err(BackingError::OutOfRange { .. })
        ));
        assert!(matches!(
            SharedRegion::guest_ram(ram.as_fd(), u64::MAX - 4095, 8192),
            Err(BackingError::OutOfRange { .. })
        ));
        assert_eq!(
            SharedRegion::guest_ram(ram.as_fd(), 100, 8).err(),
            Some(BackingError::Unaligned {
                what: "guest RAM offset",
                value: 100,
                page_bytes: 4096
            })
        );
        assert_eq!(
            SharedRegion::guest_ram(ram.as_fd(), 0, 0).err(),
            Some(BackingError::Syscall("mmap (shared)", Errno::INVAL))
        );
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(
            SharedRegion::guest_ram(file.as_fd(), 0, 8).err(),
            Some(BackingError::Syscall(
                "fstatfs (not a shmem memfd)",
                Errno::INVAL
            ))
        );
    }

    #[test]
    fn guest_ram_pages_punched_out_read_zero_and_refault() {
        let ram = guest_ram_memfd(8192);
        let r = SharedRegion::guest_ram(ram.as_fd(), 0, 8192).unwrap();
        r.write(4096, &[0xAB; 64]).unwrap();
        rustix::fs::fallocate(
            &ram,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            4096,
            4096,
        )
        .unwrap();
        let mut out = [0xFFu8; 64];
        r.read(4096, &mut out).unwrap();
        assert_eq!(out, [0; 64]);
        r.write(4096, &[1; 8]).unwrap();
        r.read(4096, &mut out[..8]).unwrap();
        assert_eq!(out[..8], [1; 8]);
    }

    #[test]
    fn a_partitions_memory_is_guest_ram_with_its_size_sealed() {
        let pm =
            crate::PartitionMemory::new("pm", 1 << 20, 4 << 20, crate::PageSize::Base).unwrap();
        let r = SharedRegion::guest_ram(pm.fd(), 16 * PAGE_BYTES, 8192).unwrap();
        assert!(r.size_is_sealed());
        r.write(100, b"ring bytes").unwrap();
        let mut out = [0u8; 10];
        pm.read(16 * PAGE_BYTES + 100, &mut out).unwrap();
        assert_eq!(&out, b"ring bytes");
        pm.write(17 * PAGE_BYTES, &[5; 4]).unwrap();
        assert_eq!(
            r.atomic_u32(4096).unwrap().load(Ordering::Acquire),
            0x0505_0505
        );
        // A discarded page reads zero through the region too.
        pm.discard(&[crate::GfnRange::new(17, 1).unwrap()]).unwrap();
        assert_eq!(r.atomic_u32(4096).unwrap().load(Ordering::Acquire), 0);
    }

    #[test]
    fn threads_share_one_region() {
        let r = Arc::new(SharedRegion::new("threads", 4096).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        r.atomic_u32(0).unwrap().fetch_add(1, Ordering::Relaxed);
                    }
                    r.write(64 + i * 8, &[i as u8 + 1; 8]).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(r.atomic_u32(0).unwrap().load(Ordering::Relaxed), 4000);
        let mut out = [0u8; 32];
        r.read(64, &mut out).unwrap();
        for i in 0..4 {
            assert_eq!(out[i * 8..i * 8 + 8], [i as u8 + 1; 8]);
        }
    }

    proptest! {
        #[test]
        fn prop_copies_match_a_plain_buffer(
            ops in proptest::collection::vec(
                (0usize..300, proptest::collection::vec(any::<u8>(), 0..40)),
                1..40,
            ),
        ) {
            let r = SharedRegion::new("p", 301).unwrap();
            let mut model = vec![0u8; 301];
            for (offset, data) in ops {
                let fits = offset + data.len() <= 301;
                prop_assert_eq!(r.write(offset, &data).is_ok(), fits);
                if fits {
                    model[offset..offset + data.len()].copy_from_slice(&data);
                }
                let mut out = vec![0u8; data.len()];
                if r.read(offset, &mut out).is_ok() {
                    prop_assert_eq!(&out[..], &model[offset..offset + data.len()]);
                }
            }
            let mut all = vec![0u8; 301];
            r.read(0, &mut all).unwrap();
            prop_assert_eq!(all, model);
        }
    }
}
