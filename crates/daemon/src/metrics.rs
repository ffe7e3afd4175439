//! The Prometheus text endpoint: per-VM and host figures, named with the `_bytes` and
//! `_total` conventions of the node and libvirt exporters.

use std::fmt::Write;

use crate::api::types::{HostInfo, VmInfo, VmState};
use crate::link::GuestKind;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values are VM names (checked to `A-Z a-z 0-9 . _ -`), so no escaping is needed;
/// escape anyway so the format holds whatever a name becomes.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of `host` and `vms`.
pub fn render(host: &HostInfo, vms: &[VmInfo]) -> String {
    let mut o = String::new();
    let gauges: [(&str, &str, u64); 5] = [
        (
            "ballast_host_pools_bytes",
            "Memory in the partitions' pools (the hypervisor's own use for them).",
            host.pools_bytes,
        ),
        (
            "ballast_host_memory_bytes",
            "Managed memory for guests.",
            host.memory_bytes,
        ),
        (
            "ballast_host_free_bytes",
            "Free managed memory.",
            host.free_bytes,
        ),
        (
            "ballast_host_resident_bytes",
            "Resident bytes of all running guests' memory.",
            host.resident_bytes,
        ),
        (
            "ballast_host_reserve_bytes",
            "Memory the balancer leaves free.",
            host.reserve_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        family(&mut o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(
        &mut o,
        "ballast_host_discarded_bytes_total",
        "counter",
        "Bytes the host took back from guests (ballooned or decreased) since the daemon started.",
    );
    let _ = writeln!(
        o,
        "ballast_host_discarded_bytes_total {}",
        host.discarded_bytes
    );
    family(&mut o, "ballast_host_vms", "gauge", "Defined VMs.");
    let _ = writeln!(o, "ballast_host_vms {}", host.vms);
    family(
        &mut o,
        "ballast_host_running_vms",
        "gauge",
        "VMs with a guest attached.",
    );
    let _ = writeln!(o, "ballast_host_running_vms {}", host.running);

    type Get = fn(&VmInfo) -> Option<f64>;
    let per_vm: [(&str, &str, &str, Get); 11] = [
        (
            "ballast_vm_running",
            "gauge",
            "1 while a guest is attached.",
            |v| Some(f64::from(u8::from(v.state == VmState::Running))),
        ),
        (
            "ballast_vm_target_bytes",
            "gauge",
            "Where the host is moving the VM.",
            |v| Some(v.target as f64),
        ),
        (
            "ballast_vm_assigned_bytes",
            "gauge",
            "Memory the VM holds.",
            |v| Some(v.assigned as f64),
        ),
        (
            "ballast_vm_committed_bytes",
            "gauge",
            "What the guest last said it commits.",
            |v| v.committed.map(|c| c as f64),
        ),
        (
            "ballast_vm_available_bytes",
            "gauge",
            "What the guest last said is free.",
            |v| v.available.map(|c| c as f64),
        ),
        (
            "ballast_vm_pressure_ratio",
            "gauge",
            "Committed over assigned memory.",
            |v| v.pressure.map(|p| p / 100.0),
        ),
        (
            "ballast_vm_ballooned_bytes",
            "gauge",
            "Memory in the VM's balloon.",
            |v| Some(v.ballooned as f64),
        ),
        (
            "ballast_vm_hot_added_bytes",
            "gauge",
            "Memory hot-added since the VM started.",
            |v| Some(v.operations.hot_add_bytes as f64),
        ),
        (
            "ballast_vm_resident_bytes",
            "gauge",
            "Resident bytes of the VM's memory.",
            |v| v.resident.map(|r| r as f64),
        ),
        (
            "ballast_vm_stuck",
            "gauge",
            "1 if the balancer considers the VM stuck.",
            |v| Some(f64::from(u8::from(v.stuck))),
        ),
        (
            "ballast_vm_free_page_reporting",
            "gauge",
            "1 if the VM's guest may report free memory with the cold discard hint.",
            |v| Some(f64::from(u8::from(v.free_page_reporting))),
        ),
    ];
    let kind = |k: GuestKind| match k {
        GuestKind::Dm => "dm",
        GuestKind::Xen => "xen",
    };
    for (name, t, help, get) in per_vm {
        family(&mut o, name, t, help);
        for v in vms {
            if let Some(x) = get(v) {
                let _ = writeln!(
                    o,
                    "{name}{{vm=\"{}\",kind=\"{}\"}} {x}",
                    label(&v.name),
                    kind(v.kind)
                );
            }
        }
    }
    family(
        &mut o,
        "ballast_vm_operations_total",
        "counter",
        "Memory operations completed, by operation.",
    );
    for v in vms {
        let p = &v.operations;
        for (op, n) in [
            ("balloon", p.balloon),
            ("unballoon", p.unballoon),
            ("hot_add", p.hot_add),
            ("decrease_reservation", p.decrease),
            ("populate_physmap", p.populate),
        ] {
            let _ = writeln!(
                o,
                "ballast_vm_operations_total{{vm=\"{}\",op=\"{op}\"}} {n}",
                label(&v.name)
            );
        }
    }
    type Count = fn(&VmInfo) -> u64;
    let counters: [(&str, &str, Count); 6] = [
        (
            "ballast_vm_moved_bytes_total",
            "Bytes moved out of (balloon, decrease) and into (unballoon, hot-add, populate) the VM.",
            |v| {
                let p = &v.operations;
                p.balloon_bytes
                    + p.decrease_bytes
                    + p.unballoon_bytes
                    + p.hot_add_bytes
                    + p.populate_bytes
            },
        ),
        (
            "ballast_vm_operation_failures_total",
            "Operations that failed or timed out.",
            |v| v.operations.failures,
        ),
        ("ballast_vm_target_changes_total", "Target changes.", |v| {
            v.operations.target_changes
        }),
        (
            "ballast_vm_violations_total",
            "Protocol violations counted against the VM's guest.",
            |v| v.violations,
        ),
        (
            "ballast_vm_hint_calls_total",
            "Cold discard hints (HvExtCallMemoryHeatHint calls) the guest made, whatever their status.",
            |v| v.operations.hint_calls,
        ),
        (
            "ballast_vm_hinted_bytes_total",
            "Bytes whose contents the guest's cold discard hints gave up (the pages stay the VM's; the host stops backing them).",
            |v| v.operations.hinted_bytes,
        ),
    ];
    for (name, help, get) in counters {
        family(&mut o, name, "counter", help);
        for v in vms {
            let _ = writeln!(o, "{name}{{vm=\"{}\"}} {}", label(&v.name), get(v));
        }
    }
    o
}
