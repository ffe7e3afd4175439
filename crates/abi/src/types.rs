//! The vocabulary every crate of ballast shares: who a partition is, and which guest
//! frames a range names.
//!
//! The module is called `types` rather than `mem` because it holds identities (a Hyper-V
//! partition, a Xen domain) and the one "no such partition" error as well as guest memory
//! ranges. It sits in the bottom crate so that the crates above it (the core, the backing,
//! the host, the Dynamic Memory protocol crate and its VMBus transport) name the same
//! things with the same types and no crate translates between two spellings of a gfn
//! range or a partition.
//!
//! # Gfns and ranges
//! A [`Gfn`] is a plain `u64` (a type alias): gfns are indices into p2m tables, bitmaps
//! and memfd offsets all over ballast, and a newtype would wrap and unwrap at every one of
//! them without making any of them safer. What needs checking is the arithmetic on runs
//! of gfns, so that is where the type is: a [`GfnRange`] can only be built through
//! [`GfnRange::new`] (or [`GfnRange::from_bounds`]), which refuse a range whose end passes
//! [`GFN_LIMIT`]. Its fields are private, so every range in the program upholds the
//! invariant: [`GfnRange::end`] cannot overflow and the byte conversions
//! ([`GfnRange::byte_offset`], [`GfnRange::byte_len`]) always fit in a `u64`.
//!
//! [`GFN_LIMIT`] is 2^40 gfns: 52-bit guest physical addresses (52 bits is the largest
//! physical-address width, MAXPHYADDR, that x86-64 defines) in 4 KiB pages, which is
//! also the width of the Dynamic Memory page range's start field (40 bits, see
//! [`crate::dm::PageRange`]). Choosing it as the limit of every range is ballast's own
//! decision: no interface ballast speaks can name a gfn above it.

use crate::{PAGE_SHIFT, PAGE_SIZE};

/// A guest frame number: the index of a 4 KiB page of a partition's guest physical space
/// (byte address `gfn << PAGE_SHIFT`).
///
/// An alias, not a newtype (see the [module documentation](self)): the checks live in
/// [`GfnRange`] and [`gfn_to_bytes`].
pub type Gfn = u64;

/// Gfns are below this: 2^40, so guest physical addresses are below 2^52.
pub const GFN_LIMIT: Gfn = 1 << 40;

/// [`PAGE_SIZE`] as a `u64`, for byte offsets into guest memory.
pub const PAGE_BYTES: u64 = PAGE_SIZE as u64;

/// A Hyper-V partition id, and ballast's name for any partition (a Xen domain is a
/// partition too, with a [`DomId`] beside its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u64);

impl core::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Xen domain id. Ordinary domains are below
/// [`DOMID_FIRST_RESERVED`](crate::xen::DOMID_FIRST_RESERVED); the values from there up
/// name special domains (`DOMID_SELF` and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomId(pub u16);

/// The one "no such partition" error: the crates' error enums wrap it, so an embedder
/// recognises an unknown partition the same way whichever crate refused it.
///
/// (Hyper-V's `HV_STATUS_INVALID_PARTITION_ID` and Xen's `-ESRCH` are what a guest sees
/// on the wire; this is what Rust callers see.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("no partition {0:?}")]
pub struct NoSuchPartition(pub PartitionId);

/// The byte offset of `gfn` in its partition's guest physical space, if the page lies
/// below [`GFN_LIMIT`] (so the offset and the page's end both fit in a `u64`).
pub const fn gfn_to_bytes(gfn: Gfn) -> Option<u64> {
    if gfn < GFN_LIMIT {
        Some(gfn << PAGE_SHIFT)
    } else {
        None
    }
}

/// A range a [`GfnRange`] constructor refused: its end passes [`GFN_LIMIT`] (or, for
/// [`GfnRange::from_bounds`], it ends before it starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("gfn range {start:#x}+{count:#x} passes the gfn limit 2^40")]
pub struct GfnRangeError {
    /// The first gfn asked for.
    pub start: Gfn,
    /// The count asked for (for a reversed [`GfnRange::from_bounds`], `end - start`
    /// wrapped).
    pub count: u64,
}

/// A run of guest frame numbers, `start .. start + count`, with `start + count <=`
/// [`GFN_LIMIT`].
///
/// The fields are private: the constructors check the invariant, and the methods that
/// combine ranges keep it, so [`end`](Self::end) never overflows and the byte
/// conversions never fail. Ranges order by start, then count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GfnRange {
    start: Gfn,
    count: u64,
}

impl GfnRange {
    /// The empty range at gfn 0.
    pub const EMPTY: GfnRange = GfnRange { start: 0, count: 0 };

    /// `count` gfns from `start`, or an error if they pass [`GFN_LIMIT`].
    pub const fn new(start: Gfn, count: u64) -> Result<Self, GfnRangeError> {
        match start.checked_add(count) {
            Some(end) if end <= GFN_LIMIT => Ok(GfnRange { start, count }),
            _ => Err(GfnRangeError { start, count }),
        }
    }

    /// The gfns `start .. end`, or an error if `end < start` or `end` passes
    /// [`GFN_LIMIT`].
    pub const fn from_bounds(start: Gfn, end: Gfn) -> Result<Self, GfnRangeError> {
        if end < start {
            return Err(GfnRangeError {
                start,
                count: end.wrapping_sub(start),
            });
        }
        Self::new(start, end - start)
    }

    /// The single page at `gfn`.
    pub const fn page(gfn: Gfn) -> Result<Self, GfnRangeError> {
        Self::new(gfn, 1)
    }

    /// First gfn.
    pub const fn start(&self) -> Gfn {
        self.start
    }

    /// Number of gfns.
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// One past the last gfn; at most [`GFN_LIMIT`], never overflows.
    pub const fn end(&self) -> Gfn {
        self.start + self.count
    }

    /// True if the range has no gfns.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True if `gfn` is in the range.
    pub const fn contains(&self, gfn: Gfn) -> bool {
        self.start <= gfn && gfn < self.end()
    }

    /// The gfns of the range, in order.
    pub fn iter(&self) -> core::ops::Range<Gfn> {
        self.start..self.end()
    }

    /// The smallest range covering both `self` and `other` (their union when they overlap
    /// or touch). Infallible: both ends are within the limit already.
    pub const fn hull(&self, other: &GfnRange) -> GfnRange {
        let start = if self.start < other.start {
            self.start
        } else {
            other.start
        };
        let end = if self.end() > other.end() {
            self.end()
        } else {
            other.end()
        };
        GfnRange {
            start,
            count: end - start,
        }
    }

    /// The part of the range below `limit` (empty if it starts at or above it).
    pub const fn clamp_end(&self, limit: Gfn) -> GfnRange {
        let start = if self.start < limit {
            self.start
        } else {
            limit
        };
        let end = if self.end() < limit {
            self.end()
        } else {
            limit
        };
        // Either ends within the limit already (`start <= self.start`), or is empty.
        GfnRange {
            start,
            count: end.saturating_sub(start),
        }
    }

    /// Byte offset of the range's first page; fits in a `u64` by the invariant.
    pub const fn byte_offset(&self) -> u64 {
        self.start << PAGE_SHIFT
    }

    /// Length of the range in bytes; fits in a `u64` by the invariant.
    pub const fn byte_len(&self) -> u64 {
        self.count << PAGE_SHIFT
    }

    /// Byte offset one past the range's last page; fits in a `u64` by the invariant.
    pub const fn byte_end(&self) -> u64 {
        self.end() << PAGE_SHIFT
    }
}

impl IntoIterator for GfnRange {
    type Item = Gfn;
    type IntoIter = core::ops::Range<Gfn>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructor_refuses_ranges_past_the_limit() {
        assert!(GfnRange::new(0, GFN_LIMIT).is_ok());
        assert!(GfnRange::new(GFN_LIMIT, 0).is_ok());
        assert_eq!(
            GfnRange::new(1, GFN_LIMIT),
            Err(GfnRangeError {
                start: 1,
                count: GFN_LIMIT
            })
        );
        assert!(GfnRange::new(u64::MAX, 2).is_err());
        assert!(GfnRange::new(2, u64::MAX).is_err());
        assert!(GfnRange::from_bounds(5, 4).is_err());
        assert_eq!(GfnRange::from_bounds(4, 9), GfnRange::new(4, 5));
    }

    #[test]
    fn byte_conversions_fit() {
        let r = GfnRange::new(GFN_LIMIT - 3, 3).unwrap();
        assert_eq!(r.end(), GFN_LIMIT);
        assert_eq!(r.byte_offset(), (GFN_LIMIT - 3) * 4096);
        assert_eq!(r.byte_len(), 3 * 4096);
        assert_eq!(r.byte_end(), 1 << 52);
        assert_eq!(gfn_to_bytes(GFN_LIMIT - 1), Some((GFN_LIMIT - 1) * 4096));
        assert_eq!(gfn_to_bytes(GFN_LIMIT), None);
        assert_eq!(PAGE_BYTES, 1 << PAGE_SHIFT);
    }

    #[test]
    fn hull_and_clamp() {
        let a = GfnRange::new(10, 5).unwrap();
        let b = GfnRange::new(15, 2).unwrap();
        assert_eq!(a.hull(&b), GfnRange::new(10, 7).unwrap());
        assert_eq!(b.hull(&a), GfnRange::new(10, 7).unwrap());
        assert_eq!(a.clamp_end(12), GfnRange::new(10, 2).unwrap());
        assert!(a.clamp_end(8).is_empty());
        assert!(a.contains(14) && !a.contains(15));
    }
}
