use std::collections::VecDeque;

use ballast_abi::vmbus::{PACKET_TRAILER_LEN, ring_len_for, trailer};
use proptest::prelude::*;

use super::*;

/// A ring of `data_size` bytes at the start of a fresh region, and both its ends.
fn ring_with(data_size: u32, features: u32) -> (RingBuffer, Writer, Reader) {
    let region =
        Arc::new(SharedRegion::new("ring-test", RING_CONTROL_SIZE + data_size as usize).unwrap());
    let ring = RingBuffer::new(region, 0, data_size).unwrap();
    ring.init(features).unwrap();
    let writer = Writer::new(ring.clone()).unwrap();
    let reader = Reader::new(ring.clone()).unwrap();
    (ring, writer, reader)
}

fn new_ring(data_size: u32) -> (RingBuffer, Writer, Reader) {
    ring_with(data_size, FEAT_PENDING_SEND_SZ)
}

fn word(ring: &RingBuffer, offset: usize) -> &AtomicU32 {
    ring.control_word(offset).unwrap()
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|i| (seq as u8).wrapping_mul(7).wrapping_add(i as u8))
        .collect();
    if let Some(first) = p.first_mut() {
        *first = seq as u8;
    }
    p
}

/// Reads one packet and checks it is `expected` with id `trans_id`.
fn expect_packet(reader: &mut Reader, buf: &mut Vec<u8>, expected: &[u8], trans_id: u64) -> Signal {
    let (p, signal) = reader.try_read(buf).unwrap().expect("a packet is queued");
    assert_eq!(p.ty, PacketType::DATA_INBAND);
    assert_eq!(p.flags, 0);
    assert_eq!(p.trans_id, trans_id);
    assert_eq!(&p.payload[..expected.len()], expected);
    assert!(p.payload.len() - expected.len() < 8);
    assert!(p.payload[expected.len()..].iter().all(|&b| b == 0));
    signal
}

fn corrupt(r: Result<impl std::fmt::Debug, RingError>) -> Corruption {
    match r {
        Err(RingError::Corrupt { cause }) => cause,
        other => panic!("expected a corrupt-ring error, got {other:?}"),
    }
}

#[test]
fn round_trip_many_packets_with_wrap_around() {
    let (ring, mut w, mut r) = new_ring(512);
    let mut buf = Vec::new();
    let mut queue: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
    let mut wraps = 0;
    let mut last_index = 0;
    for seq in 0..5000u64 {
        let p = payload(seq, (seq as usize * 13) % 150);
        loop {
            match w.try_write(&p, seq) {
                Ok(_) => break,
                Err(RingError::Full) => {
                    let (exp, id) = queue.pop_front().unwrap();
                    let _ = expect_packet(&mut r, &mut buf, &exp, id);
                }
                Err(e) => panic!("{e}"),
            }
        }
        queue.push_back((p, seq));
        let index = word(&ring, WRITE_INDEX_OFFSET).load(Ordering::Acquire);
        if index < last_index {
            wraps += 1;
        }
        last_index = index;
        if seq % 3 == 0 {
            let (exp, id) = queue.pop_front().unwrap();
            let _ = expect_packet(&mut r, &mut buf, &exp, id);
        }
    }
    while let Some((exp, id)) = queue.pop_front() {
        let _ = expect_packet(&mut r, &mut buf, &exp, id);
    }
    assert!(r.try_read(&mut buf).unwrap().is_none());
    assert!(wraps > 100, "only {wraps} wraps");
}

#[test]
fn packet_bytes_follow_the_linux_layout() {
    let (ring, mut w, _r) = new_ring(4096);
    let _ = w.try_write(&[1, 2, 3], 0x1122_3344_5566_7788).unwrap();
    let _ = w.try_write(&[9; 8], 5).unwrap();
    let mut data = [0u8; 80];
    ring.region().read(RING_CONTROL_SIZE, &mut data).unwrap();
    // type 6, offset8 2, len8 3 (16 + 3 padded to 8), flags 0, trans id.
    assert_eq!(&data[..8], &[6, 0, 2, 0, 3, 0, 0, 0]);
    assert_eq!(&data[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&data[16..24], &[1, 2, 3, 0, 0, 0, 0, 0]);
    assert_eq!(&data[24..32], &trailer(0).to_le_bytes());
    assert_eq!(&data[32..40], &[6, 0, 2, 0, 3, 0, 0, 0]);
    assert_eq!(&data[56..64], &trailer(32).to_le_bytes());
    assert_eq!(word(&ring, WRITE_INDEX_OFFSET).load(Ordering::Acquire), 64);
    assert_eq!(
        word(&ring, FEATURE_BITS_OFFSET).load(Ordering::Acquire),
        FEAT_PENDING_SEND_SZ
    );
}

#[test]
fn full_ring_loses_nothing_and_resumes_after_drain() {
    let (ring, mut w, mut r) = new_ring(256);
    let mut buf = Vec::new();
    let mut sent = Vec::new();
    let mut seq = 0u64;
    loop {
        let p = payload(seq, 20);
        match w.try_write(&p, seq) {
            Ok(_) => sent.push((p, seq)),
            Err(RingError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        seq += 1;
    }
    // 48-byte packets in 256 bytes: five fit (240 used, 16 free, never all 256).
    assert_eq!(sent.len(), 5);
    let before = word(&ring, WRITE_INDEX_OFFSET).load(Ordering::Acquire);
    let blocked = payload(seq, 20);
    for _ in 0..3 {
        assert_eq!(w.try_write(&blocked, seq), Err(RingError::Full));
    }
    // Nothing was written and the writer asked for exactly its packet's room.
    assert_eq!(
        word(&ring, WRITE_INDEX_OFFSET).load(Ordering::Acquire),
        before
    );
    assert_eq!(
        word(&ring, PENDING_SEND_SZ_OFFSET).load(Ordering::Acquire),
        48
    );
    assert_eq!(w.free_bytes().unwrap(), 16);

    // One packet out frees 48 bytes: 64 > 48, so the writer is signalled.
    let (first, id) = sent.remove(0);
    assert_eq!(expect_packet(&mut r, &mut buf, &first, id), Signal::Peer);
    assert_eq!(w.try_write(&blocked, seq), Ok(Signal::Quiet));
    sent.push((blocked, seq));
    assert_eq!(
        word(&ring, PENDING_SEND_SZ_OFFSET).load(Ordering::Acquire),
        0
    );
    for (p, id) in sent {
        let _ = expect_packet(&mut r, &mut buf, &p, id);
    }
    assert!(r.try_read(&mut buf).unwrap().is_none());
}

#[test]
fn reader_signals_once_when_pending_send_size_is_met() {
    let (ring, mut w, mut r) = new_ring(512);
    let mut buf = Vec::new();
    // Ten 40-byte packets: 400 queued, 112 free.
    for seq in 0..10 {
        let _ = w.try_write(&[seq as u8; 16], seq).unwrap();
    }
    // A 200-byte packet needs more than 200 free.
    let big = [0xEE; 176];
    assert_eq!(ring_len_for(big.len()), Some(200));
    assert_eq!(w.try_write(&big, 99), Err(RingError::Full));
    assert_eq!(
        word(&ring, PENDING_SEND_SZ_OFFSET).load(Ordering::Acquire),
        200
    );
    // Free goes 112 -> 152 -> 192 -> 232: only the third read crosses 200.
    let signals: Vec<Signal> = (0..5)
        .map(|seq| expect_packet(&mut r, &mut buf, &[seq as u8; 16], seq))
        .collect();
    assert_eq!(
        signals,
        [
            Signal::Quiet,
            Signal::Quiet,
            Signal::Peer,
            Signal::Quiet,
            Signal::Quiet
        ]
    );
    assert_eq!(w.try_write(&big, 99), Ok(Signal::Quiet));
    assert_eq!(
        word(&ring, PENDING_SEND_SZ_OFFSET).load(Ordering::Acquire),
        0
    );
    // With no writer waiting, reads never signal.
    for seq in 5..10 {
        assert_eq!(
            expect_packet(&mut r, &mut buf, &[seq as u8; 16], seq),
            Signal::Quiet
        );
    }
    assert_eq!(expect_packet(&mut r, &mut buf, &big, 99), Signal::Quiet);
}

#[test]
fn without_the_feature_bit_no_pending_send_size() {
    let (ring, mut w, mut r) = ring_with(128, 0);
    let mut buf = Vec::new();
    while w.try_write(&[1; 40], 1).is_ok() {}
    assert_eq!(w.try_write(&[1; 40], 1), Err(RingError::Full));
    assert_eq!(
        word(&ring, PENDING_SEND_SZ_OFFSET).load(Ordering::Acquire),
        0
    );
    // Even a pending size the peer wrote is ignored without the feature.
    word(&ring, PENDING_SEND_SZ_OFFSET).store(8, Ordering::Release);
    assert_eq!(expect_packet(&mut r, &mut buf, &[1; 40], 1), Signal::Quiet);
}

#[test]
fn writer_signals_only_into_an_empty_unmasked_ring() {
    let (ring, mut w, mut r) = new_ring(1024);
    let mut buf = Vec::new();
    assert_eq!(w.try_write(b"a", 1), Ok(Signal::Peer));
    assert_eq!(w.try_write(b"b", 2), Ok(Signal::Quiet));
    let _ = expect_packet(&mut r, &mut buf, b"a", 1);
    // The reader has not caught up yet: it will find the new packet without a signal.
    assert_eq!(w.try_write(b"c", 3), Ok(Signal::Quiet));
    let _ = expect_packet(&mut r, &mut buf, b"b", 2);
    let _ = expect_packet(&mut r, &mut buf, b"c", 3);
    assert!(r.try_read(&mut buf).unwrap().is_none());
    assert_eq!(w.try_write(b"d", 4), Ok(Signal::Peer));
    let _ = expect_packet(&mut r, &mut buf, b"d", 4);

    // A reader draining with the mask set is not signalled, and learns of the packet
    // when it unmasks.
    r.mask_interrupts().unwrap();
    assert_eq!(
        word(&ring, INTERRUPT_MASK_OFFSET).load(Ordering::Acquire),
        1
    );
    assert!(r.try_read(&mut buf).unwrap().is_none());
    assert_eq!(w.try_write(b"e", 5), Ok(Signal::Quiet));
    assert!(r.unmask_interrupts().unwrap());
    let _ = expect_packet(&mut r, &mut buf, b"e", 5);
    assert!(!r.unmask_interrupts().unwrap());
    assert_eq!(w.try_write(b"f", 6), Ok(Signal::Peer));
}

#[test]
fn payload_too_large_for_the_ring() {
    let (ring, mut w, mut r) = new_ring(256);
    let max = ring.max_payload();
    assert_eq!(max, 256 - 8 - PACKET_TRAILER_LEN - DESCRIPTOR_LEN);
    assert_eq!(
        w.try_write(&vec![0; max + 1], 0),
        Err(RingError::TooLarge {
            payload_len: max + 1,
            max_payload: max
        })
    );
    assert_eq!(w.try_write(&vec![3; max], 7), Ok(Signal::Peer));
    let mut buf = Vec::new();
    let _ = expect_packet(&mut r, &mut buf, &vec![3; max], 7);
    assert_eq!(w.try_write(&vec![4; max], 8), Ok(Signal::Peer));
}

#[test]
fn layout_is_checked() {
    let region = Arc::new(SharedRegion::new("layout", 8192).unwrap());
    assert!(RingBuffer::new(Arc::clone(&region), 0, 4096).is_ok());
    assert!(RingBuffer::new(Arc::clone(&region), 8, 4088).is_ok());
    for (offset, size) in [
        (0, 4104),
        (8, 4096),
        (4, 1024),
        (0, 12),
        (0, 0),
        (0, 24),
        (usize::MAX - 7, 8),
    ] {
        assert!(
            matches!(
                RingBuffer::new(Arc::clone(&region), offset, size),
                Err(RingError::Layout { .. })
            ),
            "{offset} {size}"
        );
    }
    let ring = RingBuffer::new(region, 0, MIN_DATA_SIZE).unwrap();
    assert_eq!(ring.max_payload(), 0);
    assert!(ring.control_word(RING_CONTROL_SIZE).is_none());
    assert!(ring.control_word(2).is_none());
}

#[test]
fn corrupt_write_index_is_an_error_and_sticks() {
    for (bad, expected) in [
        (
            4096,
            Corruption::Index(vmbus::RingError::WriteIndexOutOfRange {
                write_index: 4096,
                data_size: 4096,
            }),
        ),
        (
            u32::MAX,
            Corruption::Index(vmbus::RingError::WriteIndexOutOfRange {
                write_index: u32::MAX,
                data_size: 4096,
            }),
        ),
        (
            44,
            Corruption::Index(vmbus::RingError::WriteIndexMisaligned { write_index: 44 }),
        ),
    ] {
        let (ring, mut w, mut r) = new_ring(4096);
        let _ = w.try_write(b"x", 1).unwrap();
        word(&ring, WRITE_INDEX_OFFSET).store(bad, Ordering::Release);
        let mut buf = Vec::new();
        assert_eq!(corrupt(r.try_read(&mut buf)), expected);
        // Putting the index back does not revive the reader: the owner resets.
        word(&ring, WRITE_INDEX_OFFSET).store(24, Ordering::Release);
        assert_eq!(corrupt(r.try_read(&mut buf)), expected);
        assert_eq!(corrupt(r.bytes_queued()), expected);
    }
}

#[test]
fn write_index_moving_back_is_corrupt() {
    let (ring, mut w, mut r) = new_ring(4096);
    let mut buf = Vec::new();
    for seq in 0..3 {
        let _ = w.try_write(b"abc", seq).unwrap();
    }
    let _ = expect_packet(&mut r, &mut buf, b"abc", 0);
    // 64 bytes queued; a writer taking one packet back claims 32.
    word(&ring, WRITE_INDEX_OFFSET).store(64, Ordering::Release);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::WriteIndexRetreated {
            readable: 32,
            known: 64
        }
    );
}

#[test]
fn corrupt_read_index_is_an_error_for_the_writer() {
    let (ring, mut w, _r) = new_ring(4096);
    let _ = w.try_write(b"x", 1).unwrap();
    word(&ring, READ_INDEX_OFFSET).store(4100, Ordering::Release);
    assert_eq!(
        corrupt(w.try_write(b"y", 2)),
        Corruption::Index(vmbus::RingError::ReadIndexOutOfRange {
            read_index: 4100,
            data_size: 4096
        })
    );
    assert!(matches!(w.free_bytes(), Err(RingError::Corrupt { .. })));

    // A reader claiming to have read past what was written (read_index beyond
    // write_index) would make queued bytes exceed what the writer wrote.
    let (ring, mut w, _r) = new_ring(4096);
    let _ = w.try_write(b"x", 1).unwrap();
    word(&ring, READ_INDEX_OFFSET).store(48, Ordering::Release);
    assert_eq!(
        corrupt(w.try_write(b"y", 2)),
        Corruption::ReadIndexInvalid {
            queued: 4096 - 48 + 32,
            known: 32
        }
    );
    // And so would one moving backwards after consuming.
    let (ring, mut w, mut r) = new_ring(4096);
    let mut buf = Vec::new();
    let _ = w.try_write(b"x", 1).unwrap();
    let _ = expect_packet(&mut r, &mut buf, b"x", 1);
    let _ = w.try_write(b"y", 2).unwrap();
    word(&ring, READ_INDEX_OFFSET).store(0, Ordering::Release);
    assert!(matches!(
        corrupt(w.try_write(b"z", 3)),
        Corruption::ReadIndexInvalid {
            queued: 64,
            known: 32
        }
    ));
}

/// Writes a raw descriptor at data index 0 and queues `queued` bytes.
fn forge(ring: &RingBuffer, desc: [u16; 4], queued: u32) {
    let mut bytes = [0u8; 16];
    for (i, v) in desc.iter().enumerate() {
        bytes[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
    }
    ring.region().write(RING_CONTROL_SIZE, &bytes).unwrap();
    word(ring, WRITE_INDEX_OFFSET).store(queued, Ordering::Release);
}

#[test]
fn lying_descriptors_are_corrupt() {
    let mut buf = Vec::new();
    // len8 claims 64 KiB - 8, far more than the 32 bytes queued.
    let (ring, _w, mut r) = new_ring(4096);
    forge(&ring, [6, 2, u16::MAX, 0], 32);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::Packet(PacketError::BeyondQueued {
            ring_len: u16::MAX as usize * 8 + 8,
            readable: 32
        })
    );
    // len8 just one unit past the queued bytes (trailer counted).
    let (ring, _w, mut r) = new_ring(4096);
    forge(&ring, [6, 2, 4, 0], 32);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::Packet(PacketError::BeyondQueued {
            ring_len: 40,
            readable: 32
        })
    );
    // Data offset inside the descriptor.
    let (ring, _w, mut r) = new_ring(4096);
    forge(&ring, [6, 1, 3, 0], 32);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::Packet(PacketError::DataOffsetTooSmall { offset8: 1 })
    );
    // Packet ending before its data.
    let (ring, _w, mut r) = new_ring(4096);
    forge(&ring, [6, 4, 3, 0], 32);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::Packet(PacketError::LengthBeforeData {
            offset8: 4,
            len8: 3
        })
    );
    // Fewer bytes queued than a descriptor.
    let (ring, _w, mut r) = new_ring(4096);
    forge(&ring, [6, 2, 2, 0], 8);
    assert_eq!(
        corrupt(r.try_read(&mut buf)),
        Corruption::Packet(PacketError::TooShortForDescriptor { available: 8 })
    );
    // A well-formed forged packet that wraps is fine (other types are passed up).
    let (ring, _w, _r) = new_ring(64);
    word(&ring, READ_INDEX_OFFSET).store(48, Ordering::Release);
    let mut r2 = Reader::new(ring.clone()).unwrap();
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&[11, 0, 2, 0, 2, 0, 0, 0]);
    ring.region()
        .write(RING_CONTROL_SIZE + 48, &bytes[..16])
        .unwrap();
    ring.region()
        .write(RING_CONTROL_SIZE, &bytes[16..])
        .unwrap();
    word(&ring, WRITE_INDEX_OFFSET).store(8, Ordering::Release);
    let (p, _) = r2.try_read(&mut buf).unwrap().unwrap();
    assert_eq!((p.ty, p.payload.len()), (PacketType::COMP, 0));
    assert!(r2.try_read(&mut buf).unwrap().is_none());
}

#[test]
fn reader_ignores_scribbles_on_its_own_index() {
    let (ring, mut w, mut r) = new_ring(4096);
    let mut buf = Vec::new();
    let _ = w.try_write(b"one", 1).unwrap();
    let _ = w.try_write(b"two", 2).unwrap();
    let _ = expect_packet(&mut r, &mut buf, b"one", 1);
    // The peer rewrites the reader's published index; the reader's own copy rules.
    word(&ring, READ_INDEX_OFFSET).store(4000, Ordering::Release);
    let _ = expect_packet(&mut r, &mut buf, b"two", 2);
    assert_eq!(word(&ring, READ_INDEX_OFFSET).load(Ordering::Acquire), 64);
}

#[test]
fn attaching_to_corrupt_indices_fails() {
    let region = Arc::new(SharedRegion::new("attach", RING_CONTROL_SIZE + 4096).unwrap());
    let ring = RingBuffer::new(region, 0, 4096).unwrap();
    ring.init(FEAT_PENDING_SEND_SZ).unwrap();
    word(&ring, READ_INDEX_OFFSET).store(3, Ordering::Release);
    assert!(matches!(
        Writer::new(ring.clone()),
        Err(RingError::Corrupt { .. })
    ));
    assert!(matches!(
        Reader::new(ring.clone()),
        Err(RingError::Corrupt { .. })
    ));
}

#[test]
fn threads_exchange_through_one_ring() {
    let (_ring, mut w, mut r) = new_ring(1024);
    let bell = Arc::new(InProcessDoorbell::new());
    let writer_bell = Arc::new(InProcessDoorbell::new());
    let (rb, wb) = (Arc::clone(&bell), Arc::clone(&writer_bell));
    const N: u64 = 20_000;
    let t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut seq = 0;
        while seq < N {
            match r.try_read(&mut buf).unwrap() {
                Some((p, signal)) => {
                    assert_eq!(p.trans_id, seq);
                    let len = (seq as usize * 7) % 100;
                    assert_eq!(&p.payload[..len], &payload(seq, len)[..]);
                    if signal.is_needed() {
                        wb.signal();
                    }
                    seq += 1;
                }
                None => assert!(
                    rb.wait_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap()
                ),
            }
        }
    });
    for seq in 0..N {
        let p = payload(seq, (seq as usize * 7) % 100);
        loop {
            match w.try_write(&p, seq) {
                Ok(signal) => {
                    if signal.is_needed() {
                        bell.signal();
                    }
                    break;
                }
                Err(RingError::Full) => assert!(
                    writer_bell
                        .wait_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap(),
                    "writer never woken"
                ),
                Err(e) => panic!("{e}"),
            }
        }
    }
    t.join().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Read,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![(0usize..200).prop_map(Op::Write), Just(Op::Read),],
        1..300,
    )
}

proptest! {
    #[test]
    fn prop_ring_is_a_fifo(ops in ops(), units in 4u32..64) {
        let data_size = units * 8;
        let (_ring, mut w, mut r) = new_ring(data_size);
        let mut model: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
        let mut queued = 0usize;
        let mut buf = Vec::new();
        for (seq, op) in ops.into_iter().enumerate() {
            let seq = seq as u64;
            match op {
                Op::Write(len) => {
                    let p = payload(seq, len);
                    let ring_len = ring_len_for(len).unwrap();
                    match w.try_write(&p, seq) {
                        Ok(_) => {
                            prop_assert!(data_size as usize - queued > ring_len);
                            queued += ring_len;
                            model.push_back((p, seq));
                        }
                        Err(RingError::Full) => {
                            prop_assert!(data_size as usize - queued <= ring_len);
                        }
                        Err(RingError::TooLarge { .. }) => {
                            prop_assert!(ring_len >= data_size as usize);
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Read => match (r.try_read(&mut buf).unwrap(), model.pop_front()) {
                    (None, None) => {}
                    (Some((p, _)), Some((exp, id))) => {
                        prop_assert_eq!(p.trans_id, id);
                        prop_assert_eq!(&p.payload[..exp.len()], &exp[..]);
                        queued -= ring_len_for(exp.len()).unwrap();
                    }
                    (got, want) => prop_assert!(false, "{got:?} vs {want:?}"),
                },
            }
        }
    }

    #[test]
    fn prop_garbage_never_panics(
        control in proptest::array::uniform5(any::<u32>()),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        moves in proptest::collection::vec(any::<u32>(), 0..8),
    ) {
        let (ring, _w, _r) = new_ring(256);
        ring.region().write(RING_CONTROL_SIZE, &data).unwrap();
        for (offset, v) in [
            WRITE_INDEX_OFFSET,
            READ_INDEX_OFFSET,
            INTERRUPT_MASK_OFFSET,
            PENDING_SEND_SZ_OFFSET,
            FEATURE_BITS_OFFSET,
        ]
        .into_iter()
        .zip(control)
        {
            word(&ring, offset).store(v, Ordering::Release);
        }
        let mut buf = Vec::new();
        if let Ok(mut r) = Reader::new(ring.clone()) {
            let mut moves = moves.into_iter();
            // The peer moves its index each time the ring looks empty.
            loop {
                match r.try_read(&mut buf) {
                    Ok(Some((p, _))) => prop_assert!(p.payload.len() < 256),
                    Ok(None) => match moves.next() {
                        Some(m) => word(&ring, WRITE_INDEX_OFFSET).store(m, Ordering::Release),
                        None => break,
                    },
                    Err(_) => break,
                }
            }
        }
        if let Ok(mut w) = Writer::new(ring.clone()) {
            let _ = w.try_write(&data, 1);
        }
    }
}
