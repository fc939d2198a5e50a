//! Kiln's shared records. Every stage after the build (verify, test,
//! publish, catalog, watch) reads the typed [`Manifest`] a build wrote;
//! progress travels as typed [`Event`]s through a [`Reporter`]; each build
//! owns its [`Cancel`] handle. No I/O beyond reading and writing these
//! records.

pub mod cancel;
pub mod event;
pub mod fsutil;
pub mod hint;
pub mod manifest;
pub mod owner;
pub mod rollout;
pub mod sdversion;

pub use cancel::{Cancel, Cancelled};

/// `1.5 MiB`: sizes as messages show them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
pub use event::{Collect, Event, JsonReporter, NullReporter, Reporter, Stage};
pub use hint::Hinted;
pub use manifest::{
    relative_path, sbom_files, Artifact, DiskFacts, Format, LockRef, Manifest, ManifestError,
    PackageRecord, PartitionFact, SbomFiles, TestSpec, UpdateFacts, UsrFacts, INCOMPLETE_MARKER,
    MANIFEST_FILE, SCHEMA_VERSION,
};
