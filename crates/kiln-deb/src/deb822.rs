//! Zero-copy parser for deb822 control data (`Packages`, `Release`,
//! `status`, `control`).
//!
//! Archive indices are large (tens of megabytes, tens of thousands of
//! paragraphs) and read on every run, so fields are returned as slices of
//! the input: the only allocation per paragraph is its field vector.

use std::fmt;

/// A parse failure, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deb822Error {
    /// A line that is neither `Name: value`, a continuation, a comment nor
    /// blank.
    #[error("line {line}: expected `Name: value`, found {text:?}")]
    MalformedLine { line: usize, text: String },
    /// An indented line with no field before it in the paragraph.
    #[error("line {line}: continuation line {text:?} does not follow a field")]
    OrphanContinuation { line: usize, text: String },
    /// A field name that is empty, contains whitespace or control
    /// characters, or starts with '-'.
    #[error("line {line}: invalid field name {name:?}")]
    InvalidFieldName { line: usize, name: String },
}

impl Deb822Error {
    /// The 1-based line the error was found on.
    pub fn line(&self) -> usize {
        match *self {
            Deb822Error::MalformedLine { line, .. }
            | Deb822Error::OrphanContinuation { line, .. }
            | Deb822Error::InvalidFieldName { line, .. } => line,
        }
    }
}

/// One paragraph (stanza) of fields, borrowing from the parsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paragraph<'a> {
    fields: Vec<(&'a str, &'a str)>,
    line: usize,
}

impl<'a> Paragraph<'a> {
    /// The value of field `name`, matched case-insensitively as deb822
    /// requires. If a (malformed) paragraph repeats a field, the first wins.
    ///
    /// Leading blanks after the colon and trailing whitespace are trimmed.
    /// A multi-line value is the original text from its first line to the
    /// end of its last continuation line, so continuation lines keep their
    /// leading space and are separated by `'\n'`; when the first line is
    /// empty the value starts with `'\n'`. Use [`multiline_lines`] to walk
    /// such values line by line.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// All fields in input order, as `(name, value)`.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + '_ {
        self.fields.iter().copied()
    }

    /// The 1-based line of the paragraph's first field, for error messages.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the paragraph has no fields (never true for parsed ones).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl fmt::Display for Paragraph<'_> {
    /// Writes the paragraph back in deb822 form (without a trailing blank
    /// line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.fields {
            if value.is_empty() || value.starts_with('\n') {
                writeln!(f, "{name}:{value}")?;
            } else {
                writeln!(f, "{name}: {value}")?;
            }
        }
        Ok(())
    }
}

/// Iterates over the paragraphs of `input`.
///
/// Blank or whitespace-only lines separate paragraphs; lines starting with
/// `#` are comments and skipped. After an error the iterator resumes at the
/// next paragraph, so callers may either stop (e.g. by collecting into a
/// `Result`) or report and skip bad paragraphs.
///
/// A comment line between two continuation lines stays inside the value
/// slice (it cannot be cut out without copying); [`multiline_lines`] skips
/// it. Such comments only occur in hand-written files such as
/// `debian/control`, never in archive indices.
pub fn paragraphs(input: &str) -> Paragraphs<'_> {
    Paragraphs {
        input,
        pos: 0,
        line: 1,
        capacity: 8,
    }
}

/// Iterator returned by [`paragraphs`].
#[derive(Debug, Clone)]
pub struct Paragraphs<'a> {
    input: &'a str,
    /// Byte offset of the next unread line.
    pos: usize,
    /// 1-based number of the line at `pos`.
    line: usize,
    /// Field count of the widest paragraph so far, used to size the next
    /// field vector so it rarely needs to grow.
    capacity: usize,
}

/// One line of input: `[start, end)` excludes the newline, `next` is where
/// the following line starts.
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

impl<'a> Paragraphs<'a> {
    fn peek_line(&self) -> Option<Line> {
        if self.pos >= self.input.len() {
            return None;
        }
        let rest = &self.input[self.pos..];
        Some(match rest.find('\n') {
            Some(n) => Line {
                start: self.pos,
                end: self.pos + n,
                next: self.pos + n + 1,
            },
            None => Line {
                start: self.pos,
                end: self.input.len(),
                next: self.input.len(),
            },
        })
    }

    fn advance(&mut self, line: Line) {
        self.pos = line.next;
        self.line += 1;
    }

    fn is_blank(&self, line: Line) -> bool {
        self.input.as_bytes()[line.start..line.end]
            .iter()
            .all(|&b| is_ws(b))
    }

    fn text(&self, line: Line) -> String {
        self.input[line.start..line.end].trim_end().to_owned()
    }

    /// End of `line` with trailing whitespace removed, but not before `min`.
    fn trimmed_end(&self, line: Line, min: usize) -> usize {
        let bytes = self.input.as_bytes();
        let mut end = line.end;
        while end > min && is_ws(bytes[end - 1]) {
            end -= 1;
        }
        end
    }

    /// Skips the rest of a bad paragraph so iteration can go on after it.
    fn skip_paragraph(&mut self) {
        while let Some(line) = self.peek_line() {
            self.advance(line);
            if self.is_blank(line) {
                break;
            }
        }
    }

    fn fail(&mut self, err: Deb822Error) -> Option<Result<Paragraph<'a>, Deb822Error>> {
        self.skip_paragraph();
        Some(Err(err))
    }
}

impl<'a> Iterator for Paragraphs<'a> {
    type Item = Result<Paragraph<'a>, Deb822Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let input = self.input;
        let bytes = input.as_bytes();

        // Skip separators and comments before the paragraph.
        loop {
            let line = self.peek_line()?;
            if bytes[line.start] == b'#' || self.is_blank(line) {
                self.advance(line);
            } else {
                break;
            }
        }

        let first_line = self.line;
        let mut fields: Vec<(&'a str, &'a str)> = Vec::with_capacity(self.capacity);
        // The field being read: name and value bounds, extended by
        // continuation lines.
        let mut current: Option<(&'a str, usize, usize)> = None;

        while let Some(line) = self.peek_line() {
            let first = bytes[line.start];
            if first == b'#' {
                self.advance(line);
                continue;
            }
            if first == b' ' || first == b'\t' {
                if self.is_blank(line) {
                    self.advance(line);
                    break;
                }
                let Some((_, _, value_end)) = current.as_mut() else {
                    let err = Deb822Error::OrphanContinuation {
                        line: self.line,
                        text: self.text(line),
                    };
                    return self.fail(err);
                };
                *value_end = self.trimmed_end(line, line.start);
                self.advance(line);
                continue;
            }
            if self.is_blank(line) {
                // Whitespace-only line not starting with a blank, e.g. "\r".
                self.advance(line);
                break;
            }

            // A `Name: value` line. The name runs up to the colon and must
            // be printable ASCII without spaces, not starting with '-'.
            let mut colon = None;
            let mut bad_name = first == b'-';
            for (i, &b) in bytes[line.start..line.end].iter().enumerate() {
                if b == b':' {
                    colon = Some(line.start + i);
                    break;
                }
                if b <= b' ' || b == 0x7f {
                    bad_name = true;
                }
            }
            let Some(colon) = colon else {
                let err = Deb822Error::MalformedLine {
                    line: self.line,
                    text: self.text(line),
                };
                return self.fail(err);
            };
            if bad_name || colon == line.start {
                let err = Deb822Error::InvalidFieldName {
                    line: self.line,
                    name: input[line.start..colon].to_owned(),
                };
                return self.fail(err);
            }

            if let Some((name, start, end)) = current.take() {
                fields.push((name, &input[start..end]));
            }
            let mut value_start = colon + 1;
            while value_start < line.end && matches!(bytes[value_start], b' ' | b'\t') {
                value_start += 1;
            }
            let value_end = self.trimmed_end(line, value_start);
            current = Some((&input[line.start..colon], value_start, value_end));
            self.advance(line);
        }

        if let Some((name, start, end)) = current {
            fields.push((name, &input[start..end]));
        }
        self.capacity = self.capacity.max(fields.len());
        Some(Ok(Paragraph {
            fields,
            line: first_line,
        }))
    }
}

/// The lines of a multi-line value such as `SHA256` in a `Release` file,
/// each trimmed, without the (usually empty) first line when it is empty,
/// and without comment lines.
pub fn multiline_lines(value: &str) -> impl Iterator<Item = &str> {
    value
        .split('\n')
        .enumerate()
        .filter(|(i, line)| *i == 0 || !line.starts_with('#'))
        .map(|(_, line)| line.trim())
        .enumerate()
        .filter(|(i, line)| *i != 0 || !line.is_empty())
        .map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &str) -> Vec<Paragraph<'_>> {
        paragraphs(input)
            .collect::<Result<Vec<_>, _>>()
            .expect("valid input")
    }

    const PACKAGES: &str = "\
Package: libc6
Source: glibc
Version: 2.36-9+deb12u4
Installed-Size: 12986
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Depends: libgcc-s1
Recommends: libidn2-0 (>= 2.0.5~)
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
 .
 This package includes shared versions of the standard C library.
Multi-Arch: same
SHA256: 0a1c2ad7b1f9f0f0c5d9b8e6e4b7d8a2f9d3c5e6a7b8c9d0e1f2a3b4c5d6e7f8

Package: debconf
Version: 1.5.82
Pre-Depends: perl-base (>= 5.20.1-3~)
";

    #[test]
    fn parses_packages_paragraphs() {
        let paras = parse_all(PACKAGES);
        assert_eq!(paras.len(), 2);
        let libc = &paras[0];
        assert_eq!(libc.line(), 1);
        assert_eq!(libc.len(), 11);
        assert_eq!(libc.get("Package"), Some("libc6"));
        assert_eq!(libc.get("package"), Some("libc6"));
        assert_eq!(libc.get("MULTI-ARCH"), Some("same"));
        assert_eq!(libc.get("Installed-Size"), Some("12986"));
        assert_eq!(libc.get("Missing"), None);
        assert_eq!(
            libc.get("Description"),
            Some(
                "GNU C Library: Shared libraries\n \
                 Contains the standard libraries that are used by nearly all programs on\n \
                 the system.\n .\n \
                 This package includes shared versions of the standard C library."
            )
        );
        let names: Vec<&str> = libc.fields().map(|(n, _)| n).collect();
        assert_eq!(names[..3], ["Package", "Source", "Version"]);
        assert_eq!(paras[1].line(), 17);
        assert_eq!(
            paras[1].get("Pre-Depends"),
            Some("perl-base (>= 5.20.1-3~)")
        );
    }

    #[test]
    fn values_borrow_from_input() {
        let paras = parse_all(PACKAGES);
        let value = paras[0].get("Description").unwrap();
        let range = PACKAGES.as_bytes().as_ptr_range();
        assert!(range.contains(&value.as_ptr()));
    }

    #[test]
    fn trims_values() {
        let input = "A:value\nB:  \t spaced \t \nC:\nD:   \nE: x:y: z\r\n";
        let p = &parse_all(input)[0];
        assert_eq!(p.get("A"), Some("value"));
        assert_eq!(p.get("B"), Some("spaced"));
        assert_eq!(p.get("C"), Some(""));
        assert_eq!(p.get("D"), Some(""));
        assert_eq!(p.get("E"), Some("x:y: z"));
    }

    #[test]
    fn release_file_checksums() {
        let release = "\
Origin: Debian
Suite: stable
Codename: bookworm
SHA256:
 1c4e5b2d8a7f3b9e6d0c2a4f8e1b3d5c7a9e0f2b4d6c8a0e2f4b6d8c0a2e4f6b  1484 contrib/Contents-all
 9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d 98581 contrib/Contents-all.gz \r
Acquire-By-Hash: yes
";
        let p = &parse_all(release)[0];
        let sha = p.get("SHA256").unwrap();
        assert!(sha.starts_with("\n 1c4e"));
        let lines: Vec<&str> = multiline_lines(sha).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("1484 contrib/Contents-all"));
        assert!(lines[1].ends_with("98581 contrib/Contents-all.gz"));
        assert_eq!(p.get("Acquire-By-Hash"), Some("yes"));
    }

    #[test]
    fn multiline_lines_keeps_nonempty_first_line() {
        let lines: Vec<&str> = multiline_lines("first\n second \n\tthird").collect();
        assert_eq!(lines, ["first", "second", "third"]);
        assert_eq!(multiline_lines("").count(), 0);
        let lines: Vec<&str> = multiline_lines("#not a comment\n a\n# comment\n b").collect();
        assert_eq!(lines, ["#not a comment", "a", "b"]);
    }

    #[test]
    fn blank_lines_comments_and_crlf() {
        let input = "\n\n# leading comment\nA: 1\n# inside\nB: 2\n \t \n\n\nC: 3\r\n\r\nD: 4\n\n# trailing\n\n";
        let paras = parse_all(input);
        assert_eq!(paras.len(), 3);
        assert_eq!(paras[0].line(), 4);
        assert_eq!(
            paras[0].fields().collect::<Vec<_>>(),
            [("A", "1"), ("B", "2")]
        );
        assert_eq!(paras[1].line(), 10);
        assert_eq!(paras[1].get("c"), Some("3"));
        assert_eq!(paras[2].line(), 12);
        assert_eq!(paras[2].get("D"), Some("4"));
        assert!(parse_all("").is_empty());
        assert!(parse_all("\n  \n# only a comment\n").is_empty());
    }

    #[test]
    fn no_trailing_newline() {
        let paras = parse_all("A: 1\n continued");
        assert_eq!(paras[0].get("A"), Some("1\n continued"));
    }

    #[test]
    fn comment_between_continuation_lines_stays_in_slice() {
        let p = &parse_all("Depends: a,\n# note\n b\nX: y\n")[0];
        let value = p.get("Depends").unwrap();
        assert_eq!(value, "a,\n# note\n b");
        assert_eq!(multiline_lines(value).collect::<Vec<_>>(), ["a,", "b"]);
        assert_eq!(p.get("X"), Some("y"));
    }

    #[test]
    fn errors_carry_line_numbers_and_recover() {
        let input = "A: 1\n\nB: 2\nnot a field\nC: 3\n\nD: 4\n";
        let results: Vec<_> = paragraphs(input).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().get("A"), Some("1"));
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(
            *err,
            Deb822Error::MalformedLine {
                line: 4,
                text: "not a field".into()
            }
        );
        assert!(err.to_string().contains("line 4"));
        let d = results[2].as_ref().unwrap();
        assert_eq!((d.get("D"), d.line()), (Some("4"), 7));
    }

    #[test]
    fn error_kinds() {
        let first_err = |s: &str| paragraphs(s).find_map(Result::err).unwrap();
        assert_eq!(
            first_err(" orphan\nA: 1\n"),
            Deb822Error::OrphanContinuation {
                line: 1,
                text: " orphan".into()
            }
        );
        assert_eq!(
            first_err("A: 1\n: no name\n"),
            Deb822Error::InvalidFieldName {
                line: 2,
                name: String::new()
            }
        );
        assert_eq!(first_err("Bad Name: x\n").line(), 1);
        assert_eq!(first_err("A: 1\n-Dash: x\n").line(), 2);
        let pgp = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\n";
        assert!(matches!(
            first_err(pgp),
            Deb822Error::MalformedLine { line: 1, .. }
        ));
    }

    #[test]
    fn display_round_trips() {
        let paras = parse_all(PACKAGES);
        let text: String = paras
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let again = parse_all(&text);
        assert_eq!(paras.len(), again.len());
        for (a, b) in paras.iter().zip(&again) {
            assert_eq!(
                a.fields().collect::<Vec<_>>(),
                b.fields().collect::<Vec<_>>()
            );
        }
        let release = parse_all("SHA256:\n abc 1 f\n");
        let again = release[0].to_string();
        assert_eq!(again, "SHA256:\n abc 1 f\n");
    }

    /// Builds a synthetic `Packages` file shaped like Debian's (about 900
    /// bytes and 20 fields per paragraph).
    fn synthetic_packages(paragraph_count: usize) -> String {
        let mut s = String::new();
        for i in 0..paragraph_count {
            s.push_str(&format!(
                "Package: pkg{i}\nSource: src{i} (1.{i}-1)\nVersion: 1.{i}-1+b1\n\
                 Installed-Size: {i}\nMaintainer: Someone <someone@example.org>\n\
                 Architecture: amd64\nMulti-Arch: same\n\
                 Depends: libc6 (>= 2.34), libgcc-s1 (>= 3.0), libstdc++6 (>= 12), zlib1g (>= 1:1.2.0)\n\
                 Breaks: old{i} (<< 1.0)\nReplaces: old{i} (<< 1.0)\n\
                 Description: synthetic package number {i}\n\
                 Description-md5: 0123456789abcdef0123456789abcdef\n\
                 Homepage: https://example.org/{i}\nTag: devel::library, role::shared-lib\n\
                 Section: libs\nPriority: optional\nFilename: pool/main/p/pkg{i}/pkg{i}_1.{i}-1+b1_amd64.deb\n\
                 Size: 123456\nMD5sum: 0123456789abcdef0123456789abcdef\n\
                 SHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\n"
            ));
        }
        s
    }

    #[test]
    fn synthetic_index_parses() {
        let text = synthetic_packages(500);
        let mut count = 0;
        for p in paragraphs(&text) {
            let p = p.unwrap();
            assert_eq!(p.len(), 20);
            assert_eq!(p.get("Package"), Some(format!("pkg{count}").as_str()));
            count += 1;
        }
        assert_eq!(count, 500);
    }
}
