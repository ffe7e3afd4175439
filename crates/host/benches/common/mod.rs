//! What the host's end-to-end benchmarks share: a host whose balancer never runs, a
//! guest of 1.25 GiB written through, and the limit every 1 GiB move is held to, one
//! whole-range punch of a resident 1 GiB memfd range.

use std::time::Duration;

use ballast_backing::PartitionMemory;
use ballast_balancer::{Balancer, VmSettings};
use ballast_dm::vsp::VspConfig;
use ballast_host::{BackingMode, Host, HostConfig, VmId};
use rustix::fs::FallocateFlags;

pub const PAGE: u64 = 4096;
pub const GIB: u64 = 1 << 30;
/// The guest's startup memory: 1.25 GiB.
pub const STARTUP: u64 = GIB + GIB / 4;
/// The move: 1 GiB.
pub const MOVE: u64 = GIB;

/// A 2 GiB real-memory host. Its balancer is never ticked (the benches set targets or
/// make calls themselves), so the guest's memory stays where it started.
pub fn host() -> Host {
    Host::new(
        HostConfig {
            memory_bytes: 2 * GIB,
            backing: BackingMode::RealMemory,
            reserve_bytes: 0,
            vsp: VspConfig {
                post_caps_wait: Duration::ZERO,
                ..VspConfig::default()
            },
            balance_interval: Duration::MAX,
        },
        Balancer::by_name("static").expect("a known policy"),
    )
    .expect("a host")
}

/// The guest's settings: [`STARTUP`] fixed, a 64 MiB minimum.
pub fn settings() -> VmSettings {
    VmSettings {
        minimum: 64 << 20,
        startup: STARTUP,
        maximum: STARTUP,
        buffer_percent: 20,
        weight: 50,
    }
}

/// Writes every page the guest holds, so that all of it is resident.
pub fn write_all(host: &Host, vm: VmId) {
    let p = host.vm(vm).expect("the guest").partition;
    let buf = vec![0x5au8; 2 << 20];
    let mut off = 0;
    while off < STARTUP {
        host.memory()
            .write_guest(p, off / PAGE, &buf)
            .expect("a mapped page");
        off += buf.len() as u64;
    }
    assert_eq!(host.vm(vm).and_then(|v| v.resident), Some(STARTUP));
}

/// The limit's memfd, 1 GiB, filled (resident) before each sample.
pub fn fill(m: &PartitionMemory) {
    rustix::fs::fallocate(m.fd(), FallocateFlags::empty(), 0, MOVE).expect("fallocate");
    assert_eq!(m.resident_bytes().expect("resident"), MOVE);
}

/// The limit itself: one punch of the whole range.
pub fn punch(m: &PartitionMemory) {
    rustix::fs::fallocate(
        m.fd(),
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        MOVE,
    )
    .expect("punch");
}
