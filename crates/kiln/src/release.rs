//! `kiln release OUT`: staged rollout of a published `[update]` version.
//! The version enters its channel's signed `ROLLOUT` with a wave (a start
//! share and the time to reach every machine), is paused or resumed, or
//! made a barrier every machine passes through. The image's update gate
//! reads the document; the catalog and the finder page show it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_model::rollout::{self, Release, Rollout};
use kiln_model::{Hinted, Manifest};
use kiln_publish::sysupdate::{self, Action, ReleaseError, ReleaseRequest};
use kiln_publish::Target;
use kiln_rootfs::inroot::Root;
use serde_json::json;

use crate::cmd::Usage;
use crate::ui::Ui;

#[derive(clap::Args)]
pub struct ReleaseArgs {
    /// The output directory of an [update] build already published to the channel.
    pub output: PathBuf,
    /// The download tree (file:///PATH) the build was published to. Default: the file:// [[publish]] entries of its recipe.
    #[arg(long = "to", value_name = "TARGET", value_parser = crate::publish::parse_target)]
    pub targets: Vec<Target>,
    /// The channel. Default: the image's own ([update] channel).
    #[arg(long)]
    pub channel: Option<String>,
    /// Start (or restart) the wave now: the share of machines admitted at once, and the time until every machine is (10%/24h, 2.5%/3d, 100%).
    #[arg(long, value_name = "P%/DURATION", value_parser = rollout::parse_wave, required_unless_present_any = ["pause", "resume"], conflicts_with_all = ["pause", "resume"])]
    pub wave: Option<rollout::Wave>,
    /// Pause the release: no further machine takes it; the share reached and the time left are kept for --resume.
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Go on with a paused release where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// A barrier release: a machine older than it updates to it before any newer release.
    #[arg(long, conflicts_with = "no_barrier")]
    pub barrier: bool,
    /// No longer a barrier.
    #[arg(long)]
    pub no_barrier: bool,
    /// Ed25519 private key (PKCS#8 PEM) the channel is signed with.
    #[arg(long, value_name = "KEY.pem", env = "KILN_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// Days the re-signed listing stays valid (its BEST-BEFORE entry).
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub valid_days: u32,
    /// Print the channel's rollout as JSON on stdout (schema: docs/schemas/release.schema.json).
    #[arg(long)]
    pub json: bool,
}

/// A release as JSON (also the catalog's and the finder's view).
pub fn release_json(r: &Release, now: i64) -> serde_json::Value {
    json!({
        "image": r.image,
        "version": r.version,
        "state": r.state(now),
        "share": r.share(now) as f64 / 100.0,
        "start": r.start as f64 / 100.0,
        "since": kiln_publish::rfc3339(r.since),
        "duration-seconds": r.duration,
        "complete-at": r.complete_at().map(kiln_publish::rfc3339),
        "barrier": r.barrier,
    })
}

/// A refused release as the command reports it: a usage error (64), or the
/// channel's problem with its hint.
pub fn release_error(e: ReleaseError) -> anyhow::Error {
    match e {
        ReleaseError::Usage(m, h) => Usage::new(m, h).into(),
        ReleaseError::Publish(p) => {
            let hint = p.hint().unwrap_or_default();
            Hinted::new(p.to_string(), hint).into()
        }
    }
}

/// The file:// targets of the build's recipe ([[publish]]).
fn recipe_trees(dir: &Path, m: &Manifest) -> Result<Vec<(PathBuf, Option<String>)>> {
    let recipe_path = m.lock_path(dir).with_extension("toml");
    let none = || {
        Usage::new(
            format!(
                "{}: no --to given and no file:// [[publish]] entry in its recipe {}",
                dir.display(),
                recipe_path.display()
            ),
            "give --to file:///PATH, the download tree the build was published to",
        )
    };
    if !recipe_path.is_file() {
        return Err(none().into());
    }
    let recipe = kiln_recipe::Recipe::load(&recipe_path)?;
    let mut out = Vec::new();
    for p in &recipe.publish {
        if let Ok(Target::Tree(t)) = Target::parse(&p.to) {
            out.push((t, p.channel.clone()));
        }
    }
    if out.is_empty() {
        return Err(none().into());
    }
    Ok(out)
}

pub fn cmd_release(ui: &Ui, catalog: Option<&Path>, a: &ReleaseArgs) -> Result<()> {
    let m = Manifest::read_dir(&a.output)
        .map_err(|e| Usage::new(e.to_string(), "give the output directory of kiln build"))?;
    let facts = m.update_facts().ok_or_else(|| {
        Usage::new(
            format!(
                "{} ({}) is not a build of an [update] image: there is nothing to roll out",
                a.output.display(),
                m.image
            ),
            "releases are of immutable images with [update] (docs/updates.md)",
        )
    })?;
    let key_path = a.sign_key.as_deref().ok_or_else(|| {
        Usage::new(
            "kiln release signs the channel's listing again, but no key was given",
            "give --sign-key KEY.pem (or KILN_SIGN_KEY): the key the channel is signed with",
        )
    })?;
    let key = kiln_attest::SigningKey::from_pem_file(key_path)?;
    if a.valid_days == 0 {
        return Err(Usage::new(
            "--valid-days 0: the listing would be expired when written",
            "give at least 1 (default 30)",
        )
        .into());
    }
    let trees: Vec<(PathBuf, Option<String>)> = if a.targets.is_empty() {
        recipe_trees(&a.output, &m)?
    } else {
        a.targets
            .iter()
            .map(|t| match t {
                Target::Tree(p) => Ok((p.clone(), None)),
                other => Err(Usage::new(
                    format!(
                        "--to {}: a rollout lives in a download tree's update channel",
                        other.display()
                    ),
                    "give --to file:///PATH",
                )),
            })
            .collect::<Result<_, _>>()?
    };
    let action = match (a.wave, a.pause, a.resume) {
        (Some(w), _, _) => Action::Wave(w),
        (None, true, _) => Action::Pause,
        _ => Action::Resume,
    };
    let barrier = match (a.barrier, a.no_barrier) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let now = kiln_publish::unix_now();
    let mut reports = Vec::new();
    for (tree, recipe_channel) in &trees {
        let channel = a
            .channel
            .clone()
            .or_else(|| recipe_channel.clone())
            .unwrap_or_else(|| facts.channel.clone());
        if !tree.is_dir() {
            return Err(Usage::new(
                format!(
                    "{} is not a download tree (no such directory)",
                    tree.display()
                ),
                format!(
                    "publish the build first: kiln publish {} --to file://{}",
                    a.output.display(),
                    tree.display()
                ),
            )
            .into());
        }
        let root = Root::open(tree)?;
        let r = sysupdate::release(
            &root,
            &ReleaseRequest {
                channel: &channel,
                image: &m.image,
                version: &facts.version,
                action,
                barrier,
                key: &key,
                now,
                valid_for: i64::from(a.valid_days) * 86_400,
            },
        )
        .map_err(release_error)?;
        let rel = &r.release;
        ui.status(
            match action {
                Action::Wave(_) => "Released",
                Action::Pause => "Paused",
                Action::Resume => "Resumed",
            },
            &format!(
                "{} {} in {}/{}: {} of machines now{}{}",
                rel.image,
                rel.version,
                tree.display(),
                r.dir,
                rollout::percent(rel.share(now)),
                match rel.complete_at() {
                    Some(t) if rel.share(now) < rollout::ALL =>
                        format!(", every machine by {}", kiln_publish::rfc3339(t)),
                    _ => String::new(),
                },
                if rel.barrier { " (a barrier)" } else { "" }
            ),
        );
        crate::catalog::record_rollout(ui, catalog, &tree.display().to_string(), &r.rollout);
        reports.push((tree.clone(), channel, r));
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "schema-version": 1,
                "image": m.image,
                "version": facts.version,
                "trees": reports.iter().map(|(t, c, r)| json!({
                    "tree": t.display().to_string(),
                    "channel": c,
                    "best-before": r.best_before,
                    "release": release_json(&r.release, now),
                    "rollout": rollout_json(&r.rollout, now),
                })).collect::<Vec<_>>(),
            }))?
        );
    }
    Ok(())
}

pub fn rollout_json(r: &Rollout, now: i64) -> Vec<serde_json::Value> {
    r.releases.iter().map(|x| release_json(x, now)).collect()
}

#[cfg(test)]
mod tests {
    //! The image's update gate (`/usr/lib/kiln/update`, POSIX shell) run
    //! here against a channel that kiln-publish wrote and signed, with the
    //! real curl, gpgv, sha256sum and systemd-analyze: it must take the
    //! same decisions as `kiln_model::rollout`, and refuse every channel
    //! that is tampered with, unsigned, signed by another key or expired.
    use super::*;
    use kiln_attest::SigningKey;
    use kiln_publish::sysupdate::{publish, write_signed, Listing};
    use sha2::{Digest, Sha256};
    use std::process::Command;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBa5L1T55v8LU+qNQmjri6FsqJiJDQlXaZ7Omo2+R0XB\n-----END PRIVATE KEY-----\n";
    const OTHER: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIC0NR7IWdkd7SDR+pS40FczuLdjD9wNfWp+2QzNEbkSg\n-----END PRIVATE KEY-----\n";
    const NOW: i64 = 1_800_000_000;

    /// Publishes a one-byte UKI of each version of `img` into the channel.
    fn publish_fake(root: &Root, key: &SigningKey, versions: &[&str]) {
        for v in versions {
            let name = format!("img_{v}_x86-64.efi");
            let sha = hex::encode(Sha256::digest(v.as_bytes()));
            let pool = format!("pool/img/{sha}/{name}");
            root.write(&pool, v.as_bytes(), 0o644).unwrap();
            let p = sysupdate::Payload {
                name,
                pool,
                size: 1,
                sha256: sha,
            };
            let opts = kiln_publish::tree::TreeOptions {
                channel: "stable",
                key,
                valid_for: 86_400 * 10,
                now: NOW,
                base_url: None,
                keep: 5,
                progress: &|_| {},
            };
            publish(root, &[p], &opts).unwrap();
        }
    }

    struct Gate {
        dir: tempfile::TempDir,
        root: Root,
        key: SigningKey,
    }

    impl Gate {
        fn new() -> Gate {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("tree")).unwrap();
            let root = Root::open(&dir.path().join("tree")).unwrap();
            let key = SigningKey::from_pem(PEM).unwrap();
            std::fs::write(
                dir.path().join("ring.gpg"),
                kiln_attest::openpgp::public_keyring(&key),
            )
            .unwrap();
            std::fs::write(
                dir.path().join("gate"),
                kiln_build::output::update::gate_script("img", "stable", "http://unused/"),
            )
            .unwrap();
            let g = Gate { dir, root, key };
            publish_fake(&g.root, &g.key, &["1", "2", "3"]);
            g
        }

        fn release(&self, version: &str, wave: &str, barrier: bool) {
            sysupdate::release(
                &self.root,
                &ReleaseRequest {
                    channel: "stable",
                    image: "img",
                    version,
                    action: Action::Wave(rollout::parse_wave(wave).unwrap()),
                    barrier: Some(barrier),
                    key: &self.key,
                    now: NOW,
                    valid_for: 86_400 * 10,
                },
            )
            .unwrap();
        }

        /// Runs the gate (`--dry-run`) as machine `mid` on `current` at
        /// `now`: (exit status, the target it names, its output).
        fn run(&self, mid: &str, current: &str, now: i64) -> (bool, String, String) {
            let d = self.dir.path();
            std::fs::write(
                d.join("os-release"),
                format!("ID=debian\nIMAGE_VERSION={current}\n"),
            )
            .unwrap();
            std::fs::write(d.join("machine-id"), format!("{mid}\n")).unwrap();
            let o = Command::new("sh")
                .arg(d.join("gate"))
                .arg("--dry-run")
                .env(
                    "KILN_UPDATE_URL",
                    format!("file://{}/tree/sysupdate/stable/", d.display()),
                )
                .env("KILN_UPDATE_KEYRING", d.join("ring.gpg"))
                .env("KILN_UPDATE_OS_RELEASE", d.join("os-release"))
                .env("KILN_UPDATE_MACHINE_ID", d.join("machine-id"))
                .env("KILN_UPDATE_SYSUPDATE", "/bin/false")
                .env("KILN_UPDATE_NOW", now.to_string())
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            let target = out
                .lines()
                .find_map(|l| l.strip_prefix("kiln-update: target "))
                .unwrap_or("?")
                .to_string();
            (o.status.success(), target, out)
        }
    }

    fn mid(i: u32) -> String {
        hex::encode(&Sha256::digest(i.to_be_bytes())[..16])
    }

    #[test]
    fn the_gate_admits_machines_as_the_rollout_says() {
        let g = Gate::new();
        // Published, not released: nothing is offered.
        let (ok, t, out) = g.run(&mid(0), "1", NOW);
        assert!(ok && t == "none", "{out}");
        assert!(out.contains("no release is offered yet"), "{out}");
        g.release("2", "100%", false);
        g.release("3", "50%/4d", false);
        let doc = sysupdate::read_channel_rollout(&g.root, "stable", &g.key.verifying_key())
            .unwrap()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..24 {
            let m = mid(i);
            let place = rollout::place(&m, "stable");
            for (cur, now) in [("1", NOW), ("1", NOW + 2 * 86_400), ("2", NOW), ("3", NOW)] {
                let want = doc
                    .target("img", cur, place, now)
                    .map(|r| r.version.clone())
                    .unwrap_or_else(|| "none".into());
                let (ok, got, out) = g.run(&m, cur, now);
                assert!(ok, "{out}");
                assert_eq!(
                    got, want,
                    "machine {m} (place {place}) on {cur} at {now}: {out}"
                );
                seen.insert(want);
            }
        }
        // Both sides of the wave and the end of it were exercised.
        assert!(
            seen.contains("3") && seen.contains("2") && seen.contains("none"),
            "{seen:?}"
        );
        // A barrier at 2: a machine on 1 goes to 2 first, even when 3 admits it.
        g.release("2", "100%", true);
        let below = (0..100)
            .map(mid)
            .find(|m| rollout::place(m, "stable") < 4000)
            .unwrap();
        let (_, t, out) = g.run(&below, "1", NOW);
        assert_eq!(t, "2", "{out}");
        assert!(out.contains("waits for the barrier release 2"), "{out}");
        let (_, t, _) = g.run(&below, "2", NOW);
        assert_eq!(t, "3");
        // Paused: nobody new.
        sysupdate::release(
            &g.root,
            &ReleaseRequest {
                channel: "stable",
                image: "img",
                version: "3",
                action: Action::Pause,
                barrier: None,
                key: &g.key,
                now: NOW,
                valid_for: 86_400 * 10,
            },
        )
        .unwrap();
        let (_, t, out) = g.run(&below, "2", NOW);
        assert_eq!(t, "none", "{out}");
    }

    #[test]
    fn the_gate_refuses_tampered_unsigned_foreign_and_expired_channels() {
        let g = Gate::new();
        g.release("2", "100%", false);
        let m = mid(1);
        assert_eq!(g.run(&m, "1", NOW).1, "2");
        let d = g.dir.path().join("tree/sysupdate/stable");
        let refused = |what: &str, want: &str, now: i64| {
            let (ok, t, out) = g.run(&m, "1", now);
            assert!(!ok && t == "none", "{what}: {out}");
            assert!(
                out.contains("REFUSED") && out.contains(want),
                "{what}: {out}"
            );
        };
        // Expired: the day of BEST-BEFORE and after.
        refused("expired", "expired on", NOW + 10 * 86_400);
        // The rollout changed after signing.
        let doc = std::fs::read_to_string(d.join("ROLLOUT")).unwrap();
        std::fs::write(d.join("ROLLOUT"), doc.replace(" 10000 ", " 09999 ")).unwrap();
        refused("rollout", "changed after signing", NOW);
        std::fs::write(d.join("ROLLOUT"), &doc).unwrap();
        assert_eq!(g.run(&m, "1", NOW).1, "2");
        // The listing changed after signing, or its signature.
        let listing = std::fs::read(d.join("SHA256SUMS")).unwrap();
        let mut l = listing.clone();
        l[0] ^= 1;
        std::fs::write(d.join("SHA256SUMS"), &l).unwrap();
        refused("listing", "does not verify", NOW);
        std::fs::write(d.join("SHA256SUMS"), &listing).unwrap();
        let sig = std::fs::read(d.join("SHA256SUMS.gpg")).unwrap();
        let mut s = sig.clone();
        let n = s.len();
        s[n - 5] ^= 1;
        std::fs::write(d.join("SHA256SUMS.gpg"), &s).unwrap();
        refused("signature", "does not verify", NOW);
        std::fs::remove_file(d.join("SHA256SUMS.gpg")).unwrap();
        refused("unsigned", "unsigned channel", NOW);
        // Signed by another key.
        let text = String::from_utf8(listing.clone()).unwrap();
        let parsed: Listing = sysupdate::parse_listing(&text).unwrap();
        let other = SigningKey::from_pem(OTHER).unwrap();
        write_signed(&g.root, "stable", &parsed, &other, NOW).unwrap();
        refused("other key", "does not verify", NOW);
        // A hostile line in a properly signed rollout.
        let mut hostile = parsed.clone();
        let bad = doc.replace("release img 2 ", "release img $(reboot) ");
        std::fs::write(d.join("ROLLOUT"), &bad).unwrap();
        hostile.files.insert(
            rollout::FILE.into(),
            hex::encode(Sha256::digest(bad.as_bytes())),
        );
        write_signed(&g.root, "stable", &hostile, &g.key, NOW).unwrap();
        refused("hostile line", "malformed line", NOW);
        // A rollout of another channel replayed into this one.
        let moved = doc.replace("kiln-rollout 1 stable", "kiln-rollout 1 beta");
        std::fs::write(d.join("ROLLOUT"), &moved).unwrap();
        hostile.files.insert(
            rollout::FILE.into(),
            hex::encode(Sha256::digest(moved.as_bytes())),
        );
        write_signed(&g.root, "stable", &hostile, &g.key, NOW).unwrap();
        refused("other channel", "of channel stable", NOW);
        // A bad machine id is not guessed at.
        write_signed(&g.root, "stable", &parsed, &g.key, NOW).unwrap();
        std::fs::write(d.join("ROLLOUT"), &doc).unwrap();
        let (ok, _, out) = g.run("uninitialized", "1", NOW);
        assert!(!ok && out.contains("no machine id"), "{out}");
    }

    #[test]
    fn a_full_disk_leaves_the_channel_as_it_was() {
        let small = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "kiln-test"])
            .arg(small.path())
            .status()
            .unwrap();
        assert!(st.success(), "mounting a small tmpfs needs root");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
        let _u = Unmount(small.path().to_path_buf());
        let root = Root::open(small.path()).unwrap();
        let key = SigningKey::from_pem(PEM).unwrap();
        publish_fake(&root, &key, &["1", "2"]);
        let req = |version: &'static str| ReleaseRequest {
            channel: "stable",
            image: "img",
            version,
            action: Action::Wave(rollout::parse_wave("10%/1h").unwrap()),
            barrier: None,
            key: &key,
            now: NOW,
            valid_for: 86_400 * 10,
        };
        sysupdate::release(&root, &req("1")).unwrap();
        let d = small.path().join("sysupdate/stable");
        let snapshot = || {
            let mut names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let files: Vec<Vec<u8>> = ["ROLLOUT", "SHA256SUMS", "SHA256SUMS.gpg"]
                .iter()
                .map(|f| std::fs::read(d.join(f)).unwrap())
                .collect();
            (names, files)
        };
        let before = snapshot();
        // Fill the disk.
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(small.path().join("filler")).unwrap();
            let chunk = vec![0u8; 4096];
            while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
        }
        let e = match sysupdate::release(&root, &req("2")) {
            Err(ReleaseError::Publish(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(e.contains("left as it was"), "{e}");
        assert!(snapshot() == before, "the channel changed on a full disk");
        assert!(sysupdate::verify(&root, "stable", &key.verifying_key(), NOW).is_empty());
        // Room again: the release goes through.
        std::fs::remove_file(small.path().join("filler")).unwrap();
        sysupdate::release(&root, &req("2")).unwrap();
        let doc = sysupdate::read_channel_rollout(&root, "stable", &key.verifying_key())
            .unwrap()
            .unwrap();
        assert!(doc.find("img", "2").is_some());
    }
}
