//! Image versions from a hostile channel: systemd's version order, as Kiln
//! computes it, never panics and is antisymmetric and reflexive.
#![no_main]

use std::cmp::Ordering;

use kiln_model::sdversion::compare;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\n').unwrap_or((text, text));
    assert_eq!(compare(a, b), compare(b, a).reverse(), "{a:?} vs {b:?}");
    assert_eq!(compare(a, a), Ordering::Equal, "{a:?}");
});
