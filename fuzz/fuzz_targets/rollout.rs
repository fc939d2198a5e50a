//! A channel's rollout document from a hostile tree: Kiln's reader never
//! panics, what it accepts prints back to the same document, and every
//! release's share stays within 0–100% at any time.
#![no_main]

use kiln_model::rollout::{Rollout, ALL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Rollout::parse(text) else {
        return;
    };
    let again = Rollout::parse(&r.render()).expect("a printed rollout reads back");
    assert_eq!(again.render(), r.render());
    for x in &r.releases {
        for now in [i64::MIN / 2, 0, x.since, x.since.saturating_add(x.duration), i64::MAX / 2] {
            assert!(x.share(now) <= ALL, "{x:?} at {now}");
        }
        let _ = r.target(&x.image, "0", 0, x.since);
    }
});
