//! Depends/Provides fields from a hostile index: parsing never panics, and
//! what parses prints back to a field that parses to the same relations.
#![no_main]

use kiln_deb::{fmt_group, parse_provides, parse_relations};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(field) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(groups) = parse_relations(field) {
        let shown: Vec<String> = groups.iter().map(|g| fmt_group(g)).collect();
        let shown = shown.join(", ");
        let again = parse_relations(&shown)
            .unwrap_or_else(|e| panic!("{field:?} prints as {shown:?}, which does not parse: {e}"));
        assert_eq!(groups, again, "{field:?} -> {shown:?}");
        for dep in groups.iter().flatten() {
            assert!(!dep.name.is_empty());
            // A constraint's version is one the version parser accepts.
            if let Some((_, v)) = dep.constraint {
                assert!(kiln_deb::Version::parse(v).is_ok(), "{v:?} in {field:?}");
            }
        }
    }
    if let Ok(provides) = parse_provides(field) {
        let shown: Vec<String> = provides.iter().map(|d| d.to_string()).collect();
        let shown = shown.join(", ");
        let again = parse_provides(&shown).expect("printed Provides parses");
        assert_eq!(provides, again);
    }
});
