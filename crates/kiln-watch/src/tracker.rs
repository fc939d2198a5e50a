//! The Debian security tracker's JSON (`tracker/data/json`): for each source
//! package, each issue (a CVE, or a `TEMP-…` id before one is assigned) and
//! each release, whether it is resolved and by which source version.
//!
//! Matching is the scanners' (Trivy, Grype): by source package name and
//! source version, in dpkg's order. A version below the release's
//! `fixed_version` is affected; `fixed_version` `0` means never affected; an
//! `open` or `undetermined` issue has no fix in that release yet.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::Deserialize;

/// The tracker's JSON is about 70 MB today; a file ten times that is not it.
pub const MAX_SIZE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("cannot read the security tracker's data {what}: {message}")]
    Read { what: String, message: String },
    #[error("the security tracker's data {what} is not the tracker's JSON: {message}")]
    Malformed { what: String, message: String },
}

impl TrackerError {
    pub fn hint(&self) -> String {
        match self {
            TrackerError::Read { .. } => "check the path or URL given to --security-tracker".into(),
            TrackerError::Malformed { .. } => "fetch the tracker's data/json again (a truncated \
                 download looks like this); the watch goes on without CVE data"
                .into(),
        }
    }
}

#[derive(Deserialize)]
struct RawIssue {
    #[serde(default)]
    releases: HashMap<String, RawRelease>,
}

#[derive(Deserialize)]
struct RawRelease {
    #[serde(default)]
    status: String,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
}

/// One issue's state in one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueState {
    /// The issue's id: `CVE-2024-1234` or `TEMP-…`.
    pub id: String,
    /// `resolved`, `open` or `undetermined`.
    pub status: String,
    pub fixed_version: Option<String>,
    pub urgency: Option<String>,
}

/// How an installed source version stands against one issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing<'a> {
    /// Affected, and fixed from this source version on.
    Fixed(&'a IssueState, &'a str),
    /// Affected, and the release has no fix yet.
    Open(&'a IssueState),
}

/// One issue's states, by release codename.
type PerRelease = HashMap<String, IssueState>;

/// The tracker's data, per source package.
#[derive(Debug, Default)]
pub struct Tracker {
    by_source: HashMap<String, Vec<(String, PerRelease)>>,
    /// How many issues it holds, for reports.
    pub issues: usize,
    /// Where it was read from.
    pub origin: String,
    /// DSAs and DLAs added with [`Tracker::load_advisories`].
    pub advisories: Vec<Advisory>,
}

impl Tracker {
    /// Parses the tracker's JSON. Anything that is not an object of source
    /// packages, each an object of issues with a `releases` object, is
    /// refused as a whole: a truncated file must not pass for one that
    /// lists fewer issues.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Tracker, TrackerError> {
        let raw: HashMap<String, HashMap<String, RawIssue>> = serde_json::from_slice(bytes)
            .map_err(|e| TrackerError::Malformed {
                what: origin.to_string(),
                message: e.to_string(),
            })?;
        let mut t = Tracker {
            origin: origin.to_string(),
            ..Default::default()
        };
        for (source, issues) in raw {
            let mut list = Vec::with_capacity(issues.len());
            for (id, issue) in issues {
                let releases = issue
                    .releases
                    .into_iter()
                    .map(|(rel, r)| {
                        (
                            rel,
                            IssueState {
                                id: id.clone(),
                                status: r.status,
                                fixed_version: r.fixed_version.filter(|v| !v.is_empty()),
                                urgency: r.urgency.filter(|u| !u.is_empty()),
                            },
                        )
                    })
                    .collect();
                list.push((id, releases));
            }
            // The same order whatever order the JSON had.
            list.sort_by(|a, b| a.0.cmp(&b.0));
            t.issues += list.len();
            t.by_source.insert(source, list);
        }
        Ok(t)
    }

    /// Reads the tracker's JSON from a file or an `http(s)://` URL.
    pub fn load(location: &str) -> Result<Tracker, TrackerError> {
        let bytes = if location.starts_with("http://") || location.starts_with("https://") {
            kiln_archive::Fetcher::new()
                .get(
                    location,
                    kiln_archive::Limit::stated(MAX_SIZE, "the security tracker's JSON"),
                )
                .map_err(|e| TrackerError::Read {
                    what: location.to_string(),
                    message: e.to_string(),
                })?
        } else {
            read_limited(std::path::Path::new(location)).map_err(|e| TrackerError::Read {
                what: location.to_string(),
                message: e.to_string(),
            })?
        };
        Tracker::parse(&bytes, location)
    }

    /// How source package `source` at `version` stands in `release` (a
    /// codename such as `bookworm`): every issue it is affected by, in id
    /// order. A version dpkg cannot order is compared as text, never skipped.
    pub fn standing<'a>(&'a self, source: &str, version: &str, release: &str) -> Vec<Standing<'a>> {
        let Some(list) = self.by_source.get(source) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (_, releases) in list {
            let Some(st) = releases.get(release) else {
                continue;
            };
            match (st.status.as_str(), st.fixed_version.as_deref()) {
                (_, Some("0")) => {}
                ("resolved", Some(fixed)) => {
                    if kiln_deb::version::compare(version, fixed) == Ordering::Less {
                        out.push(Standing::Fixed(st, fixed));
                    }
                }
                ("resolved", None) => {}
                (_, Some(fixed)) => {
                    // Open in the release but with a version that fixes it.
                    if kiln_deb::version::compare(version, fixed) == Ordering::Less {
                        out.push(Standing::Fixed(st, fixed));
                    }
                }
                (_, None) => out.push(Standing::Open(st)),
            }
        }
        out
    }
}

fn read_limited(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    f.take(MAX_SIZE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_SIZE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_SIZE >> 20
        )));
    }
    Ok(out)
}

/// apt's and the tracker's urgencies, least to most urgent, for picking
/// the most urgent of several.
pub fn urgency_rank(u: &str) -> u8 {
    match u.trim_end_matches('*') {
        "unimportant" => 1,
        "low" => 2,
        "not yet assigned" => 3,
        "medium" => 4,
        "high" => 5,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "openssl": {
        "CVE-2024-0001": {"description": "x", "releases": {
          "bookworm": {"status": "resolved", "fixed_version": "3.0.15-1~deb12u1", "urgency": "high",
                       "repositories": {"bookworm": "3.0.14-1~deb12u2"}}}},
        "CVE-2024-0002": {"releases": {
          "bookworm": {"status": "open", "urgency": "low", "repositories": {}}}},
        "CVE-2010-0003": {"releases": {
          "bookworm": {"status": "resolved", "fixed_version": "0", "urgency": "unimportant"}}},
        "CVE-2020-0004": {"releases": {
          "bookworm": {"status": "resolved", "fixed_version": "1.1.1-1", "urgency": "medium"}}}
      },
      "zlib": {"CVE-2023-0005": {"releases": {"trixie": {"status": "open"}}}}
    }"#;

    #[test]
    fn affected_versions_are_matched_in_dpkg_order() {
        let t = Tracker::parse(SAMPLE.as_bytes(), "sample").unwrap();
        assert_eq!(t.issues, 5);
        let s = t.standing("openssl", "3.0.14-1~deb12u2", "bookworm");
        let ids: Vec<String> = s
            .iter()
            .map(|x| match x {
                Standing::Fixed(st, v) => format!("{} fixed {v}", st.id),
                Standing::Open(st) => format!("{} open", st.id),
            })
            .collect();
        // Not the never-affected one, not the one fixed long before.
        assert_eq!(
            ids,
            ["CVE-2024-0001 fixed 3.0.15-1~deb12u1", "CVE-2024-0002 open"]
        );
        // The fixed version itself is not affected; `~` sorts before the release.
        assert_eq!(
            t.standing("openssl", "3.0.15-1~deb12u1", "bookworm").len(),
            1
        );
        assert_eq!(
            t.standing("openssl", "3.0.15-1~deb12u0", "bookworm").len(),
            2
        );
        // Another release, another package: nothing.
        assert!(t.standing("openssl", "1", "trixie").is_empty());
        assert!(t.standing("bash", "1", "bookworm").is_empty());
    }

    #[test]
    fn truncated_or_mistyped_data_is_refused_whole() {
        let cut = &SAMPLE.as_bytes()[..SAMPLE.len() / 2];
        let e = Tracker::parse(cut, "cut.json").unwrap_err();
        assert!(e.to_string().contains("cut.json"), "{e}");
        assert!(e.hint().contains("without CVE data"));
        for bad in [
            "[]",
            r#"{"openssl": []}"#,
            r#"{"openssl": {"CVE-1": {"releases": []}}}"#,
        ] {
            assert!(Tracker::parse(bad.as_bytes(), "bad").is_err(), "{bad}");
        }
        assert!(matches!(
            Tracker::load("/nonexistent/tracker.json"),
            Err(TrackerError::Read { .. })
        ));
    }

    #[test]
    fn urgencies_order() {
        assert!(urgency_rank("high") > urgency_rank("medium"));
        assert!(urgency_rank("medium**") > urgency_rank("low"));
        assert!(urgency_rank("low") > urgency_rank("unimportant"));
    }
}

/// One Debian security advisory (a DSA, or an LTS team's DLA) as the
/// tracker's `data/DSA/list` and `data/DLA/list` give it: its id, the
/// issues it fixes and, per release codename, the source version that
/// fixes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advisory {
    /// `DSA-6050-1`, `DLA-4300-1`.
    pub id: String,
    /// The source package it is about.
    pub source: String,
    pub cves: Vec<String>,
    /// (release codename, source package, fixed source version).
    pub fixed: Vec<(String, String, String)>,
}

/// A list of advisories is far smaller than this.
pub const MAX_ADVISORIES_SIZE: u64 = 256 << 20;

/// Parses a `DSA/list` or `DLA/list`:
///
/// ```text
/// [05 Dec 2025] DSA-6070-1 libxml2 - security update
///     {CVE-2025-1111 CVE-2025-2222}
///     [trixie] - libxml2 2.12.7+dfsg-3+deb13u2
///     [bookworm] - libxml2 2.9.14+dfsg-1.3~deb12u5
///     NOTE: …
/// ```
///
/// A line that fits none of these shapes is an error naming its number: a
/// damaged list must not pass for one that lists fewer fixes.
pub fn parse_advisories(text: &str, origin: &str) -> Result<Vec<Advisory>, TrackerError> {
    let bad = |n: usize, why: &str| TrackerError::Malformed {
        what: origin.to_string(),
        message: format!("line {n}: {why}"),
    };
    let mut out: Vec<Advisory> = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let n = k + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with("NOTE:") || t.starts_with("TODO:") {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            // [DD Mon YYYY] ID SOURCE - TEXT
            let rest = t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(_, r)| r.trim())
                .ok_or_else(|| bad(n, "an advisory starts with its [date]"))?;
            let mut w = rest.split_whitespace();
            let (Some(id), Some(source)) = (w.next(), w.next()) else {
                return Err(bad(n, "an advisory names its id and source package"));
            };
            let well_formed = (id.starts_with("DSA-") || id.starts_with("DLA-"))
                && id[4..].chars().all(|c| c.is_ascii_digit() || c == '-');
            if !well_formed {
                return Err(bad(n, &format!("{id:?} is no DSA or DLA id")));
            }
            out.push(Advisory {
                id: id.to_string(),
                source: source.to_string(),
                cves: Vec::new(),
                fixed: Vec::new(),
            });
            continue;
        }
        let Some(a) = out.last_mut() else {
            return Err(bad(n, "an indented line before any advisory"));
        };
        if let Some(ids) = t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            a.cves.extend(ids.split_whitespace().map(str::to_string));
        } else if let Some((rel, rest)) = t.strip_prefix('[').and_then(|r| r.split_once(']')) {
            // [RELEASE] - SOURCE VERSION [(notes)], or [RELEASE] - SOURCE <not-affected> …
            let mut w = rest.trim().trim_start_matches('-').split_whitespace();
            let (Some(source), Some(version)) = (w.next(), w.next()) else {
                return Err(bad(
                    n,
                    "a release line names the source package and its version",
                ));
            };
            if !version.starts_with('<') {
                a.fixed
                    .push((rel.to_string(), source.to_string(), version.to_string()));
            }
        } else {
            return Err(bad(n, "neither {CVE ids} nor a [release] line"));
        }
    }
    Ok(out)
}

impl Tracker {
    /// Adds the advisories of a `DSA/list` or `DLA/list` (a file, or an
    /// http(s) URL): an update that brings a fixed version an advisory
    /// names for its release is reported with the advisory's id.
    pub fn load_advisories(&mut self, location: &str) -> Result<usize, TrackerError> {
        let read = |message: String| TrackerError::Read {
            what: location.to_string(),
            message,
        };
        let bytes = if location.starts_with("http://") || location.starts_with("https://") {
            kiln_archive::Fetcher::new()
                .get(
                    location,
                    kiln_archive::Limit::stated(MAX_ADVISORIES_SIZE, "a list of advisories"),
                )
                .map_err(|e| read(e.to_string()))?
        } else {
            use std::io::Read;
            let mut v = Vec::new();
            std::fs::File::open(location)
                .and_then(|f| f.take(MAX_ADVISORIES_SIZE + 1).read_to_end(&mut v))
                .map_err(|e| read(e.to_string()))?;
            if v.len() as u64 > MAX_ADVISORIES_SIZE {
                return Err(read(format!("larger than {MAX_ADVISORIES_SIZE} bytes")));
            }
            v
        };
        let text = String::from_utf8(bytes).map_err(|_| TrackerError::Malformed {
            what: location.to_string(),
            message: "not UTF-8 text".into(),
        })?;
        let list = parse_advisories(&text, location)?;
        let n = list.len();
        self.advisories.extend(list);
        Ok(n)
    }

    /// The advisories an update of `source` in `release` from source
    /// version `installed` to `candidate` brings: each names a fixed
    /// version above the installed one and at most the candidate.
    pub fn advisories_for(
        &self,
        release: &str,
        source: &str,
        installed: &str,
        candidate: &str,
    ) -> Vec<String> {
        let mut ids: Vec<String> = self
            .advisories
            .iter()
            .filter(|a| {
                a.fixed.iter().any(|(r, s, v)| {
                    r == release
                        && s == source
                        && kiln_deb::version::compare(v, installed) == Ordering::Greater
                        && kiln_deb::version::compare(v, candidate) != Ordering::Greater
                })
            })
            .map(|a| a.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod advisory_tests {
    use super::*;

    const LIST: &str = "\
[02 Dec 2025] DSA-9002-1 foo - security update
\t{CVE-2026-1111 CVE-2026-4444}
\t[kiln-test] - foo 1.2-1+deb1u2
\t[other] - foo 1.2-1+deb9u1
\tNOTE: a note the tracker keeps
[01 Nov 2025] DSA-9001-1 foo - security update
\t{CVE-2019-0001}
\t[kiln-test] - foo 0.9-1
[01 Oct 2025] DLA-4001-1 bar - regression update
\t[kiln-test] - bar <not-affected> (fixed before release)
";

    fn tracker() -> Tracker {
        Tracker {
            advisories: parse_advisories(LIST, "DSA/list").unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn an_update_is_named_by_the_advisories_whose_fix_it_brings() {
        let t = tracker();
        assert_eq!(t.advisories.len(), 3);
        assert_eq!(t.advisories[0].cves, ["CVE-2026-1111", "CVE-2026-4444"]);
        // 1.2-1 -> 1.2-1+deb1u2: DSA-9002-1 only (9001 fixed it long before).
        assert_eq!(
            t.advisories_for("kiln-test", "foo", "1.2-1", "1.2-1+deb1u2"),
            ["DSA-9002-1"]
        );
        // A candidate below the advisory's fix does not bring it.
        assert!(t
            .advisories_for("kiln-test", "foo", "1.2-1", "1.2-1+deb1u1")
            .is_empty());
        // Another release's fix is not this release's.
        assert!(t.advisories_for("bookworm", "foo", "1.2-1", "9").is_empty());
        // <not-affected> names no fix.
        assert!(t.advisories[2].fixed.is_empty());
    }

    #[test]
    fn a_damaged_list_is_refused_with_the_line_and_no_prefix_panics() {
        for (text, line) in [
            ("DSA-1-1 foo\n", "line 1"),
            ("[01 Oct 2025] XSA-1-1 foo - x\n", "line 1"),
            ("\t{CVE-1}\n", "line 1"),
            (
                "[01 Oct 2025] DSA-1-1 foo - x\n\t[bookworm] - foo\n",
                "line 2",
            ),
            ("[01 Oct 2025] DSA-1-1 foo - x\n\tgarbage\n", "line 2"),
        ] {
            let e = parse_advisories(text, "list").unwrap_err().to_string();
            assert!(e.contains(line), "{text:?}: {e}");
        }
        // A download cut anywhere: an error or fewer advisories, never a panic.
        for (k, _) in LIST.char_indices() {
            let _ = parse_advisories(&LIST[..k], "cut");
        }
    }
}
