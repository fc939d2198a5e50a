//! Where packages come from: the host's apt configuration and explicit sources.
//!
//! Kiln never carries an archive host of its own. By default it reads the
//! host's apt sources (deb822 `*.sources` files and one-line `sources.list`
//! files), finds the Debian archive and security archive there, and points
//! them at the recipe's suite. A corporate mirror configured for apt is thus
//! used by Kiln too.

use std::path::{Path, PathBuf};

use crate::error::ArchiveError;

/// Keys that may sign a source's Release file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyring {
    /// Keyring files (binary `.gpg` or armored `.asc`).
    Files(Vec<PathBuf>),
    /// An armored public key block written inline (deb822 `Signed-By:`).
    Inline(String),
}

impl Keyring {
    /// A short description for error messages and the lock.
    pub fn describe(&self) -> String {
        match self {
            Keyring::Files(f) => f
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Keyring::Inline(_) => "inline key block".to_string(),
        }
    }
}

/// One repository suite Kiln reads indexes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Base URI of the repository (`http://`, `https://` or `file://`), no trailing slash.
    pub uri: String,
    /// Suite or codename under `dists/`.
    pub suite: String,
    pub components: Vec<String>,
    pub keyring: Keyring,
    /// Accept a Release file without a valid signature (local repositories only).
    pub allow_unsigned: bool,
    /// Where this source was configured, for error messages.
    pub origin: String,
}

/// An entry of the host's apt configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<Keyring>,
    /// `file:line` of the entry.
    pub origin: String,
}

/// Debian release names that identify the Debian archive among host entries.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
];

/// The known Debian suite closest to `suite` (a typo of one, or of one
/// with its `-updates`, `-backports`, `-security`, `-proposed-updates`
/// companion), when one is close enough to be what was meant.
pub fn suite_suggestion(suite: &str) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for base in DEBIAN_SUITES.iter().chain(["experimental"].iter()) {
        names.push(base.to_string());
        for sfx in ["-updates", "-backports", "-security", "-proposed-updates"] {
            names.push(format!("{base}{sfx}"));
        }
    }
    let lower = suite.to_ascii_lowercase();
    names
        .into_iter()
        .filter(|n| *n != suite)
        .map(|n| (strsim::levenshtein(&lower, &n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 5) && *d < n.len() / 2)
        .min()
        .map(|(_, n)| n)
}

/// Whether `suite` is a Debian release (`bookworm`, `stable`, …) that has
/// `-updates` and `-security` companions in the host's Debian archives.
pub fn is_debian_release(suite: &str) -> bool {
    DEBIAN_SUITES.contains(&suite) && !ROLLING.contains(&suite)
}

/// Suites that have no `-updates` or `-security` companions.
const ROLLING: &[&str] = &["sid", "unstable", "experimental", "rc-buggy"];

/// Trusted keys apt uses when an entry has no `Signed-By`.
fn default_apt_keyring(root: &Path) -> Keyring {
    let mut files = Vec::new();
    let legacy = root.join("etc/apt/trusted.gpg");
    if legacy.exists() {
        files.push(legacy);
    }
    if let Ok(rd) = std::fs::read_dir(root.join("etc/apt/trusted.gpg.d")) {
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("gpg") | Some("asc")
                )
            })
            .collect();
        v.sort();
        files.extend(v);
    }
    let debian = root.join("usr/share/keyrings/debian-archive-keyring.gpg");
    if files.is_empty() && debian.exists() {
        files.push(debian);
    }
    Keyring::Files(files)
}

/// Reads every enabled `deb` entry from the apt configuration under `root`
/// (normally `/`).
pub fn read_apt_entries(root: &Path) -> Result<Vec<AptEntry>, ArchiveError> {
    let mut out = Vec::new();
    let list = root.join("etc/apt/sources.list");
    if list.exists() {
        parse_one_line_file(&list, root, &mut out)?;
    }
    let dir = root.join("etc/apt/sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            match f.extension().and_then(|e| e.to_str()) {
                Some("list") => parse_one_line_file(&f, root, &mut out)?,
                Some("sources") => parse_deb822_file(&f, root, &mut out)?,
                _ => {}
            }
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ArchiveError> {
    std::fs::read_to_string(path).map_err(|e| ArchiveError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })
}

fn parse_one_line_file(
    path: &Path,
    root: &Path,
    out: &mut Vec<AptEntry>,
) -> Result<(), ArchiveError> {
    let text = read(path)?;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if kind != "deb" {
            continue;
        }
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| ArchiveError::AptConfig {
                origin: origin.clone(),
                message: "unterminated '[' option list".into(),
            })?;
            for opt in r[..end].split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(Keyring::Files(
                        v.split(',').map(|p| rooted(root, p)).collect(),
                    ));
                }
            }
            rest = r[end + 1..].trim_start();
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() < 2 {
            return Err(ArchiveError::AptConfig {
                origin,
                message: "expected 'deb URI SUITE [COMPONENT…]'".into(),
            });
        }
        out.push(AptEntry {
            uris: vec![words[0].trim_end_matches('/').to_string()],
            suites: vec![words[1].to_string()],
            components: words[2..].iter().map(|s| s.to_string()).collect(),
            signed_by,
            origin,
        });
    }
    Ok(())
}

fn rooted(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    match p.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => p.to_path_buf(),
    }
}

fn parse_deb822_file(
    path: &Path,
    root: &Path,
    out: &mut Vec<AptEntry>,
) -> Result<(), ArchiveError> {
    let text = read(path)?;
    for para in kiln_deb::deb822::paragraphs(&text) {
        let para = para.map_err(|e| ArchiveError::AptConfig {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        let origin = format!("{}:{}", path.display(), para.line());
        let words = |k: &str| -> Vec<String> {
            para.get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if para
            .get("Enabled")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let signed_by = para.get("Signed-By").map(|v| {
            if v.contains("BEGIN PGP PUBLIC KEY BLOCK") {
                // Inline keys are written with " ." for blank lines.
                let block: Vec<&str> = v
                    .lines()
                    .map(|l| {
                        let l = l.trim();
                        if l == "." {
                            ""
                        } else {
                            l
                        }
                    })
                    .collect();
                Keyring::Inline(block.join("\n").trim().to_string() + "\n")
            } else {
                Keyring::Files(v.split_whitespace().map(|p| rooted(root, p)).collect())
            }
        });
        out.push(AptEntry {
            uris: words("URIs")
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            suites: words("Suites"),
            components: words("Components"),
            signed_by,
            origin,
        });
    }
    Ok(())
}

fn base_suite(s: &str) -> &str {
    for suffix in [
        "-updates",
        "-security",
        "-backports",
        "-proposed-updates",
        "/updates",
    ] {
        if let Some(b) = s.strip_suffix(suffix) {
            return b;
        }
    }
    s
}

/// Whether `suite` is a security suite (`SUITE-security`, or the old
/// `SUITE/updates`): what comes from it is a security update.
pub fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// Overrides for the default sources, from the command line.
#[derive(Clone, Debug, Default)]
pub struct MirrorOverride {
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
}

/// The default sources for `suite`: the suite itself, `-updates` and
/// `-security`, at the URIs and with the keys the host's apt uses for Debian.
pub fn default_sources(
    suite: &str,
    components: &[String],
    root: &Path,
    overrides: &MirrorOverride,
) -> Result<Vec<Source>, ArchiveError> {
    let entries = read_apt_entries(root)?;
    let debian = |e: &&AptEntry| {
        e.suites
            .iter()
            .any(|s| DEBIAN_SUITES.contains(&base_suite(s)) || base_suite(s) == suite)
    };
    let main = entries
        .iter()
        .filter(debian)
        .find(|e| e.suites.iter().any(|s| !is_security_suite(s)));
    let security = entries
        .iter()
        .filter(debian)
        .find(|e| e.suites.iter().any(|s| is_security_suite(s)));
    let keyring_of = |e: Option<&AptEntry>| {
        e.and_then(|e| e.signed_by.clone())
            .unwrap_or_else(|| default_apt_keyring(root))
    };
    let main_uri = match (&overrides.mirror, main) {
        (Some(m), _) => m.trim_end_matches('/').to_string(),
        (None, Some(e)) if !e.uris.is_empty() => e.uris[0].clone(),
        _ => return Err(ArchiveError::NoHostSources),
    };
    let main_origin = match (&overrides.mirror, main) {
        (Some(_), _) => "--mirror".to_string(),
        (None, Some(e)) => e.origin.clone(),
        _ => unreachable!(),
    };
    let mut out = vec![Source {
        uri: main_uri.clone(),
        suite: suite.to_string(),
        components: components.to_vec(),
        keyring: keyring_of(main),
        allow_unsigned: false,
        origin: main_origin.clone(),
    }];
    if !ROLLING.contains(&suite) {
        out.push(Source {
            suite: format!("{suite}-updates"),
            ..out[0].clone()
        });
        let sec_uri = match (&overrides.security_mirror, security) {
            (Some(m), _) => Some((
                m.trim_end_matches('/').to_string(),
                "--security-mirror".into(),
            )),
            (None, Some(e)) if !e.uris.is_empty() => Some((e.uris[0].clone(), e.origin.clone())),
            _ => None,
        };
        if let Some((uri, origin)) = sec_uri {
            out.push(Source {
                uri,
                suite: format!("{suite}-security"),
                components: components.to_vec(),
                keyring: keyring_of(security.or(main)),
                allow_unsigned: false,
                origin,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        d
    }

    #[test]
    fn deb822_host_sources_map_to_target_suite() {
        let d = host(&[(
            "etc/apt/sources.list.d/debian.sources",
            "Types: deb deb-src\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n\
             Components: main contrib\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
             Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/s.gpg\n",
        )]);
        let s = default_sources("trixie", &["main".into()], d.path(), &Default::default()).unwrap();
        let got: Vec<(&str, &str)> = s
            .iter()
            .map(|s| (s.uri.as_str(), s.suite.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("http://mirror.invalid/debian", "trixie"),
                ("http://mirror.invalid/debian", "trixie-updates"),
                ("http://mirror.invalid/debian-security", "trixie-security"),
            ]
        );
        assert_eq!(
            s[2].keyring,
            Keyring::Files(vec![d.path().join("usr/share/keyrings/s.gpg")])
        );
    }

    #[test]
    fn one_line_sources_and_overrides() {
        let d = host(&[(
            "etc/apt/sources.list",
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\n\
             deb http://m.invalid/debian-security bookworm-security main\n\
             deb http://thirdparty.invalid/apt nodistro main\n",
        )]);
        let s = default_sources(
            "sid",
            &["main".into()],
            d.path(),
            &MirrorOverride {
                mirror: Some("http://other.invalid/debian/".into()),
                security_mirror: None,
            },
        )
        .unwrap();
        assert_eq!(s.len(), 1, "sid has no -updates or -security");
        assert_eq!(s[0].uri, "http://other.invalid/debian");
        assert_eq!(s[0].origin, "--mirror");
    }

    #[test]
    fn disabled_and_foreign_entries_are_ignored() {
        let d = host(&[(
            "etc/apt/sources.list.d/x.sources",
            "Types: deb\nURIs: http://a.invalid/debian\nSuites: trixie\nComponents: main\nEnabled: no\n\n\
             Types: deb\nURIs: http://b.invalid/node\nSuites: nodistro\nComponents: main\n",
        )]);
        let e = default_sources("trixie", &["main".into()], d.path(), &Default::default());
        assert!(matches!(e, Err(ArchiveError::NoHostSources)));
    }
}

#[cfg(test)]
mod suggestion_tests {
    use super::suite_suggestion;

    #[test]
    fn typos_of_debian_suites_are_suggested_and_unknown_names_are_not() {
        for (typo, meant) in [
            ("trixy", "trixie"),
            ("bookwrom", "bookworm"),
            ("Trixie", "trixie"),
            ("trixie-backport", "trixie-backports"),
            ("bookworm-securty", "bookworm-security"),
            ("unstabel", "unstable"),
        ] {
            assert_eq!(suite_suggestion(typo).as_deref(), Some(meant), "{typo}");
        }
        for other in ["kiln-test", "jammy", "my-vendor-suite", "x"] {
            assert_eq!(suite_suggestion(other), None, "{other}");
        }
    }
}
