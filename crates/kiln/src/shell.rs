//! `kiln shell OUT`: a shell (or one command) inside a built image, run in
//! the build sandbox on a throwaway copy: the image is unpacked with the
//! same checks as a package (no path out of the copy, size limits), and the
//! copy is removed when the shell ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use kiln_model::{Cancel, Format, Hinted, Manifest};
use kiln_rootfs::extract::{self, Limits};
use kiln_rootfs::sandbox::{self, SandboxError};

use crate::ui::Ui;

/// Set while a shell has the terminal: Ctrl-C is the shell's, not Kiln's.
pub static FOREGROUND: AtomicBool = AtomicBool::new(false);

pub struct ShellArgs {
    pub target: PathBuf,
    pub arch: Option<String>,
    pub network: bool,
    pub command: Vec<String>,
}

/// What to unpack: a tarball, or an OCI image's layers (media type, blob).
pub(crate) enum Source {
    Tar(PathBuf),
    Layers(Vec<(String, PathBuf)>),
}

/// Runs the shell; returns its exit status.
pub fn cmd_shell(ui: &Ui, cancel: &Cancel, a: &ShellArgs) -> Result<u8> {
    let (source, name) = source_of(a)?;
    if !sandbox::is_root() {
        return Err(Hinted::new(
            "kiln shell runs the image in the build sandbox, which needs root",
            "run it as root or with sudo",
        )
        .into());
    }
    let scratch = scratch_dir()?;
    cancel.track_dir(scratch.path());
    let root = scratch.path().join("root");
    std::fs::create_dir(&root)?;
    ui.status("Unpacking", &a.target.display().to_string());
    unpack(&source, &root).with_context(|| format!("unpacking {}", a.target.display()))?;
    let r = kiln_rootfs::inroot::Root::open(&root)?;
    let argv: Vec<String> = if a.command.is_empty() {
        match ["bin/bash", "bin/sh"].iter().find(|s| r.exists(s)) {
            Some(s) => vec![format!("/{s}")],
            None => {
                return Err(Hinted::new(
                    format!("{} has no shell (/bin/bash or /bin/sh)", a.target.display()),
                    "a distroless image has none: `kiln ls --files DIR` lists its files; `kiln shell DIR -- PROGRAM` runs one of its programs",
                )
                .into())
            }
        }
    } else {
        a.command.clone()
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "dumb".into());
    let env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("TERM".into(), term),
        ("LANG".into(), "C.UTF-8".into()),
        ("PS1".into(), format!("[kiln shell {name}] \\w# ")),
    ];
    if a.command.is_empty() {
        ui.status(
            "Shell",
            &format!(
                "in {name} ({}; changes are discarded on exit)",
                if a.network {
                    "host network"
                } else {
                    "no network"
                }
            ),
        );
    }
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    FOREGROUND.store(true, Ordering::SeqCst);
    let status = sandbox::run_in_root_with(
        &root,
        &argv_ref,
        &env,
        &scratch.path().join("unused.log"),
        cancel,
        sandbox::Options {
            network: a.network,
            interactive: true,
        },
    );
    FOREGROUND.store(false, Ordering::SeqCst);
    cancel.untrack_dir(scratch.path());
    let status = match status {
        Err(SandboxError::NoEnv { .. }) => {
            return Err(Hinted::new(
                format!("{} has no /usr/bin/env, through which the sandbox starts commands", a.target.display()),
                "a distroless image without coreutils cannot be entered; `kiln ls --files DIR` lists its files",
            )
            .into())
        }
        other => other?,
    };
    Ok(match status.code() {
        Some(c) => c.clamp(0, 255) as u8,
        None => 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0) as u8,
    })
}

/// The image named by the arguments and its name for the prompt.
fn source_of(a: &ShellArgs) -> Result<(Source, String)> {
    let t = &a.target;
    let stem = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if t.is_file() {
        return Ok((Source::Tar(t.clone()), stem(t)));
    }
    if t.join("index.json").is_file() && t.join("blobs").is_dir() {
        let arch = a
            .arch
            .clone()
            .unwrap_or_else(|| kiln_recipe::host_architecture().to_string());
        return Ok((Source::Layers(crate::ls::oci_layers(t, &arch)?), stem(t)));
    }
    let (source, _) = image_of(t, a.arch.as_deref())?;
    let m = Manifest::read_dir(t)?;
    Ok((source, m.image))
}

/// The image of the build in `dir` for `arch` (default: the first): its
/// rootfs tarball, else its OCI image's layers, and that file's or
/// layout's path.
pub(crate) fn image_of(dir: &Path, arch: Option<&str>) -> Result<(Source, PathBuf)> {
    let t = dir;
    let m = Manifest::read_dir(t).map_err(|e| {
        anyhow::Error::from(Hinted::new(
            format!("{} is no image: {e}", t.display()),
            "give a build's output directory, its rootfs tarball, or an OCI layout",
        ))
    })?;
    let arch = crate::ls::pick_arch(&m, t, arch)?;
    let of = |f: Format| {
        m.outputs
            .iter()
            .find(|o| o.format == f && o.architecture.as_deref().is_none_or(|x| x == arch))
    };
    if let Some(o) = of(Format::Tar) {
        return Ok((Source::Tar(t.join(&o.path)), t.join(&o.path)));
    }
    if of(Format::Oci).is_some() {
        return Ok((
            Source::Layers(crate::ls::oci_layers(&t.join("oci"), &arch)?),
            t.join("oci"),
        ));
    }
    Err(Hinted::new(
        format!("{} has no rootfs tarball or OCI image", t.display()),
        "kiln shell enters tar and oci outputs; boot a disk image with `kiln boot`",
    )
    .into())
}

/// A private directory for the copy, beside the system's temporary files.
fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("kiln-shell-")
        .tempdir()
        .context("creating a scratch directory for the image")
}

/// Unpacks the image into `root` as a package is unpacked: nothing lands
/// outside it and the bytes are bounded by the input's size.
pub(crate) fn unpack(source: &Source, root: &Path) -> Result<()> {
    match source {
        Source::Tar(p) => {
            let size = std::fs::metadata(p)?.len();
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            extract::unpack_filtered(f, root, &not_dev, &Limits::for_package(size))?;
        }
        Source::Layers(layers) => {
            for (media, blob) in layers {
                // Compressed layers unpack to a few times their size.
                let limits = Limits::for_package(std::fs::metadata(blob)?.len().saturating_mul(8));
                let open = || crate::ls::open_layer(media, blob);
                // Whiteouts remove what the layers below had, first.
                let r = kiln_rootfs::inroot::Root::open(root)?;
                let mut ar = tar::Archive::new(open()?);
                for e in ar.entries()? {
                    let e = e?;
                    let path = e.path()?.to_string_lossy().into_owned();
                    let parts = extract::member_components(&path)?;
                    let Some((base, parent)) = parts.split_last() else {
                        continue;
                    };
                    let parent = parent.join("/");
                    if base == ".wh..wh..opq" {
                        if r.is_dir(&parent) {
                            for (n, _) in r.read_dir(&parent)? {
                                r.remove_tree(Path::new(&parent).join(n))?;
                            }
                        }
                    } else if let Some(gone) = base.strip_prefix(".wh.") {
                        match r.remove_tree(Path::new(&parent).join(gone)) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                return Err(e.into())
                            }
                            _ => {}
                        }
                    }
                }
                let keep =
                    |p: &str| not_dev(p) && !p.rsplit('/').next().unwrap_or(p).starts_with(".wh.");
                extract::unpack_filtered(open()?, root, &keep, &limits)?;
            }
        }
    }
    Ok(())
}

/// The image's device nodes stay out: the sandbox gives the shell a /dev
/// of its own.
fn not_dev(p: &str) -> bool {
    !p.starts_with("/dev/")
}
