use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use ballast_abi::vmbus::PacketType;

use super::*;

/// Packets each way in the exchanges.
const COUNT: u64 = 10_000;
const HOST: u8 = 0x48;
const GUEST: u8 = 0x47;
/// How long an end waits for a doorbell before calling the exchange stalled.
const STALL: Duration = Duration::from_secs(20);
/// Set in the child process of `two_process_exchange`.
const CHILD_ENV: &str = "BALLAST_RING_TEST_CHILD";

/// Payload length of packet `seq` from `from`: mostly small, now and then large.
fn payload_len(from: u8, seq: u64) -> usize {
    if seq % 97 == 13 {
        3000 + (seq as usize % 1000)
    } else {
        9 + (seq as usize * 37 + from as usize * 11) % 300
    }
}

fn fill_payload(out: &mut Vec<u8>, from: u8, seq: u64) {
    let len = payload_len(from, seq);
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(from);
    out.extend((9..len).map(|i| (seq as u8).wrapping_add(i as u8).wrapping_mul(from)));
}

fn trans_id(from: u8, seq: u64) -> u64 {
    (u64::from(from) << 56) | seq
}

fn check(p: &ReadPacket<'_>, from: u8, seq: u64, expected: &mut Vec<u8>) -> Result<(), String> {
    fill_payload(expected, from, seq);
    let len = expected.len();
    let ok = p.ty == PacketType::DATA_INBAND
        && p.flags == 0
        && p.trans_id == trans_id(from, seq)
        && p.payload.len() == len.next_multiple_of(8)
        && p.payload.get(..len) == Some(&expected[..])
        && p.payload[len..].iter().all(|&b| b == 0);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "packet {seq} from {from:#x} wrong: id {:#x}, {} bytes",
            p.trans_id,
            p.payload.len()
        ))
    }
}

#[derive(Debug, Default)]
struct Stats {
    full: u64,
    wakeups: u64,
}

/// Sends packets `first..COUNT` and receives `COUNT` packets, sleeping on the doorbell
/// only when neither direction can move.
fn exchange(
    ch: &mut Channel,
    me: u8,
    peer: u8,
    first: u64,
    stats: &mut Stats,
) -> Result<(), String> {
    let (mut sent, mut received) = (first, 0u64);
    let (mut out, mut buf, mut expected) = (Vec::new(), Vec::new(), Vec::new());
    while sent < COUNT || received < COUNT {
        let mut progress = false;
        while sent < COUNT {
            fill_payload(&mut out, me, sent);
            match ch.try_send(&out, trans_id(me, sent)) {
                Ok(()) => {
                    sent += 1;
                    progress = true;
                }
                Err(RingError::Full) => {
                    stats.full += 1;
                    break;
                }
                Err(e) => return Err(format!("send {sent}: {e}")),
            }
        }
        loop {
            match ch.try_recv(&mut buf) {
                Ok(Some(p)) => {
                    check(&p, peer, received, &mut expected)?;
                    received += 1;
                    progress = true;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("receive {received}: {e}")),
            }
        }
        if !progress {
            match ch.wait(Some(STALL)) {
                Ok(true) => stats.wakeups += 1,
                Ok(false) => {
                    return Err(format!("stalled: sent {sent}, received {received}"));
                }
                Err(e) => return Err(format!("doorbell: {e}")),
            }
        }
    }
    Ok(())
}

/// Sends until the ring is full; returns how many went.
fn fill(ch: &mut Channel, me: u8) -> u64 {
    let mut out = Vec::new();
    let mut sent = 0;
    loop {
        fill_payload(&mut out, me, sent);
        match ch.try_send(&out, trans_id(me, sent)) {
            Ok(()) => sent += 1,
            Err(RingError::Full) => return sent,
            Err(e) => panic!("fill: {e}"),
        }
    }
}

#[test]
fn in_process_pair_exchanges_both_ways() {
    let (mut host, mut guest) = Channel::pair_in_process(4096).unwrap();
    let host_first = fill(&mut host, HOST);
    let guest_first = fill(&mut guest, GUEST);
    assert!(host_first > 0 && guest_first > 0);
    let t = std::thread::spawn(move || {
        let mut stats = Stats::default();
        exchange(&mut guest, GUEST, HOST, guest_first, &mut stats).map(|()| stats)
    });
    let mut stats = Stats::default();
    exchange(&mut host, HOST, GUEST, host_first, &mut stats).unwrap();
    let guest_stats = t.join().unwrap().unwrap();
    println!("host {stats:?}, guest {guest_stats:?}");
}

#[test]
fn in_process_doorbells_follow_the_rules() {
    let (mut host, mut guest) = Channel::pair_in_process(DEFAULT_DATA_SIZE).unwrap();
    let mut buf = Vec::new();
    host.try_send(b"hello", 1).unwrap();
    assert!(guest.doorbell().try_consume().unwrap());
    host.try_send(b"again", 2).unwrap();
    assert!(
        !guest.doorbell().try_consume().unwrap(),
        "ring was not empty"
    );
    assert_eq!(guest.try_recv(&mut buf).unwrap().unwrap().trans_id, 1);
    assert_eq!(guest.try_recv(&mut buf).unwrap().unwrap().trans_id, 2);
    assert!(guest.try_recv(&mut buf).unwrap().is_none());
    assert!(
        !host.doorbell().try_consume().unwrap(),
        "host was not waiting"
    );
    // Fill the guest-to-host ring; draining enough of it wakes the guest once.
    let sent = fill(&mut guest, GUEST);
    assert!(host.doorbell().try_consume().unwrap());
    let mut woken = 0;
    for _ in 0..sent {
        assert!(host.try_recv(&mut buf).unwrap().is_some());
        woken += u32::from(guest.doorbell().try_consume().unwrap());
    }
    assert_eq!(woken, 1);
}

#[test]
fn channel_sizes_are_checked() {
    for size in [0, 100, 4097, MAX_DATA_SIZE + 4096] {
        assert!(matches!(
            Channel::pair_in_process(size),
            Err(SetupError::DataSize { .. })
        ));
        assert!(matches!(
            ChannelSetup::create(size),
            Err(SetupError::DataSize { .. })
        ));
    }
}

#[test]
fn setup_over_a_socket_in_one_process() {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut host, setup) = ChannelSetup::create(8192).unwrap();
    assert_eq!(setup.data_size(), 8192);
    setup.send(&a).unwrap();
    let mut guest = ChannelSetup::receive(&b).unwrap();
    drop(setup);
    let mut buf = Vec::new();
    host.try_send(b"ping", 7).unwrap();
    assert!(guest.wait(Some(Duration::from_secs(5))).unwrap());
    let p = guest.try_recv(&mut buf).unwrap().unwrap();
    assert_eq!((&p.payload[..4], p.trans_id), (&b"ping"[..], 7));
    guest.try_send(b"pong", 8).unwrap();
    assert!(host.wait(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(host.try_recv(&mut buf).unwrap().unwrap().trans_id, 8);
}

fn send_raw(socket: &UnixStream, header: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(header)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
}

fn header(magic: &[u8; 4], version: u32, data_size: u32, reserved: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(magic);
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&data_size.to_le_bytes());
    h[12..].copy_from_slice(&reserved.to_le_bytes());
    h
}

#[test]
fn bad_setups_are_refused() {
    let (_host, setup) = ChannelSetup::create(4096).unwrap();
    let bell = EventFdDoorbell::new().unwrap();
    let fds3 = [setup.region.fd(), bell.fd(), bell.fd()];
    let good = header(b"BLRG", 1, 4096, 0);
    let receive = |h: &[u8], fds: &[BorrowedFd<'_>]| {
        let (a, b) = UnixStream::pair().unwrap();
        send_raw(&a, h, fds);
        drop(a);
        ChannelSetup::receive(&b).unwrap_err()
    };
    assert!(matches!(
        receive(&header(b"XXXX", 1, 4096, 0), &fds3),
        SetupError::Magic { .. }
    ));
    assert!(matches!(
        receive(&header(b"BLRG", 2, 4096, 0), &fds3),
        SetupError::Version { found: 2 }
    ));
    assert!(matches!(
        receive(&header(b"BLRG", 1, 4095, 0), &fds3),
        SetupError::DataSize { .. }
    ));
    assert!(matches!(
        receive(&header(b"BLRG", 1, 4096, 9), &fds3),
        SetupError::Reserved { found: 9 }
    ));
    assert!(matches!(
        receive(&good[..10], &fds3),
        SetupError::Closed { received: 10 }
    ));
    assert!(matches!(
        receive(&good, &fds3[..2]),
        SetupError::FdCount { found: 2 }
    ));
    assert!(matches!(
        receive(&good, &[]),
        SetupError::FdCount { found: 0 }
    ));
    // Too many: dropped by the kernel past the receive buffer, or counted.
    let many = [bell.fd(); 8];
    assert!(matches!(
        receive(&good, &many),
        SetupError::FdsTruncated | SetupError::FdCount { found: 4.. }
    ));
    // The header says more ring than the memfd holds.
    assert!(matches!(
        receive(&header(b"BLRG", 1, 8192, 0), &fds3),
        SetupError::Backing(BackingError::TooLarge { .. })
    ));
    // An eventfd where the memfd should be.
    let wrong = [bell.fd(), bell.fd(), bell.fd()];
    assert!(matches!(receive(&good, &wrong), SetupError::Backing(_)));
    // Nothing at all.
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    assert!(matches!(
        ChannelSetup::receive(&b),
        Err(SetupError::Closed { received: 0 })
    ));
}

#[test]
fn a_received_setup_with_corrupt_indices_is_refused() {
    let (_host, setup) = ChannelSetup::create(4096).unwrap();
    setup
        .region
        .atomic_u32(READ_INDEX_OFFSET_FOR_TEST)
        .unwrap()
        .store(12, std::sync::atomic::Ordering::Release);
    let (a, b) = UnixStream::pair().unwrap();
    setup.send(&a).unwrap();
    assert!(matches!(
        ChannelSetup::receive(&b),
        Err(SetupError::Ring(RingError::Corrupt { .. }))
    ));
}

/// `read_index` of the guest-to-host ring, which the guest's writer checks on attach.
const READ_INDEX_OFFSET_FOR_TEST: usize = ballast_abi::vmbus::READ_INDEX_OFFSET;

/// The test's name as the harness knows it, to run just this test in the child.
fn this_test_name() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{module}::two_process_exchange")
}

/// The guest, in its own process: the setup socket is its standard input.
fn child() {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let socket = UnixStream::from(stdin);
    let mut guest = ChannelSetup::receive(&socket).unwrap();
    let first = fill(&mut guest, GUEST);
    // Both rings are full now; let the host start.
    (&socket).write_all(&[1]).unwrap();
    // `fill` stopped on a full ring.
    let mut stats = Stats {
        full: 1,
        wakeups: 0,
    };
    exchange(&mut guest, GUEST, HOST, first, &mut stats).unwrap();
    println!("guest: filled {first}, {stats:?}");
}

#[test]
fn two_process_exchange() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let (socket, child_socket) = UnixStream::pair().unwrap();
    let (mut host, setup) = ChannelSetup::create(DEFAULT_DATA_SIZE).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &this_test_name(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(child_socket)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The host-to-guest ring is full before the guest even maps it.
    let first = fill(&mut host, HOST);
    assert!(first > 0 && first < COUNT);
    setup.send(&socket).unwrap();
    drop(setup);
    let mut go = [0u8; 1];
    let started = (&socket).read_exact(&mut go);

    let mut stats = Stats {
        full: 1,
        wakeups: 0,
    };
    let result = started
        .map_err(|e| format!("guest never started: {e}"))
        .and_then(|()| exchange(&mut host, HOST, GUEST, first, &mut stats));
    if result.is_err() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let child_log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Err(e) = result {
        panic!("host: {e}\nguest output:\n{child_log}");
    }
    assert!(output.status.success(), "guest failed:\n{child_log}");
    assert!(
        child_log.contains("1 passed"),
        "the guest did not run the test:\n{child_log}"
    );
    println!("host: filled {first}, {stats:?}");
    for line in child_log.lines() {
        if let Some(at) = line.find("guest:") {
            println!("{}", &line[at..]);
        }
    }
}
