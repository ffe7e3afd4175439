//! Builders for tests.

use crate::{HostSnapshot, Snapshot, VmSettings, VmSnapshot};

/// A VM at its startup memory, range 0..64 GiB, buffer 20%, weight 50, no report.
pub(crate) fn vm(startup: u64) -> VmSnapshot {
    VmSnapshot {
        settings: VmSettings {
            startup,
            minimum: 0,
            maximum: 64 << 30,
            buffer_percent: 20,
            weight: 50,
        },
        assigned: startup,
        target: startup,
        committed: None,
        report_age_s: 0.0,
        busy: false,
        unresponsive: false,
        future_peak: None,
    }
}

/// A snapshot at time 0 with no reserve.
pub(crate) fn snap(vms: Vec<VmSnapshot>, total: u64, free: u64) -> Snapshot {
    Snapshot {
        host: HostSnapshot {
            now_s: 0.0,
            total,
            free,
            reserve: 0,
        },
        vms,
    }
}
