//! The commands: each turns parsed arguments into a library call and
//! renders its result. No pipeline logic lives here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use kiln_build::fetch::human_size;
use kiln_build::{BuildRequest, SourceOptions};
use kiln_model::event::Stage;
use kiln_model::{Cancel, Hinted, Reporter};
use kiln_recipe::{Lock, LockedPackage, Reason, Recipe};
use serde_json::json;

fn summary_json(lock: &Lock, path: &Path) -> serde_json::Value {
    json!({
        "lock": path.display().to_string(),
        "recipe-sha256": lock.recipe,
        "packages": lock.packages.iter().map(|p| json!({
            "name": p.name,
            "version": p.version,
            "architecture": p.architecture,
            "target": p.target,
            "source": p.source,
            "source-version": p.source_version,
            "sha256": p.sha256,
            "size": p.size,
            "installed-size-kib": p.installed_size,
            "reason": p.reason,
        })).collect::<Vec<_>>(),
        "download-size": lock.packages.iter().map(|p| p.size).sum::<u64>(),
        "installed-size": lock.packages.iter().map(|p| p.installed_size.saturating_mul(1024)).sum::<u64>(),
        "releases": lock.releases.iter().map(|r| json!({
            "suite": r.suite, "date": r.date, "sha256": r.sha256,
        })).collect::<Vec<_>>(),
    })
}

pub fn cmd_lock(
    reporter: &dyn Reporter,
    recipe_path: &Path,
    check: bool,
    update: Option<&[String]>,
    json: bool,
    args: &SourceOptions,
) -> Result<()> {
    let start = Instant::now();
    let recipe = Recipe::load(recipe_path)?;
    let lock_path = recipe.lock_path();
    if check {
        if !lock_path.exists() {
            return Err(Hinted {
                message: format!("{} does not exist", lock_path.display()),
                hint: format!("run `kiln lock {}` first", recipe_path.display()),
            }
            .into());
        }
        let lock = Lock::read(&lock_path)?;
        lock.check(&recipe, &lock_path)?;
        let proof = kiln_build::lock::check_against_indexes(&lock, &recipe, args, reporter)?;
        reporter.step(
            Stage::LockChecked,
            &format!(
                "{} matches {}; its {} packages are in the signed indexes of its {} Release files",
                lock_path.display(),
                recipe_path.display(),
                proof.packages,
                proof.releases
            ),
        );
        if json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&summary_json(&lock, &lock_path))?
            );
        }
        return Ok(());
    }
    let lock = kiln_build::lock::resolve_recipe_updating(&recipe, args, reporter, update)?;
    let old = Lock::read(&lock_path).ok();
    if old.as_ref() != Some(&lock) {
        lock.write(&lock_path)?;
    }
    let download: u64 = lock.packages.iter().map(|p| p.size).sum();
    let installed: u64 = lock
        .packages
        .iter()
        .map(|p| p.installed_size.saturating_mul(1024))
        .sum();
    let diff = old.as_ref().map(|o| kiln_build::lock::diff(o, &lock));
    let changed = match (&old, &diff) {
        (None, _) | (_, None) => "written".to_string(),
        (Some(o), _) if *o == lock => "unchanged".to_string(),
        (Some(_), Some(d)) if d.is_empty() => {
            "updated: the same packages and versions; the recipe, sources or Release files changed"
                .to_string()
        }
        (Some(_), Some(d)) => {
            let mut parts = Vec::new();
            for (n, what) in [
                (d.added.len(), "added"),
                (d.removed.len(), "removed"),
                (d.updated.len(), "updated"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            format!("updated: {}", parts.join(", "))
        }
    };
    reporter.step(
        Stage::Lock,
        &format!(
            "{} packages for {} (download {}, installed {}) in {:.2}s -> {} ({changed})",
            lock.packages.len(),
            recipe.image.architectures.join(", "),
            human_size(download),
            human_size(installed),
            start.elapsed().as_secs_f64(),
            lock_path.display()
        ),
    );
    // Every change, as `uv lock` and `cargo update` show them.
    if let Some(d) = &diff {
        let archs = recipe.image.architectures.len() > 1;
        let shown = |c: &kiln_build::lock::Change, version: String| {
            if archs {
                format!("{} {version} (for {})", c.name, c.target)
            } else {
                format!("{} {version}", c.name)
            }
        };
        for c in &d.added {
            reporter.step(Stage::Added, &shown(c, c.to.clone().unwrap_or_default()));
        }
        for c in &d.removed {
            reporter.step(
                Stage::Removed,
                &shown(c, c.from.clone().unwrap_or_default()),
            );
        }
        for c in &d.updated {
            let v = format!(
                "{} -> {}",
                c.from.as_deref().unwrap_or(""),
                c.to.as_deref().unwrap_or("")
            );
            reporter.step(Stage::Updated, &shown(c, v));
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&lock, &lock_path))?
        );
    }
    Ok(())
}

pub fn cmd_why(
    package: &str,
    recipe: Option<PathBuf>,
    lock: Option<PathBuf>,
    arch: Option<String>,
    json: bool,
) -> Result<()> {
    let lock_path = match (recipe, lock) {
        (Some(r), _) => kiln_recipe::lock_path_for(&r),
        (None, Some(l)) => l,
        (None, None) => PathBuf::from("kiln.lock"),
    };
    if !lock_path.exists() {
        return Err(Hinted {
            message: format!("{} does not exist", lock_path.display()),
            hint: "name the recipe with --recipe RECIPE or the lock with --lock LOCK, or run `kiln lock RECIPE`".into(),
        }
        .into());
    }
    let lock = Lock::read(&lock_path)?;
    let why = kiln_build::lock::why(&lock, &lock_path, package, arch.as_deref())?;
    let reason = |r: Reason| match r {
        Reason::Include => "listed in [packages] include",
        Reason::Essential => "Essential: yes",
        Reason::Priority => "in the [packages] priority set",
        Reason::Dependency => "a dependency",
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "package": package,
                "target": why.target,
                "root-reason": why.root_reason,
                "path": why.chain.iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let (root, version) = &why.chain[0];
    outln!("{root} {version} ({})", reason(why.root_reason));
    for (i, (n, v)) in why.chain.iter().enumerate().skip(1) {
        outln!("{}└─ {n} {v}", "   ".repeat(i - 1));
    }
    Ok(())
}

pub fn cmd_fetch(
    reporter: &dyn Reporter,
    cancel: &Cancel,
    recipe_path: &Path,
    locked: bool,
    args: &SourceOptions,
) -> Result<()> {
    let (_, lock) = kiln_build::lock::ensure_lock(recipe_path, locked, args, reporter)?;
    let pkgs: Vec<&LockedPackage> = lock.packages.iter().collect();
    kiln_build::fetch::fetch_packages(&lock, &pkgs, args, reporter, cancel)?;
    Ok(())
}

pub fn cmd_build(
    ui: &crate::ui::Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    json: bool,
    req: &BuildRequest,
) -> Result<()> {
    let manifest = kiln_build::build(req, reporter, cancel)?;
    let out_dir = match &req.output {
        Some(o) => o.clone(),
        None => Recipe::load(&req.recipe)?.output_dir(),
    };
    crate::catalog::record_after_build(ui, catalog, &out_dir);
    if json {
        // The same document as OUT/manifest.json: typed, versioned.
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(manifest.to_json().as_bytes());
    }
    Ok(())
}

/// `kiln verify DIR`.
pub fn cmd_verify(
    reporter: &dyn Reporter,
    dir: &Path,
    key: Option<PathBuf>,
    lock: Option<PathBuf>,
    json_out: bool,
    args: &SourceOptions,
) -> Result<()> {
    let r = kiln_build::verify::verify(dir, key.as_deref(), lock.as_deref(), args, reporter)?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    }
    reporter.step(
        Stage::Verify,
        &format!(
            "{} subjects, {} packages in both SBOMs{}, {}",
            r.subjects.len(),
            r.packages,
            if r.lock_proven {
                " and in the signed indexes of the lock"
            } else {
                ""
            },
            match &r.signed_by {
                Some(k) => format!("signature by key {}", &k[..16]),
                None => "UNSIGNED".into(),
            }
        ),
    );
    Ok(())
}

/// A mistake on the command line found after parsing: exits 64
/// (EX_USAGE) like a clap error, with a hint.
#[derive(Debug)]
pub struct Usage(pub Hinted);

impl Usage {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Usage {
        Usage(Hinted::new(message, hint))
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Usage {}

/// The credentials for `registry`: `--username` or $KILN_REGISTRY_USER with
/// $KILN_REGISTRY_PASSWORD, else what `docker login` stored.
pub fn registry_credentials(
    username: Option<String>,
    registry: &str,
) -> Result<Option<kiln_registry::Credentials>> {
    let user = username.or_else(|| std::env::var("KILN_REGISTRY_USER").ok());
    Ok(match user {
        Some(u) => Some(kiln_registry::Credentials {
            username: u,
            password: std::env::var("KILN_REGISTRY_PASSWORD").map_err(|_| {
                Hinted::new(
                    "a registry user was given but no password",
                    "set KILN_REGISTRY_PASSWORD (passwords are not taken on the command line)",
                )
            })?,
        }),
        // What `docker login` stored for this registry, if anything.
        None => {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir {
                Some(d) => kiln_registry::docker_config::credentials_for(&d, registry)?,
                None => None,
            }
        }
    })
}

/// `kiln push LAYOUT REFERENCE`.
pub fn cmd_push(
    reporter: &dyn Reporter,
    layout: &Path,
    reference: &str,
    extra_tags: &[String],
    json: bool,
    insecure: bool,
    username: Option<String>,
) -> Result<()> {
    // A build's output directory: its OCI layout.
    let layout = if layout.join(kiln_model::MANIFEST_FILE).is_file() {
        let oci = layout.join("oci");
        if !oci.is_dir() {
            return Err(Hinted::new(
                format!(
                    "{} holds no OCI image (no oci/ beside its manifest.json)",
                    layout.display()
                ),
                "build it with [output] formats = [\"oci\"]",
            )
            .into());
        }
        oci
    } else {
        layout.to_path_buf()
    };
    let layout = layout.as_path();
    let (base, tag) = kiln_publish::registry::split_tag(reference);
    let mut tags: Vec<String> = tag.map(str::to_string).into_iter().collect();
    if tags.is_empty() {
        tags = kiln_registry::layout_tags(layout);
        if tags.is_empty() {
            tags.push("latest".into());
        }
    }
    for t in extra_tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    let references = tags
        .iter()
        .map(|t| kiln_registry::Reference::parse(&format!("{base}:{t}")))
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = registry_credentials(username, &references[0].registry)?;
    let progress = |m: &str| reporter.step(Stage::Push, m);
    let mut digest = None;
    let mut pushed = Vec::new();
    for reference in &references {
        let report = kiln_registry::push(
            layout,
            reference,
            &kiln_registry::PushOptions {
                insecure,
                credentials: credentials.clone(),
                progress: &progress,
            },
        )?;
        reporter.step(
            Stage::Pushed,
            &format!(
                "{reference} ({} blobs uploaded, {} already there)",
                report.blobs_uploaded, report.blobs_skipped
            ),
        );
        pushed.push(serde_json::json!({
            "reference": reference.to_string(),
            "digest": report.digest,
            "blobs-uploaded": report.blobs_uploaded,
            "blobs-skipped": report.blobs_skipped,
        }));
        digest = Some(report.digest);
    }
    match digest {
        Some(d) if json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "schema-version": 1,
                "digest": d,
                "pushed": pushed,
            }))?
        ),
        Some(d) => outln!("{d}"),
        None => {}
    }
    Ok(())
}

/// `kiln init`: a starter recipe, never over an existing file.
pub fn cmd_init(
    ui: &crate::ui::Ui,
    path: &Path,
    name: Option<String>,
    suite: Option<String>,
    distroless: bool,
) -> Result<()> {
    if path.exists() {
        return Err(Hinted::new(
            format!("{} already exists", path.display()),
            "give another file name: kiln init NAME.toml",
        )
        .into());
    }
    let name = name.unwrap_or_else(|| {
        path.file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| *s != "kiln")
            .unwrap_or(if distroless { "app" } else { "cloud" })
            .to_string()
    });
    // The suite Kiln's own recipes are tested against (its cloud images
    // need systemd-ukify, which older suites lack).
    let suite = suite.unwrap_or_else(|| "trixie".into());
    let arch = kiln_recipe::host_architecture();
    let body = if distroless {
        format!(
            "# A distroless container image: no shell, no package manager, only what\n\
             # the packages below need. Build (no root needed): kiln build {file}\n\
             [image]\nname = \"{name}\"\nsuite = \"{suite}\"\narchitectures = [\"{arch}\"]\n\n\
             [packages]\ninclude = [\"python3\", \"ca-certificates\"]\n\n\
             [container]\ndistroless = true\nentrypoint = [\"/usr/bin/python3\"]\nuser = \"65532\"\nworking-dir = \"/home/nonroot\"\n\n\
             [output]\nformats = [\"oci\"]\n",
            file = path.display()
        )
    } else {
        format!(
            "# A bootable cloud image: systemd-boot, a unified kernel image, cloud-init.\n\
             # Build (as root): kiln build {file}   Boot and test it: kiln test {file}\n\
             [image]\nname = \"{name}\"\nsuite = \"{suite}\"\narchitectures = [\"{arch}\"]\n\n\
             [packages]\npriority = \"important\"\nrecommends = false\n\
             include = [\"apt\", \"ca-certificates\", \"linux-image-cloud-{arch}\", \"systemd-sysv\", \"udev\", \"dbus\", \
             \"systemd-boot-efi\", \"systemd-ukify\", \"systemd-resolved\", \"initramfs-tools\", \"openssh-server\", \
             \"cloud-init\", \"cloud-guest-utils\"]\nexclude = [\"ifupdown\"]\n\n\
             [customize]\nenable = [\"systemd-networkd\", \"systemd-resolved\"]\n\n\
             [[customize.file]]\npath = \"/etc/cloud/cloud.cfg.d/90-kiln-datasources.cfg\"\n\
             content = \"datasource_list: [NoCloud, ConfigDrive, None]\\n\"\n\n\
             [disk]\ncmdline = [\"console=tty0\", \"console=ttyS0,115200\"]\n\n\
             [[test]]\nname = \"ssh server is running\"\ncommand = \"systemctl is-active ssh\"\nexpect = \"active\"\n\n\
             [output]\nformats = [\"disk\", \"qcow2\"]\n",
            file = path.display()
        )
    };
    kiln_model::fsutil::write_atomic(path, body.as_bytes())?;
    ui.status(
        "Created",
        &format!(
            "{} (edit it, then: kiln lock {} && kiln build {})",
            path.display(),
            path.display(),
            path.display()
        ),
    );
    Ok(())
}
