//! Update tier: the immutable cloud recipe built from the real archive as
//! versions 1, 2 and a deliberately broken 3, published into a download
//! tree's update channel, and updating itself in QEMU with its own
//! systemd-sysupdate: `kiln release` puts 2 on a 50% wave; of two machines
//! on 1, the one below the wave updates to 2 (through a download the server
//! cuts midway) and keeps 1 as the fallback, the other stays on 1; tampered,
//! unsigned and expired channels are refused on the machine; 3 fails its
//! health gate and the machine is back on 2 by itself.
//!
//! Needs root, the network, QEMU and OVMF; KILN_SKIP_NETWORK_TESTS=1 skips.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn recipes() -> tempfile::TempDir {
    let d = tempfile::tempdir_in(workspace().join("target")).unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(workspace().join("recipes/classes"))
        .arg(workspace().join("recipes/debian-cloud-immutable.toml"))
        .arg(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    d
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn build(recipe: &Path, out: &Path, version: &str, key: &Path) {
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--image-version",
            version,
            "--sign-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "build of {version} failed: {}",
        text(&o)
    );
}

#[test]
fn an_immutable_image_updates_itself_and_goes_back_from_a_broken_version() {
    if skip() {
        return;
    }
    let r = recipes();
    let dir = r.path();
    let port = free_port();
    std::fs::write(
        dir.join("upd.toml"),
        format!(
            "include = [\"debian-cloud-immutable.toml\"]\n\n[image]\nname = \"kiln-upd\"\n\n[update]\nurl = \"http://10.0.2.2:{port}/\"\ntries = 2\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("upd3.toml"),
        "include = [\"upd.toml\"]\n\n[[test]]\nname = \"deliberately broken\"\ncommand = \"echo this version is broken; false\"\nhealth = true\n",
    )
    .unwrap();
    let (key, public) = ed25519_pair(dir, "key");
    let (other, _) = ed25519_pair(dir, "other");
    let out = dir.join("out");
    // Without its key an [update] image is refused before any work, and a
    // version that cannot be one is a usage error.
    let o = kiln(
        &[
            "build",
            dir.join("upd.toml").to_str().unwrap(),
            "-o",
            out.join("x").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no key was given"), "{}", text(&o));
    let o = kiln(
        &[
            "build",
            dir.join("upd.toml").to_str().unwrap(),
            "--image-version",
            "1_0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));

    let _g = serial();
    for (recipe, v) in [("upd.toml", "1"), ("upd.toml", "2"), ("upd3.toml", "3")] {
        build(&dir.join(recipe), &out.join(format!("v{v}")), v, &key);
    }
    // Every build lists its update files; the payload is a fraction of the disk.
    let m = json_file(&out.join("v2/manifest.json"));
    assert_matches_schema("manifest", &m);
    let u = &m["disk"]["amd64"]["update"];
    assert_eq!(u["version"], "2", "{u}");
    assert_eq!(u["tries"], 2);
    let outputs = m["outputs"].as_array().unwrap();
    let size_of = |fmt: &str| -> u64 {
        outputs
            .iter()
            .filter(|a| a["format"] == fmt)
            .map(|a| a["size"].as_u64().unwrap())
            .sum()
    };
    let payload = size_of("update");
    assert_eq!(
        outputs.iter().filter(|a| a["format"] == "update").count(),
        3
    );
    assert!(
        payload > 0 && payload < size_of("qcow2"),
        "payload {payload} vs qcow2 {}",
        size_of("qcow2")
    );
    for f in ["usr", "verity", "uki"] {
        assert!(out.join("v2").join(u[f].as_str().unwrap()).is_file(), "{f}");
    }

    // The channel in a download tree: signed (gpg checks it as the
    // machine does), verified, and a changed payload is named.
    let tree = dir.join("tree");
    let o = kiln(
        &[
            "publish",
            out.join("v2").to_str().unwrap(),
            "--to",
            &format!("file://{}", tree.display()),
            "--sign-key",
            key.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let p = json_of(&o);
    assert_matches_schema("publish", &p);
    let su = tree.join("sysupdate/stable");
    let listing = std::fs::read_to_string(su.join("SHA256SUMS")).unwrap();
    assert!(listing.contains("  BEST-BEFORE-"), "{listing}");
    assert_eq!(listing.lines().count(), 4, "{listing}");
    // The keyring the build puts into the image's /usr.
    let ring = dir.join("ring.gpg");
    let signing = kiln_attest::SigningKey::from_pem_file(&key).unwrap();
    std::fs::write(&ring, kiln_attest::openpgp::public_keyring(&signing)).unwrap();
    let o = Command::new("gpgv")
        .arg("--homedir")
        .arg(dir)
        .arg("--keyring")
        .arg(&ring)
        .arg(su.join("SHA256SUMS.gpg"))
        .arg(su.join("SHA256SUMS"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gpgv: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let verify = |t: &Path| {
        kiln(
            &[
                "verify",
                t.to_str().unwrap(),
                "--key",
                public.to_str().unwrap(),
            ],
            &[],
        )
    };
    let o = verify(&tree);
    assert!(o.status.success(), "{}", text(&o));
    // Republishing version 2 with other bytes is refused.
    let efi = listing
        .lines()
        .find_map(|l| {
            l.split_once("  ")
                .map(|x| x.1)
                .filter(|n| n.ends_with(".efi"))
        })
        .unwrap()
        .to_string();
    let tampered = su.join(&efi);
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[4096] ^= 1;
    let copy = dir.join("efi.copy");
    std::fs::copy(&tampered, &copy).unwrap();
    std::fs::remove_file(&tampered).unwrap();
    std::fs::write(&tampered, &bytes).unwrap();
    let o = verify(&tree);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&efi) && text(&o).contains("changed after signing"),
        "{}",
        text(&o)
    );
    std::fs::rename(&copy, &tampered).unwrap();

    // `kiln release`: version 2 enters the channel's signed rollout with
    // a wave; the catalog and `kiln find` show it.
    let catalog = dir.join("catalog.db");
    let c = catalog.to_str().unwrap();
    let o = kiln(
        &[
            "--catalog",
            c,
            "catalog",
            "import",
            out.join("v2").to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let release = |extra: &[&str]| {
        let mut a = vec![
            "--catalog",
            c,
            "release",
            out.join("v2").to_str().unwrap().to_string().leak(),
            "--to",
            format!("file://{}", tree.display()).leak(),
            "--sign-key",
            key.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        kiln(&a, &[])
    };
    let o = release(&["--wave", "10%/24h", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = json_of(&o);
    assert_matches_schema("release", &r);
    let rel = &r["trees"][0]["release"];
    assert_eq!(
        (rel["state"].as_str(), rel["start"].as_f64()),
        (Some("rolling"), Some(10.0)),
        "{r}"
    );
    let listing = std::fs::read_to_string(su.join("SHA256SUMS")).unwrap();
    assert!(listing.contains("  ROLLOUT\n"), "{listing}");
    let o = verify(&tree);
    assert!(o.status.success(), "{}", text(&o));
    let o = kiln(&["--catalog", c, "find", "--json"], &[]);
    let f = json_of(&o);
    assert_matches_schema("find", &f);
    let ro = &f["images"][0]["rollouts"][0];
    assert_eq!(
        (ro["channel"].as_str(), ro["state"].as_str()),
        (Some("stable"), Some("rolling")),
        "{f}"
    );
    assert!(ro["share"].as_f64().unwrap() >= 10.0, "{f}");
    let o = release(&["--pause", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json_of(&o)["trees"][0]["release"]["state"], "paused");
    let f = json_of(&kiln(&["--catalog", c, "find", "--json"], &[]));
    assert_eq!(f["images"][0]["rollouts"][0]["share"], 0.0, "{f}");
    // Bad releases: a wave over 100%, a channel the tree does not have,
    // a version never published there; each names the fix.
    for (extra, want) in [
        (vec!["--wave", "150%/1h"], "more than 100%"),
        (vec!["--wave", "10%"], "needs the time"),
        (
            vec!["--wave", "10%/1h", "--channel", "beta"],
            "no channel `beta` (it has stable)",
        ),
    ] {
        let o = release(&extra);
        assert_eq!(o.status.code(), Some(64), "{want}: {}", text(&o));
        assert!(text(&o).contains(want), "{}", text(&o));
    }
    let o = kiln(
        &[
            "release",
            out.join("v3").to_str().unwrap(),
            "--to",
            &format!("file://{}", tree.display()),
            "--wave",
            "100%",
            "--sign-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(
        text(&o).contains("not published in channel stable") && text(&o).contains("kiln publish"),
        "{}",
        text(&o)
    );

    // Two machines and a 50% wave: the one whose machine id falls below
    // it updates (and its first download is cut midway by the server going
    // away; the next attempt completes), the other stays on 1.
    let id = |below: bool| {
        (0u32..)
            .map(|i| format!("{:08x}{}", i, "5eed".repeat(6)))
            .find(|m| {
                let p = kiln_model::rollout::place(m, "stable");
                if below {
                    p < 4900
                } else {
                    p >= 5200
                }
            })
            .unwrap()
    };
    let (admitted, held) = (id(true), id(false));
    let v = upgrade(
        &out,
        "v1",
        "v2",
        &key,
        &[
            "--wave",
            "50%/1w",
            "--machine-id",
            &admitted,
            "--cut-download",
            "--timeout",
            "1800",
        ],
    );
    assert_eq!(versions_of(&v), ["1", "2"], "{v}");
    assert_eq!(
        (
            v["downloads-cut"].as_u64(),
            v["first-attempt-failed"].as_bool()
        ),
        (Some(1), Some(true)),
        "{v}"
    );
    assert!(v["place"].as_f64().unwrap() < 49.0, "{v}");
    // Readable without Kiln: the image's own line on every boot.
    let console = std::fs::read_to_string(out.join("v2/upgrade.console.log")).unwrap();
    let a = console
        .find("kiln: running kiln-upd 1")
        .expect("no version 1 line");
    let b = console
        .find("kiln: running kiln-upd 2")
        .expect("no version 2 line");
    assert!(a < b);
    assert!(console.contains("Good signature from \"Kiln image signing key"));
    // After the update, a byte flipped in the new /usr slot under the
    // running system: dm-verity refuses the block.
    assert_eq!(v["verity-after-update"], "refused", "{v}");
    assert!(
        console.contains("device-mapper: verity") && console.contains("is corrupted"),
        "the kernel did not report the corrupted block"
    );

    let v = upgrade(
        &out,
        "v1",
        "v2",
        &key,
        &[
            "--wave",
            "50%/1w",
            "--machine-id",
            &held,
            "--expect-held",
            "--timeout",
            "1200",
        ],
    );
    assert_eq!(versions_of(&v), ["1"], "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("not admitted yet") && msg.contains("target none"),
        "{msg}"
    );
    let console = std::fs::read_to_string(out.join("v2/upgrade.console.log")).unwrap();
    // systemd took the machine id from the credential: the gate placed it.
    assert!(v["place"].as_f64().unwrap() >= 52.0, "{v}");
    assert!(
        console.contains("this machine at"),
        "the gate did not say where the machine is"
    );

    // A channel changed after signing is refused on the machine: the
    // payload's hash, or the signature, no longer match; a properly signed
    // listing past its BEST-BEFORE day (a replay) is refused too.
    for (fault, wants) in [
        ("expired", ["expired on", "best-before", "replayed"]),
        (
            "unsigned",
            ["unsigned channel", "sha256sums.gpg", "not trusted"],
        ),
        ("payload", ["checksum", "sha256", "tampered"]),
        (
            "signature",
            [
                "bad signature",
                "signature verification failed",
                "verification",
            ],
        ),
    ] {
        let v = upgrade(
            &out,
            "v1",
            "v2",
            &key,
            &["--channel-fault", fault, "--timeout", "1200"],
        );
        assert_eq!(versions_of(&v), ["1"], "{fault}: {v}");
        let msg = v["message"].as_str().unwrap().to_lowercase();
        assert!(wants.iter().any(|w| msg.contains(w)), "{fault}: {msg}");
    }

    // 3 fails its health gate twice (tries = 2) and the machine is back
    // on 2, which does not install 3 again.
    let v = upgrade(
        &out,
        "v2",
        "v3",
        &key,
        &["--expect-rollback", "--timeout", "2400"],
    );
    assert_eq!(versions_of(&v), ["2", "3", "3", "2"], "{v}");
    let console = std::fs::read_to_string(out.join("v3/upgrade.console.log")).unwrap();
    assert!(
        console.contains("kiln-health: FAILED: deliberately broken"),
        "the health gate did not say why"
    );

    // Usage errors: NEW not newer, a key the images do not trust.
    for (args, want) in [
        (
            vec!["--upgrade", "v2", "v1", "--sign-key", key.to_str().unwrap()],
            "not newer",
        ),
        (
            vec![
                "--upgrade",
                "v1",
                "v2",
                "--sign-key",
                other.to_str().unwrap(),
            ],
            "the images trust key",
        ),
    ] {
        let mut a = vec!["test"];
        a.extend(args.iter().map(|x| match *x {
            "v1" | "v2" => Box::leak(out.join(x).display().to_string().into_boxed_str()) as &str,
            x => x,
        }));
        let o = kiln(&a, &[]);
        assert_eq!(o.status.code(), Some(64), "{want}: {}", text(&o));
        assert!(text(&o).contains(want), "{}", text(&o));
    }
}

/// `kiln test --upgrade OUT/OLD OUT/NEW --sign-key KEY EXTRA… --json`,
/// which must pass; its JSON report.
fn upgrade(out: &Path, old: &str, new: &str, key: &Path, extra: &[&str]) -> serde_json::Value {
    let (o, n) = (out.join(old), out.join(new));
    let mut args = vec![
        "test",
        "--upgrade",
        o.to_str().unwrap(),
        n.to_str().unwrap(),
        "--sign-key",
        key.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = kiln(&args, &[]);
    let v = json_of(&r);
    assert!(
        r.status.success() && v["passed"] == true,
        "{old} → {new} {extra:?}: {}",
        text(&r)
    );
    v
}

/// The version of every boot of an upgrade session, in order.
fn versions_of(v: &serde_json::Value) -> Vec<String> {
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}
