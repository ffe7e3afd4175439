//! `oracle`: knows the future. Wish = the highest demand of the simulator's lookahead,
//! under rules with no step bound, no minimum change and no hysteresis: the lower bound
//! on footprint any causal policy could reach without paging.

use crate::{Policy, Rules, Snapshot};

/// Wish = `future_peak`, else committed, else startup.
#[derive(Debug, Clone, Default)]
pub struct Oracle;

impl Policy for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        snap.vms
            .iter()
            .map(|vm| {
                vm.future_peak
                    .or(vm.committed)
                    .unwrap_or(vm.settings.startup)
            })
            .collect()
    }

    fn rules(&self) -> Rules {
        Rules::unbounded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    #[test]
    fn future_then_committed_then_startup() {
        let mut a = vm(1 << 30);
        a.future_peak = Some(5 << 20);
        a.committed = Some(7 << 20);
        let mut b = vm(1 << 30);
        b.committed = Some(7 << 20);
        let c = vm(3 << 30);
        let s = snap(vec![a, b, c], 100 << 30, 50 << 30);
        assert_eq!(Oracle.wishes(&s), vec![5 << 20, 7 << 20, 3 << 30]);
        assert_eq!(Oracle.rules(), Rules::unbounded());
    }
}
