//! Where a ring's bytes are: one span of a shared region, or a list of pages in it.
//!
//! A ring is a 4 KiB control page and a data area. A ring this crate sets up lies in one
//! span of its own memfd ([`RingMemory::contiguous`]). A ring a VMBus guest offers lies in
//! a GPADL, a list of guest pages in any order ([`RingMemory::pages`]): the first page is
//! the control page, the rest the data area, one page after another in list order, as
//! Linux's `hv_ringbuffer_init` (`drivers/hv/ring_buffer.c`) lays a ring over its pages.
//!
//! Either way the ring code reaches the bytes only through [`RingMemory`], which takes
//! data-area positions, checks each span against the data size before it touches memory,
//! and then against the region again in every copy: whatever the indices in the control
//! page say, no access leaves the ring's own pages.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use ballast_abi::vmbus::{self, RING_CONTROL_SIZE};
use ballast_backing::{BackingError, SharedRegion};

use super::{MAX_DATA_SIZE, MIN_DATA_SIZE, RingError};

/// Bytes per page of a page list: VMBus's `HV_HYP_PAGE_SIZE`, whatever the host's page.
pub const RING_PAGE_SIZE: usize = RING_CONTROL_SIZE;

/// Rejects a page list that names one page twice. Sorts a copy, so it costs
/// O(n log n) in the list's length, which the callers bound (at most two rings' worth of
/// pages).
pub(super) fn distinct_pages(pages: &[u64]) -> Result<(), RingError> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(RingError::RepeatedPage { offset: w[0] }),
        None => Ok(()),
    }
}

/// Where the data area lies.
#[derive(Debug, Clone)]
enum Data {
    /// Right after the control page, at this region offset.
    Contiguous(usize),
    /// Data page `i` of the ring at region offset `pages[i].0`, followed in the region by
    /// `pages[i].1` bytes of this and the next data pages in ring order: a copy takes a run
    /// of consecutive pages (as Linux allocates a ring's pages) in one piece.
    Pages(Arc<[(usize, usize)]>),
}

/// The memory one ring lives in: a control page and `data_size` bytes of data area, inside
/// one shared region.
#[derive(Debug, Clone)]
pub struct RingMemory {
    region: Arc<SharedRegion>,
    control: usize,
    data: Data,
    data_size: u32,
}

impl RingMemory {
    /// A ring in one span: the control page at `control_offset` of `region`, `data_size`
    /// bytes of data right after. `data_size` must be a multiple of 8 and at least
    /// [`MIN_DATA_SIZE`], `control_offset` a multiple of 8, and the ring must fit the
    /// region.
    pub fn contiguous(
        region: Arc<SharedRegion>,
        control_offset: usize,
        data_size: u32,
    ) -> Result<Self, RingError> {
        let layout = RingError::Layout {
            control_offset,
            data_size,
            region_len: region.len(),
        };
        vmbus::bytes_available_to_read(0, 0, data_size).map_err(|_| layout)?;
        if data_size < MIN_DATA_SIZE {
            return Err(layout);
        }
        let data = control_offset.checked_add(RING_CONTROL_SIZE);
        let end = data.and_then(|d| d.checked_add(data_size as usize));
        match (data, end) {
            (Some(data), Some(end))
                if end <= region.len() && control_offset % vmbus::PACKET_ALIGN == 0 =>
            {
                Ok(Self {
                    region,
                    control: control_offset,
                    data: Data::Contiguous(data),
                    data_size,
                })
            }
            _ => Err(layout),
        }
    }

    /// A ring over a page list (a GPADL): `pages[0]` is the byte offset in `region` of the
    /// control page, `pages[1..]` those of the data pages in ring order. Each offset must
    /// be a multiple of [`RING_PAGE_SIZE`] with its whole page inside the region; there
    /// must be at least one data page and at most [`MAX_DATA_SIZE`] bytes of them.
    ///
    /// No page may appear twice ([`RingError::RepeatedPage`]). A repeat would not reach
    /// outside the ring, but it would make two ring positions one address: the reader's
    /// byte loads and the writer's word stores (or the control page's words and the data
    /// bytes) would then race on it from two threads at different sizes, which Rust's
    /// memory model leaves undefined. Distinct page-aligned offsets are disjoint pages.
    pub fn pages(region: Arc<SharedRegion>, pages: &[u64]) -> Result<Self, RingError> {
        const MAX_PAGES: usize = MAX_DATA_SIZE as usize / RING_PAGE_SIZE + 1;
        if !(2..=MAX_PAGES).contains(&pages.len()) {
            return Err(RingError::PageCount {
                pages: pages.len(),
                max: MAX_PAGES,
            });
        }
        let region_len = region.len();
        let mut offsets = Vec::with_capacity(pages.len());
        for (index, &offset) in pages.iter().enumerate() {
            let bad = RingError::Page {
                index,
                offset,
                region_len,
            };
            let at = usize::try_from(offset).map_err(|_| bad)?;
            match at.checked_add(RING_PAGE_SIZE) {
                Some(end) if end <= region_len && at % RING_PAGE_SIZE == 0 => offsets.push(at),
                _ => return Err(bad),
            }
        }
        distinct_pages(pages)?;
        let control = offsets.remove(0);
        // At most MAX_DATA_SIZE, checked above.
        let data_size = (offsets.len() * RING_PAGE_SIZE) as u32;
        let mut pages = vec![(0, RING_PAGE_SIZE); offsets.len()];
        let mut next: Option<(usize, usize)> = None;
        for (slot, &offset) in pages.iter_mut().zip(&offsets).rev() {
            let run = match next {
                Some((n, run)) if offset.checked_add(RING_PAGE_SIZE) == Some(n) => {
                    run + RING_PAGE_SIZE
                }
                _ => RING_PAGE_SIZE,
            };
            *slot = (offset, run);
            next = Some((offset, run));
        }
        Ok(Self {
            region,
            control,
            data: Data::Pages(pages.into()),
            data_size,
        })
    }

    /// The size of the data area.
    pub fn data_size(&self) -> u32 {
        self.data_size
    }

    /// The region the ring lives in.
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// The offset of the control page in the region.
    pub fn control_offset(&self) -> usize {
        self.control
    }

    /// Whether the data area is one span right after the control page.
    pub fn is_contiguous(&self) -> bool {
        matches!(self.data, Data::Contiguous(_))
    }

    /// The control page word at `offset`, as both ends access it. `None` for an offset
    /// that is not a word of the control page.
    pub fn control_word(&self, offset: usize) -> Option<&AtomicU32> {
        if offset >= RING_CONTROL_SIZE {
            return None;
        }
        self.region.atomic_u32(self.control.checked_add(offset)?)
    }

    /// Overwrites the control page with `bytes` (at most a page) from its start.
    pub fn write_control(&self, bytes: &[u8]) -> Result<(), RingError> {
        if bytes.len() > RING_CONTROL_SIZE {
            return Err(RingError::Region(BackingError::OutOfRange {
                offset: 0,
                len: bytes.len() as u64,
                size: RING_CONTROL_SIZE as u64,
            }));
        }
        self.region.write(self.control, bytes)?;
        Ok(())
    }

    /// Checks that `[at, at + len)` lies in the data area.
    fn check(&self, at: usize, len: usize) -> Result<(), RingError> {
        match at.checked_add(len) {
            Some(end) if end <= self.data_size as usize => Ok(()),
            _ => Err(RingError::Region(BackingError::OutOfRange {
                offset: at as u64,
                len: len as u64,
                size: u64::from(self.data_size),
            })),
        }
    }

    /// Region offset of data position `at` (below the data size) and the bytes from there
    /// to the end of its piece of the data area.
    fn locate(&self, at: usize) -> Result<(usize, usize), RingError> {
        let located = match &self.data {
            Data::Contiguous(base) => base
                .checked_add(at)
                .map(|o| (o, (self.data_size as usize).saturating_sub(at))),
            Data::Pages(pages) => {
                let within = at % RING_PAGE_SIZE;
                pages
                    .get(at / RING_PAGE_SIZE)
                    .and_then(|&(p, run)| Some((p.checked_add(within)?, run - within)))
            }
        };
        match located {
            Some((offset, room)) if room > 0 => Ok((offset, room)),
            _ => Err(RingError::Region(BackingError::OutOfRange {
                offset: at as u64,
                len: 1,
                size: u64::from(self.data_size),
            })),
        }
    }

    /// Copies the data area bytes `[at, at + buf.len())` into `buf`. No wrap: the span
    /// must lie in the data area.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), RingError> {
        self.check(at, buf.len())?;
        let mut done = 0;
        // Each turn copies at least one byte (`locate` never answers an empty piece), and
        // a page list turn the rest of a page at least, so a copy takes at most
        // len / 4096 + 2 turns.
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let (offset, room) = self.locate(at + done)?;
            let n = room.min(rest.len());
            self.region
                .read(offset, rest.get_mut(..n).unwrap_or_default())?;
            done += n;
        }
        Ok(())
    }

    /// Copies `bytes` into the data area at `[at, at + bytes.len())`. No wrap: the span
    /// must lie in the data area.
    pub fn write(&self, at: usize, bytes: &[u8]) -> Result<(), RingError> {
        self.check(at, bytes.len())?;
        let mut done = 0;
        // Bounded as in `read`.
        while let Some(rest) = bytes.get(done..).filter(|r| !r.is_empty()) {
            let (offset, room) = self.locate(at + done)?;
            let n = room.min(rest.len());
            self.region
                .write(offset, rest.get(..n).unwrap_or_default())?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
