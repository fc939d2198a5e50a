//! Debian package versions (`[epoch:]upstream[-revision]`) and their ordering.
//!
//! The ordering must agree with dpkg bit for bit: the resolver decides which
//! package an image gets by comparing versions, and any disagreement with
//! dpkg/apt would make Kiln pick packages that apt would not.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Largest epoch dpkg accepts (it stores epochs in a C `int`).
const MAX_EPOCH: u32 = i32::MAX as u32;

/// Why a version string was rejected.
///
/// Only the conditions dpkg treats as hard errors are reported. Things dpkg
/// merely warns about (an upstream part not starting with a digit, unusual
/// characters) are accepted so that odd but real-world versions still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum VersionErrorKind {
    #[error("version string is empty")]
    Empty,
    #[error("version string contains whitespace")]
    EmbeddedWhitespace,
    #[error("epoch is not a number")]
    InvalidEpoch,
    #[error("epoch is too big")]
    EpochTooBig,
    #[error("nothing after the epoch colon")]
    NothingAfterColon,
    #[error("upstream version is empty")]
    EmptyUpstream,
    #[error("revision is empty")]
    EmptyRevision,
}

/// A rejected version string together with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: {kind}")]
pub struct VersionError {
    input: String,
    kind: VersionErrorKind,
}

impl VersionError {
    pub(crate) fn new(input: &str, kind: VersionErrorKind) -> Self {
        VersionError {
            input: input.to_owned(),
            kind,
        }
    }

    /// The text that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What was wrong with it.
    pub fn kind(&self) -> VersionErrorKind {
        self.kind
    }
}

/// A parsed Debian version.
///
/// Equality, ordering and hashing follow dpkg, not the spelling: `1.0`,
/// `0:1.0`, `1.00` and `1.0-0` are all equal, so they also hash alike.
#[derive(Debug, Clone)]
pub struct Version {
    epoch: u32,
    upstream: String,
    revision: String,
}

impl Version {
    /// Parses a version the way dpkg does, but only failing on dpkg's hard
    /// errors (see [`VersionErrorKind`]). Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        let parts = split_checked(s).map_err(|kind| VersionError::new(s, kind))?;
        Ok(Version {
            epoch: parts.epoch,
            upstream: parts.upstream.to_owned(),
            revision: parts.revision.to_owned(),
        })
    }

    /// The epoch; 0 when the version has none.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The upstream part (between the epoch colon and the last hyphen).
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The Debian revision; empty when the version has none.
    pub fn revision(&self) -> &str {
        &self.revision
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A ':' anywhere after the epoch (dpkg allows it in the upstream
        // part, and this parser in the revision) needs the epoch spelled out
        // even when it is 0, or re-parsing would read a different epoch.
        if self.epoch != 0 || self.upstream.contains(':') || self.revision.contains(':') {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if !self.revision.is_empty() {
            write!(f, "-{}", self.revision)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream.as_bytes(), other.upstream.as_bytes()))
            .then_with(|| verrevcmp(self.revision.as_bytes(), other.revision.as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.epoch);
        hash_part(self.upstream.as_bytes(), state);
        hash_part(self.revision.as_bytes(), state);
    }
}

/// Compares two version strings with dpkg's ordering, without allocating.
///
/// This is the resolver's hot path, so it works on the raw text instead of
/// going through [`Version::parse`]. Valid versions compare exactly as dpkg
/// does. Invalid ones are not rejected; they still get a consistent total
/// order, which is all a sort needs, but that order is otherwise unspecified.
pub fn compare(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (ea, ua, ra) = split_lenient(a);
    let (eb, ub, rb) = split_lenient(b);
    // Epochs are digit strings, for which verrevcmp is a numeric comparison
    // of unbounded length.
    verrevcmp(ea, eb)
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

/// Borrowed pieces of a validated version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) epoch: u32,
    pub(crate) upstream: &'a str,
    pub(crate) revision: &'a str,
}

/// dpkg's notion of whitespace (C `isspace` in the C locale).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn trim_space(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_space(c as u8))
}

/// Validates and splits a version without allocating; shared with the
/// relation parser, which checks versions in constraints.
pub(crate) fn split_checked(s: &str) -> Result<Parts<'_>, VersionErrorKind> {
    let s = trim_space(s);
    if s.is_empty() {
        return Err(VersionErrorKind::Empty);
    }
    if s.bytes().any(is_space) {
        return Err(VersionErrorKind::EmbeddedWhitespace);
    }
    let (epoch, rest) = match s.find(':') {
        Some(i) => {
            let digits = &s[..i];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionErrorKind::InvalidEpoch);
            }
            let mut epoch: u32 = 0;
            for d in digits.bytes() {
                epoch = epoch
                    .checked_mul(10)
                    .and_then(|e| e.checked_add(u32::from(d - b'0')))
                    .filter(|&e| e <= MAX_EPOCH)
                    .ok_or(VersionErrorKind::EpochTooBig)?;
            }
            let rest = &s[i + 1..];
            if rest.is_empty() {
                return Err(VersionErrorKind::NothingAfterColon);
            }
            (epoch, rest)
        }
        None => (0, s),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => {
            let revision = &rest[i + 1..];
            if revision.is_empty() {
                return Err(VersionErrorKind::EmptyRevision);
            }
            (&rest[..i], revision)
        }
        None => (rest, ""),
    };
    if upstream.is_empty() {
        return Err(VersionErrorKind::EmptyUpstream);
    }
    Ok(Parts {
        epoch,
        upstream,
        revision,
    })
}

/// Splits into (epoch digits, upstream, revision) without any validation.
fn split_lenient(s: &str) -> (&[u8], &[u8], &[u8]) {
    let s = trim_space(s).as_bytes();
    let (epoch, rest) = match s.iter().position(|&b| b == b':') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (&s[..0], s),
    };
    match rest.iter().rposition(|&b| b == b'-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, &rest[rest.len()..]),
    }
}

/// Weight of one character in a non-digit run; `None` is the end of the
/// string. Tilde sorts before everything including the end, letters before
/// all other characters, and digits/end weigh 0 because they end the run.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn is_digit(c: Option<u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

/// dpkg's comparison of one version part: alternating runs of non-digits
/// (compared character by character with [`order`]) and digits (compared as
/// numbers of any length: leading zeros dropped, then longer wins, then the
/// first differing digit decides).
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let at = |s: &[u8], i: usize| s.get(i).copied();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        loop {
            let (ca, cb) = (at(a, i), at(b, j));
            let a_text = ca.is_some() && !is_digit(ca);
            let b_text = cb.is_some() && !is_digit(cb);
            if !a_text && !b_text {
                break;
            }
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == Some(b'0') {
            i += 1;
        }
        while at(b, j) == Some(b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while let (Some(x), Some(y)) = (at(a, i), at(b, j)) {
            if !x.is_ascii_digit() || !y.is_ascii_digit() {
                break;
            }
            if first_diff == Ordering::Equal {
                first_diff = x.cmp(&y);
            }
            i += 1;
            j += 1;
        }
        if is_digit(at(a, i)) {
            return Ordering::Greater;
        }
        if is_digit(at(b, j)) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// Hashes a version part so that parts equal under [`verrevcmp`] hash alike.
///
/// Two parts are equal exactly when their (non-digit run, number) sequences
/// match with leading zeros dropped, a run ending without digits counting as
/// number 0, and an all-zero (or empty) part equal to the empty part. The
/// separator bytes never occur in UTF-8, so the encoding is unambiguous.
fn hash_part<H: Hasher>(s: &[u8], state: &mut H) {
    if s.iter().all(|&b| b == b'0') {
        state.write_u8(0xfd);
        return;
    }
    let mut i = 0;
    while i < s.len() {
        let start = i;
        while i < s.len() && !s[i].is_ascii_digit() {
            i += 1;
        }
        state.write(&s[start..i]);
        state.write_u8(0xff);
        while i < s.len() && s[i] == b'0' {
            i += 1;
        }
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        state.write(&s[start..i]);
        state.write_u8(0xfe);
    }
    state.write_u8(0xfd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::collections::HashSet;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use Ordering::{Equal as EQ, Greater as GT, Less as LT};

    /// Comparison facts from dpkg's own test suites (the C library tests and
    /// the Dpkg::Version Perl tests), plus cases covering the tricky corners
    /// of the algorithm. Each row: left, right, expected ordering.
    const CASES: &[(&str, &str, Ordering)] = &[
        // Library tests, version objects written out as strings.
        ("0-0", "0-0", EQ),
        ("0-00", "00-0", EQ),
        ("1:2-3", "1:2-3", EQ),
        ("0-0", "1:0-0", LT),
        ("a-0", "b-0", LT),
        ("0-a", "0-b", LT),
        ("1-1", "2-1", LT),
        ("1-1", "1-2", LT),
        ("0", "0:0", EQ),
        ("0:0-0", "0-0", EQ),
        ("0:0.0-0.0", "0.0-0.0", EQ),
        ("1:0", "1:0", EQ),
        ("5:1", "5:1", EQ),
        ("0:0-0-0", "0-0-0", EQ),
        ("0:0:0-0", "0:0:0-0", EQ),
        ("0:09azAZ.-+~:-0", "0:09azAZ.-+~:-0", EQ),
        ("0:0-azAZ09.+~", "0-azAZ09.+~", EQ),
        // Perl module tests.
        ("1.0-1", "2.0-2", LT),
        ("2.2~rc-4", "2.2-1", LT),
        ("2.2-1", "2.2~rc-4", GT),
        ("1.0000-1", "1.0-1", EQ),
        ("1", "0:1", EQ),
        ("0", "0:0-0", EQ),
        ("2:2.5", "1:7.5", GT),
        ("1:0foo", "0foo", GT),
        ("0:0foo", "0foo", EQ),
        ("0foo", "0foo", EQ),
        ("0foo-", "0foo", EQ),
        ("0foo-", "0foo-0", EQ),
        ("0foo", "0fo", GT),
        ("0foo-", "0foo+", LT),
        ("0foo~1", "0foo", LT),
        ("0foo~foo+Bar", "0foo~foo+bar", LT),
        ("0foo~~", "0foo~", LT),
        ("1~", "1", LT),
        (
            "12345+that-really-is-some-ver-0",
            "12345+that-really-is-some-ver-10",
            LT,
        ),
        ("0foo-0", "0foo-01", LT),
        ("0foo.bar", "0foobar", GT),
        ("0foo.bar", "0foo1bar", GT),
        ("0foo.bar", "0foo0bar", GT),
        ("0foo1bar-1", "0foobar-1", LT),
        ("0foo2.0", "0foo2", GT),
        ("0foo2.0.0", "0foo2.10.0", LT),
        ("0foo2.0", "0foo2.0.0", LT),
        ("0foo2.0", "0foo2.10", LT),
        ("0foo2.1", "0foo2.10", LT),
        ("1.09", "1.9", EQ),
        ("1.0.8+nmu1", "1.0.8", GT),
        ("3.11", "3.10+nmu1", GT),
        ("0.9j-20080306-4", "0.9i-20070324-2", GT),
        ("1.2.0~b7-1", "1.2.0~b6-1", GT),
        ("1.011-1", "1.06-2", GT),
        ("0.0.9+dfsg1-1", "0.0.8+dfsg1-3", GT),
        ("4.6.99+svn6582-1", "4.6.99+svn6496-1", GT),
        ("53", "52", GT),
        ("0.9.9~pre122-1", "0.9.9~pre111-1", GT),
        ("2:2.3.2-2+lenny2", "2:2.3.2-2", GT),
        ("1:3.8.1-1", "3.8.GA-1", GT),
        ("1.0.1+gpl-1", "1.0.1-2", GT),
        ("1a", "1000a", LT),
        ("-0.6.5", "0.9.1", LT),
        // Corners: missing/zero revision, trailing zero runs, tilde vs end.
        ("1.0-0", "1.0", EQ),
        ("1.", "1.0", EQ),
        ("1a", "1a0", EQ),
        ("0.1", ".1", LT),
        ("1.0~rc1", "1.0", LT),
        ("1.0~~", "1.0~~a", LT),
        ("1.0~", "1.0~a", LT),
        ("1.0", "1.0a", LT),
        ("1.0a", "1.0+", LT),
        ("1.0+", "1.0.", LT),
        ("1.0", "1.0+b1", LT),
        ("1:1.0", "2.0", GT),
        ("10:1", "9:2", GT),
        ("010:1", "10:1", EQ),
        ("2.34-0ubuntu3", "2.34-0ubuntu3.2", LT),
        ("2.36-9+deb12u4", "2.36-9+deb12u10", LT),
        // Numbers beyond u64 must not overflow.
        (
            "1.123456789012345678901234567890",
            "1.123456789012345678901234567891",
            LT,
        ),
        ("1.00000000000000000000000000000000001", "1.1", EQ),
        (
            "1.99999999999999999999999",
            "1.100000000000000000000000",
            LT,
        ),
        ("99999999999999999999999999:1", "1:1", GT),
        // Leading/trailing whitespace is ignored, as in dpkg.
        (" 1.0 ", "1.0", EQ),
    ];

    fn hash_of(v: &Version) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn table_compare() {
        for &(a, b, want) in CASES {
            assert_eq!(compare(a, b), want, "compare({a:?}, {b:?})");
            assert_eq!(compare(b, a), want.reverse(), "compare({b:?}, {a:?})");
        }
    }

    #[test]
    fn table_version_ord_eq_hash() {
        for &(a, b, want) in CASES {
            let (Ok(va), Ok(vb)) = (Version::parse(a), Version::parse(b)) else {
                continue;
            };
            assert_eq!(va.cmp(&vb), want, "{a:?} cmp {b:?}");
            assert_eq!(va == vb, want == EQ, "{a:?} == {b:?}");
            if want == EQ {
                assert_eq!(hash_of(&va), hash_of(&vb), "hash {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn parse_splits_parts() {
        let v = Version::parse("2:1.2-3-4").unwrap();
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (2, "1.2-3", "4"));
        let v = Version::parse("0:0:0-0").unwrap();
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (0, "0:0", "0"));
        let v = Version::parse("\t 0:0-1  \t").unwrap();
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (0, "0", "1"));
        let v: Version = "1.0".parse().unwrap();
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (0, "1.0", ""));
    }

    #[test]
    fn parse_is_lenient_about_dpkg_warnings() {
        for s in ["0:abc3-0", "abc", "0:0a!-0", "1@2", "0:0-0:0", "0:0-_"] {
            assert!(Version::parse(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn parse_rejects_dpkg_errors() {
        use VersionErrorKind::*;
        let cases = [
            ("", Empty),
            ("  ", Empty),
            ("0:0 0-1", EmbeddedWhitespace),
            ("-1:0-1", InvalidEpoch),
            ("a:0-0", InvalidEpoch),
            ("A:0-0", InvalidEpoch),
            (":1", InvalidEpoch),
            ("999999999999999999999999:0-1", EpochTooBig),
            ("2147483648:1", EpochTooBig),
            ("0:", NothingAfterColon),
            ("1:", NothingAfterColon),
            ("-0", EmptyUpstream),
            ("0:-0", EmptyUpstream),
            ("0foo-", EmptyRevision),
            ("0:0-", EmptyRevision),
        ];
        for (s, kind) in cases {
            let err = Version::parse(s).unwrap_err();
            assert_eq!(err.kind(), kind, "{s:?}");
            assert_eq!(err.input(), s);
        }
        assert_eq!(Version::parse("2147483647:1").unwrap().epoch(), 2147483647);
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            ("1.0", "1.0"),
            ("0:1.0", "1.0"),
            ("1:1.0-1", "1:1.0-1"),
            ("0:1:2-3", "0:1:2-3"),
            ("007:1", "7:1"),
            (" 1.0-1 ", "1.0-1"),
            ("1-2-3", "1-2-3"),
            // Found by the version fuzz target: a ':' only in the revision.
            ("0:0-0:0", "0:0-0:0"),
        ];
        for (input, shown) in cases {
            let v = Version::parse(input).unwrap();
            assert_eq!(v.to_string(), shown);
            let again = Version::parse(shown).unwrap();
            assert_eq!(again.epoch(), v.epoch());
            assert_eq!(again.upstream(), v.upstream());
            assert_eq!(again.revision(), v.revision());
        }
    }

    #[test]
    fn equal_versions_collapse_in_hash_set() {
        let set: HashSet<Version> = ["1.0", "0:1.0", "1.00", "1.0-0", "1.0-00", "01.0"]
            .iter()
            .map(|s| Version::parse(s).unwrap())
            .collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn sorting_matches_expected_order() {
        let mut vs: Vec<Version> = [
            "1.0", "1.0~rc1", "1:0.1", "1.0+b1", "1.0-1", "1.0~~", "0.9", "1.0a",
        ]
        .iter()
        .map(|s| Version::parse(s).unwrap())
        .collect();
        vs.sort();
        let shown: Vec<String> = vs.iter().map(Version::to_string).collect();
        assert_eq!(
            shown,
            ["0.9", "1.0~~", "1.0~rc1", "1.0", "1.0-1", "1.0a", "1.0+b1", "1:0.1"]
        );
    }

    /// Deterministic xorshift generator: reproducible pairs, no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A random valid version built from pieces that exercise every branch
    /// of the algorithm: tildes, letters vs punctuation, leading zeros,
    /// numbers longer than 64 bits, epochs and revisions.
    fn random_version(rng: &mut Rng) -> String {
        const NUMS: &[&str] = &[
            "0",
            "1",
            "2",
            "9",
            "10",
            "01",
            "001",
            "12",
            "100",
            "18446744073709551616",
            "018446744073709551615",
        ];
        const SEPS: &[&str] = &[".", "~", "+", "a", "b", "Z", "~~", ".a", "~rc", "+b", "."];
        let mut s = String::new();
        if rng.below(5) == 0 {
            s.push_str(rng.pick(&["0", "1", "2", "01", "10"]));
            s.push(':');
        }
        s.push_str(rng.pick(NUMS));
        for _ in 0..rng.below(4) {
            s.push_str(rng.pick(SEPS));
            if rng.below(4) != 0 {
                s.push_str(rng.pick(NUMS));
            }
        }
        if rng.below(2) == 0 {
            s.push('-');
            s.push_str(rng.pick(NUMS));
            for _ in 0..rng.below(3) {
                s.push_str(rng.pick(SEPS));
                s.push_str(rng.pick(NUMS));
            }
        }
        s
    }

    /// Generated pairs; half are small mutations of the left side so that
    /// near-equal versions (the interesting case) are well represented.
    fn generated_pairs(n: usize) -> Vec<(String, String)> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|k| {
                let a = random_version(&mut rng);
                let b = if k % 2 == 0 {
                    random_version(&mut rng)
                } else {
                    let mut b = a.clone();
                    match rng.below(4) {
                        0 => b.push('~'),
                        1 => b.push_str(rng.pick(&["0", ".0", "-0", "a", "+"])),
                        2 => b = format!("0:{b}"),
                        _ => b = b.replacen('1', "01", 1),
                    }
                    b
                };
                (a, b)
            })
            .collect()
    }

    /// What the host's dpkg says about each pair: `Some(ordering)`, or
    /// `None` when dpkg rejects one of the versions as invalid.
    fn dpkg_verdicts(pairs: &[(String, String)]) -> Vec<Option<Ordering>> {
        // One shell runs every comparison so the test costs one process
        // start plus one or two dpkg runs per pair.
        let script = r#"
            while read -r a b; do
                dpkg --compare-versions -- "$a" lt "$b" 2>/dev/null
                case $? in
                    0) echo lt ;;
                    1) if dpkg --compare-versions -- "$a" eq "$b" 2>/dev/null
                       then echo eq; else echo gt; fi ;;
                    *) echo err ;;
                esac
            done
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut input = String::new();
        for (a, b) in pairs {
            input.push_str(a);
            input.push(' ');
            input.push_str(b);
            input.push('\n');
        }
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("run sh");
        writer.join().unwrap().expect("write pairs");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let verdicts: Vec<_> = text
            .lines()
            .map(|l| match l {
                "lt" => Some(LT),
                "eq" => Some(EQ),
                "gt" => Some(GT),
                "err" => None,
                other => panic!("unexpected output {other:?}"),
            })
            .collect();
        assert_eq!(verdicts.len(), pairs.len());
        verdicts
    }

    #[test]
    fn agrees_with_host_dpkg() {
        if !Path::new("/usr/bin/dpkg").exists() {
            eprintln!("skipping: /usr/bin/dpkg not installed");
            return;
        }
        let mut pairs: Vec<(String, String)> = CASES
            .iter()
            .map(|&(a, b, _)| (a.trim().to_owned(), b.trim().to_owned()))
            .collect();
        pairs.extend(generated_pairs(400));
        let verdicts = dpkg_verdicts(&pairs);
        let mut checked = 0;
        for ((a, b), verdict) in pairs.iter().zip(verdicts) {
            let (pa, pb) = (Version::parse(a), Version::parse(b));
            match verdict {
                Some(want) => {
                    checked += 1;
                    assert_eq!(compare(a, b), want, "compare({a:?}, {b:?}) vs dpkg");
                    let (va, vb) = (pa.unwrap(), pb.unwrap());
                    assert_eq!(va.cmp(&vb), want, "Version {a:?} cmp {b:?} vs dpkg");
                    if want == EQ {
                        assert_eq!(hash_of(&va), hash_of(&vb), "hash {a:?} vs {b:?}");
                    }
                }
                // dpkg refused the input; so must we.
                None => assert!(
                    pa.is_err() || pb.is_err(),
                    "dpkg rejects {a:?} / {b:?} but we accept both"
                ),
            }
        }
        assert!(checked > 400, "only {checked} pairs were comparable");
    }
}
