//! The finder as static files, to host beside a download tree.
//!
//! The export is written whole into a temporary directory beside its place
//! and then swapped in with one rename, so a web server never serves half
//! of an export, and a failed one leaves the previous export as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_catalog::{Catalog, Found, Query};
use serde_json::json;

use crate::api::{self, SCHEMA_VERSION};
use crate::page::{self, Mode};
use crate::ServeError;

/// Marks a directory as an export, which the next export may replace.
const MARKER: &str = ".kiln-finder";

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    pub dir: PathBuf,
    /// Distinct image names.
    pub images: usize,
    /// Image versions (entries in `api/v1/images.json`).
    pub versions: usize,
    /// Files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// Image names that are not safe file names: listed in `images.json`
    /// (and shown by the page) but given no `api/v1/images/NAME.json`.
    pub unsafe_names: Vec<String>,
    /// Versions the catalog records no packages of (the page finds them by
    /// package in no search).
    pub without_packages: usize,
}

/// Writes the finder for the catalog at `catalog` into `dir`:
/// `index.html`, `api/v1/images.json` (every image version, unfiltered),
/// `api/v1/images/NAME.json` (one image's versions) and
/// `api/v1/packages.json` (each version's packages, for the page's package
/// search). `dir` must be new, empty, or an earlier export: anything else
/// is refused rather than replaced.
pub fn export(catalog: &Path, dir: &Path) -> Result<ExportReport, ServeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServeError::Io { path, source }
    };
    let catalog = crate::open_catalog(catalog)?;
    let found = catalog.find(&Query::default())?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ServeError::Refused {
            path: dir.to_path_buf(),
            message: "is not a directory name to export into".into(),
            hint: "give a directory such as /srv/images/finder".into(),
        })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existing = match std::fs::symlink_metadata(dir) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(dir)(e)),
    };
    if let Some(m) = &existing {
        let ours = m.is_dir()
            && (dir.join(MARKER).is_file()
                || std::fs::read_dir(dir).map_err(io(dir))?.next().is_none());
        if !ours {
            return Err(ServeError::Refused {
                path: dir.to_path_buf(),
                message: "exists and is not an earlier finder export; it was left as it is".into(),
                hint: format!(
                    "give a new or empty directory, e.g. {}",
                    dir.join("finder").display()
                ),
            });
        }
    }
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.kiln-export-"))
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    let report = write_tree(tmp.path(), dir, &found, &catalog)?;
    // Readable by the web server, like any directory it serves.
    set_mode(tmp.path(), 0o755).map_err(io(tmp.path()))?;
    let staged = tmp.keep();
    let swapped = match existing {
        None => std::fs::rename(&staged, dir).map(|_| false),
        Some(_) => exchange(&staged, dir).map(|_| true),
    };
    match swapped {
        Ok(true) => {
            // `staged` now holds the previous export.
            let _ = std::fs::remove_dir_all(&staged);
        }
        Ok(false) => {}
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(io(dir)(e));
        }
    }
    Ok(report)
}

fn write_tree(
    root: &Path,
    dir: &Path,
    found: &[Found],
    catalog: &Catalog,
) -> Result<ExportReport, ServeError> {
    let mut files = Vec::new();
    let mut put = |rel: &str, bytes: &[u8]| -> Result<(), ServeError> {
        let path = root.join(rel);
        let io = |source| ServeError::Io {
            path: path.clone(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let mut f = std::fs::File::create(&path).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        files.push(PathBuf::from(rel));
        Ok(())
    };
    let json = |v: &serde_json::Value| {
        let mut b = serde_json::to_vec_pretty(v).expect("JSON serialises");
        b.push(b'\n');
        b
    };
    put(
        MARKER,
        b"Written by the kiln image finder's export; the next export replaces this directory whole.\n",
    )?;
    put("index.html", page::html(Mode::Static).as_bytes())?;
    put(
        "api/v1/images.json",
        &json(&api::images_document(found, None)),
    )?;
    put(
        "api/v1/facets.json",
        &json(&api::facets_document(&catalog.facets()?)),
    )?;

    let mut by_name: BTreeMap<&str, Vec<&Found>> = BTreeMap::new();
    for f in found {
        by_name.entry(&f.image).or_default().push(f);
    }
    let mut unsafe_names = Vec::new();
    for (name, versions) in &by_name {
        if safe_file_name(name) {
            put(
                &format!("api/v1/images/{name}.json"),
                &json(&api::image_document(name, versions)),
            )?;
        } else {
            unsafe_names.push(name.to_string());
        }
    }

    let mut packages = serde_json::Map::new();
    let mut missing = Vec::new();
    for f in found {
        let list = catalog.packages(&f.manifest_sha256)?;
        if list.is_empty() {
            missing.push(f.manifest_sha256.clone());
        }
        packages.insert(f.manifest_sha256.clone(), json!(list));
    }
    let without_packages = missing.len();
    put(
        "api/v1/packages.json",
        &json(&json!({
            "schema-version": SCHEMA_VERSION,
            "packages": packages,
            "missing": missing,
        })),
    )?;
    Ok(ExportReport {
        dir: dir.to_path_buf(),
        images: by_name.len(),
        versions: found.len(),
        files,
        unsafe_names,
        without_packages,
    })
}

/// A name that is one plain file name on every web server: letters,
/// digits and `._+-`, starting with a letter or digit.
pub(crate) fn safe_file_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Swaps two directories in one step (Linux `RENAME_EXCHANGE`); where the
/// filesystem cannot, moves the old one aside first.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths for the call's duration.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    ) {
        return Err(e);
    }
    let aside = a.with_extension("old");
    std::fs::rename(b, &aside)?;
    if let Err(e) = std::fs::rename(a, b) {
        let _ = std::fs::rename(&aside, b);
        return Err(e);
    }
    std::fs::rename(&aside, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_become_file_names() {
        for ok in [
            "web",
            "python-distroless",
            "debian-cloud.v2",
            "libstdc++6",
            "a",
        ] {
            assert!(safe_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "x<script>",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!safe_file_name(bad), "{bad}");
        }
    }
}
