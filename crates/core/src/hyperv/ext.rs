//! The extended hypercalls of free page reporting: HvExtCallQueryCapabilities (0x8001)
//! and HvExtCallMemoryHeatHint (0x8003).
//!
//! Linux's `hv_balloon` asks for the cold discard capability when the partition has the
//! EnableExtendedHypercalls privilege, and then reports its free blocks from the page
//! reporting callback (`hv_free_page_report`): a heat hint of type COLD_DISCARD with one
//! `hv_gpa_page_range` per free block. A hinted page stays the guest's, mapped at the
//! same gfn; only its contents go, so the next read sees zeros and the host's resident
//! memory drops by what was hinted.
//!
//! # Decisions (the TLFS documents neither call's statuses)
//!
//! 20. **Who may call.** Both calls need EnableExtendedHypercalls (TLFS "Partition
//!     Privilege Flags"; without it ACCESS_DENIED, as KVM answers in `kvm_hv_hypercall`).
//!     A host without the cold discard hint ([`Config::cold_discard_hint`] off) does not
//!     know HvExtCallMemoryHeatHint: INVALID_HYPERCALL_CODE with 0 reps, as G1 would
//!     answer; its capability query answers 0.
//! 21. **Capabilities.** With the hint on: bit 1 (HvExtCallMemoryHeatHint, the TLFS
//!     table) and bit 8 (the cold discard hint, the bit Linux tests). Nothing else.
//! 22. **The hint.** In order: privilege (ACCESS_DENIED), more ranges than one input
//!     page holds (511, Linux's `HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES`) or a header with a
//!     type above COLD_DISCARD or a reserved bit set (INVALID_PARAMETER, 0 reps), then
//!     per range from rep start, each one atomic: the 1 GiB large form or a reserved bit
//!     of the large form, or a run that passes the caller's GPA space
//!     (INVALID_PARAMETER); a page of the run that is not RAM of the caller (unmapped,
//!     ballooned, populate-on-demand, a hypervisor page such as a grant frame:
//!     OPERATION_DENIED, the status HvDepositMemory gives a page the caller does not
//!     hold, and not INVALID_PARAMETER, which Linux reads as "orders below 9 are not
//!     supported" and answers by reporting only 2 MiB blocks). Ranges before the bad one
//!     stand. COLD and HOT hints are accepted and change nothing: a hint a host may
//!     ignore. Small-form ranges (4 KiB pages) are served, as a current Hyper-V does.
//!
//! The work of one call is bounded by what it names: at most 511 ranges of at most 4 GiB,
//! each checked a p2m leaf at a time, and nothing can be hinted that the caller does not
//! hold.

use ballast_abi::hv::{
    HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES, HvError, HvExtCapabilities, HvGpaPageRange,
    HvMemoryHeatHint, HvMemoryHeatHintType, HvRepResult, HvResult, HypercallCode,
};

use crate::PartitionId;
use crate::hypervisor::Hypervisor;

impl Hypervisor {
    /// True if the host serves the hypercall with this code (the extended ones are host
    /// settings).
    pub(super) fn offers(&self, code: u16) -> bool {
        HypercallCode(code) != HypercallCode::HvExtCallMemoryHeatHint
            || self.config.cold_discard_hint
    }

    /// The caller's slot if it may make extended hypercalls (ACCESS_DENIED otherwise).
    pub(super) fn extended_caller(&self, caller: PartitionId) -> HvResult<u32> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.enable_extended_hypercalls() {
            return Err(HvError::ACCESS_DENIED);
        }
        Ok(c)
    }

    /// HvExtCallQueryCapabilities: the extended hypercalls the host offers the caller.
    pub fn query_capabilities(&self, caller: PartitionId) -> HvResult<HvExtCapabilities> {
        self.extended_caller(caller)?;
        let on = self.config.cold_discard_hint;
        Ok(HvExtCapabilities::new()
            .with_memory_heat_hint(on)
            .with_memory_cold_discard_hint(on))
    }

    /// HvExtCallMemoryHeatHint: the caller's hint about `ranges` of its own memory; with
    /// COLD_DISCARD their contents are discarded (an [`Effect::Discard`](crate::Effect)
    /// while the gfns stay mapped). On failure the index (into `ranges`) of the range that
    /// failed, the ones before it applied. 1 to 511 ranges per call.
    pub fn memory_heat_hint(
        &mut self,
        caller: PartitionId,
        header: HvMemoryHeatHint,
        ranges: &[HvGpaPageRange],
    ) -> HvRepResult {
        if !self.config.cold_discard_hint {
            return Err((HvError::INVALID_HYPERCALL_CODE, 0));
        }
        super::rep_len_ok(ranges.len())?;
        let c = self.extended_caller(caller).map_err(|e| (e, 0))?;
        let kind = header.hint_type();
        if ranges.len() > usize::from(HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES)
            || header.reserved() != 0
            || !matches!(
                kind,
                HvMemoryHeatHintType::COLD
                    | HvMemoryHeatHintType::HOT
                    | HvMemoryHeatHintType::COLD_DISCARD
            )
        {
            return Err((HvError::INVALID_PARAMETER, 0));
        }
        let id = self.part(c).id;
        let limit = self.part(c).gfn_limit();
        for (i, r) in ranges.iter().enumerate() {
            // `i` < 511: checked above.
            let at = |e| (e, i as u16);
            let (start, count) = r.pages().map_err(|_| at(HvError::INVALID_PARAMETER))?;
            if start.checked_add(count).is_none_or(|end| end > limit) {
                return Err(at(HvError::INVALID_PARAMETER));
            }
            if self.first_not_ram(c, start, count).is_some() {
                return Err(at(HvError::OPERATION_DENIED));
            }
            if kind == HvMemoryHeatHintType::COLD_DISCARD {
                self.effects.discard(id, start, count);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ballast_abi::hv::{
        Control, HvPartitionPrivilegeMask, HvProximityDomainInfo, HvStatus, HypercallOutput,
    };
    use zerocopy::IntoBytes;

    use super::*;
    use crate::frame::NodeSel;
    use crate::hyperv::SELF;
    use crate::hypervisor::ROOT_ID;
    use crate::{Config, Effect, GfnRange};

    const EXT: HvPartitionPrivilegeMask =
        HvPartitionPrivilegeMask::new().with_enable_extended_hypercalls(true);
    const COLD_DISCARD: HvMemoryHeatHint = HvMemoryHeatHint::new().with_heat_type(2);

    /// A host with one initialized child holding gfns 0..2048 (8 MiB), with the
    /// extended-hypercall privilege if `ext`.
    fn guest(ext: bool) -> (Hypervisor, PartitionId) {
        let mut hv = Hypervisor::new(Config::single_node(16384)).unwrap();
        let input =
            ballast_abi::hv::CreatePartitionInput::Tlfs2(ballast_abi::hv::HvCreatePartition {
                flags: 0,
                proximity_domain_info: HvProximityDomainInfo::ANY,
            });
        let id = hv
            .call_with_deposits(SELF, NodeSel::Any, 1, 64, |hv| {
                hv.create_partition(ROOT_ID, &input)
            })
            .unwrap();
        hv.call_with_deposits(id, NodeSel::Any, 64, 8, |hv| {
            hv.initialize_partition(ROOT_ID, id)
        })
        .unwrap();
        if ext {
            hv.set_partition_privileges(id, EXT).unwrap();
        }
        hv.set_max_pages(id, 4096).unwrap();
        hv.populate(id, 0, 2048).unwrap();
        hv.take_effects();
        (hv, id)
    }

    fn discards(hv: &mut Hypervisor) -> Vec<(u64, u64)> {
        hv.take_effects()
            .into_iter()
            .map(|e| match e {
                Effect::Discard { range, .. } => (range.start(), range.count()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn ctl(code: HypercallCode, reps: u16, start: u16) -> u64 {
        Control::for_call(code, reps, start).into_bits()
    }

    fn result(rax: u64) -> (HvStatus, u16) {
        let o = HypercallOutput::from_bits(rax);
        (o.status(), o.reps_completed())
    }

    fn hint_input(header: HvMemoryHeatHint, ranges: &[HvGpaPageRange]) -> Vec<u8> {
        let mut v = header.into_bits().to_le_bytes().to_vec();
        for r in ranges {
            v.extend_from_slice(r.as_bytes());
        }
        v
    }

    #[test]
    fn capabilities_answer_the_bits_linux_tests() {
        let (mut hv, g) = guest(true);
        let caps = hv.query_capabilities(g).unwrap();
        assert!(caps.memory_cold_discard_hint() && caps.memory_heat_hint());
        assert_eq!(caps.into_bits(), 1 << 1 | 1 << 8);
        let mut out = [0u8; 8];
        let rax = hv.hypercall(
            g,
            ctl(HypercallCode::HvExtCallQueryCapabilities, 0, 0),
            &[],
            &mut out,
        );
        assert_eq!(result(rax), (HvStatus::SUCCESS, 0));
        assert_eq!(u64::from_le_bytes(out), 1 << 1 | 1 << 8);
        // Without the privilege: ACCESS_DENIED, and the output page is left alone.
        let (mut hv, g) = guest(false);
        let mut out = [0xAAu8; 8];
        let rax = hv.hypercall(
            g,
            ctl(HypercallCode::HvExtCallQueryCapabilities, 0, 0),
            &[],
            &mut out,
        );
        assert_eq!(result(rax).0, HvError::ACCESS_DENIED.into());
        assert_eq!(out, [0xAA; 8]);
    }

    #[test]
    fn a_host_without_the_hint_does_not_know_the_call() {
        let (mut hv, g) = guest(true);
        hv.config.cold_discard_hint = false;
        assert_eq!(hv.query_capabilities(g).unwrap().into_bits(), 0);
        let input = hint_input(COLD_DISCARD, &[HvGpaPageRange::small(0, 1).unwrap()]);
        let rax = hv.hypercall(
            g,
            ctl(HypercallCode::HvExtCallMemoryHeatHint, 1, 0),
            &input,
            &mut [],
        );
        assert_eq!(result(rax), (HvError::INVALID_HYPERCALL_CODE.into(), 0));
        assert!(hv.take_effects().is_empty());
    }

    #[test]
    fn cold_discard_keeps_the_pages_mapped_and_discards_their_contents() {
        let (mut hv, g) = guest(true);
        let before: Vec<_> = (0..2048)
            .map(|x| hv.partition(g).unwrap().p2m().get(x))
            .collect();
        let ranges = [
            HvGpaPageRange::large_2m(1, 2).unwrap(), // gfns 512..1536
            HvGpaPageRange::small(10, 6).unwrap(),   // gfns 10..16
        ];
        hv.memory_heat_hint(g, COLD_DISCARD, &ranges).unwrap();
        assert_eq!(discards(&mut hv), [(512, 1024), (10, 6)]);
        let after: Vec<_> = (0..2048)
            .map(|x| hv.partition(g).unwrap().p2m().get(x))
            .collect();
        assert_eq!(before, after, "hinted pages stay mapped at the same frames");
        hv.check().unwrap();
        // COLD and HOT are accepted and change nothing.
        for t in [0, 1] {
            hv.memory_heat_hint(g, HvMemoryHeatHint::new().with_heat_type(t), &ranges)
                .unwrap();
            assert!(hv.take_effects().is_empty());
        }
    }

    #[test]
    fn validation_order_and_statuses() {
        let (mut hv, g) = guest(true);
        let one = [HvGpaPageRange::small(0, 1).unwrap()];
        // Privilege first, then the header.
        let (mut plain, p) = guest(false);
        assert_eq!(
            plain.memory_heat_hint(p, HvMemoryHeatHint::new().with_heat_type(3), &one),
            Err((HvError::ACCESS_DENIED, 0))
        );
        for bad in [
            HvMemoryHeatHint::new().with_heat_type(3),
            COLD_DISCARD.with_reserved(1),
        ] {
            assert_eq!(
                hv.memory_heat_hint(g, bad, &one),
                Err((HvError::INVALID_PARAMETER, 0))
            );
        }
        let many = vec![one[0]; 512];
        assert_eq!(
            hv.memory_heat_hint(g, COLD_DISCARD, &many),
            Err((HvError::INVALID_PARAMETER, 0))
        );
        assert_eq!(
            hv.memory_heat_hint(g, COLD_DISCARD, &[]),
            Err((HvError::INVALID_HYPERCALL_INPUT, 0))
        );
        assert!(hv.take_effects().is_empty());
        // Per range: the earlier ranges stand, nothing past the bad one is applied.
        let good = HvGpaPageRange::small(100, 4).unwrap();
        let cases = [
            (
                HvGpaPageRange::from_bits(1 << 11 | 1 << 12),
                HvError::INVALID_PARAMETER,
            ), // 1 GiB
            (
                HvGpaPageRange::from_bits(1 << 11 | 1 << 20),
                HvError::INVALID_PARAMETER,
            ), // reserved
            (
                HvGpaPageRange::large_2m(1 << 40, 1).unwrap(),
                HvError::INVALID_PARAMETER,
            ), // past the GPA space
            (
                HvGpaPageRange::small(2040, 16).unwrap(),
                HvError::OPERATION_DENIED,
            ), // runs past what is mapped
            (
                HvGpaPageRange::large_2m(4, 1).unwrap(),
                HvError::OPERATION_DENIED,
            ), // never populated
        ];
        for (bad, e) in cases {
            let r = hv.memory_heat_hint(g, COLD_DISCARD, &[good, bad, good]);
            assert_eq!(r, Err((e, 1)), "{bad:?}");
            assert_eq!(discards(&mut hv), [(100, 4)], "{bad:?}");
        }
        // A page given back (ballooned) is no longer the caller's.
        hv.release(g, &[GfnRange::new(300, 1).unwrap()]).unwrap();
        hv.take_effects();
        assert_eq!(
            hv.memory_heat_hint(g, COLD_DISCARD, &[HvGpaPageRange::small(296, 8).unwrap()]),
            Err((HvError::OPERATION_DENIED, 0))
        );
        assert!(hv.take_effects().is_empty());
        hv.check().unwrap();
    }

    #[test]
    fn raw_entry_reports_absolute_reps_and_bounds_the_list() {
        let (mut hv, g) = guest(true);
        let ranges = [
            HvGpaPageRange::small(0, 1).unwrap(),
            HvGpaPageRange::small(1, 1).unwrap(),
            HvGpaPageRange::large_2m(4, 1).unwrap(), // not mapped
        ];
        let input = hint_input(COLD_DISCARD, &ranges);
        let code = HypercallCode::HvExtCallMemoryHeatHint;
        // From rep start 1: element 1 applies, element 2 fails, reps completed = 2.
        let rax = hv.hypercall(g, ctl(code, 3, 1), &input, &mut []);
        assert_eq!(result(rax), (HvError::OPERATION_DENIED.into(), 2));
        assert_eq!(discards(&mut hv), [(1, 1)]);
        // 512 ranges cannot come from one page; the raw entry refuses them after the
        // privilege, whatever the slice.
        let many = hint_input(COLD_DISCARD, &vec![ranges[0]; 512]);
        let rax = hv.hypercall(g, ctl(code, 512, 0), &many, &mut []);
        assert_eq!(result(rax), (HvError::INVALID_PARAMETER.into(), 0));
        let (mut plain, p) = guest(false);
        let rax = plain.hypercall(p, ctl(code, 512, 0), &many, &mut []);
        assert_eq!(result(rax), (HvError::ACCESS_DENIED.into(), 0));
    }
}
