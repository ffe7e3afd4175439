//! The Host with guests on the other end of real in-process rings.

use std::time::Duration;

use ballast_balancer::{Balancer, VmSettings};
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig};
use ballast_dm::vsp::VspConfig;
use ballast_host::{BackingMode, Host, HostConfig, VmConfig, VmKind};
use ballast_vmbus::session::GuestSession;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn dm_vm(name: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        kind: VmKind::Dm,
        settings: VmSettings {
            startup: 512 * MIB,
            minimum: 128 * MIB,
            maximum: 1024 * MIB,
            buffer_percent: 20,
            weight: 50,
        },
        vps: 2,
        free_page_reporting: false,
    }
}

#[test]
fn a_guest_that_stops_answering_is_marked_stuck_and_keeps_its_memory_accounted() {
    let mut host = Host::new(
        HostConfig {
            memory_bytes: 2048 * MIB,
            backing: BackingMode::RealMemory,
            reserve_bytes: 64 * MIB,
            vsp: VspConfig {
                post_caps_wait: Duration::from_secs(2),
                ..VspConfig::default()
            },
            balance_interval: Duration::from_secs(1),
        },
        Balancer::by_name("hyperv").unwrap(),
    )
    .unwrap();
    let boot = 512 * MIB / PAGE;
    let mut guests = Vec::new();
    for name in ["alive", "hangs"] {
        let vm = host.create_vm(dm_vm(name)).unwrap();
        let channel = host.take_dm_channel(vm).unwrap();
        // Little in use: the balancer wants most of the startup memory back.
        let model = SimGuest::new(boot, boot - 100 * MIB / PAGE);
        let vsc = Vsc::new(VscConfig {
            status_delay_periods: 1,
            ..VscConfig::newest_linux()
        });
        guests.push((
            vm,
            GuestSession::connect(vsc, channel, model, Duration::ZERO),
        ));
    }
    let hang_at = Duration::from_secs(10);
    let frames = host.total_bytes();
    let mut stuck_seen = false;
    for s in 0..200u64 {
        let now = Duration::from_secs(s);
        host.step(now);
        for _ in 0..64 {
            let mut moved = false;
            for (i, (_, g)) in guests.iter_mut().enumerate() {
                // The second guest's OS hangs: its end of the ring is never read again.
                if i == 1 && now >= hang_at {
                    continue;
                }
                moved |= !g.pump(now).unwrap().is_idle();
            }
            moved |= host.pump(now);
            if !moved {
                break;
            }
        }
        host.hv().check().unwrap();
        let hung = host.vm(guests[1].0).unwrap();
        if hung.stuck {
            stuck_seen = true;
            // Its memory stays its own and counted: nothing was taken from it.
            assert_eq!(hung.assigned, 512 * MIB);
        }
        // Every frame is somewhere: free, assigned to a guest, or in a pool.
        let assigned: u64 = guests
            .iter()
            .map(|(vm, _)| host.vm(*vm).unwrap().assigned)
            .sum();
        let pools: u64 = host
            .hv()
            .partitions()
            .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
            .sum();
        assert_eq!(host.free_bytes() + assigned + pools, frames);
    }
    let alive = host.vm(guests[0].0).unwrap();
    let hung = host.vm(guests[1].0).unwrap();
    assert!(stuck_seen && hung.stuck && hung.unresponsive, "{hung:?}");
    assert!(
        hung.ops.failures > 0,
        "the timed-out balloon is counted: {hung:?}"
    );
    // The other guest was balanced as if nothing had happened.
    assert!(alive.assigned < 256 * MIB, "{alive:?}");
    assert!(!alive.stuck);
    // Teardown gives every frame back.
    for (vm, _) in &guests {
        host.destroy_vm(*vm).unwrap();
    }
    host.hv().check().unwrap();
    let root_pool: u64 = host
        .hv()
        .partitions()
        .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
        .sum();
    assert_eq!(host.free_bytes() + root_pool, frames);
}

#[test]
fn hot_add_stays_within_the_maximum_when_it_is_not_block_aligned() {
    let mut host = Host::new(
        HostConfig {
            memory_bytes: 2048 * MIB,
            backing: BackingMode::RealMemory,
            reserve_bytes: 64 * MIB,
            vsp: VspConfig {
                post_caps_wait: Duration::from_secs(1),
                ..VspConfig::default()
            },
            balance_interval: Duration::MAX,
        },
        Balancer::by_name("static").unwrap(),
    )
    .unwrap();
    let mut cfg = dm_vm("odd");
    // 128 MiB memory blocks: 512 MiB boots, 800 MiB is two blocks and a half above it.
    cfg.settings.maximum = 800 * MIB;
    let vm = host.create_vm(cfg).unwrap();
    let channel = host.take_dm_channel(vm).unwrap();
    let boot = 512 * MIB / PAGE;
    let vsc = Vsc::new(VscConfig {
        status_delay_periods: 1,
        ..VscConfig::newest_linux()
    });
    let mut g = GuestSession::connect(vsc, channel, SimGuest::new(boot, boot), Duration::ZERO);
    host.step(Duration::ZERO);
    host.set_target(vm, 800 * MIB).unwrap();
    for s in 1..60u64 {
        let now = Duration::from_secs(s);
        for _ in 0..64 {
            let moved = !g.pump(now).unwrap().is_idle() | host.pump(now);
            if !moved {
                break;
            }
        }
        let v = host.vm(vm).unwrap();
        assert!(v.assigned <= 800 * MIB, "{v:?}");
        host.hv().check().unwrap();
    }
    let v = host.vm(vm).unwrap();
    // Two whole blocks were added; the half block that would pass the maximum was not.
    assert_eq!(v.assigned, 768 * MIB, "{v:?}");
    assert_eq!(v.ops.hot_add_pages, 256 * MIB / PAGE);
    assert_eq!(v.ops.failures, 0);
}

#[test]
fn a_guest_that_never_finishes_its_handshake_is_marked_unresponsive() {
    let mut host = Host::new(
        HostConfig {
            memory_bytes: 2048 * MIB,
            backing: BackingMode::Accounting,
            reserve_bytes: 64 * MIB,
            vsp: VspConfig {
                post_caps_wait: Duration::from_secs(2),
                ..VspConfig::default()
            },
            balance_interval: Duration::from_secs(1),
        },
        Balancer::by_name("hyperv").unwrap(),
    )
    .unwrap();
    let boot = 512 * MIB / PAGE;
    // One guest answers; the other's end of the ring is never read: no version, no
    // capabilities, no report, so no transaction of the host's can time out.
    let alive = host.create_vm(dm_vm("alive")).unwrap();
    let silent = host.create_vm(dm_vm("silent")).unwrap();
    let vsc = Vsc::new(VscConfig {
        status_delay_periods: 1,
        ..VscConfig::newest_linux()
    });
    let mut guest = GuestSession::connect(
        vsc,
        host.take_dm_channel(alive).unwrap(),
        SimGuest::new(boot, boot / 2),
        Duration::ZERO,
    );
    let _never_read = host.take_dm_channel(silent).unwrap();
    let mut flagged_at = None;
    for s in 0..200u64 {
        let now = Duration::from_secs(s);
        host.step(now);
        for _ in 0..64 {
            let moved = !guest.pump(now).unwrap().is_idle() | host.pump(now);
            if !moved {
                break;
            }
        }
        let v = host.vm(silent).unwrap();
        if v.unresponsive && flagged_at.is_none() {
            flagged_at = Some(s);
        }
        // Linux's first report can take 47 s: silence that long is no fault.
        if s <= 60 {
            assert!(!v.unresponsive, "flagged at {s} s");
        }
    }
    let at = flagged_at.expect("the silent guest is flagged");
    assert!((120..=122).contains(&at), "flagged at {at} s");
    let s = host.vm(silent).unwrap();
    assert!(s.stuck, "the balancer leaves it alone: {s:?}");
    assert_eq!(s.assigned, 512 * MIB, "and its memory stays its own");
    let a = host.vm(alive).unwrap();
    assert!(!a.unresponsive && a.committed.is_some(), "{a:?}");
}
