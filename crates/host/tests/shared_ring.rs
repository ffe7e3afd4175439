//! A DM guest in its own process, on the shared-memory ring the host sets up through a Unix
//! socket (SCM_RIGHTS): the host balances it as it balances an in-process guest, and when
//! the guest's process is killed its memory stays accounted and comes back at teardown.
//!
//! The guest is this test binary run again with [`CHILD_ENV`] set, running just the test
//! that spawned it, with the setup socket as its standard input. It runs the VSC over a
//! `SimGuest` on real time until the socket closes or it is killed.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ballast_balancer::{Balancer, VmSettings};
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig};
use ballast_dm::vsp::VspConfig;
use ballast_host::{BackingMode, DmRing, Host, HostConfig, VmConfig, VmKind};
use ballast_vmbus::ring::ChannelSetup;
use ballast_vmbus::session::GuestSession;

/// Set in the guest process.
const CHILD_ENV: &str = "BALLAST_HOST_SHARED_RING_CHILD";
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const STARTUP: u64 = 512 * MIB;
/// What the guest's OS uses: the balancer wants most of the rest back.
const IN_USE: u64 = 100 * MIB;
/// The operator's target.
const TARGET: u64 = 320 * MIB;
/// Longest the balloon may take before the test calls it stuck.
const DEADLINE: Duration = Duration::from_secs(30);

/// The guest's process: the VSC on the channel received on standard input, pumped on real
/// time, sleeping on the doorbell between passes.
fn guest_process() {
    // The socket is standard input, handed over by the parent.
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup of stdin");
    let socket = UnixStream::from(fd);
    let channel = ChannelSetup::receive(&socket).expect("the host's setup");
    let boot = STARTUP / PAGE;
    let model = SimGuest::new(boot, boot - IN_USE / PAGE);
    let vsc = Vsc::new(VscConfig {
        status_delay_periods: 1,
        ..VscConfig::newest_linux()
    });
    let start = Instant::now();
    let mut guest = GuestSession::connect(vsc, channel, model, Duration::ZERO);
    // Runs until killed; the host never ends the session in this test.
    let _ = guest.run_until(|| start.elapsed(), Duration::from_secs(600), |_| false);
}

#[test]
fn a_guest_in_its_own_process_is_ballooned_over_the_shared_ring_and_its_death_costs_nothing() {
    if std::env::var_os(CHILD_ENV).is_some() {
        guest_process();
        return;
    }
    let mut host = Host::new(
        HostConfig {
            memory_bytes: 1024 * MIB,
            backing: BackingMode::RealMemory,
            reserve_bytes: 64 * MIB,
            vsp: VspConfig {
                post_caps_wait: Duration::from_millis(500),
                reply_timeout: Duration::from_secs(5),
                ..VspConfig::default()
            },
            balance_interval: Duration::from_millis(100),
        },
        Balancer::by_name("static").unwrap(),
    )
    .unwrap();
    let frames = host.total_bytes();
    let vm = host
        .create_vm_with_ring(
            VmConfig {
                name: "remote".into(),
                kind: VmKind::Dm,
                settings: VmSettings {
                    startup: STARTUP,
                    minimum: 128 * MIB,
                    maximum: 768 * MIB,
                    buffer_percent: 20,
                    weight: 50,
                },
                vps: 1,
                free_page_reporting: false,
            },
            DmRing::Shared,
        )
        .unwrap();
    assert!(
        host.take_dm_channel(vm).is_none(),
        "a shared ring has no in-process end"
    );
    let setup = host.take_dm_setup(vm).unwrap();
    assert!(
        host.take_dm_setup(vm).is_none(),
        "the setup is handed out once"
    );

    let (socket, child_socket) = UnixStream::pair().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_guest_in_its_own_process_is_ballooned_over_the_shared_ring_and_its_death_costs_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(child_socket)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    setup.send(&socket).unwrap();
    drop(setup);

    // On real time: first the guest's first report, then an operator's target (the
    // `static` policy keeps the startup memory, so only pumps run once it is set).
    let start = Instant::now();
    let accounted = |host: &Host| {
        let pools: u64 = host
            .hv()
            .partitions()
            .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
            .sum();
        host.free_bytes() + host.vm(vm).unwrap().assigned + pools
    };
    let mut target_set = false;
    let reached = loop {
        let now = start.elapsed();
        if !target_set {
            host.step(now);
        }
        while host.pump(now) {}
        host.hv().check().unwrap();
        assert_eq!(accounted(&host), frames, "every frame is somewhere");
        let v = host.vm(vm).unwrap();
        if !target_set && v.committed.is_some() {
            host.set_target(vm, TARGET).unwrap();
            target_set = true;
        }
        if v.assigned == TARGET {
            break true;
        }
        if now > DEADLINE {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let v = host.vm(vm).unwrap();
    if !reached {
        let _ = child.kill();
        panic!("the guest was not ballooned within {DEADLINE:?}: {v:?}");
    }
    let ballooned = STARTUP - v.assigned;
    assert_eq!(v.ops.balloon_pages * PAGE, ballooned, "{v:?}");
    // The host's memory followed: the pages given back are free again.
    assert!(host.free_bytes() >= ballooned, "{}", host.free_bytes());

    // A second balloon is asked for, and the guest's process dies with it in flight.
    host.set_target(vm, TARGET / 2).unwrap();
    let now = start.elapsed();
    host.pump(now);
    child.kill().unwrap();
    child.wait().unwrap();
    let died = start.elapsed();
    let assigned_at_death = host.vm(vm).unwrap().assigned;
    while start.elapsed() < died + Duration::from_secs(2) {
        let now = start.elapsed();
        while host.pump(now) {}
        host.hv().check().unwrap();
        assert_eq!(accounted(&host), frames);
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the guest had written to the ring before it died may still land; nothing
    // else moves, nothing is counted twice.
    let after = host.vm(vm).unwrap();
    assert!(after.assigned <= assigned_at_death, "{after:?}");
    assert!(after.assigned >= TARGET / 2, "{after:?}");
    assert_eq!(
        after.ops.balloon_pages * PAGE,
        STARTUP - after.assigned,
        "{after:?}"
    );

    // Teardown gives every frame back.
    host.destroy_vm(vm).unwrap();
    host.hv().check().unwrap();
    let root_pool: u64 = host
        .hv()
        .partitions()
        .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
        .sum();
    assert_eq!(host.free_bytes() + root_pool, frames);
}
