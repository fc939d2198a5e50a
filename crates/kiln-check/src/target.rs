//! What `kiln test` works on: an image, and the tests and accounts its
//! build recorded.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_model::Hinted;
use kiln_recipe::{Recipe, TestEntry};

/// The image under test and what its build recorded.
#[derive(Clone, Debug)]
pub struct Target {
    pub image: PathBuf,
    /// The directory holding the image (its report, console log and SBOM).
    pub dir: PathBuf,
    /// The `[[test]]` commands to run in the booted guest.
    pub tests: Vec<TestEntry>,
    /// Regular accounts the image may contain.
    pub users: Vec<String>,
    /// The partitions the build planned for this image (from the manifest
    /// beside it), to compare with what the disk holds.
    pub planned: Option<Vec<kiln_model::PartitionFact>>,
}

/// The disk image in an output directory: disk.raw, else disk.qcow2, else
/// the host architecture's disk-ARCH.raw / .qcow2 of a multi-arch build
/// (`DIR/disk.raw` if none exists).
pub fn find_image(dir: &Path) -> PathBuf {
    let arch = kiln_recipe::host_architecture();
    [
        "disk.raw".to_string(),
        "disk.qcow2".to_string(),
        format!("disk-{arch}.raw"),
        format!("disk-{arch}.qcow2"),
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
    .unwrap_or_else(|| dir.join("disk.raw"))
}

impl Target {
    /// From a disk image, a build's output directory or a recipe (its image,
    /// `[[test]]` entries and users). Without a recipe, tests and users come
    /// from the `manifest.json` beside the image, which is read strictly.
    pub fn resolve(arg: &Path) -> Result<Target> {
        let (image, recipe_tests, recipe_users) = if arg.extension().is_some_and(|e| e == "toml") {
            let r = Recipe::load(arg)?;
            let image = find_image(&r.output_dir());
            let users = r.customize.users.iter().map(|u| u.name.clone()).collect();
            (image, Some(r.tests), Some(users))
        } else if arg.is_dir() {
            (find_image(arg), None, None)
        } else {
            (arg.to_path_buf(), None, None)
        };
        if !image.is_file() {
            return Err(Hinted {
                message: format!("no disk image at {}", image.display()),
                hint: "build it first with formats = [\"disk\"] (kiln build RECIPE), or give the image's path".into(),
            }
            .into());
        }
        // A tarball or an OCI blob is refused here, not booted.
        kiln_qemu::refuse_foreign_file(&image)?;
        let dir = image.parent().unwrap_or(Path::new(".")).to_path_buf();
        // A manifest beside the image is read strictly: a damaged one is an
        // error, not a boot without its test commands.
        let manifest = if dir.join(kiln_model::MANIFEST_FILE).exists() {
            Some(kiln_model::Manifest::read_dir(&dir)?)
        } else {
            None
        };
        let tests = recipe_tests.unwrap_or_else(|| {
            manifest
                .as_ref()
                .map(|m| {
                    m.tests
                        .iter()
                        .map(|t| TestEntry {
                            name: t.name.clone(),
                            command: t.command.clone(),
                            expect: t.expect.clone(),
                            health: t.health,
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
        let planned = manifest
            .as_ref()
            .and_then(|m| planned_partitions(m, &image));
        let users = recipe_users.unwrap_or_else(|| manifest.map(|m| m.users).unwrap_or_default());
        Ok(Target {
            image,
            dir,
            tests,
            users,
            planned,
        })
    }
}

/// The manifest's partitions for `image`: the architecture of the output
/// whose file it is.
fn planned_partitions(
    m: &kiln_model::Manifest,
    image: &Path,
) -> Option<Vec<kiln_model::PartitionFact>> {
    let name = image.file_name()?.to_str()?;
    let arch = m
        .outputs
        .iter()
        .find(|a| a.path == name)?
        .architecture
        .as_ref()?;
    Some(m.disk.get(arch)?.partitions.clone())
}
