//! Arbitrary bytes into the VMBus packet decoder, as a packet alone and as one sitting in
//! a ring with its trailer; decoded in-band payloads must round-trip through the encoder.
#![no_main]

use ballast_abi::vmbus::{Packet, PacketDescriptor, PacketType, write_inband};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = PacketDescriptor::peek(data) {
        let _ = d.validate();
    }
    let _ = Packet::parse_with_trailer(data);
    if let Ok(p) = Packet::parse(data) {
        assert!(p.total_len <= data.len());
        assert!(p.header_ext.len() + p.payload.len() + 16 == p.total_len);
        if p.ty == PacketType::DATA_INBAND && p.header_ext.is_empty() {
            let mut buf = vec![0u8; p.total_len + 8];
            let n = write_inband(&mut buf, p.payload, p.trans_id, p.flags).unwrap();
            let q = Packet::parse(&buf[..n]).unwrap();
            assert_eq!(q.payload, p.payload);
            assert_eq!((q.trans_id, q.flags), (p.trans_id, p.flags));
        }
    }
});
