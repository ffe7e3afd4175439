//! `hyperv`: Hyper-V Dynamic Memory's documented behaviour.
//!
//! Demand is the guest's committed memory from its last status report; the target is
//! demand x (1 + buffer / 100), clamped to the VM's minimum and maximum (the arbiter
//! clamps); under host shortage buffers are not kept and memory goes by weight (the
//! arbiter's contention rule). Before the first report the VM keeps its startup memory,
//! as Hyper-V does while the guest's integration services start.

use super::scale;
use crate::{Policy, Snapshot};

/// Wish = committed x (1 + buffer / 100), or startup before any report.
#[derive(Debug, Clone, Default)]
pub struct HyperV;

impl Policy for HyperV {
    fn name(&self) -> &'static str {
        "hyperv"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        snap.vms
            .iter()
            .map(|vm| match vm.committed {
                Some(c) => scale(c, 100 + u64::from(vm.settings.buffer_percent), 100),
                None => vm.settings.startup,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    #[test]
    fn buffer_over_committed() {
        let mut a = vm(1 << 30);
        a.committed = Some(1000 << 20);
        a.settings.buffer_percent = 20;
        let b = vm(2 << 30);
        let mut c = vm(1 << 30);
        c.committed = Some(u64::MAX);
        let s = snap(vec![a, b, c], 100 << 30, 50 << 30);
        // Hyper-V's own example: 1000 MB committed at 20% buffer is 1200 MB.
        assert_eq!(HyperV.wishes(&s), vec![1200 << 20, 2 << 30, u64::MAX]);
    }
}
