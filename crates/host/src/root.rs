//! The root partition's side of a guest's life, made the way Linux's mshv root makes it:
//! raw hypercalls through the core's dispatcher, with pool deposits whenever a call
//! answers HV_STATUS_INSUFFICIENT_MEMORY (seed 004, reference: Linux
//! `drivers/hv/mshv_root_hv_call.c`, `hv_call_create_partition` and friends).
//!
//! Creation: HvCreatePartition (the root's own pool pays, refilled by deposits to SELF),
//! HvInitializePartition (the child's pool pays), one HvCreateVp per virtual processor.
//! Teardown: HvFinalizePartition, HvWithdrawMemory until the pool runs dry (seed 001),
//! HvDeletePartition. HvGetMemoryBalance (seed 000) reads a pool.

use ballast_abi::hv::{
    Control, HvCreatePartition, HvCreatePartitionOutput, HvCreateVp, HvDepositMemory,
    HvGetMemoryBalance, HvGetMemoryBalanceOutput, HvPartitionIdInput, HvProximityDomainInfo,
    HvStatus, HvWithdrawMemory, HypercallCode, HypercallOutput,
};
use ballast_core::hyperv::SELF;
use ballast_core::hypervisor::ROOT_ID;
use ballast_core::{Hypervisor, NodeSel, PartitionId};
use zerocopy::{FromBytes, IntoBytes};

/// Most deposits one call may trigger before the root gives up (Linux retries for as long
/// as the hypervisor asks; a bound keeps a misconfigured cost from looping forever).
const MAX_REFILLS: u32 = 4096;

/// Pages withdrawn per HvWithdrawMemory call (Linux's `HV_WITHDRAW_BATCH_SIZE`, 511 with
/// the 8-byte header on a 4 KiB page).
const WITHDRAW_BATCH: u16 = 511;

/// A hypercall the root made failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: HV_STATUS_{}", status.name().unwrap_or("unknown"))]
pub struct RootCallError {
    /// The call.
    pub call: &'static str,
    /// Its status.
    pub status: HvStatus,
}

fn status_of(rax: u64) -> HvStatus {
    HypercallOutput::from_bits(rax).status()
}

fn simple(hv: &mut Hypervisor, code: HypercallCode, input: &[u8], output: &mut [u8]) -> HvStatus {
    let control = Control::for_call(code, 0, 0).into_bits();
    status_of(hv.hypercall(ROOT_ID, control, input, output))
}

/// Deposits `pages` free root pages into `target`'s pool, one HvDepositMemory call per
/// page (the root's allocator hands out one page at a time).
fn deposit(hv: &mut Hypervisor, target: PartitionId, pages: u64) -> Result<(), RootCallError> {
    for _ in 0..pages {
        let Some(page) = hv.root_free_page(NodeSel::Any) else {
            return Err(RootCallError {
                call: "HvDepositMemory",
                status: HvStatus::INSUFFICIENT_MEMORY,
            });
        };
        let mut input = HvDepositMemory {
            partition_id: target.0,
        }
        .as_bytes()
        .to_vec();
        input.extend_from_slice(page.as_bytes());
        let control = Control::for_call(HypercallCode::HvCallDepositMemory, 1, 0).into_bits();
        let status = status_of(hv.hypercall(ROOT_ID, control, &input, &mut []));
        if status != HvStatus::SUCCESS {
            return Err(RootCallError {
                call: "HvDepositMemory",
                status,
            });
        }
    }
    Ok(())
}

/// Runs `call` until it stops asking for memory, depositing `refill` pages into `target`
/// before each retry.
fn with_deposits(
    hv: &mut Hypervisor,
    name: &'static str,
    target: PartitionId,
    refill: u64,
    mut call: impl FnMut(&mut Hypervisor) -> HvStatus,
) -> Result<(), RootCallError> {
    for _ in 0..=MAX_REFILLS {
        match call(hv) {
            HvStatus::SUCCESS => return Ok(()),
            HvStatus::INSUFFICIENT_MEMORY => deposit(hv, target, refill)?,
            status => return Err(RootCallError { call: name, status }),
        }
    }
    Err(RootCallError {
        call: name,
        status: HvStatus::INSUFFICIENT_MEMORY,
    })
}

/// Creates, initializes and gives `vps` virtual processors to a new child of the root.
pub fn create_partition(hv: &mut Hypervisor, vps: u32) -> Result<PartitionId, RootCallError> {
    let input = HvCreatePartition {
        flags: 0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    let mut out = HvCreatePartitionOutput::default();
    with_deposits(hv, "HvCreatePartition", SELF, 1, |hv| {
        simple(
            hv,
            HypercallCode::HvCallCreatePartition,
            input.as_bytes(),
            out.as_mut_bytes(),
        )
    })?;
    let id = PartitionId(out.partition_id);
    let made = (|| {
        let pid = HvPartitionIdInput { partition_id: id.0 };
        with_deposits(hv, "HvInitializePartition", id, 16, |hv| {
            simple(
                hv,
                HypercallCode::HvCallInitializePartition,
                pid.as_bytes(),
                &mut [],
            )
        })?;
        for vp_index in 0..vps {
            let vp = HvCreateVp {
                partition_id: id.0,
                vp_index,
                padding: 0,
                proximity_domain_info: HvProximityDomainInfo::ANY,
                flags: 0,
            };
            with_deposits(hv, "HvCreateVp", id, 4, |hv| {
                simple(hv, HypercallCode::HvCallCreateVp, vp.as_bytes(), &mut [])
            })?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        // Undo what was made: the partition must not outlive a failed creation.
        let _ = destroy_partition(hv, id);
        return Err(e);
    }
    Ok(id)
}

/// Finalizes `id`, withdraws its whole pool and deletes it. Returns the pages withdrawn.
pub fn destroy_partition(hv: &mut Hypervisor, id: PartitionId) -> Result<u64, RootCallError> {
    let pid = HvPartitionIdInput { partition_id: id.0 };
    match simple(
        hv,
        HypercallCode::HvCallFinalizePartition,
        pid.as_bytes(),
        &mut [],
    ) {
        // A partition never initialized (a creation that failed half-way) cannot be
        // finalized; it is withdrawn and deleted all the same.
        HvStatus::SUCCESS | HvStatus::INVALID_PARTITION_STATE => {}
        status => {
            return Err(RootCallError {
                call: "HvFinalizePartition",
                status,
            });
        }
    }
    let withdrawn = withdraw_all(hv, id)?;
    let status = simple(
        hv,
        HypercallCode::HvCallDeletePartition,
        pid.as_bytes(),
        &mut [],
    );
    if status != HvStatus::SUCCESS {
        return Err(RootCallError {
            call: "HvDeletePartition",
            status,
        });
    }
    Ok(withdrawn)
}

/// HvWithdrawMemory in batches until NO_RESOURCES (Linux treats that as drained).
fn withdraw_all(hv: &mut Hypervisor, id: PartitionId) -> Result<u64, RootCallError> {
    let input = HvWithdrawMemory {
        partition_id: id.0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    let mut out = vec![0u8; usize::from(WITHDRAW_BATCH) * 8];
    let mut total = 0u64;
    loop {
        let control =
            Control::for_call(HypercallCode::HvCallWithdrawMemory, WITHDRAW_BATCH, 0).into_bits();
        let rax = hv.hypercall(ROOT_ID, control, input.as_bytes(), &mut out);
        let r = HypercallOutput::from_bits(rax);
        total += u64::from(r.reps_completed());
        match r.status() {
            HvStatus::SUCCESS => {}
            HvStatus::NO_RESOURCES => return Ok(total),
            status => {
                return Err(RootCallError {
                    call: "HvWithdrawMemory",
                    status,
                });
            }
        }
    }
}

/// HvGetMemoryBalance of `id`'s pool over all nodes: (available, in use) pages.
pub fn memory_balance(hv: &mut Hypervisor, id: PartitionId) -> Result<(u64, u64), RootCallError> {
    let input = HvGetMemoryBalance {
        partition_id: id.0,
        proximity_domain_info: HvProximityDomainInfo::ANY,
    };
    let mut out = HvGetMemoryBalanceOutput::default();
    let status = simple(
        hv,
        HypercallCode::HvCallGetMemoryBalance,
        input.as_bytes(),
        out.as_mut_bytes(),
    );
    if status != HvStatus::SUCCESS {
        return Err(RootCallError {
            call: "HvGetMemoryBalance",
            status,
        });
    }
    let out = HvGetMemoryBalanceOutput::read_from_bytes(out.as_bytes()).unwrap_or_default();
    Ok((out.pages_available, out.pages_in_use))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_core::Config;

    #[test]
    fn a_partition_made_and_torn_down_by_hypercalls_gives_every_page_back() {
        let mut hv = Hypervisor::new(Config::single_node(4096)).unwrap();
        let free = hv.frames().total_free();
        let id = create_partition(&mut hv, 4).unwrap();
        let p = hv.partition(id).unwrap();
        assert_eq!(p.vps().len(), 4);
        assert_eq!(p.state(), ballast_core::PartitionState::Active);
        let (avail, in_use) = memory_balance(&mut hv, id).unwrap();
        assert!(
            in_use > 0,
            "initialization and the VPs are charged to the pool"
        );
        assert!(hv.frames().total_free() < free);
        hv.check().unwrap();
        let withdrawn = destroy_partition(&mut hv, id).unwrap();
        assert_eq!(withdrawn, avail + in_use, "finalize frees what was in use");
        assert!(hv.partition(id).is_none());
        hv.check().unwrap();
        // The root's own pool keeps the deposit that paid for the creation.
        let (root_avail, _) = memory_balance(&mut hv, SELF).unwrap();
        assert_eq!(hv.frames().total_free() + root_avail, free);
    }

    #[test]
    fn a_host_out_of_memory_refuses_creation_and_leaves_nothing_behind() {
        let mut hv = Hypervisor::new(Config::single_node(8)).unwrap();
        let e = create_partition(&mut hv, 64).unwrap_err();
        assert_eq!(e.status, HvStatus::INSUFFICIENT_MEMORY);
        assert_eq!(hv.partitions().count(), 1, "only the root is left");
        hv.check().unwrap();
    }

    #[test]
    fn errors_name_the_call_and_the_status() {
        let e = RootCallError {
            call: "HvCreateVp",
            status: HvStatus::INVALID_PARAMETER,
        };
        assert_eq!(
            e.to_string(),
            "HvCreateVp failed: HV_STATUS_INVALID_PARAMETER"
        );
    }
}
