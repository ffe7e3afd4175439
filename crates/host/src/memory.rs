//! The core's effects, applied to real memory.

use std::collections::{BTreeMap, BTreeSet};

use ballast_backing::{AuditReport, Backing, BackingError, PageSize};
use ballast_core::{
    Config, ConfigError, Effect, GfnRange, GfnRangeError, Hypervisor, MemoryError, NoSuchPartition,
    PartitionId,
};
use thiserror::Error;

/// What went wrong between the core and real memory.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// The hypervisor configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Real memory failed.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// No such partition in the core.
    #[error(transparent)]
    NoPartition(#[from] NoSuchPartition),
    /// A gfn count whose pages pass the gfn limit (2^40 gfns, 2^52 bytes).
    #[error(transparent)]
    GfnRange(#[from] GfnRangeError),
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

/// An effect the host could not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectFailure {
    /// The effect (for a discard, the merged range that failed).
    pub effect: Effect,
    /// What real memory answered.
    pub error: BackingError,
}

/// What applying effects did: the statistics and every effect that failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// What was applied.
    pub stats: ApplyStats,
    /// The effects that could not be applied, in order.
    pub failures: Vec<EffectFailure>,
}

/// [`MemoryHost::run`]'s answer when some effects failed: the operation's own result,
/// which stands (the core has changed), and the report.
#[derive(Debug, Error)]
#[error("{} of the operation's effects could not be applied", report.failures.len())]
pub struct EffectsFailed<T> {
    /// The operation's result.
    pub result: T,
    /// The effects applied and the ones that failed.
    pub report: ApplyReport,
}

/// The hypervisor core and the memfds of its partitions.
#[derive(Debug)]
pub struct MemoryHost {
    hv: Hypervisor,
    backing: Backing,
    /// Partitions with no memfd: their discards are counted, not applied.
    accounting: BTreeSet<PartitionId>,
}

impl MemoryHost {
    /// A host from a core configuration, with no guest memory yet.
    pub fn new(config: Config) -> Result<Self, HostError> {
        Ok(MemoryHost {
            hv: Hypervisor::new(config)?,
            backing: Backing::new(),
            accounting: BTreeSet::new(),
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
            return Err(NoSuchPartition(id).into());
        }
        let before = self.hv.partition(id).map_or(0, |p| p.gfn_limit());
        self.hv.set_guest_physical_limit(id, gfns)?;
        let created = (|| -> Result<(), HostError> {
            let size = GfnRange::new(0, gfns)?.byte_len();
            let max_size = GfnRange::new(0, max_gfns)?.byte_len();
            self.backing.create(id, size, max_size, page_size)?;
            Ok(())
        })();
        if let Err(e) = created {
            // Keep the core as it was: it must not believe in memory that is not there.
            let _ = self.hv.set_guest_physical_limit(id, before);
            return Err(e);
        }
        Ok(())
    }

    /// Gives partition `id` the memory in `fd` (a memfd a guest kept while its host
    /// restarted; see [`PartitionMemory::adopt`](ballast_backing::PartitionMemory::adopt)),
    /// growable to `max_gfns`, and makes its size the partition's guest-physical limit.
    /// Returns its size in pages. The core maps nothing: the caller populates what the
    /// guest owns, then audits the rest away.
    pub fn adopt_memory(
        &mut self,
        id: PartitionId,
        fd: std::os::fd::OwnedFd,
        max_gfns: u64,
    ) -> Result<u64, HostError> {
        if self.hv.partition(id).is_none() {
            return Err(NoSuchPartition(id).into());
        }
        let max_size = GfnRange::new(0, max_gfns)?.byte_len();
        let gfns = self.backing.adopt(id, fd, max_size)?.gfns();
        if let Err(e) = self.hv.set_guest_physical_limit(id, gfns) {
            self.backing.remove(id);
            return Err(e.into());
        }
        Ok(gfns)
    }

    /// Gives partition `id` a guest-physical space of `gfns` pages with no memory behind
    /// it: the core keeps every account, discards are counted and dropped. For simulating
    /// hosts larger than the machine; [`resident_bytes`](Self::resident_bytes), reads,
    /// writes and audits of such a partition fail.
    pub fn attach_accounting(&mut self, id: PartitionId, gfns: u64) -> Result<(), HostError> {
        self.hv.set_guest_physical_limit(id, gfns)?;
        self.accounting.insert(id);
        Ok(())
    }

    /// Grows partition `id`'s memfd to `gfns` pages (a hot-add) and raises its
    /// guest-physical limit to match; the host then populates the new range.
    pub fn grow_memory(&mut self, id: PartitionId, gfns: u64) -> Result<(), HostError> {
        if self.accounting.contains(&id) {
            self.hv.set_guest_physical_limit(id, gfns)?;
            return Ok(());
        }
        let mem = self
            .backing
            .get_mut(id)
            .ok_or(BackingError::NoPartition(NoSuchPartition(id)))?;
        mem.grow(GfnRange::new(0, gfns)?.byte_len())?;
        let size = mem.gfns();
        self.hv.set_guest_physical_limit(id, size)?;
        Ok(())
    }

    /// Runs `op` on the core, then applies the effects it recorded: the only way code
    /// outside the core changes it, so no discard is ever left unapplied.
    ///
    /// The operation's result always comes back: with the statistics when every effect
    /// applied, or inside [`EffectsFailed`] with the report of the effects that did not.
    /// Either way every effect that could be applied was.
    pub fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Hypervisor) -> T,
    ) -> Result<(T, ApplyStats), EffectsFailed<T>> {
        let result = op(&mut self.hv);
        let report = self.apply_effects();
        if report.failures.is_empty() {
            Ok((result, report.stats))
        } else {
            Err(EffectsFailed { result, report })
        }
    }

    /// Applies every effect the core has recorded, in order, and reports each one that
    /// failed. Total: a failed effect does not stop the ones after it, since the core has
    /// handed them over and they exist nowhere else (a lost discard would leave a guest's
    /// old bytes resident and readable at a gfn it gave up).
    ///
    /// Runs of discards are grouped per partition and merged, so a whole operation costs
    /// one punch per contiguous run; a page move first flushes the discards recorded
    /// before it. A merged batch that fails is retried range by range, so the failure
    /// names the ranges that could not be discarded and the others are still released.
    pub fn apply_effects(&mut self) -> ApplyReport {
        let effects = self.hv.take_effects();
        let mut report = ApplyReport {
            stats: ApplyStats {
                effects: effects.len(),
                ..Default::default()
            },
            failures: Vec::new(),
        };
        let mut per: BTreeMap<PartitionId, Vec<GfnRange>> = BTreeMap::new();
        for e in effects {
            match e {
                Effect::Discard { partition, range } => {
                    report.stats.gfns += range.count();
                    per.entry(partition).or_default().push(range);
                }
                Effect::Move {
                    partition,
                    from,
                    to,
                } => {
                    self.flush(&mut per, &mut report);
                    if let Some(mem) = self.backing.get(partition) {
                        if let Err(error) = mem.copy_page(from, to) {
                            report.failures.push(EffectFailure { effect: e, error });
                        }
                    }
                }
                // `Effect` is non-exhaustive for embedders; this host ships with the core
                // and applies every effect it records. Dropping one silently could leave
                // a guest's old bytes readable, so an effect added to the core without
                // being applied here fails loudly (the tests of this crate reach it).
                other => unreachable!("ballast-host does not apply {other:?}"),
            }
        }
        self.flush(&mut per, &mut report);
        report
    }

    fn flush(&self, per: &mut BTreeMap<PartitionId, Vec<GfnRange>>, report: &mut ApplyReport) {
        for (id, ranges) in std::mem::take(per) {
            if self.accounting.contains(&id) {
                continue;
            }
            match self.backing.discard(id, &ranges) {
                Ok(s) => report.stats.syscalls += s.syscalls,
                Err(_) => {
                    for r in ranges {
                        match self.backing.discard(id, &[r]) {
                            Ok(s) => report.stats.syscalls += s.syscalls,
                            Err(error) => report.failures.push(EffectFailure {
                                effect: Effect::Discard {
                                    partition: id,
                                    range: r,
                                },
                                error,
                            }),
                        }
                    }
                }
            }
        }
    }

    /// The gfn ranges partition `id`'s p2m maps.
    pub fn mapped_ranges(&self, id: PartitionId) -> Result<Vec<GfnRange>, HostError> {
        let p = self.hv.partition(id).ok_or(NoSuchPartition(id))?;
        // The p2m holds gfns below the gfn limit only, so every run is a valid range.
        Ok(p.p2m()
            .ranges()
            .into_iter()
            .map(|(s, c)| GfnRange::new(s, c))
            .collect::<Result<_, _>>()?)
    }

    /// Audits partition `id`'s memfd against its p2m; with `repair`, discards what it finds.
    pub fn audit(&self, id: PartitionId, repair: bool) -> Result<AuditReport, HostError> {
        let mapped = self.mapped_ranges(id)?;
        let mem = self.backing.memory(id)?;
        Ok(if repair {
            mem.audit_and_repair(&mapped)?
        } else {
            mem.audit(&mapped)?
        })
    }

    /// Resident bytes of partition `id`'s memfd.
    pub fn resident_bytes(&self, id: PartitionId) -> Result<u64, HostError> {
        Ok(self.backing.memory(id)?.resident_bytes()?)
    }

    /// Writes guest bytes of partition `id` at `gfn` (as the guest would).
    pub fn write_guest(&self, id: PartitionId, gfn: u64, bytes: &[u8]) -> Result<(), HostError> {
        let mem = self.backing.memory(id)?;
        Ok(mem.write(mem.page_offset(gfn)?, bytes)?)
    }

    /// Reads guest bytes of partition `id` at `gfn`.
    pub fn read_guest(&self, id: PartitionId, gfn: u64, buf: &mut [u8]) -> Result<(), HostError> {
        let mem = self.backing.memory(id)?;
        Ok(mem.read(mem.page_offset(gfn)?, buf)?)
    }

    /// Drops partition `id`'s memfd (after the core destroyed the partition).
    pub fn detach_memory(&mut self, id: PartitionId) {
        self.accounting.remove(&id);
        self.backing.remove(id);
    }
}
