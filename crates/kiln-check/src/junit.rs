//! JUnit XML, as CI systems read it.

use std::path::Path;

use crate::Outcome;

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One test suite named after the image, a test case per outcome (class
/// `kiln.GROUP`), and the console tail as the suite's `system-out`.
pub fn junit(image: &Path, outcomes: &[Outcome], console_tail: &str) -> String {
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let skipped = outcomes.iter().filter(|o| o.skipped.is_some()).count();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"kiln test\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.1}\">\n  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.1}\">\n",
        outcomes.len(),
        xml_escape(&image.display().to_string()),
        outcomes.len()
    );
    for o in outcomes {
        x.push_str(&format!(
            "    <testcase classname=\"kiln.{}\" name=\"{}\" time=\"{:.1}\"",
            o.group,
            xml_escape(&o.name),
            o.seconds
        ));
        match (&o.failure, &o.skipped) {
            (Some(f), _) => x.push_str(&format!(
                ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                xml_escape(f)
            )),
            (None, Some(s)) => x.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                xml_escape(s)
            )),
            _ => x.push_str("/>\n"),
        }
    }
    if !console_tail.is_empty() {
        x.push_str(&format!(
            "    <system-out>{}</system-out>\n",
            xml_escape(console_tail)
        ));
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
