//! Real-archive tier: Kiln's lock for real requests against Debian trixie,
//! through the host's apt sources, compared with what apt itself chooses.
//!
//! Two references, both real apt (the host's, as mmdebstrap uses it):
//! - `tests/apt-oracle`: apt resolves the Essential set on an empty system,
//!   then the request on top of the installed Essential set — what a real
//!   `mmdebstrap --variant=minbase --include=…` run installs. Kiln must equal it.
//! - `mmdebstrap --simulate --verbose`: the same, except that simulation resolves
//!   the second phase on an empty system too (so it may add packages that the
//!   installed Essential set would have satisfied). The oracle in
//!   `--from-empty` mode must reproduce it exactly, which validates the oracle;
//!   Kiln's set must be contained in it.
//!
//! Needs the network and mmdebstrap; set KILN_SKIP_NETWORK_TESTS=1 to skip.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

fn set_of(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn compare(name: &str, include: &[&str]) {
    if skip() {
        return;
    }
    let _guard = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("recipe.toml");
    let list = include
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"{name}\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n\n\
             [packages]\npriority = \"required\"\ninclude = [{list}]\n"
        ),
    )
    .unwrap();
    let out = kiln(&["lock", "--json", recipe.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "kiln lock failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kiln: BTreeSet<String> = json["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();

    let lock = kiln_recipe::lock_path_for(&recipe);
    let oracle = |from_empty: bool| {
        let mut cmd = Command::new(workspace().join("tests/apt-oracle"));
        if from_empty {
            cmd.arg("--from-empty");
        }
        let out = cmd
            .arg(&lock)
            .args(["trixie", "amd64", "?priority(required)"])
            .args(include)
            .env("APT_ORACLE_LISTS", shared_dir("apt-lists"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apt-oracle failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        set_of(&String::from_utf8_lossy(&out.stdout))
    };
    let apt = oracle(false);
    let apt_from_empty = oracle(true);

    let mm = Command::new("mmdebstrap")
        .args(["--simulate", "--verbose", "--variant=minbase"])
        .arg(format!("--include={}", include.join(",")))
        .args(["trixie", "/dev/null"])
        .output()
        .expect("mmdebstrap is installed (apt-get install mmdebstrap)");
    assert!(
        mm.status.success(),
        "mmdebstrap failed:\n{}",
        String::from_utf8_lossy(&mm.stderr)
    );
    let mm_text =
        String::from_utf8_lossy(&mm.stdout).into_owned() + &String::from_utf8_lossy(&mm.stderr);
    let simulate: BTreeSet<String> = mm_text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next().unwrap();
            let mut v = w.next().unwrap();
            if v.starts_with('[') {
                v = w.next().unwrap();
            }
            format!("{n} {}", v.trim_start_matches('('))
        })
        .collect();

    let only_kiln: Vec<_> = kiln.difference(&apt).collect();
    let only_apt: Vec<_> = apt.difference(&kiln).collect();
    let sim_extra: Vec<_> = simulate.difference(&kiln).collect();
    eprintln!(
        "{name}: kiln {} packages, apt {} (agree on {}), mmdebstrap --simulate {} (extra in simulate: {:?})",
        kiln.len(),
        apt.len(),
        kiln.intersection(&apt).count(),
        simulate.len(),
        sim_extra
    );
    assert_eq!(
        apt_from_empty, simulate,
        "the oracle reproduces mmdebstrap --simulate"
    );
    assert!(
        only_kiln.is_empty() && only_apt.is_empty(),
        "only kiln: {only_kiln:?}\nonly apt: {only_apt:?}"
    );
    assert!(
        kiln.is_subset(&simulate),
        "kiln chose packages mmdebstrap --simulate did not"
    );
}

#[test]
fn minbase_with_apt_matches_apt() {
    compare("minbase", &["apt"]);
}

#[test]
fn web_server_and_interpreter_match_apt() {
    compare("web", &["apt", "nginx", "python3"]);
}

#[test]
fn cloud_image_set_matches_apt() {
    compare(
        "cloud",
        &[
            "apt",
            "linux-image-cloud-amd64",
            "systemd-sysv",
            "openssh-server",
            "cloud-init",
        ],
    );
}

#[test]
fn database_server_matches_apt() {
    compare("db", &["apt", "postgresql"]);
}

/// A disk recipe that forgot the boot chain learns everything it lacks from
/// the lock, in seconds, before anything is downloaded or unpacked.
#[test]
fn disk_recipe_without_boot_packages_fails_at_lock_time_naming_them_all() {
    if skip() {
        return;
    }
    let _guard = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("disk.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"disk\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n\n\
         [packages]\ninclude = [\"linux-image-cloud-amd64\", \"systemd-sysv\"]\n\n\
         [output]\nformats = [\"disk\"]\n",
    )
    .unwrap();
    let out = work.path().join("out");
    let start = std::time::Instant::now();
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("systemd-boot-efi") && err.contains("systemd-ukify"),
        "{err}"
    );
    assert!(
        err.contains("hint:")
            && err.contains("include = [\"systemd-boot-efi\", \"systemd-ukify\"]"),
        "{err}"
    );
    assert!(
        !err.contains("Unpacking") && !err.contains("Fetched"),
        "{err}"
    );
    assert!(took.as_secs() < 10, "took {took:?}");
    assert!(!out.join("disk.raw").exists());
    // `kiln lock` says the same and writes no lock.
    let o = kiln(&["lock", recipe.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("systemd-ukify"));
    assert!(!work.path().join("disk.lock").exists());
}
