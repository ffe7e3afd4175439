/*
 * Fills every struct of the Dynamic Memory protocol header (QEMU's
 * include/hw/hyperv/dynmem-proto.h, from Linux drivers/hv/hv_balloon.c) with distinct
 * field values and prints their bytes, sizes and offsets, so that the Rust side can check
 * that it encodes the same values to the same bytes and decodes them back.
 *
 * The test compiles this file with -include of that header (extracted from the file
 * c_conformance_dm.rs finds through BALLAST_SEEDS or ../shared/seeds), and
 * QEMU_PACKED defined as __attribute__((packed)).
 *
 * Output lines:
 *   struct <name> <sizeof> <hex bytes>
 *   off <struct>.<field> <offsetof>
 *   const <NAME> <value>
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void dump(const char *name, const void *p, size_t len)
{
    const unsigned char *b = p;
    printf("struct %s %zu ", name, len);
    for (size_t i = 0; i < len; i++)
        printf("%02x", b[i]);
    printf("\n");
}

#define DUMP(name, v) dump(name, &(v), sizeof(v))
#define OFF(s, f) printf("off %s.%s %zu\n", #s, #f, offsetof(struct s, f))
#define CONST(n) printf("const %s %llu\n", #n, (unsigned long long)(n))

static void hdr(struct dm_header *h, uint16_t type, uint16_t size, uint32_t trans_id)
{
    h->type = type;
    h->size = size;
    h->trans_id = trans_id;
}

int main(void)
{
    /* Constants. */
    CONST(DM_ERROR); CONST(DM_VERSION_REQUEST); CONST(DM_VERSION_RESPONSE);
    CONST(DM_CAPABILITIES_REPORT); CONST(DM_CAPABILITIES_RESPONSE); CONST(DM_STATUS_REPORT);
    CONST(DM_BALLOON_REQUEST); CONST(DM_BALLOON_RESPONSE); CONST(DM_UNBALLOON_REQUEST);
    CONST(DM_UNBALLOON_RESPONSE); CONST(DM_MEM_HOT_ADD_REQUEST); CONST(DM_MEM_HOT_ADD_RESPONSE);
    CONST(DM_VERSION_03_MAX); CONST(DM_INFO_MESSAGE); CONST(DM_VERSION_1_MAX);
    CONST(DM_MEM_HOT_REMOVE_REQUEST); CONST(DM_MEM_HOT_REMOVE_RESPONSE);
    CONST(DYNMEM_PROTOCOL_VERSION_1); CONST(DYNMEM_PROTOCOL_VERSION_2);
    CONST(DYNMEM_PROTOCOL_VERSION_3); CONST(DYNMEM_PROTOCOL_VERSION_CURRENT);
    CONST(DM_REMOVE_QOS_LARGE); CONST(DM_REMOVE_QOS_LOCAL); CONST(DM_REMOVE_QOS_MASK);
    CONST(INFO_TYPE_MAX_PAGE_CNT);
    printf("const sizeof_enum_dm_info_type %zu\n", sizeof(enum dm_info_type));

    /* Offsets of every non-bitfield member. */
    OFF(dm_header, type); OFF(dm_header, size); OFF(dm_header, trans_id);
    OFF(dm_version_request, version);
    OFF(dm_capabilities, caps); OFF(dm_capabilities, min_page_cnt);
    OFF(dm_capabilities, max_page_number);
    OFF(dm_status, num_avail); OFF(dm_status, num_committed); OFF(dm_status, page_file_size);
    OFF(dm_status, zero_free); OFF(dm_status, page_file_writes); OFF(dm_status, io_diff);
    OFF(dm_balloon, num_pages); OFF(dm_balloon, reservedz);
    OFF(dm_balloon_response, reservedz); OFF(dm_balloon_response, range_array);
    OFF(dm_unballoon_request, range_count); OFF(dm_unballoon_request, range_array);
    OFF(dm_hot_add, range);
    OFF(dm_hot_add_response, page_count); OFF(dm_hot_add_response, result);
    OFF(dm_hot_remove, virtual_node); OFF(dm_hot_remove, page_count);
    OFF(dm_hot_remove, qos_flags); OFF(dm_hot_remove, reservedZ);
    OFF(dm_hot_remove_response, result); OFF(dm_hot_remove_response, range_count);
    OFF(dm_hot_remove_response, range_array);
    OFF(dm_info_header, data_size); OFF(dm_info_header, data);
    OFF(dm_info_msg, reserved); OFF(dm_info_msg, info_size); OFF(dm_info_msg, info);

    union dm_version ver;
    memset(&ver, 0, sizeof(ver));
    ver.minor_version = 0x0102;
    ver.major_version = 0x0304;
    DUMP("dm_version", ver);

    union dm_caps caps;
    memset(&caps, 0, sizeof(caps));
    caps.cap_bits.balloon = 1;
    caps.cap_bits.hot_add = 0;
    caps.cap_bits.hot_add_alignment = 0xB;
    caps.cap_bits.hot_remove = 1;
    caps.cap_bits.reservedz = 0x1234567;
    DUMP("dm_caps", caps);

    union dm_mem_page_range range;
    memset(&range, 0, sizeof(range));
    range.finfo.start_page = 0x123456789AULL;
    range.finfo.page_cnt = 0xABCDEF;
    DUMP("dm_mem_page_range", range);

    struct dm_header h;
    hdr(&h, 0x0102, 0x0304, 0x05060708);
    DUMP("dm_header", h);

    struct dm_version_request vreq;
    memset(&vreq, 0, sizeof(vreq));
    hdr(&vreq.hdr, DM_VERSION_REQUEST, sizeof(vreq), 0x11);
    vreq.version.version = DYNMEM_PROTOCOL_VERSION_3;
    vreq.is_last_attempt = 1;
    vreq.reservedz = 0x12345;
    DUMP("dm_version_request", vreq);

    struct dm_version_response vresp;
    memset(&vresp, 0, sizeof(vresp));
    hdr(&vresp.hdr, DM_VERSION_RESPONSE, sizeof(vresp), 0x12);
    vresp.is_accepted = 1;
    vresp.reservedz = 0x123456789ULL;
    DUMP("dm_version_response", vresp);

    struct dm_capabilities cap;
    memset(&cap, 0, sizeof(cap));
    hdr(&cap.hdr, DM_CAPABILITIES_REPORT, sizeof(cap), 0x13);
    cap.caps = caps;
    cap.min_page_cnt = 0x1111222233334444ULL;
    cap.max_page_number = 0x5555666677778888ULL;
    DUMP("dm_capabilities", cap);

    struct dm_capabilities_resp_msg cresp;
    memset(&cresp, 0, sizeof(cresp));
    hdr(&cresp.hdr, DM_CAPABILITIES_RESPONSE, sizeof(cresp), 0x14);
    cresp.is_accepted = 1;
    cresp.hot_remove = 0;
    cresp.suppress_pressure_reports = 1;
    cresp.reservedz = 0xABCDE;
    DUMP("dm_capabilities_resp_msg", cresp);

    struct dm_status st;
    memset(&st, 0, sizeof(st));
    hdr(&st.hdr, DM_STATUS_REPORT, sizeof(st), 0x15);
    st.num_avail = 0x0101010101010101ULL;
    st.num_committed = 0x0202020202020202ULL;
    st.page_file_size = 0x0303030303030303ULL;
    st.zero_free = 0x0404040404040404ULL;
    st.page_file_writes = 0x05050505;
    st.io_diff = 0x06060606;
    DUMP("dm_status", st);

    struct dm_balloon bal;
    memset(&bal, 0, sizeof(bal));
    hdr(&bal.hdr, DM_BALLOON_REQUEST, sizeof(bal), 0x16);
    bal.num_pages = 0x00089000;
    bal.reservedz = 0x77;
    DUMP("dm_balloon", bal);

    /* Variable-length messages get two (or one) ranges after the fixed part. */
    struct {
        struct dm_balloon_response m;
        union dm_mem_page_range r[2];
    } __attribute__((packed)) bresp;
    memset(&bresp, 0, sizeof(bresp));
    hdr(&bresp.m.hdr, DM_BALLOON_RESPONSE, sizeof(bresp), 0x17);
    bresp.m.reservedz = 0x99;
    bresp.m.more_pages = 1;
    bresp.m.range_count = 2;
    bresp.m.range_array[0].finfo.start_page = 0x123456789AULL;
    bresp.m.range_array[0].finfo.page_cnt = 0xABCDEF;
    bresp.m.range_array[1].finfo.start_page = 0x1;
    bresp.m.range_array[1].finfo.page_cnt = 0x200;
    DUMP("dm_balloon_response", bresp);

    struct {
        struct dm_unballoon_request m;
        union dm_mem_page_range r[2];
    } __attribute__((packed)) ureq;
    memset(&ureq, 0, sizeof(ureq));
    hdr(&ureq.m.hdr, DM_UNBALLOON_REQUEST, sizeof(ureq), 0x18);
    ureq.m.more_pages = 0;
    ureq.m.reservedz = 0x3;
    ureq.m.range_count = 2;
    ureq.m.range_array[0].finfo.start_page = 0xFEDCBA9876ULL;
    ureq.m.range_array[0].finfo.page_cnt = 0x123456;
    ureq.m.range_array[1].finfo.start_page = 0x2;
    ureq.m.range_array[1].finfo.page_cnt = 0x1;
    DUMP("dm_unballoon_request", ureq);

    struct dm_unballoon_response uresp;
    hdr(&uresp.hdr, DM_UNBALLOON_RESPONSE, sizeof(uresp), 0x19);
    DUMP("dm_unballoon_response", uresp);

    struct dm_hot_add ha;
    memset(&ha, 0, sizeof(ha));
    hdr(&ha.hdr, DM_MEM_HOT_ADD_REQUEST, sizeof(ha), 0x1A);
    ha.range.finfo.start_page = 0x100000;
    ha.range.finfo.page_cnt = 0x8000;
    DUMP("dm_hot_add", ha);

    struct dm_hot_add_response har;
    memset(&har, 0, sizeof(har));
    hdr(&har.hdr, DM_MEM_HOT_ADD_RESPONSE, sizeof(har), 0x1B);
    har.page_count = 0x8000;
    har.result = 1;
    DUMP("dm_hot_add_response", har);

    struct dm_hot_remove hr;
    memset(&hr, 0, sizeof(hr));
    hdr(&hr.hdr, DM_MEM_HOT_REMOVE_REQUEST, sizeof(hr), 0x1C);
    hr.virtual_node = 2;
    hr.page_count = 0x40000;
    hr.qos_flags = DM_REMOVE_QOS_MASK;
    hr.reservedZ = 0x55;
    DUMP("dm_hot_remove", hr);

    struct {
        struct dm_hot_remove_response m;
        union dm_mem_page_range r[1];
    } __attribute__((packed)) hrr;
    memset(&hrr, 0, sizeof(hrr));
    hdr(&hrr.m.hdr, DM_MEM_HOT_REMOVE_RESPONSE, sizeof(hrr), 0x1D);
    hrr.m.result = 7;
    hrr.m.range_count = 1;
    hrr.m.more_pages = 1;
    hrr.m.reservedz = 0x42;
    hrr.m.range_array[0].finfo.start_page = 0x300000;
    hrr.m.range_array[0].finfo.page_cnt = 0x200;
    DUMP("dm_hot_remove_response", hrr);

    struct dm_info_header ih;
    memset(&ih, 0, sizeof(ih));
    ih.type = INFO_TYPE_MAX_PAGE_CNT;
    ih.data_size = 0x10203;
    DUMP("dm_info_header", ih);

    struct {
        struct dm_info_msg m;
        struct dm_info_header ih;
        uint64_t max_page_count;
    } __attribute__((packed)) info;
    memset(&info, 0, sizeof(info));
    hdr(&info.m.hdr, DM_INFO_MESSAGE, sizeof(info), 0x1E);
    info.m.reserved = 0x66;
    info.m.info_size = sizeof(info.ih) + sizeof(info.max_page_count);
    info.ih.type = INFO_TYPE_MAX_PAGE_CNT;
    info.ih.data_size = sizeof(info.max_page_count);
    info.max_page_count = 524288;
    DUMP("dm_info_msg", info);

    return 0;
}
