//! Arbitrary bytes into the guest link's decoder, as the daemon reads a guest's frames: a
//! header first (refused before any payload is read if its magic or length is wrong), then
//! the payload of the kind it names. Whatever decodes must re-encode to the same bytes'
//! meaning: the re-encoded frame decodes to the same value.
#![no_main]

use ballast_link::{Frame, HEADER_LEN, Header, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(h) = Header::parse(head) else {
        return;
    };
    assert!(h.len <= MAX_PAYLOAD);
    let Some(payload) = rest.get(..h.len) else {
        return;
    };
    if let Ok(f) = Frame::decode(h.kind, payload) {
        let bytes = f.encode().expect("a decoded frame encodes");
        let h2 = Header::parse(bytes[..HEADER_LEN].try_into().expect("a header"))
            .expect("an encoded header parses");
        let again = Frame::decode(h2.kind, &bytes[HEADER_LEN..]).expect("re-encoded bytes decode");
        assert_eq!(again, f);
    }
});
