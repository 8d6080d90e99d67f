//! `rotateAfter` parsing: never panics; what parses is in range and prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rndc_warden::policy::{MAX_HOURS, MIN_HOURS, RotateAfter};

fuzz_target!(|text: &str| {
    if let Ok(interval) = RotateAfter::parse(text) {
        assert!((MIN_HOURS..=MAX_HOURS).contains(&interval.hours()));
        assert_eq!(RotateAfter::parse(&interval.to_string()), Ok(interval));
        assert_eq!(interval.as_std().as_secs(), interval.hours() * 3600);
    }
});
