//! Package relationship fields: `Depends`, `Pre-Depends`, `Recommends`,
//! `Suggests`, `Conflicts`, `Breaks`, `Provides`, `Replaces`.
//!
//! The resolver reads these for every candidate package, so the parsed form
//! borrows names and versions from the field text instead of copying them.

use std::cmp::Ordering;
use std::fmt;

use crate::version::{self, VersionError};

/// A version comparison operator in a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `<<`: strictly earlier.
    Lt,
    /// `<=` (also the obsolete `<`, which dpkg has always read as `<=`).
    Le,
    /// `=`: exactly this version.
    Eq,
    /// `>=` (also the obsolete `>`, which dpkg has always read as `>=`).
    Ge,
    /// `>>`: strictly later.
    Gt,
}

impl Op {
    /// Parses an operator symbol, accepting the obsolete `<` and `>`.
    pub fn from_symbol(symbol: &str) -> Option<Op> {
        Some(match symbol {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    /// The dpkg symbol for this operator (never an obsolete spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Whether a candidate satisfies the operator, given
    /// `ord = compare(candidate, constraint_version)`.
    pub fn matches(self, ord: Ordering) -> bool {
        match self {
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Gt => ord == Ordering::Greater,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One package reference, e.g. `python3:any (>= 3.11~)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dep<'a> {
    /// Package (or virtual package) name.
    pub name: &'a str,
    /// Architecture qualifier after ':' (`any`, `native`, `amd64`, ...).
    pub arch: Option<&'a str>,
    /// Version constraint; the version text is checked to be a valid
    /// version but kept as written.
    pub constraint: Option<(Op, &'a str)>,
}

impl Dep<'_> {
    /// Whether a package at version `v` satisfies the version constraint
    /// (always true without one). Names and architectures are the caller's
    /// business.
    pub fn satisfied_by_version(&self, v: &str) -> bool {
        match self.constraint {
            None => true,
            Some((op, wanted)) => op.matches(version::compare(v, wanted)),
        }
    }
}

impl fmt::Display for Dep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if let Some(arch) = self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, v)) = self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// Formats a group of alternatives as `a (>= 1) | b`, for messages.
pub fn fmt_group(group: &[Dep<'_>]) -> String {
    let mut out = String::new();
    for (i, dep) in group.iter().enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        out.push_str(&dep.to_string());
    }
    out
}

/// Why a relationship field was rejected. Each variant carries the
/// offending text so the message can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error("empty alternative in {group:?}")]
    EmptyAlternative { group: String },
    #[error("invalid package name {name:?} in {text:?}")]
    InvalidName { name: String, text: String },
    #[error("invalid architecture qualifier {arch:?} in {text:?}")]
    InvalidArch { arch: String, text: String },
    #[error("invalid version operator {op:?} in {text:?}")]
    InvalidOperator { op: String, text: String },
    #[error("missing version in {text:?}")]
    MissingVersion { text: String },
    #[error("invalid version in {text:?}: {source}")]
    InvalidVersion {
        text: String,
        #[source]
        source: VersionError,
    },
    #[error("unclosed '{open}' in {text:?}")]
    Unclosed { open: char, text: String },
    #[error("invalid restriction {restriction:?} in {text:?}")]
    InvalidRestriction { restriction: String, text: String },
    #[error("unexpected {found:?} in {text:?}")]
    Unexpected { found: String, text: String },
    #[error("alternatives are not allowed in Provides: {text:?}")]
    AlternativeInProvides { text: String },
}

/// Parses a relationship field into groups (separated by ',') of
/// alternatives (separated by '|'). Every group must be satisfied; within a
/// group any one alternative will do.
///
/// Whitespace, including the newlines of folded fields, may appear between
/// any tokens. Empty groups (such as after a trailing comma) are skipped.
/// Architecture restrictions (`[amd64 !i386]`) and build profiles
/// (`<!nocheck>`) are checked for well-formedness and then ignored: they only
/// matter when building source packages, and in binary package indices the
/// alternative they qualify must be kept.
pub fn parse_relations(field: &str) -> Result<Vec<Vec<Dep<'_>>>, RelationError> {
    let mut groups = Vec::new();
    for group in field.split(',') {
        if is_blank(group) {
            continue;
        }
        let mut alternatives = Vec::with_capacity(1);
        for alternative in group.split('|') {
            if is_blank(alternative) {
                return Err(RelationError::EmptyAlternative {
                    group: group.trim().to_owned(),
                });
            }
            alternatives.push(parse_dep(alternative)?);
        }
        groups.push(alternatives);
    }
    Ok(groups)
}

/// Parses a `Provides` field: a comma-separated list without alternatives.
///
/// Policy only allows `=` constraints here, but any operator is accepted and
/// recorded so that odd archives still load; the resolver decides what to
/// make of them.
pub fn parse_provides(field: &str) -> Result<Vec<Dep<'_>>, RelationError> {
    let mut deps = Vec::new();
    for item in field.split(',') {
        if is_blank(item) {
            continue;
        }
        if item.contains('|') {
            return Err(RelationError::AlternativeInProvides {
                text: item.trim().to_owned(),
            });
        }
        deps.push(parse_dep(item)?);
    }
    Ok(deps)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_blank(s: &str) -> bool {
    s.bytes().all(is_ws)
}

fn trim_ws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8))
}

/// dpkg's package-name rule: starts alphanumeric, then alphanumerics or
/// `-+._` (dpkg still tolerates the deprecated '_').
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b'_'))
}

fn valid_arch(arch: &str) -> bool {
    !arch.is_empty() && arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks the inside of `[...]` or `<...>`: one or more optionally negated
/// architecture or profile names.
fn valid_restriction(inner: &str) -> bool {
    let mut tokens = inner
        .split(|c: char| c.is_ascii() && is_ws(c as u8))
        .filter(|t| !t.is_empty())
        .peekable();
    tokens.peek().is_some()
        && tokens.all(|t| {
            let t = t.strip_prefix('!').unwrap_or(t);
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'+' | b'_'))
        })
}

/// Parses one alternative such as `libc6:amd64 (>= 2.34) [linux-any]`.
fn parse_dep(text: &str) -> Result<Dep<'_>, RelationError> {
    let s = trim_ws(text);
    let b = s.as_bytes();
    let owned = || s.to_owned();
    let skip_ws = |mut i: usize| {
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        i
    };
    let token_end = |mut i: usize, stop_at_colon: bool| {
        let ends_token =
            |c: u8| is_ws(c) || matches!(c, b'(' | b'[' | b'<') || (stop_at_colon && c == b':');
        while i < b.len() && !ends_token(b[i]) {
            i += 1;
        }
        i
    };

    let mut i = token_end(0, true);
    let name = &s[..i];
    if !valid_name(name) {
        return Err(RelationError::InvalidName {
            name: name.to_owned(),
            text: owned(),
        });
    }

    let mut arch = None;
    if b.get(i) == Some(&b':') {
        let end = token_end(i + 1, false);
        let a = &s[i + 1..end];
        if !valid_arch(a) {
            return Err(RelationError::InvalidArch {
                arch: a.to_owned(),
                text: owned(),
            });
        }
        arch = Some(a);
        i = end;
    }

    i = skip_ws(i);
    let mut constraint = None;
    if b.get(i) == Some(&b'(') {
        let close = match s[i..].find(')') {
            Some(n) => i + n,
            None => {
                return Err(RelationError::Unclosed {
                    open: '(',
                    text: owned(),
                })
            }
        };
        let inner = trim_ws(&s[i + 1..close]);
        let op_len = inner
            .bytes()
            .take_while(|b| matches!(b, b'<' | b'>' | b'='))
            .count();
        let Some(op) = Op::from_symbol(&inner[..op_len]) else {
            return Err(RelationError::InvalidOperator {
                op: inner[..op_len].to_owned(),
                text: owned(),
            });
        };
        let v = trim_ws(&inner[op_len..]);
        if v.is_empty() {
            return Err(RelationError::MissingVersion { text: owned() });
        }
        if let Err(kind) = version::split_checked(v) {
            return Err(RelationError::InvalidVersion {
                text: owned(),
                source: VersionError::new(v, kind),
            });
        }
        constraint = Some((op, v));
        i = close + 1;
    }

    // Architecture restrictions and build-profile groups, in any number.
    loop {
        i = skip_ws(i);
        let Some(&open) = b.get(i) else { break };
        let close_char = match open {
            b'[' => ']',
            b'<' => '>',
            _ => {
                return Err(RelationError::Unexpected {
                    found: s[i..].to_owned(),
                    text: owned(),
                })
            }
        };
        let Some(n) = s[i..].find(close_char) else {
            return Err(RelationError::Unclosed {
                open: char::from(open),
                text: owned(),
            });
        };
        let close = i + n;
        if !valid_restriction(&s[i + 1..close]) {
            return Err(RelationError::InvalidRestriction {
                restriction: s[i..=close].to_owned(),
                text: owned(),
            });
        }
        i = close + 1;
    }

    Ok(Dep {
        name,
        arch,
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep<'a>(name: &'a str, arch: Option<&'a str>, constraint: Option<(Op, &'a str)>) -> Dep<'a> {
        Dep {
            name,
            arch,
            constraint,
        }
    }

    fn shown(field: &str) -> Vec<String> {
        parse_relations(field)
            .unwrap()
            .iter()
            .map(|g| fmt_group(g))
            .collect()
    }

    #[test]
    fn realistic_depends() {
        let field =
            "libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, perl:any, python3:any (>= 3.11~)";
        let groups = parse_relations(field).unwrap();
        assert_eq!(
            groups,
            vec![
                vec![dep("libc6", None, Some((Op::Ge, "2.34")))],
                vec![
                    dep("debconf", None, Some((Op::Ge, "0.5"))),
                    dep("debconf-2.0", None, None)
                ],
                vec![dep("perl", Some("any"), None)],
                vec![dep("python3", Some("any"), Some((Op::Ge, "3.11~")))],
            ]
        );
        assert_eq!(fmt_group(&groups[1]), "debconf (>= 0.5) | debconf-2.0");
        assert_eq!(groups[3][0].to_string(), "python3:any (>= 3.11~)");
    }

    #[test]
    fn all_operators_and_obsolete_spellings() {
        let groups =
            parse_relations("a (<< 1), b (<= 1), c (= 1), d (>= 1), e (>> 1), f (< 1), g (> 1)")
                .unwrap();
        let ops: Vec<Op> = groups.iter().map(|g| g[0].constraint.unwrap().0).collect();
        assert_eq!(
            ops,
            [Op::Lt, Op::Le, Op::Eq, Op::Ge, Op::Gt, Op::Le, Op::Ge]
        );
        assert_eq!(shown("f (< 1)"), ["f (<= 1)"]);
        for op in [Op::Lt, Op::Le, Op::Eq, Op::Ge, Op::Gt] {
            assert_eq!(Op::from_symbol(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(Op::from_symbol("=>"), None);
    }

    #[test]
    fn op_matches() {
        use Ordering::*;
        let table = [
            (Op::Lt, [true, false, false]),
            (Op::Le, [true, true, false]),
            (Op::Eq, [false, true, false]),
            (Op::Ge, [false, true, true]),
            (Op::Gt, [false, false, true]),
        ];
        for (op, want) in table {
            let got = [Less, Equal, Greater].map(|o| op.matches(o));
            assert_eq!(got, want, "{op}");
        }
    }

    #[test]
    fn satisfied_by_version() {
        let g = parse_relations("libc6 (>= 2.36), gcc (<< 13~), foo, bar (= 1:2.0-1)").unwrap();
        assert!(g[0][0].satisfied_by_version("2.36-9+deb12u4"));
        assert!(!g[0][0].satisfied_by_version("2.35"));
        assert!(g[1][0].satisfied_by_version("12.2.0-14"));
        assert!(!g[1][0].satisfied_by_version("13~rc1"));
        assert!(!g[1][0].satisfied_by_version("13"));
        assert!(g[2][0].satisfied_by_version("anything"));
        assert!(g[3][0].satisfied_by_version("1:2.0-1"));
        assert!(!g[3][0].satisfied_by_version("2.0-1"));
    }

    #[test]
    fn whitespace_and_newlines_anywhere() {
        let field = "\n  libfoo1\t(>=1.0) ,\n libbar ( << 2:3 )|\n libbaz:native(=4)  ,\r\n";
        assert_eq!(
            shown(field),
            ["libfoo1 (>= 1.0)", "libbar (<< 2:3) | libbaz:native (= 4)"]
        );
    }

    #[test]
    fn empty_groups_skipped() {
        assert_eq!(shown("a, , b,"), ["a", "b"]);
        assert!(parse_relations("").unwrap().is_empty());
        assert!(parse_relations(" ,\n, ").unwrap().is_empty());
    }

    #[test]
    fn arch_restrictions_and_profiles_are_ignored() {
        let field = "libseccomp-dev [linux-any], gcc-multilib [amd64 !i386] <!nocheck> <stage1 cross> | gcc, \
                     dh-python <!nopython>, foo:any (>= 1) [any-amd64]";
        assert_eq!(
            shown(field),
            [
                "libseccomp-dev",
                "gcc-multilib | gcc",
                "dh-python",
                "foo:any (>= 1)"
            ]
        );
    }

    #[test]
    fn provides() {
        let p = parse_provides("awk, mail-transport-agent (= 1.0), libfoo-abi-2 (>= 3),\n editor")
            .unwrap();
        assert_eq!(
            p,
            vec![
                dep("awk", None, None),
                dep("mail-transport-agent", None, Some((Op::Eq, "1.0"))),
                dep("libfoo-abi-2", None, Some((Op::Ge, "3"))),
                dep("editor", None, None),
            ]
        );
        assert!(parse_provides("").unwrap().is_empty());
        assert_eq!(
            parse_provides("a | b").unwrap_err(),
            RelationError::AlternativeInProvides {
                text: "a | b".into()
            }
        );
    }

    #[test]
    fn names_with_allowed_punctuation() {
        assert_eq!(
            shown("libstdc++6, g++-12, libc6.1, python3.11, lib_old, 0ad"),
            [
                "libstdc++6",
                "g++-12",
                "libc6.1",
                "python3.11",
                "lib_old",
                "0ad"
            ]
        );
    }

    #[test]
    fn errors_name_offending_text() {
        let err = |f: &str| parse_relations(f).unwrap_err();
        assert_eq!(
            err("a, b | , c"),
            RelationError::EmptyAlternative {
                group: "b |".into()
            }
        );
        assert_eq!(
            err("a || b"),
            RelationError::EmptyAlternative {
                group: "a || b".into()
            }
        );
        assert_eq!(
            err("good, -bad"),
            RelationError::InvalidName {
                name: "-bad".into(),
                text: "-bad".into()
            }
        );
        assert_eq!(
            err("(>= 1)"),
            RelationError::InvalidName {
                name: String::new(),
                text: "(>= 1)".into()
            }
        );
        assert_eq!(
            err("foo@bar"),
            RelationError::InvalidName {
                name: "foo@bar".into(),
                text: "foo@bar".into()
            }
        );
        assert_eq!(
            err("perl:"),
            RelationError::InvalidArch {
                arch: String::new(),
                text: "perl:".into()
            }
        );
        assert_eq!(
            err("foo (=> 1)"),
            RelationError::InvalidOperator {
                op: "=>".into(),
                text: "foo (=> 1)".into()
            }
        );
        assert_eq!(
            err("foo (1.0)"),
            RelationError::InvalidOperator {
                op: String::new(),
                text: "foo (1.0)".into()
            }
        );
        assert_eq!(
            err("foo (>= )"),
            RelationError::MissingVersion {
                text: "foo (>= )".into()
            }
        );
        assert_eq!(
            err("foo (>= 1.0"),
            RelationError::Unclosed {
                open: '(',
                text: "foo (>= 1.0".into()
            }
        );
        assert_eq!(
            err("foo [amd64"),
            RelationError::Unclosed {
                open: '[',
                text: "foo [amd64".into()
            }
        );
        assert_eq!(
            err("foo []"),
            RelationError::InvalidRestriction {
                restriction: "[]".into(),
                text: "foo []".into()
            }
        );
        assert_eq!(
            err("foo bar"),
            RelationError::Unexpected {
                found: "bar".into(),
                text: "foo bar".into()
            }
        );
        assert_eq!(
            err("foo [amd64] (>= 1)"),
            RelationError::Unexpected {
                found: "(>= 1)".into(),
                text: "foo [amd64] (>= 1)".into()
            }
        );
        let e = err("foo (>= 1 2)");
        assert!(matches!(&e, RelationError::InvalidVersion { text, .. } if text == "foo (>= 1 2)"));
        let e = err("foo (>= a:1)");
        assert!(e.to_string().contains("a:1"), "{e}");
    }

    #[test]
    fn realistic_packages_fields() {
        // Shapes seen in Debian's Packages files.
        let pre = "libc6 (>= 2.36), libzstd1 (>= 1.5.2), zlib1g (>= 1:1.1.4)";
        assert_eq!(parse_relations(pre).unwrap().len(), 3);
        let breaks = "libapt-inst2.0 (<< 1.7.0~alpha), libapt-pkg-dev (<< 1.9.11~), \
                      aptitude (<< 0.8.10), apt-utils (<< 1.3~exp2~)";
        let g = parse_relations(breaks).unwrap();
        assert_eq!(g[3][0].constraint, Some((Op::Lt, "1.3~exp2~")));
        let conflicts = "systemd-shim (<< 10-4~), systemd-sysv:i386";
        assert_eq!(
            shown(conflicts),
            ["systemd-shim (<< 10-4~)", "systemd-sysv:i386"]
        );
        let recommends = "default-mta | mail-transport-agent, ca-certificates";
        assert_eq!(parse_relations(recommends).unwrap()[0].len(), 2);
    }
}
