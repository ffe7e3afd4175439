//! A guest that outlives its host: a new host takes over its memfd, maps what the guest
//! says it owns (within what it may), and audits the rest away.

use std::time::Duration;

use ballast_balancer::{Balancer, VmSettings};
use ballast_core::GfnRange;
use ballast_dm::vsp::VspConfig;
use ballast_host::{BackingMode, DmRing, Host, HostConfig, VmConfig, VmError, VmKind};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn host() -> Host {
    Host::new(
        HostConfig {
            memory_bytes: 512 * MIB,
            backing: BackingMode::RealMemory,
            reserve_bytes: 16 * MIB,
            vsp: VspConfig::default(),
            balance_interval: Duration::from_secs(1),
        },
        Balancer::by_name("static").unwrap(),
    )
    .unwrap()
}

fn config(kind: VmKind) -> VmConfig {
    VmConfig {
        name: "g".into(),
        kind,
        settings: VmSettings {
            startup: 64 * MIB,
            minimum: 32 * MIB,
            maximum: 128 * MIB,
            buffer_percent: 20,
            weight: 50,
        },
        vps: 1,
        free_page_reporting: false,
    }
}

fn mark(g: u64) -> [u8; 8] {
    (g | 0xA5 << 56).to_le_bytes()
}

#[test]
fn a_new_host_takes_over_a_guests_memory_and_audits_away_what_it_does_not_own() {
    for kind in [VmKind::Xen, VmKind::Dm] {
        // The first host, and a guest's memory with a few pages written: two it owns, one
        // it had ballooned (resident because the old host died before the punch), and, for
        // the Xen guest, one beyond its RAM that it wrote anyway.
        let mut old = host();
        let vm = old
            .create_vm_with_ring(config(kind), DmRing::Shared)
            .unwrap();
        let p = old.vm(vm).unwrap().partition;
        for g in [5u64, 9000, 150] {
            old.memory().write_guest(p, g, &mark(g)).unwrap();
        }
        if kind == VmKind::Xen {
            old.memory().write_guest(p, 20_000, &mark(20_000)).unwrap();
        }
        let fd = old.memory_fd(vm).unwrap().try_clone_to_owned().unwrap();
        drop(old);

        let mut new = host();
        let frames = new.total_bytes();
        let top = 64 * MIB / PAGE;
        let ballooned = [
            GfnRange::new(100, 100).unwrap(),
            GfnRange::new(120, 10).unwrap(),
        ];

        // Claims it may not make are refused and leave nothing behind.
        let lie = new.resume_vm(
            config(kind),
            DmRing::Shared,
            fd.try_clone().unwrap(),
            256 * MIB / PAGE,
            &[],
        );
        assert!(
            matches!(lie, Err(VmError::Settings { .. })),
            "{kind:?}: {lie:?}"
        );
        let beyond = new.resume_vm(
            config(kind),
            DmRing::Shared,
            fd.try_clone().unwrap(),
            top,
            &[GfnRange::new(top, 1).unwrap()],
        );
        assert!(matches!(beyond, Err(VmError::Settings { .. })), "{kind:?}");
        assert_eq!(new.free_bytes(), frames);

        let (vm, report) = new
            .resume_vm(config(kind), DmRing::Shared, fd, top, &ballooned)
            .unwrap();
        let v = new.vm(vm).unwrap();
        assert_eq!(v.assigned, (top - 100) * PAGE, "{kind:?}");
        assert_eq!(report.kept_bytes, v.assigned);
        assert_eq!(report.ballooned_bytes, 100 * PAGE);
        let stray = if kind == VmKind::Xen { 2 } else { 1 };
        assert_eq!(report.punched_bytes, stray * PAGE, "{kind:?}");
        // What the guest owns kept its bytes; the rest reads zero and is not resident.
        let read = |g: u64| {
            let mut b = [0u8; 8];
            new.memory().read_guest(v.partition, g, &mut b).unwrap();
            b
        };
        assert_eq!(read(5), mark(5));
        assert_eq!(read(9000), mark(9000));
        assert_eq!(read(150), [0; 8]);
        assert_eq!(v.resident, Some(2 * PAGE));
        assert!(
            new.memory()
                .audit(v.partition, false)
                .unwrap()
                .violations
                .is_empty()
        );
        if kind == VmKind::Dm {
            assert_eq!(v.ballooned, 100 * PAGE, "the VSP holds what the guest gave");
        }
        new.hv().check().unwrap();
        new.destroy_vm(vm).unwrap();
        let pools: u64 = new
            .hv()
            .partitions()
            .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
            .sum();
        assert_eq!(new.free_bytes() + pools, frames);
    }
}
