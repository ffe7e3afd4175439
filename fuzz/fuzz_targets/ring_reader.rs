//! Arbitrary shared memory into the VMBus ring reader, with a peer that keeps moving its
//! write index between reads: every call must give a packet, an empty ring or a
//! corrupt-ring error, never a panic or a read outside the ring.
//!
//! Input: data size (u16; with its top bit set, the ring lies over a page list of one to
//! four data pages instead of one span, in reverse order or, with bit 14 set too, in
//! order, one run), the five control words (u32 each: write_index, read_index,
//! interrupt_mask, pending_send_sz, feature_bits), a count of index moves and that many
//! u32 write indices, then the data area.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use ballast_abi::vmbus::{
    FEATURE_BITS_OFFSET, INTERRUPT_MASK_OFFSET, PENDING_SEND_SZ_OFFSET, READ_INDEX_OFFSET,
    RING_CONTROL_SIZE, WRITE_INDEX_OFFSET,
};
use ballast_vmbus::ring::{RING_PAGE_SIZE, Reader, RingBuffer, RingError, SharedRegion, Writer};
use libfuzzer_sys::fuzz_target;

const MAX_DATA: usize = 16 * 1024;

/// One region for every run: creating a memfd per input would dominate the time.
fn region() -> &'static Arc<SharedRegion> {
    static REGION: OnceLock<Arc<SharedRegion>> = OnceLock::new();
    REGION.get_or_init(|| {
        Arc::new(SharedRegion::new("fuzz-ring", RING_CONTROL_SIZE + MAX_DATA).expect("memfd"))
    })
}

/// Pages of the page-list rings: the control page last, the data pages before it.
const LIST_PAGES: usize = 5;

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = data.split_at_checked(n)?;
    *data = rest;
    Some(head)
}

fn u32_at(bytes: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(w)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(size) = take(&mut data, 2) else {
        return;
    };
    // 8 to 16 KiB in steps of 8; the smallest are below the ring minimum and must be
    // refused cleanly.
    let size = u16::from_le_bytes([size[0], size[1]]);
    let paged = size & 0x8000 != 0;
    let data_size = if paged {
        (u32::from(size) % (LIST_PAGES as u32 - 1) + 1) * RING_PAGE_SIZE as u32
    } else {
        (u32::from(size) % 2048 + 1) * 8
    };
    let Some(control) = take(&mut data, 20) else {
        return;
    };
    let moves = take(&mut data, 1).map_or(0, |m| usize::from(m[0] % 16));
    let moves: Vec<u32> = take(&mut data, moves * 4)
        .map(|m| m.chunks_exact(4).map(u32_at).collect())
        .unwrap_or_default();

    let region = region();
    let ring = if paged {
        let data_pages = data_size as usize / RING_PAGE_SIZE;
        let in_order = size & 0x4000 != 0;
        let pages: Vec<u64> = std::iter::once(LIST_PAGES - 1)
            .chain((0..data_pages).map(|i| if in_order { i } else { data_pages - 1 - i }))
            .map(|p| (p * RING_PAGE_SIZE) as u64)
            .collect();
        RingBuffer::over_pages(Arc::clone(region), &pages).expect("a valid page list")
    } else {
        match RingBuffer::new(Arc::clone(region), 0, data_size) {
            Ok(ring) => ring,
            Err(RingError::Layout { .. }) => return,
            Err(e) => panic!("unexpected {e}"),
        }
    };
    ring.memory()
        .write_control(&[0u8; RING_CONTROL_SIZE])
        .unwrap();
    let mut area = vec![0u8; data_size as usize];
    let n = data.len().min(area.len());
    area[..n].copy_from_slice(&data[..n]);
    ring.memory().write(0, &area).unwrap();

    for (i, offset) in [
        WRITE_INDEX_OFFSET,
        READ_INDEX_OFFSET,
        INTERRUPT_MASK_OFFSET,
        PENDING_SEND_SZ_OFFSET,
        FEATURE_BITS_OFFSET,
    ]
    .into_iter()
    .enumerate()
    {
        let word = ring.control_word(offset).unwrap();
        word.store(u32_at(&control[i * 4..]), Ordering::Release);
    }

    let mut buf = Vec::new();
    if let Ok(mut reader) = Reader::new(ring.clone()) {
        let mut moves = moves.iter();
        // Every packet consumes at least 24 bytes, so the loop ends by itself; the bound
        // only guards against a bug turning into a hang.
        for _ in 0..100_000 {
            match reader.try_read(&mut buf) {
                Ok(Some((packet, _))) => assert!(packet.payload.len() < data_size as usize),
                Ok(None) => {
                    let Some(&m) = moves.next() else { break };
                    let word = ring.control_word(WRITE_INDEX_OFFSET).unwrap();
                    word.store(m, Ordering::Release);
                }
                Err(e) => {
                    assert!(matches!(e, RingError::Corrupt { .. }), "{e}");
                    // A failed reader stays failed.
                    assert_eq!(reader.try_read(&mut buf).err(), Some(e));
                    break;
                }
            }
        }
        let _ = reader.unmask_interrupts();
    }
    // The writer's view of the same garbage: its checks must hold too.
    if let Ok(mut writer) = Writer::new(ring) {
        let payload = &data[..data.len().min(512)];
        match writer.try_write(payload, 1) {
            Ok(_)
            | Err(RingError::Full | RingError::TooLarge { .. } | RingError::Corrupt { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
});
