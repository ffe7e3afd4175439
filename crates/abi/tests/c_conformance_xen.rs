//! `ballast_abi::xen` against Xen's own public headers (libxen-dev, `/usr/include/xen`).
//!
//! `tests/c/xen_structs.c` fills every field of every memory_op struct with a distinct
//! value and prints the field offsets and sizes, the raw bytes and the constants as the C
//! compiler sees them. For each struct this test builds the Rust value from the same field
//! values and requires the same bytes, decodes the C bytes and requires the same fields,
//! and requires the same size, alignment and offsets.
//!
//! A missing C compiler or missing headers is a failure, not a skip: the point of the test
//! is that it cannot pass without checking.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::mem::{align_of, offset_of, size_of, size_of_val};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_abi::xen::*;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

const SETUP_HINT: &str = "the Xen C conformance test needs a C compiler (`cc`, or $CC) and \
    Xen's public headers from libxen-dev (/usr/include/xen/memory.h); run scripts/test, \
    which installs them";

// ---------------------------------------------------------------------------------------
// Running the C program
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct CField {
    offset: usize,
    size: usize,
    value: u64,
}

#[derive(Debug)]
struct CStruct {
    size: usize,
    align: usize,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct COutput {
    /// struct -> field -> layout and value, fields in the order C printed them.
    fields: HashMap<String, Vec<(String, CField)>>,
    structs: HashMap<String, CStruct>,
    consts: HashMap<String, i64>,
}

impl COutput {
    fn field(&self, s: &str, f: &str) -> &CField {
        self.fields
            .get(s)
            .and_then(|fs| fs.iter().find(|(name, _)| name == f))
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("C output has no field {s}.{f}"))
    }

    fn strukt(&self, s: &str) -> &CStruct {
        self.structs
            .get(s)
            .unwrap_or_else(|| panic!("C output has no struct {s}"))
    }
}

/// Removes the build directory however the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn c_output() -> &'static COutput {
    static OUTPUT: OnceLock<COutput> = OnceLock::new();
    OUTPUT.get_or_init(compile_and_run)
}

fn compile_and_run() -> COutput {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/xen_structs.c");
    assert!(source.is_file(), "missing {}", source.display());

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "ballast-abi-c-conformance-xen-{}-{nanos}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.0.display()));
    let exe = dir.0.join("xen_structs");

    // $CC may carry arguments ("ccache gcc"), as make allows.
    let cc = std::env::var("CC")
        .ok()
        .filter(|cc| !cc.trim().is_empty())
        .unwrap_or_else(|| "cc".to_owned());
    let mut words = cc.split_whitespace();
    let program = words.next().unwrap_or("cc");
    let compiled = Command::new(program)
        .args(words)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}; {SETUP_HINT}"));
    assert!(
        compiled.status.success(),
        "`{cc}` failed to build {} ({}):\n{}\n{SETUP_HINT}",
        source.display(),
        compiled.status,
        String::from_utf8_lossy(&compiled.stderr)
    );

    let ran = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        ran.status.success(),
        "{} failed ({}):\n{}",
        exe.display(),
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
    parse(&String::from_utf8_lossy(&ran.stdout))
}

fn bad(line: &str) -> ! {
    panic!("malformed C output line: {line:?}")
}

fn parse(text: &str) -> COutput {
    let mut out = COutput::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let num = |s: &str| s.parse::<usize>().unwrap_or_else(|_| bad(line));
        match words.as_slice() {
            ["field", s, f, offset, size, value] => {
                let value = value
                    .strip_prefix("0x")
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
                    .unwrap_or_else(|| bad(line));
                let field = CField {
                    offset: num(offset),
                    size: num(size),
                    value,
                };
                out.fields
                    .entry((*s).to_owned())
                    .or_default()
                    .push(((*f).to_owned(), field));
            }
            ["struct", s, size, align, hex] => {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|b| u8::from_str_radix(b, 16).ok())
                            .unwrap_or_else(|| bad(line))
                    })
                    .collect();
                let strukt = CStruct {
                    size: num(size),
                    align: num(align),
                    bytes,
                };
                out.structs.insert((*s).to_owned(), strukt);
            }
            ["const", ..] if words.len() >= 3 => {
                // The name is a C expression and may contain spaces; the value is last.
                let (name, value) = line["const ".len()..]
                    .rsplit_once(' ')
                    .unwrap_or_else(|| bad(line));
                let value = value.parse::<i64>().unwrap_or_else(|_| bad(line));
                out.consts.insert(name.to_owned(), value);
            }
            _ => bad(line),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Field plumbing
// ---------------------------------------------------------------------------------------

/// A field type as the raw integer C printed. `from_raw` refuses values wider than the
/// field, which would mean the two sides disagree on its size.
trait Raw: Sized {
    fn raw(self) -> u64;
    fn from_raw(v: u64) -> Self;
}

macro_rules! raw_int {
    ($($t:ty),*) => {$(
        impl Raw for $t {
            fn raw(self) -> u64 {
                u64::from(self)
            }
            fn from_raw(v: u64) -> Self {
                <$t>::try_from(v).unwrap_or_else(|_| {
                    panic!("C value {v:#x} does not fit in {}", stringify!($t))
                })
            }
        }
    )*};
}
raw_int!(u8, u16, u32, u64);

macro_rules! raw_newtype {
    ($($t:ty),*) => {$(
        impl Raw for $t {
            fn raw(self) -> u64 {
                self.0.raw()
            }
            fn from_raw(v: u64) -> Self {
                Self(Raw::from_raw(v))
            }
        }
    )*};
}
raw_newtype!(MemFlags, MapSpace, ResourceType, E820Type);

/// One field: its C name, its Rust layout, and how to write and read it.
struct Field<T> {
    c: &'static str,
    offset: usize,
    size: usize,
    set: fn(&mut T, u64),
    get: fn(&T) -> u64,
}

/// `field!(Type, "c.name", rust.path)`. Fields are copied out by value (`{ v.f }`) so
/// packed structs work too.
macro_rules! field {
    ($t:ty, $c:literal, $($f:ident).+) => {
        Field::<$t> {
            c: $c,
            offset: offset_of!($t, $($f).+),
            size: {
                let v = <$t as FromZeros>::new_zeroed();
                size_of_val(&{ v.$($f).+ })
            },
            set: |v, x| v.$($f).+ = Raw::from_raw(x),
            get: |v| Raw::raw({ v.$($f).+ }),
        }
    };
}

/// The three checks of the module doc, for the struct C calls `c_name`.
fn check<T>(c_name: &str, fields: &[Field<T>])
where
    T: FromBytes + IntoBytes + Immutable + KnownLayout + PartialEq + Debug,
{
    let out = c_output();
    let c = out.strukt(c_name);

    // (c) size, alignment, and the same field set at the same offsets.
    assert_eq!(c.size, size_of::<T>(), "{c_name}: sizeof");
    assert_eq!(c.bytes.len(), c.size, "{c_name}: dump length");
    assert_eq!(c.align, align_of::<T>(), "{c_name}: alignof");
    let c_fields: HashSet<&str> = out
        .fields
        .get(c_name)
        .map(|fs| fs.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let rust_fields: HashSet<&str> = fields.iter().map(|f| f.c).collect();
    assert_eq!(c_fields, rust_fields, "{c_name}: field sets differ");
    for f in fields {
        let cf = out.field(c_name, f.c);
        assert_eq!(cf.offset, f.offset, "{c_name}.{}: offsetof", f.c);
        assert_eq!(cf.size, f.size, "{c_name}.{}: sizeof", f.c);
    }

    // (a) the same field values give the same bytes, padding included.
    let mut built = T::new_zeroed();
    for f in fields {
        (f.set)(&mut built, out.field(c_name, f.c).value);
    }
    assert_eq!(
        built.as_bytes(),
        c.bytes.as_slice(),
        "{c_name}: Rust bytes differ from C bytes; Rust value {built:?}"
    );

    // (b) the C bytes decode to the same field values.
    let decoded =
        T::read_from_bytes(&c.bytes).unwrap_or_else(|_| panic!("{c_name}: C bytes do not decode"));
    for f in fields {
        assert_eq!(
            (f.get)(&decoded),
            out.field(c_name, f.c).value,
            "{c_name}.{}: decoded value",
            f.c
        );
    }
    assert_eq!(decoded, built, "{c_name}: decoded value");
}

// ---------------------------------------------------------------------------------------
// One test per struct
// ---------------------------------------------------------------------------------------

#[test]
fn xen_memory_reservation_matches_c() {
    type T = XenMemoryReservation;
    check::<T>(
        "xen_memory_reservation",
        &[
            field!(T, "extent_start", extent_start),
            field!(T, "nr_extents", nr_extents),
            field!(T, "extent_order", extent_order),
            field!(T, "mem_flags", mem_flags),
            field!(T, "domid", domid),
        ],
    );
}

#[test]
fn xen_memory_exchange_matches_c() {
    type T = XenMemoryExchange;
    check::<T>(
        "xen_memory_exchange",
        &[
            field!(T, "in.extent_start", in_.extent_start),
            field!(T, "in.nr_extents", in_.nr_extents),
            field!(T, "in.extent_order", in_.extent_order),
            field!(T, "in.mem_flags", in_.mem_flags),
            field!(T, "in.domid", in_.domid),
            field!(T, "out.extent_start", out.extent_start),
            field!(T, "out.nr_extents", out.nr_extents),
            field!(T, "out.extent_order", out.extent_order),
            field!(T, "out.mem_flags", out.mem_flags),
            field!(T, "out.domid", out.domid),
            field!(T, "nr_exchanged", nr_exchanged),
        ],
    );
}

#[test]
fn xen_memory_domain_matches_c() {
    type T = XenMemoryDomain;
    check::<T>("xen_memory_domain", &[field!(T, "domid", domid)]);
}

#[test]
fn xen_machphys_mfn_list_matches_c() {
    type T = XenMachphysMfnList;
    check::<T>(
        "xen_machphys_mfn_list",
        &[
            field!(T, "max_extents", max_extents),
            field!(T, "extent_start", extent_start),
            field!(T, "nr_extents", nr_extents),
        ],
    );
}

#[test]
fn xen_machphys_mapping_matches_c() {
    type T = XenMachphysMapping;
    check::<T>(
        "xen_machphys_mapping",
        &[
            field!(T, "v_start", v_start),
            field!(T, "v_end", v_end),
            field!(T, "max_mfn", max_mfn),
        ],
    );
}

#[test]
fn xen_add_to_physmap_matches_c() {
    type T = XenAddToPhysmap;
    check::<T>(
        "xen_add_to_physmap",
        &[
            field!(T, "domid", domid),
            field!(T, "size", size),
            field!(T, "space", space),
            field!(T, "idx", idx),
            field!(T, "gpfn", gpfn),
        ],
    );
}

#[test]
fn xen_add_to_physmap_batch_matches_c() {
    // Checked through the old name too: it must stay the same type.
    type T = XenAddToPhysmapRange;
    check::<T>(
        "xen_add_to_physmap_batch",
        &[
            field!(T, "domid", domid),
            field!(T, "space", space),
            field!(T, "size", size),
            field!(T, "foreign_domid", foreign_domid),
            field!(T, "idxs", idxs),
            field!(T, "gpfns", gpfns),
            field!(T, "errs", errs),
        ],
    );
}

#[test]
fn xen_remove_from_physmap_matches_c() {
    type T = XenRemoveFromPhysmap;
    check::<T>(
        "xen_remove_from_physmap",
        &[field!(T, "domid", domid), field!(T, "gpfn", gpfn)],
    );
}

#[test]
fn xen_memory_map_matches_c() {
    type T = XenMemoryMap;
    check::<T>(
        "xen_memory_map",
        &[
            field!(T, "nr_entries", nr_entries),
            field!(T, "buffer", buffer),
        ],
    );
}

#[test]
fn e820_entry_matches_c() {
    type T = E820Entry;
    check::<T>(
        "e820entry",
        &[
            field!(T, "addr", addr),
            field!(T, "size", size),
            field!(T, "type", ty),
        ],
    );
}

#[test]
fn xen_foreign_memory_map_matches_c() {
    type T = XenForeignMemoryMap;
    check::<T>(
        "xen_foreign_memory_map",
        &[
            field!(T, "domid", domid),
            field!(T, "map.nr_entries", map.nr_entries),
            field!(T, "map.buffer", map.buffer),
        ],
    );
}

#[test]
fn xen_mem_acquire_resource_matches_c() {
    type T = XenMemAcquireResource;
    check::<T>(
        "xen_mem_acquire_resource",
        &[
            field!(T, "domid", domid),
            field!(T, "type", ty),
            field!(T, "id", id),
            field!(T, "nr_frames", nr_frames),
            // Xen 4.17 calls it `pad`; Linux's copy of the header calls it `flags`.
            field!(T, "pad", flags),
            field!(T, "frame", frame),
            field!(T, "frame_list", frame_list),
        ],
    );
}

#[test]
fn xen_pod_target_matches_c() {
    type T = XenPodTarget;
    check::<T>(
        "xen_pod_target",
        &[
            field!(T, "target_pages", target_pages),
            field!(T, "tot_pages", tot_pages),
            field!(T, "pod_cache_pages", pod_cache_pages),
            field!(T, "pod_entries", pod_entries),
            field!(T, "domid", domid),
        ],
    );
}

#[test]
fn xen_reserved_device_memory_matches_c() {
    type T = XenReservedDeviceMemory;
    check::<T>(
        "xen_reserved_device_memory",
        &[
            field!(T, "start_pfn", start_pfn),
            field!(T, "nr_pages", nr_pages),
        ],
    );
}

#[test]
fn xen_reserved_device_memory_map_matches_c() {
    type T = XenReservedDeviceMemoryMap;
    check::<T>(
        "xen_reserved_device_memory_map",
        &[
            field!(T, "flags", flags),
            field!(T, "nr_entries", nr_entries),
            field!(T, "buffer", buffer),
            field!(T, "dev.pci.seg", dev.seg),
            field!(T, "dev.pci.bus", dev.bus),
            field!(T, "dev.pci.devfn", dev.devfn),
        ],
    );
}

#[test]
fn xen_vnuma_topology_info_matches_c() {
    type T = XenVnumaTopologyInfo;
    check::<T>(
        "xen_vnuma_topology_info",
        &[
            field!(T, "domid", domid),
            field!(T, "pad", pad),
            field!(T, "nr_vnodes", nr_vnodes),
            field!(T, "nr_vcpus", nr_vcpus),
            field!(T, "nr_vmemranges", nr_vmemranges),
            field!(T, "vdistance", vdistance),
            field!(T, "vcpu_to_vnode", vcpu_to_vnode),
            field!(T, "vmemrange", vmemrange),
        ],
    );
}

#[test]
fn xen_vmemrange_matches_c() {
    type T = XenVmemrange;
    check::<T>(
        "xen_vmemrange",
        &[
            field!(T, "start", start),
            field!(T, "end", end),
            field!(T, "flags", flags),
            field!(T, "nid", nid),
        ],
    );
}

/// The byte comparisons above prove something only if C wrote every field with a value
/// no other field shares and with no zero byte to hide behind padding.
#[test]
fn c_field_values_are_distinct_and_nonzero() {
    let out = c_output();
    assert_eq!(out.structs.len(), 17, "structs dumped by C");
    let mut seen = HashSet::new();
    for (s, fields) in &out.fields {
        assert!(out.structs.contains_key(s), "field lines for undumped {s}");
        for (f, c) in fields {
            let bytes = c.value.to_le_bytes();
            assert!(
                bytes[..c.size].iter().all(|&b| b != 0),
                "{s}.{f} = {:#x} has a zero byte",
                c.value
            );
            assert!(
                c.size == 8 || c.value >> (8 * c.size) == 0,
                "{s}.{f} = {:#x} is wider than its field",
                c.value
            );
            assert!(seen.insert(c.value), "{s}.{f} = {:#x} repeats", c.value);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

fn domid(d: u16) -> i64 {
    i64::from(d)
}

fn flags(f: MemFlags) -> i64 {
    i64::from(f.0)
}

/// Every `const` line the C program may print, with the value the Rust side gives it.
fn rust_constants() -> Vec<(&'static str, i64)> {
    let mut table = vec![
        (
            "XENMAPSPACE_shared_info",
            i64::from(MapSpace::SHARED_INFO.0),
        ),
        (
            "XENMAPSPACE_grant_table",
            i64::from(MapSpace::GRANT_TABLE.0),
        ),
        ("XENMAPSPACE_gmfn", i64::from(MapSpace::GMFN.0)),
        ("XENMAPSPACE_gmfn_range", i64::from(MapSpace::GMFN_RANGE.0)),
        (
            "XENMAPSPACE_gmfn_foreign",
            i64::from(MapSpace::GMFN_FOREIGN.0),
        ),
        ("XENMAPSPACE_dev_mmio", i64::from(MapSpace::DEV_MMIO.0)),
        (
            "XENMAPIDX_grant_table_status",
            i64::try_from(XENMAPIDX_GRANT_TABLE_STATUS).unwrap_or(-1),
        ),
        (
            "XENMEMF_address_bits(32)",
            flags(MemFlags::address_bits(32)),
        ),
        (
            "XENMEMF_get_address_bits(0xdeadbeef)",
            i64::from(MemFlags(0xdead_beef).get_address_bits()),
        ),
        ("XENMEMF_node(0)", flags(MemFlags::node(0))),
        ("XENMEMF_node(3)", flags(MemFlags::node(3))),
        ("XENMEMF_node(254)", flags(MemFlags::node(254))),
        ("XENMEMF_exact_node(1)", flags(MemFlags::exact_node(1))),
        ("XENMEMF_exact_node(3)", flags(MemFlags::exact_node(3))),
        ("XENMEMF_get_node(0)", i64::from(MemFlags(0).get_node())),
        (
            "XENMEMF_get_node(XENMEMF_node(3))",
            i64::from(MemFlags::node(3).get_node()),
        ),
        (
            "XENMEMF_get_node(XENMEMF_exact_node(7) | XENMEMF_vnode | XENMEMF_address_bits(40))",
            i64::from(
                (MemFlags::exact_node(7) | MemFlags::VNODE | MemFlags::address_bits(40)).get_node(),
            ),
        ),
        (
            "XENMEMF_get_node(XENMEMF_populate_on_demand)",
            i64::from(MemFlags::POPULATE_ON_DEMAND.get_node()),
        ),
        (
            "XENMEMF_populate_on_demand",
            flags(MemFlags::POPULATE_ON_DEMAND),
        ),
        (
            "XENMEMF_exact_node_request",
            flags(MemFlags::EXACT_NODE_REQUEST),
        ),
        ("XENMEMF_vnode", flags(MemFlags::VNODE)),
        (
            "XENMEM_resource_ioreq_server",
            i64::from(ResourceType::IOREQ_SERVER.0),
        ),
        (
            "XENMEM_resource_grant_table",
            i64::from(ResourceType::GRANT_TABLE.0),
        ),
        (
            "XENMEM_resource_vmtrace_buf",
            i64::from(ResourceType::VMTRACE_BUF.0),
        ),
        (
            "XENMEM_resource_grant_table_id_shared",
            i64::from(XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED),
        ),
        (
            "XENMEM_resource_grant_table_id_status",
            i64::from(XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS),
        ),
        (
            "XENMEM_resource_ioreq_server_frame_bufioreq",
            i64::try_from(XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ).unwrap_or(-1),
        ),
        (
            "XENMEM_resource_ioreq_server_frame_ioreq(0)",
            i64::try_from(xenmem_resource_ioreq_server_frame_ioreq(0)).unwrap_or(-1),
        ),
        (
            "XENMEM_resource_ioreq_server_frame_ioreq(5)",
            i64::try_from(xenmem_resource_ioreq_server_frame_ioreq(5)).unwrap_or(-1),
        ),
        (
            "XENMEM_rsrc_acq_caller_owned",
            i64::from(XENMEM_RSRC_ACQ_CALLER_OWNED),
        ),
        ("XENMEM_RDM_ALL", i64::from(XENMEM_RDM_ALL)),
        ("MACH2PHYS_VIRT_START", MACH2PHYS_VIRT_START as i64),
        ("MACH2PHYS_VIRT_END", MACH2PHYS_VIRT_END as i64),
        (
            "MACH2PHYS_NR_ENTRIES",
            i64::try_from(MACH2PHYS_NR_ENTRIES).unwrap_or(-1),
        ),
        ("DOMID_FIRST_RESERVED", domid(DOMID_FIRST_RESERVED)),
        ("DOMID_SELF", domid(DOMID_SELF)),
        ("DOMID_IO", domid(DOMID_IO)),
        ("DOMID_XEN", domid(DOMID_XEN)),
        ("DOMID_COW", domid(DOMID_COW)),
        ("DOMID_INVALID", domid(DOMID_INVALID)),
        ("DOMID_ANY", domid(DOMID_ANY)),
        ("DOMID_IDLE", domid(DOMID_IDLE)),
        ("DOMID_MASK", domid(DOMID_MASK)),
        ("E820MAX", i64::try_from(E820MAX).unwrap_or(-1)),
        ("MEMOP_EXTENT_SHIFT", i64::from(MEMOP_EXTENT_SHIFT)),
        ("sizeof(xen_pfn_t)", 8),
        ("sizeof(xen_ulong_t)", 8),
        ("sizeof(domid_t)", 2),
        (
            "XENMEM_add_to_physmap_range",
            i64::from(MemoryOp::ADD_TO_PHYSMAP_RANGE.0),
        ),
    ];
    for (name, hc) in [
        ("__HYPERVISOR_memory_op", Hypercall::MEMORY_OP),
        ("__HYPERVISOR_multicall", Hypercall::MULTICALL),
        ("__HYPERVISOR_xen_version", Hypercall::XEN_VERSION),
        ("__HYPERVISOR_sysctl", Hypercall::SYSCTL),
        ("__HYPERVISOR_domctl", Hypercall::DOMCTL),
        ("__HYPERVISOR_dm_op", Hypercall::DM_OP),
    ] {
        table.push((name, i64::try_from(hc.0).unwrap_or(-1)));
    }
    for op in MemoryOp::ALL {
        if let Some(name) = op.name() {
            table.push((name, i64::from(op.0)));
        }
    }
    table
}

/// Constants Xen 4.17's public headers do not define: Xen-internal (`E820MAX`,
/// `MEMOP_EXTENT_SHIFT`), newer than 4.17 (`DOMID_ANY`), older than 4.17
/// (`XENMEM_rsrc_acq_caller_owned`, `XENMEM_add_to_physmap_range`), or removed
/// (`XENMEM_translate_gpfn_list`).
const OPTIONAL: &[&str] = &[
    "E820MAX",
    "MEMOP_EXTENT_SHIFT",
    "DOMID_ANY",
    "XENMEM_rsrc_acq_caller_owned",
    "XENMEM_add_to_physmap_range",
    "XENMEM_translate_gpfn_list",
];

#[test]
fn constants_match_c() {
    let out = c_output();
    let table = rust_constants();
    for (name, rust) in &table {
        match out.consts.get(*name) {
            Some(c) => assert_eq!(c, rust, "{name}: C {c}, Rust {rust}"),
            None => assert!(OPTIONAL.contains(name), "{name} missing from the C output"),
        }
    }
    // The other direction keeps the C program and this table from drifting apart.
    let known: HashSet<&str> = table.iter().map(|(n, _)| *n).collect();
    for name in out.consts.keys() {
        assert!(
            known.contains(name.as_str()),
            "C prints {name}, which this test does not compare"
        );
    }
}

#[test]
fn sub_op_names_are_the_c_macro_names() {
    let out = c_output();
    for op in MemoryOp::ALL {
        let name = op.name().unwrap_or_else(|| panic!("{op:?} has no name"));
        if op == MemoryOp::TRANSLATE_GPFN_LIST {
            // Removed from the interface: the header must not define it any more.
            assert!(!out.consts.contains_key(name), "{name} is defined again");
            continue;
        }
        assert_eq!(
            out.consts.get(name),
            Some(&i64::from(op.0)),
            "{name} in the C headers"
        );
    }
    // "Next available subop number is 29": nothing above 28 may be defined.
    let highest = out
        .consts
        .iter()
        .filter(|(n, _)| n.starts_with("XENMEM_") && !n.starts_with("XENMEM_resource"))
        .filter(|(n, _)| !n.starts_with("XENMEM_RDM") && !n.starts_with("XENMEM_rsrc"))
        .map(|(_, v)| *v)
        .max();
    assert_eq!(highest, Some(28));
}
