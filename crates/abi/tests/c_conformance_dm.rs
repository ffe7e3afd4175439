//! The Dynamic Memory wire format against the C compiler.
//!
//! Compiles the Dynamic Memory protocol header (QEMU's `include/hw/hyperv/dynmem-proto.h`,
//! taken from Linux `drivers/hv/hv_balloon.c`; `QEMU_PACKED` = `__attribute__((packed))`)
//! with `tests/c/dm_structs.c`, which fills every struct with distinct field values and
//! prints their bytes. Each struct must encode from the same values to the same bytes in
//! Rust, and decode from the C bytes to the same values.
//!
//! The header is not part of the repository: it is read from the project's specification
//! file [`SEED`], in the directory `$BALLAST_SEEDS` names or else in `shared/seeds/`
//! beside the checkout (`../shared/seeds` of the repository, as CI has it). The C compiler
//! is `$CC` or `cc`. `scripts/test` installs the compiler; a missing piece is a failure
//! that names what was looked for and where, never a skip.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use ballast_abi::dm::wire::*;
use ballast_abi::dm::*;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The specification file (outside the repository) that carries the protocol header.
const SEED: &str = "003_f16d58694cab26a9.txt";

/// The specification file holding the header, or a failure naming `BALLAST_SEEDS` and
/// every path tried.
fn seed_path() -> PathBuf {
    let missing = |tried: &[PathBuf], how: &str| -> ! {
        let tried: Vec<String> = tried.iter().map(|p| format!("  {}", p.display())).collect();
        panic!(
            "the Dynamic Memory protocol header ({SEED}, QEMU's \
             include/hw/hyperv/dynmem-proto.h) is missing: {how}; tried:\n{}\n\
             set BALLAST_SEEDS to the directory that holds {SEED}",
            tried.join("\n")
        )
    };
    if let Some(dir) = std::env::var_os("BALLAST_SEEDS") {
        let path = PathBuf::from(dir).join(SEED);
        if path.is_file() {
            return path;
        }
        missing(&[path], "not in the directory BALLAST_SEEDS names");
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tried: Vec<PathBuf> = manifest
        .ancestors()
        .map(|dir| dir.join("shared/seeds").join(SEED))
        .collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(path) => path.clone(),
        None => missing(
            &tried,
            "BALLAST_SEEDS is not set and no shared/seeds above the checkout has it",
        ),
    }
}

/// The C text of the header: the lines of [`SEED`] from the include guard to its `#endif`.
fn seed_header() -> String {
    let path = seed_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = text
        .find("#ifndef HW_HYPERV_DYNMEM_PROTO_H")
        .unwrap_or_else(|| {
            panic!(
                "no include guard HW_HYPERV_DYNMEM_PROTO_H in {}",
                path.display()
            )
        });
    let end = text
        .rfind("#endif")
        .unwrap_or_else(|| panic!("no closing #endif in {}", path.display()))
        + "#endif".len();
    format!(
        "#include <stdint.h>\n#define QEMU_PACKED __attribute__((packed))\n{}\n",
        &text[start..end]
    )
}

struct COutput {
    structs: HashMap<String, Vec<u8>>,
    offsets: HashMap<String, usize>,
    consts: HashMap<String, u64>,
}

fn run_c() -> COutput {
    let dir = std::env::temp_dir().join(format!("ballast-dm-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = dir.join("dynmem_proto.h");
    std::fs::write(&header, seed_header()).unwrap();
    let exe = dir.join("dm_structs");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/dm_structs.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-include"])
        .arg(&header)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}` (run scripts/test): {e}"));
    assert!(
        out.status.success(),
        "compiling the protocol header failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    std::fs::remove_dir_all(&dir).ok();
    let mut c = COutput {
        structs: HashMap::new(),
        offsets: HashMap::new(),
        consts: HashMap::new(),
    };
    for line in String::from_utf8(run.stdout).unwrap().lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["struct", name, size, hex] => {
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                assert_eq!(bytes.len(), size.parse::<usize>().unwrap());
                c.structs.insert(name.into(), bytes);
            }
            ["off", name, off] => {
                c.offsets.insert(name.into(), off.parse().unwrap());
            }
            ["const", name, v] => {
                c.consts.insert(name.into(), v.parse().unwrap());
            }
            _ => panic!("unexpected line from the C program: {line}"),
        }
    }
    c
}

fn hdr(ty: MessageType, size: usize, trans_id: u32) -> DmHeader {
    DmHeader {
        ty: U16::new(ty.0),
        size: U16::new(size as u16),
        trans_id: U32::new(trans_id),
    }
}

fn range(start: u64, cnt: u32) -> PageRange {
    PageRange::try_new(start, cnt).unwrap()
}

/// Asserts Rust's bytes of `value` equal C's, and that C's bytes decode to `value`.
#[track_caller]
fn same<T: IntoBytes + FromBytes + zerocopy::Immutable + PartialEq + std::fmt::Debug>(
    c: &COutput,
    name: &str,
    value: &T,
) {
    let cbytes = c
        .structs
        .get(name)
        .unwrap_or_else(|| panic!("C printed no {name}"));
    assert_eq!(
        value.as_bytes(),
        &cbytes[..],
        "{name}: Rust encodes differently from C"
    );
    let decoded = T::read_from_bytes(cbytes).unwrap();
    assert_eq!(&decoded, value, "{name}: C bytes decode to other values");
}

/// Checks a whole message: the typed parse of C's bytes, and the typed encode.
#[track_caller]
fn same_message(c: &COutput, name: &str, expected: Message<'_>) {
    let cbytes = &c.structs[name];
    assert_eq!(
        Message::parse(cbytes).unwrap(),
        expected,
        "{name}: typed decode"
    );
    // The typed form drops reserved bits, so compare the re-encoding with them cleared.
    let ours = expected.to_bytes().unwrap();
    assert_eq!(ours.len(), cbytes.len(), "{name}: length");
    let reparsed = Message::parse(&ours).unwrap();
    assert_eq!(reparsed, expected, "{name}: typed encode");
}

#[test]
fn dm_wire_format_matches_the_seed_header() {
    let c = run_c();

    // Constants.
    for t in 0..=14u16 {
        let name = MessageType(t).name().unwrap();
        assert_eq!(c.consts[name], t as u64, "{name}");
    }
    assert_eq!(
        c.consts["DM_VERSION_03_MAX"],
        MessageType::VERSION_03_MAX.0 as u64
    );
    assert_eq!(
        c.consts["DM_VERSION_1_MAX"],
        MessageType::VERSION_1_MAX.0 as u64
    );
    assert_eq!(
        c.consts["DYNMEM_PROTOCOL_VERSION_1"],
        Version::V0_3.0 as u64
    );
    assert_eq!(
        c.consts["DYNMEM_PROTOCOL_VERSION_2"],
        Version::V1_0.0 as u64
    );
    assert_eq!(
        c.consts["DYNMEM_PROTOCOL_VERSION_3"],
        Version::V2_0.0 as u64
    );
    assert_eq!(
        c.consts["DYNMEM_PROTOCOL_VERSION_CURRENT"],
        Version::V2_0.0 as u64
    );
    assert_eq!(c.consts["DM_REMOVE_QOS_LARGE"], DM_REMOVE_QOS_LARGE as u64);
    assert_eq!(c.consts["DM_REMOVE_QOS_LOCAL"], DM_REMOVE_QOS_LOCAL as u64);
    assert_eq!(c.consts["DM_REMOVE_QOS_MASK"], DM_REMOVE_QOS_MASK as u64);
    assert_eq!(
        c.consts["INFO_TYPE_MAX_PAGE_CNT"],
        InfoType::MAX_PAGE_CNT.0 as u64
    );
    assert_eq!(c.consts["sizeof_enum_dm_info_type"], 4);

    // Offsets of every named (non-bitfield) member.
    macro_rules! off {
        ($cname:literal, $t:ty, $f:ident) => {
            assert_eq!(c.offsets[$cname], core::mem::offset_of!($t, $f), $cname);
        };
    }
    off!("dm_header.type", DmHeader, ty);
    off!("dm_header.size", DmHeader, size);
    off!("dm_header.trans_id", DmHeader, trans_id);
    off!("dm_version_request.version", DmVersionRequest, version);
    off!("dm_capabilities.caps", DmCapabilities, caps);
    off!("dm_capabilities.min_page_cnt", DmCapabilities, min_page_cnt);
    off!(
        "dm_capabilities.max_page_number",
        DmCapabilities,
        max_page_number
    );
    off!("dm_status.num_avail", DmStatus, num_avail);
    off!("dm_status.num_committed", DmStatus, num_committed);
    off!("dm_status.page_file_size", DmStatus, page_file_size);
    off!("dm_status.zero_free", DmStatus, zero_free);
    off!("dm_status.page_file_writes", DmStatus, page_file_writes);
    off!("dm_status.io_diff", DmStatus, io_diff);
    off!("dm_balloon.num_pages", DmBalloon, num_pages);
    off!("dm_balloon.reservedz", DmBalloon, reservedz);
    off!(
        "dm_balloon_response.reservedz",
        DmBalloonResponse,
        reservedz
    );
    off!(
        "dm_unballoon_request.range_count",
        DmUnballoonRequest,
        range_count
    );
    off!("dm_hot_add.range", DmHotAdd, range);
    off!(
        "dm_hot_add_response.page_count",
        DmHotAddResponse,
        page_count
    );
    off!("dm_hot_add_response.result", DmHotAddResponse, result);
    off!("dm_hot_remove.virtual_node", DmHotRemove, virtual_node);
    off!("dm_hot_remove.page_count", DmHotRemove, page_count);
    off!("dm_hot_remove.qos_flags", DmHotRemove, qos_flags);
    off!("dm_hot_remove.reservedZ", DmHotRemove, reserved_z);
    off!("dm_hot_remove_response.result", DmHotRemoveResponse, result);
    off!(
        "dm_hot_remove_response.range_count",
        DmHotRemoveResponse,
        range_count
    );
    off!("dm_info_header.data_size", DmInfoHeader, data_size);
    off!("dm_info_msg.reserved", DmInfoMsg, reserved);
    off!("dm_info_msg.info_size", DmInfoMsg, info_size);
    // The flexible arrays start right after each fixed part.
    assert_eq!(
        c.offsets["dm_balloon_response.range_array"],
        size_of::<DmBalloonResponse>()
    );
    assert_eq!(
        c.offsets["dm_unballoon_request.range_array"],
        size_of::<DmUnballoonRequest>()
    );
    assert_eq!(
        c.offsets["dm_hot_remove_response.range_array"],
        size_of::<DmHotRemoveResponse>()
    );
    assert_eq!(c.offsets["dm_info_header.data"], size_of::<DmInfoHeader>());
    assert_eq!(c.offsets["dm_info_msg.info"], size_of::<DmInfoMsg>());

    // Unions and the header.
    same(&c, "dm_version", &Version::new(0x0304, 0x0102));
    let caps = Caps::new()
        .with_balloon(true)
        .with_hot_add_alignment(0xB)
        .with_hot_remove(true)
        .with_reservedz(0x1234567);
    same(&c, "dm_caps", &caps);
    same(&c, "dm_mem_page_range", &range(0x12_3456_789A, 0xAB_CDEF));
    same(
        &c,
        "dm_header",
        &DmHeader {
            ty: U16::new(0x0102),
            size: U16::new(0x0304),
            trans_id: U32::new(0x0506_0708),
        },
    );

    // Fixed-size messages, wire form with reserved bits set, then the typed form.
    same(
        &c,
        "dm_version_request",
        &DmVersionRequest {
            hdr: hdr(MessageType::VERSION_REQUEST, 16, 0x11),
            version: U32::new(Version::V2_0.0),
            flags: VersionRequestFlags::new()
                .with_is_last_attempt(true)
                .with_reservedz(0x12345),
        },
    );
    same_message(
        &c,
        "dm_version_request",
        Message::new(
            0x11,
            Body::VersionRequest {
                version: Version::V2_0,
                is_last_attempt: true,
            },
        ),
    );

    same(
        &c,
        "dm_version_response",
        &DmVersionResponse {
            hdr: hdr(MessageType::VERSION_RESPONSE, 16, 0x12),
            flags: AcceptFlags::new()
                .with_is_accepted(true)
                .with_reservedz(0x1_2345_6789),
        },
    );
    same_message(
        &c,
        "dm_version_response",
        Message::new(0x12, Body::VersionResponse { is_accepted: true }),
    );

    same(
        &c,
        "dm_capabilities",
        &DmCapabilities {
            hdr: hdr(MessageType::CAPABILITIES_REPORT, 32, 0x13),
            caps,
            min_page_cnt: U64::new(0x1111_2222_3333_4444),
            max_page_number: U64::new(0x5555_6666_7777_8888),
        },
    );
    same_message(
        &c,
        "dm_capabilities",
        Message::new(
            0x13,
            Body::CapabilitiesReport {
                caps,
                min_page_cnt: 0x1111_2222_3333_4444,
                max_page_number: 0x5555_6666_7777_8888,
            },
        ),
    );

    same(
        &c,
        "dm_capabilities_resp_msg",
        &DmCapabilitiesResp {
            hdr: hdr(MessageType::CAPABILITIES_RESPONSE, 16, 0x14),
            flags: CapsResponseFlags::new()
                .with_is_accepted(true)
                .with_suppress_pressure_reports(true)
                .with_reservedz(0xABCDE),
        },
    );
    same_message(
        &c,
        "dm_capabilities_resp_msg",
        Message::new(
            0x14,
            Body::CapabilitiesResponse {
                is_accepted: true,
                hot_remove: false,
                suppress_pressure_reports: true,
            },
        ),
    );

    same(
        &c,
        "dm_status",
        &DmStatus {
            hdr: hdr(MessageType::STATUS_REPORT, 48, 0x15),
            num_avail: U64::new(0x0101_0101_0101_0101),
            num_committed: U64::new(0x0202_0202_0202_0202),
            page_file_size: U64::new(0x0303_0303_0303_0303),
            zero_free: U64::new(0x0404_0404_0404_0404),
            page_file_writes: U32::new(0x0505_0505),
            io_diff: U32::new(0x0606_0606),
        },
    );
    same_message(
        &c,
        "dm_status",
        Message::new(
            0x15,
            Body::StatusReport(StatusReport {
                num_avail: 0x0101_0101_0101_0101,
                num_committed: 0x0202_0202_0202_0202,
                page_file_size: 0x0303_0303_0303_0303,
                zero_free: 0x0404_0404_0404_0404,
                page_file_writes: 0x0505_0505,
                io_diff: 0x0606_0606,
            }),
        ),
    );

    same(
        &c,
        "dm_balloon",
        &DmBalloon {
            hdr: hdr(MessageType::BALLOON_REQUEST, 16, 0x16),
            num_pages: U32::new(0x0008_9000),
            reservedz: U32::new(0x77),
        },
    );
    same_message(
        &c,
        "dm_balloon",
        Message::new(
            0x16,
            Body::BalloonRequest {
                num_pages: 0x0008_9000,
            },
        ),
    );

    // Variable-length messages: the fixed part, then the ranges.
    let b = &c.structs["dm_balloon_response"];
    let (fixed, rest) = DmBalloonResponse::read_from_prefix(b).unwrap();
    assert_eq!(
        fixed,
        DmBalloonResponse {
            hdr: hdr(MessageType::BALLOON_RESPONSE, 32, 0x17),
            reservedz: U32::new(0x99),
            flags: BalloonResponseFlags::new()
                .with_more_pages(true)
                .with_range_count(2),
        }
    );
    let ranges = [range(0x12_3456_789A, 0xAB_CDEF), range(1, 0x200)];
    assert_eq!(rest, ranges.as_bytes());
    same_message(
        &c,
        "dm_balloon_response",
        Message::new(
            0x17,
            Body::BalloonResponse {
                more_pages: true,
                ranges: &ranges,
            },
        ),
    );

    let b = &c.structs["dm_unballoon_request"];
    let (fixed, rest) = DmUnballoonRequest::read_from_prefix(b).unwrap();
    assert_eq!(
        fixed,
        DmUnballoonRequest {
            hdr: hdr(MessageType::UNBALLOON_REQUEST, 32, 0x18),
            flags: UnballoonRequestFlags::new().with_reservedz(3),
            range_count: U32::new(2),
        }
    );
    let ranges = [range(0xFE_DCBA_9876, 0x12_3456), range(2, 1)];
    assert_eq!(rest, ranges.as_bytes());
    same_message(
        &c,
        "dm_unballoon_request",
        Message::new(
            0x18,
            Body::UnballoonRequest {
                more_pages: false,
                ranges: &ranges,
            },
        ),
    );

    same(
        &c,
        "dm_unballoon_response",
        &DmUnballoonResponse {
            hdr: hdr(MessageType::UNBALLOON_RESPONSE, 8, 0x19),
        },
    );
    same_message(
        &c,
        "dm_unballoon_response",
        Message::new(0x19, Body::UnballoonResponse),
    );

    same(
        &c,
        "dm_hot_add",
        &DmHotAdd {
            hdr: hdr(MessageType::MEM_HOT_ADD_REQUEST, 16, 0x1A),
            range: range(0x10_0000, 0x8000),
        },
    );
    same_message(
        &c,
        "dm_hot_add",
        Message::new(
            0x1A,
            Body::HotAddRequest {
                range: range(0x10_0000, 0x8000),
                region: None,
            },
        ),
    );

    same(
        &c,
        "dm_hot_add_response",
        &DmHotAddResponse {
            hdr: hdr(MessageType::MEM_HOT_ADD_RESPONSE, 16, 0x1B),
            page_count: U32::new(0x8000),
            result: U32::new(1),
        },
    );
    same_message(
        &c,
        "dm_hot_add_response",
        Message::new(
            0x1B,
            Body::HotAddResponse {
                page_count: 0x8000,
                result: 1,
            },
        ),
    );

    same(
        &c,
        "dm_hot_remove",
        &DmHotRemove {
            hdr: hdr(MessageType::MEM_HOT_REMOVE_REQUEST, 24, 0x1C),
            virtual_node: U32::new(2),
            page_count: U32::new(0x4_0000),
            qos_flags: U32::new(DM_REMOVE_QOS_MASK),
            reserved_z: U32::new(0x55),
        },
    );
    same_message(
        &c,
        "dm_hot_remove",
        Message::new(
            0x1C,
            Body::HotRemoveRequest {
                virtual_node: 2,
                page_count: 0x4_0000,
                qos_flags: DM_REMOVE_QOS_MASK,
            },
        ),
    );

    let b = &c.structs["dm_hot_remove_response"];
    let (fixed, rest) = DmHotRemoveResponse::read_from_prefix(b).unwrap();
    assert_eq!(
        fixed,
        DmHotRemoveResponse {
            hdr: hdr(MessageType::MEM_HOT_REMOVE_RESPONSE, 32, 0x1D),
            result: U32::new(7),
            range_count: U32::new(1),
            flags: HotRemoveResponseFlags::new()
                .with_more_pages(true)
                .with_reservedz(0x42),
        }
    );
    let ranges = [range(0x30_0000, 0x200)];
    assert_eq!(rest, ranges.as_bytes());
    same_message(
        &c,
        "dm_hot_remove_response",
        Message::new(
            0x1D,
            Body::HotRemoveResponse {
                result: 7,
                more_pages: true,
                ranges: &ranges,
            },
        ),
    );

    same(
        &c,
        "dm_info_header",
        &DmInfoHeader {
            ty: U32::new(InfoType::MAX_PAGE_CNT.0),
            data_size: U32::new(0x1_0203),
        },
    );
    let b = &c.structs["dm_info_msg"];
    let (fixed, rest) = DmInfoMsg::read_from_prefix(b).unwrap();
    assert_eq!(
        fixed,
        DmInfoMsg {
            hdr: hdr(MessageType::INFO_MESSAGE, 32, 0x1E),
            reserved: U32::new(0x66),
            info_size: U32::new(16),
        }
    );
    assert_eq!(rest.len(), 16);
    let data = 524_288u64.to_le_bytes();
    let info = Message::parse(b).unwrap();
    assert_eq!(info.body.max_page_count(), Some(524_288));
    same_message(
        &c,
        "dm_info_msg",
        Message::new(
            0x1E,
            Body::Info {
                info_type: InfoType::MAX_PAGE_CNT,
                data: &data,
            },
        ),
    );
}
