//! An arbitrary control word, host options and input block into the hypercall decoder.
//! Whatever passes the generic checks must satisfy them.
#![no_main]

use ballast_abi::hv::{CallClass, DecodeOptions, HvCall, InputLayout, check_param_gpa, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, input)) = data.split_first_chunk::<17>() else {
        return;
    };
    let control = u64::from_le_bytes(head[..8].try_into().unwrap());
    let gpa = u64::from_le_bytes(head[8..16].try_into().unwrap());
    let options = DecodeOptions {
        layout: if head[16] & 1 == 0 {
            InputLayout::Tlfs2
        } else {
            InputLayout::Current
        },
        xmm_fast_input: head[16] & 2 != 0,
    };
    let _ = check_param_gpa(gpa, input.len());
    if let Ok(d) = decode(control, input, options) {
        let c = d.control;
        assert_eq!(control & ballast_abi::hv::Control::RESERVED_MASK, 0);
        assert_eq!(c.variable_header_size(), 0);
        assert!(!c.is_nested());
        match d.info.class {
            CallClass::Simple => assert!(c.rep_count() == 0 && c.rep_start() == 0),
            CallClass::Rep => assert!(c.rep_start() < c.rep_count()),
        }
        assert!(d.info.input_len(c.rep_count()) <= input.len());
        // The rep lists the decoder hands over hold exactly the rep count's elements.
        match d.call {
            HvCall::DepositMemory(_, list) => assert_eq!(list.len(), usize::from(c.rep_count())),
            HvCall::GetVpRegisters(_, list) => {
                assert_eq!(list.len(), usize::from(c.rep_count()));
                assert_eq!(list.iter().count(), list.len());
            }
            HvCall::SetVpRegisters(_, list) => {
                assert_eq!(list.len(), usize::from(c.rep_count()));
                assert_eq!(list.iter().count(), list.len());
            }
            _ => {}
        }
    }
});
