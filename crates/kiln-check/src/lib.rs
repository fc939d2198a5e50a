//! `kiln test` as a library: static checks on a disk image without booting
//! or mounting it, then a boot in QEMU (UEFI firmware, NoCloud seed, see
//! [`kiln_qemu`]) that reads the result of every test command back over the
//! serial console. A serialisable [`TestRequest`], a
//! [`Reporter`](kiln_model::Reporter) for progress and a
//! [`Cancel`](kiln_model::Cancel) handle go in; a [`TestReport`] with every
//! [`Outcome`] comes out, and a JUnit report is written beside the image.

mod checks;
mod junit;
mod outcome;
mod run;
mod target;

pub use checks::{extract_partition, layout_of, static_checks, tree_checks, unpack_fs, Layout};
pub use junit::junit;
pub use outcome::Outcome;
pub use run::{boot_outcomes, tail, test_image, test_image_with};
pub use target::{find_image, Target};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to test and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TestRequest {
    /// A disk image (raw or qcow2), a build's output directory, or a recipe
    /// (its image and `[[test]]` entries).
    pub target: PathBuf,
    /// Seconds to wait for the booted guest's results.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Only boot (no static checks).
    #[serde(default)]
    pub skip_static: bool,
    /// Only the static checks (no QEMU).
    #[serde(default)]
    pub skip_boot: bool,
    /// Regular (uid >= 1000) accounts the image may contain besides the
    /// recipe's.
    #[serde(default)]
    pub allow_users: Vec<String>,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// Guest CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
}

fn default_timeout() -> u64 {
    900
}

fn default_memory() -> u32 {
    1536
}

fn default_cpus() -> u32 {
    2
}

/// What a test run found. A run whose checks fail is still `Ok`: `passed`
/// is false and the failures are among the `outcomes`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TestReport {
    pub image: PathBuf,
    /// The JUnit report written beside the image (`STEM.test.xml`).
    pub report: PathBuf,
    /// Where the serial console is logged (`STEM.console.log`); written
    /// only when the boot test runs.
    pub console: PathBuf,
    /// Whether the boot test was asked for (not `skip_boot`).
    pub boot: bool,
    /// Every check, static ones first.
    pub outcomes: Vec<Outcome>,
    /// The last 60 lines of the console, if the guest booted.
    pub console_tail: String,
    /// How long the boot took, if a login prompt was seen.
    pub timing: Option<BootTiming>,
    /// No check failed.
    pub passed: bool,
}

/// Boot timings of a guest that reached its login prompt.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BootTiming {
    /// Seconds from power-on to the login prompt.
    pub to_login: f64,
    /// Seconds the whole boot test took.
    pub total: f64,
}

impl TestReport {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.failed())
    }
}
