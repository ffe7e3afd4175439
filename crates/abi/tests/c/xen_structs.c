/*
 * Ground truth for tests/c_conformance_xen.rs: the x86_64 layouts and constants of Xen's
 * public memory_op interface, as the C compiler sees them in the installed headers
 * (Debian's libxen-dev).
 *
 * Every field of every struct gets a distinct value with no zero byte, so a field the
 * Rust side misplaces or truncates shows up in the bytes. Output, one record a line:
 *
 *   field  <struct> <field> <offset> <size> <value>   value in hex, as the field holds it
 *   struct <struct> <sizeof> <alignof> <bytes>        bytes in hex, lowest address first
 *   const  <C expression> <value>                     value in decimal
 */

/* The tools view: every sub-op and struct visible, latest interface version. Guest
 * handles become `struct { T *p; }`, which is the same 8 bytes as a bare pointer. */
#define __XEN_TOOLS__ 1

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <xen/xen.h>
#include <xen/memory.h>

/* Xen-internal (xen/arch/x86/include/asm/e820.h), not in the public headers; the
 * memory_map buffer holds these. */
struct e820entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
} __attribute__((packed));

static unsigned counter;

/* Byte i of the n-th value is n + 0x11 * (i + 1): never zero for n < 0x77, different in
 * every byte position, and different from every other field's byte at that position. */
static uint64_t next_value(void)
{
    unsigned n = ++counter;
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++)
        v |= (uint64_t)((n + 0x11u * (i + 1)) & 0xffu) << (8 * i);
    return v;
}

static void report(const char *s, const char *f, size_t off, size_t size, uint64_t value)
{
    printf("field %s %s %zu %zu 0x%llx\n", s, f, off, size, (unsigned long long)value);
}

static void dump(const char *s, const void *p, size_t size, size_t align)
{
    const unsigned char *b = p;
    printf("struct %s %zu %zu ", s, size, align);
    for (size_t i = 0; i < size; i++)
        printf("%02x", b[i]);
    printf("\n");
}

/* A scalar member `m` of `var` (of type struct T), reported under the C name `name`. */
#define SCALAR_AS(T, var, name, m)                                                      \
    do {                                                                               \
        var.m = (__typeof__(var.m))next_value();                                       \
        report(#T, name, offsetof(struct T, m), sizeof(var.m), (uint64_t)var.m);       \
    } while (0)
#define SCALAR(T, var, m) SCALAR_AS(T, var, #m, m)

/* A guest handle member: its pointer. */
#define HANDLE(T, var, m)                                                               \
    do {                                                                               \
        var.m.p = (void *)(uintptr_t)next_value();                                     \
        report(#T, #m, offsetof(struct T, m), sizeof(var.m),                           \
               (uint64_t)(uintptr_t)var.m.p);                                          \
    } while (0)

/* Zeroed first so the compiler's padding is 0 in the dump, as the Rust pads are. */
#define BEGIN(T, var)                                                                   \
    struct T var;                                                                      \
    memset(&var, 0, sizeof(var))
#define END(T, var) dump(#T, &var, sizeof(var), alignof(struct T))

#define CONST(x) printf("const %s %lld\n", #x, (long long)(x))

static void structs(void)
{
    {
        BEGIN(xen_memory_reservation, r);
        HANDLE(xen_memory_reservation, r, extent_start);
        SCALAR(xen_memory_reservation, r, nr_extents);
        SCALAR(xen_memory_reservation, r, extent_order);
        SCALAR(xen_memory_reservation, r, mem_flags);
        SCALAR(xen_memory_reservation, r, domid);
        END(xen_memory_reservation, r);
    }
    {
        BEGIN(xen_memory_exchange, x);
        HANDLE(xen_memory_exchange, x, in.extent_start);
        SCALAR(xen_memory_exchange, x, in.nr_extents);
        SCALAR(xen_memory_exchange, x, in.extent_order);
        SCALAR(xen_memory_exchange, x, in.mem_flags);
        SCALAR(xen_memory_exchange, x, in.domid);
        HANDLE(xen_memory_exchange, x, out.extent_start);
        SCALAR(xen_memory_exchange, x, out.nr_extents);
        SCALAR(xen_memory_exchange, x, out.extent_order);
        SCALAR(xen_memory_exchange, x, out.mem_flags);
        SCALAR(xen_memory_exchange, x, out.domid);
        SCALAR(xen_memory_exchange, x, nr_exchanged);
        END(xen_memory_exchange, x);
    }
    {
        BEGIN(xen_memory_domain, d);
        SCALAR(xen_memory_domain, d, domid);
        END(xen_memory_domain, d);
    }
    {
        BEGIN(xen_machphys_mfn_list, l);
        SCALAR(xen_machphys_mfn_list, l, max_extents);
        HANDLE(xen_machphys_mfn_list, l, extent_start);
        SCALAR(xen_machphys_mfn_list, l, nr_extents);
        END(xen_machphys_mfn_list, l);
    }
    {
        BEGIN(xen_machphys_mapping, m);
        SCALAR(xen_machphys_mapping, m, v_start);
        SCALAR(xen_machphys_mapping, m, v_end);
        SCALAR(xen_machphys_mapping, m, max_mfn);
        END(xen_machphys_mapping, m);
    }
    {
        BEGIN(xen_add_to_physmap, a);
        SCALAR(xen_add_to_physmap, a, domid);
        SCALAR(xen_add_to_physmap, a, size);
        SCALAR(xen_add_to_physmap, a, space);
        SCALAR(xen_add_to_physmap, a, idx);
        SCALAR(xen_add_to_physmap, a, gpfn);
        END(xen_add_to_physmap, a);
    }
    {
        BEGIN(xen_add_to_physmap_batch, b);
        SCALAR(xen_add_to_physmap_batch, b, domid);
        SCALAR(xen_add_to_physmap_batch, b, space);
        SCALAR(xen_add_to_physmap_batch, b, size);
        SCALAR_AS(xen_add_to_physmap_batch, b, "foreign_domid", u.foreign_domid);
        HANDLE(xen_add_to_physmap_batch, b, idxs);
        HANDLE(xen_add_to_physmap_batch, b, gpfns);
        HANDLE(xen_add_to_physmap_batch, b, errs);
        END(xen_add_to_physmap_batch, b);
    }
    {
        BEGIN(xen_remove_from_physmap, r);
        SCALAR(xen_remove_from_physmap, r, domid);
        SCALAR(xen_remove_from_physmap, r, gpfn);
        END(xen_remove_from_physmap, r);
    }
    {
        BEGIN(xen_memory_map, m);
        SCALAR(xen_memory_map, m, nr_entries);
        HANDLE(xen_memory_map, m, buffer);
        END(xen_memory_map, m);
    }
    {
        BEGIN(e820entry, e);
        SCALAR(e820entry, e, addr);
        SCALAR(e820entry, e, size);
        SCALAR(e820entry, e, type);
        END(e820entry, e);
    }
    {
        BEGIN(xen_foreign_memory_map, f);
        SCALAR(xen_foreign_memory_map, f, domid);
        SCALAR(xen_foreign_memory_map, f, map.nr_entries);
        HANDLE(xen_foreign_memory_map, f, map.buffer);
        END(xen_foreign_memory_map, f);
    }
    {
        BEGIN(xen_mem_acquire_resource, a);
        SCALAR(xen_mem_acquire_resource, a, domid);
        SCALAR(xen_mem_acquire_resource, a, type);
        SCALAR(xen_mem_acquire_resource, a, id);
        SCALAR(xen_mem_acquire_resource, a, nr_frames);
        SCALAR(xen_mem_acquire_resource, a, pad);
        SCALAR(xen_mem_acquire_resource, a, frame);
        HANDLE(xen_mem_acquire_resource, a, frame_list);
        END(xen_mem_acquire_resource, a);
    }
    {
        BEGIN(xen_pod_target, t);
        SCALAR(xen_pod_target, t, target_pages);
        SCALAR(xen_pod_target, t, tot_pages);
        SCALAR(xen_pod_target, t, pod_cache_pages);
        SCALAR(xen_pod_target, t, pod_entries);
        SCALAR(xen_pod_target, t, domid);
        END(xen_pod_target, t);
    }
    {
        BEGIN(xen_reserved_device_memory, r);
        SCALAR(xen_reserved_device_memory, r, start_pfn);
        SCALAR(xen_reserved_device_memory, r, nr_pages);
        END(xen_reserved_device_memory, r);
    }
    {
        BEGIN(xen_reserved_device_memory_map, m);
        SCALAR(xen_reserved_device_memory_map, m, flags);
        SCALAR(xen_reserved_device_memory_map, m, nr_entries);
        HANDLE(xen_reserved_device_memory_map, m, buffer);
        SCALAR(xen_reserved_device_memory_map, m, dev.pci.seg);
        SCALAR(xen_reserved_device_memory_map, m, dev.pci.bus);
        SCALAR(xen_reserved_device_memory_map, m, dev.pci.devfn);
        END(xen_reserved_device_memory_map, m);
    }
    {
        /* The handles share a union with `uint64_t pad`; writing the pad fills all 8
         * bytes whatever the handle's width. */
        BEGIN(xen_vnuma_topology_info, v);
        SCALAR(xen_vnuma_topology_info, v, domid);
        SCALAR(xen_vnuma_topology_info, v, pad);
        SCALAR(xen_vnuma_topology_info, v, nr_vnodes);
        SCALAR(xen_vnuma_topology_info, v, nr_vcpus);
        SCALAR(xen_vnuma_topology_info, v, nr_vmemranges);
        SCALAR_AS(xen_vnuma_topology_info, v, "vdistance", vdistance.pad);
        SCALAR_AS(xen_vnuma_topology_info, v, "vcpu_to_vnode", vcpu_to_vnode.pad);
        SCALAR_AS(xen_vnuma_topology_info, v, "vmemrange", vmemrange.pad);
        END(xen_vnuma_topology_info, v);
    }
    {
        BEGIN(xen_vmemrange, r);
        SCALAR(xen_vmemrange, r, start);
        SCALAR(xen_vmemrange, r, end);
        SCALAR(xen_vmemrange, r, flags);
        SCALAR(xen_vmemrange, r, nid);
        END(xen_vmemrange, r);
    }
}

static void constants(void)
{
    CONST(XENMEM_increase_reservation);
    CONST(XENMEM_decrease_reservation);
    CONST(XENMEM_maximum_ram_page);
    CONST(XENMEM_current_reservation);
    CONST(XENMEM_maximum_reservation);
    CONST(XENMEM_machphys_mfn_list);
    CONST(XENMEM_populate_physmap);
    CONST(XENMEM_add_to_physmap);
    /* XENMEM_translate_gpfn_list (8) survives only as a comment in the header. */
    CONST(XENMEM_memory_map);
    CONST(XENMEM_machine_memory_map);
    CONST(XENMEM_exchange);
    CONST(XENMEM_machphys_mapping);
    CONST(XENMEM_set_memory_map);
    CONST(XENMEM_maximum_gpfn);
    CONST(XENMEM_remove_from_physmap);
    CONST(XENMEM_set_pod_target);
    CONST(XENMEM_get_pod_target);
    CONST(XENMEM_get_sharing_freed_pages);
    CONST(XENMEM_get_sharing_shared_pages);
    CONST(XENMEM_paging_op);
    CONST(XENMEM_access_op);
    CONST(XENMEM_sharing_op);
    CONST(XENMEM_add_to_physmap_batch);
    CONST(XENMEM_claim_pages);
    CONST(XENMEM_machphys_compat_mfn_list);
    CONST(XENMEM_get_vnumainfo);
    CONST(XENMEM_reserved_device_memory_map);
    CONST(XENMEM_acquire_resource);
#ifdef XENMEM_add_to_physmap_range
    CONST(XENMEM_add_to_physmap_range);
#endif

    CONST(XENMAPSPACE_shared_info);
    CONST(XENMAPSPACE_grant_table);
    CONST(XENMAPSPACE_gmfn);
    CONST(XENMAPSPACE_gmfn_range);
    CONST(XENMAPSPACE_gmfn_foreign);
    CONST(XENMAPSPACE_dev_mmio);
    CONST(XENMAPIDX_grant_table_status);

    CONST(XENMEMF_address_bits(32));
    CONST(XENMEMF_get_address_bits(0xdeadbeef));
    CONST(XENMEMF_node(0));
    CONST(XENMEMF_node(3));
    CONST(XENMEMF_node(254));
    CONST(XENMEMF_exact_node(1));
    CONST(XENMEMF_exact_node(3));
    CONST(XENMEMF_get_node(0));
    CONST(XENMEMF_get_node(XENMEMF_node(3)));
    CONST(XENMEMF_get_node(XENMEMF_exact_node(7) | XENMEMF_vnode | XENMEMF_address_bits(40)));
    CONST(XENMEMF_get_node(XENMEMF_populate_on_demand));
    CONST(XENMEMF_populate_on_demand);
    CONST(XENMEMF_exact_node_request);
    CONST(XENMEMF_vnode);

    CONST(XENMEM_resource_ioreq_server);
    CONST(XENMEM_resource_grant_table);
    CONST(XENMEM_resource_vmtrace_buf);
    CONST(XENMEM_resource_grant_table_id_shared);
    CONST(XENMEM_resource_grant_table_id_status);
    CONST(XENMEM_resource_ioreq_server_frame_bufioreq);
    CONST(XENMEM_resource_ioreq_server_frame_ioreq(0));
    CONST(XENMEM_resource_ioreq_server_frame_ioreq(5));
#ifdef XENMEM_rsrc_acq_caller_owned
    CONST(XENMEM_rsrc_acq_caller_owned);
#endif
    CONST(XENMEM_RDM_ALL);

    CONST(MACH2PHYS_VIRT_START);
    CONST(MACH2PHYS_VIRT_END);
    CONST(MACH2PHYS_NR_ENTRIES);

    CONST(DOMID_FIRST_RESERVED);
    CONST(DOMID_SELF);
    CONST(DOMID_IO);
    CONST(DOMID_XEN);
    CONST(DOMID_COW);
    CONST(DOMID_INVALID);
#ifdef DOMID_ANY
    CONST(DOMID_ANY);
#endif
    CONST(DOMID_IDLE);
    CONST(DOMID_MASK);

    CONST(__HYPERVISOR_memory_op);
    CONST(__HYPERVISOR_multicall);
    CONST(__HYPERVISOR_xen_version);
    CONST(__HYPERVISOR_sysctl);
    CONST(__HYPERVISOR_domctl);
    CONST(__HYPERVISOR_dm_op);

#ifdef E820MAX
    CONST(E820MAX);
#endif
#ifdef MEMOP_EXTENT_SHIFT
    CONST(MEMOP_EXTENT_SHIFT);
#endif
    CONST(sizeof(xen_pfn_t));
    CONST(sizeof(xen_ulong_t));
    CONST(sizeof(domid_t));
}

int main(void)
{
    structs();
    constants();
    return 0;
}
