use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use ballast_abi::vmbus::{
    FEAT_PENDING_SEND_SZ, FEATURE_BITS_OFFSET, INTERRUPT_MASK_OFFSET, PENDING_SEND_SZ_OFFSET,
    PacketType, READ_INDEX_OFFSET, WRITE_INDEX_OFFSET, ring_len_for,
};
use proptest::prelude::*;
use rustix::fs::MemfdFlags;
use rustix::io::Errno;

use super::super::{Channel, Corruption, Doorbell, InProcessDoorbell, Reader, RingBuffer, Writer};
use super::*;

const PAGE: u64 = RING_PAGE_SIZE as u64;

/// Guest RAM as a VMM creates it: a memfd without `MFD_ALLOW_SEALING`, `pages` pages.
fn guest_ram(pages: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, pages * PAGE).unwrap();
    fd
}

/// A view of all of `ram`: the host's or the guest's mapping of it.
fn view(ram: &OwnedFd, pages: u64) -> Arc<SharedRegion> {
    Arc::new(SharedRegion::guest_ram(ram.as_fd(), 0, (pages * PAGE) as usize).unwrap())
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8) | 1)
        .collect()
}

/// The host end and the guest end of a channel whose rings lie in `host` and `guest`
/// (two views of the same memory) as `to_host` and `to_guest` say.
fn channel_pair(
    host: (RingBuffer, RingBuffer),
    guest: (RingBuffer, RingBuffer),
) -> (Channel, Channel) {
    // The guest initialises its rings, as Linux's `hv_ringbuffer_init` does, before it
    // offers them; the host attaches to what it finds.
    guest.0.init(FEAT_PENDING_SEND_SZ).unwrap();
    guest.1.init(FEAT_PENDING_SEND_SZ).unwrap();
    let host_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
    let guest_bell: Arc<dyn Doorbell> = Arc::new(InProcessDoorbell::new());
    let h = Channel::new(
        Writer::new(host.1).unwrap(),
        Reader::new(host.0).unwrap(),
        Arc::clone(&guest_bell),
        Arc::clone(&host_bell),
    );
    let g = Channel::new(
        Writer::new(guest.0).unwrap(),
        Reader::new(guest.1).unwrap(),
        host_bell,
        guest_bell,
    );
    (h, g)
}

/// Sends `count` packets of growing sizes from `from` to `to`, draining whenever the ring
/// is full, and checks each arrives intact. Returns (packets that crossed a page boundary
/// of the data area, packets that wrapped around its end).
fn exchange(from: &mut Channel, to: &mut Channel, count: u64, max_len: usize) -> (usize, usize) {
    let data_size = from.writer().ring().data_size() as usize;
    let mut buf = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    let (mut crossed, mut wrapped) = (0, 0);
    let mut drain_one =
        |to: &mut Channel, pending: &mut std::collections::VecDeque<(u64, Vec<u8>)>| {
            let (id, expect) = pending.pop_front().unwrap();
            let p = to.try_recv(&mut buf).unwrap().expect("a packet is queued");
            assert_eq!(p.ty, PacketType::DATA_INBAND);
            assert_eq!(p.trans_id, id);
            assert_eq!(&p.payload[..expect.len()], &expect[..]);
        };
    for seq in 0..count {
        let p = payload(seq, (seq as usize * 389) % max_len);
        let ring_len = ring_len_for(p.len()).unwrap();
        loop {
            let start = from
                .writer()
                .ring()
                .control_word(WRITE_INDEX_OFFSET)
                .unwrap()
                .load(Ordering::Acquire) as usize;
            match from.try_send(&p, seq) {
                Ok(()) => {
                    if start + ring_len > data_size {
                        wrapped += 1;
                    } else if start / RING_PAGE_SIZE != (start + ring_len - 1) / RING_PAGE_SIZE {
                        crossed += 1;
                    }
                    break;
                }
                Err(RingError::Full) => drain_one(to, &mut pending),
                Err(e) => panic!("{e}"),
            }
        }
        pending.push_back((seq, p));
    }
    while !pending.is_empty() {
        drain_one(to, &mut pending);
    }
    assert!(to.try_recv(&mut buf).unwrap().is_none());
    (crossed, wrapped)
}

#[test]
fn a_ring_lives_in_unsealable_guest_ram() {
    const PAGES: u64 = 64;
    let ram = guest_ram(PAGES);
    // What the only constructor for a received memfd did: it insists on the seal.
    let dup = rustix::io::fcntl_dupfd_cloexec(&ram, 0).unwrap();
    assert_eq!(
        SharedRegion::from_fd(dup, (PAGES * PAGE) as usize).err(),
        Some(BackingError::Syscall("fcntl(F_ADD_SEALS)", Errno::PERM))
    );
    // Two rings of 16 KiB back to back at page 8 of guest RAM, seen through two mappings.
    let (host, guest) = (view(&ram, PAGES), view(&ram, PAGES));
    let rings = |r: &Arc<SharedRegion>| {
        let at = 8 * RING_PAGE_SIZE;
        let size = 16 * 1024;
        (
            RingBuffer::new(Arc::clone(r), at, size).unwrap(),
            RingBuffer::new(Arc::clone(r), at + RING_PAGE_SIZE + size as usize, size).unwrap(),
        )
    };
    let (mut h, mut g) = channel_pair(rings(&host), rings(&guest));
    let (_, wrapped) = exchange(&mut g, &mut h, 300, 3000);
    assert!(wrapped > 10, "{wrapped}");
    exchange(&mut h, &mut g, 300, 3000);
    // Nothing sealed the VMM's memfd.
    assert_eq!(
        rustix::fs::fcntl_get_seals(&ram),
        Ok(rustix::fs::SealFlags::SEAL)
    );
    // And a region over just the rings' span works the same.
    let span = Arc::new(
        SharedRegion::guest_ram(ram.as_fd(), 8 * PAGE, 2 * (PAGE as usize + 16 * 1024)).unwrap(),
    );
    let to_host = RingBuffer::new(span, 0, 16 * 1024).unwrap();
    assert_eq!(
        to_host
            .control_word(WRITE_INDEX_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
        h.reader()
            .ring()
            .control_word(WRITE_INDEX_OFFSET)
            .unwrap()
            .load(Ordering::Acquire),
    );
}

/// The GPADL of the scattered-page test: out of order, never two neighbours in a row.
const OUTBOUND: [u64; 5] = [200, 17, 3, 150, 9];
const INBOUND: [u64; 5] = [41, 120, 88, 60, 4];

#[test]
fn a_ring_over_scattered_guest_pages_carries_packets_both_ways() {
    const PAGES: u64 = 256;
    let ram = guest_ram(PAGES);
    let gpadl: Vec<u64> = OUTBOUND.iter().chain(&INBOUND).map(|p| p * PAGE).collect();
    let (host, guest) = (view(&ram, PAGES), view(&ram, PAGES));
    let host_rings = RingBuffer::gpadl_pair(&host, &gpadl, OUTBOUND.len()).unwrap();
    let guest_rings = RingBuffer::gpadl_pair(&guest, &gpadl, OUTBOUND.len()).unwrap();
    assert_eq!(host_rings.0.data_size(), 4 * 4096);
    assert!(!host_rings.0.memory().is_contiguous());
    let (mut h, mut g) = channel_pair(host_rings.clone(), guest_rings);

    let (crossed, wrapped) = exchange(&mut g, &mut h, 500, 3500);
    assert!(crossed > 20 && wrapped > 20, "{crossed} {wrapped}");
    let (crossed, wrapped) = exchange(&mut h, &mut g, 500, 3500);
    assert!(crossed > 20 && wrapped > 20, "{crossed} {wrapped}");

    // The bytes are where the page list says: the data area read by position is its pages
    // in list order, and no page outside the list was touched.
    for (ring, pages) in [(&host_rings.0, &OUTBOUND), (&host_rings.1, &INBOUND)] {
        let mut by_position = vec![0u8; ring.data_size() as usize];
        ring.memory().read(0, &mut by_position).unwrap();
        let mut by_page = Vec::new();
        for &p in &pages[1..] {
            let mut page = vec![0u8; RING_PAGE_SIZE];
            host.read((p * PAGE) as usize, &mut page).unwrap();
            by_page.extend(page);
        }
        assert_eq!(by_position, by_page);
        assert!(by_position.iter().any(|&b| b != 0));
        let mut control = [0u8; 8];
        host.read((pages[0] * PAGE) as usize, &mut control).unwrap();
        assert_eq!(
            u32::from_ne_bytes(control[..4].try_into().unwrap()),
            ring.control_word(WRITE_INDEX_OFFSET)
                .unwrap()
                .load(Ordering::Acquire)
        );
    }
    let mut page = vec![0u8; RING_PAGE_SIZE];
    for p in (0..PAGES).filter(|p| !OUTBOUND.contains(p) && !INBOUND.contains(p)) {
        host.read((p * PAGE) as usize, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0), "page {p} was written");
    }
}

#[test]
fn page_lists_are_checked() {
    let ram = guest_ram(8);
    let region = view(&ram, 8);
    let ok = RingMemory::pages(Arc::clone(&region), &[7 * PAGE, 0, 3 * PAGE]).unwrap();
    assert_eq!(ok.data_size(), 8192);
    assert_eq!(ok.control_offset(), 7 * RING_PAGE_SIZE);
    for (pages, index, offset) in [
        (vec![0, 8 * PAGE], 1, 8 * PAGE),
        (vec![0, PAGE + 8], 1, PAGE + 8),
        (vec![100, PAGE], 0, 100),
        (vec![0, PAGE, u64::MAX - 4095], 2, u64::MAX - 4095),
        (vec![0, 7 * PAGE + 1], 1, 7 * PAGE + 1),
    ] {
        assert_eq!(
            RingMemory::pages(Arc::clone(&region), &pages).err(),
            Some(RingError::Page {
                index,
                offset,
                region_len: 8 * RING_PAGE_SIZE
            }),
            "{pages:?}"
        );
    }
    let max = MAX_DATA_SIZE as usize / RING_PAGE_SIZE + 1;
    for pages in [vec![], vec![0], vec![0; max + 1]] {
        assert_eq!(
            RingMemory::pages(Arc::clone(&region), &pages).err(),
            Some(RingError::PageCount {
                pages: pages.len(),
                max
            })
        );
    }
    // A GPADL split where one side gets no data page.
    assert!(RingBuffer::gpadl_pair(&region, &[0, PAGE, 2 * PAGE], 1).is_err());
    assert!(RingBuffer::gpadl_pair(&region, &[0, PAGE, 2 * PAGE], 3).is_err());
    assert!(RingBuffer::gpadl_pair(&region, &[0, PAGE, 2 * PAGE, 3 * PAGE], 2).is_ok());
}

#[test]
fn repeated_pages_are_rejected_within_a_ring_and_across_a_pair() {
    let ram = guest_ram(8);
    let region = view(&ram, 8);
    for (pages, offset) in [
        (vec![0, 0], 0),
        (vec![3 * PAGE, PAGE, 3 * PAGE], 3 * PAGE),
        (vec![0, PAGE, 2 * PAGE, PAGE], PAGE),
    ] {
        assert_eq!(
            RingMemory::pages(Arc::clone(&region), &pages).err(),
            Some(RingError::RepeatedPage { offset }),
            "{pages:?}"
        );
    }
    // Each ring alone is fine; the two share a page.
    for pages in [
        [0, PAGE, 2 * PAGE, 0],
        [0, PAGE, PAGE, 3 * PAGE],
        [0, 5 * PAGE, 2 * PAGE, 5 * PAGE],
    ] {
        assert!(matches!(
            RingBuffer::gpadl_pair(&region, &pages, 2).err(),
            Some(RingError::RepeatedPage { .. })
        ));
    }
    assert!(RingBuffer::gpadl_pair(&region, &[0, 5 * PAGE, 2 * PAGE, 7 * PAGE], 2).is_ok());
}

#[test]
fn data_area_accesses_stay_inside_it() {
    let ram = guest_ram(4);
    let region = view(&ram, 4);
    let pages = RingMemory::pages(Arc::clone(&region), &[3 * PAGE, 2 * PAGE, 0]).unwrap();
    let span = RingMemory::contiguous(Arc::clone(&region), 0, 8192).unwrap();
    for mem in [&pages, &span] {
        let mut buf = [0u8; 16];
        assert!(mem.read(8192 - 16, &mut buf).is_ok());
        assert!(mem.write(8192, &[]).is_ok());
        for (at, len) in [
            (8192 - 15, 16),
            (8192, 1),
            (usize::MAX, 1),
            (usize::MAX - 2, 16),
        ] {
            let mut buf = vec![0u8; len];
            assert!(
                matches!(mem.read(at, &mut buf), Err(RingError::Region(_))),
                "{at} {len}"
            );
            assert!(matches!(mem.write(at, &buf), Err(RingError::Region(_))));
        }
        assert!(mem.control_word(RING_CONTROL_SIZE).is_none());
        assert!(mem.control_word(usize::MAX).is_none());
        assert!(mem.control_word(4092).is_some());
        assert!(mem.write_control(&[0; RING_CONTROL_SIZE + 1]).is_err());
    }
    // A write straddling the page boundary lands in the two listed pages.
    pages.write(4090, b"abcdefghijkl").unwrap();
    let mut out = [0u8; 6];
    region.read(2 * RING_PAGE_SIZE + 4090, &mut out).unwrap();
    assert_eq!(&out, b"abcdef");
    region.read(0, &mut out).unwrap();
    assert_eq!(&out, b"ghijkl");

    // Runs of consecutive pages are taken in one piece, and end where the run does.
    let runs = RingMemory::pages(Arc::clone(&region), &[0, 2 * PAGE, 3 * PAGE, PAGE]).unwrap();
    let pattern: Vec<u8> = (0..3 * RING_PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    runs.write(0, &pattern).unwrap();
    let mut back = vec![0u8; pattern.len()];
    runs.read(0, &mut back).unwrap();
    assert!(back == pattern);
    // Data pages 0 and 1 are region pages 2 and 3, data page 2 is region page 1.
    let mut raw = vec![0u8; 2 * RING_PAGE_SIZE];
    region.read(2 * RING_PAGE_SIZE, &mut raw).unwrap();
    assert!(raw[..] == pattern[..2 * RING_PAGE_SIZE]);
    region
        .read(RING_PAGE_SIZE, &mut raw[..RING_PAGE_SIZE])
        .unwrap();
    assert!(raw[..RING_PAGE_SIZE] == pattern[2 * RING_PAGE_SIZE..]);
    let mut ends = [0u8; 16];
    runs.read(2 * RING_PAGE_SIZE - 8, &mut ends).unwrap();
    assert!(ends[..] == pattern[2 * RING_PAGE_SIZE - 8..2 * RING_PAGE_SIZE + 8]);
}

#[test]
fn hostile_indices_on_a_page_list_ring_are_errors() {
    let ram = guest_ram(16);
    let region = view(&ram, 16);
    let ring =
        RingBuffer::over_pages(Arc::clone(&region), &[9 * PAGE, 4 * PAGE, 2 * PAGE]).unwrap();
    ring.init(FEAT_PENDING_SEND_SZ).unwrap();
    let index = |o| ring.control_word(o).unwrap();
    let mut w = Writer::new(ring.clone()).unwrap();
    let mut r = Reader::new(ring.clone()).unwrap();
    let mut buf = Vec::new();
    let _ = w.try_write(b"hello", 1).unwrap();
    for bad in [8192, 8193, u32::MAX, 3] {
        let mut r = Reader::new(ring.clone()).unwrap();
        index(WRITE_INDEX_OFFSET).store(bad, Ordering::Release);
        assert!(matches!(
            r.try_read(&mut buf),
            Err(RingError::Corrupt {
                cause: Corruption::Index(_)
            })
        ));
        // Sticks, even once the index looks fine again.
        index(WRITE_INDEX_OFFSET).store(32, Ordering::Release);
        assert!(matches!(
            r.try_read(&mut buf),
            Err(RingError::Corrupt { .. })
        ));
    }
    index(WRITE_INDEX_OFFSET).store(32, Ordering::Release);
    let (p, _) = r.try_read(&mut buf).unwrap().unwrap();
    assert_eq!(&p.payload[..5], b"hello");
    for bad in [8192, 12, u32::MAX - 7] {
        index(READ_INDEX_OFFSET).store(32, Ordering::Release);
        let mut w = Writer::new(
            RingBuffer::over_pages(Arc::clone(&region), &[9 * PAGE, 4 * PAGE, 2 * PAGE]).unwrap(),
        )
        .unwrap();
        index(READ_INDEX_OFFSET).store(bad, Ordering::Release);
        assert!(matches!(
            w.try_write(b"x", 2),
            Err(RingError::Corrupt { .. })
        ));
    }
    // A descriptor that claims the whole ring and more is refused before any copy.
    index(READ_INDEX_OFFSET).store(32, Ordering::Release);
    let mut fresh = Reader::new(ring.clone()).unwrap();
    ring.memory()
        .write(32, &[6, 0, 2, 0, 0xff, 0xff, 0, 0])
        .unwrap();
    index(WRITE_INDEX_OFFSET).store(8184, Ordering::Release);
    assert!(matches!(
        fresh.try_read(&mut buf),
        Err(RingError::Corrupt {
            cause: Corruption::Packet(_)
        })
    ));
    let _ = w;
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Read,
    /// The peer stores a value into a control word: (which word, value, make it a
    /// plausible index).
    Scribble(usize, u32, bool),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (0usize..6000).prop_map(Op::Write),
            6 => Just(Op::Read),
            1 => (0usize..5, any::<u32>(), any::<bool>()).prop_map(|(w, v, p)| Op::Scribble(w, v, p)),
        ],
        1..200,
    )
}

/// A page list for a ring of `data_pages` data pages: a shuffled pick of guest pages.
fn gpadl() -> impl Strategy<Value = Vec<u64>> {
    (2usize..6).prop_flat_map(|n| {
        proptest::sample::subsequence((0..32u64).collect::<Vec<_>>(), n).prop_shuffle()
    })
}

type ReadOutcome = Result<Option<(PacketType, u16, u64, Vec<u8>, bool)>, RingError>;

fn read_one(r: &mut Reader, buf: &mut Vec<u8>) -> ReadOutcome {
    r.try_read(buf)
        .map(|o| o.map(|(p, s)| (p.ty, p.flags, p.trans_id, p.payload.to_vec(), s.is_needed())))
}

proptest! {
    #[test]
    fn prop_page_list_ring_matches_contiguous(pages in gpadl(), ops in ops()) {
        let data_size = ((pages.len() - 1) * RING_PAGE_SIZE) as u32;
        let ram = guest_ram(32);
        let scattered = RingBuffer::over_pages(
            view(&ram, 32),
            &pages.iter().map(|p| p * PAGE).collect::<Vec<_>>(),
        ).unwrap();
        let span = RingBuffer::new(
            Arc::new(SharedRegion::new("span", RING_CONTROL_SIZE + data_size as usize).unwrap()),
            0,
            data_size,
        ).unwrap();
        let rings = [scattered, span];
        let mut ends: Vec<(Writer, Reader)> = rings
            .iter()
            .map(|ring| {
                ring.init(FEAT_PENDING_SEND_SZ).unwrap();
                (Writer::new(ring.clone()).unwrap(), Reader::new(ring.clone()).unwrap())
            })
            .collect();
        let words = [
            WRITE_INDEX_OFFSET,
            READ_INDEX_OFFSET,
            INTERRUPT_MASK_OFFSET,
            PENDING_SEND_SZ_OFFSET,
            FEATURE_BITS_OFFSET,
        ];
        let mut buf = Vec::new();
        for (seq, op) in ops.into_iter().enumerate() {
            let seq = seq as u64;
            match op {
                Op::Write(len) => {
                    let p = payload(seq, len);
                    let [a, b] = [0, 1].map(|i| ends[i].0.try_write(&p, seq));
                    prop_assert_eq!(a, b);
                }
                Op::Read => {
                    let a = read_one(&mut ends[0].1, &mut buf);
                    let b = read_one(&mut ends[1].1, &mut buf);
                    prop_assert_eq!(a, b);
                }
                Op::Scribble(word, value, plausible) => {
                    let value = if plausible { (value % data_size) & !7 } else { value };
                    for ring in &rings {
                        ring.control_word(words[word]).unwrap().store(value, Ordering::Release);
                    }
                }
            }
            let [a, b] = [0, 1].map(|i| ends[i].0.free_bytes());
            prop_assert_eq!(a, b);
            for w in words {
                prop_assert_eq!(
                    rings[0].control_word(w).unwrap().load(Ordering::Acquire),
                    rings[1].control_word(w).unwrap().load(Ordering::Acquire)
                );
            }
        }
        // The data areas hold the same bytes, position by position.
        let [a, b] = [0, 1].map(|i| {
            let mut data = vec![0u8; data_size as usize];
            rings[i].memory().read(0, &mut data).unwrap();
            data
        });
        prop_assert_eq!(a, b);
    }
}
