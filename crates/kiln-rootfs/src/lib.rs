//! Assembling a root filesystem from verified `.deb`s: native unpacking, the
//! target's own dpkg and maintainer scripts in a sandbox, customisation and
//! hygiene.

pub mod binfmt;
pub mod customize;
pub mod distroless;
pub mod extract;
pub mod hygiene;
pub mod inroot;
pub mod install;
pub mod sandbox;
pub mod userns;

use std::path::PathBuf;

pub use install::{install, InstallOptions, PackageFile};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{package}: not a valid Debian package: {message}")]
    BadDeb { package: String, message: String },
    #[error("unpacking {package}: {source}")]
    Extract {
        package: String,
        #[source]
        source: extract::ExtractError,
    },
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{} failed{}:\n{tail}", describe(package, script), code.map(|c| format!(" (dpkg exit status {c})")).unwrap_or_default())]
    Dpkg {
        package: Option<String>,
        script: Option<String>,
        code: Option<i32>,
        tail: String,
        log: PathBuf,
    },
    #[error("customize: {0}")]
    Customize(String),
}

fn describe(package: &Option<String>, script: &Option<String>) -> String {
    match (package, script) {
        (Some(p), Some(s)) => format!("the {s} maintainer script of {p}"),
        (Some(p), None) => format!("installing {p}"),
        _ => "dpkg".to_string(),
    }
}

/// The number of threads for work on every package: the machine's cores.
pub(crate) fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// `f` for every package on `jobs` threads, largest `.deb` first (so the
/// big ones do not finish last on one core); results in package order.
/// After a failure no other package is started, and the error of the first
/// failing package (in order) is returned.
pub(crate) fn in_parallel<P, T>(
    pkgs: &[P],
    jobs: usize,
    f: impl Fn(usize, &PackageFile) -> Result<T, RootfsError> + Sync,
) -> Result<Vec<T>, RootfsError>
where
    P: std::borrow::Borrow<PackageFile> + Sync,
    T: Send,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let mut order: Vec<usize> = (0..pkgs.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(
            std::fs::metadata(&pkgs[i].borrow().deb)
                .map(|m| m.len())
                .unwrap_or(0),
        )
    });
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<T, RootfsError>>>> =
        pkgs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, pkgs.len().max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = order.get(k) else { return };
                let r = f(i, pkgs[i].borrow());
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                *slots[i].lock().unwrap() = Some(r);
            });
        }
    });
    let mut out = Vec::with_capacity(pkgs.len());
    let mut first_error = None;
    for slot in slots {
        match slot.into_inner().unwrap() {
            Some(Ok(t)) => out.push(t),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            // Not started after another package failed.
            None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

impl RootfsError {
    pub fn io(what: &str, source: std::io::Error) -> RootfsError {
        RootfsError::Io {
            what: what.to_string(),
            source,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            RootfsError::Io { source, .. } if source.raw_os_error() == Some(28) => Some(
                "the disk is full: free space in the temporary directory (KILN_TMPDIR, TMPDIR) or the output directory"
                    .into(),
            ),
            RootfsError::Dpkg { .. } => Some(
                "the package's maintainer script failed inside the image; check the package set or the customize commands"
                    .into(),
            ),
            RootfsError::Sandbox(sandbox::SandboxError::NotRoot) => Some(match userns::unavailable() {
                Some(why) => format!(
                    "an ordinary user builds in a user namespace of its own, and this one could not be made: {why}; \
                     or run kiln build as root, or build distroless ([container] distroless = true: no scripts run)"
                ),
                None => "run kiln build as root (e.g. with sudo), or build distroless ([container] distroless = true: no scripts run, no root needed)".into(),
            }),
            RootfsError::Sandbox(sandbox::SandboxError::NoEnv { .. }) => Some(
                "keep coreutils in the image: check [packages] exclude and the sources' Essential set".into(),
            ),
            RootfsError::BadDeb { .. } => Some("delete the cache entry and fetch again".into()),
            RootfsError::Extract {
                source:
                    extract::ExtractError::TooLarge { .. } | extract::ExtractError::TooManyMembers { .. },
                ..
            } => Some(format!(
                "check where the package comes from (its [[source]]) and leave it out of the recipe \
                 ([packages] exclude) or its source; if it is trusted and only its Installed-Size \
                 is wrong, raise the limit for every package with {}=SIZE (e.g. 2G)",
                extract::LIMIT_ENV
            )),
            RootfsError::Extract {
                source: extract::ExtractError::RoomExceeded { .. },
                ..
            } => Some(
                "build on disk: set KILN_TMPDIR to a directory on disk (e.g. /var/tmp)".into(),
            ),
            _ => None,
        }
    }
}
