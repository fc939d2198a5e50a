//! Checks every parser against a real Debian `Packages` index, which has
//! shapes no hand-written table covers. Needs a decompressed index, so it
//! only runs on request:
//! `KILN_PACKAGES_FILE=/path/to/Packages cargo test -p kiln-deb -- --ignored`

use kiln_deb::{compare, fmt_group, paragraphs, parse_provides, parse_relations, Version};

const RELATION_FIELDS: &[&str] = &[
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Enhances",
    "Conflicts",
    "Breaks",
    "Replaces",
];

#[test]
#[ignore = "needs KILN_PACKAGES_FILE pointing at a decompressed Packages index"]
fn real_packages_index() {
    let path = std::env::var("KILN_PACKAGES_FILE").expect("set KILN_PACKAGES_FILE");
    let text = std::fs::read_to_string(path).expect("read Packages file");
    let mut versions = Vec::new();
    let mut relations = 0;
    for p in paragraphs(&text) {
        let p = p.expect("valid paragraph");
        let version = p.get("Version").expect("Version field");
        versions.push(Version::parse(version).expect("valid version"));
        for field in RELATION_FIELDS {
            let Some(value) = p.get(field) else { continue };
            let groups = parse_relations(value)
                .unwrap_or_else(|e| panic!("line {}: {field}: {e}", p.line()));
            // Printing and re-parsing must give the same relations.
            let printed: Vec<String> = groups.iter().map(|g| fmt_group(g)).collect();
            let joined = printed.join(", ");
            assert_eq!(parse_relations(&joined).unwrap(), groups, "{joined}");
            relations += groups.len();
        }
        if let Some(value) = p.get("Provides") {
            parse_provides(value).unwrap_or_else(|e| panic!("line {}: Provides: {e}", p.line()));
        }
    }
    // The raw-string comparison and the parsed ordering must agree.
    versions.sort();
    for pair in versions.windows(2) {
        let (a, b) = (pair[0].to_string(), pair[1].to_string());
        assert_ne!(compare(&a, &b), std::cmp::Ordering::Greater, "{a} vs {b}");
    }
    eprintln!("{} packages, {relations} relation groups", versions.len());
}
