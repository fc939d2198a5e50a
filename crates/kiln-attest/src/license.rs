//! Licences from Debian machine-readable copyright files (DEP-5,
//! <https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/>).

/// The licence of a package as an SPDX licence expression, read from its
/// `/usr/share/doc/PACKAGE/copyright`.
///
/// Returns the first line of the `License` field of the `Files: *` paragraph
/// (or, without one, of the header paragraph), with Debian's short names
/// mapped to SPDX identifiers (`GPL-2+` → `GPL-2.0-or-later`, `Expat` →
/// `MIT`, `GPL-2+ or Artistic` → `GPL-2.0-or-later OR Artistic-1.0-Perl`, …).
/// Names with no SPDX counterpart become `LicenseRef-NAME` (`public-domain` →
/// `LicenseRef-public-domain`).
///
/// Returns `None` when the file is not machine-readable (its first paragraph
/// has no `Format:` field naming the copyright-format specification) or names
/// no licence for the package as a whole.
pub fn license_from_copyright(text: &str) -> Option<String> {
    let paragraphs = paragraphs(text);
    let header = paragraphs.first()?;
    let format = field(header, "format")?;
    if !(format.contains("copyright-format") || format.contains("dep5")) {
        return None;
    }
    let whole = paragraphs
        .iter()
        .skip(1)
        .find(|p| field(p, "files").is_some_and(|f| f.split_whitespace().any(|g| g == "*")))
        .unwrap_or(header);
    let license = field(whole, "license")?;
    let first_line = license.lines().next()?.trim();
    if first_line.is_empty() {
        return None;
    }
    Some(to_spdx_expression(first_line))
}

type Paragraph = Vec<(String, String)>;

/// Splits deb822 text into paragraphs of (lower-cased field name, value);
/// continuation lines are appended to the value after a newline.
fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut current: Paragraph = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn field<'a>(paragraph: &'a Paragraph, name: &str) -> Option<&'a str> {
    paragraph
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Turns a DEP-5 licence line into an SPDX expression.
///
/// DEP-5 joins names with `or` and `and` (`and` binding tighter, as in SPDX),
/// and a comma ends a group: `A or B, and C` is `(A OR B) AND C`. A name may
/// be followed by `with NAME exception`.
fn to_spdx_expression(line: &str) -> String {
    match parse_expression(line) {
        Some(expr) => expr,
        None => license_ref(line),
    }
}

fn parse_expression(line: &str) -> Option<String> {
    let spaced = line.replace(',', " , ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut groups: Vec<(Option<&'static str>, String)> = Vec::new();
    let mut i = 0;
    let mut after_comma = false;
    loop {
        // One comma-delimited group: TERM (OP TERM)*
        let mut join: Option<&'static str> = None;
        if after_comma {
            join = Some(operator(tokens.get(i)?).unwrap_or("AND"));
            if operator(tokens[i]).is_some() {
                i += 1;
            }
        }
        let mut parts: Vec<String> = Vec::new();
        loop {
            let (term, next) = parse_term(&tokens, i)?;
            parts.push(term);
            i = next;
            match tokens.get(i) {
                None => break,
                Some(&",") => break,
                Some(t) => {
                    parts.push(operator(t)?.to_string());
                    i += 1;
                }
            }
        }
        let text = if parts.len() == 1 {
            parts.remove(0)
        } else {
            // Terms sit at even positions, operators between them.
            let parts: Vec<String> = parts
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    if k % 2 == 0 {
                        parenthesize(p)
                    } else {
                        p.clone()
                    }
                })
                .collect();
            parts.join(" ")
        };
        groups.push((join, text));
        match tokens.get(i) {
            None => break,
            Some(_) => {
                i += 1; // the comma
                after_comma = true;
            }
        }
    }
    let mut iter = groups.into_iter();
    let (_, mut expr) = iter.next()?;
    for (join, group) in iter {
        let op = join.unwrap_or("AND");
        expr = format!("{} {op} {}", parenthesize(&expr), parenthesize(&group));
    }
    Some(expr)
}

/// Wraps a compound expression in parentheses so it can be an operand.
fn parenthesize(expr: &str) -> String {
    if expr.contains(' ') && !wrapped(expr) {
        format!("({expr})")
    } else {
        expr.to_string()
    }
}

/// Whether the whole of `expr` is one parenthesized group.
fn wrapped(expr: &str) -> bool {
    if !expr.starts_with('(') {
        return false;
    }
    let mut depth = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i == expr.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

fn operator(token: &str) -> Option<&'static str> {
    match token.to_ascii_lowercase().as_str() {
        "or" => Some("OR"),
        "and" => Some("AND"),
        _ => None,
    }
}

/// A licence name, optionally with `with X exception`, starting at
/// `tokens[i]`; returns its SPDX form and the index after it.
fn parse_term(tokens: &[&str], i: usize) -> Option<(String, usize)> {
    let name = *tokens.get(i)?;
    if name == "," || operator(name).is_some() {
        return None;
    }
    if !tokens
        .get(i + 1)
        .is_some_and(|t| t.eq_ignore_ascii_case("with"))
    {
        return Some((map_name(name), i + 1));
    }
    let end = (i + 2..tokens.len()).find(|&j| tokens[j].eq_ignore_ascii_case("exception"))?;
    let exception_words = &tokens[i + 2..end];
    if exception_words.is_empty() {
        return None;
    }
    let exception = exception_words.join(" ");
    let base = map_name(name);
    let term = match spdx_exception(&exception) {
        Some(id) if is_spdx_id(&base) => format!("{base} WITH {id}"),
        _ => license_ref(&format!("{name} with {exception} exception")),
    };
    Some((term, end + 1))
}

/// Whether `expr` is a single SPDX licence identifier (not a LicenseRef or a
/// compound expression), so that it may take a `WITH` exception.
fn is_spdx_id(expr: &str) -> bool {
    !expr.contains(' ') && !expr.starts_with("LicenseRef-")
}

fn spdx_exception(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "classpath" => "Classpath-exception-2.0",
        "font" => "Font-exception-2.0",
        "bison" => "Bison-exception-2.2",
        "libtool" => "Libtool-exception",
        "gcc-3.1" | "gcc runtime library" => "GCC-exception-3.1",
        _ => return None,
    })
}

/// Debian licence short names whose SPDX identifier is different or differs
/// in case. Keys are lower case.
const NAMES: &[(&str, &str)] = &[
    ("expat", "MIT"),
    ("mit", "MIT"),
    ("mit-0", "MIT-0"),
    ("x11", "X11"),
    ("isc", "ISC"),
    ("zlib", "Zlib"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("0bsd", "0BSD"),
    ("apache-1.0", "Apache-1.0"),
    ("apache-1.1", "Apache-1.1"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-1.0", "Artistic-1.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("perl", "Artistic-1.0-Perl OR GPL-1.0-or-later"),
    ("mpl-1.0", "MPL-1.0"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("epl-1.0", "EPL-1.0"),
    ("epl-2.0", "EPL-2.0"),
    ("cddl-1.0", "CDDL-1.0"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("bsl-1.0", "BSL-1.0"),
    ("boost-1.0", "BSL-1.0"),
    ("ofl-1.1", "OFL-1.1"),
    ("sil-ofl-1.1", "OFL-1.1"),
    ("psf-2", "PSF-2.0"),
    ("psf-2.0", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("openssl", "OpenSSL"),
    ("ssleay", "OpenSSL"),
    ("curl", "curl"),
    ("unlicense", "Unlicense"),
    ("wtfpl", "WTFPL"),
    ("postgresql", "PostgreSQL"),
    ("sleepycat", "Sleepycat"),
    ("libpng", "Libpng"),
    ("libpng-2.0", "libpng-2.0"),
    ("ijg", "IJG"),
    ("ftl", "FTL"),
    ("vim", "Vim"),
    ("ruby", "Ruby"),
    ("tcl", "TCL"),
    ("zpl-2.1", "ZPL-2.1"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
    ("public-domain", "LicenseRef-public-domain"),
    ("pd", "LicenseRef-public-domain"),
];

/// Maps one Debian licence short name to SPDX.
fn map_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if let Some((_, id)) = NAMES.iter().find(|(k, _)| *k == lower) {
        return (*id).to_string();
    }
    if let Some(id) = gnu_license(&lower) {
        return id;
    }
    if let Some(id) = creative_commons(&lower) {
        return id;
    }
    // Anything else, `MPL-1.1+` included: SPDX's `ID+` form is rejected by
    // common validators, so such names become LicenseRefs too.
    license_ref(name)
}

/// GPL-2 → GPL-2.0-only, LGPL-2.1+ → LGPL-2.1-or-later, GFDL-NIV-1.3+ →
/// GFDL-1.3-no-invariants-or-later, …
fn gnu_license(lower: &str) -> Option<String> {
    let (base, or_later) = match lower.strip_suffix('+') {
        Some(b) => (b, true),
        None => (lower, false),
    };
    const FAMILIES: &[(&str, &str, &[&str])] = &[
        ("gfdl-niv-", "GFDL", &["1.1", "1.2", "1.3"]),
        ("gfdl-", "GFDL", &["1.1", "1.2", "1.3"]),
        ("lgpl-", "LGPL", &["2.0", "2.1", "3.0"]),
        ("agpl-", "AGPL", &["1.0", "3.0"]),
        ("gpl-", "GPL", &["1.0", "2.0", "3.0"]),
    ];
    let (family, spdx, versions, version) =
        FAMILIES.iter().find_map(|(prefix, spdx, versions)| {
            base.strip_prefix(prefix)
                .map(|v| (*prefix, *spdx, *versions, v))
        })?;
    let version = if version.contains('.') {
        version.to_string()
    } else {
        format!("{version}.0")
    };
    if !versions.contains(&version.as_str()) {
        return None;
    }
    let invariants = if family == "gfdl-niv-" {
        "-no-invariants"
    } else {
        ""
    };
    let suffix = if or_later { "or-later" } else { "only" };
    Some(format!("{spdx}-{version}{invariants}-{suffix}"))
}

/// CC-BY-SA-4.0 and friends: Debian uses the SPDX names in other cases.
fn creative_commons(lower: &str) -> Option<String> {
    let rest = lower.strip_prefix("cc-")?;
    let (kind, version) = rest.rsplit_once('-')?;
    let kinds = ["by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd"];
    let versions = ["1.0", "2.0", "2.5", "3.0", "4.0"];
    (kinds.contains(&kind) && versions.contains(&version))
        .then(|| format!("CC-{}-{version}", kind.to_ascii_uppercase()))
}

/// `LicenseRef-` and the name with the characters SPDX does not allow in an
/// identifier replaced (`+` becomes `-plus`, others `-`).
fn license_ref(name: &str) -> String {
    let mut id = String::new();
    for c in name.trim().chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' => id.push(c),
            '+' => id.push_str("-plus"),
            _ => {
                if !id.ends_with('-') {
                    id.push('-');
                }
            }
        }
    }
    let id = id.trim_matches('-');
    if id.is_empty() {
        "LicenseRef-unknown".to_string()
    } else {
        format!("LicenseRef-{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (debian, spdx) in [
            ("GPL-2+", "GPL-2.0-or-later"),
            ("GPL-2", "GPL-2.0-only"),
            ("GPL-3.0+", "GPL-3.0-or-later"),
            ("LGPL-2.1+", "LGPL-2.1-or-later"),
            ("LGPL-2", "LGPL-2.0-only"),
            ("AGPL-3+", "AGPL-3.0-or-later"),
            ("GFDL-NIV-1.3+", "GFDL-1.3-no-invariants-or-later"),
            ("GFDL-1.2", "GFDL-1.2-only"),
            ("Expat", "MIT"),
            ("BSD-3-clause", "BSD-3-Clause"),
            ("Apache-2.0", "Apache-2.0"),
            ("zlib", "Zlib"),
            ("CC-BY-SA-4.0", "CC-BY-SA-4.0"),
            ("MPL-1.1+", "LicenseRef-MPL-1.1-plus"),
            ("public-domain", "LicenseRef-public-domain"),
            ("GPL-4+", "LicenseRef-GPL-4-plus"),
            ("other/BSD like", "LicenseRef-other-BSD-like"),
        ] {
            assert_eq!(to_spdx_expression(debian), spdx, "{debian}");
        }
    }

    #[test]
    fn expressions() {
        for (debian, spdx) in [
            (
                "GPL-2+ or Artistic",
                "GPL-2.0-or-later OR Artistic-1.0-Perl",
            ),
            (
                "LGPL-2.1+ and BSD-3-clause",
                "LGPL-2.1-or-later AND BSD-3-Clause",
            ),
            (
                "GPL-2+ or Artistic-2.0, and BSD-3-clause",
                "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause",
            ),
            ("Perl", "Artistic-1.0-Perl OR GPL-1.0-or-later"),
            (
                "Expat and Perl",
                "MIT AND (Artistic-1.0-Perl OR GPL-1.0-or-later)",
            ),
            (
                "GPL-2+ with Classpath exception",
                "GPL-2.0-or-later WITH Classpath-exception-2.0",
            ),
            (
                "GPL-3+ with Autoconf data exception",
                "LicenseRef-GPL-3-plus-with-Autoconf-data-exception",
            ),
            ("GPL-2+ BSD", "LicenseRef-GPL-2-plus-BSD"),
        ] {
            assert_eq!(to_spdx_expression(debian), spdx, "{debian}");
        }
    }
}
