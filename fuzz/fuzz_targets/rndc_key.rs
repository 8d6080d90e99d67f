//! `rndc.key` parsing: never panics, never echoes input in errors, and what parses round-trips
//! through generation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rndc_warden::policy::parse_rndc_key;

fuzz_target!(|text: &str| {
    match parse_rndc_key(text) {
        Ok(key) => {
            let regenerated = key.to_bind();
            assert_eq!(parse_rndc_key(&regenerated).as_ref(), Ok(&key));
        }
        Err(error) => {
            assert!(error.line >= 1);
            let _ = error.to_string();
        }
    }
});
