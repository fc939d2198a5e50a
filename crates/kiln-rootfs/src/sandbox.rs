//! Running commands inside the root being built.
//!
//! As root: a private mount and PID namespace (`unshare`), with `/proc`,
//! `/dev` and `/sys` mounted into the root for the command's lifetime only,
//! then `chroot`. Nothing is mounted on the host's namespace, so nothing can
//! be left mounted when a build is interrupted, and no daemon a maintainer
//! script starts outlives the command.

use std::path::Path;
use std::process::{Command, Stdio};

use kiln_model::Cancel;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building a root filesystem needs root privileges (chroot, ownership of files)")]
    NotRoot,
    #[error("cancelled")]
    Cancelled,
    #[error("cannot run {what} in the image: it has no /usr/bin/env (coreutils), through which every command inside it is started")]
    NoEnv { what: String },
}

/// The environment maintainer scripts see: clean, non-interactive, reproducible.
pub fn script_env(epoch: i64) -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("LC_ALL".into(), "C.UTF-8".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), "/root".into()),
        ("TERM".into(), "dumb".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        ("DEBCONF_NONINTERACTIVE_SEEN".into(), "true".into()),
        ("SOURCE_DATE_EPOCH".into(), epoch.to_string()),
        ("KILN_BUILD".into(), "1".into()),
    ]
}

pub fn is_root() -> bool {
    // Effective uid 0; read from /proc to avoid a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command to run in the root: `argv` with `env`, output appended to `log`.
/// The sandbox process is registered with `cancel`: cancelling the build
/// kills it, which ends its PID namespace and every process in it.
pub fn run_in_root(
    root: &Path,
    argv: &[&str],
    env: &[(String, String)],
    log: &Path,
    cancel: &Cancel,
) -> Result<std::process::ExitStatus, SandboxError> {
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    if !is_root() {
        return Err(SandboxError::NotRoot);
    }
    // Looked at, never followed out: a link here is fine, its absence is not.
    if std::fs::symlink_metadata(root.join("usr/bin/env")).is_err() {
        return Err(SandboxError::NoEnv {
            what: argv.join(" "),
        });
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| SandboxError::Spawn {
            what: format!("log {}", log.display()),
            source: e,
        })?;
    let setup = r#"set -e
r="$KILN_ROOT"
mkdir -p "$r/proc" "$r/dev" "$r/sys"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount --rbind /dev "$r/dev"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys" 2>/dev/null || true
unset KILN_ROOT
exec chroot "$r" /usr/bin/env -i "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "/bin/sh",
        "-c",
        setup,
        "kiln-sandbox",
    ]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.args(argv)
        .env("KILN_ROOT", root)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| SandboxError::Spawn {
            what: "log".into(),
            source: e,
        })?)
        .stderr(log_file);
    let spawn_err = |e| SandboxError::Spawn {
        what: format!("unshare/chroot for {}", argv.join(" ")),
        source: e,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    cancel.child_started(child.id());
    let status = child.wait();
    cancel.child_finished(child.id());
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    status.map_err(spawn_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_env_is_named_not_blamed_on_a_script() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let e = run_in_root(
            &root,
            &["dpkg", "--configure", "-a"],
            &[],
            &log,
            &Cancel::new(),
        )
        .unwrap_err();
        if is_root() {
            assert!(matches!(e, SandboxError::NoEnv { .. }), "{e}");
            assert!(e.to_string().contains("/usr/bin/env"), "{e}");
        } else {
            assert!(matches!(e, SandboxError::NotRoot), "{e}");
        }
    }
}
