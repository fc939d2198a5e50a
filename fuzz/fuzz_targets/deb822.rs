//! Release files, indexes and status files from a hostile source: the
//! paragraph reader never panics, every field it reports can be looked up
//! by name, and a paragraph printed back reads as the same fields.
#![no_main]

use kiln_deb::{multiline_lines, paragraphs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for para in paragraphs(text).flatten() {
        assert!(!para.is_empty());
        let fields: Vec<(&str, &str)> = para.fields().collect();
        assert_eq!(fields.len(), para.len());
        for (name, _) in &fields {
            assert!(!name.is_empty());
            assert!(para.get(name).is_some(), "field {name:?} not found by name");
            // Lookups ignore case, as apt's do.
            assert_eq!(para.get(&name.to_ascii_uppercase()), para.get(name));
        }
        let shown = para.to_string();
        let mut again = paragraphs(&shown);
        let reread = again
            .next()
            .expect("a printed paragraph reads back")
            .unwrap_or_else(|e| panic!("{shown:?} does not read back: {e}"));
        assert!(
            again.next().is_none(),
            "{shown:?} reads back as more than one paragraph"
        );
        // Compared line by line as readers see values: a comment line
        // inside a folded value stays in the value's slice (documented in
        // `paragraphs`) but is no part of the value.
        let lines = |p: &kiln_deb::Paragraph<'_>| -> Vec<(String, Vec<String>)> {
            p.fields()
                .map(|(n, v)| {
                    (
                        n.to_owned(),
                        multiline_lines(v).map(str::to_owned).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(lines(&para), lines(&reread), "{shown:?}");
    }
});
