//! Sequences of Xen `memory_op` calls from the control domain, a translated guest, a PV
//! guest and an unknown domain, on a small two-node host, with the translated guest
//! switching grant table version now and then.
//!
//! Each step takes a caller, a command word, 72 bytes of argument struct and list
//! contents from the input. Optional fix-ups aim the struct's handles at the lists, name
//! real domains and keep counts and orders small, so most steps get past the argument
//! checks. After every call (and every continuation) the model must pass `check()`, and
//! every gfn that left a p2m and every frame that left the heap must have a discard.
//! Populate-on-demand is in play: reservation calls may carry `XENMEMF_populate_on_demand`
//! and a step may end with a guest access to a PoD gfn; the translated guest has a
//! guest-physical limit and a small p2m budget.

#![no_main]

use std::collections::BTreeMap;

use ballast_abi::hv::HvProximityDomainInfo;
use ballast_abi::xen::{DOMID_SELF, MEMOP_EXTENT_SHIFT, MemoryOp};
use ballast_core::frame::FrameState;
use ballast_core::{
    Config, DomId, Effect, FlatMemory, GuestMemory, Hypervisor, MemoryRange, PartitionId,
    ROOT_DOMID, ROOT_ID,
};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x10_0000;
const ARG: u64 = BASE;
/// Three lists of up to 64 entries of 8 bytes.
const LISTS: [u64; 3] = [BASE + 0x100, BASE + 0x300, BASE + 0x500];
const MEM_LEN: usize = 0x800;
const STEPS: usize = 24;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

fn put(arg: &mut [u8], off: usize, bytes: &[u8]) {
    arg[off..off + bytes.len()].copy_from_slice(bytes);
}

fn get_u64(arg: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arg[off..off + 8].try_into().unwrap())
}

/// Where each sub-op's struct keeps its handles, domids, counts and orders.
struct Layout {
    handles: &'static [(usize, usize)],
    domids: &'static [usize],
    counts: &'static [usize],
    orders: &'static [usize],
}

fn layout(op: MemoryOp) -> Layout {
    use MemoryOp as M;
    let l = |handles, domids, counts, orders| Layout {
        handles,
        domids,
        counts,
        orders,
    };
    match op {
        M::INCREASE_RESERVATION
        | M::DECREASE_RESERVATION
        | M::POPULATE_PHYSMAP
        | M::CLAIM_PAGES => l(&[(0, 0)], &[24], &[8], &[16]),
        M::EXCHANGE => l(&[(0, 0), (32, 1)], &[24, 56], &[8, 40, 64], &[16, 48]),
        M::ADD_TO_PHYSMAP => l(&[], &[0], &[], &[]),
        M::ADD_TO_PHYSMAP_BATCH => l(&[(8, 0), (16, 1), (24, 2)], &[0], &[], &[]),
        M::MEMORY_MAP | M::MACHINE_MEMORY_MAP => l(&[(8, 0)], &[], &[], &[]),
        M::SET_MEMORY_MAP => l(&[(16, 0)], &[0], &[], &[]),
        M::ACQUIRE_RESOURCE => l(&[(24, 0)], &[0], &[], &[]),
        M::SET_POD_TARGET | M::GET_POD_TARGET => l(&[], &[32], &[], &[]),
        _ => l(&[], &[0], &[], &[]),
    }
}

type Snapshot = (Vec<(PartitionId, BTreeMap<u64, u32>)>, Vec<bool>);

fn snapshot(hv: &Hypervisor) -> Snapshot {
    let p2ms = hv
        .partitions()
        .map(|p| (p.id(), p.p2m().iter().collect()))
        .collect();
    let frames = hv.frames();
    (
        p2ms,
        (0..frames.len())
            .map(|m| frames.state(m) == FrameState::Free)
            .collect(),
    )
}

fn discarded(effects: &[Effect], partition: PartitionId, gfn: u64) -> bool {
    effects.iter().any(|e| e.discards(partition, gfn))
}

fn assert_discards(before: &Snapshot, hv: &Hypervisor, effects: &[Effect]) {
    for (id, map) in &before.0 {
        let now = hv.partition(*id).map(|p| p.p2m());
        for (&g, &m) in map {
            if now.and_then(|p| p.get(g)) != Some(m) {
                assert!(
                    discarded(effects, *id, g),
                    "{id:?} gfn {g:#x} left without a discard"
                );
            }
        }
    }
    for (m, &was_free) in before.1.iter().enumerate() {
        if was_free && hv.frames().state(m as u32) != FrameState::Free {
            assert!(
                discarded(effects, ROOT_ID, m as u64),
                "frame {m} left the heap silently"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Two nodes of 384 and 256 frames on a host with holes: RAM from frame 16, a reserved
    // range and a hole inside node 0, a gap before node 1. No hole frame may ever be
    // handed out (`check` counts the absent frames).
    let map = vec![
        MemoryRange::ram(0, 16, 184),
        MemoryRange::reserved(200, 16),
        MemoryRange::ram(0, 256, 200),
        MemoryRange::ram(1, 512, 256),
    ];
    let mut hv = Hypervisor::new(Config::with_memory_map(map)).unwrap();
    let a = hv.create_guest(256, HvProximityDomainInfo::ANY).unwrap();
    let b = hv.create_guest(128, HvProximityDomainInfo::ANY).unwrap();
    hv.set_translated(b, false).unwrap();
    hv.populate(a, 0, 8).unwrap();
    hv.populate(b, 0, 4).unwrap();
    hv.set_guest_physical_limit(a, 1 << 20).unwrap();
    hv.set_p2m_budget(a, Some(64 << 10)).unwrap();
    // The PV guest too: its exchange outputs must respect both (`check` catches a page
    // mapped past the limit).
    hv.set_guest_physical_limit(b, 4096).unwrap();
    hv.set_p2m_budget(b, Some(32 << 10)).unwrap();
    hv.take_effects();
    let domid = |id| hv.partition(id).unwrap().domid();
    let doms = [ROOT_DOMID, domid(a), domid(b), DomId(0x7000)];
    let mut mem = FlatMemory::new(BASE, MEM_LEN);
    let mut input = Input(data);

    for _ in 0..STEPS {
        let Some(&[who, op, start_kind, fix]) =
            input.bytes(4).map(|b| <&[u8; 4]>::try_from(b).unwrap())
        else {
            break;
        };
        let caller = doms[who as usize % doms.len()];
        // Mostly the assigned sub-ops, sometimes anything the 6 bits can say.
        let op = if op & 0x80 == 0 {
            u64::from(op % 29)
        } else {
            u64::from(op & 0x3f)
        };
        let start = match start_kind % 4 {
            0 | 1 => 0,
            2 => u64::from(start_kind >> 2),
            _ => input.u64().unwrap_or(0),
        };
        let cmd = op | start.wrapping_shl(MEMOP_EXTENT_SHIFT);
        let Some(raw) = input.bytes(72) else {
            break;
        };
        let mut arg = raw.to_vec();
        let lay = layout(MemoryOp(op as u32));
        if fix & 1 != 0 {
            for &(off, list) in lay.handles {
                put(&mut arg, off, &LISTS[list].to_le_bytes());
            }
        }
        if fix & 2 != 0 {
            for (i, &off) in lay.domids.iter().enumerate() {
                let pick = (arg[off] as usize + i * (fix as usize >> 6)) % 5;
                let d = [DOMID_SELF, 0, doms[1].0, doms[2].0, 0x7000][pick];
                put(&mut arg, off, &d.to_le_bytes());
            }
        }
        if fix & 4 != 0 {
            for &off in lay.orders {
                arg[off] %= 4;
                put(&mut arg, off + 1, &[0, 0, 0]);
            }
            for &off in lay.counts {
                let n = get_u64(&arg, off) % 17;
                put(&mut arg, off, &n.to_le_bytes());
            }
        }
        let reservation = [
            MemoryOp::INCREASE_RESERVATION,
            MemoryOp::DECREASE_RESERVATION,
            MemoryOp::POPULATE_PHYSMAP,
        ]
        .contains(&MemoryOp(op as u32));
        if fix & 16 != 0 && reservation {
            // XENMEMF_populate_on_demand.
            arg[22] |= 1;
        }
        if fix & 8 != 0 && op == u64::from(MemoryOp::EXCHANGE.0) {
            // Make the exchange's sizes agree so it gets to its chunks.
            let (in_nr, in_order, out_order) = (get_u64(&arg, 8), arg[16] % 4, arg[48] % 4);
            put(&mut arg, 16, &u32::from(in_order).to_le_bytes());
            put(&mut arg, 48, &u32::from(out_order).to_le_bytes());
            let out_nr = (in_nr % 17) << in_order >> out_order;
            put(&mut arg, 8, &(in_nr % 17).to_le_bytes());
            put(&mut arg, 40, &out_nr.to_le_bytes());
            put(&mut arg, 64, &0u64.to_le_bytes());
        }
        mem.write(ARG, &arg).unwrap();
        if fix & 0x30 == 0x30 {
            // The translated guest switches grant table version (GNTTABOP_set_version),
            // adding or dropping status frames, some of which it may have mapped.
            let before = snapshot(&hv);
            let _ = hv.xen_grant_set_version(a, 1 + u32::from(fix >> 7));
            hv.check().unwrap();
            assert_discards(&before, &hv, hv.effects());
        }

        // List entries: small gfns, frames the PV guest owns, or anything.
        let pv_frames: Vec<u64> = hv
            .partition(b)
            .unwrap()
            .p2m()
            .iter()
            .map(|(_, m)| u64::from(m))
            .collect();
        let n = input.byte().unwrap_or(0) % 64;
        for i in 0..u64::from(n) {
            let Some(kind) = input.byte() else { break };
            let v = match kind % 4 {
                0 => u64::from(kind >> 2),
                1 if !pv_frames.is_empty() => pv_frames[(kind >> 2) as usize % pv_frames.len()],
                2 => input.u64().unwrap_or(0),
                _ => u64::from(kind),
            };
            for list in LISTS {
                mem.write_u64(list + 8 * i, v).unwrap();
            }
        }
        let budget = match input.byte().unwrap_or(0) {
            0..=127 => None,
            b => Some(u64::from(b % 8)),
        };

        let before = snapshot(&hv);
        let mut cmd = cmd;
        for _ in 0..4096 {
            let r = match budget {
                Some(b) => hv.memory_op(caller, cmd, ARG, &mut mem, b),
                None => hv.memory_op_to_completion(caller, cmd, ARG, &mut mem),
            };
            if let Err(e) = hv.check() {
                panic!("{e} after cmd {cmd:#x} from {caller:?}: {r:?}");
            }
            match r.continuation {
                Some(next) => {
                    assert!(budget.is_some(), "memory_op returned a continuation");
                    cmd = next;
                }
                None => break,
            }
        }
        if fix & 32 != 0 {
            // The guest touches the gfn of the first list entry.
            let gfn = mem.read_u64(LISTS[0]).unwrap_or(0);
            let r = hv.pod_demand_populate(a, gfn);
            if let Err(e) = hv.check() {
                panic!("{e} after a PoD access to {gfn:#x}: {r:?}");
            }
        }
        assert_discards(&before, &hv, hv.effects());
        hv.take_effects();
    }
});
