//! The core's effects, applied to real memory.

use std::collections::BTreeMap;

use ballast_backing::{AuditReport, Backing, BackingError, GfnRange, PageSize};
use ballast_core::{Config, ConfigError, Effect, Hypervisor, MemoryError, PartitionId};
use thiserror::Error;

/// What went wrong between the core and real memory.
#[derive(Debug, Error)]
pub enum HostError {
    /// The hypervisor configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Real memory failed.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// No such partition in the core.
    #[error("no partition {0:?}")]
    NoPartition(PartitionId),
    /// The core refused a change to a partition's guest space.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// What applying effects did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyStats {
    /// Effects taken from the core.
    pub effects: usize,
    /// Gfns discarded.
    pub gfns: u64,
    /// Hole-punching syscalls made.
    pub syscalls: usize,
}

/// The hypervisor core and the memfds of its partitions.
#[derive(Debug)]
pub struct MemoryHost {
    hv: Hypervisor,
    backing: Backing,
}

impl MemoryHost {
    /// A host from a core configuration, with no guest memory yet.
    pub fn new(config: Config) -> Result<Self, HostError> {
        Ok(MemoryHost {
            hv: Hypervisor::new(config)?,
            backing: Backing::new(),
        })
    }

    /// The core, to read.
    pub fn hv(&self) -> &Hypervisor {
        &self.hv
    }

    /// The memfds, to read.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Gives partition `id` a memfd of `gfns` pages, growable to `max_gfns`, and makes
    /// `gfns` the partition's guest-physical limit in the core, so nothing the guest or
    /// the host does maps a page where the memfd has no room for it.
    pub fn attach_memory(
        &mut self,
        id: PartitionId,
        gfns: u64,
        max_gfns: u64,
        page_size: PageSize,
    ) -> Result<(), HostError> {
        if self.hv.partition(id).is_none() {
            return Err(HostError::NoPartition(id));
        }
        let before = self.hv.partition(id).map_or(0, |p| p.gfn_limit);
        self.hv.set_guest_physical_limit(id, gfns)?;
        if let Err(e) = self
            .backing
            .create(id.0, gfns * 4096, max_gfns * 4096, page_size)
        {
            // Keep the core as it was: it must not believe in memory that is not there.
            let _ = self.hv.set_guest_physical_limit(id, before);
            return Err(e.into());
        }
        Ok(())
    }

    /// Grows partition `id`'s memfd to `gfns` pages (a hot-add) and raises its
    /// guest-physical limit to match; the host then populates the new range.
    pub fn grow_memory(&mut self, id: PartitionId, gfns: u64) -> Result<(), HostError> {
        let mem = self
            .backing
            .get_mut(id.0)
            .ok_or(BackingError::NoPartition(id.0))?;
        mem.grow(gfns * 4096)?;
        let size = mem.gfns();
        self.hv.set_guest_physical_limit(id, size)?;
        Ok(())
    }

    /// Runs `op` on the core, then applies the effects it recorded: the only way code
    /// outside the core changes it, so no discard is ever left unapplied.
    pub fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Hypervisor) -> T,
    ) -> Result<(T, ApplyStats), HostError> {
        let out = op(&mut self.hv);
        let stats = self.apply_effects()?;
        Ok((out, stats))
    }

    /// Applies every effect the core has recorded, in order. Runs of discards are grouped
    /// per partition and merged, so a whole operation costs one punch per contiguous run;
    /// a page move first flushes the discards recorded before it.
    pub fn apply_effects(&mut self) -> Result<ApplyStats, HostError> {
        let effects = self.hv.take_effects();
        let mut stats = ApplyStats {
            effects: effects.len(),
            ..Default::default()
        };
        let mut per: BTreeMap<u64, Vec<GfnRange>> = BTreeMap::new();
        for e in effects {
            match e {
                Effect::Discard { partition, range } => {
                    stats.gfns += range.count;
                    per.entry(partition.0)
                        .or_default()
                        .push(GfnRange::new(range.start, range.count));
                }
                Effect::Move {
                    partition,
                    from,
                    to,
                } => {
                    self.flush(&mut per, &mut stats)?;
                    if let Some(mem) = self.backing.get(partition.0) {
                        mem.copy_page(from, to)?;
                    }
                }
            }
        }
        self.flush(&mut per, &mut stats)?;
        Ok(stats)
    }

    fn flush(
        &self,
        per: &mut BTreeMap<u64, Vec<GfnRange>>,
        stats: &mut ApplyStats,
    ) -> Result<(), HostError> {
        for (id, ranges) in std::mem::take(per) {
            stats.syscalls += self.backing.discard(id, &ranges)?.syscalls;
        }
        Ok(())
    }

    /// The gfn ranges partition `id`'s p2m maps.
    pub fn mapped_ranges(&self, id: PartitionId) -> Result<Vec<GfnRange>, HostError> {
        let p = self.hv.partition(id).ok_or(HostError::NoPartition(id))?;
        Ok(p.p2m
            .ranges()
            .into_iter()
            .map(|(s, c)| GfnRange::new(s, c))
            .collect())
    }

    /// Audits partition `id`'s memfd against its p2m; with `repair`, discards what it finds.
    pub fn audit(&self, id: PartitionId, repair: bool) -> Result<AuditReport, HostError> {
        let mapped = self.mapped_ranges(id)?;
        let mem = self
            .backing
            .get(id.0)
            .ok_or(BackingError::NoPartition(id.0))?;
        Ok(if repair {
            mem.audit_and_repair(&mapped)?
        } else {
            mem.audit(&mapped)?
        })
    }

    /// Resident bytes of partition `id`'s memfd.
    pub fn resident_bytes(&self, id: PartitionId) -> Result<u64, HostError> {
        Ok(self
            .backing
            .get(id.0)
            .ok_or(BackingError::NoPartition(id.0))?
            .resident_bytes()?)
    }

    /// Writes guest bytes of partition `id` at `gfn` (as the guest would).
    pub fn write_guest(&self, id: PartitionId, gfn: u64, bytes: &[u8]) -> Result<(), HostError> {
        Ok(self
            .backing
            .get(id.0)
            .ok_or(BackingError::NoPartition(id.0))?
            .write(gfn * 4096, bytes)?)
    }

    /// Reads guest bytes of partition `id` at `gfn`.
    pub fn read_guest(&self, id: PartitionId, gfn: u64, buf: &mut [u8]) -> Result<(), HostError> {
        Ok(self
            .backing
            .get(id.0)
            .ok_or(BackingError::NoPartition(id.0))?
            .read(gfn * 4096, buf)?)
    }

    /// Drops partition `id`'s memfd (after the core destroyed the partition).
    pub fn detach_memory(&mut self, id: PartitionId) {
        self.backing.remove(id.0);
    }
}
