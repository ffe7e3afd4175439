//! HvGetVpRegisters and HvSetVpRegisters over the VP state the model keeps: the reset
//! state HvCreateVp gives a VP (the TLFS's HvCreateVp remarks) and what its parent
//! changes afterwards.
//!
//! Served registers:
//! - `HvRegisterExplicitSuspend`: bit 0, set at creation; the parent clears it to let the
//!   VP run. Bits 63:1 and the upper 64 bits are reserved (INVALID_PARAMETER if set).
//! - `HvX64RegisterInitialApicId`: the VP index at creation, 32 bits. Only the parent may
//!   write it: the TLFS ("APIC IDs") says software inside the partition cannot modify it,
//!   so a partition writing its own gets ACCESS_DENIED. The TLFS gives no rule that makes
//!   it read-only once the VP has run, and the model does not see VPs run, so the parent
//!   may write it at any time.
//! - `HvRegisterInternalActivityState`: bit 0 (StartupSuspend) is the start state: clear
//!   for VP 0 (the boot processor, ready), set for the others (waiting for a SIPI). A
//!   write may set or clear StartupSuspend; HaltSuspend and IdleSuspend are not modelled
//!   and must be zero, as must the reserved bits.
//!
//! Any other name is INVALID_PARAMETER (the TLFS's HvGetVpRegisters status for "one of
//! the specified register names is invalid"), at that element: the elements before it
//! stand, as for every rep call.
//!
//! Order of checks: the caller must hold CreatePartitions (a parent) or
//! AccessVpRegisters, before the ID is looked up (as for every call that names a
//! partition here, so an unprivileged caller cannot probe IDs); then the ID; then the
//! relationship (TLFS: the parent, or SELF with AccessVpRegisters); then the header
//! (RsvdZ bytes, and the VTL: only VTL 0 exists here, INVALID_PARAMETER otherwise); then
//! the state (Active, INVALID_PARTITION_STATE); then the VP (INVALID_VP_INDEX); then the
//! elements.

use ballast_abi::hv::{
    HvError, HvExplicitSuspendRegister, HvGetSetVpRegisters, HvInternalActivityRegister,
    HvRegisterAssoc, HvRegisterName, HvRegisterValue, HvRepResult, HvResult,
};

use super::rep_len_ok;
use crate::PartitionId;
use crate::hypervisor::Hypervisor;
use crate::partition::{PartitionState, VpRunState};

impl Hypervisor {
    /// HvGetVpRegisters: reads `names` of VP `header.vp_index` into `out` (one value per
    /// name, `out.len() == names.len()`). On failure, the index (into `names`) of the
    /// element that failed; the values before it are written. 1 to 4095 names.
    pub fn get_vp_registers(
        &self,
        caller: PartitionId,
        header: &HvGetSetVpRegisters,
        names: &[HvRegisterName],
        out: &mut [HvRegisterValue],
    ) -> HvRepResult {
        rep_len_ok(names.len())?;
        if out.len() != names.len() {
            return Err((HvError::INVALID_HYPERCALL_INPUT, 0));
        }
        let (t, _) = self
            .vp_register_target(caller, header)
            .map_err(|e| (e, 0))?;
        let vp = self
            .part(t)
            .vps
            .get(&header.vp_index)
            .ok_or((HvError::INVALID_VP_INDEX, 0))?;
        for (i, (&name, slot)) in names.iter().zip(out.iter_mut()).enumerate() {
            let value = match name {
                HvRegisterName::HvRegisterExplicitSuspend => HvExplicitSuspendRegister::new()
                    .with_suspended(vp.explicit_suspend)
                    .into_bits(),
                HvRegisterName::HvX64RegisterInitialApicId => u64::from(vp.initial_apic_id),
                HvRegisterName::HvRegisterInternalActivityState => {
                    HvInternalActivityRegister::new()
                        .with_startup_suspend(vp.run_state == VpRunState::WaitingForSipi)
                        .into_bits()
                }
                // `i` < 4095: checked above.
                _ => return Err((HvError::INVALID_PARAMETER, i as u16)),
            };
            *slot = HvRegisterValue::from_u64(value);
        }
        Ok(())
    }

    /// HvSetVpRegisters: writes `entries` to VP `header.vp_index`, one element at a time;
    /// on failure, the index (into `entries`) of the element that failed, the ones before
    /// it written. 1 to 4095 entries.
    pub fn set_vp_registers(
        &mut self,
        caller: PartitionId,
        header: &HvGetSetVpRegisters,
        entries: &[HvRegisterAssoc],
    ) -> HvRepResult {
        rep_len_ok(entries.len())?;
        let (t, is_parent) = self
            .vp_register_target(caller, header)
            .map_err(|e| (e, 0))?;
        for (i, e) in entries.iter().enumerate() {
            // `i` < 4095: checked above.
            self.set_vp_register(t, header.vp_index, is_parent, e)
                .map_err(|err| (err, i as u16))?;
        }
        Ok(())
    }

    fn set_vp_register(
        &mut self,
        target: u32,
        vp_index: u32,
        is_parent: bool,
        e: &HvRegisterAssoc,
    ) -> HvResult<()> {
        if e.rsvd != [0; 3] || e.value.high != 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        let v = e.value.low;
        let Some(vp) = self.part_mut(target).vps.get_mut(&vp_index) else {
            // Looked up by `vp_register_target`; nothing deletes it in between.
            return Err(HvError::INVALID_VP_INDEX);
        };
        match e.name {
            HvRegisterName::HvRegisterExplicitSuspend => {
                let r = HvExplicitSuspendRegister::from_bits(v);
                if r != HvExplicitSuspendRegister::new().with_suspended(r.suspended()) {
                    return Err(HvError::INVALID_PARAMETER);
                }
                vp.explicit_suspend = r.suspended();
            }
            HvRegisterName::HvX64RegisterInitialApicId => {
                if !is_parent {
                    return Err(HvError::ACCESS_DENIED);
                }
                vp.initial_apic_id = u32::try_from(v).map_err(|_| HvError::INVALID_PARAMETER)?;
            }
            HvRegisterName::HvRegisterInternalActivityState => {
                let r = HvInternalActivityRegister::from_bits(v);
                let only_startup =
                    HvInternalActivityRegister::new().with_startup_suspend(r.startup_suspend());
                if r != only_startup {
                    return Err(HvError::INVALID_PARAMETER);
                }
                vp.run_state = if r.startup_suspend() {
                    VpRunState::WaitingForSipi
                } else {
                    VpRunState::Ready
                };
            }
            _ => return Err(HvError::INVALID_PARAMETER),
        }
        Ok(())
    }

    /// The checks both calls share, in the order of the module docs. Returns the target's
    /// slot and whether the caller is its parent (rather than the partition itself).
    fn vp_register_target(
        &self,
        caller: PartitionId,
        header: &HvGetSetVpRegisters,
    ) -> HvResult<(u32, bool)> {
        let c = self.caller_slot(caller)?;
        let privileges = self.part(c).privileges;
        if !privileges.create_partitions() && !privileges.access_vp_registers() {
            return Err(HvError::ACCESS_DENIED);
        }
        let t = self.resolve(c, header.partition_id)?;
        let is_parent = self.is_parent(c, t);
        let is_self = t == c && privileges.access_vp_registers();
        if !is_parent && !is_self {
            return Err(HvError::ACCESS_DENIED);
        }
        let vtl = header.input_vtl;
        if header.rsvd != [0; 3]
            || vtl.reserved_z() != 0
            || (vtl.use_target_vtl() && vtl.target_vtl() != 0)
        {
            return Err(HvError::INVALID_PARAMETER);
        }
        if self.part(t).state != PartitionState::Active {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        if !self.part(t).vps.contains_key(&header.vp_index) {
            return Err(HvError::INVALID_VP_INDEX);
        }
        Ok((t, is_parent))
    }
}
