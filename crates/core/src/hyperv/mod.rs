//! The Hyper-V hypercall dispatcher: the partition memory pool (HvDepositMemory,
//! HvWithdrawMemory, HvGetMemoryBalance), HvCreateVp, the VP start state through
//! HvGetVpRegisters / HvSetVpRegisters (see `registers.rs` for the registers served) and
//! the partition lifecycle around them, served from the memory model of [`Hypervisor`].
//!
//! Two entries take a raw hypercall: [`Hypervisor::hypercall`] (the input block and the
//! output page as byte slices) and [`Hypervisor::hypercall_gpa`] (parameter GPAs in the
//! caller's [`GuestMemory`]). Both return the raw result value (RAX). Behind them, one
//! typed method per call ([`Hypervisor::create_partition`], [`Hypervisor::deposit_memory`],
//! ...) is what an embedder calls directly; [`Hypervisor::call_with_deposits`] and
//! [`Hypervisor::withdraw_all`] are the two loops a root runs around them.
//!
//! Order of checks: the generic checks G1-G5 on the control word, the input and the
//! parameter GPAs (G1-G4 in [`ballast_abi::hv::decode`], G5 in
//! [`Hypervisor::hypercall_gpa`]), then per call: privilege, partition ID, relationship,
//! parameters and state, then elements or resources. The TLFS (the hypercall interface)
//! leaves the order open except that ACCESS_DENIED wins over any status revealing state
//! to an under-privileged caller; the rest of the order is ballast's decision.
//!
//! # Deliberate deviations and decisions
//!
//! Where the TLFS and Linux's root leave a choice, ballast decides as follows (its own
//! decisions; ARCHITECTURE.md lists where each is enforced).
//!
//! 1. **Layouts.** HvCreatePartition and HvCreateVp decode in the host's
//!    [`InputLayout`](ballast_abi::hv::InputLayout) (TLFS 2.0 by default, the current
//!    56/40-byte forms on request); the bytes cannot tell them apart.
//! 2. **Bad proximity domain info** is INVALID_PARAMETER, never
//!    INVALID_PROXIMITY_DOMAIN_INFO; a valid domain id must be below the configured node
//!    count.
//! 3. **G5.** An unaligned parameter GPA, a list that straddles a page or one that
//!    reaches beyond the caller's GPA space ([`GuestFaultKind::OutsideGpaSpace`]) is
//!    INVALID_ALIGNMENT (the TLFS; OpenVMM answers a straddle with
//!    INVALID_HYPERCALL_INPUT), input first, then output, before either is read. An
//!    input inside the GPA space that the caller's memory cannot read is
//!    INVALID_HYPERCALL_INPUT, as OpenVMM and KVM answer it; so is an output range it
//!    cannot write, checked before the handler runs so that no call has effects its
//!    caller cannot see. Overlapping input and output lists are allowed: the input is
//!    read in full first.
//! 4. **Calls run to completion** (no Finalizing state) unless the host sets a rep budget
//!    ([`Config::rep_budget`](crate::Config::rep_budget), off by default): then a rep
//!    call through the hypercall entries completes at most that many elements and
//!    returns SUCCESS with reps completed below the rep count, the time-sliced
//!    continuation of the TLFS ("Hypercall Continuation"), and the caller re-issues
//!    from there as Linux's `hv_do_rep_hypercall` does. Reps completed is absolute. An error in the control word itself (G1-G4) reports 0
//!    reps; every later error of a rep call reports at least the rep start, because the
//!    elements before it were completed by an earlier call and stand.
//! 5. **Callers.** A caller that is not a live partition (which a real hypervisor cannot
//!    see) gets ACCESS_DENIED, after the generic checks, which do not depend on who calls.
//!    A live caller may be in any state: the model does not track which VPs run.
//! 6. **Privileges.** AccessMemoryPool gates deposit, withdraw and balance;
//!    CreatePartitions gates HvCreatePartition and every call that names a child
//!    (initialize, finalize, delete, get property, get next child, create and delete VP).
//!    The privilege is checked before the ID is looked up, so a caller without it cannot
//!    probe which IDs exist (ballast's decision); a privileged caller gets INVALID_PARTITION_ID for an
//!    unknown ID and ACCESS_DENIED for a partition that is not its child (nor, for the
//!    pool calls and the property read, the root addressing itself).
//! 7. **SELF** names the caller in every ID field. HvDeletePartition(SELF) is
//!    INVALID_PARAMETER (the web TLFS: "must not be HV_PARTITION_ID_SELF"), after the
//!    privilege check.
//! 8. **HvCreatePartition.** TLFS 2.0 layout: any flag bit is INVALID_PARAMETER. Current
//!    layout: the flag bits the current TLFS defines (`hv_partition_creation_flags`, Linux's
//!    `HV_PARTITION_CREATION_FLAG_*`) are accepted and
//!    stored without effect, other bits, a non-zero padding word or non-zero isolation
//!    properties (isolated partitions are not modelled) are INVALID_PARAMETER; the
//!    compatibility version and the disabled-feature masks are accepted as given.
//!    CREATE_COST comes from the caller's pool on the nodes the PDI allows.
//! 9. **HvInitializePartition** charges INIT_COST to the partition's own pool, preferring
//!    its home node; all or nothing.
//! 10. **HvFinalizePartition** refuses a partition with children (OPERATION_DENIED, before
//!     the state check: ballast's order). It releases every VP's, the initialization's
//!     and any Xen grant-table charge back to available, and unmaps the whole guest space
//!     to the heap (with discards), since finalization deletes the GPA mappings.
//! 11. **HvDeletePartition** needs Uninitialized or Finalized, no children and an empty
//!     pool (OPERATION_DENIED). Guest memory a host populated into an Uninitialized
//!     partition goes back to the heap. The ID is never reused.
//! 12. **HvGetPartitionProperty** answers PrivilegeFlags and VirtualTlbPageCount
//!     (0: no virtual TLB is modelled) and nothing else (UNKNOWN_PROPERTY): the pool is
//!     read with HvGetMemoryBalance, so ballast invents no property codes. A non-zero
//!     padding word is INVALID_PARAMETER. Parameters are checked before state (ballast's order);
//!     the read is allowed in Uninitialized (PrivilegeFlags is an "early" property) and
//!     Active, and refused in Finalized (INVALID_PARTITION_STATE).
//! 13. **HvGetNextChildPartition** walks the caller's own children (ParentId must be the
//!     caller or SELF) in creation order; a previous ID that is not a child of it is
//!     INVALID_PARTITION_ID.
//! 14. **HvDepositMemory.** The root's GPA page numbers are MFNs (its identity map): a
//!     page that is not RAM (beyond host memory, in a hole of the host memory map or
//!     reserved: [`Config::memory_map`](crate::Config::memory_map)) or not free (in any pool, mapped in a guest, held by the
//!     hypervisor, or already taken earlier in the same list) is OPERATION_DENIED; a page
//!     locked with [`Hypervisor::lock_root_page`] is OBJECT_IN_USE. A non-root depositor
//!     (nesting, `max_depth` above 2) deposits gfns of its own guest space: an unmapped
//!     gfn is OPERATION_DENIED, and the gfn leaves its guest space (with a discard).
//! 15. **HvWithdrawMemory** takes available pages only, never in-use ones, on the nodes
//!     the PDI allows, in any state. A root page goes back to the heap, where it reads
//!     zero because its deposit recorded a discard; a nested depositor's page is mapped
//!     back at one of the gfns it deposited into that pool.
//! 16. **HvGetMemoryBalance** with a valid PDI reports that node (strict or preferred
//!     alike); with the valid bit clear, the totals over all nodes.
//! 17. **HvCreateVp.** Flags must be zero in both layouts (the one documented use, the LP
//!     index of a root VP, cannot occur: HvCreateVp here needs a parent). Subnode types
//!     Socket, Cluster and L3 are accepted and ignored (no subnode topology is modelled);
//!     SubnodeId is ignored. VP_COST comes from the target's pool: strict PDI that node
//!     only, preferred that node first, any from the lowest node up. HV_VP_INDEX_SELF and
//!     HV_ANY_VP are never VP indices. HvDeleteVp's padding word must be zero.
//! 18. **Fast calls through [`Hypervisor::hypercall_gpa`]** carry RDX:R8 (the two GPA
//!     arguments) as their 16 input bytes; XMM fast input goes through
//!     [`Hypervisor::hypercall`] with the register bytes.
//! 19. **HvGetVpRegisters / HvSetVpRegisters** serve the VP state HvCreateVp sets up:
//!     `HvRegisterExplicitSuspend`, `HvX64RegisterInitialApicId` and, for the start state
//!     (VP 0 ready, the others waiting for a SIPI), bit 0 (StartupSuspend) of
//!     `HvRegisterInternalActivityState`. Any other register name is INVALID_PARAMETER at
//!     its element. The caller is the parent, or the partition itself (SELF or its own
//!     ID) with AccessVpRegisters; a partition may not write its own initial APIC ID
//!     (ACCESS_DENIED, the TLFS "APIC IDs": only the parent may). Only VTL 0 exists: a
//!     header naming another VTL, or with RsvdZ bytes set, is INVALID_PARAMETER. Reserved
//!     bits of a value, and bits beyond the register's size, are INVALID_PARAMETER.
//! 20. **HvExtCallQueryCapabilities and HvExtCallMemoryHeatHint** (free page
//!     reporting): decisions 20-22 are in `ext.rs`.

use ballast_abi::hv::{
    CallClass, Control, CreatePartitionInput, CreateVpInput, DecodeOptions, HV_ANY_VP,
    HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES, HV_PARTITION_ID_INVALID, HV_PARTITION_ID_SELF,
    HV_VP_INDEX_SELF, HV_WITHDRAW_BATCH_SIZE, HvCall, HvDeleteVp, HvError, HvGetMemoryBalance,
    HvGetMemoryBalanceOutput, HvGetNextChildPartition, HvGetPartitionProperty, HvGpaPageRange,
    HvPartitionPrivilegeMask, HvPartitionPropertyCode, HvProximityDomainInfo, HvRegisterAssoc,
    HvRegisterName, HvRegisterValue, HvRepResult, HvResult, HvSubnodeType, HvWithdrawMemory,
    HypercallOutput, ProximitySelection, check_control, check_param_gpa, decode,
};
use zerocopy::{Immutable, IntoBytes};

use crate::frame::{FrameState, NodeSel};
use crate::guest::{GuestFault, GuestFaultKind, GuestMemory};
use crate::hypervisor::{CreateError, DOMID_FIRST_RESERVED, Hypervisor, ROOT_ID, home_sel};
use crate::partition::{PartitionState, Vp};
use crate::{Mfn, PartitionId};

/// `HV_PARTITION_ID_SELF` as a [`PartitionId`]: the caller's own partition.
pub const SELF: PartitionId = PartitionId(HV_PARTITION_ID_SELF);

/// The HvCreatePartition flag bits of the current TLFS (`hv_partition_creation_flags`): SMT-enabled
/// guest, nested-virtualization capable, GPA super pages, exo partition, VTL1 and VTL2
/// override, LAPIC enabled, PMU and LBR perfmon, intercept message page, hypercall
/// doorbell page, x2APIC capable.
pub const CREATE_PARTITION_FLAGS_DEFINED: u64 = 1
    | 1 << 1
    | 1 << 4
    | 1 << 8
    | 1 << 9
    | 1 << 10
    | 1 << 13
    | 1 << 15
    | 1 << 16
    | 1 << 19
    | 1 << 20
    | 1 << 22;

/// The most elements one rep call carries (the 12-bit rep count field).
const MAX_REPS: usize = Control::MAX_REP_COUNT as usize;

/// The status of a parameter list `mem` cannot access: beyond the GPA space it is
/// INVALID_ALIGNMENT (the TLFS's common status codes); inside it, a failed access is
/// INVALID_HYPERCALL_INPUT, as OpenVMM and KVM answer a failed guest read.
fn fault_status(f: GuestFault) -> HvError {
    match f.kind {
        GuestFaultKind::OutsideGpaSpace => HvError::INVALID_ALIGNMENT,
        GuestFaultKind::Unreadable => HvError::INVALID_HYPERCALL_INPUT,
    }
}

fn ok(reps: u16) -> u64 {
    HypercallOutput::success(reps).into_bits()
}

fn err(e: HvError, reps: u16) -> u64 {
    HypercallOutput::error(e, reps).into_bits()
}

/// Where a PDI lets a call take pool pages from.
fn node_sel(pdi: HvProximityDomainInfo, node_count: u32) -> HvResult<NodeSel> {
    Ok(match pdi.selection(node_count)? {
        ProximitySelection::Any => NodeSel::Any,
        ProximitySelection::Strict(n) => NodeSel::Exact(n),
        ProximitySelection::Preferred(n) => NodeSel::Preferred(n),
    })
}

/// Writes a simple call's output on success; output of a failed simple call is
/// indeterminate in the TLFS, so ballast leaves the page alone.
fn finish<T: IntoBytes + Immutable>(result: HvResult<T>, output: &mut [u8]) -> u64 {
    match result {
        Ok(value) => {
            let bytes = value.as_bytes();
            if let Some(dst) = output.get_mut(..bytes.len()) {
                dst.copy_from_slice(bytes);
            }
            ok(0)
        }
        Err(e) => err(e, 0),
    }
}

/// A rep call's result value from a typed result whose index counts from `start`.
fn finish_rep(result: HvRepResult, start: u16, count: u16) -> u64 {
    match result {
        Ok(()) => ok(count),
        Err((e, done)) => err(e, start + done),
    }
}

pub(super) fn rep_len_ok(len: usize) -> Result<(), (HvError, u16)> {
    if len == 0 || len > MAX_REPS {
        return Err((HvError::INVALID_HYPERCALL_INPUT, 0));
    }
    Ok(())
}

impl Hypervisor {
    // -----------------------------------------------------------------------------------
    // Raw entries
    // -----------------------------------------------------------------------------------

    /// Runs one hypercall of `caller` and returns its raw result value (RAX).
    ///
    /// `control` is the hypercall input value (RCX). `input` is the input parameter
    /// block: the bytes at the input GPA, or the register contents of a fast call; extra
    /// bytes are ignored. `output` is the output page; a rep call writes only the
    /// elements it completed (from its rep start), a simple call writes only on success.
    /// An `output` shorter than the call's output is INVALID_HYPERCALL_INPUT, before any
    /// effect.
    pub fn hypercall(
        &mut self,
        caller: PartitionId,
        control: u64,
        input: &[u8],
        output: &mut [u8],
    ) -> u64 {
        if !self.offers(control as u16) {
            return err(HvError::INVALID_HYPERCALL_CODE, 0);
        }
        let options = self.decode_options();
        let (ctl, info) = match check_control(control, options) {
            Ok(v) => v,
            Err(e) => return err(e, 0),
        };
        let (start, count) = (ctl.rep_start(), ctl.rep_count());
        let decoded = match decode(control, input, options) {
            Ok(d) => d,
            Err(e) => return err(e, start),
        };
        let Some(output) = output.get_mut(..info.output_len(count)) else {
            return err(HvError::INVALID_HYPERCALL_INPUT, start);
        };
        // A time-sliced rep call ends its slice at `end` and reports SUCCESS with reps
        // completed = `end` < `count`; the caller continues from there.
        let end = match self.config.rep_budget {
            Some(b) if info.class == CallClass::Rep => count.min(start.saturating_add(b.get())),
            _ => count,
        };
        match decoded.call {
            HvCall::CreatePartition(i) => {
                finish(self.create_partition(caller, &i).map(|id| id.0), output)
            }
            HvCall::InitializePartition(i) => finish(
                self.initialize_partition(caller, PartitionId(i.partition_id)),
                output,
            ),
            HvCall::FinalizePartition(i) => finish(
                self.finalize_partition(caller, PartitionId(i.partition_id)),
                output,
            ),
            HvCall::DeletePartition(i) => finish(
                self.delete_partition(caller, PartitionId(i.partition_id)),
                output,
            ),
            HvCall::GetPartitionProperty(i) => {
                finish(self.get_partition_property(caller, &i), output)
            }
            HvCall::GetNextChildPartition(i) => finish(
                self.get_next_child_partition(caller, &i)
                    .map(|c| c.map_or(HV_PARTITION_ID_INVALID, |c| c.0)),
                output,
            ),
            HvCall::DepositMemory(header, list) => {
                let pages: Vec<u64> = list
                    .iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect();
                let r = self.deposit_memory(caller, PartitionId(header.partition_id), &pages);
                finish_rep(r, start, end)
            }
            HvCall::WithdrawMemory(i) => {
                let mut pages = vec![0u64; (end - start) as usize];
                let r = self.withdraw_memory(caller, &i, &mut pages);
                let done = match r {
                    Ok(()) => pages.len(),
                    Err((_, n)) => n as usize,
                };
                let elements = output.chunks_exact_mut(8).skip(start as usize);
                for (dst, gpa) in elements.zip(&pages[..done]) {
                    dst.copy_from_slice(&gpa.to_le_bytes());
                }
                finish_rep(r, start, end)
            }
            HvCall::GetMemoryBalance(i) => finish(self.get_memory_balance(caller, &i), output),
            HvCall::CreateVp(i) => finish(self.create_vp(caller, &i), output),
            HvCall::DeleteVp(i) => finish(self.delete_vp(caller, &i), output),
            HvCall::GetVpRegisters(header, list) => {
                let names: Vec<HvRegisterName> = list
                    .iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect();
                let mut values = vec![HvRegisterValue::default(); names.len()];
                let r = self.get_vp_registers(caller, &header, &names, &mut values);
                let done = match r {
                    Ok(()) => values.len(),
                    Err((_, n)) => n as usize,
                };
                let elements = output.chunks_exact_mut(16).skip(start as usize);
                for (dst, v) in elements.zip(&values[..done]) {
                    dst.copy_from_slice(v.as_bytes());
                }
                finish_rep(r, start, end)
            }
            HvCall::SetVpRegisters(header, list) => {
                let entries: Vec<HvRegisterAssoc> = list
                    .iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect();
                finish_rep(self.set_vp_registers(caller, &header, &entries), start, end)
            }
            HvCall::QueryCapabilities => finish(self.query_capabilities(caller), output),
            HvCall::MemoryHeatHint(header, list) => {
                // Too many ranges is a property of the whole list, whatever the slice;
                // it is checked after the privilege, as in `memory_heat_hint`.
                if list.len() > usize::from(HV_MEMORY_HINT_MAX_GPA_PAGE_RANGES) {
                    let e = self
                        .extended_caller(caller)
                        .err()
                        .unwrap_or(HvError::INVALID_PARAMETER);
                    return err(e, start);
                }
                let ranges: Vec<HvGpaPageRange> = list
                    .iter()
                    .skip(start as usize)
                    .take((end - start) as usize)
                    .collect();
                finish_rep(self.memory_heat_hint(caller, header, &ranges), start, end)
            }
        }
    }

    /// Runs one memory-form hypercall whose parameters sit in the caller's memory: RCX =
    /// `control`, RDX = `input_gpa`, R8 = `output_gpa`. Returns the raw result value.
    ///
    /// Adds G5 to [`hypercall`](Self::hypercall): each list must be 8-byte aligned,
    /// within one page and inside the caller's GPA space (INVALID_ALIGNMENT). Reads the
    /// input (a fault inside the GPA space is
    /// INVALID_HYPERCALL_INPUT), refuses an output range `mem` cannot write the same way,
    /// dispatches, and writes back the output elements `[rep start, reps completed)` of a
    /// rep call, or the output of a simple call that succeeded. A fast call takes RDX:R8
    /// as its input bytes and reads no memory.
    pub fn hypercall_gpa(
        &mut self,
        caller: PartitionId,
        control: u64,
        input_gpa: u64,
        output_gpa: u64,
        mem: &mut dyn GuestMemory,
    ) -> u64 {
        if !self.offers(control as u16) {
            return err(HvError::INVALID_HYPERCALL_CODE, 0);
        }
        let (ctl, info) = match check_control(control, self.decode_options()) {
            Ok(v) => v,
            Err(e) => return err(e, 0),
        };
        let start = ctl.rep_start();
        if ctl.fast() {
            let mut regs = [0u8; 16];
            regs[..8].copy_from_slice(&input_gpa.to_le_bytes());
            regs[8..].copy_from_slice(&output_gpa.to_le_bytes());
            return self.hypercall(caller, control, &regs, &mut []);
        }
        let in_len = info.input_len(ctl.rep_count());
        let out_len = info.output_len(ctl.rep_count());
        if let Err(e) =
            check_param_gpa(input_gpa, in_len).and_then(|()| check_param_gpa(output_gpa, out_len))
        {
            return err(e, start);
        }
        // The rest of G5: a list beyond the caller's GPA space is INVALID_ALIGNMENT, for
        // the input and then the output, before either is read.
        for (gpa, len) in [(input_gpa, in_len), (output_gpa, out_len)] {
            if len > 0
                && mem
                    .probe(gpa, len as u64)
                    .is_err_and(|f| f.kind == GuestFaultKind::OutsideGpaSpace)
            {
                return err(HvError::INVALID_ALIGNMENT, start);
            }
        }
        let mut input = vec![0u8; in_len];
        if let Err(f) = mem.read(input_gpa, &mut input) {
            return err(fault_status(f), start);
        }
        if out_len > 0 {
            if let Err(f) = mem.probe(output_gpa, out_len as u64) {
                return err(fault_status(f), start);
            }
        }
        let mut output = vec![0u8; out_len];
        let rax = self.hypercall(caller, control, &input, &mut output);
        let result = HypercallOutput::from_bits(rax);
        let written = match info.class {
            CallClass::Rep => {
                let el = info.output_element_size;
                let from = info.output_size + el * start as usize;
                let to = info.output_size + el * result.reps_completed() as usize;
                (from < to).then_some(from..to)
            }
            CallClass::Simple => (result.status().is_ok() && out_len > 0).then_some(0..out_len),
        };
        if let Some(range) = written.filter(|r| r.end <= output.len()) {
            // The range was checked writable before the call; a write that fails anyway
            // cannot undo the call, whose result value stands.
            let _ = mem.write(output_gpa + range.start as u64, &output[range]);
        }
        rax
    }

    fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            layout: self.config.input_layout,
            xmm_fast_input: self.config.xmm_fast_input,
        }
    }

    // -----------------------------------------------------------------------------------
    // Who may do what
    // -----------------------------------------------------------------------------------

    pub(super) fn caller_slot(&self, caller: PartitionId) -> HvResult<u32> {
        self.slot_of(caller).ok_or(HvError::ACCESS_DENIED)
    }

    pub(super) fn resolve(&self, caller_slot: u32, raw: u64) -> HvResult<u32> {
        if raw == HV_PARTITION_ID_SELF {
            return Ok(caller_slot);
        }
        self.slot_of(PartitionId(raw))
            .ok_or(HvError::INVALID_PARTITION_ID)
    }

    pub(super) fn is_parent(&self, caller_slot: u32, target_slot: u32) -> bool {
        self.part(target_slot).parent == Some(self.part(caller_slot).id)
    }

    fn is_root_self(caller_slot: u32, target_slot: u32) -> bool {
        caller_slot == Self::ROOT_SLOT && target_slot == Self::ROOT_SLOT
    }

    /// CreatePartitions, then the ID, then "the caller is the parent".
    fn child_target(&self, caller: PartitionId, raw: u64) -> HvResult<u32> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.create_partitions() {
            return Err(HvError::ACCESS_DENIED);
        }
        let t = self.resolve(c, raw)?;
        if !self.is_parent(c, t) {
            return Err(HvError::ACCESS_DENIED);
        }
        Ok(t)
    }

    /// AccessMemoryPool, then the ID, then parent or root-self. Returns (caller, target).
    fn pool_target(&self, caller: PartitionId, raw: u64) -> HvResult<(u32, u32)> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.access_memory_pool() {
            return Err(HvError::ACCESS_DENIED);
        }
        let t = self.resolve(c, raw)?;
        if !self.is_parent(c, t) && !Self::is_root_self(c, t) {
            return Err(HvError::ACCESS_DENIED);
        }
        Ok((c, t))
    }

    // -----------------------------------------------------------------------------------
    // Partition lifecycle
    // -----------------------------------------------------------------------------------

    /// HvCreatePartition: a new Uninitialized child of `caller`, with no privileges and an
    /// empty pool, its home node the input's PDI. Charges CREATE_COST to the caller's
    /// pool (refunded by [`delete_partition`](Self::delete_partition)).
    pub fn create_partition(
        &mut self,
        caller: PartitionId,
        input: &CreatePartitionInput,
    ) -> HvResult<PartitionId> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.create_partitions() {
            return Err(HvError::ACCESS_DENIED);
        }
        let fields_ok = match input {
            CreatePartitionInput::Tlfs2(i) => i.flags == 0,
            CreatePartitionInput::Current(i) => {
                i.flags & !CREATE_PARTITION_FLAGS_DEFINED == 0
                    && i.padding == 0
                    && i.isolation_properties == 0
            }
        };
        if !fields_ok {
            return Err(HvError::INVALID_PARAMETER);
        }
        let pdi = input.proximity_domain_info();
        let sel = node_sel(pdi, self.node_count())?;
        if self.part(c).depth + 1 >= self.config.limits.max_depth {
            return Err(HvError::PARTITION_TOO_DEEP);
        }
        if self.by_id.len() as u64 >= u64::from(self.config.limits.max_partitions)
            || self.by_domid.len() >= usize::from(DOMID_FIRST_RESERVED)
        {
            return Err(HvError::NO_RESOURCES);
        }
        let cost = u64::from(self.config.costs.create_partition);
        let charged = self
            .pool_charge(c, cost, sel)
            .ok_or(HvError::INSUFFICIENT_MEMORY)?;
        let slot =
            match self.new_partition(Some(c), HvPartitionPrivilegeMask::NONE, pdi, input.flags()) {
                Ok(s) => s,
                Err(e) => {
                    // Unreachable after the checks above; kept so the call stays atomic.
                    self.pool_release(c, &charged);
                    return Err(match e {
                        CreateError::TooDeep => HvError::PARTITION_TOO_DEEP,
                        _ => HvError::NO_RESOURCES,
                    });
                }
            };
        let child = self.part_mut(slot);
        child.create_charged = charged;
        let id = child.id;
        // Ids are never reused, so records of partitions torn down by the host API are
        // dead weight; creation is rare enough to sweep them here.
        let live = &self.by_id;
        self.hv.origins.retain(|id, _| live.contains_key(id));
        Ok(id)
    }

    /// HvInitializePartition: Uninitialized → Active, charging INIT_COST to the
    /// partition's own pool (home node first). All or nothing.
    pub fn initialize_partition(&mut self, caller: PartitionId, id: PartitionId) -> HvResult<()> {
        let t = self.child_target(caller, id.0)?;
        if self.part(t).state != PartitionState::Uninitialized {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        let cost = u64::from(self.config.costs.initialize_partition);
        let sel = home_sel(self.part(t).home);
        let charged = self
            .pool_charge(t, cost, sel)
            .ok_or(HvError::INSUFFICIENT_MEMORY)?;
        let p = self.part_mut(t);
        p.init_charged = charged;
        p.state = PartitionState::Active;
        Ok(())
    }

    /// HvFinalizePartition: Active → Finalized. Deletes every VP, releases every charge
    /// to the partition's own pool (in use becomes 0) and unmaps its guest space.
    pub fn finalize_partition(&mut self, caller: PartitionId, id: PartitionId) -> HvResult<()> {
        let t = self.child_target(caller, id.0)?;
        if !self.part(t).children.is_empty() {
            return Err(HvError::OPERATION_DENIED);
        }
        if self.part(t).state != PartitionState::Active {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        let p = self.part_mut(t);
        let vps = core::mem::take(&mut p.vps);
        let init = core::mem::take(&mut p.init_charged);
        let grant = core::mem::take(&mut p.xen.grant_charged);
        for vp in vps.values() {
            self.pool_release(t, &vp.charged);
        }
        self.pool_release(t, &init);
        self.pool_release(t, &grant);
        self.release_guest_memory(t);
        self.part_mut(t).state = PartitionState::Finalized;
        // A finalized partition allocates nothing more: its Xen claim would only hold
        // memory back from everyone else until delete.
        self.part_mut(t).xen.outstanding_claim = 0;
        Ok(())
    }

    /// HvDeletePartition: removes an Uninitialized or Finalized child whose pool is empty
    /// and refunds CREATE_COST to the caller's pool.
    pub fn delete_partition(&mut self, caller: PartitionId, id: PartitionId) -> HvResult<()> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.create_partitions() {
            return Err(HvError::ACCESS_DENIED);
        }
        if id == SELF {
            return Err(HvError::INVALID_PARAMETER);
        }
        let t = self.child_target(caller, id.0)?;
        let p = self.part(t);
        if !matches!(
            p.state,
            PartitionState::Uninitialized | PartitionState::Finalized
        ) {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        if !p.children.is_empty() || p.pool_available() + p.pool_in_use() != 0 {
            return Err(HvError::OPERATION_DENIED);
        }
        self.release_guest_memory(t);
        let charged = core::mem::take(&mut self.part_mut(t).create_charged);
        self.pool_release(c, &charged);
        let id = self.part(t).id.0;
        self.hv.origins.remove(&id);
        self.remove_partition(t);
        Ok(())
    }

    /// HvGetPartitionProperty: PrivilegeFlags or VirtualTlbPageCount of a child, or of
    /// the root reading itself.
    pub fn get_partition_property(
        &self,
        caller: PartitionId,
        input: &HvGetPartitionProperty,
    ) -> HvResult<u64> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.create_partitions() {
            return Err(HvError::ACCESS_DENIED);
        }
        let t = self.resolve(c, input.partition_id)?;
        if !self.is_parent(c, t) && !Self::is_root_self(c, t) {
            return Err(HvError::ACCESS_DENIED);
        }
        if input.padding != 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        let p = self.part(t);
        let value = match input.property_code {
            HvPartitionPropertyCode::PrivilegeFlags => p.privileges.into_bits(),
            HvPartitionPropertyCode::VirtualTlbPageCount => 0,
            _ => return Err(HvError::UNKNOWN_PROPERTY),
        };
        if p.state == PartitionState::Finalized {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        Ok(value)
    }

    /// HvGetNextChildPartition: the child of the caller created after
    /// `previous_child_id` (the first one for `HV_PARTITION_ID_INVALID`), or `None` at
    /// the end.
    pub fn get_next_child_partition(
        &self,
        caller: PartitionId,
        input: &HvGetNextChildPartition,
    ) -> HvResult<Option<PartitionId>> {
        let c = self.caller_slot(caller)?;
        if !self.part(c).privileges.create_partitions() {
            return Err(HvError::ACCESS_DENIED);
        }
        let p = self.resolve(c, input.parent_id)?;
        if p != c {
            return Err(HvError::ACCESS_DENIED);
        }
        let children = &self.part(p).children;
        let next = if input.previous_child_id == HV_PARTITION_ID_INVALID {
            children.first()
        } else {
            let i = children
                .iter()
                .position(|k| k.0 == input.previous_child_id)
                .ok_or(HvError::INVALID_PARTITION_ID)?;
            children.get(i + 1)
        };
        Ok(next.copied())
    }

    /// Grants `privileges` to partition `id`: the host's side of HvSetPartitionProperty
    /// (PrivilegeFlags), which a toolstack uses before initialization.
    pub fn set_partition_privileges(
        &mut self,
        id: PartitionId,
        privileges: HvPartitionPrivilegeMask,
    ) -> HvResult<()> {
        let slot = self.slot_of(id).ok_or(HvError::INVALID_PARTITION_ID)?;
        self.part_mut(slot).privileges = privileges;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // The pool
    // -----------------------------------------------------------------------------------

    /// HvDepositMemory: moves the caller's GPA pages `pages` into the pool of `id`, one
    /// element at a time; on failure the index (into `pages`) of the element that failed,
    /// the ones before it deposited. 1 to 4095 pages per call.
    pub fn deposit_memory(
        &mut self,
        caller: PartitionId,
        id: PartitionId,
        pages: &[u64],
    ) -> HvRepResult {
        rep_len_ok(pages.len())?;
        let (c, t) = self.pool_target(caller, id.0).map_err(|e| (e, 0))?;
        if !matches!(
            self.part(t).state,
            PartitionState::Active | PartitionState::Uninitialized
        ) {
            return Err((HvError::INVALID_PARTITION_STATE, 0));
        }
        for (i, &page) in pages.iter().enumerate() {
            let r = if c == Self::ROOT_SLOT {
                self.deposit_root_page(t, page)
            } else {
                self.deposit_guest_page(c, t, page)
            };
            // `i` < 4095: checked above.
            r.map_err(|e| (e, i as u16))?;
        }
        Ok(())
    }

    fn deposit_root_page(&mut self, target: u32, page: u64) -> HvResult<()> {
        let mfn = u32::try_from(page)
            .ok()
            .filter(|&m| m < self.frames.len() && self.frames.state(m) == FrameState::Free)
            .ok_or(HvError::OPERATION_DENIED)?;
        if self.hv.locked.contains(&mfn) {
            return Err(HvError::OBJECT_IN_USE);
        }
        if !self.heap_take(mfn) {
            return Err(HvError::OPERATION_DENIED);
        }
        self.pool_deposit(target, mfn);
        Ok(())
    }

    fn deposit_guest_page(&mut self, caller: u32, target: u32, gfn: u64) -> HvResult<()> {
        let mfn = self.unmap(caller, gfn).ok_or(HvError::OPERATION_DENIED)?;
        self.pool_deposit(target, mfn);
        let id = self.part(target).id.0;
        self.hv.origins.entry(id).or_default().push(gfn);
        Ok(())
    }

    /// HvWithdrawMemory: takes up to `out.len()` available pages out of the pool of
    /// `input.partition_id` on the nodes its PDI allows, gives them back to the caller
    /// and writes their GPA page numbers to `out`. Runs dry with NO_RESOURCES and the
    /// number written. 1 to 4095 pages per call.
    pub fn withdraw_memory(
        &mut self,
        caller: PartitionId,
        input: &HvWithdrawMemory,
        out: &mut [u64],
    ) -> HvRepResult {
        rep_len_ok(out.len())?;
        let (c, t) = self
            .pool_target(caller, input.partition_id)
            .map_err(|e| (e, 0))?;
        let sel = node_sel(input.proximity_domain_info, self.node_count()).map_err(|e| (e, 0))?;
        for (i, slot) in out.iter_mut().enumerate() {
            let Some(mfn) = self.pool_take_available(t, sel) else {
                return Err((HvError::NO_RESOURCES, i as u16));
            };
            *slot = self.give_back(c, t, mfn);
        }
        Ok(())
    }

    /// Returns a withdrawn pool frame (state Hypervisor) to the depositor, who is the
    /// caller: the root gets its page back in the heap; a nested parent gets it mapped at
    /// a gfn it deposited. Returns the GPA page number.
    fn give_back(&mut self, caller: u32, target: u32, mfn: Mfn) -> u64 {
        if caller != Self::ROOT_SLOT {
            let id = self.part(target).id.0;
            if let Some(gfn) = self.hv.origins.get_mut(&id).and_then(Vec::pop) {
                // The gfn may since have gone past the caller's guest-physical limit or
                // p2m budget: then the frame goes back to the host as well.
                if self.part(caller).p2m.get(gfn).is_none()
                    && self.room(caller) > 0
                    && self.guest_space_ok(caller, gfn, 1).is_ok()
                {
                    self.map(caller, gfn, mfn);
                } else {
                    // The host has backed the gfn again meanwhile: the caller already has
                    // a page there, and this frame goes back to the host.
                    self.heap_free(mfn, 0);
                }
                return gfn;
            }
        }
        self.heap_free(mfn, 0);
        u64::from(mfn)
    }

    /// HvGetMemoryBalance: pages available and in use in the pool of
    /// `input.partition_id`, on the node a valid PDI names or over all nodes.
    pub fn get_memory_balance(
        &self,
        caller: PartitionId,
        input: &HvGetMemoryBalance,
    ) -> HvResult<HvGetMemoryBalanceOutput> {
        let (_, t) = self.pool_target(caller, input.partition_id)?;
        let p = self.part(t);
        Ok(
            match input.proximity_domain_info.selection(self.node_count())? {
                ProximitySelection::Any => HvGetMemoryBalanceOutput {
                    pages_available: p.pool_available(),
                    pages_in_use: p.pool_in_use(),
                },
                ProximitySelection::Strict(n) | ProximitySelection::Preferred(n) => {
                    let pool = &p.pools[n as usize];
                    HvGetMemoryBalanceOutput {
                        pages_available: pool.available,
                        pages_in_use: pool.in_use,
                    }
                }
            },
        )
    }

    // -----------------------------------------------------------------------------------
    // Virtual processors
    // -----------------------------------------------------------------------------------

    /// HvCreateVp: a VP in its reset state in an Active child, charging VP_COST to the
    /// child's pool on the nodes the PDI allows.
    pub fn create_vp(&mut self, caller: PartitionId, input: &CreateVpInput) -> HvResult<()> {
        let t = self.child_target(caller, input.partition_id())?;
        if self.part(t).state != PartitionState::Active {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        if input.flags() != 0 || input.reserved_nonzero() {
            return Err(HvError::INVALID_PARAMETER);
        }
        if !matches!(
            input.subnode_type(),
            HvSubnodeType::Any | HvSubnodeType::Socket | HvSubnodeType::Cluster | HvSubnodeType::L3
        ) {
            return Err(HvError::INVALID_PARAMETER);
        }
        let sel = node_sel(input.proximity_domain_info(), self.node_count())?;
        let index = input.vp_index();
        if index > self.config.limits.max_vp_index
            || index == HV_VP_INDEX_SELF
            || index == HV_ANY_VP
            || self.part(t).vps.contains_key(&index)
        {
            return Err(HvError::INVALID_VP_INDEX);
        }
        let cost = u64::from(self.config.costs.create_vp);
        let charged = self
            .pool_charge(t, cost, sel)
            .ok_or(HvError::INSUFFICIENT_MEMORY)?;
        self.part_mut(t)
            .vps
            .insert(index, Vp::reset(index, charged));
        Ok(())
    }

    /// HvDeleteVp: removes a VP of an Active child and releases its VP_COST to the
    /// child's pool.
    pub fn delete_vp(&mut self, caller: PartitionId, input: &HvDeleteVp) -> HvResult<()> {
        let t = self.child_target(caller, input.partition_id)?;
        if self.part(t).state != PartitionState::Active {
            return Err(HvError::INVALID_PARTITION_STATE);
        }
        if input.padding != 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        let vp = self
            .part_mut(t)
            .vps
            .remove(&input.vp_index)
            .ok_or(HvError::INVALID_VP_INDEX)?;
        self.pool_release(t, &vp.charged);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Root-side helpers
    // -----------------------------------------------------------------------------------

    /// Marks root page `mfn` as in use for another purpose (an event-log buffer, a page
    /// locked for I/O): HvDepositMemory refuses it with OBJECT_IN_USE until
    /// [`unlock_root_page`](Self::unlock_root_page). Nothing else changes. False if `mfn`
    /// is not RAM (beyond host memory, in a hole or reserved).
    pub fn lock_root_page(&mut self, mfn: u64) -> bool {
        match u32::try_from(mfn) {
            Ok(m) if self.frames.is_ram(m) => {
                self.hv.locked.insert(m);
                true
            }
            _ => false,
        }
    }

    /// Undoes [`lock_root_page`](Self::lock_root_page); false if the page was not locked.
    pub fn unlock_root_page(&mut self, mfn: u64) -> bool {
        u32::try_from(mfn).is_ok_and(|m| self.hv.locked.remove(&m))
    }

    /// Deposits up to `pages` free root pages on the nodes `sel` allows into the pool of
    /// `target` (the root's own with [`ROOT_ID`] or [`SELF`]), as the root. Returns how
    /// many went in; INSUFFICIENT_MEMORY if the root had none to give, or the deposit's
    /// own error.
    pub fn root_deposit(&mut self, target: PartitionId, sel: NodeSel, pages: u64) -> HvResult<u64> {
        let mut done = 0;
        while done < pages {
            let Some(page) = self.root_free_page(sel) else {
                break;
            };
            self.deposit_memory(ROOT_ID, target, &[page])
                .map_err(|(e, _)| e)?;
            done += 1;
        }
        if done == 0 && pages > 0 {
            return Err(HvError::INSUFFICIENT_MEMORY);
        }
        Ok(done)
    }

    /// Runs `f` as Linux's root runs a call that may need pool pages: on
    /// INSUFFICIENT_MEMORY it deposits `pages_per_refill` free root pages (on the nodes
    /// `sel` allows) into `target` and retries, at most `max_refills` times. `target` is
    /// [`ROOT_ID`] or [`SELF`] for HvCreatePartition (charged to the caller), the child
    /// for initialization and HvCreateVp. Returns `f`'s last result, or the deposit's
    /// error if a refill fails (INSUFFICIENT_MEMORY when the root has no free page).
    pub fn call_with_deposits<T>(
        &mut self,
        target: PartitionId,
        sel: NodeSel,
        pages_per_refill: u64,
        max_refills: u32,
        mut f: impl FnMut(&mut Hypervisor) -> HvResult<T>,
    ) -> HvResult<T> {
        let mut refills = 0;
        loop {
            match f(self) {
                Err(e) if e == HvError::INSUFFICIENT_MEMORY && refills < max_refills => {
                    refills += 1;
                    self.root_deposit(target, sel, pages_per_refill)?;
                }
                r => return r,
            }
        }
    }

    /// Withdraws every available page of `id`'s pool for `caller`, 512 per call until
    /// NO_RESOURCES, as Linux's `hv_call_withdraw_memory` with `count = U64_MAX`. Returns
    /// the GPA page numbers; any error but NO_RESOURCES ends the loop with that error.
    pub fn withdraw_all(&mut self, caller: PartitionId, id: PartitionId) -> HvResult<Vec<u64>> {
        let input = HvWithdrawMemory {
            partition_id: id.0,
            proximity_domain_info: HvProximityDomainInfo::ANY,
        };
        let mut all = Vec::new();
        let mut batch = [0u64; HV_WITHDRAW_BATCH_SIZE as usize];
        loop {
            match self.withdraw_memory(caller, &input, &mut batch) {
                Ok(()) => all.extend_from_slice(&batch),
                Err((e, n)) if e == HvError::NO_RESOURCES => {
                    all.extend_from_slice(&batch[..n as usize]);
                    return Ok(all);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

mod ext;
mod registers;
#[cfg(test)]
mod tests;
