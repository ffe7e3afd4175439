//! Guest memory as real host memory.
//!
//! Each partition's guest physical memory is one memfd ([`PartitionMemory`]), gfn `g` at
//! byte `g * 4096`, mapped shared into the host process the way KVM-based VMMs back guest
//! RAM. When a gfn leaves a partition (a balloon, a withdraw, a decrease_reservation) its
//! bytes are released to the host kernel with `fallocate(PUNCH_HOLE | KEEP_SIZE)`, in
//! merged ranges, one syscall per range rather than per page; the gfn then reads zero, so
//! a frame moving between partitions never carries bytes with it.
//!
//! Residency is measured from the memfds themselves (`st_blocks`), and an audit compares
//! what is resident (`SEEK_DATA` / `SEEK_HOLE`) with what the partition's p2m maps,
//! catching a guest that touches memory it does not own.
//!
//! The crate knows nothing of the hypervisor core: it takes gfn ranges and partition ids
//! in the shared vocabulary of `ballast-abi` ([`ballast_abi::types`]), its only ballast
//! dependency. The primitive is the hole punch because on shared memory `MADV_DONTNEED`
//! only drops the mappings (madvise(2); Firecracker's `discard_range` in
//! `src/vmm/src/vstate/memory.rs` notes the same); its cost beside raw `fallocate` is in
//! the README's performance table (`cargo bench -p ballast-backing --bench discard`).
//!
//! Deliberate limits:
//! - `MADV_DONTNEED` is never used: on a memfd it frees nothing.
//! - With 2 MiB hugetlb pages, a discard frees only whole huge pages and relies on Linux
//!   6.2+ zeroing the partial ones; the audit is unavailable there, because hugetlbfs does
//!   not implement `SEEK_DATA` / `SEEK_HOLE`.
//! - This is the only crate of ballast with `unsafe` code: the mappings and the byte copies
//!   through them, each with its reasoning.

#![allow(unsafe_code)]

use std::collections::BTreeMap;

use ballast_abi::types::{NoSuchPartition, PartitionId};
use rustix::io::Errno;
use thiserror::Error;

mod memory;
pub mod ranges;
mod shared;

pub use memory::{AuditReport, DiscardStats, PageSize, PartitionMemory};
pub use ranges::GfnRange;
pub use shared::SharedRegion;

/// Why guest memory could not be set up or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BackingError {
    /// A syscall failed.
    #[error("{0} failed: {1}")]
    Syscall(&'static str, Errno),
    /// hugetlb backing was asked for and the host has no huge pages for it.
    #[error("no 2 MiB huge pages are available (reserve some in /proc/sys/vm/nr_hugepages): {0}")]
    NoHugePages(Errno),
    /// A size or offset that is not a multiple of the page size.
    #[error("{what} {value:#x} is not a multiple of the {page_bytes}-byte page size")]
    Unaligned {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The page size.
        page_bytes: u64,
    },
    /// A size beyond the reservation.
    #[error("size {size:#x} exceeds the reserved {max_size:#x} bytes")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The reservation.
        max_size: u64,
    },
    /// An access outside the guest space.
    #[error("{len} bytes at {offset:#x} lie outside the {size:#x}-byte guest space")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Guest space size.
        size: u64,
    },
    /// The audit needs `SEEK_DATA` / `SEEK_HOLE`, which hugetlbfs lacks.
    #[error("residency audit needs SEEK_DATA/SEEK_HOLE, which hugetlbfs does not implement")]
    AuditUnsupported,
    /// No memory is registered for this partition.
    #[error(transparent)]
    NoPartition(#[from] NoSuchPartition),
    /// Memory is already registered for this partition.
    #[error("partition {0} already has guest memory")]
    Exists(PartitionId),
}

/// The guest memory of every partition, keyed by partition id.
#[derive(Debug, Default)]
pub struct Backing {
    partitions: BTreeMap<PartitionId, PartitionMemory>,
}

impl Backing {
    /// No partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates guest memory for `partition`: `size` bytes now, growable to `max_size`.
    pub fn create(
        &mut self,
        partition: PartitionId,
        size: u64,
        max_size: u64,
        page_size: PageSize,
    ) -> Result<&PartitionMemory, BackingError> {
        if self.partitions.contains_key(&partition) {
            return Err(BackingError::Exists(partition));
        }
        let mem = PartitionMemory::new(
            &format!("ballast-partition-{partition}"),
            size,
            max_size,
            page_size,
        )?;
        Ok(self.partitions.entry(partition).or_insert(mem))
    }

    /// Takes over existing guest memory for `partition` (see [`PartitionMemory::adopt`]):
    /// a memfd of its current size, growable to `max_size`.
    pub fn adopt(
        &mut self,
        partition: PartitionId,
        fd: std::os::fd::OwnedFd,
        max_size: u64,
    ) -> Result<&PartitionMemory, BackingError> {
        if self.partitions.contains_key(&partition) {
            return Err(BackingError::Exists(partition));
        }
        let mem = PartitionMemory::adopt(fd, max_size)?;
        Ok(self.partitions.entry(partition).or_insert(mem))
    }

    /// Drops a partition's memory (closing the memfd frees all of it).
    pub fn remove(&mut self, partition: PartitionId) -> Option<PartitionMemory> {
        self.partitions.remove(&partition)
    }

    /// A partition's memory.
    pub fn get(&self, partition: PartitionId) -> Option<&PartitionMemory> {
        self.partitions.get(&partition)
    }

    /// A partition's memory, or [`BackingError::NoPartition`].
    pub fn memory(&self, partition: PartitionId) -> Result<&PartitionMemory, BackingError> {
        self.get(partition)
            .ok_or(BackingError::NoPartition(NoSuchPartition(partition)))
    }

    /// A partition's memory, mutably (to grow it).
    pub fn get_mut(&mut self, partition: PartitionId) -> Option<&mut PartitionMemory> {
        self.partitions.get_mut(&partition)
    }

    /// Discards gfn ranges of one partition. A partition without memory here is not an
    /// error: nothing of it is resident (the root partition, typically, has none).
    pub fn discard(
        &self,
        partition: PartitionId,
        ranges: &[GfnRange],
    ) -> Result<DiscardStats, BackingError> {
        match self.partitions.get(&partition) {
            Some(m) => m.discard(ranges),
            None => Ok(DiscardStats {
                ranges_in: ranges.len(),
                ..Default::default()
            }),
        }
    }

    /// Resident bytes of each partition, and in total.
    pub fn resident_bytes(&self) -> Result<(BTreeMap<PartitionId, u64>, u64), BackingError> {
        let mut per = BTreeMap::new();
        let mut total = 0;
        for (&id, m) in &self.partitions {
            let r = m.resident_bytes()?;
            per.insert(id, r);
            total += r;
        }
        Ok((per, total))
    }

    /// Partition ids with memory, in order.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions.keys().copied()
    }
}
