//! `static`: every VM keeps its startup memory, as with Dynamic Memory off. The baseline
//! every other policy's footprint is compared with.

use crate::{Policy, Snapshot};

/// Wish = startup, always.
#[derive(Debug, Clone, Default)]
pub struct Static;

impl Policy for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        snap.vms.iter().map(|vm| vm.settings.startup).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    #[test]
    fn wishes_startup_whatever_the_demand() {
        let mut a = vm(1 << 30);
        a.committed = Some(3 << 30);
        let s = snap(vec![a, vm(2 << 30)], 100 << 30, 50 << 30);
        assert_eq!(Static.wishes(&s), vec![1 << 30, 2 << 30]);
    }
}
