use super::*;
use proptest::prelude::*;
use std::vec::Vec;

/// Parses hex bytes of a DM payload (`xx` stands for "any byte": 0 here).
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| {
            if b == "xx" {
                0
            } else {
                u8::from_str_radix(b, 16).unwrap()
            }
        })
        .collect()
}

fn range(start: u64, cnt: u32) -> PageRange {
    PageRange::try_new(start, cnt).unwrap()
}

/// Parses `bytes`, checks the expected message, and checks that writing it gives the same
/// bytes back.
#[track_caller]
fn golden(bytes: &[u8], expected: Message<'_>) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m, expected);
    assert_eq!(m.to_bytes().unwrap(), bytes);
}

#[test]
fn page_range_encoding() {
    // `union dm_mem_page_range`: start_page bits 39:0, page_cnt bits 63:40; PFN 0x12345,
    // 512 pages.
    let r = range(0x12345, 512);
    assert_eq!(r.to_u64(), 0x0002_0000_0001_2345);
    assert_eq!(r.as_bytes(), &hex("45 23 01 00 00 00 02 00")[..]);
    assert_eq!(r.end_page(), 0x12345 + 512);
    assert_eq!(PageRange::try_new(1 << 40, 1), None);
    assert_eq!(PageRange::try_new(0, 1 << 24), None);
    let max = range(PageRange::MAX_START_PAGE, PageRange::MAX_PAGE_CNT);
    assert_eq!(max.to_u64(), u64::MAX);
}

#[test]
fn versions() {
    assert_eq!(Version::V0_3.0, 0x0000_0003);
    assert_eq!(Version::V1_0.0, 0x0001_0000);
    assert_eq!(Version::V2_0.0, 0x0002_0000);
    assert_eq!(Version::V2_0.as_bytes(), &[0, 0, 2, 0]);
    assert_eq!((Version::V0_3.major(), Version::V0_3.minor()), (0, 3));
    assert_eq!(std::format!("{}", Version::V2_0), "2.0");
    assert!(Version::V0_3 < Version::V1_0 && Version::V1_0 < Version::V2_0);
}

#[test]
fn caps_bits() {
    let c = Caps::from_u64(0x1f);
    assert!(c.balloon() && c.hot_add() && !c.hot_remove());
    assert_eq!(c.hot_add_alignment(), 7);
    assert_eq!(c.hot_add_alignment_pages(), 32768); // 128 MiB
    assert_eq!(Caps::new().with_hot_remove(true).to_u64(), 0x40);
    assert_eq!(
        Caps::new()
            .with_hot_add_alignment(11)
            .hot_add_alignment_pages(),
        524_288
    );
}

#[test]
fn message_type_table() {
    for t in 0..=14u16 {
        let ty = MessageType(t);
        assert!(ty.name().is_some() && ty.fixed_size().is_some(), "{t}");
    }
    assert_eq!(MessageType(15).name(), None);
    assert_eq!(
        MessageType::VERSION_03_MAX,
        MessageType::MEM_HOT_ADD_RESPONSE
    );
    assert_eq!(MessageType::VERSION_1_MAX, MessageType::INFO_MESSAGE);
    assert_eq!(MAX_RANGES_PER_MESSAGE, 510);
    assert_eq!(MAX_HOT_REMOVE_RANGES_PER_MESSAGE, 509);
}

#[test]
fn t1_version_request_and_accept() {
    golden(
        &hex("01 00 10 00 01 00 00 00 00 00 02 00 00 00 00 00"),
        Message::new(
            1,
            Body::VersionRequest {
                version: Version::V2_0,
                is_last_attempt: false,
            },
        ),
    );
    golden(
        &hex("02 00 10 00 01 00 00 00 01 00 00 00 00 00 00 00"),
        Message::new(1, Body::VersionResponse { is_accepted: true }),
    );
}

#[test]
fn t2_version_reject() {
    golden(
        &hex("01 00 10 00 01 00 00 00 00 00 03 00 00 00 00 00"),
        Message::new(
            1,
            Body::VersionRequest {
                version: Version(0x30000),
                is_last_attempt: false,
            },
        ),
    );
    golden(
        &hex("02 00 10 00 01 00 00 00 00 00 00 00 00 00 00 00"),
        Message::new(1, Body::VersionResponse { is_accepted: false }),
    );
}

#[test]
fn t2_follow_up_and_linux_fallback_requests() {
    golden(
        &hex("01 00 10 00 02 00 00 00 00 00 02 00 00 00 00 00"),
        Message::new(
            2,
            Body::VersionRequest {
                version: Version::V2_0,
                is_last_attempt: false,
            },
        ),
    );
    // Linux's `balloon_connect_vsp` falls back to 1.0 next.
    golden(
        &hex("01 00 10 00 02 00 00 00 00 00 01 00 00 00 00 00"),
        Message::new(
            2,
            Body::VersionRequest {
                version: Version::V1_0,
                is_last_attempt: false,
            },
        ),
    );
    // The version word's byte forms (`DYNMEM_MAKE_VERSION`: major << 16 | minor).
    assert_eq!(Version::V0_3.as_bytes(), &[3, 0, 0, 0]);
    assert_eq!(Version::V1_0.as_bytes(), &[0, 0, 1, 0]);
}

#[test]
fn t3_oldest_version_last_attempt() {
    golden(
        &hex("01 00 10 00 03 00 00 00 03 00 00 00 01 00 00 00"),
        Message::new(
            3,
            Body::VersionRequest {
                version: Version::V0_3,
                is_last_attempt: true,
            },
        ),
    );
}

#[test]
fn t5_capabilities() {
    golden(
        &hex(
            "03 00 20 00 02 00 00 00 1f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
             ff ff ff ff ff ff ff ff",
        ),
        Message::new(
            2,
            Body::CapabilitiesReport {
                caps: Caps::new()
                    .with_balloon(true)
                    .with_hot_add(true)
                    .with_hot_add_alignment(7),
                min_page_cnt: 0,
                max_page_number: u64::MAX,
            },
        ),
    );
    let resp = |b: u8| {
        let mut v = hex("04 00 10 00 02 00 00 00 00 00 00 00 00 00 00 00");
        v[8] = b;
        v
    };
    golden(
        &resp(0x07),
        Message::new(
            2,
            Body::CapabilitiesResponse {
                is_accepted: true,
                hot_remove: true,
                suppress_pressure_reports: true,
            },
        ),
    );
    golden(
        &resp(0x03),
        Message::new(
            2,
            Body::CapabilitiesResponse {
                is_accepted: true,
                hot_remove: true,
                suppress_pressure_reports: false,
            },
        ),
    );
}

#[test]
fn t7_short_messages() {
    assert_eq!(
        Message::parse(&hex("01 00 08 00 01 00 00 00")),
        Err(DecodeError::TooShort {
            ty: MessageType::VERSION_REQUEST,
            size: 8,
            needed: 16
        })
    );
    assert_eq!(
        Message::parse(&hex("01 00 10 00 01 00")),
        Err(DecodeError::ShortHeader { len: 6 })
    );
    // hdr.size beyond the bytes received.
    assert_eq!(
        Message::parse(&hex("01 00 10 00 01 00 00 00 00 00")),
        Err(DecodeError::SizeBeyondBuffer {
            ty: MessageType::VERSION_REQUEST,
            size: 16,
            available: 10
        })
    );
}

#[test]
fn t8_balloon_request_and_chunked_response() {
    golden(
        &hex("06 00 10 00 00 00 00 00 00 00 04 00 00 00 00 00"),
        Message::new(0, Body::BalloonRequest { num_pages: 262_144 }),
    );
    let r1 = [range(0x12345, 512)];
    golden(
        &hex("07 00 18 00 05 00 00 00 00 00 00 00 03 00 00 00 45 23 01 00 00 00 02 00"),
        Message::new(
            5,
            Body::BalloonResponse {
                more_pages: true,
                ranges: &r1,
            },
        ),
    );
    let r2 = [range(0x12745, 512)];
    golden(
        &hex("07 00 18 00 06 00 00 00 00 00 00 00 02 00 00 00 45 27 01 00 00 00 02 00"),
        Message::new(
            6,
            Body::BalloonResponse {
                more_pages: false,
                ranges: &r2,
            },
        ),
    );
}

#[test]
fn t9_t11_empty_balloon_responses() {
    golden(
        &hex("07 00 10 00 06 00 00 00 00 00 00 00 00 00 00 00"),
        Message::new(
            6,
            Body::BalloonResponse {
                more_pages: false,
                ranges: &[],
            },
        ),
    );
    golden(
        &hex("07 00 10 00 08 00 00 00 00 00 00 00 01 00 00 00"),
        Message::new(
            8,
            Body::BalloonResponse {
                more_pages: true,
                ranges: &[],
            },
        ),
    );
}

#[test]
fn t10_lying_range_count() {
    assert_eq!(
        Message::parse(&hex(
            "07 00 18 00 07 00 00 00 00 00 00 00 04 00 00 00 45 23 01 00 00 00 02 00"
        )),
        Err(DecodeError::RangeCount {
            ty: MessageType::BALLOON_RESPONSE,
            range_count: 2,
            size: 24,
            needed: 32
        })
    );
    // The largest count the 31-bit field holds cannot overflow the size arithmetic.
    let mut v = hex("07 00 10 00 07 00 00 00 00 00 00 00 fe ff ff ff");
    assert!(matches!(
        Message::parse(&v),
        Err(DecodeError::RangeCount {
            range_count: 0x7FFF_FFFF,
            ..
        })
    ));
    // The unballoon request's count is a full u32.
    v = hex("08 00 10 00 00 00 00 00 00 00 00 00 ff ff ff ff");
    assert!(matches!(
        Message::parse(&v),
        Err(DecodeError::RangeCount {
            range_count: u32::MAX,
            ..
        })
    ));
}

#[test]
fn t14_unballoon_chunks() {
    let r1 = [range(0x12345, 512)];
    golden(
        &hex("08 00 18 00 00 00 00 00 01 00 00 00 01 00 00 00 45 23 01 00 00 00 02 00"),
        Message::new(
            0,
            Body::UnballoonRequest {
                more_pages: true,
                ranges: &r1,
            },
        ),
    );
    let r2 = [range(0x12745, 512)];
    golden(
        &hex("08 00 18 00 00 00 00 00 00 00 00 00 01 00 00 00 45 27 01 00 00 00 02 00"),
        Message::new(
            0,
            Body::UnballoonRequest {
                more_pages: false,
                ranges: &r2,
            },
        ),
    );
    golden(
        &hex("09 00 08 00 07 00 00 00"),
        Message::new(7, Body::UnballoonResponse),
    );
}

#[test]
fn t16_full_page_unballoon() {
    let ranges: Vec<PageRange> = (0..510).map(|i| range(0x100000 + 512 * i, 512)).collect();
    let m = Message::new(
        9,
        Body::UnballoonRequest {
            more_pages: false,
            ranges: &ranges,
        },
    );
    let bytes = m.to_bytes().unwrap();
    assert_eq!(bytes.len(), 4096);
    assert_eq!(&bytes[..4], &hex("08 00 00 10")[..]);
    assert_eq!(Message::parse(&bytes).unwrap(), m);
    // The same message cut to 4080 bytes (the 2022 Linux regression) is refused whole.
    assert!(matches!(
        Message::parse(&bytes[..4080]),
        Err(DecodeError::SizeBeyondBuffer { .. })
    ));
}

#[test]
fn t17_t18_hot_add_forms() {
    golden(
        &hex("0a 00 18 00 01 00 00 00 00 00 10 00 00 00 80 00 00 00 10 00 00 00 80 00"),
        Message::new(
            1,
            Body::HotAddRequest {
                range: range(0x100000, 32768),
                region: Some(range(0x100000, 32768)),
            },
        ),
    );
    golden(
        &hex("0a 00 10 00 01 00 00 00 00 00 10 00 00 00 80 00"),
        Message::new(
            1,
            Body::HotAddRequest {
                range: range(0x100000, 32768),
                region: None,
            },
        ),
    );
    golden(
        &hex("0b 00 10 00 xx xx xx xx 00 80 00 00 01 00 00 00"),
        Message::new(
            0,
            Body::HotAddResponse {
                page_count: 32768,
                result: 1,
            },
        ),
    );
    // Neither form.
    let mut v = hex("0a 00 14 00 01 00 00 00 00 00 10 00 00 00 80 00 00 00 00 00");
    assert_eq!(
        Message::parse(&v),
        Err(DecodeError::HotAddSize { size: 20 })
    );
    // A longer message still carries a region (Linux only checks for 16).
    v = hex(
        "0a 00 20 00 01 00 00 00 00 00 10 00 00 00 80 00 00 00 10 00 00 00 80 00 00 00 00 00 00 00 00 00",
    );
    assert!(matches!(
        Message::parse(&v).unwrap().body,
        Body::HotAddRequest {
            region: Some(_),
            ..
        }
    ));
}

#[test]
fn t19_hot_add_results() {
    golden(
        &hex("0b 00 10 00 0b 00 00 00 00 00 00 00 01 00 00 00"),
        Message::new(
            11,
            Body::HotAddResponse {
                page_count: 0,
                result: 1,
            },
        ),
    );
    golden(
        &hex("0b 00 10 00 0b 00 00 00 00 00 00 00 00 00 00 00"),
        Message::new(
            11,
            Body::HotAddResponse {
                page_count: 0,
                result: 0,
            },
        ),
    );
}

#[test]
fn t20_hot_add_over_report() {
    golden(
        &hex("0b 00 10 00 0c 00 00 00 40 9c 00 00 01 00 00 00"),
        Message::new(
            12,
            Body::HotAddResponse {
                page_count: 40_000,
                result: 1,
            },
        ),
    );
}

#[test]
fn t21_caps_alignment_11() {
    let caps = Caps::new()
        .with_balloon(true)
        .with_hot_add(true)
        .with_hot_add_alignment(11);
    assert_eq!(caps.to_u64(), 0x2f);
    let mut bytes = hex("03 00 20 00 02 00 00 00 2f 00 00 00 00 00 00 00");
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&[0xff; 8]);
    golden(
        &bytes,
        Message::new(
            2,
            Body::CapabilitiesReport {
                caps,
                min_page_cnt: 0,
                max_page_number: u64::MAX,
            },
        ),
    );
    assert_eq!(caps.hot_add_alignment_pages(), 524_288);
}

#[test]
fn t12_duplicate_ranges_are_kept() {
    // The codec reports what the guest sent; counting a page once is the host's job.
    let r = [range(0x12345, 512), range(0x12345, 512)];
    let m = Message::new(
        6,
        Body::BalloonResponse {
            more_pages: false,
            ranges: &r,
        },
    );
    let bytes = m.to_bytes().unwrap();
    let Body::BalloonResponse { ranges, .. } = Message::parse(&bytes).unwrap().body else {
        panic!()
    };
    assert_eq!(ranges, &r);
}

#[test]
fn t22_status_report() {
    let mut v = hex("05 00 30 00 09 00 00 00 00 00 04 00 00 00 00 00 00 00 02 00 00 00 00 00");
    v.extend_from_slice(&[0; 24]);
    golden(
        &v,
        Message::new(
            9,
            Body::StatusReport(StatusReport {
                num_avail: 262_144,
                num_committed: 131_072,
                ..Default::default()
            }),
        ),
    );
}

#[test]
fn t23_info_max_page_count() {
    let bytes = hex(
        "0c 00 20 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 08 00 00 00 \
         00 00 08 00 00 00 00 00",
    );
    let data = 524_288u64.to_le_bytes();
    golden(
        &bytes,
        Message::new(
            0,
            Body::Info {
                info_type: InfoType::MAX_PAGE_CNT,
                data: &data,
            },
        ),
    );
    assert_eq!(
        Message::parse(&bytes).unwrap().body.max_page_count(),
        Some(524_288)
    );
    // data_size 4: well formed, but not a page count (Linux ignores it).
    let mut odd = bytes.clone();
    odd[20] = 4;
    let m = Message::parse(&odd).unwrap();
    assert_eq!(m.body.max_page_count(), None);
    assert!(matches!(m.body, Body::Info { data, .. } if data.len() == 4));
    // data_size beyond the message.
    odd[20] = 9;
    assert_eq!(
        Message::parse(&odd),
        Err(DecodeError::InfoDataSize {
            data_size: 9,
            available: 8
        })
    );
    // info_size is not looked at, as Linux does not look at it.
    for info_size in [0u8, 4, 0x11, 0xFF] {
        let mut other = bytes.clone();
        other[12] = info_size;
        assert_eq!(
            Message::parse(&other).unwrap().body.max_page_count(),
            Some(524_288)
        );
    }
    // No room for the info header.
    let short = hex("0c 00 14 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00");
    assert_eq!(
        Message::parse(&short),
        Err(DecodeError::InfoSize {
            info_size: 16,
            size: 20
        })
    );
}

#[test]
fn t24_error_and_unknown_types() {
    golden(
        &hex("00 00 08 00 00 00 00 00"),
        Message::new(0, Body::Error),
    );
    assert_eq!(
        Message::parse(&hex("0f 00 08 00 00 00 00 00")),
        Err(DecodeError::UnknownType { ty: 15 })
    );
}

#[test]
fn hot_remove_messages() {
    let mut req = hex("0d 00 18 00 04 00 00 00 01 00 00 00 00 80 00 00 03 00 00 00 00 00 00 00");
    golden(
        &req,
        Message::new(
            4,
            Body::HotRemoveRequest {
                virtual_node: 1,
                page_count: 32768,
                qos_flags: DM_REMOVE_QOS_MASK,
            },
        ),
    );
    req.truncate(16);
    req[2] = 16;
    assert!(matches!(
        Message::parse(&req),
        Err(DecodeError::TooShort { needed: 24, .. })
    ));
    let r = [range(0x200000, 512), range(0x300000, 1)];
    let m = Message::new(
        5,
        Body::HotRemoveResponse {
            result: 0,
            more_pages: true,
            ranges: &r,
        },
    );
    let b = m.to_bytes().unwrap();
    assert_eq!(b.len(), 40);
    assert_eq!(
        &b[8..24],
        &hex("00 00 00 00 02 00 00 00 01 00 00 00 00 00 00 00")[..]
    );
    assert_eq!(Message::parse(&b).unwrap(), m);
}

#[test]
fn padding_after_the_message_is_ignored() {
    let mut v = hex("09 00 08 00 07 00 00 00");
    v.extend_from_slice(&[0xAA; 7]);
    assert_eq!(
        Message::parse(&v).unwrap(),
        Message::new(7, Body::UnballoonResponse)
    );
}

#[test]
fn reserved_bits_are_not_checked() {
    // Neither QEMU nor Linux rejects reserved bits; they are dropped by the typed form.
    let v = hex("02 00 10 00 01 00 00 00 ff ff ff ff ff ff ff ff");
    assert_eq!(
        Message::parse(&v).unwrap().body,
        Body::VersionResponse { is_accepted: true }
    );
}

#[test]
fn encode_errors() {
    let mut small = [0u8; 15];
    assert_eq!(
        Message::new(0, Body::BalloonRequest { num_pages: 1 }).write(&mut small),
        Err(EncodeError::BufferTooSmall {
            ty: MessageType::BALLOON_REQUEST,
            needed: 16,
            available: 15
        })
    );
    // 511 ranges would not fit a 4 KiB receive buffer; 510 do.
    let ranges = std::vec![range(0, 1); 511];
    let m = Message::new(
        0,
        Body::BalloonResponse {
            more_pages: false,
            ranges: &ranges,
        },
    );
    assert_eq!(
        m.to_bytes(),
        Err(EncodeError::TooLarge {
            ty: MessageType::BALLOON_RESPONSE,
            size: 4104
        })
    );
    let m = Message::new(
        0,
        Body::UnballoonRequest {
            more_pages: false,
            ranges: &ranges[..510],
        },
    );
    assert_eq!(Message::parse(&m.to_bytes().unwrap()).unwrap(), m);
    let m = Message::new(
        0,
        Body::HotRemoveResponse {
            result: 0,
            more_pages: false,
            ranges: &ranges[..510],
        },
    );
    assert!(m.to_bytes().is_err());
    // Decoding is not limited to 4 KiB: an 8189-range message (hdr.size 65528) parses.
    let mut big = hex("07 00 f8 ff 00 00 00 00 00 00 00 00 fa 3f 00 00");
    big.resize(65528, 0x11);
    let Body::BalloonResponse { ranges, .. } = Message::parse(&big).unwrap().body else {
        panic!()
    };
    assert_eq!(ranges.len(), 8189);
}

#[test]
fn error_messages_name_message_and_field() {
    let e = Message::parse(&hex(
        "07 00 18 00 07 00 00 00 00 00 00 00 04 00 00 00 45 23 01 00 00 00 02 00",
    ))
    .unwrap_err();
    assert_eq!(
        std::format!("{e}"),
        "DM_BALLOON_RESPONSE: range_count 2 needs 32 bytes but hdr.size is 24"
    );
}

/// Everything a message can hold, owned, so a strategy can produce it.
#[derive(Debug, Clone)]
struct Owned {
    trans_id: u32,
    kind: u8,
    a: u64,
    b: u64,
    c: u64,
    flags: [bool; 3],
    ranges: Vec<PageRange>,
    data: Vec<u8>,
}

impl Owned {
    fn message(&self) -> Message<'_> {
        let (a, b, c) = (self.a, self.b, self.c);
        let [f0, f1, f2] = self.flags;
        let r = &self.ranges[..];
        let body = match self.kind {
            0 => Body::Error,
            1 => Body::VersionRequest {
                version: Version(a as u32),
                is_last_attempt: f0,
            },
            2 => Body::VersionResponse { is_accepted: f0 },
            3 => Body::CapabilitiesReport {
                caps: Caps::from_u64(a & 0x7F),
                min_page_cnt: b,
                max_page_number: c,
            },
            4 => Body::CapabilitiesResponse {
                is_accepted: f0,
                hot_remove: f1,
                suppress_pressure_reports: f2,
            },
            5 => Body::StatusReport(StatusReport {
                num_avail: a,
                num_committed: b,
                page_file_size: c,
                zero_free: a ^ c,
                page_file_writes: b as u32,
                io_diff: (c >> 32) as u32,
            }),
            6 => Body::BalloonRequest {
                num_pages: a as u32,
            },
            7 => Body::BalloonResponse {
                more_pages: f0,
                ranges: r,
            },
            8 => Body::UnballoonRequest {
                more_pages: f0,
                ranges: r,
            },
            9 => Body::UnballoonResponse,
            10 => Body::HotAddRequest {
                range: PageRange::from_u64(a),
                region: f0.then_some(PageRange::from_u64(b)),
            },
            11 => Body::HotAddResponse {
                page_count: a as u32,
                result: b as u32,
            },
            12 => Body::Info {
                info_type: InfoType(a as u32),
                data: &self.data,
            },
            13 => Body::HotRemoveRequest {
                virtual_node: a as u32,
                page_count: b as u32,
                qos_flags: c as u32,
            },
            _ => Body::HotRemoveResponse {
                result: a as u32,
                more_pages: f0,
                ranges: r,
            },
        };
        Message::new(self.trans_id, body)
    }
}

fn owned() -> impl Strategy<Value = Owned> {
    (
        any::<u32>(),
        0u8..=14,
        any::<(u64, u64, u64)>(),
        any::<[bool; 3]>(),
        proptest::collection::vec(
            any::<u64>().prop_map(PageRange::from_u64),
            0..=MAX_HOT_REMOVE_RANGES_PER_MESSAGE,
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(trans_id, kind, (a, b, c), flags, ranges, data)| Owned {
            trans_id,
            kind,
            a,
            b,
            c,
            flags,
            ranges,
            data,
        })
}

proptest! {
    #[test]
    fn parse_write_round_trip(o in owned(), pad in 0usize..8) {
        let m = o.message();
        let mut bytes = m.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]) as usize, bytes.len());
        bytes.extend(core::iter::repeat_n(0xEE, pad));
        prop_assert_eq!(Message::parse(&bytes).unwrap(), m);
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn parse_of_valid_headers_never_panics(
        ty in 0u16..16,
        size in 0u16..200,
        trans_id in any::<u32>(),
        rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ty.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&trans_id.to_le_bytes());
        bytes.extend_from_slice(&rest);
        if let Ok(m) = Message::parse(&bytes) {
            // Whatever parses re-encodes within the bytes it came from.
            prop_assert!(m.encoded_len() <= size as usize);
            prop_assert_eq!(m.trans_id, trans_id);
        }
    }
}

#[test]
fn minor_version_masks_with_0xff_as_the_header_does() {
    // DYNMEM_MINOR_VERSION(v) is `v & 0xff`: bits 15:8 are not part of the minor.
    let v = Version(0x0002_0103);
    assert_eq!((v.major(), v.minor()), (2, 3));
    assert_eq!(Version::new(1, 0x1ff).minor(), 0xff);
    // The wire value is untouched: every bit goes out and is compared as sent.
    assert_eq!(v.as_bytes(), &[0x03, 0x01, 0x02, 0x00]);
    assert_ne!(v, Version::new(2, 3));
    assert_eq!(std::format!("{}", Version::V0_3), "0.3");
    assert_eq!(std::format!("{v}"), "2.3 (0x00020103)");
}

#[test]
fn check_ranges_totals_or_names_the_first_bad_range() {
    let ok = [range(0, 512), range(512, 1), range(1023, 1)];
    assert_eq!(check_ranges(&ok, 1024), Ok(514));
    assert_eq!(check_ranges(&[], 0), Ok(0));
    // Ending exactly at the end is inside; one page past is not.
    assert_eq!(check_ranges(&ok, 1023), Err(2));
    // An empty range is refused wherever it is.
    assert_eq!(check_ranges(&[range(0, 1), range(5, 0)], 1 << 20), Err(1));
    // The largest start and count do not overflow.
    let top = range(PageRange::MAX_START_PAGE, PageRange::MAX_PAGE_CNT);
    assert_eq!(
        check_ranges(&[top], u64::MAX),
        Ok(PageRange::MAX_PAGE_CNT.into())
    );
    assert_eq!(check_ranges(&[top], 1 << 40), Err(0));
}
