//! Versions from a hostile index: parsing never panics, what parses prints
//! back to a string that parses to the same version, and the ordering is a
//! total order (antisymmetric, consistent with equality and hashing).
#![no_main]

use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use kiln_deb::{compare, Version};
use libfuzzer_sys::fuzz_target;

fn hash(v: &Version) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two versions from one input: split at the first newline.
    let (a, b) = text.split_once('\n').unwrap_or((text, text));
    assert_eq!(compare(a, b), compare(b, a).reverse(), "{a:?} vs {b:?}");
    assert_eq!(compare(a, a), Ordering::Equal, "{a:?}");
    let (Ok(va), Ok(vb)) = (Version::parse(a), Version::parse(b)) else {
        return;
    };
    for v in [&va, &vb] {
        let shown = v.to_string();
        let again = Version::parse(&shown)
            .unwrap_or_else(|e| panic!("{v:?} prints as {shown:?}, which does not parse: {e}"));
        assert_eq!(again.epoch(), v.epoch(), "{shown:?}");
        assert_eq!(again.upstream(), v.upstream(), "{shown:?}");
        assert_eq!(again.revision(), v.revision(), "{shown:?}");
    }
    assert_eq!(va.cmp(&vb), vb.cmp(&va).reverse());
    if va == vb {
        assert_eq!(hash(&va), hash(&vb), "{a:?} == {b:?} but hashes differ");
    }
});
