//! A 1 GiB balloon end to end through the host in real-memory mode, against the
//! whole-range punch limit measured in the same run.
//!
//! Run: `cargo bench -p ballast-host --bench balloon_e2e`
//!
//! Each sample starts (untimed) from a fresh [`Host`] with one guest of 1.25 GiB startup
//! memory, every page of it written (so resident in its memfd), its DM channel
//! negotiated. The timed part sets the guest's target 1 GiB lower and pumps host and guest
//! until the guest's assigned memory is there: for a DM guest the VSP's request, the
//! ring, the VSC taking pages from its OS, the ring, the VSP's validation against the
//! p2m, the core's release and the punch of the memfd; for a Xen guest the
//! `XENMEM_decrease_reservation` calls through the core and the punch. The unballoon
//! (DM) and populate (Xen) samples start from a guest ballooned that way (untimed) and
//! time the target's return: the host populates, the guest takes its pages back (their
//! first write, the guest's own work, is not timed).
//!
//! DM variants: 4 KiB pages (one page in use in every 2 MiB of the guest's free memory,
//! so the VSC finds no free 2 MiB block and balloons page by page) and 2 MiB blocks (all
//! free). The guest's balloon floor is set to zero: Linux's floor for 1.25 GiB (264 MiB)
//! would leave less than 1 GiB to give.
//!
//! The limit is one `fallocate(PUNCH_HOLE)` of a 1 GiB resident memfd range, the least a
//! host must do to give 1 GiB back. Every variant is measured interleaved with it
//! (`ballast_benchkit::interleaved`: one sample of each per round, the order rotating).
//! Figures are GiB moved per second, median (min .. max); each ratio is ballast's rate
//! over the limit's, the median of the per-round ratios (min .. max).

mod common;

use common::{GIB, MOVE, PAGE, STARTUP, fill, host, punch, settings, write_all};

use std::time::Duration;

use ballast_abi::xen::{DOMID_SELF, MemFlags, MemoryOp, MemoryOpCmd, XenMemoryReservation};
use ballast_backing::{PageSize, PartitionMemory};
use ballast_benchkit::{Sampling, Spread, interleaved, sig};
use ballast_core::{FlatMemory, GfnRange};
use ballast_dm::vsc::{SimGuest, Vsc, VscConfig, VscState};
use ballast_host::{Host, VmConfig, VmId, VmKind};
use ballast_vmbus::session::GuestSession;
use zerocopy::IntoBytes;

/// Most pump rounds a move may take before the bench calls it stalled.
const MAX_ROUNDS: usize = 100_000;
/// Each sample needs a fresh 1.25 GiB guest written page by page (about a second of
/// setup); the timed part is tens of milliseconds. A few rounds, capped in time.
const SAMPLING: Sampling = Sampling {
    min_rounds: 5,
    max_rounds: 31,
    budget: Duration::from_secs(45),
    rel_ci: 0.03,
};

/// A page pattern of the DM guest's free memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// One page in use in every 2 MiB block: the balloon takes 4 KiB pages.
    Small,
    /// All free: the balloon takes 2 MiB blocks.
    Large,
}

enum Guest {
    Dm(Box<GuestSession<SimGuest>>),
    Xen(XenDriver),
}

/// One guest on its own host.
struct Rig {
    host: Host,
    vm: VmId,
    guest: Guest,
}

fn dm_rig(pattern: Pattern) -> Rig {
    let mut host = host();
    let vm = host
        .create_vm(VmConfig {
            name: "dm".into(),
            kind: VmKind::Dm,
            settings: settings(),
            vps: 1,
            free_page_reporting: false,
        })
        .expect("a DM guest");
    write_all(&host, vm);
    let pages = STARTUP / PAGE;
    let mut os = SimGuest::new(pages, pages);
    if pattern == Pattern::Small {
        for b in 0..pages / 512 {
            os.occupy(GfnRange::new(b * 512, 1).expect("a page"));
        }
    }
    let vsc = Vsc::new(VscConfig {
        balloon_floor: Some(0),
        status_delay_periods: 0,
        ..VscConfig::newest_linux()
    });
    let channel = host.take_dm_channel(vm).expect("the guest end");
    let session = GuestSession::connect(vsc, channel, os, Duration::ZERO);
    let mut rig = Rig {
        host,
        vm,
        guest: Guest::Dm(Box::new(session)),
    };
    // Negotiation: version, capabilities, first status report.
    rig.pump_until(
        |r| matches!(&r.guest, Guest::Dm(s) if matches!(s.vsc.state(), VscState::Connected { .. })),
        64,
    );
    rig
}

fn xen_rig() -> Rig {
    let mut host = host();
    let vm = host
        .create_vm(VmConfig {
            name: "xen".into(),
            kind: VmKind::Xen,
            settings: settings(),
            vps: 1,
            free_page_reporting: false,
        })
        .expect("a Xen guest");
    write_all(&host, vm);
    Rig {
        host,
        vm,
        guest: Guest::Xen(XenDriver::new(vm, STARTUP / PAGE)),
    }
}

impl Rig {
    fn assigned(&self) -> u64 {
        self.host.vm(self.vm).map_or(0, |v| v.assigned)
    }

    /// Pumps both sides until `done` holds and nothing moves, or `rounds` pass.
    fn pump_until(&mut self, done: impl Fn(&Rig) -> bool, rounds: usize) {
        let now = Duration::ZERO;
        for _ in 0..rounds {
            let moved = match &mut self.guest {
                Guest::Dm(s) => {
                    let g = s.pump(now).map(|p| !p.is_idle()).unwrap_or(false);
                    g | self.host.pump(now)
                }
                Guest::Xen(x) => x.step(&mut self.host),
            };
            if !moved && done(self) {
                return;
            }
        }
        if !done(self) {
            panic!("stalled at {} bytes assigned", self.assigned());
        }
    }

    /// Sets the target and moves the guest there.
    fn move_to(&mut self, bytes: u64) {
        self.host.set_target(self.vm, bytes).expect("the guest");
        // Within the host's slack (2 MiB) of the target.
        self.pump_until(|r| r.assigned().abs_diff(bytes) <= 2 << 20, MAX_ROUNDS);
    }
}

/// Extents per hypercall, as Linux's balloon batches a page of `xen_pfn_t`s.
const EXTENTS_PER_CALL: u64 = 512;
const ARG_GPA: u64 = 0x1000;
const LIST_GPA: u64 = 0x2000;

/// A Xen balloon driver with nothing in use: RAM is `[0, pages)`, moved at the top in
/// 2 MiB extents (the sizes here are 2 MiB aligned).
struct XenDriver {
    vm: VmId,
    pages: u64,
    args: FlatMemory,
}

impl XenDriver {
    fn new(vm: VmId, pages: u64) -> Self {
        XenDriver {
            vm,
            pages,
            args: FlatMemory::new(
                ARG_GPA,
                (LIST_GPA - ARG_GPA + EXTENTS_PER_CALL * 8) as usize,
            ),
        }
    }

    /// One batch towards the host's target; true if it moved pages.
    fn step(&mut self, host: &mut Host) -> bool {
        let target = host.xen_target_pages(self.vm).unwrap_or(self.pages);
        let (op, first, count) = if self.pages >= target + 512 {
            let n = ((self.pages - target) / 512).min(EXTENTS_PER_CALL);
            (MemoryOp::DECREASE_RESERVATION, self.pages - n * 512, n)
        } else if target >= self.pages + 512 {
            let n = ((target - self.pages) / 512).min(EXTENTS_PER_CALL);
            (MemoryOp::POPULATE_PHYSMAP, self.pages, n)
        } else {
            return false;
        };
        let off = (LIST_GPA - ARG_GPA) as usize;
        for i in 0..count {
            let at = off + i as usize * 8;
            self.args.bytes[at..at + 8].copy_from_slice(&(first + i * 512).to_le_bytes());
        }
        let arg = XenMemoryReservation {
            extent_start: LIST_GPA,
            nr_extents: count,
            extent_order: 9,
            mem_flags: MemFlags(0),
            domid: DOMID_SELF,
            _pad0: [0; 6],
        };
        self.args.bytes[..size_of::<XenMemoryReservation>()].copy_from_slice(arg.as_bytes());
        let mut cmd = MemoryOpCmd::new(op).encode().expect("a known op");
        let done = loop {
            let r = host
                .xen_memory_op(self.vm, cmd, ARG_GPA, &mut self.args)
                .expect("a Xen guest");
            match r.continuation {
                Some(next) => cmd = next,
                None => break u64::try_from(r.ret).expect("extents done"),
            }
        };
        assert_eq!(done, count, "every extent moved");
        if op == MemoryOp::DECREASE_RESERVATION {
            self.pages -= done * 512;
        } else {
            self.pages += done * 512;
        }
        done > 0
    }
}

enum State {
    Rig(Box<Rig>),
    Limit,
}

fn case(name: &str, limit: &PartitionMemory, make: &dyn Fn() -> Rig, down_first: bool) {
    let low = STARTUP - MOVE;
    let c = interleaved(
        &SAMPLING,
        1,
        |i| {
            if i == 0 {
                let mut r = make();
                if down_first {
                    r.move_to(low);
                }
                State::Rig(Box::new(r))
            } else {
                fill(limit);
                State::Limit
            }
        },
        &mut [
            &mut |s| {
                if let State::Rig(r) = s {
                    r.move_to(if down_first { STARTUP } else { low });
                }
            },
            &mut |_| punch(limit),
        ],
    );
    let gibs = MOVE as f64 / GIB as f64 * 1e9;
    let ratio = |r: Spread| format!("{} ({} .. {})", sig(r.median), sig(r.min), sig(r.max));
    println!("{name} ({} rounds{}):", c.rounds(), c.note());
    println!("    ballast            {}", c.rate(0, gibs).show("GiB/s"));
    // A balloon's physical work is the punch, so the punch is its limit; an unballoon
    // or populate maps pages and allocates none (the guest's first writes do, untimed),
    // so there the punch is only a same-run reference for the machine's speed.
    let what = if down_first {
        "x the punch"
    } else {
        "of limit"
    };
    println!(
        "    whole-range punch  {} | ballast {} {what}",
        c.rate(1, gibs).show("GiB/s"),
        ratio(c.ratio(1, 0))
    );
}

fn main() {
    let limit =
        PartitionMemory::new("ballast-bench-limit", MOVE, MOVE, PageSize::Base).expect("a memfd");
    // Sanity: one move each way ends where it should, with the memfd following.
    let mut r = dm_rig(Pattern::Small);
    r.move_to(STARTUP - MOVE);
    let v = r.host.vm(r.vm).expect("the guest");
    assert!(v.resident.expect("real memory") <= v.assigned);
    drop(r);

    case(
        "DM balloon 1 GiB, 4 KiB pages",
        &limit,
        &|| dm_rig(Pattern::Small),
        false,
    );
    case(
        "DM balloon 1 GiB, 2 MiB blocks",
        &limit,
        &|| dm_rig(Pattern::Large),
        false,
    );
    case(
        "DM unballoon 1 GiB, 4 KiB pages",
        &limit,
        &|| dm_rig(Pattern::Small),
        true,
    );
    case(
        "DM unballoon 1 GiB, 2 MiB blocks",
        &limit,
        &|| dm_rig(Pattern::Large),
        true,
    );
    case("Xen decrease_reservation 1 GiB", &limit, &xen_rig, false);
    case("Xen populate_physmap 1 GiB", &limit, &xen_rig, true);
}
