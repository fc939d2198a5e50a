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
