//! Real-archive tier for `kiln watch`: a bookworm image locked from the
//! `bookworm` suite alone and built; the watch must report as security
//! updates exactly the locked packages that `bookworm-security` (read here
//! independently, with curl, xz and dpkg) has newer versions of.
//!
//! Needs the network; KILN_SKIP_NETWORK_TESTS=1 skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::*;

/// `Package` → `Version` of an index, read with nothing of Kiln's.
fn read_index(url: &str) -> BTreeMap<String, String> {
    let o = Command::new("sh")
        .args(["-c", "curl -fsS \"$1\" | xz -d", "sh", url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{url}: {}", stderr(&o));
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for para in String::from_utf8(o.stdout).unwrap().split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        if let (Some(p), Some(v)) = (field("Package:"), field("Version:")) {
            // The newest if an index lists several.
            match out.get(&p) {
                Some(old) if !dpkg_newer(&v, old.as_str()) => {}
                _ => {
                    out.insert(p, v);
                }
            }
        }
    }
    out
}

fn dpkg_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_bookworm_image_locked_without_security_reports_exactly_the_security_fixes() {
    if skip() {
        return;
    }
    let host = kiln_archive::sources::default_sources(
        "bookworm",
        &["main".to_string()],
        std::path::Path::new("/"),
        &Default::default(),
    )
    .expect("the host's apt sources name a Debian archive");
    let mirror = host[0].uri.clone();
    let security = host
        .iter()
        .find(|s| s.suite == "bookworm-security")
        .expect("the host's apt sources name the security archive")
        .uri
        .clone();
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("bw.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"bw\"\nsuite = \"bookworm\"\narchitectures = [\"amd64\"]\n\
             default-sources = false\n\n[packages]\ninclude = [\"libssl3\", \"zlib1g\", \"tzdata\", \"libpcre2-8-0\"]\n\n\
             [container]\ndistroless = true\n\n[output]\nformats = [\"tar\"]\n\n\
             [[source]]\nuri = \"{mirror}\"\nsuites = [\"bookworm\"]\n"
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let o = kiln_command(
        &cache(),
        &[
            "--catalog",
            "none",
            "build",
            recipe.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(work.path().join("bw.lock")).unwrap()).unwrap();
    let locked: BTreeMap<String, String> = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(lock["release"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["suite"].as_str() == Some("bookworm")));

    let o = kiln_command(
        &cache(),
        &["watch", "--json", out.to_str().unwrap()],
        &[(
            "XDG_STATE_HOME",
            work.path().join("state").to_str().unwrap(),
        )],
    )
    .output()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o), stderr(&o)));
    assert_matches_schema("watch", &v);

    // Our own reading of the security suite (and of -updates, which may
    // hold an even newer version of the same package).
    let sec = read_index(&format!(
        "{security}/dists/bookworm-security/main/binary-amd64/Packages.xz"
    ));
    let upd = read_index(&format!(
        "{mirror}/dists/bookworm-updates/main/binary-amd64/Packages.xz"
    ));
    let expected: BTreeSet<String> = locked
        .iter()
        .filter(|(p, installed)| {
            sec.get(*p).is_some_and(|s| {
                dpkg_newer(s, installed) && upd.get(*p).is_none_or(|u| !dpkg_newer(u, s))
            })
        })
        .map(|(p, _)| p.clone())
        .collect();
    let img = &v["images"][0];
    let reported: BTreeSet<String> = img["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["security"] == true)
        .map(|u| u["package"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, expected, "{img:#}");
    for u in img["updates"].as_array().unwrap() {
        if u["security"] == true {
            let p = u["package"].as_str().unwrap();
            assert_eq!(u["candidate"].as_str(), sec.get(p).map(|s| s.as_str()));
            assert_eq!(u["installed"].as_str(), Some(locked[p].as_str()));
            assert_eq!(u["suite"], "bookworm-security");
        }
    }
    // bookworm's libssl3 has had security fixes since its release: the
    // comparison above is not vacuous.
    assert!(!expected.is_empty(), "no security fixes found at all");
    assert_eq!(img["status"], "security");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
