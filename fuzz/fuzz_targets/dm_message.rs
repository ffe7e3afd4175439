//! Arbitrary bytes into the Dynamic Memory decoder. Whatever decodes must re-encode (when
//! it fits one 4 KiB message) to bytes that decode to the same value and are no longer
//! than the bytes it came from.
#![no_main]

use ballast_abi::dm::{EncodeError, MAX_MESSAGE_SIZE, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        match m.to_bytes() {
            Ok(bytes) => {
                assert!(bytes.len() <= data.len());
                assert_eq!(Message::parse(&bytes).expect("re-encoded bytes decode"), m);
            }
            Err(EncodeError::TooLarge { size, .. }) => assert!(size > MAX_MESSAGE_SIZE),
            Err(e) => panic!("a decoded message fails to encode: {e}"),
        }
    }
});
