//! Parsed (verified) Release files.

use std::collections::HashMap;

use crate::date::parse_rfc2822;
use crate::error::ArchiveError;

/// A file listed in a Release file's `SHA256` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub sha256: String,
    pub size: u64,
}

/// The fields of a Release file Kiln relies on.
#[derive(Clone, Debug)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub origin: Option<String>,
    pub label: Option<String>,
    pub date: Option<String>,
    pub date_epoch: Option<i64>,
    pub valid_until: Option<String>,
    pub valid_until_epoch: Option<i64>,
    pub not_automatic: bool,
    pub but_automatic_upgrades: bool,
    pub acquire_by_hash: bool,
    /// Architecture `all` packages are listed in each architecture's index.
    pub no_all_index: bool,
    /// The `Architectures` field (empty when absent).
    pub architectures: Vec<String>,
    pub files: HashMap<String, IndexFile>,
}

impl Release {
    pub fn parse(text: &str, source_name: &str) -> Result<Release, ArchiveError> {
        let bad = |m: String| ArchiveError::BadRelease {
            source_name: source_name.to_string(),
            message: m,
        };
        let para = kiln_deb::deb822::paragraphs(text)
            .next()
            .ok_or_else(|| bad("empty".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let s = |k: &str| para.get(k).map(|v| v.trim().to_string());
        let yes = |k: &str| para.get(k).is_some_and(|v| v.trim() == "yes");
        let date = s("Date");
        let date_epoch = match &date {
            Some(d) => Some(parse_rfc2822(d).ok_or_else(|| bad(format!("bad Date '{d}'")))?),
            None => None,
        };
        let valid_until = s("Valid-Until");
        let valid_until_epoch = match &valid_until {
            Some(d) => Some(parse_rfc2822(d).ok_or_else(|| bad(format!("bad Valid-Until '{d}'")))?),
            None => None,
        };
        let mut files = HashMap::new();
        let sha = para
            .get("SHA256")
            .ok_or_else(|| bad("no SHA256 field (only SHA256 is trusted)".into()))?;
        for line in kiln_deb::deb822::multiline_lines(sha) {
            let mut w = line.split_whitespace();
            let (Some(hash), Some(size), Some(name)) = (w.next(), w.next(), w.next()) else {
                return Err(bad(format!("bad SHA256 line '{line}'")));
            };
            let size = size
                .parse()
                .map_err(|_| bad(format!("bad size in SHA256 line '{line}'")))?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("bad hash in SHA256 line '{line}'")));
            }
            files.insert(
                name.to_string(),
                IndexFile {
                    sha256: hash.to_ascii_lowercase(),
                    size,
                },
            );
        }
        Ok(Release {
            suite: s("Suite"),
            codename: s("Codename"),
            origin: s("Origin"),
            label: s("Label"),
            date,
            date_epoch,
            valid_until,
            valid_until_epoch,
            not_automatic: yes("NotAutomatic"),
            but_automatic_upgrades: yes("ButAutomaticUpgrades"),
            acquire_by_hash: yes("Acquire-By-Hash"),
            no_all_index: para
                .get("No-Support-for-Architecture-all")
                .is_some_and(|v| v.trim() == "Packages"),
            architectures: para
                .get("Architectures")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            files,
        })
    }

    /// apt's default pin priority for this release.
    pub fn pin_priority(&self) -> i32 {
        match (self.not_automatic, self.but_automatic_upgrades) {
            (true, true) => 100,
            (true, false) => 1,
            _ => 500,
        }
    }
}
